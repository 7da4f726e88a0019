/* qcow2 header: parse and validate the header and its extensions, and
 * write the header of a new image.
 *
 * The header is the first thing an attacker controls, so every field
 * that later becomes an offset or a size is checked here against the
 * file size, the cluster alignment and qemu's own limits before anyone
 * allocates or reads anything based on it.
 */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "qcow2.h"

/* Feature-name table entries: u8 type, u8 bit, 46 bytes of name. */
#define QCOW2_FEATURE_ENTRY_SIZE  48
/* qemu keeps the backing format in a buffer of 16 bytes. */
#define QCOW2_QEMU_BACKING_FORMAT_BUF 16

/* How strictly the header is parsed. */
enum header_mode {
  /* For reading guest data: refuse anything unsafe or unsupported. */
  HEADER_READ,
  /* For looking at an image: as HEADER_READ, but encryption, unknown
   * incompatible features and the corrupt bit are left to the caller.
   */
  HEADER_INSPECT,
  /* As HEADER_READ, but the corrupt bit is accepted: qemu opens such an
   * image read-only (it only refuses to write it), for info and map.
   */
  HEADER_READ_CORRUPT,
  /* For qemu-img check compatible checking: refuse only what qemu
   * refuses when it opens an image for checking.  Tables may then lie
   * (partly) past the end of the file, where they read as zeros.
   */
  HEADER_CHECK,
  /* As HEADER_CHECK, for qemu-img info, which opens an image without
   * doing I/O on it: the external data file is not opened, so an image
   * may need one without naming it, or have the raw data file bit
   * without needing one.
   */
  HEADER_CHECK_NO_IO,
};

static int
check_table (const char *what, uint64_t offset, uint64_t bytes,
             uint32_t cluster_size, uint64_t file_size)
{
  uint64_t end;

  if (!SC_IS_ALIGNED (offset, cluster_size)) {
    sc_set_error (EINVAL, "%s offset 0x%" PRIx64 " is not aligned to a "
                  "cluster", what, offset);
    return -1;
  }
  /* The first cluster holds the header: no table may start there. */
  if (offset == 0) {
    sc_set_error (EINVAL, "%s offset 0 overlaps the header", what);
    return -1;
  }
  if (SC_ADD_OVERFLOW (offset, bytes, &end) || end > file_size) {
    sc_set_error (EINVAL, "%s (offset 0x%" PRIx64 ", %" PRIu64
                  " bytes) lies beyond the end of the file (%" PRIu64
                  " bytes)", what, offset, bytes, file_size);
    return -1;
  }
  return 0;
}

/* The checker's view of the L1 or refcount table, which is qemu's
 * when it opens an image for checking: it must be aligned, and qemu
 * reads it at once, so the read must be one qemu's block layer can do.
 * Where it lies in the file is the checker's business (past the end it
 * reads as zeros).
 */
static int
check_table_for_check (const char *what, uint64_t offset, uint64_t bytes,
                       uint32_t cluster_size)
{
  uint64_t end;

  if (!SC_IS_ALIGNED (offset, cluster_size)) {
    sc_set_error (EINVAL, "%s offset 0x%" PRIx64 " is not aligned to a "
                  "cluster", what, offset);
    return -1;
  }
  if (SC_ADD_OVERFLOW (offset, bytes, &end) || end > INT64_MAX
      || (bytes > 0 && end > QCOW2_MAX_IO_END)) {
    sc_set_error (EINVAL, "%s (offset 0x%" PRIx64 ", %" PRIu64 " bytes) "
                  "cannot be read: it ends past the largest file offset "
                  "qemu can read", what, offset, bytes);
    return -1;
  }
  return 0;
}

int
qcow2_pread_padded (struct sc_endpoint *ep, uint64_t file_size, void *buf,
                    size_t len, uint64_t offset)
{
  size_t avail = 0;

  if (offset < file_size)
    avail = SC_MIN ((uint64_t) len, file_size - offset);
  if (avail > 0 && sc_ep_pread (ep, buf, avail, offset) == -1)
    return -1;
  memset ((char *) buf + avail, 0, len - avail);
  return 0;
}

static char *
copy_string (const unsigned char *p, size_t len)
{
  char *s = malloc (len + 1);

  if (s == NULL) {
    sc_set_error (errno, "malloc: %s", strerror (errno));
    return NULL;
  }
  memcpy (s, p, len);
  s[len] = '\0';
  return s;
}

