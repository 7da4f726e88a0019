#!/bin/bash
# info --output=json (and --json, --backing-chain) in qemu-img info's
# layout, and check --output=json in qemu-img check's: every field that
# qemu-img prints, for images that qemu-img and qemu-io make with every
# feature, equal in sparsecow's output, which adds only its own
# "sparsecow" member.
. "$srcdir/functions.sh"
requires qemu-img qemu-io python3

cd "$tmp"
mkdir corpus
cd corpus
MiB=$((1024 * 1024))
qio () { qemu-io "$@" >/dev/null || fail "qemu-io $*"; }
# set_bit FILE BYTE-OFFSET BIT: set one bit of a header byte.
set_bit () {
  python3 - "$@" <<'PYEOF'
import sys
path, off, bit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "r+b") as f:
    f.seek(off); b = f.read(1)[0]; f.seek(off); f.write(bytes([b | (1 << bit)]))
PYEOF
}

qemu-img create -q -f qcow2 plain.qcow2 8M
qio -c "write -P 1 0 1M" -c "write -z 4M 1M" plain.qcow2
head -c $((4 * MiB)) /dev/urandom >data.raw
truncate -s 16M data.raw
qemu-img convert -q -c -O qcow2 data.raw compressed.qcow2
qemu-img convert -q -c -O qcow2 -o compression_type=zstd data.raw zstd.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k extl2.qcow2 8M
qio -c "write -P 2 8k 4k" extl2.qcow2
qemu-img create -q -f qcow2 -o lazy_refcounts=on,refcount_bits=8 lazy.qcow2 8M
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 8M
qio -c "write -P 3 0 64k" v2.qcow2
qemu-img snapshot -c first v2.qcow2
cp plain.qcow2 snaps.qcow2
qemu-img snapshot -c first snaps.qcow2
qio -c "write -P 4 1M 1M" snaps.qcow2
qemu-img snapshot -c second snaps.qcow2
cp plain.qcow2 bitmaps.qcow2
qemu-img bitmap --add bitmaps.qcow2 b0
qemu-img bitmap --add -g 128k bitmaps.qcow2 b1
qemu-img bitmap --disable bitmaps.qcow2 b1
qemu-img create -q -f qcow2 -b plain.qcow2 -F qcow2 mid.qcow2
qio -c "write -P 5 2M 64k" mid.qcow2
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
truncate -s 8M base.raw
qemu-img create -q -f qcow2 -b base.raw -F raw onraw.qcow2
qemu-img create -q -f qcow2 -o data_file=ext.raw,data_file_raw=on datafile.qcow2 8M
qio -c "write -P 6 0 1M" datafile.qcow2
qemu-img create -q -f qcow2 -o data_file=ext2.raw datafile2.qcow2 8M
cp plain.qcow2 dirty.qcow2
set_bit dirty.qcow2 79 0
cp plain.qcow2 corrupt.qcow2
set_bit corrupt.qcow2 79 1
# qemu-img info shows an image whose backing file is missing.
qemu-img create -q -f qcow2 -u -b "$tmp/nowhere/base.qcow2" -F qcow2 \
  missing.qcow2 8M
mkdir sub
qemu-img create -q -f qcow2 sub/base.qcow2 8M
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 sub/top.qcow2
# A relative backing name whose file is missing: qemu-img shows the
# path it looked for.
qemu-img create -q -f qcow2 -u -b gone-base.qcow2 -F qcow2 sub/gone.qcow2 8M
# Encrypted images, shown without their key: LUKS (its header's
# fields, ESSIV with its hash too), the legacy AES scheme, and an
# overlay whose backing file is encrypted (luks_image: functions.sh).
luks_image luks.qcow2 8M
luks_image luks-essiv.qcow2 8M ",encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha384"
luks_image luks-serpent.qcow2 8M ",encrypt.cipher-alg=serpent-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain,encrypt.hash-alg=sha512"
qemu-img create -q -f qcow2 --object secret,id=s0,data=pw \
  -o encrypt.format=aes,encrypt.key-secret=s0 aes.qcow2 8M ||
  fail "qemu-img cannot create an AES encrypted image (the corpus is wrong)"
qemu-img create -q -f qcow2 -u -b luks.qcow2 -F qcow2 onluks.qcow2 8M
# The external data file is missing: qemu-img info shows the image.
qemu-img create -q -f qcow2 -o data_file=gone.raw nodata.qcow2 8M
rm gone.raw
# A version 2 image that e2image writes, where e2image is there.
if command -v mke2fs >/dev/null && command -v e2image >/dev/null; then
  truncate -s 8M fs.ext4
  mke2fs -q -F -t ext4 fs.ext4 && e2image -Q fs.ext4 e2image.qcow2 2>/dev/null ||
    fail "mke2fs or e2image (the corpus is wrong)"
  rm fs.ext4
