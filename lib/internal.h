/* libsparsecow internals: helpers and prototypes shared inside lib/,
 * grouped by the file that defines them.  Not installed.
 */
#ifndef SPARSECOW_INTERNAL_H
#define SPARSECOW_INTERNAL_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <endian.h>
#include <sys/types.h>
#include <inttypes.h>

#include "sparsecow.h"
#include "endpoint.h"

/* ---- small helpers ------------------------------------------------- */

#define SC_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SC_MAX(a, b) ((a) > (b) ? (a) : (b))

/* i is a power of two here; these are for alignment arithmetic. */
#define SC_IS_ALIGNED(x, a) (((x) & ((uint64_t) (a) - 1)) == 0)
#define SC_ROUND_DOWN(x, a) ((x) & ~((uint64_t) (a) - 1))
#define SC_ROUND_UP(x, a) (((x) + (uint64_t) (a) - 1) & ~((uint64_t) (a) - 1))
#define SC_DIV_ROUND_UP(x, d) (((x) + (d) - 1) / (d))

/* Add or multiply with an overflow check: true on overflow. */
#define SC_ADD_OVERFLOW(a, b, r) __builtin_add_overflow ((a), (b), (r))
#define SC_MUL_OVERFLOW(a, b, r) __builtin_mul_overflow ((a), (b), (r))

/* Free on scope exit. */
static inline void sc_cleanup_free (void *ptr) { free (*(void **) ptr); }
#define CLEANUP_FREE __attribute__ ((cleanup (sc_cleanup_free)))

/* Big-endian loads and stores from unaligned byte buffers. */
static inline uint16_t sc_get_be16 (const void *p)
{ uint16_t v; __builtin_memcpy (&v, p, 2); return be16toh (v); }
static inline uint32_t sc_get_be32 (const void *p)
{ uint32_t v; __builtin_memcpy (&v, p, 4); return be32toh (v); }
static inline uint64_t sc_get_be64 (const void *p)
{ uint64_t v; __builtin_memcpy (&v, p, 8); return be64toh (v); }
static inline void sc_put_be16 (void *p, uint16_t v)
{ v = htobe16 (v); __builtin_memcpy (p, &v, 2); }
static inline void sc_put_be32 (void *p, uint32_t v)
{ v = htobe32 (v); __builtin_memcpy (p, &v, 4); }
static inline void sc_put_be64 (void *p, uint64_t v)
{ v = htobe64 (v); __builtin_memcpy (p, &v, 8); }

/* ---- error.c --------------------------------------------------------- */

/* Record errnum and a printf-style message for this thread.  errnum 0
 * means "not a system error" and is stored as EINVAL.
 */
