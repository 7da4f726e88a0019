#!/usr/bin/env bash
# sparsecow check on hostile images: 200 single-byte corruptions of the
# metadata clusters of a small image (a deterministic sequence).  Every
# run must end with an exit code of check (0..3, or 63 where the magic
# is gone and qemu-img check sees a raw file), within 10 seconds,
# without a crash or a sanitizer report.  Then 100 corruptions of the
# header, the table pointers and the snapshot table, where qemu-img
# check is the oracle: the same exit code, the same numbers of
# corruptions and leaks and the same text, or a message where qemu
# cannot open the image.
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/check-functions.sh"
requires qemu-img qemu-io od dd timeout

cd "$tmp"

# Small clusters so that the image has several L2 tables, refcounts of
# 2 (a snapshot), compressed and zero clusters, and a bitmap.
img=base.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4k $img 32M
qemu-io -c "write -P 1 0 64k" -c "write -c 8M 4k" -c "write -c 8196k 4k" \
        -c "write -z 16M 64k" -c "write -P 2 31M 8k" $img >/dev/null
qemu-img snapshot -c s1 $img
qemu-io -c "write -P 3 32k 64k" $img >/dev/null
qemu-img bitmap --add $img b0
qemu-io -c "write -P 4 20M 64k" $img >/dev/null  # dirties the bitmap
sparsecow check $img >/dev/null || fail "the base image does not check clean"

# The metadata clusters: header, refcount table and first block, L1,
# every L2 table, snapshot table and the snapshot's L1.
cs=$(( 1 << $(be32 $img 20) ))
l1=$(be64 $img 40)
l1_size=$(be32 $img 36)
rt=$(be64 $img 48)
st=$(be64 $img 64)
meta=(0 "$rt" $(( $(be64 $img "$rt") & OFFSET_MASK )) "$l1" "$st"
      "$(be64 $img "$st")")
for ((i = 0; i < l1_size; i++)); do
  l2=$(( $(be64 $img $(( l1 + 8 * i ))) & OFFSET_MASK ))
  [ "$l2" = 0 ] || meta+=("$l2")
done
# The bitmap directory and the bitmap table, from the header extension.
ext=$(be32 $img 100)
while [ "$(be32 $img "$ext")" != $(( 0x23852875 )) ]; do
  [ "$(be32 $img "$ext")" != 0 ] || fail "no bitmaps extension"
  ext=$(( ext + 8 + ($(be32 $img $(( ext + 4 ))) + 7) / 8 * 8 ))
