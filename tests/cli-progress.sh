#!/bin/bash
# --progress=json: on stderr or the descriptor of fd:N, never in the
# data on standard output; percentages of the data to move that grow
# evenly to 100 even when the data is far apart in a sparse source.
. "$srcdir/functions.sh"
requires qemu-img python3

MiB=$((1024 * 1024))
src=$tmp/sparse.raw
truncate -s $((1024 * MiB)) "$src"
for at in 1 5 9 100 300 700 1000; do
  head -c $((4 * MiB)) /dev/urandom |
    dd of="$src" bs=1M seek=$at conv=notrunc status=none
done

# check_progress FILE [MAX]: JSON lines only, percentages that never go
# down, end at 100, and whose median step is at most 5 points (the data
# is 28 MiB in seven places over 1 GiB: counting the holes would jump),
# and no step over MAX points when given.
check_progress () {
  python3 - "$1" "${2:-100}" <<'PYEOF' || fail "progress in $1: $(head -c 2000 "$1")"
import json, statistics, sys
lines = open(sys.argv[1]).read().splitlines()
assert lines, "no progress"
p = [json.loads(l)["percent"] for l in lines]
assert all(b >= a for a, b in zip(p, p[1:])), "not monotonic: %s" % p
assert p[-1] == 100, "does not end at 100: %s" % p
steps = [b - a for a, b in zip(p, p[1:])]
assert len(steps) >= 10, "too few reports: %s" % p
assert statistics.median(steps) <= 5, "large steps: %s" % p
assert max(steps) <= int(sys.argv[2]), "a step over %s: %s" % (sys.argv[2], p)
PYEOF
}

# pack to standard output: the image alone on stdout, progress on
# stderr.
sparsecow pack --progress=json "$src" - >"$tmp/a.qcow2" 2>"$tmp/p1"
qemu-img check -q "$tmp/a.qcow2"
qemu-img compare -q -f raw -F qcow2 "$src" "$tmp/a.qcow2"
check_progress "$tmp/p1"

# Compressed, to a named descriptor, in both spellings.
sparsecow pack -c --progress=fd:3 "$src" "$tmp/b.qcow2" 3>"$tmp/p2"
check_progress "$tmp/p2"
sparsecow unpack --progress=json:fd:3 "$tmp/b.qcow2" - 3>"$tmp/p3" |
  cmp - "$src"
check_progress "$tmp/p3"
sparsecow unpack --progress=json "$tmp/a.qcow2" "$tmp/back" 2>"$tmp/p4"
cmp "$src" "$tmp/back"
check_progress "$tmp/p4"

# --verify: the read-back is counted too, the target's zero ranges
# included (they are read back and compared), in one total known from
# the start: the image's data written plus its virtual size read back,
# as qemu-img map and info give them.  The percentage still grows in
# small steps over the 1 GiB of zeros.
sparsecow unpack --verify --progress=json "$tmp/a.qcow2" "$tmp/back2" \
  2>"$tmp/p6"
