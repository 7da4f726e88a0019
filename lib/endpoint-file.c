/* Placeholder: filled in by its owner. */
#include <config.h>
#include "internal.h"

void
sc_cleanup_temporaries (void)
{
}
