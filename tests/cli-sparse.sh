#!/bin/bash
# -S as qemu-img convert -S: a run of zeros between data shorter than
# SIZE is stored or written, leading and trailing zeros and holes never
# are; -S 0 allocates everything.  qemu-img convert with the same -S is
# the oracle, for pack (qemu-img map of the images) and for unpack to a
# file (the file's data extents and block count).
. "$srcdir/functions.sh"
requires qemu-img qemu-io python3

cd "$tmp"
KiB=1024
MiB=$((1024 * KiB))
# put OFFSET LENGTH random|zero: write data or explicit (allocated) zeros.
put () {
  local src=/dev/urandom
  [ "$3" = zero ] && src=/dev/zero
  head -c "$2" "$src" | dd of=src.raw bs=4k seek=$(($1 / 4096)) \
    conv=notrunc status=none
}
truncate -s $((4 * MiB)) src.raw
put 0 $((64 * KiB)) random
put $((64 * KiB)) $((192 * KiB)) zero         # three zero clusters
put $((256 * KiB)) $((64 * KiB)) random
put $((320 * KiB)) $((704 * KiB)) zero        # trailing zeros to 1 MiB
put $((2 * MiB)) $((64 * KiB)) random
put $((2 * MiB + 64 * KiB)) $((16 * KiB)) zero
put $((2 * MiB + 80 * KiB)) $((48 * KiB)) random
put $((2 * MiB + 128 * KiB)) $((128 * KiB)) zero

# The runs of data of a qcow2 image, as qemu-img map shows them.
data_runs () {
  qemu-img map --output=json "$1" | python3 -c '
import json, sys
for r in json.load(sys.stdin):
    if r["data"]:
        print(r["start"], r["length"])'
}

# Every cluster allocated: for unpack, zero detection decides alone.
qemu-img convert -q -S 0 -f raw -O qcow2 src.raw all.qcow2

for S in 0 4k 64k 128k 256k 1M; do
  # pack: the clusters stored are those qemu-img convert stores.
  rm -f q.qcow2 s.qcow2
  qemu-img convert -q -S $S -f raw -O qcow2 src.raw q.qcow2
  sparsecow pack -q -S $S src.raw s.qcow2
  qemu-img check -q s.qcow2
  qemu-img compare -q -f raw -F qcow2 src.raw s.qcow2
  [ "$(data_runs q.qcow2)" = "$(data_runs s.qcow2)" ] ||
    fail "pack -S $S stores other clusters than qemu-img convert -S $S:
$(data_runs q.qcow2)
---
$(data_runs s.qcow2)"

  # unpack of a fully allocated image to a new file: the same data
  # extents as qemu-img convert -S writes.
  rm -f q.raw s.raw
  qemu-img convert -q -S $S -f qcow2 -O raw all.qcow2 q.raw
  sparsecow unpack -q -S $S all.qcow2 s.raw
  cmp src.raw s.raw || fail "unpack -S $S: content differs"
  [ "$(data_map q.raw)" = "$(data_map s.raw)" ] ||
    fail "unpack -S $S leaves other holes than qemu-img convert -S $S:
$(data_map q.raw)
---
$(data_map s.raw)"
done

# -S 0 allocates the whole file: every block counted by stat, as qemu's.
rm -f s.raw
sparsecow unpack -q -S 0 all.qcow2 s.raw
[ $(($(stat -c %b s.raw) * 512)) -ge $((4 * MiB)) ] ||
  fail "unpack -S 0: only $(stat -c %b s.raw) blocks allocated"
# ... and from a pipe too.
rm -f p.raw
sparsecow unpack -q -S 0 - p.raw < <(cat all.qcow2)
cmp src.raw p.raw
[ $(($(stat -c %b p.raw) * 512)) -ge $((4 * MiB)) ] ||
  fail "unpack -S 0 from a pipe: only $(stat -c %b p.raw) blocks allocated"
# ... also where the image stores nothing (holes of the source, zero
# clusters), which a pipe gives no bytes for.
qemu-img convert -q -f raw -O qcow2 src.raw sparse.qcow2
rm -f p.raw
sparsecow unpack -q -S 0 - p.raw < <(cat sparse.qcow2)
cmp src.raw p.raw
[ $(($(stat -c %b p.raw) * 512)) -ge $((4 * MiB)) ] ||
  fail "unpack -S 0 of a sparse image from a pipe: only $(stat -c %b p.raw) blocks allocated"
