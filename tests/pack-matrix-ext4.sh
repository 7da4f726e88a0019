#!/bin/bash
# pack: a real file system image (ext4 holding /usr/share/doc) through a
# reduced matrix of format options; every value of every option appears.
. "$srcdir/functions.sh"
. "$srcdir/pack-common.sh"
requires mke2fs

[ -d /usr/share/doc ] || { echo "$0: SKIP: no /usr/share/doc"; exit 77; }
mke2fs -q -F -t ext4 -d /usr/share/doc "$tmp/ext4.img" 256M ||
  { echo "$0: SKIP: mke2fs -d failed"; exit 77; }
reduced_matrix "$tmp/ext4.img"
