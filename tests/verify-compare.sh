#!/usr/bin/env bash
# verify A B: one changed byte at the start, in the middle, at the last
# byte and inside a hole (data on one side, a hole on the other), equal
# content, and sizes that differ, between raw files, qcow2 images and
# NBD exports.  qemu-img compare decides equal or different and where:
# it reports the 512-byte sector of the first difference, sparsecow the
# byte, which the test also knows, having changed it.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-nbd python3

cd "$tmp"
MiB=$((1024 * 1024))
size=$((8 * MiB))

# base.raw: data [0, 1M), hole, data [2M, 4M), hole [4M, 7M), data
# [7M, 8M) up to the last byte.  Data bytes are never zero, so that
# writing a zero byte changes the content.
python3 - "$size" <<'EOF'
import sys
size = int(sys.argv[1])
MiB = 1024 * 1024
pattern = bytes((i * 7 + 3) % 251 + 1 for i in range(MiB))
with open("base.raw", "wb") as f:
    f.truncate(size)
    for start, end in ((0, 1), (2, 4), (7, 8)):
        for m in range(start, end):
            f.seek(m * MiB)
            f.write(pattern)
EOF

# variant NAME OFFSET BYTE: a copy of base.raw with one byte written.
variant () {
  cp --sparse=always base.raw "$1.raw"
  printf "\\x$3" | dd of="$1.raw" bs=1 seek="$2" conv=notrunc status=none
}

# qemu_offset A B: the offset qemu-img compare reports in q (empty if
# equal), and its exit status in qrc.
qemu_offset () {
  qrc=0
  qemu-img compare "$@" >qemu.out || qrc=$?
  q=$(sed -n 's/^Content mismatch at offset \([0-9]*\)!$/\1/p' qemu.out)
}

# expect_differ A B BYTE-OFFSET [QEMU-A QEMU-B]: both tools say the
# contents differ, sparsecow at the byte, qemu-img at its sector.
expect_differ () {
  local a=$1 b=$2 byte=$3 qa=${4:-$1} qb=${5:-$2}
  local rc=0 out q
  out=$(sparsecow verify "$a" "$b") || rc=$?
  qemu_offset "$qa" "$qb"
  [ "$qrc" = 1 ] || fail "qemu-img compare $qa $qb: status $qrc, not 1"
  [ "$rc" = 1 ] || fail "verify $a $b: status $rc, not 1 ($out)"
  grep -q "differ at offset $byte\$" <<<"$out" ||
    fail "verify $a $b: '$out', expected offset $byte"
  [ "$q" = $((byte / 512 * 512)) ] ||
    fail "verify $a $b: byte $byte is not in qemu-img's sector $q"
}

expect_equal () {
  local a=$1 b=$2 qa=${3:-$1} qb=${4:-$2}
  local rc=0 out
  qemu-img compare -q "$qa" "$qb" ||
    fail "qemu-img compare $qa $qb: not equal"
  out=$(sparsecow verify "$a" "$b") || rc=$?
  [ "$rc" = 0 ] || fail "verify $a $b: status $rc, not 0 ($out)"
}

# The changes: (name offset byte).
changes=(
  "start 0 00"
  "middle $((3 * MiB + 12345)) 00"
  "last $((size - 1)) 00"
  "hole $((5 * MiB + 999)) 5a"
)
qemu-img convert -f raw -O qcow2 base.raw base.qcow2
for c in "${changes[@]}"; do
  read -r name off byte <<<"$c"
  variant "$name" "$off" "$byte"
  qemu-img convert -f raw -O qcow2 "$name.raw" "$name.qcow2"
  # raw against raw, both ways round
  expect_differ base.raw "$name.raw" "$off"
  expect_differ "$name.raw" base.raw "$off"
  # qcow2 against raw, and qcow2 against qcow2
  expect_differ base.qcow2 "$name.raw" "$off"
  expect_differ "$name.qcow2" base.raw "$off"
  expect_differ base.qcow2 "$name.qcow2" "$off"
done

