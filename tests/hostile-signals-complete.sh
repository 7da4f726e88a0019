#!/usr/bin/env bash
# A signal that lands once the target is complete (an image written in
# place with its magic written and flushed, a new file linked under its
# name) no longer stops the run: it ends with exit 0, and the target
# passes qemu-img check (or equals the data).  Before that point a
# signal stops it as always: exit 130, "left partly written" for a
# target written in place, which qemu-img check refuses.
# The signal is delivered deterministically by strace at the Nth flush
# (fsync, fdatasync) of the run, for every N, and at the link or rename
# that puts a new file in place (one signal: a second one still ends
# the program at once): exit 0 exactly when the target is
# complete, and 130 with the message exactly when it is not.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img strace cmp

cd "$tmp"
MiB=$((1024 * 1024))
truncate -s 16M src.raw
head -c $((2 * MiB)) /dev/urandom | dd of=src.raw bs=1M seek=3 conv=notrunc status=none
head -c $((1 * MiB)) /dev/urandom | dd of=src.raw bs=1M seek=9 conv=notrunc status=none
qemu-img convert -q -f raw -O qcow2 src.raw img.qcow2
head -c $((20 * MiB)) /dev/urandom > old.bin

# LeakSanitizer cannot run under ptrace (a sanitizer build).
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
flushes='fsync,fdatasync'
# A new name is linked (an anonymous file), or a temporary one renamed
# over an old file after it is linked: the signal goes at the last.
links='link,linkat'
renames='rename,renameat,renameat2'
strace -f -qq -o /dev/null -e trace=$flushes -e inject=$flushes:signal=SIGINT:when=1000 true 2>/dev/null ||
  { echo "$0: SKIP: strace cannot trace or inject signals here"; exit 77; }

# at SYSCALLS N TARGET CMD...: run CMD with SIGINT delivered at the Nth
# call of one of SYSCALLS; sets rc, stderr in err.
at () {
  local calls=$1 n=$2; shift 2
  rc=0
  strace -f -qq -o /dev/null -e trace=$calls -e inject=$calls:signal=SIGINT:when=$n \
    "$SPARSECOW" "$@" 2>err || rc=$?
}
# count SYSCALLS CMD...: how many times CMD calls one of SYSCALLS.
count () {
  local calls=$1; shift
  strace -f -qq -o trace.out -e trace=$calls "$SPARSECOW" "$@" 2>/dev/null ||
    fail "$* failed under strace"
  grep -cE "^[0-9]+ +($(echo "$calls" | tr , '|'))\(" trace.out
}
# judge KIND TARGET WHAT: KIND image (qemu-img check) or data (equal
# to src.raw); the outcome in rc and err must agree with the target.
judge () {
  local kind=$1 target=$2 what=$3 ok=0
  if grep -q "AddressSanitizer\|runtime error" err; then
    cat err >&2; fail "$what: sanitizer report"
  fi
  if [ $kind = image ]; then
    qemu-img check -q -f qcow2 "$target" >/dev/null 2>&1 || ok=1
  else
    cmp -s -n "$(stat -c %s src.raw)" src.raw "$target" || ok=1
  fi
  case $rc in
    0) [ $ok = 0 ] || { cat err >&2; fail "$what: exit 0 but $target is not complete"; } ;;
    130)
      [ $ok = 1 ] || { cat err >&2; fail "$what: exit 130 but $target is complete"; }
      if [ "${4:-}" = in-place ]; then
        grep -q "^sparsecow: $target: written in place, left partly written" err ||
          { cat err >&2; fail "$what: exit 130 without saying partly written"; }
      fi ;;
    *) cat err >&2; fail "$what: exit $rc" ;;
  esac
}

# Written in place: every flush of the run.
for opts in "" "-c"; do
  cp old.bin t.img
  n=$(count $flushes pack -n $opts src.raw t.img)
  [ "$n" -ge 2 ] || fail "pack -n $opts: $n flushes"
  for ((i = 1; i <= n; i++)); do
    cp old.bin t.img
    at $flushes $i pack -n $opts src.raw t.img
    judge image t.img "pack -n $opts, SIGINT at flush $i of $n" in-place
    # The last flush is the one after the magic: the image is whole.
    [ $i -lt $n ] || [ $rc = 0 ] || fail "pack -n $opts: SIGINT at the last flush stopped the run"
    [ $i -lt $n ] || grep -q "^sparsecow: t.img: complete; SIGINT came after it was written" err ||
      { cat err >&2; fail "pack -n $opts: no word of the late signal"; }
  done
  # The first one (the old magic cleared) comes before anything else.
  cp old.bin t.img
  at $flushes 1 pack -n $opts src.raw t.img
  [ $rc = 130 ] || fail "pack -n $opts: SIGINT at the first flush: exit $rc"
