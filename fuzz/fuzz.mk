# Fuzz targets: fragment included by Makefile.am.
#
# Each target's source builds twice: as a libFuzzer program with
# --enable-fuzzing ("make fuzz" runs each for FUZZ_SECONDS), and always
# as a replay program that runs saved inputs once, which "make check"
# runs over the seed corpus and the regression inputs.

FUZZ_NAMES = qcow2 stream bmap nbd
FUZZ_COMMON = fuzz/fuzz.h fuzz/sink.c

check_PROGRAMS += fuzz/replay-qcow2 fuzz/replay-stream fuzz/replay-bmap \
	fuzz/replay-nbd
fuzz_replay_qcow2_SOURCES = $(FUZZ_COMMON) fuzz/fuzz-qcow2.c fuzz/replay.c
fuzz_replay_qcow2_LDADD = lib/libsccore.la
fuzz_replay_stream_SOURCES = $(FUZZ_COMMON) fuzz/fuzz-stream.c fuzz/replay.c
fuzz_replay_stream_LDADD = lib/libsccore.la
fuzz_replay_bmap_SOURCES = $(FUZZ_COMMON) fuzz/fuzz-bmap.c fuzz/replay.c
fuzz_replay_bmap_LDADD = lib/libsccore.la
fuzz_replay_nbd_SOURCES = $(FUZZ_COMMON) fuzz/fuzz-nbd.c fuzz/replay.c
fuzz_replay_nbd_LDADD = lib/libsccore.la

TESTS += tests/fuzz-replay.sh
EXTRA_DIST += tests/fuzz-replay.sh fuzz/make-seeds.sh fuzz/qcow2.dict \
	fuzz/make-bmap-seeds.sh fuzz/bmap.dict fuzz/make-nbd-seeds.py \
	fuzz/nbd.dict tests/fuzz-regressions

# The seed corpus: images made by qemu-img, qemu-io and sparsecow pack
# (make-seeds.sh exits 77 without qemu: no seeds, only regressions).
fuzz/seeds.stamp: $(srcdir)/fuzz/make-seeds.sh src/sparsecow$(EXEEXT)
	$(AM_V_GEN)rm -rf fuzz/seeds; \
	$(SHELL) $(srcdir)/fuzz/make-seeds.sh fuzz/seeds src/sparsecow$(EXEEXT) \
	  || test $$? = 77; \
	mkdir -p fuzz/seeds && touch $@
# The bmap target's seeds: bmap files written by bmaptool create (none
# without bmaptool).
fuzz/seeds-bmap.stamp: $(srcdir)/fuzz/make-bmap-seeds.sh
	$(AM_V_GEN)rm -rf fuzz/seeds-bmap; \
	$(SHELL) $(srcdir)/fuzz/make-bmap-seeds.sh fuzz/seeds-bmap || test $$? = 77; \
	mkdir -p fuzz/seeds-bmap && touch $@
# The NBD target's seeds: server answers written by make-nbd-seeds.py
# (none without python3).
fuzz/seeds-nbd.stamp: $(srcdir)/fuzz/make-nbd-seeds.py
	$(AM_V_GEN)rm -rf fuzz/seeds-nbd; \
	python3 $(srcdir)/fuzz/make-nbd-seeds.py fuzz/seeds-nbd || test $$? = 77; \
	mkdir -p fuzz/seeds-nbd && touch $@
tests/fuzz-replay.log: fuzz/seeds.stamp fuzz/seeds-bmap.stamp fuzz/seeds-nbd.stamp
CLEANFILES += fuzz/seeds.stamp fuzz/seeds-bmap.stamp fuzz/seeds-nbd.stamp
# The corpus that make fuzz grows in fuzz/corpus-* is kept.
clean-local: clean-fuzz
clean-fuzz:
	rm -rf fuzz/seeds fuzz/seeds-bmap fuzz/seeds-nbd

# Bounded runs: each input at most 1 s and 2 GiB, inputs at most 1 MiB.
# Each target runs FUZZ_SECONDS, or with FUZZ_TOTAL_SECONDS set, an
# equal share of that (CI's budget, which a new target then does not
# grow).
FUZZ_SECONDS = 60
FUZZ_TOTAL_SECONDS =
FUZZ_FLAGS = -timeout=1 -rss_limit_mb=2048 -max_len=1048576

if ENABLE_FUZZING
noinst_PROGRAMS = fuzz/fuzz-qcow2 fuzz/fuzz-stream fuzz/fuzz-bmap \
	fuzz/fuzz-nbd
fuzz_fuzz_qcow2_SOURCES = $(FUZZ_COMMON) fuzz/fuzz-qcow2.c
fuzz_fuzz_qcow2_LDFLAGS = $(AM_LDFLAGS) -fsanitize=fuzzer
fuzz_fuzz_qcow2_LDADD = lib/libsccore.la
fuzz_fuzz_stream_SOURCES = $(FUZZ_COMMON) fuzz/fuzz-stream.c
fuzz_fuzz_stream_LDFLAGS = $(AM_LDFLAGS) -fsanitize=fuzzer
fuzz_fuzz_stream_LDADD = lib/libsccore.la
fuzz_fuzz_bmap_SOURCES = $(FUZZ_COMMON) fuzz/fuzz-bmap.c
fuzz_fuzz_bmap_LDFLAGS = $(AM_LDFLAGS) -fsanitize=fuzzer
fuzz_fuzz_bmap_LDADD = lib/libsccore.la
fuzz_fuzz_nbd_SOURCES = $(FUZZ_COMMON) fuzz/fuzz-nbd.c
fuzz_fuzz_nbd_LDFLAGS = $(AM_LDFLAGS) -fsanitize=fuzzer
fuzz_fuzz_nbd_LDADD = lib/libsccore.la

# Each target in turn, one core, for FUZZ_SECONDS.  New inputs go to
# fuzz/corpus-NAME (kept between runs); a crash stops with its input
# saved as fuzz/crash-NAME-*, to be added to tests/fuzz-regressions/.
# The bmap and NBD targets have their own seeds and dictionaries; the
# others share the images' and qcow2.dict.
fuzz: fuzz/seeds.stamp fuzz/seeds-bmap.stamp fuzz/seeds-nbd.stamp \
	$(noinst_PROGRAMS)
	@set -e; secs=$(FUZZ_SECONDS); \
	if test -n "$(FUZZ_TOTAL_SECONDS)"; then \
	  n=0; for t in $(FUZZ_NAMES); do n=$$((n + 1)); done; \
	  secs=$$(( $(FUZZ_TOTAL_SECONDS) / n )); \
	fi; \
	for t in $(FUZZ_NAMES); do \
	  mkdir -p fuzz/corpus-$$t; \
	  echo "== fuzz-$$t: $$secs s"; \
	  seeds=fuzz/seeds; dict=$(srcdir)/fuzz/qcow2.dict; \
	  if test $$t = bmap; then \
	    seeds=fuzz/seeds-bmap; dict=$(srcdir)/fuzz/bmap.dict; \
	  elif test $$t = nbd; then \
	    seeds=fuzz/seeds-nbd; dict=$(srcdir)/fuzz/nbd.dict; \
	  fi; \
	  fuzz/fuzz-$$t -max_total_time=$$secs $(FUZZ_FLAGS) \
	    -dict=$$dict -artifact_prefix=fuzz/crash-$$t- fuzz/corpus-$$t \
	    $$seeds $(srcdir)/tests/fuzz-regressions; \
	done
else
fuzz:
	@echo "make fuzz: configure with --enable-fuzzing (and CC=clang)" >&2; \
	exit 1
endif
.PHONY: fuzz clean-fuzz
