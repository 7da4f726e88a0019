#!/usr/bin/env bash
# sparsecow info on damaged images, against qemu-img info: where
# qemu-img info shows an image (an L1 or refcount table past the end
# of the file, an L2 table past the end, reserved bits in an L1 entry,
# a snapshot table that runs past the end, a data file bit without a
# data file, a LUKS header with fields qemu accepts), info shows it too, with every field qemu-img prints and
# the damage on stderr; where qemu-img info refuses one, info refuses
# it.  map, unpack and verify go on refusing every damaged image.
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/check-functions.sh"
requires qemu-img qemu-io python3 od dd truncate

cd "$tmp"

# same_json QEMU-JSON SPARSECOW-JSON: every member qemu-img prints, at
# any depth, is in sparsecow's with the same value; sparsecow adds
# only its own "sparsecow" member to each image.
same_json () {
  python3 "${srcdir:-$(dirname "$0")}/info-json-same.py" "$1" "$2" || fail "$(cat "$2")"
}

crashed () {
  ! grep -q "AddressSanitizer\|runtime error\|Segmentation\|Aborted" "$1"
}

# shown IMAGE PATTERN: qemu-img info shows the damaged IMAGE; so does
# sparsecow info, field by field, in JSON and in text, exit 0, with
# PATTERN (why) and "damaged" on stderr.  The reader refuses it.  (The
# copy is written back first: its "actual-size" must not change between
# the two; settle in functions.sh.)
shown () {
  local img=$1 pattern=$2 rc=0 out
  settle "$img"
  qemu-img info --output=json "$img" >q.json 2>q.err ||
    fail "$img: qemu-img info fails: $(cat q.err) (the test is wrong)"
  sparsecow info --output=json "$img" >s.json 2>s.err || rc=$?
  crashed s.err || { cat s.err >&2; fail "$img: crash"; }
  [ "$rc" = 0 ] || fail "$img: qemu-img info shows it, sparsecow info exits $rc: $(cat s.err)"
  same_json q.json s.json
  grep -Eq -- "^sparsecow: $img: .*$pattern.*the image is damaged" s.err ||
    fail "$img: info does not say what is damaged: $(cat s.err)"
  python3 -c 'import json, sys; d = json.load(open(sys.argv[1]))["sparsecow"]
assert d["damage"] and "allocated-clusters" not in d' s.json ||
    fail "$img: no damage member in place of the cluster counts"
  rc=0
  out=$(sparsecow info "$img" 2>s.err) || rc=$?
  [ "$rc" = 0 ] && grep -q "^Damage: " <<<"$out" &&
    grep -q "^virtual size: .*($(jq_size q.json) bytes)" <<<"$out" ||
    fail "$img: info (text) exits $rc: $out $(cat s.err)"
  reader_refuses "$img"
}

jq_size () {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["virtual-size"])' "$1"
}

# refused IMAGE: qemu-img info refuses IMAGE; so does sparsecow info,
# with a message, in JSON and in text.
refused () {
  local img=$1 rc=0 q=0
  qemu-img info --output=json "$img" >q.json 2>q.err || q=$?
  [ "$q" = 1 ] || fail "$img: qemu-img info exits $q (the test is wrong)"
  expect_fail "^sparsecow: $img: " sparsecow info --output=json "$img"
  expect_fail "^sparsecow: $img: " sparsecow info "$img"
}

# The reader (map, unpack, verify) refuses a damaged image, as before.
reader_refuses () {
  local rc=0
  expect_fail "^sparsecow: $1: " sparsecow map --output=json "$1"
  expect_fail "^sparsecow: $1: " sparsecow unpack "$1" refused.raw
  [ ! -e refused.raw ] || fail "unpack of damaged $1 left a target"
  truncate -s 64M zero.raw
  sparsecow verify "$1" zero.raw >/dev/null 2>v.err || rc=$?
  [ "$rc" = 2 ] && grep -q "^sparsecow: $1: " v.err ||
    fail "verify $1: exit $rc, not 2: $(cat v.err)"
}

