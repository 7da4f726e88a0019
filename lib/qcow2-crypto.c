/* qcow2 encryption: what the header says of it, for showing an
 * encrypted image (nothing is decrypted, no key is asked for).
 *
 * A LUKS encrypted image keeps a LUKS1 header in its own file, at the
 * place the full-disk encryption header extension gives (qcow2.rst,
 * "Full disk encryption header pointer"); its layout is the LUKS1
 * on-disk format.  Every field is hostile input: strings must end
 * inside their fields, names must be ones qemu knows, and the key
 * material areas must lie between the header and the payload without
 * overlapping one another.
 */
#include <config.h>

#include <string.h>

#include "internal.h"
#include "qcow2.h"

/* The LUKS1 header: 592 bytes, big-endian. */
#define LUKS_MAGIC            "LUKS\xba\xbe"
#define LUKS_MAGIC_LEN        6
#define LUKS_VERSION          1
#define LUKS_OFF_VERSION      6     /* u16 */
#define LUKS_OFF_CIPHER_NAME  8     /* char[32] */
#define LUKS_OFF_CIPHER_MODE  40    /* char[32] */
#define LUKS_OFF_HASH_SPEC    72    /* char[32] */
#define LUKS_NAME_LEN         32
#define LUKS_OFF_PAYLOAD      104   /* u32, in sectors */
#define LUKS_OFF_KEY_BYTES    108   /* u32 */
#define LUKS_OFF_MK_ITERS     164   /* u32 */
#define LUKS_OFF_UUID         168   /* char[40] */
#define LUKS_UUID_LEN         40
#define LUKS_OFF_SLOTS        208
#define LUKS_SLOT_SIZE        48
#define LUKS_SLOT_ACTIVE      0     /* u32 state */
#define LUKS_SLOT_ITERS       4     /* u32 */
#define LUKS_SLOT_KEY_OFFSET  40    /* u32, in sectors */
#define LUKS_SLOT_STRIPES     44    /* u32 */
#define LUKS_HEADER_SIZE \
  (LUKS_OFF_SLOTS + SC_LUKS_KEY_SLOTS * LUKS_SLOT_SIZE)
#define LUKS_SECTOR           512
/* Key slot states. */
#define LUKS_SLOT_ENABLED     0x00ac71f3U
#define LUKS_SLOT_DISABLED    0x0000deadU
/* Anti-forensic stripes per key: the format's tools write 4000, and
 * qemu reads nothing else.
 */
#define LUKS_STRIPES          4000
/* The header sectors that no key material may overlap: the LUKS1
 * header padded to the first key material offset that the format's
 * tools use (4 KiB).
 */
#define LUKS_HEADER_SECTORS   (4096 / LUKS_SECTOR)

_Static_assert (LUKS_HEADER_SIZE == 592, "the LUKS1 header is 592 bytes");

/* Hash algorithms, with the length of their digests (for ESSIV). */
static const struct { const char *name; unsigned digest; } hashes[] = {
  { "md5", 16 }, { "sha1", 20 }, { "sha224", 28 }, { "sha256", 32 },
  { "sha384", 48 }, { "sha512", 64 }, { "ripemd160", 20 },
};

/* Ciphers: the LUKS name and the key sizes in bytes that qemu reads,
 * with qemu's name for each size.
 */
static const struct {
  const char *name;
  struct { unsigned bytes; const char *alg; } sizes[3];
} ciphers[] = {
  { "aes", { { 16, "aes-128" }, { 24, "aes-192" }, { 32, "aes-256" } } },
  { "cast5", { { 16, "cast5-128" } } },
  { "serpent", { { 16, "serpent-128" }, { 24, "serpent-192" },
                 { 32, "serpent-256" } } },
  { "twofish", { { 16, "twofish-128" }, { 24, "twofish-192" },
                 { 32, "twofish-256" } } },
};

static const char *const modes[] = { "ecb", "cbc", "xts", "ctr" };
static const char *const ivgens[] = { "plain", "plain64", "essiv" };

#define NELEMS(a) (sizeof (a) / sizeof (a)[0])

static int
find_hash (const char *name)
{
  for (size_t i = 0; i < NELEMS (hashes); i++)
    if (strcmp (hashes[i].name, name) == 0)
      return (int) i;
  return -1;
}

