/* Fuzz target: any byte string as a bmap file (lib/bmap.c).
 *
 * Each input is parsed as sc_bmap_parse parses it (the file's own
 * checksum checked), and again without that check, so that mutated
 * inputs reach what follows a parse.  A bmap that parses must keep the
 * parser's promises (ranges sorted, apart and inside the image, counts
 * that agree); one whose mapped bytes fit the budget is then read
 * through the checked source over a source of zeros, into a fuzz sink,
 * and its ranges are written again by the builder: that bmap must
 * parse, checksum and all, with the same ranges.
 */
#include <config.h>

#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "fuzz.h"
#include "bmap.h"

static void
check_promises (const struct sc_bmap *b)
{
  uint64_t mapped = 0;

  FUZZ_ASSERT (b->image_size > 0);
  FUZZ_ASSERT (b->block_size >= 512 && (b->block_size & (b->block_size - 1)) == 0);
  FUZZ_ASSERT (b->blocks_count
               == b->image_size / b->block_size
                  + (b->image_size % b->block_size != 0));
  for (size_t i = 0; i < b->nb_ranges; i++) {
    uint64_t start, end;

    FUZZ_ASSERT (b->ranges[i].first <= b->ranges[i].last);
    FUZZ_ASSERT (b->ranges[i].last < b->blocks_count);
    FUZZ_ASSERT (i == 0 || b->ranges[i].first > b->ranges[i - 1].last);
    bmap_range_bytes (b, i, &start, &end);
    FUZZ_ASSERT (start < end && end <= b->image_size);
    mapped += b->ranges[i].last - b->ranges[i].first + 1;
  }
  FUZZ_ASSERT (mapped == b->mapped_blocks);
}

/* Read the mapped ranges through the checked source. */
static void
read_through (const struct sc_bmap *b)
{
  struct sc_copy_opts copts = { .threads = 1 };
  /* An image's size is whole sectors; the bmap's need not be (the
   * tail past it reads as zero here).
   */
  struct sc_endpoint *zeros
    = sc_null_source_new (SC_ROUND_UP (b->image_size, (uint64_t) 512));
  struct sc_endpoint *checked, *sink;
  int r;

  FUZZ_ASSERT (zeros != NULL);
  checked = bmap_checked_source (zeros, b, true);
  FUZZ_ASSERT (checked != NULL);
  sink = fuzz_sink_new (false);
  FUZZ_ASSERT (sink != NULL);
  FUZZ_ASSERT (sc_ep_set_size (sink, b->image_size) == 0);
  FUZZ_CLEAR_ERROR ();
  r = sc_copy (checked, sink, &copts);
  if (r == 0)
    r = bmap_checked_finish (checked);
  if (r == -1)
    FUZZ_ASSERT_ERROR ();
  FUZZ_ASSERT (sc_ep_close (sink) == 0);
  FUZZ_ASSERT (sc_ep_close (checked) == 0);
  FUZZ_ASSERT (sc_ep_close (zeros) == 0);
}

/* Write the ranges (of zeros) again and parse what was written. */
static void
round_trip (const struct sc_bmap *b)
{
  struct bmap_builder *builder = bmap_builder_new (NULL);
  struct sc_endpoint *out;
  struct sc_bmap *again;
  struct stat st;
  char *text;
  int fd;

  FUZZ_ASSERT (builder != NULL);
  for (size_t i = 0; i < b->nb_ranges; i++) {
    uint64_t start, end;

    bmap_range_bytes (b, i, &start, &end);
    FUZZ_ASSERT (bmap_builder_data (builder, start, NULL,
                                    (size_t) (end - start)) == 0);
  }
  fd = sc_spill_open (NULL);
  FUZZ_ASSERT (fd >= 0);
  out = sc_endpoint_open_fd_target (fd, "fuzz-out.bmap", 0);
  FUZZ_ASSERT (out != NULL);
  FUZZ_ASSERT (bmap_builder_finish (builder, b->image_size, out) == 0);
  FUZZ_ASSERT (sc_ep_close (out) == 0);
  bmap_builder_free (builder);

  FUZZ_ASSERT (fstat (fd, &st) == 0);
  text = malloc ((size_t) st.st_size + 1);
  FUZZ_ASSERT (text != NULL);
  FUZZ_ASSERT (sc_full_pread (fd, text, (size_t) st.st_size, 0) == 0);
  close (fd);
  again = sc_bmap_parse (text, (size_t) st.st_size, "fuzz-out.bmap");
  if (again == NULL)
    fprintf (stderr, "%s\n", sc_error_message ());
  FUZZ_ASSERT (again != NULL);
  FUZZ_ASSERT (again->image_size == b->image_size);
  FUZZ_ASSERT (again->nb_ranges <= b->nb_ranges);
  /* Ranges that touch are one range when written. */
  FUZZ_ASSERT (again->mapped_blocks == b->mapped_blocks);
  for (size_t i = 0, j = 0; i < b->nb_ranges; i++) {
    while (again->ranges[j].last < b->ranges[i].first)
      j++;
    FUZZ_ASSERT (j < again->nb_ranges);
    FUZZ_ASSERT (again->ranges[j].first <= b->ranges[i].first
                 && b->ranges[i].last <= again->ranges[j].last);
  }
  sc_bmap_free (again);
  free (text);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct sc_bmap *b;

  FUZZ_CLEAR_ERROR ();
  b = sc_bmap_parse (data, size, "fuzz.bmap");
  if (b == NULL)
    FUZZ_ASSERT_ERROR ();
  else
    check_promises (b);
  sc_bmap_free (b);

  FUZZ_CLEAR_ERROR ();
  b = bmap_parse (data, size, "fuzz.bmap", false);
  if (b == NULL) {
    FUZZ_ASSERT_ERROR ();
    return 0;
  }
  check_promises (b);
  /* mapped_blocks * block_size cannot overflow: it is below
   * image_size + block_size.
   */
  if (b->mapped_blocks * b->block_size <= FUZZ_DATA_BUDGET) {
    read_through (b);
    if (b->block_size == SC_BMAP_BLOCK_SIZE)
      round_trip (b);
  }
  sc_bmap_free (b);
  return 0;
}
