#!/bin/bash
# sparsecow bmap, pack --bmap-out: block maps that bmaptool accepts and
# verifies, with the ranges that bmaptool create finds for the same
# sparse file, and for images the data that qemu-img map reports.
. "$srcdir/functions.sh"
requires bmaptool qemu-img qemu-io python3

B=4096

# A sparse raw file of whole sectors (qemu rounds an image up to them)
# and a partial last block: data in the first block, a run over a block
# boundary that starts in the middle of a block, one byte far away, a
# long run, and data in its last, partial block.
raw=$tmp/disk.raw
truncate -s $(( 96 * 1024 * 1024 + 1536 )) "$raw"
write_at () { head -c "$2" /dev/urandom | dd of="$raw" bs=1 seek="$1" conv=notrunc status=none; }
write_at 0 100
write_at $(( 5 * B + 2000 )) $(( 3 * B ))
write_at $(( 40 * 1024 * 1024 + 7 )) 1
dd if=/dev/urandom of="$raw" bs=1M seek=60 count=5 conv=notrunc status=none
write_at $(( 96 * 1024 * 1024 + 10 )) 500

# The Range elements of a bmap, one "FIRST-LAST CHKSUM" line each.
ranges () {
  python3 - "$1" <<'PYEOF'
import re, sys
text = open(sys.argv[1]).read()
for m in re.finditer(r'<Range\s+chksum="([0-9a-f]+)"\s*>\s*(\d+)(?:\s*-\s*(\d+))?\s*</Range>', text):
    print("%s-%s %s" % (m.group(2), m.group(3) or m.group(2), m.group(1)))
PYEOF
}
# The value of a simple element of a bmap.
field () { sed -n "s:.*<$2> *\([^ <]*\) *</$2>.*:\1:p" "$1"; }

# bmaptool copy --bmap of SRC with BMAP into a new file must equal SRC.
bmap_copy_equals () {
  local bmap=$1 src=$2 out=$tmp/copy.out
  rm -f "$out"
  bmaptool copy --bmap "$bmap" "$src" "$out" 2>"$tmp/bmaptool.err" || {
    cat "$tmp/bmaptool.err" >&2; fail "bmaptool copy --bmap $bmap $src failed"; }
  cmp "$src" "$out" || fail "bmaptool copy with $bmap differs from $src"
}

# ---- a sparse raw file: bmaptool create is the oracle ------------------
sparsecow bmap "$raw" -o "$tmp/sc.bmap"
bmaptool create -o "$tmp/bt.bmap" "$raw" 2>/dev/null
[ "$(field "$tmp/bt.bmap" BlockSize)" = $B ] || {
  echo "$0: SKIP: bmaptool create uses blocks of $(field "$tmp/bt.bmap" BlockSize) bytes here"; exit 77; }
for f in ImageSize BlockSize BlocksCount MappedBlocksCount ChecksumType; do
  [ "$(field "$tmp/sc.bmap" $f)" = "$(field "$tmp/bt.bmap" $f)" ] ||
    fail "$f: sparsecow $(field "$tmp/sc.bmap" $f), bmaptool $(field "$tmp/bt.bmap" $f)"
done
ranges "$tmp/bt.bmap" > "$tmp/bt.ranges"
ranges "$tmp/sc.bmap" > "$tmp/sc.ranges"
[ "$(wc -l < "$tmp/bt.ranges")" -ge 4 ] || fail "bmaptool found too few ranges"
diff -u "$tmp/bt.ranges" "$tmp/sc.ranges" || fail "ranges differ from bmaptool create's"
bmap_copy_equals "$tmp/sc.bmap" "$raw"
# Standard output is the same file.
sparsecow bmap "$raw" | cmp - "$tmp/sc.bmap" || fail "bmap to stdout differs from -o"
# The same file served over NBD: block status gives the same ranges.
if command -v nbdkit >/dev/null 2>&1; then
  nbd_serve raw nbdkit -r file "$raw"
  sparsecow bmap "$nbd_uri" > "$tmp/nbd.bmap"
  ranges "$tmp/nbd.bmap" | diff -u "$tmp/bt.ranges" - || fail "bmap of an NBD export: ranges differ"
fi
# From a pipe everything is data: one range of every block.
sparsecow bmap - < <(cat "$raw") > "$tmp/pipe.bmap"
[ "$(field "$tmp/pipe.bmap" MappedBlocksCount)" = "$(field "$tmp/bt.bmap" BlocksCount)" ] ||
  fail "bmap of a pipe: not every block is mapped"
bmap_copy_equals "$tmp/pipe.bmap" "$raw"
# An existing file is replaced only with -f.
expect_fail "exists" sparsecow bmap "$raw" -o "$tmp/sc.bmap"
sparsecow bmap -f -q "$raw" -o "$tmp/sc.bmap"

# ---- qcow2 images: mapped = qemu-img map's data, rounded to blocks -------
# The ranges qemu-img map reports as data, in blocks, merged.
qemu_ranges () {
  qemu-img map --output=json "$1" | python3 -c '
import json, sys
B = 4096
out = []
for e in json.load(sys.stdin):
    if not e["data"]:
        continue
    f, l = e["start"] // B, (e["start"] + e["length"] - 1) // B
    if out and f <= out[-1][1] + 1:
        out[-1][1] = max(out[-1][1], l)
    else:
        out.append([f, l])
for f, l in out:
    print("%d-%d" % (f, l))'
}
check_image_bmap () {
  local img=$1 bmap=$tmp/img.bmap
  sparsecow bmap "$img" -o "$bmap" -f
  qemu-img convert -O raw "$img" "$tmp/img.raw"
  [ "$(field "$bmap" ImageSize)" = "$(stat -c %s "$tmp/img.raw")" ] ||
    fail "$img: ImageSize is not the virtual size"
  qemu_ranges "$img" > "$tmp/qemu.ranges"
  ranges "$bmap" | cut -d' ' -f1 > "$tmp/img.ranges"
  diff -u "$tmp/qemu.ranges" "$tmp/img.ranges" || fail "$img: ranges differ from qemu-img map's data"
  bmap_copy_equals "$bmap" "$tmp/img.raw"
}

