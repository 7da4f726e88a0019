# Shared by pack-bench.sh and repack-bench.sh: time sparsecow pack and
# qemu-img convert -O qcow2 of the same source in alternation and print
# medians, speed and size ratios.  Sourced, not run.  The caller sets
# BENCH_NAME and calls bench_setup, builds its workload in $src, then
# calls run_rounds and report WORKLOAD-TEXT.

die () { echo "$BENCH_NAME: $*" >&2; exit 1; }

# bench_setup DEFAULT-DIR: the settings every benchmark shares, the
# programs it needs, and src (set by the caller later) and out.
bench_setup () {
  BENCH_DIR=${BENCH_DIR:-$1}
  BENCH_ROUNDS=${BENCH_ROUNDS:-3}
  BENCH_ONLY=${BENCH_ONLY:-none deflate zstd}
  QEMU_IMG=${QEMU_IMG:-qemu-img}
  if [ -z "${SPARSECOW:-}" ]; then
    local here
    here=$(cd "$(dirname "$0")" && pwd)
    if [ -x "$here/../src/sparsecow" ]; then
      SPARSECOW=$here/../src/sparsecow
    else
      SPARSECOW=sparsecow
    fi
  fi
  local p
  for p in "$SPARSECOW" "$QEMU_IMG" mke2fs; do
    command -v "$p" >/dev/null || die "$p not found"
  done
  cases=()
  for c in $BENCH_ONLY; do cases+=("$c"); done
  mkdir -p "$BENCH_DIR"
  out=$BENCH_DIR/out.qcow2
  out_raw=$BENCH_DIR/out.raw
  trap 'rm -f "$out" "$out_raw" "$BENCH_DIR/.cpu"' EXIT
}

# bench_workload: $src, a sparse file of BENCH_SIZE holding an ext4 file
# system made from BENCH_TREES, built on first use and kept.
bench_workload () {
  BENCH_SIZE=${BENCH_SIZE:-32G}
  BENCH_TREES=${BENCH_TREES:-/usr/share /usr/bin /usr/lib/x86_64-linux-gnu}
  src=$BENCH_DIR/workload-$BENCH_SIZE.img
  [ -f "$src" ] && return 0
  local tree=$BENCH_DIR/tree d dest
  rm -rf "$tree"
  mkdir -p "$tree"
  echo "$BENCH_NAME: building $src from $BENCH_TREES" >&2
  for d in $BENCH_TREES; do
    # Hard links where possible: same content, no copy.
    dest=$tree/$(echo "$d" | tr / _)
    cp -al "$d" "$dest" 2>/dev/null || { rm -rf "$dest"; cp -a "$d" "$dest"; }
  done
  rm -f "$src.tmp"
  mke2fs -q -F -t ext4 -d "$tree" "$src.tmp" "$BENCH_SIZE"
  mv "$src.tmp" "$src"
  rm -rf "$tree"
}

# ---- timing -----------------------------------------------------------------
now () { date +%s.%N; }

# warm_memory: write BENCH_WARM bytes of a tmpfs and free them,
# untimed, just before each timed command (default 4G, or a quarter of
# the memory where that is less; 0: none).  A virtual machine that
# gives the memory it frees back to its host (virtio-balloon free page
# reporting) pays a host fault on the first write to each such page,
# and the page cache a command writes is such memory.  Seen on a 2-CPU
# guest with 24 GiB: timed runs of the same uncompressed pack of 2.4
# GB, one after the other, took 2.4 s and 1.05 s in strict alternation,
# whatever the command, and the rotation of the commands locked one
# command of a pair onto the slow runs (pack --digest against pack
# --no-digest, 21 rounds: 1.835 times as long; 1.081 with this).
# Every command gets the same, so it favours none.
warm_memory () {
  local size=${BENCH_WARM:-} shm=/dev/shm kib
  if [ -z "$size" ]; then
    kib=$(awk '$1 == "MemTotal:" { print int($2 / 4) }' /proc/meminfo)
    size=$(( ${kib:-0} < 4194304 ? ${kib:-0} : 4194304 ))K
  fi
  [ "$size" != 0 ] && [ "$size" != 0K ] && [ -d "$shm" ] && [ -w "$shm" ] ||
    return 0
  head -c "$size" /dev/zero > "$shm/sparsecow-bench-warm.$$" 2>/dev/null ||
    true
  rm -f "$shm/sparsecow-bench-warm.$$"
}

