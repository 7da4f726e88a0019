/* qcow2 cluster compression: deflate as qemu decodes it, and zstd.
 *
 * qemu inflates deflate clusters with a 4 KiB window (raw deflate,
 * windowBits -12), so we must never emit a back-reference further than
 * 4 KiB: compressing with windowBits -12 (zlib) or hist_bits 12 (ISA-L's
 * igzip) guarantees that.  Streams are kept per thread because setting
 * one up costs far more than compressing a small cluster.
 *
 * Deflate has two implementations.  igzip, when built in, compresses
 * at the levels it has (0-3) and inflates every cluster first; zlib
 * compresses at the levels igzip lacks and gives the verdict on every
 * cluster that igzip does not decode cleanly to exactly one cluster.
 * SPARSECOW_DEFLATE=zlib in the environment uses zlib alone.
 *
 * With libdeflate built in as well, it takes igzip's place as the
 * first inflater: whole 64 KiB clusters that qemu compressed decode
 * about a tenth faster with it.  zlib still gives the verdict on every
 * cluster that it does not decode cleanly to exactly one cluster.
 */
#include <config.h>

#include <pthread.h>
#include <string.h>
#include <zlib.h>
#ifdef HAVE_ISAL
#include <isa-l/igzip_lib.h>
#endif
#ifdef HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif
#ifdef HAVE_ZSTD
#include <zstd.h>
#include <zstd_errors.h>
#endif

#include "internal.h"

#define QCOW2_DEFLATE_WINDOW_BITS (-12)

/* zlib's memLevel.  It sizes the match hash (2^(memLevel+7) heads)
 * and the symbol buffer.  With a 4 KiB window a hash of 16K heads is
 * already four per window position; qemu's memLevel 9 only makes every
 * reset clear 128 KiB and the search miss the cache.  On 64 KiB
 * clusters of executables, libraries and documentation, memLevel 7 is
 * a sixth faster than 9 at every level and no larger.
 */
#define SC_DEFLATE_MEM_LEVEL 7

/* Without --level, deflate runs zlib level 6 (qemu's) with a shorter
 * match search: chains of 20 instead of 128, and a match of 64 bytes is
 * good enough to stop looking.  On the same clusters this takes under
 * two thirds of the time of qemu's settings for 0.6% more output;
 * level 5 takes four fifths of the time for 0.6% more.
 */
#define SC_DEFLATE_DEFAULT_LEVEL 6
#define SC_DEFLATE_DEFAULT_GOOD 8
#define SC_DEFLATE_DEFAULT_LAZY 16
#define SC_DEFLATE_DEFAULT_NICE 64
#define SC_DEFLATE_DEFAULT_CHAIN 20

/* Without --level, with ISA-L: igzip's level for the default. */
#define SC_ISAL_DEFAULT_LEVEL 1

/* igzip's history limit, log2 bytes: the same 4 KiB window. */
#define SC_ISAL_HIST_BITS 12

/* Which deflate implementation runs: chosen once per process from
 * SPARSECOW_DEFLATE (or by sc_deflate_select), ISA-L by default when it
 * is built in.
 */
enum deflate_impl {
  DEFLATE_ZLIB,
  DEFLATE_ISAL,
  DEFLATE_INVALID,              /* SPARSECOW_DEFLATE names nothing we have */
};

struct codec_state {
  z_stream deflate;
  int deflate_level;            /* level the stream was set up with */
  bool deflate_tuned;           /* with the default's match search */
  bool deflate_ready;
  z_stream inflate;
  bool inflate_ready;
#ifdef HAVE_ISAL
  /* Both are tens of KiB (igzip's hash and history, its decode
   * tables), so they are allocated on first use.
   */
  struct isal_zstream *isal_deflate;
  uint8_t *isal_level_buf;      /* ISAL_DEF_LVL3_DEFAULT bytes */
  struct inflate_state *isal_inflate;
#endif
#ifdef HAVE_LIBDEFLATE
  struct libdeflate_decompressor *ld;
#endif
#ifdef HAVE_ZSTD
  ZSTD_CCtx *zc;
  int zc_level;                 /* level zc is set to */
  ZSTD_DCtx *zd;
#endif
};

