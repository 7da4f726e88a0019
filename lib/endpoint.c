/* Endpoints: the wrappers that give every optional slot its default,
 * and the openers that pick the kind of endpoint from a name.
 */
#include <config.h>

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#ifdef HAVE_LINUX_FS_H
#include <linux/fs.h>
#endif

#include "internal.h"
#include "endpoint.h"
#include "lock.h"

/* Zeros are written in chunks of this size where a range cannot be
 * punched or zeroed by the kernel.
 */
#define ZERO_CHUNK (256 * 1024)

/* ---- construction ----------------------------------------------------- */

void *
sc_ep_new (size_t struct_size, const struct sc_endpoint_ops *ops,
           const char *name)
{
  struct sc_endpoint *ep = calloc (1, struct_size);

  if (ep == NULL || (ep->name = strdup (name)) == NULL) {
    sc_set_error (errno, "%s: out of memory", name);
    free (ep);
    return NULL;
  }
  ep->ops = ops;
  ep->block_size = 4096;
  return ep;
}

void
sc_ep_free (struct sc_endpoint *ep)
{
  free (ep->name);
  free (ep);
}

/* ---- the wrappers ------------------------------------------------------ */

int
sc_ep_unsupported (const struct sc_endpoint *ep, const char *what)
{
  sc_set_error (ENOTSUP, "%s is not supported by this %s endpoint", what,
                ep->ops->kind);
  return -1;
}

int
sc_ep_read_some (struct sc_endpoint *ep, void *buf, size_t count,
                 uint64_t offset, size_t *got)
{
  if (ep->ops->read_some)
    return ep->ops->read_some (ep, buf, count, offset, got);
  /* A seekable source reads what there is up to its size. */
  if (offset >= ep->size)
    count = 0;
  else
    count = (size_t) SC_MIN ((uint64_t) count, ep->size - offset);
  if (count > 0 && sc_ep_pread (ep, buf, count, offset) == -1)
    return -1;
  *got = count;
  return 0;
}

int
sc_ep_pread_nowait (struct sc_endpoint *ep, void *buf, size_t count,
                    uint64_t offset)
{
  if (ep->ops->pread_nowait == NULL)
    return 1;
  return ep->ops->pread_nowait (ep, buf, count, offset);
}

int
sc_ep_extents (struct sc_endpoint *ep, uint64_t offset, uint64_t count,
               struct sc_extent_list *list)
{
  if (ep->ops->extents)
    return ep->ops->extents (ep, offset, count, list);
  return count == 0 ? 0 : sc_extent_list_append (list, offset, count, 0);
}

int
sc_ep_extents_step (struct sc_endpoint *ep, uint64_t offset, uint64_t count,
                    struct sc_extent_list *list, uint64_t *end)
{
  struct sc_extent_list answer;
  uint64_t stop = offset + count, pos = offset;
  int r = -1;

  sc_extent_list_init (&answer);
  if (sc_ep_extents (ep, offset, count, &answer) == -1)
    goto out;
  for (size_t k = 0; k < answer.len && pos < stop; k++) {
    const struct sc_extent *e = &answer.ext[k];
    uint64_t e_end;

    if (e->offset != pos || e->length == 0
        || SC_ADD_OVERFLOW (e->offset, e->length, &e_end)) {
      sc_set_error (EIO, "extent %" PRIu64 "+%" PRIu64 " is not where "
                    "the extents asked for at offset %" PRIu64 " go on",
                    e->offset, e->length, pos);
      goto out;
    }
    e_end = SC_MIN (e_end, stop);
    if (sc_extent_list_append (list, pos, e_end - pos, e->flags) == -1)
      goto out;
    pos = e_end;
  }
  if (pos == offset && count > 0) {
    sc_set_error (EIO, "no extents for offset %" PRIu64, offset);
    goto out;
  }
  *end = pos;
  r = 0;
 out:
  sc_extent_list_free (&answer);
  return r;
}

