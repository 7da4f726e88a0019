# Shared by the reader tests (tests/reader-*.sh): source it after
# functions.sh.  qemu-img is the judge: every image a test builds is read
# by sparsecow and by qemu-img, and the results must agree.
#
# Set READER_ORACLE=qemu to replace every sparsecow step with the
# equivalent qemu-img command.  The tests must then pass (except where
# they check sparsecow's own error messages), which proves that the
# comparisons themselves are right and can only fail because of
# sparsecow.

: "${READER_ORACLE:=}"
# Generous: a hang is a failure, but valgrind is slow.
: "${READER_TIMEOUT:=120}"

# Comparison failures are recorded and the test goes on, so that one run
# reports every image that sparsecow reads wrongly, not just the first;
# the test still fails at exit if any were recorded.
soft_fail () {
  echo "$0: FAIL: $*" >&2
  echo "$*" >> "$tmp/.soft-failures"
}
_rd_exit () {
  local rc=$?
  if [ -s "$tmp/.soft-failures" ]; then
    echo "$0: $(wc -l < "$tmp/.soft-failures") comparison(s) failed:" >&2
    sed 's/^/  /' "$tmp/.soft-failures" >&2
    [ "$rc" != 0 ] || rc=1
  fi
  (exit "$rc")
  _run_cleanups
}
trap _rd_exit EXIT

# Run sparsecow with a time limit.  Its stderr is kept in
# $tmp/.sc-stderr (and echoed), and any sanitizer report or crash fails
# the test at once, whatever the exit status.
rd_sparsecow () {
  local rc=0
  timeout "$READER_TIMEOUT" $SC_VALGRIND "$SPARSECOW" "$@" \
    2>"$tmp/.sc-stderr" || rc=$?
  cat "$tmp/.sc-stderr" >&2
  if grep -q "AddressSanitizer\|runtime error\|LeakSanitizer" "$tmp/.sc-stderr"; then
    fail "sanitizer report from: sparsecow $*"
  fi
  case $rc in
    124) fail "timed out after $READER_TIMEOUT s: sparsecow $*" ;;
    134|136|139) fail "crashed (exit $rc): sparsecow $*" ;;
  esac
  return $rc
}

# rd_unpack IMAGE TARGET [SNAPSHOT]: the step under test.
rd_unpack () {
  local img=$1 out=$2 snap=${3:-}
  if [ "$READER_ORACLE" = qemu ]; then
    if [ -n "$snap" ]; then
      # Revert a copy to the snapshot: a second way to read it in qemu,
      # independent of the "-l" used by ref_convert.
      local copy
      copy=$(dirname "$img")/.oracle-revert.qcow2
      cp "$img" "$copy"
      qemu-img snapshot -a "$snap" "$copy"
      img=$copy
    fi
    if [ "$out" = - ]; then
      qemu-img convert -q -O raw "$img" /dev/stdout
    else
      qemu-img convert -q -O raw "$img" "$out"
    fi
    [ -z "$snap" ] || rm -f "$img"
  else
    if [ -n "$snap" ]; then
      rd_sparsecow unpack --snapshot "$snap" "$img" "$out"
    else
      rd_sparsecow unpack "$img" "$out"
    fi
  fi
}

# rd_map IMAGE: JSON map on stdout.
rd_map () {
  if [ "$READER_ORACLE" = qemu ]; then
    qemu-img map --output=json "$1"
  else
    rd_sparsecow map --json "$1"
  fi
}

# rd_info IMAGE: JSON info on stdout.
rd_info () {
  if [ "$READER_ORACLE" = qemu ]; then
    qemu-img info --output=json "$1"
  else
    rd_sparsecow info --json "$1"
  fi
}

# The reference: what qemu-img reads from IMAGE [SNAPSHOT] as raw.
ref_convert () {
  local img=$1 out=$2 snap=${3:-}
  local opt=()
  if [ -n "$snap" ]; then
    case $snap in
      *[!0-9]*) opt=(-l "snapshot.name=$snap") ;;
      *) opt=(-l "snapshot.id=$snap") ;;
    esac
  fi
  qemu-img convert -q "${opt[@]}" -O raw "$img" "$out"
}

img_virtual_size () {
  qemu-img info --output=json "$1" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'
}

img_cluster_size () {
  qemu-img info --output=json "$1" |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("cluster-size", 65536))'
}

# map_classes JSON SIZE: turn a qemu-img map JSON document into lines
# "START END CLASS" covering [0, SIZE) exactly, where CLASS says whether
# the bytes are data and whether they read as zero, and adjacent ranges of
# one class are merged.  Gaps, overlaps and ranges past SIZE appear as
# their own lines so that diff shows them.
map_classes () {
  python3 - "$1" "$2" <<'EOF'
import json, sys
path, size = sys.argv[1], int(sys.argv[2])
with open(path) as f:
    try:
        doc = json.load(f)
    except ValueError as e:
        print("INVALID JSON: %s" % e)
        sys.exit(0)
if not isinstance(doc, list):
    print("NOT A LIST")
    sys.exit(0)
out = []
pos = 0
def add(start, end, cls):
    if out and out[-1][2] == cls and out[-1][1] == start:
        out[-1][1] = end
    else:
        out.append([start, end, cls])
for e in doc:
    try:
        start, length = int(e["start"]), int(e["length"])
        cls = "data=%s zero=%s" % (bool(e["data"]), bool(e["zero"]))
    except (KeyError, TypeError, ValueError):
        print("BAD ENTRY %r" % (e,))
        continue
    if length <= 0:
        print("EMPTY ENTRY %r" % (e,))
        continue
    if start > pos:
        add(pos, start, "GAP")
    elif start < pos:
        add(start, pos, "OVERLAP")
    add(start, start + length, cls)
    pos = max(pos, start + length)
if pos < size:
    add(pos, size, "MISSING")
for start, end, cls in out:
    if end > size:
        print("%d %d %s PAST-END" % (start, end, cls))
    else:
        print("%d %d %s" % (start, end, cls))
EOF
}

