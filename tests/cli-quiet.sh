#!/usr/bin/env bash
# -q as qemu-img takes it: check -q against qemu-img check -q and
# verify -q against qemu-img compare -q, on clean, leaking, corrupt and
# foreign images and on equal and different contents.  Nothing goes to
# standard output (the JSON of --output=json neither), the problems
# still go to standard error, and the exit status is qemu-img's.  info
# and map (qemu-img info and map have no -q) print their report with -q
# too: it is what they are run for.
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/check-functions.sh"
requires qemu-img qemu-io od dd truncate

cd "$tmp"

# same_quiet NAME WANT-QEMU-EXIT OURS-EXIT QEMU-ARGS... -- OUR-ARGS...:
# both print nothing on stdout, exit as said, and print on stderr both
# or neither.
same_quiet () {
  local name=$1 want=$2 ours=$3 qrc=0 src=0 q=() s=()
  shift 3
  while [ "$1" != -- ]; do q+=("$1"); shift; done
  shift
  s=("$@")
  qemu-img "${q[@]}" >q.out 2>q.err || qrc=$?
  sparsecow "${s[@]}" >s.out 2>s.err || src=$?
  [ "$qrc" = "$want" ] ||
    fail "$name: qemu-img ${q[*]} exited $qrc, the test meant $want: $(cat q.err)"
  [ "$src" = "$ours" ] ||
    fail "$name: sparsecow ${s[*]} exited $src, not $ours: $(cat s.err)"
  [ ! -s q.out ] || fail "$name: qemu-img printed on stdout: the oracle changed"
  [ ! -s s.out ] || fail "$name: sparsecow ${s[*]} printed on stdout: $(cat s.out)"
  if [ -s q.err ]; then
    [ -s s.err ] || fail "$name: sparsecow ${s[*]} printed no problem on stderr"
  else
    [ ! -s s.err ] || fail "$name: sparsecow ${s[*]} printed on stderr: $(cat s.err)"
  fi
  echo "$name: qemu-img $qrc, sparsecow $src"
}

# ---- check -q: a clean image, a leak, a corruption, a raw file, none.
qemu-img create -q -f qcow2 clean.qcow2 64M
qemu-io -c "write -P 1 0 1M" -c "write -c 4M 64k" clean.qcow2 >/dev/null
img=clean.qcow2
cs=$(( 1 << $(be32 $img 20) ))
rt=$(be64 $img 48)
rb=$(( $(be64 $img "$rt") & OFFSET_MASK ))
l1=$(be64 $img 40)
l2=$(( $(be64 $img "$l1") & OFFSET_MASK ))
d0=$(( $(be64 $img "$l2") & OFFSET_MASK ))
size=$(stat -c %s $img)
cp $img leak.qcow2; truncate -s $(( (size + cs - 1) / cs * cs + cs )) leak.qcow2
put_be16 leak.qcow2 $(( rb + 2 * ((size + cs - 1) / cs) )) 1
cp $img corrupt.qcow2; put_be16 corrupt.qcow2 $(( rb + 2 * d0 / cs )) 0
head -c 1M /dev/urandom >raw.img

for out in "" --output=json; do
  same_quiet "check -q $out clean" 0 0 check -q $out clean.qcow2 -- \
    check -q $out clean.qcow2
  same_quiet "check -q $out leak" 3 3 check -q $out leak.qcow2 -- \
    check -q $out leak.qcow2
  same_quiet "check -q $out corrupt" 2 2 check -q $out corrupt.qcow2 -- \
    check -q $out corrupt.qcow2
  same_quiet "check -q $out raw" 63 63 check -q $out raw.img -- \
    check -q $out raw.img
  same_quiet "check -q $out missing" 1 1 check -q $out missing.qcow2 -- \
    check -q $out missing.qcow2
done

