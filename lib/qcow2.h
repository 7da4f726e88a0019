/* qcow2 on-disk format: named constants, the parsed header, and the
 * prototypes shared by the reader, the writer and the checker.
 * Everything on disk is big-endian.  See qemu's docs/interop/qcow2.rst.
 */
#ifndef SPARSECOW_QCOW2_H
#define SPARSECOW_QCOW2_H

#include <stdbool.h>
#include <stdint.h>

#include "internal.h"

#define QCOW2_MAGIC 0x514649fbU         /* "QFI\xfb" */

/* Header field offsets and sizes. */
#define QCOW2_V2_HEADER_SIZE      72
#define QCOW2_V3_MIN_HEADER_SIZE  104
#define QCOW2_V3_HEADER_SIZE      112   /* what qemu writes */
#define QCOW2_HDR_MAGIC           0
#define QCOW2_HDR_VERSION         4
#define QCOW2_HDR_BACKING_OFFSET  8
#define QCOW2_HDR_BACKING_SIZE    16
#define QCOW2_HDR_CLUSTER_BITS    20
#define QCOW2_HDR_SIZE            24
#define QCOW2_HDR_CRYPT_METHOD    32
#define QCOW2_HDR_L1_SIZE         36
#define QCOW2_HDR_L1_OFFSET       40
#define QCOW2_HDR_RT_OFFSET       48
#define QCOW2_HDR_RT_CLUSTERS     56
#define QCOW2_HDR_NB_SNAPSHOTS    60
#define QCOW2_HDR_SNAPSHOTS_OFFSET 64
#define QCOW2_HDR_INCOMPAT        72
#define QCOW2_HDR_COMPAT          80
#define QCOW2_HDR_AUTOCLEAR       88
#define QCOW2_HDR_REFCOUNT_ORDER  96
#define QCOW2_HDR_HEADER_LENGTH   100
#define QCOW2_HDR_COMPRESSION     104

/* Feature bits. */
#define QCOW2_INCOMPAT_DIRTY        (1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT      (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2        (1ULL << 4)
#define QCOW2_INCOMPAT_KNOWN        0x1fULL
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ULL << 0)
#define QCOW2_AUTOCLEAR_BITMAPS     (1ULL << 0)
#define QCOW2_AUTOCLEAR_DATA_RAW    (1ULL << 1)

/* Header extension types. */
#define QCOW2_EXT_END               0x00000000U
#define QCOW2_EXT_BACKING_FORMAT    0xe2792acaU
#define QCOW2_EXT_FEATURE_TABLE     0x6803f857U
#define QCOW2_EXT_BITMAPS           0x23852875U
#define QCOW2_EXT_CRYPTO            0x0537be77U
#define QCOW2_EXT_DATA_FILE         0x44415441U

/* Limits (qemu's, which we also enforce on input). */
#define QCOW2_MIN_CLUSTER_BITS      9
#define QCOW2_MAX_CLUSTER_BITS      21
#define QCOW2_MIN_CLUSTER_BITS_EXTL2 14
#define QCOW2_MAX_BACKING_NAME      1023
#define QCOW2_MAX_L1_BYTES          (32U * 1024 * 1024)
#define QCOW2_MAX_RT_BYTES          (8U * 1024 * 1024)
#define QCOW2_MAX_SNAPSHOTS         65536
#define QCOW2_MAX_REFCOUNT_ORDER    6
/* Largest offset representable in an L1/L2 entry (bits 9..55). */
#define QCOW2_MAX_HOST_OFFSET       ((1ULL << 56) - 1)

/* L1 and L2 entries. */
#define QCOW2_OFLAG_COPIED          (1ULL << 63)
#define QCOW2_OFLAG_COMPRESSED      (1ULL << 62)
#define QCOW2_OFLAG_ZERO            (1ULL << 0)
#define QCOW2_L1E_OFFSET_MASK       0x00fffffffffffe00ULL
#define QCOW2_L1E_RESERVED_MASK     0x7f000000000001ffULL
#define QCOW2_L2E_OFFSET_MASK       0x00fffffffffffe00ULL
#define QCOW2_L2E_STD_RESERVED_MASK 0x3f000000000001feULL
#define QCOW2_RTE_OFFSET_MASK       0xfffffffffffffe00ULL
#define QCOW2_RTE_RESERVED_MASK     0x00000000000001ffULL
#define QCOW2_COMPRESSED_SECTOR     512
#define QCOW2_SUBCLUSTERS           32

