#!/usr/bin/env bash
# sparsecow unpack and map read plain qcow2 images made by qemu-img:
# versions 2 and 3, every cluster size class, every refcount width, empty
# images, data at both ends, and virtual sizes that are not a multiple of
# the cluster size.  qemu-img convert and qemu-img map are the judges.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
. "$srcdir/reader-functions.sh"
requires qemu-img qemu-io python3 timeout cmp

cd "$tmp"

# Distinct patterns in a few places, including the first and the last
# cluster and a write that straddles a cluster boundary.
fill () {
  local img=$1 cs=$2 size=$3
  local last=$(( (size - 1) / cs * cs ))
  qio "$img" "write -P 0x11 0 $cs" \
             "write -P 0x22 $(( cs * 3 + cs / 2 )) $cs" \
             "write -P 0x33 $(( size / 2 / 512 * 512 )) 4096" \
             "write -P 0x44 $last $(( size - last ))"
}

# Versions and cluster sizes.
for compat in 0.10 1.1; do
  for cs in 512 4096 65536 2097152; do
    img=v$compat-$cs.qcow2
    qemu-img create -q -f qcow2 -o compat=$compat,cluster_size=$cs "$img" 64M
    fill "$img" $cs $((64 * 1024 * 1024))
    check_image "$img"
  done
done

# Refcount widths (version 3 only; version 2 is always 16 bits).
for rb in 1 2 16 64; do
  img=rb$rb.qcow2
  qemu-img create -q -f qcow2 -o refcount_bits=$rb,cluster_size=4096 "$img" 16M
  fill "$img" 4096 $((16 * 1024 * 1024))
  # A cluster written twice: refcounts stay 1, data is the last write.
  qio "$img" "write -P 0x55 8192 4096" "write -P 0x66 8192 4096"
  check_image "$img"
done

# Empty images, including a zero-length one.
for compat in 0.10 1.1; do
  qemu-img create -q -f qcow2 -o compat=$compat empty-$compat.qcow2 1G
  check_image empty-$compat.qcow2
done
qemu-img create -q -f qcow2 zero-length.qcow2 0
check_image zero-length.qcow2

# A virtual size that is not a multiple of the cluster size (nor of
# 4 KiB), written at both ends and right up to the last byte.
for cs in 512 65536 2097152; do
  img=odd-$cs.qcow2
  qemu-img create -q -f qcow2 -o cluster_size=$cs "$img" 1000000
  # qemu rounds the size up to a sector; use what it reports.
  size=$(img_virtual_size "$img")
  qio "$img" "write -P 0x77 0 512" "write -P 0x88 $(( size - 512 )) 512"
  check_image "$img"
done

# A large virtual size with data at both ends: cost must follow data.
qemu-img create -q -f qcow2 big.qcow2 4T
qio big.qcow2 "write -P 0x99 0 64k" "write -P 0xaa $(( 4 * 1024 * 1024 * 1024 * 1024 - 65536 )) 64k"
check_map big.qcow2
if [ "$READER_ORACLE" != qemu ]; then
  start=$(date +%s)
  rd_sparsecow unpack big.qcow2 big.raw || fail "unpack big.qcow2 failed"
  [ $(( $(date +%s) - start )) -le 10 ] || fail "unpack of a 4 TiB image with 128 KiB of data took too long"
  [ "$(stat -c %s big.raw)" = $(( 4 * 1024 * 1024 * 1024 * 1024 )) ] ||
    fail "big.raw has the wrong size"
  [ "$(allocated_bytes big.raw)" -le $(( 4 * 65536 )) ] ||
    fail "big.raw is not sparse: $(allocated_bytes big.raw) bytes allocated"
  cmp -n 65536 big.raw <(head -c 65536 /dev/zero | tr '\0' '\231') ||
    fail "big.raw: first 64 KiB wrong"
  cmp -i $(( 4 * 1024 * 1024 * 1024 * 1024 - 65536 )):0 big.raw \
    <(head -c 65536 /dev/zero | tr '\0' '\252') || fail "big.raw: last 64 KiB wrong"
  rm -f big.raw
fi

# Writing to stdout gives the same bytes.
img=v1.1-65536.qcow2
qemu-img convert -q -O raw "$img" ref.raw
rd_unpack "$img" - > stdout.raw || fail "unpack $img - failed"
cmp ref.raw stdout.raw || fail "unpack $img - differs from qemu-img convert"
# Through a pipe (no seeking past holes: zeros must be written).
rm -f piped.raw
{ rd_unpack "$img" - || echo "unpack failed" > piped.failed; } | cat > piped.raw
[ ! -e piped.failed ] || fail "unpack $img - into a pipe failed"
cmp ref.raw piped.raw || fail "unpack $img - into a pipe differs from qemu-img convert"
for other in v0.10-512.qcow2 rb1.qcow2 odd-65536.qcow2; do
  qemu-img convert -q -O raw $other other.raw
  { rd_unpack $other - || echo "unpack failed" > piped.failed; } | cat > piped.raw
  [ ! -e piped.failed ] || fail "unpack $other - into a pipe failed"
  cmp other.raw piped.raw || fail "unpack $other - into a pipe differs from qemu-img convert"
done
rm -f other.raw piped.raw

# -f replaces an existing target: stale data where the image has holes
# must not survive, and a longer old file must be cut to size.
truncate -s 80M existing.raw
for off in 0 5 10 33 63 64 79; do
  printf 'stale data that must go' | dd of=existing.raw bs=1M seek=$off conv=notrunc status=none
done
if [ "$READER_ORACLE" != qemu ]; then
  # Without -f an existing target is left alone.
  cp --sparse=always existing.raw existing.copy
  expect_fail "existing\.raw: target exists \(use -f to overwrite\)" \
    rd_sparsecow unpack "$img" existing.raw
  cmp existing.copy existing.raw || fail "unpack without -f changed an existing target"
  rd_sparsecow unpack -f "$img" existing.raw || fail "unpack -f $img existing.raw failed"
  cmp ref.raw existing.raw || fail "unpack -f over an existing file differs from qemu-img convert"
fi
