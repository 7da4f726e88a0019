/* pack: sparse raw data -> a new qcow2 image, in two phases.
 *
 * Phase 1 (scan) runs the shared ordered pipeline over the source's
 * data, rounded out to whole clusters.  Worker threads look for
 * all-zero clusters and compress; the ordered emit step records each
 * cluster's stored form in the plan (qcow2-plan.c), which places it,
 * and the workers then write the compressed bytes at their place in a
 * spill file, in parallel (finish()).  The spill file mirrors the data
 * area of the image: compressed bytes sit at their final offset
 * relative to the data area, and the places of uncompressed clusters
 * are left as holes, so phase 2 copies the spill as it is and fills the
 * holes from the source.
 *
 * Phase 2 (write) copies the image the plan describes to the target
 * with sc_copy, as every command moves data: the image is a source
 * endpoint (qcow2-image.c) whose metadata comes from the plan and whose
 * data comes from the source and the spill file.  A file target is
 * written by the workers, in parallel, uncompressed runs inside the
 * kernel; a stream gets the image in order.  The caller commits the
 * target (it appears under its name) only after sc_pack has written
 * and flushed everything and found the source unchanged.
 *
 * A source across a network (an NBD export) is read once only: phase 1
 * writes each stored cluster straight to its final place in a file
 * target, behind room reserved for the largest metadata the source's
 * extents can need, and phase 2 writes the metadata alone.  A local
 * source packed with compression into a new file goes the same way,
 * so that the compressed bytes are written once.
 */
#include <config.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "internal.h"
#include "qcow2.h"
#include "bmap.h"

/* qemu's unit of virtual size. */
#define QEMU_SECTOR_SIZE 512
#define DEFAULT_CLUSTER_BITS 16
#define DEFAULT_REFCOUNT_BITS 16
/* Pieces of the pipeline hold at least this much, in whole clusters. */
#define MIN_REQUEST_SIZE (1024 * 1024)
/* A gap in the data area at least this large and as aligned is left
 * unwritten, a hole in the target: the block size of common file
 * systems.
 */
#define HOLE_BLOCK_SIZE 4096
/* Written straight to the target, the data area is handed to the
 * target's writeback (sc_ep_writeback) in batches of this many bytes,
 * by the workers, so that the final flush finds little left to do: in
 * the one thread that flushes, writing back 330 MB of compressed data
 * cost 0.016 s of CPU, as much as all of the ordered part of the scan.
 * A batch ends a batch behind the end of the placed data: the clusters
 * just placed may not be written yet (what the workers hold is at most
 * a few pieces), and what a batch misses is flushed at the end anyway.
 */
#define WRITEBACK_BATCH ((uint64_t) 8 * 1024 * 1024)
/* A local source goes straight to the target only with clusters this
 * large or larger (see want_direct).
 */
#define DIRECT_MIN_CLUSTER_SIZE (64 * 1024)
/* Pieces of the image in phase 2.  A piece that is read and written
 * (metadata, or compressed and uncompressed clusters side by side) is
 * small enough to stay in the CPU cache between the read that fills it
 * and the write that empties it: 8 MiB measured clearly slower.
 */
#define WRITE_REQUEST_SIZE (1024 * 1024)
/* The most clusters in a piece of phase 1: 1 MiB of 512-byte clusters
 * (a piece is one cluster when clusters are larger).
 */
#define MAX_PIECE_CLUSTERS (MIN_REQUEST_SIZE / 512)
/* Zero detection without compression first reads this much of a
 * cluster, and progress is reported every PROBE_PROGRESS_STEP bytes:
 * as often as the pipeline reports a piece, so that the count grows
 * evenly whichever way phase 1 goes.
 */
#define ZERO_PROBE_SIZE 4096
#define PROBE_PROGRESS_STEP (1024 * 1024)
/* Per cluster of a piece, work() leaves one code for emit(): zero, raw,
 * or the compressed length (always less than a cluster).
 */
#define CLUSTER_ZERO 0
#define CLUSTER_RAW UINT32_MAX

struct pack {
  const struct sc_pack_opts *opts;
  struct sc_endpoint *src;
  struct qcow2_plan plan;
  uint32_t cluster_size;
  uint32_t request_size;
  /* A source that cannot be read twice goes to the spill whole. */
  bool spill_all;
  /* Or, read once, straight into the target at direct_base + rel
   * (spill_fd is then unused).
   */
  struct sc_endpoint *direct;
  uint64_t direct_base;
  uint64_t wb_next;             /* the data area before it is handed to
                                   the writeback (direct, emit only) */

  /* The content digest (digest.c): blocks hashed by scan_work into
   * the piece's scratch at digest_out, added in order by scan_emit.
   */
  bool digest;
  uint32_t digest_block;
  size_t digest_out;
  struct sc_digest dg;
  /* Or hashed beside the copy, by a pipeline of its own (aside, see
   * aside_start), when the scan would not read the data: into dg too,
   * and stored in the header once the copy is done.
   */
  bool digest_aside;
  struct aside *aside;
  /* Where scan_emit leaves, in the piece's scratch, the place in the
   * data area of each of its clusters, for scan_finish.
   */
  size_t rel_out;

  /* The spill file: the data area, written at offsets. */
  int spill_fd;
  const char *spill_near;       /* the target it is next to, or NULL:
                                   TMPDIR; for messages */

  /* Progress: bytes scanned in phase 1, known once it is over, and
   * what probing scanned before the pipeline took over.
   */
  uint64_t scanned;
  uint64_t scan_base;
  /* The bytes of the data area that phase 1 found, once it is over
   * (found_known): phase 2 counts its writing as that many bytes.
   */
  uint64_t found;
  bool found_known;

  /* The block map written with the image (--bmap-out): built from the
   * scan's reads, where the source's own extents (raw) say there is
   * data; raw_next is the first of them not yet behind the scan.
   */
  struct bmap_builder *bmap;
  struct sc_extent_list raw;
  size_t raw_next;

  /* -S N from a source that is read twice: the clusters that hold
   * what qemu-img convert -S N writes (extents of flags 0), decided
   * before the scan from the source's own extents (sparse_decide).
   */
  bool sparse_decided;
  struct sc_extent_list sparse;
};

void
sc_pack_opts_init (struct sc_pack_opts *opts)
{
  memset (opts, 0, sizeof *opts);
  opts->version = 3;
  opts->cluster_size = 1U << DEFAULT_CLUSTER_BITS;
  opts->refcount_bits = DEFAULT_REFCOUNT_BITS;
  opts->codec = SC_CODEC_NONE;
  opts->compression_type = SC_CODEC_NONE;
  opts->level = -1;
  opts->detect_zeroes = true;
  opts->refuse_images = true;
}

/* ---- the spill file ---------------------------------------------------- */

/* Which spill file failed: a full file system is then the target's,
 * or TMPDIR's.
 */
static void
spill_error_prefix (const struct pack *pk)
{
  if (pk->spill_near)
    sc_error_prefix ("spill file next to %s", pk->spill_near);
  else
    sc_error_prefix ("spill file in TMPDIR");
}

/* ---- phase 1: scan -------------------------------------------------------- */

/* The count of phase 1 when phase 2 writes the data (see struct
 * sc_pack_opts): done bytes scanned of all, of a total of all to read
 * and at most all to write.  What is yet to be written is the data
 * found so far and what is not scanned yet, so the total only shrinks
 * as the scan finds zeros, and the percentage only grows, evenly even
 * when the source is read whole and holds little data.
 */
static struct sc_progress
scan_count (const struct pack *pk, uint64_t done, uint64_t all)
{
  struct sc_progress pr = { done, 0 };

  if (done > all)
    all = done;
  pr.total = all + pk->plan.data_end + (all - done);
  return pr;
}

/* Phase 1 is the first part of the count, or all of it when it writes
 * the data too.
 */
static void
scan_progress (const struct sc_progress *p, void *opaque)
{
  struct pack *pk = opaque;
  uint64_t done = pk->scan_base + p->done;
  struct sc_progress pr = { done, pk->scan_base + p->total };

  pk->scanned = done;
  /* A stream's total is unknown (0) until its end. */
  if (!pk->direct && p->total != 0)
    pr = scan_count (pk, done, pk->scan_base + p->total);
  pk->opts->progress (&pr, pk->opts->progress_opaque);
}

/* Phase 2: the data area written so far, after everything scanned.
 * p counts the bytes of the image copied in order, metadata first.
 */
