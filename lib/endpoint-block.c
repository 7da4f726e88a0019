/* Block-device endpoints.
 *
 * A device has no holes to report: everything is data.  A range that
 * must read as zero is, by the target's zero mode: unmapped with
 * fallocate (PUNCH_HOLE | KEEP_SIZE), which Linux does only where the
 * device guarantees that the range then reads as zero (it fails
 * otherwise, and nothing is changed), as qemu does for host devices;
 * or zeroed by the device without unmapping (BLKZEROOUT, which asks for
 * no unmap); or written.  Unmapping keeps a thin device (a loop device
 * over a sparse file, a thin LV) thin; BLKZEROOUT allocates every range.
 */
#include <config.h>

#include <dirent.h>
#include <libgen.h>
#include <stdarg.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#ifdef HAVE_LINUX_FS_H
#include <linux/fs.h>
#endif
#ifdef HAVE_LINUX_LOOP_H
#include <linux/loop.h>
#include <linux/major.h>
#endif

#include "internal.h"
#include "endpoint.h"

static bool read_line (const char *path, char *out, size_t len);

struct block_ep {
  struct sc_fd_endpoint base;
  uint32_t sector;              /* logical block size: the unit of
                                   unmapping and BLKZEROOUT */
  /* Set once the device has refused to unmap: not asked again. */
  bool no_unmap;
  /* A loop device source: its backing file (O_PATH), or -1. */
  int backing_fd;
};

static int
block_fd (struct sc_endpoint *ep)
{
  return ((struct sc_fd_endpoint *) ep)->fd;
}

/* Make whole sectors [offset, offset+count) read as zero. */
static int
zero_sectors (struct sc_endpoint *ep, uint64_t count, uint64_t offset,
              unsigned flags)
{
  struct block_ep *b = (struct block_ep *) ep;
  int unmap_errno = EOPNOTSUPP;

#if defined (HAVE_FALLOCATE) && defined (FALLOC_FL_PUNCH_HOLE)
  if ((flags & SC_ZERO_MAY_UNMAP)
      && !__atomic_load_n (&b->no_unmap, __ATOMIC_RELAXED)) {
    if (fallocate (block_fd (ep), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                   (off_t) offset, (off_t) count) == 0)
      return 0;
    unmap_errno = errno;
    /* The device cannot promise zeros after an unmap (or the kernel
     * cannot ask it): the answer holds for every later range.
     */
    if (errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS)
      __atomic_store_n (&b->no_unmap, true, __ATOMIC_RELAXED);
  }
#endif
  if (flags & SC_ZERO_MUST_UNMAP) {
    sc_set_error (ENOTSUP, "cannot unmap at offset %" PRIu64 " so that the "
                  "range reads as zero (%s); use --zero=auto or write",
                  offset, strerror (unmap_errno));
    return -1;
  }
  /* BLKZEROOUT writes zero pages itself where the device has no
   * write-zeroes command, and one that has it would have unmapped
   * above: it is not fast.
   */
  if (flags & SC_ZERO_FAST)
    return sc_ep_unsupported (ep, "fast zeroing");
#ifdef BLKZEROOUT
  {
    uint64_t range[2] = { offset, count };
    if (ioctl (block_fd (ep), BLKZEROOUT, range) == 0)
      return 0;
  }
#endif
  return sc_ep_write_zeros (ep, count, offset);
}

static int
block_zero (struct sc_endpoint *ep, uint64_t count, uint64_t offset,
            unsigned flags)
{
  struct block_ep *b = (struct block_ep *) ep;
  uint64_t end = offset + count;
  uint64_t a0 = SC_ROUND_UP (offset, b->sector);
  uint64_t a1 = SC_ROUND_DOWN (end, b->sector);

  /* The device works in whole sectors; the parts of sectors at the
   * ends are written.
   */
  if (a0 >= a1) {
    if (flags & SC_ZERO_FAST)
      return sc_ep_unsupported (ep, "fast zeroing of partial sectors");
    return sc_ep_write_zeros (ep, count, offset);
  }
  if (a0 > offset || a1 < end) {
    if (flags & SC_ZERO_FAST)
      return sc_ep_unsupported (ep, "fast zeroing of partial sectors");
    if ((a0 > offset && sc_ep_write_zeros (ep, a0 - offset, offset) == -1)
        || (a1 < end && sc_ep_write_zeros (ep, end - a1, a1) == -1))
      return -1;
  }
  return zero_sectors (ep, a1 - a0, a0, flags);
}

