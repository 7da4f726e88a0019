#!/usr/bin/env bash
# Metadata that overlaps: tables over each other or over the header, an
# L2 table or refcount block that is also a data cluster, compressed
# bytes that run into tables.  qemu reads such images (one structure
# read as another); qemu-img check counts them as corruptions, and so
# does sparsecow check (the same exit and numbers).  sparsecow unpack,
# map and info refuse them, naming both structures and their offsets.
# Unpacking from a pipe refuses them too, except what involves refcount
# blocks: the stream decoder never reads the refcount table (it is not
# needed for the guest data), and there it reads what qemu reads.
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/hostile-functions.sh"
. "${srcdir:-$(dirname "$0")}/check-functions.sh"
requires qemu-img qemu-io python3 cmp

cd "$tmp"
qemu-img create -q -f qcow2 base.qcow2 4M
qemu-io -f qcow2 -c "write -P 0x11 0 128k" -c "write -c -P 0x22 1M 64k" \
  -c "write -P 0x33 2M 64k" base.qcow2 >/dev/null
same_as_qemu base.qcow2
rt=$(be_get base.qcow2 48 8)
l1=$(be_get base.qcow2 40 8)
rb=$(be_get base.qcow2 "$rt" 8)
l2=$(l2_table base.qcow2)
copied=0x8000000000000000
[ "$rt" -lt "$rb" ] && [ "$rb" -lt "$l1" ] && [ "$l1" -lt "$l2" ] ||
  fail "test setup: layout rt $rt rb $rb l1 $l1 l2 $l2"

# damage NAME OFFSET VALUE: a copy of the image with one u64 changed.
damage () { cp base.qcow2 "$1.qcow2"; be_put "$1.qcow2" "$2" 8 "$3"; }
# Compressed descriptor: offset in bits 0..53, extra sectors from 54.
compressed () { printf '0x%x' $(( (1 << 62) | ($2 << 54) | $1 )); }

# judge NAME PATTERN [stream]: the reader refuses with PATTERN, the pipe
# too (or reads what qemu-img reads, without "stream"), and check
# agrees with qemu-img check.
judge () {
  local f=$1.qcow2 pattern=$2 qrc=0 src=0
  refused "$f: .*$pattern" "$f"
  if [ "${3:-}" = stream ]; then
    refused_stream "stdin: .*$pattern" "$f"
  elif qemu-img convert -q -f qcow2 -O raw "$f" judge.raw 2>/dev/null; then
    cat "$f" | sparsecow unpack - piped.raw || fail "$f from a pipe failed"
    cmp judge.raw piped.raw || fail "$f from a pipe differs from qemu-img"
    rm -f judge.raw piped.raw
  fi
  qemu-img check --output=json "$f" > q.json 2>/dev/null || qrc=$?
  sparsecow check --output=json "$f" > s.json 2>s.err || src=$?
  [ $qrc = 2 ] || fail "test setup: qemu-img check $f exited $qrc, not 2"
  [ $src = 2 ] || { cat s.err >&2; fail "sparsecow check $f exited $src, not 2"; }
  for n in corruptions leaks; do
    [ "$(jfield q.json $n)" = "$(jfield s.json $n)" ] ||
      fail "$f: $n: qemu-img check $(jfield q.json $n), ours $(jfield s.json $n)"
  done
  echo "$f: refused; check $src with $(jfield s.json corruptions) corruptions, as qemu-img"
}

# Tables over each other and over the header.
damage l1-over-rt 40 "$rt"
judge l1-over-rt "the refcount table at host offset $rt overlaps the L1 table at host offset $rt" stream
damage rb-in-l1 "$rt" "$l1"
judge rb-in-l1 "the refcount block at host offset $l1 overlaps the L1 table at host offset $l1"
# One refcount block named by two entries of the refcount table.
damage rb-twice $(( rt + 8 )) "$rb"
judge rb-twice "the refcount block at host offset $rb is named by two refcount table entries"
damage l2-at-0 "$l1" $copied
judge l2-at-0 "L1 entry 0 \\(0x8000000000000000\\) names host offset 0, the header, as its L2 table" stream
damage l2-over-rt "$l1" $(( copied | rt ))
judge l2-over-rt "the L2 table at host offset $rt overlaps the refcount table at host offset $rt" stream

# A data cluster that is a table.
damage data-is-l2 $(( l2 + 8 )) $(( copied | l2 ))
judge data-is-l2 "the data cluster at host offset $l2 .*overlaps the L2 table at host offset $l2" stream
damage data-is-l1 $(( l2 + 8 )) $(( copied | l1 ))
judge data-is-l1 "the data cluster at host offset $l1 .*overlaps the L1 table at host offset $l1" stream
damage data-is-rb $(( l2 + 8 )) $(( copied | rb ))
judge data-is-rb "the data cluster at host offset $rb overlaps the refcount block at host offset $rb"

# Compressed bytes that start in an L2 table, and that run from a data
# area over the L1 and L2 tables.
damage comp-in-l2 $(( l2 + 16 * 8 )) "$(compressed $(( l2 + 496 )) 0)"
judge comp-in-l2 "the compressed cluster at host offset $(( l2 + 496 )) .*overlaps the L2 table at host offset $l2" stream
damage comp-over-l1 $(( l2 + 16 * 8 )) "$(compressed $(( l1 - 512 )) 300)"
judge comp-over-l1 "the compressed cluster at host offset $(( l1 - 512 )) .*overlaps the L1 table at host offset $l1" stream
exit 0