static void
write_progress (const struct sc_progress *p, void *opaque)
{
  struct pack *pk = opaque;
  const struct qcow2_plan *plan = &pk->plan;
  uint64_t area = plan->file_size - plan->data_offset;
  uint64_t written = p->done > plan->data_offset
    ? p->done - plan->data_offset : 0;
  struct sc_progress pr = { pk->scanned + written, pk->scanned + area };

  /* The data area holds the refcounts too: the count of phase 1 ended
   * at the data found, so the whole area counts as that many bytes.
   */
  if (pk->found_known && area > 0) {
    pr.done = pk->scanned
              + (uint64_t) ((long double) SC_MIN (written, area)
                            * pk->found / area);
    pr.total = pk->scanned + pk->found;
  }

  pk->opts->progress (&pr, pk->opts->progress_opaque);
}

/* The clusters a piece covers (pieces start on cluster boundaries). */
static size_t
piece_clusters (const struct pack *pk, const struct sc_piece *piece)
{
  return SC_DIV_ROUND_UP (piece->length, pk->cluster_size);
}

/* -S N: which clusters of a piece hold bytes that qemu-img convert
 * -S N would write (sc_sparse_run); the others are all zero and left
 * out.  stored has room for every cluster of a piece.
 */
static void
sparse_clusters (const struct pack *pk, const struct sc_piece *piece,
                 bool *stored, size_t n)
{
  uint64_t cs = pk->cluster_size, pos = 0, len;

  memset (stored, 0, n * sizeof *stored);
  if (pk->sparse_decided) {
    const struct sc_extent_list *l = &pk->sparse;
    size_t lo = 0, hi = l->len;

    /* The first extent that ends after the piece's start. */
    while (lo < hi) {
      size_t mid = lo + (hi - lo) / 2;

      if (l->ext[mid].offset + l->ext[mid].length <= piece->offset)
        lo = mid + 1;
      else
        hi = mid;
    }
    for (size_t i = 0; i < n; i++) {
      uint64_t c = piece->offset + i * cs;

      while (lo < l->len && l->ext[lo].offset + l->ext[lo].length <= c)
        lo++;
      stored[i] = lo < l->len && l->ext[lo].offset <= c
                  && l->ext[lo].flags == 0;
    }
    return;
  }
  while (pos < piece->length) {
    if (sc_sparse_run ((const unsigned char *) piece->buf + pos,
                       piece->length - pos, piece->offset + pos,
                       pk->opts->min_sparse, &len))
      for (uint64_t c = pos / cs; c <= (pos + len - 1) / cs && c < n; c++)
        stored[c] = true;
    pos += len;
  }
}

/* Whether the scan's workers hash the data for the digest (else it is
 * hashed beside the copy, see aside_start, or not at all).
 */
static bool
scan_hashes (const struct pack *pk)
{
  return pk->digest && !pk->digest_aside;
}

static int
scan_work (struct sc_piece *piece, void *opaque)
{
  struct pack *pk = opaque;
  const struct sc_pack_opts *opts = pk->opts;
  size_t cs = pk->cluster_size;
  size_t n = piece_clusters (pk, piece);
  uint32_t *codes = piece->out;
  unsigned char *packed = (unsigned char *) piece->out
    + (pk->request_size / cs) * sizeof *codes;
  size_t used = 0;
  struct sc_digest_block *blocks
    = (struct sc_digest_block *) ((unsigned char *) piece->out
                                  + pk->digest_out);
  bool stored[MAX_PIECE_CLUSTERS];
  /* -S N decides the zero clusters (qemu-img convert's rule). */
  bool by_runs = opts->detect_zeroes && opts->min_sparse;

  if (piece->flags != 0)
    return 0;
  if (by_runs)
    sparse_clusters (pk, piece, stored, n);
  if (scan_hashes (pk)) {
    /* A stream's virtual size is known only at its end, which is in
     * the piece that is cut short: its length, rounded up to a sector
     * as the virtual size is, is where the content ends.
     */
    uint64_t limit = (pk->src->flags & SC_EP_STREAM)
      ? SC_ROUND_UP (piece->offset + piece->length, QEMU_SECTOR_SIZE)
      : pk->plan.h.size;

    if (sc_digest_blocks (pk->digest_block, piece->buf, piece->offset,
                          n * cs, limit, blocks) == -1)
      return -1;
  }
  for (size_t i = 0; i < n; i++) {
    const unsigned char *c = (const unsigned char *) piece->buf + i * cs;

    /* A block of the digest as large as the cluster has been looked
     * at already.
     */
    if (by_runs && !stored[i])
      codes[i] = CLUSTER_ZERO;
    else if (!by_runs && opts->detect_zeroes && scan_hashes (pk)
             && pk->digest_block == cs && opts->codec == SC_CODEC_NONE)
      codes[i] = blocks[i].zero ? CLUSTER_ZERO : CLUSTER_RAW;
    else if (!by_runs && opts->detect_zeroes && sc_is_zero (c, cs))
      codes[i] = CLUSTER_ZERO;
    else if (opts->codec != SC_CODEC_NONE) {
      ssize_t r = sc_compress (opts->codec, opts->level, c, cs,
                               packed + used, cs);
      if (r < 0) {
        sc_error_name (pk->src->name);
        return -1;
      }
      if (r == 0)
        codes[i] = CLUSTER_RAW;
      else {
        codes[i] = (uint32_t) r;
        used += (size_t) r;
      }
    }
    else
      codes[i] = CLUSTER_RAW;
  }
  piece->out_len = used;
  return 0;
}

/* Clusters of a piece that are contiguous in its buffer (or in its
 * compressed bytes) and in the data area go to the target or the spill
 * in one write.
 */
struct run {
  const unsigned char *buf;
  uint64_t rel;
  size_t len;
};

static int
run_flush (struct pack *pk, struct run *run)
{
  if (run->len == 0)
    return 0;
  if (pk->direct) {
    if (sc_ep_pwrite (pk->direct, run->buf, run->len,
                      pk->direct_base + run->rel) == -1) {
      sc_error_name (pk->direct->name);
      return -1;
    }
  }
  else if (sc_full_pwrite (pk->spill_fd, run->buf, run->len, run->rel)
           == -1) {
    spill_error_prefix (pk);
    return -1;
  }
  run->len = 0;
  return 0;
}

static int
run_add (struct pack *pk, struct run *run, const unsigned char *buf,
         uint64_t rel, size_t len)
{
  if (run->len > 0 && run->buf + run->len == buf
      && run->rel + run->len == rel) {
    run->len += len;
    return 0;
  }
  if (run_flush (pk, run) == -1)
    return -1;
  *run = (struct run) { buf, rel, len };
  return 0;
}

static void
empty_bmap_error (const struct sc_endpoint *src)
{
  sc_set_error (EINVAL, "%s: empty: --bmap-out has no block map to write "
                "for it (bmaptool create refuses an empty file too)",
                src->name);
}

/* Give the block map the source's data in a data piece of the scan (a
 * stream's pieces are all data).  Pieces come in order and cover every
 * data extent, rounded out to clusters.
 */
static int
bmap_piece (struct pack *pk, const struct sc_piece *piece)
{
  const unsigned char *buf = piece->buf;
  uint64_t end = piece->offset + piece->length;

  if (pk->src->flags & SC_EP_STREAM)
    return bmap_builder_data (pk->bmap, piece->offset, buf,
                              (size_t) piece->length);
  for (; pk->raw_next < pk->raw.len; pk->raw_next++) {
    const struct sc_extent *e = &pk->raw.ext[pk->raw_next];
    uint64_t from = SC_MAX (e->offset, piece->offset);
    uint64_t to = SC_MIN (e->offset + e->length, end);

    if (e->offset >= end)
      break;
    if (!(e->flags & (SC_EXTENT_HOLE | SC_EXTENT_ZERO)) && from < to
        && bmap_builder_data (pk->bmap, from, buf + (from - piece->offset),
                              (size_t) (to - from)) == -1)
      return -1;
    /* An extent that runs on into the next piece stays. */
    if (e->offset + e->length > end)
      break;
  }
  return 0;
}

/* Whether the stored clusters of a piece are written to the target or
 * the spill as they are scanned: the compressed ones whenever there is
 * a place for them, the others only when the source is not read again.
 */
static bool
writes_compressed (const struct pack *pk)
{
  return pk->direct || pk->spill_fd >= 0;
}

static bool
writes_raw (const struct pack *pk)
{
  return pk->direct || pk->spill_all;
}

/* In order: the plan places each stored cluster of the piece; only
 * where it goes is decided here, scan_finish writes it there.
 */
