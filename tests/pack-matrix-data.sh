#!/bin/bash
# pack: the full matrix of cluster sizes, versions, codecs and refcount
# widths on thousands of small extents and on allocated zeros.
. "$srcdir/functions.sh"
. "$srcdir/pack-common.sh"
requires perl

# 2000 extents of 4 KiB, 8 KiB apart, at varying sub-block offsets.
truncate -s 16M "$tmp/many"
perl -e 'open (F, "+<", $ARGV[0]) or die "$!";
  for my $i (0 .. 1999) {
    seek (F, $i * 8192 + ($i % 7) * 512, 0) or die;
    print F pack ("N", $i * 2654435761 % 4294967296) x 1024;
  }
  close (F) or die;' "$tmp/many"

# Allocated zeros in [2M, 6M) between two data blocks.
truncate -s 8M "$tmp/zeroed"
dd if=/dev/zero of="$tmp/zeroed" bs=1M seek=2 count=4 conv=notrunc status=none
head -c 4096 /dev/urandom |
  dd of="$tmp/zeroed" bs=1M seek=1 conv=notrunc status=none
head -c 4096 /dev/urandom |
  dd of="$tmp/zeroed" bs=1M seek=7 conv=notrunc status=none

for src in many zeroed; do
  full_matrix "$tmp/$src"
done

# Allocated zeros occupy no cluster by default, and do with -S 0.
for cs in 512 65536 2M; do
  for c in "" -c; do
    rm -f "$tmp/z.qcow2"
    sparsecow pack -q $c --cluster-size $cs "$tmp/zeroed" "$tmp/z.qcow2"
    assert_no_data_in "$tmp/z.qcow2" $((2 << 20)) $((6 << 20))
  done
done
rm -f "$tmp/z.qcow2"
sparsecow pack -q -S 0 "$tmp/zeroed" "$tmp/z.qcow2"
check_image "$tmp/zeroed" "$tmp/z.qcow2" 65536 1.1 none 16
[ "$(stat -c %s "$tmp/z.qcow2")" -ge $((4 << 20)) ] ||
  fail "-S 0: allocated zeros not stored: $(data_ranges "$tmp/z.qcow2")"

