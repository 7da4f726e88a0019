/* libsparsecow: move sparse data in and out of qcow2 images.
 *
 * Every call that can fail returns -1 (or NULL) and records a
 * per-thread message and errno, read with sc_error_message() and
 * sc_error_errno().  Nothing in the library prints.
 */
#ifndef SPARSECOW_H
#define SPARSECOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- version ------------------------------------------------------- */

/* The version of this header, as a number: major * 10000 + minor * 100
 * + micro.  Compare with SC_VERSION_NUMBER (maj, min, mic).
 */
#define SC_VERSION_MAJOR 0
#define SC_VERSION_MINOR 1
#define SC_VERSION_MICRO 0
#define SC_VERSION_NUMBER(maj, min, mic) ((maj) * 10000 + (min) * 100 + (mic))
#define SC_VERSION \
  SC_VERSION_NUMBER (SC_VERSION_MAJOR, SC_VERSION_MINOR, SC_VERSION_MICRO)

/* The version of the library linked at run time, "MAJOR.MINOR.MICRO"
 * (a static string).  Never fails.
 */
extern const char *sc_version (void);

/* ---- error.c ---------------------------------------------------- */

/* The message of the last failed call in this thread ("" if none). */
extern const char *sc_error_message (void);
/* The errno of the last failed call in this thread (0 if none). */
extern int sc_error_errno (void);

/* ---- extent.c: where data lives ---------------------------------- */

/* Extent flags.  An extent with neither flag holds data. */
#define SC_EXTENT_HOLE 1        /* unallocated (reads as zeros here) */
#define SC_EXTENT_ZERO 2        /* reads as zeros */

struct sc_extent {
  uint64_t offset;
  uint64_t length;
  uint32_t flags;
};

/* A growable list of extents, sorted by offset and contiguous. */
struct sc_extent_list {
  struct sc_extent *ext;
  size_t len;
  size_t cap;
};

extern void sc_extent_list_init (struct sc_extent_list *list);
extern void sc_extent_list_free (struct sc_extent_list *list);
/* Append, merging with the last extent when flags match and they touch. */
extern int sc_extent_list_append (struct sc_extent_list *list,
                                  uint64_t offset, uint64_t length,
                                  uint32_t flags);

/* How to find the data of a regular file. */
enum sc_map_method {
  SC_MAP_SEEK = 0,              /* SEEK_DATA/SEEK_HOLE (default) */
  SC_MAP_FIEMAP,                /* FIEMAP with FIEMAP_FLAG_SYNC */
  SC_MAP_NONE,                  /* everything is data */
  /* FIEMAP with FIEMAP_FLAG_SYNC, every allocated extent data, the
   * unwritten (preallocated) ones too, falling back to SEEK_DATA where
   * there is no FIEMAP: the blocks bmaptool create maps (its
   * Filemap.py).  Unlike SEEK_DATA, whose answer for unwritten extents
   * depends on the page cache (a read makes them data on ext4), it
   * gives the same map every time for an unchanged file.
   */
  SC_MAP_ALLOCATED,
};

/* ---- endpoint.c: where data comes from and goes to ------------------ */

/* An open source or target: a regular file, a block device, a pipe or
 * the guest view of a qcow2 image.  Opaque; every endpoint is released
 * with sc_endpoint_close().
 */
struct sc_endpoint;

/* Open a data source by name: a path (regular file, block device, FIFO
 * or character device), "-" (stdin) or an NBD URI (sc_is_nbd_uri).  map selects how a regular
 * file's extents are found.  Pipes, FIFOs, sockets and character
 * devices are streams (sc_endpoint_is_stream): read once, in order.
 * Returns NULL with errno ENOENT, EACCES (cannot open), EINVAL (a
 * directory or another kind of file), ENOMEM.
 */
extern struct sc_endpoint *sc_endpoint_open_source (const char *name,
                                                    enum sc_map_method map);

/* Target creation flags. */
#define SC_TARGET_FORCE  0x1    /* replace an existing file */
#define SC_TARGET_ZEROED 0x2    /* the target reads as zero already (as
                                   qemu-img convert --target-is-zero):
                                   zero ranges are not written */
#define SC_TARGET_DEVICE 0x4    /* the target is a block device, which
                                   may be written (writing one is also
                                   allowed by SC_TARGET_FORCE); any other
                                   target is refused (ENOTBLK) */
#define SC_TARGET_IN_PLACE 0x8  /* write into the existing file or device
                                   at name, without a temporary name and
                                   without resizing it (as qemu-img
                                   convert -n): it must exist and hold
                                   the data */
#define SC_TARGET_FIT 0x80      /* with SC_TARGET_IN_PLACE: an existing
                                   regular file takes the length of what
                                   is written (grown as needed, cut to
                                   the end of a complete image by
                                   sc_pack), for an image written over
                                   a file; a device keeps its size */
/* How ranges that read as zero are made so on a target that does not
 * read as zero already (one of these, or none for "auto": unmap where
 * the target guarantees that unmapped ranges read as zero, else zero
 * them without writing where it can, else write zeros).
 */
#define SC_TARGET_ZERO_UNMAP 0x10 /* unmap, or fail (ENOTSUP) where the
                                     target cannot guarantee zeros */
#define SC_TARGET_ZERO_WRITE 0x20 /* zero without unmapping: write zeros,
                                     or a device's BLKZEROOUT */
#define SC_TARGET_ZERO_SKIP 0x40  /* leave them as they are: only the
                                     image's data ranges are written */
#define SC_TARGET_ZERO_MASK 0x70

