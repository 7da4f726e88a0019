#!/usr/bin/env bash
# sparsecow unpack reads internal snapshots: the active layer by default,
# --snapshot NAME and --snapshot ID, in version 2 and 3 images, after
# copy-on-write has split shared clusters, after a snapshot was deleted,
# and when the image grew after the snapshot; an unknown snapshot is an
# error.  qemu-img convert -l snapshot.name=/snapshot.id= is the judge.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
. "$srcdir/reader-functions.sh"
requires qemu-img qemu-io python3 timeout cmp

cd "$tmp"

for compat in 0.10 1.1; do
  img=snap-$compat.qcow2
  qemu-img create -q -f qcow2 -o compat=$compat,cluster_size=65536 "$img" 16M
  qio "$img" "write -P 0x11 0 4M" "write -c -P 0x12 8M 128k" "write -P 0x13 15M 1M"
  qemu-img snapshot -c s1 "$img"
  # Copy-on-write: partial overwrites of shared clusters, zeroing and
  # discarding shared clusters, new normal and compressed data.
  qio "$img" "write -P 0x21 4k 4k" "write -z 1M 1M" "discard 2M 256k" \
             "write -P 0x22 6M 64k" "write -c -P 0x23 12M 64k" "write -P 0x24 8M 4k"
  qemu-img snapshot -c s2 "$img"
  qio "$img" "write -P 0x31 3M 1M" "write -z 15M 512k" "write -P 0x32 4M 4k"

  check_image "$img"
  check_unpack "$img" s1
  check_unpack "$img" 1
  check_pipe "$img" s1
  check_unpack "$img" s2
  check_unpack "$img" 2

  # The three views really differ, so the checks above mean something.
  qemu-img convert -q -l snapshot.name=s1 -O raw "$img" s1.raw
  qemu-img convert -q -l snapshot.name=s2 -O raw "$img" s2.raw
  qemu-img convert -q -O raw "$img" active.raw
  ! cmp -s s1.raw s2.raw && ! cmp -s s2.raw active.raw ||
    fail "test setup: snapshots do not differ"

  # To stdout.
  if [ "$READER_ORACLE" != qemu ]; then
    rd_sparsecow unpack --snapshot s1 "$img" - > s1.out || fail "unpack --snapshot s1 $img - failed"
    cmp s1.raw s1.out || fail "unpack --snapshot s1 $img - differs from qemu-img"
  fi

  # Deleting s1 leaves s2 (still ID 2) and the active layer intact.
  qemu-img snapshot -d s1 "$img"
  check_image "$img"
  check_unpack "$img" s2
  check_unpack "$img" 2
  qemu-img convert -q -l snapshot.id=2 -O raw "$img" s2-after.raw
  cmp s2.raw s2-after.raw || fail "test setup: s2 changed when s1 was deleted"

  if [ "$READER_ORACLE" != qemu ]; then
    for s in s1 nosuch 1 99; do
      expect_fail "[Ss]napshot" rd_sparsecow unpack --snapshot $s "$img" bad.raw
      [ ! -e bad.raw ] || fail "failed unpack --snapshot $s left bad.raw behind"
    done
  fi
  rm -f s1.raw s2.raw active.raw s2-after.raw s1.out
done

# A snapshot taken before the image grew has the old size (version 3
# keeps the snapshot's disk size in its extra data).  qemu 7.2 disagrees
# with itself here: "qemu-img convert -l" reads the snapshot's clusters at
# the active layer's size, while "qemu-img snapshot -a" reverts to the
# snapshot's own size.  The revert is the snapshot's state, so it judges.
check_unpack_revert () {
  local img=$1 snap=$2
  cp "$img" revert.qcow2
  qemu-img snapshot -a "$snap" revert.qcow2
  qemu-img convert -q -O raw revert.qcow2 revert.raw
  rd_unpack "$img" revert.out "$snap" || fail "unpack --snapshot $snap $img failed"
  [ "$(stat -c %s revert.out)" = "$(stat -c %s revert.raw)" ] ||
    fail "unpack --snapshot $snap $img: size $(stat -c %s revert.out)," \
         "qemu-img snapshot -a gives $(stat -c %s revert.raw)"
  cmp revert.raw revert.out ||
    fail "unpack --snapshot $snap $img differs from qemu-img snapshot -a + convert"
  rm -f revert.qcow2 revert.raw revert.out
}
img=grown.qcow2
qemu-img create -q -f qcow2 "$img" 8M
qio "$img" "write -P 0x41 0 8M"
qemu-img snapshot -c small "$img"
qemu-img resize -q "$img" 20M
qio "$img" "write -P 0x42 7M 2M" "write -P 0x43 19M 1M"
qemu-img snapshot -c big "$img"
check_image "$img"
check_unpack_revert "$img" small
check_unpack_revert "$img" 1
check_unpack "$img" big
check_unpack "$img" 2

# Many snapshots, and a long name.
img=many.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 "$img" 1M
long=$(printf 'n%.0s' {1..200})
for i in $(seq 1 20); do
  qio "$img" "write -P $i $(( i * 4096 )) 4096"
  qemu-img snapshot -c "snap$i" "$img"
done
qemu-img snapshot -c "$long" "$img"
for s in snap1 snap13 snap20 7 21 "$long"; do
  check_unpack "$img" "$s"
done
