#!/usr/bin/env bash
# sparsecow check on images whose tables qemu-img check still opens:
# damaged snapshot tables, L1 and refcount tables (partly) past the end
# of the file, and header lengths that are not a multiple of 8.  qemu-img
# check is the oracle: where it reports problems (exit 2 or 3) we must
# exit the same with the same numbers of corruptions and leaks; where it
# cannot open the image (exit 1) we must fail with a message.  The
# reader (map, unpack) must go on refusing these images; info shows
# them where qemu-img info does.
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/check-functions.sh"
requires qemu-img qemu-io od dd truncate

cd "$tmp"

# qemu's block layer fails reads that end past this offset.
MAX_IO_END=$(( (1 << 63) - (1 << 30) ))

# compare IMAGE EXPECTED-QEMU-EXIT [OUR-EXIT]: the expected exit code
# makes sure the test really produced the damage it meant to.  OUR-EXIT
# is given where sparsecow differs on purpose: it counts damage that
# qemu-img check does not (an image cut short), and then exits 2, with
# qemu's numbers of corruptions and leaks all the same; its text on
# stdout is qemu-img check's all the same.
compare () {
  local img=$1 want=$2 ours=${3:-$2} qrc=0 src=0 f
  qemu-img check --output=json "$img" >q.json 2>q.err || qrc=$?
  sparsecow check --json "$img" >s.json 2>s.err || src=$?
  if grep -q "AddressSanitizer\|runtime error\|Segmentation\|Aborted" s.err
  then
    cat s.err >&2; fail "$img: crash or sanitizer report"
  fi
  if [ "$qrc" != "$want" ]; then
    head -20 q.err >&2
    fail "$img: qemu-img check exited $qrc, the test meant to make $want"
  fi
  case $qrc in
  0|2|3)
    [ "$src" = "$ours" ] || {
      head -20 q.err >&2; head -20 s.err >&2
      fail "$img: qemu-img check exit $qrc, ours $src, not $ours"; }
    if [ "$ours" != "$qrc" ] && [ "$(jfield s.json damage)" = 0 ]; then
      cat s.json >&2; fail "$img: exit $src without damage"
    fi
    for f in corruptions leaks; do
      [ "$(jfield q.json $f)" = "$(jfield s.json $f)" ] || {
        cat q.json s.json >&2; head -20 s.err >&2
        fail "$img: $f differ: qemu $(jfield q.json $f), ours $(jfield s.json $f)"
      }
    done
    ;;
  *)
    [ "$src" = 1 ] && [ -s s.err ] ||
      fail "$img: qemu-img check failed ($qrc) but ours exited $src" \
           "$(if [ -s s.err ]; then echo with; else echo without; fi) a message"
    ;;
  esac
  compare_text "$img" "$src"
  echo "$img: qemu-img check $qrc (corruptions $(jfield q.json corruptions)," \
       "leaks $(jfield q.json leaks)), sparsecow check $src"
}

# The reader must still refuse what it refused before; info shows
# what qemu-img info shows.
reader_refuses () {
  expect_fail "sparsecow: $1: " sparsecow map "$1"
  expect_fail "sparsecow: $1: " sparsecow unpack "$1" "$tmp/refused.raw"
  info_as_qemu "sparsecow: $1: " "$1"
}

# ---- the images to damage: one with two snapshots (the snapshot table
# last in the file, not padded to a cluster), one with data, a v2 one.
qemu-img create -q -f qcow2 snap.qcow2 64M
qemu-io -c "write -P 1 0 1M" snap.qcow2 >/dev/null
qemu-img snapshot -c s1 snap.qcow2
qemu-io -c "write -P 2 512k 1M" snap.qcow2 >/dev/null
qemu-img snapshot -c s2 snap.qcow2
qemu-img create -q -f qcow2 data.qcow2 64M
qemu-io -c "write -P 1 0 1M" -c "write -P 2 10M 300k" data.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 64M
qemu-io -c "write -P 1 0 64k" v2.qcow2 >/dev/null
qemu-img snapshot -c s1 v2.qcow2
for img in snap data v2; do compare $img.qcow2 0; done

# ---- 1. The snapshot table.
img=snap.qcow2
cs=$(( 1 << $(be32 $img 20) ))
size=$(stat -c %s $img)
st=$(be64 $img 64)
sl1=$(be64 $img "$st")
extra=$(be32 $img $(( st + 36 )))
idlen=$(be16 $img $(( st + 12 )))
[ "$(be32 $img 60)" = 2 ] && [ "$extra" -ge 16 ] && [ "$idlen" -gt 0 ] &&
  [ $(( st + 40 + extra + idlen )) -lt "$size" ] || fail "snapshot layout"
damage () {                     # NAME: a copy of $img to patch
  cp "$img" "$1.qcow2"; echo "$1.qcow2"
}

