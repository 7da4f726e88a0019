#!/usr/bin/env bash
# An image file cut short, as by an interrupted download: an L2 table,
# a data cluster or a compressed cluster that lies wholly or partly past
# the end of the file.  qemu-img reads the missing bytes as zeros (and
# its check finds nothing); sparsecow unpack refuses, from a file and
# from a pipe, naming the structure and its host offset, and check
# reports the image cut short (exit 2, counted as damage).  map and info
# need the tables only: they refuse a table cut short, and map shows a
# missing data cluster as qemu-img map does (tests/reader-refuse.sh).
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/hostile-functions.sh"
requires qemu-img qemu-io python3 cmp

cd "$tmp"
# header, refcount table and block, L1, L2, then the clusters in the
# order written: two compressed clusters, then data.
qemu-img create -q -f qcow2 full.qcow2 4M
qemu-io -f qcow2 -c "write -c -P 0x22 1M 64k" -c "write -c -P 0x33 2M 64k" \
  -c "write -P 0x11 0 64k" -c "write -P 0x44 3M 64k" full.qcow2 >/dev/null
same_as_qemu full.qcow2
cs=65536
l2=$(l2_table full.qcow2)
data=$(( $(be_get full.qcow2 $(( l2 + 48 * 8 )) 8) & 0x00fffffffffffe00 ))
comp=$(( $(be_get full.qcow2 $(( l2 + 16 * 8 )) 8) & ((1 << 54) - 1) ))
[ "$l2" -lt "$comp" ] && [ "$comp" -lt "$data" ] &&
  [ $(( data + cs )) = "$(stat -c %s full.qcow2)" ] ||
  fail "test setup: unexpected layout: L2 $l2, compressed $comp, data $data"

# cut NAME BYTES [fails]: a copy of the image cut to BYTES; qemu-img
# still converts it (reading zeros), or with "fails" it fails with an
# I/O error (where the L2 entries of the compressed clusters are left
# and their data, read as zeros, does not decode).
cut () {
  local rc=0
  head -c "$2" full.qcow2 > "$1.qcow2"
  qemu-img convert -q -f qcow2 -O raw "$1.qcow2" judge.raw 2>judge.err || rc=$?
  rm -f judge.raw
  if [ "${3:-}" = fails ]; then
    [ $rc = 1 ] && grep -q "Input/output error" judge.err ||
      fail "test setup: qemu-img convert $1.qcow2 cut at $2: exit $rc, $(cat judge.err)"
  else
    [ $rc = 0 ] || fail "test setup: qemu-img does not read $1.qcow2"
  fi
}

# The L2 table partly and wholly missing.
for n in $(( l2 + 100 )) $(( l2 + 4096 )) "$l2"; do
  if [ $n = $(( l2 + 4096 )) ]; then cut l2-cut $n fails; else cut l2-cut $n; fi
  if [ $n = "$l2" ]; then how=""; else how="partly "; fi
  refused "L1 entry 0: the L2 table at host offset $l2 lies ${how}past the end of the file \($n bytes\): the image is cut short" l2-cut.qcow2
  if [ $n = "$l2" ]; then
    refused_stream "an L2 table at host offset $l2 lies past the end of the stream \($n bytes\)" l2-cut.qcow2
    # A cluster or more out: a corruption for qemu-img check too.
    check_reports "L2 table at offset 0x$(printf %x "$l2") .*outside the image" l2-cut.qcow2 2
  else
    refused_stream "the stream ended at $n bytes, inside an L2 table at host offset $l2" l2-cut.qcow2
    # The clusters after it are a cluster or more out: corruptions for
    # qemu-img check; the table itself is damage only we count.
    check_reports "L2 table at offset 0x$(printf %x "$l2") \(size 0x10000\) lies partly past the end of the file \($n bytes\): the image is cut short" l2-cut.qcow2 2
  fi
done

