# tests of this area; fragments are included by Makefile.am

# The writer's arithmetic: descriptors, refcount packing, layout.
check_PROGRAMS += tests/unit-writer
tests_unit_writer_SOURCES = tests/unit-writer.c
tests_unit_writer_CFLAGS = $(UNIT_TEST_CFLAGS)
tests_unit_writer_LDADD = $(UNIT_TEST_LIBS)
TESTS += tests/unit-writer

# pack against qemu-img: the format matrix, determinism, safety.
TESTS += \
	tests/pack-matrix.sh \
	tests/pack-matrix-data.sh \
	tests/pack-matrix-content.sh \
	tests/pack-matrix-ext4.sh
EXTRA_DIST += \
	tests/pack-common.sh \
	tests/pack-matrix.sh \
	tests/pack-matrix-data.sh \
	tests/pack-matrix-content.sh \
	tests/pack-matrix-ext4.sh
TESTS += \
	tests/pack-determinism.sh \
	tests/pack-safety.sh \
	tests/pack-in-place.sh \
	tests/pack-in-place-rodir.sh \
	tests/pack-options.sh \
	tests/pack-huge.sh \
	tests/pack-stream.sh \
	tests/pack-stream-zeros.sh \
	tests/pack-stream-sparse.sh \
	tests/pack-repack.sh \
	tests/pack-isal.sh \
	tests/pack-zstd.sh \
	tests/pack-digest-aside.sh
EXTRA_DIST += \
	tests/pack-determinism.sh \
	tests/pack-safety.sh \
	tests/pack-in-place.sh \
	tests/pack-in-place-rodir.sh \
	tests/pack-options.sh \
	tests/pack-huge.sh \
	tests/pack-stream.sh \
	tests/pack-stream-zeros.sh \
	tests/pack-stream-sparse.sh \
	tests/pack-repack.sh \
	tests/pack-isal.sh \
	tests/pack-zstd.sh \
	tests/pack-digest-aside.sh
