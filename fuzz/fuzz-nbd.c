/* Fuzz target: any byte string as what an NBD server answers
 * (lib/endpoint-nbd.c), through the endpoint's own slots and reply
 * checks, with the transport played (sc_nbd_played_source_new).
 *
 * The input is read in order.  First the export, as libnbd would
 * report it after the handshake: its size, its block size constraints,
 * the meta contexts agreed, after how many reads the server fails.
 * Then, for each block status request, the reply: a number of chunks,
 * each with its context (base:allocation, qemu:allocation-depth or one
 * not asked for), its offset (the one asked, or any), an optional error,
 * and any number of (length, flags) pairs with any lengths and flags.
 * Once the input is used up the server fails every request, as one
 * that went away.  Reads are answered with bytes that depend on the
 * offset only.
 *
 * What the endpoint is then made to do: ask extents where the input
 * says, and read where it says, with the answers checked here against
 * the endpoint's contract (extents: from the offset asked, contiguous,
 * none empty, inside the range asked for and the reply, only known
 * flags, at most SC_NBD_MAX_REPLY_EXTENTS per reply; reads: the right
 * bytes, requests inside the export, whole minimum blocks, within the
 * maximum), and finally copy the whole export through the copy engine
 * into a fuzz sink written in order, which sees every byte once.  Every
 * failure must say what went wrong.
 */
#include <config.h>

#include <endian.h>
#include <string.h>

#include "fuzz.h"

/* At most this many requests of each kind per input: a server that
 * answers one byte at a time is slow, not wrong, and the input must end
 * within its second.
 */
#define MAX_READS 20000
#define MAX_BLOCK_STATUS 4000
/* Bytes read per input, at most: every byte is made and checked. */
#define MAX_READ_BYTES (1024 * 1024)
/* Extents asked and reads done directly, before the copy. */
#define DIRECT_STEPS 8
/* The largest direct read. */
#define MAX_DIRECT_READ (256 * 1024)

#define CONTEXT_ALLOC "base:allocation"
#define CONTEXT_DEPTH "qemu:allocation-depth"

struct server {
  const uint8_t *data;
  size_t size, pos;
  bool exhausted;
  struct sc_nbd_player p;
  uint32_t min_block;           /* what the client keeps to */
  uint32_t max_request;
  unsigned fail_read_after;     /* 0: never */
  unsigned reads, block_status;
  uint64_t read_bytes;
};

static uint64_t
take (struct server *s, unsigned bytes)
{
  uint64_t v = 0;

  for (unsigned i = 0; i < bytes; i++) {
    if (s->pos >= s->size) {
      s->exhausted = true;
      return v;
    }
    v = (v << 8) | s->data[s->pos++];
  }
  return v;
}

/* The bytes of the export: each 8-byte word holds its own offset
 * (little-endian), so a byte in the wrong place shows.  Made and
 * checked a word at a time: per byte, the fuzzer's instrumentation of
 * the loop took most of each run.
 */
static void
fill (uint8_t *buf, uint64_t count, uint64_t offset)
{
  uint64_t word = SC_ROUND_DOWN (offset, 8), skip = offset - word;

  while (count > 0) {
    uint64_t le = htole64 (word);
    uint64_t n = SC_MIN (8 - skip, count);

    memcpy (buf, (uint8_t *) &le + skip, n);
    buf += n;
    count -= n;
    word += 8;
    skip = 0;
  }
}

static int
server_pread (void *opaque, void *buf, uint64_t count, uint64_t offset)
{
  struct server *s = opaque;
  uint64_t end;

  /* What the client may ask of this server. */
  FUZZ_ASSERT (count > 0);
  FUZZ_ASSERT (!SC_ADD_OVERFLOW (offset, count, &end));
  FUZZ_ASSERT (end <= (uint64_t) s->p.size);
  FUZZ_ASSERT (count <= s->max_request);
  FUZZ_ASSERT (offset % s->min_block == 0);
  FUZZ_ASSERT (count % s->min_block == 0 || end == (uint64_t) s->p.size);
  s->read_bytes += count;
  if (++s->reads > MAX_READS || s->read_bytes > MAX_READ_BYTES
      || (s->fail_read_after && s->reads > s->fail_read_after))
    return EIO;
  fill (buf, count, offset);
  return 0;
}

