#!/usr/bin/env bash
# sparsecow unpack and its targets: standard output (a file or a pipe)
# gets exactly what qemu-img convert -O raw writes; an existing target
# is kept without -f and replaced with it; a failed unpack leaves neither
# a target nor a temporary file; the unpacked file is as sparse as
# qemu-img's output, give or take one cluster per data extent.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io python3 cmp

cd "$tmp"
cs=65536
size=$((64 * 1024 * 1024))

qemu-img create -q -f qcow2 -o cluster_size=$cs img.qcow2 $size
# Data at both ends, a partial cluster, a zero cluster, data that is
# all zero bytes (written, so allocated), and a cluster boundary crossed.
qemu-io -f qcow2 \
  -c "write -P 0x11 0 100k" \
  -c "write -P 0x22 1M 64k" \
  -c "write -z 2M 1M" \
  -c "write -P 0x33 10M 4k" \
  -c "write -P 0 20M 128k" \
  -c "write -P 0x44 $((30 * 1024 * 1024 - 512)) 1k" \
  -c "write -P 0x55 63M 1M" \
  img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw

# Standard output redirected to a file, and through a pipe.
sparsecow unpack img.qcow2 - > stdout.raw || fail "unpack to stdout failed"
cmp ref.raw stdout.raw || fail "unpack to stdout differs from qemu-img convert"
sparsecow unpack -j 3 img.qcow2 - | cat > piped.raw ||
  fail "unpack to a pipe failed"
cmp ref.raw piped.raw || fail "unpack to a pipe differs from qemu-img convert"
# Standard output that is a file is written sparse, from wherever it is
# positioned, and never over data already there.
got=$(allocated_bytes stdout.raw)
limit=$(( $(allocated_bytes ref.raw) + 16 * cs ))
[ "$got" -le "$limit" ] ||
  fail "unpack to a file on stdout has $got bytes allocated, more than $limit"
{ printf 'HDR'; sparsecow unpack img.qcow2 -; } > header.raw ||
  fail "unpack to stdout after a header failed"
{ printf 'HDR'; cat ref.raw; } | cmp - header.raw ||
  fail "unpack to stdout after a header differs"
printf 'abc' > appended.raw
sparsecow unpack img.qcow2 - >> appended.raw || fail "unpack >> failed"
{ printf 'abc'; cat ref.raw; } | cmp - appended.raw ||
  fail "unpack appended to a file differs"
head -c $size /dev/urandom > overwritten.raw
sparsecow unpack img.qcow2 - 1<> overwritten.raw ||
  fail "unpack to a file opened read-write on stdout failed"
cmp ref.raw overwritten.raw ||
  fail "unpack over a file opened read-write on stdout left old data"
rm -f stdout.raw piped.raw header.raw appended.raw overwritten.raw

# A new file, with one and with several threads.
for j in 1 4; do
  sparsecow unpack -j $j img.qcow2 out-$j.raw || fail "unpack -j $j failed"
  cmp ref.raw out-$j.raw || fail "unpack -j $j differs from qemu-img convert"
done

