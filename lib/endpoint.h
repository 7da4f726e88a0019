/* The endpoint interface: private to libsparsecow, not installed.
 *
 * An endpoint is where data comes from or goes to: a regular file, a
 * block device, a pipe, the guest view of a qcow2 image, a null
 * endpoint for tests.  Each kind lives in its own endpoint-KIND.c and
 * embeds struct sc_endpoint as its first member.  The copy engine and
 * the commands talk to endpoints only through the sc_ep_* calls below,
 * which supply the default of every optional slot, so no caller ever
 * needs to know which kind it holds.
 */
#ifndef SPARSECOW_ENDPOINT_H
#define SPARSECOW_ENDPOINT_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sparsecow.h"

/* Capability flags (struct sc_endpoint.flags). */
#define SC_EP_SEEKABLE     0x1  /* pread/pwrite at any offset */
#define SC_EP_THREAD_SAFE  0x2  /* pread/pwrite may run concurrently */
#define SC_EP_FRESH_ZEROS  0x4  /* target: unwritten ranges already read
                                   as zero */
#define SC_EP_STREAM       0x8  /* source read once, in order, with
                                   read_some; size is 0 until the end
                                   has been read */
#define SC_EP_REMOTE       0x10 /* on the other side of a network: every
                                   request is a round trip, and names
                                   inside it (a qcow2 backing file) mean
                                   nothing here */
#define SC_EP_IN_PLACE     0x20 /* target: written where it is, under its
                                   name (a device, an existing file, an
                                   export), so that what a failure
                                   leaves of it is seen as it is */
#define SC_EP_HOLES_READ_ZERO 0x40 /* target: what its extents call a
                                   hole reads as zero by definition (a
                                   regular file), so that a read-back
                                   need read only its data; never a
                                   device, whose extents (if any) are
                                   a hint */

/* Flags of the zero slot. */
#define SC_ZERO_MAY_UNMAP  0x1  /* the range may be deallocated (a hole
                                   punched) as long as it reads as zero */
#define SC_ZERO_FAST       0x2  /* fail with ENOTSUP rather than write
                                   zeros byte by byte */
#define SC_ZERO_MUST_UNMAP 0x4  /* with SC_ZERO_MAY_UNMAP: deallocate the
                                   range so that it is guaranteed to read
                                   as zero, or fail with ENOTSUP (a kind
                                   that cannot unmap treats it as
                                   SC_ZERO_MAY_UNMAP) */

/* Flags of the copy_to and copy_from_fd slots. */
#define SC_COPY_CLONE      0x1  /* share the source's blocks (a reflink:
                                   FICLONERANGE) or do nothing: the
                                   bytes are never copied, because the
                                   caller holds them and writes them
                                   itself when the range is refused */

/* What copy_to and copy_from_fd return besides 0 and -1.  The caller
 * reads (or has read) the range and writes it itself in both cases.
 */
#define SC_COPY_DECLINED   1    /* not this range (unaligned, mixed) */
#define SC_COPY_NEVER      2    /* SC_COPY_CLONE only: not between these
                                   two endpoints at all (another file
                                   system, one that cannot share blocks,
                                   not a file): no use asking again */

/* What identifies the state of a source, to tell whether it changed
 * while it was read.  Compared as a whole with sc_ep_fingerprint_equal.
 */
struct sc_fingerprint {
  uint64_t dev, ino, size;
  int64_t mtime_sec, mtime_nsec, ctime_sec, ctime_nsec;
};

struct sc_endpoint;

/* The slots.  close is required; every other slot may be NULL, and the
 * sc_ep_* wrapper then gives the documented default.  Offsets and
 * counts are in bytes.  Every slot returns 0 on success or -1 with the
 * per-thread error set (sc_set_error).  I/O slots report errors without
 * the endpoint's name: the caller adds it, knowing which side failed.
 * Whole-endpoint slots (flush, commit, close) name the endpoint.
 */
struct sc_endpoint_ops {
  /* For messages and tests only: "file", "block", "pipe", "qcow2",
   * "null".  No code takes decisions on it.
   */
  const char *kind;

