#!/usr/bin/env bash
# Standard output closed early (`| head -c 4096`): pack and unpack,
# compressed and not, from a file and from a pipe, each fail within a
# minute (no hang) with "sparsecow: stdout: write: Broken pipe" (SIGPIPE
# is ignored so that the message can be given; the exit status is 1,
# not the 141 of a silent death), leave no spill file in TMPDIR, and do
# not touch their source.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires qemu-img head timeout md5sum

cd "$tmp"
mkdir spill
export TMPDIR=$tmp/spill
# 24 MiB that does not compress, and 8 MiB that does: far more than a
# pipe holds.
head -c 24M /dev/urandom > rand.raw
python3 -c 'import random, sys
r = random.Random(3)
sys.stdout.buffer.write(bytes(r.choice(b"abcdefgh") for _ in range(8 << 20)))' > text.raw
qemu-img convert -q -f raw -O qcow2 rand.raw rand.qcow2
qemu-img convert -q -c -f raw -O qcow2 text.raw text.qcow2
sums=$(md5sum rand.raw text.raw rand.qcow2 text.qcow2)

# closed WHAT FROM CMD...: CMD's standard output is read for 4096 bytes
# and closed; FROM is a file to feed CMD through a pipe, or "-".
closed () {
  local what=$1 from=$2 rc; shift 2
  rm -f err
  if [ "$from" = - ]; then
    timeout 60 $SC_VALGRIND "$SPARSECOW" "$@" 2>err | head -c 4096 >/dev/null
    rc=${PIPESTATUS[0]}
  else
    cat "$from" | timeout 60 $SC_VALGRIND "$SPARSECOW" "$@" 2>err |
      head -c 4096 >/dev/null
    rc=${PIPESTATUS[1]}
  fi
  [ "$rc" != 124 ] || fail "$what: hangs after its reader went away"
  [ "$rc" = 1 ] || { cat err >&2; fail "$what: exit $rc, not 1"; }
  grep -q "^sparsecow: stdout: write: Broken pipe$" err ||
    { cat err >&2; fail "$what: unclear message"; }
  if grep -q "AddressSanitizer\|runtime error" err; then
    cat err >&2; fail "$what: sanitizer report"
  fi
  [ -z "$(ls -A spill)" ] || fail "$what: left in TMPDIR: $(ls -A spill)"
  echo "$what: $(cat err)"
}

set +o pipefail
for src in rand text; do
  closed "pack $src.raw" - pack $src.raw -
  closed "pack -c $src.raw" - pack -c $src.raw -
  closed "pack -c zstd of a pipe ($src)" $src.raw pack -c zstd - -
  closed "pack of a pipe ($src)" $src.raw pack - -
  closed "unpack $src.qcow2" - unpack $src.qcow2 -
  closed "unpack -j 4 $src.qcow2" - unpack -j 4 $src.qcow2 -
  closed "unpack of a pipe ($src.qcow2)" $src.qcow2 unpack - -
done
set -o pipefail
[ "$(md5sum rand.raw text.raw rand.qcow2 text.qcow2)" = "$sums" ] ||
  fail "a source changed"
exit 0
