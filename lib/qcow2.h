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

/* Header extension framing: u32 type, u32 length, data padded to 8. */
#define QCOW2_EXT_HEADER_SIZE       8
#define QCOW2_EXT_ALIGN             8

/* Header extension types. */
#define QCOW2_EXT_END               0x00000000U
#define QCOW2_EXT_BACKING_FORMAT    0xe2792acaU
#define QCOW2_EXT_FEATURE_TABLE     0x6803f857U
#define QCOW2_EXT_BITMAPS           0x23852875U
#define QCOW2_EXT_CRYPTO            0x0537be77U
#define QCOW2_EXT_DATA_FILE         0x44415441U
/* Full-disk encryption extension: u64 offset, u64 length of the LUKS
 * header in the image file.
 */
#define QCOW2_CRYPTO_EXT_SIZE       16

/* sparsecow's content digest (sparsecow(1), DIGEST): a header extension
 * of a type qemu does not know, which it keeps when it rewrites the
 * header, and an autoclear bit, which qemu clears when it opens the
 * image read-write ("Header", autoclear_features): the extension
 * without the bit is a digest that another program may have made
 * stale.  Bit 63, far from the bits qemu allocates from 0 up.
 */
#define QCOW2_EXT_SC_DIGEST         0x1e3d81fcU
#define QCOW2_AUTOCLEAR_SC_DIGEST   (1ULL << 63)
/* u32 kind, u32 block size, u64 virtual size, 32 bytes of SHA-256;
 * then, in the longer form pack writes, the 32-byte mapping fingerprint
 * (SHA-256 of the L1 table and the L2 tables as stored, see
 * qcow2_map_fingerprint).
 */
#define QCOW2_SC_DIGEST_LEN         48
#define QCOW2_SC_DIGEST_MAP_LEN     80
#define QCOW2_SC_DIGEST_SHA256      1   /* the one kind defined */

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

/* Extended L2 subcluster bitmap (the second u64 of an entry): bit sc
 * says subcluster sc is allocated, bit 32 + sc that it reads as zeros.
 */
#define QCOW2_L2_BITMAP_ALL_ALLOC   0x00000000ffffffffULL
#define QCOW2_L2_BITMAP_ALL_ZERO    0xffffffff00000000ULL
#define QCOW2_SUBCLUSTER_BITS       5   /* log2 (QCOW2_SUBCLUSTERS) */

/* Table entry sizes in bytes. */
#define QCOW2_L1E_SIZE              8
#define QCOW2_L2E_SIZE              8   /* standard L2 entry */
#define QCOW2_L2E_EXTENDED_SIZE     16  /* entry + subcluster bitmap */
#define QCOW2_RTE_SIZE              8

/* Version 2 images always have 16-bit refcounts. */
#define QCOW2_V2_REFCOUNT_ORDER     4

/* Compression types (header byte 104). */
#define QCOW2_COMPRESSION_DEFLATE   0
#define QCOW2_COMPRESSION_ZSTD      1

/* The kinds of L2 entry. */
enum qcow2_cluster_type {
  QCOW2_CLUSTER_UNALLOCATED,
  QCOW2_CLUSTER_ZERO_PLAIN,     /* zero flag, no host cluster */
  QCOW2_CLUSTER_ZERO_ALLOC,     /* zero flag with a preallocated host cluster */
  QCOW2_CLUSTER_NORMAL,
  QCOW2_CLUSTER_COMPRESSED,
};

/* What one subcluster of an L2 entry reads as (qemu's names).  Without
 * extended L2 entries a cluster is a single subcluster.
 */
enum qcow2_subcluster_type {
  QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN, /* no host cluster: backing file */
  QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC, /* host cluster, this part unused:
                                         backing file */
  QCOW2_SUBCLUSTER_ZERO_PLAIN,        /* zeros, no host cluster */
  QCOW2_SUBCLUSTER_ZERO_ALLOC,        /* zeros, host cluster kept */
  QCOW2_SUBCLUSTER_NORMAL,            /* data at the host offset */
  QCOW2_SUBCLUSTER_COMPRESSED,
  QCOW2_SUBCLUSTER_INVALID,           /* damage; the fault says which */
};

/* Damage in a table entry, as a set of bits: the classifiers report
 * it and their callers decide whether it is fatal (reader, stream
 * decoder) or counted (checker).
 */
#define QCOW2_FAULT_RESERVED             (1U << 0) /* reserved bits set */
#define QCOW2_FAULT_MISALIGNED           (1U << 1) /* offset not cluster
                                                      aligned */
