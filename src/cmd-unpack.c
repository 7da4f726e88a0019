/* sparsecow unpack: the guest data of a qcow2 image, to a sparse file,
 * a block device or standard output.
 */
#include <config.h>

#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

static void
usage (FILE *fp)
{
  fprintf (fp,
"Usage: %s unpack [OPTIONS] IMAGE TARGET\n"
"Write the guest data of the qcow2 IMAGE to TARGET: a regular file\n"
"(created sparse; holes are not written), a block device, an NBD\n"
"export, or - for standard output.  IMAGE may be - (standard input) or\n"
"a named pipe: it is then read once, front to back.\n"
"\n"
"Options:\n"
"  -f, --force            replace TARGET if it is an existing file\n"
"      --target-is-zero   TARGET (a device, an NBD export) reads as zero\n"
"                         already: zero ranges are not written\n"
"      --snapshot NAME|ID unpack an internal snapshot instead of the\n"
"                         active layer\n"
"  -p, --progress[=json]  show progress (a bar, or JSON lines on stdout)\n"
"  -j, --threads N        worker threads (default: online CPUs)\n"
"  -q, --quiet            print nothing but errors\n"
"  -h, --help             show this help\n"
"  -V, --version          show the version\n"
CLI_NBD_HELP,
           cli_program);
}

static const struct option long_options[] = {
  { "force", no_argument, NULL, 'f' },
  { "snapshot", required_argument, NULL, OPT_SNAPSHOT },
  { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
  CLI_COMMON_LONG_OPTIONS,
  { NULL, 0, NULL, 0 },
};

int
cmd_unpack (int argc, char **argv)
{
  struct cli_common common = { 0 };
  struct sc_unpack_opts uopts = { 0 };
  struct sc_endpoint *src = NULL, *dst = NULL;
  struct cli_operand ops[2];
  const char *image, *target;
  unsigned target_flags = 0;
  bool stream;
  int c, rc = EXIT_ERROR;

  /* First, so that no temporary target can outlive an interrupt. */
  cli_install_signal_handlers ();

  cli_check_brackets ("unpack", argc, argv);
  while ((c = getopt_long (argc, argv, "f" CLI_COMMON_SHORT_OPTIONS,
                           long_options, NULL)) != -1) {
    if (cli_common_option (c, optarg, &common, usage))
      continue;
    switch (c) {
    case 'f':
      target_flags |= SC_TARGET_FORCE;
      break;
    case OPT_SNAPSHOT:
      uopts.snapshot = optarg;
      break;
    case OPT_TARGET_IS_ZERO:
      target_flags |= SC_TARGET_ZEROED;
      break;
    default:
      cli_usage_error ("unpack", "unknown option");
    }
  }
  cli_operands ("unpack", argc, argv, optind, ops, 2, "IMAGE and TARGET");
  image = ops[0].name;
  target = ops[1].name;
  if (!ops[0].nbd && !ops[1].nbd && cli_target_is_source (image, target))
    return EXIT_ERROR;
  if (strcmp (target, "-") == 0) {
    /* Both would go to standard output. */
    if (common.progress_json)
      cli_usage_error ("unpack", "--progress=json writes to "
                       "standard output, which is the target here");
    if (isatty (STDOUT_FILENO)) {
      cli_error ("unpack: refusing to write image data to a terminal");
      return EXIT_ERROR;
    }
  }

  /* An image in a pipe is read once, as it comes. */
  {
    struct stat st;

    stream = strcmp (image, "-") == 0
      || (!ops[0].nbd && stat (image, &st) == 0
          && (S_ISFIFO (st.st_mode) || S_ISCHR (st.st_mode)));
    if (stream && uopts.snapshot)
      cli_usage_error ("unpack", "--snapshot cannot be used with an "
                       "image read from a pipe");
  }

  src = cli_open_source (&ops[0], &common, SC_MAP_SEEK);
  if (src == NULL)
    return EXIT_ERROR;
  if (stream && !sc_endpoint_is_stream (src)) {
    /* Standard input redirected from a file: not a stream at all. */
    sc_endpoint_close (src);
    cli_error ("%s: reading an image from standard input needs a pipe; "
               "name the file instead", image);
    return EXIT_ERROR;
  }
  /* Sized by sc_unpack once the image's virtual size is known. */
  dst = cli_open_target (&ops[1], &common, target_flags);
  if (dst == NULL)
    goto out;

  uopts.threads = common.threads;
  uopts.progress = cli_progress_fn (&common, &uopts.progress_opaque);
  /* Errors name the image or the target, whichever failed. */
  if (sc_unpack (src, dst, &uopts) == -1) {
    cli_progress_done (&common);
    cli_lib_error (NULL);
    goto out;
  }
  cli_progress_done (&common);
  if (sc_endpoint_commit (dst) == -1) {
    cli_lib_error (NULL);
    goto out;
  }
  rc = EXIT_OK;

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
  return rc;
}
