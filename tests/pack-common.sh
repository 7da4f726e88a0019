# Helpers for the pack tests: source it after functions.sh.
#   . "$srcdir/pack-common.sh"
# qemu-img is the oracle throughout: an image passes when qemu-img
# checks it clean, compares it equal to its source and reports the
# format options that were asked for.

requires qemu-img jq cmp

# Does this build have an unpack command yet?  (Checked once.)
_unpack_works=
unpack_available () {
  if [ -z "$_unpack_works" ]; then
    local out rc=0
    out=$("$SPARSECOW" unpack 2>&1) || rc=$?
    if grep -q "not implemented" <<<"$out"; then
      _unpack_works=no
    else
      _unpack_works=yes
    fi
  fi
  [ "$_unpack_works" = yes ]
}

# check_image SRC IMG CLUSTER_SIZE COMPAT CODEC REFCOUNT_BITS
#   CODEC: none, deflate or zstd.  Fails the test on any mismatch.
check_image () {
  local src=$1 img=$2 cs=$3 compat=$4 codec=$5 rbits=$6
  local what="$src -> $img (cluster $cs, compat $compat, $codec, refcount $rbits)"
  local info want_ct size vsize

  qemu-img check -q "$img" >/dev/null 2>&1 || {
    qemu-img check "$img" >&2 || :; fail "qemu-img check: $what"; }
  if [ "$codec" != none ] && { [ "$cs" = 512 ] || [ "$cs" = 2097152 ]; }; then
    # qemu-img compare decompresses a cluster again for every small
    # read, which takes seconds with 2 MiB clusters and with many 512
    # byte ones; qemu-img convert reads each cluster once.
    rm -f "$tmp/.converted"
    qemu-img convert -f qcow2 -O raw "$img" "$tmp/.converted" ||
      fail "qemu-img convert: $what"
    qemu-img compare -q -f raw -F raw "$src" "$tmp/.converted" ||
      fail "qemu-img convert + compare: $what"
    rm -f "$tmp/.converted"
  else
    qemu-img compare -q -f raw -F qcow2 "$src" "$img" ||
      fail "qemu-img compare: $what"
  fi

  # qemu sees whole 512-byte sectors: a partial last sector is padded.
  size=$(stat -c %s "$src")
  vsize=$(( (size + 511) / 512 * 512 ))
  want_ct=zlib
  [ "$codec" = zstd ] && want_ct=zstd
  info=$(qemu-img info --output=json "$img" |
    jq -r '[.format, ."cluster-size", ."format-specific".data.compat,
            ."format-specific".data."refcount-bits",
            ."format-specific".data."compression-type",
            ."virtual-size"] | join(" ")')
  [ "$info" = "qcow2 $cs $compat $rbits $want_ct $vsize" ] ||
    fail "qemu-img info says '$info': $what"

  if unpack_available; then
    rm -f "$tmp/.unpacked"
    sparsecow unpack "$img" "$tmp/.unpacked" || fail "unpack: $what"
    if [ "$size" = "$vsize" ] && [ "$size" -gt $((64 << 20)) ]; then
      # Large sources are mostly holes here: let qemu-img compare them
      # by their allocation instead of reading every zero.
      [ "$(stat -c %s "$tmp/.unpacked")" = "$size" ] ||
        fail "unpacked size: $what"
      qemu-img compare -q -f raw -F raw "$src" "$tmp/.unpacked" ||
        fail "unpacked differs: $what"
    elif [ "$size" = "$vsize" ]; then
      cmp "$src" "$tmp/.unpacked" || fail "unpacked differs: $what"
    else
      [ "$(stat -c %s "$tmp/.unpacked")" = "$vsize" ] ||
        fail "unpacked size: $what"
      cmp -n "$size" "$src" "$tmp/.unpacked" || fail "unpacked differs: $what"
      cmp -i "$size:0" -n $((vsize - size)) "$tmp/.unpacked" /dev/zero ||
        fail "unpacked padding is not zero: $what"
    fi
    rm -f "$tmp/.unpacked"
  fi
}

# pack_and_check SRC CLUSTER_SIZE COMPAT CODEC REFCOUNT_BITS [PACK OPTIONS]
pack_and_check () {
  local src=$1 cs=$2 compat=$3 codec=$4 rbits=$5
  shift 5
  local img="$tmp/.img.qcow2" copt=()

  [ "$codec" = none ] || copt=(--compress="$codec")
  rm -f "$img"
  sparsecow pack -q "${copt[@]}" --cluster-size "$cs" --compat "$compat" \
    --refcount-bits "$rbits" "$@" "$src" "$img" ||
    fail "pack $src (cluster $cs, compat $compat, $codec, refcount $rbits)"
  check_image "$src" "$img" "$cs" "$compat" "$codec" "$rbits"
}

# The full matrix of format options on one source.
full_matrix () {
  local src=$1 cs codec rbits
  for cs in 512 4096 65536 2097152; do
    for codec in none deflate; do
      pack_and_check "$src" "$cs" 0.10 "$codec" 16
    done
    for codec in none deflate zstd; do
      for rbits in 1 16 64; do
        pack_and_check "$src" "$cs" 1.1 "$codec" "$rbits"
      done
    done
  done
}

# A reduced matrix for large sources: every option value appears at
# least once.
reduced_matrix () {
  local src=$1
  pack_and_check "$src" 65536 1.1 none 16
  pack_and_check "$src" 65536 1.1 deflate 16
  pack_and_check "$src" 4096 1.1 zstd 1
  pack_and_check "$src" 2097152 1.1 deflate 64
  pack_and_check "$src" 512 0.10 none 16
  pack_and_check "$src" 65536 0.10 deflate 16
}

# Ranges of a qcow2 image that hold data, as "start end" lines.
data_ranges () {
  qemu-img map --output=json "$1" |
    jq -r '.[] | select(.data) | "\(.start) \(.start + .length)"'
}

# Fail if any data range of IMG overlaps [start, end).
assert_no_data_in () {
  local img=$1 start=$2 end=$3 s e
  while read -r s e; do
    if [ "$s" -lt "$end" ] && [ "$e" -gt "$start" ]; then
      fail "$img: data at [$s, $e) inside the zero range [$start, $end)"
    fi
  done < <(data_ranges "$img")
}