/* Replace *s by the C string in data[0, len) (up to a NUL), or NULL
 * if that is empty.
 */
static int
replace_string (char **s, const unsigned char *data, size_t len)
{
  len = strnlen ((const char *) data, len);
  free (*s);
  *s = NULL;
  if (len > 0) {
    *s = copy_string (data, len);
    if (*s == NULL)
      return -1;
  }
  return 0;
}

/* The full-disk encryption extension: where the LUKS header lies.  A
 * later one replaces an earlier one, as in qemu; its length is judged
 * by qcow2_encryption_read, for those who look at encryption at all.
 */
static void
crypto_extension (struct qcow2_header *h, const unsigned char *data,
                  uint32_t len)
{
  h->has_crypto_ext = true;
  h->crypto_ext_len = len;
  h->crypto_offset = h->crypto_length = 0;
  if (len == QCOW2_CRYPTO_EXT_SIZE) {
    h->crypto_offset = sc_get_be64 (data);
    h->crypto_length = sc_get_be64 (data + 8);
  }
}

/* One header extension as qemu judges it when it opens an image for
 * qemu-img check: names are C strings, a later extension replaces an
 * earlier one, and only the backing format has a limit.  What the
 * checker needs from the other extensions it reads itself.
 */
static int
check_extension (void *opaque, uint32_t type, const unsigned char *data,
                 uint32_t len, uint64_t pos)
{
  struct qcow2_header *h = opaque;

  (void) pos;
  switch (type) {
  case QCOW2_EXT_BACKING_FORMAT:
    if (len >= QCOW2_QEMU_BACKING_FORMAT_BUF) {
      sc_set_error (EINVAL, "backing format header extension: length %"
                    PRIu32 " is too large (qemu accepts at most %d)", len,
                    QCOW2_QEMU_BACKING_FORMAT_BUF - 1);
      return -1;
    }
    return replace_string (&h->backing_format, data, len);
  case QCOW2_EXT_DATA_FILE:
    return replace_string (&h->data_file, data, len);
  case QCOW2_EXT_CRYPTO:
    crypto_extension (h, data, len);
    return 0;
  default:
    return 0;
  }
}

/* One header extension as the reader judges it: names must be whole
 * and unique.
 */
static int
read_extension (void *opaque, uint32_t type, const unsigned char *data,
                uint32_t len, uint64_t pos)
{
  struct qcow2_header *h = opaque;

  (void) pos;
  switch (type) {
  case QCOW2_EXT_BACKING_FORMAT:
    if (h->backing_format) {
      sc_set_error (EINVAL, "duplicate backing format header extension");
      return -1;
    }
    if (len == 0 || len > QCOW2_MAX_BACKING_NAME
        || memchr (data, '\0', len) != NULL) {
      sc_set_error (EINVAL, "backing format header extension: invalid "
                    "length %" PRIu32 " or embedded NUL", len);
      return -1;
    }
    h->backing_format = copy_string (data, len);
    return h->backing_format == NULL ? -1 : 0;

  case QCOW2_EXT_DATA_FILE:
    if (h->data_file) {
      sc_set_error (EINVAL, "duplicate data file header extension");
      return -1;
    }
    if (len == 0 || memchr (data, '\0', len) != NULL) {
      sc_set_error (EINVAL, "data file header extension: invalid "
                    "length %" PRIu32 " or embedded NUL", len);
      return -1;
    }
    h->data_file = copy_string (data, len);
    return h->data_file == NULL ? -1 : 0;

  case QCOW2_EXT_CRYPTO:
    crypto_extension (h, data, len);
    return 0;

  case QCOW2_EXT_FEATURE_TABLE:
    if (len % QCOW2_FEATURE_ENTRY_SIZE != 0) {
      sc_set_error (EINVAL, "feature name table: length %" PRIu32
                    " is not a multiple of %d", len,
                    QCOW2_FEATURE_ENTRY_SIZE);
      return -1;
    }
    return 0;

  default:
    /* Bitmaps and unknown extensions do not change what the image
     * reads as; readers may ignore them.
     */
    return 0;
  }
}

/* Walk the header extensions in buf[start, end), calling fn for each
 * one but the end marker; fn returns 0 to go on, 1 to stop, or -1.
 *
 * qemu_order: frame them exactly as qemu does when it opens an image
 * for qemu-img check: every extension header, the end marker
 * included, must fit before end together with the length it states,
 * and running into end without an end marker is fine.  Otherwise an
 * end marker is accepted whatever its length field says, and an
 * incomplete extension header at the end is ignored (what the reader
 * has always accepted).
 */
