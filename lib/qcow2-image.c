/* The image a pack plan describes, as a source endpoint: pack writes
 * it to its target with sc_copy, as every command moves data.
 *
 * Its bytes are those of the qcow2 file: the header and the tables are
 * made from the plan (qcow2-plan.c) as they are read, uncompressed
 * clusters come from the source at their guest offsets, and the rest
 * of the data area (compressed clusters and their padding, or all of
 * it when the source could be read only once) from the spill file that
 * the scan filled.  The image has no holes, so the extents are the
 * default: all data.
 *
 * copy_to sends a range that lies wholly in the source, or wholly in
 * the spill file, to the target inside the kernel.  A range that mixes
 * them or holds metadata is declined: read into one buffer and written
 * once, it costs less than a copy per piece of it.
 */
#include <config.h>

#include <string.h>

#include "internal.h"
#include "qcow2.h"

/* Uncompressed clusters that follow each other both in the data area
 * and in the source.
 */
struct run {
  uint64_t rel;                 /* in the data area */
  uint64_t guest;               /* in the source */
  uint64_t length;
};

struct image_ep {
  struct sc_endpoint ep;        /* first: the vtable sees this */
  const struct qcow2_plan *plan;
  struct sc_endpoint *src;      /* NULL: everything is in the spill */
  int spill_fd;                 /* -1: no spill file */
  /* Sorted by rel, and by guest too (the plan places uncompressed
   * clusters in guest order): one per run, so memory follows the
   * source's fragmentation, at worst one per stored cluster as the
   * plan's own L2 entries.
   */
  struct run *runs;
  size_t nb_runs;
};

/* Where the bytes at rel of the data area come from. */
enum place {
  PLACE_SOURCE,                 /* the source, at *guest */
  PLACE_SPILL,                  /* the spill file, at rel */
};

/* What lies at rel of the data area, and for how many bytes from there
 * (*len, at most max).
 */
static enum place
place_at (const struct image_ep *im, uint64_t rel, uint64_t max,
          uint64_t *len, uint64_t *guest)
{
  size_t lo = 0, hi = im->nb_runs;

  /* The first run that ends after rel. */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (im->runs[mid].rel + im->runs[mid].length <= rel)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < im->nb_runs && im->runs[lo].rel <= rel) {
    const struct run *r = &im->runs[lo];
    *guest = r->guest + (rel - r->rel);
    *len = SC_MIN (max, r->rel + r->length - rel);
    return PLACE_SOURCE;
  }
  *len = lo < im->nb_runs ? SC_MIN (max, im->runs[lo].rel - rel) : max;
  return PLACE_SPILL;
}

/* Read len bytes of the source at guest; past its end, zeros (the last
 * cluster may run past it).
 */
static int
read_source (struct image_ep *im, unsigned char *buf, uint64_t len,
             uint64_t guest)
{
  struct sc_endpoint *src = im->src;
  uint64_t n = guest >= src->size ? 0 : SC_MIN (len, src->size - guest);

  if (n > 0 && sc_ep_pread (src, buf, n, guest) == -1) {
    sc_error_name (src->name);
    return -1;
  }
  memset (buf + n, 0, len - n);
  return 0;
}

static int
read_spill (struct image_ep *im, unsigned char *buf, uint64_t len,
            uint64_t rel)
{
  if (im->spill_fd < 0)
    memset (buf, 0, len);
  else if (sc_full_pread (im->spill_fd, buf, len, rel) == -1) {
    sc_error_prefix ("spill file");
    return -1;
  }
  return 0;
}

static int
image_pread (struct sc_endpoint *ep, void *buf, size_t count,
             uint64_t offset)
{
  struct image_ep *im = (struct image_ep *) ep;
  const struct qcow2_plan *p = im->plan;
  uint64_t cs = p->h.cluster_size;
  unsigned char *b = buf;
  CLEANUP_FREE unsigned char *cluster = NULL;
  /* Metadata after the data area: the refcount table of plan->rt_last. */
  uint64_t meta_after = p->rt_last ? p->h.refcount_table_offset : UINT64_MAX;
  uint64_t data_bytes = SC_ROUND_UP (p->data_end, QCOW2_COMPRESSED_SECTOR);
  uint64_t end, pos, n, guest;

  if (SC_ADD_OVERFLOW (offset, (uint64_t) count, &end) || end > ep->size) {
    sc_set_error (EINVAL, "read beyond the end of the image");
    return -1;
  }
  for (pos = offset; pos < end; pos += n) {
    int r;

    if (pos < p->data_offset || pos >= meta_after) {
      /* Metadata, made a cluster at a time. */
      uint64_t skip = pos % cs;

      n = SC_MIN (end - pos, cs - skip);
      if (n == cs)
        r = qcow2_plan_metadata (p, pos / cs, b + (pos - offset));
      else {
        if (cluster == NULL && (cluster = malloc (cs)) == NULL) {
          sc_set_error (errno, "out of memory");
          return -1;
        }
        r = qcow2_plan_metadata (p, pos / cs, cluster);
        if (r == 0)
          memcpy (b + (pos - offset), cluster + skip, n);
      }
    }
    else {
      uint64_t rel = pos - p->data_offset;

      if (rel >= data_bytes) {
        /* The rest of the last cluster of the data area, before a
         * refcount table that follows it.
         */
        n = SC_MIN (end, meta_after) - pos;
        memset (b + (pos - offset), 0, n);
        r = 0;
      }
      else if (place_at (im, rel, SC_MIN (end - pos, data_bytes - rel), &n,
                         &guest) == PLACE_SOURCE)
        r = read_source (im, b + (pos - offset), n, guest);
      else
        r = read_spill (im, b + (pos - offset), n, rel);
    }
    if (r == -1)
      return -1;
  }
  return 0;
}