# In the hole, the changed side holds data and the other a hole.
[ "$(qemu-img map --output=json hole.qcow2 | python3 -c '
import json, sys
print(any(e["data"] and e["start"] <= 5 * 2**20 + 999 < e["start"] + e["length"]
          for e in json.load(sys.stdin)))')" = True ] ||
  fail "hole.qcow2 holds no data where the byte was written"

# Equal content: raw, qcow2 (compressed too), each way round.
cp --sparse=always base.raw copy.raw
qemu-img convert -f raw -O qcow2 -c base.raw copy.qcow2
expect_equal base.raw copy.raw
expect_equal base.qcow2 copy.raw
expect_equal copy.raw base.qcow2
expect_equal base.qcow2 copy.qcow2
# Zeros written as data equal a hole.
cp --sparse=always base.raw zeros.raw
dd if=/dev/zero of=zeros.raw bs=64k count=16 seek=80 conv=notrunc status=none
expect_equal base.raw zeros.raw

# An overlay: its guest content, through the backing file.
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2
expect_equal overlay.qcow2 base.raw
qemu-io -c "write -P 0 $((3 * MiB + 5)) 1" overlay.qcow2 >/dev/null
expect_differ overlay.qcow2 base.raw $((3 * MiB + 5))
expect_differ base.qcow2 overlay.qcow2 $((3 * MiB + 5))

# -F raw: the image file's own bytes, not its guest content.
rc=0; out=$(sparsecow verify -F raw base.raw base.qcow2) || rc=$?
qemu_offset -F raw base.raw base.qcow2
[ "$rc" = 1 ] && [ "$qrc" = 1 ] && [ "$q" = 0 ] &&
  grep -q "differ at offset 0\$" <<<"$out" ||
  fail "verify -F raw: status $rc, '$out'; qemu-img: $qrc at '$q'"
out=$(sparsecow verify -f raw -F raw base.qcow2 base.qcow2) ||
  fail "verify -f raw -F raw of one image: '$out'"

# An NBD export against a file: a server on a socket, and one started
# from the command line.
nbd_serve middle qemu-nbd -r -f raw middle.raw
expect_differ base.raw "$nbd_uri" $((3 * MiB + 12345)) base.raw middle.raw
nbd_serve hole qemu-nbd -r -f qcow2 hole.qcow2
expect_differ "$nbd_uri" base.qcow2 $((5 * MiB + 999)) hole.qcow2 base.qcow2
rc=0
out=$(sparsecow verify base.raw -- [ qemu-nbd -r -f raw last.raw ]) || rc=$?
[ "$rc" = 1 ] && grep -q "differ at offset $((size - 1))\$" <<<"$out" ||
  fail "verify against [ qemu-nbd ]: status $rc, '$out'"
out=$(sparsecow verify base.qcow2 -- [ qemu-nbd -r -f raw copy.raw ]) ||
  fail "verify of equal content through [ qemu-nbd ]: '$out'"
# verify only reads: one export may be both sides.
nbd_serve same nbdkit -r file middle.raw
out=$(sparsecow verify "$nbd_uri" "$nbd_uri") ||
  fail "verify of an export with itself: '$out'"

# Sizes that differ: the rest of the larger must be zeros, unless
# --strict (as qemu-img compare -s).
cp --sparse=always base.raw longer.raw
truncate -s $((size + MiB)) longer.raw
expect_equal base.raw longer.raw
expect_equal longer.raw base.qcow2
rc=0; out=$(sparsecow verify -s base.raw longer.raw) || rc=$?
qrc=0; qemu-img compare -q -s base.raw longer.raw || qrc=$?
[ "$rc" = 1 ] && [ "$qrc" = 1 ] && grep -q "differ in size" <<<"$out" ||
  fail "--strict with sizes that differ: status $rc, qemu-img $qrc, '$out'"
printf '\x01' | dd of=longer.raw bs=1 seek=$((size + 4097)) conv=notrunc \
  status=none
expect_differ base.raw longer.raw $((size + 4097))
expect_differ longer.raw base.qcow2 $((size + 4097))

# An image whose corrupt bit is set is compared, as qemu-img compare
# opens it read-only.
cp base.qcow2 corrupt.qcow2
python3 -c '
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(79); b = f.read(1)[0]; f.seek(79); f.write(bytes([b | 2]))
' corrupt.qcow2
qemu-img info --output=json corrupt.qcow2 | grep -q '"corrupt": true' ||
  fail "test setup: the corrupt bit is not set"
expect_equal base.raw corrupt.qcow2
expect_equal corrupt.qcow2 base.raw

# Errors are status 2, whatever the other operand.
rc=0; sparsecow verify base.raw missing.raw 2>err || rc=$?
[ "$rc" = 2 ] || fail "verify with a missing file: status $rc, not 2"
grep -q "missing.raw" err || fail "the error does not name missing.raw"
rc=0; sparsecow verify --bogus base.raw base.raw 2>/dev/null || rc=$?
[ "$rc" = 2 ] || fail "a usage error: status $rc, not 2"
rc=0; cat base.raw | sparsecow verify base.raw - 2>err || rc=$?
[ "$rc" = 2 ] || fail "verify from a pipe: status $rc, not 2"
exit 0