static pthread_key_t state_key;
static pthread_once_t state_once = PTHREAD_ONCE_INIT;

static void
free_state (void *p)
{
  struct codec_state *s = p;

  if (s->deflate_ready)
    deflateEnd (&s->deflate);
  if (s->inflate_ready)
    inflateEnd (&s->inflate);
#ifdef HAVE_ISAL
  free (s->isal_deflate);
  free (s->isal_level_buf);
  free (s->isal_inflate);
#endif
#ifdef HAVE_LIBDEFLATE
  if (s->ld != NULL)
    libdeflate_free_decompressor (s->ld);
#endif
#ifdef HAVE_ZSTD
  ZSTD_freeCCtx (s->zc);
  ZSTD_freeDCtx (s->zd);
#endif
  free (s);
}

static void
make_key (void)
{
  pthread_key_create (&state_key, free_state);
}

static struct codec_state *
get_state (void)
{
  struct codec_state *s;

  pthread_once (&state_once, make_key);
  s = pthread_getspecific (state_key);
  if (s == NULL) {
    s = calloc (1, sizeof *s);
    if (s == NULL) {
      sc_set_error (errno, "codec: out of memory");
      return NULL;
    }
    pthread_setspecific (state_key, s);
  }
  return s;
}

static pthread_once_t impl_once = PTHREAD_ONCE_INIT;
static enum deflate_impl deflate_impl;
static const char *deflate_impl_bad;     /* the unusable name, if any */

static enum deflate_impl
parse_impl (const char *name)
{
  if (strcmp (name, "zlib") == 0)
    return DEFLATE_ZLIB;
#ifdef HAVE_ISAL
  if (strcmp (name, "isal") == 0)
    return DEFLATE_ISAL;
#endif
  return DEFLATE_INVALID;
}

static void
read_impl_env (void)
{
  const char *e = getenv ("SPARSECOW_DEFLATE");

#ifdef HAVE_ISAL
  deflate_impl = DEFLATE_ISAL;
#else
  deflate_impl = DEFLATE_ZLIB;
#endif
  /* Empty means unset, as for most variables of this kind. */
  if (e != NULL && *e != '\0') {
    deflate_impl = parse_impl (e);
    if (deflate_impl == DEFLATE_INVALID)
      deflate_impl_bad = e;
  }
}

/* The implementation for this call, or -1 with the error set when
 * SPARSECOW_DEFLATE names one that this build does not have: a user who
 * asked for one implementation must not silently get the other.
 */
static int
get_impl (enum deflate_impl *impl)
{
  pthread_once (&impl_once, read_impl_env);
  if (deflate_impl == DEFLATE_INVALID) {
    sc_set_error (EINVAL, "SPARSECOW_DEFLATE=%s: expected zlib%s",
                  deflate_impl_bad ? deflate_impl_bad : "",
#ifdef HAVE_ISAL
                  " or isal"
#else
                  " (this build has no ISA-L)"
#endif
                  );
    return -1;
  }
  *impl = deflate_impl;
  return 0;
}

int
sc_deflate_select (const char *name)
{
  enum deflate_impl impl = parse_impl (name);

  pthread_once (&impl_once, read_impl_env);
  if (impl == DEFLATE_INVALID) {
    sc_set_error (EINVAL, "deflate implementation '%s' is not available",
                  name);
    return -1;
  }
  deflate_impl = impl;
  deflate_impl_bad = NULL;
  return 0;
}

const char *
sc_deflate_selected (void)
{
  enum deflate_impl impl;

  if (get_impl (&impl) == -1)
    return NULL;
  return impl == DEFLATE_ISAL ? "isal" : "zlib";
}

