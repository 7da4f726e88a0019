/* Unit tests of the qcow2 writer's arithmetic: compressed cluster
 * descriptors, refcount packing at every width, the refcount layout
 * fixed point; and the planned image, read and copied in pieces.  The
 * expected values come from the formulas of the qcow2 specification,
 * written out here independently.
 */
#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "internal.h"
#include "qcow2.h"

/* Decode a descriptor the way the specification describes it. */
static void
spec_decode (unsigned cluster_bits, uint64_t e, uint64_t *offset,
             uint64_t *nbytes)
{
  unsigned x = 62 - (cluster_bits - 8);
  uint64_t extra = (e >> x) & ((1ULL << (cluster_bits - 8)) - 1);

  *offset = e & ((1ULL << x) - 1);
  *nbytes = (extra + 1) * 512 - (*offset % 512);
}

static void
test_descriptor_round_trip (void)
{
  static const uint64_t offsets[] = {
    0, 1, 17, 511, 512, 513, 4095, 65536, 65536 + 300, 1ULL << 30,
    (1ULL << 40) + 12345, (1ULL << 47) - 1,
  };

  for (unsigned cb = QCOW2_MIN_CLUSTER_BITS; cb <= QCOW2_MAX_CLUSTER_BITS;
       cb++) {
    struct qcow2_header h = { .cluster_bits = cb, .cluster_size = 1U << cb };
    uint64_t cs = h.cluster_size;
    uint64_t lens[] = { 1, 2, 100, 511, 512, 513, cs / 2, cs - 2, cs - 1 };

    for (size_t i = 0; i < sizeof offsets / sizeof offsets[0]; i++) {
      for (size_t j = 0; j < sizeof lens / sizeof lens[0]; j++) {
        uint64_t off = offsets[i], len = lens[j];
        uint64_t e, doff, nbytes;

        if (len == 0 || len >= cs)
          continue;
        e = qcow2_make_compressed_descriptor (&h, off, len);
        CU_ASSERT ((e & QCOW2_OFLAG_COMPRESSED) != 0);
        CU_ASSERT ((e & QCOW2_OFLAG_COPIED) == 0);
        spec_decode (cb, e, &doff, &nbytes);
        CU_ASSERT_EQUAL (doff, off);
        /* The sectors named cover the data, end on a sector boundary,
         * and waste less than one sector.
         */
        CU_ASSERT (nbytes >= len);
        CU_ASSERT (nbytes - len < 512);
        CU_ASSERT_EQUAL ((off + nbytes) % 512, 0);
        /* The count fits its field: removing the flag and the fields
         * leaves nothing.
         */
        CU_ASSERT_EQUAL ((e & ~QCOW2_OFLAG_COMPRESSED) >> 62, 0);
      }
    }
  }
}

static uint64_t
pattern (unsigned order, uint64_t i)
{
  uint64_t v = (i + 1) * 0x9e3779b97f4a7c15ULL;
  unsigned bits = 1U << order;

  return bits == 64 ? v : v & ((1ULL << bits) - 1);
}

static void
test_refcount_packing (void)
{
  unsigned char block[512];

  for (unsigned order = 0; order <= QCOW2_MAX_REFCOUNT_ORDER; order++) {
    uint64_t entries = sizeof block * 8 >> order;

    memset (block, 0, sizeof block);
    for (uint64_t i = 0; i < entries; i++)
      qcow2_refcount_set (block, order, i, pattern (order, i));
    for (uint64_t i = 0; i < entries; i++)
      CU_ASSERT_EQUAL (qcow2_refcount_get (block, order, i),
                       pattern (order, i));
    /* Overwriting one entry leaves its neighbours alone. */
    qcow2_refcount_set (block, order, 5, 1);
    CU_ASSERT_EQUAL (qcow2_refcount_get (block, order, 4), pattern (order, 4));
    CU_ASSERT_EQUAL (qcow2_refcount_get (block, order, 5), 1);
    CU_ASSERT_EQUAL (qcow2_refcount_get (block, order, 6), pattern (order, 6));
  }

  /* Exact bit positions from the specification: sub-byte entries from
   * the least significant bit, wider ones big-endian.
   */
  memset (block, 0, sizeof block);
  qcow2_refcount_set (block, 0, 1, 1);
  qcow2_refcount_set (block, 0, 8, 1);
  CU_ASSERT_EQUAL (block[0], 0x02);
  CU_ASSERT_EQUAL (block[1], 0x01);
  memset (block, 0, sizeof block);
  qcow2_refcount_set (block, 1, 3, 2);
  CU_ASSERT_EQUAL (block[0], 0x80);
  memset (block, 0, sizeof block);
  qcow2_refcount_set (block, 2, 1, 0xa);
  qcow2_refcount_set (block, 2, 2, 0x3);
  CU_ASSERT_EQUAL (block[0], 0xa0);
  CU_ASSERT_EQUAL (block[1], 0x03);
  memset (block, 0, sizeof block);
  qcow2_refcount_set (block, 4, 1, 0x1234);
  CU_ASSERT_EQUAL (block[2], 0x12);
  CU_ASSERT_EQUAL (block[3], 0x34);
  memset (block, 0, sizeof block);
  qcow2_refcount_set (block, 6, 1, 0x0102030405060708ULL);
  CU_ASSERT_EQUAL (block[8], 0x01);
  CU_ASSERT_EQUAL (block[15], 0x08);
}

