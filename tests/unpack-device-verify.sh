#!/usr/bin/env bash
# sparsecow unpack --verify reads the device back after the flush and
# compares every byte, zero ranges too: it passes on a good write, and a
# byte changed between the write and the read-back (test hook
# SPARSECOW_TEST_CHANGE_BEFORE_VERIFY) is reported at its offset with a
# non-zero exit, in a data range and in a zero range.  --progress=json
# counts the read-back.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io losetup cmp jq
requires_root

cd "$tmp"
MiB=$((1024 * 1024))
size=$((64 * MiB))

qemu-img create -q -f qcow2 img.qcow2 $size
qemu-io -f qcow2 -c "write -P 0x11 0 100k" -c "write -z 2M 1M" \
  -c "write -P 0x22 10M 4k" -c "write -P 0x33 63M 1M" img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw

head -c $size /dev/urandom > dev.img
loop_attach dev.img

for mode in auto write; do
  sparsecow unpack -f --verify --zero=$mode img.qcow2 "$dev" ||
    fail "unpack --verify --zero=$mode to $dev failed"
  cmp ref.raw "$dev" || fail "--verify --zero=$mode: $dev differs"
done

# A data byte (10M + 5 holds 0x22) and a zero byte (in the hole at
# 20M), each changed after the flush: found where they are.
for off in $((10 * MiB + 5)) $((20 * MiB + 12345)); do
  expect_fail "^sparsecow: $dev: verify: differs from the image at offset $off\$" \
    env SPARSECOW_TEST_CHANGE_BEFORE_VERIFY=1:$off \
    "$SPARSECOW" unpack -f --verify img.qcow2 "$dev"
done
# Of two changes, the first is reported, whichever is looked at first.
expect_fail "verify: differs from the image at offset $((3 * MiB))\$" \
  env SPARSECOW_TEST_CHANGE_BEFORE_VERIFY=1:$((40 * MiB)),1:$((3 * MiB)) \
  "$SPARSECOW" unpack -f -j 4 --verify img.qcow2 "$dev"

# With --zero=skip the zero ranges hold old bytes: only data is compared.
head -c $size /dev/urandom | dd of="$dev" bs=1M oflag=direct status=none
sparsecow unpack -f --verify --zero=skip img.qcow2 "$dev" 2>/dev/null ||
  fail "unpack --verify --zero=skip to $dev failed"

# --progress=json (on standard error) counts the read-back too: the
# total is the data to move (what qemu-img map calls data) plus the
# virtual size, every byte of which is read back, zero ranges included,
# from the first line; done never goes back, and the last line has all
# of it done; without --verify the total is the data.
vsize=$(qemu-img map --output=json img.qcow2 |
        jq '[.[] | select(.data) | .length] | add')
check_progress () {
  jq -rs --argjson want "$2" '
    if length == 0 then "no progress lines"
    elif any(.[]; .total != $want) then "a total is not \($want)"
    elif [range(1; length) as $i | select(.[$i].done < .[$i - 1].done)]
         | length > 0 then "done went back"
    elif .[-1].done != $want then "the last done is \(.[-1].done), not \($want)"
    else "ok" end' "$1"
}
sparsecow unpack -f --verify --progress=json img.qcow2 "$dev" 2> verify.json ||
  fail "unpack --verify --progress=json to $dev failed"
r=$(check_progress verify.json $((vsize + size)))
[ "$r" = ok ] || { cat verify.json >&2; fail "--verify --progress=json: $r"; }
judge_progress verify.json --total $((vsize + size))
sparsecow unpack -f --progress=json img.qcow2 "$dev" 2> plain.json ||
  fail "unpack --progress=json to $dev failed"
r=$(check_progress plain.json $vsize)
[ "$r" = ok ] || { cat plain.json >&2; fail "--progress=json: $r"; }
judge_progress plain.json --total $vsize

# An image from a pipe cannot be read again.
expect_fail "unpack: --verify reads the image again: it cannot be read from a pipe" \
  sparsecow unpack -f --verify - "$dev" < /dev/null

exit 0
