#!/usr/bin/env bash
# The digest pack embeds, and verify IMAGE: the header extension and
# autoclear bit read by a script from the qcow2 specification, the
# digest recomputed by tests/verify-digest.py over qemu-img convert -O
# raw output, qemu-img check and info on images that hold it, one
# flipped byte in a data cluster (at the host offset qemu-img map
# gives), and images that qemu-io and qemu-img amend opened for writing,
# which verify must call stale.  Uncompressed images with the digest
# (hashed beside the copy) are those without it but for the extension:
# cmp and the file's SEEK_DATA map.
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io qemu-nbd python3

cd "$tmp"
MiB=$((1024 * 1024))

# The digest extension of an image, read as the specification frames
# header extensions: "BIT BLOCK-SIZE SIZE HEX MAP" (BIT: autoclear bit
# 63; MAP: "map-ok" when the extension's mapping fingerprint is SHA-256
# of the L1 table and the L2 tables the file holds, as sparsecow(1)'s
# DIGEST defines it, "map-differs", or "no-map" for the 48-byte form),
# or "none".
header_digest () {
  python3 - "$1" <<'EOF'
import struct, sys
with open(sys.argv[1], "rb") as f:
    h = f.read(65536)
magic, version = struct.unpack(">4sI", h[:8])
assert magic == b"QFI\xfb"
if version < 3:
    print("none"); sys.exit()
autoclear, = struct.unpack(">Q", h[88:96])
pos, = struct.unpack(">I", h[100:104])
while pos + 8 <= len(h):
    t, n = struct.unpack(">II", h[pos:pos + 8])
    if t == 0:
        break
    if t == 0x1e3d81fc:
        kind, block, size = struct.unpack(">IIQ", h[pos + 8:pos + 24])
        assert kind == 1 and n in (48, 80)
        state = "no-map"
        if n == 80:
            import hashlib
            data = open(sys.argv[1], "rb").read()
            cbits, = struct.unpack(">I", data[20:24])
            l1_size, l1_off = struct.unpack(">IQ", data[36:48])
            cs = 1 << cbits
            l1 = data[l1_off:l1_off + 8 * l1_size]
            m = hashlib.sha256(l1)
            for i in range(l1_size):
                l2 = struct.unpack(">Q", l1[8 * i:8 * i + 8])[0] & 0x00fffffffffffe00
                if l2:
                    m.update(data[l2:l2 + cs])
            state = "map-ok" if m.digest() == h[pos + 56:pos + 88] else "map-differs"
        print(autoclear >> 63, block, size, h[pos + 24:pos + 56].hex(), state)
        sys.exit()
    pos += 8 + (n + 7) // 8 * 8
print("none")
EOF
}

