/* The content digest that pack embeds in an image and verify checks.
 *
 * Definition (also in sparsecow(1), DIGEST, so that anyone can
 * recompute it): the guest content of virtual size V bytes is cut into
 * blocks of B bytes (a power of two; the last block may be shorter).
 * A block whose bytes are all zero is a zero block; any other block is
 * hashed with SHA-256.  Going through the blocks in order, a byte
 * string S gets, for each maximal run of k zero blocks, the byte 0x00
 * and k as 8 bytes big-endian, and for each other block, the byte 0x01
 * and its 32-byte hash.  The digest is SHA-256 (S || V as 8 bytes
 * big-endian || B as 4 bytes big-endian).
 *
 * Blocks are hashed on the worker threads of the pipeline, in
 * parallel; only the short records of S are fed in order.  A hole of
 * any length is one record, so the cost follows the data, not the
 * virtual size, and a block of zeros written as data hashes as a hole
 * does: the digest is of the content, whatever the allocation.
 */
#include <config.h>

#include <pthread.h>
#include <string.h>

#include <openssl/evp.h>

#include "internal.h"

#define RECORD_ZERO_RUN 0x00
#define RECORD_BLOCK    0x01

static EVP_MD *sha256;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

/* One fetch of the algorithm for the life of the process: fetching it
 * per call takes a lock inside libcrypto, which every worker would
 * contend for.
 */
static void
fetch_sha256 (void)
{
  sha256 = EVP_MD_fetch (NULL, "SHA256", NULL);
}

static const EVP_MD *
get_sha256 (void)
{
  pthread_once (&sha256_once, fetch_sha256);
  if (sha256 == NULL)
    sc_set_error (ENOTSUP, "SHA-256 is not available from libcrypto");
  return sha256;
}

static int
crypto_error (const char *what)
{
  sc_set_error (EIO, "SHA-256: %s failed", what);
  return -1;
}

int
sc_digest_blocks (uint32_t block_size, const void *buf, uint64_t offset,
                  size_t len, uint64_t limit, struct sc_digest_block *out)
{
  const EVP_MD *md = get_sha256 ();
  const unsigned char *p = buf;
  EVP_MD_CTX *ctx;
  size_t n = SC_DIV_ROUND_UP (len, (size_t) block_size);
  int ret = -1;

  if (md == NULL)
    return -1;
  ctx = EVP_MD_CTX_new ();
  if (ctx == NULL) {
    sc_set_error (ENOMEM, "SHA-256: out of memory");
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    uint64_t start = offset + (uint64_t) i * block_size;
    /* Only the bytes below the virtual size belong to the block. */
    size_t bytes = start >= limit ? 0
      : (size_t) SC_MIN ((uint64_t) block_size, limit - start);
    const unsigned char *b = p + (size_t) i * block_size;
    unsigned int hlen;

    bytes = SC_MIN (bytes, len - (size_t) i * block_size);
    out[i].zero = sc_is_zero (b, bytes);
    if (out[i].zero)
      continue;
    if (EVP_DigestInit_ex2 (ctx, md, NULL) != 1
        || EVP_DigestUpdate (ctx, b, bytes) != 1
        || EVP_DigestFinal_ex (ctx, out[i].hash, &hlen) != 1) {
      crypto_error ("hashing a block");
      goto out;
    }
  }
  ret = 0;
 out:
  EVP_MD_CTX_free (ctx);
  return ret;
}

int
sc_digest_init (struct sc_digest *d, uint32_t block_size)
{
  memset (d, 0, sizeof *d);
  if (block_size == 0 || (block_size & (block_size - 1)) != 0) {
    sc_set_error (EINVAL, "digest block size %" PRIu32 " is not a power "
                  "of two", block_size);
    return -1;
  }
  d->block_size = block_size;
  return sc_sha256_init (&d->sha);
}

void
sc_digest_free (struct sc_digest *d)
{
  sc_sha256_free (&d->sha);
}

static int
flush_zero_run (struct sc_digest *d)
{
  unsigned char rec[1 + 8];

  if (d->zero_run == 0)
    return 0;
  rec[0] = RECORD_ZERO_RUN;
  sc_put_be64 (rec + 1, d->zero_run);
  d->zero_run = 0;
  return sc_sha256_update (&d->sha, rec, sizeof rec);
}

void
sc_digest_add_zero (struct sc_digest *d, uint64_t nblocks)
{
  d->zero_run += nblocks;
  d->blocks += nblocks;
}

int
sc_digest_add (struct sc_digest *d, const struct sc_digest_block *b,
               size_t n)
{
  static const unsigned char tag = RECORD_BLOCK;

  for (size_t i = 0; i < n; i++) {
    if (b[i].zero) {
      sc_digest_add_zero (d, 1);
      continue;
    }
    if (flush_zero_run (d) == -1)
      return -1;
    if (sc_sha256_update (&d->sha, &tag, 1) == -1
        || sc_sha256_update (&d->sha, b[i].hash, SC_DIGEST_LEN) == -1)
      return -1;
    d->blocks++;
  }
  return 0;
}

int
sc_digest_final (struct sc_digest *d, uint64_t virtual_size,
                 unsigned char out[SC_DIGEST_LEN])
{
  uint64_t want = SC_DIV_ROUND_UP (virtual_size, (uint64_t) d->block_size);
  unsigned char tail[8 + 4];

  /* The last pieces may run past the virtual size (to the end of a
   * cluster); what lies there reads as zeros and is not content.
   */
  if (d->blocks > want) {
    if (d->blocks - want > d->zero_run) {
      sc_set_error (EINVAL, "digest: data past the virtual size");
      return -1;
    }
    d->zero_run -= d->blocks - want;
    d->blocks = want;
  }
  if (d->blocks != want) {
    sc_set_error (EINVAL, "digest: %" PRIu64 " blocks hashed, %" PRIu64
                  " expected", d->blocks, want);
    return -1;
  }
  if (flush_zero_run (d) == -1)
    return -1;
  sc_put_be64 (tail, virtual_size);
  sc_put_be32 (tail + 8, d->block_size);
  if (sc_sha256_update (&d->sha, tail, sizeof tail) == -1)
    return -1;
  return sc_sha256_final (&d->sha, out);
}

int
sc_sha256_init (struct sc_sha256 *s)
{
  const EVP_MD *md = get_sha256 ();

  s->ctx = NULL;
  if (md == NULL)
    return -1;
  s->ctx = EVP_MD_CTX_new ();
  if (s->ctx == NULL) {
    sc_set_error (ENOMEM, "SHA-256: out of memory");
    return -1;
  }
  if (EVP_DigestInit_ex2 (s->ctx, md, NULL) != 1) {
    sc_sha256_free (s);
    return crypto_error ("starting a hash");
  }
  return 0;
}

int
sc_sha256_update (struct sc_sha256 *s, const void *buf, size_t len)
{
  if (len > 0 && EVP_DigestUpdate (s->ctx, buf, len) != 1)
    return crypto_error ("hashing");
  return 0;
}

int
sc_sha256_final (struct sc_sha256 *s, unsigned char out[SC_DIGEST_LEN])
{
  unsigned int hlen;
  int r = EVP_DigestFinal_ex (s->ctx, out, &hlen) == 1 ? 0 : -1;

  sc_sha256_free (s);
  return r == 0 ? 0 : crypto_error ("finishing a hash");
}

void
sc_sha256_free (struct sc_sha256 *s)
{
  EVP_MD_CTX_free (s->ctx);
  s->ctx = NULL;
}
