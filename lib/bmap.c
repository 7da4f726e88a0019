/* Block maps in the format of bmaptool: bmap format 2.0 with SHA-256
 * written; formats 1.0 to 1.4 and 2.0 read.
 *
 * A bmap is a small XML file that names the blocks of an image that
 * hold data ("mapped"), in ranges of whole blocks, each with the
 * SHA-256 of its bytes, and the SHA-256 of the bmap file itself
 * (computed with the value of its own BmapFileChecksum element written
 * as zeros).  "bmaptool copy --bmap" writes only the mapped ranges and
 * checks each range's digest as it reads it.  Older formats differ in
 * their checksums only: 1.0 to 1.2 may give a SHA-1 per range (in a
 * "sha1" attribute) and none for the file, 1.3 adds the file's SHA-1
 * (BmapFileSHA1), and 1.4 is 2.0 by another number, whose ChecksumType
 * names any hash (sha256 is bmaptool's default; sha1 and md5 are read
 * too).
 *
 * Three parts here:
 * - the parser: a small hand-written reader for exactly this format,
 *   since every bmap is input from elsewhere: sizes are capped, numbers
 *   are checked for overflow, the ranges must be sorted, apart and
 *   inside the image, and the file's own checksum must match;
 * - the builder: ranges are hashed as the data goes by, in order, and
 *   their lines kept in a spill file, so that memory does not grow with
 *   the number of ranges; the header, whose counts are known only at
 *   the end, is written last, before the lines;
 * - the checked source: an endpoint over a source whose extents are
 *   the bmap's ranges and whose reads are checked against them.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <time.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "internal.h"
#include "bmap.h"
#include "qcow2.h"

/* The largest bmap file read.  bmaptool writes about 100 bytes per
 * range, so this is more than half a million ranges: more than an image
 * that is worth a block map has.  bmaptool itself holds the whole file
 * as an XML tree in memory.
 */
#define MAX_BMAP_FILE (64 * 1024 * 1024)
/* Block sizes accepted: bmaptool takes the file system's (FIGETBSZ),
 * from 512 bytes up to the largest page size of any architecture.
 */
#define MIN_BLOCK_SIZE 512
#define MAX_BLOCK_SIZE (1024 * 1024)
/* Nesting is flat in this format; the longest element and attribute
 * names are short.
 */
#define MAX_NAME 32
#define HEX_DIGEST_LEN (2 * SC_BMAP_DIGEST_LEN)
#define MAX_HEX_DIGEST_LEN (2 * SC_BMAP_MAX_DIGEST_LEN)
/* Read requests of the checked source when it reads ahead by itself. */
#define CATCH_UP_CHUNK (1024 * 1024)
/* How long a read of the checked source waits for the bytes before it
 * that no read holds yet (see checked_pread) before it reads them
 * itself.  Without the wait, unpack --bmap of a 4 GiB image (1 GiB of
 * data, deflate) with two workers read 1% to 9% of its data twice, as
 * the worker that took a piece had not called yet when the next one
 * got there.
 */
#define CATCH_UP_WAIT_NS (20 * 1000 * 1000)
/* sc_bmap_create reads data extents with holes shorter than this
 * between them as one range, as pack reads whole 64 KiB clusters: over
 * NBD, 64 MiB of 512-byte data extents alternating with 512-byte holes
 * took 65,536 reads of 512 bytes (12 s) where pack needs 64 of 1 MiB.
 * The holes read so are hashed as the extents say (zeros), not as read.
 */
#define CREATE_READ_GAP (64 * 1024)
/* A qcow2 image's virtual size is whole sectors: qemu-img and pack
 * round a raw file's size up to them.
 */
#define SECTOR_SIZE 512

/* ---- checksums ------------------------------------------------------------ */

/* The checksum types read (bmaptool takes any name its hashlib knows;
 * these are the ones bmaptool's own files carry: SHA-1 in formats 1.0
 * to 1.3, and in 1.4 and 2.0 what ChecksumType names, sha256 by
 * default, others on request).  Written: SHA-256 only.
 */
struct chksum_type {
  const char *name;             /* as in ChecksumType */
  const char *display;          /* for messages */
  const EVP_MD *(*md) (void);
  size_t len;                   /* bytes of digest */
};

static const struct chksum_type chksum_types[] = {
  { "sha256", "SHA-256", EVP_sha256, 32 },
  { "sha1", "SHA-1", EVP_sha1, 20 },
  { "md5", "MD5", EVP_md5, 16 },
  { "sha224", "SHA-224", EVP_sha224, 28 },
  { "sha384", "SHA-384", EVP_sha384, 48 },
  { "sha512", "SHA-512", EVP_sha512, 64 },
};
#define CHKSUM_SHA256 0
#define CHKSUM_SHA1 1
#define NB_CHKSUM_TYPES (sizeof chksum_types / sizeof chksum_types[0])

static EVP_MD_CTX *
hash_new (unsigned type)
{
  EVP_MD_CTX *ctx = EVP_MD_CTX_new ();

  if (ctx == NULL
      || EVP_DigestInit_ex (ctx, chksum_types[type].md (), NULL) != 1) {
    EVP_MD_CTX_free (ctx);
    sc_set_error (ENOMEM, "%s: cannot initialise the digest",
                  chksum_types[type].display);
    return NULL;
  }
  return ctx;
}

static int
hash_restart (EVP_MD_CTX *ctx, unsigned type)
{
  if (EVP_DigestInit_ex (ctx, chksum_types[type].md (), NULL) != 1) {
    sc_set_error (EIO, "%s: cannot initialise the digest",
                  chksum_types[type].display);
    return -1;
  }
  return 0;
}

static int
hash_update (EVP_MD_CTX *ctx, const void *buf, size_t len)
{
  if (len > 0 && EVP_DigestUpdate (ctx, buf, len) != 1) {
    sc_set_error (EIO, "bmap: digest update failed");
    return -1;
  }
  return 0;
}

static const unsigned char zero_block[SC_BMAP_BLOCK_SIZE];

/* Hash len zero bytes. */
static int
hash_zeros (EVP_MD_CTX *ctx, uint64_t len)
{
  while (len > 0) {
    size_t n = (size_t) SC_MIN (len, (uint64_t) sizeof zero_block);
    if (hash_update (ctx, zero_block, n) == -1)
      return -1;
    len -= n;
  }
  return 0;
}

/* The digest of ctx, of type's length, into digest. */
static int
hash_final (EVP_MD_CTX *ctx, unsigned type,
            unsigned char digest[SC_BMAP_MAX_DIGEST_LEN])
{
  unsigned int n = 0;

  if (EVP_DigestFinal_ex (ctx, digest, &n) != 1
      || n != chksum_types[type].len) {
    sc_set_error (EIO, "%s: digest failed", chksum_types[type].display);
    return -1;
  }
  return 0;
}

static void
hex_digest (const unsigned char digest[SC_BMAP_DIGEST_LEN],
            char hex[HEX_DIGEST_LEN + 1])
{
  static const char digits[] = "0123456789abcdef";

  for (size_t i = 0; i < SC_BMAP_DIGEST_LEN; i++) {
    hex[2 * i] = digits[digest[i] >> 4];
    hex[2 * i + 1] = digits[digest[i] & 15];
  }
  hex[HEX_DIGEST_LEN] = '\0';
}