/* Every width read from, and written to, the same bytes.  The expected
 * entries are worked out by hand from the specification's packing rule
 * ("Refcount table": sub-byte entries from the least significant bit
 * of each byte, wider entries big-endian):
 *   0xb4 = 1011 0100, 0x1e = 0001 1110.
 */
static void
test_refcount_every_order (void)
{
  static const unsigned char bytes[8] = {
    0xb4, 0x1e, 0x00, 0x80, 0x12, 0x34, 0x56, 0x78,
  };
  static const struct {
    unsigned order;
    unsigned n;                 /* entries that cover bytes[] */
    uint64_t e[16];
  } want[] = {
    { 0, 16, { 0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 0 } },
    { 1, 8, { 0, 1, 3, 2, 2, 3, 1, 0 } },
    { 2, 4, { 0x4, 0xb, 0xe, 0x1 } },
    { 3, 2, { 0xb4, 0x1e } },
    { 4, 1, { 0xb41e } },
    { 5, 1, { 0xb41e0080 } },
    { 6, 1, { 0xb41e008012345678ULL } },
  };

  for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
    unsigned order = want[k].order;
    unsigned covered = (want[k].n << order) / 8;
    unsigned char block[24] = { 0 };   /* three entries of any width */

    memcpy (block, bytes, sizeof bytes);
    for (unsigned i = 0; i < want[k].n; i++)
      CU_ASSERT_EQUAL (qcow2_refcount_get (block, order, i), want[k].e[i]);

    /* Writing the same entries into a zeroed block gives the bytes. */
    memset (block, 0, sizeof block);
    for (unsigned i = 0; i < want[k].n; i++)
      qcow2_refcount_set (block, order, i, want[k].e[i]);
    CU_ASSERT_EQUAL (memcmp (block, bytes, covered), 0);
    /* Nothing past the entries written. */
    for (unsigned i = covered; i < sizeof block; i++)
      CU_ASSERT_EQUAL (block[i], 0);
    /* A value wider than the entry is cut to its width. */
    memset (block, 0, sizeof block);
    qcow2_refcount_set (block, order, 1, UINT64_MAX);
    CU_ASSERT_EQUAL (qcow2_refcount_get (block, order, 0), 0);
    CU_ASSERT_EQUAL (qcow2_refcount_get (block, order, 1),
                     order == 6 ? UINT64_MAX
                     : (UINT64_C (1) << (1U << order)) - 1);
    CU_ASSERT_EQUAL (qcow2_refcount_get (block, order, 2), 0);
  }
  /* Entries per block: a 512-byte cluster holds 4096 1-bit entries and
   * 64 64-bit entries.
   */
  CU_ASSERT_EQUAL (qcow2_refcount_block_bits (9, 0), 12);
  CU_ASSERT_EQUAL (qcow2_refcount_block_bits (9, 6), 6);
  CU_ASSERT_EQUAL (qcow2_refcount_block_bits (16, 4), 15);
}

/* The fixed point is exact: enough blocks for everything including
 * the table and themselves, and not one more.
 */
