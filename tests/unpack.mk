# tests of this area; fragments are included by Makefile.am

# Extent maps, the pipeline, file endpoints and sc_copy.
check_PROGRAMS += tests/unit-extent
tests_unit_extent_SOURCES = tests/unit-extent.c
tests_unit_extent_CFLAGS = $(UNIT_TEST_CFLAGS)
tests_unit_extent_LDADD = $(UNIT_TEST_LIBS)
TESTS += tests/unit-extent

# The unpack command and its targets, with qemu-img as the judge.
TESTS += tests/unpack-target.sh tests/unpack-large.sh tests/unpack-device.sh \
	tests/unpack-stream.sh
EXTRA_DIST += tests/unpack-target.sh tests/unpack-large.sh tests/unpack-device.sh \
	tests/unpack-stream.sh

# Block-device targets: zero modes, read-back, several at once, held
# devices; files written in place.
TESTS += tests/unpack-device-zero.sh tests/unpack-device-verify.sh \
	tests/unpack-device-multi.sh tests/unpack-device-busy.sh \
	tests/unpack-device-thin.sh tests/unpack-device-refuse.sh \
	tests/unpack-device-missing.sh tests/unpack-device-alias.sh \
	tests/unpack-device-holders.sh \
	tests/unpack-in-place.sh tests/unpack-chain-target.sh \
	tests/unpack-verify-sparse.sh
EXTRA_DIST += tests/unpack-device-zero.sh tests/unpack-device-verify.sh \
	tests/unpack-device-multi.sh tests/unpack-device-busy.sh \
	tests/unpack-device-thin.sh tests/unpack-device-refuse.sh \
	tests/unpack-device-missing.sh tests/unpack-device-alias.sh \
	tests/unpack-device-holders.sh \
	tests/unpack-in-place.sh tests/unpack-chain-target.sh \
	tests/unpack-verify-sparse.sh

# On xfs and btrfs (loop-mounted, root only): pack and unpack share the
# source's blocks, and make the same as where nothing can be shared.
TESTS += tests/copy-reflink.sh
EXTRA_DIST += tests/copy-reflink.sh
