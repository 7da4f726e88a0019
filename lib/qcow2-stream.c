/* Unpack a qcow2 image read once, front to back, from a stream.
 *
 * The image is never seen whole.  The stream is read in chunks; what
 * the image is made of is learnt as it goes by: the header gives the
 * L1 table, the L1 table the L2 tables, the L2 tables the data clusters.
 * Every such piece is an item keyed by its host offset in a min-heap,
 * and when the chunk holding an item's bytes is in memory the item is
 * handled: tables yield more items, data goes to the target at its
 * guest offset.
 *
 * Images whose metadata comes before the data it maps (those pack
 * writes, and most that qemu-img writes) stream with nothing kept but
 * the pending items.  Bytes that no known item covered when they went
 * by are kept in a sparse spill file at their own offsets, so an item
 * learnt too late (its L2 table came after its data) is read from
 * there when the stream has ended.  An item whose bytes were neither
 * handled nor kept cannot be served: that is an error, never a guess.
 */
#include <config.h>

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "qcow2.h"

/* Chunks are a multiple of every cluster size, so that a cluster-sized
 * item never spans two of them.  (Tests pass smaller ones, a power of
 * two: images with larger clusters are then refused.)
 */
#define CHUNK_SIZE (4U * 1024 * 1024)
/* The largest cluster: the first chunk always holds the header cluster. */
#define MAX_CLUSTER_SIZE (1U << QCOW2_MAX_CLUSTER_BITS)
/* Items waiting for their bytes.  An image whose metadata all comes
 * first has one per data cluster waiting at the same time: this allows
 * 1 TiB of data in 64 KiB clusters, at 32 bytes each (512 MiB).
 */
#define MAX_PENDING_ITEMS (16U * 1024 * 1024)
/* Partly read items hold at most this much between chunks. */
#define MAX_PARTIAL_BYTES (256U * 1024 * 1024)
/* Data held back for a forward-only target, at most. */
#define MAX_HELD_BYTES (256U * 1024 * 1024)
size_t qcow2_stream_held_limit = MAX_HELD_BYTES;

enum item_kind {
  ITEM_L1,
  ITEM_L2,
  ITEM_DATA,
  ITEM_COMPRESSED,
};

struct item {
  uint64_t offset;              /* host offset of the bytes */
  uint64_t guest;               /* data: guest offset; L2: its L1 index */
  uint32_t length;              /* bytes */
  uint16_t kind;
  uint64_t id;                  /* for the guest-order queue */
};

/* For a forward-only target: the lowest guest offset an item still to
 * come may write, kept as a min-heap of keys with items marked done
 * instead of removed.
 */
struct gkey {
  uint64_t key;
  uint64_t id;
};

/* Bytes of the image kept in memory for later, once for every item
 * that names the same host range: an image may name one cluster from
 * any number of L2 entries (a crafted one, thousands), and what is kept
 * must follow the bytes of the stream, not the entries that name them.
 */
struct kept {
  struct kept *next;            /* in its bucket of the table */
  size_t refs;
  uint64_t host;
  uint32_t len;
  uint32_t filled;              /* bytes in data so far */
  unsigned char data[];
};

/* The kept ranges by host offset and length, chained in buckets. */
struct kept_table {
  struct kept **bucket;
  size_t nb;                    /* buckets, a power of two (or 0) */
  size_t n;                     /* ranges kept */
  uint64_t bytes;               /* their bytes */
};

/* Data that arrived before data with lower guest offsets, held until
 * everything before it is written.  A compressed cluster is held as it
 * arrived, and inflated when it goes out: what is held then follows the
 * bytes of the stream, not what they inflate to (a few hundred KiB of
 * compressed zeros would otherwise fill the limit of held data).
 */
struct held {
  uint64_t guest;
  size_t len;
  struct kept *kept;
  uint64_t host;                /* compressed: where it was, for messages */
  bool compressed;
};

/* An item whose bytes run on past the chunk in memory. */
struct partial {
  struct item it;
  struct kept *kept;
};

struct range {
  uint64_t start, end;
};

struct ranges {
  struct range *r;
  size_t len, cap;
};

struct stream_unpack {
  struct sc_endpoint *src, *dst;
  const char *name;             /* of the image, for messages */
  struct qcow2_header h;
  bool have_header;
  enum sc_codec codec;
  uint64_t vsize;

  /* Pending items, a min-heap on offset; items learnt after their
   * bytes went by wait in late until the end.
   */
  struct item *heap;
  size_t heap_len, heap_cap;
  struct item *late;
  size_t late_len, late_cap;
  struct partial *part;
  size_t part_len, part_cap;
  struct kept_table part_kept;  /* their bytes */

  /* The chunk in memory: bytes [chunk_off, chunk_off + chunk_len). */
  size_t chunk_size;            /* bytes read at a time */
  unsigned char *chunk;
  uint64_t chunk_off;
  size_t chunk_len;
  uint64_t stream_len;          /* once the end was read */
  bool ended;
  /* The L2 tables the L1 table names, sorted (zeros first). */
  uint64_t *l2_sorted;
  size_t nl2;

  /* Ranges of the chunk covered by items, and ranges spilled so far. */
  struct ranges covered;
  struct ranges spilled;
  int spill_fd;

  /* Guest ranges written, to zero the rest of a target that does not
   * read as zeros by itself.
   */
  struct ranges written;
  bool fresh;
  /* A forward-only target (a pipe) gets every byte in order: gaps are
   * filled with zeros up to the next write.
   */
  bool forward;
  uint64_t fwd_pos;
  struct gkey *gheap;
  size_t gheap_len, gheap_cap;
  uint64_t next_id;
  unsigned char *done;          /* bit per item id: handled */
  size_t done_cap;              /* bytes */
  struct held *held;            /* min-heap on guest */
  size_t held_len, held_cap;
  struct kept_table held_kept;  /* their bytes */
  unsigned char *cluster;       /* one decompressed cluster */
  bool *l2_seen;                /* per L1 index: table already listed */

  bool target_failed;           /* the last error is the target's */

  struct sc_progress prog;
  sc_progress_fn progress;
  void *progress_opaque;
};

/* ---- small containers ---------------------------------------------------- */

