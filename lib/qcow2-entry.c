/* qcow2 table entries: what an L1 entry, an L2 entry and one
 * subcluster of an extended L2 entry describe, and the compressed
 * cluster descriptor.
 *
 * The classifiers are pure and never refuse anything: they say what an
 * entry means as qemu reads it, together with the damage they see, as
 * QCOW2_FAULT_* bits.  The reader and the stream decoder refuse an image
 * with damage; the checker counts the same damage as corruptions and
 * goes on.  Keeping the decision with the caller is what lets all of
 * them share one rule.  See "Cluster mapping" and "Extended L2 Entries"
 * in qemu's docs/interop/qcow2.rst.
 */
#include <config.h>

#include "internal.h"
#include "qcow2.h"

unsigned
qcow2_l1_entry_faults (const struct qcow2_header *h, uint64_t l1e)
{
  unsigned faults = 0;

  if (l1e & QCOW2_L1E_RESERVED_MASK)
    faults |= QCOW2_FAULT_RESERVED;
  if (!SC_IS_ALIGNED (l1e & QCOW2_L1E_OFFSET_MASK, h->cluster_size))
    faults |= QCOW2_FAULT_MISALIGNED;
  return faults;
}

static int
cmp_offset (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

uint64_t
qcow2_l1_shared_l2 (uint64_t *l2_offsets, size_t n)
{
  qsort (l2_offsets, n, sizeof *l2_offsets, cmp_offset);
  for (size_t i = 1; i < n; i++)
    if (l2_offsets[i] != 0 && l2_offsets[i] == l2_offsets[i - 1])
      return l2_offsets[i];
  return 0;
}

void
qcow2_l2_entry_get (const struct qcow2_header *h, const void *table,
                    uint64_t index, uint64_t *l2e, uint64_t *bitmap)
{
  const unsigned char *p = (const unsigned char *) table
    + index * h->l2_entry_size;

  *l2e = sc_get_be64 (p);
  *bitmap = h->l2_entry_size == QCOW2_L2E_EXTENDED_SIZE
    ? sc_get_be64 (p + QCOW2_L2E_SIZE) : 0;
}

enum qcow2_cluster_type
qcow2_l2_entry_classify (const struct qcow2_header *h, uint64_t l2e,
                         unsigned *faults)
{
  bool has_data_file = h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
  bool extl2 = h->incompatible_features & QCOW2_INCOMPAT_EXTL2;
  uint64_t offset = l2e & QCOW2_L2E_OFFSET_MASK;

  *faults = 0;
  if (l2e & QCOW2_OFLAG_COMPRESSED) {
    /* A compressed cluster is shared by nature, so its refcount is
     * never exactly one and COPIED cannot be right; and an external
     * data file has no room for compressed data.
     */
    if (l2e & QCOW2_OFLAG_COPIED)
      *faults |= QCOW2_FAULT_COMPRESSED_COPIED;
    if (has_data_file)
      *faults |= QCOW2_FAULT_COMPRESSED_DATA_FILE;
    return QCOW2_CLUSTER_COMPRESSED;
  }

  if (l2e & QCOW2_L2E_STD_RESERVED_MASK)
    *faults |= QCOW2_FAULT_RESERVED;
  if (!SC_IS_ALIGNED (offset, h->cluster_size))
    *faults |= QCOW2_FAULT_MISALIGNED;

  /* Version 2 has no zero flag: bit 0 is reserved there, and qemu
   * calls an entry with it corrupt ("Zero cluster entry found in pre-v3
   * image") rather than reading zeros or data.  The type stays what a
   * version 3 image would mean, for the checker to go on with.
   */
  if ((l2e & QCOW2_OFLAG_ZERO) && h->version < 3)
    *faults |= QCOW2_FAULT_V2_ZERO;
  /* The zero flag is not used with extended L2 entries (the bitmap
   * says what reads as zeros), and like qemu we then ignore it.
   */
  if ((l2e & QCOW2_OFLAG_ZERO) && !extl2)
    return offset ? QCOW2_CLUSTER_ZERO_ALLOC : QCOW2_CLUSTER_ZERO_PLAIN;
  if (offset == 0) {
    /* Offset 0 is a valid place in an external data file; there every
     * allocated cluster has refcount 1 and so the COPIED flag, which
     * tells it apart from an unallocated entry.
     */
    if (has_data_file && (l2e & QCOW2_OFLAG_COPIED))
      return QCOW2_CLUSTER_NORMAL;
    return QCOW2_CLUSTER_UNALLOCATED;
  }
  return QCOW2_CLUSTER_NORMAL;
}

int
qcow2_l2_entry_type (const struct qcow2_header *h, uint64_t l2e,
                     enum qcow2_cluster_type *type)
{
  unsigned faults;

  *type = qcow2_l2_entry_classify (h, l2e, &faults);
  /* COPIED on a compressed entry does not change what the guest
   * reads; only the checker cares.
   */
  if (faults & QCOW2_FAULT_COMPRESSED_DATA_FILE) {
    sc_set_error (EINVAL, "compressed cluster in an image with an "
                  "external data file (L2 entry 0x%016" PRIx64 ")", l2e);
    return -1;
  }
  if (faults & QCOW2_FAULT_RESERVED) {
    sc_set_error (EINVAL, "L2 entry 0x%016" PRIx64 " has reserved bits set",
                  l2e);
    return -1;
  }
  if (faults & QCOW2_FAULT_V2_ZERO) {
    sc_set_error (EINVAL, "L2 entry 0x%016" PRIx64 " has the \"reads as "
                  "zero\" flag (bit 0), which version %" PRIu32 " images "
                  "do not have", l2e, h->version);
    return -1;
  }
  if (faults & QCOW2_FAULT_MISALIGNED) {
    sc_set_error (EINVAL, "L2 entry 0x%016" PRIx64 ": host offset is not "
                  "aligned to a cluster", l2e);
    return -1;
  }
  return 0;
}

unsigned
qcow2_l2_bitmap_faults (enum qcow2_cluster_type type, uint64_t bitmap)
{
  unsigned faults = 0;

  /* The bitmap of a compressed cluster is reserved and must be 0. */
  if (type == QCOW2_CLUSTER_COMPRESSED)
    return bitmap ? QCOW2_FAULT_COMPRESSED_BITMAP : 0;
  if ((bitmap >> QCOW2_SUBCLUSTERS) & bitmap)
    faults |= QCOW2_FAULT_SUBCLUSTER_BOTH;
  if (type == QCOW2_CLUSTER_UNALLOCATED
      && (bitmap & QCOW2_L2_BITMAP_ALL_ALLOC))
    faults |= QCOW2_FAULT_UNALLOCATED_ALLOC;
  return faults;
}

enum qcow2_subcluster_type
qcow2_subcluster_type (const struct qcow2_header *h,
                       enum qcow2_cluster_type type, uint64_t bitmap,
                       unsigned sc, unsigned *fault)
{
  bool alloc, zero;

  *fault = 0;
  if (type == QCOW2_CLUSTER_COMPRESSED)
    return QCOW2_SUBCLUSTER_COMPRESSED;
  /* Without extended L2 entries a cluster is one subcluster, all of
   * it as the entry says.
   */
  if (!(h->incompatible_features & QCOW2_INCOMPAT_EXTL2)) {
    switch (type) {
    case QCOW2_CLUSTER_UNALLOCATED: return QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN;
    case QCOW2_CLUSTER_ZERO_PLAIN: return QCOW2_SUBCLUSTER_ZERO_PLAIN;
    case QCOW2_CLUSTER_ZERO_ALLOC: return QCOW2_SUBCLUSTER_ZERO_ALLOC;
    default: return QCOW2_SUBCLUSTER_NORMAL;
    }
  }

  alloc = bitmap & qcow2_subcluster_alloc_bit (sc);
  zero = bitmap & qcow2_subcluster_zero_bit (sc);
  if (alloc && zero) {
    *fault = QCOW2_FAULT_SUBCLUSTER_BOTH;
    return QCOW2_SUBCLUSTER_INVALID;
  }
  if (type == QCOW2_CLUSTER_UNALLOCATED) {
    /* Without a host cluster nothing can be allocated, whichever
     * subcluster is asked about.
     */
    if (bitmap & QCOW2_L2_BITMAP_ALL_ALLOC) {
      *fault = QCOW2_FAULT_UNALLOCATED_ALLOC;
      return QCOW2_SUBCLUSTER_INVALID;
    }
    return zero ? QCOW2_SUBCLUSTER_ZERO_PLAIN
      : QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN;
  }
  if (zero)
    return QCOW2_SUBCLUSTER_ZERO_ALLOC;
  return alloc ? QCOW2_SUBCLUSTER_NORMAL : QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC;
}

void
qcow2_compressed_descriptor (const struct qcow2_header *h, uint64_t l2e,
                             uint64_t *offset, uint64_t *nbytes)
{
  unsigned shift = qcow2_csize_shift (h);
  uint64_t offset_mask = (UINT64_C (1) << shift) - 1;
  /* The sector count field runs from shift up to bit 61. */
  uint64_t count_mask = (UINT64_C (1) << (62 - shift)) - 1;
  uint64_t sectors = ((l2e >> shift) & count_mask) + 1;

  *offset = l2e & offset_mask;
  *nbytes = sectors * QCOW2_COMPRESSED_SECTOR
    - (*offset & (QCOW2_COMPRESSED_SECTOR - 1));
}

uint64_t
qcow2_make_compressed_descriptor (const struct qcow2_header *h,
                                  uint64_t offset, uint64_t len)
{
  unsigned shift = qcow2_csize_shift (h);
  /* Sectors beyond the one that holds the first byte, up to the one
   * that holds the last byte.
   */
  uint64_t extra = (offset + len - 1) / QCOW2_COMPRESSED_SECTOR
    - offset / QCOW2_COMPRESSED_SECTOR;

  return QCOW2_OFLAG_COMPRESSED | (extra << shift) | offset;
}
