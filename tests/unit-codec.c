/* Unit tests: cluster codecs and small helpers. */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <CUnit/Basic.h>

#include "internal.h"

#define CS 65536

static unsigned char text[CS], noise[CS], packed[CS], back[CS];

static void
fill_inputs (void)
{
  uint32_t x = 12345;
  for (size_t i = 0; i < CS; i++) {
    x = x * 1103515245 + 12345;
    noise[i] = (unsigned char) (x >> 16);
    text[i] = "sparse data moves in and out of qcow2 "[i % 38] ^ (i % 977 == 0);
  }
}

/* Decode with zlib directly, as qemu does: raw deflate, 4 KiB window. */
static int
qemu_style_inflate (const void *in, size_t in_len, void *out, size_t out_len)
{
  z_stream s;
  int r;

  memset (&s, 0, sizeof s);
  if (inflateInit2 (&s, -12) != Z_OK)
    return -1;
  s.next_in = (Bytef *) in;
  s.avail_in = (uInt) in_len;
  s.next_out = out;
  s.avail_out = (uInt) out_len;
  r = inflate (&s, Z_FINISH);
  inflateEnd (&s);
  return ((r == Z_STREAM_END || r == Z_BUF_ERROR) && s.avail_out == 0) ? 0 : -1;
}

static void
test_deflate_round_trip (void)
{
  for (int level = -1; level <= 9; level++) {
    if (level == 0)
      continue;                 /* level 0 only stores */
    ssize_t n = sc_compress (SC_CODEC_DEFLATE, level, text, CS, packed, CS);
    CU_ASSERT_FATAL (n > 0 && n < CS);
    memset (back, 0, CS);
    CU_ASSERT_EQUAL (qemu_style_inflate (packed, (size_t) n, back, CS), 0);
    CU_ASSERT_EQUAL (memcmp (back, text, CS), 0);
    memset (back, 0, CS);
    CU_ASSERT_EQUAL (sc_decompress (SC_CODEC_DEFLATE, packed, (size_t) n,
                                    back, CS), 0);
    CU_ASSERT_EQUAL (memcmp (back, text, CS), 0);
  }
}

static void
test_deflate_window_is_4k (void)
{
  /* 8 KiB of noise repeated: a 32 KiB window would find the repeat
   * 8 KiB back and shrink it; a 4 KiB window cannot, so nothing
   * compresses.  This proves no back-reference exceeds 4 KiB.
   */
  unsigned char in[16384];
  memcpy (in, noise, 8192);
  memcpy (in + 8192, noise, 8192);
  CU_ASSERT_EQUAL (sc_compress (SC_CODEC_DEFLATE, 9, in, sizeof in,
                                packed, sizeof in), 0);
}

static void
test_incompressible (void)
{
  CU_ASSERT_EQUAL (sc_compress (SC_CODEC_DEFLATE, -1, noise, CS, packed, CS), 0);
  CU_ASSERT_EQUAL (sc_compress (SC_CODEC_ZSTD, -1, noise, CS, packed, CS), 0);
}

static void
test_decode_run_on_and_truncated (void)
{
  ssize_t n = sc_compress (SC_CODEC_DEFLATE, -1, text, CS, packed, CS);
  CU_ASSERT_FATAL (n > 0);
  /* Input that runs on into unrelated bytes still decodes. */
  memset (packed + n, 0xa5, 600);
  CU_ASSERT_EQUAL (sc_decompress (SC_CODEC_DEFLATE, packed, (size_t) n + 600,
                                  back, CS), 0);
  CU_ASSERT_EQUAL (memcmp (back, text, CS), 0);
  /* Truncated input must fail, not return a short cluster. */
  CU_ASSERT_EQUAL (sc_decompress (SC_CODEC_DEFLATE, packed, (size_t) n / 2,
                                  back, CS), -1);
  CU_ASSERT_NOT_EQUAL (sc_error_message ()[0], '\0');
  /* Garbage must fail. */
  CU_ASSERT_EQUAL (sc_decompress (SC_CODEC_DEFLATE, noise, 100, back, CS), -1);
}