static int
grow (void **p, size_t *cap, size_t need, size_t elem, size_t max)
{
  size_t n;
  void *q;

  if (need <= *cap)
    return 0;
  n = *cap ? *cap * 2 : 64;
  if (n < need)
    n = need;
  if (n > max)
    n = max;
  if (need > max) {
    sc_set_error (EFBIG, "too many clusters waiting for their data "
                  "(more than %zu)", max);
    return -1;
  }
  q = realloc (*p, n * elem);
  if (q == NULL) {
    sc_set_error (errno, "out of memory");
    return -1;
  }
  *p = q;
  *cap = n;
  return 0;
}

/* The kept range [host, host+len) of t, or NULL. */
static size_t
kept_hash (const struct kept_table *t, uint64_t host, uint32_t len)
{
  uint64_t h = (host ^ ((uint64_t) len << 40)) * UINT64_C (0x9e3779b97f4a7c15);

  return (size_t) (h >> 32) & (t->nb - 1);
}

static struct kept *
kept_find (const struct kept_table *t, uint64_t host, uint32_t len)
{
  if (t->nb == 0)
    return NULL;
  for (struct kept *k = t->bucket[kept_hash (t, host, len)]; k; k = k->next)
    if (k->host == host && k->len == len)
      return k;
  return NULL;
}

/* A reference to the kept range [host, host+len) of t, made (empty,
 * filled 0) unless it is kept already.  limit bounds the bytes of t.
 */
static struct kept *
kept_get (struct kept_table *t, uint64_t host, uint32_t len, uint64_t limit,
          bool *made)
{
  struct kept *k = kept_find (t, host, len);
  size_t b;

  *made = false;
  if (k != NULL) {
    k->refs++;
    return k;
  }
  if (t->bytes + len > limit) {
    sc_set_error (EFBIG, "more than %" PRIu64 " MiB of the image would be "
                  "kept in memory", limit / (1024 * 1024));
    return NULL;
  }
  if (t->n + 1 > t->nb) {
    /* At least as many buckets as ranges: double and rehash. */
    size_t nb = t->nb ? t->nb * 2 : 64;
    struct kept **nbk = calloc (nb, sizeof *nbk);
    struct kept_table nt = { nbk, nb, t->n, t->bytes };

    if (nbk == NULL) {
      sc_set_error (errno, "out of memory");
      return NULL;
    }
    for (size_t i = 0; i < t->nb; i++)
      while (t->bucket[i]) {
        struct kept *m = t->bucket[i];
        size_t j = kept_hash (&nt, m->host, m->len);

        t->bucket[i] = m->next;
        m->next = nbk[j];
        nbk[j] = m;
      }
    free (t->bucket);
    *t = nt;
  }
  k = malloc (offsetof (struct kept, data) + len);
  if (k == NULL) {
    sc_set_error (errno, "out of memory");
    return NULL;
  }
  k->refs = 1;
  k->host = host;
  k->len = len;
  k->filled = 0;
  b = kept_hash (t, host, len);
  k->next = t->bucket[b];
  t->bucket[b] = k;
  t->n++;
  t->bytes += len;
  *made = true;
  return k;
}

/* Drop a reference; the last one frees the range. */
static void
kept_put (struct kept_table *t, struct kept *k)
{
  struct kept **pp;

  if (k == NULL || --k->refs > 0)
    return;
  for (pp = &t->bucket[kept_hash (t, k->host, k->len)]; *pp != k;
       pp = &(*pp)->next)
    ;
  *pp = k->next;
  t->n--;
  t->bytes -= k->len;
  free (k);
}

static void
kept_table_free (struct kept_table *t)
{
  for (size_t i = 0; i < t->nb; i++)
    while (t->bucket[i]) {
      struct kept *k = t->bucket[i];

      t->bucket[i] = k->next;
      free (k);
    }
  free (t->bucket);
}

static int
ranges_add (struct ranges *rs, uint64_t start, uint64_t end)
{
  if (start >= end)
    return 0;
  /* Touching or overlapping the last range (the same cluster named
   * twice): one range.
   */
  if (rs->len > 0 && rs->r[rs->len - 1].start <= start
      && rs->r[rs->len - 1].end >= start) {
    if (rs->r[rs->len - 1].end < end)
      rs->r[rs->len - 1].end = end;
    return 0;
  }
  if (grow ((void **) &rs->r, &rs->cap, rs->len + 1, sizeof *rs->r,
            SIZE_MAX / sizeof *rs->r) == -1)
    return -1;
  rs->r[rs->len++] = (struct range) { start, end };
  return 0;
}

static int
cmp_range (const void *a, const void *b)
{
  const struct range *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

/* Sort and merge overlapping or touching ranges. */
static void
ranges_normalize (struct ranges *rs)
{
  size_t out = 0;

  if (rs->len == 0)
    return;
  qsort (rs->r, rs->len, sizeof *rs->r, cmp_range);
  for (size_t i = 1; i < rs->len; i++) {
    if (rs->r[i].start <= rs->r[out].end) {
      if (rs->r[i].end > rs->r[out].end)
        rs->r[out].end = rs->r[i].end;
    }
    else
      rs->r[++out] = rs->r[i];
  }
  rs->len = out + 1;
}

/* Is [start, end) inside one range of a normalized list? */
static bool
ranges_contain (const struct ranges *rs, uint64_t start, uint64_t end)
{
  size_t lo = 0, hi = rs->len;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (rs->r[mid].end <= start)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < rs->len && rs->r[lo].start <= start && rs->r[lo].end >= end;
}

/* Min-heaps over arrays whose elements start with their uint64_t key
 * (struct item, struct gkey, struct held).  heap_up moves the element
 * at i up; heap_down moves the root down.
 */
#define HEAP_MAX_ELEM 40
_Static_assert (offsetof (struct item, offset) == 0
                && offsetof (struct gkey, key) == 0
                && offsetof (struct held, guest) == 0,
                "heap elements start with their key");
_Static_assert (sizeof (struct item) <= HEAP_MAX_ELEM
                && sizeof (struct gkey) <= HEAP_MAX_ELEM
                && sizeof (struct held) <= HEAP_MAX_ELEM,
                "heap elements fit the swap buffer");

static uint64_t
heap_key (const unsigned char *base, size_t elem, size_t i)
{
  uint64_t k;

  memcpy (&k, base + i * elem, sizeof k);
  return k;
}

static void
heap_swap (unsigned char *base, size_t elem, size_t a, size_t b)
{
  unsigned char t[HEAP_MAX_ELEM];

  memcpy (t, base + a * elem, elem);
  memcpy (base + a * elem, base + b * elem, elem);
  memcpy (base + b * elem, t, elem);
}

static void
heap_up (void *heap, size_t elem, size_t i)
{
  unsigned char *base = heap;

  while (i > 0
         && heap_key (base, elem, (i - 1) / 2) > heap_key (base, elem, i)) {
    heap_swap (base, elem, (i - 1) / 2, i);
    i = (i - 1) / 2;
  }
}

static void
heap_down (void *heap, size_t elem, size_t len)
{
  unsigned char *base = heap;
  size_t i = 0;

  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < len && heap_key (base, elem, l) < heap_key (base, elem, m))
      m = l;
    if (r < len && heap_key (base, elem, r) < heap_key (base, elem, m))
      m = r;
    if (m == i)
      break;
    heap_swap (base, elem, m, i);
    i = m;
  }
}

