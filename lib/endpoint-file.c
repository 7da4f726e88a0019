/* Endpoints for local data: regular files, block devices, and
 * streams (pipes, FIFOs, character devices, the standard streams).
 *
 * A regular-file target is written under a hidden temporary name in
 * the target's directory and renamed into place only when the caller
 * commits, so an interrupted or failed copy never leaves something at
 * the target path that looks complete.
 */
#include <config.h>

#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#ifdef HAVE_LINUX_FS_H
#include <linux/fs.h>
#endif

#include "internal.h"

/* Zeros are written in chunks of this size where a range cannot be
 * punched or zeroed by the kernel.
 */
#define ZERO_CHUNK (256 * 1024)

#define DEFAULT_BLOCK_SIZE 4096

struct file_ep {
  struct sc_endpoint ep;
  int fd;
  bool own_fd;                  /* close fd on close (not for stdio) */
  enum sc_map_method map;
  /* Targets. */
  char *path;                   /* final path of a regular-file target */
  char *tmp;                    /* temporary name, until committed */
  int reg_slot;                 /* index in the registry, or -1 */
  bool committed;
  bool force;
  /* Forward-only targets: the next offset to be written.  Stream
   * sources: the next offset to be read.
   */
  uint64_t pos;
  bool eof;                     /* stream source: the end was read */
  /* A stream that is really a regular file with nothing past its
   * position (stdout redirected with ">"): zeros can be skipped with
   * lseek and the size set at the end, instead of written.
   */
  bool can_skip;
  uint64_t base;                /* file offset of stream offset 0 */
  pthread_mutex_t pos_lock;
  const void *zeros;            /* ZERO_CHUNK zero bytes, or NULL */
};

/* ---- the registry of uncommitted temporary files ---------------------
 *
 * A signal handler may only unlink names that were fully built before
 * the signal arrived: slots hold pointers that are published after the
 * string is complete and cleared before it is freed.
 */
#define MAX_TEMPORARIES 64

static char *volatile temporaries[MAX_TEMPORARIES];
static pthread_mutex_t temporaries_lock = PTHREAD_MUTEX_INITIALIZER;

static int
register_temporary (char *name)
{
  int slot = -1;

  pthread_mutex_lock (&temporaries_lock);
  for (int i = 0; i < MAX_TEMPORARIES; i++) {
    if (temporaries[i] == NULL) {
      __atomic_store_n (&temporaries[i], name, __ATOMIC_SEQ_CST);
      slot = i;
      break;
    }
  }
  pthread_mutex_unlock (&temporaries_lock);
  if (slot == -1)
    sc_set_error (EMFILE, "too many targets open at once");
  return slot;
}

static void
unregister_temporary (int slot)
{
  if (slot < 0)
    return;
  pthread_mutex_lock (&temporaries_lock);
  __atomic_store_n (&temporaries[slot], NULL, __ATOMIC_SEQ_CST);
  pthread_mutex_unlock (&temporaries_lock);
}

void
sc_cleanup_temporaries (void)
{
  int saved = errno;

  for (int i = 0; i < MAX_TEMPORARIES; i++) {
    char *name = __atomic_load_n (&temporaries[i], __ATOMIC_SEQ_CST);
    if (name != NULL)
      unlink (name);
  }
  errno = saved;
}

/* ---- shared slots ------------------------------------------------------
 *
 * I/O errors are reported without the endpoint's name: the copy engine
 * adds it, knowing which side failed.  Errors of whole-endpoint
 * operations (flush, close, commit) name the endpoint themselves.
 */

static int
file_pread (struct sc_endpoint *ep, void *buf, size_t count, uint64_t offset)
{
  struct file_ep *f = (struct file_ep *) ep;

  return sc_full_pread (f->fd, buf, count, offset);
}

static int
file_pwrite (struct sc_endpoint *ep, const void *buf, size_t count,
             uint64_t offset)
{
  struct file_ep *f = (struct file_ep *) ep;

  return sc_full_pwrite (f->fd, buf, count, offset);
}

