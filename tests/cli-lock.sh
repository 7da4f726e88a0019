#!/bin/bash
# qemu's image locks: sparsecow does not replace an image that qemu-nbd
# holds, reads one that qemu-nbd writes only with -U, and holds the
# locks of a writer while it writes an image, so that qemu-img refuses
# to open it half written: a named target, or a file behind standard
# output (not a pipe).
. "$srcdir/functions.sh"
requires qemu-img qemu-io qemu-nbd

cd "$tmp"
qemu-img create -q -f qcow2 img.qcow2 8M
qemu-io -c "write -P 7 1M 2M" img.qcow2 >/dev/null
qemu-img convert -f qcow2 -O raw img.qcow2 ref.raw
truncate -s 8M other.raw
sum_before=$(md5sum <img.qcow2)

# ---- qemu-nbd writes the image ------------------------------------------
nbd_serve rw qemu-nbd -f qcow2 img.qcow2
# qemu itself says the image is in use: the oracle for what follows.
# On a file system without OFD locks qemu goes on without them, and so
# does sparsecow: nothing to test then.
if qemu-img info img.qcow2 >/dev/null 2>&1; then
  echo "$0: SKIP: qemu takes no image locks on this file system"
  exit 77
fi

expect_fail "img.qcow2: .*\"write\" lock" sparsecow pack -f other.raw img.qcow2
# Standard output open on it is named "stdout", as its other errors are.
expect_fail "^sparsecow: stdout: .*\"write\" lock" \
  sh -c 'exec "$@" pack other.raw - 1<>img.qcow2' sh "$SPARSECOW"
[ "$(md5sum <img.qcow2)" = "$sum_before" ] || fail "pack -f changed the image"
[ -z "$(ls -A | grep sparsecow-)" ] || fail "a temporary file was left"
# Nor written into where it is.
qemu-img create -q -f qcow2 small.qcow2 64k
expect_fail "img.qcow2: .*\"write\" lock" sparsecow unpack -n small.qcow2 img.qcow2
[ "$(md5sum <img.qcow2)" = "$sum_before" ] || fail "unpack -n changed the image"
expect_fail 'shared "write" lock' sparsecow info img.qcow2
expect_fail 'shared "write" lock' sparsecow info --output=json img.qcow2
expect_fail 'shared "write" lock' sparsecow map --output=json img.qcow2
expect_fail 'shared "write" lock' sparsecow check img.qcow2
expect_fail 'shared "write" lock' sparsecow unpack img.qcow2 out.raw
[ ! -e out.raw ] || fail "a refused unpack left out.raw"
expect_fail 'shared "write" lock' sparsecow pack img.qcow2 copy.qcow2
expect_fail 'shared "write" lock' sparsecow verify img.qcow2 ref.raw
expect_fail 'shared "write" lock' sparsecow verify img.qcow2

# -U reads it anyway, as qemu-img -U does.
qemu-img info -U --output=json img.qcow2 >q.json
sparsecow info -U --output=json img.qcow2 >s.json
python3 -c 'import json,sys; a=json.load(open("q.json")); b=json.load(open("s.json")); assert a["virtual-size"] == b["virtual-size"] and a["format-specific"] == b["format-specific"]' ||
  fail "info -U differs from qemu-img info -U"
sparsecow map -U --output=json img.qcow2 >/dev/null
sparsecow check -U img.qcow2 >/dev/null
sparsecow unpack -U img.qcow2 out.raw
cmp ref.raw out.raw || fail "unpack -U differs"
qemu-img compare -U img.qcow2 ref.raw >/dev/null ||
  fail "qemu-img compare -U finds the image differs from ref.raw"
sparsecow verify -U img.qcow2 ref.raw >/dev/null ||
  fail "verify -U of the image against ref.raw failed"
kill "$nbd_pid"; wait "$nbd_pid" 2>/dev/null || :

# ---- qemu-nbd -r only reads it ------------------------------------------
nbd_serve ro qemu-nbd -r -f qcow2 img.qcow2
# Reading is shared, as qemu-img info shares it ...
qemu-img info img.qcow2 >/dev/null || fail "test setup: qemu-img info refused"
sparsecow info img.qcow2 >/dev/null
sparsecow unpack -f img.qcow2 out.raw
# ... replacing is not: the reader does not share writing.
expect_fail "img.qcow2: .*\"write\" lock" sparsecow pack -f other.raw img.qcow2
# Standard output open on it is named "stdout", as its other errors are.
expect_fail "^sparsecow: stdout: .*\"write\" lock" \
  sh -c 'exec "$@" pack other.raw - 1<>img.qcow2' sh "$SPARSECOW"
[ "$(md5sum <img.qcow2)" = "$sum_before" ] || fail "pack -f changed the image"
kill "$nbd_pid"; wait "$nbd_pid" 2>/dev/null || :

