#!/usr/bin/env bash
# A backing file that is missing, unreadable, or changed size since the
# overlay was made.  Missing and unreadable: unpack (to a file and to
# a pipe), re-pack, map and info --backing-chain fail with a message
# that names the backing file and says why, leave no target and no
# temporary file, and leave the overlay as it was.  Changed size: the
# qcow2 format records no size of the backing file, so what a raw
# backing file holds now is read, as qemu-img reads it (past its end,
# zeros): unpack and re-pack agree with qemu-img convert.  A qcow2
# backing file cut short is refused naming it and the offset (qemu-img
# reads zeros there, as for any image cut short).
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires qemu-img qemu-io md5sum cmp

cd "$tmp"
mkdir spill out
export TMPDIR=$tmp/spill

# refused PATTERN OVERLAY [data]: every reader of OVERLAY fails naming
# PATTERN; with "data", those that read data (map and info need the
# tables only, and show a missing data cluster as qemu-img does).
refused () {
  local pattern=$1 img=$2 only=${3:-} sum
  sum=$(md5sum < "$img")
  expect_fail "$pattern" sparsecow unpack "$img" out/o.raw
  expect_fail "$pattern" sparsecow unpack "$img" -
  expect_fail "$pattern" bash -c "set -o pipefail; $SC_VALGRIND '$SPARSECOW' unpack '$img' - | cat > /dev/null"
  expect_fail "$pattern" sparsecow pack "$img" out/o.qcow2
  expect_fail "$pattern" sparsecow pack -c "$img" -
  if [ "$only" != data ]; then
    expect_fail "$pattern" sparsecow map --output=json "$img"
    expect_fail "$pattern" sparsecow info --backing-chain "$img"
  fi
  [ -z "$(ls -A out)" ] || fail "$img: failed runs left $(ls -A out)"
  [ -z "$(ls -A spill)" ] || fail "$img: failed runs left in TMPDIR: $(ls -A spill)"
  [ "$(md5sum < "$img")" = "$sum" ] || fail "$img: a failed run changed it"
}

# ---- missing -------------------------------------------------------------
qemu-img create -q -f qcow2 gone.qcow2 8M
qemu-img create -q -f qcow2 -b gone.qcow2 -F qcow2 orphan.qcow2
qemu-io -f qcow2 -c "write -P 0x21 1M 1M" orphan.qcow2 >/dev/null
rm gone.qcow2
# qemu-img refuses it too.
! qemu-img convert -q -O raw orphan.qcow2 out/q.raw 2>/dev/null ||
  fail "test setup: qemu-img reads an overlay whose backing file is gone"
rm -f out/q.raw
refused "gone\.qcow2.*No such file or directory" orphan.qcow2

# ---- unreadable ----------------------------------------------------------
# As root, permissions bind only another user: the test runs sparsecow
# as nobody where it can.
run_as=()
if [ "$(id -u)" = 0 ]; then
  if command -v setpriv >/dev/null && id nobody >/dev/null 2>&1; then
    run_as=(setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups)
  else
    run_as=(skip)
  fi
fi
if [ "${run_as[0]:-}" != skip ]; then
  mkdir locked
  qemu-img create -q -f qcow2 locked/base.qcow2 8M
  qemu-io -f qcow2 -c "write -P 0x31 0 4M" locked/base.qcow2 >/dev/null
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 locked/top.qcow2
  chmod 000 locked/base.qcow2
  if [ ${#run_as[@]} -gt 0 ]; then
    chmod 755 "$tmp" locked
    chmod 644 locked/top.qcow2
    chmod 1777 out spill
  fi
  sum=$(md5sum < locked/top.qcow2)
  for cmd in "unpack locked/top.qcow2 out/o.raw" "unpack locked/top.qcow2 -" \
             "pack locked/top.qcow2 out/o.qcow2" "pack -c locked/top.qcow2 -" \
             "map --output=json locked/top.qcow2"; do
    # shellcheck disable=SC2086
    expect_fail "base\.qcow2.*Permission denied" \
      "${run_as[@]}" $SC_VALGRIND "$SPARSECOW" $cmd
  done
  [ -z "$(ls -A out)" ] || fail "unreadable backing file: failed runs left $(ls -A out)"
  [ -z "$(ls -A spill)" ] || fail "unreadable backing file: left in TMPDIR: $(ls -A spill)"
  [ "$(md5sum < locked/top.qcow2)" = "$sum" ] || fail "a failed run changed top.qcow2"
  chmod 700 "$tmp"
else
  echo "$0: note: root without setpriv or nobody: the unreadable case was not run"
fi

# ---- changed size --------------------------------------------------------
# judge OVERLAY: unpack and re-pack read what qemu-img convert reads.
judge () {
  local img=$1
  qemu-img convert -q -f qcow2 -O raw "$img" ref.raw
  rm -f out/o.raw out/o.qcow2
  sparsecow unpack "$img" out/o.raw || fail "unpack $img failed"
  cmp ref.raw out/o.raw || fail "unpack $img differs from qemu-img"
  sparsecow pack -c "$img" out/o.qcow2 || fail "re-pack of $img failed"
  qemu-img compare -q -f raw -F qcow2 ref.raw out/o.qcow2 ||
    fail "re-pack of $img differs from qemu-img"
  rm -f out/o.raw out/o.qcow2 ref.raw
}
head -c 8M /dev/urandom > base.raw
qemu-img create -q -f qcow2 -b base.raw -F raw over.qcow2
qemu-io -f qcow2 -c "write -P 0x41 2M 1M" over.qcow2 >/dev/null
judge over.qcow2
# Shrunk to 3 MiB + 1000 bytes: past that, zeros.
truncate -s $((3 * 1048576 + 1000)) base.raw
judge over.qcow2
# Grown past the overlay: only the overlay's size counts.
head -c 12M /dev/urandom >> base.raw
judge over.qcow2

# A qcow2 backing file cut short after the overlay was made.
qemu-img create -q -f qcow2 base.qcow2 8M
qemu-io -f qcow2 -c "write -P 0x51 0 4M" base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-io -f qcow2 -c "write -P 0x52 6M 1M" top.qcow2 >/dev/null
truncate -s 1M base.qcow2
qemu-img convert -q -f qcow2 -O raw top.qcow2 ref.raw ||
  fail "test setup: qemu-img refuses a backing file cut short"
rm -f ref.raw
refused "top\.qcow2: base\.qcow2: data cluster at host offset [0-9]+ lies past the end of the file" \
  top.qcow2 data
exit 0