fi

# Every file written back, so that the space each takes ("actual-size",
# "disk size") is the same for qemu-img and for sparsecow (settle in
# functions.sh): cp and e2image leave theirs in the page cache.
mapfile -t files < <(find . -type f)
settle "${files[@]}"

# compare QEMU-JSON SPARSECOW-JSON: every member of qemu's, at any
# depth, is in sparsecow's with the same value; sparsecow's has no
# other member but "sparsecow" in each image object.
compare () {
  python3 "$srcdir/info-json-same.py" "$1" "$2" || fail "$(cat "$2")"
}

n=0
for img in *.qcow2 sub/top.qcow2 sub/gone.qcow2; do
  qemu-img info --output=json "$img" >q.json ||
    fail "qemu-img info $img (the corpus is wrong)"
  sparsecow info --output=json "$img" >s.json 2>s.err ||
    fail "sparsecow info $img: $(cat s.err)"
  compare q.json s.json
  sparsecow info --json "$img" >s2.json 2>/dev/null
  cmp s.json s2.json || fail "--json and --output=json differ for $img"
  if qemu-img info --output=json --backing-chain "$img" >qc.json 2>/dev/null
  then
    sparsecow info --output=json --backing-chain "$img" >sc.json ||
      fail "sparsecow info --backing-chain $img"
    compare qc.json sc.json
  else
    # A chain that cannot be opened whole: qemu-img prints nothing on
    # stdout, says why on stderr and exits 1, in JSON and in text.
    for o in --output=json --output=human; do
      qrc=0 src=0
      qemu-img info $o --backing-chain "$img" >qc.out 2>qc.err || qrc=$?
      sparsecow info $o --backing-chain "$img" >sc.out 2>sc.err || src=$?
      [ "$qrc" = 1 ] && [ ! -s qc.out ] && [ -s qc.err ] ||
        fail "qemu-img info $o --backing-chain $img: exit $qrc (the test is wrong)"
      [ "$src" = "$qrc" ] ||
        fail "info $o --backing-chain $img: exit $src, qemu-img $qrc"
      [ ! -s sc.out ] ||
        fail "info $o --backing-chain $img printed on stdout: $(cat sc.out)"
      grep -q "^sparsecow: $img: " sc.err ||
        fail "info $o --backing-chain $img: no message: $(cat sc.err)"
    done
  fi
  n=$((n + 1))
done
[ $n -ge 23 ] || fail "only $n images compared"

# What is missing is said, and shown under sparsecow's own member.
sparsecow info missing.qcow2 >s.txt 2>s.err
grep -q "nowhere/base.qcow2" s.err || fail "missing backing file not named"
grep -q "^backing file: $tmp/nowhere/base.qcow2" s.txt ||
  fail "backing file not shown: $(cat s.txt)"
sparsecow info --output=json missing.qcow2 2>/dev/null |
  python3 -c 'import json,sys; e = json.load(sys.stdin)["sparsecow"]["backing-error"]; assert "nowhere/base.qcow2" in e, e' ||
  fail "no backing-error in JSON"
# A missing data file is said, as a missing backing file is.
sparsecow info nodata.qcow2 >s.txt 2>s.err || fail "info nodata.qcow2 failed"
grep -q "^sparsecow: nodata.qcow2: .*gone.raw" s.err ||
  fail "missing data file not named: $(cat s.err)"
sparsecow info --output=json nodata.qcow2 2>/dev/null |
  python3 -c 'import json,sys; e = json.load(sys.stdin)["sparsecow"]["data-file-error"]; assert "gone.raw" in e, e' ||
  fail "no data-file-error in JSON"
# ... and its data is not read: as qemu-img, map refuses it.
expect_fail "gone.raw" sparsecow map --output=json nodata.qcow2
expect_fail "gone.raw" sparsecow unpack nodata.qcow2 out.raw
[ ! -e out.raw ] || fail "unpack without the data file left out.raw"

# An encrypted image's data is not read without its key: commands that
# read data say that it is encrypted.
for img in luks.qcow2 aes.qcow2 onluks.qcow2; do
  qemu-img map --output=json "$img" >/dev/null 2>&1 &&
    fail "qemu-img map reads $img without its key (the test is wrong)"
  expect_fail "^sparsecow: $img: .*encrypted" sparsecow map --output=json "$img"
  expect_fail "^sparsecow: $img: .*encrypted" sparsecow unpack "$img" out.raw
  [ ! -e out.raw ] || fail "unpack of $img left out.raw"
  truncate -s 8M zero.raw
  expect_fail "^sparsecow: $img: .*encrypted" sparsecow verify "$img" zero.raw
  expect_fail "^sparsecow: $img: .*encrypted" sparsecow pack "$img" out.qcow2
  [ ! -e out.qcow2 ] || fail "pack of $img left out.qcow2"
