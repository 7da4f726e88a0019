/* Extent lists, and where the data of a regular file lives. */
#include <config.h>

#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#ifdef HAVE_LINUX_FS_H
#include <linux/fs.h>
#endif
#ifdef HAVE_LINUX_FIEMAP_H
#include <linux/fiemap.h>
#endif

#include "internal.h"

void
sc_extent_list_init (struct sc_extent_list *list)
{
  memset (list, 0, sizeof *list);
}

void
sc_extent_list_free (struct sc_extent_list *list)
{
  free (list->ext);
  sc_extent_list_init (list);
}

int
sc_extent_list_append (struct sc_extent_list *list, uint64_t offset,
                       uint64_t length, uint32_t flags)
{
  if (length == 0)
    return 0;
  if (list->len > 0) {
    struct sc_extent *last = &list->ext[list->len - 1];
    if (last->flags == flags && last->offset + last->length == offset) {
      last->length += length;
      return 0;
    }
  }
  if (list->len == list->cap) {
    size_t cap = list->cap ? list->cap * 2 : 64;
    struct sc_extent *e = realloc (list->ext, cap * sizeof *e);
    if (e == NULL) {
      sc_set_error (errno, "extent list: out of memory");
      return -1;
    }
    list->ext = e;
    list->cap = cap;
  }
  list->ext[list->len++] = (struct sc_extent) { offset, length, flags };
  return 0;
}

/* ---- where the data of a regular file lives ------------------------- */

/* Extents asked from FIEMAP per ioctl call: bounded, so a file with
 * millions of fragments is walked in batches without growing memory.
 */
#define FIEMAP_BATCH 256

/* The end of [offset, offset+count), clamped so it cannot wrap. */
static uint64_t
range_end (uint64_t offset, uint64_t count)
{
  uint64_t end;

  if (SC_ADD_OVERFLOW (offset, count, &end))
    end = UINT64_MAX;
  return end;
}

static int
seek_extents (int fd, uint64_t offset, uint64_t end,
              struct sc_extent_list *list)
{
  uint64_t pos = offset;

  while (pos < end) {
    off_t data, hole;

    data = lseek (fd, (off_t) pos, SEEK_DATA);
    if (data == -1) {
      /* ENXIO: no data after pos, the rest is a hole.  EINVAL or
       * ENOTSUP: the file system cannot tell, so everything is data.
       */
      if (errno == ENXIO)
        return sc_extent_list_append (list, pos, end - pos, SC_EXTENT_HOLE);
      if (errno == EINVAL || errno == ENOTSUP || errno == EOPNOTSUPP)
        return sc_extent_list_append (list, pos, end - pos, 0);
      sc_set_error (errno, "lseek SEEK_DATA at %" PRIu64 ": %s",
                    pos, strerror (errno));
      return -1;
    }
    if ((uint64_t) data > pos) {
      uint64_t h = SC_MIN ((uint64_t) data, end);
      if (sc_extent_list_append (list, pos, h - pos, SC_EXTENT_HOLE) == -1)
        return -1;
      pos = h;
    }
    if (pos >= end)
      break;

    hole = lseek (fd, (off_t) pos, SEEK_HOLE);
    if (hole == -1) {
      /* The file shrank between the two calls: the rest is a hole. */
      if (errno == ENXIO)
        return sc_extent_list_append (list, pos, end - pos, SC_EXTENT_HOLE);
      sc_set_error (errno, "lseek SEEK_HOLE at %" PRIu64 ": %s",
                    pos, strerror (errno));
      return -1;
    }
    if ((uint64_t) hole <= pos) {
      /* Cannot happen on a sane file system; refuse to loop forever. */
      sc_set_error (EIO, "lseek SEEK_HOLE at %" PRIu64
                    " went backwards to %" PRIu64, pos, (uint64_t) hole);
      return -1;
    }
    hole = (off_t) SC_MIN ((uint64_t) hole, end);
    if (sc_extent_list_append (list, pos, (uint64_t) hole - pos, 0) == -1)
      return -1;
    pos = (uint64_t) hole;
  }
  return 0;
}

#ifdef HAVE_LINUX_FIEMAP_H
/* 1 = FIEMAP is not supported on this file (caller falls back).
 * Unwritten extents are holes, or data with unwritten_is_data.
 */
