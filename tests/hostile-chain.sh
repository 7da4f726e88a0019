#!/usr/bin/env bash
# Backing chains hundreds of images deep: a chain of 300 with data at a
# few levels unpacks, maps, packs and checks as qemu-img reads it, under
# a limit of 64 open files (backing files are closed and opened again
# as they are needed, and must then be the same files); a loop is still
# found however long it is, and a chain deeper than the limit (1024) is
# refused with a message.
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/hostile-functions.sh"
requires qemu-img qemu-io python3 cmp jq

cd "$tmp"
# chain N FIRST LAST [CREATE-OPTIONS]: images cN-FIRST ... cN-LAST, each
# backed by the one before; the first two by qemu-img, the rest copies
# of the second with the backing file name (of the same length) changed.
chain () {
  local n=$1 first=$2 last=$3; shift 3
  qemu-img create -q -f qcow2 "$@" "$(printf "c$n-%04d.qcow2" "$first")" 4M
  qemu-img create -q -f qcow2 -u "$@" -b "$(printf "c$n-%04d.qcow2" "$first")" \
    -F qcow2 "$(printf "c$n-%04d.qcow2" $((first + 1)))" 4M
  python3 - "$n" "$first" "$last" <<'PYEOF'
import sys
n, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
name = lambda i: ("c%s-%04d.qcow2" % (n, i)).encode()
tmpl = open(name(first + 1), "rb").read()
at = tmpl.index(name(first))
for i in range(first + 2, last + 1):
    open(name(i), "wb").write(tmpl[:at] + name(i - 1) + tmpl[at + len(name(i - 1)):])
PYEOF
}
chain a 0 300
qemu-io -f qcow2 -c "write -P 0x10 0 64k" -c "write -P 0x11 3M 64k" ca-0000.qcow2 >/dev/null
qemu-io -f qcow2 -c "write -P 0x20 1M 64k" -c "write -z 3M 32k" ca-0150.qcow2 >/dev/null
qemu-io -f qcow2 -c "write -c -P 0x30 2M 64k" ca-0299.qcow2 >/dev/null
qemu-io -f qcow2 -c "write -P 0x40 32k 64k" ca-0300.qcow2 >/dev/null
top=ca-0300.qcow2
[ "$(qemu-img info --backing-chain --output=json $top | jq length)" = 301 ] ||
  fail "test setup: the chain is not 301 images long"
qemu-img convert -q -O raw $top ref.raw
qemu-img map --output=json $top > qmap.json
(
  ulimit -n 64
  sparsecow unpack $top out.raw || fail "unpack of a chain of 301 images failed"
  sparsecow unpack -j 4 $top - > stdout.raw || fail "unpack -j 4 to stdout failed"
  sparsecow map --output=json $top > smap.json || fail "map failed"
  sparsecow info --output=json $top > info.json || fail "info failed"
  sparsecow pack $top packed.qcow2 || fail "pack of a chain of 301 images failed"
  sparsecow check $top > /dev/null || fail "check of the top image failed"
)
cmp ref.raw out.raw || fail "unpack differs from qemu-img convert"
cmp ref.raw stdout.raw || fail "unpack to stdout differs from qemu-img convert"
diff -u <(jq -c '.[]' qmap.json) <(jq -c '.[]' smap.json) ||
  fail "map differs from qemu-img map"
qemu-img compare -q -f raw -F qcow2 ref.raw packed.qcow2 ||
  fail "the packed chain differs from qemu-img convert"
[ "$(jq -r '."backing-filename"' info.json)" = ca-0299.qcow2 ] ||
  fail "info names another backing file"

# A backing file that is replaced while the chain is read is not read
# as the file whose tables were loaded.  25 images, each with data of
# its own: after the first lookup the top ones are closed (16 stay
# open), and reading the data of level 20 opens it again, after the
# pipe's reader has replaced it with a copy (a new inode).
qemu-img create -q -f qcow2 s00.qcow2 64M
for i in $(seq 1 24); do
  qemu-img create -q -f qcow2 -u -b "$(printf s%02d $((i - 1))).qcow2" -F qcow2 \
    "$(printf s%02d "$i").qcow2" 64M
