#!/usr/bin/env bash
# sparsecow check against qemu-img check as the oracle: images made by
# qemu-img and qemu-io in every layout we can produce, an e2image -Q
# image that leaks a cluster, and images corrupted on purpose.  The exit
# codes must agree (0 clean, 2 corruptions, 3 leaks only) and so must
# the numbers of corruptions and leaks, and the text, line for line.
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/check-functions.sh"
requires qemu-img qemu-io od dd

cd "$tmp"

# compare IMAGE [EXPECTED-QEMU-EXIT [OUR-EXIT]]: the second argument
# makes sure the test really produced the damage it meant to; the third
# is given where qemu-img check cannot open an image that sparsecow
# checks.
compare () {
  local img=$1 want=${2:-} ours=${3:-} qrc=0 src=0 f
  qemu-img check --output=json "$img" >q.json 2>q.err || qrc=$?
  sparsecow check --json "$img" >s.json 2>s.err || src=$?
  if grep -q "AddressSanitizer\|runtime error\|Segmentation\|Aborted" s.err
  then
    cat s.err >&2; fail "$img: crash or sanitizer report"
  fi
  if [ -n "$want" ] && [ "$qrc" != "$want" ]; then
    cat q.err >&2
    fail "$img: qemu-img check exited $qrc, the test meant to make $want"
  fi
  case $qrc in
  0|2|3)
    [ "$src" = "$qrc" ] || {
      cat q.err s.err >&2; fail "$img: qemu-img check exit $qrc, ours $src"; }
    for f in corruptions leaks; do
      [ "$(jfield q.json $f)" = "$(jfield s.json $f)" ] || {
        cat q.json s.json s.err >&2
        fail "$img: $f differ: qemu $(jfield q.json $f), ours $(jfield s.json $f)"
      }
    done
    ;;
  *)
    # qemu-img cannot check it either: we must fail with a message.
    [ "$src" != 0 ] && [ -s s.err ] ||
      fail "$img: qemu-img check failed ($qrc) but ours exited $src silently"
    ;;
  esac
  compare_text "$img" "${ours:-$qrc}"
  echo "$img: qemu-img check $qrc, sparsecow check $src"
}

# The allocation statistics of a clean image must agree too.
compare_stats () {
  local f
  for f in allocated-clusters total-clusters fragmented-clusters \
           compressed-clusters image-end-offset check-errors; do
    [ "$(jfield q.json $f)" = "$(jfield s.json $f)" ] || {
      cat q.json s.json >&2; fail "$1: $f differ"; }
  done
}

mk () { local n=$1; shift; qemu-img create -q -f qcow2 "$@" "$n.qcow2" 64M; }
io () { local n=$1; shift; qemu-io "$@" "$n.qcow2" >/dev/null; }

# ---- images qemu made: all must check clean, with equal statistics.
mk plain
mk data; io data -c "write -P 1 0 1M" -c "write -P 2 10M 300k"
mk comp; io comp -c "write -c 0 64k" -c "write -c 128k 64k" -c "write -P 3 1M 64k"
mk zero; io zero -c "write -P 1 0 1M" -c "write -z 0 512k" -c "write -z 4M 1M"
mk disc; io disc -c "write -P 1 0 2M" -c "discard 0 1M"
mk snap; io snap -c "write -P 1 0 1M"; qemu-img snapshot -c s1 snap.qcow2
io snap -c "write -P 2 512k 1M"; qemu-img snapshot -c s2 snap.qcow2
io snap -c "write -c 4M 64k"
mk rc1 -o refcount_bits=1; io rc1 -c "write -P 1 0 1M" -c "write -c 2M 64k"
mk rc2 -o refcount_bits=2; io rc2 -c "write -P 1 0 1M"
qemu-img snapshot -c s1 rc2.qcow2
mk rc4 -o refcount_bits=4; io rc4 -c "write -P 1 0 1M" -c "write -c 2M 64k"
qemu-img snapshot -c s1 rc4.qcow2
mk rc8 -o refcount_bits=8; io rc8 -c "write -P 1 0 1M"
mk rc32 -o refcount_bits=32; io rc32 -c "write -P 1 0 1M"
qemu-img snapshot -c s1 rc32.qcow2
mk rc64 -o refcount_bits=64; io rc64 -c "write -P 1 0 1M" -c "write -c 2M 64k"
qemu-img snapshot -c s1 rc64.qcow2
mk cs512 -o cluster_size=512; io cs512 -c "write -P 1 0 1M" -c "write -c 2M 4k"
mk cs2m -o cluster_size=2M; io cs2m -c "write -P 1 0 3M" -c "write -c 8M 2M"
mk v2 -o compat=0.10; io v2 -c "write -P 1 0 1M" -c "write -c 2M 64k"
qemu-img snapshot -c s1 v2.qcow2
mk extl2 -o extended_l2=on
io extl2 -c "write -P 1 0 1M" -c "write -P 2 2M 4k" -c "write -z 3M 8k" \
   -c "write -c 4M 64k"
