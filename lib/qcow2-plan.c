/* The qcow2 layout planner and metadata serialiser: plan an image in
 * guest order, lay out its metadata in front of the data, and produce
 * the metadata cluster by cluster.
 *
 * The file layout is always: header cluster, refcount table, refcount
 * blocks, L1 table, L2 tables (in L1 order), data (in guest order,
 * except that a compressed cluster may fill the rest of a host cluster
 * in front of uncompressed clusters placed just before it).  Compressed
 * clusters are packed byte by byte and may straddle host clusters, as
 * qemu packs them; uncompressed clusters start on a cluster boundary.  Because the data area starts on a cluster
 * boundary, its shape does not depend on where it starts, so the whole
 * plan is made with data offsets relative to the data area and only
 * shifted when the metadata is written out.
 */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "qcow2.h"

/* The L1 entries a virtual size needs, refused past the L1 cap. */
static int
l1_size_for (uint64_t virtual_size, uint32_t cluster_bits, uint64_t *l1_size)
{
  uint64_t cluster_size = 1ULL << cluster_bits;
  uint64_t guest_clusters = virtual_size / cluster_size
    + (virtual_size % cluster_size != 0);

  *l1_size = SC_DIV_ROUND_UP (guest_clusters,
                              cluster_size / QCOW2_L2E_SIZE);
  if (*l1_size > QCOW2_MAX_L1_BYTES / QCOW2_L2E_SIZE) {
    sc_set_error (EFBIG, "virtual size %" PRIu64 " needs an L1 table "
                  "larger than %u bytes at cluster size %" PRIu64 "%s",
                  virtual_size, QCOW2_MAX_L1_BYTES, cluster_size,
                  cluster_bits < QCOW2_MAX_CLUSTER_BITS
                  ? " (use larger clusters)" : "");
    return -1;
  }
  return 0;
}

int
qcow2_plan_init (struct qcow2_plan *p, unsigned version,
                 uint32_t cluster_bits, unsigned refcount_order,
                 enum sc_codec codec, uint64_t virtual_size)
{
  struct qcow2_header *h = &p->h;
  uint64_t cluster_size, l1_size;

  memset (p, 0, sizeof *p);
  if (version != 2 && version != 3) {
    sc_set_error (EINVAL, "qcow2 version must be 2 or 3, not %u", version);
    return -1;
  }
  if (cluster_bits < QCOW2_MIN_CLUSTER_BITS
      || cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
    sc_set_error (EINVAL, "cluster size must be a power of two from %u "
                  "to %u bytes", 1U << QCOW2_MIN_CLUSTER_BITS,
                  1U << QCOW2_MAX_CLUSTER_BITS);
    return -1;
  }
  if (refcount_order > QCOW2_MAX_REFCOUNT_ORDER) {
    sc_set_error (EINVAL, "refcount width must be 1, 2, 4, 8, 16, 32 "
                  "or 64 bits");
    return -1;
  }
  if (version == 2 && refcount_order != QCOW2_V2_REFCOUNT_ORDER) {
    sc_set_error (EINVAL, "compat=0.10 (version 2) images have 16-bit "
                  "refcounts only");
    return -1;
  }
  if (codec == SC_CODEC_ZSTD && version == 2) {
    sc_set_error (EINVAL, "zstd compression needs compat=1.1 (version 3)");
    return -1;
  }
  if (virtual_size > INT64_MAX) {
    sc_set_error (EFBIG, "virtual size %" PRIu64 " is too large",
                  virtual_size);
    return -1;
  }

  cluster_size = 1ULL << cluster_bits;
  if (l1_size_for (virtual_size, cluster_bits, &l1_size) == -1)
    return -1;

