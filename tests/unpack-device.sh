#!/usr/bin/env bash
# sparsecow unpack to a block device (a loop device): whatever the
# device held before, it reads back as qemu-img convert's output, holes
# included; a larger device keeps the rest; a smaller one is refused
# before anything is written; without -f (or --target-is-device) a
# device is not written at all.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io losetup cmp
requires_root

cd "$tmp"
MiB=$((1024 * 1024))
size=$((64 * MiB))

qemu-img create -q -f qcow2 img.qcow2 $size
qemu-io -f qcow2 -c "write -P 0x11 0 100k" -c "write -z 2M 1M" \
  -c "write -P 0x22 10M 4k" -c "write -P 0x33 63M 1M" img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw

# attach FILE: set dev to a loop device on FILE, detached at exit.
# (Not in a subshell: the cleanup must be registered here.)
attach () {
  dev=$(losetup -f --show "$1") || { echo "$0: SKIP: no loop device"; exit 77; }
  cleanup_fn "losetup -d $dev"
}

# Exactly the image size, full of random bytes: the holes must be zeroed.
head -c $size /dev/urandom > exact.img
cp exact.img exact.ref
attach exact.img
expect_fail "$dev: is a block device \\(use -f or --target-is-device" \
  sparsecow unpack img.qcow2 "$dev"
expect_fail "$dev: is a block device \\(use -f or --target-is-device" \
  sparsecow pack ref.raw "$dev"
cmp exact.ref "$dev" || fail "unpack and pack without -f changed $dev"
sparsecow unpack -f img.qcow2 "$dev" || fail "unpack to $dev failed"
cmp ref.raw "$dev" || fail "$dev differs from qemu-img convert"

# The same from a pipe: the holes are zeroed at the end.
head -c $size /dev/urandom > stream.img
attach stream.img
cat img.qcow2 | sparsecow unpack --target-is-device - "$dev" || fail "stream unpack to $dev failed"
cmp ref.raw "$dev" || fail "stream unpack: $dev differs from qemu-img convert"

# Larger: the image is written at the start, the rest is left alone.
head -c $((96 * MiB)) /dev/urandom > large.img
tail -c $((32 * MiB)) large.img > large-tail.ref
attach large.img
sparsecow unpack -f -j 4 img.qcow2 "$dev" || fail "unpack to a larger $dev failed"
cmp -n $size ref.raw "$dev" || fail "larger $dev differs from qemu-img convert"
tail -c $((32 * MiB)) "$dev" | cmp - large-tail.ref ||
  fail "unpack wrote past the image size on $dev"

# Smaller: refused, untouched.
head -c $((32 * MiB)) /dev/urandom > small.img
cp small.img small.ref
attach small.img
expect_fail "$dev: device is smaller than the image \\(33554432 < 67108864\\)" \
  sparsecow unpack -f img.qcow2 "$dev"
cmp small.ref "$dev" || fail "a refused unpack changed $dev"

# Mounted: refused (the device is opened exclusively), by pack and by
# unpack, and the file system on it is untouched.
if command -v mkfs.ext4 >/dev/null; then
  truncate -s $size mounted.img
  attach mounted.img
  mkfs.ext4 -q "$dev"
  mkdir mnt
  mount "$dev" mnt || { echo "$0: SKIP: cannot mount"; exit 77; }
  cleanup_fn "umount $tmp/mnt 2>/dev/null"
  echo kept > mnt/file
  sync
  expect_fail "$dev: device is in use: mounted on $tmp/mnt" \
    sparsecow unpack -f img.qcow2 "$dev"
  expect_fail "$dev: device is in use: mounted on $tmp/mnt" \
    sparsecow pack -f ref.raw "$dev"
  [ "$(cat mnt/file)" = kept ] || fail "a refused unpack changed a mounted $dev"
  umount mnt
  e2fsck -fn "$dev" >/dev/null 2>&1 || fail "the file system on $dev was damaged"
fi

exit 0
