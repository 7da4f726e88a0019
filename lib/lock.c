/* qemu's image locks (block/file-posix.c), for living next to qemu.
 *
 * qemu takes shared OFD byte-range locks on every image file it opens:
 * byte LOCK_PERM_BASE + i while it holds permission i, and byte
 * LOCK_SHARED_BASE + i while it refuses to share permission i with
 * anyone else.  An opener tests for conflicts with F_OFD_GETLK and an
 * exclusive lock: on byte LOCK_SHARED_BASE + i for each permission i it
 * wants (someone refuses to share it), on byte LOCK_PERM_BASE + i for
 * each permission i it does not share (someone holds it).  sparsecow
 * tests the same bytes before it reads or replaces an image, and holds
 * a writer's bytes while it writes one, so that qemu-img, qemu-nbd and
 * running VMs and sparsecow keep out of each other's way.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "internal.h"
#include "lock.h"

#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200

/* qemu's permission bits (BLK_PERM_*), by number. */
enum {
  PERM_CONSISTENT_READ = 0,
  PERM_WRITE = 1,
  PERM_WRITE_UNCHANGED = 2,
  PERM_RESIZE = 3,
  PERM_GRAPH_MOD = 4,
  PERM_COUNT = 5,
};
#define PERM(i) (1U << (i))
#define PERM_ALL (PERM (PERM_COUNT) - 1)

/* A reader such as qemu-img info: reads, and lets others do anything
 * but change the image under it.
 */
#define READER_PERM   PERM (PERM_CONSISTENT_READ)
#define READER_SHARED (PERM_ALL & ~(PERM (PERM_WRITE) | PERM (PERM_RESIZE)))
/* A writer such as qemu-nbd without -r: what it holds on the image. */
#define WRITER_PERM \
  (PERM (PERM_CONSISTENT_READ) | PERM (PERM_WRITE) | PERM (PERM_RESIZE))
#define WRITER_SHARED READER_SHARED

#ifdef F_OFD_GETLK

static const char *const perm_names[PERM_COUNT] = {
  "consistent read", "write", "write unchanged", "resize",
  "change children",
};

/* Does another open file description hold a lock on byte off?  1 yes,
 * 0 no or cannot tell.
 */
static int
byte_held (int fd, int off)
{
  struct flock fl = {
    .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1,
    .l_pid = 0,
  };

  if (fcntl (fd, F_OFD_GETLK, &fl) == -1)
    return 0;
  return fl.l_type != F_UNLCK;
}

/* Would opening fd's file with permissions perm, sharing shared,
 * conflict with another holder?  Then set the error (what names the
 * operation) and return -1.
 */
static int
check (int fd, unsigned perm, unsigned shared)
{
  for (int i = 0; i < PERM_COUNT; i++) {
    if ((perm & PERM (i)) && byte_held (fd, LOCK_SHARED_BASE + i)) {
      sc_set_error (EBUSY, "failed to get \"%s\" lock: another process "
                    "(such as qemu) is using the image", perm_names[i]);
      return -1;
    }
    if (!(shared & PERM (i)) && byte_held (fd, LOCK_PERM_BASE + i)) {
      sc_set_error (EBUSY, "failed to get shared \"%s\" lock: another "
                    "process (such as qemu) is using the image",
                    perm_names[i]);
      return -1;
    }
  }
  return 0;
}

static int
lock_byte (int fd, int off)
{
  struct flock fl = {
    .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1,
    .l_pid = 0,
  };

  return fcntl (fd, F_OFD_SETLK, &fl);
}

int
sc_lock_check_read (int fd)
{
  if (fd < 0)
    return 0;
  return check (fd, READER_PERM, READER_SHARED);
}

/* Open path for reading to test its locks, if it is what qemu locks: a
 * regular file or a block device.  Opening anything else could change
 * it: a FIFO's open releases a writer waiting for a reader, which dies
 * of SIGPIPE once that reader has gone, and a character device may act
 * on open.  So the name is opened with O_PATH first, and only a file or
 * a block device is opened again, through /proc/self/fd.  Returns the
 * descriptor, -2 for anything else (nothing to lock), or -1 with errno.
 */
static int
open_lockable (const char *path)
{
  char proc[64];
  struct stat st;
  int pfd, fd;

  pfd = open (path, O_PATH | O_CLOEXEC);
  if (pfd == -1)
    return -1;
  if (fstat (pfd, &st) == -1 || (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode))) {
    close (pfd);
    return -2;
  }
  snprintf (proc, sizeof proc, "/proc/self/fd/%d", pfd);
  fd = open (proc, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd == -1 && errno == ENOENT)  /* no /proc: the name again */
    fd = open (path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  int e = errno;
  close (pfd);
  errno = e;
  return fd;
}

int
sc_image_lock_test (const char *path)
{
  int fd = open_lockable (path), r;

  if (fd == -2)
    return 0;
  if (fd == -1) {
    sc_set_error (errno, "%s", strerror (errno));
    return -1;
  }
  r = check (fd, READER_PERM, READER_SHARED);
  close (fd);
  return r;
}

int
sc_lock_check_replace (const char *path)
{
  struct stat st;
  int fd, r;

  /* Only a regular file is replaced; a device is opened exclusively
   * instead.
   */
  if (stat (path, &st) == -1 || !S_ISREG (st.st_mode))
    return 0;
  fd = open (path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd == -1)
    return 0;
  r = check (fd, WRITER_PERM, WRITER_SHARED);
  close (fd);
  return r;
}

int
sc_lock_hold_write (int fd)
{
  if (fd < 0 || check (fd, WRITER_PERM, WRITER_SHARED) == -1)
    return fd < 0 ? 0 : -1;
  for (int i = 0; i < PERM_COUNT; i++) {
    /* A file system without OFD locks: nothing to keep others out
     * with, as qemu then goes on without them too.
     */
    if ((WRITER_PERM & PERM (i))
        && lock_byte (fd, LOCK_PERM_BASE + i) == -1)
      return 0;
    if (!(WRITER_SHARED & PERM (i))
        && lock_byte (fd, LOCK_SHARED_BASE + i) == -1)
      return 0;
  }
  return 0;
}

#else /* !F_OFD_GETLK */

int
sc_image_lock_test (const char *path)
{
  (void) path;
  return 0;
}

int
sc_lock_check_read (int fd)
{
  (void) fd;
  return 0;
}

int
sc_lock_check_replace (const char *path)
{
  (void) path;
  return 0;
}

int
sc_lock_hold_write (int fd)
{
  (void) fd;
  return 0;
}

#endif /* !F_OFD_GETLK */
