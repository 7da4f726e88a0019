#!/usr/bin/env bash
# Bits that do not exist in an image's version.  Version 2 has no "reads
# as zero" flag in its L2 entries: qemu calls an entry with bit 0 set
# corrupt and refuses to read it ("Zero cluster entry found in pre-v3
# image"), though qemu-img check says nothing; sparsecow refuses it in
# unpack (from a file and from a pipe), map and info, naming the L2
# table, the entry and the guest offset, and check reports it.
# Version 2 has no incompatible, compatible or autoclear features, no
# refcount_order, header_length or compression type either: the bytes
# where version 3 keeps them are header extensions in a version 2
# image, and qemu reads them as such.  So does sparsecow, on purpose:
# an extended L2 or compression type bit there means nothing, and the
# image reads as qemu reads it.
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/hostile-functions.sh"
requires qemu-img qemu-io python3 cmp

cd "$tmp"
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M
qemu-io -f qcow2 -c "write -P 0x11 0 128k" -c "write -c -P 0x22 256k 64k" \
  v2.qcow2 >/dev/null
same_as_qemu v2.qcow2
l2=$(l2_table v2.qcow2)

# Bit 0 of a data cluster's entry, and of an unallocated one.
cp v2.qcow2 zero-data.qcow2
be_or zero-data.qcow2 "$l2" 8 1
cp v2.qcow2 zero-unalloc.qcow2
be_put zero-unalloc.qcow2 $(( l2 + 8 * 10 )) 8 1
for f in zero-data zero-unalloc; do
  qemu-img convert -q -f qcow2 -O raw $f.qcow2 judge.raw 2>/dev/null &&
    fail "test setup: qemu-img reads $f.qcow2"
  case $f in
    zero-data) entry=0 ;;
    zero-unalloc) entry=10 ;;
  esac
  refused "L2 table at host offset $l2, entry $entry.*\"reads as zero\" flag \(bit 0\), which version 2 images do not have" $f.qcow2
  refused_stream "guest offset $(( entry * 65536 )).*which version 2 images do not have" $f.qcow2
  check_reports "L2 table at 0x$(printf %x "$l2"), index $entry\) has the zero flag, which version 2" $f.qcow2 0
done

# The same bit in a version 3 image is the zero flag: it reads as zeros
# there, in both.
qemu-img create -q -f qcow2 v3.qcow2 1M
qemu-io -f qcow2 -c "write -P 0x11 0 128k" v3.qcow2 >/dev/null
be_or v3.qcow2 "$(l2_table v3.qcow2)" 8 1
same_as_qemu v3.qcow2

# Version 3 header fields written into a version 2 header: they are
# the first header extension there, an end marker (type 0) of length
# 0x18 when the incompatible features say "extended L2 and compression
# type", followed by nothing that is read.
cp v2.qcow2 v3-fields.qcow2
be_put v3-fields.qcow2 72 8 0x18          # incompatible: compression type, extended L2
be_put v3-fields.qcow2 80 8 1             # compatible: lazy refcounts
be_put v3-fields.qcow2 88 8 3             # autoclear: bitmaps, raw data file
be_put v3-fields.qcow2 96 4 6             # refcount_order 6
be_put v3-fields.qcow2 100 4 200          # header_length 200
be_put v3-fields.qcow2 104 1 1            # compression type zstd
same_as_qemu v3-fields.qcow2
sparsecow info --output=json v3-fields.qcow2 > info.json
jq -e '."format-specific".data as $d |
       $d.compat == "0.10" and $d."refcount-bits" == 16 and
       ($d."extended-l2" // false) == false and
       ($d."compression-type" // "zlib") == "zlib"' info.json >/dev/null ||
  { cat info.json >&2; fail "v3-fields.qcow2: info reads version 3 fields in a version 2 header"; }
# Read from a pipe too: the stream decoder parses its own header.
cat v3-fields.qcow2 | sparsecow unpack - piped.raw
qemu-img convert -q -f qcow2 -O raw v3-fields.qcow2 judge.raw
cmp judge.raw piped.raw || fail "v3-fields.qcow2 from a pipe differs from qemu-img"
rm -f judge.raw piped.raw

# A version 3 image turned into version 2 by its version field alone:
# its header extensions (feature names, at byte 112) now start at byte
# 72 with the incompatible features, which qemu and sparsecow read as
# an end marker; the zstd cluster is then deflate data, and both refuse
# to read it.
qemu-img create -q -f qcow2 -o compression_type=zstd zstd.qcow2 1M
qemu-io -f qcow2 -c "write -c -P 0x33 0 64k" zstd.qcow2 >/dev/null
be_put zstd.qcow2 4 4 2
qemu-img convert -q -f qcow2 -O raw zstd.qcow2 judge.raw 2>/dev/null &&
  fail "test setup: qemu-img reads zstd data as deflate"
expect_fail "compressed cluster at host offset 0x[0-9a-f]+.*deflate" \
  sparsecow unpack zstd.qcow2 zstd.raw
[ ! -e zstd.raw ] || fail "failed unpack of zstd.qcow2 left its target"
exit 0
