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

# info, map and check read an image on standard input redirected from
# a file, as unpack does, and say so clearly for a pipe.
diff <(qemu-img map --output=json "$img") \
     <(sparsecow map --output=json - <"$img") ||
  fail "map - < image differs from qemu-img map"
diff <(qemu-img map -f raw --output=json "$tmp/ref.raw") \
     <(sparsecow map --output=json - <"$tmp/ref.raw") ||
  fail "map - < raw file differs from qemu-img map -f raw"
diff <(sparsecow info --output=json "$img" | grep -v '"filename"') \
     <(sparsecow info --output=json - <"$img" | grep -v '"filename"') ||
  fail "info - < image differs from info of the file"
qemu-img info --output=json "$img" | python3 -c '
import json, subprocess, sys
q = json.load(sys.stdin)
s = json.loads(subprocess.run(sys.argv[1:], check=True, stdin=open(q["filename"]),
                              stdout=subprocess.PIPE).stdout)
for k in ("virtual-size", "cluster-size", "format", "actual-size", "snapshots"):
    assert q.get(k) == s.get(k), (k, q.get(k), s.get(k))' \
  "$SPARSECOW" info --output=json - || fail "info - differs from qemu-img info"
sparsecow check - <"$img" >"$tmp/check.out" || fail "check - < image failed"
grep -q "No errors were found" "$tmp/check.out" || fail "check -: $(cat "$tmp/check.out")"
sparsecow check --output=json - <"$img" | python3 -c '
import json, sys
c = json.load(sys.stdin)
assert c["check-errors"] == 0 and c["allocated-clusters"] > 0, c' ||
  fail "check --output=json -"
# Where the output holds a file name for programs to use, an image on
# stdin is named as qemu-img names /dev/stdin given as the image: the
# "filename" of check and info, the "image:" line of info, the File
# column of map (of an image and of a raw file).
# stdin_filename COMMAND: the JSON "filename" of qemu-img COMMAND
# /dev/stdin and of sparsecow COMMAND -, both /dev/stdin.
stdin_filename () {
  qemu-img "$1" --output=json /dev/stdin <"$img" >"$tmp/q.json"
  sparsecow "$1" --output=json - <"$img" >"$tmp/s.json"
  python3 - "$tmp/q.json" "$tmp/s.json" <<'PYEOF' || fail "$1 --output=json -: filename"
import json, sys
q = json.load(open(sys.argv[1]))
s = json.load(open(sys.argv[2]))
assert q["filename"] == "/dev/stdin", "the oracle changed: %r" % q["filename"]
assert s["filename"] == q["filename"], (s["filename"], q["filename"])
PYEOF
}
stdin_filename check
diff -u <(qemu-img map /dev/stdin <"$img") <(sparsecow map - <"$img") ||
  fail "map - < image: not qemu-img map /dev/stdin's table"
diff -u <(qemu-img map -f raw /dev/stdin <"$tmp/ref.raw") \
        <(sparsecow map - <"$tmp/ref.raw") ||
  fail "map - < raw file: not qemu-img map -f raw /dev/stdin's table"
grep -q "/dev/stdin$" <(qemu-img map /dev/stdin <"$img") ||
  fail "qemu-img map /dev/stdin names no /dev/stdin: the oracle changed"
diff -u <(qemu-img info /dev/stdin <"$img" | head -1) \
        <(sparsecow info - <"$img" | head -1) ||
  fail "info - < image: not qemu-img info /dev/stdin's image line"
stdin_filename info
# verify's verdicts name it stdin, as the messages of every command do.
sparsecow verify - "$tmp/ref.raw" <"$img" >"$tmp/out" ||
  fail "verify - < image failed"
grep -q "^stdin and $tmp/ref.raw are identical$" "$tmp/out" ||
  fail "verify - < image: $(cat "$tmp/out")"
rc=0; sparsecow verify "$tmp/snap.raw" - <"$img" >"$tmp/out" || rc=$?
[ $rc = 1 ] && grep -q "^sparsecow: $tmp/snap.raw and stdin differ at offset " \
  "$tmp/out" || fail "verify A - < image (exit $rc): $(cat "$tmp/out")"
# A damaged image on stdin is judged as the file is.
cp "$img" "$tmp/leak.qcow2"
qemu-io -c "write -P 1 0 64k" "$tmp/leak.qcow2" >/dev/null
python3 - "$tmp/leak.qcow2" <<'PYEOF'
import struct, sys
# Raise the refcount of cluster 0 (the header): a leak, as qemu-img
# check reports one.
f = open(sys.argv[1], "r+b")
h = f.read(104)
cb = struct.unpack(">I", h[20:24])[0]
rt = struct.unpack(">Q", h[48:56])[0]
f.seek(rt); rb = struct.unpack(">Q", f.read(8))[0]
f.seek(rb); n = struct.unpack(">H", f.read(2))[0]
f.seek(rb); f.write(struct.pack(">H", n + 1))
PYEOF
rc_q=0; qemu-img check -q "$tmp/leak.qcow2" >/dev/null 2>&1 || rc_q=$?
rc_s=0; sparsecow check - <"$tmp/leak.qcow2" >/dev/null 2>&1 || rc_s=$?
[ "$rc_q" = 3 ] && [ "$rc_s" = "$rc_q" ] ||
  fail "check - < leaking image: exit $rc_s, qemu-img check $rc_q"