/* ---- deflate with each implementation -------------------------------- */

#define BIG (2 * 1024 * 1024)   /* the largest cluster qemu accepts */

enum kind { K_TEXT, K_NOISE, K_SMALL_ALPHABET, K_FAR_REPEAT, K_MIXED,
            K_PROGRAM, K_SPARSE_BYTES, K_RAMP, K_KINDS };
static const char *const kind_name[K_KINDS] = {
  "text", "noise", "small alphabet", "8 KiB noise repeated", "mixed",
  "program bytes", "sparse bytes", "ramp",
};

static unsigned char *program;  /* this test program's own bytes */
static size_t program_len;

static void
load_program (void)
{
  FILE *f = fopen ("/proc/self/exe", "rb");
  program = malloc (BIG);
  if (program == NULL)
    abort ();
  program_len = f ? fread (program, 1, BIG, f) : 0;
  if (f)
    fclose (f);
  if (program_len == 0) {         /* no /proc: text stands in */
    for (size_t i = 0; i < BIG; i++)
      program[i] = text[i % CS];
    program_len = BIG;
  }
}

/* Fill buf[0, len) with one kind of cluster content; seed varies it. */
static void
fill_kind (unsigned char *buf, size_t len, enum kind k, uint32_t seed)
{
  uint32_t x = seed * 2654435761u + 1;

  for (size_t i = 0; i < len; i++) {
    x = x * 1103515245 + 12345;
    switch (k) {
    case K_TEXT: buf[i] = text[(i + seed) % CS]; break;
    case K_NOISE: buf[i] = (unsigned char) (x >> 16); break;
    case K_SMALL_ALPHABET: buf[i] = (unsigned char) ('a' + ((x >> 16) & 3)); break;
    case K_FAR_REPEAT: buf[i] = noise[(i + seed) % 8192]; break;
    case K_MIXED:
      buf[i] = ((i / 3000) & 1) ? (unsigned char) (x >> 16) : text[i % CS];
      break;
    case K_PROGRAM: buf[i] = program[(i + (size_t) seed * 4096) % program_len]; break;
    case K_SPARSE_BYTES: buf[i] = (x >> 16) % 61 == 0 ? (unsigned char) (x >> 8) : 0; break;
    case K_RAMP: buf[i] = (unsigned char) (i + seed); break;
    default: buf[i] = 0; break;
    }
  }
}

/* Decode as qemu does, but hand zlib one byte of output at a time, so
 * that every back-reference is served from its 4 KiB window: a distance
 * of more than 4 KiB (plus the one byte) fails with "invalid distance
 * too far back".  A single call with the whole cluster would accept
 * distances up to the bytes decoded so far.
 */
static int
strict_4k_inflate (const void *in, size_t in_len, unsigned char *out,
                   size_t out_len)
{
  z_stream s;
  int r = Z_OK;
  size_t done = 0;

  memset (&s, 0, sizeof s);
  if (inflateInit2 (&s, -12) != Z_OK)
    return -1;
  s.next_in = (Bytef *) in;
  s.avail_in = (uInt) in_len;
  while (done < out_len) {
    s.next_out = out + done;
    s.avail_out = 1;
    r = inflate (&s, Z_NO_FLUSH);
    if (r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR)
      break;
    if (s.avail_out != 0)
      break;                    /* no progress: truncated or ended */
    done++;
  }
  inflateEnd (&s);
  return done == out_len ? 0 : -1;
}

/* The oracle itself: a stream made with a 32 KiB window that refers
 * 8 KiB back decodes in one call but not through the 4 KiB window.
 */
