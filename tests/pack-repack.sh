#!/bin/bash
# pack with a qcow2 source re-packs its guest content, as qemu-img
# convert -O qcow2 does: compressed (deflate, zstd), extended L2, backing
# chains (flattened), an external data file, metadata preallocation, an
# internal snapshot, version 2, 512 B and 2 MiB clusters, a 16 TiB image
# holding 2 MiB, and e2image's own qcow2.  Each source is packed with and
# without -c; qemu-img checks every output clean, compares it identical
# to its source, and reports no backing file.  Other image formats
# (vmdk, vhdx, vdi, VHD, qed, LUKS) are refused with a hint and leave
# nothing behind; --source-format=raw packs any file's bytes, and
# --source-format=qcow2 on raw data is an error.
. "$srcdir/functions.sh"
requires qemu-img qemu-io jq cmp mkfifo timeout

MiB=$((1024 * 1024))
cd "$tmp"

# qemu-io on an image, failing the test on any error it reports.
qio () {
  local img=$1 out args=() c; shift
  for c in "$@"; do args+=(-c "$c"); done
  out=$(qemu-io -f qcow2 "${args[@]}" "$img" 2>&1) ||
    fail "qemu-io $img: $out"
  if grep -qi "error\|failed" <<<"$out"; then fail "qemu-io $img: $out"; fi
}

# repack SRC OUT [PACK OPTIONS]: pack, then qemu-img is the judge.
repack () {
  local src=$1 out=$2 what info; shift 2
  what="pack $* $src"
  rm -f "$out"
  sparsecow pack -q "$@" "$src" "$out" || fail "$what failed"
  qemu-img check -q "$out" >/dev/null 2>&1 || {
    qemu-img check "$out" >&2 || :; fail "qemu-img check: $what"; }
  qemu-img compare -q "$src" "$out" || fail "qemu-img compare: $what"
  info=$(qemu-img info --output=json "$out")
  [ "$(jq -r '."backing-filename" // "none"' <<<"$info")" = none ] ||
    fail "$what: the output has a backing file"
  [ "$(jq -r '."format-specific".data."data-file" // "none"' <<<"$info")" \
    = none ] || fail "$what: the output has an external data file"
}

# repack_both SRC: without and with compression.
repack_both () {
  local src=$1
  repack "$src" "${src%.qcow2}.out.qcow2"
  repack "$src" "${src%.qcow2}.outc.qcow2" -c
  rm -f "${src%.qcow2}.out.qcow2" "${src%.qcow2}.outc.qcow2"
}

# The content shared by most sources: text, random data, zeros written
# out, a hole, and a last cluster of random data.
truncate -s $((24 * MiB)) base.raw
seq 1 300000 | dd of=base.raw conv=notrunc status=none
head -c $((3 * MiB)) /dev/urandom |
  dd of=base.raw bs=1M seek=5 conv=notrunc status=none
dd if=/dev/zero of=base.raw bs=1M seek=9 count=2 conv=notrunc status=none
head -c 65536 /dev/urandom |
  dd of=base.raw bs=64k seek=$((24 * 16 - 1)) conv=notrunc status=none

# Compressed sources, deflate and zstd, re-packed uncompressed,
# deflate, zstd and with a different cluster size.
qemu-img convert -q -c -f raw -O qcow2 base.raw deflate.qcow2
qemu-img convert -q -c -f raw -O qcow2 -o compression_type=zstd \
  base.raw zstd.qcow2
[ "$(qemu-img info --output=json zstd.qcow2 |
     jq -r '."format-specific".data."compression-type"')" = zstd ] ||
  fail "qemu-img did not make a zstd image"
repack_both deflate.qcow2
repack_both zstd.qcow2
repack deflate.qcow2 out.qcow2 -c zstd
[ "$(qemu-img info --output=json out.qcow2 |
     jq -r '."format-specific".data."compression-type"')" = zstd ] ||
  fail "pack -c zstd of deflate.qcow2: not zstd"
repack zstd.qcow2 out.qcow2 -o cluster_size=4096
[ "$(qemu-img info --output=json out.qcow2 | jq '."cluster-size"')" = 4096 ] ||
  fail "pack -o cluster_size=4096: other cluster size"
repack zstd.qcow2 out.qcow2 -c -o cluster_size=1M,compression_type=zstd -j 3