static int
fiemap_extents (int fd, uint64_t offset, uint64_t end,
                struct sc_extent_list *list, bool unwritten_is_data)
{
  CLEANUP_FREE struct fiemap *fm = NULL;
  uint64_t pos = offset;
  bool first = true;

  const size_t fm_size = sizeof *fm
    + FIEMAP_BATCH * sizeof (struct fiemap_extent);

  fm = malloc (fm_size);
  if (fm == NULL) {
    sc_set_error (errno, "fiemap: out of memory");
    return -1;
  }

  while (pos < end) {
    bool last = false;
    uint64_t batch_start = pos;

    /* Clear the extents too: memory checkers cannot see the ioctl
     * fill them in.
     */
    memset (fm, 0, fm_size);
    fm->fm_start = pos;
    fm->fm_length = end - pos;
    /* Syncing once makes delayed allocations visible; later batches
     * need not sync again.
     */
    fm->fm_flags = first ? FIEMAP_FLAG_SYNC : 0;
    fm->fm_extent_count = FIEMAP_BATCH;
    if (ioctl (fd, FS_IOC_FIEMAP, fm) == -1) {
      if (first && (errno == ENOTTY || errno == EOPNOTSUPP
                    || errno == ENOTSUP || errno == EINVAL))
        return 1;
      sc_set_error (errno, "fiemap at %" PRIu64 ": %s",
                    pos, strerror (errno));
      return -1;
    }
    first = false;
    if (fm->fm_mapped_extents == 0 || fm->fm_mapped_extents > FIEMAP_BATCH)
      break;

    for (uint32_t i = 0; i < fm->fm_mapped_extents; i++) {
      const struct fiemap_extent *fe = &fm->fm_extents[i];
      uint64_t start = fe->fe_logical;
      uint64_t stop = range_end (fe->fe_logical, fe->fe_length);
      uint32_t flags;

      if (fe->fe_flags & FIEMAP_EXTENT_LAST)
        last = true;
      /* Clip to what is still wanted; skip what was already covered. */
      start = SC_MAX (start, pos);
      stop = SC_MIN (stop, end);
      if (stop <= start)
        continue;
      if (start > pos) {
        if (sc_extent_list_append (list, pos, start - pos,
                                   SC_EXTENT_HOLE) == -1)
          return -1;
      }
      /* Preallocated but never written: reads as zeros. */
      flags = (fe->fe_flags & FIEMAP_EXTENT_UNWRITTEN) && !unwritten_is_data
              ? SC_EXTENT_HOLE : 0;
      if (sc_extent_list_append (list, start, stop - start, flags) == -1)
        return -1;
      pos = stop;
    }
    if (last || fm->fm_mapped_extents < FIEMAP_BATCH)
      break;
    if (pos == batch_start) {
      /* A full batch that covers nothing new would repeat forever. */
      sc_set_error (EIO, "fiemap at %" PRIu64 " makes no progress", pos);
      return -1;
    }
  }
  if (pos < end)
    return sc_extent_list_append (list, pos, end - pos, SC_EXTENT_HOLE);
  return 0;
}
#endif

int
sc_fd_extents (int fd, enum sc_map_method method, uint64_t offset,
               uint64_t count, struct sc_extent_list *list)
{
  uint64_t end = range_end (offset, count);

  if (offset > (uint64_t) INT64_MAX || end > (uint64_t) INT64_MAX) {
    sc_set_error (EINVAL, "extent range %" PRIu64 "+%" PRIu64
                  " is beyond the largest file offset", offset, count);
    return -1;
  }
  if (count == 0)
    return 0;

  switch (method) {
  case SC_MAP_NONE:
    return sc_extent_list_append (list, offset, count, 0);
  case SC_MAP_FIEMAP:
  case SC_MAP_ALLOCATED:
#ifdef HAVE_LINUX_FIEMAP_H
    {
      /* 1 means FIEMAP failed before anything was appended. */
      int r = fiemap_extents (fd, offset, end, list,
                              method == SC_MAP_ALLOCATED);
      if (r <= 0)
        return r;
    }
#endif
    /* No FIEMAP here (tmpfs, network file systems): SEEK_DATA is the
     * next best source of truth.
     */
    return seek_extents (fd, offset, end, list);
  case SC_MAP_SEEK:
    return seek_extents (fd, offset, end, list);
  }
  sc_set_error (EINVAL, "unknown extent map method %d", (int) method);
  return -1;
}