done
for i in $(seq 0 24); do
  qemu-io -f qcow2 -c "write -P $((i + 1)) $((i * 2))M 64k" "$(printf s%02d "$i").qcow2" >/dev/null
done
rm -f rc
{ "$SPARSECOW" unpack s24.qcow2 - 2>err || echo $? > rc; } |
  { head -c 1M > /dev/null; cp s20.qcow2 new.qcow2; mv new.qcow2 s20.qcow2; cat > /dev/null; }
[ -s rc ] || fail "unpack read a backing file replaced while it was read"
grep -q "^sparsecow: s24.qcow2: backing file s20.qcow2 changed while it was read" err ||
  { cat err >&2; fail "a replaced backing file: unclear message"; }

# Loops: two images naming each other, and a loop of 201 images (level
# 100 of a chain names level 300 as its backing file).
qemu-img create -q -f qcow2 -u -b loop-b.qcow2 -F qcow2 loop-a.qcow2 4M
qemu-img create -q -f qcow2 -u -b loop-a.qcow2 -F qcow2 loop-b.qcow2 4M
qemu-img create -q -f qcow2 -u -b xelf.qcow2 -F qcow2 self.qcow2 4M
python3 - <<'PYEOF'
b = bytearray(open("self.qcow2", "rb").read())
at = b.index(b"xelf.qcow2")
b[at:at + 10] = b"self.qcow2"
open("self.qcow2", "wb").write(b)
PYEOF
chain l 99 300
python3 - <<'PYEOF'
b = bytearray(open("cl-0100.qcow2", "rb").read())
at = b.index(b"cl-0099.qcow2")
b[at:at + 13] = b"cl-0300.qcow2"
open("cl-0100.qcow2", "wb").write(b)
PYEOF
(
  ulimit -n 64
  # The image whose backing file closes the loop is named.
  expect_fail "loop-a.qcow2: backing file loop-b.qcow2: backing chain loops back to loop-a.qcow2" \
    sparsecow unpack loop-a.qcow2 loop.raw
  expect_fail "cl-0300.qcow2: backing file cl-0100.qcow2: backing chain loops back to cl-0300.qcow2" \
    sparsecow unpack cl-0300.qcow2 loop.raw
  expect_fail "^sparsecow: self.qcow2: backing chain loops back to self.qcow2\$" \
    sparsecow unpack self.qcow2 loop.raw
  expect_fail "backing chain loops back to cl-0300.qcow2" sparsecow map cl-0300.qcow2
  expect_fail "backing chain loops back to cl-0300.qcow2" \
    sparsecow info --backing-chain cl-0300.qcow2
  # As qemu-img info, info alone shows the image and says what is wrong.
  sparsecow info cl-0300.qcow2 >/dev/null 2>loop.err ||
    fail "info cl-0300.qcow2: $(cat loop.err)"
  grep -q "backing chain loops back to cl-0300.qcow2" loop.err ||
    fail "info cl-0300.qcow2 does not say the chain loops: $(cat loop.err)"
)
[ ! -e loop.raw ] || fail "a failed unpack left its target"

# The depth limit: 1024 backing files are read, 1025 are refused.
# Small clusters keep the 1026 images small.
chain b 0 1025 -o cluster_size=512
qemu-io -f qcow2 -c "write -P 0x50 0 4k" cb-0000.qcow2 >/dev/null
(
  ulimit -n 64
  sparsecow unpack cb-1024.qcow2 deep.raw || fail "a chain of 1025 images (1024 backing files) failed"
  expect_fail "cb-1025.qcow2: .*backing chain longer than 1024 images" \
    sparsecow unpack cb-1025.qcow2 deeper.raw
)
qemu-img convert -q -O raw cb-0000.qcow2 deep-ref.raw
cmp deep-ref.raw deep.raw || fail "the chain of 1025 images reads wrong"
exit 0