static const char *
find_name (const char *const *names, size_t n, const char *name)
{
  for (size_t i = 0; i < n; i++)
    if (strcmp (names[i], name) == 0)
      return names[i];
  return NULL;
}

/* A string field of the header: it must end inside the field. */
static int
header_string (const unsigned char *hdr, size_t off, const char *what,
               char out[LUKS_NAME_LEN])
{
  if (memchr (hdr + off, '\0', LUKS_NAME_LEN) == NULL) {
    sc_set_error (EINVAL, "LUKS header: the %s does not end inside its "
                  "%d bytes", what, LUKS_NAME_LEN);
    return -1;
  }
  memcpy (out, hdr + off, LUKS_NAME_LEN);
  return 0;
}

/* The cipher (name and key size), its mode "MODE-IVGEN[:HASH]" and the
 * hash spec of the header, into luks.
 */
static int
parse_algorithms (const unsigned char *hdr, struct sc_luks_info *luks)
{
  char name[LUKS_NAME_LEN], mode[LUKS_NAME_LEN], hash[LUKS_NAME_LEN];
  char *ivgen, *ivhash;
  uint32_t key_bytes = sc_get_be32 (hdr + LUKS_OFF_KEY_BYTES);
  int h, ivh = -1;
  size_t c;

  if (header_string (hdr, LUKS_OFF_CIPHER_NAME, "cipher name", name) == -1
      || header_string (hdr, LUKS_OFF_CIPHER_MODE, "cipher mode", mode) == -1
      || header_string (hdr, LUKS_OFF_HASH_SPEC, "hash spec", hash) == -1)
    return -1;

  ivgen = strchr (mode, '-');
  if (ivgen == NULL) {
    sc_set_error (EINVAL, "LUKS header: cipher mode '%s' is not "
                  "MODE-IVGEN[:HASH]", mode);
    return -1;
  }
  *ivgen++ = '\0';
  ivhash = strchr (ivgen, ':');
  if (ivhash) {
    *ivhash++ = '\0';
    if ((ivh = find_hash (ivhash)) == -1) {
      sc_set_error (ENOTSUP, "LUKS header: IV generator hash '%s' is not "
                    "supported", ivhash);
      return -1;
    }
  }
  if ((luks->cipher_mode = find_name (modes, NELEMS (modes), mode)) == NULL) {
    sc_set_error (ENOTSUP, "LUKS header: cipher mode '%s' is not "
                  "supported", mode);
    return -1;
  }
  if ((luks->ivgen_alg = find_name (ivgens, NELEMS (ivgens), ivgen))
      == NULL) {
    sc_set_error (ENOTSUP, "LUKS header: IV generator '%s' is not "
                  "supported", ivgen);
    return -1;
  }
  if ((h = find_hash (hash)) == -1) {
    sc_set_error (ENOTSUP, "LUKS header: hash '%s' is not supported", hash);
    return -1;
  }
  luks->hash_alg = hashes[h].name;

  /* XTS keys are two keys of the cipher's size (qemu rounds an odd
   * length down, and so does this).
   */
  if (strcmp (luks->cipher_mode, "xts") == 0)
    key_bytes /= 2;
  for (c = 0; c < NELEMS (ciphers); c++)
    if (strcmp (ciphers[c].name, name) == 0)
      break;
  for (size_t k = 0; c < NELEMS (ciphers) && k < NELEMS (ciphers[c].sizes);
       k++)
    if (ciphers[c].sizes[k].bytes != 0
        && ciphers[c].sizes[k].bytes == key_bytes)
      luks->cipher_alg = ciphers[c].sizes[k].alg;
  if (luks->cipher_alg == NULL) {
    sc_set_error (ENOTSUP, "LUKS header: cipher '%s' with a key of %" PRIu32
                  " bytes is not supported", name, key_bytes);
    return -1;
  }

  /* ESSIV encrypts the sector number with the hash of the key as the
   * key: the cipher must take a key of the digest's size (for AES,
   * Serpent and Twofish, any of their sizes).
   */
  if (strcmp (luks->ivgen_alg, "essiv") == 0) {
    unsigned digest;
    bool fits;

    if (ivh == -1) {
      sc_set_error (EINVAL, "LUKS header: the ESSIV IV generator needs a "
                    "hash (cipher mode MODE-essiv:HASH)");
      return -1;
    }
    digest = hashes[ivh].digest;
    fits = digest == key_bytes;
    for (size_t k = 0; !fits && strcmp (ciphers[c].name, "cast5") != 0
                       && k < NELEMS (ciphers[c].sizes); k++)
      fits = ciphers[c].sizes[k].bytes == digest;
    if (!fits) {
      sc_set_error (ENOTSUP, "LUKS header: no %s cipher takes the %u-byte "
                    "digest of %s as its ESSIV key", name, digest,
                    hashes[ivh].name);
      return -1;
    }
    luks->ivgen_hash_alg = hashes[ivh].name;
  }
  return 0;
}

