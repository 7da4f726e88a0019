#!/bin/bash
# zstd, with qemu as the judge: images packed at 512 B, 4 KiB, 64 KiB
# and 2 MiB clusters, from data where clusters that do not compress
# come between clusters that do (so that compressed clusters fill the
# rest of host clusters in front of uncompressed ones), must check
# clean and compare equal to their source in qemu-img, with 1-bit
# refcounts (no host cluster shared) too, and unpack from a pipe; and
# the image is no longer than qemu-img convert's, nor (64 KiB clusters
# and larger) larger on disk.
. "$srcdir/functions.sh"
. "$srcdir/pack-common.sh"
requires python3

grep -q '^#define HAVE_ZSTD 1' "$top_builddir/config.h" || {
  echo "$0: built without zstd"; exit 77; }

cd "$tmp"

# 32 MiB in pieces of 512 B to 2 MiB: text, noise, a byte repeated,
# half noise, bytes of a real program, zeros and holes.  Deterministic
# (seeded).
python3 - mixed.raw "$SPARSECOW" <<'PY'
import random, sys
rng = random.Random(20261130)
prog = open(sys.argv[2], "rb").read()
size = 32 << 20
words = [b"sparse", b"qcow2", b"cluster", b"zstd", b"frame", b"\n"]
with open(sys.argv[1], "wb") as f:
    f.truncate(size)
    pos = 0
    while pos < size:
        piece = min(rng.choice([512, 4096, 65536, 2 << 20]) * rng.randrange(1, 4),
                    size - pos)
        kind = rng.randrange(7)
        if kind == 0:
            data = b" ".join(rng.choice(words) for _ in range(piece // 4))[:piece]
            data = data.ljust(piece, b".")
        elif kind == 1 or kind == 6:
            data = rng.randbytes(piece)
        elif kind == 2:
            data = bytes([rng.randrange(1, 256)]) * piece
        elif kind == 3:
            data = rng.randbytes(piece // 2) + b"\x5a" * (piece - piece // 2)
        elif kind == 4:
            at = rng.randrange(max(1, len(prog) - piece))
            data = prog[at:at + piece].ljust(piece, b"\0")
        else:
            data = None             # a hole
        if data is not None:
            f.seek(pos)
            f.write(data)
        pos += piece
PY

compressed_clusters () {
  qemu-img check --output=json "$1" | jq '."compressed-clusters"'
}
allocated () { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }

for cs in 512 4096 65536 2097152; do
  for rbits in 16 1; do
    img=zstd-$cs-$rbits.qcow2
    sparsecow pack -q -c zstd --cluster-size "$cs" --refcount-bits "$rbits" \
      mixed.raw "$img" || fail "pack, cluster $cs, refcount $rbits"
    check_image mixed.raw "$img" "$cs" 1.1 zstd "$rbits"
    [ "$(compressed_clusters "$img")" -gt 0 ] ||
      fail "cluster $cs, refcount $rbits: no compressed cluster"
  done
  # In file order, through the stream decoder: compressed clusters that
  # filled earlier host clusters come before the guest data in front of
  # them.
  img=zstd-$cs-16.qcow2
  { cat "$img" || :; } | sparsecow unpack -q - piped.raw ||
    fail "unpack $img from a pipe"
  cmp mixed.raw piped.raw || fail "$img: unpacked from a pipe, differs"
  rm -f piped.raw

  qemu-img convert -q -c -f raw -O qcow2 \
    -o cluster_size=$cs,compression_type=zstd mixed.raw qemu-$cs.qcow2
  [ "$(stat -c %s zstd-$cs-16.qcow2)" -le "$(stat -c %s qemu-$cs.qcow2)" ] ||
    fail "cluster $cs: $(stat -c %s zstd-$cs-16.qcow2) bytes," \
         "qemu-img: $(stat -c %s qemu-$cs.qcow2)"
  # From 64 KiB clusters on, the image is written straight to its
  # file, where blocks left unwritten stay holes.
  [ "$cs" -lt 65536 ] ||
    [ "$(allocated zstd-$cs-16.qcow2)" -le "$(allocated qemu-$cs.qcow2)" ] ||
    fail "cluster $cs: $(allocated zstd-$cs-16.qcow2) bytes allocated," \
         "qemu-img: $(allocated qemu-$cs.qcow2)"
done

# qemu-img decompresses what it wrote itself, and what we wrote, the
# same: the unpacked images of both are equal.
qemu-img compare -q -f qcow2 -F qcow2 zstd-65536-16.qcow2 qemu-65536.qcow2 ||
  fail "qemu-img compare: our image and qemu-img's"
exit 0
