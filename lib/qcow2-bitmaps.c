/* The names, granularities and flags of an image's persistent dirty
 * bitmaps, for info: what "qemu-img info" lists under "bitmaps".
 *
 * Only the bitmap directory is read (qcow2.rst, "Bitmaps"), never the
 * bitmap tables.  The checker validates the same structures for its own
 * ends and counts their clusters; this is the small view info needs.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "qcow2.h"

/* The bitmaps header extension. */
#define BITMAPS_EXT_SIZE        24
#define BITMAPS_EXT_NB          0
#define BITMAPS_EXT_RESERVED    4
#define BITMAPS_EXT_DIR_SIZE    8
#define BITMAPS_EXT_DIR_OFFSET  16
/* qemu's limits on the directory. */
#define BITMAPS_MAX_NB          65535
#define BITMAPS_MAX_DIR_BYTES   (UINT64_C (64) * 1024 * 1024)
/* A directory entry: fixed part, extra data, name, padding to 8. */
#define BME_HEADER_SIZE         24
#define BME_FLAGS               12
#define BME_GRANULARITY_BITS    17
#define BME_NAME_SIZE           18
#define BME_EXTRA_SIZE          20
#define BME_ALIGN               8
#define BME_MAX_NAME            1023
#define BME_MIN_GRANULARITY     9
#define BME_MAX_GRANULARITY     31
#define BME_FLAG_IN_USE         (1U << 0)
#define BME_FLAG_AUTO           (1U << 1)

struct dir_place {
  bool found;
  uint32_t nb;
  uint64_t size, offset;
};

static int
find_directory (void *opaque, uint32_t type, const unsigned char *data,
                uint32_t len, uint64_t pos)
{
  struct dir_place *d = opaque;

  (void) pos;
  if (type != QCOW2_EXT_BITMAPS)
    return 0;
  if (len != BITMAPS_EXT_SIZE || sc_get_be32 (data + BITMAPS_EXT_RESERVED)) {
    sc_set_error (EINVAL, "bitmaps header extension: invalid length or "
                  "reserved field");
    return -1;
  }
  d->found = true;
  d->nb = sc_get_be32 (data + BITMAPS_EXT_NB);
  d->size = sc_get_be64 (data + BITMAPS_EXT_DIR_SIZE);
  d->offset = sc_get_be64 (data + BITMAPS_EXT_DIR_OFFSET);
  return 1;
}

void
qcow2_bitmaps_free (struct sc_bitmap_info *b, size_t n)
{
  for (size_t i = 0; i < n; i++)
    free (b[i].name);
  free (b);
}

int
qcow2_bitmaps_list (struct sc_endpoint *ep, uint64_t file_size,
                    const struct qcow2_header *h,
                    struct sc_bitmap_info **out, size_t *nout)
{
  struct dir_place d = { .found = false };
  CLEANUP_FREE unsigned char *dir = NULL;
  struct sc_bitmap_info *b = NULL;
  uint64_t pos = 0;
  size_t n = 0;

  *out = NULL;
  *nout = 0;
  /* Without the autoclear bit the bitmaps are stale: a program that did
   * not know them wrote the image, and qemu ignores them.
   */
  if (h->version < 3
      || !(h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS))
    return 0;
  if (qcow2_header_extensions (ep, file_size, h, false, find_directory,
                               &d) == -1)
    return -1;
  if (!d.found || d.nb == 0)
    return 0;
  if (d.nb > BITMAPS_MAX_NB || d.size > BITMAPS_MAX_DIR_BYTES
      || d.size < (uint64_t) d.nb * BME_HEADER_SIZE
      || !SC_IS_ALIGNED (d.offset, h->cluster_size)
      || d.offset > file_size || d.size > file_size - d.offset) {
    sc_set_error (EINVAL, "bitmaps header extension: invalid number of "
                  "bitmaps (%" PRIu32 "), directory size or offset", d.nb);
    return -1;
  }
  dir = malloc (d.size);
  b = calloc (d.nb, sizeof *b);
  if (dir == NULL || b == NULL) {
    sc_set_error (ENOMEM, "out of memory for the bitmap directory");
    free (b);
    return -1;
  }
  if (sc_ep_pread (ep, dir, d.size, d.offset) == -1)
    goto err;

  for (n = 0; n < d.nb; ) {
    const unsigned char *e = dir + pos;
    uint32_t extra, name_len, flags, gbits;
    uint64_t entry;

    if (d.size - pos < BME_HEADER_SIZE)
      goto bad;
    flags = sc_get_be32 (e + BME_FLAGS);
    gbits = e[BME_GRANULARITY_BITS];
    name_len = sc_get_be16 (e + BME_NAME_SIZE);
    extra = sc_get_be32 (e + BME_EXTRA_SIZE);
    entry = SC_ROUND_UP ((uint64_t) BME_HEADER_SIZE + extra + name_len,
                         (uint64_t) BME_ALIGN);
    if (name_len == 0 || name_len > BME_MAX_NAME
        || gbits < BME_MIN_GRANULARITY || gbits > BME_MAX_GRANULARITY
        || BME_HEADER_SIZE + (uint64_t) extra + name_len > d.size - pos
        || memchr (e + BME_HEADER_SIZE + extra, '\0', name_len))
      goto bad;
    b[n].name = strndup ((const char *) e + BME_HEADER_SIZE + extra,
                         name_len);
    if (b[n].name == NULL) {
      sc_set_error (ENOMEM, "out of memory for a bitmap name");
      goto err;
    }
    b[n].granularity = UINT32_C (1) << gbits;
    b[n].in_use = (flags & BME_FLAG_IN_USE) != 0;
    b[n].auto_enabled = (flags & BME_FLAG_AUTO) != 0;
    n++;
    pos = entry > d.size - pos ? d.size : pos + entry;
  }
  *out = b;
  *nout = n;
  return 0;

 bad:
  sc_set_error (EINVAL, "bitmap directory: entry %zu is invalid", n);
 err:
  qcow2_bitmaps_free (b, n);
  return -1;
}
