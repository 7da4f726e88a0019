#!/usr/bin/env bash
# sparsecow bmap of an export whose block status is fragmented (512-byte
# data extents between 512-byte holes): the data is read in large
# requests, as pack reads it, not one request per extent; the block map
# equals bmaptool create's for a file of the same bytes and holes, and
# bmaptool copy accepts it.  nbdkit's log filter counts the reads.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires nbdkit bmaptool python3 awk dd cmp

cd "$tmp"
# 3 MiB: 1 MiB of 512-byte data and zero halves, a 512 KiB hole (a
# real one in the file), 1.5 MiB more of halves.
python3 - <<'EOS'
import os
half = bytearray(1024 * 1024)
rnd = os.urandom(len(half))
for p in range(0, len(half), 1024):
    half[p:p + 512] = rnd[p:p + 512]
with open("alt.raw", "wb") as f:
    f.write(half)
    f.seek(1536 * 1024)
    f.write(half + half[:512 * 1024])
EOS
cat > alt.sh <<EOS
#!/bin/sh
f="$tmp/alt.raw"
case "\$1" in
  get_size) stat -c %s "\$f" ;;
  pread) dd if="\$f" iflag=skip_bytes,count_bytes skip=\$4 count=\$3 status=none ;;
  can_extents) exit 0 ;;
  extents)
    awk -v o=\$4 -v c=\$3 'BEGIN {
      for (p = o - o % 1024; p < o + c; p += 1024)
        if (p >= 1048576 && p < 1572864) print p, 1024, "hole,zero";
        else { print p, 512, ""; print p + 512, 512, "hole,zero" } }' ;;
  *) exit 2 ;;
esac
EOS
chmod +x alt.sh

"$SPARSECOW" bmap -o alt.bmap -- \
  [ nbdkit -r --filter=log sh ./alt.sh logfile="$tmp/reads.log" ] ||
  fail "bmap of a fragmented export failed"
reads=$(grep -c " Read id=" reads.log)
# 2.5 MiB of data in at most 1 MiB requests, and a few reads of the
# first sector: far from the 2,560 extents.
[ "$reads" -le 32 ] || fail "bmap of 2,560 data extents sent $reads reads"

bmaptool create -o ref.bmap alt.raw 2>/dev/null || fail "bmaptool create failed"
ranges () { grep -o '<Range chksum="[0-9a-f]*"> *[0-9-]* *</Range>' "$1" | tr -s ' '; }
diff <(ranges ref.bmap) <(ranges alt.bmap) ||
  fail "the ranges of bmap of the export differ from bmaptool create's"
[ "$(ranges ref.bmap | wc -l)" -eq 2 ] || fail "bmaptool create did not see the hole"
bmaptool copy --bmap alt.bmap alt.raw copy.raw 2>/dev/null ||
  fail "bmaptool copy refused the block map"
cmp alt.raw copy.raw || fail "bmaptool copy with the block map differs"
exit 0
