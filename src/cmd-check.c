/* Placeholder: filled in by its owner. */
#include <config.h>
#include "cli.h"

int
cmd_check (int argc, char **argv)
{
  cli_error ("check: not implemented yet");
  return EXIT_ERROR;
}
