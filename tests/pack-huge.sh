#!/bin/bash
# pack: cost follows data, not virtual size.  An 8 TiB file holding
# 1 MiB packs in a moment and in little memory, and qemu-img agrees
# with the result.
. "$srcdir/functions.sh"
requires qemu-img

truncate -s 8T "$tmp/huge" 2>/dev/null ||
  { echo "$0: SKIP: file system cannot hold an 8 TiB sparse file"; exit 77; }
head -c 1M /dev/urandom |
  dd of="$tmp/huge" bs=1M seek=$((4 * 1024 * 1024 + 3)) conv=notrunc status=none

for opts in "" "-c" "--cluster-size 2M -c zstd"; do
  rm -f "$tmp/huge.qcow2"
  start=$(date +%s%N)
  sparsecow pack -q $opts "$tmp/huge" "$tmp/huge.qcow2"
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  # Generous for a loaded machine; the work itself takes milliseconds.
  [ "$ms" -lt 10000 ] || fail "pack $opts of 1 MiB in 8 TiB took $ms ms"
  [ "$(stat -c %s "$tmp/huge.qcow2")" -lt $((16 << 20)) ] ||
    fail "pack $opts: image of $(stat -c %s "$tmp/huge.qcow2") bytes"
  qemu-img check -q "$tmp/huge.qcow2" || fail "pack $opts: qemu-img check"
  qemu-img compare -q -f raw -F qcow2 "$tmp/huge" "$tmp/huge.qcow2" ||
    fail "pack $opts: qemu-img compare"
done

# Memory stays small (the L1 table of 8 TiB at 64 KiB clusters is
# 128 KiB); measured where GNU time is available.
if [ -x /usr/bin/time ]; then
  rm -f "$tmp/huge.qcow2"
  /usr/bin/time -f "%M" -o "$tmp/rss" "$SPARSECOW" pack -q -c "$tmp/huge" "$tmp/huge.qcow2"
  [ "$(tail -1 "$tmp/rss")" -lt $((64 * 1024)) ] ||
    fail "pack used $(tail -1 "$tmp/rss") KiB of memory"
fi