#define QCOW2_FAULT_COMPRESSED_COPIED    (1U << 2) /* COPIED on a
                                                      compressed cluster */
#define QCOW2_FAULT_COMPRESSED_DATA_FILE (1U << 3) /* compressed cluster
                                                      with a data file */
#define QCOW2_FAULT_COMPRESSED_BITMAP    (1U << 4) /* compressed cluster
                                                      with a bitmap */
#define QCOW2_FAULT_SUBCLUSTER_BOTH      (1U << 5) /* a subcluster both
                                                      allocated and zero */
#define QCOW2_FAULT_UNALLOCATED_ALLOC    (1U << 6) /* allocated subclusters
                                                      without a host
                                                      cluster */
#define QCOW2_FAULT_V2_ZERO              (1U << 7) /* the "reads as zero"
                                                      flag in a version 2
                                                      image */

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
  /* The last full-disk encryption extension: its length, and when that
   * is 16 bytes, where the LUKS header lies in the file.
   */
  uint32_t crypto_ext_len;
  uint64_t crypto_offset, crypto_length;
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
/* qemu sees an image in whole 512-byte sectors and drops a partial
 * last one: the size every reader of the image must use.
 */
#define QCOW2_GUEST_SECTOR 512
static inline uint64_t qcow2_guest_size (const struct qcow2_header *h)
{ return h->size & ~(uint64_t) (QCOW2_GUEST_SECTOR - 1); }
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
/* The two bits of subcluster sc (0..31) in an extended L2 bitmap. */
static inline uint64_t qcow2_subcluster_alloc_bit (unsigned sc)
{ return UINT64_C (1) << sc; }
static inline uint64_t qcow2_subcluster_zero_bit (unsigned sc)
{ return UINT64_C (1) << (QCOW2_SUBCLUSTERS + sc); }
/* log2 of the number of entries in one refcount block: a cluster of
 * 8 * cluster_size bits holds entries of 1 << refcount_order bits.
 */
static inline unsigned qcow2_refcount_block_bits (uint32_t cluster_bits,
                                                  unsigned refcount_order)
{ return cluster_bits + 3 - refcount_order; }

/* ---- qcow2-header.c ------------------------------------------------ */

/* Parse and validate the header (and its extensions) from the first
 * bytes of an image read through ep; file_size bounds every offset
 * (the endpoint's size, except for the stream decoder, which parses a
 * header before the rest of the image exists).  The image may be
 * refused (encryption, unknown incompatible bits, the corrupt bit) with
 * a message naming the reason when for_reading is true; the checker
 * passes false to look at corrupt images too.
 */
extern int qcow2_header_read (struct sc_endpoint *ep, uint64_t file_size,
                              bool for_reading, struct qcow2_header *h);
/* As qcow2_header_read for reading, but an image with the corrupt bit
 * set is accepted, as qemu opens one read-only: for info and map, which
 * show the bit instead of refusing.
 */
extern int qcow2_header_read_even_corrupt (struct sc_endpoint *ep,
                                           uint64_t file_size,
                                           struct qcow2_header *h);
/* For the checker only: parse the header as qemu does when it opens an
 * image for qemu-img check.  As for_reading false, and besides: any
 * header_length from 104 to a cluster, extensions framed as qemu frames
 * them, an empty refcount table, and the L1 and refcount tables
 * checked only for alignment and for being readable at all (they may
 * lie past the end of the file).  The snapshot table is not looked at.
 */
extern int qcow2_header_read_for_check (struct sc_endpoint *ep,
                                        uint64_t file_size,
                                        struct qcow2_header *h);
/* As qcow2_header_read_for_check, as qemu opens an image for qemu-img
 * info: without its external data file, so an image that needs one
 * need not name it, and the raw data file bit may be set without it.
 */
extern int qcow2_header_read_for_info (struct sc_endpoint *ep,
                                       uint64_t file_size,
                                       struct qcow2_header *h);
/* As qcow2_header_read for reading, but an image with the corrupt bit
 * (allow_corrupt) or an encrypted one (allow_encrypted) is accepted:
 * for looking at an image without reading its data.
 */
extern int qcow2_header_read_to_show (struct sc_endpoint *ep,
                                      uint64_t file_size, bool allow_corrupt,
                                      bool allow_encrypted,
                                      struct qcow2_header *h);

/* ---- qcow2-crypto.c ------------------------------------------------ */

