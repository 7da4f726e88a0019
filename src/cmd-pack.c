/* sparsecow pack: sparse raw data or a qcow2 image -> qcow2. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

#define MAX_DEFLATE_LEVEL 9
#define MAX_ZSTD_LEVEL 22

/* Options of this command only, above the shared ids of cli.h. */
enum {
  OPT_SOURCE_FORMAT = 0x200,
  OPT_BMAP_OUT,
  OPT_DIGEST,
  OPT_NO_DIGEST,
};

enum source_format {
  SOURCE_AUTO,                  /* probe a file; pipes are raw */
  SOURCE_RAW,
  SOURCE_QCOW2,
};

static void
usage (FILE *fp)
{
  fprintf (fp,
"Usage: %s pack [OPTIONS] SOURCE TARGET.qcow2\n"
"Pack a sparse raw file, block device or pipe ('-' for stdin) into a new\n"
"qcow2 image, storing only the clusters that hold data.  TARGET '-' writes\n"
"the image to stdout.\n"
"A SOURCE file that is a qcow2 image is re-packed: its guest content,\n"
"through its backing chain, goes into the new image with the options\n"
"given here, as 'qemu-img convert -O qcow2' does.  Other disk image\n"
"formats (vmdk, vhdx, vdi, VHD, qed, LUKS) are refused.  Pipes are\n"
"read as raw data; one that carries a qcow2 image is refused unless\n"
"--source-format=raw is given.\n"
"\n"
"  -f, --force              replace an existing TARGET; write to TARGET if\n"
"                           it is a block device\n"
"      --target-is-device   write to TARGET, a block device (anything\n"
"                           else is refused)\n"
"  -n, --in-place           write into the existing TARGET where it is: no\n"
"                           temporary name, the same inode (owner, mode,\n"
"                           links kept); a file is cut to the image's\n"
"                           length.  Unlike qemu-img convert -n -O qcow2,\n"
"                           TARGET is not opened as an image: its bytes\n"
"                           are replaced by the new image\n"
"      --target-is-zero     with -n: TARGET reads as zero already: ranges\n"
"                           of zeros are not written\n"
"      --source-format=raw|qcow2\n"
"                           do not probe SOURCE: pack its bytes (raw) or\n"
"                           re-pack it as a qcow2 image\n"
"  -c, --compress[=CODEC]   compress clusters: deflate (default) or zstd\n"
"                           ('-c zstd' works too)\n"
"      --level N            compression level (deflate 1-9, zstd 1-22)\n"
"      --compat=0.10|1.1    qcow2 version 2 or 3 (default 1.1)\n"
"      --cluster-size SIZE  512 bytes to 2M, a power of two (default 64K)\n"
"      --refcount-bits N    1, 2, 4, 8, 16, 32 or 64 (default 16; 0.10: 16)\n"
"  -O qcow2                 the output format, as qemu-img convert -O\n"
"  -o OPT=VALUE[,...]       the same as qemu-img: cluster_size, compat,\n"
"                           refcount_bits, compression_type=zlib|zstd\n"
"                           ('-o help' lists them)\n"
"      --map=seek|fiemap|none|bmap:FILE.bmap\n"
"                           how to find a raw file's data (default seek);\n"
"                           bmap: the ranges of a bmap file, each checked\n"
"                           against its SHA-256 as it is read\n"
"      --bmap-out FILE.bmap also write a block map of SOURCE for bmaptool\n"
"                           copy, from the same reads as the image\n"
"  -S SIZE                  as qemu-img convert: runs of zeros between\n"
"                           data shorter than SIZE are stored (default\n"
"                           4k: every all-zero cluster is left out);\n"
"                           -S 0 stores every cluster\n"
"      --digest, --no-digest\n"
"                           store a digest of the content for 'verify IMAGE'\n"
"                           or not (default: with -c, in compat=1.1 images)\n"
CLI_COMMON_HELP
CLI_NBD_HELP,
           cli_program);
}

