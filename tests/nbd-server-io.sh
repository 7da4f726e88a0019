#!/usr/bin/env bash
# A server started with [ CMD ] never touches the data streams: what it
# prints goes to standard error, not into an image or raw stream on
# standard output, and it does not read a pipe that carries the image.
# And it never outlives the program: one that ignores SIGTERM is killed
# after a grace period when the program is stopped by a signal (map,
# which writes no file, as well as pack).  qemu-img and cmp judge.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img nbdkit cmp python3 pgrep

cd "$tmp"
head -c 1M /dev/urandom > base.raw
truncate -s 4M base.raw
qemu-img convert -q -c -O qcow2 base.raw base.qcow2

# Standard output of the server.
sparsecow pack -- [ sh -c "echo from-the-server; exec nbdkit -r file $tmp/base.raw" ] \
  - > so.qcow2 2> so.err
qemu-img compare -q -f raw -F qcow2 base.raw so.qcow2 ||
  fail "pack to stdout holds what the server printed"
grep -q from-the-server so.err || fail "the server's output was lost"
sparsecow unpack -- [ sh -c "echo from-the-server; exec nbdkit -r file $tmp/base.qcow2" ] \
  - > so.raw 2>/dev/null
cmp base.raw so.raw || fail "unpack to stdout holds what the server printed"

# Standard input: the image comes through a pipe; a server that would
# read its standard input reads nothing of it.
truncate -s 4M target.raw
cat base.qcow2 | sparsecow unpack -f - \
  -- [ sh -c "head -c 65536 >/dev/null; exec nbdkit file $tmp/target.raw" ]
cmp base.raw target.raw || fail "the server read the image's pipe"

# A server that ignores SIGTERM (and SIGINT) is killed all the same.
cat > stubborn.py <<'PY'
import signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1], "w").close()
time.sleep(120)
PY
for cmd in map pack; do
  rm -f started
  args=(-- '[' python3 "$tmp/stubborn.py" "$tmp/started" ']')
  [ $cmd = pack ] && args=("${args[@]}" never.qcow2)
  "$SPARSECOW" $cmd --timeout 100 "${args[@]}" 2>/dev/null &
  pid=$!
  for ((i = 0; i < 200; i++)); do [ -e started ] && break; sleep 0.05; done
  [ -e started ] || fail "$cmd: the server did not start"
  kill -TERM $pid
  wait $pid 2>/dev/null || :
  for ((i = 0; i < 100; i++)); do
    pgrep -f "$tmp/stubborn.py" >/dev/null || break
    sleep 0.1
  done
  if pgrep -f "$tmp/stubborn.py" >/dev/null; then
    pkill -9 -f "$tmp/stubborn.py"
    fail "$cmd: a server that ignores SIGTERM outlived the program"
  fi
  [ ! -e never.qcow2 ] || fail "$cmd: left a target"
done
exit 0
