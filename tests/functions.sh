# Shared by the shell tests: source it first.
#   . "$srcdir/functions.sh"
# Gives: a private scratch directory $tmp (removed on exit), cleanup
# registration, skips for missing tools, and the sparsecow command
# (under valgrind for "make check-valgrind").

set -euo pipefail

: "${SPARSECOW:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/src/sparsecow}"
: "${SC_VALGRIND:=}"

_cleanups=()
cleanup_fn () { _cleanups+=("$*"); }
_run_cleanups () {
  local rc=$? i
  for ((i=${#_cleanups[@]}-1; i>=0; i--)); do eval "${_cleanups[i]}" || :; done
  rm -rf "$tmp"
  exit $rc
}
tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/sparsecow-test.XXXXXX")
trap _run_cleanups EXIT

# Skip the test (exit 77) unless every named program exists.
requires () {
  local p
  for p in "$@"; do
    command -v "$p" >/dev/null 2>&1 || { echo "$0: SKIP: $p not found"; exit 77; }
  done
}

# Skip unless running as root (loop devices, mounts).
requires_root () {
  [ "$(id -u)" = 0 ] || { echo "$0: SKIP: needs root"; exit 77; }
}

sparsecow () { $SC_VALGRIND "$SPARSECOW" "$@"; }

fail () { echo "$0: FAIL: $*" >&2; exit 1; }

# Expect a command to fail (non-zero) and print something on stderr
# matching the extended regex $1.
expect_fail () {
  local pattern=$1; shift
  local rc=0
  "$@" 2>"$tmp/.stderr" >/dev/null || rc=$?
  [ "$rc" -ne 0 ] || fail "expected failure: $*"
  grep -Eq -- "$pattern" "$tmp/.stderr" || {
    cat "$tmp/.stderr" >&2; fail "stderr of '$*' does not match '$pattern'"; }
  if grep -q "AddressSanitizer\|runtime error\|Segmentation" "$tmp/.stderr"; then
    cat "$tmp/.stderr" >&2; fail "crash or sanitizer report from: $*"
  fi
}

# info_as_qemu PATTERN IMAGE: sparsecow info on an image its reader
# refuses (PATTERN matches why, on stderr) does what qemu-img info does:
# where qemu-img info shows the image, info shows it too (exit 0) and
# says on stderr that it is damaged and why; where qemu-img info fails,
# info fails.
info_as_qemu () {
  local pattern=$1 img=$2 qrc=0 src=0
  qemu-img info "$img" >/dev/null 2>&1 || qrc=$?
  if [ "$qrc" != 0 ]; then
    expect_fail "$pattern" sparsecow info "$img"
    return
  fi
  sparsecow info "$img" >/dev/null 2>"$tmp/.stderr" || src=$?
  if grep -q "AddressSanitizer\|runtime error\|Segmentation" "$tmp/.stderr"
  then
    cat "$tmp/.stderr" >&2; fail "crash or sanitizer report from: info $img"
  fi
  [ "$src" = 0 ] || {
    cat "$tmp/.stderr" >&2; fail "qemu-img info shows $img, sparsecow info exits $src"; }
  grep -q "damaged" "$tmp/.stderr" && grep -Eq -- "$pattern" "$tmp/.stderr" || {
    cat "$tmp/.stderr" >&2; fail "info $img does not say it is damaged ('$pattern')"; }
}

# Blocks (512 B) allocated to a file.
allocated_bytes () { echo $(( $(stat -c %b "$1") * 512 )); }

# settle FILE...: write FILE... back (fsync) before two programs are
# compared on the space it takes (st_blocks: qemu-img info's
# "actual-size" and "disk size").  ext4 allocates the blocks of a file
# written through the page cache only at writeback, and with them, for
# a file of more than four extents, a block of its extent tree; a
# writeback that comes between the two programs would change the size
# one of them sees.  qemu-img and qemu-io flush what they write; cp,
# dd and the like do not.
settle () { sync -- "$@" || fail "cannot write back $*"; }

# luks_image OUT SIZE [,MORE-OPTIONS]: a LUKS-encrypted qcow2 image made
# by qemu-img, secret "pw" (object s0).  qemu's key setup times PBKDF2
# on the thread's CPU clock and gives up ("Unable to get accurate CPU
# usage") when a round measures no time, which with a hash the CPU
# computes in hardware (sha1, sha256) is most rounds here: sha512 unless
# MORE-OPTIONS names another, and a failure is retried.
luks_image () {
  local out=$1 size=$2 more=${3:-,encrypt.hash-alg=sha512}
  for try in 1 2 3 4 5; do
    qemu-img create -q -f qcow2 --object secret,id=s0,data=pw \
      -o "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10$more" \
      "$out" "$size" && return 0
    sleep 1
  done
  fail "qemu-img cannot create the LUKS image $out (the test is wrong)"
}

# The data extents of a file as the kernel reports them (SEEK_DATA and
# SEEK_HOLE), one "start end" line each: what is allocated, without the
# file system's own bookkeeping blocks that st_blocks also counts.
data_map () {
  python3 - "$1" <<'PYEOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
end = os.fstat(fd).st_size
pos = 0
while pos < end:
    try:
        start = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    stop = os.lseek(fd, start, os.SEEK_HOLE)
    print(start, stop)
    pos = stop
PYEOF
}

# NBD servers for the tests, on Unix sockets in $tmp, stopped on exit.
# nbd_liar MODE: serve $tmp/src.raw with tests/nbd-liar.py lying in
#   block status that way; sets liar_uri and liar_pid.  stop_liar ends it.
nbd_liar () {
  rm -f "$tmp/liar.sock"
  python3 "$srcdir/nbd-liar.py" "$tmp/liar.sock" "$tmp/src.raw" "$1" &
  liar_pid=$!
  cleanup_fn "kill $liar_pid 2>/dev/null"
  for ((i = 0; i < 200; i++)); do [ -S "$tmp/liar.sock" ] && break; sleep 0.05; done
  liar_uri="nbd+unix:///?socket=$tmp/liar.sock"
}
stop_liar () { kill $liar_pid; wait $liar_pid 2>/dev/null || :; }

#   nbd_serve NAME CMD ARGS...: run an NBD server command line (nbdkit
#   or qemu-nbd, without its socket option) serving on $tmp/NAME.sock;
#   sets nbd_uri to its URI and nbd_pid to its pid.
nbd_serve () {
  local name=$1; shift
  local sock="$tmp/$name.sock" i
  rm -f "$sock"
  case "$1" in
    nbdkit) "$1" -f -U "$sock" "${@:2}" & ;;
    qemu-nbd) "$1" -k "$sock" --persistent "${@:2}" & ;;
    *) fail "nbd_serve: unknown server $1" ;;
  esac
  nbd_pid=$!
  cleanup_fn "kill $nbd_pid 2>/dev/null; wait $nbd_pid 2>/dev/null"
  for ((i = 0; i < 200; i++)); do
    [ -S "$sock" ] && break
    kill -0 "$nbd_pid" 2>/dev/null || fail "NBD server $* exited early"
    sleep 0.05
  done
  [ -S "$sock" ] || fail "NBD server $* did not start"
  nbd_uri="nbd+unix:///?socket=$sock"
}

