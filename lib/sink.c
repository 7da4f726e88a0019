/* The target-write rules, one set for every path that writes guest
 * data: the copy engine and the stream decoder.
 *
 * - A target that already reads as zero (SC_EP_FRESH_ZEROS: a new file,
 *   a file behind stdout) gets nothing for a hole, and inside data only
 *   the 4 KiB blocks that are not all zero, so it stays as sparse as
 *   the guest content allows.  With the target's min_sparse (-S N),
 *   qemu-img convert's rule instead (sc_sparse_run), in qemu-img's
 *   buffers where the caller decided it so beforehand
 *   (sc_sparse_decide); with allocate (-S 0), zeros are written
 *   everywhere.
 * - Any other target gets holes and zero ranges zeroed as its zero
 *   mode says: by default (auto) with the permission to unmap them
 *   (without it for allocate); unmap demands it; write zeroes them
 *   without unmapping; skip leaves them as they are (only the image's
 *   data is written, as bmaptool does).  With auto and unmap, the
 *   all-zero 4 KiB blocks inside data are zero ranges too, so a thin
 *   device or a file written in place stays as thin as on a new file
 *   (qemu-img convert -n does the same); with write they are written
 *   with the data around them, which is what write would make of them
 *   anyway.
 * - A server's export that says it reads as zero throughout (NBD block
 *   status) is a target that reads as zero; one that holds data is
 *   written over in place, its holes zeroed one by one (sc_sink_prepare).
 * - Each range these rules write is shared with the source instead
 *   (a reflink) when the caller says where the bytes come from and the
 *   file system can: the same ranges, the same holes, no bytes
 *   written.  Only ranges without an all-zero 4 KiB block are: the
 *   source may have a hole there, which sharing would carry over where
 *   the rules say zeros are written (-S N, -S 0, data around a zero
 *   range that cannot be unmapped).  Where the file system cannot
 *   share, the bytes in hand are written.
 */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* qemu-img convert -S works in sectors. */
#define SPARSE_UNIT 512

static bool
unit_is_zero (const unsigned char *buf, uint64_t length, uint64_t u)
{
  uint64_t start = u * SPARSE_UNIT;

  return sc_is_zero (buf + start, SC_MIN (length - start,
                                          (uint64_t) SPARSE_UNIT));
}

/* The run of units from the start of buf that are all zero or all
 * not: *pnum units, their first being unit first of the target.  The
 * end of data is rounded up to the alignment a (units, a power of
 * two), the end of zeros down, and zeros shorter than what is left of
 * their aligned block count as data: writes stay whole blocks.  A run
 * that fills the buffer is taken as it is, as qemu-img convert does:
 * zeros at the end of a buffer stay zeros however short.
 */
static bool
sparse_same_run (const unsigned char *buf, uint64_t length, uint64_t n,
                 uint64_t first, uint64_t a, uint64_t *pnum)
{
  bool zero = unit_is_zero (buf, length, 0);
  uint64_t i = 1, tail;

  while (i < n && unit_is_zero (buf, length, i) == zero)
    i++;
  if (i == n) {
    *pnum = n;
    return !zero;
  }
  tail = (first + i) & (a - 1);
  if (tail) {
    if (zero && i <= tail)
      zero = false;
    if (!zero)
      i = SC_MIN (i + a - tail, n);
    else
      i -= tail;
  }
  *pnum = i;
  return !zero;
}

bool
sc_sparse_run (const void *buf, uint64_t length, uint64_t offset,
               uint64_t min_sparse, uint64_t *len)
{
  const unsigned char *p = buf;
  uint64_t n = SC_DIV_ROUND_UP (length, SPARSE_UNIT);
  uint64_t first = offset / SPARSE_UNIT;
  uint64_t min = SC_MAX (min_sparse / SPARSE_UNIT, (uint64_t) 1);
  uint64_t a = 1, used, pos, k;

  /* The alignment is the largest power of two in min, as qemu-img
   * convert aligns its writes.
   */
  while (a * 2 <= min)
    a *= 2;
  if (n < min)
    min = n;
  if (!sparse_same_run (p, length, n, first, a, &k)) {
    *len = SC_MIN (k * SPARSE_UNIT, length);
    return false;
  }
  /* Data: zeros after it that are fewer than min units go with it. */
  used = pos = k;
  while (pos < n) {
    bool data = sparse_same_run (p + pos * SPARSE_UNIT,
                                 length - pos * SPARSE_UNIT, n - pos,
                                 first + pos, a, &k);
    pos += k;
    if (data)
      used = pos;
    else if (k >= min)
      break;
  }
  *len = SC_MIN (used * SPARSE_UNIT, length);
  return true;
}

