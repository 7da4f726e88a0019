#!/bin/bash
# pack: the full matrix of cluster sizes, versions, codecs and refcount
# widths on sources whose difficulty is their shape: empty, all holes,
# data at both ends, sizes and extents not aligned to 512 bytes.
. "$srcdir/functions.sh"
. "$srcdir/pack-common.sh"

truncate -s 0 "$tmp/empty"
truncate -s 1G "$tmp/holes"

# Data in the first and the last cluster of every cluster size.
truncate -s 64M "$tmp/ends"
head -c 4096 /dev/urandom | dd of="$tmp/ends" conv=notrunc status=none
head -c 4096 /dev/urandom |
  dd of="$tmp/ends" bs=4096 seek=$((64 * 256 - 1)) conv=notrunc status=none

# Odd sizes and offsets: the last sector is partial.
truncate -s $((10 * 1024 * 1024 + 777)) "$tmp/unaligned"
head -c 1000 /dev/urandom |
  dd of="$tmp/unaligned" bs=1 seek=12345 conv=notrunc status=none
{ yes unaligned || :; } | head -c 70001 |
  dd of="$tmp/unaligned" bs=1 seek=$((3 * 1024 * 1024 + 3)) conv=notrunc status=none
head -c 900 /dev/urandom |
  dd of="$tmp/unaligned" bs=1 seek=$((10 * 1024 * 1024 - 123)) conv=notrunc status=none

for src in empty holes ends unaligned; do
  full_matrix "$tmp/$src"
done

# Nothing of an all-hole source is stored: only metadata.
sparsecow pack -q "$tmp/holes" "$tmp/holes.qcow2"
[ -z "$(data_ranges "$tmp/holes.qcow2")" ] || fail "holes: data stored"
[ "$(stat -c %s "$tmp/holes.qcow2")" -le $((1024 * 1024)) ] ||
  fail "holes: image of $(stat -c %s "$tmp/holes.qcow2") bytes"
