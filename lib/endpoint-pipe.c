/* Stream endpoints: pipes, FIFOs, character devices, sockets and the
 * standard streams.
 *
 * A stream source is read once, in order, and its length is known only
 * at the end.  A stream target is written forward only; when it is
 * really a regular file with nothing past its position (stdout
 * redirected with ">"), zeros are skipped with lseek and the size set
 * at the end, instead of written.
 */
#include <config.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "internal.h"
#include "endpoint.h"
#include "lock.h"

/* Zeros that must be written go out in chunks of this size. */
#define ZERO_CHUNK (256 * 1024)

/* The pipe size asked for.  With the default 64 KiB, a writer that
 * writes 8 KiB at a time (head, dd with its default block size) and a
 * reader that asks for 1 MiB take turns sleeping every few writes:
 * context switches, not copying, were most of the time of packing a
 * pipe of zeros.  1 MiB (the usual pipe-max-size) holds a whole
 * request of the copy engine.
 */
#define WANT_PIPE_SIZE (1024 * 1024)

/* A reader that empties the pipe sleeps in read(), and then the writer
 * wakes it at its next write, and at the one after: the writer, not
 * the reader, pays for each of these wake-ups, on another CPU an
 * interrupt to it.  head -c 4G /dev/zero, which writes 4 KiB at a
 * time, took 1.7-1.8 s of CPU time feeding pack on the other CPU of
 * two, and 0.5-0.6 s feeding cat, which is slower than head and so
 * never finds the pipe empty.  So a reader whose read came back short
 * (it emptied the pipe) naps before it reads again, while the writer
 * fills the pipe without waking anyone.  Only where the pipe holds much
 * more than a nap brings (140 KB in 20 us at 7 GB/s).  A nap that
 * brought little (a slow writer) or nearly a full pipe (the writer may
 * have waited for room: on a busy machine a nap lasts longer than
 * asked) stops the naps for the next NAP_BACKOFF short reads.
 */
#define NAP_NS 20000
#define NAP_WORTH (64 * 1024)
#define NAP_MIN_PIPE (512 * 1024)
#define NAP_BACKOFF 64

/* A reader that reads less than a pipeful at a time (the pipeline
 * reads a stream of zeros 128 KiB at a time) empties the pipe at each
 * read when it is the faster one, and napped 20 us before most reads:
 * packing 8 GiB of zeros on a busy machine, the reader switched out
 * 82,000-139,000 times and the writer was put off its CPU
 * 74,000-131,000 times.  So the length of a nap follows what it
 * brought, as much as the pipe holds (FIONREAD) after it: doubled, up
 * to NAP_MAX_NS, while that is under a quarter of the pipe, halved,
 * down to NAP_NS, while it is over half.  The same pack then switched
 * out 28,000-30,000 times, and the writer lost its CPU 22,000-28,000
 * times.
 */
#define NAP_MAX_NS 320000

/* A pipe is read through a pipe of the reader's own (the relay):
 * splice(2) moves the writer's pages into it, which is quick, and the
 * copy out of them into the buffer, which is not, is made from the
 * relay.  Reading and writing a pipe take the same lock, and a read
 * holds it for the whole copy: the writer of a pipe of zeros packed on
 * the other CPU of two spent half of its time spinning on that lock
 * (perf: mutex_spin_on_owner), 2.7 s of CPU for 8 GiB against 1.75 s
 * on the reader's CPU.  Each splice moves at most what the relay holds
 * (RELAY_SIZE, in pages of whatever the writer filled them with).
 */
#define RELAY_SIZE (1024 * 1024)
#define RELAY_MIN_SIZE (64 * 1024)

