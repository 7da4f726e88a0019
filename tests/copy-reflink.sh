#!/usr/bin/env bash
# On file systems that share blocks between files (xfs with reflink,
# btrfs), loop-mounted here: pack and unpack next to their source share
# the source's blocks instead of writing copies of them, and what they
# make is the same as where nothing can be shared.  The kernel's FIEMAP
# (filefrag) tells which extents are shared; qemu-img check and
# compare, and cmp, judge the content.  The same runs from a tmpfs to
# the shared-block file system and back, where nothing is shared, and
# with clusters smaller than the file system's blocks, give the same
# bytes and the same holes.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img cmp filefrag losetup mount umount python3
requires_root

cd "$tmp"
MiB=$((1024 * 1024))

# Bytes of FILE in extents that FIEMAP flags as shared.
shared_bytes () {
  sync
  filefrag -v "$1" | awk '
    /^File size of / { bs = $(NF - 1); sub(/[(]/, "", bs) }
    /^ *[0-9]+:/ && /shared/ { split($0, f, ":"); n += f[4] }
    END { printf "%.0f\n", n * bs }'
}

# The source: 49 MiB of data in runs inside 256 MiB, one of them
# starting inside a cluster and one that compresses, with a tail that
# ends inside a block (on a sector: unpack writes whole sectors); an
# all-zero 4 KiB block inside data (a hole in what unpack writes) and an
# all-zero 64 KiB cluster (left out of the image).
python3 - src.raw <<'EOF'
import os, random, sys
random.seed(4242)
MiB = 1 << 20
with open(sys.argv[1], "wb") as f:
    f.truncate(256 * MiB + 1024)
    for off, n in ((0, 8), (20, 16), (100, 8), (200, 15)):
        f.seek(off * MiB)
        f.write(random.randbytes(n * MiB))
    f.seek(150 * MiB + 12345)
    f.write(random.randbytes(MiB))
    f.seek(230 * MiB)
    f.write(b"sparsecow " * (MiB // 10))
    f.seek(20 * MiB + 4096)
    f.write(bytes(4096))
    f.seek(100 * MiB + 65536)
    f.write(bytes(65536))
    f.seek(256 * MiB - 8192)
    f.write(random.randbytes(8192 + 1024))
EOF
# What must be shared at least: the data but the piece of the image
# that holds its metadata (written) and the cluster that runs past the
# end of the source, each with the rest of its 1 MiB piece.
data=$((49 * MiB))
share=$((data - 3 * MiB))

# A tmpfs: a file system that cannot share blocks.
mkdir tmpfs
mount -t tmpfs -o size=600M tmpfs tmpfs 2>/dev/null ||
  { echo "$0: SKIP: cannot mount a tmpfs"; exit 77; }
cleanup_fn "umount '$tmp/tmpfs'"

# What sparsecow makes where nothing is shared: the reference.
cp src.raw tmpfs/src.raw
sparsecow pack tmpfs/src.raw tmpfs/ref.qcow2 || fail "pack on tmpfs"
sparsecow pack --cluster-size 512 tmpfs/src.raw tmpfs/ref512.qcow2 ||
  fail "pack --cluster-size 512 on tmpfs"
sparsecow pack -c tmpfs/src.raw tmpfs/refc.qcow2 || fail "pack -c on tmpfs"
sparsecow unpack tmpfs/ref.qcow2 tmpfs/ref.raw || fail "unpack on tmpfs"
cmp src.raw tmpfs/ref.raw || fail "unpack on tmpfs differs from the source"
data_map tmpfs/ref.raw > ref.map
# The all-zero block inside data is a hole, as everywhere else.
python3 - ref.map $((20 * MiB + 4096)) <<'EOF' || fail "unpack on tmpfs wrote the zero block"
import sys
z = int(sys.argv[2])
for line in open(sys.argv[1]):
    s, e = map(int, line.split())
    if s < z + 4096 and z < e:
        sys.exit(1)
EOF

# Mount FS (xfs or btrfs) on a loop device at ./FS: 1 when this system
# cannot (the tool, the kernel module or a loop device missing).
mount_fs () {
  local fs=$1 loop
  case $fs in
  xfs) command -v mkfs.xfs >/dev/null || return 1
       truncate -s 1G xfs.img
       mkfs.xfs -q -m reflink=1 xfs.img 2>/dev/null || return 1 ;;
  btrfs) command -v mkfs.btrfs >/dev/null || return 1
         truncate -s 1G btrfs.img
         mkfs.btrfs -q btrfs.img >/dev/null 2>&1 || return 1 ;;
  esac
  loop=$(losetup -f --show $fs.img 2>/dev/null) || return 1
  cleanup_fn "losetup -d $loop"
  mkdir $fs
  mount -t $fs "$loop" $fs 2>/dev/null || return 1
  cleanup_fn "umount '$tmp/$fs'"
}

# Check that FILE shares at least MIN bytes: what would be written
# otherwise.
expect_shared () {
  local got
  got=$(shared_bytes "$1")
  [ "$got" -ge "$2" ] || {
    filefrag -v "$1" >&2; fail "$1 shares $got bytes, expected at least $2"; }
}

# Check that FILE shares nothing (what crossed file systems is copied).
expect_unshared () {
  local got
  got=$(shared_bytes "$1")
  [ "$got" = 0 ] || { filefrag -v "$1" >&2; fail "$1 shares $got bytes"; }
}

tested=()
for fs in xfs btrfs; do
  if ! mount_fs $fs; then
    echo "$0: no $fs here (mkfs.$fs, the module or a loop device missing)"
    continue
  fi
  tested+=($fs)
  cp --reflink=never src.raw $fs/src.raw

  # pack: the data clusters of the image are the source's blocks.
  sparsecow pack $fs/src.raw $fs/p.qcow2 || fail "pack on $fs"
  qemu-img check -q $fs/p.qcow2 || fail "pack on $fs: qemu-img check"
  qemu-img compare -q $fs/src.raw $fs/p.qcow2 || fail "pack on $fs: compare"
  cmp tmpfs/ref.qcow2 $fs/p.qcow2 || fail "pack on $fs differs from pack on tmpfs"
  expect_shared $fs/p.qcow2 $share
  expect_shared $fs/src.raw $share

  # unpack: the same bytes and holes as on tmpfs, sharing the image's.
  sparsecow unpack $fs/p.qcow2 $fs/u.raw || fail "unpack on $fs"
  cmp src.raw $fs/u.raw || fail "unpack on $fs differs from the source"
  qemu-img compare -q -f raw -F qcow2 $fs/u.raw $fs/p.qcow2 ||
    fail "unpack on $fs: compare"
  data_map $fs/u.raw | diff -u ref.map - ||
    fail "unpack on $fs left other holes than on tmpfs"
  expect_shared $fs/u.raw $share

  # Several targets at once: each gets a copy of its own, the same
  # bytes and holes, nothing shared (as sparsecow(1) says).
  sparsecow unpack -q $fs/p.qcow2 $fs/m1.raw $fs/m2.raw ||
    fail "unpack to two targets on $fs"
  for m in m1 m2; do
    cmp src.raw $fs/$m.raw || fail "unpack to two targets on $fs: $m.raw differs"
    data_map $fs/$m.raw | diff -u ref.map - ||
      fail "unpack to two targets on $fs: $m.raw has other holes than on tmpfs"
    expect_unshared $fs/$m.raw
  done
  rm -f $fs/m1.raw $fs/m2.raw

  # -S 0: everything allocated, the data shared without being read.
  sparsecow unpack -S 0 $fs/p.qcow2 $fs/s0.raw || fail "unpack -S 0 on $fs"
  cmp src.raw $fs/s0.raw || fail "unpack -S 0 on $fs differs"
  [ "$(data_map $fs/s0.raw)" = "0 $(stat -c %s src.raw)" ] ||
    fail "unpack -S 0 on $fs left holes"
  expect_shared $fs/s0.raw $share

  # Re-pack: the clusters of the old image are shared with the new.
  sparsecow pack $fs/p.qcow2 $fs/r.qcow2 || fail "re-pack on $fs"
  qemu-img check -q $fs/r.qcow2 || fail "re-pack on $fs: qemu-img check"
  qemu-img compare -q $fs/p.qcow2 $fs/r.qcow2 || fail "re-pack on $fs: compare"
  expect_shared $fs/r.qcow2 $share
  rm -f $fs/r.qcow2 $fs/s0.raw

  # Across file systems nothing is shared, and nothing changes.
  sparsecow pack tmpfs/src.raw $fs/x.qcow2 || fail "pack tmpfs -> $fs"
  cmp tmpfs/ref.qcow2 $fs/x.qcow2 || fail "pack tmpfs -> $fs differs"
  expect_unshared $fs/x.qcow2
  sparsecow unpack tmpfs/ref.qcow2 $fs/x.raw || fail "unpack tmpfs -> $fs"
  cmp src.raw $fs/x.raw || fail "unpack tmpfs -> $fs differs"
  data_map $fs/x.raw | diff -u ref.map - ||
    fail "unpack tmpfs -> $fs left other holes"
  expect_unshared $fs/x.raw
  sparsecow unpack $fs/p.qcow2 tmpfs/x.raw || fail "unpack $fs -> tmpfs"
  cmp src.raw tmpfs/x.raw || fail "unpack $fs -> tmpfs differs"
  data_map tmpfs/x.raw | diff -u ref.map - ||
    fail "unpack $fs -> tmpfs left other holes"
  rm -f $fs/x.qcow2 $fs/x.raw tmpfs/x.raw

  # Clusters smaller than the file system's blocks cannot be shared:
  # copied, with the same result.
  sparsecow pack --cluster-size 512 $fs/src.raw $fs/p512.qcow2 ||
    fail "pack --cluster-size 512 on $fs"
  cmp tmpfs/ref512.qcow2 $fs/p512.qcow2 ||
    fail "pack --cluster-size 512 on $fs differs from tmpfs"
  qemu-img check -q $fs/p512.qcow2 || fail "512-byte clusters on $fs: check"
  sparsecow unpack $fs/p512.qcow2 $fs/u512.raw ||
    fail "unpack of 512-byte clusters on $fs"
  cmp src.raw $fs/u512.raw || fail "unpack of 512-byte clusters on $fs differs"
  data_map $fs/u512.raw | diff -u ref.map - ||
    fail "unpack of 512-byte clusters on $fs left other holes"

  # Compressed clusters are decompressed and written; those of random
  # data that pack -c stored as they are, shared.
  cp tmpfs/refc.qcow2 $fs/c.qcow2
  sparsecow unpack $fs/c.qcow2 $fs/uc.raw || fail "unpack -c image on $fs"
  cmp src.raw $fs/uc.raw || fail "unpack of a compressed image on $fs differs"
  data_map $fs/uc.raw | diff -u ref.map - ||
    fail "unpack of a compressed image on $fs left other holes"
  expect_shared $fs/uc.raw $((share - MiB))
  got=$(shared_bytes $fs/uc.raw)
  [ "$got" -le $((data - MiB)) ] ||
    fail "unpack of a compressed image on $fs shares $got bytes"
  rm -f $fs/p512.qcow2 $fs/u512.raw $fs/c.qcow2 $fs/uc.raw

  # A file written in place is shared into too (--zero=skip: nothing
  # read, moved whole).
  truncate -s "$(stat -c %s src.raw)" $fs/n.raw
  sparsecow unpack -n --zero=skip $fs/p.qcow2 $fs/n.raw ||
    fail "unpack -n --zero=skip on $fs"
  cmp src.raw $fs/n.raw || fail "unpack -n --zero=skip on $fs differs"
  expect_shared $fs/n.raw $share
  rm -f $fs/n.raw
done
[ ${#tested[@]} -gt 0 ] ||
  { echo "$0: SKIP: neither xfs nor btrfs can be mounted here"; exit 77; }
echo "$0: shared blocks on: ${tested[*]}"
exit 0
