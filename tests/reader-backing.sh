#!/usr/bin/env bash
# sparsecow unpack and map follow backing chains as qemu does: qcow2 and
# raw backing files, chains of depth 1, 3 and 10, backing names relative
# to the overlay's directory (not the current directory), backing files
# shorter and longer than the overlay; and a chain that loops or a
# missing backing file is a clear error.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
. "$srcdir/reader-functions.sh"
requires qemu-img qemu-io python3 timeout cmp

cd "$tmp"
mkdir elsewhere

# Depth 1 on a raw base with data, zeros and a hole.
qemu-img create -q -f raw base1.raw 16M
qemu-io -f raw -c "write -P 0x01 0 4M" -c "write -P 0x02 12M 1M" base1.raw >/dev/null
qemu-img create -q -f qcow2 -b base1.raw -F raw d1.qcow2
qio d1.qcow2 "write -P 0x11 64k 64k" "write -z 1M 1M" "discard 2M 64k" \
             "write -P 0x12 8M 64k" "write -c -P 0x13 12M 64k"
check_image d1.qcow2

# Depth 3 and 10: every layer overwrites, zeroes and discards something,
# so each byte's owner is at a different depth; odd layers are
# compressed, the bottom is raw in one chain and qcow2 in the other.
make_chain () {
  local name=$1 depth=$2 basefmt=$3 cs=$4
  local prev=$name-0.$basefmt fmt=$basefmt i
  if [ "$basefmt" = raw ]; then
    qemu-img create -q -f raw "$prev" 32M
    qemu-io -f raw -c "write -P 0xa0 0 32M" "$prev" >/dev/null
  else
    qemu-img create -q -f qcow2 -o cluster_size=$cs "$prev" 32M
    qio "$prev" "write -P 0xa0 0 32M"
  fi
  for ((i = 1; i <= depth; i++)); do
    local cur=$name-$i.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=$cs -b "$prev" -F $fmt "$cur"
    qio "$cur" "write -P $(( 0xa0 + i )) $(( i * 1024 * 1024 )) 64k" \
               "write -z $(( i * 2 * 1024 * 1024 )) 64k" \
               "discard $(( i * 3 * 65536 )) 64k" \
               "write -P $(( 0xb0 + i )) $(( i * 4096 )) 512"
    if (( i % 2 )); then
      qio "$cur" "write -c -P $(( 0xc0 + i )) $(( 24 * 1024 * 1024 + i * cs )) $cs"
    fi
    prev=$cur fmt=qcow2
  done
}
make_chain c3raw 3 raw 65536
check_image c3raw-3.qcow2
make_chain c3q 3 qcow2 4096
check_image c3q-3.qcow2
make_chain c10 10 qcow2 65536
check_image c10-10.qcow2
check_image c10-5.qcow2
check_pipe c10-10.qcow2
check_pipe c3raw-3.qcow2