cmp "$src" "$tmp/back2"
check_progress "$tmp/p6"
data=$(qemu-img map --output=json "$tmp/a.qcow2" | python3 -c '
import json, sys
print(sum(r["length"] for r in json.load(sys.stdin)
          if r["data"] and not r["zero"]))')
size=$(qemu-img info --output=json "$tmp/a.qcow2" | python3 -c '
import json, sys
print(json.load(sys.stdin)["virtual-size"])')
python3 - "$tmp/p6" $((data + size)) <<'PYEOF' ||
import json, sys
want = int(sys.argv[2])
lines = [json.loads(l) for l in open(sys.argv[1]).read().splitlines()]
assert all(l["total"] == want for l in lines), \
    "totals %s, not %d" % (sorted({l["total"] for l in lines}), want)
assert lines[-1]["done"] == want, "ends at %d" % lines[-1]["done"]
PYEOF
  fail "unpack --verify counts other than the data written and the virtual size read back: $(head -c 2000 "$tmp/p6")"

# A source read whole (--map=none, as a block device or a file system
# without SEEK_HOLE is) that holds little data: reading it is most of
# the work, and the count must grow while it is read, not jump at the
# end of the reading, in each way the reading goes.
truncate -s $((128 * MiB)) "$tmp/mn.raw"
head -c $((2 * MiB)) /dev/urandom |
  dd of="$tmp/mn.raw" bs=1M seek=50 conv=notrunc status=none
for o in "-j1" "-j2" "-c" "-S 64k"; do
  rm -f "$tmp/mn.qcow2"
  sparsecow pack $o --map=none --progress=json "$tmp/mn.raw" \
    "$tmp/mn.qcow2" 2>"$tmp/pm"
  qemu-img compare -q "$tmp/mn.raw" "$tmp/mn.qcow2"
  check_progress "$tmp/pm" 5
done

# nbdcopy's --progress=N, in nbdcopy's format: the lines nbdcopy itself
# writes there are the oracle of what a program reading them expects.
if command -v nbdcopy >/dev/null; then
  nbdcopy_progress () {
    python3 - "$1" <<'PYEOF' || fail "nbdcopy-style progress in $1: $(head -c 2000 "$1")"
import re, sys
lines = open(sys.argv[1]).read().splitlines()
assert lines, "no progress"
assert all(re.fullmatch(r"(\d|[1-9]\d|100)/100", l) for l in lines), lines
p = [int(l.split("/")[0]) for l in lines]
assert all(b >= a for a, b in zip(p, p[1:])), "not monotonic: %s" % p
assert p[-1] == 100, "does not end at 100/100: %s" % p
PYEOF
  }
  nbdcopy --progress=3 "$src" "$tmp/nc.raw" 3>"$tmp/pn0"
  nbdcopy_progress "$tmp/pn0"
  sparsecow pack --progress=3 "$src" "$tmp/n.qcow2" 3>"$tmp/pn1"
  nbdcopy_progress "$tmp/pn1"
  [ "$(wc -l <"$tmp/pn1")" -ge 10 ] || fail "--progress=3: too few lines"
  sparsecow unpack --progress=3 "$tmp/n.qcow2" "$tmp/n.raw" 3>"$tmp/pn2"
  nbdcopy_progress "$tmp/pn2"
  cmp "$src" "$tmp/n.raw"
fi

# bmap: the map alone on stdout, as bmaptool reads it.
sparsecow bmap --progress=json "$src" >"$tmp/s.bmap" 2>"$tmp/p5"
check_progress "$tmp/p5"
if command -v bmaptool >/dev/null; then
  bmaptool copy --bmap "$tmp/s.bmap" "$src" "$tmp/copy.raw" 2>/dev/null ||
    fail "bmaptool does not take the bmap written with --progress=json"
  cmp "$src" "$tmp/copy.raw"
fi

# Combinations that cannot work are refused before anything is written.
refused () {
  local pattern=$1; shift
  rm -f "$tmp/out"
  expect_fail "$pattern" "$@"
  [ ! -s "$tmp/out" ] || fail "wrote something: $*"
}
refused "fd:1.*standard output" sparsecow pack --progress=fd:1 "$src" - \
  >"$tmp/out"
refused "fd:1.*standard output" sparsecow unpack --progress=json:fd:1 \
  "$tmp/a.qcow2" - >"$tmp/out"
refused "fd:9.*not open" sparsecow pack --progress=fd:9 "$src" "$tmp/out"
# Standard error closed at the start: progress on it would be lost,
# whether it is named (fd:2) or meant (json).  Refused alike: nothing
# written, exit 1 (the message itself goes nowhere).
for p in json fd:2 json:fd:2; do
  rm -f "$tmp/out"
  rc=0
  sparsecow pack --progress=$p "$src" "$tmp/out" 2>&- || rc=$?
  [ "$rc" = 1 ] && [ ! -e "$tmp/out" ] ||
    fail "pack --progress=$p 2>&-: exit $rc"
done
refused "fd:3.*reading" sparsecow pack --progress=fd:3 "$src" "$tmp/out" \
  3<"$src"
refused "progress" sparsecow pack --progress=fd:x "$src" "$tmp/out"
refused "progress" sparsecow pack --progress=json:fd: "$src" "$tmp/out"
refused "fd:1.*standard output" sparsecow bmap --progress=fd:1 "$src" \
  >"$tmp/out"
# Standard error that is standard output's file ("2>&1") takes no JSON
# progress while data goes there: the error is all that file gets.
for cmd in "pack $src" "unpack $tmp/a.qcow2"; do
  rc=0
  sparsecow $cmd --progress=json - >"$tmp/out" 2>&1 || rc=$?
  [ $rc -ne 0 ] && grep -q "standard error would go into the data" "$tmp/out" &&
    ! grep -q '"done"' "$tmp/out" ||
    fail "$cmd --progress=json - >out 2>&1: exit $rc, $(head -c 200 "$tmp/out")"
done
# Nor onto a file that is read or written: the source, the image, a
# target written in place.
cp "$src" "$tmp/s2.raw"
sum=$(md5sum <"$tmp/s2.raw")
expect_fail "would be written into .*s2.raw" sparsecow pack --progress=fd:3 \
  "$tmp/s2.raw" "$tmp/p2.qcow2" 3>>"$tmp/s2.raw"
cp "$tmp/a.qcow2" "$tmp/a2.qcow2"
expect_fail "would be written into .*a2.qcow2" sparsecow unpack \
  --progress=fd:3 "$tmp/a2.qcow2" "$tmp/u2.raw" 3>>"$tmp/a2.qcow2"
cmp "$tmp/a.qcow2" "$tmp/a2.qcow2" || fail "progress was written into the image"
[ "$(md5sum <"$tmp/s2.raw")" = "$sum" ] || fail "progress was written into the source"
# Nor onto another file of an image: a backing file (raw or qcow2) or an
# external data file, at any depth of the chain, for every command that
# reads an image.  qemu-img tells whether the guest content changed.
mkdir "$tmp/ch"
head -c $MiB /dev/urandom >"$tmp/ch/rb.raw"
qemu-img create -q -f qcow2 -o data_file="$tmp/ch/mid.data" \
  "$tmp/ch/mid.qcow2" 2M
qemu-io -f qcow2 -c "write -P 0x5a 1M 64k" "$tmp/ch/mid.qcow2" >/dev/null
qemu-img rebase -q -u -b rb.raw -F raw "$tmp/ch/mid.qcow2"
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$tmp/ch/top.qcow2"
qemu-img convert -O raw "$tmp/ch/top.qcow2" "$tmp/ch/guest.raw"
for f in rb.raw mid.qcow2 mid.data; do
  expect_fail "would be written into .*$f" sparsecow unpack --progress=fd:3 \
    "$tmp/ch/top.qcow2" "$tmp/ch/u.raw" 3>>"$tmp/ch/$f"
  expect_fail "would be written into .*$f" sparsecow verify --progress=fd:3 \
    "$tmp/ch/top.qcow2" "$tmp/ch/guest.raw" 3>>"$tmp/ch/$f"
  expect_fail "would be written into .*$f" sparsecow pack --progress=fd:3 \
    "$tmp/ch/top.qcow2" "$tmp/ch/p.qcow2" 3>>"$tmp/ch/$f"
  expect_fail "would be written into .*$f" sparsecow bmap --progress=fd:3 \
    -o "$tmp/ch/b.bmap" "$tmp/ch/top.qcow2" 3>>"$tmp/ch/$f"
  expect_fail "would be written into .*$f" sparsecow verify --progress=fd:3 \
    "$tmp/ch/guest.raw" "$tmp/ch/top.qcow2" 3>>"$tmp/ch/$f"
done
qemu-img compare -q "$tmp/ch/guest.raw" "$tmp/ch/top.qcow2" ||
  fail "progress was written into a file of the backing chain"

# No text goes into a stream that carries data, whatever name leads to
# the stream: /dev/stdout, /proc/self/fd/1 or /dev/stderr as a target
# is the pipe that progress or the messages go to ("2>&1" too).
# Refused, exit 1, before anything is written: the pipe carries the
# refusal at most, never progress, a note, an image or a bmap.
head -c $MiB /dev/urandom >"$tmp/sm.raw"
truncate -s $((4 * MiB)) "$tmp/sm.raw"
qemu-img convert -f raw -O qcow2 "$tmp/sm.raw" "$tmp/sm.qcow2"
# piped PATTERN REDIR CMD...: CMD (its standard error to standard
# output when REDIR is 2to1, or its standard output to /dev/null and
# standard error to the pipe when 2only) into a pipe read by cat.
piped () {
  local pattern=$1 redir=$2; shift 2
  rm -f "$tmp/piped"
  : >"$tmp/perr"
  case $redir in
    2to1) { rc=0; "$@" 2>&1 || rc=$?; echo $rc >"$tmp/prc"; } ;;
    2only) { rc=0; "$@" 2>&1 >/dev/null || rc=$?; echo $rc >"$tmp/prc"; } ;;
    *) { rc=0; "$@" 2>"$tmp/perr" || rc=$?; echo $rc >"$tmp/prc"; } ;;
  esac | cat >"$tmp/piped"
  [ "$(cat "$tmp/prc")" = 1 ] || fail "$* ($redir) | cat: exit $(cat "$tmp/prc")"
  cat "$tmp/piped" "$tmp/perr" | grep -Eq -- "$pattern" ||
    fail "$* ($redir) | cat: does not say '$pattern': $(head -c 300 "$tmp/piped")"
  ! LC_ALL=C grep -aq -e '"done"' -e $'QFI\xfb' -e '<?xml' "$tmp/piped" ||
    fail "$* ($redir) | cat: the pipe took $(head -c 300 "$tmp/piped")"
  if [ "$redir" = none ]; then
    [ ! -s "$tmp/piped" ] || fail "$* | cat: $(wc -c <"$tmp/piped") bytes"
  fi
}
for name in /dev/stdout /proc/self/fd/1; do
  piped "progress \(on descriptor 1\) would be written into $name" none \
    sparsecow unpack --progress=json:fd:1 "$tmp/sm.qcow2" $name
  piped "progress \(on descriptor 1\) would be written into $name" none \
    sparsecow pack --progress=json:fd:1 --bmap-out $name "$tmp/sm.raw" \
    "$tmp/pq.qcow2"
  [ ! -e "$tmp/pq.qcow2" ] || fail "pack --bmap-out $name: wrote the image"
