/* qcow2 snapshot table: one parser for the reader (strict) and the
 * checker (lenient).
 *
 * The two read the same entries for different ends.  The reader needs
 * every field exactly and must refuse anything it cannot trust; the
 * checker reads the table as qemu-img check does, so that it can count
 * what the entries reference even when the table is damaged or cut
 * short.  See "Snapshots" in qemu's docs/interop/qcow2.rst.
 */
#include <config.h>

#include <string.h>

#include "internal.h"
#include "qcow2.h"

/* Entry layout: a fixed part, extra data, the ID, the name, and
 * padding to 8 bytes before the next entry.
 */
#define SNAPSHOT_HEADER_SIZE     40
#define SNAPSHOT_L1_OFFSET       0
#define SNAPSHOT_L1_SIZE         8
#define SNAPSHOT_ID_SIZE         12
#define SNAPSHOT_NAME_SIZE       14
#define SNAPSHOT_DATE_SEC        16
#define SNAPSHOT_DATE_NSEC       20
#define SNAPSHOT_VM_CLOCK        24
#define SNAPSHOT_VM_STATE_SIZE   32
#define SNAPSHOT_EXTRA_SIZE      36
#define SNAPSHOT_EXTRA_VM_STATE  0    /* u64 large VM state size */
#define SNAPSHOT_EXTRA_DISK_SIZE 8    /* u64 virtual disk size */
#define SNAPSHOT_EXTRA_ICOUNT    16   /* u64 instruction count */
#define SNAPSHOT_ALIGN           8
/* qemu refuses more extra data than this in one entry. */
#define SNAPSHOT_MAX_EXTRA       1024
/* qemu's cap on the whole table: 1 KiB for each of the most snapshots
 * it allows, 64 MiB.
 */
#define SNAPSHOT_MAX_TABLE_BYTES ((uint64_t) QCOW2_MAX_SNAPSHOTS * 1024)

/* The fields of the fixed part and of the extra data. */
static void
decode_entry (const unsigned char *hdr, const unsigned char *extra,
              uint32_t extra_size, struct qcow2_snapshot *sn)
{
  sn->l1_offset = sc_get_be64 (hdr + SNAPSHOT_L1_OFFSET);
  sn->l1_size = sc_get_be32 (hdr + SNAPSHOT_L1_SIZE);
  sn->date_sec = sc_get_be32 (hdr + SNAPSHOT_DATE_SEC);
  sn->date_nsec = sc_get_be32 (hdr + SNAPSHOT_DATE_NSEC);
  sn->vm_clock_nsec = sc_get_be64 (hdr + SNAPSHOT_VM_CLOCK);
  sn->vm_state_size = sc_get_be32 (hdr + SNAPSHOT_VM_STATE_SIZE);
  sn->extra_size = extra_size;
  /* The large VM state size and the disk size come as a pair. */
  if (extra_size >= SNAPSHOT_EXTRA_DISK_SIZE + 8) {
    uint64_t large = sc_get_be64 (extra + SNAPSHOT_EXTRA_VM_STATE);

    if (large)
      sn->vm_state_size = large;
    sn->disk_size = sc_get_be64 (extra + SNAPSHOT_EXTRA_DISK_SIZE);
  }
  /* qemu stores all ones when record/replay was off. */
  sn->icount = extra_size >= SNAPSHOT_EXTRA_ICOUNT + 8
    ? sc_get_be64 (extra + SNAPSHOT_EXTRA_ICOUNT) : UINT64_MAX;
}

/* The reader's way: every byte of the table inside the file and
 * inside qemu's cap, IDs and names whole and free of NUL bytes.
 */
