/* sparsecow verify: is the content of A the same as that of B (as
 * qemu-img compare decides), or, given one image, does its content
 * still hash to the digest that pack stored in it?
 */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Options of this command only, above the shared ids of cli.h. */
enum {
  OPT_A_FORMAT = 0x200,
  OPT_B_FORMAT,
};

enum format {
  FORMAT_AUTO,                  /* qcow2 if it starts with the magic */
  FORMAT_RAW,
  FORMAT_QCOW2,
};

static void
usage (FILE *fp)
{
  fprintf (fp,
"Usage: %s verify [OPTIONS] A B\n"
"       %s verify [OPTIONS] IMAGE\n"
"With two operands, compare the content of A and B: qcow2 images (their\n"
"guest content, through backing files), raw files, block devices or NBD\n"
"exports.  As qemu-img compare, the smaller size is compared and the rest\n"
"of the larger must read as zeros.  Exit status: 0 equal, 1 different\n"
"(the first differing byte is printed), 2 error.\n"
"With one operand, recompute the digest of the guest content that pack\n"
"stored in the qcow2 IMAGE.  Exit status: 0 it matches, 1 it does not\n"
"(a compressed cluster that no longer decodes too, with its offset), 2\n"
"error (also: the image holds no digest), 3 the digest is stale: a\n"
"program that does not know it opened the image for writing.\n"
"\n"
"  -s, --strict           A and B must have the same size\n"
"  -f, --a-format=FMT     A is raw or qcow2 (default: qcow2 if it has the\n"
"                         qcow2 magic, else raw)\n"
"  -F, --b-format=FMT     the same for B\n"
CLI_COMMON_HELP
CLI_NBD_HELP,
           cli_program, cli_program);
}

static const struct option long_options[] = {
  { "strict", no_argument, NULL, 's' },
  { "a-format", required_argument, NULL, OPT_A_FORMAT },
  { "b-format", required_argument, NULL, OPT_B_FORMAT },
  CLI_COMMON_LONG_OPTIONS,
  { NULL, 0, NULL, 0 },
};

static enum format
parse_format (const char *opt, const char *arg)
{
  if (strcmp (arg, "raw") == 0)
    return FORMAT_RAW;
  if (strcmp (arg, "qcow2") == 0)
    return FORMAT_QCOW2;
  cli_usage_error ("verify", "%s: expected raw or qcow2, not '%s'", opt, arg);
}

/* One side of a comparison: the file, and the guest view of the image
 * in it when it is one (else the file itself).
 */
struct side {
  struct sc_endpoint *file;
  struct sc_qcow2 *q;
  struct sc_endpoint *content;
};

static void
close_side (struct side *s)
{
  if (s->q) {
    sc_endpoint_close (s->content);
    sc_qcow2_close (s->q);
  }
  sc_endpoint_close (s->file);
  memset (s, 0, sizeof *s);
}

/* Open an operand for reading at random offsets; errors are printed. */
static int
open_file (const struct cli_operand *op, const struct cli_common *common,
           struct sc_endpoint **file)
{
  *file = cli_open_source (op, common, SC_MAP_SEEK);
  if (*file == NULL)
    return -1;
  if (sc_endpoint_is_stream (*file)) {
    cli_error ("%s: a pipe is read once, in order; verify needs a file, a "
               "device or an NBD export", cli_image_name (op->name));
    sc_endpoint_close (*file);
    *file = NULL;
    return -1;
  }
  return 0;
}

static int
open_side (const struct cli_operand *op, const struct cli_common *common,
           enum format format, struct side *s)
{
  int r;