# ---- qemu-nbd writes raw data -------------------------------------------
# qemu-img convert and compare refuse raw data that qemu-nbd writes
# (the oracle); pack and verify refuse it too, and read it with -U.
cp ref.raw held.raw
nbd_serve rawrw qemu-nbd -f raw held.raw
if qemu-img convert -f raw -O qcow2 held.raw q-held.qcow2 2>/dev/null; then
  fail "test setup: qemu-img convert read raw data qemu-nbd writes"
fi
expect_fail 'held.raw: .*shared "write" lock' sparsecow pack held.raw held.qcow2
[ ! -e held.qcow2 ] || fail "pack of held raw data left held.qcow2"
expect_fail 'held.raw: .*shared "write" lock' sparsecow verify held.raw ref.raw
expect_fail 'held.raw: .*shared "write" lock' sparsecow verify ref.raw held.raw
# bmap reads the data for its checksums, as convert reads it to copy.
expect_fail 'held.raw: .*shared "write" lock' sparsecow bmap held.raw
sparsecow bmap -U held.raw >/dev/null || fail "bmap -U of held raw data failed"
sparsecow pack -U held.raw held.qcow2
qemu-img compare -U held.qcow2 ref.raw >/dev/null || fail "pack -U of held raw data differs"
sparsecow verify -U held.raw ref.raw >/dev/null || fail "verify -U of held raw data failed"
kill "$nbd_pid"; wait "$nbd_pid" 2>/dev/null || :

# ---- qemu-nbd writes the backing file of an overlay ---------------------
# qemu-img check cannot open the chain (the oracle); neither can check,
# and -U reads it, as qemu-img check -U does.
qemu-img create -q -f qcow2 -b img.qcow2 -F qcow2 ovl.qcow2
nbd_serve base qemu-nbd -f qcow2 img.qcow2
qemu-img check ovl.qcow2 >check.out 2>&1 &&
  fail "test setup: qemu-img check opened an overlay whose base qemu-nbd writes"
grep -q '"write" lock' check.out ||
  fail "test setup: qemu-img check failed otherwise: $(cat check.out)"
expect_fail 'img.qcow2.*"write" lock|"write" lock.*img.qcow2' sparsecow check ovl.qcow2
qemu-img check -U ovl.qcow2 >/dev/null || fail "test setup: qemu-img check -U"
sparsecow check -U ovl.qcow2 >/dev/null || fail "check -U of the overlay failed"
kill "$nbd_pid"; wait "$nbd_pid" 2>/dev/null || :

