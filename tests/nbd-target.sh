#!/usr/bin/env bash
# NBD targets: unpack writes the guest data to qemu-nbd and nbdkit
# exports (read back with nbdcopy and compared with qemu-img's raw
# output), zero ranges are zeroed unless the export reads as zero
# already, a target that is too small or read-only is refused before
# anything is written, pack writes an image to an export, and a server
# started with [ ... ] is stopped at the end, also when the program is
# interrupted.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io qemu-nbd nbdkit nbdcopy cmp python3

cd "$tmp"
size=$((64 * 1024 * 1024))

qemu-img create -q -f qcow2 img.qcow2 $size
qemu-io -f qcow2 -c "write -P 0x11 0 100k" -c "write -z 2M 1M" \
  -c "write -P 0x33 10M 4k" -c "write -P 0 20M 128k" \
  -c "write -P 0x55 63M 1M" img.qcow2 >/dev/null
head -c $((2 * 1024 * 1024)) /dev/urandom > rand.bin
qemu-io -f qcow2 -c "write -s rand.bin 33M 2M" img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw

# A raw file served by qemu-nbd, full of another pattern first: every
# zero range of the image must be zeroed on the export.
qemu-img create -q -f raw disk.raw $size
qemu-io -f raw -c "write -P 0xee 0 $size" disk.raw >/dev/null
sparsecow unpack -q img.qcow2 -- [ qemu-nbd -f raw disk.raw ] ||
  fail "unpack to [ qemu-nbd ] failed"
cmp ref.raw disk.raw || fail "unpack to qemu-nbd differs from qemu-img convert"

# nbdkit memory through a URI, several connections (nbdkit allows
# multi-conn), read back while the server runs.
nbd_serve mem nbdkit memory $size
sparsecow unpack -q -C 4 img.qcow2 "$nbd_uri" || fail "unpack to a URI failed"
nbdcopy "$nbd_uri" back.raw
cmp ref.raw back.raw || fail "unpack to nbdkit memory differs"
# Again over what is there now, one connection, one request at a time.
sparsecow unpack -q -C 1 --requests 1 img.qcow2 "$nbd_uri" ||
  fail "unpack with one request in flight failed"
nbdcopy "$nbd_uri" back1.raw
cmp ref.raw back1.raw || fail "unpack with one request in flight differs"
# --target-is-zero on a fresh export (with -n, as qemu-img convert
# wants it): zero ranges are left alone.
nbd_serve fresh nbdkit memory $size
sparsecow unpack -q -n --target-is-zero img.qcow2 "$nbd_uri" ||
  fail "unpack --target-is-zero failed"
nbdcopy "$nbd_uri" fresh.raw
cmp ref.raw fresh.raw || fail "unpack --target-is-zero differs"
# An export that reads as zero throughout gets the data and one flush,
# no zeroing; one holding a byte far into a hole of the image is not
# taken for one that reads as zero, and the hole is zeroed.
nbd_serve logged nbdkit --filter=log memory $size logfile="$tmp/logged.log"
sparsecow unpack -q img.qcow2 "$nbd_uri" || fail "unpack to a fresh export failed"
nbdcopy "$nbd_uri" logged.raw
cmp ref.raw logged.raw || fail "unpack to a fresh export differs"
! grep -q " Zero id=" logged.log || fail "an export that reads as zero was zeroed"
[ "$(grep -c ' Flush id=' logged.log)" = 1 ] || fail "not one flush"
nbd_serve late nbdkit data "@$((50 * 1024 * 1024)) 0xee" size=$size
sparsecow unpack -q img.qcow2 "$nbd_uri" ||
  fail "unpack to an export with data in a hole failed"
nbdcopy "$nbd_uri" late.raw
cmp ref.raw late.raw || fail "data in a hole of the image was left on the export"
# A server without WRITE_ZEROES gets zeros written.
qemu-io -f raw -c "write -P 0xee 0 $size" disk.raw >/dev/null
sparsecow unpack -q img.qcow2 -- [ nbdkit --filter=nozero file disk.raw ] ||
  fail "unpack to a server without WRITE_ZEROES failed"
cmp ref.raw disk.raw || fail "unpack to a server without WRITE_ZEROES differs"

# Too small, or read-only: refused, and the export is untouched.
qemu-img create -q -f raw small.raw $((size / 2))
qemu-io -f raw -c "write -P 0xee 0 $((size / 2))" small.raw >/dev/null
cp small.raw small.before
expect_fail "^sparsecow: \[ qemu-nbd -f raw small.raw \]: the export is smaller" \
  sparsecow unpack img.qcow2 -- [ qemu-nbd -f raw small.raw ]
