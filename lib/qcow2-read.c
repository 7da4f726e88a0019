/* The qcow2 reader: the guest view of an image through its L1/L2
 * tables, backing chain, external data file and internal snapshots.
 *
 * The chain is opened once into an array of layers (0 = the image
 * itself, then its backing files).  All lookups go through one
 * function, chain_status(), which answers "what is at this guest
 * offset, for how long, and in which layer" exactly the way qemu's
 * block status does; reading, extents and the qemu-img style map are
 * all built on it, so they cannot disagree.
 *
 * L2 tables are kept in a small LRU cache shared by all layers and
 * protected by a mutex.  Lookups copy what they need out of the cache
 * while holding the lock, so data reads and decompression run
 * concurrently outside it.
 *
 * Every file is read through a source endpoint (sc_ep_pread), and where
 * the holes of a file matter (raw backing files, metadata-preallocated
 * images) they come from the endpoint's extents, so an image served by
 * anything that implements an endpoint reads exactly as a local file.
 */
#include <config.h>

#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "internal.h"
#include "qcow2.h"
#include "lock.h"

#define DEFAULT_CACHE_BYTES     (4 * 1024 * 1024)
/* Enough tables that a lookup never evicts the table it just loaded. */
#define MIN_CACHE_TABLES        2
/* Bounds the linear search of the cache with tiny clusters. */
#define MAX_CACHE_TABLES        1024
/* Chains this deep open (with qemu-img create -b they take seconds
 * to make); the cost per level is a struct, a parsed header and an L1
 * table while open, and at most OPEN_BACKING_FILES descriptors.
 */
#define DEFAULT_MAX_DEPTH       1024
/* Backing files are closed, least recently used first, when more than
 * this many are open, and opened again when they are read: a chain of
 * hundreds of images then stays within a small descriptor limit
 * (ulimit -n 64 leaves room for the target, spill files and NBD).
 */
#define OPEN_BACKING_FILES      16
/* What the L1 tables of a whole chain may take: each is capped by the
 * format (QCOW2_MAX_L1_BYTES), and so is their sum, or a long chain of
 * images with huge L1 tables would take gigabytes.
 */
#define CHAIN_MAX_L1_BYTES      ((uint64_t) 256 * 1024 * 1024)
/* Header, L1 table, refcount table, snapshot table. */
#define MAX_META_RANGES         4
/* qemu sizes images in whole 512-byte sectors. */
#define RAW_SECTOR_SIZE         512
/* The unit of st_blocks. */
#define STAT_BLOCK_SIZE         512
/* The extents of a raw layer or a data file are asked for at most this
 * much at a time and kept for the lookups that follow: a walk through
 * an image asks for the status of one run after the other, and asking
 * the endpoint again for each run would cost a walk over every extent
 * up to the end of the run each time (quadratic in the number of
 * extents), while an unbounded window could cost a walk over the whole
 * file for one lookup.  64 MiB keeps a hole of 64 GiB to 1024 requests
 * and the list of a fragmented window to a few hundred KiB.
 */
#define EXTENT_WINDOW           ((uint64_t) 64 * 1024 * 1024)

/* The extents of the window [start, end) of an endpoint: sorted,
 * contiguous and covering the window.
 */
struct extent_cache {
  struct sc_extent_list list;
  uint64_t start, end;
};

struct layer {
  char *filename;               /* as opened (resolved) */
  struct sc_endpoint *ep;       /* the image file; NULL while closed */
  bool own_ep;                  /* closed with the layer (not the caller's) */
  /* A backing file that may be closed while nobody reads it and opened
   * again by name (see layer_pin); pins and last_use are protected by
   * the chain's file_lock.
   */
  bool closable;
  unsigned pins;
  uint64_t last_use;
  struct sc_fingerprint fp;     /* as first opened */
  uint64_t file_size;           /* ep's size */
  uint64_t size;                /* guest-visible size of this layer */
  bool have_id;                 /* dev and ino are known */
  uint64_t dev, ino;
  bool raw;
  /* Raw layers: the extents of ep; qcow2 layers: those of data_ep. */
  struct extent_cache ext;
  /* The rest is for qcow2 layers only. */
  struct qcow2_header h;
  uint64_t *l1;                 /* host endian, validated */
  uint32_t l1_size;
  struct sc_endpoint *data_ep;  /* ep, or the external data file (owned) */
  uint64_t data_size;
  char *data_filename;
  bool extl2;
  unsigned granule_bits;        /* subcluster (extended L2) or cluster */
  enum sc_codec codec;
  int prealloc;                 /* metadata preallocation: -1 unknown */
  /* Where the metadata lies, for refusing data that overlaps it: the
   * tables of more than a cluster, and the L2 tables and refcount
   * blocks as sorted cluster offsets.
   */
  struct meta_range { uint64_t start, end; const char *what; }
    meta[MAX_META_RANGES];
  unsigned nmeta;
  uint64_t *l2_sorted, *rb_sorted;
  size_t nl2, nrb;
  uint64_t snap_table_bytes;    /* the top layer's, 0 for the others */
  /* Opened with allow_encrypted: how it is encrypted (its data is then
   * not read), and what its LUKS header says.
   */
  enum sc_encryption encryption;
  struct sc_luks_info luks;
};

struct cache_table {
  struct cache_table *prev, *next;
  size_t layer;
  uint64_t offset;
  size_t bytes;
  unsigned char *data;
};

struct sc_qcow2 {
  struct layer *layers;
  size_t nlayers;
  struct sc_snapshot_info *snapshots;   /* of layer 0 */
  size_t nb_snapshots;
  pthread_mutex_t lock;                 /* protects the cache */
  pthread_mutex_t ext_lock;             /* protects the extent caches */
  pthread_mutex_t file_lock;            /* opening and closing layers */
  size_t open_files;                    /* closable layers now open */
  uint64_t clock;                       /* for last_use */
  uint64_t l1_bytes;                    /* of all layers */
  struct cache_table *mru, *lru;
  size_t cache_used, cache_budget, cache_tables;
  /* With backing_optional: why the chain ends early, or NULL; and the
   * file that ended it with its errno, or NULL.
   */
  char *backing_error;
  char *backing_failed;
  int backing_failed_errno;
  bool backing_failed_damaged;  /* by damage, not a failed read */
  /* With backing_optional: why the top image's external data file
   * could not be opened, or NULL.  Its data_ep is then NULL, and its
   * data cannot be read.
   */
  char *data_file_error;
};

/* What one layer says about a range starting at a guest offset. */
enum lkind { LK_UNALLOC, LK_ZERO, LK_DATA, LK_COMPRESSED };

struct lstatus {
  enum lkind kind;
  bool has_offset;              /* host is meaningful */
  uint64_t host;                /* host offset of the first byte */
  uint64_t l2e;                 /* LK_COMPRESSED: the descriptor */
  uint64_t len;
};

/* What the whole chain says: the layer that decided, as in qemu. */
struct cstatus {
  size_t depth;
  struct lstatus st;
  bool present, zero, data;
};

/* ---- open backing files --------------------------------------------- */

/* Close the least recently used closable layers that nobody reads
 * until fewer than limit are open.  file_lock is held.
 */
static void
close_spare_files (struct sc_qcow2 *q, size_t limit)
{
  while (q->open_files >= limit) {
    struct layer *victim = NULL;

    for (size_t i = 0; i < q->nlayers; i++) {
      struct layer *L = &q->layers[i];

      if (L->closable && L->ep && L->pins == 0
          && (victim == NULL || L->last_use < victim->last_use))
        victim = L;
    }
    if (victim == NULL)
      return;
    /* Read only: closing cannot lose anything. */
    sc_ep_close (victim->ep);
    victim->ep = victim->data_ep = NULL;
    q->open_files--;
  }
}

/* Open a closed layer again, as the same file it was: a backing file
 * that was replaced or changed meanwhile would not match the tables
 * already read from it.  file_lock is held.
 */
static int
layer_reopen (struct sc_qcow2 *q, struct layer *L)
{
  struct sc_endpoint *ep;
  struct sc_fingerprint fp;

  close_spare_files (q, OPEN_BACKING_FILES);
  ep = qcow2_open_file (L->filename);
  if (ep == NULL) {
    sc_error_prefix ("backing file %s", L->filename);
    return -1;
  }
  if (sc_ep_fingerprint (ep, &fp) != 0 || !sc_ep_fingerprint_equal (&fp, &L->fp)) {
    sc_ep_close (ep);
    sc_set_error (ESTALE, "backing file %s changed while it was read",
                  L->filename);
    return -1;
  }
  L->ep = L->data_ep = ep;
  q->open_files++;
  return 0;
}

/* Keep layer L's file open (opening it again if it was closed) until
 * layer_unpin.  Layers that are never closed need nothing.
 */
static int
layer_pin (struct sc_qcow2 *q, struct layer *L)
{
  int r = 0;

  if (!L->closable)
    return 0;
  pthread_mutex_lock (&q->file_lock);
  if (L->ep == NULL)
    r = layer_reopen (q, L);
  if (r == 0) {
    L->pins++;
    L->last_use = ++q->clock;
  }
  pthread_mutex_unlock (&q->file_lock);
  return r;
}

static void
layer_unpin (struct sc_qcow2 *q, struct layer *L)
{
  if (!L->closable)
    return;
  pthread_mutex_lock (&q->file_lock);
  L->pins--;
  pthread_mutex_unlock (&q->file_lock);
}

/* Layer li of the chain is open and parsed: from now on its file may
 * be closed while it is not read.  Only backing files the chain opened
 * itself by name, with no external data file, are.
 */
static void
layer_opened (struct sc_qcow2 *q, size_t li)
{
  struct layer *L = &q->layers[li];

  if (li == 0 || !L->own_ep || L->ep == NULL || L->data_ep != L->ep
      || L->closable)
    return;
  pthread_mutex_lock (&q->file_lock);
  L->closable = true;
  L->last_use = ++q->clock;
  q->open_files++;
  close_spare_files (q, OPEN_BACKING_FILES + 1);
  pthread_mutex_unlock (&q->file_lock);
}

/* ---- metadata that data must not overlap ------------------------------ */

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

