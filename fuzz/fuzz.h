/* Shared by the fuzz targets: the entry point that libFuzzer calls (or
 * replay.c, which runs saved inputs without libFuzzer), and the checks
 * of the library's contracts that turn a broken promise into a crash
 * the fuzzer reports.
 */
#ifndef SPARSECOW_FUZZ_H
#define SPARSECOW_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

/* Run one input through the target.  Always returns 0: inputs are
 * never rejected from the corpus.
 */
extern int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* Stop with a report: the library broke one of its promises. */
#define FUZZ_ASSERT(cond)                                               \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf (stderr, "%s:%d: broken promise: %s\n", __FILE__,         \
               __LINE__, #cond);                                        \
      abort ();                                                         \
    }                                                                   \
  } while (0)

/* A call that failed must say what went wrong.  A hostile input gets a
 * clear error, never a silent one: the message is emptied before each
 * call and must be set again by a failure.
 */
#define FUZZ_CLEAR_ERROR() sc_set_error (0, "%s", "")
#define FUZZ_ASSERT_ERROR()                                             \
  FUZZ_ASSERT (sc_error_message ()[0] != '\0')

/* Guest bytes a target reads or writes per input, at most.  An image of
 * a few KiB can map gigabytes of compressed zeros; reading them all is
 * correct but would take more than the second each input is allowed:
 * with the sanitizers, a cluster of 64 KiB takes about 1 ms to read and
 * inflate.  The first 8 MiB are enough to reach every code path.
 */
#define FUZZ_DATA_BUDGET (8U * 1024 * 1024)

/* sink.c: a target of any size (set_size) that holds nothing: seekable,
 * or forward-only.  It refuses data past FUZZ_DATA_BUDGET with ENOSPC.
 */
extern struct sc_endpoint *fuzz_sink_new (bool forward);
/* A forward-only sink: the offset up to which it was given everything. */
extern uint64_t fuzz_sink_position (struct sc_endpoint *ep);

#endif /* SPARSECOW_FUZZ_H */
