#!/usr/bin/env bash
# A loop device over the same file as another loop device that is in
# use (an active swap area, held open with O_EXCL by a program) is
# refused, naming that one and its use; so is the file behind it.  A
# partitioned loop device with a partition mounted is named as mounted
# before any loop device over the partition is, and the refusal names
# the partition a loop device reads; a loop device over the other,
# unused partition is written, and is refused while that partition is
# in use.  cmp, qemu-img and e2fsck judge what was (not) written.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io losetup cmp python3 blockdev
requires_root

cd "$tmp"
MiB=$((1024 * 1024))
size=$MiB

qemu-img create -q -f qcow2 img.qcow2 $size
qemu-io -f qcow2 -c "write -P 0x11 0 100k" -c "write -P 0x22 512k 64k" \
  img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw

# A loop device of our own that can be written (a read-only flag set on
# the device by an earlier user stays with it).
attach_rw () {
  loop_attach "$1"
  [ "$(blockdev --getro "$dev")" = 0 ] || blockdev --setrw "$dev"
}

# hold DEV: a program holds DEV open with O_EXCL until killed ($holder).
hold () {
  rm -f "$tmp/held"
  python3 -c 'import os, sys, time
os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL)
open(sys.argv[2], "w").close()
time.sleep(120)' "$1" "$tmp/held" &
  holder=$!
  cleanup_fn "kill $holder 2>/dev/null"
  for _ in $(seq 100); do [ -e "$tmp/held" ] && break; sleep 0.1; done
  [ -e "$tmp/held" ] || fail "the holder of $1 did not start"
}
release () { kill "$holder"; wait "$holder" 2>/dev/null || :; }

# ---- beside a loop device held with O_EXCL, or an active swap area ----
truncate -s $((4 * MiB)) f.img
attach_rw f.img
a=$dev
attach_rw f.img
b=$dev
cp f.img f.ref
hold "$a"
expect_fail "^sparsecow: $b: is over the same file as the loop device $a, .*open in process $holder \(python3\).*, which would change under it; release and detach it first \(losetup -d $a\)\$" \
  sparsecow unpack -f img.qcow2 "$b"
expect_fail "^sparsecow: f.img: is the backing file of the loop device $a, .*open in process $holder \(python3\)" \
  sparsecow unpack -f img.qcow2 f.img
cmp f.ref f.img || fail "f.img was written beside a held loop device"
release

if command -v mkswap >/dev/null && command -v swapon >/dev/null; then
  mkswap -q "$a" || fail "mkswap $a failed"
  if swapon "$a" 2>/dev/null; then
    cleanup_fn "swapoff $a 2>/dev/null"
    cp f.img f.ref
    # Other processes that have it open a moment (losetup, udev) are
    # named too.
    expect_fail "^sparsecow: $b: is over the same file as the loop device $a, swap area $a(, open in process [0-9]+ \([^)]*\))*, which would change under it; swapoff and detach it first \(losetup -d $a\)\$" \
      sparsecow unpack -f img.qcow2 "$b"
    expect_fail "^sparsecow: $b: is over the same file as the loop device $a, swap area $a" \
      sparsecow pack -f --target-is-device ref.raw "$b"
    cmp f.ref f.img || fail "f.img was written under an active swap area"
    swapoff "$a"
  else
    echo "$0: swapon refused $a: a swap area is not tried"
  fi
fi
# Released, the second loop device is the user's to write.
sparsecow unpack -f -q img.qcow2 "$b" || fail "unpack to $b failed"
cmp -n $size ref.raw "$b" || fail "$b differs from qemu-img convert"

# ---- a partitioned loop device, one partition mounted -----------------
if ! command -v partx >/dev/null || ! command -v mkfs.ext4 >/dev/null ||
   ! command -v e2fsck >/dev/null; then
  echo "$0: no partx, mkfs.ext4 or e2fsck: partitions are not tried"
  exit 0
fi
truncate -s $((16 * MiB)) disk.img
mbr disk.img 2048:8192 10240:8192
attach_rw disk.img
d=$dev
if ! partx -a "$d" 2>/dev/null || [ ! -b "${d}p1" ] || [ ! -b "${d}p2" ]; then
  echo "$0: partx cannot add partitions here: partitions are not tried"
  exit 0
fi
cleanup_fn "partx -d $d"
mkfs.ext4 -q -F "${d}p1" >/dev/null 2>&1 || fail "mkfs.ext4 on ${d}p1 failed"
mnt=$tmp/mnt
mkdir "$mnt"
mount "${d}p1" "$mnt" || fail "cannot mount ${d}p1"
cleanup_fn "umount $mnt 2>/dev/null"
echo kept > "$mnt/file"
sync
attach_rw "${d}p1"
l1=$dev
attach_rw "${d}p2"
l2=$dev
cp disk.img disk.ref
# The mount is named first: detaching the loop device over the
# partition would only lead to it.
expect_fail "^sparsecow: $d: device is in use: mounted on $mnt; unmount or release it first\$" \
  sparsecow unpack -f img.qcow2 "$d"
expect_fail "^sparsecow: ${d}p1: device is in use: mounted on $mnt; unmount or release it first\$" \
  sparsecow unpack -f img.qcow2 "${d}p1"
# The unused partition is read by the loop device over it.
expect_fail "^sparsecow: ${d}p2: is the backing device of the loop device $l2; unmount and detach it first \(losetup -d $l2\)\$" \
  sparsecow unpack -f img.qcow2 "${d}p2"
cmp disk.ref disk.img || fail "refused targets changed disk.img"
# A loop device over the unused partition is not over the mounted one.
hold "${d}p2"
expect_fail "^sparsecow: $l2: is over ${d}p2, a partition of the loop device $d; ${d}p2 is in use \(.*open in process $holder \(python3\).*\), which would change under it; unmount or release it first\$" \
  sparsecow unpack -f img.qcow2 "$l2"
cmp disk.ref disk.img || fail "a loop device over a held partition was written"
release
sparsecow unpack -f -q img.qcow2 "$l2" || fail "unpack to $l2 failed"
cmp -n $size ref.raw "$l2" || fail "$l2 differs from qemu-img convert"
[ "$(cat "$mnt/file")" = kept ] || fail "the mounted file system lost its file"
umount "$mnt"
e2fsck -fn "${d}p1" >/dev/null 2>&1 || fail "the file system on ${d}p1 is damaged"
# Unmounted: the disk's partition is what the loop device reads.
losetup -d "$l2"
expect_fail "^sparsecow: $d: its partition ${d}p1 is the backing device of the loop device $l1; unmount and detach it first \(losetup -d $l1\)\$" \
  sparsecow unpack -f img.qcow2 "$d"

exit 0