static int
walk_extensions (const unsigned char *buf, uint64_t start, uint64_t end,
                 bool qemu_order, qcow2_extension_fn fn, void *opaque)
{
  uint64_t pos = start;

  while (qemu_order ? pos < end : pos + QCOW2_EXT_HEADER_SIZE <= end) {
    uint32_t type, len;
    const unsigned char *data;
    int r;

    if (end - pos < QCOW2_EXT_HEADER_SIZE) {
      sc_set_error (EINVAL, "header extension at offset %" PRIu64 " runs "
                    "past the end of the header area (offset %" PRIu64 ")",
                    pos, end);
      return -1;
    }
    type = sc_get_be32 (buf + pos);
    len = sc_get_be32 (buf + pos + 4);
    data = buf + pos + QCOW2_EXT_HEADER_SIZE;

    if (type == QCOW2_EXT_END && !qemu_order)
      return 0;
    if (len > end - pos - QCOW2_EXT_HEADER_SIZE) {
      sc_set_error (EINVAL, "header extension 0x%08x: length %" PRIu32
                    " runs past the end of the header cluster", type, len);
      return -1;
    }
    if (type == QCOW2_EXT_END)
      return 0;
    r = fn (opaque, type, data, len, pos);
    if (r != 0)
      return r < 0 ? -1 : 0;
    pos += QCOW2_EXT_HEADER_SIZE + SC_ROUND_UP ((uint64_t) len,
                                                QCOW2_EXT_ALIGN);
  }
  /* Running into the end of the cluster without an end marker is what
   * old qemu versions wrote when there were no extensions at all.
   */
  return 0;
}

/* The first cluster as the header reader sees it, in a malloc'd
 * *buf of *buf_len bytes: what the file has of it or, for the checker
 * (qemu's view), all of it with zeros past the end of the file.
 */
static int
read_first_cluster (struct sc_endpoint *ep, uint64_t file_size,
                    uint32_t cluster_size, bool for_check, unsigned char **buf,
                    uint64_t *buf_len)
{
  uint64_t have = SC_MIN (file_size, (uint64_t) cluster_size);

  *buf_len = for_check ? cluster_size : have;
  *buf = calloc (1, *buf_len);
  if (*buf == NULL) {
    sc_set_error (errno, "malloc: %s", strerror (errno));
    return -1;
  }
  return sc_ep_pread (ep, *buf, have, 0);
}

/* Header extensions run from the end of the header to the backing file
 * name, or to the end of the first cluster (as far as it is read).
 */
static uint64_t
extensions_end (const struct qcow2_header *h, uint64_t buf_len)
{
  return h->backing_file_offset ? h->backing_file_offset : buf_len;
}

int
qcow2_header_extensions (struct sc_endpoint *ep, uint64_t file_size,
                         const struct qcow2_header *h, bool for_check,
                         qcow2_extension_fn fn, void *opaque)
{
  CLEANUP_FREE unsigned char *buf = NULL;
  uint64_t buf_len;

  if (read_first_cluster (ep, file_size, h->cluster_size, for_check,
                          &buf, &buf_len) == -1)
    return -1;
  return walk_extensions (buf, h->header_length,
                          extensions_end (h, buf_len), for_check, fn,
                          opaque);
}

/* allow_encrypted: with HEADER_READ or HEADER_READ_CORRUPT, an
 * encrypted image is not refused (its data is not read).
 */
