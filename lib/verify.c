/* verify: is the content of two sources the same, and does an image
 * still hold what the digest that pack embedded in it says?
 *
 * Both are runs of the ordered pipeline (copy.c) over an extent list
 * that this file builds a window at a time from the sources' own
 * extents: ranges that hold no data are pieces that are never read,
 * data is read by the workers in parallel, and the emit step, in guest
 * order, finds the first difference or feeds the digest.
 *
 * Comparing: the list merges both sides' extents.  Where neither side
 * has data nothing is read; where both do, the pipeline reads side A
 * and the worker reads side B beside it; where only B does, the worker
 * reads B instead of A (the pipeline's move step) and looks for a
 * non-zero byte.
 */
#include <config.h>

#include <pthread.h>
#include <string.h>

#include "internal.h"
#include "qcow2.h"

/* Pieces of data: large reads, two buffers of this per piece in
 * flight.
 */
#define VERIFY_REQUEST_SIZE (1024 * 1024)

/* Extents are asked for a window at a time, so that memory does not
 * grow with the fragmentation of the sources; the window grows while
 * it holds few extents and shrinks when it holds many, as the
 * pipeline's own windows do.
 */
#define FIRST_WINDOW ((uint64_t) 1024 * 1024 * 1024)
#define MIN_WINDOW ((uint64_t) 64 * 1024 * 1024)
#define FEW_EXTENTS 64
#define MANY_EXTENTS 4096

/* Which sides hold data in a range of the merged list: flags above the
 * SC_EXTENT_* bits, which the pipeline does not look at.
 */
#define SIDE_A 0x100
#define SIDE_B 0x200

#define NOT_DATA (SC_EXTENT_HOLE | SC_EXTENT_ZERO)

/* Look for zeros and differences this many bytes at a time (vectorised
 * by memcmp), then byte by byte inside the first block that has one.
 */
#define SCAN_BLOCK 4096

/* The smallest cluster of any image (qcow2's cluster_bits >= 9): a
 * compressed cluster that does not decode is looked for this finely.
 */
#define MIN_CLUSTER 512

static void
adapt_window (uint64_t *window, size_t nextents)
{
  if (nextents < FEW_EXTENTS && *window <= UINT64_MAX / 2)
    *window *= 2;
  else if (nextents > MANY_EXTENTS && *window / 2 >= MIN_WINDOW)
    *window /= 2;
}

/* Replace l with the extents of [pos, end) of ep, whose content ends at
 * size: what lies past it is a hole.
 */
static int
side_extents (struct sc_endpoint *ep, uint64_t size, uint64_t pos,
              uint64_t end, struct sc_extent_list *l)
{
  uint64_t from = SC_MAX (pos, size);

  l->len = 0;
  if (pos < size
      && sc_ep_extents_all (ep, pos, SC_MIN (end, size) - pos, l) == -1) {
    sc_error_name (ep->name);
    return -1;
  }
  if (end > from && sc_extent_list_append (l, from, end - from,
                                           SC_EXTENT_HOLE) == -1)
    return -1;
  return 0;
}

/* The flags of the extent of l that holds offset (l is sorted and
 * contiguous and holds it).
 */
static uint32_t
flags_at (const struct sc_extent_list *l, uint64_t offset)
{
  size_t lo = 0, hi = l->len;

  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (l->ext[mid].offset <= offset)
      lo = mid;
    else
      hi = mid;
  }
  return l->ext[lo].flags;
}

/* Index of the first non-zero byte of p, or len. */
static size_t
first_nonzero (const unsigned char *p, size_t len)
{
  size_t i;

  for (i = 0; i < len; i += SCAN_BLOCK)
    if (!sc_is_zero (p + i, SC_MIN ((size_t) SCAN_BLOCK, len - i)))
      break;
  if (i >= len)
    return len;
  while (p[i] == 0)
    i++;
  return i;
}

