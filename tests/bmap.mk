# tests of block maps; fragment included by Makefile.am

# sparsecow bmap and pack/unpack with bmaps, against bmaptool and
# qemu-img.
TESTS += tests/bmap.sh
EXTRA_DIST += tests/bmap.sh

# Older bmap formats (1.0 to 1.4) and other checksum types, against
# bmaptool copy.
TESTS += tests/bmap-formats.sh
EXTRA_DIST += tests/bmap-formats.sh

# A full file system under the spill file of a bmap being written.
TESTS += tests/bmap-enospc.sh
EXTRA_DIST += tests/bmap-enospc.sh

# The README's image-builder workflow, run as written (loop device as
# the card).
TESTS += tests/readme-flash.sh
EXTRA_DIST += tests/readme-flash.sh
