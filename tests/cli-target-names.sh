#!/bin/bash
# A target name that cannot be a file (an existing directory, a name
# that ends in '/', one under a file, one under a missing directory) is
# refused before anything is written, naming the target and saying why
# as qemu-img convert says it, by pack, unpack and bmap -o, with and
# without -f; never "rename: ..." or "link: ..." after the work.
. "$srcdir/functions.sh"
requires qemu-img qemu-io

cd "$tmp"
qemu-img create -q -f qcow2 img.qcow2 64M
qemu-io -c "write -P 1 0 4M" img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 data.raw
mkdir adir
echo x >afile
touch s.err q.err before after

# reason CMD...: why qemu-img convert fails (the text after its last
# ": "), asserting that it does.
reason () {
  local rc=0
  qemu-img convert "$@" >/dev/null 2>q.err || rc=$?
  [ "$rc" = 1 ] || fail "qemu-img convert $* exits $rc (the test is wrong)"
  sed -n '1s/.*: //p' q.err
}

# refused TARGET WHY CMD...: exit 1, the first line names TARGET and
# says WHY (qemu-img's words, in any case), nothing named after the
# target appears, and no file is left behind.
refused () {
  local target=$1 why=$2 rc=0; shift 2
  ls -A >before
  sparsecow "$@" >/dev/null 2>s.err || rc=$?
  [ "$rc" = 1 ] || fail "$*: exit $rc: $(cat s.err)"
  head -n1 s.err | grep -q "^sparsecow: $target: " ||
    fail "$*: does not name $target: $(cat s.err)"
  grep -qi -- "$why" s.err || fail "$*: does not say '$why': $(cat s.err)"
  ! grep -q "rename\|link:" s.err || fail "$*: failed after the work: $(cat s.err)"
  ls -A >after
  cmp -s before after || fail "$*: left files: $(diff before after)"
}

for target in adir adir/ ./ afile/ afile/x nodir/x new/ new/.; do
  raw_why=$(reason -O raw img.qcow2 "$target")
  qcow2_why=$(reason -f raw -O qcow2 data.raw "$target")
  for f in "" -f; do
    refused "$target" "$raw_why" unpack $f img.qcow2 "$target"
    refused "$target" "$qcow2_why" pack $f data.raw "$target"
    refused "$target" "$raw_why" bmap $f img.qcow2 -o "$target"
  done
done

# One new file named twice (the same name in one directory) is one
# target, as an existing one is; qemu-img has one target, so the oracle
# is the file left absent.
rm -f twice.raw
for f in "" -f; do
  for other in ./twice.raw adir/../twice.raw "$tmp/twice.raw"; do
    expect_fail "unpack: twice.raw and $other are the same target" \
      sparsecow unpack $f img.qcow2 twice.raw "$other"
    [ ! -e twice.raw ] || fail "unpack $f twice.raw $other: written"
  done
done
# Two new files of one name in different directories are two.
mkdir -p bdir
sparsecow unpack -q img.qcow2 twice.raw bdir/twice.raw
qemu-img compare -q -F raw img.qcow2 twice.raw || fail "twice.raw differs"
qemu-img compare -q -F raw img.qcow2 bdir/twice.raw || fail "bdir/twice.raw differs"

exit 0