# Extended L2: allocated, zero and unallocated subclusters in one
# cluster, and a compressed cluster.
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k xl2.qcow2 16M
qio xl2.qcow2 "write -P 0xe1 2k 2k" "write -z 8k 2k" \
  "write -P 0xe2 64k 64k" "write -z 70k 4k" "discard 100k 2k" \
  "write -c -P 0xe3 1M 64k" "write -P 0xe4 $((16 * MiB - 2048)) 2k"
repack_both xl2.qcow2

# A backing chain of three levels over a raw base: each layer writes,
# zeroes (hiding data below) and discards something; one layer holds a
# compressed cluster.  The chain is given by a path from elsewhere, so
# backing names are resolved against the image's directory.
mkdir chain
qemu-img create -q -f raw chain/base.raw 32M
qemu-io -f raw -c "write -P 0xa0 0 32M" chain/base.raw >/dev/null
prev=base.raw fmt=raw
for i in 1 2 3; do
  qemu-img create -q -f qcow2 -b "$prev" -F $fmt "chain/l$i.qcow2"
  qio "chain/l$i.qcow2" "write -P $((0xa0 + i)) $((i * MiB)) 64k" \
    "write -z $((i * 2 * MiB)) 128k" "discard $((i * 3 * 65536)) 64k" \
    "write -P $((0xb0 + i)) $((i * 4096)) 512" \
    "write -c -P $((0xc0 + i)) $((24 * MiB + i * 65536)) 64k"
  prev=l$i.qcow2 fmt=qcow2
done
repack_both chain/l3.qcow2
repack chain/l2.qcow2 out.qcow2 -c zstd -j 1

# The backing chain is the source: a missing backing file is an error
# that leaves nothing behind.
mkdir lonely
cp chain/l1.qcow2 lonely/orphan.qcow2
rm -f out.qcow2
expect_fail "orphan\.qcow2: .*base\.raw" \
  sparsecow pack lonely/orphan.qcow2 out.qcow2
[ ! -e out.qcow2 ] || fail "a target was left after a missing backing file"

# An external data file, raw and not.
for raw in on off; do
  qemu-img create -q -f qcow2 \
    -o data_file=ext-$raw.data,data_file_raw=$raw ext-$raw.qcow2 16M
  qio ext-$raw.qcow2 "write -P 0xd1 0 1M" "write -z 4M 1M" \
    "write -P 0xd2 $((15 * MiB)) 512"
  repack_both ext-$raw.qcow2
done

# Metadata preallocation (L2 entries pointing at holes of the file,
# which read as zeros) and an internal snapshot (the active layer is
# packed).
qemu-img create -q -f qcow2 -o preallocation=metadata prealloc.qcow2 16M
qio prealloc.qcow2 "write -P 0x61 1M 1M"
repack_both prealloc.qcow2
cp deflate.qcow2 snap.qcow2
qemu-img snapshot -c before snap.qcow2
qio snap.qcow2 "write -P 0x62 0 2M" "write -z 6M 1M"
repack_both snap.qcow2

# Version 2, 512-byte and 2 MiB clusters.
qemu-img convert -q -f raw -O qcow2 -o compat=0.10 base.raw v2.qcow2
repack_both v2.qcow2
qemu-img convert -q -f raw -O qcow2 -o cluster_size=512 base.raw c512.qcow2
repack_both c512.qcow2
repack c512.qcow2 out.qcow2 -o cluster_size=2M
qemu-img convert -q -f raw -O qcow2 -o cluster_size=2M base.raw c2m.qcow2
qio c2m.qcow2 "write -z 5M 1M" "write -P 0x5a 20M 4k"
repack_both c2m.qcow2
repack c2m.qcow2 out.qcow2 -o cluster_size=512,compat=0.10

# e2image -Q of a small ext4 file system: version 2, 4 KiB clusters,
# written by e2fsprogs, not qemu.
if command -v mke2fs >/dev/null && command -v e2image >/dev/null; then
  mkdir files
  for i in $(seq 1 40); do
    head -c $((i * 5000)) /dev/urandom > files/f$i
  done
  seq 1 50000 > files/numbers
  mke2fs -q -F -t ext4 -d files fs.img 32M >/dev/null
  e2image -Q fs.img e2.qcow2 2>/dev/null
  repack_both e2.qcow2
  repack e2.qcow2 out.qcow2 -c zstd -o cluster_size=64k
else
  echo "$0: no mke2fs or e2image: e2image source skipped"
fi