/* fsync, then drop the device's cached pages: what is read afterwards
 * (--verify) comes from the device, not from memory.
 */
static int
block_flush (struct sc_endpoint *ep)
{
  if (sc_fd_ep_flush (ep) == -1)
    return -1;
  (void) posix_fadvise (block_fd (ep), 0, 0, POSIX_FADV_DONTNEED);
  return 0;
}

static void
device_too_small (uint64_t dev_size, uint64_t size)
{
  sc_set_error (ENOSPC, "device is smaller than the image (%" PRIu64
                " < %" PRIu64 ")", dev_size, size);
}

/* A device's size is what it is: it must hold the image. */
static int
block_set_size (struct sc_endpoint *ep, uint64_t size)
{
  if (size > ep->size) {
    device_too_small (ep->size, size);
    return -1;
  }
  return 0;
}

static int device_size (int fd, const char *name, uint64_t *size);

/* What changes when the device changes, as far as it shows: the node's
 * times (Linux updates them on writes through the node), the device's
 * size (the node's own is 0), and for a loop device, its backing file
 * (written, truncated or grown).  Writes that reach the device some
 * other way (a partition, a device stacked on it, another node) leave
 * no trace here.
 */
static int
block_fingerprint (struct sc_endpoint *ep, struct sc_fingerprint *fp)
{
  struct block_ep *b = (struct block_ep *) ep;
  uint64_t size;

  if (sc_fd_ep_fingerprint (ep, fp) == -1
      || device_size (block_fd (ep), ep->name, &size) == -1)
    return -1;
  fp->size = size;
  if (b->backing_fd >= 0) {
    struct stat st;
    struct sc_fingerprint backing;

    if (fstat (b->backing_fd, &st) == -1) {
      sc_set_error (errno, "%s: its backing file: fstat: %s", ep->name,
                    strerror (errno));
      return -1;
    }
    sc_fingerprint_of_stat (&st, &backing);
    sc_fingerprint_fold (fp, &backing);
  }
  return 0;
}

static int
block_close (struct sc_endpoint *ep)
{
  struct block_ep *b = (struct block_ep *) ep;

  if (b->backing_fd >= 0)
    close (b->backing_fd);
  return sc_fd_ep_close (ep);
}

static const struct sc_endpoint_ops block_source_ops = {
  .kind = "block",
  .pread = sc_fd_ep_pread,
  .fingerprint = block_fingerprint,
  .close = block_close,
};

static const struct sc_endpoint_ops block_target_ops = {
  .kind = "block",
  .pread = sc_fd_ep_pread,
  .pwrite = sc_fd_ep_pwrite,
  .zero = block_zero,
  .set_size = block_set_size,
  .flush = block_flush,
  .close = block_close,
};

static int
device_size (int fd, const char *name, uint64_t *size)
{
#ifdef BLKGETSIZE64
  if (ioctl (fd, BLKGETSIZE64, size) == -1) {
    sc_set_error (errno, "%s: cannot get the device size: %s",
                  name, strerror (errno));
    return -1;
  }
#else
  off_t end = lseek (fd, 0, SEEK_END);

  if (end == -1) {
    sc_set_error (errno, "%s: cannot get the device size: %s",
                  name, strerror (errno));
    return -1;
  }
  *size = (uint64_t) end;
#endif
  return 0;
}

static struct sc_endpoint *
new_block_ep (const struct sc_endpoint_ops *ops, int fd, bool own_fd,
              const char *name, uint64_t size)
{
  struct block_ep *b = sc_ep_new (sizeof *b, ops, name);
  int sector = 512;

  if (b == NULL)
    return NULL;
  b->base.fd = fd;
  b->base.own_fd = own_fd;
  b->backing_fd = -1;
  b->base.ep.size = size;
  b->base.ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE | SC_EP_IN_PLACE;
#ifdef BLKSSZGET
  /* A power of two from 512 to 64 KiB, or the classic sector. */
  if (ioctl (fd, BLKSSZGET, &sector) == -1 || sector < 512
      || sector > 65536 || (sector & (sector - 1)) != 0)
    sector = 512;
#endif
  b->sector = (uint32_t) sector;
  return &b->base.ep;
}