static ssize_t
deflate_cluster (struct codec_state *s, int level,
                 const void *in, size_t in_len, void *out, size_t out_len)
{
  bool tuned = level < 0;
  int r;

  if (tuned)
    level = SC_DEFLATE_DEFAULT_LEVEL;
  if (s->deflate_ready && (s->deflate_level != level
                           || s->deflate_tuned != tuned)) {
    deflateEnd (&s->deflate);
    s->deflate_ready = false;
  }
  if (!s->deflate_ready) {
    memset (&s->deflate, 0, sizeof s->deflate);
    if (deflateInit2 (&s->deflate, level, Z_DEFLATED,
                      QCOW2_DEFLATE_WINDOW_BITS, SC_DEFLATE_MEM_LEVEL,
                      Z_DEFAULT_STRATEGY) != Z_OK) {
      sc_set_error (ENOMEM, "deflate: cannot initialize (level %d)", level);
      return -1;
    }
    s->deflate_ready = true;
    s->deflate_level = level;
    s->deflate_tuned = tuned;
  }
  else if (deflateReset (&s->deflate) != Z_OK) {
    sc_set_error (EIO, "deflate: reset failed");
    return -1;
  }
  /* A reset puts the level's search parameters back: tune after it. */
  if (tuned
      && deflateTune (&s->deflate, SC_DEFLATE_DEFAULT_GOOD,
                      SC_DEFLATE_DEFAULT_LAZY, SC_DEFLATE_DEFAULT_NICE,
                      SC_DEFLATE_DEFAULT_CHAIN) != Z_OK) {
    sc_set_error (EIO, "deflate: cannot set the match search");
    return -1;
  }

  s->deflate.next_in = (Bytef *) in;
  s->deflate.avail_in = (uInt) in_len;
  s->deflate.next_out = out;
  s->deflate.avail_out = (uInt) out_len;
  r = deflate (&s->deflate, Z_FINISH);
  if (r == Z_STREAM_END) {
    size_t n = out_len - s->deflate.avail_out;
    return n < out_len ? (ssize_t) n : 0;
  }
  if (r == Z_OK || r == Z_BUF_ERROR)
    return 0;                   /* did not fit: store uncompressed */
  sc_set_error (EIO, "deflate: compression failed (%d)", r);
  return -1;
}

static int
inflate_cluster (struct codec_state *s, const void *in, size_t in_len,
                 void *out, size_t out_len)
{
  int r;

  if (!s->inflate_ready) {
    memset (&s->inflate, 0, sizeof s->inflate);
    if (inflateInit2 (&s->inflate, QCOW2_DEFLATE_WINDOW_BITS) != Z_OK) {
      sc_set_error (ENOMEM, "inflate: cannot initialize");
      return -1;
    }
    s->inflate_ready = true;
  }
  else if (inflateReset (&s->inflate) != Z_OK) {
    sc_set_error (EIO, "inflate: reset failed");
    return -1;
  }

  s->inflate.next_in = (Bytef *) in;
  s->inflate.avail_in = (uInt) in_len;
  s->inflate.next_out = out;
  s->inflate.avail_out = (uInt) out_len;
  r = inflate (&s->inflate, Z_FINISH);
  /* The input may run on into the next compressed cluster, so a full
   * output buffer is success whether or not the stream ended.
   */
  if ((r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK)
      && s->inflate.avail_out == 0)
    return 0;
  sc_set_error (EILSEQ, "compressed cluster does not decode to %zu bytes "
                "(deflate: %s)", out_len,
                s->inflate.msg ? s->inflate.msg : "truncated data");
  return -1;
}

#ifdef HAVE_ISAL
/* The igzip level for a sparsecow deflate level, or -1 where zlib
 * serves it better.  Each level gets the fastest igzip level whose
 * output is no larger than zlib's at that level; the default gets the
 * fastest whose image stays within 1.10 of qemu-img convert -c's.
 * Measured on the 64 KiB clusters of an ext4 image of /usr/share
 * (970 MB of data; data bytes rounded up to sectors, relative to zlib
 * level 6 with qemu's memLevel 9, CPU seconds of one core):
 *
 *   igzip 0  1.178  1.0 s     zlib 1  1.067  12.8 s
 *   igzip 1  1.057  1.2 s     zlib 2  1.053  12.9 s
 *   igzip 2  1.055  1.2 s     zlib 3  1.044  13.8 s
 *   igzip 3  1.035  2.1 s     zlib 4  1.013  14.7 s
 *                             zlib 6  1.000  34.2 s (memLevel 9)
 *
 * So the default and level 1 are igzip 1, levels 2 and 3 are igzip 3,
 * and levels 4-9 stay with zlib: no igzip level is as small as them.
 */