int
sc_ep_extents_all (struct sc_endpoint *ep, uint64_t offset, uint64_t count,
                   struct sc_extent_list *list)
{
  uint64_t stop = offset + count, pos = offset;

  while (pos < stop)
    if (sc_ep_extents_step (ep, pos, stop - pos, list, &pos) == -1)
      return -1;
  return 0;
}

bool
sc_ep_can_pread_nowait (const struct sc_endpoint *ep)
{
  return ep->ops->pread_nowait != NULL;
}

int
sc_ep_fingerprint (struct sc_endpoint *ep, struct sc_fingerprint *fp)
{
  if (ep->ops->fingerprint == NULL)
    return 1;
  return ep->ops->fingerprint (ep, fp);
}

bool
sc_ep_fingerprint_equal (const struct sc_fingerprint *a,
                         const struct sc_fingerprint *b)
{
  return a->dev == b->dev && a->ino == b->ino && a->size == b->size
    && a->mtime_sec == b->mtime_sec && a->mtime_nsec == b->mtime_nsec
    && a->ctime_sec == b->ctime_sec && a->ctime_nsec == b->ctime_nsec;
}

int
sc_ep_write_zeros (struct sc_endpoint *ep, uint64_t count, uint64_t offset)
{
  CLEANUP_FREE void *zeros = NULL;

  if (count == 0)
    return 0;
  zeros = calloc (1, ZERO_CHUNK);
  if (zeros == NULL) {
    sc_set_error (errno, "out of memory");
    return -1;
  }
  while (count > 0) {
    size_t n = (size_t) SC_MIN (count, (uint64_t) ZERO_CHUNK);
    if (sc_ep_pwrite (ep, zeros, n, offset) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

int
sc_ep_zero (struct sc_endpoint *ep, uint64_t count, uint64_t offset,
            unsigned flags)
{
  if (ep->ops->zero)
    return sc_ep_note_write (ep, ep->ops->zero (ep, count, offset, flags));
  if (flags & SC_ZERO_FAST)
    return sc_ep_unsupported (ep, "fast zeroing");
  return sc_ep_write_zeros (ep, count, offset);
}

int
sc_ep_copy_fd_range (int src_fd, const char *src_name, uint64_t src_off,
                     struct sc_endpoint *dst, uint64_t dst_off,
                     uint64_t count, unsigned flags)
{
  if (src_fd < 0 || dst->ops->copy_from_fd == NULL)
    return (flags & SC_COPY_CLONE) ? SC_COPY_NEVER : SC_COPY_DECLINED;
  return sc_ep_note_write (dst,
                           dst->ops->copy_from_fd (dst, src_fd, src_name,
                                                   src_off, dst_off, count,
                                                   flags));
}

int
sc_ep_local_fd (struct sc_endpoint *ep)
{
  return ep->ops->local_fd ? ep->ops->local_fd (ep) : -1;
}

int
sc_ep_copy_range (struct sc_endpoint *src, uint64_t src_off,
                  struct sc_endpoint *dst, uint64_t dst_off, uint64_t count,
                  unsigned flags)
{
  if (src->ops->copy_to)
    return sc_ep_note_write (dst, src->ops->copy_to (src, src_off, dst,
                                                     dst_off, count, flags));
  return sc_ep_copy_fd_range (sc_ep_local_fd (src), src->name, src_off, dst,
                              dst_off, count, flags);
}

int
sc_ep_set_size (struct sc_endpoint *ep, uint64_t size)
{
  if (ep->ops->set_size)
    return ep->ops->set_size (ep, size);
  if (size > ep->size) {
    sc_set_error (ENOSPC, "too small for the data (%" PRIu64 " < %" PRIu64
                  " bytes)", ep->size, size);
    return -1;
  }
  return 0;
}

int
sc_ep_cut (struct sc_endpoint *ep, uint64_t size)
{
  return ep->ops->cut ? ep->ops->cut (ep, size) : 0;
}

int
sc_ep_flush (struct sc_endpoint *ep)
{
  return ep->ops->flush ? ep->ops->flush (ep) : 0;
}

int
sc_ep_commit (struct sc_endpoint *ep)
{
  return ep->ops->commit ? ep->ops->commit (ep) : sc_ep_flush (ep);
}

int
sc_ep_close (struct sc_endpoint *ep)
{
  char *file_path;
  int r;

  if (ep == NULL)
    return 0;
  /* The backend frees ep itself. */
  file_path = ep->file_path;
  r = ep->ops->close (ep);
  free (file_path);
  return r;
}

void
sc_ep_abandon (struct sc_endpoint *ep)
{
  struct sc_error_saved saved;

  sc_error_save (&saved);
  sc_ep_close (ep);
  sc_error_restore (&saved);
}

/* ---- the public face --------------------------------------------------- */

uint64_t
sc_endpoint_size (const struct sc_endpoint *ep)
{
  return ep->size;
}

const char *
sc_endpoint_name (const struct sc_endpoint *ep)
{
  return ep->name;
}

const char *
sc_endpoint_file_path (const struct sc_endpoint *ep)
{
  return ep->file_path;
}

bool
sc_endpoint_is_stream (const struct sc_endpoint *ep)
{
  return (ep->flags & SC_EP_STREAM) != 0;
}

int
sc_endpoint_extents (struct sc_endpoint *ep, uint64_t offset, uint64_t count,
                     struct sc_extent_list *list)
{
  if (ep->flags & SC_EP_STREAM) {
    sc_set_error (ESPIPE, "%s: the extents of a stream are not known",
                  ep->name);
    return -1;
  }
  if (SC_ADD_OVERFLOW (offset, count, &(uint64_t) { 0 })) {
    sc_set_error (EINVAL, "extents asked past the largest offset");
    return -1;
  }
  return sc_ep_extents_all (ep, offset, count, list);
}

int
sc_endpoint_pread (struct sc_endpoint *ep, void *buf, size_t count,
                   uint64_t offset)
{
  uint64_t end;

  if (ep->flags & SC_EP_STREAM) {
    sc_set_error (ESPIPE, "a stream cannot be read at offsets");
    return -1;
  }
  if (SC_ADD_OVERFLOW (offset, (uint64_t) count, &end) || end > ep->size) {
    sc_set_error (EIO, "read of %zu bytes at offset %" PRIu64 " runs past "
                  "the end (%" PRIu64 " bytes)", count, offset, ep->size);
    return -1;
  }
  return sc_ep_pread (ep, buf, count, offset);
}

bool
sc_endpoint_written (const struct sc_endpoint *ep)
{
  return ep && __atomic_load_n (&ep->written, __ATOMIC_RELAXED);
}

int
sc_endpoint_commit (struct sc_endpoint *ep)
{
  return sc_ep_commit (ep);
}

int
sc_endpoint_close (struct sc_endpoint *ep)
{
  return sc_ep_close (ep);
}

/* ---- openers ---------------------------------------------------------- */

static struct sc_endpoint *
source_from_fd (int fd, bool own_fd, const char *name,
                enum sc_map_method map)
{
  struct stat st;

  if (fstat (fd, &st) == -1) {
    sc_set_error (errno, "fstat: %s", strerror (errno));
    return NULL;
  }
  if (S_ISREG (st.st_mode))
    return sc_file_source_new (fd, own_fd, name, &st, map);
  if (S_ISBLK (st.st_mode))
    return sc_block_source_new (fd, own_fd, name);
  if (S_ISFIFO (st.st_mode) || S_ISCHR (st.st_mode) || S_ISSOCK (st.st_mode))
    return sc_pipe_source_new (fd, own_fd, name);
  sc_set_error (EINVAL, "not a regular file, block device or pipe");
  return NULL;
}

/* Which file standard input is redirected from, as a path that names
 * that very file now (the link in /proc, checked against the open
 * file), so that names stored in an image on standard input can be
 * found relative to its directory as qemu finds them.  A pipe, a
 * deleted or renamed file, or no /proc: not known.
 */
static void
find_stdin_file (struct sc_endpoint *ep)
{
  char buf[PATH_MAX];
  struct stat in, named;
  ssize_t n;

  ep->file_path_unknown = true;
  n = readlink ("/proc/self/fd/0", buf, sizeof buf - 1);
  if (n <= 0 || buf[0] != '/' || fstat (STDIN_FILENO, &in) == -1
      || !(S_ISREG (in.st_mode) || S_ISBLK (in.st_mode)))
    return;
  buf[n] = '\0';
  if (stat (buf, &named) == -1 || named.st_dev != in.st_dev
      || named.st_ino != in.st_ino || named.st_mode != in.st_mode)
    return;
  ep->file_path = strdup (buf);
  ep->file_path_unknown = ep->file_path == NULL;
}

struct sc_endpoint *
sc_endpoint_open_source (const char *path, enum sc_map_method map)
{
  struct sc_endpoint *ep;
  int fd;

  if (strcmp (path, "-") == 0) {
    ep = source_from_fd (STDIN_FILENO, false, "stdin", map);
    if (ep)
      find_stdin_file (ep);
    return ep;
  }
  if (sc_is_nbd_uri (path))
    return sc_endpoint_open_nbd (path, NULL, 0, NULL);
  fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    sc_set_error (errno, "%s", strerror (errno));
    return NULL;
  }
  ep = source_from_fd (fd, true, path, map);
  if (ep == NULL)
    close (fd);
  return ep;
}

struct sc_endpoint *
sc_endpoint_open_fd_source (int fd, const char *name, enum sc_map_method map)
{
  return source_from_fd (fd, false, name, map);
}

static struct sc_endpoint *
target_from_fd (int fd, bool own_fd, const char *name, uint64_t size)
{
  struct stat st;

  if (fstat (fd, &st) == -1) {
    sc_set_error (errno, "fstat: %s", strerror (errno));
    return NULL;
  }
  if (S_ISREG (st.st_mode))
    return sc_file_target_in_place (fd, own_fd, name, size,
                                    SC_IN_PLACE_GROW);
  if (S_ISBLK (st.st_mode))
    return sc_block_target_new (fd, own_fd, name, size);
  if (S_ISFIFO (st.st_mode) || S_ISCHR (st.st_mode) || S_ISSOCK (st.st_mode))
    return sc_pipe_target_new (fd, own_fd, name, size);
  sc_set_error (EINVAL, "not a regular file, block device or pipe");
  return NULL;
}

struct sc_endpoint *
sc_endpoint_open_fd_target (int fd, const char *name, uint64_t size)
{
  return target_from_fd (fd, false, name, size);
}

static struct sc_endpoint *open_target (const char *path, uint64_t size,
                                        unsigned flags);

/* A target named in /dev that is not there. */
static void
no_such_device (void)
{
  sc_set_error (ENOENT, "no such device (nothing of that name in /dev, "
                "and no file is created there)");
}

/* A new file at path, written under a temporary name: refused while
 * another process (qemu) uses the file it replaces, and holding qemu's
 * writer locks until it is closed, so that qemu does not open it half
 * written.
 */
static struct sc_endpoint *
new_file_target (const char *path, uint64_t size, unsigned flags)
{
  struct sc_endpoint *ep;
  struct stat st;

  /* /dev/sdz when there is no sdz: a typing error or a card not yet
   * plugged in, not a wish for a file of gigabytes in memory.
   */
  if (sc_path_in_device_dir (path)) {
    if (lstat (path, &st) == 0)
      sc_set_error (ENOTBLK, "is a regular file in /dev, not a device "
                    "(not replaced)");
    else
      no_such_device ();
    return NULL;
  }
  if (sc_lock_check_replace (path) == -1)
    return NULL;
  ep = sc_file_target_new (path, size, flags);
  if (ep && sc_lock_hold_write (sc_ep_local_fd (ep)) == -1) {
    sc_ep_close (ep);
    return NULL;
  }
  return ep;
}

struct sc_endpoint *
sc_endpoint_open_target (const char *path, uint64_t size, unsigned flags)
{
  unsigned zero_mode = flags & SC_TARGET_ZERO_MASK;
  struct sc_endpoint *ep;

  if (zero_mode & (zero_mode - 1)) {
    sc_set_error (EINVAL, "more than one way of zeroing asked for");
    return NULL;
  }
  ep = open_target (path, size, flags);
  /* Only a target written at offsets can leave ranges unwritten. */
  if (ep && (flags & SC_TARGET_ZEROED) && (ep->flags & SC_EP_SEEKABLE))
    ep->flags |= SC_EP_FRESH_ZEROS;
  if (ep)
    ep->zero_mode = zero_mode;
  if (ep && zero_mode == SC_TARGET_ZERO_UNMAP
      && sc_block_check_unmap (ep) == -1) {
    sc_ep_abandon (ep);
    return NULL;
  }
  return ep;
}

/* Open an existing block device for writing, exclusively, so that
 * Linux refuses one that is mounted or held (by LVM, RAID,
 * device-mapper, a swap area, or a program that holds it so): the
 * error then names what holds it, where that can be found.  Returns
 * the descriptor, or -1 with the error set.
 */
static int
open_device (const char *path, const struct stat *st)
{
  /* Read too: --verify reads back what was written. */
  int fd = open (path, O_RDWR | O_CLOEXEC | O_EXCL);

  if (fd == -1 && errno == EBUSY) {
    char holders[1024];

    sc_block_describe_holders (st->st_rdev, holders, sizeof holders);
    if (holders[0])
      sc_set_error (EBUSY, "device is in use: %s; unmount or release it "
                    "first", holders + 2);
    else
      sc_set_error (EBUSY, "device is in use (held by another device or "
                    "program that cannot be named from here); release "
                    "it first");
    return -1;
  }
  if (fd == -1) {
    sc_set_error (errno, "%s", strerror (errno));
    return -1;
  }
#ifdef BLKROGET
  /* Linux opens a read-only device (losetup -r, a write-protected
   * card) for writing and fails the first write: refuse it here,
   * before anything is read or decoded for it.
   */
  {
    int ro = 0;

    if (ioctl (fd, BLKROGET, &ro) == 0 && ro) {
      close (fd);
      sc_set_error (EROFS, "device is read-only");
      return -1;
    }
  }
#endif
  return fd;
}

/* For SC_TARGET_DEVICE and a target that is something else. */
static void
not_a_device (void)
{
  sc_set_error (ENOTBLK, "not a block device");
}

/* Is the regular file st an active swap file (listed in /proc/swaps)?
 * The kernel refuses every write into one (ETXTBSY), but only once the
 * run has read its source; a swap device is refused by its exclusive
 * open.  Names there escape blanks and backslashes as octal (\040).
 */
static bool
is_swap_file (const struct stat *st)
{
  FILE *fp = fopen ("/proc/swaps", "re");
  char line[4096];
  bool r = false;

  if (fp == NULL)
    return false;
  while (!r && fgets (line, sizeof line, fp)) {
    char field[PATH_MAX], path[PATH_MAX];
    size_t i = 0, j = 0;
    struct stat s;

    if (sscanf (line, "%4095s", field) != 1 || field[0] != '/')
      continue;
    while (field[i] && j < sizeof path - 1) {
      if (field[i] == '\\' && field[i + 1] >= '0' && field[i + 1] <= '3'
          && field[i + 2] >= '0' && field[i + 2] <= '7'
          && field[i + 3] >= '0' && field[i + 3] <= '7') {
        path[j++] = (char) ((field[i + 1] - '0') * 64
                            + (field[i + 2] - '0') * 8 + (field[i + 3] - '0'));
        i += 4;
      }
      else
        path[j++] = field[i++];
    }
    path[j] = '\0';
    r = stat (path, &s) == 0 && S_ISREG (s.st_mode)
        && s.st_dev == st->st_dev && s.st_ino == st->st_ino;
  }
  fclose (fp);
  return r;
}

/* With SC_TARGET_IN_PLACE: the existing file or device at path,
 * written where it is; a file is never resized, or with SC_TARGET_FIT
 * takes the length of what is written.
 */
static struct sc_endpoint *
open_in_place (const char *path, uint64_t size, unsigned flags)
{
  struct sc_endpoint *ep = NULL;
  struct stat st;
  int fd;

  if (stat (path, &st) == -1) {
    if (errno == ENOENT)
      sc_set_error (ENOENT, "does not exist (writing in place needs an "
                    "existing file or device)");
    else
      sc_set_error (errno, "%s", strerror (errno));
    return NULL;
  }
  if (S_ISBLK (st.st_mode)) {
    if (!(flags & (SC_TARGET_FORCE | SC_TARGET_DEVICE))) {
      sc_set_error (EEXIST, "is a block device (use -f or "
                    "--target-is-device to write to it)");
      return NULL;
    }
    fd = open_device (path, &st);
  }
  else if (S_ISREG (st.st_mode))
    fd = open (path, O_RDWR | O_CLOEXEC);
  else {
    sc_set_error (EINVAL, "writing in place needs a regular file or a "
                  "block device");
    return NULL;
  }
  if (fd == -1) {
    if (!S_ISBLK (st.st_mode))
      sc_set_error (errno, "%s", strerror (errno));
    return NULL;
  }
  /* The name may have been replaced since stat: judge what is open. */
  if (fstat (fd, &st) == -1)
    sc_set_error (errno, "fstat: %s", strerror (errno));
  else if ((flags & SC_TARGET_DEVICE) && !S_ISBLK (st.st_mode))
    not_a_device ();
  else if (S_ISREG (st.st_mode) && is_swap_file (&st))
    sc_set_error (ETXTBSY, "is an active swap file; swapoff it first");
  else if (S_ISREG (st.st_mode)) {
    /* Not a file qemu uses, and held as qemu holds what it writes. */
    if (sc_lock_hold_write (fd) == 0)
      ep = sc_file_target_in_place (fd, true, path, size,
                                    (flags & SC_TARGET_FIT)
                                    ? SC_IN_PLACE_FIT : SC_IN_PLACE_FIXED);
  }
  else if (S_ISBLK (st.st_mode))
    ep = sc_block_target_new (fd, true, path, size);
  else
    sc_set_error (EINVAL, "writing in place needs a regular file or a "
                  "block device");
  if (ep == NULL)
    close (fd);
  return ep;
}

static struct sc_endpoint *
open_target (const char *path, uint64_t size, unsigned flags)
{
  struct sc_endpoint *ep;
  struct stat st;
  int fd;

  /* A target said to be a device is one: a name that does not exist,
   * a file, a pipe or an export is refused rather than created or
   * written.
   */
  if (flags & SC_TARGET_DEVICE) {
    bool named = strcmp (path, "-") != 0 && !sc_is_nbd_uri (path);
    bool exists = named && stat (path, &st) == 0;

    if (named && !exists && errno != ENOENT) {
      sc_set_error (errno, "%s", strerror (errno));
      return NULL;
    }
    if (named && !exists && sc_path_in_device_dir (path)) {
      no_such_device ();
      return NULL;
    }
    if (!exists || !S_ISBLK (st.st_mode)) {
      not_a_device ();
      return NULL;
    }
  }
  /* Standard output is written forward, whatever is behind it; a file
   * behind it is held as a named file target is, so that qemu does not
   * open it half written.
   */
  if (strcmp (path, "-") == 0) {
    ep = sc_pipe_target_new (STDOUT_FILENO, false, "stdout", size);
    if (ep && sc_pipe_target_lock (ep) == -1) {
      sc_ep_abandon (ep);
      return NULL;
    }
    return ep;
  }
  if (path[0] == '\0') {
    sc_set_error (ENOENT, "empty file name");
    return NULL;
  }
  /* A name that ends in '/' can only be a directory's: creating it
   * fails with EISDIR, as qemu-img convert says.  Refused here, before
   * anything is written, and not after the work when the temporary
   * file next to it is linked or renamed to it.
   */
  if (path[strlen (path) - 1] == '/' && !sc_is_nbd_uri (path)) {
    sc_set_error (EISDIR, "is a directory (a file name cannot end in "
                  "'/')");
    return NULL;
  }
  if (flags & SC_TARGET_IN_PLACE)
    return open_in_place (path, size, flags);
  if (sc_is_nbd_uri (path)) {
    ep = sc_endpoint_open_nbd (path, NULL,
                               SC_NBD_WRITE | (flags & SC_TARGET_ZEROED),
                               NULL);
    if (ep && sc_ep_set_size (ep, size) == -1) {
      sc_ep_close (ep);
      return NULL;
    }
    return ep;
  }
  /* A symbolic link to a file is written through, as cp and qemu-img
   * would: the new file replaces the one the link points to, and the
   * link stays.  A link to nothing is refused rather than guessed at.
   */
  if (lstat (path, &st) == 0 && S_ISLNK (st.st_mode)) {
    CLEANUP_FREE char *real = realpath (path, NULL);

    /* /dev/stdout, /dev/fd/N or /proc/self/fd/N of a pipe links to
     * "pipe:[INODE]", which has no path but opens as that pipe: written
     * as a named pipe is, below.
     */
    if (real == NULL) {
      int e = errno;

      if (stat (path, &st) == 0 && S_ISFIFO (st.st_mode))
        goto not_a_link;
      sc_set_error (e, "symbolic link to nothing that can be written "
                    "(%s)", strerror (e));
      return NULL;
    }
    if (stat (real, &st) == 0 && S_ISREG (st.st_mode)) {
      if (!(flags & SC_TARGET_FORCE)) {
        sc_set_error (EEXIST, "target exists (use -f to overwrite)");
        return NULL;
      }
      return new_file_target (real, size, flags);
    }
  }

 not_a_link:
  if (stat (path, &st) == -1) {
    if (errno != ENOENT) {
      sc_set_error (errno, "%s", strerror (errno));
      return NULL;
    }
    return new_file_target (path, size, flags);
  }
  if (S_ISDIR (st.st_mode)) {
    sc_set_error (EISDIR, "is a directory");
    return NULL;
  }
  if (S_ISBLK (st.st_mode) || S_ISCHR (st.st_mode) || S_ISFIFO (st.st_mode)) {
    /* A device, a named pipe, /dev/null: opened as it is, and still
     * not a regular file once open (the name may have been replaced).
     * A block device holds data that is not ours: it is written only
     * when asked for in so many words, and opened exclusively.
     */
    if (S_ISBLK (st.st_mode)) {
      if (!(flags & (SC_TARGET_FORCE | SC_TARGET_DEVICE))) {
        sc_set_error (EEXIST, "is a block device (use -f or "
                      "--target-is-device to write to it)");
        return NULL;
      }
      fd = open_device (path, &st);
      if (fd == -1)
        return NULL;
    }
    else if ((fd = open (path, O_WRONLY | O_CLOEXEC)) == -1) {
      sc_set_error (errno, "%s", strerror (errno));
      return NULL;
    }
    ep = NULL;
    if (fstat (fd, &st) == -1)
      sc_set_error (errno, "fstat: %s", strerror (errno));
    else if ((flags & SC_TARGET_DEVICE) && !S_ISBLK (st.st_mode))
      not_a_device ();
    else if (S_ISREG (st.st_mode))
      sc_set_error (EEXIST, "target exists (use -f to overwrite)");
    else
      ep = target_from_fd (fd, true, path, size);
    if (ep == NULL)
      close (fd);
    return ep;
  }
  /* A regular file, or anything else that has the name (a socket). */
  if (!(flags & SC_TARGET_FORCE)) {
    sc_set_error (EEXIST, "target exists (use -f to overwrite)");
    return NULL;
  }
  return new_file_target (path, size, flags);
}

/* ---- the base of local-descriptor kinds ---------------------------------- */

int
sc_fd_ep_pread (struct sc_endpoint *ep, void *buf, size_t count,
                uint64_t offset)
{
  return sc_full_pread (((struct sc_fd_endpoint *) ep)->fd, buf, count,
                        offset);
}

int
sc_fd_ep_pwrite (struct sc_endpoint *ep, const void *buf, size_t count,
                 uint64_t offset)
{
  return sc_full_pwrite (((struct sc_fd_endpoint *) ep)->fd, buf, count,
                         offset);
}

int
sc_fd_ep_flush (struct sc_endpoint *ep)
{
  int fd = ((struct sc_fd_endpoint *) ep)->fd;

  /* EINVAL: this kind of file cannot be synced (nothing to do). */
  if (fsync (fd) == -1 && errno != EINVAL && errno != EROFS) {
    sc_set_error (errno, "%s: fsync: %s", ep->name, strerror (errno));
    return -1;
  }
  return 0;
}

int
sc_fd_ep_fingerprint (struct sc_endpoint *ep, struct sc_fingerprint *fp)
{
  struct stat st;

  if (fstat (((struct sc_fd_endpoint *) ep)->fd, &st) == -1) {
    sc_set_error (errno, "%s: fstat: %s", ep->name, strerror (errno));
    return -1;
  }
  sc_fingerprint_of_stat (&st, fp);
  return 0;
}

void
sc_fingerprint_of_stat (const struct stat *st, struct sc_fingerprint *fp)
{
  /* The fields that change when a file is written or replaced. */
  *fp = (struct sc_fingerprint) {
    .dev = st->st_dev, .ino = st->st_ino, .size = (uint64_t) st->st_size,
    .mtime_sec = st->st_mtim.tv_sec, .mtime_nsec = st->st_mtim.tv_nsec,
    .ctime_sec = st->st_ctim.tv_sec, .ctime_nsec = st->st_ctim.tv_nsec,
  };
}

void
sc_fingerprint_fold (struct sc_fingerprint *fp, const struct sc_fingerprint *f)
{
  const uint64_t k = 1099511628211ULL;  /* the 64-bit FNV prime */

  fp->dev = fp->dev * k ^ f->dev;
  fp->ino = fp->ino * k ^ f->ino;
  fp->size = fp->size * k ^ f->size;
  fp->mtime_sec = (int64_t) ((uint64_t) fp->mtime_sec * k
                             ^ (uint64_t) f->mtime_sec);
  fp->mtime_nsec = (int64_t) ((uint64_t) fp->mtime_nsec * k
                              ^ (uint64_t) f->mtime_nsec);
  fp->ctime_sec = (int64_t) ((uint64_t) fp->ctime_sec * k
                             ^ (uint64_t) f->ctime_sec);
  fp->ctime_nsec = (int64_t) ((uint64_t) fp->ctime_nsec * k
                              ^ (uint64_t) f->ctime_nsec);
}

int
sc_fd_ep_local_fd (struct sc_endpoint *ep)
{
  return ((struct sc_fd_endpoint *) ep)->fd;
}

int
sc_fd_ep_close (struct sc_endpoint *ep)
{
  struct sc_fd_endpoint *f = (struct sc_fd_endpoint *) ep;
  int rc = 0;

  if (f->own_fd && f->fd >= 0 && close (f->fd) == -1) {
    sc_set_error (errno, "%s: close: %s", ep->name, strerror (errno));
    rc = -1;
  }
  sc_ep_free (ep);
  return rc;
}
