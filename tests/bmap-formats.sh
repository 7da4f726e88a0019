#!/bin/bash
# Older bmap formats: 1.0 to 1.3 (SHA-1 per range, from 1.3 the file's
# own BmapFileSHA1) and 1.4 (2.0 by another number: ChecksumType, sha1
# or md5 as well as sha256), read by pack --map=bmap: and unpack --bmap
# as bmaptool copy reads them.  bmaptool create has written format 2.0
# since bmaptool 3.1, so the files are written here from the format's
# definition, and bmaptool copy --bmap, which accepts and checks them,
# is the oracle that they are right; bmaptool's own BmapCreate writes
# format 2.0 with SHA-1, MD5 and SHA-512, which are read as well.
. "$srcdir/functions.sh"
requires bmaptool qemu-img python3

B=4096
raw=$tmp/disk.raw
truncate -s $(( 24 * 1024 * 1024 + 1536 )) "$raw"
write_at () { head -c "$2" /dev/urandom | dd of="$raw" bs=1 seek="$1" conv=notrunc status=none; }
write_at 0 100
write_at $(( 5 * B + 2000 )) $(( 3 * B ))
dd if=/dev/urandom of="$raw" bs=1M seek=10 count=3 conv=notrunc status=none
write_at $(( 24 * 1024 * 1024 + 10 )) 500

# The ranges of bmaptool create's own bmap of the file.
bmaptool create -o "$tmp/bt.bmap" "$raw" 2>/dev/null
grep -q '<BlockSize> *4096 *</BlockSize>' "$tmp/bt.bmap" || {
  echo "$0: SKIP: bmaptool create uses another block size here"; exit 77; }
version=$(sed -n 's/.*<bmap version="\([0-9.]*\)".*/\1/p' "$tmp/bt.bmap")
echo "bmaptool create writes bmap format $version"