static void
test_strict_inflate_sees_far_references (void)
{
  unsigned char in[16384], c[16384 + 64], d[16384];
  z_stream s;

  memcpy (in, noise, 8192);
  memcpy (in + 8192, noise, 8192);
  memset (&s, 0, sizeof s);
  CU_ASSERT_FATAL (deflateInit2 (&s, 9, Z_DEFLATED, -15, 8,
                                 Z_DEFAULT_STRATEGY) == Z_OK);
  s.next_in = in;
  s.avail_in = sizeof in;
  s.next_out = c;
  s.avail_out = sizeof c;
  CU_ASSERT_FATAL (deflate (&s, Z_FINISH) == Z_STREAM_END);
  CU_ASSERT (s.total_out < 12000);      /* the repeat was found */
  CU_ASSERT_EQUAL (qemu_style_inflate (c, s.total_out, d, sizeof d), 0);
  CU_ASSERT_EQUAL (strict_4k_inflate (c, s.total_out, d, sizeof d), -1);
  deflateEnd (&s);
}

static const size_t cluster_sizes[] = { 512, 4096, 65536, BIG };

/* Compress every kind at every cluster size and level with the chosen
 * implementation; every compressed cluster must decode with zlib at
 * windowBits -12, through the 4 KiB window, and with sc_decompress.
 */
static void
deflate_all_through_zlib (const char *impl)
{
  unsigned char *in = malloc (BIG), *c = malloc (BIG), *d = malloc (BIG);
  static const int levels[] = { -1, 1, 2, 3, 4, 9 };
  unsigned compressed = 0;

  CU_ASSERT_FATAL (in != NULL && c != NULL && d != NULL);
  CU_ASSERT_FATAL (sc_deflate_select (impl) == 0);
  CU_ASSERT_STRING_EQUAL (sc_deflate_selected (), impl);
  for (size_t z = 0; z < sizeof cluster_sizes / sizeof *cluster_sizes; z++) {
    size_t cs = cluster_sizes[z];
    for (int k = 0; k < K_KINDS; k++) {
      fill_kind (in, cs, (enum kind) k, (uint32_t) (k + 7 * z));
      for (size_t l = 0; l < sizeof levels / sizeof *levels; l++) {
        ssize_t n = sc_compress (SC_CODEC_DEFLATE, levels[l], in, cs, c, cs);
        CU_ASSERT_FATAL (n >= 0 && (size_t) n < cs);
        if (k == K_NOISE)
          CU_ASSERT_EQUAL (n, 0);       /* stored, not grown */
        if (n == 0)
          continue;
        compressed++;
        memset (d, 0x5a, cs);
        if (qemu_style_inflate (c, (size_t) n, d, cs) != 0
            || memcmp (d, in, cs) != 0) {
          fprintf (stderr, "%s: %s, %zu-byte cluster, level %d: zlib -12 "
                   "does not give the data back\n", impl, kind_name[k], cs,
                   levels[l]);
          CU_FAIL ("zlib windowBits -12 decode");
        }
        /* One byte at a time is slow: the largest clusters once. */
        if ((cs < BIG || l == 0)
            && (strict_4k_inflate (c, (size_t) n, d, cs) != 0
                || memcmp (d, in, cs) != 0)) {
          fprintf (stderr, "%s: %s, %zu-byte cluster, level %d: reaches "
                   "past the 4 KiB window\n", impl, kind_name[k], cs,
                   levels[l]);
          CU_FAIL ("4 KiB window");
        }
        memset (d, 0x5a, cs);
        CU_ASSERT_EQUAL (sc_decompress (SC_CODEC_DEFLATE, c, (size_t) n,
                                        d, cs), 0);
        CU_ASSERT_EQUAL (memcmp (d, in, cs), 0);
      }
    }
  }
  /* Everything but noise compresses at every size above 512 bytes. */
  CU_ASSERT (compressed > 3 * 6 * (K_KINDS - 1) - 6 * K_KINDS);
  free (in);
  free (c);
  free (d);
}

static void
test_zlib_clusters_decode_in_4k (void)
{
  deflate_all_through_zlib ("zlib");
}

#ifdef HAVE_ISAL
static void
test_isal_clusters_decode_in_4k (void)
{
  deflate_all_through_zlib ("isal");
  CU_ASSERT_EQUAL (sc_deflate_select ("zlib"), 0);
}

/* igzip's default history is 32 KiB: 8 KiB of noise repeated would
 * shrink to half.  With hist_bits 12 it must not shrink at any level.
 */
