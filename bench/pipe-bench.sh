#!/bin/bash
# Time "head -c BENCH_SIZE /dev/zero | sparsecow pack -q - OUT" against
# the same pipe into "cat > /dev/null" (the pipe-zeros case of bench/run),
# and against a second sparsecow (SPARSECOW_OLD, when set), in
# alternation, the order rotated each round.  Prints, per command, the
# median time to exit and the median CPU time (user + system) of the
# whole pipeline, writer included: on two CPUs, what the reader spends
# is taken from the writer.  Not a test: see bench/README.
#
# Environment: BENCH_DIR (/var/tmp/sparsecow-bench), BENCH_ROUNDS (5),
# BENCH_SIZE (8G), SPARSECOW, SPARSECOW_OLD.
set -euo pipefail

BENCH_DIR=${BENCH_DIR:-/var/tmp/sparsecow-bench}
BENCH_ROUNDS=${BENCH_ROUNDS:-5}
BENCH_SIZE=${BENCH_SIZE:-8G}
here=$(cd "$(dirname "$0")" && pwd)
SPARSECOW=${SPARSECOW:-$here/../src/sparsecow}
die () { echo "pipe-bench: $*" >&2; exit 1; }
[ -x /usr/bin/time ] || die "/usr/bin/time not found (Debian: time)"
[ -x "$SPARSECOW" ] || die "$SPARSECOW not found"

mkdir -p "$BENCH_DIR"
out=$BENCH_DIR/pipe-out.qcow2
times=$BENCH_DIR/pipe-times
trap 'rm -f "$out" "$times"' EXIT
: >"$times"

names=(sparsecow) cmds=("head -c $BENCH_SIZE /dev/zero | $SPARSECOW pack -q - $out")
if [ -n "${SPARSECOW_OLD:-}" ]; then
  names+=(old) cmds+=("head -c $BENCH_SIZE /dev/zero | $SPARSECOW_OLD pack -q - $out")
fi
names+=(cat) cmds+=("head -c $BENCH_SIZE /dev/zero | cat > /dev/null")

n=${#names[@]}
for ((r = 0; r < BENCH_ROUNDS; r++)); do
  for ((k = 0; k < n; k++)); do
    i=$(( (k + r) % n ))
    rm -f "$out"
    /usr/bin/time -f "${names[i]} %e %U %S" -a -o "$times" \
      bash -c "${cmds[i]}" || die "${names[i]} failed"
  done
done

median () { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "$BENCH_SIZE zero bytes from a pipe, $BENCH_ROUNDS rounds, medians:"
for nm in "${names[@]}"; do
  wall=$(awk -v n="$nm" '$1 == n { print $2 }' "$times" | median)
  cpu=$(awk -v n="$nm" '$1 == n { printf "%.2f\n", $3 + $4 }' "$times" | median)
  printf "  %-10s %6.2f s to exit  %6.2f s CPU (user + system)\n" \
    "$nm" "$wall" "$cpu"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