# The table moved past the end of the file: entries read as zeros, so
# both are incomplete for a v3 image, and the old snapshots leak.
f=$(damage sn-table-next); put_be64 $f 64 $(( (size / cs + 1) * cs ))
compare $f 2
f=$(damage sn-table-past); put_be64 $f 64 $(( (size / cs + 4) * cs ))
compare $f 2
f=$(damage sn-table-far); put_be64 $f 64 $(( 1 << 40 ))
compare $f 2
# The table at offset 0: the header read as snapshot entries.
f=$(damage sn-table-0); put_be64 $f 64 0
compare $f 2
# More entries than the table holds, running past the end of the file
# by less and by more than a cluster.
f=$(damage sn-count3); put_be32 $f 60 3
compare $f 2
f=$(damage sn-count5000); put_be32 $f 60 5000
compare $f 2
# The table cut short by the end of the file.
f=$(damage sn-truncated); truncate -s $(( st + 48 )) $f
compare $f 2
# An ID that runs past the end of the file.
f=$(damage sn-idlen); put_be16 $f $(( st + 12 )) 65535
compare $f 2
# The most extra data qemu accepts, running past the end of the file.
f=$(damage sn-extra-max); put_be32 $f $(( st + 36 )) 1024
compare $f 2
# Less than the 16 bytes of extra data version 3 needs (the rest of
# the extra data becomes part of the ID, so the entries stay in place),
# and exactly 16.
f=$(damage sn-extra8); put_be32 $f $(( st + 36 )) 8
put_be16 $f $(( st + 12 )) $(( idlen + extra - 8 ))
compare $f 2
f=$(damage sn-extra15); put_be32 $f $(( st + 36 )) 15
put_be16 $f $(( st + 12 )) $(( idlen + extra - 15 ))
compare $f 2
f=$(damage sn-extra16); put_be32 $f $(( st + 36 )) 16
put_be16 $f $(( st + 12 )) $(( idlen + extra - 16 ))
compare $f 0
# A snapshot L1 table just past the end, far outside the file,
# misaligned, too large.
f=$(damage sn-l1-next); put_be64 $f "$st" $(( (size / cs + 1) * cs ))
compare $f 2
f=$(damage sn-l1-far); put_be64 $f "$st" $(( 1 << 40 ))
compare $f 2
f=$(damage sn-l1-huge); put_be64 $f "$st" $(( 1 << 62 ))
compare $f 2
f=$(damage sn-l1-misaligned); put_be64 $f "$st" $(( sl1 + 8 ))
compare $f 2
f=$(damage sn-l1-size); put_be32 $f $(( st + 8 )) $(( 4 * 1024 * 1024 + 1 ))
compare $f 2
# A v2 image needs no extra data: entries of zeros past the end are
# fine there.
f=v2-count3.qcow2; cp v2.qcow2 $f; put_be32 $f 60 3
compare $f 0
# What qemu cannot read: too much extra data, too many snapshots, a
# misaligned table.
f=$(damage sn-extra-big); put_be32 $f $(( st + 36 )) 1025
compare $f 1
f=$(damage sn-extra-garbage); put_be32 $f $(( st + 36 )) 8
compare $f 1
f=$(damage sn-count-max); put_be32 $f 60 65537
compare $f 1
f=$(damage sn-count-huge); put_be32 $f 60 $(( 0xffffffff ))
compare $f 1
f=$(damage sn-table-misaligned); put_be64 $f 64 $(( st + 8 ))
compare $f 1
# qemu validates the offset of an empty table too.
f=sn-none-offset.qcow2; cp data.qcow2 $f; put_be64 $f 64 $(( 1 << 63 ))
compare $f 1
reader_refuses sn-table-past.qcow2
reader_refuses sn-count3.qcow2

# ---- 2. The L1 and refcount tables (partly) past the end of the file.
img=data.qcow2
cs=$(( 1 << $(be32 $img 20) ))
size=$(stat -c %s $img)
l1=$(be64 $img 40)
rt=$(be64 $img 48)
[ $(( size % cs )) = 0 ] && [ "$(be32 $img 36)" = 1 ] &&
  [ "$(be32 $img 56)" = 1 ] || fail "data layout"
# Copy the first 512 bytes of a table into a new last cluster that ends
# there, and point the header at it: the rest of the table reads as
# zeros.
append_table () {               # FILE TABLE-OFFSET
  dd if="$img" of="$1" bs=512 skip=$(( $2 / 512 )) seek=$(( size / 512 )) \
     count=1 conv=notrunc status=none
}

# Less than a cluster past the end: zeros, in a cluster without a
# refcount (and the old L1 table and all it referenced leak).
f=$(damage l1-next); put_be64 $f 40 "$size"
compare $f 2
# The file cut right before its L1 table: zeros, in a cluster that has
# its refcount, so qemu-img check finds the image clean; but the L1
# table is lost with everything it mapped, and sparsecow reports the
# image cut short.
f=$(damage l1-cut0); truncate -s "$l1" $f
compare $f 0 2
grep -q "L1 table at offset 0x$(printf %x "$l1") .* lies past the end of the file .*cut short" s.err ||
  fail "l1-cut0: check does not say the L1 table is missing"