/* Index of the first byte where a and b differ, or len. */
static size_t
first_difference (const unsigned char *a, const unsigned char *b, size_t len)
{
  size_t i;

  if (memcmp (a, b, len) == 0)
    return len;
  for (i = 0; i < len; i += SCAN_BLOCK)
    if (memcmp (a + i, b + i, SC_MIN ((size_t) SCAN_BLOCK, len - i)) != 0)
      break;
  while (a[i] == b[i])
    i++;
  return i;
}

/* ---- comparing two sources ------------------------------------------- */

struct compare {
  struct sc_endpoint *a, *b;
  const struct sc_verify_opts *opts;
  const struct sc_extent_list *list;    /* the window being compared */
  uint64_t end;                         /* the larger size */
  /* B is read by the workers: one at a time if it is not thread-safe. */
  bool b_serial;
  pthread_mutex_t b_lock;
  /* Set by emit, in order: the first difference. */
  bool differ;
  uint64_t offset;
  /* Progress: the bytes compared so far, of those that either side
   * holds as data (counted before the comparison starts).
   */
  struct sc_progress prog;
};

/* Read len bytes of B at offset; past its end, zeros. */
static int
read_b (struct compare *c, void *buf, size_t len, uint64_t offset)
{
  struct sc_endpoint *b = c->b;
  size_t n = offset >= b->size ? 0
    : (size_t) SC_MIN ((uint64_t) len, b->size - offset);
  int r = 0;

  if (n > 0) {
    if (c->b_serial)
      pthread_mutex_lock (&c->b_lock);
    r = sc_ep_pread (b, buf, n, offset);
    if (c->b_serial)
      pthread_mutex_unlock (&c->b_lock);
    if (r == -1) {
      sc_error_name (b->name);
      return -1;
    }
  }
  memset ((char *) buf + n, 0, len - n);
  return 0;
}

/* piece->user: 0 when the piece is the same on both sides, else one
 * more than the index of the first byte that differs.
 */
static void
set_result (struct sc_piece *piece, size_t index)
{
  piece->user = index < piece->length ? (uint64_t) index + 1 : 0;
}

/* Where only B holds data, B is read in place of A and must be zeros;
 * elsewhere the pipeline reads A as usual.
 */
static int
compare_move (struct sc_piece *piece, void *opaque)
{
  struct compare *c = opaque;

  if (flags_at (c->list, piece->offset) & SIDE_A)
    return 1;
  if (read_b (c, piece->buf, piece->length, piece->offset) == -1)
    return -1;
  set_result (piece, first_nonzero (piece->buf, piece->length));
  return 0;
}

/* A was read into buf: compare it with B, or with zeros. */
static int
compare_work (struct sc_piece *piece, void *opaque)
{
  struct compare *c = opaque;

  if (flags_at (c->list, piece->offset) & SIDE_B) {
    if (read_b (c, piece->out, piece->length, piece->offset) == -1)
      return -1;
    set_result (piece, first_difference (piece->buf, piece->out,
                                         piece->length));
  }
  else
    set_result (piece, first_nonzero (piece->buf, piece->length));
  return 0;
}

static int
compare_emit (struct sc_piece *piece, void *opaque)
{
  struct compare *c = opaque;

  if (piece->flags == 0 && piece->user != 0) {
    c->differ = true;
    c->offset = piece->offset + piece->user - 1;
    /* Stops the run; sc_verify tells this from an error by differ. */
    sc_set_error (ECANCELED, "the contents differ");
    return -1;
  }
  if (c->opts->progress && piece->flags == 0) {
    c->prog.done += piece->length;
    /* Extents that changed since they were counted must not show more
     * than 100%.
     */
    if (c->prog.done > c->prog.total)
      c->prog.total = c->prog.done;
    c->opts->progress (&c->prog, c->opts->progress_opaque);
  }
  return 0;
}

/* Merge the extents of A and B over [pos, end) into out: SIDE_A and
 * SIDE_B where either holds data, a hole where neither does.
 */