static int
isal_level (int level)
{
  if (level < 0)
    return SC_ISAL_DEFAULT_LEVEL;
  if (level == 1)
    return 1;
  if (level == 2 || level == 3)
    return 3;
  return -1;                    /* zlib's 0 (stored) and 4-9 */
}

static ssize_t
isal_deflate_cluster (struct codec_state *s, int ilevel,
                      const void *in, size_t in_len,
                      void *out, size_t out_len)
{
  struct isal_zstream *z;
  int r;

  if (in_len > UINT32_MAX || out_len > UINT32_MAX) {
    sc_set_error (EINVAL, "deflate: cluster of %zu bytes is too large",
                  in_len);
    return -1;
  }
  /* Zeroed once: igzip level 3 reads hash entries it has not written
   * yet, which valgrind reports.  The output does not depend on them:
   * a cluster compresses to the same bytes after other clusters and
   * from a buffer of any fill.
   */
  if (s->isal_deflate == NULL
      && (s->isal_deflate = calloc (1, sizeof *s->isal_deflate)) == NULL) {
    sc_set_error (errno, "deflate: out of memory");
    return -1;
  }
  if (s->isal_level_buf == NULL
      && (s->isal_level_buf = calloc (1, ISAL_DEF_LVL3_DEFAULT)) == NULL) {
    sc_set_error (errno, "deflate: out of memory");
    return -1;
  }
  z = s->isal_deflate;
  isal_deflate_stateless_init (z);
  z->level = (uint32_t) ilevel;
  z->level_buf = s->isal_level_buf;
  z->level_buf_size = ISAL_DEF_LVL3_DEFAULT;
  z->hist_bits = SC_ISAL_HIST_BITS;
  z->gzip_flag = IGZIP_DEFLATE;
  z->flush = NO_FLUSH;
  z->end_of_stream = 1;
  z->next_in = (uint8_t *) in;
  z->avail_in = (uint32_t) in_len;
  z->next_out = out;
  z->avail_out = (uint32_t) out_len;
  r = isal_deflate_stateless (z);
  if (r == COMP_OK) {
    size_t n = (size_t) (z->next_out - (uint8_t *) out);
    return n < out_len ? (ssize_t) n : 0;
  }
  if (r == STATELESS_OVERFLOW)
    return 0;                   /* did not fit: store uncompressed */
  sc_set_error (EIO, "deflate: igzip compression failed (%d)", r);
  return -1;
}

#ifndef HAVE_LIBDEFLATE
/* igzip decodes the cluster when the deflate stream ends exactly where
 * the cluster is full, which is how every well-formed cluster ends
 * (the bytes after it are sector padding or the next cluster).  Returns
 * 0 then, 1 for anything else: zlib decodes those and gives the
 * verdict, so that run-on streams, truncated data and corrupt data end
 * as they would with zlib alone.  One difference remains: igzip takes
 * a block whose Huffman code is incomplete (its Kraft sum below one),
 * which zlib refuses as "invalid literal/lengths set".  No encoder
 * writes one, so only a crafted cluster decodes here and fails in
 * qemu; proving a code complete would mean parsing every block header,
 * which is most of decoding.  In 240,000 random bit and byte errors in
 * clusters of eight kinds of data, both gave the same verdict and the
 * same bytes every time.
 */