static const struct option long_options[] = {
  { "force", no_argument, NULL, 'f' },
  { "target-is-device", no_argument, NULL, OPT_TARGET_IS_DEVICE },
  { "in-place", no_argument, NULL, 'n' },
  { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
  { "compress", optional_argument, NULL, OPT_COMPRESS },
  { "level", required_argument, NULL, OPT_LEVEL },
  { "compat", required_argument, NULL, OPT_COMPAT },
  { "cluster-size", required_argument, NULL, OPT_CLUSTER_SIZE },
  { "refcount-bits", required_argument, NULL, OPT_REFCOUNT_BITS },
  { "map", required_argument, NULL, OPT_MAP },
  { "source-format", required_argument, NULL, OPT_SOURCE_FORMAT },
  { "bmap-out", required_argument, NULL, OPT_BMAP_OUT },
  { "digest", no_argument, NULL, OPT_DIGEST },
  { "no-digest", no_argument, NULL, OPT_NO_DIGEST },
  CLI_COMMON_LONG_OPTIONS,
  { NULL, 0, NULL, 0 },
};

/* How the user spelled the options that other options must agree
 * with, for messages that name them as they were typed
 * ("-o compat=0.10", not "--compat").
 */
struct spelled {
  char compat[64];              /* "--compat=0.10", "-o compat=v2" */
  char refcount_bits[64];
  char codec[64];               /* "-c zstd", "--compress=zstd" */
  char ctype[64];               /* "-o compression_type=zstd" */
};

static void
spell (char *buf, size_t len, const char *what, const char *sep,
       const char *arg)
{
  snprintf (buf, len, "%s%s%s", what, sep, arg);
}

static bool
is_codec_word (const char *s)
{
  return strcmp (s, "deflate") == 0 || strcmp (s, "zlib") == 0
    || strcmp (s, "zstd") == 0 || strcmp (s, "none") == 0;
}

static void
parse_codec (const char *s, struct sc_pack_opts *opts)
{
  if (strcmp (s, "deflate") == 0 || strcmp (s, "zlib") == 0)
    opts->codec = SC_CODEC_DEFLATE;
  else if (strcmp (s, "zstd") == 0)
    opts->codec = SC_CODEC_ZSTD;
  else if (strcmp (s, "none") == 0)
    opts->codec = SC_CODEC_NONE;
  else if (s[0] == '=')
    /* "-c=zstd": a short option's value follows it directly. */
    cli_usage_error ("pack", "%s: expected deflate or zstd, not '%s' "
                     "(write %s%s)", cli_option_typed, s, cli_option_typed,
                     s + 1);
  else
    cli_usage_error ("pack", "%s: expected deflate or zstd, not '%s'",
                     cli_option_typed, s);
}

/* The format options, spelled as long options or as qemu-img's -o
 * keys; what names the spelling in errors.
 */
static void
parse_compat (const char *what, const char *arg, struct sc_pack_opts *opts,
              struct spelled *sp)
{
  if (strcmp (arg, "0.10") == 0 || strcmp (arg, "v2") == 0)
    opts->version = 2;
  else if (strcmp (arg, "1.1") == 0 || strcmp (arg, "v3") == 0)
    opts->version = 3;
  else
    cli_usage_error ("pack", "%s: expected 0.10 or 1.1, not '%s'", what, arg);
  spell (sp->compat, sizeof sp->compat, what, "=", arg);
}

static void
parse_cluster_size (const char *what, const char *arg,
                    struct sc_pack_opts *opts)
{
  uint64_t cs;

  if (cli_parse_size (arg, &cs) == -1 || cs < 512
      || cs > 2 * 1024 * 1024 || (cs & (cs - 1)) != 0)
    cli_usage_error ("pack", "%s: expected a power of two from 512 to 2M, "
                     "not '%s'", what, arg);
  opts->cluster_size = (uint32_t) cs;
}

static void
parse_refcount_bits (const char *what, const char *arg,
                     struct sc_pack_opts *opts, struct spelled *sp)
{
  unsigned bits;

  if (cli_parse_uint (arg, 1, 64, &bits) == -1 || (bits & (bits - 1)) != 0)
    cli_usage_error ("pack", "%s: expected 1, 2, 4, 8, 16, 32 or 64, "
                     "not '%s'", what, arg);
  opts->refcount_bits = bits;
  spell (sp->refcount_bits, sizeof sp->refcount_bits, what, "=", arg);
}

/* -o KEY=VALUE[,KEY=VALUE...], the keys of qemu-img create -f qcow2
 * that mean something here.  compression_type sets *ctype: which codec
 * -c uses, or without -c the type the header records.
 */
static void
parse_o (const char *arg, struct sc_pack_opts *opts, enum sc_codec *ctype,
         struct spelled *sp)
{
  char *copy = strdup (arg), *item, *next;

  if (copy == NULL) {
    cli_error ("pack: -o: %s", strerror (errno));
    exit (EXIT_ERROR);
  }
  /* As qemu-img: "-o help" (or "?") anywhere in the list prints the
   * options, and an empty one ("", "a=1,", "a=1,,b=2") is an error.
   */
  for (item = copy; item; item = next) {
    next = strchr (item, ',');
    if (next)
      *next++ = '\0';
    if (strcmp (item, "help") == 0 || strcmp (item, "?") == 0) {
      printf ("Supported options:\n"
              "  cluster_size=<size>    - qcow2 cluster size, 512 to 2M\n"
              "  compat=<str>           - compatibility level (v2 [0.10] "
              "or v3 [1.1])\n"
              "  compression_type=<str> - zlib or zstd (without -c: "
              "recorded only)\n"
              "  refcount_bits=<num>    - width of a reference count "
              "entry in bits\n");
      exit (EXIT_OK);
    }
  }
  strcpy (copy, arg);
  for (item = copy; item; item = next) {
    char *value;

    next = strchr (item, ',');
    if (next)
      *next++ = '\0';
    if (item[0] == '\0')
      cli_usage_error ("pack", "-o: empty option in '%s'", arg);
    value = strchr (item, '=');
    if (value == NULL)
      cli_usage_error ("pack", "-o: expected KEY=VALUE, not '%s'", item);
    *value++ = '\0';
    if (strcmp (item, "cluster_size") == 0)
      parse_cluster_size ("-o cluster_size", value, opts);
    else if (strcmp (item, "compat") == 0)
      parse_compat ("-o compat", value, opts, sp);
    else if (strcmp (item, "refcount_bits") == 0)
      parse_refcount_bits ("-o refcount_bits", value, opts, sp);
    else if (strcmp (item, "compression_type") == 0) {
      if (strcmp (value, "zlib") == 0)
        *ctype = SC_CODEC_DEFLATE;
      else if (strcmp (value, "zstd") == 0)
        *ctype = SC_CODEC_ZSTD;
      else
        cli_usage_error ("pack", "-o compression_type: expected zlib or "
                         "zstd, not '%s'", value);
      spell (sp->ctype, sizeof sp->ctype, "-o compression_type", "=", value);
    }
    else
      cli_usage_error ("pack", "-o: unknown option '%s' (known: "
                       "cluster_size, compat, refcount_bits, "
                       "compression_type)", item);
  }
  free (copy);
}

/* ---- what the source is ---------------------------------------------- */

/* Bytes read from the start and from the end of a source to recognise
 * disk image formats.
 */
#define PROBE_HEAD 512
#define PROBE_TAIL 512

struct probe {
  unsigned char head[PROBE_HEAD];
  size_t head_len;
  unsigned char tail[PROBE_TAIL];
  size_t tail_len;
};

/* A disk image format that is not raw data and that pack cannot read:
 * its name in messages, qemu's name for it (NULL if qemu-img needs more
 * than -f to read it), and whether the file is only a descriptor.
 */
struct foreign {
  const char *name;
  const char *driver;
  bool descriptor;
};

static bool
head_is (const struct probe *p, size_t offset, const void *magic, size_t len)
{
  return p->head_len >= offset + len
    && memcmp (p->head + offset, magic, len) == 0;
}

/* The magics are those of the formats' specifications, which qemu's
 * probes use too.  Only formats with a magic that raw data is unlikely
 * to start with by chance are recognised; --source-format=raw packs
 * such data anyway.
 */
static bool
probe_foreign (const struct probe *p, struct foreign *f)
{
  f->descriptor = false;
  f->driver = NULL;
  /* VMware: hosted sparse extent ("KDMV"), ESX sparse ("COWD"), and
   * the text descriptor that names flat or sparse extent files.
   */
  if (head_is (p, 0, "KDMV", 4) || head_is (p, 0, "COWD", 4))
    f->name = f->driver = "vmdk";
  else if (head_is (p, 0, "# Disk DescriptorFile", 21)) {
    f->name = f->driver = "vmdk";
    f->descriptor = true;
  }
  else if (head_is (p, 0, "vhdxfile", 8))
    f->name = f->driver = "vhdx";
  /* VirtualBox: a text banner, then the signature 0xbeda107f stored
   * little-endian at 0x40.
   */
  else if (head_is (p, 0, "<<< ", 4)
           && head_is (p, 0x40, "\x7f\x10\xda\xbe", 4))
    f->name = f->driver = "vdi";
  /* VHD: a dynamic disk starts with a copy of its footer; a fixed one
   * is raw data followed by the 512-byte footer, which qemu-img's
   * probe does not look for: the hint names the format.
   */
  else if (head_is (p, 0, "conectix", 8)
           || (p->tail_len == PROBE_TAIL
               && memcmp (p->tail, "conectix", 8) == 0)) {
    f->name = "VHD";
    f->driver = "vpc";
  }
  else if (head_is (p, 0, "QED\0", 4))
    f->name = f->driver = "qed";
  else if (head_is (p, 0, "LUKS\xba\xbe", 6))
    f->name = "LUKS";
  else
    return false;
  return true;
}

/* Read the start and the end of the file open on fd. */
static int
probe_read (int fd, struct probe *p)
{
  off_t end = lseek (fd, 0, SEEK_END);
  ssize_t r;

  if (end == -1)
    return -1;
  do
    r = pread (fd, p->head, sizeof p->head, 0);
  while (r == -1 && errno == EINTR);
  if (r == -1)
    return -1;
  p->head_len = (size_t) r;
  p->tail_len = 0;
  if (end >= (off_t) (2 * PROBE_TAIL)) {
    do
      r = pread (fd, p->tail, sizeof p->tail, end - PROBE_TAIL);
    while (r == -1 && errno == EINTR);
    if (r == -1)
      return -1;
    p->tail_len = (size_t) r;
  }
  return 0;
}

/* "disk.vmdk" -> "disk.qcow2", for the hint in a refusal. */
static char *
qcow2_name_for (const char *source)
{
  const char *base = strrchr (source, '/');
  const char *dot = strrchr (base ? base + 1 : source, '.');
  size_t stem = dot && dot != (base ? base + 1 : source)
    ? (size_t) (dot - source) : strlen (source);
  char *r;

  if (asprintf (&r, "%.*s.qcow2", (int) stem, source) == -1)
    return NULL;
  return r;
}

static void
refuse_foreign (const char *source, const struct foreign *f, bool is_stdin,
                bool is_file)
{
  const char *what = f->descriptor ? "descriptor" : "image";
  char *out;

  if (f->driver == NULL)
    cli_error ("%s: a %s encrypted volume, not raw data; pack the opened "
               "volume (cryptsetup open) or force with --source-format=raw",
               source, f->name);
  else if (is_stdin)
    cli_error ("%s: standard input holds a %s %s, not raw data; name the "
               "file and convert it first (qemu-img convert -f %s -O qcow2 "
               "FILE FILE.qcow2) or force with --source-format=raw", source,
               f->name, what, f->driver);
  else {
    /* A new name next to a file; a device gets a placeholder. */
    out = is_file ? qcow2_name_for (source) : NULL;
    cli_error ("%s: a %s %s, not raw data; pack what qemu-nbd reads from "
               "it (%s pack -- [ qemu-nbd -r -f %s %s ] %s) or force with "
               "--source-format=raw", source, f->name, what, cli_program,
               f->driver, source, out ? out : "IMAGE.qcow2");
    free (out);
  }
}

/* Decide what SOURCE is.  Files and block devices are probed; pipes
 * and character devices cannot be read twice and are raw data.
 * Returns SOURCE_RAW or SOURCE_QCOW2, or -1 after printing an error.
 * Errors opening or reading the source are left to the open that
 * follows, which reports them.
 */
static int
detect_source (const char *source, enum source_format forced)
{
  bool is_stdin = strcmp (source, "-") == 0;
  struct probe p;
  struct foreign f;
  struct stat st;
  int fd, r;

  if (forced == SOURCE_RAW)
    return SOURCE_RAW;
  /* stat first: opening a FIFO, even to look, would disturb its
   * writer.
   */
  if (is_stdin ? fstat (STDIN_FILENO, &st) == -1 : stat (source, &st) == -1)
    return forced == SOURCE_QCOW2 ? SOURCE_QCOW2 : SOURCE_RAW;
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode)) {
    if (forced == SOURCE_QCOW2) {
      cli_error ("%s: --source-format=qcow2 needs a file or a block device: "
                 "an image cannot be re-packed from a pipe", source);
      return -1;
    }
    return SOURCE_RAW;
  }

  if (is_stdin)
    fd = STDIN_FILENO;
  else {
    fd = open (source, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd == -1)
      return forced == SOURCE_QCOW2 ? SOURCE_QCOW2 : SOURCE_RAW;
  }
  r = probe_read (fd, &p);
  if (!is_stdin)
    close (fd);
  if (r == -1)
    return forced == SOURCE_QCOW2 ? SOURCE_QCOW2 : SOURCE_RAW;

  /* The reader needs a name (backing files are found next to it):
   * standard input is only looked at, with the magic the specification
   * gives, so that an image there is not packed as its bytes.
   */
  if (is_stdin) {
    if (head_is (&p, 0, "QFI\xfb", 4)) {
      cli_error ("%s: standard input holds a qcow2 image; name the file "
                 "to re-pack it, or force with --source-format=raw",
                 cli_image_name (source));
      return -1;
    }
  }
  else {
    r = sc_is_qcow2 (source);
    if (r == -1) {
      cli_lib_error (source);
      return -1;
    }
    if (r == 1)
      return SOURCE_QCOW2;
  }
  if (forced == SOURCE_QCOW2) {
    cli_error ("%s: not a qcow2 image (--source-format=qcow2)", source);
    return -1;
  }
  if (probe_foreign (&p, &f)) {
    refuse_foreign (source, &f, is_stdin, S_ISREG (st.st_mode));
    return -1;
  }
  return SOURCE_RAW;
}

