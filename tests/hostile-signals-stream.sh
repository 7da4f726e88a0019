#!/usr/bin/env bash
# SIGINT that lands on the thread reading a stream source, while that
# read waits for a writer that has stalled part way into a piece.  The
# run stops with "interrupted" and exit 130, every time; no other
# message (no made-up read error at a position of the stream), the
# target untouched.
# - pack -n from a FIFO into a file (written in place, so the signal
#   stops the run instead of ending the program), with 2 and 4 threads:
#   the reader is interrupted after it took part of its piece, and
#   another worker waits for the next read turn.
# - unpack -n of an image from a FIFO: the same for the stream decoder.
# The signal goes to the reading thread itself (tgkill), found blocked
# in its read of the pipe, so that each round interrupts a read.
# SIGNAL_ROUNDS rounds of each (default 10).
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires python3 qemu-img cmp mkfifo timeout

cd "$tmp"
rounds=${SIGNAL_ROUNDS:-10}
head -c 6000000 /dev/urandom > src.raw
qemu-img convert -q -f raw -O qcow2 src.raw src.qcow2

# signal_reader PID: wait until a thread of PID sleeps in a read of a
# pipe (read or splice), then send SIGINT to that thread alone.
signal_reader () {
  python3 - "$1" <<'PY'
import ctypes, os, sys, time
pid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
SYS_tgkill = {"x86_64": 234, "aarch64": 131}.get(os.uname().machine)
if SYS_tgkill is None:
    sys.exit(77)
deadline = time.time() + 30
while time.time() < deadline:
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            wchan = open("/proc/%d/task/%s/wchan" % (pid, tid)).read()
            state = open("/proc/%d/task/%s/stat" % (pid, tid)).read()
        except OSError:
            continue
        if "pipe" in wchan and state.rsplit(")", 1)[1].split()[0] == "S":
            time.sleep(0.2)     # still there: blocked, not passing by
            if open("/proc/%d/task/%s/wchan" % (pid, tid)).read() == wchan:
                if libc.syscall(SYS_tgkill, pid, int(tid), 2) != 0:
                    sys.exit(1)
                sys.exit(0)
    time.sleep(0.05)
sys.exit(1)
PY
}

# run_round WHAT FEED ARGS...: start sparsecow ARGS (reading fifo),
# feed it the first FEED bytes of WHAT and hold the FIFO open, signal
# the reading thread, and judge the end of the run.
run_round () {
  local what=$1 feed=$2 rc=0 src; shift 2
  rm -f fifo; mkfifo fifo
  # Not under valgrind: the signal goes to a thread of sparsecow itself.
  "$SPARSECOW" "$@" 2>err &
  local pid=$!
  exec 3>fifo
  head -c "$feed" "$what" >&3
  src=0; signal_reader $pid || src=$?
  [ $src != 77 ] || { exec 3>&-; kill $pid; echo "$0: SKIP: no tgkill number"; exit 77; }
  [ $src = 0 ] || { exec 3>&-; kill $pid; wait $pid || :; cat err >&2; fail "$*: no thread of the run waits in a read of the FIFO"; }
  # The run must stop while the writer still holds the FIFO open.
  timeout 20 tail --pid=$pid -f /dev/null || { kill $pid; fail "$*: did not stop after SIGINT"; }
  wait $pid || rc=$?
  exec 3>&-
  [ $rc = 130 ] || { cat err >&2; fail "$*: exit $rc after SIGINT, not 130"; }
  sed -n 1p err | grep -Eqx "sparsecow: (fifo: )?interrupted" ||
    { cat err >&2; fail "$*: the first message is not that the run was interrupted"; }
  ! grep -v -e "interrupted" -e "written in place" err ||
    fail "$*: a message other than the interruption"
}

for ((round = 0; round < rounds; round++)); do
  for j in 2 4; do
    rm -f t.img; truncate -s 16M t.img; cp t.img zero.img
    # 4000000 bytes: part way into the fourth MiB, the piece being read.
    run_round src.raw 4000000 pack -n -j $j fifo t.img
    cmp -s t.img zero.img || fail "pack -n -j $j: the target was written"
  done
  rm -f t.raw; truncate -s 6000000 t.raw
  run_round src.qcow2 $(( $(stat -c %s src.qcow2) / 2 )) unpack -n fifo t.raw
done
echo "$0: $((3 * rounds)) interrupted stream reads"
exit 0
