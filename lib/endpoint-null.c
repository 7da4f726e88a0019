/* Null endpoints, for tests of the engine: a source whose bytes all
 * read as zero and which says so in its extents, and a target that
 * drops what it is given and counts it.  Both are seekable and
 * thread-safe.
 */
#include <config.h>

#include <string.h>

#include "internal.h"
#include "endpoint.h"

struct null_ep {
  struct sc_endpoint ep;
  uint64_t written;             /* target: bytes given to pwrite */
  uint64_t zeroed;              /* target: bytes given to zero */
};

static int
in_range (struct sc_endpoint *ep, uint64_t count, uint64_t offset)
{
  uint64_t end;

  if (SC_ADD_OVERFLOW (offset, count, &end) || end > ep->size) {
    sc_set_error (EINVAL, "range %" PRIu64 "+%" PRIu64 " is past the end "
                  "(%" PRIu64 " bytes)", offset, count, ep->size);
    return -1;
  }
  return 0;
}

static int
null_pread (struct sc_endpoint *ep, void *buf, size_t count, uint64_t offset)
{
  if (in_range (ep, count, offset) == -1)
    return -1;
  memset (buf, 0, count);
  return 0;
}

static int
null_extents (struct sc_endpoint *ep, uint64_t offset, uint64_t count,
              struct sc_extent_list *list)
{
  if (offset >= ep->size)
    return 0;
  count = SC_MIN (count, ep->size - offset);
  return count == 0 ? 0
    : sc_extent_list_append (list, offset, count,
                             SC_EXTENT_HOLE | SC_EXTENT_ZERO);
}

static int
null_pwrite (struct sc_endpoint *ep, const void *buf, size_t count,
             uint64_t offset)
{
  struct null_ep *n = (struct null_ep *) ep;

  if (in_range (ep, count, offset) == -1)
    return -1;
  __atomic_add_fetch (&n->written, (uint64_t) count, __ATOMIC_RELAXED);
  return 0;
}

static int
null_zero (struct sc_endpoint *ep, uint64_t count, uint64_t offset,
           unsigned flags)
{
  struct null_ep *n = (struct null_ep *) ep;

  if (in_range (ep, count, offset) == -1)
    return -1;
  __atomic_add_fetch (&n->zeroed, count, __ATOMIC_RELAXED);
  return 0;
}

static int
null_close (struct sc_endpoint *ep)
{
  sc_ep_free (ep);
  return 0;
}

static const struct sc_endpoint_ops null_source_ops = {
  .kind = "null",
  .pread = null_pread,
  .extents = null_extents,
  .close = null_close,
};

static const struct sc_endpoint_ops null_target_ops = {
  .kind = "null",
  .pread = null_pread,
  .pwrite = null_pwrite,
  .zero = null_zero,
  .close = null_close,
};

static struct sc_endpoint *
new_null (const struct sc_endpoint_ops *ops, uint64_t size)
{
  struct null_ep *n = sc_ep_new (sizeof *n, ops, "null");

  if (n == NULL)
    return NULL;
  n->ep.size = size;
  n->ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE;
  return &n->ep;
}

struct sc_endpoint *
sc_null_source_new (uint64_t size)
{
  return new_null (&null_source_ops, size);
}

struct sc_endpoint *
sc_null_target_new (uint64_t size)
{
  return new_null (&null_target_ops, size);
}

void
sc_null_target_counts (struct sc_endpoint *ep, uint64_t *written,
                       uint64_t *zeroed)
{
  struct null_ep *n = (struct null_ep *) ep;

  *written = __atomic_load_n (&n->written, __ATOMIC_RELAXED);
  *zeroed = __atomic_load_n (&n->zeroed, __ATOMIC_RELAXED);
}
