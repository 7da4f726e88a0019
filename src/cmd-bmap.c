/* sparsecow bmap: a block map of an image, a file or an export, that
 * "bmaptool copy --bmap" reads: which 4 KiB blocks hold data, with the
 * SHA-256 of each range of them.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static void
usage (FILE *fp)
{
  fprintf (fp,
"Usage: %s bmap [OPTIONS] IMAGE|FILE|URI [-o FILE.bmap]\n"
"Write a block map (bmaptool's bmap format 2.0, SHA-256) of the data of\n"
"a qcow2 image's guest, of a sparse raw file or device, of an NBD\n"
"export, or of standard input (-), to FILE.bmap or standard output.\n"
"Blocks that hold data are mapped; holes and zero ranges (the zero\n"
"clusters of an image) are not, as bmaptool create leaves holes out.\n"
"'bmaptool copy --bmap FILE.bmap RAW DEVICE' then copies the mapped\n"
"blocks of RAW (for an image: its raw form, as unpack writes it).\n"
"\n"
"  -o, --output FILE      write the bmap to FILE (default: stdout)\n"
"  -f, --force            replace FILE if it exists\n"
CLI_COMMON_HELP
CLI_NBD_HELP,
           cli_program);
}

static const struct option long_options[] = {
  { "output", required_argument, NULL, 'o' },
  { "force", no_argument, NULL, 'f' },
  CLI_COMMON_LONG_OPTIONS,
  { NULL, 0, NULL, 0 },
};

/* For the tests only: SPARSECOW_TEST_CHANGE_WHILE_MAPPING=OFFSET inverts
 * the byte at OFFSET of the source file once its first data has been
 * read, as another writer would change it while it is mapped.
 */
struct change_hook {
  const char *path;
  uint64_t offset;
  bool done;
  sc_progress_fn progress;
  void *progress_opaque;
};

static void
change_while_mapping (const struct sc_progress *p, void *opaque)
{
  struct change_hook *h = opaque;

  if (!h->done && p->done > 0) {
    unsigned char byte;
    int fd = open (h->path, O_RDWR | O_CLOEXEC);

    h->done = true;
    if (fd == -1 || pread (fd, &byte, 1, (off_t) h->offset) != 1
        || (byte = (unsigned char) ~byte,
            pwrite (fd, &byte, 1, (off_t) h->offset) != 1))
      cli_error ("%s: test change while mapping: %s", h->path,
                 strerror (errno));
    if (fd != -1)
      close (fd);
  }
  if (h->progress)
    h->progress (p, h->progress_opaque);
}

