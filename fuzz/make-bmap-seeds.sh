#!/usr/bin/env bash
# Make the seed corpus of the bmap fuzz target: bmap files written by
# bmaptool create for a few small sparse files (data at the start, in
# the middle of a block, over block boundaries, in a partial last
# block), with and without range checksums.
# Usage: make-bmap-seeds.sh DIR
set -euo pipefail

out=$(mkdir -p "$1" && cd "$1" && pwd)
command -v bmaptool >/dev/null 2>&1 || {
  echo "make-bmap-seeds.sh: bmaptool not found: no seed corpus" >&2; exit 77; }

work=$(mktemp -d "${TMPDIR:-/var/tmp}/sparsecow-bmap-seeds.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

# put FILE OFFSET LENGTH BYTE: LENGTH bytes of BYTE at OFFSET.
put () {
  head -c "$3" /dev/zero | tr '\0' "\\$4" |
    dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

truncate -s 1M one.raw
put one.raw 0 4096 101

truncate -s $(( 2 * 1024 * 1024 + 1536 )) many.raw
put many.raw 0 100 102
put many.raw 10000 9000 103
put many.raw 65536 1 104
put many.raw $(( 1024 * 1024 )) 131072 105
put many.raw $(( 2 * 1024 * 1024 + 10 )) 700 106

truncate -s 3000 tiny.raw
put tiny.raw 5 10 107

truncate -s 4M empty.raw

for f in one many tiny empty; do
  bmaptool create -o "$out/$f.bmap" "$f.raw" 2>/dev/null
done
bmaptool create --no-checksum -o "$out/many-nochecksum.bmap" many.raw 2>/dev/null
