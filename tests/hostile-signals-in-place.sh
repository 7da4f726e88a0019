#!/usr/bin/env bash
# Targets written in place (a block device, a file with -n) that a
# signal or a failed write stops part way.  Such a target cannot be
# removed: what it must not be is a complete-looking image, and the
# user must be told.
# - pack onto a device, stopped by SIGINT or SIGTERM while it writes
#   (the program is frozen with SIGSTOP once the device has seen
#   writes, signalled, and let go), or failing on a device whose
#   backing file system fills up: qemu-img info and check refuse the
#   device (no qcow2 magic: it is written last), and the message says
#   the target was written in place and left partly written; the exit
#   status is the signal's.  With -c too.
# - unpack onto a device, and unpack -n into a file, stopped the same
#   way: the same message, the signal's exit status.  Beside a target
#   that failed already (too small), its error is still printed; with
#   --verify, one stopped in the read-back is said to be written whole
#   but not verified, and equals the data.
# - A signal that lands once the target is complete (a device reports
#   writes while the last ones are in flight) stops nothing: exit 0, a
#   line that says so, and a whole target (hostile-signals-complete.sh
#   places such signals deterministically).
# - pack and unpack into an NBD export (a qemu-nbd started with
#   [ CMD ]), which has no temporary name either: stopped by SIGINT
#   while the export's file changes, the same message and exit status,
#   and no image there.
# - The flush of the magic itself fails (EIO injected by strace at the
#   last flush of pack -n): exit 1, the message, and no image, though
#   the magic was written before the flush failed.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io qemu-nbd losetup python3
requires_root

cd "$tmp"
MiB=$((1024 * 1024))
size=$((192 * MiB))

# Data all through, so that the writing takes a while.
head -c $size /dev/urandom > big.raw
qemu-img convert -q -f raw -O qcow2 big.raw big.qcow2

head -c $((size + 8 * MiB)) /dev/zero > dev.img
loop_attach dev.img
target=$dev

# An image is there only if qemu-img says so.
not_an_image () {
  ! qemu-img info -f qcow2 "$1" >/dev/null 2>&1 ||
    fail "$2: qemu-img info reads $1 as a qcow2 image"
  ! qemu-img check -q -f qcow2 "$1" >/dev/null 2>&1 ||
    fail "$2: qemu-img check accepts $1"
}

want_rc () {
  case $1 in INT) echo 130 ;; TERM) echo 143 ;; esac
}

# late SIG TARGET KIND WHAT: did the signal land once TARGET was
# complete (a device sees writes while the last ones are still in
# flight)?  Then the run ended with exit 0, said so, and TARGET is
# whole: a qcow2 image that qemu-img check accepts (KIND image), or
# the data of big.raw (KIND data).  Returns 1 for a run the signal
# stopped, which the caller judges.
late=0
late () {
  local sig=$1 target=$2 kind=$3 what=$4
  [ "$rc" = 0 ] || return 1
  grep -q "^sparsecow: $target: complete; SIG$sig came after it was written\$" err ||
    { cat err >&2; fail "$what: exit 0 without saying the signal came late"; }
  if [ "$kind" = image ]; then
    qemu-img check -q -f qcow2 "$target" || fail "$what: exit 0, but qemu-img check refuses $target"
  else
    cmp -n $size big.raw "$target" || fail "$what: exit 0, but $target is not big.raw"
  fi
  late=$((late + 1))
}

tried=0
for sig in INT TERM; do
  for op in "pack -f" "pack -f -c" "unpack -f"; do
    case $op in
      pack*) src=big.raw ;;
      unpack*) src=big.qcow2 ;;
    esac
    # A complete image first: an interrupted pack must not leave it
    # looking valid either.
    sparsecow pack -q -f big.raw "$target" || fail "pack to $target failed"
    qemu-img info -f qcow2 "$target" >/dev/null || fail "pack to $target is no image"
    # shellcheck disable=SC2086
    if ! interrupt $sig "$target" "$SPARSECOW" $op $src "$target"; then
      echo "$0: $op ended before SIG$sig could reach it (rc $rc)"
      continue
    fi
    kind=image
    case $op in unpack*) kind=data ;; esac
    ! late $sig "$target" $kind "$op $target, SIG$sig" || continue
    tried=$((tried + 1))
    [ "$rc" = "$(want_rc $sig)" ] ||
      { cat err >&2; fail "$op $target, SIG$sig: exit $rc, not $(want_rc $sig)"; }
    grep -q "^sparsecow: $target: written in place, left partly written" err ||
      { cat err >&2; fail "$op $target, SIG$sig: not said to be left partly written"; }
    case $op in pack*) not_an_image "$target" "$op, SIG$sig" ;; esac
  done
done
[ $tried -gt 0 ] || { echo "$0: SKIP: every run ended before it could be signalled"; exit 77; }
echo "$0: $tried runs onto a device signalled while writing, $late once it was complete"