static int
scan_emit (struct sc_piece *piece, void *opaque)
{
  struct pack *pk = opaque;
  size_t cs = pk->cluster_size;
  size_t n = piece_clusters (pk, piece);
  const uint32_t *codes = piece->out;
  uint64_t *rels = (uint64_t *) ((unsigned char *) piece->out + pk->rel_out);
  uint64_t gc = piece->offset / cs;

  /* Pieces start and end on cluster boundaries, but for the last
   * piece of a stream, whose blocks go on to the cluster's end as
   * scan_work's do; digest blocks divide clusters.
   */
  if (scan_hashes (pk)) {
    if (piece->flags != 0)
      sc_digest_add_zero (&pk->dg, n * cs / pk->digest_block);
    else if (sc_digest_add (&pk->dg, (const struct sc_digest_block *)
                            ((const unsigned char *) piece->out
                             + pk->digest_out),
                            n * cs / pk->digest_block) == -1)
      return -1;
  }
  /* A stream's virtual size grows with what has been read, its runs
   * of zeros (see scan_pipeline) too.
   */
  if ((pk->src->flags & SC_EP_STREAM)
      && qcow2_plan_grow (&pk->plan,
                          SC_ROUND_UP (piece->offset + piece->length,
                                       QEMU_SECTOR_SIZE)) == -1)
    return -1;
  if (piece->flags != 0)
    return 0;
  if (pk->bmap && bmap_piece (pk, piece) == -1)
    return -1;
  /* The first bytes are where an image shows what it is; a file the
   * program could probe before, a pipe only here.
   */
  if (piece->offset == 0 && pk->opts->refuse_images && piece->length >= 4
      && sc_get_be32 (piece->buf) == QCOW2_MAGIC) {
    sc_set_error (EMEDIUMTYPE, "%s: a qcow2 image, not raw data",
                  pk->src->name);
    return -1;
  }
  for (size_t i = 0; i < n; i++, gc++) {
    if (codes[i] == CLUSTER_ZERO)
      continue;
    if (codes[i] == CLUSTER_RAW) {
      if (qcow2_plan_add_normal (&pk->plan, gc, &rels[i]) == -1)
        return -1;
    }
    else if (qcow2_plan_add_compressed (&pk->plan, gc, codes[i], &rels[i])
             == -1)
      return -1;
  }
  piece->user = 1;              /* placed: scan_finish writes it */
  /* piece->placed and out_len: the range of the data area to hand to
   * the writeback (out_len 0: none).
   */
  piece->out_len = 0;
  if (pk->direct && pk->plan.data_end >= pk->wb_next + 2 * WRITEBACK_BATCH) {
    piece->placed = pk->wb_next;
    pk->wb_next = pk->plan.data_end - WRITEBACK_BATCH;
    piece->out_len = pk->wb_next - piece->placed;
  }
  return 1;
}

/* On any worker, after scan_emit: write the piece's stored clusters
 * where the plan put them, contiguous ones in one write.  The places of
 * different pieces never overlap.  Bytes between them that nothing
 * writes (the rest of a host cluster) are named by no table: they read
 * as zeros in a new file or spill file, and keep what a device or an
 * existing file held before, which no reader looks at.
 */
static int
scan_finish (struct sc_piece *piece, void *opaque)
{
  struct pack *pk = opaque;
  size_t cs = pk->cluster_size;
  size_t n = piece_clusters (pk, piece);
  const uint32_t *codes = piece->out;
  const unsigned char *packed = (const unsigned char *) piece->out
    + (pk->request_size / cs) * sizeof *codes;
  const uint64_t *rels
    = (const uint64_t *) ((const unsigned char *) piece->out + pk->rel_out);
  bool raw = writes_raw (pk), compressed = writes_compressed (pk);
  struct run run = { NULL, 0, 0 };
  size_t used = 0;

  if (piece->flags != 0 || piece->user != 1)
    return 0;
  for (size_t i = 0; i < n; i++) {
    if (codes[i] == CLUSTER_ZERO)
      continue;
    if (codes[i] == CLUSTER_RAW) {
      if (raw && run_add (pk, &run, (const unsigned char *) piece->buf
                                    + i * cs, rels[i], cs) == -1)
        return -1;
    }
    else {
      if (compressed && run_add (pk, &run, packed + used, rels[i],
                                 codes[i]) == -1)
        return -1;
      used += codes[i];
    }
  }
  if (run_flush (pk, &run) == -1)
    return -1;
  if (pk->direct && piece->out_len > 0)
    sc_ep_writeback (pk->direct, pk->direct_base + piece->placed,
                     piece->out_len);
  return 0;
}

/* Add the bytes [start, end) that qemu-img convert writes to
 * pk->sparse, as whole clusters; the list stays contiguous, its gaps
 * holes.
 */
static int
sparse_add (struct pack *pk, uint64_t start, uint64_t end)
{
  struct sc_extent_list *l = &pk->sparse;
  uint64_t cs = pk->cluster_size;
  uint64_t listed = l->len ? l->ext[l->len - 1].offset
                             + l->ext[l->len - 1].length : 0;

  start = SC_MAX (SC_ROUND_DOWN (start, cs), listed);
  end = SC_ROUND_UP (end, cs);
  if (end <= start)
    return 0;
  if (sc_extent_list_append (l, listed, start - listed, SC_EXTENT_HOLE)
      == -1)
    return -1;
  return sc_extent_list_append (l, start, end - start, 0);
}

/* The source's status as qemu's block status of a raw file gives it,
 * for sc_sparse_decide: the extent at offset joined with those after
 * it of its kind, data or not.
 */
struct raw_status {
  struct pack *pk;
  const struct sc_extent_list *raw;
  size_t i;
};

static int
raw_status (void *opaque, uint64_t offset, uint64_t max, uint64_t *len,
            bool *data)
{
  struct raw_status *rs = opaque;
  const struct sc_extent_list *raw = rs->raw;
  size_t i, j;

  while (rs->i < raw->len
         && raw->ext[rs->i].offset + raw->ext[rs->i].length <= offset)
    rs->i++;
  i = rs->i;
  if (i == raw->len || raw->ext[i].offset > offset) {
    sc_set_error (EIO, "the extents end before the size");
    return -1;
  }
  *data = (raw->ext[i].flags & (SC_EXTENT_HOLE | SC_EXTENT_ZERO)) == 0;
  for (j = i; j + 1 < raw->len
       && ((raw->ext[j + 1].flags & (SC_EXTENT_HOLE | SC_EXTENT_ZERO))
           == 0) == *data; j++)
    ;
  *len = SC_MIN (raw->ext[j].offset + raw->ext[j].length - offset, max);
  return 0;
}

static int
raw_write (void *opaque, uint64_t start, uint64_t end)
{
  struct raw_status *rs = opaque;

  return sparse_add (rs->pk, start, end);
}

/* -S N: which clusters qemu-img convert -S N stores, decided as it
 * does from the source's extents (raw) and data (sc_sparse_decide; a
 * raw source asks for no alignment of the end of a run).  The pieces
 * of the scan start and end elsewhere than qemu-img's buffers, so the
 * decision is made here, reading the data once more, and the scan
 * looks it up.
 */
static int
sparse_decide (struct pack *pk, const struct sc_extent_list *raw)
{
  struct raw_status rs = { .pk = pk, .raw = raw };

  if (sc_sparse_decide (pk->src, pk->opts->min_sparse, 512, raw_status,
                        raw_write, &rs) == -1)
    return -1;
  pk->sparse_decided = true;
  return 0;
}

/* The source's extents with every data extent rounded out to whole
 * clusters: a cluster that is partly data is a data cluster.  The list
 * ends at the virtual size rounded up to a cluster (the pipeline reads
 * zeros past the end of the source).
 */