# Cost follows data: 16 TiB of guest space holding 2 MiB, with a
# zeroed GiB, re-packs at once.
qemu-img create -q -f qcow2 huge.qcow2 16T
qio huge.qcow2 "write -P 0x71 0 1M" "write -P 0x72 10T 1M" "write -z 12T 1G"
rm -f out.qcow2
timeout 60 $SC_VALGRIND "$SPARSECOW" pack -q huge.qcow2 out.qcow2 ||
  fail "re-pack of a 16 TiB image holding 2 MiB failed or took over 60 s"
qemu-img check -q out.qcow2 || fail "qemu-img check: huge.qcow2"
[ "$(stat -c %s out.qcow2)" -lt $((16 * MiB)) ] ||
  fail "huge.qcow2 re-packed into $(stat -c %s out.qcow2) bytes"
qemu-img compare -q huge.qcow2 out.qcow2 || fail "qemu-img compare: huge.qcow2"

# Announced on stderr, silent with -q; progress reaches 100%.
rm -f out.qcow2
sparsecow pack deflate.qcow2 out.qcow2 2>err
grep -q "^sparsecow: deflate\.qcow2: qcow2 image" err ||
  fail "re-pack not announced: $(cat err)"
rm -f out.qcow2
sparsecow pack -q deflate.qcow2 out.qcow2 2>err
[ ! -s err ] || fail "pack -q printed: $(cat err)"
rm -f out.qcow2
sparsecow pack -q --progress=json chain/l3.qcow2 out.qcow2 2>progress
[ "$(tail -n 1 progress | jq .percent)" = 100 ] ||
  fail "progress of a re-pack ends at $(tail -n 1 progress)"
judge_progress progress

# --source-format=raw packs the qcow2 file's own bytes.
rm -f out.qcow2
sparsecow pack -q --source-format=raw deflate.qcow2 out.qcow2
qemu-img check -q out.qcow2 || fail "qemu-img check: --source-format=raw"
qemu-img compare -q -f raw -F qcow2 deflate.qcow2 out.qcow2 ||
  fail "--source-format=raw: guest content is not the file's bytes"

# --source-format=qcow2 on raw data is an error.
rm -f out.qcow2
expect_fail "base\.raw: not a qcow2 image" \
  sparsecow pack --source-format=qcow2 base.raw out.qcow2
[ ! -e out.qcow2 ] || fail "a target was left by --source-format=qcow2"
expect_fail "source-format: expected raw or qcow2" \
  sparsecow pack --source-format=vmdk base.raw out.qcow2
expect_fail "map applies to raw sources" \
  sparsecow pack --map=none deflate.qcow2 out.qcow2

# Other image formats are refused, naming the format and a way out.
# Each is made by qemu-img (a format this qemu-img cannot create is
# skipped) and must be seen by qemu-img as that format.
refused=()
make_image () {
  local img=$1 fmt=$2; shift 2
  if qemu-img create -q -f "$fmt" "$@" "$img" 16M >/dev/null 2>&1; then
    refused+=("$img")
  else
    rm -f "$img"
    echo "$0: qemu-img cannot create $fmt images here: $img skipped"
  fi
}
make_image disk.vmdk vmdk
make_image flat.vmdk vmdk -o subformat=monolithicFlat
make_image disk.vhdx vhdx
make_image disk.vdi vdi
make_image disk.vhd vpc
make_image fixed.vhd vpc -o subformat=fixed
make_image disk.qed qed
make_image disk.luks luks --object secret,id=sec0,data=sparsecow \
  -o key-secret=sec0,hash-alg=sha512