/* qemu-img convert -S looks at the source's data in buffers of 2 MiB
 * (IO_BUF_SIZE; a qcow2 target's cluster size, at most 2 MiB, never
 * raises it), each within one block-status answer, and asks for at
 * most this many 512-byte sectors of status at once
 * (BDRV_REQUEST_MAX_SECTORS).
 */
#define CONVERT_BUF_SIZE (2 * 1024 * 1024)
#define CONVERT_STATUS_MAX_SECTORS ((uint64_t) INT32_MAX >> 9)

int
sc_sparse_decide (struct sc_endpoint *src, uint64_t min_sparse,
                  uint32_t align, sc_status_fn status, sc_range_fn write,
                  void *opaque)
{
  uint64_t size = src->size;
  uint64_t total = SC_DIV_ROUND_UP (size, SPARSE_UNIT);
  uint64_t align_units = SC_MAX ((uint64_t) align / SPARSE_UNIT,
                                 (uint64_t) 1);
  uint64_t pos = 0;
  unsigned char *buf;
  int ret = -1;

  buf = malloc (CONVERT_BUF_SIZE);
  if (buf == NULL) {
    sc_set_error (errno, "out of memory");
    return -1;
  }
  while (pos < total) {
    uint64_t max = SC_MIN (total - pos, CONVERT_STATUS_MAX_SECTORS)
                   * SPARSE_UNIT;
    uint64_t len, n, tail;
    bool data;

    if (status (opaque, pos * SPARSE_UNIT, max, &len, &data) == -1)
      goto out;
    if (len == 0 || len > max) {
      sc_set_error (EIO, "%s: the status at offset %" PRIu64 " covers %"
                    PRIu64 " bytes of %" PRIu64 " asked", src->name,
                    pos * SPARSE_UNIT, len, max);
      goto out;
    }
    /* The run ends on the source's alignment unless it is shorter. */
    n = SC_DIV_ROUND_UP (len, SPARSE_UNIT);
    tail = (pos + n) % align_units;
    if (n > tail)
      n -= tail;
    for (uint64_t b = pos; data && b < pos + n;
         b += CONVERT_BUF_SIZE / SPARSE_UNIT) {
      uint64_t first = b * SPARSE_UNIT;
      uint64_t last = SC_MIN (b + CONVERT_BUF_SIZE / SPARSE_UNIT, pos + n)
                      * SPARSE_UNIT;
      uint64_t blen = last - first, done = 0, run;
      /* The end of the source is read as zeros to the sector. */
      uint64_t avail = SC_MIN (last, size) - first;

      if (sc_ep_pread (src, buf, avail, first) == -1) {
        sc_error_name (src->name);
        goto out;
      }
      memset (buf + avail, 0, blen - avail);
      while (done < blen) {
        if (sc_sparse_run (buf + done, blen - done, first + done,
                           min_sparse, &run)
            && write (opaque, first + done, first + done + run) == -1)
          goto out;
        done += run;
      }
    }
    pos += n;
  }
  ret = 0;
 out:
  free (buf);
  return ret;
}

/* Does any whole aligned block of the n bytes at p (target offset
 * offset) hold only zeros?  Data almost always shows a non-zero byte
 * at the start of each block, so this costs a few bytes per block.
 */
static bool
has_zero_block (const unsigned char *p, uint64_t n, uint64_t offset)
{
  uint64_t pos = SC_ROUND_UP (offset, SC_ZERO_BLOCK) - offset;

  for (; pos < n && n - pos >= SC_ZERO_BLOCK; pos += SC_ZERO_BLOCK)
    if (sc_is_zero (p + pos, SC_ZERO_BLOCK))
      return true;
  return false;
}

