/* Small helpers shared by the library. */
#include <config.h>

#include <string.h>
#include <unistd.h>

#include "internal.h"

bool
sc_is_zero (const void *buf, size_t len)
{
  const unsigned char *p = buf;

  /* Check the first 16 bytes by hand, then compare the buffer with
   * itself shifted by 16: memcmp is vectorized and this needs no
   * zero page.
   */
  for (size_t i = 0; i < 16; i++) {
    if (len == 0)
      return true;
    if (*p)
      return false;
    p++;
    len--;
  }
  return len == 0 || memcmp (p - 16, p, len) == 0;
}

int
sc_full_pread (int fd, void *buf, size_t count, uint64_t offset)
{
  char *p = buf;

  while (count > 0) {
    ssize_t r = pread (fd, p, count, (off_t) offset);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      sc_set_error (errno, "read at offset %" PRIu64 ": %s",
                    offset, strerror (errno));
      return -1;
    }
    if (r == 0) {
      sc_set_error (EIO, "short read at offset %" PRIu64
                    " (unexpected end of file)", offset);
      return -1;
    }
    p += r;
    count -= (size_t) r;
    offset += (uint64_t) r;
  }
  return 0;
}

int
sc_full_pwrite (int fd, const void *buf, size_t count, uint64_t offset)
{
  const char *p = buf;

  while (count > 0) {
    ssize_t r = pwrite (fd, p, count, (off_t) offset);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      sc_set_error (errno, "write at offset %" PRIu64 ": %s",
                    offset, strerror (errno));
      return -1;
    }
    p += r;
    count -= (size_t) r;
    offset += (uint64_t) r;
  }
  return 0;
}

int
sc_full_write (int fd, const void *buf, size_t count)
{
  const char *p = buf;

  while (count > 0) {
    ssize_t r = write (fd, p, count);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      sc_set_error (errno, "write: %s", strerror (errno));
      return -1;
    }
    p += r;
    count -= (size_t) r;
  }
  return 0;
}

unsigned
sc_online_cpus (void)
{
  long n = sysconf (_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : (unsigned) n;
}