static int
server_block_status (void *opaque, uint64_t count, uint64_t offset,
                     sc_nbd_extent_fn extent, void *user_data)
{
  struct server *s = opaque;
  unsigned chunks;

  FUZZ_ASSERT (count > 0 && count <= UINT32_MAX);
  FUZZ_ASSERT (offset < (uint64_t) s->p.size);
  FUZZ_ASSERT (offset + count <= (uint64_t) s->p.size);
  if (++s->block_status > MAX_BLOCK_STATUS)
    return EIO;
  chunks = (unsigned) take (s, 1) % 4;
  if (s->exhausted)
    return EIO;
  for (unsigned c = 0; c < chunks && !s->exhausted; c++) {
    unsigned how = (unsigned) take (s, 1);
    const char *context = (how & 3) == 0 ? "x-other:context"
                        : (how & 3) == 3 ? CONTEXT_DEPTH : CONTEXT_ALLOC;
    uint64_t at = (how & 4) ? take (s, 8) : offset;
    int error = (how & 8) ? EIO : 0;
    size_t pairs = (size_t) take (s, 2);
    uint32_t *entries;

    size_t given = 0;

    /* A count that says "many" is 16 times larger, and the at most 16
     * pairs given are repeated: a small input makes a reply of up to
     * 2^20 extents.  Pairs the input does not hold repeat those given
     * too (empty extents when there are none).
     */
    if (how & 16)
      pairs <<= 4;
    entries = calloc (pairs ? 2 * pairs : 1, sizeof *entries);
    FUZZ_ASSERT (entries != NULL);
    while (given < pairs && s->pos + 8 <= s->size
           && (!(how & 16) || given < 16)) {
      entries[2 * given] = (uint32_t) take (s, 4);
      entries[2 * given + 1] = (uint32_t) take (s, 4);
      given++;
    }
    for (size_t have = given; have > 0 && have < pairs; have *= 2)
      memcpy (entries + 2 * have, entries,
              2 * SC_MIN (have, pairs - have) * sizeof *entries);
    /* An odd count of words, as a reply cut short would give. */
    extent (user_data, context, at, entries,
            2 * pairs - ((how & 32) && pairs > 0), &error);
    free (entries);
  }
  /* The command's own outcome: an error reply after the chunks. */
  return take (s, 1) & 1 ? EIO : 0;
}

/* The answer to one extents request [offset, offset+count) of the
 * slot keeps the slot's contract.
 */
static void
check_answer (const struct server *s, const struct sc_extent_list *list,
              uint64_t offset, uint64_t count)
{
  uint64_t size = (uint64_t) s->p.size, pos = offset, end;

  FUZZ_ASSERT (list->len > 0);
  if (offset >= size || !s->p.base_allocation) {
    /* Past the end, or no block status: all data, as asked. */
    FUZZ_ASSERT (list->len == 1);
    FUZZ_ASSERT (list->ext[0].offset == offset
                 && list->ext[0].length == count
                 && list->ext[0].flags == 0);
    return;
  }
  /* What was asked of the server: within the export, and 32 bits. */
  end = offset + SC_MIN (SC_MIN (count, size - offset), (uint64_t) 1 << 30);
  /* A reply keeps at most this many, and two merged (base:allocation
   * and allocation depth) at most twice as many.
   */
  FUZZ_ASSERT (list->len <= (s->p.allocation_depth ? 2 : 1)
                            * (size_t) SC_NBD_MAX_REPLY_EXTENTS);
  for (size_t i = 0; i < list->len; i++) {
    const struct sc_extent *e = &list->ext[i];
    uint32_t f = e->flags;

    FUZZ_ASSERT (e->offset == pos);
    FUZZ_ASSERT (e->length > 0);
    FUZZ_ASSERT (e->length <= end - pos);
    /* A hole is said only where it reads as zero. */
    FUZZ_ASSERT (f == 0 || f == SC_EXTENT_ZERO
                 || f == (SC_EXTENT_HOLE | SC_EXTENT_ZERO));
    pos += e->length;
  }
}

/* Ask the slot for extents, then for the same range as the engine
 * does (asking on until it is described).
 */
static void
ask_extents (struct server *s, struct sc_endpoint *ep, uint64_t offset,
             uint64_t count)
{
  struct sc_extent_list list;
  int r;

  if (count == 0 || offset > UINT64_MAX - count)
    return;
  sc_extent_list_init (&list);
  FUZZ_CLEAR_ERROR ();
  r = sc_ep_extents (ep, offset, count, &list);
  if (r == -1)
    FUZZ_ASSERT_ERROR ();
  else
    check_answer (s, &list, offset, count);
  sc_extent_list_free (&list);
}