  h->version = version;
  h->cluster_bits = cluster_bits;
  h->cluster_size = (uint32_t) cluster_size;
  h->size = virtual_size;
  h->l1_size = (uint32_t) l1_size;
  h->l2_entry_size = QCOW2_L2E_SIZE;
  h->l2_entries = (uint32_t) (cluster_size / QCOW2_L2E_SIZE);
  h->refcount_order = refcount_order;
  h->refcount_bits = 1U << refcount_order;
  h->refcount_max = h->refcount_bits == 64
    ? UINT64_MAX : (1ULL << h->refcount_bits) - 1;
  h->header_length = version == 2
    ? QCOW2_V2_HEADER_SIZE : QCOW2_V3_HEADER_SIZE;
  if (codec == SC_CODEC_ZSTD) {
    h->compression_type = QCOW2_COMPRESSION_ZSTD;
    h->incompatible_features |= QCOW2_INCOMPAT_COMPRESSION;
  }
  p->refcount_cap = SC_MIN (h->refcount_max, (uint64_t) UINT32_MAX);
  p->last_l1 = UINT64_MAX;
  return 0;
}

int
qcow2_plan_grow (struct qcow2_plan *p, uint64_t virtual_size)
{
  uint64_t l1_size;

  if (p->laid_out) {
    sc_set_error (EINVAL, "the virtual size cannot change after layout");
    return -1;
  }
  if (virtual_size <= p->h.size)
    return 0;
  if (virtual_size > INT64_MAX) {
    sc_set_error (EFBIG, "virtual size %" PRIu64 " is too large",
                  virtual_size);
    return -1;
  }
  if (l1_size_for (virtual_size, p->h.cluster_bits, &l1_size) == -1)
    return -1;
  p->h.l1_size = (uint32_t) l1_size;
  p->h.size = virtual_size;
  return 0;
}

void
qcow2_plan_free (struct qcow2_plan *p)
{
  free (p->runs);
  free (p->cdesc);
  free (p->hosts);
  free (p->crefs);
  free (p->l2_order);
  memset (p, 0, sizeof *p);
}

/* Make room for need (at least 1) elements of size elem in arr
 * (capacity *cap): the array to use from now on, or NULL with the
 * error set and arr unchanged.
 */
static void *
grow_array (void *arr, size_t *cap, size_t need, size_t elem)
{
  size_t n = *cap ? *cap : 64;
  void *a;

  if (need <= *cap)
    return arr;
  while (n < need) {
    if (n > SIZE_MAX / 2 / elem) {
      sc_set_error (ENOMEM, "out of memory for the image plan");
      return NULL;
    }
    n *= 2;
  }
  a = realloc (arr, n * elem);
  if (a == NULL) {
    sc_set_error (errno, "out of memory for the image plan");
    return NULL;
  }
  *cap = n;
  return a;
}

/* Whether guest cluster gc may be added next, with room for one more
 * run (and one more compressed descriptor): checked before the plan
 * changes, so that a failure leaves it as it was.
 */
static int
check_next (struct qcow2_plan *p, uint64_t gc, bool compressed)
{
  struct qcow2_plan_run *runs;
  uint64_t *cdesc;

  if (gc < p->next_guest_cluster || gc / p->h.l2_entries >= p->h.l1_size) {
    sc_set_error (EINVAL, "cluster %" PRIu64 " added out of order or "
                  "beyond the virtual size", gc);
    return -1;
  }
  runs = grow_array (p->runs, &p->runs_cap, p->nb_runs + 1, sizeof *runs);
  if (runs == NULL)
    return -1;
  p->runs = runs;
  if (compressed) {
    cdesc = grow_array (p->cdesc, &p->cdesc_cap, p->nb_cdesc + 1,
                        sizeof *cdesc);
    if (cdesc == NULL)
      return -1;
    p->cdesc = cdesc;
  }
  return 0;
}

/* Record guest cluster gc (checked by check_next): the next cluster of
 * the last run when it continues it, else a new run.  value is the
 * relative data offset, or the index of the compressed descriptor.
 */