static int
merge_sides (const struct sc_extent_list *a, const struct sc_extent_list *b,
             uint64_t pos, uint64_t end, struct sc_extent_list *out)
{
  size_t i = 0, j = 0;

  out->len = 0;
  while (pos < end) {
    uint64_t ea, eb, stop;
    uint32_t flags = 0;

    while (i < a->len && a->ext[i].offset + a->ext[i].length <= pos)
      i++;
    while (j < b->len && b->ext[j].offset + b->ext[j].length <= pos)
      j++;
    if (i == a->len || j == b->len) {
      sc_set_error (EIO, "extents do not cover offset %" PRIu64, pos);
      return -1;
    }
    ea = a->ext[i].offset + a->ext[i].length;
    eb = b->ext[j].offset + b->ext[j].length;
    stop = SC_MIN (SC_MIN (ea, eb), end);
    if (!(a->ext[i].flags & NOT_DATA))
      flags |= SIDE_A;
    if (!(b->ext[j].flags & NOT_DATA))
      flags |= SIDE_B;
    if (sc_extent_list_append (out, pos, stop - pos,
                               flags ? flags : SC_EXTENT_HOLE) == -1)
      return -1;
    pos = stop;
  }
  return 0;
}

/* The bytes of l that hold data. */
static uint64_t
data_bytes (const struct sc_extent_list *l)
{
  uint64_t n = 0;

  for (size_t i = 0; i < l->len; i++)
    if (!(l->ext[i].flags & NOT_DATA))
      n += l->ext[i].length;
  return n;
}

/* The total of the progress count: the bytes that either side holds as
 * data, found in a first pass over the extents of both a window at a
 * time, as the comparison will ask them.  What only one side holds is
 * read there and what both hold is read on both sides at once, so each
 * such byte costs about the same; holes on both sides cost nothing and
 * a count that included them would jump over them.
 */
static int
count_compared (struct compare *c, struct sc_extent_list *la,
                struct sc_extent_list *lb, struct sc_extent_list *merged,
                uint64_t *total)
{
  uint64_t pos = 0, window = FIRST_WINDOW;

  *total = 0;
  while (pos < c->end) {
    uint64_t wend = c->end - pos > window ? pos + window : c->end;

    if (side_extents (c->a, c->a->size, pos, wend, la) == -1
        || side_extents (c->b, c->b->size, pos, wend, lb) == -1
        || merge_sides (la, lb, pos, wend, merged) == -1)
      return -1;
    *total += data_bytes (merged);
    adapt_window (&window, merged->len);
    pos = wend;
  }
  return 0;
}

int
sc_verify (struct sc_endpoint *a, struct sc_endpoint *b,
           const struct sc_verify_opts *opts_in,
           struct sc_verify_result *result)
{
  struct sc_verify_opts defaults = { 0 };
  const struct sc_verify_opts *opts = opts_in ? opts_in : &defaults;
  struct compare c = { .a = a, .b = b, .opts = opts };
  struct sc_extent_list la, lb, merged;
  uint32_t request_size = VERIFY_REQUEST_SIZE;
  unsigned threads = opts->threads ? opts->threads : sc_online_cpus ();
  uint64_t pos = 0, window = FIRST_WINDOW;
  int ret = -1;

  memset (result, 0, sizeof *result);
  if ((a->flags & SC_EP_STREAM) || (b->flags & SC_EP_STREAM)) {
    sc_set_error (ESPIPE, "%s: a stream cannot be compared: it is read "
                  "once, in order", (a->flags & SC_EP_STREAM)
                  ? a->name : b->name);
    return -1;
  }
  c.end = SC_MAX (a->size, b->size);
  result->sizes_differ = a->size != b->size;
  if (opts->strict && result->sizes_differ) {
    result->offset = SC_MIN (a->size, b->size);
    return 1;
  }
  /* A server that answers each request after a delay is kept busy. */
  threads = SC_MAX (threads, b->queue_depth);
  sc_pipeline_fit (a, &request_size, &threads);
  sc_pipeline_fit (b, &request_size, &threads);
  c.b_serial = !(b->flags & SC_EP_THREAD_SAFE);
  pthread_mutex_init (&c.b_lock, NULL);
  sc_extent_list_init (&la);
  sc_extent_list_init (&lb);
  sc_extent_list_init (&merged);