/* An NBD source: what its first bytes say it is, as detect_source for
 * a file.  The export's guest view is what qemu-nbd or nbdkit serves,
 * so a qcow2 image there is one that a server serves as a file.
 */
static int
detect_nbd_source (struct sc_endpoint *src, const char *source,
                   enum source_format forced)
{
  struct probe p = { .head_len = 0, .tail_len = 0 };
  uint64_t size = sc_endpoint_size (src);
  struct foreign f;

  if (forced != SOURCE_AUTO)
    return forced;
  p.head_len = size < PROBE_HEAD ? (size_t) size : PROBE_HEAD;
  if (p.head_len > 0
      && sc_endpoint_pread (src, p.head, p.head_len, 0) == -1) {
    cli_lib_error (source);
    return -1;
  }
  if (head_is (&p, 0, "QFI\xfb", 4))
    return SOURCE_QCOW2;
  if (probe_foreign (&p, &f)) {
    cli_error ("%s: the export holds a %s image, not raw data; serve its "
               "guest data instead (qemu-nbd -f %s) or force with "
               "--source-format=raw", source, f.name,
               f.driver ? f.driver : "raw");
    return -1;
  }
  return SOURCE_RAW;
}

/* Is the target an existing block device (written in place)? */
static bool
is_device (const struct cli_operand *target)
{
  struct stat st;

  return !target->nbd && strcmp (target->name, "-") != 0
         && stat (target->name, &st) == 0 && S_ISBLK (st.st_mode);
}