/* What the header h of an image in ep (file_size bytes) says of its
 * encryption, into *enc and, for LUKS, *luks: the full-disk
 * encryption extension and the LUKS1 header it points to, validated
 * as hostile input (qcow2.rst "Full disk encryption header pointer",
 * the LUKS1 on-disk format).  Returns 0, or -1 with EINVAL (damage),
 * ENOTSUP (an unknown method or algorithm) or the error of a read.
 */
extern int qcow2_encryption_read (struct sc_endpoint *ep, uint64_t file_size,
                                  const struct qcow2_header *h,
                                  enum sc_encryption *enc,
                                  struct sc_luks_info *luks);

/* qemu's block layer fails a read that ends past this offset (INT64_MAX
 * rounded down to 1 GiB); below it, reads past the end of a file
 * return zeros.
 */
#define QCOW2_MAX_IO_END ((UINT64_C (1) << 63) - (UINT64_C (1) << 30))
/* Can [offset, offset+len) be read at all, as qemu reads?  Offsets are
 * signed in the file APIs, and qemu's block layer fails reads that end
 * past QCOW2_MAX_IO_END, so such a range is an error, not zeros.
 */
static inline bool qcow2_io_readable (uint64_t offset, uint64_t len)
{ return offset <= QCOW2_MAX_IO_END && len <= QCOW2_MAX_IO_END - offset; }
/* Read len bytes at offset as qemu reads an image file: bytes past
 * file_size are zeros.  Returns 0, or -1 with the error of the read.
 */
extern int qcow2_pread_padded (struct sc_endpoint *ep, uint64_t file_size,
                               void *buf, size_t len, uint64_t offset);
extern void qcow2_header_free (struct qcow2_header *h);
/* Fill buf (h->cluster_size bytes) with the header cluster of a new
 * image: the fields of h for its version, no backing file, no
 * snapshots, and zeros after the header, which read as the end of the
 * header extensions.  Cannot fail.
 */
extern void qcow2_header_write (const struct qcow2_header *h,
                                unsigned char *buf);

/* The content digest extension, decoded. */
struct qcow2_sc_digest {
  uint32_t kind;                /* QCOW2_SC_DIGEST_SHA256 */
  uint32_t block_size;
  uint64_t size;                /* the virtual size it was made for */
  unsigned char sha256[32];
  /* The image's L1 and L2 tables when the digest was made (the longer
   * form): another program that moved or allocated clusters without
   * clearing the autoclear bit made the digest stale.
   */
  bool has_map;
  unsigned char map[32];
};
/* Decode the data of a digest extension: 0, or -1 with errno EINVAL
 * for a length other than QCOW2_SC_DIGEST_LEN or
 * QCOW2_SC_DIGEST_MAP_LEN, an unknown kind, or a block size that is not
 * a power of two from 512 bytes to 2 MiB.
 */
extern int qcow2_sc_digest_decode (const unsigned char *data, uint32_t len,
                                   struct qcow2_sc_digest *d);
/* Reads len bytes at offset of an image file into buf: 0, or -1 with
 * the error set.
 */
typedef int (*qcow2_read_fn) (void *opaque, uint64_t offset, size_t len,
                              void *buf);
/* The mapping fingerprint of the image whose header is h and whose
 * file is file_size bytes long, read through read: SHA-256 of its L1
 * table (l1_size entries of 8 bytes, as stored) followed by every L2
 * table an L1 entry points to, in L1 order, cluster_size bytes each as
 * stored (sparsecow(1), DIGEST).  0, or -1 with errno EINVAL (an L1
 * entry that points to no whole cluster inside the file), or the
 * errors of read and of SHA-256.
 */
extern int qcow2_map_fingerprint (const struct qcow2_header *h,
                                  uint64_t file_size, qcow2_read_fn read,
                                  void *opaque, unsigned char out[32]);
/* Write the digest extension at the end of the header in buf, the
 * header cluster that qcow2_header_write filled for h (a version 3
 * header: the autoclear bit is the caller's), and the end marker
 * after it.  0, or -1 with errno EINVAL if the cluster cannot hold it.
 */
extern int qcow2_header_write_sc_digest (const struct qcow2_header *h,
                                         const struct qcow2_sc_digest *d,
                                         unsigned char *buf);

/* Called for each header extension but the end marker: its type, its
 * len bytes of data (not padded), and pos, the offset in the file of
 * its 8-byte extension header.  Returns 0 to go on, 1 to stop the
 * walk (successfully), or -1 with the error set.
 */
