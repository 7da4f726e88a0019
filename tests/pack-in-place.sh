#!/usr/bin/env bash
# sparsecow pack -n writes the new image into the existing file where
# it is: the same inode (owner, group, mode, hard links and extended
# attributes kept), an image that qemu-img check accepts and qemu-img
# compare finds equal to the source, a longer old file cut to the
# image's length (qemu-img check's image end offset), a missing target
# refused and not created, "-" and --target-is-zero without -n usage
# errors.  A pack -n stopped by SIGINT once it has begun writing over
# a complete image leaves a file that qemu-img check refuses (the magic
# goes in last), says so, and exits with the signal's status.  With -c
# and without.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io jq cmp stat python3

cd "$tmp"
MiB=$((1024 * 1024))
size=$((64 * MiB))

qemu-img create -q -f raw src.raw $size
qemu-io -f raw -c "write -P 0x11 0 100k" -c "write -P 0x22 10M 4k" \
  -c "write -P 0x33 40M 3M" -c "write -P 0x44 63M 1M" src.raw >/dev/null
head -c $MiB /dev/urandom | dd of=src.raw bs=1M seek=20 conv=notrunc status=none

# The end of the image as qemu-img check sees it.
image_end () {
  qemu-img check -f qcow2 --output=json "$1" | jq '."image-end-offset"'
}

# Checks clean and holds the source's content.
good_image () {
  qemu-img check -q -f qcow2 "$1" || fail "$2: qemu-img check fails on $1"
  qemu-img compare -q -f raw -F qcow2 src.raw "$1" ||
    fail "$2: $1 differs from the source"
}

# Extended attributes, where the file system of $tmp keeps them.
xattr () {
  python3 - "$@" <<'EOF'
import os, sys
op, path = sys.argv[1], sys.argv[2]
try:
    if op == "set":
        os.setxattr(path, "user.sparsecow-test", b"kept")
    else:
        print(os.getxattr(path, "user.sparsecow-test").decode())
except OSError:
    print("none")
EOF
}

for codec in none deflate; do
  opts=()
  [ $codec = none ] || opts=(-c)
  # Longer than the image, full of old bytes, with a second name, an
  # owner, a mode and an attribute of its own.
  head -c $((100 * MiB)) /dev/urandom > old.img
  ln -f old.img link.img
  chmod 0640 old.img
  [ "$(id -u)" != 0 ] || chown 1:1 old.img
  xattr set old.img >/dev/null
  before=$(stat -c '%d %i %u %g %a %h' old.img)
  had_xattr=$(xattr get old.img)
  sparsecow pack -q -n "${opts[@]}" src.raw old.img ||
    fail "pack -n ($codec) failed"
  [ "$(stat -c '%d %i %u %g %a %h' old.img)" = "$before" ] ||
    fail "pack -n ($codec): the file changed: $(stat -c '%d %i %u %g %a %h' old.img), was $before"
  [ "$(xattr get old.img)" = "$had_xattr" ] ||
    fail "pack -n ($codec): the extended attribute was lost"
  cmp old.img link.img || fail "pack -n ($codec): the hard link differs"
  good_image old.img "pack -n ($codec)"
  # Cut: no byte past the image's end; a compressed image ends inside
  # its last cluster.
  len=$(stat -c %s old.img)
  end=$(image_end old.img)
  if [ $codec = none ]; then
    [ "$len" = "$end" ] ||
      fail "pack -n ($codec): $len bytes long, the image ends at $end"
  else
    [ "$len" -le "$end" ] && [ "$len" -gt $((end - 65536)) ] ||
      fail "pack -n ($codec): $len bytes long, the image ends at $end"
  fi

  # Shorter than the image: grown to it.
  head -c 4096 /dev/urandom > short.img
  ino=$(stat -c %i short.img)
  sparsecow pack -q -n "${opts[@]}" src.raw short.img ||
    fail "pack -n ($codec) into a short file failed"
  [ "$(stat -c %i short.img)" = "$ino" ] || fail "pack -n ($codec) replaced short.img"
  good_image short.img "pack -n ($codec), short file"

  # Empty, said to read as zero: the same.
  : > zero.img
  sparsecow pack -q -n --target-is-zero "${opts[@]}" src.raw zero.img ||
    fail "pack -n --target-is-zero ($codec) failed"
  good_image zero.img "pack -n --target-is-zero ($codec)"