for img in "${refused[@]}"; do
  case $img in
    *.vmdk) name=vmdk ;;
    *.vhd) name=VHD ;;
    *.luks) name=LUKS ;;
    *) name=${img##*.} ;;
  esac
  # qemu-img's probe does not look at the footer of a fixed VHD.
  [ "$img" = fixed.vhd ] ||
    [ "$(qemu-img info --output=json "$img" | jq -r .format)" != raw ] ||
    fail "qemu-img does not see $img as an image"
  rm -f out.qcow2
  if [ $name = LUKS ]; then
    pattern="^sparsecow: $img: a LUKS encrypted volume, not raw data; "
    pattern+=".*cryptsetup open.*--source-format=raw"
  else
    pattern="^sparsecow: $img: a $name (image|descriptor), not raw data; "
    pattern+=".*\(sparsecow pack -- \[ qemu-nbd -r -f [a-z]+ $img \] "
    pattern+="[^ ]+\.qcow2\).*--source-format=raw"
  fi
  expect_fail "$pattern" sparsecow pack "$img" out.qcow2
  [ ! -e out.qcow2 ] || fail "a target was left by refusing $img"
  # The command the message gives works, and packs the guest content.
  if [ $name != LUKS ] && command -v qemu-nbd >/dev/null; then
    hint=$(sed -n 's/.*(\(sparsecow pack -- .*\.qcow2\)).*/\1/p' "$tmp/.stderr")
    driver=$(sed -n 's/.* -f \([a-z]*\) .*/\1/p' <<<"$hint")
    rm -rf hint && mkdir hint && ln -s "$PWD"/* hint/ && rm -f hint/*.qcow2
    (cd hint && eval "${hint/sparsecow pack/sparsecow pack -q}") || fail "the hint for $img failed: $hint"
    qemu-img compare -q -f "$driver" "$img" hint/*.qcow2 ||
      fail "the hint for $img packed something else: $hint"
    rm -rf hint
  fi
done
# The same bytes on standard input are refused too.
if [ -f disk.vmdk ]; then
  expect_fail "standard input holds a vmdk image" \
    sparsecow pack - out.qcow2 <disk.vmdk
fi
# Standard input is "stdin" in the message, redirected or piped.
expect_fail "^sparsecow: stdin: standard input holds a qcow2 image" \
  sparsecow pack - out.qcow2 <deflate.qcow2
expect_fail "^sparsecow: stdin: .*qcow2 image" \
  sh -c 'cat deflate.qcow2 | "$@" pack - out.qcow2' sh "$SPARSECOW"
# A fixed VHD is raw data with a footer: qemu-img reads it as vpc.
if [ -f fixed.vhd ]; then
  vsize=$(qemu-img info --output=json -f vpc fixed.vhd |
    jq '."virtual-size"')
  [ "$vsize" -gt 0 ] || fail "qemu-img cannot read fixed.vhd as vpc"
fi

# Raw data that happens to start with a magic packs with
# --source-format=raw.
cp base.raw magic.raw
printf 'KDMV' | dd of=magic.raw conv=notrunc status=none
expect_fail "magic\.raw: a vmdk image" sparsecow pack magic.raw out.qcow2
repack_raw () {
  rm -f out.qcow2
  sparsecow pack -q --source-format=raw "$1" out.qcow2 ||
    fail "pack --source-format=raw $1 failed"
  qemu-img check -q out.qcow2 || fail "qemu-img check: raw $1"
  qemu-img compare -q -f raw -F qcow2 "$1" out.qcow2 ||
    fail "pack --source-format=raw $1 differs"
}
repack_raw magic.raw
[ ! -f disk.vhdx ] || repack_raw disk.vhdx

# A FIFO or a pipe is not probed in advance, but a qcow2 image in one is
# refused when its first bytes arrive, and leaves no target; with
# --source-format=raw its bytes are packed.
mkfifo fifo
# The writer gives up if pack never opens the FIFO, so that a failure
# cannot hang the test.
timeout 60 sh -c 'cat deflate.qcow2 > fifo 2>/dev/null' &
rm -f out.qcow2
expect_fail "fifo: a qcow2 image, not raw data; .*--source-format=raw" \
  sparsecow pack -q fifo out.qcow2
wait $! || :
[ ! -e out.qcow2 ] || fail "a target was left for a qcow2 image in a FIFO"
expect_fail "stdin: a qcow2 image, not raw data" \
  sh -c "cat deflate.qcow2 | $SC_VALGRIND $SPARSECOW pack - out.qcow2"
[ ! -e out.qcow2 ] || fail "a target was left for a qcow2 image in a pipe"
timeout 60 sh -c 'cat deflate.qcow2 > fifo' &
sparsecow pack -q --source-format=raw fifo out.qcow2 ||
  fail "pack --source-format=raw from a FIFO failed"
wait $! || fail "nothing read the FIFO"
qemu-img compare -q -f raw -F qcow2 deflate.qcow2 out.qcow2 ||
  fail "a qcow2 file in a FIFO is not packed as its bytes"
expect_fail "needs a file or a block device" \
  sparsecow pack --source-format=qcow2 fifo out2.qcow2
[ ! -e out2.qcow2 ] || fail "a target was left for a FIFO"

exit 0
