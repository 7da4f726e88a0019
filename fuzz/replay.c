/* Run a fuzz target without libFuzzer: every file named on the command
 * line is read whole and given to LLVMFuzzerTestOneInput once, as
 * libFuzzer gives it a crash or corpus file.  Built with any compiler,
 * so that "make check" replays the seed corpus and the regression
 * inputs under the sanitizers.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

/* Read the whole file at path; exits on error. */
static unsigned char *
slurp (const char *path, size_t *len)
{
  unsigned char *buf = NULL;
  size_t cap = 0, n = 0;
  FILE *fp = fopen (path, "rb");

  if (fp == NULL) {
    fprintf (stderr, "replay: %s: %s\n", path, strerror (errno));
    exit (EXIT_FAILURE);
  }
  for (;;) {
    if (n == cap) {
      cap = cap ? cap * 2 : 65536;
      buf = realloc (buf, cap);
      if (buf == NULL) {
        fprintf (stderr, "replay: %s: out of memory\n", path);
        exit (EXIT_FAILURE);
      }
    }
    size_t r = fread (buf + n, 1, cap - n, fp);
    n += r;
    if (r == 0)
      break;
  }
  if (ferror (fp)) {
    fprintf (stderr, "replay: %s: read error\n", path);
    exit (EXIT_FAILURE);
  }
  fclose (fp);
  *len = n;
  return buf;
}

int
main (int argc, char *argv[])
{
  for (int i = 1; i < argc; i++) {
    size_t len;
    unsigned char *buf = slurp (argv[i], &len);

    /* Before the run: a crash is then reported under its file's name. */
    fprintf (stderr, "replay: %s (%zu bytes)\n", argv[i], len);
    LLVMFuzzerTestOneInput (buf, len);
    free (buf);
  }
  return EXIT_SUCCESS;
}