/* Open a data target of size bytes: an NBD URI (sc_is_nbd_uri; the
 * export must hold size bytes), a regular file (created under a
 * temporary name in its directory, sized with ftruncate so a file
 * system that cannot hold it fails before any data is written), a
 * block device (must be at least size bytes), a FIFO or character
 * device, or "-" (stdout); the last two are written forward only.
 * A symbolic link to a regular file is written through.  A regular
 * file appears at name only after sc_endpoint_commit(); closing
 * without committing removes it.  A file replaced with SC_TARGET_FORCE
 * keeps its owner, group and permission bits (where this process may
 * set them).  With SC_TARGET_IN_PLACE an existing file or device is
 * written where it is, keeping its size (and any tail past size), or
 * with SC_TARGET_FIT too, a file taking the length of the image.
 * A block device is a target only with SC_TARGET_FORCE or
 * SC_TARGET_DEVICE, and is opened exclusively (O_EXCL), which fails
 * only while it is mounted, a swap area, held by another device or
 * open with O_EXCL elsewhere (not merely open); the message of EBUSY
 * names what holds it where that can be found (mount points in
 * /proc/self/mountinfo, holders in /sys/dev/block/MAJ:MIN/holders,
 * swap areas, and the processes that have it open, among which the
 * one that holds it exclusively).
 * Returns NULL with errno EEXIST (exists, no SC_TARGET_FORCE; a block
 * device without SC_TARGET_FORCE or SC_TARGET_DEVICE), ENOTBLK (not a
 * block device, with SC_TARGET_DEVICE: also "-", an NBD URI and a name
 * that does not exist), ENOENT (no
 * such file with SC_TARGET_IN_PLACE; a name in /dev, on devtmpfs or
 * the file system mounted there, that does not exist, whatever the
 * flags: no regular file is created there), ENOTBLK (a regular file
 * in /dev, not replaced), EISDIR, EBUSY (a block device
 * that is mounted or in use), EROFS (a read-only block device: BLKROGET
 * at open), ENOSPC (device too small), EFBIG (file
 * system or ulimit too small), EINVAL (more than one SC_TARGET_ZERO_*
 * flag), EACCES, ENOMEM.
 */
extern struct sc_endpoint *sc_endpoint_open_target (const char *name,
                                                    uint64_t size,
                                                    unsigned flags);

/* The same from a descriptor the caller opened and keeps (it is not
 * closed by sc_endpoint_close).  name is used in messages.  A regular
 * file source reads at offsets from 0 (finding its extents moves the
 * descriptor's file position).  A regular file target is
 * written in place at offsets from 0, not at the descriptor's position
 * (grown to size if smaller, its tail kept if longer; it reads as zero
 * where not written only if it was empty); a block device must hold
 * size bytes; a pipe or character device is written forward.  Returns
 * NULL with errno EBADF (closed, or a target not open for writing),
 * EINVAL (a directory or another kind of file, a target opened with
 * O_APPEND), ENOSPC, EFBIG, ENOMEM.
 */
extern struct sc_endpoint *sc_endpoint_open_fd_source (int fd,
                                                       const char *name,
                                                       enum sc_map_method map);
extern struct sc_endpoint *sc_endpoint_open_fd_target (int fd,
                                                       const char *name,
                                                       uint64_t size);

/* One target that writes everything to each of targets[0..n-1] (files
 * and block devices opened with sc_endpoint_open_target, 1 to 64, all
 * with the same flags), for writing one image to several devices while
 * reading it once.  The tee owns the targets from this call on (they
 * are closed with it, or now if it cannot be made).  A member whose
 * request fails is dropped with its first error and the others go on;
 * a call on the tee fails (EIO, "every target failed") only when no
 * member is left.  Commit and close act on every member.  Returns NULL
 * with errno EINVAL (no targets, too many, or one that is not a file
 * or block device), ENOMEM.
 */
extern struct sc_endpoint *sc_endpoint_open_tee (struct sc_endpoint *const
                                                 *targets, size_t n);
/* Has member i (in the order given to sc_endpoint_open_tee) of tee
 * failed?  Returns 0 if not; -1 if it did, with its first error as the
 * current error (errno and a message that names the member), or with
 * EINVAL if tee is not a tee or has no member i.
 */
extern int sc_endpoint_tee_status (struct sc_endpoint *tee, size_t i);

/* Can any write, zeroing or copy into target ep have reached it (for a
 * tee, any member; each member answers for itself): one that succeeded,
 * or one that failed part way?  Calls the target refused outright (an
 * active swap file, a read-only file system, no permission) do not
 * count.  A target written in place (a block device,
 * SC_TARGET_IN_PLACE) that a failed command wrote into holds part of
 * the new content over its old one.  Never fails; false for NULL.
 */
extern bool sc_endpoint_written (const struct sc_endpoint *ep);

/* Flush a complete target and make it visible under its name.  Returns
 * 0, or -1 with errno EIO/ENOSPC (flush), EEXIST (the name was taken
 * meanwhile and SC_TARGET_FORCE is not set), or rename's errno.
 */
extern int sc_endpoint_commit (struct sc_endpoint *ep);
/* Release ep (NULL is allowed); an uncommitted target disappears.
 * Returns -1 with errno if a deferred error surfaced on close.
 */
extern int sc_endpoint_close (struct sc_endpoint *ep);

/* The size in bytes (a stream's is 0 until its end has been read), and
 * the name used in messages (owned by ep).
 */
extern uint64_t sc_endpoint_size (const struct sc_endpoint *ep);
extern const char *sc_endpoint_name (const struct sc_endpoint *ep);
/* Standard input ("-") redirected from a file: the path of that file
 * (absolute, owned by ep), against whose directory names stored in an
 * image read from it are resolved.  NULL for any other endpoint, and
 * when that file cannot be found (a pipe, a deleted file).
 */
extern const char *sc_endpoint_file_path (const struct sc_endpoint *ep);
/* Is ep a stream: read once, in order, of unknown length? */
extern bool sc_endpoint_is_stream (const struct sc_endpoint *ep);
/* Read exactly count bytes at offset of a source that is not a stream
 * (a stream is read by the library only).  Messages do not name ep.
 * Returns 0, or -1 with errno
 * ESPIPE (a stream), EIO (also: reading past the end), or the errno of
 * the failed read.
 */
extern int sc_endpoint_pread (struct sc_endpoint *ep, void *buf,
                              size_t count, uint64_t offset);
