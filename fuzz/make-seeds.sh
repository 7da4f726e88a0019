#!/usr/bin/env bash
# Make the seed corpus of the fuzz targets: small qcow2 images written
# by qemu-img and qemu-io, one or more per feature of the format, and
# one written by sparsecow pack (tables before data, as a stream has
# them).  Usage: make-seeds.sh DIR [SPARSECOW]
#
# Each image holds a few clusters of patterned data, zero clusters and
# holes, so that mutations start from every kind of L2 entry.  Virtual
# sizes are small: an input is read whole for every run.
set -euo pipefail

out=$(mkdir -p "$1" && cd "$1" && pwd)
sparsecow=${2:+$(cd "$(dirname "$2")" && pwd)/$(basename "$2")}
for p in qemu-img qemu-io; do
  command -v "$p" >/dev/null 2>&1 || {
    echo "make-seeds.sh: $p not found: no seed corpus" >&2; exit 77; }
done

work=$(mktemp -d "${TMPDIR:-/var/tmp}/sparsecow-seeds.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

# create NAME SIZE OPTIONS: a new image.
create () { qemu-img create -q -f qcow2 -o "$3" "$1" "$2"; }
# fill NAME CLUSTER: data, a compressed cluster, zeros over data, a
# zero cluster in a hole, and data in a second L2 table's range where
# the image has one.
fill () {
  local img=$1 cs=$2
  qemu-io -f qcow2 -c "write -P 0x11 0 $cs" -c "write -P 0x22 $((3 * cs)) $((2 * cs))" \
    -c "write -c -P 0x33 $((6 * cs)) $cs" -c "write -z $((3 * cs)) $cs" \
    -c "write -z $((9 * cs)) $cs" "$img" >/dev/null
}

create v3-64k.qcow2 4M cluster_size=64k
fill v3-64k.qcow2 65536

create v2.qcow2 4M compat=0.10,cluster_size=4k
qemu-io -f qcow2 -c "write -P 0x44 0 8k" -c "write -c -P 0x55 64k 4k" \
  -c "write -z 128k 4k" v2.qcow2 >/dev/null

create c512.qcow2 256k cluster_size=512
fill c512.qcow2 512

create c2m.qcow2 8M cluster_size=2M
qemu-io -f qcow2 -c "write -P 0x66 0 64k" -c "write -c -P 0x77 2M 2M" \
  c2m.qcow2 >/dev/null

create deflate.qcow2 1M cluster_size=4k
qemu-io -f qcow2 -c "write -c -P 0x12 0 16k" -c "write -c 32k 4k" \
  -c "write -P 0x13 64k 4k" deflate.qcow2 >/dev/null

create zstd.qcow2 1M cluster_size=4k,compression_type=zstd
qemu-io -f qcow2 -c "write -c -P 0x14 0 16k" -c "write -P 0x15 64k 4k" \
  zstd.qcow2 >/dev/null

create extl2.qcow2 2M cluster_size=32k,extended_l2=on
qemu-io -f qcow2 -c "write -P 0x16 0 1k" -c "write -P 0x17 40k 3k" \
  -c "write -z 100k 2k" -c "write -c -P 0x18 256k 32k" extl2.qcow2 >/dev/null

create refcount1.qcow2 1M cluster_size=4k,refcount_bits=1
qemu-io -f qcow2 -c "write -P 0x19 0 8k" refcount1.qcow2 >/dev/null
create refcount64.qcow2 1M cluster_size=4k,refcount_bits=64,lazy_refcounts=on
qemu-io -f qcow2 -c "write -P 0x1a 4k 8k" refcount64.qcow2 >/dev/null

# Snapshots: shared clusters (refcount 2), a snapshot table, an old L1.
create snap.qcow2 1M cluster_size=4k
qemu-io -f qcow2 -c "write -P 0x21 0 16k" -c "write -c -P 0x23 64k 4k" \
  snap.qcow2 >/dev/null
qemu-img snapshot -c first snap.qcow2
qemu-io -f qcow2 -c "write -P 0x24 4k 4k" snap.qcow2 >/dev/null
qemu-img snapshot -c second snap.qcow2

# Persistent bitmaps: the bitmaps extension, a directory, bitmap tables.
create bitmap.qcow2 1M cluster_size=4k
qemu-img bitmap --add bitmap.qcow2 b0
qemu-img bitmap --add --granularity 8k bitmap.qcow2 b1
qemu-io -f qcow2 -c "write -P 0x25 0 12k" bitmap.qcow2 >/dev/null
qemu-img bitmap --disable bitmap.qcow2 b1

# A backing file name and format (the targets refuse to open it, which
# is what a fuzzed name must come to), over a base that exists here.
create base.qcow2 1M cluster_size=4k
qemu-io -f qcow2 -c "write -P 0x26 0 64k" base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 \
  backing.qcow2 1M
qemu-io -f qcow2 -c "write -P 0x27 4k 4k" backing.qcow2 >/dev/null

# An external data file (raw and not).
create datafile.qcow2 1M cluster_size=4k,data_file=datafile.raw
qemu-io -f qcow2 -c "write -P 0x28 0 8k" datafile.qcow2 >/dev/null
create datafile-raw.qcow2 1M cluster_size=4k,data_file=datafile2.raw,data_file_raw=on
qemu-io -f qcow2 -c "write -P 0x29 0 8k" datafile-raw.qcow2 >/dev/null

# Small and empty images; preallocated metadata.
create empty.qcow2 0 cluster_size=512
create tiny.qcow2 64k cluster_size=4k
qemu-io -f qcow2 -c "write -P 0x2a 0 512" tiny.qcow2 >/dev/null
create prealloc.qcow2 256k cluster_size=4k,preallocation=metadata

# A dirty image (an L2 entry whose refcount was never written), and one
# written by qemu-img convert with compression (tables after data).
create dirty.qcow2 1M cluster_size=4k,lazy_refcounts=on
bash -c 'qemu-io -f qcow2 -c "write -P 0x2b 0 4k" -c "sigraise 9" \
  dirty.qcow2; :' >/dev/null 2>&1
qemu-img convert -c -O qcow2 -o cluster_size=4k v3-64k.qcow2 converted.qcow2

# sparsecow's own layout: metadata first, compressed data after.
if [ -n "$sparsecow" ] && [ -x "$sparsecow" ]; then
  qemu-img convert -O raw v3-64k.qcow2 raw.img
  "$sparsecow" pack -q -c -o cluster_size=4k raw.img packed.qcow2
  "$sparsecow" pack -q -c zstd -o cluster_size=16k raw.img packed-zstd.qcow2
fi

for f in *.qcow2; do
  cp "$f" "$out/$f"
done
