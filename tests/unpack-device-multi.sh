#!/usr/bin/env bash
# sparsecow unpack IMAGE DEV1 DEV2 DEV3: every device equals qemu-img
# convert's output (with --verify, from one read of the image, from a
# file or a pipe), and each is listed as written; a target that fails (too small; on a file system
# that fills up under it; changed before the read-back) is reported by
# name (one that failed part way as partly written), the others are completed and verified, and the exit status is
# non-zero.  Standard output, NBD and one device named twice are
# refused as one of several targets.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io losetup cmp
requires_root

cd "$tmp"
MiB=$((1024 * 1024))
size=$((64 * MiB))

qemu-img create -q -f qcow2 img.qcow2 $size
qemu-io -f qcow2 -c "write -P 0x11 0 100k" -c "write -z 2M 1M" \
  -c "write -P 0x22 10M 8M" -c "write -P 0x33 63M 1M" img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw

devs=()
for n in 1 2 3; do
  head -c $size /dev/urandom > d$n.img
  loop_attach d$n.img
  devs+=("$dev")
done

sparsecow unpack -f --verify img.qcow2 "${devs[@]}" 2> all.err ||
  fail "unpack to ${devs[*]} failed"
# Each is listed when all succeed too; with -q nothing is printed.
for d in "${devs[@]}"; do
  grep -q "^sparsecow: $d: written and verified\$" all.err ||
    { cat all.err >&2; fail "$d was not reported as written and verified"; }
done
[ "$(wc -l < all.err)" -eq 3 ] || { cat all.err >&2; fail "more than the 3 targets reported"; }
sparsecow unpack -f -q img.qcow2 "${devs[@]}" 2> quiet.err ||
  fail "unpack -q to ${devs[*]} failed"
[ ! -s quiet.err ] || { cat quiet.err >&2; fail "unpack -q printed something"; }
for d in "${devs[@]}"; do
  cmp ref.raw "$d" || fail "$d differs from qemu-img convert"
done
# From a pipe: one read for all three.
for d in "${devs[@]}"; do
  head -c $size /dev/urandom | dd of="$d" bs=1M oflag=direct status=none
done
cat img.qcow2 | sparsecow unpack -f - "${devs[@]}" 2> pipe.err ||
  fail "unpack from a pipe to ${devs[*]} failed"
for d in "${devs[@]}"; do
  grep -q "^sparsecow: $d: written\$" pipe.err ||
    { cat pipe.err >&2; fail "from a pipe: $d was not reported as written"; }
done
for d in "${devs[@]}"; do
  cmp ref.raw "$d" || fail "from a pipe: $d differs from qemu-img convert"
done

# A target too small: reported by name, untouched; the others written.
head -c $((32 * MiB)) /dev/urandom > small.img
cp small.img small.ref
loop_attach small.img
small=$dev
truncate -s $((32 * MiB)) small2.img
loop_attach small2.img
small2=$dev
for d in "${devs[@]}"; do
  head -c $size /dev/urandom | dd of="$d" bs=1M oflag=direct status=none
done
rc=0
sparsecow unpack -f --verify img.qcow2 "${devs[0]}" "$small" "${devs[2]}" \
  2> small.err || rc=$?
[ $rc -ne 0 ] || fail "unpack with a target too small succeeded"
grep -q "^sparsecow: $small: device is smaller than the image" small.err ||
  { cat small.err >&2; fail "the small target was not named"; }
cmp small.ref "$small" || fail "the refused $small was written"
for d in "${devs[0]}" "${devs[2]}"; do
  cmp ref.raw "$d" || fail "$d was not completed beside a failed target"
  grep -q "^sparsecow: $d: written and verified\$" small.err ||
    fail "$d was not reported as written"
done

# Every target too small: each named once, and the whole once.
rc=0
sparsecow unpack -f img.qcow2 "$small" "$small2" 2> smalls.err || rc=$?
[ $rc -eq 1 ] || fail "unpack with every target too small: exit $rc"
for d in "$small" "$small2"; do
  grep -q "^sparsecow: $d: device is smaller than the image" smalls.err ||
    { cat smalls.err >&2; fail "$d was not named"; }
