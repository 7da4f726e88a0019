#!/usr/bin/env bash
# Messages about a misbehaving server: each one names the server once,
# says what it did (broke the protocol, exited with a status) and is
# the same from run to run.  qemu-img writes the image, nbdkit serves
# it with a read that fails, nbd-liar.py breaks the protocol.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img nbdkit python3 timeout dd

cd "$tmp"
head -c $((4 * 1024 * 1024)) /dev/urandom > src.raw
qemu-img convert -q -O qcow2 src.raw img.qcow2

# ---- the server named once ----------------------------------------------
# The L2 table of a fresh qemu-img image of 4 MiB sits in the cluster
# before its first data cluster: reads of that cluster fail.
data=$(qemu-img map --output=json img.qcow2 | sed -n 's/.*"offset": \([0-9]*\).*/\1/p' | head -1)
[ -n "$data" ] || fail "qemu-img map gave no data offset"
l2=$((data - 65536))
img_size=$(stat -c %s img.qcow2)
server=(nbdkit -r eval get_size="echo $img_size"
        pread="if [ \$4 -ge $l2 ] && [ \$4 -lt $data ]; then echo EIO no >&2; exit 1; fi; dd if=$tmp/img.qcow2 iflag=skip_bytes,count_bytes skip=\$4 count=\$3 status=none")
for cmd in map info check; do
  rc=0
  timeout 60 "$SPARSECOW" $cmd -- [ "${server[@]}" ] >/dev/null 2>$cmd.err || rc=$?
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] ||
    fail "$cmd of an image whose L2 table cannot be read: exit $rc"
  grep '^sparsecow:' $cmd.err > $cmd.msg || fail "$cmd gave no message"
  n=$(grep -o '\[ nbdkit -r eval' $cmd.msg | wc -l)
  [ "$n" -eq 1 ] || { cat $cmd.err >&2; fail "$cmd names the server $n times"; }
  grep -q "NBD read at offset $l2" $cmd.msg ||
    { cat $cmd.err >&2; fail "$cmd does not say which read failed"; }
done

# ---- a server that breaks the protocol in block status -----------------
nbd_liar twice
expect_fail "NBD block status at offset 0, length [0-9]+: the server answered block status of base:allocation twice" \
  "$SPARSECOW" map "$liar_uri"
grep -q "asked" "$tmp/.stderr" && fail "self-contradictory message: $(cat "$tmp/.stderr")"
stop_liar
nbd_liar empty
expect_fail "NBD block status at offset 0, length [0-9]+: the server broke the NBD protocol" \
  "$SPARSECOW" map "$liar_uri"
stop_liar

# ---- a server that exits before it serves -------------------------------
# The same words every time, with the status, however early it went.
for i in 1 2 3 4 5 6; do
  expect_fail "^sparsecow: \[ sh -c exit 3 \]: the NBD server exited with status 3" \
    timeout 60 "$SPARSECOW" map -- [ sh -c 'exit 3' ]
  expect_fail "the NBD server exited with status 3" \
    timeout 60 "$SPARSECOW" pack -- [ sh -c 'sleep 0.2; exit 3' ] never.qcow2
  [ ! -e never.qcow2 ] || fail "a failed pack left its target"
done
expect_fail "the NBD server was killed by signal 9" \
  timeout 60 "$SPARSECOW" info -- [ sh -c 'kill -9 $$' ]
exit 0