/* The first element of the sorted array a (n of them) that is >= v. */
static size_t
lower_bound (const uint64_t *a, size_t n, uint64_t v)
{
  size_t lo = 0, hi = n;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (a[mid] < v)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Does [start, end) overlap a cluster named in the sorted array a? */
static bool
overlaps_cluster (const uint64_t *a, size_t n, uint64_t cs, uint64_t start,
                  uint64_t end, uint64_t *found)
{
  size_t i = lower_bound (a, n, start >= cs ? start - cs + 1 : 0);

  if (i < n && a[i] < end) {
    *found = a[i];
    return true;
  }
  return false;
}

/* Does [start, end) of layer L's file overlap its metadata?  The name
 * of what it overlaps in *what, its offset in *at.
 */
static bool
meta_overlap (const struct layer *L, uint64_t start, uint64_t end,
              const char **what, uint64_t *at)
{
  for (unsigned i = 0; i < L->nmeta; i++)
    if (start < L->meta[i].end && L->meta[i].start < end) {
      *what = L->meta[i].what;
      *at = L->meta[i].start;
      return true;
    }
  *what = "L2 table";
  if (overlaps_cluster (L->l2_sorted, L->nl2, L->h.cluster_size, start, end,
                        at))
    return true;
  *what = "refcount block";
  return overlaps_cluster (L->rb_sorted, L->nrb, L->h.cluster_size, start,
                           end, at);
}

static void
meta_add (struct layer *L, uint64_t start, uint64_t bytes, const char *what)
{
  if (bytes == 0)
    return;
  L->meta[L->nmeta++] = (struct meta_range) {
    start, SC_ADD_OVERFLOW (start, bytes, &bytes) ? UINT64_MAX : bytes,
    what
  };
}

/* Learn where layer L's metadata lies and refuse tables that overlap
 * each other or the header: qemu reads such an image, but what it
 * reads there is one table taken for another, and qemu-img check
 * counts it as corruption.  The L1 table at l1_offset is the one that
 * is read (the active one or a snapshot's).  The refcount table is
 * read for the places of the refcount blocks; entries that cannot be
 * blocks (misaligned, past the end) are the checker's to report.
 */
static int
build_meta (struct sc_qcow2 *q, struct layer *L, uint64_t l1_offset)
{
  uint64_t cs = L->h.cluster_size;
  uint64_t rt_bytes = (uint64_t) L->h.refcount_table_clusters * cs;
  CLEANUP_FREE unsigned char *rt = NULL;
  uint64_t at;
  const char *what;

  meta_add (L, 0, cs, "header");
  meta_add (L, l1_offset, (uint64_t) L->l1_size * sizeof (uint64_t),
            "L1 table");
  meta_add (L, L->h.refcount_table_offset, rt_bytes, "refcount table");
  if (L->snap_table_bytes)
    meta_add (L, L->h.snapshots_offset, L->snap_table_bytes,
              "snapshot table");
  for (unsigned i = 0; i < L->nmeta; i++)
    for (unsigned j = i + 1; j < L->nmeta; j++)
      if (L->meta[i].start < L->meta[j].end
          && L->meta[j].start < L->meta[i].end) {
        sc_set_error (EINVAL, "the %s at host offset %" PRIu64 " overlaps "
                      "the %s at host offset %" PRIu64, L->meta[j].what,
                      L->meta[j].start, L->meta[i].what, L->meta[i].start);
        return -1;
      }

  /* The L2 tables, sorted (load_l1 refused one named twice), and the
   * refcount blocks: arrays as long as the tables in use, not as the
   * L1 and refcount tables (4 MiB each for 256 TiB at 64 KiB clusters,
   * however little of it holds data).
   */
  size_t nl2 = 0, nrb = 0;

  for (uint32_t i = 0; i < L->l1_size; i++)
    if (L->l1[i] != 0)
      nl2++;
  L->l2_sorted = malloc (SC_MAX (nl2, (size_t) 1) * sizeof (uint64_t));
  /* The refcount table is capped by the header reader. */
  rt = malloc (SC_MAX (rt_bytes, 1));
  if (L->l2_sorted == NULL || rt == NULL) {
    sc_set_error (errno, "malloc: %s", strerror (errno));
    return -1;
  }
  for (uint32_t i = 0; i < L->l1_size; i++)
    if (L->l1[i] != 0)
      L->l2_sorted[L->nl2++] = L->l1[i];
  qsort (L->l2_sorted, L->nl2, sizeof (uint64_t), cmp_u64);

  if (rt_bytes > 0
      && qcow2_pread_padded (L->ep, L->file_size, rt, rt_bytes,
                             L->h.refcount_table_offset) == -1)
    return -1;
  for (int pass = 0; pass < 2; pass++) {
    if (pass == 1) {
      L->rb_sorted = malloc (SC_MAX (nrb, (size_t) 1) * sizeof (uint64_t));
      if (L->rb_sorted == NULL) {
        sc_set_error (errno, "malloc: %s", strerror (errno));
        return -1;
      }
    }
    for (uint64_t i = 0; i < rt_bytes / sizeof (uint64_t); i++) {
      uint64_t rb = sc_get_be64 (rt + i * sizeof (uint64_t))
        & QCOW2_RTE_OFFSET_MASK;

      if (rb != 0 && SC_IS_ALIGNED (rb, cs) && rb < L->file_size) {
        if (pass == 0)
          nrb++;
        else
          L->rb_sorted[L->nrb++] = rb;
      }
    }
  }
  qsort (L->rb_sorted, L->nrb, sizeof (uint64_t), cmp_u64);

  q->l1_bytes += (L->nl2 + L->nrb) * sizeof (uint64_t);
  if (q->l1_bytes > CHAIN_MAX_L1_BYTES) {
    sc_set_error (EFBIG, "the L1 and refcount tables of the backing chain "
                  "take more than %" PRIu64 " MiB", CHAIN_MAX_L1_BYTES >> 20);
    return -1;
  }

  for (size_t i = 0; i < L->nrb; i++) {
    if (i > 0 && L->rb_sorted[i] == L->rb_sorted[i - 1]) {
      sc_set_error (EINVAL, "the refcount block at host offset %" PRIu64
                    " is named by two refcount table entries",
                    L->rb_sorted[i]);
      return -1;
    }
    for (unsigned j = 0; j < L->nmeta; j++)
      if (L->rb_sorted[i] < L->meta[j].end
          && L->meta[j].start < L->rb_sorted[i] + cs) {
        sc_set_error (EINVAL, "the refcount block at host offset %" PRIu64
                      " overlaps the %s at host offset %" PRIu64,
                      L->rb_sorted[i], L->meta[j].what, L->meta[j].start);
        return -1;
      }
  }
  for (size_t i = 0; i < L->nl2; i++)
    if (meta_overlap (L, L->l2_sorted[i], L->l2_sorted[i] + cs, &what, &at)
        && strcmp (what, "L2 table") != 0) {
      sc_set_error (EINVAL, "the L2 table at host offset %" PRIu64
                    " overlaps the %s at host offset %" PRIu64,
                    L->l2_sorted[i], what, at);
      return -1;
    }
  return 0;
}

/* Data at [start, start+len) of layer L's own file must not be
 * metadata: it would read a table as guest data.
 */
static int
refuse_data_on_meta (const struct layer *L, const char *kind,
                     uint64_t start, uint64_t len)
{
  const char *what;
  uint64_t at, end;

  if (L->raw || (L->h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE))
    return 0;
  if (SC_ADD_OVERFLOW (start, len, &end))
    end = UINT64_MAX;
  if (!meta_overlap (L, start, end, &what, &at))
    return 0;
  sc_set_error (EINVAL, "the %s at host offset %" PRIu64 " overlaps the "
                "%s at host offset %" PRIu64, kind, start, what, at);
  return -1;
}

/* ---- the L2 cache ---------------------------------------------------- */

static void
cache_unlink (struct sc_qcow2 *q, struct cache_table *t)
{
  if (t->prev) t->prev->next = t->next; else q->mru = t->next;
  if (t->next) t->next->prev = t->prev; else q->lru = t->prev;
  t->prev = t->next = NULL;
}

static void
cache_push_front (struct sc_qcow2 *q, struct cache_table *t)
{
  t->prev = NULL;
  t->next = q->mru;
  if (q->mru) q->mru->prev = t; else q->lru = t;
  q->mru = t;
}

static void
cache_drop (struct sc_qcow2 *q, struct cache_table *t)
{
  cache_unlink (q, t);
  q->cache_used -= t->bytes;
  q->cache_tables--;
  free (t->data);
  free (t);
}

/* Find or load an L2 table; the lock is held.  The pointer stays valid
 * until the lock is released.
 */
static const unsigned char *
cache_get (struct sc_qcow2 *q, size_t li, uint64_t offset)
{
  struct layer *L = &q->layers[li];
  size_t bytes = L->h.cluster_size;
  struct cache_table *t;

  for (t = q->mru; t; t = t->next) {
    if (t->layer == li && t->offset == offset) {
      if (t != q->mru) {
        cache_unlink (q, t);
        cache_push_front (q, t);
      }
      return t->data;
    }
  }

  while (q->lru
         && (q->cache_used + bytes > q->cache_budget
             || q->cache_tables >= MAX_CACHE_TABLES))
    cache_drop (q, q->lru);

  t = calloc (1, sizeof *t);
  if (t == NULL || (t->data = malloc (bytes)) == NULL) {
    sc_set_error (errno, "L2 cache: %s", strerror (errno));
    free (t);
    return NULL;
  }
  if (layer_pin (q, L) == -1) {
    free (t->data);
    free (t);
    return NULL;
  }
  if (sc_ep_pread (L->ep, t->data, bytes, offset) == -1) {
    layer_unpin (q, L);
    sc_error_prefix ("%s: L2 table at 0x%" PRIx64, L->filename, offset);
    free (t->data);
    free (t);
    return NULL;
  }
  layer_unpin (q, L);
  t->layer = li;
  t->offset = offset;
  t->bytes = bytes;
  cache_push_front (q, t);
  q->cache_used += bytes;
  q->cache_tables++;
  return t->data;
}

/* ---- one layer -------------------------------------------------------- */

/* Replace the window of c with the extents of [pos, pos+count) of ep.
 * Where the endpoint cannot tell (it fails, or its answer is not what
 * the interface promises), the rest of the window is data, as when
 * SEEK_DATA fails: reading it shows what it holds.  Past the
 * endpoint's size everything reads as zeros.  Fails only when out of
 * memory.
 */
static int
extent_fetch (struct extent_cache *c, struct sc_endpoint *ep, uint64_t pos,
              uint64_t count)
{
  struct sc_extent_list *l = &c->list;
  uint64_t end = pos + count, covered = pos;

  c->start = c->end = pos;
  l->len = 0;
  /* An answer that cannot be trusted counts for nothing. */
  if (sc_ep_extents_step (ep, pos, count, l, &covered) == -1) {
    l->len = 0;
    covered = pos;
  }
  if (covered < SC_MIN (end, ep->size)
      && sc_extent_list_append (l, covered, SC_MIN (end, ep->size) - covered,
                                0) == -1)
    return -1;
  covered = SC_MAX (covered, SC_MIN (end, ep->size));
  if (covered < end
      && sc_extent_list_append (l, covered, end - covered,
                                SC_EXTENT_HOLE) == -1)
    return -1;
  c->end = end;
  return 0;
}

/* The extent of the window of c that holds pos (inside it). */
static const struct sc_extent *
extent_find (const struct extent_cache *c, uint64_t pos)
{
  size_t lo = 0, hi = c->list.len - 1;

  while (lo < hi) {
    size_t mid = lo + (hi - lo + 1) / 2;

    if (c->list.ext[mid].offset <= pos)
      lo = mid;
    else
      hi = mid - 1;
  }
  return &c->list.ext[lo];
}

/* How far from offset (up to max bytes, max > 0) the endpoint ep is
 * data, or reads as zeros (a hole or a zero extent), without a
 * change: the answer in *zero and *len, as one SEEK_DATA and one
 * SEEK_HOLE would give it for a local file.  Only what the lookup
 * needs is asked for, a window at a time, and the window is kept for
 * the lookups that follow.
 */
static int
extent_status (struct sc_qcow2 *q, struct extent_cache *c,
               struct sc_endpoint *ep, uint64_t offset, uint64_t max,
               bool *zero, uint64_t *len)
{
  uint64_t pos = offset, end;
  int r = 0;

  if (SC_ADD_OVERFLOW (offset, max, &end))
    end = UINT64_MAX;
  pthread_mutex_lock (&q->ext_lock);
  while (pos < end) {
    const struct sc_extent *e;
    bool z;

    if (pos < c->start || pos >= c->end) {
      r = extent_fetch (c, ep, pos, SC_MIN (end - pos, EXTENT_WINDOW));
      if (r == -1)
        break;
    }
    e = extent_find (c, pos);
    z = (e->flags & (SC_EXTENT_HOLE | SC_EXTENT_ZERO)) != 0;
    if (pos == offset)
      *zero = z;
    else if (z != *zero)
      break;
    pos = SC_MIN (e->offset + e->length, end);
  }
  pthread_mutex_unlock (&q->ext_lock);
  *len = pos - offset;
  return r;
}

/* A raw layer: data or hole, by the endpoint's extents when asked. */
static int
raw_status (struct sc_qcow2 *q, struct layer *L, uint64_t offset,
            uint64_t max, bool want_zero, struct lstatus *st)
{
  bool zero;
  int r;

  st->has_offset = true;
  st->host = offset;
  st->kind = LK_DATA;
  st->len = max;
  if (!want_zero)
    return 0;

  if (layer_pin (q, L) == -1)
    return -1;
  r = extent_status (q, &L->ext, L->ep, offset, max, &zero, &st->len);
  layer_unpin (q, L);
  if (r == -1)
    return -1;
  if (zero)
    st->kind = LK_ZERO;
  return 0;
}

/* Classify one granule (a cluster, or a subcluster with extended L2)
 * of the L2 table at guest offset pos.
 */
static int
classify (struct layer *L, const unsigned char *table, uint64_t pos,
          struct lstatus *g)
{
  uint64_t l2i = qcow2_offset_to_l2_index (&L->h, pos);
  uint64_t into = qcow2_offset_into_cluster (&L->h, pos);
  unsigned sc = (unsigned) (into >> L->granule_bits);
  enum qcow2_cluster_type type;
  uint64_t l2e, bitmap;
  unsigned fault;

  qcow2_l2_entry_get (&L->h, table, l2i, &l2e, &bitmap);
  if (qcow2_l2_entry_type (&L->h, l2e, &type) == -1)
    return -1;
  g->has_offset = false;
  g->host = (l2e & QCOW2_L2E_OFFSET_MASK) + into;
  g->l2e = 0;

  switch (qcow2_subcluster_type (&L->h, type, bitmap, sc, &fault)) {
  case QCOW2_SUBCLUSTER_COMPRESSED: {
    uint64_t coffset, cbytes;

    qcow2_compressed_descriptor (&L->h, l2e, &coffset, &cbytes);
    if (refuse_data_on_meta (L, "compressed cluster", coffset, cbytes) == -1)
      return -1;
    g->kind = LK_COMPRESSED;
    g->l2e = l2e;
    break;
  }
  case QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN:
    g->kind = LK_UNALLOC;
    break;
  case QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC:
    g->kind = LK_UNALLOC;
    g->has_offset = true;
    break;
  case QCOW2_SUBCLUSTER_ZERO_PLAIN:
    g->kind = LK_ZERO;
    break;
  case QCOW2_SUBCLUSTER_ZERO_ALLOC:
    g->kind = LK_ZERO;
    g->has_offset = true;
    break;
  case QCOW2_SUBCLUSTER_NORMAL:
    if (refuse_data_on_meta (L, "data cluster", l2e & QCOW2_L2E_OFFSET_MASK,
                             L->h.cluster_size) == -1)
      return -1;
    g->kind = LK_DATA;
    g->has_offset = true;
    break;
  case QCOW2_SUBCLUSTER_INVALID:
  default:
    if (fault == QCOW2_FAULT_SUBCLUSTER_BOTH)
      sc_set_error (EINVAL, "corrupt extended L2 entry at guest offset "
                    "%" PRIu64 ": subcluster %u is both allocated and "
                    "zero", pos, sc);
    else
      sc_set_error (EINVAL, "corrupt extended L2 entry at guest offset "
                    "%" PRIu64 ": allocated subclusters in an "
                    "unallocated cluster", pos);
    return -1;
  }
  return 0;
}

/* The status of [offset, offset+max) in qcow2 layer li; max > 0 and
 * the range lies inside the layer.  st->len is at most max.
 */
static int
qcow2_status (struct sc_qcow2 *q, size_t li, uint64_t offset, uint64_t max,
              struct lstatus *st)
{
  struct layer *L = &q->layers[li];
  uint64_t span = (uint64_t) L->h.cluster_size * L->h.l2_entries;
  uint64_t l1i = qcow2_offset_to_l1_index (&L->h, offset);
  uint64_t end = offset + max;
  uint64_t table_end, pos;
  const unsigned char *table;

  if (l1i >= L->l1_size || L->l1[l1i] == 0) {
    /* Whole L2 tables are missing: skip every empty L1 entry at once,
     * so the cost follows the data and not the virtual size.
     */
    uint64_t stop = (l1i + 1) * span;
    l1i++;
    while (stop < end && (l1i >= L->l1_size || L->l1[l1i] == 0)) {
      stop += span;
      l1i++;
    }
    st->kind = LK_UNALLOC;
    st->has_offset = false;
    st->len = SC_MIN (stop, end) - offset;
    return 0;
  }

  table_end = SC_MIN ((l1i + 1) * span, end);

  pthread_mutex_lock (&q->lock);
  table = cache_get (q, li, L->l1[l1i]);
  if (table == NULL)
    goto err;

  pos = offset;
  while (pos < table_end) {
    struct lstatus g;
    uint64_t gend = SC_ROUND_DOWN (pos, (uint64_t) 1 << L->granule_bits)
      + ((uint64_t) 1 << L->granule_bits);

    if (classify (L, table, pos, &g) == -1) {
      /* The caller names the image itself; a backing file is named
       * here, as when it is opened.
       */
      sc_error_prefix ("%s%s%sL2 table at host offset %" PRIu64 ", entry %"
                       PRIu64 " (guest offset %" PRIu64 ")",
                       li ? "backing file " : "", li ? L->filename : "",
                       li ? ": " : "", L->l1[l1i],
                       qcow2_offset_to_l2_index (&L->h, pos),
                       SC_ROUND_DOWN (pos, (uint64_t) L->h.cluster_size));
      goto err;
    }
    if (g.kind == LK_COMPRESSED)
      gend = SC_ROUND_DOWN (pos, L->h.cluster_size) + L->h.cluster_size;
    gend = SC_MIN (gend, table_end);

    if (pos == offset) {
      *st = g;
      st->len = gend - pos;
    }
    else if (g.kind != st->kind || g.kind == LK_COMPRESSED
             || g.has_offset != st->has_offset
             || (g.has_offset && g.host != st->host + st->len))
      break;
    else
      st->len += gend - pos;
    if (st->kind == LK_COMPRESSED)
      break;
    pos = gend;
  }
  pthread_mutex_unlock (&q->lock);
  return 0;

 err:
  pthread_mutex_unlock (&q->lock);
  return -1;
}

/* qemu decides once per image whether it looks metadata-preallocated:
 * more clusters have a refcount than the file really occupies on disk
 * (plus a margin).  Only then does its block status look through data
 * clusters into the host file's holes, which changes what qemu-img map
 * prints; we follow the same rule so the maps agree.  The lock is held.
 */
static bool
detect_prealloc (struct layer *L)
{
  uint64_t cs = L->h.cluster_size;
  uint64_t per_block = (cs * 8) >> L->h.refcount_order;
  uint64_t rt_entries = (uint64_t) L->h.refcount_table_clusters
    * (cs / sizeof (uint64_t));
  uint64_t real_clusters, threshold, end_cluster, count = 0, i = 0;
  CLEANUP_FREE unsigned char *block = NULL;
  struct stat st;
  int fd;

  /* Like qemu, anything that prevents the decision (a block device has
   * no allocated size, a broken refcount table) means "no".  Only a
   * local regular file says how much of it is allocated; and without
   * extents there are no holes to look through anyway.
   */
  fd = L->ep->ops->local_fd ? L->ep->ops->local_fd (L->ep) : -1;
  if (L->ep->ops->extents == NULL || fd < 0 || fstat (fd, &st) == -1
      || !S_ISREG (st.st_mode))
    return false;
  real_clusters = (uint64_t) st.st_blocks * STAT_BLOCK_SIZE / cs;
  threshold = SC_MAX (real_clusters * 10 / 9, real_clusters + 2);
  end_cluster = qcow2_size_to_clusters (&L->h, L->file_size);
  block = malloc (cs);
  if (block == NULL)
    return false;

  while (i < end_cluster && count < threshold) {
    uint64_t rti = i / per_block;
    uint64_t first = rti * per_block;
    uint64_t last = SC_MIN (first + per_block, end_cluster);
    unsigned char e[sizeof (uint64_t)];
    uint64_t rb;

    if (rti >= rt_entries)
      break;
    if (sc_ep_pread (L->ep, e, sizeof e,
                     L->h.refcount_table_offset + rti * sizeof e) == -1)
      return false;
    rb = sc_get_be64 (e) & QCOW2_RTE_OFFSET_MASK;
    if (rb == 0) {
      i = last;
      continue;
    }
    if (!SC_IS_ALIGNED (rb, cs) || L->file_size < cs
        || rb > L->file_size - cs
        || sc_ep_pread (L->ep, block, cs, rb) == -1)
      return false;
    for (; i < last && count < threshold; i++)
      if (qcow2_refcount_get (block, L->h.refcount_order, i - first) != 0)
        count++;
  }
  return count >= threshold;
}

/* The data of an encrypted image (opened with allow_encrypted) cannot
 * be read: it would be ciphertext.
 */
static int
refuse_encrypted (const struct sc_qcow2 *q, const struct layer *L)
{
  const char *how = L->encryption == SC_ENCRYPTION_LUKS ? "LUKS" : "AES";

  if (L == &q->layers[0])
    sc_set_error (ENOTSUP, "the image is encrypted (%s): encrypted images "
                  "are not supported", how);
  else
    sc_set_error (ENOTSUP, "backing file %s is encrypted (%s): encrypted "
                  "images are not supported", L->filename, how);
  return -1;
}

/* The data of an image whose data file could not be opened (see
 * data_file_error) cannot be read.
 */
static int
no_data_file (const struct sc_qcow2 *q)
{
  sc_set_error (ENOENT, "%s", q->data_file_error
                ? q->data_file_error : "the external data file is not open");
  return -1;
}

/* In a metadata-preallocated image, qemu reports the parts of a data
 * run that are holes in (or beyond the end of) the host file as zero
 * too; this is that step, on cs->st (a data run of qcow2 layer L).
 */
static int
host_zero_status (struct sc_qcow2 *q, struct layer *L, struct cstatus *cs)
{
  uint64_t host = cs->st.host, size = L->data_size, bytes, len;
  bool zero;

  if (L->data_ep == NULL)
    return no_data_file (q);
  if (host >= size) {
    cs->zero = true;
    return 0;
  }
  bytes = SC_MIN (cs->st.len, size - host);
  if (extent_status (q, &L->ext, L->data_ep, host, bytes, &zero,
                     &len) == -1)
    return -1;
  if (!zero)
    cs->st.len = len;
  else {
    cs->zero = true;
    /* A hole up to the end of the file zeroes the whole run. */
    if (host + len < size)
      cs->st.len = len;
  }
  return 0;
}

/* The status of the chain at offset (inside the top layer), following
 * qemu's rules: the first layer that has data or zeros decides; an
 * unallocated range reads as zeros (and is not "present") when there is
 * no backing file or it lies past the backing file's end.
 */
static int
chain_status (struct sc_qcow2 *q, uint64_t offset, uint64_t max,
              bool want_zero, struct cstatus *cs)
{
  for (size_t d = 0; d < q->nlayers; d++) {
    struct layer *L = &q->layers[d];
    int r = L->raw ? raw_status (q, L, offset, max, want_zero, &cs->st)
      : qcow2_status (q, d, offset, max, &cs->st);

    if (r == -1)
      return -1;
    max = cs->st.len;
    cs->depth = d;
    if (cs->st.kind != LK_UNALLOC) {
      cs->present = true;
      cs->zero = cs->st.kind == LK_ZERO;
      cs->data = !cs->zero;
      if (want_zero && !L->raw && cs->st.kind == LK_DATA) {
        if (layer_pin (q, L) == -1)
          return -1;
        pthread_mutex_lock (&q->lock);
        if (L->prealloc < 0)
          L->prealloc = detect_prealloc (L);
        r = L->prealloc;
        pthread_mutex_unlock (&q->lock);
        if (r)
          r = host_zero_status (q, L, cs);
        layer_unpin (q, L);
        if (r == -1)
          return -1;
      }
      return 0;
    }
    if (d + 1 == q->nlayers || offset >= q->layers[d + 1].size) {
      cs->present = false;
      cs->zero = true;
      cs->data = false;
      return 0;
    }
    max = SC_MIN (max, q->layers[d + 1].size - offset);
  }
  abort ();                     /* the loop always returns */
}

/* Where the bytes of a compressed cluster lie in its layer's file:
 * *coffset and *cbytes (cut at the end of the file), *truncated when
 * the descriptor runs past it.  0, or -1 with the error set.
 */
static int
compressed_span (const struct layer *L, uint64_t l2e, uint64_t *coffset,
                 uint64_t *cbytes, bool *truncated)
{
  qcow2_compressed_descriptor (&L->h, l2e, coffset, cbytes);
  if (*coffset < L->h.cluster_size) {
    sc_set_error (EINVAL, "%s: compressed cluster at host offset 0x%"
                  PRIx64 " is outside the file", L->filename, *coffset);
    return -1;
  }
  /* The descriptor's last sector holds the last byte of the data (qemu
   * does not pad the file beyond it), so at least part of it must be
   * in the file: a whole sector missing is an image cut short.
   */
  if (*coffset >= L->file_size
      || *cbytes - SC_MIN (*cbytes, QCOW2_COMPRESSED_SECTOR - 1)
         > L->file_size - *coffset) {
    sc_set_damage (EIO, "%s: compressed cluster at host offset %" PRIu64
                  " lies %spast the end of the file (%" PRIu64 " bytes): "
                  "the image is cut short", L->filename, *coffset,
                  *coffset < L->file_size ? "partly " : "", L->file_size);
    return -1;
  }
  /* The last compressed cluster may end in a partial sector. */
  *truncated = *cbytes > L->file_size - *coffset;
  *cbytes = SC_MIN (*cbytes, L->file_size - *coffset);
  return 0;
}

/* Decode the compressed bytes of one cluster into out, a whole
 * cluster.
 */
static int
decode_cluster (const struct layer *L, const unsigned char *in,
                uint64_t coffset, uint64_t cbytes, bool truncated, void *out)
{
  if (sc_decompress (L->codec, in, cbytes, out, L->h.cluster_size) == -1) {
    /* Only decoding tells whether the end of the file in the last
     * sector cut the data short (qemu's last compressed cluster
     * always ends there, whole): the message says where it ended.
     */
    sc_error_prefix ("%s: compressed cluster at host offset 0x%" PRIx64
                     "%s", L->filename, coffset,
                     truncated ? " (its last sector runs past the end"
                     " of the file)" : "");
    return -1;
  }
  return 0;
}

/* Read one compressed cluster's bytes [into, into+count). */
static int
read_compressed (struct sc_qcow2 *q, struct layer *L, uint64_t l2e,
                 uint64_t into, void *buf, size_t count)
{
  int r;
  CLEANUP_FREE unsigned char *in = NULL;
  CLEANUP_FREE unsigned char *out = NULL;
  uint64_t coffset, cbytes;
  bool truncated;

  if (compressed_span (L, l2e, &coffset, &cbytes, &truncated) == -1)
    return -1;
  in = malloc (cbytes);
  out = malloc (L->h.cluster_size);
  if (in == NULL || out == NULL) {
    sc_set_error (errno, "malloc: %s", strerror (errno));
    return -1;
  }
  if (layer_pin (q, L) == -1)
    return -1;
  r = sc_ep_pread (L->ep, in, cbytes, coffset);
  layer_unpin (q, L);
  if (r == -1)
    return -1;
  if (decode_cluster (L, in, coffset, cbytes, truncated, out) == -1)
    return -1;
  memcpy (buf, out + into, count);
  return 0;
}

/* Whole compressed clusters in a row are read a run at a time: qemu
 * and sparsecow store them one after the other, so one read of the
 * file brings the bytes of many, and each is decoded straight into the
 * caller's buffer.  Per 64 KiB cluster, this saves a read of the image
 * file, two allocations and a copy of the cluster.  A run holds at most
 * this many clusters, and its compressed bytes span at most
 * COMPRESSED_RUN_BYTES (or one cluster's, if that is more).
 */
#define COMPRESSED_RUN_CLUSTERS 64
#define COMPRESSED_RUN_BYTES (1024 * 1024)

struct compressed_member {
  uint64_t coffset, cbytes;
  bool truncated;
};

/* The compressed bytes of a run are read into a buffer that each
 * thread keeps: a buffer allocated and freed per run is new memory
 * every time (glibc maps allocations this large afresh), and on the
 * machine of the benchmarks (a VM) the first touch of new memory made
 * the read into it take 20-29% of an unpack's time.
 */
struct run_buffer {
  unsigned char *buf;
  size_t size;
};

static pthread_key_t run_buffer_key;
static pthread_once_t run_buffer_once = PTHREAD_ONCE_INIT;

static void
free_run_buffer (void *p)
{
  struct run_buffer *rb = p;

  free (rb->buf);
  free (rb);
}

static void
make_run_buffer_key (void)
{
  pthread_key_create (&run_buffer_key, free_run_buffer);
}

/* This thread's buffer of at least size bytes, or NULL with the error
 * set.
 */
static unsigned char *
get_run_buffer (size_t size)
{
  struct run_buffer *rb;

  pthread_once (&run_buffer_once, make_run_buffer_key);
  rb = pthread_getspecific (run_buffer_key);
  if (rb == NULL) {
    rb = calloc (1, sizeof *rb);
    if (rb == NULL || pthread_setspecific (run_buffer_key, rb) != 0) {
      free (rb);
      sc_set_error (ENOMEM, "out of memory");
      return NULL;
    }
  }
  if (rb->size < size) {
    free (rb->buf);
    rb->size = 0;
    rb->buf = malloc (size);
    if (rb->buf == NULL) {
      sc_set_error (errno, "malloc: %s", strerror (errno));
      return NULL;
    }
    rb->size = size;
  }
  return rb->buf;
}

/* Read and decode the run of whole compressed clusters of layer
 * first->depth that starts with first, a whole cluster at offset, count
 * bytes at most: *done is the bytes of buf filled.
 */
static int
read_compressed_run (struct sc_qcow2 *q, const struct cstatus *first,
                     uint64_t offset, unsigned char *buf, size_t count,
                     size_t *done)
{
  struct layer *L = &q->layers[first->depth];
  uint64_t csize = L->h.cluster_size;
  struct compressed_member m[COMPRESSED_RUN_CLUSTERS];
  unsigned char *in;
  uint64_t start, end;
  size_t n = 1;
  int r;

  if (compressed_span (L, first->st.l2e, &m[0].coffset, &m[0].cbytes,
                       &m[0].truncated) == -1)
    return -1;
  start = m[0].coffset;
  end = start + m[0].cbytes;
  while (n < COMPRESSED_RUN_CLUSTERS && (n + 1) * csize <= count) {
    struct cstatus cs;
    struct compressed_member *c = &m[n];

    if (chain_status (q, offset + n * csize, csize, false, &cs) == -1)
      return -1;
    if (!cs.present || cs.zero || cs.st.kind != LK_COMPRESSED
        || cs.depth != first->depth || cs.st.len != csize)
      break;
    if (compressed_span (L, cs.st.l2e, &c->coffset, &c->cbytes,
                         &c->truncated) == -1)
      return -1;
    /* Only bytes further on in the file, and close enough. */
    if (c->coffset < start
        || c->coffset + c->cbytes - start > COMPRESSED_RUN_BYTES)
      break;
    end = SC_MAX (end, c->coffset + c->cbytes);
    n++;
  }

  in = get_run_buffer ((size_t) (end - start));
  if (in == NULL)
    return -1;
  if (layer_pin (q, L) == -1)
    return -1;
  r = sc_ep_pread (L->ep, in, end - start, start);
  layer_unpin (q, L);
  if (r == -1)
    return -1;
  for (size_t i = 0; i < n; i++)
    if (decode_cluster (L, in + (m[i].coffset - start), m[i].coffset,
                        m[i].cbytes, m[i].truncated, buf + i * csize) == -1)
      return -1;
  *done = n * csize;
  return 0;
}

/* A data cluster that lies wholly or partly past the end of its own
 * image file is not all there: the image was cut short (an interrupted
 * copy).  qemu reads the missing part as zeros (and qemu-img map calls
 * a missing cluster zero), which would lose its data without a word
 * when it is copied: an error here, as from a pipe.  qemu writes whole
 * clusters and extends the file over what it preallocates; a raw
 * backing file or an external data file shorter than what is mapped
 * reads as zeros, as in qemu.
 */
static int
cut_short (const struct layer *L, const struct cstatus *cs)
{
  uint64_t size = L->file_size, first, cluster;

  if (L->raw || (L->h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
      || cs->st.kind != LK_DATA
      || cs->st.host + cs->st.len <= size)
    return 0;
  first = SC_MAX (cs->st.host, size);
  cluster = first - qcow2_offset_into_cluster (&L->h, first);
  sc_set_damage (EIO, "%s: data cluster at host offset %" PRIu64 " lies %s"
                "past the end of the file (%" PRIu64 " bytes): the image "
                "is cut short", L->filename, cluster,
                cluster < size ? "partly " : "", size);
  return -1;
}

/* Guest reads through the chain.  With nowait, only what can be had
 * without waiting for a device: returns 1 as soon as a part cannot (a
 * compressed cluster, host bytes not in memory).
 */
static int
chain_read (struct sc_qcow2 *q, void *buf, size_t count, uint64_t offset,
            bool nowait)
{
  char *p = buf;

  while (count > 0) {
    struct cstatus cs;
    struct layer *L;
    struct sc_endpoint *ep;
    size_t n;
    int r;

    if (chain_status (q, offset, count, false, &cs) == -1)
      return -1;
    n = (size_t) cs.st.len;
    L = &q->layers[cs.depth];
    if (L->encryption != SC_ENCRYPTION_NONE)
      return refuse_encrypted (q, L);
    if (!cs.present || cs.zero)
      memset (p, 0, n);
    else if (cs.st.kind == LK_COMPRESSED) {
      if (nowait)
        return 1;
      /* Whole clusters only: the end of a backing file may cut one. */
      if (qcow2_offset_into_cluster (&L->h, offset) == 0
          && cs.st.len == L->h.cluster_size) {
        if (read_compressed_run (q, &cs, offset, (unsigned char *) p, count,
                                 &n) == -1)
          return -1;
      }
      else if (read_compressed (q, L, cs.st.l2e,
                           qcow2_offset_into_cluster (&L->h, offset),
                           p, n) == -1)
        return -1;
    }
    else if (cut_short (L, &cs) == -1)
      return -1;
    else {
      if (layer_pin (q, L) == -1)
        return -1;
      ep = L->raw ? L->ep : L->data_ep;
      if (ep == NULL) {
        layer_unpin (q, L);
        return no_data_file (q);
      }
      if (nowait)
        r = cs.st.host >= ep->size || n > ep->size - cs.st.host ? 1
          : sc_ep_pread_nowait (ep, p, n, cs.st.host);
      /* Past the end of a raw backing file or an external data file,
       * zeros, as in qemu.
       */
      else
        r = qcow2_pread_padded (ep, ep->size, p, n, cs.st.host);
      layer_unpin (q, L);
      if (r != 0)
        return r;
    }
    p += n;
    count -= n;
    offset += n;
  }
  return 0;
}

int
qcow2_chain_pread (struct sc_qcow2 *q, void *buf, size_t count,
                   uint64_t offset)
{
  return chain_read (q, buf, count, offset, false);
}

int
qcow2_chain_pread_nowait (struct sc_qcow2 *q, void *buf, size_t count,
                          uint64_t offset)
{
  return chain_read (q, buf, count, offset, true);
}

/* Copy count bytes of the guest view at offset to dst at dst_off inside
 * the kernel (sharing blocks with SC_COPY_CLONE), when every part of
 * the range is data that lies as it is in a file of the chain: an
 * uncompressed cluster, a raw backing file, an external data file.
 * Compressed clusters, zeros and data past the end of its file (which
 * reads as zeros, or is an image cut short that reading reports) are
 * declined before anything is copied.
 */
int
qcow2_chain_copy_to (struct sc_qcow2 *q, uint64_t offset, uint64_t count,
                     struct sc_endpoint *dst, uint64_t dst_off,
                     unsigned flags)
{
  uint64_t pos, n;

  for (int pass = 0; pass < 2; pass++) {
    for (pos = 0; pos < count; pos += n) {
      struct cstatus cs;
      struct layer *L;
      uint64_t size;
      int r;

      if (chain_status (q, offset + pos, count - pos, false, &cs) == -1)
        return -1;
      n = cs.st.len;
      L = &q->layers[cs.depth];
      if (L->encryption != SC_ENCRYPTION_NONE)
        return refuse_encrypted (q, L);
      if (!L->raw && L->data_ep == NULL)
        return no_data_file (q);
      size = L->raw ? L->file_size : L->data_size;
      if (!cs.present || cs.zero || cs.st.kind != LK_DATA
          || cs.st.host > size || n > size - cs.st.host)
        return SC_COPY_DECLINED;
      if (pass == 0)
        continue;
      if (layer_pin (q, L) == -1)
        return -1;
      r = sc_ep_copy_range (L->raw ? L->ep : L->data_ep, cs.st.host, dst,
                            dst_off + pos, n, flags);
      layer_unpin (q, L);
      /* A part refused after others were copied leaves the range to the
       * caller, who writes it whole.
       */
      if (r != 0)
        return r;
    }
  }
  return 0;
}

/* ---- opening --------------------------------------------------------- */

static char *
xstrdup (const char *s)
{
  char *r = strdup (s);
  if (r == NULL)
    sc_set_error (errno, "strdup: %s", strerror (errno));
  return r;
}

/* A name stored in an image, relative to the image's directory. */
static char *
resolve_relative (const char *image, const char *name)
{
  CLEANUP_FREE char *copy = NULL;
  const char *dir;
  char *r;

  if (name[0] == '/')
    return xstrdup (name);
  copy = xstrdup (image);
  if (copy == NULL)
    return NULL;
  dir = dirname (copy);
  if (strcmp (dir, ".") == 0)
    return xstrdup (name);
  if (asprintf (&r, "%s/%s", dir, name) == -1) {
    sc_set_error (errno, "asprintf: %s", strerror (errno));
    return NULL;
  }
  return r;
}

/* A name stored in the image of layer 0 (the top image, read through
 * top) of the kind what ("backing file"), resolved as
 * resolve_relative does against the image's name; for standard input,
 * against the file it is redirected from, and when that is not known a
 * relative name is ENOENT.
 */
static char *
resolve_from_top (const struct sc_endpoint *top, const char *image,
                  const char *what, const char *name)
{
  if (top->file_path)
    return resolve_relative (top->file_path, name);
  if (top->file_path_unknown && name[0] != '/') {
    sc_set_error (ENOENT, "%s %s: a name relative to the image's "
                  "directory, which is not known: the image comes through "
                  "standard input, not from a file that can be found by "
                  "name (give the image's file name instead)", what, name);
    return NULL;
  }
  return resolve_relative (image, name);
}

struct sc_endpoint *
qcow2_open_file (const char *path)
{
  CLEANUP_FREE char *local = NULL;

  /* A file named "-" in an image is a file, never standard input. */
  if (strcmp (path, "-") == 0) {
    local = xstrdup ("./-");
    if (local == NULL)
      return NULL;
    path = local;
  }
  return sc_endpoint_open_source (path, SC_MAP_SEEK);
}

/* The file reader needs to read anywhere in a file: streams are for
 * the stream decoder (sc_qcow2_unpack_stream).
 */
static int
refuse_stream (const struct sc_endpoint *ep)
{
  if (ep->flags & SC_EP_STREAM) {
    sc_set_error (ESPIPE, "a stream (pipe or character device) cannot be "
                  "read at random offsets; an image in a stream is read "
                  "with the stream decoder");
    return -1;
  }
  return 0;
}

/* One L2 table named by two entries of the L1 table is damage that
 * qemu never writes, and walking a small image whose L1 entries all
 * name the same table would cost as much as an image of that many
 * tables (a 1 MiB image took minutes to unpack): refuse it, as the
 * stream decoder does.
 */
static int
refuse_shared_l2 (const struct layer *L)
{
  CLEANUP_FREE uint64_t *offs = malloc (L->l1_size * sizeof *offs);
  uint64_t shared;

  if (offs == NULL) {
    sc_set_error (errno, "malloc: %s", strerror (errno));
    return -1;
  }
  memcpy (offs, L->l1, L->l1_size * sizeof *offs);
  shared = qcow2_l1_shared_l2 (offs, L->l1_size);
  if (shared != 0) {
    sc_set_error (EINVAL, "the L2 table at host offset 0x%" PRIx64 " is "
                  "named by two L1 entries", shared);
    return -1;
  }
  return 0;
}

/* Load and validate an L1 table. */
static int
load_l1 (struct layer *L, uint64_t offset, uint32_t entries,
         uint64_t virtual_size)
{
  uint64_t span = (uint64_t) L->h.cluster_size * L->h.l2_entries;
  uint64_t needed = virtual_size / span + (virtual_size % span != 0);
  uint64_t bytes = (uint64_t) entries * sizeof (uint64_t), end;

  if (bytes > QCOW2_MAX_L1_BYTES) {
    sc_set_error (EFBIG, "L1 table too large (%" PRIu32 " entries)",
                  entries);
    return -1;
  }
  if (needed > entries) {
    sc_set_error (EINVAL, "L1 table (%" PRIu32 " entries) too small for "
                  "the virtual size %" PRIu64, entries, virtual_size);
    return -1;
  }
  L->l1_size = entries;
  if (entries == 0)
    return 0;
  if (offset == 0 || !SC_IS_ALIGNED (offset, L->h.cluster_size)
      || SC_ADD_OVERFLOW (offset, bytes, &end)) {
    sc_set_error (EINVAL, "L1 table offset 0x%" PRIx64 " is misaligned "
                  "or outside the file", offset);
    return -1;
  }
  if (end > L->file_size) {
    sc_set_damage (EIO, "the L1 table at host offset %" PRIu64 " (%" PRIu64
                  " bytes) lies %spast the end of the file (%" PRIu64
                  " bytes): the image is cut short", offset, bytes,
                  offset < L->file_size ? "partly " : "", L->file_size);
    return -1;
  }
  L->l1 = malloc (bytes);
  if (L->l1 == NULL) {
    sc_set_error (errno, "malloc: %s", strerror (errno));
    return -1;
  }
  if (sc_ep_pread (L->ep, L->l1, bytes, offset) == -1)
    return -1;
  for (uint32_t i = 0; i < entries; i++) {
    uint64_t e = be64toh (L->l1[i]);
    uint64_t l2 = e & QCOW2_L1E_OFFSET_MASK;
    unsigned faults = qcow2_l1_entry_faults (&L->h, e);

    if (faults & QCOW2_FAULT_RESERVED) {
      sc_set_error (EINVAL, "L1 entry %" PRIu32 " (0x%016" PRIx64 ") has "
                    "reserved bits set", i, e);
      return -1;
    }
    /* qemu reads such an entry as "no L2 table", but its check walks
     * the header as the table: the entry is damage either way.
     */
    if (l2 == 0 && e != 0) {
      sc_set_error (EINVAL, "L1 entry %" PRIu32 " (0x%016" PRIx64 ") names "
                    "host offset 0, the header, as its L2 table", i, e);
      return -1;
    }
    if (l2 != 0 && (faults & QCOW2_FAULT_MISALIGNED)) {
      sc_set_error (EINVAL, "L1 entry %" PRIu32 ": L2 table offset 0x%"
                    PRIx64 " is misaligned or outside the file", i, l2);
      return -1;
    }
    if (l2 != 0 && (l2 > L->file_size - L->h.cluster_size
                    || L->file_size < L->h.cluster_size)) {
      sc_set_damage (EIO, "L1 entry %" PRIu32 ": the L2 table at host "
                    "offset %" PRIu64 " lies %spast the end of the file (%"
                    PRIu64 " bytes): the image is cut short", i, l2,
                    l2 < L->file_size ? "partly " : "", L->file_size);
      return -1;
    }
    /* Keep only the offset: 0 then means "no L2 table". */
    L->l1[i] = l2;
  }
  return refuse_shared_l2 (L);
}

static void
free_snapshots (struct sc_snapshot_info *s, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    free (s[i].id);
    free (s[i].name);
  }
  free (s);
}

/* The snapshots of a parsed table (t->n > 0) as the library shows
 * them in *out (t->n entries).  The strings change hands; t is freed
 * either way.
 */
static int
snapshots_take (struct qcow2_snapshots *t, struct sc_snapshot_info **out)
{
  struct sc_snapshot_info *s = calloc (t->n, sizeof *s);

  if (s == NULL) {
    sc_set_error (errno, "calloc: %s", strerror (errno));
    qcow2_snapshots_free (t);
    return -1;
  }
  for (size_t i = 0; i < t->n; i++) {
    s[i].id = t->s[i].id;
    s[i].name = t->s[i].name;
    t->s[i].id = t->s[i].name = NULL;
    s[i].vm_state_size = t->s[i].vm_state_size;
    s[i].date_sec = t->s[i].date_sec;
    s[i].date_nsec = t->s[i].date_nsec;
    s[i].vm_clock_nsec = t->s[i].vm_clock_nsec;
    s[i].disk_size = t->s[i].disk_size;
    s[i].icount = t->s[i].icount;
  }
  qcow2_snapshots_free (t);
  *out = s;
  return 0;
}

/* Parse the snapshot table of a qcow2 layer; when want is not NULL,
 * return the L1 table of the snapshot it names in *l1_offset,
 * *l1_entries and its size in *disk_size.
 */
static int
read_snapshots (struct sc_qcow2 *q, struct layer *L, const char *want,
                uint64_t *l1_offset, uint32_t *l1_entries,
                uint64_t *disk_size)
{
  struct qcow2_snapshots t;
  struct sc_snapshot_info *s;
  size_t n;
  ssize_t found = -1;

  if (qcow2_snapshots_read (L->ep, L->file_size, &L->h, false, &t) == -1)
    return -1;
  L->snap_table_bytes = t.n ? t.table_bytes : 0;
  n = t.n;
  if (n == 0) {
    if (want) {
      sc_set_error (ENOENT, "snapshot '%s' not found", want);
      return -1;
    }
    return 0;
  }

  if (want) {
    /* Like qemu: an ID match wins over a name match. */
    for (size_t i = 0; i < n && found < 0; i++)
      if (strcmp (t.s[i].id, want) == 0)
        found = (ssize_t) i;
    for (size_t i = 0; i < n && found < 0; i++)
      if (strcmp (t.s[i].name, want) == 0)
        found = (ssize_t) i;
    if (found < 0) {
      sc_set_error (ENOENT, "snapshot '%s' not found", want);
      qcow2_snapshots_free (&t);
      return -1;
    }
    *l1_offset = t.s[found].l1_offset;
    *l1_entries = t.s[found].l1_size;
    *disk_size = t.s[found].disk_size ? t.s[found].disk_size : L->h.size;
  }

  if (snapshots_take (&t, &s) == -1)
    return -1;
  q->snapshots = s;
  q->nb_snapshots = n;
  return 0;
}

/* Open a qcow2 layer (endpoint and file size already set). */
static int
open_qcow2_layer (struct sc_qcow2 *q, struct layer *L, bool top,
                  const struct sc_qcow2_open_opts *opts)
{
  uint64_t l1_offset, disk_size;
  uint32_t l1_entries;

  if (qcow2_header_read_to_show (L->ep, L->file_size,
                                 opts && opts->allow_corrupt,
                                 opts && opts->allow_encrypted, &L->h) == -1)
    return -1;
  /* An encrypted image is opened to be shown: its encryption header is
   * validated as the rest of it is.
   */
  if ((L->h.crypt_method != 0 || L->h.has_crypto_ext)
      && qcow2_encryption_read (L->ep, L->file_size, &L->h, &L->encryption,
                                &L->luks) == -1)
    return -1;
  L->extl2 = (L->h.incompatible_features & QCOW2_INCOMPAT_EXTL2) != 0;
  L->granule_bits = L->extl2
    ? L->h.cluster_bits - QCOW2_SUBCLUSTER_BITS : L->h.cluster_bits;
  L->codec = L->h.compression_type == SC_CODEC_ZSTD
    ? SC_CODEC_ZSTD : SC_CODEC_DEFLATE;
  L->size = L->h.size;
  l1_offset = L->h.l1_table_offset;
  l1_entries = L->h.l1_size;
  disk_size = L->h.size;

  if (top) {
    if (read_snapshots (q, L, opts ? opts->snapshot : NULL,
                        &l1_offset, &l1_entries, &disk_size) == -1)
      return -1;
  }
  /* qemu counts the guest size in whole sectors, rounding down. */
  L->size = SC_ROUND_DOWN (disk_size, RAW_SECTOR_SIZE);
  if (load_l1 (L, l1_offset, l1_entries, L->size) == -1
      || build_meta (q, L, l1_offset) == -1)
    return -1;

  /* External data file: guest data lives there, at host offsets. */
  L->data_ep = L->ep;
  L->data_size = L->file_size;
  if (L->h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
    if (opts && opts->no_external_files) {
      sc_set_error (EPERM, "the image needs an external data file%s%s%s, "
                    "and external files are not allowed here",
                    L->h.data_file ? " (" : "",
                    L->h.data_file ? L->h.data_file : "",
                    L->h.data_file ? ")" : "");
      return -1;
    }
    if (L->h.data_file == NULL) {
      sc_set_error (EINVAL, "the image needs an external data file but "
                    "does not name it");
      return -1;
    }
    /* qemu opens the data file by the name the image stores, as it
     * opens any file it is given: a relative name is found from the
     * current directory, not from the image's (unlike a backing file
     * name, which qemu combines with the image's directory).
     */
    L->data_filename = xstrdup (L->h.data_file);
    if (L->data_filename == NULL)
      return -1;
    L->data_ep = qcow2_open_file (L->data_filename);
    if (L->data_ep == NULL || refuse_stream (L->data_ep) == -1
        || (!(opts && opts->force_share)
            && sc_lock_check_read (sc_ep_local_fd (L->data_ep)) == -1)) {
      sc_error_prefix ("data file %s", L->data_filename);
      /* A look at the image does without it, as qemu-img info opens
       * an image without its data file; what is wrong is kept for
       * sc_qcow2_get_info.  One that another process writes is refused
       * as the image itself would be.
       */
      if (top && opts && opts->backing_optional
          && sc_error_errno () != EBUSY) {
        if (L->data_ep != NULL)
          sc_ep_close (L->data_ep);
        L->data_ep = NULL;
        L->data_size = 0;
        q->data_file_error = xstrdup (sc_error_message ());
        return q->data_file_error ? 0 : -1;
      }
      return -1;
    }
    L->data_size = L->data_ep->size;
  }
  return 0;
}

static int
probe_magic (struct sc_endpoint *ep, bool *is_qcow2)
{
  unsigned char magic[4];

  *is_qcow2 = false;
  if (ep->size < sizeof magic)
    return 0;
  if (sc_ep_pread (ep, magic, sizeof magic, 0) == -1)
    return -1;
  *is_qcow2 = sc_get_be32 (magic) == QCOW2_MAGIC;
  return 0;
}

static void
free_layer (struct layer *L)
{
  if (L->data_ep && L->data_ep != L->ep)
    sc_ep_close (L->data_ep);
  if (L->own_ep && L->ep)
    sc_ep_close (L->ep);
  sc_extent_list_free (&L->ext.list);
  free (L->filename);
  free (L->data_filename);
  free (L->l1);
  free (L->l2_sorted);
  free (L->rb_sorted);
  qcow2_header_free (&L->h);
}

/* Open the chain whose top image is the endpoint top, named top_name,
 * appending layers.  The top endpoint belongs to layer 0 at once (and
 * is closed with it when own_top).
 */
static int
open_chain (struct sc_qcow2 *q, struct sc_endpoint *top, bool own_top,
            const char *top_name, const struct sc_qcow2_open_opts *opts)
{
  unsigned max_depth = opts && opts->max_backing_depth
    ? opts->max_backing_depth : DEFAULT_MAX_DEPTH;
  CLEANUP_FREE char *name = xstrdup (top_name);
  CLEANUP_FREE char *format = NULL;
  /* The image whose backing file closes a loop is the one named. */
  size_t culprit = 0;

  if (name == NULL)
    goto fail_top;

  for (;;) {
    struct layer *L, *layers;
    struct sc_fingerprint fp;
    bool is_qcow2;
    size_t d = q->nlayers;
    int r;

    if (d > max_depth) {
      sc_set_error (ELOOP, "backing chain longer than %u images",
                    max_depth);
      return -1;
    }
    if (d > 0)
      layer_opened (q, d - 1);
    layers = realloc (q->layers, (d + 1) * sizeof *layers);
    if (layers == NULL) {
      sc_set_error (errno, "realloc: %s", strerror (errno));
      if (d == 0)
        goto fail_top;
      return -1;
    }
    q->layers = layers;
    L = &layers[d];
    memset (L, 0, sizeof *L);
    L->prealloc = -1;
    L->filename = name;
    name = NULL;
    q->nlayers++;

    if (d == 0) {
      L->ep = top;
      L->own_ep = own_top;
    }
    else {
      L->ep = qcow2_open_file (L->filename);
      L->own_ep = true;
      if (L->ep == NULL)
        goto fail;
    }
    if (refuse_stream (L->ep) == -1)
      goto fail;
    /* As qemu-img: not an image another process is writing. */
    if (!(opts && opts->force_share)
        && sc_lock_check_read (sc_ep_local_fd (L->ep)) == -1)
      goto fail;
    L->file_size = L->ep->size;
    r = sc_ep_fingerprint (L->ep, &fp);
    if (r == -1)
      goto fail;
    /* Endpoints that cannot say what they are (in memory, over the
     * network) are not compared; the depth limit still ends a loop.
     */
    L->have_id = r == 0;
    L->fp = fp;
    L->dev = fp.dev;
    L->ino = fp.ino;
    for (size_t i = 0; i < d && L->have_id; i++)
      if (q->layers[i].have_id && q->layers[i].dev == L->dev
          && q->layers[i].ino == L->ino) {
        sc_set_error (ELOOP, "backing chain loops back to %s",
                      q->layers[i].filename);
        culprit = 1;
        goto fail;
      }

    if (probe_magic (L->ep, &is_qcow2) == -1)
      goto fail;
    if (format && strcmp (format, "raw") == 0)
      L->raw = true;
    else if (format && strcmp (format, "qcow2") != 0) {
      sc_set_error (ENOTSUP, "backing format '%s' is not supported",
                    format);
      goto fail;
    }
    else if (!is_qcow2) {
      if (d == 0 || format) {
        sc_set_error (EINVAL, "not a qcow2 image (bad magic)");
        goto fail;
      }
      L->raw = true;
    }

    if (L->raw) {
      /* qemu sees raw files in whole sectors; the tail reads as zeros. */
      L->size = SC_ROUND_UP (L->file_size, RAW_SECTOR_SIZE);
      return 0;
    }
    if (open_qcow2_layer (q, L, d == 0, opts) == -1)
      goto fail;
    q->l1_bytes += (uint64_t) L->l1_size * sizeof (uint64_t);
    if (q->l1_bytes > CHAIN_MAX_L1_BYTES) {
      sc_set_error (EFBIG, "the L1 tables of the backing chain take more "
                    "than %" PRIu64 " MiB", CHAIN_MAX_L1_BYTES >> 20);
      goto fail;
    }
    if (L->h.backing_file == NULL)
      return 0;
    /* Only the top image can name one here: no backing file is opened
     * when external files are not allowed.
     */
    if (opts && opts->no_external_files) {
      /* A look at the image (backing_optional) shows it, as qemu-img
       * info over an export does, and says why the chain ends here.
       */
      if (opts->backing_optional) {
        bool remote = (q->layers[0].ep->flags & SC_EP_REMOTE) != 0;
        if (asprintf (&q->backing_error, "backing file %s: %s",
                      L->h.backing_file,
                      remote ? "cannot be opened over NBD (the name is "
                               "one on the server's side)"
                             : "not opened (external files are not "
                               "allowed here)") == -1) {
          q->backing_error = NULL;
          sc_set_error (ENOMEM, "out of memory");
          goto fail;
        }
        return 0;
      }
      sc_set_error (EPERM, "the image has a backing file (%s), and "
                    "external files are not allowed here",
                    L->h.backing_file);
      goto fail;
    }

    name = d == 0 ? resolve_from_top (L->ep, L->filename, "backing file",
                                      L->h.backing_file)
                  : resolve_relative (L->filename, L->h.backing_file);
    /* A look at the image does without it, as without any backing file
     * that cannot be found.
     */
    if (name == NULL && d == 0 && sc_error_errno () == ENOENT
        && opts && opts->backing_optional) {
      q->backing_error = xstrdup (sc_error_message ());
      return q->backing_error ? 0 : -1;
    }
    if (name == NULL)
      return -1;
    free (format);
    format = NULL;
    if (L->h.backing_format && (format = xstrdup (L->h.backing_format))
        == NULL)
      return -1;
  }

 fail:
  if (q->nlayers > 1) {
    if (q->nlayers - 1 - culprit > 0)
      sc_error_prefix ("backing file %s",
                       q->layers[q->nlayers - 1 - culprit].filename);
    /* A look at the image does not need its backing file: the chain
     * ends here, and why is kept for sc_qcow2_get_info.
     */
    if (opts && opts->backing_optional) {
      q->backing_failed_errno = sc_error_errno ();
    q->backing_failed_damaged = q->backing_failed_errno == EINVAL
                                || sc_error_is_damage ();
      q->backing_error = xstrdup (sc_error_message ());
      q->backing_failed = xstrdup (q->layers[q->nlayers - 1].filename);
      if (q->backing_error == NULL || q->backing_failed == NULL)
        return -1;
      free_layer (&q->layers[q->nlayers - 1]);
      q->nlayers--;
      return 0;
    }
  }
  return -1;

 fail_top:
  if (own_top)
    sc_ep_close (top);
  return -1;
}

/* Open a handle on the image in file (named name in messages and for
 * resolving the names of backing and data files).  When own, file is
 * the handle's from now on, even if opening fails.
 */
static struct sc_qcow2 *
open_handle (struct sc_endpoint *file, bool own, const char *name,
             const struct sc_qcow2_open_opts *opts)
{
  struct sc_qcow2 *q = calloc (1, sizeof *q);
  uint32_t max_cluster = 0;

  if (q == NULL) {
    sc_set_error (errno, "calloc: %s", strerror (errno));
    if (own)
      sc_ep_close (file);
    return NULL;
  }
  pthread_mutex_init (&q->lock, NULL);
  pthread_mutex_init (&q->ext_lock, NULL);
  pthread_mutex_init (&q->file_lock, NULL);
  if (open_chain (q, file, own, name, opts) == -1) {
    sc_qcow2_close (q);
    return NULL;
  }
  layer_opened (q, q->nlayers - 1);
  for (size_t i = 0; i < q->nlayers; i++)
    if (!q->layers[i].raw)
      max_cluster = SC_MAX (max_cluster, q->layers[i].h.cluster_size);
  q->cache_budget = opts && opts->cache_bytes
    ? opts->cache_bytes : DEFAULT_CACHE_BYTES;
  q->cache_budget = SC_MAX (q->cache_budget,
                            (size_t) max_cluster * MIN_CACHE_TABLES);
  return q;
}

struct sc_qcow2 *
sc_qcow2_open (const char *path, const struct sc_qcow2_open_opts *opts)
{
  struct sc_endpoint *file = qcow2_open_file (path);

  if (file == NULL)
    return NULL;
  return open_handle (file, true, path, opts);
}

struct sc_qcow2 *
sc_qcow2_open_endpoint (struct sc_endpoint *file,
                        const struct sc_qcow2_open_opts *opts)
{
  if (file == NULL) {
    sc_set_error (EINVAL, "no endpoint to read the image from");
    return NULL;
  }
  /* The names inside an image served from elsewhere are names there. */
  if (file->flags & SC_EP_REMOTE) {
    struct sc_qcow2_open_opts remote = { 0 };
    if (opts)
      remote = *opts;
    remote.no_external_files = true;
    return open_handle (file, false, file->name, &remote);
  }
  return open_handle (file, false, file->name, opts);
}

void
sc_qcow2_close (struct sc_qcow2 *q)
{
  if (q == NULL)
    return;
  while (q->mru)
    cache_drop (q, q->mru);
  for (size_t i = 0; i < q->nlayers; i++)
    free_layer (&q->layers[i]);
  free (q->layers);
  free_snapshots (q->snapshots, q->nb_snapshots);
  free (q->backing_error);
  free (q->backing_failed);
  free (q->data_file_error);
  pthread_mutex_destroy (&q->lock);
  pthread_mutex_destroy (&q->ext_lock);
  pthread_mutex_destroy (&q->file_lock);
  free (q);
}

uint64_t
sc_qcow2_virtual_size (const struct sc_qcow2 *q)
{
  return q->layers[0].size;
}

int
sc_is_qcow2 (const char *path)
{
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  unsigned char magic[4];
  ssize_t r;

  if (fd == -1) {
    sc_set_error (errno, "%s", strerror (errno));
    return -1;
  }
  do
    r = pread (fd, magic, sizeof magic, 0);
  while (r == -1 && errno == EINTR);
  if (r == -1) {
    sc_set_error (errno, "read: %s", strerror (errno));
    close (fd);
    return -1;
  }
  close (fd);
  return r == sizeof magic && sc_get_be32 (magic) == QCOW2_MAGIC;
}

/* ---- what the guest-view endpoint (endpoint-qcow2.c) needs ------------ */

int
qcow2_chain_extents (struct sc_qcow2 *q, uint64_t offset, uint64_t end,
                     struct sc_extent_list *list)
{
  while (offset < end) {
    struct cstatus cs;
    uint32_t flags;

    if (chain_status (q, offset, end - offset, true, &cs) == -1
        || (cs.present && cut_short (&q->layers[cs.depth], &cs) == -1))
      return -1;
    flags = !cs.present ? SC_EXTENT_HOLE : cs.zero ? SC_EXTENT_ZERO : 0;
    if (sc_extent_list_append (list, offset, cs.st.len, flags) == -1)
      return -1;
    offset += cs.st.len;
  }
  return 0;
}

int
qcow2_chain_run (struct sc_qcow2 *q, uint64_t offset, uint64_t max,
                 uint64_t *len, bool *data)
{
  struct cstatus cs;

  if (chain_status (q, offset, max, true, &cs) == -1
      || (cs.present && cut_short (&q->layers[cs.depth], &cs) == -1))
    return -1;
  *len = cs.st.len;
  *data = !cs.zero;
  return 0;
}

int
qcow2_chain_fingerprint (struct sc_qcow2 *q, struct sc_fingerprint *fp)
{
  bool any = false;

  memset (fp, 0, sizeof *fp);
  for (size_t d = 0; d < q->nlayers; d++) {
    struct layer *L = &q->layers[d];
    struct sc_endpoint *files[2];

    if (layer_pin (q, L) == -1)
      return -1;
    files[0] = L->ep;
    files[1] = L->data_ep;
    for (size_t i = 0; i < 2; i++) {
      struct sc_fingerprint f;
      int r;

      if (files[i] == NULL || (i == 1 && files[1] == files[0]))
        continue;
      r = sc_ep_fingerprint (files[i], &f);
      if (r == -1) {
        layer_unpin (q, L);
        return -1;
      }
      if (r == 0) {
        sc_fingerprint_fold (fp, &f);
        any = true;
      }
    }
    layer_unpin (q, L);
  }
  return any ? 0 : 1;
}

const char *
qcow2_chain_name (const struct sc_qcow2 *q)
{
  return q->layers[0].filename;
}

uint32_t
qcow2_chain_cluster_size (const struct sc_qcow2 *q)
{
  return q->layers[0].h.cluster_size;
}

/* ---- map ---------------------------------------------------------------- */

/* qemu-img map merges two runs when everything but the position agrees
 * and host offsets, if any, continue each other.
 */
static bool
mergeable (const struct sc_map_entry *a, const struct sc_map_entry *b)
{
  return a->depth == b->depth && a->present == b->present
    && a->zero == b->zero && a->data == b->data
    && a->has_offset == b->has_offset && a->compressed == b->compressed
    && (!a->has_offset || a->offset + a->length == b->offset);
}

int
sc_qcow2_map (struct sc_qcow2 *q, sc_map_fn fn, void *opaque)
{
  uint64_t size = sc_qcow2_virtual_size (q), offset = 0;
  struct sc_map_entry cur = { 0 };

  while (offset < size) {
    struct cstatus cs;
    struct sc_map_entry e = { 0 };

    if (chain_status (q, offset, size - offset, true, &cs) == -1)
      return -1;
    e.start = offset;
    e.length = cs.st.len;
    e.depth = (unsigned) cs.depth;
    e.present = cs.present;
    e.zero = cs.zero;
    e.data = cs.data;
    e.compressed = cs.st.kind == LK_COMPRESSED;
    e.has_offset = cs.st.has_offset && !e.compressed;
    e.offset = e.has_offset ? cs.st.host : 0;
    offset += e.length;

    if (cur.length > 0 && mergeable (&cur, &e))
      cur.length += e.length;
    else {
      if (cur.length > 0 && fn (&cur, opaque) == -1)
        return -1;
      cur = e;
    }
  }
  if (cur.length > 0 && fn (&cur, opaque) == -1)
    return -1;
  return 0;
}

/* ---- info ----------------------------------------------------------------- */

/* Count clusters by kind over the L1/L2 tables of the top layer. */
static int
count_clusters (struct sc_qcow2 *q, struct sc_qcow2_info *info)
{
  struct layer *L = &q->layers[0];

  for (uint32_t i = 0; i < L->l1_size; i++) {
    const unsigned char *table;

    if (L->l1[i] == 0)
      continue;
    pthread_mutex_lock (&q->lock);
    table = cache_get (q, 0, L->l1[i]);
    if (table == NULL) {
      pthread_mutex_unlock (&q->lock);
      return -1;
    }
    for (uint32_t j = 0; j < L->h.l2_entries; j++) {
      uint64_t l2e, bitmap, zero;
      enum qcow2_cluster_type type;
      int r = 0;

      qcow2_l2_entry_get (&L->h, table, j, &l2e, &bitmap);
      zero = bitmap & QCOW2_L2_BITMAP_ALL_ZERO;
      if (qcow2_l2_entry_type (&L->h, l2e, &type) == -1) {
        pthread_mutex_unlock (&q->lock);
        sc_error_prefix ("L2 table at host offset %" PRIu64 ", entry %"
                         PRIu32, L->l1[i], j);
        return -1;
      }
      /* Data that is metadata is refused here as when it is read. */
      if (type == QCOW2_CLUSTER_COMPRESSED) {
        uint64_t coffset, cbytes;

        qcow2_compressed_descriptor (&L->h, l2e, &coffset, &cbytes);
        r = refuse_data_on_meta (L, "compressed cluster", coffset, cbytes);
      }
      else if (type == QCOW2_CLUSTER_NORMAL
               && (!L->extl2 || (bitmap & QCOW2_L2_BITMAP_ALL_ALLOC)))
        r = refuse_data_on_meta (L, "data cluster",
                                 l2e & QCOW2_L2E_OFFSET_MASK,
                                 L->h.cluster_size);
      if (r == -1) {
        pthread_mutex_unlock (&q->lock);
        sc_error_prefix ("L2 table at host offset %" PRIu64 ", entry %"
                         PRIu32, L->l1[i], j);
        return -1;
      }
      switch (type) {
      case QCOW2_CLUSTER_COMPRESSED:
        info->compressed_clusters++;
        info->allocated_clusters++;
        break;
      case QCOW2_CLUSTER_NORMAL:
        if (L->extl2 && zero == QCOW2_L2_BITMAP_ALL_ZERO)
          info->zero_clusters++;
        else
          info->allocated_clusters++;
        break;
      case QCOW2_CLUSTER_ZERO_PLAIN:
      case QCOW2_CLUSTER_ZERO_ALLOC:
        info->zero_clusters++;
        break;
      case QCOW2_CLUSTER_UNALLOCATED:
        if (L->extl2 && zero != 0)
          info->zero_clusters++;
        break;
      }
    }
    pthread_mutex_unlock (&q->lock);
  }
  return 0;
}

/* The fields of *info that the header alone gives, info cleared
 * first; the strings are copies the caller frees with the rest of
 * *info (sc_qcow2_info_free).  ENOMEM.
 */
static int
info_from_header (struct sc_qcow2_info *info, const struct qcow2_header *h)
{
  memset (info, 0, sizeof *info);
  info->version = h->version;
  info->cluster_size = h->cluster_size;
  info->refcount_bits = h->refcount_bits;
  info->incompatible_features = h->incompatible_features;
  info->compatible_features = h->compatible_features;
  info->autoclear_features = h->autoclear_features;
  info->dirty = h->incompatible_features & QCOW2_INCOMPAT_DIRTY;
  info->corrupt = h->incompatible_features & QCOW2_INCOMPAT_CORRUPT;
  info->lazy_refcounts = h->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS;
  info->extended_l2 = h->incompatible_features & QCOW2_INCOMPAT_EXTL2;
  info->data_file_raw = h->autoclear_features & QCOW2_AUTOCLEAR_DATA_RAW;

  if ((h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE) && h->data_file
      && (info->data_file = xstrdup (h->data_file)) == NULL)
    return -1;
  if (h->backing_file
      && (info->backing_file = xstrdup (h->backing_file)) == NULL)
    return -1;
  if (h->backing_format
      && (info->backing_format = xstrdup (h->backing_format)) == NULL)
    return -1;
  return 0;
}

int
sc_qcow2_get_info (struct sc_qcow2 *q, struct sc_qcow2_info *info)
{
  struct layer *L = &q->layers[0];
  const struct qcow2_header *h = &L->h;

  if (info_from_header (info, h) == -1)
    goto err;
  info->virtual_size = L->size;
  info->file_size = L->file_size;
  info->compression_type = L->codec;
  info->extended_l2 = L->extl2;
  info->encryption = L->encryption;
  info->luks = L->luks;

  if ((info->filename = xstrdup (L->filename)) == NULL)
    goto err;
  if (q->backing_error
      && (info->backing_error = xstrdup (q->backing_error)) == NULL)
    goto err;
  if (q->data_file_error
      && (info->data_file_error = xstrdup (q->data_file_error)) == NULL)
    goto err;

  if (q->nlayers > 1) {
    info->chain = calloc (q->nlayers - 1, sizeof *info->chain);
    if (info->chain == NULL) {
      sc_set_error (errno, "calloc: %s", strerror (errno));
      goto err;
    }
    info->chain_len = q->nlayers - 1;
    for (size_t i = 1; i < q->nlayers; i++) {
      struct sc_backing_info *b = &info->chain[i - 1];
      if ((b->filename = xstrdup (q->layers[i].filename)) == NULL
          || (b->format = xstrdup (q->layers[i].raw ? "raw" : "qcow2"))
          == NULL
          || (q->layers[i].data_filename
              && (b->data_file = xstrdup (q->layers[i].data_filename))
              == NULL))
        goto err;
    }
  }

  if (q->nb_snapshots > 0) {
    info->snapshots = calloc (q->nb_snapshots, sizeof *info->snapshots);
    if (info->snapshots == NULL) {
      sc_set_error (errno, "calloc: %s", strerror (errno));
      goto err;
    }
    info->nb_snapshots = q->nb_snapshots;
    for (size_t i = 0; i < q->nb_snapshots; i++) {
      info->snapshots[i] = q->snapshots[i];
      info->snapshots[i].id = xstrdup (q->snapshots[i].id);
      info->snapshots[i].name = xstrdup (q->snapshots[i].name);
      if (info->snapshots[i].id == NULL || info->snapshots[i].name == NULL)
        goto err;
    }
  }

  if (!L->raw && qcow2_bitmaps_list (L->ep, L->file_size, h, &info->bitmaps,
                                     &info->nb_bitmaps) == -1)
    goto err;
  if (count_clusters (q, info) == -1)
    goto err;
  return 0;

 err:
  sc_qcow2_info_free (info);
  return -1;
}

void
sc_qcow2_info_free (struct sc_qcow2_info *info)
{
  free (info->filename);
  free (info->data_file);
  free (info->backing_file);
  free (info->backing_format);
  free (info->backing_error);
  free (info->data_file_error);
  free (info->damage);
  for (size_t i = 0; i < info->chain_len; i++) {
    free (info->chain[i].filename);
    free (info->chain[i].format);
    free (info->chain[i].data_file);
  }
  free (info->chain);
  free_snapshots (info->snapshots, info->nb_snapshots);
  qcow2_bitmaps_free (info->bitmaps, info->nb_bitmaps);
  memset (info, 0, sizeof *info);
}

/* ---- inspecting a damaged image --------------------------------------- */

/* Append one file to info's chain. */
static int
chain_append (struct sc_qcow2_info *info, const char *filename,
              const char *format, const char *data_file)
{
  struct sc_backing_info *c;

  c = realloc (info->chain, (info->chain_len + 1) * sizeof *c);
  if (c == NULL) {
    sc_set_error (errno, "realloc: %s", strerror (errno));
    return -1;
  }
  info->chain = c;
  c = &info->chain[info->chain_len];
  c->filename = xstrdup (filename);
  c->format = xstrdup (format);
  c->data_file = data_file ? xstrdup (data_file) : NULL;
  if (c->filename == NULL || c->format == NULL
      || (data_file && c->data_file == NULL)) {
    free (c->filename);
    free (c->format);
    free (c->data_file);
    return -1;
  }
  info->chain_len++;
  return 0;
}

/* The backing chain of a damaged image whose header h names a backing
 * file: opened from that file on, as open_chain opens it, with what
 * ends it early in backing_error.
 */
static int
inspect_backing (const struct sc_endpoint *top, const char *image,
                 const struct qcow2_header *h,
                 const struct sc_qcow2_open_opts *opts, bool remote,
                 struct sc_qcow2_info *info)
{
  struct sc_qcow2_open_opts o = { 0 };
  struct sc_qcow2_info b;
  struct sc_qcow2 *q;
  CLEANUP_FREE char *file = NULL;
  int r, is_qcow2;

  if (h->backing_file == NULL)
    return 0;
  if (remote || (opts && opts->no_external_files)) {
    if (asprintf (&info->backing_error, "backing file %s: %s",
                  h->backing_file,
                  remote ? "cannot be opened over NBD (the name is one on "
                           "the server's side)"
                         : "not opened (external files are not allowed "
                           "here)") == -1) {
      info->backing_error = NULL;
      sc_set_error (ENOMEM, "out of memory");
      return -1;
    }
    return 0;
  }
  if ((file = resolve_from_top (top, image, "backing file",
                                h->backing_file)) == NULL) {
    if (sc_error_errno () != ENOENT)
      return -1;
    info->backing_error = xstrdup (sc_error_message ());
    return info->backing_error ? 0 : -1;
  }
  if (opts)
    o = *opts;
  o.snapshot = NULL;
  o.backing_optional = true;
  is_qcow2 = sc_is_qcow2 (file);
  if (is_qcow2 == 1 && !(h->backing_format
                         && strcmp (h->backing_format, "qcow2"))) {
    if ((q = sc_qcow2_open (file, &o)) != NULL) {
      r = sc_qcow2_get_info (q, &b);
      sc_qcow2_close (q);
      if (r == 0) {
        r = chain_append (info, file, "qcow2", NULL);
        for (size_t i = 0; r == 0 && i < b.chain_len; i++)
          r = chain_append (info, b.chain[i].filename, b.chain[i].format,
                            b.chain[i].data_file);
        info->backing_error = b.backing_error;
        b.backing_error = NULL;
        sc_qcow2_info_free (&b);
        return r;
      }
    }
  }
  else if (is_qcow2 == 0 && !(h->backing_format
                              && strcmp (h->backing_format, "raw")))
    return chain_append (info, file, "raw", NULL);
  else if (is_qcow2 != -1) {
    if (h->backing_format && strcmp (h->backing_format, "raw")
        && strcmp (h->backing_format, "qcow2"))
      sc_set_error (ENOTSUP, "backing format '%s' is not supported",
                    h->backing_format);
    else
      sc_set_error (EINVAL, "not a qcow2 image (bad magic)");
  }
  sc_error_prefix ("backing file %s", file);
  info->backing_error = xstrdup (sc_error_message ());
  return info->backing_error ? 0 : -1;
}

/* What the header h, the snapshot table t and the bitmap directory of
 * a damaged image (in ep, named name) say, as qemu-img info shows it;
 * damage: why its data cannot be read.  t is freed.
 */
static int
inspect_header (const char *name, struct sc_endpoint *ep,
                const struct qcow2_header *h, struct qcow2_snapshots *t,
                const struct sc_qcow2_open_opts *opts, const char *damage,
                struct sc_qcow2_info *info)
{
  if (info_from_header (info, h) == -1
      || qcow2_encryption_read (ep, ep->size, h, &info->encryption,
                                &info->luks) == -1)
    goto err;
  /* As the reader: qemu counts the guest size in whole sectors. */
  info->virtual_size = SC_ROUND_DOWN (h->size, RAW_SECTOR_SIZE);
  info->file_size = ep->size;
  info->compression_type = h->compression_type == SC_CODEC_ZSTD
    ? SC_CODEC_ZSTD : SC_CODEC_DEFLATE;

  if ((info->damage = xstrdup (damage)) == NULL
      || (info->filename = xstrdup (name)) == NULL)
    goto err;
  if (t->n > 0) {
    size_t n = t->n;
    if (snapshots_take (t, &info->snapshots) == -1)
      goto err;
    info->nb_snapshots = n;
  }
  if (qcow2_bitmaps_list (ep, ep->size, h, &info->bitmaps,
                          &info->nb_bitmaps) == -1
      || inspect_backing (ep, name, h, opts,
                          (ep->flags & SC_EP_REMOTE) != 0, info) == -1)
    goto err;
  return 0;

 err:
  qcow2_snapshots_free (t);
  sc_qcow2_info_free (info);
  return -1;
}

/* The chain of info ends at file, which the reader refuses as damaged:
 * when qemu-img info would show it, it joins the chain with its own
 * chain after it, and what ends that is info's backing_error.  When
 * not, info stays as it is.
 */
static int
inspect_damaged_backing (const char *file,
                         const struct sc_qcow2_open_opts *opts,
                         struct sc_qcow2_info *info)
{
  struct sc_qcow2_open_opts o = *opts;
  struct sc_qcow2_info b;
  int r;

  o.snapshot = NULL;
  if (sc_qcow2_inspect (file, NULL, &o, &b) == -1)
    return 0;
  r = chain_append (info, file, "qcow2", NULL);
  for (size_t i = 0; r == 0 && i < b.chain_len; i++)
    r = chain_append (info, b.chain[i].filename, b.chain[i].format,
                            b.chain[i].data_file);
  if (r == 0) {
    free (info->backing_error);
    info->backing_error = b.backing_error;
    b.backing_error = NULL;
  }
  sc_qcow2_info_free (&b);
  return r;
}

int
sc_qcow2_inspect (const char *path, struct sc_endpoint *file,
                  const struct sc_qcow2_open_opts *opts,
                  struct sc_qcow2_info *info)
{
  struct sc_qcow2_open_opts o = { 0 };
  struct sc_endpoint *ep = file;
  struct qcow2_header h;
  struct qcow2_snapshots t = { 0 };
  struct sc_qcow2 *q;
  CLEANUP_FREE char *damage = NULL;
  const char *name;
  bool qemu_refuses = false;
  int r = -1, err;

  memset (info, 0, sizeof *info);
  memset (&h, 0, sizeof h);
  if (opts)
    o = *opts;
  /* A backing file that cannot be opened is not damage of this image;
   * as qemu-img info, an encrypted image is shown without its key.
   */
  o.backing_optional = true;
  o.allow_encrypted = true;
  if (ep == NULL && (ep = qcow2_open_file (path)) == NULL)
    return -1;
  name = file ? file->name : path;
  if (refuse_stream (ep) == -1
      || (!o.force_share
          && sc_lock_check_read (sc_ep_local_fd (ep)) == -1))
    goto out;
  /* What qemu refuses to open, this refuses too: the header as qemu
   * parses it when it opens an image for qemu-img info, and the
   * snapshot table read as qemu reads it.  qemu checks an image without
   * a refcount table, but opens it for nothing else.
   */
  if (qcow2_header_read_for_info (ep, ep->size, &h) == -1
      || qcow2_snapshots_read (ep, ep->size, &h, true, &t) == -1)
    qemu_refuses = true;
  else if (h.refcount_table_clusters == 0) {
    sc_set_error (EINVAL, "image has no refcount table");
    qemu_refuses = true;
  }
  if (qemu_refuses) {
    err = sc_error_errno ();
    if ((damage = xstrdup (sc_error_message ())) == NULL)
      goto out;
  }

  q = file ? sc_qcow2_open_endpoint (file, &o)
           : open_handle (ep, false, path, &o);
  /* What the reader refuses too, it says why in its own words. */
  if (qemu_refuses) {
    if (q != NULL) {
      sc_qcow2_close (q);
      sc_set_error (err, "%s", damage);
    }
    goto out;
  }
  if (q != NULL) {
    r = sc_qcow2_get_info (q, info);
    /* A backing file that is damaged is shown as this image is. */
    if (r == 0 && q->backing_failed && q->backing_failed_damaged
        && inspect_damaged_backing (q->backing_failed, &o, info) == -1) {
      sc_qcow2_info_free (info);
      sc_qcow2_close (q);
      r = -1;
      goto out;
    }
    sc_qcow2_close (q);
    if (r == 0)
      goto out;
  }
  /* Damage keeps the reader from the data, not from the header; any
   * other error (a read that failed) is the answer.
   */
  err = sc_error_errno ();
  r = -1;
  if (err != EINVAL && !(err == EIO && sc_error_is_damage ()))
    goto out;
  if ((damage = xstrdup (sc_error_message ())) == NULL)
    goto out;
  r = inspect_header (name, ep, &h, &t, &o, damage, info);

 out:
  qcow2_snapshots_free (&t);
  qcow2_header_free (&h);
  if (ep != file)
    sc_ep_close (ep);
  return r;
}
