/* Fuzz target: any byte string as a qcow2 image file, served from
 * memory through a source endpoint.
 *
 * The image is opened as the reader opens it (no_external_files, so a
 * backing file or data file name resolves to nothing outside the
 * input), its guest view is walked extent by extent and read, mapped
 * and described as "info" does, the first snapshot is opened and read
 * the same way, the image is unpacked by sc_unpack (the copy engine)
 * into a sink that holds nothing, and the image is checked.  Any
 * failure must come with a message; the extents must keep the endpoint
 * contract; ranges said to read as zero must read as zero.
 */
#include <config.h>

#include <string.h>

#include "fuzz.h"

/* Guest bytes read per request, as the copy engine asks. */
#define READ_REQUEST (1024 * 1024)
/* Extents are asked for a window at a time, as the copy engine asks
 * (copy.c): the window doubles while it holds few extents and halves
 * while it holds many, so neither the list nor the number of requests
 * grows with the virtual size.
 */
#define MIN_WINDOW ((uint64_t) 64 * 1024 * 1024)
#define FIRST_WINDOW ((uint64_t) 1024 * 1024 * 1024)
#define FEW_EXTENTS 64
#define MANY_EXTENTS 4096
/* Map runs taken per input: a megabyte of extended L2 entries maps two
 * million runs, each of which is right to report, and the whole map
 * would cost more than the second an input is allowed.  The map stops
 * there through its callback, which tests that path too.
 */
#define MAP_RUNS 100000

static unsigned char read_buf[READ_REQUEST];

/* Read [offset, offset + length) of the guest view within *budget. */
static void
read_range (struct sc_endpoint *guest, uint64_t offset, uint64_t length,
            bool zero, uint64_t *budget)
{
  while (length > 0 && *budget > 0) {
    size_t n = (size_t) SC_MIN (length, SC_MIN (*budget,
                                                (uint64_t) READ_REQUEST));

    FUZZ_CLEAR_ERROR ();
    if (sc_ep_pread (guest, read_buf, n, offset) == -1) {
      FUZZ_ASSERT_ERROR ();
      /* A damaged cluster: the rest may still be read. */
    }
    else if (zero)
      FUZZ_ASSERT (sc_is_zero (read_buf, n));
    offset += n;
    length -= n;
    *budget -= n;
  }
}

/* Walk the guest view front to back by its extents, reading data and
 * zero ranges until the budget is spent.
 */
static void
read_guest (struct sc_qcow2 *q)
{
  struct sc_endpoint *guest;
  struct sc_extent_list list;
  uint64_t offset = 0, size, budget = FUZZ_DATA_BUDGET;
  uint64_t window = FIRST_WINDOW;

  FUZZ_CLEAR_ERROR ();
  guest = sc_qcow2_endpoint (q);
  if (guest == NULL) {
    FUZZ_ASSERT_ERROR ();
    return;
  }
  size = guest->size;
  FUZZ_ASSERT (size == sc_qcow2_virtual_size (q));
  sc_extent_list_init (&list);
  /* Past the budget nothing is read: the walk ends too. */
  while (offset < size && budget > 0) {
    uint64_t pos = offset, stop = offset + SC_MIN (window, size - offset);

    list.len = 0;
    FUZZ_CLEAR_ERROR ();
    if (sc_ep_extents (guest, offset, stop - offset, &list) == -1) {
      FUZZ_ASSERT_ERROR ();
      break;
    }
    /* Sorted, contiguous, starting at offset, and never empty: the
     * caller asks again from where the answer ends.
     */
    FUZZ_ASSERT (list.len > 0);
    for (size_t i = 0; i < list.len; i++) {
      const struct sc_extent *e = &list.ext[i];
      uint64_t len;

      FUZZ_ASSERT (e->offset == pos);
      FUZZ_ASSERT (e->length > 0);
      if (pos >= stop)
        break;
      len = SC_MIN (e->length, stop - pos);
      read_range (guest, pos, len, (e->flags & SC_EXTENT_ZERO) != 0,
                  &budget);
      pos += len;
    }
    offset = pos;
    if (list.len < FEW_EXTENTS && window <= UINT64_MAX / 2)
      window *= 2;
    else if (list.len > MANY_EXTENTS && window / 2 >= MIN_WINDOW)
      window /= 2;
  }
  sc_extent_list_free (&list);
  sc_ep_close (guest);
}