# qemu-img: data, a zero cluster over data, a compressed cluster, 512-byte
# clusters whose data does not fill a block, and a backing file.
img=$tmp/q.qcow2
qemu-img convert -q -O qcow2 "$raw" "$img"
qemu-io -f qcow2 -c "write -z 60M 64k" -c "write -c -P 0x5a 80M 64k" "$img" >/dev/null
check_image_bmap "$img"
qemu-img create -q -f qcow2 -o cluster_size=512 "$tmp/small.qcow2" 1M
# Blocks 0 and 1 (data at the end of one, in the middle of the next:
# one range), then block 3 after a hole of exactly one block, and the
# last sector of the image.
qemu-io -f qcow2 -c "write -P 4 3584 512" -c "write -P 1 4608 512" \
  -c "write -P 2 12288 1024" -c "write -P 5 1048064 512" "$tmp/small.qcow2" >/dev/null
check_image_bmap "$tmp/small.qcow2"
qemu-img create -q -f qcow2 -b "$img" -F qcow2 "$tmp/top.qcow2"
qemu-io -f qcow2 -c "write -P 3 30M 8k" "$tmp/top.qcow2" >/dev/null
check_image_bmap "$tmp/top.qcow2"
# sparsecow pack, compressed too.
sparsecow pack -q "$raw" "$tmp/p.qcow2"
check_image_bmap "$tmp/p.qcow2"
sparsecow pack -q -c zstd "$raw" "$tmp/pz.qcow2"
check_image_bmap "$tmp/pz.qcow2"

# ---- pack --bmap-out: the image and the bmap from one scan -------------
sparsecow pack -q --bmap-out "$tmp/out.bmap" "$raw" "$tmp/out.qcow2"
qemu-img compare -q "$raw" "$tmp/out.qcow2" || fail "pack --bmap-out: image differs"
ranges "$tmp/out.bmap" | diff -u "$tmp/bt.ranges" - || fail "pack --bmap-out: ranges differ from bmaptool create's"
bmap_copy_equals "$tmp/out.bmap" "$raw"
rm -f "$tmp/out.bmap" "$tmp/out.qcow2"
# Named as a pipe by /dev/stdout, /dev/fd/N or /proc/self/fd/N, as
# bmaptool create -o /dev/stdout writes one: the same map, into the pipe.
for name in /dev/stdout /dev/fd/3 /proc/self/fd/3; do
  rm -f "$tmp/out.qcow2"
  sparsecow pack -q --bmap-out $name "$raw" "$tmp/out.qcow2" 3>&1 |
    cat >"$tmp/pipe.bmap"
  [ "${PIPESTATUS[0]}" = 0 ] || fail "pack --bmap-out $name | cat failed"
  ranges "$tmp/pipe.bmap" | diff -u "$tmp/bt.ranges" - ||
    fail "pack --bmap-out $name | cat: ranges differ from bmaptool create's"
done
rm -f "$tmp/out.qcow2"
sparsecow pack -q -c --bmap-out "$tmp/out.bmap" "$raw" "$tmp/out.qcow2"
ranges "$tmp/out.bmap" | diff -u "$tmp/bt.ranges" - || fail "pack -c --bmap-out: ranges differ"
# -S 0 stores every cluster, but the bmap still maps the source's data,
# whatever the map and the codec.
for o in "" "-c" "--map=fiemap" "--map=bmap:$tmp/bt.bmap"; do
  rm -f "$tmp/out.bmap" "$tmp/out.qcow2"
  sparsecow pack -q -S 0 $o --bmap-out "$tmp/out.bmap" "$raw" "$tmp/out.qcow2"
  ranges "$tmp/out.bmap" | diff -u "$tmp/bt.ranges" - || fail "pack -S 0 $o --bmap-out: ranges differ"
  bmap_copy_equals "$tmp/out.bmap" "$raw"
done
# From an image: qemu-img map's data (as sparsecow bmap of the image).
rm -f "$tmp/out.bmap" "$tmp/out2.qcow2"
sparsecow pack -q -S 0 --bmap-out "$tmp/out.bmap" "$tmp/p.qcow2" "$tmp/out2.qcow2"
qemu-img convert -O raw "$tmp/p.qcow2" "$tmp/img.raw"
qemu_ranges "$tmp/p.qcow2" > "$tmp/qemu.ranges"
ranges "$tmp/out.bmap" | cut -d' ' -f1 | diff -u "$tmp/qemu.ranges" - ||
  fail "pack -S 0 --bmap-out of an image: ranges differ from qemu-img map's data"
bmap_copy_equals "$tmp/out.bmap" "$tmp/img.raw"
rm -f "$tmp/out2.qcow2" "$tmp/img.raw"
# From a pipe everything is data: one range, all blocks.
rm -f "$tmp/out.bmap" "$tmp/out.qcow2"
sparsecow pack -q --bmap-out "$tmp/out.bmap" - "$tmp/out.qcow2" < <(cat "$raw")
qemu-img compare -q "$raw" "$tmp/out.qcow2" || fail "pack --bmap-out from a pipe: image differs"
[ "$(field "$tmp/out.bmap" MappedBlocksCount)" = "$(field "$tmp/bt.bmap" BlocksCount)" ] ||
  fail "pack --bmap-out from a pipe: not every block is mapped"
bmap_copy_equals "$tmp/out.bmap" "$raw"
# A failed pack leaves neither file.
rm -f "$tmp/out.bmap" "$tmp/out.qcow2"
expect_fail "cluster" sparsecow pack --bmap-out "$tmp/out.bmap" --cluster-size 3k "$raw" "$tmp/out.qcow2"
expect_fail "qcow2 image" sparsecow pack --bmap-out "$tmp/out.bmap" --source-format=qcow2 "$raw" "$tmp/out.qcow2"
[ ! -e "$tmp/out.bmap" ] && [ ! -e "$tmp/out.qcow2" ] || fail "a failed pack left a file"

# An empty source: bmaptool create makes no bmap of it, and pack
# --bmap-out refuses it by name, from a file before anything is read,
# and leaves no file.
: > "$tmp/empty.raw"
rm -f "$tmp/out.bmap" "$tmp/out.qcow2"
if bmaptool create -o "$tmp/out.bmap" "$tmp/empty.raw" 2>/dev/null; then
  fail "bmaptool create made a bmap of an empty file"
fi
rm -f "$tmp/out.bmap"
expect_fail "^sparsecow: $tmp/empty.raw: empty: --bmap-out has no block map" \
  sparsecow pack --bmap-out "$tmp/out.bmap" "$tmp/empty.raw" "$tmp/out.qcow2"