static int
cluster_extents (struct pack *pk, struct sc_extent_list *out)
{
  struct sc_extent_list raw;
  /* The block map needs the extents as they are: kept in pk. */
  bool keep = pk->bmap != NULL;
  uint64_t cs = pk->cluster_size;
  uint64_t end = SC_ROUND_UP (pk->src->size, cs);
  uint64_t pos = 0;             /* everything before pos is listed */
  int ret = -1;

  sc_extent_list_init (&raw);
  if (pk->src->size > 0
      && sc_ep_extents_all (pk->src, 0, pk->src->size, &raw) == -1) {
    sc_error_name (pk->src->name);
    goto out;
  }
  for (size_t i = 0; i < raw.len; i++) {
    const struct sc_extent *e = &raw.ext[i];
    uint64_t start, stop;

    if (e->flags & (SC_EXTENT_HOLE | SC_EXTENT_ZERO))
      continue;
    start = SC_ROUND_DOWN (e->offset, cs);
    stop = SC_MIN (SC_ROUND_UP (e->offset + e->length, cs), end);
    if (start < pos)
      start = pos;
    /* Extents past the end, or already covered, add nothing. */
    if (stop <= start)
      continue;
    if (sc_extent_list_append (out, pos, start - pos, SC_EXTENT_HOLE) == -1
        || sc_extent_list_append (out, start, stop - start, 0) == -1)
      goto out;
    pos = stop;
  }
  if (sc_extent_list_append (out, pos, end - pos, SC_EXTENT_HOLE) == -1)
    goto out;
  if (pk->opts->detect_zeroes && pk->opts->min_sparse
      && pk->src->size > 0 && sparse_decide (pk, &raw) == -1)
    goto out;
  ret = 0;
  if (keep) {
    pk->raw = raw;
    sc_extent_list_init (&raw);
  }
 out:
  sc_extent_list_free (&raw);
  return ret;
}

/* Uncompressed, with zero detection, from a regular file: a cluster
 * of data almost always shows a non-zero byte in its first few KiB, so
 * each cluster is probed with a short read and read whole only when
 * the probe is all zeros.  Phase 2 copies the data anyway; phase 1
 * then reads a sixteenth of it instead of all of it.
 *
 * That only pays while the data is in the page cache: from the disk,
 * short reads one after another lose to the pipeline's long parallel
 * ones.  So the probes read only what is cached, and the first one that
 * would wait stops the probing: *stop is set to the cluster where the
 * pipeline must take over (the end when probing finished).
 */
static int
scan_probing (struct pack *pk, const struct sc_extent_list *extents,
              uint64_t *stop)
{
  const struct sc_pack_opts *opts = pk->opts;
  uint64_t cs = pk->cluster_size;
  size_t probe = (size_t) SC_MIN (cs, (uint64_t) ZERO_PROBE_SIZE);
  struct sc_progress pr = { 0, 0 };
  uint64_t reported = 0, rel;
  CLEANUP_FREE unsigned char *buf = malloc (cs);

  if (buf == NULL) {
    sc_set_error (errno, "out of memory");
    return -1;
  }
  for (size_t i = 0; i < extents->len; i++)
    if (extents->ext[i].flags == 0)
      pr.total += extents->ext[i].length;

  for (size_t i = 0; i < extents->len; i++) {
    const struct sc_extent *e = &extents->ext[i];

    if (e->flags != 0)
      continue;
    for (uint64_t o = e->offset; o < e->offset + e->length; o += cs) {
      /* Past the end of the source, a cluster reads as zeros. */
      size_t n = o >= pk->src->size
        ? 0 : (size_t) SC_MIN (cs, pk->src->size - o);
      size_t p = SC_MIN (probe, n);
      bool zero = true;

      if (n > 0) {
        int r = sc_ep_pread_nowait (pk->src, buf, p, o);

        zero = r == 0 && sc_is_zero (buf, p);
        if (zero && n > p) {
          r = sc_ep_pread_nowait (pk->src, buf + p, n - p, o + p);
          zero = r == 0 && sc_is_zero (buf + p, n - p);
        }
        if (r == -1) {
          sc_error_name (pk->src->name);
          return -1;
        }
        if (r == 1) {
          pk->scan_base = pr.done;
          *stop = o;
          return 0;
        }
      }
      if (!zero && qcow2_plan_add_normal (&pk->plan, o / cs, &rel) == -1)
        return -1;
      pr.done += SC_MIN (cs, e->offset + e->length - o);
      if (opts->progress && pr.done - reported >= PROBE_PROGRESS_STEP) {
        struct sc_progress part = scan_count (pk, pr.done, pr.total);
        reported = pr.done;
        opts->progress (&part, opts->progress_opaque);
      }
    }
  }
  pk->scanned = pr.total;
  pk->found = pk->plan.data_end;
  pk->found_known = true;
  if (opts->progress) {
    struct sc_progress part = scan_count (pk, pr.total, pr.total);
    opts->progress (&part, opts->progress_opaque);
  }
  *stop = UINT64_MAX;
  return 0;
}

/* The part of a cluster-aligned extent list from offset on. */
static int
extents_from (const struct sc_extent_list *in, uint64_t offset,
              struct sc_extent_list *out)
{
  for (size_t i = 0; i < in->len; i++) {
    const struct sc_extent *e = &in->ext[i];
    uint64_t end = e->offset + e->length;

    if (end <= offset)
      continue;
    if (e->offset >= offset) {
      if (sc_extent_list_append (out, e->offset, e->length, e->flags) == -1)
        return -1;
    }
    else if (sc_extent_list_append (out, offset, end - offset, e->flags)
             == -1)
      return -1;
  }
  return 0;
}

/* Phase 1 through the pipeline: read, look for zeros, compress. */
static int
scan_pipeline (struct pack *pk, const struct sc_extent_list *extents)
{
  const struct sc_pack_opts *opts = pk->opts;
  struct sc_pipeline pl = {
    .src = pk->src,
    .extents = extents,
    .request_size = pk->request_size,
    .threads = opts->threads,
    .out_size = pk->rel_out
                + (pk->request_size / pk->cluster_size) * sizeof (uint64_t),
    .work = scan_work,
    .emit = scan_emit,
    .finish = scan_finish,
    /* Clusters of a stream that the reader found all zeros are zero
     * clusters, as scan_work would find them, unless every byte goes
     * into the block map or -S decides by runs.
     */
    .stream_zeros = opts->detect_zeroes && opts->min_sparse == 0
                    && pk->bmap == NULL,
    .opaque = pk,
    .progress = opts->progress ? scan_progress : NULL,
    .progress_opaque = pk,
  };

  if (sc_pipeline_run (&pl) == -1)
    return -1;
  pk->found = pk->plan.data_end;
  pk->found_known = !pk->direct;
  if (pk->spill_fd >= 0) {
    /* The spill covers the whole data area, so phase 2 never reads
     * past its end.
     */
    if (ftruncate (pk->spill_fd,
                   (off_t) SC_ROUND_UP (pk->plan.data_end,
                                        QCOW2_COMPRESSED_SECTOR)) == -1) {
      sc_set_error (errno, "%s", strerror (errno));
      spill_error_prefix (pk);
      return -1;
    }
  }
  return 0;
}

static int
scan (struct pack *pk, const struct sc_extent_list *extents)
{
  const struct sc_pack_opts *opts = pk->opts;
  uint64_t cs = pk->cluster_size;

  /* A block map needs every byte of the data read, once, in order,
   * and the digest, unless it is hashed beside (aside_start), needs
   * every byte hashed by the workers: only the pipeline does that.
   */
  if (pk->bmap || scan_hashes (pk))
    return scan_pipeline (pk, extents);

  /* Probing needs a source that can tell what is in memory (a regular
   * file).  A block device is read in long requests: short probes
   * scattered over a slow device would cost more than they save.
   */
  if (!pk->spill_all && opts->detect_zeroes && opts->codec == SC_CODEC_NONE
      && opts->min_sparse == 0 && sc_ep_can_pread_nowait (pk->src)) {
    struct sc_extent_list rest;
    uint64_t stop;
    int r;

    if (scan_probing (pk, extents, &stop) == -1)
      return -1;
    if (stop == UINT64_MAX)
      return 0;
    /* The rest is not in memory: the pipeline reads it. */
    sc_extent_list_init (&rest);
    r = extents_from (extents, stop, &rest);
    if (r == 0)
      r = scan_pipeline (pk, &rest);
    sc_extent_list_free (&rest);
    return r;
  }

  /* Nothing to look at in the data: every data cluster is stored as it
   * is, and the plan follows from the extent list alone.  Nothing is
   * read here, so nothing is counted: the count is of the writing
   * alone, from 0.
   */
  if (!pk->spill_all && !opts->detect_zeroes
      && opts->codec == SC_CODEC_NONE) {
    uint64_t rel, total = 0;

    for (size_t i = 0; i < extents->len; i++) {
      const struct sc_extent *e = &extents->ext[i];
      if (e->flags != 0)
        continue;
      for (uint64_t o = e->offset; o < e->offset + e->length; o += cs)
        if (qcow2_plan_add_normal (&pk->plan, o / cs, &rel) == -1)
          return -1;
      total += e->length;
    }
    pk->scanned = 0;
    if (opts->progress) {
      struct sc_progress pr = { 0, total };
      opts->progress (&pr, opts->progress_opaque);
    }
    return 0;
  }
  return scan_pipeline (pk, extents);
}

