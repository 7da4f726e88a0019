/* Unit tests: the qcow2 header parser and the reader, on crafted
 * images.  Every header field that is validated is broken once here and
 * must be refused with a message naming it.
 */
#include <config.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <CUnit/Basic.h>

#include "internal.h"
#include "qcow2.h"

/* A crafted image: 4 KiB clusters; header in cluster 0, refcount table
 * in 1, a refcount block in 2, L1 in 3, L2 in 4, data from 5.
 */
#define CB        12
#define CS        (1U << CB)
#define NCLUSTERS 8
#define RT_OFF    (1 * CS)
#define RB_OFF    (2 * CS)
#define L1_OFF    (3 * CS)
#define L2_OFF    (4 * CS)
#define DATA_OFF  (5 * CS)
#define VSIZE     (16 * 1024 * 1024)

static unsigned char img[NCLUSTERS * CS];
static char tmpdir[] = "/tmp/unit-qcow2.XXXXXX";
static unsigned file_counter;

static void
make_v3 (void)
{
  memset (img, 0, sizeof img);
  sc_put_be32 (img + QCOW2_HDR_MAGIC, QCOW2_MAGIC);
  sc_put_be32 (img + QCOW2_HDR_VERSION, 3);
  sc_put_be32 (img + QCOW2_HDR_CLUSTER_BITS, CB);
  sc_put_be64 (img + QCOW2_HDR_SIZE, VSIZE);
  /* 16 MiB / (4 KiB * 512 entries) = 8 L1 entries. */
  sc_put_be32 (img + QCOW2_HDR_L1_SIZE, 8);
  sc_put_be64 (img + QCOW2_HDR_L1_OFFSET, L1_OFF);
  sc_put_be64 (img + QCOW2_HDR_RT_OFFSET, RT_OFF);
  sc_put_be32 (img + QCOW2_HDR_RT_CLUSTERS, 1);
  sc_put_be32 (img + QCOW2_HDR_REFCOUNT_ORDER, 4);
  sc_put_be32 (img + QCOW2_HDR_HEADER_LENGTH, QCOW2_V3_HEADER_SIZE);
  sc_put_be64 (img + RT_OFF, RB_OFF);
}

static void
make_v2 (void)
{
  make_v3 ();
  sc_put_be32 (img + QCOW2_HDR_VERSION, 2);
  /* v3 fields are just bytes after a v2 header: make them garbage to
   * prove they are not read.
   */
  memset (img + QCOW2_V2_HEADER_SIZE, 0, QCOW2_V3_HEADER_SIZE
          - QCOW2_V2_HEADER_SIZE);
  sc_put_be32 (img + QCOW2_HDR_REFCOUNT_ORDER, 99);
}

/* Append a header extension at *pos. */
static void
add_ext (size_t *pos, uint32_t type, const void *data, uint32_t len)
{
  sc_put_be32 (img + *pos, type);
  sc_put_be32 (img + *pos + 4, len);
  memcpy (img + *pos + 8, data, len);
  *pos += 8 + SC_ROUND_UP (len, 8);
}

static char *
write_image (size_t len)
{
  char *path;
  FILE *fp;

  if (asprintf (&path, "%s/img%u", tmpdir, file_counter++) == -1)
    abort ();
  fp = fopen (path, "w");
  if (fp == NULL || fwrite (img, 1, len, fp) != len || fclose (fp) != 0)
    abort ();
  return path;
}

/* Parse the current img (first len bytes); returns the result. */
static int
parse (size_t len, bool for_reading, struct qcow2_header *h)
{
  char *path = write_image (len);
  int fd = open (path, O_RDONLY);
  struct sc_endpoint *ep;
  int r;

  CU_ASSERT_FATAL (fd >= 0);
  ep = sc_endpoint_open_fd_source (fd, path, SC_MAP_SEEK);
  CU_ASSERT_FATAL (ep != NULL);
  r = qcow2_header_read (ep, len, for_reading, h);
  sc_ep_close (ep);
  close (fd);
  unlink (path);
  free (path);
  return r;
}

/* The current img must be refused with a message containing what. */
static void
expect_refused (const char *what, bool for_reading)
{
  struct qcow2_header h;

  if (parse (sizeof img, for_reading, &h) != -1) {
    fprintf (stderr, "\naccepted, expected '%s'\n", what);
    CU_FAIL ("bad header accepted");
    qcow2_header_free (&h);
    return;
  }
  if (strstr (sc_error_message (), what) == NULL) {
    fprintf (stderr, "\nmessage '%s' lacks '%s'\n", sc_error_message (),
             what);
    CU_FAIL ("wrong message");
  }
}

static void
test_good_v3 (void)
{
  struct qcow2_header h;
  size_t pos = QCOW2_V3_HEADER_SIZE;
  unsigned char table[2 * 48] = { 0 };

  make_v3 ();
  add_ext (&pos, QCOW2_EXT_BACKING_FORMAT, "qcow2", 5);
  add_ext (&pos, QCOW2_EXT_FEATURE_TABLE, table, sizeof table);
  add_ext (&pos, 0x12345678, "ignored", 7);
  pos += 8;                     /* end marker */
  memcpy (img + pos, "base.img", 8);
  sc_put_be64 (img + QCOW2_HDR_BACKING_OFFSET, pos);
  sc_put_be32 (img + QCOW2_HDR_BACKING_SIZE, 8);
  sc_put_be64 (img + QCOW2_HDR_INCOMPAT, QCOW2_INCOMPAT_DIRTY);
  sc_put_be64 (img + QCOW2_HDR_COMPAT, QCOW2_COMPAT_LAZY_REFCOUNTS);

  CU_ASSERT_EQUAL_FATAL (parse (sizeof img, true, &h), 0);
  CU_ASSERT_EQUAL (h.version, 3);
  CU_ASSERT_EQUAL (h.cluster_size, CS);
  CU_ASSERT_EQUAL (h.size, VSIZE);
  CU_ASSERT_EQUAL (h.l1_size, 8);
  CU_ASSERT_EQUAL (h.l2_entries, CS / 8);
  CU_ASSERT_EQUAL (h.l2_entry_size, 8);
  CU_ASSERT_EQUAL (h.refcount_bits, 16);
  CU_ASSERT_EQUAL (h.refcount_max, 65535);
  CU_ASSERT_EQUAL (h.compression_type, 0);
  CU_ASSERT_EQUAL (h.compatible_features, QCOW2_COMPAT_LAZY_REFCOUNTS);
  CU_ASSERT_PTR_NOT_NULL_FATAL (h.backing_file);
  CU_ASSERT_STRING_EQUAL (h.backing_file, "base.img");
  CU_ASSERT_PTR_NOT_NULL_FATAL (h.backing_format);
  CU_ASSERT_STRING_EQUAL (h.backing_format, "qcow2");
  CU_ASSERT_PTR_NULL (h.data_file);
  CU_ASSERT_FALSE (h.has_crypto_ext);
  qcow2_header_free (&h);
  CU_ASSERT_PTR_NULL (h.backing_file);

  /* zstd, extended L2, external data file, 1-bit refcounts. */
  make_v3 ();
  pos = QCOW2_V3_HEADER_SIZE;
  add_ext (&pos, QCOW2_EXT_DATA_FILE, "disk.data", 9);
  img[QCOW2_HDR_COMPRESSION] = 1;
  sc_put_be32 (img + QCOW2_HDR_REFCOUNT_ORDER, 0);
  sc_put_be64 (img + QCOW2_HDR_INCOMPAT, QCOW2_INCOMPAT_COMPRESSION
               | QCOW2_INCOMPAT_EXTL2 | QCOW2_INCOMPAT_DATA_FILE);
  sc_put_be32 (img + QCOW2_HDR_CLUSTER_BITS, 14);
  sc_put_be64 (img + QCOW2_HDR_L1_OFFSET, 0x4000);
  sc_put_be64 (img + QCOW2_HDR_RT_OFFSET, 0x4000);
  sc_put_be32 (img + QCOW2_HDR_L1_SIZE, 16);
  sc_put_be64 (img + QCOW2_HDR_SIZE, 16 * 16384 * 1024);
  CU_ASSERT_EQUAL_FATAL (parse (sizeof img, true, &h), 0);
  CU_ASSERT_EQUAL (h.compression_type, 1);
  CU_ASSERT_EQUAL (h.l2_entry_size, 16);
  CU_ASSERT_EQUAL (h.l2_entries, 1024);
  CU_ASSERT_EQUAL (h.refcount_bits, 1);
  CU_ASSERT_EQUAL (h.refcount_max, 1);
  CU_ASSERT_PTR_NOT_NULL_FATAL (h.data_file);
  CU_ASSERT_STRING_EQUAL (h.data_file, "disk.data");
  qcow2_header_free (&h);
}

static void
test_good_v2 (void)
{
  struct qcow2_header h;

  make_v2 ();
  CU_ASSERT_EQUAL_FATAL (parse (sizeof img, true, &h), 0);
  CU_ASSERT_EQUAL (h.version, 2);
  CU_ASSERT_EQUAL (h.refcount_order, 4);
  CU_ASSERT_EQUAL (h.refcount_bits, 16);
  CU_ASSERT_EQUAL (h.header_length, QCOW2_V2_HEADER_SIZE);
  CU_ASSERT_EQUAL (h.incompatible_features, 0);
  qcow2_header_free (&h);

  /* An empty image (size 0, no L1 table at all) is valid. */
  make_v3 ();
  sc_put_be64 (img + QCOW2_HDR_SIZE, 0);
  sc_put_be32 (img + QCOW2_HDR_L1_SIZE, 0);
  sc_put_be64 (img + QCOW2_HDR_L1_OFFSET, 0);
  CU_ASSERT_EQUAL_FATAL (parse (sizeof img, true, &h), 0);
  qcow2_header_free (&h);
}

