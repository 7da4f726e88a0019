#!/bin/bash
# pack: option parsing, and that each option reaches the image.
. "$srcdir/functions.sh"
. "$srcdir/pack-common.sh"

truncate -s 4M "$tmp/src"
{ yes "some text" || :; } | head -c 1M |
  dd of="$tmp/src" bs=1M seek=1 conv=notrunc status=none
img=$tmp/img.qcow2

# Values out of range are usage errors naming the option; nothing is
# created.
expect_fail "cluster-size" sparsecow pack --cluster-size 1000 "$tmp/src" "$img"
expect_fail "cluster-size" sparsecow pack --cluster-size 256 "$tmp/src" "$img"
expect_fail "cluster-size" sparsecow pack --cluster-size 4M "$tmp/src" "$img"
expect_fail "refcount-bits" sparsecow pack --refcount-bits 3 "$tmp/src" "$img"
expect_fail "refcount-bits" sparsecow pack --refcount-bits 128 "$tmp/src" "$img"
expect_fail "16-bit" sparsecow pack --compat=0.10 --refcount-bits 1 "$tmp/src" "$img"
expect_fail "zstd.*1.1" sparsecow pack --compat=0.10 -c zstd "$tmp/src" "$img"
expect_fail "compat" sparsecow pack --compat=2 "$tmp/src" "$img"
expect_fail "compress" sparsecow pack --compress=lzo "$tmp/src" "$img"
expect_fail "map" sparsecow pack --map=bogus "$tmp/src" "$img"
expect_fail "level" sparsecow pack -c --level 0 "$tmp/src" "$img"
expect_fail "level" sparsecow pack -c deflate --level 12 "$tmp/src" "$img"
expect_fail "-S" sparsecow pack -S foo "$tmp/src" "$img"
expect_fail "SOURCE and TARGET" sparsecow pack "$tmp/src"
[ ! -e "$img" ] || fail "an image was created by a failed command"

# Size suffixes, "-c zstd" with a space, every --map method.
sparsecow pack -q --cluster-size 4k -c zstd "$tmp/src" "$img"
check_image "$tmp/src" "$img" 4096 1.1 zstd 16
for map in seek fiemap none; do
  rm -f "$img"
  sparsecow pack -q --map=$map -c "$tmp/src" "$img"
  check_image "$tmp/src" "$img" 65536 1.1 deflate 16
done
rm -f "$img"
sparsecow pack -q --compress=deflate --level 1 "$tmp/src" "$img"
check_image "$tmp/src" "$img" 65536 1.1 deflate 16

# --progress=json: JSON lines on stderr, the last one complete.
rm -f "$img"
sparsecow pack --progress=json -c "$tmp/src" "$img" 2>"$tmp/progress"
jq -e -s 'length > 0 and (last | .done == .total)
           and ([.[].percent] | . == sort)' "$tmp/progress" >/dev/null ||
  fail "progress: $(cat "$tmp/progress")"
judge_progress "$tmp/progress"
# ... and never into an image written to standard output.
sparsecow pack --progress=json "$tmp/src" - >"$tmp/stdout.qcow2" 2>/dev/null
qemu-img check -q "$tmp/stdout.qcow2"
qemu-img compare -q -f raw -F qcow2 "$tmp/src" "$tmp/stdout.qcow2"

# -h prints the usage and succeeds.
sparsecow pack -h | grep -q "^Usage: .* pack" || fail "pack -h"

# A source only partly in memory: without compression the cached part
# is probed for zeros and the rest read by the pipeline.  The image is
# the same either way (dropping the page cache needs root).
if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then
  MiB=$((1024 * 1024))
  truncate -s $((64 * MiB)) "$tmp/half"
  head -c $((20 * MiB)) /dev/urandom |
    dd of="$tmp/half" bs=1M seek=2 conv=notrunc status=none
  dd if=/dev/zero of="$tmp/half" bs=1M seek=30 count=4 conv=notrunc status=none
  head -c $((8 * MiB)) /dev/urandom |
    dd of="$tmp/half" bs=1M seek=40 conv=notrunc status=none
  sparsecow pack "$tmp/half" "$tmp/warm.qcow2"
  sync
  echo 1 >/proc/sys/vm/drop_caches
  head -c $((12 * MiB)) "$tmp/half" >/dev/null
  sparsecow pack --progress=json "$tmp/half" "$tmp/cold.qcow2" 2>"$tmp/half.json"
  cmp "$tmp/warm.qcow2" "$tmp/cold.qcow2" ||
    fail "a partly cached source gives a different image"
  qemu-img compare -q -f raw -F qcow2 "$tmp/half" "$tmp/cold.qcow2" ||
    fail "partly cached source: image differs"
  jq -e -s 'length > 0 and (last | .done == .total)
            and ([.[].percent] | . == sort)' "$tmp/half.json" >/dev/null ||
    fail "partly cached source: progress $(cat "$tmp/half.json")"
  judge_progress "$tmp/half.json"
fi
