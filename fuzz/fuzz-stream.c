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
 * The targets are fuzz sinks (sink.c).
 */
#include <config.h>

#include "fuzz.h"
#include "qcow2.h"

#define SMALL_CHUNK (64 * 1024)

/* Decode the input as a stream; chunk 0 is sc_unpack's own. */
static void
decode (const uint8_t *data, size_t size, bool forward, size_t chunk)
{
  int r;
  struct sc_unpack_opts opts = { .no_external_files = true, .threads = 1 };
  struct sc_endpoint *image, *dst;

  image = sc_memory_source_new (data, size, "fuzz.qcow2", true);
  dst = fuzz_sink_new (forward);
  FUZZ_ASSERT (image != NULL);

  FUZZ_CLEAR_ERROR ();
  r = chunk ? qcow2_unpack_stream_chunked (image, dst, chunk, NULL, NULL)
    : sc_unpack (image, dst, &opts);
  if (r == -1)
    FUZZ_ASSERT_ERROR ();
  else if (forward)
    /* Every byte of the guest went out, in order. */
    FUZZ_ASSERT (fuzz_sink_position (dst) == dst->size);

  FUZZ_ASSERT (sc_ep_close (dst) == 0);
  FUZZ_ASSERT (sc_ep_close (image) == 0);
}

/* Held data is bounded by a limit, not by the input: an input of 256
 * KiB that names one cluster from thousands of L2 entries fills 256 MiB
 * and takes seconds.  16 MiB keeps every input under the time limit and
 * still exceeds what any input of at most 1 MiB holds otherwise.
 */
#define FUZZ_HELD_LIMIT (16 * 1024 * 1024)

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  qcow2_stream_held_limit = FUZZ_HELD_LIMIT;
  decode (data, size, false, 0);
  decode (data, size, false, SMALL_CHUNK);
  decode (data, size, true, SMALL_CHUNK);
  return 0;
}
