#!/usr/bin/env bash
# Storage is known by what finally backs it: a second loop device over
# a file is that file, as the first one is.  pack and unpack refuse,
# before anything is written, a target that is another loop device over
# the file of the source (a loop device, or one an NBD server serves),
# two targets over one file (or one over a partition of the other's
# loop device), and a target loop device whose file a mounted loop
# device also reads (naming that one and its mount point); the file
# behind two loop devices is refused naming the mounted one.
# qemu-img, e2fsck and cmp judge that nothing was written; loop devices
# over different files, and partitions of one disk, are still written.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io qemu-nbd losetup cmp
requires_root

cd "$tmp"
MiB=$((1024 * 1024))
size=$((4 * MiB))

qemu-img create -q -f qcow2 img.qcow2 $size
qemu-io -f qcow2 -c "write -P 0x11 0 100k" -c "write -P 0x22 2M 1M" \
  img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw

# ---- the source on one loop device, the target another over its file
truncate -s $size same.img
loop_attach same.img
la=$dev
loop_attach same.img
lb=$dev
# An image on the first, written by qemu-img.
qemu-img convert -f raw -O qcow2 ref.raw src.qcow2
dd if=src.qcow2 of="$la" bs=64k conv=fsync status=none
cp same.img same.ref
want="^sparsecow: $lb: is over the same file as the source $la; write to another target\$"
expect_fail "$want" sparsecow unpack -f "$la" "$lb"
expect_fail "$want" sparsecow unpack -n -f "$la" "$lb"
expect_fail "$want" sparsecow pack -f "$la" "$lb"
expect_fail "$want" sparsecow pack --target-is-device "$la" "$lb"
expect_fail "^sparsecow: $la: is over the same file as the source $lb; write to another target\$" \
  sparsecow unpack -f "$lb" "$la"
# Served by a server started here, or by one started elsewhere.
expect_fail "^sparsecow: $lb: is over the same file as the file of the NBD server $la; write to another target\$" \
  sparsecow unpack -f -- [ qemu-nbd -r -f raw "$la" ] "$lb"
expect_fail "^sparsecow: $lb: is over the same file as the file of the NBD server $la; write to another target\$" \
  sparsecow pack -f -- [ qemu-nbd -r -f raw "$la" ] "$lb"
nbd_serve la qemu-nbd -r -f raw "$la"
expect_fail "^sparsecow: $lb: is over the same file as the file of the NBD server .* $la; write to another target\$" \
  sparsecow pack -n -f "$nbd_uri" "$lb"
kill $nbd_pid; wait $nbd_pid 2>/dev/null || :
cmp same.ref same.img || fail "a refused command changed the source's file"
qemu-img compare -q -f qcow2 -F raw "$la" ref.raw ||
  fail "the image on $la is not its source any more"

# ---- two targets over one file ---------------------------------------
expect_fail "^sparsecow: unpack: $la and $lb are the same target, over the same file\$" \
  sparsecow unpack -f img.qcow2 "$la" "$lb"
expect_fail "^sparsecow: unpack: $lb and $la are the same target, over the same file\$" \
  sparsecow unpack -f img.qcow2 "$lb" "$la"
cmp same.ref same.img || fail "refused targets changed same.img"

# A loop device over a partition of a loop device over the file, beside
# one over the whole file: the same.  Two partitions are not.
truncate -s $((16 * MiB)) disk.img
mbr disk.img 2048:8192 10240:8192
loop_attach disk.img
disk=$dev
if command -v partx >/dev/null && partx -a "$disk" 2>/dev/null &&
   [ -b "${disk}p1" ] && [ -b "${disk}p2" ]; then
  cleanup_fn "partx -d $disk"
  loop_attach disk.img
  disk2=$dev
  loop_attach "${disk}p1"
  stacked=$dev
  cp disk.img disk.ref
  expect_fail "^sparsecow: unpack: ${disk}p1 and $disk2 are the same target, over the same file\$" \
    sparsecow unpack -f img.qcow2 "${disk}p1" "$disk2"
  expect_fail "^sparsecow: unpack: $disk2 and $stacked are the same target, over the same file\$" \
    sparsecow unpack -f img.qcow2 "$disk2" "$stacked"
  expect_fail "^sparsecow: unpack: $stacked is a loop device over ${disk}p1, another target\$" \
    sparsecow unpack -f img.qcow2 "${disk}p1" "$stacked"
  cmp disk.ref disk.img || fail "refused targets changed disk.img"
  sparsecow unpack -f -q img.qcow2 "$stacked" "${disk}p2" ||
    fail "unpack to $stacked and ${disk}p2 failed"
  cmp -n $size ref.raw "$stacked" || fail "$stacked differs from qemu-img convert"
  cmp -n $size ref.raw "${disk}p2" || fail "${disk}p2 differs from qemu-img convert"
else
  echo "$0: partx cannot add partitions here: partitions are not tried"
fi

# Loop devices over different files: written, from one to the other.
truncate -s $size other.img
loop_attach other.img
lc=$dev
sparsecow unpack -f -q "$la" "$lc" || fail "unpack $la to $lc failed"
cmp ref.raw "$lc" || fail "$lc differs from the image on $la"

# ---- a file system mounted through one loop device, a second over it -
if command -v mkfs.ext4 >/dev/null && command -v e2fsck >/dev/null; then
  mnt=$tmp/mnt
  mkdir "$mnt"
  truncate -s $((16 * MiB)) fs.img
  mkfs.ext4 -q -F fs.img >/dev/null 2>&1 || fail "mkfs.ext4 on fs.img failed"
  # Attached before the one mounted, and not mounted: the file is
  # refused naming the mounted one.
  loop_attach fs.img
  second=$dev
  # (mount -o loop would take the one already attached.)
  loop_attach fs.img
  mounted=$dev
  mount "$mounted" "$mnt" || fail "cannot mount $mounted"
  cleanup_fn "umount $mnt 2>/dev/null"
  echo kept > "$mnt/file"
  sync
  for cmd in "unpack -f img.qcow2" "unpack -n -f img.qcow2" \
             "pack -f ref.raw" "pack --target-is-device ref.raw"; do
    # shellcheck disable=SC2086
    expect_fail "^sparsecow: $second: is over the same file as the loop device $mounted, mounted on $mnt, which would change under it; unmount and detach it first \(losetup -d $mounted\)\$" \
      sparsecow $cmd "$second"
  done
  expect_fail "^sparsecow: $second: is over the same file as the loop device $mounted, mounted on $mnt" \
    sparsecow unpack -f img.qcow2 "$lc" "$second"
  expect_fail "^sparsecow: fs.img: is the backing file of the loop device $mounted, mounted on $mnt; unmount and detach it first \(losetup -d $mounted\)\$" \
    sparsecow unpack -f img.qcow2 fs.img
  [ "$(cat "$mnt/file")" = kept ] || fail "the mounted file system lost its file"
  umount "$mnt"
  e2fsck -fn fs.img >/dev/null 2>&1 || fail "the file system on fs.img is damaged"
  # Unmounted, the second loop device is the user's to write.
  sparsecow unpack -f -q img.qcow2 "$second" || fail "unpack to $second failed"
  cmp -n $size ref.raw "$second" || fail "$second differs from qemu-img convert"
else
  echo "$0: no mkfs.ext4: a mounted file system is not tried"
fi

exit 0
