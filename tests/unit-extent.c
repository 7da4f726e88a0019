/* Unit tests: extent lists, file extent maps, the pipeline, file
 * endpoints and sc_copy.
 */
#include <config.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <CUnit/Basic.h>

#include "internal.h"

#define BLOCK 4096
#define KiB 1024
#define MiB (1024 * 1024)

static char tmpdir[256];

static int
suite_init (void)
{
  const char *t = getenv ("TMPDIR");

  snprintf (tmpdir, sizeof tmpdir, "%s/unit-extent.XXXXXX", t ? t : "/var/tmp");
  return mkdtemp (tmpdir) ? 0 : -1;
}

static int
suite_clean (void)
{
  char cmd[300];

  snprintf (cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  return system (cmd) == 0 ? 0 : -1;
}

static void
path_of (char *buf, size_t len, const char *name)
{
  snprintf (buf, len, "%s/%s", tmpdir, name);
}

/* The byte at offset o of the test pattern. */
static unsigned char
pattern (uint64_t o)
{
  return (unsigned char) ((o * 7 + (o >> 12)) | 1);
}

/* Data blocks of the sparse test file, as 4 KiB block numbers. */
static const uint64_t data_blocks[] = { 0, 1, 2, 17, 256, 257, 1000, 1023 };
#define FILE_BLOCKS 1024        /* 4 MiB */
#define NR_DATA_BLOCKS (sizeof data_blocks / sizeof data_blocks[0])

static bool
is_data_block (uint64_t b)
{
  for (size_t i = 0; i < NR_DATA_BLOCKS; i++)
    if (data_blocks[i] == b)
      return true;
  return false;
}

/* A sparse file with the pattern in data_blocks, holes elsewhere. */
static int
make_sparse_file (const char *path, uint64_t extra)
{
  unsigned char buf[BLOCK];
  int fd = open (path, O_RDWR | O_CREAT | O_TRUNC, 0644);

  if (fd == -1)
    return -1;
  if (ftruncate (fd, (off_t) FILE_BLOCKS * BLOCK + (off_t) extra) == -1)
    goto err;
  for (size_t i = 0; i < NR_DATA_BLOCKS; i++) {
    uint64_t off = data_blocks[i] * BLOCK;
    for (size_t j = 0; j < BLOCK; j++)
      buf[j] = pattern (off + j);
    if (pwrite (fd, buf, BLOCK, (off_t) off) != BLOCK)
      goto err;
  }
  return fd;
 err:
  close (fd);
  return -1;
}

/* Check a list is contiguous over [offset, offset+count). */
static void
check_covers (const struct sc_extent_list *l, uint64_t offset, uint64_t count)
{
  uint64_t pos = offset;

  for (size_t i = 0; i < l->len; i++) {
    CU_ASSERT_EQUAL (l->ext[i].offset, pos);
    CU_ASSERT (l->ext[i].length > 0);
    pos += l->ext[i].length;
  }
  CU_ASSERT_EQUAL (pos, offset + count);
}

/* Mark each 4 KiB block that the list says holds data. */
static void
data_map (const struct sc_extent_list *l, bool *map, size_t nblocks)
{
  memset (map, 0, nblocks);
  for (size_t i = 0; i < l->len; i++) {
    if (l->ext[i].flags & (SC_EXTENT_HOLE | SC_EXTENT_ZERO))
      continue;
    for (uint64_t b = l->ext[i].offset / BLOCK;
         b < SC_DIV_ROUND_UP (l->ext[i].offset + l->ext[i].length, BLOCK)
           && b < nblocks;
         b++)
      map[b] = true;
  }
}

static void
test_list_append (void)
{
  struct sc_extent_list l;

  sc_extent_list_init (&l);
  CU_ASSERT_EQUAL (sc_extent_list_append (&l, 0, 10, 0), 0);
  CU_ASSERT_EQUAL (sc_extent_list_append (&l, 10, 5, 0), 0);    /* merges */
  CU_ASSERT_EQUAL (l.len, 1);
  CU_ASSERT_EQUAL (l.ext[0].length, 15);
  CU_ASSERT_EQUAL (sc_extent_list_append (&l, 15, 0, 0), 0);    /* ignored */
  CU_ASSERT_EQUAL (l.len, 1);
  CU_ASSERT_EQUAL (sc_extent_list_append (&l, 15, 5, SC_EXTENT_HOLE), 0);
  CU_ASSERT_EQUAL (l.len, 2);
  CU_ASSERT_EQUAL (sc_extent_list_append (&l, 20, 5, SC_EXTENT_ZERO), 0);
  CU_ASSERT_EQUAL (l.len, 3);
  CU_ASSERT_EQUAL (sc_extent_list_append (&l, 30, 5, SC_EXTENT_ZERO), 0);
  CU_ASSERT_EQUAL (l.len, 4);                 /* not touching: no merge */
  for (int i = 0; i < 1000; i++)
    CU_ASSERT_EQUAL (sc_extent_list_append (&l, 35 + 2 * i, 1,
                                            i % 2 ? 0 : SC_EXTENT_HOLE), 0);
  CU_ASSERT_EQUAL (l.len, 1004);
  sc_extent_list_free (&l);
  CU_ASSERT_EQUAL (l.len, 0);
  CU_ASSERT_PTR_NULL (l.ext);
}

static void
test_fd_extents (void)
{
  char path[300];
  struct sc_extent_list seek, fiemap, none;
  bool seek_map[FILE_BLOCKS], fiemap_map[FILE_BLOCKS];
  uint64_t size = (uint64_t) FILE_BLOCKS * BLOCK;
  int fd;

  path_of (path, sizeof path, "sparse");
  fd = make_sparse_file (path, 0);
  CU_ASSERT_FATAL (fd >= 0);
  sc_extent_list_init (&seek);
  sc_extent_list_init (&fiemap);
  sc_extent_list_init (&none);

  /* FIEMAP first: its sync makes the data visible to both methods. */
  CU_ASSERT_EQUAL (sc_fd_extents (fd, SC_MAP_FIEMAP, 0, size, &fiemap), 0);
  CU_ASSERT_EQUAL (sc_fd_extents (fd, SC_MAP_SEEK, 0, size, &seek), 0);
  CU_ASSERT_EQUAL (sc_fd_extents (fd, SC_MAP_NONE, 0, size, &none), 0);
  check_covers (&seek, 0, size);
  check_covers (&fiemap, 0, size);
  check_covers (&none, 0, size);
  CU_ASSERT_EQUAL (none.len, 1);
  CU_ASSERT_EQUAL (none.ext[0].flags, 0);

  data_map (&seek, seek_map, FILE_BLOCKS);
  data_map (&fiemap, fiemap_map, FILE_BLOCKS);
  for (uint64_t b = 0; b < FILE_BLOCKS; b++) {
    CU_ASSERT_EQUAL (seek_map[b], fiemap_map[b]);
    /* Every written block is data; a file system may round holes
     * down, but not on the usual 4 KiB-block file systems.
     */
    if (is_data_block (b))
      CU_ASSERT (seek_map[b]);
  }
  size_t n_data = 0;
  for (uint64_t b = 0; b < FILE_BLOCKS; b++)
    n_data += seek_map[b];
  CU_ASSERT (n_data < FILE_BLOCKS / 2);       /* the holes are seen */

  /* A clipped range starts and ends where asked, even inside extents. */
  sc_extent_list_free (&seek);
  CU_ASSERT_EQUAL (sc_fd_extents (fd, SC_MAP_SEEK, BLOCK + 100,
                                  300 * BLOCK, &seek), 0);
  check_covers (&seek, BLOCK + 100, 300 * BLOCK);
  CU_ASSERT_EQUAL (seek.ext[0].flags, 0);
  sc_extent_list_free (&fiemap);
  CU_ASSERT_EQUAL (sc_fd_extents (fd, SC_MAP_FIEMAP, BLOCK + 100,
                                  300 * BLOCK, &fiemap), 0);
  check_covers (&fiemap, BLOCK + 100, 300 * BLOCK);

  /* Past the end of file everything is a hole. */
  sc_extent_list_free (&seek);
  CU_ASSERT_EQUAL (sc_fd_extents (fd, SC_MAP_SEEK, size, MiB, &seek), 0);
  CU_ASSERT_EQUAL (seek.len, 1);
  CU_ASSERT_EQUAL (seek.ext[0].flags, SC_EXTENT_HOLE);

  sc_extent_list_free (&seek);
  sc_extent_list_free (&fiemap);
  sc_extent_list_free (&none);
  close (fd);
  unlink (path);
}

/* Preallocated, never written space reads as zeros: both methods call
 * it a hole.
 */
static void
test_fd_extents_unwritten (void)
{
#ifdef HAVE_FALLOCATE
  char path[300];
  struct sc_extent_list seek, fiemap;
  unsigned char buf[BLOCK];
  int fd;

  path_of (path, sizeof path, "prealloc");
  fd = open (path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  CU_ASSERT_FATAL (fd >= 0);
  if (fallocate (fd, 0, 0, 64 * BLOCK) == -1) {
    close (fd);
    unlink (path);
    return;                     /* not on this file system */
  }
  memset (buf, 0x77, sizeof buf);
  CU_ASSERT_EQUAL (pwrite (fd, buf, BLOCK, 10 * BLOCK), BLOCK);
  sc_extent_list_init (&seek);
  sc_extent_list_init (&fiemap);
  CU_ASSERT_EQUAL (sc_fd_extents (fd, SC_MAP_FIEMAP, 0, 64 * BLOCK, &fiemap), 0);
  CU_ASSERT_EQUAL (sc_fd_extents (fd, SC_MAP_SEEK, 0, 64 * BLOCK, &seek), 0);
  check_covers (&fiemap, 0, 64 * BLOCK);
  check_covers (&seek, 0, 64 * BLOCK);
  /* FIEMAP knows: hole, the written block, hole. */
  CU_ASSERT_EQUAL (fiemap.len, 3);
  if (fiemap.len == 3) {
    CU_ASSERT_EQUAL (fiemap.ext[0].flags, SC_EXTENT_HOLE);
    CU_ASSERT_EQUAL (fiemap.ext[1].offset, 10 * BLOCK);
    CU_ASSERT_EQUAL (fiemap.ext[1].length, BLOCK);
    CU_ASSERT_EQUAL (fiemap.ext[1].flags, 0);
    CU_ASSERT_EQUAL (fiemap.ext[2].flags, SC_EXTENT_HOLE);
  }
  /* SEEK_DATA may report preallocated space as data, never the
   * written block as a hole.
   */
  for (size_t i = 0; i < seek.len; i++)
    if (seek.ext[i].flags & SC_EXTENT_HOLE)
      CU_ASSERT (seek.ext[i].offset + seek.ext[i].length <= 10 * BLOCK
                 || seek.ext[i].offset >= 11 * BLOCK);
  sc_extent_list_free (&seek);
  sc_extent_list_free (&fiemap);
  close (fd);
  unlink (path);
#endif
}

/* Pipeline test state. */
struct ptest {
  uint64_t next;                /* next offset expected by emit */
  uint64_t emitted;
  uint64_t data_bytes;
  uint64_t fail_work_at;        /* UINT64_MAX = never */
  uint64_t fail_emit_at;
  uint64_t emits_after_fail;
  bool content_ok;
  bool failed;
  uint32_t request_size;
};

static int
ptest_work (struct sc_piece *piece, void *opaque)
{
  struct ptest *t = opaque;

  if (piece->offset >= t->fail_work_at) {
    sc_set_error (EIO, "work failed on purpose");
    return -1;
  }
  piece->user = piece->offset ^ 0x5a5a;
  return 0;
}

static int
ptest_emit (struct sc_piece *piece, void *opaque)
{
  struct ptest *t = opaque;

  if (t->failed)
    t->emits_after_fail++;
  if (piece->offset != t->next)
    t->content_ok = false;
  t->next = piece->offset + piece->length;
  t->emitted++;
  if (piece->flags == 0) {
    const unsigned char *b = piece->buf;
    /* Data pieces never cross a request_size boundary (1 MiB by
     * default).
     */
    uint64_t rs = t->request_size ? t->request_size : MiB;
    if (piece->offset / rs != (piece->offset + piece->length - 1) / rs)
      t->content_ok = false;
    if (piece->user != (piece->offset ^ 0x5a5a))
      t->content_ok = false;
    for (uint64_t i = 0; i < piece->length; i++) {
      uint64_t o = piece->offset + i;
      unsigned char want = is_data_block (o / BLOCK) ? pattern (o) : 0;
      if (b[i] != want) {
        t->content_ok = false;
        break;
      }
    }
    t->data_bytes += piece->length;
  }
  if (piece->offset >= t->fail_emit_at) {
    t->failed = true;
    sc_set_error (ENOSPC, "emit failed on purpose");
    return -1;
  }
  return 0;
}

static void
progress_cb (const struct sc_progress *p, void *opaque)
{
  struct sc_progress *last = opaque;

  if (p->done < last->done)
    last->total = 0;            /* went backwards: flag it */
  else
    *last = *p;
}

/* The bytes the kernel reports as data (SEEK_DATA/SEEK_HOLE), asked
 * here directly: what the pipeline's progress must count.
 */
static uint64_t
kernel_data_bytes (const char *path)
{
  int fd = open (path, O_RDONLY);
  off_t end, pos = 0, data, hole;
  uint64_t sum = 0;

  if (fd == -1)
    return 0;
  end = lseek (fd, 0, SEEK_END);
  while (pos < end && (data = lseek (fd, pos, SEEK_DATA)) != -1) {
    hole = lseek (fd, data, SEEK_HOLE);
    if (hole == -1)
      break;
    sum += (uint64_t) (hole - data);
    pos = hole;
  }
  close (fd);
  return sum;
}

static void
run_pipeline (unsigned threads, uint32_t request_size)
{
  char path[300];
  struct sc_endpoint *src;
  struct ptest t = { .fail_work_at = UINT64_MAX, .fail_emit_at = UINT64_MAX,
                     .content_ok = true, .request_size = request_size };
  struct sc_progress last = { 0, 0 };
  struct sc_pipeline p = {
    .request_size = request_size,
    .threads = threads,
    .out_size = 1000,
    .work = ptest_work,
    .emit = ptest_emit,
    .opaque = &t,
    .progress = progress_cb,
    .progress_opaque = &last,
  };
  int fd;

  /* 3000 bytes past the last block: a partial final block. */
  path_of (path, sizeof path, "pipeline");
  fd = make_sparse_file (path, 3000);
  CU_ASSERT_FATAL (fd >= 0);
  close (fd);
  src = sc_endpoint_open_source (path, SC_MAP_SEEK);
  CU_ASSERT_FATAL (src != NULL);
  CU_ASSERT_STRING_EQUAL (src->ops->kind, "file");
  CU_ASSERT_EQUAL (src->size, (uint64_t) FILE_BLOCKS * BLOCK + 3000);
  p.src = src;

  CU_ASSERT_EQUAL (sc_pipeline_run (&p), 0);
  CU_ASSERT (t.content_ok);
  CU_ASSERT_EQUAL (t.next, src->size);
  CU_ASSERT (t.data_bytes >= NR_DATA_BLOCKS * BLOCK);
  /* Progress counts the data only: holes cost nothing to move. */
  CU_ASSERT_EQUAL (last.done, kernel_data_bytes (path));
  CU_ASSERT_EQUAL (last.total, kernel_data_bytes (path));
  CU_ASSERT (last.total < src->size);

  /* An extent list from the caller may run past the end of the source:
   * those bytes read as zeros.
   */
  {
    struct sc_extent_list l;
    sc_extent_list_init (&l);
    sc_extent_list_append (&l, 0, 3 * BLOCK, 0);
    sc_extent_list_append (&l, 3 * BLOCK, 14 * BLOCK, SC_EXTENT_HOLE);
    sc_extent_list_append (&l, 17 * BLOCK, src->size + 5000 - 17 * BLOCK, 0);
    p.extents = &l;
    t = (struct ptest) { .fail_work_at = UINT64_MAX,
                         .fail_emit_at = UINT64_MAX, .content_ok = true,
                         .request_size = request_size };
    last = (struct sc_progress) { 0, 0 };
    CU_ASSERT_EQUAL (sc_pipeline_run (&p), 0);
    CU_ASSERT (t.content_ok);
    CU_ASSERT_EQUAL (t.next, src->size + 5000);
    /* Progress from a list counts its data extents only. */
    CU_ASSERT_EQUAL (last.total, src->size + 5000 - 14 * BLOCK);
    CU_ASSERT_EQUAL (last.done, last.total);

    /* A list with a gap is refused. */
    sc_extent_list_append (&l, src->size + 6000, 10, 0);
    CU_ASSERT_EQUAL (sc_pipeline_run (&p), -1);
    sc_extent_list_free (&l);
    p.extents = NULL;
  }

  /* The first error wins and stops the run. */
  t = (struct ptest) { .fail_work_at = 256 * BLOCK, .fail_emit_at = UINT64_MAX,
                       .content_ok = true, .request_size = request_size };
  CU_ASSERT_EQUAL (sc_pipeline_run (&p), -1);
  CU_ASSERT_STRING_EQUAL (sc_error_message (), "work failed on purpose");
  CU_ASSERT_EQUAL (sc_error_errno (), EIO);
  CU_ASSERT (t.next <= 256 * BLOCK);
  CU_ASSERT (t.content_ok);

  t = (struct ptest) { .fail_work_at = UINT64_MAX, .fail_emit_at = 17 * BLOCK,
                       .content_ok = true, .request_size = request_size };
  CU_ASSERT_EQUAL (sc_pipeline_run (&p), -1);
  CU_ASSERT_STRING_EQUAL (sc_error_message (), "emit failed on purpose");
  CU_ASSERT_EQUAL (sc_error_errno (), ENOSPC);
  CU_ASSERT_EQUAL (t.emits_after_fail, 0);

  CU_ASSERT_EQUAL (sc_ep_close (src), 0);
  unlink (path);
}

/* A source that is not thread-safe: reads must come one at a time and
 * in source order, however many workers there are.
 */
struct serial_src {
  struct sc_endpoint ep;
  int inside;                   /* reads in progress */
  uint64_t next;                /* reads must not go backwards */
  bool ok;
  uint64_t reads;
  bool sparse;                  /* data only at the end of each GiB */
  unsigned extent_calls;
};

static int
serial_pread (struct sc_endpoint *ep, void *buf, size_t count,
              uint64_t offset)
{
  struct serial_src *s = (struct serial_src *) ep;

  if (__atomic_add_fetch (&s->inside, 1, __ATOMIC_SEQ_CST) != 1)
    s->ok = false;
  if (offset < s->next)
    s->ok = false;
  /* Give other workers a chance to overlap. */
  usleep (s->sparse ? 3000 : 100);
  for (size_t i = 0; i < count; i++)
    ((unsigned char *) buf)[i] = pattern (offset + i);
  s->next = offset + count;
  s->reads++;
  __atomic_sub_fetch (&s->inside, 1, __ATOMIC_SEQ_CST);
  return 0;
}

static int
serial_extents (struct sc_endpoint *ep, uint64_t offset, uint64_t count,
                struct sc_extent_list *list)
{
  struct serial_src *s = (struct serial_src *) ep;
  int r = 0;

  /* Extents are a request like a read: never two at once. */
  if (__atomic_add_fetch (&s->inside, 1, __ATOMIC_SEQ_CST) != 1)
    s->ok = false;
  s->extent_calls++;
  usleep (1000);
  if (s->sparse) {
    /* The data just before each window boundary is read while the
     * next window is asked for.
     */
    for (uint64_t o = offset; r == 0 && o < offset + count; ) {
      uint64_t unit = 1024 * MiB, in = o % unit, data = unit - 64 * KiB;
      uint64_t n = SC_MIN ((in < data ? data : unit) - in,
                           offset + count - o);
      r = sc_extent_list_append (list, o, n, in < data ? SC_EXTENT_HOLE : 0);
      o += n;
    }
    __atomic_sub_fetch (&s->inside, 1, __ATOMIC_SEQ_CST);
    return r;
  }
  __atomic_sub_fetch (&s->inside, 1, __ATOMIC_SEQ_CST);
  /* Data and holes alternating every 5 blocks. */
  for (uint64_t o = offset; o < offset + count; o += 5 * BLOCK) {
    uint64_t n = SC_MIN (5 * BLOCK, offset + count - o);
    if (sc_extent_list_append (list, o, n,
                               (o / (5 * BLOCK)) % 2 ? SC_EXTENT_HOLE : 0) == -1)
      return -1;
  }
  return 0;
}

static int
serial_close (struct sc_endpoint *ep)
{
  return 0;
}

static const struct sc_endpoint_ops serial_ops = {
  .kind = "test",
  .pread = serial_pread,
  .extents = serial_extents,
  .close = serial_close,
};

struct serial_emit {
  uint64_t next;
  bool ok;
};

static int
serial_emit (struct sc_piece *piece, void *opaque)
{
  struct serial_emit *e = opaque;

  if (piece->offset != e->next)
    e->ok = false;
  if (piece->flags == 0) {
    for (uint64_t i = 0; i < piece->length; i++)
      if (((unsigned char *) piece->buf)[i] != pattern (piece->offset + i)) {
        e->ok = false;
        break;
      }
  }
  e->next = piece->offset + piece->length;
  return 0;
}

static void
test_pipeline_serial_source (void)
{
  struct serial_src src = {
    .ep = { .ops = &serial_ops, .name = (char *) "serial",
            .size = 1000 * BLOCK + 17, .flags = SC_EP_SEEKABLE },
    .ok = true,
  };
  struct serial_emit e = { .ok = true };
  struct sc_pipeline p = {
    .src = &src.ep, .request_size = 2 * BLOCK, .threads = 6,
    .emit = serial_emit, .opaque = &e,
  };

  CU_ASSERT_EQUAL (sc_pipeline_run (&p), 0);
  CU_ASSERT (src.ok);
  CU_ASSERT (e.ok);
  CU_ASSERT_EQUAL (e.next, src.ep.size);
  CU_ASSERT (src.reads >= 300);

  /* Large and sparse: extents come in several windows while other
   * workers read, and still never at the same time as a read.
   */
  memset (&src, 0, sizeof src);
  src.ep = (struct sc_endpoint) { .ops = &serial_ops,
                                  .name = (char *) "serial",
                                  .size = 32 * 1024 * (uint64_t) MiB + 17,
                                  .flags = SC_EP_SEEKABLE };
  src.ok = true;
  src.sparse = true;
  e = (struct serial_emit) { .ok = true };
  CU_ASSERT_EQUAL (sc_pipeline_run (&p), 0);
  CU_ASSERT (src.ok);
  CU_ASSERT (e.ok);
  CU_ASSERT_EQUAL (e.next, src.ep.size);
  CU_ASSERT (src.extent_calls >= 4);
}

static void test_pipeline_1 (void) { run_pipeline (1, 64 * KiB); }
static void test_pipeline_4 (void) { run_pipeline (4, 64 * KiB); }
static void test_pipeline_4_small (void) { run_pipeline (4, BLOCK); }
static void test_pipeline_default (void) { run_pipeline (0, 0); }

/* How many names an uncommitted target has in tmpdir: none where the
 * file system makes files without a name (O_TMPFILE), else its
 * temporary name.
 */
static int
temporary_names (void)
{
#ifdef O_TMPFILE
  int fd = open (tmpdir, O_TMPFILE | O_WRONLY, 0600);

  if (fd >= 0) {
    close (fd);
    return 0;
  }
#endif
  return 1;
}

/* Is anything but the named entries left in tmpdir? */
static int
count_dir_entries (void)
{
  char cmd[400];
  FILE *fp;
  int n = -1;

  snprintf (cmd, sizeof cmd, "ls -A '%s' | wc -l", tmpdir);
  fp = popen (cmd, "r");
  if (fp) {
    if (fscanf (fp, "%d", &n) != 1)
      n = -1;
    pclose (fp);
  }
  return n;
}

static void
copy_and_compare (unsigned threads, bool detect_zeroes)
{
  char spath[300], tpath[300];
  struct sc_endpoint *src, *dst;
  struct sc_copy_opts opts = { .threads = threads,
                               .detect_zeroes = detect_zeroes };
  CLEANUP_FREE unsigned char *a = NULL, *b = NULL;
  int fd;
  uint64_t size;
  struct stat st;

  path_of (spath, sizeof spath, "copy-src");
  path_of (tpath, sizeof tpath, "copy-dst");
  fd = make_sparse_file (spath, 123);
  CU_ASSERT_FATAL (fd >= 0);
  close (fd);
  src = sc_endpoint_open_source (spath, SC_MAP_SEEK);
  CU_ASSERT_FATAL (src != NULL);
  size = src->size;
  dst = sc_endpoint_open_target (tpath, size, 0);
  CU_ASSERT_FATAL (dst != NULL);
  CU_ASSERT (dst->flags & SC_EP_FRESH_ZEROS);
  /* Nothing at the target path before the commit. */
  CU_ASSERT_EQUAL (access (tpath, F_OK), -1);
  CU_ASSERT_EQUAL (sc_copy (src, dst, &opts), 0);
  CU_ASSERT_EQUAL (sc_endpoint_commit (dst), 0);
  CU_ASSERT_EQUAL (sc_ep_close (dst), 0);
  CU_ASSERT_EQUAL (sc_ep_close (src), 0);

  a = malloc (size);
  b = malloc (size);
  CU_ASSERT_FATAL (a != NULL && b != NULL);
  fd = open (spath, O_RDONLY);
  CU_ASSERT_EQUAL (sc_full_pread (fd, a, size, 0), 0);
  close (fd);
  fd = open (tpath, O_RDONLY);
  CU_ASSERT_EQUAL (fstat (fd, &st), 0);
  CU_ASSERT_EQUAL ((uint64_t) st.st_size, size);
  CU_ASSERT_EQUAL (sc_full_pread (fd, b, size, 0), 0);
  close (fd);
  CU_ASSERT (memcmp (a, b, size) == 0);
  /* The holes stayed holes. */
  CU_ASSERT ((uint64_t) st.st_blocks * 512 <= 2 * NR_DATA_BLOCKS * BLOCK);

  /* An existing target is refused without force, replaced with it. */
  dst = sc_endpoint_open_target (tpath, size, 0);
  CU_ASSERT_PTR_NULL (dst);
  CU_ASSERT_EQUAL (sc_error_errno (), EEXIST);
  dst = sc_endpoint_open_target (tpath, 10, SC_TARGET_FORCE);
  CU_ASSERT_FATAL (dst != NULL);
  /* src, dst, and the temporary name if there is one */
  CU_ASSERT_EQUAL (count_dir_entries (), 2 + temporary_names ());
  /* Closing without a commit leaves the old target and no temporary. */
  CU_ASSERT_EQUAL (sc_ep_close (dst), 0);
  CU_ASSERT_EQUAL (count_dir_entries (), 2);
  CU_ASSERT_EQUAL (stat (tpath, &st), 0);
  CU_ASSERT_EQUAL ((uint64_t) st.st_size, size);

  /* A target smaller than the source is refused by sc_copy. */
  src = sc_endpoint_open_source (spath, SC_MAP_SEEK);
  dst = sc_endpoint_open_target (tpath, 10, SC_TARGET_FORCE);
  CU_ASSERT_FATAL (src != NULL && dst != NULL);
  CU_ASSERT_EQUAL (sc_copy (src, dst, &opts), -1);
  /* The signal-handler cleanup removes the temporary name. */
  CU_ASSERT_EQUAL (count_dir_entries (), 2 + temporary_names ());
  sc_cleanup_temporaries ();
  CU_ASSERT_EQUAL (count_dir_entries (), 2);
  sc_ep_close (dst);
  sc_ep_close (src);

  unlink (spath);
  unlink (tpath);
}

static void test_copy_1 (void) { copy_and_compare (1, false); }
static void test_copy_4 (void) { copy_and_compare (4, true); }

/* A tee writes every member; one whose writes fail (its descriptor
 * replaced by a read-only one, as a device that fails would) is dropped
 * with its error, and the others are completed.
 */
static void
test_tee (void)
{
  char spath[300], t1[300], t2[300], t3[300];
  struct sc_endpoint *src, *members[3], *tee;
  struct sc_copy_opts opts = { .threads = 4, .detect_zeroes = true };
  CLEANUP_FREE unsigned char *a = NULL, *b = NULL;
  int fd, bad, ro;
  uint64_t size;

  path_of (spath, sizeof spath, "tee-src");
  path_of (t1, sizeof t1, "tee-1");
  path_of (t2, sizeof t2, "tee-2");
  path_of (t3, sizeof t3, "tee-3");
  fd = make_sparse_file (spath, 7);
  CU_ASSERT_FATAL (fd >= 0);
  close (fd);
  src = sc_endpoint_open_source (spath, SC_MAP_SEEK);
  CU_ASSERT_FATAL (src != NULL);
  size = src->size;
  members[0] = sc_endpoint_open_target (t1, 0, 0);
  bad = open (t3, O_RDWR | O_CREAT | O_EXCL, 0644);
  CU_ASSERT_FATAL (bad >= 0);
  members[1] = sc_endpoint_open_fd_target (bad, t3, 0);
  members[2] = sc_endpoint_open_target (t2, 0, 0);
  CU_ASSERT_FATAL (members[0] && members[1] && members[2]);
  tee = sc_endpoint_open_tee (members, 3);
  CU_ASSERT_FATAL (tee != NULL);
  CU_ASSERT (tee->flags & SC_EP_FRESH_ZEROS);
  CU_ASSERT_EQUAL (sc_ep_set_size (tee, size), 0);
  ro = open (spath, O_RDONLY);
  CU_ASSERT_FATAL (ro >= 0);
  CU_ASSERT_FATAL (dup2 (ro, bad) == bad);
  close (ro);

  CU_ASSERT_EQUAL (sc_copy (src, tee, &opts), 0);
  CU_ASSERT_EQUAL (sc_endpoint_commit (tee), 0);
  CU_ASSERT_EQUAL (sc_endpoint_tee_status (tee, 0), 0);
  CU_ASSERT_EQUAL (sc_endpoint_tee_status (tee, 1), -1);
  CU_ASSERT_EQUAL (sc_error_errno (), EBADF);
  CU_ASSERT (strncmp (sc_error_message (), t3, strlen (t3)) == 0);
  CU_ASSERT_EQUAL (sc_endpoint_tee_status (tee, 2), 0);
  CU_ASSERT_EQUAL (sc_endpoint_tee_status (tee, 3), -1);
  CU_ASSERT_EQUAL (sc_error_errno (), EINVAL);
  CU_ASSERT_EQUAL (sc_endpoint_close (tee), 0);
  close (bad);
  sc_ep_close (src);

  a = malloc (size);
  b = malloc (size);
  CU_ASSERT_FATAL (a != NULL && b != NULL);
  fd = open (spath, O_RDONLY);
  CU_ASSERT_EQUAL (sc_full_pread (fd, a, size, 0), 0);
  close (fd);
  for (int i = 0; i < 2; i++) {
    fd = open (i == 0 ? t1 : t2, O_RDONLY);
    CU_ASSERT_FATAL (fd >= 0);
    CU_ASSERT_EQUAL (sc_full_pread (fd, b, size, 0), 0);
    close (fd);
    CU_ASSERT (memcmp (a, b, size) == 0);
  }

  /* A target written forward only cannot be a member. */
  members[0] = sc_endpoint_open_target (t1, 0, SC_TARGET_FORCE);
  members[1] = sc_endpoint_open_fd_target (STDOUT_FILENO, "stdout", 0);
  if (members[1] != NULL && !(members[1]->flags & SC_EP_SEEKABLE)) {
    CU_ASSERT_PTR_NULL (sc_endpoint_open_tee (members, 2));
    CU_ASSERT_EQUAL (sc_error_errno (), EINVAL);
  }
  else {
    sc_ep_close (members[0]);
    sc_ep_close (members[1]);
  }
  CU_ASSERT_PTR_NULL (sc_endpoint_open_tee (members, 0));
  unlink (spath);
  unlink (t1);
  unlink (t2);
  unlink (t3);
}

static void
test_source_errors (void)
{
  char path[300];

  path_of (path, sizeof path, "does-not-exist");
  CU_ASSERT_PTR_NULL (sc_endpoint_open_source (path, SC_MAP_SEEK));
  CU_ASSERT_EQUAL (sc_error_errno (), ENOENT);
  CU_ASSERT_PTR_NULL (sc_endpoint_open_source (tmpdir, SC_MAP_SEEK));
  path_of (path, sizeof path, "no-such-dir/target");
  CU_ASSERT_PTR_NULL (sc_endpoint_open_target (path, 100, 0));
  CU_ASSERT_PTR_NULL (sc_endpoint_open_target (tmpdir, 100, SC_TARGET_FORCE));
  CU_ASSERT_EQUAL (sc_error_errno (), EISDIR);
}

/* The null endpoints and the defaults of optional slots. */
static int
minimal_close (struct sc_endpoint *ep)
{
  sc_ep_free (ep);
  return 0;
}

static uint64_t minimal_written;

static int
minimal_pwrite (struct sc_endpoint *ep, const void *buf, size_t count,
                uint64_t offset)
{
  /* The default zero slot writes zeros through pwrite. */
  if (!sc_is_zero (buf, count))
    return -1;
  minimal_written += count;
  return 0;
}

/* Only the required slot and pwrite: everything else is a default. */
static const struct sc_endpoint_ops minimal_ops = {
  .kind = "minimal",
  .pwrite = minimal_pwrite,
  .close = minimal_close,
};

static void
test_endpoint_defaults (void)
{
  struct sc_endpoint *src, *dst, *ep;
  struct sc_extent_list list;
  struct sc_copy_opts opts = { .threads = 2 };
  struct sc_fingerprint fp;
  uint64_t written, zeroed;
  char buf[16];
  size_t got;

  /* 1 TiB of zeros copies without a single byte read or written. */
  src = sc_null_source_new ((uint64_t) 1 << 40);
  dst = sc_null_target_new ((uint64_t) 1 << 40);
  CU_ASSERT_FATAL (src != NULL && dst != NULL);
  CU_ASSERT_EQUAL (sc_copy (src, dst, &opts), 0);
  sc_null_target_counts (dst, &written, &zeroed);
  CU_ASSERT_EQUAL (written, 0);
  CU_ASSERT_EQUAL (zeroed, (uint64_t) 1 << 40);
  /* A smaller target is refused before anything moves. */
  sc_ep_close (dst);
  dst = sc_null_target_new (4096);
  CU_ASSERT_EQUAL (sc_copy (src, dst, &opts), -1);
  CU_ASSERT_EQUAL (sc_error_errno (), ENOSPC);
  sc_ep_close (dst);
  sc_ep_close (src);

  ep = sc_ep_new (sizeof *ep, &minimal_ops, "minimal");
  CU_ASSERT_FATAL (ep != NULL);
  ep->size = 1 * MiB;
  /* No pread: reading fails with ENOTSUP. */
  CU_ASSERT_EQUAL (sc_ep_pread (ep, buf, sizeof buf, 0), -1);
  CU_ASSERT_EQUAL (sc_error_errno (), ENOTSUP);
  /* No extents: one data extent over the range asked for. */
  sc_extent_list_init (&list);
  CU_ASSERT_EQUAL (sc_ep_extents (ep, 4096, 8192, &list), 0);
  CU_ASSERT_EQUAL (list.len, 1);
  if (list.len == 1) {
    CU_ASSERT_EQUAL (list.ext[0].offset, 4096);
    CU_ASSERT_EQUAL (list.ext[0].length, 8192);
    CU_ASSERT_EQUAL (list.ext[0].flags, 0);
  }
  sc_extent_list_free (&list);
  /* No zero slot: zeros are written, or ENOTSUP when asked to be fast. */
  minimal_written = 0;
  CU_ASSERT_EQUAL (sc_ep_zero (ep, 600 * KiB, 0, SC_ZERO_MAY_UNMAP), 0);
  CU_ASSERT_EQUAL (minimal_written, 600 * KiB);
  CU_ASSERT_EQUAL (sc_ep_zero (ep, 4096, 0, SC_ZERO_FAST), -1);
  CU_ASSERT_EQUAL (sc_error_errno (), ENOTSUP);
  CU_ASSERT_EQUAL (minimal_written, 600 * KiB);
  /* No fingerprint, no cache probe, no kernel copy, no flush. */
  CU_ASSERT_EQUAL (sc_ep_fingerprint (ep, &fp), 1);
  CU_ASSERT_EQUAL (sc_ep_pread_nowait (ep, buf, sizeof buf, 0), 1);
  CU_ASSERT_EQUAL (sc_ep_copy_range (ep, 0, ep, 0, 4096, 0),
                   SC_COPY_DECLINED);
  CU_ASSERT_EQUAL (sc_ep_copy_range (ep, 0, ep, 0, 4096, SC_COPY_CLONE),
                   SC_COPY_NEVER);
  CU_ASSERT_EQUAL (sc_ep_flush (ep), 0);
  CU_ASSERT_EQUAL (sc_ep_commit (ep), 0);
  /* Not a stream: read_some reads what there is up to the size, and
   * that needs pread.
   */
  CU_ASSERT_EQUAL (sc_ep_read_some (ep, buf, sizeof buf, 2 * MiB, &got), 0);
  CU_ASSERT_EQUAL (got, 0);
  CU_ASSERT_EQUAL (sc_ep_read_some (ep, buf, sizeof buf, 0, &got), -1);
  CU_ASSERT_EQUAL (sc_ep_close (ep), 0);
}

/* A source whose extents answers are chosen by the test: short answers
 * and answers that run past the window are allowed, anything that does
 * not continue where the last answer ended is an error.
 */
enum liar_mode { LIAR_SHORT, LIAR_GAP, LIAR_NOTHING, LIAR_TOO_LONG,
                 LIAR_OVERLAP };

struct liar_src {
  struct sc_endpoint ep;
  enum liar_mode mode;
  unsigned calls;
};

static int
liar_pread (struct sc_endpoint *ep, void *buf, size_t count, uint64_t offset)
{
  memset (buf, 0x5a, count);
  return 0;
}

static int
liar_extents (struct sc_endpoint *ep, uint64_t offset, uint64_t count,
              struct sc_extent_list *list)
{
  struct liar_src *l = (struct liar_src *) ep;
  /* Alternate data and holes of 3 MiB, 3 MiB at most per answer. */
  uint32_t flags = (offset / (3 * MiB)) % 2 ? SC_EXTENT_HOLE : 0;
  uint64_t n = SC_MIN (count, 3 * MiB - offset % (3 * MiB));

  l->calls++;
  switch (l->mode) {
  case LIAR_SHORT:
    return sc_extent_list_append (list, offset, n, flags);
  case LIAR_GAP:
    return sc_extent_list_append (list, offset + 4096, n, flags);
  case LIAR_NOTHING:
    return 0;
  case LIAR_TOO_LONG:
    return sc_extent_list_append (list, offset, count + 4096, flags);
  case LIAR_OVERLAP:
    if (sc_extent_list_append (list, offset, n, 0) == -1)
      return -1;
    return sc_extent_list_append (list, offset, n, SC_EXTENT_HOLE);
  }
  return -1;
}

static int
liar_close (struct sc_endpoint *ep)
{
  sc_ep_free (ep);
  return 0;
}

static const struct sc_endpoint_ops liar_ops = {
  .kind = "liar",
  .pread = liar_pread,
  .extents = liar_extents,
  .close = liar_close,
};

static void
test_copy_extent_windows (void)
{
  const uint64_t size = 64 * MiB + 12345;

  for (int mode = LIAR_SHORT; mode <= LIAR_OVERLAP; mode++) {
    for (unsigned threads = 1; threads <= 4; threads += 3) {
      struct liar_src *l = sc_ep_new (sizeof *l, &liar_ops, "liar");
      struct sc_endpoint *dst = sc_null_target_new (size);
      struct sc_copy_opts opts = { .threads = threads };
      uint64_t written, zeroed;
      int r;

      CU_ASSERT_FATAL (l != NULL && dst != NULL);
      l->ep.size = size;
      l->ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE;
      l->mode = (enum liar_mode) mode;
      r = sc_copy (&l->ep, dst, &opts);
      sc_null_target_counts (dst, &written, &zeroed);
      if (mode == LIAR_SHORT || mode == LIAR_TOO_LONG) {
        /* Every byte once, asked for in many short answers (or in
         * answers cut at the end of the window).
         */
        CU_ASSERT_EQUAL (r, 0);
        CU_ASSERT_EQUAL (written + zeroed, size);
        CU_ASSERT (mode == LIAR_TOO_LONG || l->calls >= size / (3 * MiB));
        CU_ASSERT (mode == LIAR_TOO_LONG
                   || (written >= 30 * MiB && zeroed >= 30 * MiB));
      }
      else {
        CU_ASSERT_EQUAL (r, -1);
        CU_ASSERT_EQUAL (sc_error_errno (), EIO);
        CU_ASSERT (strstr (sc_error_message (), "liar") != NULL);
      }
      sc_ep_close (dst);
      sc_ep_close (&l->ep);
    }
  }
}

/* Endpoints on descriptors the caller opened: sources read from offset
 * 0, regular-file targets are written in place and keep their tail,
 * and closing the endpoint leaves the descriptor open.
 */
static void
test_fd_endpoints (void)
{
  char spath[300], tpath[300];
  unsigned char buf[3 * BLOCK];
  struct sc_endpoint *src, *dst;
  struct sc_copy_opts opts = { .threads = 2, .detect_zeroes = true };
  int sfd, tfd;

  path_of (spath, sizeof spath, "fd-src");
  path_of (tpath, sizeof tpath, "fd-dst");
  sfd = open (spath, O_RDWR | O_CREAT | O_TRUNC, 0600);
  tfd = open (tpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
  CU_ASSERT_FATAL (sfd >= 0 && tfd >= 0);
  memset (buf, 0xab, sizeof buf);
  CU_ASSERT_EQUAL (pwrite (sfd, buf, BLOCK, 2 * BLOCK), BLOCK);
  CU_ASSERT_EQUAL (ftruncate (sfd, 4 * BLOCK), 0);
  /* The target is longer than the source and full of 0x11. */
  memset (buf, 0x11, sizeof buf);
  for (int i = 0; i < 2; i++)
    CU_ASSERT_EQUAL (pwrite (tfd, buf, sizeof buf, i * sizeof buf),
                     (ssize_t) sizeof buf);
  /* Positions do not matter. */
  CU_ASSERT (lseek (sfd, 123, SEEK_SET) == 123);
  CU_ASSERT (lseek (tfd, 456, SEEK_SET) == 456);

  src = sc_endpoint_open_fd_source (sfd, "fd-src", SC_MAP_SEEK);
  CU_ASSERT_FATAL (src != NULL);
  CU_ASSERT_EQUAL (sc_endpoint_size (src), 4 * BLOCK);
  CU_ASSERT_STRING_EQUAL (sc_endpoint_name (src), "fd-src");
  dst = sc_endpoint_open_fd_target (tfd, "fd-dst", sc_endpoint_size (src));
  CU_ASSERT_FATAL (dst != NULL);
  /* Not empty before: it does not read as zero by itself. */
  CU_ASSERT_FALSE (dst->flags & SC_EP_FRESH_ZEROS);
  CU_ASSERT_EQUAL (sc_copy (src, dst, &opts), 0);
  CU_ASSERT_EQUAL (sc_endpoint_commit (dst), 0);
  CU_ASSERT_EQUAL (sc_endpoint_close (dst), 0);
  CU_ASSERT_EQUAL (sc_endpoint_close (src), 0);

  /* Both descriptors still open; the target holds the source's bytes
   * (zeros where the source has a hole) and then its old tail.
   */
  CU_ASSERT_EQUAL (pread (tfd, buf, sizeof buf, 0), (ssize_t) sizeof buf);
  for (size_t i = 0; i < sizeof buf; i++)
    if (buf[i] != (i >= 2 * BLOCK ? 0xab : 0)) {
      CU_FAIL ("target content");
      break;
    }
  CU_ASSERT_EQUAL (pread (tfd, buf, BLOCK, 4 * BLOCK), BLOCK);
  CU_ASSERT_EQUAL (buf[0], 0x11);
  CU_ASSERT_EQUAL (lseek (tfd, 0, SEEK_END), 2 * (off_t) sizeof buf);
  CU_ASSERT_EQUAL (close (sfd), 0);
  CU_ASSERT_EQUAL (close (tfd), 0);

  /* An empty file is grown and reads as zero where not written. */
  tfd = open (tpath, O_RDWR | O_TRUNC);
  CU_ASSERT_FATAL (tfd >= 0);
  dst = sc_endpoint_open_fd_target (tfd, "fd-dst", 10 * BLOCK);
  CU_ASSERT_FATAL (dst != NULL);
  CU_ASSERT (dst->flags & SC_EP_FRESH_ZEROS);
  CU_ASSERT_EQUAL (lseek (tfd, 0, SEEK_END), 10 * BLOCK);
  CU_ASSERT_EQUAL (sc_endpoint_close (dst), 0);
  /* Writes must land at their offsets: no appending descriptor, and
   * no read-only one.
   */
  {
    int afd = open (tpath, O_WRONLY | O_APPEND);
    int rfd = open (tpath, O_RDONLY);
    CU_ASSERT_PTR_NULL (sc_endpoint_open_fd_target (afd, "append", 1));
    CU_ASSERT_EQUAL (sc_error_errno (), EINVAL);
    CU_ASSERT_PTR_NULL (sc_endpoint_open_fd_target (rfd, "ro", 1));
    CU_ASSERT_EQUAL (sc_error_errno (), EBADF);
    close (afd);
    close (rfd);
  }
  /* A directory is neither. */
  {
    int dfd = open (tmpdir, O_RDONLY | O_DIRECTORY);
    CU_ASSERT_PTR_NULL (sc_endpoint_open_fd_source (dfd, "dir", SC_MAP_SEEK));
    CU_ASSERT_EQUAL (sc_error_errno (), EINVAL);
    CU_ASSERT_PTR_NULL (sc_endpoint_open_fd_target (dfd, "dir", 1));
    close (dfd);
  }
  CU_ASSERT_EQUAL (close (tfd), 0);
  CU_ASSERT_PTR_NULL (sc_endpoint_open_fd_source (tfd, "closed", SC_MAP_SEEK));
  CU_ASSERT_EQUAL (sc_error_errno (), EBADF);
}

/* sc_pack and sc_unpack between endpoints on descriptors: a program
 * packs and unpacks without naming a single file, and the image passes
 * qemu-img check when qemu-img is there.
 */
static void
test_pack_unpack_fds (void)
{
  char rpath[300], ipath[300], opath[300], cmd[700];
  unsigned char a[BLOCK], b[BLOCK];
  struct sc_pack_opts popts;
  struct sc_unpack_opts uopts = { .threads = 2 };
  struct sc_endpoint *src, *img, *out, *null;
  int rfd, ifd, ofd;
  const off_t size = 8 * MiB + 1536;

  path_of (rpath, sizeof rpath, "pk.raw");
  path_of (ipath, sizeof ipath, "pk.qcow2");
  path_of (opath, sizeof opath, "pk.out");
  rfd = open (rpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
  ifd = open (ipath, O_RDWR | O_CREAT | O_TRUNC, 0600);
  ofd = open (opath, O_RDWR | O_CREAT | O_TRUNC, 0600);
  CU_ASSERT_FATAL (rfd >= 0 && ifd >= 0 && ofd >= 0);
  CU_ASSERT_EQUAL (ftruncate (rfd, size), 0);
  for (int i = 0; i < 5; i++) {
    memset (a, 'a' + i, sizeof a);
    CU_ASSERT_EQUAL (pwrite (rfd, a, sizeof a, i * 1536 * KiB + 512),
                     (ssize_t) sizeof a);
  }

  sc_pack_opts_init (&popts);
  popts.codec = SC_CODEC_DEFLATE;
  popts.threads = 2;
  src = sc_endpoint_open_fd_source (rfd, "pk.raw", SC_MAP_SEEK);
  img = sc_endpoint_open_fd_target (ifd, "pk.qcow2", 0);
  CU_ASSERT_FATAL (src != NULL && img != NULL);
  CU_ASSERT_EQUAL (sc_pack (src, img, &popts), 0);
  CU_ASSERT_EQUAL (sc_endpoint_commit (img), 0);
  CU_ASSERT_EQUAL (sc_endpoint_close (img), 0);
  /* Into a target that is too small: ENOSPC, nothing else. */
  null = sc_null_target_new (4096);
  CU_ASSERT_EQUAL (sc_pack (src, null, &popts), -1);
  CU_ASSERT_EQUAL (sc_error_errno (), ENOSPC);
  sc_endpoint_close (null);
  CU_ASSERT_EQUAL (sc_endpoint_close (src), 0);

  snprintf (cmd, sizeof cmd, "command -v qemu-img >/dev/null || exit 0; "
            "qemu-img check -q '%s' && qemu-img compare -q -f raw -F qcow2 "
            "'%s' '%s'", ipath, rpath, ipath);
  CU_ASSERT_EQUAL (system (cmd), 0);

  img = sc_endpoint_open_fd_source (ifd, ipath, SC_MAP_SEEK);
  out = sc_endpoint_open_fd_target (ofd, "pk.out", 0);
  CU_ASSERT_FATAL (img != NULL && out != NULL);
  CU_ASSERT_EQUAL (sc_unpack (img, out, &uopts), 0);
  CU_ASSERT_EQUAL (sc_endpoint_commit (out), 0);
  CU_ASSERT_EQUAL (sc_endpoint_close (out), 0);
  CU_ASSERT_EQUAL (sc_endpoint_close (img), 0);
  CU_ASSERT_EQUAL (lseek (ofd, 0, SEEK_END), size);
  for (off_t o = 0; o < size; o += sizeof a) {
    size_t n = (size_t) SC_MIN ((off_t) sizeof a, size - o);
    if (pread (rfd, a, n, o) != (ssize_t) n || pread (ofd, b, n, o) != (ssize_t) n
        || memcmp (a, b, n) != 0) {
      CU_FAIL ("unpacked content differs from the source");
      break;
    }
  }
  close (rfd);
  close (ifd);
  close (ofd);
}

int
main (void)
{
  CU_pSuite s;
  unsigned failures;

  if (CU_initialize_registry () != CUE_SUCCESS)
    return EXIT_FAILURE;
  s = CU_add_suite ("extent", suite_init, suite_clean);
  if (s == NULL
      || !CU_add_test (s, "extent list append", test_list_append)
      || !CU_add_test (s, "fd extents: seek, fiemap, none", test_fd_extents)
      || !CU_add_test (s, "pipeline, 1 thread", test_pipeline_1)
      || !CU_add_test (s, "pipeline, 4 threads", test_pipeline_4)
      || !CU_add_test (s, "pipeline, 4 threads, 4 KiB", test_pipeline_4_small)
      || !CU_add_test (s, "pipeline, defaults", test_pipeline_default)
      || !CU_add_test (s, "pipeline, serial source",
                       test_pipeline_serial_source)
      || !CU_add_test (s, "fd extents: preallocated", test_fd_extents_unwritten)
      || !CU_add_test (s, "copy, 1 thread", test_copy_1)
      || !CU_add_test (s, "copy, 4 threads, zero detection", test_copy_4)
      || !CU_add_test (s, "tee: a failing member is dropped", test_tee)
      || !CU_add_test (s, "open errors", test_source_errors)
      || !CU_add_test (s, "endpoint defaults, null endpoints",
                       test_endpoint_defaults)
      || !CU_add_test (s, "copy, extents a window at a time",
                       test_copy_extent_windows)
      || !CU_add_test (s, "endpoints on descriptors", test_fd_endpoints)
      || !CU_add_test (s, "pack and unpack between descriptors",
                       test_pack_unpack_fds)) {
    CU_cleanup_registry ();
    return EXIT_FAILURE;
  }
  CU_basic_set_mode (CU_BRM_VERBOSE);
  CU_basic_run_tests ();
  failures = CU_get_number_of_failures () + CU_get_number_of_suites_failed ()
    + CU_get_number_of_tests_failed ();
  CU_cleanup_registry ();
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