# unpack -n into a file: the same.
head -c $size /dev/zero > in-place.raw
if interrupt INT in-place.raw "$SPARSECOW" unpack -n big.qcow2 in-place.raw &&
   ! late INT in-place.raw data "unpack -n, SIGINT"; then
  [ "$rc" = 130 ] || { cat err >&2; fail "unpack -n, SIGINT: exit $rc, not 130"; }
  grep -q "^sparsecow: in-place.raw: written in place, left partly written" err ||
    { cat err >&2; fail "unpack -n, SIGINT: not said to be left partly written"; }
elif [ "$rc" != 0 ]; then
  echo "$0: unpack -n ended before SIGINT could reach it (rc $rc)"
fi

# Several targets, one too small and refused, one stopped by SIGTERM:
# both are reported.
head -c $size /dev/urandom | dd of="$target" bs=1M oflag=direct status=none
truncate -s $((32 * MiB)) small.img
loop_attach small.img
small=$dev
if interrupt TERM "$target" "$SPARSECOW" unpack -f --verify big.qcow2 "$target" "$small"; then
  # One target could not be opened: the run fails whenever the signal
  # lands, so it must be the signal's exit.
  [ "$rc" = 143 ] || { cat err >&2; fail "unpack to two, SIGTERM: exit $rc, not 143"; }
  grep -q "^sparsecow: $small: device is smaller than the image" err ||
    { cat err >&2; fail "unpack to two, SIGTERM: the small target's error was not printed"; }
  # Stopped while writing, or (the device shows its writes at the
  # flush) after it, in the read-back: then it holds the image whole.
  if grep -q "^sparsecow: $target: written in place, not verified: SIGTERM came before the read-back ended\$" err; then
    cmp -n "$(stat -c %s big.raw)" big.raw "$target" ||
      { cat err >&2; fail "unpack to two, SIGTERM: said to be written whole, but differs"; }
  else
    grep -q "^sparsecow: $target: written in place, left partly written" err ||
      { cat err >&2; fail "unpack to two, SIGTERM: not said to be left partly written"; }
  fi
else
  echo "$0: unpack to two targets ended before SIGTERM could reach it (rc $rc)"
fi

# A write that fails part way: a device over a file on a tmpfs too
# small for the image.  pack fails, says so, and leaves no image.
mkdir full
mount -t tmpfs -o size=16M tmpfs full || fail "cannot mount a tmpfs"
cleanup_fn "umount $tmp/full"
truncate -s $((size + 8 * MiB)) full/dev.img
loop_attach full/dev.img
full=$dev
for op in "pack -f" "pack -f -c"; do
  rc=0
  # shellcheck disable=SC2086
  sparsecow $op big.raw "$full" 2>err || rc=$?
  [ $rc = 1 ] || { cat err >&2; fail "$op to a failing $full: exit $rc"; }
  grep -q "^sparsecow: $full: written in place, left partly written" err ||
    { cat err >&2; fail "$op to a failing $full: not said to be left partly written"; }
  not_an_image "$full" "$op to a failing device"
done

# Into an export: the same as onto a device.
truncate -s $((size + 8 * MiB)) export.raw
server="[ qemu-nbd -f raw $tmp/export.raw ]"
for op in "pack -f" "unpack"; do
  case $op in
    pack*) src=big.raw ;;
    unpack*) src=big.qcow2 ;;
  esac
  # shellcheck disable=SC2086
  if ! interrupt INT export.raw "$SPARSECOW" $op $src -- [ qemu-nbd -f raw "$tmp/export.raw" ]; then
    echo "$0: $op into an export ended before SIGINT could reach it (rc $rc)"
    continue
  fi
  grep -q "complete; SIGINT came after it was written" err && continue
  [ "$rc" = 130 ] || { cat err >&2; fail "$op into an export, SIGINT: exit $rc, not 130"; }
  grep -qF "sparsecow: $server: written in place, left partly written" err ||
    { cat err >&2; fail "$op into an export, SIGINT: not said to be left partly written"; }
  case $op in pack*) not_an_image export.raw "$op into an export, SIGINT" ;; esac
done

# The flush after the magic fails: the magic is taken back.
if strace -f -qq -o /dev/null -e trace=fsync -e inject=fsync:error=EIO:when=1000 true 2>/dev/null; then
  export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
  head -c $((8 * MiB)) /dev/urandom > small.raw
  : > magic.img
  strace -f -qq -o trace.out -e trace=fsync,fdatasync "$SPARSECOW" pack -n small.raw magic.img ||
    fail "pack -n small.raw magic.img failed under strace"
  n=$(grep -cE '^[0-9]+ +(fsync|fdatasync)\(' trace.out)
  : > magic.img
  rc=0
  strace -f -qq -o /dev/null -e trace=fsync,fdatasync -e inject=fsync,fdatasync:error=EIO:when=$n \
    "$SPARSECOW" pack -n small.raw magic.img 2>err || rc=$?
  [ $rc = 1 ] || { cat err >&2; fail "pack -n, flush $n of $n failing: exit $rc"; }
  grep -q "^sparsecow: magic.img: written in place, left partly written (not a qcow2 image)" err ||
    { cat err >&2; fail "pack -n, last flush failing: not said to be left partly written"; }
  not_an_image magic.img "pack -n, its last flush failing"
else
  echo "$0: strace cannot inject errors here: the failing flush is not tried"
fi
exit 0
