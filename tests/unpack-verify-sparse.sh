#!/usr/bin/env bash
# sparsecow unpack --verify into a sparse file of 64 TiB that holds a
# few clusters: the read-back reads the file's data only (its holes
# read as zero by definition, and its extent map, asked after the
# flush, says where they are), so it ends in seconds, where reading the
# holes took hours; and it still finds a byte changed after the flush
# (test hook SPARSECOW_TEST_CHANGE_BEFORE_VERIFY, on a file written in
# place) in a data range, and a non-zero byte written into a range that
# must read as zero, a hole or a zero cluster of the image.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io timeout truncate

cd "$tmp"
TiB=$((1024 * 1024 * 1024 * 1024))
size=$((64 * TiB))
# Each command is given a minute: generous for sanitizers and valgrind,
# far less than reading the holes would take.
limit=60

# A file system that holds a sparse file of that size: this one, or a
# tmpfs (ext4 stops at 16 TiB).
dir=$tmp
if ! truncate -s $size probe.raw 2>/dev/null; then
  [ "$(id -u)" = 0 ] ||
    { echo "$0: SKIP: $tmp cannot hold a file of 64 TiB and no tmpfs without root"; exit 77; }
  mkdir mnt
  mount -t tmpfs -o size=64m tmpfs mnt ||
    { echo "$0: SKIP: cannot mount a tmpfs"; exit 77; }
  cleanup_fn "umount $tmp/mnt"
  dir=$tmp/mnt
  truncate -s $size "$dir/probe.raw" ||
    { echo "$0: SKIP: no file system here holds a file of 64 TiB"; exit 77; }
fi
rm -f probe.raw "$dir/probe.raw"

qemu-img create -q -f qcow2 img.qcow2 $size
qemu-io -f qcow2 -c "write -P 0x11 0 64k" -c "write -P 0x22 $((20 * TiB)) 4k" \
  -c "write -z $((30 * TiB)) 1M" -c "write -P 0x33 $((size - 65536)) 64k" \
  img.qcow2 >/dev/null

run () { timeout $limit $SC_VALGRIND "$SPARSECOW" "$@"; }

# New files, one and two at once, with one thread and several: written,
# read back, and equal to the image as qemu-img compares them (one of
# each run: qemu-img takes seconds for each).
for j in 1 4; do
  rm -f "$dir"/new*.raw
  run unpack -q -j $j --verify img.qcow2 "$dir/new.raw" ||
    fail "unpack -j $j --verify into a new file of 64 TiB failed (rc $?)"
  run unpack -q -j $j --verify img.qcow2 "$dir/new1.raw" "$dir/new2.raw" ||
    fail "unpack -j $j --verify into two new files failed (rc $?)"
  f=new.raw
  [ $j = 1 ] || f=new2.raw
  qemu-img compare -q -f qcow2 -F raw img.qcow2 "$dir/$f" ||
    fail "unpack -j $j --verify: $f differs from the image"
done
rm -f "$dir"/new*.raw

# Written in place into a sparse file of that size, then changed after
# the flush: a data byte (20T+5 holds 0x22), a byte of a hole
# (10T+12345) and of a zero cluster (30T+100), each found where it is;
# equal again after a good run.
truncate -s $size "$dir/t.raw"
for off in $((20 * TiB + 5)) $((10 * TiB + 12345)) $((30 * TiB + 100)); do
  expect_fail "^sparsecow: $dir/t.raw: verify: differs from the image at offset $off\$" \
    env SPARSECOW_TEST_CHANGE_BEFORE_VERIFY=1:$off \
    timeout $limit $SC_VALGRIND "$SPARSECOW" unpack -q -n --verify \
    img.qcow2 "$dir/t.raw"
done
run unpack -q -n --verify img.qcow2 "$dir/t.raw" ||
  fail "unpack -n --verify failed (rc $?)"
qemu-img compare -q -f qcow2 -F raw img.qcow2 "$dir/t.raw" ||
  fail "unpack -n --verify: the file differs from the image"
# Of two changes, the first is reported, whichever is looked at first.
expect_fail "verify: differs from the image at offset $((10 * TiB))\$" \
  env SPARSECOW_TEST_CHANGE_BEFORE_VERIFY=1:$((40 * TiB)),1:$((10 * TiB)) \
  timeout $limit $SC_VALGRIND "$SPARSECOW" unpack -q -j 4 -n --verify \
  img.qcow2 "$dir/t.raw"

exit 0
