#!/usr/bin/env bash
# NBD sources: pack reads what qemu-nbd and nbdkit export (formats that
# only qemu reads, a backing chain, a server without block status), and
# unpack, info, map and check read a qcow2 image that a server serves as
# a file.  qemu-img compare, qemu-img check, nbdinfo and cmp judge.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io qemu-nbd nbdkit nbdinfo jq cmp python3

cd "$tmp"
size=$((64 * 1024 * 1024))

# Guest data: random bytes where offsets matter, a pattern, data that
# is all zero bytes, an unaligned tail, holes between.
qemu-img create -q -f raw src.raw $size
head -c $((3 * 1024 * 1024 + 4096)) /dev/urandom |
  dd of=src.raw bs=4096 seek=256 conv=notrunc status=none
qemu-io -f raw -c "write -P 0x5a 20M 1M" -c "write -P 0 30M 256k" \
  -c "write -P 0x77 $((size - 1536)) 1k" src.raw >/dev/null
head -c 100000 /dev/urandom | dd of=src.raw bs=1 seek=$((40 * 1024 * 1024 + 7)) \
  conv=notrunc status=none

check_image () {                # IMAGE REFERENCE [REF_FORMAT] - what it must equal
  qemu-img check -q "$1" || fail "$1: qemu-img check is not clean"
  qemu-img compare -q -F "${3:-raw}" "$1" "$2" ||
    fail "$1 differs from $2"
}

# ---- formats only qemu reads, through [ qemu-nbd ... ] ------------------
qemu-img convert -O vmdk src.raw src.vmdk
qemu-img convert -O vhdx src.raw src.vhdx
qemu-img convert -O vpc -o subformat=dynamic src.raw src.vpc
sparsecow pack -q -- [ qemu-nbd -r -f vmdk src.vmdk ] vmdk.qcow2 ||
  fail "pack from an exported vmdk failed"
check_image vmdk.qcow2 src.vmdk vmdk
qemu-img convert -O qcow2 src.vmdk vmdk-ref.qcow2
qemu-img compare -q vmdk.qcow2 vmdk-ref.qcow2 ||
  fail "pack of an exported vmdk differs from qemu-img convert"
sparsecow pack -q -c zstd -- [ qemu-nbd -r -f vhdx src.vhdx ] vhdx.qcow2 ||
  fail "pack -c zstd from an exported vhdx failed"
check_image vhdx.qcow2 src.vhdx vhdx
[ "$(qemu-img info --output=json vhdx.qcow2 |
     jq -r '."format-specific".data."compression-type"')" = zstd ] ||
  fail "pack -c zstd did not write a zstd image"
sparsecow pack -q -c -- [ qemu-nbd -r -f vpc src.vpc ] vpc.qcow2 ||
  fail "pack -c from an exported VHD failed"
check_image vpc.qcow2 src.vpc vpc

