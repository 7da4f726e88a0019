/* Block-device endpoints.
 *
 * A device has no holes to report: everything is data.  Zeroing uses
 * BLKZEROOUT, which makes the device do the work.
 */
#include <config.h>

#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#ifdef HAVE_LINUX_FS_H
#include <linux/fs.h>
#endif

#include "internal.h"
#include "endpoint.h"

static int
block_zero (struct sc_endpoint *ep, uint64_t count, uint64_t offset,
            unsigned flags)
{
#ifdef BLKZEROOUT
  /* The kernel needs sector-aligned ranges; anything else is written. */
  if (SC_IS_ALIGNED (offset, 512) && SC_IS_ALIGNED (count, 512)) {
    uint64_t range[2] = { offset, count };
    if (ioctl (((struct sc_fd_endpoint *) ep)->fd, BLKZEROOUT, range) == 0)
      return 0;
  }
#endif
  if (flags & SC_ZERO_FAST)
    return sc_ep_unsupported (ep, "fast zeroing");
  return sc_ep_write_zeros (ep, count, offset);
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

static const struct sc_endpoint_ops block_source_ops = {
  .kind = "block",
  .pread = sc_fd_ep_pread,
  .fingerprint = sc_fd_ep_fingerprint,
  .close = sc_fd_ep_close,
};

static const struct sc_endpoint_ops block_target_ops = {
  .kind = "block",
  .pread = sc_fd_ep_pread,
  .pwrite = sc_fd_ep_pwrite,
  .zero = block_zero,
  .set_size = block_set_size,
  .flush = sc_fd_ep_flush,
  .close = sc_fd_ep_close,
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
  struct sc_fd_endpoint *b = sc_ep_new (sizeof *b, ops, name);

  if (b == NULL)
    return NULL;
  b->fd = fd;
  b->own_fd = own_fd;
  b->ep.size = size;
  b->ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE;
  return &b->ep;
}

struct sc_endpoint *
sc_block_source_new (int fd, bool own_fd, const char *name)
{
  uint64_t size;

  if (device_size (fd, name, &size) == -1)
    return NULL;
  return new_block_ep (&block_source_ops, fd, own_fd, name, size);
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