# check_digest IMAGE: clean for qemu-img, the bit set, the digest that
# of the guest content, and verify agrees.
check_digest () {
  local img=$1 bit block size hex want
  qemu-img check -q "$img" || fail "$img: qemu-img check is not clean"
  qemu-img info "$img" >/dev/null || fail "$img: qemu-img info fails"
  read -r bit block size hex map <<<"$(header_digest "$img")"
  [ "$bit" = 1 ] || fail "$img: no digest, or its autoclear bit is clear"
  [ "$map" = map-ok ] || fail "$img: the mapping fingerprint: $map"
  [ "$size" = "$(qemu-img info --output=json "$img" |
                 python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" ] ||
    fail "$img: the digest is for size $size"
  qemu-img convert -O raw "$img" guest.raw
  want=$(python3 "$srcdir/verify-digest.py" guest.raw "$block")
  [ "$hex" = "$want" ] || fail "$img: digest $hex, recomputed $want"
  sparsecow verify -q "$img" || fail "$img: verify fails on a clean image"
}

# The source: data, a hole, a cluster of zero bytes written as data,
# data with zeros inside, and a size that is not a multiple of a
# cluster nor of a sector (the image rounds it up to 512 bytes).
size=$((9 * MiB + 1000))
qemu-img create -q -f raw src.raw $size
head -c $((MiB + 4096)) /dev/urandom |
  dd of=src.raw bs=4096 seek=16 conv=notrunc status=none
qemu-io -f raw -c "write -P 0x5a 4M 512k" -c "write -P 0 5M 128k" \
  -c "write -P 0x33 $((size - 700)) 700" src.raw >/dev/null

sparsecow pack -q --digest src.raw plain.qcow2
check_digest plain.qcow2
# By default, compressed images get one.
sparsecow pack -q -c src.raw deflate.qcow2
check_digest deflate.qcow2
sparsecow pack -q -c zstd src.raw zstd.qcow2
check_digest zstd.qcow2
sparsecow pack -q --digest -S 0 src.raw s0.qcow2
check_digest s0.qcow2
sparsecow pack -q --digest --cluster-size 4k src.raw small.qcow2
check_digest small.qcow2
sparsecow pack -q -c --cluster-size 2M src.raw large.qcow2
check_digest large.qcow2
cat src.raw | sparsecow pack -q --digest - pipe.qcow2
check_digest pipe.qcow2
# Re-packing a qcow2 image, one that qemu-img wrote too.
qemu-img convert -f raw -O qcow2 src.raw qemu.qcow2
sparsecow pack -q --digest qemu.qcow2 repack.qcow2
check_digest repack.qcow2
sparsecow pack -q -c deflate.qcow2 repack2.qcow2
check_digest repack2.qcow2
# From an NBD export, whose clusters pack writes to their place as it
# scans them.
sparsecow pack -q -c -- [ qemu-nbd -r -f raw src.raw ] nbd-c.qcow2
check_digest nbd-c.qcow2
sparsecow pack -q --digest -- [ qemu-nbd -r -f raw src.raw ] nbd.qcow2
check_digest nbd.qcow2
# The same content, the same 64 KiB blocks: the same digest, whatever
# the cluster size and compression.
[ "$(header_digest plain.qcow2)" = "$(header_digest zstd.qcow2)" ] &&
[ "$(header_digest plain.qcow2)" = "$(header_digest large.qcow2)" ] ||
  fail "the digest of one content differs between images"
# An empty source.
: >empty.raw
sparsecow pack -q --digest empty.raw empty.qcow2
check_digest empty.qcow2

# Uncompressed from a file, the digest is hashed beside the copy and
# stored in the header after it: the image is the one packed without
# the digest, byte for byte and hole for hole, but for the extension
# and its autoclear bit.  strip_digest removes both as the
# specification frames them (the extension is the last one), and the
# kernel's SEEK_DATA map gives the holes.
# digest_edit IMAGE strip | IMAGE patch FIELD-OFFSET HEX: remove the
# digest extension (zeros in its place) and its autoclear bit, or write
# HEX at FIELD-OFFSET of the extension's data.
digest_edit () {
  python3 - "$@" <<'EOF2'
import struct, sys
path, mode = sys.argv[1], sys.argv[2]
with open(path, "r+b") as f:
    h = bytearray(f.read(65536))
    pos, = struct.unpack(">I", h[100:104])
    while True:
        t, n = struct.unpack(">II", h[pos:pos + 8])
        assert t != 0, "no digest extension"
        if t == 0x1e3d81fc:
            break
        pos += 8 + (n + 7) // 8 * 8
    if mode == "patch":
        f.seek(pos + 8 + int(sys.argv[3]))
        f.write(bytes.fromhex(sys.argv[4]))
        sys.exit(0)
    end = pos + 8 + n
    assert not any(h[end:512]), "an extension after the digest"
    h[pos:end] = bytes(end - pos)
    autoclear, = struct.unpack(">Q", h[88:96])
    h[88:96] = struct.pack(">Q", autoclear & ~(1 << 63))
    f.seek(0)
    f.write(h[:512])
EOF2
}
strip_digest () { digest_edit "$1" strip; }   # IMAGE: in place
# Drop FILE's pages from the page cache from byte START on, so that the
# scan finds them not in memory there.
uncache () {                    # FILE START
  python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.fsync(fd)
os.posix_fadvise(fd, int(sys.argv[2]), 0, os.POSIX_FADV_DONTNEED)' "$1" "$2"
}
# same_but_digest IMAGE-WITH IMAGE-WITHOUT
same_but_digest () {
  check_digest "$1"
  qemu-img compare -q -f raw -F qcow2 src.raw "$1" ||
    fail "$1 differs from its source"
  [ "$(header_digest "$2")" = none ] || fail "$2 holds a digest"
  [ "$(data_map "$1")" = "$(data_map "$2")" ] ||
    fail "$1 and $2 have different holes"
  cp "$1" stripped.qcow2
  strip_digest stripped.qcow2
  cmp stripped.qcow2 "$2" ||
    fail "$1 differs from $2 elsewhere than in the digest"
}
n=0
for opts in "" "-S 0" "--cluster-size 4k" "--cluster-size 2M" \
            "-o refcount_bits=1" uncached half-cached; do
  n=$((n + 1))
  case $opts in
    uncached) uncache src.raw 0; opts= ;;
    half-cached) uncache src.raw $((5 * MiB)); opts= ;;
  esac
  # shellcheck disable=SC2086
  sparsecow pack -q --digest $opts src.raw "with-$n.qcow2"
  # shellcheck disable=SC2086
  sparsecow pack -q --no-digest $opts src.raw "without-$n.qcow2"
  same_but_digest "with-$n.qcow2" "without-$n.qcow2"