static int
heap_push (struct stream_unpack *s, const struct item *it)
{
  size_t i;

  if (grow ((void **) &s->heap, &s->heap_cap, s->heap_len + 1,
            sizeof *s->heap, MAX_PENDING_ITEMS) == -1)
    return -1;
  i = s->heap_len++;
  s->heap[i] = *it;
  heap_up (s->heap, sizeof *s->heap, i);
  return 0;
}

static struct item
heap_pop (struct stream_unpack *s)
{
  struct item top = s->heap[0];

  s->heap[0] = s->heap[--s->heap_len];
  heap_down (s->heap, sizeof *s->heap, s->heap_len);
  return top;
}

/* ---- guest order, for a forward-only target ------------------------------ */

static bool
item_done (const struct stream_unpack *s, uint64_t id)
{
  return id / 8 < s->done_cap && (s->done[id / 8] >> (id % 8)) & 1;
}

/* The bitmap covers every id pushed on the guest heap (which grows it). */
static void
mark_done (struct stream_unpack *s, uint64_t id)
{
  if (s->forward && id / 8 < s->done_cap)
    s->done[id / 8] |= (unsigned char) (1U << (id % 8));
}

static int
gheap_push (struct stream_unpack *s, uint64_t key, uint64_t id)
{
  size_t i;

  if (grow ((void **) &s->gheap, &s->gheap_cap, s->gheap_len + 1,
            sizeof *s->gheap, MAX_PENDING_ITEMS) == -1)
    return -1;
  /* The bitmap grows with the ids (it is zeroed as it grows). */
  if (id / 8 >= s->done_cap) {
    size_t old = s->done_cap;
    if (grow ((void **) &s->done, &s->done_cap, (size_t) (id / 8 + 1), 1,
              SIZE_MAX) == -1)
      return -1;
    memset (s->done + old, 0, s->done_cap - old);
  }
  i = s->gheap_len++;
  s->gheap[i] = (struct gkey) { key, id };
  heap_up (s->gheap, sizeof *s->gheap, i);
  return 0;
}

/* The lowest guest offset that an item not yet handled may write. */
static uint64_t
guest_floor (struct stream_unpack *s)
{
  while (s->gheap_len > 0 && item_done (s, s->gheap[0].id)) {
    s->gheap[0] = s->gheap[--s->gheap_len];
    heap_down (s->gheap, sizeof *s->gheap, s->gheap_len);
  }
  return s->gheap_len > 0 ? s->gheap[0].key : UINT64_MAX;
}

static int
held_push (struct stream_unpack *s, const void *buf, size_t len,
           uint64_t guest, bool compressed, uint64_t host)
{
  struct held hd = { guest, len, NULL, host, compressed };
  bool made;
  size_t i;

  /* Data clusters and compressed ones never share a range: a data
   * cluster is whole and aligned, a compressed one shorter.
   */
  if (!kept_find (&s->held_kept, host, (uint32_t) len)
      && s->held_kept.bytes + len > qcow2_stream_held_limit) {
    sc_set_error (EFBIG, "more than %zu MiB of the image's data arrived "
                  "before data it must follow, so it cannot go from a pipe "
                  "to a pipe: unpack to a file",
                  qcow2_stream_held_limit / (1024 * 1024));
    return -1;
  }
  if (grow ((void **) &s->held, &s->held_cap, s->held_len + 1,
            sizeof *s->held, MAX_PENDING_ITEMS) == -1)
    return -1;
  hd.kept = kept_get (&s->held_kept, host, (uint32_t) len,
                      qcow2_stream_held_limit, &made);
  if (hd.kept == NULL)
    return -1;
  if (made) {
    memcpy (hd.kept->data, buf, len);
    hd.kept->filled = (uint32_t) len;
  }
  i = s->held_len++;
  s->held[i] = hd;
  heap_up (s->held, sizeof *s->held, i);
  return 0;
}

static struct held
held_pop (struct stream_unpack *s)
{
  struct held top = s->held[0];

  s->held[0] = s->held[--s->held_len];
  heap_down (s->held, sizeof *s->held, s->held_len);
  return top;
}

/* A write to the target failed: the message names the target, and the
 * image's name is not put in front of it (see err_image).
 */
static int
target_error (struct stream_unpack *s)
{
  sc_error_prefix ("%s", s->dst->name);
  s->target_failed = true;
  return -1;
}

/* Inflate the compressed cluster at host (len bytes at p) into
 * s->cluster.
 */
static int
inflate_cluster (struct stream_unpack *s, const void *p, size_t len,
                 uint64_t host)
{
  if (sc_decompress (s->codec, p, len, s->cluster, s->h.cluster_size)
      == -1) {
    sc_error_prefix ("compressed cluster at host offset %" PRIu64, host);
    return -1;
  }
  return 0;
}

/* Zero len bytes at guest as the sink's rules say.  A target allocated
 * whole (-S 0), or a pipe, gets the zeros written, which costs as much
 * as data: they count in the progress, a chunk at a time.
 */
static int
sink_zero (struct stream_unpack *s, uint64_t len, uint64_t guest)
{
  if (!sc_sink_zero_is_written (s->dst))
    return sc_sink_zero (s->dst, len, guest);
  while (len > 0) {
    uint64_t n = SC_MIN (len, (uint64_t) s->chunk_size);

    if (sc_sink_zero (s->dst, n, guest) == -1)
      return -1;
    len -= n;
    guest += n;
    s->prog.done += n;
    if (s->progress)
      s->progress (&s->prog, s->progress_opaque);
  }
  return 0;
}