static int
header_read (struct sc_endpoint *ep, uint64_t file_size, enum header_mode mode,
             bool allow_encrypted, struct qcow2_header *h)
{
  const bool for_reading = mode == HEADER_READ || mode == HEADER_READ_CORRUPT;
  const bool for_check = mode == HEADER_CHECK || mode == HEADER_CHECK_NO_IO;
  unsigned char fixed[QCOW2_V2_HEADER_SIZE];
  CLEANUP_FREE unsigned char *buf = NULL;
  uint64_t buf_len, l1_needed, cluster_entries;

  memset (h, 0, sizeof *h);

  if (file_size < QCOW2_V2_HEADER_SIZE) {
    sc_set_error (EINVAL, "file too small to be a qcow2 image "
                  "(%" PRIu64 " bytes)", file_size);
    return -1;
  }
  if (sc_ep_pread (ep, fixed, sizeof fixed, 0) == -1)
    return -1;
  if (sc_get_be32 (fixed + QCOW2_HDR_MAGIC) != QCOW2_MAGIC) {
    sc_set_error (EINVAL, "not a qcow2 image (bad magic)");
    return -1;
  }
  h->version = sc_get_be32 (fixed + QCOW2_HDR_VERSION);
  if (h->version != 2 && h->version != 3) {
    sc_set_error (ENOTSUP, "unsupported qcow2 version %" PRIu32,
                  h->version);
    return -1;
  }
  h->cluster_bits = sc_get_be32 (fixed + QCOW2_HDR_CLUSTER_BITS);
  if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS
      || h->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
    sc_set_error (EINVAL, "invalid cluster_bits %" PRIu32
                  " (must be %d to %d)", h->cluster_bits,
                  QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
    return -1;
  }
  h->cluster_size = UINT32_C (1) << h->cluster_bits;

  /* Everything else lives in the first cluster (or what exists of it).
   * The checker reads as qemu does: a first cluster cut short by the
   * end of the file continues with zeros.
   */
  if (read_first_cluster (ep, file_size, h->cluster_size, for_check, &buf,
                          &buf_len) == -1)
    return -1;

  h->backing_file_offset = sc_get_be64 (buf + QCOW2_HDR_BACKING_OFFSET);
  h->backing_file_size = sc_get_be32 (buf + QCOW2_HDR_BACKING_SIZE);
  h->size = sc_get_be64 (buf + QCOW2_HDR_SIZE);
  h->crypt_method = sc_get_be32 (buf + QCOW2_HDR_CRYPT_METHOD);
  h->l1_size = sc_get_be32 (buf + QCOW2_HDR_L1_SIZE);
  h->l1_table_offset = sc_get_be64 (buf + QCOW2_HDR_L1_OFFSET);
  h->refcount_table_offset = sc_get_be64 (buf + QCOW2_HDR_RT_OFFSET);
  h->refcount_table_clusters = sc_get_be32 (buf + QCOW2_HDR_RT_CLUSTERS);
  h->nb_snapshots = sc_get_be32 (buf + QCOW2_HDR_NB_SNAPSHOTS);
  h->snapshots_offset = sc_get_be64 (buf + QCOW2_HDR_SNAPSHOTS_OFFSET);

  if (h->version == 2) {
    h->refcount_order = QCOW2_V2_REFCOUNT_ORDER;
    h->header_length = QCOW2_V2_HEADER_SIZE;
  }
  else {
    if (buf_len < QCOW2_V3_MIN_HEADER_SIZE) {
      sc_set_error (EINVAL, "file too small for a version 3 header");
      return -1;
    }
    h->incompatible_features = sc_get_be64 (buf + QCOW2_HDR_INCOMPAT);
    h->compatible_features = sc_get_be64 (buf + QCOW2_HDR_COMPAT);
    h->autoclear_features = sc_get_be64 (buf + QCOW2_HDR_AUTOCLEAR);
    h->refcount_order = sc_get_be32 (buf + QCOW2_HDR_REFCOUNT_ORDER);
    h->header_length = sc_get_be32 (buf + QCOW2_HDR_HEADER_LENGTH);
    /* The specification asks for a multiple of 8, but qemu accepts
     * any length (extensions then start unaligned), and so must the
     * checker.
     */
    if (h->header_length < QCOW2_V3_MIN_HEADER_SIZE
        || (!for_check && h->header_length % QCOW2_EXT_ALIGN != 0)) {
      sc_set_error (EINVAL, "invalid header_length %" PRIu32
                    " (must be at least %d and a multiple of %d)",
                    h->header_length, QCOW2_V3_MIN_HEADER_SIZE,
                    QCOW2_EXT_ALIGN);
      return -1;
    }
    if (h->header_length > buf_len) {
      sc_set_error (EINVAL, "header_length %" PRIu32 " is larger than the "
                    "first cluster or the file", h->header_length);
      return -1;
    }
    if (h->header_length > QCOW2_HDR_COMPRESSION)
      h->compression_type = buf[QCOW2_HDR_COMPRESSION];
  }

  /* Refusals that only matter when we are about to read guest data. */
  if (for_reading) {
    if (h->crypt_method != 0 && !allow_encrypted) {
      sc_set_error (ENOTSUP, "the image is encrypted (%s): encrypted images "
                    "are not supported",
                    h->crypt_method == 1 ? "AES"
                    : h->crypt_method == 2 ? "LUKS" : "unknown method");
      return -1;
    }
    if (h->incompatible_features & ~QCOW2_INCOMPAT_KNOWN) {
      sc_set_error (ENOTSUP, "unknown incompatible feature bits 0x%" PRIx64,
                    h->incompatible_features
                    & ~(uint64_t) QCOW2_INCOMPAT_KNOWN);
      return -1;
    }
    if ((h->incompatible_features & QCOW2_INCOMPAT_CORRUPT)
        && mode != HEADER_READ_CORRUPT) {
      sc_set_error (EINVAL, "image is marked corrupt");
      return -1;
    }
  }

  if (h->refcount_order > QCOW2_MAX_REFCOUNT_ORDER) {
    sc_set_error (EINVAL, "invalid refcount_order %" PRIu32 " (must be "
                  "0 to %d)", h->refcount_order, QCOW2_MAX_REFCOUNT_ORDER);
    return -1;
  }
  h->refcount_bits = UINT32_C (1) << h->refcount_order;
  h->refcount_max = h->refcount_bits == 64
    ? UINT64_MAX : (UINT64_C (1) << h->refcount_bits) - 1;

  /* Compression type and incompatible bit 3 must agree. */
  if (h->compression_type != QCOW2_COMPRESSION_DEFLATE
      && h->compression_type != QCOW2_COMPRESSION_ZSTD) {
    sc_set_error (ENOTSUP, "unknown compression type %u",
                  h->compression_type);
    return -1;
  }
  if ((h->compression_type != QCOW2_COMPRESSION_DEFLATE)
      != ((h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) != 0)) {
    sc_set_error (EINVAL, "compression type %u does not match the "
                  "compression type feature bit", h->compression_type);
    return -1;
  }

  /* Extended L2 entries. */
  if (h->incompatible_features & QCOW2_INCOMPAT_EXTL2) {
    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS_EXTL2) {
      sc_set_error (EINVAL, "extended L2 entries need clusters of at least "
                    "%u bytes, not %" PRIu32,
                    1U << QCOW2_MIN_CLUSTER_BITS_EXTL2, h->cluster_size);
      return -1;
    }
    h->l2_entry_size = QCOW2_L2E_EXTENDED_SIZE;
  }
  else
    h->l2_entry_size = QCOW2_L2E_SIZE;
  h->l2_entries = h->cluster_size / h->l2_entry_size;

  /* Backing file name.  qemu only wants it inside the first cluster
   * (zeros past the end of the file) and reads it as a C string, so
   * that an empty one means no backing file; the checker follows.
   */
  if (for_check && h->backing_file_offset != 0) {
    size_t len;

    if (h->backing_file_offset > h->cluster_size) {
      sc_set_error (EINVAL, "backing file name offset %" PRIu64 " is not "
                    "inside the first cluster", h->backing_file_offset);
      return -1;
    }
    if (h->backing_file_size > QCOW2_MAX_BACKING_NAME
        || h->backing_file_size
           > h->cluster_size - h->backing_file_offset) {
      sc_set_error (EINVAL, "backing file name (offset %" PRIu64 ", %"
                    PRIu32 " bytes) is too long or not inside the first "
                    "cluster", h->backing_file_offset,
                    h->backing_file_size);
      return -1;
    }
    len = strnlen ((const char *) buf + h->backing_file_offset,
                   h->backing_file_size);
    if (len > 0) {
      h->backing_file = copy_string (buf + h->backing_file_offset, len);
      if (h->backing_file == NULL)
        goto err;
    }
  }
  /* Backing file name: inside the first cluster, after the header. */
  else if (h->backing_file_offset != 0) {
    uint64_t end;

    if (h->backing_file_size == 0
        || h->backing_file_size > QCOW2_MAX_BACKING_NAME) {
      sc_set_error (EINVAL, "invalid backing file name length %" PRIu32
                    " (must be 1 to %d)", h->backing_file_size,
                    QCOW2_MAX_BACKING_NAME);
      return -1;
    }
    if (h->backing_file_offset < h->header_length
        || SC_ADD_OVERFLOW (h->backing_file_offset,
                            (uint64_t) h->backing_file_size, &end)
        || end > h->cluster_size || end > buf_len) {
      sc_set_error (EINVAL, "backing file name (offset %" PRIu64
                    ", %" PRIu32 " bytes) is not inside the first cluster "
                    "of the file", h->backing_file_offset,
                    h->backing_file_size);
      return -1;
    }
    if (memchr (buf + h->backing_file_offset, '\0',
                h->backing_file_size) != NULL) {
      sc_set_error (EINVAL, "backing file name contains a NUL byte");
      return -1;
    }
    h->backing_file = copy_string (buf + h->backing_file_offset,
                                   h->backing_file_size);
    if (h->backing_file == NULL)
      goto err;
  }

  if (walk_extensions (buf, h->header_length, extensions_end (h, buf_len),
                       for_check, for_check ? check_extension
                       : read_extension, h) == -1)
    goto err;
  /* qemu opens the external data file before it checks an image, so
   * an image that needs one must name one; the checker itself does not
   * need it.
   */
  if (mode == HEADER_CHECK) {
    bool data_file_bit = h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE;

    if (data_file_bit && h->data_file == NULL) {
      sc_set_error (EINVAL, "the image needs an external data file but "
                    "does not name one");
      goto err;
    }
    if (!data_file_bit
        && (h->autoclear_features & QCOW2_AUTOCLEAR_DATA_RAW)) {
      sc_set_error (EINVAL, "the raw external data file bit is set, but "
                    "the image has no external data file");
      goto err;
    }
  }
  if (for_reading && h->has_crypto_ext && !allow_encrypted) {
    sc_set_error (ENOTSUP, "the image has a LUKS encryption header: "
                  "encrypted images are not supported");
    goto err;
  }

  /* The L1 table must cover the virtual size, and is capped. */
  cluster_entries = (uint64_t) h->cluster_size * h->l2_entries;
  l1_needed = h->size / cluster_entries
    + (h->size % cluster_entries != 0);
  if (h->l1_size > QCOW2_MAX_L1_BYTES / sizeof (uint64_t)) {
    sc_set_error (EFBIG, "L1 table too large (%" PRIu32 " entries, at most "
                  "%zu)", h->l1_size, QCOW2_MAX_L1_BYTES / sizeof (uint64_t));
    goto err;
  }
  if (l1_needed > h->l1_size) {
    sc_set_error (EINVAL, "L1 table (%" PRIu32 " entries) too small for the "
                  "virtual size %" PRIu64, h->l1_size, h->size);
    goto err;
  }
  if (for_check) {
    if (check_table_for_check ("L1 table", h->l1_table_offset,
                               (uint64_t) h->l1_size * sizeof (uint64_t),
                               h->cluster_size) == -1)
      goto err;
  }
  else if (h->l1_size > 0
           && check_table ("L1 table", h->l1_table_offset,
                           (uint64_t) h->l1_size * sizeof (uint64_t),
                           h->cluster_size, file_size) == -1)
    goto err;

  /* Refcount table. */
  if ((uint64_t) h->refcount_table_clusters * h->cluster_size
      > QCOW2_MAX_RT_BYTES) {
    sc_set_error (EFBIG, "refcount table too large (%" PRIu32 " clusters)",
                  h->refcount_table_clusters);
    goto err;
  }
  if (for_check) {
    /* qemu checks an image without a refcount table: every cluster in
     * use is then a corruption.
     */
    if (check_table_for_check ("refcount table", h->refcount_table_offset,
                               (uint64_t) h->refcount_table_clusters
                               * h->cluster_size, h->cluster_size) == -1)
      goto err;
    /* The snapshot table is the checker's to validate: qemu reports
     * most damage there as corruptions.
     */
    return 0;
  }
  if (h->refcount_table_clusters == 0) {
    sc_set_error (EINVAL, "image has no refcount table");
    goto err;
  }
  if (check_table ("refcount table", h->refcount_table_offset,
                   (uint64_t) h->refcount_table_clusters * h->cluster_size,
                   h->cluster_size, file_size) == -1)
    goto err;

  /* Snapshot table: entries are checked by the reader; here only
   * where the table starts.
   */
  if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
    sc_set_error (EINVAL, "too many snapshots (%" PRIu32 ", at most %d)",
                  h->nb_snapshots, QCOW2_MAX_SNAPSHOTS);
    goto err;
  }
  if (h->nb_snapshots > 0
      && check_table ("snapshot table", h->snapshots_offset, 0,
                      h->cluster_size, UINT64_MAX) == -1)
    goto err;
  /* Its size is only known once its entries are read: say how many
   * there should be rather than a size.
   */
  if (h->nb_snapshots > 0 && h->snapshots_offset > file_size) {
    sc_set_error (EINVAL, "snapshot table (offset 0x%" PRIx64 ", %" PRIu32
                  " %s) starts beyond the end of the file (%" PRIu64
                  " bytes)", h->snapshots_offset, h->nb_snapshots,
                  h->nb_snapshots == 1 ? "entry" : "entries", file_size);
    goto err;
  }

  return 0;

 err:
  qcow2_header_free (h);
  return -1;
}