done
# Into an existing file written in place, whose magic goes in last.
head -c $((3 * MiB)) /dev/urandom >in-place-with.qcow2
cp in-place-with.qcow2 in-place-without.qcow2
sparsecow pack -q -n --digest src.raw in-place-with.qcow2
sparsecow pack -q -n --no-digest src.raw in-place-without.qcow2
same_but_digest in-place-with.qcow2 in-place-without.qcow2
# One thread.
sparsecow pack -q -j 1 --digest src.raw one.qcow2
same_but_digest one.qcow2 without-1.qcow2

# Opening read-only leaves the digest current.
qemu-img info plain.qcow2 >/dev/null
qemu-img check -q plain.qcow2
qemu-io -r -c "read 0 4k" plain.qcow2 >/dev/null
sparsecow verify -q plain.qcow2 || fail "a read-only open made it fail"

# One flipped byte in a data cluster.
cp plain.qcow2 flip.qcow2
host=$(qemu-img map --output=json flip.qcow2 | python3 -c '
import json, sys
print([e for e in json.load(sys.stdin) if e["data"]][0]["offset"])')
off=$((host + 100))
old=$(od -An -tu1 -j "$off" -N1 flip.qcow2 | tr -d ' ')
printf "\\x$(printf %02x $((old ^ 0xff)))" |
  dd of=flip.qcow2 bs=1 seek="$off" conv=notrunc status=none
qemu-img check -q flip.qcow2 || fail "the flipped image does not check clean"
qemu-img compare -q flip.qcow2 plain.qcow2 &&
  fail "the flipped byte did not change the content"
rc=0; out=$(sparsecow verify flip.qcow2) || rc=$?
[ "$rc" = 1 ] || fail "verify of a flipped byte: status $rc, not 1 ($out)"
grep -q mismatch <<<"$out" || fail "verify of a flipped byte says '$out'"

# A damaged extension: an unknown kind is an error; a digest for
# another virtual size, with the bit set, is stale, as after a resize
# that kept the bit (below), and says both sizes.
patch_digest () { digest_edit "$1" patch "$2" "$3"; }  # IMAGE FIELD-OFFSET HEX
cp plain.qcow2 kind.qcow2
patch_digest kind.qcow2 0 00000002
rc=0; sparsecow verify kind.qcow2 2>err || rc=$?
[ "$rc" = 2 ] && grep -q "unknown kind" err ||
  fail "verify of a digest of unknown kind: status $rc"
cp plain.qcow2 size.qcow2
patch_digest size.qcow2 8 0000000000100000
rc=0; out=$(sparsecow verify size.qcow2) || rc=$?
[ "$rc" = 3 ] && grep -qF "the digest's $((0x100000))" <<<"$out" ||
  fail "verify of a digest for another size: status $rc, '$out'"
qemu-img check -q size.qcow2 || fail "qemu-img check of size.qcow2"

# Opened for writing by qemu: the bit is cleared, the extension kept,
# and verify calls the digest stale.
for how in io amend; do
  cp plain.qcow2 "$how.qcow2"
  case $how in
    io) qemu-io -c "write -P 0x11 0 4k" "$how.qcow2" >/dev/null ;;
    amend) qemu-img amend -o lazy_refcounts=on "$how.qcow2" ;;
  esac
  read -r bit block _ <<<"$(header_digest "$how.qcow2")"
  [ "$bit" = 0 ] && [ -n "$block" ] ||
    fail "$how: qemu did not keep the extension and clear the bit"
  qemu-img check -q "$how.qcow2" || fail "$how: qemu-img check not clean"
  rc=0; out=$(sparsecow verify "$how.qcow2") || rc=$?
  [ "$rc" = 3 ] && grep -q stale <<<"$out" ||
    fail "verify after qemu $how: status $rc, '$out'"
