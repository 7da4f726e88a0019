# tests of this area; fragments are included by Makefile.am
# The qcow2 header parser and reader: unit tests on crafted headers, and
# info/map compared with qemu-img on real and malformed images.
TESTS += tests/qcow2-info-map.sh
EXTRA_DIST += tests/qcow2-info-map.sh

check_PROGRAMS += tests/unit-qcow2
TESTS += tests/unit-qcow2
tests_unit_qcow2_SOURCES = tests/unit-qcow2.c
tests_unit_qcow2_CFLAGS = $(UNIT_TEST_CFLAGS)
tests_unit_qcow2_LDADD = $(UNIT_TEST_LIBS)