mk zstd -o compression_type=zstd; io zstd -c "write -c 0 64k"
mk lazy -o lazy_refcounts=on; io lazy -c "write -P 1 0 1M"
mk prealloc -o preallocation=metadata
mk bitmaps; io bitmaps -c "write -P 1 0 1M"
qemu-img bitmap --add bitmaps.qcow2 b0
qemu-img bitmap --add bitmaps.qcow2 b1

# A bitmap that qemu-io's writes dirty (so it has data clusters), with
# small clusters and a fine granularity so that its table is long.
qemu-img create -q -f qcow2 -o cluster_size=512 bitmapdata.qcow2 256M
qemu-img bitmap --add -g 4096 bitmapdata.qcow2 b0
io bitmapdata -c "write -P 1 0 1M" -c "write -P 1 200M 64k"
# An external data file: its clusters are not counted.
mk datafile -o data_file=datafile.raw; io datafile -c "write -P 1 0 1M"

for img in plain data comp zero disc snap rc1 rc2 rc4 rc8 rc32 rc64 \
           cs512 cs2m v2 extl2 zstd lazy prealloc bitmaps bitmapdata \
           datafile; do
  compare "$img.qcow2" 0
  compare_stats "$img.qcow2"
done

# An encrypted image: qemu needs the key to open it, we do not.
if qemu-img create -q -f qcow2 --object secret,id=sec0,data=abc \
     -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.hash-alg=sha512 luks.qcow2 64M 2>/dev/null
then
  qemu-img check --output=json --object secret,id=sec0,data=abc \
    --image-opts driver=qcow2,file.filename=luks.qcow2,encrypt.key-secret=sec0 \
    >q.json || fail "luks: qemu-img check"
  sparsecow check --json luks.qcow2 >s.json || fail "luks: our check"
  compare_stats luks.qcow2
fi

# The human output says so too.
sparsecow check data.qcow2 >out 2>err
grep -q "^No errors were found on the image.$" out || fail "no clean message"
[ ! -s err ] || fail "clean image printed on stderr"
sparsecow check -q data.qcow2 >out 2>err || fail "-q: check failed"
[ ! -s out ] && [ ! -s err ] || fail "-q printed something for a clean image"
sparsecow check --output=json data.qcow2 >s.json
qemu-img check --output=json data.qcow2 >q.json
compare_stats "--output=json"

# An image on a block device (a read-only loop device, when we may).
# A loop device drops a partial last sector, which here holds the end of
# the last compressed cluster: the copy on the device is padded to whole
# sectors, or the device would hold an image cut short.
cp snap.qcow2 snap-dev.qcow2
truncate -s %512 snap-dev.qcow2
if [ "$(id -u)" = 0 ] && command -v losetup >/dev/null &&
   dev=$(losetup -f --show -r snap-dev.qcow2 2>/dev/null); then
  cleanup_fn losetup -d "$dev"
  qemu-img check --output=json snap.qcow2 >q.json
  sparsecow check --json "$dev" >s.json || fail "check of $dev failed"
  compare_stats "$dev"