static void
add_entry (struct qcow2_plan *p, uint64_t gc, bool compressed, uint64_t value)
{
  struct qcow2_plan_run *last = p->nb_runs > 0
    ? &p->runs[p->nb_runs - 1] : NULL;
  uint64_t step = compressed ? 1 : p->h.cluster_size;
  uint64_t l1_index = gc / p->h.l2_entries;

  if (l1_index != p->last_l1) {
    p->nb_l2++;
    p->last_l1 = l1_index;
  }
  p->next_guest_cluster = gc + 1;
  if (last && last->compressed == compressed && last->count < UINT32_MAX
      && last->gc + last->count == gc
      && last->value + last->count * step == value) {
    last->count++;
    return;
  }
  p->runs[p->nb_runs++] = (struct qcow2_plan_run) {
    .gc = gc, .value = value, .count = 1, .compressed = compressed,
  };
}

/* The index of the first run that ends after guest cluster gc (nb_runs:
 * none).
 */
static size_t
run_from (const struct qcow2_plan *p, uint64_t gc)
{
  size_t lo = 0, hi = p->nb_runs;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (p->runs[mid].gc + p->runs[mid].count <= gc)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* The relative L2 entry of guest cluster gc inside run r. */
static uint64_t
run_entry (const struct qcow2_plan *p, const struct qcow2_plan_run *r,
           uint64_t gc)
{
  uint64_t i = gc - r->gc;

  if (r->compressed)
    return p->cdesc[r->value + i];
  /* COPIED marks the entry as used even at relative offset 0; the
   * offset is shifted to its absolute place when written.
   */
  return (r->value + i * p->h.cluster_size) | QCOW2_OFLAG_COPIED;
}

/* Room for one more host run and for new_clusters more compressed
 * host clusters, before the plan changes.
 */
static int
host_room (struct qcow2_plan *p, uint64_t new_clusters)
{
  struct qcow2_plan_host *hosts;
  uint32_t *crefs;

  if (new_clusters > SIZE_MAX - p->nb_crefs) {
    sc_set_error (ENOMEM, "out of memory for data refcounts");
    return -1;
  }
  hosts = grow_array (p->hosts, &p->hosts_cap, p->nb_hosts + 1,
                      sizeof *hosts);
  if (hosts == NULL)
    return -1;
  p->hosts = hosts;
  if (new_clusters > 0) {
    crefs = grow_array (p->crefs, &p->crefs_cap,
                        p->nb_crefs + (size_t) new_clusters, sizeof *crefs);
    if (crefs == NULL)
      return -1;
    p->crefs = crefs;
  }
  return 0;
}

/* Host cluster k, the next one of the data area, is now used by an
 * uncompressed cluster or by a first compressed one (room made by
 * host_room).
 */
static void
host_add (struct qcow2_plan *p, uint64_t k, bool compressed)
{
  struct qcow2_plan_host *last = p->nb_hosts > 0
    ? &p->hosts[p->nb_hosts - 1] : NULL;

  if (last && (last->cref != UINT64_MAX) == compressed
      && last->k + last->n == k)
    last->n++;
  else
    p->hosts[p->nb_hosts++] = (struct qcow2_plan_host) {
      .k = k, .n = 1, .cref = compressed ? p->nb_crefs : UINT64_MAX,
    };
  if (compressed)
    p->crefs[p->nb_crefs++] = 1;
  p->data_clusters = k + 1;
}

uint64_t
qcow2_plan_data_refcount (const struct qcow2_plan *p, uint64_t k)
{
  size_t lo = 0, hi = p->nb_hosts;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const struct qcow2_plan_host *h = &p->hosts[mid];

    if (k < h->k)
      hi = mid;
    else if (k >= h->k + h->n)
      lo = mid + 1;
    else
      return h->cref == UINT64_MAX ? 1 : p->crefs[h->cref + (k - h->k)];
  }
  return 0;
}

int
qcow2_plan_add_normal (struct qcow2_plan *p, uint64_t gc, uint64_t *rel)
{
  uint64_t cs = p->h.cluster_size;
  uint64_t pos;

  if (check_next (p, gc, false) == -1)
    return -1;
  if (host_room (p, 0) == -1)
    return -1;
  /* A fresh host cluster after everything placed so far. */
  pos = SC_ROUND_UP (p->data_end, cs);
  host_add (p, pos / cs, false);
  add_entry (p, gc, false, pos);
  p->data_end = pos + cs;
  *rel = pos;
  return 0;
}