int
qcow2_header_read (struct sc_endpoint *ep, uint64_t file_size,
                   bool for_reading, struct qcow2_header *h)
{
  return header_read (ep, file_size,
                      for_reading ? HEADER_READ : HEADER_INSPECT, false, h);
}

int
qcow2_header_read_even_corrupt (struct sc_endpoint *ep, uint64_t file_size,
                                struct qcow2_header *h)
{
  return header_read (ep, file_size, HEADER_READ_CORRUPT, false, h);
}

int
qcow2_header_read_to_show (struct sc_endpoint *ep, uint64_t file_size,
                           bool allow_corrupt, bool allow_encrypted,
                           struct qcow2_header *h)
{
  return header_read (ep, file_size,
                      allow_corrupt ? HEADER_READ_CORRUPT : HEADER_READ,
                      allow_encrypted, h);
}

int
qcow2_header_read_for_check (struct sc_endpoint *ep, uint64_t file_size,
                             struct qcow2_header *h)
{
  return header_read (ep, file_size, HEADER_CHECK, false, h);
}

int
qcow2_header_read_for_info (struct sc_endpoint *ep, uint64_t file_size,
                            struct qcow2_header *h)
{
  return header_read (ep, file_size, HEADER_CHECK_NO_IO, false, h);
}