static int
read_strict (struct sc_endpoint *ep, uint64_t file_size,
             const struct qcow2_header *h, struct qcow2_snapshots *t)
{
  uint64_t start = h->snapshots_offset, pos = start, table_end;

  if (SC_ADD_OVERFLOW (pos, SNAPSHOT_MAX_TABLE_BYTES, &table_end))
    table_end = UINT64_MAX;
  table_end = SC_MIN (table_end, file_size);

  for (uint32_t i = 0; i < t->n; i++) {
    struct qcow2_snapshot *sn = &t->s[i];
    unsigned char hdr[SNAPSHOT_HEADER_SIZE];
    unsigned char extra[SNAPSHOT_MAX_EXTRA];
    uint32_t extra_size;
    uint16_t id_size, name_size;
    uint64_t entry_len;

    if (pos + SNAPSHOT_HEADER_SIZE > table_end)
      goto trunc;
    if (sc_ep_pread (ep, hdr, sizeof hdr, pos) == -1)
      return -1;
    extra_size = sc_get_be32 (hdr + SNAPSHOT_EXTRA_SIZE);
    id_size = sc_get_be16 (hdr + SNAPSHOT_ID_SIZE);
    name_size = sc_get_be16 (hdr + SNAPSHOT_NAME_SIZE);
    if (extra_size > SNAPSHOT_MAX_EXTRA) {
      sc_set_error (EINVAL, "snapshot %" PRIu32 ": extra data too large (%"
                    PRIu32 " bytes)", i, extra_size);
      return -1;
    }
    entry_len = SNAPSHOT_HEADER_SIZE + (uint64_t) extra_size + id_size
      + name_size;
    if (pos + entry_len > table_end)
      goto trunc;

    if (sc_ep_pread (ep, extra, extra_size,
                       pos + SNAPSHOT_HEADER_SIZE) == -1)
      return -1;
    sn->id = malloc ((size_t) id_size + 1);
    sn->name = malloc ((size_t) name_size + 1);
    if (sn->id == NULL || sn->name == NULL) {
      sc_set_error (errno, "malloc: %s", strerror (errno));
      return -1;
    }
    if (sc_ep_pread (ep, sn->id, id_size,
                       pos + SNAPSHOT_HEADER_SIZE + extra_size) == -1
        || sc_ep_pread (ep, sn->name, name_size,
                          pos + SNAPSHOT_HEADER_SIZE + extra_size
                          + id_size) == -1)
      return -1;
    sn->id[id_size] = '\0';
    sn->name[name_size] = '\0';
    if (strlen (sn->id) != id_size || strlen (sn->name) != name_size) {
      sc_set_error (EINVAL, "snapshot %" PRIu32 ": NUL byte in its ID or "
                    "name", i);
      return -1;
    }
    decode_entry (hdr, extra, extra_size, sn);
    t->table_bytes = pos + entry_len - start;
    pos += SC_ROUND_UP (entry_len, SNAPSHOT_ALIGN);
  }
  return 0;

 trunc:
  sc_set_error (EINVAL, "snapshot table runs past the end of the file "
                "or qemu's size limit");
  return -1;
}

/* A label for messages: at most QCOW2_SNAPSHOT_LABEL_MAX bytes of it,
 * printable.
 */
static int
read_label (struct sc_endpoint *ep, uint64_t file_size, uint16_t len,
            uint64_t offset, char **label)
{
  *label = calloc (1, QCOW2_SNAPSHOT_LABEL_MAX + 1);
  if (*label == NULL) {
    sc_set_error (errno, "snapshot table: out of memory");
    return -1;
  }
  if (qcow2_pread_padded (ep, file_size, *label,
                          SC_MIN (len, QCOW2_SNAPSHOT_LABEL_MAX),
                          offset) == -1)
    return -1;
  for (char *p = *label; *p; p++)
    if (*p < ' ' || *p > '~')
      *p = '?';
  return 0;
}

/* The checker's way, qemu-img check's: past the end of the file the
 * table reads as zeros, so a table cut short still parses; only what
 * qemu cannot read at all is an error.
 */
