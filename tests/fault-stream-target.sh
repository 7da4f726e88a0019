#!/usr/bin/env bash
# pack to a stream (a pipe, or standard output redirected to a file)
# that fails never hands over an image that looks complete.
#
# What a stream got cannot be taken back, so what it holds after a
# failure is a prefix of the image.  qemu reads past the end of an
# image file as zeros, so any prefix that holds the header opens, and
# qemu-img convert of it succeeds with zeros for what is missing: that
# is qemu's behaviour, not something an image can change.  What
# qemu-img check refuses is a table it counts that lies one cluster or
# more past the end of the file.  A stream therefore ends with its
# refcount table, which qemu-img check counts as a whole, and pack
# holds the table's last cluster back until the image is complete and
# the source is found unchanged.  So:
#  1. every prefix a failed stream can leave (every prefix that stops
#     a cluster or more before the end) fails qemu-img check -f qcow2
#     (the oracle), sparsecow check, and unpack from the file and from
#     a pipe, for images of every shape: data, compressed (deflate,
#     zstd), metadata only, empty, 512-byte and 2 MiB clusters, v2;
#  2. real failures in the middle of a pack into a pipe leave such a
#     prefix: the source changed after all its data was read, and
#     SIGINT, SIGTERM and SIGKILL at 20 seeded points each; each with a
#     non-zero exit (the signal's status), a message where the program
#     lives to give one, no spill file left in TMPDIR, and the source
#     untouched.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires qemu-img python3 md5sum mkfifo

cd "$tmp"
mkdir spill
export TMPDIR=$tmp/spill
mb=1048576

# The sources: random data with holes (random, so that a cluster read
# as zeros is never right by chance), and data that compresses.
python3 -c 'import random, sys
r = random.Random(11)
out = sys.stdout.buffer
for i in range(24):
    if i % 5 == 2:
        out.write(bytes(1 << 20))
    else:
        out.write(r.randbytes(1 << 20))' > rand.raw
python3 -c 'import random, sys
r = random.Random(12)
sys.stdout.buffer.write(bytes(r.choice(b"abcdefgh") for _ in range(3 << 20)))' > text.raw
truncate -s 8M text.raw
truncate -s 32M zero.raw
: > empty.raw
sums=$(md5sum rand.raw text.raw zero.raw)

# refused PREFIX: every reader refuses a cut image.
refused () {
  local f=$1 what=$2 rc
  rc=0; qemu-img check -f qcow2 "$f" >/dev/null 2>&1 || rc=$?
  [ $rc != 0 ] || fail "$what: qemu-img check finds a cut image clean"
  rc=0; sparsecow check "$f" >/dev/null 2>&1 || rc=$?
  [ $rc != 0 ] || fail "$what: sparsecow check finds a cut image clean"
  rm -f cut.out
  rc=0; sparsecow unpack "$f" cut.out 2>/dev/null || rc=$?
  [ $rc != 0 ] || fail "$what: unpack of a cut image succeeded"
  [ ! -e cut.out ] || fail "$what: failed unpack left its target"
  rc=0; $SC_VALGRIND "$SPARSECOW" unpack - cut.out < "$f" 2>/dev/null || rc=$?
  [ $rc != 0 ] || fail "$what: unpack of a cut image from a pipe succeeded"
  [ ! -e cut.out ] || fail "$what: failed unpack from a pipe left its target"
}

