/* unpack: a qcow2 image's guest data -> a target endpoint.
 *
 * An image on a seekable endpoint is opened with the reader and copied
 * by the engine (sc_copy) from its guest view; an image on a stream is
 * decoded as it goes by (qcow2-stream.c).  Both write through the same
 * sink rules, and both leave the commit to the caller.
 *
 * The read-back check (sc_unpack_verify) runs the engine once more over
 * the guest view and compares every piece with what each target holds.
 */
#include <config.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "qcow2.h"
#include "bmap.h"

/* The engine's pieces for a local target.  A worker decodes a piece
 * and writes it to the target while it is still in its core's cache;
 * with 256 KiB pieces instead of the engine's 1 MiB, unpacking the
 * 4 GiB ext4 workload took 0.64 (deflate) and 0.69 (zstd) of the time
 * on a loaded machine of two cores, for the same CPU time, and the
 * uncompressed image no longer.  Never less than a cluster: a piece
 * that holds part of a compressed cluster costs the decoding of all of
 * it.  A server's target keeps the larger requests: there each one is
 * a round trip; and so does a target written with -S N (see below).
 */
#define UNPACK_REQUEST_SIZE (256 * 1024)

/* Open the guest view of a seekable image: 0, or -1 with the error set
 * and named.
 */
static int
open_guest (struct sc_endpoint *image, const struct sc_unpack_opts *opts,
            struct sc_qcow2 **q, struct sc_endpoint **guest)
{
  struct sc_qcow2_open_opts qopts = { 0 };

  qopts.snapshot = opts->snapshot;
  qopts.no_external_files = opts->no_external_files;
  qopts.force_share = opts->force_share;
  *guest = NULL;
  *q = sc_qcow2_open_endpoint (image, &qopts);
  if (*q == NULL) {
    sc_error_prefix ("%s", image->name);
    return -1;
  }
  *guest = sc_qcow2_endpoint (*q);
  if (*guest == NULL) {
    sc_error_prefix ("%s", image->name);
    sc_qcow2_close (*q);
    *q = NULL;
    return -1;
  }
  return 0;
}

/* With the ranges of a bmap checked before the copy, one count over
 * both passes: the check the first half, the copy the second, of the
 * copy's own total (so that a caller's count, --verify's, is as
 * without the check).
 */
struct halves {
  sc_progress_fn fn;
  void *opaque;
  uint64_t total;               /* the copy's */
  uint64_t last;
  bool second;
};

static void
halves_progress (const struct sc_progress *p, void *opaque)
{
  struct halves *h = opaque;
  uint64_t half = h->total / 2;
  uint64_t span = h->second ? h->total - half : half;
  uint64_t base = h->second ? half : 0;
  struct sc_progress q = { .total = h->total };

  if (p->total == 0 || p->done >= p->total)
    q.done = base + span;
  else
    q.done = base + (uint64_t) ((double) p->done / (double) p->total
                                * (double) span);
  q.done = SC_MIN (SC_MAX (q.done, h->last), h->total);
  h->last = q.done;
  h->fn (&q, h->opaque);
}

/* Are the zero ranges of target member ep read back?  Not those that
 * --zero=skip left as they were.
 */
static bool
zeros_read_back (const struct sc_endpoint *ep)
{
  return ep->zero_mode != SC_TARGET_ZERO_SKIP
         || (ep->flags & SC_EP_FRESH_ZEROS);
}

static bool
any_zeros_read_back (struct sc_endpoint *dst)
{
  for (size_t i = 0; i < sc_tee_count (dst); i++) {
    struct sc_endpoint *ep = sc_tee_member (dst, i);

    if (ep && zeros_read_back (ep))
      return true;
  }
  return false;
}

/* With opts->verify_follows, the writing and the read-back are one
 * count: what the writing counts (the guest's data, or all of it where
 * holes are written as zeros: sc_sink_zero_is_written), then what the
 * read-back counts (the data, or all of the guest where zero ranges
 * are read back), each as its pipeline counts it, and the total holds
 * both from the start.
 */