struct pipe_ep {
  struct sc_fd_endpoint base;
  /* Sources: the next offset to be read; targets: to be written. */
  uint64_t pos;
  bool eof;                     /* source: the end was read */
  int relay[2];                 /* source: read and write ends, or -1 */
  size_t relay_size;            /* source: bytes the relay holds */
  size_t nap_pipe;              /* source: the pipe's size if naps
                                   are taken (NAP_NS), else 0 */
  long nap_ns;                  /* source: the length of the next nap */
  unsigned nap_off;             /* source: short reads left without */
  bool can_skip;                /* target: a file behind the stream */
  uint64_t base_offset;         /* file offset of stream offset 0 */
  pthread_mutex_t pos_lock;
  const void *zeros;            /* target: ZERO_CHUNK zero bytes */
  int lock_fd;                  /* target: holds qemu's locks, or -1 */
};

static int
pipe_close (struct sc_endpoint *ep)
{
  struct pipe_ep *p = (struct pipe_ep *) ep;

  if (p->lock_fd >= 0)
    close (p->lock_fd);
  if (p->relay[0] >= 0) {
    close (p->relay[0]);
    close (p->relay[1]);
  }
  free ((void *) p->zeros);
  pthread_mutex_destroy (&p->pos_lock);
  return sc_fd_ep_close (ep);
}

/* ---- sources -------------------------------------------------------------- */

/* Close the relay: the stream is read directly from now on. */
static void
drop_relay (struct pipe_ep *p)
{
  close (p->relay[0]);
  close (p->relay[1]);
  p->relay[0] = p->relay[1] = -1;
}

/* read(2) on the stream, through the relay when there is one: what
 * splice moved into it is read out whole before returning, so that the
 * relay is empty between calls and nothing read is ever left in it.
 */
static ssize_t
stream_read (struct pipe_ep *p, void *buf, size_t count)
{
  ssize_t n;
  size_t out = 0;

  if (p->relay[0] < 0)
    return read (p->base.fd, buf, count);
  n = splice (p->base.fd, NULL, p->relay[1], NULL,
              SC_MIN (count, p->relay_size), 0);
  if (n == -1 && errno == EINVAL) {
    /* Not a pipe that splice takes from (nothing was moved): read. */
    drop_relay (p);
    return read (p->base.fd, buf, count);
  }
  if (n <= 0)
    return n;
  while (out < (size_t) n) {
    ssize_t r = read (p->relay[0], (char *) buf + out, (size_t) n - out);

    /* The bytes are in the relay: a signal cannot lose them. */
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0) {
      if (r == 0)
        errno = EIO;
      return -1;
    }
    out += (size_t) r;
  }
  return n;
}

/* Give a pipe source its relay, if splice can feed one: a pipe of
 * RELAY_SIZE bytes, or none (the stream is then read directly).
 */
static void
make_relay (struct pipe_ep *p)
{
#ifdef F_SETPIPE_SZ
  struct stat st;
  int size;

  if (fstat (p->base.fd, &st) == -1 || !S_ISFIFO (st.st_mode))
    return;
  if (pipe2 (p->relay, O_CLOEXEC) == -1) {
    p->relay[0] = p->relay[1] = -1;
    return;
  }
  /* A user over its pipe quota gets a pipe of a page or two, which
   * would cut every read to that: the stream is read directly then.
   */
  size = fcntl (p->relay[1], F_SETPIPE_SZ, RELAY_SIZE);
  if (size < RELAY_MIN_SIZE) {
    drop_relay (p);
    return;
  }
  p->relay_size = (size_t) size;
#else
  (void) p;
#endif
}