done

# qemu keeps the bit when it opens an image read-only and then makes it
# writable, as qemu-img commit does with the image it commits into.
# Where it allocated clusters (a write into a compressed cluster, or
# into a hole), the L1 and L2 tables differ from the fingerprint and
# the digest is stale; an uncompressed cluster overwritten in place
# changes no table, and the digest does not match (as documented).
commit_into () {                # BASE OFFSET: write 4 KiB there through an overlay
  rm -f top.qcow2
  qemu-img create -q -f qcow2 -b "$1" -F qcow2 top.qcow2
  qemu-io -c "write -P 0x44 $2 4k" top.qcow2 >/dev/null
  qemu-img commit -q top.qcow2
  qemu-img check -q "$1" || fail "$1: qemu-img check after the commit"
}
for case in compressed hole in-place; do
  case $case in
    compressed) cp deflate.qcow2 commit.qcow2; off=$((4 * MiB)) ;;
    hole) cp plain.qcow2 commit.qcow2; off=$((8 * MiB)) ;;
    in-place) cp plain.qcow2 commit.qcow2; off=$((64 * 1024)) ;;
  esac
  [ "$case" != hole ] ||
    qemu-img map --output=json commit.qcow2 | python3 -c '
import json, sys
off = int(sys.argv[1])
for r in json.load(sys.stdin):
    if r["start"] <= off < r["start"] + r["length"]:
        sys.exit(1 if r["data"] else 0)' "$off" ||
    fail "$case: the base holds data at $off"
  commit_into commit.qcow2 $off
  read -r bit _ _ _ map <<<"$(header_digest commit.qcow2)"
  [ "$bit" = 1 ] || fail "$case: qemu-img commit cleared the autoclear bit"
  rc=0; out=$(sparsecow verify commit.qcow2) || rc=$?
  case $case in
    in-place)
      [ "$map" = map-ok ] || fail "$case: the tables changed ($map)"
      [ "$rc" = 1 ] && grep -q mismatch <<<"$out" ||
        fail "verify after a commit in place: status $rc, '$out'" ;;
    *)
      [ "$map" = map-differs ] || fail "$case: the tables did not change ($map)"
      [ "$rc" = 3 ] && grep -q "stale: another program has allocated or moved clusters" <<<"$out" ||
        fail "verify after a commit ($case): status $rc, '$out'" ;;
  esac
done
# A resize by a qemu that reopened the image writable keeps the bit,
# and within the size the L1 table covers, the tables: the virtual size
# is not the digest's, and the digest is stale.
for grow in +1M 1G; do
  cp plain.qcow2 resized.qcow2
  qemu-io -r -f qcow2 -c 'reopen -w' -c "truncate $grow" resized.qcow2 >/dev/null ||
    fail "qemu-io could not resize resized.qcow2 ($grow)"
  read -r bit _ size _ _ <<<"$(header_digest resized.qcow2)"
  [ "$bit" = 1 ] || fail "resize $grow: qemu-io cleared the autoclear bit"
  now=$(qemu-img info --output=json resized.qcow2 |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])')
  [ "$now" != "$size" ] || fail "resize $grow: the virtual size is still $size"
  rc=0; out=$(sparsecow verify resized.qcow2) || rc=$?
  [ "$rc" = 3 ] && grep -q "stale: another program has resized the image" <<<"$out" &&
    grep -qF "virtual size is $now bytes, the digest's $size" <<<"$out" ||
    fail "verify after a resize to $grow: status $rc, '$out'"
done
# The 48-byte form (no fingerprint), as earlier versions wrote it: the
# digest is still checked.
cp deflate.qcow2 short.qcow2
python3 - short.qcow2 <<'EOF2'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    h = bytearray(f.read(4096))
    pos, = struct.unpack(">I", h[100:104])
    while True:
        t, n = struct.unpack(">II", h[pos:pos + 8])
        assert t != 0
        if t == 0x1e3d81fc:
            assert n == 80
            h[pos + 4:pos + 8] = struct.pack(">I", 48)
            h[pos + 56:pos + 88] = bytes(32)
            break
        pos += 8 + (n + 7) // 8 * 8
    f.seek(0)
    f.write(h)