struct both_progress {
  sc_progress_fn fn;
  void *opaque;
  uint64_t before;              /* counted by the writing (read-back) */
  uint64_t after;               /* left for the read-back (writing) */
};

static void
both_progress (const struct sc_progress *p, void *opaque)
{
  struct both_progress *b = opaque;
  struct sc_progress q;

  if (SC_ADD_OVERFLOW (b->before, p->done, &q.done))
    q.done = UINT64_MAX;
  if (SC_ADD_OVERFLOW (b->before, p->total, &q.total)
      || SC_ADD_OVERFLOW (q.total, b->after, &q.total))
    q.total = UINT64_MAX;
  b->fn (&q, b->opaque);
}

/* The counts of the writing (*write) and of the read-back (*verify) of
 * src into dst.  0, or -1 with the error set and named.
 */
static int
both_totals (struct sc_endpoint *src, struct sc_endpoint *dst,
             uint64_t *write, uint64_t *verify)
{
  bool write_all = sc_sink_zero_is_written (dst);
  bool verify_all = any_zeros_read_back (dst);
  uint64_t data = 0;

  if ((!write_all || !verify_all) && sc_count_data (src, &data) == -1)
    return -1;
  *write = write_all ? src->size : data;
  *verify = verify_all ? src->size : data;
  return 0;
}

/* -S N decided as qemu-img convert decides it (sc_sparse_decide): the
 * guest's runs as qemu's block status gives them, cut to the top
 * image's clusters, and the ranges to write listed as extents of flags
 * 0 between holes.
 */
struct guest_sparse {
  struct sc_qcow2 *q;
  uint64_t size;
  struct sc_extent_list writes;
};

static int
guest_status (void *opaque, uint64_t offset, uint64_t max, uint64_t *len,
              bool *data)
{
  struct guest_sparse *g = opaque;

  return qcow2_chain_run (g->q, offset, SC_MIN (max, g->size - offset),
                          len, data);
}

static int
guest_write (void *opaque, uint64_t start, uint64_t end)
{
  struct sc_extent_list *l = &((struct guest_sparse *) opaque)->writes;
  uint64_t listed = l->len ? l->ext[l->len - 1].offset
                             + l->ext[l->len - 1].length : 0;

  if (start < listed || end <= start) {
    sc_set_error (EIO, "a range to write at %" PRIu64 " is out of order",
                  start);
    return -1;
  }
  if (sc_extent_list_append (l, listed, start - listed, SC_EXTENT_HOLE)
      == -1)
    return -1;
  return sc_extent_list_append (l, start, end - start, 0);
}