static void
check_layout (unsigned cb, unsigned order, uint64_t other)
{
  uint64_t cs = 1ULL << cb, entries = (cs * 8) >> order;
  uint64_t rt = 0, rb = 0, n;

  CU_ASSERT_EQUAL_FATAL (qcow2_refcount_layout (cb, order, other, &rt, &rb),
                         0);
  n = other + rt + rb;
  CU_ASSERT_EQUAL (rb, (n + entries - 1) / entries);
  CU_ASSERT_EQUAL (rt, (rb * 8 + cs - 1) / cs);
  CU_ASSERT (rt >= 1 && rb >= 1);
}

static void
test_layout_fixed_point (void)
{
  /* Blocks of 64 entries (512-byte clusters, 64-bit refcounts): check
   * every size around the points where one more block is needed.
   */
  for (uint64_t other = 1; other < 2000; other++)
    check_layout (9, 6, other);
  for (unsigned cb = 9; cb <= 21; cb += 3)
    for (unsigned order = 0; order <= 6; order++) {
      check_layout (cb, order, 1);
      check_layout (cb, order, 12345);
      check_layout (cb, order, 1000000);
    }
  /* A case where the table itself needs two clusters: 64 blocks of 64
   * entries are addressed by one 512-byte table cluster; more blocks
   * need a second one.
   */
  {
    uint64_t rt, rb;
    CU_ASSERT_EQUAL (qcow2_refcount_layout (9, 6, 64 * 64, &rt, &rb), 0);
    CU_ASSERT_EQUAL (rb, 66);
    CU_ASSERT_EQUAL (rt, 2);
  }
  /* Beyond qemu's 8 MiB refcount table: an error, not a huge table. */
  {
    uint64_t rt, rb;
    CU_ASSERT_EQUAL (qcow2_refcount_layout (9, 6, 1ULL << 26, &rt, &rb), -1);
  }
}

/* Place a mix of clusters and check the data area independently: no
 * two stored clusters overlap, uncompressed ones are cluster aligned,
 * each host cluster's refcount is the number of stored clusters that
 * touch it and never exceeds what the refcount width can count (with
 * 1-bit refcounts, compressed clusters never share a host cluster).
 */
struct placed { uint64_t rel, len; };

static int
cmp_placed (const void *a, const void *b)
{
  const struct placed *x = a, *y = b;
  return x->rel < y->rel ? -1 : x->rel > y->rel;
}

static void
test_plan_placement (void)
{
  for (unsigned order = 0; order <= 4; order += 2) {
    struct qcow2_plan p;
    uint64_t cs = 4096, rel, n = 0;
    struct placed placed[300];
    uint32_t touches[300] = { 0 };

    CU_ASSERT_EQUAL_FATAL (qcow2_plan_init (&p, 3, 12, order,
                                            SC_CODEC_DEFLATE, 1 << 24), 0);
    for (uint64_t gc = 0; gc < 300; gc++) {
      uint64_t len = 100 + gc * 37 % 3000;
      if (gc % 11 == 0 || gc % 13 == 0) {
        CU_ASSERT_EQUAL (qcow2_plan_add_normal (&p, gc, &rel), 0);
        CU_ASSERT_EQUAL (rel % cs, 0);
        len = cs;
      }
      else
        CU_ASSERT_EQUAL (qcow2_plan_add_compressed (&p, gc, len, &rel), 0);
      placed[n++] = (struct placed) { rel, len };
      CU_ASSERT (rel + len <= p.data_end);
    }
    qsort (placed, n, sizeof placed[0], cmp_placed);
    for (uint64_t i = 0; i < n; i++) {
      if (i + 1 < n)
        CU_ASSERT (placed[i].rel + placed[i].len <= placed[i + 1].rel);
      for (uint64_t k = placed[i].rel / cs;
           k <= (placed[i].rel + placed[i].len - 1) / cs; k++)
        if (k < 300)
          touches[k]++;
    }
    CU_ASSERT (p.data_clusters <= 300);
    for (uint64_t k = 0; k < p.data_clusters && k < 300; k++) {
      CU_ASSERT_EQUAL (qcow2_plan_data_refcount (&p, k), touches[k]);
      CU_ASSERT (touches[k] >= 1);
      CU_ASSERT (touches[k] <= p.h.refcount_max);
    }
    /* Out of order is refused. */
    CU_ASSERT_EQUAL (qcow2_plan_add_normal (&p, 5, &rel), -1);
    CU_ASSERT_EQUAL (qcow2_plan_layout (&p), 0);
    CU_ASSERT_EQUAL (p.data_offset % cs, 0);
    qcow2_plan_free (&p);
  }
}