/* Append the extents of [offset, offset+count) of ep to list, sorted
 * and contiguous; a regular file reports what lies past its end as a
 * hole.  Returns 0, or -1 with errno ESPIPE (a stream), EIO, ENOMEM.
 */
extern int sc_endpoint_extents (struct sc_endpoint *ep, uint64_t offset,
                                 uint64_t count, struct sc_extent_list *list);

/* Remove every uncommitted temporary target and stop every NBD server
 * started by sc_endpoint_open_nbd; async-signal-safe, for
 * SIGINT/SIGTERM handlers.
 */
extern void sc_cleanup_temporaries (void);

/* Ask the running copy, pack or unpack to stop: it fails soon after
 * with errno EINTR ("interrupted"), so that the caller can say what it
 * leaves behind (a target written in place) before it exits.
 * Async-signal-safe, for a SIGINT/SIGTERM handler; it cannot be taken
 * back.
 */
extern void sc_interrupt (void);

/* What holds the block device dev or one of its partitions (a refused
 * exclusive open, a target in use), written into buf (len bytes, always
 * terminated, cut if short) as a list that follows a message:
 * ", mounted on PATH", ", held by dm-0 (NAME)", ", swap area PATH",
 * ", open in process PID (COMM)", each as found (from
 * /proc/self/mountinfo, /sys/dev/block/M:m/holders, /proc/swaps,
 * /proc/PID/fd; only the processes this one may look at are seen);
 * "" when nothing can be named.  Never fails; sets no errno.
 */
extern void sc_block_describe_holders (dev_t dev, char *buf, size_t len);

/* ---- endpoint-nbd.c: NBD exports, through libnbd -------------------- */

/* Is name an NBD URI (nbd://, nbds://, nbd+unix://, nbds+unix://,
 * nbd+vsock://, nbds+vsock://)?  sc_endpoint_open_source and
 * sc_endpoint_open_target open such names with default options.
 */
extern bool sc_is_nbd_uri (const char *name);

struct sc_nbd_opts {
  /* Connections: 0 = 4 when the server advertises multi-conn, else 1;
   * more than 1 only when it does.  At most 16.
   */
  unsigned connections;
  unsigned requests;            /* in flight per connection, 0 = 16 */
  unsigned timeout;             /* seconds a request may take, 0 = none */
};

/* sc_endpoint_open_nbd flags, besides SC_TARGET_ZEROED for a target. */
#define SC_NBD_WRITE 0x100      /* a target (writes, zeroes, flush) */

/* Open an NBD export, named by uri (as in the NBD URI specification,
 * doc/uri.md of the NBD project) or served by a server started from
 * argv (a NULL-terminated command line, run with systemd socket
 * activation and stopped when the endpoint is closed or by
 * sc_cleanup_temporaries): exactly one of the two.  opts may be NULL.
 * As a source the export is read with block status (base:allocation,
 * and qemu:allocation-depth where offered) telling data from zeros; as
 * a target (SC_NBD_WRITE) its size is fixed and must hold what is
 * written, zero ranges are sent as WRITE_ZEROES, and commit flushes.
 * A qcow2 image read from an export may not name backing or data files.
 * Messages of failed requests name the operation, offset and length.
 * Returns NULL with errno EINVAL (both or neither of uri and argv, too
 * many connections), ENOTSUP (nbds:// without TLS support), EROFS (a
 * read-only export as a target), ENOMEM, or libnbd's errno for a
 * failed connection (ECONNREFUSED, ENOENT...).
 */
extern struct sc_endpoint *sc_endpoint_open_nbd (const char *uri,
                                                 char *const *argv,
                                                 unsigned flags,
                                                 const struct sc_nbd_opts *opts);

/* The processes on this host that serve the NBD endpoint ep, into
 * pids (at most max): the server started for it, the peer of its Unix
 * socket and the holders of the socket it listens on, or the holders
 * of the server's end of a TCP connection, in this network namespace
 * or another one.  The search takes at most a few seconds, however
 * many processes there are.  Returns how many were found: 0 for an
 * endpoint that is no NBD connection, or a server that cannot be seen
 * from here (another host, another user's /proc).
 */
extern size_t sc_nbd_server_pids (struct sc_endpoint *ep, pid_t *pids,
                                  size_t max);

/* ---- copy.c: the copy engine ---------------------------------------- */

struct sc_progress {
  uint64_t done;                /* bytes of the source processed */
  uint64_t total;               /* bytes of the source to process */
};
typedef void (*sc_progress_fn) (const struct sc_progress *p, void *opaque);

struct sc_copy_opts {
  unsigned threads;             /* 0 = online CPUs */
  uint32_t request_size;        /* 0 = default (1 MiB) */
  bool detect_zeroes;           /* skip writing all-zero blocks */
  sc_progress_fn progress;
  void *progress_opaque;
};

/* Copy all of src to dst (sizes must match, or dst larger for a block
 * device).  Holes and zero extents of src become zero on dst (nothing
 * is written when dst already reads as zero, as a new file does).
 */
extern int sc_copy (struct sc_endpoint *src, struct sc_endpoint *dst,
                    const struct sc_copy_opts *opts);

/* ---- codec.c: qcow2 cluster compression ---------------------------- */

enum sc_codec {
  SC_CODEC_NONE = -1,
  SC_CODEC_DEFLATE = 0,         /* qcow2 compression_type 0 */
  SC_CODEC_ZSTD = 1,            /* qcow2 compression_type 1 */
};

/* ---- qcow2-read.c: the reader --------------------------------------- */

struct sc_qcow2;

