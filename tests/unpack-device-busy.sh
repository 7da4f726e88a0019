#!/usr/bin/env bash
# A block device that something holds is refused by unpack and pack,
# untouched, with what holds it named: a program that has it open
# exclusively (its pid and name), a swap area, a device-mapper device
# over it (where the kernel has device-mapper), a loop device over it or
# over a file target (with its mount point).  A program that has it
# open without O_EXCL does not hold it.  Pack writes a device only with
# -f or --target-is-device.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io losetup cmp python3
requires_root

cd "$tmp"
MiB=$((1024 * 1024))
size=$((64 * MiB))

qemu-img create -q -f qcow2 img.qcow2 $size
qemu-io -f qcow2 -c "write -P 0x11 0 100k" img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw

head -c $size /dev/urandom > dev.img
loop_attach dev.img
cp dev.img dev.ref

# A program holds it exclusively: named by pid and command.
coproc HOLD { exec python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL)
print("held", flush=True)
sys.stdin.read()' "$dev"; }
holder=$HOLD_PID
cleanup_fn "kill $holder 2>/dev/null"
read -r line <&"${HOLD[0]}"
[ "$line" = held ] || fail "the holder did not open $dev"
expect_fail "^sparsecow: $dev: device is in use: open in process $holder \\(python3\\); unmount or release it first\$" \
  sparsecow unpack -f img.qcow2 "$dev"
expect_fail "^sparsecow: $dev: device is in use: open in process $holder \\(python3\\)" \
  sparsecow pack --target-is-device ref.raw "$dev"
expect_fail "^sparsecow: $dev: device is in use: open in process $holder \\(python3\\)" \
  sparsecow unpack -n -f img.qcow2 "$dev"
exec {HOLD[1]}>&-
wait $holder || :
cmp dev.ref "$dev" || fail "a refused unpack or pack changed $dev"

# A swap area, where the system lets one be enabled.
if command -v mkswap >/dev/null && command -v swapon >/dev/null; then
  mkswap -q "$dev" 2>/dev/null || mkswap "$dev" >/dev/null
  if swapon "$dev" 2>/dev/null; then
    cleanup_fn "swapoff $dev 2>/dev/null"
    expect_fail "^sparsecow: $dev: device is in use: swap area $dev; unmount or release it first\$" \
      sparsecow unpack -f img.qcow2 "$dev"
    swapoff "$dev"
  else
    echo "$0: swapon refused here: a swap area is not tried"
  fi
fi

# A device-mapper device over it, where the kernel has device-mapper.
if command -v dmsetup >/dev/null && dmsetup version >/dev/null 2>&1; then
  name=sparsecow-test-$$
  echo "0 $((size / 512)) linear $dev 0" | dmsetup create "$name" ||
    fail "dmsetup create failed"
  cleanup_fn "dmsetup remove $name 2>/dev/null"
  dm=$(basename "$(readlink -f /dev/mapper/$name)")
  expect_fail "^sparsecow: $dev: device is in use: held by $dm \\($name\\)" \
    sparsecow unpack -f img.qcow2 "$dev"
  dmsetup remove "$name"
else
  echo "$0: no device-mapper in this kernel: a dm holder is not tried"
fi

