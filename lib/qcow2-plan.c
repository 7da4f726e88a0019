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

  if (l1_size > 0) {
    p->l2 = calloc (l1_size, sizeof *p->l2);
    if (p->l2 == NULL) {
      sc_set_error (errno, "out of memory for the L1 table");
      return -1;
    }
  }
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
  if (l1_size > p->h.l1_size) {
    uint64_t **l2 = realloc (p->l2, l1_size * sizeof *l2);

    if (l2 == NULL) {
      sc_set_error (errno, "out of memory for the L1 table");
      return -1;
    }
    memset (l2 + p->h.l1_size, 0, (l1_size - p->h.l1_size) * sizeof *l2);
    p->l2 = l2;
    p->h.l1_size = (uint32_t) l1_size;
  }
  p->h.size = virtual_size;
  return 0;
}

void
qcow2_plan_free (struct qcow2_plan *p)
{
  if (p->l2) {
    for (uint64_t i = 0; i < p->h.l1_size; i++)
      free (p->l2[i]);
    free (p->l2);
  }
  free (p->data_refcounts);
  free (p->l2_order);
  memset (p, 0, sizeof *p);
}

/* The L2 slot of guest cluster gc, allocating its table on first use. */
static uint64_t *
l2_slot (struct qcow2_plan *p, uint64_t gc)
{
  uint64_t l1_index = gc / p->h.l2_entries;

  if (gc < p->next_guest_cluster || l1_index >= p->h.l1_size) {
    sc_set_error (EINVAL, "cluster %" PRIu64 " added out of order or "
                  "beyond the virtual size", gc);
    return NULL;
  }
  if (p->l2[l1_index] == NULL) {
    p->l2[l1_index] = calloc (p->h.l2_entries, sizeof (uint64_t));
    if (p->l2[l1_index] == NULL) {
      sc_set_error (errno, "out of memory for an L2 table");
      return NULL;
    }
    p->nb_l2++;
  }
  return &p->l2[l1_index][gc % p->h.l2_entries];
}

/* Make sure the data area has a refcount slot for host cluster k. */
static int
reserve_data_cluster (struct qcow2_plan *p, uint64_t k)
{
  if (k >= p->data_refcounts_cap) {
    size_t cap = p->data_refcounts_cap ? p->data_refcounts_cap * 2 : 1024;
    uint32_t *r;

    while (cap <= k)
      cap *= 2;
    r = realloc (p->data_refcounts, cap * sizeof *r);
    if (r == NULL) {
      sc_set_error (errno, "out of memory for data refcounts");
      return -1;
    }
    memset (&r[p->data_refcounts_cap], 0,
            (cap - p->data_refcounts_cap) * sizeof *r);
    p->data_refcounts = r;
    p->data_refcounts_cap = cap;
  }
  if (k >= p->data_clusters)
    p->data_clusters = k + 1;
  return 0;
}

int
qcow2_plan_add_normal (struct qcow2_plan *p, uint64_t gc, uint64_t *rel)
{
  uint64_t cs = p->h.cluster_size;
  uint64_t *slot = l2_slot (p, gc);
  uint64_t pos;

  if (slot == NULL)
    return -1;
  /* A fresh host cluster after everything placed so far. */
  pos = SC_ROUND_UP (p->data_end, cs);
  if (reserve_data_cluster (p, pos / cs) == -1)
    return -1;
  p->data_refcounts[pos / cs] = 1;
  /* COPIED marks the entry as used even at relative offset 0; the
   * offset is shifted to its absolute place when written.
   */
  *slot = pos | QCOW2_OFLAG_COPIED;
  p->data_end = pos + cs;
  p->next_guest_cluster = gc + 1;
  *rel = pos;
  return 0;
}