/* ---- the digest beside the copy ------------------------------------------ */

/* Uncompressed from a regular file, the scan reads only a few KiB of a
 * cluster that is not zero (scan_probing) and phase 2 copies the data
 * inside the kernel, so much of the time of such a pack is the
 * target's writeback, the CPUs idle.  Hashing every byte in the scan
 * instead made phase 2 wait for all of the data to be read into the
 * workers' buffers and hashed (SHA-256 runs at about 2 GB/s per core).
 * So the digest is computed beside the scan and phase 2, by a pipeline
 * of its own on its own thread, reading the source's data extents
 * (holes cost nothing, as in the scan) from the page cache.  It starts
 * before the scan: the hashing is the longest part of such a pack (on
 * 2.4 GB of data, 2.05-2.15 s of CPU with the digest, 0.78 s without),
 * and the scan probes on one thread, the other CPUs idle; started after
 * the scan, it could use them only beside the copy.  A source not in
 * memory is read for both once, by whichever comes first (from a cold
 * page cache, 1 GB packed in 1.39 s, median of 4, against 1.52 s when
 * the hashing started after the scan, on a loaded machine).  The copy
 * writes the header with a digest of zeros in the extension's place;
 * once the copy is flushed and the hashing done, the header is written
 * again with the digest, before the target is committed or its magic
 * written, and the image is the one a pack without the digest writes
 * but for the extension.
 */
struct aside {
  struct pack *pk;
  const struct sc_extent_list *extents;
  uint64_t limit;               /* the virtual size */
  unsigned threads;             /* hashing threads */
  unsigned active;              /* of them, those that hash (atomic) */
  pthread_t thread;
  bool stop;                    /* the pack failed: stop (atomic) */
  int ret;                      /* of the pipeline, once joined */
  int err;
  char msg[512];
};

static int
aside_work (struct sc_piece *piece, void *opaque)
{
  struct aside *a = opaque;
  const struct pack *pk = a->pk;

  if (__atomic_load_n (&a->stop, __ATOMIC_RELAXED)) {
    sc_set_error (ECANCELED, "digest: the pack stopped");
    return -1;
  }
  /* Data pieces begin and end on cluster boundaries (cluster_extents),
   * which digest blocks divide.
   */
  return sc_digest_blocks (pk->digest_block, piece->buf, piece->offset,
                           (size_t) piece->length, a->limit, piece->out);
}

static int
aside_emit (struct sc_piece *piece, void *opaque)
{
  struct aside *a = opaque;
  struct pack *pk = a->pk;
  uint64_t n = piece->length / pk->digest_block;

  if (piece->flags != 0)
    sc_digest_add_zero (&pk->dg, n);
  else if (sc_digest_add (&pk->dg, piece->out, (size_t) n) == -1)
    return -1;
  return 0;
}

static void *
aside_thread (void *arg)
{
  struct aside *a = arg;
  const struct pack *pk = a->pk;
  struct sc_pipeline pl = {
    .src = pk->src,
    .extents = a->extents,
    .request_size = pk->request_size,
    .threads = a->threads,
    .active = &a->active,
    .out_size = (pk->request_size / pk->digest_block)
                * sizeof (struct sc_digest_block),
    .work = aside_work,
    .emit = aside_emit,
    .opaque = a,
  };

  a->ret = sc_pipeline_run (&pl);
  /* The error lives in this thread: kept for the one that joins it. */
  if (a->ret == -1) {
    a->err = sc_error_errno ();
    snprintf (a->msg, sizeof a->msg, "%s", sc_error_message ());
  }
  return NULL;
}

/* Whether the digest is computed beside the copy: when the scan would
 * not read every byte without it (an uncompressed pack of a regular
 * file, with or without zero detection), and into a target whose header
 * can be written again (seekable, not a stream).  Other sources are
 * read whole in the scan anyway (devices, NBD, pipes), and so is the
 * data of a compressed pack or one that makes a block map.
 */
static bool
want_aside (const struct pack *pk, struct sc_endpoint *dst)
{
  const struct sc_pack_opts *opts = pk->opts;

  return pk->digest && !pk->bmap && !pk->spill_all && pk->direct == NULL
    && opts->bmap == NULL && opts->codec == SC_CODEC_NONE
    && !(opts->detect_zeroes && opts->min_sparse)
    && sc_ep_can_pread_nowait (pk->src) && sc_ep_local_fd (pk->src) >= 0
    && (dst->flags & SC_EP_SEEKABLE) && !(dst->flags & SC_EP_STREAM);
}

/* Whether one thread copies the data into dst from local files (the
 * source, or the spill file): into a regular file, whose writes,
 * copy_file_range and pwrite alike, take the file's lock one at a time,
 * and beside the hashing of the digest into a device too (a source
 * across a network keeps a request in flight per thread).  Into a
 * file, on 2 CPUs, with two threads 30% of the copy's CPU time went to
 * waiting for that lock (rwsem_spin_on_owner), which the hashing needs;
 * with one, perf finds no such wait left.  Without the digest, 2.7 GB
 * of data packed uncompressed from a file into a file took as long with
 * one thread as with two (1.86 s against 1.82 s, medians of 10 runs,
 * alternating) and 45% less CPU time (0.75 s against 1.35 s), and from
 * a cold page cache less time (pack -j 1 against -j 2: 2.22 s against
 * 3.63 s, medians of 3).
 */
static bool
copies_alone (const struct pack *pk, struct sc_endpoint *dst)
{
  int fd = sc_ep_local_fd (dst);
  struct stat st;

  if (fd < 0 || !(pk->spill_all || sc_ep_local_fd (pk->src) >= 0))
    return false;
  return pk->digest_aside || (fstat (fd, &st) == 0 && S_ISREG (st.st_mode));
}

/* Start hashing extents (alive until aside_join) beside the copy into
 * dst.  The copy into a file or a device, on one thread, is the longer
 * of the two where memory copies are slow (its CPU time is mostly the
 * kernel's copy into the page cache), and a hashing thread for every
 * CPU took CPU time from it: while it copies, the hashing takes one
 * thread fewer than -j, at least one.  Once the data is written, the
 * target's flush leaves the CPUs idle, and what is left to hash takes
 * every thread (aside_copied).  On 2 CPUs, 2.7 GB of data into a file,
 * pack --digest took 1.26-1.29 times as long as pack --no-digest with
 * one hashing thread throughout, and 1.18 when a second joins it for
 * the flush (medians of 10 runs of each, rotated, in two series).
 */
static int
aside_start (struct pack *pk, const struct sc_extent_list *extents,
             struct sc_endpoint *dst)
{
  struct aside *a = calloc (1, sizeof *a);
  unsigned threads = pk->opts->threads ? pk->opts->threads
                                       : sc_online_cpus ();
  int r;

  if (a == NULL) {
    sc_set_error (errno, "out of memory");
    return -1;
  }
  a->pk = pk;
  a->extents = extents;
  a->limit = pk->plan.h.size;
  a->threads = threads;
  a->active = copies_alone (pk, dst) && threads > 1 ? threads - 1 : threads;
  r = pthread_create (&a->thread, NULL, aside_thread, a);
  if (r != 0) {
    sc_set_error (r, "digest: cannot start a thread: %s", strerror (r));
    free (a);
    return -1;
  }
  pk->aside = a;
  return 0;
}

/* The data is written, and the flush of the target (0.6-0.9 s for 2.4
 * GB into a file, its CPUs idle) is all that is left of the copy: what
 * is left to hash takes every thread.
 */
static void
aside_copied (struct pack *pk)
{
  if (pk->aside != NULL)
    __atomic_store_n (&pk->aside->active, pk->aside->threads,
                      __ATOMIC_RELAXED);
}

/* Wait for the hashing to end (asked to stop at once when the pack has
 * failed, ok false); 0, or -1 with its error set when ok.
 */
static int
aside_join (struct pack *pk, bool ok)
{
  struct aside *a = pk->aside;
  int r;

  if (a == NULL)
    return 0;
  if (!ok)
    __atomic_store_n (&a->stop, true, __ATOMIC_RELAXED);
  pthread_join (a->thread, NULL);
  pk->aside = NULL;
  r = a->ret;
  if (r == -1 && ok)
    sc_set_error (a->err, "%s", a->msg);
  free (a);
  return r;
}

