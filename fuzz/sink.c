/* The target of the fuzz targets' unpacks: an endpoint that holds
 * nothing.  It checks what it is given against the endpoint contract
 * (inside its size; a forward-only one in order, with no gap and
 * nothing twice) and refuses more than FUZZ_DATA_BUDGET bytes of data,
 * as a full disk would, so that an image of compressed zeros cannot
 * make one input run for minutes.
 *
 * The copy engine reads data in pieces of at most ZERO_PIECE bytes and
 * passes one that reads as zero to the zero slot, so zero requests that
 * small count against the budget too: they may have cost a read and a
 * decompression.  Larger ones are holes or zero ranges, which cost
 * nothing to produce, and are free.
 */
#include <config.h>

#include "fuzz.h"

/* The copy engine's request size (copy.c, DEFAULT_REQUEST_SIZE). */
#define ZERO_PIECE (1024 * 1024)

struct sink_ep {
  struct sc_endpoint ep;
  bool forward;                 /* written in order only */
  uint64_t pos;                 /* forward: the next offset */
  uint64_t written;             /* bytes counted against the budget */
};

static int
sink_take (struct sc_endpoint *ep, uint64_t count, uint64_t offset,
           bool data)
{
  struct sink_ep *s = (struct sink_ep *) ep;
  uint64_t end;

  FUZZ_ASSERT (count > 0);
  FUZZ_ASSERT (!SC_ADD_OVERFLOW (offset, count, &end));
  FUZZ_ASSERT (end <= ep->size);
  if (s->forward) {
    FUZZ_ASSERT (offset == s->pos);
    s->pos = end;
  }
  if (data || count <= ZERO_PIECE) {
    if (s->written + count > FUZZ_DATA_BUDGET) {
      sc_set_error (ENOSPC, "the fuzz target holds only %u bytes of data",
                    FUZZ_DATA_BUDGET);
      return -1;
    }
    s->written += count;
  }
  return 0;
}

static int
sink_pwrite (struct sc_endpoint *ep, const void *buf, size_t count,
             uint64_t offset)
{
  return sink_take (ep, count, offset, true);
}

static int
sink_zero (struct sc_endpoint *ep, uint64_t count, uint64_t offset,
           unsigned flags)
{
  return sink_take (ep, count, offset, false);
}

/* Sized once, before any write. */
static int
sink_set_size (struct sc_endpoint *ep, uint64_t size)
{
  struct sink_ep *s = (struct sink_ep *) ep;

  FUZZ_ASSERT (s->written == 0 && s->pos == 0);
  ep->size = size;
  return 0;
}

static int
sink_close (struct sc_endpoint *ep)
{
  sc_ep_free (ep);
  return 0;
}

static const struct sc_endpoint_ops sink_ops = {
  .kind = "null",
  .pwrite = sink_pwrite,
  .zero = sink_zero,
  .set_size = sink_set_size,
  .close = sink_close,
};

struct sc_endpoint *
fuzz_sink_new (bool forward)
{
  struct sink_ep *s = sc_ep_new (sizeof *s, &sink_ops, "fuzz.raw");

  FUZZ_ASSERT (s != NULL);
  s->forward = forward;
  s->ep.flags = forward ? 0 : SC_EP_SEEKABLE;
  return &s->ep;
}

uint64_t
fuzz_sink_position (struct sc_endpoint *ep)
{
  return ((struct sink_ep *) ep)->pos;
}
