/* sparsecow map: where the data, zeros and holes of an image or a file
 * are, in the same terms (and, with --json, the same bytes) as
 * "qemu-img map --output=json", so tools and tests can use either.
 */
#include <config.h>

#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "cli.h"

#define RAW_SECTOR_SIZE 512

struct map_out {
  bool json;
  bool first;
  /* Human output names the file holding each run, by depth. */
  const char **names;
  size_t nb_names;
};

static void
usage (FILE *fp)
{
  fprintf (fp,
           "Usage: %s map [--json] IMAGE|FILE\n"
           "Show which ranges of a qcow2 image (through its backing chain)\n"
           "or of a raw file hold data, read as zeros, or are unallocated.\n"
           "\n"
           "  --json, --output=json   one JSON array, as qemu-img map "
           "--output=json\n"
           "  --output=human          a table of the ranges that hold data "
           "(default)\n"
           "  -f qcow2|raw            the format, as qemu-img map -f (default:\n"
           "                          qcow2 if the file starts as one)\n"
           CLI_COMMON_HELP
           CLI_NBD_HELP, cli_program);
}

static int
print_entry (const struct sc_map_entry *e, void *opaque)
{
  struct map_out *out = opaque;

  if (out->json) {
    /* Byte for byte what qemu-img 7.2 prints. */
    printf ("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
            ", \"depth\": %u, \"present\": %s, \"zero\": %s, \"data\": %s",
            out->first ? "[" : ",\n", e->start, e->length, e->depth,
            e->present ? "true" : "false", e->zero ? "true" : "false",
            e->data ? "true" : "false");
    if (e->has_offset)
      printf (", \"offset\": %" PRIu64, e->offset);
    printf ("}");
  }
  else {
    const char *name = e->depth < out->nb_names ? out->names[e->depth] : "";

    if (out->first)
      printf ("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    if (e->data && e->has_offset)
      printf ("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n",
              e->start, e->length, e->offset, name);
    else if (e->data)
      printf ("%#-16" PRIx64 "%#-16" PRIx64 "%-16s%s\n",
              e->start, e->length, "compressed", name);
  }
  out->first = false;
  return 0;
}

static void
finish (struct map_out *out)
{
  if (out->first) {
    /* An empty image: qemu-img still prints one empty run. */
    struct sc_map_entry e = { 0 };
    print_entry (&e, out);
  }
  if (out->json)
    printf ("]\n");
}

static int
map_qcow2 (const char *path, struct sc_endpoint *ep, struct map_out *out,
           bool force_share)
{
  /* qemu-img map shows an image marked corrupt (it only refuses to
   * write one); a missing backing file is an error, as there.
   */
  struct sc_qcow2_open_opts qopts = { .allow_corrupt = true,
                                      .force_share = force_share };
  struct sc_qcow2 *q = ep ? sc_qcow2_open_endpoint (ep, &qopts)
                          : sc_qcow2_open (path, &qopts);
  struct sc_qcow2_info info;
  int r;

  if (q == NULL)
    return -1;
  if (sc_qcow2_get_info (q, &info) == -1) {
    sc_qcow2_close (q);
    return -1;
  }
  out->nb_names = info.chain_len + 1;
  out->names = calloc (out->nb_names, sizeof *out->names);
  if (out->names == NULL) {
    sc_qcow2_info_free (&info);
    sc_qcow2_close (q);
    return -1;
  }
  out->names[0] = info.data_file ? info.data_file : cli_image_path (path);
  for (size_t i = 0; i < info.chain_len; i++)
    out->names[i + 1] = info.chain[i].filename;

  r = sc_qcow2_map (q, print_entry, out);
  if (r == 0)
    finish (out);
  free (out->names);
  sc_qcow2_info_free (&info);
  sc_qcow2_close (q);
  return r;
}

/* A raw file or block device: everything is present at depth 0; holes
 * read as zeros, and every run is mapped to itself.
 */
static int
map_raw (const char *path, struct sc_endpoint *opened, bool export,
         struct map_out *out)
{
  struct sc_extent_list list;
  struct sc_endpoint *ep = opened;
  uint64_t size;
  int r = -1;

  if (ep == NULL && (ep = sc_endpoint_open_source (path, SC_MAP_SEEK)) == NULL)
    return -1;
  sc_extent_list_init (&list);
  /* qemu sees files in whole sectors: a partial last sector is padded
   * with zeros (and is a hole, being past the end of the file).  An
   * export is mapped as nbdinfo maps it, to its last byte.
   */
  size = sc_endpoint_size (ep);
  if (!export)
    size = (size + RAW_SECTOR_SIZE - 1) / RAW_SECTOR_SIZE * RAW_SECTOR_SIZE;
  if (size > 0 && sc_endpoint_extents (ep, 0, size, &list) == -1)
    goto out;
  path = cli_image_path (path);
  out->names = &path;
  out->nb_names = 1;
  for (size_t i = 0; i < list.len; i++) {
    const struct sc_extent *x = &list.ext[i];
    struct sc_map_entry e = {
      .start = x->offset, .length = x->length, .depth = 0,
      .present = true,
      .zero = (x->flags & (SC_EXTENT_HOLE | SC_EXTENT_ZERO)) != 0,
      .has_offset = true, .offset = x->offset,
    };
    e.data = !e.zero;
    print_entry (&e, out);
  }
  finish (out);
  r = 0;
 out:
  sc_extent_list_free (&list);
  if (opened == NULL && sc_endpoint_close (ep) == -1)
    r = -1;
  return r;
}

int
cmd_map (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "json", no_argument, NULL, OPT_JSON },
    { "output", required_argument, NULL, 'o' },
    { NULL, 0, NULL, 0 },
  };
  struct map_out out = { .first = true };
  struct cli_common common = { 0 };
  struct cli_operand op;
  struct sc_endpoint *ep = NULL;
  const char *path;
  int c, r, format = CLI_FORMAT_AUTO;

  /* A server started with [ CMD ] is stopped on a signal too; output
   * into a closed pipe ends the program quietly, as it does qemu-img.
   */
  cli_install_signal_handlers ();
  signal (SIGPIPE, SIG_DFL);
  cli_check_brackets ("map", argc, argv);
  while ((c = cli_getopt (argc, argv, "f:", long_options, &common,
                          usage)) != -1) {
    switch (c) {
    case 'f':
      format = cli_parse_image_format ("map", optarg, true);
      break;
    case OPT_JSON:
      out.json = true;
      break;
    case 'o':
      out.json = cli_parse_output ("map", optarg);
      break;
    default:
      cli_usage_error ("map", "unknown option");
    }
  }
  cli_operands ("map", argc, argv, optind, &op, 1, "one IMAGE or FILE");
  path = op.name;
  cli_check_report_streams ("map", &common, path, op.nbd);

  /* An export, or standard input redirected from a file, is read
   * through the endpoint opened here.
   */
  if (op.nbd || strcmp (path, "-") == 0) {
    ep = op.nbd ? cli_open_source (&op, &common, SC_MAP_SEEK)
                : cli_open_stdin_image ("map", &common);
    if (ep == NULL)
      return EXIT_ERROR;
    r = cli_endpoint_is_qcow2 (ep);
  }
  /* Not opened to look: that would take a pipe's first bytes. */
  else if (cli_is_stream_name (path)) {
    cli_error ("%s: a pipe or character device; map reads an image at "
               "random offsets: name a file, a block device or an NBD "
               "export", path);
    return EXIT_ERROR;
  }
  else
    r = sc_is_qcow2 (path);
  /* As qemu-img map -f: the named format, whatever the bytes say; an
   * image that is not qcow2 is refused by the reader then.
   */
  if (r != -1 && format != CLI_FORMAT_AUTO)
    r = format == CLI_FORMAT_QCOW2;
  if (r == 1)
    r = map_qcow2 (path, ep, &out, common.force_share);
  else if (r == 0)
    r = map_raw (path, ep, op.nbd, &out);
  if (r == -1) {
    fflush (stdout);
    cli_lib_error (cli_image_name (path));
    sc_endpoint_close (ep);
    return EXIT_ERROR;
  }
  if (sc_endpoint_close (ep) == -1) {
    cli_lib_error (cli_image_name (path));
    return EXIT_ERROR;
  }
  if (fflush (stdout) == EOF) {
    cli_error ("map: write error on stdout");
    return EXIT_ERROR;
  }
  return EXIT_OK;
}
