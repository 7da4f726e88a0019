#!/bin/bash
# Every command takes the common options, and every usage error is one
# line "sparsecow: COMMAND: ..." and one hint line, as qemu-img's are.
. "$srcdir/functions.sh"
requires qemu-img python3

qemu-img create -q -f qcow2 "$tmp/img.qcow2" 1M
truncate -s 1M "$tmp/raw"

# usage_error CMD ARGS...: exit status 1 (2 for verify, whose 1 means
# "different"), nothing on stdout, exactly two lines on stderr: the
# error naming CMD, then the hint.
usage_error () {
  local cmd=$1 rc=0 want=1; shift
  [ "$cmd" != verify ] || want=2
  sparsecow "$cmd" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  [ "$rc" = "$want" ] || fail "$cmd $*: exit status $rc, not $want"
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
# A value given to a short option that takes none ("-p=json"): said
# so, with the long option that takes it, not "unknown option '-='".
for cmd in pack unpack info map check bmap verify; do
  usage_error $cmd -p=json "$tmp/raw" "$tmp/o.qcow2"
  grep -q "^sparsecow: $cmd: -p takes no value .*--progress=json" "$tmp/err" ||
    fail "$cmd -p=json: $(cat "$tmp/err")"
  ! grep -q "'-='" "$tmp/err" || fail "$cmd -p=json: $(cat "$tmp/err")"
  usage_error $cmd -U=yes "$tmp/img.qcow2"
  grep -q "^sparsecow: $cmd: -U takes no value (in '-U=yes')$" "$tmp/err" ||
    fail "$cmd -U=yes: $(cat "$tmp/err")"
done
# A long option that takes no value, given one, exists: it is said to
# take none, not to be unknown.  -h and -V with a value or in a bundle
# with an unknown option are refused as -q=1 is, not acted on.
for opt in --quiet=1 --help=1 --version=1 --force-share=1 --quie=1; do
  usage_error pack $opt "$tmp/raw" "$tmp/o.qcow2"
  grep -q "^sparsecow: pack: option '${opt%=*}' takes no value$" "$tmp/err" ||
    fail "pack $opt: $(cat "$tmp/err")"
done
for opt in -V=1 -h=1 -q=1; do
  usage_error pack $opt "$tmp/raw" "$tmp/o.qcow2"
  grep -q "^sparsecow: pack: ${opt%=*} takes no value" "$tmp/err" ||
    fail "pack $opt: $(cat "$tmp/err")"
done
usage_error pack -Vx "$tmp/raw" "$tmp/o.qcow2"
grep -q "unknown option '-x'" "$tmp/err" || fail "pack -Vx: $(cat "$tmp/err")"
# An error about a value names the option as it was typed.
for opt in --threads= --thr=x "--threads x" -jx "-m x" --conn=99 "-C 0" \
           --req=0 --tim=x --prog=sideways; do
  set -- $opt
  usage_error pack "$@" "$tmp/raw" "$tmp/o.qcow2"
  typed=${1%%=*}
  case $typed in --*) ;; *) typed=${typed:0:2} ;; esac
  grep -q "^sparsecow: pack: $typed[:=]" "$tmp/err" ||
    fail "pack $opt: does not name $typed: $(cat "$tmp/err")"
done
usage_error pack -c=zstd "$tmp/raw" "$tmp/o.qcow2"
grep -q "^sparsecow: pack: -c: .*'=zstd'.*-czstd" "$tmp/err" ||
  fail "pack -c=zstd: $(cat "$tmp/err")"
# An optional value as a separate word is an operand: with one operand
# too many, the message says which word and how to write the value.
usage_error pack --compress zstd "$tmp/raw" "$tmp/o.qcow2"
grep -q "'zstd' after --compress is an operand.*--compress=zstd" "$tmp/err" ||
  fail "pack --compress zstd: $(cat "$tmp/err")"
usage_error pack --progress json "$tmp/raw" "$tmp/o.qcow2"
grep -q "'json' after --progress is an operand.*--progress=json" "$tmp/err" ||
  fail "pack --progress json: $(cat "$tmp/err")"
[ ! -e "$tmp/o.qcow2" ] || fail "a failed command created a target"

# Before the command, as qemu-img: no command is one error line and the
# hint (qemu-img alone is the oracle of the form), an unknown option is
# an option, and long options take a unique prefix, as after it.
top_error () {
  local rc=0
  "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  [ "$rc" = 1 ] || fail "$*: exit status $rc, not 1"
  [ ! -s "$tmp/out" ] || fail "$*: wrote to stdout"
  [ "$(wc -l <"$tmp/err")" = 2 ] || fail "$*: not two lines: $(cat "$tmp/err")"
  tail -n1 "$tmp/err" | grep -q "^Try '$1 --help'" ||
    fail "$*: no hint line: $(cat "$tmp/err")"
}
top_error qemu-img
top_error qemu-img -x
grep -q "'-x'" "$tmp/err" || fail "test setup: qemu-img -x: $(cat "$tmp/err")"
qemu-img --vers | grep -q "^qemu-img version" ||
  fail "test setup: qemu-img --vers"