/* Pack src into target, closing src; errors are printed.  The target
 * is opened before the source is read (its size is set once the image
 * is laid out) and committed only when everything is written.  Returns
 * 0 or -1.
 */
static int
pack_endpoint (struct sc_endpoint *src, const char *source,
               const struct cli_operand *target, unsigned target_flags,
               const struct sc_pack_opts *opts,
               const struct cli_common *common)
{
  struct sc_endpoint *dst = cli_open_target (target, common, target_flags);
  /* An export has no temporary name either. */
  bool in_place = (target_flags & SC_TARGET_IN_PLACE) || is_device (target)
                  || target->nbd;
  int r = -1;

  /* A signal then stops the run, which says what it leaves. */
  if (dst != NULL && in_place)
    cli_defer_signals ();
  if (dst != NULL) {
    r = sc_pack (src, dst, opts);
    cli_progress_done (common);
    if (r == -1 && sc_error_errno () == EMEDIUMTYPE)
      /* Only a stream gets here: a file was probed before. */
      cli_error ("%s; re-pack it from a file, or force with "
                 "--source-format=raw", sc_error_message ());
    else if (r == -1)
      cli_lib_error (NULL);
    if (r == -1) {
      /* Without its magic (written last), it is no image. */
      if (in_place && sc_endpoint_written (dst))
        cli_error ("%s: written in place, left partly written (not a "
                   "qcow2 image)", target->name);
    }
    else {
      /* The image is complete once committed (one written in place is,
       * its magic flushed, already): a signal from here on does not
       * stop the commits, nor then the run.  The commit of a target
       * written in place would only flush it again: its failure would
       * leave the complete image that the command says it is not.
       */
      cli_defer_signals ();
      if (!in_place && sc_endpoint_commit (dst) == -1) {
        cli_lib_error (NULL);
        r = -1;
      }
      /* The block map appears after the image it goes with. */
      else if (opts->bmap_out && sc_endpoint_commit (opts->bmap_out) == -1) {
        cli_lib_error (NULL);
        r = -1;
      }
      else
        cli_targets_complete (target->name);
    }
    /* Closing an uncommitted target removes it. */
    if (sc_endpoint_close (dst) == -1 && r == 0) {
      cli_lib_error (NULL);
      r = -1;
    }
  }
  if (sc_endpoint_close (src) == -1 && r == 0) {
    cli_lib_error (source);
    r = -1;
  }
  /* Complete or not, what was said is all; the signal ends it. */
  cli_exit_if_interrupted ();
  return r;
}

