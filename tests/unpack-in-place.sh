#!/usr/bin/env bash
# sparsecow unpack -n writes into the existing file where it is, as
# qemu-img convert -n does (the oracle): same inode, same size, the tail
# past the image kept, zero ranges punched; a file smaller than the
# image, or none, is refused and left as it was.  A file replaced with
# -f (unpack and pack) keeps its owner, group and mode.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io cmp stat

cd "$tmp"
MiB=$((1024 * 1024))
size=$((64 * MiB))

qemu-img create -q -f qcow2 img.qcow2 $size
qemu-io -f qcow2 -c "write -P 0x11 0 100k" -c "write -z 2M 1M" \
  -c "write -P 0 5M 128k" -c "write -P 0x22 10M 4k" \
  -c "write -P 0x33 63M 1M" img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw

# Larger than the image, full of old bytes: equal to what qemu-img
# convert -n makes of the same file.
head -c $((80 * MiB)) /dev/urandom > big.raw
cp big.raw qemu.raw
qemu-img convert -n -O raw img.qcow2 qemu.raw
ino=$(stat -c %i big.raw)
sparsecow unpack -n img.qcow2 big.raw || fail "unpack -n failed"
cmp qemu.raw big.raw || fail "unpack -n differs from qemu-img convert -n"
[ "$(stat -c %i big.raw)" = "$ino" ] || fail "unpack -n replaced the file"
[ "$(stat -c %s big.raw)" = $((80 * MiB)) ] || fail "unpack -n resized the file"
got=$(allocated_bytes big.raw)
limit=$(( $(allocated_bytes qemu.raw) + MiB ))
[ "$got" -le "$limit" ] ||
  fail "unpack -n left $got bytes allocated, qemu-img convert -n $limit - 1M"

# --zero=write: equal, zero ranges allocated; --zero=skip: data only.
head -c $((80 * MiB)) /dev/urandom > write.raw
sparsecow unpack -n --zero=write --verify img.qcow2 write.raw ||
  fail "unpack -n --zero=write failed"
cmp -n $size ref.raw write.raw || fail "unpack -n --zero=write differs"

# Smaller, or missing: refused, unchanged.
head -c $((32 * MiB)) /dev/urandom > small.raw
cp small.raw small.ref
expect_fail "^sparsecow: small.raw: file is smaller than the image \\(33554432 < 67108864\\)" \
  sparsecow unpack -n img.qcow2 small.raw
cmp small.ref small.raw || fail "a refused unpack -n changed the file"
expect_fail "^sparsecow: none.raw: does not exist" \
  sparsecow unpack -n img.qcow2 none.raw
[ ! -e none.raw ] || fail "unpack -n created a file"
expect_fail "unpack: -n writes into an existing file or block device, not -" \
  sparsecow unpack -n img.qcow2 -

# Replaced with -f: owner, group and mode kept (owner and group where
# this user may give them: root in this test, else only the mode).
for cmd in unpack pack; do
  src=img.qcow2
  [ $cmd = pack ] && src=ref.raw
  echo old > kept.$cmd
  chmod 0604 kept.$cmd
  if [ "$(id -u)" = 0 ]; then
    chown 4321:8765 kept.$cmd
  fi
  want=$(stat -c '%u %g %a' kept.$cmd)
  sparsecow $cmd -f "$src" kept.$cmd || fail "$cmd -f failed"
  [ "$(stat -c '%u %g %a' kept.$cmd)" = "$want" ] ||
    fail "$cmd -f gave $(stat -c '%u %g %a' kept.$cmd), not $want"
done
cmp ref.raw kept.unpack || fail "unpack -f over a file differs"

# A failure part way says that the file written in place holds part of
# the new content; a failure before anything is written (a bmap checked
# first) leaves the file as it was and says nothing of the kind.
head -c 6M /dev/urandom | base64 -w 0 > rnd.raw   # 8 MiB, compressible
qemu-img convert -q -c -O qcow2 rnd.raw bad.qcow2
python3 - bad.qcow2 <<'PY'
import struct, sys
f = open(sys.argv[1], "r+b")
h = f.read(104)
f.seek(struct.unpack(">Q", h[40:48])[0])
l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
f.seek(l2 + 8 * 64)             # the cluster at 4 MiB
e = struct.unpack(">Q", f.read(8))[0]
assert e >> 62 == 1, "not a compressed cluster"
f.seek(e & ((1 << 54) - 1))     # 64 KiB clusters: 62 - (16 - 8) bits
f.write(b"\xff" * 64)
PY
head -c 8M /dev/urandom > partly.raw
cp partly.raw partly.orig
expect_fail "partly.raw: written in place, left partly written" \
  sparsecow unpack -n bad.qcow2 partly.raw
cmp -s partly.raw partly.orig && fail "unpack -n wrote nothing before the damage"
sparsecow pack -q --bmap-out good.bmap rnd.raw plain.qcow2
python3 - good.bmap altered.bmap <<'PY'
import hashlib, re, sys
s = open(sys.argv[1]).read()
s = re.sub(r'chksum="(.)', lambda m: 'chksum="' + ("1" if m.group(1) == "0" else "0"), s, count=1)
zero = re.sub(r"<BmapFileChecksum>\s*\w+\s*</BmapFileChecksum>",
              "<BmapFileChecksum>" + "0" * 64 + "</BmapFileChecksum>", s)
s = zero.replace("0" * 64, hashlib.sha256(zero.encode()).hexdigest(), 1)
open(sys.argv[2], "w").write(s)
PY
cp partly.orig before.raw
expect_fail "out of sync at offset" \
  sparsecow unpack -n --bmap altered.bmap plain.qcow2 before.raw
grep -q "left partly written" "$tmp/.stderr" &&
  fail "a bmap checked first is said to have left the file partly written"
cmp before.raw partly.orig || fail "a bmap checked first let unpack -n write"

exit 0
