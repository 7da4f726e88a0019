#!/usr/bin/env bash
# Low memory: pack and unpack of every kind of image within 256 MiB of
# address space (ulimit -v 256 MiB), and of a 256 TiB image holding a
# few MiB.  The results are judged by qemu-img.  -j 8 also holds there
# (eight threads each with a malloc arena of its own would reserve more
# than the limit).  A program built with
# AddressSanitizer reserves terabytes of address space for its shadow,
# so there the limit is on the peak resident memory instead (measured
# by GNU time, with ASan's quarantine of freed memory kept small so that
# what is measured is the program's own).
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires qemu-img qemu-io python3 cmp
[ -x /usr/bin/time ] || { echo "$0: SKIP: /usr/bin/time not found"; exit 77; }

cd "$tmp"
limit_kib=$((256 * 1024))
asan=false
case $(ldd "$SPARSECOW" 2>/dev/null || :) in *libasan*) asan=true ;; esac
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=16
$asan && echo "$0: AddressSanitizer build: peak RSS limited, not ulimit -v"

# low WHAT CMD...: CMD succeeds within the memory limit (a shell
# command line, run by bash with pipefail).
low () {
  local what=$1 rc=0 rss; shift
  if $asan; then
    /usr/bin/time -f %M -o rss bash -c "set -o pipefail; $*" 2>err || rc=$?
  else
    ( ulimit -v $limit_kib
      /usr/bin/time -f %M -o rss bash -c "set -o pipefail; $*" ) 2>err || rc=$?
  fi
  [ $rc = 0 ] || { cat err >&2; fail "$what: failed with at most 256 MiB"; }
  if grep -q "AddressSanitizer\|runtime error" err; then
    cat err >&2; fail "$what: sanitizer report"
  fi
  rss=$(tail -1 rss)
  [ "$rss" -lt $limit_kib ] || fail "$what: peak RSS $rss KiB"
  echo "$what: peak RSS $rss KiB"
}
sc="$SC_VALGRIND '$SPARSECOW'"

# 64 MiB of data that compresses somewhat, with holes, in 96 MiB.
python3 -c 'import random, sys
r = random.Random(8)
o = sys.stdout.buffer
for i in range(96):
    if i % 3 == 1:
        o.write(bytes(1 << 20))
    else:
        o.write(bytes(r.choice(b"abcdefghijklmnop") for _ in range(1 << 20)))' > src.raw

# ---- pack: every option that changes how the image is made -------------
for opts in "" "-c" "-c zstd" "--cluster-size 512" "--cluster-size 2M -c" \
            "--compat=0.10" "--refcount-bits 64" "-S 0" "-j 4 -c" \
            "-j 8 -c" "-j 8 -c zstd"; do
  rm -f out.qcow2
  low "pack $opts" "$sc pack -q $opts src.raw out.qcow2"
  qemu-img compare -q -f raw -F qcow2 src.raw out.qcow2 || fail "pack $opts differs"
  low "pack $opts to a pipe" "$sc pack -q $opts src.raw - | cat > out.qcow2"
  qemu-img compare -q -f raw -F qcow2 src.raw out.qcow2 || fail "pack $opts to a pipe differs"
  low "pack $opts from a pipe" "cat src.raw | $sc pack -q $opts - - | cat > out.qcow2"
  qemu-img compare -q -f raw -F qcow2 src.raw out.qcow2 || fail "pack $opts from a pipe differs"
done

# ---- unpack: images of every kind qemu-img writes -----------------------
qemu-img convert -q -f raw -O qcow2 src.raw plain.qcow2
qemu-img convert -q -c -f raw -O qcow2 src.raw comp.qcow2
qemu-img convert -q -c -f raw -O qcow2 -o compression_type=zstd src.raw zstd.qcow2
qemu-img convert -q -f raw -O qcow2 -o extended_l2=on,cluster_size=128k src.raw ext.qcow2
qemu-img convert -q -f raw -O qcow2 -o compat=0.10 src.raw v2.qcow2
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=2M src.raw big.qcow2
qemu-img convert -q -f raw -O qcow2 -o cluster_size=512 src.raw small.qcow2
cp plain.qcow2 snap.qcow2
qemu-img snapshot -c one snap.qcow2
qemu-io -f qcow2 -c "write -P 0x5a 1M 4M" snap.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b plain.qcow2 -F qcow2 over.qcow2
qemu-io -f qcow2 -c "write -P 0x6b 10M 4M" over.qcow2 >/dev/null
for img in plain comp zstd ext v2 big small snap over; do
  qemu-img convert -q -f qcow2 -O raw $img.qcow2 ref.raw
  rm -f out.raw
  low "unpack $img" "$sc unpack -q $img.qcow2 out.raw"
  cmp ref.raw out.raw || fail "unpack $img differs"
  low "unpack $img to a pipe" "$sc unpack -q $img.qcow2 - | cat > out.raw"
  cmp ref.raw out.raw || fail "unpack $img to a pipe differs"
  case $img in
    over) ;;                    # a pipe cannot name its backing file
    *) low "unpack $img from a pipe" "cat $img.qcow2 | $sc unpack -q - - | cat > out.raw"
       cmp ref.raw out.raw || fail "unpack $img from a pipe differs" ;;
  esac
done

# ---- 256 TiB holding a few MiB ------------------------------------------
# Only a file system that holds a 256 TiB sparse file (tmpfs, xfs) can
# take part; ext4 stops at 16 TiB.
mkdir huge
if ! truncate -s 256T huge/probe 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=512M tmpfs huge 2>/dev/null; then
    cleanup_fn "umount '$tmp/huge'"
  fi
fi
rm -f huge/probe
if truncate -s 256T huge/src.raw 2>/dev/null; then
  for at in 0 $((100 << 40)) $(((256 << 40) - (3 << 20))); do
    head -c 1M /dev/urandom | dd of=huge/src.raw bs=1M seek=$((at >> 20)) \
      conv=notrunc status=none
  done
  for opts in "" "-c"; do
    rm -f huge/out.qcow2 huge/out.raw
    low "pack $opts of 256 TiB" "$sc pack -q $opts huge/src.raw huge/out.qcow2"
    qemu-img compare -q -f raw -F qcow2 huge/src.raw huge/out.qcow2 ||
      fail "pack $opts of 256 TiB differs"
    low "unpack $opts of 256 TiB" "$sc unpack -q huge/out.qcow2 huge/out.raw"
    for at in 0 $((100 << 40)) $(((256 << 40) - (3 << 20))); do
      cmp -n 1048576 -i $at:$at huge/src.raw huge/out.raw ||
        fail "unpack $opts of 256 TiB differs at $at"
    done
    [ "$(stat -c %s huge/out.raw)" = $((256 << 40)) ] ||
      fail "unpack $opts of 256 TiB: wrong size"
    [ "$(stat -c %b huge/out.raw)" -lt $((64 << 11)) ] ||
      fail "unpack $opts of 256 TiB allocated $(stat -c %b huge/out.raw) blocks"
  done
else
  echo "$0: note: no file system here holds 256 TiB; that part was not run"
fi
exit 0
