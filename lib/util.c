/* Small helpers shared by the library. */
#include <config.h>

#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* The zero test reads blocks of ZERO_BLOCK bytes as vectors ORed
 * together, and looks at the result once per block: one pass over the
 * buffer, where comparing it with itself shifted (memcmp) reads it
 * twice.  GCC's generic vectors become pairs of SSE2 registers on
 * x86-64 and of NEON ones on arm64; where the compiler can make a
 * second version for AVX2, the loader picks the one the CPU runs
 * (target_clones).  Packing 4 GiB of zeros from a pipe spent 4% of its
 * time in the memcmp version.
 */
typedef uint64_t zero_vec __attribute__ ((vector_size (32)));
#define ZERO_BLOCK 256

#if defined HAVE_TARGET_CLONES && defined __x86_64__
#define ZERO_CLONES __attribute__ ((target_clones ("avx2", "default")))
#else
#define ZERO_CLONES
#endif

ZERO_CLONES static bool
blocks_are_zero (const unsigned char *p, size_t blocks)
{
  for (size_t b = 0; b < blocks; b++, p += ZERO_BLOCK) {
    zero_vec acc0 = { 0 }, acc1 = { 0 };

    for (size_t i = 0; i < ZERO_BLOCK; i += 2 * sizeof acc0) {
      zero_vec w0, w1;

      memcpy (&w0, p + i, sizeof w0);
      memcpy (&w1, p + i + sizeof w0, sizeof w1);
      acc0 |= w0;
      acc1 |= w1;
    }
    acc0 |= acc1;
    if ((acc0[0] | acc0[1] | acc0[2] | acc0[3]) != 0)
      return false;
  }
  return true;
}

bool
sc_is_zero (const void *buf, size_t len)
{
  const unsigned char *p = buf;
  size_t head = SC_MIN (len, (size_t) 16);
  size_t blocks;

  /* Data usually shows itself in its first bytes. */
  for (size_t i = 0; i < head; i++)
    if (p[i])
      return false;
  blocks = len / ZERO_BLOCK;
  if (!blocks_are_zero (p, blocks))
    return false;
  for (size_t i = blocks * ZERO_BLOCK; i < len; i++)
    if (p[i])
      return false;
  return true;
}

int
sc_full_pread (int fd, void *buf, size_t count, uint64_t offset)
{
  char *p = buf;

  while (count > 0) {
    ssize_t r = pread (fd, p, count, (off_t) offset);
    if (r < 0) {
      /* A signal that asks to stop ends a wait (a pipe's). */
      if (errno == EINTR && sc_check_interrupt () == -1)
        return -1;
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
      /* A signal that asks to stop ends a wait (a pipe's). */
      if (errno == EINTR && sc_check_interrupt () == -1)
        return -1;
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
      /* A signal that asks to stop ends a wait (a pipe's). */
      if (errno == EINTR && sc_check_interrupt () == -1)
        return -1;
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