# As sparse as qemu-img's output, within one cluster per data extent.
extents=$(qemu-img map --output=json img.qcow2 | python3 -c '
import json, sys
print(sum(1 for e in json.load(sys.stdin) if e["data"]))')
limit=$(( $(allocated_bytes ref.raw) + extents * cs ))
got=$(allocated_bytes out-4.raw)
[ "$got" -le "$limit" ] ||
  fail "unpacked file has $got bytes allocated, more than $limit"

# An existing target is kept without -f...
echo "keep me" > exists.raw
expect_fail 'exists.raw: target exists \(use -f to overwrite\)' \
  sparsecow unpack img.qcow2 exists.raw
[ "$(cat exists.raw)" = "keep me" ] || fail "existing target was modified"
# ...and replaced with it.
sparsecow unpack -f img.qcow2 exists.raw || fail "unpack -f failed"
cmp ref.raw exists.raw || fail "unpack -f result differs from qemu-img convert"

# --progress=json: the last line accounts for all the data that qemu-img
# map shows (holes and zero clusters cost nothing to move).
sparsecow unpack --progress=json img.qcow2 progress.raw 2> progress.json ||
  fail "unpack --progress=json failed"
cmp ref.raw progress.raw || fail "unpack with progress differs"
qemu-img map --output=json img.qcow2 >progress.map
python3 - progress.map progress.json <<'EOF' || fail "bad progress output"
import json, sys
data = sum(r["length"] for r in json.load(open(sys.argv[1])) if r["data"])
lines = [json.loads(l) for l in open(sys.argv[2])]
assert lines, "no progress lines"
done = [l["done"] for l in lines]
assert done == sorted(done), "progress went backwards"
assert lines[-1]["done"] == data and lines[-1]["total"] == data, \
    (lines[-1], data)
EOF
judge_progress progress.json --total "$(jq 'map(select(.data) | .length) | add' progress.map)"
rm -f progress.raw progress.json

# Failures leave nothing behind.  Work in a directory of its own so any
# leftover (target or temporary) is visible.
mkdir fail
# 1. The L2 entry of the last data cluster holds a host offset that is
#    not cluster aligned: unpacking fails after part of the data was
#    written.
cp img.qcow2 fail/corrupt.qcow2
python3 - fail/corrupt.qcow2 $cs <<'EOF'
import struct, sys
path, cs = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(40)
    (l1_offset,) = struct.unpack(">Q", f.read(8))
    f.seek(l1_offset)
    (l1,) = struct.unpack(">Q", f.read(8))
    l2_offset = l1 & 0x00fffffffffffe00
    index = (63 * 1024 * 1024) // cs
    f.seek(l2_offset + 8 * index)
    (entry,) = struct.unpack(">Q", f.read(8))
    assert entry & 0x00fffffffffffe00, "cluster at 63M is not allocated"
    f.seek(l2_offset + 8 * index)
    f.write(struct.pack(">Q", (1 << 63) | (cs + 512)))
EOF
qemu-img convert -O raw fail/corrupt.qcow2 fail/qemu.raw 2>/dev/null &&
  fail "qemu-img accepts the corrupted image: the test is wrong"
rm -f fail/qemu.raw
bad_entry="L2 entry 0x80000000$(printf %08x $((cs + 512))): host offset is not aligned to a cluster\$"
expect_fail "$bad_entry" sparsecow unpack fail/corrupt.qcow2 fail/out.raw
expect_fail "$bad_entry" sparsecow unpack -f fail/corrupt.qcow2 fail/out.raw
# 2. Not a qcow2 image at all.
cp ref.raw fail/raw.img
expect_fail 'fail/raw.img: ' sparsecow unpack fail/raw.img fail/out.raw
left=$(cd fail && ls -A | grep -v -x -e corrupt.qcow2 -e raw.img || :)
[ -z "$left" ] || fail "failed unpacks left files behind: $left"
# 3. A failure over an existing file keeps the old file.
echo "old" > fail/out.raw
expect_fail "$bad_entry" sparsecow unpack -f fail/corrupt.qcow2 fail/out.raw
[ "$(cat fail/out.raw)" = old ] || fail "failed unpack -f damaged the old file"

# A process file size limit (ulimit -f) is an error, not a kill that
# would leave the temporary file behind.
mkdir limit
( ulimit -f 1000
  expect_fail 'limit/out.raw: the file size limit \(ulimit -f\) is smaller' \
    sparsecow unpack img.qcow2 limit/out.raw )
[ -z "$(ls -A limit)" ] || fail "unpack past ulimit -f left: $(ls -A limit)"

# A target name near the file system's 255-byte limit still works (the
# temporary name is longer than the target's).
long=$(printf 'n%.0s' $(seq 250)).raw
sparsecow unpack img.qcow2 "$long" || fail "unpack to a 254-byte name failed"
cmp ref.raw "$long" || fail "unpack to a 254-byte name differs"
rm -f "$long"

# A symbolic link to a file is written through and stays a link; one
# that leads nowhere is refused and nothing is created.
mkdir links
echo old > links/real.raw
ln -s real.raw links/link.raw
expect_fail 'link.raw: target exists' sparsecow unpack img.qcow2 links/link.raw
sparsecow unpack -f img.qcow2 links/link.raw || fail "unpack through a link"
[ -L links/link.raw ] || fail "the symbolic link was replaced"
cmp ref.raw links/real.raw || fail "unpack through a link differs"
ln -s missing.raw links/dangling.raw
expect_fail 'dangling.raw: symbolic link to nothing' \
  sparsecow unpack -f img.qcow2 links/dangling.raw
[ "$(ls -A links | tr '\n' ' ')" = "dangling.raw link.raw real.raw " ] ||
  fail "links/ holds $(ls -A links)"

# Targets that cannot be created.
expect_fail 'no-such-dir/out.raw: ' sparsecow unpack img.qcow2 no-such-dir/out.raw
expect_fail 'fail: ' sparsecow unpack -f img.qcow2 fail
# A missing image.
expect_fail 'missing.qcow2: ' sparsecow unpack missing.qcow2 out.raw
# A full file system under the target: the message names the target,
# from a file and from a pipe alike, and nothing is left.
if [ "$(id -u)" = 0 ] && mkdir -p "$tmp/small" &&
   mount -t tmpfs -o size=2M tmpfs "$tmp/small" 2>/dev/null; then
  cleanup_fn "umount '$tmp/small'"
  head -c 8M /dev/urandom > "$tmp/noise.raw"
  sparsecow pack -q "$tmp/noise.raw" "$tmp/noise.qcow2"
  expect_fail "^sparsecow: $tmp/small/full.raw: .*No space left on device" \
    sparsecow unpack "$tmp/noise.qcow2" "$tmp/small/full.raw"
  expect_fail "^sparsecow: $tmp/small/full.raw: .*No space left on device" \
    sh -c "cat '$tmp/noise.qcow2' | $SC_VALGRIND $SPARSECOW unpack - '$tmp/small/full.raw'"
  [ -z "$(ls -A "$tmp/small")" ] || fail "a full file system kept: $(ls -A "$tmp/small")"
else
  echo "$0: note: no tmpfs mount; the full file system case is not checked"
fi

# Usage errors.
expect_fail 'IMAGE and TARGET' sparsecow unpack img.qcow2
sparsecow unpack --progress=json img.qcow2 - 2>/dev/null | cmp - ref.raw ||
  fail "unpack --progress=json to stdout"

exit 0
