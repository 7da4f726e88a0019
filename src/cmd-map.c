/* Placeholder: filled in by its owner. */
#include <config.h>
#include "cli.h"

int
cmd_map (int argc, char **argv)
{
  cli_error ("map: not implemented yet");
  return EXIT_ERROR;
}
