#!/bin/bash
# Zero detection on a stream: a non-zero byte at every offset of a
# cluster, and zero/non-zero boundaries at every offset, arriving
# through a pipe in odd-sized writes with pauses, so that reads come
# back short and pieces end anywhere.  qemu-img compares each image with
# the bytes that went in, qemu-img map counts the clusters stored (every
# cluster with a non-zero byte, no all-zero one), and the same bytes
# packed from the file give the same image.
. "$srcdir/functions.sh"
. "$srcdir/pack-common.sh"
requires qemu-img jq cmp python3

cd "$tmp"

# The big-endian u64 at an offset of a file.
be_at () {
  python3 -c 'import sys
f = open(sys.argv[1], "rb"); f.seek(int(sys.argv[2]))
print(int.from_bytes(f.read(8), "big"))' "$@"
}

# The bytes of clusters of cs bytes:
#   single: cluster i holds one non-zero byte at offset i (i < cs),
#           each followed by an all-zero cluster;
#   edges:  cluster 2i is non-zero up to offset i and zero after it,
#           cluster 2i+1 zero up to offset i and non-zero after it;
# and a tail that is not a whole cluster.
make_source () {                # CS PATTERN FILE
  python3 - "$@" <<'PYEOF'
import random, sys
cs, pattern, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rnd = random.Random(cs)
nonzero = bytes([1]) + bytes(range(1, 256))
def data(n):
    return rnd.randbytes(n).translate(nonzero)
out = bytearray()
for i in range(cs):
    if pattern == "single":
        c = bytearray(cs)
        c[i] = 1 << (i % 8)
        out += c + bytearray(cs)
    else:
        out += data(i) + bytearray(cs - i) + bytearray(i) + data(cs - i)
out += data(cs // 3)
open(path, "wb").write(out)
PYEOF
}

# Copy FILE to stdout in odd-sized writes, pausing now and then so that
# the reader finds the pipe short of a whole request.
trickle () {
  python3 - "$1" <<'PYEOF'
import os, random, sys, time
data = open(sys.argv[1], "rb").read()
rnd = random.Random(7)
pos = n = 0
while pos < len(data):
    k = rnd.choice((1, 3, 511, 513, 4095, 65537, 100003, 262147))
    os.write(1, data[pos:pos + k])
    pos += k
    n += 1
    if n % 64 == 0:
        time.sleep(0.001)
PYEOF
}

# The bytes qemu-img map should show as data: every cluster of FILE
# (CS bytes) that holds a non-zero byte, the last one up to the virtual
# size (whole 512-byte sectors).
nonzero_bytes () {              # FILE CS
  python3 - "$@" <<'PYEOF'
import sys
data, cs = open(sys.argv[1], "rb").read(), int(sys.argv[2])
vsize = (len(data) + 511) // 512 * 512
print(sum(min(cs, vsize - o) for o in range(0, len(data), cs)
          if any(data[o:o + cs])))
PYEOF
}

data_bytes () {
  qemu-img map --output=json "$1" |
    jq '[.[] | select(.data) | .length] | add // 0'
}

for spec in "4096 single" "512 edges"; do
  set -- $spec
  cs=$1 pattern=$2 src=src-$1-$2
  make_source "$cs" "$pattern" "$src"
  want=$(nonzero_bytes "$src" "$cs")

  for codec in none deflate; do
    opts=(--cluster-size "$cs")
    [ "$codec" = none ] || opts+=(-c "$codec")
    img=$src-$codec.qcow2
    trickle "$src" | sparsecow pack "${opts[@]}" - "$img" ||
      fail "$src ($codec): pack from a trickling pipe failed"
    check_image "$src" "$img" "$cs" 1.1 "$codec" 16
    got=$(data_bytes "$img")
    [ "$got" = "$want" ] ||
      fail "$src ($codec): $got bytes stored, $want hold non-zero bytes"
    sparsecow pack "${opts[@]}" "$src" "f-$img"
    cmp "$img" "f-$img" ||
      fail "$src ($codec): packed from the pipe and from the file differ"
  done

  # Stream in, stream out.
  trickle "$src" | sparsecow pack --cluster-size "$cs" - - >out.qcow2 ||
    fail "$src: pack - - from a trickling pipe failed"
  check_image "$src" out.qcow2 "$cs" 1.1 none 16
  # A stream ends with its refcount table (a failed one then lacks
  # it): the same clusters as into a file, laid out otherwise.
  [ "$(data_bytes out.qcow2)" = "$(data_bytes "$src-none.qcow2")" ] ||
    fail "$src: pack - - stores other clusters than pack into a file"
  [ "$(be_at out.qcow2 48)" -ge $(( $(stat -c %s out.qcow2) - cs )) ] ||
    fail "$src: pack - - does not end with its refcount table"
done
