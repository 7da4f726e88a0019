/* sparsecow info: the header, features, backing chain, snapshots and
 * an allocation summary of a qcow2 image, laid out like qemu-img info
 * for people, or as one JSON object for programs.
 */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>

#include "cli.h"

#define BYTES_PER_BLOCK 512     /* st_blocks unit */

static void
usage (FILE *fp)
{
  fprintf (fp,
           "Usage: %s info [--json] IMAGE\n"
           "Show the header, features, backing chain, snapshots and the\n"
           "allocation of a qcow2 image.\n"
           "\n"
           "  --json, --output=json   one JSON object\n"
           "  --output=human          text, like qemu-img info (default)\n"
           CLI_COMMON_HELP
           CLI_NBD_HELP, cli_program);
}

/* A size for people, as qemu prints it: three significant digits and
 * a binary unit ("328 KiB").
 */
static void
human_size (uint64_t v, char *buf, size_t len)
{
  static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB",
                                       "PiB", "EiB" };
  unsigned i = 0;
  double d = (double) v;

  /* Switch units a little before 1024 so "1000 KiB" reads "0.977 MiB". */
  while (d >= 1000.0 && i + 1 < sizeof units / sizeof units[0]) {
    d /= 1024.0;
    i++;
  }
  snprintf (buf, len, "%0.3g %s", d, units[i]);
}

static const char *
compat_name (uint32_t version)
{
  return version == 2 ? "0.10" : "1.1";
}

static const char *
compression_name (enum sc_codec c)
{
  return c == SC_CODEC_ZSTD ? "zstd" : "zlib";
}

static const char *
tf (bool b)
{
  return b ? "true" : "false";
}

static void
json_string_or_null (const char *s)
{
  if (s)
    cli_json_string (stdout, s);
  else
    fputs ("null", stdout);
}

/* The disk size of an image on a server: not known. */
#define UNKNOWN_SIZE UINT64_MAX

static void
print_json (const struct sc_qcow2_info *i, uint64_t actual_size)
{
  printf ("{\n  \"filename\": ");
  cli_json_string (stdout, i->filename);
  printf (",\n  \"format\": \"qcow2\",\n");
  printf ("  \"version\": %" PRIu32 ",\n", i->version);
  printf ("  \"compat\": \"%s\",\n", compat_name (i->version));
  printf ("  \"virtual-size\": %" PRIu64 ",\n", i->virtual_size);
  printf ("  \"file-size\": %" PRIu64 ",\n", i->file_size);
  /* qemu-img leaves it out where it cannot be known (NBD). */
  if (actual_size != UNKNOWN_SIZE)
    printf ("  \"actual-size\": %" PRIu64 ",\n", actual_size);
  printf ("  \"cluster-size\": %" PRIu32 ",\n", i->cluster_size);
  printf ("  \"refcount-bits\": %" PRIu32 ",\n", i->refcount_bits);
  printf ("  \"compression-type\": \"%s\",\n",
          compression_name (i->compression_type));
  printf ("  \"incompatible-features\": %" PRIu64 ",\n",
          i->incompatible_features);
  printf ("  \"compatible-features\": %" PRIu64 ",\n",
          i->compatible_features);
  printf ("  \"autoclear-features\": %" PRIu64 ",\n", i->autoclear_features);
  printf ("  \"lazy-refcounts\": %s,\n", tf (i->lazy_refcounts));
  printf ("  \"extended-l2\": %s,\n", tf (i->extended_l2));
  printf ("  \"dirty\": %s,\n", tf (i->dirty));
  printf ("  \"corrupt\": %s,\n", tf (i->corrupt));
  printf ("  \"data-file\": ");
  json_string_or_null (i->data_file);
  printf (",\n  \"data-file-raw\": %s,\n", tf (i->data_file_raw));
  printf ("  \"backing-filename\": ");
  json_string_or_null (i->backing_file);
  printf (",\n  \"backing-format\": ");
  json_string_or_null (i->backing_format);
  printf (",\n  \"backing-chain\": [");
  for (size_t k = 0; k < i->chain_len; k++) {
    printf ("%s\n    { \"filename\": ", k ? "," : "");
    cli_json_string (stdout, i->chain[k].filename);
    printf (", \"format\": ");
    json_string_or_null (i->chain[k].format);
    printf (" }");
  }
  printf ("%s],\n  \"snapshots\": [", i->chain_len ? "\n  " : "");
  for (size_t k = 0; k < i->nb_snapshots; k++) {
    const struct sc_snapshot_info *s = &i->snapshots[k];
    printf ("%s\n    { \"id\": ", k ? "," : "");
    cli_json_string (stdout, s->id);
    printf (", \"name\": ");
    cli_json_string (stdout, s->name);
    printf (", \"vm-state-size\": %" PRIu64 ", \"date-sec\": %" PRIu32
            ", \"date-nsec\": %" PRIu32 ", \"vm-clock-nsec\": %" PRIu64
            ", \"disk-size\": %" PRIu64 " }", s->vm_state_size, s->date_sec,
            s->date_nsec, s->vm_clock_nsec, s->disk_size);
  }
  printf ("%s],\n", i->nb_snapshots ? "\n  " : "");
  printf ("  \"allocated-clusters\": %" PRIu64 ",\n", i->allocated_clusters);
  printf ("  \"compressed-clusters\": %" PRIu64 ",\n",
          i->compressed_clusters);
  printf ("  \"zero-clusters\": %" PRIu64 "\n}\n", i->zero_clusters);
}

