#!/bin/bash
# A long stream of zeros with one non-zero byte: at a random offset, at
# the last byte, at the first, on either side of where the reader's
# runs of zeros are cut (every 64 MiB) and of its 128 KiB reads, and no
# non-zero byte at all.  Each stream is 160 MiB and 777 bytes, so it
# ends in a partial cluster and a partial sector.  qemu-img compares
# each image with the bytes that went in and maps exactly the cluster
# that holds the byte as data; packed from the file instead of a pipe,
# the image is the same, byte for byte (the digest of -c included).
. "$srcdir/functions.sh"
. "$srcdir/pack-common.sh"
requires qemu-img jq cmp

cd "$tmp"
MiB=$((1024 * 1024))
size=$((160 * MiB + 777))
vsize=$(( (size + 511) / 512 * 512 ))

data_bytes () {
  qemu-img map --output=json "$1" |
    jq '[.[] | select(.data) | .length] | add // 0'
}

# A random offset, printed so that a failure can be repeated.
random=$(( ((RANDOM << 30) | (RANDOM << 15) | RANDOM) % size ))
echo "random offset: $random"

for at in "$random" $((size - 1)) 0 $((64 * MiB - 1)) $((64 * MiB)) \
          $((128 * 1024 - 1)) $((128 * 1024)) \
          $((3 * MiB + 5)) none; do
  rm -f src
  truncate -s "$size" src
  [ "$at" = none ] ||
    printf '\x5a' | dd of=src bs=1 seek="$at" conv=notrunc status=none

  for spec in "65536 none 0" "65536 deflate 0" "2097152 none 1" \
              "4096 zstd 3"; do
    set -- $spec
    cs=$1 codec=$2 threads=$3
    what="byte at $at, cluster $cs, $codec, -j $threads"
    opts=(--cluster-size "$cs")
    [ "$threads" = 0 ] || opts+=(-j "$threads")
    [ "$codec" = none ] || opts+=(-c "$codec")
    rm -f s.qcow2 f.qcow2
    cat src | sparsecow pack -q "${opts[@]}" - s.qcow2 ||
      fail "$what: pack from a pipe failed"
    check_image src s.qcow2 "$cs" 1.1 "$codec" 16
    want=0
    if [ "$at" != none ]; then
      start=$(( at / cs * cs ))
      want=$(( vsize - start < cs ? vsize - start : cs ))
    fi
    got=$(data_bytes s.qcow2)
    [ "$got" = "$want" ] ||
      fail "$what: $got bytes mapped as data, want $want"
    sparsecow pack -q "${opts[@]}" src f.qcow2
    cmp s.qcow2 f.qcow2 ||
      fail "$what: packed from the pipe and from the file differ"
  done
done
