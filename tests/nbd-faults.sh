#!/usr/bin/env bash
# NBD faults: errors injected by nbdkit's error filter into reads,
# writes, zeroes, block status and flush; a server killed mid-copy; a
# server that stalls (--timeout); a server that lies in block status.
# Each one: a message that names the operation and the offset, a
# non-zero exit, no hang, no target file left, and never wrong data.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io nbdkit nbdcopy cmp python3 timeout

cd "$tmp"
size=$((64 * 1024 * 1024))
# 32 MiB of data in 1 MiB requests: an error rate of 30% misses all of
# them with a probability of 1e-5.
qemu-img create -q -f raw src.raw $size
head -c $((32 * 1024 * 1024)) /dev/urandom |
  dd of=src.raw bs=1M seek=8 conv=notrunc status=none
qemu-img convert -q -O qcow2 src.raw img.qcow2

# Run a command that must fail within 60 s with a message matching $1.
must_fail () {
  local pattern=$1; shift
  local rc=0
  timeout 60 "$@" 2>"$tmp/.stderr" >/dev/null || rc=$?
  [ "$rc" -ne 124 ] || fail "hang: $*"
  [ "$rc" -ne 0 ] || fail "expected failure: $*"
  grep -Eq -- "$pattern" "$tmp/.stderr" || {
    cat "$tmp/.stderr" >&2; fail "stderr of '$*' does not match '$pattern'"; }
  ! grep -q "AddressSanitizer\|runtime error\|Segmentation" "$tmp/.stderr" || {
    cat "$tmp/.stderr" >&2; fail "crash or sanitizer report from: $*"; }
}
no_target () {
  [ ! -e "$1" ] || fail "a failed command left $1"
  ! ls .*.tmp* "$1".* >/dev/null 2>&1 || fail "a failed command left a temporary file"
}
offset='at offset [0-9]+, length [0-9]+: '

# ---- the error filter, on each kind of request, at two rates ------------
for rate in 100% 30%; do
  must_fail "NBD read $offset.*Input/output error" \
    "$SPARSECOW" pack -- [ nbdkit -r --filter=error file src.raw \
                             error=EIO error-pread-rate=$rate ] out.qcow2
  no_target out.qcow2
  must_fail "NBD write $offset.*No space left on device" \
    "$SPARSECOW" unpack img.qcow2 -- [ nbdkit --filter=error memory $size \
                                       error=ENOSPC error-pwrite-rate=$rate ]
done
must_fail "NBD block status $offset.*Input/output error" \
  "$SPARSECOW" pack -- [ nbdkit -r --filter=error file src.raw \
                           error=EIO error-extents-rate=100% ] out.qcow2
no_target out.qcow2
# An export that reads as zero gets no zeroing: this one holds a byte
# of data at its end, so its holes are zeroed.
must_fail "NBD write zeroes $offset.*Input/output error" \
  "$SPARSECOW" unpack img.qcow2 -- [ nbdkit --filter=error data \
                                     "@$((size - 1)) 1" size=$size \
                                     error=EIO error-zero-rate=100% ]
# The error filter has no flush errors: a shell plugin over a file,
# whose flush fails.
truncate -s $size flush.img
must_fail "NBD flush $offset.*Input/output error" \
  "$SPARSECOW" unpack img.qcow2 -- [ nbdkit eval \
    get_size="echo $size" can_write='exit 0' can_flush='exit 0' \
    pread="dd if=$tmp/flush.img iflag=skip_bytes,count_bytes skip=\$4 count=\$3 status=none" \
    pwrite="dd of=$tmp/flush.img oflag=seek_bytes conv=notrunc seek=\$4 status=none" \
    flush='echo EIO flush failed >&2; exit 1' ]
# The image read from a server that fails.
qemu-img convert -q -c -O qcow2 src.raw c.qcow2
must_fail "NBD read $offset" \
  "$SPARSECOW" unpack -- [ nbdkit -r --filter=error file c.qcow2 \
                             error=EIO error-pread-rate=30% ] out.raw
no_target out.raw

# ---- a server killed in the middle of a copy ----------------------------
# The server is killed once a read has reached it (its log says so),
# which the delay filter then holds for 2 s.
nbd_serve slow nbdkit -r --filter=log --filter=delay file src.raw \
  delay-read=2 logfile="$tmp/slow.log"
"$SPARSECOW" pack "$nbd_uri" out.qcow2 2>"$tmp/killed.err" &
cmd=$!
for ((i = 0; i < 600; i++)); do
  grep -q " Read id=" "$tmp/slow.log" 2>/dev/null && break
  kill -0 $cmd 2>/dev/null || break
  sleep 0.05
done
grep -q " Read id=" "$tmp/slow.log" || fail "no read reached the server"
kill -9 "$nbd_pid"
rc=0
for ((i = 0; i < 600; i++)); do kill -0 $cmd 2>/dev/null || break; sleep 0.05; done
kill -0 $cmd 2>/dev/null && { kill -9 $cmd; fail "hang after the server was killed"; }
wait $cmd || rc=$?
[ "$rc" -ne 0 ] || fail "pack from a killed server exited 0"
grep -Eq "NBD (read|block status) $offset" killed.err ||
  { cat killed.err >&2; fail "no clear message when the server was killed"; }
no_target out.qcow2

# ---- a server that stalls, and --timeout --------------------------------
start=$(date +%s)
must_fail "NBD read $offset.*no reply from the server within 2 s" \
  "$SPARSECOW" pack --timeout 2 -- [ nbdkit -r --filter=delay file src.raw \
                                       delay-read=100 ] out.qcow2
[ $(( $(date +%s) - start )) -lt 30 ] || fail "--timeout 2 took too long"
no_target out.qcow2
# A server that never answers at all, not even the greeting.
start=$(date +%s)
must_fail "did not start serving.*no answer from the server within 2 s" \
  "$SPARSECOW" pack --timeout 2 -- [ sleep 100 ] out.qcow2
[ $(( $(date +%s) - start )) -lt 30 ] || fail "--timeout 2 took too long to connect"
no_target out.qcow2

# ---- a server that lies in block status ---------------------------------
# Answers that run past the range, cover only part of it, carry flags
# that mean nothing, or hold more extents than a reply may keep: the
# copy must still be exact.
for mode in past-end short flags many; do
  nbd_liar $mode
  rm -f out.qcow2
  timeout 120 "$SPARSECOW" pack -q "$liar_uri" out.qcow2 ||
    fail "pack from a server whose block status is $mode failed"
  qemu-img compare -q -F raw out.qcow2 src.raw ||
    fail "pack from a server whose block status is $mode differs"
  stop_liar
done
rm -f out.qcow2
nbd_liar zero-length
must_fail "NBD block status $offset.*empty extent" \
  "$SPARSECOW" pack "$liar_uri" out.qcow2
no_target out.qcow2
stop_liar
nbd_liar empty
must_fail "NBD block status $offset" "$SPARSECOW" pack "$liar_uri" out.qcow2
no_target out.qcow2
stop_liar
nbd_liar twice
must_fail "NBD block status $offset.*answered block status of base:allocation twice" \
  "$SPARSECOW" pack "$liar_uri" out.qcow2
no_target out.qcow2
stop_liar
exit 0
