#!/usr/bin/env bash
# A block device that something holds is refused by unpack and pack,
# untouched, with what holds it named: a program that has it open
# exclusively (its pid and name), a swap area, a device-mapper device
# over it (where the kernel has device-mapper).  A program that has it
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

exit 0
