#!/usr/bin/env bash
# The digest of an uncompressed pack of a file, hashed beside the copy
# (see aside in lib/pack.c), as strace sees the threads: the thread that
# hashes starts before the scan's first probe of the source, so that the
# hashing has the CPUs that the scan leaves idle, and the target is
# written by one thread only, whose writes would wait for each other on
# the file's lock (with or without the digest); while that copy runs,
# the hashing reads on one thread fewer than -j, so that the copy keeps
# a CPU.  The image is checked against qemu-img and against
# the pack without the digest (tests/verify-digest.sh has the rest).
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img strace python3
# Under valgrind the threads are valgrind's.
[ -z "$SC_VALGRIND" ] || { echo "$0: SKIP: not under valgrind"; exit 77; }

cd "$tmp"
MiB=$((1024 * 1024))

# 32 MiB of data in 128 MiB, a hole first: many pieces for each thread
# of a copy, and in the page cache, which the scan probes.
qemu-img create -q -f raw src.raw $((128 * MiB))
head -c $((32 * MiB)) /dev/urandom |
  dd of=src.raw bs=$MiB seek=8 conv=notrunc status=none
cat src.raw >/dev/null
strace -f -o trace -e trace=clone,clone3,preadv2,copy_file_range,pwrite64 \
  true 2>/dev/null || { echo "$0: SKIP: strace cannot trace here"; exit 77; }

# Without the digest too, one thread writes a file.
ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
  strace -f -o trace0 -e trace=copy_file_range,pwrite64 \
  "$SPARSECOW" pack -q -j 2 --no-digest src.raw without.qcow2
writers=$(awk '$2 ~ /^(copy_file_range|pwrite64)\(/ { print $1 }' trace0 |
          sort -u | wc -l)
[ "$writers" = 1 ] ||
  fail "pack --no-digest: the target was written by $writers threads"
# LeakSanitizer cannot run under ptrace; the untraced runs have it.
ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
  strace -f -o trace -e trace=clone,clone3,preadv2,copy_file_range,pwrite64 \
  "$SPARSECOW" pack -q -j 2 --digest src.raw with.qcow2
qemu-img check -q with.qcow2 || fail "qemu-img check of with.qcow2"
qemu-img compare -q -f raw -F qcow2 src.raw with.qcow2 ||
  fail "with.qcow2 differs from its source"
sparsecow verify -q with.qcow2 || fail "verify of with.qcow2"

# Lines "PID syscall(...": the process's own thread is the first one.
main=$(awk 'NR == 1 { print $1 }' trace)
first_clone=$(awk -v m="$main" '$1 == m && $2 ~ /^clone3?\(/ { print NR; exit }' trace)
first_probe=$(awk -v m="$main" '$1 == m && $2 ~ /^preadv2\(/ { print NR; exit }' trace)
[ -n "$first_probe" ] || fail "the scan did not probe the cached source"
[ -n "$first_clone" ] && [ "$first_clone" -lt "$first_probe" ] ||
  fail "the hashing started after the scan's first probe"
writers=$(awk '$2 ~ /^(copy_file_range|pwrite64)\(/ { print $1 }' trace |
          sort -u | wc -l)
[ "$writers" = 1 ] ||
  fail "the target was written by $writers threads, not by one"

# The threads other than the process's own that read the source with
# pread64 (the hashing's: the scan probes with preadv2, on the first)
# before the copy's last copy_file_range: while the copy runs, the
# hashing leaves it a CPU and reads on one thread fewer than -j.
hash_readers () {
  awk -v m="$(awk 'NR == 1 { print $1 }' "$1")" \
      -v t="$(awk '$3 ~ /^copy_file_range\(/ { t = $2 } END { print t }' "$1")" \
    '$1 != m && $3 ~ /^pread64\(/ && $2 < t { print $1 }' "$1" |
    sort -u | wc -l
}
for j in 2 3; do
  ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
    strace -f -ttt -o trace$j -e trace=clone,clone3,pread64,copy_file_range \
    "$SPARSECOW" pack -q -j $j --digest src.raw with$j.qcow2
  grep -q copy_file_range trace$j || fail "pack -j $j: no copy_file_range"
  n=$(hash_readers trace$j)
  [ "$n" = $((j - 1)) ] ||
    fail "pack -j $j: the hashing read on $n threads beside the copy, not on $((j - 1))"
  cmp with.qcow2 with$j.qcow2 || fail "pack -j $j made another image"
done

# With the digest or without, the same image but for the extension:
# only the first cluster differs.
cmp -s with.qcow2 without.qcow2 && fail "the digest is missing"
cmp -i 65536 with.qcow2 without.qcow2 ||
  fail "the images differ after their first cluster"
exit 0