expect_fail "^sparsecow: stdin: empty: --bmap-out has no block map" \
  sparsecow pack --bmap-out "$tmp/out.bmap" - "$tmp/out.qcow2" < /dev/null
[ ! -e "$tmp/out.bmap" ] && [ ! -e "$tmp/out.qcow2" ] || fail "pack --bmap-out of an empty source left a file"

# From an export, whose clusters go straight to their place in the
# image as they are scanned.
if command -v nbdkit >/dev/null 2>&1; then
  rm -f "$tmp/out.bmap" "$tmp/out.qcow2"
  sparsecow pack -q --bmap-out "$tmp/out.bmap" "$nbd_uri" "$tmp/out.qcow2"
  qemu-img compare -q "$raw" "$tmp/out.qcow2" || fail "pack --bmap-out from NBD: image differs"
  ranges "$tmp/out.bmap" | diff -u "$tmp/bt.ranges" - || fail "pack --bmap-out from NBD: ranges differ"
  rm -f "$tmp/out.qcow2"
  sparsecow pack -q --map=bmap:"$tmp/bt.bmap" "$nbd_uri" "$tmp/out.qcow2"
  qemu-img compare -q "$raw" "$tmp/out.qcow2" || fail "pack --map=bmap from NBD: image differs"
fi

# ---- reading through a bmap -------------------------------------------------
# pack --map=bmap: the image holds exactly the mapped blocks' data.
sparsecow pack -q --map=bmap:"$tmp/bt.bmap" "$raw" "$tmp/m.qcow2"
qemu-img compare -q "$raw" "$tmp/m.qcow2" || fail "pack --map=bmap: image differs"
for s in 0 64k; do
  rm -f "$tmp/m2.qcow2"
  sparsecow pack -q -S $s --map=bmap:"$tmp/bt.bmap" "$raw" "$tmp/m2.qcow2"
  qemu-img compare -q "$raw" "$tmp/m2.qcow2" || fail "pack -S $s --map=bmap: image differs"
done
# unpack --bmap: the guest's mapped blocks, the rest holes.
sparsecow unpack -q --bmap "$tmp/bt.bmap" "$tmp/m.qcow2" "$tmp/u.raw"
cmp "$raw" "$tmp/u.raw" || fail "unpack --bmap differs"
# Read by many workers at once (the 5 MiB range in several pieces, some
# of them compressed): each range is still checked whole.
sparsecow pack -q -c --map=bmap:"$tmp/bt.bmap" "$raw" "$tmp/mc.qcow2"
qemu-img compare -q "$raw" "$tmp/mc.qcow2" || fail "pack -c --map=bmap: image differs"
for j in 1 3 8; do
  rm -f "$tmp/u.raw" "$tmp/m3.qcow2"
  sparsecow unpack -q -j $j --bmap "$tmp/bt.bmap" "$tmp/mc.qcow2" "$tmp/u.raw"
  cmp "$raw" "$tmp/u.raw" || fail "unpack -j $j --bmap differs"
  sparsecow pack -q -j $j --map=bmap:"$tmp/bt.bmap" "$raw" "$tmp/m3.qcow2"
  qemu-img compare -q "$raw" "$tmp/m3.qcow2" || fail "pack -j $j --map=bmap: image differs"
done

# Data the bmap does not map is not unpacked, and --verify reads back
# what the bmap maps.
cp --sparse=always "$raw" "$tmp/extra.raw"
head -c 8192 /dev/urandom | dd of="$tmp/extra.raw" bs=1M seek=90 conv=notrunc status=none
sparsecow pack -q "$tmp/extra.raw" "$tmp/extra.qcow2"
sparsecow unpack -q --verify --bmap "$tmp/bt.bmap" "$tmp/extra.qcow2" "$tmp/u2.raw"
cmp "$raw" "$tmp/u2.raw" || fail "unpack --bmap: data outside the bmap was written"
# Into an existing file with --zero=skip, unmapped blocks keep what was
# there, as bmaptool copy leaves them on a device (a file it truncates):
# the expected bytes are the old ones with bmaptool's ranges copied in.
for f in want sc; do
  head -c "$(stat -c %s "$raw")" /dev/zero | tr '\0' '\377' > "$tmp/$f.old"
