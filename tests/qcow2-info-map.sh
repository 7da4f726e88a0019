#!/usr/bin/env bash
# sparsecow map --json prints exactly what qemu-img map --output=json
# prints, and sparsecow info --json agrees with qemu-img info, on images
# made by qemu-img and qemu-io: data, zero clusters (plain and
# preallocated), discards, compressed clusters, backing chains (qcow2
# and raw, shorter than the overlay), extended L2, external data
# files, raw files.  Malformed and unsupported images fail with a clear
# message.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io python3 timeout dd

cd "$tmp"

# The map of $1 must equal qemu-img's, byte for byte.
same_map () {
  local img=$1; shift
  qemu-img map --output=json "$@" "$img" > "$img.qmap" ||
    fail "qemu-img map $img"
  sparsecow map --json "$img" > "$img.smap" || fail "sparsecow map $img"
  diff -u "$img.qmap" "$img.smap" || fail "map of $img differs from qemu-img"
}

# The fields both tools report must agree.
same_info () {
  local img=$1
  qemu-img info --output=json "$img" > "$img.qinfo" ||
    fail "qemu-img info $img"
  sparsecow info --json "$img" > "$img.sinfo" || fail "sparsecow info $img"
  python3 - "$img.qinfo" "$img.sinfo" <<'EOF' || fail "info of $img differs"
import json, sys
q = json.load(open(sys.argv[1]))
s = json.load(open(sys.argv[2]))
d = q["format-specific"]["data"]
e = s["format-specific"]["data"]
pairs = [
    ("virtual-size", q["virtual-size"], s["virtual-size"]),
    ("cluster-size", q["cluster-size"], s["cluster-size"]),
    ("actual-size", q["actual-size"], s["actual-size"]),
    ("compat", d["compat"], e["compat"]),
    ("refcount-bits", d.get("refcount-bits"), e.get("refcount-bits")),
    ("compression-type", d.get("compression-type"), e.get("compression-type")),
    ("lazy-refcounts", d.get("lazy-refcounts"), e.get("lazy-refcounts")),
    ("extended-l2", d.get("extended-l2"), e.get("extended-l2")),
    ("corrupt", d.get("corrupt"), e.get("corrupt")),
    ("dirty", q["dirty-flag"], s["dirty-flag"]),
    ("data-file", d.get("data-file"), e.get("data-file")),
    ("backing-filename", q.get("backing-filename"), s.get("backing-filename")),
    ("backing-format", q.get("backing-filename-format"),
                       s.get("backing-filename-format")),
    ("snapshots", [(x["id"], x["name"]) for x in q.get("snapshots", [])],
                  [(x["id"], x["name"]) for x in s.get("snapshots", [])]),
]
bad = [(n, a, b) for n, a, b in pairs if a != b]
for n, a, b in bad:
    print("%s: qemu-img %r, sparsecow %r" % (n, a, b), file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
}

qio () { qemu-io "$@" >/dev/null || fail "qemu-io $*"; }

# ---- images that must map and describe exactly like qemu-img ----------

# Data, zero clusters over data (preallocated) and over nothing (plain),
# a discard, and compressed clusters.
qemu-img create -q -f qcow2 a.qcow2 8M
qio -c "write -P 1 0 192k" -c "write -P 2 1M 64k" -c "write -z 64k 64k" \
    -c "write -z 2M 128k" -c "discard 1M 64k" \
    -c "write -c -P 3 4M 128k" -c "write -c -P 4 4288k 64k" \
    -c "write -P 5 7M 4k" a.qcow2
same_map a.qcow2
same_info a.qcow2

# The same over a qcow2 backing file that is shorter than the overlay.
qemu-img create -q -f qcow2 base.qcow2 3M
qio -c "write -P 7 0 3M" -c "write -z 512k 64k" base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 8M
qio -c "write -P 8 128k 64k" -c "write -z 1M 64k" -c "write -c -P 9 2M 64k" \
    top.qcow2
same_map top.qcow2
same_info top.qcow2

# A chain of three with a discard in the middle layer (a zero cluster
# there hides the bottom layer's data).
qemu-img create -q -f qcow2 -b top.qcow2 -F qcow2 third.qcow2 8M
qio -c "discard 128k 64k" top.qcow2
qio -c "write -P 10 6M 64k" third.qcow2
same_map third.qcow2
same_info third.qcow2

# A raw backing file, partly sparse, shorter than the overlay.
truncate -s 2M back.raw
qio -f raw -c "write -P 11 64k 128k" back.raw
qemu-img create -q -f qcow2 -b back.raw -F raw over-raw.qcow2 4M
qio -c "write -P 12 1M 64k" over-raw.qcow2
same_map over-raw.qcow2
same_info over-raw.qcow2

# A raw backing file whose size is not a whole number of sectors, data
# up to its last byte: qemu pads the last sector with zeros.
head -c 777777 /dev/urandom > odd.raw
qemu-img create -q -f qcow2 -b odd.raw -F raw -o cluster_size=4k odd.qcow2 2M
qio -c "write -P 2 700k 4k" odd.qcow2
same_map odd.qcow2
same_map odd.raw -f raw
truncate -s 1000003 oddhole.raw
same_map oddhole.raw -f raw

# A raw backing file that starts with the qcow2 magic is still raw
# when the overlay says so.
cp a.qcow2 looks-like-qcow2.img
qemu-img create -q -f qcow2 -b looks-like-qcow2.img -F raw fake.qcow2 4M
same_map fake.qcow2

# Relative backing names resolve against the overlay's directory, not
# the current one; the chain is listed in info as resolved.
mkdir sub
qemu-img create -q -f qcow2 sub/low.qcow2 2M
qio -c "write -P 1 0 1M" sub/low.qcow2
qemu-img create -q -f qcow2 -b low.qcow2 -F qcow2 sub/high.qcow2 2M
qio -c "write -P 2 512k 64k" sub/high.qcow2
same_map sub/high.qcow2
same_info sub/high.qcow2
sparsecow info --json sub/high.qcow2 | python3 -c '
import json, sys
chain = json.load(sys.stdin)["sparsecow"]["backing-chain"]
assert [c["filename"] for c in chain] == ["sub/low.qcow2"], chain
assert [c["format"] for c in chain] == ["qcow2"], chain' ||
  fail "backing chain of sub/high.qcow2 not resolved against sub/"

# Preallocated images: qemu then looks through data clusters into the
# holes of the host file, and map must follow it.
for prealloc in metadata falloc; do
  qemu-img create -q -f qcow2 -o preallocation=$prealloc pre-$prealloc.qcow2 4M
  qio -c "write -P 1 1M 64k" -c "write -z 2M 64k" pre-$prealloc.qcow2
  same_map pre-$prealloc.qcow2
  same_info pre-$prealloc.qcow2
done

# Version 2, small clusters, zstd, 1-bit refcounts, lazy refcounts.
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 2M
qio -c "write -P 1 0 100k" -c "write -c -P 2 1M 64k" v2.qcow2
same_map v2.qcow2
same_info v2.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4k,refcount_bits=1,lazy_refcounts=on,compression_type=zstd \
  opts.qcow2 3M
qio -c "write -P 1 4k 100k" -c "write -c -P 2 1M 64k" -c "write -z 2M 8k" \
  opts.qcow2
same_map opts.qcow2
same_info opts.qcow2

# Extended L2: subclusters allocated, zeroed and unallocated inside one
# cluster.
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k x.qcow2 2M
qio -c "write -P 1 0 4k" -c "write -P 2 8k 4k" -c "write -z 32k 16k" \
    -c "write -z 256k 8k" -c "write -c -P 3 1M 64k" x.qcow2
same_map x.qcow2
same_info x.qcow2

# External data files, raw and not.
qemu-img create -q -f qcow2 -o data_file=df.data df.qcow2 4M
qio -c "write -P 1 64k 200k" -c "write -z 1M 64k" df.qcow2
same_map df.qcow2
same_info df.qcow2
qemu-img create -q -f qcow2 -o data_file=dfr.data,data_file_raw=on dfr.qcow2 4M
qio -c "write -P 1 64k 200k" dfr.qcow2
same_map dfr.qcow2
same_info dfr.qcow2

# Internal snapshots show in info.
qemu-img snapshot -c first a.qcow2
qemu-img snapshot -c second a.qcow2
same_info a.qcow2
same_map a.qcow2

# Empty images and raw files.
qemu-img create -q -f qcow2 empty.qcow2 0
same_map empty.qcow2
truncate -s 0 empty.raw
same_map empty.raw -f raw
truncate -s 1M sparse.raw
dd if=/dev/urandom of=sparse.raw bs=4k count=3 seek=20 conv=notrunc status=none
same_map sparse.raw -f raw

# Cost follows data: an 8 TiB image with an empty L1 maps instantly.
qemu-img create -q -f qcow2 big.qcow2 8T
qio -c "write -P 1 5T 64k" big.qcow2
timeout 10 qemu-img map --output=json big.qcow2 > big.qmap
timeout 5 "$SPARSECOW" map --json big.qcow2 > big.smap ||
  fail "map of an 8 TiB image did not finish quickly"
diff -u big.qmap big.smap || fail "map of big.qcow2 differs"

# ---- malformed and unsupported images -----------------------------------

# poke FILE OFFSET HEX-BYTES...: overwrite bytes in place.
poke () {
  local f=$1 off=$2; shift 2
  local b s=""
  for b in "$@"; do s+="\\x$b"; done
  printf "$s" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}

bad () {
  local pattern=$1 img=$2
  expect_fail "$pattern" sparsecow info "$img"
  expect_fail "$pattern" sparsecow map --json "$img"
}

# damaged PATTERN IMAGE: as bad, but info shows what qemu-img info
# shows of the image.
damaged () {
  local pattern=$1 img=$2
  info_as_qemu "$pattern" "$img"
  expect_fail "$pattern" sparsecow map --json "$img"
}

fresh () {
  qemu-img create -q -f qcow2 "$1" 4M
  qio -c "write -P 1 0 128k" "$1"
}

fresh ok.qcow2

cp ok.qcow2 trunc-hdr.qcow2
truncate -s 60 trunc-hdr.qcow2
bad "trunc-hdr.qcow2: .*too small" trunc-hdr.qcow2

# Cut inside the L1/refcount tables (the file ends before them).
cp ok.qcow2 trunc.qcow2
truncate -s 70000 trunc.qcow2
damaged "trunc.qcow2: .*(beyond the end|outside the file)" trunc.qcow2

cp ok.qcow2 magic.qcow2
poke magic.qcow2 0 51 46 49 00
expect_fail "magic.qcow2: not a qcow2 image" sparsecow info magic.qcow2

cp ok.qcow2 version.qcow2
poke version.qcow2 4 00 00 00 04
bad "version.qcow2: unsupported qcow2 version 4" version.qcow2

cp ok.qcow2 cbits.qcow2
poke cbits.qcow2 20 00 00 00 1e
bad "cbits.qcow2: invalid cluster_bits 30" cbits.qcow2

cp ok.qcow2 l1huge.qcow2
poke l1huge.qcow2 36 ff ff ff ff
bad "l1huge.qcow2: L1 table too large" l1huge.qcow2

# A virtual size the L1 table cannot cover.
cp ok.qcow2 l1small.qcow2
poke l1small.qcow2 24 00 00 10 00 00 00 00 00
bad "l1small.qcow2: L1 table .* too small" l1small.qcow2

cp ok.qcow2 l1align.qcow2
poke l1align.qcow2 40 00 00 00 00 00 03 02 00
bad "l1align.qcow2: L1 table offset .* not aligned" l1align.qcow2

cp ok.qcow2 rtbig.qcow2
poke rtbig.qcow2 56 00 01 00 00
bad "rtbig.qcow2: refcount table too large" rtbig.qcow2

cp ok.qcow2 hlen.qcow2
poke hlen.qcow2 100 00 00 00 6c
bad "hlen.qcow2: invalid header_length 108" hlen.qcow2

cp ok.qcow2 rorder.qcow2
poke rorder.qcow2 96 00 00 00 07
bad "rorder.qcow2: invalid refcount_order 7" rorder.qcow2

cp ok.qcow2 snaps.qcow2
poke snaps.qcow2 60 00 01 00 01
bad "snaps.qcow2: too many snapshots" snaps.qcow2

cp ok.qcow2 incompat.qcow2
poke incompat.qcow2 72 80
bad "incompat.qcow2: unknown incompatible feature bits 0x8000000000000000" \
  incompat.qcow2

# The corrupt bit: shown by info and map, as by qemu-img (which opens
# such an image read-only); its data is not copied.
cp ok.qcow2 corrupt.qcow2
poke corrupt.qcow2 79 02
sparsecow info --json corrupt.qcow2 | grep -q '"corrupt": true' ||
  fail "corrupt bit not reported"
same_map corrupt.qcow2
expect_fail "corrupt.qcow2: image is marked corrupt" \
  sparsecow unpack corrupt.qcow2 corrupt.raw

# The dirty bit alone is fine for reading.
cp ok.qcow2 dirty.qcow2
poke dirty.qcow2 79 01
sparsecow info --json dirty.qcow2 | grep -q '"dirty-flag": true' ||
  fail "dirty bit not reported"
same_map dirty.qcow2

# zstd compression type without the feature bit, and the other way.
cp ok.qcow2 ctype.qcow2
poke ctype.qcow2 104 01
bad "ctype.qcow2: compression type 1 does not match" ctype.qcow2
cp ok.qcow2 ctype2.qcow2
poke ctype2.qcow2 104 05
bad "ctype2.qcow2: unknown compression type 5" ctype2.qcow2

# A backing file name that is too long or outside the first cluster.
qemu-img create -q -f qcow2 -b ok.qcow2 -F qcow2 bk.qcow2 4M
cp bk.qcow2 bklen.qcow2
poke bklen.qcow2 16 00 00 08 00
bad "bklen.qcow2: invalid backing file name length 2048" bklen.qcow2
cp bk.qcow2 bkoff.qcow2
poke bkoff.qcow2 8 00 00 00 00 00 00 ff fc
bad "bkoff.qcow2: backing file name .* not inside the first cluster" bkoff.qcow2

# A missing backing file, and a chain that loops.
qemu-img create -q -f qcow2 -b gone.qcow2 -F qcow2 -u nobk.qcow2 4M
# qemu-img info does not open the backing file: info shows the image
# and says what is missing; map needs the chain and fails.
sparsecow info nobk.qcow2 >nobk.out 2>nobk.err || fail "info nobk.qcow2"
grep -q "nobk.qcow2: backing file .*gone.qcow2" nobk.err ||
  fail "info nobk.qcow2 does not name gone.qcow2: $(cat nobk.err)"
grep -q "^backing file: gone.qcow2" nobk.out || fail "info nobk.qcow2"
expect_fail "nobk.qcow2: backing file .*gone.qcow2" \
  sparsecow map --json nobk.qcow2
expect_fail "nobk.qcow2: backing file .*gone.qcow2" \
  sparsecow info --backing-chain nobk.qcow2
qemu-img create -q -f qcow2 loopa.qcow2 1M
qemu-img create -q -f qcow2 -b loopa.qcow2 -F qcow2 loopb.qcow2 1M
qemu-img rebase -u -b loopb.qcow2 -F qcow2 loopa.qcow2
expect_fail "loopb.qcow2: .*loops" sparsecow map --json loopb.qcow2
expect_fail "loopb.qcow2: .*loops" sparsecow info --backing-chain loopb.qcow2
sparsecow info loopb.qcow2 >/dev/null 2>loop.err || fail "info loopb.qcow2"
grep -q "loopb.qcow2: .*loops" loop.err || fail "info loopb.qcow2: no loop"

# An L1 entry with reserved bits, an L2 table outside the file, and an
# L2 entry with reserved bits (found when the table is read).
l1=$(od -An -tu8 --endian=big -j40 -N8 ok.qcow2 | tr -d ' ')
cp ok.qcow2 l1res.qcow2
poke l1res.qcow2 "$l1" 01
damaged "l1res.qcow2: L1 entry 0 .* reserved bits" l1res.qcow2
cp ok.qcow2 l1out.qcow2
poke l1out.qcow2 "$l1" 00 00 00 00 10 00 00 00
damaged "l1out.qcow2: L1 entry 0: the L2 table at host offset 268435456 lies past the end of the file .*cut short" l1out.qcow2
# The L2 table offset of L1 entry 0, without the COPIED flag.
l2=$(python3 -c 'import struct, sys
f = open(sys.argv[1], "rb"); f.seek(int(sys.argv[2]))
print(struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00)' ok.qcow2 "$l1")
cp ok.qcow2 l2res.qcow2
poke l2res.qcow2 $((l2 + 8)) 00 00 00 00 00 00 00 02
damaged "l2res.qcow2: .*L2 entry .* reserved bits" l2res.qcow2

# 65 backing files (once the limit) are read; tests/hostile-chain.sh
# reads 1024 and refuses 1025.
qemu-img create -q -f qcow2 deep0.qcow2 1M
for i in $(seq 1 65); do
  qemu-img create -q -f qcow2 -u -b deep$((i - 1)).qcow2 -F qcow2 deep$i.qcow2 1M
done
sparsecow map --json deep65.qcow2 > /dev/null || fail "65 backing files refused"

# Encryption is shown by info (tests/cli-info-json.sh compares it with
# qemu-img info), and the data is refused, not misread.
if qemu-img create -q -f qcow2 -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.hash-alg=sha512 \
     --object secret,id=sec0,data=abc enc.qcow2 1M 2>/dev/null; then
  sparsecow info enc.qcow2 | grep -q "^encrypted: yes$" ||
    fail "info does not show enc.qcow2 as encrypted"
  expect_fail "enc.qcow2: the image is encrypted \(LUKS\): encrypted images are not supported" \
    sparsecow map --json enc.qcow2
fi

# A qcow2 magic followed by garbage, of several sizes, is refused
# cleanly (expect_fail also catches crashes).
for n in 0 4 68 100 4096 65536; do
  { printf 'QFI\xfb'; head -c "$n" /dev/urandom; } > rnd.img
  expect_fail "rnd.img: " sparsecow map --json rnd.img
  expect_fail "rnd.img: " sparsecow info rnd.img
done

exit 0