int
qcow2_plan_add_compressed (struct qcow2_plan *p, uint64_t gc, uint64_t len,
                           uint64_t *rel)
{
  uint64_t cs = p->h.cluster_size;
  uint64_t pos;

  if (len == 0 || len >= cs) {
    sc_set_error (EINVAL, "compressed cluster of %" PRIu64 " bytes does "
                  "not fit a %" PRIu64 "-byte cluster", len, cs);
    return -1;
  }
  /* A cluster touches at most two host clusters more than it fills. */
  if (check_next (p, gc, true) == -1 || host_room (p, len / cs + 2) == -1)
    return -1;
  /* Compressed clusters continue the partly used host cluster of the
   * previous one, even when uncompressed clusters were placed after it
   * meanwhile (as qemu does), so interleaving costs no padding.  They
   * may run on into the following host clusters only when nothing has
   * been placed there.  A host cluster already shared by as many
   * compressed clusters as its refcount can count takes no more.
   */
  pos = SC_ROUND_UP (p->data_end, cs);
  if (!SC_IS_ALIGNED (p->compressed_pos, cs)) {
    uint64_t k = p->compressed_pos / cs;
    bool at_end = p->compressed_pos == p->data_end;

    /* k is the last host cluster that holds compressed bytes. */
    if (p->crefs[p->nb_crefs - 1] < p->refcount_cap
        && (at_end || p->compressed_pos + len <= (k + 1) * cs))
      pos = p->compressed_pos;
  }
  for (uint64_t k = pos / cs; k <= (pos + len - 1) / cs; k++) {
    /* The partly used cluster pos is in, or fresh ones after it. */
    if (k < p->data_clusters)
      p->crefs[p->nb_crefs - 1]++;
    else
      host_add (p, k, true);
  }
  p->cdesc[p->nb_cdesc] = qcow2_make_compressed_descriptor (&p->h, pos, len);
  add_entry (p, gc, true, p->nb_cdesc);
  p->nb_cdesc++;
  p->compressed_pos = pos + len;
  p->data_end = SC_MAX (p->data_end, pos + len);
  p->nb_compressed++;
  *rel = pos;
  return 0;
}

int
qcow2_plan_reserve (struct qcow2_plan *p, uint64_t max_l2,
                    uint64_t max_data_clusters)
{
  const struct qcow2_header *h = &p->h;
  uint64_t cs = h->cluster_size;
  uint64_t l1_clusters = SC_DIV_ROUND_UP ((uint64_t) h->l1_size
                                          * QCOW2_L2E_SIZE, cs);
  uint64_t other, rt, rb;

  if (max_l2 > h->l1_size
      || SC_ADD_OVERFLOW (1 + l1_clusters + max_l2, max_data_clusters,
                          &other)) {
    sc_set_error (EFBIG, "image too large for its cluster size");
    return -1;
  }
  /* The refcount structures of the largest image the plan can become
   * cover every smaller one, so they are laid out for it now.
   */
  if (qcow2_refcount_layout (h->cluster_bits, h->refcount_order, other,
                             &rt, &rb) == -1)
    return -1;
  p->reserved_rt_clusters = rt;
  p->reserved_rb_clusters = rb;
  p->reserved_total_clusters = other + rt + rb;
  p->reserved_data_offset = (1 + rt + rb + l1_clusters + max_l2) * cs;
  return 0;
}

int
qcow2_plan_set_digest (struct qcow2_plan *p, uint32_t block_size,
                       const unsigned char sha256[32])
{
  if (p->h.version < 3) {
    sc_set_error (EINVAL, "a version 2 image cannot hold a digest");
    return -1;
  }
  p->has_digest = true;
  p->digest.kind = QCOW2_SC_DIGEST_SHA256;
  p->digest.block_size = block_size;
  p->digest.size = p->h.size;
  memcpy (p->digest.sha256, sha256, sizeof p->digest.sha256);
  p->h.autoclear_features |= QCOW2_AUTOCLEAR_SC_DIGEST;
  return 0;
}