typedef int (*qcow2_extension_fn) (void *opaque, uint32_t type,
                                   const unsigned char *data, uint32_t len,
                                   uint64_t pos);
/* Walk the header extensions of an image whose header h was read
 * from ep (file_size bytes) by qcow2_header_read (for_check false) or
 * qcow2_header_read_for_check (for_check true), framed exactly as that
 * reader framed them ("Header extensions"): from the end of the header
 * up to the backing file name or the end of the first cluster, which
 * for_check reads with zeros past the end of the file, as qemu does.
 * Returns 0, or -1 with the error of fn, of the read (errno of the
 * I/O, ENOMEM), or EINVAL for framing the header reader refused too.
 */
extern int qcow2_header_extensions (struct sc_endpoint *ep,
                                    uint64_t file_size,
                                    const struct qcow2_header *h,
                                    bool for_check, qcow2_extension_fn fn,
                                    void *opaque);

/* ---- qcow2-bitmaps.c ---------------------------------------------- */

/* The persistent bitmaps that the bitmap directory of the image (header
 * h, read from ep of file_size bytes) lists, as qemu-img info shows
 * them: none without the bitmaps autoclear bit.  *out is malloc'd (free
 * with qcow2_bitmaps_free), *nout entries.  Returns 0, or -1 with
 * errno EINVAL (a directory over qemu's limits or outside the file, an
 * invalid entry), ENOMEM, or that of a failed read.
 */
extern int qcow2_bitmaps_list (struct sc_endpoint *ep, uint64_t file_size,
                               const struct qcow2_header *h,
                               struct sc_bitmap_info **out, size_t *nout);
extern void qcow2_bitmaps_free (struct sc_bitmap_info *b, size_t n);

/* ---- qcow2-entry.c ------------------------------------------------ */

/* The damage in an L1 entry (QCOW2_FAULT_RESERVED, _MISALIGNED for an
 * L2 table offset that is not cluster aligned).  Where the table lies
 * in the file is the caller's to judge.
 */
extern unsigned qcow2_l1_entry_faults (const struct qcow2_header *h,
                                       uint64_t l1e);
/* The L2 table offset that two entries of one L1 table name, or 0 if
 * none does; l2_offsets (n of them, 0 = no table) is sorted in place.
 * qemu never writes such a table, and one L2 table named by every entry
 * of a large L1 table would make a small image cost as much to walk as
 * one of that many tables: the reader and the stream decoder refuse it.
 */
extern uint64_t qcow2_l1_shared_l2 (uint64_t *l2_offsets, size_t n);
/* Entry index of an L2 table (one cluster, as on disk): the entry in
 * host order in *l2e and its subcluster bitmap in *bitmap (0 without
 * extended L2 entries).
 */
extern void qcow2_l2_entry_get (const struct qcow2_header *h,
                                const void *table, uint64_t index,
                                uint64_t *l2e, uint64_t *bitmap);
/* What an L2 entry (its first u64) describes, decided as qemu decides
 * it whatever the damage, with the damage in *faults:
 * QCOW2_FAULT_RESERVED, _MISALIGNED and _V2_ZERO (standard clusters),
 * and _COMPRESSED_COPIED and _COMPRESSED_DATA_FILE (compressed ones).
 * Never fails; for the checker, which must see all damage.
 */
extern enum qcow2_cluster_type
qcow2_l2_entry_classify (const struct qcow2_header *h, uint64_t l2e,
                         unsigned *faults);
/* The same, strict, for reading guest data: returns 0, or -1 with
 * errno EINVAL and a message for reserved bits, a misaligned host
 * offset, the zero flag in a version 2 image or a compressed cluster with an external data file (COPIED on
 * a compressed cluster is accepted: it does not change the data).
 */
extern int qcow2_l2_entry_type (const struct qcow2_header *h, uint64_t l2e,
                                enum qcow2_cluster_type *type);
/* The damage in a whole extended L2 bitmap for an entry of this type:
 * QCOW2_FAULT_COMPRESSED_BITMAP (a compressed cluster's bitmap is
 * reserved and must be 0), otherwise _SUBCLUSTER_BOTH (some subcluster
 * both allocated and zero) and, for an unallocated cluster,
 * _UNALLOCATED_ALLOC.  Pass bitmap 0 without extended L2 entries.
 */
extern unsigned qcow2_l2_bitmap_faults (enum qcow2_cluster_type type,
                                        uint64_t bitmap);
