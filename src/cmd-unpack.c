/* sparsecow unpack: the guest data of a qcow2 image, to a sparse file,
 * block devices or standard output.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

/* Options of this command only, above the shared ids of cli.h. */
enum {
  OPT_ZERO = 0x200,
  OPT_VERIFY,
  OPT_BMAP,
};

/* More targets than this at once are refused (the library's bound). */
#define MAX_TARGETS 64

static void
usage (FILE *fp)
{
  fprintf (fp,
"Usage: %s unpack [OPTIONS] IMAGE TARGET...\n"
"Write the guest data of the qcow2 IMAGE to TARGET: a regular file\n"
"(created sparse; holes are not written), a block device, an NBD\n"
"export, or - for standard output.  IMAGE may be - (standard input) or\n"
"a named pipe: it is then read once, front to back.  Several TARGETs\n"
"(files or block devices) are all written from one read of IMAGE.\n"
"\n"
"Options:\n"
"  -f, --force            replace TARGET if it is an existing file; write\n"
"                         to TARGET if it is a block device\n"
"      --target-is-device write to TARGET, a block device (anything\n"
"                         else is refused)\n"
"  -n, --in-place         write into the existing TARGET where it is, with\n"
"                         no temporary name and no resizing (qemu-img\n"
"                         convert -n); it must hold the image\n"
"      --zero=auto|unmap|write|skip\n"
"                         how zero ranges are made so on an existing\n"
"                         target: unmap where the device guarantees zeros,\n"
"                         else zero it (auto); unmap or fail; zero without\n"
"                         unmapping; leave them as they are (skip)\n"
"      --target-is-zero   with -n: TARGET (a device, an NBD export) reads\n"
"                         as zero already: zero ranges are not written\n"
"      --verify           read every TARGET back after the flush and\n"
"                         compare it with IMAGE\n"
"      --snapshot NAME|ID unpack an internal snapshot instead of the\n"
"                         active layer\n"
"      --bmap FILE.bmap   unpack only the ranges of a block map of the\n"
"                         guest, each checked against its SHA-256; the\n"
"                         rest is a hole (see --zero)\n"
"  -O raw                 the output format, as qemu-img convert -O\n"
"  -S SIZE                as qemu-img convert: zeros are left unwritten\n"
"                         (a new file stays sparse) in runs of at least\n"
"                         SIZE bytes (default 4k); -S 0 writes them all\n"
CLI_COMMON_HELP
CLI_NBD_HELP,
           cli_program);
}