/* Write len bytes at guest, in order, filling the gap before it. */
static int
forward_write (struct stream_unpack *s, const void *buf, size_t len,
               uint64_t guest)
{
  len = (size_t) SC_MIN ((uint64_t) len, s->vsize - guest);
  if (guest < s->fwd_pos) {
    sc_set_error (EINVAL, "guest offset %" PRIu64 " is written twice",
                  guest);
    return -1;
  }
  if ((guest > s->fwd_pos
       && sink_zero (s, guest - s->fwd_pos, s->fwd_pos) == -1)
      || sc_sink_write (s->dst, buf, len, guest, true, NULL) == -1)
    return target_error (s);
  s->fwd_pos = guest + len;
  return 0;
}

/* Write out what is held, as far as nothing still to come can go
 * before it.
 */
static int
release_held (struct stream_unpack *s)
{
  uint64_t floor = guest_floor (s);

  while (s->held_len > 0 && s->held[0].guest <= floor) {
    struct held hd = held_pop (s);
    int r = 0;

    if (hd.compressed)
      r = inflate_cluster (s, hd.kept->data, hd.len, hd.host);
    if (r == 0)
      r = hd.compressed
        ? forward_write (s, s->cluster, s->h.cluster_size, hd.guest)
        : forward_write (s, hd.kept->data, hd.len, hd.guest);
    kept_put (&s->held_kept, hd.kept);
    if (r == -1)
      return -1;
  }
  return 0;
}

/* ---- what the items mean -------------------------------------------------- */

/* A new item: served from the chunk if its bytes are still to come or
 * in memory, else (its bytes went by) at the end.
 */
static int
add_item (struct stream_unpack *s, uint64_t offset, uint64_t length,
          enum item_kind kind, uint64_t guest)
{
  struct item it = { offset, guest, (uint32_t) length, (uint16_t) kind,
                     s->next_id };
  uint64_t end;

  if (length == 0)
    return 0;
  if (SC_ADD_OVERFLOW (offset, length, &end) || end > QCOW2_MAX_HOST_OFFSET) {
    sc_set_error (EINVAL, "cluster at host offset %" PRIu64
                  " lies beyond any possible image", offset);
    return -1;
  }
  if (s->forward) {
    /* Where the item may write: its guest offset, or for a table the
     * start of what it maps.
     */
    uint64_t key = kind == ITEM_L1 ? 0
      : kind == ITEM_L2 ? (guest * s->h.l2_entries) << s->h.cluster_bits
      : guest;
    if (gheap_push (s, key, it.id) == -1)
      return -1;
  }
  s->next_id++;
  if (offset < s->chunk_off) {
    if (grow ((void **) &s->late, &s->late_cap, s->late_len + 1,
              sizeof *s->late, MAX_PENDING_ITEMS) == -1)
      return -1;
    s->late[s->late_len++] = it;
    return 0;
  }
  return heap_push (s, &it);
}

/* Write the data of an item at guest: len bytes at buf, or when
 * compressed, the cluster that they inflate to.
 */
static int
write_guest (struct stream_unpack *s, const void *buf, size_t len,
             uint64_t guest, bool compressed, uint64_t host)
{
  if (guest >= s->vsize)
    return 0;
  if (s->forward) {
    /* In order if nothing still to come goes before it; else held. */
    if (s->held_len > 0 || guest > guest_floor (s)) {
      if (held_push (s, buf, len, guest, compressed, host) == -1)
        return -1;
      return release_held (s);
    }
  }
  if (compressed) {
    if (inflate_cluster (s, buf, len, host) == -1)
      return -1;
    buf = s->cluster;
    len = s->h.cluster_size;
  }
  if (s->forward)
    return forward_write (s, buf, len, guest);
  len = (size_t) SC_MIN ((uint64_t) len, s->vsize - guest);
  if (sc_sink_write (s->dst, buf, len, guest, true, NULL) == -1)
    return target_error (s);
  return s->fresh ? 0 : ranges_add (&s->written, guest, guest + len);
}

/* The tables the header places: the header itself, the L1 and the
 * refcount table.
 */
#define FIXED_TABLES 3
struct fixed_table { uint64_t start, end; const char *what; };

static void
fixed_tables (const struct qcow2_header *h, struct fixed_table *t)
{
  uint64_t l1_bytes = (uint64_t) h->l1_size * QCOW2_L1E_SIZE;
  uint64_t rt_bytes = (uint64_t) h->refcount_table_clusters * h->cluster_size;

  /* The header reader bounded both tables inside the file. */
  t[0] = (struct fixed_table) { 0, h->cluster_size, "header" };
  t[1] = (struct fixed_table) { h->l1_table_offset,
                                h->l1_table_offset + l1_bytes, "L1 table" };
  t[2] = (struct fixed_table) { h->refcount_table_offset,
                                h->refcount_table_offset + rt_bytes,
                                "refcount table" };
}

/* Tables that overlap each other or the header: one would be read as
 * the other.
 */
static int
refuse_overlapping_tables (const struct qcow2_header *h)
{
  struct fixed_table t[FIXED_TABLES];

  fixed_tables (h, t);
  for (int i = 0; i < FIXED_TABLES; i++)
    for (int j = i + 1; j < FIXED_TABLES; j++)
      if (t[i].start < t[i].end && t[j].start < t[j].end
          && t[i].start < t[j].end && t[j].start < t[i].end) {
        sc_set_error (EINVAL, "the %s at host offset %" PRIu64 " overlaps "
                      "the %s at host offset %" PRIu64, t[j].what,
                      t[j].start, t[i].what, t[i].start);
        return -1;
      }
  return 0;
}

/* Two L1 entries naming one L2 table is damage, and in a stream it
 * would multiply the work of that table without bound: refuse it.
 */
static int
check_l2_offsets (struct stream_unpack *s, const unsigned char *p)
{
  const struct qcow2_header *h = &s->h;
  uint64_t *offs = malloc ((size_t) h->l1_size * sizeof *offs);
  uint64_t shared;

  if (offs == NULL) {
    sc_set_error (errno, "out of memory");
    return -1;
  }
  for (uint64_t i = 0; i < h->l1_size; i++)
    offs[i] = sc_get_be64 (p + i * QCOW2_L1E_SIZE) & QCOW2_L1E_OFFSET_MASK;
  shared = qcow2_l1_shared_l2 (offs, h->l1_size);
  /* Kept, sorted, for refusing data on an L2 table. */
  free (s->l2_sorted);
  s->l2_sorted = offs;
  s->nl2 = h->l1_size;
  if (shared != 0) {
    sc_set_error (EINVAL, "the L2 table at host offset %" PRIu64
                  " is named by two L1 entries", shared);
    return -1;
  }
  return 0;
}

