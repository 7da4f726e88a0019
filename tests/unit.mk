# Unit tests of the codecs and small helpers.
check_PROGRAMS += tests/unit-codec
TESTS += tests/unit-codec
tests_unit_codec_SOURCES = tests/unit-codec.c
tests_unit_codec_CFLAGS = $(UNIT_TEST_CFLAGS) $(ZLIB_CFLAGS) $(ZSTD_CFLAGS)
tests_unit_codec_LDADD = $(UNIT_TEST_LIBS) $(ZLIB_LIBS) $(ZSTD_LIBS)

# The shared library's exports are exactly the public header.
TESTS += tests/lib-exports.sh
EXTRA_DIST += tests/lib-exports.sh
