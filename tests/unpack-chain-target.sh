#!/usr/bin/env bash
# Every file a qcow2 source reads is refused as a target, with -f too,
# by pack, unpack and bmap: the files of its backing chain, its external
# data file, a loop device over any of them; and a source that is a
# loop device over the target file.  qemu-img refuses the same commands
# (its write lock on the images it reads); what must hold here is that
# each command fails and every file is left as it was.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io cmp

cd "$tmp"
head -c 4M /dev/urandom > a.raw
qemu-img convert -q -c -O qcow2 a.raw base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 0x11 0 64k' top.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o data_file=ext.raw df.qcow2 4M
qemu-io -c 'write -P 0x22 1M 64k' df.qcow2 >/dev/null
for f in base.qcow2 mid.qcow2 top.qcow2 ext.raw df.qcow2; do
  cp "$f" "$f.orig"
done

unchanged () {
  local f
  for f in base.qcow2 mid.qcow2 top.qcow2 ext.raw df.qcow2; do
    cmp -s "$f" "$f.orig" || fail "$*: $f was changed"
  done
}

for t in base.qcow2 mid.qcow2; do
  for cmd in "unpack -f top.qcow2 $t" "pack -f top.qcow2 $t" \
             "pack -f -c top.qcow2 $t" "bmap -f top.qcow2 -o $t" \
             "pack -f --bmap-out $t top.qcow2 new.qcow2"; do
    expect_fail "$t: is the backing file" sparsecow $cmd
    unchanged "$cmd"
    [ ! -e new.qcow2 ] || fail "$cmd: left new.qcow2"
  done
done
for cmd in "unpack -f df.qcow2 ext.raw" "pack -f df.qcow2 ext.raw" \
           "bmap -f df.qcow2 -o ext.raw"; do
  expect_fail "ext.raw: is the external data file" sparsecow $cmd
  unchanged "$cmd"
done
# The same names through a symbolic link and a hard link.
ln -s base.qcow2 link.qcow2
ln mid.qcow2 hard.qcow2
expect_fail "is the backing file" sparsecow unpack -f top.qcow2 link.qcow2
expect_fail "is the backing file" sparsecow unpack -f top.qcow2 hard.qcow2
unchanged "links"
# An unrelated file is still replaced, and the result is right.
echo old > other.raw
sparsecow unpack -f top.qcow2 other.raw
qemu-img compare -q -f raw -F qcow2 other.raw top.qcow2 ||
  fail "unpack -f to an unrelated file differs"

# Loop devices: over a backing file as the target, over the target as
# the source.
if [ "$(id -u)" = 0 ] && command -v losetup >/dev/null; then
  loop_attach base.qcow2; lb=$dev
  expect_fail "loop device over the backing file" \
    sparsecow unpack -f top.qcow2 "$lb"
  expect_fail "loop device over the backing file" \
    sparsecow pack -f top.qcow2 "$lb"
  unchanged "loop device over base.qcow2"
  loop_attach top.qcow2; lt=$dev
  expect_fail "is a loop device over it" sparsecow unpack -f "$lt" top.qcow2
  expect_fail "is a loop device over it" sparsecow unpack -f -n "$lt" top.qcow2
  expect_fail "is a loop device over it" sparsecow pack -f "$lt" top.qcow2
  unchanged "loop device over top.qcow2"
else
  echo "$0: no root or no losetup: loop device cases left out"
fi
exit 0
