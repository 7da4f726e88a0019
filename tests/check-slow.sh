#!/usr/bin/env bash
# sparsecow check on hostile images whose snapshots all use one large
# L1 table (or overlapping ones) in a big sparse file, whose L1 entries
# all point at one L2 table, or whose bitmaps all use one bitmap table.
# Checking must take time in proportion to the metadata in the file,
# not to the number of snapshots (or bitmaps) times the size of their
# tables, and must still give what
# qemu-img check gives: the same exit code and the same numbers of
# corruptions and leaks.  Where qemu-img itself would take too long,
# only the time of sparsecow is checked.
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/check-functions.sh"
requires qemu-img qemu-io od dd truncate timeout

cd "$tmp"

# Seconds sparsecow may take on each image: far below what visiting
# every snapshot's table would take, with room for sanitizers.
limit=20
[ -z "$SC_VALGRIND" ] || limit=300

# Run sparsecow check on IMAGE within the time limit; its exit code in
# $src, its JSON in s.json.
timed_check () {
  local start
  start=$(date +%s%N)
  src=0
  timeout $limit $SC_VALGRIND "$SPARSECOW" check --json "$1" >s.json 2>s.err ||
    src=$?
  if grep -q "AddressSanitizer\|runtime error\|Segmentation\|Aborted" s.err
  then
    cat s.err >&2; fail "$1: crash or sanitizer report"
  fi
  [ "$src" != 124 ] || fail "$1: sparsecow check took more than $limit s"
  echo "$1: sparsecow check exit $src in" \
       "$(( ($(date +%s%N) - start) / 1000000 )) ms"
}

# compare IMAGE EXPECTED-QEMU-EXIT
compare () {
  local img=$1 want=$2 qrc=0 f
  qemu-img check --output=json "$img" >q.json 2>q.err || qrc=$?
  [ "$qrc" = "$want" ] || {
    head -20 q.err >&2
    fail "$img: qemu-img check exited $qrc, the test meant to make $want"; }
  timed_check "$img"
  [ "$src" = "$qrc" ] || {
    head -20 q.err >&2; head -20 s.err >&2
    fail "$img: qemu-img check exit $qrc, ours $src"; }
  for f in corruptions leaks; do
    [ "$(jfield q.json $f)" = "$(jfield s.json $f)" ] || {
      cat q.json s.json >&2
      fail "$img: $f differ: qemu $(jfield q.json $f), ours $(jfield s.json $f)"
    }
  done
  compare_text "$img" "$qrc"
  echo "$img: qemu-img check $qrc (corruptions $(jfield q.json corruptions)," \
       "leaks $(jfield q.json leaks))"
}

# The base: two real snapshots, data in two L2 tables.
qemu-img create -q -f qcow2 base.qcow2 4G
qemu-io -c "write -P 1 0 1M" -c "write -P 2 2G 64k" base.qcow2 >/dev/null
qemu-img snapshot -c s1 base.qcow2
qemu-io -c "write -P 3 512k 1M" base.qcow2 >/dev/null
qemu-img snapshot -c s2 base.qcow2
cs=$(( 1 << $(be32 base.qcow2 20) ))
l1=$(be64 base.qcow2 40)
l1_size=$(be32 base.qcow2 36)
[ "$cs" = 65536 ] && [ "$l1_size" = 8 ] || fail "unexpected base layout"
# The first cluster after the base image: the shared L1 tables go there.
X=$(( ($(stat -c %s base.qcow2) + cs - 1) / cs * cs ))