static void
test_bad_fields (void)
{
  struct qcow2_header h;
  size_t pos;

  make_v3 ();
  CU_ASSERT_EQUAL (parse (50, true, &h), -1);
  CU_ASSERT_PTR_NOT_NULL (strstr (sc_error_message (), "too small"));
  CU_ASSERT_EQUAL (parse (80, true, &h), -1);
  CU_ASSERT_PTR_NOT_NULL (strstr (sc_error_message (), "too small"));

  make_v3 (); img[0] = 'X';
  expect_refused ("bad magic", true);
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_VERSION, 1);
  expect_refused ("unsupported qcow2 version 1", true);
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_VERSION, 4);
  expect_refused ("unsupported qcow2 version 4", true);
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_CLUSTER_BITS, 8);
  expect_refused ("invalid cluster_bits 8", true);
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_CLUSTER_BITS, 22);
  expect_refused ("invalid cluster_bits 22", true);
  make_v3 (); sc_put_be64 (img + QCOW2_HDR_INCOMPAT, QCOW2_INCOMPAT_EXTL2);
  expect_refused ("extended L2 entries need clusters", true);

  make_v3 (); sc_put_be32 (img + QCOW2_HDR_HEADER_LENGTH, 100);
  expect_refused ("invalid header_length 100", true);
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_HEADER_LENGTH, 108);
  expect_refused ("invalid header_length 108", true);
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_HEADER_LENGTH, CS + 8);
  expect_refused ("header_length", true);
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_REFCOUNT_ORDER, 7);
  expect_refused ("invalid refcount_order 7", true);

  /* Backing file name: length and place. */
  make_v3 ();
  sc_put_be64 (img + QCOW2_HDR_BACKING_OFFSET, 512);
  sc_put_be32 (img + QCOW2_HDR_BACKING_SIZE, 1024);
  expect_refused ("invalid backing file name length 1024", true);
  make_v3 ();
  sc_put_be64 (img + QCOW2_HDR_BACKING_OFFSET, CS - 4);
  sc_put_be32 (img + QCOW2_HDR_BACKING_SIZE, 8);
  expect_refused ("not inside the first cluster", true);
  make_v3 ();
  sc_put_be64 (img + QCOW2_HDR_BACKING_OFFSET, 16);
  sc_put_be32 (img + QCOW2_HDR_BACKING_SIZE, 8);
  expect_refused ("not inside the first cluster", true);
  make_v3 ();
  sc_put_be64 (img + QCOW2_HDR_BACKING_OFFSET, UINT64_MAX - 2);
  sc_put_be32 (img + QCOW2_HDR_BACKING_SIZE, 8);
  expect_refused ("not inside the first cluster", true);

  /* L1 table. */
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_L1_SIZE, 7);
  expect_refused ("too small for the virtual size", true);
  make_v3 (); sc_put_be64 (img + QCOW2_HDR_SIZE, UINT64_MAX);
  expect_refused ("too small for the virtual size", true);
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_L1_SIZE, 0xffffffff);
  expect_refused ("L1 table too large", true);
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_L1_SIZE, 4 * 1024 * 1024 + 1);
  expect_refused ("L1 table too large", true);
  make_v3 (); sc_put_be64 (img + QCOW2_HDR_L1_OFFSET, L1_OFF + 512);
  expect_refused ("L1 table offset 0x3200 is not aligned", true);
  make_v3 (); sc_put_be64 (img + QCOW2_HDR_L1_OFFSET, 0);
  expect_refused ("L1 table offset 0 overlaps the header", true);
  make_v3 (); sc_put_be64 (img + QCOW2_HDR_L1_OFFSET, NCLUSTERS * CS);
  expect_refused ("L1 table (offset 0x8000, 64 bytes) lies beyond", true);
  make_v3 (); sc_put_be64 (img + QCOW2_HDR_L1_OFFSET, 0xfffffffffffff000ULL);
  expect_refused ("lies beyond the end", true);

  /* Refcount table. */
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_RT_CLUSTERS, 2049);
  expect_refused ("refcount table too large", true);
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_RT_CLUSTERS, 0);
  expect_refused ("no refcount table", true);
  make_v3 (); sc_put_be64 (img + QCOW2_HDR_RT_OFFSET, RT_OFF + 8);
  expect_refused ("refcount table offset 0x1008 is not aligned", true);
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_RT_CLUSTERS, 8);
  expect_refused ("refcount table (offset 0x1000, 32768 bytes) lies beyond",
                  true);

  /* Snapshots. */
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_NB_SNAPSHOTS, 65537);
  sc_put_be64 (img + QCOW2_HDR_SNAPSHOTS_OFFSET, DATA_OFF);
  expect_refused ("too many snapshots (65537", true);
  make_v3 (); sc_put_be32 (img + QCOW2_HDR_NB_SNAPSHOTS, 1);
  sc_put_be64 (img + QCOW2_HDR_SNAPSHOTS_OFFSET, DATA_OFF + 8);
  expect_refused ("snapshot table offset", true);

  /* Compression type and its feature bit. */
  make_v3 (); img[QCOW2_HDR_COMPRESSION] = 1;
  expect_refused ("does not match the compression type feature bit", true);
  make_v3 ();
  sc_put_be64 (img + QCOW2_HDR_INCOMPAT, QCOW2_INCOMPAT_COMPRESSION);
  expect_refused ("does not match the compression type feature bit", true);
  make_v3 (); img[QCOW2_HDR_COMPRESSION] = 2;
  sc_put_be64 (img + QCOW2_HDR_INCOMPAT, QCOW2_INCOMPAT_COMPRESSION);
  expect_refused ("unknown compression type 2", true);

  /* Header extensions. */
  make_v3 ();
  sc_put_be32 (img + QCOW2_V3_HEADER_SIZE, QCOW2_EXT_BACKING_FORMAT);
  sc_put_be32 (img + QCOW2_V3_HEADER_SIZE + 4, CS);
  expect_refused ("runs past the end of the header cluster", true);
  make_v3 ();
  pos = QCOW2_V3_HEADER_SIZE;
  add_ext (&pos, QCOW2_EXT_FEATURE_TABLE, img + 1024, 47);
  expect_refused ("feature name table", true);
  make_v3 ();
  pos = QCOW2_V3_HEADER_SIZE;
  add_ext (&pos, QCOW2_EXT_BACKING_FORMAT, "raw", 3);
  add_ext (&pos, QCOW2_EXT_BACKING_FORMAT, "raw", 3);
  expect_refused ("duplicate backing format", true);
  make_v3 ();
  pos = QCOW2_V3_HEADER_SIZE;
  add_ext (&pos, QCOW2_EXT_BACKING_FORMAT, "r\0w", 3);
  expect_refused ("embedded NUL", true);
}

/* What only for_reading refuses; the checker must still see these. */
static void
test_for_reading (void)
{
  struct qcow2_header h;
  size_t pos;

  make_v3 (); sc_put_be32 (img + QCOW2_HDR_CRYPT_METHOD, 2);
  expect_refused ("encrypted images are not supported", true);
  CU_ASSERT_EQUAL (parse (sizeof img, false, &h), 0);
  CU_ASSERT_EQUAL (h.crypt_method, 2);
  qcow2_header_free (&h);

  make_v3 ();
  pos = QCOW2_V3_HEADER_SIZE;
  add_ext (&pos, QCOW2_EXT_CRYPTO, img + 2048, 16);
  expect_refused ("encrypted images are not supported", true);
  CU_ASSERT_EQUAL (parse (sizeof img, false, &h), 0);
  CU_ASSERT_TRUE (h.has_crypto_ext);
  qcow2_header_free (&h);

  make_v3 (); sc_put_be64 (img + QCOW2_HDR_INCOMPAT, 1ULL << 40 | 1ULL << 5);
  expect_refused ("unknown incompatible feature bits 0x10000000020", true);
  CU_ASSERT_EQUAL (parse (sizeof img, false, &h), 0);
  qcow2_header_free (&h);

  make_v3 (); sc_put_be64 (img + QCOW2_HDR_INCOMPAT, QCOW2_INCOMPAT_CORRUPT);
  expect_refused ("image is marked corrupt", true);
  CU_ASSERT_EQUAL (parse (sizeof img, false, &h), 0);
  CU_ASSERT_EQUAL (h.incompatible_features, QCOW2_INCOMPAT_CORRUPT);
  qcow2_header_free (&h);

  make_v3 (); sc_put_be64 (img + QCOW2_HDR_INCOMPAT, QCOW2_INCOMPAT_DIRTY);
  CU_ASSERT_EQUAL (parse (sizeof img, true, &h), 0);
  qcow2_header_free (&h);
}

static void
set_geometry (struct qcow2_header *h, unsigned cluster_bits, bool extl2)
{
  memset (h, 0, sizeof *h);
  h->version = 3;
  h->cluster_bits = cluster_bits;
  h->cluster_size = 1U << cluster_bits;
  h->l2_entry_size = extl2 ? 16 : 8;
  h->l2_entries = h->cluster_size / h->l2_entry_size;
  if (extl2)
    h->incompatible_features |= QCOW2_INCOMPAT_EXTL2;
}