/* Big-endian fields, read as the specification lays them out. */
static uint64_t
spec_be (const unsigned char *p, unsigned n)
{
  uint64_t v = 0;

  for (unsigned i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

/* The refcount of host cluster c as the image's refcount table and
 * blocks store it; entries narrower than a byte are packed from the
 * least significant bit up.
 */
static uint64_t
spec_stored_refcount (const unsigned char *img, uint64_t size, uint64_t c)
{
  unsigned cluster_bits = (unsigned) spec_be (img + 20, 4);
  unsigned order = (unsigned) spec_be (img + 96, 4), bits = 1U << order;
  uint64_t cs = 1ULL << cluster_bits, per_block = cs * 8 / bits;
  uint64_t rt = spec_be (img + 48, 8), rt_len = spec_be (img + 56, 4) * cs;
  uint64_t i = c / per_block, k = c % per_block, rb;

  CU_ASSERT_FATAL (rt % cs == 0 && rt + rt_len <= size);
  if (i * 8 >= rt_len)
    return 0;
  rb = spec_be (img + rt + i * 8, 8);
  if (rb == 0)
    return 0;
  CU_ASSERT_FATAL (rb % cs == 0 && rb + cs <= size);
  if (bits >= 8)
    return spec_be (img + rb + k * (bits / 8), bits / 8);
  return (img[rb + k * bits / 8] >> (k * bits % 8)) & ((1U << bits) - 1);
}

/* Count the references to every host cluster of a version 3 image
 * without snapshots or extensions that hold clusters (header, L1 table,
 * refcount table and blocks, L2 tables, data and compressed clusters,
 * each compressed cluster once in every host cluster it touches), and
 * compare each count with the refcount the image stores.
 */
static void
check_stored_refcounts (const unsigned char *img, uint64_t size)
{
  unsigned cluster_bits = (unsigned) spec_be (img + 20, 4);
  uint64_t cs = 1ULL << cluster_bits, nclusters = (size + cs - 1) / cs;
  uint64_t l1 = spec_be (img + 40, 8), l1_size = spec_be (img + 36, 4);
  uint64_t rt = spec_be (img + 48, 8), rt_clusters = spec_be (img + 56, 4);
  uint64_t *count = calloc (nclusters, sizeof *count);
  const uint64_t mask = 0x00fffffffffffe00ULL;

  CU_ASSERT_FATAL (count != NULL);
  CU_ASSERT_EQUAL_FATAL (spec_be (img + 4, 4), 3);
  CU_ASSERT_EQUAL_FATAL (spec_be (img + 60, 4), 0);
  CU_ASSERT_FATAL (l1 % cs == 0 && l1 + l1_size * 8 <= size);
  count[0]++;
  for (uint64_t c = 0; c < (l1_size * 8 + cs - 1) / cs; c++)
    count[l1 / cs + c]++;
  for (uint64_t c = 0; c < rt_clusters; c++)
    count[rt / cs + c]++;
  for (uint64_t i = 0; i < rt_clusters * cs / 8; i++) {
    uint64_t rb = spec_be (img + rt + i * 8, 8);

    if (rb != 0) {
      CU_ASSERT_FATAL (rb % cs == 0 && rb / cs < nclusters);
      count[rb / cs]++;
    }
  }
  for (uint64_t i = 0; i < l1_size; i++) {
    uint64_t l2 = spec_be (img + l1 + i * 8, 8) & mask;

    if (l2 == 0)
      continue;
    CU_ASSERT_FATAL (l2 % cs == 0 && l2 / cs < nclusters);
    count[l2 / cs]++;
    for (uint64_t j = 0; j < cs / 8; j++) {
      uint64_t e = spec_be (img + l2 + j * 8, 8), off, nbytes;

      if (e & (1ULL << 62)) {
        spec_decode (cluster_bits, e & ~(3ULL << 62), &off, &nbytes);
        CU_ASSERT_FATAL (off + nbytes <= nclusters * cs);
        for (uint64_t c = off / cs; c <= (off + nbytes - 1) / cs; c++)
          count[c]++;
      }
      else if ((e & mask) != 0) {
        CU_ASSERT_FATAL ((e & mask) / cs < nclusters);
        count[(e & mask) / cs]++;
      }
    }
  }
  for (uint64_t c = 0; c < nclusters; c++) {
    uint64_t stored = spec_stored_refcount (img, size, c);

    if (stored != count[c])
      fprintf (stderr, "host cluster %" PRIu64 ": refcount %" PRIu64
               ", referenced %" PRIu64 " times\n", c, stored, count[c]);
    CU_ASSERT_EQUAL (stored, count[c]);
  }
  free (count);
}

/* The planned image endpoint: its bytes are the metadata of the plan,
 * the source's clusters where the plan stores them uncompressed and
 * the spill file everywhere else in the data area, whatever the pieces
 * it is read or copied in.
 */
static unsigned char
source_byte (uint64_t o)
{
  return (unsigned char) (o / 4096 * 7 + o % 251 + 1);
}

static void
planned_image (bool rt_last)
{
  const uint64_t cs = 4096, src_size = 299 * 4096 + 1000;
  struct qcow2_plan p;
  uint64_t rel, guest_of[600];
  FILE *src_file = tmpfile (), *spill_file = tmpfile ();
  FILE *dst_file = tmpfile ();
  struct sc_endpoint *src, *image, *dst;
  static const size_t steps[] = { 777, 4097, 8193 };
  unsigned char *want, *got, *buf, *data;
  uint64_t size, spill_size, data_end, rt;

  CU_ASSERT_FATAL (src_file && spill_file && dst_file);
  CU_ASSERT_EQUAL_FATAL (qcow2_plan_init (&p, 3, 12, 4, SC_CODEC_DEFLATE,
                                          1 << 24), 0);
  p.rt_last = rt_last;
  /* Uncompressed clusters in runs broken by gaps in the guest and by
   * compressed clusters; the last one runs past the end of the source.
   */
  memset (guest_of, 0xff, sizeof guest_of);
  for (uint64_t gc = 0; gc < 300; gc++) {
    if (gc % 7 == 3)
      continue;
    if (gc % 5 < 3 || gc == 299) {
      CU_ASSERT_EQUAL_FATAL (qcow2_plan_add_normal (&p, gc, &rel), 0);
      guest_of[rel / cs] = gc;
    }
    else
      CU_ASSERT_EQUAL_FATAL (qcow2_plan_add_compressed (&p, gc,
                                                        100 + gc * 37 % 3000,
                                                        &rel), 0);
  }
  CU_ASSERT_EQUAL_FATAL (qcow2_plan_layout (&p), 0);
  size = p.file_size;
  /* The data area, and with rt_last the refcount table after its last
   * cluster, which ends the file.
   */
  data_end = p.data_offset + SC_ROUND_UP (p.data_end, 512);
  rt = p.h.refcount_table_offset;
  if (rt_last) {
    CU_ASSERT_EQUAL (rt, p.data_offset + p.data_clusters * cs);
    CU_ASSERT_EQUAL (size, rt + p.rt_clusters * cs);
    CU_ASSERT (data_end <= rt);
  }
  else {
    CU_ASSERT_EQUAL (rt, cs);
    CU_ASSERT_EQUAL (size, data_end);
  }
  spill_size = data_end - p.data_offset;
  CU_ASSERT_FATAL (spill_size / cs < 600);

  want = malloc (size);
  got = malloc (size);
  buf = malloc (spill_size);
  data = malloc (src_size);
  CU_ASSERT_FATAL (want && got && buf && data);
  for (uint64_t o = 0; o < src_size; o++)
    data[o] = source_byte (o);
  CU_ASSERT_FATAL (fwrite (data, 1, src_size, src_file) == src_size);
  for (uint64_t o = 0; o < spill_size; o++)
    buf[o] = (unsigned char) (0xa5 ^ o);
  CU_ASSERT_FATAL (fwrite (buf, 1, spill_size, spill_file) == spill_size);
  fflush (src_file);
  fflush (spill_file);

  for (uint64_t k = 0; k < p.data_offset / cs; k++)
    CU_ASSERT_EQUAL (qcow2_plan_metadata (&p, k, want + k * cs), 0);
  CU_ASSERT_EQUAL (qcow2_plan_metadata (&p, p.data_offset / cs, buf), -1);
  for (uint64_t r = 0; r < spill_size; r++) {
    uint64_t gc = guest_of[r / cs], o = gc * cs + r % cs;
    want[p.data_offset + r] = gc == UINT64_MAX ? buf[r]
      : o < src_size ? source_byte (o) : 0;
  }
  if (rt_last) {
    /* Zeros to the end of the last data cluster, then the table, whose
     * clusters have refcount 1 like the rest of the metadata.
     */
    memset (want + data_end, 0, rt - data_end);
    for (uint64_t k = rt / cs; k < size / cs; k++)
      CU_ASSERT_EQUAL (qcow2_plan_metadata (&p, k, want + k * cs), 0);
    CU_ASSERT_EQUAL (sc_get_be64 (want + rt), p.rb_offset);
    CU_ASSERT_EQUAL (qcow2_refcount_get (want + p.rb_offset,
                                         p.h.refcount_order, rt / cs), 1);
    CU_ASSERT_EQUAL (qcow2_refcount_get (want + p.rb_offset,
                                         p.h.refcount_order, size / cs), 0);
  }

  src = sc_endpoint_open_fd_source (fileno (src_file), "src", SC_MAP_SEEK);
  CU_ASSERT_FATAL (src != NULL);
  image = qcow2_image_endpoint (&p, src, fileno (spill_file), "src");
  CU_ASSERT_FATAL (image != NULL);
  CU_ASSERT_EQUAL (image->size, size);

  /* Whole, and in pieces that cut clusters anywhere. */
  CU_ASSERT_EQUAL (sc_ep_pread (image, got, size, 0), 0);
  CU_ASSERT (memcmp (got, want, size) == 0);
  /* The refcounts it stores are the references it holds. */
  check_stored_refcounts (got, size);
  for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    size_t step = steps[i];

    memset (got, 0, size);
    for (uint64_t o = 0; o < size; o += step)
      CU_ASSERT_EQUAL (sc_ep_pread (image, got + o, SC_MIN (step, size - o),
                                    o), 0);
    CU_ASSERT (memcmp (got, want, size) == 0);
  }
  CU_ASSERT_EQUAL (sc_ep_pread (image, got, 1, size), -1);

  /* Copied to a file in pieces: what copy_to declines is written. */
  dst = sc_endpoint_open_fd_target (fileno (dst_file), "dst", size);
  CU_ASSERT_FATAL (dst != NULL);
  for (uint64_t o = 0; o < size; o += 3 * cs) {
    uint64_t n = SC_MIN (3 * cs, size - o);
    int r = sc_ep_copy_range (image, o, dst, o, n, 0);

    CU_ASSERT (r == 0 || r == 1);
    if (r == 1)
      CU_ASSERT (sc_ep_pread (image, buf, n, o) == 0
                 && sc_ep_pwrite (dst, buf, n, o) == 0);
  }
  memset (got, 0, size);
  CU_ASSERT_EQUAL (sc_ep_pread (dst, got, size, 0), 0);
  CU_ASSERT (memcmp (got, want, size) == 0);

  sc_ep_close (dst);
  sc_ep_close (image);
  sc_ep_close (src);
  fclose (src_file);
  fclose (spill_file);
  fclose (dst_file);
  free (want);
  free (got);
  free (buf);
  free (data);
  qcow2_plan_free (&p);
}

static void
test_planned_image (void)
{
  planned_image (false);
}

/* The layout of a stream: the refcount table after the data. */
static void
test_planned_image_rt_last (void)
{
  planned_image (true);
}

int
main (void)
{
  CU_pSuite s;
  unsigned failures;

  if (CU_initialize_registry () != CUE_SUCCESS)
    return EXIT_FAILURE;
  s = CU_add_suite ("writer", NULL, NULL);
  if (s == NULL
      || !CU_add_test (s, "compressed descriptor round trip",
                       test_descriptor_round_trip)
      || !CU_add_test (s, "refcount packing", test_refcount_packing)
      || !CU_add_test (s, "refcount at every order",
                       test_refcount_every_order)
      || !CU_add_test (s, "refcount layout fixed point",
                       test_layout_fixed_point)
      || !CU_add_test (s, "plan placement", test_plan_placement)
      || !CU_add_test (s, "planned image", test_planned_image)
      || !CU_add_test (s, "planned image, refcount table last",
                       test_planned_image_rt_last)) {
    CU_cleanup_registry ();
    return EXIT_FAILURE;
  }
  CU_basic_set_mode (CU_BRM_VERBOSE);
  CU_basic_run_tests ();
  failures = CU_get_number_of_failures ();
  CU_cleanup_registry ();
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
