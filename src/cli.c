/* Helpers shared by the commands: errors, options, JSON, progress. */
#include <config.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#ifdef HAVE_LINUX_LOOP_H
#include <linux/loop.h>
#include <linux/major.h>
#endif

#include "cli.h"

const char *cli_program = "sparsecow";
int cli_usage_status = EXIT_USAGE;
const char *cli_command;
bool cli_std_closed[3];
char cli_option_typed[64];
/* The word after an option with an optional value given without one
 * ("--compress zstd"): it is an operand, which may not be what the
 * user meant.
 */
static const char *optional_value_word;
static char optional_value_option[64];

void
cli_lib_error (const char *object)
{
  const char *msg = sc_error_message ();

  if (msg[0] == '\0')
    msg = strerror (sc_error_errno () ? sc_error_errno () : EIO);
  /* The library names the file a read failed in, which is often the
   * object itself (an L2 table of the image read through an export):
   * the name is said once, by the same rule as the library's.
   */
  if (object && strncmp (msg, object, strlen (object)) == 0
      && (msg[strlen (object)] == ':' || msg[strlen (object)] == ' '))
    object = NULL;
  if (object)
    fprintf (stderr, "%s: %s: %s\n", cli_program, object, msg);
  else
    fprintf (stderr, "%s: %s\n", cli_program, msg);
}

const char *
cli_image_name (const char *operand)
{
  return strcmp (operand, "-") == 0 ? "stdin" : operand;
}

const char *
cli_image_path (const char *operand)
{
  return strcmp (operand, "-") == 0 ? "/dev/stdin" : operand;
}

void
cli_error (const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "%s: ", cli_program);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
}

void
cli_usage_error (const char *command, const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "%s: ", cli_program);
  if (command)
    fprintf (stderr, "%s: ", command);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  if (command)
    fprintf (stderr, "\nTry '%s %s --help' for more information.\n",
             cli_program, command);
  else
    fprintf (stderr, "\nTry '%s --help' for more information.\n",
             cli_program);
  exit (cli_usage_status);
}

bool
cli_parse_output (const char *command, const char *arg)
{
  if (strcmp (arg, "json") == 0)
    return true;
  if (strcmp (arg, "human") != 0)
    cli_usage_error (command, "--output: expected 'json' or 'human', "
                     "not '%s'", arg);
  return false;
}

int
cli_parse_uint (const char *s, unsigned min, unsigned max, unsigned *out)
{
  char *end;
  unsigned long v;

  errno = 0;
  if (s[0] == '-' || s[0] == '\0')
    return -1;
  v = strtoul (s, &end, 10);
  if (errno || *end != '\0' || v < min || v > max)
    return -1;
  *out = (unsigned) v;
  return 0;
}

int
cli_parse_size (const char *s, uint64_t *out)
{
  char *end;
  unsigned long long v;
  unsigned shift = 0;

  errno = 0;
  if (s[0] == '-' || s[0] == '\0')
    return -1;
  v = strtoull (s, &end, 10);
  if (errno || end == s)
    return -1;
  switch (*end) {
  case '\0': break;
  case 'b': case 'B': end++; break;
  case 'k': case 'K': shift = 10; end++; break;
  case 'm': case 'M': shift = 20; end++; break;
  case 'g': case 'G': shift = 30; end++; break;
  case 't': case 'T': shift = 40; end++; break;
  default: return -1;
  }
  if (*end != '\0' || (shift && v > (UINT64_MAX >> shift)))
    return -1;
  *out = (uint64_t) v << shift;
  return 0;
}

/* A size as qemu's size parser (qemu-img convert -S) reads it, so that
 * the same -S means the same in both: a decimal number with an
 * optional fraction ("1.5k", "1.k"), or a hexadecimal one ("0x1000")
 * without one, then an optional suffix B, K, M, G, T, P or E (powers of
 * 1024, either case).  A fraction needs a suffix other than B unless it
 * is zero; no exponent, no minus sign, nothing after the suffix.  A
 * fraction is scaled exactly in 64.64 fixed point and rounded half up,
 * as qemu does, so 3.9999999k is 4096.  -1 on anything else or above
 * INT64_MAX.
 */
static int
parse_qemu_size (const char *s, uint64_t *out)
{
  static const char suffixes[] = "BKMGTPE";
  const char *suffix;
  char *end;
  unsigned long long v;
  uint64_t frac = 0, mul = 1;
  unsigned __int128 r;

  errno = 0;
  v = strtoull (s, &end, 10);
  if (errno || end == s || memchr (s, '-', (size_t) (end - s)) != NULL)
    return -1;
  if (v == 0 && (*end == 'x' || *end == 'X')) {
    const char *digits = end + 1;

    errno = 0;
    v = strtoull (s, &end, 16);
    if (errno || end <= digits || *end == '.')
      return -1;
  }
  else if (*end == '.') {
    const char *dot = end;
    double f;

    errno = 0;
    f = strtod (dot, &end);
    if (errno || end == dot || !(f >= 0 && f < 2))
      end = (char *) dot + 1;           /* "1.k": no fractional digits */
    else if (memchr (dot, 'e', (size_t) (end - dot)) != NULL
             || memchr (dot, 'E', (size_t) (end - dot)) != NULL)
      return -1;
    else if (f >= 1)
      /* A fraction that rounds to 1 (twenty nines) is worth nothing in
       * qemu-img on x86-64: 0.99999999999999999999k is 0 there too.
       */
      frac = 0;
    else
      frac = (uint64_t) (f * 0x1p64);
  }
  if (*end != '\0'
      && (suffix = strchr (suffixes, toupper ((unsigned char) *end))) != NULL) {
    for (const char *k = suffixes + 1; k <= suffix; k++)
      mul *= 1024;
    end++;
  }
  if (*end != '\0' || (mul == 1 && frac != 0))
    return -1;
  r = (unsigned __int128) frac * mul;
  r = (r >> 64) + ((r >> 63) & 1) + (unsigned __int128) v * mul;
  if (r > INT64_MAX)
    return -1;
  *out = (uint64_t) r;
  return 0;
}

/* qemu-img convert's bounds for -S: whole sectors, at most its largest
 * buffer.
 */
#define MIN_SPARSE_UNIT 512
#define MAX_MIN_SPARSE (16 * 1024 * 1024)

uint64_t
cli_parse_min_sparse (const char *command, const char *arg)
{
  uint64_t v;

  if (parse_qemu_size (arg, &v) == -1 || v % MIN_SPARSE_UNIT != 0
      || v > MAX_MIN_SPARSE)
    cli_usage_error (command, "-S: expected a multiple of 512 bytes up to "
                     "16M, not '%s'", arg);
  return v;
}

int
cli_common_option (int c, const char *arg, struct cli_common *common,
                   void (*usage) (FILE *))
{
  switch (c) {
  case 'p':
    common->progress = true;
    return 1;
  case OPT_PROGRESS: {
    /* nbdcopy's spelling of a descriptor: fd:N. */
    const char *fd = NULL;
    unsigned n;

    if (arg == NULL || strcmp (arg, "bar") == 0)
      common->progress = true;
    else if (strcmp (arg, "json") == 0)
      common->progress_json = true;
    else if (strncmp (arg, "fd:", 3) == 0)
      fd = arg + 3;
    else if (strncmp (arg, "json:fd:", 8) == 0)
      fd = arg + 8;
    /* nbdcopy's --progress=N: its own "P/100" lines on descriptor N. */
    else if (arg[0] >= '0' && arg[0] <= '9') {
      fd = arg;
      common->progress_nbdcopy = true;
    }
    else
      cli_usage_error (cli_command, "%s: expected bar, json, fd:N, "
                       "json:fd:N or N, not '%s'", cli_option_typed, arg);
    if (fd) {
      if (cli_parse_uint (fd, 0, INT_MAX, &n) == -1)
        cli_usage_error (cli_command, "%s=%s: expected a file "
                         "descriptor number%s, not '%s'", cli_option_typed,
                         arg, fd == arg ? "" : " after 'fd:'", fd);
      /* Progress is written: never to the input, even one that a
       * terminal opened for reading and writing.
       */
      if (n == STDIN_FILENO)
        cli_usage_error (cli_command, "%s=%s: descriptor 0 is "
                         "standard input; give one open for writing (2 is "
                         "standard error, the default)", cli_option_typed,
                         arg);
      common->progress_json = true;
      common->progress_fd = (int) n;
    }
    common->progress_arg = arg;
    return 1;
  }
  case 'j':
  case 'm':                     /* qemu-img convert's spelling */
    if (cli_parse_uint (arg, 1, 1024, &common->threads) == -1)
      cli_usage_error (cli_command, "%s: expected a number of threads from 1 "
                       "to 1024, not '%s'", cli_option_typed, arg);
    return 1;
  case 'q':
    common->quiet = true;
    return 1;
  case 'U':
    common->force_share = true;
    return 1;
  case 'h':
    usage (stdout);
    exit (EXIT_OK);
  case 'V':
    printf ("%s %s\n", PACKAGE_NAME, PACKAGE_VERSION);
    exit (EXIT_OK);
  case 'C':
    if (cli_parse_uint (arg, 1, 16, &common->nbd.connections) == -1)
      cli_usage_error (cli_command, "%s: expected a number of NBD "
                       "connections from 1 to 16, not '%s'", cli_option_typed,
                       arg);
    return 1;
  case OPT_REQUESTS:
    if (cli_parse_uint (arg, 1, 64, &common->nbd.requests) == -1)
      cli_usage_error (cli_command, "%s: expected a number of NBD "
                       "requests in flight from 1 to 64, not '%s'",
                       cli_option_typed, arg);
    return 1;
  case OPT_TIMEOUT:
    if (cli_parse_uint (arg, 0, 86400, &common->nbd.timeout) == -1)
      cli_usage_error (cli_command, "%s: expected seconds from 0 (none) "
                       "to 86400, not '%s'", cli_option_typed, arg);
    return 1;
  }
  return 0;
}