/* What subcluster sc (0..31; 0 without extended L2 entries) of an
 * entry of this type and bitmap reads as, as qemu's
 * qcow2_get_subcluster_type() decides.  Only that subcluster's bits
 * are judged, except that an unallocated cluster must have no
 * allocated subcluster at all; on damage it returns
 * QCOW2_SUBCLUSTER_INVALID with the reason in *fault
 * (QCOW2_FAULT_SUBCLUSTER_BOTH or _UNALLOCATED_ALLOC), otherwise
 * *fault is 0.  Never fails.
 */
extern enum qcow2_subcluster_type
qcow2_subcluster_type (const struct qcow2_header *h,
                       enum qcow2_cluster_type type, uint64_t bitmap,
                       unsigned sc, unsigned *fault);
/* Decode a compressed cluster descriptor (a whole L2 entry; flag bits
 * are ignored) into the host byte offset and the number of bytes
 * available to read from there: whole 512-byte sectors, less the part
 * of the first one before the offset ("Compressed Clusters
 * Descriptor").  cluster_bits 9..21.
 */
extern void qcow2_compressed_descriptor (const struct qcow2_header *h,
                                         uint64_t l2e, uint64_t *offset,
                                         uint64_t *nbytes);
/* Encode a compressed cluster descriptor for len bytes (1 up to less
 * than a cluster) at host byte offset offset, as a whole L2 entry
 * (QCOW2_OFLAG_COMPRESSED set, never COPIED).  offset must be below
 * 1 << qcow2_csize_shift().
 */
extern uint64_t qcow2_make_compressed_descriptor (const struct qcow2_header *h,
                                                  uint64_t offset,
                                                  uint64_t len);

/* ---- qcow2-refcount.c --------------------------------------------- */

/* Entry index of a refcount block (one cluster) of entries 1 <<
 * refcount_order bits wide (order 0..6), packed as the specification
 * says ("Refcount table"): sub-byte widths least significant bits
 * first, wider ones big-endian.  index must be below 1 <<
 * qcow2_refcount_block_bits(); set stores value truncated to the
 * width.  Neither can fail.
 */
extern void qcow2_refcount_set (void *block, unsigned refcount_order,
                                uint64_t index, uint64_t value);
extern uint64_t qcow2_refcount_get (const void *block,
                                    unsigned refcount_order, uint64_t index);

/* The smallest refcount table and number of refcount blocks (both in
 * clusters) that cover themselves plus other_clusters clusters: a
 * fixed point, since the blocks count themselves.  Returns 0, or -1
 * with errno EFBIG if the refcount table would exceed qemu's limit
 * (QCOW2_MAX_RT_BYTES).
 */
extern int qcow2_refcount_layout (uint32_t cluster_bits,
                                  unsigned refcount_order,
                                  uint64_t other_clusters,
                                  uint64_t *rt_clusters,
                                  uint64_t *rb_clusters);

/* ---- qcow2-snapshot.c --------------------------------------------- */

/* Version 3 snapshot entries hold at least the large VM state size and
 * the disk size as extra data.
 */
#define QCOW2_SNAPSHOT_V3_MIN_EXTRA 16
/* The lenient parser keeps this many bytes of an ID or a name. */
#define QCOW2_SNAPSHOT_LABEL_MAX    63

/* One snapshot table entry ("Snapshots"). */
struct qcow2_snapshot {
  uint64_t l1_offset;           /* as stored: not validated */
  uint32_t l1_size;             /* entries, as stored */
  uint32_t extra_size;          /* bytes of extra data */
  char *id, *name;              /* malloc'd, NUL-terminated */
  uint32_t date_sec, date_nsec;
  uint64_t vm_clock_nsec;
  uint64_t vm_state_size;       /* the 64-bit one when the entry has it */
  uint64_t disk_size;           /* 0 if the entry does not say */
  uint64_t icount;              /* UINT64_MAX if the entry does not say */
};

struct qcow2_snapshots {
  struct qcow2_snapshot *s;     /* n entries, malloc'd */
  uint32_t n;
  uint64_t table_bytes;         /* from the table's start to the end of
                                   the last name */
};

