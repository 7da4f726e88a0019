/* The copy engine: the ordered pipeline, and sc_copy() on top of it.
 *
 * Pieces are handed out in source order from a ring of slots.  Worker
 * threads (the calling thread is one of them) take the next piece
 * while the ring has room, read it (data pieces only) and run work()
 * on it.  The worker that finds the next piece in order ready emits it
 * and those after it that are ready, strictly in order; then any
 * worker runs finish() on an emitted piece, in parallel, and frees its
 * slot.  emit() is the serial part of a run and does only what needs
 * the order (where a piece goes); finish() does the rest (writing it
 * there).  The ring bounds memory: at most nslots buffers of
 * request_size, no matter how large the source is.  Hole and zero
 * pieces carry only an offset and a length, so a hole of many
 * terabytes costs nothing.
 *
 * A stream source (a pipe) has no extent list and no known length: it
 * is cut into pieces of request_size read one after another, and the
 * piece in which the stream ends is the last one that carries data.
 * A pipeline that asks for it (stream_zeros) gets the runs of zeros of
 * a stream as zero pieces instead, found by the reader (see
 * read_stream).
 */
#include <config.h>

#include <assert.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define DEFAULT_REQUEST_SIZE (1024 * 1024)
#define MAX_REQUEST_SIZE (64 * 1024 * 1024)

/* More workers than this cannot help a single copy, and every worker
 * costs two buffers of request_size.
 */
#define MAX_PIPELINE_THREADS 128

/* The buffers of all slots together stay under this, so that a copy
 * on a machine with many CPUs, or with large requests, still fits in
 * a fixed amount of memory beside the tables the format sizes (an L1
 * table of up to 32 MiB).  Two CPUs use 6 slots of at most 2 MiB;
 * pack -c -j 64 used 130 slots, 233 MiB of peak RSS (now 31 slots for
 * 29 workers).
 */
#define MAX_PIPELINE_MEMORY ((size_t) 64 * 1024 * 1024)

#define SC_EXTENT_NOT_DATA (SC_EXTENT_HOLE | SC_EXTENT_ZERO)

enum slot_state {
  SLOT_FREE,                    /* no piece, or done with */
  SLOT_BUSY,                    /* owned by a worker */
  SLOT_READY,                   /* waiting to be emitted */
  SLOT_PLACED,                  /* emitted, waiting for finish() */
  SLOT_FINISHING,               /* in finish() on a worker */
};

struct slot {
  struct sc_piece piece;
  enum slot_state state;
};

/* A stream is read a chunk at a time while it is all zeros, each
 * chunk into the same place at the start of the piece's buffer and
 * tested as soon as it is read, while it is still in the CPU's cache:
 * what the reader touches fits in an L2 cache (1 MiB here) with the
 * pipe's pages.  Packing 8 GiB of zeros from a 1 MiB pipe, perf counted
 * 780-820 samples in the kernel's copy out of the pipe with 128 KiB
 * chunks, 910-920 with 1 MiB ones, and 1130 with 1 MiB reads into the
 * ring of buffers, tested by the workers.
 */
#define STREAM_CHUNK (128 * 1024)

/* Runs of zeros of a stream are handed out as zero pieces of at most
 * this many bytes, or of what came in this many nanoseconds from a slow
 * stream: each of them is one turn of the pipeline, and the progress
 * count moves at each one.
 */
#define MAX_STREAM_ZERO_PIECE ((uint64_t) 64 * 1024 * 1024)
#define MAX_STREAM_ZERO_NS 100000000L

/* Nanoseconds of CLOCK_MONOTONIC. */
static uint64_t
monotonic_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000 + (uint64_t) ts.tv_nsec;
}

/* The reader's side of a stream, touched only by the thread whose turn
 * it is to read.
 */
struct stream {
  uint64_t pos;                 /* offset of the next piece */
  bool ended;                   /* the end was read */
  /* A data piece read after a run of zeros, to be handed out next:
   * ahead_len bytes at pos, in the buffer ahead (which is, the rest of
   * the time, a spare of request_size bytes, or NULL until needed).
   */
  void *ahead;
  size_t ahead_len;
  bool have_ahead;
};

/* The piece generator: a cursor over the extent list, either one given
 * whole or one fetched from the source a window at a time.
 */
struct cursor {
  const struct sc_extent_list *ext;
  size_t i;                     /* current extent */
  uint64_t pos;                 /* next offset inside it */
  uint32_t request_size;
  bool stream;                  /* no extents: pieces until the end */
  /* With count_all: holes are cut at multiples of this (else each is
   * one piece).
   */
  uint64_t hole_piece;
  /* Windowed: ext is window, refilled from src up to end. */
  struct sc_endpoint *src;
  /* A source that takes one request at a time: held around every
   * request to it, reads and extents alike.  NULL otherwise.
   */
  pthread_mutex_t *src_lock;
  struct sc_extent_list *window;
  uint64_t fetched;             /* extents known up to here */
  uint64_t end;
  uint64_t window_size;
};

struct run {
  const struct sc_pipeline *p;
  struct cursor cur;
  size_t nslots;
  struct slot *slots;
  bool serial_reads;            /* src is not thread-safe */
  pthread_mutex_t src_lock;     /* with serial_reads: see cursor */
  struct stream stream;         /* a stream source's reader, in turn */