/* The common options, merged into a command's table by cli_getopt. */
static const struct option common_long_options[] = {
  CLI_COMMON_LONG_OPTIONS,
};
#define NB_COMMON_LONG \
  (sizeof common_long_options / sizeof common_long_options[0])
/* No command has more than this many long options of its own. */
#define MAX_LONG_OPTIONS 64

/* How the user spelled the option getopt just complained about. */
static void
option_spelling (char **argv, char *buf, size_t len)
{
  const char *word = optind > 0 ? argv[optind - 1] : "";

  if (strncmp (word, "--", 2) == 0)
    snprintf (buf, len, "%.*s", (int) strcspn (word, "="), word);
  else if (optopt > 0 && optopt < 0x100)
    snprintf (buf, len, "-%c", optopt);
  else
    snprintf (buf, len, "%s", word);
}

/* getopt has read "-X=VALUE" as -X, then an unknown option '=': a
 * value given to a short option that takes none, as "--progress=json"
 * takes one.  Say so, with the long spelling where there is one.
 */
void
cli_refuse_short_value (int argc, char **argv)
{
  /* The word is the current one, or the last if getopt left it. */
  for (int i = optind; i >= optind - 1 && i > 0; i--) {
    const char *w = i < argc ? argv[i] : NULL;
    const char *eq = w ? strchr (w, '=') : NULL;

    if (w == NULL || w[0] != '-' || w[1] == '-' || eq == NULL || eq < w + 2)
      continue;
    cli_usage_error (cli_command, "-%c takes no value (in '%s')%s",
                     eq[-1], w, eq[-1] == 'p'
                     ? "; for progress as JSON lines, use --progress=json"
                     : "");
  }
}

/* Set cli_option_typed to the option getopt_long just returned (c, or
 * the long option at index), as the user spelled it: "--thr" for
 * "--thr=2", "-j" for "-j2".
 */
static void
record_spelling (int argc, char **argv, int c, const struct option *longopt)
{
  const char *word;

  if (longopt == NULL) {
    snprintf (cli_option_typed, sizeof cli_option_typed, "-%c", c);
    return;
  }
  /* "--threads 2": the value is the last word read, the option the one
   * before it.
   */
  if (longopt->has_arg == required_argument && optarg != NULL
      && optind >= 2 && optind - 1 < argc && optarg == argv[optind - 1])
    word = argv[optind - 2];
  else
    word = optind >= 1 ? argv[optind - 1] : "";
  snprintf (cli_option_typed, sizeof cli_option_typed, "%.*s",
            (int) strcspn (word, "="), word);
}

int
cli_getopt (int argc, char **argv, const char *shortopts,
            const struct option *longopts, struct cli_common *common,
            void (*usage) (FILE *))
{
  static struct option merged[MAX_LONG_OPTIONS + NB_COMMON_LONG + 1];
  static const struct option *merged_from;
  /* -h and -V act once the whole command line is read, so that
   * "-Vx" and "-V=1" are refused as "-q=1" is, not taken for -V.
   */
  static bool help, version;
  char spelling[64], shorts[128];
  int c, index;

  /* Once per command: its own long options, then the common ones that
   * it does not define itself.
   */
  if (merged_from != longopts) {
    size_t n = 0;

    for (const struct option *o = longopts; o && o->name; o++)
      if (n < MAX_LONG_OPTIONS)
        merged[n++] = *o;
    for (size_t i = 0; i < NB_COMMON_LONG; i++) {
      bool dup = false;
      for (size_t k = 0; k < n; k++)
        dup |= strcmp (merged[k].name, common_long_options[i].name) == 0;
      if (!dup)
        merged[n++] = common_long_options[i];
    }
    memset (&merged[n], 0, sizeof merged[n]);
    merged_from = longopts;
    /* 0, not 1: getopt starts afresh (main's getopt stopped at the
     * command), permuting operands behind options again.
     */
    optind = 0;
  }
  /* ':' first: a missing argument is told apart from an unknown
   * option, and getopt prints nothing itself.
   */
  snprintf (shorts, sizeof shorts, ":%s%s", shortopts, CLI_COMMON_SHORT_OPTIONS);
  opterr = 0;
  for (;;) {
    index = -1;
    c = getopt_long (argc, argv, shorts, merged, &index);
    if (c == -1) {
      if (help) {
        usage (stdout);
        exit (EXIT_OK);
      }
      if (version) {
        printf ("%s %s\n", PACKAGE_NAME, PACKAGE_VERSION);
        exit (EXIT_OK);
      }
      return -1;
    }
    if (c == ':') {
      option_spelling (argv, spelling, sizeof spelling);
      cli_usage_error (cli_command, "option '%s' needs a value", spelling);
    }
    if (c == '?' && optopt == '=')
      cli_refuse_short_value (argc, argv);
    if (c == '?' && optopt != 0 && optind > 0 && optind - 1 < argc
        && strncmp (argv[optind - 1], "--", 2) == 0
        && strchr (argv[optind - 1], '=') != NULL) {
      /* glibc names the option it found in optopt: "--quiet=1". */
      option_spelling (argv, spelling, sizeof spelling);
      cli_usage_error (cli_command, "option '%s' takes no value", spelling);
    }
    if (c == '?') {
      option_spelling (argv, spelling, sizeof spelling);
      cli_usage_error (cli_command, "unknown option '%s'", spelling);
    }
    record_spelling (argc, argv, c, index >= 0 ? &merged[index] : NULL);
    /* "--compress zstd": remember "zstd", for the message should the
     * operands not add up.
     */
    if (optarg == NULL && optind < argc && argv[optind][0] != '-'
        && (index >= 0 ? merged[index].has_arg == optional_argument
                       : strstr (shorts, (char []) { (char) c, ':', ':', 0 })
                         != NULL)) {
      optional_value_word = argv[optind];
      snprintf (optional_value_option, sizeof optional_value_option, "%s",
                cli_option_typed);
    }
    if (c == 'h')
      help = true;
    else if (c == 'V')
      version = true;
    else if (!cli_common_option (c, optarg, common, usage))
      return c;
  }
}

int
cli_parse_image_format (const char *command, const char *arg, bool raw_ok)
{
  if (strcmp (arg, "qcow2") == 0)
    return CLI_FORMAT_QCOW2;
  if (raw_ok && strcmp (arg, "raw") == 0)
    return CLI_FORMAT_RAW;
  cli_usage_error (command, "-f %s: %s reads qcow2 images%s; for another "
                   "format, serve it with qemu-nbd -f %s and give the NBD "
                   "URI", arg, command, raw_ok ? " and raw files" : "", arg);
}

int
cli_endpoint_is_qcow2 (struct sc_endpoint *ep)
{
  unsigned char magic[4];

  if (sc_endpoint_size (ep) < sizeof magic)
    return 0;
  if (sc_endpoint_pread (ep, magic, sizeof magic, 0) == -1)
    return -1;
  return memcmp (magic, "QFI\xfb", 4) == 0;
}

void
cli_refuse_format_as_force (const char *command, int argc, char **argv,
                            const char *instead)
{
  static const char *const formats[] = {
    "raw", "qcow2", "qcow", "vmdk", "vdi", "vhdx", "vpc", "qed", "luks",
    "parallels", "dmg", "bochs", "cloop", "file", "host_device",
  };
  const char *word;

  if (optind < 2 || optind >= argc || strcmp (argv[optind - 1], "-f") != 0)
    return;
  word = argv[optind];
  if (access (word, F_OK) == 0)
    return;
  for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++)
    if (strcmp (word, formats[i]) == 0)
      cli_usage_error (command, "-f %s: -f is --force here, not qemu-img's "
                       "source format; %s", word, instead);
}