static void
test_isal_window_is_4k (void)
{
  unsigned char in[16384];
  static const int levels[] = { -1, 1, 2, 3 };

  memcpy (in, noise, 8192);
  memcpy (in + 8192, noise, 8192);
  CU_ASSERT_FATAL (sc_deflate_select ("isal") == 0);
  for (size_t l = 0; l < sizeof levels / sizeof *levels; l++)
    CU_ASSERT_EQUAL (sc_compress (SC_CODEC_DEFLATE, levels[l], in, sizeof in,
                                  packed, sizeof in), 0);
  /* The same data with a repeat 2 KiB back does shrink: the test can
   * tell the two apart.
   */
  memcpy (in + 2048, noise, 2048);
  CU_ASSERT (sc_compress (SC_CODEC_DEFLATE, -1, in, 4096, packed, 4096) > 0);
  CU_ASSERT_EQUAL (sc_deflate_select ("zlib"), 0);
}

/* Decode one input with each implementation: the verdict and, on
 * success, every byte must be the same.  Returns the verdict.
 */
static int
decode_both (const unsigned char *in, size_t in_len, size_t cs,
             unsigned char *a, unsigned char *b)
{
  int ra, rb;

  CU_ASSERT_FATAL (sc_deflate_select ("zlib") == 0);
  memset (a, 0x11, cs);
  ra = sc_decompress (SC_CODEC_DEFLATE, in, in_len, a, cs);
  CU_ASSERT_FATAL (sc_deflate_select ("isal") == 0);
  memset (b, 0x22, cs);
  rb = sc_decompress (SC_CODEC_DEFLATE, in, in_len, b, cs);
  CU_ASSERT_EQUAL (ra, rb);
  if (ra == 0 && rb == 0)
    CU_ASSERT_EQUAL (memcmp (a, b, cs), 0);
  return ra;
}

/* qemu's clusters (zlib) and igzip's, whole, run on into the next
 * cluster, truncated, and damaged: the inflate path of "isal" (which
 * decodes with libdeflate first where it is built in, else with igzip)
 * must end each exactly as zlib's does.
 */
static void
test_isal_inflate_matches_zlib (void)
{
  const size_t cs = 65536;
  unsigned char *in = malloc (cs), *c = malloc (cs + 1024);
  unsigned char *a = malloc (cs), *b = malloc (cs);
  uint32_t x = 99;
  unsigned ok = 0, bad = 0;

  CU_ASSERT_FATAL (in && c && a && b);
  for (int k = 0; k < K_KINDS; k++) {
    if (k == K_NOISE || k == K_FAR_REPEAT)
      continue;                 /* stored: nothing to inflate */
    fill_kind (in, cs, (enum kind) k, (uint32_t) k);
    for (int impl = 0; impl < 2; impl++) {
      CU_ASSERT_FATAL (sc_deflate_select (impl ? "isal" : "zlib") == 0);
      ssize_t n = sc_compress (SC_CODEC_DEFLATE, impl ? -1 : 6, in, cs, c, cs);
      CU_ASSERT_FATAL (n > 0);
      /* Whole, and with sector padding or the next cluster after it. */
      for (size_t i = (size_t) n; i < (size_t) n + 1024; i++)
        c[i] = (unsigned char) (i * 37);
      CU_ASSERT_EQUAL (decode_both (c, (size_t) n, cs, a, b), 0);
      CU_ASSERT_EQUAL (memcmp (b, in, cs), 0);
      CU_ASSERT_EQUAL (decode_both (c, (size_t) n + 1024, cs, a, b), 0);
      CU_ASSERT_EQUAL (memcmp (b, in, cs), 0);
      /* Truncated: the same verdict from both (the last bytes may
       * hold nothing but the end of the stream, so a cut near the end
       * can still fill the cluster), and an error for half of it.
       */
      for (size_t t = 0; t < (size_t) n; t += 1 + (size_t) n / 50)
        decode_both (c, t, cs, a, b);
      CU_ASSERT_EQUAL (decode_both (c, 0, cs, a, b), -1);
      CU_ASSERT_EQUAL (decode_both (c, (size_t) n / 2, cs, a, b), -1);
      /* Damaged: one flipped bit or byte at a time, 40 times. */
      for (int m = 0; m < 40; m++) {
        unsigned char save;
        size_t at;
        x = x * 1103515245 + 12345;
        at = (x >> 8) % (size_t) n;
        save = c[at];
        c[at] ^= (m & 1) ? (unsigned char) (1 << (x % 8)) : (unsigned char) (x >> 24 | 1);
        if (decode_both (c, (size_t) n + 1024, cs, a, b) == 0)
          ok++;
        else
          bad++;
        c[at] = save;
      }
    }
  }
  /* Damage must have been seen as damage at least sometimes. */
  CU_ASSERT (bad > 0);
  (void) ok;
  CU_ASSERT_EQUAL (sc_deflate_select ("zlib"), 0);
  free (in);
  free (c);
  free (a);
  free (b);
}
#endif