void
qcow2_header_free (struct qcow2_header *h)
{
  free (h->backing_file);
  free (h->backing_format);
  free (h->data_file);
  h->backing_file = h->backing_format = h->data_file = NULL;
}

void
qcow2_header_write (const struct qcow2_header *h, unsigned char *buf)
{
  memset (buf, 0, h->cluster_size);
  sc_put_be32 (buf + QCOW2_HDR_MAGIC, QCOW2_MAGIC);
  sc_put_be32 (buf + QCOW2_HDR_VERSION, h->version);
  sc_put_be32 (buf + QCOW2_HDR_CLUSTER_BITS, h->cluster_bits);
  sc_put_be64 (buf + QCOW2_HDR_SIZE, h->size);
  sc_put_be32 (buf + QCOW2_HDR_L1_SIZE, h->l1_size);
  sc_put_be64 (buf + QCOW2_HDR_L1_OFFSET, h->l1_table_offset);
  sc_put_be64 (buf + QCOW2_HDR_RT_OFFSET, h->refcount_table_offset);
  sc_put_be32 (buf + QCOW2_HDR_RT_CLUSTERS, h->refcount_table_clusters);
  if (h->version >= 3) {
    sc_put_be64 (buf + QCOW2_HDR_INCOMPAT, h->incompatible_features);
    sc_put_be64 (buf + QCOW2_HDR_COMPAT, h->compatible_features);
    sc_put_be64 (buf + QCOW2_HDR_AUTOCLEAR, h->autoclear_features);
    sc_put_be32 (buf + QCOW2_HDR_REFCOUNT_ORDER, h->refcount_order);
    sc_put_be32 (buf + QCOW2_HDR_HEADER_LENGTH, h->header_length);
    buf[QCOW2_HDR_COMPRESSION] = h->compression_type;
  }
  /* The zero bytes after the header read as the end-of-extensions
   * marker.
   */
}

