#!/bin/bash
# The shared library exports exactly the functions that lib/sparsecow.h
# declares (no internal symbol leaks out, none is missing), the linker
# version script lists the same names, and the program uses nothing of
# the library beyond the public header.
. "$srcdir/functions.sh"
requires nm

header="$top_srcdir/lib/sparsecow.h"
syms="$top_srcdir/lib/libsparsecow.syms"
so=$(ls "$top_builddir"/lib/.libs/libsparsecow.so.*.*.* 2>/dev/null | head -n 1)
[ -n "$so" ] || fail "libsparsecow.so was not built"

# Every function prototype of the header: "extern TYPE NAME (".
tr '\n' ' ' < "$header" | grep -oE 'extern [^;]*;' \
  | grep -oE '\bsc_[a-z0-9_]+ *\(' | tr -d ' (' | sort -u > "$tmp/header"
[ "$(wc -l < "$tmp/header")" -ge 20 ] || fail "header parse found too few functions"

nm -D --defined-only "$so" | awk '$2 == "T" || $2 == "W" { print $3 }' \
  | sed 's/@.*//' | sort -u > "$tmp/exported"
diff -u "$tmp/header" "$tmp/exported" \
  || fail "exports of $so differ from the functions of sparsecow.h"

# Every exported symbol is in the version node, and nothing else is.
nm -D --defined-only "$so" | awk '{ print $3 }' | grep -v '^LIBSPARSECOW_0$' \
  | grep -v '@@LIBSPARSECOW_0$' && fail "symbols outside the version node" || :
sed -n 's/^ *\(sc_[a-z0-9_]*\);$/\1/p' "$syms" | sort -u > "$tmp/syms"
diff -u "$tmp/header" "$tmp/syms" \
  || fail "lib/libsparsecow.syms differs from the functions of sparsecow.h"

# The program includes only the public header of the library, and
# every library function it calls is a public one.
if grep -n '#include "\(internal\|endpoint\|qcow2\)\.h"' "$top_srcdir"/src/*.[ch]; then
  fail "src/ includes a private header of lib/"
fi
for o in "$top_builddir"/src/*.o; do
  nm -u "$o" | awk '{ print $2 }' | grep '^sc_' || :
done | sort -u > "$tmp/used"
[ -s "$tmp/used" ] || fail "found no library call in src/*.o"
comm -23 "$tmp/used" "$tmp/header" > "$tmp/private"
[ ! -s "$tmp/private" ] || { cat "$tmp/private"; fail "src/ calls private functions"; }
echo "$(wc -l < "$tmp/exported") exported functions, all declared in sparsecow.h"

# pkg-config answers for the library alone, on a machine without the
# .pc files of its own dependencies (their runtime libraries only): the
# compile line of libsparsecow(3) needs --cflags and --libs.
if command -v pkg-config >/dev/null; then
  PKG_CONFIG_LIBDIR="$top_builddir/lib" pkg-config --exists libsparsecow ||
    fail "pkg-config --exists libsparsecow fails without the dependencies' .pc files"
  PKG_CONFIG_LIBDIR="$top_builddir/lib" pkg-config --cflags --libs libsparsecow \
    >/dev/null || fail "pkg-config --cflags --libs libsparsecow fails"
fi

