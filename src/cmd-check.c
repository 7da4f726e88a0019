/* sparsecow check: refcount consistency, reported as qemu-img check
 * reports it, with its exit codes.
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Long options of this command only (above the shared ones). */
enum { OPT_OUTPUT = 0x200, OPT_REPAIR };

static void
usage (FILE *fp)
{
  fprintf (fp,
           "Usage: %s check [--json] [-q] IMAGE\n"
           "Check that the refcounts of a qcow2 image match what is really\n"
           "used.  Exit status: 0 no problems, 2 corruptions or damage found,\n"
           "3 only leaked clusters found, 1 the image could not be checked,\n"
           "63 the file is not a qcow2 image.\n"
           "\n"
           "  --json        print the result as JSON (qemu-img check names)\n"
           "  --output=json|human  the same, spelled as for qemu-img check\n"
           "  -f qcow2      the format, as qemu-img check -f (only qcow2)\n"
           CLI_COMMON_HELP
           CLI_NBD_HELP, cli_program);
}

/* What qemu-img check prints, line for line: the same paragraphs on the
 * same conditions.  Damage that qemu-img does not count is not among
 * them; it is summed up on stderr (see report_damage).
 */
static void
print_human (const struct sc_check_result *r)
{
  if (r->corruptions == 0 && r->leaks == 0 && r->check_errors == 0)
    printf ("No errors were found on the image.\n");
  else {
    if (r->corruptions)
      printf ("\n%" PRIu64 " errors were found on the image.\n"
              "Data may be corrupted, or further writes to the image may "
              "corrupt it.\n", r->corruptions);
    if (r->leaks)
      printf ("\n%" PRIu64 " leaked clusters were found on the image.\n"
              "This means waste of disk space, but no harm to data.\n",
              r->leaks);
    if (r->check_errors)
      printf ("\n%" PRIu64 " internal errors have occurred during the "
              "check.\n", r->check_errors);
  }
  if (r->total_clusters != 0 && r->allocated_clusters != 0)
    printf ("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% "
            "fragmented, %0.2f%% compressed clusters\n",
            r->allocated_clusters, r->total_clusters,
            r->allocated_clusters * 100.0 / r->total_clusters,
            r->fragmented_clusters * 100.0 / r->allocated_clusters,
            r->compressed_clusters * 100.0 / r->allocated_clusters);
  if (r->image_end_offset)
    printf ("Image end offset: %" PRIu64 "\n", r->image_end_offset);
}

/* Damage that qemu-img check does not count: one line on stderr after
 * the problems it comes from, so that standard output stays qemu-img
 * check's, and -q does not hide it.
 */
static void
report_damage (const char *image, const struct sc_check_result *r)
{
  if (r->damage)
    cli_error ("%s: %" PRIu64 " damaged structures were found that "
               "qemu-img check does not count; the image cannot be read "
               "as it was written", image, r->damage);
}

/* qemu-img check --output=json: its members, with its names; like it,
 * a count that is zero is left out, but for check-errors.
 */
static void
json_count (const char *name, uint64_t v)
{
  if (v != 0)
    printf (",\n    \"%s\": %" PRIu64, name, v);
}

static void
print_json (const char *filename, const struct sc_check_result *r)
{
  printf ("{\n    \"filename\": ");
  cli_json_string (stdout, filename);
  printf (",\n    \"format\": \"qcow2\",\n"
          "    \"check-errors\": %" PRIu64, r->check_errors);
  json_count ("corruptions", r->corruptions);
  json_count ("leaks", r->leaks);
  json_count ("allocated-clusters", r->allocated_clusters);
  json_count ("total-clusters", r->total_clusters);
  json_count ("fragmented-clusters", r->fragmented_clusters);
  json_count ("compressed-clusters", r->compressed_clusters);
  json_count ("image-end-offset", r->image_end_offset);
  /* What qemu-img check does not count, under sparsecow's own name. */
  printf (",\n    \"sparsecow\": {\n"
          "        \"damage\": %" PRIu64 "\n"
          "    }\n}\n", r->damage);
}

/* A file that is not a qcow2 image (without -f qcow2): qemu-img check
 * probes it as raw, a format without checks, and exits 63.
 */
static int
not_qcow2 (const char *image)
{
  cli_error ("%s: not a qcow2 image: this image format does not support "
             "checks", image);
  return EXIT_CHECK_UNSUPPORTED;
}

/* Does image name a backing file or an external data file that cannot
 * be opened, or (without force_share) one that another process writes?
 * Then print why, as qemu-img check fails then (it opens the whole
 * chain and the data file first).  An image
 * that does not open for other reasons is for the check to judge.
 */
static bool
backing_missing (const char *image, struct sc_endpoint *ep, bool force_share)
{
  struct sc_qcow2_open_opts qo = { .backing_optional = true,
                                   .allow_corrupt = true,
                                   .allow_encrypted = true,
                                   .force_share = force_share };
  struct sc_qcow2_info info;
  struct sc_qcow2 *q = ep ? sc_qcow2_open_endpoint (ep, &qo)
                          : sc_qcow2_open (image, &qo);
  bool missing = false;

  /* As qemu-img check: a backing file that another process writes is
   * refused without -U, as the image itself is.  Other errors are the
   * check's to report.
   */
  if (q == NULL && errno == EBUSY) {
    cli_lib_error (image);
    return true;
  }
  if (q == NULL)
    return false;
  if (sc_qcow2_get_info (q, &info) == 0) {
    if (info.backing_error) {
      cli_error ("%s: %s", image, info.backing_error);
      missing = true;
    }
    /* qemu-img check opens the external data file too. */
    else if (info.data_file_error) {
      cli_error ("%s: %s", image, info.data_file_error);
      missing = true;
    }
    sc_qcow2_info_free (&info);
  }
  sc_qcow2_close (q);
  return missing;
}