int
qcow2_sc_digest_decode (const unsigned char *data, uint32_t len,
                        struct qcow2_sc_digest *d)
{
  if (len != QCOW2_SC_DIGEST_LEN && len != QCOW2_SC_DIGEST_MAP_LEN) {
    sc_set_error (EINVAL, "digest header extension: length %" PRIu32
                  ", not %d or %d", len, QCOW2_SC_DIGEST_LEN,
                  QCOW2_SC_DIGEST_MAP_LEN);
    return -1;
  }
  d->kind = sc_get_be32 (data);
  d->block_size = sc_get_be32 (data + 4);
  d->size = sc_get_be64 (data + 8);
  memcpy (d->sha256, data + 16, sizeof d->sha256);
  d->has_map = len == QCOW2_SC_DIGEST_MAP_LEN;
  if (d->has_map)
    memcpy (d->map, data + 48, sizeof d->map);
  else
    memset (d->map, 0, sizeof d->map);
  if (d->kind != QCOW2_SC_DIGEST_SHA256) {
    sc_set_error (EINVAL, "digest header extension: unknown kind %" PRIu32,
                  d->kind);
    return -1;
  }
  if (d->block_size < (1U << QCOW2_MIN_CLUSTER_BITS)
      || d->block_size > (1U << QCOW2_MAX_CLUSTER_BITS)
      || (d->block_size & (d->block_size - 1)) != 0) {
    sc_set_error (EINVAL, "digest header extension: invalid block size %"
                  PRIu32, d->block_size);
    return -1;
  }
  return 0;
}