  /* Read exactly count bytes at offset.  NULL: cannot be read (ENOTSUP).
   * A stream source reads through read_some instead.
   */
  int (*pread) (struct sc_endpoint *ep, void *buf, size_t count,
                uint64_t offset);
  /* Streams only: read up to count bytes at offset, which must be where
   * the previous read ended.  *got < count only at the end of the
   * stream, which also sets ep->size to the stream's length; reads
   * after the end get nothing.
   */
  int (*read_some) (struct sc_endpoint *ep, void *buf, size_t count,
                    uint64_t offset, size_t *got);
  /* Read exactly count bytes at offset only if they can be had without
   * waiting for a device (they are in the page cache): returns 0 when
   * read, 1 when not (buf is then undefined).  NULL: always 1.
   */
  int (*pread_nowait) (struct sc_endpoint *ep, void *buf, size_t count,
                       uint64_t offset);
  /* Append the extents of [offset, offset+count) to list: sorted,
   * contiguous, starting at offset.  The answer may cover less than
   * asked (a prefix; the caller asks again from where it ends) or run
   * past the range (the caller clips it).  A regular file reports what
   * lies past its end as a hole.  NULL: everything is data.
   */
  int (*extents) (struct sc_endpoint *ep, uint64_t offset, uint64_t count,
                  struct sc_extent_list *list);
  /* Fill fp with the source's current state: returns 0, or 1 when the
   * kind has no such state (NULL: always 1).
   */
  int (*fingerprint) (struct sc_endpoint *ep, struct sc_fingerprint *fp);
  /* The descriptor of a local regular file that holds exactly the
   * endpoint's bytes at the same offsets, for copies inside the kernel;
   * -1 if there is none.  The endpoint keeps ownership.  NULL: -1.
   */
  int (*local_fd) (struct sc_endpoint *ep);
  /* Copy count bytes at offset straight to dst at dst_off, without the
   * caller reading them (SC_COPY_* flags): returns 0 when all was
   * copied, SC_COPY_DECLINED when this source cannot do it for this
   * range and target (the caller reads and writes the range instead,
   * over whatever part was copied), SC_COPY_NEVER as copy_from_fd.
   * Errors name the side that failed.  NULL: a source with a local_fd
   * hands it to dst's copy_from_fd.
   */
  int (*copy_to) (struct sc_endpoint *ep, uint64_t offset,
                  struct sc_endpoint *dst, uint64_t dst_off, uint64_t count,
                  unsigned flags);

  /* Write exactly count bytes at offset.  NULL: read-only (ENOTSUP). */
  int (*pwrite) (struct sc_endpoint *ep, const void *buf, size_t count,
                 uint64_t offset);
  /* Make [offset, offset+count) read as zeros (SC_ZERO_* flags).
   * NULL: zeros are written with pwrite, or ENOTSUP with SC_ZERO_FAST.
   */
  int (*zero) (struct sc_endpoint *ep, uint64_t count, uint64_t offset,
               unsigned flags);
  /* Copy count bytes from the regular file src_fd at src_off to offset
   * dst_off inside the kernel, sharing blocks where the file system
   * can (copy_file_range), or with SC_COPY_CLONE only by sharing them.
   * Returns 0 when all was copied, SC_COPY_DECLINED when this pair
   * cannot do it for this range, SC_COPY_NEVER (with SC_COPY_CLONE)
   * when it cannot for any range; nothing was written then, and the
   * caller writes the bytes instead.  src_name names the source in
   * errors, which name the target too.  NULL: always declined (never,
   * with SC_COPY_CLONE).
   */
  int (*copy_from_fd) (struct sc_endpoint *ep, int src_fd,
                       const char *src_name, uint64_t src_off,
                       uint64_t dst_off, uint64_t count, unsigned flags);
  /* The target must hold size bytes, known only now (a target may be
   * opened before its size is known): a new file is sized to it, so a
   * file system that cannot hold it fails before data is written; a
   * device or an existing file must be at least that large.  ep->size
   * is the new size afterwards.  NULL: ENOSPC if size > ep->size.
   */
  int (*set_size) (struct sc_endpoint *ep, uint64_t size);
  /* The data is complete and ends at size: drop what lies past it (an
   * existing file written in place that held more, SC_TARGET_FIT).
   * ep->size is size afterwards where it was cut.  NULL: nothing is
   * dropped (a device, an export, a new file keep their size).
   */
  int (*cut) (struct sc_endpoint *ep, uint64_t size);
  /* A hint that [offset, offset+count) is written and will not be
   * written again before the flush: start moving it to the device now,
   * without waiting, so that the flush finds less to do.  Errors
   * surface at the flush.  NULL: nothing to do.
   */
  void (*writeback) (struct sc_endpoint *ep, uint64_t offset, uint64_t count);
  /* Make everything written durable.  NULL: nothing to do. */
  int (*flush) (struct sc_endpoint *ep);
  /* A target that is complete: flush it and make it visible under its
   * name.  NULL: flush only.
   */
  int (*commit) (struct sc_endpoint *ep);

