#!/bin/bash
# Time sparsecow against nbdcopy where NBD is involved, in alternation,
# and print medians and ratios.  Not a test: see bench/README.
#
# Cases (the raw workload is the file system image of pack-bench.sh;
# img is the same data as an uncompressed qcow2 made by qemu-img):
#   pack     NBD source (qemu-nbd -r -f raw workload) -> qcow2 file:
#              sparsecow pack URI out.qcow2
#              nbdcopy URI [ qemu-nbd -f qcow2 out.qcow2 ]  (out created
#              by qemu-img create -f qcow2 first, untimed)
#   unpack   qcow2 -> NBD target (nbdkit memory, the same server for both):
#              sparsecow unpack img TARGET
#              nbdcopy [ qemu-nbd -r -f qcow2 img ] TARGET
#   unpack-raw   as unpack, the target qemu-nbd -f raw of a file of the
#            workload's size (made once, the same server for both)
#   unpack-delay as unpack, the target nbdkit memory with the delay
#            filter (1 ms per write, zero, trim and block status
#            request), and also nbdcopy --connections=1 --requests=1
#   delay    NBD source with nbdkit's delay filter, 1 ms per read and per
#            block status request -> a qcow2 file:
#              sparsecow pack URI out.qcow2
#              nbdcopy URI [ qemu-nbd -f qcow2 out.qcow2 ]
#              nbdcopy --connections=1 --requests=1 (one request at a
#              time, the copy that requests in flight are measured
#              against)
# The commands of a case run in turn, the first one rotating from round
# to round.  SPARSECOW_OLD names a second sparsecow (the build before a
# change, say) to time in the same rounds, as a column of its own.
#
# Environment: BENCH_DIR, BENCH_ROUNDS (3), BENCH_SIZE (32G), BENCH_TREES,
# BENCH_ONLY ("pack unpack unpack-raw unpack-delay delay"), SPARSECOW,
# SPARSECOW_OLD, QEMU_IMG.
set -euo pipefail

BENCH_NAME=nbd-bench
. "$(dirname "$0")/bench-lib.sh"
BENCH_ONLY=${BENCH_ONLY:-pack unpack unpack-raw unpack-delay delay}
bench_setup /var/tmp/sparsecow-bench
for p in qemu-nbd nbdkit nbdcopy; do
  command -v $p >/dev/null || die "$p not found"
done
bench_workload
size=$(stat -c %s "$src")
img=$BENCH_DIR/workload-$BENCH_SIZE.qcow2
if [ ! -f "$img" ]; then
  "$QEMU_IMG" convert -f raw -O qcow2 "$src" "$img.tmp"
  mv "$img.tmp" "$img"
fi

sockdir=$(mktemp -d /tmp/nbd-bench.XXXXXX)
pids=()
trap 'rm -f "$out" "${target_raw:-}" "$BENCH_DIR/.cpu"; kill "${pids[@]}" 2>/dev/null
  rm -rf "$sockdir"' EXIT
# serve NAME CMD...: an NBD server on $sockdir/NAME; sets uri.
serve () {
  local name=$1; shift
  case $1 in
    nbdkit) "$@" -f -U "$sockdir/$name" & ;;
    *) "$@" -k "$sockdir/$name" --persistent & ;;
  esac
  pids+=($!)
  while [ ! -S "$sockdir/$name" ]; do sleep 0.1; done
  uri="nbd+unix:///?socket=$sockdir/$name"
}
serve raw qemu-nbd -r -e 4 -f raw "$src"
raw_uri=$uri
serve slow nbdkit -r --filter=delay file "$src" delay-read=1ms \
  delay-extents=1ms
slow_uri=$uri
serve mem nbdkit memory "$size"
mem_uri=$uri
case " $BENCH_ONLY " in
*" unpack-raw "*)
  target_raw=$BENCH_DIR/nbd-bench-target.raw
  rm -f "$target_raw"
  truncate -s "$size" "$target_raw"
  serve rawtarget qemu-nbd -e 4 -f raw "$target_raw"
  rawtarget_uri=$uri ;;
esac
serve slowmem nbdkit --filter=delay memory "$size" delay-write=1ms \
  delay-zero=1ms delay-trim=1ms delay-extents=1ms
slowmem_uri=$uri

# Each command is timed by bench-lib.sh's timed (to exit, and to data
# on disk: sparsecow flushes its target, nbdcopy does not); out goes
# after each run.  The qcow2 target of an nbdcopy run is made first,
# untimed.
run_nbd () { timed "$@"; rm -f "$out"; }
new_qcow2 () { rm -f "$out"; "$QEMU_IMG" create -q -f qcow2 "$out" "$size"; }
nbdcopy_to_qcow2 () {         # SOURCE-URI [NBDCOPY-OPTIONS]
  nbdcopy "${@:2}" "$1" -- [ qemu-nbd -f qcow2 "$out" ]
}

