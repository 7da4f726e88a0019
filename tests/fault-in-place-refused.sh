#!/usr/bin/env bash
# A target written in place that refuses every write is left as it was,
# and nothing says it was partly written.  An active swap file (which
# the kernel refuses to write, ETXTBSY) is refused when pack -n and
# unpack -n open it, before the source is read, as a swap device is by
# its exclusive open.  A file that turns immutable once opened (every
# write fails with EPERM) fails the run without "left partly written".
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img mkswap swapon swapoff chattr cmp
requires_root

cd "$tmp"
MiB=$((1024 * 1024))
truncate -s 16M src.raw
head -c $((2 * MiB)) /dev/urandom | dd of=src.raw bs=1M seek=3 conv=notrunc status=none
qemu-img convert -O qcow2 src.raw img.qcow2

# Swap files must be on a file system that holds them (not tmpfs) and
# swapon must be permitted (not in most containers).
head -c $((16 * MiB)) /dev/zero > swapf
chmod 600 swapf
mkswap swapf >/dev/null
cp swapf swapf.ref
swapon swapf 2>/dev/null || { echo "$0: SKIP: swapon is not permitted here or $tmp cannot hold a swap file"; exit 77; }
cleanup_fn "swapoff $tmp/swapf 2>/dev/null"
want='^sparsecow: swapf: is an active swap file; swapoff it first$'
expect_fail "$want" sparsecow pack -n src.raw swapf
expect_fail "$want" sparsecow pack -n -c src.raw swapf
expect_fail "$want" sparsecow unpack -n img.qcow2 swapf
expect_fail "$want" sparsecow unpack -n - swapf < img.qcow2
if grep -q "partly written" "$tmp/.stderr"; then
  fail "a refused swap file was said to be partly written"
fi
swapoff swapf
cmp swapf.ref swapf || fail "a refused command changed the swap file"

# Immutable once opened: pack -n from a pipe opens the target, then
# waits for its source.  The file turns immutable once the program has
# it open (seen in /proc), before the source comes through a FIFO: the
# first write fails, not the open.
head -c $((16 * MiB)) /dev/urandom > t
cp t t.ref
chattr +i t 2>/dev/null || { echo "$0: SKIP: chattr +i not supported on $tmp"; exit 77; }
chattr -i t
cleanup_fn "chattr -i $tmp/t"
target=$(readlink -f t)
mkfifo feed
for cmd in "pack -n - t" "unpack -n - t"; do
  in=src.raw
  [ "${cmd%% *}" = unpack ] && in=img.qcow2
  rc=0
  # shellcheck disable=SC2086
  $SC_VALGRIND "$SPARSECOW" $cmd <feed 2>err &
  pid=$!
  exec 7>feed
  opened=
  for ((i = 0; i < 1200; i++)); do
    for fd in "/proc/$pid"/fd/*; do
      [ "$(readlink "$fd" 2>/dev/null)" = "$target" ] && opened=1
    done
    [ -n "$opened" ] || ! running $pid || { sleep 0.05; continue; }
    break
  done
  [ -n "$opened" ] && chattr +i t
  cat "$in" >&7 2>/dev/null || :
  exec 7>&-
  wait $pid || rc=$?
  chattr -i t
  [ -n "$opened" ] || { cat err >&2; fail "$cmd: never had t open"; }
  [ $rc -ne 0 ] || fail "$cmd into an immutable file succeeded"
  grep -q "^sparsecow: t: write at offset [0-9]*: Operation not permitted" err ||
    { cat err >&2; fail "$cmd: no EPERM from a write"; }
  if grep -q "partly written" err; then
    cat err >&2; fail "$cmd: nothing was written, yet it says partly written"
  fi
  cmp t.ref t || fail "$cmd changed the immutable file"
done
exit 0