  /* Release everything; an uncommitted target disappears.  Returns -1
   * if a deferred error surfaced.
   */
  int (*close) (struct sc_endpoint *ep);
};

/* The part every endpoint shares; each kind embeds it first. */
struct sc_endpoint {
  const struct sc_endpoint_ops *ops;
  char *name;                   /* for messages; owned */
  uint64_t size;                /* virtual size in bytes */
  uint32_t block_size;          /* preferred request size, a power of 2 */
  uint32_t max_request;         /* largest request, 0 = no limit */
  uint32_t piece_size;          /* the copy engine's pieces for it: at
                                   most this (a power of 2), 0 = no
                                   wish */
  unsigned max_in_flight;       /* requests at once, 0 = no limit */
  unsigned queue_depth;         /* requests at once that keep it busy (a
                                   server that answers each after a
                                   delay): the engine runs at least this
                                   many, 0 = no wish */
  uint32_t flags;               /* SC_EP_* */
  /* Targets: how zero ranges are made so (SC_TARGET_ZERO_* of
   * sparsecow.h, 0 = auto), applied by the sink (sink.c).
   */
  uint32_t zero_mode;
  /* What the sink leaves sparse on this target (qemu-img convert -S):
   * a run of zeros inside the data of one write shorter than
   * min_sparse bytes is written (0 = SC_ZERO_BLOCK); with allocate,
   * nothing is left sparse and zeros are written.
   */
  uint64_t min_sparse;
  /* With min_sparse: the ranges to write (extents of flags 0; the
   * rest is left out), decided beforehand over the whole source
   * (sc_sparse_decide), or NULL to judge each write on its own.
   */
  const struct sc_extent_list *sparse_writes;
  bool allocate;
  /* A write, zeroing or copy into this endpoint was attempted (set by
   * the wrappers below, from any thread): a target written in place
   * may then hold part of the new content.
   */
  bool written;
  /* Standard input: the path of the file it is redirected from, for
   * names relative to that file's directory (owned, freed by
   * sc_ep_close), or NULL with file_path_unknown set when that file
   * cannot be found (a pipe, a deleted file).  Other endpoints: NULL,
   * false (their name is their path).
   */
  char *file_path;
  bool file_path_unknown;
};

/* ---- endpoint.c: the wrappers, with the defaults of optional slots ---- */

/* Fail with ENOTSUP: "WHAT is not supported by this KIND endpoint". */
extern int sc_ep_unsupported (const struct sc_endpoint *ep, const char *what);

static inline int
sc_ep_pread (struct sc_endpoint *ep, void *buf, size_t count,
             uint64_t offset)
{
  return ep->ops->pread ? ep->ops->pread (ep, buf, count, offset)
                        : sc_ep_unsupported (ep, "reading");
}

static inline void
sc_ep_mark_written (struct sc_endpoint *ep)
{
  __atomic_store_n (&ep->written, true, __ATOMIC_RELAXED);
}

/* After a write, zeroing, copy or cut into ep that returned r (errno
 * set when r is -1): mark ep written unless nothing can have reached
 * it.  A call that failed part way (a short write before ENOSPC, an I/O
 * error) may have left part of its bytes, and one that declined a copy
 * may have copied part of it; a call the target refused outright (an
 * active swap file's ETXTBSY, a read-only file system, no permission)
 * wrote nothing, and one that never copies (SC_COPY_NEVER) neither.
 * Returns r.
 */
