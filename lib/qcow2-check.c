/* The qcow2 checker: rebuild the refcounts an image should have from
 * everything that references a host cluster, read the refcounts the
 * image records, and compare the two.
 *
 * The classification follows qemu-img check, because users compare the
 * two tools and scripts depend on the exit codes: a cluster used more
 * often than its refcount says is a corruption, a refcount above the
 * real use is a leak.  Like qemu, reads past the end of the file return
 * zeros, so a table cut short by the end of the file is checked as if
 * it were empty there, and anything that lies a cluster or more past
 * the end is one corruption.  The COPIED flags of the active layer are
 * checked as qemu checks them (a mismatch is a corruption).
 *
 * Damage that qemu-img check does not count but that the reader
 * refuses (a structure less than a cluster past the end of the file,
 * the zero flag in a version 2 image) is counted apart, as damage, so
 * that corruptions and leaks stay qemu-img check's numbers.
 *
 * Work: what several L1 tables share (snapshots may all use one table,
 * or overlapping ones) is read once and counted once per table, L2
 * tables are read once per batch of L1 entries however many entries
 * point at them, and holes of a sparse file are not read at all, so
 * the time follows the metadata in the file, not the number of
 * snapshots or the apparent size of the file.
 *
 * Memory: one counter per host cluster of the file (capped before it
 * is allocated), the refcount table (capped by the header reader), one
 * L2 table, one refcount block, a bounded piece of an L1 table, a
 * bounded batch of L2 table uses, and a small record per snapshot.
 */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "qcow2.h"

/* Refuse to check an image of more host clusters than this: the
 * counters alone would take gigabytes.
 */
#define CHECK_MAX_CLUSTERS       (UINT64_C (1) << 28)
/* At most this many problem messages are kept. */
#define CHECK_MAX_MESSAGES       10000
/* Room for this many first; then the list doubles. */
#define CHECK_MESSAGES_FIRST     16
/* L1 and bitmap tables are read in pieces of this many entries. */
#define CHECK_TABLE_CHUNK        8192
/* Holes are looked for this many bytes at a time: one lookup then
 * costs at most the extents of a window, not of the rest of the file.
 */
#define NEXT_DATA_WINDOW         (UINT64_C (1) << 20)

/* Encryption methods: 0 none, 1 AES (legacy), 2 LUKS. */
#define CRYPT_METHOD_LUKS        2
#define CRYPT_METHOD_MAX         2

/* Work budget, in table entries visited.  Shared tables are visited
 * once, so real images stay far below this; it remains as a last
 * line of defence against what the sharing does not catch (such as
 * many L2 tables at overlapping offsets).  Past it the check gives up.
 */
#define CHECK_WORK_BASE          (UINT64_C (1) << 30)
#define CHECK_WORK_PER_BYTE      8
/* L2 tables are gathered in batches of this many uses, and each table
 * is read once per batch, however many L1 entries point at it.  A
 * batch takes 6 MiB, and the largest L2 table (2 MiB clusters) has
 * fewer entries than a batch, so the L2 work stays below the L1 work.
 */
#define CHECK_L2_BATCH           (1U << 18)

/* Header extensions the checker needs beyond the header reader. */
#define CRYPTO_EXT_SIZE          16
#define BITMAPS_EXT_SIZE         24

/* Bitmap directory entries and bitmap tables (qcow2.rst, "Bitmaps"). */
#define BITMAP_MAX_BITMAPS       65535
#define BITMAP_MAX_DIR_BYTES     (UINT64_C (64) * 1024 * 1024)
#define BITMAP_DIR_ENTRY_SIZE    24
#define BITMAP_DIR_ENTRY_ALIGN   8
#define BITMAP_DIR_TABLE_OFFSET  0
#define BITMAP_DIR_TABLE_SIZE    8
#define BITMAP_DIR_FLAGS         12
#define BITMAP_DIR_TYPE          16
#define BITMAP_DIR_GRANULARITY   17
#define BITMAP_DIR_NAME_SIZE     18
#define BITMAP_DIR_EXTRA_SIZE    20
#define BITMAP_MAX_TABLE_ENTRIES (UINT64_C (1) << 27)
#define BITMAP_MAX_NAME          1023
#define BITMAP_MIN_GRANULARITY_BITS 9
#define BITMAP_MAX_GRANULARITY_BITS 31
#define BITMAP_MAX_PHYS_BYTES    (UINT64_C (512) * 1024 * 1024)
#define BITMAP_TYPE_DIRTY_TRACKING 1
#define BITMAP_FLAG_IN_USE       1U
#define BITMAP_WORD_BITS         64
/* in-use, auto and extra-data-compatible are the defined flags. */
#define BITMAP_RESERVED_FLAGS    (~7U)
#define BME_OFFSET_MASK          0x00fffffffffffe00ULL
#define BME_RESERVED_MASK        0xff000000000001feULL
#define BME_FLAG_ALL_ONES        1ULL


/* A range of units (L1 entries, or clusters) that some L1 tables
 * cover: uses tables in all, active of them the active layer's.
 */
struct span {
  uint64_t start, end;
  uint64_t uses, active;
};

/* Where the number of tables over a unit changes. */
struct span_event {
  uint64_t pos;
  uint64_t uses, active;
  bool end;
};

/* One L2 table that L1 entries point at: by uses entries in all,
 * active of them in the active layer.
 */
struct l2_use {
  uint64_t offset;
  uint64_t uses, active;
};

struct checker {
  struct sc_endpoint *ep;       /* the image file, the caller's */
  uint64_t file_size;           /* ep's size */
  struct sc_extent_list ext;    /* scratch for has_data() */
  struct qcow2_header h;
  uint64_t cs;                  /* cluster size */
  bool has_data_file;
  bool extl2;
  struct sc_check_result *res;

  /* The refcounts the image should have: counts[i] for host cluster i,
   * for i < nb_counts.  nb_counts starts at the clusters the file
   * covers and grows by one (as qemu's does) when something references
   * the cluster just past the end; one counter more is allocated.
   */
  uint32_t *counts;
  uint64_t nb_counts;
  uint64_t count_limit;         /* a counter this high overflows */

  /* The refcounts on disk. */
  uint64_t *rt;
  uint64_t rt_size;             /* entries */
  unsigned rb_shift;            /* log2 of entries per refcount block */
  unsigned char *rb;            /* one cached refcount block */
  uint64_t rb_offset;           /* its offset, or 0 if none is cached */

  unsigned char *l2;            /* one L2 table (a cluster) */
  uint64_t *chunk;              /* a piece of an L1 or bitmap table */
  struct l2_use *l2_uses;       /* a batch of L2 tables to visit */
  size_t nb_l2_uses;

  struct qcow2_snapshots snapshots;

  uint64_t work, work_limit;    /* see CHECK_WORK_BASE */

  uint64_t crypto_offset, crypto_length;
  uint32_t nb_bitmaps;
  uint64_t bitmap_dir_offset, bitmap_dir_size;
};

