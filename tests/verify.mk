# tests of this area; fragments are included by Makefile.am
# verify: content compared against qemu-img compare, and the embedded
# digest recomputed by an independent script.
TESTS += tests/verify-compare.sh tests/verify-digest.sh
EXTRA_DIST += tests/verify-compare.sh tests/verify-digest.sh \
	tests/verify-digest.py