static inline int
sc_ep_note_write (struct sc_endpoint *ep, int r)
{
  int e = errno;

  if (r == 0 || r == SC_COPY_DECLINED
      || (r == -1 && e != ETXTBSY && e != EROFS && e != EBADF && e != EPERM
          && e != EACCES && e != ENOTSUP))
    sc_ep_mark_written (ep);
  errno = e;
  return r;
}

static inline int
sc_ep_pwrite (struct sc_endpoint *ep, const void *buf, size_t count,
              uint64_t offset)
{
  if (ep->ops->pwrite == NULL)
    return sc_ep_unsupported (ep, "writing");
  return sc_ep_note_write (ep, ep->ops->pwrite (ep, buf, count, offset));
}

extern int sc_ep_read_some (struct sc_endpoint *ep, void *buf, size_t count,
                            uint64_t offset, size_t *got);
extern int sc_ep_pread_nowait (struct sc_endpoint *ep, void *buf,
                               size_t count, uint64_t offset);
/* Can the source tell what it holds in memory (pread_nowait)? */
extern bool sc_ep_can_pread_nowait (const struct sc_endpoint *ep);
extern int sc_ep_extents (struct sc_endpoint *ep, uint64_t offset,
                          uint64_t count, struct sc_extent_list *list);
/* Ask once for the extents of [offset, offset+count) and check the
 * answer: each extent must go on where the last ended and hold
 * something (EIO otherwise, also for an answer that describes nothing);
 * what runs past the range is cut.  The checked extents are appended to
 * list and *end is where they end (<= offset+count: the answer may be
 * short).  offset+count must not overflow.
 */
extern int sc_ep_extents_step (struct sc_endpoint *ep, uint64_t offset,
                               uint64_t count, struct sc_extent_list *list,
                               uint64_t *end);
/* The same, asking again from where each answer ends, until the whole
 * range is described.
 */
extern int sc_ep_extents_all (struct sc_endpoint *ep, uint64_t offset,
                              uint64_t count, struct sc_extent_list *list);
extern int sc_ep_fingerprint (struct sc_endpoint *ep,
                              struct sc_fingerprint *fp);
extern bool sc_ep_fingerprint_equal (const struct sc_fingerprint *a,
                                     const struct sc_fingerprint *b);
/* The fingerprint of what st describes. */
struct stat;
extern void sc_fingerprint_of_stat (const struct stat *st,
                                    struct sc_fingerprint *fp);
/* Fold the fingerprint of one more file into fp, field by field, so
 * that fp still changes when any of the files does.
 */
extern void sc_fingerprint_fold (struct sc_fingerprint *fp,
                                 const struct sc_fingerprint *f);
extern int sc_ep_zero (struct sc_endpoint *ep, uint64_t count,
                       uint64_t offset, unsigned flags);
/* Write zeros over a range with pwrite, chunk by chunk: the fallback of
 * every zero slot.
 */
extern int sc_ep_write_zeros (struct sc_endpoint *ep, uint64_t count,
                              uint64_t offset);
/* Copy a range of src to dst without reading it here: through src's
 * copy_to, else inside the kernel from a source that is a local file
 * (local_fd); or from a plain descriptor (a spill file).  0,
 * SC_COPY_DECLINED, SC_COPY_NEVER or -1, as the copy_to and
 * copy_from_fd slots, with their SC_COPY_* flags.
 */
extern int sc_ep_copy_range (struct sc_endpoint *src, uint64_t src_off,
                             struct sc_endpoint *dst, uint64_t dst_off,
                             uint64_t count, unsigned flags);
extern int sc_ep_copy_fd_range (int src_fd, const char *src_name,
                                uint64_t src_off, struct sc_endpoint *dst,
                                uint64_t dst_off, uint64_t count,
                                unsigned flags);
extern int sc_ep_set_size (struct sc_endpoint *ep, uint64_t size);
extern int sc_ep_cut (struct sc_endpoint *ep, uint64_t size);
/* The local regular file behind ep, or -1 (the endpoint keeps it). */
extern int sc_ep_local_fd (struct sc_endpoint *ep);
static inline void
sc_ep_writeback (struct sc_endpoint *ep, uint64_t offset, uint64_t count)
{
  if (ep->ops->writeback && count > 0)
    ep->ops->writeback (ep, offset, count);
}