done
piped "progress \(on descriptor 2\) would be written into /dev/stderr" 2only \
  sparsecow unpack --progress=json "$tmp/sm.qcow2" /dev/stderr
piped "progress \(on descriptor 2\) would be written into /dev/stderr" 2to1 \
  sparsecow bmap --progress=json "$tmp/sm.raw" -o /dev/stderr
# The messages alone: the note that a source is an image, any error.
piped "messages \(on standard error\) would be written into /dev/stderr" \
  2only sparsecow pack "$tmp/sm.qcow2" /dev/stderr
piped "messages \(on standard error\) would be written into /dev/stderr" \
  2only sparsecow unpack "$tmp/sm.qcow2" /dev/stderr
piped "messages \(on standard error\) would go into the data" 2to1 \
  sparsecow pack "$tmp/sm.qcow2" -
piped "messages \(on standard error\) would go into the data" 2to1 \
  sparsecow pack --bmap-out - "$tmp/sm.raw" "$tmp/pq.qcow2"
piped "messages \(on standard error\) would go into the data" 2to1 \
  sparsecow bmap "$tmp/sm.raw"
# A terminal or /dev/null shared by both takes no harm; nor does a
# pipe that only the data goes to.
sparsecow pack "$tmp/sm.qcow2" - >/dev/null 2>&1 ||
  fail "pack - >/dev/null 2>&1 refused"