done

# The corrupt bit is shown, by info and by map, as by qemu-img.
sparsecow info corrupt.qcow2 | grep -q "corrupt: true" || fail "corrupt not shown"
qemu-img map --output=json corrupt.qcow2 >q.map
sparsecow map --output=json corrupt.qcow2 >s.map
python3 -c 'import json,sys; assert json.load(open(sys.argv[1])) == json.load(open(sys.argv[2]))' \
  q.map s.map || fail "map of the corrupt image differs"
# ... and copying its data is still refused.
expect_fail "corrupt" sparsecow unpack corrupt.qcow2 out.raw

# check --output=json: the members that qemu-img check prints, the same.
for img in plain.qcow2 compressed.qcow2 zstd.qcow2 extl2.qcow2 lazy.qcow2 \
           v2.qcow2 snaps.qcow2 bitmaps.qcow2 top.qcow2 datafile.qcow2; do
  rc=0; qemu-img check --output=json "$img" >q.json 2>/dev/null || rc=$?
  src=0; sparsecow check --output=json "$img" >s.json 2>/dev/null || src=$?
  [ "$rc" = "$src" ] || fail "check $img: exit $src, qemu-img $rc"
  # sparsecow's own counts are under its own member only.
  python3 -c 'import json,sys; a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2])); b.pop("sparsecow"); assert a == b, (a, b)' \
    q.json s.json || fail "check --output=json $img differs"
done

# qemu-img check opens an image with its key and its data file: without
# the data file it fails, and so does check, with a message.
for o in --output=json --output=human; do
  rc=0; qemu-img check $o nodata.qcow2 >q.out 2>q.err || rc=$?
  src=0; sparsecow check $o nodata.qcow2 >s.out 2>s.err || src=$?
  [ "$rc" = 1 ] && [ ! -s q.out ] ||
    fail "qemu-img check $o nodata.qcow2: exit $rc (the test is wrong)"
  [ "$src" = "$rc" ] || fail "check $o nodata.qcow2: exit $src, qemu-img $rc"
  [ ! -s s.out ] || fail "check $o nodata.qcow2 printed: $(cat s.out)"
  grep -q "^sparsecow: nodata.qcow2: .*gone.raw" s.err ||
    fail "check $o nodata.qcow2: no message naming gone.raw: $(cat s.err)"
done
# Without the key qemu-img check of an encrypted image fails at opening
# it, though it reads no data; check needs no key, and judges it as
# qemu-img check given the key does, in JSON and in text.
for img in luks.qcow2 luks-essiv.qcow2 aes.qcow2; do
  for o in --output=json --output=human; do
    rc=0
    qemu-img check $o --object secret,id=s0,data=pw \
      --image-opts "driver=qcow2,file.filename=$img,encrypt.key-secret=s0" \
      >q.out 2>/dev/null || rc=$?
    src=0; sparsecow check $o "$img" >s.out 2>/dev/null || src=$?
    [ "$rc" = "$src" ] || fail "check $o $img: exit $src, qemu-img $rc"
    if [ $o = --output=json ]; then
      python3 -c 'import json,sys; a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2])); b.pop("sparsecow"); a.pop("filename"); b.pop("filename"); assert a == b, (a, b)' \
        q.out s.out || fail "check --output=json $img differs"
    else
      diff -u q.out s.out || fail "check $img differs from qemu-img check"
    fi
  done
done

# The snapshot table of the text output is qemu-img's, ICOUNT included
# (empty where a version 2 snapshot recorded none).
for img in snaps.qcow2 v2.qcow2; do
  diff <(qemu-img info "$img" | sed -n '/^Snapshot list/,/^Format/p') \
       <(sparsecow info "$img" | sed -n '/^Snapshot list/,/^Format/p') ||
    fail "snapshot list of $img differs from qemu-img info's"
done

# The text output is qemu-img info's line for line, with or without
# --backing-chain; sparsecow adds only the resolved chain ("backing
# chain N:" lines) and its cluster counts (the "Allocation:" block, or
# "Damage:" in its place) after each image.
additions () {
  sed '/^backing chain [0-9]*: /d; /^Allocation:$/,/^    zero clusters: /d
       /^Damage: /d'
}
for img in *.qcow2 sub/top.qcow2 sub/gone.qcow2; do
  qemu-img info "$img" >q.txt 2>/dev/null
  sparsecow info "$img" 2>/dev/null | additions >s.txt
  diff -u q.txt s.txt || fail "info $img differs from qemu-img info"
  if qemu-img info --backing-chain "$img" >q.txt 2>/dev/null; then
    sparsecow info --backing-chain "$img" 2>/dev/null | additions >s.txt
    diff -u q.txt s.txt ||
      fail "info --backing-chain $img differs from qemu-img info"
  fi
done
