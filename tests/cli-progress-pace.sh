#!/bin/bash
# Progress at the pace of the work.  Against an NBD server that answers
# every request after the same delay (nbdkit's delay filter), one
# request at a time, the percentages of --progress=fd:3 must grow evenly
# in time from 0 to 100: what the count counts is what costs the time.
# Judged by tests/progress-check.py from the lines and when they come.
#  - verify A B of sparse sources: the data either side holds, not the
#    virtual size (whose holes cost nothing and made the count jump);
#  - unpack -S 0, and unpack into a pipe: every byte, holes too, which
#    are written as data;
#  - pack -S 0: from 0 (nothing is read before the image is written);
#  - unpack of an image from a pipe: ends at 100, the total being the
#    bytes of the pipe.
. "$srcdir/functions.sh"
requires python3 qemu-img nbdkit

cd "$tmp"
MiB=$((1024 * 1024))
check () { python3 "$srcdir/progress-check.py" "$@"; }
sc=($SC_VALGRIND "$SPARSECOW")
# One thread, one connection, one request in flight: the delays add up.
slow=(-j 1 -C 1 --requests 1 --progress=fd:3)

# 256 MiB with 12 MiB of data in six places, most of it far apart.
truncate -s $((256 * MiB)) s.raw
for at in 1 5 9 100 200 250; do
  head -c $((2 * MiB)) /dev/urandom |
    dd of=s.raw bs=1M seek=$at conv=notrunc status=none
done
cp --sparse=always s.raw b.raw

# ---- verify A B: the pace of the data ------------------------------------
check --linear-time 20 -- "${sc[@]}" verify -q "${slow[@]}" s.raw \
  -- [ nbdkit --filter=delay file b.raw rdelay=100ms ]
# The total is what either side holds as data, as the kernel maps the
# files (SEEK_DATA): here one side also has 8 MiB of zeros written out,
# read there only and found to be zeros.
cp --sparse=always s.raw y.raw
dd if=/dev/zero of=y.raw bs=1M seek=20 count=8 conv=notrunc status=none
union=$( { data_map s.raw; data_map y.raw; } | sort -n | awk '
  $1 > end { total += end - start; start = $1; end = $2; next }
  $2 > end { end = $2 }
  END { print total + end - start }')
check --total "$union" -- "${sc[@]}" verify -q --progress=fd:3 s.raw y.raw
[ "$union" -ge $((20 * MiB)) ] || fail "test setup: y.raw maps $union bytes"
# Different: the count stops where the difference is found.
truncate -s $((256 * MiB)) z.raw
check --rc 1 -- "${sc[@]}" verify -q --progress=fd:3 s.raw z.raw
# Equal sides with no data at all: nothing to compare, and done.
truncate -s $((64 * MiB)) h1.raw h2.raw
check --total 0 -- "${sc[@]}" verify -q --progress=fd:3 h1.raw h2.raw

# ---- unpack -S 0: every byte is written, every byte counts ---------------
truncate -s $((64 * MiB)) u.raw
for at in 0 60; do
  head -c $((4 * MiB)) /dev/urandom |
    dd of=u.raw bs=1M seek=$at conv=notrunc status=none
done
qemu-img convert -q -f raw -O qcow2 u.raw u.qcow2
# Into a pipe read at 32 MiB/s: holes go as zeros, at the pace of
# data, and count as data.
check --linear-time 20 --stdout-rate $((32 * MiB)) --stdout-file piped0.raw \
  -- "${sc[@]}" unpack -q -S 0 --progress=fd:3 u.qcow2 -
cmp u.raw piped0.raw
# So does any hole into a pipe, -S or not: the pipe takes every byte.
check --linear-time 20 --stdout-rate $((32 * MiB)) --stdout-file piped1.raw \
  -- "${sc[@]}" unpack -q --progress=fd:3 u.qcow2 -
cmp u.raw piped1.raw
# Into a new file: all of it is allocated (the oracle: stat), and the
# count is of all of it.
check --total $((64 * MiB)) -- "${sc[@]}" unpack -q -S 0 --progress=fd:3 \
  u.qcow2 full.raw
cmp u.raw full.raw
[ "$(allocated_bytes full.raw)" -ge $((64 * MiB)) ] ||
  fail "unpack -S 0 left holes: $(allocated_bytes full.raw) bytes allocated"
# With --verify the read-back reads every byte too: counted the same.
check --total $((128 * MiB)) -- "${sc[@]}" unpack -q -S 0 --verify \
  --progress=fd:3 u.qcow2 full2.raw

# ---- pack -S 0: the writing is all the work -------------------------------
check --first-below 5 --linear-time 20 -- "${sc[@]}" pack -q -S 0 \
  "${slow[@]}" -- [ nbdkit --filter=delay file u.raw rdelay=30ms ] p.qcow2
qemu-img compare -q -f raw -F qcow2 u.raw p.qcow2
check --first-below 5 -- "${sc[@]}" pack -q -S 0 --progress=fd:3 u.raw p2.qcow2

# ---- unpack from a pipe: the end is 100% ---------------------------------
"${sc[@]}" pack -q s.raw s.qcow2
cat s.qcow2 | check --total "$(stat -c %s s.qcow2)" -- "${sc[@]}" unpack -q \
  --progress=fd:3 - piped.raw
cmp s.raw piped.raw
cat s.qcow2 | check -- "${sc[@]}" unpack -q --progress=fd:3 - - >piped2.raw
cmp s.raw piped2.raw
cat u.qcow2 | check -- "${sc[@]}" unpack -q -S 0 --progress=fd:3 - piped3.raw
cmp u.raw piped3.raw