sparsecow pack -q "$tmp/sm.qcow2" /dev/stdout 2>"$tmp/perr" | cat >"$tmp/ok.qcow2"
qemu-img compare -q "$tmp/sm.raw" "$tmp/ok.qcow2" ||
  fail "pack IMAGE /dev/stdout | cat: the image differs"
# Standard error open on a file the command reads: the refusal says
# nothing there (it would change the file as much), exit 1 alone.
cp "$tmp/sm.qcow2" "$tmp/sm2.qcow2"
rc=0
sparsecow pack "$tmp/sm2.qcow2" "$tmp/pq.qcow2" 2>>"$tmp/sm2.qcow2" || rc=$?
[ "$rc" = 1 ] || fail "pack IMAGE 2>>IMAGE: exit $rc"
cmp "$tmp/sm.qcow2" "$tmp/sm2.qcow2" || fail "pack IMAGE 2>>IMAGE changed it"
[ ! -e "$tmp/pq.qcow2" ] || fail "pack IMAGE 2>>IMAGE: wrote the image"
cp "$tmp/ch/rb.raw" "$tmp/ch/rb.keep"
rc=0
sparsecow unpack "$tmp/ch/top.qcow2" "$tmp/ch/u.raw" 2>>"$tmp/ch/rb.raw" ||
  rc=$?
[ "$rc" = 1 ] || fail "unpack IMAGE 2>>BACKING: exit $rc"
cmp "$tmp/ch/rb.raw" "$tmp/ch/rb.keep" || fail "unpack 2>>BACKING changed it"