top_error sparsecow
grep -q "^sparsecow: expected a command$" "$tmp/err" ||
  fail "sparsecow alone: $(cat "$tmp/err")"
top_error sparsecow -x
grep -q "^sparsecow: unknown option '-x'$" "$tmp/err" ||
  fail "sparsecow -x: $(cat "$tmp/err")"
top_error sparsecow --bogus pack
grep -q "^sparsecow: unknown option '--bogus'$" "$tmp/err" ||
  fail "sparsecow --bogus: $(cat "$tmp/err")"
top_error sparsecow -V=1
top_error sparsecow --help=1
top_error sparsecow frobnicate
grep -q "^sparsecow: unknown command 'frobnicate'$" "$tmp/err" ||
  fail "sparsecow frobnicate: $(cat "$tmp/err")"
for v in --vers --version -V; do
  sparsecow $v | grep -q "^sparsecow " || fail "sparsecow $v"
  sparsecow pack $v | grep -q "^sparsecow " || fail "sparsecow pack $v"
done
sparsecow --he | grep -q "^Usage: sparsecow COMMAND" || fail "sparsecow --he"
# Options after the command are still found behind its operands.
sparsecow map "$tmp/img.qcow2" --output=json | python3 -c 'import json,sys; json.load(sys.stdin)' ||
  fail "map IMAGE --output=json: an option behind the operand was not taken"

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

# -o compression_type=zstd without -c, as qemu-img convert takes it: the
# header records zstd, and no cluster is compressed.
rm -f "$tmp/z.qcow2"
sparsecow pack -q -o compression_type=zstd "$tmp/raw" "$tmp/z.qcow2" ||
  fail "-o compression_type=zstd without -c refused"
qemu-img convert -f raw -O qcow2 -o compression_type=zstd "$tmp/raw" \
  "$tmp/zq.qcow2"
for img in "$tmp/zq.qcow2" "$tmp/z.qcow2"; do
  qemu-img info --output=json "$img" | python3 -c '
import json, sys
i = json.load(sys.stdin)
assert i["format-specific"]["data"]["compression-type"] == "zstd", i' ||
    fail "$img: compression type is not zstd"
  qemu-img check --output=json "$img" | python3 -c '
import json, sys
c = json.load(sys.stdin)
assert c["allocated-clusters"] > 0 and c.get("compressed-clusters", 0) == 0, c
assert not c.get("corruptions") and not c.get("leaks"), c' ||
    fail "$img: not an uncompressed, clean image"
done
qemu-img compare -q -f raw -F qcow2 "$tmp/raw" "$tmp/z.qcow2"
# Allocated as qemu-img allocates it.
diff <(qemu-img map --output=json "$tmp/zq.qcow2" | sed 's/, "offset": [0-9]*//') \
     <(qemu-img map --output=json "$tmp/z.qcow2" | sed 's/, "offset": [0-9]*//') ||
  fail "-o compression_type=zstd: not mapped as qemu-img's"

# Messages name an option as it was typed, -o KEY=VALUE included.
usage_error pack -o compat=0.10,refcount_bits=8 "$tmp/raw" "$tmp/p.qcow2"
grep -q -- "-o compat=0.10" "$tmp/err" && grep -q -- "-o refcount_bits=8" "$tmp/err" &&
  ! grep -q -- "--compat\|--refcount-bits" "$tmp/err" ||
  fail "-o compat=0.10,refcount_bits=8: $(cat "$tmp/err")"
usage_error pack -o compat=0.10,compression_type=zstd "$tmp/raw" "$tmp/p.qcow2"
grep -q -- "-o compat=0.10.*-o compression_type=zstd" "$tmp/err" &&
  ! grep -q -- "--compat" "$tmp/err" ||
  fail "-o compat=0.10,compression_type=zstd: $(cat "$tmp/err")"
usage_error pack -c zstd -o compat=v2 "$tmp/raw" "$tmp/p.qcow2"
grep -q -- "-o compat=v2.*-c zstd" "$tmp/err" ||
  fail "-c zstd -o compat=v2: $(cat "$tmp/err")"
usage_error pack --compat=0.10 --refcount-bits=8 "$tmp/raw" "$tmp/p.qcow2"
grep -q -- "--compat=0.10.*--refcount-bits=8" "$tmp/err" ||
  fail "--compat=0.10 --refcount-bits=8: $(cat "$tmp/err")"