done
cp old.bin t.raw
n=$(count $flushes unpack -n img.qcow2 t.raw)
for ((i = 1; i <= n; i++)); do
  cp old.bin t.raw
  at $flushes $i unpack -n img.qcow2 t.raw
  judge data t.raw "unpack -n, SIGINT at flush $i of $n" in-place
  [ $i -lt $n ] || [ $rc = 0 ] || fail "unpack -n: SIGINT at the last flush stopped the run"
done

# At the first data write, long before the end: stopped, and said so.
# (strace counts calls per thread: with one worker, one signal.)
cp old.bin t.raw
at pwrite64 1 unpack -j 1 -n img.qcow2 t.raw
[ $rc = 130 ] || { cat err >&2; fail "unpack -n, SIGINT at the first write: exit $rc"; }
judge data t.raw "unpack -n, SIGINT at the first write" in-place

# A new file: complete once linked or renamed into place.
rm -f new.qcow2 new.raw
at $links 1 pack src.raw new.qcow2
[ $rc = 0 ] || { cat err >&2; fail "pack: SIGINT at the link: exit $rc"; }
judge image new.qcow2 "pack, SIGINT at the link"
at $renames 1 pack -f src.raw new.qcow2
[ $rc = 0 ] || { cat err >&2; fail "pack -f: SIGINT at the rename: exit $rc"; }
judge image new.qcow2 "pack -f, SIGINT at the rename"
at $links 1 unpack img.qcow2 new.raw
[ $rc = 0 ] || { cat err >&2; fail "unpack: SIGINT at the link: exit $rc"; }
judge data new.raw "unpack, SIGINT at the link"
at $renames 1 unpack -f img.qcow2 new.raw
[ $rc = 0 ] || { cat err >&2; fail "unpack -f: SIGINT at the rename: exit $rc"; }
judge data new.raw "unpack -f, SIGINT at the rename"