/* Put the n bytes at p on dst at offset: shared with the source where
 * the pair can (they are the source's bytes at the same offset), else
 * written.  nonzero: the caller found no all-zero block in them.
 */
static int
put (struct sc_endpoint *dst, struct sc_sink_clone *cl,
     const unsigned char *p, uint64_t n, uint64_t offset, bool nonzero)
{
  if (cl && !__atomic_load_n (&cl->never, __ATOMIC_RELAXED)
      && (nonzero || !has_zero_block (p, n, offset))) {
    int r = sc_ep_copy_range (cl->src, offset, dst, offset, n,
                              SC_COPY_CLONE);

    if (r == 0) {
      __atomic_add_fetch (&cl->shared, n, __ATOMIC_RELAXED);
      return 0;
    }
    if (r == -1)
      return -1;
    if (r == SC_COPY_NEVER)
      __atomic_store_n (&cl->never, true, __ATOMIC_RELAXED);
  }
  return sc_ep_pwrite (dst, p, (size_t) n, offset);
}

/* Write the parts of buf that are not all-zero blocks, coalescing
 * neighbouring non-zero blocks into one write, and leave the zero ones
 * to the target, which reads as zero there already.
 */
static int
write_skipping_zeroes (struct sc_endpoint *dst, struct sc_sink_clone *cl,
                       const unsigned char *p, uint64_t length,
                       uint64_t offset)
{
  uint64_t pos = 0, run_start = 0;
  bool in_run = false;

  while (pos < length) {
    /* Blocks are aligned to the target's offsets, not the buffer's. */
    uint64_t end = SC_MIN (length,
                           SC_ROUND_DOWN (offset + pos + SC_ZERO_BLOCK,
                                          SC_ZERO_BLOCK) - offset);
    bool zero = sc_is_zero (p + pos, end - pos);

    if (!zero && !in_run) {
      run_start = pos;
      in_run = true;
    }
    else if (zero && in_run) {
      if (put (dst, cl, p + run_start, pos - run_start,
               offset + run_start, true) == -1)
        return -1;
      in_run = false;
    }
    pos = end;
  }
  if (in_run)
    return put (dst, cl, p + run_start, length - run_start,
                offset + run_start, true);
  return 0;
}

/* Make the zero run [start, end) of buf (offsets into buf) read as
 * zero on a target that does not already.  With --zero=auto it is
 * unmapped only where that is cheap: a target that cannot
 * (SC_ZERO_FAST fails with ENOTSUP) has the run written with the data
 * around it instead, and *no_fast stops further tries for this buffer.
 * Returns 1 if the run was zeroed, 0 if it is left for the data write,
 * -1 on an error.
 */
static int
zero_run (struct sc_endpoint *dst, uint64_t start, uint64_t end,
          uint64_t offset, bool *no_fast)
{
  if (dst->zero_mode == SC_TARGET_ZERO_UNMAP) {
    if (sc_ep_zero (dst, end - start, offset + start,
                    SC_ZERO_MAY_UNMAP | SC_ZERO_MUST_UNMAP) == -1)
      return -1;
    return 1;
  }
  if (*no_fast)
    return 0;
  if (sc_ep_zero (dst, end - start, offset + start,
                  SC_ZERO_MAY_UNMAP | SC_ZERO_FAST) == 0)
    return 1;
  if (sc_error_errno () != ENOTSUP)
    return -1;
  *no_fast = true;
  return 0;
}

/* Write buf, making its all-zero blocks zero ranges of the target's
 * zero mode (auto or unmap).  Zero blocks are merged into runs, and
 * data blocks too, so a buffer costs one request per run, not one per
 * block.
 */