# The backing device of a loop device, and the backing file of one: the
# exclusive open does not see them (the kernel's loop driver does not
# claim what it reads), yet writing them changes the loop device's
# file system under it.  Refused, with the loop device and its mount
# point named; nothing is written, the file system still checks clean.
if command -v mkfs.ext4 >/dev/null && command -v e2fsck >/dev/null; then
  mnt=$tmp/mnt
  mkdir "$mnt"
  over=$(losetup -f --show "$dev") || fail "losetup over $dev failed"
  cleanup_fn "loop_detach $over '$(loop_id "$over")'"
  mkfs.ext4 -q -F "$over" >/dev/null 2>&1 || fail "mkfs.ext4 on $over failed"
  mount "$over" "$mnt" || fail "cannot mount $over"
  cleanup_fn "umount $mnt 2>/dev/null"
  echo kept > "$mnt/file"
  for cmd in "unpack -f img.qcow2" "unpack -n -f img.qcow2" \
             "unpack --target-is-device img.qcow2" \
             "pack -f ref.raw" "pack --target-is-device ref.raw"; do
    # shellcheck disable=SC2086
    expect_fail "^sparsecow: $dev: is the backing device of the loop device $over, mounted on $mnt; unmount and detach it first \(losetup -d $over\)\$" \
      sparsecow $cmd "$dev"
  done
  # One of several targets.
  head -c $size /dev/urandom > other.img
  expect_fail "^sparsecow: $dev: is the backing device of the loop device $over, mounted on $mnt" \
    sparsecow unpack -f img.qcow2 other.img "$dev"
  [ "$(cat "$mnt/file")" = kept ] || fail "the file system over $dev lost its file"
  umount "$mnt"
  e2fsck -fn "$over" >/dev/null 2>&1 || fail "the file system over $dev is damaged"
  # Not mounted, still attached: refused, no mount point named, not
  # a byte written.
  cp "$dev" dev.ref
  expect_fail "^sparsecow: $dev: is the backing device of the loop device $over; unmount and detach it first" \
    sparsecow unpack -f img.qcow2 "$dev"
  cmp dev.ref "$dev" || fail "a refused unpack changed $dev under $over"
  losetup -d "$over"

  # A file behind a loop device, mounted: written in place (-n) it
  # would destroy the file system; replaced (-f), the mount would keep
  # a file that has no name any more.
  head -c $((16 * MiB)) /dev/zero > fs.img
  mkfs.ext4 -q -F fs.img >/dev/null 2>&1 || fail "mkfs.ext4 on fs.img failed"
  qemu-img create -q -f qcow2 small.qcow2 16M
  qemu-io -f qcow2 -c "write -P 0x22 0 1M" small.qcow2 >/dev/null
  mount -o loop fs.img "$mnt" || fail "cannot mount fs.img"
  floop=$(findmnt -n -o SOURCE --target "$mnt")
  echo kept > "$mnt/file"
  expect_fail "^sparsecow: fs.img: is the backing file of the loop device $floop, mounted on $mnt; unmount and detach it first \(losetup -d $floop\)\$" \
    sparsecow unpack -n small.qcow2 fs.img
  expect_fail "^sparsecow: fs.img: is the backing file of the loop device $floop, mounted on $mnt" \
    sparsecow unpack -f small.qcow2 fs.img
  expect_fail "^sparsecow: fs.img: is the backing file of the loop device $floop, mounted on $mnt" \
    sparsecow pack -f ref.raw fs.img
  [ "$(cat "$mnt/file")" = kept ] || fail "the mounted file system lost its file"
  umount "$mnt"
  e2fsck -fn fs.img >/dev/null 2>&1 || fail "the file system on fs.img is damaged"
  # Detached: written.
  sparsecow unpack -n small.qcow2 fs.img || fail "unpack -n to a detached fs.img failed"
  qemu-img compare -q -f raw -F qcow2 fs.img small.qcow2 || fail "fs.img differs from the image"
  head -c $size /dev/urandom | dd of="$dev" bs=1M oflag=direct status=none
else
  echo "$0: no mkfs.ext4: a loop device over the target is not tried"
fi

# Open without O_EXCL in another program: not a holder, written.
exec {reader}<"$dev"
sparsecow unpack -f img.qcow2 "$dev" ||
  fail "unpack to $dev that another program has open (not exclusively) failed"
cmp ref.raw "$dev" || fail "$dev open elsewhere differs from qemu-img convert"
exec {reader}<&-

# Released: pack writes it with --target-is-device, and qemu-img reads
# the image back from it.
sparsecow pack --target-is-device ref.raw "$dev" ||
  fail "pack --target-is-device to $dev failed"
qemu-img compare -q -f qcow2 -F raw "$dev" ref.raw ||
  fail "the image packed onto $dev differs from its source"

# The tests' cleanup (loop_attach, functions.sh) leaves alone a device
# that another test attached under the name of one a test detached
# itself: a test that detaches its device, whose name is at once taken
# by another file, leaves that file attached when it ends.
truncate -s 1M mine.img theirs.img
bash -c '. "$1/functions.sh"; loop_attach mine.img; echo "$dev" >mine.dev
  losetup -d "$dev"
  losetup "$dev" theirs.img || echo "$dev" >taken' sh "$srcdir" ||
  fail "test setup: a loop device over mine.img"
[ -e taken ] ||
  cleanup_fn "loop_detach $(cat mine.dev) '$(loop_id "$(cat mine.dev)")'"
if [ -e taken ]; then
  echo "$0: $(cat taken) was taken at once by another file: not tried"
else
  [ "$(losetup -n -O NAME -j theirs.img)" = "$(cat mine.dev)" ] ||
    fail "the cleanup of a test detached $(cat mine.dev), which another file had taken"
fi

exit 0
