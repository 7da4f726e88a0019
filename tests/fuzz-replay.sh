#!/usr/bin/env bash
# The fuzz targets without libFuzzer: every seed image (made by the
# build from qemu-img images) and every input under fuzz-regressions/
# (each one crashed, hung or exhausted memory once) runs once through
# every target, under the sanitizers of the build.  Each run must end
# in time with no report.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires timeout

replay () {
  local prog=$top_builddir/fuzz/replay-$1; shift
  [ -x "$prog" ] || fail "$prog is not built"
  # One second per input is what libFuzzer allows; the replay build is
  # slower (gcc, no optimisation), so the whole batch gets ten times as
  # much as its inputs' count, and sixty seconds at least.
  local limit=$(( $# * 10 > 60 ? $# * 10 : 60 ))
  timeout "$limit" $SC_VALGRIND "$prog" "$@" 2>"$tmp/replay.err" || {
    tail -40 "$tmp/replay.err" >&2; fail "replay-$(basename "$prog"): exit $?"; }
}

inputs=()
for f in "$top_builddir"/fuzz/seeds/* "$srcdir"/fuzz-regressions/*; do
  [ -f "$f" ] && [ "$(basename "$f")" != README ] && inputs+=("$f")
done
[ ${#inputs[@]} -gt 0 ] || fail "no inputs"
seeds=$(find "$top_builddir/fuzz/seeds" -type f | wc -l)
[ "$seeds" -gt 0 ] || echo "$0: no seed corpus (qemu-img missing?): regressions only"

replay qcow2 "${inputs[@]}"
replay stream "${inputs[@]}"
echo "replayed ${#inputs[@]} inputs ($seeds seeds) through both image targets"

# The bmap target: its own seeds (bmaptool create's files), and every
# other input too, which it must refuse cleanly.
bmap_inputs=("${inputs[@]}")
for f in "$top_builddir"/fuzz/seeds-bmap/*; do
  [ -f "$f" ] && bmap_inputs+=("$f")
done
bmap_seeds=$(( ${#bmap_inputs[@]} - ${#inputs[@]} ))
[ "$bmap_seeds" -gt 0 ] || echo "$0: no bmap seed corpus (bmaptool missing?)"
replay bmap "${bmap_inputs[@]}"
echo "replayed ${#bmap_inputs[@]} inputs ($bmap_seeds bmap seeds) through the bmap target"

# The NBD target: its own seeds (server answers, make-nbd-seeds.py),
# and every other input too, as answers of a server.
nbd_inputs=("${inputs[@]}")
for f in "$top_builddir"/fuzz/seeds-nbd/*; do
  [ -f "$f" ] && nbd_inputs+=("$f")
done
nbd_seeds=$(( ${#nbd_inputs[@]} - ${#inputs[@]} ))
[ "$nbd_seeds" -gt 0 ] || echo "$0: no NBD seed corpus (python3 missing?)"
replay nbd "${nbd_inputs[@]}"
echo "replayed ${#nbd_inputs[@]} inputs ($nbd_seeds NBD seeds) through the NBD target"

# The program on the same bytes, where a fix changed an outcome.
# 32768 L1 entries that all name one L2 table: refused at open (it took
# 18 s to walk), and still counted by check.
img=$srcdir/fuzz-regressions/qcow2-shared-l2
expect_fail "L2 table at host offset 0x42000 is named by two L1 entries" \
  sparsecow map "$img"
rc=0
sparsecow check "$img" >"$tmp/check.out" 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "qcow2-shared-l2: check exit $rc, expected 2 (corrupt)"

# 8192 compressed clusters of zeros that arrive out of guest order were
# held inflated and filled the 256 MiB limit of a pipe target ("cannot
# go from a pipe to a pipe"); held compressed, they unpack.
img=$srcdir/fuzz-regressions/stream-held-compressed
cat "$img" | sparsecow unpack - - | cmp - <(head -c $(( 512 << 20 )) /dev/zero) \
  || fail "stream-held-compressed: not 512 MiB of zeros from a pipe to a pipe"