static int pack_main (struct sc_pack_opts *optsp,
                      const struct cli_common *commonp,
                      struct cli_operand *ops, const char *bmap_out,
                      enum source_format format,
                      enum sc_map_method map, bool map_set,
                      unsigned target_flags);

int
cmd_pack (int argc, char **argv)
{
  struct cli_common common = { 0 };
  struct sc_pack_opts opts;
  enum sc_map_method map = SC_MAP_SEEK;
  enum source_format format = SOURCE_AUTO;
  unsigned target_flags = 0;
  enum sc_codec ctype = SC_CODEC_NONE;  /* -o compression_type */
  struct spelled sp = { .refcount_bits = "" };
  bool level_set = false, map_set = false, codec_named = false;
  int digest = -1;                      /* --digest, --no-digest, unset */
  unsigned level = 0;
  struct cli_operand ops[2];
  const char *source, *target, *c_word = NULL;
  const char *bmap_map = NULL, *bmap_out = NULL;
  struct sc_bmap *bmap = NULL;
  int c, r;

  sc_pack_opts_init (&opts);
  cli_check_brackets ("pack", argc, argv);
  while ((c = cli_getopt (argc, argv, "fnc::S:o:O:", long_options, &common,
                          usage)) != -1) {
    switch (c) {
    case 'f':
      cli_refuse_format_as_force ("pack", argc, argv, "pack probes the "
                                  "source (--source-format=raw|qcow2 "
                                  "forces one)");
      target_flags |= SC_TARGET_FORCE;
      break;
    case OPT_TARGET_IS_DEVICE:
      target_flags |= SC_TARGET_DEVICE;
      break;
    case 'n':
      /* The image replaces the file's bytes, and its length too. */
      target_flags |= SC_TARGET_IN_PLACE | SC_TARGET_FIT;
      break;
    case OPT_TARGET_IS_ZERO:
      target_flags |= SC_TARGET_ZEROED;
      break;
    case 'c':
    case OPT_COMPRESS:
      if (optarg) {
        parse_codec (optarg, &opts);
        codec_named = true;
        spell (sp.codec, sizeof sp.codec, c == 'c' ? "-c" : "--compress",
               c == 'c' ? " " : "=", optarg);
      }
      /* "-c zstd": take the next word when it names a codec. */
      else if (c == 'c' && optind < argc && is_codec_word (argv[optind])) {
        spell (sp.codec, sizeof sp.codec, "-c", " ", argv[optind]);
        parse_codec (argv[optind++], &opts);
        codec_named = true;
      }
      else {
        spell (sp.codec, sizeof sp.codec, c == 'c' ? "-c" : "--compress",
               "", "");
        opts.codec = SC_CODEC_DEFLATE;
        /* "-c lz4 SOURCE TARGET" meant a codec, not three operands. */
        if (c == 'c' && optind < argc && argv[optind][0] != '-')
          c_word = argv[optind];
      }
      break;
    case OPT_LEVEL:
      if (cli_parse_uint (optarg, 1, MAX_ZSTD_LEVEL, &level) == -1)
        cli_usage_error ("pack", "--level: expected a number from 1 to %d, "
                         "not '%s'", MAX_ZSTD_LEVEL, optarg);
      level_set = true;
      break;
    case OPT_COMPAT:
      parse_compat ("--compat", optarg, &opts, &sp);
      break;
    case OPT_CLUSTER_SIZE:
      parse_cluster_size ("--cluster-size", optarg, &opts);
      break;
    case OPT_REFCOUNT_BITS:
      parse_refcount_bits ("--refcount-bits", optarg, &opts, &sp);
      break;
    case 'o':
      parse_o (optarg, &opts, &ctype, &sp);
      break;
    case 'O':
      /* qemu-img convert -O: the one output format there is. */
      if (strcmp (optarg, "qcow2") != 0)
        cli_usage_error ("pack", "-O: only qcow2 is written, not '%s'%s",
                         optarg, strcmp (optarg, "raw") == 0
                         ? " (unpack writes raw data)" : "");
      break;
    case OPT_MAP:
      if (strcmp (optarg, "seek") == 0)
        map = SC_MAP_SEEK;
      else if (strcmp (optarg, "fiemap") == 0)
        map = SC_MAP_FIEMAP;
      else if (strcmp (optarg, "none") == 0)
        map = SC_MAP_NONE;
      else if (strncmp (optarg, "bmap:", 5) == 0 && optarg[5] != '\0') {
        /* Any source: the bmap's ImageSize must be its size. */
        bmap_map = optarg + 5;
        break;
      }
      else
        cli_usage_error ("pack", "--map: expected seek, fiemap, none or "
                         "bmap:FILE.bmap, not '%s'", optarg);
      map_set = true;
      break;
    case OPT_BMAP_OUT:
      bmap_out = optarg;
      break;
    case OPT_SOURCE_FORMAT:
      if (strcmp (optarg, "raw") == 0)
        format = SOURCE_RAW;
      else if (strcmp (optarg, "qcow2") == 0)
        format = SOURCE_QCOW2;
      else
        cli_usage_error ("pack", "--source-format: expected raw or qcow2, "
                         "not '%s'", optarg);
      break;
    case OPT_DIGEST:
    case OPT_NO_DIGEST:
      digest = c == OPT_DIGEST;
      break;
    case 'S':
      opts.min_sparse = cli_parse_min_sparse ("pack", optarg);
      opts.allocate_all = opts.min_sparse == 0;
      break;
    default:
      cli_usage_error ("pack", "unknown option");
    }
  }
  /* getopt moves operands behind the options, keeping their order. */
  if (c_word && argc - optind == 3 && argv[optind] == c_word)
    cli_usage_error ("pack", "-c: unknown codec '%s' (known: deflate, "
                     "zstd)", c_word);
  cli_operands ("pack", argc, argv, optind, ops, 2, "SOURCE and TARGET");
  source = ops[0].name;
  target = ops[1].name;
  /* As qemu-img convert: only a target that exists and is written where
   * it is can read as zero already, and a stream is never one.
   */
  if ((target_flags & SC_TARGET_IN_PLACE) && strcmp (target, "-") == 0)
    cli_usage_error ("pack", "-n writes into an existing file or block "
                     "device, not %s", target);
  if ((target_flags & SC_TARGET_ZEROED)
      && !(target_flags & SC_TARGET_IN_PLACE))
    cli_usage_error ("pack", "--target-is-zero needs -n: only a target "
                     "written in place can read as zero already");
  if (!ops[1].nbd && cli_target_is_source (&ops[0], target))
    return EXIT_ERROR;
  cli_check_progress ("pack", &common, strcmp (target, "-") == 0
                      || (bmap_out && strcmp (bmap_out, "-") == 0),
                      strcmp (source, "-") == 0);
  cli_check_progress_image ("pack", &common, source);
  cli_check_progress_not ("pack", &common, target);
  if (bmap_out)
    cli_check_progress_not ("pack", &common, bmap_out);
  if (bmap_map)
    cli_check_progress_image ("pack", &common, bmap_map);
  if (strcmp (target, "-") == 0) {
    if (isatty (STDOUT_FILENO)) {
      cli_error ("pack: refusing to write an image to a terminal");
      return EXIT_ERROR;
    }
  }

  /* As qemu-img convert -c -o compression_type=...: the type is the
   * codec of -c.  Without -c, as there too, the image records the type
   * and no cluster is compressed.
   */
  if (ctype != SC_CODEC_NONE) {
    if (codec_named && opts.codec != ctype)
      cli_usage_error ("pack", "%s and %s disagree", sp.ctype, sp.codec);
    if (opts.codec == SC_CODEC_NONE)
      opts.compression_type = ctype;
    else
      opts.codec = ctype;
  }
  /* The combinations a version 2 header cannot hold, named as typed. */
  if (opts.version == 2 && opts.refcount_bits != 16)
    cli_usage_error ("pack", "%s: version 2 images have 16-bit refcounts "
                     "only, not %s", sp.compat, sp.refcount_bits);
  if (opts.version == 2 && (opts.codec == SC_CODEC_ZSTD
                            || opts.compression_type == SC_CODEC_ZSTD))
    cli_usage_error ("pack", "%s: zstd compression (%s) needs compat=1.1",
                     sp.compat, sp.ctype[0] ? sp.ctype : sp.codec);
  if (opts.version == 2 && digest == 1)
    cli_usage_error ("pack", "%s: --digest needs compat=1.1: version 2 "
                     "images have no autoclear bits to tell a stale one",
                     sp.compat);
  /* Hashing costs a few percent of a compressed pack, but as much
   * again as an uncompressed one, which copies data inside the kernel
   * without reading it (bench/verify-bench.sh).
   */
  opts.digest = digest == -1 ? opts.codec != SC_CODEC_NONE : digest == 1;
  if (level_set) {
    if (opts.codec == SC_CODEC_NONE)
      cli_usage_error ("pack", "--level needs -c");
    if (opts.codec == SC_CODEC_DEFLATE && level > MAX_DEFLATE_LEVEL)
      cli_usage_error ("pack", "--level: deflate levels are 1 to %d",
                       MAX_DEFLATE_LEVEL);
    opts.level = (int) level;
  }
  opts.threads = common.threads;
  /* The bmap maps what bmaptool create would, and the same blocks every
   * time: preallocated blocks are data to FIEMAP always, to SEEK_DATA
   * only once they are in the page cache.
   */
  if (bmap_out && !map_set && !bmap_map)
    map = SC_MAP_ALLOCATED;
  if (bmap_out) {
    struct cli_operand bop = { .name = bmap_out };

    if (strcmp (bmap_out, "-") == 0 && (strcmp (target, "-") == 0
                                        || common.progress_json))
      cli_usage_error ("pack", "--bmap-out -: standard output is taken");
    cli_check_bmap_output ("pack", "--bmap-out", bmap_out);
    /* By what they are: "--bmap-out /dev/stdout" with TARGET "-" (or
     * the other way round) is one pipe, which would carry both.
     */
    if (strcmp (bmap_out, target) == 0
        || (strcmp (bmap_out, "-") == 0 ? cli_same_file (target, bmap_out)
                                        : cli_same_file (bmap_out, target)))
      cli_usage_error ("pack", "--bmap-out and TARGET are one file");
    if (bmap_map && cli_same_file (bmap_map, bmap_out))
      cli_usage_error ("pack", "--map=bmap: and --bmap-out are one file");
    if (cli_target_is_source (&ops[0], bmap_out))
      return EXIT_ERROR;
    cli_install_signal_handlers ();
    /* Written by sc_pack, committed after the image. */
    opts.bmap_out = cli_open_target (&bop, &common,
                                     target_flags & SC_TARGET_FORCE);
    if (opts.bmap_out == NULL)
      return EXIT_ERROR;
  }
  /* With -f, the target would replace the bmap it is read through. */
  if (bmap_map && cli_same_file (bmap_map, target))
    cli_usage_error ("pack", "--map=bmap: and TARGET are one file");
  if (bmap_map) {
    bmap = sc_bmap_load (bmap_map);
    if (bmap == NULL) {
      cli_lib_error (NULL);
      sc_endpoint_close (opts.bmap_out);
      return EXIT_ERROR;
    }
    opts.bmap = bmap;
  }
  r = pack_main (&opts, &common, ops, bmap_out, format, map, map_set,
                 target_flags);
  sc_bmap_free (bmap);
  /* Removed unless committed. */
  if (sc_endpoint_close (opts.bmap_out) == -1 && r == EXIT_OK) {
    cli_lib_error (NULL);
    r = EXIT_ERROR;
  }
  return r;
}