int
cmd_check (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "json", no_argument, NULL, OPT_JSON },
    /* qemu-img check's spelling, for scripts written for it. */
    { "output", required_argument, NULL, OPT_OUTPUT },
    { "repair", required_argument, NULL, OPT_REPAIR },
    CLI_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 }
  };
  struct cli_common common = { 0 };
  struct sc_check_result result;
  bool json = false;
  int format = CLI_FORMAT_AUTO;
  struct cli_operand op;
  const char *image;
  int c;

  /* A server started with [ CMD ] is stopped on a signal too; output
   * into a closed pipe ends the program quietly, as it does qemu-img.
   */
  cli_install_signal_handlers ();
  signal (SIGPIPE, SIG_DFL);
  cli_check_brackets ("check", argc, argv);
  while ((c = cli_getopt (argc, argv, "f:r:", long_options, &common,
                          usage)) != -1) {
    /* qemu-img check -r repairs; this check only reads. */
    if (c == 'r' || c == OPT_REPAIR)
      cli_usage_error ("check", "%s%s%s: sparsecow check does not repair "
                       "images; qemu-img check -r %s does",
                       c == 'r' ? "-r" : "--repair", c == 'r' ? " " : "=",
                       optarg, optarg);
    if (c == 'f')
      /* qemu-img's spelling; only qcow2 is read here. */
      format = cli_parse_image_format ("check", optarg, false);
    else if (c == OPT_JSON)
      json = true;
    else if (c == OPT_OUTPUT)
      json = cli_parse_output ("check", optarg);
    else
      cli_usage_error ("check", "unknown option");
  }
  cli_operands ("check", argc, argv, optind, &op, 1, "one IMAGE argument");
  image = op.name;
  cli_check_report_streams ("check", &common, image, op.nbd);

  if (op.nbd) {
    struct sc_endpoint *ep = cli_open_source (&op, &common, SC_MAP_SEEK);
    if (ep == NULL)
      return EXIT_ERROR;
    if (format == CLI_FORMAT_AUTO && cli_endpoint_is_qcow2 (ep) == 0) {
      sc_endpoint_close (ep);
      return not_qcow2 (image);
    }
    c = sc_qcow2_check_endpoint (ep, &result);
    if (c == -1)
      cli_lib_error (image);
    if (sc_endpoint_close (ep) == -1 && c == 0) {
      cli_lib_error (image);
      sc_check_result_free (&result);
      c = -1;
    }
    if (c == -1)
      return EXIT_ERROR;
  }
  /* As qemu-img check: not an image whose backing chain cannot be
   * opened, nor one that another process writes.
   */
  /* Standard input redirected from the image: the same checks, on the
   * file open there.
   */
  else if (strcmp (image, "-") == 0) {
    struct sc_endpoint *ep = cli_open_stdin_image ("check", &common);

    if (ep == NULL)
      return EXIT_ERROR;
    if (format == CLI_FORMAT_AUTO && cli_endpoint_is_qcow2 (ep) == 0) {
      sc_endpoint_close (ep);
      return not_qcow2 (cli_image_name (image));
    }
    if (backing_missing (cli_image_name (image), ep,
                         common.force_share)) {
      sc_endpoint_close (ep);
      return EXIT_ERROR;
    }
    /* qemu's locks are on the file, whichever descriptor tests them. */
    c = !common.force_share && sc_image_lock_test ("/dev/stdin") == -1
        ? -1 : sc_qcow2_check_endpoint (ep, &result);
    if (c == -1)
      cli_lib_error (cli_image_name (image));
    sc_endpoint_close (ep);
    if (c == -1)
      return EXIT_ERROR;
  }
  /* A pipe is refused by its name, before it is opened: each open would
   * take (or lose) some of its writer's data, and a later one could wait
   * for a writer that has gone.
   */
  else if (cli_is_stream_name (image)) {
    cli_error ("%s: a stream (pipe or character device) cannot be checked: "
               "the checker reads at random offsets", image);
    return EXIT_ERROR;
  }
  else if (backing_missing (image, NULL, common.force_share))
    return EXIT_ERROR;
  else if (!common.force_share && sc_image_lock_test (image) == -1) {
    cli_lib_error (image);
    return EXIT_ERROR;
  }
  else if (format == CLI_FORMAT_AUTO && sc_is_qcow2 (image) == 0)
    return not_qcow2 (image);
  else if (sc_qcow2_check (image, &result) == -1) {
    cli_lib_error (image);
    return EXIT_ERROR;
  }

  /* Problems go to stderr as they do with qemu-img, the summary to
   * stdout.
   */
  for (size_t i = 0; i < result.nb_messages; i++)
    fprintf (stderr, "%s\n", result.messages[i]);
  report_damage (cli_image_name (image), &result);
  /* As qemu-img check -q: no summary, in either form. */
  if (common.quiet)
    ;
  else if (json)
    print_json (cli_image_path (image), &result);
  else
    print_human (&result);
  /* A summary that could not be written is an error, whatever the
   * image holds: as info, map and verify, exit 1.
   */
  if (fflush (stdout) == EOF || ferror (stdout)) {
    cli_error ("check: write error on stdout");
    sc_check_result_free (&result);
    return EXIT_ERROR;
  }

  if (result.check_errors) {
    cli_error ("%s: check failed: %" PRIu64 " parts of the image could not "
               "be read", cli_image_name (image), result.check_errors);
    c = EXIT_ERROR;
  }
  else if (result.corruptions || result.damage)
    c = EXIT_CHECK_CORRUPT;
  else if (result.leaks)
    c = EXIT_CHECK_LEAKS;
  else
    c = EXIT_OK;
  sc_check_result_free (&result);
  return c;
}