# ---- sparsecow writes an image ------------------------------------------
# The source answers one request at a time and holds back the one that
# reaches its end until the test opens the gate, so the image is half
# written for as long as the test needs: the piece with its header
# first, then the data as the source gives it (-S 0: every cluster is
# copied in the second pass, after the header; without it the data of
# an export goes to its place in the first pass and the header comes
# last).  qemu-img info must refuse the half-written file.
requires nbdkit
mkdir w
wdir=$(cd w && pwd -P)
# gated_source FILE: sets gated to the server command of an export of
# FILE whose read of its last byte waits for the file "gate" (or for
# the end of the server).
gated_source () {
  local size
  size=$(stat -c %s "$1")
  gated=(nbdkit -r eval "get_size=echo $size"
    "pread=[ \$((\$3 + \$4)) -lt $size ] ||
           while [ ! -e '$tmp/gate' ] && kill -0 \$PPID; do sleep 0.01; done
           dd if='$tmp/$1' iflag=skip_bytes,count_bytes skip=\$4 count=\$3 status=none")
}
head -c 3M /dev/urandom >src3.raw
head -c 2M /dev/urandom >src2.raw
cleanup_fn "touch '$tmp/gate'"
rm -f gate
gated_source src3.raw
# The program itself in the background, so that $! is its process.
$SC_VALGRIND "$SPARSECOW" pack -q -S 0 -j 1 -C 1 --requests 1 \
  -- [ "${gated[@]}" ] w/new.qcow2 &
pack_pid=$!
cleanup_fn "kill $pack_pid 2>/dev/null"
# The target has no name until it is complete (or a temporary one): it
# is found through the descriptor the program writes it with.
seen=
for ((i = 0; i < 600; i++)); do
  for fd in /proc/$pack_pid/fd/*; do
    case $(readlink "$fd" 2>/dev/null) in
      "$wdir"/*)
        [ "$(head -c 4 "$fd" 2>/dev/null | od -An -tx1 | tr -d ' ')" = \
          514649fb ] && seen=$fd ;;
    esac
  done
  [ -n "$seen" ] && break
  kill -0 $pack_pid 2>/dev/null || break
  sleep 0.05
done
[ -n "$seen" ] || fail "never saw the image being written"
qemu-img info -f qcow2 "$seen" >info.out 2>&1 &&
  fail "qemu-img info opened an image sparsecow is writing: $(cat info.out)"
grep -q "lock" info.out || fail "qemu-img info failed otherwise: $(cat info.out)"
touch gate
wait $pack_pid || fail "pack from the slow server failed"
# Done, the locks are gone with the writer.
qemu-img info w/new.qcow2 >/dev/null || fail "qemu-img info of the finished image"
qemu-img check -q w/new.qcow2
qemu-img compare -q -f raw -F qcow2 src3.raw w/new.qcow2

# ---- an image written to standard output ----------------------------------
# A regular file behind standard output is an image being written like a
# named one: held as qemu holds what it writes, so that qemu-img info
# refuses it half written.
rm -f gate
gated_source src2.raw
$SC_VALGRIND "$SPARSECOW" pack -q -S 0 -j 1 -C 1 --requests 1 \
  -- [ "${gated[@]}" ] - >w/stdout.qcow2 &
pack_pid=$!
cleanup_fn "kill $pack_pid 2>/dev/null"
for ((i = 0; i < 600; i++)); do
  [ "$(head -c 4 w/stdout.qcow2 | od -An -tx1 | tr -d ' ')" = 514649fb ] &&
    break
  kill -0 $pack_pid 2>/dev/null || break
  sleep 0.05
done
kill -0 $pack_pid 2>/dev/null ||
  fail "test setup: pack to standard output ended before it was seen"
qemu-img info w/stdout.qcow2 >info.out 2>&1 &&
  fail "qemu-img info opened an image written to standard output: $(cat info.out)"
grep -q 'Failed to get shared "write" lock' info.out ||
  fail "qemu-img info failed otherwise: $(cat info.out)"
touch gate
wait $pack_pid || fail "pack to standard output from the slow server failed"
qemu-img info w/stdout.qcow2 >/dev/null ||
  fail "qemu-img info of the finished image written to standard output"
qemu-img check -q w/stdout.qcow2
qemu-img compare -q -f raw -F qcow2 src2.raw w/stdout.qcow2

# A file behind standard output that qemu uses is not written: "1<>"
# opens it without truncating it, so that what it holds can be checked.
nbd_serve rw2 qemu-nbd -f qcow2 img.qcow2
rc=0
sparsecow pack -q other.raw - 1<>img.qcow2 2>err.out || rc=$?
[ $rc -ne 0 ] && grep -q '"write" lock' err.out ||
  fail "pack to standard output that qemu-nbd holds: exit $rc, $(cat err.out)"
[ "$(md5sum <img.qcow2)" = "$sum_before" ] ||
  fail "pack wrote into an image qemu-nbd holds through standard output"
kill "$nbd_pid"; wait "$nbd_pid" 2>/dev/null || :

# The locks go with sparsecow, also when the shell keeps the file open
# (its descriptor is standard output's open file description).
exec 5>w/kept.qcow2
sparsecow pack -q other.raw - >&5
qemu-img info w/kept.qcow2 >info.out 2>&1 ||
  fail "the image is still locked after pack, while the shell holds it: $(cat info.out)"
exec 5>&-
qemu-img compare -q -f raw -F qcow2 other.raw w/kept.qcow2

# A pipe has nothing to lock: written as ever.
sparsecow pack -q other.raw - | cat >w/piped.qcow2
qemu-img compare -q -f raw -F qcow2 other.raw w/piped.qcow2

# The file that pack -f replaces is held as qemu holds what it writes
# until it is replaced: qemu cannot open it meanwhile, and lose what it
# would write into a file about to be unlinked.  (The source is a FIFO
# kept open, so the pack waits with its target made.)
cp img.qcow2 w/old.qcow2
mkfifo w/fifo
sparsecow pack -q -f w/fifo w/old.qcow2 2>pack.err &
pack_pid=$!
exec 6>w/fifo
head -c 1M /dev/urandom >&6
for ((i = 0; i < 600; i++)); do
  qemu-img info w/old.qcow2 >info.out 2>&1 || break
  running $pack_pid || break
  sleep 0.05
done
grep -q 'Failed to get shared "write" lock' info.out ||
  { exec 6>&-; fail "qemu-img info opened the file pack -f replaces: $(cat info.out)"; }
rc=0
qemu-io -c 'write -P 0x5a 0 4k' w/old.qcow2 >io.out 2>&1 || rc=$?
exec 6>&-
[ $rc -ne 0 ] && grep -q '"write" lock' io.out ||
  fail "qemu-io wrote into the file pack -f replaces: exit $rc, $(cat io.out)"
wait $pack_pid || fail "pack -f from a FIFO failed: $(cat pack.err)"
qemu-img check -q w/old.qcow2
qemu-img info w/old.qcow2 >/dev/null || fail "the replaced image stays locked"
