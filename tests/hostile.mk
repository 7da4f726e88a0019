# tests of this area; fragments are included by Makefile.am
# Hostile input, one class per test, and faults of the world around a
# run (full file systems, read errors, signals, sources that change).
EXTRA_DIST += tests/hostile-functions.sh
TESTS += tests/hostile-version.sh
EXTRA_DIST += tests/hostile-version.sh
TESTS += tests/hostile-cut.sh
EXTRA_DIST += tests/hostile-cut.sh
TESTS += tests/hostile-chain.sh
EXTRA_DIST += tests/hostile-chain.sh
TESTS += tests/hostile-enospc.sh
EXTRA_DIST += tests/hostile-enospc.sh
TESTS += tests/hostile-readerror.sh
EXTRA_DIST += tests/hostile-readerror.sh
TESTS += tests/hostile-signals.sh tests/hostile-signals-in-place.sh \
	tests/hostile-signals-complete.sh
EXTRA_DIST += tests/hostile-signals.sh tests/hostile-signals-in-place.sh \
	tests/hostile-signals-complete.sh
TESTS += tests/hostile-signals-stream.sh
EXTRA_DIST += tests/hostile-signals-stream.sh
TESTS += tests/hostile-source-change.sh tests/hostile-source-change-device.sh
EXTRA_DIST += tests/hostile-source-change.sh \
	tests/hostile-source-change-device.sh
TESTS += tests/hostile-overlap.sh
EXTRA_DIST += tests/hostile-overlap.sh
# Faults: a command that fails leaves nothing that looks complete.
TESTS += tests/fault-stream-target.sh
EXTRA_DIST += tests/fault-stream-target.sh
TESTS += tests/fault-stream-memory.sh
EXTRA_DIST += tests/fault-stream-memory.sh
TESTS += tests/fault-epipe.sh
EXTRA_DIST += tests/fault-epipe.sh
TESTS += tests/fault-lowmem.sh
EXTRA_DIST += tests/fault-lowmem.sh
TESTS += tests/fault-in-place-refused.sh
EXTRA_DIST += tests/fault-in-place-refused.sh
TESTS += tests/fault-backing.sh
EXTRA_DIST += tests/fault-backing.sh
