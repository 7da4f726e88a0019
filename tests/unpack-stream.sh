#!/bin/bash
# unpack from a pipe: the image is read once, front to back.  For every
# kind of image (sparsecow's, qemu-img's, qemu-io's with data stored
# before the tables that map it, e2image's), what comes out equals
# qemu-img convert -O raw of the same image file, and what unpack writes
# from the image file, in content and in allocated blocks (zeros are
# skipped per 4 KiB on both paths).  Images that cannot be
# streamed are refused with a message and leave nothing; damaged ones
# never crash it, and when it does succeed on one that qemu-img also
# reads, the two agree.
. "$srcdir/functions.sh"
requires qemu-img qemu-io cmp mkfifo timeout python3 jq

MiB=$((1024 * 1024))
cd "$tmp"

# feed COMMAND...: its output, even if the reader stops early (a refused
# image is not read to the end, and the writer must not fail for it).
feed () { "$@" 2>/dev/null || :; }

# judge IMAGE: the stream unpack to a file and to a pipe equals
# qemu-img's conversion.
judge () {
  local img=$1
  rm -f ref.raw out.raw piped.raw
  qemu-img convert -f qcow2 -O raw "$img" ref.raw
  cat "$img" | sparsecow unpack - out.raw || fail "$img: stream unpack failed"
  cmp ref.raw out.raw || fail "$img: stream unpack differs from qemu-img"
  # Sparse: all-zero clusters are not written (qemu-img finds zeros at
  # a finer grain than 2 MiB clusters, hence the slack).
  [ "$(stat -c %b out.raw)" -le $(( $(stat -c %b ref.raw) + 16384 )) ] ||
    fail "$img: stream unpack is not sparse"
  # From a pipe exactly as sparse as from the file: the same 4 KiB
  # blocks are left unwritten on both paths.
  rm -f file.raw
  sparsecow unpack "$img" file.raw || fail "$img: unpack failed"
  cmp out.raw file.raw || fail "$img: unpack from a pipe and from the file differ"
  data_map out.raw > out.map
  data_map file.raw > file.map
  diff -u file.map out.map >&2 ||
    fail "$img: unpack from a pipe allocates other blocks than from the file"
  rm -f out.raw file.raw
  cat "$img" | sparsecow unpack - - | cmp ref.raw - ||
    fail "$img: stream unpack to a pipe differs"
  rm -f ref.raw
}

# Sources: text, random data, zeros written out, holes, an odd tail.
truncate -s $((40 * MiB)) src
seq 1 300000 | dd of=src conv=notrunc status=none
head -c $((3 * MiB)) /dev/urandom | dd of=src bs=1M seek=9 conv=notrunc status=none
dd if=/dev/zero of=src bs=1M seek=15 count=2 conv=notrunc status=none
head -c 77777 /dev/urandom | dd of=src bs=1 seek=$((40 * MiB - 77777)) \
  conv=notrunc status=none

# Random data wherever an offset matters: a cluster served from the
# wrong place (of the image, or of the spill file that keeps what went by
# early) differs from every other one.
for i in 0 1 2 3 4 5 6 7; do head -c 1M /dev/urandom > rnd$i; done

# sparsecow's own images, every codec and several layouts.
sparsecow pack src p.qcow2
judge p.qcow2
sparsecow pack -c src pd.qcow2
judge pd.qcow2
sparsecow pack -c zstd src pz.qcow2
judge pz.qcow2
sparsecow pack --cluster-size 512 -c src p512.qcow2
judge p512.qcow2
sparsecow pack --cluster-size 2M src p2m.qcow2
judge p2m.qcow2
sparsecow pack --compat 0.10 --refcount-bits 16 src pv2.qcow2
judge pv2.qcow2

# qemu-img's images.
qemu-img convert -O qcow2 src q.qcow2
judge q.qcow2
qemu-img convert -c -O qcow2 src qc.qcow2
judge qc.qcow2
qemu-img convert -c -O qcow2 -o compression_type=zstd,cluster_size=4k \
  src qz.qcow2
judge qz.qcow2
qemu-img convert -O qcow2 -o extended_l2=on,cluster_size=128k src qx.qcow2
judge qx.qcow2
qemu-img convert -O qcow2 -o preallocation=metadata src qm.qcow2
judge qm.qcow2