usage_error pack --digest -o compat=0.10 "$tmp/raw" "$tmp/p.qcow2"
grep -q -- "-o compat=0.10" "$tmp/err" && ! grep -q -- "--compat" "$tmp/err" ||
  fail "--digest -o compat=0.10: $(cat "$tmp/err")"
usage_error pack -c zstd -o compression_type=zlib "$tmp/raw" "$tmp/p.qcow2"
grep -q -- "-o compression_type=zlib and -c zstd" "$tmp/err" ||
  fail "-c zstd -o compression_type=zlib: $(cat "$tmp/err")"
usage_error pack -o compat=0.11 "$tmp/raw" "$tmp/p.qcow2"
grep -q -- "-o compat: " "$tmp/err" || fail "-o compat=0.11: $(cat "$tmp/err")"
usage_error verify -f vmdk "$tmp/raw" "$tmp/raw"
grep -q -- "verify: -f: " "$tmp/err" || fail "verify -f vmdk: $(cat "$tmp/err")"
[ ! -e "$tmp/p.qcow2" ] || fail "a refused pack created its target"

# --target-is-zero needs -n, as in qemu-img convert: a usage error
# without it, whatever the target.
rc=0
qemu-img convert -q --target-is-zero -f qcow2 -O raw "$tmp/img.qcow2" \
  "$tmp/tz-q.raw" 2>/dev/null || rc=$?
[ "$rc" != 0 ] || fail "qemu-img convert --target-is-zero without -n: accepted"
usage_error unpack --target-is-zero "$tmp/img.qcow2" "$tmp/tz.raw"
grep -q -- "--target-is-zero needs -n" "$tmp/err" ||
  fail "unpack --target-is-zero: $(cat "$tmp/err")"
[ ! -e "$tmp/tz.raw" ] || fail "a refused unpack created its target"
usage_error unpack -f --target-is-zero "$tmp/img.qcow2" "$tmp/raw"
usage_error unpack --target-is-zero "$tmp/img.qcow2" -
# With -n, into a file that reads as zero, as qemu-img convert -n does.
qemu-io -f qcow2 -c "write -P 9 64k 64k" "$tmp/img.qcow2" >/dev/null
truncate -s 1M "$tmp/tz.raw" "$tmp/tz-q.raw"
sparsecow unpack -q -n --target-is-zero "$tmp/img.qcow2" "$tmp/tz.raw"
qemu-img convert -n --target-is-zero -f qcow2 -O raw "$tmp/img.qcow2" \
  "$tmp/tz-q.raw"
cmp "$tmp/tz.raw" "$tmp/tz-q.raw" ||
  fail "unpack -n --target-is-zero differs from qemu-img's"

# --progress=fd:N: standard input is no place for progress, whatever it
# is open on; nor a descriptor that is not open, nor the data's.
usage_error pack --progress=fd:0 "$tmp/raw" "$tmp/p.qcow2"
grep -q -- "--progress=fd:0: descriptor 0 is standard input" "$tmp/err" ||
  fail "--progress=fd:0: $(cat "$tmp/err")"
usage_error unpack --progress=json:fd:0 "$tmp/img.qcow2" "$tmp/p.raw" \
  0<>"$tmp/raw"
grep -q -- "--progress=json:fd:0: descriptor 0 is standard input" "$tmp/err" ||
  fail "--progress=json:fd:0: $(cat "$tmp/err")"
usage_error unpack --progress=fd:7 "$tmp/img.qcow2" "$tmp/p.raw"
grep -q -- "--progress=fd:7: descriptor 7 is not open" "$tmp/err" ||
  fail "--progress=fd:7: $(cat "$tmp/err")"
usage_error verify --progress=fd:7 "$tmp/raw" "$tmp/raw"
rc=0
sparsecow pack --progress=json:fd:1 "$tmp/raw" - >"$tmp/p.qcow2" \
  2>"$tmp/err" || rc=$?
[ "$rc" = 1 ] && [ ! -s "$tmp/p.qcow2" ] &&
  grep -q -- "--progress=json:fd:1: .*standard output" "$tmp/err" ||
  fail "--progress=json:fd:1 with data on stdout: $(cat "$tmp/err")"
# The file on standard input, open for writing on the descriptor too.
cp "$tmp/img.qcow2" "$tmp/in.qcow2"
usage_error unpack --progress=fd:3 - "$tmp/p.raw" <"$tmp/in.qcow2" \
  3<>"$tmp/in.qcow2"
