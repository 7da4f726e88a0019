# tests of this area; fragments are included by Makefile.am
# verify: content compared against qemu-img compare.
TESTS += tests/verify-compare.sh
EXTRA_DIST += tests/verify-compare.sh
