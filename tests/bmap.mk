# tests of block maps; fragment included by Makefile.am

# sparsecow bmap and pack/unpack with bmaps, against bmaptool and
# qemu-img.
TESTS += tests/bmap.sh
EXTRA_DIST += tests/bmap.sh