cmp small.before small.raw || fail "a refused unpack wrote to the export"
expect_fail "read-only" sparsecow unpack img.qcow2 -- [ nbdkit -r memory $size ]

# pack writes the image's bytes to an export; the image is read back
# from the file behind it.
qemu-img create -q -f raw packed.img $size
sparsecow pack -q -c ref.raw -- [ nbdkit file packed.img ] ||
  fail "pack to an NBD export failed"
qemu-img check -q -f qcow2 packed.img || fail "image packed to NBD is not clean"
qemu-img compare -q -f qcow2 -F raw packed.img ref.raw ||
  fail "image packed to NBD differs from its source"

# A server that takes 4 KiB blocks at least and 64 KiB at most: every
# request keeps to them (the filter fails any other).
bs="blocksize-minimum=4096 blocksize-maximum=64K blocksize-error-policy=error"
qemu-io -f raw -c "write -P 0xee 0 $size" disk.raw >/dev/null
sparsecow unpack -q img.qcow2 -- \
  [ nbdkit --filter=blocksize-policy file disk.raw $bs ] ||
  fail "unpack to a server with block size limits failed"
cmp ref.raw disk.raw || fail "unpack to a server with block size limits differs"
rm -f packed.img && qemu-img create -q -f raw packed.img $size
sparsecow pack -q ref.raw -- [ nbdkit --filter=blocksize-policy file packed.img $bs ] ||
  fail "pack to a server with block size limits failed"
qemu-img compare -q -f qcow2 -F raw packed.img ref.raw ||
  fail "image packed to a server with block size limits differs"

# Options of a server command are its own: "[" must come after "--".
echo precious > kept.qcow2
expect_fail "after --" sparsecow pack -f [ nbdkit -r file ref.raw ] kept.qcow2
[ "$(cat kept.qcow2)" = precious ] || fail "a refused pack replaced its target"
# One export as both source and target would be read as it is written,
# however its URI is spelt.
nbd_serve both nbdkit memory $size
expect_fail "both the source and the target" sparsecow pack "$nbd_uri" "$nbd_uri"
expect_fail "one export" sparsecow pack "$nbd_uri" \
  "nbd+unix:///?socket=$tmp/./both.sock"

# A server that advertises multi-conn but takes two clients at a time
# (qemu-nbd -e 2): the connections it does not answer are dropped, not
# waited for.
qemu-io -f raw -c "write -P 0xee 0 $size" disk.raw >/dev/null
timeout 60 "$SPARSECOW" unpack -q img.qcow2 -- [ qemu-nbd -f raw -e 2 disk.raw ] ||
  fail "unpack to qemu-nbd -e 2 failed or hung"
cmp ref.raw disk.raw || fail "unpack to qemu-nbd -e 2 differs"

# A server started here is stopped when the command ends...
gone () {                       # PID WHAT: the process must end soon
  for ((i = 0; i < 100; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
  fail "$2"
}
sparsecow unpack -q img.qcow2 -- [ nbdkit -P "$tmp/srv.pid" memory $size ] ||
  fail "unpack to [ nbdkit memory ] failed"
gone "$(cat srv.pid)" "the server started with [ ] still runs"
# interrupted WHAT READY SERVER-COMMAND...: unpack to a server that
# writes its pid to srv.pid, SIGINT to the program alone once the pid
# has appeared and the shell command READY succeeds; the program fails
# and the server is gone.
interrupted () {
  local what=$1 ready=$2 cmd pid rc=0; shift 2
  rm -f srv.pid srv.log
  "$SPARSECOW" unpack -q img.qcow2 -- [ "$@" ] &
  cmd=$!
  for ((i = 0; i < 200; i++)); do [ -s srv.pid ] && break; sleep 0.05; done
  [ -s srv.pid ] || fail "the server $what did not start"
  pid=$(cat srv.pid)
  for ((i = 0; i < 600; i++)); do eval "$ready" && break; sleep 0.05; done
  eval "$ready" || fail "unpack $what: never got to the point to interrupt"
  kill -INT "$cmd"
  wait "$cmd" || rc=$?
  [ "$rc" = 130 ] || fail "an unpack interrupted $what exited $rc, not 130"
  gone "$pid" "the server outlived an unpack interrupted $what"
}
# ...when the command is interrupted in the middle of the copy (a write
# has reached the server, which holds it for 1 s)...
interrupted "mid-copy" 'grep -q " Write id=" srv.log 2>/dev/null' \
  nbdkit -P "$tmp/srv.pid" --filter=log --filter=delay memory $size \
  delay-write=1 logfile="$tmp/srv.log"
# ...and while the server is still starting (it waits 3 s first).
interrupted "while its server started" true \
  sh -c "echo \$\$ > $tmp/srv.pid; sleep 3; exec nbdkit memory $size"
exit 0