  pthread_mutex_t lock;
  pthread_cond_t cond;          /* broadcast on every state change */
  /* Everything below is protected by lock. */
  uint64_t next_seq;            /* next piece to hand out */
  uint64_t emit_seq;            /* next piece to emit */
  uint64_t read_turn;           /* with serial_reads: next piece to read */
  bool emitting;                /* a worker is in emit_ready */
  size_t placed;                /* slots in SLOT_PLACED */
  struct sc_progress prog;      /* touched by the emitting worker only */
  bool all_issued;              /* the cursor is exhausted */
  bool done;                    /* every piece emitted and finished */
  bool stop;
  bool failed;
  int err_errno;
  char err_msg[1024];
  unsigned started;             /* workers numbered as they start */
  unsigned active_seen;         /* *p->active when last broadcast */
  /* With stats: the CPU time the workers spent outside their serial
   * sections, in them, and in emit() (see thread_cpu).
   */
  bool stats;
  double parallel_cpu;
  double serial_cpu;
  double emit_cpu;
};

/* A worker's CPU seconds in serial sections, emit() among them. */
struct worker_stats {
  double serial;
  double emit;
};

/* For the scoreboard's Amdahl projection (bench/README): with
 * SPARSECOW_PIPELINE_STATS=FILE, each run appends to FILE one line
 * "pipeline threads=N emit_cpu_s=E serial_cpu_s=X parallel_cpu_s=S":
 * S is the CPU seconds its workers spent in work that runs on all of
 * them at once (reads of a thread-safe source, work(), finish()), X
 * those in their serial sections (handing out pieces, reads of a
 * source taken one request at a time, emit()), E those in emit() alone;
 * with one thread, what workers would do.  All the rest of the
 * process's CPU time (set-up, metadata, the final flush) is serial too.
 */
#define STATS_ENV "SPARSECOW_PIPELINE_STATS"

