#!/bin/bash
# pack: the full matrix of cluster sizes, versions, codecs and refcount
# widths on incompressible and compressible data.
. "$srcdir/functions.sh"
. "$srcdir/pack-common.sh"

truncate -s 4M "$tmp/random"
head -c 2M /dev/urandom | dd of="$tmp/random" bs=1M seek=1 conv=notrunc status=none

{ yes "compressible line of text, repeated" || :; } | head -c 2M >"$tmp/text"

for src in random text; do
  full_matrix "$tmp/$src"
done

# Compression really happens on text, and falls back on random data.
for codec in deflate zstd; do
  rm -f "$tmp/t.qcow2" "$tmp/r.qcow2"
  sparsecow pack -q -c $codec "$tmp/text" "$tmp/t.qcow2"
  sparsecow pack -q -c $codec "$tmp/random" "$tmp/r.qcow2"
  [ "$(stat -c %s "$tmp/t.qcow2")" -lt $((512 * 1024)) ] ||
    fail "$codec: text packed to $(stat -c %s "$tmp/t.qcow2") bytes"
  [ "$(stat -c %s "$tmp/r.qcow2")" -ge $((2 * 1024 * 1024)) ] ||
    fail "$codec: random data packed to $(stat -c %s "$tmp/r.qcow2") bytes"
  check_image "$tmp/random" "$tmp/r.qcow2" 65536 1.1 $codec 16
done