void
cli_check_brackets (const char *command, int argc, char **argv)
{
  for (int i = 1; i < argc && strcmp (argv[i], "--") != 0; i++)
    if (strcmp (argv[i], "[") == 0)
      cli_usage_error (command, "write a server command after --, so that "
                       "its options are not taken for %s's: %s %s "
                       "[OPTIONS] -- [ COMMAND ] ...", cli_program,
                       cli_program, command);
}

/* What names an NBD export whatever the spelling of its URI: the
 * transport, the server (host and port, or the socket's real path) and
 * the export name, in buf.  TLS or not, it is the same export.
 */
static void
nbd_identity (const char *uri, char *buf, size_t len)
{
  const char *rest = strstr (uri, "://");
  bool unix_socket = strncmp (uri, "nbd+unix://", 11) == 0
                     || strncmp (uri, "nbds+unix://", 12) == 0;
  const char *auth_end, *export = "", *query;
  size_t export_len = 0;
  char server[PATH_MAX] = "";

  rest = rest ? rest + 3 : uri;
  auth_end = rest + strcspn (rest, "/?");
  if (*auth_end == '/') {
    export = auth_end + 1;
    export_len = strcspn (export, "?");
  }
  query = strchr (rest, '?');
  if (unix_socket) {
    const char *sock = query ? strstr (query, "socket=") : NULL;
    if (sock) {
      char path[PATH_MAX];
      snprintf (path, sizeof path, "%.*s", (int) strcspn (sock + 7, "&"),
                sock + 7);
      if (realpath (path, server) == NULL)
        snprintf (server, sizeof server, "%s", path);
    }
  }
  else {
    size_t n = (size_t) (auth_end - rest);
    snprintf (server, sizeof server, "%.*s%s", (int) n, rest,
              memchr (rest, ':', n) ? "" : ":10809");
    for (char *c = server; *c; c++)
      *c = (char) tolower ((unsigned char) *c);
  }
  snprintf (buf, len, "%s|%s|%.*s", unix_socket ? "unix" : "tcp", server,
            (int) export_len, export);
}

void
cli_operands (const char *command, int argc, char **argv, int first,
              struct cli_operand *ops, int want, const char *expected)
{
  struct cli_operand extra;
  int n = 0;

  for (int i = first; i < argc; i++) {
    struct cli_operand *op = n < want ? &ops[n] : &extra;

    if (strcmp (argv[i], "]") == 0)
      cli_usage_error (command, "']' without '['");
    /* "pack -- [ A ] -- [ B ]": a second "--" separates nothing. */
    if (strcmp (argv[i], "--") == 0 && i > first)
      continue;
    memset (op, 0, sizeof *op);
    op->name = argv[i];
    if (strcmp (argv[i], "[") == 0) {
      int j = i + 1;
      size_t len;

      while (j < argc && strcmp (argv[j], "]") != 0)
        j++;
      if (j == argc)
        cli_usage_error (command, "'[' without ']'");
      if (j == i + 1)
        cli_usage_error (command, "'[ ]' needs the command of an NBD "
                         "server");
      argv[j] = NULL;
      op->argv = &argv[i + 1];
      op->nbd = true;
      /* "[ nbdkit memory 1G ]", cut short with "..." if long. */
      len = (size_t) snprintf (op->label, sizeof op->label, "[");
      for (int k = i + 1; k < j && len < sizeof op->label; k++)
        len += (size_t) snprintf (op->label + len, sizeof op->label - len,
                                  " %s", argv[k]);
      if (len < sizeof op->label)
        snprintf (op->label + len, sizeof op->label - len, " ]");
      else
        memcpy (op->label + sizeof op->label - 5, "... ]", 5);
      op->label[sizeof op->label - 1] = '\0';
      op->name = op->label;
      i = j;
    }
    else
      op->nbd = sc_is_nbd_uri (argv[i]);
    n++;
  }
  if (n != want) {
    for (int i = first; i < argc && optional_value_word; i++)
      if (argv[i] == optional_value_word) {
        bool lng = optional_value_option[1] == '-';

        cli_usage_error (command, "expected %s; '%s' after %s is an "
                         "operand: %s takes its value %s (%s%s%s)",
                         expected, optional_value_word,
                         optional_value_option, optional_value_option,
                         lng ? "after '='" : "attached",
                         optional_value_option, lng ? "=" : "",
                         optional_value_word);
      }
    cli_usage_error (command, "expected %s", expected);
  }
  /* One export read and written at once would be overwritten as it is
   * read.  verify only reads both.
   */
  if (want == 2 && ops[0].nbd && ops[1].nbd && !ops[0].argv && !ops[1].argv
      && strcmp (command, "verify") != 0) {
    char a[PATH_MAX + 256], b[PATH_MAX + 256];

    nbd_identity (ops[0].name, a, sizeof a);
    nbd_identity (ops[1].name, b, sizeof b);
    if (strcmp (a, b) == 0)
      cli_usage_error (command, "%s and %s are one export: it cannot be "
                       "both the source and the target", ops[0].name,
                       ops[1].name);
  }
}

int
cli_count_operands (int argc, char **argv, int first)
{
  int n = 0;

  for (int i = first; i < argc; i++) {
    if (strcmp (argv[i], "--") == 0 && i > first)
      continue;
    /* A server command is one operand, up to its "]" (a missing one is
     * reported by cli_operands).
     */
    if (strcmp (argv[i], "[") == 0)
      while (i < argc && strcmp (argv[i], "]") != 0)
        i++;
    n++;
  }
  return n;
}

struct sc_endpoint *
cli_open_source (const struct cli_operand *op,
                 const struct cli_common *common, enum sc_map_method map)
{
  struct sc_endpoint *ep;

  /* main put /dev/null there: reading it would give no data. */
  if (!op->nbd && strcmp (op->name, "-") == 0 && cli_std_closed[STDIN_FILENO]) {
    cli_error ("%s: stdin: standard input is closed", cli_command);
    return NULL;
  }
  if (op->nbd)
    ep = sc_endpoint_open_nbd (op->argv ? NULL : op->name, op->argv, 0,
                               &common->nbd);
  else
    ep = sc_endpoint_open_source (op->name, map);
  if (ep == NULL)
    cli_lib_error (cli_image_name (op->name));
  return ep;
}

struct sc_endpoint *
cli_open_stdin_image (const char *command, const struct cli_common *common)
{
  static const struct cli_operand in = { .name = "-" };
  struct stat st;

  /* main put /dev/null there: that is not what the user gave. */
  if (cli_std_closed[STDIN_FILENO]) {
    cli_error ("%s: stdin: standard input is closed", command);
    return NULL;
  }
  if (fstat (STDIN_FILENO, &st) == -1) {
    cli_error ("%s: stdin: %s", command, strerror (errno));
    return NULL;
  }
  /* The tables of an image lie anywhere in it: a stream cannot be
   * read that way.
   */
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode))
    cli_usage_error (command, "stdin: standard input is a %s; %s reads an image "
                     "at random offsets: name the file, or redirect it "
                     "(< IMAGE)", S_ISFIFO (st.st_mode) ? "pipe"
                     : S_ISDIR (st.st_mode) ? "directory"
                     : S_ISSOCK (st.st_mode) ? "socket"
                     : isatty (STDIN_FILENO) ? "terminal"
                     : S_ISCHR (st.st_mode) ? "character device" : "stream",
                     command);
  return cli_open_source (&in, common, SC_MAP_SEEK);
}

struct sc_endpoint *
cli_open_target (const struct cli_operand *op,
                 const struct cli_common *common, unsigned flags)
{
  struct sc_endpoint *ep;

  if (!op->nbd && strcmp (op->name, "-") == 0
      && cli_std_closed[STDOUT_FILENO]) {
    cli_error ("%s: stdout: standard output is closed", cli_command);
    return NULL;
  }
  if (op->nbd && (flags & SC_TARGET_DEVICE)) {
    cli_error ("%s: not a block device", op->name);
    return NULL;
  }
  if (op->nbd)
    ep = sc_endpoint_open_nbd (op->argv ? NULL : op->name, op->argv,
                               SC_NBD_WRITE | (flags & SC_TARGET_ZEROED),
                               &common->nbd);
  else
    ep = sc_endpoint_open_target (op->name, 0, flags);
  /* Messages name standard output "stdout", as its errors do. */
  if (ep == NULL)
    cli_lib_error (strcmp (op->name, "-") == 0 ? "stdout" : op->name);
  return ep;
}

void
cli_json_string (FILE *fp, const char *s)
{
  fputc ('"', fp);
  for (; *s; s++) {
    unsigned char ch = (unsigned char) *s;
    switch (ch) {
    case '"': fputs ("\\\"", fp); break;
    case '\\': fputs ("\\\\", fp); break;
    case '\n': fputs ("\\n", fp); break;
    case '\r': fputs ("\\r", fp); break;
    case '\t': fputs ("\\t", fp); break;
    default:
      if (ch < 0x20)
        fprintf (fp, "\\u%04x", ch);
      else
        fputc (ch, fp);
    }
  }
  fputc ('"', fp);
}