done
while read -r r _; do
  f=${r%-*} l=${r#*-}
  dd if="$raw" of="$tmp/want.old" bs=$B skip="$f" seek="$f" count=$(( l - f + 1 )) \
    conv=notrunc status=none
done < "$tmp/bt.ranges"
sparsecow unpack -q -n --zero=skip --bmap "$tmp/bt.bmap" "$tmp/extra.qcow2" "$tmp/sc.old"
cmp "$tmp/want.old" "$tmp/sc.old" || fail "unpack -n --zero=skip --bmap: unmapped blocks changed"

# Rewrite a range's checksum (the second range), then optionally fix up
# the file checksum as bmaptool computes it.
tamper () {
  python3 - "$@" <<'PYEOF'
import hashlib, re, sys
src, dst, fix = sys.argv[1], sys.argv[2], sys.argv[3] == "fix"
text = open(src).read()
m = list(re.finditer(r'chksum="([0-9a-f]{64})"', text))[1]
bad = "%064x" % (int(m.group(1), 16) ^ 1)
text = text[:m.start(1)] + bad + text[m.end(1):]
if fix:
    c = re.search(r'<BmapFileChecksum>\s*([0-9a-f]{64})', text)
    zeroed = text[:c.start(1)] + "0" * 64 + text[c.end(1):]
    text = text[:c.start(1)] + hashlib.sha256(zeroed.encode()).hexdigest() + text[c.end(1):]
open(dst, "w").write(text)
PYEOF
}
second_start=$(( $(sed -n 2p "$tmp/bt.ranges" | cut -d- -f1) * B ))

tamper "$tmp/bt.bmap" "$tmp/fixed.bmap" fix
# bmaptool agrees: the file checksum is right, the range is not.
bmaptool copy --bmap "$tmp/fixed.bmap" "$raw" "$tmp/bt.out" 2>"$tmp/bt.err" &&
  fail "bmaptool copy accepted a wrong range checksum"
grep -q "checksum mismatch for blocks range" "$tmp/bt.err" || {
  cat "$tmp/bt.err" >&2; fail "bmaptool did not find the altered range"; }
expect_fail "$(basename "$raw") and .*fixed.bmap are out of sync at offset $second_start\b" \
  sparsecow pack --map=bmap:"$tmp/fixed.bmap" "$raw" "$tmp/bad.qcow2"
expect_fail "are out of sync at offset $second_start\b" \
  sparsecow pack -S 0 --map=bmap:"$tmp/fixed.bmap" "$raw" "$tmp/bad.qcow2"
expect_fail "m.qcow2 and .*fixed.bmap are out of sync at offset $second_start\b" \
  sparsecow unpack --bmap "$tmp/fixed.bmap" "$tmp/m.qcow2" "$tmp/bad.raw"

tamper "$tmp/bt.bmap" "$tmp/unfixed.bmap" nofix
expect_fail "BmapFileChecksum does not match" \
  sparsecow pack --map=bmap:"$tmp/unfixed.bmap" "$raw" "$tmp/bad.qcow2"
expect_fail "BmapFileChecksum does not match" \
  sparsecow unpack --bmap "$tmp/unfixed.bmap" "$tmp/m.qcow2" "$tmp/bad.raw"

# The raw file changed in one byte after its bmap was made: found at
# the range that holds the byte, in pack and in unpack.
changed=$tmp/changed.raw
cp --sparse=always "$raw" "$changed"
byte=$(( 60 * 1024 * 1024 + 3 * 1024 * 1024 + 17 ))
printf '\x00' | dd of="$changed" bs=1 seek=$byte conv=notrunc status=none
cmp -s "$raw" "$changed" && printf '\x01' | dd of="$changed" bs=1 seek=$byte conv=notrunc status=none
range_start=$(python3 -c "
import sys
for line in open('$tmp/bt.ranges'):
    f, l = map(int, line.split()[0].split('-'))
    if f * $B <= $byte < (l + 1) * $B: print(f * $B)")
expect_fail "changed.raw and .*bt.bmap are out of sync at offset $range_start\b" \
  sparsecow pack --map=bmap:"$tmp/bt.bmap" "$changed" "$tmp/bad.qcow2"
sparsecow pack -q "$changed" "$tmp/changed.qcow2"
expect_fail "changed.qcow2 and .*bt.bmap are out of sync at offset $range_start\b" \
  sparsecow unpack --bmap "$tmp/bt.bmap" "$tmp/changed.qcow2" "$tmp/bad.raw"
# Out of sync in two ranges (the 5 MiB one and the last): the first
# by offset is named, whichever worker reads which.
cp --sparse=always "$changed" "$tmp/changed2.raw"
byte2=$(( 96 * 1024 * 1024 + 100 ))
printf '\x00' | dd of="$tmp/changed2.raw" bs=1 seek=$byte2 conv=notrunc status=none
cmp -s "$raw" "$tmp/changed2.raw" -i $byte2:$byte2 -n 1 &&
  printf '\x01' | dd of="$tmp/changed2.raw" bs=1 seek=$byte2 conv=notrunc status=none
cmp -s "$raw" "$tmp/changed2.raw" -i $byte2:$byte2 -n 1 && fail "the last range did not change"
sparsecow pack -q -c "$tmp/changed2.raw" "$tmp/changed2.qcow2"
for j in 1 3 8; do
  expect_fail "changed2.raw and .*bt.bmap are out of sync at offset $range_start\b" \
    sparsecow pack -j $j --map=bmap:"$tmp/bt.bmap" "$tmp/changed2.raw" "$tmp/bad.qcow2"
  expect_fail "changed2.qcow2 and .*bt.bmap are out of sync at offset $range_start\b" \
    sparsecow unpack -j $j --bmap "$tmp/bt.bmap" "$tmp/changed2.qcow2" "$tmp/bad.raw"
done
[ ! -e "$tmp/bad.qcow2" ] && [ ! -e "$tmp/bad.raw" ] || fail "a target was left by a failed command"
ls -a "$tmp" | grep -q sparsecow- && fail "a temporary file was left behind" || :

# A bmap of another size is refused before anything is read.
truncate -s +4096 "$changed"
expect_fail "is $(stat -c %s "$changed") bytes, but .*bt.bmap describes an image of $(stat -c %s "$raw") bytes" \
  sparsecow pack --map=bmap:"$tmp/bt.bmap" "$changed" "$tmp/bad.qcow2"

# ---- hostile bmaps ------------------------------------------------------------
# Each is bmaptool's file with one thing broken and the file checksum
# made right again, so that only the one thing is wrong.
mutate () {
  python3 - "$tmp/bt.bmap" "$tmp/hostile.bmap" "$1" "$2" <<'PYEOF'
import hashlib, re, sys
src, dst, pattern, repl = sys.argv[1:5]
text = re.sub(pattern, repl, open(src).read(), count=1)
c = re.search(r'<BmapFileChecksum>\s*([0-9a-f]{64})', text)
if c:
    zeroed = text[:c.start(1)] + "0" * 64 + text[c.end(1):]
    text = text[:c.start(1)] + hashlib.sha256(zeroed.encode()).hexdigest() + text[c.end(1):]
open(dst, "w").write(text)
PYEOF
  expect_fail "$3" sparsecow pack --map=bmap:"$tmp/hostile.bmap" "$raw" "$tmp/bad.qcow2"
}
blocks=$(field "$tmp/bt.bmap" BlocksCount)
# Errors of the whole document name the line of the element concerned
# (in bmaptool's file, one element a line).
line_of () { grep -n -m1 -E -- "$1" "$tmp/bt.bmap" | cut -d: -f1; }
mutate '> \d+-(\d+) </Range>' "> $blocks-$(( blocks + 5 )) </Range>" \
  "line $(line_of '> [0-9]+-[0-9]+ </Range>'): .*runs past the last block"
mutate '<BlocksCount> \d+' '<BlocksCount> 99' "line $(line_of '^ *<BlocksCount>'): .*do not make an image"
mutate '<MappedBlocksCount> \d+' '<MappedBlocksCount> 1' \
  "line $(line_of '^ *<MappedBlocksCount>'): .*MappedBlocksCount is 1"
mutate '<ImageSize> \d+' '<ImageSize> 0' "line $(line_of '^ *<ImageSize>'): .*image size 0 is out of range"
mutate '<BmapFileChecksum>[^<]*</BmapFileChecksum>' '' \
  "line $(line_of '^<bmap '): .*<BmapFileChecksum> is missing"
mutate '<ImageSize> \d+' '<ImageSize> 99999999999999999999999' "too large"
mutate '<BlockSize> \d+' '<BlockSize> 4095' "block size"
mutate 'version="2.0"' 'version="3.0"' "version 3.0 is not supported"
mutate '> sha256 <' '> sha512 <' "line $(line_of '^ *<BmapFileChecksum>'): .*BmapFileChecksum: a SHA-512 digest has 128 hexadecimal digits, not 64"
mutate '> sha256 <' '> crc32 <' "checksum type 'crc32' is not supported"
mutate '</BlockMap>' '<Range> 1-0 </Range></BlockMap>' "ends before it starts"
mutate '</BlockMap>' '<Range> 0 </Range></BlockMap>' "line $(line_of '^ *</BlockMap>'): .*range 0-0 overlaps range 0-"
mutate '<BlockMap>' '<BlockMap><Range> 0 </Range>' "line $(line_of '^ *<Range'): .*overlaps range 0-0"
mutate '</bmap>' '</bmap><bmap>' "text after"
mutate '<BlockMap>' '<BlockMap><Extra>1</Extra>' "unexpected <Extra>"
mutate '<BlockMap>' '<BlockMap><Range/>' "empty element <Range/>"
mutate '<ImageSize>' '<ImageSize>&amp;' "unexpected '&'"
: > "$tmp/hostile.bmap"
expect_fail "bmap> expected" sparsecow pack --map=bmap:"$tmp/hostile.bmap" "$raw" "$tmp/bad.qcow2"
head -c 2000 "$tmp/bt.bmap" > "$tmp/hostile.bmap"
expect_fail "not a bmap file" sparsecow unpack --bmap "$tmp/hostile.bmap" "$tmp/m.qcow2" "$tmp/bad.raw"
[ ! -e "$tmp/bad.qcow2" ] && [ ! -e "$tmp/bad.raw" ] || fail "a target was left by a refused bmap"
expect_fail "--map" sparsecow pack --map=bmap: "$raw" "$tmp/bad.qcow2"
expect_fail "pipe" sparsecow unpack --bmap "$tmp/bt.bmap" - "$tmp/bad.raw" < <(cat "$tmp/m.qcow2")

# Checksums in upper case: bmaptool compares its lower-case digest with
# the text, so "bmaptool copy" fails on such a bmap whatever the data;
# sparsecow refuses it by line, in the ranges and in BmapFileChecksum,
# before any target is made.
upcase () {
  python3 - "$tmp/bt.bmap" "$tmp/$1" "$2" <<'PYEOF'
import hashlib, re, sys
src, dst, which = sys.argv[1:4]
text = open(src).read()
if which == "ranges":
    text = re.sub(r'chksum="([0-9a-f]+)"', lambda m: 'chksum="%s"' % m.group(1).upper(), text)
c = re.search(r'<BmapFileChecksum>\s*([0-9a-f]{64})', text)
zeroed = text[:c.start(1)] + "0" * 64 + text[c.end(1):]
digest = hashlib.sha256(zeroed.encode()).hexdigest()
if which == "file":
    digest = digest.upper()
text = text[:c.start(1)] + digest + text[c.end(1):]
open(dst, "w").write(text)
PYEOF
}
upcase upper-ranges.bmap ranges
upcase upper-file.bmap file
for b in upper-ranges.bmap upper-file.bmap; do
  rm -f "$tmp/bt.out"
  bmaptool copy --bmap "$tmp/$b" "$raw" "$tmp/bt.out" 2>"$tmp/bt.err" &&
    fail "bmaptool copy accepted $b"
  grep -q "checksum mismatch" "$tmp/bt.err" || {
    cat "$tmp/bt.err" >&2; fail "bmaptool did not refuse the checksum of $b"; }
done
expect_fail "line $(line_of '<Range chksum='): .*chksum: upper-case hexadecimal digits" \
  sparsecow pack --map=bmap:"$tmp/upper-ranges.bmap" "$raw" "$tmp/bad.qcow2"
expect_fail "line $(line_of '<Range chksum='): .*chksum: upper-case hexadecimal digits" \
  sparsecow unpack --bmap "$tmp/upper-ranges.bmap" "$tmp/m.qcow2" "$tmp/bad.raw"
expect_fail "line $(line_of '^ *<BmapFileChecksum>'): .*BmapFileChecksum: upper-case hexadecimal digits" \
  sparsecow pack --map=bmap:"$tmp/upper-file.bmap" "$raw" "$tmp/bad.qcow2"
[ ! -e "$tmp/bad.qcow2" ] && [ ! -e "$tmp/bad.raw" ] || fail "a target was left by a refused bmap"

# A bmap cut before its last </bmap> (or before </BlockMap>): the error
# says which element the file ends in; bmaptool refuses both too.
sed '$ s:</bmap>::' "$tmp/bt.bmap" > "$tmp/open-bmap.bmap"
grep -q '</bmap>' "$tmp/open-bmap.bmap" && fail "</bmap> was not cut off"
sed '/<\/BlockMap>/,$ d' "$tmp/bt.bmap" > "$tmp/open-blockmap.bmap"
for b in open-bmap.bmap open-blockmap.bmap; do
  rm -f "$tmp/bt.out"
  bmaptool copy --bmap "$tmp/$b" "$raw" "$tmp/bt.out" 2>"$tmp/bt.err" &&
    fail "bmaptool copy accepted $b"
  grep -q "no element found" "$tmp/bt.err" || {
    cat "$tmp/bt.err" >&2; fail "bmaptool did not find $b cut short"; }
done
# The line is the one after the last newline, where the file ends.
expect_fail "line $(( $(wc -l < "$tmp/open-bmap.bmap") + 1 )): .*the file ends before </bmap>" \
  sparsecow pack --map=bmap:"$tmp/open-bmap.bmap" "$raw" "$tmp/bad.qcow2"
expect_fail "the file ends before </BlockMap>" \
  sparsecow unpack --bmap "$tmp/open-blockmap.bmap" "$tmp/m.qcow2" "$tmp/bad.raw"
[ ! -e "$tmp/bad.qcow2" ] && [ ! -e "$tmp/bad.raw" ] || fail "a target was left by a refused bmap"

# What bmaptool reads, sparsecow reads: ranges in any order, a byte
# order mark, CDATA sections (as text, and between the elements).  Each
# variant of bmaptool's file must pass bmaptool copy, and both packing
# through it and unpacking through it must give the data back.
make_variant () {
  python3 - "$tmp/bt.bmap" "$tmp/variant.bmap" "$1" <<'PYEOF'
import hashlib, re, sys
src, dst, what = sys.argv[1:4]
text = open(src).read()
if what == "reversed-order":
    rs = re.findall(r'[ \t]*<Range\b.*?</Range>\n', text, re.S)
    assert len(rs) >= 3
    body = "".join(reversed(rs))
    text = text.replace("".join(rs), body)
elif what == "bom":
    text = "\ufeff" + text
elif what == "cdata":
    text = re.sub(r'(<ImageSize>)\s*(\d+)\s*<', r'\1 <![CDATA[\2]]> <', text, count=1)
    text = re.sub(r'(<Range[^>]*>)\s*(\d+)-(\d+)\s*<',
                  r'\1<![CDATA[ \2-]]>\3<![CDATA[]]><', text, count=1)
    text = text.replace("<BlockMap>", "<BlockMap><![CDATA[ x ]]>", 1)
    text = text.replace("</BlockMap>", "</BlockMap><![CDATA[<y>]]>", 1)
elif what == "doctype":
    text = re.sub(r'(<\?xml[^>]*\?>)', r'\1\n<!DOCTYPE bmap>', text, count=1)
elif what == "doctype-subset":
    text = re.sub(r'(<\?xml[^>]*\?>)', r'\1\n<!DOCTYPE bmap [ <!ENTITY one "1"> ]>',
                  text, count=1)
c = re.search(r'<BmapFileChecksum>\s*([0-9a-f]{64})', text)
zeroed = text[:c.start(1)] + "0" * 64 + text[c.end(1):]
text = text[:c.start(1)] + hashlib.sha256(zeroed.encode()).hexdigest() + text[c.end(1):]
open(dst, "w", encoding="utf-8").write(text)
PYEOF
}
variant () {
  make_variant "$1"
  cmp -s "$tmp/bt.bmap" "$tmp/variant.bmap" && fail "variant $1: not changed"
  bmap_copy_equals "$tmp/variant.bmap" "$raw"
  rm -f "$tmp/v.qcow2" "$tmp/v.raw"
  sparsecow pack -q --map=bmap:"$tmp/variant.bmap" "$raw" "$tmp/v.qcow2" ||
    fail "pack --map=bmap: of the $1 variant failed"
  qemu-img compare -q -F raw "$tmp/v.qcow2" "$raw" || fail "variant $1: the image differs"
  sparsecow unpack -q --bmap "$tmp/variant.bmap" "$tmp/v.qcow2" "$tmp/v.raw" ||
    fail "unpack --bmap of the $1 variant failed"
  cmp "$raw" "$tmp/v.raw" || fail "variant $1: unpack --bmap differs"
  rm -f "$tmp/v.qcow2" "$tmp/v.raw"
}
variant reversed-order
variant bom
variant cdata
variant doctype
# Stricter than bmaptool: a DOCTYPE that could define entities.
make_variant doctype-subset
grep -q "<!ENTITY" "$tmp/variant.bmap" || fail "variant doctype-subset: not changed"
expect_fail "line 2: not a bmap file: a DOCTYPE with an internal subset is not read" \
  sparsecow unpack -q --bmap "$tmp/variant.bmap" "$tmp/m.qcow2" "$tmp/v.raw"
[ ! -e "$tmp/v.raw" ] || fail "a target was left by a bmap with an internal subset"

# ---- a raw file whose size is not whole sectors ----------------------------
# The image's virtual size is rounded up to 512 bytes (qemu-img says by
# how much); the bmap of the raw file, pack's or bmaptool's, still goes
# with the image, and unpack through it gives back the raw file itself.
odd=$tmp/odd.raw
truncate -s 10000001 "$odd"
head -c 100 /dev/urandom | dd of="$odd" bs=1 seek=4096 conv=notrunc status=none
head -c 5000 /dev/urandom | dd of="$odd" bs=1 seek=9990000 conv=notrunc status=none
sparsecow pack -q --bmap-out "$tmp/odd.bmap" "$odd" "$tmp/odd.qcow2"
vsize=$(qemu-img info --output=json "$tmp/odd.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
[ "$vsize" = 10000384 ] || fail "odd: qemu-img sees a virtual size of $vsize"
bmaptool create -o "$tmp/odd-bt.bmap" "$odd" 2>/dev/null
[ "$(field "$tmp/odd.bmap" ImageSize)" = "$(field "$tmp/odd-bt.bmap" ImageSize)" ] ||
  fail "pack --bmap-out: ImageSize $(field "$tmp/odd.bmap" ImageSize), bmaptool create's $(field "$tmp/odd-bt.bmap" ImageSize)"
bmap_copy_equals "$tmp/odd.bmap" "$odd"
for b in odd.bmap odd-bt.bmap; do
  rm -f "$tmp/odd.out"
  sparsecow unpack -q --verify --bmap "$tmp/$b" "$tmp/odd.qcow2" "$tmp/odd.out"
  cmp "$odd" "$tmp/odd.out" || fail "unpack --bmap $b: not the raw file"
done
# Written in place, the target gets the same bytes.
head -c 10000001 /dev/zero > "$tmp/odd.out"
sparsecow unpack -q -n --bmap "$tmp/odd.bmap" "$tmp/odd.qcow2" "$tmp/odd.out"
cmp "$odd" "$tmp/odd.out" || fail "unpack -n --bmap: not the raw file"
# The image's own bmap has its virtual size and goes with its raw form.
sparsecow bmap "$tmp/odd.qcow2" -o "$tmp/oddimg.bmap"
qemu-img convert -O raw "$tmp/odd.qcow2" "$tmp/oddimg.raw"
bmap_copy_equals "$tmp/oddimg.bmap" "$tmp/oddimg.raw"
# Data past ImageSize in the image: the bmap is not of this image.
cp --sparse=always "$odd" "$tmp/tail.raw"
printf '\001' | dd of="$tmp/tail.raw" bs=1 seek=10000200 conv=notrunc status=none
sparsecow pack -q "$tmp/tail.raw" "$tmp/tail.qcow2"
expect_fail "holds data at 10000200, past the image of 10000001 bytes" \
  sparsecow unpack --bmap "$tmp/odd.bmap" "$tmp/tail.qcow2" "$tmp/bad.raw"
# pack --map=bmap wants the source's own size, as before.
expect_fail "is 10000201 bytes, but .*odd.bmap describes an image of 10000001 bytes" \
  sparsecow pack --map=bmap:"$tmp/odd.bmap" "$tmp/tail.raw" "$tmp/bad.qcow2"
[ ! -e "$tmp/bad.qcow2" ] && [ ! -e "$tmp/bad.raw" ] || fail "a target was left by a refused bmap"

# ---- a preallocated file: the same map every time ---------------------------
# SEEK_DATA calls unwritten extents data once their pages are cached (a
# read, a format probe); bmaptool create maps every allocated block
# (FIEMAP), every time.  The file is read in between.
pre=$tmp/prealloc.raw
if fallocate -l 1M "$pre" 2>/dev/null; then
  head -c $B /dev/urandom | dd of="$pre" bs=$B seek=3 conv=notrunc status=none
  sparsecow bmap "$pre" -o "$tmp/pre1.bmap"
  cat "$pre" > /dev/null
  sparsecow bmap "$pre" -o "$tmp/pre2.bmap"
  bmaptool create -o "$tmp/pre-bt.bmap" "$pre" 2>/dev/null
  ranges "$tmp/pre-bt.bmap" > "$tmp/pre-bt.ranges"
  for b in pre1 pre2; do
    ranges "$tmp/$b.bmap" | diff -u "$tmp/pre-bt.ranges" - ||
      fail "bmap of a preallocated file ($b): ranges differ from bmaptool create's"
  done
  sparsecow pack -q --bmap-out "$tmp/pre3.bmap" "$pre" "$tmp/pre.qcow2"
  qemu-img compare -q "$pre" "$tmp/pre.qcow2" || fail "pack --bmap-out of a preallocated file: image differs"
  ranges "$tmp/pre3.bmap" | diff -u "$tmp/pre-bt.ranges" - ||
    fail "pack --bmap-out of a preallocated file: ranges differ from bmaptool create's"
  bmap_copy_equals "$tmp/pre3.bmap" "$pre"
else
  echo "$0: no fallocate in $tmp: preallocated files not tested"
fi

# ---- -f never writes over the bmap that is read ------------------------------
# The same file by another name (a hard link, a path through ..) too.
cp "$tmp/bt.bmap" "$tmp/self.bmap"
ln -f "$tmp/self.bmap" "$tmp/link.bmap"
expect_fail "--bmap and .*self.bmap are one file" \
  sparsecow unpack -f --bmap "$tmp/self.bmap" "$tmp/m.qcow2" "$tmp/self.bmap"
expect_fail "--bmap and .*link.bmap are one file" \
  sparsecow unpack -f --bmap "$tmp/self.bmap" "$tmp/m.qcow2" "$tmp/u.raw" "$tmp/link.bmap"
expect_fail "--map=bmap: and TARGET are one file" \
  sparsecow pack -f --map=bmap:"$tmp/self.bmap" "$raw" "$tmp/link.bmap"
expect_fail "--map=bmap: and --bmap-out are one file" \
  sparsecow pack -f --map=bmap:"$tmp/self.bmap" --bmap-out "$tmp/../$(basename "$tmp")/self.bmap" "$raw" "$tmp/bad.qcow2"
cmp "$tmp/bt.bmap" "$tmp/self.bmap" || fail "a refused command changed the bmap"
# Two outputs of pack that do not exist yet, named differently.
expect_fail "--bmap-out and TARGET are one file" \
  sparsecow pack --bmap-out "$tmp/../$(basename "$tmp")/bad.qcow2" "$raw" "$tmp/bad.qcow2"
[ ! -e "$tmp/bad.qcow2" ] || fail "a refused pack left a file"

# ---- a missing backing file is named ----------------------------------------
# (qemu-img create needs -u to make such an image.)
mkdir "$tmp/bm"
qemu-img create -q -f qcow2 -u -b missing.qcow2 -F qcow2 "$tmp/bm/bm.qcow2" 32M
qemu-img map "$tmp/bm/bm.qcow2" >/dev/null 2>"$tmp/qemu.err" &&
  fail "qemu-img map opens an image whose backing file is missing"
grep -q "missing.qcow2.: No such file" "$tmp/qemu.err" || {
  cat "$tmp/qemu.err" >&2; fail "qemu-img map does not name the missing backing file"; }
for cmd in bmap map unpack; do
  out=; [ $cmd = unpack ] && out=$tmp/bad.raw
  expect_fail "^sparsecow: .*bm/bm.qcow2: backing file .*bm/missing.qcow2: No such file or directory$" \
    sparsecow $cmd "$tmp/bm/bm.qcow2" $out
done
[ ! -e "$tmp/bad.raw" ] || fail "unpack of an image without its backing file left a target"

# ---- --zero=skip says "keeps" only of a target written in place ---------------
# A file replaced with -f is a new file: its zero ranges are holes, as
# qemu-img convert writes them.
qemu-img convert -O raw "$tmp/extra.qcow2" "$tmp/extra.want"
for f in skip-f skip-n; do
  head -c "$(stat -c %s "$tmp/extra.want")" /dev/zero | tr '\0' '\377' > "$tmp/$f.raw"
done
sparsecow unpack -f --zero=skip "$tmp/extra.qcow2" "$tmp/skip-f.raw" 2>"$tmp/skip.err"
cmp "$tmp/extra.want" "$tmp/skip-f.raw" || fail "unpack -f --zero=skip onto a file: not the image"
grep -q "keeps" "$tmp/skip.err" && { cat "$tmp/skip.err" >&2; fail "unpack -f --zero=skip onto a file says it keeps old bytes"; }
sparsecow unpack -n --zero=skip "$tmp/extra.qcow2" "$tmp/skip-n.raw" 2>"$tmp/skip.err"
grep -q -- "--zero=skip: ranges of .*extra.qcow2 that read as zero are not written; .*skip-n.raw, written in place, keeps what it held there" \
  "$tmp/skip.err" || { cat "$tmp/skip.err" >&2; fail "unpack -n --zero=skip does not say the target keeps old bytes"; }
cmp -s "$tmp/extra.want" "$tmp/skip-n.raw" && fail "unpack -n --zero=skip: old bytes were not kept"

# ---- a source that changes while it is mapped -------------------------------
# The test hook inverts a byte of the file once the first data is read
# (the file's times are set in the past first, so that the write shows).
# cmp is the oracle that the file did change; no bmap is left.
for src in odd.raw odd.qcow2; do
  cp "$tmp/$src" "$tmp/moving.$src"
  touch -d 2020-01-01 "$tmp/moving.$src"
  expect_fail "moving.$src: source changed while it was mapped" \
    env SPARSECOW_TEST_CHANGE_WHILE_MAPPING=$(( $(stat -c %s "$tmp/$src") - 1 )) \
    $SC_VALGRIND "$SPARSECOW" bmap "$tmp/moving.$src" -o "$tmp/moving.bmap"
  cmp -s "$tmp/$src" "$tmp/moving.$src" && fail "the test hook did not change $src"
  [ ! -e "$tmp/moving.bmap" ] || fail "bmap of a changing source left a bmap"
done

# ---- a target written in place is not touched by a bmap that differs ----------
# Every range is checked before anything is written: the first range,
# which matches, is not written either (the second differs).
head -c "$(stat -c %s "$raw")" /dev/zero | tr '\0' '\377' > "$tmp/inplace.raw"
cp "$tmp/inplace.raw" "$tmp/inplace.orig"
expect_fail "m.qcow2 and .*fixed.bmap are out of sync at offset $second_start\b" \
  sparsecow unpack -n --bmap "$tmp/fixed.bmap" "$tmp/m.qcow2" "$tmp/inplace.raw"
cmp "$tmp/inplace.orig" "$tmp/inplace.raw" || fail "unpack -n with a bmap that differs wrote to the target"

# ---- a bmap goes to a file, a pipe or standard output ---------------------
# Not into a device, not even with -f: it would overwrite its start.
expect_fail "pack: --bmap-out /dev/null: a bmap goes to a file, a pipe or standard output, not a character device" \
  sparsecow pack -f --bmap-out /dev/null "$raw" "$tmp/bad.qcow2"
[ ! -e "$tmp/bad.qcow2" ] || fail "pack --bmap-out /dev/null left an image"
if [ "$(id -u)" = 0 ] && command -v losetup >/dev/null; then
  head -c $((1024 * 1024)) /dev/urandom > "$tmp/bdev.img"
  cp "$tmp/bdev.img" "$tmp/bdev.orig"
  loop_attach "$tmp/bdev.img"
  expect_fail "pack: --bmap-out $dev: a bmap goes to a file, a pipe or standard output, not a block device" \
    sparsecow pack -f --bmap-out "$dev" "$raw" "$tmp/bad.qcow2"
  expect_fail "bmap: -o $dev: a bmap goes to a file, a pipe or standard output, not a block device" \
    sparsecow bmap -f "$raw" -o "$dev"
  cmp "$tmp/bdev.orig" "$dev" || fail "a bmap was written to the device $dev"
  [ ! -e "$tmp/bad.qcow2" ] || fail "pack --bmap-out DEVICE left an image"

  # Unmapped blocks with --verify on a device that holds 0xff bytes:
  # --target-is-zero leaves them unwritten but promises zeros, which the
  # read-back checks (the first unmapped byte, at 64 KiB, differs);
  # --zero=skip leaves them as they were, unread; by default they are
  # made zero and read back as such.
  qemu-img create -q -f qcow2 "$tmp/tz.qcow2" 1M
  qemu-io -f qcow2 -c "write -P 0x11 0 64k" -c "write -P 0x22 512k 64k" \
    "$tmp/tz.qcow2" >/dev/null
  qemu-img convert -O raw "$tmp/tz.qcow2" "$tmp/tz.raw"
  bmaptool -q create -o "$tmp/tz.bmap" "$tmp/tz.raw"
  ff () { head -c $((1024 * 1024)) /dev/zero | tr '\0' '\377' |
            dd of="$dev" bs=64k oflag=direct status=none; }
  ff
  expect_fail "^sparsecow: $dev: verify: differs from the image at offset 65536\$" \
    sparsecow unpack -f -n --target-is-zero --bmap "$tmp/tz.bmap" --verify \
    "$tmp/tz.qcow2" "$dev"
  ff
  sparsecow unpack -q -f --zero=skip --bmap "$tmp/tz.bmap" --verify \
    "$tmp/tz.qcow2" "$dev" ||
    fail "unpack --zero=skip --bmap --verify failed on unmapped blocks left as they were"
  [ "$(head -c 1 "$dev" | od -An -tx1 | tr -d ' ')" = 11 ] ||
    fail "unpack --zero=skip --bmap did not write the mapped blocks"
  [ "$(dd if="$dev" bs=64k skip=1 count=1 status=none | tr -d '\377' | wc -c)" = 0 ] ||
    fail "unpack --zero=skip --bmap wrote an unmapped block"
  ff
  sparsecow unpack -q -f --bmap "$tmp/tz.bmap" --verify "$tmp/tz.qcow2" "$dev" ||
    fail "unpack --bmap --verify failed"
  cmp -n $((1024 * 1024)) "$tmp/tz.raw" "$dev" ||
    fail "unpack --bmap: unmapped blocks of $dev not made zero"
fi

# That check of every range is counted in the progress: the first half
# of the count goes by before the target is written at all (strace, one
# thread, orders the progress lines and the writes).
if command -v strace >/dev/null; then
  cp "$tmp/inplace.orig" "$tmp/inplace.raw"
  ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
    strace -f -qq -s 200 -e trace=write,pwrite64 -e signal=none -o "$tmp/prog.trace" \
    "$SPARSECOW" unpack -n -j 1 --bmap "$tmp/bt.bmap" --progress=json:fd:3 \
    "$tmp/m.qcow2" "$tmp/inplace.raw" 3>"$tmp/prog.json" ||
    fail "unpack -n --bmap --progress=json failed"
  cmp -n "$(stat -c %s "$raw")" "$raw" "$tmp/inplace.raw" || fail "unpack -n --bmap: the target differs"
  judge_progress "$tmp/prog.json"
  before=$(awk '/ pwrite64\(/ { exit } / write\(3, "\{/ { p = $0 } END { print p }' "$tmp/prog.trace" |
    sed -n 's/.*percent\\":\([0-9]*\).*/\1/p')
  [ "${before:-0}" -ge 45 ] ||
    fail "unpack -n --bmap: ${before:-0}% counted before the first write, not the check of the ranges"
fi

echo "bmap: $(wc -l < "$tmp/bt.ranges") ranges agree with bmaptool create"