/* This thread's CPU time in seconds, 0 if it cannot be had. */
static double
thread_cpu (void)
{
  struct timespec ts;

  if (clock_gettime (CLOCK_THREAD_CPUTIME_ID, &ts) == -1)
    return 0;
  return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* Append the run's line; a file that cannot be written is ignored, as
 * the numbers are only for measuring.
 */
static void
write_stats (unsigned threads, double parallel_cpu, double emit_cpu,
             double serial_cpu)
{
  const char *path = getenv (STATS_ENV);
  char line[256];
  int fd, n;

  if (path == NULL || *path == '\0')
    return;
  fd = open (path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd == -1)
    return;
  n = snprintf (line, sizeof line, "pipeline threads=%u emit_cpu_s=%.6f "
                "serial_cpu_s=%.6f parallel_cpu_s=%.6f\n",
                threads, emit_cpu, serial_cpu, parallel_cpu);
  if (n > 0 && (size_t) n < sizeof line) {
    ssize_t w = write (fd, line, (size_t) n);
    (void) w;                   /* ignored, see above */
  }
  close (fd);
}

/* Extents are asked for a window at a time, so that memory does not
 * grow with the number of extents of the whole source and a source
 * that answers per request (NBD block status) is asked as the copy
 * goes.  The window grows while it holds few extents, and shrinks when
 * it holds many.
 */
#define MIN_EXTENT_WINDOW ((uint64_t) 64 * 1024 * 1024)
#define FIRST_EXTENT_WINDOW ((uint64_t) 1024 * 1024 * 1024)
#define FEW_EXTENTS 64
#define MANY_EXTENTS 4096

/* Replace the window with the next one.  The source may describe less
 * than it was asked (a prefix), or more (the last extent is cut at the
 * end of the window), but never nothing, and each extent must go on
 * where the last one ended.
 */
static int
fetch_window (struct cursor *c)
{
  struct sc_extent_list *w = c->window;
  uint64_t want = SC_MIN (c->window_size, c->end - c->fetched);
  uint64_t pos;
  int r;

  w->len = 0;
  c->i = 0;
  if (c->src_lock)
    pthread_mutex_lock (c->src_lock);
  r = sc_ep_extents_step (c->src, c->fetched, want, w, &pos);
  if (c->src_lock)
    pthread_mutex_unlock (c->src_lock);
  if (r == -1) {
    sc_error_name (c->src->name);
    return -1;
  }
  c->fetched = pos;
  if (w->len < FEW_EXTENTS && c->window_size <= UINT64_MAX / 2)
    c->window_size *= 2;
  else if (w->len > MANY_EXTENTS && c->window_size / 2 >= MIN_EXTENT_WINDOW)
    c->window_size /= 2;
  return 0;
}

/* Fill piece with the next piece of the source: 1, or 0 at the end, or
 * -1 with the error set.
 */
static int
next_piece (struct cursor *c, struct sc_piece *piece)
{
  if (c->stream) {
    /* The reader of the last piece stops the hand-out.  Where a piece
     * starts and how long it is, the reader decides (read_stream).
     */
    piece->offset = 0;
    piece->length = c->request_size;
    piece->flags = 0;
    piece->counts = true;
    return 1;
  }
  for (;;) {
    if (c->i >= c->ext->len) {
      if (c->window == NULL || c->fetched >= c->end)
        return 0;
      if (fetch_window (c) == -1)
        return -1;
    }
    const struct sc_extent *e = &c->ext->ext[c->i];
    uint64_t end = e->offset + e->length;
    uint64_t boundary, step;

    if (c->pos < e->offset)
      c->pos = e->offset;
    if (c->pos >= end) {
      c->i++;
      continue;
    }
    piece->offset = c->pos;
    if ((e->flags & SC_EXTENT_NOT_DATA) && c->hole_piece == 0) {
      piece->length = end - c->pos;
      piece->flags = e->flags & SC_EXTENT_NOT_DATA;
      piece->counts = false;
      c->i++;
      return 1;
    }
    /* Data is cut at multiples of request_size, so pieces line up with
     * clusters and blocks whatever the extent boundaries are; holes
     * that count at multiples of hole_piece, so that the count grows
     * evenly over them too.
     */
    step = (e->flags & SC_EXTENT_NOT_DATA) ? c->hole_piece : c->request_size;
    boundary = SC_ROUND_DOWN (c->pos, step);
    if (SC_ADD_OVERFLOW (boundary, step, &boundary) || boundary > end)
      boundary = end;
    piece->length = boundary - c->pos;
    piece->flags = e->flags & SC_EXTENT_NOT_DATA;
    piece->counts = true;
    c->pos = boundary;
    if (c->pos >= end)
      c->i++;
    return 1;
  }
}

/* Check the list is sorted and contiguous, and sum its lengths. */
static int
check_extents (const struct sc_extent_list *list, uint64_t *total)
{
  uint64_t sum = 0;

  for (size_t i = 0; i < list->len; i++) {
    const struct sc_extent *e = &list->ext[i];
    uint64_t end;

    if (SC_ADD_OVERFLOW (e->offset, e->length, &end)) {
      sc_set_error (EINVAL, "pipeline: extent %" PRIu64 "+%" PRIu64
                    " overflows", e->offset, e->length);
      return -1;
    }
    if (i > 0 && e->offset != list->ext[i - 1].offset + list->ext[i - 1].length) {
      sc_set_error (EINVAL, "pipeline: extent list is not sorted and "
                    "contiguous at offset %" PRIu64, e->offset);
      return -1;
    }
    sum += e->length;
  }
  *total = sum;
  return 0;
}

/* Read the next piece of a stream into piece, whose length is the
 * request size: 0, or 1 if the stream ended in this piece (its length
 * is cut to what was read, and the rest of its buffer zeroed), or -1
 * with the error set.  Pieces start at multiples of the request size.
 *
 * With stream_zeros, every byte read is tested for zeros: a run of
 * whole pieces of zeros (and the zeros at the end of the stream) is
 * handed out as one zero piece (SC_EXTENT_ZERO), the next piece that
 * holds data after it.  Both come from one read, so the data piece
 * waits in st->ahead for the next turn.
 */
static int
read_stream (const struct sc_pipeline *p, struct stream *st,
             struct sc_piece *piece)
{
  struct sc_endpoint *src = p->src;
  size_t size = (size_t) piece->length;
  size_t chunk = p->stream_zeros ? SC_MIN ((size_t) STREAM_CHUNK, size) : size;
  uint64_t zeros = 0, start = 0;

  piece->offset = st->pos;
  if (st->have_ahead) {
    void *b = piece->buf;

    piece->buf = st->ahead;
    st->ahead = b;
    st->have_ahead = false;
    piece->length = st->ahead_len;
    st->pos += st->ahead_len;
    return st->ahead_len < size;
  }
  if (st->ended) {
    piece->length = 0;
    return 1;
  }
  if (p->stream_zeros)
    start = monotonic_ns ();
  for (;;) {
    unsigned char *buf = piece->buf;
    uint64_t at = st->pos + zeros;
    size_t filled = 0;
    bool data = !p->stream_zeros;

    /* While all is zeros, each chunk goes to the start of the buffer;
     * the chunk that holds data is moved to its place, behind the
     * zeros it follows, and the rest of the piece read after it.
     */
    while (filled < size && !st->ended) {
      size_t want = data ? size - filled : SC_MIN (chunk, size - filled);
      unsigned char *to = data ? buf + filled : buf;
      size_t n;

      if (sc_ep_read_some (src, to, want, at + filled, &n) == -1) {
        sc_error_name (src->name);
        return -1;
      }
      if (!data && !sc_is_zero (to, n)) {
        data = true;
        if (filled > 0) {
          memmove (buf + filled, buf, n);
          memset (buf, 0, filled);
        }
      }
      filled += n;
      st->ended = n < want;
    }
    if (!data) {
      zeros += filled;
      /* A signal that asks to stop is seen between reads too. */
      if (sc_check_interrupt () == -1)
        return -1;
      if (!st->ended && zeros < MAX_STREAM_ZERO_PIECE
          && monotonic_ns () - start < MAX_STREAM_ZERO_NS)
        continue;
      piece->length = zeros;
      piece->flags = zeros > 0 ? SC_EXTENT_ZERO : 0;
      st->pos += zeros;
      return st->ended;
    }
    if (filled < size)
      memset (buf + filled, 0, size - filled);
    if (zeros == 0) {
      piece->length = filled;
      st->pos += filled;
      return filled < size;
    }
    /* The zeros go out now, the data at the next turn. */
    if (st->ahead == NULL && (st->ahead = malloc (size)) == NULL) {
      sc_set_error (errno, "pipeline: out of memory");
      return -1;
    }
    piece->buf = st->ahead;
    st->ahead = buf;
    st->ahead_len = filled;
    st->have_ahead = true;
    piece->length = zeros;
    piece->flags = SC_EXTENT_ZERO;
    st->pos += zeros;
    return 0;
  }
}

/* Read a data piece; bytes past the end of the source read as zeros.
 * Returns 0, 1 if a stream ended in this piece (see read_stream), or -1
 * with the error set.
 */
static int
read_piece (const struct sc_pipeline *p, struct stream *st,
            struct sc_piece *piece)
{
  struct sc_endpoint *src = p->src;
  size_t n = 0;

  if (src->flags & SC_EP_STREAM)
    return read_stream (p, st, piece);
  if (piece->offset < src->size)
    n = (size_t) SC_MIN (piece->length, src->size - piece->offset);
  if (n > 0 && sc_ep_pread (src, piece->buf, n, piece->offset) == -1) {
    sc_error_name (src->name);
    return -1;
  }
  if (n < piece->length)
    memset ((char *) piece->buf + n, 0, piece->length - n);
  return 0;
}

/* Bring a data piece in for work(): moved by move() where it can be,
 * else read.  Returns as read_piece.
 */
static int
take_piece (const struct sc_pipeline *p, struct stream *st,
            struct sc_piece *piece)
{
  int rc = p->move ? p->move (piece, p->opaque) : 1;

  piece->moved = rc == 0;
  if (rc != 1)
    return rc;
  return read_piece (p, st, piece);
}

/* Give a slot its buffers the first time it is used. */
static int
slot_buffers (const struct sc_pipeline *p, struct sc_piece *piece,
              uint32_t request_size)
{
  if (piece->buf == NULL) {
    piece->buf = malloc (request_size);
    if (piece->buf == NULL) {
      sc_set_error (errno, "pipeline: out of memory");
      return -1;
    }
  }
  if (p->out_size > 0 && piece->out == NULL) {
    piece->out = malloc (p->out_size);
    if (piece->out == NULL) {
      sc_set_error (errno, "pipeline: out of memory");
      return -1;
    }
  }
  return 0;
}

/* With lock held: remember the calling thread's error if it is the
 * first, and tell everyone to stop.
 */
static void
record_error (struct run *r)
{
  if (!r->failed) {
    r->failed = true;
    r->err_errno = sc_error_errno ();
    snprintf (r->err_msg, sizeof r->err_msg, "%s", sc_error_message ());
  }
  r->stop = true;
  pthread_cond_broadcast (&r->cond);
}

static void
report_progress (const struct sc_pipeline *p, struct sc_progress *prog,
                 const struct sc_piece *piece)
{
  /* Only data counts, or with count_all everything (see struct
   * sc_pipeline); a stream's pieces are all data.
   */
  if (piece->counts)
    prog->done += piece->length;
  /* A source whose extents changed since they were counted must not
   * show more than 100%.
   */
  if (prog->total != 0 && prog->done > prog->total)
    prog->total = prog->done;
  if (p->progress)
    p->progress (prog, p->progress_opaque);
}

/* Hand out the next piece into its slot, read it and run work() on it;
 * called and returning with r->lock held.  Returns 1 when a piece is
 * ready, 0 when there was none to hand out, -1 on an error (recorded).
 */
static int
take_next (struct run *r, struct worker_stats *ws)
{
  const struct sc_pipeline *p = r->p;
  uint64_t seq = r->next_seq;
  struct slot *slot = &r->slots[seq % r->nslots];
  struct sc_piece *piece = &slot->piece;
  double t = 0;
  int rc;

  if (r->stats)
    t = thread_cpu ();
  rc = next_piece (&r->cur, piece);
  if (r->stats)
    ws->serial += thread_cpu () - t;
  if (rc == -1) {
    record_error (r);
    return -1;
  }
  if (rc == 0) {
    r->all_issued = true;
    pthread_cond_broadcast (&r->cond);
    return 0;
  }
  rc = 0;
  r->next_seq++;
  piece->out_len = 0;
  piece->user = 0;
  piece->placed = 0;
  piece->moved = false;
  slot->state = SLOT_BUSY;
  pthread_mutex_unlock (&r->lock);

  rc = slot_buffers (p, piece, r->cur.request_size);

  /* A source that is not thread-safe (or not seekable) is read by
   * one thread at a time, in source order; work() still runs in
   * parallel.
   */
  if (r->serial_reads) {
    pthread_mutex_lock (&r->lock);
    while (r->read_turn != seq && !r->stop)
      pthread_cond_wait (&r->cond, &r->lock);
    if (r->stop)
      return -1;                /* with the lock held */
    pthread_mutex_unlock (&r->lock);
  }
  if (rc == 0 && piece->flags == 0) {
    if (r->serial_reads) {
      pthread_mutex_lock (&r->src_lock);
      if (r->stats)
        t = thread_cpu ();
    }
    rc = take_piece (p, &r->stream, piece);
    if (r->serial_reads) {
      if (r->stats)
        ws->serial += thread_cpu () - t;
      pthread_mutex_unlock (&r->src_lock);
    }
  }
  if (r->serial_reads || rc == 1) {
    pthread_mutex_lock (&r->lock);
    /* A failed read stops the run before the turn passes on: a stream
     * is then left part way into this piece, where no later piece
     * starts, and a reader let in would report that instead of the
     * real error (a signal, a read error).
     */
    if (rc == -1) {
      record_error (r);
      return -1;                /* with the lock held */
    }
    r->read_turn++;
    /* The stream ended: pieces already handed out read nothing. */
    if (rc == 1) {
      r->all_issued = true;
      rc = 0;
    }
    pthread_cond_broadcast (&r->cond);
    pthread_mutex_unlock (&r->lock);
  }
  if (rc == 0 && piece->flags == 0 && !piece->moved && piece->length > 0
      && p->work)
    rc = p->work (piece, p->opaque);

  pthread_mutex_lock (&r->lock);
  if (rc == -1) {
    record_error (r);
    return -1;
  }
  slot->state = SLOT_READY;
  return 1;
}

/* Emit the pieces that are ready, in order, until the next one is
 * not; called and returning with r->lock held, by one thread at a
 * time (r->emitting).  Whichever worker finds the next piece ready
 * emits it: no thread waits to be woken for each piece.  Returns 0, or
 * -1 on an error (recorded).
 */
static int
emit_ready (struct run *r, struct worker_stats *ws)
{
  const struct sc_pipeline *p = r->p;
  int rc = 0;

  r->emitting = true;
  while (!r->stop && r->emit_seq < r->next_seq) {
    struct slot *slot = &r->slots[r->emit_seq % r->nslots];
    struct sc_piece *piece = &slot->piece;
    double t = 0;

    if (slot->state != SLOT_READY)
      break;
    pthread_mutex_unlock (&r->lock);
    if (r->stats)
      t = thread_cpu ();
    rc = piece->length > 0 ? p->emit (piece, p->opaque) : 0;
    if (rc != -1)
      report_progress (p, &r->prog, piece);
    if (r->stats) {
      t = thread_cpu () - t;
      ws->serial += t;
      ws->emit += t;
    }
    pthread_mutex_lock (&r->lock);
    if (rc == -1) {
      record_error (r);
      break;
    }
    /* A piece with nothing left to do frees its slot at once. */
    if (rc == 1 && p->finish) {
      slot->state = SLOT_PLACED;
      r->placed++;
    }
    else
      slot->state = SLOT_FREE;
    rc = 0;
    r->emit_seq++;
    /* Waiting workers can finish it, or use its slot. */
    pthread_cond_broadcast (&r->cond);
  }
  r->emitting = false;
  pthread_cond_broadcast (&r->cond);
  return rc;
}

/* Run finish() on one emitted piece; called and returning with r->lock
 * held.  Returns 0, or -1 on an error (recorded).
 */
static int
finish_one (struct run *r)
{
  const struct sc_pipeline *p = r->p;
  struct slot *slot = NULL;
  int rc;

  /* Emitted pieces are among the last nslots; the oldest first, as the
   * next piece to hand out waits for its slot.
   */
  for (uint64_t s = r->emit_seq - SC_MIN (r->emit_seq, (uint64_t) r->nslots);
       s < r->emit_seq && slot == NULL; s++)
    if (r->slots[s % r->nslots].state == SLOT_PLACED)
      slot = &r->slots[s % r->nslots];
  assert (slot != NULL);
  slot->state = SLOT_FINISHING;
  r->placed--;
  pthread_mutex_unlock (&r->lock);
  rc = p->finish (&slot->piece, p->opaque);
  pthread_mutex_lock (&r->lock);
  if (rc == -1) {
    record_error (r);
    return -1;
  }
  slot->state = SLOT_FREE;
  pthread_cond_broadcast (&r->cond);
  return 0;
}

/* How often a waiting worker looks whether it was asked to stop
 * (sc_interrupt): a tenth of a second, quick for a user who pressed
 * Ctrl-C and nothing for the machine.
 */
#define INTERRUPT_POLL_NS 100000000L

/* How many workers take pieces (p->active); called with r->lock held,
 * by a worker that takes them: a rise wakes the others.
 */
static unsigned
taking (struct run *r)
{
  unsigned n;

  if (r->p->active == NULL)
    return UINT_MAX;
  n = SC_MAX (__atomic_load_n (r->p->active, __ATOMIC_RELAXED), 1u);
  if (n > r->active_seen) {
    r->active_seen = n;
    pthread_cond_broadcast (&r->cond);
  }
  return n;
}

/* Every worker, the calling thread among them, does what is most
 * urgent: emit the next pieces when they are ready, else finish an
 * emitted one, else take a new one into a free slot.
 */
static void *
worker (void *arg)
{
  struct run *r = arg;
  struct worker_stats ws = { 0, 0 };
  double start = r->stats ? thread_cpu () : 0;
  unsigned index;

  pthread_mutex_lock (&r->lock);
  index = r->started++;
  for (;;) {
    struct timespec until;

    if (r->stop)
      break;
    if (sc_check_interrupt () == -1) {
      record_error (r);
      break;
    }
    if (!r->emitting && r->emit_seq < r->next_seq
        && r->slots[r->emit_seq % r->nslots].state == SLOT_READY) {
      if (emit_ready (r, &ws) == -1)
        break;
      continue;
    }
    if (r->placed > 0) {
      if (finish_one (r) == -1)
        break;
      continue;
    }
    if (!r->all_issued
        && r->slots[r->next_seq % r->nslots].state == SLOT_FREE
        && index < taking (r)) {
      if (take_next (r, &ws) == -1)
        break;
      continue;
    }
    /* Nothing left to hand out, emit or finish: the others finish what
     * they hold.
     */
    if (r->all_issued && r->emit_seq == r->next_seq) {
      r->done = true;
      pthread_cond_broadcast (&r->cond);
      break;
    }
    /* Woken by another worker, or after a while to look for an
     * interrupt (a signal may have reached a waiting thread).
     */
    clock_gettime (CLOCK_REALTIME, &until);
    until.tv_nsec += INTERRUPT_POLL_NS;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait (&r->cond, &r->lock, &until);
  }
  if (r->stats) {
    r->parallel_cpu += thread_cpu () - start - ws.serial;
    r->serial_cpu += ws.serial;
    r->emit_cpu += ws.emit;
  }
  pthread_mutex_unlock (&r->lock);
  return NULL;
}

/* One thread does everything, in order. */
static int
run_synchronously (const struct sc_pipeline *p, struct cursor *cur,
                   struct sc_progress *prog)
{
  struct sc_piece piece = { 0 };
  struct stream st = { 0 };
  int rc = 0;
  bool stats = getenv (STATS_ENV) != NULL;
  bool parallel_reads = (p->src->flags & SC_EP_THREAD_SAFE) != 0;
  double parallel = 0, emit = 0, t = 0;

  bool end = false;

  while (rc == 0 && !end && (rc = sc_check_interrupt ()) == 0
         && (rc = next_piece (cur, &piece)) == 1) {
    rc = 0;
    piece.out_len = 0;
    piece.user = 0;
    piece.placed = 0;
    piece.moved = false;
    if (piece.flags == 0) {
      rc = slot_buffers (p, &piece, cur->request_size);
      /* With stats: what the threaded run would do on its workers. */
      if (stats && parallel_reads)
        t = thread_cpu ();
      if (rc == 0)
        rc = take_piece (p, &st, &piece);
      if (rc == 1) {
        end = true;
        rc = 0;
      }
      if (stats && !parallel_reads)
        t = thread_cpu ();
      /* A stream's run of zeros is a zero piece (read_stream). */
      if (rc == 0 && piece.flags == 0 && !piece.moved && piece.length > 0
          && p->work)
        rc = p->work (&piece, p->opaque);
      if (stats)
        parallel += thread_cpu () - t;
    }
    if (stats)
      t = thread_cpu ();
    if (rc == 0 && piece.length > 0)
      rc = p->emit (&piece, p->opaque);
    if (stats)
      emit += thread_cpu () - t;
    if (rc != -1)
      report_progress (p, prog, &piece);
    if (stats)
      t = thread_cpu ();
    if (rc == 1)
      rc = p->finish ? p->finish (&piece, p->opaque) : 0;
    if (stats)
      parallel += thread_cpu () - t;
  }
  free (piece.buf);
  free (piece.out);
  free (st.ahead);
  if (stats)
    write_stats (1, parallel, emit, emit);
  return rc;
}

static int
run_threaded (const struct sc_pipeline *p, struct cursor *cur,
              unsigned threads, struct sc_progress *prog)
{
  struct run r;
  pthread_t *tids = NULL;
  unsigned started = 0;
  size_t per_slot = (size_t) cur->request_size + p->out_size;
  size_t max_slots = SC_MAX (MAX_PIPELINE_MEMORY / per_slot, (size_t) 3);
  int rc;

  memset (&r, 0, sizeof r);
  r.p = p;
  r.cur = *cur;
  r.prog = *prog;
  r.nslots = 2 * (size_t) threads + 2;
  /* Fewer slots: fewer workers too, with two slots left for pieces
   * that wait to be emitted.
   */
  if (r.nslots > max_slots) {
    r.nslots = max_slots;
    threads = (unsigned) SC_MIN ((size_t) threads, max_slots - 2);
  }
  r.serial_reads = !(p->src->flags & SC_EP_THREAD_SAFE);
  r.stats = getenv (STATS_ENV) != NULL;
  r.active_seen = p->active ? __atomic_load_n (p->active, __ATOMIC_RELAXED)
                            : 0;
  if (r.serial_reads)
    r.cur.src_lock = &r.src_lock;
  r.slots = calloc (r.nslots, sizeof *r.slots);
  tids = calloc (threads, sizeof *tids);
  if (r.slots == NULL || tids == NULL) {
    sc_set_error (errno, "pipeline: out of memory");
    free (r.slots);
    free (tids);
    return -1;
  }
  pthread_mutex_init (&r.lock, NULL);
  pthread_mutex_init (&r.src_lock, NULL);
  pthread_cond_init (&r.cond, NULL);

  /* The calling thread is one of the workers.  Fewer workers than
   * asked for are still correct.
   */
  for (unsigned i = 0; i + 1 < threads; i++) {
    if (pthread_create (&tids[i], NULL, worker, &r) != 0)
      break;
    started++;
  }
  worker (&r);

  /* Wait for the others to finish what they hold. */
  pthread_mutex_lock (&r.lock);
  r.stop = true;
  pthread_cond_broadcast (&r.cond);
  pthread_mutex_unlock (&r.lock);
  for (unsigned i = 0; i < started; i++)
    pthread_join (tids[i], NULL);
  rc = r.failed || !r.done ? -1 : 0;
  *prog = r.prog;
  if (r.stats)
    write_stats (started + 1, r.parallel_cpu, r.emit_cpu, r.serial_cpu);
  /* A worker's error lives in that worker's thread: bring it here. */
  if (r.failed)
    sc_set_error (r.err_errno, "%s", r.err_msg);
  for (size_t i = 0; i < r.nslots; i++) {
    free (r.slots[i].piece.buf);
    free (r.slots[i].piece.out);
  }
  free (r.stream.ahead);
  pthread_cond_destroy (&r.cond);
  pthread_mutex_destroy (&r.src_lock);
  pthread_mutex_destroy (&r.lock);
  free (r.slots);
  free (tids);
  return rc;
}

/* The bytes of data in the source's extents, asked a window at a time
 * as the copy will ask them, so that memory stays bounded: the total of
 * the progress count.  Holes and zero ranges cost nothing to move, and
 * a count that included them would jump over them.
 */
int
sc_count_data (struct sc_endpoint *src, uint64_t *total)
{
  struct sc_extent_list list;
  uint64_t pos = 0, window = FIRST_EXTENT_WINDOW;
  int rc = 0;

  sc_extent_list_init (&list);
  *total = 0;
  while (pos < src->size) {
    if (sc_ep_extents_step (src, pos, SC_MIN (window, src->size - pos),
                            &list, &pos) == -1) {
      sc_error_name (src->name);
      rc = -1;
      break;
    }
    for (size_t i = 0; i < list.len; i++)
      if (!(list.ext[i].flags & SC_EXTENT_NOT_DATA))
        *total += list.ext[i].length;
    /* As fetch_window: few extents, a wider window next time. */
    if (list.len < FEW_EXTENTS && window <= UINT64_MAX / 2)
      window *= 2;
    else if (list.len > MANY_EXTENTS && window / 2 >= MIN_EXTENT_WINDOW)
      window /= 2;
    list.len = 0;
  }
  sc_extent_list_free (&list);
  return rc;
}

/* Holes that count are cut into about HOLE_PIECES pieces, so that the
 * count over them moves in steps of under 1%; each at least a request
 * and at most MAX_HOLE_PIECE (unless they are cheap), a multiple of
 * the request size.  Zeroing
 * a device or an export a piece at a time costs a call per piece, in
 * order: the bound keeps those calls few (16 per GiB) and long.
 */
#define HOLE_PIECES 128
#define MAX_HOLE_PIECE ((uint64_t) 64 * 1024 * 1024)

static uint64_t
hole_piece (uint64_t total, uint32_t request_size, bool cheap)
{
  uint64_t n = request_size;

  while ((cheap || n < MAX_HOLE_PIECE) && n * 2 <= total / HOLE_PIECES)
    n *= 2;
  return n;
}

int
sc_pipeline_run (const struct sc_pipeline *p)
{
  struct sc_extent_list own;
  const struct sc_extent_list *list = p->extents;
  struct sc_progress prog = { 0, 0 };
  struct cursor cur;
  uint32_t request_size = p->request_size ? p->request_size
                                          : DEFAULT_REQUEST_SIZE;
  unsigned threads = p->threads ? p->threads : sc_online_cpus ();
  int rc = -1;

  sc_extent_list_init (&own);
  if (p->src == NULL || p->emit == NULL) {
    sc_set_error (EINVAL, "pipeline: no source or no emit function");
    return -1;
  }
  if (p->move && (p->src->flags & SC_EP_STREAM)) {
    sc_set_error (EINVAL, "pipeline: a stream is read, not moved");
    return -1;
  }
  if ((request_size & (request_size - 1)) != 0
      || request_size > MAX_REQUEST_SIZE) {
    sc_set_error (EINVAL, "pipeline: request size %" PRIu32
                  " is not a power of two up to %d", request_size,
                  MAX_REQUEST_SIZE);
    return -1;
  }
  /* A source that answers each request after a delay (a server) is
   * kept busy with as many requests as it wants, whatever the CPUs.
   */
  threads = SC_MAX (threads, p->src->queue_depth);
  threads = SC_MIN (threads, MAX_PIPELINE_THREADS);

  cur = (struct cursor) { .ext = list, .request_size = request_size,
                          .stream = (p->src->flags & SC_EP_STREAM) != 0 };
  if (cur.stream) {
    /* No extents and no total: progress reports a total of 0. */
    cur.ext = &own;
  }
  else if (list == NULL) {
    /* The source's extents, a window at a time, over all of it. */
    cur.ext = cur.window = &own;
    cur.src = p->src;
    cur.end = p->src->size;
    cur.window_size = FIRST_EXTENT_WINDOW;
    if (p->count_all)
      prog.total = p->src->size;
    else if (p->progress && sc_count_data (p->src, &prog.total) == -1)
      goto out;
  }
  else {
    uint64_t all;

    if (check_extents (list, &all) == -1)
      goto out;
    prog.total = 0;
    for (size_t i = 0; i < list->len; i++)
      if (!(list->ext[i].flags & SC_EXTENT_NOT_DATA))
        prog.total += list->ext[i].length;
    if (p->count_all)
      prog.total = all;
  }
  if (p->count_all && !cur.stream)
    cur.hole_piece = hole_piece (prog.total, request_size, p->cheap_holes);

  if (threads <= 1)
    rc = run_synchronously (p, &cur, &prog);
  else
    rc = run_threaded (p, &cur, threads, &prog);

 out:
  sc_extent_list_free (&own);
  return rc;
}

/* ---- sc_copy ---------------------------------------------------------- */

struct copy_state {
  struct sc_endpoint *src, *dst;
  bool detect_zeroes;
  /* dst takes writes at any offset from any thread: data is written
   * by the workers, in parallel, and emit() only keeps the order of
   * progress and of the zeroing of holes.
   */
  bool write_in_work;
  /* With zero detection, the data that is written is offered to the
   * target as a range of the source to share first (sink.c).
   */
  struct sc_sink_clone clone;
  bool try_clone;
  /* Written, in order, and not yet handed to the target's writeback:
   * [wb_start, wb_end), touched by emit() only.
   */
  uint64_t wb_start, wb_end;
};

/* The target starts writing back what is written every this many
 * bytes: small enough that the device is busy while pieces are still
 * made, large enough that each request covers many pieces.  (The
 * final flush of an unpack of 970 MB to a new ext4 file took 0.41-0.44
 * s without it, and under 0.02 s with it.)  On xfs, writing back a file
 * of many small extents costs an allocation transaction per extent,
 * wherever it is done: unpacking 200,000 extents of 4 KiB took 4.4 s
 * of CPU, as much as a program that only pwrites the same blocks and
 * then fsyncs (4.6 s) and less than cp --sparse=always (5.9 s);
 * batches of 64 or 512 MiB, or none before the final flush, were no
 * faster (4.7-5.2 s).
 */
#define WRITEBACK_BATCH (8 * 1024 * 1024)

/* piece->user: the piece is already on the target; finish() starts
 * the writeback of [piece->placed, the piece's end).
 */
#define PIECE_WRITTEN 1
#define PIECE_WRITEBACK 2

static int write_piece (struct copy_state *cs, struct sc_piece *piece);

static int
copy_work (struct sc_piece *piece, void *opaque)
{
  struct copy_state *cs = opaque;

  if (cs->detect_zeroes && sc_is_zero (piece->buf, piece->length))
    piece->flags = SC_EXTENT_ZERO;
  if (cs->write_in_work) {
    if (write_piece (cs, piece) == -1)
      return -1;
    piece->user |= PIECE_WRITTEN;
  }
  return 0;
}

static int
write_piece (struct copy_state *cs, struct sc_piece *piece)
{
  struct sc_endpoint *dst = cs->dst;
  int rc;

  if (piece->flags & SC_EXTENT_NOT_DATA)
    rc = sc_sink_zero (dst, piece->length, piece->offset);
  else
    rc = sc_sink_write (dst, piece->buf, piece->length, piece->offset,
                        cs->detect_zeroes,
                        cs->try_clone ? &cs->clone : NULL);
  if (rc == -1)
    sc_error_name (dst->name);
  return rc;
}

/* Data that nothing looks at (no zero detection) goes from source to
 * target without being read here where the pair can do that: between
 * files inside the kernel, or by a source that copies itself.
 */
static int
copy_move (struct sc_piece *piece, void *opaque)
{
  struct copy_state *cs = opaque;

  return sc_ep_copy_range (cs->src, piece->offset, cs->dst, piece->offset,
                           piece->length, 0);
}

static int
copy_emit (struct sc_piece *piece, void *opaque)
{
  struct copy_state *cs = opaque;

  if (!piece->moved && !(piece->user & PIECE_WRITTEN)
      && write_piece (cs, piece) == -1)
    return -1;
  /* Pieces come in order, so everything before this one's end is on
   * the target now.  A hole costs the writeback nothing.  Starting the
   * writeback costs the kernel's work of submitting the pages: that is
   * left to finish(), off the ordered path.
   */
  if (piece->flags & SC_EXTENT_NOT_DATA)
    return 0;
  if (cs->wb_end == cs->wb_start)
    cs->wb_start = piece->offset;
  cs->wb_end = piece->offset + piece->length;
  if (cs->wb_end - cs->wb_start >= WRITEBACK_BATCH) {
    piece->user |= PIECE_WRITEBACK;
    piece->placed = cs->wb_start;
    cs->wb_start = cs->wb_end;
    return 1;
  }
  return 0;
}

static int
copy_finish (struct sc_piece *piece, void *opaque)
{
  struct copy_state *cs = opaque;

  if (piece->user & PIECE_WRITEBACK)
    sc_ep_writeback (cs->dst, piece->placed,
                     piece->offset + piece->length - piece->placed);
  return 0;
}

void
sc_pipeline_fit (const struct sc_endpoint *ep, uint32_t *request_size,
              unsigned *threads)
{
  if (ep->max_request > 0)
    while (*request_size > ep->max_request && *request_size > 512)
      *request_size /= 2;
  if (ep->piece_size > 0)
    while (*request_size > ep->piece_size && *request_size > 512)
      *request_size /= 2;
  if (ep->max_in_flight > 0 && *threads > ep->max_in_flight)
    *threads = ep->max_in_flight;
}

int
sc_copy_unflushed (struct sc_endpoint *src, struct sc_endpoint *dst,
                   const struct sc_copy_opts *opts)
{
  struct copy_state cs = {
    .src = src,
    .dst = dst,
    .detect_zeroes = opts->detect_zeroes,
    .write_in_work = (dst->flags & SC_EP_SEEKABLE)
                     && (dst->flags & SC_EP_THREAD_SAFE),
  };
  struct sc_pipeline p = {
    .src = src,
    .request_size = opts->request_size,
    .threads = opts->threads,
    .work = copy_work,
    .emit = copy_emit,
    .finish = copy_finish,
    .opaque = &cs,
    .progress = opts->progress,
    .progress_opaque = opts->progress_opaque,
  };

  if (dst->size < src->size) {
    sc_set_error (ENOSPC, "%s is smaller than %s (%" PRIu64 " < %" PRIu64
                  " bytes)", dst->name, src->name, dst->size, src->size);
    return -1;
  }
  /* Moved pieces are written by the workers, so only where they may
   * write.
   */
  if (!cs.detect_zeroes && cs.write_in_work && !(src->flags & SC_EP_STREAM))
    p.move = copy_move;
  /* Zero detection needs the bytes, so they are read; what is not zero
   * is then shared with the source where the file system can (a
   * reflink: nothing written, no room taken), which leaves the same
   * holes as writing it would (sink.c).  Reading costs less than
   * writing: unpacking 1 GiB of data from a cold page cache on a
   * loop-mounted xfs took 1.0-1.9 s so, 1.4-11.7 s reading and writing
   * it, and 0.06-0.37 s sharing it unread (unpack -n --zero=skip).
   */
  if (cs.detect_zeroes && !(src->flags & SC_EP_STREAM)) {
    cs.try_clone = true;
    cs.clone.src = src;
  }
  if (p.request_size == 0)
    p.request_size = DEFAULT_REQUEST_SIZE;
  if (p.threads == 0)
    p.threads = sc_online_cpus ();
  p.threads = SC_MAX (p.threads, dst->queue_depth);
  sc_pipeline_fit (src, &p.request_size, &p.threads);
  sc_pipeline_fit (dst, &p.request_size, &p.threads);
  if (sc_sink_prepare (dst, src->size) == -1) {
    sc_error_name (dst->name);
    return -1;
  }
  /* A target allocated whole (-S 0), or a pipe, gets every byte
   * written, holes too, which then cost as much as data.
   */
  p.count_all = sc_sink_zero_is_written (dst);
  if (sc_pipeline_run (&p) == -1)
    return -1;
  return 0;
}

int
sc_copy (struct sc_endpoint *src, struct sc_endpoint *dst,
         const struct sc_copy_opts *opts)
{
  if (sc_copy_unflushed (src, dst, opts) == -1)
    return -1;
  return sc_ep_flush (dst);
}
