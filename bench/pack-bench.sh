#!/bin/bash
# Time sparsecow pack against qemu-img convert on a sparse file system
# image, in alternation, and print medians, speed and size ratios.
# Not a test: see bench/README.
#
# Environment:
#   BENCH_DIR     work directory (default /var/tmp/sparsecow-bench)
#   BENCH_ROUNDS  rounds per command (default 3)
#   BENCH_SIZE    virtual size of the workload (default 32G)
#   BENCH_TREES   directories copied into the file system (default
#                 "/usr/share /usr/bin /usr/lib/x86_64-linux-gnu")
#   BENCH_ONLY    run only these cases: any of "none deflate zstd" and
#                 deflate-zlib deflate-best unpack-deflate unpack-deflate-zlib
#                 (default "none deflate zstd"; see bench/README)
#   SPARSECOW     the sparsecow program (default: src/sparsecow of the
#                 build this script sits in, else sparsecow from PATH)
#   QEMU_IMG      the qemu-img program (default qemu-img)
set -euo pipefail

BENCH_NAME=pack-bench
. "$(dirname "$0")/bench-lib.sh"
bench_setup /var/tmp/sparsecow-bench
bench_workload
# Warm the source once (caches are not dropped: that needs privileges
# this benchmark does not assume); every command then reads from the
# same warm cache.
"$QEMU_IMG" convert -O qcow2 "$src" "$out"
rm -f "$out"

run_rounds
report "$src ($(du -h "$src" | cut -f1) allocated of $BENCH_SIZE)"