struct sc_qcow2_open_opts {
  const char *snapshot;         /* NULL = active layer; else name or ID */
  unsigned max_backing_depth;   /* 0 = default (1024 backing files) */
  size_t cache_bytes;           /* L2 cache size, 0 = default */
  /* Refuse (EPERM) any image that needs a backing file or an external
   * data file, instead of opening the files it names: for images from
   * places that are not trusted to name files on this machine, and for
   * fuzzing.  false = open them, as qemu does.
   */
  bool no_external_files;
  /* For looking at an image without reading its guest data through a
   * chain (info), as qemu-img info opens one: a backing file that
   * cannot be opened (missing, unreadable, damaged) ends the chain
   * where it is, and sc_qcow2_get_info says why in backing_error.
   * Reads of clusters that the missing file would have given then see
   * zeros: do not copy data through such a handle.  Likewise the top
   * image's external data file (qemu-img info does not open it): one
   * that cannot be opened is said in sc_qcow2_get_info's
   * data_file_error, and reads of the image's data fail.  false = fail.
   */
  bool backing_optional;
  /* Open an image whose corrupt bit (incompatible feature bit 1) is
   * set, as qemu opens one read-only, to show it (info, map); the
   * tables are still validated as for any image.  false = refuse it
   * (EINVAL), as for copying its data.
   */
  bool allow_corrupt;
  /* Open an encrypted image, as qemu-img info opens one without its
   * key, to show what its headers say (info); the LUKS header is
   * validated.  Its data cannot be read: reads fail (ENOTSUP).  false
   * = refuse it (ENOTSUP), as every command that reads data does.
   */
  bool allow_encrypted;
  /* qemu's -U: read files of the image even while another process
   * (qemu-nbd, a VM) holds them for writing.  false = refuse them
   * (EBUSY), as qemu-img does, by the locks qemu takes on image files
   * (see sc_image_lock_test).
   */
  bool force_share;
};

/* Open the qcow2 image at path (a regular file or a block device) for
 * reading, with its backing chain and external data file, whose names
 * are resolved relative to the image's directory.  opts may be NULL
 * (all defaults).  Returns NULL with errno ENOENT (no such file or
 * snapshot), EACCES (cannot open), EINVAL (not a qcow2 image, or
 * damaged), EIO (an image cut short), ENOTSUP (a feature that is not
 * supported), EFBIG (a table over qemu's limits, or L1 tables of a
 * whole chain over 256 MiB), ELOOP (a backing chain that loops or is
 * too long), EPERM (opts->no_external_files and the image needs another
 * file), EBUSY (another process writes a file of the image, by qemu's
 * locks, and not opts->force_share), ESPIPE (a pipe or character
 * device: see
 * sc_qcow2_unpack_stream), ENOMEM, or the errno of a failed read.
 * Messages do not name the image itself; they name any other file.
 */
/* Backing files beyond the first 16 are closed while they are not read
 * and opened again when they are, so a deep chain holds a bounded
 * number of descriptors; a file that is not the same one (device,
 * inode, size, times) when it is opened again fails the read with
 * ESTALE.
 */
extern struct sc_qcow2 *sc_qcow2_open (const char *path,
                                       const struct sc_qcow2_open_opts *opts);
/* The same for an image read through file, a seekable source endpoint
 * (a regular file, a block device, or any other kind that reads at
 * random offsets).  The caller keeps file: it must stay open until
 * sc_qcow2_close(q) and is not closed by it.  Backing and data files
 * that the image names are resolved relative to the directory part of
 * sc_endpoint_name(file) (of sc_endpoint_file_path(file) for standard
 * input, whose relative names fail with ENOENT when that is not known),
 * unless opts->no_external_files refuses them.
 * Errors as sc_qcow2_open; ESPIPE if file is a stream, EINVAL if it is
 * NULL.
 */
extern struct sc_qcow2 *
sc_qcow2_open_endpoint (struct sc_endpoint *file,
                        const struct sc_qcow2_open_opts *opts);
extern void sc_qcow2_close (struct sc_qcow2 *q);
extern uint64_t sc_qcow2_virtual_size (const struct sc_qcow2 *q);

/* qemu's image locks (qemu block/file-posix.c: OFD locks on byte 100 +
 * i while a process holds permission i, 200 + i while it does not share
 * it).  May the image file at path be read now?  Returns 0 when no
 * other process writes it (or resizes it, or refuses to share reading),
 * or when the file system has no OFD locks; -1 with errno EBUSY when
 * one does (the message names the lock, as qemu-img's does), or the
 * errno of opening path.  sc_qcow2_open tests every file of a chain
 * itself unless force_share; this is for callers that read a file in
 * another way (sc_qcow2_check).
 */
extern int sc_image_lock_test (const char *path);

/* Is this file a qcow2 image (by magic)?  1 yes, 0 no, -1 error. */
extern int sc_is_qcow2 (const char *path);

/* A source endpoint reading the guest view of q (thread-safe pread;
 * extents from the L1/L2 tables through the whole backing chain).
 * Closing the endpoint does not close q.
 */
extern struct sc_endpoint *sc_qcow2_endpoint (struct sc_qcow2 *q);

/* unpack.c: the guest data of a qcow2 image -> a target.
 *
 * image is the image file as a source endpoint.  A seekable one is
 * read with the reader (backing chain, snapshots, external data file
 * all supported); a stream (a pipe) is decoded once, front to back:
 * its active layer only, no backing file or external data file, and
 * bytes of the image not known to be needed when they go by are kept
 * in a spill file, so images whose tables come after their data still
 * work.  dst is a target opened by the caller, with any size: it is
 * sized to the virtual size (a new file grows, a device must be large
 * enough).  On success everything is written and flushed; the caller
 * commits dst (sc_endpoint_commit), or closes it to throw it away.
 * Returns 0, or -1 with errno EINVAL (not a qcow2 image, a snapshot
 * asked of a stream), ENOTSUP (a feature that cannot be read), EPERM
 * (no_external_files and the image names a file), EBUSY (another
 * process writes the image, unless force_share), ENOSPC, EIO, ENOMEM.
 */
struct sc_bmap;