static void
print_human (const struct sc_qcow2_info *i, uint64_t actual_size)
{
  char buf[64];

  printf ("image: %s\n", i->filename);
  printf ("file format: qcow2\n");
  human_size (i->virtual_size, buf, sizeof buf);
  printf ("virtual size: %s (%" PRIu64 " bytes)\n", buf, i->virtual_size);
  if (actual_size == UNKNOWN_SIZE)
    snprintf (buf, sizeof buf, "unavailable");
  else
    human_size (actual_size, buf, sizeof buf);
  printf ("disk size: %s\n", buf);
  printf ("cluster_size: %" PRIu32 "\n", i->cluster_size);
  if (i->backing_file) {
    printf ("backing file: %s", i->backing_file);
    if (i->chain_len > 0 && strcmp (i->chain[0].filename, i->backing_file))
      printf (" (actual path: %s)", i->chain[0].filename);
    printf ("\n");
    if (i->backing_format)
      printf ("backing file format: %s\n", i->backing_format);
  }
  for (size_t k = 0; k < i->chain_len; k++)
    printf ("backing chain %zu: %s (%s)\n", k + 1, i->chain[k].filename,
            i->chain[k].format ? i->chain[k].format : "unknown");

  if (i->nb_snapshots > 0) {
    printf ("Snapshot list:\n");
    printf ("%-10s%-17s%8s%20s%13s\n", "ID", "TAG", "VM SIZE", "DATE",
            "VM CLOCK");
    for (size_t k = 0; k < i->nb_snapshots; k++) {
      const struct sc_snapshot_info *s = &i->snapshots[k];
      time_t t = (time_t) s->date_sec;
      struct tm tm;
      char date[32];
      uint64_t clock_s = s->vm_clock_nsec / 1000000000;

      localtime_r (&t, &tm);
      strftime (date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
      human_size (s->vm_state_size, buf, sizeof buf);
      printf ("%-9s %-16s %8s %19s %02" PRIu64 ":%02" PRIu64 ":%02" PRIu64
              ".%03" PRIu64 "\n", s->id, s->name, buf, date,
              clock_s / 3600, clock_s / 60 % 60, clock_s % 60,
              s->vm_clock_nsec / 1000000 % 1000);
    }
  }

  printf ("Format specific information:\n");
  printf ("    compat: %s\n", compat_name (i->version));
  printf ("    compression type: %s\n", compression_name (i->compression_type));
  printf ("    lazy refcounts: %s\n", tf (i->lazy_refcounts));
  printf ("    refcount bits: %" PRIu32 "\n", i->refcount_bits);
  printf ("    corrupt: %s\n", tf (i->corrupt));
  printf ("    dirty: %s\n", tf (i->dirty));
  printf ("    extended l2: %s\n", tf (i->extended_l2));
  if (i->data_file) {
    printf ("    data file: %s\n", i->data_file);
    printf ("    data file raw: %s\n", tf (i->data_file_raw));
  }
  printf ("Allocation:\n");
  printf ("    allocated clusters: %" PRIu64 "\n", i->allocated_clusters);
  printf ("    compressed clusters: %" PRIu64 "\n", i->compressed_clusters);
  printf ("    zero clusters: %" PRIu64 "\n", i->zero_clusters);
}

int
cmd_info (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "json", no_argument, NULL, OPT_JSON },
    { "output", required_argument, NULL, 'o' },
    { NULL, 0, NULL, 0 },
  };
  struct sc_qcow2_info info;
  struct sc_qcow2 *q;
  struct cli_common common = { 0 };
  struct cli_operand op;
  struct sc_endpoint *ep = NULL;
  struct stat st;
  uint64_t actual_size = 0;
  bool json = false;
  const char *path;
  int c;

  cli_check_brackets ("info", argc, argv);
  while ((c = cli_getopt (argc, argv, "", long_options, &common,
                          usage)) != -1) {
    switch (c) {
    case OPT_JSON:
      json = true;
      break;
    case 'o':
      json = cli_parse_output ("info", optarg);
      break;
    default:
      cli_usage_error ("info", "unknown option");
    }
  }
  cli_operands ("info", argc, argv, optind, &op, 1, "one IMAGE");
  path = op.name;

  if (op.nbd) {
    if ((ep = cli_open_source (&op, &common, SC_MAP_SEEK)) == NULL)
      return EXIT_ERROR;
    q = sc_qcow2_open_endpoint (ep, NULL);
  }
  else
    q = sc_qcow2_open (path, NULL);
  if (q == NULL) {
    cli_lib_error (path);
    sc_endpoint_close (ep);
    return EXIT_ERROR;
  }
  if (sc_qcow2_get_info (q, &info) == -1) {
    cli_lib_error (path);
    sc_qcow2_close (q);
    sc_endpoint_close (ep);
    return EXIT_ERROR;
  }
  /* What the file really occupies, like qemu-img's "disk size". */
  if (op.nbd)
    actual_size = UNKNOWN_SIZE;
  else if (stat (path, &st) == 0)
    actual_size = (uint64_t) st.st_blocks * BYTES_PER_BLOCK;

  if (json)
    print_json (&info, actual_size);
  else
    print_human (&info, actual_size);

  sc_qcow2_info_free (&info);
  sc_qcow2_close (q);
  sc_endpoint_close (ep);
  if (fflush (stdout) == EOF) {
    cli_error ("info: write error on stdout");
    return EXIT_ERROR;
  }
  return EXIT_OK;
}