int
sc_unpack (struct sc_endpoint *image, struct sc_endpoint *dst,
           const struct sc_unpack_opts *opts)
{
  struct halves halves = { 0 };
  struct guest_sparse gs = { 0 };
  struct both_progress both = { 0 };
  struct sc_unpack_opts none = { 0 };
  struct sc_copy_opts copts = { 0 };
  struct sc_endpoint *src, *checked = NULL;
  struct sc_qcow2 *q;
  int r = -1;

  if (opts == NULL)
    opts = &none;
  /* -S: what the sink leaves sparse, on either path. */
  dst->min_sparse = opts->min_sparse;
  dst->allocate = opts->allocate_all;
  if (image->flags & SC_EP_STREAM) {
    if (opts->bmap) {
      sc_set_error (ESPIPE, "%s: a bmap cannot be used with an image read "
                    "from a stream", image->name);
      return -1;
    }
    if (opts->snapshot) {
      sc_set_error (EINVAL, "%s: a snapshot cannot be read from a stream",
                    image->name);
      return -1;
    }
    return qcow2_unpack_stream (image, dst, opts->progress,
                                opts->progress_opaque);
  }

  if (open_guest (image, opts, &q, &src) == -1)
    return -1;
  /* With a block map, the guest is read through it: only its ranges,
   * each checked against its checksum.
   */
  if (opts->bmap) {
    checked = bmap_checked_source (src, opts->bmap, true);
    if (checked == NULL)
      goto out;
  }
  /* With --verify following, the writing and the read-back are one
   * count from the start; the check of a bmap's ranges, when it comes
   * first, counts as the first half of the writing.
   */
  if (opts->progress && opts->verify_follows) {
    uint64_t write;

    if (both_totals (checked ? checked : src, dst, &write, &both.after)
        == -1)
      goto out;
    both.fn = opts->progress;
    both.opaque = opts->progress_opaque;
  }
  /* A target written in place keeps whatever was written before a
   * range turned out to differ: all ranges are read and checked first.
   */
  if (checked && opts->bmap_check_first) {
    struct sc_endpoint *first = bmap_checked_source (src, opts->bmap, true);

    if (first == NULL)
      goto out;
    /* The copy's total: the ranges' bytes, or all with -S 0. */
    if (opts->progress) {
      uint64_t data = 0;

      for (size_t i = 0; i < opts->bmap->nb_ranges; i++) {
        uint64_t start, end;

        bmap_range_bytes (opts->bmap, i, &start, &end);
        data += end - start;
      }
      halves = (struct halves) {
        .fn = both.fn ? both_progress : opts->progress,
        .opaque = both.fn ? (void *) &both : opts->progress_opaque,
        .total = dst->allocate ? first->size : data,
      };
      bmap_checked_progress (first, halves_progress, &halves);
    }
    r = bmap_checked_finish (first);
    sc_ep_close (first);
    if (r == -1)
      goto out;
    r = -1;
  }
  /* Through a bmap, the target is the bmap's image: the raw file the
   * image was packed from, not rounded up to whole sectors.
   */
  if (sc_ep_set_size (dst, (checked ? checked : src)->size) == -1) {
    sc_error_name (dst->name);
    goto out;
  }
  copts.threads = opts->threads;
  /* A target whose zero ranges are left alone still gets every byte of
   * the data ranges, zeros included: only what the image maps as data
   * is written, and all of it.
   */
  copts.detect_zeroes = dst->zero_mode != SC_TARGET_ZERO_SKIP
                        || (dst->flags & SC_EP_FRESH_ZEROS);
  /* -S N into a target that reads as zero (or an export that may turn
   * out to): qemu-img convert judges the zeros of each of its buffers,
   * 2 MiB from the start of each run of the guest's data, which the
   * pieces of the copy do not follow; what it writes is decided first,
   * reading the guest's data once more, and the sink looks it up.
   * Through a bmap, each piece of the copy is judged on its own.
   */
  if (dst->min_sparse && !dst->allocate && !checked && copts.detect_zeroes
      && (dst->flags & (SC_EP_FRESH_ZEROS | SC_EP_REMOTE))
      && src->size > 0) {
    gs.q = q;
    gs.size = src->size;
    if (sc_sparse_decide (src, dst->min_sparse,
                          qcow2_chain_cluster_size (q), guest_status,
                          guest_write, &gs) == -1) {
      sc_error_name (src->name);
      goto out;
    }
    dst->sparse_writes = &gs.writes;
  }
  /* Pieces of 1 MiB where -S N judges each on its own (through a bmap),
   * as qemu-img convert judges each of its requests.
   */
  if (!(dst->flags & SC_EP_REMOTE)
      && (dst->min_sparse == 0 || dst->sparse_writes))
    copts.request_size = SC_MAX ((uint32_t) UNPACK_REQUEST_SIZE,
                                 src->block_size);
  copts.progress = opts->progress;
  copts.progress_opaque = opts->progress_opaque;
  if (both.fn) {
    copts.progress = both_progress;
    copts.progress_opaque = &both;
  }
  if (halves.fn) {
    halves.second = true;
    copts.progress = halves_progress;
    copts.progress_opaque = &halves;
  }
  /* Errors of the copy name the endpoint concerned. */
  r = sc_copy (checked ? checked : src, dst, &copts);
  if (r == 0 && checked)
    r = bmap_checked_finish (checked);

 out:
  dst->sparse_writes = NULL;
  sc_extent_list_free (&gs.writes);
  if (checked)
    sc_ep_close (checked);
  sc_ep_close (src);
  sc_qcow2_close (q);
  return r;
}