/* Parse the snapshot table that the header h (read from ep, file_size
 * bytes) describes into *t, which the caller frees with
 * qcow2_snapshots_free (also after an error, which leaves it empty).
 *
 * Strict (lenient false, for reading guest data): the header reader has
 * validated the table's offset and count; every entry must lie inside
 * the file and inside qemu's 64 MiB cap, with at most 1024 bytes of
 * extra data and no NUL byte in its ID or name, or -1 is returned with
 * errno EINVAL.
 *
 * Lenient (for the checker, as qemu-img check reads): checks the count
 * (EFBIG past 65536) and the table offset (EINVAL unless aligned and
 * addressable) itself, reads past the end of the file as zeros, and
 * keeps at most QCOW2_SNAPSHOT_LABEL_MAX bytes of each ID and name,
 * with unprintable bytes replaced by '?'.  Only what qemu cannot read
 * is an error: EINVAL for an entry past QCOW2_MAX_IO_END, EFBIG for more
 * than 1024 bytes of extra data or a table over 64 MiB.  Damage that
 * qemu counts (such as a version 3 entry with less than
 * QCOW2_SNAPSHOT_V3_MIN_EXTRA bytes of extra data) is the caller's.
 *
 * Both: ENOMEM (or the errno of a failed read) otherwise.
 */
extern int qcow2_snapshots_read (struct sc_endpoint *ep, uint64_t file_size,
                                 const struct qcow2_header *h, bool lenient,
                                 struct qcow2_snapshots *t);
extern void qcow2_snapshots_free (struct qcow2_snapshots *t);

/* ---- qcow2-read.c ------------------------------------------------- */

/* Open an image, backing or data file named in or for an image as a
 * source endpoint (SEEK_DATA/SEEK_HOLE extents): "-" is the file of
 * that name, not standard input.  NULL with the error set (not naming
 * the file: the caller's prefix does).
 */
extern struct sc_endpoint *qcow2_open_file (const char *path);
/* Read count bytes of the guest view at offset (inside the virtual
 * size), through the whole chain.  Thread-safe.
 */
extern int qcow2_chain_pread (struct sc_qcow2 *q, void *buf, size_t count,
                              uint64_t offset);
/* The same, only if it can be had without waiting for a device: 0 when
 * read, 1 when some of it cannot (a compressed cluster, host bytes not
 * in the page cache), -1 on error.
 */
extern int qcow2_chain_pread_nowait (struct sc_qcow2 *q, void *buf,
                                     size_t count, uint64_t offset);
/* Copy count bytes of the guest view at offset (inside the virtual
 * size) to dst at dst_off without reading them here, as the copy_to
 * slot of an endpoint (SC_COPY_* flags and results): only where every
 * part is uncompressed data in a local file of the chain.
 */
extern int qcow2_chain_copy_to (struct sc_qcow2 *q, uint64_t offset,
                                uint64_t count, struct sc_endpoint *dst,
                                uint64_t dst_off, unsigned flags);
/* Append the extents of the guest view from offset to end (at most
 * the virtual size) to list: holes where no layer has the range, zero
 * extents where it reads as zeros, as qemu's block status says.
 */
extern int qcow2_chain_extents (struct sc_qcow2 *q, uint64_t offset,
                                uint64_t end, struct sc_extent_list *list);
/* One answer of qemu's block status of the guest at offset (inside
 * the virtual size), for at most max bytes: *len bytes that read as
 * zero, or not (*data).  Runs end where qemu's do: at a change of
 * kind, a break in the host offsets, an L2 table's end, after each
 * compressed cluster.
 */
extern int qcow2_chain_run (struct sc_qcow2 *q, uint64_t offset,
                            uint64_t max, uint64_t *len, bool *data);
/* The top image's name as opened, and its cluster size. */
extern const char *qcow2_chain_name (const struct sc_qcow2 *q);
/* One fingerprint for every file of the chain (images and external
 * data files): 0, 1 when none of them has one, -1 on error.
 */
extern int qcow2_chain_fingerprint (struct sc_qcow2 *q,
                                    struct sc_fingerprint *fp);
extern uint32_t qcow2_chain_cluster_size (const struct sc_qcow2 *q);

/* ---- qcow2-plan.c ------------------------------------------------- */

/* The writer's plan of an image, built in guest order, then laid out
 * and read as an image (qcow2-image.c).  The L2 tables are the plan: an L2 table exists only
 * when a cluster in its range is stored, so memory follows the data.
 * Until qcow2_plan_layout() the data offsets in the L2 entries are
 * relative to the start of the data area, which comes after all
 * metadata in the order header, refcount table, refcount blocks, L1,
 * L2 tables (with rt_last, the refcount table comes after the data).
 */
