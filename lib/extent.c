/* Extent lists, and where the data of a regular file lives. */
#include <config.h>

#include <string.h>

#include "internal.h"

void
sc_extent_list_init (struct sc_extent_list *list)
{
  memset (list, 0, sizeof *list);
}

void
sc_extent_list_free (struct sc_extent_list *list)
{
  free (list->ext);
  sc_extent_list_init (list);
}

int
sc_extent_list_append (struct sc_extent_list *list, uint64_t offset,
                       uint64_t length, uint32_t flags)
{
  if (length == 0)
    return 0;
  if (list->len > 0) {
    struct sc_extent *last = &list->ext[list->len - 1];
    if (last->flags == flags && last->offset + last->length == offset) {
      last->length += length;
      return 0;
    }
  }
  if (list->len == list->cap) {
    size_t cap = list->cap ? list->cap * 2 : 64;
    struct sc_extent *e = realloc (list->ext, cap * sizeof *e);
    if (e == NULL) {
      sc_set_error (errno, "extent list: out of memory");
      return -1;
    }
    list->ext = e;
    list->cap = cap;
  }
  list->ext[list->len++] = (struct sc_extent) { offset, length, flags };
  return 0;
}