static int
image_copy_to (struct sc_endpoint *ep, uint64_t offset,
               struct sc_endpoint *dst, uint64_t dst_off, uint64_t count,
               unsigned flags)
{
  struct image_ep *im = (struct image_ep *) ep;
  const struct qcow2_plan *p = im->plan;
  uint64_t rel, pos, n, guest;

  if (offset < p->data_offset
      || (p->rt_last && offset + count > p->h.refcount_table_offset))
    return SC_COPY_DECLINED;
  rel = offset - p->data_offset;
  if (place_at (im, rel, count, &n, &guest) == PLACE_SPILL) {
    if (n < count || im->spill_fd < 0)
      return SC_COPY_DECLINED;
    return sc_ep_copy_fd_range (im->spill_fd, "spill file", rel, dst,
                                dst_off, count, flags);
  }

  /* Only source bytes, which may lie in several runs one after the
   * other in the image, none reaching past the end of the source (the
   * zeros there are not in the source file).
   */
  for (pos = 0; pos < count; pos += n)
    if (place_at (im, rel + pos, count - pos, &n, &guest) != PLACE_SOURCE
        || guest + n > im->src->size)
      return SC_COPY_DECLINED;
  for (pos = 0; pos < count; pos += n) {
    int r;

    place_at (im, rel + pos, count - pos, &n, &guest);
    r = sc_ep_copy_range (im->src, guest, dst, dst_off + pos, n, flags);
    /* The first copy tells whether this pair can; a later refusal
     * leaves the range to the caller, who writes it whole again.
     */
    if (r != 0)
      return r;
  }
  return 0;
}

static int
image_close (struct sc_endpoint *ep)
{
  free (((struct image_ep *) ep)->runs);
  sc_ep_free (ep);
  return 0;
}

/* Find the runs of uncompressed clusters: count them into *nb, and
 * fill runs too when it is not NULL.
 */
static void
find_runs (const struct qcow2_plan *p, struct run *runs, size_t *nb)
{
  uint64_t cs = p->h.cluster_size;
  uint64_t gc = 0, rel, len;
  bool compressed;
  size_t n = 0;
  struct run last = { 0, 0, 0 };

  while (qcow2_plan_next (p, &gc, &rel, &len, &compressed)) {
    uint64_t guest = (gc - 1) * cs;

    if (compressed)
      continue;
    if (last.length > 0 && guest == last.guest + last.length
        && rel == last.rel + last.length) {
      last.length += cs;
      continue;
    }
    if (last.length > 0 && runs)
      runs[n - 1] = last;
    last = (struct run) { rel, guest, cs };
    n++;
  }
  if (last.length > 0 && runs)
    runs[n - 1] = last;
  *nb = n;
}

static const struct sc_endpoint_ops image_ops = {
  .kind = "qcow2-image",
  .pread = image_pread,
  .copy_to = image_copy_to,
  .close = image_close,
};

struct sc_endpoint *
qcow2_image_endpoint (const struct qcow2_plan *plan, struct sc_endpoint *src,
                      int spill_fd, const char *name)
{
  struct image_ep *im;

  if (!plan->laid_out) {
    sc_set_error (EINVAL, "qcow2 plan read before its layout");
    return NULL;
  }
  im = sc_ep_new (sizeof *im, &image_ops, name);
  if (im == NULL)
    return NULL;
  im->plan = plan;
  im->src = src;
  im->spill_fd = spill_fd;
  im->ep.size = plan->file_size;
  im->ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE;
  if (src) {
    find_runs (plan, NULL, &im->nb_runs);
    if (im->nb_runs > 0) {
      im->runs = malloc (im->nb_runs * sizeof *im->runs);
      if (im->runs == NULL) {
        sc_set_error (errno, "out of memory");
        image_close (&im->ep);
        return NULL;
      }
      find_runs (plan, im->runs, &im->nb_runs);
    }
    /* Reads of the image are reads of the source. */
    if (!(src->flags & SC_EP_THREAD_SAFE))
      im->ep.flags &= ~SC_EP_THREAD_SAFE;
    im->ep.max_request = src->max_request;
    im->ep.max_in_flight = src->max_in_flight;
    im->ep.queue_depth = src->queue_depth;
  }
  return &im->ep;
}