static int
pipe_read_some (struct sc_endpoint *ep, void *buf, size_t count,
                uint64_t offset, size_t *got)
{
  struct pipe_ep *p = (struct pipe_ep *) ep;
  unsigned char *b = buf;
  size_t done = 0;
  bool short_read = false, napped = false;
  size_t brought = 0;           /* by the last nap */
  size_t want = 0;              /* asked of the last read */
  int rc = 0;

  pthread_mutex_lock (&p->pos_lock);
  if (p->eof) {
    *got = 0;
    goto out;
  }
  if (offset != p->pos) {
    sc_set_error (EINVAL, "%s: cannot read at offset %" PRIu64
                  " of a stream positioned at %" PRIu64, ep->name,
                  offset, p->pos);
    rc = -1;
    goto out;
  }
  while (done < count) {
    ssize_t r;

    if (short_read && p->nap_pipe > 0 && p->nap_off > 0)
      p->nap_off--;
    else if (short_read && p->nap_pipe > 0) {
      struct timespec ts = { 0, p->nap_ns };
      int avail;

      (void) nanosleep (&ts, NULL);     /* EINTR: read sooner */
      napped = true;
      brought = 0;
      if (ioctl (p->base.fd, FIONREAD, &avail) == 0 && avail > 0)
        brought = (size_t) avail;
      if (brought < p->nap_pipe / 4)
        p->nap_ns = SC_MIN (2 * p->nap_ns, (long) NAP_MAX_NS);
      else if (brought > p->nap_pipe / 2)
        p->nap_ns = SC_MAX (p->nap_ns / 2, (long) NAP_NS);
    }
    want = count - done;
    if (p->relay[0] >= 0)
      want = SC_MIN (want, p->relay_size);
    r = stream_read (p, b + done, want);
    /* A signal that asks to stop ends the wait for the writer. */
    if (r == -1 && errno == EINTR && sc_check_interrupt () == -1) {
      rc = -1;
      goto out;
    }
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1) {
      sc_set_error (errno, "%s: read at offset %" PRIu64 ": %s", ep->name,
                    p->pos + done, strerror (errno));
      rc = -1;
      goto out;
    }
    if (r == 0) {
      p->eof = true;
      break;
    }
    /* A read through the relay asks for at most what it holds. */
    short_read = (size_t) r < want;
    done += (size_t) r;
    /* What the nap brought is what the pipe held, or at least what
     * was read.
     */
    brought = SC_MAX (brought, (size_t) r);
    if (napped && (brought < NAP_WORTH || brought >= p->nap_pipe / 4 * 3))
      p->nap_off = NAP_BACKOFF;
    napped = false;
  }
  p->pos += done;
  if (p->eof)
    ep->size = p->pos;
  *got = done;
 out:
  pthread_mutex_unlock (&p->pos_lock);
  return rc;
}

static int
pipe_pread (struct sc_endpoint *ep, void *buf, size_t count, uint64_t offset)
{
  size_t got;

  if (pipe_read_some (ep, buf, count, offset, &got) == -1)
    return -1;
  if (got < count) {
    sc_set_error (EIO, "%s: unexpected end of stream at offset %" PRIu64,
                  ep->name, offset + got);
    return -1;
  }
  return 0;
}

static const struct sc_endpoint_ops pipe_source_ops = {
  .kind = "pipe",
  .pread = pipe_pread,
  .read_some = pipe_read_some,
  .close = pipe_close,
};

/* ---- targets -------------------------------------------------------------- */

/* With pos_lock held: move a skippable stream forward to offset. */
static int
skip_to (struct pipe_ep *p, uint64_t offset)
{
  if (offset > (uint64_t) INT64_MAX - p->base_offset) {
    sc_set_error (EFBIG, "offset %" PRIu64 " is too large", offset);
    return -1;
  }
  if (lseek (p->base.fd, (off_t) (offset - p->pos), SEEK_CUR) == -1) {
    sc_set_error (errno, "lseek: %s", strerror (errno));
    return -1;
  }
  p->pos = offset;
  return 0;
}

static int
pipe_pwrite (struct sc_endpoint *ep, const void *buf, size_t count,
             uint64_t offset)
{
  struct pipe_ep *p = (struct pipe_ep *) ep;
  int rc = 0;

  pthread_mutex_lock (&p->pos_lock);
  /* A file behind the stream can skip forward over zeros. */
  if (p->can_skip && offset > p->pos)
    rc = skip_to (p, offset);
  if (rc == 0 && offset != p->pos) {
    sc_set_error (EINVAL, "cannot write at offset %" PRIu64
                  " of a stream positioned at %" PRIu64, offset, p->pos);
    rc = -1;
  }
  if (rc == 0) {
    rc = sc_full_write (p->base.fd, buf, count);
    if (rc == 0)
      p->pos += count;
  }
  pthread_mutex_unlock (&p->pos_lock);
  return rc;
}

