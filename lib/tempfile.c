/* Temporary files: the registry of uncommitted targets (removed by a
 * signal handler on SIGINT/SIGTERM) and anonymous spill files.
 */
#include <config.h>

#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "internal.h"
#include "endpoint.h"

/* ---- the registry of uncommitted temporary files ---------------------
 *
 * A signal handler may only unlink names that were fully built before
 * the signal arrived: slots hold pointers that are published after the
 * string is complete and cleared before it is freed.
 */
#define MAX_TEMPORARIES 64

static char *volatile temporaries[MAX_TEMPORARIES];
static pthread_mutex_t temporaries_lock = PTHREAD_MUTEX_INITIALIZER;

int
sc_temporary_register (char *name)
{
  int slot = -1;

  pthread_mutex_lock (&temporaries_lock);
  for (int i = 0; i < MAX_TEMPORARIES; i++) {
    if (temporaries[i] == NULL) {
      __atomic_store_n (&temporaries[i], name, __ATOMIC_SEQ_CST);
      slot = i;
      break;
    }
  }
  pthread_mutex_unlock (&temporaries_lock);
  if (slot == -1)
    sc_set_error (EMFILE, "too many targets open at once");
  return slot;
}

void
sc_temporary_unregister (int slot)
{
  if (slot < 0)
    return;
  pthread_mutex_lock (&temporaries_lock);
  __atomic_store_n (&temporaries[slot], NULL, __ATOMIC_SEQ_CST);
  pthread_mutex_unlock (&temporaries_lock);
}

void
sc_cleanup_temporaries (void)
{
  int saved = errno;

  for (int i = 0; i < MAX_TEMPORARIES; i++) {
    char *name = __atomic_load_n (&temporaries[i], __ATOMIC_SEQ_CST);
    if (name != NULL)
      unlink (name);
  }
  sc_nbd_kill_servers ();
  errno = saved;
}

/* ---- interruption ---------------------------------------------------- */

/* Set from a signal handler, read by every thread: an atomic int is
 * both async-signal-safe and seen across threads.
 */
static int interrupt_requested;

void
sc_interrupt (void)
{
  __atomic_store_n (&interrupt_requested, 1, __ATOMIC_SEQ_CST);
}

int
sc_check_interrupt (void)
{
  if (!__atomic_load_n (&interrupt_requested, __ATOMIC_SEQ_CST))
    return 0;
  sc_set_error (EINTR, "interrupted");
  return -1;
}

char *
sc_temporary_template (const char *path)
{
  CLEANUP_FREE char *d = strdup (path);
  CLEANUP_FREE char *b = strdup (path);
  char *tmpl;

  if (d == NULL || b == NULL)
    return NULL;
  /* NAME is cut short so that a target name near the file system's
   * limit still leaves room for the decoration.
   */
  if (asprintf (&tmpl, "%s/.%.200s.sparsecow-XXXXXX", dirname (d),
                basename (b)) == -1)
    return NULL;
  return tmpl;
}

/* ---- spill files ---------------------------------------------------------- */

int
sc_spill_open (const char *near)
{
  return sc_spill_open_in (near, NULL);
}

int
sc_spill_open_for (struct sc_endpoint *dst, const char *target,
                   const char **near)
{
  int fd, e;

  *near = sc_ep_local_fd (dst) >= 0 ? target : NULL;
  fd = sc_spill_open (*near);
  if (fd >= 0 || *near == NULL || !(dst->flags & SC_EP_IN_PLACE))
    return fd;
  /* A file written in place needs no room in its directory, as with
   * qemu-img convert -n: a user may write the file but not create
   * files beside it, or its directory may be on a read-only mount
   * (a bind mount of the file).  Then in TMPDIR, as for a device.  A
   * full file system stays an error: TMPDIR is no larger for the image
   * than the target's own file system is.
   */
  e = errno;
  if (e != EACCES && e != EPERM && e != EROFS)
    return fd;
  *near = NULL;
  return sc_spill_open (NULL);
}

int
sc_spill_open_in (const char *near, char **where)
{
  CLEANUP_FREE char *dir = NULL;
  CLEANUP_FREE char *tmpl = NULL;
  const char *slash;
  struct stat st;
  int fd;

  /* Next to a file target, whose file system must have the room for
   * the image anyway; elsewhere (standard output, a device) in TMPDIR.
   */
  if (near == NULL || strcmp (near, "-") == 0
      || (stat (near, &st) == 0 && !S_ISREG (st.st_mode))) {
    const char *t = getenv ("TMPDIR");
    dir = strdup (t && *t ? t : "/var/tmp");
  }
  else if ((slash = strrchr (near, '/')) != NULL)
    dir = slash == near ? strdup ("/") : strndup (near, (size_t) (slash - near));
  else
    dir = strdup (".");
  if (dir == NULL) {
    sc_set_error (errno, "out of memory");
    return -1;
  }

#ifdef O_TMPFILE
  fd = open (dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0)
    goto done;
#endif
  /* File systems without O_TMPFILE: a named file, unlinked at once. */
  if (asprintf (&tmpl, "%s/.sparsecow-spill-XXXXXX", dir) == -1) {
    tmpl = NULL;
    sc_set_error (errno, "out of memory");
    return -1;
  }
  fd = mkostemp (tmpl, O_CLOEXEC);
  if (fd == -1) {
    sc_set_error (errno, "%s: cannot create a spill file: %s", dir,
                  strerror (errno));
    return -1;
  }
  unlink (tmpl);
 done:
  if (where) {
    *where = dir;
    dir = NULL;
  }
  return fd;
}