struct map_walk {
  uint64_t next;                /* where the next run must start */
  unsigned runs;
};

/* Map runs must tile the guest in order. */
static int
map_entry (const struct sc_map_entry *e, void *opaque)
{
  struct map_walk *w = opaque;

  FUZZ_ASSERT (e->start == w->next);
  FUZZ_ASSERT (e->length > 0);
  w->next = e->start + e->length;
  if (++w->runs == MAP_RUNS) {
    sc_set_error (EFBIG, "more than %u runs", MAP_RUNS);
    return -1;
  }
  return 0;
}

static void
describe (struct sc_qcow2 *q, char **first_snapshot)
{
  struct sc_qcow2_info info;
  struct map_walk w = { 0, 0 };

  FUZZ_CLEAR_ERROR ();
  if (sc_qcow2_map (q, map_entry, &w) == -1)
    FUZZ_ASSERT_ERROR ();
  else
    FUZZ_ASSERT (w.next == sc_qcow2_virtual_size (q));

  FUZZ_CLEAR_ERROR ();
  if (sc_qcow2_get_info (q, &info) == -1) {
    FUZZ_ASSERT_ERROR ();
    return;
  }
  FUZZ_ASSERT (info.virtual_size == sc_qcow2_virtual_size (q));
  if (first_snapshot && info.nb_snapshots > 0) {
    *first_snapshot = strdup (info.snapshots[0].id);
    FUZZ_ASSERT (*first_snapshot != NULL);
  }
  sc_qcow2_info_free (&info);
}
/* Open the image on file, read its guest view and describe it; a
 * refusal must come with a message.  snapshot: see describe().
 */
static void
open_and_read (struct sc_endpoint *file, const struct sc_qcow2_open_opts *opts,
               char **snapshot)
{
  struct sc_qcow2 *q;

  FUZZ_CLEAR_ERROR ();
  q = sc_qcow2_open_endpoint (file, opts);
  if (q == NULL) {
    FUZZ_ASSERT_ERROR ();
    return;
  }
  read_guest (q);
  describe (q, snapshot);
  sc_qcow2_close (q);
}


int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  /* The smallest L2 cache, so that inputs of a few tables evict too. */
  struct sc_qcow2_open_opts opts = { .no_external_files = true,
                                     .cache_bytes = 1 };
  struct sc_check_result result;
  struct sc_endpoint *file;
  char *snapshot = NULL;

  file = sc_memory_source_new (data, size, "fuzz.qcow2", false);
  FUZZ_ASSERT (file != NULL);

  /* The active layer, then the first snapshot it names, if any. */
  open_and_read (file, &opts, &snapshot);
  if (snapshot) {
    opts.snapshot = snapshot;
    open_and_read (file, &opts, NULL);
    free (snapshot);
  }

  /* The copy engine, on one thread: the same on every run. */
  {
    struct sc_unpack_opts uopts = { .no_external_files = true,
                                    .threads = 1 };
    struct sc_endpoint *dst = fuzz_sink_new (false);

    FUZZ_CLEAR_ERROR ();
    if (sc_unpack (file, dst, &uopts) == -1)
      FUZZ_ASSERT_ERROR ();
    FUZZ_ASSERT (sc_ep_close (dst) == 0);
  }

  FUZZ_CLEAR_ERROR ();
  if (sc_qcow2_check_endpoint (file, &result) == -1)
    FUZZ_ASSERT_ERROR ();
  else {
    FUZZ_ASSERT (result.nb_messages == 0 || result.messages != NULL);
    sc_check_result_free (&result);
  }

  FUZZ_ASSERT (sc_ep_close (file) == 0);
  return 0;
}
