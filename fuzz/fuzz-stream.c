/* Fuzz target: any byte string as a qcow2 image arriving through a
 * pipe, decoded by sc_unpack's stream decoder (qcow2-stream.c).
 *
 * The bytes are a memory endpoint that reads like a pipe.  Each input
 * is decoded three times: by sc_unpack into a seekable target (written
 * in any order, the rest zeroed at the end), and in chunks of 64 KiB
 * instead of 4 MiB into a seekable target and into a forward-only
 * target, which checks that every byte arrives in guest order with no
 * gap and none twice.  Inputs are at most 1 MiB: only small chunks make
 * them reach what crosses a chunk (items that run on into the next
 * one, items learnt after their bytes went by, the spill file).
 * Targets hold nothing; they count, and refuse to take more than the
 * data budget so that an image of compressed zeros cannot make one
 * input run for minutes.
 */
#include <config.h>

#include "fuzz.h"
#include "qcow2.h"

#define SMALL_CHUNK (64 * 1024)

struct sink_ep {
  struct sc_endpoint ep;
  bool forward;                 /* written in order only */
  uint64_t pos;                 /* forward: the next offset */
  uint64_t written;             /* bytes given to pwrite */
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
  if (data) {
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

/* Decode the input as a stream; chunk 0 is sc_unpack's own. */
static void
decode (const uint8_t *data, size_t size, bool forward, size_t chunk)
{
  int r;
  struct sc_unpack_opts opts = { .no_external_files = true, .threads = 1 };
  struct sc_endpoint *image, *dst;
  struct sink_ep *s;

  image = sc_memory_source_new (data, size, "fuzz.qcow2", true);
  s = sc_ep_new (sizeof *s, &sink_ops, "fuzz.raw");
  FUZZ_ASSERT (image != NULL && s != NULL);
  s->forward = forward;
  s->ep.flags = forward ? 0 : SC_EP_SEEKABLE;
  dst = &s->ep;

  FUZZ_CLEAR_ERROR ();
  r = chunk ? qcow2_unpack_stream_chunked (image, dst, chunk, NULL, NULL)
    : sc_unpack (image, dst, &opts);
  if (r == -1)
    FUZZ_ASSERT_ERROR ();
  else if (forward)
    /* Every byte of the guest went out, in order. */
    FUZZ_ASSERT (s->pos == dst->size);

  FUZZ_ASSERT (sc_ep_close (dst) == 0);
  FUZZ_ASSERT (sc_ep_close (image) == 0);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  decode (data, size, false, 0);
  decode (data, size, false, SMALL_CHUNK);
  decode (data, size, true, SMALL_CHUNK);
  return 0;
}