static int
hex_value (char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* ---- the parser ------------------------------------------------------------ */

struct parser {
  const char *buf;
  size_t len;
  size_t pos;
  const char *name;             /* of the bmap, for messages */
  /* The format version, and the name of the checksum attribute of
   * <Range> in it: "chksum" in 1.4 and 2.0, "sha1" before.
   */
  unsigned major, minor;
  const char *range_attr;
};

/* Fail with EINVAL, "NAME: line L: message", L the line of pos. */
static int __attribute__ ((format (printf, 3, 0)))
vparse_error (const struct parser *p, size_t pos, const char *fmt,
              va_list ap)
{
  char msg[256];
  size_t line = 1;

  for (size_t i = 0; i < pos && i < p->len; i++)
    line += p->buf[i] == '\n';
  vsnprintf (msg, sizeof msg, fmt, ap);
  sc_set_error (EINVAL, "%s: line %zu: not a bmap file: %s", p->name, line,
                msg);
  return -1;
}

/* At the place reached. */
static int __attribute__ ((format (printf, 2, 3)))
parse_error (const struct parser *p, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vparse_error (p, p->pos, fmt, ap);
  va_end (ap);
  return -1;
}

/* At an element read before: the checks of the whole document come
 * after the parse, when the place reached is the end of the file.
 */
static int __attribute__ ((format (printf, 3, 4)))
parse_error_at (const struct parser *p, size_t pos, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vparse_error (p, pos, fmt, ap);
  va_end (ap);
  return -1;
}

static bool
at (const struct parser *p, const char *s)
{
  size_t n = strlen (s);
  return p->len - p->pos >= n && memcmp (p->buf + p->pos, s, n) == 0;
}

static bool
is_space (char c)
{
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void
skip_space (struct parser *p)
{
  while (p->pos < p->len && is_space (p->buf[p->pos]))
    p->pos++;
}

/* Skip past the next occurrence of end; -1 if there is none. */
static int
skip_past (struct parser *p, const char *end, const char *what)
{
  size_t n = strlen (end);

  for (size_t i = p->pos; p->len - i >= n; i++)
    if (memcmp (p->buf + i, end, n) == 0) {
      p->pos = i + n;
      return 0;
    }
  return parse_error (p, "unterminated %s", what);
}

/* Skip white space, comments and processing instructions (the XML
 * declaration).
 */
static int
skip_misc (struct parser *p)
{
  for (;;) {
    skip_space (p);
    if (at (p, "<!--")) {
      p->pos += 4;
      if (skip_past (p, "-->", "comment") == -1)
        return -1;
    }
    else if (at (p, "<?")) {
      p->pos += 2;
      if (skip_past (p, "?>", "XML declaration") == -1)
        return -1;
    }
    else
      return 0;
  }
}

static bool
is_name_char (char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
    || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
}

/* A name of at most MAX_NAME characters into name. */
static int
parse_name (struct parser *p, char name[MAX_NAME + 1])
{
  size_t n = 0;

  while (p->pos < p->len && is_name_char (p->buf[p->pos])) {
    if (n == MAX_NAME)
      return parse_error (p, "name too long");
    name[n++] = p->buf[p->pos++];
  }
  if (n == 0)
    return parse_error (p, "a name was expected");
  name[n] = '\0';
  return 0;
}

/* The attributes a start tag may carry that mean something: version
 * (of bmap) and the checksum of Range (chksum, or sha1 in formats
 * before 1.4), each a short string without entities.  Others are
 * skipped.
 */
struct attrs {
  const char *version;
  size_t version_len;
  const char *chksum;
  size_t chksum_len;
};

/* Attributes besides those of struct attrs that one tag may carry. */
#define MAX_OTHER_ATTRS 16

/* After "<": NAME, attributes, ">".  An empty element ("/>") has no
 * text and is never valid here.
 */
static int
parse_start_tag (struct parser *p, char name[MAX_NAME + 1], struct attrs *a)
{
  char ignored_names[MAX_OTHER_ATTRS][MAX_NAME + 1];
  size_t nignored = 0;

  memset (a, 0, sizeof *a);
  if (parse_name (p, name) == -1)
    return -1;
  for (;;) {
    char key[MAX_NAME + 1];
    const char **val, *ignored;
    size_t *val_len, start, ignored_len;
    char quote;

    skip_space (p);
    if (p->pos >= p->len)
      return parse_error (p, "unterminated tag <%s>", name);
    if (p->buf[p->pos] == '>') {
      p->pos++;
      return 0;
    }
    if (p->buf[p->pos] == '/')
      return parse_error (p, "empty element <%s/>", name);
    if (parse_name (p, key) == -1)
      return -1;
    if (strcmp (key, "version") == 0 && strcmp (name, "bmap") == 0) {
      val = &a->version;
      val_len = &a->version_len;
    }
    else if (p->range_attr && strcmp (key, p->range_attr) == 0
             && strcmp (name, "Range") == 0) {
      val = &a->chksum;
      val_len = &a->chksum_len;
    }
    else {
      /* Another attribute is read past, as bmaptool (an XML parser)
       * reads past what it does not look for; given twice, it is not
       * XML.
       */
      for (size_t i = 0; i < nignored; i++)
        if (strcmp (ignored_names[i], key) == 0)
          return parse_error (p, "attribute '%s' given twice", key);
      if (nignored == MAX_OTHER_ATTRS)
        return parse_error (p, "too many attributes of <%s>", name);
      memcpy (ignored_names[nignored++], key, sizeof key);
      val = &ignored;
      val_len = &ignored_len;
      ignored = NULL;
    }
    if (*val != NULL)
      return parse_error (p, "attribute '%s' given twice", key);
    skip_space (p);
    if (p->pos >= p->len || p->buf[p->pos] != '=')
      return parse_error (p, "'=' expected after '%s'", key);
    p->pos++;
    skip_space (p);
    if (p->pos >= p->len || (p->buf[p->pos] != '"' && p->buf[p->pos] != '\''))
      return parse_error (p, "a quoted value expected for '%s'", key);
    quote = p->buf[p->pos++];
    start = p->pos;
    while (p->pos < p->len && p->buf[p->pos] != quote) {
      if (p->buf[p->pos] == '<' || p->buf[p->pos] == '&')
        return parse_error (p, "unexpected '%c' in the value of '%s'",
                            p->buf[p->pos], key);
      p->pos++;
    }
    if (p->pos >= p->len)
      return parse_error (p, "unterminated value of '%s'", key);
    *val = p->buf + start;
    *val_len = p->pos - start;
    p->pos++;
  }
}

/* The text of an element up to the next "<": *text and *text_len. */
static int
parse_raw_text (struct parser *p, const char *name, const char **text,
                size_t *text_len)
{
  size_t start = p->pos;

  while (p->pos < p->len && p->buf[p->pos] != '<') {
    if (p->buf[p->pos] == '&')
      return parse_error (p, "unexpected '&' in <%s>", name);
    p->pos++;
  }
  *text = p->buf + start;
  *text_len = p->pos - start;
  return 0;
}

/* "</NAME>", consumed. */
static int
parse_end_tag (struct parser *p, const char *name)
{
  char closing[MAX_NAME + 1];

  if (!at (p, "</"))
    return parse_error (p, "</%s> expected", name);
  p->pos += 2;
  if (parse_name (p, closing) == -1)
    return -1;
  if (strcmp (closing, name) != 0)
    return parse_error (p, "</%s> expected, not </%s>", name, closing);
  skip_space (p);
  if (p->pos >= p->len || p->buf[p->pos] != '>')
    return parse_error (p, "'>' expected after </%s", name);
  p->pos++;
  return 0;
}

#define CDATA_START "<![CDATA["

/* A CDATA section at p (at (p, CDATA_START)), consumed: its content in
 * *text and *text_len.  XML parsers (bmaptool's) read it as text.
 */
static int
parse_cdata (struct parser *p, const char **text, size_t *text_len)
{
  size_t start = p->pos + strlen (CDATA_START);

  p->pos = start;
  if (skip_past (p, "]]>", "CDATA section") == -1)
    return -1;
  *text = p->buf + start;
  *text_len = p->pos - 3 - start;
  return 0;
}

/* Inside <bmap> and <BlockMap>, between the elements: white space,
 * comments, and CDATA sections, whose text bmaptool does not read
 * there either.
 */
static int
skip_misc_inside (struct parser *p)
{
  for (;;) {
    const char *t;
    size_t n;

    if (skip_misc (p) == -1)
      return -1;
    if (!at (p, CDATA_START))
      return 0;
    if (parse_cdata (p, &t, &n) == -1)
      return -1;
  }
}

/* The text of an element up to "</NAME>", which is consumed: *text and
 * *text_len, white space around it removed.  The text may also be one
 * CDATA section, with white space around it.
 */
static int
parse_text_and_end (struct parser *p, const char *name, const char **text,
                    size_t *text_len)
{
  const char *t = NULL;
  size_t n = 0;

  if (parse_raw_text (p, name, &t, &n) == -1)
    return -1;
  while (n > 0 && is_space (t[0])) {
    t++;
    n--;
  }
  if (n == 0 && at (p, CDATA_START)) {
    const char *rest = NULL;
    size_t rest_len = 0;

    if (parse_cdata (p, &t, &n) == -1
        || parse_raw_text (p, name, &rest, &rest_len) == -1)
      return -1;
    while (rest_len > 0 && is_space (rest[0])) {
      rest++;
      rest_len--;
    }
    if (rest_len > 0 || at (p, CDATA_START))
      return parse_error (p, "text after the CDATA section of <%s>", name);
    while (n > 0 && is_space (t[0])) {
      t++;
      n--;
    }
  }
  while (n > 0 && is_space (t[n - 1]))
    n--;
  if (parse_end_tag (p, name) == -1)
    return -1;
  *text = t;
  *text_len = n;
  return 0;
}

/* Room for the text of a <Range>, "FIRST-LAST" with a space around the
 * dash: two 20-digit numbers and three characters, with room to spare.
 */
#define MAX_RANGE_TEXT 64

/* The text of <Range> up to "</Range>", which is consumed, into buf
 * (*text_len set), white space around it removed.  Comments inside it
 * are left out, as an XML parser (bmaptool's) leaves them out of an
 * element's text, and the content of CDATA sections is text; each run
 * of white space is kept as one space, which no number may hold either
 * way, so that the text is bounded.  Longer text than that is no range.
 */
static int
parse_range_text_and_end (struct parser *p, char buf[MAX_RANGE_TEXT + 1],
                          size_t *text_len)
{
  size_t n = 0;

  for (;;) {
    const char *t = NULL;
    size_t len = 0;

    if (at (p, "<!--")) {
      p->pos += 4;
      if (skip_past (p, "-->", "comment") == -1)
        return -1;
      continue;
    }
    if (at (p, CDATA_START)) {
      if (parse_cdata (p, &t, &len) == -1)
        return -1;
    }
    else if (at (p, "<"))
      break;
    else if (parse_raw_text (p, "Range", &t, &len) == -1)
      return -1;
    for (size_t i = 0; i < len; i++) {
      char c = is_space (t[i]) ? ' ' : t[i];

      if (c == ' ' && (n == 0 || buf[n - 1] == ' '))
        continue;
      if (n == MAX_RANGE_TEXT)
        return parse_error (p, "the text of <Range> is too long");
      buf[n++] = c;
    }
    /* The end of the file: parse_end_tag says what is missing. */
    if (p->pos >= p->len)
      break;
  }
  if (n > 0 && buf[n - 1] == ' ')
    n--;
  if (parse_end_tag (p, "Range") == -1)
    return -1;
  buf[n] = '\0';
  *text_len = n;
  return 0;
}

/* A decimal number of s[0..len), no sign, no overflow. */
static int
parse_u64 (const struct parser *p, const char *s, size_t len, uint64_t *out,
           const char *what)
{
  uint64_t v = 0;

  if (len == 0)
    return parse_error (p, "%s: a number was expected", what);
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9')
      return parse_error (p, "%s: '%.*s' is not a number", what,
                          (int) SC_MIN (len, (size_t) 40), s);
    if (SC_MUL_OVERFLOW (v, 10, &v) || SC_ADD_OVERFLOW (v, (uint64_t) (s[i] - '0'), &v))
      return parse_error (p, "%s: number too large", what);
  }
  *out = v;
  return 0;
}

/* A digest of up to SC_BMAP_MAX_DIGEST_LEN bytes in hexadecimal: its
 * length, which the checksum type (perhaps not read yet) must agree
 * with, is checked after the parse.
 */
static int
parse_digest (const struct parser *p, const char *s, size_t len,
              unsigned char digest[SC_BMAP_MAX_DIGEST_LEN], uint8_t *out_len,
              const char *what)
{
  if (len == 0 || len > MAX_HEX_DIGEST_LEN || len % 2 != 0)
    return parse_error (p, "%s: %zu hexadecimal digits are no digest", what,
                        len);
  *out_len = (uint8_t) (len / 2);
  for (size_t i = 0; i < len / 2; i++) {
    int hi = hex_value (s[2 * i]), lo = hex_value (s[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return parse_error (p, "%s: not a hexadecimal digest", what);
    /* bmaptool compares the text with its lower-case digest: a bmap
     * in upper case fails "bmaptool copy" whatever the data.
     */
    if ((hi > 9 && s[2 * i] < 'a') || (lo > 9 && s[2 * i + 1] < 'a'))
      return parse_error (p, "%s: upper-case hexadecimal digits (bmaptool "
                          "takes only lower case)", what);
    digest[i] = (unsigned char) (hi << 4 | lo);
  }
  return 0;
}

/* "N" or "N-M", with white space allowed around the dash. */
static int
parse_range_text (const struct parser *p, const char *s, size_t len,
                  uint64_t *first, uint64_t *last)
{
  const char *dash = memchr (s, '-', len);
  size_t n1, i2;

  if (dash == NULL) {
    if (parse_u64 (p, s, len, first, "Range") == -1)
      return -1;
    *last = *first;
    return 0;
  }
  n1 = (size_t) (dash - s);
  while (n1 > 0 && is_space (s[n1 - 1]))
    n1--;
  i2 = (size_t) (dash - s) + 1;
  while (i2 < len && is_space (s[i2]))
    i2++;
  if (parse_u64 (p, s, n1, first, "Range") == -1
      || parse_u64 (p, s + i2, len - i2, last, "Range") == -1)
    return -1;
  if (*first > *last)
    return parse_error (p, "range %" PRIu64 "-%" PRIu64 " ends before it "
                        "starts", *first, *last);
  return 0;
}

/* The elements of <bmap>, each at most once.  Which of the last three
 * a file has depends on its version: ChecksumType and BmapFileChecksum
 * in 1.4 and 2.0, BmapFileSHA1 in 1.3, none before.
 */
enum field {
  F_IMAGE_SIZE, F_BLOCK_SIZE, F_BLOCKS_COUNT, F_MAPPED_COUNT, F_BLOCK_MAP,
  F_CHECKSUM_TYPE, F_FILE_CHECKSUM, F_FILE_SHA1, F_COUNT,
};
static const char *const field_names[F_COUNT] = {
  "ImageSize", "BlockSize", "BlocksCount", "MappedBlocksCount", "BlockMap",
  "ChecksumType", "BmapFileChecksum", "BmapFileSHA1",
};

/* The values of the elements, and where they and <bmap> start in the
 * file, for the messages of the checks made after the parse; the
 * file's own checksum (BmapFileChecksum or BmapFileSHA1), and where its
 * value is.
 */
struct fields {
  uint64_t value[F_COUNT];
  size_t pos[F_COUNT];
  size_t bmap_pos;
  bool seen[F_COUNT];
  unsigned chksum;              /* the ChecksumType, or SHA-1 */
  unsigned char file_digest[SC_BMAP_MAX_DIGEST_LEN];
  uint8_t file_digest_len;
  size_t digest_pos;            /* 0: the file has no checksum */
};

static int
add_range (const struct parser *p, struct sc_bmap *bmap, size_t *cap,
           const struct sc_bmap_range *r)
{
  if (bmap->nb_ranges == *cap) {
    size_t ncap = *cap ? 2 * *cap : 64;
    struct sc_bmap_range *n;

    /* The file size bounds the count: each range takes more than 16
     * bytes of text.
     */
    if (ncap > MAX_BMAP_FILE / 16)
      return parse_error (p, "too many ranges");
    n = realloc (bmap->ranges, ncap * sizeof *n);
    if (n == NULL) {
      sc_set_error (errno, "%s: out of memory", p->name);
      return -1;
    }
    bmap->ranges = n;
    *cap = ncap;
  }
  bmap->ranges[bmap->nb_ranges++] = *r;
  return 0;
}

/* After <BlockMap>: the ranges, then </BlockMap>. */
static int
parse_block_map (struct parser *p, struct sc_bmap *bmap)
{
  size_t cap = 0;

  for (;;) {
    char name[MAX_NAME + 1];
    struct attrs a;
    struct sc_bmap_range r = { 0 };
    char text[MAX_RANGE_TEXT + 1];
    size_t text_len = 0;

    if (skip_misc_inside (p) == -1)
      return -1;
    if (at (p, "</")) {
      p->pos += 2;
      if (parse_name (p, name) == -1)
        return -1;
      skip_space (p);
      if (strcmp (name, "BlockMap") != 0 || p->pos >= p->len
          || p->buf[p->pos] != '>')
        return parse_error (p, "</BlockMap> expected");
      p->pos++;
      return 0;
    }
    if (p->pos >= p->len)
      return parse_error (p, "the file ends before </BlockMap>");
    if (!at (p, "<"))
      return parse_error (p, "<Range> or </BlockMap> expected");
    /* Below MAX_BMAP_FILE, checked before the parse. */
    r.text_pos = (uint32_t) p->pos;
    p->pos++;
    if (parse_start_tag (p, name, &a) == -1)
      return -1;
    if (strcmp (name, "Range") != 0)
      return parse_error (p, "unexpected <%s> in <BlockMap>", name);
    if (parse_range_text_and_end (p, text, &text_len) == -1
        || parse_range_text (p, text, text_len, &r.first, &r.last) == -1)
      return -1;
    if (a.chksum) {
      if (parse_digest (p, a.chksum, a.chksum_len, r.digest, &r.digest_len,
                        p->range_attr) == -1)
        return -1;
      r.has_digest = true;
    }
    if (add_range (p, bmap, &cap, &r) == -1)
      return -1;
  }
}

/* The version of <bmap>: "MAJOR.MINOR".  Formats 1.0 to 1.3 have SHA-1
 * checksums (from 1.3 one of the file too); 1.4 is 2.0 by another
 * number (bmaptool 3.0 wrote it so; 3.1 renamed it); 2.x is 2.0.
 */
static int
parse_version (struct parser *p, const char *s, size_t len)
{
  const char *dot = memchr (s, '.', len);
  uint64_t major, minor;

  if (dot == NULL)
    return parse_error (p, "version '%.*s' is not MAJOR.MINOR",
                        (int) SC_MIN (len, (size_t) 16), s);
  if (parse_u64 (p, s, (size_t) (dot - s), &major, "version") == -1
      || parse_u64 (p, dot + 1, len - (size_t) (dot - s) - 1, &minor,
                    "version") == -1)
    return -1;
  /* A minor version of 2 adds nothing that a reader of 2.0 must know
   * (bmaptool reads every 2.x as 2.0).
   */
  if (!(major == 2 || (major == 1 && minor <= 4))) {
    sc_set_error (ENOTSUP, "%s: bmap format version %.*s is not supported "
                  "(1.0 to 1.4 and 2.x are)", p->name,
                  (int) SC_MIN (len, (size_t) 16), s);
    return -1;
  }
  p->major = (unsigned) major;
  p->minor = (unsigned) minor;
  p->range_attr = major == 2 || minor == 4 ? "chksum" : "sha1";
  return 0;
}

static int
parse_chksum_type (const struct parser *p, const char *s, size_t len,
                   unsigned *type)
{
  for (unsigned i = 0; i < NB_CHKSUM_TYPES; i++)
    if (strlen (chksum_types[i].name) == len
        && memcmp (chksum_types[i].name, s, len) == 0) {
      *type = i;
      return 0;
    }
  sc_set_error (ENOTSUP, "%s: checksum type '%.*s' is not supported "
                "(sha256, sha1, md5, sha224, sha384 and sha512 are)",
                p->name, (int) SC_MIN (len, (size_t) 16), s);
  return -1;
}

/* The elements that the file's version asks for, each there or not. */
static int
check_elements (const struct parser *p, struct fields *fl)
{
  bool new_names = p->major == 2 || p->minor == 4;

  for (int f = 0; f < F_COUNT; f++) {
    bool wanted = f < F_CHECKSUM_TYPE
      || (new_names && (f == F_CHECKSUM_TYPE || f == F_FILE_CHECKSUM))
      || (p->major == 1 && p->minor == 3 && f == F_FILE_SHA1);

    if (wanted && !fl->seen[f])
      return parse_error_at (p, fl->bmap_pos, "<%s> is missing from <bmap>",
                             field_names[f]);
    if (!wanted && fl->seen[f])
      return parse_error_at (p, fl->pos[f], "<%s> is not part of bmap "
                             "format %u.%u", field_names[f], p->major,
                             p->minor);
  }
  if (!new_names)
    fl->chksum = CHKSUM_SHA1;
  return 0;
}

/* The whole file: fills bmap and fl. */
static int
parse_document (struct parser *p, struct sc_bmap *bmap, struct fields *fl)
{
  char name[MAX_NAME + 1];
  struct attrs a;

  /* A byte order mark, as XML allows (UTF-8 is the only encoding). */
  if (at (p, "\xEF\xBB\xBF"))
    p->pos += 3;
  if (skip_misc (p) == -1)
    return -1;
  /* A document type declaration, as XML allows in the prolog; one with
   * an internal subset could define entities, which are not read.
   */
  if (at (p, "<!DOCTYPE")) {
    const char *gt = memchr (p->buf + p->pos, '>', p->len - p->pos);
    const char *sub = memchr (p->buf + p->pos, '[', p->len - p->pos);

    if (gt == NULL)
      return parse_error (p, "unterminated DOCTYPE");
    if (sub != NULL && sub < gt)
      return parse_error (p, "a DOCTYPE with an internal subset is not "
                          "read");
    p->pos = (size_t) (gt - p->buf) + 1;
    if (skip_misc (p) == -1)
      return -1;
  }
  if (!at (p, "<"))
    return parse_error (p, "<bmap> expected");
  fl->bmap_pos = p->pos;
  p->pos++;
  if (parse_start_tag (p, name, &a) == -1)
    return -1;
  if (strcmp (name, "bmap") != 0)
    return parse_error (p, "<bmap> expected, not <%s>", name);
  if (a.version == NULL)
    return parse_error (p, "<bmap> has no version");
  if (parse_version (p, a.version, a.version_len) == -1)
    return -1;

  for (;;) {
    const char *text = NULL;
    size_t text_len = 0, start;
    int f;

    if (skip_misc_inside (p) == -1)
      return -1;
    if (at (p, "</"))
      break;
    if (p->pos >= p->len)
      return parse_error (p, "the file ends before </bmap>");
    if (!at (p, "<"))
      return parse_error (p, "an element was expected");
    start = p->pos;
    p->pos++;
    if (parse_start_tag (p, name, &a) == -1)
      return -1;
    for (f = 0; f < F_COUNT; f++)
      if (strcmp (name, field_names[f]) == 0)
        break;
    if (f == F_COUNT)
      return parse_error (p, "unknown element <%s>", name);
    if (fl->seen[f])
      return parse_error (p, "<%s> given twice", name);
    fl->seen[f] = true;
    fl->pos[f] = start;
    if (f == F_BLOCK_MAP) {
      if (parse_block_map (p, bmap) == -1)
        return -1;
      continue;
    }
    if (parse_text_and_end (p, name, &text, &text_len) == -1)
      return -1;
    if (f == F_CHECKSUM_TYPE) {
      if (parse_chksum_type (p, text, text_len, &fl->chksum) == -1)
        return -1;
    }
    else if (f == F_FILE_CHECKSUM || f == F_FILE_SHA1) {
      /* Both cannot be there: check_elements refuses one of them. */
      if (parse_digest (p, text, text_len, fl->file_digest,
                        &fl->file_digest_len, name) == -1)
        return -1;
      fl->digest_pos = (size_t) (text - p->buf);
    }
    else if (parse_u64 (p, text, text_len, &fl->value[f], name) == -1)
      return -1;
  }
  p->pos += 2;
  if (parse_name (p, name) == -1)
    return -1;
  skip_space (p);
  if (strcmp (name, "bmap") != 0 || p->pos >= p->len || p->buf[p->pos] != '>')
    return parse_error (p, "</bmap> expected");
  p->pos++;
  if (skip_misc (p) == -1)
    return -1;
  if (p->pos != p->len)
    return parse_error (p, "text after </bmap>");
  return check_elements (p, fl);
}

/* Every digest has the length of the checksum type. */
static int
check_digest_lengths (const struct parser *p, struct sc_bmap *bmap,
                      const struct fields *fl)
{
  const struct chksum_type *t = &chksum_types[fl->chksum];

  if (fl->digest_pos > 0 && fl->file_digest_len != t->len)
    return parse_error_at (p, fl->digest_pos, "%s: a %s digest has %zu "
                           "hexadecimal digits, not %u",
                           fl->seen[F_FILE_SHA1] ? field_names[F_FILE_SHA1]
                           : field_names[F_FILE_CHECKSUM], t->display,
                           2 * t->len, 2u * fl->file_digest_len);
  for (size_t i = 0; i < bmap->nb_ranges; i++) {
    const struct sc_bmap_range *r = &bmap->ranges[i];

    if (r->has_digest && r->digest_len != t->len)
      return parse_error_at (p, r->text_pos, "%s: a %s digest has %zu "
                             "hexadecimal digits, not %u", p->range_attr,
                             t->display, 2 * t->len, 2u * r->digest_len);
  }
  bmap->chksum = fl->chksum;
  return 0;
}

/* By first block, then by place in the file: a total order. */
static int
range_cmp (const void *a, const void *b)
{
  const struct sc_bmap_range *x = a, *y = b;

  if (x->first != y->first)
    return x->first < y->first ? -1 : 1;
  return x->text_pos < y->text_pos ? -1 : x->text_pos > y->text_pos;
}

/* The numbers must agree with each other and with the ranges. */
static int
check_geometry (const struct parser *p, struct sc_bmap *bmap,
                const struct fields *fl)
{
  uint64_t bs = fl->value[F_BLOCK_SIZE], size = fl->value[F_IMAGE_SIZE];
  uint64_t mapped = 0, blocks;

  if (bs < MIN_BLOCK_SIZE || bs > MAX_BLOCK_SIZE || (bs & (bs - 1)) != 0)
    return parse_error_at (p, fl->pos[F_BLOCK_SIZE], "block size %" PRIu64
                           " is not a power of two from %d to %d", bs,
                           MIN_BLOCK_SIZE, MAX_BLOCK_SIZE);
  /* An image must be something a file can hold (off_t). */
  if (size == 0 || size > INT64_MAX)
    return parse_error_at (p, fl->pos[F_IMAGE_SIZE], "image size %" PRIu64
                           " is out of range", size);
  blocks = size / bs + (size % bs != 0);
  if (fl->value[F_BLOCKS_COUNT] != blocks)
    return parse_error_at (p, fl->pos[F_BLOCKS_COUNT], "%" PRIu64 " blocks "
                           "of %" PRIu64 " bytes do not make an image of %"
                           PRIu64 " bytes", fl->value[F_BLOCKS_COUNT], bs,
                           size);
  /* bmaptool takes the ranges in any order; they are used in order of
   * their blocks, and must not overlap.
   */
  if (bmap->nb_ranges > 1)
    qsort (bmap->ranges, bmap->nb_ranges, sizeof *bmap->ranges,
           range_cmp);
  for (size_t i = 0; i < bmap->nb_ranges; i++) {
    const struct sc_bmap_range *r = &bmap->ranges[i];

    if (r->last >= blocks)
      return parse_error_at (p, r->text_pos, "range %" PRIu64 "-%" PRIu64
                             " runs past the last block (%" PRIu64 ")",
                             r->first, r->last, blocks - 1);
    if (i > 0 && r->first <= bmap->ranges[i - 1].last) {
      /* Said where the second of the two in the file is. */
      const struct sc_bmap_range *q = &bmap->ranges[i - 1];
      const struct sc_bmap_range *later = q->text_pos > r->text_pos ? q : r;
      const struct sc_bmap_range *earlier = later == r ? q : r;

      return parse_error_at (p, later->text_pos, "range %" PRIu64 "-%"
                             PRIu64 " overlaps range %" PRIu64 "-%" PRIu64,
                             later->first, later->last, earlier->first,
                             earlier->last);
    }
    /* Cannot overflow: the ranges are apart and below blocks. */
    mapped += r->last - r->first + 1;
  }
  if (fl->value[F_MAPPED_COUNT] != mapped)
    return parse_error_at (p, fl->pos[F_MAPPED_COUNT], "MappedBlocksCount "
                           "is %" PRIu64 ", but the ranges hold %" PRIu64
                           " blocks", fl->value[F_MAPPED_COUNT], mapped);
  bmap->block_size = (uint32_t) bs;
  bmap->image_size = size;
  bmap->blocks_count = blocks;
  bmap->mapped_blocks = mapped;
  return 0;
}

/* The file's checksum, of its type, over the file with the checksum's
 * value written as zeros.  Formats before 1.3 have none.
 */
static int
check_file_digest (const struct parser *p, const struct fields *fl)
{
  char zeros[MAX_HEX_DIGEST_LEN];
  const struct chksum_type *t = &chksum_types[fl->chksum];
  unsigned char got[SC_BMAP_MAX_DIGEST_LEN];
  size_t pos = fl->digest_pos, hex_len = 2 * t->len;
  EVP_MD_CTX *ctx;
  int r = -1;

  if (pos == 0)
    return 0;
  memset (zeros, '0', sizeof zeros);
  ctx = hash_new (fl->chksum);
  if (ctx == NULL)
    return -1;
  if (hash_update (ctx, p->buf, pos) == -1
      || hash_update (ctx, zeros, hex_len) == -1
      || hash_update (ctx, p->buf + pos + hex_len,
                      p->len - pos - hex_len) == -1
      || hash_final (ctx, fl->chksum, got) == -1)
    goto out;
  if (memcmp (got, fl->file_digest, t->len) != 0) {
    sc_set_error (EBADMSG, "%s: the bmap file is damaged: its %s does not "
                  "match its contents", p->name,
                  fl->seen[F_FILE_SHA1] ? field_names[F_FILE_SHA1]
                  : field_names[F_FILE_CHECKSUM]);
    goto out;
  }
  r = 0;
 out:
  EVP_MD_CTX_free (ctx);
  return r;
}

struct sc_bmap *
sc_bmap_parse (const void *buf, size_t len, const char *name)
{
  return bmap_parse (buf, len, name, true);
}

struct sc_bmap *
bmap_parse (const void *buf, size_t len, const char *name, bool check_digest)
{
  struct parser p = { .buf = buf, .len = len, .name = name ? name : "bmap" };
  struct sc_bmap *bmap;
  struct fields fl;

  if (buf == NULL && len > 0) {
    sc_set_error (EINVAL, "%s: no buffer", p.name);
    return NULL;
  }
  if (len > MAX_BMAP_FILE) {
    sc_set_error (EFBIG, "%s: a bmap file of more than %d MiB is refused",
                  p.name, MAX_BMAP_FILE >> 20);
    return NULL;
  }
  memset (&fl, 0, sizeof fl);
  bmap = calloc (1, sizeof *bmap);
  if (bmap == NULL || (bmap->name = strdup (p.name)) == NULL) {
    sc_set_error (errno, "%s: out of memory", p.name);
    free (bmap);
    return NULL;
  }
  if (parse_document (&p, bmap, &fl) == -1
      || check_geometry (&p, bmap, &fl) == -1
      || check_digest_lengths (&p, bmap, &fl) == -1
      || (check_digest && check_file_digest (&p, &fl) == -1)) {
    sc_bmap_free (bmap);
    return NULL;
  }
  return bmap;
}

struct sc_bmap *
sc_bmap_load (const char *path)
{
  struct sc_bmap *bmap = NULL;
  char *buf = NULL;
  size_t len = 0;
  struct stat st;
  /* Non-blocking: a FIFO with no writer would block the open for ever,
   * and is refused below as any other kind but a regular file.
   */
  int fd = open (path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  int fl;

  if (fd == -1) {
    sc_set_error (errno, "%s: %s", path, strerror (errno));
    return NULL;
  }
  if (fstat (fd, &st) == -1) {
    sc_set_error (errno, "%s: %s", path, strerror (errno));
    goto out;
  }
  if (!S_ISREG (st.st_mode)) {
    sc_set_error (EINVAL, "%s: a bmap must be a regular file", path);
    goto out;
  }
  fl = fcntl (fd, F_GETFL);
  if (fl == -1 || fcntl (fd, F_SETFL, fl & ~O_NONBLOCK) == -1) {
    sc_set_error (errno, "%s: %s", path, strerror (errno));
    goto out;
  }
  if (st.st_size > MAX_BMAP_FILE) {
    sc_set_error (EFBIG, "%s: a bmap file of more than %d MiB is refused",
                  path, MAX_BMAP_FILE >> 20);
    goto out;
  }
  /* One byte more than the size: a file that grows is seen to. */
  buf = malloc ((size_t) st.st_size + 1);
  if (buf == NULL) {
    sc_set_error (errno, "%s: out of memory", path);
    goto out;
  }
  for (;;) {
    ssize_t n = read (fd, buf + len, (size_t) st.st_size + 1 - len);
    if (n == -1 && errno == EINTR)
      continue;
    if (n == -1) {
      sc_set_error (errno, "%s: %s", path, strerror (errno));
      goto out;
    }
    if (n == 0)
      break;
    len += (size_t) n;
    if (len > (size_t) st.st_size) {
      sc_set_error (EBUSY, "%s: the file grew while it was read", path);
      goto out;
    }
  }
  bmap = sc_bmap_parse (buf, len, path);
 out:
  free (buf);
  close (fd);
  return bmap;
}

void
sc_bmap_free (struct sc_bmap *bmap)
{
  if (bmap == NULL)
    return;
  free (bmap->ranges);
  free (bmap->name);
  free (bmap);
}

uint64_t
sc_bmap_image_size (const struct sc_bmap *bmap)
{
  return bmap->image_size;
}

void
bmap_range_bytes (const struct sc_bmap *bmap, size_t i, uint64_t *start,
                  uint64_t *end)
{
  const struct sc_bmap_range *r = &bmap->ranges[i];

  /* No overflow: last < blocks_count, and blocks_count * block_size
   * is less than image_size + block_size, itself at most INT64_MAX +
   * MAX_BLOCK_SIZE.
   */
  *start = r->first * bmap->block_size;
  *end = SC_MIN ((r->last + 1) * bmap->block_size, bmap->image_size);
}

/* ---- the builder ------------------------------------------------------------- */

#define LINE_BUFFER (256 * 1024)

struct bmap_builder {
  EVP_MD_CTX *ctx;
  bool open;                    /* a range is being hashed */
  uint64_t first;               /* its first block */
  uint64_t pos;                 /* bytes before pos are hashed */
  uint64_t mapped;              /* blocks of the closed ranges */
  uint64_t nb_ranges;
  /* The range lines: a spill file (in spill_dir, without a name) and
   * its write buffer.
   */
  int fd;
  char *spill_dir;
  char *buf;
  size_t len;
  uint64_t spilled;
};

struct bmap_builder *
bmap_builder_new (const char *near)
{
  struct bmap_builder *b = calloc (1, sizeof *b);

  if (b == NULL) {
    sc_set_error (errno, "out of memory");
    return NULL;
  }
  b->fd = -1;
  b->ctx = hash_new (CHKSUM_SHA256);
  b->buf = malloc (LINE_BUFFER);
  if (b->ctx == NULL || b->buf == NULL) {
    if (b->buf == NULL)
      sc_set_error (ENOMEM, "out of memory");
    bmap_builder_free (b);
    return NULL;
  }
  b->fd = sc_spill_open_in (near, &b->spill_dir);
  if (b->fd == -1) {
    bmap_builder_free (b);
    return NULL;
  }
  return b;
}

void
bmap_builder_free (struct bmap_builder *b)
{
  if (b == NULL)
    return;
  EVP_MD_CTX_free (b->ctx);
  if (b->fd >= 0)
    close (b->fd);
  free (b->spill_dir);
  free (b->buf);
  free (b);
}

static int
spill_lines (struct bmap_builder *b)
{
  if (sc_full_pwrite (b->fd, b->buf, b->len, b->spilled) == -1) {
    sc_error_prefix ("%s: bmap spill file", b->spill_dir);
    return -1;
  }
  b->spilled += b->len;
  b->len = 0;
  return 0;
}

/* Hash zeros up to end (the rest of the current block, or less) and
 * close the range there.
 */
static int
end_range (struct bmap_builder *b, uint64_t end)
{
  unsigned char digest[SC_BMAP_MAX_DIGEST_LEN];
  char hex[HEX_DIGEST_LEN + 1];
  uint64_t last;
  int n;

  if (hash_zeros (b->ctx, end - b->pos) == -1
      || hash_final (b->ctx, CHKSUM_SHA256, digest) == -1)
    return -1;
  b->pos = end;
  b->open = false;
  last = (end - 1) / SC_BMAP_BLOCK_SIZE;
  hex_digest (digest, hex);
  if (b->len + 128 > LINE_BUFFER && spill_lines (b) == -1)
    return -1;
  if (last != b->first)
    n = snprintf (b->buf + b->len, LINE_BUFFER - b->len,
                  "    <Range chksum=\"%s\"> %" PRIu64 "-%" PRIu64
                  " </Range>\n", hex, b->first, last);
  else
    n = snprintf (b->buf + b->len, LINE_BUFFER - b->len,
                  "    <Range chksum=\"%s\"> %" PRIu64 " </Range>\n", hex,
                  b->first);
  b->len += (size_t) n;
  b->mapped += last - b->first + 1;
  b->nb_ranges++;
  return 0;
}

int
bmap_builder_data (struct bmap_builder *b, uint64_t offset, const void *buf,
                   size_t len)
{
  uint64_t end;

  if (len == 0)
    return 0;
  if (offset < b->pos || SC_ADD_OVERFLOW (offset, (uint64_t) len, &end)) {
    sc_set_error (EINVAL, "bmap: data at %" PRIu64 " comes after %" PRIu64,
                  offset, b->pos);
    return -1;
  }
  if (b->open && offset > b->pos) {
    uint64_t block_end = SC_ROUND_UP (b->pos, SC_BMAP_BLOCK_SIZE);

    /* A gap that leaves no whole block out is a hole inside the range;
     * a longer one ends it.
     */
    if (SC_ROUND_DOWN (offset, SC_BMAP_BLOCK_SIZE) <= block_end) {
      if (hash_zeros (b->ctx, offset - b->pos) == -1)
        return -1;
      b->pos = offset;
    }
    else if (end_range (b, block_end) == -1)
      return -1;
  }
  if (!b->open) {
    uint64_t start = SC_ROUND_DOWN (offset, SC_BMAP_BLOCK_SIZE);

    /* The previous range ended in the block where this one starts
     * (data, a short hole, data): it goes on.
     */
    if (b->nb_ranges > 0 && start < b->pos) {
      sc_set_error (EINVAL, "bmap: data at %" PRIu64 " inside a closed "
                    "range", offset);
      return -1;
    }
    if (hash_restart (b->ctx, CHKSUM_SHA256) == -1)
      return -1;
    b->open = true;
    b->first = start / SC_BMAP_BLOCK_SIZE;
    b->pos = start;
    if (hash_zeros (b->ctx, offset - start) == -1)
      return -1;
  }
  if (buf ? hash_update (b->ctx, buf, len) : hash_zeros (b->ctx, len))
    return -1;
  b->pos = end;
  return 0;
}

/* The header, made in a fixed buffer: text_add appends to it. */
struct text {
  char *s;
  size_t len, cap;
};

static int __attribute__ ((format (printf, 2, 3)))
text_add (struct text *t, const char *fmt, ...)
{
  va_list ap;
  int n;

  va_start (ap, fmt);
  n = vsnprintf (t->s + t->len, t->cap - t->len, fmt, ap);
  va_end (ap);
  if (n < 0 || (size_t) n >= t->cap - t->len) {
    sc_set_error (ENOBUFS, "bmap: header too long");
    return -1;
  }
  t->len += (size_t) n;
  return 0;
}

static void
human_size (uint64_t bytes, char *out, size_t len)
{
  static const char *const units[] = { "bytes", "KiB", "MiB", "GiB", "TiB",
                                       "PiB", "EiB" };
  double v = (double) bytes;
  size_t u = 0;

  while (v >= 1024 && u + 1 < sizeof units / sizeof units[0]) {
    v /= 1024;
    u++;
  }
  if (u == 0)
    snprintf (out, len, "%" PRIu64 " bytes", bytes);
  else
    snprintf (out, len, "%.1f %s", v, units[u]);
}

int
bmap_builder_finish (struct bmap_builder *b, uint64_t image_size,
                     struct sc_endpoint *dst)
{
  static const char footer[] = "  </BlockMap>\n</bmap>\n";
  char head[4096], human[32], human_mapped[32];
  struct text t = { head, 0, sizeof head };
  unsigned char digest[SC_BMAP_MAX_DIGEST_LEN];
  char hex[HEX_DIGEST_LEN + 1];
  uint64_t blocks, total, off;
  size_t digest_at;
  CLEANUP_FREE char *chunk = NULL;
  EVP_MD_CTX *ctx = NULL;
  int r = -1;

  if (image_size == 0 || image_size > INT64_MAX) {
    sc_set_error (EINVAL, "bmap: an image of %" PRIu64 " bytes has no block "
                  "map (bmaptool refuses empty images)", image_size);
    return -1;
  }
  if (b->open) {
    uint64_t end = SC_MIN (SC_ROUND_UP (b->pos, SC_BMAP_BLOCK_SIZE),
                           image_size);
    if (b->pos > image_size) {
      sc_set_error (EINVAL, "bmap: data past the end of the image");
      return -1;
    }
    if (end_range (b, end) == -1)
      return -1;
  }
  if (b->len > 0 && spill_lines (b) == -1)
    return -1;
  blocks = SC_DIV_ROUND_UP (image_size, (uint64_t) SC_BMAP_BLOCK_SIZE);
  human_size (image_size, human, sizeof human);
  human_size (b->mapped * SC_BMAP_BLOCK_SIZE, human_mapped,
              sizeof human_mapped);

  /* The layout of bmaptool create's files (elements in its order, one
   * per line), so that the two can be compared line by line.
   */
  if (text_add (&t, "<?xml version=\"1.0\" ?>\n"
                "<!-- Block map (bmap format 2.0) written by sparsecow: the "
                "blocks of the image\n"
                "     that hold data, with the SHA-256 of each range of "
                "them.  Only these\n"
                "     blocks need copying, and \"bmaptool copy\" copies only "
                "them. -->\n"
                "<bmap version=\"2.0\">\n"
                "  <!-- Image size: %s -->\n"
                "  <ImageSize> %" PRIu64 " </ImageSize>\n"
                "  <BlockSize> %d </BlockSize>\n"
                "  <BlocksCount> %" PRIu64 " </BlocksCount>\n"
                "  <!-- Mapped: %s, %.1f%% of the image -->\n"
                "  <MappedBlocksCount> %" PRIu64 " </MappedBlocksCount>\n"
                "  <ChecksumType> sha256 </ChecksumType>\n"
                "  <!-- SHA-256 of this file with the value below written as "
                "zeros -->\n"
                "  <BmapFileChecksum> ", human, image_size,
                SC_BMAP_BLOCK_SIZE, blocks, human_mapped,
                100.0 * (double) b->mapped / (double) blocks, b->mapped)
      == -1)
    return -1;
  digest_at = t.len;
  if (text_add (&t, "%0*d </BmapFileChecksum>\n"
                "  <BlockMap>\n", HEX_DIGEST_LEN, 0) == -1)
    return -1;

  chunk = malloc (LINE_BUFFER);
  ctx = hash_new (CHKSUM_SHA256);
  if (chunk == NULL || ctx == NULL) {
    if (chunk == NULL)
      sc_set_error (ENOMEM, "out of memory");
    goto out;
  }
  /* First the file's digest, over the header with zeros, the lines and
   * the footer; then the file.
   */
  if (hash_update (ctx, t.s, t.len) == -1)
    goto out;
  for (off = 0; off < b->spilled; ) {
    size_t n = (size_t) SC_MIN ((uint64_t) LINE_BUFFER, b->spilled - off);
    if (sc_full_pread (b->fd, chunk, n, off) == -1) {
      sc_error_prefix ("%s: bmap spill file", b->spill_dir);
      goto out;
    }
    if (hash_update (ctx, chunk, n) == -1)
      goto out;
    off += n;
  }
  if (hash_update (ctx, footer, sizeof footer - 1) == -1
      || hash_final (ctx, CHKSUM_SHA256, digest) == -1)
    goto out;
  hex_digest (digest, hex);
  memcpy (t.s + digest_at, hex, HEX_DIGEST_LEN);

  total = t.len + b->spilled + (sizeof footer - 1);
  if (sc_ep_set_size (dst, total) == -1
      || sc_ep_pwrite (dst, t.s, t.len, 0) == -1)
    goto dst_error;
  for (off = 0; off < b->spilled; ) {
    size_t n = (size_t) SC_MIN ((uint64_t) LINE_BUFFER, b->spilled - off);
    if (sc_full_pread (b->fd, chunk, n, off) == -1) {
      sc_error_prefix ("%s: bmap spill file", b->spill_dir);
      goto out;
    }
    if (sc_ep_pwrite (dst, chunk, n, t.len + off) == -1)
      goto dst_error;
    off += n;
  }
  if (sc_ep_pwrite (dst, footer, sizeof footer - 1, t.len + b->spilled) == -1
      || sc_ep_flush (dst) == -1)
    goto dst_error;
  r = 0;
  goto out;
 dst_error:
  sc_error_name (dst->name);
 out:
  EVP_MD_CTX_free (ctx);
  return r;
}

/* ---- sc_bmap_create ----------------------------------------------------------- */

struct create {
  struct bmap_builder *b;
  const struct sc_endpoint *src;
  /* The source's own extents, when the pipeline reads merged ranges
   * (reads), else NULL; next is the first that may still overlap a
   * piece to come (pieces arrive in order).
   */
  const struct sc_extent_list *raw;
  size_t next;
};

static int
create_emit (struct sc_piece *piece, void *opaque)
{
  struct create *cr = opaque;
  uint64_t end = piece->offset + piece->length;

  /* Holes and zero ranges are not mapped, as bmaptool leaves holes. */
  if (piece->flags & (SC_EXTENT_HOLE | SC_EXTENT_ZERO))
    return 0;
  /* A stream shows what it is in its first bytes only: a qcow2 image
   * there is refused, as sc_pack refuses one; its guest content is
   * mapped from the image itself.
   */
  if ((cr->src->flags & SC_EP_STREAM) && piece->offset == 0
      && piece->length >= 4 && sc_get_be32 (piece->buf) == QCOW2_MAGIC) {
    sc_set_error (EMEDIUMTYPE, "%s: a qcow2 image, not raw data",
                  cr->src->name);
    return -1;
  }
  if (cr->raw == NULL)
    return bmap_builder_data (cr->b, piece->offset, piece->buf,
                              (size_t) piece->length);
  /* A merged read: the data extents inside it, as the source gave
   * them.
   */
  while (cr->next < cr->raw->len) {
    const struct sc_extent *e = &cr->raw->ext[cr->next];
    uint64_t e_end = e->offset + e->length;
    uint64_t from = SC_MAX (e->offset, piece->offset);
    uint64_t to = SC_MIN (e_end, end);

    if (e->offset >= end)
      break;
    if (from < to && !(e->flags & (SC_EXTENT_HOLE | SC_EXTENT_ZERO))
        && bmap_builder_data (cr->b, from,
                              (const unsigned char *) piece->buf
                              + (from - piece->offset),
                              (size_t) (to - from)) == -1)
      return -1;
    if (e_end > end)
      break;
    cr->next++;
  }
  return 0;
}

/* The ranges the pipeline reads: raw's data extents, with holes and
 * zero ranges shorter than CREATE_READ_GAP between two of them read
 * too, over [0, size).
 */
static int
create_reads (const struct sc_extent_list *raw, uint64_t size,
              struct sc_extent_list *out)
{
  uint64_t pos = 0;             /* everything before pos is listed */
  uint64_t start = 0, stop = 0; /* the data range being gathered */
  bool open = false;

  for (size_t i = 0; i < raw->len; i++) {
    const struct sc_extent *e = &raw->ext[i];
    uint64_t e_end = SC_MIN (e->offset + e->length, size);

    if ((e->flags & (SC_EXTENT_HOLE | SC_EXTENT_ZERO)) || e_end <= e->offset)
      continue;
    if (open && e->offset - stop < CREATE_READ_GAP) {
      stop = e_end;
      continue;
    }
    if (open
        && (sc_extent_list_append (out, pos, start - pos, SC_EXTENT_HOLE)
            == -1
            || sc_extent_list_append (out, start, stop - start, 0) == -1))
      return -1;
    if (open)
      pos = stop;
    start = e->offset;
    stop = e_end;
    open = true;
  }
  if (open
      && (sc_extent_list_append (out, pos, start - pos, SC_EXTENT_HOLE) == -1
          || sc_extent_list_append (out, start, stop - start, 0) == -1))
    return -1;
  if (open)
    pos = stop;
  return sc_extent_list_append (out, pos, size - pos, SC_EXTENT_HOLE);
}

int
sc_bmap_create (struct sc_endpoint *src, struct sc_endpoint *dst,
                const struct sc_bmap_opts *opts)
{
  struct sc_bmap_opts none = { 0 };
  struct sc_fingerprint fp_before, fp_after;
  struct sc_extent_list raw, reads;
  struct bmap_builder *b;
  struct create cr = { 0 };
  int have_fp, r = -1;

  if (opts == NULL)
    opts = &none;
  if (src == NULL || dst == NULL) {
    sc_set_error (EINVAL, "bmap: no source or no target");
    return -1;
  }
  b = bmap_builder_new (sc_ep_local_fd (dst) >= 0 ? dst->name : NULL);
  if (b == NULL)
    return -1;
  sc_extent_list_init (&raw);
  sc_extent_list_init (&reads);
  cr.b = b;
  cr.src = src;
  /* As in sc_pack: a source written while it is read gives ranges and
   * checksums of no one state of it.  Sources whose state cannot be
   * taken (a pipe, an export) are not compared.
   */
  have_fp = sc_ep_fingerprint (src, &fp_before);
  if (have_fp == -1)
    goto out;
  /* The extents first, as pack takes them, so that data extents close
   * together are read in large requests (a stream has none).
   */
  if (!(src->flags & SC_EP_STREAM) && src->size > 0) {
    if (sc_ep_extents_all (src, 0, src->size, &raw) == -1) {
      sc_error_name (src->name);
      goto out;
    }
    if (create_reads (&raw, src->size, &reads) == -1)
      goto out;
    cr.raw = &raw;
  }
  {
    struct sc_pipeline p = {
      .src = src,
      .extents = cr.raw ? &reads : NULL,
      .threads = opts->threads,
      .emit = create_emit,
      .opaque = &cr,
      .progress = opts->progress,
      .progress_opaque = opts->progress_opaque,
    };
    if (sc_pipeline_run (&p) == -1)
      goto out;
  }
  if (src->size == 0) {
    sc_set_error (EINVAL, "%s: an empty image has no block map (bmaptool "
                  "refuses it too)", src->name);
    goto out;
  }
  if (bmap_builder_finish (b, src->size, dst) == -1)
    goto out;
  /* Last, so that a change while the bmap was written counts too; the
   * caller commits it only after this.
   */
  if (have_fp == 0) {
    if (sc_ep_fingerprint (src, &fp_after) == -1)
      goto out;
    if (!sc_ep_fingerprint_equal (&fp_before, &fp_after)) {
      sc_set_error (EBUSY, "%s: source changed while it was mapped",
                    src->name);
      goto out;
    }
  }
  r = 0;
 out:
  sc_extent_list_free (&raw);
  sc_extent_list_free (&reads);
  bmap_builder_free (b);
  return r;
}

/* ---- the checked source ------------------------------------------------------- */

struct checked_ep {
  struct sc_endpoint ep;        /* first: the vtable sees this */
  struct sc_endpoint *inner;
  const struct sc_bmap *bmap;
  EVP_MD_CTX *ctx;
  /* Range next is hashed up to pos (its bytes before pos are in ctx);
   * next == nb_ranges when all are checked.
   */
  size_t next;
  uint64_t pos;
  /* A mismatch was found: every read after it fails with the same
   * message, so that whichever failed read is reported names the range.
   */
  bool failed;
  char failure[512];
  unsigned char *scratch;       /* CATCH_UP_CHUNK bytes, when needed */
  /* The reads under way (see checked_pread), and a broadcast whenever
   * one begins or ends, pos moves or a mismatch is found.
   */
  struct reading *reading;
  pthread_cond_t fed;
  pthread_mutex_t lock;
  /* bmap_checked_finish's reads, counted (bmap_checked_progress). */
  sc_progress_fn progress;
  void *progress_opaque;
  struct sc_progress prog;
};

/* A read of the inner endpoint under way, outside the lock: its bytes
 * are hashed by its caller once read.
 */
struct reading {
  uint64_t start, end;
  struct reading *next;
};

static void
start_range (struct checked_ep *c)
{
  uint64_t end;

  if (c->next < c->bmap->nb_ranges)
    bmap_range_bytes (c->bmap, c->next, &c->pos, &end);
}

/* Hash the bytes [offset, offset+len) of buf that lie at pos in the
 * ranges, finishing each range that ends there.  Nothing of the ranges
 * before offset may be left unhashed.
 */
static int
checked_feed (struct checked_ep *c, const unsigned char *buf, uint64_t offset,
              size_t len)
{
  const struct sc_bmap *bmap = c->bmap;

  while (c->next < bmap->nb_ranges) {
    const struct sc_bmap_range *r = &bmap->ranges[c->next];
    uint64_t start, end, stop;

    bmap_range_bytes (bmap, c->next, &start, &end);
    if (c->pos >= offset + len)
      return 0;
    stop = SC_MIN (end, offset + len);
    /* pos >= offset: the caller read what came before. */
    if (hash_update (c->ctx, buf + (c->pos - offset), stop - c->pos) == -1)
      return -1;
    c->pos = stop;
    if (stop < end)
      return 0;
    if (r->has_digest) {
      unsigned char digest[SC_BMAP_MAX_DIGEST_LEN];

      if (hash_final (c->ctx, bmap->chksum, digest) == -1)
        return -1;
      if (memcmp (digest, r->digest, chksum_types[bmap->chksum].len) != 0) {
        c->failed = true;
        snprintf (c->failure, sizeof c->failure, "%s and %s are out of "
                  "sync at offset %" PRIu64 " (the %s of blocks %"
                  PRIu64 "-%" PRIu64 " differs)", c->inner->name,
                  bmap->name, start, chksum_types[bmap->chksum].display,
                  r->first, r->last);
        sc_set_error (EBADMSG, "%s", c->failure);
        return -1;
      }
    }
    if (hash_restart (c->ctx, bmap->chksum) == -1)
      return -1;
    c->next++;
    start_range (c);
  }
  return 0;
}

/* Read and hash, from the source, what the ranges hold before offset
 * and was not read yet.
 */
static int
catch_up (struct checked_ep *c, uint64_t offset)
{
  while (c->next < c->bmap->nb_ranges && c->pos < offset) {
    uint64_t start, end;
    size_t n;

    bmap_range_bytes (c->bmap, c->next, &start, &end);
    n = (size_t) SC_MIN (SC_MIN (end, offset) - c->pos,
                         (uint64_t) CATCH_UP_CHUNK);
    if (c->scratch == NULL && (c->scratch = malloc (CATCH_UP_CHUNK)) == NULL) {
      sc_set_error (errno, "out of memory");
      return -1;
    }
    if (sc_ep_pread (c->inner, c->scratch, n, c->pos) == -1)
      return -1;
    if (checked_feed (c, c->scratch, c->pos, n) == -1)
      return -1;
    if (c->progress) {
      c->prog.done += n;
      c->progress (&c->prog, c->progress_opaque);
    }
  }
  return 0;
}

/* Where the first read under way that starts after pos starts, or
 * UINT64_MAX; sets *at_pos if one holds the bytes at pos.
 */
static uint64_t
next_reading (const struct checked_ep *c, bool *at_pos)
{
  uint64_t next = UINT64_MAX;

  *at_pos = false;
  for (const struct reading *r = c->reading; r; r = r->next) {
    if (r->start <= c->pos && c->pos < r->end)
      *at_pos = true;
    else if (r->start > c->pos)
      next = SC_MIN (next, r->start);
  }
  return next;
}

/* The ranges are hashed in order, but the source is read by every
 * worker at once (a qcow2 image decompresses, an NBD export answers,
 * in parallel): each read is made outside the lock, and its bytes are
 * hashed once those before them are.  Bytes before it that another
 * read under way holds are waited for.  Those that no read holds yet
 * are waited for CATCH_UP_WAIT_NS, as the worker that took them may not
 * have called yet, and then read here (the caller skipped them, or is
 * slow: they are read twice then).  A read under way never waits for a
 * later one, so one of them always goes on.
 */
static int
checked_pread (struct sc_endpoint *ep, void *buf, size_t count,
               uint64_t offset)
{
  struct checked_ep *c = (struct checked_ep *) ep;
  struct reading self = { offset, offset + count, NULL };
  struct reading **p;
  struct timespec until = { 0, 0 };
  bool waiting = false, timed_out = false;
  int r = -1, rr;

  pthread_mutex_lock (&c->lock);
  if (c->failed) {
    sc_set_error (EBADMSG, "%s", c->failure);
    pthread_mutex_unlock (&c->lock);
    return -1;
  }
  self.next = c->reading;
  c->reading = &self;
  /* A read waiting for these bytes need not read them. */
  pthread_cond_broadcast (&c->fed);
  pthread_mutex_unlock (&c->lock);

  rr = sc_ep_pread (c->inner, buf, count, offset);

  pthread_mutex_lock (&c->lock);
  for (p = &c->reading; *p != &self; p = &(*p)->next)
    ;
  *p = self.next;
  if (rr == -1)
    goto out;
  while (!c->failed && c->next < c->bmap->nb_ranges && c->pos < offset) {
    bool at_pos;
    uint64_t next = next_reading (c, &at_pos);

    if (at_pos) {
      waiting = timed_out = false;
      pthread_cond_wait (&c->fed, &c->lock);
      continue;
    }
    /* Reads taken one at a time, in order, have no one to wait for. */
    if (!waiting && (ep->flags & SC_EP_THREAD_SAFE)) {
      waiting = true;
      clock_gettime (CLOCK_MONOTONIC, &until);
      until.tv_nsec += CATCH_UP_WAIT_NS;
      if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
      }
    }
    if (waiting && !timed_out) {
      timed_out = pthread_cond_timedwait (&c->fed, &c->lock, &until)
                  == ETIMEDOUT;
      continue;
    }
    waiting = timed_out = false;
    if (catch_up (c, SC_MIN (next, offset)) == -1)
      goto out;
  }
  if (c->failed) {
    sc_set_error (EBADMSG, "%s", c->failure);
    goto out;
  }
  if (checked_feed (c, buf, offset, count) == -1)
    goto out;
  r = 0;
 out:
  pthread_cond_broadcast (&c->fed);
  pthread_mutex_unlock (&c->lock);
  return r;
}

/* The ranges as data, the blocks between them as holes. */
static int
checked_extents (struct sc_endpoint *ep, uint64_t offset, uint64_t count,
                 struct sc_extent_list *list)
{
  struct checked_ep *c = (struct checked_ep *) ep;
  const struct sc_bmap *bmap = c->bmap;
  uint64_t end = SC_MIN (offset + count, ep->size), pos = offset;
  size_t lo = 0, hi = bmap->nb_ranges;

  /* The first range that ends after offset. */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    uint64_t s, e;

    bmap_range_bytes (bmap, mid, &s, &e);
    if (e <= offset)
      lo = mid + 1;
    else
      hi = mid;
  }
  for (size_t i = lo; i < bmap->nb_ranges && pos < end; i++) {
    uint64_t s, e;

    bmap_range_bytes (bmap, i, &s, &e);
    if (s > pos) {
      if (sc_extent_list_append (list, pos, SC_MIN (s, end) - pos,
                                 SC_EXTENT_HOLE) == -1)
        return -1;
      pos = SC_MIN (s, end);
    }
    if (pos < end) {
      if (sc_extent_list_append (list, pos, SC_MIN (e, end) - pos, 0) == -1)
        return -1;
      pos = SC_MIN (e, end);
    }
  }
  if (pos < end
      && sc_extent_list_append (list, pos, end - pos, SC_EXTENT_HOLE) == -1)
    return -1;
  return 0;
}

static int
checked_fingerprint (struct sc_endpoint *ep, struct sc_fingerprint *fp)
{
  return sc_ep_fingerprint (((struct checked_ep *) ep)->inner, fp);
}

static int
checked_close (struct sc_endpoint *ep)
{
  struct checked_ep *c = (struct checked_ep *) ep;

  EVP_MD_CTX_free (c->ctx);
  free (c->scratch);
  pthread_cond_destroy (&c->fed);
  pthread_mutex_destroy (&c->lock);
  sc_ep_free (ep);
  return 0;
}

static const struct sc_endpoint_ops checked_ops = {
  .kind = "bmap",
  .pread = checked_pread,
  .extents = checked_extents,
  .fingerprint = checked_fingerprint,
  .close = checked_close,
};

/* The bytes of inner past the bmap's image size, fewer than a sector,
 * read as zero: 0, or -1 with the error set.
 */
static int
check_sector_tail (struct sc_endpoint *inner, const struct sc_bmap *bmap)
{
  unsigned char tail[SECTOR_SIZE];
  size_t n = (size_t) (inner->size - bmap->image_size);

  if (sc_ep_pread (inner, tail, n, bmap->image_size) == -1)
    return -1;
  for (size_t i = 0; i < n; i++)
    if (tail[i] != 0) {
      sc_set_error (EINVAL, "%s is %" PRIu64 " bytes and holds data at %"
                    PRIu64 ", past the image of %" PRIu64 " bytes that %s "
                    "describes", inner->name, inner->size,
                    bmap->image_size + i, bmap->image_size, bmap->name);
      return -1;
    }
  return 0;
}

struct sc_endpoint *
bmap_checked_source (struct sc_endpoint *inner, const struct sc_bmap *bmap,
                     bool sector_tail)
{
  struct checked_ep *c;
  pthread_condattr_t attr;

  if ((inner->flags & SC_EP_STREAM) || !(inner->flags & SC_EP_SEEKABLE)) {
    sc_set_error (ESPIPE, "%s: a bmap is a map of a file, a device or an "
                  "export, not of a stream", inner->name);
    return NULL;
  }
  /* A raw file of 10000001 bytes packs into an image of 10000384, as
   * qemu-img rounds it up; its bmap still describes the image's data.
   */
  if (sector_tail && inner->size > bmap->image_size
      && inner->size == SC_ROUND_UP (bmap->image_size,
                                     (uint64_t) SECTOR_SIZE)) {
    if (check_sector_tail (inner, bmap) == -1)
      return NULL;
  }
  else if (inner->size != bmap->image_size) {
    sc_set_error (EINVAL, "%s is %" PRIu64 " bytes, but %s describes an "
                  "image of %" PRIu64 " bytes", inner->name, inner->size,
                  bmap->name, bmap->image_size);
    return NULL;
  }
  c = sc_ep_new (sizeof *c, &checked_ops, inner->name);
  if (c == NULL)
    return NULL;
  c->ctx = hash_new (bmap->chksum);
  if (c->ctx == NULL) {
    sc_ep_free (&c->ep);
    return NULL;
  }
  pthread_mutex_init (&c->lock, NULL);
  pthread_condattr_init (&attr);
  pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
  pthread_cond_init (&c->fed, &attr);
  pthread_condattr_destroy (&attr);
  c->inner = inner;
  c->bmap = bmap;
  c->ep.size = bmap->image_size;
  c->ep.block_size = inner->block_size;
  c->ep.max_request = inner->max_request;
  /* Read by many workers at once where inner may be (checked_pread). */
  c->ep.flags = inner->flags & (SC_EP_SEEKABLE | SC_EP_REMOTE
                                | SC_EP_THREAD_SAFE);
  start_range (c);
  return &c->ep;
}

void
bmap_checked_progress (struct sc_endpoint *ep, sc_progress_fn fn,
                       void *opaque)
{
  struct checked_ep *c = (struct checked_ep *) ep;

  c->progress = fn;
  c->progress_opaque = opaque;
  c->prog = (struct sc_progress) { 0, 0 };
  for (size_t i = 0; i < c->bmap->nb_ranges; i++) {
    uint64_t start, end;

    bmap_range_bytes (c->bmap, i, &start, &end);
    c->prog.total += end - start;
  }
}

int
bmap_checked_finish (struct sc_endpoint *ep)
{
  struct checked_ep *c = (struct checked_ep *) ep;
  int r;

  pthread_mutex_lock (&c->lock);
  if (c->failed) {
    sc_set_error (EBADMSG, "%s", c->failure);
    r = -1;
  }
  else
    r = catch_up (c, UINT64_MAX);
  pthread_mutex_unlock (&c->lock);
  if (r == -1)
    sc_error_name (ep->name);
  return r;
}
