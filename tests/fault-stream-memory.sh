#!/usr/bin/env bash
# The stream decoder (unpack from a pipe) keeps the bytes of a host
# range once, however many L2 entries name it: memory follows the bytes
# of the stream, not the entries.  Crafted images (made by qemu-img and
# qemu-io, then their L2 tables rewritten) name one cluster from
# thousands of entries:
#  - a data cluster that arrives before the data of guest offset 0, so
#    that a pipe target must hold every entry's data until then (8191
#    entries of 64 KiB: 512 MiB if each were kept apart);
#  - a compressed cluster that runs across the decoder's 4 MiB chunks,
#    so that every entry waits for the next chunk.
# qemu-io reads the crafted images as the oracle; the decoder's output
# must equal what qemu reads, with a peak memory (RSS) close to that of
# the same image with one entry, and where the program is not built
# with AddressSanitizer (which reserves terabytes of address space),
# under ulimit -v 256 MiB.
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/hostile-functions.sh"
requires qemu-img qemu-io python3 cmp md5sum
[ -x /usr/bin/time ] || { echo "$0: SKIP: /usr/bin/time not found"; exit 77; }

cd "$tmp"
mb=1048576
asan=false
case $(ldd "$SPARSECOW" 2>/dev/null || :) in *libasan*) asan=true ;; esac

# set_entries IMAGE L2-TABLE-OFFSET FIRST COUNT VALUE: L2 entries FIRST
# to FIRST+COUNT-1 of the table set to VALUE.
set_entries () {
  python3 - "$@" <<'PYEOF'
import sys
path, l2, first, count, value = sys.argv[1], *map(int, sys.argv[2:])
with open(path, "r+b") as f:
    f.seek(l2 + 8 * first)
    f.write(value.to_bytes(8, "big") * count)
PYEOF
}

# peak_kib CMD...: run CMD (stdout to out.raw, stderr to err) and print
# the peak RSS of its largest process in KiB; fails the test if CMD
# fails.  (Standard input redirected from a file is read as the file:
# the image goes through cat to be a stream.)
peak_kib () {
  /usr/bin/time -f %M -o rss "$@" > out.raw 2> err ||
    { cat err >&2; fail "$*: failed"; }
  if grep -q "AddressSanitizer\|runtime error" err; then
    cat err >&2; fail "$*: sanitizer report"
  fi
  tail -1 rss
}