  memset (s, 0, sizeof *s);
  if (open_file (op, common, &s->file) == -1)
    return -1;
  r = format == FORMAT_AUTO ? cli_endpoint_is_qcow2 (s->file)
                            : format == FORMAT_QCOW2;
  if (r == -1) {
    cli_lib_error (cli_image_name (op->name));
    close_side (s);
    return -1;
  }
  /* Raw data another process is writing is compared only with -U, as
   * qemu-img compare does (a qcow2 image is tested when it is opened).
   */
  if (r == 0 && !op->nbd && !common->force_share
      && strcmp (op->name, "-") != 0 && sc_image_lock_test (op->name) == -1) {
    cli_lib_error (cli_image_name (op->name));
    close_side (s);
    return -1;
  }
  if (r == 0) {
    s->content = s->file;
    return 0;
  }
  {
    /* An image marked corrupt is compared, as qemu-img compare opens
     * it read-only: its tables are validated as any image's are.
     */
    struct sc_qcow2_open_opts qo = { .force_share = common->force_share,
                                     .allow_corrupt = true };

    s->q = sc_qcow2_open_endpoint (s->file, &qo);
  }
  if (s->q == NULL || (s->content = sc_qcow2_endpoint (s->q)) == NULL) {
    cli_lib_error (cli_image_name (op->name));
    if (s->q)
      sc_qcow2_close (s->q);
    s->q = NULL;
    close_side (s);
    return -1;
  }
  return 0;
}

static void
print_hex (FILE *fp, const unsigned char *p, size_t len)
{
  for (size_t i = 0; i < len; i++)
    fprintf (fp, "%02x", p[i]);
}

static int
verify_digest (const struct cli_operand *op, const struct cli_common *common,
               struct sc_verify_opts *opts)
{
  struct sc_endpoint *file;
  struct sc_verify_result res;
  int r;

  /* As qemu-img: an image another process writes is read only with -U
   * (its digest would show as stale while it is written).
   */
  if (!op->nbd && !common->force_share && strcmp (op->name, "-") != 0
      && sc_image_lock_test (op->name) == -1) {
    cli_lib_error (cli_image_name (op->name));
    return EXIT_VERIFY_ERROR;
  }
  if (open_file (op, common, &file) == -1)
    return EXIT_VERIFY_ERROR;
  r = sc_verify_digest (file, opts, &res);
  cli_progress_done (common);
  /* The message names the image.  A cluster that does not decode is a
   * verdict (on stdout, below) whose reason (where the cluster is
   * stored, what the decoder said) goes to stderr.
   */
  if (r == -1 || (r == 1 && res.damaged && !common->quiet))
    cli_lib_error (NULL);
  sc_endpoint_close (file);
  switch (r) {
  case 0:
    if (!common->quiet) {
      printf ("%s: digest matches (sha256 ", cli_image_name (op->name));
      print_hex (stdout, res.stored, sizeof res.stored);
      printf (")\n");
    }
    return EXIT_OK;
  case 1:
    if (res.damaged) {
      if (!common->quiet)
        printf ("%s: digest mismatch at offset %" PRIu64 ": the compressed "
                "cluster there does not decode; the content is not what "
                "was packed\n", cli_image_name (op->name), res.offset);
      return EXIT_VERIFY_DIFFERENT;
    }
    if (!common->quiet)
      printf ("%s: digest mismatch: the content is not what was packed "
              "(or qemu overwrote uncompressed clusters in place after "
              "opening it read-only and then writable, as qemu-img commit "
              "into it can, which keeps the digest's autoclear bit and the "
              "image's tables)\n", cli_image_name (op->name));
    return EXIT_VERIFY_DIFFERENT;
  case 2:
    if (!common->quiet && res.sizes_differ)
      printf ("%s: digest is stale: another program has resized the image "
              "since it was packed (its virtual size is %" PRIu64 " bytes, "
              "the digest's %" PRIu64 ")\n", cli_image_name (op->name),
              res.offset, res.digest_size);
    else if (!common->quiet && res.mapping_changed)
      printf ("%s: digest is stale: another program has allocated or moved "
              "clusters of the image since it was packed (as qemu-img "
              "commit into it does)\n", cli_image_name (op->name));
    else if (!common->quiet)
      printf ("%s: digest is stale: the image was opened for writing by a "
              "program that does not keep it\n", cli_image_name (op->name));
    return EXIT_VERIFY_STALE;
  default:
    return EXIT_VERIFY_ERROR;
  }
}

static int
compare (const struct cli_operand *ops, const struct cli_common *common,
         enum format fa, enum format fb, struct sc_verify_opts *opts)
{
  const char *na = cli_image_name (ops[0].name);
  const char *nb = cli_image_name (ops[1].name);
  struct side a, b;
  struct sc_verify_result res;
  uint64_t sa, sb;
  int r;