static void
test_index_arithmetic (void)
{
  struct qcow2_header h;

  set_geometry (&h, 16, false);
  CU_ASSERT_EQUAL (qcow2_offset_to_l1_index (&h, 0), 0);
  CU_ASSERT_EQUAL (qcow2_offset_to_l2_index (&h, 65535), 0);
  CU_ASSERT_EQUAL (qcow2_offset_to_l2_index (&h, 65536), 1);
  /* One L2 table maps 8192 clusters of 64 KiB = 512 MiB. */
  CU_ASSERT_EQUAL (qcow2_offset_to_l1_index (&h, (512ULL << 20) - 1), 0);
  CU_ASSERT_EQUAL (qcow2_offset_to_l2_index (&h, (512ULL << 20) - 1), 8191);
  CU_ASSERT_EQUAL (qcow2_offset_to_l1_index (&h, 512ULL << 20), 1);
  CU_ASSERT_EQUAL (qcow2_offset_to_l2_index (&h, 512ULL << 20), 0);
  CU_ASSERT_EQUAL (qcow2_offset_to_l1_index (&h, 8ULL << 40), 16384);
  CU_ASSERT_EQUAL (qcow2_offset_into_cluster (&h, 0x12345), 0x2345);
  CU_ASSERT_EQUAL (qcow2_size_to_clusters (&h, 0), 0);
  CU_ASSERT_EQUAL (qcow2_size_to_clusters (&h, 1), 1);
  CU_ASSERT_EQUAL (qcow2_size_to_clusters (&h, 65537), 2);

  /* Extended L2 halves the entries per table. */
  set_geometry (&h, 16, true);
  CU_ASSERT_EQUAL (qcow2_offset_to_l1_index (&h, (256ULL << 20) - 1), 0);
  CU_ASSERT_EQUAL (qcow2_offset_to_l1_index (&h, 256ULL << 20), 1);
  CU_ASSERT_EQUAL (qcow2_offset_to_l2_index (&h, (256ULL << 20) + 3 * 65536),
                   3);

  set_geometry (&h, 9, false);
  CU_ASSERT_EQUAL (qcow2_offset_to_l1_index (&h, 32768), 1);
  CU_ASSERT_EQUAL (qcow2_offset_to_l2_index (&h, 32767), 63);
  set_geometry (&h, 21, false);
  CU_ASSERT_EQUAL (qcow2_offset_to_l1_index (&h, 1ULL << 40), 2);
  CU_ASSERT_EQUAL (qcow2_offset_to_l2_index (&h, (1ULL << 40) + (4 << 20)),
                   2);
}

static void
test_compressed_descriptor (void)
{
  static const unsigned bits[] = { 9, 12, 16, 21 };
  struct qcow2_header h;
  uint64_t off, n;

  for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++) {
    unsigned shift;
    uint64_t max_field;

    set_geometry (&h, bits[i], false);
    shift = 62 - (bits[i] - 8);
    CU_ASSERT_EQUAL (qcow2_csize_shift (&h), shift);
    max_field = (1ULL << (bits[i] - 8)) - 1;

    /* Sector aligned, one sector. */
    qcow2_compressed_descriptor (&h, QCOW2_OFLAG_COMPRESSED | 0x50000,
                                 &off, &n);
    CU_ASSERT_EQUAL (off, 0x50000);
    CU_ASSERT_EQUAL (n, 512);
    /* Unaligned start: the first sector is partly someone else's. */
    qcow2_compressed_descriptor (&h, QCOW2_OFLAG_COMPRESSED
                                 | (1ULL << shift) | 0x50123, &off, &n);
    CU_ASSERT_EQUAL (off, 0x50123);
    CU_ASSERT_EQUAL (n, 2 * 512 - 0x123);
    /* The largest sector count the field holds. */
    qcow2_compressed_descriptor (&h, QCOW2_OFLAG_COMPRESSED | QCOW2_OFLAG_COPIED
                                 | (max_field << shift) | 0x1000, &off, &n);
    CU_ASSERT_EQUAL (off, 0x1000);
    CU_ASSERT_EQUAL (n, (max_field + 1) * 512);
    /* The highest offset bit belongs to the offset, not the count. */
    qcow2_compressed_descriptor (&h, QCOW2_OFLAG_COMPRESSED
                                 | (1ULL << (shift - 1)), &off, &n);
    CU_ASSERT_EQUAL (off, 1ULL << (shift - 1));
    CU_ASSERT_EQUAL (n, 512);
  }
}

static void
test_l2_entry_type (void)
{
  struct qcow2_header h;
  enum qcow2_cluster_type t;

  set_geometry (&h, 16, false);
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, 0, &t), 0);
  CU_ASSERT_EQUAL (t, QCOW2_CLUSTER_UNALLOCATED);
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, QCOW2_OFLAG_ZERO, &t), 0);
  CU_ASSERT_EQUAL (t, QCOW2_CLUSTER_ZERO_PLAIN);
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, 0x70000 | QCOW2_OFLAG_ZERO, &t), 0);
  CU_ASSERT_EQUAL (t, QCOW2_CLUSTER_ZERO_ALLOC);
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, 0x70000, &t), 0);
  CU_ASSERT_EQUAL (t, QCOW2_CLUSTER_NORMAL);
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, 0x70000 | QCOW2_OFLAG_COPIED,
                                        &t), 0);
  CU_ASSERT_EQUAL (t, QCOW2_CLUSTER_NORMAL);
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, QCOW2_OFLAG_COMPRESSED | 0x70123,
                                        &t), 0);
  CU_ASSERT_EQUAL (t, QCOW2_CLUSTER_COMPRESSED);
  /* Offset 0 with COPIED is unallocated, unless in a data file. */
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, QCOW2_OFLAG_COPIED, &t), 0);
  CU_ASSERT_EQUAL (t, QCOW2_CLUSTER_UNALLOCATED);

  /* Reserved bits and misalignment. */
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, 0x70000 | 2, &t), -1);
  CU_ASSERT_PTR_NOT_NULL (strstr (sc_error_message (), "reserved bits"));
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, 0x70000 | (1ULL << 56), &t), -1);
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, 0x70000 | (1ULL << 61), &t), -1);
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, 0x70200, &t), -1);
  CU_ASSERT_PTR_NOT_NULL (strstr (sc_error_message (), "not aligned"));

  /* External data file: offset 0 is a place; no compression. */
  h.incompatible_features = QCOW2_INCOMPAT_DATA_FILE;
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, QCOW2_OFLAG_COPIED, &t), 0);
  CU_ASSERT_EQUAL (t, QCOW2_CLUSTER_NORMAL);
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, 0, &t), 0);
  CU_ASSERT_EQUAL (t, QCOW2_CLUSTER_UNALLOCATED);
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, QCOW2_OFLAG_COMPRESSED | 0x1000,
                                        &t), -1);

  /* Extended L2: the zero flag is not used (the bitmap says it). */
  set_geometry (&h, 16, true);
  CU_ASSERT_EQUAL (qcow2_l2_entry_type (&h, 0x70000 | QCOW2_OFLAG_ZERO, &t), 0);
  CU_ASSERT_EQUAL (t, QCOW2_CLUSTER_NORMAL);
}

/* The lenient classifier: every kind of entry, and every kind of
 * damage, from the bit layout in the specification ("Cluster mapping":
 * standard entries keep the host offset in bits 9..55, bits 1..8 and
 * 56..61 are reserved, bit 0 is the zero flag, bit 62 marks a
 * compressed entry and bit 63 is COPIED).
 */
static void
test_l2_entry_classify (void)
{
  static const struct {
    bool data_file, extl2;
    uint64_t e;
    enum qcow2_cluster_type type;
    unsigned faults;
  } cases[] = {
    { false, false, 0, QCOW2_CLUSTER_UNALLOCATED, 0 },
    { false, false, 1ULL << 63, QCOW2_CLUSTER_UNALLOCATED, 0 },
    { false, false, 1, QCOW2_CLUSTER_ZERO_PLAIN, 0 },
    { false, false, 0x70001, QCOW2_CLUSTER_ZERO_ALLOC, 0 },
    { false, false, 0x70000, QCOW2_CLUSTER_NORMAL, 0 },
    { false, false, 0x8000000000070000ULL, QCOW2_CLUSTER_NORMAL, 0 },
    { false, false, 0x00fffffffffe0000ULL, QCOW2_CLUSTER_NORMAL, 0 },
    { false, false, 0x4000000000070123ULL, QCOW2_CLUSTER_COMPRESSED, 0 },
    /* Bits 56..61 belong to the descriptor of a compressed entry. */
    { false, false, 0x7f00000000070123ULL, QCOW2_CLUSTER_COMPRESSED, 0 },
    /* Damage. */
    { false, false, 0xc000000000070123ULL, QCOW2_CLUSTER_COMPRESSED,
      QCOW2_FAULT_COMPRESSED_COPIED },
    { false, false, 0x70002, QCOW2_CLUSTER_NORMAL, QCOW2_FAULT_RESERVED },
    { false, false, 0x70100, QCOW2_CLUSTER_NORMAL, QCOW2_FAULT_RESERVED },
    { false, false, 0x0100000000070000ULL, QCOW2_CLUSTER_NORMAL,
      QCOW2_FAULT_RESERVED },
    { false, false, 0x2000000000070000ULL, QCOW2_CLUSTER_NORMAL,
      QCOW2_FAULT_RESERVED },
    { false, false, 0x2000000000000000ULL, QCOW2_CLUSTER_UNALLOCATED,
      QCOW2_FAULT_RESERVED },
    { false, false, 0x70200, QCOW2_CLUSTER_NORMAL, QCOW2_FAULT_MISALIGNED },
    { false, false, 0x70201, QCOW2_CLUSTER_ZERO_ALLOC,
      QCOW2_FAULT_MISALIGNED },
    { false, false, 0x70202, QCOW2_CLUSTER_NORMAL,
      QCOW2_FAULT_RESERVED | QCOW2_FAULT_MISALIGNED },
    /* External data file: offset 0 with COPIED is a place there, and
     * compressed clusters cannot exist.
     */
    { true, false, 1ULL << 63, QCOW2_CLUSTER_NORMAL, 0 },
    { true, false, 0, QCOW2_CLUSTER_UNALLOCATED, 0 },
    { true, false, 0x4000000000070000ULL, QCOW2_CLUSTER_COMPRESSED,
      QCOW2_FAULT_COMPRESSED_DATA_FILE },
    { true, false, 0xc000000000070000ULL, QCOW2_CLUSTER_COMPRESSED,
      QCOW2_FAULT_COMPRESSED_COPIED | QCOW2_FAULT_COMPRESSED_DATA_FILE },
    /* Extended L2: the zero flag is not used. */
    { false, true, 1, QCOW2_CLUSTER_UNALLOCATED, 0 },
    { false, true, 0x70001, QCOW2_CLUSTER_NORMAL, 0 },
  };

  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct qcow2_header h;
    unsigned faults = 12345;

    set_geometry (&h, 16, cases[i].extl2);
    if (cases[i].data_file)
      h.incompatible_features |= QCOW2_INCOMPAT_DATA_FILE;
    CU_ASSERT_EQUAL (qcow2_l2_entry_classify (&h, cases[i].e, &faults),
                     cases[i].type);
    CU_ASSERT_EQUAL (faults, cases[i].faults);
  }
}

