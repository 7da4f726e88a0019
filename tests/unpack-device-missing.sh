#!/usr/bin/env bash
# A target in /dev that does not exist (/dev/sdz when no such disk is
# there, or a card not yet plugged in) is refused: devtmpfs would take
# a regular file of the image's size, in memory.  unpack and pack, with
# and without -f and --target-is-device, from a file and from a pipe:
# "no such device", exit 1, nothing created in /dev.  /dev/shm, a file
# system of its own, still takes files.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires qemu-img qemu-io findmnt cmp

# The test is about the /dev of device nodes.
fstype=$(findmnt -n -o FSTYPE --target /dev) || :
target=$(findmnt -n -o TARGET --target /dev) || :
[ "$fstype" = devtmpfs ] || [ "$target" = /dev ] ||
  { echo "$0: SKIP: /dev is not a file system of its own"; exit 77; }

cd "$tmp"
qemu-img create -q -f qcow2 img.qcow2 16M
qemu-io -f qcow2 -c "write -P 0x11 0 1M" img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw

# A name no device has; removed (with any temporary file beside it) if
# a failure left it behind.
name=sparsecow-missing-$$
missing=/dev/$name
[ ! -e "$missing" ] || fail "$missing exists before the test"
cleanup_fn "rm -f $missing /dev/.$name.sparsecow-*"
left_nothing () {
  [ ! -e "$missing" ] || fail "$* created $missing"
  ! ls -d /dev/."$name".sparsecow-* >/dev/null 2>&1 ||
    fail "$* left a temporary file in /dev"
}

msg="^sparsecow: $missing: no such device \(nothing of that name in /dev, and no file is created there\)\$"
for cmd in "unpack img.qcow2" "unpack -f img.qcow2" \
           "unpack --target-is-device img.qcow2" \
           "unpack -f --target-is-device img.qcow2" \
           "pack ref.raw" "pack -f ref.raw" "pack -c ref.raw" \
           "pack --target-is-device ref.raw"; do
  rc=0
  # shellcheck disable=SC2086
  sparsecow $cmd "$missing" 2>err || rc=$?
  [ "$rc" = 1 ] || { cat err >&2; fail "$cmd $missing: exit $rc, expected 1"; }
  grep -Eq "$msg" err || { cat err >&2; fail "$cmd $missing: unclear message"; }
  left_nothing "$cmd"
done
expect_fail "$msg" sh -c 'cat img.qcow2 | "$@"' sh "$SPARSECOW" unpack - "$missing"
left_nothing "unpack from a pipe"
expect_fail "$msg" sh -c 'cat ref.raw | "$@"' sh "$SPARSECOW" pack -f - "$missing"
left_nothing "pack from a pipe"
# A name in a directory of /dev that is not there either (the by-id
# link of a card never plugged in): the same message, nothing created.
subdir=/dev/$name.d
[ ! -e "$subdir" ] || fail "$subdir exists before the test"
cleanup_fn "rm -rf $subdir"
for cmd in "unpack -f img.qcow2" "unpack --target-is-device img.qcow2" \
           "pack -f ref.raw"; do
  for t in "$subdir/usb-card" "$subdir/by-id/usb-card"; do
    rc=0
    # shellcheck disable=SC2086
    sparsecow $cmd "$t" 2>err || rc=$?
    [ "$rc" = 1 ] || { cat err >&2; fail "$cmd $t: exit $rc, expected 1"; }
    grep -Eq "^sparsecow: $t: no such device \(nothing of that name in /dev, and no file is created there\)\$" err ||
      { cat err >&2; fail "$cmd $t: unclear message"; }
    [ ! -e "$subdir" ] || fail "$cmd $t created $subdir"
  done
done

# One missing device among several targets: named, and the others
# written.
rc=0
sparsecow unpack img.qcow2 out.raw "$missing" 2>err || rc=$?
[ "$rc" = 1 ] || fail "unpack to out.raw and $missing: exit $rc"
grep -Eq "$msg" err || { cat err >&2; fail "unpack to two targets: unclear message"; }
cmp ref.raw out.raw || fail "out.raw beside a missing device differs"
left_nothing "unpack to two targets"

# A regular file that an older version left in /dev is not replaced
# (root only: /dev is not writable otherwise).
if [ "$(id -u)" = 0 ]; then
  echo "stale" > "$missing"
  expect_fail "^sparsecow: $missing: is a regular file in /dev, not a device \(not replaced\)\$" \
    sparsecow unpack -f img.qcow2 "$missing"
  [ "$(cat "$missing")" = stale ] || fail "the file in /dev was changed"
  rm -f "$missing"
fi

# /dev/shm holds files.
if [ "$(findmnt -n -o TARGET --target /dev/shm 2>/dev/null)" = /dev/shm ] &&
   [ -w /dev/shm ]; then
  shm=/dev/shm/$name.raw
  cleanup_fn "rm -f $shm"
  sparsecow unpack img.qcow2 "$shm" || fail "unpack to $shm failed"
  cmp ref.raw "$shm" || fail "$shm differs"
  rm -f "$shm"
fi
exit 0