struct sc_unpack_opts {
  const char *snapshot;         /* NULL = active layer; else name or ID */
  bool no_external_files;       /* as in sc_qcow2_open_opts */
  unsigned threads;             /* 0 = online CPUs */
  /* qemu-img convert -S, for a target that reads as zero (a new file):
   * zeros are left unwritten in aligned 4 KiB blocks (min_sparse 0),
   * or by qemu-img's rule: runs of them between data shorter than
   * min_sparse bytes are written, within each buffer that qemu-img
   * judges (2 MiB from the start of each run of the guest's data, as
   * qemu's block status gives them; each write of the copy through a
   * bmap or from a stream).  allocate_all (-S 0): every byte is
   * written, zeros included, so the file is fully allocated.
   */
  uint64_t min_sparse;
  bool allocate_all;
  bool force_share;             /* as in sc_qcow2_open_opts */
  /* Bytes of the guest's data processed, of a total of its data; with
   * allocate_all, or into a pipe, where holes are written as zeros,
   * of all its bytes.  From a stream, bytes of the image read (and
   * zeros written, as above), with a total of 0 (unknown) until all is
   * written, when the total becomes what was done.
   */
  sc_progress_fn progress;
  void *progress_opaque;
  /* A block map of the guest (sc_bmap_load), or NULL.  When given,
   * only its mapped ranges are read, each checked against its SHA-256
   * as it is read; what it leaves unmapped is written as a hole (zeros
   * on a target that does not read as zero already).  The image must
   * be seekable and its virtual size the bmap's ImageSize, or that
   * rounded up to 512 bytes with the bytes past ImageSize reading as
   * zero, when dst gets ImageSize bytes (EINVAL otherwise); a range
   * whose bytes differ fails with EBADMSG, "IMAGE and BMAP are out of
   * sync at offset N", N the first byte of that range.
   */
  const struct sc_bmap *bmap;
  /* With bmap: read and check every range before anything is written,
   * so that a mismatch leaves dst untouched; for targets written in
   * place (a block device, SC_TARGET_IN_PLACE), which no failure
   * removes.  It costs a second read of the mapped data.
   */
  bool bmap_check_first;
  /* sc_unpack_verify follows, with these options: the progress of both
   * calls is one count, of a total that holds both from the start: the
   * bytes sc_unpack counts (above), then those sc_unpack_verify reads
   * back (see there).
   */
  bool verify_follows;
};
extern int sc_unpack (struct sc_endpoint *image, struct sc_endpoint *dst,
                      const struct sc_unpack_opts *opts);

/* Read dst back after sc_unpack (dst flushed, before commit) and
 * compare it with the guest data of image, read again (image must not
 * be a stream; opts as given to sc_unpack; progress counts the bytes
 * of the guest compared: its data, and its holes and zero ranges too
 * when any target's are read back, as they are but for
 * SC_TARGET_ZERO_SKIP targets that did not read as zero).  Every
 * byte is compared, zero ranges too (they must read as zero), except
 * the ranges a target with SC_TARGET_ZERO_SKIP left as they were.  A
 * block device's cached pages were dropped at its flush, so what is
 * read comes from the device, all of it; a regular file is read
 * through its file system, only where its extent map (SEEK_DATA and
 * SEEK_HOLE, asked now) says it holds data: its holes read as zero by
 * definition (its last byte is read too, for a file cut short).
 * For a tee (sc_endpoint_open_tee) each member left is read; one that
 * differs is dropped from the tee (sc_endpoint_tee_status tells) and
 * the call fails only when none is left.  Returns 0, or -1 with errno
 * EIO and "NAME: differs from the image at offset N" (the first
 * differing byte), ESPIPE (image is a stream), ENOTSUP (a target that
 * cannot be read back), or the errno of a failed read.  With opts->bmap
 * the image is read as sc_unpack read it, through the bmap (checked
 * again; its unmapped blocks are compared with zeros).
 */
extern int sc_unpack_verify (struct sc_endpoint *image,
                             struct sc_endpoint *dst,
                             const struct sc_unpack_opts *opts);

/* One run of qemu-img map: fields as in "qemu-img map --output=json". */
struct sc_map_entry {
  uint64_t start;
  uint64_t length;
  unsigned depth;               /* 0 = the top image */
  bool present;                 /* allocated somewhere in the chain */
  bool zero;                    /* reads as zeros */
  bool data;                    /* has data (not a zero cluster) */
  bool has_offset;              /* offset is meaningful */
  uint64_t offset;              /* host offset in the file at depth */
  bool compressed;
};
typedef int (*sc_map_fn) (const struct sc_map_entry *e, void *opaque);

/* Call fn for each maximal run, merged like qemu-img map merges. */
extern int sc_qcow2_map (struct sc_qcow2 *q, sc_map_fn fn, void *opaque);

struct sc_snapshot_info {
  char *id;
  char *name;
  uint64_t vm_state_size;
  uint32_t date_sec;
  uint32_t date_nsec;
  uint64_t vm_clock_nsec;
  uint64_t disk_size;           /* 0 if not recorded */
  /* Instructions executed by the guest (record/replay); UINT64_MAX if
   * not recorded.
   */
  uint64_t icount;
};

/* A persistent dirty bitmap (qcow2.rst "Bitmaps"), as qemu-img info
 * lists it.
 */
struct sc_bitmap_info {
  char *name;
  uint32_t granularity;         /* bytes a bit covers */
  bool in_use;                  /* flag in-use: left open by a writer */
  bool auto_enabled;            /* flag auto: tracks writes */
};

/* How an image is encrypted (the header's crypt_method). */
enum sc_encryption {
  SC_ENCRYPTION_NONE = 0,
  SC_ENCRYPTION_AES = 1,        /* qemu's legacy AES-CBC scheme */
  SC_ENCRYPTION_LUKS = 2,       /* a LUKS1 header in the image file */
};

/* One key slot of a LUKS1 header, as qemu-img info shows it. */
struct sc_luks_slot {
  bool active;
  uint32_t iters;               /* PBKDF2 iterations (active slots) */
  uint32_t stripes;             /* anti-forensic stripes (active slots) */
  uint64_t key_offset;          /* bytes from the start of the header */
};

#define SC_LUKS_KEY_SLOTS 8

/* What the LUKS1 header of an encrypted image says, in qemu's names
 * for the algorithms ("aes-256", "xts", "plain64", "sha256"); nothing
 * secret is read.
 */