/* L1 entries: bits 9..55 are the L2 table offset, bit 63 COPIED, the
 * rest reserved.
 */
static void
test_l1_entry_faults (void)
{
  struct qcow2_header h;

  set_geometry (&h, 16, false);
  CU_ASSERT_EQUAL (qcow2_l1_entry_faults (&h, 0), 0);
  CU_ASSERT_EQUAL (qcow2_l1_entry_faults (&h, 0x8000000000070000ULL), 0);
  CU_ASSERT_EQUAL (qcow2_l1_entry_faults (&h, 0x70001),
                   QCOW2_FAULT_RESERVED);
  CU_ASSERT_EQUAL (qcow2_l1_entry_faults (&h, 0x70100),
                   QCOW2_FAULT_RESERVED);
  CU_ASSERT_EQUAL (qcow2_l1_entry_faults (&h, 0x4000000000070000ULL),
                   QCOW2_FAULT_RESERVED);
  CU_ASSERT_EQUAL (qcow2_l1_entry_faults (&h, 0x0100000000070000ULL),
                   QCOW2_FAULT_RESERVED);
  CU_ASSERT_EQUAL (qcow2_l1_entry_faults (&h, 0x70200),
                   QCOW2_FAULT_MISALIGNED);
  CU_ASSERT_EQUAL (qcow2_l1_entry_faults (&h, 0x70201),
                   QCOW2_FAULT_RESERVED | QCOW2_FAULT_MISALIGNED);
  /* 512-byte clusters: every offset the field holds is aligned. */
  set_geometry (&h, 9, false);
  CU_ASSERT_EQUAL (qcow2_l1_entry_faults (&h, 0x70200), 0);
}

/* Extended L2 bitmaps ("Extended L2 Entries"): bits 0..31 allocated,
 * bits 32..63 reads as zeros; both for one subcluster is corruption, an
 * unallocated cluster has no allocated subclusters, and the bitmap of a
 * compressed cluster is reserved (0).
 */
static void
test_l2_bitmap (void)
{
  /* Subcluster 0 allocated, 1 zero, 2 neither, 3 both, 31 allocated. */
  const uint64_t mixed = 0x1ULL | (1ULL << 33) | (1ULL << 3) | (1ULL << 35)
    | (1ULL << 31);
  struct qcow2_header h;
  unsigned f;

  CU_ASSERT_EQUAL (qcow2_l2_bitmap_faults (QCOW2_CLUSTER_NORMAL, 0), 0);
  CU_ASSERT_EQUAL (qcow2_l2_bitmap_faults (QCOW2_CLUSTER_NORMAL,
                                           0x00000002fffffffdULL), 0);
  CU_ASSERT_EQUAL (qcow2_l2_bitmap_faults (QCOW2_CLUSTER_NORMAL,
                                           (1ULL << 63) | (1ULL << 31)),
                   QCOW2_FAULT_SUBCLUSTER_BOTH);
  CU_ASSERT_EQUAL (qcow2_l2_bitmap_faults (QCOW2_CLUSTER_UNALLOCATED,
                                           0xffffffff00000000ULL), 0);
  CU_ASSERT_EQUAL (qcow2_l2_bitmap_faults (QCOW2_CLUSTER_UNALLOCATED,
                                           1ULL << 5),
                   QCOW2_FAULT_UNALLOCATED_ALLOC);
  CU_ASSERT_EQUAL (qcow2_l2_bitmap_faults (QCOW2_CLUSTER_UNALLOCATED,
                                           (1ULL << 3) | (1ULL << 35)),
                   QCOW2_FAULT_SUBCLUSTER_BOTH
                   | QCOW2_FAULT_UNALLOCATED_ALLOC);
  CU_ASSERT_EQUAL (qcow2_l2_bitmap_faults (QCOW2_CLUSTER_COMPRESSED, 0), 0);
  CU_ASSERT_EQUAL (qcow2_l2_bitmap_faults (QCOW2_CLUSTER_COMPRESSED,
                                           1ULL << 40),
                   QCOW2_FAULT_COMPRESSED_BITMAP);

  set_geometry (&h, 16, true);
  CU_ASSERT_EQUAL (qcow2_subcluster_type (&h, QCOW2_CLUSTER_NORMAL, mixed, 0,
                                          &f), QCOW2_SUBCLUSTER_NORMAL);
  CU_ASSERT_EQUAL (f, 0);
  CU_ASSERT_EQUAL (qcow2_subcluster_type (&h, QCOW2_CLUSTER_NORMAL, mixed, 1,
                                          &f), QCOW2_SUBCLUSTER_ZERO_ALLOC);
  CU_ASSERT_EQUAL (qcow2_subcluster_type (&h, QCOW2_CLUSTER_NORMAL, mixed, 2,
                                          &f),
                   QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC);
  CU_ASSERT_EQUAL (qcow2_subcluster_type (&h, QCOW2_CLUSTER_NORMAL, mixed, 3,
                                          &f), QCOW2_SUBCLUSTER_INVALID);
  CU_ASSERT_EQUAL (f, QCOW2_FAULT_SUBCLUSTER_BOTH);
  CU_ASSERT_EQUAL (qcow2_subcluster_type (&h, QCOW2_CLUSTER_NORMAL, mixed, 31,
                                          &f), QCOW2_SUBCLUSTER_NORMAL);
  CU_ASSERT_EQUAL (qcow2_subcluster_type (&h, QCOW2_CLUSTER_NORMAL,
                                          (1ULL << 31) | (1ULL << 63), 31,
                                          &f), QCOW2_SUBCLUSTER_INVALID);
  CU_ASSERT_EQUAL (f, QCOW2_FAULT_SUBCLUSTER_BOTH);
  /* No host cluster: zeros or the backing file, never data. */
  CU_ASSERT_EQUAL (qcow2_subcluster_type (&h, QCOW2_CLUSTER_UNALLOCATED,
                                          1ULL << 33, 1, &f),
                   QCOW2_SUBCLUSTER_ZERO_PLAIN);
  CU_ASSERT_EQUAL (qcow2_subcluster_type (&h, QCOW2_CLUSTER_UNALLOCATED,
                                          1ULL << 33, 0, &f),
                   QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN);
  CU_ASSERT_EQUAL (f, 0);
  CU_ASSERT_EQUAL (qcow2_subcluster_type (&h, QCOW2_CLUSTER_UNALLOCATED,
                                          1ULL << 31, 0, &f),
                   QCOW2_SUBCLUSTER_INVALID);
  CU_ASSERT_EQUAL (f, QCOW2_FAULT_UNALLOCATED_ALLOC);
  CU_ASSERT_EQUAL (qcow2_subcluster_type (&h, QCOW2_CLUSTER_COMPRESSED,
                                          0, 0, &f),
                   QCOW2_SUBCLUSTER_COMPRESSED);

  /* Without extended L2 the bitmap is absent: one subcluster. */
  set_geometry (&h, 16, false);
  CU_ASSERT_EQUAL (qcow2_subcluster_type (&h, QCOW2_CLUSTER_UNALLOCATED, 0,
                                          0, &f),
                   QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN);
  CU_ASSERT_EQUAL (qcow2_subcluster_type (&h, QCOW2_CLUSTER_ZERO_PLAIN, 0,
                                          0, &f), QCOW2_SUBCLUSTER_ZERO_PLAIN);
  CU_ASSERT_EQUAL (qcow2_subcluster_type (&h, QCOW2_CLUSTER_ZERO_ALLOC, 0,
                                          0, &f), QCOW2_SUBCLUSTER_ZERO_ALLOC);
  CU_ASSERT_EQUAL (qcow2_subcluster_type (&h, QCOW2_CLUSTER_NORMAL, 0, 0,
                                          &f), QCOW2_SUBCLUSTER_NORMAL);
  CU_ASSERT_EQUAL (f, 0);
}

/* Entries are big-endian; an extended entry is 16 bytes, the bitmap
 * second.
 */
