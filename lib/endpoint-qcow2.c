/* The guest view of a qcow2 image as a source endpoint.
 *
 * Reads and extents are answered by the reader (qcow2-read.c) through
 * the whole backing chain; this file only adapts them to the endpoint
 * interface.  The endpoint borrows the image handle: closing it leaves
 * the handle open.
 */
#include <config.h>

#include "internal.h"
#include "qcow2.h"

struct qcow2_endpoint {
  struct sc_endpoint ep;        /* first: the vtable sees this */
  struct sc_qcow2 *q;
};

static int
qep_pread (struct sc_endpoint *ep, void *buf, size_t count, uint64_t offset)
{
  struct qcow2_endpoint *e = (struct qcow2_endpoint *) ep;
  uint64_t end;

  if (SC_ADD_OVERFLOW (offset, (uint64_t) count, &end) || end > ep->size) {
    sc_set_error (EINVAL, "%s: read beyond the end of the image", ep->name);
    return -1;
  }
  return qcow2_chain_pread (e->q, buf, count, offset);
}

/* Re-packing probes a few KiB of each cluster for zeros when these can
 * be had at once: the image file's bytes in the page cache.
 */
static int
qep_pread_nowait (struct sc_endpoint *ep, void *buf, size_t count,
                  uint64_t offset)
{
  struct qcow2_endpoint *e = (struct qcow2_endpoint *) ep;
  uint64_t end;

  if (SC_ADD_OVERFLOW (offset, (uint64_t) count, &end) || end > ep->size)
    return 1;
  return qcow2_chain_pread_nowait (e->q, buf, count, offset);
}

static int
qep_extents (struct sc_endpoint *ep, uint64_t offset, uint64_t count,
             struct sc_extent_list *list)
{
  struct qcow2_endpoint *e = (struct qcow2_endpoint *) ep;
  uint64_t end;

  if (SC_ADD_OVERFLOW (offset, count, &end) || end > ep->size)
    end = ep->size;
  return qcow2_chain_extents (e->q, offset, end, list);
}

/* Unpacking to a file next to the image shares the image's blocks
 * (or copies them inside the kernel) where they lie as they are.
 */
static int
qep_copy_to (struct sc_endpoint *ep, uint64_t offset, struct sc_endpoint *dst,
             uint64_t dst_off, uint64_t count, unsigned flags)
{
  struct qcow2_endpoint *e = (struct qcow2_endpoint *) ep;
  uint64_t end;

  if (SC_ADD_OVERFLOW (offset, count, &end) || end > ep->size)
    return SC_COPY_DECLINED;
  return qcow2_chain_copy_to (e->q, offset, count, dst, dst_off, flags);
}

/* The image changes when any file of its chain does: re-packing checks
 * it as packing checks a raw file.
 */
static int
qep_fingerprint (struct sc_endpoint *ep, struct sc_fingerprint *fp)
{
  return qcow2_chain_fingerprint (((struct qcow2_endpoint *) ep)->q, fp);
}

static int
qep_close (struct sc_endpoint *ep)
{
  sc_ep_free (ep);
  return 0;
}

static const struct sc_endpoint_ops qcow2_ops = {
  .kind = "qcow2",
  .pread = qep_pread,
  .pread_nowait = qep_pread_nowait,
  .extents = qep_extents,
  .fingerprint = qep_fingerprint,
  .copy_to = qep_copy_to,
  .close = qep_close,
};

struct sc_endpoint *
sc_qcow2_endpoint (struct sc_qcow2 *q)
{
  struct qcow2_endpoint *e = sc_ep_new (sizeof *e, &qcow2_ops,
                                        qcow2_chain_name (q));

  if (e == NULL)
    return NULL;
  e->q = q;
  e->ep.size = sc_qcow2_virtual_size (q);
  e->ep.block_size = qcow2_chain_cluster_size (q);
  e->ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE;
  return &e->ep;
}
