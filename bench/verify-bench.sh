#!/bin/bash
# Time sparsecow verify against qemu-img compare, and what the digest
# costs pack, in alternation, and print medians and ratios.  Not a
# test: see bench/README.
#
# Cases (the raw workload is the file system image of pack-bench.sh;
# img is the same data as an uncompressed qcow2 made by qemu-img, and
# sc the same packed by sparsecow, with its digest):
#   raw-qcow2    sparsecow verify RAW IMG     qemu-img compare RAW IMG
#   qcow2-qcow2  sparsecow verify IMG SC      qemu-img compare IMG SC
#   compressed   sparsecow verify RAW CIMG    qemu-img compare RAW CIMG
#                (CIMG: the same data compressed by qemu-img convert -c,
#                built once and kept: decompression is the work)
#   digest       sparsecow verify SC (recompute the embedded digest;
#                nothing to compare it with, timed alone)
#   pack         sparsecow pack --digest RAW OUT   pack --no-digest
#                (uncompressed: what hashing costs the fastest pack)
#   pack-c       the same with -c (deflate), where pack stores the
#                digest by default
#
# Environment: BENCH_DIR, BENCH_ROUNDS (3), BENCH_SIZE (32G), BENCH_TREES,
# BENCH_ONLY ("raw-qcow2 qcow2-qcow2 compressed digest pack pack-c"), SPARSECOW, QEMU_IMG.
set -euo pipefail

BENCH_NAME=verify-bench
. "$(dirname "$0")/bench-lib.sh"
BENCH_ONLY=${BENCH_ONLY:-raw-qcow2 qcow2-qcow2 compressed digest pack pack-c}
bench_setup /var/tmp/sparsecow-bench
[ -x /usr/bin/time ] || die "/usr/bin/time not found (Debian: time)"
bench_workload
img=$BENCH_DIR/workload-$BENCH_SIZE.qcow2
if [ ! -f "$img" ]; then
  "$QEMU_IMG" convert -f raw -O qcow2 "$src" "$img.tmp"
  mv "$img.tmp" "$img"
fi
cimg=$BENCH_DIR/workload-$BENCH_SIZE-deflate.qcow2
if [[ " $BENCH_ONLY " == *" compressed "* ]] && [ ! -f "$cimg" ]; then
  "$QEMU_IMG" convert -f raw -O qcow2 -c "$src" "$cimg.tmp"
  mv "$cimg.tmp" "$cimg"
fi
sc=$BENCH_DIR/verify-sc.qcow2
trap 'rm -f "$out" "$sc" "$BENCH_DIR/.cpu"' EXIT
"$SPARSECOW" pack -q -f --digest "$src" "$sc"

# Warm the page cache with every file once, untimed.
"$QEMU_IMG" compare -q "$src" "$img"
"$QEMU_IMG" compare -q "$img" "$sc"

# On a shared machine the time to exit follows the load; the CPU time
# (user + system) of the command follows its own work.  Both are kept.
declare -A ctimes
# ctimed NAME CMD...: as timed, and append the CPU seconds to ctimes.
ctimed () {
  local name=$1; shift
  timed "$name" /usr/bin/time -o "$BENCH_DIR/.cpu" -f "%U %S" "$@"
  ctimes[$name]+="$(awk '{ print $1 + $2 }' "$BENCH_DIR/.cpu") "
}
crun () { rm -f "$out"; ctimed "$@"; rm -f "$out"; }

# both NAME SC-ARGS -- QEMU-ARGS: sparsecow first in odd rounds.  Both
# must say "equal": a benchmark of a wrong answer is worth nothing.
both () {
  local name=$1; shift
  local s=() q=()
  while [ "$1" != -- ]; do s+=("$1"); shift; done
  shift
  q=("$@")
  if (( r % 2 )); then
    ctimed "sc-$name" "$SPARSECOW" verify -q "${s[@]}"
    ctimed "qemu-$name" "$QEMU_IMG" compare -q "${q[@]}"
  else
    ctimed "qemu-$name" "$QEMU_IMG" compare -q "${q[@]}"
    ctimed "sc-$name" "$SPARSECOW" verify -q "${s[@]}"
  fi
}
# packs NAME [PACK-OPTIONS]: with the digest and without.
packs () {
  local name=$1; shift
  if (( r % 2 )); then
    crun "sc-$name" "$SPARSECOW" pack -q --digest "$@" "$src" "$out"
    crun "qemu-$name" "$SPARSECOW" pack -q --no-digest "$@" "$src" "$out"
  else
    crun "qemu-$name" "$SPARSECOW" pack -q --no-digest "$@" "$src" "$out"
    crun "sc-$name" "$SPARSECOW" pack -q --digest "$@" "$src" "$out"
  fi
}

for ((r = 1; r <= BENCH_ROUNDS; r++)); do
  echo "$BENCH_NAME: round $r of $BENCH_ROUNDS" >&2
  for c in $BENCH_ONLY; do
    case $c in
    raw-qcow2) both raw-qcow2 "$src" "$img" -- "$src" "$img" ;;
    qcow2-qcow2) both qcow2-qcow2 "$img" "$sc" -- "$img" "$sc" ;;
    compressed) both compressed "$src" "$cimg" -- "$src" "$cimg" ;;
    digest) ctimed sc-digest "$SPARSECOW" verify -q "$sc" ;;
    pack) packs pack ;;
    pack-c) packs pack-c -c ;;
    *) die "unknown case '$c' in BENCH_ONLY" ;;
    esac
  done
done

echo
echo "workload: $src ($(du -h "$src" | cut -f1) data, $BENCH_SIZE virtual)," \
  "$BENCH_ROUNDS rounds, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-12s %12s %12s %8s %12s %12s %8s\n" case "sparsecow s" "other s" \
  ratio "sc cpu s" "other cpu" ratio
ratio () { awk -v a="$1" -v b="$2" 'BEGIN { print a / b }'; }
for c in $BENCH_ONLY; do
  ts=$(median "${times[sc-$c]}")
  cs=$(median "${ctimes[sc-$c]}")
  case $c in
  digest) printf "%-12s %12.3f %12s %8s %12.3f %12s %8s\n" "$c" "$ts" - - \
            "$cs" - - ;;
  *)
    to=$(median "${times[qemu-$c]}")
    co=$(median "${ctimes[qemu-$c]}")
    printf "%-12s %12.3f %12.3f %7.2fx %12.3f %12.3f %7.2fx\n" "$c" \
      "$ts" "$to" "$(ratio "$to" "$ts")" "$cs" "$co" "$(ratio "$co" "$cs")" ;;
  esac
done
echo "Medians; s = to exit, cpu = user + system."
echo "raw-qcow2, qcow2-qcow2: other = qemu-img compare, ratio = its time /"
echo "sparsecow verify's (higher is better).  digest: sparsecow verify IMAGE."
echo "pack, pack-c: sparsecow = pack --digest, other = pack --no-digest;"
echo "ratio below 1 is what the digest costs (0.91 = 10% slower)."