/* The hashing done, the digest goes into the header the copy wrote.
 * The header and its extensions fit the smallest cluster, so the
 * first block of the image is all that changes; it was written whole.
 */
static int
aside_finish (struct pack *pk, struct sc_endpoint *dst)
{
  uint64_t cs = pk->cluster_size;
  size_t len = (size_t) SC_MIN (cs, (uint64_t) HOLE_BLOCK_SIZE);
  unsigned char sha[SC_DIGEST_LEN];
  CLEANUP_FREE unsigned char *buf = NULL;

  if (aside_join (pk, true) == -1) {
    sc_error_name (pk->src->name);
    return -1;
  }
  buf = malloc (cs);
  if (buf == NULL) {
    sc_set_error (errno, "out of memory");
    return -1;
  }
  if (sc_digest_final (&pk->dg, pk->plan.h.size, sha) == -1
      || qcow2_plan_set_digest (&pk->plan, pk->digest_block, sha) == -1
      || qcow2_plan_metadata (&pk->plan, 0, buf) == -1
      || sc_ep_pwrite (dst, buf, len, 0) == -1
      || sc_ep_flush (dst) == -1) {
    sc_error_name (dst->name);
    return -1;
  }
  return 0;
}

/* ---- a stream target's last cluster ---------------------------------- */

/* What goes into a stream cannot be taken back, and the reader of a
 * pipe cannot tell a pack that failed from one that ended.  qemu reads
 * past the end of an image file as zeros, so any cut image whose header
 * came through opens, and qemu-img convert reads zeros for what is
 * missing: no layout can change that.  What qemu-img check refuses is a
 * table the header names that lies one cluster or more past the end of
 * the file.  So a stream ends with its refcount table (plan.rt_last),
 * which the readers of a stream do not need before the end, and its
 * last cluster is held back until the image is complete and the source
 * found unchanged: a stream that stops anywhere before that lacks it,
 * and qemu-img check, sparsecow check and unpack refuse the image.
 */
#define HOLD_CLUSTERS 1

struct tail_ep {
  struct sc_endpoint ep;
  struct sc_endpoint *dst;
  uint64_t hold_from;           /* image offset of the first byte held */
  unsigned char *buf;           /* bytes [hold_from, ep.size) */
  size_t len;
};

static int
tail_pwrite (struct sc_endpoint *ep, const void *buf, size_t count,
             uint64_t offset)
{
  struct tail_ep *t = (struct tail_ep *) ep;
  const unsigned char *p = buf;
  uint64_t end;

  if (SC_ADD_OVERFLOW (offset, (uint64_t) count, &end)
      || end > t->hold_from + t->len) {
    sc_set_error (EINVAL, "write at offset %" PRIu64 " runs past the "
                  "image's end", offset);
    return -1;
  }
  if (offset < t->hold_from) {
    size_t n = (size_t) SC_MIN ((uint64_t) count, t->hold_from - offset);

    if (sc_ep_pwrite (t->dst, p, n, offset) == -1)
      return -1;
    p += n;
    count -= n;
    offset += n;
  }
  if (count > 0)
    memcpy (t->buf + (offset - t->hold_from), p, count);
  return 0;
}