extern int sc_ep_flush (struct sc_endpoint *ep);
extern int sc_ep_commit (struct sc_endpoint *ep);
extern int sc_ep_close (struct sc_endpoint *ep);
/* Close an endpoint after a failure, keeping that failure as the error
 * (closing may set another).
 */
extern void sc_ep_abandon (struct sc_endpoint *ep);

/* Allocate an endpoint of struct_size bytes (the kind's own struct,
 * which starts with struct sc_endpoint), zeroed, with ops and a copy of
 * name.  NULL with the error set.
 */
extern void *sc_ep_new (size_t struct_size, const struct sc_endpoint_ops *ops,
                        const char *name);
/* Free what sc_ep_new allocated. */
extern void sc_ep_free (struct sc_endpoint *ep);

/* ---- endpoint.c: the base of the kinds that hold a local descriptor ---- */

struct sc_fd_endpoint {
  struct sc_endpoint ep;
  int fd;
  bool own_fd;                  /* close fd on close (not for stdio) */
};

/* Slots shared by file, block device and pipe endpoints. */
extern int sc_fd_ep_pread (struct sc_endpoint *ep, void *buf, size_t count,
                           uint64_t offset);
extern int sc_fd_ep_pwrite (struct sc_endpoint *ep, const void *buf,
                            size_t count, uint64_t offset);
/* fsync, where the descriptor can be synced at all. */
extern int sc_fd_ep_flush (struct sc_endpoint *ep);
/* fstat's device, inode, size and times. */
extern int sc_fd_ep_fingerprint (struct sc_endpoint *ep,
                                 struct sc_fingerprint *fp);
extern int sc_fd_ep_local_fd (struct sc_endpoint *ep);
/* Close the descriptor if owned and free the endpoint: 0, or -1 if
 * close failed.
 */
extern int sc_fd_ep_close (struct sc_endpoint *ep);

/* ---- the kinds: constructors used by the openers in endpoint.c ------- */

/* endpoint-file.c: a regular file.  fd is owned unless own_fd is false
 * (stdin).  st is the file's fstat.
 */
struct stat;
extern struct sc_endpoint *sc_file_source_new (int fd, bool own_fd,
                                               const char *name,
                                               const struct stat *st,
                                               enum sc_map_method map);
/* A new regular-file target at path: created under a temporary name in
 * its directory, renamed into place by commit, removed by close.
 */
extern struct sc_endpoint *sc_file_target_new (const char *path,
                                               uint64_t size, unsigned flags);

/* How an existing regular file written in place is sized. */
enum sc_in_place_size {
  SC_IN_PLACE_GROW,             /* grown to what is written, its tail
                                   kept; it reads as zero where not
                                   written only if it was empty */
  SC_IN_PLACE_FIXED,            /* never resized: set_size fails with
                                   ENOSPC for more than it holds (qemu-img
                                   convert -n of raw data) */
  SC_IN_PLACE_FIT,              /* grown to what is written, and cut to
                                   it by cut (an image written over the
                                   file); its old bytes are never taken
                                   for zeros */
};

/* An existing regular file written in place at offsets from 0 (no
 * temporary name; commit only flushes), sized as how says.  All but
 * SC_IN_PLACE_GROW are targets under their own name (SC_EP_IN_PLACE).
 */
extern struct sc_endpoint *sc_file_target_in_place (int fd, bool own_fd,
                                                    const char *name,
                                                    uint64_t size,
                                                    enum sc_in_place_size
                                                    how);

/* endpoint-block.c: a block device.  A target must hold size bytes. */
extern struct sc_endpoint *sc_block_source_new (int fd, bool own_fd,
                                                const char *name);
extern struct sc_endpoint *sc_block_target_new (int fd, bool own_fd,
                                                const char *name,
                                                uint64_t size);
/* sc_block_describe_holders: in sparsecow.h. */
/* Would path be made in the directory of device nodes (devtmpfs, or
 * the file system mounted on /dev)?  There, a name that does not exist
 * is a missing device, never a new regular file.
 */
extern bool sc_path_in_device_dir (const char *path);
/* For SC_TARGET_ZERO_UNMAP: 0 if ep is not a block device or may
 * unmap with zeros guaranteed, -1 (ENOTSUP) if its queue says it
 * cannot, so that nothing is written before that is known.
 */