extern void sc_set_error (int errnum, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
/* As sc_set_error, for damage of an image that is reported with an
 * errno of a failure (EIO: a table or cluster past the end of the
 * file, an image cut short), so that a caller can tell it from a read
 * that failed; sc_error_is_damage says which until the next error.
 */
extern void sc_set_damage (int errnum, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
extern bool sc_error_is_damage (void);
/* Prefix the current message with "prefix: ". */
extern void sc_error_prefix (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));
/* Make sure the current message names what it is about: prefix it with
 * "name: " unless it starts with name already (as "name: " or as the
 * subject of a sentence, "name and ...").  Some endpoints name themselves
 * (a qcow2 image may be reporting about one of its backing files),
 * others leave it to the caller, who knows which side failed.
 */
extern void sc_error_name (const char *name);
/* The current error (errno and message), kept across calls that may
 * set another (a close on the way out) and set again as it was.
 */
#define SC_ERROR_LEN 1024
struct sc_error_saved {
  int errnum;
  char msg[SC_ERROR_LEN];
};
extern void sc_error_save (struct sc_error_saved *saved);
extern void sc_error_restore (const struct sc_error_saved *saved);

/* ---- util.c ---------------------------------------------------------- */

/* Is the buffer all zero bytes? */
extern bool sc_is_zero (const void *buf, size_t len);
/* Read/write exactly count bytes at offset, retrying short I/O and
 * EINTR.  A read past the end of file fails with EIO ("short read").
 */
extern int sc_full_pread (int fd, void *buf, size_t count, uint64_t offset);
extern int sc_full_pwrite (int fd, const void *buf, size_t count,
                           uint64_t offset);
/* Write all of buf to a (possibly unseekable) fd. */
extern int sc_full_write (int fd, const void *buf, size_t count);
/* Number of online CPUs, at least 1. */
extern unsigned sc_online_cpus (void);
/* ---- extent.c -------------------------------------------------------- */

/* Append the data/hole extents of [offset, offset+count) of an open
 * regular file to list, by the given method.  A file system without
 * SEEK_HOLE support yields one data extent.
 */
extern int sc_fd_extents (int fd, enum sc_map_method method,
                          uint64_t offset, uint64_t count,
                          struct sc_extent_list *list);

/* ---- tempfile.c ------------------------------------------------------ */

/* Publish a temporary file's name (owned by the caller, alive until
 * unregistered) so sc_cleanup_temporaries() can remove it.  Returns a
 * slot, or -1 with EMFILE when too many are registered.
 */
extern int sc_temporary_register (char *name);
extern void sc_temporary_unregister (int slot);
/* ".NAME.sparsecow-XXXXXX" in the directory of path, for mkostemp;
 * malloc'd, NULL when out of memory.
 */
extern char *sc_temporary_template (const char *path);
/* After sc_interrupt: set the error (EINTR, "interrupted") and return
 * -1; else 0.  Called where a long run can stop between two steps.
 */
extern int sc_check_interrupt (void);
/* An anonymous temporary file for data that must wait: next to near
 * when that is a regular file (or not there yet), else in $TMPDIR or
 * /var/tmp.  It disappears when closed, whatever happens.  Returns the
 * descriptor, or -1 with the error set.
 */
extern int sc_spill_open (const char *near);
/* The same, and *where (when where is not NULL): the directory that
 * holds it, for messages, which the caller frees.
 */
extern int sc_spill_open_in (const char *near, char **where);
/* The spill file of a command that writes target dst (named target):
 * next to it when it is a local file, but in $TMPDIR when dst is
 * written in place and its directory cannot take one (EACCES, EPERM,
 * EROFS), as for a device.  *near: target, or NULL when the file is in
 * $TMPDIR, for messages.  Returns as sc_spill_open.
 */
struct sc_endpoint;
extern int sc_spill_open_for (struct sc_endpoint *dst, const char *target,
                              const char **near);

/* ---- copy.c: the ordered pipeline under every data-moving command ----
 *
 * The source is cut into pieces: each hole/zero extent is one piece
 * (never read), data extents are cut at multiples of request_size.
 * Worker threads read data pieces into buf (bytes past src->size read
 * as zeros) and call work(); emit() is then called for every piece in
 * source order, on one thread at a time, and finish() after it, on any
 * thread, in parallel.  At most a bounded number of pieces are in
 * flight, so memory does not grow with the source.
 */
struct sc_piece {
  uint64_t offset;              /* in the source */
  uint64_t length;              /* data pieces: <= request_size */
  uint32_t flags;               /* SC_EXTENT_* (0 = data, buf is filled) */
  void *buf;                    /* request_size bytes; data read here */
  void *out;                    /* out_size bytes of scratch for work() */
  size_t out_len;               /* free for work()/emit()/finish() */
  uint64_t user;                /* free for work()/emit()/finish() */
  uint64_t placed;              /* free for emit() to tell finish() */
  bool moved;                   /* move() took it: buf was not read */
  /* The extents said data (work() may find it zero later): what the
   * progress count counts.
   */
  bool counts;
};

struct sc_pipeline {
  struct sc_endpoint *src;
  /* Extents to process (sorted, contiguous, covering what is to be
   * copied); NULL asks the source for the extents of [0, src->size) a
   * window at a time as the copy goes (each answer must continue where
   * the last one ended, may cover less than asked, never more and
   * never nothing; anything else is an EIO error).  Ignored
   * for a stream source (SC_EP_STREAM), which is read to its end in
   * pieces of request_size; the last one may be shorter, and pieces of
   * length 0 reach neither work() nor emit().
   */
  const struct sc_extent_list *extents;
  uint32_t request_size;        /* 0 = 1 MiB; a power of two */
  unsigned threads;             /* 0 = online CPUs */
  /* When not NULL: how many of the workers take pieces (at least one),
   * read atomically as the run goes; the others wait, and still emit
   * and finish pieces, until the caller raises it.  For a pipeline that
   * runs beside other work of the caller and takes the CPUs that work
   * leaves once it ends (a rise is seen within a piece's time).
   */
  const unsigned *active;
  size_t out_size;              /* scratch per piece, 0 = none */
  /* On a worker thread, in place of reading a data piece (and in the
   * same turn as a read, for a source that takes one request at a
   * time); may be NULL.  Returns 0 when it moved the piece to where it
   * goes without the pipeline reading it: the piece then skips work()
   * and reaches emit() with moved set.  1: read it as usual.  -1 with
   * the error set.  Not for stream sources.
   */
  int (*move) (struct sc_piece *piece, void *opaque);
  /* On a worker thread; may be NULL.  Returns 0 or -1 with error set. */
  int (*work) (struct sc_piece *piece, void *opaque);
  /* In source order, one at a time (not always on the same thread).
   * Returns 0, 1 to have finish() called on the piece, or -1 with error
   * set.
   */
  int (*emit) (struct sc_piece *piece, void *opaque);
  /* After emit() of a piece that asked for it, on a worker thread, in
   * parallel with the work(), emit() and finish() of other pieces; may
   * be NULL.  What only depends on what emit() decided in order (where
   * the piece's bytes go) is done here, off the ordered path.  The
   * piece's slot is reused only after it returns, and the run returns
   * only after every finish() has.  Returns 0 or -1 with error set.
   */
  int (*finish) (struct sc_piece *piece, void *opaque);
  void *opaque;
  /* After each piece is emitted, with the bytes processed so far: the
   * bytes of the data extents only (holes and zero extents cost nothing
   * to move), of the list given or, without one, of the source's
   * extents, counted in a first pass over them before the copy when
   * progress is wanted.  A stream's pieces are all data, and its total
   * is 0 until its end.
   */
  sc_progress_fn progress;
  void *progress_opaque;
  /* A stream source: every byte read is tested for zeros as it is
   * read, and each run of whole pieces of zeros, or of zeros up to the
   * end of the stream, comes as one zero piece (SC_EXTENT_ZERO, buf not
   * filled) that skips work(): for a consumer to whom a read piece
   * that is all zeros means the same as a zero piece.  Pieces still
   * start at multiples of request_size.
   */
  bool stream_zeros;
  /* Count every byte instead, holes and zero extents too, which are
   * then handed out in pieces of under 1% of the total (from
   * request_size up to 64 MiB): for a target that is written whole
   * (-S 0, a pipe), or read back whole, where a hole costs as much as
   * data.
   */
  bool count_all;
  /* With count_all: holes and zero extents cost little however long
   * they are (a read-back that finds them in a file's extent map):
   * pieces of under 1% of the total with no upper bound, so that the
   * pieces of a guest of terabytes stay few.
   */
  bool cheap_holes;
};

/* Run the pipeline to the end, or to the first error (which is the one
 * reported; the rest of the pieces are abandoned).
 */
extern int sc_pipeline_run (const struct sc_pipeline *p);
/* The bytes of data in src's extents, the total a pipeline's progress
 * counts without count_all: 0, or -1 with the error set and named.
 */
extern int sc_count_data (struct sc_endpoint *src, uint64_t *total);
/* sc_copy without its last step: dst is left to be flushed by the
 * caller (sc_ep_flush), who may start other work while it flushes.
 * Returns 0, or -1 with the error set as sc_copy sets it.
 */
extern int sc_copy_unflushed (struct sc_endpoint *src,
                              struct sc_endpoint *dst,
                              const struct sc_copy_opts *opts);

/* Keep requests and requests in flight inside what an endpoint takes:
 * the largest power of two up to its maximum request and its piece
 * size, and no more threads than requests it allows at once.
 */
extern void sc_pipeline_fit (const struct sc_endpoint *ep,
                             uint32_t *request_size, unsigned *threads);

/* ---- sink.c: the target-write rules of every data path -------------- */

/* The granularity of zero detection inside data, as qemu-img convert's
 * default (-S 4k): a target that already reads as zero stays sparse
 * wherever a whole aligned block of this size is zero.
 */
#define SC_ZERO_BLOCK 4096

/* Where the bytes given to the sink come from: src holds them at the
 * same offsets as the target gets them.  One per copy, shared by its
 * threads.
 */
struct sc_sink_clone {
  struct sc_endpoint *src;
  bool never;                   /* the pair cannot share blocks: stop
                                   asking (atomic) */
  uint64_t shared;              /* bytes shared, not written (atomic) */
};

/* Write length bytes of guest data at offset.  With detect_zeroes, on a
 * target that reads as zero already, aligned 4 KiB blocks that are all
 * zero are skipped, or with dst->min_sparse what sc_sparse_run leaves
 * out; on a local file or device with zero mode auto or unmap they are
 * made zero ranges of that mode (neighbours merged into one request);
 * nothing is skipped with dst->allocate.  With cl (may be NULL), each
 * range that is written is first offered to dst as a range of cl->src
 * to share (SC_COPY_CLONE), so that a file system with reflinks
 * writes nothing.  0, or -1 with the error set (without the target's
 * name).
 */
extern int sc_sink_write (struct sc_endpoint *dst, const void *buf,
                          uint64_t length, uint64_t offset,
                          bool detect_zeroes, struct sc_sink_clone *cl);
/* qemu-img convert -S min_sparse: whether the first *len bytes of buf
 * (length bytes at offset of the target) are written (true) or left
 * out as zeros (false).  In 512-byte sectors, as qemu: leading zeros
 * are left out; data takes with it the zeros that follow it when they
 * are fewer than min_sparse bytes before more data; the ends of data
 * are rounded up, and of zeros down, to the largest power of two in
 * min_sparse, counted from offset 0 of the target.  *len > 0.
 */
extern bool sc_sparse_run (const void *buf, uint64_t length,
                           uint64_t offset, uint64_t min_sparse,
                           uint64_t *len);
/* qemu-img convert -S min_sparse over all of src, before anything is
 * written, as qemu-img decides: status (opaque, offset, max, &len,
 * &data) answers as qemu's block status of src at offset (a run of
 * 0 < len <= max bytes, data or not); the end of a run is cut back to
 * align bytes (the source's cluster size, 512 for raw) unless that
 * leaves nothing; a run of data is read in buffers of 2 MiB from its
 * start, each judged alone (sc_sparse_run): zeros at the end of a
 * buffer or of a run are never written, even when more data follows.
 * write (opaque, start, end) gets each range that qemu-img writes, in
 * order.  0, or -1 with the error set.
 */
typedef int (*sc_status_fn) (void *opaque, uint64_t offset, uint64_t max,
                             uint64_t *len, bool *data);
typedef int (*sc_range_fn) (void *opaque, uint64_t start, uint64_t end);
extern int sc_sparse_decide (struct sc_endpoint *src, uint64_t min_sparse,
                             uint32_t align, sc_status_fn status,
                             sc_range_fn write, void *opaque);
/* Make a hole or zero range of the guest read as zeros on dst: nothing
 * on a target that reads as zero already, else as dst->zero_mode says
 * (nothing at all for SC_TARGET_ZERO_SKIP).  With dst->allocate, zeros
 * are written where the target reads as zero already.
 */
extern int sc_sink_zero (struct sc_endpoint *dst, uint64_t length,
                         uint64_t offset);
/* Does sc_sink_zero write every byte of a range to dst as data: with
 * dst->allocate (-S 0), or into a stream that is not a file (a pipe
 * takes every byte in order)?  Then a hole costs as much as data, and
 * the progress count counts it.
 */
extern bool sc_sink_zero_is_written (const struct sc_endpoint *dst);
/* Before writing [0, length) of dst: a remote export whose block status
 * says it reads as zero throughout is from then on a target that reads
 * as zero (SC_EP_FRESH_ZEROS).  Returns 0 (also when it holds data or
 * cannot tell), or -1 on an error.
 */
extern int sc_sink_prepare (struct sc_endpoint *dst, uint64_t length);

/* ---- digest.c: the content digest (sparsecow(1), DIGEST) ------------- */

#define SC_DIGEST_LEN 32        /* SHA-256 */
/* The block size pack hashes with when the cluster size allows: 64 KiB
 * blocks cost 2 SHA-256 finalisations per MiB, nothing beside the
 * hashing itself, and the same content has the same digest in images
 * of any cluster size from 64 KiB up.
 */
#define SC_DIGEST_BLOCK_SIZE 65536

/* What one block of guest content adds to the digest. */
struct sc_digest_block {
  bool zero;                    /* all zero bytes: no hash */
  unsigned char hash[SC_DIGEST_LEN];
};

/* Hash the blocks of buf, len bytes of guest content from offset (a
 * multiple of block_size), into DIV_ROUND_UP (len, block_size) entries
 * of out.  Only the bytes below limit (the virtual size) belong to
 * blocks: a block that ends past it is cut there, and one that starts
 * past it is a zero block.  Thread-safe.  0, or -1 with errno ENOTSUP
 * (no SHA-256 in libcrypto), ENOMEM, EIO.
 */
extern int sc_digest_blocks (uint32_t block_size, const void *buf,
                             uint64_t offset, size_t len, uint64_t limit,
                             struct sc_digest_block *out);

/* Plain SHA-256 of a byte string fed in parts (the digest below, the
 * digest extension's mapping fingerprint): init, then update any
 * number of times, then final, which frees the context;
 * sc_sha256_free frees one not finished (and does nothing to one
 * finished or never started).  0, or -1 with errno ENOTSUP (no SHA-256
 * in libcrypto), ENOMEM, EIO.
 */
struct sc_sha256 {
  void *ctx;                    /* EVP_MD_CTX */
};
extern int sc_sha256_init (struct sc_sha256 *s);
extern int sc_sha256_update (struct sc_sha256 *s, const void *buf,
                             size_t len);
extern int sc_sha256_final (struct sc_sha256 *s,
                            unsigned char out[SC_DIGEST_LEN]);
extern void sc_sha256_free (struct sc_sha256 *s);

/* The digest of one image, fed in guest order from one thread. */
struct sc_digest {
  struct sc_sha256 sha;
  uint32_t block_size;
  uint64_t blocks;              /* blocks added so far */
  uint64_t zero_run;            /* zero blocks not yet recorded */
};
extern int sc_digest_init (struct sc_digest *d, uint32_t block_size);
extern void sc_digest_free (struct sc_digest *d);
/* The next n blocks, as sc_digest_blocks found them. */
extern int sc_digest_add (struct sc_digest *d,
                          const struct sc_digest_block *b, size_t n);
/* The next nblocks blocks are zero blocks (a hole). */
extern void sc_digest_add_zero (struct sc_digest *d, uint64_t nblocks);
/* The digest of content of virtual_size bytes: the blocks added must
 * cover it, and any past it must be zero blocks.  Call sc_digest_free
 * after, whatever it returns.
 */
extern int sc_digest_final (struct sc_digest *d, uint64_t virtual_size,
                            unsigned char out[SC_DIGEST_LEN]);

/* ---- codec.c --------------------------------------------------------- */

/* Compress one cluster.  Returns the compressed length (> 0), 0 if the
 * result would not be smaller than out_len (store it uncompressed), or
 * -1 on error.  Deflate output is raw deflate with a 4 KiB window, as
 * qemu decodes it; zstd output is one frame.  Thread-safe.
 */
extern ssize_t sc_compress (enum sc_codec codec, int level,
                            const void *in, size_t in_len,
                            void *out, size_t out_len);
/* Decompress into exactly out_len bytes from at most in_len input
 * bytes (the input may run on into the next compressed cluster).
 * Returns 0, or -1 if the data does not decode to out_len bytes: errno
 * EILSEQ, which tells damaged stored bytes from a failed read (verify
 * counts them as content that differs), or ENOMEM.
 */
extern int sc_decompress (enum sc_codec codec,
                          const void *in, size_t in_len,
                          void *out, size_t out_len);
/* Choose the deflate implementation for the whole process: "zlib", or
 * "isal" when built with ISA-L.  Without a call, SPARSECOW_DEFLATE
 * chooses, and ISA-L is the default where it is built in.  Returns -1
 * (EINVAL) for a name this build does not have.  Call before any
 * thread compresses or decompresses.
 */
extern int sc_deflate_select (const char *name);
/* "zlib" or "isal", or NULL (error set) if SPARSECOW_DEFLATE is bad. */
extern const char *sc_deflate_selected (void);
/* "deflate" / "zstd"; parse returns -1 for an unknown name. */
extern const char *sc_codec_name (enum sc_codec codec);
extern int sc_codec_parse (const char *name, enum sc_codec *codec);

#endif /* SPARSECOW_INTERNAL_H */