# From a pipe: one usage error line that says why, and a hint.
for cmd in info map check; do
  rc=0
  cat "$img" | sparsecow $cmd - >"$tmp/out" 2>"$tmp/err" || rc=$?
  [ "$rc" = 1 ] && [ ! -s "$tmp/out" ] && [ "$(wc -l <"$tmp/err")" = 2 ] &&
    grep -q "^sparsecow: $cmd: stdin: standard input is a pipe" "$tmp/err" &&
    tail -n1 "$tmp/err" | grep -q "^Try 'sparsecow $cmd --help'" ||
    fail "$cmd - from a pipe (exit $rc): $(cat "$tmp/err")"
done
# Redirected from a directory (qemu-img exits 1 too) or a character
# device: said as such.
mkdir "$tmp/stdin-dir"
rc_q=0; qemu-img info /dev/stdin <"$tmp/stdin-dir" >/dev/null 2>&1 || rc_q=$?
for cmd in info map check; do
  rc=0
  sparsecow $cmd - <"$tmp/stdin-dir" >"$tmp/out" 2>"$tmp/err" || rc=$?
  [ "$rc" = "$rc_q" ] && [ ! -s "$tmp/out" ] &&
    grep -q "^sparsecow: $cmd: stdin: standard input is a directory" "$tmp/err" ||
    fail "$cmd - from a directory (exit $rc, qemu-img $rc_q): $(cat "$tmp/err")"
  rc=0
  sparsecow $cmd - </dev/zero >"$tmp/out" 2>"$tmp/err" || rc=$?
  [ "$rc" = 1 ] &&
    grep -q "^sparsecow: $cmd: stdin: standard input is a character device" "$tmp/err" ||
    fail "$cmd - from /dev/zero (exit $rc): $(cat "$tmp/err")"
done

# Errors about an image on stdin name it "stdin", as unpack and pack
# name it, never "-": an image qemu-img cannot open, one whose backing
# file is missing, and a file that is not an image; for verify too.
cp "$img" "$tmp/misaligned.qcow2"
printf '\x00\x00\x00\x00\x00\x03\x02\x00' |
  dd of="$tmp/misaligned.qcow2" bs=1 seek=40 conv=notrunc status=none
qemu-img info "$tmp/misaligned.qcow2" >/dev/null 2>&1 &&
  fail "qemu-img info opens misaligned.qcow2 (the test is wrong)"
qemu-img create -q -f qcow2 -u -b "$tmp/nowhere.qcow2" -F qcow2 \
  "$tmp/nobacking.qcow2" 1M
echo "not an image" >"$tmp/text"
for f in misaligned.qcow2 nobacking.qcow2 text; do
  for cmd in "info" "info --output=json" "map" "check" "unpack" "verify"; do
    args=(-); [ "$cmd" = unpack ] && args=(- "$tmp/never.raw")
    [ "$cmd" = verify ] && args=(- "$tmp/ref.raw")
    # map shows a file that is not an image as raw data.
    [ "$cmd/$f" = map/text ] && continue
    # verify compares a file that is not an image as raw data.
    [ "$cmd/$f" = verify/text ] && continue
    sparsecow $cmd "${args[@]}" <"$tmp/$f" >/dev/null 2>"$tmp/err" || :
    grep -q "^sparsecow: stdin: " "$tmp/err" &&
      ! grep -q "^sparsecow: -:" "$tmp/err" ||
      fail "$cmd - < $f does not name stdin: $(cat "$tmp/err")"
  done
done

# A relative backing file name of an image on stdin is found in the
# directory of the file stdin is redirected from, as qemu finds it from
# the image's own directory, not in the current directory (which holds
# a decoy of the same name here).  qemu-img on the image's real path is
# the oracle.
mkdir "$tmp/dir" "$tmp/else"
qemu-img create -q -f qcow2 "$tmp/dir/base.qcow2" 4M
qemu-io -c "write -P 0x44 0 1M" "$tmp/dir/base.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$tmp/dir/overlay.qcow2"
qemu-io -c "write -P 0x55 2M 64k" "$tmp/dir/overlay.qcow2" >/dev/null
qemu-img create -q -f qcow2 "$tmp/else/base.qcow2" 4M
cd "$tmp/else"
qemu-img convert -O raw "$tmp/dir/overlay.qcow2" overlay.raw
sparsecow unpack - out.raw <../dir/overlay.qcow2
cmp overlay.raw out.raw ||
  fail "unpack - < dir/overlay.qcow2 read the backing file of the current directory"