static void
test_deflate_select (void)
{
  CU_ASSERT_EQUAL (sc_deflate_select ("zlib"), 0);
  CU_ASSERT_STRING_EQUAL (sc_deflate_selected (), "zlib");
  CU_ASSERT_EQUAL (sc_deflate_select ("gzip"), -1);
  CU_ASSERT_EQUAL (sc_error_errno (), EINVAL);
#ifdef HAVE_ISAL
  CU_ASSERT_EQUAL (sc_deflate_select ("isal"), 0);
  CU_ASSERT_STRING_EQUAL (sc_deflate_selected (), "isal");
#else
  CU_ASSERT_EQUAL (sc_deflate_select ("isal"), -1);
#endif
  CU_ASSERT_EQUAL (sc_deflate_select ("zlib"), 0);
}

static void
test_zstd_round_trip_and_frames (void)
{
  ssize_t n = sc_compress (SC_CODEC_ZSTD, -1, text, CS, packed, CS);
  CU_ASSERT_FATAL (n > 0 && n < CS);
  CU_ASSERT_EQUAL (sc_decompress (SC_CODEC_ZSTD, packed, (size_t) n, back, CS), 0);
  CU_ASSERT_EQUAL (memcmp (back, text, CS), 0);

  /* Two frames, each half a cluster, decode into one cluster. */
  unsigned char two[2 * CS];
  size_t a = ZSTD_compress (two, CS, text, CS / 2, 3);
  CU_ASSERT_FATAL (!ZSTD_isError (a));
  size_t b = ZSTD_compress (two + a, CS, text + CS / 2, CS / 2, 3);
  CU_ASSERT_FATAL (!ZSTD_isError (b));
  memset (back, 0, CS);
  CU_ASSERT_EQUAL (sc_decompress (SC_CODEC_ZSTD, two, a + b, back, CS), 0);
  CU_ASSERT_EQUAL (memcmp (back, text, CS), 0);

  /* One frame of half a cluster is not enough. */
  CU_ASSERT_EQUAL (sc_decompress (SC_CODEC_ZSTD, two, a, back, CS), -1);
}

static void
test_codec_names (void)
{
  enum sc_codec c;
  CU_ASSERT_EQUAL (sc_codec_parse ("deflate", &c), 0);
  CU_ASSERT_EQUAL (c, SC_CODEC_DEFLATE);
  CU_ASSERT_EQUAL (sc_codec_parse ("zstd", &c), 0);
  CU_ASSERT_EQUAL (c, SC_CODEC_ZSTD);
  CU_ASSERT_EQUAL (sc_codec_parse ("lz4", &c), -1);
  CU_ASSERT_STRING_EQUAL (sc_codec_name (SC_CODEC_DEFLATE), "deflate");
}

static void
test_is_zero (void)
{
  unsigned char b[4099];
  memset (b, 0, sizeof b);
  CU_ASSERT_TRUE (sc_is_zero (b, 0));
  CU_ASSERT_TRUE (sc_is_zero (b, 1));
  CU_ASSERT_TRUE (sc_is_zero (b, sizeof b));
  for (size_t i = 0; i < sizeof b; i += 97) {
    b[i] = 1;
    CU_ASSERT_FALSE (sc_is_zero (b, sizeof b));
    CU_ASSERT_TRUE (sc_is_zero (b, i));
    b[i] = 0;
  }
  b[sizeof b - 1] = 0x80;
  CU_ASSERT_FALSE (sc_is_zero (b, sizeof b));
}