usage_error pack --progress=fd:3 "$tmp/raw" "$tmp/p.qcow2" 3<>"$tmp/raw"
qemu-img compare -q "$tmp/img.qcow2" "$tmp/in.qcow2" ||
  fail "progress went into the image"
[ ! -e "$tmp/p.raw" ] || fail "a refused unpack created its target"

# -o as qemu-img takes it: "-o help" lists the keys (each one that
# qemu-img lists for qcow2), an empty one is an error in both.
sparsecow pack -o help "$tmp/raw" "$tmp/h.qcow2" >"$tmp/out" ||
  fail "pack -o help failed"
qemu-img convert -O qcow2 -o help "$tmp/raw" "$tmp/h.qcow2" >"$tmp/qhelp"
keys=$(sed -n 's/^  \([a-z_]*\)=.*/\1/p' "$tmp/out")
[ -n "$keys" ] || fail "pack -o help lists nothing: $(cat "$tmp/out")"
for k in $keys; do
  grep -q "^  $k=" "$tmp/qhelp" || fail "-o help: $k is not qemu-img's"
done
[ ! -e "$tmp/h.qcow2" ] || fail "pack -o help wrote an image"
for o in "" "cluster_size=64k," "cluster_size=4k,,compat=1.1"; do
  rc=0
  qemu-img convert -O qcow2 -o "$o" "$tmp/raw" "$tmp/q.qcow2" 2>/dev/null ||
    rc=$?
  [ "$rc" != 0 ] || fail "qemu-img convert -o '$o' accepted"
  usage_error pack -o "$o" "$tmp/raw" "$tmp/p.qcow2"
done
# check does not repair: -r is refused with the way to do it.
usage_error check -r all "$tmp/img.qcow2"
grep -q "qemu-img check -r all" "$tmp/err" || fail "check -r: $(cat "$tmp/err")"
usage_error check --repair=leaks "$tmp/img.qcow2"
grep -q -- "--repair=leaks" "$tmp/err" || fail "check --repair: $(cat "$tmp/err")"
# The -f FMT that info, map and check take is in their help.
for cmd in info map check; do
  sparsecow $cmd --help | grep -q "^  -f qcow2" || fail "$cmd --help has no -f"
done

# -f is --force in pack and unpack, not qemu-img convert's source
# format: "-f raw" or "-f qcow2" before operands is a usage error that
# says so, unless a file has that name.
qemu-img convert -q -f raw -O qcow2 "$tmp/raw" "$tmp/fq.qcow2" ||
  fail "qemu-img convert -f raw"
usage_error pack -f raw "$tmp/raw" "$tmp/ff.qcow2"
grep -q -- "-f raw: -f is --force here" "$tmp/err" || fail "pack -f raw: $(cat "$tmp/err")"
usage_error unpack -f qcow2 "$tmp/fq.qcow2" "$tmp/ff.raw"
grep -q -- "-f qcow2: -f is --force here" "$tmp/err" ||
  fail "unpack -f qcow2: $(cat "$tmp/err")"
[ ! -e "$tmp/ff.qcow2" ] && [ ! -e "$tmp/ff.raw" ] ||
  fail "a refused command wrote a target"
(cd "$tmp" && sparsecow pack -q -f raw ff.qcow2) ||
  fail "pack -f of a file named raw failed"
qemu-img compare -q -f raw -F qcow2 "$tmp/raw" "$tmp/ff.qcow2"
# unpack -O raw, as qemu-img convert -O raw writes it.
qemu-img convert -f qcow2 -O raw "$tmp/fq.qcow2" "$tmp/fq.raw"
sparsecow unpack -q -O raw "$tmp/fq.qcow2" "$tmp/ff.raw"
cmp "$tmp/fq.raw" "$tmp/ff.raw" || fail "unpack -O raw differs from qemu-img's"
usage_error unpack -O qcow2 "$tmp/fq.qcow2" "$tmp/ff2.raw"
grep -q "pack writes qcow2" "$tmp/err" || fail "unpack -O qcow2: $(cat "$tmp/err")"

# Every spelling of --progress that is accepted (and that the completion
# offers) is in --help and in the manual's entry for it.
for v in bar json; do
  sparsecow pack --progress=$v --help >/dev/null ||
    fail "--progress=$v is not accepted"
  for cmd in pack unpack bmap verify; do
    sparsecow $cmd --help | grep -- '--progress\[' |
      grep -Eq "(\[=|\|)$v(\||\])" ||
      fail "$cmd --help does not name --progress=$v"
  done
  grep -q -- "^\.BR \\\\-p \", \" \\\\-\\\\-progress \[.*=$v " \
    "$top_srcdir/man/sparsecow.1" ||
    fail "the manual's entry for --progress does not name =$v"
done