sparsecow verify - overlay.raw <../dir/overlay.qcow2 >/dev/null ||
  fail "verify - < dir/overlay.qcow2"
qemu-img info --output=json --backing-chain "$tmp/dir/overlay.qcow2" >q.json
sparsecow info --output=json --backing-chain - <../dir/overlay.qcow2 >s.json
python3 - q.json s.json <<'PYEOF' || fail "info --backing-chain - < dir/overlay.qcow2: $(cat s.json)"
import json, sys
q = json.load(open(sys.argv[1]))
s = json.load(open(sys.argv[2]))
assert len(q) == len(s) == 2, "chain lengths %d, %d" % (len(q), len(s))
for k in ("backing-filename", "full-backing-filename"):
    assert q[0][k] == s[0][k], "%s: %r, qemu-img %r" % (k, s[0][k], q[0][k])
assert s[0]["sparsecow"]["backing-chain"][0]["filename"] == q[1]["filename"]
assert q[1]["filename"] == s[1]["filename"]
PYEOF
# stdin from a file that has no name any more: the directory cannot be
# found, and the error says so instead of guessing.
cp ../dir/overlay.qcow2 ../dir/gone.qcow2
rc=0
( exec <../dir/gone.qcow2; rm ../dir/gone.qcow2
  sparsecow unpack - gone.raw ) 2>err || rc=$?
[ "$rc" = 1 ] && [ ! -e gone.raw ] &&
  grep -q "^sparsecow: stdin: backing file base.qcow2: .*standard input" err ||
  fail "unpack - from a deleted file (exit $rc): $(cat err)"
cd "$tmp"

# A standard descriptor closed at the start is no file's to take: the
# image opened is not taken for stdout ("unpack - >&-" said qemu held
# the image), and "-" on a closed stream says so, exit 1, as cat fails
# to write there.
# (A copy: were descriptor 1 the image's, the report would go into it.)
cat "$img" >&- 2>/dev/null && fail "test setup: cat wrote to a closed stdout"
cp "$img" "$tmp/closed-img.qcow2"
sum=$(md5sum <"$tmp/closed-img.qcow2")
rc=0
sparsecow unpack "$tmp/closed-img.qcow2" - >&- 2>"$tmp/err" || rc=$?
[ "$rc" = 1 ] && [ "$(wc -l <"$tmp/err")" = 1 ] &&
  grep -q "^sparsecow: unpack: stdout: standard output is closed$" "$tmp/err" ||
  fail "unpack IMAGE - >&- (exit $rc): $(cat "$tmp/err")"
rc=0
sparsecow pack - "$tmp/closed.qcow2" <&- 2>"$tmp/err" || rc=$?
[ "$rc" = 1 ] && [ ! -e "$tmp/closed.qcow2" ] &&
  grep -q "^sparsecow: pack: stdin: standard input is closed$" "$tmp/err" ||
  fail "pack - TARGET <&- (exit $rc): $(cat "$tmp/err")"
# The same for the commands that read an image at random offsets: the
# /dev/null put on the closed descriptor is not what they were given.
for cmd in "info -" "map -" "check -" "verify - $img" \
           "unpack - $tmp/closed.raw"; do
  rc=0
  sparsecow $cmd <&- 2>"$tmp/err" || rc=$?
  # verify exits 2 on an error, as cmp does (1 is "they differ").
  want=1; [ "${cmd%% *}" = verify ] && want=2
  [ "$rc" = "$want" ] && [ ! -e "$tmp/closed.raw" ] &&
    grep -q "^sparsecow: ${cmd%% *}: stdin: standard input is closed$" \
      "$tmp/err" || fail "$cmd <&- (exit $rc): $(cat "$tmp/err")"
done
# A report to a closed stdout, or one that cannot be written, is an
# error of every command, check included (it exited 0).
for cmd in info map check; do
  rc=0
  sparsecow $cmd "$tmp/closed-img.qcow2" >&- 2>"$tmp/err" || rc=$?
  [ "$rc" = 1 ] && grep -q "write error on stdout" "$tmp/err" ||
    fail "$cmd >&- (exit $rc): $(cat "$tmp/err")"
  [ "$(md5sum <"$tmp/closed-img.qcow2")" = "$sum" ] ||
    fail "$cmd >&- wrote into the image"
  rc=0
  sparsecow $cmd "$img" >/dev/full 2>"$tmp/err" || rc=$?
  [ "$rc" = 1 ] && grep -q "write error on stdout" "$tmp/err" ||
    fail "$cmd >/dev/full (exit $rc): $(cat "$tmp/err")"
done