/* The backing file of the loop device fd, held by a descriptor that
 * only looks (O_PATH), so that it is the file the device reads even if
 * its name is later replaced; -1 for any other device, or when the
 * file named in sysfs is not the one the device reads (a name replaced
 * before this).
 */
static int
loop_backing_file (int fd)
{
#if defined (LOOP_GET_STATUS64) && defined (LOOP_MAJOR) && defined (O_PATH)
  struct loop_info64 info;
  struct stat st;
  char path[64], backing[PATH_MAX];
  int bfd;

  if (fstat (fd, &st) == -1 || !S_ISBLK (st.st_mode)
      || major (st.st_rdev) != LOOP_MAJOR
      || ioctl (fd, LOOP_GET_STATUS64, &info) == -1)
    return -1;
  snprintf (path, sizeof path, "/sys/dev/block/%u:%u/loop/backing_file",
            major (st.st_rdev), minor (st.st_rdev));
  if (!read_line (path, backing, sizeof backing))
    return -1;
  bfd = open (backing, O_PATH | O_CLOEXEC);
  if (bfd == -1)
    return -1;
  if (fstat (bfd, &st) == -1 || st.st_dev != info.lo_device
      || st.st_ino != info.lo_inode) {
    close (bfd);
    return -1;
  }
  return bfd;
#else
  (void) fd;
  return -1;
#endif
}

struct sc_endpoint *
sc_block_source_new (int fd, bool own_fd, const char *name)
{
  struct sc_endpoint *ep;
  uint64_t size;

  if (device_size (fd, name, &size) == -1)
    return NULL;
  ep = new_block_ep (&block_source_ops, fd, own_fd, name, size);
  if (ep)
    ((struct block_ep *) ep)->backing_fd = loop_backing_file (fd);
  return ep;
}

struct sc_endpoint *
sc_block_target_new (int fd, bool own_fd, const char *name, uint64_t size)
{
  uint64_t dev_size;

  if (device_size (fd, name, &dev_size) == -1)
    return NULL;
  if (dev_size < size) {
    device_too_small (dev_size, size);
    return NULL;
  }
  return new_block_ep (&block_target_ops, fd, own_fd, name, dev_size);
}

/* Is the directory that would hold path where the system keeps its
 * device nodes: a devtmpfs (the kernel's /dev), or whatever file system
 * is mounted on /dev (a tmpfs, in a container)?  A name there that does
 * not exist is a device that is not there, and a regular file made in
 * its place would only fill memory.  /dev/shm, a file system of its
 * own, is not.  A name in a directory that does not exist is judged by
 * its nearest existing ancestor.  Judged by the directory's device number against
 * /proc/self/mountinfo; false when either cannot be read.
 */
bool
sc_path_in_device_dir (const char *path)
{
  CLEANUP_FREE char *copy = strdup (path);
  struct stat st;
  FILE *fp;
  char line[4096];
  bool found = false;

  char *dir;

  if (copy == NULL)
    return false;
  /* A directory that is not there either (/dev/disk/by-id/ of a disk
   * never plugged in) is judged by the nearest one that is.
   */
  dir = dirname (copy);
  while (stat (dir, &st) == -1) {
    if (errno != ENOENT || strcmp (dir, "/") == 0 || strcmp (dir, ".") == 0)
      return false;
    dir = dirname (dir);
  }
  if (!S_ISDIR (st.st_mode))
    return false;
  fp = fopen ("/proc/self/mountinfo", "re");
  if (fp == NULL)
    return false;
  /* "ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [FIELDS...] - FSTYPE
   * SOURCE SUPER-OPTIONS" (proc(5)); a line longer than the buffer is
   * read on as a line of its own, whose fields then do not parse.
   */
  while (!found && fgets (line, sizeof line, fp)) {
    unsigned ma, mi;
    char point[PATH_MAX];
    const char *sep = strstr (line, " - ");
    char fstype[64];

    if (sscanf (line, "%*u %*u %u:%u %*s %4095s", &ma, &mi, point) != 3
        || makedev (ma, mi) != st.st_dev || sep == NULL
        || sscanf (sep + 3, "%63s", fstype) != 1)
      continue;
    found = strcmp (fstype, "devtmpfs") == 0 || strcmp (point, "/dev") == 0;
  }
  fclose (fp);
  return found;
}

