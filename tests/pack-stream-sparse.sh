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

# The writer's pipe is emptied with splice(2) into a pipe of sparsecow's
# own, and the copy into memory made from there, so that the writer
# does not wait on the pipe while every byte is copied.
if command -v strace >/dev/null 2>&1; then
  rm -f s.qcow2
  # LeakSanitizer cannot run under ptrace.
  cat src | ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
    strace -f -qq -e trace=splice -o trace "$SPARSECOW" pack -q - s.qcow2 || fail "pack under strace failed"
  grep -Eq '^[0-9]+ +splice\(0, NULL, [0-9]+, NULL, [0-9]+, 0\) = [1-9]' trace ||
    fail "standard input was not moved with splice"
  qemu-img compare -q src s.qcow2 || fail "spliced stream: image differs"
else
  echo "strace not found: splice of standard input not checked"
fi

# Writes of any size: pages the writer filled in many small writes,
# and a last one it did not fill.
printf '\x5a' | dd of=src bs=1 seek=$((5 * MiB + 3)) conv=notrunc status=none
printf '\xa5' | dd of=src bs=1 seek=$((size - 2)) conv=notrunc status=none
rm -f s.qcow2
dd if=src bs=777 status=none | sparsecow pack -q - s.qcow2 ||
  fail "pack from 777-byte writes failed"
qemu-img compare -q src s.qcow2 || fail "777-byte writes: image differs"

# A real file system through a pipe, as e2image -r writes it.
if command -v e2image >/dev/null 2>&1 && command -v mke2fs >/dev/null 2>&1
then
  mkdir tree
  head -c $((3 * MiB)) /dev/urandom > tree/a
  cp src tree/b
  printf 'small\n' > tree/c
  truncate -s 256M fs.img
  mke2fs -q -F -t ext4 -d tree fs.img
  e2image -r fs.img fs.raw
  rm -f s.qcow2
  e2image -r fs.img - | sparsecow pack -q - s.qcow2 ||
    fail "pack of e2image -r from a pipe failed"
  qemu-img compare -q fs.raw s.qcow2 || fail "e2image -r: image differs"
else
  echo "e2image or mke2fs not found: file system stream not checked"
fi