static int
handle_l1 (struct stream_unpack *s, const unsigned char *p)
{
  const struct qcow2_header *h = &s->h;

  if (h->l1_size > 0 && check_l2_offsets (s, p) == -1)
    return -1;
  for (uint64_t i = 0; i < h->l1_size; i++) {
    uint64_t e = sc_get_be64 (p + i * QCOW2_L1E_SIZE);
    uint64_t off = e & QCOW2_L1E_OFFSET_MASK;
    unsigned faults = qcow2_l1_entry_faults (h, e);

    if (faults & QCOW2_FAULT_RESERVED) {
      sc_set_error (EINVAL, "L1 entry %" PRIu64 " has reserved bits set",
                    i);
      return -1;
    }
    /* qemu reads it as "no table"; its check reads the header as one. */
    if (off == 0 && e != 0) {
      sc_set_error (EINVAL, "L1 entry %" PRIu64 " (0x%016" PRIx64 ") names "
                    "host offset 0, the header, as its L2 table", i, e);
      return -1;
    }
    if (off == 0)
      continue;
    if (faults & QCOW2_FAULT_MISALIGNED) {
      sc_set_error (EINVAL, "L1 entry %" PRIu64 ": L2 table offset %"
                    PRIu64 " is not aligned to a cluster", i, off);
      return -1;
    }
    {
      struct fixed_table t[FIXED_TABLES];

      fixed_tables (h, t);
      for (int k = 0; k < FIXED_TABLES; k++)
        if (t[k].start < t[k].end && off < t[k].end
            && t[k].start < off + h->cluster_size) {
          sc_set_error (EINVAL, "the L2 table at host offset %" PRIu64
                        " overlaps the %s at host offset %" PRIu64, off,
                        t[k].what, t[k].start);
          return -1;
        }
    }
    if (add_item (s, off, h->cluster_size, ITEM_L2, i) == -1)
      return -1;
  }
  return 0;
}

/* Data at [start, start+len) must not be metadata the decoder knows
 * of (the header, the L1 and refcount tables, the L2 tables): it would
 * read a table as guest data.  qemu reads it; its check counts it.
 */
static int
refuse_data_on_meta (const struct stream_unpack *s, const char *kind,
                     uint64_t start, uint64_t len, uint64_t guest)
{
  uint64_t cs = s->h.cluster_size, end, lo = 0, hi = s->nl2, first;
  struct fixed_table fixed[FIXED_TABLES];

  fixed_tables (&s->h, fixed);
  if (SC_ADD_OVERFLOW (start, len, &end))
    end = UINT64_MAX;
  for (size_t i = 0; i < FIXED_TABLES; i++)
    if (fixed[i].start < fixed[i].end && start < fixed[i].end
        && fixed[i].start < end) {
      sc_set_error (EINVAL, "the %s at host offset %" PRIu64 " (guest "
                    "offset %" PRIu64 ") overlaps the %s at host offset %"
                    PRIu64, kind, start, guest, fixed[i].what,
                    fixed[i].start);
      return -1;
    }
  /* The first L2 table that ends after start (offset 0 is none). */
  first = SC_MAX (start >= cs ? start - cs + 1 : 0, 1);
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    if (s->l2_sorted[mid] < first)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < s->nl2 && s->l2_sorted[lo] < end) {
    sc_set_error (EINVAL, "the %s at host offset %" PRIu64 " (guest offset "
                  "%" PRIu64 ") overlaps the L2 table at host offset %"
                  PRIu64, kind, start, guest, s->l2_sorted[lo]);
    return -1;
  }
  return 0;
}

static int
handle_l2 (struct stream_unpack *s, const unsigned char *p, uint64_t l1_index)
{
  const struct qcow2_header *h = &s->h;
  bool extl2 = h->l2_entry_size != QCOW2_L2E_SIZE;
  uint64_t sub = h->cluster_size / QCOW2_SUBCLUSTERS;

  /* Each L1 index has one table; a table listed twice is damage (and
   * would multiply the work).
   */
  if (s->l2_seen[l1_index]) {
    sc_set_error (EINVAL, "L1 entry %" PRIu64 " was read twice", l1_index);
    return -1;
  }
  s->l2_seen[l1_index] = true;

  for (uint64_t j = 0; j < h->l2_entries; j++) {
    uint64_t l2e, bitmap, host;
    uint64_t guest = (l1_index * h->l2_entries + j) << h->cluster_bits;
    enum qcow2_cluster_type type;

    if (guest >= s->vsize)
      break;
    qcow2_l2_entry_get (h, p, j, &l2e, &bitmap);
    host = l2e & QCOW2_L2E_OFFSET_MASK;
    if (qcow2_l2_entry_type (h, l2e, &type) == -1) {
      sc_error_prefix ("L2 entry for guest offset %" PRIu64, guest);
      return -1;
    }
    if (type == QCOW2_CLUSTER_COMPRESSED) {
      uint64_t off, n;

      qcow2_compressed_descriptor (h, l2e, &off, &n);
      if (refuse_data_on_meta (s, "compressed cluster", off, n, guest) == -1
          || add_item (s, off, n, ITEM_COMPRESSED, guest) == -1)
        return -1;
      continue;
    }
    if (extl2) {
      uint32_t alloc = (uint32_t) (bitmap & QCOW2_L2_BITMAP_ALL_ALLOC);
      unsigned faults = qcow2_l2_bitmap_faults (type, bitmap);

      if (faults & QCOW2_FAULT_SUBCLUSTER_BOTH) {
        sc_set_error (EINVAL, "corrupt extended L2 entry at guest offset "
                      "%" PRIu64 ": a subcluster is both allocated and "
                      "zero", guest);
        return -1;
      }
      /* Offset 0 is a place only in an external data file, which a
       * stream cannot follow.
       */
      if ((faults & QCOW2_FAULT_UNALLOCATED_ALLOC)
          || (alloc != 0 && host == 0)) {
        sc_set_error (EINVAL, "corrupt extended L2 entry at guest offset "
                      "%" PRIu64 ": allocated subclusters in an "
                      "unallocated cluster", guest);
        return -1;
      }
      /* Runs of allocated subclusters are items of their own. */
      for (unsigned i = 0; i < QCOW2_SUBCLUSTERS;) {
        unsigned k = i;
        if (!((alloc >> i) & 1)) {
          i++;
          continue;
        }
        while (k < QCOW2_SUBCLUSTERS && ((alloc >> k) & 1))
          k++;
        if (refuse_data_on_meta (s, "data cluster", host + i * sub,
                                 (k - i) * sub, guest + i * sub) == -1
            || add_item (s, host + i * sub, (k - i) * sub, ITEM_DATA,
                         guest + i * sub) == -1)
          return -1;
        i = k;
      }
      continue;
    }
    if (type == QCOW2_CLUSTER_NORMAL
        && (refuse_data_on_meta (s, "data cluster", host, h->cluster_size,
                                 guest) == -1
            || add_item (s, host, h->cluster_size, ITEM_DATA, guest) == -1))
      return -1;
  }
  return 0;
}