# ---- the images to damage: data, two snapshots, an overlay.
qemu-img create -q -f qcow2 data.qcow2 64M
qemu-io -c "write -P 1 0 1M" -c "write -P 2 10M 300k" data.qcow2 >/dev/null
qemu-img create -q -f qcow2 snap.qcow2 64M
qemu-io -c "write -P 1 0 1M" snap.qcow2 >/dev/null
qemu-img snapshot -c s1 snap.qcow2
qemu-img snapshot -c s2 snap.qcow2
mkdir sub
qemu-img create -q -f qcow2 sub/base.qcow2 64M
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 sub/top.qcow2
qemu-io -c "write -P 3 0 64k" sub/top.qcow2 >/dev/null

img=data.qcow2
cs=$(( 1 << $(be32 $img 20) ))
size=$(stat -c %s $img)
l1=$(be64 $img 40)
l1e=$(be64 $img "$l1")
[ $(( size % cs )) = 0 ] && [ "$(be32 $img 36)" = 1 ] &&
  [ "$l1e" != 0 ] || fail "data layout"
damage () { cp "$img" "$1"; }

# The L1 table wholly and partly past the end of the file.
damage l1-past.qcow2; put_be64 l1-past.qcow2 40 $(( size + cs ))
shown l1-past.qcow2 "L1 table .* beyond the end of the file"
damage l1-partly.qcow2
dd if=$img of=l1-partly.qcow2 bs=512 skip=$(( l1 / 512 )) \
   seek=$(( size / 512 )) count=1 conv=notrunc status=none
put_be64 l1-partly.qcow2 40 "$size"; put_be32 l1-partly.qcow2 36 1000
shown l1-partly.qcow2 "L1 table .* beyond the end of the file"
# Reserved bits (1..8) in an L1 entry.
damage l1-reserved.qcow2; put_be64 l1-reserved.qcow2 "$l1" $(( l1e | 2 ))
shown l1-reserved.qcow2 "L1 entry 0 .* reserved bits"
# An L2 table past the end of the file.
damage l2-past.qcow2
put_be64 l2-past.qcow2 "$l1" $(( COPIED | (size + 4 * cs) ))
shown l2-past.qcow2 "L2 table .* past the end of the file"
# The refcount table past the end of the file, and at offset 0.
damage rt-past.qcow2; put_be64 rt-past.qcow2 48 $(( size + cs ))
shown rt-past.qcow2 "refcount table .* beyond the end of the file"
damage rt-0.qcow2; put_be64 rt-0.qcow2 48 0
shown rt-0.qcow2 "refcount table offset 0"
# The external data file bit without a data file name.
damage data-file-bit.qcow2; put_be64 data-file-bit.qcow2 72 4
shown data-file-bit.qcow2 "external data file"

# What qemu-img info cannot open either: a misaligned L1 table, no
# refcount table, a misaligned or impossible snapshot table.
damage l1-misaligned.qcow2; put_be64 l1-misaligned.qcow2 40 $(( l1 + 512 ))
refused l1-misaligned.qcow2
damage rt-none.qcow2; put_be32 rt-none.qcow2 56 0
refused rt-none.qcow2
# The reader never looks at an empty snapshot table; qemu does.
damage sn-none-offset.qcow2; put_be64 sn-none-offset.qcow2 64 $(( 1 << 63 ))
refused sn-none-offset.qcow2

# The snapshot table: more entries than it holds (the rest reads as
# zeros past the end of the file), and moved past the end.
img=snap.qcow2
size=$(stat -c %s $img)
[ "$(be32 $img 60)" = 2 ] || fail "snapshot layout"
damage sn-count3.qcow2; put_be32 sn-count3.qcow2 60 3
shown sn-count3.qcow2 "snapshot table"
damage sn-table-past.qcow2
put_be64 sn-table-past.qcow2 64 $(( (size / cs + 2) * cs ))
shown sn-table-past.qcow2 "snapshot table \(offset 0x[0-9a-f]+, 2 entries\) starts beyond the end of the file"
damage sn-misaligned.qcow2
put_be64 sn-misaligned.qcow2 64 $(( $(be64 $img 64) + 8 ))
refused sn-misaligned.qcow2