static const struct option long_options[] = {
  { "force", no_argument, NULL, 'f' },
  { "in-place", no_argument, NULL, 'n' },
  { "snapshot", required_argument, NULL, OPT_SNAPSHOT },
  { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
  { "target-is-device", no_argument, NULL, OPT_TARGET_IS_DEVICE },
  { "zero", required_argument, NULL, OPT_ZERO },
  { "verify", no_argument, NULL, OPT_VERIFY },
  { "bmap", required_argument, NULL, OPT_BMAP },
  CLI_COMMON_LONG_OPTIONS,
  { NULL, 0, NULL, 0 },
};

/* For the tests of --verify only: SPARSECOW_TEST_CHANGE_BEFORE_VERIFY=
 * "N:OFFSET[,N:OFFSET...]" inverts the byte at OFFSET of the Nth
 * target (from 1; a block device or a file written in place, opened by
 * its name) after it is written and flushed and before it is read
 * back, as a device that lost a write would show it.
 * Returns -1 on a malformed value or a failed change.
 */
static int
test_change_before_verify (struct cli_operand *targets, int ntargets)
{
  const char *v = getenv ("SPARSECOW_TEST_CHANGE_BEFORE_VERIFY");
  char word[64];

  while (v && *v) {
    size_t len = strcspn (v, ",");
    unsigned idx;
    uint64_t offset;
    unsigned char byte;
    char *colon;
    int fd, r = -1;

    snprintf (word, sizeof word, "%.*s", (int) len, v);
    v += len + (v[len] == ',');
    colon = strchr (word, ':');
    if (colon == NULL || sscanf (word, "%u", &idx) != 1 || idx < 1
        || idx > (unsigned) ntargets
        || cli_parse_size (colon + 1, &offset) == -1 || offset > INT64_MAX) {
      cli_error ("SPARSECOW_TEST_CHANGE_BEFORE_VERIFY: expected "
                 "N:OFFSET[,N:OFFSET...]");
      return -1;
    }
    fd = open (targets[idx - 1].name, O_RDWR | O_CLOEXEC);
    if (fd != -1 && pread (fd, &byte, 1, (off_t) offset) == 1) {
      byte = (unsigned char) ~byte;
      if (pwrite (fd, &byte, 1, (off_t) offset) == 1 && fsync (fd) == 0)
        r = 0;
    }
    if (r == -1)
      cli_error ("%s: test change before verify: %s", targets[idx - 1].name,
                 strerror (errno));
    if (fd != -1)
      close (fd);
    if (r == -1)
      return -1;
  }
  return 0;
}

/* Several targets are files or block devices (or new names), each once,
 * none the image and none inside another (a loop device over one of
 * the files, a partition of one of the disks): exits with a usage error
 * otherwise.
 */
static void
check_targets (const struct cli_operand *t, int n)
{
  struct stat st[MAX_TARGETS];
  bool have[MAX_TARGETS], file;

  if (n > MAX_TARGETS)
    cli_usage_error ("unpack", "at most %d targets at once", MAX_TARGETS);
  for (int i = 0; i < n; i++) {
    if (t[i].nbd || strcmp (t[i].name, "-") == 0)
      cli_usage_error ("unpack", "%s: several targets must be files or "
                       "block devices (not standard output or NBD)",
                       t[i].nbd ? t[i].name : "stdout");
    have[i] = stat (t[i].name, &st[i]) == 0;
    if (have[i] && !S_ISREG (st[i].st_mode) && !S_ISBLK (st[i].st_mode))
      cli_usage_error ("unpack", "%s: several targets must be files or "
                       "block devices", t[i].name);
    for (int j = 0; j < i; j++) {
      bool same = strcmp (t[i].name, t[j].name) == 0;

      if (have[i] && have[j] && S_ISBLK (st[i].st_mode)
          && S_ISBLK (st[j].st_mode))
        same = same || st[i].st_rdev == st[j].st_rdev;
      if (have[i] && have[j] && S_ISREG (st[i].st_mode)
          && S_ISREG (st[j].st_mode))
        same = same || (st[i].st_dev == st[j].st_dev
                        && st[i].st_ino == st[j].st_ino);
      /* Two names of one new file: the same name in one directory. */
      if (!have[i] && !have[j])
        same = same || cli_same_file (t[i].name, t[j].name);
      if (same)
        cli_usage_error ("unpack", "%s and %s are the same target",
                         t[j].name, t[i].name);
      /* Overlapping targets: one would write into the other.  (Held
       * exclusively by this program, a disk cannot be opened beside
       * its partition, which would only tell that it is in use.)
       */
      for (int k = 0; k < 2 && have[i] && have[j]; k++) {
        int a = k ? j : i, b = k ? i : j;
        dev_t disk;

        if (S_ISBLK (st[a].st_mode) && S_ISBLK (st[b].st_mode)
            && cli_partition_of (st[a].st_rdev, &disk)
            && disk == st[b].st_rdev)
          cli_usage_error ("unpack", "%s is a partition of %s, another "
                           "target", t[a].name, t[b].name);
        if (cli_loop_over (t[a].name, &st[a], &st[b]))
          cli_usage_error ("unpack", "%s is a loop device over %s, another "
                           "target", t[a].name, t[b].name);
      }
      /* Other names of one storage: two loop devices over one file,
       * stacked loop devices, a loop device over a partition and one
       * over its disk.
       */
      if (have[i] && have[j] && cli_same_storage (&st[i], &st[j], &file))
        cli_usage_error ("unpack", "%s and %s are the same target, over "
                         "the same %s", t[j].name, t[i].name,
                         file ? "file" : "device");
    }
  }
}

/* A target written in place that a failure stopped part way keeps
 * what reached it: say so, once.
 */
static void
tell_partly_written (const char *name, struct sc_endpoint *ep,
                     bool in_place, bool *told, const char *why)
{
  if (!in_place || *told || !sc_endpoint_written (ep))
    return;
  cli_error ("%s: written in place, left partly written%s", name, why);
  *told = true;
}

/* A target written and flushed whose read-back a signal stopped: not
 * complete (--verify makes a target complete only once verified), but
 * no longer partly written either.  A new file is not put in place.
 */
static void
tell_not_verified (const char *name, bool in_place)
{
  if (in_place)
    cli_error ("%s: written in place, not verified: %s came before the "
               "read-back ended", name, cli_signal_name ());
  else
    cli_error ("%s: written, not verified: %s came before the read-back "
               "ended; removed", name, cli_signal_name ());
}

int
cmd_unpack (int argc, char **argv)
{
  struct cli_common common = { 0 };
  struct sc_unpack_opts uopts = { 0 };
  struct sc_endpoint *src = NULL, *dst = NULL;
  struct sc_endpoint *opened[MAX_TARGETS];
  int opened_index[MAX_TARGETS];
  bool in_place[MAX_TARGETS], told[MAX_TARGETS] = { false };
  /* With --verify: the targets that failed before the read-back. */
  bool failed_writing[MAX_TARGETS] = { false };
  bool verifying = false, not_verified = false;
  struct cli_operand *ops = NULL, *targets;
  const char *image, *zero_name = "auto", *bmap_path = NULL;
  unsigned target_flags = 0;
  bool stream, verify = false, open_failed = false, committed = false;
  int c, nops, ntargets, nopened = 0, rc = EXIT_ERROR;

  /* First, so that no temporary target can outlive an interrupt. */
  cli_install_signal_handlers ();

  cli_check_brackets ("unpack", argc, argv);
  while ((c = cli_getopt (argc, argv, "fnS:O:", long_options, &common,
                          usage)) != -1) {
    switch (c) {
    case 'f':
      cli_refuse_format_as_force ("unpack", argc, argv, "the image is read "
                                  "as qcow2");
      target_flags |= SC_TARGET_FORCE;
      break;
    case 'O':
      /* qemu-img convert -O: the one output format there is. */
      if (strcmp (optarg, "raw") != 0)
        cli_usage_error ("unpack", "-O %s: unpack writes raw data%s", optarg,
                         strcmp (optarg, "qcow2") == 0
                         ? " (pack writes qcow2)" : "");
      break;
    case 'n':
      target_flags |= SC_TARGET_IN_PLACE;
      break;
    case OPT_SNAPSHOT:
      uopts.snapshot = optarg;
      break;
    case OPT_TARGET_IS_ZERO:
      target_flags |= SC_TARGET_ZEROED;
      break;
    case OPT_TARGET_IS_DEVICE:
      target_flags |= SC_TARGET_DEVICE;
      break;
    case OPT_ZERO:
      target_flags &= ~(unsigned) SC_TARGET_ZERO_MASK;
      if (strcmp (optarg, "unmap") == 0)
        target_flags |= SC_TARGET_ZERO_UNMAP;
      else if (strcmp (optarg, "write") == 0)
        target_flags |= SC_TARGET_ZERO_WRITE;
      else if (strcmp (optarg, "skip") == 0)
        target_flags |= SC_TARGET_ZERO_SKIP;
      else if (strcmp (optarg, "auto") != 0)
        cli_usage_error ("unpack", "--zero: expected auto, unmap, write or "
                         "skip, not '%s'", optarg);
      zero_name = optarg;
      break;
    case OPT_VERIFY:
      verify = true;
      break;
    case OPT_BMAP:
      bmap_path = optarg;
      break;
    case 'S':
      uopts.min_sparse = cli_parse_min_sparse ("unpack", optarg);
      uopts.allocate_all = uopts.min_sparse == 0;
      break;
    default:
      cli_usage_error ("unpack", "unknown option");
    }
  }
  nops = cli_count_operands (argc, argv, optind);
  if (nops < 2)
    cli_usage_error ("unpack", "expected IMAGE and TARGET");
  if (nops - 1 > MAX_TARGETS)
    cli_usage_error ("unpack", "at most %d targets at once", MAX_TARGETS);
  ops = calloc ((size_t) nops, sizeof *ops);
  if (ops == NULL) {
    cli_error ("unpack: out of memory");
    return EXIT_ERROR;
  }
  cli_operands ("unpack", argc, argv, optind, ops, nops,
                "IMAGE and TARGET");
  image = ops[0].name;
  targets = &ops[1];
  ntargets = nops - 1;
  if (uopts.allocate_all && (target_flags & SC_TARGET_ZERO_MASK)
      == SC_TARGET_ZERO_SKIP)
    cli_usage_error ("unpack", "-S 0 writes every byte: --zero=skip "
                     "writes no zero range");
  /* As qemu-img convert: a target can read as zero already only if it
   * exists, and only -n says it is written where it is.  Block devices
   * and exports are written in place anyway; the promise still comes
   * with -n, so that a command line means the same to both programs.
   */
  if ((target_flags & SC_TARGET_ZEROED)
      && !(target_flags & SC_TARGET_IN_PLACE))
    cli_usage_error ("unpack", "--target-is-zero needs -n: only a target "
                     "written in place can read as zero already");
  if ((target_flags & SC_TARGET_ZEROED)
      && (target_flags & SC_TARGET_ZERO_MASK))
    cli_usage_error ("unpack", "--target-is-zero writes no zero range: "
                     "--zero=%s means nothing with it", zero_name);
  if (ntargets > 1)
    check_targets (targets, ntargets);
  for (int i = 0; i < ntargets; i++) {
    bool out = strcmp (targets[i].name, "-") == 0;

    if (!targets[i].nbd && cli_target_is_source (&ops[0], targets[i].name))
      goto out;
    /* With -f, the target would replace the bmap it is read through. */
    if (bmap_path && !targets[i].nbd
        && cli_same_file (bmap_path, targets[i].name))
      cli_usage_error ("unpack", "--bmap and %s are one file",
                       targets[i].name);
    if (verify && (out || targets[i].nbd))
      cli_usage_error ("unpack", "--verify reads the target back: it needs "
                       "a file or a block device, not %s", targets[i].name);
    /* An export is always written in place: -n says so (qemu-img
     * convert needs it there).
     */
    if ((target_flags & SC_TARGET_IN_PLACE) && out)
      cli_usage_error ("unpack", "-n writes into an existing file or "
                       "block device, not %s", targets[i].name);
    if ((target_flags & SC_TARGET_ZERO_MASK) && (out || targets[i].nbd))
      cli_usage_error ("unpack", "--zero=%s applies to files and block "
                       "devices, not %s", zero_name, targets[i].name);
  }
  {
    bool to_stdout = false;

    for (int i = 0; i < ntargets; i++)
      to_stdout |= strcmp (targets[i].name, "-") == 0;
    cli_check_progress ("unpack", &common, to_stdout,
                        strcmp (image, "-") == 0);
    cli_check_progress_image ("unpack", &common, image);
    for (int i = 0; i < ntargets; i++)
      cli_check_progress_not ("unpack", &common, targets[i].name);
    if (bmap_path)
      cli_check_progress_image ("unpack", &common, bmap_path);
  }
  if (ntargets == 1 && strcmp (targets[0].name, "-") == 0) {
    if (isatty (STDOUT_FILENO)) {
      cli_error ("unpack: refusing to write image data to a terminal");
      goto out;
    }
  }

  /* An image in a pipe is read once, as it comes; standard input
   * redirected from a file is that file, read like any other.
   */
  {
    struct stat st;

    stream = strcmp (image, "-") == 0
      ? fstat (STDIN_FILENO, &st) == 0 && !S_ISREG (st.st_mode)
        && !S_ISBLK (st.st_mode)
      : !ops[0].nbd && stat (image, &st) == 0
        && (S_ISFIFO (st.st_mode) || S_ISCHR (st.st_mode));
    if (stream && uopts.snapshot)
      cli_usage_error ("unpack", "--snapshot cannot be used with an "
                       "image read from a pipe");
    if (stream && verify)
      cli_usage_error ("unpack", "--verify reads the image again: it "
                       "cannot be read from a pipe");
    if (stream && bmap_path)
      cli_usage_error ("unpack", "--bmap cannot be used with an image "
                       "read from a pipe");
  }
  /* Checked before anything is opened: a bmap that is damaged or not
   * one stops here.
   */
  if (bmap_path && (uopts.bmap = sc_bmap_load (bmap_path)) == NULL) {
    cli_lib_error (NULL);
    goto out;
  }

  src = cli_open_source (&ops[0], &common, SC_MAP_SEEK);
  if (src == NULL)
    goto out;
  /* A server on this host may have a target open: the file it serves,
   * or a backing file of the image it serves.
   */
  for (int i = 0; i < ntargets; i++)
    if (ops[0].nbd && !targets[i].nbd
        && cli_target_is_served (src, ops[0].name, targets[i].name))
      goto out;
  /* Sized by sc_unpack once the image's virtual size is known.  A
   * target that cannot be opened is reported and the others written.
   */
  for (int i = 0; i < ntargets; i++) {
    struct sc_endpoint *ep = cli_open_target (&targets[i], &common,
                                              target_flags);
    if (ep == NULL) {
      open_failed = true;
      continue;
    }
    opened_index[nopened] = i;
    opened[nopened++] = ep;
  }
  if (nopened == 0)
    goto out;
  if (ntargets == 1)
    dst = opened[0];
  else {
    dst = sc_endpoint_open_tee (opened, (size_t) nopened);
    if (dst == NULL) {
      cli_lib_error (NULL);
      goto out;
    }
  }
  /* Only a target written where it is keeps old bytes: a file is
   * otherwise replaced by a new one, whose unwritten ranges are holes.
   */
  for (int i = 0; i < nopened; i++) {
    const char *name = targets[opened_index[i]].name;
    struct stat st;

    in_place[i] = (target_flags & SC_TARGET_IN_PLACE)
      || targets[opened_index[i]].nbd
      || (stat (name, &st) == 0 && S_ISBLK (st.st_mode));
    /* Nor does a failure remove it: a bmap's ranges are all checked
     * before it is written.
     */
    if (in_place[i] && uopts.bmap)
      uopts.bmap_check_first = true;
    /* A signal then stops the run, which says what it leaves. */
    if (in_place[i])
      cli_defer_signals ();
    if (in_place[i] && (target_flags & SC_TARGET_ZERO_SKIP) && !common.quiet)
      cli_error ("unpack: --zero=skip: ranges of %s that read as zero "
                 "are not written; %s, written in place, keeps what it "
                 "held there", image, name);
  }

  uopts.threads = common.threads;
  uopts.force_share = common.force_share;
  uopts.progress = cli_progress_fn (&common, &uopts.progress_opaque);
  /* With --verify, the read-back is counted with the writing. */
  uopts.verify_follows = verify;
  /* Errors name the image or the target, whichever failed.  A signal
   * that came after the last write (sc_unpack stops at the next write,
   * read or check after one) leaves nothing undone: the targets are
   * completed below.  With --verify they are complete only once read
   * back, and the signal stops the run before that.
   */
  if (sc_unpack (src, dst, &uopts) == -1) {
    bool changed = !cli_interrupted () && uopts.bmap
                   && sc_error_errno () == EBADMSG;

    cli_progress_done (&common);
    if (cli_interrupted () && sc_error_errno () != EINTR)
      cli_error ("interrupted");
    else
      cli_lib_error (NULL);
    /* A target written in place keeps what reached it.  (Checked
     * first, the bmap differs after writing began only when the image
     * changed after the check.)
     */
    for (int i = 0; i < nopened; i++)
      tell_partly_written (targets[opened_index[i]].name, opened[i],
                           in_place[i], &told[i],
                           changed ? ": the image changed while it was "
                           "unpacked" : "");
    goto report;
  }
  if (verify) {
    verifying = true;
    /* Every target left is written and flushed: a signal from here on
     * stops the read-back, which then says what it leaves of each.
     */
    cli_defer_signals ();
    for (int i = 0; i < nopened && ntargets > 1; i++)
      failed_writing[i] = sc_endpoint_tee_status (dst, (size_t) i) == -1;
    if (cli_interrupted ()) {
      cli_progress_done (&common);
      not_verified = true;
      goto report;
    }
    if (test_change_before_verify (targets, ntargets) == -1) {
      cli_progress_done (&common);
      goto report;
    }
    if (sc_unpack_verify (src, dst, &uopts) == -1) {
      cli_progress_done (&common);
      not_verified = cli_interrupted () && sc_error_errno () == EINTR;
      if (!not_verified && (ntargets == 1 || sc_error_errno () == EINTR))
        cli_lib_error (NULL);
      goto report;
    }
  }
  cli_progress_done (&common);
  /* Everything is written (and read back): the targets are complete
   * once committed, and a signal from here on does not stop the
   * commit, nor then the run.
   */
  cli_defer_signals ();
  if (sc_endpoint_commit (dst) == -1) {
    if (ntargets == 1)
      cli_lib_error (NULL);
    goto report;
  }
  committed = true;
  if (!open_failed)
    cli_targets_complete (ntargets == 1 ? targets[0].name : NULL);
  rc = open_failed ? EXIT_ERROR : EXIT_OK;

 report:
  /* Each target that failed on the way, by name. */
  if (ntargets > 1)
    for (int i = 0; i < nopened; i++)
      if (sc_endpoint_tee_status (dst, (size_t) i) == -1) {
        cli_lib_error (NULL);
        rc = EXIT_ERROR;
        /* Said of it as of a target written alone: one that failed
         * its read-back was written whole.
         */
        if (!verifying || failed_writing[i])
          tell_partly_written (targets[opened_index[i]].name, opened[i],
                               in_place[i], &told[i], "");
      }
  /* What a signal during the read-back leaves of each target. */
  if (not_verified)
    for (int i = 0; i < nopened; i++)
      if (ntargets == 1 || sc_endpoint_tee_status (dst, (size_t) i) == 0)
        tell_not_verified (targets[opened_index[i]].name, in_place[i]);
  /* And which ones are good, whether or not some failed. */
  if (ntargets > 1 && committed && !common.quiet)
    for (int i = 0; i < nopened; i++)
      if (sc_endpoint_tee_status (dst, (size_t) i) == 0)
        fprintf (stderr, "%s: %s: written%s\n", cli_program,
                 targets[opened_index[i]].name,
                 verify ? " and verified" : "");

 out:
  /* Closing an uncommitted target removes it. */
  if (dst && sc_endpoint_close (dst) == -1 && rc == EXIT_OK) {
    cli_lib_error (NULL);
    rc = EXIT_ERROR;
  }
  if (src && sc_endpoint_close (src) == -1 && rc == EXIT_OK) {
    cli_lib_error (image);
    rc = EXIT_ERROR;
  }
  sc_bmap_free ((struct sc_bmap *) uopts.bmap);
  free (ops);
  /* What the run leaves was said: the signal ends the program. */
  cli_exit_if_interrupted ();
  return rc;
}
