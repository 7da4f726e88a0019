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

BENCH_NAME=repack-bench
. "$(dirname "$0")/bench-lib.sh"
BENCH_SIZE=${BENCH_SIZE:-4G}
BENCH_TREES=${BENCH_TREES:-/usr/share}
bench_setup /var/tmp/sparsecow-repack-bench

# ---- the workload, built once --------------------------------------------
# An ext4 file system in a sparse raw file, converted by qemu-img to an
# uncompressed qcow2 with 64 KiB clusters: the image a user would have
# before re-packing it.
qcow2=$BENCH_DIR/workload-$BENCH_SIZE.qcow2
if [ ! -f "$qcow2" ]; then
  bench_workload
  "$QEMU_IMG" convert -f raw -O qcow2 "$src" "$qcow2.tmp"
  rm -f "$src"
  mv "$qcow2.tmp" "$qcow2"
fi
src=$qcow2

# Warm the source once (caches are not dropped: that needs privileges
# this benchmark does not assume); every command then reads from the
# same warm cache.
"$QEMU_IMG" convert -O qcow2 "$src" "$out"
rm -f "$out"

run_rounds
report "$src ($(du -h "$src" | cut -f1) file, $BENCH_SIZE virtual)"