/* ---- sc_unpack_verify ------------------------------------------------ */

#define VERIFY_REQUEST (1024 * 1024)

/* The extent map of a file read back is asked a window at a time: the
 * window doubles while it holds few extents and halves while it holds
 * many, so that a hole of terabytes takes a few calls and a file
 * fragmented in 4 KiB blocks a list of at most some MiB.
 */
#define READ_BACK_WINDOW ((uint64_t) 1024 * 1024 * 1024)
#define READ_BACK_MIN_WINDOW ((uint64_t) 64 * 1024 * 1024)
#define READ_BACK_FEW 64
#define READ_BACK_MANY 4096

struct verify_member {
  struct sc_endpoint *ep;       /* NULL: not read (failed before) */
  uint64_t bad;                 /* first differing offset, or UINT64_MAX */
  bool read_failed;             /* bad is where a read failed */
  int err;
  char msg[512];
};

struct verify_state {
  struct sc_endpoint *dst;
  size_t n;
  struct verify_member *m;
  pthread_mutex_t lock;         /* bad, read_failed, err, msg */
  void *zbuf;                   /* emit's buffer for zero ranges */
};

/* Has member i still to look at [offset, ...)?  A difference found
 * further on does not stop an earlier piece from being compared, so
 * the offset kept is the first.
 */
static bool
wanted (struct verify_state *vs, size_t i, uint64_t offset)
{
  bool r;

  if (vs->m[i].ep == NULL)
    return false;
  pthread_mutex_lock (&vs->lock);
  r = offset < vs->m[i].bad;
  pthread_mutex_unlock (&vs->lock);
  return r;
}

static void
found (struct verify_state *vs, size_t i, uint64_t offset, bool read_error)
{
  struct verify_member *m = &vs->m[i];

  pthread_mutex_lock (&vs->lock);
  if (offset < m->bad) {
    m->bad = offset;
    m->read_failed = read_error;
    if (read_error) {
      m->err = sc_error_errno ();
      snprintf (m->msg, sizeof m->msg, "%s", sc_error_message ());
    }
  }
  pthread_mutex_unlock (&vs->lock);
}

/* Compare member i at offset with want (NULL: zeros), len bytes, using
 * buf (len bytes) to read into.
 */
static void
compare (struct verify_state *vs, size_t i, const unsigned char *want,
         unsigned char *buf, size_t len, uint64_t offset)
{
  if (sc_ep_pread (vs->m[i].ep, buf, len, offset) == -1) {
    sc_error_prefix ("read back at offset %" PRIu64, offset);
    found (vs, i, offset, true);
    return;
  }
  if (want ? memcmp (buf, want, len) == 0 : sc_is_zero (buf, len))
    return;
  for (size_t k = 0; k < len; k++)
    if (buf[k] != (want ? want[k] : 0)) {
      found (vs, i, offset + k, false);
      return;
    }
}

/* Compare member i over [offset, offset+length) with want (NULL:
 * zeros), VERIFY_REQUEST bytes at a time, using buf (as many bytes) to
 * read into.
 */
static void
compare_all (struct verify_state *vs, size_t i, const unsigned char *want,
             unsigned char *buf, uint64_t offset, uint64_t length)
{
  for (uint64_t pos = 0; pos < length; pos += VERIFY_REQUEST) {
    size_t len = (size_t) SC_MIN ((uint64_t) VERIFY_REQUEST, length - pos);

    if (!wanted (vs, i, offset + pos))
      return;
    compare (vs, i, want ? want + pos : NULL, buf, len, offset + pos);
  }
}

/* The same for a member whose holes read as zero by definition (a
 * regular file, SC_EP_HOLES_READ_ZERO): its extent map, asked after
 * the flush, tells where it holds data, and only that is read; what
 * it calls a hole is compared with want without reading it.  A sparse
 * file of 16 TiB holding a few clusters is so read back in a few
 * system calls, where reading its holes took hours.  The map is asked
 * a window at a time, so that the memory it takes does not grow with
 * the fragmentation of the file.
 */
