#!/usr/bin/env bash
# sparsecow refuses what it cannot read correctly, with a message that
# says why: encrypted images, unknown incompatible features, images
# marked corrupt, impossible headers.  And no input makes unpack, map or
# info crash or hang: 300 deterministic random corruptions of the
# metadata clusters of small images.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
. "$srcdir/reader-functions.sh"
requires qemu-img qemu-io python3 timeout cmp jq

if [ "$READER_ORACLE" = qemu ]; then
  echo "$0: SKIP: checks sparsecow's own refusals"
  exit 77
fi

cd "$tmp"

# refuse PATTERN IMAGE: unpack and map fail with a message matching
# PATTERN and leave no target; info does not crash.
refuse () {
  local pattern=$1 img=$2
  expect_fail "$pattern" rd_sparsecow unpack "$img" refused.raw
  [ ! -e refused.raw ] || fail "failed unpack of $img left refused.raw behind"
  expect_fail "$pattern" rd_sparsecow unpack "$img" -
  [ "${map_shows:-}" ] ||
    expect_fail "$pattern" rd_sparsecow map --json "$img"
  rd_sparsecow info --json "$img" >/dev/null || :
}

# Encrypted: LUKS, and the legacy AES scheme.
luks_image enc.qcow2 1M
refuse "[Ee]ncrypt" enc.qcow2
if qemu-img create -q -f qcow2 --object secret,id=sec0,data=abc \
     -o encrypt.format=aes,encrypt.key-secret=sec0 aes.qcow2 1M 2>/dev/null; then
  refuse "[Ee]ncrypt" aes.qcow2
fi

# Header fields: byte 72 incompatible features (v3), 32..35 the crypt
# method in every version.
qemu-img create -q -f qcow2 plain.qcow2 1M
qio plain.qcow2 "write -P 0x11 0 64k"

cp plain.qcow2 unknown-bit.qcow2
set_header_bit unknown-bit.qcow2 72 10
qemu-img info -f qcow2 unknown-bit.qcow2 >/dev/null 2>&1 && fail "test setup: qemu-img accepts bit 10"
refuse "[Ii]ncompatible" unknown-bit.qcow2

cp plain.qcow2 high-bit.qcow2
set_header_bit high-bit.qcow2 72 63
refuse "[Ii]ncompatible" high-bit.qcow2

cp plain.qcow2 corrupt.qcow2
set_header_bit corrupt.qcow2 72 1
# Marked corrupt: no data is copied, but map shows it, as qemu-img map.
map_shows=1 refuse "[Cc]orrupt" corrupt.qcow2
rd_sparsecow map --json corrupt.qcow2 >/dev/null ||
  fail "map refuses an image marked corrupt, which qemu-img map shows"

