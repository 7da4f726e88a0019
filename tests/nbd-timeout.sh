#!/usr/bin/env bash
# --timeout bounds the whole command and measures silence: a started
# server stuck in a request, or one whose own backend never answers, is
# stopped and the command fails in about the time given; a server that
# answers one request at a time, each after a delay, is not silent
# however many requests wait behind.  qemu-img compare judges the data.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-nbd nbdkit python3 timeout

cd "$tmp"
elapsed () { echo $(( $(date +%s%N) / 1000000 - start_ms )); }

# ---- a server stuck in a read for 40 s ----------------------------------
truncate -s 16M slow.raw
cat > slow.sh <<EOS
#!/bin/sh
case "\$1" in
  get_size) echo 16M ;;
  pread) echo \$\$ > "$tmp/slow.pid"; exec sleep 40 ;;
  *) exit 2 ;;
esac
EOS
chmod +x slow.sh
cleanup_fn '[ -s "$tmp/slow.pid" ] && kill $(cat "$tmp/slow.pid") 2>/dev/null'
start_ms=$(( $(date +%s%N) / 1000000 ))
rc=0
timeout 60 "$SPARSECOW" pack --timeout 2 -- [ nbdkit -r sh ./slow.sh ] \
  out.qcow2 2>slow.err || rc=$?
t=$(elapsed)
[ "$rc" -ne 124 ] || fail "pack --timeout 2 from a stuck server hung"
[ "$rc" -ne 0 ] || fail "pack --timeout 2 from a stuck server succeeded"
grep -q "no reply from the server within 2 s" slow.err ||
  { cat slow.err >&2; fail "no timeout message from a stuck server"; }
[ "$t" -lt 15000 ] || fail "pack --timeout 2 from a stuck server took $t ms"
[ ! -e out.qcow2 ] || fail "a timed out pack left its target"

# ---- qemu-nbd whose backend accepts and never speaks --------------------
python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(8)
held = []
while True:
    held.append(s.accept()[0])
' "$tmp/silent.sock" &
silent_pid=$!
cleanup_fn "kill $silent_pid 2>/dev/null"
for ((i = 0; i < 200; i++)); do [ -S silent.sock ] && break; sleep 0.05; done
start_ms=$(( $(date +%s%N) / 1000000 ))
rc=0
timeout 60 "$SPARSECOW" map --timeout 2 -- \
  [ qemu-nbd -r -f raw "nbd+unix:///?socket=$tmp/silent.sock" ] \
  >/dev/null 2>silent.err || rc=$?
t=$(elapsed)
[ "$rc" -ne 124 ] || fail "map --timeout 2 of a server with a silent backend hung"
[ "$rc" -ne 0 ] || fail "map --timeout 2 of a server with a silent backend succeeded"
grep -q "no answer from the server within 2 s" silent.err ||
  { cat silent.err >&2; fail "no timeout message for a silent backend"; }
[ "$t" -lt 15000 ] || fail "map --timeout 2 with a silent backend took $t ms"

# ---- a server that answers one request every 0.3 s ----------------------
# 24 reads of 1 MiB queue up to 16 deep: the last of them waits about
# 4.8 s, the connection is never silent for more than 0.3 s.
head -c $((24 * 1024 * 1024)) /dev/urandom > busy.raw
"$SPARSECOW" pack -q --timeout 2 --requests 16 -- \
  [ nbdkit -r --filter=noparallel --filter=delay file busy.raw \
    rdelay=300ms serialize=requests ] busy.qcow2 2>busy.err ||
  { cat busy.err >&2; fail "--timeout 2 failed a server answering every 0.3 s"; }
qemu-img compare -q -F raw busy.qcow2 busy.raw ||
  fail "pack from a serialized slow server differs"
exit 0