# Extended L2 overlays: unallocated subclusters of an allocated cluster
# read from the backing file, zero subclusters do not; over a raw base
# and over a compressed qcow2 base.
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=65536 base1.raw base1c.qcow2
for base in base1.raw:raw base1c.qcow2:qcow2; do
  for cs in 65536 2097152; do
    img=xl2-${base%%.*}-$cs.qcow2
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs \
      -b ${base%%:*} -F ${base##*:} "$img"
    sc=$(( cs / 32 ))
    qio "$img" "write -P 0xe1 $sc 4k" "write -z $(( 4 * sc )) $sc" \
               "write -P 0xe2 $(( 12 * 1024 * 1024 + 3 * sc )) 4k" \
               "write -z -u $(( 12 * 1024 * 1024 + 6 * sc )) $sc" \
               "discard $(( 2 * cs + 2 * sc )) $sc" \
               "write -P 0xe3 $(( 16 * 1024 * 1024 - 4096 )) 4k"
    check_image "$img"
  done
done

# Relative backing names are resolved against the overlay's directory,
# including names with "..", whatever the current directory is.
mkdir -p rel/a rel/b
qemu-img create -q -f raw rel/b/base.raw 4M
qemu-io -f raw -c "write -P 0x61 0 2M" rel/b/base.raw >/dev/null
(cd rel/a && qemu-img create -q -f qcow2 -b ../b/base.raw -F raw mid.qcow2 &&
 qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2)
qio rel/a/top.qcow2 "write -P 0x62 1M 4k"
qemu-img info rel/a/top.qcow2 | grep -q "^backing file: mid.qcow2 " ||
  fail "test setup: backing name is not relative"
qemu-img convert -q -O raw rel/a/top.qcow2 rel.ref
(cd elsewhere && rd_unpack ../rel/a/top.qcow2 rel.out) || fail "unpack with relative backing names failed"
cmp rel.ref elsewhere/rel.out || fail "unpack with relative backing names differs"
(cd / && rd_unpack "$tmp/rel/a/top.qcow2" "$tmp/elsewhere/rel2.out") ||
  fail "unpack with relative backing names from / failed"
cmp rel.ref elsewhere/rel2.out || fail "unpack from / with relative backing names differs"
(cd elsewhere && rd_map ../rel/a/top.qcow2) > rel.map.json || fail "map with relative backing names failed"
map_classes rel.map.json 4194304 > rel.map.txt
qemu-img map --output=json rel/a/top.qcow2 > rel.qmap.json
map_classes rel.qmap.json 4194304 > rel.qmap.txt
diff -u rel.qmap.txt rel.map.txt || fail "map with relative backing names disagrees with qemu-img"
# A file of the same name in the current directory must not be used.
qemu-img create -q -f raw elsewhere/mid.qcow2 4M
(cd elsewhere && rd_unpack ../rel/a/top.qcow2 rel3.out) || fail "unpack with a decoy in cwd failed"
cmp rel.ref elsewhere/rel3.out || fail "unpack read the backing file from the current directory"

# A backing file shorter than the overlay: past its end reads as zeros,
# also in a cluster that straddles its end.  And one longer than the
# overlay: only the overlay's size counts.
qemu-img create -q -f qcow2 -o cluster_size=65536 short.qcow2 1000000
qio short.qcow2 "write -P 0x71 0 999424"
qemu-img create -q -f raw short.raw 1234567
qemu-io -f raw -c "write -P 0x72 0 1234432" short.raw >/dev/null
qemu-img create -q -f qcow2 -b short.qcow2 -F qcow2 over-short.qcow2 8M
qemu-img create -q -f qcow2 -b short.raw -F raw over-short-raw.qcow2 8M
qio over-short.qcow2 "write -P 0x73 2M 64k"
check_image over-short.qcow2
check_image over-short-raw.qcow2
qemu-img create -q -f qcow2 -b c3q-3.qcow2 -F qcow2 over-long.qcow2 3M
check_image over-long.qcow2
# A compressed backing file shrunk into its last cluster: the cluster
# still decodes to data past the file's end, which reads as zeros.
qemu-img create -q -f qcow2 -o cluster_size=65536 shrunk.qcow2 1M
qio shrunk.qcow2 "write -P 0x74 0 1M"
qemu-img convert -q -c -O qcow2 -o cluster_size=65536 shrunk.qcow2 shrunkc.qcow2
qemu-img resize -q --shrink shrunkc.qcow2 999936
qemu-img create -q -f qcow2 -b shrunkc.qcow2 -F qcow2 over-shrunk.qcow2 8M
check_image over-shrunk.qcow2

if [ "$READER_ORACLE" != qemu ]; then
  # A file that backs itself, and a loop of two.
  qemu-img create -q -f qcow2 self.qcow2 1M
  qemu-img rebase -u -b self.qcow2 -F qcow2 self.qcow2
  qemu-img create -q -f qcow2 loop-a.qcow2 1M
  qemu-img create -q -f qcow2 -b loop-a.qcow2 -F qcow2 loop-b.qcow2
  qemu-img rebase -u -b loop-b.qcow2 -F qcow2 loop-a.qcow2
  # The message names the image whose backing file closes the loop.
  for img in self.qcow2 loop-b.qcow2; do
    case $img in
      self.qcow2) by="" ;;
      *) by="backing file loop-a.qcow2: " ;;
    esac
    for cmd in "unpack $img loop.out" "map --json $img" \
               "info --json --backing-chain $img"; do
      # shellcheck disable=SC2086
      expect_fail "^sparsecow: $img: ${by}backing chain loops back to $img\$" \
        rd_sparsecow $cmd
    done
    [ ! -e loop.out ] || fail "failed unpack of $img left loop.out behind"
    # info alone shows the image, as qemu-img info does, and the loop.
    rd_sparsecow info --json "$img" >/dev/null 2>loop.err ||
      fail "info $img"
    grep -q "loop" loop.err || fail "info $img does not say it loops"
  done

  # A missing backing file: the message names it.
  qemu-img create -q -f qcow2 gone.qcow2 1M
  qemu-img create -q -f qcow2 -b gone.qcow2 -F qcow2 orphan.qcow2
  rm gone.qcow2
  expect_fail "gone\.qcow2" rd_sparsecow unpack orphan.qcow2 orphan.out
  [ ! -e orphan.out ] || fail "failed unpack of orphan.qcow2 left orphan.out behind"
  expect_fail "gone\.qcow2" rd_sparsecow map --json orphan.qcow2
fi