# --verify: a target is complete only once read back.  A signal during
# the read-back (or between the flush and it) stops the run, exit 130,
# and says of each target what it leaves: written whole but not
# verified, in place; a new file written but removed.
# mid_readback CMD...: a pread64 call (one thread with -j 1) half way
# through the read-back, which begins after the last flush of the
# targets' data.
mid_readback () {
  strace -f -qq -o trace.out -e trace=pread64,$flushes "$SPARSECOW" "$@" 2>/dev/null ||
    fail "$* failed under strace"
  awk -v f="^[0-9]+ +(fsync|fdatasync)\\(" '
    $0 ~ f { if (!p) p = 1; next }
    / pread64\(/ { n++; if (p == 1) { first = n; p = 2 } }
    END { print int((first + n) / 2) }' trace.out
}
# not_verified TARGET KIND: what is said of TARGET and what it holds.
not_verified () {
  local t=$1 kind=$2
  if [ $kind = in-place ]; then
    grep -q "^sparsecow: $t: written in place, not verified: SIGINT came before the read-back ended\$" err ||
      { cat err >&2; fail "$what: $t not said to be written but not verified"; }
    cmp -s -n "$(stat -c %s src.raw)" src.raw "$t" || fail "$what: $t is not written whole"
  else
    grep -q "^sparsecow: $t: written, not verified: SIGINT came before the read-back ended; removed\$" err ||
      { cat err >&2; fail "$what: $t not said to be removed"; }
    [ ! -e "$t" ] || fail "$what: $t was put in place"
  fi
  ! grep -q "partly written" err || { cat err >&2; fail "$what: said to be partly written"; }
}
cp old.bin t.raw
n=$(mid_readback unpack -j 1 -n --verify img.qcow2 t.raw)
[ "$n" -gt 1 ] || fail "unpack -n --verify: no read-back found ($n)"
cp old.bin t.raw
what="unpack -n --verify, SIGINT at read $n, in the read-back"
at pread64 $n unpack -j 1 -n --verify img.qcow2 t.raw
[ $rc = 130 ] || { cat err >&2; fail "$what: exit $rc"; }
not_verified t.raw in-place
# At the flush of the data, before the read-back: the same.
cp old.bin t.raw
what="unpack -n --verify, SIGINT at the first flush, before the read-back"
at $flushes 1 unpack -n --verify img.qcow2 t.raw
[ $rc = 130 ] || { cat err >&2; fail "$what: exit $rc"; }
not_verified t.raw in-place
# Two new files: neither is put in place, and each is named.
rm -f a.raw b.raw
n=$(mid_readback unpack -j 1 --verify img.qcow2 a.raw b.raw)
rm -f a.raw b.raw
what="unpack --verify A B, SIGINT at read $n, in the read-back"
at pread64 $n unpack -j 1 --verify img.qcow2 a.raw b.raw
[ $rc = 130 ] || { cat err >&2; fail "$what: exit $rc"; }
not_verified a.raw new
not_verified b.raw new
# A bmap file, of bmap -o and of pack --bmap-out: complete (bmaptool
# copy --bmap takes it and copies src.raw by it) exactly when the run
# ends with exit 0; on 130 nothing that looks like one is left (a new
# name is absent, a replaced file keeps its old bytes).
# judge_bmap BMAP WHAT [OLD]: the outcome in rc and err against BMAP.
judge_bmap () {
  local bmap=$1 what=$2 old=${3:-} ok=0
  if grep -q "AddressSanitizer\|runtime error" err; then
    cat err >&2; fail "$what: sanitizer report"
  fi
  rm -f copy.raw
  if [ -n "$old" ] && cmp -s "$old" "$bmap"; then
    ok=1
  elif [ ! -e "$bmap" ]; then
    ok=1
  else
    bmaptool copy --bmap "$bmap" src.raw copy.raw >/dev/null 2>&1 &&
      cmp -s src.raw copy.raw ||
      { cat err >&2; fail "$what: $bmap is left, and bmaptool copy refuses it"; }
  fi
  case $rc in
    0)
      [ $ok = 0 ] || { cat err >&2; fail "$what: exit 0 but no complete $bmap"; } ;;
    130) [ $ok = 1 ] || { cat err >&2; fail "$what: exit 130 but $bmap is complete"; } ;;
    *) cat err >&2; fail "$what: exit $rc" ;;
  esac
}
if command -v bmaptool >/dev/null; then
  for source in img.qcow2 src.raw; do
    rm -f new.bmap
    n=$(count $flushes bmap "$source" -o new.bmap)
    for ((i = 1; i <= n; i++)); do
      rm -f new.bmap
      at $flushes $i bmap "$source" -o new.bmap
      judge_bmap new.bmap "bmap $source -o, SIGINT at flush $i of $n"
    done
    rm -f new.bmap
    at $links 1 bmap "$source" -o new.bmap
    [ $rc = 0 ] || { cat err >&2; fail "bmap $source -o: SIGINT at the link: exit $rc"; }
    grep -q "^sparsecow: new.bmap: complete; SIGINT came after it was written" err ||
      { cat err >&2; fail "bmap $source -o: no word of the late signal"; }
    judge_bmap new.bmap "bmap $source -o, SIGINT at the link"
    head -c 8192 old.bin > old.bmap
    cp old.bmap new.bmap
    n=$(count $flushes bmap -f "$source" -o new.bmap)
    for ((i = 1; i <= n; i++)); do
      cp old.bmap new.bmap
      at $flushes $i bmap -f "$source" -o new.bmap
      judge_bmap new.bmap "bmap -f $source -o, SIGINT at flush $i of $n" old.bmap
    done
    cp old.bmap new.bmap
    at $renames 1 bmap -f "$source" -o new.bmap
    [ $rc = 0 ] || { cat err >&2; fail "bmap -f $source -o: SIGINT at the rename: exit $rc"; }
    judge_bmap new.bmap "bmap -f $source -o, SIGINT at the rename" old.bmap
  done

  # pack --bmap-out: the image and its bmap, both or neither.
  rm -f new.qcow2 new.bmap
  n=$(count $flushes pack --bmap-out new.bmap src.raw new.qcow2)
  for ((i = 1; i <= n; i++)); do
    rm -f new.qcow2 new.bmap
    at $flushes $i pack --bmap-out new.bmap src.raw new.qcow2
    judge_bmap new.bmap "pack --bmap-out, SIGINT at flush $i of $n"
    [ $rc = 0 ] || [ ! -e new.qcow2 ] || fail "pack --bmap-out, SIGINT at flush $i: exit $rc, image left"
    [ $rc != 0 ] || judge image new.qcow2 "pack --bmap-out, SIGINT at flush $i of $n"
  done
  for k in 1 2; do
    rm -f new.qcow2 new.bmap
    at $links $k pack --bmap-out new.bmap src.raw new.qcow2
    [ $rc = 0 ] || { cat err >&2; fail "pack --bmap-out: SIGINT at link $k: exit $rc"; }
    judge_bmap new.bmap "pack --bmap-out, SIGINT at link $k"
    judge image new.qcow2 "pack --bmap-out, SIGINT at link $k"
    cp old.bmap new.bmap
    at $renames $k pack -f --bmap-out new.bmap src.raw new.qcow2
    [ $rc = 0 ] || { cat err >&2; fail "pack -f --bmap-out: SIGINT at rename $k: exit $rc"; }
    judge_bmap new.bmap "pack -f --bmap-out, SIGINT at rename $k" old.bmap
    judge image new.qcow2 "pack -f --bmap-out, SIGINT at rename $k"
  done
  # Written in place: the image and a new bmap.
  cp old.bin t.img
  rm -f new.bmap
  n=$(count $flushes pack -n --bmap-out new.bmap src.raw t.img)
  for ((i = 1; i <= n; i++)); do
    cp old.bin t.img
    rm -f new.bmap
    at $flushes $i pack -n --bmap-out new.bmap src.raw t.img
    judge_bmap new.bmap "pack -n --bmap-out, SIGINT at flush $i of $n"
    judge image t.img "pack -n --bmap-out, SIGINT at flush $i of $n" in-place
  done
