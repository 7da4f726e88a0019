#!/usr/bin/env bash
# A file written in place needs no room in its directory, as with
# qemu-img convert -n: a user who may write the file but not its
# directory packs into it with -c and from a pipe (which keep data in a
# spill file), and unpacks into it from a pipe, with the spill file in
# TMPDIR instead of next to the target.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img setpriv cmp
requires_root

cd "$tmp"
MiB=$((1024 * 1024))
chmod 755 "$tmp"
mkdir ro spill
chmod 1777 spill
truncate -s 16M src.raw
head -c $((2 * MiB)) /dev/urandom | dd of=src.raw bs=1M seek=3 conv=notrunc status=none
qemu-img convert -O qcow2 src.raw img.qcow2
head -c $((16 * MiB)) /dev/urandom > ro/f
chmod 644 src.raw img.qcow2
chmod 666 ro/f
chmod 755 ro
# As user nobody, who can write ro/f but not ro/.
nobody () {
  setpriv --reuid=65534 --regid=65534 --clear-groups \
    env TMPDIR="$tmp/spill" "$SPARSECOW" "$@"
}
setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$SPARSECOW" ||
  { echo "$0: SKIP: user nobody cannot run $SPARSECOW"; exit 77; }
if setpriv --reuid=65534 --regid=65534 --clear-groups touch ro/new 2>/dev/null; then
  echo "$0: SKIP: user nobody can create files in ro/"; exit 77
fi
for opts in "" "-c"; do
  nobody pack -n $opts src.raw ro/f 2>err || { cat err >&2; fail "pack -n $opts: failed"; }
  qemu-img compare -q -f raw -F qcow2 src.raw ro/f || fail "pack -n $opts: ro/f differs"
  qemu-img check -q -f qcow2 ro/f || fail "pack -n $opts: ro/f does not check"
done
nobody pack -n - ro/f < src.raw 2>err || { cat err >&2; fail "pack -n - < src.raw: failed"; }
cat src.raw | nobody pack -n - ro/f 2>err || { cat err >&2; fail "pack -n from a pipe: failed"; }
qemu-img compare -q -f raw -F qcow2 src.raw ro/f || fail "pack -n from a pipe: ro/f differs"
head -c $((16 * MiB)) /dev/urandom > ro/f
cat img.qcow2 | nobody unpack -n - ro/f 2>err || { cat err >&2; fail "unpack -n from a pipe: failed"; }
cmp src.raw ro/f || fail "unpack -n from a pipe: ro/f differs"
[ "$(ls -A ro)" = f ] || fail "files left in ro/: $(ls -A ro)"
[ -z "$(ls -A spill)" ] || fail "files left in TMPDIR: $(ls -A spill)"
exit 0
