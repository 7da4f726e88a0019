#!/usr/bin/env bash
# A block device source that changes while it is packed: a loop device
# whose backing file is rewritten, truncated, or cut and grown back,
# that is written through its own node, or that shrinks (losetup -c).
# Each is reported, not packed.  As in hostile-source-change.sh, the
# target is a pipe whose reader takes the first MiB, changes the
# device, then drains the rest: pack is then in the middle of its run,
# blocked on the pipe.  What sparsecow(1) does not promise (a write
# through another device node, a partition or a device stacked on top)
# is not tested.  What went into the pipe is no image that qemu-img
# check accepts, and no spill file is left in TMPDIR.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires qemu-img losetup truncate dd cmp
requires_root

cd "$tmp"
mkdir spill
export TMPDIR=$tmp/spill
MiB=$((1024 * 1024))
head -c 6M /dev/urandom > orig.raw
truncate -s 16M orig.raw
cp orig.raw src.raw
loop_attach src.raw

# change HOW: what the pipe's reader does to the device.
change () {
  case $1 in
    rewrite) head -c 1M /dev/urandom |
               dd of=src.raw bs=1M seek=10 conv=notrunc,fsync status=none ;;
    truncate) truncate -s 3M src.raw ;;
    regrow) truncate -s 3M src.raw; truncate -s 16M src.raw ;;
    device) head -c 1M /dev/urandom |
              dd of="$dev" bs=1M seek=10 oflag=direct status=none ;;
    shrink) truncate -s 8M src.raw; losetup -c "$dev" ;;
  esac
}
# restore: the device as it was, 16 MiB of orig.raw.
restore () {
  cp orig.raw src.raw
  losetup -c "$dev"
  [ "$(blockdev --getsize64 "$dev")" = $((16 * MiB)) ] ||
    fail "$dev did not grow back"
  # Nothing read before the change may come from the page cache.
  blockdev --flushbufs "$dev"
}

# Unchanged, the device packs, and the image is the device.
"$SPARSECOW" pack "$dev" whole.qcow2 || fail "pack of $dev failed"
qemu-img compare -q -F raw whole.qcow2 "$dev" || fail "pack of $dev differs"
"$SPARSECOW" pack "$dev" - > stream.qcow2 || fail "pack of $dev to a pipe failed"
qemu-img compare -q -F raw stream.qcow2 "$dev" || fail "pack of $dev to a pipe differs"

for how in rewrite truncate regrow device shrink; do
  for c in "" "-c"; do
    restore
    rm -f rc
    { "$SPARSECOW" pack $c "$dev" - 2>err || echo $? > rc; } |
      { head -c 1M > out.qcow2; change $how; cat >> out.qcow2; }
    [ -s rc ] || { cat err >&2; fail "pack $c of $dev ($how while packing) succeeded"; }
    grep -Eq "^sparsecow: $dev: (source changed while packing|(short read|unexpected end of file) at offset [0-9]+|.*Input/output error)" err ||
      { cat err >&2; fail "pack $c of $dev ($how while packing): unclear message"; }
    if grep -q "AddressSanitizer\|runtime error" err; then
      cat err >&2; fail "sanitizer report"
    fi
    # What went into the pipe is no image qemu-img check accepts.
    rc=0; qemu-img check -f qcow2 out.qcow2 >/dev/null 2>&1 || rc=$?
    [ $rc != 0 ] || fail "pack $c of $dev ($how): qemu-img check accepts the output"
    [ -z "$(ls -A spill)" ] || fail "pack $c of $dev ($how) left in TMPDIR: $(ls -A spill)"
    echo "$how, pack $c: $(cat err)"
  done
done
exit 0