done

# Refused: a missing target (not created), standard output, and
# --target-is-zero without -n (as qemu-img convert refuses it).
rc=0
qemu-img convert -q -n -f raw -O qcow2 src.raw none.img 2>/dev/null || rc=$?
[ $rc != 0 ] || fail "qemu-img convert -n to a missing file succeeded"
expect_fail "^sparsecow: none.img: does not exist" \
  sparsecow pack -n src.raw none.img
[ ! -e none.img ] || fail "pack -n created a missing target"
expect_fail "^sparsecow: pack: -n writes into an existing file or block device, not -" \
  sparsecow pack -n src.raw -
expect_fail "^sparsecow: pack: --target-is-zero needs -n" \
  sparsecow pack --target-is-zero src.raw tz.img
[ ! -e tz.img ] || fail "a refused pack --target-is-zero created its target"
expect_fail "^sparsecow: pack: expected SOURCE and TARGET" \
  sparsecow pack -n src.raw old.img link.img
good_image old.img "after the refusals"

# Interrupted once it has begun writing over a complete image (frozen
# with SIGSTOP when the file's modification time moves, then SIGINT):
# not an image any more, and said to be left partly written.
head -c $((192 * MiB)) /dev/urandom > big.raw
# Under load the signal may come once the image is complete: then it
# is said so, the image is whole, and the run is tried again.
tried=0
done_codecs=
for codec in none none none deflate deflate deflate; do
  opts=()
  [ $codec = none ] || opts=(-c)
  case " $done_codecs " in *" $codec "*) continue ;; esac
  sparsecow pack -q -f "${opts[@]}" big.raw target.img ||
    fail "pack ($codec) of big.raw failed"
  qemu-img check -q -f qcow2 target.img || fail "the image to write over does not check"
  if ! interrupt INT target.img "$SPARSECOW" pack -n "${opts[@]}" big.raw target.img; then
    echo "$0: pack -n ($codec) ended before SIGINT could reach it (rc $rc)"
    continue
  fi
  if [ "$rc" = 0 ]; then
    grep -q "^sparsecow: target.img: complete; SIGINT came after it was written\$" err ||
      { cat err >&2; fail "pack -n ($codec), SIGINT: exit 0 without saying the signal came late"; }
    qemu-img compare -q -f raw -F qcow2 big.raw target.img ||
      fail "pack -n ($codec), SIGINT: exit 0, but target.img is not big.raw"
    echo "$0: pack -n ($codec): SIGINT came once the image was complete"
    continue
  fi
  done_codecs="$done_codecs $codec"
  tried=$((tried + 1))
  [ "$rc" = 130 ] || { cat err >&2; fail "pack -n ($codec), SIGINT: exit $rc, not 130"; }
  grep -q "^sparsecow: target.img: written in place, left partly written" err ||
    { cat err >&2; fail "pack -n ($codec), SIGINT: not said to be left partly written"; }
  ! qemu-img info -f qcow2 target.img >/dev/null 2>&1 ||
    fail "pack -n ($codec), SIGINT: qemu-img info reads target.img as an image"
  ! qemu-img check -q -f qcow2 target.img >/dev/null 2>&1 ||
    fail "pack -n ($codec), SIGINT: qemu-img check accepts target.img"
done
[ $tried -gt 0 ] || { echo "$0: SKIP: every run ended before it could be signalled"; exit 77; }
exit 0