/* Can the device zero a range without writing it?  Linux unmaps a
 * range of a block device (fallocate PUNCH_HOLE) only through the
 * device's write-zeroes command, and says in sysfs whether it has one
 * (a partition shares its disk's queue).  1 yes, 0 no, -1 unknown.
 */
static int
can_write_zeroes (int fd)
{
  struct stat st;
  char path[128], line[64];

  if (fstat (fd, &st) == -1 || !S_ISBLK (st.st_mode))
    return -1;
  snprintf (path, sizeof path, "/sys/dev/block/%u:%u/queue/"
            "write_zeroes_max_bytes", major (st.st_rdev), minor (st.st_rdev));
  if (!read_line (path, line, sizeof line)) {
    snprintf (path, sizeof path, "/sys/dev/block/%u:%u/../queue/"
              "write_zeroes_max_bytes", major (st.st_rdev),
              minor (st.st_rdev));
    if (!read_line (path, line, sizeof line))
      return -1;
  }
  return strtoull (line, NULL, 10) > 0;
}

int
sc_block_check_unmap (struct sc_endpoint *ep)
{
  if (ep->ops != &block_target_ops || can_write_zeroes (block_fd (ep)) != 0)
    return 0;
  sc_set_error (ENOTSUP, "device cannot unmap a range so that it reads as "
                "zero (it has no write-zeroes command); use --zero=auto "
                "or write");
  return -1;
}

/* ---- who holds a device -------------------------------------------- */

/* Append printf output to buf (len bytes, always terminated). */
static void __attribute__ ((format (printf, 3, 4)))
append (char *buf, size_t len, const char *fmt, ...)
{
  size_t used = strlen (buf);
  va_list ap;

  if (used + 1 >= len)
    return;
  va_start (ap, fmt);
  vsnprintf (buf + used, len - used, fmt, ap);
  va_end (ap);
}

/* The first line of a small sysfs or proc file, without the newline;
 * false if it cannot be read.
 */
static bool
read_line (const char *path, char *out, size_t len)
{
  FILE *fp = fopen (path, "re");
  bool ok;

  if (fp == NULL)
    return false;
  ok = fgets (out, (int) len, fp) != NULL;
  fclose (fp);
  if (ok)
    out[strcspn (out, "\n")] = '\0';
  return ok;
}

/* At most this many devices (the disk and its partitions) and this many
 * processes are looked at: enough to name who holds a disk, bounded
 * whatever the system holds.
 */
#define MAX_HOLDER_DEVS 64
#define MAX_NAMED_PROCESSES 8

/* dev and the partitions of dev, from /sys/dev/block/MAJ:MIN. */
static size_t
device_and_partitions (dev_t dev, dev_t *devs, size_t max)
{
  char dir[64];
  size_t n = 0;
  DIR *d;
  struct dirent *e;

  devs[n++] = dev;
  snprintf (dir, sizeof dir, "/sys/dev/block/%u:%u", major (dev),
            minor (dev));
  d = opendir (dir);
  if (d == NULL)
    return n;
  while (n < max && (e = readdir (d)) != NULL) {
    char path[PATH_MAX], line[64];
    unsigned ma, mi;

    if (e->d_name[0] == '.')
      continue;
    snprintf (path, sizeof path, "%s/%s/partition", dir, e->d_name);
    if (access (path, F_OK) != 0)
      continue;
    snprintf (path, sizeof path, "%s/%s/dev", dir, e->d_name);
    if (read_line (path, line, sizeof line)
        && sscanf (line, "%u:%u", &ma, &mi) == 2)
      devs[n++] = makedev (ma, mi);
  }
  closedir (d);
  return n;
}

static bool
in_list (dev_t dev, const dev_t *devs, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (devs[i] == dev)
      return true;
  return false;
}