  if (opts->progress) {
    if (count_compared (&c, &la, &lb, &merged, &c.prog.total) == -1)
      goto out;
    opts->progress (&c.prog, opts->progress_opaque);
  }
  while (pos < c.end) {
    uint64_t wend = c.end - pos > window ? pos + window : c.end;
    struct sc_pipeline p = {
      .src = a,
      .extents = &merged,
      .request_size = request_size,
      .threads = threads,
      .out_size = request_size,
      .move = compare_move,
      .work = compare_work,
      .emit = compare_emit,
      .opaque = &c,
    };

    if (side_extents (a, a->size, pos, wend, &la) == -1
        || side_extents (b, b->size, pos, wend, &lb) == -1
        || merge_sides (&la, &lb, pos, wend, &merged) == -1)
      goto out;
    c.list = &merged;
    if (data_bytes (&merged) > 0 && sc_pipeline_run (&p) == -1) {
      if (!c.differ)
        goto out;
      result->offset = c.offset;
      ret = 1;
      goto out;
    }
    adapt_window (&window, merged.len);
    pos = wend;
  }
  /* Equal: all is compared, also where the extents changed since they
   * were counted and less was found.
   */
  if (opts->progress && c.prog.done < c.prog.total) {
    c.prog.done = c.prog.total;
    opts->progress (&c.prog, opts->progress_opaque);
  }
  ret = 0;

 out:
  sc_extent_list_free (&la);
  sc_extent_list_free (&lb);
  sc_extent_list_free (&merged);
  pthread_mutex_destroy (&c.b_lock);
  return ret;
}

/* ---- the embedded digest ----------------------------------------------- */

struct find_digest {
  bool found;
  struct qcow2_sc_digest d;
};

static int
digest_extension (void *opaque, uint32_t type, const unsigned char *data,
                  uint32_t len, uint64_t pos)
{
  struct find_digest *f = opaque;

  (void) pos;
  if (type != QCOW2_EXT_SC_DIGEST)
    return 0;
  if (f->found) {
    sc_set_error (EINVAL, "two digest header extensions");
    return -1;
  }
  if (qcow2_sc_digest_decode (data, len, &f->d) == -1)
    return -1;
  f->found = true;
  return 0;
}

struct rehash {
  struct sc_endpoint *ep;
  struct sc_digest dg;
  uint32_t block_size;
  uint32_t cluster_size;        /* of the image (its top layer) */
  uint64_t size;
  const struct sc_verify_opts *opts;
  /* Set by emit, in order: the first compressed cluster whose stored
   * bytes do not decode.
   */
  bool damaged;
  uint64_t damaged_at;
  /* Progress: the bytes of data hashed so far, of all there is. */
  struct sc_progress prog;
};

/* Bytes [offset, offset+len) of the guest into buf; 1 when they hold a
 * compressed cluster that does not decode, 0 when read, -1 on another
 * error.
 */
static int
read_guest (struct rehash *h, unsigned char *buf, size_t len,
            uint64_t offset)
{
  if (sc_ep_pread (h->ep, buf, len, offset) == 0)
    return 0;
  if (sc_error_errno () == EILSEQ)
    return 1;
  sc_error_name (h->ep->name);
  return -1;
}

/* The piece's n bytes at buf do not all decode: the guest offset of
 * the first MIN_CLUSTER bytes whose cluster (of whichever layer of the
 * chain holds it) does not decode, found a cluster of the image at a
 * time and then MIN_CLUSTER bytes at a time inside the first cluster
 * that fails.  Every part of such a cluster fails, so that part is where
 * the cluster starts, unless it starts before the piece, in a piece
 * that fails first.  UINT64_MAX if all of it reads now.
 */
