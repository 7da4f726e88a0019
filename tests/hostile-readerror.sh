#!/usr/bin/env bash
# Read errors in the source: a range of a file that cannot be read (EIO),
# as the data to pack and as the disk that holds an image to unpack.
# Each run fails with a message that names the source and the offset of
# the first byte that could not be read, leaves no target and no
# temporary file (none in TMPDIR either), and the files under the
# faulty view are unchanged; what pack wrote to standard output before
# the error is no image that qemu-img check accepts.
# The faulty view is a device-mapper table (linear + error + linear over
# a loop device) where the kernel has device-mapper, and a FUSE file
# (nbdfuse over nbdkit's ddrescue filter, which fails the ranges a
# ddrescue map marks bad) where it has FUSE; at least one must exist.
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/hostile-functions.sh"
requires qemu-img python3 cmp md5sum
requires_root

cd "$tmp"
mkdir spill
export TMPDIR=$tmp/spill
mb=1048576
# 16 MiB of data in a 32 MiB file, and its image (whole sectors, for a
# device); the bad range is 64 KiB at 10 MiB in both files, which is
# data in each (the image holds the data from 0x50000 on).
truncate -s 32M src.raw
head -c 16M /dev/urandom | dd of=src.raw conv=notrunc status=none
qemu-img convert -q -f raw -O qcow2 src.raw src.qcow2
truncate -s %512 src.qcow2
bad=$(( 10 * mb ))
badlen=65536
sums=$(md5sum src.raw src.qcow2)

views=()
# dm_view FILE: a device-mapper device over FILE with the bad range.
have_dm=false
if command -v dmsetup >/dev/null && command -v losetup >/dev/null &&
   dmsetup version >/dev/null 2>&1; then
  have_dm=true
fi
dm_view () {
  local file=$1 name loop sectors
  name=sparsecow-test-$$-${#views[@]}
  loop=$(losetup -f --show -r "$file") || fail "losetup $file"
  cleanup_fn "losetup -d $loop"
  sectors=$(( $(stat -c %s "$file") / 512 ))
  printf '0 %d linear %s 0\n%d %d error\n%d %d linear %s %d\n' \
    $(( bad / 512 )) "$loop" $(( bad / 512 )) $(( badlen / 512 )) \
    $(( (bad + badlen) / 512 )) $(( sectors - (bad + badlen) / 512 )) "$loop" \
    $(( (bad + badlen) / 512 )) | dmsetup create "$name" ||
    fail "dmsetup create $name"
  cleanup_fn "dmsetup remove $name"
  view=/dev/mapper/$name
}

have_fuse=false
if command -v nbdfuse >/dev/null && command -v nbdkit >/dev/null &&
   [ -c /dev/fuse ] && nbdkit --dump-plugin file >/dev/null 2>&1 &&
   nbdkit --filter=ddrescue null --dump-plugin >/dev/null 2>&1; then
  have_fuse=true
fi
# fuse_view FILE: a FUSE file that reads as FILE but for the bad range.
fuse_view () {
  local file=$1 n=${#views[@]} size i
  size=$(stat -c %s "$file")
  printf '# Mapfile. Created by GNU ddrescue version 1.25\n0x0 + 1\n' > map$n
  printf '0x%x 0x%x +\n0x%x 0x%x -\n0x%x 0x%x +\n' 0 $bad $bad $badlen \
    $(( bad + badlen )) $(( size - bad - badlen )) >> map$n
  mkdir fuse$n
  nbdfuse fuse$n/disk --command nbdkit -s --filter=ddrescue file "$file" \
    ddrescue-mapfile=map$n 2>fuse$n.err &
  local pid=$!
  cleanup_fn "umount -l '$tmp/fuse$n' 2>/dev/null; kill $pid 2>/dev/null; wait $pid 2>/dev/null"
  for ((i = 0; i < 200; i++)); do
    [ -e fuse$n/disk ] && break
    kill -0 $pid 2>/dev/null || { cat fuse$n.err >&2; fail "nbdfuse exited"; }
    sleep 0.05
  done
  [ -e fuse$n/disk ] || fail "nbdfuse did not start"
  view=$tmp/fuse$n/disk
}

if ! $have_dm && ! $have_fuse; then
  echo "$0: SKIP: neither device-mapper nor FUSE with nbdfuse"
  exit 77
fi
$have_dm || echo "$0: note: no device-mapper in this kernel; the FUSE view only"

for kind in dm fuse; do
  case $kind in
    dm) $have_dm || continue ;;
    fuse) $have_fuse || continue ;;
  esac
  ${kind}_view src.raw; raw=$view; views+=("$view")
  ${kind}_view src.qcow2; img=$view; views+=("$view")
  cmp -n $bad src.raw "$raw" || fail "test setup: $kind view of src.raw reads wrong"

  mkdir out-$kind
  for op in "pack" "pack -c" "pack -j 4"; do
    expect_fail "^sparsecow: $raw: read at offset $bad: Input/output error" \
      sparsecow $op "$raw" out-$kind/out.qcow2
    expect_fail "^sparsecow: $raw: read at offset $bad: Input/output error" \
      sh -c "$SC_VALGRIND '$SPARSECOW' $op '$raw' - > out-$kind.stdout"
    rc=0; qemu-img check -f qcow2 out-$kind.stdout >/dev/null 2>&1 || rc=$?
    [ $rc != 0 ] || fail "$op of $raw to stdout: qemu-img check accepts what came out"
    rm -f out-$kind.stdout
  done
  for op in "unpack" "unpack -j 4"; do
    expect_fail "^sparsecow: $img: read at offset $bad: Input/output error" \
      sparsecow $op "$img" out-$kind/out.raw
    expect_fail "^sparsecow: $img: read at offset $bad: Input/output error" \
      sh -c "$SC_VALGRIND '$SPARSECOW' $op '$img' - > out-$kind.stdout"
    [ "$(stat -c %s out-$kind.stdout)" -lt $(( 32 * mb )) ] ||
      fail "$op of $img to stdout: the partial data has the full size"
    rm -f out-$kind.stdout
  done
  expect_fail "^sparsecow: $img: read at offset $bad: Input/output error" \
    sparsecow pack "$img" out-$kind/out.qcow2
  [ -z "$(ls -A out-$kind)" ] || fail "failed runs left: $(ls -A out-$kind)"
  [ -z "$(ls -A spill)" ] || fail "failed runs left in TMPDIR: $(ls -A spill)"
done
[ "$(md5sum src.raw src.qcow2)" = "$sums" ] || fail "a source changed"
exit 0