/* A run of guest clusters stored one after another: uncompressed at
 * consecutive data-area offsets from value, or compressed with their L2
 * entries at cdesc[value], cdesc[value + 1], ...
 */
struct qcow2_plan_run {
  uint64_t gc;                  /* first guest cluster */
  uint64_t value;
  uint32_t count;               /* guest clusters, at least 1 */
  bool compressed;
};

/* A run of host clusters of the data area: uncompressed (cref is
 * UINT64_MAX), or holding compressed clusters, whose refcounts are
 * crefs[cref], crefs[cref + 1], ...
 */
struct qcow2_plan_host {
  uint64_t k;                   /* first, relative to the data area */
  uint64_t n;
  uint64_t cref;
};

struct qcow2_plan {
  struct qcow2_header h;        /* what goes into the header */
  /* The L2 entries as runs in guest order: memory follows the number
   * of runs (and of compressed clusters), never the virtual size or
   * the number of L2 tables.  Tables are made from the runs as they
   * are written.
   */
  struct qcow2_plan_run *runs;
  size_t nb_runs, runs_cap;
  uint64_t *cdesc;              /* compressed descriptors, relative */
  size_t nb_cdesc, cdesc_cap;
  uint64_t nb_l2;               /* L2 tables the image needs */
  uint64_t last_l1;             /* L1 index of the last cluster added */
  uint64_t next_guest_cluster;  /* clusters must be added in order */
  /* The data area, relative to its start. */
  uint64_t data_end;            /* bytes used */
  uint64_t compressed_pos;      /* where the next compressed bytes go */
  /* The host clusters of the data area as runs of one kind; an
   * uncompressed cluster has refcount 1, compressed ones have theirs
   * in crefs.  There are no gaps: every cluster below data_clusters is
   * in a run.
   */
  struct qcow2_plan_host *hosts;
  size_t nb_hosts, hosts_cap;
  uint32_t *crefs;
  size_t nb_crefs, crefs_cap;
  uint64_t data_clusters;
  uint64_t refcount_cap;        /* refcount_max, capped to uint32 */
  uint64_t nb_compressed;       /* compressed clusters stored */
  /* Absolute layout, set by qcow2_plan_layout(). */
  bool laid_out;
  uint64_t rt_clusters, rb_clusters, l1_clusters;
  uint64_t rb_offset, l2_offset, data_offset;
  uint64_t total_clusters;
  uint64_t file_size;           /* data end rounded up to a sector */
  uint32_t *l2_order;           /* L1 index of each L2 table, in file
                                   order (nb_l2 of them) */
  uint64_t meta_end;            /* end of the metadata: data_offset, or
                                   less when a reservation left a gap */
  /* The header cluster comes out with its magic zeroed: a target
   * written in place gets the magic last, so that it is no image
   * until everything else is there.
   */
  bool hold_magic;
  /* Set by qcow2_plan_reserve(): the data area starts here whatever
   * the plan turns out to hold (0: right after the metadata).
   */
  uint64_t reserved_data_offset;
  uint64_t reserved_rt_clusters, reserved_rb_clusters;
  uint64_t reserved_total_clusters;
  /* Set before qcow2_plan_layout(): the refcount table goes after the
   * data, as the last clusters of the file (for a stream, see pack.c),
   * instead of right after the header.  Not with a reservation.
   */
  bool rt_last;
  /* The content digest, written as a header extension. */
  bool has_digest;
  struct qcow2_sc_digest digest;
};

/* Start a plan: version 2 or 3, cluster_bits 9..21, refcount_order
 * 0..6 (4 for version 2), codec deflate or zstd (zstd needs version
 * 3).  Fails if the virtual size needs an L1 table over qemu's limit.
 */
extern int qcow2_plan_init (struct qcow2_plan *p, unsigned version,
                            uint32_t cluster_bits, unsigned refcount_order,
                            enum sc_codec codec, uint64_t virtual_size);
extern void qcow2_plan_free (struct qcow2_plan *p);
/* Raise the virtual size (never lowers it), for a source whose length
 * is known only at its end.  Only before qcow2_plan_layout().
 */
extern int qcow2_plan_grow (struct qcow2_plan *p, uint64_t virtual_size);
/* Store guest cluster number gc uncompressed or compressed (len bytes,
 * less than a cluster).  Clusters must come in increasing order.  The
 * data-area offset chosen for the bytes is returned in *rel: offsets of
 * uncompressed clusters increase in guest order, and so do those of
 * compressed clusters, but a compressed cluster may fill the rest of a
 * host cluster in front of uncompressed clusters placed before it.
 */