static int
find_damage (struct rehash *h, struct sc_piece *piece, size_t n,
             uint64_t *at)
{
  uint64_t end = piece->offset + n, pos = piece->offset;
  unsigned char *buf = piece->buf;

  *at = UINT64_MAX;
  while (pos < end) {
    uint64_t stop = SC_MIN (SC_ROUND_DOWN (pos, (uint64_t) h->cluster_size)
                            + h->cluster_size, end);
    int r = read_guest (h, buf + (pos - piece->offset),
                        (size_t) (stop - pos), pos);

    if (r == -1)
      return -1;
    if (r == 1)
      break;
    pos = stop;
  }
  while (pos < end) {
    uint64_t stop = SC_MIN (SC_ROUND_DOWN (pos, (uint64_t) MIN_CLUSTER)
                            + MIN_CLUSTER, end);
    int r = read_guest (h, buf + (pos - piece->offset),
                        (size_t) (stop - pos), pos);

    if (r == -1)
      return -1;
    if (r == 1) {
      *at = pos;
      return 0;
    }
    pos = stop;
  }
  return 0;
}

/* Read a data piece (the bytes past the content read as zeros) and
 * hash its blocks.  A compressed cluster whose stored bytes do not
 * decode is content that is no longer what was packed, not an error:
 * the piece carries where it is (piece->user, one more than the
 * offset) for emit, which reports the first in guest order.
 */
static int
rehash_move (struct sc_piece *piece, void *opaque)
{
  struct rehash *h = opaque;
  size_t n = piece->offset >= h->size ? 0
    : (size_t) SC_MIN (piece->length, h->size - piece->offset);
  int r = n > 0 ? read_guest (h, piece->buf, n, piece->offset) : 0;

  piece->user = 0;
  if (r == -1)
    return -1;
  if (r == 1) {
    uint64_t at;

    if (find_damage (h, piece, n, &at) == -1)
      return -1;
    if (at != UINT64_MAX) {
      piece->user = at + 1;
      return 0;
    }
  }
  memset ((unsigned char *) piece->buf + n, 0, piece->length - n);
  if (sc_digest_blocks (h->block_size, piece->buf, piece->offset,
                        piece->length, h->size, piece->out) == -1)
    return -1;
  return 0;
}

static int
rehash_emit (struct sc_piece *piece, void *opaque)
{
  struct rehash *h = opaque;
  uint64_t n = SC_DIV_ROUND_UP (piece->length, (uint64_t) h->block_size);

  if (piece->flags == 0 && piece->user != 0) {
    h->damaged = true;
    h->damaged_at = piece->user - 1;
    /* Stops the run; rehash tells this from an error by damaged. */
    sc_set_error (ECANCELED, "a compressed cluster does not decode");
    return -1;
  }
  /* Every piece starts and ends on a block boundary (or at the end of
   * the content, in its last block).
   */
  if (piece->flags != 0)
    sc_digest_add_zero (&h->dg, n);
  else if (sc_digest_add (&h->dg, piece->out, (size_t) n) == -1)
    return -1;
  if (h->opts->progress && piece->flags == 0) {
    h->prog.done += piece->length;
    if (h->prog.done > h->prog.total)
      h->prog.total = h->prog.done;
    h->opts->progress (&h->prog, h->opts->progress_opaque);
  }
  return 0;
}

/* Replace out with the extents of [pos, end) of ep (content of size
 * bytes), data extents rounded out to whole blocks: pos and end are
 * block-aligned (end may lie past size, in the last block).
 */
static int
block_extents (struct sc_endpoint *ep, uint64_t size, uint32_t block_size,
               uint64_t pos, uint64_t end, struct sc_extent_list *raw,
               struct sc_extent_list *out)
{
  uint64_t done = pos;