/* The key slots: each enabled or disabled, its key material (key_bytes
 * times stripes bytes, in whole sectors) after the header, before the
 * payload, and apart from every other slot's.
 */
static int
parse_slots (const unsigned char *hdr, uint32_t payload_sectors,
             struct sc_luks_info *luks)
{
  uint64_t key_bytes = sc_get_be32 (hdr + LUKS_OFF_KEY_BYTES);
  uint64_t start[SC_LUKS_KEY_SLOTS], end[SC_LUKS_KEY_SLOTS];

  for (unsigned i = 0; i < SC_LUKS_KEY_SLOTS; i++) {
    const unsigned char *s = hdr + LUKS_OFF_SLOTS + i * LUKS_SLOT_SIZE;
    uint32_t state = sc_get_be32 (s + LUKS_SLOT_ACTIVE);
    uint32_t stripes = sc_get_be32 (s + LUKS_SLOT_STRIPES);
    struct sc_luks_slot *slot = &luks->slots[i];

    if (state != LUKS_SLOT_ENABLED && state != LUKS_SLOT_DISABLED) {
      sc_set_error (EINVAL, "LUKS header: key slot %u is damaged (state "
                    "0x%08" PRIx32 ")", i, state);
      return -1;
    }
    if (stripes != LUKS_STRIPES) {
      sc_set_error (EINVAL, "LUKS header: key slot %u is damaged (%" PRIu32
                    " stripes, not %d)", i, stripes, LUKS_STRIPES);
      return -1;
    }
    if (state == LUKS_SLOT_ENABLED
        && sc_get_be32 (s + LUKS_SLOT_ITERS) == 0) {
      sc_set_error (EINVAL, "LUKS header: key slot %u is damaged (no "
                    "PBKDF2 iterations)", i);
      return -1;
    }
    slot->active = state == LUKS_SLOT_ENABLED;
    slot->key_offset = (uint64_t) sc_get_be32 (s + LUKS_SLOT_KEY_OFFSET)
      * LUKS_SECTOR;
    if (slot->active) {
      slot->iters = sc_get_be32 (s + LUKS_SLOT_ITERS);
      slot->stripes = stripes;
    }
    /* At most 2^32 - 1 times 4000 bytes: no overflow in 64 bits. */
    start[i] = sc_get_be32 (s + LUKS_SLOT_KEY_OFFSET);
    end[i] = start[i] + SC_DIV_ROUND_UP (key_bytes * stripes, LUKS_SECTOR);
    if (start[i] < LUKS_HEADER_SECTORS || end[i] > payload_sectors) {
      sc_set_error (EINVAL, "LUKS header: the key material of key slot %u "
                    "(sectors %" PRIu64 " to %" PRIu64 ") is not between "
                    "the header and the payload (sector %" PRIu32 ")", i,
                    start[i], end[i], payload_sectors);
      return -1;
    }
    for (unsigned j = 0; j < i; j++)
      if (start[i] < end[j] && start[j] < end[i]) {
        sc_set_error (EINVAL, "LUKS header: the key material of key slots "
                      "%u and %u overlaps", j, i);
        return -1;
      }
  }
  return 0;
}

