/* Regular-file endpoints.
 *
 * A source finds its data with SEEK_DATA/SEEK_HOLE or FIEMAP, can tell
 * whether the file changed while it was read, and can hand its bytes
 * to a file target inside the kernel.
 *
 * A target is written under a hidden temporary name in the target's
 * directory and renamed into place only when the caller commits, so an
 * interrupted or failed copy never leaves something at the target path
 * that looks complete.
 */
#include <config.h>

#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/ioctl.h>
#ifdef HAVE_LINUX_FS_H
#include <linux/fs.h>
#endif

#include "internal.h"
#include "endpoint.h"
#include "lock.h"

struct file_ep {
  struct sc_fd_endpoint base;
  enum sc_map_method map;
  /* Targets. */
  char *path;                   /* final path */
  char *tmp;                    /* temporary name, until committed */
  int reg_slot;                 /* index in the registry, or -1 */
  bool anonymous;               /* tmp is a template only: the file has
                                   no name until committed (O_TMPFILE) */
  bool committed;
  bool force;
  bool fixed_size;              /* in place, never resized (-n) */
  bool fit;                     /* in place, cut to what is written */
  /* With force: the file the target replaces, held open with qemu's
   * writer locks until the target is closed, so that qemu cannot open
   * it (and lose what it writes) while the target is made; or -1.
   */
  int replaced_fd;
};

static int
file_fd (struct sc_endpoint *ep)
{
  return ((struct sc_fd_endpoint *) ep)->fd;
}

static int
file_extents (struct sc_endpoint *ep, uint64_t offset, uint64_t count,
              struct sc_extent_list *list)
{
  return sc_fd_extents (file_fd (ep), ((struct file_ep *) ep)->map, offset,
                        count, list);
}

