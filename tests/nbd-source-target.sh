#!/usr/bin/env bash
# The target checks run whatever the source is.  With an NBD source (a
# URI, or a server started with [ CMD ]), pack, unpack and bmap -o
# refuse a target that an attached loop device reads, naming the loop
# device, as they do with a file source; and a target that is a file
# the started server reads is refused as the source itself is.  Nothing
# is written to a refused target.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io qemu-nbd cmp

cd "$tmp"
MiB=$((1024 * 1024))

qemu-img create -q -f qcow2 img.qcow2 16M
qemu-io -f qcow2 -c "write -P 0x22 0 1M" img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw

# A file the started server reads: the source itself, for -f and -n.
cp ref.raw served.raw
cp served.raw served.ref
for opt in -f -n; do
  expect_fail "^sparsecow: served.raw: is the file of the NBD server served.raw itself; write to another name\$" \
    sparsecow pack $opt -- [ qemu-nbd -r -f raw served.raw ] served.raw
done
cmp served.ref served.raw || fail "a refused pack changed the served file"
cp img.qcow2 served.qcow2
expect_fail "^sparsecow: served.qcow2: is the file of the NBD server served.qcow2 itself" \
  sparsecow unpack -n -- [ qemu-nbd -r -f raw served.qcow2 ] served.qcow2
cmp img.qcow2 served.qcow2 || fail "a refused unpack changed the served file"

# A file behind an attached loop device (skipped without losetup or
# root).
head -c $((16 * MiB)) /dev/urandom > back.img
cp back.img back.ref
loop_attach back.img
nbd_serve src qemu-nbd -r -f raw ref.raw
raw_uri=$nbd_uri
nbd_serve img qemu-nbd -r -f qcow2 img.qcow2
img_uri=$nbd_uri
want="^sparsecow: back.img: is the backing file of the loop device $dev; unmount and detach it first \\(losetup -d $dev\\)\$"
expect_fail "$want" sparsecow pack -f "$raw_uri" back.img
expect_fail "$want" sparsecow pack -n "$raw_uri" back.img
expect_fail "$want" sparsecow pack -n -- [ qemu-nbd -r -f raw ref.raw ] back.img
expect_fail "$want" sparsecow unpack -n "$img_uri" back.img
expect_fail "$want" sparsecow unpack -f -- [ qemu-nbd -r -f qcow2 img.qcow2 ] back.img
expect_fail "$want" sparsecow pack --bmap-out back.img "$raw_uri" out.qcow2
[ ! -e out.qcow2 ] || fail "a refused pack left its image"
expect_fail "$want" sparsecow bmap "$raw_uri" -o back.img
cmp back.ref back.img || fail "a refused command changed the loop device's file"

# Detached: written, and the same as from a file source.
losetup -d "$dev"
sparsecow pack -n "$raw_uri" back.img || fail "pack -n from $raw_uri failed"
qemu-img compare -q -f raw -F qcow2 ref.raw back.img || fail "back.img differs from ref.raw"
exit 0