static int
write_zeroing_zeroes (struct sc_endpoint *dst, struct sc_sink_clone *cl,
                      const unsigned char *p, uint64_t length,
                      uint64_t offset)
{
  uint64_t pos = 0, data_start = 0, zero_start = 0;
  bool in_zero = false, no_fast = false;

  while (pos <= length) {
    uint64_t end = pos == length ? length
      : SC_MIN (length, SC_ROUND_DOWN (offset + pos + SC_ZERO_BLOCK,
                                       SC_ZERO_BLOCK) - offset);
    /* Only whole blocks are zero ranges: a partial one at either end
     * of the buffer goes with the data.
     */
    bool zero = pos < length && end - pos == SC_ZERO_BLOCK
                && sc_is_zero (p + pos, end - pos);

    if (zero && !in_zero) {
      zero_start = pos;
      in_zero = true;
    }
    else if (!zero && in_zero) {
      int r;

      /* The data before the zero run goes first, so that a run that is
       * not zeroed after all joins it in one write.
       */
      in_zero = false;
      r = zero_run (dst, zero_start, pos, offset, &no_fast);
      if (r == -1)
        return -1;
      if (r == 1) {
        if (zero_start > data_start
            && put (dst, cl, p + data_start, zero_start - data_start,
                    offset + data_start, false) == -1)
          return -1;
        data_start = pos;
      }
    }
    if (pos == length)
      break;
    pos = end;
  }
  if (length > data_start)
    return put (dst, cl, p + data_start, length - data_start,
                offset + data_start, false);
  return 0;
}

/* Zeros written as data, for a target that must be allocated. */
#define ZERO_WRITE_SIZE (64 * 1024)
static const unsigned char zero_buffer[ZERO_WRITE_SIZE];

static int
write_zeros (struct sc_endpoint *dst, uint64_t length, uint64_t offset)
{
  while (length > 0) {
    size_t n = (size_t) SC_MIN (length, (uint64_t) ZERO_WRITE_SIZE);

    if (sc_ep_pwrite (dst, zero_buffer, n, offset) == -1)
      return -1;
    length -= n;
    offset += n;
  }
  return 0;
}

/* -S N decided beforehand (dst->sparse_writes): the parts of the
 * length bytes at p (NULL: zeros, a piece found all zero) that lie in
 * ranges to write.
 */
static int
write_decided (struct sc_endpoint *dst, struct sc_sink_clone *cl,
               const unsigned char *p, uint64_t length, uint64_t offset)
{
  const struct sc_extent_list *l = dst->sparse_writes;
  uint64_t end = offset + length;
  size_t lo = 0, hi = l->len;

  /* The first range that ends after offset. */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;

    if (l->ext[mid].offset + l->ext[mid].length <= offset)
      lo = mid + 1;
    else
      hi = mid;
  }
  for (; lo < l->len && l->ext[lo].offset < end; lo++) {
    const struct sc_extent *e = &l->ext[lo];
    uint64_t a = SC_MAX (e->offset, offset);
    uint64_t b = SC_MIN (e->offset + e->length, end);

    if (e->flags != 0)
      continue;
    if ((p ? put (dst, cl, p + (a - offset), b - a, a, false)
         : write_zeros (dst, b - a, a)) == -1)
      return -1;
  }
  return 0;
}

/* -S N: qemu-img convert's rule, run by run. */
static int
write_sparse_runs (struct sc_endpoint *dst, struct sc_sink_clone *cl,
                   const unsigned char *p, uint64_t length, uint64_t offset)
{
  uint64_t pos = 0;

  if (dst->sparse_writes)
    return write_decided (dst, cl, p, length, offset);

  while (pos < length) {
    uint64_t n;

    if (sc_sparse_run (p + pos, length - pos, offset + pos,
                       dst->min_sparse, &n)
        && put (dst, cl, p + pos, n, offset + pos, false) == -1)
      return -1;
    pos += n;
  }
  return 0;
}

int
sc_sink_write (struct sc_endpoint *dst, const void *buf, uint64_t length,
               uint64_t offset, bool detect_zeroes, struct sc_sink_clone *cl)
{
  if (!detect_zeroes || dst->allocate)
    return put (dst, cl, buf, length, offset, false);
  if (dst->flags & SC_EP_FRESH_ZEROS)
    return dst->min_sparse
      ? write_sparse_runs (dst, cl, buf, length, offset)
      : write_skipping_zeroes (dst, cl, buf, length, offset);
  /* A local file or device in place with auto or unmap; an export's
   * zero ranges inside data are written (its holes are zeroed, or the
   * whole export was by sc_sink_prepare).
   */
  if ((dst->flags & SC_EP_SEEKABLE) && !(dst->flags & SC_EP_REMOTE)
      && (dst->zero_mode == 0 || dst->zero_mode == SC_TARGET_ZERO_UNMAP))
    return write_zeroing_zeroes (dst, cl, buf, length, offset);
  return put (dst, cl, buf, length, offset, false);
}

