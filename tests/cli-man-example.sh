#!/bin/bash
# The example of libsparsecow(3) works: the image it packs is what
# qemu-img reads, and the runs it prints are qemu-img map's data runs.
. "$srcdir/functions.sh"
requires qemu-img python3

example=$top_builddir/tests/man-example
[ -x "$example" ] || fail "tests/man-example was not built"
cd "$tmp"
truncate -s 1G disk.raw
echo hello | dd of=disk.raw bs=1M seek=100 conv=notrunc status=none
head -c 300000 /dev/urandom | dd of=disk.raw bs=1M seek=700 conv=notrunc \
  status=none
$SC_VALGRIND "$example" disk.raw disk.qcow2 >runs.txt
qemu-img check -q disk.qcow2
qemu-img compare -q -f raw -F qcow2 disk.raw disk.qcow2
qemu-img info --output=json disk.qcow2 | grep -q '"compression-type": "zstd"' ||
  fail "the example's image is not zstd-compressed"
qemu-img map --output=json disk.qcow2 | python3 -c '
import json, sys
for r in json.load(sys.stdin):
    if r["data"]:
        print(r["start"], r["length"])' >qemu-runs.txt
diff -u qemu-runs.txt runs.txt || fail "the example prints other runs than qemu-img map"
# A usage error, and a target that exists, fail without a crash.
"$example" >/dev/null 2>&1 && fail "the example without arguments succeeded"
"$example" disk.raw disk.qcow2 2>err.txt && fail "the example replaced a file"
grep -q "disk.qcow2: target exists" err.txt || fail "$(cat err.txt)"