static void check_message (struct checker *ck, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* Keep one line describing a problem. */
static void
check_message (struct checker *ck, const char *fmt, ...)
{
  struct sc_check_result *res = ck->res;
  char **list;
  char *s;
  va_list ap;
  int r;

  if (res->nb_messages > CHECK_MAX_MESSAGES)
    return;
  if (res->nb_messages == CHECK_MAX_MESSAGES) {
    s = strdup ("(further messages suppressed)");
  }
  else {
    va_start (ap, fmt);
    r = vasprintf (&s, fmt, ap);
    va_end (ap);
    if (r == -1)
      s = NULL;
  }
  /* Without memory for a message the counts are still right, which is
   * what matters; the message is dropped.
   */
  if (s == NULL)
    return;
  /* The list doubles: it holds the smallest power of two of entries
   * (16 at least) that is not less than nb_messages, and grows when
   * nb_messages reaches it.  Growing it by one entry per message copied
   * it each time wherever realloc moves blocks: quadratic, a tenth of a
   * second for the last thousands of messages of a fuzzed image.
   */
  if (res->nb_messages == 0
      || (res->nb_messages >= CHECK_MESSAGES_FIRST
          && (res->nb_messages & (res->nb_messages - 1)) == 0)) {
    size_t cap = res->nb_messages ? 2 * res->nb_messages
      : CHECK_MESSAGES_FIRST;

    list = realloc (res->messages, cap * sizeof *list);
    if (list == NULL) {
      free (s);
      return;
    }
    res->messages = list;
  }
  res->messages[res->nb_messages++] = s;
}

/* Read like qemu reads an image file: bytes past its end are zeros. */
static int
read_at (struct checker *ck, void *buf, size_t len, uint64_t offset)
{
  return qcow2_pread_padded (ck->ep, ck->file_size, buf, len, offset);
}

/* The refcount the image records for a host cluster.  Returns 0, 1 if
 * it cannot be known (the refcount block is not aligned, or so far out
 * that it cannot be read; qemu fails these), or -1 on an I/O error.
 */
static int
disk_refcount (struct checker *ck, uint64_t cluster, uint64_t *rc)
{
  uint64_t index = cluster >> ck->rb_shift;
  uint64_t offset;

  *rc = 0;
  if (index >= ck->rt_size)
    return 0;
  offset = ck->rt[index] & QCOW2_RTE_OFFSET_MASK;
  if (offset == 0)
    return 0;
  if (!SC_IS_ALIGNED (offset, ck->cs)
      || !qcow2_io_readable (offset, ck->cs))
    return 1;
  if (offset != ck->rb_offset) {
    if (read_at (ck, ck->rb, ck->cs, offset) == -1)
      return -1;
    ck->rb_offset = offset;
  }
  *rc = qcow2_refcount_get (ck->rb, ck->h.refcount_order,
                            cluster & ((UINT64_C (1) << ck->rb_shift) - 1));
  return 0;
}

/* Count uses references to host cluster k, as if each came on its
 * own: a counter stops at the highest refcount the image can record,
 * and every reference beyond that is a corruption.  The counters only
 * grow, so the totals do not depend on the order of the references.
 */
static void
count_cluster (struct checker *ck, const char *what, uint64_t k,
               uint64_t uses)
{
  uint64_t room;

  /* k < file clusters + 1, for which the counters were allocated. */
  if (k >= ck->nb_counts)
    ck->nb_counts = k + 1;
  room = ck->count_limit - SC_MIN ((uint64_t) ck->counts[k],
                                   ck->count_limit);
  if (uses > room) {
    ck->res->corruptions += uses - room;
    check_message (ck, "ERROR: overflow cluster offset=0x%" PRIx64
                   " (%s: more references than refcount_bits=%" PRIu32
                   " can count)", k << ck->h.cluster_bits, what,
                   ck->h.refcount_bits);
    uses = room;
  }
  ck->counts[k] += uses;
}

/* Is [offset, offset+size) close enough to the file to be counted?
 *
 * The last cluster of an image may be only partly in the file (qemu
 * does not pad the end of a compressed cluster), so a range may run
 * past the end by less than a cluster.  Anything further out cannot be
 * in the image: like qemu, that is one corruption per reference for
 * the whole range, and nothing is counted.  So the counters never need
 * to cover more than one cluster past the end of the file.
 */
static bool
in_image (struct checker *ck, const char *what, uint64_t offset,
          uint64_t size, uint64_t uses)
{
  uint64_t end;

  if (!SC_ADD_OVERFLOW (offset, size, &end) && end < ck->file_size + ck->cs)
    return true;
  ck->res->corruptions += uses;
  check_message (ck, "ERROR: %s at offset 0x%" PRIx64 " (size 0x%" PRIx64
                 ") is outside the image: it exceeds the end of the file "
                 "(%" PRIu64 " bytes) by one cluster or more", what,
                 offset, size, ck->file_size);
  return false;
}

/* Count uses references to every cluster that [offset, offset+size)
 * touches; what names the structure for messages.
 */
static int
add_refs_n (struct checker *ck, const char *what, uint64_t offset,
            uint64_t size, uint64_t uses)
{
  uint64_t last;

  if (size == 0 || !in_image (ck, what, offset, size, uses))
    return 0;
  last = (offset + size - 1) >> ck->h.cluster_bits;
  for (uint64_t k = offset >> ck->h.cluster_bits; k <= last; k++)
    count_cluster (ck, what, k, uses);
  return 0;
}

static int
add_refs (struct checker *ck, const char *what, uint64_t offset,
          uint64_t size)
{
  return add_refs_n (ck, what, offset, size, 1);
}

/* Damage that qemu-img check does not count: the first need bytes of
 * a structure referenced uses times at [offset, offset+size) are not
 * all in the file, though the structure lies close enough to it for
 * in_image() (anything further out is a corruption already).  qemu
 * reads the missing bytes as zeros and its check passes; the image
 * was cut short (an interrupted copy) and what is missing is lost, so
 * the reader refuses it and the check reports it.
 */
static void
cut_short (struct checker *ck, const char *what, uint64_t offset,
           uint64_t size, uint64_t need, uint64_t uses)
{
  uint64_t end, need_end;

  if (need == 0 || SC_ADD_OVERFLOW (offset, size, &end)
      || end >= ck->file_size + ck->cs
      || SC_ADD_OVERFLOW (offset, need, &need_end)
      || need_end <= ck->file_size)
    return;
  ck->res->damage += uses;
  check_message (ck, "ERROR: %s at offset 0x%" PRIx64 " (size 0x%" PRIx64
                 ") lies %spast the end of the file (%" PRIu64 " bytes): "
                 "the image is cut short", what, offset, size,
                 offset < ck->file_size ? "partly " : "", ck->file_size);
}

/* add_refs_n, for a structure of which need bytes must be in the file
 * for it to be read.
 */
static int
add_refs_whole (struct checker *ck, const char *what, uint64_t offset,
                uint64_t size, uint64_t need, uint64_t uses)
{
  if (add_refs_n (ck, what, offset, size, uses) == -1)
    return -1;
  cut_short (ck, what, offset, size, need, uses);
  return 0;
}

/* Account for visiting units table entries; fails past the budget. */
static int
spend (struct checker *ck, uint64_t units)
{
  ck->work += units;
  if (ck->work > ck->work_limit) {
    sc_set_error (EFBIG, "the image references its metadata tables so "
                  "many times that checking it would take too long "
                  "(over %" PRIu64 " table entries); it is corrupt",
                  ck->work_limit);
    return -1;
  }
  return 0;
}

/* How many of the n u64 entries of a table at offset are (at least in
 * part) inside the file: the rest read as zeros.
 */
static uint64_t
entries_in_file (const struct checker *ck, uint64_t offset, uint64_t n)
{
  if (offset >= ck->file_size)
    return 0;
  return SC_MIN (n, SC_DIV_ROUND_UP (ck->file_size - offset,
                                     (uint64_t) sizeof (uint64_t)));
}

/* The first byte in [offset, end) that may hold data, or the end of
 * that range inside the file: the holes of a sparse file read as
 * zeros, and a table entry of zeros references nothing, so holes need
 * not be read.  The extents are asked for that range only, a window
 * at a time, and looked at only up to the first data; where the
 * endpoint cannot tell, everything is data.
 */
static uint64_t
next_data (struct checker *ck, uint64_t offset, uint64_t end)
{
  end = SC_MIN (end, ck->file_size);
  while (offset < end) {
    uint64_t wend = SC_MIN (end, offset + NEXT_DATA_WINDOW), pos = offset;
    uint64_t known;

    ck->ext.len = 0;
    if (sc_ep_extents_step (ck->ep, offset, wend - offset, &ck->ext, &known)
        == -1)
      return offset;
    for (size_t i = 0; i < ck->ext.len; i++) {
      const struct sc_extent *e = &ck->ext.ext[i];

      if (!(e->flags & (SC_EXTENT_HOLE | SC_EXTENT_ZERO)))
        return pos;
      pos += e->length;
    }
    if (pos < wend)
      return pos;
    offset = wend;
  }
  return end;
}

/* May the cluster at offset hold anything but zeros? */
static bool
has_data (struct checker *ck, uint64_t offset)
{
  uint64_t end = SC_MIN (ck->file_size, offset + ck->cs);

  return offset < end && next_data (ck, offset, end) < end;
}

/* Count everything one L2 table references, for uses L1 entries that
 * point at it: each of them would find (and count) the same.  The
 * allocation statistics are gathered for the active layer only, as
 * qemu does, so once for each of its active entries.
 */
static int
check_l2 (struct checker *ck, uint64_t l2_offset, uint64_t uses,
          uint64_t active)
{
  struct sc_check_result *res = ck->res;
  uint64_t next_contiguous = 0;

  /* An L2 table past the end of the file, or in a hole of it, reads as
   * zeros: nothing in it is allocated.
   */
  if (l2_offset >= ck->file_size || !has_data (ck, l2_offset))
    return spend (ck, 1);
  if (spend (ck, ck->h.l2_entries) == -1
      || read_at (ck, ck->l2, ck->cs, l2_offset) == -1)
    return -1;

  for (uint64_t i = 0; i < ck->h.l2_entries; i++) {
    uint64_t e, bitmap, offset, nbytes;
    enum qcow2_cluster_type type;
    unsigned faults, bitmap_faults;

    qcow2_l2_entry_get (&ck->h, ck->l2, i, &e, &bitmap);
    type = qcow2_l2_entry_classify (&ck->h, e, &faults);
    bitmap_faults = qcow2_l2_bitmap_faults (type, bitmap);

    if (faults & QCOW2_FAULT_RESERVED) {
      res->corruptions += uses;
      check_message (ck, "ERROR found l2 entry with reserved bits set: "
                     "%" PRIx64 " (L2 table at 0x%" PRIx64 ", index %"
                     PRIu64 ")", e, l2_offset, i);
    }
    if (faults & QCOW2_FAULT_V2_ZERO) {
      res->damage += uses;
      check_message (ck, "ERROR: L2 entry %" PRIx64 " (L2 table at 0x%"
                     PRIx64 ", index %" PRIu64 ") has the zero flag, which "
                     "version 2 images do not have: the cluster cannot be "
                     "read", e, l2_offset, i);
    }

    switch (type) {
    case QCOW2_CLUSTER_COMPRESSED:
      if (faults & QCOW2_FAULT_COMPRESSED_COPIED) {
        res->corruptions += uses;
        e &= ~QCOW2_OFLAG_COPIED;
        check_message (ck, "ERROR: compressed cluster entry %" PRIx64
                       " has the copied flag set", e);
      }
      if (faults & QCOW2_FAULT_COMPRESSED_DATA_FILE) {
        res->corruptions += uses;
        check_message (ck, "ERROR compressed cluster %" PRIu64 " with data "
                       "file, entry=0x%" PRIx64, i, e);
        break;
      }
      if (bitmap_faults & QCOW2_FAULT_COMPRESSED_BITMAP) {
        res->corruptions += uses;
        check_message (ck, "ERROR compressed cluster %" PRIu64 " with "
                       "non-zero subcluster allocation bitmap, entry=0x%"
                       PRIx64, i, e);
        break;
      }
      qcow2_compressed_descriptor (&ck->h, e, &offset, &nbytes);
      /* The descriptor's last sector holds the last byte of the
       * compressed data, and qemu does not pad the file beyond it: at
       * least part of that sector must be there.
       */
      if (add_refs_whole (ck, "compressed cluster", offset, nbytes,
                          nbytes > QCOW2_COMPRESSED_SECTOR - 1
                          ? nbytes - (QCOW2_COMPRESSED_SECTOR - 1) : 1,
                          uses) == -1)
        return -1;
      /* Compressed clusters share sectors, so they always count as
       * fragmented.
       */
      res->allocated_clusters += active;
      res->compressed_clusters += active;
      res->fragmented_clusters += active;
      break;

    case QCOW2_CLUSTER_ZERO_ALLOC:
    case QCOW2_CLUSTER_NORMAL:
      offset = e & QCOW2_L2E_OFFSET_MASK;
      if (bitmap_faults & QCOW2_FAULT_SUBCLUSTER_BOTH) {
        res->corruptions += uses;
        check_message (ck, "ERROR offset=%" PRIx64 ": Allocated cluster has "
                       "corrupted subcluster allocation bitmap", offset);
      }
      if (faults & QCOW2_FAULT_MISALIGNED) {
        bool data = ck->extl2 ? (bitmap & QCOW2_L2_BITMAP_ALL_ALLOC) != 0
          : !(e & QCOW2_OFLAG_ZERO);

        res->corruptions += uses;
        check_message (ck, "ERROR offset=%" PRIx64 ": %s cluster is not "
                       "properly aligned; L2 entry corrupted.", offset,
                       data ? "Data" : "Preallocated");
      }
      res->allocated_clusters += active;
      if (next_contiguous && offset != next_contiguous)
        res->fragmented_clusters += active;
      next_contiguous = offset + ck->cs;
      if (!ck->has_data_file) {
        /* What reads as data must be in the file: the whole cluster,
         * or with extended L2 entries up to the last allocated
         * subcluster (the rest may never have been written).
         */
        uint64_t need = type == QCOW2_CLUSTER_ZERO_ALLOC ? 0 : ck->cs;

        if (ck->extl2) {
          uint32_t alloc = (uint32_t) (bitmap & ~(bitmap >> QCOW2_SUBCLUSTERS)
                                       & QCOW2_L2_BITMAP_ALL_ALLOC);
          unsigned last = 0;

          while (last < QCOW2_SUBCLUSTERS && (alloc >> last) != 0)
            last++;
          need = (ck->cs / QCOW2_SUBCLUSTERS) * last;
        }
        if (add_refs_whole (ck, "data cluster", offset, ck->cs, need,
                            uses) == -1)
          return -1;
      }
      break;

    case QCOW2_CLUSTER_ZERO_PLAIN:
      break;

    case QCOW2_CLUSTER_UNALLOCATED:
      if (bitmap_faults & QCOW2_FAULT_UNALLOCATED_ALLOC) {
        res->corruptions += uses;
        check_message (ck, "ERROR: Unallocated cluster has non-zero "
                       "subcluster allocation bitmap");
      }
      break;
    }
  }
  return 0;
}

/* Read entries [first, first+n) of a table of u64 at offset into
 * ck->chunk, converted to host order.
 */
static int
read_chunk (struct checker *ck, uint64_t offset, uint64_t first, uint64_t n)
{
  if (read_at (ck, ck->chunk, n * sizeof (uint64_t),
               offset + first * sizeof (uint64_t)) == -1)
    return -1;
  for (uint64_t j = 0; j < n; j++)
    ck->chunk[j] = be64toh (ck->chunk[j]);
  return 0;
}

/* Check the COPIED flags of the clusters one L2 table references, for
 * uses entries of the active L1 table that point at it.
 */
static int
copied_l2 (struct checker *ck, uint64_t l2_offset, uint64_t uses)
{
  struct sc_check_result *res = ck->res;

  /* Past the end of the file or in a hole: zeros, nothing allocated. */
  if (l2_offset >= ck->file_size || !has_data (ck, l2_offset))
    return 0;
  if (read_at (ck, ck->l2, ck->cs, l2_offset) == -1)
    return -1;
  for (uint64_t i = 0; i < ck->h.l2_entries; i++) {
    uint64_t le, bitmap, rc;
    enum qcow2_cluster_type type;
    unsigned faults;
    int r;

    qcow2_l2_entry_get (&ck->h, ck->l2, i, &le, &bitmap);
    type = qcow2_l2_entry_classify (&ck->h, le, &faults);
    if (type != QCOW2_CLUSTER_NORMAL && type != QCOW2_CLUSTER_ZERO_ALLOC)
      continue;
    if (ck->has_data_file)
      rc = 1;
    else {
      r = disk_refcount (ck, (le & QCOW2_L2E_OFFSET_MASK)
                         >> ck->h.cluster_bits, &rc);
      if (r == -1)
        return -1;
      if (r == 1)
        continue;
    }
    if ((rc == 1) != ((le & QCOW2_OFLAG_COPIED) != 0)) {
      res->corruptions += uses;
      check_message (ck, "ERROR OFLAG_COPIED data cluster: l2_entry=%"
                     PRIx64 " refcount=%" PRIu64, le, rc);
    }
  }
  return 0;
}

/* Order L2 uses by the table they point at. */
static int
compare_l2_uses (const void *a, const void *b)
{
  const struct l2_use *x = a, *y = b;

  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Visit each distinct L2 table of the batch once, for all the entries
 * that point at it.  copied: check COPIED flags (copied_l2) instead of
 * counting references (check_l2).
 */
static int
flush_l2_uses (struct checker *ck, bool copied)
{
  size_t n = ck->nb_l2_uses, j;

  ck->nb_l2_uses = 0;
  qsort (ck->l2_uses, n, sizeof *ck->l2_uses, compare_l2_uses);
  for (size_t i = 0; i < n; i = j) {
    struct l2_use u = ck->l2_uses[i];
    int r;

    for (j = i + 1; j < n && ck->l2_uses[j].offset == u.offset; j++) {
      u.uses += ck->l2_uses[j].uses;
      u.active += ck->l2_uses[j].active;
    }
    r = copied ? copied_l2 (ck, u.offset, u.uses)
      : check_l2 (ck, u.offset, u.uses, u.active);
    if (r == -1)
      return -1;
  }
  return 0;
}

/* Note that uses L1 entries (active of them the active layer's) point
 * at the L2 table at offset.
 */
static int
add_l2_use (struct checker *ck, uint64_t offset, uint64_t uses,
            uint64_t active, bool copied)
{
  if (ck->nb_l2_uses == CHECK_L2_BATCH && flush_l2_uses (ck, copied) == -1)
    return -1;
  ck->l2_uses[ck->nb_l2_uses++] = (struct l2_use) {
    .offset = offset, .uses = uses, .active = active
  };
  return 0;
}

typedef int (*span_fn) (struct checker *ck, uint64_t start, uint64_t end,
                        uint64_t uses, uint64_t active);

static int
compare_span_events (const void *a, const void *b)
{
  const struct span_event *x = a, *y = b;

  return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* Call fn once for every piece of the units the spans cover, with how
 * many spans cover it.  Snapshots may all share one L1 table, or use
 * overlapping ones: what they share is then visited once, not once
 * per snapshot.
 */
static int
sweep_spans (struct checker *ck, const struct span *spans, size_t n,
             span_fn fn)
{
  CLEANUP_FREE struct span_event *ev = NULL;
  uint64_t uses = 0, active = 0;
  size_t nev = 0;

  if (n == 0)
    return 0;
  /* n is at most the number of snapshots plus one. */
  ev = malloc (2 * n * sizeof *ev);
  if (ev == NULL) {
    sc_set_error (errno, "check: out of memory");
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    ev[nev++] = (struct span_event) { .pos = spans[i].start,
      .uses = spans[i].uses, .active = spans[i].active, .end = false };
    ev[nev++] = (struct span_event) { .pos = spans[i].end,
      .uses = spans[i].uses, .active = spans[i].active, .end = true };
  }
  qsort (ev, nev, sizeof *ev, compare_span_events);
  for (size_t i = 0; i < nev; ) {
    uint64_t pos = ev[i].pos;

    /* All changes at one position together: the sums may wrap around
     * in between, but not once they are all applied.
     */
    for (; i < nev && ev[i].pos == pos; i++) {
      if (ev[i].end) {
        uses -= ev[i].uses;
        active -= ev[i].active;
      }
      else {
        uses += ev[i].uses;
        active += ev[i].active;
      }
    }
    if (i < nev && uses > 0 && fn (ck, pos, ev[i].pos, uses, active) == -1)
      return -1;
  }
  return 0;
}

/* The clusters [start, end) hold L1 tables, uses times over. */
static int
count_l1_clusters (struct checker *ck, uint64_t start, uint64_t end,
                   uint64_t uses, uint64_t active)
{
  (void) active;
  for (uint64_t k = start; k < end; k++)
    count_cluster (ck, "L1 table", k, uses);
  return 0;
}

/* Read the next piece of the table entries [*pos, end) (counted in
 * entries from the start of the file) that is not in a hole, into
 * ck->chunk; *pos is set to its first entry and *n to its length.
 * Returns 1, 0 when only holes are left, or -1.
 */
static int
next_chunk (struct checker *ck, uint64_t *pos, uint64_t end, uint64_t *n)
{
  uint64_t data;

  if (*pos >= end)
    return 0;
  data = next_data (ck, *pos * sizeof (uint64_t), end * sizeof (uint64_t))
    / sizeof (uint64_t);
  if (data >= end)
    return 0;
  *pos = SC_MAX (*pos, data);
  *n = SC_MIN (end - *pos, (uint64_t) CHECK_TABLE_CHUNK);
  if (spend (ck, *n) == -1 || read_chunk (ck, 0, *pos, *n) == -1)
    return -1;
  return 1;
}

/* Count the L1 entries [start, end) (counted in entries from the start
 * of the file) that uses L1 tables share, active of them the active
 * layer's: each table would find the same in them.
 */
static int
walk_l1_entries (struct checker *ck, uint64_t start, uint64_t end,
                 uint64_t uses, uint64_t active)
{
  struct sc_check_result *res = ck->res;
  uint64_t pos = start, n;
  int r;

  while ((r = next_chunk (ck, &pos, end, &n)) == 1) {
    for (uint64_t j = 0; j < n; j++) {
      uint64_t e = ck->chunk[j], l2_offset;
      unsigned faults;

      if (e == 0)
        continue;
      faults = qcow2_l1_entry_faults (&ck->h, e);
      if (faults & QCOW2_FAULT_RESERVED) {
        res->corruptions += uses;
        check_message (ck, "ERROR found L1 entry with reserved bits set: "
                       "%" PRIx64 " (at offset 0x%" PRIx64 ", in %" PRIu64
                       " L1 tables)", e, (pos + j) * QCOW2_L1E_SIZE, uses);
      }
      l2_offset = e & QCOW2_L1E_OFFSET_MASK;
      if (add_refs_whole (ck, "L2 table", l2_offset, ck->cs, ck->cs,
                          uses) == -1)
        return -1;
      if (faults & QCOW2_FAULT_MISALIGNED) {
        res->corruptions += uses;
        check_message (ck, "ERROR l2_offset=%" PRIx64 ": Table is not "
                       "cluster aligned; L1 entry corrupted", l2_offset);
      }
      if (add_l2_use (ck, l2_offset, uses, active, false) == -1)
        return -1;
    }
    pos += n;
  }
  return r;
}

/* Where tables of one kind (L1 or bitmap tables) lie, in clusters
 * (their own references) and in entries (what they reference).
 */
struct tables {
  struct span *clusters, *entries;
  size_t nb_clusters, nb_entries;
};

/* Allocate room for n tables. */
static int
tables_init (struct tables *t, size_t n)
{
  t->nb_clusters = t->nb_entries = 0;
  t->clusters = calloc (n, sizeof *t->clusters);
  t->entries = calloc (n, sizeof *t->entries);
  if (t->clusters == NULL || t->entries == NULL) {
    sc_set_error (errno, "check: out of memory");
    return -1;
  }
  return 0;
}

static void
tables_free (struct tables *t)
{
  free (t->clusters);
  free (t->entries);
}

/* Note a table of size entries at offset: it references its own
 * clusters (if they can be in the image at all) and what its entries
 * in the file reference.  Returns 0, -1, or 1 if check_readable and
 * qemu cannot read the table at all.
 */
static int
add_table (struct checker *ck, struct tables *t, const char *what,
           uint64_t offset, uint64_t size, bool active, bool check_readable)
{
  uint64_t bytes = size * sizeof (uint64_t), in_file;

  if (size == 0)
    return 0;
  if (in_image (ck, what, offset, bytes, 1))
    t->clusters[t->nb_clusters++] = (struct span) {
      .start = offset >> ck->h.cluster_bits,
      .end = ((offset + bytes - 1) >> ck->h.cluster_bits) + 1,
      .uses = 1, .active = active
    };
  if (check_readable && !qcow2_io_readable (offset, bytes))
    return 1;
  if (spend (ck, 1) == -1)
    return -1;
  /* Entries past the end of the file are zeros: skip them.  Tables are
   * cluster aligned (the header reader checks the active L1 table), so
   * a table starts on an entry of the file.
   */
  in_file = entries_in_file (ck, offset, size);
  if (in_file > 0)
    t->entries[t->nb_entries++] = (struct span) {
      .start = offset / sizeof (uint64_t),
      .end = offset / sizeof (uint64_t) + in_file,
      .uses = 1, .active = active
    };
  return 0;
}

/* Note one L1 table: the active layer's, or a snapshot's. */
static int
add_l1_table (struct checker *ck, struct tables *t, uint64_t l1_offset,
              uint64_t l1_size, bool active)
{
  const char *what = active ? "L1 table" : "snapshot L1 table";
  int r = add_table (ck, t, what, l1_offset, l1_size, active, true);

  if (r == 1) {
    ck->res->check_errors++;
    check_message (ck, "ERROR: cannot read the %s at offset 0x%" PRIx64,
                   what, l1_offset);
    return 0;
  }
  return r;
}

/* Count the L1 tables of the active layer and of every snapshot, their
 * L2 tables and everything they reference.  What several tables share
 * is read once and counted once per table, so the work follows the
 * metadata in the file, not the number of snapshots.
 */
static int
check_l1_tables (struct checker *ck)
{
  struct sc_check_result *res = ck->res;
  struct tables t;
  int ret = -1;

  /* read_snapshots capped the number of snapshots. */
  if (tables_init (&t, (size_t) ck->h.nb_snapshots + 1) == -1)
    goto out;
  if (add_l1_table (ck, &t, ck->h.l1_table_offset, ck->h.l1_size,
                    true) == -1)
    goto out;
  cut_short (ck, "L1 table", ck->h.l1_table_offset,
             (uint64_t) ck->h.l1_size * QCOW2_L1E_SIZE,
             (uint64_t) ck->h.l1_size * QCOW2_L1E_SIZE, 1);
  if (ck->has_data_file && ck->h.nb_snapshots) {
    res->corruptions++;
    check_message (ck, "ERROR %" PRIu32 " snapshots in image with data "
                   "file", ck->h.nb_snapshots);
  }
  for (uint32_t i = 0; i < ck->h.nb_snapshots; i++) {
    const struct qcow2_snapshot *sn = &ck->snapshots.s[i];

    if (!SC_IS_ALIGNED (sn->l1_offset, ck->cs)) {
      res->corruptions++;
      check_message (ck, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64
                     ": L1 table is not cluster aligned; snapshot table "
                     "entry corrupted", sn->id, sn->name, sn->l1_offset);
      continue;
    }
    if (sn->l1_size > QCOW2_MAX_L1_BYTES / QCOW2_L1E_SIZE) {
      res->corruptions++;
      check_message (ck, "ERROR snapshot %s (%s) l1_size=%#" PRIx32
                     ": L1 table is too large; snapshot table entry "
                     "corrupted", sn->id, sn->name, sn->l1_size);
      continue;
    }
    if (add_l1_table (ck, &t, sn->l1_offset, sn->l1_size, false) == -1)
      goto out;
  }
  if (sweep_spans (ck, t.clusters, t.nb_clusters, count_l1_clusters) == -1
      || sweep_spans (ck, t.entries, t.nb_entries, walk_l1_entries) == -1
      || flush_l2_uses (ck, false) == -1)
    goto out;
  ret = 0;
 out:
  tables_free (&t);
  return ret;
}

/* Read the snapshot table as qemu-img check reads it.  Entries are
 * read like everything else (past the end of the file they are zeros),
 * so a table that is cut short or lies outside the file still parses;
 * what it references is then judged by the refcount check.  An entry
 * of a version 3 image without the 16 bytes of extra data the version
 * requires is a corruption.  What qemu cannot read at all means the
 * image cannot be checked: too many snapshots, a table that cannot be
 * addressed, too much extra data in an entry, or a table that is too
 * large.
 */
static int
read_snapshots (struct checker *ck)
{
  if (qcow2_snapshots_read (ck->ep, ck->file_size, &ck->h, true,
                            &ck->snapshots) == -1)
    return -1;
  for (uint32_t i = 0; i < ck->snapshots.n; i++) {
    uint32_t extra = ck->snapshots.s[i].extra_size;

    if (ck->h.version >= 3 && extra < QCOW2_SNAPSHOT_V3_MIN_EXTRA) {
      ck->res->corruptions++;
      check_message (ck, "ERROR snapshot table entry %" PRIu32 " is "
                     "incomplete (%" PRIu32 " bytes of extra data, version "
                     "3 needs %d)", i, extra, QCOW2_SNAPSHOT_V3_MIN_EXTRA);
    }
  }
  return 0;
}

/* One header extension the header reader does not keep: where the
 * encryption header and the bitmap directory are.
 */
static int
check_extension (void *opaque, uint32_t type, const unsigned char *data,
                 uint32_t elen, uint64_t pos)
{
  struct checker *ck = opaque;
  uint64_t len = SC_MIN (ck->file_size, ck->cs);
  uint64_t end = ck->h.backing_file_offset
    ? SC_MIN (ck->h.backing_file_offset, len) : len;

  /* Only extensions wholly inside the file count: the walk stops at
   * the first that is not.
   */
  if (pos + QCOW2_EXT_HEADER_SIZE > end
      || elen > end - pos - QCOW2_EXT_HEADER_SIZE)
    return 1;
  if (type == QCOW2_EXT_CRYPTO) {
    /* Only LUKS keeps its header in the image (qemu insists). */
    if (ck->h.crypt_method != CRYPT_METHOD_LUKS
        || elen != CRYPTO_EXT_SIZE) {
      sc_set_error (EINVAL, "encryption header extension without LUKS "
                    "encryption, or of the wrong size");
      return -1;
    }
    ck->crypto_offset = sc_get_be64 (data);
    ck->crypto_length = sc_get_be64 (data + 8);
    if (!SC_IS_ALIGNED (ck->crypto_offset, ck->cs)) {
      sc_set_error (EINVAL, "encryption header offset 0x%" PRIx64
                    " is not aligned to a cluster", ck->crypto_offset);
      return -1;
    }
  }
  else if (type == QCOW2_EXT_BITMAPS
           && (ck->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
    /* Without the autoclear bit the bitmaps are stale and qemu does
     * not count them either.
     */
    if (elen != BITMAPS_EXT_SIZE || sc_get_be32 (data + 4) != 0) {
      sc_set_error (EINVAL, "bitmaps header extension: invalid length "
                    "or reserved field");
      return -1;
    }
    ck->nb_bitmaps = sc_get_be32 (data);
    ck->bitmap_dir_size = sc_get_be64 (data + 8);
    ck->bitmap_dir_offset = sc_get_be64 (data + 16);
    if (ck->nb_bitmaps == 0 || ck->nb_bitmaps > BITMAP_MAX_BITMAPS
        || ck->bitmap_dir_size > BITMAP_MAX_DIR_BYTES
        || !SC_IS_ALIGNED (ck->bitmap_dir_offset, ck->cs)) {
      sc_set_error (EINVAL, "bitmaps header extension: invalid number "
                    "of bitmaps, directory size or offset");
      return -1;
    }
  }
  return 0;
}

static int
read_extensions (struct checker *ck)
{
  if (qcow2_header_extensions (ck->ep, ck->file_size, &ck->h, true,
                               check_extension, ck) == -1)
    return -1;
  if (ck->h.crypt_method == CRYPT_METHOD_LUKS && ck->crypto_length == 0) {
    sc_set_error (EINVAL, "LUKS encryption without its header extension");
    return -1;
  }
  return 0;
}

/* The clusters [start, end) hold bitmap tables, uses times over. */
static int
count_bitmap_clusters (struct checker *ck, uint64_t start, uint64_t end,
                       uint64_t uses, uint64_t active)
{
  (void) active;
  for (uint64_t k = start; k < end; k++)
    count_cluster (ck, "bitmap table", k, uses);
  return 0;
}

/* Count the bitmap table entries [start, end) (counted in entries from
 * the start of the file) that uses bitmap tables share.
 */
static int
walk_bitmap_entries (struct checker *ck, uint64_t start, uint64_t end,
                     uint64_t uses, uint64_t active)
{
  struct sc_check_result *res = ck->res;
  uint64_t pos = start, n;
  int r;

  (void) active;
  while ((r = next_chunk (ck, &pos, end, &n)) == 1) {
    for (uint64_t j = 0; j < n; j++) {
      uint64_t e = ck->chunk[j], offset = e & BME_OFFSET_MASK;

      if ((e & BME_RESERVED_MASK)
          || (offset && ((e & BME_FLAG_ALL_ONES)
                         || !SC_IS_ALIGNED (offset, ck->cs)))) {
        res->corruptions += uses;
        check_message (ck, "ERROR bitmap table entry at offset 0x%" PRIx64
                       " (in %" PRIu64 " bitmap tables) is invalid: %"
                       PRIx64, (pos + j) * sizeof (uint64_t), uses, e);
        continue;
      }
      if (offset
          && add_refs_n (ck, "bitmap data", offset, ck->cs, uses) == -1)
        return -1;
    }
    pos += n;
  }
  return r;
}

/* What is wrong with the bitmap directory entry at dir[pos], with
 * room left bytes, or NULL if nothing; *len is set to its length.
 * These are the constraints qemu checks before it opens the image.
 */
static const char *
bitmap_entry_problem (const struct checker *ck, const unsigned char *e,
                      uint64_t left, uint64_t *len)
{
  uint64_t table_offset, table_size, phys, name_len, extra;
  uint32_t flags;
  unsigned type, granularity_bits;

  if (left < BITMAP_DIR_ENTRY_SIZE)
    return "the directory ends inside an entry";
  table_offset = sc_get_be64 (e + BITMAP_DIR_TABLE_OFFSET);
  table_size = sc_get_be32 (e + BITMAP_DIR_TABLE_SIZE);
  flags = sc_get_be32 (e + BITMAP_DIR_FLAGS);
  type = e[BITMAP_DIR_TYPE];
  granularity_bits = e[BITMAP_DIR_GRANULARITY];
  name_len = sc_get_be16 (e + BITMAP_DIR_NAME_SIZE);
  extra = sc_get_be32 (e + BITMAP_DIR_EXTRA_SIZE);
  *len = SC_ROUND_UP (BITMAP_DIR_ENTRY_SIZE + extra + name_len,
                      (uint64_t) BITMAP_DIR_ENTRY_ALIGN);
  if (*len > left)
    return "the entry runs past the end of the directory";
  if (extra != 0)
    return "bitmap extra data is not supported";
  if (table_size == 0 || table_offset == 0
      || !SC_IS_ALIGNED (table_offset, ck->cs)
      || table_size > BITMAP_MAX_TABLE_ENTRIES)
    return "invalid bitmap table offset or size";
  if (granularity_bits < BITMAP_MIN_GRANULARITY_BITS
      || granularity_bits > BITMAP_MAX_GRANULARITY_BITS)
    return "invalid granularity";
  if (flags & BITMAP_RESERVED_FLAGS)
    return "reserved flags set";
  if (name_len == 0 || name_len > BITMAP_MAX_NAME)
    return "invalid name length";
  if (type != BITMAP_TYPE_DIRTY_TRACKING)
    return "unknown bitmap type";
  phys = table_size * ck->cs;
  if (phys > BITMAP_MAX_PHYS_BYTES)
    return "the bitmap is too large";
  /* A bitmap that is not in use must be exactly as large as the disk
   * needs: one bit per granule, stored in 64-bit words.
   */
  if (!(flags & BITMAP_FLAG_IN_USE)) {
    uint64_t bits = SC_DIV_ROUND_UP (ck->h.size,
                                     UINT64_C (1) << granularity_bits);
    uint64_t bytes = SC_DIV_ROUND_UP (bits, BITMAP_WORD_BITS)
      * (BITMAP_WORD_BITS / 8);

    if (table_size != SC_DIV_ROUND_UP (bytes, ck->cs))
      return "the bitmap table size does not match the disk size";
  }
  return NULL;
}

/* Count the bitmap directory, the bitmap tables and their clusters.  A
 * directory that breaks qemu's constraints is a corruption (qemu does
 * not open the image at all); then only the directory is counted.
 */
static int
check_bitmaps (struct checker *ck)
{
  struct sc_check_result *res = ck->res;
  CLEANUP_FREE unsigned char *dir = NULL;
  const char *problem = NULL;
  struct tables t = { 0 };
  uint64_t pos, len = 0;
  uint32_t i;
  int ret = -1;

  if (ck->nb_bitmaps == 0)
    return 0;
  if (add_refs (ck, "bitmap directory", ck->bitmap_dir_offset,
                ck->bitmap_dir_size) == -1)
    return -1;
  if (!qcow2_io_readable (ck->bitmap_dir_offset, ck->bitmap_dir_size)) {
    res->check_errors++;
    check_message (ck, "ERROR: cannot read the bitmap directory at offset "
                   "0x%" PRIx64, ck->bitmap_dir_offset);
    return 0;
  }
  /* The header extension's size was capped when it was read, and a
   * directory must be in the file before it is worth reading.
   */
  if (ck->bitmap_dir_offset >= ck->file_size
      || ck->bitmap_dir_size > ck->file_size - ck->bitmap_dir_offset) {
    res->corruptions++;
    check_message (ck, "ERROR bitmap directory at 0x%" PRIx64 " (%" PRIu64
                   " bytes) is not inside the file", ck->bitmap_dir_offset,
                   ck->bitmap_dir_size);
    return 0;
  }
  dir = malloc (ck->bitmap_dir_size ? ck->bitmap_dir_size : 1);
  if (dir == NULL) {
    sc_set_error (errno, "bitmap directory: out of memory");
    return -1;
  }
  if (read_at (ck, dir, ck->bitmap_dir_size, ck->bitmap_dir_offset) == -1)
    return -1;

  for (i = 0, pos = 0; i < ck->nb_bitmaps && problem == NULL; i++) {
    problem = bitmap_entry_problem (ck, dir + pos,
                                    ck->bitmap_dir_size - pos, &len);
    pos += len;
  }
  if (problem == NULL && pos != ck->bitmap_dir_size)
    problem = "more entries than the header extension says";
  if (problem) {
    res->corruptions++;
    check_message (ck, "ERROR bitmap directory at 0x%" PRIx64 " is "
                   "corrupted: entry %" PRIu32 ": %s",
                   ck->bitmap_dir_offset, i, problem);
    return 0;
  }

  /* Bitmaps may share tables: what they share is read once. */
  if (tables_init (&t, ck->nb_bitmaps) == -1)
    goto out;
  for (pos = 0; pos < ck->bitmap_dir_size; pos += len) {
    const unsigned char *e = dir + pos;

    bitmap_entry_problem (ck, e, ck->bitmap_dir_size - pos, &len);
    if (add_table (ck, &t, "bitmap table",
                   sc_get_be64 (e + BITMAP_DIR_TABLE_OFFSET),
                   sc_get_be32 (e + BITMAP_DIR_TABLE_SIZE), false,
                   false) == -1)
      goto out;
  }
  if (sweep_spans (ck, t.clusters, t.nb_clusters,
                   count_bitmap_clusters) == -1
      || sweep_spans (ck, t.entries, t.nb_entries,
                      walk_bitmap_entries) == -1)
    goto out;
  ret = 0;
 out:
  tables_free (&t);
  return ret;
}

/* Count the refcount blocks themselves and check their table entries. */
static int
check_refblocks (struct checker *ck)
{
  struct sc_check_result *res = ck->res;

  for (uint64_t i = 0; i < ck->rt_size; i++) {
    uint64_t offset = ck->rt[i] & QCOW2_RTE_OFFSET_MASK;
    uint64_t cluster = offset >> ck->h.cluster_bits;

    if (ck->rt[i] & QCOW2_RTE_RESERVED_MASK) {
      res->corruptions++;
      check_message (ck, "ERROR refcount table entry %" PRIu64 " has "
                     "reserved bits set", i);
      continue;
    }
    if (!SC_IS_ALIGNED (offset, ck->cs)) {
      res->corruptions++;
      check_message (ck, "ERROR refcount block %" PRIu64 " is not cluster "
                     "aligned; refcount table entry corrupted", i);
      continue;
    }
    if (cluster >= ck->nb_counts) {
      res->corruptions++;
      check_message (ck, "ERROR refcount block %" PRIu64 " is outside "
                     "image (offset 0x%" PRIx64 ")", i, offset);
      continue;
    }
    if (offset != 0) {
      if (add_refs_whole (ck, "refcount block", offset, ck->cs, ck->cs,
                          1) == -1)
        return -1;
      if (ck->counts[cluster] != 1) {
        res->corruptions++;
        check_message (ck, "ERROR refcount block %" PRIu64 " refcount=%"
                       PRIu32 " (it shares its cluster with other "
                       "metadata or data)", i, ck->counts[cluster]);
      }
    }
  }
  return 0;
}

/* Compare the real use with the refcounts on disk. */
static int
compare_refcounts (struct checker *ck, uint64_t *highest)
{
  struct sc_check_result *res = ck->res;

  *highest = 0;
  for (uint64_t i = 0; i < ck->nb_counts; i++) {
    uint64_t disk, real = ck->counts[i];
    int r = disk_refcount (ck, i, &disk);

    if (r == -1)
      return -1;
    if (r == 1) {
      res->check_errors++;
      check_message (ck, "Can't get refcount for cluster %" PRIu64 ": "
                     "its refcount block is not cluster aligned or "
                     "cannot be read", i);
      continue;
    }
    if (disk > 0 || real > 0)
      *highest = i;
    if (disk != real) {
      check_message (ck, "%s cluster %" PRIu64 " refcount=%" PRIu64
                     " reference=%" PRIu64, disk < real ? "ERROR" : "Leaked",
                     i, disk, real);
      if (disk < real)
        res->corruptions++;
      else
        res->leaks++;
    }
  }
  return 0;
}

/* The COPIED flag must be set exactly where the refcount is 1; qemu
 * counts a mismatch in the active layer as a corruption.  Each L2 table
 * is read once per batch, however many L1 entries point at it.
 */
static int
check_copied_flags (struct checker *ck)
{
  struct sc_check_result *res = ck->res;
  uint64_t l1_size = entries_in_file (ck, ck->h.l1_table_offset,
                                      ck->h.l1_size);

  for (uint64_t first = 0; first < l1_size; first += CHECK_TABLE_CHUNK) {
    uint64_t n = SC_MIN (l1_size - first, (uint64_t) CHECK_TABLE_CHUNK);

    if (read_chunk (ck, ck->h.l1_table_offset, first, n) == -1)
      return -1;
    for (uint64_t j = 0; j < n; j++) {
      uint64_t e = ck->chunk[j];
      uint64_t l2_offset = e & QCOW2_L1E_OFFSET_MASK, rc;
      int r;

      if (l2_offset == 0)
        continue;
      r = disk_refcount (ck, l2_offset >> ck->h.cluster_bits, &rc);
      if (r == -1)
        return -1;
      if (r == 1)
        continue;
      if ((rc == 1) != ((e & QCOW2_OFLAG_COPIED) != 0)) {
        res->corruptions++;
        check_message (ck, "ERROR OFLAG_COPIED L2 cluster: l1_index=%"
                       PRIu64 " l1_entry=%" PRIx64 " refcount=%" PRIu64,
                       first + j, e, rc);
      }
      if (add_l2_use (ck, l2_offset, 1, 0, true) == -1)
        return -1;
    }
  }
  return flush_l2_uses (ck, true);
}

static int
run_check (struct checker *ck)
{
  struct sc_check_result *res = ck->res;
  uint64_t rt_bytes, highest;

  ck->cs = ck->h.cluster_size;
  ck->has_data_file = ck->h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
  ck->extl2 = ck->h.incompatible_features & QCOW2_INCOMPAT_EXTL2;
  ck->count_limit = SC_MIN (ck->h.refcount_max, (uint64_t) UINT32_MAX);
  ck->rb_shift = qcow2_refcount_block_bits (ck->h.cluster_bits,
                                            ck->h.refcount_order);

  /* Cap the counters before allocating them. */
  ck->nb_counts = qcow2_size_to_clusters (&ck->h, ck->file_size);
  if (ck->nb_counts > CHECK_MAX_CLUSTERS) {
    sc_set_error (EFBIG, "image file too large to check (%" PRIu64
                  " clusters, at most %" PRIu64 ")", ck->nb_counts,
                  CHECK_MAX_CLUSTERS);
    return -1;
  }
  ck->counts = calloc (ck->nb_counts + 1, sizeof *ck->counts);
  ck->work_limit = CHECK_WORK_BASE + ck->file_size * CHECK_WORK_PER_BYTE;
  ck->l2 = malloc (ck->cs);
  ck->rb = malloc (ck->cs);
  ck->chunk = malloc (CHECK_TABLE_CHUNK * sizeof *ck->chunk);
  ck->l2_uses = malloc (CHECK_L2_BATCH * sizeof *ck->l2_uses);
  /* The header reader capped the refcount table. */
  rt_bytes = (uint64_t) ck->h.refcount_table_clusters * ck->cs;
  ck->rt_size = rt_bytes / QCOW2_RTE_SIZE;
  /* qemu checks an image without a refcount table too. */
  ck->rt = malloc (rt_bytes ? rt_bytes : 1);
  if (!ck->counts || !ck->l2 || !ck->rb || !ck->chunk || !ck->l2_uses
      || !ck->rt) {
    sc_set_error (errno, "check: out of memory");
    return -1;
  }
  if (read_at (ck, ck->rt, rt_bytes, ck->h.refcount_table_offset) == -1)
    return -1;
  for (uint64_t i = 0; i < ck->rt_size; i++)
    ck->rt[i] = be64toh (ck->rt[i]);

  if (read_snapshots (ck) == -1 || read_extensions (ck) == -1)
    return -1;

  res->total_clusters = qcow2_size_to_clusters (&ck->h, ck->h.size);

  /* The header. */
  if (add_refs (ck, "header", 0, ck->cs) == -1)
    return -1;

  /* The active layer and every snapshot. */
  if (check_l1_tables (ck) == -1)
    return -1;
  if (add_refs (ck, "snapshot table", ck->h.snapshots_offset,
                ck->snapshots.table_bytes) == -1)
    return -1;

  /* The refcount table, the encryption header and the bitmaps. */
  if (add_refs_whole (ck, "refcount table", ck->h.refcount_table_offset,
                      rt_bytes, rt_bytes, 1) == -1)
    return -1;
  if (ck->crypto_length
      && add_refs (ck, "encryption header", ck->crypto_offset,
                        ck->crypto_length) == -1)
    return -1;
  if (check_bitmaps (ck) == -1)
    return -1;
  /* Last the refcount blocks, so that one sharing a cluster with
   * anything else shows up as a refcount above 1.
   */
  if (check_refblocks (ck) == -1)
    return -1;

  if (compare_refcounts (ck, &highest) == -1)
    return -1;
  if (check_copied_flags (ck) == -1)
    return -1;
  res->image_end_offset = (highest + 1) << ck->h.cluster_bits;
  return 0;
}

int
sc_qcow2_check_endpoint (struct sc_endpoint *file,
                         struct sc_check_result *result)
{
  struct checker ck = { .ep = file, .res = result };
  int ret = -1;

  memset (result, 0, sizeof *result);
  if (file == NULL) {
    sc_set_error (EINVAL, "no endpoint to read the image from");
    return -1;
  }
  /* The checker reads tables wherever the image says they are. */
  if (file->flags & SC_EP_STREAM) {
    sc_set_error (ESPIPE, "a stream (pipe or character device) cannot be "
                  "checked: the checker reads at random offsets");
    return -1;
  }
  ck.file_size = file->size;
  if (qcow2_header_read_for_check (ck.ep, ck.file_size, &ck.h) == -1)
    goto out;
  /* An unknown incompatible feature may change what anything on disk
   * means, so nothing can be counted (qemu refuses it too).
   */
  if (ck.h.incompatible_features & ~(uint64_t) QCOW2_INCOMPAT_KNOWN) {
    sc_set_error (ENOTSUP, "unknown incompatible feature bits 0x%" PRIx64
                  ": cannot check this image",
                  ck.h.incompatible_features
                  & ~(uint64_t) QCOW2_INCOMPAT_KNOWN);
    goto out_header;
  }
  if (ck.h.crypt_method > CRYPT_METHOD_MAX) {
    sc_set_error (ENOTSUP, "unknown encryption method %" PRIu32,
                  ck.h.crypt_method);
    goto out_header;
  }
  ret = run_check (&ck);

 out_header:
  qcow2_header_free (&ck.h);
 out:
  free (ck.counts);
  free (ck.rt);
  free (ck.rb);
  free (ck.l2);
  free (ck.chunk);
  free (ck.l2_uses);
  qcow2_snapshots_free (&ck.snapshots);
  sc_extent_list_free (&ck.ext);
  if (ret == -1) {
    /* Keep the message: sc_check_result_free does not touch errors. */
    int saved_errno = sc_error_errno ();
    char *msg = strdup (sc_error_message ());

    sc_check_result_free (result);
    if (msg) {
      sc_set_error (saved_errno, "%s", msg);
      free (msg);
    }
  }
  return ret;
}

int
sc_qcow2_check (const char *path, struct sc_check_result *result)
{
  struct sc_endpoint *file;
  int r;

  memset (result, 0, sizeof *result);
  file = qcow2_open_file (path);
  if (file == NULL)
    return -1;
  r = sc_qcow2_check_endpoint (file, result);
  /* A file that was only read has nothing to lose on close: its result
   * is ignored, as it always was.
   */
  sc_ep_close (file);
  return r;
}

void
sc_check_result_free (struct sc_check_result *result)
{
  for (size_t i = 0; i < result->nb_messages; i++)
    free (result->messages[i]);
  free (result->messages);
  memset (result, 0, sizeof *result);
}
