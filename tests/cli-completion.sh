#!/bin/bash
# The bash completion completes commands, and every command's options
# as its --help lists them.
. "$srcdir/functions.sh"

PATH=$(dirname "$SPARSECOW"):$PATH
# shellcheck disable=SC1091
. "$top_srcdir/completion/sparsecow"
complete_words () {
  COMP_WORDS=("$@")
  COMP_CWORD=$(($# - 1))
  COMPREPLY=()
  _sparsecow
  printf '%s\n' "${COMPREPLY[@]}"
}
[ "$(complete_words sparsecow un)" = unpack ] || fail "command not completed"
complete_words sparsecow pack --prog | grep -qx -- "--progress=" ||
  fail "pack --prog: $(complete_words sparsecow pack --prog)"
complete_words sparsecow info --back | grep -qx -- "--backing-chain" ||
  fail "info --back: $(complete_words sparsecow info --back)"
complete_words sparsecow unpack -- | grep -qx -- "--force-share" ||
  fail "unpack: no --force-share"
[ "$(complete_words sparsecow pack -c zs)" = zstd ] || fail "-c zs"
[ "$(complete_words sparsecow map --output=j)" = "--output=json" ] ||
  fail "--output=j"
cd "$tmp"
touch disk.raw
[ "$(complete_words sparsecow pack dis)" = disk.raw ] || fail "file operand"