/* One non-zero byte at every offset of buffers that start at every
 * alignment and end anywhere: the vector blocks, the bytes in front of
 * them and the tail must each see it.
 */
static void
test_is_zero_offsets (void)
{
  static const size_t starts[] = { 0, 1, 7, 8, 15, 16, 31, 32 };
  static const size_t lens[] = { 0, 1, 2, 15, 16, 17, 31, 32, 33, 255, 256,
                                 257, 511, 512, 513, 767, 768, 1023, 1024,
                                 1025, 1100 };
  static unsigned char b[1100 + 32];
  bool ok = true;

  memset (b, 0, sizeof b);
  for (size_t s = 0; s < sizeof starts / sizeof *starts; s++)
    for (size_t l = 0; l < sizeof lens / sizeof *lens; l++) {
      unsigned char *p = b + starts[s];
      size_t len = lens[l];

      if (!sc_is_zero (p, len))
        ok = false;
      for (size_t i = 0; i < len; i++) {
        /* The lowest bit and the highest, in turn. */
        p[i] = i % 2 ? 0x80 : 0x01;
        if (sc_is_zero (p, len) || !sc_is_zero (p, i)
            || !sc_is_zero (p + i + 1, len - i - 1))
          ok = false;
        p[i] = 0;
      }
    }
  CU_ASSERT_TRUE (ok);
}

static void
test_error_prefix (void)
{
  sc_set_error (ENOENT, "open: %s", "gone");
  sc_error_prefix ("img%d", 1);
  CU_ASSERT_STRING_EQUAL (sc_error_message (), "img1: open: gone");
  CU_ASSERT_EQUAL (sc_error_errno (), ENOENT);
  sc_set_error (0, "plain");
  CU_ASSERT_EQUAL (sc_error_errno (), EINVAL);
}

int
main (void)
{
  CU_pSuite s;
  unsigned failures;

  fill_inputs ();
  load_program ();
  if (CU_initialize_registry () != CUE_SUCCESS)
    return EXIT_FAILURE;
  s = CU_add_suite ("codec", NULL, NULL);
  CU_add_test (s, "deflate round trip, qemu's decoder", test_deflate_round_trip);
  CU_add_test (s, "deflate window is 4 KiB", test_deflate_window_is_4k);
  CU_add_test (s, "incompressible data is stored", test_incompressible);
  CU_add_test (s, "run-on and truncated input", test_decode_run_on_and_truncated);
  CU_add_test (s, "zstd round trip and frames", test_zstd_round_trip_and_frames);
  CU_add_test (s, "codec names", test_codec_names);
  CU_add_test (s, "deflate implementation names", test_deflate_select);
  CU_add_test (s, "the 4 KiB decoder refuses far references",
               test_strict_inflate_sees_far_references);
  CU_add_test (s, "zlib clusters decode in 4 KiB", test_zlib_clusters_decode_in_4k);
#ifdef HAVE_ISAL
  CU_add_test (s, "ISA-L clusters decode in 4 KiB", test_isal_clusters_decode_in_4k);
  CU_add_test (s, "ISA-L window is 4 KiB", test_isal_window_is_4k);
  CU_add_test (s, "ISA-L inflate ends as zlib's", test_isal_inflate_matches_zlib);
#endif
  s = CU_add_suite ("util", NULL, NULL);
  CU_add_test (s, "sc_is_zero", test_is_zero);
  CU_add_test (s, "sc_is_zero at every offset", test_is_zero_offsets);
  CU_add_test (s, "error messages", test_error_prefix);
  CU_basic_set_mode (CU_BRM_VERBOSE);
  CU_basic_run_tests ();
  failures = CU_get_number_of_failures () + CU_get_number_of_tests_failed ();
  CU_cleanup_registry ();
  free (program);
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
