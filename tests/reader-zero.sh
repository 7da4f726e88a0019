#!/usr/bin/env bash
# sparsecow unpack and map tell zeros from data the way qemu does: zero
# clusters (with and without a host cluster), discarded ranges,
# preallocated images, extended L2 entries with data, zero and
# unallocated subclusters in one cluster, lazy refcounts, and an image
# whose dirty bit is set.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
. "$srcdir/reader-functions.sh"
requires qemu-img qemu-io python3 timeout cmp

cd "$tmp"

# Zero clusters: "write -z" keeps the host cluster of an allocated
# cluster (zero flag plus offset), "write -z -u" may drop it; both over
# data, over nothing, and partial clusters; then discards.
for compat in 0.10 1.1; do
  img=zero-$compat.qcow2
  qemu-img create -q -f qcow2 -o compat=$compat,cluster_size=65536 "$img" 32M
  qio "$img" "write -P 0x11 0 4M" \
             "write -z 64k 64k" \
             "write -z -u 256k 128k" \
             "write -z 1M 4k" \
             "write -z 8M 1M" \
             "write -z -u 12M 1M" \
             "discard 2M 192k" \
             "discard 3M 4k" \
             "write -P 0x12 31M 1M" \
             "discard 31M 512k"
  check_image "$img"
done

# Preallocation: metadata (clusters allocated, file sparse), falloc and
# full; then some data written over part of it.
for prealloc in metadata falloc full; do
  for compat in 0.10 1.1; do
    img=prealloc-$prealloc-$compat.qcow2
    qemu-img create -q -f qcow2 -o compat=$compat,preallocation=$prealloc "$img" 8M
    check_image "$img"
    qio "$img" "write -P 0x21 1M 64k" "write -z 2M 64k" "discard 4M 1M"
    check_image "$img"
  done
done

# Extended L2 entries: 32 subclusters per cluster (2 KiB at 64 KiB
# clusters, 64 KiB at 2 MiB), data, zero and unallocated subclusters
# mixed within one cluster.
for cs in 65536 2097152; do
  img=xl2-$cs.qcow2
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs "$img" 64M
  sc=$(( cs / 32 ))
  qio "$img" "write -P 0x31 0 4k" \
             "write -z $(( 2 * sc )) 4k" \
             "write -P 0x32 $(( 8 * sc )) 4k" \
             "write -z -u $(( 12 * sc )) $sc" \
             "write -P 0x33 $(( cs - 4096 )) 4k" \
             "write -P 0x34 $(( 2 * cs )) $cs" \
             "write -z $(( 2 * cs + 3 * sc )) $(( 2 * sc ))" \
             "discard $(( 2 * cs + 10 * sc )) $sc" \
             "write -z $(( 4 * cs )) $(( cs / 2 ))" \
             "write -P 0x35 $(( 64 * 1024 * 1024 - 4096 )) 4k"
  # qemu fills the rest of a written subcluster with zeros that may stay
  # unwritten extents in the image file, and once those are written back
  # qemu-img map reports them "zero" from the file system, not from the
  # image.  A fully allocated copy keeps the comparison about the image.
  cp --sparse=never "$img" "$img.full"
  mv "$img.full" "$img"
  check_image "$img"
done

# Extended L2 with compressed clusters next to subcluster-allocated ones.
img=xl2-compressed.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=65536 "$img" 4M
qio "$img" "write -c -P 0x41 0 64k" "write -P 0x42 64k 2k" "write -c -P 0x43 128k 64k" \
           "write -P 0x44 130k 2k"
check_image "$img"

# Lazy refcounts: qemu does not update refcounts while the image is open
# and only marks it dirty; the reader must not depend on refcounts.
img=lazy.qcow2
qemu-img create -q -f qcow2 -o lazy_refcounts=on "$img" 16M
qio "$img" "write -P 0x51 0 1M" "write -z 512k 64k" "write -P 0x52 15M 1M"
check_image "$img"

# The dirty bit (incompatible bit 0 at byte 72) set, as after a crash
# with lazy refcounts: refcounts may be stale, the data is still good.
cp lazy.qcow2 dirty.qcow2
set_header_bit dirty.qcow2 72 0
qemu-img info dirty.qcow2 | grep -q "lazy refcounts: true" || fail "test setup: lazy refcounts"
check_image dirty.qcow2
# A file longer than its refcounts account for, as after a crash while
# clusters were being allocated, reads the same.
cp dirty.qcow2 dirty-leak.qcow2
truncate -s +65536 dirty-leak.qcow2
check_image dirty-leak.qcow2