static int
isal_inflate_cluster (struct codec_state *s, const void *in, size_t in_len,
                      void *out, size_t out_len)
{
  struct inflate_state *st;

  if (in_len > UINT32_MAX || out_len > UINT32_MAX)
    return 1;
  if (s->isal_inflate == NULL
      && (s->isal_inflate = malloc (sizeof *s->isal_inflate)) == NULL)
    return 1;                   /* zlib needs far less memory */
  st = s->isal_inflate;
  isal_inflate_init (st);
  st->crc_flag = ISAL_DEFLATE;
  /* No hist_bits here: igzip would refuse a block whose code table
   * merely lists distances beyond 4 KiB, which zlib accepts; distances
   * beyond the data decoded so far are refused either way.
   */
  st->next_in = (uint8_t *) in;
  st->avail_in = (uint32_t) in_len;
  st->next_out = out;
  st->avail_out = (uint32_t) out_len;
  if (isal_inflate_stateless (st) == ISAL_DECOMP_OK
      && st->block_state == ISAL_BLOCK_FINISH && st->avail_out == 0
      && (size_t) (st->next_out - (uint8_t *) out) == out_len)
    return 0;
  return 1;
}
#endif /* !HAVE_LIBDEFLATE */
#endif

#if defined HAVE_ISAL && defined HAVE_LIBDEFLATE
/* libdeflate decodes the cluster: 0 when the stream ends
 * exactly where the cluster is full, 1 for anything else, which zlib
 * then decodes and judges.  libdeflate, too, takes a few blocks whose
 * Huffman code is incomplete (no codeword at all, or a single one of
 * one bit) where zlib refuses some of them; no encoder writes such a
 * block.
 */
static int
ld_inflate_cluster (struct codec_state *s, const void *in, size_t in_len,
                    void *out, size_t out_len)
{
  size_t used_in, made;

  if (s->ld == NULL && (s->ld = libdeflate_alloc_decompressor ()) == NULL)
    return 1;                   /* zlib needs far less memory */
  if (libdeflate_deflate_decompress_ex (s->ld, in, in_len, out, out_len,
                                        &used_in, &made)
      == LIBDEFLATE_SUCCESS
      && made == out_len && used_in <= in_len)
    return 0;
  return 1;
}
#endif

#ifdef HAVE_ZSTD
/* qemu compresses every cluster at zstd's default level (3) with a
 * context of its own, one frame with the content size in its header.
 * The same parameters give the same bytes here; the context lives as
 * long as the thread and is set up once per level, so a cluster costs
 * only its compression: zstd keeps its match tables between frames and
 * moves its index on instead of clearing them.  (On 64 KiB clusters of
 * an ext4 image of /usr/share, level 3's match finder is 70% of the
 * compression time, and neither smaller tables nor minMatch 4 make it
 * faster: 4 is 0.25% smaller and 5% slower.)
 */
static ssize_t
zstd_cluster (struct codec_state *s, int level,
              const void *in, size_t in_len, void *out, size_t out_len)
{
  size_t r;

  if (level < 0)
    level = ZSTD_CLEVEL_DEFAULT;
  if (s->zc == NULL) {
    s->zc = ZSTD_createCCtx ();
    if (s->zc == NULL) {
      sc_set_error (ENOMEM, "zstd: cannot create a compression context");
      return -1;
    }
    s->zc_level = 0;            /* not a level anyone asks for */
  }
  if (s->zc_level != level) {
    r = ZSTD_CCtx_setParameter (s->zc, ZSTD_c_compressionLevel, level);
    if (ZSTD_isError (r)) {
      sc_set_error (EINVAL, "zstd: level %d: %s", level,
                    ZSTD_getErrorName (r));
      return -1;
    }
    s->zc_level = level;
  }
  /* One byte less than the cluster: output that does not shrink is
   * stored uncompressed.
   */
  r = ZSTD_compress2 (s->zc, out, out_len - 1, in, in_len);
  if (ZSTD_isError (r)) {
    if (ZSTD_getErrorCode (r) == ZSTD_error_dstSize_tooSmall)
      return 0;
    sc_set_error (EIO, "zstd: %s", ZSTD_getErrorName (r));
    return -1;
  }
  return (ssize_t) r;
}