fi

# A block device (root and a loop device, else this part is skipped).
[ "$(id -u)" = 0 ] && command -v losetup >/dev/null || exit 0
head -c $((20 * MiB)) /dev/zero > dev.img
loop_attach dev.img
n=$(count $flushes pack -f src.raw "$dev")
for ((i = 1; i <= n; i++)); do
  at $flushes $i pack -f src.raw "$dev"
  judge image "$dev" "pack -f DEVICE, SIGINT at flush $i of $n" in-place
  [ $i -lt $n ] || [ $rc = 0 ] || fail "pack -f DEVICE: SIGINT at the last flush stopped the run"
done
dd if=old.bin of="$dev" bs=1M count=16 status=none conv=fsync
at pwrite64 1 unpack -j 1 -f img.qcow2 "$dev"
[ $rc = 130 ] || { cat err >&2; fail "unpack -f DEVICE, SIGINT at the first write: exit $rc"; }
grep -q "^sparsecow: $dev: written in place, left partly written" err ||
  { cat err >&2; fail "unpack -f DEVICE, SIGINT at the first write: not said"; }
n=$(count $flushes unpack -f img.qcow2 "$dev")
for ((i = 1; i <= n; i++)); do
  dd if=old.bin of="$dev" bs=1M count=16 status=none conv=fsync
  at $flushes $i unpack -f img.qcow2 "$dev"
  rc_dev=$rc
  head -c $((16 * MiB)) "$dev" > dev.head
  rc=$rc_dev
  judge data dev.head "unpack -f DEVICE, SIGINT at flush $i of $n"
  [ $i -lt $n ] || [ $rc = 0 ] || fail "unpack -f DEVICE: SIGINT at the last flush stopped the run"
done
# --verify to the device and a new file, SIGINT in the read-back: the
# device is written whole but not verified, the file removed.
rm -f a.raw
n=$(mid_readback unpack -j 1 -f --verify img.qcow2 "$dev" a.raw)
rm -f a.raw
dd if=old.bin of="$dev" bs=1M count=16 status=none conv=fsync
what="unpack -f --verify DEVICE FILE, SIGINT at read $n, in the read-back"
at pread64 $n unpack -j 1 -f --verify img.qcow2 "$dev" a.raw
[ $rc = 130 ] || { cat err >&2; fail "$what: exit $rc"; }
not_verified "$dev" in-place
not_verified a.raw new
exit 0