static void
test_l2_entry_get (void)
{
  static const unsigned char table[32] = {
    0x80, 0, 0, 0, 0, 0x07, 0, 0,   0, 0, 0, 0x01, 0, 0, 0, 0x02,
    0x40, 0, 0, 0, 0, 0x01, 0x23, 0x45,   0xff, 0, 0, 0, 0, 0, 0, 0x80,
  };
  struct qcow2_header h;
  uint64_t e, bitmap;

  set_geometry (&h, 16, true);
  qcow2_l2_entry_get (&h, table, 1, &e, &bitmap);
  CU_ASSERT_EQUAL (e, 0x4000000000012345ULL);
  CU_ASSERT_EQUAL (bitmap, 0xff00000000000080ULL);
  set_geometry (&h, 16, false);
  qcow2_l2_entry_get (&h, table, 1, &e, &bitmap);
  CU_ASSERT_EQUAL (e, 0x0000000100000002ULL);
  CU_ASSERT_EQUAL (bitmap, 0);
}

/* Encode and decode at every cluster size: x = 62 - (cluster_bits - 8)
 * bits of byte offset, then the count of 512-byte sectors after the
 * first ("Compressed Clusters Descriptor").
 */
static void
test_descriptor_every_cluster_size (void)
{
  struct qcow2_header h;
  uint64_t off, n;

  for (unsigned cb = 9; cb <= 21; cb++) {
    unsigned x = 62 - (cb - 8);
    uint64_t cs = 1ULL << cb;
    const uint64_t offsets[] = { 0x200, 0x201, 0x3ff, 0x12345,
                                 (1ULL << 40) + 511, (1ULL << x) - 1 };
    const uint64_t lens[] = { 1, 511, 512, 513, cs / 2 + 7, cs - 1 };

    set_geometry (&h, cb, false);
    for (size_t i = 0; i < sizeof offsets / sizeof offsets[0]; i++)
      for (size_t j = 0; j < sizeof lens / sizeof lens[0]; j++) {
        uint64_t o = offsets[i], len = lens[j];
        /* From the first byte's sector to the last byte's. */
        uint64_t sectors = (o + len - 1) / 512 - o / 512 + 1;
        uint64_t e = qcow2_make_compressed_descriptor (&h, o, len);

        if (len >= cs)
          continue;
        CU_ASSERT_EQUAL (e, (1ULL << 62) | ((sectors - 1) << x) | o);
        qcow2_compressed_descriptor (&h, e, &off, &n);
        CU_ASSERT_EQUAL (off, o);
        CU_ASSERT_EQUAL (n, sectors * 512 - o % 512);
      }
  }
  /* Worked by hand. */
  set_geometry (&h, 9, false);
  CU_ASSERT_EQUAL (qcow2_make_compressed_descriptor (&h, 0x11ff, 2),
                   0x60000000000011ffULL);
  qcow2_compressed_descriptor (&h, 0x60000000000011ffULL, &off, &n);
  CU_ASSERT_EQUAL (off, 0x11ff);
  CU_ASSERT_EQUAL (n, 513);
  set_geometry (&h, 16, false);
  CU_ASSERT_EQUAL (qcow2_make_compressed_descriptor (&h, 0x10000, 0x3000),
                   0x45c0000000010000ULL);
  set_geometry (&h, 21, false);
  CU_ASSERT_EQUAL (qcow2_make_compressed_descriptor (&h, 0x123456789,
                                                     (1ULL << 21) - 1),
                   0x6000000123456789ULL);
  qcow2_compressed_descriptor (&h, 0x6000000123456789ULL, &off, &n);
  CU_ASSERT_EQUAL (off, 0x123456789);
  CU_ASSERT_EQUAL (n, 0x1001 * 512 - 0x189);
}

/* ---- the snapshot table ---------------------------------------------- */

#define SN_OFF (6 * CS)

/* Write one snapshot table entry at *pos as the specification lays it
 * out ("Snapshots"): 40 bytes, extra data, ID, name, padding to 8.
 */
static void
put_snapshot (size_t *pos, uint64_t l1_offset, uint32_t l1_size,
              const char *id, const char *name, const void *extra,
              uint32_t extra_size)
{
  unsigned char *e = img + *pos;
  size_t id_len = strlen (id), name_len = strlen (name);

  sc_put_be64 (e + 0, l1_offset);
  sc_put_be32 (e + 8, l1_size);
  sc_put_be16 (e + 12, (uint16_t) id_len);
  sc_put_be16 (e + 14, (uint16_t) name_len);
  sc_put_be32 (e + 16, 100);            /* date, seconds */
  sc_put_be32 (e + 20, 200);            /* date, nanoseconds */
  sc_put_be64 (e + 24, 300);            /* VM clock */
  sc_put_be32 (e + 32, 400);            /* VM state size */
  sc_put_be32 (e + 36, extra_size);
  if (extra_size > 0)
    memcpy (e + 40, extra, extra_size);
  memcpy (e + 40 + extra_size, id, id_len);
  memcpy (e + 40 + extra_size + id_len, name, name_len);
  *pos += SC_ROUND_UP (40 + extra_size + id_len + name_len, 8);
}

/* Parse the snapshot table of the first len bytes of img. */
static int
parse_snapshots (size_t len, uint32_t n, uint64_t offset, bool lenient,
                 struct qcow2_snapshots *t)
{
  struct qcow2_header h;
  char *path = write_image (len);
  int fd = open (path, O_RDONLY);
  struct sc_endpoint *ep;
  int r;

  CU_ASSERT_FATAL (fd >= 0);
  memset (&h, 0, sizeof h);
  h.version = 3;
  h.cluster_bits = CB;
  h.cluster_size = CS;
  h.nb_snapshots = n;
  h.snapshots_offset = offset;
  ep = sc_endpoint_open_fd_source (fd, path, SC_MAP_SEEK);
  CU_ASSERT_FATAL (ep != NULL);
  r = qcow2_snapshots_read (ep, len, &h, lenient, t);
  sc_ep_close (ep);
  close (fd);
  unlink (path);
  free (path);
  return r;
}

static void
test_snapshot_table (void)
{
  unsigned char extra[16];
  struct qcow2_snapshots t;
  size_t pos = SN_OFF;

  make_v3 ();
  sc_put_be64 (extra, 0x123456789ULL);  /* large VM state size */
  sc_put_be64 (extra + 8, VSIZE);       /* disk size */
  /* 40 + 16 + 1 + 4 = 61 bytes, padded to 64. */
  put_snapshot (&pos, L1_OFF, 8, "1", "base", extra, sizeof extra);
  /* 40 + 1 + 3 = 44 bytes: the table is 108 bytes long. */
  put_snapshot (&pos, 2 * CS, 4, "2", "n\001x", NULL, 0);

  for (int lenient = 0; lenient <= 1; lenient++) {
    CU_ASSERT_EQUAL_FATAL (parse_snapshots (sizeof img, 2, SN_OFF, lenient,
                                            &t), 0);
    CU_ASSERT_EQUAL_FATAL (t.n, 2);
    CU_ASSERT_EQUAL (t.table_bytes, 108);
    CU_ASSERT_EQUAL (t.s[0].l1_offset, L1_OFF);
    CU_ASSERT_EQUAL (t.s[0].l1_size, 8);
    CU_ASSERT_STRING_EQUAL (t.s[0].id, "1");
    CU_ASSERT_STRING_EQUAL (t.s[0].name, "base");
    CU_ASSERT_EQUAL (t.s[0].date_sec, 100);
    CU_ASSERT_EQUAL (t.s[0].date_nsec, 200);
    CU_ASSERT_EQUAL (t.s[0].vm_clock_nsec, 300);
    CU_ASSERT_EQUAL (t.s[0].vm_state_size, 0x123456789ULL);
    CU_ASSERT_EQUAL (t.s[0].disk_size, VSIZE);
    CU_ASSERT_EQUAL (t.s[0].extra_size, 16);
    CU_ASSERT_EQUAL (t.s[1].l1_offset, 2 * CS);
    CU_ASSERT_EQUAL (t.s[1].vm_state_size, 400);
    CU_ASSERT_EQUAL (t.s[1].disk_size, 0);
    CU_ASSERT_EQUAL (t.s[1].extra_size, 0);
    /* Only the lenient parser makes names printable. */
    CU_ASSERT_STRING_EQUAL (t.s[1].name, lenient ? "n?x" : "n\001x");
    qcow2_snapshots_free (&t);
  }

  /* Cut short inside the second name: the reader refuses, the checker
   * reads zeros there.
   */
  CU_ASSERT_EQUAL (parse_snapshots (SN_OFF + 106, 2, SN_OFF, false, &t), -1);
  CU_ASSERT_PTR_NOT_NULL (strstr (sc_error_message (), "past the end"));
  CU_ASSERT_EQUAL (t.n, 0);
  CU_ASSERT_EQUAL_FATAL (parse_snapshots (SN_OFF + 106, 2, SN_OFF, true,
                                          &t), 0);
  CU_ASSERT_STRING_EQUAL (t.s[1].name, "n");
  CU_ASSERT_EQUAL (t.table_bytes, 108);
  qcow2_snapshots_free (&t);

  /* The lenient parser checks count and offset itself. */
  CU_ASSERT_EQUAL (parse_snapshots (sizeof img, QCOW2_MAX_SNAPSHOTS + 1,
                                    SN_OFF, true, &t), -1);
  CU_ASSERT_EQUAL (sc_error_errno (), EFBIG);
  CU_ASSERT_EQUAL (parse_snapshots (sizeof img, 0, SN_OFF + 8, true, &t),
                   -1);
  CU_ASSERT_EQUAL (sc_error_errno (), EINVAL);

  /* A NUL byte in a name is refused by the reader only. */
  img[SN_OFF + 64 + 40 + 1 + 2] = 0;
  CU_ASSERT_EQUAL (parse_snapshots (sizeof img, 2, SN_OFF, false, &t), -1);
  CU_ASSERT_PTR_NOT_NULL (strstr (sc_error_message (), "NUL"));
  CU_ASSERT_EQUAL (parse_snapshots (sizeof img, 2, SN_OFF, true, &t), 0);
  qcow2_snapshots_free (&t);

  /* More than 1 KiB of extra data: both refuse, with their errno. */
  sc_put_be32 (img + SN_OFF + 36, 1025);
  CU_ASSERT_EQUAL (parse_snapshots (sizeof img, 2, SN_OFF, false, &t), -1);
  CU_ASSERT_EQUAL (sc_error_errno (), EINVAL);
  CU_ASSERT_EQUAL (parse_snapshots (sizeof img, 2, SN_OFF, true, &t), -1);
  CU_ASSERT_EQUAL (sc_error_errno (), EFBIG);
}