fi

# ---- e2image -Q leaks a cluster (it never frees the one it reserves).
if command -v e2image >/dev/null && command -v mke2fs >/dev/null; then
  mke2fs -q -t ext4 -d /usr/share/doc e2.img 64M 2>/dev/null ||
    { rm -f e2.img; mke2fs -q -t ext4 -d /usr/share/doc e2.img 256M; }
  e2image -Q -a e2.img e2.qcow2 2>/dev/null
  rm e2.img
  compare e2.qcow2 3
  [ "$(jfield s.json leaks)" -ge 1 ] || fail "e2image: no leak found"
  rc=0; sparsecow check e2.qcow2 >out 2>err || rc=$?
  [ $rc = 3 ] || fail "e2image: human check exited $rc"
  grep -q "leaked clusters were found on the image" out ||
    fail "e2image: no leak summary"
  grep -q "^Leaked cluster [0-9]* refcount=1 reference=0$" err ||
    fail "e2image: no leaked cluster line"
  rm e2.qcow2
fi

# ---- damage on purpose.  Locate the structures of data.qcow2 from its
# header: cluster size, L1 table, refcount table, first refcount block
# (16-bit refcounts), first L2 table and first data cluster.
img=data.qcow2
cs=$(( 1 << $(be32 $img 20) ))
l1=$(be64 $img 40)
rt=$(be64 $img 48)
rb=$(( $(be64 $img "$rt") & OFFSET_MASK ))
l2=$(( $(be64 $img "$l1") & OFFSET_MASK ))
d0=$(( $(be64 $img "$l2") & OFFSET_MASK ))
[ "$l2" -gt 0 ] && [ "$d0" -gt 0 ] && [ "$rb" -gt 0 ] || fail "layout"
size=$(stat -c %s $img)

# A used data cluster with refcount 0: corruption.
cp $img c-rc0.qcow2; put_be16 c-rc0.qcow2 $(( rb + 2 * d0 / cs )) 0
compare c-rc0.qcow2 2
# A used L2 table with refcount 0.
cp $img c-rc0-l2.qcow2; put_be16 c-rc0-l2.qcow2 $(( rb + 2 * l2 / cs )) 0
compare c-rc0-l2.qcow2 2
# A data cluster with refcount 2 where one reference exists: leak.
cp $img c-rc2.qcow2; put_be16 c-rc2.qcow2 $(( rb + 2 * d0 / cs )) 2
compare c-rc2.qcow2
# An unused cluster (the file grown by one) with refcount 1: leak only.
cp $img c-leak.qcow2; truncate -s $(( size + cs )) c-leak.qcow2
put_be16 c-leak.qcow2 $(( rb + 2 * size / cs )) 1
compare c-leak.qcow2 3
# A refcount set for a cluster past the end of the file.
cp $img c-leak-past.qcow2; put_be16 c-leak-past.qcow2 $(( rb + 2 * (size / cs + 3) )) 1
compare c-leak-past.qcow2
# An L2 entry pointing far outside the file.
cp $img c-l2-outside.qcow2; put_be64 c-l2-outside.qcow2 "$l2" $(( COPIED | 0x100000000 ))
compare c-l2-outside.qcow2 2
grep -q "outside the image" s.err || fail "no 'outside the image' message"
# An L2 entry pointing at its own L2 table: two structures, one cluster.
cp $img c-overlap.qcow2; put_be64 c-overlap.qcow2 $(( l2 + 8 * 100 )) $(( COPIED | l2 ))
compare c-overlap.qcow2 2
# An L2 entry that is not cluster aligned.
cp $img c-l2-misaligned.qcow2; put_be64 c-l2-misaligned.qcow2 "$l2" $(( COPIED | (d0 + 512) ))
compare c-l2-misaligned.qcow2 2
# An L1 entry at a misaligned offset.
cp $img c-l1-misaligned.qcow2; put_be64 c-l1-misaligned.qcow2 "$l1" $(( COPIED | (l2 + 512) ))
compare c-l1-misaligned.qcow2 2
# An L1 entry pointing outside the file.
cp $img c-l1-outside.qcow2; put_be64 c-l1-outside.qcow2 "$l1" $(( COPIED | 0x10000000000 ))
compare c-l1-outside.qcow2 2
# Reserved bits in an L2 entry.
cp $img c-l2-reserved.qcow2; put_be64 c-l2-reserved.qcow2 "$l2" $(( COPIED | d0 | 2 ))
compare c-l2-reserved.qcow2 2
# The refcount block pointer misaligned or outside the file.
cp $img c-rb-outside.qcow2; put_be64 c-rb-outside.qcow2 "$rt" $(( 0x10000000000 ))
compare c-rb-outside.qcow2
cp $img c-rb-misaligned.qcow2; put_be64 c-rb-misaligned.qcow2 "$rt" $(( rb + 512 ))
compare c-rb-misaligned.qcow2
# Truncated images: part of the data, then into the L2 table.
cp $img c-trunc1.qcow2; truncate -s 1M c-trunc1.qcow2
compare c-trunc1.qcow2 2
cp $img c-trunc2.qcow2; truncate -s $(( l2 + 100 )) c-trunc2.qcow2
compare c-trunc2.qcow2 2

