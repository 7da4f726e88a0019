# tests of this area; fragments are included by Makefile.am
# The command line: common options, usage errors, progress, -S, info's
# JSON and image locks, against qemu-img where it has the same thing.
TESTS += \
	tests/cli-options.sh \
	tests/cli-progress.sh \
	tests/cli-progress-pace.sh \
	tests/cli-stdin.sh \
	tests/cli-quiet.sh \
	tests/cli-info-json.sh \
	tests/cli-damaged-info.sh \
	tests/cli-sparse.sh \
	tests/cli-lock.sh \
	tests/cli-target-names.sh \
	tests/cli-text-storage.sh \
	tests/cli-completion.sh \
	tests/cli-fifo.sh
EXTRA_DIST += \
	tests/cli-options.sh \
	tests/cli-progress.sh \
	tests/cli-progress-pace.sh \
	tests/progress-check.py \
	tests/info-json-same.py \
	tests/cli-stdin.sh \
	tests/cli-quiet.sh \
	tests/cli-info-json.sh \
	tests/cli-damaged-info.sh \
	tests/cli-sparse.sh \
	tests/cli-lock.sh \
	tests/cli-target-names.sh \
	tests/cli-text-storage.sh \
	tests/cli-completion.sh \
	tests/cli-fifo.sh

# The example of libsparsecow(3), compiled from the page itself as a
# program of the installed library would be, and run against qemu-img.
check_PROGRAMS += tests/man-example
nodist_tests_man_example_SOURCES = tests/man-example.c
tests_man_example_LDADD = lib/libsparsecow.la
CLEANFILES += tests/man-example.c
tests/man-example.c: $(top_srcdir)/man/libsparsecow.3
	$(AM_V_GEN)mkdir -p tests && \
	awk '/^\.SH EXAMPLE/ { ex = 1 } ex && /^\.EX/ { on = 1; next } \
	     on && /^\.EE/ { exit } on { print }' $< | \
	sed -e 's/\\-/-/g' -e 's/\\e/\\/g' > $@-t && mv $@-t $@
TESTS += tests/cli-man-example.sh
EXTRA_DIST += tests/cli-man-example.sh