/* ---- the reader on a crafted image ------------------------------------ */

/* 512-byte clusters, 64 entries per L2 table: 1 MiB needs 32 L2 tables,
 * so reading it crosses many tables and a small cache must evict.
 * Guest cluster g is stored when g % 3 != 0, and reads as zero (zero
 * flag) when g % 7 == 0.
 */
#define R_CB        9
#define R_CS        (1U << R_CB)
#define R_VSIZE     (1024 * 1024)
#define R_GCLUSTERS (R_VSIZE / R_CS)
#define R_L2E       (R_CS / 8)
#define R_NL2       (R_GCLUSTERS / R_L2E)
#define R_L1        (3 * R_CS)
#define R_L2        (4 * R_CS)
#define R_DATA      ((4 + R_NL2) * R_CS)

static unsigned char *reader_img;
static size_t reader_len;
static char *reader_path;

static bool g_stored (unsigned g) { return g % 3 != 0 && g % 7 != 0; }
static bool g_zero (unsigned g) { return g % 7 == 0; }

static unsigned char
expected_byte (uint64_t off)
{
  unsigned g = (unsigned) (off / R_CS);
  if (!g_stored (g))
    return 0;
  return (unsigned char) (g * 31 + off % 251 + 1);
}

static void
build_reader_image (void)
{
  unsigned char *p;
  uint64_t data = R_DATA;

  reader_len = R_DATA + (uint64_t) R_GCLUSTERS * R_CS;
  p = reader_img = calloc (1, reader_len);
  CU_ASSERT_PTR_NOT_NULL_FATAL (p);
  sc_put_be32 (p + QCOW2_HDR_MAGIC, QCOW2_MAGIC);
  sc_put_be32 (p + QCOW2_HDR_VERSION, 3);
  sc_put_be32 (p + QCOW2_HDR_CLUSTER_BITS, R_CB);
  sc_put_be64 (p + QCOW2_HDR_SIZE, R_VSIZE);
  sc_put_be32 (p + QCOW2_HDR_L1_SIZE, R_NL2);
  sc_put_be64 (p + QCOW2_HDR_L1_OFFSET, R_L1);
  sc_put_be64 (p + QCOW2_HDR_RT_OFFSET, R_CS);
  sc_put_be32 (p + QCOW2_HDR_RT_CLUSTERS, 1);
  sc_put_be32 (p + QCOW2_HDR_REFCOUNT_ORDER, 4);
  sc_put_be32 (p + QCOW2_HDR_HEADER_LENGTH, QCOW2_V3_HEADER_SIZE);
  for (unsigned t = 0; t < R_NL2; t++)
    sc_put_be64 (p + R_L1 + t * 8, (R_L2 + t * R_CS) | QCOW2_OFLAG_COPIED);
  for (unsigned g = 0; g < R_GCLUSTERS; g++) {
    unsigned char *e = p + R_L2 + (uint64_t) g * 8;
    if (g_zero (g))
      sc_put_be64 (e, QCOW2_OFLAG_ZERO);
    else if (g_stored (g)) {
      sc_put_be64 (e, data | QCOW2_OFLAG_COPIED);
      for (unsigned i = 0; i < R_CS; i++)
        p[data + i] = expected_byte ((uint64_t) g * R_CS + i);
      data += R_CS;
    }
  }
  reader_len = data;
  {
    FILE *fp;
    if (asprintf (&reader_path, "%s/reader.qcow2", tmpdir) == -1)
      abort ();
    fp = fopen (reader_path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL (fp);
    CU_ASSERT_EQUAL (fwrite (p, 1, reader_len, fp), reader_len);
    fclose (fp);
  }
}

static bool
check_range (const unsigned char *buf, uint64_t off, size_t len)
{
  for (size_t i = 0; i < len; i++)
    if (buf[i] != expected_byte (off + i))
      return false;
  return true;
}

static void
test_reader_small_cache (void)
{
  struct sc_qcow2_open_opts opts = { .cache_bytes = 1 };
  struct sc_qcow2 *q;
  struct sc_endpoint *ep;
  unsigned char *buf = malloc (R_VSIZE);
  struct sc_extent_list list;

  build_reader_image ();
  q = sc_qcow2_open (reader_path, &opts);
  CU_ASSERT_PTR_NOT_NULL_FATAL (q);
  CU_ASSERT_EQUAL (sc_qcow2_virtual_size (q), R_VSIZE);
  ep = sc_qcow2_endpoint (q);
  CU_ASSERT_PTR_NOT_NULL_FATAL (ep);
  CU_ASSERT_STRING_EQUAL (ep->ops->kind, "qcow2");
  CU_ASSERT_TRUE (ep->flags & SC_EP_THREAD_SAFE);

  /* Forwards, backwards and in odd pieces: every table is evicted and
   * reloaded many times.
   */
  CU_ASSERT_EQUAL (sc_ep_pread (ep, buf, R_VSIZE, 0), 0);
  CU_ASSERT_TRUE (check_range (buf, 0, R_VSIZE));
  for (int64_t off = R_VSIZE - 1000; off >= 0; off -= 1000) {
    memset (buf, 0xee, 1000);
    CU_ASSERT_EQUAL (sc_ep_pread (ep, buf, 1000, (uint64_t) off), 0);
    if (!check_range (buf, (uint64_t) off, 1000)) {
      CU_FAIL ("backwards read differs");
      break;
    }
  }
  CU_ASSERT_EQUAL (sc_ep_pread (ep, buf, 1, R_VSIZE), -1);

  /* Extents: holes, zeros and data, exactly by cluster. */
  sc_extent_list_init (&list);
  CU_ASSERT_EQUAL (ep->ops->extents (ep, 0, R_VSIZE, &list), 0);
  {
    uint64_t pos = 0;
    bool ok = true;
    for (size_t i = 0; i < list.len; i++) {
      const struct sc_extent *x = &list.ext[i];
      ok &= x->offset == pos;
      for (uint64_t o = x->offset; o < x->offset + x->length; o += R_CS) {
        unsigned g = (unsigned) (o / R_CS);
        uint32_t want = g_zero (g) ? SC_EXTENT_ZERO
          : g_stored (g) ? 0 : SC_EXTENT_HOLE;
        ok &= x->flags == want;
      }
      pos += x->length;
    }
    CU_ASSERT_TRUE (ok);
    CU_ASSERT_EQUAL (pos, R_VSIZE);
  }
  sc_extent_list_free (&list);

  CU_ASSERT_EQUAL (sc_ep_pwrite (ep, buf, 512, 0), -1);
  CU_ASSERT_EQUAL (sc_error_errno (), ENOTSUP);
  CU_ASSERT_EQUAL (sc_ep_close (ep), 0);
  sc_qcow2_close (q);
  free (buf);
}

struct thread_arg {
  struct sc_endpoint *ep;
  unsigned seed;
  bool ok;
};

static void *
reader_thread (void *p)
{
  struct thread_arg *a = p;
  unsigned char buf[3000];

  a->ok = true;
  for (int i = 0; i < 2000; i++) {
    uint64_t off;
    a->seed = a->seed * 1103515245 + 12345;
    off = (a->seed >> 4) % (R_VSIZE - sizeof buf);
    if (sc_ep_pread (a->ep, buf, sizeof buf, off) == -1
        || !check_range (buf, off, sizeof buf))
      a->ok = false;
  }
  return NULL;
}

static void
test_reader_threads (void)
{
  struct sc_qcow2_open_opts opts = { .cache_bytes = 4 * R_CS };
  struct sc_qcow2 *q = sc_qcow2_open (reader_path, &opts);
  struct sc_endpoint *ep;
  pthread_t t[4];
  struct thread_arg a[4];

  CU_ASSERT_PTR_NOT_NULL_FATAL (q);
  ep = sc_qcow2_endpoint (q);
  for (int i = 0; i < 4; i++) {
    a[i] = (struct thread_arg) { ep, (unsigned) i * 7919 + 1, false };
    pthread_create (&t[i], NULL, reader_thread, &a[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join (t[i], NULL);
    CU_ASSERT_TRUE (a[i].ok);
  }
  sc_ep_close (ep);
  sc_qcow2_close (q);
}

/* ---- images read through other endpoints ---------------------------- */

/* An endpoint over bytes in memory, as an NBD export or a fuzzer would
 * serve them: pread only, no extents, no local descriptor.
 */
static struct sc_endpoint *
mem_ep_new (const unsigned char *bytes, size_t len, const char *name)
{
  struct sc_endpoint *ep = sc_memory_source_new (bytes, len, name, false);

  CU_ASSERT_PTR_NOT_NULL_FATAL (ep);
  return ep;
}

/* Write bytes to path as a sparse file: clusters of zeros are holes. */
static void
write_sparse (const char *path, const unsigned char *bytes, size_t len)
{
  int fd = open (path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

  CU_ASSERT_FATAL (fd >= 0);
  for (size_t off = 0; off < len; off += R_CS) {
    size_t n = len - off < R_CS ? len - off : R_CS;
    if (!sc_is_zero (bytes + off, n))
      CU_ASSERT_FATAL (pwrite (fd, bytes + off, n, (off_t) off)
                       == (ssize_t) n);
  }
  CU_ASSERT_EQUAL (ftruncate (fd, (off_t) len), 0);
  close (fd);
}

/* Read the whole guest view of file and its extents; the caller frees
 * both.  The handle never owns file: it must still work after.
 */
static unsigned char *
read_guest (struct sc_endpoint *file, struct sc_extent_list *list)
{
  struct sc_qcow2 *q = sc_qcow2_open_endpoint (file, NULL);
  struct sc_endpoint *ep;
  unsigned char *buf = malloc (R_VSIZE), magic[4];

  CU_ASSERT_PTR_NOT_NULL_FATAL (buf);
  CU_ASSERT_PTR_NOT_NULL_FATAL (q);
  CU_ASSERT_EQUAL (sc_qcow2_virtual_size (q), R_VSIZE);
  ep = sc_qcow2_endpoint (q);
  CU_ASSERT_PTR_NOT_NULL_FATAL (ep);
  CU_ASSERT_EQUAL (sc_ep_pread (ep, buf, R_VSIZE, 0), 0);
  sc_extent_list_init (list);
  CU_ASSERT_EQUAL (sc_ep_extents (ep, 0, R_VSIZE, list), 0);
  sc_ep_close (ep);
  sc_qcow2_close (q);
  CU_ASSERT_EQUAL (sc_ep_pread (file, magic, sizeof magic, 0), 0);
  CU_ASSERT_EQUAL (sc_get_be32 (magic), QCOW2_MAGIC);
  return buf;
}

static void
test_reader_endpoints (void)
{
  CLEANUP_FREE char *sparse = NULL;
  CLEANUP_FREE unsigned char *via_fd = NULL, *via_mem = NULL;
  struct sc_extent_list fd_list, mem_list;
  struct sc_endpoint *file, *mem;
  int fd;

  if (asprintf (&sparse, "%s/sparse.qcow2", tmpdir) == -1)
    abort ();
  write_sparse (sparse, reader_img, reader_len);
  fd = open (sparse, O_RDONLY);
  CU_ASSERT_FATAL (fd >= 0);
  file = sc_endpoint_open_fd_source (fd, sparse, SC_MAP_SEEK);
  CU_ASSERT_PTR_NOT_NULL_FATAL (file);
  mem = mem_ep_new (reader_img, reader_len, "mem.qcow2");

  via_fd = read_guest (file, &fd_list);
  via_mem = read_guest (mem, &mem_list);
  CU_ASSERT_TRUE (check_range (via_fd, 0, R_VSIZE));
  CU_ASSERT_TRUE (check_range (via_mem, 0, R_VSIZE));
  CU_ASSERT_EQUAL (memcmp (via_fd, via_mem, R_VSIZE), 0);
  CU_ASSERT_EQUAL (fd_list.len, mem_list.len);
  if (fd_list.len == mem_list.len)
    CU_ASSERT_EQUAL (memcmp (fd_list.ext, mem_list.ext,
                             fd_list.len * sizeof *fd_list.ext), 0);
  sc_extent_list_free (&fd_list);
  sc_extent_list_free (&mem_list);

  CU_ASSERT_EQUAL (sc_ep_close (file), 0);
  CU_ASSERT_EQUAL (sc_ep_close (mem), 0);
  close (fd);
  unlink (sparse);
}

/* Both checks must count the same, message for message. */
static void
test_check_endpoint (void)
{
  CLEANUP_FREE char *sparse = NULL;
  struct sc_check_result a, b;
  struct sc_endpoint *mem;

  if (asprintf (&sparse, "%s/sparse.qcow2", tmpdir) == -1)
    abort ();
  write_sparse (sparse, reader_img, reader_len);
  mem = mem_ep_new (reader_img, reader_len, "mem.qcow2");
  CU_ASSERT_EQUAL_FATAL (sc_qcow2_check (sparse, &a), 0);
  CU_ASSERT_EQUAL_FATAL (sc_qcow2_check_endpoint (mem, &b), 0);
  /* The crafted image has no refcount block, so there is something to
   * count.
   */
  CU_ASSERT_TRUE (a.corruptions + a.leaks > 0);
  CU_ASSERT_EQUAL (a.corruptions, b.corruptions);
  CU_ASSERT_EQUAL (a.leaks, b.leaks);
  CU_ASSERT_EQUAL (a.check_errors, b.check_errors);
  CU_ASSERT_EQUAL (a.allocated_clusters, b.allocated_clusters);
  CU_ASSERT_EQUAL (a.total_clusters, b.total_clusters);
  CU_ASSERT_EQUAL (a.fragmented_clusters, b.fragmented_clusters);
  CU_ASSERT_EQUAL (a.compressed_clusters, b.compressed_clusters);
  CU_ASSERT_EQUAL (a.image_end_offset, b.image_end_offset);
  CU_ASSERT_EQUAL_FATAL (a.nb_messages, b.nb_messages);
  for (size_t i = 0; i < a.nb_messages; i++)
    CU_ASSERT_STRING_EQUAL (a.messages[i], b.messages[i]);
  sc_check_result_free (&a);
  sc_check_result_free (&b);
  /* The caller still owns the endpoint. */
  CU_ASSERT_EQUAL (sc_ep_close (mem), 0);
  unlink (sparse);
}

/* An image that names another file is opened unless external files are
 * not allowed: a backing file name is resolved next to the endpoint's
 * name, a data file name (from_cwd) from the current directory, as qemu
 * resolves them.
 */
static void
expect_external (unsigned char *bytes, const char *other, const char *what,
                 bool from_cwd)
{
  int cwd = open (".", O_RDONLY | O_DIRECTORY);
  struct sc_qcow2_open_opts refuse = { .no_external_files = true };
  CLEANUP_FREE char *image = NULL, *other_path = NULL;
  struct sc_endpoint *mem;
  struct sc_qcow2 *q;
  struct sc_check_result res;
  FILE *fp;

  if (asprintf (&image, "%s/named.qcow2", tmpdir) == -1
      || asprintf (&other_path, "%s/%s", tmpdir, other) == -1)
    abort ();
  fp = fopen (other_path, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL (fp);
  fclose (fp);
  CU_ASSERT_EQUAL (truncate (other_path, R_VSIZE), 0);
  mem = mem_ep_new (bytes, reader_len, image);

  CU_ASSERT_FATAL (cwd >= 0);
  CU_ASSERT_FATAL (!from_cwd || chdir (tmpdir) == 0);
  q = sc_qcow2_open_endpoint (mem, NULL);
  CU_ASSERT_PTR_NOT_NULL (q);
  sc_qcow2_close (q);
  CU_ASSERT_FATAL (fchdir (cwd) == 0);
  close (cwd);
  /* Not from the other directory. */
  if (from_cwd) {
    q = sc_qcow2_open_endpoint (mem, NULL);
    CU_ASSERT_PTR_NULL (q);
    CU_ASSERT_EQUAL (sc_error_errno (), ENOENT);
    sc_qcow2_close (q);
  }

  CU_ASSERT_PTR_NULL (sc_qcow2_open_endpoint (mem, &refuse));
  CU_ASSERT_EQUAL (sc_error_errno (), EPERM);
  CU_ASSERT_PTR_NOT_NULL (strstr (sc_error_message (), what));
  CU_ASSERT_PTR_NOT_NULL (strstr (sc_error_message (), other));

  /* The checker opens no other file anyway. */
  CU_ASSERT_EQUAL (sc_qcow2_check_endpoint (mem, &res), 0);
  sc_check_result_free (&res);

  sc_ep_close (mem);
  unlink (other_path);
}

static void
test_no_external_files (void)
{
  CLEANUP_FREE unsigned char *bytes = malloc (reader_len);
  static const char backing[] = "base.raw", data[] = "data.raw";
  size_t pos = QCOW2_V3_HEADER_SIZE;

  CU_ASSERT_PTR_NOT_NULL_FATAL (bytes);
  /* A backing file name after the (empty) header extensions. */
  memcpy (bytes, reader_img, reader_len);
  memcpy (bytes + 256, backing, strlen (backing));
  sc_put_be64 (bytes + QCOW2_HDR_BACKING_OFFSET, 256);
  sc_put_be32 (bytes + QCOW2_HDR_BACKING_SIZE, strlen (backing));
  expect_external (bytes, backing, "backing file", false);

  /* An external data file, named by its header extension. */
  memcpy (bytes, reader_img, reader_len);
  sc_put_be64 (bytes + QCOW2_HDR_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE);
  memcpy (img, bytes, R_CS);
  add_ext (&pos, QCOW2_EXT_DATA_FILE, data, strlen (data));
  memcpy (bytes, img, R_CS);
  expect_external (bytes, data, "external data file", true);
}

/* The file reader and the checker refuse a stream: reading one is the
 * stream decoder's job.
 */
static void
test_stream_refused (void)
{
  struct sc_check_result res;
  struct sc_endpoint *ep;
  int p[2];

  CU_ASSERT_EQUAL_FATAL (pipe (p), 0);
  ep = sc_endpoint_open_fd_source (p[0], "pipe", SC_MAP_SEEK);
  CU_ASSERT_PTR_NOT_NULL_FATAL (ep);
  CU_ASSERT_TRUE (sc_endpoint_is_stream (ep));
  CU_ASSERT_PTR_NULL (sc_qcow2_open_endpoint (ep, NULL));
  CU_ASSERT_EQUAL (sc_error_errno (), ESPIPE);
  CU_ASSERT_PTR_NOT_NULL (strstr (sc_error_message (), "stream"));
  CU_ASSERT_EQUAL (sc_qcow2_check_endpoint (ep, &res), -1);
  CU_ASSERT_EQUAL (sc_error_errno (), ESPIPE);
  CU_ASSERT_EQUAL (res.nb_messages, 0);
  sc_ep_close (ep);
  close (p[0]);
  close (p[1]);
}

/* Bytes in memory read as a pipe: once, in order, the size known at
 * the end; and the stream decoder takes an image from there.
 */
static void
test_memory_stream (void)
{
  CLEANUP_FREE char *raw = NULL;
  CLEANUP_FREE unsigned char *back = malloc (R_VSIZE);
  CLEANUP_FREE unsigned char *rest = malloc (reader_len);
  unsigned char buf[64];
  struct sc_endpoint *ep, *dst;
  size_t got;
  FILE *fp;

  CU_ASSERT_PTR_NOT_NULL_FATAL (back);
  CU_ASSERT_PTR_NOT_NULL_FATAL (rest);
  ep = sc_memory_source_new (reader_img, reader_len, "mem.qcow2", true);
  CU_ASSERT_PTR_NOT_NULL_FATAL (ep);
  CU_ASSERT_TRUE (sc_endpoint_is_stream (ep));
  CU_ASSERT_EQUAL (sc_endpoint_size (ep), 0);
  CU_ASSERT_EQUAL (sc_ep_read_some (ep, buf, sizeof buf, 0, &got), 0);
  CU_ASSERT_EQUAL (got, sizeof buf);
  CU_ASSERT_EQUAL (memcmp (buf, reader_img, sizeof buf), 0);
  /* Not where the last read ended. */
  CU_ASSERT_EQUAL (sc_ep_read_some (ep, buf, sizeof buf, 0, &got), -1);
  CU_ASSERT_EQUAL (sc_error_errno (), EINVAL);
  CU_ASSERT_EQUAL (sc_endpoint_size (ep), 0);
  /* The rest, and the end. */
  CU_ASSERT_EQUAL (sc_ep_pread (ep, rest, reader_len - 2 * sizeof buf,
                                sizeof buf), 0);
  CU_ASSERT_EQUAL (memcmp (rest, reader_img + sizeof buf,
                           reader_len - 2 * sizeof buf), 0);
  CU_ASSERT_EQUAL (sc_ep_read_some (ep, buf, sizeof buf,
                                    reader_len - sizeof buf, &got), 0);
  CU_ASSERT_EQUAL (got, sizeof buf);
  CU_ASSERT_EQUAL (sc_endpoint_size (ep), 0);
  CU_ASSERT_EQUAL (sc_ep_read_some (ep, buf, sizeof buf, reader_len,
                                    &got), 0);
  CU_ASSERT_EQUAL (got, 0);
  CU_ASSERT_EQUAL (sc_endpoint_size (ep), reader_len);
  CU_ASSERT_EQUAL (sc_ep_close (ep), 0);

  /* The decoder reads it as it would read a pipe: in its own chunks,
   * and in chunks of one cluster, where every table and data cluster
   * is in a chunk of its own.
   */
  if (asprintf (&raw, "%s/stream.raw", tmpdir) == -1)
    abort ();
  for (int pass = 0; pass < 2; pass++) {
    ep = sc_memory_source_new (reader_img, reader_len, "mem.qcow2", true);
    dst = sc_endpoint_open_target (raw, 0, SC_TARGET_FORCE);
    CU_ASSERT_PTR_NOT_NULL_FATAL (ep);
    CU_ASSERT_PTR_NOT_NULL_FATAL (dst);
    if (pass == 0) {
      CU_ASSERT_EQUAL_FATAL (sc_unpack (ep, dst, NULL), 0);
    }
    else {
      CU_ASSERT_EQUAL_FATAL (qcow2_unpack_stream_chunked (ep, dst, R_CS,
                                                          NULL, NULL), 0);
    }
    CU_ASSERT_EQUAL (sc_endpoint_commit (dst), 0);
    CU_ASSERT_EQUAL (sc_endpoint_close (dst), 0);
    CU_ASSERT_EQUAL (sc_ep_close (ep), 0);
    fp = fopen (raw, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL (fp);
    memset (back, 0xff, R_VSIZE);
    CU_ASSERT_EQUAL (fread (back, 1, R_VSIZE, fp), R_VSIZE);
    CU_ASSERT_EQUAL (fgetc (fp), EOF);
    fclose (fp);
    CU_ASSERT_TRUE (check_range (back, 0, R_VSIZE));
  }
  unlink (raw);

  /* Chunks smaller than the smallest cluster, or not a power of two,
   * are refused before anything is read.
   */
  ep = sc_memory_source_new (reader_img, reader_len, "mem.qcow2", true);
  dst = sc_null_target_new (R_VSIZE);
  CU_ASSERT_EQUAL (qcow2_unpack_stream_chunked (ep, dst, 256, NULL, NULL),
                   -1);
  CU_ASSERT_EQUAL (sc_error_errno (), EINVAL);
  CU_ASSERT_EQUAL (qcow2_unpack_stream_chunked (ep, dst, 3 * R_CS, NULL,
                                                NULL), -1);
  CU_ASSERT_EQUAL (sc_error_errno (), EINVAL);
  CU_ASSERT_EQUAL (sc_endpoint_size (ep), 0);
  sc_ep_close (dst);
  sc_ep_close (ep);
}

/* Broken tables are found when they are used, with a message. */
static void
test_reader_bad_tables (void)
{
  unsigned char save[8];
  struct sc_qcow2 *q;
  struct sc_endpoint *ep;
  unsigned char buf[R_CS];
  FILE *fp;

  /* An L1 entry with a reserved bit: refused at open. */
  memcpy (save, reader_img + R_L1 + 8, 8);
  reader_img[R_L1 + 8 + 7] |= 1;
  fp = fopen (reader_path, "w");
  fwrite (reader_img, 1, reader_len, fp);
  fclose (fp);
  CU_ASSERT_PTR_NULL (sc_qcow2_open (reader_path, NULL));
  CU_ASSERT_PTR_NOT_NULL (strstr (sc_error_message (),
                                  "L1 entry 1 (0x"));
  memcpy (reader_img + R_L1 + 8, save, 8);

  /* An L2 entry with a reserved bit: the read of that cluster fails. */
  reader_img[R_L2 + 5 * 8 + 7] |= 2;
  fp = fopen (reader_path, "w");
  fwrite (reader_img, 1, reader_len, fp);
  fclose (fp);
  q = sc_qcow2_open (reader_path, NULL);
  CU_ASSERT_PTR_NOT_NULL_FATAL (q);
  ep = sc_qcow2_endpoint (q);
  CU_ASSERT_EQUAL (sc_ep_pread (ep, buf, R_CS, 4 * R_CS), 0);
  CU_ASSERT_EQUAL (sc_ep_pread (ep, buf, R_CS, 5 * R_CS), -1);
  CU_ASSERT_PTR_NOT_NULL (strstr (sc_error_message (), "reserved bits"));
  sc_ep_close (ep);
  sc_qcow2_close (q);

  /* Unknown snapshot. */
  {
    struct sc_qcow2_open_opts opts = { .snapshot = "nope" };
    CU_ASSERT_PTR_NULL (sc_qcow2_open (reader_path, &opts));
    CU_ASSERT_STRING_EQUAL (sc_error_message (), "snapshot 'nope' not found");
  }
}

int
main (void)
{
  CU_pSuite s;
  unsigned failures;

  if (mkdtemp (tmpdir) == NULL) {
    perror ("mkdtemp");
    return EXIT_FAILURE;
  }
  if (CU_initialize_registry () != CUE_SUCCESS)
    return EXIT_FAILURE;
  s = CU_add_suite ("qcow2 header", NULL, NULL);
  CU_add_test (s, "good v3 with extensions", test_good_v3);
  CU_add_test (s, "good v2", test_good_v2);
  CU_add_test (s, "every bad field is refused", test_bad_fields);
  CU_add_test (s, "refusals only for reading", test_for_reading);
  CU_add_test (s, "L1/L2 index arithmetic", test_index_arithmetic);
  CU_add_test (s, "compressed descriptors", test_compressed_descriptor);
  CU_add_test (s, "L2 entry classification", test_l2_entry_type);
  CU_add_test (s, "L2 entries, lenient", test_l2_entry_classify);
  CU_add_test (s, "L1 entry faults", test_l1_entry_faults);
  CU_add_test (s, "extended L2 bitmaps", test_l2_bitmap);
  CU_add_test (s, "L2 entries as stored", test_l2_entry_get);
  CU_add_test (s, "descriptors at every cluster size",
               test_descriptor_every_cluster_size);
  CU_add_test (s, "snapshot table, strict and lenient",
               test_snapshot_table);
  s = CU_add_suite ("qcow2 reader", NULL, NULL);
  CU_add_test (s, "small L2 cache", test_reader_small_cache);
  CU_add_test (s, "concurrent reads", test_reader_threads);
  CU_add_test (s, "through file and memory endpoints",
               test_reader_endpoints);
  CU_add_test (s, "check through an endpoint", test_check_endpoint);
  CU_add_test (s, "no external files", test_no_external_files);
  CU_add_test (s, "streams are refused", test_stream_refused);
  CU_add_test (s, "an image in memory as a stream", test_memory_stream);
  CU_add_test (s, "bad tables", test_reader_bad_tables);
  CU_basic_set_mode (CU_BRM_VERBOSE);
  CU_basic_run_tests ();
  failures = CU_get_number_of_failures () + CU_get_number_of_tests_failed ();
  CU_cleanup_registry ();

  if (reader_path)
    unlink (reader_path);
  free (reader_path);
  free (reader_img);
  rmdir (tmpdir);
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
