#!/bin/bash
# A FIFO named as a source is opened once.  Every other open of it
# would disturb its writer: a reader's open releases a writer waiting in
# open(), and once that reader has closed, the writer's next write dies
# of SIGPIPE; the real open then waits for a writer that has gone.  So
# each command that reads a source (pack, unpack, bmap, verify, info,
# map, check) opens the FIFO at most once (strace counts the opens that
# can read: O_PATH ones cannot), whether it holds a qcow2 image or raw
# data; and with a writer that has written all it has and gone, no
# command waits: each ends (within 60 s) with an answer or an error.
# bmap maps a FIFO's raw data (bmaptool copies by it) and refuses a
# qcow2 image there or on standard input; map refuses a FIFO, and pack
# and unpack refuse one as a bmap without waiting for a writer.
. "$srcdir/functions.sh"
requires qemu-img strace timeout mkfifo

cd "$tmp"
qemu-img create -q -f qcow2 image.qcow2 4M
qemu-io -f qcow2 -c "write -P 0x5a 1M 64k" image.qcow2 >/dev/null
head -c $((1024 * 1024)) /dev/urandom > data.raw
head -c 1000 image.qcow2 > short.qcow2
mkfifo fifo

# Under strace the sanitizers' leak check cannot run.
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0

commands=(
  "pack fifo out.qcow2"
  "pack --source-format=raw fifo out.qcow2"
  "unpack fifo out.raw"
  "bmap fifo -o out.bmap"
  "verify data.raw fifo"
  "info fifo"
  "map fifo"
  "check fifo"
)
for cmd in "${commands[@]}"; do
  for content in image.qcow2 data.raw; do
    rm -f out.*
    # The writer gives up after 60 s, so that a command that never
    # opens the FIFO cannot hang the test.
    timeout 60 sh -c 'cat "$1" > fifo' sh "$content" 2>/dev/null &
    writer=$!
    # shellcheck disable=SC2086
    timeout 60 strace -f -qq -e trace=open,openat -o trace \
      "$SPARSECOW" $cmd >/dev/null 2>err || :
    kill $writer 2>/dev/null || :
    wait $writer 2>/dev/null || :
    opens=$(grep '"fifo"' trace | grep -vc O_PATH || :)
    [ "$opens" -le 1 ] || {
      grep '"fifo"' trace >&2; fail "$cmd ($content in the FIFO): $opens opens of the FIFO"; }
  done

  # A writer that has written everything and closed: the command ends.
  rm -f out.*
  timeout 60 sh -c 'cat short.qcow2 > fifo' 2>/dev/null &
  writer=$!
  rc=0
  # shellcheck disable=SC2086
  timeout 60 $SC_VALGRIND "$SPARSECOW" $cmd >/dev/null 2>err || rc=$?
  kill $writer 2>/dev/null || :
  wait $writer 2>/dev/null || :
  [ $rc != 124 ] || fail "$cmd: still waiting after 60 s on a FIFO whose writer has gone"
  if grep -q "AddressSanitizer\|runtime error\|Segmentation" err; then
    cat err >&2; fail "crash or sanitizer report from: $cmd"
  fi
done
# bmap of a FIFO maps raw data, as of standard input: bmaptool copies
# by it, and the copy is the data.  A qcow2 image there is refused, as
# pack refuses one, whether through a FIFO or standard input, and no
# bmap is left; map refuses a FIFO with the reason.
requires bmaptool cmp
timeout 60 sh -c 'cat data.raw > fifo' 2>/dev/null &
writer=$!
sparsecow bmap -q fifo -o fifo.bmap || fail "bmap of raw data in a FIFO failed"
wait $writer || fail "bmap did not read the FIFO to its end"
bmaptool -q copy --bmap fifo.bmap data.raw copy.raw ||
  fail "bmaptool copy refuses the bmap of a FIFO"
cmp data.raw copy.raw || fail "the bmap of a FIFO does not give the data back"
timeout 60 sh -c 'cat image.qcow2 > fifo' 2>/dev/null &
writer=$!
expect_fail "^sparsecow: fifo: a qcow2 image, not raw data; name the image file" \
  sparsecow bmap fifo -o refused.bmap
kill $writer 2>/dev/null || :
wait $writer 2>/dev/null || :
[ ! -e refused.bmap ] || fail "a bmap was left for a qcow2 image in a FIFO"
expect_fail "^sparsecow: stdin: a qcow2 image, not raw data; name the image file" \
  sh -c "cat image.qcow2 | $SC_VALGRIND $SPARSECOW bmap - -o refused.bmap"
[ ! -e refused.bmap ] || fail "a bmap was left for a qcow2 image in a pipe"
expect_fail "^sparsecow: fifo: a pipe or character device; map reads an image at random offsets" \
  sparsecow map fifo
# A bmap is read from a regular file only: a FIFO there with no writer
# is refused at once, not waited on in open() (timeout gives 124, and
# no message, if it is).
rm -f out.*
expect_fail "^sparsecow: fifo: a bmap must be a regular file" \
  timeout 60 $SC_VALGRIND "$SPARSECOW" pack --map=bmap:fifo data.raw out.qcow2
expect_fail "^sparsecow: fifo: a bmap must be a regular file" \
  timeout 60 $SC_VALGRIND "$SPARSECOW" unpack --bmap fifo image.qcow2 out.raw
[ ! -e out.qcow2 ] && [ ! -e out.raw ] || fail "a target was left by a refused bmap"
exit 0