f=$(damage l1-next2); put_be64 $f 40 $(( size + cs ))
compare $f 2
f=$(damage l1-far); put_be64 $f 40 $(( 1 << 40 ))
compare $f 2
f=$(damage l1-limit); put_be64 $f 40 $(( MAX_IO_END - cs ))
compare $f 2
f=$(damage l1-partly); append_table $f "$l1"
put_be64 $f 40 "$size"; put_be32 $f 36 1000
compare $f 2
f=$(damage l1-cut); truncate -s $(( l1 + 4 )) $f
compare $f 2
f=$(damage l1-0); put_be64 $f 40 0
compare $f 2
f=$(damage l1-unreadable); put_be64 $f 40 "$MAX_IO_END"
compare $f 1
f=$(damage l1-misaligned); put_be64 $f 40 $(( l1 + 512 ))
compare $f 1
reader_refuses l1-next2.qcow2
reader_refuses l1-partly.qcow2

f=$(damage rt-next); put_be64 $f 48 "$size"
compare $f 2
f=$(damage rt-far); put_be64 $f 48 $(( 1 << 40 ))
compare $f 2
f=$(damage rt-limit); put_be64 $f 48 $(( MAX_IO_END - cs ))
compare $f 2
f=$(damage rt-partly); append_table $f "$rt"; put_be64 $f 48 "$size"
compare $f 2
f=$(damage rt-long); put_be32 $f 56 100
compare $f 2
f=$(damage rt-none); put_be32 $f 56 0
compare $f 2
f=$(damage rt-0); put_be64 $f 48 0
compare $f 2
f=$(damage rt-unreadable); put_be64 $f 48 "$MAX_IO_END"
compare $f 1
f=$(damage rt-invalid); put_be64 $f 48 $(( (1 << 63) - cs ))
compare $f 1
# A refcount block just below and at the limit of what qemu can read.
f=$(damage rb-limit); put_be64 $f "$rt" $(( MAX_IO_END - cs ))
compare $f 2
f=$(damage rb-unreadable); put_be64 $f "$rt" "$MAX_IO_END"
compare $f 1
reader_refuses rt-next.qcow2
reader_refuses rt-none.qcow2

# ---- 3. header_length.  Extensions then start where the header ends,
# aligned or not; qemu wants every extension header (the end marker's
# too) to fit in the first cluster with the length it states.
for hl in 105 4095 $cs; do
  f=$(damage hl-$hl); put_be32 $f 100 $hl
  compare $f 0
done
for hl in 103 108 109 113 $(( cs + 1 )); do
  f=$(damage hl-$hl); put_be32 $f 100 $hl
  compare $f 1
done
reader_refuses hl-105.qcow2
# An unaligned header followed by an extension that qemu parses: the
# feature name table moved to offset 105 (its end marker after it).
ext=$(be32 $img 100)
len=$(be32 $img $(( ext + 4 )))
f=$(damage hl-ext); put_be32 $f 100 105
dd if="$img" of=$f bs=1 skip="$ext" seek=105 count=$(( 8 + len )) \
   conv=notrunc status=none
put_be64 $f $(( 105 + 8 + (len + 7) / 8 * 8 )) 0
compare $f 0
# The same with an end marker whose length runs past the first cluster:
# qemu frames it like any extension and refuses it.
put_be32 $f $(( 105 + 8 + (len + 7) / 8 * 8 + 4 )) $(( cs ))
compare $f 1

# ---- Other header fields qemu-img check is lenient about, or not.
img=data.qcow2
# A feature name table whose length is not a multiple of its entries.
f=$(damage feature-table); put_be32 $f $(( $(be32 $img 100) + 4 )) 383
compare $f 0
# A backing file name of length 0 is no backing file; one that lies in
# the header (and reads as an empty string) neither.
f=$(damage backing-empty); put_be64 $f 8 512
compare $f 0
f=$(damage backing-in-header); put_be64 $f 8 64; put_be32 $f 16 8
compare $f 0
# A backing file name that runs past the first cluster.
f=$(damage backing-long); put_be64 $f 8 $(( cs - 6 )); put_be32 $f 16 7
compare $f 1
f=$(damage backing-offset); put_be64 $f 8 $(( cs + 1 ))
compare $f 1
reader_refuses backing-empty.qcow2
# A backing format extension of 15 bytes is fine, of 16 too long.
for n in 15 16; do
  f=$(damage backing-format$n)
  put_bytes $f 112 "e2792aca$(printf %08x $n)$(printf qcow2 | od -An -tx1 |
    tr -d ' \n')"
  put_bytes $f 125 0000000000000000000000
  put_be64 $f $(( 120 + (n + 7) / 8 * 8 )) 0
  compare $f $(( n == 16 ))
done
# The external data file bit without a data file name, and the raw
# data file bit without an external data file.
f=$(damage data-file-bit); put_be64 $f 72 4
compare $f 1
f=$(damage data-raw-bit); put_be64 $f 88 2
compare $f 1