static void
read_direct (struct server *s, struct sc_endpoint *ep, uint64_t offset,
             size_t count)
{
  uint8_t *buf, *want;
  int r;

  if (count == 0)
    return;
  buf = malloc (count);
  want = malloc (count);
  FUZZ_ASSERT (buf != NULL && want != NULL);
  FUZZ_CLEAR_ERROR ();
  r = sc_ep_pread (ep, buf, count, offset);
  if (r == -1)
    FUZZ_ASSERT_ERROR ();
  else {
    /* Inside the export, and the bytes that are there. */
    FUZZ_ASSERT (offset + count <= (uint64_t) s->p.size);
    fill (want, count, offset);
    FUZZ_ASSERT (memcmp (buf, want, count) == 0);
  }
  free (buf);
  free (want);
}

/* A size that is often small and near the interesting edges. */
static uint64_t
pick_offset (struct server *s, uint64_t size)
{
  unsigned how = (unsigned) take (s, 1);
  uint64_t v = take (s, (how & 3) == 0 ? 8 : (how & 3) + 1);

  switch (how >> 2 & 3) {
  case 0: return v;
  case 1: return size ? v % size : v;
  case 2: return size > v ? size - v : 0;
  default: return SC_ROUND_DOWN (v, 512);
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct server s = { .data = data, .size = size };
  struct sc_copy_opts copts = { .threads = 1 };
  struct sc_endpoint *ep, *sink;
  unsigned flags;
  int r;

  /* The export. */
  s.p.size = (int64_t) take (&s, 8);
  s.p.min_block = (int64_t) take (&s, 4);
  s.p.pref_block = (int64_t) take (&s, 4);
  s.p.max_block = (int64_t) take (&s, 4);
  flags = (unsigned) take (&s, 1);
  s.p.base_allocation = flags & 1;
  s.p.allocation_depth = flags & 2;
  s.fail_read_after = (flags & 4) ? (unsigned) take (&s, 2) : 0;
  /* Sizes of every magnitude, most of them small. */
  if (!(flags & 8) && s.p.size >= 0)
    s.p.size %= (int64_t) 8 << 20;
  s.p.pread = server_pread;
  s.p.block_status = server_block_status;
  s.p.opaque = &s;

  FUZZ_CLEAR_ERROR ();
  ep = sc_nbd_played_source_new (&s.p);
  if (ep == NULL) {
    FUZZ_ASSERT (s.p.size < 0);
    FUZZ_ASSERT_ERROR ();
    return 0;
  }
  /* What the client keeps to, checked by every read. */
  s.min_block = 1;
  if (s.p.min_block > 0 && s.p.min_block <= 65536
      && (s.p.min_block & (s.p.min_block - 1)) == 0)
    s.min_block = (uint32_t) s.p.min_block;
  s.max_request = ep->max_request;
  FUZZ_ASSERT (s.max_request >= s.min_block
               && s.max_request % s.min_block == 0
               && s.max_request <= 32 * 1024 * 1024);
  FUZZ_ASSERT ((ep->block_size & (ep->block_size - 1)) == 0);

  for (unsigned i = 0; i < DIRECT_STEPS && !s.exhausted; i++) {
    unsigned what = (unsigned) take (&s, 1);
    uint64_t offset = pick_offset (&s, ep->size);

    if (what & 1)
      ask_extents (&s, ep, offset, pick_offset (&s, ep->size));
    else {
      size_t count = (size_t) take (&s, 3) % (MAX_DIRECT_READ + 1);
      if (offset < ep->size)
        read_direct (&s, ep, offset,
                     (size_t) SC_MIN ((uint64_t) count, ep->size - offset));
    }
  }

  /* The whole export, as a copy reads it, into a target written in
   * order: whatever the replies, every byte arrives once, with no gap.
   */
  sink = fuzz_sink_new (true);
  FUZZ_ASSERT (sc_ep_set_size (sink, ep->size) == 0);
  FUZZ_CLEAR_ERROR ();
  r = sc_copy (ep, sink, &copts);
  if (r == -1)
    FUZZ_ASSERT_ERROR ();
  else
    FUZZ_ASSERT (fuzz_sink_position (sink) == ep->size);
  FUZZ_ASSERT (sc_ep_close (sink) == 0);
  FUZZ_ASSERT (sc_ep_close (ep) == 0);
  return 0;
}
