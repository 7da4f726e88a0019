#!/bin/bash
# Deflate through ISA-L's igzip, with qemu as the judge: images packed
# with igzip at 512 B, 4 KiB, 64 KiB and 2 MiB clusters must check
# clean and compare equal to their source in qemu-img; images that
# qemu-img compressed (zlib) must unpack through igzip's inflate to
# exactly what qemu-img converts them to; SPARSECOW_DEFLATE chooses the
# implementation and refuses names it does not know.
. "$srcdir/functions.sh"
. "$srcdir/pack-common.sh"
requires python3

grep -q '^#define HAVE_ISAL 1' "$top_builddir/config.h" || {
  echo "$0: built without ISA-L (configure --with-isal)"; exit 77; }

cd "$tmp"

# 24 MiB in 64 KiB pieces of text, noise, a byte repeated, half noise,
# bytes of a real program, zeros and holes.  Deterministic (seeded).
python3 - mixed.raw "$SPARSECOW" <<'EOF'
import random, sys
rng = random.Random(20261130)
prog = open(sys.argv[2], "rb").read()
size = 24 << 20
piece = 65536
with open(sys.argv[1], "wb") as f:
    f.truncate(size)
    for pos in range(0, size, piece):
        kind = rng.randrange(7)
        if kind == 0:
            words = [b"sparse", b"qcow2", b"cluster", b"igzip", b"window", b"\n"]
            data = b" ".join(rng.choice(words) for _ in range(piece // 4))[:piece]
            data = data.ljust(piece, b".")
        elif kind == 1:
            data = rng.randbytes(piece)
        elif kind == 2:
            data = bytes([rng.randrange(256)]) * piece
        elif kind == 3:
            data = rng.randbytes(piece // 2) + b"\x5a" * (piece // 2)
        elif kind == 4:
            at = rng.randrange(max(1, len(prog) - piece))
            data = prog[at:at + piece].ljust(piece, b"\0")
        elif kind == 5:
            data = b"\0" * piece
        else:
            continue                # a hole
        f.seek(pos)
        f.write(data)
EOF

compressed_clusters () {
  qemu-img check --output=json "$1" | jq '."compressed-clusters"'
}

# igzip at every cluster size qemu allows, judged by qemu-img; the
# unpack inside check_image goes through igzip's inflate as well.
for cs in 512 4096 65536 2097152; do
  SPARSECOW_DEFLATE=isal sparsecow pack -q -c --cluster-size "$cs" \
    mixed.raw isal-$cs.qcow2 || fail "pack with igzip, cluster $cs"
  SPARSECOW_DEFLATE=isal \
    check_image mixed.raw isal-$cs.qcow2 "$cs" 1.1 deflate 16
  [ "$(compressed_clusters isal-$cs.qcow2)" -gt 0 ] ||
    fail "igzip, cluster $cs: no compressed cluster"
done

# Each implementation writes its own bytes: the environment really
# chose one, and zlib's image is right too.
SPARSECOW_DEFLATE=zlib sparsecow pack -q -c mixed.raw zlib.qcow2 ||
  fail "pack with zlib"
check_image mixed.raw zlib.qcow2 65536 1.1 deflate 16
! cmp -s isal-65536.qcow2 zlib.qcow2 ||
  fail "SPARSECOW_DEFLATE=isal and =zlib wrote the same image"

# Every level: igzip serves 1-3, zlib the rest; all must be right, and
# level 9 (zlib's best) is no larger than qemu-img's image.
for level in 1 2 3 9; do
  SPARSECOW_DEFLATE=isal sparsecow pack -q -c --level "$level" \
    mixed.raw level-$level.qcow2 || fail "pack --level $level"
  SPARSECOW_DEFLATE=isal \
    check_image mixed.raw level-$level.qcow2 65536 1.1 deflate 16
done
# The data is compared: metadata may be laid out one cluster apart
# (the two tools place refcount blocks and L2 tables differently).
qemu-img convert -q -c -f raw -O qcow2 mixed.raw qemu.qcow2
[ "$(stat -c %s level-9.qcow2)" -le $(( $(stat -c %s qemu.qcow2) + 65536 )) ] ||
  fail "--level 9: $(stat -c %s level-9.qcow2) bytes," \
       "qemu-img: $(stat -c %s qemu.qcow2)"

# qemu-img's compressed clusters (zlib, packed tightly so that they
# share sectors) through igzip's inflate, from a file and from a pipe.
for cs in 512 4096 65536 2097152; do
  img=qemu-$cs.qcow2
  qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=$cs mixed.raw "$img"
  [ "$(compressed_clusters "$img")" -gt 0 ] ||
    fail "qemu-img wrote no compressed cluster at $cs"
  qemu-img convert -f qcow2 -O raw "$img" want.raw
  SPARSECOW_DEFLATE=isal sparsecow unpack -q "$img" got.raw ||
    fail "unpack $img with igzip"
  cmp want.raw got.raw || fail "$img: igzip's unpack differs from qemu-img's"
  rm -f got.raw
  # The stream decoder: the image from a pipe, the data into one.
  { cat "$img" || :; } | SPARSECOW_DEFLATE=isal sparsecow unpack -q - got.raw ||
    fail "unpack $img from a pipe with igzip"
  cmp want.raw got.raw ||
    fail "$img: igzip's unpack from a pipe differs from qemu-img's"
  rm -f got.raw
  { SPARSECOW_DEFLATE=isal sparsecow unpack -q "$img" - ||
      : > unpack.failed; } | cat > got.raw
  [ ! -e unpack.failed ] || fail "unpack $img to a pipe with igzip"
  cmp want.raw got.raw ||
    fail "$img: igzip's unpack to a pipe differs from qemu-img's"
  rm -f got.raw want.raw
done

# A name the build does not have is an error, for pack and for unpack,
# and no target is left behind.
expect_fail 'SPARSECOW_DEFLATE=gzip' \
  env SPARSECOW_DEFLATE=gzip "$SPARSECOW" pack -q -c mixed.raw bad.qcow2
[ ! -e bad.qcow2 ] || fail "a failed pack left bad.qcow2"
expect_fail 'SPARSECOW_DEFLATE=gzip' \
  env SPARSECOW_DEFLATE=gzip "$SPARSECOW" unpack -q qemu-65536.qcow2 bad.raw
[ ! -e bad.raw ] || fail "a failed unpack left bad.raw"
# Empty is unset: the default.
SPARSECOW_DEFLATE= sparsecow pack -q -c mixed.raw default.qcow2 ||
  fail "pack with SPARSECOW_DEFLATE empty"
cmp -s default.qcow2 isal-65536.qcow2 ||
  fail "the default is not igzip where it is built in"
exit 0