# ---- 1. every prefix a failed stream may leave ---------------------------
RANDOM=${FAULT_SEED:-1717}
prefixes=0
for spec in "rand.raw|" "rand.raw|-c" "rand.raw|-c zstd" "text.raw|-c" \
            "zero.raw|" "empty.raw|" "text.raw|--cluster-size 512 -c" \
            "rand.raw|--cluster-size 2M" "text.raw|--compat=0.10 -c" \
            "rand.raw|--refcount-bits 1 --cluster-size 4K"; do
  src=${spec%%|*} opts=${spec#*|}
  # shellcheck disable=SC2086
  sparsecow pack -q $opts $src - | cat > whole.qcow2 ||
    fail "pack $opts $src to a pipe failed"
  qemu-img check -q -f qcow2 whole.qcow2 || fail "pack $opts $src: not clean"
  qemu-img compare -q -f raw -F qcow2 $src whole.qcow2 ||
    fail "pack $opts $src to a pipe differs"
  size=$(stat -c %s whole.qcow2)
  cs=$(python3 -c 'import sys
print(1 << int.from_bytes(open(sys.argv[1], "rb").read()[20:24], "big"))' whole.qcow2)
  last=$(( size > cs ? size - cs : 0 ))
  # Cluster boundaries, odd offsets near them, and seeded ones, up to
  # the last byte a failed stream can hold.
  cuts=$(python3 - "$last" "$cs" "$RANDOM" <<'PYEOF'
import random, sys
last, cs, seed = (int(a) for a in sys.argv[1:])
r = random.Random(seed)
c = {0, 1, 511, 512, 4096, last, max(last - 1, 0), max(last - 512, 0)}
b = list(range(0, last + 1, cs))
c.update(r.sample(b, min(len(b), 12)))
c.update(x + 1 for x in r.sample(b, min(len(b), 4)))
c.update(r.randrange(last + 1) for _ in range(8))
print(" ".join(str(x) for x in sorted(c) if x <= last))
PYEOF
)
  for n in $cuts; do
    head -c "$n" whole.qcow2 > cut.qcow2
    refused cut.qcow2 "pack $opts $src cut at $n of $size"
    prefixes=$((prefixes + 1))
  done
  echo "pack $opts $src: $size bytes, clusters of $cs: cuts refused up to $last"
done
echo "$prefixes cut images refused"

# ---- 2. failures in the middle of a pack into a pipe ---------------------
# judge WHAT STATUS WANT: the stream (out.qcow2) is refused, the exit
# status is WANT, TMPDIR holds no spill file, and the sources are as
# they were.
judge () {
  local what=$1 rc=$2 want=$3
  [ "$rc" = "$want" ] || { cat err >&2; fail "$what: exit $rc, not $want"; }
  if grep -q "AddressSanitizer\|runtime error" err; then
    cat err >&2; fail "$what: sanitizer report"
  fi
  refused out.qcow2 "$what"
  [ -z "$(ls -A spill)" ] || fail "$what: left in TMPDIR: $(ls -A spill)"
}

# The source changed after the scan: the reader takes the first MiB,
# changes the file (past everything already written), and drains the
# rest.  pack notices only once the whole image but its held clusters
# is in the pipe.
for opts in "" "-c" "-c zstd"; do
  cp rand.raw chg.raw
  rm -f rc
  # shellcheck disable=SC2086
  { "$SPARSECOW" pack $opts chg.raw - 2>err || echo $? > rc; } |
    { head -c $mb > out.qcow2
      head -c $mb /dev/urandom | dd of=chg.raw bs=1M seek=22 conv=notrunc status=none
      cat >> out.qcow2; }
  grep -q "^sparsecow: chg.raw: source changed while packing" err ||
    { cat err >&2; fail "pack $opts, source changed: unclear message"; }
  judge "pack $opts, source changed" "$(cat rc 2>/dev/null || echo 0)" 1
  # All that was not held back came through: the cut is at the hold.
  full=$(sparsecow pack $opts rand.raw - | wc -c)
  cs=65536
  [ "$(stat -c %s out.qcow2)" = $(( full - cs )) ] ||
    fail "pack $opts, source changed: $(stat -c %s out.qcow2) of $full bytes came through"
done

# Signals at seeded points: the reader of a named pipe takes K bytes,
# signals pack, and drains the rest.  The pipe holds 1 MiB at most, so
# with K at least 1 MiB + a cluster before the end, pack is blocked
# in the middle of its image when the signal comes.  Half of the runs
# read the source from a pipe.
mkfifo img.fifo
declare -A full_of
points=${SIGNAL_POINTS:-20}
for sig in INT TERM KILL; do
  case $sig in INT) want=130 ;; TERM) want=143 ;; KILL) want=137 ;; esac
  for ((i = 0; i < points; i++)); do
    case $((i % 4)) in
      0) opts=""; from=file ;;
      1) opts="-c"; from=file ;;
      2) opts="-c zstd"; from=pipe ;;
      3) opts=""; from=pipe ;;
    esac
    # shellcheck disable=SC2086
    [ -n "${full_of[x$opts]:-}" ] ||
      full_of[x$opts]=$(sparsecow pack $opts rand.raw - | wc -c)
    full=${full_of[x$opts]}
    k=$(( (RANDOM * 32768 + RANDOM) % (full - 2 * mb) ))
    if [ $from = file ]; then
      # shellcheck disable=SC2086
      $SC_VALGRIND "$SPARSECOW" pack $opts rand.raw - > img.fifo 2>err &
    else
      # shellcheck disable=SC2086
      $SC_VALGRIND "$SPARSECOW" pack $opts - - < rand.raw > img.fifo 2>err &
    fi
    pid=$!
    { head -c $k > out.qcow2; kill -$sig $pid; cat >> out.qcow2; } < img.fifo
    rc=0; wait $pid || rc=$?
    judge "pack $opts from a $from, SIG$sig after $k of $full bytes" $rc $want
  done
done
[ "$(md5sum rand.raw text.raw zero.raw)" = "$sums" ] || fail "a source changed"
exit 0