EOF2
read -r _ _ _ _ map <<<"$(header_digest short.qcow2)"
[ "$map" = no-map ] || fail "short.qcow2: $map"
sparsecow verify -q short.qcow2 || fail "verify of the 48-byte form"
qemu-io -c "write -P 0x11 0 4k" short.qcow2 >/dev/null
rc=0; sparsecow verify -q short.qcow2 || rc=$?
[ "$rc" = 3 ] || fail "verify of the 48-byte form after a write: status $rc"

# Damaged compressed clusters: stored bytes that no longer decode are
# content that is not what was packed (exit 1, as for a flipped byte),
# reported at the guest offset of the first such cluster, not an error.
# The clusters are found from the L1 and L2 tables as the specification
# lays them out; qemu-io, which fails to read them, is the oracle that
# they no longer decode.
compressed_clusters () {        # IMAGE: "GUEST HOST" per compressed cluster
  python3 - "$1" <<'EOF2'
import struct, sys
with open(sys.argv[1], "rb") as f:
    data = f.read()
cbits, = struct.unpack(">I", data[20:24])
l1_size, l1_off = struct.unpack(">IQ", data[36:48])
cs = 1 << cbits
n = cs // 8
x = 62 - (cbits - 8)
for i in range(l1_size):
    l1e, = struct.unpack(">Q", data[l1_off + 8 * i:l1_off + 8 * i + 8])
    l2 = l1e & 0x00fffffffffffe00
    if not l2:
        continue
    for j in range(n):
        e, = struct.unpack(">Q", data[l2 + 8 * j:l2 + 8 * j + 8])
        if e & (1 << 62):
            print((i * n + j) * cs, e & ((1 << x) - 1))
EOF2
}
for codec in deflate zstd; do
  cp $codec.qcow2 damaged.qcow2
  compressed_clusters damaged.qcow2 > clusters
  [ "$(wc -l < clusters)" -ge 5 ] || fail "$codec: too few compressed clusters"
  # The fourth and the fifth compressed clusters: a deflate stream
  # whose first block has the reserved type, a zstd frame without its
  # magic number.
  for k in 4 5; do
    read -r guest host <<<"$(sed -n ${k}p clusters)"
    case $codec in
      deflate) printf '\xff' ;;
      zstd) printf '\0\0\0\0' ;;
    esac | dd of=damaged.qcow2 bs=1 seek="$host" conv=notrunc status=none
    [ $k = 4 ] && first=$guest
  done
  qio=$(qemu-io -r -f qcow2 -c "read $first 512" damaged.qcow2 2>&1 || :)
  grep -q "read failed" <<<"$qio" || fail "$codec: qemu-io reads the damaged cluster at $first"
  rc=0; out=$(sparsecow verify damaged.qcow2 2>err) || rc=$?
  [ "$rc" = 1 ] || { cat err >&2; fail "$codec: verify of a cluster that does not decode: status $rc, not 1 ($out)"; }
  grep -q "^damaged.qcow2: digest mismatch at offset $first: the compressed cluster there does not decode" <<<"$out" ||
    fail "$codec: verify says '$out'"
  grep -q "^sparsecow: .*damaged.qcow2: compressed cluster at host offset .* does not decode" err || {
    cat err >&2; fail "$codec: verify does not say why the cluster does not decode"; }
  # One thread, and quiet: the same verdict.
  rc=0; sparsecow verify -q -j 1 damaged.qcow2 >out 2>&1 || rc=$?
  [ "$rc" = 1 ] && [ ! -s out ] || fail "$codec: verify -q -j 1: status $rc, output '$(cat out)'"
done

# No digest: --no-digest, uncompressed by default, and version 2
# images, which have no autoclear bits.
sparsecow pack -q -c --no-digest src.raw none.qcow2
sparsecow pack -q src.raw default.qcow2
sparsecow pack -q -c --compat=0.10 src.raw v2.qcow2
expect_fail "--compat=0.10: --digest needs compat=1.1" sparsecow pack --digest --compat=0.10 \
  src.raw v2-digest.qcow2
for img in none.qcow2 default.qcow2 v2.qcow2 qemu.qcow2; do
  [ "$(header_digest "$img")" = none ] || fail "$img holds a digest"
  rc=0; sparsecow verify "$img" 2>err || rc=$?
  [ "$rc" = 2 ] && grep -q "no digest" err ||
    fail "verify of $img without a digest: status $rc"
done
exit 0
