#!/usr/bin/env bash
# sparsecow unpack and map read the qcow2 images that e2image writes
# (its own writer, version 2, cluster size = file system block size):
# metadata only (-Q) and with all data (-Q -a).  Judged twice: by
# qemu-img convert and by e2image's own qcow2-to-raw conversion.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
. "$srcdir/reader-functions.sh"
requires qemu-img qemu-io python3 timeout cmp mke2fs e2image

cd "$tmp"

# /usr/share/doc gives thousands of small files and directories; 128 MiB
# is too small for it on some systems, so grow until it fits.
populate () {
  local fs=$1 size; shift
  for size in 128M 512M 1G; do
    rm -f "$fs"
    if mke2fs -q -F "$@" -d /usr/share/doc "$fs" $size >/dev/null 2>&1; then
      return 0
    fi
  done
  fail "mke2fs -d /usr/share/doc failed"
}
if [ -d /usr/share/doc ]; then
  populate fs.img -t ext4
else
  mke2fs -q -F -t ext4 fs.img 128M >/dev/null
fi
# A 1 KiB block size gives 1 KiB clusters.
mkdir small
for i in $(seq 1 50); do
  head -c $(( i * 3000 )) /dev/urandom > small/f$i
done
mke2fs -q -F -t ext4 -b 1024 -d small fs1k.img 64M >/dev/null

for fs in fs.img fs1k.img; do
  for mode in "" -a; do
    q=${fs%.img}$mode.qcow2
    rm -f "$q"
    e2image -Q $mode "$fs" "$q" 2>/dev/null
    check_image "$q"

    # e2image's own conversion back to raw is a second judge.
    e2image -r "$q" "$q.e2.raw" 2>/dev/null
    rd_unpack "$q" "$q.out.raw" || fail "unpack $q failed"
    cmp "$q.e2.raw" "$q.out.raw" || fail "unpack $q differs from e2image -r $q"
    rm -f "$q.e2.raw" "$q.out.raw"
  done
done
