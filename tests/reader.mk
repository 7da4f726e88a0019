# tests of this area; fragments are included by Makefile.am
# Reader tests: sparsecow unpack/map/info against qemu-img on images made
# by qemu-img, qemu-io and e2image.
EXTRA_DIST += tests/reader-functions.sh

TESTS += tests/reader-basic.sh
EXTRA_DIST += tests/reader-basic.sh

TESTS += tests/reader-compressed.sh
EXTRA_DIST += tests/reader-compressed.sh

TESTS += tests/reader-zero.sh
EXTRA_DIST += tests/reader-zero.sh

TESTS += tests/reader-backing.sh
EXTRA_DIST += tests/reader-backing.sh

TESTS += tests/reader-snapshots.sh
EXTRA_DIST += tests/reader-snapshots.sh

TESTS += tests/reader-datafile.sh
EXTRA_DIST += tests/reader-datafile.sh

TESTS += tests/reader-e2image.sh
EXTRA_DIST += tests/reader-e2image.sh

TESTS += tests/reader-refuse.sh
EXTRA_DIST += tests/reader-refuse.sh
