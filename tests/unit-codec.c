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
  if (CU_initialize_registry () != CUE_SUCCESS)
    return EXIT_FAILURE;
  s = CU_add_suite ("codec", NULL, NULL);
  CU_add_test (s, "deflate round trip, qemu's decoder", test_deflate_round_trip);
  CU_add_test (s, "deflate window is 4 KiB", test_deflate_window_is_4k);
  CU_add_test (s, "incompressible data is stored", test_incompressible);
  CU_add_test (s, "run-on and truncated input", test_decode_run_on_and_truncated);
  CU_add_test (s, "zstd round trip and frames", test_zstd_round_trip_and_frames);
  CU_add_test (s, "codec names", test_codec_names);
  s = CU_add_suite ("util", NULL, NULL);
  CU_add_test (s, "sc_is_zero", test_is_zero);
  CU_add_test (s, "error messages", test_error_prefix);
  CU_basic_set_mode (CU_BRM_VERBOSE);
  CU_basic_run_tests ();
  failures = CU_get_number_of_failures () + CU_get_number_of_tests_failed ();
  CU_cleanup_registry ();
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
