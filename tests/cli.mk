# tests of this area; fragments are included by Makefile.am
# The command line: common options, usage errors, progress, -S, info's
# JSON and image locks, against qemu-img where it has the same thing.
TESTS += \
	tests/cli-options.sh \
	tests/cli-progress.sh \
	tests/cli-stdin.sh \
	tests/cli-info-json.sh \
	tests/cli-sparse.sh \
	tests/cli-lock.sh \
	tests/cli-completion.sh
EXTRA_DIST += \
	tests/cli-options.sh \
	tests/cli-progress.sh \
	tests/cli-stdin.sh \
	tests/cli-info-json.sh \
	tests/cli-sparse.sh \
	tests/cli-lock.sh \
	tests/cli-completion.sh