static void
compare_mapped (struct verify_state *vs, size_t i, const unsigned char *want,
                unsigned char *buf, uint64_t offset, uint64_t length)
{
  struct sc_endpoint *ep = vs->m[i].ep;
  struct sc_extent_list l;
  uint64_t pos = offset, end = offset + length;
  uint64_t window = READ_BACK_WINDOW;

  sc_extent_list_init (&l);
  while (pos < end && wanted (vs, i, pos)) {
    uint64_t wend = end - pos > window ? pos + window : end;

    l.len = 0;
    if (sc_ep_extents_all (ep, pos, wend - pos, &l) == -1) {
      sc_error_prefix ("extents of the read-back at offset %" PRIu64, pos);
      found (vs, i, pos, true);
      break;
    }
    for (size_t k = 0; k < l.len; k++) {
      const struct sc_extent *e = &l.ext[k];
      const unsigned char *w = want ? want + (e->offset - offset) : NULL;

      if (!(e->flags & (SC_EXTENT_HOLE | SC_EXTENT_ZERO)))
        compare_all (vs, i, w, buf, e->offset, e->length);
      else if (w && !sc_is_zero (w, (size_t) e->length)) {
        size_t z = 0;

        while (w[z] == 0)
          z++;
        found (vs, i, e->offset + z, false);
      }
      if (!wanted (vs, i, e->offset + e->length))
        break;
    }
    if (l.len < READ_BACK_FEW && window <= UINT64_MAX / 2)
      window *= 2;
    else if (l.len > READ_BACK_MANY && window / 2 >= READ_BACK_MIN_WINDOW)
      window /= 2;
    pos = wend;
  }
  sc_extent_list_free (&l);
}

/* Compare member i over [offset, offset+length) with want (NULL:
 * zeros; else length bytes), using buf (VERIFY_REQUEST bytes).
 */
static void
compare_range (struct verify_state *vs, size_t i, const unsigned char *want,
               unsigned char *buf, uint64_t offset, uint64_t length)
{
  if (vs->m[i].ep->flags & SC_EP_HOLES_READ_ZERO)
    compare_mapped (vs, i, want, buf, offset, length);
  else
    compare_all (vs, i, want, buf, offset, length);
}

static int
verify_work (struct sc_piece *piece, void *opaque)
{
  struct verify_state *vs = opaque;

  for (size_t i = 0; i < vs->n; i++)
    if (wanted (vs, i, piece->offset))
      compare_range (vs, i, piece->buf, piece->out, piece->offset,
                     piece->length);
  return 0;
}

/* Zero ranges reach emit only (they carry no buffer): read them back
 * here, a request at a time (of a file, only where it holds data).
 */
static int
verify_emit (struct sc_piece *piece, void *opaque)
{
  struct verify_state *vs = opaque;

  if (!(piece->flags & (SC_EXTENT_HOLE | SC_EXTENT_ZERO)))
    return 0;
  for (size_t i = 0; i < vs->n; i++) {
    struct sc_endpoint *ep = vs->m[i].ep;

    /* Left as they were on purpose. */
    if (ep == NULL || !zeros_read_back (ep))
      continue;
    if (wanted (vs, i, piece->offset))
      compare_range (vs, i, NULL, vs->zbuf, piece->offset, piece->length);
  }
  return 0;
}