# Clusters that hold a little data and many zeros: 4 KiB writes into
# 64 KiB and 2 MiB clusters, some compressed.
for cs in 64k 2M; do
  qemu-img create -q -f qcow2 -o cluster_size=$cs part-$cs.qcow2 16M
  qemu-io -c "write -s rnd3 0 4k" -c "write -s rnd4 72k 4k" \
    -c "write -s rnd5 4100k 8k" -c "write -s rnd6 9M 4k" \
    part-$cs.qcow2 >/dev/null
  judge part-$cs.qcow2
  qemu-img convert -c -O qcow2 -o cluster_size=$cs part-$cs.qcow2 \
    partc-$cs.qcow2
  judge partc-$cs.qcow2
done

# A virtual size that is not a whole number of sectors: qemu drops the
# partial last sector, from a pipe as from a file.
qemu-img create -q -f qcow2 -o cluster_size=512 odd.qcow2 1000448
qemu-io -c "write -P 7 999424 1024" odd.qcow2 >/dev/null
python3 -c "
import struct, sys
with open('odd.qcow2', 'r+b') as f:
    f.seek(24); f.write(struct.pack('>Q', 1000001))"
judge odd.qcow2

# qemu-io writes in guest order reversed: data is stored out of guest
# order, and a pipe target gets it in order all the same.
qemu-img create -q -f qcow2 rev.qcow2 64M
for i in 7 6 5 4 3 2 1 0; do
  qemu-io -c "write -s rnd$i $((i * 8))M 1M" rev.qcow2 >/dev/null
done
qemu-io -c "write -z 3M 1M" -c "discard 5M 64k" rev.qcow2 >/dev/null
judge rev.qcow2

# Data stored before the L2 table that maps it: a snapshot makes the
# next writes copy the table to the end; deleting it frees the old
# clusters, and the next data fills them, in front of its table.
qemu-img create -q -f qcow2 late.qcow2 64M
qemu-io -c "write -s rnd0 0 1M" late.qcow2 >/dev/null
qemu-img snapshot -c s1 late.qcow2
qemu-io -c "write -s rnd1 0 1M" late.qcow2 >/dev/null
qemu-img snapshot -d s1 late.qcow2
qemu-io -c "write -s rnd2 2M 1M" late.qcow2 >/dev/null
python3 - late.qcow2 <<'EOF' || fail "late.qcow2 does not have data before its table"
import struct, sys
f = open(sys.argv[1], 'rb'); h = f.read(104)
cbits = struct.unpack('>I', h[20:24])[0]
l1_size, l1_off = struct.unpack('>IQ', h[36:48])
f.seek(l1_off); l2_off = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
f.seek(l2_off + (2 << 20 >> cbits) * 8)
data = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
sys.exit(0 if 0 < data < l2_off else 1)
EOF
judge late.qcow2

# 300 MiB of data clusters first, then the one L2 table that maps them:
# everything is served late, and to a pipe it must go out in guest order
# without holding it all.
python3 - tail.qcow2 <<'EOF'
import os, struct, subprocess, sys
cs, n, start = 1 << 16, 4800, 1 << 18
subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', sys.argv[1], '1G'],
               check=True)
img = bytearray(open(sys.argv[1], 'rb').read())
l1 = struct.unpack('>Q', img[40:48])[0]
img += bytes(start - len(img))
blk = os.urandom(cs)
for j in range(n):
    img += blk[:8] + struct.pack('>Q', j) + blk[16:]
l2 = len(img)
img[l1:l1 + 8] = struct.pack('>Q', l2 | (1 << 63))
table = bytearray(cs)
for j in range(n):
    table[8 * j:8 * j + 8] = struct.pack('>Q', (start + j * cs) | (1 << 63))
img += table
open(sys.argv[1], 'wb').write(img)
EOF
judge tail.qcow2
rm -f tail.qcow2

# e2image -Q images of an ext4 file system.
if command -v mke2fs >/dev/null && command -v e2image >/dev/null; then
  mkdir tree
  for i in $(seq 1 40); do head -c $((i * 5000)) /dev/urandom >tree/f$i; done
  mke2fs -q -F -t ext4 -d tree fs.img 64M >/dev/null
  e2image -Q fs.img e2.qcow2
  judge e2.qcow2
  e2image -Q -a fs.img e2a.qcow2
  judge e2a.qcow2
fi

# A named pipe as the image, and progress without a total.
mkfifo fifo
cat pd.qcow2 >fifo &
timeout 60 "$SPARSECOW" unpack --progress=json fifo fifo.raw 2>progress.json ||
  fail "unpack from a FIFO failed"
