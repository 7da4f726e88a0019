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

# One stream by two names is one output.  pack's bmap and its image
# into the pipe on standard output, "-" for one and /dev/stdout (or
# /proc/self/fd/1, /dev/fd/1) for the other, would come out as one
# stream of XML and image; refused, nothing written into the pipe.
# qemu-img and bmaptool judge the same command with two outputs.
for name in /dev/stdout /proc/self/fd/1 /dev/fd/1; do
  for args in "--bmap-out $name data.raw -" "--bmap-out - data.raw $name"; do
    { rc=0; sparsecow pack $args 2>s.err || rc=$?; echo $rc >rc.out; } |
      cat >piped.out
    [ "$(cat rc.out)" = 1 ] || fail "pack $args | cat: exit $(cat rc.out)"
    grep -q "^sparsecow: pack: --bmap-out and TARGET are one file" s.err ||
      fail "pack $args: $(cat s.err)"
    [ ! -s piped.out ] ||
      fail "pack $args: $(wc -c <piped.out) bytes into the pipe"
  done
done
sparsecow pack --bmap-out data.bmap data.raw - | cat >piped.qcow2
qemu-img compare -q -f raw -F qcow2 data.raw piped.qcow2 ||
  fail "pack --bmap-out data.bmap data.raw - | cat: the image differs"
if command -v bmaptool >/dev/null; then
  bmaptool -q copy --bmap data.bmap data.raw copied.raw ||
    fail "bmaptool copy refuses the bmap of pack --bmap-out FILE ... -"
  cmp data.raw copied.raw
fi

# A named pipe by two names (hard links) is one pipe: written as the
# target it would feed pack its own output.  Refused before either end
# is opened (opened, the reading end would wait for a writer).
mkfifo fifo
ln fifo fifo2
rc=0
timeout 20 "$SPARSECOW" pack fifo fifo2 2>s.err || rc=$?
[ "$rc" = 1 ] && grep -q "^sparsecow: fifo2: is the source fifo itself" s.err ||
  fail "pack fifo fifo2 (one pipe): exit $rc: $(cat s.err)"

# Standard output is a target by another name: "1<>FILE" makes it that
# file.  bmap's map (on standard output by default, or with -o -) is
# not written over its source nor over the source's backing file, and
# verify's verdict not into A, B or a file of their chains; refused
# before anything is written.  cmp and qemu-img judge what is left.
qemu-img create -q -f qcow2 base.qcow2 64M
qemu-io -c "write -P 7 1M 1M" base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-io -c "write -P 9 8M 1M" top.qcow2 >/dev/null
qemu-img convert -O raw top.qcow2 top.raw
sparsecow pack -q -c --digest data.raw dig.qcow2
for f in data.raw img.qcow2 base.qcow2 dig.qcow2; do cp $f $f.keep; done
# stdout_is FILE STATUS PATTERN CMD...: CMD with standard output open
# on FILE exits STATUS, says PATTERN, and leaves FILE as it was.
stdout_is () {
  local file=$1 status=$2 pattern=$3 rc=0; shift 3
  sparsecow "$@" 1<>"$file" 2>s.err || rc=$?
  [ "$rc" = "$status" ] || fail "$* 1<>$file: exit $rc: $(cat s.err)"
  grep -q -- "$pattern" s.err || fail "$* 1<>$file: $(cat s.err)"
  cmp "$file.keep" "$file" || fail "$* 1<>$file: written into $file"
}
for o in "" "-o -"; do
  stdout_is data.raw 1 "^sparsecow: stdout: is the source data.raw itself" \
    bmap $o data.raw
  stdout_is img.qcow2 1 "^sparsecow: stdout: is the source img.qcow2 itself" \
    bmap $o img.qcow2
  stdout_is base.qcow2 1 "^sparsecow: stdout: is the backing file base.qcow2" \
    bmap $o top.qcow2
done
stdout_is img.qcow2 2 "text (on standard output) would be written into img.qcow2" \
  verify img.qcow2 data.raw
stdout_is img.qcow2 2 "text (on standard output) would be written into img.qcow2" \
  verify data.raw img.qcow2
stdout_is dig.qcow2 2 "text (on standard output) would be written into dig.qcow2" \
  verify dig.qcow2
stdout_is base.qcow2 2 "would be written into base.qcow2, the backing file of top.qcow2" \
  verify top.raw top.qcow2
# The reports of info, check and map on standard output likewise.
for c in info check map; do
  stdout_is img.qcow2 1 "text (on standard output) would be written into img.qcow2" \
    $c img.qcow2
  stdout_is base.qcow2 1 "would be written into base.qcow2, the backing file of top.qcow2" \
    $c top.qcow2
done
qemu-img compare -q top.qcow2 top.raw || fail "top.qcow2 changed"
sparsecow verify -q dig.qcow2 || fail "dig.qcow2: the digest no longer matches"

exit 0
