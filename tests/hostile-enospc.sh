#!/usr/bin/env bash
# A full file system under the target: pack (compressed or not, and with
# the digest hashed beside the copy) and unpack, compressed and
# not, to a file and to standard output redirected into a file, on a
# small tmpfs and on a small ext4 on a loop device.  Each run fails with
# "No space left on device" naming the target, leaves no file behind
# when it created the target itself, leaves what standard output got
# looking unfinished (check reports the image cut short; the raw data is
# short, and qemu-img check refuses it), leaves no spill file in TMPDIR,
# and does not touch its source.
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/hostile-functions.sh"
requires qemu-img python3 cmp
requires_root
requires losetup mkfs.ext4 mount umount

cd "$tmp"
mkdir spill
export TMPDIR=$tmp/spill
# 12 MiB of data that does not compress, in a 64 MiB file, and its image.
truncate -s 64M src.raw
head -c 12M /dev/urandom | dd of=src.raw bs=1M seek=8 conv=notrunc status=none
qemu-img convert -q -f raw -O qcow2 src.raw src.qcow2
# And an image of compressed clusters holding 12 MiB of data that does.
python3 -c 'import random, sys
r = random.Random(4)
sys.stdout.buffer.write(bytes(r.choice(b"abcd") for _ in range(12 << 20)))' > text.raw
qemu-img convert -q -c -f raw -O qcow2 text.raw src.c.qcow2
sum_before=$(cat src.raw src.qcow2 src.c.qcow2 | md5sum)

mkdir tmpfs ext4
mount -t tmpfs -o size=4M tmpfs tmpfs 2>/dev/null ||
  { echo "$0: SKIP: cannot mount a tmpfs"; exit 77; }
cleanup_fn "umount '$tmp/tmpfs'"
truncate -s 8M ext4.img
mkfs.ext4 -q -F ext4.img
loop=$(losetup -f --show ext4.img 2>/dev/null) ||
  { echo "$0: SKIP: no loop device"; exit 77; }
cleanup_fn "losetup -d $loop"
mount "$loop" ext4 || { echo "$0: SKIP: cannot mount ext4 on $loop"; exit 77; }
cleanup_fn "umount '$tmp/ext4'"
rmdir ext4/lost+found 2>/dev/null || :

# What a file system holds (lost+found aside).
contents () { ls -A "$1" | grep -v '^lost+found$' | tr '\n' ' '; }

for fs in tmpfs ext4; do
  for op in "pack" "pack -c" "pack --digest" "unpack" "unpack "; do
    # "unpack " (with a space) unpacks the compressed image.
    case $op in
      pack*) src=src.raw; out=$fs/out.qcow2 ;;
      "unpack ") src=src.c.qcow2; out=$fs/out.raw ;;
      unpack) src=src.qcow2; out=$fs/out.raw ;;
    esac
    # A file target.
    expect_fail "^sparsecow: $out: .*No space left on device" sparsecow $op $src $out
    [ -z "$(contents $fs)" ] || fail "$op onto a full $fs left: $(contents $fs)"
    # Standard output into a file on the full file system.
    rc=0
    sparsecow $op $src - > $out 2> err || rc=$?
    [ $rc != 0 ] || fail "$op to stdout on a full $fs succeeded"
    grep -q "^sparsecow: stdout: .*No space left on device" err ||
      { cat err >&2; fail "$op to stdout on a full $fs: unclear message"; }
    case $op in
      pack*)
        # What got out is a qcow2 image cut short, and says so.
        rc=0
        sparsecow check $out > /dev/null 2>&1 || rc=$?
        [ $rc != 0 ] || fail "the partial image from $op to stdout on $fs checks clean"
        rc=0
        qemu-img check -f qcow2 $out > /dev/null 2>&1 || rc=$?
        [ $rc != 0 ] ||
          fail "qemu-img check finds the partial image from $op to stdout on $fs clean" ;;
      unpack*)
        [ "$(stat -c %s $out)" -lt "$(qemu-img info --output=json $src |
                                        sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')" ] ||
          fail "the partial data from unpack of $src to stdout on $fs has the full size" ;;
    esac
    rm -f $out
    [ -z "$(ls -A spill)" ] || fail "$op onto a full $fs left in TMPDIR: $(ls -A spill)"
  done
  # From a pipe into a file on the full file system.
  expect_fail "^sparsecow: $fs/out.raw: .*No space left on device" \
    sh -c "cat src.qcow2 | $SC_VALGRIND $SPARSECOW unpack - $fs/out.raw"
  [ -z "$(contents $fs)" ] || fail "unpack from a pipe onto a full $fs left: $(contents $fs)"
  expect_fail "^sparsecow: (spill file next to )?$fs/out.qcow2: .*No space left on device" \
    sh -c "cat src.raw | $SC_VALGRIND $SPARSECOW pack -c - $fs/out.qcow2"
  [ -z "$(contents $fs)" ] || fail "pack from a pipe onto a full $fs left: $(contents $fs)"
done
[ "$(cat src.raw src.qcow2 src.c.qcow2 | md5sum)" = "$sum_before" ] || fail "a source changed"
exit 0
