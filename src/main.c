/* sparsecow: move sparse data in and out of qcow2 images. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef HAVE_MALLOC_H
#include <malloc.h>
#endif

#include "cli.h"

static const struct {
  const char *name;
  int (*fn) (int, char **);
  const char *synopsis;
} commands[] = {
  { "pack",   cmd_pack,   "pack   [OPTIONS] SOURCE TARGET   sparse data or qcow2 -> qcow2" },
  { "unpack", cmd_unpack, "unpack [OPTIONS] IMAGE TARGET... qcow2 -> sparse data" },
  { "info",   cmd_info,   "info   [--json] IMAGE            header, features, allocation" },
  { "map",    cmd_map,    "map    [--json] IMAGE|FILE       data/zero/hole extents" },
  { "check",  cmd_check,  "check  [--json] IMAGE            refcount consistency" },
  { "bmap",   cmd_bmap,   "bmap   IMAGE|FILE|URI [-o FILE]  block map for bmaptool copy" },
  { "verify", cmd_verify, "verify [OPTIONS] A [B]           embedded digest, or A's content = B's" },
};

static void
usage (FILE *fp)
{
  fprintf (fp, "Usage: %s COMMAND [OPTIONS] ARGS...\n\nCommands:\n",
           cli_program);
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf (fp, "  %s %s\n", cli_program, commands[i].synopsis);
  fprintf (fp, "\nRun '%s COMMAND --help' for the options of a command.\n"
           "  -h, --help      show this help\n"
           "  -V, --version   show the version\n", cli_program);
}

/* glibc gives each thread that allocates an arena of its own, and
 * reserves 64 MiB of address space for each: pack -j 8 -c held seven,
 * 447 MiB of its 595 MiB of address space, with under 1 MiB used in
 * them, and failed within ulimit -v 256 MiB ("pipeline: out of
 * memory") in 15 runs of 20.  The workers allocate their buffers and
 * codec state once and reuse them, so one arena costs nothing
 * measurable: packing the 4 GiB workload of bench/ (989 MB of data),
 * medians of 3 alternating runs, took 3.42 s before and 3.36 s after
 * with -c, 5.08 s and 4.27 s with -c zstd, 0.73 s and 0.63 s without,
 * user+sys time within 2%.  A user's MALLOC_ARENA_MAX, or the glibc
 * tunable, is left to decide.
 */
static void
one_malloc_arena (void)
{
#if defined HAVE_MALLOPT && defined M_ARENA_MAX
  const char *tunables = getenv ("GLIBC_TUNABLES");

  if (getenv ("MALLOC_ARENA_MAX") == NULL
      && (tunables == NULL || strstr (tunables, "arena_max") == NULL))
    (void) mallopt (M_ARENA_MAX, 1);
#endif
}

/* A standard descriptor that was closed when the program started would
 * be taken by the first file opened, an image or a target, so that a
 * message or JSON progress would be written into it, or an image taken
 * for stdout.  Each closed one gets /dev/null, opened the other way
 * round (stdin for writing, stdout and stderr for reading) so that the
 * program's own use of it fails instead of reading nothing or writing
 * nowhere; cli_std_closed tells "-" operands apart.
 */
static void
open_standard_fds (void)
{
  for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; fd++) {
    int nfd;

    if (fcntl (fd, F_GETFD) != -1 || errno != EBADF)
      continue;
    nfd = open ("/dev/null", fd == STDIN_FILENO ? O_WRONLY : O_RDONLY);
    if (nfd != fd) {
      /* Not even /dev/null: nothing safe can be opened. */
      if (nfd >= 0)
        close (nfd);
      _exit (EXIT_ERROR);
    }
    cli_std_closed[fd] = true;
  }
}

int
main (int argc, char **argv)
{
  /* The same getopt_long rules as the commands' options: a unique
   * prefix of a long option is taken, "+" stops at the command.
   */
  static const struct option long_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 }
  };
  bool help = false, version = false;
  int c;

  open_standard_fds ();
  one_malloc_arena ();
  opterr = 0;
  while ((c = getopt_long (argc, argv, "+:hV", long_options, NULL)) != -1) {
    const char *word = argv[optind - 1];

    if (c == 'h')
      help = true;
    else if (c == 'V')
      version = true;
    else if (optopt != 0 && strncmp (word, "--", 2) == 0)
      /* --help=1: the option exists, and takes no value. */
      cli_usage_error (NULL, "option '%.*s' takes no value",
                       (int) strcspn (word, "="), word);
    else if (optopt == '=')
      cli_refuse_short_value (argc, argv);
    else if (optopt != 0)
      cli_usage_error (NULL, "unknown option '-%c'", optopt);
    else
      cli_usage_error (NULL, "unknown option '%.*s'",
                       (int) strcspn (word, "="), word);
  }
  if (help) {
    usage (stdout);
    return EXIT_OK;
  }
  if (version) {
    printf ("%s %s\n", PACKAGE_NAME, PACKAGE_VERSION);
    return EXIT_OK;
  }
  /* As qemu-img with no command: one line and a hint, not the usage. */
  if (optind >= argc)
    cli_usage_error (NULL, "expected a command");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp (argv[optind], commands[i].name) == 0) {
      cli_command = commands[i].name;
      /* The command parses its own options from the start. */
      argc -= optind;
      argv += optind;
      optind = 0;
      return commands[i].fn (argc, argv);
    }
  cli_usage_error (NULL, "unknown command '%s'", argv[optind]);
}
