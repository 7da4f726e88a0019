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
