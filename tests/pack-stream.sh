#!/bin/bash
# pack from a stream (stdin, a FIFO): the length is known only at the
# end and nothing is read twice.  qemu-img checks each image clean and
# compares it equal to the data that went into the pipe; zeros in the
# stream take no cluster; packing the same bytes from the file gives the
# same image.
. "$srcdir/functions.sh"
. "$srcdir/pack-common.sh"
requires qemu-img jq cmp mkfifo timeout

MiB=$((1024 * 1024))
cd "$tmp"

# 24 MiB: text, random data, zeros written out (allocated), a hole, and
# a short unaligned tail.
truncate -s $((24 * MiB)) src
seq 1 400000 | dd of=src conv=notrunc status=none
head -c $((3 * MiB)) /dev/urandom |
  dd of=src bs=1M seek=5 conv=notrunc status=none
dd if=/dev/zero of=src bs=1M seek=9 count=4 conv=notrunc status=none
head -c 1000 /dev/urandom | dd of=src bs=1 seek=$((24 * MiB - 1000)) \
  conv=notrunc status=none
printf 'tail' >>src             # 24 MiB + 4 bytes: not a whole sector

# The number of bytes qemu-img map reports as data in an image.
data_bytes () {
  qemu-img map --output=json "$1" |
    jq '[.[] | select(.data) | .length] | add // 0'
}

for codec in none deflate zstd; do
  opts=()
  [ "$codec" = none ] || opts=(-c "$codec")
  cat src | sparsecow pack "${opts[@]}" - "s-$codec.qcow2" ||
    fail "pack from stdin ($codec) failed"
  check_image src "s-$codec.qcow2" 65536 1.1 "$codec" 16
  # Same bytes from the file: the same image, byte for byte.
  sparsecow pack "${opts[@]}" src "f-$codec.qcow2"
  cmp "s-$codec.qcow2" "f-$codec.qcow2" ||
    fail "$codec: packing a stream and a file of the same bytes differ"
done

# Zeros in the stream are not stored: 24 MiB + 4 bytes went in, of which
# 4 MiB of written zeros and about 10 MiB of hole read as zeros.
mapped=$(data_bytes s-none.qcow2)
[ "$mapped" -le $((11 * MiB)) ] ||
  fail "zeros from the stream were stored: $mapped bytes of data"
# With -S 0 every cluster is stored, zeros or not.
cat src | sparsecow pack -j 1 -S 0 - all.qcow2
check_image src all.qcow2 65536 1.1 none 16
[ "$(data_bytes all.qcow2)" -ge $((24 * MiB)) ] ||
  fail "-S 0 from a stream left clusters out"

# Other formats, many threads, small clusters: pieces go back in order.
cat src | sparsecow pack -j 4 --cluster-size 512 --compat 0.10 -c - v2.qcow2
check_image src v2.qcow2 512 0.10 deflate 16
cat src | sparsecow pack -j 3 --cluster-size 2M --refcount-bits 1 - big.qcow2
check_image src big.qcow2 2097152 1.1 none 1

# A named pipe is read like stdin.
mkfifo fifo
cat src >fifo &
timeout 60 "$SPARSECOW" pack fifo fifo.qcow2 || fail "pack from a FIFO failed"
wait
check_image src fifo.qcow2 65536 1.1 none 16

# Standard input to standard output.
cat src | sparsecow pack -c - - >out.qcow2 || fail "pack - - failed"
check_image src out.qcow2 65536 1.1 deflate 16

# An empty stream is an empty image; a stream of zeros holds no data.
: | sparsecow pack - empty.qcow2
qemu-img check -q empty.qcow2 || fail "empty stream: image does not check"
[ "$(qemu-img info --output=json empty.qcow2 | jq '."virtual-size"')" = 0 ] ||
  fail "empty stream: virtual size is not 0"
head -c $((5 * MiB + 100)) /dev/zero | sparsecow pack -j 1 - zeros.qcow2
qemu-img check -q zeros.qcow2 || fail "zero stream: image does not check"
[ "$(qemu-img info --output=json zeros.qcow2 | jq '."virtual-size"')" = \
  $((5 * MiB + 512)) ] || fail "zero stream: wrong virtual size"
[ "$(data_bytes zeros.qcow2)" = 0 ] || fail "zero stream: data stored"

# Progress while a stream is read has no total; once it has ended (and
# the image is written) the total is known, and the count only grows
# to it.  The scan runs fast, so -j 1 and a small request keep it going
# long enough to be reported.
cat src | sparsecow pack -j 1 --progress=json - p.qcow2 2>progress.json
jq -e -s --argjson len "$(stat -c %s src)" '
  length > 1
  and ([.[] | .total == null] | . == (sort | reverse))
  and .[0].total == null
  and (last | .done == .total and .total >= $len)
  and ([.[].done] | . == sort)' progress.json >/dev/null ||
  fail "stream progress: $(cat progress.json)"
judge_progress progress.json

# Interrupted while waiting for the stream: nothing is left behind.  The
# stream is a FIFO held open here: a write of 1 MiB returns only once
# the program has read nearly all of it, so after the second it has
# read most of 2 MiB and waits for more when the signal comes.
mkdir out
mkfifo int.fifo
"$SPARSECOW" pack int.fifo out/int.qcow2 &
pid=$!
exec 7>int.fifo
for i in 0 1; do
  dd if=src bs=1M skip=$i count=1 status=none >&7 ||
    fail "interrupted pack: the program stopped reading after $i MiB"
done
kill -INT $pid
rc=0; wait $pid || rc=$?
exec 7>&-
[ "$rc" = 130 ] || fail "interrupted pack exited $rc, not 130"
[ -z "$(ls -A out)" ] || fail "interrupted pack left $(ls -A out)"
