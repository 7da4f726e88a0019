#!/bin/bash
# An image on standard input: a redirected file is read as the seekable
# file it is (snapshots included); a pipe is decoded as it comes.  An
# error writing the target names the target, never "stdin".
. "$srcdir/functions.sh"
requires qemu-img qemu-io

MiB=$((1024 * 1024))
img=$tmp/img.qcow2
qemu-img create -q -f qcow2 "$img" $((64 * MiB))
qemu-io -c "write -P 0x11 1M 3M" -c "write -P 0x22 40M 2M" "$img" >/dev/null
qemu-img snapshot -c snap1 "$img"
qemu-io -c "write -P 0x33 2M 1M" "$img" >/dev/null
qemu-img convert -f qcow2 -O raw "$img" "$tmp/ref.raw"
qemu-img convert -f qcow2 -O raw -l snapshot.name=snap1 "$img" "$tmp/snap.raw"

# Redirected from a file: read with the reader, as a named file is.
sparsecow unpack - "$tmp/a.raw" <"$img"
cmp "$tmp/ref.raw" "$tmp/a.raw" || fail "unpack - < image differs"
sparsecow unpack --snapshot snap1 - "$tmp/s.raw" <"$img"
cmp "$tmp/snap.raw" "$tmp/s.raw" || fail "unpack --snapshot - < image differs"
sparsecow unpack - - <"$img" | cmp - "$tmp/ref.raw" ||
  fail "unpack - - < image differs"
# From a pipe, as before.
cat "$img" | sparsecow unpack - "$tmp/b.raw"
cmp "$tmp/ref.raw" "$tmp/b.raw" || fail "unpack from a pipe differs"

# A target that cannot be written is the object of the error, whether
# the image comes through a pipe or a redirection.
target_named () {
  grep -q "^sparsecow: $1: " "$tmp/.stderr" || fail "error does not name $1"
  ! grep -q "stdin" "$tmp/.stderr" || fail "error names stdin: $(cat "$tmp/.stderr")"
}
expect_fail "space" bash -c 'cat "$1" | "$2" unpack - /dev/full' _ "$img" \
  "$SPARSECOW"
target_named /dev/full
expect_fail "space" sparsecow unpack - /dev/full <"$img"
target_named /dev/full
if command -v nbdkit >/dev/null && nbdkit --dump-plugin memory >/dev/null 2>&1 &&
   nbdkit --filter=error null --version >/dev/null 2>&1; then
  server="[ nbdkit --filter=error memory 64M error-pwrite-rate=100% error=EIO ]"
  expect_fail "write" bash -c 'cat "$1" | "$2" unpack - -- \
    [ nbdkit --filter=error memory 64M error-pwrite-rate=100% error=EIO ]' \
    _ "$img" "$SPARSECOW"
  grep -qF "sparsecow: $server: " "$tmp/.stderr" ||
    fail "error does not name the NBD target: $(cat "$tmp/.stderr")"
fi