# Count maximal runs of data in a qemu-img map JSON document.
map_data_extents () {
  python3 - "$1" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
n, end = 0, None
for e in doc:
    if e["data"]:
        if end != e["start"]:
            n += 1
        end = e["start"] + e["length"]
print(n)
EOF
}

# Count maximal data runs of a file by SEEK_DATA/SEEK_HOLE.
file_data_extents () {
  python3 - "$1" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
n, pos = 0, 0
while pos < size:
    try:
        d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    n += 1
    pos = os.lseek(fd, d, os.SEEK_HOLE)
print(n)
EOF
}

# check_unpack IMAGE [SNAPSHOT]: (a) unpack equals qemu-img convert,
# (b) the unpacked file is no less sparse than qemu-img's output give or
# take a cluster per data extent.  Files go to $tmp/chk.*.
check_unpack () {
  local img=$1 snap=${2:-}
  local ref=$tmp/chk.ref.raw out=$tmp/chk.out.raw
  local what="unpack ${snap:+--snapshot $snap }$img"
  rm -f "$ref" "$out"
  ref_convert "$img" "$ref" "$snap"
  if ! rd_unpack "$img" "$out" "$snap"; then
    soft_fail "$what failed"; return 0
  fi
  if [ ! -f "$out" ]; then
    soft_fail "$what: no regular file $out"; return 0
  fi
  local rs os
  rs=$(stat -c %s "$ref"); os=$(stat -c %s "$out")
  if [ "$rs" != "$os" ]; then
    soft_fail "$what: size $os, qemu-img convert gives $rs"; return 0
  fi
  if ! cmp "$ref" "$out"; then
    soft_fail "$what differs from qemu-img convert -O raw"; return 0
  fi

  local cs extents limit got
  cs=$(img_cluster_size "$img")
  if [ -z "$snap" ]; then
    qemu-img map --output=json "$img" > "$tmp/chk.qmap.json"
    extents=$(map_data_extents "$tmp/chk.qmap.json")
  else
    # qemu-img map cannot show a snapshot; qemu-img's own raw output
    # stands in for it.
    extents=$(file_data_extents "$ref")
  fi
  limit=$(( $(allocated_bytes "$ref") + cs * extents ))
  got=$(allocated_bytes "$out")
  [ "$got" -le "$limit" ] ||
    soft_fail "$what: $got bytes allocated, more than $limit" \
              "(qemu-img convert: $(allocated_bytes "$ref"), $extents data extents of $cs)"
  rm -f "$ref" "$out"
}

# check_map IMAGE: (c) sparsecow map --json agrees with qemu-img map on
# which bytes are data and which read as zero.
check_map () {
  local img=$1 size
  size=$(img_virtual_size "$img")
  qemu-img map --output=json "$img" > "$tmp/chk.qmap.json"
  if ! rd_map "$img" > "$tmp/chk.smap.json"; then
    soft_fail "map --json $img failed"; return 0
  fi
  map_classes "$tmp/chk.qmap.json" "$size" > "$tmp/chk.qmap.txt"
  map_classes "$tmp/chk.smap.json" "$size" > "$tmp/chk.smap.txt"
  diff -u "$tmp/chk.qmap.txt" "$tmp/chk.smap.txt" ||
    soft_fail "map --json $img disagrees with qemu-img map (- qemu-img, + sparsecow)"
}

# check_image IMAGE: all of the above for the active layer.
check_image () {
  check_unpack "$1"
  check_map "$1"
}

# Set (or clear) one bit of the 64-bit big-endian header field at byte
# OFFSET, in place.
set_header_bit () {
  local file=$1 offset=$2 bit=$3 value=${4:-1}
  python3 - "$file" "$offset" "$bit" "$value" <<'EOF'
import struct, sys
path, off, bit, val = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(path, "r+b") as f:
    f.seek(off)
    (v,) = struct.unpack(">Q", f.read(8))
    v = (v | (1 << bit)) if val else (v & ~(1 << bit))
    f.seek(off)
    f.write(struct.pack(">Q", v))
EOF
}

# qio IMAGE CMD...: qemu-io on a qcow2 image, quietly, failing the test
# if qemu-io reports an error.
qio () {
  local img=$1; shift
  local args=() c
  for c in "$@"; do args+=(-c "$c"); done
  local outp
  outp=$(qemu-io -f qcow2 "${args[@]}" "$img" 2>&1) || fail "qemu-io $img: $outp"
  if grep -qi "error\|failed" <<<"$outp"; then fail "qemu-io $img: $outp"; fi
}
