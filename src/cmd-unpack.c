/* Placeholder: filled in by its owner. */
#include <config.h>
#include "cli.h"

int
cmd_unpack (int argc, char **argv)
{
  cli_error ("unpack: not implemented yet");
  return EXIT_ERROR;
}
