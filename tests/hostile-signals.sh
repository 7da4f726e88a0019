#!/usr/bin/env bash
# SIGINT, SIGTERM and SIGKILL at seeded random points of pack and unpack
# (20 points per signal: pack, pack -c, unpack of an image and of a
# compressed image, 5 each; SIGNAL_ROUNDS changes the 5).
# The source is a FIFO fed a MiB at a time: a write returns only once
# the program has read nearly all of it, so after k writes the program
# is k MiB into its run, still waiting for the rest, when the signal
# comes.  After SIGINT or SIGTERM nothing is left in the target's
# directory.  After SIGKILL nothing can clean up: where the file system
# has O_TMPFILE the target has no name until it is complete, so nothing
# is left either; elsewhere the target name must not exist, and
# whatever is left must be a hidden temporary file
# (.NAME.sparsecow-XXXXXX), which nothing takes for a finished target.
# The source file is never touched.
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/hostile-functions.sh"
requires qemu-img python3 cmp md5sum mkfifo

cd "$tmp"
mb=1048576
chunks=8
# 8 MiB: data that compresses somewhat, with a hole.
python3 -c 'import random, sys
r = random.Random(5)
for i in range(8):
    if i == 3:
        sys.stdout.buffer.write(bytes(1 << 20))
    else:
        sys.stdout.buffer.write(bytes(r.choice(b"abcdefgh") for _ in range(1 << 20)))' > src.raw
qemu-img convert -q -f raw -O qcow2 src.raw src.qcow2
qemu-img convert -q -c -f raw -O qcow2 src.raw src.c.qcow2
sums=$(md5sum src.raw src.qcow2 src.c.qcow2)

# SIGNAL_SEED picks other points, SIGNAL_ROUNDS more of them.
RANDOM=${SIGNAL_SEED:-4242}
mkdir out
kills=0 left=0
# Whether out/ can hold a file without a name.
tmpfile=$(python3 -c 'import os, sys
try:
    os.close(os.open(sys.argv[1], os.O_TMPFILE | os.O_WRONLY, 0o600)); print("yes")
except OSError:
    print("no")' out)
for sig in INT TERM KILL; do
  for op in "pack" "pack -c" "unpack" "unpack-c"; do
    for ((round = 0; round < ${SIGNAL_ROUNDS:-5}; round++)); do
      case $op in
        pack*) src=src.raw; target=out/t.qcow2 ;;
        unpack) src=src.qcow2; target=out/t.raw ;;
        unpack-c) src=src.c.qcow2; target=out/t.raw ;;
      esac
      size=$(stat -c %s $src)
      n=$(( (size + mb - 1) / mb ))
      k=$(( RANDOM % n ))       # chunks fed before the signal: never all
      rm -f fifo; mkfifo fifo
      cmd=$op; [ "$op" != unpack-c ] || cmd=unpack
      $SC_VALGRIND "$SPARSECOW" $cmd fifo $target 2>err &
      pid=$!
      exec 3>fifo
      for ((i = 0; i < k; i++)); do
        dd if=$src bs=$mb skip=$i count=1 status=none >&3 ||
          { cat err >&2; fail "$op: the program stopped reading after $i MiB"; }
      done
      kill -$sig $pid
      exec 3>&-
      rc=0; wait $pid || rc=$?
      case $sig in
        INT) want=130 ;; TERM) want=143 ;; KILL) want=137 ;;
      esac
      [ $rc = $want ] || { cat err >&2; fail "$op, SIG$sig after $k MiB: exit $rc, not $want"; }
      [ ! -e $target ] || fail "$op, SIG$sig after $k MiB: the target exists"
      if [ $sig = KILL ] && [ $tmpfile = yes ]; then
        [ -z "$(ls -A out)" ] ||
          fail "$op, SIGKILL after $k MiB left: $(ls -A out) (O_TMPFILE works here)"
      elif [ $sig = KILL ]; then
        for f in $(ls -A out); do
          case $f in
            .t.qcow2.sparsecow-??????|.t.raw.sparsecow-??????) left=$((left + 1)) ;;
            *) fail "$op, SIGKILL after $k MiB left $f" ;;
          esac
        done
        rm -f out/.??*
      else
        [ -z "$(ls -A out)" ] || fail "$op, SIG$sig after $k MiB left: $(ls -A out)"
      fi
      kills=$((kills + 1))
    done
  done
done
echo "$0: $kills signals; SIGKILL left $left hidden temporary files (O_TMPFILE: $tmpfile)"
[ "$(md5sum src.raw src.qcow2 src.c.qcow2)" = "$sums" ] || fail "a source changed"

# The next run after a SIGKILL succeeds and writes the target.
rm -f fifo; mkfifo fifo
"$SPARSECOW" pack fifo out/t.qcow2 2>/dev/null &
pid=$!
exec 3>fifo
dd if=src.raw bs=$mb count=2 status=none >&3
kill -KILL $pid; exec 3>&-; wait $pid || :
sparsecow pack src.raw out/t.qcow2 || fail "pack after a SIGKILL failed"
qemu-img compare -q -f raw -F qcow2 src.raw out/t.qcow2 || fail "pack after a SIGKILL differs"
exit 0
