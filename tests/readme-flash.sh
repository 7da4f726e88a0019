#!/usr/bin/env bash
# The README's image-builder workflow, run as it is written: every
# command of its example block in order, the card (/dev/mmcblk0) a loop
# device over a file full of old bytes.  qemu-img judges the images,
# bmaptool copy the bmaps, and cmp the card after each command that
# writes it.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img bmaptool python3
readme=${top_srcdir:-$srcdir/..}/README
[ -f "$readme" ] || fail "no README at $readme"

cd "$tmp"
MiB=$((1024 * 1024))
# The raw disk: 64 MiB, data at the start, in the middle and at the end.
truncate -s $((64 * MiB)) disk.raw
head -c $((3 * MiB)) /dev/urandom | dd of=disk.raw conv=notrunc status=none
head -c 300000 /dev/urandom |
  dd of=disk.raw bs=4096 seek=5000 conv=notrunc status=none
head -c 4096 /dev/urandom |
  dd of=disk.raw bs=4096 seek=$((16 * 1024 - 1)) conv=notrunc status=none
# The card: larger than the disk, every byte 0xff.
python3 -c 'import sys; sys.stdout.buffer.write(b"\xff" * (80 << 20))' >card.img
loop_attach card.img
card=$dev

# The block: the indented lines after the paragraph that begins
# "Image builders:", up to the first line that is not indented.
python3 - "$readme" >commands <<'PY'
import sys
lines = open(sys.argv[1]).read().split("\n")
start = next(i for i, l in enumerate(lines) if l.startswith("Image builders:"))
i = start
while i < len(lines) and not lines[i].startswith("    "):
    i += 1
while i < len(lines) and (lines[i].startswith("    ") or lines[i] == ""):
    if lines[i].strip():
        print(lines[i].strip())
    i += 1
PY
n=$(wc -l <commands)
[ "$n" -ge 5 ] || fail "the README's block has $n commands: $(cat commands)"

# mapped_equal BMAP A B: A and B hold the same bytes in BMAP's ranges.
mapped_equal () {
  python3 - "$@" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
bs = int(re.search(r"<BlockSize>\s*(\d+)", text)[1])
with open(sys.argv[2], "rb") as a, open(sys.argv[3], "rb") as b:
    for m in re.finditer(r"<Range[^>]*>\s*(\d+)(?:-(\d+))?\s*</Range>", text):
        first, last = int(m[1]), int(m[2] or m[1])
        a.seek(first * bs); b.seek(first * bs)
        n = (last - first + 1) * bs
        if a.read(n) != b.read(n):
            sys.exit("blocks %d-%d differ" % (first, last))
PY
}

while IFS= read -r line; do
  cmd=${line//\/dev\/mmcblk0/$card}
  echo "+ $cmd"
  eval "$cmd" </dev/null || fail "the README's command failed: $line"
  case $cmd in
  bmaptool*"$card"*)
    # bmaptool writes the mapped blocks only.
    mapped_equal disk.bmap disk.raw "$card" ||
      fail "the card differs from disk.raw in a mapped range after: $line" ;;
  *"$card"*)
    cmp -n $((64 * MiB)) disk.raw "$card" ||
      fail "the card differs from disk.raw after: $line" ;;
  esac
  [ ! -f disk.qcow2 ] || qemu-img compare -q -f raw -F qcow2 disk.raw disk.qcow2 ||
    fail "disk.qcow2 differs from disk.raw after: $line"
done <commands

qemu-img check -q disk.qcow2 || fail "qemu-img check of disk.qcow2"
# The bmaps the block made are bmaptool's: each writes a verified copy.
for b in *.bmap; do
  rm -f copy.raw
  bmaptool -q copy --bmap "$b" disk.raw copy.raw || fail "bmaptool copy --bmap $b"
  cmp disk.raw copy.raw || fail "bmaptool's copy with $b differs"
done
# Past the image, the card keeps its old bytes (as the README says).
python3 -c 'import sys; sys.stdout.buffer.write(b"\xff" * (16 << 20))' >old.bin
cmp -i $((64 * MiB)):0 "$card" old.bin ||
  fail "the card's bytes past the image changed"
exit 0
