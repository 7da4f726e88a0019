# tests of this area; fragments are included by Makefile.am
# NBD sources, targets and faults, with qemu-nbd, nbdkit and a server
# that lies (nbd-liar.py), judged by qemu-img, nbdinfo, nbdcopy and cmp.
TESTS += tests/nbd-source.sh tests/nbd-target.sh tests/nbd-faults.sh \
	tests/nbd-timeout.sh tests/nbd-messages.sh tests/nbd-bmap.sh \
	tests/nbd-server-io.sh tests/nbd-source-target.sh \
	tests/nbd-source-netns.sh
EXTRA_DIST += tests/nbd-source.sh tests/nbd-target.sh tests/nbd-faults.sh \
	tests/nbd-timeout.sh tests/nbd-messages.sh tests/nbd-bmap.sh \
	tests/nbd-server-io.sh tests/nbd-source-target.sh \
	tests/nbd-source-netns.sh tests/nbd-liar.py
