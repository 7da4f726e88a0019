/* sparsecow pack: sparse raw data -> qcow2. */
#include <config.h>

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

#define MAX_DEFLATE_LEVEL 9
#define MAX_ZSTD_LEVEL 22

static void
usage (FILE *fp)
{
  fprintf (fp,
"Usage: %s pack [OPTIONS] SOURCE TARGET.qcow2\n"
"Pack a sparse raw file, block device or pipe ('-' for stdin) into a new\n"
"qcow2 image, storing only the clusters that hold data.  TARGET '-' writes\n"
"the image to stdout.\n"
"\n"
"  -f, --force              replace an existing TARGET\n"
"  -c, --compress[=CODEC]   compress clusters: deflate (default) or zstd\n"
"                           ('-c zstd' works too)\n"
"      --level N            compression level (deflate 1-9, zstd 1-22)\n"
"      --compat=0.10|1.1    qcow2 version 2 or 3 (default 1.1)\n"
"      --cluster-size SIZE  512 bytes to 2M, a power of two (default 64K)\n"
"      --refcount-bits N    1, 2, 4, 8, 16, 32 or 64 (default 16; 0.10: 16)\n"
"      --map=seek|fiemap|none\n"
"                           how to find the source's data (default seek)\n"
"  -S SIZE                  skip all-zero clusters (default); -S 0 stores\n"
"                           them\n"
"  -p, --progress[=json]    show progress (a bar, or JSON lines on stdout)\n"
"  -j, --threads N          worker threads (default: online CPUs)\n"
"  -q, --quiet              print nothing but errors\n"
"  -h, --help               show this help\n",
           cli_program);
}

static const struct option long_options[] = {
  { "force", no_argument, NULL, 'f' },
  { "compress", optional_argument, NULL, OPT_COMPRESS },
  { "level", required_argument, NULL, OPT_LEVEL },
  { "compat", required_argument, NULL, OPT_COMPAT },
  { "cluster-size", required_argument, NULL, OPT_CLUSTER_SIZE },
  { "refcount-bits", required_argument, NULL, OPT_REFCOUNT_BITS },
  { "map", required_argument, NULL, OPT_MAP },
  CLI_COMMON_LONG_OPTIONS,
  { NULL, 0, NULL, 0 },
};

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
  else
    cli_usage_error ("pack", "--compress: expected deflate or zstd, "
                     "not '%s'", s);
}

int
cmd_pack (int argc, char **argv)
{
  struct cli_common common = { 0 };
  struct sc_pack_opts opts;
  enum sc_map_method map = SC_MAP_SEEK;
  bool level_set = false;
  unsigned level = 0;
  struct sc_endpoint *src;
  const char *source, *target;
  int c, r;

  sc_pack_opts_init (&opts);
  while ((c = getopt_long (argc, argv, "fc::S:" CLI_COMMON_SHORT_OPTIONS,
                           long_options, NULL)) != -1) {
    if (cli_common_option (c, optarg, &common, usage))
      continue;
    switch (c) {
    case 'f':
      opts.target_flags |= SC_TARGET_FORCE;
      break;
    case 'c':
    case OPT_COMPRESS:
      if (optarg)
        parse_codec (optarg, &opts);
      /* "-c zstd": take the next word when it names a codec. */
      else if (c == 'c' && optind < argc && is_codec_word (argv[optind]))
        parse_codec (argv[optind++], &opts);
      else
        opts.codec = SC_CODEC_DEFLATE;
      break;
    case OPT_LEVEL:
      if (cli_parse_uint (optarg, 1, MAX_ZSTD_LEVEL, &level) == -1)
        cli_usage_error ("pack", "--level: expected a number from 1 to %d, "
                         "not '%s'", MAX_ZSTD_LEVEL, optarg);
      level_set = true;
      break;
    case OPT_COMPAT:
      if (strcmp (optarg, "0.10") == 0 || strcmp (optarg, "v2") == 0)
        opts.version = 2;
      else if (strcmp (optarg, "1.1") == 0 || strcmp (optarg, "v3") == 0)
        opts.version = 3;
      else
        cli_usage_error ("pack", "--compat: expected 0.10 or 1.1, not '%s'",
                         optarg);
      break;
    case OPT_CLUSTER_SIZE: {
      uint64_t cs;
      if (cli_parse_size (optarg, &cs) == -1 || cs < 512
          || cs > 2 * 1024 * 1024 || (cs & (cs - 1)) != 0)
        cli_usage_error ("pack", "--cluster-size: expected a power of two "
                         "from 512 to 2M, not '%s'", optarg);
      opts.cluster_size = (uint32_t) cs;
      break;
    }
    case OPT_REFCOUNT_BITS: {
      unsigned bits;
      if (cli_parse_uint (optarg, 1, 64, &bits) == -1
          || (bits & (bits - 1)) != 0)
        cli_usage_error ("pack", "--refcount-bits: expected 1, 2, 4, 8, 16, "
                         "32 or 64, not '%s'", optarg);
      opts.refcount_bits = bits;
      break;
    }
    case OPT_MAP:
      if (strcmp (optarg, "seek") == 0)
        map = SC_MAP_SEEK;
      else if (strcmp (optarg, "fiemap") == 0)
        map = SC_MAP_FIEMAP;
      else if (strcmp (optarg, "none") == 0)
        map = SC_MAP_NONE;
      else
        cli_usage_error ("pack", "--map: expected seek, fiemap or none, "
                         "not '%s'", optarg);
      break;
    case 'S': {
      uint64_t s;
      if (cli_parse_size (optarg, &s) == -1)
        cli_usage_error ("pack", "-S: expected a size, not '%s'", optarg);
      /* Zero detection works on whole clusters whatever the size. */
      opts.detect_zeroes = s != 0;
      break;
    }
    default:
      cli_usage_error ("pack", "unknown option");
    }
  }
  if (argc - optind != 2)
    cli_usage_error ("pack", "expected SOURCE and TARGET");
  source = argv[optind];
  target = argv[optind + 1];

  if (opts.version == 2 && opts.refcount_bits != 16)
    cli_usage_error ("pack", "--compat=0.10 supports only 16-bit refcounts");
  if (opts.version == 2 && opts.codec == SC_CODEC_ZSTD)
    cli_usage_error ("pack", "zstd compression needs --compat=1.1");
  if (level_set) {
    if (opts.codec == SC_CODEC_NONE)
      cli_usage_error ("pack", "--level needs -c");
    if (opts.codec == SC_CODEC_DEFLATE && level > MAX_DEFLATE_LEVEL)
      cli_usage_error ("pack", "--level: deflate levels are 1 to %d",
                       MAX_DEFLATE_LEVEL);
    opts.level = (int) level;
  }
  opts.threads = common.threads;
  opts.progress = cli_progress_fn (&common, &opts.progress_opaque);

  cli_install_signal_handlers ();
  src = sc_endpoint_open_source (source, map);
  if (src == NULL) {
    cli_lib_error (source);
    return EXIT_ERROR;
  }
  r = sc_pack (src, target, &opts);
  cli_progress_done (&common);
  if (r == -1)
    cli_lib_error (NULL);
  if (sc_endpoint_close (src) == -1 && r == 0) {
    cli_lib_error (source);
    r = -1;
  }
  return r == 0 ? EXIT_OK : EXIT_ERROR;
}