# Before and after qemu-img check -r leaks and -r all (sparsecow does
# not repair): two kinds of leak, and a corruption that only -r all
# repairs, compared before above and after here.  The repair must have
# changed something, or the images after it test nothing new.
for f in leaks:c-leak leaks:c-rc2 all:c-leak all:c-rc2 all:c-rc0; do
  r=r-${f%%:*}-${f#*:}.qcow2
  cp "${f#*:}.qcow2" "$r"
  qemu-img check -r "${f%%:*}" "$r" >repair.out 2>&1 || :
  grep -q "^The following inconsistencies were found and repaired:" \
    repair.out || { cat repair.out >&2; fail "qemu-img check -r $f"; }
  compare "$r" 0
done

# Snapshots: a misaligned snapshot L1 table, and a zeroed refcount of a
# cluster the snapshot and the active layer share (refcount 2 wanted).
img=snap.qcow2
rt=$(be64 $img 48)
rb=$(( $(be64 $img "$rt") & OFFSET_MASK ))
l1=$(be64 $img 40)
l2=$(( $(be64 $img "$l1") & OFFSET_MASK ))
last=$(( $(be64 $img $(( l2 + 8 * 15 ))) & OFFSET_MASK ))
st=$(be64 $img 64)
sl1=$(be64 $img "$st")
[ "$last" -gt 0 ] || fail "snap layout"
cp $img c-snap-l1.qcow2; put_be64 c-snap-l1.qcow2 "$st" $(( sl1 + 512 ))
compare c-snap-l1.qcow2 2
cp $img c-snap-shared.qcow2; put_be16 c-snap-shared.qcow2 $(( rb + 2 * last / cs )) 1
compare c-snap-shared.qcow2 2
cp $img c-snap-shared3.qcow2; put_be16 c-snap-shared3.qcow2 $(( rb + 2 * last / cs )) 4
compare c-snap-shared3.qcow2 3

# Refcount widths: corrupt a 1-bit and a 64-bit refcount the same way.
for w in 1 64; do
  img=rc$w.qcow2
  rt=$(be64 $img 48)
  rb=$(( $(be64 $img "$rt") & OFFSET_MASK ))
  l1=$(be64 $img 40)
  l2=$(( $(be64 $img "$l1") & OFFSET_MASK ))
  d0=$(( $(be64 $img "$l2") & OFFSET_MASK ))
  k=$(( d0 / cs ))
  cp $img c-rc$w.qcow2
  if [ $w = 1 ]; then
    # Clear the bit of cluster k (least significant bits first).
    byte=$(od -An -tu1 -j $(( rb + k / 8 )) -N 1 $img | tr -d ' ')
    put_bytes c-rc$w.qcow2 $(( rb + k / 8 )) \
      "$(printf '%02x' $(( byte & ~(1 << (k % 8)) )))"
  else
    put_be64 c-rc$w.qcow2 $(( rb + 8 * k )) 0
  fi
  compare c-rc$w.qcow2 2
done

# A bitmap table entry with reserved bits (qemu refuses to open it).
img=bitmapdata.qcow2
ext=$(( $(be32 $img 100) ))
while [ "$(be32 $img $ext)" != $(( 0x23852875 )) ]; do
  [ "$(be32 $img $ext)" != 0 ] || fail "no bitmaps extension"
  ext=$(( ext + 8 + ($(be32 $img $(( ext + 4 ))) + 7) / 8 * 8 ))
done
dir=$(be64 $img $(( ext + 8 + 16 )))
bt=$(be64 $img "$dir")
cp $img c-bitmap-table.qcow2
put_be64 c-bitmap-table.qcow2 "$bt" $(( $(be64 $img "$bt") | 2 ))
compare c-bitmap-table.qcow2 1 2
[ "$(jfield s.json corruptions)" -ge 1 ] || fail "bitmap table: no corruption"
# A bitmap table size that does not fit the disk.
cp $img c-bitmap-size.qcow2
put_bytes c-bitmap-size.qcow2 $(( dir + 8 )) 00000001
compare c-bitmap-size.qcow2 1 2

# An unknown incompatible feature: neither can check it.
cp data.qcow2 c-incompat.qcow2; put_be64 c-incompat.qcow2 72 $(( 1 << 40 ))
compare c-incompat.qcow2 1

# A crash with lazy refcounts: the dirty bit is set and the refcounts
# are stale.
mk dirty -o lazy_refcounts=on
# (The shell's own "Aborted" notice goes to the block's stderr.)
{ qemu-io -c "write -P 1 0 1M" -c "write -P 2 5M 100k" -c abort \
    dirty.qcow2 >/dev/null 2>&1 || :; } 2>/dev/null
[ "$(be64 dirty.qcow2 72)" = 1 ] || fail "qemu-io abort left no dirty bit"
compare dirty.qcow2 2

# Too many clusters to hold a counter for each: refused, not allocated.
cp cs512.qcow2 huge.qcow2; truncate -s 200G huge.qcow2
expect_fail "huge.qcow2: image file too large to check" \
  sparsecow check huge.qcow2
rm huge.qcow2

# Not an image at all, and a file that is not there.
# A file that is not qcow2 is raw to qemu-img check, a format without
# checks (exit 63); with -f qcow2 it is an image that does not open (1).
printf 'hello' > junk
expect_fail "sparsecow: junk: " sparsecow check junk
compare junk 63
: > empty
compare empty 63
rc=0; qemu-img check -f qcow2 junk >/dev/null 2>&1 || rc=$?
[ $rc = 1 ] || fail "qemu-img check -f qcow2 junk exited $rc: the oracle changed"
rc=0; sparsecow check -f qcow2 junk >/dev/null 2>&1 || rc=$?
[ $rc = 1 ] || fail "check -f qcow2 junk exited $rc, not 1"
expect_fail "sparsecow: missing: " sparsecow check missing
compare missing 1

# A backing file that is gone: qemu-img check opens the chain first and
# fails (exit 1); so does sparsecow check, naming the image.
qemu-img create -q -f qcow2 gone-base.qcow2 1M
qemu-img create -q -f qcow2 -b gone-base.qcow2 -F qcow2 orphan.qcow2
rm gone-base.qcow2
rc=0; qemu-img check orphan.qcow2 >/dev/null 2>&1 || rc=$?
[ $rc = 1 ] || fail "qemu-img check of an orphan exited $rc, not 1: the oracle changed"
rc=0; sparsecow check orphan.qcow2 >/dev/null 2>check.err || rc=$?
[ $rc = 1 ] || fail "check of an image whose backing file is gone exited $rc, not 1"
grep -q "orphan.qcow2: .*gone-base.qcow2" check.err ||
  fail "check does not say which backing file is gone: $(cat check.err)"