  if (side_extents (ep, size, pos, end, raw) == -1)
    return -1;
  out->len = 0;
  for (size_t i = 0; i < raw->len; i++) {
    const struct sc_extent *e = &raw->ext[i];
    uint64_t start, stop;

    if (e->flags & NOT_DATA)
      continue;
    start = SC_MAX (SC_ROUND_DOWN (e->offset, block_size), done);
    stop = SC_MIN (SC_ROUND_UP (e->offset + e->length, block_size), end);
    if (stop <= start)
      continue;
    if (sc_extent_list_append (out, done, start - done, SC_EXTENT_HOLE) == -1
        || sc_extent_list_append (out, start, stop - start, 0) == -1)
      return -1;
    done = stop;
  }
  return sc_extent_list_append (out, done, end - done, SC_EXTENT_HOLE);
}

/* Hash the guest content of ep (an image of clusters of cluster_size)
 * as the digest d was made: 0, 1 when a compressed cluster does not
 * decode (*damaged_at: where, in the guest), -1 on error.
 */
static int
rehash (struct sc_endpoint *ep, uint32_t cluster_size,
        const struct qcow2_sc_digest *d, const struct sc_verify_opts *opts,
        unsigned char out[SC_DIGEST_LEN], uint64_t *damaged_at)
{
  struct rehash h = { .ep = ep, .block_size = d->block_size,
                      .cluster_size = cluster_size, .size = ep->size,
                      .opts = opts };
  struct sc_extent_list raw, list;
  uint32_t request_size = SC_MAX ((uint32_t) VERIFY_REQUEST_SIZE,
                                  d->block_size);
  unsigned threads = opts->threads ? opts->threads : sc_online_cpus ();
  uint64_t end = SC_ROUND_UP (ep->size, (uint64_t) d->block_size);
  uint64_t pos = 0, window = FIRST_WINDOW;
  int ret = -1;

  sc_pipeline_fit (ep, &request_size, &threads);
  if (request_size < d->block_size) {
    sc_set_error (ENOTSUP, "%s takes requests of at most %" PRIu32
                  " bytes, less than a digest block", ep->name,
                  request_size);
    return -1;
  }
  if (sc_digest_init (&h.dg, d->block_size) == -1)
    return -1;
  sc_extent_list_init (&raw);
  sc_extent_list_init (&list);
  /* Only data is read and hashed (a hole is a run of zero blocks added
   * at once): the count is of the data, found in a first pass over the
   * extents as the hashing will ask them.
   */
  if (opts->progress) {
    for (uint64_t at = 0, w = FIRST_WINDOW; at < end;) {
      uint64_t wend = end - at > w ? at + w : end;

      if (block_extents (ep, ep->size, d->block_size, at, wend, &raw,
                         &list) == -1)
        goto out;
      h.prog.total += data_bytes (&list);
      adapt_window (&w, list.len);
      at = wend;
    }
    opts->progress (&h.prog, opts->progress_opaque);
  }
  while (pos < end) {
    /* Windows of whole blocks: the window is a multiple of them. */
    uint64_t wend = end - pos > window ? pos + window : end;
    struct sc_pipeline p = {
      .src = ep,
      .extents = &list,
      .request_size = request_size,
      .threads = threads,
      .out_size = (request_size / d->block_size)
                  * sizeof (struct sc_digest_block),
      .move = rehash_move,
      .emit = rehash_emit,
      .opaque = &h,
    };

    if (block_extents (ep, ep->size, d->block_size, pos, wend, &raw,
                       &list) == -1)
      goto out;
    if (sc_pipeline_run (&p) == -1) {
      if (h.damaged) {
        *damaged_at = h.damaged_at;
        ret = 1;
      }
      goto out;
    }
    adapt_window (&window, list.len);
    pos = wend;
  }
  if (sc_digest_final (&h.dg, ep->size, out) == -1)
    goto out;
  if (opts->progress && h.prog.done < h.prog.total) {
    h.prog.done = h.prog.total;
    opts->progress (&h.prog, opts->progress_opaque);
  }
  ret = 0;
 out:
  sc_extent_list_free (&raw);
  sc_extent_list_free (&list);
  sc_digest_free (&h.dg);
  return ret;
}