int
qcow2_plan_add_compressed (struct qcow2_plan *p, uint64_t gc, uint64_t len,
                           uint64_t *rel)
{
  uint64_t cs = p->h.cluster_size;
  uint64_t *slot;
  uint64_t pos;

  if (len == 0 || len >= cs) {
    sc_set_error (EINVAL, "compressed cluster of %" PRIu64 " bytes does "
                  "not fit a %" PRIu64 "-byte cluster", len, cs);
    return -1;
  }
  slot = l2_slot (p, gc);
  if (slot == NULL)
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

    if (p->data_refcounts[k] < p->refcount_cap
        && (at_end || p->compressed_pos + len <= (k + 1) * cs))
      pos = p->compressed_pos;
  }
  for (uint64_t k = pos / cs; k <= (pos + len - 1) / cs; k++) {
    if (reserve_data_cluster (p, k) == -1)
      return -1;
    p->data_refcounts[k]++;
  }
  *slot = qcow2_make_compressed_descriptor (&p->h, pos, len);
  p->compressed_pos = pos + len;
  p->data_end = SC_MAX (p->data_end, pos + len);
  p->next_guest_cluster = gc + 1;
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

  h->refcount_table_offset = cs;
  h->refcount_table_clusters = (uint32_t) p->rt_clusters;
  p->rb_offset = (1 + p->rt_clusters) * cs;
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
    for (uint64_t i = 0; i < h->l1_size; i++)
      if (p->l2[i])
        p->l2_order[j++] = (uint32_t) i;
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
  p->laid_out = true;
  return 0;
}

/* The refcount of host cluster c under the final layout. */
static uint64_t
cluster_refcount (const struct qcow2_plan *p, uint64_t c)
{
  uint64_t data_start = p->data_offset >> p->h.cluster_bits;

  if (c < p->meta_end >> p->h.cluster_bits)
    return 1;
  if (c < data_start)
    return 0;                   /* the unused rest of a reservation */
  if (c - data_start < p->data_clusters)
    return p->data_refcounts[c - data_start];
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

  if (!p->laid_out || k >= p->data_offset / cs) {
    sc_set_error (EINVAL, "no metadata cluster %" PRIu64 " in the plan", k);
    return -1;
  }
  if (k == 0) {
    qcow2_header_write (h, buf);
    return p->has_digest
      ? qcow2_header_write_sc_digest (h, &p->digest, buf) : 0;
  }
  if (k >= p->meta_end / cs) {
    memset (buf, 0, cs);
    return 0;
  }
  if (k >= l2) {
    const uint64_t *table = p->l2[p->l2_order[k - l2]];

    for (i = 0; i < h->l2_entries; i++)
      sc_put_be64 (buf + i * 8, final_l2_entry (p, table[i]));
    return 0;
  }

  memset (buf, 0, cs);
  if (k < rb) {
    /* The refcount table. */
    for (i = 0; i < per_cluster; i++) {
      uint64_t b = (k - rt) * per_cluster + i;
      if (b < p->rb_clusters)
        sc_put_be64 (buf + i * 8, p->rb_offset + b * cs);
    }
  }
  else if (k < l1) {
    /* A refcount block. */
    k -= rb;
    n = SC_MIN (block_entries, p->total_clusters - k * block_entries);
    for (i = 0; i < n; i++)
      qcow2_refcount_set (buf, h->refcount_order, i,
                          cluster_refcount (p, k * block_entries + i));
  }
  else {
    /* The L1 table: the L2 tables follow it in L1 order. */
    uint64_t first = (k - l1) * per_cluster;
    uint64_t next_l2 = p->l2_offset + l2_tables_before (p, first) * cs;

    for (i = 0; i < per_cluster && first + i < h->l1_size; i++)
      if (p->l2[first + i]) {
        sc_put_be64 (buf + i * 8, next_l2 | QCOW2_OFLAG_COPIED);
        next_l2 += cs;
      }
  }
  return 0;
}

int
qcow2_plan_next (const struct qcow2_plan *p, uint64_t *gc, uint64_t *rel,
                 uint64_t *len, bool *compressed)
{
  const struct qcow2_header *h = &p->h;
  uint64_t c = *gc;

  while (c / h->l2_entries < h->l1_size) {
    const uint64_t *l2 = p->l2[c / h->l2_entries];
    uint64_t e;

    if (l2 == NULL) {
      c = SC_ROUND_UP (c + 1, h->l2_entries);
      continue;
    }
    e = l2[c % h->l2_entries];
    if (e == 0) {
      c++;
      continue;
    }
    if (e & QCOW2_OFLAG_COMPRESSED) {
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
  *gc = c;
  return 0;
}
