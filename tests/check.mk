# tests of this area; fragments are included by Makefile.am
# sparsecow check against qemu-img check; hostile images.
TESTS += tests/check-qemu.sh tests/check-fuzz.sh tests/check-damaged.sh \
	tests/check-slow.sh
EXTRA_DIST += tests/check-functions.sh \
	tests/check-qemu.sh tests/check-fuzz.sh tests/check-damaged.sh \
	tests/check-slow.sh