static int
unzstd_cluster (struct codec_state *s, const void *in, size_t in_len,
                void *out, size_t out_len)
{
  ZSTD_inBuffer ib = { in, in_len, 0 };
  ZSTD_outBuffer ob = { out, out_len, 0 };

  if (s->zd == NULL && (s->zd = ZSTD_createDCtx ()) == NULL) {
    sc_set_error (ENOMEM, "zstd: cannot create a decompression context");
    return -1;
  }
  ZSTD_DCtx_reset (s->zd, ZSTD_reset_session_only);
  /* One or more frames; stop as soon as the cluster is full. */
  while (ob.pos < ob.size) {
    size_t before_in = ib.pos, before_out = ob.pos;
    size_t r = ZSTD_decompressStream (s->zd, &ob, &ib);
    if (ZSTD_isError (r)) {
      sc_set_error (EILSEQ, "compressed cluster does not decode (zstd: %s)",
                    ZSTD_getErrorName (r));
      return -1;
    }
    if (ib.pos == before_in && ob.pos == before_out) {
      sc_set_error (EILSEQ, "compressed cluster does not decode to %zu bytes "
                    "(zstd: truncated data)", out_len);
      return -1;
    }
  }
  return 0;
}
#endif

ssize_t
sc_compress (enum sc_codec codec, int level,
             const void *in, size_t in_len, void *out, size_t out_len)
{
  struct codec_state *s = get_state ();

  if (s == NULL)
    return -1;
  switch (codec) {
  case SC_CODEC_DEFLATE: {
    enum deflate_impl impl;
    if (get_impl (&impl) == -1)
      return -1;
#ifdef HAVE_ISAL
    if (impl == DEFLATE_ISAL && isal_level (level) >= 0)
      return isal_deflate_cluster (s, isal_level (level),
                                   in, in_len, out, out_len);
#endif
    return deflate_cluster (s, level, in, in_len, out, out_len);
  }
#ifdef HAVE_ZSTD
  case SC_CODEC_ZSTD:
    return zstd_cluster (s, level, in, in_len, out, out_len);
#endif
  default:
    sc_set_error (ENOTSUP, "compression type %d is not supported", codec);
    return -1;
  }
}

int
sc_decompress (enum sc_codec codec, const void *in, size_t in_len,
               void *out, size_t out_len)
{
  struct codec_state *s = get_state ();

  if (s == NULL)
    return -1;
  switch (codec) {
  case SC_CODEC_DEFLATE: {
    enum deflate_impl impl;
    if (get_impl (&impl) == -1)
      return -1;
#if defined HAVE_ISAL && defined HAVE_LIBDEFLATE
    if (impl == DEFLATE_ISAL
        && ld_inflate_cluster (s, in, in_len, out, out_len) == 0)
      return 0;
#elif defined HAVE_ISAL
    if (impl == DEFLATE_ISAL
        && isal_inflate_cluster (s, in, in_len, out, out_len) == 0)
      return 0;
#endif
    return inflate_cluster (s, in, in_len, out, out_len);
  }
#ifdef HAVE_ZSTD
  case SC_CODEC_ZSTD:
    return unzstd_cluster (s, in, in_len, out, out_len);
#endif
  default:
    sc_set_error (ENOTSUP, "compression type %d is not supported", codec);
    return -1;
  }
}

const char *
sc_codec_name (enum sc_codec codec)
{
  switch (codec) {
  case SC_CODEC_NONE: return "none";
  case SC_CODEC_DEFLATE: return "deflate";
  case SC_CODEC_ZSTD: return "zstd";
  }
  return "unknown";
}

int
sc_codec_parse (const char *name, enum sc_codec *codec)
{
  if (strcmp (name, "deflate") == 0 || strcmp (name, "zlib") == 0)
    *codec = SC_CODEC_DEFLATE;
#ifdef HAVE_ZSTD
  else if (strcmp (name, "zstd") == 0)
    *codec = SC_CODEC_ZSTD;
#endif
  else if (strcmp (name, "none") == 0)
    *codec = SC_CODEC_NONE;
  else {
    sc_set_error (EINVAL, "unknown compression type '%s'", name);
    return -1;
  }
  return 0;
}