# The default stays sparse.
rm -f d.raw
sparsecow unpack -q all.qcow2 d.raw
[ $(($(stat -c %b d.raw) * 512)) -lt $((1 * MiB)) ] ||
  fail "unpack without -S allocated $(stat -c %b d.raw) blocks"

# Random sources: runs of data, written zeros and holes of random
# lengths (sectors to MiBs, some not 4 KiB-aligned), so that runs of
# zeros cross the buffers and alignments qemu-img convert decides in.
mkrandom () {
  python3 - "$1" "$2" <<'PY'
import os, random, sys
rng = random.Random(int(sys.argv[1]))
size = 8 << 20
with open(sys.argv[2], "wb") as f:
    f.truncate(size)
    pos = 0
    while pos < size:
        n = rng.choice([512, 4096, 65536, 1 << 20]) * rng.randint(1, 40)
        n = min(n, size - pos)
        kind = rng.choice(["data", "zero", "hole", "hole"])
        if kind != "hole":
            f.seek(pos)
            if kind == "data":
                # Short data inside zeros, as in a file system.
                buf = bytearray(n)
                k = rng.randint(1, max(1, n // 512))
                for _ in range(min(k, 8)):
                    at = rng.randrange(0, n, 512)
                    buf[at:at + 512] = os.urandom(min(512, n - at))
                f.write(buf)
            else:
                f.write(bytes(n))
        pos += n
PY
}
# Written zeros around short data, then a hole and data: the zeros
# after the data end a buffer of qemu-img's, which stores none of them
# past the alignment, however large -S is.
rm -f m.raw
truncate -s $((4 * MiB)) m.raw
head -c $((0x106000 - 0xe4000)) /dev/zero |
  dd of=m.raw bs=4k seek=$((0xe4000 / 4096)) conv=notrunc status=none
head -c 2048 /dev/urandom |
  dd of=m.raw bs=512 seek=$((0xe4c00 / 512)) conv=notrunc status=none
head -c 8192 /dev/urandom |
  dd of=m.raw bs=4k seek=$((0x135000 / 4096)) conv=notrunc status=none
for S in 64k 128k 512k 1M 16M; do
  rm -f q.qcow2 s.qcow2
  qemu-img convert -q -S $S -f raw -O qcow2 m.raw q.qcow2
  sparsecow pack -q -S $S m.raw s.qcow2
  [ "$(data_runs q.qcow2)" = "$(data_runs s.qcow2)" ] ||
    fail "pack -S $S stores other clusters than qemu-img convert -S $S:
$(data_runs q.qcow2)
---
$(data_runs s.qcow2)"
done

for seed in 1 2 3 4 5 6; do
  rm -f rnd.raw
  mkrandom $seed rnd.raw
  for S in 512 1.5k 4k 64k 128k 256k 512k 1M 2M 16M; do
    rm -f q.qcow2 s.qcow2
    qemu-img convert -q -S $S -f raw -O qcow2 rnd.raw q.qcow2
    sparsecow pack -q -S $S rnd.raw s.qcow2
    [ "$(data_runs q.qcow2)" = "$(data_runs s.qcow2)" ] ||
      fail "pack -S $S of random source $seed stores other clusters than qemu-img convert -S $S:
$(data_runs q.qcow2)
---
$(data_runs s.qcow2)"
  done
done
qemu-img compare -q -f raw -F qcow2 rnd.raw s.qcow2

# unpack -S N of images of random sources: the file, and standard
# output redirected to a file, get the blocks that qemu-img convert -S N
# -O raw allocates from the same image.  qemu-img judges its buffers of
# 2 MiB from the start of each run of the image's data as its block
# status gives it, so the images vary what ends a run: clusters of 4 KiB
# (an L2 table's end every 2 MiB), compressed clusters (a run each),
# clusters written out of order (host offsets that do not follow each
# other), sparsecow's own layout, a size that ends inside a cluster,
# every cluster allocated (whole MiBs of zeros inside a run of data).
# -S 0 allocates every block.  qemu-img writes into a file made
# beforehand that it is told reads as zero (-n --target-is-zero), which
# it judges as a file it creates, but without the first 4 KiB block
# that it allocates in every raw file it creates (qemu-img create does
# too), whatever -S says.
# shuffled RAW IMAGE: the 256 KiB pieces of RAW that hold data, written
# into a new IMAGE in a random order.
shuffled () {
  local cmds
  cmds=$(python3 - "$1" <<'PY'
import random, sys
data = open(sys.argv[1], "rb").read()
step = 256 << 10
pieces = [o for o in range(0, len(data), step) if any(data[o:o + step])]
random.Random(len(pieces)).shuffle(pieces)
for o in pieces:
    n = min(step, len(data) - o)
    open("piece.%d" % o, "wb").write(data[o:o + n])
    print("-c\nwrite -q -s piece.%d %d %d" % (o, o, n))
PY
)
  qemu-img create -q -f qcow2 "$2" "$(stat -c %s "$1")"
  local IFS=$'\n'
  qemu-io -f qcow2 $cmds "$2" >/dev/null
  rm -f piece.*
}
for seed in 1 2 3; do
  rm -f rnd.raw img-*.qcow2
  mkrandom $seed rnd.raw
  if [ $seed = 3 ]; then
    head -c 1536 /dev/urandom >>rnd.raw
  fi
  qemu-img convert -q -f raw -O qcow2 rnd.raw img-default.qcow2
  qemu-img convert -q -f raw -O qcow2 -o cluster_size=4096 rnd.raw \
    img-4k.qcow2
  qemu-img convert -q -c -f raw -O qcow2 rnd.raw img-compressed.qcow2
  qemu-img convert -q -S 0 -f raw -O qcow2 rnd.raw img-allocated.qcow2
  shuffled rnd.raw img-shuffled.qcow2
  sparsecow pack -q rnd.raw img-sparsecow.qcow2
  for img in img-*.qcow2; do
    qemu-img compare -q -f raw -F qcow2 rnd.raw $img
    for S in 512 64k 2M 16M 0; do
      rm -f q.raw s.raw o.raw
      truncate -s "$(stat -c %s rnd.raw)" q.raw
      qemu-img convert -q -n --target-is-zero -S $S -f qcow2 -O raw $img \
        q.raw
      sparsecow unpack -q -S $S $img s.raw
      sparsecow unpack -q -S $S $img - >o.raw
      cmp rnd.raw s.raw || fail "unpack -S $S of $img: content differs"
      cmp rnd.raw o.raw || fail "unpack -S $S of $img to -: content differs"
      for t in s.raw o.raw; do
        [ "$(data_map q.raw)" = "$(data_map $t)" ] ||
          fail "unpack -S $S of $img (source $seed) into $t allocates other blocks than qemu-img convert -S $S -O raw:
$(data_map q.raw)
---
$(data_map $t)"
      done
    done
  done
done

# -S takes what qemu-img takes: multiples of 512 up to 16M.
expect_fail "pack: -S" sparsecow pack -S 1000 src.raw bad.qcow2
expect_fail "pack: -S" sparsecow pack -S 32M src.raw bad.qcow2
expect_fail "unpack: -S" sparsecow unpack -S x all.qcow2 bad.raw
[ ! -e bad.qcow2 ] && [ ! -e bad.raw ] || fail "a refused -S left a target"

# -S is read by qemu's size parser in both: suffixes of either case,
# fractions with a suffix, hexadecimal.  qemu-img convert decides which
# spellings are sizes and what they are worth: the same are accepted,
# and they store the same clusters.
truncate -s $((64 * KiB)) small.raw
while IFS= read -r S; do
  rm -f q.qcow2 s.qcow2
  if qemu-img convert -q -S "$S" -f raw -O qcow2 small.raw q.qcow2 \
       2>/dev/null; then
    sparsecow pack -q -S "$S" src.raw s.qcow2 ||
      fail "pack refuses -S '$S', which qemu-img convert takes"
    qemu-img convert -q -S "$S" -f raw -O qcow2 src.raw q.qcow2
    [ "$(data_runs q.qcow2)" = "$(data_runs s.qcow2)" ] ||
      fail "pack -S '$S' stores other clusters than qemu-img convert"
  else
    expect_fail "pack: -S" sparsecow pack -S "$S" src.raw s.qcow2
    [ ! -e s.qcow2 ] || fail "a refused -S '$S' left a target"
  fi
done <<'LIST'
1.5k
0x1000
0X1000
0x1000k
0xAk
0x200
0x0
0x
00x200
0x-1000
0x1000200
0x1000000
1.k
4.k
1.5
512.0
4096.4
 4k
+4k
-4k
4k 
4k.
.5k
1.5e3k
1.5b
1.0b
4096B
4K
4kb
4KiB
1m
16M
16.0M
16.00000000001M
15.9999999999999M
0.0625M
0.5k
0.25k
3.9999999k
0.99999999999999999999k
0.000488281250000001M
1e3
8e
1E
0k
00
1,5k
16M1
k

18446744073709551616
LIST