# The zero and data ranges of an NBD export as nbdinfo --map reports
# them, or of sparsecow map --output=json: "start length zero|data" per
# line, neighbours of the same kind merged, for comparing the two.
nbdinfo_ranges () {
  nbdinfo --map --json "$1" | jq -r '.[] |
    "\(.offset) \(.length) \(if (.type / 2 | floor) % 2 == 1 then "zero" else "data" end)"' |
    merge_ranges
}
map_ranges () {
  jq -r '.[] | "\(.start) \(.length) \(if .zero then "zero" else "data" end)"' |
    merge_ranges
}
merge_ranges () {
  awk 'NR > 1 && $3 == kind && $1 == start + len { len += $2; next }
       NR > 1 { print start, len, kind }
       { start = $1; len = $2; kind = $3 }
       END { if (NR) print start, len, kind }'
}

# Loop devices for the tests (root only; skip, exit 77, when losetup
# or a free loop device is missing).
#   loop_attach FILE: set dev to a loop device over FILE, detached on
#   exit.  Call it in the test's shell, not in a subshell, so that the
#   cleanup is registered.
#   loop_detach DEV ID: detach DEV if it is still over the file that
#   loop_id DEV gave as ID (device and inode of the file, which stay
#   right when the file is removed or renamed).  A cleanup never
#   detaches a device by its name alone: once a test has detached its
#   device, another test running beside it (make -j2) may attach its
#   own under the same name.
loop_attach () {
  local id
  requires losetup
  requires_root
  dev=$(losetup -f --show "$1") || { echo "$0: SKIP: no loop device"; exit 77; }
  id=$(loop_id "$dev")
  [ -n "$id" ] || { losetup -d "$dev"; fail "losetup shows no file under $dev"; }
  cleanup_fn "loop_detach $dev '$id'"
}
loop_id () {
  losetup -n -O BACK-MAJ:MIN,BACK-INO "$1" 2>/dev/null | awk 'NF { print $1, $2 }'
}
loop_detach () {
  [ -z "$2" ] || [ "$(loop_id "$1")" != "$2" ] || losetup -d "$1"
}