/* Progress: rate-limited to a few updates a second, and always the
 * final one (for a stream, whose end is not known in advance, the last
 * report held back is printed when the command is done).
 */
struct progress_state {
  bool json;
  bool nbdcopy;                 /* "P/100" lines instead of JSON */
  FILE *out;                    /* JSON lines go here */
  double last;
  int last_percent;
  bool held;                    /* a report was skipped since the last */
  struct sc_progress latest;
};
static struct progress_state progress_state;

static double
now_seconds (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (double) ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
progress_print (struct progress_state *st, const struct sc_progress *p)
{
  /* A stream's length is known only at its end: a total of 0 with
   * something done means "unknown", and only the bytes are shown.
   */
  bool unknown = p->total == 0 && p->done > 0;
  int percent = unknown ? -1
    : p->total ? (int) (p->done * 100 / p->total) : 100;

  st->last_percent = percent;
  st->held = false;
  /* nbdcopy's lines have no room for an unknown length: none then. */
  if (st->nbdcopy) {
    if (!unknown) {
      fprintf (st->out, "%d/100\n", percent);
      fflush (st->out);
    }
  }
  else if (st->json && unknown) {
    fprintf (st->out, "{\"done\":%" PRIu64
             ",\"total\":null,\"percent\":null}\n", p->done);
    fflush (st->out);
  }
  else if (st->json) {
    fprintf (st->out, "{\"done\":%" PRIu64 ",\"total\":%" PRIu64
             ",\"percent\":%d}\n", p->done, p->total, percent);
    fflush (st->out);
  }
  else if (unknown) {
    fprintf (stderr, "\r%.1f MiB read", (double) p->done / (1024 * 1024));
    fflush (stderr);
  }
  else {
    int width = 40, filled = percent * width / 100;
    fprintf (stderr, "\r[");
    for (int i = 0; i < width; i++)
      fputc (i < filled ? '#' : ' ', stderr);
    fprintf (stderr, "] %3d%%", percent);
    fflush (stderr);
  }
}

static void
progress_cb (const struct sc_progress *p, void *opaque)
{
  struct progress_state *st = opaque;
  double t = now_seconds ();
  bool unknown = p->total == 0 && p->done > 0;
  int percent = unknown ? -1
    : p->total ? (int) (p->done * 100 / p->total) : 100;
  bool final = !unknown && p->done >= p->total;

  st->latest = *p;
  /* JSON is for programs: a line for every percent, however fast, so
   * that what it shows does not depend on the speed of the machine.
   * Of a stream (percent unknown), a few lines a second.
   */
  if (st->json && !unknown) {
    if (percent == st->last_percent) {
      /* The last line said as much already. */
      st->held = !final;
      return;
    }
  }
  else if (!final && ((t - st->last < 0.25 && percent == st->last_percent)
                      || t - st->last < 0.1)) {
    st->held = true;
    return;
  }
  st->last = t;
  progress_print (st, p);
}

sc_progress_fn
cli_progress_fn (const struct cli_common *common, void **opaque)
{
  *opaque = &progress_state;
  progress_state.last = 0;
  progress_state.last_percent = -1;
  progress_state.held = false;
  if (common->progress_json) {
    progress_state.json = true;
    progress_state.nbdcopy = common->progress_nbdcopy;
    progress_state.out = stderr;
    if (common->progress_fd > 0) {
      progress_state.out = fdopen (common->progress_fd, "w");
      if (progress_state.out == NULL) {
        /* cli_check_progress saw it open: this is out of memory. */
        cli_error ("--progress: fd %d: %s", common->progress_fd,
                   strerror (errno));
        exit (EXIT_ERROR);
      }
    }
    return progress_cb;
  }
  if (common->progress && !common->quiet && isatty (STDERR_FILENO)) {
    progress_state.json = false;
    return progress_cb;
  }
  return NULL;
}

void
cli_progress_done (const struct cli_common *common)
{
  bool shown = common->progress_json
    || (common->progress && !common->quiet && isatty (STDERR_FILENO));

  if (shown && progress_state.held)
    progress_print (&progress_state, &progress_state.latest);
  if (common->progress && !common->progress_json && !common->quiet
      && isatty (STDERR_FILENO))
    fputc ('\n', stderr);
}

/* Are a and b one file, pipe or socket, by inode (whatever names lead
 * to it: /dev/stdout, /proc/self/fd/N, links)?
 */
static bool
same_node (const struct stat *a, const struct stat *b)
{
  return ((S_ISREG (a->st_mode) && S_ISREG (b->st_mode))
          || (S_ISFIFO (a->st_mode) && S_ISFIFO (b->st_mode))
          || (S_ISSOCK (a->st_mode) && S_ISSOCK (b->st_mode)))
         && a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* The same, or one block device (by device number): the object text
 * on a (a file, a device a descriptor was opened on, a pipe or a socket)
 * goes into when it is b.
 */
static bool
same_object (const struct stat *a, const struct stat *b)
{
  return same_node (a, b)
         || (S_ISBLK (a->st_mode) && S_ISBLK (b->st_mode)
             && a->st_rdev == b->st_rdev);
}

/* Does text written on a (what a text stream is open on) land in b:
 * the same object, or another name of its storage (a loop device over
 * the file b, the file behind the loop device b, another loop device
 * over that file, a partition of the disk b or the disk of the
 * partition b)?  The same identity as the targets' and sources'.
 */
static bool
text_lands_in (const struct stat *a, const struct stat *b)
{
  bool file;

  return same_object (a, b) || cli_same_storage (a, b, &file);
}

/* Are descriptors a and b open on one file that is not a terminal or
 * another character device (where lines of progress do no harm)?  A
 * pipe or a socket is one by its inode, whatever names lead to it; a
 * file or a block device by its storage (text_lands_in).
 */
static bool
same_open_file (int a, int b)
{
  struct stat sa, sb;

  return fstat (a, &sa) == 0 && fstat (b, &sb) == 0
    && text_lands_in (&sa, &sb) && !S_ISCHR (sa.st_mode);
}

/* The descriptors a command writes text on, for the checks below:
 * JSON progress (on standard error or the descriptor of fd:N), the
 * messages on standard error, and standard output where the command
 * prints text there (common->text_on_stdout).  Text on a file the
 * command reads or on a stream that carries its data would change the
 * one or mix into the other.
 */
struct text_stream {
  int fd;
  char what[64];                /* "progress (on descriptor 3)" */
};
#define MAX_TEXT_STREAMS 3

static size_t
text_streams (const struct cli_common *common,
              struct text_stream ts[MAX_TEXT_STREAMS])
{
  size_t n = 0;

  if (common->progress_json) {
    ts[n].fd = common->progress_fd ? common->progress_fd : STDERR_FILENO;
    snprintf (ts[n].what, sizeof ts[n].what, "progress (on descriptor %d)",
              ts[n].fd);
    n++;
  }
  /* main put /dev/null on a standard descriptor closed at the start:
   * nothing written there lands anywhere.
   */
  if (!cli_std_closed[STDERR_FILENO]) {
    ts[n].fd = STDERR_FILENO;
    snprintf (ts[n].what, sizeof ts[n].what, "messages (on standard error)");
    n++;
  }
  if (common->text_on_stdout && !cli_std_closed[STDOUT_FILENO]) {
    ts[n].fd = STDOUT_FILENO;
    snprintf (ts[n].what, sizeof ts[n].what, "text (on standard output)");
    n++;
  }
  return n;
}

/* The usage error of text that would go into what the command reads
 * (in, by identity): said on standard error, unless standard error is
 * that very file, which the message would change as much; then the
 * exit status alone says it.
 */
static void
input_refused (const char *command, const struct stat *in,
               const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4), noreturn));

static void
input_refused (const char *command, const struct stat *in,
               const char *fmt, ...)
{
  struct stat e;
  char msg[PATH_MAX + 256];
  va_list ap;

  if (!cli_std_closed[STDERR_FILENO] && fstat (STDERR_FILENO, &e) == 0
      && text_lands_in (&e, in))
    exit (cli_usage_status);
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  cli_usage_error (command, "%s", msg);
}