/* A stream cannot skip: zeros are written out, unless it is a file. */
static int
pipe_zero (struct sc_endpoint *ep, uint64_t count, uint64_t offset,
           unsigned flags)
{
  struct pipe_ep *p = (struct pipe_ep *) ep;

  if (p->can_skip) {
    uint64_t end;
    int rc = 0;

    pthread_mutex_lock (&p->pos_lock);
    if (offset < p->pos) {
      sc_set_error (EINVAL, "cannot write at offset %" PRIu64
                    " of a stream positioned at %" PRIu64, offset, p->pos);
      rc = -1;
    }
    else if (SC_ADD_OVERFLOW (offset, count, &end)) {
      sc_set_error (EFBIG, "offset %" PRIu64 " is too large", offset);
      rc = -1;
    }
    else
      rc = skip_to (p, end);
    pthread_mutex_unlock (&p->pos_lock);
    return rc;
  }

  if (flags & SC_ZERO_FAST)
    return sc_ep_unsupported (ep, "fast zeroing");
  while (count > 0) {
    size_t n = (size_t) SC_MIN (count, (uint64_t) ZERO_CHUNK);
    if (pipe_pwrite (ep, p->zeros, n, offset) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

static int
pipe_flush (struct sc_endpoint *ep)
{
  struct pipe_ep *p = (struct pipe_ep *) ep;
  struct stat st;

  /* Zeros skipped at the end still have to make the file longer. */
  if (p->can_skip && fstat (p->base.fd, &st) == 0
      && (uint64_t) st.st_size < p->base_offset + ep->size
      && ftruncate (p->base.fd, (off_t) (p->base_offset + ep->size)) == -1) {
    sc_set_error (errno, "%s: ftruncate: %s", ep->name, strerror (errno));
    return -1;
  }
  /* A pipe or terminal cannot be synced; a redirected file can. */
  if (fsync (p->base.fd) == -1 && errno != EINVAL && errno != EROFS
      && errno != ENOTSUP) {
    sc_set_error (errno, "%s: fsync: %s", ep->name, strerror (errno));
    return -1;
  }
  return 0;
}

/* A stream takes any size; a file behind it is made that long at the
 * end.
 */
static int
pipe_set_size (struct sc_endpoint *ep, uint64_t size)
{
  ep->size = size;
  return 0;
}

static const struct sc_endpoint_ops pipe_target_ops = {
  .kind = "pipe",
  .pwrite = pipe_pwrite,
  .zero = pipe_zero,
  .set_size = pipe_set_size,
  .flush = pipe_flush,
  .close = pipe_close,
};

/* ---- constructors ------------------------------------------------------ */

/* Make a pipe hold up to WANT_PIPE_SIZE bytes, or as much as the system
 * lets an unprivileged process ask for (/proc/sys/fs/pipe-max-size).
 * Only an optimisation: anything but a pipe, a kernel without
 * F_SETPIPE_SZ, or a refusal leaves the pipe as it is.
 */
static void
grow_pipe (int fd)
{
#ifdef F_SETPIPE_SZ
  struct stat st;
  long want = WANT_PIPE_SIZE;
  FILE *fp;

  if (fstat (fd, &st) == -1 || !S_ISFIFO (st.st_mode))
    return;
#ifdef F_GETPIPE_SZ
  {
    int cur = fcntl (fd, F_GETPIPE_SZ);
    if (cur >= want)
      return;
  }
#endif
  fp = fopen ("/proc/sys/fs/pipe-max-size", "re");
  if (fp != NULL) {
    long max;
    if (fscanf (fp, "%ld", &max) == 1 && max > 0 && max < want)
      want = max;
    fclose (fp);
  }
  /* A user over its pipe quota (pipe-user-pages-soft) is refused: the
   * pipe keeps its size, which is correct, only slower.
   */
  while (want >= 65536 && fcntl (fd, F_SETPIPE_SZ, (int) want) == -1
         && errno == EPERM)
    want /= 2;
#else
  (void) fd;
#endif
}

static struct pipe_ep *
new_pipe_ep (const struct sc_endpoint_ops *ops, int fd, bool own_fd,
             const char *name)
{
  struct pipe_ep *p = sc_ep_new (sizeof *p, ops, name);

  if (p == NULL)
    return NULL;
  p->base.fd = fd;
  p->base.own_fd = own_fd;
  p->lock_fd = -1;
  p->relay[0] = p->relay[1] = -1;
  pthread_mutex_init (&p->pos_lock, NULL);
  return p;
}

struct sc_endpoint *
sc_pipe_source_new (int fd, bool own_fd, const char *name)
{
  struct pipe_ep *p = new_pipe_ep (&pipe_source_ops, fd, own_fd, name);

  if (p == NULL)
    return NULL;
  p->base.ep.flags = SC_EP_STREAM;
  grow_pipe (fd);
  make_relay (p);
#ifdef F_GETPIPE_SZ
  {
    struct stat st;
    int size = fcntl (fd, F_GETPIPE_SZ);

    if (fstat (fd, &st) == 0 && S_ISFIFO (st.st_mode)
        && size >= NAP_MIN_PIPE) {
      p->nap_pipe = (size_t) size;
      p->nap_ns = NAP_NS;
    }
  }
#endif
  return &p->base.ep;
}

struct sc_endpoint *
sc_pipe_target_new (int fd, bool own_fd, const char *name, uint64_t size)
{
  struct pipe_ep *p = new_pipe_ep (&pipe_target_ops, fd, own_fd, name);
  struct stat st;
  off_t cur;
  int fl;

  if (p == NULL)
    return NULL;
  p->zeros = calloc (1, ZERO_CHUNK);
  if (p->zeros == NULL) {
    sc_set_error (errno, "%s: out of memory", name);
    p->base.own_fd = false;
    pipe_close (&p->base.ep);
    return NULL;
  }
  p->base.ep.size = size;
  grow_pipe (fd);

  fl = fcntl (fd, F_GETFL);
  if (fstat (fd, &st) == 0 && S_ISREG (st.st_mode)
      && fl != -1 && !(fl & O_APPEND)
      && (cur = lseek (fd, 0, SEEK_CUR)) != -1 && st.st_size <= cur) {
    p->can_skip = true;
    p->base_offset = (uint64_t) cur;
    /* Everything past the position is past the end of the file. */
    p->base.ep.flags |= SC_EP_FRESH_ZEROS;
  }
  return &p->base.ep;
}

int
sc_pipe_target_lock (struct sc_endpoint *ep)
{
  struct pipe_ep *p = (struct pipe_ep *) ep;
  char path[64];
  struct stat a, b;
  int fd;

  if (p->lock_fd >= 0 || fstat (p->base.fd, &a) == -1
      || !S_ISREG (a.st_mode))
    return 0;
  /* OFD locks belong to the open file description, and standard
   * output's may be shared with the shell that opened it ("exec >f"):
   * locks taken there would outlive this program.  The file is opened
   * again for a description of its own, which closing the target
   * releases; for reading, as a shared lock needs.  Where it cannot be
   * opened again (no /proc, no permission to read), nothing is locked,
   * as on a file system without OFD locks.
   */
  snprintf (path, sizeof path, "/proc/self/fd/%d", p->base.fd);
  fd = open (path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd == -1)
    return 0;
  if (fstat (fd, &b) == -1 || a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
    close (fd);
    return 0;
  }
  if (sc_lock_hold_write (fd) == -1) {
    close (fd);
    return -1;
  }
  p->lock_fd = fd;
  return 0;
}