/* No padding after the extension, and room for it after the longest
 * header this writer makes in the smallest cluster.
 */
_Static_assert (QCOW2_SC_DIGEST_MAP_LEN % QCOW2_EXT_ALIGN == 0,
                "the digest extension needs no padding");
_Static_assert (QCOW2_V3_HEADER_SIZE + 2 * QCOW2_EXT_HEADER_SIZE
                + QCOW2_SC_DIGEST_MAP_LEN <= (1 << QCOW2_MIN_CLUSTER_BITS),
                "the digest extension fits the smallest header cluster");

int
qcow2_header_write_sc_digest (const struct qcow2_header *h,
                              const struct qcow2_sc_digest *d,
                              unsigned char *buf)
{
  uint64_t pos = h->header_length;
  uint32_t len = d->has_map ? QCOW2_SC_DIGEST_MAP_LEN : QCOW2_SC_DIGEST_LEN;

  /* The extension, then the end marker (8 zero bytes, already there). */
  if (pos + QCOW2_EXT_HEADER_SIZE + len + QCOW2_EXT_HEADER_SIZE
      > h->cluster_size) {
    sc_set_error (EINVAL, "the digest does not fit the header cluster");
    return -1;
  }
  sc_put_be32 (buf + pos, QCOW2_EXT_SC_DIGEST);
  sc_put_be32 (buf + pos + 4, len);
  pos += QCOW2_EXT_HEADER_SIZE;
  sc_put_be32 (buf + pos, d->kind);
  sc_put_be32 (buf + pos + 4, d->block_size);
  sc_put_be64 (buf + pos + 8, d->size);
  memcpy (buf + pos + 16, d->sha256, sizeof d->sha256);
  if (d->has_map)
    memcpy (buf + pos + 48, d->map, sizeof d->map);
  return 0;
}

int
qcow2_map_fingerprint (const struct qcow2_header *h, uint64_t file_size,
                       qcow2_read_fn read, void *opaque,
                       unsigned char out[32])
{
  uint64_t cs = h->cluster_size;
  size_t l1_bytes = (size_t) h->l1_size * sizeof (uint64_t);
  CLEANUP_FREE unsigned char *l1 = NULL;
  CLEANUP_FREE unsigned char *l2 = NULL;
  struct sc_sha256 sha;

  /* The header reader has bounded the L1 table and found it inside the
   * file; the plan makes it so.
   */
  if (h->l1_size > QCOW2_MAX_L1_BYTES / sizeof (uint64_t)) {
    sc_set_error (EINVAL, "L1 table of %" PRIu32 " entries", h->l1_size);
    return -1;
  }
  l1 = malloc (l1_bytes ? l1_bytes : 1);
  l2 = malloc (cs);
  if (l1 == NULL || l2 == NULL) {
    sc_set_error (ENOMEM, "out of memory");
    return -1;
  }
  if (l1_bytes > 0 && read (opaque, h->l1_table_offset, l1_bytes, l1) == -1)
    return -1;
  if (sc_sha256_init (&sha) == -1)
    return -1;
  if (sc_sha256_update (&sha, l1, l1_bytes) == -1)
    goto fail;
  for (uint32_t i = 0; i < h->l1_size; i++) {
    uint64_t off = sc_get_be64 (l1 + (size_t) i * 8) & QCOW2_L1E_OFFSET_MASK;

    if (off == 0)
      continue;
    if (!SC_IS_ALIGNED (off, cs) || off > file_size || file_size - off < cs) {
      sc_set_error (EINVAL, "L1 entry %" PRIu32 " points to %#" PRIx64
                    ", no whole cluster inside the file", i, off);
      goto fail;
    }
    if (read (opaque, off, (size_t) cs, l2) == -1
        || sc_sha256_update (&sha, l2, (size_t) cs) == -1)
      goto fail;
  }
  return sc_sha256_final (&sha, out);

 fail:
  sc_sha256_free (&sha);
  return -1;
}
