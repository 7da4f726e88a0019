/* unpack: a qcow2 image's guest data -> a target endpoint.
 *
 * An image on a seekable endpoint is opened with the reader and copied
 * by the engine (sc_copy) from its guest view; an image on a stream is
 * decoded as it goes by (qcow2-stream.c).  Both write through the same
 * sink rules, and both leave the commit to the caller.
 */
#include <config.h>

#include "internal.h"
#include "qcow2.h"

int
sc_unpack (struct sc_endpoint *image, struct sc_endpoint *dst,
           const struct sc_unpack_opts *opts)
{
  struct sc_unpack_opts none = { 0 };
  struct sc_qcow2_open_opts qopts = { 0 };
  struct sc_copy_opts copts = { 0 };
  struct sc_endpoint *src;
  struct sc_qcow2 *q;
  int r = -1;

  if (opts == NULL)
    opts = &none;
  if (image->flags & SC_EP_STREAM) {
    if (opts->snapshot) {
      sc_set_error (EINVAL, "%s: a snapshot cannot be read from a stream",
                    image->name);
      return -1;
    }
    return qcow2_unpack_stream (image, dst, opts->progress,
                                opts->progress_opaque);
  }

  qopts.snapshot = opts->snapshot;
  qopts.no_external_files = opts->no_external_files;
  q = sc_qcow2_open_endpoint (image, &qopts);
  if (q == NULL) {
    sc_error_prefix ("%s", image->name);
    return -1;
  }
  src = sc_qcow2_endpoint (q);
  if (src == NULL) {
    sc_error_prefix ("%s", image->name);
    goto out;
  }
  if (sc_ep_set_size (dst, src->size) == -1) {
    sc_error_prefix ("%s", dst->name);
    goto out;
  }
  copts.threads = opts->threads;
  copts.detect_zeroes = true;
  copts.progress = opts->progress;
  copts.progress_opaque = opts->progress_opaque;
  /* Errors of the copy name the endpoint concerned. */
  r = sc_copy (src, dst, &copts);

 out:
  sc_ep_close (src);
  sc_qcow2_close (q);
  return r;
}