wait
cmp src fifo.raw || fail "unpack from a FIFO differs"
[ "$(tail -n 1 progress.json | jq .done)" = "$(stat -c %s pd.qcow2)" ] ||
  fail "progress does not end at the image's length"
judge_progress progress.json --total "$(stat -c %s pd.qcow2)"

# Refused, with nothing left behind.
mkdir out
qemu-img create -q -f qcow2 -b p.qcow2 -F qcow2 child.qcow2
feed cat child.qcow2 | expect_fail "backing file" sparsecow unpack - out/x.raw
qemu-img create -q -f qcow2 -o data_file=ext.raw ext.qcow2 1M
feed cat ext.qcow2 | expect_fail "external data file" sparsecow unpack - out/x.raw
feed head -c 1M src | expect_fail "not a qcow2 image" sparsecow unpack - out/x.raw
: | expect_fail "not a qcow2 image" sparsecow unpack - out/x.raw
# Cut inside the data clusters at the end of the image (64 KiB each).
n=$(( $(stat -c %s p.qcow2) - 100000 ))
feed head -c $n p.qcow2 |
  expect_fail "^sparsecow: stdin: the stream ended at $n bytes, inside a data cluster at host offset $(( n / 65536 * 65536 ))\$" \
  sparsecow unpack - out/x.raw
feed cat p.qcow2 | expect_fail "snapshot" sparsecow unpack --snapshot s1 - out/x.raw
# A redirected file is no stream: it is read as the file it is.
sparsecow unpack - redirected.raw <p.qcow2
qemu-img compare -q -f raw -F qcow2 redirected.raw p.qcow2 ||
  fail "unpack - < file differs"
# Two L1 entries naming one L2 table (a small image that would expand
# into a huge amount of work) is refused.
qemu-img create -q -f qcow2 dup.qcow2 2G
qemu-io -c "write -P 1 0 64k" -c "write -P 2 1G 64k" dup.qcow2 >/dev/null
python3 -c '
import struct, sys
f = open(sys.argv[1], "r+b"); h = f.read(104)
l1_off = struct.unpack(">Q", h[40:48])[0]
f.seek(l1_off); e0 = f.read(8); f.seek(l1_off + 8); f.write(e0)
' dup.qcow2
feed cat dup.qcow2 | expect_fail "named by two L1 entries" \
  sparsecow unpack - out/x.raw
[ -z "$(ls -A out)" ] || fail "refused unpacks left $(ls -A out)"

# Damaged images: never a crash; when qemu-img reads one too, the same
# bytes come out.
python3 - "$tmp" <<'EOF'
import random, sys, os
random.seed(4242)
base = {n: open(os.path.join(sys.argv[1], n), 'rb').read()
        for n in ('p.qcow2', 'pd.qcow2', 'q.qcow2', 'late.qcow2')}
for i in range(60):
    name = random.choice(sorted(base))
    b = bytearray(base[name])
    # Hit the metadata: the first clusters hold header, refcounts, L1, L2.
    for _ in range(random.randint(1, 8)):
        pos = random.randrange(0, min(len(b), 8 * 65536))
        b[pos] = random.randrange(256)
    open(os.path.join(sys.argv[1], 'fz%03d.qcow2' % i), 'wb').write(b)
EOF
for f in fz*.qcow2; do
  rc=0
  feed cat "$f" | timeout 60 "$SPARSECOW" unpack - fz.raw 2>fz.err || rc=$?
  if grep -q "AddressSanitizer\|runtime error" fz.err || [ $rc -gt 1 ]; then
    cat fz.err >&2; fail "$f: crash, hang or sanitizer report (exit $rc)"
  fi
  # The same to standard output, which is written in guest order.
  rc2=0
  feed cat "$f" | timeout 60 "$SPARSECOW" unpack - - >fz.out 2>fz.err || rc2=$?
  if grep -q "AddressSanitizer\|runtime error" fz.err || [ $rc2 -gt 1 ]; then
    cat fz.err >&2; fail "$f: crash, hang or sanitizer report to stdout"
  fi
  if [ $rc = 0 ] &&
     timeout 60 qemu-img convert -f qcow2 -O raw "$f" fz.ref 2>/dev/null; then
    cmp fz.ref fz.raw || fail "$f: stream unpack and qemu-img disagree"
    [ $rc2 != 0 ] || cmp fz.ref fz.out ||
      fail "$f: stream unpack to stdout and qemu-img disagree"
  fi
  rm -f fz.raw fz.ref fz.out "$f"
done
