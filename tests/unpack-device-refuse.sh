#!/usr/bin/env bash
# Targets that must be refused before anything is written, by pack and
# unpack, with the image from a file or from a pipe:
# --target-is-device with a target that is not a block device (a name
# that does not exist: nothing is created; a file: left as it was); a
# read-only device (losetup -r), at open.  One of several targets that
# is refused is reported by name, and the others are written.  Targets
# that overlap are refused up front: a file and a loop device over it,
# a disk and one of its partitions.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io losetup cmp mkfifo python3
requires_root

cd "$tmp"
MiB=$((1024 * 1024))
size=$((16 * MiB))

qemu-img create -q -f qcow2 img.qcow2 $size
qemu-io -f qcow2 -c "write -P 0x11 0 100k" -c "write -P 0x22 10M 1M" \
  img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw

# ---- --target-is-device and a target that is not a device ----------
head -c $MiB /dev/urandom > file.bin
cp file.bin file.ref
mkfifo fifo
for t in ./nodev file.bin fifo; do
  for cmd in "unpack --target-is-device img.qcow2" \
             "unpack --target-is-device -f img.qcow2" \
             "unpack --target-is-device -n img.qcow2" \
             "pack --target-is-device ref.raw" \
             "pack --target-is-device -f ref.raw"; do
    # shellcheck disable=SC2086
    expect_fail "^sparsecow: $t: not a block device\$" sparsecow $cmd "$t"
  done
  expect_fail "^sparsecow: $t: not a block device\$" \
    sh -c 'cat img.qcow2 | "$@"' sh "$SPARSECOW" unpack --target-is-device - "$t"
  expect_fail "^sparsecow: $t: not a block device\$" \
    sh -c 'cat ref.raw | "$@"' sh "$SPARSECOW" pack --target-is-device - "$t"
done
[ ! -e nodev ] || fail "--target-is-device created ./nodev"
cmp file.ref file.bin || fail "--target-is-device changed a file"
expect_fail "^sparsecow: stdout: not a block device\$" \
  sparsecow unpack --target-is-device img.qcow2 -
expect_fail "^sparsecow: nbd://localhost/x: not a block device\$" \
  sparsecow unpack --target-is-device img.qcow2 nbd://localhost/x

# With several targets the one that is not a device is reported, and
# the device beside it written.
truncate -s $size d1.img
loop_attach d1.img
rc=0
sparsecow unpack --target-is-device img.qcow2 "$dev" ./nodev 2> multi.err ||
  rc=$?
[ $rc -eq 1 ] || fail "a target that is not a device beside one: exit $rc"
grep -q "^sparsecow: ./nodev: not a block device\$" multi.err ||
  { cat multi.err >&2; fail "./nodev was not reported"; }
[ ! -e nodev ] || fail "--target-is-device created ./nodev beside $dev"
cmp ref.raw "$dev" || fail "$dev beside a refused target differs"

# ---- a read-only device ---------------------------------------------
head -c $size /dev/urandom > ro.img
cp ro.img ro.ref
requires losetup
ro=$(losetup -r -f --show ro.img) || { echo "$0: SKIP: no loop device"; exit 77; }
cleanup_fn "losetup -d $ro"
for cmd in "unpack -f img.qcow2" "unpack --target-is-device -n img.qcow2" \
           "pack -f ref.raw"; do
  # shellcheck disable=SC2086
  expect_fail "^sparsecow: $ro: device is read-only\$" sparsecow $cmd "$ro"
done
expect_fail "^sparsecow: $ro: device is read-only\$" \
  sh -c 'cat img.qcow2 | "$@"' sh "$SPARSECOW" unpack -f - "$ro"
# Beside a device that can be written, from a pipe.
head -c $size /dev/urandom | dd of="$dev" bs=1M oflag=direct status=none
rc=0
cat img.qcow2 | sparsecow unpack -f - "$ro" "$dev" 2> ro.err || rc=$?
[ $rc -eq 1 ] || fail "a read-only target beside another: exit $rc"
grep -q "^sparsecow: $ro: device is read-only\$" ro.err &&
  grep -q "^sparsecow: $dev: written\$" ro.err ||
  { cat ro.err >&2; fail "the read-only and the written targets were not reported"; }
cmp ref.raw "$dev" || fail "$dev beside a read-only target differs"
cmp ro.ref ro.img || fail "the read-only $ro was changed"

# ---- a file and a loop device over it --------------------------------
head -c $size /dev/urandom > over.bin
cp over.bin over.ref
loop_attach over.bin
over=$dev
expect_fail "^sparsecow: unpack: $over is a loop device over over.bin, another target\$" \
  sparsecow unpack -f img.qcow2 "$over" over.bin
expect_fail "^sparsecow: unpack: $over is a loop device over ./over.bin, another target\$" \
  sh -c 'cat img.qcow2 | "$@"' sh "$SPARSECOW" unpack -f - ./over.bin "$over"
cmp over.ref over.bin || fail "refused targets changed over.bin"

# ---- a disk and its partitions -----------------------------------------
# Two partitions in an MBR: 1 MiB + 20 MiB and 21 MiB + 20 MiB.
truncate -s $((64 * MiB)) disk.img
mbr disk.img 2048:40960 43008:40960
loop_attach disk.img
disk=$dev
requires partx
partx -a "$disk" || { echo "$0: SKIP: partx cannot add partitions"; exit 77; }
# Added by hand, they outlive the loop device unless deleted first.
cleanup_fn "partx -d $disk"
[ -b "${disk}p1" ] && [ -b "${disk}p2" ] ||
  fail "partx -a $disk made no ${disk}p1 and ${disk}p2"
cp disk.img disk.ref
expect_fail "^sparsecow: unpack: ${disk}p2 is a partition of $disk, another target\$" \
  sparsecow unpack -f img.qcow2 "${disk}p2" "$disk"
expect_fail "^sparsecow: unpack: ${disk}p1 is a partition of $disk, another target\$" \
  sh -c 'cat img.qcow2 | "$@"' sh "$SPARSECOW" unpack -f - "$disk" "${disk}p1"
# A partition of a loop device over a file is a loop device over it.
expect_fail "^sparsecow: unpack: ${disk}p1 is a loop device over disk.img, another target\$" \
  sparsecow unpack -f img.qcow2 disk.img "${disk}p1"
cmp disk.ref disk.img || fail "refused targets changed $disk"
# Two partitions of one disk do not overlap: both are written.
sparsecow unpack -f -q img.qcow2 "${disk}p1" "${disk}p2" ||
  fail "unpack to ${disk}p1 and ${disk}p2 failed"
cmp -n $size ref.raw "${disk}p1" && cmp -n $size ref.raw "${disk}p2" ||
  fail "${disk}p1 or ${disk}p2 differs from qemu-img convert"

exit 0