extern int qcow2_plan_add_normal (struct qcow2_plan *p, uint64_t gc,
                                  uint64_t *rel);
extern int qcow2_plan_add_compressed (struct qcow2_plan *p, uint64_t gc,
                                      uint64_t len, uint64_t *rel);
/* The refcount of host cluster k of the data area (relative). */
extern uint64_t qcow2_plan_data_refcount (const struct qcow2_plan *p,
                                          uint64_t k);
/* Store the content digest of the guest data (SHA-256 with blocks of
 * block_size bytes) in the header, with its autoclear bit.  Version 3
 * only: a version 2 header has no autoclear bits to tell a stale
 * digest (EINVAL).
 */
extern int qcow2_plan_set_digest (struct qcow2_plan *p, uint32_t block_size,
                                  const unsigned char sha256[32]);
/* Fix where the data area starts before any cluster is stored, so data
 * can be written to its final place while it is scanned: room is left
 * for the metadata of up to max_l2 L2 tables and max_data_clusters
 * host clusters of data.  The clusters between the metadata the plan
 * needs in the end and the data area are left unused (refcount 0, read
 * as zeros).  Fails with EFBIG as qcow2_plan_layout() does.
 */
extern int qcow2_plan_reserve (struct qcow2_plan *p, uint64_t max_l2,
                               uint64_t max_data_clusters);
/* Fix the layout of the metadata in front of the data area.  After a
 * reservation, fails with ENOSPC if the plan outgrew it.
 */
extern int qcow2_plan_layout (struct qcow2_plan *p);
/* Fill buf (one cluster) with host cluster k of the laid-out image's
 * metadata, for any k in front of the data area: 0, or -1 with the
 * error set (EINVAL: not laid out, or k not metadata).
 */
extern int qcow2_plan_metadata (const struct qcow2_plan *p, uint64_t k,
                                void *buf);
/* Iterate over stored clusters in guest order: starting with *gc = 0,
 * each call finds the next stored cluster at or after *gc, sets *gc,
 * its relative data offset *rel, *len (the cluster size when
 * uncompressed; when compressed, the bytes up to the end of its last
 * 512-byte sector, as a reader sees it), *compressed, and advances *gc
 * past it.
 * Returns 1, or 0 at the end.
 */
extern int qcow2_plan_next (const struct qcow2_plan *p, uint64_t *gc,
                            uint64_t *rel, uint64_t *len, bool *compressed);

/* ---- qcow2-image.c ----------------------------------------------------- */

/* The image a laid-out plan describes, as a source endpoint named name:
 * uncompressed clusters are read from src at their guest offsets, the
 * rest of the data area from spill_fd, a file that mirrors the data
 * area with holes where uncompressed clusters go (-1: there are no
 * compressed clusters).  src NULL: all of the data area is in the
 * spill file.  The plan, src and spill_fd are borrowed and must outlive
 * the endpoint.  NULL with the error set.
 */
extern struct sc_endpoint *qcow2_image_endpoint (const struct qcow2_plan *plan,
                                                 struct sc_endpoint *src,
                                                 int spill_fd,
                                                 const char *name);

/* ---- qcow2-stream.c ---------------------------------------------------- */

/* Decode the qcow2 image on the stream src into dst (see sc_unpack):
 * sized, written and flushed, not committed.  progress counts bytes of
 * the stream.
 */
extern int qcow2_unpack_stream (struct sc_endpoint *src,
                                struct sc_endpoint *dst,
                                sc_progress_fn progress,
                                void *progress_opaque);
/* The same, reading chunk_size bytes at a time (a power of two from
 * the smallest cluster up to the default of 4 MiB) instead of the
 * default: images with larger clusters are refused.  Small chunks make
 * small images span many of them, for tests of what crosses a chunk.
 */
extern int qcow2_unpack_stream_chunked (struct sc_endpoint *src,
                                        struct sc_endpoint *dst,
                                        size_t chunk_size,
                                        sc_progress_fn progress,
                                        void *progress_opaque);
/* The most data the stream decoder holds back for a forward-only
 * target (bytes; 256 MiB).  Tests and fuzz targets lower it: one host
 * cluster that many L2 entries name is held once per entry, so a small
 * hostile image can fill the whole limit, which costs time per input.
 */
extern size_t qcow2_stream_held_limit;

#endif /* SPARSECOW_QCOW2_H */
