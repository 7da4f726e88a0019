#!/usr/bin/env bash
# The text a command writes (standard output, standard error, progress
# on a descriptor) is refused, before anything is written, when it would
# land in an operand under another name of its storage: a loop device
# over the image file, the file behind a loop-device operand, another
# loop device over that file, a partition of the operand's disk.  The
# same identity as the targets' and the sources'.  cmp and qemu-img
# judge that nothing was written; the exit status says it was refused.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io losetup cmp
requires_root

cd "$tmp"
MiB=$((1024 * 1024))

qemu-img create -q -f qcow2 img.qcow2 $MiB
qemu-io -f qcow2 -c "write -P 0x11 0 100k" -c "write -P 0x22 512k 64k" \
  img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw
cp img.qcow2 img.ref

# refused WHAT FILE SAVED -- COMMAND...: COMMAND (with its redirections
# made by the caller through eval) fails and leaves FILE as SAVED.
refused () {
  local what=$1 file=$2 saved=$3 rc=0
  shift 4
  eval "sparsecow $*" >/dev/null 2>"$tmp/.err" </dev/null || rc=$?
  [ "$rc" -ne 0 ] || fail "$what: exit 0"
  [ "$rc" -lt 126 ] || { cat "$tmp/.err" >&2; fail "$what: exit $rc"; }
  cmp -s "$saved" "$file" || fail "$what: $file was written"
  if grep -q "AddressSanitizer\|runtime error" "$tmp/.err"; then
    cat "$tmp/.err" >&2; fail "$what: sanitizer report"
  fi
}

# ---- a loop device over the image file --------------------------------
loop_attach img.qcow2
over=$dev
for cmd in "info img.qcow2" "map img.qcow2" "check img.qcow2" \
           "verify img.qcow2 ref.raw"; do
  refused "$cmd 1<>loop over the image" img.qcow2 img.ref -- \
    "$cmd 1<>$over"
  refused "$cmd 2<>loop over the image" img.qcow2 img.ref -- \
    "$cmd 2<>$over"
done
refused "bmap -o 2<>loop over the image" img.qcow2 img.ref -- \
  "bmap img.qcow2 -o out.bmap 2<>$over"
refused "bmap 1<>loop over the image" img.qcow2 img.ref -- \
  "bmap img.qcow2 1<>$over"
refused "verify --progress=json:fd:5 5<>loop" img.qcow2 img.ref -- \
  "verify --progress=json:fd:5 img.qcow2 ref.raw 5<>$over"
# pack's note about a qcow2 source goes to standard error.
refused "pack 2<>loop over the source" img.qcow2 img.ref -- \
  "pack -f img.qcow2 out.qcow2 2<>$over"
refused "unpack 2<>loop over the image" img.qcow2 img.ref -- \
  "unpack -f img.qcow2 out.raw 2<>$over"
qemu-img compare -q -f qcow2 -F raw img.qcow2 ref.raw ||
  fail "img.qcow2 is not its data any more"

# ---- a loop-device operand, text into its file or another loop over it
truncate -s $MiB dev.img
cp dev.img dev.ref
loop_attach dev.img
d=$dev
loop_attach dev.img
d2=$dev
refused "unpack --verify 2<>backing file" dev.img dev.ref -- \
  "unpack -f --verify img.qcow2 $d out.raw 2<>dev.img"
refused "unpack --verify progress 5<>backing file" dev.img dev.ref -- \
  "unpack -f --verify --progress=json:fd:5 img.qcow2 $d 5<>dev.img"
refused "unpack 2<>another loop device" dev.img dev.ref -- \
  "unpack -f img.qcow2 $d 2<>$d2"
refused "pack 2<>backing file of the target" dev.img dev.ref -- \
  "pack -f --target-is-device ref.raw $d 2<>dev.img"
# The image read through a loop device over its file: text into that
# file, or into another loop device over it.
loop_attach img.qcow2
over2=$dev
refused "info loop device 1<>its file" img.qcow2 img.ref -- \
  "info $over 1<>img.qcow2"
refused "check loop device 2<>its file" img.qcow2 img.ref -- \
  "check $over 2<>img.qcow2"
refused "verify loop device 1<>another loop" img.qcow2 img.ref -- \
  "verify $over ref.raw 1<>$over2"
refused "map loop device 1<>another loop" img.qcow2 img.ref -- \
  "map $over 1<>$over2"

# ---- a partition of the operand's disk --------------------------------
if command -v partx >/dev/null; then
  truncate -s $((8 * MiB)) disk.img
  mbr disk.img 2048:4096 6144:4096
  loop_attach disk.img
  disk=$dev
  if partx -a "$disk" 2>/dev/null && [ -b "${disk}p1" ]; then
    cleanup_fn "partx -d $disk"
    cp disk.img disk.ref
    refused "verify disk disk 1<>partition" disk.img disk.ref -- \
      "verify $disk $disk 1<>${disk}p1"
    refused "unpack to the disk 2<>partition" disk.img disk.ref -- \
      "unpack -f img.qcow2 $disk 2<>${disk}p1"
    refused "unpack to a partition 2<>the disk" disk.img disk.ref -- \
      "unpack -f img.qcow2 ${disk}p1 2<>$disk"
    # Disjoint partitions: the text on the second does not touch the
    # first, which is written.
    sparsecow unpack -f img.qcow2 "${disk}p1" 2<>"${disk}p2" ||
      fail "unpack to ${disk}p1 with messages on ${disk}p2 failed"
    cmp -n $MiB ref.raw "${disk}p1" || fail "${disk}p1 differs from qemu-img convert"
  else
    echo "$0: partx cannot add partitions here: partitions are not tried"
  fi
fi

exit 0
