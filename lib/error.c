/* Per-thread error message and errno, and the version of the library. */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static __thread char error_message[SC_ERROR_LEN];
static __thread int error_errno;
/* The error is damage of an image (sc_set_damage), not a failure. */
static __thread bool error_damage;

const char *
sc_error_message (void)
{
  return error_message;
}

int
sc_error_errno (void)
{
  return error_errno;
}

void
sc_set_error (int errnum, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (error_message, sizeof error_message, fmt, ap);
  va_end (ap);
  error_errno = errnum ? errnum : EINVAL;
  error_damage = false;
  errno = error_errno;
}

void
sc_set_damage (int errnum, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (error_message, sizeof error_message, fmt, ap);
  va_end (ap);
  error_errno = errnum ? errnum : EINVAL;
  error_damage = true;
  errno = error_errno;
}

bool
sc_error_is_damage (void)
{
  return error_damage;
}

void
sc_error_prefix (const char *fmt, ...)
{
  char prefix[SC_ERROR_LEN];
  char old[SC_ERROR_LEN];
  va_list ap;
  int saved = error_errno;

  va_start (ap, fmt);
  vsnprintf (prefix, sizeof prefix, fmt, ap);
  va_end (ap);
  memcpy (old, error_message, sizeof old);
  snprintf (error_message, sizeof error_message, "%s: %s", prefix, old);
  error_errno = saved;
  errno = saved;
}

void
sc_error_name (const char *name)
{
  size_t n = strlen (name);

  /* "NAME: ..." or a sentence about NAME ("NAME and X differ"). */
  if (strncmp (error_message, name, n) != 0
      || (error_message[n] != ':' && error_message[n] != ' '))
    sc_error_prefix ("%s", name);
}

void
sc_error_save (struct sc_error_saved *saved)
{
  saved->errnum = error_errno;
  memcpy (saved->msg, error_message, sizeof saved->msg);
}

void
sc_error_restore (const struct sc_error_saved *saved)
{
  sc_set_error (saved->errnum, "%s", saved->msg);
}

const char *
sc_version (void)
{
  return PACKAGE_VERSION;
}