# ---- verify -q against compare -q: equal contents (one side larger by
# zeros, which qemu-img warns about without -q), different contents,
# different sizes with -s, a file that is not there.  Errors exit 2
# (qemu-img compare: 2 when an image cannot be opened).
qemu-img convert -O raw clean.qcow2 clean.raw
cp clean.raw longer.raw; truncate -s +1M longer.raw
cp clean.raw other.raw
printf '\x55' | dd of=other.raw bs=1 seek=4096 conv=notrunc status=none
same_quiet "verify -q equal" 0 0 compare -q clean.qcow2 clean.raw -- \
  verify -q clean.qcow2 clean.raw
same_quiet "verify -q longer" 0 0 compare -q clean.qcow2 longer.raw -- \
  verify -q clean.qcow2 longer.raw
same_quiet "verify -q -s longer" 1 1 compare -q -s clean.qcow2 longer.raw -- \
  verify -q -s clean.qcow2 longer.raw
same_quiet "verify -q different" 1 1 compare -q clean.qcow2 other.raw -- \
  verify -q clean.qcow2 other.raw
same_quiet "verify -q missing" 2 2 compare -q clean.qcow2 missing.raw -- \
  verify -q clean.qcow2 missing.raw
# Without -q both say what they found (the oracle's side of the test).
rc=0; qemu-img compare clean.qcow2 longer.raw >q.out 2>&1 || rc=$?
[ $rc = 0 ] && [ -s q.out ] || fail "qemu-img compare without -q is silent"
rc=0; sparsecow verify clean.qcow2 longer.raw >s.out 2>&1 || rc=$?
[ $rc = 0 ] && [ -s s.out ] || fail "verify without -q is silent"

# A damaged image, its compressed cluster cut off: qemu-img compare
# opens it and fails to read it (4), sparsecow verify refuses it when it
# opens it (2); both are errors (above 1) with a message, and print
# nothing on stdout.
qemu-img create -q -f qcow2 comp.qcow2 64M
qemu-io -c "write -c -P 7 0 64k" comp.qcow2 >/dev/null
qemu-img convert -O raw comp.qcow2 comp.raw
l2=$(( $(be64 comp.qcow2 "$(be64 comp.qcow2 40)") & OFFSET_MASK ))
cp comp.qcow2 cut.qcow2; truncate -s $(( l2 + cs )) cut.qcow2
qrc=0; qemu-img compare -q cut.qcow2 comp.raw >q.out 2>q.err || qrc=$?
rc=0; sparsecow verify -q cut.qcow2 comp.raw >s.out 2>s.err || rc=$?
[ $qrc -gt 1 ] && [ -s q.err ] || fail "qemu-img compare -q of a damaged image: $qrc"
[ $rc = 2 ] && [ -s s.err ] && [ ! -s s.out ] ||
  fail "verify -q of a damaged image: status $rc, '$(cat s.out s.err)'"

# ---- info and map: -q prints the same report; map's JSON is qemu-img
# map's, byte for byte.
for cmd in info "info --output=json" map "map --output=json"; do
  # shellcheck disable=SC2086
  sparsecow $cmd clean.qcow2 >plain.out
  # shellcheck disable=SC2086
  sparsecow $cmd -q clean.qcow2 >quiet.out 2>quiet.err ||
    fail "$cmd -q failed: $(cat quiet.err)"
  [ -s quiet.out ] && cmp -s plain.out quiet.out ||
    fail "$cmd -q does not print the report"
  [ ! -s quiet.err ] || fail "$cmd -q printed on stderr: $(cat quiet.err)"
done
qemu-img map --output=json clean.qcow2 >q.out
sparsecow map -q --output=json clean.qcow2 >s.out
cmp q.out s.out || fail "map -q --output=json differs from qemu-img map's"
# A problem is still printed with -q.
rc=0; sparsecow map -q missing.qcow2 >/dev/null 2>s.err || rc=$?
[ $rc = 1 ] && [ -s s.err ] || fail "map -q of a missing image: status $rc"
rc=0; sparsecow info -q missing.qcow2 >/dev/null 2>s.err || rc=$?
[ $rc = 1 ] && [ -s s.err ] || fail "info -q of a missing image: status $rc"
