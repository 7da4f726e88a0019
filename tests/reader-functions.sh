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
  # errexit would end the handler at "(exit $rc)" below, before cleaning up.
  set +e
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
    119) [ -z "$SC_VALGRIND" ] || fail "valgrind reported errors: sparsecow $*" ;;
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
      # qemu-img cannot write to a pipe (it seeks over zeros).
      qemu-img convert -q -O raw "$img" "$tmp/.oracle-stdout.raw"
      cat "$tmp/.oracle-stdout.raw"
      rm -f "$tmp/.oracle-stdout.raw"
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

# The judging is done by one python program, written out once, and run
# once per image: on a loaded machine each python start costs a lot.
#   judge classes QMAP SIZE           normalized map (see map_classes)
#   judge cmp A B                     content equal (see same_content)
#   judge unpack WHAT REF OUT INFO QMAP|-   (a) and (b)
#   judge map WHAT INFO QMAP SMAP           (c)
#   judge info WHAT QINFO SINFO             (d)
# Problems are printed as lines starting with "FAIL ", details before.
cat > "$tmp/.rd-judge.py" <<'EOF'
import difflib, json, os, sys

def classes(path, size):
    """Lines "START END CLASS" covering [0, size): CLASS says whether the
    bytes are data and whether they read as zero; adjacent ranges of one
    class merged; gaps, overlaps, bad entries and ranges past the end
    appear as lines of their own so that a diff shows them."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except ValueError as e:
        return ["INVALID JSON: %s" % e]
    if not isinstance(doc, list):
        return ["NOT A LIST"]
    out, bad, pos = [], [], 0
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
            bad.append("BAD ENTRY %r" % (e,))
            continue
        if length <= 0:
            bad.append("EMPTY ENTRY %r" % (e,))
            continue
        if start > pos:
            add(pos, start, "GAP")
        elif start < pos:
            add(start, pos, "OVERLAP")
        add(start, start + length, cls)
        pos = max(pos, start + length)
    if pos < size:
        add(pos, size, "MISSING")
    return bad + ["%d %d %s%s" % (s, e, c, " PAST-END" if e > size else "")
                  for s, e, c in out]

def extents(fd, size):
    pos, out = 0, []
    while pos < size:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        h = os.lseek(fd, d, os.SEEK_HOLE)
        out.append((d, h))
        pos = h
    return out

def first_difference(pa, pb):
    """None if the files are equal, else a description.  Reads only
    where either file has data; holes read as zeros in both."""
    a, b = os.open(pa, os.O_RDONLY), os.open(pb, os.O_RDONLY)
    sa, sb = os.fstat(a).st_size, os.fstat(b).st_size
    if sa != sb:
        return "size %d, not %d" % (sb, sa)
    for start, end in sorted(extents(a, sa) + extents(b, sb)):
        pos = start
        while pos < end:
            n = min(end - pos, 1 << 20)
            x, y = os.pread(a, n, pos), os.pread(b, n, pos)
            if x != y:
                i = next(i for i in range(n) if x[i] != y[i])
                return ("first difference at byte %d: 0x%02x, not 0x%02x"
                        % (pos + i, y[i], x[i]))
            pos += n
    return None

def data_runs(path):
    n, end = 0, None
    for e in json.load(open(path)):
        if e["data"]:
            if end != e["start"]:
                n += 1
            end = e["start"] + e["length"]
    return n

def judge_unpack(what, ref, out, info, qmap):
    diff = first_difference(ref, out)
    if diff:
        print("FAIL %s differs from qemu-img convert -O raw: %s" % (what, diff))
        return
    cs = json.load(open(info)).get("cluster-size", 65536)
    if qmap != "-":
        runs = data_runs(qmap)
    else:
        # qemu-img map cannot show a snapshot; qemu-img's own raw output
        # stands in for it.
        fd = os.open(ref, os.O_RDONLY)
        runs = len(extents(fd, os.fstat(fd).st_size))
    ref_alloc = os.stat(ref).st_blocks * 512
    got = os.stat(out).st_blocks * 512
    limit = ref_alloc + cs * runs
    if got > limit:
        print("FAIL %s: %d bytes allocated, more than %d (qemu-img convert: %d,"
              " %d data extents of %d)" % (what, got, limit, ref_alloc, runs, cs))

def judge_map(what, info, qmap, smap):
    size = json.load(open(info))["virtual-size"]
    q, s = classes(qmap, size), classes(smap, size)
    if q != s:
        sys.stdout.writelines(l + "\n" for l in difflib.unified_diff(
            q, s, "qemu-img map", "sparsecow map", lineterm=""))
        print("FAIL %s disagrees with qemu-img map (- qemu-img, + sparsecow)" % what)
        return
    # The contract is the same JSON as qemu-img map: depth, present and
    # offset too, entry for entry.
    qd, sd = json.load(open(qmap)), json.load(open(smap))
    if qd != sd:
        fmt = lambda d: [json.dumps(e, sort_keys=True) for e in d]
        sys.stdout.writelines(l + "\n" for l in difflib.unified_diff(
            fmt(qd), fmt(sd), "qemu-img map", "sparsecow map", lineterm=""))
        print("FAIL %s: same data and zero ranges as qemu-img map, but other"
              " entries (- qemu-img, + sparsecow)" % what)

def judge_info(what, qinfo, sinfo):
    """The fields that sparsecow info --json shares with qemu-img info
    --output=json (same names, or the obvious counterpart) agree."""
    q = json.load(open(qinfo))
    try:
        s = json.load(open(sinfo))
    except ValueError as e:
        print("FAIL %s: invalid JSON: %s" % (what, e))
        return
    fs = q.get("format-specific", {}).get("data", {})
    if "format-specific" in s:
        # qemu-img's own layout (READER_ORACLE=qemu): flatten it the way
        # sparsecow lays its output out.
        s = dict(s, **s["format-specific"].get("data", {}))
        s["dirty"] = s.get("dirty-flag", False)
        s["backing-format"] = s.get("backing-filename-format")
    pairs = [("virtual-size", q.get("virtual-size"), s.get("virtual-size")),
             ("cluster-size", q.get("cluster-size"), s.get("cluster-size")),
             ("format", q.get("format"), s.get("format")),
             ("backing-filename", q.get("backing-filename"), s.get("backing-filename")),
             ("backing format", q.get("backing-filename-format"), s.get("backing-format")),
             ("dirty", q.get("dirty-flag", False), s.get("dirty"))]
    for key in ("compat", "compression-type", "lazy-refcounts", "refcount-bits",
                "corrupt", "extended-l2", "data-file", "data-file-raw"):
        if key in fs:
            pairs.append((key, fs[key], s.get(key)))
    snaps = lambda l: [(str(x.get("id")), x.get("name")) for x in l or []]
    pairs.append(("snapshots (id, name)", snaps(q.get("snapshots")), snaps(s.get("snapshots"))))
    for key, want, got in pairs:
        if want != got:
            print("FAIL %s: %s is %r, qemu-img info says %r" % (what, key, got, want))

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "classes":
    print("\n".join(classes(args[0], int(args[1]))))
elif cmd == "cmp":
    d = first_difference(*args)
    if d:
        sys.exit("%s %s differ: %s" % (args[0], args[1], d))
elif cmd == "unpack":
    judge_unpack(*args)
elif cmd == "map":
    judge_map(*args)
elif cmd == "info":
    judge_info(*args)
EOF

# Run the judge; its "FAIL" lines become soft failures.
rd_judge () {
  local line
  while IFS= read -r line; do
    case $line in
      "FAIL "*) soft_fail "${line#FAIL }" ;;
      "rc 0") ;;
      "rc "*) soft_fail "the judge failed on: $*" ;;
      *) echo "$line" >&2 ;;
    esac
  done < <(python3 "$tmp/.rd-judge.py" "$@"; echo "rc $?")
}

# map_classes JSON SIZE: a qemu-img map JSON document as lines
# "START END CLASS" (see the judge), for diff -u.
map_classes () { python3 "$tmp/.rd-judge.py" classes "$1" "$2"; }

# same_content A B: like cmp, reading only where either file has data.
same_content () { python3 "$tmp/.rd-judge.py" cmp "$1" "$2"; }

img_virtual_size () {
  qemu-img info --output=json "$1" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'
}

# _unpack_step IMAGE SNAPSHOT: unpack to $tmp/chk.out.raw and convert to
# $tmp/chk.ref.raw; false (after a soft failure) if unpack failed.
_unpack_step () {
  local img=$1 snap=$2 what="unpack ${2:+--snapshot $2 }$1"
  rm -f "$tmp/chk.ref.raw" "$tmp/chk.out.raw"
  ref_convert "$img" "$tmp/chk.ref.raw" "$snap"
  if ! rd_unpack "$img" "$tmp/chk.out.raw" "$snap"; then
    soft_fail "$what failed"; return 1
  fi
  if [ ! -f "$tmp/chk.out.raw" ]; then
    soft_fail "$what: no regular file"; return 1
  fi
}

# _map_step IMAGE: sparsecow's map to $tmp/chk.smap.json.
_map_step () {
  if ! rd_map "$1" > "$tmp/chk.smap.json"; then
    soft_fail "map --json $1 failed"; return 1
  fi
}

# check_unpack IMAGE [SNAPSHOT]: (a) unpack equals qemu-img convert, and
# (b) the unpacked file is no less sparse than qemu-img's output give or
# take a cluster per data extent.
check_unpack () {
  local img=$1 snap=${2:-} qmap=-
  _unpack_step "$img" "$snap" || return 0
  qemu-img info --output=json "$img" > "$tmp/chk.info.json"
  if [ -z "$snap" ]; then
    qemu-img map --output=json "$img" > "$tmp/chk.qmap.json"
    qmap=$tmp/chk.qmap.json
  fi
  rd_judge unpack "unpack ${snap:+--snapshot $snap }$img" \
    "$tmp/chk.ref.raw" "$tmp/chk.out.raw" "$tmp/chk.info.json" "$qmap"
  rm -f "$tmp/chk.ref.raw" "$tmp/chk.out.raw"
}

# check_map IMAGE: (c) sparsecow map --json agrees with qemu-img map on
# which bytes are data and which read as zero, and then entry for entry.
check_map () {
  local img=$1
  qemu-img info --output=json "$img" > "$tmp/chk.info.json"
  qemu-img map --output=json "$img" > "$tmp/chk.qmap.json"
  _map_step "$img" || return 0
  rd_judge map "map --json $img" "$tmp/chk.info.json" \
    "$tmp/chk.qmap.json" "$tmp/chk.smap.json"
}

# check_info IMAGE: (d) sparsecow info --json agrees with qemu-img info
# on the fields they share.
check_info () {
  local img=$1
  qemu-img info --output=json "$img" > "$tmp/chk.info.json"
  if ! rd_info "$img" > "$tmp/chk.sinfo.json"; then
    soft_fail "info --json $img failed"; return 0
  fi
  rd_judge info "info --json $img" "$tmp/chk.info.json" "$tmp/chk.sinfo.json"
}

# check_pipe IMAGE [SNAPSHOT]: unpack to stdout into a pipe (which cannot
# skip holes) equals qemu-img convert.
check_pipe () {
  local img=$1 snap=${2:-} what="unpack ${2:+--snapshot $2 }$1 - | cat"
  rm -f "$tmp/chk.ref.raw" "$tmp/chk.pipe.raw" "$tmp/chk.pipe.failed"
  ref_convert "$img" "$tmp/chk.ref.raw" "$snap"
  { rd_unpack "$img" - "$snap" || : > "$tmp/chk.pipe.failed"; } | cat > "$tmp/chk.pipe.raw"
  if [ -e "$tmp/chk.pipe.failed" ]; then
    soft_fail "$what failed"
  elif ! cmp "$tmp/chk.ref.raw" "$tmp/chk.pipe.raw"; then
    soft_fail "$what differs from qemu-img convert"
  fi
  rm -f "$tmp/chk.ref.raw" "$tmp/chk.pipe.raw" "$tmp/chk.pipe.failed"
}

# check_image IMAGE: all of the above for the active layer.
check_image () {
  local img=$1
  qemu-img info --output=json "$img" > "$tmp/chk.info.json"
  qemu-img map --output=json "$img" > "$tmp/chk.qmap.json"
  if _unpack_step "$img" ""; then
    rd_judge unpack "unpack $img" "$tmp/chk.ref.raw" "$tmp/chk.out.raw" \
      "$tmp/chk.info.json" "$tmp/chk.qmap.json"
  fi
  rm -f "$tmp/chk.ref.raw" "$tmp/chk.out.raw"
  if _map_step "$img"; then
    rd_judge map "map --json $img" "$tmp/chk.info.json" \
      "$tmp/chk.qmap.json" "$tmp/chk.smap.json"
  fi
  if rd_info "$img" > "$tmp/chk.sinfo.json"; then
    rd_judge info "info --json $img" "$tmp/chk.info.json" "$tmp/chk.sinfo.json"
  else
    soft_fail "info --json $img failed"
  fi
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
