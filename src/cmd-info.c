/* Placeholder: filled in by its owner. */
#include <config.h>
#include "cli.h"

int
cmd_info (int argc, char **argv)
{
  cli_error ("info: not implemented yet");
  return EXIT_ERROR;
}