static void
describe_mounts (const dev_t *devs, size_t n, char *buf, size_t len)
{
  FILE *fp = fopen ("/proc/self/mountinfo", "re");
  char line[4096];

  if (fp == NULL)
    return;
  /* "ID PARENT MAJ:MIN ROOT MOUNT-POINT ..." (proc(5)). */
  while (fgets (line, sizeof line, fp)) {
    unsigned ma, mi;
    char point[PATH_MAX];

    if (sscanf (line, "%*u %*u %u:%u %*s %4095s", &ma, &mi, point) == 3
        && in_list (makedev (ma, mi), devs, n))
      append (buf, len, ", mounted on %s", point);
  }
  fclose (fp);
}

static void
describe_holders (const dev_t *devs, size_t n, char *buf, size_t len)
{
  for (size_t i = 0; i < n; i++) {
    char dir[96];
    DIR *d;
    struct dirent *e;

    snprintf (dir, sizeof dir, "/sys/dev/block/%u:%u/holders",
              major (devs[i]), minor (devs[i]));
    d = opendir (dir);
    if (d == NULL)
      continue;
    while ((e = readdir (d)) != NULL) {
      char path[PATH_MAX], dm[256];

      if (e->d_name[0] == '.')
        continue;
      /* A device-mapper device is known by its name (vg-lv). */
      snprintf (path, sizeof path, "/sys/class/block/%s/dm/name", e->d_name);
      if (read_line (path, dm, sizeof dm))
        append (buf, len, ", held by %s (%s)", e->d_name, dm);
      else
        append (buf, len, ", held by %s", e->d_name);
    }
    closedir (d);
  }
}

static void
describe_swaps (const dev_t *devs, size_t n, char *buf, size_t len)
{
  FILE *fp = fopen ("/proc/swaps", "re");
  char line[4096];

  if (fp == NULL)
    return;
  while (fgets (line, sizeof line, fp)) {
    char path[PATH_MAX];
    struct stat st;

    if (sscanf (line, "%4095s", path) == 1 && path[0] == '/'
        && stat (path, &st) == 0 && S_ISBLK (st.st_mode)
        && in_list (st.st_rdev, devs, n))
      append (buf, len, ", swap area %s", path);
  }
  fclose (fp);
}

/* Processes that have one of the devices open (a program that holds it
 * exclusively is among them).  Only the processes this one may look at
 * are seen.
 */
static void
describe_processes (const dev_t *devs, size_t n, char *buf, size_t len)
{
  DIR *proc = opendir ("/proc");
  struct dirent *p;
  unsigned named = 0;
  pid_t self = getpid ();

  if (proc == NULL)
    return;
  while (named < MAX_NAMED_PROCESSES && (p = readdir (proc)) != NULL) {
    char dir[64], path[PATH_MAX], comm[64];
    DIR *fds;
    struct dirent *f;
    bool found = false;
    char *end;
    long pid = strtol (p->d_name, &end, 10);

    if (*end != '\0' || pid <= 0 || pid == (long) self)
      continue;
    snprintf (dir, sizeof dir, "/proc/%ld/fd", pid);
    fds = opendir (dir);
    if (fds == NULL)
      continue;
    while (!found && (f = readdir (fds)) != NULL) {
      struct stat st;

      if (f->d_name[0] == '.')
        continue;
      snprintf (path, sizeof path, "%s/%s", dir, f->d_name);
      found = stat (path, &st) == 0 && S_ISBLK (st.st_mode)
              && in_list (st.st_rdev, devs, n);
    }
    closedir (fds);
    if (!found)
      continue;
    snprintf (path, sizeof path, "/proc/%ld/comm", pid);
    if (!read_line (path, comm, sizeof comm))
      snprintf (comm, sizeof comm, "?");
    append (buf, len, ", open in process %ld (%s)", pid, comm);
    named++;
  }
  closedir (proc);
}

void
sc_block_describe_holders (dev_t dev, char *buf, size_t len)
{
  dev_t devs[MAX_HOLDER_DEVS];
  size_t n = device_and_partitions (dev, devs, MAX_HOLDER_DEVS);

  buf[0] = '\0';
  describe_mounts (devs, n, buf, len);
  describe_holders (devs, n, buf, len);
  describe_swaps (devs, n, buf, len);
  describe_processes (devs, n, buf, len);
}
