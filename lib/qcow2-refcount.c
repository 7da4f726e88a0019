/* qcow2 refcounts: entries of every width in a refcount block, and the
 * size of the refcount structures an image needs.
 *
 * The writer, the reader (which looks at refcounts to recognise a
 * preallocated image) and the checker all decode refcount blocks; the
 * packing rule lives here once so that what is written is exactly what
 * is read back.  See "Refcount table" in qemu's docs/interop/qcow2.rst.
 */
#include <config.h>

#include "internal.h"
#include "qcow2.h"

/* Sub-byte entries (refcount_order 0..2) share a byte: entry index
 * lives in byte *byte, at bit *shift, under mask *mask (already
 * shifted).  The specification packs the first entry into the least
 * significant bits of a byte.
 */
static void
sub_byte_position (unsigned refcount_order, uint64_t index, uint64_t *byte,
                   unsigned *shift, unsigned *mask)
{
  unsigned bits = 1U << refcount_order;
  unsigned per_byte_order = 3 - refcount_order;

  *byte = index >> per_byte_order;
  *shift = (unsigned) (index & ((1U << per_byte_order) - 1)) * bits;
  *mask = ((1U << bits) - 1) << *shift;
}

void
qcow2_refcount_set (void *block, unsigned refcount_order, uint64_t index,
                    uint64_t value)
{
  unsigned char *b = block;

  switch (refcount_order) {
  case 0: case 1: case 2: {
    uint64_t byte;
    unsigned shift, mask;

    sub_byte_position (refcount_order, index, &byte, &shift, &mask);
    b[byte] = (unsigned char) ((b[byte] & ~mask) | ((value << shift) & mask));
    break;
  }
  case 3: b[index] = (unsigned char) value; break;
  case 4: sc_put_be16 (&b[index * 2], (uint16_t) value); break;
  case 5: sc_put_be32 (&b[index * 4], (uint32_t) value); break;
  default: sc_put_be64 (&b[index * 8], value); break;
  }
}

uint64_t
qcow2_refcount_get (const void *block, unsigned refcount_order,
                    uint64_t index)
{
  const unsigned char *b = block;

  switch (refcount_order) {
  case 0: case 1: case 2: {
    uint64_t byte;
    unsigned shift, mask;

    sub_byte_position (refcount_order, index, &byte, &shift, &mask);
    return (b[byte] & mask) >> shift;
  }
  case 3: return b[index];
  case 4: return sc_get_be16 (&b[index * 2]);
  case 5: return sc_get_be32 (&b[index * 4]);
  default: return sc_get_be64 (&b[index * 8]);
  }
}

int
qcow2_refcount_layout (uint32_t cluster_bits, unsigned refcount_order,
                       uint64_t other_clusters, uint64_t *rt_clusters,
                       uint64_t *rb_clusters)
{
  uint64_t cluster_size = UINT64_C (1) << cluster_bits;
  uint64_t block_entries
    = UINT64_C (1) << qcow2_refcount_block_bits (cluster_bits,
                                                 refcount_order);
  uint64_t rt_entries_per_cluster = cluster_size / QCOW2_RTE_SIZE;
  uint64_t max_rt_clusters = QCOW2_MAX_RT_BYTES / cluster_size;
  uint64_t rt = 0, rb = 0;

  if (max_rt_clusters == 0)
    max_rt_clusters = 1;
  /* The blocks count the table and themselves, so more blocks can need
   * still more blocks.  Iterating from zero climbs monotonically to the
   * least fixed point, and each step adds far fewer clusters than the
   * one before, so this ends after a few rounds.
   */
  for (;;) {
    uint64_t n = other_clusters + rt + rb;
    uint64_t rb2 = SC_DIV_ROUND_UP (n, block_entries);
    uint64_t rt2 = SC_DIV_ROUND_UP (rb2, rt_entries_per_cluster);

    if (rt2 > max_rt_clusters) {
      sc_set_error (EFBIG, "image too large: its refcount table would "
                    "exceed %u bytes (use larger clusters or narrower "
                    "refcounts)", QCOW2_MAX_RT_BYTES);
      return -1;
    }
    if (rt2 == rt && rb2 == rb)
      break;
    rt = rt2;
    rb = rb2;
  }
  *rt_clusters = rt;
  *rb_clusters = rb;
  return 0;
}
