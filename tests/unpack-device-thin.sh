#!/usr/bin/env bash
# sparsecow unpack to a thin device (a loop device over a sparse file,
# or over one full of old bytes) allocates no more than qemu-img
# convert -n does to the same device, with 64 KiB and 2 MiB clusters
# that hold a few 4 KiB blocks of data each: the all-zero blocks inside
# data clusters are unmapped, not written, with the image read from a
# file or from a pipe, to one device or to two at once, and to a file
# written in place.  Each target equals qemu-img convert's output.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io losetup blkdiscard cmp stat
requires_root

cd "$tmp"
KiB=1024
MiB=$((1024 * KiB))
size=$((64 * MiB))
# What the loop file may hold beyond what qemu-img convert -n leaves:
# the file system's own blocks, not whole clusters.
margin=$((256 * KiB))

# 100 blocks of 4 KiB, 650 KiB apart: nearly every 2 MiB cluster and
# 100 of the 64 KiB ones hold one block of data and zeros around it.
make_image () {
  local args=() i
  rm -f img.qcow2
  qemu-img create -q -f qcow2 -o cluster_size="$1" img.qcow2 $size
  for ((i = 0; i < 100; i++)); do
    args+=(-c "write -P $((i % 200 + 1)) $((i * 650 * KiB + (i % 7) * 4 * KiB)) 4k")
  done
  qemu-io -f qcow2 "${args[@]}" img.qcow2 >/dev/null
  qemu-img convert -O raw img.qcow2 ref.raw
}

# A loop device over NAME.img, attached once and then made sparse
# again (discarded whole) or full of old bytes; sets dev.
declare -A devs
device () {
  if [ -z "${devs[$1]:-}" ]; then
    truncate -s $size "$1.img"
    loop_attach "$1.img"
    devs[$1]=$dev
  fi
  dev=${devs[$1]}
  if [ "$2" = sparse ]; then
    blkdiscard -f "$dev" 2>/dev/null || fail "cannot discard $dev"
  else
    head -c $size /dev/urandom | dd of="$dev" bs=1M oflag=direct status=none
  fi
  sync
  [ "$2" = old ] || [ "$(allocated_bytes "$1.img")" -le $margin ] ||
    fail "$1.img is not sparse after a discard"
}

# Allocated bytes of the loop file NAME.img after everything reached it.
used () {
  sync
  allocated_bytes "$1.img"
}

for cs in 64k 2M; do
  make_image $cs
  for start in sparse old; do
    device qemu $start
    qemu-img convert -n -O raw img.qcow2 "$dev" ||
      fail "qemu-img convert -n to $dev failed"
    limit=$(( $(used qemu) + margin ))

    device file $start
    sparsecow unpack -f img.qcow2 "$dev" || fail "unpack to $dev failed"
    cmp ref.raw "$dev" || fail "$cs, $start: $dev differs from qemu-img convert"
    got=$(used file)
    [ "$got" -le "$limit" ] ||
      fail "$cs clusters, $start device: $got bytes allocated, qemu-img convert -n leaves $((limit - margin))"

    device stream $start
    cat img.qcow2 | sparsecow unpack -f - "$dev" ||
      fail "unpack from a pipe to $dev failed"
    cmp ref.raw "$dev" || fail "$cs, $start, from a pipe: $dev differs"
    got=$(used stream)
    [ "$got" -le "$limit" ] ||
      fail "$cs clusters, $start device, from a pipe: $got bytes allocated, qemu-img convert -n leaves $((limit - margin))"

    # --zero=unmap makes the same zero ranges, or fails.
    device unmap $start
    sparsecow unpack -f --zero=unmap img.qcow2 "$dev" ||
      fail "unpack --zero=unmap to $dev failed"
    cmp ref.raw "$dev" || fail "$cs, $start, --zero=unmap: $dev differs"
    got=$(used unmap)
    [ "$got" -le "$limit" ] ||
      fail "$cs clusters, $start device, --zero=unmap: $got bytes allocated, qemu-img convert -n leaves $((limit - margin))"
  done

  # Two devices at once, from a file and from a pipe.
  for how in file pipe; do
    device tee1 old
    d1=$dev
    device tee2 sparse
    d2=$dev
    if [ $how = file ]; then
      sparsecow unpack -f -q img.qcow2 "$d1" "$d2" ||
        fail "unpack to $d1 and $d2 failed"
    else
      cat img.qcow2 | sparsecow unpack -f -q - "$d1" "$d2" ||
        fail "unpack from a pipe to $d1 and $d2 failed"
    fi
    for n in 1 2; do
      d=d$n
      cmp ref.raw "${!d}" || fail "$cs, two targets from a $how: ${!d} differs"
      got=$(used tee$n)
      [ "$got" -le "$limit" ] ||
        fail "$cs clusters, two targets from a $how: ${!d} has $got bytes allocated, qemu-img convert -n leaves $((limit - margin))"
    done
  done

  # A file full of old bytes written in place.
  head -c $size /dev/urandom > inplace.raw
  cp inplace.raw qemu.raw
  qemu-img convert -n -O raw img.qcow2 qemu.raw
  sparsecow unpack -n img.qcow2 inplace.raw || fail "unpack -n failed"
  cmp ref.raw inplace.raw || fail "$cs: unpack -n differs"
  got=$(allocated_bytes inplace.raw)
  limit=$(( $(allocated_bytes qemu.raw) + margin ))
  [ "$got" -le "$limit" ] ||
    fail "$cs clusters, unpack -n: $got bytes allocated, qemu-img convert -n leaves $((limit - margin))"
done

exit 0