static int
read_lenient (struct sc_endpoint *ep, uint64_t file_size,
              const struct qcow2_header *h, struct qcow2_snapshots *t)
{
  uint64_t start = h->snapshots_offset, offset = start;

  for (uint32_t i = 0; i < t->n; i++) {
    struct qcow2_snapshot *sn = &t->s[i];
    unsigned char hdr[SNAPSHOT_HEADER_SIZE];
    unsigned char extra[SNAPSHOT_EXTRA_ICOUNT + 8];
    uint32_t extra_size, id_len, name_len;

    offset = SC_ROUND_UP (offset, SNAPSHOT_ALIGN);
    if (!qcow2_io_readable (offset, SNAPSHOT_HEADER_SIZE)) {
      sc_set_error (EINVAL, "snapshot table: entry %" PRIu32 " at offset "
                    "0x%" PRIx64 " cannot be read", i, offset);
      return -1;
    }
    if (qcow2_pread_padded (ep, file_size, hdr, sizeof hdr, offset) == -1)
      return -1;
    id_len = sc_get_be16 (hdr + SNAPSHOT_ID_SIZE);
    name_len = sc_get_be16 (hdr + SNAPSHOT_NAME_SIZE);
    extra_size = sc_get_be32 (hdr + SNAPSHOT_EXTRA_SIZE);
    if (extra_size > SNAPSHOT_MAX_EXTRA) {
      sc_set_error (EFBIG, "snapshot table: entry %" PRIu32 " has %" PRIu32
                    " bytes of extra data (at most %d)", i, extra_size,
                    SNAPSHOT_MAX_EXTRA);
      return -1;
    }
    offset += SNAPSHOT_HEADER_SIZE;
    /* All three are small: the sums cannot overflow, but the reads
     * must stay where qemu can read.
     */
    if (!qcow2_io_readable (offset, (uint64_t) extra_size + id_len
                            + name_len)) {
      sc_set_error (EINVAL, "snapshot table: entry %" PRIu32 " cannot be "
                    "read", i);
      return -1;
    }
    /* Only the part of the extra data that decode_entry looks at. */
    if (qcow2_pread_padded (ep, file_size, extra,
                            SC_MIN (extra_size, sizeof extra),
                            offset) == -1)
      return -1;
    offset += extra_size;
    if (read_label (ep, file_size, id_len, offset, &sn->id) == -1
        || read_label (ep, file_size, name_len, offset + id_len,
                       &sn->name) == -1)
      return -1;
    decode_entry (hdr, extra, extra_size, sn);
    /* The table ends where the last name ends (no padding). */
    offset += id_len + name_len;
    if (offset - start > SNAPSHOT_MAX_TABLE_BYTES) {
      sc_set_error (EFBIG, "snapshot table is larger than %" PRIu64
                    " bytes", SNAPSHOT_MAX_TABLE_BYTES);
      return -1;
    }
  }
  t->table_bytes = offset - start;
  return 0;
}

int
qcow2_snapshots_read (struct sc_endpoint *ep, uint64_t file_size,
                      const struct qcow2_header *h, bool lenient,
                      struct qcow2_snapshots *t)
{
  uint32_t n = h->nb_snapshots;
  int r;

  memset (t, 0, sizeof *t);
  if (lenient) {
    /* The header reader left these to the checker.  The first is the
     * cap on the allocation below.
     */
    if (n > QCOW2_MAX_SNAPSHOTS) {
      sc_set_error (EFBIG, "snapshot table: too many snapshots (%" PRIu32
                    ", at most %d)", n, QCOW2_MAX_SNAPSHOTS);
      return -1;
    }
    /* qemu validates the offset even of an empty table. */
    if (!SC_IS_ALIGNED (h->snapshots_offset, h->cluster_size)
        || h->snapshots_offset
           > INT64_MAX - (uint64_t) n * SNAPSHOT_HEADER_SIZE) {
      sc_set_error (EINVAL, "snapshot table: invalid offset 0x%" PRIx64
                    " (not aligned to a cluster, or too large)",
                    h->snapshots_offset);
      return -1;
    }
  }
  if (n == 0)
    return 0;

  t->s = calloc (n, sizeof *t->s);
  if (t->s == NULL) {
    if (lenient)
      sc_set_error (errno, "snapshot table: out of memory");
    else
      sc_set_error (errno, "calloc: %s", strerror (errno));
    return -1;
  }
  t->n = n;
  if (lenient)
    r = read_lenient (ep, file_size, h, t);
  else
    r = read_strict (ep, file_size, h, t);
  if (r == -1)
    qcow2_snapshots_free (t);
  return r;
}

void
qcow2_snapshots_free (struct qcow2_snapshots *t)
{
  for (uint32_t i = 0; i < t->n; i++) {
    free (t->s[i].id);
    free (t->s[i].name);
  }
  free (t->s);
  memset (t, 0, sizeof *t);
}