# Impossible headers.
patch () {   # patch FILE OFFSET HEXBYTES
  printf "$(sed 's/../\\x&/g' <<<"$3")" |
    dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
cp plain.qcow2 magic.qcow2;   patch magic.qcow2 0 51464900           # "QFI\0"
cp plain.qcow2 v1.qcow2;      patch v1.qcow2 4 00000001
cp plain.qcow2 v4.qcow2;      patch v4.qcow2 4 00000004
cp plain.qcow2 cb8.qcow2;     patch cb8.qcow2 20 00000008           # 256 B clusters
cp plain.qcow2 cb31.qcow2;    patch cb31.qcow2 20 0000001f          # 2 GiB clusters
cp plain.qcow2 l1off.qcow2;   patch l1off.qcow2 40 0000100000000000 # L1 far past EOF
cp plain.qcow2 l1odd.qcow2;   patch l1odd.qcow2 40 0000000000030001 # unaligned L1
cp plain.qcow2 l1big.qcow2;   patch l1big.qcow2 36 7fffffff         # huge L1
cp plain.qcow2 l1zero.qcow2;  patch l1zero.qcow2 40 0000000000000000 # L1 over header
cp plain.qcow2 size.qcow2;    patch size.qcow2 24 00ffffffffffffff  # L1 too small
cp plain.qcow2 rorder.qcow2;  patch rorder.qcow2 96 00000007        # 128-bit refcounts
cp plain.qcow2 hlen.qcow2;    patch hlen.qcow2 100 00000050         # header_length < 104
cp plain.qcow2 ctype.qcow2;   patch ctype.qcow2 104 07              # compression type 7
cp plain.qcow2 oddsize.qcow2; patch oddsize.qcow2 24 00000000000f4241 # 1000001 bytes
head -c 50 plain.qcow2 > short.qcow2
: > empty.qcow2
# Each case says what qemu-img convert does with the image (reads or
# refuses it) and what sparsecow does: reads it as qemu-img does, or
# refuses it with the message given.  qemu-img reads an L1 table past the
# end of the file as zeros (l1off) and an L1 table at offset 0 as the
# header's bytes (l1zero): sparsecow refuses both, on purpose.  A size
# that is not a multiple of 512 (oddsize) both read rounded down.  map
# also reads raw files, so the two without the qcow2 magic (magic,
# empty) are mapped as raw, and every other one is refused there too.
while read -r f qemu msg; do
  qrc=0
  qemu-img convert -q -f qcow2 -O raw $f.qcow2 judge.raw 2>/dev/null || qrc=$?
  case $qemu in
    reads) [ $qrc = 0 ] || fail "test setup: qemu-img does not read $f.qcow2" ;;
    refuses) [ $qrc = 1 ] || fail "test setup: qemu-img convert $f.qcow2: exit $qrc, not 1" ;;
    *) fail "test setup: $f: qemu-img $qemu" ;;
  esac
  if [ "$msg" = reads ]; then
    rd_sparsecow unpack $f.qcow2 $f.raw || fail "unpack $f.qcow2 failed"
    cmp judge.raw $f.raw || fail "unpack $f.qcow2 differs from qemu-img convert"
    rd_sparsecow map --json $f.qcow2 >/dev/null || fail "map $f.qcow2 failed"
    rm -f judge.raw $f.raw
    continue
  fi
  rm -f judge.raw
  expect_fail "^sparsecow: $f\.qcow2: $msg\$" rd_sparsecow unpack $f.qcow2 $f.raw
  [ ! -e $f.raw ] || fail "failed unpack of $f.qcow2 left $f.raw behind"
  case $f in
    magic|empty) rd_sparsecow map --json $f.qcow2 >/dev/null ||
                   fail "map $f.qcow2 (a raw file) failed" ;;
    *) expect_fail "^sparsecow: $f\.qcow2: $msg\$" rd_sparsecow map --json $f.qcow2 ;;
  esac
done <<'EOF'
magic   refuses not a qcow2 image \(bad magic\)
v1      refuses unsupported qcow2 version 1
v4      refuses unsupported qcow2 version 4
cb8     refuses invalid cluster_bits 8 \(must be 9 to 21\)
cb31    refuses invalid cluster_bits 31 \(must be 9 to 21\)
l1off   reads   L1 table \(offset 0x100000000000, 8 bytes\) lies beyond the end of the file \([0-9]+ bytes\)
l1odd   refuses L1 table offset 0x30001 is not aligned to a cluster
l1big   refuses L1 table too large \(2147483647 entries, at most 4194304\)
l1zero  reads   L1 table offset 0 overlaps the header
size    refuses L1 table \(1 entries\) too small for the virtual size 72057594037927935
rorder  refuses invalid refcount_order 7 \(must be 0 to 6\)
hlen    refuses invalid header_length 80 \(must be at least 104 and a multiple of 8\)
ctype   refuses unknown compression type 7
oddsize reads   reads
short   refuses file too small to be a qcow2 image \(50 bytes\)
empty   refuses not a qcow2 image \(bad magic\)
EOF

# L2 entries: qemu reads a data cluster past the end of the file as
# zeros; sparsecow refuses to unpack it (its data is lost, not zero) but
# maps it as qemu-img map does.  qemu refuses an unaligned host offset.
l2=$(python3 - plain.qcow2 <<'EOF'
import struct, sys
b = open(sys.argv[1], "rb").read()
l1_off = struct.unpack(">Q", b[40:48])[0]
print(struct.unpack(">Q", b[l1_off:l1_off + 8])[0] & 0x00fffffffffffe00)
EOF
)
cp plain.qcow2 l2eof.qcow2
patch l2eof.qcow2 "$l2" 8000100000000000
expect_fail "l2eof.qcow2: data cluster at host offset 17592186044416 lies (partly )?past the end of the file .*cut short" \
  rd_sparsecow unpack l2eof.qcow2 l2eof.raw
