#!/usr/bin/env bash
# sparsecow unpack --zero=auto|unmap|write|skip onto a loop device full
# of old random bytes: auto and unmap leave it equal to qemu-img
# convert's output and keep the loop file thin (zero ranges unmapped);
# write leaves it equal and allocates the zero ranges; skip writes the
# ranges qemu-img map calls data and leaves the rest as it was, and says
# so.  --target-is-zero on a device that reads as zero writes no zero
# range.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io losetup cmp jq
requires_root

cd "$tmp"
MiB=$((1024 * 1024))
size=$((64 * MiB))

qemu-img create -q -f qcow2 img.qcow2 $size
# Data, a zero cluster, data that is all zero bytes (allocated: data for
# qemu-img map), a partial cluster, and data at the end.
qemu-io -f qcow2 -c "write -P 0x11 0 100k" -c "write -z 2M 1M" \
  -c "write -P 0 5M 128k" -c "write -P 0x22 10M 4k" \
  -c "write -P 0x33 63M 1M" img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw
# What the image holds as data, "start length" per line.
qemu-img map --output=json img.qcow2 |
  jq -r '.[] | select(.data) | "\(.start) \(.length)"' > data.ranges
[ -s data.ranges ] || fail "qemu-img map reports no data"

# A loop file full of old random bytes, allocated all through.
fresh_device () {
  head -c $size /dev/urandom > "$1"
  cp "$1" "$1.old"
  loop_attach "$1"
}
# The loop file must be thin: no more allocated than the image's data
# as qemu-img convert allocates it, plus 1 MiB.
thin () {
  local got limit
  sync
  got=$(allocated_bytes "$1")
  limit=$(( $(allocated_bytes ref.raw) + MiB ))
  [ "$got" -le "$limit" ] ||
    fail "$2: $1 has $got bytes allocated, more than $limit"
}

for mode in auto unmap; do
  fresh_device $mode.img
  sparsecow unpack -f --zero=$mode img.qcow2 "$dev" ||
    fail "unpack --zero=$mode to $dev failed"
  cmp ref.raw "$dev" || fail "--zero=$mode: $dev differs from qemu-img convert"
  thin $mode.img "--zero=$mode"
done

# The default is auto; an image from a pipe follows the same rules.
fresh_device default.img
sparsecow unpack -f img.qcow2 "$dev" || fail "unpack to $dev failed"
cmp ref.raw "$dev" || fail "default: $dev differs from qemu-img convert"
thin default.img "the default --zero"
fresh_device stream.img
cat img.qcow2 | sparsecow unpack -f --zero=unmap - "$dev" ||
  fail "unpack --zero=unmap from a pipe to $dev failed"
cmp ref.raw "$dev" || fail "stream --zero=unmap: $dev differs"
thin stream.img "--zero=unmap from a pipe"

# write: equal, and every zero range is allocated on a thin device.
fresh_device write.img
sparsecow unpack -f --zero=write img.qcow2 "$dev" ||
  fail "unpack --zero=write to $dev failed"
cmp ref.raw "$dev" || fail "--zero=write: $dev differs from qemu-img convert"
truncate -s $size sparse-write.img
loop_attach sparse-write.img
sparsecow unpack -f --zero=write img.qcow2 "$dev" ||
  fail "unpack --zero=write to a sparse $dev failed"
cmp ref.raw "$dev" || fail "--zero=write: sparse $dev differs"
sync
[ "$(allocated_bytes sparse-write.img)" -ge $((size - MiB)) ] ||
  fail "--zero=write left zero ranges of the sparse $dev unallocated"

# skip: the data ranges are the image's, the rest is what was there,
# and stderr says so.
fresh_device skip.img
sparsecow unpack -f --zero=skip img.qcow2 "$dev" 2> skip.err ||
  fail "unpack --zero=skip to $dev failed"
grep -q -- "--zero=skip: ranges of img.qcow2 that read as zero are not written" \
  skip.err || fail "--zero=skip did not say that it leaves zero ranges"
pos=0
while read -r start len; do
  cmp -i $start:$start -n $len ref.raw "$dev" ||
    fail "--zero=skip: data at $start+$len differs from the image"
  if [ "$start" -gt "$pos" ]; then
    cmp -i $pos:$pos -n $((start - pos)) skip.img.old "$dev" ||
      fail "--zero=skip: $pos+$((start - pos)) is not the old content"
  fi
  pos=$((start + len))
done < data.ranges
if [ "$pos" -lt "$size" ]; then
  cmp -i $pos:$pos -n $((size - pos)) skip.img.old "$dev" ||
    fail "--zero=skip: the tail is not the old content"
fi
# The all-zero data at 5M is data: written as zeros.
cmp -i $((5 * MiB)):0 -n $((128 * 1024)) "$dev" /dev/zero ||
  fail "--zero=skip did not write data that is all zero bytes"

# A device that cannot unmap with zeros guaranteed (a loop device over
# a file on ramfs, which has no fallocate): unmap is refused before
# anything is written, auto zeroes by other means.
mkdir ramfs
if mount -t ramfs none ramfs 2>/dev/null; then
  cleanup_fn "umount $tmp/ramfs"
  head -c $size /dev/urandom > ramfs/dev.img
  cp ramfs/dev.img ramfs.old
  loop_attach ramfs/dev.img
  expect_fail "$dev: device cannot unmap a range so that it reads as zero" \
    sparsecow unpack -f --zero=unmap img.qcow2 "$dev"
  cmp ramfs.old "$dev" || fail "a refused --zero=unmap changed $dev"
  sparsecow unpack -f img.qcow2 "$dev" ||
    fail "unpack --zero=auto to $dev (no unmap) failed"
  cmp ref.raw "$dev" || fail "--zero=auto without unmap: $dev differs"
else
  echo "$0: no ramfs here: a device that cannot unmap is not tried"
fi

# --target-is-zero (with -n, as qemu-img convert wants it): a device that
# reads as zero gets no zero range.
truncate -s $size zeroed.img
loop_attach zeroed.img
sparsecow unpack -f -n --target-is-zero img.qcow2 "$dev" ||
  fail "unpack --target-is-zero to $dev failed"
cmp ref.raw "$dev" || fail "--target-is-zero: $dev differs"
thin zeroed.img "--target-is-zero"
expect_fail "unpack: --target-is-zero writes no zero range: --zero=write" \
  sparsecow unpack -f -n --target-is-zero --zero=write img.qcow2 "$dev"
expect_fail "unpack: --zero: expected auto, unmap, write or skip, not 'fast'" \
  sparsecow unpack -f --zero=fast img.qcow2 "$dev"
expect_fail "unpack: --zero=skip applies to files and block devices, not -" \
  sparsecow unpack --zero=skip img.qcow2 -

exit 0
