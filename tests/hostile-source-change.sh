#!/usr/bin/env bash
# A source file truncated, extended, or cut and grown back to its size
# while it is packed is reported, not packed.  The target is a pipe
# whose reader takes the first MiB, changes the source, then drains the
# rest: pack is then in the middle of its run, blocked on the pipe,
# without any sleep or timing.  Raw data and a qcow2 image as the
# source, compressed and not.  What went into the pipe is no image
# that qemu-img check accepts, and no spill file is left in TMPDIR.
. "${srcdir:-$(dirname "$0")}/functions.sh"
. "${srcdir:-$(dirname "$0")}/hostile-functions.sh"
requires qemu-img python3 truncate

cd "$tmp"
mkdir spill
export TMPDIR=$tmp/spill
head -c 6M /dev/urandom > orig.raw
truncate -s 16M orig.raw
qemu-img convert -q -f raw -O qcow2 orig.raw orig.qcow2

# change HOW FILE: what the pipe's reader does to the source.
change () {
  case $1 in
    truncate) truncate -s 3M "$2" ;;
    extend) head -c 1M /dev/urandom >> "$2" ;;
    regrow) size=$(stat -c %s "$2"); truncate -s 3M "$2"; truncate -s "$size" "$2" ;;
  esac
}

for kind in raw qcow2; do
  for how in truncate extend regrow; do
    for c in "" "-c"; do
      cp orig.$kind src.$kind
      rc=0
      { "$SPARSECOW" pack $c src.$kind - 2>err || echo $? > rc; } |
        { head -c 1M > out.qcow2; change $how src.$kind; cat >> out.qcow2; }
      [ -s rc ] || fail "pack $c of $kind source ($how while packing) succeeded"
      rm -f rc
      grep -Eq "^sparsecow: src\.$kind: (source changed while packing|(short read|unexpected end of file) at offset [0-9]+|data cluster at host offset [0-9]+ lies (partly )?past the end)" err ||
        { cat err >&2; fail "pack $c of $kind source ($how while packing): unclear message"; }
      if grep -q "AddressSanitizer\|runtime error" err; then
        cat err >&2; fail "sanitizer report"
      fi
      # What went into the pipe is no image qemu-img check accepts.
      rc=0; qemu-img check -f qcow2 out.qcow2 >/dev/null 2>&1 || rc=$?
      [ $rc != 0 ] || fail "pack $c of $kind source ($how): qemu-img check accepts the output"
      [ -z "$(ls -A spill)" ] || fail "pack $c of $kind source ($how) left in TMPDIR: $(ls -A spill)"
      echo "$kind, $how, pack $c: $(cat err)"
    done
  done
done
exit 0