void
cli_check_progress (const char *command, const struct cli_common *common,
                    bool data_on_stdout, bool data_on_stdin)
{
  int fd = common->progress_fd ? common->progress_fd : STDERR_FILENO, fl;
  const char *arg = common->progress_arg ? common->progress_arg : "json";
  struct text_stream ts[MAX_TEXT_STREAMS];
  struct stat in;
  size_t n;

  if (!common->progress_json)
    goto streams;
  /* main put /dev/null on a standard descriptor closed at the start:
   * progress there would be lost.  Standard error too ("2>&-").
   */
  if (fd <= STDERR_FILENO && cli_std_closed[fd])
    cli_usage_error (command, "--progress=%s: descriptor %d is not open",
                     arg, fd);
  if (common->progress_fd) {
    fl = fcntl (fd, F_GETFL);
    if (fl == -1)
      cli_usage_error (command, "--progress=%s: descriptor %d is not "
                       "open", arg, fd);
    if ((fl & O_ACCMODE) == O_RDONLY)
      cli_usage_error (command, "--progress=%s: descriptor %d is open "
                       "for reading only", arg, fd);
  }
  /* Standard error too: "2>&1" makes it the data's stream. */
  if (data_on_stdout && (fd == STDOUT_FILENO
                         || same_open_file (fd, STDOUT_FILENO))) {
    if (common->progress_fd)
      cli_usage_error (command, "--progress=%s: progress would go into the "
                       "data on standard output", arg);
    cli_usage_error (command, "--progress=%s: progress on standard error "
                     "would go into the data on standard output (they are "
                     "one file)", arg);
  }
  /* "<>file 3>&0": the input, open for writing too. */
  if (data_on_stdin && same_open_file (fd, STDIN_FILENO)
      && fstat (STDIN_FILENO, &in) == 0)
    input_refused (command, &in, "--progress=%s: progress would go into "
                   "the data read from standard input (descriptor %d is "
                   "the same file)", arg, fd);

 streams:
  /* The messages, and text on standard output: "2>&1" with the data
   * on standard output would put a note or an error into the data, and
   * nowhere else could say what went wrong.  This message itself goes
   * there, but nothing has been written yet.
   */
  n = text_streams (common, ts);
  for (size_t i = 0; i < n; i++) {
    if (ts[i].fd != STDOUT_FILENO && data_on_stdout
        && same_open_file (ts[i].fd, STDOUT_FILENO))
      cli_usage_error (command, "%s would go into the data on standard "
                       "output (they are one file)", ts[i].what);
    if (data_on_stdin && same_open_file (ts[i].fd, STDIN_FILENO)
        && fstat (STDIN_FILENO, &in) == 0)
      input_refused (command, &in, "%s would go into the data read from "
                     "standard input (they are one file)", ts[i].what);
  }
}

/* Text on any of the command's text streams into name (b), an output
 * or something the command reads?  Refused before anything is written.
 */
static void
check_text_into (const char *command, const struct cli_common *common,
                 const char *name)
{
  struct text_stream ts[MAX_TEXT_STREAMS];
  size_t n = text_streams (common, ts);
  struct stat a, b;

  if (strcmp (name, "-") == 0 || sc_is_nbd_uri (name)
      || stat (name, &b) == -1)
    return;
  for (size_t i = 0; i < n; i++) {
    if (fstat (ts[i].fd, &a) == -1 || !text_lands_in (&a, &b))
      continue;
    /* An output that is a file or a device too: the message would be
     * the only change the refused command made to it.  A pipe's reader
     * is told.
     */
    if (S_ISREG (b.st_mode) || S_ISBLK (b.st_mode))
      input_refused (command, &b, "%s would be written into %s",
                     ts[i].what, name);
    cli_usage_error (command, "%s would be written into %s", ts[i].what,
                     name);
  }
}

void
cli_check_progress_not (const char *command, const struct cli_common *common,
                        const char *name)
{
  check_text_into (command, common, name);
}

static bool chain_any (const char *source,
                       bool (*fn) (const char *what, const char *path,
                                   const struct stat *s, void *arg),
                       void *arg);

struct progress_arg {
  const char *command;
  const char *image;
  size_t n;
  struct text_stream ts[MAX_TEXT_STREAMS];
  struct stat a[MAX_TEXT_STREAMS];
};

static bool
progress_into_cb (const char *what, const char *path, const struct stat *s,
                  void *arg)
{
  struct progress_arg *p = arg;

  for (size_t i = 0; i < p->n; i++)
    if (text_lands_in (&p->a[i], s))
      input_refused (p->command, s, "%s would be written into %s, the %s "
                     "of %s", p->ts[i].what, path, what, p->image);
  return false;
}

void
cli_check_report_streams (const char *command,
                          const struct cli_common *common,
                          const char *image, bool nbd)
{
  struct cli_common text = *common;

  text.progress_json = false;
  text.text_on_stdout = true;
  cli_check_progress (command, &text, false,
                      !nbd && strcmp (image, "-") == 0);
  cli_check_progress_image (command, &text, image);
}

void
cli_check_progress_image (const char *command,
                          const struct cli_common *common, const char *name)
{
  struct progress_arg p = { .command = command, .image = name };
  struct text_stream ts[MAX_TEXT_STREAMS];
  size_t n = text_streams (common, ts);
  struct stat b;

  check_text_into (command, common, name);
  if (strcmp (name, "-") == 0 || sc_is_nbd_uri (name))
    return;
  /* Only a file or a device can be a file of the chain. */
  for (size_t i = 0; i < n; i++)
    if (fstat (ts[i].fd, &p.a[p.n]) == 0
        && (S_ISREG (p.a[p.n].st_mode) || S_ISBLK (p.a[p.n].st_mode)))
      p.ts[p.n++] = ts[i];
  if (p.n == 0 || stat (name, &b) == -1
      || !(S_ISREG (b.st_mode) || S_ISBLK (b.st_mode))
      || sc_is_qcow2 (name) != 1)
    return;
  chain_any (name, progress_into_cb, &p);
}

/* Once a target is written in place, the first SIGINT, SIGTERM or
 * SIGHUP only asks the run to stop (sc_interrupt), so that the main
 * thread can say what it leaves behind; a second one ends the program
 * at once.
 */
static volatile sig_atomic_t defer_signals;
static volatile sig_atomic_t deferred_signal;
/* Once the targets are complete (cli_targets_complete), no signal
 * stops the run: the work is done, and what is left (closing, stopping
 * servers) takes no time.
 */
static volatile sig_atomic_t targets_complete;
static const char *complete_name;
/* The note on a late signal has been written (by the handler). */
static volatile sig_atomic_t late_told;

static void
write_str (const char *s)
{
  ssize_t r = write (STDERR_FILENO, s, strlen (s));

  (void) r;
}

static void
signal_handler (int sig)
{
  /* The note is written here, so that it is written however late the
   * signal comes, until the program has ended.
   */
  if (targets_complete) {
    if (deferred_signal == 0) {
      deferred_signal = sig;
      write_str (cli_program);
      write_str (": ");
      write_str (complete_name ? complete_name : "every target");
      write_str (": complete; ");
      write_str (sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM"
                 : sig == SIGHUP ? "SIGHUP" : "a signal");
      write_str (" came after it was written\n");
      late_told = 1;
    }
    return;
  }
  if (defer_signals && deferred_signal == 0) {
    deferred_signal = sig;
    sc_interrupt ();
    return;
  }
  sc_cleanup_temporaries ();
  signal (sig, SIG_DFL);
  raise (sig);
}

void
cli_defer_signals (void)
{
  defer_signals = 1;
}

bool
cli_interrupted (void)
{
  return deferred_signal != 0;
}

void
cli_targets_complete (const char *name)
{
  complete_name = name;
  /* The handler reads the name once it sees the flag. */
  atomic_signal_fence (memory_order_seq_cst);
  targets_complete = 1;
}

const char *
cli_signal_name (void)
{
  int sig = deferred_signal;

  return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM"
         : sig == SIGHUP ? "SIGHUP" : "a signal";
}

void
cli_exit_if_interrupted (void)
{
  int sig = deferred_signal;
  static bool told;

  if (sig == 0)
    return;
  if (targets_complete) {
    if (!told && !late_told)
      cli_error ("%s: complete; %s came after it was written",
                 complete_name ? complete_name : "every target",
                 cli_signal_name ());
    told = true;
    return;
  }
  fflush (stderr);
  sc_cleanup_temporaries ();
  signal (sig, SIG_DFL);
  raise (sig);
}

void
cli_install_signal_handlers (void)
{
  struct sigaction sa;

  memset (&sa, 0, sizeof sa);
  sa.sa_handler = signal_handler;
  sigemptyset (&sa.sa_mask);
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);
  sigaction (SIGHUP, &sa, NULL);
  signal (SIGPIPE, SIG_IGN);
  /* A file size limit (ulimit -f) must be an error we clean up after,
   * not a kill that leaves a temporary file behind.
   */
  signal (SIGXFSZ, SIG_IGN);
}

/* stat() of a name, or fstat() of the standard stream "-" stands for. */
static int
stat_endpoint (const char *name, int std_fd, struct stat *st)
{
  return strcmp (name, "-") == 0 ? fstat (std_fd, st) : stat (name, st);
}