done
grep -q "^sparsecow: targets: every target failed\$" smalls.err ||
  { cat smalls.err >&2; fail "the failure of every target was not said once"; }

# A target whose writes fail under it: a loop device over a file on a
# 4 MiB tmpfs, which cannot hold the image's 9 MiB of data.
mkdir full
mount -t tmpfs -o size=4M tmpfs full || fail "cannot mount a tmpfs"
cleanup_fn "umount $tmp/full"
truncate -s $size full/dev.img
loop_attach full/dev.img
full=$dev
for d in "${devs[0]}" "${devs[1]}"; do
  head -c $size /dev/urandom | dd of="$d" bs=1M oflag=direct status=none
done
rc=0
sparsecow unpack -f img.qcow2 "${devs[0]}" "$full" "${devs[1]}" \
  2> full.err || rc=$?
[ $rc -ne 0 ] || fail "unpack with a failing target succeeded"
grep -q "^sparsecow: $full: " full.err ||
  { cat full.err >&2; fail "the failing target was not named"; }
# And said to be partly written, as it would be if written alone.
grep -q "^sparsecow: $full: written in place, left partly written\$" full.err ||
  { cat full.err >&2; fail "the failing target was not said to be partly written"; }
[ "$(grep -c "^sparsecow: $full: written in place" full.err)" = 1 ] ||
  { cat full.err >&2; fail "the failing target was said to be partly written more than once"; }
for d in "${devs[0]}" "${devs[1]}"; do
  ! grep -q "^sparsecow: $d: written in place" full.err ||
    { cat full.err >&2; fail "$d, written whole, was said to be partly written"; }
done
for d in "${devs[0]}" "${devs[1]}"; do
  cmp ref.raw "$d" || fail "$d was not completed beside a failing target"
done

# Changed before the read-back: that one fails verification.
rc=0
SPARSECOW_TEST_CHANGE_BEFORE_VERIFY=2:$((11 * MiB)) \
  "$SPARSECOW" unpack -f --verify img.qcow2 "${devs[@]}" 2> verify.err || rc=$?
[ $rc -ne 0 ] || fail "unpack with a target that differs succeeded"
grep -q "^sparsecow: ${devs[1]}: verify: differs from the image at offset $((11 * MiB))\$" \
  verify.err || { cat verify.err >&2; fail "the changed target was not named"; }
grep -q "^sparsecow: ${devs[0]}: written and verified\$" verify.err &&
  grep -q "^sparsecow: ${devs[2]}: written and verified\$" verify.err ||
  { cat verify.err >&2; fail "the good targets were not reported"; }
# Written whole, it differs: nothing more is said of it than when it is
# the only target (and qemu-img compare finds the one byte).
! grep -q "^sparsecow: ${devs[1]}: written in place" verify.err ||
  { cat verify.err >&2; fail "the target that failed its read-back was said to be partly written"; }
[ "$(grep -c "^sparsecow: ${devs[1]}: " verify.err)" = 1 ] ||
  { cat verify.err >&2; fail "the target that failed its read-back was named more than once"; }
rc=0
qemu-img compare -q -f raw -F raw ref.raw "${devs[1]}" 2>/dev/null || rc=$?
[ $rc = 1 ] || fail "the changed byte of ${devs[1]} is not found by qemu-img compare"

# Refused as one of several targets.
expect_fail "unpack: stdout: several targets must be files or block devices" \
  sparsecow unpack -f img.qcow2 "${devs[0]}" -
expect_fail "unpack: nbd://localhost/x: several targets must be files or block devices" \
  sparsecow unpack -f img.qcow2 "${devs[0]}" nbd://localhost/x
expect_fail "unpack: ${devs[0]} and ${devs[0]} are the same target" \
  sparsecow unpack -f img.qcow2 "${devs[0]}" "${devs[0]}"
# Without -f no device is written.
expect_fail "${devs[0]}: is a block device" \
  sparsecow unpack img.qcow2 "${devs[0]}" "${devs[1]}"

exit 0