# judge_progress FILE [--rc N] [OPTIONS]: the JSON progress lines a
# command wrote to FILE, judged by progress-check.py as it judges a
# command it runs: every line well formed, done never going down,
# percentages between 0 and 100 that are done / total and never go
# down, and the last one at 100 (unless --rc N says that the command
# failed with N).  OPTIONS are progress-check.py's other options (such
# as --total BYTES).
judge_progress () {
  local file=$1 rc=0 opts=()
  shift
  while [ $# -gt 0 ]; do
    case $1 in
      --rc) rc=$2; opts+=(--rc "$2"); shift 2 ;;
      *) opts+=("$1"); shift ;;
    esac
  done
  python3 "$srcdir/progress-check.py" "${opts[@]}" -- \
    sh -c 'cat "$1" >&3; exit "$2"' sh "$file" "$rc" ||
    fail "progress in $file, judged by progress-check.py"
}

# What changes once TARGET is written: the sectors a block device has
# written, or a file's modification time.
mark () {
  if [ -b "$1" ]; then
    awk '{ print $7 }' "/sys/block/$(basename "$1")/stat"
  else
    stat -c %y "$1"
  fi
}

# mbr FILE START:COUNT...: write an MBR into FILE with one Linux
# partition (type 0x83) for each START:COUNT, in 512-byte sectors.
mbr () {
  python3 - "$@" <<'PYEOF'
import struct, sys
mbr = bytearray(512)
for n, part in enumerate(sys.argv[2:]):
    start, count = (int(x) for x in part.split(":"))
    mbr[446 + 16 * n:462 + 16 * n] = struct.pack(
        "<B3sB3sII", 0, b"\xff\xff\xff", 0x83, b"\xff\xff\xff", start, count)
mbr[510:512] = b"\x55\xaa"
with open(sys.argv[1], "r+b") as f:
    f.write(mbr)
PYEOF
}

# Is process PID still running (not ended, not a zombie)?
running () {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "${st%% *}" != Z ]
}

# interrupt SIG TARGET CMD...: run CMD, and once TARGET has been
# written, freeze it, send SIG and let it go.  Sets rc and leaves
# stderr in err; returns 1 if CMD ended before it could be signalled.
interrupt () {
  local sig=$1 watch=$2 before pid i
  shift 2
  before=$(mark "$watch")
  "$@" 2>err &
  pid=$!
  for ((i = 0; i < 4000; i++)); do
    [ "$(mark "$watch")" != "$before" ] && break
    running $pid || break
    sleep 0.005
  done
  # kill succeeds on a process that has ended but not been waited for.
  if ! kill -STOP $pid 2>/dev/null || ! running $pid; then
    rc=0; wait $pid || rc=$?
    return 1
  fi
  kill -"$sig" $pid
  kill -CONT $pid
  rc=0; wait $pid || rc=$?
  return 0
}