# A damaged overlay: its backing chain is shown as qemu-img shows it.
img=sub/top.qcow2
l1=$(be64 $img 40)
damage sub/top-l1.qcow2; put_be64 sub/top-l1.qcow2 "$l1" $(( $(be64 $img "$l1") | 2 ))
shown sub/top-l1.qcow2 "L1 entry 0 .* reserved bits"
qemu-img info --output=json --backing-chain sub/top-l1.qcow2 >q.json ||
  fail "qemu-img info --backing-chain (the test is wrong)"
sparsecow info --output=json --backing-chain sub/top-l1.qcow2 >s.json 2>s.err ||
  fail "info --backing-chain of a damaged overlay: $(cat s.err)"
same_json q.json s.json
rc=0
sparsecow info --backing-chain sub/top-l1.qcow2 >s.txt 2>s.err || rc=$?
[ "$rc" = 0 ] && grep -q "^image: sub/base.qcow2" s.txt ||
  fail "info --backing-chain (text) of a damaged overlay: $(cat s.txt s.err)"

# A damaged backing file: qemu-img info --backing-chain shows it too.
qemu-img create -q -f qcow2 -u -b top-l1.qcow2 -F qcow2 sub/over.qcow2 64M
qemu-img info --output=json --backing-chain sub/over.qcow2 >q.json ||
  fail "qemu-img info --backing-chain over a damaged file (the test is wrong)"
rc=0
sparsecow info --output=json --backing-chain sub/over.qcow2 >s.json 2>s.err ||
  rc=$?
[ "$rc" = 0 ] ||
  fail "info --backing-chain over a damaged file: exit $rc: $(cat s.err)"
same_json q.json s.json
grep -q "^sparsecow: sub/top-l1.qcow2: .*the image is damaged" s.err ||
  fail "info --backing-chain does not say which file is damaged: $(cat s.err)"
expect_fail "sub/top-l1.qcow2: .*reserved bits" sparsecow unpack sub/over.qcow2 over.raw

# ---- A LUKS encrypted image whose encryption header is damaged: what
# qemu-img info refuses (a wrong magic or version, names that do not
# end in their fields or that qemu does not know, key slots in a wrong
# state, with other than 4000 stripes, no iterations, key material over
# the header, the payload or another slot, an extension that is too
# short for the header or misaligned), info refuses; what it shows, info
# shows with the same fields.
luks_image luks.qcow2 8M
img=luks.qcow2
# The crypto header extension comes first: u64 offset, u64 length.
[ "$(be32 $img 100)" = 112 ] && [ "$(be32 $img 112)" = $(( 0x0537be77 )) ] ||
  fail "LUKS layout"