# write_bmap VERSION TYPE OUT [RAW]: a bmap of RAW (default $raw) with
# bmaptool create's ranges, in format VERSION with checksums of TYPE,
# laid out as bmaptool writes it (a checksum per range; in 1.3 the
# file's SHA-1 in BmapFileSHA1, from 1.4 the file's checksum of TYPE in
# BmapFileChecksum, each computed over the file with its own value
# written as zeros).
write_bmap () {
  python3 - "$tmp/bt.bmap" "$1" "$2" "$3" "${4:-$raw}" <<'PYEOF'
import hashlib, os, re, sys
bt, version, ctype, out, raw = sys.argv[1:6]
B = 4096
size = os.path.getsize(raw)
text = open(bt).read()
ranges = [(int(m.group(1)), int(m.group(2) or m.group(1)))
          for m in re.finditer(r'<Range[^>]*>\s*(\d+)(?:\s*-\s*(\d+))?\s*</Range>', text)]
major, minor = map(int, version.split("."))
new_names = major >= 2 or minor == 4
attr = "chksum" if new_names else "sha1"
lines = ['<?xml version="1.0" ?>', '<bmap version="%s">' % version,
         '    <ImageSize> %d </ImageSize>' % size,
         '    <BlockSize> %d </BlockSize>' % B,
         '    <BlocksCount> %d </BlocksCount>' % ((size + B - 1) // B),
         '    <MappedBlocksCount> %d </MappedBlocksCount>'
         % sum(l - f + 1 for f, l in ranges)]
file_len = 0
if new_names:
    lines.append('    <ChecksumType> %s </ChecksumType>' % ctype)
    file_len = len(hashlib.new(ctype).hexdigest())
    lines.append('    <BmapFileChecksum> %s </BmapFileChecksum>' % ("0" * file_len))
elif minor == 3:
    file_len = 40
    lines.append('    <BmapFileSHA1> %s </BmapFileSHA1>' % ("0" * 40))
lines.append('    <BlockMap>')
with open(raw, "rb") as f:
    for first, last in ranges:
        f.seek(first * B)
        h = hashlib.new(ctype if new_names else "sha1")
        h.update(f.read((last - first + 1) * B))
        r = "%d-%d" % (first, last) if last > first else "%d" % first
        lines.append('        <Range %s="%s"> %s </Range>' % (attr, h.hexdigest(), r))
lines += ['    </BlockMap>', '</bmap>', '']
doc = "\n".join(lines)
if file_len:
    h = hashlib.new(ctype if new_names else "sha1")
    h.update(doc.encode())
    doc = doc.replace("0" * file_len, h.hexdigest(), 1)
open(out, "w").write(doc)
PYEOF
}

# bmaptool copy takes BMAP with RAW and writes a verified copy.
bmaptool_accepts () {
  rm -f "$tmp/bt.out"
  bmaptool copy --bmap "$1" "${2:-$raw}" "$tmp/bt.out" 2>"$tmp/bt.err" || {
    cat "$tmp/bt.err" >&2; fail "bmaptool copy refuses $1"; }
  cmp "${2:-$raw}" "$tmp/bt.out" || fail "bmaptool copy with $1 differs"
}

sparsecow pack -q "$raw" "$tmp/disk.qcow2"
second_start=$(( $(sed -n 's/.*<Range[^>]*> *\([0-9]*\).*/\1/p' "$tmp/bt.bmap" | sed -n 2p) * B ))
[ "$second_start" -gt 0 ] || fail "bmaptool found too few ranges"

for f in 1.4:sha1 1.4:md5 1.4:sha256 2.0:sha1 2.0:md5 2.0:sha512 1.3:sha1 1.2:sha1 1.0:sha1; do
  v=${f%:*} t=${f#*:} bmap=$tmp/v$v-$t.bmap
  write_bmap "$v" "$t" "$bmap"
  bmaptool_accepts "$bmap"
  rm -f "$tmp/m.qcow2" "$tmp/u.raw"
  sparsecow pack -q --map=bmap:"$bmap" "$raw" "$tmp/m.qcow2" ||
    fail "pack --map=bmap: refuses format $v with $t"
  qemu-img compare -q "$raw" "$tmp/m.qcow2" || fail "pack --map=bmap: with format $v, $t: image differs"
  sparsecow unpack -q --bmap "$bmap" "$tmp/disk.qcow2" "$tmp/u.raw" ||
    fail "unpack --bmap refuses format $v with $t"
  cmp "$raw" "$tmp/u.raw" || fail "unpack --bmap with format $v, $t differs"
done

# bmaptool's own writer (its BmapCreate class, which takes a checksum
# type that its command line does not offer) makes format 2.0 bmaps with
# SHA-1, MD5 and SHA-512; the same file numbered 1.4, its checksum made
# again, is the 1.4 bmap that bmaptool 3.0 wrote.
bt_python=$(head -n1 "$(command -v bmaptool)" | sed -n 's/^#! *\([^ ]*python[^ ]*\).*/\1/p')
if [ -n "$bt_python" ] && "$bt_python" - "$raw" "$tmp" <<'PYEOF'
import hashlib, re, sys
try:
    from bmaptools.BmapCreate import BmapCreate
except ImportError:
    from bmaptool.BmapCreate import BmapCreate
raw, tmp = sys.argv[1:3]
for t in ("sha1", "md5", "sha512"):
    out = "%s/bc-2.0-%s.bmap" % (tmp, t)
    BmapCreate(raw, out, t).generate()
    text = open(out).read().replace('<bmap version="2.0">', '<bmap version="1.4">', 1)
    c = re.search(r'<BmapFileChecksum>\s*([0-9a-f]+)', text)
    zeroed = text[:c.start(1)] + "0" * len(c.group(1)) + text[c.end(1):]
    text = text[:c.start(1)] + hashlib.new(t, zeroed.encode()).hexdigest() + text[c.end(1):]
    open("%s/bc-1.4-%s.bmap" % (tmp, t), "w").write(text)
PYEOF
then
  for f in 2.0:sha1 2.0:md5 2.0:sha512 1.4:sha1 1.4:md5; do
    bmap=$tmp/bc-${f%:*}-${f#*:}.bmap
    grep -q "<ChecksumType> ${f#*:} </ChecksumType>" "$bmap" || fail "bmaptool's BmapCreate did not write ${f#*:}"
    bmaptool_accepts "$bmap"
    rm -f "$tmp/m.qcow2" "$tmp/u.raw"
    sparsecow pack -q --map=bmap:"$bmap" "$raw" "$tmp/m.qcow2"
    qemu-img compare -q "$raw" "$tmp/m.qcow2" || fail "pack --map=bmap: with BmapCreate's $f: image differs"
    sparsecow unpack -q --bmap "$bmap" "$tmp/disk.qcow2" "$tmp/u.raw"
    cmp "$raw" "$tmp/u.raw" || fail "unpack --bmap with BmapCreate's $f differs"
  done
else
  echo "$0: bmaptool's BmapCreate is not importable: its own sha1/md5 bmaps not tested"
fi

# What bmaptool 3.6 reads too: a minor version of 2 (read as 2.0),
# attributes it does not look for (on <Range> and elsewhere), comments
# inside <Range> (left out of its text, as an XML parser leaves them).
# Each edit is made with the file's checksum made right again; bmaptool
# copy --bmap is the oracle that the edited file is a good bmap.
edit_bmap () {                  # IN OUT PATTERN REPLACEMENT
  python3 - "$@" <<'PYEOF'
import hashlib, re, sys
src, dst, pattern, repl = sys.argv[1:5]
text = re.sub(pattern, repl, open(src).read())
c = re.search(r'<BmapFileChecksum>\s*([0-9a-f]+)', text)
t = re.search(r'<ChecksumType>\s*(\w+)', text)
zeroed = text[:c.start(1)] + "0" * len(c.group(1)) + text[c.end(1):]
h = hashlib.new(t.group(1), zeroed.encode()).hexdigest()
open(dst, "w").write(text[:c.start(1)] + h + text[c.end(1):])
PYEOF
}
write_bmap 2.0 sha256 "$tmp/v2.0-sha256.bmap"
n=0
for edit in 'version="2.0"|version="2.1"' \
            'version="2.0"|version="2.17"' \
            '<Range chksum=|<Range origin="sda" chksum=' \
            '(<Range chksum="[0-9a-f]+")>|\1 note="x" >' \
            '<ImageSize>|<ImageSize unit="bytes">' \
            '> ([0-9]+)-([0-9]+) </Range>|> <!-- a --> \1 - \2 <!-- b --> </Range>' \
            '> ([0-9]+)-([0-9]+) </Range>|>\1<!-- a -->-<!-- b -->\2</Range>' \
            '> ([0-9]+) </Range>|> \1<!--x--></Range>'; do
  n=$((n + 1))
  bmap=$tmp/edit$n.bmap
  edit_bmap "$tmp/v2.0-sha256.bmap" "$bmap" "${edit%%|*}" "${edit#*|}"
  cmp -s "$tmp/v2.0-sha256.bmap" "$bmap" && fail "edit $edit changed nothing"
  bmaptool_accepts "$bmap"
  rm -f "$tmp/m.qcow2" "$tmp/u.raw"
  sparsecow pack -q --map=bmap:"$bmap" "$raw" "$tmp/m.qcow2" ||
    fail "pack --map=bmap: refuses a bmap that bmaptool reads ($edit)"
  qemu-img compare -q "$raw" "$tmp/m.qcow2" || fail "pack --map=bmap: ($edit): image differs"
  sparsecow unpack -q --bmap "$bmap" "$tmp/disk.qcow2" "$tmp/u.raw" ||
    fail "unpack --bmap refuses a bmap that bmaptool reads ($edit)"
  cmp "$raw" "$tmp/u.raw" || fail "unpack --bmap ($edit) differs"
done
# The checksums are still checked through such a file: one range altered.
python3 - "$tmp/edit6.bmap" "$tmp/bad.bmap" <<'PYEOF'
import hashlib, re, sys
text = open(sys.argv[1]).read()
m = list(re.finditer(r'<Range chksum="([0-9a-f]+)"', text))[1]
v = m.group(1)
text = text[:m.start(1)] + ("1" if v[0] == "0" else "0") + v[1:] + text[m.end(1):]
c = re.search(r'<BmapFileChecksum>\s*([0-9a-f]+)', text)
zeroed = text[:c.start(1)] + "0" * len(c.group(1)) + text[c.end(1):]
open(sys.argv[2], "w").write(text[:c.start(1)] + hashlib.sha256(zeroed.encode()).hexdigest() + text[c.end(1):])
PYEOF
bmaptool copy --bmap "$tmp/bad.bmap" "$raw" "$tmp/bt.out" 2>/dev/null &&
  fail "bmaptool copy accepted an altered range behind comments"
expect_fail "disk.raw and .*bad.bmap are out of sync at offset $second_start \(the SHA-256 of blocks" \
  sparsecow pack --map=bmap:"$tmp/bad.bmap" "$raw" "$tmp/bad.qcow2"

# tamper IN OUT fix|nofix: one range's checksum altered (the second
# range), the file's checksum made right again or not.
tamper () {
  python3 - "$@" <<'PYEOF'
import hashlib, re, sys
src, dst, fix = sys.argv[1], sys.argv[2], sys.argv[3] == "fix"
text = open(src).read()
m = list(re.finditer(r'<Range (?:chksum|sha1)="([0-9a-f]+)"', text))[1]
v = m.group(1)
text = text[:m.start(1)] + ("1" if v[0] == "0" else "0") + v[1:] + text[m.end(1):]
c = re.search(r'<(BmapFileChecksum|BmapFileSHA1)>\s*([0-9a-f]+)', text)
t = re.search(r'<ChecksumType>\s*(\w+)', text)
if fix and c:
    n = len(c.group(2))
    zeroed = text[:c.start(2)] + "0" * n + text[c.end(2):]
    h = hashlib.new(t.group(1) if t else "sha1", zeroed.encode()).hexdigest()
    text = text[:c.start(2)] + h + text[c.end(2):]
open(dst, "w").write(text)
PYEOF
}

# A range whose checksum differs: bmaptool copy finds it (the oracle
# that the alteration is real and the file's checksum right), and pack
# and unpack stop at the range's first byte, naming the hash.
for f in 1.4:sha1:SHA-1 1.4:md5:MD5 1.3:sha1:SHA-1 1.2:sha1:SHA-1; do
  IFS=: read -r v t name <<<"$f"
  tamper "$tmp/v$v-$t.bmap" "$tmp/bad.bmap" fix
  if [ "$v" != 1.2 ]; then
    # (bmaptool 3 reads no checksum of formats before 1.3.)
    bmaptool copy --bmap "$tmp/bad.bmap" "$raw" "$tmp/bt.out" 2>"$tmp/bt.err" &&
      fail "bmaptool copy accepted a wrong $t range checksum in format $v"
    grep -q "checksum mismatch for blocks range" "$tmp/bt.err" || {
      cat "$tmp/bt.err" >&2; fail "bmaptool did not find the altered $t range"; }
  fi
  expect_fail "disk.raw and .*bad.bmap are out of sync at offset $second_start \(the $name of blocks" \
    sparsecow pack --map=bmap:"$tmp/bad.bmap" "$raw" "$tmp/bad.qcow2"
  expect_fail "disk.qcow2 and .*bad.bmap are out of sync at offset $second_start\b" \
    sparsecow unpack --bmap "$tmp/bad.bmap" "$tmp/disk.qcow2" "$tmp/bad.raw"
done
# The file's own checksum no longer matches.
tamper "$tmp/v1.4-sha1.bmap" "$tmp/bad.bmap" nofix
bmaptool copy --bmap "$tmp/bad.bmap" "$raw" "$tmp/bt.out" 2>/dev/null &&
  fail "bmaptool copy accepted a damaged 1.4 bmap"
expect_fail "bad.bmap: the bmap file is damaged: its BmapFileChecksum does not match" \
  sparsecow pack --map=bmap:"$tmp/bad.bmap" "$raw" "$tmp/bad.qcow2"
tamper "$tmp/v1.3-sha1.bmap" "$tmp/bad.bmap" nofix
bmaptool copy --bmap "$tmp/bad.bmap" "$raw" "$tmp/bt.out" 2>/dev/null &&
  fail "bmaptool copy accepted a damaged 1.3 bmap"
expect_fail "bad.bmap: the bmap file is damaged: its BmapFileSHA1 does not match" \
  sparsecow unpack --bmap "$tmp/bad.bmap" "$tmp/disk.qcow2" "$tmp/bad.raw"

# The raw file altered in one byte after the bmap was made: found at the
# range that holds the byte, whatever the hash.
changed=$tmp/changed.raw
cp --sparse=always "$raw" "$changed"
byte=$(( 11 * 1024 * 1024 + 17 ))
old=$(od -An -tu1 -j $byte -N1 "$changed" | tr -d ' ')
printf "\\x$(printf %02x $(( old ^ 1 )))" | dd of="$changed" bs=1 seek=$byte conv=notrunc status=none
cmp -s "$raw" "$changed" && fail "the byte did not change"
range_start=$(python3 -c "
import re
for m in re.finditer(r'<Range[^>]*>\s*(\d+)(?:\s*-\s*(\d+))?\s*</Range>', open('$tmp/bt.bmap').read()):
    f, l = int(m.group(1)), int(m.group(2) or m.group(1))
    if f * $B <= $byte < (l + 1) * $B: print(f * $B)")
for f in 1.4:md5 1.3:sha1 1.0:sha1; do
  v=${f%:*} t=${f#*:}
  bmaptool copy --bmap "$tmp/v$v-$t.bmap" "$changed" "$tmp/bt.out" 2>/dev/null &&
    [ "$v" != 1.0 ] && fail "bmaptool copy did not see the changed byte with format $v"
  expect_fail "changed.raw and .*v$v-$t.bmap are out of sync at offset $range_start\b" \
    sparsecow pack --map=bmap:"$tmp/v$v-$t.bmap" "$changed" "$tmp/bad.qcow2"
done
sparsecow pack -q "$changed" "$tmp/changed.qcow2"
expect_fail "changed.qcow2 and .*v1.4-sha1.bmap are out of sync at offset $range_start\b" \
  sparsecow unpack --bmap "$tmp/v1.4-sha1.bmap" "$tmp/changed.qcow2" "$tmp/bad.raw"
[ ! -e "$tmp/bad.qcow2" ] && [ ! -e "$tmp/bad.raw" ] || fail "a failed command left a target"

# What each version has and has not, and checksum types not read.
mutate () {                     # IN PATTERN REPLACEMENT EXPECTED
  python3 - "$1" "$tmp/hostile.bmap" "$2" "$3" <<'PYEOF'
import hashlib, re, sys
src, dst, pattern, repl = sys.argv[1:5]
text = re.sub(pattern, repl, open(src).read(), count=1)
open(dst, "w").write(text)
PYEOF
  expect_fail "$4" sparsecow pack --map=bmap:"$tmp/hostile.bmap" "$raw" "$tmp/bad.qcow2"
}
mutate "$tmp/v1.4-sha1.bmap" 'version="1.4"' 'version="1.5"' "bmap format version 1.5 is not supported \(1.0 to 1.4 and 2.x are\)"
mutate "$tmp/v1.4-sha1.bmap" 'version="1.4"' 'version="3.0"' "version 3.0 is not supported"
mutate "$tmp/v1.4-sha1.bmap" 'version="1.4"' 'version="1"' "version '1' is not MAJOR.MINOR"
mutate "$tmp/v1.4-sha1.bmap" '> sha1 <' '> whirlpool <' "checksum type 'whirlpool' is not supported"
mutate "$tmp/v1.4-sha1.bmap" '> sha1 <' '> sha256 <' "line 8: .*BmapFileChecksum: a SHA-256 digest has 64 hexadecimal digits, not 40"
mutate "$tmp/v1.4-sha1.bmap" 'chksum="([0-9a-f]{40})"' 'chksum="\g<1>000000000000000000000000"' "line 10: .*chksum: a SHA-1 digest has 40 hexadecimal digits, not 64"
mutate "$tmp/v1.3-sha1.bmap" 'sha1="[0-9a-f]{40}"' 'sha1="123"' "line 9: .*sha1: 3 hexadecimal digits are no digest"
mutate "$tmp/v1.4-sha1.bmap" '<ChecksumType>[^<]*</ChecksumType>' '' "<ChecksumType> is missing"
mutate "$tmp/v1.4-sha1.bmap" '<BlockMap>' "<BmapFileSHA1> $(printf '%040d' 0) </BmapFileSHA1><BlockMap>" "<BmapFileSHA1> is not part of bmap format 1.4"
mutate "$tmp/v1.3-sha1.bmap" '<BmapFileSHA1>[^<]*</BmapFileSHA1>' '' "<BmapFileSHA1> is missing"
mutate "$tmp/v1.3-sha1.bmap" '<BlockMap>' '<ChecksumType> md5 </ChecksumType><BlockMap>' "<ChecksumType> is not part of bmap format 1.3"
# An attribute that the version does not use is read past (as bmaptool
# does), and the file's checksum then no longer matches.
mutate "$tmp/v1.3-sha1.bmap" 'sha1="' 'chksum="' "its BmapFileSHA1 does not match"
mutate "$tmp/v1.2-sha1.bmap" '<BlockMap>' "<BmapFileChecksum> $(printf '%064d' 0) </BmapFileChecksum><BlockMap>" "<BmapFileChecksum> is not part of bmap format 1.2"
mutate "$tmp/v2.0-sha1.bmap" 'chksum="' 'sha1="' "its BmapFileChecksum does not match"
mutate "$tmp/v2.0-sha1.bmap" '<Range ' '<Range a="1" a="2" ' "attribute 'a' given twice"
mutate "$tmp/v2.0-sha1.bmap" '<Range ' '<Range a=1 ' "a quoted value expected for 'a'"
mutate "$tmp/v2.0-sha1.bmap" '> ([0-9]+)-([0-9]+) </Range>' '> \1 <!-- x --> \2 </Range>' "Range: '[0-9]+ [0-9]+' is not a number"
mutate "$tmp/v2.0-sha1.bmap" '> ([0-9]+)-([0-9]+) </Range>' '> \1-\2 <!-- x </Range>' "unterminated comment"
mutate "$tmp/v2.0-sha1.bmap" '> ([0-9]+)-([0-9]+) </Range>' "> \\1-\\2 $(printf '%080d' 0) </Range>" "the text of <Range> is too long"
[ ! -e "$tmp/bad.qcow2" ] || fail "a refused bmap left an image"
echo "bmap formats 1.0, 1.2, 1.3, 1.4 and 2.0 with sha1, md5, sha256 and sha512 read as bmaptool copy reads them"