done
dir=$(be64 $img $(( ext + 8 + 16 )))
meta+=("$dir" "$(be64 $img "$dir")")
[ ${#meta[@]} -ge 10 ] || fail "expected more metadata clusters: ${meta[*]}"

# CHECK_FUZZ_SEED picks another deterministic sequence.
RANDOM=${CHECK_FUZZ_SEED:-20261123}
codes=(0 0 0 0)
for ((n = 0; n < 200; n++)); do
  c=${meta[RANDOM % ${#meta[@]}]}
  # Mostly the first 512 bytes, where headers and the used entries are.
  if (( RANDOM % 4 )); then off=$(( c + RANDOM % 512 ))
  else off=$(( c + (RANDOM * 32768 + RANDOM) % cs )); fi
  byte=$(( RANDOM % 256 ))
  cp $img fuzz.qcow2
  printf "\\x$(printf %02x $byte)" |
    dd of=fuzz.qcow2 bs=1 seek=$off conv=notrunc status=none
  rc=0
  timeout 10 "$SPARSECOW" check fuzz.qcow2 >out 2>err || rc=$?
  if { [ $rc -gt 3 ] && [ $rc != 63 ]; } ||
     grep -q "AddressSanitizer\|runtime error\|Segmentation\|Aborted" err
  then
    cp fuzz.qcow2 "${TMPDIR:-/var/tmp}/sparsecow-check-fuzz-failure.qcow2"
    cat err >&2
    fail "byte $byte at offset $off: exit $rc (image kept in" \
         "${TMPDIR:-/var/tmp}/sparsecow-check-fuzz-failure.qcow2)"
  fi
  if [ $rc = 1 ] && [ ! -s err ]; then
    fail "byte $byte at offset $off: exit 1 without a message"
  fi
  [ $rc != 63 ] || rc=1
  codes[rc]=$(( codes[rc] + 1 ))
done
echo "200 corrupted images checked; exit codes 0/1 or 63/2/3: ${codes[*]}"
# The damage must have been found often, or the test tests nothing.
[ $(( codes[2] + codes[3] )) -ge 50 ] || fail "too few problems found"

# ---- The header, the table pointers and the snapshot table against
# qemu-img check.  Half of the corruptions are a byte, half a whole
# 64-bit field (an offset or a count) with a random value of one of a
# few magnitudes, so that tables land in, just past and far past the
# end of the file.
keep () {
  cp fuzz.qcow2 "${TMPDIR:-/var/tmp}/sparsecow-check-fuzz-failure.qcow2"
  fail "$* (image kept in" \
       "${TMPDIR:-/var/tmp}/sparsecow-check-fuzz-failure.qcow2)"
}
regions=("0 104" "$st 64" "$rt 64" "$l1 64")
qcodes=(0 0 0 0)
for ((n = 0; n < 100; n++)); do
  r=(${regions[RANDOM % ${#regions[@]}]})
  off=$(( r[0] + RANDOM % r[1] ))
  cp $img fuzz.qcow2
  if (( RANDOM % 2 )); then
    put_bytes fuzz.qcow2 $off "$(printf %02x $(( RANDOM % 256 )))"
  else
    v=$(( (RANDOM << 48) ^ (RANDOM << 33) ^ (RANDOM << 18) ^ RANDOM ))
    case $(( RANDOM % 4 )) in
    0) v=$(( v & 0xffff ));;
    1) v=$(( v & 0xfffff000 ));;
    2) v=$(( v & 0xfffffff000 ));;
    esac
    off=$(( off / 8 * 8 ))
    put_bytes fuzz.qcow2 $off "$(printf %016x $v)"
  fi
  qrc=0; src=0
  timeout 20 qemu-img check --output=json fuzz.qcow2 >q.json 2>q.err ||
    qrc=$?
  timeout 10 "$SPARSECOW" check --json fuzz.qcow2 >s.json 2>s.err || src=$?
  what="corruption $n at offset $off"
  if grep -q "AddressSanitizer\|runtime error\|Segmentation\|Aborted" s.err
  then
    cat s.err >&2; keep "$what: crash or sanitizer report"
  fi
  case $qrc in
  0|2|3)
    [ "$src" = "$qrc" ] || {
      head -5 q.err s.err >&2; keep "$what: qemu-img check $qrc, ours $src"; }
    for f in corruptions leaks; do
      [ "$(jfield q.json $f)" = "$(jfield s.json $f)" ] ||
        keep "$what: $f: qemu $(jfield q.json $f), ours $(jfield s.json $f)"
    done
    qcodes[qrc]=$(( qcodes[qrc] + 1 ))
    ;;
  1|63)                         # 63: not a qcow2 image for qemu
    [ "$src" = "$qrc" ] && [ -s s.err ] ||
      keep "$what: qemu-img check cannot check it ($qrc), ours exited $src"
    qcodes[1]=$(( qcodes[1] + 1 ))
    ;;
  *) keep "$what: qemu-img check exited $qrc";;
  esac
  ( compare_text fuzz.qcow2 "$qrc" ) || keep "$what: text or exit differ"
done
echo "100 damaged headers and tables compared with qemu-img check;" \
     "its exit codes 0/1/2/3: ${qcodes[*]}"
[ $(( qcodes[2] + qcodes[3] )) -ge 20 ] && [ "${qcodes[1]}" -ge 10 ] ||
  fail "too few images that qemu-img check finds damaged or refuses"
