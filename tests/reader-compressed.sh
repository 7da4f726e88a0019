#!/usr/bin/env bash
# sparsecow unpack and map read compressed clusters written by qemu:
# deflate and zstd, at cluster sizes 4 KiB, 64 KiB and 2 MiB, mixed with
# normal, zero and unallocated clusters; both from qemu-io "write -c"
# and from qemu-img convert -c, which packs compressed clusters tightly
# so that they share host clusters and sectors.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
. "$srcdir/reader-functions.sh"
requires qemu-img qemu-io python3 timeout cmp

cd "$tmp"

# A raw source with every kind of content, 4 KiB granular: compressible
# text, incompressible random bytes, zeros, holes, and blocks that
# compress to almost nothing.  Deterministic (seeded).
python3 - mixed.raw <<'EOF'
import random, sys
rng = random.Random(20261123)
size = 24 << 20
with open(sys.argv[1], "wb") as f:
    f.truncate(size)
    pos = 0
    while pos < size:
        kind = rng.randrange(6)
        n = rng.choice([4096, 8192, 65536, 200704, 1 << 20])
        n = min(n, size - pos)
        if kind == 0:
            words = [b"sparse", b"qcow2", b"cluster", b"deflate", b"zstd", b"\n"]
            data = b" ".join(rng.choice(words) for _ in range(n // 4))[:n]
            data = data.ljust(n, b".")
        elif kind == 1:
            data = rng.randbytes(n)
        elif kind == 2:
            data = bytes([rng.randrange(256)]) * n
        elif kind == 3:
            # Half random, half constant: compresses to about half.
            data = (rng.randbytes(n // 2) + b"\x5a" * (n - n // 2))
        elif kind == 4:
            data = b"\0" * n
        else:
            data = None             # a hole
        if data is not None:
            f.seek(pos)
            f.write(data)
        pos += n
EOF

for ct in zlib zstd; do
  for cs in 4096 65536 2097152; do
    # qemu-img convert -c: every cluster that shrinks is compressed.
    img=conv-$ct-$cs.qcow2
    qemu-img convert -q -c -f raw -O qcow2 \
      -o cluster_size=$cs,compression_type=$ct mixed.raw "$img"
    check_image "$img"
    # Besides matching qemu-img, the content is the source's.
    if [ "$READER_ORACLE" != qemu ]; then
      rd_sparsecow unpack "$img" back.raw || fail "unpack $img failed"
      cmp mixed.raw back.raw || fail "unpack $img differs from its raw source"
      rm -f back.raw
    fi

    # qemu-io: compressed, normal, zero and unallocated clusters next to
    # each other, and compressed clusters later overwritten in part, by
    # zeros, and discarded.
    img=io-$ct-$cs.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=$cs,compression_type=$ct "$img" 64M
    qio "$img" "write -c -P 0x11 0 $cs" \
               "write -c -P 0x12 $cs $cs" \
               "write -P 0x13 $(( 2 * cs )) $cs" \
               "write -z $(( 3 * cs )) $cs" \
               "write -c -P 0x14 $(( 4 * cs )) $(( 4 * cs ))" \
               "write -c -P 0x15 $(( 10 * cs )) $cs" \
               "write -P 0x16 $(( 10 * cs + 512 )) 512" \
               "write -c -P 0x17 $(( 12 * cs )) $cs" \
               "write -z $(( 12 * cs )) $cs" \
               "write -c -P 0x18 $(( 14 * cs )) $cs" \
               "discard $(( 14 * cs )) $cs" \
               "write -c -P 0x19 $(( 64 * 1024 * 1024 - cs )) $cs"
    check_image "$img"
    check_pipe "$img"
  done
done

# Random (incompressible) clusters do not shrink, so qemu-img convert -c
# stores them uncompressed.
python3 -c 'import random,sys; sys.stdout.buffer.write(random.Random(7).randbytes(1<<20))' > rnd.raw
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=65536 rnd.raw rnd.qcow2
check_image rnd.qcow2

# Compressed clusters in a version 2 image (deflate only).
qemu-img convert -q -c -f raw -O qcow2 -o compat=0.10,cluster_size=4096 mixed.raw v2.qcow2
check_image v2.qcow2