# A data cluster partly and wholly missing.
for n in $(( data + 1000 )) "$data"; do
  cut data-cut $n
  if [ $n = "$data" ]; then how=""; else how="partly "; fi
  expect_fail "data-cut.qcow2: data cluster at host offset $data lies ${how}past the end of the file \($n bytes\): the image is cut short" \
    sparsecow unpack data-cut.qcow2 out.raw
  [ ! -e out.raw ] || fail "failed unpack of data-cut.qcow2 left its target"
  expect_fail "data cluster at host offset $data lies ${how}past the end of the file" \
    sparsecow unpack data-cut.qcow2 -
  if [ $n = "$data" ]; then
    refused_stream "a data cluster at host offset $data lies past the end of the stream \($n bytes\)" data-cut.qcow2
  else
    refused_stream "the stream ended at $n bytes, inside a data cluster at host offset $data" data-cut.qcow2
  fi
  expect_fail "data cluster at host offset $data lies ${how}past the end" \
    sparsecow pack data-cut.qcow2 repacked.qcow2
  [ ! -e repacked.qcow2 ] || fail "failed pack of data-cut.qcow2 left its target"
  if [ $n = "$data" ]; then
    # A whole cluster out: qemu-img check counts a corruption there.
    check_reports "data cluster at offset 0x$(printf %x "$data") .*outside the image" data-cut.qcow2 2
  else
    check_reports "data cluster at offset 0x$(printf %x "$data") \(size 0x10000\) lies partly past the end of the file \($n bytes\): the image is cut short" data-cut.qcow2 0
  fi
done

# A compressed cluster, last in its file: its last sector (the one that
# holds its last byte) wholly missing, and cut inside it, where only
# decoding finds out.
# Its data compresses to a few sectors: bytes from a small alphabet.
python3 -c 'import random, sys
r = random.Random(7)
sys.stdout.buffer.write(bytes(r.randrange(256) for _ in range(65536)))
sys.stdout.buffer.write(bytes(r.choice(b"ab") for _ in range(65536)))' > comp.raw
qemu-img convert -q -c -f raw -O qcow2 comp.raw comp.qcow2
same_as_qemu comp.qcow2
l2=$(l2_table comp.qcow2)
desc=$(be_get comp.qcow2 $(( l2 + 8 )) 8)
[ $(( desc >> 62 & 1 )) = 1 ] || fail "test setup: the second cluster is not compressed"
comp=$(( desc & ((1 << 54) - 1) ))
sector_end=$(( (comp / 512 + 1 + (desc >> 54 & 255)) * 512 ))
[ "$(stat -c %s comp.qcow2)" -gt $(( sector_end - 512 )) ] ||
  fail "test setup: the compressed cluster is not last"
head -c $(( sector_end - 512 )) comp.qcow2 > comp-cut.qcow2
expect_fail "comp-cut.qcow2: compressed cluster at host offset $comp lies (partly )?past the end of the file \($(( sector_end - 512 )) bytes\): the image is cut short" \
  sparsecow unpack comp-cut.qcow2 out.raw
[ ! -e out.raw ] || fail "failed unpack of comp-cut.qcow2 left its target"
refused_stream "the stream ended at $(( sector_end - 512 )) bytes, inside a compressed cluster at host offset $comp \([0-9]+ of its [0-9]+ bytes are missing\): the image is cut short" comp-cut.qcow2
check_reports "compressed cluster at offset 0x$(printf %x "$comp") .* lies (partly )?past the end of the file .*cut short" comp-cut.qcow2 0
# One byte of the last sector left: decoding fails, or, when the
# decoder has the whole cluster before it needs the rest (the end of
# the deflate stream), nothing was lost and unpack reads the image whole.
last=$(( sector_end - 512 ))
head -c $(( last + 1 )) comp.qcow2 > comp-in.qcow2
rc=0
sparsecow unpack comp-in.qcow2 out.raw 2>err || rc=$?
if [ $rc = 0 ]; then
  cmp comp.raw out.raw || fail "unpack of comp-in.qcow2 succeeded with other data"
  echo "$0: note: the compressed cluster decodes without its last sector"
  rm out.raw
else
  grep -Eq "comp-in.qcow2: compressed cluster at host offset 0x$(printf %x "$comp") \(its last sector runs past the end of the file\)" err ||
    { cat err >&2; fail "unpack of comp-in.qcow2: unclear message"; }
  [ ! -e out.raw ] || fail "failed unpack of comp-in.qcow2 left its target"
  refused_stream "inside the last sector of a compressed cluster at host offset $comp" comp-in.qcow2
fi
exit 0