int
sc_unpack_verify (struct sc_endpoint *image, struct sc_endpoint *dst,
                  const struct sc_unpack_opts *opts)
{
  struct sc_unpack_opts none = { 0 };
  struct verify_state vs = { .dst = dst };
  struct sc_pipeline p = { 0 };
  struct both_progress both = { 0 };
  struct sc_endpoint *src = NULL, *checked = NULL;
  struct sc_qcow2 *q = NULL;
  size_t left = 0;
  int r = -1;

  if (opts == NULL)
    opts = &none;
  if (image->flags & SC_EP_STREAM) {
    sc_set_error (ESPIPE, "%s: an image read from a stream cannot be read "
                  "again to verify the target", image->name);
    return -1;
  }
  vs.n = sc_tee_count (dst);
  vs.m = calloc (vs.n, sizeof *vs.m);
  vs.zbuf = malloc (VERIFY_REQUEST);
  pthread_mutex_init (&vs.lock, NULL);
  if (vs.m == NULL || vs.zbuf == NULL) {
    sc_set_error (errno, "out of memory");
    goto out;
  }
  for (size_t i = 0; i < vs.n; i++) {
    vs.m[i].ep = sc_tee_member (dst, i);
    vs.m[i].bad = UINT64_MAX;
    if (vs.m[i].ep && vs.m[i].ep->ops->pread == NULL) {
      sc_set_error (ENOTSUP, "%s: cannot be read back to verify it",
                    vs.m[i].ep->name);
      goto out;
    }
  }
  if (open_guest (image, opts, &q, &src) == -1)
    goto out;
  /* What unpack wrote from a block map: its ranges, the rest holes. */
  if (opts->bmap && (checked = bmap_checked_source (src, opts->bmap, true))
      == NULL)
    goto out;

  p.src = checked ? checked : src;
  /* A file read through its extent map: what lies past its end would
   * be a hole there, so a file that lost its tail is found by reading
   * its last byte.
   */
  for (size_t i = 0; i < vs.n && p.src->size > 0; i++)
    if (vs.m[i].ep && (vs.m[i].ep->flags & SC_EP_HOLES_READ_ZERO)) {
      unsigned char byte;

      if (sc_ep_pread (vs.m[i].ep, &byte, 1, p.src->size - 1) == -1) {
        sc_error_prefix ("read back at offset %" PRIu64, p.src->size - 1);
        found (&vs, i, p.src->size - 1, true);
      }
    }
  p.request_size = VERIFY_REQUEST;
  p.out_size = VERIFY_REQUEST;
  p.threads = opts->threads;
  p.work = verify_work;
  p.emit = verify_emit;
  p.opaque = &vs;
  p.progress = opts->progress;
  p.progress_opaque = opts->progress_opaque;
  /* Zero ranges that are read back (by verify_emit) cost a read as
   * data does: they count, in pieces of under 1% of the total, so that
   * the count moves over them too.  Where only files read them back,
   * through their extent maps, a hole costs next to nothing and the
   * pieces need no upper bound.
   */
  p.count_all = any_zeros_read_back (dst);
  p.cheap_holes = true;
  for (size_t i = 0; i < vs.n; i++)
    if (vs.m[i].ep && zeros_read_back (vs.m[i].ep)
        && !(vs.m[i].ep->flags & SC_EP_HOLES_READ_ZERO))
      p.cheap_holes = false;
  if (opts->progress && opts->verify_follows) {
    uint64_t verify;

    if (both_totals (p.src, dst, &both.before, &verify) == -1)
      goto out;
    both.fn = opts->progress;
    both.opaque = opts->progress_opaque;
    p.progress = both_progress;
    p.progress_opaque = &both;
  }
  if (sc_pipeline_run (&p) == -1)
    goto out;

  /* Members that differ leave the tee; the call fails when none is
   * left (or for a target that is not a tee, when it differs).
   */
  for (size_t i = 0; i < vs.n; i++) {
    struct verify_member *m = &vs.m[i];

    if (m->ep == NULL)
      continue;
    if (m->bad == UINT64_MAX) {
      left++;
      continue;
    }
    if (m->read_failed)
      sc_set_error (m->err, "%s: verify: %s", m->ep->name, m->msg);
    else
      sc_set_error (EIO, "%s: verify: differs from the image at offset %"
                    PRIu64, m->ep->name, m->bad);
    sc_tee_fail (dst, i);
  }
  if (left > 0)
    r = 0;
  else if (vs.n > 1)
    sc_set_error (EIO, "%s: every target failed", dst->name);

 out:
  if (checked)
    sc_ep_close (checked);
  sc_ep_close (src);
  if (q)
    sc_qcow2_close (q);
  pthread_mutex_destroy (&vs.lock);
  free (vs.zbuf);
  free (vs.m);
  return r;
}