[ ! -e l2eof.raw ] || fail "failed unpack of l2eof.qcow2 left l2eof.raw behind"
rd_sparsecow map --json l2eof.qcow2 | jq -c '.[0] | [.start, .zero, .offset]' \
  > l2eof.smap
qemu-img map --output=json l2eof.qcow2 | jq -c '.[0] | [.start, .zero, .offset]' \
  > l2eof.qmap
cmp l2eof.qmap l2eof.smap || fail "map of l2eof.qcow2 differs from qemu-img map"

# An image cut short, as by an interrupted download: qemu-img reads the
# missing clusters as zeros; unpack and re-pack refuse with the offset.
qemu-img create -q -f qcow2 cut.qcow2 8M
qio cut.qcow2 "write -P 0x61 0 2M" "write -P 0x62 6M 1M"
head -c $(( $(stat -c %s cut.qcow2) - 512 * 1024 )) cut.qcow2 > cut-short.qcow2
qemu-img convert -q -f qcow2 -O raw cut-short.qcow2 judge.raw ||
  fail "test setup: qemu-img does not read cut-short.qcow2"
rm -f judge.raw
expect_fail "cut-short.qcow2: data cluster at host offset [0-9]+ lies (partly )?past the end of the file .*cut short" \
  rd_sparsecow unpack cut-short.qcow2 cut.raw
[ ! -e cut.raw ] || fail "failed unpack of cut-short.qcow2 left cut.raw behind"
# Cut inside the last data cluster: the rest of that cluster is missing.
head -c $(( $(stat -c %s cut.qcow2) - 1000 )) cut.qcow2 > cut-part.qcow2
expect_fail "cut-part.qcow2: data cluster at host offset [0-9]+ lies partly past the end of the file .*cut short" \
  rd_sparsecow unpack cut-part.qcow2 cut.raw
[ ! -e cut.raw ] || fail "failed unpack of cut-part.qcow2 left cut.raw behind"
expect_fail "cut short" rd_sparsecow pack cut-short.qcow2 cut2.qcow2
[ ! -e cut2.qcow2 ] || fail "failed pack of cut-short.qcow2 left cut2.qcow2 behind"
expect_fail "data cluster at host offset [0-9]+ lies past the end" sh -c "cat cut-short.qcow2 | $SPARSECOW unpack - cut.raw"
cp plain.qcow2 l2odd.qcow2
patch l2odd.qcow2 "$l2" 8000000000030200
qemu-img convert -q -f qcow2 -O raw l2odd.qcow2 judge.raw 2>/dev/null &&
  fail "test setup: qemu-img reads l2odd.qcow2"
expect_fail "^sparsecow: l2odd\.qcow2: L2 table at host offset $l2, entry 0 \(guest offset 0\): L2 entry 0x8000000000030200: host offset is not aligned to a cluster$" \
  rd_sparsecow unpack l2odd.qcow2 l2odd.raw
[ ! -e l2odd.raw ] || fail "failed unpack of l2odd.qcow2 left l2odd.raw behind"

# Fuzzing: 300 corrupted images, from two small images with every kind
# of metadata in their first clusters.  Nothing may crash or hang; where
# both qemu-img and sparsecow read an image, they must read the same.
mkdir fuzz
cd fuzz
qemu-img create -q -f raw fz-base.raw 1M
qemu-io -f raw -c "write -P 0x5a 0 1M" fz-base.raw >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4096,refcount_bits=4 fz-a.qcow2 1M
qio fz-a.qcow2 "write -P 0x01 0 8k" "write -c -P 0x02 16k 4k" "write -c -P 0x03 20k 4k" \
               "write -z 24k 4k" "write -P 0x04 1020k 4k"
qemu-img snapshot -c snap fz-a.qcow2
qio fz-a.qcow2 "write -P 0x05 4k 4k"
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 -b fz-base.raw -F raw fz-b.qcow2
qio fz-b.qcow2 "write -P 0x06 0 2k" "write -c -P 0x07 4k 512" "write -P 0x08 1047552 1024"
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16384 fz-c.qcow2 1M
qio fz-c.qcow2 "write -P 0x09 0 1k" "write -z 2k 1k" "write -c -P 0x0a 32k 16k"