extern int sc_block_check_unmap (struct sc_endpoint *ep);

/* endpoint-pipe.c: a stream source (pipe, FIFO, character device,
 * socket) and a forward-only target (stdout, a pipe, /dev/null).
 */
extern struct sc_endpoint *sc_pipe_source_new (int fd, bool own_fd,
                                               const char *name);
extern struct sc_endpoint *sc_pipe_target_new (int fd, bool own_fd,
                                               const char *name,
                                               uint64_t size);
/* A target of sc_pipe_target_new whose descriptor is a regular file
 * (standard output redirected with ">"): hold on the file what a qemu
 * writer holds (sc_lock_hold_write) until the target is closed.
 * Nothing for a pipe, a terminal or another character device.  0, or
 * -1 with EBUSY when another process (qemu) uses the file.
 */
extern int sc_pipe_target_lock (struct sc_endpoint *ep);

/* endpoint-tee.c: the members of a target that may be a tee, so that
 * each can be looked at alone (read back by --verify).  Any other
 * target is a tee of one: itself.  sc_tee_member returns member i, or
 * NULL once it has failed; sc_tee_fail drops member i with the calling
 * thread's error (nothing for a target that is not a tee).
 */
extern size_t sc_tee_count (struct sc_endpoint *ep);
extern struct sc_endpoint *sc_tee_member (struct sc_endpoint *ep, size_t i);
extern void sc_tee_fail (struct sc_endpoint *ep, size_t i);

/* endpoint-nbd.c: kill every NBD server started here and still
 * running (async-signal-safe, for sc_cleanup_temporaries).
 */
extern void sc_nbd_kill_servers (void);

/* An NBD source whose server is played by functions instead of a
 * connection, for the fuzz target of the replies: every slot of the
 * endpoint, and every check of what the server answers, is the one a
 * real connection goes through; only libnbd's transport is replaced.
 * The fields are what libnbd reports after the handshake, unchecked
 * (nbd_get_size, nbd_get_block_size: 0 when not advertised, the meta
 * contexts agreed).  Each command calls its function once and gets 0
 * or the errno of an error reply.  block_status answers the request
 * [offset, offset+count) with any number of reply chunks, each given
 * to extent() as libnbd gives one to its extent callback (the context's
 * name, the offset, pairs of length and flags), with user_data.
 */
typedef int (*sc_nbd_extent_fn) (void *user_data, const char *context,
                                 uint64_t offset, uint32_t *entries,
                                 size_t nr_entries, int *error);
struct sc_nbd_player {
  int64_t size;
  int64_t min_block, pref_block, max_block;
  bool base_allocation, allocation_depth;
  int (*pread) (void *opaque, void *buf, uint64_t count, uint64_t offset);
  int (*block_status) (void *opaque, uint64_t count, uint64_t offset,
                       sc_nbd_extent_fn extent, void *user_data);
  void *opaque;
};
extern struct sc_endpoint *sc_nbd_played_source_new
  (const struct sc_nbd_player *player);
/* The most extents kept from one block status reply: a reply of more
 * describes a prefix, and the rest is asked again.
 */
#define SC_NBD_MAX_REPLY_EXTENTS 65536

/* endpoint-null.c: for tests.  A source of size bytes that all read as
 * zero (one hole extent), or a target of size bytes that drops what it
 * is given and counts it.
 */
extern struct sc_endpoint *sc_null_source_new (uint64_t size);
extern struct sc_endpoint *sc_null_target_new (uint64_t size);
/* Bytes written and bytes zeroed on a null target so far. */
extern void sc_null_target_counts (struct sc_endpoint *ep, uint64_t *written,
                                   uint64_t *zeroed);

/* endpoint-memory.c: len bytes that the caller keeps until the endpoint
 * is closed, as a seekable, thread-safe source (everything is data) or,
 * with stream, as a stream source read once in order (SC_EP_STREAM).
 * name is for messages only: it is never opened.
 */
extern struct sc_endpoint *sc_memory_source_new (const void *bytes,
                                                 size_t len,
                                                 const char *name,
                                                 bool stream);

#endif /* SPARSECOW_ENDPOINT_H */
