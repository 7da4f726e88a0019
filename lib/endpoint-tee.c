/* The tee endpoint: one target that writes to several.
 *
 * Unpacking one image to several devices reads and decodes the image
 * once and writes every piece to each member.  A member whose request
 * fails is dropped there and then, with its first error kept for the
 * caller, and the others go on; the tee itself fails only when no
 * member is left.  Members are files and devices: seekable targets that
 * take writes from any thread, so the copy engine writes to the tee
 * from its workers as it would to one of them.
 */
#include <config.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "endpoint.h"

/* A bound on members: each costs a descriptor and a write per piece. */
#define MAX_TEE_MEMBERS 64

struct tee_member {
  struct sc_endpoint *ep;
  bool failed;                  /* read without the lock: atomic */
  int err;                      /* the first error, once failed */
  char *msg;
};

struct tee_ep {
  struct sc_endpoint ep;
  pthread_mutex_t lock;         /* failing a member */
  size_t n;
  struct tee_member *m;
};

static bool
member_live (const struct tee_member *m)
{
  return !__atomic_load_n (&m->failed, __ATOMIC_ACQUIRE);
}

/* Drop member i, keeping the calling thread's error as its first. */
static void
fail_member (struct tee_ep *t, size_t i)
{
  struct tee_member *m = &t->m[i];

  sc_error_name (m->ep->name);
  pthread_mutex_lock (&t->lock);
  if (!m->failed) {
    m->err = sc_error_errno ();
    m->msg = strdup (sc_error_message ());
    __atomic_store_n (&m->failed, true, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock (&t->lock);
}

/* After an operation on every member: 0 while one is left. */
static int
any_left (struct tee_ep *t)
{
  for (size_t i = 0; i < t->n; i++)
    if (member_live (&t->m[i]))
      return 0;
  sc_set_error (EIO, "%s: every target failed", t->ep.name);
  return -1;
}

static int
tee_pwrite (struct sc_endpoint *ep, const void *buf, size_t count,
            uint64_t offset)
{
  struct tee_ep *t = (struct tee_ep *) ep;

  for (size_t i = 0; i < t->n; i++)
    if (member_live (&t->m[i])
        && sc_ep_pwrite (t->m[i].ep, buf, count, offset) == -1)
      fail_member (t, i);
  return any_left (t);
}

/* A member that cannot zero fast (SC_ZERO_FAST) is zeroed the slow
 * way: the others have zeroed the range already, and writing it to
 * every member instead would undo their unmapping.
 */
static int
tee_zero (struct sc_endpoint *ep, uint64_t count, uint64_t offset,
          unsigned flags)
{
  struct tee_ep *t = (struct tee_ep *) ep;

  for (size_t i = 0; i < t->n; i++) {
    struct sc_endpoint *m = t->m[i].ep;

    if (!member_live (&t->m[i]) || sc_ep_zero (m, count, offset, flags) == 0)
      continue;
    if ((flags & SC_ZERO_FAST) && sc_error_errno () == ENOTSUP
        && sc_ep_zero (m, count, offset, flags & ~(unsigned) SC_ZERO_FAST)
           == 0)
      continue;
    fail_member (t, i);
  }
  return any_left (t);
}

/* Every member must hold size bytes; the tee is as large as the
 * smallest member left.
 */
static int
tee_set_size (struct sc_endpoint *ep, uint64_t size)
{
  struct tee_ep *t = (struct tee_ep *) ep;
  uint64_t smallest = UINT64_MAX;

  for (size_t i = 0; i < t->n; i++) {
    if (!member_live (&t->m[i]))
      continue;
    if (sc_ep_set_size (t->m[i].ep, size) == -1)
      fail_member (t, i);
    else
      smallest = SC_MIN (smallest, t->m[i].ep->size);
  }
  if (any_left (t) == -1)
    return -1;
  ep->size = smallest;
  return 0;
}

static int
tee_flush (struct sc_endpoint *ep)
{
  struct tee_ep *t = (struct tee_ep *) ep;

  for (size_t i = 0; i < t->n; i++)
    if (member_live (&t->m[i]) && sc_ep_flush (t->m[i].ep) == -1)
      fail_member (t, i);
  return any_left (t);
}

static int
tee_commit (struct sc_endpoint *ep)
{
  struct tee_ep *t = (struct tee_ep *) ep;

  for (size_t i = 0; i < t->n; i++)
    if (member_live (&t->m[i]) && sc_ep_commit (t->m[i].ep) == -1)
      fail_member (t, i);
  return any_left (t);
}

static int
tee_close (struct sc_endpoint *ep)
{
  struct tee_ep *t = (struct tee_ep *) ep;
  int rc = 0;

  /* The error of a member that failed before is already known; a
   * deferred error of a good one is the tee's.
   */
  for (size_t i = 0; i < t->n; i++) {
    if (sc_ep_close (t->m[i].ep) == -1 && member_live (&t->m[i]))
      rc = -1;
    free (t->m[i].msg);
  }
  free (t->m);
  pthread_mutex_destroy (&t->lock);
  sc_ep_free (ep);
  return rc;
}

static const struct sc_endpoint_ops tee_ops = {
  .kind = "tee",
  .pwrite = tee_pwrite,
  .zero = tee_zero,
  .set_size = tee_set_size,
  .flush = tee_flush,
  .commit = tee_commit,
  .close = tee_close,
};

struct sc_endpoint *
sc_endpoint_open_tee (struct sc_endpoint *const *targets, size_t n)
{
  struct tee_ep *t = NULL;
  uint32_t common = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE | SC_EP_FRESH_ZEROS;

  if (targets == NULL || n == 0 || n > MAX_TEE_MEMBERS) {
    sc_set_error (EINVAL, "a tee needs 1 to %d targets", MAX_TEE_MEMBERS);
    goto err;
  }
  for (size_t i = 0; i < n; i++) {
    if (targets[i] == NULL) {
      sc_set_error (EINVAL, "a tee needs 1 to %d targets", MAX_TEE_MEMBERS);
      goto err;
    }
    if (!(targets[i]->flags & SC_EP_SEEKABLE)
        || !(targets[i]->flags & SC_EP_THREAD_SAFE)
        || (targets[i]->flags & SC_EP_REMOTE)) {
      sc_set_error (EINVAL, "%s: only files and block devices can be one "
                    "of several targets", targets[i]->name);
      goto err;
    }
  }
  t = sc_ep_new (sizeof *t, &tee_ops, n == 1 ? targets[0]->name : "targets");
  if (t == NULL)
    goto err;
  t->m = calloc (n, sizeof *t->m);
  if (t->m == NULL) {
    sc_set_error (errno, "out of memory");
    sc_ep_free (&t->ep);
    t = NULL;
    goto err;
  }
  pthread_mutex_init (&t->lock, NULL);
  t->n = n;
  t->ep.size = UINT64_MAX;
  t->ep.block_size = 0;
  t->ep.zero_mode = targets[0]->zero_mode;
  for (size_t i = 0; i < n; i++) {
    t->m[i].ep = targets[i];
    common &= targets[i]->flags;
    t->ep.size = SC_MIN (t->ep.size, targets[i]->size);
    t->ep.block_size = SC_MAX (t->ep.block_size, targets[i]->block_size);
  }
  t->ep.flags = common;
  return &t->ep;

 err:
  {
    /* Keep the error across the closes. */
    struct sc_error_saved saved;

    sc_error_save (&saved);
    for (size_t i = 0; targets && i < n; i++)
      sc_ep_close (targets[i]);
    sc_error_restore (&saved);
  }
  return NULL;
}

int
sc_endpoint_tee_status (struct sc_endpoint *ep, size_t i)
{
  struct tee_ep *t = (struct tee_ep *) ep;

  if (ep == NULL || ep->ops != &tee_ops || i >= t->n) {
    sc_set_error (EINVAL, "no such member of a tee");
    return -1;
  }
  if (member_live (&t->m[i]))
    return 0;
  sc_set_error (t->m[i].err, "%s", t->m[i].msg ? t->m[i].msg
                : "failed (out of memory for the message)");
  return -1;
}

size_t
sc_tee_count (struct sc_endpoint *ep)
{
  return ep->ops == &tee_ops ? ((struct tee_ep *) ep)->n : 1;
}

struct sc_endpoint *
sc_tee_member (struct sc_endpoint *ep, size_t i)
{
  struct tee_ep *t = (struct tee_ep *) ep;

  if (ep->ops != &tee_ops)
    return i == 0 ? ep : NULL;
  return i < t->n && member_live (&t->m[i]) ? t->m[i].ep : NULL;
}

void
sc_tee_fail (struct sc_endpoint *ep, size_t i)
{
  if (ep->ops == &tee_ops && i < ((struct tee_ep *) ep)->n)
    fail_member ((struct tee_ep *) ep, i);
}