/* The item's bytes, all of them (len == it->length) or, for a
 * compressed cluster at the end of the stream, as many as there are.
 */
static int
handle (struct stream_unpack *s, const struct item *it,
        const unsigned char *p, size_t len)
{
  /* Done before its writes, which may then go out at once. */
  mark_done (s, it->id);
  switch ((enum item_kind) it->kind) {
  case ITEM_L1:
    return handle_l1 (s, p);
  case ITEM_L2:
    return handle_l2 (s, p, it->guest);
  case ITEM_DATA:
    return write_guest (s, p, len, it->guest, false, it->offset);
  case ITEM_COMPRESSED:
    return write_guest (s, p, len, it->guest, true, it->offset);
  }
  return 0;
}

static const char *
item_name (const struct item *it)
{
  switch ((enum item_kind) it->kind) {
  case ITEM_L1: return "the L1 table";
  case ITEM_L2: return "an L2 table";
  case ITEM_DATA: return "a data cluster";
  case ITEM_COMPRESSED: return "a compressed cluster";
  }
  return "a cluster";
}

/* A compressed cluster that the end of the stream cuts: its last
 * sector holds the last byte of its data (qemu does not pad an image
 * beyond it), so with that sector missing the image is cut short; cut
 * inside it, only decoding can tell.
 */
static int
handle_compressed_tail (struct stream_unpack *s, const struct item *it,
                        const unsigned char *p, size_t len)
{
  if (it->length - len >= QCOW2_COMPRESSED_SECTOR) {
    sc_set_error (EIO, "the stream ended at %" PRIu64 " bytes, inside "
                  "%s at host offset %" PRIu64 " (%zu of its %" PRIu32
                  " bytes are missing): the image is cut short",
                  s->stream_len, item_name (it), it->offset,
                  it->length - len, it->length);
    return -1;
  }
  if (handle (s, it, p, len) == -1) {
    sc_error_prefix ("the stream ended at %" PRIu64 " bytes, inside the "
                     "last sector of %s at host offset %" PRIu64,
                     s->stream_len, item_name (it), it->offset);
    return -1;
  }
  return 0;
}

/* The part of an item's bytes no other item may also claim: all of
 * them, but for a compressed cluster, whose first and last sectors may
 * hold the end of the one before and the start of the one after.
 */
static void
item_cover (const struct item *it, uint64_t *start, uint64_t *end)
{
  *start = it->offset;
  *end = it->offset + it->length;
  if (it->kind == ITEM_COMPRESSED) {
    *start = SC_ROUND_UP (it->offset, QCOW2_COMPRESSED_SECTOR);
    *end = *end >= *start + QCOW2_COMPRESSED_SECTOR
      ? *end - QCOW2_COMPRESSED_SECTOR : *start;
  }
}

/* ---- the stream ----------------------------------------------------------- */

static int
read_chunk (struct stream_unpack *s)
{
  size_t got;

  s->chunk_off += s->chunk_len;
  s->chunk_len = 0;
  if (sc_ep_read_some (s->src, s->chunk, s->chunk_size, s->chunk_off,
                       &got) == -1)
    return -1;
  s->chunk_len = got;
  if (got < s->chunk_size) {
    s->ended = true;
    s->stream_len = s->chunk_off + got;
  }
  s->prog.done += got;
  if (s->progress)
    s->progress (&s->prog, s->progress_opaque);
  return 0;
}

/* Hand the chunk's bytes to every item they belong to, then keep what
 * no item covered.
 */