# snapshot_table FILE OFFSET N: write a snapshot table of N entries at
# OFFSET and point the header at it; entry i uses the L1 table that
# the function l1_of sets in L1OFF and L1SZ.  IDs and names are the
# entry number in 4 digits, so every entry takes 64 bytes.
snapshot_table () {
  local f=$1 t=$2 n=$3 i k id idh hex= e h
  for ((i = 0; i < n; i++)); do
    l1_of $i
    printf -v id '%04d' $i
    idh=
    for ((k = 0; k < 4; k++)); do
      printf -v h '%02x' "'${id:k:1}"; idh+=$h
    done
    # L1 offset and size, ID and name lengths, date, VM clock, VM state
    # size, 16 bytes of extra data (large VM state size, disk size).
    printf -v e '%016x%08x%04x%04x%08x%08x%016x%08x%08x%016x%016x' \
           "$L1OFF" "$L1SZ" 4 4 0 0 0 0 16 0 $(( 4 << 30 ))
    hex+=$e$idh$idh
  done
  put_bytes "$f" "$t" "$hex"
  put_be32 "$f" 60 "$n"
  put_be64 "$f" 64 "$t"
}

# Copy the active L1 table's entries to OFFSET, so that a table there
# references the real L2 tables.
copy_l1 () { dd if=base.qcow2 of="$1" bs=8 skip=$(( l1 / 8 )) \
                seek=$(( $2 / 8 )) count="$l1_size" conv=notrunc status=none; }

# ---- 1. 1000 snapshots, one L1 table of 512 Ki entries (4 MiB), in a
# sparse file of 4 GiB.
S=$(( 512 * 1024 ))
l1_of () { L1OFF=$X; L1SZ=$S; }
cp base.qcow2 shared.qcow2
copy_l1 shared.qcow2 $X
snapshot_table shared.qcow2 $(( X + S * 8 )) 1000
truncate -s 4G shared.qcow2
compare shared.qcow2 2

# ---- 2. The same with overlapping tables of different sizes: four
# starting points a cluster apart, each with a copy of the active L1.
l1_of () { L1OFF=$(( X + ($1 % 4) * cs )); L1SZ=$(( S - ($1 % 3) * 1000 )); }
cp base.qcow2 overlap.qcow2
for k in 0 1 2 3; do copy_l1 overlap.qcow2 $(( X + k * cs )); done
snapshot_table overlap.qcow2 $(( X + S * 8 + 4 * cs )) 1000
truncate -s 4G overlap.qcow2
compare overlap.qcow2 2

# ---- 3. One snapshot whose 65536 L1 entries all point at the active
# layer's first L2 table: more references than 16-bit refcounts hold.
e=$(be64 base.qcow2 "$l1")
printf "$(printf '%016x' "$e" | sed 's/../\\x&/g')" >entry
for ((k = 0; k < 16; k++)); do cat entry entry >entry2; mv entry2 entry; done
[ "$(stat -c %s entry)" = $(( 65536 * 8 )) ] || fail "L1 table size"
l1_of () { L1OFF=$X; L1SZ=65536; }
cp base.qcow2 samel2.qcow2
dd if=entry of=samel2.qcow2 bs=64k seek=$(( X / cs )) conv=notrunc status=none
snapshot_table samel2.qcow2 $(( X + 65536 * 8 )) 1
compare samel2.qcow2 2

# ---- 4. Too large for qemu-img to check in reasonable time: 8000
# snapshots with the largest L1 table (4 Mi entries, 32 MiB) in a
# sparse file of 64 GiB, and 100 snapshots whose 4 Mi L1 entries all
# point at one L2 table.  Visiting every snapshot's table would take
# minutes; the check must finish within the limit.
S=$(( 4 * 1024 * 1024 ))
l1_of () { L1OFF=$X; L1SZ=$S; }
cp base.qcow2 big.qcow2
copy_l1 big.qcow2 $X
snapshot_table big.qcow2 $(( X + S * 8 )) 8000
truncate -s 64G big.qcow2
timed_check big.qcow2
[ "$src" = 2 ] || { head -20 s.err >&2; fail "big.qcow2: exit $src, not 2"; }

