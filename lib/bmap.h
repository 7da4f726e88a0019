/* Block maps in the format of bmaptool (read: bmap formats 1.0 to 1.4
 * and 2.0; written: 2.0 with SHA-256): private to libsparsecow, not
 * installed.  lib/bmap.c.
 */
#ifndef SPARSECOW_BMAP_H
#define SPARSECOW_BMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sparsecow.h"

/* The block size of the bmaps written here: bmaptool create takes the
 * file system's block size, which is 4 KiB on every common Linux file
 * system, and its copy works with any.
 */
#define SC_BMAP_BLOCK_SIZE 4096
#define SC_BMAP_DIGEST_LEN 32          /* SHA-256, of the bmaps written */
/* The longest checksum read: SHA-512. */
#define SC_BMAP_MAX_DIGEST_LEN 64

/* One <Range>: blocks first..last, both included. */
struct sc_bmap_range {
  uint64_t first, last;
  bool has_digest;                      /* the checksum attribute was
                                           there */
  uint8_t digest_len;                   /* bytes of digest given */
  uint32_t text_pos;                    /* of <Range> in the file, for
                                           messages */
  unsigned char digest[SC_BMAP_MAX_DIGEST_LEN];
};

struct sc_bmap {
  char *name;                           /* for messages */
  unsigned chksum;                      /* index of the checksum type in
                                           bmap.c's table */
  uint64_t image_size;                  /* bytes */
  uint32_t block_size;                  /* a power of two */
  uint64_t blocks_count;
  uint64_t mapped_blocks;
  struct sc_bmap_range *ranges;         /* sorted, apart, inside the image */
  size_t nb_ranges;
};

/* sc_bmap_parse, with the check of the file's own checksum left out
 * when check_digest is false: for the fuzz target, so that inputs with
 * any checksum reach what comes after the parse.
 */
extern struct sc_bmap *bmap_parse (const void *buf, size_t len,
                                   const char *name, bool check_digest);

/* The bytes [*start, *end) of range i (the last block may be cut by the
 * image size).
 */
extern void bmap_range_bytes (const struct sc_bmap *bmap, size_t i,
                              uint64_t *start, uint64_t *end);

/* ---- writing a bmap while data goes by --------------------------------- */

struct bmap_builder;

/* A builder that keeps its lines in a spill file near near (a path, or
 * NULL for $TMPDIR).  NULL with the error set.
 */
extern struct bmap_builder *bmap_builder_new (const char *near);
/* Bytes [offset, offset+len) are data (buf NULL: zeros).  Calls come in
 * increasing offset order without overlap; the blocks they touch are
 * mapped, and what the calls leave out of a mapped block is hashed as
 * zeros (it is a hole, which reads as zeros).
 */
extern int bmap_builder_data (struct bmap_builder *b, uint64_t offset,
                              const void *buf, size_t len);
/* Close the last range and write the whole bmap of an image of
 * image_size bytes to dst (a target sized here, not committed).
 */
extern int bmap_builder_finish (struct bmap_builder *b, uint64_t image_size,
                                struct sc_endpoint *dst);
extern void bmap_builder_free (struct bmap_builder *b);

/* ---- reading through a bmap --------------------------------------------- */

/* A source endpoint over inner (kept by the caller, who closes it after
 * this one) whose extents are the bmap's ranges (data) and the blocks
 * between them (holes), and whose reads are checked against the ranges'
 * checksums: the bytes of each range are hashed in order as they are
 * read (reads that skip mapped bytes read them first), and a range
 * whose digest differs fails the read that completes it with EBADMSG,
 * "INNER and BMAP are out of sync at offset N" (N: where the range
 * starts).  inner must be seekable and hold exactly the image size;
 * with sector_tail, it may also be that size rounded up to a multiple
 * of 512 bytes when the bytes past the image size read as zero (a qcow2
 * image's virtual size is whole sectors, the raw file it was packed
 * from need not be): the endpoint then has the bmap's image size.
 * Reads may run at once where inner's may (SC_EP_THREAD_SAFE): the
 * ranges are still hashed in order, and the first range out of sync by
 * offset is the one reported.
 */
extern struct sc_endpoint *bmap_checked_source (struct sc_endpoint *inner,
                                                const struct sc_bmap *bmap,
                                                bool sector_tail);
/* Count the reads of bmap_checked_finish with fn: done and total are
 * bytes of the ranges (call before any read).
 */
extern void bmap_checked_progress (struct sc_endpoint *ep, sc_progress_fn fn,
                                   void *opaque);
/* Read and check every range not read yet: 0 when all matched. */
extern int bmap_checked_finish (struct sc_endpoint *ep);

#endif /* SPARSECOW_BMAP_H */
