#!/bin/bash
# pack: failures leave nothing behind, an existing target is kept
# unless -f is given, and a source that changes while it is packed is
# reported instead of packed.
. "$srcdir/functions.sh"
requires qemu-img

mkdir "$tmp/out"
truncate -s 8M "$tmp/src"
head -c 1M /dev/urandom | dd of="$tmp/src" bs=1M seek=2 conv=notrunc status=none

# Only the named files are in the output directory: no temporary target,
# no spill file.
expect_dir () {
  local want=$1 got
  got=$(cd "$tmp/out" && ls -A | tr '\n' ' ')
  [ "$got" = "$want" ] || fail "output directory holds '$got', not '$want'"
}

# An existing target is refused and left alone without -f.
echo precious >"$tmp/out/img.qcow2"
expect_fail "exists" sparsecow pack "$tmp/src" "$tmp/out/img.qcow2"
[ "$(cat "$tmp/out/img.qcow2")" = precious ] || fail "target overwritten"
expect_dir "img.qcow2 "
sparsecow pack -f "$tmp/src" "$tmp/out/img.qcow2"
qemu-img compare -q -f raw -F qcow2 "$tmp/src" "$tmp/out/img.qcow2" ||
  fail "pack -f: image differs"
rm "$tmp/out/img.qcow2"

# Sources that cannot be packed: a directory, a missing file.
expect_fail "not a regular file, block device or pipe" \
  sparsecow pack "$tmp" "$tmp/out/img.qcow2"
expect_fail "nonexistent" sparsecow pack "$tmp/nonexistent" "$tmp/out/img.qcow2"
expect_dir ""

# A target directory that does not exist.
expect_fail "nodir" sparsecow pack "$tmp/src" "$tmp/nodir/img.qcow2"

# A source modified while it is packed: slow packing (one thread, the
# best compression, small clusters) while another process keeps writing
# to it.  The error names the source, and no target appears.
head -c 48M /dev/urandom >"$tmp/big"
# keep_writing FILE BYTE: in the background, one byte every 20 ms for
# 8 s; $writer is its process.
keep_writing () {
  ( for i in $(seq 1 400); do
      printf "$2" | dd of="$1" bs=1 seek=$((i * 4096)) conv=notrunc status=none
      sleep 0.02
    done ) &
  writer=$!
  cleanup_fn "kill $writer 2>/dev/null"
}
keep_writing "$tmp/big" x
expect_fail "big: source changed while packing" \
  sparsecow pack -j 1 -c --level 9 --cluster-size 4K "$tmp/big" "$tmp/out/img.qcow2"
kill $writer 2>/dev/null || :
wait $writer 2>/dev/null || :
expect_dir ""

# The same when re-packing a qcow2 image whose backing file is written
# meanwhile: every file of the chain is watched.
if command -v qemu-img >/dev/null; then
  qemu-img create -q -f qcow2 -b "$tmp/big" -F raw "$tmp/top.qcow2"
  keep_writing "$tmp/big" y
  expect_fail "top.qcow2: source changed while packing" \
    sparsecow pack -q -j 1 -c --level 9 --cluster-size 4K "$tmp/top.qcow2" \
      "$tmp/out/img.qcow2"
  kill $writer 2>/dev/null || :
  wait $writer 2>/dev/null || :
  expect_dir ""
fi

# Interrupted by a signal: nothing is left (run directly, not through
# the shell function, so that the signal reaches the program).  The
# signal comes once the progress says that 1% is done: the slow pack
# (seconds) is then surely still running.
"$SPARSECOW" pack -j 1 -c --level 9 --cluster-size 4K --progress=fd:3 \
  "$tmp/big" "$tmp/out/img.qcow2" 3>"$tmp/int.progress" &
pid=$!
for ((i = 0; i < 1200; i++)); do
  grep -q '"percent":[1-9]' "$tmp/int.progress" && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.05
done
kill -TERM $pid 2>/dev/null || :
rc=0
wait $pid || rc=$?
[ $rc = 143 ] ||
  fail "pack, SIGTERM at $(tail -n 1 "$tmp/int.progress"): exit $rc, not 143"
expect_dir ""

# The target is the source itself (by name, through a symbolic link):
# refused even with -f, and the source is untouched.
requires qemu-img
truncate -s 8M "$tmp/self.raw"
printf 'self' | dd of="$tmp/self.raw" bs=1 seek=4096 conv=notrunc status=none
cp "$tmp/self.raw" "$tmp/self.copy"
expect_fail "self.raw: is the source .*self.raw itself" \
  sparsecow pack -f "$tmp/self.raw" "$tmp/self.raw"
cmp "$tmp/self.raw" "$tmp/self.copy" || fail "pack -f onto its source changed it"
qemu-img convert -O qcow2 "$tmp/self.raw" "$tmp/self.qcow2"
cp "$tmp/self.qcow2" "$tmp/self-qcow2.copy"
ln -s self.qcow2 "$tmp/link.qcow2"
for cmd in pack unpack; do
  expect_fail "link.qcow2: is the source .*self.qcow2 itself" \
    sparsecow $cmd -f "$tmp/self.qcow2" "$tmp/link.qcow2"
  cmp "$tmp/self.qcow2" "$tmp/self-qcow2.copy" ||
    fail "$cmd -f onto its source changed it"
done

# The same behind a redirection of standard input or output.
cp "$tmp/self.raw" "$tmp/redir.raw"
expect_fail "redir.raw: is the source stdin itself" \
  sh -c "$SC_VALGRIND $SPARSECOW pack -f - '$tmp/redir.raw' < '$tmp/redir.raw'"
cmp "$tmp/redir.raw" "$tmp/self.raw" || fail "pack from stdin onto its file changed it"
cp "$tmp/self.qcow2" "$tmp/redir.qcow2"
expect_fail "stdout: is the source .*redir.qcow2 itself" \
  sh -c "$SC_VALGRIND $SPARSECOW unpack '$tmp/redir.qcow2' - 1<>'$tmp/redir.qcow2'"
cmp "$tmp/redir.qcow2" "$tmp/self.qcow2" || fail "unpack to stdout onto its image changed it"

# A loop device over the source file is the source too.
if [ "$(id -u)" = 0 ] && command -v losetup >/dev/null &&
   loopdev=$(losetup -f --show "$tmp/self.raw" 2>/dev/null); then
  cleanup_fn "losetup -d $loopdev"
  expect_fail "$loopdev: is a loop device over the source .*self.raw" \
    sparsecow pack "$tmp/self.raw" "$loopdev"
  cmp "$tmp/self.raw" "$tmp/self.copy" || fail "pack onto a loop device over its source changed it"
else
  echo "$0: note: no loop device; the loop case is not checked"
fi