struct sc_luks_info {
  const char *cipher_alg;
  const char *cipher_mode;
  const char *ivgen_alg;
  const char *ivgen_hash_alg;   /* with ivgen "essiv" only, else NULL */
  const char *hash_alg;
  uint64_t payload_offset;      /* bytes from the start of the header */
  uint32_t master_key_iters;
  char uuid[41];
  struct sc_luks_slot slots[SC_LUKS_KEY_SLOTS];
};

struct sc_backing_info {
  char *filename;               /* as resolved */
  char *format;                 /* "qcow2", "raw", or NULL if unknown */
  char *data_file;              /* its external data file, as resolved, or
                                 * NULL (none, or not known) */
};

struct sc_qcow2_info {
  char *filename;
  uint32_t version;
  uint64_t virtual_size;
  uint64_t file_size;           /* bytes of the image file */
  uint32_t cluster_size;
  uint32_t refcount_bits;
  enum sc_codec compression_type;
  uint64_t incompatible_features;
  uint64_t compatible_features;
  uint64_t autoclear_features;
  bool dirty, corrupt, lazy_refcounts, extended_l2;
  char *data_file;              /* external data file name or NULL */
  bool data_file_raw;
  /* Encryption, and with LUKS what its header says (see
   * sc_qcow2_open_opts.allow_encrypted).
   */
  enum sc_encryption encryption;
  struct sc_luks_info luks;
  char *backing_file;           /* as stored in the header, or NULL */
  char *backing_format;         /* from the header extension, or NULL */
  /* With sc_qcow2_open_opts.backing_optional: why the chain (chain,
   * chain_len) ends before its last image, naming the file; else NULL.
   */
  char *backing_error;
  /* With sc_qcow2_open_opts.backing_optional: why the external data
   * file that the image names could not be opened (naming it), or
   * NULL.  The image's data cannot then be read through the handle.
   */
  char *data_file_error;
  struct sc_backing_info *chain; /* resolved chain, chain_len entries */
  size_t chain_len;
  struct sc_snapshot_info *snapshots;
  size_t nb_snapshots;
  /* The persistent bitmaps (none unless the bitmaps autoclear bit is
   * set, as in qemu).
   */
  struct sc_bitmap_info *bitmaps;
  size_t nb_bitmaps;
  /* Counts over the L2 tables of the active layer (or snapshot). */
  uint64_t allocated_clusters;  /* clusters with host data (incl. compressed) */
  uint64_t compressed_clusters;
  uint64_t zero_clusters;       /* read-as-zero clusters */
  /* From sc_qcow2_inspect: why the image cannot be read (its tables are
   * damaged), or NULL.  The counts above are then not known (0), and
   * chain holds the backing chain of the file the header names.
   */
  char *damage;
};

extern int sc_qcow2_get_info (struct sc_qcow2 *q, struct sc_qcow2_info *info);
/* What qemu-img info shows of an image, damaged or not: the image in
 * file (an endpoint read at random offsets, kept by the caller), or at
 * path when file is NULL, opened with opts.  An image that
 * sc_qcow2_open opens gives what sc_qcow2_get_info gives, with damage
 * NULL.  One that it refuses as damaged (EINVAL, EIO: an L1 or
 * refcount table past the end of the file, reserved bits in a table
 * entry, a damaged snapshot table) gives what its header, its header
 * extensions and its snapshot table say, read as qemu reads them (zeros
 * past the end of the file), with damage saying why its data cannot be
 * read; nothing else of it is read.  Returns -1 with the error when the
 * image cannot be opened, when qemu would not open it either (a table
 * it cannot read at all, a misaligned one, a snapshot table at an
 * invalid offset), and for other errors of sc_qcow2_open.
 */
extern int sc_qcow2_inspect (const char *path, struct sc_endpoint *file,
                             const struct sc_qcow2_open_opts *opts,
                             struct sc_qcow2_info *info);
extern void sc_qcow2_info_free (struct sc_qcow2_info *info);

/* ---- pack.c + qcow2-plan.c: the writer ----------------------------- */

struct sc_pack_opts {
  unsigned version;             /* 2 or 3 (default 3) */
  uint32_t cluster_size;        /* 0 = 64 KiB */
  unsigned refcount_bits;       /* 0 = 16 */
  enum sc_codec codec;          /* SC_CODEC_NONE = uncompressed */
  int level;                    /* compression level, -1 = default */
  bool detect_zeroes;           /* do not store all-zero clusters */
  /* qemu-img convert -S for a qcow2 target.  With detect_zeroes, a run
   * of all-zero clusters between clusters with data (within one piece
   * of the scan, 1 MiB or one cluster if larger) is stored anyway when
   * it is shorter than min_sparse bytes; 0 or up to a cluster: every
   * all-zero cluster is left out.  allocate_all (-S 0): every cluster
   * of the virtual size is stored as data, holes included, as
   * qemu-img convert -S 0 stores them (detect_zeroes is then ignored).
   */
  uint64_t min_sparse;
  bool allocate_all;
  unsigned threads;             /* 0 = online CPUs */
  /* Refuse a source whose first bytes are the qcow2 magic (an image,
   * not raw data; default true): sc_pack fails with EMEDIUMTYPE.  A
   * program that has opened such an image as raw data on purpose sets
   * it to false.  Images are re-packed through sc_qcow2_endpoint().
   */
  bool refuse_images;
  /* Store a digest of the guest content in a header extension, for
   * sc_verify_digest (default false; version 3 images only, a version 2
   * image gets none).  Every byte of data is read and hashed: in the
   * scan, on the worker threads, a few percent of the time of a
   * compressed pack; uncompressed from a regular file into a seekable
   * target, beside the copy, whose data still goes inside the kernel,
   * and stored in the header after it.  The definition is in
   * sparsecow(1), DIGEST.
   */
  bool digest;
  /* Progress counts the source bytes scanned and then the bytes of
   * data found, written, as one count: the total starts as twice the
   * source's data (all of it read, and at most all of it written) and
   * shrinks as the scan finds zeros, to the bytes read and the data
   * found, so the fraction only grows, evenly even when the source is
   * read whole and holds little data.  Without zero detection and
   * compression (allocate_all) the scan reads nothing: the count is of
   * the writing alone, from 0.  A stream's total is 0 (unknown) until
   * its end.
   */
  sc_progress_fn progress;
  void *progress_opaque;
  /* A block map of the source (sc_bmap_load) to use as its map, or
   * NULL: only the mapped ranges are packed, each checked against its
   * SHA-256 as it is read (errors as for sc_unpack_opts.bmap; the
   * source must not be a stream).
   */
  const struct sc_bmap *bmap;
  /* A target (opened by the caller, sized and written here, committed
   * by the caller) for a block map of the source, made from the same
   * reads as the image: the source's data, in 4 KiB blocks, with the
   * SHA-256 of each range (see sc_bmap_create).  NULL: none.
   */
  struct sc_endpoint *bmap_out;
  /* The compression type the header records when codec is
   * SC_CODEC_NONE: SC_CODEC_ZSTD makes an image whose type is zstd (a
   * version 3 header only) with no cluster compressed, as qemu-img
   * convert -o compression_type=zstd without -c makes one, so that
   * what qemu compresses into it later is zstd.  SC_CODEC_NONE (set
   * by sc_pack_opts_init) or SC_CODEC_DEFLATE: zlib, qcow2's default.
   * With a codec the codec is the type; SC_CODEC_ZSTD with deflate
   * clusters is EINVAL.
   */
  enum sc_codec compression_type;
};

