#!/bin/bash
# The range lines of a bmap wait in an unnamed spill file (next to a
# bmap written to a file, else in TMPDIR) until its header is written.
# A full file system there fails the command with a message that names
# the directory of that spill file, and leaves no bmap behind.  The
# file system is a tmpfs of 64 KiB; the source has 4,000 ranges, whose
# lines (about 100 bytes each) overflow the line buffer of 256 KiB.
. "$srcdir/functions.sh"
requires python3 mount umount
requires_root

cd "$tmp"
python3 - src.raw <<'EOF'
import sys
B = 4096
with open(sys.argv[1], "wb") as f:
    f.truncate(8000 * B)
    for i in range(0, 8000, 2):
        f.seek(i * B)
        f.write(bytes([i % 251 + 1]) * B)
EOF
mkdir small
mount -t tmpfs -o size=64k tmpfs small 2>/dev/null ||
  { echo "$0: SKIP: cannot mount a tmpfs"; exit 77; }
cleanup_fn "umount '$tmp/small'"

# The oracle that the source needs the spill file: a bmap of it written
# with room is larger than the tmpfs.
sparsecow bmap src.raw -o room.bmap
[ "$(stat -c %s room.bmap)" -gt $((256 * 1024)) ] ||
  fail "the bmap is too small to need its spill file"
[ "$(grep -c '<Range' room.bmap)" = 4000 ] || fail "the source does not have 4000 ranges"

# To standard output: the spill file is in TMPDIR.
rc=0
TMPDIR=$tmp/small sparsecow bmap src.raw > out.bmap 2> err || rc=$?
[ $rc != 0 ] || fail "bmap with a full TMPDIR succeeded"
grep -Eq "^sparsecow: $tmp/small: bmap spill file: .*No space left on device$" err || {
  cat err >&2; fail "the message does not name the spill file's directory"; }
# pack --bmap-out to standard output: the same.
rc=0
TMPDIR=$tmp/small sparsecow pack --bmap-out - src.raw out.qcow2 > out.bmap 2> err || rc=$?
[ $rc != 0 ] || fail "pack --bmap-out with a full TMPDIR succeeded"
grep -Eq "^sparsecow: $tmp/small: bmap spill file: .*No space left on device$" err || {
  cat err >&2; fail "pack: the message does not name the spill file's directory"; }
[ ! -e out.qcow2 ] || fail "a failed pack left its image"
# To a file: the spill file is next to it, in the directory as named.
expect_fail "^sparsecow: small: bmap spill file: .*No space left on device$" \
  sparsecow bmap src.raw -o small/out.bmap
[ -z "$(ls -A small)" ] || fail "a failed bmap left: $(ls -A small)"
echo "a full file system under the bmap spill file is named"