sc_pack () { run_nbd "$1-$2" "$3" pack -q "$4" "$out"; }
nc_pack () { new_qcow2; run_nbd "$1" nbdcopy_to_qcow2 "$2" "${@:3}"; }
sc_unpack () { run_nbd "$1-$2" "$3" unpack -q "$img" "$4"; }
nc_unpack () {
  run_nbd "$1" nbdcopy "${@:3}" -- '[' qemu-nbd -r -f qcow2 "$img" ']' "$2"
}

# one CASE TOOL: run one command of a case.  Tools: sc, old (the
# program of SPARSECOW_OLD), nbdcopy, serial (nbdcopy one request at a
# time).
one () {
  local c=$1 t=$2 prog=$SPARSECOW target
  [ "$t" = old ] && prog=$SPARSECOW_OLD
  case $c in
  pack|delay)
    local src_uri=$raw_uri
    [ "$c" = delay ] && src_uri=$slow_uri
    case $t in
    sc|old) sc_pack "$t" "$c" "$prog" "$src_uri" ;;
    nbdcopy) nc_pack "nbdcopy-$c" "$src_uri" ;;
    serial) nc_pack "serial-$c" "$src_uri" --connections=1 --requests=1 ;;
    esac ;;
  unpack*)
    case $c in
    unpack) target=$mem_uri ;;
    unpack-raw) target=$rawtarget_uri ;;
    unpack-delay) target=$slowmem_uri ;;
    esac
    case $t in
    sc|old) sc_unpack "$t" "$c" "$prog" "$target" ;;
    nbdcopy) nc_unpack "nbdcopy-$c" "$target" ;;
    serial) nc_unpack "serial-$c" "$target" --connections=1 --requests=1 ;;
    esac ;;
  esac
}

for c in $BENCH_ONLY; do
  case $c in
  pack|unpack|unpack-raw|unpack-delay|delay) ;;
  *) die "unknown case '$c' in BENCH_ONLY" ;;
  esac
done
for ((r = 1; r <= BENCH_ROUNDS; r++)); do
  echo "$BENCH_NAME: round $r of $BENCH_ROUNDS" >&2
  for c in $BENCH_ONLY; do
    tools=(sc nbdcopy)
    case $c in *delay) tools+=(serial) ;; esac
    [ -n "${SPARSECOW_OLD:-}" ] && tools+=(old)
    for ((k = 0; k < ${#tools[@]}; k++)); do
      one "$c" "${tools[(k + r) % ${#tools[@]}]}"
    done
  done
done

ratio () { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "workload: $src ($(du -h "$src" | cut -f1) allocated of $BENCH_SIZE)," \
  "$BENCH_ROUNDS rounds, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-12s %7s %9s %8s %10s %10s %8s %11s %8s %7s %8s\n" case "sc s" \
  "nbdcopy s" speedup "sc+sync s" "nbdc+sync" speedup "1-request s" \
  speedup "old s" speedup
echo "CSV:" > "$BENCH_DIR/nbd-bench.csv"
for c in $BENCH_ONLY; do
  ts=$(median "${times[sc-$c]}"); tn=$(median "${times[nbdcopy-$c]}")
  ds=$(median "${dtimes[sc-$c]}"); dn=$(median "${dtimes[nbdcopy-$c]}")
  t1=; r1=; to=; ro=
  if [ -n "${times[serial-$c]:-}" ]; then
    t1=$(printf %.3f "$(median "${times[serial-$c]}")")
    r1=$(ratio "$t1" "$ts")x
  fi
  if [ -n "${times[old-$c]:-}" ]; then
    to=$(printf %.3f "$(median "${times[old-$c]}")")
    ro=$(ratio "$to" "$ts")x
  fi
  printf "%-12s %7.3f %9.3f %7sx %10.3f %10.3f %7sx %11s %8s %7s %8s\n" \
    "$c" "$ts" "$tn" "$(ratio "$tn" "$ts")" "$ds" "$dn" "$(ratio "$dn" "$ds")" \
    "$t1" "$r1" "$to" "$ro"
  echo "$c,$ts,$tn,$ds,$dn,$t1,$to" >> "$BENCH_DIR/nbd-bench.csv"
done
echo "speedup = other time / sparsecow time (higher is better); +sync"
echo "times each command until its output is on disk; 1-request is"
echo "nbdcopy --connections=1 --requests=1 under the same delay; old is"
echo "SPARSECOW_OLD."
echo "case,sc_s,nbdcopy_s,sc_sync_s,nbdcopy_sync_s,one_request_s,old_s"
tail -n +2 "$BENCH_DIR/nbd-bench.csv"