int
sc_sink_zero (struct sc_endpoint *dst, uint64_t length, uint64_t offset)
{
  if (length == 0)
    return 0;
  /* A target that reads as zero gets the zeros written, as qemu-img
   * convert -S 0 writes them.
   */
  if (dst->allocate && (dst->flags & SC_EP_FRESH_ZEROS))
    return write_zeros (dst, length, offset);
  /* With -S N decided beforehand, zeros that qemu-img writes are
   * written, here too: a piece of data found all zero comes here.
   */
  if (dst->flags & SC_EP_FRESH_ZEROS)
    return dst->min_sparse && dst->sparse_writes
      ? write_decided (dst, NULL, NULL, length, offset) : 0;
  switch (dst->zero_mode) {
  case SC_TARGET_ZERO_SKIP:
    return 0;
  case SC_TARGET_ZERO_WRITE:
    return sc_ep_zero (dst, length, offset, 0);
  case SC_TARGET_ZERO_UNMAP:
    return sc_ep_zero (dst, length, offset,
                       SC_ZERO_MAY_UNMAP | SC_ZERO_MUST_UNMAP);
  default:
    /* -S 0 on a device: zeroed, and kept allocated. */
    return sc_ep_zero (dst, length, offset,
                       dst->allocate ? 0 : SC_ZERO_MAY_UNMAP);
  }
}

bool
sc_sink_zero_is_written (const struct sc_endpoint *dst)
{
  if (dst->flags & SC_EP_FRESH_ZEROS)
    return dst->allocate;
  if (dst->zero_mode == SC_TARGET_ZERO_SKIP)
    return false;
  return dst->allocate || !(dst->flags & SC_EP_SEEKABLE);
}

/* Does all of [0, length) of dst read as zero by its own account (an
 * NBD server's block status)?  1 yes, 0 no or cannot tell, -1 error.
 * The walk stops at the first range that does not: a target that
 * holds data costs one request.
 */
static int
target_reads_zero (struct sc_endpoint *dst, uint64_t length)
{
  struct sc_extent_list list;
  uint64_t pos = 0;
  int r = 1;

  if (dst->ops->extents == NULL)
    return 0;
  sc_extent_list_init (&list);
  while (r == 1 && pos < length) {
    list.len = 0;
    if (sc_ep_extents_step (dst, pos, length - pos, &list, &pos) == -1) {
      r = -1;
      break;
    }
    for (size_t i = 0; i < list.len && r == 1; i++)
      if (!(list.ext[i].flags & (SC_EXTENT_HOLE | SC_EXTENT_ZERO)))
        r = 0;
  }
  sc_extent_list_free (&list);
  return r;
}

int
sc_sink_prepare (struct sc_endpoint *dst, uint64_t length)
{
  int r;

  if (length == 0 || (dst->flags & SC_EP_FRESH_ZEROS)
      || !(dst->flags & SC_EP_REMOTE) || dst->zero_mode != 0
      || dst->allocate)
    return 0;
  /* An export that reads as zero already (nbdkit memory, a new sparse
   * file behind qemu-nbd) needs no zeroing at all.
   */
  r = target_reads_zero (dst, length);
  if (r == -1)
    return -1;
  if (r == 1) {
    dst->flags |= SC_EP_FRESH_ZEROS;
    return 0;
  }
  /* One that holds data is written over in place, its holes zeroed as
   * they come, as nbdcopy does.  Zeroing it whole first, as qemu-img
   * convert does, frees what is then allocated again: unpacking 970 MB
   * of a 4 GiB image onto qemu-nbd of a raw file holding the same took
   * 2.2 s with the zeroing and 1.3 s without (medians of 5), the server
   * punching the file's blocks and then allocating them again.
   */
  return 0;
}
