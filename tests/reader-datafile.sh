#!/usr/bin/env bash
# sparsecow unpack and map read qcow2 images whose data lives in an
# external data file, with and without data_file_raw, with relative and
# absolute data file names; a missing data file is a clear error.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
. "$srcdir/reader-functions.sh"
requires qemu-img qemu-io python3 timeout cmp

cd "$tmp"
mkdir -p imgs/data elsewhere

# qemu opens the data file by the name the image stores, so a relative
# name is found from the current directory, not from the image's (unlike
# a backing file name).  From another directory that holds a file of that
# name with other content, qemu-img reads that file: so must sparsecow,
# for every command that reads data (unpack, verify, map, check).
for raw in on off; do
  for cs in 4096 65536; do
    img=df-$raw-$cs.qcow2
    (cd imgs && qemu-img create -q -f qcow2 \
       -o data_file=data/$img.data,data_file_raw=$raw,cluster_size=$cs "$img" 64M)
    qemu-img info imgs/$img | grep -q "data file: data/$img.data" ||
      fail "test setup: data file name is not relative"
    (cd imgs && qio $img "write -P 0x11 0 1M" "write -P 0x12 $(( cs + 512 )) 512" \
                  "write -z 2M 1M" "write -z -u 4M 64k" "write -P 0x13 8M 4M" \
                  "discard 9M 1M" "write -P 0x14 $(( 64 * 1024 * 1024 - 4096 )) 4096")
    (cd imgs && check_image $img)
    # The second candidate: same size, other bytes where data lies.
    mkdir -p elsewhere/data
    cp imgs/data/$img.data elsewhere/data/$img.data
    printf 'the other candidate' |
      dd of=elsewhere/data/$img.data bs=1 seek=100 conv=notrunc 2>/dev/null
    (cd imgs && qemu-img convert -q -O raw $img "$tmp/here.raw")
    (cd elsewhere && qemu-img convert -q -O raw ../imgs/$img "$tmp/ref.raw")
    ! cmp -s here.raw ref.raw ||
      fail "test setup: the two data file candidates read the same"
    (cd elsewhere && rd_unpack ../imgs/$img out.raw) ||
      fail "unpack ../imgs/$img from another directory failed"
    cmp ref.raw elsewhere/out.raw ||
      fail "unpack ../imgs/$img from another directory read another data file than qemu-img"
    if [ "$READER_ORACLE" != qemu ]; then
      (cd elsewhere && rd_sparsecow verify ../imgs/$img "$tmp/ref.raw") ||
        fail "verify ../imgs/$img from another directory: not qemu-img's content"
      (cd elsewhere && qemu-img map --output=json ../imgs/$img >"$tmp/q.map")
      (cd elsewhere && rd_map ../imgs/$img >"$tmp/s.map") ||
        fail "map ../imgs/$img from another directory failed"
      python3 -c 'import json,sys; assert json.load(open(sys.argv[1])) == json.load(open(sys.argv[2]))' \
        q.map s.map || fail "map ../imgs/$img from another directory differs from qemu-img map"
    fi
    rm -rf ref.raw here.raw elsewhere/out.raw elsewhere/data
  done
done

# data_file_raw=on means the data file is a valid raw image by itself:
# data written to it behind qemu's back (where L2 says allocated) is
# what a reader of the qcow2 sees.
printf 'written directly' | dd of=imgs/data/df-on-65536.qcow2.data bs=1 seek=100 conv=notrunc 2>/dev/null
(cd imgs && check_image df-on-65536.qcow2)

# An absolute data file name.
qemu-img create -q -f qcow2 -o data_file="$tmp/abs.data" abs.qcow2 8M
qio abs.qcow2 "write -P 0x21 1M 1M"
(cd elsewhere && check_image "$tmp/abs.qcow2")

# The data file is missing: a clear error naming it, no target.
if [ "$READER_ORACLE" != qemu ]; then
  cp imgs/df-off-4096.qcow2 imgs/lost.qcow2
  # Rename the external data file in the header extension (same length).
  python3 - imgs/lost.qcow2 <<'EOF'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
old = b"data/df-off-4096.qcow2.data"
new = b"data/nosuch-4096.qcow2.data"
i = b.find(old)
assert i > 0 and len(old) == len(new)
b[i:i + len(old)] = new
open(p, "wb").write(b)
EOF
  cd imgs
  qemu-img info lost.qcow2 2>&1 | grep -q nosuch || fail "test setup: data file name not changed"
  expect_fail "nosuch" rd_sparsecow unpack lost.qcow2 lost.raw
  [ ! -e lost.raw ] || fail "failed unpack left lost.raw behind"
  expect_fail "nosuch" rd_sparsecow map --json lost.qcow2
fi
