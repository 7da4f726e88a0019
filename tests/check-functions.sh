# Helpers for the check tests: source it after functions.sh.

# A JSON number field of qemu-img check --output=json (or ours); qemu
# leaves out "corruptions" and "leaks" when they are zero.
jfield () {
  local v
  v=$(sed -n "s/^ *\"$2\": \([0-9]*\),\{0,1\}\$/\1/p" "$1")
  echo "${v:-0}"
}

# Big-endian fields of an image: read them, and patch them in place.
be64 () { od -An -tu8 --endian=big -j "$2" -N 8 "$1" | tr -d ' '; }
be32 () { od -An -tu4 --endian=big -j "$2" -N 4 "$1" | tr -d ' '; }
be16 () { od -An -tu2 --endian=big -j "$2" -N 2 "$1" | tr -d ' '; }
put_bytes () {                  # FILE OFFSET HEXDIGITS
  printf "$(echo "$3" | sed 's/../\\x&/g')" |
    dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
put_be64 () { put_bytes "$1" "$2" "$(printf '%016x' "$3")"; }
put_be32 () { put_bytes "$1" "$2" "$(printf '%08x' "$3")"; }
put_be16 () { put_bytes "$1" "$2" "$(printf '%04x' "$3")"; }

# The offset bits of L1/L2 entries, and their COPIED flag.
OFFSET_MASK=$(( 0x00fffffffffffe00 ))
COPIED=$(( 1 << 63 ))

# compare_text IMAGE OUR-EXIT: the text of sparsecow check is that of
# qemu-img check, line for line on stdout, and sparsecow exits OUR-EXIT
# (qemu-img check's status, unless sparsecow counts damage that qemu
# does not).  Damage is then summed up on stderr, never on stdout.  An
# image that qemu-img check cannot open (it prints nothing) but that
# sparsecow checks (OUR-EXIT 2 or 3) has no text to compare with.
compare_text () {
  local img=$1 ours=$2 qrc=0 src=0
  timeout 60 qemu-img check "$img" >q.txt 2>/dev/null || qrc=$?
  sparsecow check "$img" >s.txt 2>s.terr || src=$?
  case $qrc/$src/$ours in
  1/[23]/[23])
    [ ! -s q.txt ] || fail "$img: qemu-img check exited 1 with a report: the oracle changed"
    [ -s s.txt ] || fail "$img: sparsecow check exited $src without a report"
    return ;;
  esac
  if ! diff -u q.txt s.txt >text.diff; then
    cat text.diff >&2
    fail "$img: sparsecow check's text differs from qemu-img check's"
  fi
  [ "$src" = "$ours" ] ||
    fail "$img: sparsecow check (text) exited $src, not $ours" \
         "(qemu-img check: $qrc)"
  if [ "$src" != "$qrc" ]; then
    grep -q "^sparsecow: .*: [0-9]* damaged structures were found that qemu-img check does not count" s.terr ||
      fail "$img: exit $src where qemu-img check exits $qrc, without the damage on stderr"
  fi
}
