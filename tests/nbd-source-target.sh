#!/usr/bin/env bash
# The target checks run whatever the source is.  With an NBD source (a
# URI, or a server started with [ CMD ]), pack, unpack and bmap -o
# refuse a target that an attached loop device reads, naming the loop
# device, as they do with a file source; and a target that is a file
# the started server reads is refused as the source itself is.  A
# target that the serving process has open (found from the connection:
# the started server, the peer of a Unix socket, the other end of a TCP
# connection on this host) is refused too, naming the server and the
# file, whatever options hid the file from the command line.  Nothing
# is written to a refused target.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io qemu-nbd nbdkit python3 cmp

cd "$tmp"
MiB=$((1024 * 1024))

qemu-img create -q -f qcow2 img.qcow2 16M
qemu-io -f qcow2 -c "write -P 0x22 0 1M" img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw

# A file the started server reads: the source itself, for -f and -n.
cp ref.raw served.raw
cp served.raw served.ref
for opt in -f -n; do
  expect_fail "^sparsecow: served.raw: is the file of the NBD server served.raw itself; write to another name\$" \
    sparsecow pack $opt -- [ qemu-nbd -r -f raw served.raw ] served.raw
done
cmp served.ref served.raw || fail "a refused pack changed the served file"
cp img.qcow2 served.qcow2
expect_fail "^sparsecow: served.qcow2: is the file of the NBD server served.qcow2 itself" \
  sparsecow unpack -n -- [ qemu-nbd -r -f raw served.qcow2 ] served.qcow2
cmp img.qcow2 served.qcow2 || fail "a refused unpack changed the served file"

# A file the server has open, though no argument names it: found from
# the server's process.  Each refusal names the server and the file.
served_by () {
  local uri=$1 file=$2 path=$2; shift 2
  [ "${path#/}" != "$path" ] || path=$tmp/$file
  expect_fail "^sparsecow: $file: the NBD server .* \\(pid [0-9]+\\) has it open as $path; write to another target\$" "$@"
  grep -qF -- "$uri" "$tmp/.stderr" || fail "the refusal does not name $uri"
}
qemu-img create -q -f qcow2 -b served.raw -F raw over.qcow2
nbd_serve kit nbdkit -r file served.raw
served_by "$nbd_uri" served.raw sparsecow pack -n "$nbd_uri" served.raw
served_by "$nbd_uri" served.raw sparsecow pack -f "$nbd_uri" served.raw
served_by "$nbd_uri" served.raw sparsecow bmap -f "$nbd_uri" -o served.raw
served_by "$nbd_uri" served.raw \
  sparsecow pack -f --bmap-out served.raw "$nbd_uri" out.qcow2
[ ! -e out.qcow2 ] || fail "a refused pack left its image"
opts="driver=raw,file.filename=$tmp/served.raw,file.locking=off"
served_by "[ qemu-nbd" served.raw \
  sparsecow pack -n -- [ qemu-nbd -r --image-opts "$opts" ] served.raw
served_by "[ qemu-nbd" served.raw \
  sparsecow pack -n -- [ qemu-nbd -r -f qcow2 over.qcow2 ] served.raw
served_by "json:" served.raw sparsecow pack -n -- \
  [ qemu-nbd -r "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"$tmp/served.raw\",\"locking\":\"off\"}}" ] served.raw
nbd_serve over qemu-nbd -r -f qcow2 over.qcow2
served_by "$nbd_uri" served.raw sparsecow pack -n "$nbd_uri" served.raw
cp img.qcow2 served.qcow2
nbd_serve kitq nbdkit -r file served.qcow2
served_by "$nbd_uri" served.qcow2 sparsecow unpack -n "$nbd_uri" served.qcow2
cmp img.qcow2 served.qcow2 || fail "a refused unpack changed the served image"
# Over TCP on this host: the process at the other end of the connection.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
qemu-nbd -r -b 127.0.0.1 -p "$port" --persistent --image-opts "$opts" &
tcp_pid=$!
cleanup_fn "kill $tcp_pid 2>/dev/null; wait $tcp_pid 2>/dev/null"
for ((i = 0; i < 200; i++)); do
  qemu-img info "nbd://127.0.0.1:$port" >/dev/null 2>&1 && break
  kill -0 $tcp_pid 2>/dev/null || fail "qemu-nbd on port $port exited early"
  sleep 0.05
done
served_by "nbd://127.0.0.1:$port" served.raw \
  sparsecow pack -n "nbd://127.0.0.1:$port" served.raw
served_by "nbd://localhost:$port" served.raw \
  sparsecow unpack -n "nbd://localhost:$port" served.raw
cmp served.ref served.raw || fail "a refused command changed the served file"
# Another file is written as before.
cp ref.raw other.raw
sparsecow pack -n "nbd://127.0.0.1:$port" other.raw || fail "pack -n into other.raw failed"
qemu-img compare -q -f raw -F qcow2 served.ref other.raw || fail "other.raw differs"

# A file behind an attached loop device (skipped without losetup or
# root).
head -c $((16 * MiB)) /dev/urandom > back.img
cp back.img back.ref
loop_attach back.img
nbd_serve src qemu-nbd -r -f raw ref.raw
raw_uri=$nbd_uri
nbd_serve img qemu-nbd -r -f qcow2 img.qcow2
img_uri=$nbd_uri
want="^sparsecow: back.img: is the backing file of the loop device $dev; unmount and detach it first \\(losetup -d $dev\\)\$"
expect_fail "$want" sparsecow pack -f "$raw_uri" back.img
expect_fail "$want" sparsecow pack -n "$raw_uri" back.img
expect_fail "$want" sparsecow pack -n -- [ qemu-nbd -r -f raw ref.raw ] back.img
expect_fail "$want" sparsecow unpack -n "$img_uri" back.img
expect_fail "$want" sparsecow unpack -f -- [ qemu-nbd -r -f qcow2 img.qcow2 ] back.img
expect_fail "$want" sparsecow pack --bmap-out back.img "$raw_uri" out.qcow2
[ ! -e out.qcow2 ] || fail "a refused pack left its image"
expect_fail "$want" sparsecow bmap "$raw_uri" -o back.img
cmp back.ref back.img || fail "a refused command changed the loop device's file"

# A loop device over a file the server has open, and the block device
# it serves.
nbd_serve kitb nbdkit -r file back.img
expect_fail "^sparsecow: $dev: is a loop device over the file of the NBD server .* $tmp/back.img; write to another target\$" \
  sparsecow pack -n -f "$nbd_uri" "$dev"
nbd_serve dev qemu-nbd -r -f raw "$dev"
served_by "$nbd_uri" "$dev" sparsecow pack -n -f "$nbd_uri" "$dev"
kill $nbd_pid; wait $nbd_pid 2>/dev/null || :
cmp back.ref back.img || fail "a refused command changed the loop device's file"

# Detached: written, and the same as from a file source.
losetup -d "$dev"
sparsecow pack -n "$raw_uri" back.img || fail "pack -n from $raw_uri failed"
qemu-img compare -q -f raw -F qcow2 ref.raw back.img || fail "back.img differs from ref.raw"
exit 0