bool
cli_partition_of (dev_t dev, dev_t *disk)
{
  char path[96], line[64];
  unsigned ma, mi;
  FILE *fp;
  bool ok;

  snprintf (path, sizeof path, "/sys/dev/block/%u:%u/partition",
            major (dev), minor (dev));
  if (access (path, F_OK) != 0)
    return false;
  /* A partition's directory lies in its disk's. */
  snprintf (path, sizeof path, "/sys/dev/block/%u:%u/../dev",
            major (dev), minor (dev));
  fp = fopen (path, "re");
  if (fp == NULL)
    return false;
  ok = fgets (line, sizeof line, fp) != NULL
       && sscanf (line, "%u:%u", &ma, &mi) == 2;
  fclose (fp);
  if (ok)
    *disk = makedev (ma, mi);
  return ok;
}

bool
cli_loop_over (const char *name, const struct stat *t, const struct stat *s)
{
#ifdef LOOP_GET_STATUS64
  struct loop_info64 info;
  dev_t disk = t->st_rdev;
  int fd;
  bool r = false;

  if (!S_ISBLK (t->st_mode)
      || (!S_ISREG (s->st_mode) && !S_ISBLK (s->st_mode)))
    return false;
  /* A partition of a loop device answers for its disk. */
  (void) cli_partition_of (t->st_rdev, &disk);
  if (major (disk) != LOOP_MAJOR)
    return false;
  fd = open (name, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return false;
  if (ioctl (fd, LOOP_GET_STATUS64, &info) == 0 && S_ISREG (s->st_mode))
    r = info.lo_device == s->st_dev && info.lo_inode == s->st_ino;
  else if (ioctl (fd, LOOP_GET_STATUS64, &info) == 0) {
    /* Over a device: the kernel gives the device's number, which is
     * s itself, or a partition of the disk s.
     */
    dev_t backing = (dev_t) info.lo_rdevice, backing_disk = backing;

    (void) cli_partition_of (backing, &backing_disk);
    r = backing == s->st_rdev || backing_disk == s->st_rdev;
  }
  close (fd);
  return r;
#else
  (void) name; (void) t; (void) s;
  return false;
#endif
}

/* The /dev name of the block device dev (from sysfs), or false. */
static bool
device_name (dev_t dev, char *buf, size_t len)
{
  char path[96], line[256];
  FILE *fp;
  bool found = false;

  snprintf (path, sizeof path, "/sys/dev/block/%u:%u/uevent",
            major (dev), minor (dev));
  fp = fopen (path, "re");
  if (fp == NULL)
    return false;
  while (!found && fgets (line, sizeof line, fp)) {
    line[strcspn (line, "\n")] = '\0';
    if (strncmp (line, "DEVNAME=", 8) == 0 && line[8] != '\0'
        && strstr (line + 8, "..") == NULL) {
      snprintf (buf, len, "/dev/%s", line + 8);
      found = true;
    }
  }
  fclose (fp);
  return found;
}

/* The /dev node of the block device dev, opened read-only to ask the
 * loop driver: its name from sysfs (device_name), checked to be that
 * device.  -1 if there is none.
 */
static int
open_device_node (dev_t dev)
{
  char node[PATH_MAX];
  struct stat st;
  int fd;

  if (!device_name (dev, node, sizeof node))
    return -1;
  fd = open (node, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd != -1 && (fstat (fd, &st) == -1 || !S_ISBLK (st.st_mode)
                   || st.st_rdev != dev)) {
    close (fd);
    fd = -1;
  }
  return fd;
}

/* The storage a file or block device finally reads and writes: a
 * regular file (base, ino: its device and inode), or a block device
 * (base: the whole disk; part: the partition, or 0 for all of it).
 */
struct storage {
  bool file;
  dev_t base;
  ino_t ino;
  dev_t part;
};

/* Loop devices over loop devices are followed this deep; a deeper
 * stack is taken as the device it stops at, which compares as itself.
 */
#define MAX_LOOP_DEPTH 8

static void
storage_of_dev (dev_t dev, struct storage *id, unsigned depth)
{
  dev_t disk = dev;
  bool part = cli_partition_of (dev, &disk);

  id->file = false;
  id->base = disk;
  id->ino = 0;
  id->part = part ? dev : 0;
#ifdef LOOP_GET_STATUS64
  if (major (disk) == LOOP_MAJOR && depth < MAX_LOOP_DEPTH) {
    struct loop_info64 info;
    int fd = open_device_node (disk);
    bool ok;

    if (fd == -1)
      return;
    ok = ioctl (fd, LOOP_GET_STATUS64, &info) == 0;
    close (fd);
    if (!ok)
      return;                   /* not attached: only itself */
    if (info.lo_rdevice != 0)
      /* Over a device: what backs that device, as far down as it goes. */
      storage_of_dev ((dev_t) info.lo_rdevice, id, depth + 1);
    else {
      id->file = true;
      id->base = (dev_t) info.lo_device;
      id->ino = (ino_t) info.lo_inode;
      id->part = 0;
    }
    /* A partition of the loop device is a part of what backs it, unless
     * that is already a part of something larger (then the larger part
     * answers for it: two such are taken as one).
     */
    if (part && id->part == 0)
      id->part = dev;
  }
#else
  (void) depth;
#endif
}

/* The storage of st (a file or a block device; false for anything
 * else).
 */
static bool
storage_of (const struct stat *st, struct storage *id)
{
  if (S_ISREG (st->st_mode)) {
    id->file = true;
    id->base = st->st_dev;
    id->ino = st->st_ino;
    id->part = 0;
    return true;
  }
  if (!S_ISBLK (st->st_mode))
    return false;
  storage_of_dev (st->st_rdev, id, 0);
  return true;
}

static bool
same_storage (const struct storage *a, const struct storage *b)
{
  return a->file == b->file && a->base == b->base && a->ino == b->ino
         && (a->part == 0 || b->part == 0 || a->part == b->part);
}

bool
cli_same_storage (const struct stat *a, const struct stat *b, bool *file)
{
  struct storage ia, ib;

  if (!storage_of (a, &ia) || !storage_of (b, &ib)
      || !same_storage (&ia, &ib))
    return false;
  *file = ia.file;
  return true;
}

/* The directory that holds name, stat'ed, and name's last component. */
static int
stat_parent (const char *name, struct stat *st, const char **base)
{
  const char *slash = strrchr (name, '/');
  char *dir;
  int r;

  *base = slash ? slash + 1 : name;
  if (slash == NULL)
    dir = strdup (".");
  else
    dir = strndup (name, slash == name ? 1 : (size_t) (slash - name));
  if (dir == NULL)
    return -1;
  r = stat (dir, st);
  free (dir);
  return r;
}

bool
cli_is_stream_name (const char *name)
{
  struct stat st;

  return stat (name, &st) == 0 && (S_ISFIFO (st.st_mode)
                                   || S_ISSOCK (st.st_mode)
                                   || S_ISCHR (st.st_mode));
}

bool
cli_same_file (const char *input, const char *target)
{
  struct stat s, t;
  const char *sb, *tb;

  /* Two writers into one pipe mix their bytes into one stream. */
  if (stat (input, &s) == 0 && stat_endpoint (target, STDOUT_FILENO, &t) == 0)
    return same_node (&s, &t);
  /* Two outputs not made yet (a bmap and the image of pack): the same
   * name in the same directory is the same file to be.
   */
  if (strcmp (input, "-") == 0 || strcmp (target, "-") == 0
      || stat_parent (input, &s, &sb) == -1
      || stat_parent (target, &t, &tb) == -1)
    return false;
  return s.st_dev == t.st_dev && s.st_ino == t.st_ino && strcmp (sb, tb) == 0;
}

/* Is the existing target t (named target) the file or device input
 * (stat s), or a loop device over it, or input a loop device over it?
 * Then print why, calling input what, and return true.
 */
static bool
target_is (const char *what, const char *input, const struct stat *s,
           const char *target, const struct stat *t)
{
  const char *in = strcmp (input, "-") == 0 ? "stdin" : input;
  const char *out = strcmp (target, "-") == 0 ? "stdout" : target;
  bool file;

  if (cli_loop_over (target, t, s)) {
    cli_error ("%s: is a loop device over the %s %s; write to another "
               "target", out, what, in);
    return true;
  }
  if (cli_loop_over (input, s, t)) {
    cli_error ("%s: the %s %s is a loop device over it; write to another "
               "target", out, what, in);
    return true;
  }
  /* A pipe too: written, it would feed the reader its own output. */
  if (same_object (s, t)) {
    cli_error ("%s: is the %s %s itself; write to another name", out, what,
               in);
    return true;
  }
  /* Two loop devices over one file, a loop device over a loop device
   * over it, a loop device over a partition of the disk: other names of
   * the same storage, found by what finally backs each.
   */
  if (cli_same_storage (s, t, &file)) {
    cli_error ("%s: is over the same %s as the %s %s; write to another "
               "target", out, file ? "file" : "device", what, in);
    return true;
  }
  return false;
}

/* The other files a qcow2 source reads: its backing chain and the
 * external data files of its images.  Calls fn on each that exists
 * (what says which it is) until fn returns true, and returns that.  A
 * source that does not open as a qcow2 image has none here (opening it
 * for real reports why).
 */
static bool
chain_any (const char *source,
           bool (*fn) (const char *what, const char *path,
                       const struct stat *s, void *arg), void *arg)
{
  struct sc_qcow2_open_opts qo = { .backing_optional = true,
                                   .allow_corrupt = true,
                                   .force_share = true };
  struct sc_qcow2_info info;
  struct sc_qcow2 *q;
  struct stat s;
  bool r = false;

  q = sc_qcow2_open (source, &qo);
  if (q == NULL)
    return false;
  if (sc_qcow2_get_info (q, &info) == -1) {
    sc_qcow2_close (q);
    return false;
  }
  for (size_t i = 0; i < info.chain_len && !r; i++) {
    r = stat (info.chain[i].filename, &s) == 0
        && fn ("backing file", info.chain[i].filename, &s, arg);
    if (!r && info.chain[i].data_file)
      r = stat (info.chain[i].data_file, &s) == 0
          && fn ("external data file", info.chain[i].data_file, &s, arg);
  }
  /* The data file's name as the reader opens it: as stored, a
   * relative one from the current directory.
   */
  if (!r && info.data_file)
    r = stat (info.data_file, &s) == 0
        && fn ("external data file", info.data_file, &s, arg);
  sc_qcow2_info_free (&info);
  sc_qcow2_close (q);
  return r;
}

struct target_arg {
  const char *target;
  const struct stat *t;
};

static bool
target_is_cb (const char *what, const char *path, const struct stat *s,
              void *arg)
{
  struct target_arg *a = arg;

  return target_is (what, path, s, a->target, a->t);
}

static bool
target_in_chain (const char *source, const char *target,
                 const struct stat *t)
{
  struct target_arg a = { target, t };

  return chain_any (source, target_is_cb, &a);
}

/* The first mount point of the block device dev or (unless
 * whole_only) of a partition of it, into buf (empty if none).
 */
static void
mount_point_of (dev_t dev, bool whole_only, char *buf, size_t len)
{
  FILE *fp = fopen ("/proc/self/mountinfo", "re");
  char line[4096];

  buf[0] = '\0';
  if (fp == NULL)
    return;
  /* "ID PARENT MAJ:MIN ROOT MOUNT-POINT ..." (proc(5)). */
  while (buf[0] == '\0' && fgets (line, sizeof line, fp)) {
    unsigned ma, mi;
    char point[PATH_MAX];
    dev_t d, disk;

    if (sscanf (line, "%*u %*u %u:%u %*s %4095s", &ma, &mi, point) != 3)
      continue;
    d = disk = makedev (ma, mi);
    (void) cli_partition_of (d, &disk);
    if (d == dev || (!whole_only && disk == dev))
      snprintf (buf, len, "%s", point);
  }
  fclose (fp);
}

/* Does another opener hold the block device dev exclusively (a mount,
 * a swap area, mkfs, a program with O_EXCL, or, for a disk, any of
 * these on a partition of it)?  Linux says so to an exclusive open of
 * its node, which is let go at once.
 */
static bool
held_exclusively (dev_t dev)
{
  char self[64];
  int fd = open_device_node (dev), excl;
  bool held;

  if (fd == -1)
    return false;
  /* The node just checked to be dev, opened again. */
  snprintf (self, sizeof self, "/proc/self/fd/%d", fd);
  excl = open (self, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_EXCL);
  held = excl == -1 && errno == EBUSY;
  if (excl != -1)
    close (excl);
  close (fd);
  return held;
}

/* Is a partition of the disk dev held exclusively? */
static bool
partition_held (dev_t dev)
{
  char dir[96];
  DIR *d;
  struct dirent *e;
  bool held = false;

  snprintf (dir, sizeof dir, "/sys/dev/block/%u:%u", major (dev),
            minor (dev));
  d = opendir (dir);
  if (d == NULL)
    return false;
  while (!held && (e = readdir (d)) != NULL) {
    char path[PATH_MAX], line[64];
    unsigned ma, mi;
    FILE *fp;
    bool ok;

    if (e->d_name[0] == '.')
      continue;
    snprintf (path, sizeof path, "%s/%s/partition", dir, e->d_name);
    if (access (path, F_OK) != 0)
      continue;
    snprintf (path, sizeof path, "%s/%s/dev", dir, e->d_name);
    fp = fopen (path, "re");
    if (fp == NULL)
      continue;
    ok = fgets (line, sizeof line, fp) != NULL
         && sscanf (line, "%u:%u", &ma, &mi) == 2;
    fclose (fp);
    held = ok && held_exclusively (makedev (ma, mi));
  }
  closedir (d);
  return held;
}

/* Is the block device dev in use: mounted, held by another device
 * (device-mapper, RAID), or held exclusively (a swap area, mkfs, a
 * program that opened it with O_EXCL)?  Then say how into buf, as
 * ", mounted on POINT", ", held by NAME", ", swap area PATH" or ", open
 * in process PID (COMM)", and return true.  A partition of dev in use
 * makes dev in use, unless whole_only: then only dev itself counts (a
 * write to another partition of it does not reach that one).
 */
static bool
device_busy (dev_t dev, bool whole_only, char *buf, size_t len)
{
  char point[PATH_MAX], dir[96];
  DIR *d;
  struct dirent *e;

  buf[0] = '\0';
  mount_point_of (dev, whole_only, point, sizeof point);
  if (point[0]) {
    snprintf (buf, len, ", mounted on %s", point);
    return true;
  }
  snprintf (dir, sizeof dir, "/sys/dev/block/%u:%u/holders",
            major (dev), minor (dev));
  d = opendir (dir);
  if (d != NULL) {
    while (buf[0] == '\0' && (e = readdir (d)) != NULL)
      if (e->d_name[0] != '.')
        snprintf (buf, len, ", held by %s", e->d_name);
    closedir (d);
    if (buf[0])
      return true;
  }
  /* A disk is held while a partition of it is: only its own holder
   * counts then, and none can hold it beside a partition's.
   */
  if (!held_exclusively (dev) || (whole_only && partition_held (dev)))
    return false;
  sc_block_describe_holders (dev, buf, len);
  if (buf[0] == '\0')
    snprintf (buf, len, ", held open exclusively by another program");
  return true;
}

/* The device the loop device name reads (0 for a file, or none). */
static dev_t
loop_backing_device (const char *name)
{
  dev_t r = 0;
#ifdef LOOP_GET_STATUS64
  struct loop_info64 info;
  int fd = open (name, O_RDONLY | O_CLOEXEC);

  if (fd == -1)
    return 0;
  if (ioctl (fd, LOOP_GET_STATUS64, &info) == 0)
    r = (dev_t) info.lo_rdevice;
  close (fd);
#else
  (void) name;
#endif
  return r;
}

/* The advice for a loop device in use as where says (", mounted on
 * ...", ", swap area ...", ...): unmount it, swapoff, or release it.
 */
static const char *
release_advice (const char *where)
{
  if (strncmp (where, ", swap area ", 12) == 0)
    return "swapoff and detach it first";
  return where[0] == '\0' || strncmp (where, ", mounted on ", 13) == 0
         || strncmp (where, ", held by ", 10) == 0
         ? "unmount and detach it first" : "release and detach it first";
}

/* Is the existing target t (named target) the file or the device that
 * an attached loop device reads and writes (directly, through a
 * partition of the disk, or through other loop devices)?  Written, it
 * would change under the loop device's user (a mounted file system,
 * which the exclusive open of the target does not see): refused.  Is
 * the target a loop device whose storage another loop device, mounted
 * or held, also reads?  The exclusive open of the target does not see
 * that one either: refused as busy.  Then print which loop device (a
 * mounted or held one first), where it is mounted, and return true.
 */
static bool
target_backs_loop (const char *target, const struct stat *t)
{
  struct storage tid;
  dev_t tdisk = 0, part_disk = 0, named_part = 0, named_busy_dev = 0;
  bool t_loop = false, found = false, found_busy = false;
  bool named_beside = false, named_over = false;
  char named[PATH_MAX], named_where[PATH_MAX], self_where[PATH_MAX];
  DIR *d;
  struct dirent *e;
  const char *out = strcmp (target, "-") == 0 ? "stdout" : target;

  if (!storage_of (t, &tid))
    return false;
  if (S_ISBLK (t->st_mode)) {
    tdisk = t->st_rdev;
    (void) cli_partition_of (t->st_rdev, &tdisk);
    t_loop = major (tdisk) == LOOP_MAJOR;
  }
  /* The disk of the partition the target finally reads, if any. */
  if (tid.part != 0 && !cli_partition_of (tid.part, &part_disk))
    part_disk = 0;
  d = opendir ("/sys/block");
  if (d == NULL)
    return false;
  while (!found_busy && (e = readdir (d)) != NULL) {
    char path[PATH_MAX], where[PATH_MAX];
    struct storage lid;
    struct stat l;
    bool over, busy, sibling;
    dev_t busy_dev;

    if (strncmp (e->d_name, "loop", 4) != 0)
      continue;
    /* Only an attached loop device has a backing file. */
    snprintf (path, sizeof path, "/sys/block/%s/loop/backing_file",
              e->d_name);
    if (access (path, F_OK) != 0)
      continue;
    snprintf (path, sizeof path, "/dev/%s", e->d_name);
    if (stat (path, &l) == -1 || !S_ISBLK (l.st_mode)
        || (S_ISBLK (t->st_mode) && l.st_rdev == tdisk))
      continue;
    over = cli_loop_over (path, &l, t);
    if (!over && !(storage_of (&l, &lid)
                   && same_storage (&lid, &tid)))
      continue;
    /* Beside a target loop device over a partition of this loop device,
     * only that partition, or this device as a whole, is written
     * through: another partition of it in use is not.
     */
    sibling = t_loop && !over && lid.part == 0 && part_disk != 0
              && part_disk == l.st_rdev;
    busy_dev = sibling ? tid.part : l.st_rdev;
    busy = device_busy (busy_dev, false, where, sizeof where);
    if (!busy && sibling) {
      busy_dev = l.st_rdev;
      busy = device_busy (busy_dev, true, where, sizeof where);
    }
    /* Beside a target loop device, another loop device over the same
     * file only stops it when it is in use.
     */
    if (t_loop && !over && !busy)
      continue;
    if (!found || busy) {
      snprintf (named, sizeof named, "%s", path);
      snprintf (named_where, sizeof named_where, "%s", where);
      found = true;
      found_busy = busy;
      named_beside = t_loop && !over;
      named_over = over;
      named_part = sibling ? tid.part : 0;
      named_busy_dev = busy_dev;
    }
  }
  closedir (d);
  if (!found)
    return false;
  /* A target device that is itself in use (mounted, or a partition of
   * it mounted) is named so first: detaching the loop device would only
   * lead to that refusal.
   */
  if (S_ISBLK (t->st_mode)
      && device_busy (t->st_rdev, false, self_where, sizeof self_where)) {
    cli_error ("%s: device is in use: %s; unmount or release it first", out,
               self_where + 2);
    return true;
  }
  if (named_part) {
    char pname[PATH_MAX], bname[PATH_MAX];

    if (!device_name (named_part, pname, sizeof pname))
      snprintf (pname, sizeof pname, "a partition");
    if (!device_name (named_busy_dev, bname, sizeof bname))
      snprintf (bname, sizeof bname, "%s", named);
    cli_error ("%s: is over %s, a partition of the loop device %s; %s is "
               "in use (%s), which would change under it; unmount or "
               "release it first", out, pname, named, bname,
               named_where + 2);
  }
  else if (named_beside)
    cli_error ("%s: is over the same %s as the loop device %s%s, which "
               "would change under it; %s (losetup -d %s)", out,
               tid.file ? "file" : "device", named, named_where,
               release_advice (named_where), named);
  else {
    dev_t backing = named_over && S_ISBLK (t->st_mode)
                    ? loop_backing_device (named) : 0;
    dev_t backing_disk = backing;
    char bname[PATH_MAX];

    if (backing)
      (void) cli_partition_of (backing, &backing_disk);
    if (backing && backing != t->st_rdev && backing_disk == t->st_rdev
        && device_name (backing, bname, sizeof bname))
      cli_error ("%s: its partition %s is the backing device of the loop "
                 "device %s%s; %s (losetup -d %s)", out, bname, named,
                 named_where, release_advice (named_where), named);
    else if (backing && backing != t->st_rdev && backing == tdisk
             && device_name (backing, bname, sizeof bname))
      cli_error ("%s: is a partition of %s, the backing device of the loop "
                 "device %s%s; %s (losetup -d %s)", out, bname, named,
                 named_where, release_advice (named_where), named);
    else
      cli_error ("%s: is the backing %s of the loop device %s%s; "
                 "%s (losetup -d %s)", out,
                 S_ISBLK (t->st_mode) ? "device" : "file", named,
                 named_where, release_advice (named_where), named);
  }
  return true;
}

/* Is the existing target t one of the files that the NBD server
 * command argv serves: an argument, or the value of a KEY=VALUE one
 * (nbdkit's file=PATH), that names it?  Then print why and return true.
 */
static bool
target_is_served (char **argv, const char *target, const struct stat *t)
{
  for (size_t i = 1; argv[i]; i++) {
    const char *eq = strchr (argv[i], '=');
    const char *names[2] = { argv[i], eq ? eq + 1 : NULL };

    for (size_t k = 0; k < 2 && names[k]; k++) {
      struct stat s;

      if (names[k][0] != '\0' && stat (names[k], &s) == 0
          && target_is ("file of the NBD server", names[k], &s, target, t))
        return true;
    }
  }
  return false;
}

void
cli_check_bmap_output (const char *command, const char *option,
                       const char *name)
{
  struct stat st;

  /* A directory is refused where the file would be made, as any
   * target's.
   */
  if (strcmp (name, "-") == 0 || stat (name, &st) == -1
      || S_ISREG (st.st_mode) || S_ISFIFO (st.st_mode)
      || S_ISDIR (st.st_mode))
    return;
  cli_usage_error (command, "%s %s: a bmap goes to a file, a pipe or "
                   "standard output, not a %s", option, name,
                   S_ISBLK (st.st_mode) ? "block device"
                   : S_ISCHR (st.st_mode) ? "character device"
                   : "special file");
}

bool
cli_target_is_source (const struct cli_operand *op, const char *target)
{
  const char *source = op->name;
  struct stat s, t;
  bool have_source;

  if (stat_endpoint (target, STDOUT_FILENO, &t) == -1)
    return false;
  /* An export is no file here; a server started here may read one,
   * and a loop device reads the target whatever the source.
   */
  if (op->nbd)
    return (op->argv && target_is_served (op->argv, target, &t))
           || target_backs_loop (target, &t);
  have_source = stat_endpoint (source, STDIN_FILENO, &s) == 0;
  /* The same file (also behind a redirection of a standard stream),
   * two device nodes of the same disk, a loop device over the other;
   * a file or device that a loop device reads; or one of the files a
   * qcow2 source reads besides itself.
   */
  if (have_source && target_is ("source", source, &s, target, &t))
    return true;
  if (target_backs_loop (target, &t))
    return true;
  return have_source && strcmp (source, "-") != 0 && !S_ISFIFO (s.st_mode)
         && target_in_chain (source, target, &t);
}

/* Is the existing target t one of the files that process pid, an NBD
 * server of source, has open (or a loop device over one, or the file
 * of a loop device it has open)?  Then print why and return true.
 */
static bool
target_open_in (pid_t pid, const char *source, const char *target,
                const struct stat *t)
{
  char dir[64];
  DIR *d;
  struct dirent *e;
  bool r = false;

  snprintf (dir, sizeof dir, "/proc/%ld/fd", (long) pid);
  d = opendir (dir);
  if (d == NULL)
    return false;               /* gone, or not ours to see */
  while (!r && (e = readdir (d)) != NULL) {
    char path[PATH_MAX], file[PATH_MAX], what[PATH_MAX + 64];
    struct stat s;
    ssize_t len;

    if (e->d_name[0] == '.')
      continue;
    snprintf (path, sizeof path, "%s/%s", dir, e->d_name);
    /* stat follows the link to the open file itself, even one whose
     * name has gone.
     */
    if (stat (path, &s) == -1
        || (!S_ISREG (s.st_mode) && !S_ISBLK (s.st_mode)))
      continue;
    len = readlink (path, file, sizeof file - 1);
    if (len <= 0)
      continue;
    file[len] = '\0';
    if ((S_ISREG (s.st_mode) && S_ISREG (t->st_mode)
         && s.st_dev == t->st_dev && s.st_ino == t->st_ino)
        || (S_ISBLK (s.st_mode) && S_ISBLK (t->st_mode)
            && s.st_rdev == t->st_rdev)) {
      cli_error ("%s: the NBD server %s (pid %ld) has it open as %s; "
                 "write to another target", target, source, (long) pid,
                 file);
      r = true;
      break;
    }
    snprintf (what, sizeof what, "file of the NBD server %s (pid %ld),",
              source, (long) pid);
    r = target_is (what, file, &s, target, t);
  }
  closedir (d);
  return r;
}

bool
cli_target_is_served (struct sc_endpoint *src, const char *source,
                      const char *target)
{
  pid_t pids[16];
  size_t n;
  struct stat t;

  if (src == NULL || strcmp (target, "-") == 0 || sc_is_nbd_uri (target)
      || stat (target, &t) == -1)
    return false;
  n = sc_nbd_server_pids (src, pids, sizeof pids / sizeof pids[0]);
  for (size_t i = 0; i < n; i++)
    if (target_open_in (pids[i], source, target, &t))
      return true;
  return false;
}