static int
file_read (void *opaque, uint64_t offset, size_t len, void *buf)
{
  return sc_ep_pread (opaque, buf, len, offset);
}

int
sc_verify_digest (struct sc_endpoint *file,
                  const struct sc_verify_opts *opts_in,
                  struct sc_verify_result *result)
{
  struct sc_verify_opts defaults = { 0 };
  const struct sc_verify_opts *opts = opts_in ? opts_in : &defaults;
  struct qcow2_header h;
  struct find_digest f = { .found = false };
  struct sc_qcow2 *q = NULL;
  struct sc_endpoint *guest = NULL;
  int ret = -1;

  memset (result, 0, sizeof *result);
  if (file == NULL || (file->flags & SC_EP_STREAM)) {
    sc_set_error (file ? ESPIPE : EINVAL, "verify needs a seekable image");
    return -1;
  }
  if (qcow2_header_read (file, file->size, true, &h) == -1) {
    sc_error_name (file->name);
    return -1;
  }
  if (qcow2_header_extensions (file, file->size, &h, false,
                               digest_extension, &f) == -1)
    goto out;
  if (!f.found) {
    sc_set_error (ENODATA, "the image holds no digest (pack stores one "
                  "with -c or --digest, in images of version 3)");
    goto out;
  }
  result->block_size = f.d.block_size;
  result->digest_size = f.d.size;
  memcpy (result->stored, f.d.sha256, sizeof result->stored);
  /* A version 2 header has no autoclear bits: such a digest cannot
   * show that it is current.
   */
  if (h.version < 3 || !(h.autoclear_features & QCOW2_AUTOCLEAR_SC_DIGEST)) {
    ret = 2;
    goto out;
  }
  /* A resize clears the autoclear bit too, but not one by a qemu that
   * opened the image read-only and then writable (qemu-io -r -c
   * 'reopen -w' -c truncate): within the size its L1 table covers, the
   * tables stay as they were.  Another virtual size is then such a
   * resize, as changed tables are such a write (below).
   */
  if (h.size != f.d.size) {
    result->sizes_differ = true;
    result->offset = h.size;
    ret = 2;
    goto out;
  }
  /* qemu keeps the bit when it opens an image read-only and then makes
   * it writable (qemu-img commit into it, a block job): what it wrote
   * shows in the L1 and L2 tables whenever it allocated or moved a
   * cluster, which a write into a compressed cluster or a hole does.
   */
  if (f.d.has_map) {
    unsigned char map[32];

    if (qcow2_map_fingerprint (&h, file->size, file_read, file, map) == -1)
      goto out;
    if (memcmp (map, f.d.map, sizeof map) != 0) {
      result->mapping_changed = true;
      ret = 2;
      goto out;
    }
  }
  q = sc_qcow2_open_endpoint (file, NULL);
  if (q == NULL)
    goto out;
  guest = sc_qcow2_endpoint (q);
  if (guest == NULL)
    goto out;
  ret = rehash (guest, h.cluster_size, &f.d, opts, result->computed,
                &result->offset);
  if (ret == 1) {
    unsigned char byte;

    /* The reason, as a read of that cluster gives it (a worker found
     * it), for the caller to show.
     */
    result->damaged = true;
    memset (result->computed, 0, sizeof result->computed);
    if (sc_ep_pread (guest, &byte, 1, result->offset) == 0)
      sc_set_error (EILSEQ, "a compressed cluster at offset %" PRIu64
                    " does not decode", result->offset);
    goto out;
  }
  if (ret == -1)
    goto out;
  ret = memcmp (result->computed, f.d.sha256, SC_DIGEST_LEN) == 0 ? 0 : 1;

 out:
  /* Every error names the image once, whichever layer found it. */
  if (ret == -1)
    sc_error_name (file->name);
  if (guest)
    sc_ep_close (guest);
  if (q)
    sc_qcow2_close (q);
  qcow2_header_free (&h);
  return ret;
}
