# tests of this area; fragments are included by Makefile.am
# The qcow2 header parser and reader: unit tests on crafted headers, and
# info/map compared with qemu-img on real and malformed images.
TESTS += tests/qcow2-info-map.sh
EXTRA_DIST += tests/qcow2-info-map.sh