# run NAME CMD...: time one run, record seconds and image size.
# Every run starts with no dirty pages left by the one before (an
# untimed sync), or one command would pay for the other's writeback.
# Two times are kept: until the command exits, and until its image is
# on disk (the command and a sync).  sparsecow flushes its target
# before renaming it into place; qemu-img convert does not.
declare -A times dtimes sizes cpus
# timed NAME CMD...: run CMD once, after an untimed sync, and append its
# time to exit to times[NAME], its time to data on disk to dtimes[NAME]
# and its CPU time (user + system, its children included) to cpus[NAME]:
# on a machine shared with other work the CPU time moves less than the
# time by the clock.
timed () {
  local name=$1; shift
  local t0 t1 t2 TIMEFORMAT='%3U %3S'
  sync
  warm_memory
  t0=$(now)
  # The command's stderr stays on ours; only time's report is kept.
  { time "$@" >/dev/null 2>&3; } 3>&2 2>"$BENCH_DIR/.cpu"
  t1=$(now)
  cpus[$name]+="$(awk '{ print $1 + $2 }' "$BENCH_DIR/.cpu") "
  sync
  t2=$(now)
  times[$name]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') "
  dtimes[$name]+="$(awk -v a="$t0" -v b="$t2" 'BEGIN { print b - a }') "
}
run () {
  local name=$1; shift
  rm -f "$out"
  timed "$name" "$@"
  sizes[$name]=$(stat -c %s "$out")
  rm -f "$out"
}
median () {
  tr ' ' '\n' <<<"$1" | grep . | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2];
                             else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# settle: one untimed write of the whole image.  After a compressed
# case the first large write runs several times slower, whichever tool
# makes it (seen on a virtual disk mounted with discard: 4.5 s instead
# of 0.7 s for the same qemu-img command); this pays that cost outside
# the timings.
settle () {
  rm -f "$out"
  "$QEMU_IMG" convert -O qcow2 "$src" "$out"
  rm -f "$out"
  sync
}

# pair NAME SC-ARGS -- QEMU-ARGS: both commands of a case, sparsecow
# first in odd rounds and qemu-img first in even ones, so neither always
# follows the other.  SC_ENV (VAR=VALUE words) goes into sparsecow's
# environment.
pair () {
  local name=$1; shift
  local sc=() q=()
  while [ "$1" != -- ]; do sc+=("$1"); shift; done
  shift
  q=("$@")
  settle
  if (( r % 2 )); then
    run "sc-$name" env ${SC_ENV:-} "$SPARSECOW" pack -q "${sc[@]}" "$src" "$out"
    run "qemu-$name" "$QEMU_IMG" convert "${q[@]}" -O qcow2 "$src" "$out"
  else
    run "qemu-$name" "$QEMU_IMG" convert "${q[@]}" -O qcow2 "$src" "$out"
    run "sc-$name" env ${SC_ENV:-} "$SPARSECOW" pack -q "${sc[@]}" "$src" "$out"
  fi
}

# unpack_pair NAME IMAGE [VAR=VALUE...]: sparsecow unpack IMAGE, with
# the variables in its environment, against qemu-img convert -W -O raw,
# alternating which goes first as pair does.
unpack_pair () {
  local name=$1 img=$2; shift 2
  local out=$out_raw
  settle
  if (( r % 2 )); then
    run "sc-$name" env "$@" "$SPARSECOW" unpack -q "$img" "$out"
    run "qemu-$name" "$QEMU_IMG" convert -W -f qcow2 -O raw "$img" "$out"
  else
    run "qemu-$name" "$QEMU_IMG" convert -W -f qcow2 -O raw "$img" "$out"
    run "sc-$name" env "$@" "$SPARSECOW" unpack -q "$img" "$out"
  fi
}