static int
process_chunk (struct stream_unpack *s)
{
  uint64_t cend = s->chunk_off + s->chunk_len;

  s->covered.len = 0;

  /* Items begun in an earlier chunk. */
  for (size_t i = 0; i < s->part_len;) {
    struct partial *pt = &s->part[i];
    struct kept *k = pt->kept;
    /* Items of the same range share its bytes: the first of them
     * takes this chunk's part.
     */
    uint64_t at = k->host + k->filled;
    uint64_t a, b;

    if (k->filled < k->len && at >= s->chunk_off && at < cend) {
      size_t n = (size_t) SC_MIN ((uint64_t) (k->len - k->filled), cend - at);

      memcpy (k->data + k->filled, s->chunk + (at - s->chunk_off), n);
      k->filled += (uint32_t) n;
    }
    item_cover (&pt->it, &a, &b);
    if (ranges_add (&s->covered, SC_MAX (a, s->chunk_off),
                    SC_MIN (b, cend)) == -1)
      return -1;
    if (k->filled == k->len) {
      struct partial done = *pt;
      int r;

      s->part[i] = s->part[--s->part_len];
      r = handle (s, &done.it, k->data, k->filled);
      kept_put (&s->part_kept, k);
      if (r == -1)
        return -1;
      continue;
    }
    i++;
  }

  while (s->heap_len > 0 && s->heap[0].offset < cend) {
    struct item it = heap_pop (s);
    uint64_t a, b;

    /* Pushed while an earlier chunk was in memory, but behind it: its
     * bytes went by before anyone knew.
     */
    if (it.offset < s->chunk_off) {
      if (grow ((void **) &s->late, &s->late_cap, s->late_len + 1,
                sizeof *s->late, MAX_PENDING_ITEMS) == -1)
        return -1;
      s->late[s->late_len++] = it;
      continue;
    }
    item_cover (&it, &a, &b);
    if (ranges_add (&s->covered, a, SC_MIN (b, cend)) == -1)
      return -1;
    if (it.offset + it.length <= cend) {
      if (handle (s, &it, s->chunk + (it.offset - s->chunk_off),
                  it.length) == -1)
        return -1;
    }
    else if (s->ended && it.kind == ITEM_COMPRESSED) {
      /* The last compressed cluster's sectors may run past the end. */
      if (handle_compressed_tail (s, &it,
                                  s->chunk + (it.offset - s->chunk_off),
                                  (size_t) (cend - it.offset)) == -1)
        return -1;
    }
    else if (s->ended) {
      sc_set_error (EIO, "the stream ended at %" PRIu64 " bytes, inside "
                    "%s at host offset %" PRIu64, s->stream_len,
                    item_name (&it), it.offset);
      return -1;
    }
    else {
      struct partial pt = { it, NULL };
      bool made;

      if (grow ((void **) &s->part, &s->part_cap, s->part_len + 1,
                sizeof *s->part, MAX_PENDING_ITEMS) == -1)
        return -1;
      pt.kept = kept_get (&s->part_kept, it.offset, it.length,
                          MAX_PARTIAL_BYTES, &made);
      if (pt.kept == NULL) {
        if (sc_error_errno () == EFBIG)
          sc_set_error (EFBIG, "too many clusters run on past %" PRIu64
                        " bytes of the stream", cend);
        return -1;
      }
      if (made) {
        pt.kept->filled = (uint32_t) (cend - it.offset);
        memcpy (pt.kept->data, s->chunk + (it.offset - s->chunk_off),
                pt.kept->filled);
      }
      s->part[s->part_len++] = pt;
    }
  }

  /* Keep what nothing covered, at its own offset. */
  ranges_normalize (&s->covered);
  {
    uint64_t pos = s->chunk_off;

    for (size_t i = 0; i <= s->covered.len; i++) {
      uint64_t stop = i < s->covered.len
        ? SC_MAX (s->covered.r[i].start, s->chunk_off) : cend;
      if (stop > pos) {
        const unsigned char *p = s->chunk + (pos - s->chunk_off);
        size_t n = (size_t) (stop - pos);

        /* Zeros need no keeping: the spill file reads them back. */
        if (!sc_is_zero (p, n)
            && sc_full_pwrite (s->spill_fd, p, n, pos) == -1) {
          sc_error_prefix ("spill file");
          return -1;
        }
        if (ranges_add (&s->spilled, pos, stop) == -1)
          return -1;
      }
      if (i < s->covered.len && s->covered.r[i].end > pos)
        pos = SC_MIN (s->covered.r[i].end, cend);
    }
  }
  return 0;
}

/* After the end: items whose bytes went by before they were known. */
static int
serve_late (struct stream_unpack *s)
{
  unsigned char *buf = NULL;
  size_t buf_len = 0;
  int ret = -1;

  size_t next = 0;

  ranges_normalize (&s->spilled);
  /* Oldest first: they were learnt in guest order, which a pipe target
   * needs; items learnt here are appended and served in turn.
   */
  while (next < s->late_len || s->heap_len > 0) {
    struct item it;
    uint64_t end;

    if (next < s->late_len)
      it = s->late[next++];
    else
      it = heap_pop (s);
    end = it.offset + it.length;
    if (it.kind == ITEM_COMPRESSED && end > s->stream_len)
      end = SC_MAX (it.offset, s->stream_len);
    if (it.offset >= s->stream_len || end > s->stream_len) {
      sc_set_error (EIO, "%s at host offset %" PRIu64 " lies past the "
                    "end of the stream (%" PRIu64 " bytes)",
                    item_name (&it), it.offset, s->stream_len);
      goto out;
    }
    if (!ranges_contain (&s->spilled, it.offset, end)) {
      sc_set_error (ENOTSUP, "%s at host offset %" PRIu64 " is needed "
                    "after it went by, and was not kept: this image "
                    "cannot be read from a stream (unpack it from a file)",
                    item_name (&it), it.offset);
      goto out;
    }
    if (end - it.offset > buf_len) {
      unsigned char *nb = realloc (buf, (size_t) (end - it.offset));
      if (nb == NULL) {
        sc_set_error (errno, "out of memory");
        goto out;
      }
      buf = nb;
      buf_len = (size_t) (end - it.offset);
    }
    if (sc_full_pread (s->spill_fd, buf, (size_t) (end - it.offset),
                       it.offset) == -1) {
      sc_error_prefix ("spill file");
      goto out;
    }
    /* Tables learnt here add more late items, or heap items whose
     * offsets are all behind the end by now.
     */
    s->chunk_off = s->stream_len;
    if (handle (s, &it, buf, (size_t) (end - it.offset)) == -1)
      goto out;
  }
  ret = 0;
 out:
  free (buf);
  return ret;
}

/* Make everything not written read as zeros, on a target that does not
 * by itself.
 */
static int
zero_the_rest (struct stream_unpack *s)
{
  uint64_t pos = 0;

  if (s->forward) {
    /* Every item is done: everything held goes out. */
    if (release_held (s) == -1)
      return -1;
    return s->vsize > s->fwd_pos
      ? sink_zero (s, s->vsize - s->fwd_pos, s->fwd_pos) : 0;
  }
  if (s->fresh)
    return 0;
  ranges_normalize (&s->written);
  for (size_t i = 0; i <= s->written.len; i++) {
    uint64_t stop = i < s->written.len ? s->written.r[i].start : s->vsize;
    if (stop > pos && sink_zero (s, stop - pos, pos) == -1)
      return -1;
    if (i < s->written.len)
      pos = s->written.r[i].end;
  }
  return 0;
}

/* The header cluster, parsed by the same code as for files: it is
 * written to the spill file (where it belongs anyway) and read from
 * there.
 */