# The pack of a vmdk holds only the clusters with data: the export's
# block status was followed, not every byte read.
[ "$(qemu-img map --output=json vmdk.qcow2 | jq '[.[] | select(.data)] |
      map(.length) | add')" -le $((6 * 1024 * 1024)) ] ||
  fail "pack from NBD stored more than the data"

# Progress counts the data to move, not the export's size: the first
# total is at most twice the data (scan, then write), percentages only
# grow and end at 100.
sparsecow pack --progress=fd:3 -- [ qemu-nbd -r -f raw src.raw ] prog.qcow2 \
  3> progress.json || fail "pack --progress=json from NBD failed"
first_total=$(head -n 1 progress.json | jq .total)
[ "$first_total" -le $((2 * 8 * 1024 * 1024)) ] ||
  fail "progress of pack from NBD counts more than the data: $first_total"
jq -s -e 'map(.percent) | . == sort and .[-1] == 100 and min >= 0' \
  progress.json >/dev/null || fail "progress of pack from NBD: $(cat progress.json)"
judge_progress progress.json

# ---- an export is read once ----------------------------------------------
# pack writes each cluster to its place in the image as it reads it: the
# bytes read add up to the data once (rounded to clusters, plus the look
# for an image's magic), not twice.  The zeros written at 30M are no
# cluster of the image, and the room left for metadata leaks nothing.
sparsecow pack -q -- [ nbdkit -r --filter=log file src.raw \
                       logfile="$tmp/read.log" ] once.qcow2 ||
  fail "pack from nbdkit with the log filter failed"
check_image once.qcow2 src.raw
read_bytes=$(python3 -c '
import re, sys
print(sum(int(m.group(1), 16) for line in open(sys.argv[1]) if " Read " in line
          for m in [re.search(r"count=0x([0-9a-f]+)", line)] if m))' read.log)
data_bytes=$(qemu-img map -f raw --output=json src.raw |
             jq '[.[] | select(.data)] | map(.length) | add')
[ "$read_bytes" -le $((data_bytes + 1024 * 1024)) ] ||
  fail "pack read $read_bytes bytes of an export holding $data_bytes"
[ "$(qemu-img map --output=json once.qcow2 | jq '[.[] | select(.data)] |
      map(.length) | add')" -le $((6 * 1024 * 1024)) ] ||
  fail "pack from NBD stored written zeros"
sparsecow pack -q -c -- [ nbdkit -r file src.raw ] once-c.qcow2 ||
  fail "pack -c from nbdkit failed"
check_image once-c.qcow2 src.raw

# ---- a backing chain, through a URI, with allocation depth --------------
qemu-img convert -q -O qcow2 src.raw base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-io -f qcow2 -c "write -P 0x99 1M 64k" -c "write -z 20M 512k" \
  -c "discard 40M 1M" top.qcow2 >/dev/null
nbd_serve chain qemu-nbd -r -A -f qcow2 top.qcow2
sparsecow pack -q "$nbd_uri" chain.qcow2 || fail "pack from an NBD URI failed"
check_image chain.qcow2 top.qcow2 qcow2
sparsecow pack -q -c -C 1 --requests 1 "$nbd_uri" chain1.qcow2 ||
  fail "pack from an NBD URI with one request in flight failed"
check_image chain1.qcow2 top.qcow2 qcow2
# map of an export is its block status, as nbdinfo reports it.
sparsecow map --output=json "$nbd_uri" > map.json || fail "map URI failed"
diff <(map_ranges < map.json) <(nbdinfo_ranges "$nbd_uri") ||
  fail "map of an NBD export differs from nbdinfo --map"

# An export whose size is no multiple of 512 is mapped to its last byte.
truncate -s 10486537 odd.raw
printf 'tail' | dd of=odd.raw bs=1 seek=10486000 conv=notrunc status=none
nbd_serve odd nbdkit -r file odd.raw
diff <(sparsecow map --output=json "$nbd_uri" | map_ranges) \
     <(nbdinfo_ranges "$nbd_uri") ||
  fail "map of an export of odd size differs from nbdinfo --map"

# ---- a server without block status: read whole, zeros found ------------
sparsecow pack -q -- [ nbdkit --filter=noextents file src.raw ] noext.qcow2 ||
  fail "pack from a server without block status failed"
check_image noext.qcow2 src.raw
[ "$(qemu-img map --output=json noext.qcow2 | jq '[.[] | select(.data)] |
      map(.length) | add')" -le $((6 * 1024 * 1024)) ] ||
  fail "pack from a server without block status stored zeros"

# ---- a qcow2 image served as a file: unpack, info, check, map ----------
qemu-img convert -q -c -O qcow2 src.raw img.qcow2
qemu-img convert -O raw img.qcow2 ref.raw
sparsecow unpack img.qcow2 file.raw || fail "unpack of the file failed"
sparsecow unpack -- [ nbdkit -r file img.qcow2 ] served.raw ||
  fail "unpack of a qcow2 image served by nbdkit failed"
cmp ref.raw served.raw || fail "unpack of a served image differs"
[ "$(data_map file.raw)" = "$(data_map served.raw)" ] ||
  fail "unpack of a served image is allocated differently from the file's"
nbd_serve img nbdkit -r file img.qcow2
sparsecow unpack "$nbd_uri" uri.raw || fail "unpack of a URI failed"
cmp ref.raw uri.raw || fail "unpack of a URI differs"
sparsecow info --output=json "$nbd_uri" > info.json || fail "info URI failed"
[ "$(jq '."virtual-size"' info.json)" = \
  "$(qemu-img info --output=json img.qcow2 | jq '."virtual-size"')" ] ||
  fail "info of a served image gives another virtual size"
sparsecow check "$nbd_uri" > check.out || fail "check of a served image failed"
grep -q "No errors were found" check.out || fail "check URI: $(cat check.out)"
diff <(sparsecow map --output=json "$nbd_uri" | map_ranges) \
     <(sparsecow map --output=json img.qcow2 | map_ranges) ||
  fail "map of a served image differs from map of the file"
# A served qcow2 image is re-packed by its guest content.
sparsecow pack -q -c zstd "$nbd_uri" repack.qcow2 ||
  fail "re-pack of a served image failed"
check_image repack.qcow2 ref.raw

# An image served from elsewhere may not name files here.
nbd_serve top nbdkit -r file top.qcow2
expect_fail "backing file.*not allowed" sparsecow unpack "$nbd_uri" never.raw
[ ! -e never.raw ] || fail "a refused unpack left a target"
# info shows it all the same, as qemu-img info over the export does,
# and says the backing file cannot be opened; data commands refuse it.
sparsecow info "$nbd_uri" >info.out 2>info.err ||
  { cat info.err >&2; fail "info of a served image with a backing file failed"; }
qemu-img info "$nbd_uri" >qinfo.out
for field in image "virtual size" "backing file" "backing file format"; do
  [ "$(grep "^$field:" info.out)" = "$(grep "^$field:" qinfo.out)" ] ||
    fail "info URI, $field: '$(grep "^$field:" info.out)'," \
         "qemu-img: '$(grep "^$field:" qinfo.out)'"
done
grep -q "backing file base.qcow2: cannot be opened over NBD" info.err ||
  fail "info URI does not say the backing file cannot be opened: $(cat info.err)"
sparsecow info --output=json "$nbd_uri" >info.json 2>/dev/null ||
  fail "info --output=json of a served image with a backing file failed"
qemu-img info --output=json "$nbd_uri" >qinfo.json
for key in filename backing-filename backing-filename-format \
           full-backing-filename virtual-size cluster-size; do
  [ "$(jq -c ".[\"$key\"]" info.json)" = "$(jq -c ".[\"$key\"]" qinfo.json)" ] ||
    fail "info --output=json URI, $key differs from qemu-img"
done
jq -e '.. | objects | select(has("backing-error"))' info.json >/dev/null ||
  fail "info --output=json URI does not say why the chain ends"
expect_fail "backing file.*not allowed" sparsecow map "$nbd_uri"
expect_fail "backing file.*not allowed" sparsecow pack "$nbd_uri" never.qcow2
[ ! -e never.qcow2 ] || fail "a refused pack left a target"
# A vmdk served as a file is refused as raw data, with how to read it.
expect_fail "vmdk.*qemu-nbd -f vmdk" \
  sparsecow pack -- [ nbdkit -r file src.vmdk ] never.qcow2
[ ! -e never.qcow2 ] || fail "a refused pack left a target"
exit 0
