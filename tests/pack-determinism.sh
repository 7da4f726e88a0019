#!/bin/bash
# pack: the same input and options give a byte-identical image, whatever
# the number of threads (pieces finish out of order on many threads).
. "$srcdir/functions.sh"
. "$srcdir/pack-common.sh"
requires perl

# Mixed content: compressible runs, random blocks, holes, zeros.
truncate -s 24M "$tmp/src"
perl -e 'open (F, "+<", $ARGV[0]) or die "$!";
  srand (7);
  for my $i (0 .. 299) {
    seek (F, int (rand (24 * 1024 * 1024 - 65536)), 0) or die;
    my $n = 512 + int (rand (60000));
    if ($i % 3 == 0) { print F pack ("C*", map { int (rand (256)) } 1 .. $n); }
    elsif ($i % 3 == 1) { print F "line $i " x int ($n / 8); }
    else { print F "\0" x $n; }
  }
  close (F) or die;' "$tmp/src"

for opts in "" "-c" "-c zstd" "-c --cluster-size 4K --refcount-bits 1" \
            "--compat=0.10 -c --cluster-size 2M"; do
  rm -f "$tmp/a.qcow2" "$tmp/b.qcow2" "$tmp/c.qcow2"
  sparsecow pack -q -j 1 $opts "$tmp/src" "$tmp/a.qcow2"
  sparsecow pack -q -j 4 $opts "$tmp/src" "$tmp/b.qcow2"
  sparsecow pack -q -j 3 $opts "$tmp/src" "$tmp/c.qcow2"
  cmp "$tmp/a.qcow2" "$tmp/b.qcow2" || fail "pack $opts: -j 1 and -j 4 differ"
  cmp "$tmp/a.qcow2" "$tmp/c.qcow2" || fail "pack $opts: -j 1 and -j 3 differ"
  qemu-img check -q "$tmp/a.qcow2" || fail "pack $opts: qemu-img check"
  qemu-img compare -q -f raw -F qcow2 "$tmp/src" "$tmp/a.qcow2" ||
    fail "pack $opts: qemu-img compare"
done