int
cmd_bmap (int argc, char **argv)
{
  struct cli_common common = { 0 };
  struct sc_bmap_opts opts = { 0 };
  struct cli_operand op, out = { .name = "-" };
  struct sc_endpoint *file = NULL, *src = NULL, *dst = NULL;
  struct sc_qcow2 *q = NULL;
  struct change_hook hook = { 0 };
  struct sc_qcow2_open_opts qopts = { 0 };
  unsigned target_flags = 0;
  int c, r, rc = EXIT_ERROR;

  cli_install_signal_handlers ();
  cli_check_brackets ("bmap", argc, argv);
  while ((c = cli_getopt (argc, argv, "o:f", long_options, &common,
                          usage)) != -1) {
    switch (c) {
    case 'o':
      out.name = optarg;
      break;
    case 'f':
      target_flags |= SC_TARGET_FORCE;
      break;
    default:
      cli_usage_error ("bmap", "unknown option");
    }
  }
  cli_operands ("bmap", argc, argv, optind, &op, 1, "one IMAGE, FILE or URI");
  qopts.force_share = common.force_share;
  cli_check_progress ("bmap", &common, strcmp (out.name, "-") == 0,
                      strcmp (op.name, "-") == 0);
  cli_check_progress_image ("bmap", &common, op.name);
  cli_check_progress_not ("bmap", &common, out.name);
  cli_check_bmap_output ("bmap", "-o", out.name);
  /* Standard output too, the default: "1<>FILE" is the file. */
  if (cli_target_is_source (&op, out.name))
    return EXIT_ERROR;

  /* What the source is: a qcow2 image is mapped through its guest
   * view; anything else is raw data.
   */
  if (op.nbd) {
    file = cli_open_source (&op, &common, SC_MAP_SEEK);
    if (file == NULL)
      return EXIT_ERROR;
    /* A server on this host may have the bmap's name open. */
    if (strcmp (out.name, "-") != 0
        && cli_target_is_served (file, op.name, out.name)) {
      sc_endpoint_close (file);
      return EXIT_ERROR;
    }
    r = cli_endpoint_is_qcow2 (file);
    if (r == 1 && (q = sc_qcow2_open_endpoint (file, &qopts)) == NULL)
      r = -1;
  }
  /* A pipe is raw data, read once in order; it is not opened to look
   * (that would take its first bytes): a qcow2 image in it is refused
   * when they come.
   */
  else if (strcmp (op.name, "-") == 0 || cli_is_stream_name (op.name))
    r = 0;
  else {
    r = sc_is_qcow2 (op.name);
    /* As qemu-img map and pack: raw data that another process writes
     * is read only with -U (a qcow2 image is tested when opened).
     */
    if (r == 0 && !common.force_share && sc_image_lock_test (op.name) == -1)
      r = -1;
    if (r == 1 && (q = sc_qcow2_open (op.name, &qopts)) == NULL)
      r = -1;
  }
  if (r == -1) {
    cli_lib_error (op.name);
    goto out;
  }
  if (q) {
    src = sc_qcow2_endpoint (q);
    if (src == NULL) {
      cli_lib_error (op.name);
      goto out;
    }
  }
  else if (file) {
    src = file;
    file = NULL;
  }
  /* The allocated blocks, as bmaptool create maps them: SEEK_DATA's
   * answer for preallocated blocks changes with the page cache (the
   * format probe above reads the first ones).
   */
  else if ((src = cli_open_source (&op, &common, SC_MAP_ALLOCATED)) == NULL)
    goto out;

  if ((dst = cli_open_target (&out, &common, target_flags)) == NULL)
    goto out;
  opts.threads = common.threads;
  opts.progress = cli_progress_fn (&common, &opts.progress_opaque);
  if (getenv ("SPARSECOW_TEST_CHANGE_WHILE_MAPPING") && !op.nbd) {
    if (cli_parse_size (getenv ("SPARSECOW_TEST_CHANGE_WHILE_MAPPING"),
                        &hook.offset) == -1 || hook.offset > INT64_MAX) {
      cli_error ("SPARSECOW_TEST_CHANGE_WHILE_MAPPING: expected an offset");
      goto out;
    }
    hook.path = op.name;
    hook.progress = opts.progress;
    hook.progress_opaque = opts.progress_opaque;
    opts.progress = change_while_mapping;
    opts.progress_opaque = &hook;
  }
  r = sc_bmap_create (src, dst, &opts);
  cli_progress_done (&common);
  if (r == -1 && sc_error_errno () == EMEDIUMTYPE) {
    cli_error ("%s; name the image file to map its guest content",
               sc_error_message ());
    goto out;
  }
  if (r == -1) {
    cli_lib_error (NULL);
    goto out;
  }
  /* The bmap file is complete once committed (linked or renamed into
   * place): a signal from here on does not stop the commit, nor then
   * the run.  Standard output has no such point: a signal there stops
   * the run as before.
   */
  if (strcmp (out.name, "-") != 0)
    cli_defer_signals ();
  if (sc_endpoint_commit (dst) == -1) {
    cli_lib_error (NULL);
    goto out;
  }
  if (strcmp (out.name, "-") != 0)
    cli_targets_complete (out.name);
  rc = EXIT_OK;

 out:
  /* An uncommitted bmap file disappears. */
  if (sc_endpoint_close (dst) == -1 && rc == EXIT_OK) {
    cli_lib_error (NULL);
    rc = EXIT_ERROR;
  }
  if (sc_endpoint_close (src) == -1 && rc == EXIT_OK) {
    cli_lib_error (op.name);
    rc = EXIT_ERROR;
  }
  sc_qcow2_close (q);
  if (sc_endpoint_close (file) == -1 && rc == EXIT_OK) {
    cli_lib_error (op.name);
    rc = EXIT_ERROR;
  }
  /* Not committed: the signal ends the run (nothing is left under the
   * name).  Committed: it is only noted.
   */
  cli_exit_if_interrupted ();
  return rc;
}