/* The rest of cmd_pack, with the options parsed and checked. */
static int
pack_main (struct sc_pack_opts *optsp, const struct cli_common *commonp,
           struct cli_operand *ops, const char *bmap_out,
           enum source_format format,
           enum sc_map_method map, bool map_set, unsigned target_flags)
{
  struct sc_pack_opts opts = *optsp;
  struct cli_common common = *commonp;
  const char *source = ops[0].name;
  struct sc_endpoint *src, *nbd_src = NULL;
  int r;

  cli_install_signal_handlers ();
  /* Unless told it is raw data, a pipe that turns out to carry a qcow2
   * image is refused when its first bytes arrive.
   */
  opts.refuse_images = format != SOURCE_RAW;
  if (ops[0].nbd) {
    if (map_set)
      cli_usage_error ("pack", "--map applies to local files; an NBD "
                       "source's data is found with block status");
    nbd_src = cli_open_source (&ops[0], &common, map);
    if (nbd_src == NULL)
      return EXIT_ERROR;
    /* A server on this host may have the target open: the file it
     * serves, or a backing file of the image it serves.
     */
    if (cli_target_is_served (nbd_src, source, ops[1].name)
        || (bmap_out && cli_target_is_served (nbd_src, source, bmap_out))) {
      sc_endpoint_close (nbd_src);
      return EXIT_ERROR;
    }
    r = detect_nbd_source (nbd_src, source, format);
  }
  else
    r = detect_source (source, format);
  if (r == -1) {
    sc_endpoint_close (nbd_src);
    return EXIT_ERROR;
  }
  format = (enum source_format) r;

