#!/usr/bin/env bash
# sparsecow unpack of huge, nearly empty images: on a file system that
# can hold the result (XFS) only the data is written and qemu-img agrees
# with the content; on one that cannot (ext4 with 4 KiB blocks stops
# short of 16 TiB) unpack fails before writing anything, says why, and
# leaves nothing behind.  The file systems are loop-mounted files under
# $tmp, so this needs root.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io mkfs.xfs mkfs.ext4 mount umount
requires_root

cd "$tmp"
MiB=$((1024 * 1024))
TiB=$((1024 * 1024 * MiB))

# mount_loop FSTYPE DIR: a 1 GiB file system of FSTYPE mounted on DIR.
mount_loop () {
  local type=$1 dir=$2
  truncate -s 1G "$dir.img"
  case $type in
    xfs) mkfs.xfs -q "$dir.img" ;;
    ext4) mkfs.ext4 -q -F -b 4096 "$dir.img" ;;
  esac
  mkdir "$dir"
  mount -o loop "$dir.img" "$dir" || {
    echo "$0: SKIP: cannot loop-mount $type"; exit 77; }
  cleanup_fn "umount '$tmp/$dir'"
}

# 8 TiB on XFS.
qemu-img create -q -f qcow2 big.qcow2 8T
qemu-io -f qcow2 -c "write -P 0xab 0 5M" -c "write -P 0xcd 4T 5M" big.qcow2 \
  >/dev/null

mount_loop xfs xfs
sparsecow unpack big.qcow2 xfs/big.raw || fail "unpack of an 8 TiB image failed"
[ "$(stat -c %s xfs/big.raw)" -eq $((8 * TiB)) ] ||
  fail "unpacked size is $(stat -c %s xfs/big.raw), not 8 TiB"
# Only the data is allocated (10 MiB, plus a little file system slack).
alloc=$(allocated_bytes xfs/big.raw)
[ "$alloc" -le $((16 * MiB)) ] ||
  fail "the unpacked file has $alloc bytes allocated for 10 MiB of data"
# qemu-io checks the patterns, and that the ranges around them read as
# zeros; qemu-img compare checks the whole image against the file.
qemu-io -f raw \
  -c "read -P 0xab 0 5M" \
  -c "read -P 0 5M 1M" \
  -c "read -P 0 $((4 * TiB - MiB)) 1M" \
  -c "read -P 0xcd 4T 5M" \
  -c "read -P 0 $((4 * TiB + 5 * MiB)) 1M" \
  -c "read -P 0 $((8 * TiB - MiB)) 1M" \
  xfs/big.raw > qemu-io.out || fail "qemu-io could not read the result"
if grep -q "Pattern verification failed" qemu-io.out; then
  cat qemu-io.out >&2
  fail "unpacked data differs from what was written"
fi
qemu-img compare -q -f qcow2 -F raw big.qcow2 xfs/big.raw ||
  fail "qemu-img compare: the unpacked file differs from the image"
rm -f xfs/big.raw

# 17 TiB on ext4: too big for the file system.
qemu-img create -q -f qcow2 huge.qcow2 17T
qemu-io -f qcow2 -c "write -P 0xab 0 1M" huge.qcow2 >/dev/null
mount_loop ext4 ext4
before=$(ls -A ext4)
expect_fail 'ext4/huge.raw: file system cannot hold a file of 18691697672192 bytes' \
  sparsecow unpack huge.qcow2 ext4/huge.raw
[ "$(ls -A ext4)" = "$before" ] ||
  fail "a failed unpack left files behind: $(ls -A ext4)"
# The same over an existing file keeps it.
echo old > ext4/huge.raw
expect_fail 'file system cannot hold' sparsecow unpack -f huge.qcow2 ext4/huge.raw
[ "$(cat ext4/huge.raw)" = old ] || fail "a failed unpack -f damaged the old file"

exit 0
