#!/bin/bash
# Every command takes the common options, and every usage error is one
# line "sparsecow: COMMAND: ..." and one hint line, as qemu-img's are.
. "$srcdir/functions.sh"
requires qemu-img python3

qemu-img create -q -f qcow2 "$tmp/img.qcow2" 1M
truncate -s 1M "$tmp/raw"

# usage_error CMD ARGS...: exit status 1, nothing on stdout, exactly two
# lines on stderr: the error naming CMD, then the hint.
usage_error () {
  local cmd=$1 rc=0; shift
  sparsecow "$cmd" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  [ "$rc" = 1 ] || fail "$cmd $*: exit status $rc, not 1"
  [ ! -s "$tmp/out" ] || fail "$cmd $*: wrote to stdout"
  [ "$(wc -l <"$tmp/err")" = 2 ] ||
    fail "$cmd $*: not two lines: $(cat "$tmp/err")"
  head -n1 "$tmp/err" | grep -q "^sparsecow: $cmd: " ||
    fail "$cmd $*: no 'sparsecow: $cmd:' prefix: $(cat "$tmp/err")"
  tail -n1 "$tmp/err" | grep -q "^Try 'sparsecow $cmd --help'" ||
    fail "$cmd $*: no hint line: $(cat "$tmp/err")"
}

for cmd in pack unpack info map check bmap; do
  sparsecow $cmd -V | grep -q '^sparsecow ' || fail "$cmd -V"
  sparsecow $cmd --version | grep -q '^sparsecow ' || fail "$cmd --version"
  sparsecow $cmd -h | grep -q "^Usage: sparsecow $cmd" || fail "$cmd -h"
  sparsecow $cmd --help | grep -q "^Usage: sparsecow $cmd" ||
    fail "$cmd --help"
  usage_error $cmd -j
  usage_error $cmd --threads
  usage_error $cmd -j 0 "$tmp/img.qcow2"
  usage_error $cmd -m x "$tmp/img.qcow2"
  usage_error $cmd --bogus "$tmp/img.qcow2"
  usage_error $cmd -X "$tmp/img.qcow2"
  usage_error $cmd --progress=sideways "$tmp/img.qcow2"
done
usage_error pack -j 0 "$tmp/raw" "$tmp/o.qcow2"
grep -q "^sparsecow: pack: -j: " "$tmp/err" || fail "pack -j 0: $(cat "$tmp/err")"
usage_error pack -j
grep -q "'-j'" "$tmp/err" || fail "pack -j: does not name -j"
usage_error pack -c lz4 "$tmp/raw" "$tmp/o.qcow2"
grep -q "unknown codec 'lz4'" "$tmp/err" || fail "pack -c lz4: $(cat "$tmp/err")"
usage_error pack --compress=lz4 "$tmp/raw" "$tmp/o.qcow2"
usage_error pack "$tmp/raw"
usage_error unpack "$tmp/img.qcow2"
usage_error info
usage_error map "$tmp/img.qcow2" "$tmp/raw"
usage_error check
usage_error info --output=yaml "$tmp/img.qcow2"
[ ! -e "$tmp/o.qcow2" ] || fail "a failed command created a target"

# The common options are accepted by every command (-q, -p, -j/-m, -U).
sparsecow info -q -j 2 -U "$tmp/img.qcow2" >/dev/null
sparsecow map -q -m 2 -p -U "$tmp/img.qcow2" >/dev/null
sparsecow check -q -j 1 -U "$tmp/img.qcow2" >/dev/null
sparsecow pack -q -m 2 -p -U "$tmp/raw" "$tmp/o.qcow2"
qemu-img compare -q -f raw -F qcow2 "$tmp/raw" "$tmp/o.qcow2"
sparsecow unpack -q -j 2 -U "$tmp/o.qcow2" "$tmp/back"
cmp "$tmp/raw" "$tmp/back"

# qemu-img convert's spellings: -O qcow2, -o KEY=VALUE, -m N.
rm -f "$tmp/o.qcow2"
head -c 100000 /dev/urandom | dd of="$tmp/raw" conv=notrunc status=none
sparsecow pack -q -O qcow2 -m 2 -c \
  -o cluster_size=4k,compat=0.10,refcount_bits=16 "$tmp/raw" "$tmp/o.qcow2"
qemu-img info --output=json "$tmp/o.qcow2" | python3 -c '
import json, sys
i = json.load(sys.stdin)
assert i["cluster-size"] == 4096, i
assert i["format-specific"]["data"]["compat"] == "0.10", i' ||
  fail "-O/-o options did not reach the image"
qemu-img compare -q -f raw -F qcow2 "$tmp/raw" "$tmp/o.qcow2"
rm -f "$tmp/o.qcow2"
sparsecow pack -q -c -o compression_type=zstd "$tmp/raw" "$tmp/o.qcow2"
qemu-img info --output=json "$tmp/o.qcow2" |
  grep -q '"compression-type": "zstd"' || fail "-o compression_type=zstd"
usage_error pack -O vmdk "$tmp/raw" "$tmp/p.qcow2"
grep -q "only qcow2" "$tmp/err" || fail "-O vmdk: $(cat "$tmp/err")"

# qemu-img's -f for info, map and check: qcow2 (and raw for map) as
# qemu-img reads them, other formats refused with the way to read them.
qemu-img create -q -f qcow2 "$tmp/f.qcow2" 1M
qemu-io -f qcow2 -c "write -P 7 0 64k" "$tmp/f.qcow2" >/dev/null
for cmd in "info" "check"; do
  sparsecow $cmd -f qcow2 "$tmp/f.qcow2" >/dev/null || fail "$cmd -f qcow2 failed"
  usage_error $cmd -f vmdk "$tmp/f.qcow2"
  grep -q "qemu-nbd -f vmdk" "$tmp/err" || fail "$cmd -f vmdk: $(cat "$tmp/err")"
done
for f in qcow2 raw; do
  diff <(sparsecow map -f $f --output=json "$tmp/f.qcow2") \
       <(qemu-img map -f $f --output=json "$tmp/f.qcow2") ||
    fail "map -f $f differs from qemu-img map -f $f"
done

# Options that contradict each other are usage errors, and nothing is
# written: -S 0 allocates every byte, --zero=skip writes no zero range.
usage_error unpack -S 0 --zero=skip "$tmp/img.qcow2" "$tmp/contradiction.raw"
[ ! -e "$tmp/contradiction.raw" ] || fail "a refused unpack left its target"