  if (format == SOURCE_QCOW2) {
    struct sc_qcow2 *q;

    /* The reader finds the data in the L1/L2 tables, not in the file's
     * extent map.
     */
    if (map_set)
      cli_usage_error ("pack", "--map applies to raw sources, and %s is "
                       "a qcow2 image", source);
    /* The guest's own bytes may be anything, an image too. */
    opts.refuse_images = false;
    struct sc_qcow2_open_opts qopts = { .force_share = common.force_share };

    q = nbd_src ? sc_qcow2_open_endpoint (nbd_src, &qopts)
                : sc_qcow2_open (source, &qopts);
    if (q == NULL) {
      cli_lib_error (source);
      sc_endpoint_close (nbd_src);
      return EXIT_ERROR;
    }
    src = sc_qcow2_endpoint (q);
    if (src == NULL) {
      cli_lib_error (source);
      sc_qcow2_close (q);
      sc_endpoint_close (nbd_src);
      return EXIT_ERROR;
    }
    if (!common.quiet)
      fprintf (stderr, "%s: %s: qcow2 image; packing its guest content\n",
               cli_program, source);
    opts.progress = cli_progress_fn (&common, &opts.progress_opaque);
    r = pack_endpoint (src, source, &ops[1], target_flags, &opts, &common);
    sc_qcow2_close (q);
    if (sc_endpoint_close (nbd_src) == -1 && r == 0) {
      cli_lib_error (source);
      r = -1;
    }
    return r == 0 ? EXIT_OK : EXIT_ERROR;
  }

  /* As qemu-img convert: raw data that another process (qemu-nbd, a
   * VM) is writing is read only with -U; a copy of a disk that changes
   * under the read would be of no moment in time.
   */
  if (!nbd_src && !common.force_share && strcmp (ops[0].name, "-") != 0
      && sc_image_lock_test (ops[0].name) == -1) {
    cli_lib_error (source);
    return EXIT_ERROR;
  }
  src = nbd_src ? nbd_src : cli_open_source (&ops[0], &common, map);
  if (src == NULL)
    return EXIT_ERROR;
  opts.progress = cli_progress_fn (&common, &opts.progress_opaque);
  r = pack_endpoint (src, source, &ops[1], target_flags, &opts, &common);
  return r == 0 ? EXIT_OK : EXIT_ERROR;
}