# READER_FUZZ_SEED and READER_FUZZ_COUNT run other or more corruptions.
: "${READER_FUZZ_SEED:=1123}" "${READER_FUZZ_COUNT:=300}"
python3 - "$READER_FUZZ_SEED" "$READER_FUZZ_COUNT" <<'EOF'
import random, struct, sys
rng = random.Random(int(sys.argv[1]))
bases = [("fz-a.qcow2", 4096), ("fz-b.qcow2", 512), ("fz-c.qcow2", 16384)]
specials = [0, 1, 0x200, 0x1000, 0x7fffffff, 0xffffffff, 1 << 62, 1 << 63,
            (1 << 63) | (1 << 62), 0xffffffffffffffff, 0x00fffffffffffe00]
for n in range(int(sys.argv[2])):
    name, cs = bases[n % len(bases)]
    b = bytearray(open(name, "rb").read())
    # The first clusters hold the header, refcount table and blocks, L1,
    # L2 tables, snapshot table; a quarter of the hits go to the header.
    region = min(len(b), max(8 * cs, 16384))
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.25:
            pos = rng.randrange(0, 112)
        else:
            pos = rng.randrange(0, region)
        r = rng.random()
        if r < 0.5:
            b[pos] = rng.randrange(256)
        elif r < 0.7:
            b[pos] ^= 1 << rng.randrange(8)
        else:
            pos &= ~7
            v = rng.choice(specials)
            if rng.random() < 0.3:
                v = struct.unpack(">Q", bytes(b[pos:pos + 8]).ljust(8, b"\0"))[0] + rng.choice([-512, 512, cs, -cs])
                v &= 0xffffffffffffffff
            b[pos:pos + 8] = struct.pack(">Q", v)
    open("f%03d.qcow2" % n, "wb").write(b)
EOF

# One pass over every image whose number is PART modulo 2 (two run in
# parallel); problems are appended to problems.PART.  The images are the
# same in every run; set READER_KEEP=DIR to get copies of the bad ones.
fuzz_part () {
  local part=$1 n f cmd rc
  local err=$tmp/fz.err.$part out=out.$part.raw ref=ref.$part.raw
  # 10 s is plenty for a 1 MiB image, but not under valgrind.
  local limit=10
  [ -z "$SC_VALGRIND" ] || limit=120
  for ((n = part; n < READER_FUZZ_COUNT; n += 2)); do
    f=$(printf f%03d.qcow2 $n)
    for cmd in unpack map info; do
      rc=0
      case $cmd in
        unpack) timeout $limit $SC_VALGRIND "$SPARSECOW" unpack "$f" $out >/dev/null 2>"$err" || rc=$? ;;
        *) timeout $limit $SC_VALGRIND "$SPARSECOW" $cmd --json "$f" >/dev/null 2>"$err" || rc=$? ;;
      esac
      if [ $rc -ge 124 ] || { [ -n "$SC_VALGRIND" ] && [ $rc = 119 ]; } || grep -q "AddressSanitizer\|runtime error\|LeakSanitizer" "$err"; then
        echo "$f: sparsecow $cmd: exit $rc: $(head -c 300 "$err")" >> problems.$part
        [ -z "${READER_KEEP:-}" ] || cp "$f" "$READER_KEEP/"
      elif [ $cmd = unpack ] && [ $rc = 0 ]; then
        if qemu-img convert -q -f qcow2 -O raw "$f" $ref 2>/dev/null &&
           ! cmp -s $ref $out; then
          echo "$f: qemu-img convert and sparsecow unpack both read it, but differently" >> problems.$part
          [ -z "${READER_KEEP:-}" ] || cp "$f" "$READER_KEEP/"
        fi
      elif [ $cmd = unpack ] && [ -e $out ]; then
        echo "$f: failed unpack left its target behind" >> problems.$part
      fi
      rm -f $out $ref
    done
  done
}
: > problems.0; : > problems.1
fuzz_part 0 & pid0=$!
fuzz_part 1 & pid1=$!
wait $pid0; wait $pid1
if [ -s problems.0 ] || [ -s problems.1 ]; then
  cat problems.0 problems.1 >&2
  soft_fail "$(cat problems.0 problems.1 | wc -l) problems in $READER_FUZZ_COUNT corrupted images (seed $READER_FUZZ_SEED)"
fi