extern void sc_pack_opts_init (struct sc_pack_opts *opts);

/* Pack src into a qcow2 image written to dst, a target opened by the
 * caller with any size: it is sized to the image once the layout is
 * known (a new file grows, a device must be large enough, a stream is
 * written forward; a file written in place with SC_TARGET_FIT is cut
 * to the image's length at the end).  A target written where it is
 * gets the qcow2 magic last, after everything else is flushed, so that
 * a failure leaves no image there.  On success everything is written
 * and flushed and a file source was found unchanged; the caller
 * commits dst (sc_endpoint_commit), or closes it to throw it away.
 * Returns 0, or -1 with errno EINVAL (bad options), EMEDIUMTYPE (the
 * source is a qcow2 image and refuse_images is set), EBUSY (a file
 * source changed while it was read), EIO, ENOSPC, EFBIG, ENOMEM.
 */
extern int sc_pack (struct sc_endpoint *src, struct sc_endpoint *dst,
                    const struct sc_pack_opts *opts);

/* ---- verify.c: compare content ------------------------------------- */

struct sc_verify_opts {
  unsigned threads;             /* 0 = online CPUs */
  /* Sizes must be equal, as qemu-img compare --strict (which also
   * compares allocation: this does not).
   */
  bool strict;
  /* Bytes compared so far, of a total of the bytes that either side
   * holds as data (counted in a first pass over both sides' extents);
   * holes on both sides are not counted.  sc_verify_digest: bytes of
   * data hashed, of the image's data.
   */
  sc_progress_fn progress;
  void *progress_opaque;
};

struct sc_verify_result {
  /* sc_verify: the first byte at which the contents differ, or with
   * strict and sizes that differ, the size of the smaller side.
   * sc_verify_digest: with damaged, where the first compressed cluster
   * that does not decode starts in the guest; with sizes_differ, the
   * image's virtual size; else 0.
   */
  uint64_t offset;
  /* sc_verify: a and b differ in size.  sc_verify_digest, stale: the
   * image's virtual size is not digest_size (another program resized
   * it), though the autoclear bit is set.
   */
  bool sizes_differ;
  /* sc_verify_digest: the stored bytes of a compressed cluster do not
   * decode (computed is then all zeros).
   */
  bool damaged;
  /* sc_verify_digest, stale: the image's L1 or L2 tables are not the
   * ones the digest was made with (another program allocated or moved
   * clusters), though the autoclear bit is set.
   */
  bool mapping_changed;
  /* sc_verify_digest: what the image holds, and what its content
   * hashes to now (when it was recomputed).
   */
  uint32_t block_size;
  uint64_t digest_size;         /* the virtual size it was made for */
  unsigned char stored[32];
  unsigned char computed[32];
};

/* Compare the content of the seekable sources a and b (files, block
 * devices, NBD exports, the guest view of qcow2 images from
 * sc_qcow2_endpoint), as qemu-img compare does: up to the smaller
 * size, and the rest of the larger must read as zeros (with
 * opts->strict the sizes must be equal).  Ranges that both sides'
 * extents call holes or zeros are never read; a range that only one
 * side holds data in is read on that side only and must be zeros.
 * Data is read in parallel, a bounded number of pieces at a time.
 * opts may be NULL.  Returns 0 equal, 1 different (result->offset:
 * the first byte that differs), or -1 with errno ESPIPE (a stream),
 * ENOMEM, or the errno of a failed read or extent query (the message
 * names the side).
 */
extern int sc_verify (struct sc_endpoint *a, struct sc_endpoint *b,
                      const struct sc_verify_opts *opts,
                      struct sc_verify_result *result);

/* Check the content digest that sc_pack stored in the qcow2 image
 * read through file (a seekable source endpoint the caller keeps):
 * recompute it over the image's guest content, through its backing
 * chain, in parallel, reading data only (holes cost nothing).
 * Returns 0 when it matches, 1 when it does not (a digest cannot tell
 * where; but when the stored bytes of a compressed cluster do not
 * decode, which is content that is not what was packed either,
 * result->damaged is set, result->offset is the guest offset of the
 * first such cluster, and the error message says why it does not
 * decode), 2 when the digest is stale (the extension is there but its
 * autoclear bit is not: the image was opened for writing by a program
 * that does not know the digest, as qemu clears unknown autoclear bits
 * ("Header", docs/interop/qcow2.rst); or the bit is set but the L1 and
 * L2 tables are not the ones the digest was made with, and
 * result->mapping_changed is set, or the virtual size is not the one
 * it was made for, and result->sizes_differ is set; it is not
 * recomputed), or -1
 * with errno ENODATA (the image holds no digest), EINVAL (not a qcow2
 * image, a damaged digest extension), or the errors of sc_qcow2_open.
 */
