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

# Blocks (512 B) allocated to a file.
allocated_bytes () { echo $(( $(stat -c %b "$1") * 512 )); }

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