int
qcow2_plan_layout (struct qcow2_plan *p)
{
  struct qcow2_header *h = &p->h;
  uint64_t cs = h->cluster_size;
  uint64_t other, data_bytes;

  p->l1_clusters = SC_DIV_ROUND_UP ((uint64_t) h->l1_size
                                    * QCOW2_L2E_SIZE, cs);
  other = 1 + p->l1_clusters + p->nb_l2 + p->data_clusters;
  if (p->reserved_data_offset != 0) {
    p->rt_clusters = p->reserved_rt_clusters;
    p->rb_clusters = p->reserved_rb_clusters;
  }
  else if (qcow2_refcount_layout (h->cluster_bits, h->refcount_order, other,
                                  &p->rt_clusters, &p->rb_clusters) == -1)
    return -1;

  h->refcount_table_clusters = (uint32_t) p->rt_clusters;
  if (p->rt_last && p->reserved_data_offset != 0) {
    sc_set_error (EINVAL, "a reserved layout has its refcount table first");
    return -1;
  }
  /* With rt_last, the offset of the table is set once the data area's
   * size is known, below.
   */
  h->refcount_table_offset = cs;
  p->rb_offset = (p->rt_last ? 1 : 1 + p->rt_clusters) * cs;
  h->l1_table_offset = p->rb_offset + p->rb_clusters * cs;
  p->l2_offset = h->l1_table_offset + p->l1_clusters * cs;
  p->meta_end = p->l2_offset + p->nb_l2 * cs;
  p->data_offset = p->meta_end;
  if (p->reserved_data_offset != 0) {
    /* More L2 tables or data than reserved is a fault of the caller's
     * bounds; never let metadata run into data already written.
     */
    if (p->meta_end > p->reserved_data_offset
        || p->data_clusters + p->reserved_data_offset / cs
           > p->reserved_total_clusters) {
      sc_set_error (ENOSPC, "the image outgrew the room reserved for its "
                    "metadata");
      return -1;
    }
    p->data_offset = p->reserved_data_offset;
  }
  /* The L2 tables in file order, for reading any cluster of them. */
  if (p->nb_l2 > 0) {
    uint64_t j = 0;

    free (p->l2_order);
    p->l2_order = malloc (p->nb_l2 * sizeof *p->l2_order);
    if (p->l2_order == NULL) {
      sc_set_error (errno, "out of memory for the L2 tables");
      return -1;
    }
    for (size_t r = 0; r < p->nb_runs; r++) {
      const struct qcow2_plan_run *run = &p->runs[r];
      uint64_t first = run->gc / h->l2_entries;
      uint64_t last = (run->gc + run->count - 1) / h->l2_entries;

      for (uint64_t i = first; i <= last; i++)
        if ((j == 0 || p->l2_order[j - 1] != i) && j < p->nb_l2)
          p->l2_order[j++] = (uint32_t) i;
    }
    if (j != p->nb_l2) {
      sc_set_error (EINVAL, "the plan counted %" PRIu64 " L2 tables but "
                    "holds %" PRIu64, p->nb_l2, j);
      return -1;
    }
  }
  p->total_clusters = p->reserved_data_offset != 0
    ? p->reserved_total_clusters : other + p->rt_clusters + p->rb_clusters;
  /* qemu writes no L1 offset for an empty L1 table either. */
  if (h->l1_size == 0)
    h->l1_table_offset = 0;

  /* Readers fetch whole 512-byte sectors of compressed data. */
  data_bytes = SC_ROUND_UP (p->data_end, QCOW2_COMPRESSED_SECTOR);
  if (SC_ADD_OVERFLOW (p->data_offset, data_bytes, &p->file_size)
      || p->file_size > QCOW2_MAX_HOST_OFFSET
      || (p->nb_compressed > 0
          && p->file_size > (1ULL << qcow2_csize_shift (h)))) {
    sc_set_error (EFBIG, "image too large for its cluster size");
    return -1;
  }
  if (p->rt_last) {
    /* After the last host cluster of the data area (compressed data
     * may end inside it), the file ending with the table.
     */
    if (p->data_clusters > (QCOW2_MAX_HOST_OFFSET - p->data_offset) / cs
        || p->rt_clusters > (QCOW2_MAX_HOST_OFFSET - p->data_offset) / cs
                            - p->data_clusters) {
      sc_set_error (EFBIG, "image too large for its cluster size");
      return -1;
    }
    h->refcount_table_offset = p->data_offset + p->data_clusters * cs;
    p->file_size = h->refcount_table_offset + p->rt_clusters * cs;
  }
  p->laid_out = true;
  return 0;
}