extern int sc_verify_digest (struct sc_endpoint *file,
                             const struct sc_verify_opts *opts,
                             struct sc_verify_result *result);

/* ---- qcow2-check.c: the checker ------------------------------------- */

struct sc_check_result {
  uint64_t corruptions;
  uint64_t leaks;
  uint64_t check_errors;        /* errors that stopped part of the check */
  /* Damage that qemu-img check does not count but that makes the image
   * unreadable as written (sparsecow's reader refuses it): clusters or
   * tables (partly) past the end of the file, an image cut short; table
   * entries with bits the image's version does not define.  Counted
   * apart so that corruptions and leaks stay qemu-img check's numbers.
   */
  uint64_t damage;
  uint64_t allocated_clusters;
  uint64_t total_clusters;
  uint64_t fragmented_clusters;
  uint64_t compressed_clusters;
  uint64_t image_end_offset;
  char **messages;              /* one line per problem found */
  size_t nb_messages;
};

/* Check an image's refcounts against its real use.  Returns 0 when the
 * check ran (look at result, which the caller frees with
 * sc_check_result_free), -1 if the image could not be checked (result
 * is then empty), with errno ENOENT, EACCES (cannot open), EINVAL (not
 * a qcow2 image, or a header qemu would not open either), ENOTSUP
 * (unknown incompatible features or encryption method), ESPIPE (a
 * stream), ENOMEM, or the errno of a failed read.
 */
extern int sc_qcow2_check (const char *path, struct sc_check_result *result);
/* The same for an image read through file, a seekable source endpoint
 * that the caller keeps (it is not closed).  Only the image file itself
 * is checked, as by sc_qcow2_check: no other file is opened.  Errors as
 * sc_qcow2_check; EINVAL if file is NULL.
 */
extern int sc_qcow2_check_endpoint (struct sc_endpoint *file,
                                    struct sc_check_result *result);
extern void sc_check_result_free (struct sc_check_result *result);

/* ---- bmap.c: block maps, as bmaptool reads and writes them ----------- */

/* A block map in bmaptool's format 2.0 with SHA-256 checksums (the
 * bmap format of bmaptool's documentation and of its BmapCreate and
 * BmapCopy): ImageSize, BlockSize, BlocksCount, MappedBlocksCount,
 * ChecksumType "sha256", BmapFileChecksum (the SHA-256 of the file
 * with that value written as 64 "0"), and a BlockMap of Range elements,
 * "FIRST-LAST" or "BLOCK" with a chksum attribute: the SHA-256 of the
 * bytes of those blocks (the last block cut at ImageSize).  Read too:
 * format 2.0 and 1.4 (the same format) with ChecksumType sha1, md5,
 * sha224, sha384 or sha512, and formats 1.0 to 1.3, whose Range
 * elements may carry a "sha1" attribute (the SHA-1 of their blocks)
 * and which have no ChecksumType; 1.3 has BmapFileSHA1 (the file's
 * SHA-1, computed as BmapFileChecksum is), 1.0 to 1.2 no checksum of
 * the file.
 */

/* Parse a bmap of len bytes (at most 64 MiB), which may be anything.
 * name is used in messages.  Every number is checked: the ranges must
 * be sorted, apart and inside the image, the counts must agree, and
 * the file's own checksum must match.  Returns NULL with errno EINVAL
 * (not a bmap, or an inconsistent one), ENOTSUP (a format version other
 * than 1.0 to 1.4 and 2.0, or another checksum type), EBADMSG (the file checksum differs), EFBIG (too
 * large), ENOMEM.  Free with sc_bmap_free.
 */
extern struct sc_bmap *sc_bmap_parse (const void *buf, size_t len,
                                      const char *name);
/* The same for the regular file at path (named by path in messages):
 * errors as sc_bmap_parse, and ENOENT, EACCES.
 */
extern struct sc_bmap *sc_bmap_load (const char *path);
/* Free a bmap of sc_bmap_parse or sc_bmap_load (NULL is allowed). */
extern void sc_bmap_free (struct sc_bmap *bmap);
/* ImageSize, in bytes (never 0). */
extern uint64_t sc_bmap_image_size (const struct sc_bmap *bmap);

struct sc_bmap_opts {
  unsigned threads;             /* readers, 0 = online CPUs */
  sc_progress_fn progress;      /* bytes of the source processed */
  void *progress_opaque;
};

/* Write a bmap of src to dst: blocks of 4 KiB, mapped where src's
 * extents hold data (as src was opened: SC_MAP_ALLOCATED for a file
 * gives bmaptool create's map; the L2 tables for the guest
 * view of a qcow2 image, block status for an NBD export; a stream is
 * all data).  Holes and zero ranges (zero clusters of an image) are
 * unmapped, as bmaptool create leaves holes unmapped.  A block that is
 * partly data is mapped, and its hole part hashed as zeros.  Ranges
 * are read and hashed in order; memory does not grow with their count.
 * dst is a target opened by the caller with any size; it is sized and
 * written, and the caller commits it.  A source whose fingerprint
 * (device, inode, size, times; files and the files of an image) differs
 * after the bmap is written than before fails with EBUSY, "SRC: source
 * changed while it was mapped".  A stream whose first bytes are the
 * qcow2 magic is an image, not raw data: EMEDIUMTYPE.  Returns 0, or -1
 * with errno EINVAL (an empty source), EBUSY, EMEDIUMTYPE, EIO, ENOSPC,
 * ENOMEM, or a read's errno.
 */
extern int sc_bmap_create (struct sc_endpoint *src, struct sc_endpoint *dst,
                           const struct sc_bmap_opts *opts);

#ifdef __cplusplus
}
#endif

#endif /* SPARSECOW_H */
