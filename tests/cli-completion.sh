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
# offers WORD ARGS...: the completion of ARGS offers WORD.  (Captured
# first: "grep -q" in a pipeline would stop reading early, and the
# writer's SIGPIPE fail the pipeline under pipefail.)
offers () {
  local word=$1 got; shift
  got=$(complete_words "$@")
  grep -qx -- "$word" <<<"$got" || fail "$* offers no $word: $got"
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
[ "$(complete_words sparsecow pack -c zs)" = zstd ] || fail "-c zs"
[ "$(complete_words sparsecow map --output=j)" = "--output=json" ] ||
  fail "--output=j"
cd "$tmp"
touch disk.raw
[ "$(complete_words sparsecow pack dis)" = disk.raw ] || fail "file operand"