/* The LUKS1 header at offset in ep, extension length bytes long. */
static int
read_luks (struct sc_endpoint *ep, uint64_t file_size, uint64_t offset,
           uint64_t length, struct sc_luks_info *luks)
{
  unsigned char hdr[LUKS_HEADER_SIZE];
  uint32_t payload;
  size_t uuid_len;

  if (length < LUKS_HEADER_SIZE) {
    sc_set_error (EINVAL, "encryption header: %" PRIu64 " bytes, too short "
                  "for a LUKS header (%d bytes)", length, LUKS_HEADER_SIZE);
    return -1;
  }
  if (offset > file_size || file_size - offset < LUKS_HEADER_SIZE) {
    sc_set_error (EINVAL, "encryption header (offset 0x%" PRIx64 ") lies "
                  "beyond the end of the file (%" PRIu64 " bytes)", offset,
                  file_size);
    return -1;
  }
  if (sc_ep_pread (ep, hdr, sizeof hdr, offset) == -1)
    return -1;
  if (memcmp (hdr, LUKS_MAGIC, LUKS_MAGIC_LEN) != 0) {
    sc_set_error (EINVAL, "encryption header: not a LUKS header (bad "
                  "magic)");
    return -1;
  }
  if (sc_get_be16 (hdr + LUKS_OFF_VERSION) != LUKS_VERSION) {
    sc_set_error (ENOTSUP, "encryption header: LUKS version %u is not "
                  "supported", sc_get_be16 (hdr + LUKS_OFF_VERSION));
    return -1;
  }
  if (parse_algorithms (hdr, luks) == -1)
    return -1;

  payload = sc_get_be32 (hdr + LUKS_OFF_PAYLOAD);
  if (payload < LUKS_HEADER_SECTORS) {
    sc_set_error (EINVAL, "LUKS header: the payload (sector %" PRIu32 ") "
                  "overlaps the header", payload);
    return -1;
  }
  luks->payload_offset = (uint64_t) payload * LUKS_SECTOR;
  luks->master_key_iters = sc_get_be32 (hdr + LUKS_OFF_MK_ITERS);
  if (luks->master_key_iters == 0) {
    sc_set_error (EINVAL, "LUKS header: no PBKDF2 iterations for the "
                  "master key digest");
    return -1;
  }

  /* Shown as text: printable ASCII, up to a NUL or the field's end. */
  uuid_len = strnlen ((const char *) hdr + LUKS_OFF_UUID, LUKS_UUID_LEN);
  for (size_t i = 0; i < uuid_len; i++)
    if (hdr[LUKS_OFF_UUID + i] < 0x20 || hdr[LUKS_OFF_UUID + i] > 0x7e) {
      sc_set_error (EINVAL, "LUKS header: the UUID holds byte 0x%02x",
                    hdr[LUKS_OFF_UUID + i]);
      return -1;
    }
  memcpy (luks->uuid, hdr + LUKS_OFF_UUID, uuid_len);
  luks->uuid[uuid_len] = '\0';

  return parse_slots (hdr, payload, luks);
}

int
qcow2_encryption_read (struct sc_endpoint *ep, uint64_t file_size,
                       const struct qcow2_header *h, enum sc_encryption *enc,
                       struct sc_luks_info *luks)
{
  memset (luks, 0, sizeof *luks);
  *enc = SC_ENCRYPTION_NONE;

  switch (h->crypt_method) {
  case SC_ENCRYPTION_NONE:
  case SC_ENCRYPTION_AES:
    /* The extension points to a LUKS header: nothing else has one. */
    if (h->has_crypto_ext) {
      sc_set_error (EINVAL, "an encryption header extension, but the "
                    "image is not LUKS encrypted");
      return -1;
    }
    *enc = h->crypt_method;
    return 0;
  case SC_ENCRYPTION_LUKS:
    break;
  default:
    sc_set_error (ENOTSUP, "unknown encryption method %" PRIu32,
                  h->crypt_method);
    return -1;
  }

  if (!h->has_crypto_ext) {
    sc_set_error (EINVAL, "LUKS encryption without its encryption header "
                  "extension");
    return -1;
  }
  if (h->crypto_ext_len != QCOW2_CRYPTO_EXT_SIZE) {
    sc_set_error (EINVAL, "encryption header extension of %" PRIu32
                  " bytes, not %d", h->crypto_ext_len, QCOW2_CRYPTO_EXT_SIZE);
    return -1;
  }
  if (!SC_IS_ALIGNED (h->crypto_offset, h->cluster_size)
      || h->crypto_offset == 0) {
    sc_set_error (EINVAL, "encryption header offset 0x%" PRIx64 " is not "
                  "a cluster after the first", h->crypto_offset);
    return -1;
  }
  if (read_luks (ep, file_size, h->crypto_offset, h->crypto_length,
                 luks) == -1)
    return -1;
  *enc = SC_ENCRYPTION_LUKS;
  return 0;
}
