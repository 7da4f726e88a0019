/* Memory endpoints: bytes that the caller holds, served as a source.
 *
 * Seekable, the bytes read like a file (pread, no extents: everything
 * is data).  As a stream they read like a pipe: once, in order, with
 * the length known only when the end has been read.  Tests and fuzz
 * targets hand images to the reader and the stream decoder this way,
 * with nothing on disk and no name that resolves to a file.
 */
#include <config.h>

#include <string.h>

#include "internal.h"
#include "endpoint.h"

struct memory_ep {
  struct sc_endpoint ep;
  const unsigned char *bytes;   /* the caller's, not copied */
  size_t len;
  uint64_t pos;                 /* stream: the next offset to be read */
};

static int
memory_pread (struct sc_endpoint *ep, void *buf, size_t count,
              uint64_t offset)
{
  struct memory_ep *m = (struct memory_ep *) ep;

  if (offset > m->len || count > m->len - offset) {
    sc_set_error (EIO, "read of %zu bytes at offset %" PRIu64 " is past "
                  "the end (%zu bytes)", count, offset, m->len);
    return -1;
  }
  memcpy (buf, m->bytes + offset, count);
  return 0;
}

/* Streams are read by one thread at a time (the decoder), as a pipe. */
static int
memory_read_some (struct sc_endpoint *ep, void *buf, size_t count,
                  uint64_t offset, size_t *got)
{
  struct memory_ep *m = (struct memory_ep *) ep;
  size_t n;

  if (offset != m->pos) {
    sc_set_error (EINVAL, "cannot read at offset %" PRIu64 " of a stream "
                  "positioned at %" PRIu64, offset, m->pos);
    return -1;
  }
  n = (size_t) SC_MIN ((uint64_t) count, m->len - m->pos);
  memcpy (buf, m->bytes + m->pos, n);
  m->pos += n;
  if (n < count)
    ep->size = m->len;
  *got = n;
  return 0;
}

static int
memory_stream_pread (struct sc_endpoint *ep, void *buf, size_t count,
                     uint64_t offset)
{
  size_t got;

  if (memory_read_some (ep, buf, count, offset, &got) == -1)
    return -1;
  if (got < count) {
    sc_set_error (EIO, "unexpected end of stream at offset %" PRIu64,
                  offset + got);
    return -1;
  }
  return 0;
}

static int
memory_close (struct sc_endpoint *ep)
{
  sc_ep_free (ep);
  return 0;
}

static const struct sc_endpoint_ops memory_ops = {
  .kind = "memory",
  .pread = memory_pread,
  .close = memory_close,
};

static const struct sc_endpoint_ops memory_stream_ops = {
  .kind = "memory",
  .pread = memory_stream_pread,
  .read_some = memory_read_some,
  .close = memory_close,
};

struct sc_endpoint *
sc_memory_source_new (const void *bytes, size_t len, const char *name,
                      bool stream)
{
  struct memory_ep *m = sc_ep_new (sizeof *m,
                                   stream ? &memory_stream_ops : &memory_ops,
                                   name);

  if (m == NULL)
    return NULL;
  m->bytes = bytes;
  m->len = len;
  if (stream)
    m->ep.flags = SC_EP_STREAM;
  else {
    m->ep.size = len;
    m->ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE;
  }
  return &m->ep;
}
