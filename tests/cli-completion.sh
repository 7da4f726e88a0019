#!/bin/bash
# The bash completion completes commands, every command's options as
# its --help lists them, option values, and operands by kind: images,
# data, block maps and NBD URIs.
. "$srcdir/functions.sh"

PATH=$(dirname "$SPARSECOW"):$PATH
# shellcheck disable=SC1091
. "$top_srcdir/completion/sparsecow"
complete_words () {
  unset COMP_LINE COMP_POINT
  COMP_WORDS=("$@")
  COMP_CWORD=$(($# - 1))
  COMPREPLY=()
  _sparsecow
  printf '%s\n' "${COMPREPLY[@]}"
}
# complete_line LINE: as bash calls the function for LINE typed at a
# prompt, with COMP_LINE and words split at COMP_WORDBREAKS too.
complete_line () {
  local w
  COMP_LINE=$1
  COMP_POINT=${#1}
  # Readline's words: blanks separate, each word-break character is a
  # word of its own (enough for the lines below).
  read -ra COMP_WORDS <<<"$(sed 's/\([=:]\)/ \1 /g' <<<"$1")"
  [[ $1 != *" " ]] || COMP_WORDS+=("")
  COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
  COMPREPLY=()
  _sparsecow
  for w in "${COMPREPLY[@]}"; do printf '%s\n' "$w"; done
}
# offers WORD ARGS...: the completion of ARGS offers WORD.  (Captured
# first: "grep -q" in a pipeline would stop reading early, and the
# writer's SIGPIPE fail the pipeline under pipefail.)
offers () {
  local word=$1 got; shift
  got=$(complete_words "$@")
  grep -qx -- "$word" <<<"$got" || fail "$* offers no $word: $got"
}
# offers_not WORD ARGS...: the completion of ARGS does not offer WORD.
offers_not () {
  local word=$1 got; shift
  got=$(complete_words "$@")
  ! grep -qx -- "$word" <<<"$got" || fail "$* offers $word: $got"
}
[ "$(complete_words sparsecow un)" = unpack ] || fail "command not completed"
# Every command of the help is completed.
for cmd in $(sparsecow --help | sed -n 's/^  *sparsecow \([a-z][a-z]*\) .*/\1/p' | sort -u); do
  offers "$cmd" sparsecow "${cmd:0:3}"
done
offers verify sparsecow ver
offers --progress= sparsecow pack --prog
offers --backing-chain sparsecow info --back
offers --force-share sparsecow unpack --
# A lone "-" offers the options, the short ones of qemu-img's habits too.
for cmd in pack unpack info map verify; do
  offers -U sparsecow "$cmd" -
done
offers -O sparsecow pack -
offers -c sparsecow pack -
offers --force sparsecow pack -
[ "$(complete_words sparsecow pack -c zs)" = zstd ] || fail "-c zs"
[ "$(complete_words sparsecow map --output=j)" = "--output=json" ] ||
  fail "--output=j"
cd "$tmp"
touch disk.raw
[ "$(complete_words sparsecow pack dis)" = disk.raw ] || fail "file operand"

# Operands by kind.  pack's SOURCE: data (files, devices) and NBD URIs.
touch img.qcow2 old.IMG a.bmap
mkdir sub
for w in disk.raw img.qcow2 sub nbd:// nbds:// nbd+unix:///; do
  offers "$w" sparsecow pack ""
done
offers /dev/null sparsecow pack /dev/nu
[ "$(complete_words sparsecow pack nbd+)" = "nbd+unix:///" ] ||
  fail "pack nbd+: $(complete_words sparsecow pack nbd+)"
# The IMAGE of unpack, info and check: images and directories, not
# other files; any file where there is no image.
for cmd in unpack info check; do
  for w in img.qcow2 old.IMG sub nbd://; do
    offers "$w" sparsecow $cmd ""
  done
  offers_not disk.raw sparsecow $cmd ""
  offers_not a.bmap sparsecow $cmd ""
  offers disk.raw sparsecow $cmd dis
done
offers img.qcow2 sparsecow unpack -S 4k -f ""
offers_not disk.raw sparsecow unpack -S 4k -f ""
# Its TARGETs: data.
offers disk.raw sparsecow unpack img.qcow2 ""
offers disk.raw sparsecow unpack img.qcow2 new.raw ""
offers disk.raw sparsecow unpack -- [ qemu-nbd -f qcow2 x ] ""
# pack's TARGET, after an option that takes a value: images.
offers img.qcow2 sparsecow pack -c zstd --level 3 disk.raw ""
offers_not disk.raw sparsecow pack -c zstd --level 3 disk.raw ""
# Block maps.
for args in "bmap -o" "bmap disk.raw --output" "pack --bmap-out" \
            "unpack --bmap"; do
  # shellcheck disable=SC2086
  offers a.bmap sparsecow $args ""
  # shellcheck disable=SC2086
  offers_not disk.raw sparsecow $args ""
done
offers --map=bmap:a.bmap sparsecow pack --map=bmap:
offers_not --map=bmap:disk.raw sparsecow pack --map=bmap:
offers bmap:a.bmap sparsecow pack --map bmap:
offers bmap: sparsecow pack --map b
# Option values.
[ "$(complete_words sparsecow info -f q)" = qcow2 ] || fail "info -f q"
offers raw sparsecow map -f ""
offers disk.raw sparsecow pack -f ""
offers compat=1.1 sparsecow pack -o compat=
offers cluster_size=4k,compression_type= sparsecow pack -o cluster_size=4k,compr
offers --zero=skip sparsecow unpack --zero=
offers qemu-nbd sparsecow pack -- [ qemu-n
[ "$(complete_words sparsecow unpack -O "")" = raw ] || fail "unpack -O"
offers img.qcow2 sparsecow unpack -O raw ""
# As bash calls it for a line typed at a prompt: readline puts only
# what follows the last "=" or ":" in place.
line_offers () {
  local word=$1 got
  got=$(complete_line "$2")
  grep -qx -- "$word" <<<"$got" || fail "<$2> offers no $word: $got"
}
line_offers a.bmap "sparsecow pack --map=bmap:"
line_offers a.bmap "sparsecow pack --map=bmap:a"
line_offers // "sparsecow pack nbd:"
line_offers 1.1 "sparsecow pack -o compat="
line_offers json "sparsecow unpack --progress=j"
# A descriptor for progress: nbdcopy's --progress=N, and fd:N and
# json:fd:N, for the descriptors open in the shell (not 0 or 1).
exec 7>"$tmp/progress.log"
offers --progress=7 sparsecow pack --progress=
offers --progress=2 sparsecow pack --progress=
offers --progress=fd:7 sparsecow pack --progress=fd:
offers --progress=json:fd:7 sparsecow unpack --progress=json:fd:
offers_not --progress=0 sparsecow pack --progress=
offers_not --progress=1 sparsecow pack --progress=
offers_not --progress=fd:0 sparsecow pack --progress=fd:
offers_not --progress=fd:json sparsecow pack --progress=fd:
line_offers 7 "sparsecow unpack --progress="
line_offers 7 "sparsecow unpack --progress=fd:"
line_offers 7 "sparsecow verify --progress=json:fd:"
exec 7>&-
offers_not --progress=7 sparsecow pack --progress=
offers_not --progress=fd:7 sparsecow pack --progress=fd:
line_offers img.qcow2 "sparsecow unpack -q "
# Option values after "=", as the options take them.
offers --compress=zstd sparsecow pack --compress=
offers --compress=deflate sparsecow pack --compress=
[ "$(complete_words sparsecow pack --compress=z)" = --compress=zstd ] ||
  fail "pack --compress=z: $(complete_words sparsecow pack --compress=z)"
line_offers zstd "sparsecow pack --compress=z"
offers --bmap-out=a.bmap sparsecow pack --bmap-out=
offers_not --bmap-out=disk.raw sparsecow pack --bmap-out=
offers --bmap=a.bmap sparsecow unpack --bmap=
line_offers a.bmap "sparsecow unpack --bmap="
# -c takes a codec or none ("pack -c disk.raw disk.qcow2"): both.
for w in deflate zstd disk.raw nbd://; do
  offers "$w" sparsecow pack -c ""
done
# --compress takes its value after "=" only: the next word is an
# operand, never a codec.
offers disk.raw sparsecow pack --compress ""
offers_not zstd sparsecow pack --compress ""
# Only options that the command takes: not the "-r" of a server
# command in the help's text (check refuses -r), not "--bmap" of bmap's
# description.
for cmd in check info map unpack bmap verify pack; do
  offers_not -r sparsecow $cmd -
done
offers_not --bmap sparsecow bmap --
usage_rc=0
sparsecow check -r leaks "$tmp/img.qcow2" 2>/dev/null || usage_rc=$?
[ "$usage_rc" = 1 ] || fail "test setup: check -r is not refused"

# Installed where bash-completion's pkg-config file says it looks
# (completionsdir), read with the build's prefix and datadir, so that
# --prefix and DESTDIR still place it.  A bash-completion.pc of the
# test's own, first on PKG_CONFIG_PATH, puts it elsewhere than the
# fallback: configure must ask pkg-config, not assume.
requires pkg-config make
mkdir "$tmp/pc" "$tmp/cfg"
cat >"$tmp/pc/bash-completion.pc" <<'PCEOF'
prefix=/usr
datadir=/usr/share
completionsdir=${prefix}/lib/sc-test/completions
Name: bash-completion
Description: test stand-in
Version: 2.11
PCEOF
[ "$(PKG_CONFIG_PATH=$tmp/pc pkg-config --define-variable=prefix=/opt/sc \
     --variable=completionsdir bash-completion)" = \
  /opt/sc/lib/sc-test/completions ] || fail "test setup: the stand-in .pc"
(cd "$tmp/cfg" &&
 PKG_CONFIG_PATH=$tmp/pc "$(cd "$top_srcdir" && pwd)/configure" \
   --prefix=/opt/sc >configure.out 2>&1) ||
  fail "configure with a bash-completion.pc: $(tail -5 "$tmp/cfg/configure.out")"
make -s -C "$tmp/cfg" install-dist_bashcompletionDATA DESTDIR="$tmp/dest" \
  >/dev/null || fail "make install-dist_bashcompletionDATA"
[ -f "$tmp/dest/opt/sc/lib/sc-test/completions/sparsecow" ] ||
  fail "not installed in the .pc's completionsdir: $(cd "$tmp/dest" && find . -type f)"
# The build itself: the real bash-completion's directory where it is
# installed, else under datadir.
want='${datadir}/bash-completion/completions'
if pkg-config --exists bash-completion; then
  want=$(pkg-config --define-variable=prefix='${prefix}' \
           --define-variable=datadir='${datadir}' \
           --variable=completionsdir bash-completion)
fi
got=$(sed -n 's/^bashcompletiondir = //p' "$top_builddir/Makefile")
[ "$got" = "$want" ] || fail "bashcompletiondir is $got, not $want"