static int
file_pread_nowait (struct sc_endpoint *ep, void *buf, size_t count,
                   uint64_t offset)
{
#ifdef RWF_NOWAIT
  unsigned char *p = buf;

  if (offset > INT64_MAX)
    return 1;
  while (count > 0) {
    struct iovec iov = { p, count };
    ssize_t r = preadv2 (file_fd (ep), &iov, 1, (off_t) offset, RWF_NOWAIT);

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

static int
file_zero (struct sc_endpoint *ep, uint64_t count, uint64_t offset,
           unsigned flags)
{
#if defined (HAVE_FALLOCATE) && defined (FALLOC_FL_PUNCH_HOLE)
  /* A hole reads as zeros and costs no space. */
  if ((flags & SC_ZERO_MAY_UNMAP)
      && fallocate (file_fd (ep), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    (off_t) offset, (off_t) count) == 0)
    return 0;
#endif
  if (flags & SC_ZERO_MUST_UNMAP) {
    sc_set_error (ENOTSUP, "cannot punch a hole at offset %" PRIu64
                  " (%s); use --zero=auto or write", offset,
                  strerror (errno));
    return -1;
  }
#if defined (HAVE_FALLOCATE) && defined (FALLOC_FL_ZERO_RANGE)
  if (!(flags & SC_ZERO_MAY_UNMAP)
      && fallocate (file_fd (ep), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                    (off_t) offset, (off_t) count) == 0)
    return 0;
#endif
  if (flags & SC_ZERO_FAST)
    return sc_ep_unsupported (ep, "fast zeroing");
  return sc_ep_write_zeros (ep, count, offset);
}

/* Share count bytes of src_fd at src_off as the target's bytes at
 * dst_off (a reflink): the file system makes both files point to the
 * same blocks, and nothing is read or written.  It refuses what it
 * cannot do without copying: another file system or mount (EXDEV), a
 * file system without shared blocks or a file that is not a regular
 * one (EOPNOTSUPP, ENOTTY, EINVAL), or offsets and a length that are
 * not multiples of its block size (EINVAL; a short last block only at
 * the end of both files).  Only the first kind tells about every other
 * range too.
 */
static int
file_clone_from_fd (struct sc_endpoint *ep, int src_fd, const char *src_name,
                    uint64_t src_off, uint64_t dst_off, uint64_t count)
{
#ifdef FICLONERANGE
  struct file_clone_range fcr = {
    .src_fd = src_fd,
    .src_offset = src_off,
    .src_length = count,
    .dest_offset = dst_off,
  };

  /* A length of 0 means "to the end of the source" to the ioctl. */
  if (count == 0)
    return 0;
  if (src_off > INT64_MAX || dst_off > INT64_MAX
      || count > (uint64_t) INT64_MAX - SC_MAX (src_off, dst_off))
    return SC_COPY_DECLINED;
  while (ioctl (file_fd (ep), FICLONERANGE, &fcr) == -1) {
    switch (errno) {
    case EINTR:
      continue;
    case EINVAL:
      /* Unaligned here, or a file system that cannot share blocks
       * (a few say so with EINVAL): alignment is per range, so only
       * this one is refused.
       */
      return SC_COPY_DECLINED;
    case EXDEV: case EOPNOTSUPP: case ENOTTY: case ENOSYS:
    case EBADF: case EPERM: case EISDIR: case ETXTBSY:
#if ENOTSUP != EOPNOTSUPP
    case ENOTSUP:
#endif
      return SC_COPY_NEVER;
    default:
      sc_set_error (errno, "%s: clone from %s at offset %" PRIu64 ": %s",
                    ep->name, src_name, src_off, strerror (errno));
      return -1;
    }
  }
  return 0;
#else
  (void) ep; (void) src_fd; (void) src_name; (void) src_off;
  (void) dst_off; (void) count;
  return SC_COPY_NEVER;
#endif
}

static int
file_copy_from_fd (struct sc_endpoint *ep, int src_fd, const char *src_name,
                   uint64_t src_off, uint64_t dst_off, uint64_t count,
                   unsigned flags)
{
  if (flags & SC_COPY_CLONE)
    return file_clone_from_fd (ep, src_fd, src_name, src_off, dst_off,
                               count);
#ifdef HAVE_COPY_FILE_RANGE
  int dst_fd = file_fd (ep);
  bool started = false;

  while (count > 0) {
    loff_t in = (loff_t) src_off, out = (loff_t) dst_off;
    size_t n = (size_t) SC_MIN (count, (uint64_t) 1 << 30);
    ssize_t r = copy_file_range (src_fd, &in, dst_fd, &out, n, 0);

    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1 && !started
        && (errno == ENOSYS || errno == EXDEV || errno == EINVAL
            || errno == EOPNOTSUPP || errno == EBADF || errno == EPERM))
      return SC_COPY_DECLINED;
    if (r == -1) {
      sc_set_error (errno, "%s: copy from %s at offset %" PRIu64 ": %s",
                    ep->name, src_name, src_off, strerror (errno));
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
    (void) sync_file_range (dst_fd, (off_t) dst_off, (off_t) r,
                            SYNC_FILE_RANGE_WRITE);
    src_off += (uint64_t) r;
    dst_off += (uint64_t) r;
    count -= (uint64_t) r;
  }
  return 0;
#else
  (void) ep; (void) src_fd; (void) src_name; (void) src_off;
  (void) dst_off; (void) count;
  return SC_COPY_DECLINED;
#endif
}

/* Buffered writes go to the page cache a folio at a time, and a
 * larger write gets larger folios.  Writing 970 MB to a new file on
 * ext4 (Linux 6.18, in a VM) cost 0.18-0.23 s of system time in
 * writes of 64-256 KiB, but 0.5-0.6 s in writes of 512 KiB, 0.7-1.7 s
 * in writes of 1 MiB and 1.0-1.2 s in writes of 2 MiB, nearly all of it
 * copying into the new folios.  So a file is written at most this much
 * at a time, in pieces aligned to it, whatever the caller hands over.
 */
#define FILE_WRITE_CHUNK (256 * 1024)

static int
file_pwrite (struct sc_endpoint *ep, const void *buf, size_t count,
             uint64_t offset)
{
  const char *p = buf;

  while (count > 0) {
    size_t n = (size_t) SC_MIN ((uint64_t) count,
                                FILE_WRITE_CHUNK - offset % FILE_WRITE_CHUNK);

    if (sc_full_pwrite (file_fd (ep), p, n, offset) == -1)
      return -1;
    p += n;
    count -= n;
    offset += n;
  }
  return 0;
}

/* The page cache holds what was written until the flush, which then
 * waits for all of it: written back as the copy goes, the data reaches
 * the device while the next pieces are still being made.
 */
static void
file_writeback (struct sc_endpoint *ep, uint64_t offset, uint64_t count)
{
#ifdef SYNC_FILE_RANGE_WRITE
  if (offset <= INT64_MAX && count <= INT64_MAX - offset)
    (void) sync_file_range (file_fd (ep), (off_t) offset, (off_t) count,
                            SYNC_FILE_RANGE_WRITE);
#else
  (void) ep; (void) offset; (void) count;
#endif
}

/* Give an anonymous file a name: its temporary one, made unique from
 * the template.  Through /proc, linkat needs no privilege (with
 * AT_EMPTY_PATH it needs CAP_DAC_READ_SEARCH).
 */
static int
link_anonymous (int fd, const char *name)
{
  char proc[64];

  snprintf (proc, sizeof proc, "/proc/self/fd/%d", fd);
  if (linkat (AT_FDCWD, proc, AT_FDCWD, name, AT_SYMLINK_FOLLOW) == 0)
    return 0;
  if (errno == ENOENT || errno == ENOTDIR)
    return linkat (fd, "", AT_FDCWD, name, AT_EMPTY_PATH);
  return -1;
}

/* An anonymous target appears under its name, or, to replace a file,
 * under a temporary name first (linkat never replaces): that name
 * exists only between two system calls.
 */
static int
commit_anonymous (struct file_ep *f)
{
  struct sc_endpoint *ep = &f->base.ep;
  int fd = f->base.fd;

  if (!f->force) {
    if (link_anonymous (fd, f->path) == 0)
      return 0;
    if (errno == EEXIST)
      sc_set_error (EEXIST, "%s: target exists (use -f to overwrite)",
                    ep->name);
    else
      sc_set_error (errno, "%s: link: %s", ep->name, strerror (errno));
    return -1;
  }
  for (int tries = 0; ; tries++) {
    /* The template ends in XXXXXX.  A name that is taken is no danger:
     * linkat fails rather than follow or replace anything there.
     */
    static const char digits[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char rnd[6];
    char *x = f->tmp + strlen (f->tmp) - sizeof rnd;

    if (getrandom (rnd, sizeof rnd, 0) != (ssize_t) sizeof rnd) {
      sc_set_error (errno, "%s: getrandom: %s", ep->name, strerror (errno));
      return -1;
    }
    for (size_t i = 0; i < sizeof rnd; i++)
      x[i] = digits[rnd[i] % (sizeof digits - 1)];
    if (link_anonymous (fd, f->tmp) == 0)
      break;
    if (errno != EEXIST || tries == 100) {
      sc_set_error (errno, "%s: link: %s", ep->name, strerror (errno));
      return -1;
    }
  }
  f->reg_slot = sc_temporary_register (f->tmp);
  if (rename (f->tmp, f->path) == -1) {
    sc_set_error (errno, "%s: rename: %s", ep->name, strerror (errno));
    sc_temporary_unregister (f->reg_slot);
    f->reg_slot = -1;
    unlink (f->tmp);
    return -1;
  }
  return 0;
}

static int
file_commit (struct sc_endpoint *ep)
{
  struct file_ep *f = (struct file_ep *) ep;

  if (sc_fd_ep_flush (ep) == -1)
    return -1;
  if (f->tmp == NULL || f->committed)
    return 0;
  if (f->anonymous) {
    if (commit_anonymous (f) == -1)
      return -1;
    f->committed = true;
    sc_temporary_unregister (f->reg_slot);
    f->reg_slot = -1;
    return 0;
  }

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
  sc_temporary_unregister (f->reg_slot);
  f->reg_slot = -1;
  return 0;
}

static int
file_close (struct sc_endpoint *ep)
{
  struct file_ep *f = (struct file_ep *) ep;

  if (f->tmp && !f->committed && !f->anonymous) {
    sc_temporary_unregister (f->reg_slot);
    unlink (f->tmp);
  }
  if (f->replaced_fd >= 0)
    close (f->replaced_fd);
  free (f->tmp);
  free (f->path);
  return sc_fd_ep_close (ep);
}

static int set_size (int fd, uint64_t size);

/* A new file (under its temporary name) takes the size it is given; an
 * existing one written in place only grows.
 */
static int
file_set_size (struct sc_endpoint *ep, uint64_t size)
{
  struct file_ep *f = (struct file_ep *) ep;

  if (size == ep->size || (f->tmp == NULL && size < ep->size))
    return 0;
  if (f->fixed_size) {
    sc_set_error (ENOSPC, "file is smaller than the image (%" PRIu64
                  " < %" PRIu64 "); written in place, it is not resized",
                  ep->size, size);
    return -1;
  }
  if (set_size (f->base.fd, size) == -1)
    return -1;
  ep->size = size;
  return 0;
}

/* An image written over a longer file ends where the image ends: the
 * old bytes past it are no part of it.
 */
static int
file_cut (struct sc_endpoint *ep, uint64_t size)
{
  struct file_ep *f = (struct file_ep *) ep;

  if (!f->fit || size >= ep->size)
    return 0;
  if (sc_ep_note_write (ep, ftruncate (f->base.fd, (off_t) size)) == -1) {
    sc_set_error (errno, "%s: cannot cut to %" PRIu64 " bytes: %s",
                  ep->name, size, strerror (errno));
    return -1;
  }
  ep->size = size;
  return 0;
}

static const struct sc_endpoint_ops file_source_ops = {
  .kind = "file",
  .pread = sc_fd_ep_pread,
  .pread_nowait = file_pread_nowait,
  .extents = file_extents,
  .fingerprint = sc_fd_ep_fingerprint,
  .local_fd = sc_fd_ep_local_fd,
  .close = file_close,
};

static const struct sc_endpoint_ops file_target_ops = {
  .kind = "file",
  .pread = sc_fd_ep_pread,
  .extents = file_extents,
  .pwrite = file_pwrite,
  .zero = file_zero,
  .local_fd = sc_fd_ep_local_fd,
  .copy_from_fd = file_copy_from_fd,
  .set_size = file_set_size,
  .cut = file_cut,
  .writeback = file_writeback,
  .flush = sc_fd_ep_flush,
  .commit = file_commit,
  .close = file_close,
};

static struct file_ep *
new_file_ep (const struct sc_endpoint_ops *ops, const char *name, int fd,
             bool own_fd)
{
  struct file_ep *f = sc_ep_new (sizeof *f, ops, name);

  if (f == NULL)
    return NULL;
  f->base.fd = fd;
  f->base.own_fd = own_fd;
  f->reg_slot = -1;
  f->replaced_fd = -1;
  return f;
}

struct sc_endpoint *
sc_file_source_new (int fd, bool own_fd, const char *name,
                    const struct stat *st, enum sc_map_method map)
{
  struct file_ep *f = new_file_ep (&file_source_ops, name, fd, own_fd);

  if (f == NULL)
    return NULL;
  f->base.ep.size = (uint64_t) st->st_size;
  if (st->st_blksize > 0 && (st->st_blksize & (st->st_blksize - 1)) == 0)
    f->base.ep.block_size = (uint32_t) st->st_blksize;
  f->base.ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE;
  f->map = map;
  return &f->base.ep;
}

/* Set the size of a new or existing target file, with the reason in
 * the error when the file system or a limit cannot hold it.
 */
static int
set_size (int fd, uint64_t size)
{
  struct rlimit rl;

  if (size > (uint64_t) INT64_MAX) {
    sc_set_error (EFBIG, "file system cannot hold a file of %" PRIu64
                  " bytes", size);
    return -1;
  }
  if (ftruncate (fd, (off_t) size) == 0)
    return 0;
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
  return -1;
}

struct sc_endpoint *
sc_file_target_in_place (int fd, bool own_fd, const char *name,
                         uint64_t size, enum sc_in_place_size how)
{
  bool fixed_size = how == SC_IN_PLACE_FIXED;
  struct file_ep *f;
  struct stat st;
  int fl = fcntl (fd, F_GETFL);

  if (fl == -1 || fstat (fd, &st) == -1) {
    sc_set_error (errno, "fstat: %s", strerror (errno));
    return NULL;
  }
  /* pwrite on a descriptor opened for appending writes at the end,
   * whatever the offset: the data would land in the wrong place.
   */
  if ((fl & O_ACCMODE) == O_RDONLY) {
    sc_set_error (EBADF, "not open for writing");
    return NULL;
  }
  if (fl & O_APPEND) {
    sc_set_error (EINVAL, "opened for appending; writes must go to "
                  "their offsets");
    return NULL;
  }
  /* Growing an empty file first makes a file system that cannot hold
   * it fail now; a longer file keeps its tail, as qemu-img convert -n
   * leaves it.
   */
  if ((uint64_t) st.st_size < size && fixed_size) {
    sc_set_error (ENOSPC, "file is smaller than the image (%" PRIu64
                  " < %" PRIu64 "); written in place, it is not resized",
                  (uint64_t) st.st_size, size);
    return NULL;
  }
  if ((uint64_t) st.st_size < size && set_size (fd, size) == -1)
    return NULL;
  f = new_file_ep (&file_target_ops, name, fd, own_fd);
  if (f == NULL)
    return NULL;
  f->map = SC_MAP_SEEK;
  f->fixed_size = fixed_size;
  f->fit = how == SC_IN_PLACE_FIT;
  f->base.ep.size = SC_MAX ((uint64_t) st.st_size, size);
  f->base.ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE
                     | SC_EP_HOLES_READ_ZERO;
  if (how != SC_IN_PLACE_GROW)
    f->base.ep.flags |= SC_EP_IN_PLACE;
  /* An existing file written in place under its name is never taken
   * for zeros, even empty: what is written over it is in the open, and
   * an image there keeps its magic to the end (pack.c, magic_last).
   */
  else if (st.st_size == 0)
    f->base.ep.flags |= SC_EP_FRESH_ZEROS;
  return &f->base.ep;
}


struct sc_endpoint *
sc_file_target_new (const char *path, uint64_t size, unsigned flags)
{
  struct file_ep *f;
  struct stat old;
  char *tmpl;
  mode_t mask;
  bool anonymous;
  int fd;

  if (size > (uint64_t) INT64_MAX) {
    sc_set_error (EFBIG, "file system cannot hold a file of %" PRIu64
                  " bytes", size);
    return NULL;
  }
  tmpl = sc_temporary_template (path);
  if (tmpl == NULL) {
    sc_set_error (errno, "out of memory");
    return NULL;
  }
  /* Where the file system can, the target has no name until it is
   * complete, so that not even SIGKILL leaves anything behind; else it
   * has a temporary name that a signal handler removes.
   */
  fd = -1;
#ifdef O_TMPFILE
  {
    CLEANUP_FREE char *dir = strdup (path);

    if (dir == NULL) {
      sc_set_error (errno, "out of memory");
      free (tmpl);
      return NULL;
    }
    fd = open (dirname (dir), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  }
#endif
  anonymous = fd >= 0;
  if (!anonymous)
    fd = mkostemp (tmpl, O_CLOEXEC);
  if (fd == -1) {
    sc_set_error (errno, "cannot create a temporary file in its "
                  "directory: %s", strerror (errno));
    free (tmpl);
    return NULL;
  }
  f = new_file_ep (&file_target_ops, path, fd, true);
  if (f == NULL) {
    if (!anonymous)
      unlink (tmpl);
    free (tmpl);
    close (fd);
    return NULL;
  }
  f->tmp = tmpl;
  f->anonymous = anonymous;
  f->reg_slot = anonymous ? -1 : sc_temporary_register (tmpl);
  f->path = strdup (path);
  if ((!anonymous && f->reg_slot == -1) || f->path == NULL) {
    if (f->path == NULL)
      sc_set_error (errno, "out of memory");
    goto err;
  }
  f->force = flags & SC_TARGET_FORCE;
  f->map = SC_MAP_SEEK;

  /* mkstemp makes the file private; a target is an ordinary file, or
   * takes the place of the file it replaces with that file's owner,
   * group and permissions, as if it had been written over (qemu-img
   * keeps the inode).  An owner this process may not give is left as
   * it is, and then the set-user and set-group bits are not carried
   * over (as cp -p does).
   */
  if ((flags & SC_TARGET_FORCE) && stat (path, &old) == 0
      && S_ISREG (old.st_mode)) {
    mode_t keep = old.st_mode & 07777;

    f->replaced_fd = open (path, O_RDONLY | O_CLOEXEC);
    if (f->replaced_fd >= 0 && sc_lock_hold_write (f->replaced_fd) == -1)
      goto err;

    if (fchown (fd, old.st_uid, old.st_gid) == -1) {
      keep &= ~(mode_t) (S_ISUID | S_ISGID);
      (void) fchown (fd, (uid_t) -1, old.st_gid);
    }
    if (fchmod (fd, keep) == -1) {
      sc_set_error (errno, "chmod: %s", strerror (errno));
      goto err;
    }
  }
  else {
    mask = umask (0);
    umask (mask);
    if (fchmod (fd, 0666 & ~mask) == -1) {
      sc_set_error (errno, "chmod: %s", strerror (errno));
      goto err;
    }
  }

  /* Sizing the file first makes a file system that cannot hold it
   * fail now, before any data is written.
   */
  if (set_size (fd, size) == -1)
    goto err;
  f->base.ep.size = size;
  f->base.ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE | SC_EP_FRESH_ZEROS
                     | SC_EP_HOLES_READ_ZERO;
  return &f->base.ep;

 err:
  sc_ep_abandon (&f->base.ep);
  return NULL;
}