L=$(be64 $img 120)
slot () { echo $(( L + 208 + 48 * $1 + $2 )); }
put_str () { printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
damage l-magic.qcow2; put_str l-magic.qcow2 "$L" 'LUKX'
damage l-version.qcow2; put_be16 l-version.qcow2 $(( L + 6 )) 2
damage l-cipher.qcow2; put_str l-cipher.qcow2 $(( L + 8 )) 'foo\0'
damage l-unterminated.qcow2
put_str l-unterminated.qcow2 $(( L + 8 )) "$(printf 'a%.0s' $(seq 32))"
damage l-mode.qcow2; put_str l-mode.qcow2 $(( L + 40 )) 'xts\0'
damage l-cbc64.qcow2; put_str l-cbc64.qcow2 $(( L + 40 )) 'cbc-plain\0'
damage l-hash.qcow2; put_str l-hash.qcow2 $(( L + 72 )) 'sha999\0'
damage l-ivhash.qcow2; put_str l-ivhash.qcow2 $(( L + 40 )) 'xts-plain64:foo\0'
damage l-state.qcow2; put_be32 l-state.qcow2 "$(slot 1 0)" $(( 0x12345678 ))
damage l-stripes.qcow2; put_be32 l-stripes.qcow2 "$(slot 1 44)" 3999
damage l-iters.qcow2; put_be32 l-iters.qcow2 "$(slot 0 4)" 0
damage l-mkiters.qcow2; put_be32 l-mkiters.qcow2 $(( L + 164 )) 0
damage l-overlap.qcow2; put_be32 l-overlap.qcow2 "$(slot 1 40)" 8
damage l-inheader.qcow2; put_be32 l-inheader.qcow2 "$(slot 0 40)" 4
damage l-pastpayload.qcow2; put_be32 l-pastpayload.qcow2 "$(slot 7 40)" 4000
damage l-payload.qcow2; put_be32 l-payload.qcow2 $(( L + 104 )) 4
damage l-extshort.qcow2; put_be64 l-extshort.qcow2 128 591
damage l-extmisaligned.qcow2; put_be64 l-extmisaligned.qcow2 120 $(( L + 512 ))
damage l-extsize.qcow2; put_be32 l-extsize.qcow2 116 24
for i in magic version cipher unterminated mode cbc64 hash ivhash state \
         stripes iters mkiters overlap inheader pastpayload payload \
         extshort extmisaligned extsize; do
  refused l-$i.qcow2
done
# Shown: another key size, another cipher, the shortest extension, a
# payload far away, an odd XTS key length (qemu halves it, rounding
# down).
damage l-aes192.qcow2; put_be32 l-aes192.qcow2 $(( L + 108 )) 48
damage l-cast5.qcow2; put_str l-cast5.qcow2 $(( L + 8 )) 'cast5\0'
put_be32 l-cast5.qcow2 $(( L + 108 )) 32
damage l-ext592.qcow2; put_be64 l-ext592.qcow2 128 592
damage l-farpayload.qcow2; put_be32 l-farpayload.qcow2 $(( L + 104 )) $(( 0xffffffff ))
damage l-odd.qcow2; put_be32 l-odd.qcow2 $(( L + 108 )) 33
for i in aes192 cast5 ext592 farpayload odd; do
  settle l-$i.qcow2
  qemu-img info --output=json l-$i.qcow2 >q.json ||
    fail "l-$i.qcow2: qemu-img info refuses it (the test is wrong)"
  sparsecow info --output=json l-$i.qcow2 >s.json 2>s.err ||
    fail "l-$i.qcow2: qemu-img info shows it, info refuses: $(cat s.err)"
  same_json q.json s.json
  diff -u <(qemu-img info l-$i.qcow2) \
          <(sparsecow info l-$i.qcow2 | sed '/^Allocation:$/,$d') ||
    fail "l-$i.qcow2: info differs from qemu-img info"
done
# A UUID with a control character: qemu-img prints it as it is; info
# refuses it rather than print it on a terminal (sparsecow(1)).
damage l-uuid.qcow2; put_str l-uuid.qcow2 $(( L + 168 )) '\033[2J'
qemu-img info l-uuid.qcow2 >/dev/null ||
  fail "qemu-img info refuses l-uuid.qcow2 (the test is wrong)"
expect_fail "^sparsecow: l-uuid.qcow2: .*UUID" sparsecow info l-uuid.qcow2
# The LUKS method without its extension, and the extension at offset 0:
# qemu-img info crashes; info refuses them.
damage l-noext.qcow2; put_be32 l-noext.qcow2 112 $(( 0x12345678 ))
expect_fail "^sparsecow: l-noext.qcow2: .*extension" sparsecow info l-noext.qcow2
damage l-ext0.qcow2; put_be64 l-ext0.qcow2 120 0
expect_fail "^sparsecow: l-ext0.qcow2: .*encryption header offset" \
  sparsecow info l-ext0.qcow2
# An extension without the LUKS method: qemu-img info refuses it.
damage l-aesext.qcow2; put_be32 l-aesext.qcow2 32 1
refused l-aesext.qcow2
damage l-method3.qcow2; put_be32 l-method3.qcow2 32 3
refused l-method3.qcow2

exit 0