for ((k = 0; k < 6; k++)); do cat entry entry >entry2; mv entry2 entry; done
[ "$(stat -c %s entry)" = $(( S * 8 )) ] || fail "L1 table size"
cp base.qcow2 bigl2.qcow2
dd if=entry of=bigl2.qcow2 bs=64k seek=$(( X / cs )) conv=notrunc status=none
snapshot_table bigl2.qcow2 $(( X + S * 8 )) 100
truncate -s 64G bigl2.qcow2
timed_check bigl2.qcow2
[ "$src" = 2 ] || { head -20 s.err >&2; fail "bigl2.qcow2: exit $src, not 2"; }

# ---- 5. Bitmaps sharing one bitmap table: four bitmaps, each entry of
# the directory patched to use the first one's table.
qemu-img create -q -f qcow2 -o cluster_size=4k bm.qcow2 64M
for k in 0 1 2 3; do qemu-img bitmap --add bm.qcow2 b$k; done
qemu-io -c "write -P 1 0 1M" -c "write -P 2 40M 64k" bm.qcow2 >/dev/null
# The bitmaps header extension: count, reserved, directory size, offset.
ext=$(be32 bm.qcow2 100)
while [ "$(be32 bm.qcow2 "$ext")" != $(( 0x23852875 )) ]; do
  [ "$(be32 bm.qcow2 "$ext")" != 0 ] || fail "no bitmaps extension"
  ext=$(( ext + 8 + ($(be32 bm.qcow2 $(( ext + 4 ))) + 7) / 8 * 8 ))
done
dir=$(be64 bm.qcow2 $(( ext + 24 )))
[ "$(be32 bm.qcow2 $(( ext + 8 )))" = 4 ] &&
  [ "$(be64 bm.qcow2 $(( ext + 16 )))" = 128 ] || fail "bitmap directory"
cp bm.qcow2 bmshared.qcow2
for k in 1 2 3; do
  put_be64 bmshared.qcow2 $(( dir + 32 * k )) "$(be64 bm.qcow2 "$dir")"
done
compare bmshared.qcow2 2

# ---- 6. 32768 bitmaps (marked in use, so of any size) that all use one
# bitmap table of the largest size qemu allows (1 Mi entries with 512
# byte clusters), in a sparse file of 8 GiB.
qemu-img create -q -f qcow2 -o cluster_size=512 bmbig.qcow2 64M
qemu-img bitmap --add bmbig.qcow2 b0
ext=$(be32 bmbig.qcow2 100)
while [ "$(be32 bmbig.qcow2 "$ext")" != $(( 0x23852875 )) ]; do
  [ "$(be32 bmbig.qcow2 "$ext")" != 0 ] || fail "no bitmaps extension"
  ext=$(( ext + 8 + ($(be32 bmbig.qcow2 $(( ext + 4 ))) + 7) / 8 * 8 ))
done
n=32768
D=$(( ($(stat -c %s bmbig.qcow2) + 511) / 512 * 512 ))
T=$(( D + n * 32 ))
# Table offset and size, flags (in use, auto), type, granularity bits,
# name size, extra data size, the name and padding.
printf "$(printf '%016x%08x%08x%02x%02x%04x%08x%s' "$T" $(( 1 << 20 )) 3 1 16 \
          4 0 626d617000000000 | sed 's/../\\x&/g')" >dirent
for ((k = 0; k < 15; k++)); do cat dirent dirent >dirent2; mv dirent2 dirent; done
[ "$(stat -c %s dirent)" = $(( n * 32 )) ] || fail "bitmap directory size"
dd if=dirent of=bmbig.qcow2 bs=512 seek=$(( D / 512 )) conv=notrunc \
   status=none
put_be32 bmbig.qcow2 $(( ext + 8 )) $n
put_be64 bmbig.qcow2 $(( ext + 16 )) $(( n * 32 ))
put_be64 bmbig.qcow2 $(( ext + 24 )) $D
truncate -s 8G bmbig.qcow2
timed_check bmbig.qcow2
[ "$src" = 2 ] || { head -20 s.err >&2; fail "bmbig.qcow2: exit $src, not 2"; }