# ---- 1. one data cluster named by 8191 entries, for a pipe target ------
# Guest cluster 1 is written first (host cluster X), guest cluster 0
# next (host cluster Y, after X): a pipe target cannot write cluster 1
# before cluster 0, so everything X gives is held until Y has come.
qemu-img create -q -f qcow2 -o cluster_size=65536 one.qcow2 512M
qemu-io -f qcow2 -c "write -P 0x11 64k 64k" -c "write -P 0x22 0 64k" one.qcow2 >/dev/null
cp one.qcow2 many.qcow2
l2=$(l2_table many.qcow2)
x=$(python3 -c 'import sys
b = open(sys.argv[1], "rb").read()
print(int.from_bytes(b[int(sys.argv[2]) + 8:int(sys.argv[2]) + 16], "big"))' many.qcow2 "$l2")
set_entries many.qcow2 "$l2" 2 8190 "$x"
# qemu reads cluster 0 as 0x22 and the 8191 after it as 0x11.
qemu-io -r -f qcow2 -c "read -P 0x22 0 64k" -c "read -P 0x11 64k $((8191 * 64))k" \
  many.qcow2 | grep -q "^read $((8191 * 65536))/" ||
  fail "test setup: qemu-io does not read the crafted image as intended"
expected () {
  python3 -c 'import sys
o = sys.stdout.buffer
o.write(b"\x22" * 65536)
for i in range(8191):
    o.write(b"\x11" * 65536)'
}
base=$(peak_kib bash -c "set -o pipefail; cat one.qcow2 | $SC_VALGRIND '$SPARSECOW' unpack - - | cat")
got=$(peak_kib bash -c "set -o pipefail; cat many.qcow2 | $SC_VALGRIND '$SPARSECOW' unpack - - | cat")
cmp out.raw <(expected) || fail "8191 entries naming one cluster: unpack - - differs from qemu"
echo "one data cluster, 8191 entries: peak RSS $got KiB (one entry: $base KiB)"
[ "$got" -lt $(( base + 32 * 1024 )) ] ||
  fail "8191 entries naming one cluster: peak RSS $got KiB, one entry $base KiB"
if ! $asan; then
  ( ulimit -v $((256 * 1024))
    cat many.qcow2 | "$SPARSECOW" unpack - - 2> err | cat > out.raw ) ||
    { cat err >&2; fail "8191 entries naming one cluster: failed under ulimit -v 256 MiB"; }
  cmp out.raw <(expected) || fail "under ulimit -v: unpack - - differs"
fi

# ---- 2. one compressed cluster across a chunk, named by 4000 entries ----
# Data that compresses to about a third: its compressed clusters fill
# more than 4 MiB of the image, and one of them runs across 4 MiB.
python3 -c 'import random, sys
r = random.Random(21)
sys.stdout.buffer.write(bytes(r.choice(b"abcdefgh") for _ in range(12 << 20)))' > text.raw
truncate -s 512M text.raw
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=65536 text.raw c1.qcow2
read -r cl2 idx desc < <(python3 - c1.qcow2 <<'PYEOF'
import sys
b = open(sys.argv[1], "rb").read()
cb = int.from_bytes(b[20:24], "big")
l1 = int.from_bytes(b[40:48], "big")
l2 = int.from_bytes(b[l1:l1 + 8], "big") & 0x00fffffffffffe00
x = 62 - (cb - 8)
for j in range(1 << (cb - 3)):
    e = int.from_bytes(b[l2 + 8 * j:l2 + 8 * j + 8], "big")
    if not e >> 62 & 1:
        continue
    off = e & ((1 << x) - 1)
    end = (off & ~511) + ((e >> x & ((1 << (62 - x)) - 1)) + 1) * 512
    if off >> 22 != (end - 1) >> 22:
        print(l2, j, e)
        break
PYEOF
)
[ -n "${desc:-}" ] || fail "test setup: no compressed cluster runs across 4 MiB"
# The image with that cluster alone, and with it named 4000 times.
cp c1.qcow2 c-one.qcow2
set_entries c-one.qcow2 "$cl2" 0 8192 0
set_entries c-one.qcow2 "$cl2" 0 1 "$desc"
cp c1.qcow2 c-many.qcow2
set_entries c-many.qcow2 "$cl2" 0 8192 0
set_entries c-many.qcow2 "$cl2" 0 4000 "$desc"
qemu-img convert -q -f qcow2 -O raw c-many.qcow2 c-many.ref
base=$(peak_kib bash -c "set -o pipefail; cat c-one.qcow2 | $SC_VALGRIND '$SPARSECOW' unpack - - | cat")
got=$(peak_kib bash -c "set -o pipefail; cat c-many.qcow2 | $SC_VALGRIND '$SPARSECOW' unpack - - | cat")
cmp out.raw c-many.ref || fail "4000 entries naming one compressed cluster: unpack - - differs from qemu-img"
echo "one compressed cluster (entry $idx), 4000 entries: peak RSS $got KiB (one entry: $base KiB)"
[ "$got" -lt $(( base + 32 * 1024 )) ] ||
  fail "4000 entries naming one compressed cluster: peak RSS $got KiB, one entry $base KiB"
rm -f out.raw
got=$(peak_kib bash -c "set -o pipefail; cat c-many.qcow2 | $SC_VALGRIND '$SPARSECOW' unpack - c-many.out")
cmp c-many.out c-many.ref || fail "4000 entries naming one compressed cluster: unpack - FILE differs"
[ "$got" -lt $(( base + 32 * 1024 )) ] ||
  fail "4000 entries naming one compressed cluster, to a file: peak RSS $got KiB"
if ! $asan; then
  ( ulimit -v $((256 * 1024))
    cat c-many.qcow2 | "$SPARSECOW" unpack - - 2> err | cat > out.raw ) ||
    { cat err >&2; fail "4000 entries naming one compressed cluster: failed under ulimit -v 256 MiB"; }
  cmp out.raw c-many.ref || fail "under ulimit -v: unpack - - differs"
fi
exit 0
