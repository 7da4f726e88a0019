/* sparsecow info: the header, features, backing chain, snapshots and
 * an allocation summary of a qcow2 image, laid out like qemu-img info
 * for people, or as one JSON object for programs.
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

#define BYTES_PER_BLOCK 512     /* st_blocks unit */

enum { OPT_BACKING_CHAIN = 0x200 };

/* Incompatible feature bit 2 (qcow2 specification): an external data
 * file holds the guest data.
 */
#define INCOMPAT_DATA_FILE (UINT64_C (1) << 2)

static uint64_t actual_size_of (const char *path);

static void
usage (FILE *fp)
{
  fprintf (fp,
           "Usage: %s info [--json] [--backing-chain] IMAGE\n"
           "Show the header, features, backing chain, snapshots and the\n"
           "allocation of a qcow2 image.\n"
           "\n"
           "  --json, --output=json   one JSON object, in qemu-img info's\n"
           "                          layout (sparsecow's own fields under\n"
           "                          \"sparsecow\")\n"
           "  --backing-chain         every image of the chain (JSON: an\n"
           "                          array)\n"
           "  --output=human          text, like qemu-img info (default)\n"
           "  -f qcow2                the format, as qemu-img info -f (only\n"
           "                          qcow2)\n"
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

/* The disk size of an image on a server: not known. */
#define UNKNOWN_SIZE UINT64_MAX

/* JSON in qemu-img info's layout, indented as qemu indents it: each
 * value is written after its key by the caller; sep() puts the comma
 * and the line break between members.
 */
struct json {
  FILE *fp;
  unsigned depth;
  bool first;                   /* no member yet at this depth */
};

static void
json_newline (struct json *j)
{
  fputc ('\n', j->fp);
  for (unsigned i = 0; i < j->depth; i++)
    fputs ("    ", j->fp);
}

static void
json_sep (struct json *j)
{
  if (!j->first)
    fputc (',', j->fp);
  j->first = false;
  json_newline (j);
}

static void
json_key (struct json *j, const char *key)
{
  json_sep (j);
  cli_json_string (j->fp, key);
  fputs (": ", j->fp);
}

static void
json_open (struct json *j, char c)
{
  fputc (c, j->fp);
  j->depth++;
  j->first = true;
}

static void
json_close (struct json *j, char c)
{
  j->depth--;
  json_newline (j);
  fputc (c, j->fp);
  j->first = false;
}

static void
json_str (struct json *j, const char *key, const char *v)
{
  json_key (j, key);
  cli_json_string (j->fp, v);
}

static void
json_u64 (struct json *j, const char *key, uint64_t v)
{
  json_key (j, key);
  fprintf (j->fp, "%" PRIu64, v);
}

static void
json_bool (struct json *j, const char *key, bool v)
{
  json_key (j, key);
  fputs (tf (v), j->fp);
}

/* The encryption of an image, as qemu-img info --output=json shows it
 * under "format-specific": the format, and for LUKS what its header
 * says (in qemu's order, which is that of its dictionary's hash).
 */
static void
json_encrypt (struct json *j, const struct sc_qcow2_info *i)
{
  const struct sc_luks_info *l = &i->luks;

  json_key (j, "encrypt");
  json_open (j, '{');
  if (i->encryption != SC_ENCRYPTION_LUKS) {
    json_str (j, "format", "aes");
    json_close (j, '}');
    return;
  }
  json_str (j, "ivgen-alg", l->ivgen_alg);
  json_str (j, "hash-alg", l->hash_alg);
  json_str (j, "cipher-alg", l->cipher_alg);
  json_str (j, "uuid", l->uuid);
  if (l->ivgen_hash_alg)
    json_str (j, "ivgen-hash-alg", l->ivgen_hash_alg);
  json_str (j, "format", "luks");
  json_str (j, "cipher-mode", l->cipher_mode);
  json_key (j, "slots");
  json_open (j, '[');
  for (size_t k = 0; k < SC_LUKS_KEY_SLOTS; k++) {
    const struct sc_luks_slot *s = &l->slots[k];

    json_sep (j);
    json_open (j, '{');
    json_bool (j, "active", s->active);
    if (s->active)
      json_u64 (j, "iters", s->iters);
    json_u64 (j, "key-offset", s->key_offset);
    if (s->active)
      json_u64 (j, "stripes", s->stripes);
    json_close (j, '}');
  }
  json_close (j, ']');
  json_u64 (j, "payload-offset", l->payload_offset);
  json_u64 (j, "master-key-iters", l->master_key_iters);
  json_close (j, '}');
}

/* The same, as qemu-img info prints it for people. */
static void
print_encrypt (const struct sc_qcow2_info *i)
{
  const struct sc_luks_info *l = &i->luks;

  printf ("    encrypt:\n");
  if (i->encryption != SC_ENCRYPTION_LUKS) {
    printf ("        format: aes\n");
    return;
  }
  printf ("        ivgen alg: %s\n", l->ivgen_alg);
  printf ("        hash alg: %s\n", l->hash_alg);
  printf ("        cipher alg: %s\n", l->cipher_alg);
  printf ("        uuid: %s\n", l->uuid);
  if (l->ivgen_hash_alg)
    printf ("        ivgen hash alg: %s\n", l->ivgen_hash_alg);
  printf ("        format: luks\n");
  printf ("        cipher mode: %s\n", l->cipher_mode);
  printf ("        slots:\n");
  for (size_t k = 0; k < SC_LUKS_KEY_SLOTS; k++) {
    const struct sc_luks_slot *s = &l->slots[k];

    printf ("            [%zu]:\n", k);
    printf ("                active: %s\n", tf (s->active));
    if (s->active)
      printf ("                iters: %" PRIu32 "\n", s->iters);
    printf ("                key offset: %" PRIu64 "\n", s->key_offset);
    if (s->active)
      printf ("                stripes: %" PRIu32 "\n", s->stripes);
  }
  printf ("        payload offset: %" PRIu64 "\n", l->payload_offset);
  printf ("        master key iters: %" PRIu32 "\n", l->master_key_iters);
}

/* qemu's path_combine: a backing file name relative to the directory
 * of the image that names it.  Malloc'd, or NULL.
 */
static char *
full_backing_name (const char *image, const char *backing)
{
  const char *slash = strrchr (image, '/');
  char *r;

  if (backing[0] == '/' || slash == NULL || strstr (backing, "://"))
    return strdup (backing);
  if (asprintf (&r, "%.*s%s", (int) (slash + 1 - image), image, backing)
      == -1)
    return NULL;
  return r;
}

/* One image, as one object of qemu-img info --output=json: the fields
 * qemu prints, with its names and nesting, and sparsecow's own under
 * "sparsecow".  path: the image file's path, against which a relative
 * backing file name is resolved.  remote: read from an export, where
 * the backing file's name is one on the server's side and has no path
 * here.
 */
static void
json_image (struct json *j, const struct sc_qcow2_info *i,
            const char *path, uint64_t actual_size, bool remote)
{
  json_open (j, '{');
  json_u64 (j, "virtual-size", i->virtual_size);
  json_str (j, "filename", i->filename);
  json_u64 (j, "cluster-size", i->cluster_size);
  json_str (j, "format", "qcow2");
  /* qemu leaves it out where it cannot be known (NBD). */
  if (actual_size != UNKNOWN_SIZE)
    json_u64 (j, "actual-size", actual_size);
  json_key (j, "format-specific");
  json_open (j, '{');
  json_str (j, "type", "qcow2");
  json_key (j, "data");
  json_open (j, '{');
  json_str (j, "compat", compat_name (i->version));
  json_str (j, "compression-type", compression_name (i->compression_type));
  /* Version 2 has no feature bits: qemu shows no more than this. */
  if (i->version >= 3) {
    json_bool (j, "lazy-refcounts", i->lazy_refcounts);
    if (i->nb_bitmaps > 0) {
      json_key (j, "bitmaps");
      json_open (j, '[');
      for (size_t k = 0; k < i->nb_bitmaps; k++) {
        const struct sc_bitmap_info *b = &i->bitmaps[k];
        json_sep (j);
        json_open (j, '{');
        json_key (j, "flags");
        json_open (j, '[');
        if (b->in_use) {
          json_sep (j);
          cli_json_string (j->fp, "in-use");
        }
        if (b->auto_enabled) {
          json_sep (j);
          cli_json_string (j->fp, "auto");
        }
        json_close (j, ']');
        json_str (j, "name", b->name);
        json_u64 (j, "granularity", b->granularity);
        json_close (j, '}');
      }
      json_close (j, ']');
    }
  }
  json_u64 (j, "refcount-bits", i->refcount_bits);
  if (i->version >= 3 && i->data_file)
    json_str (j, "data-file", i->data_file);
  if (i->encryption != SC_ENCRYPTION_NONE)
    json_encrypt (j, i);
  if (i->version >= 3) {
    /* An image that needs a data file may not name it (qemu-img info
     * opens it without one): the raw bit is shown all the same.
     */
    if (i->incompatible_features & INCOMPAT_DATA_FILE)
      json_bool (j, "data-file-raw", i->data_file_raw);
    json_bool (j, "corrupt", i->corrupt);
    json_bool (j, "extended-l2", i->extended_l2);
  }
  json_close (j, '}');
  json_close (j, '}');

  if (i->nb_snapshots > 0) {
    json_key (j, "snapshots");
    json_open (j, '[');
    for (size_t k = 0; k < i->nb_snapshots; k++) {
      const struct sc_snapshot_info *sn = &i->snapshots[k];
      json_sep (j);
      json_open (j, '{');
      /* qemu leaves icount out when the snapshot has none recorded. */
      if (sn->icount != UINT64_MAX)
        json_u64 (j, "icount", sn->icount);
      json_u64 (j, "vm-clock-nsec", sn->vm_clock_nsec % 1000000000);
      json_str (j, "name", sn->name);
      json_u64 (j, "date-sec", sn->date_sec);
      json_u64 (j, "date-nsec", sn->date_nsec);
      json_u64 (j, "vm-clock-sec", sn->vm_clock_nsec / 1000000000);
      json_str (j, "id", sn->id);
      json_u64 (j, "vm-state-size", sn->vm_state_size);
      json_close (j, '}');
    }
    json_close (j, ']');
  }
  if (i->backing_file) {
    char *full = full_backing_name (path, i->backing_file);

    json_str (j, "backing-filename", i->backing_file);
    /* As qemu-img over an export: no full name to give. */
    if (!remote)
      json_str (j, "full-backing-filename", full ? full : i->backing_file);
    free (full);
    if (i->backing_format)
      json_str (j, "backing-filename-format", i->backing_format);
  }
  if (i->encryption != SC_ENCRYPTION_NONE)
    json_bool (j, "encrypted", true);
  json_bool (j, "dirty-flag", i->dirty);

  /* What qemu-img info does not say. */
  json_key (j, "sparsecow");
  json_open (j, '{');
  json_u64 (j, "version", i->version);
  json_u64 (j, "file-size", i->file_size);
  json_u64 (j, "incompatible-features", i->incompatible_features);
  json_u64 (j, "compatible-features", i->compatible_features);
  json_u64 (j, "autoclear-features", i->autoclear_features);
  json_key (j, "backing-chain");
  json_open (j, '[');
  for (size_t k = 0; k < i->chain_len; k++) {
    json_sep (j);
    json_open (j, '{');
    json_str (j, "filename", i->chain[k].filename);
    if (i->chain[k].format)
      json_str (j, "format", i->chain[k].format);
    json_close (j, '}');
  }
  json_close (j, ']');
  if (i->backing_error)
    json_str (j, "backing-error", i->backing_error);
  if (i->data_file_error)
    json_str (j, "data-file-error", i->data_file_error);
  if (i->nb_snapshots > 0) {
    json_key (j, "snapshot-disk-sizes");
    json_open (j, '[');
    for (size_t k = 0; k < i->nb_snapshots; k++) {
      json_sep (j);
      fprintf (j->fp, "%" PRIu64, i->snapshots[k].disk_size);
    }
    json_close (j, ']');
  }
  if (i->damage)
    json_str (j, "damage", i->damage);
  else {
    json_u64 (j, "allocated-clusters", i->allocated_clusters);
    json_u64 (j, "compressed-clusters", i->compressed_clusters);
    json_u64 (j, "zero-clusters", i->zero_clusters);
  }
  json_close (j, '}');
  json_close (j, '}');
}

/* A raw file in a backing chain, as qemu-img info shows one. */
static void
json_raw (struct json *j, const char *path)
{
  struct stat st;
  uint64_t size = 0, actual = 0;

  if (stat (path, &st) == 0) {
    size = ((uint64_t) st.st_size + BYTES_PER_BLOCK - 1)
      / BYTES_PER_BLOCK * BYTES_PER_BLOCK;
    actual = (uint64_t) st.st_blocks * BYTES_PER_BLOCK;
  }
  json_open (j, '{');
  json_u64 (j, "virtual-size", size);
  json_str (j, "filename", path);
  json_str (j, "format", "raw");
  json_u64 (j, "actual-size", actual);
  json_bool (j, "dirty-flag", false);
  json_close (j, '}');
}

/* A raw file in a backing chain, as qemu-img info shows one. */
static void
print_human_raw (const char *path)
{
  struct stat st;
  char buf[64];
  uint64_t size = 0;

  if (stat (path, &st) == 0)
    size = ((uint64_t) st.st_size + BYTES_PER_BLOCK - 1)
      / BYTES_PER_BLOCK * BYTES_PER_BLOCK;
  printf ("image: %s\nfile format: raw\n", path);
  human_size (size, buf, sizeof buf);
  printf ("virtual size: %s (%" PRIu64 " bytes)\n", buf, size);
  human_size (actual_size_of (path), buf, sizeof buf);
  printf ("disk size: %s\n", buf);
}

/* One image, as qemu-img info prints it.  path: as for json_image. */
static void
print_human (const struct sc_qcow2_info *i, const char *path,
             uint64_t actual_size, bool remote)
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
  if (i->encryption != SC_ENCRYPTION_NONE)
    printf ("encrypted: yes\n");
  printf ("cluster_size: %" PRIu32 "\n", i->cluster_size);
  if (i->dirty)
    printf ("cleanly shut down: no\n");
  if (i->backing_file) {
    /* The name as qemu combines it, whether or not the file is there. */
    char *full = remote ? NULL : full_backing_name (path, i->backing_file);

    printf ("backing file: %s", i->backing_file);
    if (remote)
      printf (" (cannot determine actual path)");
    else if (full && strcmp (full, i->backing_file))
      printf (" (actual path: %s)", full);
    printf ("\n");
    free (full);
    if (i->backing_format)
      printf ("backing file format: %s\n", i->backing_format);
  }
  for (size_t k = 0; k < i->chain_len; k++)
    printf ("backing chain %zu: %s (%s)\n", k + 1, i->chain[k].filename,
            i->chain[k].format ? i->chain[k].format : "unknown");

  if (i->nb_snapshots > 0) {
    printf ("Snapshot list:\n");
    printf ("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE",
            "VM CLOCK", "ICOUNT");
    for (size_t k = 0; k < i->nb_snapshots; k++) {
      const struct sc_snapshot_info *s = &i->snapshots[k];
      time_t t = (time_t) s->date_sec;
      struct tm tm;
      char date[32], icount[32] = "";
      uint64_t clock_s = s->vm_clock_nsec / 1000000000;

      localtime_r (&t, &tm);
      strftime (date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
      human_size (s->vm_state_size, buf, sizeof buf);
      /* As qemu-img: the column is empty when none was recorded. */
      if (s->icount != UINT64_MAX)
        snprintf (icount, sizeof icount, "%" PRIu64, s->icount);
      printf ("%-9s %-16s %8s %19s %02" PRIu64 ":%02" PRIu64 ":%02" PRIu64
              ".%03" PRIu64 "%11s\n", s->id, s->name, buf, date,
              clock_s / 3600, clock_s / 60 % 60, clock_s % 60,
              s->vm_clock_nsec / 1000000 % 1000, icount);
    }
  }

  printf ("Format specific information:\n");
  printf ("    compat: %s\n", compat_name (i->version));
  printf ("    compression type: %s\n", compression_name (i->compression_type));
  /* qemu-img shows these for a version 3 image only. */
  if (i->version >= 3)
    printf ("    lazy refcounts: %s\n", tf (i->lazy_refcounts));
  if (i->nb_bitmaps > 0) {
    printf ("    bitmaps:\n");
    for (size_t k = 0; k < i->nb_bitmaps; k++) {
      const struct sc_bitmap_info *b = &i->bitmaps[k];
      unsigned f = 0;

      printf ("        [%zu]:\n            flags:\n", k);
      if (b->in_use)
        printf ("                [%u]: in-use\n", f++);
      if (b->auto_enabled)
        printf ("                [%u]: auto\n", f++);
      printf ("            name: %s\n            granularity: %" PRIu32 "\n",
              b->name, b->granularity);
    }
  }
  printf ("    refcount bits: %" PRIu32 "\n", i->refcount_bits);
  /* Where qemu-img info puts them. */
  if (i->data_file)
    printf ("    data file: %s\n", i->data_file);
  if (i->encryption != SC_ENCRYPTION_NONE)
    print_encrypt (i);
  if (i->incompatible_features & INCOMPAT_DATA_FILE)
    printf ("    data file raw: %s\n", tf (i->data_file_raw));
  if (i->version >= 3) {
    printf ("    corrupt: %s\n", tf (i->corrupt));
    printf ("    extended l2: %s\n", tf (i->extended_l2));
  }
  /* A damaged image's tables are not walked: nothing to count. */
  if (i->damage) {
    printf ("Damage: %s\n", i->damage);
    return;
  }
  printf ("Allocation:\n");
  printf ("    allocated clusters: %" PRIu64 "\n", i->allocated_clusters);
  printf ("    compressed clusters: %" PRIu64 "\n", i->compressed_clusters);
  printf ("    zero clusters: %" PRIu64 "\n", i->zero_clusters);
}

/* Open one image of the chain (the top one through ep when it is an
 * export) and get its info.  Prints the error and returns -1.
 */
static int
image_info (const char *path, struct sc_endpoint *ep,
            struct sc_qcow2_info *info, bool force_share)
{
  /* As qemu-img info: the header is shown even when the backing file
   * is missing or the image is marked corrupt.
   */
  struct sc_qcow2_open_opts qopts = { .backing_optional = true,
                                      .allow_corrupt = true,
                                      .force_share = force_share };

  /* A damaged image is shown too, as far as qemu-img info shows it. */
  if (sc_qcow2_inspect (path, ep, &qopts, info) == -1) {
    cli_lib_error (path);
    return -1;
  }
  if (info->damage)
    fprintf (stderr, "%s: %s: %s: the image is damaged, its data cannot "
             "be read\n", cli_program, path, info->damage);
  /* qemu-img info does not open the data file; say what is missing
   * all the same.
   */
  if (info->data_file_error)
    fprintf (stderr, "%s: %s: %s\n", cli_program, path,
             info->data_file_error);
  return 0;
}

/* What a file really occupies, as qemu-img's "disk size" ("-": the
 * file on standard input).
 */
static uint64_t
actual_size_of (const char *path)
{
  struct stat st;

  if ((strcmp (path, "-") == 0 ? fstat (STDIN_FILENO, &st)
       : stat (path, &st)) == -1)
    return 0;
  return (uint64_t) st.st_blocks * BYTES_PER_BLOCK;
}

int
cmd_info (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "json", no_argument, NULL, OPT_JSON },
    { "output", required_argument, NULL, 'o' },
    { "backing-chain", no_argument, NULL, OPT_BACKING_CHAIN },
    { NULL, 0, NULL, 0 },
  };
  struct sc_qcow2_info info, *chain_info = NULL;
  size_t chain_opened = 0;      /* entries of chain_info to free */
  struct cli_common common = { 0 };
  struct cli_operand op;
  struct sc_endpoint *ep = NULL;
  struct json j = { .fp = stdout, .depth = 0, .first = true };
  bool json = false, chain = false;
  const char *path;
  int c, rc = EXIT_OK;

  /* A server started with [ CMD ] is stopped on a signal too; output
   * into a closed pipe ends the program quietly, as it does qemu-img.
   */
  cli_install_signal_handlers ();
  signal (SIGPIPE, SIG_DFL);
  cli_check_brackets ("info", argc, argv);
  while ((c = cli_getopt (argc, argv, "f:", long_options, &common,
                          usage)) != -1) {
    switch (c) {
    case 'f':
      /* qemu-img's spelling; only qcow2 is read here. */
      (void) cli_parse_image_format ("info", optarg, false);
      break;
    case OPT_JSON:
      json = true;
      break;
    case 'o':
      json = cli_parse_output ("info", optarg);
      break;
    case OPT_BACKING_CHAIN:
      chain = true;
      break;
    default:
      cli_usage_error ("info", "unknown option");
    }
  }
  cli_operands ("info", argc, argv, optind, &op, 1, "one IMAGE");
  path = op.name;
  cli_check_report_streams ("info", &common, path, op.nbd);

  if (op.nbd && (ep = cli_open_source (&op, &common, SC_MAP_SEEK)) == NULL)
    return EXIT_ERROR;
  /* Standard input redirected from the image, as unpack reads it. */
  if (!op.nbd && strcmp (path, "-") == 0
      && (ep = cli_open_stdin_image ("info", &common)) == NULL)
    return EXIT_ERROR;
  if (image_info (op.nbd ? path : cli_image_name (path), ep, &info,
                  common.force_share) == -1) {
    sc_endpoint_close (ep);
    return EXIT_ERROR;
  }
  /* An export is named as qemu-img names it: without the "/" of an
   * empty export name ("nbd+unix://?socket=S", "nbd://HOST:PORT").
   */
  if (op.nbd && info.filename) {
    char *rest = strstr (info.filename, "://");
    char *slash = rest ? rest + 3 + strcspn (rest + 3, "/?") : NULL;

    if (slash && slash[0] == '/' && (slash[1] == '?' || slash[1] == '\0'))
      memmove (slash, slash + 1, strlen (slash + 1) + 1);
  }
  /* An image on standard input is named in the output as qemu-img
   * names /dev/stdin given as the image, as check and map name it (its
   * backing file names are still resolved from the file's own path).
   */
  if (!op.nbd && strcmp (path, "-") == 0) {
    char *name = strdup (cli_image_path (path));

    if (name == NULL) {
      cli_error ("info: %s", strerror (errno));
      sc_qcow2_info_free (&info);
      sc_endpoint_close (ep);
      return EXIT_ERROR;
    }
    free (info.filename);
    info.filename = name;
  }
  /* qemu-img info does not open the backing file; say what is missing
   * all the same.
   */
  if (info.backing_error)
    fprintf (stderr, "%s: %s: %s\n", cli_program,
             op.nbd ? path : cli_image_name (path), info.backing_error);

  /* --backing-chain: every image of the chain, as qemu-img prints
   * them.  Like qemu-img, every one is opened before anything is
   * printed: a chain that cannot be opened whole prints nothing.
   */
  if (chain && info.chain_len > 0) {
    chain_info = calloc (info.chain_len, sizeof *chain_info);
    if (chain_info == NULL) {
      cli_error ("info: %s", strerror (errno));
      rc = EXIT_ERROR;
    }
  }
  for (size_t k = 0; chain && rc == EXIT_OK && k < info.chain_len; k++) {
    const struct sc_backing_info *b = &info.chain[k];

    if (b->format && strcmp (b->format, "raw") == 0)
      continue;
    if (image_info (b->filename, NULL, &chain_info[k],
                    common.force_share) == -1)
      rc = EXIT_ERROR;
    else
      chain_opened = k + 1;
  }
  if (chain && info.backing_error)
    rc = EXIT_ERROR;

  if (rc == EXIT_OK) {
    if (json && chain) {
      json_open (&j, '[');
      json_sep (&j);
    }
    /* An image on standard input is in the file it is redirected
     * from, where that can be found.
     */
    if (json)
      json_image (&j, &info, ep && sc_endpoint_file_path (ep)
                  ? sc_endpoint_file_path (ep) : info.filename,
                  op.nbd ? UNKNOWN_SIZE : actual_size_of (path), op.nbd);
    else
      print_human (&info, ep && sc_endpoint_file_path (ep)
                   ? sc_endpoint_file_path (ep) : info.filename,
                   op.nbd ? UNKNOWN_SIZE : actual_size_of (path), op.nbd);
    for (size_t k = 0; chain && k < info.chain_len; k++) {
      const struct sc_backing_info *b = &info.chain[k];
      bool raw = b->format && strcmp (b->format, "raw") == 0;

      if (json)
        json_sep (&j);
      else
        printf ("\n");
      if (raw && json)
        json_raw (&j, b->filename);
      else if (raw)
        print_human_raw (b->filename);
      else if (json)
        json_image (&j, &chain_info[k], chain_info[k].filename,
                    actual_size_of (b->filename), false);
      else
        print_human (&chain_info[k], chain_info[k].filename,
                     actual_size_of (b->filename), false);
    }
    if (json && chain)
      json_close (&j, ']');
    if (json)
      printf ("\n");
  }

  for (size_t k = 0; k < chain_opened; k++)
    sc_qcow2_info_free (&chain_info[k]);
  free (chain_info);
  sc_qcow2_info_free (&info);
  sc_endpoint_close (ep);
  if (fflush (stdout) == EOF) {
    cli_error ("info: write error on stdout");
    return EXIT_ERROR;
  }
  return rc;
}