static int
tail_zero (struct sc_endpoint *ep, uint64_t count, uint64_t offset,
           unsigned flags)
{
  struct tail_ep *t = (struct tail_ep *) ep;
  uint64_t end;

  if (SC_ADD_OVERFLOW (offset, count, &end)
      || end > t->hold_from + t->len) {
    sc_set_error (EINVAL, "zeroing at offset %" PRIu64 " runs past the "
                  "image's end", offset);
    return -1;
  }
  if (offset < t->hold_from) {
    uint64_t n = SC_MIN (count, t->hold_from - offset);

    if (sc_ep_zero (t->dst, n, offset, flags) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  if (count > 0)
    memset (t->buf + (offset - t->hold_from), 0, (size_t) count);
  return 0;
}

/* The target is flushed once the held cluster has gone out
 * (tail_release): flushing a file behind standard output now would make
 * it as long as the whole image, and the missing cluster read as zeros
 * inside it.
 */
static int
tail_flush (struct sc_endpoint *ep)
{
  (void) ep;
  return 0;
}

static int
tail_close (struct sc_endpoint *ep)
{
  free (((struct tail_ep *) ep)->buf);
  sc_ep_free (ep);
  return 0;
}

static const struct sc_endpoint_ops tail_ops = {
  .kind = "stream",
  .pwrite = tail_pwrite,
  .zero = tail_zero,
  .flush = tail_flush,
  .close = tail_close,
};

/* dst, already sized to the image, with its last clusters held back. */
static struct sc_endpoint *
tail_new (struct sc_endpoint *dst, uint64_t cluster_size)
{
  uint64_t hold = SC_MIN (dst->size, HOLD_CLUSTERS * cluster_size);
  struct tail_ep *t = sc_ep_new (sizeof *t, &tail_ops, dst->name);

  if (t == NULL)
    return NULL;
  t->dst = dst;
  t->hold_from = dst->size - hold;
  t->len = (size_t) hold;
  t->buf = calloc (1, t->len ? t->len : 1);
  if (t->buf == NULL) {
    sc_set_error (errno, "out of memory");
    tail_close (&t->ep);
    return NULL;
  }
  t->ep.size = dst->size;
  t->ep.flags = dst->flags;
  t->ep.block_size = dst->block_size;
  t->ep.max_request = dst->max_request;
  t->ep.piece_size = dst->piece_size;
  t->ep.max_in_flight = dst->max_in_flight;
  t->ep.queue_depth = dst->queue_depth;
  t->ep.zero_mode = dst->zero_mode;
  t->ep.min_sparse = dst->min_sparse;
  t->ep.allocate = dst->allocate;
  return &t->ep;
}

/* The image is complete: the held clusters go out. */
static int
tail_release (struct sc_endpoint *ep)
{
  struct tail_ep *t = (struct tail_ep *) ep;

  if ((t->len > 0
       && sc_ep_pwrite (t->dst, t->buf, t->len, t->hold_from) == -1)
      || sc_ep_flush (t->dst) == -1) {
    sc_error_name (t->dst->name);
    return -1;
  }
  return 0;
}

/* ---- phase 2: write ------------------------------------------------------ */

/* Copy the planned image to dst. */
static int
write_image (struct pack *pk, struct sc_endpoint *dst)
{
  /* A target that takes one write at a time (a stream) is written by
   * one thread, in order.  When the image comes from local files only
   * (the source, or the spill file that holds a stream), reading a
   * piece is one copy out of the page cache, and handing it from a
   * worker to that thread costs more than reading it there: 1.13 s
   * against 1.07 s for 2.4 GB into a pipe.
   */
  bool in_order = !(dst->flags & SC_EP_SEEKABLE)
                  || !(dst->flags & SC_EP_THREAD_SAFE);
  bool local = pk->spill_all || sc_ep_local_fd (pk->src) >= 0;
  struct sc_copy_opts copy = {
    .threads = in_order && local ? 1 : pk->opts->threads,
    .request_size = WRITE_REQUEST_SIZE,
    .progress = pk->opts->progress ? write_progress : NULL,
    .progress_opaque = pk,
  };
  /* Named after the source, whose errors are the ones it reports; a
   * stream has been read into the spill file whole.
   */
  struct sc_endpoint *image
    = qcow2_image_endpoint (&pk->plan, pk->spill_all ? NULL : pk->src,
                            pk->spill_fd, pk->src->name);
  int r;

  if (image == NULL)
    return -1;
  if (copies_alone (pk, dst))
    copy.threads = 1;
  r = sc_copy_unflushed (image, dst, &copy);
  sc_ep_close (image);
  aside_copied (pk);
  if (r == -1)
    return -1;
  return sc_ep_flush (dst);
}

/* A target written in place (a device, an existing file, an export)
 * already held something, perhaps an image: until everything is
 * written and flushed, its magic is zero (zeroed first, and the header
 * cluster goes out without it), so that no failure or interrupt leaves
 * what qemu-img takes for a complete image.  The magic goes in last,
 * and is flushed too.  So too on one that reads as zero already
 * (--target-is-zero, an empty export): it is seen under its name while
 * it is written.
 * A new file appears under its name only when complete, and a stream
 * is written in order, once.
 */
static bool
magic_last (struct sc_endpoint *dst)
{
  return (dst->flags & SC_EP_SEEKABLE) && !(dst->flags & SC_EP_STREAM)
    && ((dst->flags & SC_EP_IN_PLACE) || !(dst->flags & SC_EP_FRESH_ZEROS));
}

/* The valid magic may have reached dst before its flush failed, and
 * the image would then look complete: zero it again, as far as dst
 * still takes writes, keeping the first error.
 */
static void
unwrite_magic (struct sc_endpoint *dst)
{
  static const unsigned char zero[4];
  struct sc_error_saved saved;

  sc_error_save (&saved);
  if (sc_ep_pwrite (dst, zero, sizeof zero, 0) == 0)
    (void) sc_ep_flush (dst);
  sc_error_restore (&saved);
}

static int
write_magic (struct sc_endpoint *dst, bool valid)
{
  unsigned char magic[4] = { 0 };

  if (valid)
    sc_put_be32 (magic, QCOW2_MAGIC);
  /* The rest is flushed (write_image ends so); not begun if asked to
   * stop.
   */
  if (valid && sc_check_interrupt () == -1)
    return -1;
  if (sc_ep_pwrite (dst, magic, sizeof magic, 0) == -1
      || sc_ep_flush (dst) == -1) {
    sc_error_name (dst->name);
    if (valid)
      unwrite_magic (dst);
    return -1;
  }
  return 0;
}

/* The data is in place already: write the metadata in front of it. */
static int
write_metadata (struct pack *pk, struct sc_endpoint *dst)
{
  const struct qcow2_plan *plan = &pk->plan;
  uint64_t cs = pk->cluster_size;
  uint64_t clusters = plan->meta_end / cs;
  size_t per_write = (size_t) SC_MAX (cs, (uint64_t) WRITE_REQUEST_SIZE) / cs;
  CLEANUP_FREE unsigned char *buf = malloc (per_write * cs);

  if (buf == NULL) {
    sc_set_error (errno, "out of memory");
    return -1;
  }
  for (uint64_t k = 0; k < clusters; k += per_write) {
    size_t n = (size_t) SC_MIN ((uint64_t) per_write, clusters - k);

    size_t len = n * cs, blk = SC_MIN (len, (size_t) HOLE_BLOCK_SIZE);

    for (size_t i = 0; i < n; i++)
      if (qcow2_plan_metadata (plan, k + i, buf + i * cs) == -1) {
        sc_error_name (dst->name);
        return -1;
      }
    /* The target is new and reads as zeros: blocks of zeros (most of
     * the tables of a small image) stay holes, as qemu leaves them.
     */
    for (size_t start = 0; start < len; ) {
      size_t end = start;

      while (end < len && !sc_is_zero (buf + end, SC_MIN (blk, len - end)))
        end += SC_MIN (blk, len - end);
      if (end > start
          && sc_ep_pwrite (dst, buf + start, end - start,
                           k * cs + start) == -1) {
        sc_error_name (dst->name);
        return -1;
      }
      start = end;
      while (start < len
             && sc_is_zero (buf + start, SC_MIN (blk, len - start)))
        start += SC_MIN (blk, len - start);
    }
  }
  if (pk->opts->progress) {
    struct sc_progress pr = { pk->scanned, pk->scanned };
    pk->opts->progress (&pr, pk->opts->progress_opaque);
  }
  return sc_ep_flush (dst);
}

/* Whether the data goes straight to its place in dst while it is
 * scanned.  For a source across a network, always.  For a local
 * source only when it is compressed: then the workers write every
 * compressed byte anyway, and writing it to the target rather than to
 * the spill file saves copying it again in phase 2 (on the 970 MB of
 * an ext4 image of /usr/share, zstd, system time fell from 0.75 s to
 * 0.31 s); uncompressed, reading a local file twice costs less than
 * scattering its clusters (phase 2 copies them in parallel, often
 * inside the kernel).  Only into a new local file that takes writes
 * from any thread, whose unused reserved room stays a hole.  The room is reserved as if
 * every data cluster were stored uncompressed; with small clusters,
 * the refcount blocks that compression makes unnecessary would make
 * the file longer than its data (on 32 MiB of mixed data in 512-byte
 * clusters, by 92 KiB, more than qemu-img's image is longer), with
 * 64 KiB clusters they are at most one cluster.
 */
static bool
want_direct (const struct pack *pk, struct sc_endpoint *dst)
{
  return !pk->spill_all
    && ((pk->src->flags & SC_EP_REMOTE)
        ? pk->opts->detect_zeroes || pk->opts->codec != SC_CODEC_NONE
        : pk->opts->codec != SC_CODEC_NONE
          && pk->cluster_size >= DIRECT_MIN_CLUSTER_SIZE)
    && (dst->flags & SC_EP_SEEKABLE) && (dst->flags & SC_EP_FRESH_ZEROS)
    && (dst->flags & SC_EP_THREAD_SAFE)
    && !(dst->flags & SC_EP_STREAM) && sc_ep_local_fd (dst) >= 0;
}

/* Room for the metadata of every cluster the extents may hold. */
static int
reserve (struct pack *pk, const struct sc_extent_list *extents)
{
  uint64_t cs = pk->cluster_size;
  uint64_t per_l2 = pk->plan.h.l2_entries;
  uint64_t clusters = 0, tables = 0, last_l1 = UINT64_MAX;

  for (size_t i = 0; i < extents->len; i++) {
    const struct sc_extent *e = &extents->ext[i];
    uint64_t first, end;

    if (e->flags != 0 || e->length == 0)
      continue;
    first = e->offset / cs;
    end = SC_DIV_ROUND_UP (e->offset + e->length, cs);
    clusters += end - first;
    /* Extents are sorted, so a table shared with the previous extent
     * is its last one.
     */
    tables += (end - 1) / per_l2 - first / per_l2 + 1;
    if (first / per_l2 == last_l1)
      tables--;
    last_l1 = (end - 1) / per_l2;
  }
  if (qcow2_plan_reserve (&pk->plan, tables, clusters) == -1)
    return -1;
  pk->direct_base = pk->plan.reserved_data_offset;
  return 0;
}

/* ---- the whole command ---------------------------------------------------- */

static bool
is_power_of_two (uint64_t x)
{
  return x != 0 && (x & (x - 1)) == 0;
}

static int
check_opts (const struct sc_pack_opts *opts, uint32_t *cluster_bits,
            unsigned *refcount_order)
{
  uint32_t cs = opts->cluster_size ? opts->cluster_size
    : 1U << DEFAULT_CLUSTER_BITS;
  unsigned rb = opts->refcount_bits ? opts->refcount_bits
    : DEFAULT_REFCOUNT_BITS;

  if (!is_power_of_two (cs) || cs < (1U << QCOW2_MIN_CLUSTER_BITS)
      || cs > (1U << QCOW2_MAX_CLUSTER_BITS)) {
    sc_set_error (EINVAL, "cluster size must be a power of two from %u "
                  "to %u bytes, not %" PRIu32,
                  1U << QCOW2_MIN_CLUSTER_BITS,
                  1U << QCOW2_MAX_CLUSTER_BITS, cs);
    return -1;
  }
  if (!is_power_of_two (rb) || rb > 64) {
    sc_set_error (EINVAL, "refcount width must be 1, 2, 4, 8, 16, 32 or "
                  "64 bits, not %u", rb);
    return -1;
  }
  if ((opts->compression_type != SC_CODEC_NONE
       && opts->compression_type != SC_CODEC_DEFLATE
       && opts->compression_type != SC_CODEC_ZSTD)
      || (opts->codec == SC_CODEC_DEFLATE
          && opts->compression_type == SC_CODEC_ZSTD)) {
    sc_set_error (EINVAL, "the compression type must be the codec's");
    return -1;
  }
  *cluster_bits = (uint32_t) __builtin_ctz (cs);
  *refcount_order = (unsigned) __builtin_ctz (rb);
  return 0;
}

int
sc_pack (struct sc_endpoint *src, struct sc_endpoint *dst,
         const struct sc_pack_opts *opts_in)
{
  struct sc_pack_opts opts = *opts_in;
  const char *target = dst->name;
  struct pack pk = { .src = src, .spill_fd = -1 };
  struct sc_endpoint *checked = NULL;
  struct sc_endpoint *tail = NULL;
  struct sc_extent_list extents;
  struct sc_fingerprint fp_before, fp_after;
  int have_fp;
  uint32_t cluster_bits;
  unsigned refcount_order;
  int ret = -1;

  sc_extent_list_init (&extents);
  sc_extent_list_init (&pk.raw);
  sc_extent_list_init (&pk.sparse);
  pk.opts = &opts;
  if (opts.version == 0)
    opts.version = 3;
  if (check_opts (&opts, &cluster_bits, &refcount_order) == -1)
    return -1;
  pk.cluster_size = 1U << cluster_bits;
  pk.request_size = SC_MAX (pk.cluster_size, MIN_REQUEST_SIZE);
  /* Version 2 headers have no autoclear bit to tell a stale digest. */
  pk.digest = opts.digest && opts.version >= 3;
  pk.digest_block = SC_MIN (pk.cluster_size, SC_DIGEST_BLOCK_SIZE);
  /* The scratch of a piece: a code per cluster, the compressed bytes
   * (when compressing), the digest's blocks, then the place of each
   * cluster.
   */
  pk.digest_out = (pk.request_size / pk.cluster_size) * sizeof (uint32_t)
                  + (opts.codec != SC_CODEC_NONE ? pk.request_size : 0);
  pk.rel_out = pk.digest_out
               + (pk.digest ? (pk.request_size / pk.digest_block)
                              * sizeof (struct sc_digest_block) : 0);
  /* The places of the clusters are 8-byte numbers. */
  pk.rel_out = SC_ROUND_UP (pk.rel_out, sizeof (uint64_t));
  /* qemu sees a qcow2 image as whole 512-byte sectors and drops a
   * partial last one, so the virtual size is rounded up as qemu-img
   * convert rounds it: the tail reads as zeros.
   */
  if (src->size > INT64_MAX) {
    sc_set_error (EFBIG, "%s: source too large", src->name);
    return -1;
  }
  if (qcow2_plan_init (&pk.plan, opts.version, cluster_bits, refcount_order,
                       opts.codec != SC_CODEC_NONE ? opts.codec
                       : opts.compression_type,
                       SC_ROUND_UP (src->size, QEMU_SECTOR_SIZE))
      == -1) {
    sc_error_name (target);
    return -1;
  }

  /* With a block map as the map, the source is read through it: its
   * ranges are the extents, and their checksums are checked as they
   * are read.
   */
  if (opts.bmap) {
    checked = bmap_checked_source (src, opts.bmap, false);
    if (checked == NULL)
      goto out;
    pk.src = src = checked;
  }
  if (opts.bmap_out) {
    /* As bmaptool create, which refuses an empty file: said before
     * anything is read or written (a stream's size is known only at
     * its end, below).
     */
    if (!(src->flags & SC_EP_STREAM) && src->size == 0) {
      empty_bmap_error (src);
      goto out;
    }
    pk.bmap = bmap_builder_new (sc_ep_local_fd (opts.bmap_out) >= 0
                                ? opts.bmap_out->name : NULL);
    if (pk.bmap == NULL)
      goto out;
  }
  if (pk.digest && sc_digest_init (&pk.dg, pk.digest_block) == -1)
    goto out;
  /* A source whose state cannot be taken (a pipe, an image) cannot be
   * changed behind our back in a way that would show there either.
   */
  have_fp = sc_ep_fingerprint (src, &fp_before);
  if (have_fp == -1)
    goto out;
  /* A stream cannot be read twice: its data clusters go to the spill
   * file as they are scanned.  (A server is read twice: measured on a
   * local one, that costs less than writing all data twice.)
   */
  pk.spill_all = !(src->flags & SC_EP_SEEKABLE);

  /* A stream is read to its end in the scan; its extents and its size
   * are known only then.
   */
  /* -S 0: every cluster is data, as qemu-img convert -S 0 stores it. */
  if (opts.allocate_all) {
    opts.detect_zeroes = false;
    if (!(src->flags & SC_EP_STREAM) && src->size > 0
        && sc_extent_list_append (&extents, 0,
                                  SC_ROUND_UP (src->size, pk.cluster_size),
                                  0) == -1)
      goto out;
    /* The block map still maps the source's data, not the image's
     * clusters: bmap_piece needs the source's own extents.
     */
    if (pk.bmap && !(src->flags & SC_EP_STREAM) && src->size > 0
        && sc_ep_extents_all (src, 0, src->size, &pk.raw) == -1) {
      sc_error_name (src->name);
      goto out;
    }
  }
  else if (!(src->flags & SC_EP_STREAM)
           && cluster_extents (&pk, &extents) == -1)
    goto out;
  if (want_direct (&pk, dst)) {
    if (reserve (&pk, &extents) == -1) {
      sc_error_name (target);
      goto out;
    }
    pk.direct = dst;
  }
  else if (opts.codec != SC_CODEC_NONE || pk.spill_all) {
    /* Next to a file target, whose file system must have the room for
     * the image anyway; elsewhere in TMPDIR.
     */
    pk.spill_fd = sc_spill_open_for (dst, target, &pk.spill_near);
    if (pk.spill_fd == -1)
      goto out;
  }
  pk.digest_aside = want_aside (&pk, dst);
  if (pk.digest_aside && aside_start (&pk, &extents, dst) == -1)
    goto out;
  if (scan (&pk, &extents) == -1)
    goto out;
  /* The scan read all of the source's data (a stream's size is known
   * only now).
   */
  if (pk.bmap && src->size == 0) {
    empty_bmap_error (src);
    goto out;
  }
  if (pk.bmap && bmap_builder_finish (pk.bmap, src->size, opts.bmap_out)
      == -1)
    goto out;
  if ((src->flags & SC_EP_STREAM)
      && qcow2_plan_grow (&pk.plan,
                          SC_ROUND_UP (src->size, QEMU_SECTOR_SIZE)) == -1) {
    sc_error_name (target);
    goto out;
  }
  if (pk.digest) {
    unsigned char sha[SC_DIGEST_LEN] = { 0 };

    /* Hashed beside the copy, the digest is known after it: zeros
     * hold its place in the header until then (aside_finish).
     */
    if ((!pk.digest_aside
         && sc_digest_final (&pk.dg, pk.plan.h.size, sha) == -1)
        || qcow2_plan_set_digest (&pk.plan, pk.digest_block, sha) == -1) {
      sc_error_name (target);
      goto out;
    }
  }
  /* A stream ends with its refcount table (see tail_new). */
  pk.plan.rt_last = !pk.direct && !(dst->flags & SC_EP_SEEKABLE);
  if (qcow2_plan_layout (&pk.plan) == -1) {
    sc_error_name (target);
    goto out;
  }

  if (sc_ep_set_size (dst, pk.plan.file_size) == -1) {
    sc_error_name (target);
    goto out;
  }
  /* A stream is written but for its last clusters (see tail_new). */
  if (pk.plan.rt_last) {
    tail = tail_new (dst, pk.cluster_size);
    if (tail == NULL)
      goto out;
  }
  pk.plan.hold_magic = magic_last (dst);
  /* What the target held may be an image: its magic goes first, so
   * that a failure before the header is rewritten does not leave the
   * old header over new data.
   */
  if (pk.plan.hold_magic && write_magic (dst, false) == -1)
    goto out;
  /* Written and flushed. */
  if ((pk.direct ? write_metadata (&pk, dst)
                 : write_image (&pk, tail ? tail : dst)) == -1)
    goto out;
  /* Before the source is found unchanged: the hashing read it too. */
  if (pk.digest_aside && aside_finish (&pk, dst) == -1)
    goto out;
  /* Ranges that no read reached (clusters the image does not store)
   * are read and checked now.
   */
  if (checked && bmap_checked_finish (checked) == -1)
    goto out;
  /* Checked last, so that a change while the image was written counts
   * too; the caller commits only after this.
   */
  if (have_fp == 0) {
    if (sc_ep_fingerprint (src, &fp_after) == -1)
      goto out;
    if (!sc_ep_fingerprint_equal (&fp_before, &fp_after)) {
      sc_set_error (EBUSY, "%s: source changed while packing", src->name);
      goto out;
    }
  }
  if (tail && tail_release (tail) == -1)
    goto out;
  /* An existing file written over ends with the image (before the
   * magic, which stays the last change).
   */
  if (sc_ep_cut (dst, pk.plan.file_size) == -1)
    goto out;
  if (pk.plan.hold_magic && write_magic (dst, true) == -1)
    goto out;
  ret = 0;

 out:
  aside_join (&pk, false);
  if (tail)
    sc_ep_close (tail);
  if (pk.spill_fd >= 0)
    close (pk.spill_fd);
  sc_extent_list_free (&extents);
  sc_extent_list_free (&pk.raw);
  sc_extent_list_free (&pk.sparse);
  bmap_builder_free (pk.bmap);
  sc_digest_free (&pk.dg);
  qcow2_plan_free (&pk.plan);
  if (checked)
    sc_ep_close (checked);
  return ret;
}
