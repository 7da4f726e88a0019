/* Placeholder: filled in by its owner. */
#include <config.h>
#include "cli.h"

int
cmd_pack (int argc, char **argv)
{
  cli_error ("pack: not implemented yet");
  return EXIT_ERROR;
}