/* Write zeros over a range, chunk by chunk. */
static int
write_zeros (struct file_ep *f, uint64_t count, uint64_t offset)
{
  CLEANUP_FREE void *zeros = calloc (1, ZERO_CHUNK);

  if (zeros == NULL) {
    sc_set_error (errno, "out of memory");
    return -1;
  }
  while (count > 0) {
    size_t n = (size_t) SC_MIN (count, (uint64_t) ZERO_CHUNK);
    if (file_pwrite (&f->ep, zeros, n, offset) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

static int
file_zero (struct sc_endpoint *ep, uint64_t count, uint64_t offset)
{
  struct file_ep *f = (struct file_ep *) ep;

#if defined (HAVE_FALLOCATE) && defined (FALLOC_FL_PUNCH_HOLE)
  /* A hole reads as zeros and costs no space. */
  if (fallocate (f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                 (off_t) offset, (off_t) count) == 0)
    return 0;
#endif
  return write_zeros (f, count, offset);
}

static int
block_zero (struct sc_endpoint *ep, uint64_t count, uint64_t offset)
{
  struct file_ep *f = (struct file_ep *) ep;

#ifdef BLKZEROOUT
  /* The kernel needs sector-aligned ranges; anything else is written. */
  if (SC_IS_ALIGNED (offset, 512) && SC_IS_ALIGNED (count, 512)) {
    uint64_t range[2] = { offset, count };
    if (ioctl (f->fd, BLKZEROOUT, range) == 0)
      return 0;
  }
#endif
  return write_zeros (f, count, offset);
}

static int
file_extents (struct sc_endpoint *ep, uint64_t offset, uint64_t count,
              struct sc_extent_list *list)
{
  struct file_ep *f = (struct file_ep *) ep;

  return sc_fd_extents (f->fd, f->map, offset, count, list);
}

static int
file_flush (struct sc_endpoint *ep)
{
  struct file_ep *f = (struct file_ep *) ep;

  if (fsync (f->fd) == -1 && errno != EINVAL && errno != EROFS) {
    sc_set_error (errno, "%s: fsync: %s", ep->name, strerror (errno));
    return -1;
  }
  return 0;
}

static int
file_close (struct sc_endpoint *ep)
{
  struct file_ep *f = (struct file_ep *) ep;
  int rc = 0;

  if (f->tmp && !f->committed) {
    unregister_temporary (f->reg_slot);
    unlink (f->tmp);
  }
  if (f->own_fd && f->fd >= 0 && close (f->fd) == -1) {
    sc_set_error (errno, "%s: close: %s", ep->name, strerror (errno));
    rc = -1;
  }
  if (f->zeros)
    free ((void *) f->zeros);
  pthread_mutex_destroy (&f->pos_lock);
  free (f->tmp);
  free (f->path);
  free (ep->name);
  free (f);
  return rc;
}

/* ---- forward-only targets (stdout, pipes, character devices) ------- */

/* With pos_lock held: move a skippable stream forward to offset. */
static int
skip_to (struct file_ep *f, uint64_t offset)
{
  if (offset > (uint64_t) INT64_MAX - f->base) {
    sc_set_error (EFBIG, "offset %" PRIu64 " is too large", offset);
    return -1;
  }
  if (lseek (f->fd, (off_t) (offset - f->pos), SEEK_CUR) == -1) {
    sc_set_error (errno, "lseek: %s", strerror (errno));
    return -1;
  }
  f->pos = offset;
  return 0;
}

static int
pipe_pwrite (struct sc_endpoint *ep, const void *buf, size_t count,
             uint64_t offset)
{
  struct file_ep *f = (struct file_ep *) ep;
  int rc = 0;

  pthread_mutex_lock (&f->pos_lock);
  /* A file behind the stream can skip forward over zeros. */
  if (f->can_skip && offset > f->pos)
    rc = skip_to (f, offset);
  if (rc == 0 && offset != f->pos) {
    sc_set_error (EINVAL, "cannot write at offset %" PRIu64
                  " of a stream positioned at %" PRIu64, offset, f->pos);
    rc = -1;
  }
  if (rc == 0) {
    rc = sc_full_write (f->fd, buf, count);
    if (rc == 0)
      f->pos += count;
  }
  pthread_mutex_unlock (&f->pos_lock);
  return rc;
}

/* A stream cannot skip: zeros are written out, unless it is a file. */
static int
pipe_zero (struct sc_endpoint *ep, uint64_t count, uint64_t offset)
{
  struct file_ep *f = (struct file_ep *) ep;

  if (f->can_skip) {
    uint64_t end;
    int rc = 0;

    pthread_mutex_lock (&f->pos_lock);
    if (offset < f->pos) {
      sc_set_error (EINVAL, "cannot write at offset %" PRIu64
                    " of a stream positioned at %" PRIu64, offset, f->pos);
      rc = -1;
    }
    else if (SC_ADD_OVERFLOW (offset, count, &end)) {
      sc_set_error (EFBIG, "offset %" PRIu64 " is too large", offset);
      rc = -1;
    }
    else
      rc = skip_to (f, end);
    pthread_mutex_unlock (&f->pos_lock);
    return rc;
  }

  while (count > 0) {
    size_t n = (size_t) SC_MIN (count, (uint64_t) ZERO_CHUNK);
    if (pipe_pwrite (ep, f->zeros, n, offset) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

static int
pipe_pread (struct sc_endpoint *ep, void *buf, size_t count, uint64_t offset)
{
  sc_set_error (ENOTSUP, "reading is not supported");
  return -1;
}

static int
pipe_flush (struct sc_endpoint *ep)
{
  struct file_ep *f = (struct file_ep *) ep;
  struct stat st;

  /* Zeros skipped at the end still have to make the file longer. */
  if (f->can_skip && fstat (f->fd, &st) == 0
      && (uint64_t) st.st_size < f->base + ep->size
      && ftruncate (f->fd, (off_t) (f->base + ep->size)) == -1) {
    sc_set_error (errno, "%s: ftruncate: %s", ep->name, strerror (errno));
    return -1;
  }
  /* A pipe or terminal cannot be synced; a redirected file can. */
  if (fsync (f->fd) == -1 && errno != EINVAL && errno != EROFS
      && errno != ENOTSUP) {
    sc_set_error (errno, "%s: fsync: %s", ep->name, strerror (errno));
    return -1;
  }
  return 0;
}

/* ---- stream sources ------------------------------------------------------
 *
 * A pipe is read once, in order, and its length is known only at the
 * end.  The pipeline reads it one piece at a time in source order.
 */

int
sc_stream_read (struct sc_endpoint *ep, void *buf, size_t count,
                uint64_t offset, size_t *got)
{
  struct file_ep *f = (struct file_ep *) ep;
  unsigned char *p = buf;
  size_t done = 0;
  int rc = 0;

  pthread_mutex_lock (&f->pos_lock);
  if (f->eof) {
    *got = 0;
    goto out;
  }
  if (offset != f->pos) {
    sc_set_error (EINVAL, "%s: cannot read at offset %" PRIu64
                  " of a stream positioned at %" PRIu64, ep->name,
                  offset, f->pos);
    rc = -1;
    goto out;
  }
  while (done < count) {
    ssize_t r = read (f->fd, p + done, count - done);

    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1) {
      sc_set_error (errno, "%s: read at offset %" PRIu64 ": %s", ep->name,
                    f->pos + done, strerror (errno));
      rc = -1;
      goto out;
    }
    if (r == 0) {
      f->eof = true;
      break;
    }
    done += (size_t) r;
  }
  f->pos += done;
  if (f->eof)
    ep->size = f->pos;
  *got = done;
 out:
  pthread_mutex_unlock (&f->pos_lock);
  return rc;
}

static int
stream_pread (struct sc_endpoint *ep, void *buf, size_t count,
              uint64_t offset)
{
  size_t got;

  if (sc_stream_read (ep, buf, count, offset, &got) == -1)
    return -1;
  if (got < count) {
    sc_set_error (EIO, "%s: unexpected end of stream at offset %" PRIu64,
                  ep->name, offset + got);
    return -1;
  }
  return 0;
}

/* A stream's extents are not known in advance: everything read is
 * data.
 */
static int
stream_extents (struct sc_endpoint *ep, uint64_t offset, uint64_t count,
                struct sc_extent_list *list)
{
  (void) ep;
  return count == 0 ? 0 : sc_extent_list_append (list, offset, count, 0);
}

static const struct sc_endpoint_ops stream_source_ops = {
  .kind = "pipe",
  .pread = stream_pread,
  .pwrite = sc_ep_pwrite_unsupported,
  .zero = sc_ep_zero_unsupported,
  .extents = stream_extents,
  .flush = sc_ep_flush_none,
  .close = file_close,
};

static const struct sc_endpoint_ops file_source_ops = {
  .kind = "file",
  .pread = file_pread,
  .pwrite = sc_ep_pwrite_unsupported,
  .zero = sc_ep_zero_unsupported,
  .extents = file_extents,
  .flush = sc_ep_flush_none,
  .close = file_close,
};

static const struct sc_endpoint_ops block_source_ops = {
  .kind = "block",
  .pread = file_pread,
  .pwrite = sc_ep_pwrite_unsupported,
  .zero = sc_ep_zero_unsupported,
  .extents = sc_ep_extents_all_data,
  .flush = sc_ep_flush_none,
  .close = file_close,
};

static const struct sc_endpoint_ops file_target_ops = {
  .kind = "file",
  .pread = file_pread,
  .pwrite = file_pwrite,
  .zero = file_zero,
  .extents = file_extents,
  .flush = file_flush,
  .close = file_close,
};

static const struct sc_endpoint_ops block_target_ops = {
  .kind = "block",
  .pread = file_pread,
  .pwrite = file_pwrite,
  .zero = block_zero,
  .extents = sc_ep_extents_all_data,
  .flush = file_flush,
  .close = file_close,
};

static const struct sc_endpoint_ops pipe_target_ops = {
  .kind = "pipe",
  .pread = pipe_pread,
  .pwrite = pipe_pwrite,
  .zero = pipe_zero,
  .extents = sc_ep_extents_all_data,
  .flush = pipe_flush,
  .close = file_close,
};

static bool
is_file_endpoint (const struct sc_endpoint *ep)
{
  return ep->ops == &file_source_ops || ep->ops == &block_source_ops
    || ep->ops == &file_target_ops || ep->ops == &block_target_ops
    || ep->ops == &pipe_target_ops;
}

static struct file_ep *
new_file_ep (const struct sc_endpoint_ops *ops, const char *name, int fd,
             bool own_fd)
{
  struct file_ep *f = calloc (1, sizeof *f);

  if (f == NULL || (f->ep.name = strdup (name)) == NULL) {
    sc_set_error (errno, "%s: out of memory", name);
    free (f);
    return NULL;
  }
  f->ep.ops = ops;
  f->ep.block_size = DEFAULT_BLOCK_SIZE;
  f->fd = fd;
  f->own_fd = own_fd;
  f->reg_slot = -1;
  pthread_mutex_init (&f->pos_lock, NULL);
  return f;
}

#ifdef BLKGETSIZE64
static int
block_device_size (int fd, const char *name, uint64_t *size)
{
  if (ioctl (fd, BLKGETSIZE64, size) == -1) {
    sc_set_error (errno, "%s: cannot get the device size: %s",
                  name, strerror (errno));
    return -1;
  }
  return 0;
}
#else
static int
block_device_size (int fd, const char *name, uint64_t *size)
{
  off_t end = lseek (fd, 0, SEEK_END);

  if (end == -1) {
    sc_set_error (errno, "%s: cannot get the device size: %s",
                  name, strerror (errno));
    return -1;
  }
  *size = (uint64_t) end;
  return 0;
}
#endif

/* ---- sources ------------------------------------------------------------- */

struct sc_endpoint *
sc_file_open_source (const char *path, enum sc_map_method map)
{
  bool is_stdin = strcmp (path, "-") == 0;
  const char *name = is_stdin ? "stdin" : path;
  struct file_ep *f;
  struct stat st;
  int fd;

  if (is_stdin)
    fd = STDIN_FILENO;
  else {
    fd = open (path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
      sc_set_error (errno, "%s", strerror (errno));
      return NULL;
    }
  }
  if (fstat (fd, &st) == -1) {
    sc_set_error (errno, "fstat: %s", strerror (errno));
    goto err;
  }

  if (S_ISREG (st.st_mode)) {
    f = new_file_ep (&file_source_ops, name, fd, !is_stdin);
    if (f == NULL)
      goto err;
    f->ep.size = (uint64_t) st.st_size;
    if (st.st_blksize > 0 && (st.st_blksize & (st.st_blksize - 1)) == 0)
      f->ep.block_size = (uint32_t) st.st_blksize;
  }
  else if (S_ISBLK (st.st_mode)) {
    uint64_t size;

    if (block_device_size (fd, name, &size) == -1)
      goto err;
    f = new_file_ep (&block_source_ops, name, fd, !is_stdin);
    if (f == NULL)
      goto err;
    f->ep.size = size;
  }
  else if (S_ISFIFO (st.st_mode) || S_ISCHR (st.st_mode)
           || S_ISSOCK (st.st_mode)) {
    f = new_file_ep (&stream_source_ops, name, fd, !is_stdin);
    if (f == NULL)
      goto err;
    f->ep.flags = SC_EP_STREAM;
    return &f->ep;
  }
  else {
    sc_set_error (EINVAL, "not a regular file, block device or pipe");
    goto err;
  }
  f->map = map;
  f->ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE;
  return &f->ep;

 err:
  if (!is_stdin)
    close (fd);
  return NULL;
}

int
sc_file_source_stat (struct sc_endpoint *ep, struct stat *st)
{
  struct file_ep *f = (struct file_ep *) ep;

  if (!is_file_endpoint (ep)) {
    sc_set_error (EINVAL, "%s: not a file endpoint", ep->name);
    return -1;
  }
  if (fstat (f->fd, st) == -1) {
    sc_set_error (errno, "%s: fstat: %s", ep->name, strerror (errno));
    return -1;
  }
  return 0;
}

/* copy_file_range from a descriptor into a file target; see
 * sc_file_copy_range.  src_name names the source in errors.
 */
static int
copy_fd_range (int src_fd, const char *src_name, uint64_t src_off,
               struct sc_endpoint *dst, uint64_t dst_off, uint64_t count)
{
#ifdef HAVE_COPY_FILE_RANGE
  struct file_ep *d = (struct file_ep *) dst;
  bool started = false;

  if (dst->ops != &file_target_ops)
    return 1;
  while (count > 0) {
    loff_t in = (loff_t) src_off, out = (loff_t) dst_off;
    size_t n = (size_t) SC_MIN (count, (uint64_t) 1 << 30);
    ssize_t r = copy_file_range (src_fd, &in, d->fd, &out, n, 0);

    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1 && !started
        && (errno == ENOSYS || errno == EXDEV || errno == EINVAL
            || errno == EOPNOTSUPP || errno == EBADF || errno == EPERM))
      return 1;
    if (r == -1) {
      sc_set_error (errno, "%s: copy from %s at offset %" PRIu64 ": %s",
                    dst->name, src_name, src_off, strerror (errno));
      return -1;
    }
    if (r == 0) {
      sc_set_error (EIO, "%s: unexpected end of file at offset %" PRIu64,
                    src_name, src_off);
      return -1;
    }
    started = true;
    /* Start writing the copy back now, so that the flush before the
     * target is renamed into place overlaps the rest of the copy
     * instead of following it.  Advisory: errors surface at fsync.
     */
    (void) sync_file_range (d->fd, (off_t) dst_off, (off_t) r,
                            SYNC_FILE_RANGE_WRITE);
    src_off += (uint64_t) r;
    dst_off += (uint64_t) r;
    count -= (uint64_t) r;
  }
  return 0;
#else
  (void) src_fd; (void) src_name; (void) src_off;
  (void) dst; (void) dst_off; (void) count;
  return 1;
#endif
}

int
sc_file_pread_cached (struct sc_endpoint *ep, void *buf, size_t count,
                      uint64_t offset)
{
#ifdef RWF_NOWAIT
  struct file_ep *f = (struct file_ep *) ep;
  unsigned char *p = buf;

  if (ep->ops != &file_source_ops || offset > INT64_MAX)
    return 1;
  while (count > 0) {
    struct iovec iov = { p, count };
    ssize_t r = preadv2 (f->fd, &iov, 1, (off_t) offset, RWF_NOWAIT);

    if (r == -1 && errno == EINTR)
      continue;
    /* Not all in memory, or no such read on this system. */
    if (r == -1 && (errno == EAGAIN || errno == EOPNOTSUPP
                    || errno == ENOSYS || errno == EINVAL))
      return 1;
    if (r == -1) {
      sc_set_error (errno, "read at offset %" PRIu64 ": %s", offset,
                    strerror (errno));
      return -1;
    }
    if (r == 0) {
      sc_set_error (EIO, "unexpected end of file at offset %" PRIu64,
                    offset);
      return -1;
    }
    p += r;
    count -= (size_t) r;
    offset += (uint64_t) r;
  }
  return 0;
#else
  (void) ep; (void) buf; (void) count; (void) offset;
  return 1;
#endif
}

int
sc_file_copy_range (struct sc_endpoint *src, uint64_t src_off,
                    struct sc_endpoint *dst, uint64_t dst_off,
                    uint64_t count)
{
  if (src->ops != &file_source_ops)
    return 1;
  return copy_fd_range (((struct file_ep *) src)->fd, src->name, src_off,
                        dst, dst_off, count);
}

int
sc_file_copy_fd_range (int src_fd, const char *src_name, uint64_t src_off,
                       struct sc_endpoint *dst, uint64_t dst_off,
                       uint64_t count)
{
  return copy_fd_range (src_fd, src_name, src_off, dst, dst_off, count);
}

/* ---- spill files ---------------------------------------------------------- */

int
sc_spill_open (const char *near)
{
  CLEANUP_FREE char *dir = NULL;
  CLEANUP_FREE char *tmpl = NULL;
  const char *slash;
  struct stat st;
  int fd;

  /* Next to a file target, whose file system must have the room for
   * the image anyway; elsewhere (standard output, a device) in TMPDIR.
   */
  if (near == NULL || strcmp (near, "-") == 0
      || (stat (near, &st) == 0 && !S_ISREG (st.st_mode))) {
    const char *t = getenv ("TMPDIR");
    dir = strdup (t && *t ? t : "/var/tmp");
  }
  else if ((slash = strrchr (near, '/')) != NULL)
    dir = slash == near ? strdup ("/") : strndup (near, (size_t) (slash - near));
  else
    dir = strdup (".");
  if (dir == NULL) {
    sc_set_error (errno, "out of memory");
    return -1;
  }

#ifdef O_TMPFILE
  fd = open (dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0)
    return fd;
#endif
  /* File systems without O_TMPFILE: a named file, unlinked at once. */
  if (asprintf (&tmpl, "%s/.sparsecow-spill-XXXXXX", dir) == -1) {
    tmpl = NULL;
    sc_set_error (errno, "out of memory");
    return -1;
  }
  fd = mkostemp (tmpl, O_CLOEXEC);
  if (fd == -1) {
    sc_set_error (errno, "%s: cannot create a spill file: %s", dir,
                  strerror (errno));
    return -1;
  }
  unlink (tmpl);
  return fd;
}

/* ---- targets ------------------------------------------------------------- */

static struct sc_endpoint *
open_stream_target (int fd, bool own_fd, const char *name, uint64_t size)
{
  struct file_ep *f = new_file_ep (&pipe_target_ops, name, fd, own_fd);

  if (f == NULL)
    return NULL;
  f->zeros = calloc (1, ZERO_CHUNK);
  if (f->zeros == NULL) {
    sc_set_error (errno, "%s: out of memory", name);
    f->own_fd = false;
    file_close (&f->ep);
    return NULL;
  }
  f->ep.size = size;

  {
    struct stat st;
    off_t cur;
    int fl = fcntl (fd, F_GETFL);

    if (fstat (fd, &st) == 0 && S_ISREG (st.st_mode)
        && fl != -1 && !(fl & O_APPEND)
        && (cur = lseek (fd, 0, SEEK_CUR)) != -1 && st.st_size <= cur) {
      f->can_skip = true;
      f->base = (uint64_t) cur;
      /* Everything past the position is past the end of the file. */
      f->ep.flags |= SC_EP_FRESH_ZEROS;
    }
  }
  return &f->ep;
}

static struct sc_endpoint *
open_block_target (const char *path, uint64_t size)
{
  struct file_ep *f;
  uint64_t dev_size;
  int fd = open (path, O_WRONLY | O_CLOEXEC);

  if (fd == -1) {
    sc_set_error (errno, "%s", strerror (errno));
    return NULL;
  }
  if (block_device_size (fd, path, &dev_size) == -1)
    goto err;
  if (dev_size < size) {
    sc_set_error (ENOSPC, "device is smaller than the image (%" PRIu64
                  " < %" PRIu64 ")", dev_size, size);
    goto err;
  }
  f = new_file_ep (&block_target_ops, path, fd, true);
  if (f == NULL)
    goto err;
  f->ep.size = dev_size;
  f->ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE;
  return &f->ep;

 err:
  close (fd);
  return NULL;
}

/* ".NAME.sparsecow-XXXXXX" in the directory of path.  NAME is cut
 * short so that a target name near the file system's limit still
 * leaves room for the decoration.
 */
static char *
temporary_template (const char *path)
{
  CLEANUP_FREE char *d = strdup (path);
  CLEANUP_FREE char *b = strdup (path);
  char *tmpl;

  if (d == NULL || b == NULL)
    return NULL;
  if (asprintf (&tmpl, "%s/.%.200s.sparsecow-XXXXXX", dirname (d),
                basename (b)) == -1)
    return NULL;
  return tmpl;
}

static struct sc_endpoint *
open_file_target (const char *path, uint64_t size, unsigned flags)
{
  struct file_ep *f;
  char *tmpl;
  mode_t mask;
  int fd;

  if (size > (uint64_t) INT64_MAX) {
    sc_set_error (EFBIG, "file system cannot hold a file of %" PRIu64
                  " bytes", size);
    return NULL;
  }
  tmpl = temporary_template (path);
  if (tmpl == NULL) {
    sc_set_error (errno, "out of memory");
    return NULL;
  }
  fd = mkostemp (tmpl, O_CLOEXEC);
  if (fd == -1) {
    sc_set_error (errno, "cannot create a temporary file in its "
                  "directory: %s", strerror (errno));
    free (tmpl);
    return NULL;
  }
  f = new_file_ep (&file_target_ops, path, fd, true);
  if (f == NULL) {
    unlink (tmpl);
    free (tmpl);
    close (fd);
    return NULL;
  }
  f->tmp = tmpl;
  f->reg_slot = register_temporary (tmpl);
  f->path = strdup (path);
  if (f->reg_slot == -1 || f->path == NULL) {
    if (f->path == NULL)
      sc_set_error (errno, "out of memory");
    goto err;
  }
  f->force = flags & SC_TARGET_FORCE;
  f->map = SC_MAP_SEEK;

  /* mkstemp makes the file private; a target is an ordinary file. */
  mask = umask (0);
  umask (mask);
  if (fchmod (fd, 0666 & ~mask) == -1) {
    sc_set_error (errno, "chmod: %s", strerror (errno));
    goto err;
  }

  /* Sizing the file first makes a file system that cannot hold it
   * fail now, before any data is written.
   */
  if (ftruncate (fd, (off_t) size) == -1) {
    struct rlimit rl;

    if (errno == EFBIG && getrlimit (RLIMIT_FSIZE, &rl) == 0
        && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < size)
      sc_set_error (EFBIG, "the file size limit (ulimit -f) is smaller "
                    "than %" PRIu64 " bytes", size);
    else if (errno == EFBIG || errno == EINVAL)
      sc_set_error (EFBIG, "file system cannot hold a file of %" PRIu64
                    " bytes", size);
    else
      sc_set_error (errno, "cannot set the size to %" PRIu64 ": %s",
                    size, strerror (errno));
    goto err;
  }
  f->ep.size = size;
  f->ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE | SC_EP_FRESH_ZEROS;
  return &f->ep;

 err:
  {
    int saved = sc_error_errno ();
    char msg[1024];

    snprintf (msg, sizeof msg, "%s", sc_error_message ());
    file_close (&f->ep);
    sc_set_error (saved, "%s", msg);
  }
  return NULL;
}

struct sc_endpoint *
sc_file_open_target (const char *path, uint64_t size, unsigned flags)
{
  struct stat st;

  if (strcmp (path, "-") == 0)
    return open_stream_target (STDOUT_FILENO, false, "stdout", size);
  if (path[0] == '\0') {
    sc_set_error (ENOENT, "empty file name");
    return NULL;
  }
  /* A symbolic link to a file is written through, as cp and qemu-img
   * would: the new file replaces the one the link points to, and the
   * link stays.  A link to nothing is refused rather than guessed at.
   */
  if (lstat (path, &st) == 0 && S_ISLNK (st.st_mode)) {
    CLEANUP_FREE char *real = realpath (path, NULL);
    struct sc_endpoint *ep;

    if (real == NULL) {
      sc_set_error (errno, "symbolic link to nothing that can be written "
                    "(%s)", strerror (errno));
      return NULL;
    }
    if (stat (real, &st) == 0 && S_ISREG (st.st_mode)) {
      if (!(flags & SC_TARGET_FORCE)) {
        sc_set_error (EEXIST, "target exists (use -f to overwrite)");
        return NULL;
      }
      ep = open_file_target (real, size, flags);
      return ep;
    }
  }

  if (stat (path, &st) == 0) {
    if (S_ISBLK (st.st_mode))
      return open_block_target (path, size);
    if (S_ISCHR (st.st_mode) || S_ISFIFO (st.st_mode)) {
      /* /dev/null, a named pipe: written forward like stdout. */
      int fd = open (path, O_WRONLY | O_CLOEXEC);
      struct sc_endpoint *ep;

      if (fd == -1) {
        sc_set_error (errno, "%s", strerror (errno));
        return NULL;
      }
      ep = open_stream_target (fd, true, path, size);
      if (ep == NULL)
        close (fd);
      return ep;
    }
    if (S_ISDIR (st.st_mode)) {
      sc_set_error (EISDIR, "is a directory");
      return NULL;
    }
    if (!(flags & SC_TARGET_FORCE)) {
      sc_set_error (EEXIST, "target exists (use -f to overwrite)");
      return NULL;
    }
  }
  else if (errno != ENOENT) {
    sc_set_error (errno, "%s", strerror (errno));
    return NULL;
  }
  return open_file_target (path, size, flags);
}

int
sc_file_target_commit (struct sc_endpoint *ep)
{
  struct file_ep *f = (struct file_ep *) ep;

  if (!is_file_endpoint (ep)) {
    sc_set_error (EINVAL, "%s: not a file target", ep->name);
    return -1;
  }
  if (ep->ops->flush (ep) == -1)
    return -1;
  if (f->tmp == NULL || f->committed)
    return 0;

  if (f->force) {
    if (rename (f->tmp, f->path) == -1) {
      sc_set_error (errno, "%s: rename: %s", ep->name, strerror (errno));
      return -1;
    }
  }
  else {
    /* Without -f, never replace a file that appeared meanwhile: link()
     * fails if the name is taken.  File systems without hard links
     * fall back to rename().
     */
    if (link (f->tmp, f->path) == 0)
      unlink (f->tmp);
    else if (errno == EEXIST) {
      sc_set_error (EEXIST, "%s: target exists (use -f to overwrite)",
                    ep->name);
      return -1;
    }
    else if (rename (f->tmp, f->path) == -1) {
      sc_set_error (errno, "%s: rename: %s", ep->name, strerror (errno));
      return -1;
    }
  }
  f->committed = true;
  unregister_temporary (f->reg_slot);
  f->reg_slot = -1;
  return 0;
}