# deflate_image: $deflate_img, the workload compressed by qemu-img
# convert -c (zlib, as qemu writes deflate clusters), made on first use
# and kept next to the workload.
deflate_image () {
  deflate_img=${src%.*}-deflate.qcow2
  [ -f "$deflate_img" ] && return 0
  echo "$BENCH_NAME: making $deflate_img" >&2
  "$QEMU_IMG" convert -c -W -O qcow2 "$src" "$deflate_img.tmp"
  mv "$deflate_img.tmp" "$deflate_img"
}

# The cases, by the names BENCH_ONLY takes.  The deflate ones name the
# implementation (SPARSECOW_DEFLATE) when it is not the default:
#   deflate-zlib     pack -c with zlib alone
#   deflate-best     pack -c --level 9 (zlib's best)
#   unpack-deflate   unpack of qemu-img's deflate image (igzip inflate)
#   unpack-deflate-zlib  the same with zlib alone
run_rounds () {
  local c
  bench_load_start=$(uptime)
  for c in "${cases[@]}"; do
    case $c in unpack-*) deflate_image ;; esac
  done
  for ((r = 1; r <= BENCH_ROUNDS; r++)); do
    echo "$BENCH_NAME: round $r of $BENCH_ROUNDS" >&2
    for c in "${cases[@]}"; do
      case $c in
      none) pair none -- ;;
      deflate) pair deflate -c -- -c -W ;;
      deflate-zlib)
        SC_ENV=SPARSECOW_DEFLATE=zlib pair deflate-zlib -c -- -c -W ;;
      deflate-best) pair deflate-best -c --level 9 -- -c -W ;;
      zstd) pair zstd -c zstd -- -c -W -o compression_type=zstd ;;
      unpack-deflate) unpack_pair "$c" "$deflate_img" ;;
      unpack-deflate-zlib)
        unpack_pair "$c" "$deflate_img" SPARSECOW_DEFLATE=zlib ;;
      *) die "unknown case '$c' in BENCH_ONLY" ;;
      esac
    done
  done
}

# ---- report -----------------------------------------------------------------
# report WORKLOAD-TEXT: the table, after a line that names the workload.
report () {
  echo
  echo "workload: $1, $BENCH_ROUNDS rounds, $(nproc) CPUs"
  # The machine may be shared: the load beside the numbers.
  echo "load at start: ${bench_load_start:-?}"
  echo "load at end:   $(uptime)"
  printf "%-19s %12s %12s %8s %10s %10s %8s %14s %14s %8s\n" \
    case "sparsecow s" "qemu-img s" speedup "sc+sync s" "qemu+sync" speedup \
    "sparsecow B" "qemu-img B" size
  for c in "${cases[@]}"; do
    ts=$(median "${times[sc-$c]}")
    tq=$(median "${times[qemu-$c]}")
    ds=$(median "${dtimes[sc-$c]}")
    dq=$(median "${dtimes[qemu-$c]}")
    printf "%-19s %12.3f %12.3f %7.2fx %10.3f %10.3f %7.2fx %14d %14d %7.4f\n" \
      "$c" "$ts" "$tq" "$(awk -v a="$tq" -v b="$ts" 'BEGIN { print a / b }')" \
      "$ds" "$dq" "$(awk -v a="$dq" -v b="$ds" 'BEGIN { print a / b }')" \
      "${sizes[sc-$c]}" "${sizes[qemu-$c]}" \
      "$(awk -v a="${sizes[sc-$c]}" -v b="${sizes[qemu-$c]}" 'BEGIN { print a / b }')"
  done
  echo
  echo "CPU seconds (user + system), medians:"
  printf "%-19s %12s %12s %8s\n" case sparsecow qemu-img ratio
  for c in "${cases[@]}"; do
    ts=$(median "${cpus[sc-$c]}")
    tq=$(median "${cpus[qemu-$c]}")
    printf "%-19s %12.3f %12.3f %8.3f\n" "$c" "$ts" "$tq" \
      "$(awk -v a="$ts" -v b="$tq" 'BEGIN { print a / b }')"
  done
  echo "speedup = qemu-img time / sparsecow time (higher is better); the"
  echo "+sync columns time each command until its image is on disk;"
  echo "size = sparsecow image / qemu-img image (lower is better);"
  echo "ratio = sparsecow CPU time / qemu-img CPU time (lower is better)."
}