/* The refcount of host cluster c under the final layout. */
static uint64_t
cluster_refcount (const struct qcow2_plan *p, uint64_t c)
{
  uint64_t data_start = p->data_offset >> p->h.cluster_bits;
  uint64_t rt = p->h.refcount_table_offset >> p->h.cluster_bits;

  if (c < p->meta_end >> p->h.cluster_bits
      || (c >= rt && c - rt < p->rt_clusters))
    return 1;
  if (c < data_start)
    return 0;                   /* the unused rest of a reservation */
  if (c - data_start < p->data_clusters)
    return qcow2_plan_data_refcount (p, c - data_start);
  return 0;
}

/* An L2 entry of the plan with its data offset made absolute. */
static uint64_t
final_l2_entry (const struct qcow2_plan *p, uint64_t e)
{
  if (e == 0)
    return 0;
  /* Both kinds keep their offset in the low bits, and the data area
   * starts on a cluster boundary, so shifting the offset changes
   * neither alignment nor the sector count of a compressed cluster.
   */
  return e + p->data_offset;
}

/* How many L2 tables hold entries of L1 indices below l1_index: the
 * place of the next one in file order.
 */
static uint64_t
l2_tables_before (const struct qcow2_plan *p, uint64_t l1_index)
{
  uint64_t lo = 0, hi = p->nb_l2;

  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    if (p->l2_order[mid] < l1_index)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* The plan's image file as qcow2_map_fingerprint reads it: its
 * metadata clusters, made one at a time.
 */
struct plan_file {
  const struct qcow2_plan *p;
  unsigned char *cluster;
};

static int
plan_read (void *opaque, uint64_t offset, size_t len, void *out)
{
  struct plan_file *f = opaque;
  uint64_t cs = f->p->h.cluster_size;
  unsigned char *o = out;

  while (len > 0) {
    uint64_t in = offset % cs;
    size_t n = (size_t) SC_MIN ((uint64_t) len, cs - in);

    if (qcow2_plan_metadata (f->p, offset / cs, f->cluster) == -1)
      return -1;
    memcpy (o, f->cluster + in, n);
    o += n;
    offset += n;
    len -= n;
  }
  return 0;
}

/* The digest extension as the header cluster carries it: with the
 * fingerprint of the L1 and L2 tables the plan writes.
 */
static int
plan_digest (const struct qcow2_plan *p, struct qcow2_sc_digest *d)
{
  struct plan_file f = { .p = p, .cluster = malloc (p->h.cluster_size) };
  int r;

  if (f.cluster == NULL) {
    sc_set_error (ENOMEM, "out of memory");
    return -1;
  }
  *d = p->digest;
  d->has_map = true;
  r = qcow2_map_fingerprint (&p->h, p->file_size, plan_read, &f, d->map);
  free (f.cluster);
  return r;
}

int
qcow2_plan_metadata (const struct qcow2_plan *p, uint64_t k, void *out)
{
  const struct qcow2_header *h = &p->h;
  uint64_t cs = h->cluster_size;
  uint64_t block_entries
    = UINT64_C (1) << qcow2_refcount_block_bits (h->cluster_bits,
                                                 h->refcount_order);
  uint64_t per_cluster = cs / QCOW2_RTE_SIZE;
  uint64_t rt = h->refcount_table_offset / cs, rb = p->rb_offset / cs;
  uint64_t l1 = rb + p->rb_clusters, l2 = p->l2_offset / cs;
  unsigned char *buf = out;
  uint64_t i, n;
  bool in_rt = k >= rt && k - rt < p->rt_clusters;

  if (!p->laid_out || (k >= p->data_offset / cs && !in_rt)) {
    sc_set_error (EINVAL, "no metadata cluster %" PRIu64 " in the plan", k);
    return -1;
  }
  if (k == 0) {
    struct qcow2_sc_digest d;

    if (p->has_digest && plan_digest (p, &d) == -1)
      return -1;
    qcow2_header_write (h, buf);
    if (p->has_digest && qcow2_header_write_sc_digest (h, &d, buf) == -1)
      return -1;
    if (p->hold_magic)
      memset (buf, 0, 4);
    return 0;
  }
  if (in_rt) {
    memset (buf, 0, cs);
    for (i = 0; i < per_cluster; i++) {
      uint64_t b = (k - rt) * per_cluster + i;
      if (b < p->rb_clusters)
        sc_put_be64 (buf + i * 8, p->rb_offset + b * cs);
    }
    return 0;
  }
  if (k >= p->meta_end / cs) {
    memset (buf, 0, cs);
    return 0;
  }
  memset (buf, 0, cs);
  if (k >= l2) {
    uint64_t base = (uint64_t) p->l2_order[k - l2] * h->l2_entries;
    uint64_t end = base + h->l2_entries;

    for (size_t r = run_from (p, base);
         r < p->nb_runs && p->runs[r].gc < end; r++) {
      const struct qcow2_plan_run *run = &p->runs[r];
      uint64_t to = SC_MIN (run->gc + run->count, end);

      for (uint64_t g = SC_MAX (run->gc, base); g < to; g++)
        sc_put_be64 (buf + (g - base) * 8,
                     final_l2_entry (p, run_entry (p, run, g)));
    }
    return 0;
  }

  if (k < l1) {
    /* A refcount block (the refcount table is handled above). */
    k -= rb;
    n = SC_MIN (block_entries, p->total_clusters - k * block_entries);
    for (i = 0; i < n; i++)
      qcow2_refcount_set (buf, h->refcount_order, i,
                          cluster_refcount (p, k * block_entries + i));
  }
  else {
    /* The L1 table: the L2 tables follow it in L1 order. */
    uint64_t first = (k - l1) * per_cluster;
    uint64_t j = l2_tables_before (p, first);

    for (; j < p->nb_l2 && p->l2_order[j] < first + per_cluster; j++)
      sc_put_be64 (buf + (p->l2_order[j] - first) * 8,
                   (p->l2_offset + j * cs) | QCOW2_OFLAG_COPIED);
  }
  return 0;
}

int
qcow2_plan_next (const struct qcow2_plan *p, uint64_t *gc, uint64_t *rel,
                 uint64_t *len, bool *compressed)
{
  const struct qcow2_header *h = &p->h;
  size_t r = run_from (p, *gc);
  const struct qcow2_plan_run *run;
  uint64_t c, e;

  if (r >= p->nb_runs) {
    *gc = SC_MAX (*gc, (uint64_t) h->l1_size * h->l2_entries);
    return 0;
  }
  run = &p->runs[r];
  c = SC_MAX (*gc, run->gc);
  e = run_entry (p, run, c);
  if (run->compressed) {
    qcow2_compressed_descriptor (h, e, rel, len);
    *compressed = true;
  }
  else {
    *rel = e & QCOW2_L2E_OFFSET_MASK;
    *len = h->cluster_size;
    *compressed = false;
  }
  *gc = c + 1;
  return 1;
}
