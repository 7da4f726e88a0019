#!/bin/bash
# Time sparsecow pack of a qcow2 source (a re-pack) against qemu-img
# convert -O qcow2 of the same image, in alternation, and print medians,
# speed and size ratios.  Not a test: see bench/README.
#
# Environment:
#   BENCH_DIR     work directory (default /var/tmp/sparsecow-repack-bench)
#   BENCH_ROUNDS  rounds per command (default 3)
#   BENCH_SIZE    virtual size of the workload (default 4G)
#   BENCH_TREES   directories copied into the file system (default
#                 /usr/share)
#   BENCH_ONLY    run only these cases: any of "none deflate zstd"
#   SPARSECOW     the sparsecow program (default: src/sparsecow of the
#                 build this script sits in, else sparsecow from PATH)
#   QEMU_IMG      the qemu-img program (default qemu-img)
set -euo pipefail

BENCH_DIR=${BENCH_DIR:-/var/tmp/sparsecow-repack-bench}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_SIZE=${BENCH_SIZE:-4G}
BENCH_TREES=${BENCH_TREES:-/usr/share}
BENCH_ONLY=${BENCH_ONLY:-none deflate zstd}
QEMU_IMG=${QEMU_IMG:-qemu-img}
if [ -z "${SPARSECOW:-}" ]; then
  here=$(cd "$(dirname "$0")" && pwd)
  if [ -x "$here/../src/sparsecow" ]; then
    SPARSECOW=$here/../src/sparsecow
  else
    SPARSECOW=sparsecow
  fi
fi

die () { echo "repack-bench: $*" >&2; exit 1; }
for p in "$SPARSECOW" "$QEMU_IMG" mke2fs; do
  command -v "$p" >/dev/null || die "$p not found"
done

mkdir -p "$BENCH_DIR"
src=$BENCH_DIR/workload-$BENCH_SIZE.qcow2
out=$BENCH_DIR/out.qcow2
trap 'rm -f "$out"' EXIT

# ---- the workload, built once --------------------------------------------
# An ext4 file system in a sparse raw file, converted by qemu-img to an
# uncompressed qcow2 with 64 KiB clusters: the image a user would have
# before re-packing it.
if [ ! -f "$src" ]; then
  tree=$BENCH_DIR/tree
  raw=$BENCH_DIR/workload-$BENCH_SIZE.raw
  rm -rf "$tree"
  mkdir -p "$tree"
  echo "repack-bench: building $src from $BENCH_TREES" >&2
  for d in $BENCH_TREES; do
    # Hard links where possible: same content, no copy.
    dest=$tree/$(echo "$d" | tr / _)
    cp -al "$d" "$dest" 2>/dev/null || { rm -rf "$dest"; cp -a "$d" "$dest"; }
  done
  rm -f "$raw"
  mke2fs -q -F -t ext4 -d "$tree" "$raw" "$BENCH_SIZE"
  rm -rf "$tree"
  "$QEMU_IMG" convert -f raw -O qcow2 "$raw" "$src.tmp"
  rm -f "$raw"
  mv "$src.tmp" "$src"
fi

# Warm the source once (caches are not dropped: that needs privileges
# this benchmark does not assume); every command then reads from the
# same warm cache.
"$QEMU_IMG" convert -O qcow2 "$src" "$out"
rm -f "$out"

# ---- timing -----------------------------------------------------------------
now () { date +%s.%N; }

# run NAME CMD...: time one run, record seconds and image size.  Every
# run starts with no dirty pages left by the one before (an untimed
# sync).  Two times are kept: until the command exits, and until its
# image is on disk (the command and a sync): sparsecow flushes its
# target before renaming it into place, qemu-img convert does not.
declare -A times dtimes sizes
run () {
  local name=$1; shift
  local t0 t1 t2
  rm -f "$out"
  sync
  t0=$(now)
  "$@" >/dev/null
  t1=$(now)
  sync
  t2=$(now)
  times[$name]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') "
  dtimes[$name]+="$(awk -v a="$t0" -v b="$t2" 'BEGIN { print b - a }') "
  sizes[$name]=$(stat -c %s "$out")
  rm -f "$out"
}

median () {
  tr ' ' '\n' <<<"$1" | grep . | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2];
                             else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# settle: one untimed write of the whole image, so that neither tool
# pays for the slow first large write that follows a compressed case
# (see pack-bench.sh).
settle () {
  rm -f "$out"
  "$QEMU_IMG" convert -O qcow2 "$src" "$out"
  rm -f "$out"
  sync
}

cases=()
for c in $BENCH_ONLY; do cases+=("$c"); done

# pair NAME SC-ARGS -- QEMU-ARGS: both commands of a case, sparsecow
# first in odd rounds and qemu-img first in even ones.
pair () {
  local name=$1; shift
  local sc=() q=()
  while [ "$1" != -- ]; do sc+=("$1"); shift; done
  shift
  q=("$@")
  settle
  if (( r % 2 )); then
    run "sc-$name" "$SPARSECOW" pack -q "${sc[@]}" "$src" "$out"
    run "qemu-$name" "$QEMU_IMG" convert "${q[@]}" -O qcow2 "$src" "$out"
  else
    run "qemu-$name" "$QEMU_IMG" convert "${q[@]}" -O qcow2 "$src" "$out"
    run "sc-$name" "$SPARSECOW" pack -q "${sc[@]}" "$src" "$out"
  fi
}

for ((r = 1; r <= BENCH_ROUNDS; r++)); do
  echo "repack-bench: round $r of $BENCH_ROUNDS" >&2
  for c in "${cases[@]}"; do
    case $c in
    none) pair none -- ;;
    deflate) pair deflate -c -- -c -W ;;
    zstd) pair zstd -c zstd -- -c -W -o compression_type=zstd ;;
    *) die "unknown case '$c' in BENCH_ONLY" ;;
    esac
  done
done

# ---- report -----------------------------------------------------------------
echo
echo "workload: $src ($(du -h "$src" | cut -f1) file, $BENCH_SIZE virtual)," \
  "$BENCH_ROUNDS rounds, $(nproc) CPUs"
printf "%-8s %12s %12s %8s %10s %10s %8s %14s %14s %8s\n" \
  case "sparsecow s" "qemu-img s" speedup "sc+sync s" "qemu+sync" speedup \
  "sparsecow B" "qemu-img B" size
for c in "${cases[@]}"; do
  ts=$(median "${times[sc-$c]}")
  tq=$(median "${times[qemu-$c]}")
  ds=$(median "${dtimes[sc-$c]}")
  dq=$(median "${dtimes[qemu-$c]}")
  printf "%-8s %12.3f %12.3f %7.2fx %10.3f %10.3f %7.2fx %14d %14d %7.4f\n" \
    "$c" "$ts" "$tq" "$(awk -v a="$tq" -v b="$ts" 'BEGIN { print a / b }')" \
    "$ds" "$dq" "$(awk -v a="$dq" -v b="$ds" 'BEGIN { print a / b }')" \
    "${sizes[sc-$c]}" "${sizes[qemu-$c]}" \
    "$(awk -v a="${sizes[sc-$c]}" -v b="${sizes[qemu-$c]}" 'BEGIN { print a / b }')"
done
echo "speedup = qemu-img time / sparsecow time (higher is better); the"
echo "+sync columns time each command until its image is on disk;"
echo "size = sparsecow image / qemu-img image (lower is better)."
