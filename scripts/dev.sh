#!/bin/bash
# Set up a Debian 12 machine for sparsecow, build it, and then either
# run the main job on a sample it makes ("demo"), run the whole test
# suite ("check", built with AddressSanitizer and UBSan), or run the
# libFuzzer targets ("fuzz", built with clang) for FUZZ_SECONDS each,
# 60 by default (or for FUZZ_TOTAL_SECONDS together, shared equally,
# when that is set).  Run as root from the top of the source tree.
set -euo pipefail

mode=${1:-demo}
case "$mode" in
  demo|check|fuzz) ;;
  *) echo "usage: $0 demo|check|fuzz" >&2; exit 2 ;;
esac
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

packages=(autoconf automake libtool pkg-config make gcc
          zlib1g-dev libisal-dev libdeflate-dev libzstd-dev libnbd-dev libcunit1-dev libssl-dev
          qemu-utils nbdkit libnbd-bin e2fsprogs xfsprogs btrfs-progs python3 valgrind jq
          clang libclang-rt-14-dev bmap-tools dmsetup bash-completion
          time procps util-linux mount strace)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

builddir="$top/build-$mode"
echo "== building in $builddir"
[ -x configure ] || autoreconf -fi
mkdir -p "$builddir"
cd "$builddir"
if [ ! -f Makefile ]; then
  if [ "$mode" = check ]; then
    "$top/configure" --enable-werror --enable-sanitizers
  elif [ "$mode" = fuzz ]; then
    # No --enable-werror: clang does not know every warning option.
    "$top/configure" CC=clang --enable-fuzzing
  else
    "$top/configure" --enable-werror
  fi
fi
make -j"$(nproc)"

if [ "$mode" = fuzz ]; then
  # Every target gets at least a minute in CI; a shared total is for
  # shorter runs by hand.
  if [ -n "${FUZZ_TOTAL_SECONDS:-}" ]; then
    echo "== running the fuzz targets for $FUZZ_TOTAL_SECONDS s in all"
    make fuzz FUZZ_TOTAL_SECONDS="$FUZZ_TOTAL_SECONDS"
  else
    echo "== running each fuzz target for ${FUZZ_SECONDS:-60} s"
    make fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
  fi
  exit 0
fi

if [ "$mode" = check ]; then
  echo "== running the test suite"
  rc=0
  make -j"$(nproc)" check || rc=$?
  count () { awk -v k="# $1:" '$1 " " $2 == k { print $3; exit }' test-suite.log; }
  if [ -f test-suite.log ]; then
    fail=$(( $(count FAIL) + $(count ERROR) + $(count XPASS) ))
    echo "tests: $(count PASS) passed, $fail failed, $(count SKIP) skipped"
  fi
  if [ "$rc" -ne 0 ]; then
    grep -E "^(FAIL|ERROR):" test-suite.log 2>/dev/null | head -40
    # What each failing test said last, so that a run elsewhere shows why.
    for t in $(grep -E "^(FAIL|ERROR): " test-suite.log 2>/dev/null |
               awk '{ print $2 }' | head -10); do
      echo "== the end of ${t%.sh}.log"
      tail -n 40 "${t%.sh}.log" 2>/dev/null || :
    done
    exit 1
  fi
  # A test may skip only for a reason outside the project: what the
  # machine does not allow.  A missing tool is not one (the packages
  # above bring every tool a test requires), so any other skip fails
  # the run.  Each pattern matches the reason a test prints after
  # "SKIP: ".
  allowed_skips=(
    "needs root"                                  # loop devices, mounts
    "no loop device"                              # a container without /dev/loop*
    "cannot (loop-)?mount"                        # no right to mount
    "cannot mount a tmpfs"
    "neither xfs nor btrfs can be mounted here"   # reflinks need one
    "partx cannot add partitions"                 # no partition devices
    "/dev is not a file system of its own"        # /dev from the host
    "neither device-mapper nor FUSE with nbdfuse" # no dm, no /dev/fuse
    "qemu takes no image locks on this file system"
    "file system cannot hold an 8 TiB sparse file"
  )
  bad=0
  for trs in $(grep -l "^:test-result: SKIP" $(find . -name "*.trs")); do
    log=${trs%.trs}.log
    reason=$(grep -m 1 -o "SKIP: .*" "$log" | sed "s/^SKIP: //")
    ok=false
    for a in "${allowed_skips[@]}"; do
      if [ -n "$reason" ] && grep -Eq -- "$a" <<<"$reason"; then ok=true; fi
    done
    if ! $ok; then
      echo "== not an allowed skip: ${log#./}: ${reason:-no reason given}"
      bad=1
    fi
  done
  exit $bad
fi

# demo: a 4 GiB sparse disk with an ext4 file system holding a few
# megabytes, packed to qcow2 (plain and deflate), unpacked, compared.
sc="$builddir/src/sparsecow"
work=$(mktemp -d "${TMPDIR:-/var/tmp}/sparsecow-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
truncate -s 4G "$work/disk.raw"
mke2fs -q -t ext4 -d /usr/share/doc "$work/disk.raw"
size_of () { printf "%12s bytes apparent, %12s bytes allocated" \
               "$(stat -c %s "$1")" "$(( $(stat -c %b "$1") * 512 ))"; }
timed () { local t0=$EPOCHREALTIME; "$@";
           awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f s", b - a }'; }
echo "== sample:   $work/disk.raw: $(size_of "$work/disk.raw")"
t=$(timed "$sc" pack "$work/disk.raw" "$work/disk.qcow2")
echo "== pack:     $t -> $(size_of "$work/disk.qcow2")"
t=$(timed "$sc" pack -c "$work/disk.raw" "$work/disk-deflate.qcow2")
echo "== pack -c:  $t -> $(size_of "$work/disk-deflate.qcow2")"
t=$(timed "$sc" unpack "$work/disk-deflate.qcow2" "$work/back.raw")
echo "== unpack:   $t -> $(size_of "$work/back.raw")"
cmp "$work/disk.raw" "$work/back.raw"
echo "== unpacked data is identical to the sample"
qemu-img check -q "$work/disk-deflate.qcow2" && echo "== qemu-img check: no errors"
