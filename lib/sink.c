/* The target-write rules, one set for every path that writes guest
 * data: the copy engine and the stream decoder.
 *
 * - A target that already reads as zero (SC_EP_FRESH_ZEROS: a new file,
 *   a file behind stdout) gets nothing for a hole, and inside data only
 *   the 4 KiB blocks that are not all zero, so it stays as sparse as
 *   the guest content allows.
 * - Any other target gets holes and zero ranges zeroed as its zero
 *   mode says: by default (auto) with the permission to unmap them;
 *   unmap demands it; write zeroes them without unmapping; skip leaves
 *   them as they are (only the image's data is written, as bmaptool
 *   does).
 * - A server's export that can zero a range without writing it (NBD
 *   WRITE_ZEROES with FAST_ZERO) is zeroed whole first, as qemu-img
 *   convert does, and is then a target that reads as zero.
 */
#include <config.h>

#include "internal.h"

int
sc_sink_write (struct sc_endpoint *dst, const void *buf, uint64_t length,
               uint64_t offset, bool detect_zeroes)
{
  const unsigned char *p = buf;
  uint64_t pos = 0, run_start = 0;
  bool in_run = false;

  if (!detect_zeroes || !(dst->flags & SC_EP_FRESH_ZEROS))
    return sc_ep_pwrite (dst, buf, length, offset);

  /* Write the parts that are not all-zero blocks, coalescing
   * neighbouring non-zero blocks into one write.
   */
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
      if (sc_ep_pwrite (dst, p + run_start, pos - run_start,
                        offset + run_start) == -1)
        return -1;
      in_run = false;
    }
    pos = end;
  }
  if (in_run)
    return sc_ep_pwrite (dst, p + run_start, length - run_start,
                         offset + run_start);
  return 0;
}

int
sc_sink_zero (struct sc_endpoint *dst, uint64_t length, uint64_t offset)
{
  if (length == 0 || (dst->flags & SC_EP_FRESH_ZEROS))
    return 0;
  switch (dst->zero_mode) {
  case SC_TARGET_ZERO_SKIP:
    return 0;
  case SC_TARGET_ZERO_WRITE:
    return sc_ep_zero (dst, length, offset, 0);
  case SC_TARGET_ZERO_UNMAP:
    return sc_ep_zero (dst, length, offset,
                       SC_ZERO_MAY_UNMAP | SC_ZERO_MUST_UNMAP);
  default:
    return sc_ep_zero (dst, length, offset, SC_ZERO_MAY_UNMAP);
  }
}

int
sc_sink_prepare (struct sc_endpoint *dst, uint64_t length)
{
  if (length == 0 || (dst->flags & SC_EP_FRESH_ZEROS)
      || !(dst->flags & SC_EP_REMOTE) || dst->zero_mode != 0)
    return 0;
  if (sc_ep_zero (dst, length, 0, SC_ZERO_MAY_UNMAP | SC_ZERO_FAST) == -1) {
    /* Not fast here: holes are zeroed one by one instead. */
    if (sc_error_errno () == ENOTSUP)
      return 0;
    return -1;
  }
  dst->flags |= SC_EP_FRESH_ZEROS;
  return 0;
}