static int
read_header (struct stream_unpack *s)
{
  const unsigned char *p = s->chunk;
  size_t n = SC_MIN (s->chunk_len, (size_t) MAX_CLUSTER_SIZE);
  struct sc_endpoint *spill;
  int r;

  if (s->chunk_len < QCOW2_V2_HEADER_SIZE
      || sc_get_be32 (p + QCOW2_HDR_MAGIC) != QCOW2_MAGIC) {
    sc_set_error (EINVAL, "not a qcow2 image");
    return -1;
  }
  if (sc_get_be64 (p + QCOW2_HDR_BACKING_OFFSET) != 0) {
    sc_set_error (ENOTSUP, "an image with a backing file cannot be read "
                  "from a stream");
    return -1;
  }
  if (sc_full_pwrite (s->spill_fd, p, n, 0) == -1
      || ftruncate (s->spill_fd, MAX_CLUSTER_SIZE) == -1) {
    sc_error_prefix ("spill file");
    return -1;
  }
  /* The header reader reads through an endpoint; the spill file's is
   * borrowed (its descriptor stays open).  The rest of the image is
   * not there yet, so offsets are bounded only by what qcow2 can
   * address.
   */
  spill = sc_endpoint_open_fd_source (s->spill_fd, "spill file",
                                      SC_MAP_NONE);
  if (spill == NULL) {
    sc_error_prefix ("spill file");
    return -1;
  }
  r = qcow2_header_read (spill, QCOW2_MAX_HOST_OFFSET, true, &s->h);
  sc_ep_close (spill);
  if (r == -1)
    return -1;
  s->have_header = true;
  if (s->h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
    sc_set_error (ENOTSUP, "an image with an external data file cannot "
                  "be read from a stream");
    return -1;
  }
  if (s->h.cluster_size > s->chunk_size) {
    sc_set_error (EINVAL, "cluster size %" PRIu32 " is too large",
                  s->h.cluster_size);
    return -1;
  }
  s->vsize = qcow2_guest_size (&s->h);
  /* The header reader accepts only the types the codecs know, and
   * they are numbered as in the header.
   */
  s->codec = (enum sc_codec) s->h.compression_type;
  return 0;
}

int
qcow2_unpack_stream (struct sc_endpoint *src, struct sc_endpoint *dst,
                     sc_progress_fn progress, void *progress_opaque)
{
  return qcow2_unpack_stream_chunked (src, dst, CHUNK_SIZE, progress,
                                      progress_opaque);
}

int
qcow2_unpack_stream_chunked (struct sc_endpoint *src,
                             struct sc_endpoint *dst, size_t chunk_size,
                             sc_progress_fn progress, void *progress_opaque)
{
  const char *target = dst->name, *spill_near;
  struct stream_unpack s = {
    .src = src, .dst = dst, .name = src->name, .spill_fd = -1,
    .chunk_size = chunk_size,
    .progress = progress, .progress_opaque = progress_opaque,
  };
  int ret = -1;

  if (!(src->flags & SC_EP_STREAM)) {
    sc_set_error (EINVAL, "%s: not a stream", src->name);
    return -1;
  }
  if (chunk_size < ((size_t) 1 << QCOW2_MIN_CLUSTER_BITS)
      || chunk_size > CHUNK_SIZE
      || (chunk_size & (chunk_size - 1)) != 0) {
    sc_set_error (EINVAL, "chunk size %zu is not a power of two from "
                  "512 bytes to %u MiB", chunk_size,
                  CHUNK_SIZE / (1024 * 1024));
    return -1;
  }
  s.chunk = malloc (chunk_size);
  if (s.chunk == NULL) {
    sc_set_error (errno, "out of memory");
    return -1;
  }
  s.spill_fd = sc_spill_open_for (dst, target, &spill_near);
  if (s.spill_fd == -1)
    goto out;
  if (read_chunk (&s) == -1)
    goto out;
  if (read_header (&s) == -1) {
    sc_error_prefix ("%s", s.name);
    goto out;
  }
  s.cluster = malloc (s.h.cluster_size);
  s.l2_seen = calloc (s.h.l1_size ? s.h.l1_size : 1, sizeof *s.l2_seen);
  if (s.cluster == NULL || s.l2_seen == NULL) {
    sc_set_error (errno, "out of memory");
    goto out;
  }

  if (sc_ep_set_size (dst, s.vsize) == -1) {
    sc_error_prefix ("%s", target);
    goto out;
  }
  s.forward = !(s.dst->flags & SC_EP_SEEKABLE);
  /* A target allocated whole (-S 0) gets what was not written zeroed
   * at the end, as one that does not read as zero does.
   */
  s.fresh = (s.dst->flags & SC_EP_FRESH_ZEROS) && !s.dst->allocate;

  if (refuse_overlapping_tables (&s.h) == -1
      || add_item (&s, s.h.l1_table_offset,
                   (uint64_t) s.h.l1_size * QCOW2_L1E_SIZE, ITEM_L1, 0)
      == -1)
    goto err_image;
  for (;;) {
    if (process_chunk (&s) == -1)
      goto err_image;
    if (s.ended)
      break;
    if (sc_check_interrupt () == -1 || read_chunk (&s) == -1)
      goto out;
  }
  /* The last compressed clusters' sectors may run past the end. */
  while (s.part_len > 0) {
    struct partial pt = s.part[--s.part_len];
    int r = -1;

    if (pt.it.kind == ITEM_COMPRESSED)
      r = handle_compressed_tail (&s, &pt.it, pt.kept->data,
                                  pt.kept->filled);
    else
      sc_set_error (EIO, "the stream ended at %" PRIu64 " bytes, inside "
                    "%s at host offset %" PRIu64, s.stream_len,
                    item_name (&pt.it), pt.it.offset);
    kept_put (&s.part_kept, pt.kept);
    if (r == -1)
      goto err_image;
  }
  /* Zeros were not written to the spill file: it must still read
   * them back up to the end.
   */
  if (ftruncate (s.spill_fd, (off_t) s.stream_len) == -1) {
    sc_set_error (errno, "spill file: %s", strerror (errno));
    goto out;
  }
  if (serve_late (&s) == -1)
    goto err_image;
  /* Every item is done: what is held goes out now, while an error
   * (a held compressed cluster that does not inflate) is still the
   * image's.
   */
  if (s.forward && release_held (&s) == -1)
    goto err_image;
  if (zero_the_rest (&s) == -1 || sc_ep_flush (s.dst) == -1) {
    sc_error_prefix ("%s", target);
    goto out;
  }
  /* All is written: the count is complete, and its total known. */
  s.prog.total = s.prog.done;
  if (s.progress)
    s.progress (&s.prog, s.progress_opaque);
  ret = 0;
  goto out;

 err_image:
  if (!s.target_failed)
    sc_error_prefix ("%s", s.name);
 out:
  kept_table_free (&s.part_kept);
  kept_table_free (&s.held_kept);
  free (s.held);
  free (s.gheap);
  free (s.done);
  free (s.part);
  free (s.heap);
  free (s.late);
  free (s.covered.r);
  free (s.spilled.r);
  free (s.written.r);
  free (s.chunk);
  free (s.cluster);
  free (s.l2_seen);
  free (s.l2_sorted);
  if (s.spill_fd >= 0)
    close (s.spill_fd);
  if (s.have_header)
    qcow2_header_free (&s.h);
  return ret;
}