/* The kinds of L2 entry. */
enum qcow2_cluster_type {
  QCOW2_CLUSTER_UNALLOCATED,
  QCOW2_CLUSTER_ZERO_PLAIN,     /* zero flag, no host cluster */
  QCOW2_CLUSTER_ZERO_ALLOC,     /* zero flag with a preallocated host cluster */
  QCOW2_CLUSTER_NORMAL,
  QCOW2_CLUSTER_COMPRESSED,
};

/* The parsed and validated header. */
struct qcow2_header {
  uint32_t version;
  uint64_t backing_file_offset;
  uint32_t backing_file_size;
  uint32_t cluster_bits;
  uint64_t size;                /* virtual size */
  uint32_t crypt_method;
  uint32_t l1_size;             /* entries */
  uint64_t l1_table_offset;
  uint64_t refcount_table_offset;
  uint32_t refcount_table_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  uint64_t incompatible_features;
  uint64_t compatible_features;
  uint64_t autoclear_features;
  uint32_t refcount_order;
  uint32_t header_length;
  uint8_t compression_type;
  /* From header extensions (malloc'd, NUL-terminated, or NULL). */
  char *backing_file;
  char *backing_format;
  char *data_file;
  bool has_crypto_ext;
  /* Derived. */
  uint32_t cluster_size;
  uint32_t l2_entry_size;       /* 8, or 16 with extended L2 */
  uint32_t l2_entries;          /* entries per L2 table */
  uint32_t refcount_bits;
  uint64_t refcount_max;
};

/* Cluster arithmetic, as named helpers. */
static inline uint64_t qcow2_offset_into_cluster (const struct qcow2_header *h,
                                                  uint64_t o)
{ return o & (h->cluster_size - 1); }
static inline uint64_t qcow2_size_to_clusters (const struct qcow2_header *h,
                                               uint64_t s)
{ return (s + h->cluster_size - 1) >> h->cluster_bits; }
static inline uint64_t qcow2_offset_to_l1_index (const struct qcow2_header *h,
                                                 uint64_t o)
{ return (o >> h->cluster_bits) / h->l2_entries; }
static inline uint64_t qcow2_offset_to_l2_index (const struct qcow2_header *h,
                                                 uint64_t o)
{ return (o >> h->cluster_bits) % h->l2_entries; }
/* Bit position where the sector count of a compressed descriptor starts. */
static inline unsigned qcow2_csize_shift (const struct qcow2_header *h)
{ return 62 - (h->cluster_bits - 8); }

/* ---- qcow2-header.c ------------------------------------------------ */

/* Parse and validate the header (and its extensions) from the first
 * bytes of an image; file_size bounds every offset.  The image may be
 * refused (encryption, unknown incompatible bits, the corrupt bit) with
 * a message naming the reason when for_reading is true; the checker
 * passes false to look at corrupt images too.
 */
extern int qcow2_header_read (int fd, uint64_t file_size, bool for_reading,
                              struct qcow2_header *h);
extern void qcow2_header_free (struct qcow2_header *h);

/* Classify an L2 entry (first u64; extended L2 bitmap handled by the
 * reader).  Returns -1 with an error set if reserved bits are set or
 * the offset is misaligned.
 */
extern int qcow2_l2_entry_type (const struct qcow2_header *h, uint64_t l2e,
                                enum qcow2_cluster_type *type);
/* Decode a compressed cluster descriptor into host byte offset and the
 * number of bytes available to read from there.
 */
extern void qcow2_compressed_descriptor (const struct qcow2_header *h,
                                         uint64_t l2e, uint64_t *offset,
                                         uint64_t *nbytes);

/* ---- qcow2-write.c ------------------------------------------------ */

/* Encode a compressed cluster descriptor for len bytes at offset. */
extern uint64_t qcow2_make_compressed_descriptor (const struct qcow2_header *h,
                                                  uint64_t offset,
                                                  uint64_t len);

#endif /* SPARSECOW_QCOW2_H */
