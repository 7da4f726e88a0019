# Shared by the tests of hostile input (tests/hostile-*.sh): source it
# after functions.sh.  Images are made by qemu-img and qemu-io, then
# damaged by a few bytes written with python3.

# The host offset of L2 table number L1INDEX (default 0) of an image.
l2_table () {
  python3 - "$1" "${2:-0}" <<'PYEOF'
import struct, sys
b = open(sys.argv[1], "rb").read()
l1 = struct.unpack(">Q", b[40:48])[0] + 8 * int(sys.argv[2])
print(struct.unpack(">Q", b[l1:l1 + 8])[0] & 0x00fffffffffffe00)
PYEOF
}

# A big-endian field of an image: be_get FILE OFFSET BYTES, and
# be_put FILE OFFSET BYTES VALUE (in place).
be_get () {
  python3 -c 'import sys
b = open(sys.argv[1], "rb").read()[int(sys.argv[2]):int(sys.argv[2]) + int(sys.argv[3])]
print(int.from_bytes(b, "big"))' "$@"
}
be_put () {
  python3 -c 'import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2]))
    f.write((int(sys.argv[4], 0) % (1 << 64)).to_bytes(int(sys.argv[3]), "big"))' "$@"
}
# be_or FILE OFFSET BYTES MASK: set the bits of MASK in a field.
be_or () {
  python3 -c 'import sys
n, off = int(sys.argv[3]), int(sys.argv[2])
with open(sys.argv[1], "r+b") as f:
    f.seek(off)
    v = int.from_bytes(f.read(n), "big") | int(sys.argv[4], 0)
    f.seek(off)
    f.write(v.to_bytes(n, "big"))' "$@"
}

# refused PATTERN IMAGE: unpack (to a file, to a pipe, and from a pipe
# when the image can be read in one pass), map and info fail with a
# message matching the extended regex PATTERN, and no target is left.
refused () {
  local pattern=$1 img=$2
  expect_fail "$pattern" sparsecow unpack "$img" "$tmp/refused.raw"
  [ ! -e "$tmp/refused.raw" ] || fail "failed unpack of $img left its target"
  expect_fail "$pattern" sparsecow unpack "$img" -
  expect_fail "$pattern" sparsecow map --output=json "$img"
  info_as_qemu "$pattern" "$img"
}

# refused_stream PATTERN IMAGE: unpack from a pipe fails so too.
refused_stream () {
  expect_fail "$1" sh -c "cat '$2' | $SC_VALGRIND $SPARSECOW unpack - '$tmp/refused.raw'"
  [ ! -e "$tmp/refused.raw" ] || fail "failed unpack of stdin ($2) left its target"
}

# check_reports PATTERN IMAGE [QEMU-EXIT]: sparsecow check exits 2 and
# prints a problem matching PATTERN; qemu-img check exits QEMU-EXIT
# (its verdict, which the test records: where it is 0, qemu-img check
# does not see the damage).
check_reports () {
  local pattern=$1 img=$2 want=${3:-} qrc=0 src=0
  qemu-img check "$img" >/dev/null 2>&1 || qrc=$?
  if [ -n "$want" ] && [ "$qrc" != "$want" ]; then
    fail "$img: qemu-img check exited $qrc, not $want: the test is wrong"
  fi
  sparsecow check "$img" >"$tmp/check.out" 2>"$tmp/check.err" || src=$?
  [ "$src" = 2 ] || {
    cat "$tmp/check.out" "$tmp/check.err" >&2
    fail "$img: sparsecow check exited $src, not 2"; }
  grep -Eq -- "$pattern" "$tmp/check.err" || {
    cat "$tmp/check.err" >&2; fail "$img: check does not report '$pattern'"; }
  if grep -q "AddressSanitizer\|runtime error" "$tmp/check.err"; then
    cat "$tmp/check.err" >&2; fail "$img: sanitizer report from check"
  fi
  echo "$img: qemu-img check $qrc, sparsecow check $src"
}

# same_as_qemu IMAGE: sparsecow unpack reads what qemu-img convert
# reads, and both checks agree that the image is clean.
same_as_qemu () {
  local img=$1
  qemu-img convert -q -f qcow2 -O raw "$img" "$tmp/qemu.raw" ||
    fail "test setup: qemu-img cannot read $img"
  sparsecow unpack -f "$img" "$tmp/ours.raw" || fail "unpack $img failed"
  cmp "$tmp/qemu.raw" "$tmp/ours.raw" || fail "unpack $img differs from qemu-img"
  qemu-img check -q "$img" || fail "test setup: qemu-img check $img"
  sparsecow check -q "$img" || fail "sparsecow check $img is not clean"
  rm -f "$tmp/qemu.raw" "$tmp/ours.raw"
}