  if (open_side (&ops[0], common, fa, &a) == -1)
    return EXIT_VERIFY_ERROR;
  if (open_side (&ops[1], common, fb, &b) == -1) {
    close_side (&a);
    return EXIT_VERIFY_ERROR;
  }
  sa = sc_endpoint_size (a.content);
  sb = sc_endpoint_size (b.content);
  r = sc_verify (a.content, b.content, opts, &res);
  cli_progress_done (common);
  if (r == -1)
    cli_lib_error (NULL);
  else if (res.sizes_differ && !common->quiet)
    /* With --strict that is the verdict; otherwise a warning, as
     * qemu-img compare gives.
     */
    fprintf (opts->strict ? stdout : stderr, "%s: %s%s and %s differ in "
             "size (%" PRIu64 " and %" PRIu64 " bytes)%s\n", cli_program,
             opts->strict ? "" : "warning: ", na, nb,
             sa, sb, opts->strict ? "" : "; the rest of the larger is "
             "compared with zeros");
  close_side (&a);
  close_side (&b);
  if (r == -1)
    return EXIT_VERIFY_ERROR;
  if (r == 1) {
    if (!common->quiet && !(opts->strict && res.sizes_differ))
      printf ("%s: %s and %s differ at offset %" PRIu64 "\n", cli_program,
              na, nb, res.offset);
    return EXIT_VERIFY_DIFFERENT;
  }
  if (!common->quiet)
    printf ("%s and %s are identical\n", na, nb);
  return EXIT_OK;
}

int
cmd_verify (int argc, char **argv)
{
  struct cli_common common = { 0 };
  struct sc_verify_opts opts = { 0 };
  struct cli_operand ops[2];
  enum format fa = FORMAT_AUTO, fb = FORMAT_AUTO;
  int c, n = 0, rc;

  cli_usage_status = EXIT_VERIFY_ERROR;
  cli_check_brackets ("verify", argc, argv);
  while ((c = cli_getopt (argc, argv, "sf:F:", long_options, &common,
                          usage)) != -1) {
    switch (c) {
    case 's':
      opts.strict = true;
      break;
    case 'f':
    case OPT_A_FORMAT:
      fa = parse_format (c == 'f' ? "-f" : "--a-format", optarg);
      break;
    case 'F':
    case OPT_B_FORMAT:
      fb = parse_format (c == 'F' ? "-F" : "--b-format", optarg);
      break;
    default:
      cli_usage_error ("verify", "unknown option");
    }
  }
  /* One operand or two: count them as cli_operands will split them. */
  for (int i = optind; i < argc; i++) {
    if (strcmp (argv[i], "--") == 0 && i > optind)
      continue;
    if (strcmp (argv[i], "[") == 0)
      while (i < argc && strcmp (argv[i], "]") != 0)
        i++;
    n++;
  }
  cli_operands ("verify", argc, argv, optind, ops, n == 1 ? 1 : 2,
                "IMAGE, or A and B");
  /* The verdict goes to standard output: never into A or B. */
  common.text_on_stdout = true;
  {
    bool from_stdin = false;

    for (int i = 0; i < (n == 1 ? 1 : 2); i++)
      from_stdin |= !ops[i].nbd && strcmp (ops[i].name, "-") == 0;
    cli_check_progress ("verify", &common, false, from_stdin);
    for (int i = 0; i < (n == 1 ? 1 : 2); i++)
      cli_check_progress_image ("verify", &common, ops[i].name);
  }
  opts.threads = common.threads;
  opts.progress = cli_progress_fn (&common, &opts.progress_opaque);
  cli_install_signal_handlers ();

  if (n == 1) {
    if (opts.strict || fa != FORMAT_AUTO || fb != FORMAT_AUTO)
      cli_usage_error ("verify", "-s, -f and -F compare two operands");
    rc = verify_digest (&ops[0], &common, &opts);
  }
  else
    rc = compare (ops, &common, fa, fb, &opts);
  if (fflush (stdout) == EOF) {
    cli_error ("verify: write error on stdout");
    return EXIT_VERIFY_ERROR;
  }
  return rc;
}
