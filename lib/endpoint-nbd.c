/* NBD endpoints: an export of an NBD server as a source or a target,
 * through libnbd.
 *
 * The server is named by an NBD URI (nbd://, nbds://, nbd+unix://...)
 * or started here from a command line with systemd socket activation
 * (the command's first connection starts it; closing stops it).
 *
 * Requests are asynchronous: every connection (one, or several when
 * the server advertises multi-conn) has a dispatcher thread that runs
 * libnbd's state machine, and each caller of pread, pwrite, zero or
 * extents issues its command on a connection and sleeps until the
 * reply, so as many requests are in flight as there are callers.  The
 * engine runs queue_depth callers for such an endpoint.
 *
 * Protocol facts used here (NetworkBlockDevice doc/proto.md): block
 * status of the "base:allocation" context (NBD_STATE_HOLE 1, ZERO 2)
 * and of "qemu:allocation-depth" (0 = unallocated in the whole backing
 * chain, which reads as zero); WRITE_ZEROES with NBD_CMD_FLAG_NO_HOLE
 * (keep the range allocated) and NBD_CMD_FLAG_FAST_ZERO (fail rather
 * than write zeros slowly); requests and replies carry 32-bit lengths;
 * without block size constraints, requests stay within 32 MiB.
 */
#include <config.h>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <stddef.h>
#include <stdlib.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <libnbd.h>

#include "internal.h"
#include "endpoint.h"

/* Without advertised constraints a client keeps to 32 MiB requests. */
#define NBD_DEFAULT_MAX_REQUEST (32U * 1024 * 1024)
/* Block status and zero requests are cut to this (lengths are 32-bit
 * in the protocol).
 */
#define NBD_MAX_RANGE ((uint64_t) 1 << 30)
#define NBD_DEFAULT_REQUESTS 16
/* The copy engine writes to an export in pieces of 256 KiB, nbdcopy's
 * request size, not its 1 MiB: onto qemu-nbd of a raw file, 970 MB
 * took 0.79 s in 256 KiB requests and 1.26 s in 1 MiB ones (medians of
 * 7, alternating), the server spending 0.29 s of CPU instead of 0.46 s
 * on the same bytes; onto nbdkit memory both took the same.
 */
#define NBD_TARGET_PIECE_SIZE (256 * 1024)
#define NBD_MAX_CONNECTIONS 16
/* With multi-conn, as many connections as nbdcopy opens: one per
 * online CPU, up to 4.  More than the CPUs only add threads to switch
 * between, on both sides: onto qemu-nbd of a raw file on 2 CPUs, 970 MB
 * took 1.31 s with 4 connections and 0.87 s with 1 (0.91 s with 2).
 */
#define NBD_MULTI_CONN_CONNECTIONS 4
/* How long connections beyond the first may take to be ready. */
#define EXTRA_CONNECT_SECONDS 1
#define CONTEXT_DEPTH "qemu:allocation-depth"

struct nbd_ep;

/* One connection and the thread that drives it. */
struct nbd_conn {
  struct nbd_ep *owner;
  struct nbd_handle *h;
  int wake_fd;                  /* eventfd: a command was issued */
  pthread_t thread;
  bool thread_started;
  /* Protected by owner->lock. */
  int dead;                     /* errno once the connection is unusable */
  char dead_msg[256];
  /* --timeout measures silence per connection: the time since the last
   * reply, or since the first request when none was outstanding.  A
   * server that answers one request at a time, each after a while, is
   * not silent however many requests wait behind.
   */
  unsigned inflight;            /* commands issued, not yet answered */
  struct timespec quiet_since;  /* CLOCK_MONOTONIC */
};

/* One command and its caller, who sleeps until done.  Freed by whoever
 * drops the last of its two references (the caller, and libnbd's free
 * callback), so a caller that gave up waiting leaves nothing dangling.
 */
struct nbd_cmd {
  struct nbd_ep *owner;
  struct nbd_conn *conn;
  unsigned refs;                /* under owner->lock */
  /* The caller sleeps on its own condition, so that a reply wakes the
   * one thread that waits for it rather than every caller: with one
   * condition for all, each of 936 replies of a 4 GiB unpack woke the
   * 64 callers (100,000 futex calls, 40% of the program's time).
   * While it sleeps the command is on owner->waiting, where a dying
   * connection finds the callers it must wake.
   */
  pthread_cond_t cond;
  struct nbd_cmd *prev_waiting, *next_waiting;
  bool done;
  int err;                      /* the command's errno, 0 on success */
  /* Block status only. */
  uint64_t offset, count;
  struct sc_extent_list alloc;  /* base:allocation */
  struct sc_extent_list depth;  /* qemu:allocation-depth */
  int bad;                      /* a reply that breaks the protocol */
  char bad_msg[200];
  char err_msg[200];            /* why err, when more than strerror */
};

struct nbd_ep {
  struct sc_endpoint ep;
  struct nbd_conn *conns;
  unsigned nconns;
  unsigned next_conn;           /* round robin, atomic */
  bool can_zero, can_fast_zero, can_flush;
  bool base_allocation, allocation_depth;
  uint32_t min_block;
  unsigned timeout;             /* seconds, 0 = none */
  bool started;                 /* the server was started here */
  pid_t server_pid;             /* its pid if known, or 0 */
  bool dirty;                   /* written since the last flush (atomic) */
  pthread_mutex_t rmw_lock;     /* one partial-block write at a time */
  pthread_mutex_t lock;
  pthread_condattr_t condattr;  /* commands' conditions: CLOCK_MONOTONIC */
  struct nbd_cmd *waiting;      /* callers asleep, under lock */
  /* Played: no connection, the server's answers come from here. */
  bool played;
  struct sc_nbd_player player;
};

/* ---- servers started here: stopped on SIGINT/SIGTERM too ---------------
 *
 * libnbd stops the server when its handle is closed.  A signal that
 * ends the program first is handled by sc_cleanup_temporaries(), which
 * calls sc_nbd_kill_servers(): it may only kill() pids that were
 * published whole before the signal came.
 */
#define MAX_SERVERS 16
static volatile pid_t servers[MAX_SERVERS];

static void
server_register (pid_t pid)
{
  for (int i = 0; i < MAX_SERVERS; i++) {
    pid_t expected = 0;
    if (__atomic_compare_exchange_n (&servers[i], &expected, pid, false,
                                     __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
      return;
  }
}

static void
server_unregister (pid_t pid)
{
  for (int i = 0; i < MAX_SERVERS; i++) {
    pid_t expected = pid;
    if (pid > 0
        && __atomic_compare_exchange_n (&servers[i], &expected, 0, false,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
      return;
  }
}

/* From a signal handler too: async-signal-safe calls only.  SIGTERM,
 * then up to 2 s for each server to exit, then SIGKILL for those that
 * have not: a server busy with a request may not heed SIGTERM, and
 * none may outlive the program.
 */
void
sc_nbd_kill_servers (void)
{
  const struct timespec tick = { 0, 20 * 1000 * 1000 };
  bool left = false;

  for (int i = 0; i < MAX_SERVERS; i++) {
    pid_t pid = __atomic_load_n (&servers[i], __ATOMIC_SEQ_CST);
    if (pid > 0 && kill (pid, SIGTERM) == 0)
      left = true;
  }
  for (int t = 0; t < 100 && left; t++) {
    nanosleep (&tick, NULL);
    left = false;
    for (int i = 0; i < MAX_SERVERS; i++) {
      pid_t pid = __atomic_load_n (&servers[i], __ATOMIC_SEQ_CST);
      if (pid > 0 && waitpid (pid, NULL, WNOHANG) == 0)
        left = true;
    }
  }
  for (int i = 0; i < MAX_SERVERS && left; i++) {
    pid_t pid = __atomic_load_n (&servers[i], __ATOMIC_SEQ_CST);
    if (pid > 0 && waitpid (pid, NULL, WNOHANG) == 0)
      kill (pid, SIGKILL);
  }
}

/* The children of this thread, from /proc (Linux 3.5 and later): how
 * the server's pid is found, which libnbd does not give.  Returns the
 * number found, up to max.
 */
static size_t
thread_children (pid_t *pids, size_t max)
{
  char path[64];
  FILE *fp;
  size_t n = 0;
  long v;

  snprintf (path, sizeof path, "/proc/self/task/%ld/children",
            (long) syscall (SYS_gettid));
  fp = fopen (path, "re");
  if (fp == NULL)
    return 0;
  while (n < max && fscanf (fp, "%ld", &v) == 1)
    pids[n++] = (pid_t) v;
  fclose (fp);
  return n;
}

/* How long a started server is given to exit after SIGTERM before it
 * is killed: a server busy in a request (a plugin that sleeps, a
 * backend that never answers) may not heed SIGTERM.
 */
#define SERVER_TERM_GRACE_MS 1000

/* Whether pid has exited, without reaping it (libnbd's nbd_close does):
 * 1 and *status (as from waitpid) if it has, 0 if not, -1 if pid is not
 * a child.
 */
static int
server_exited (pid_t pid, int *status)
{
  siginfo_t si;

  memset (&si, 0, sizeof si);
  if (waitid (P_PID, pid, &si, WEXITED | WNOHANG | WNOWAIT) == -1)
    return -1;
  if (si.si_pid != pid)
    return 0;
  if (status)
    *status = si.si_code == CLD_EXITED ? (si.si_status & 0xff) << 8
                                        : si.si_status & 0x7f;
  return 1;
}

/* Wait up to ms milliseconds for pid to exit (not reaping it).  Returns
 * as server_exited.
 */
static int
server_wait (pid_t pid, unsigned ms, int *status)
{
  const struct timespec tick = { 0, 20 * 1000 * 1000 };
  int r;

  while ((r = server_exited (pid, status)) == 0 && ms > 0) {
    nanosleep (&tick, NULL);
    ms = ms > 20 ? ms - 20 : 0;
  }
  return r;
}

/* Stop a server started here whose connection is dead, stuck or never
 * became ready: closing the handle waits for the server to exit, which
 * one that is busy or hung does not do by itself.  SIGTERM, a short
 * grace, then SIGKILL.  h is the handle that started it.
 */
static void
server_stop (pid_t pid, struct nbd_handle *h)
{
  if (pid > 0) {
    if (server_exited (pid, NULL) != 0)
      return;
    kill (pid, SIGTERM);
    if (server_wait (pid, SERVER_TERM_GRACE_MS, NULL) == 0)
      kill (pid, SIGKILL);
  }
  else if (h && nbd_kill_subprocess (h, SIGTERM) == 0) {
    /* The pid is unknown here (no /proc): libnbd still has it, but
     * cannot say whether it has exited.
     */
    const struct timespec grace = { SERVER_TERM_GRACE_MS / 1000,
                                    (SERVER_TERM_GRACE_MS % 1000) * 1000000L };
    nanosleep (&grace, NULL);
    nbd_kill_subprocess (h, SIGKILL);
  }
}

/* After a server started here failed to serve: when it has exited,
 * that is the error, whatever the connection saw of it (a reset, a
 * refusal, an end of file, depending on when it went).  A connection
 * that broke rather than timed out is given up to a second to see the
 * server go.
 */
static void
server_exit_error (pid_t pid)
{
  int status;

  if (pid <= 0
      || server_wait (pid, sc_error_errno () == ETIMEDOUT ? 0 : 1000,
                      &status) != 1)
    return;
  if (WIFEXITED (status))
    sc_set_error (ECONNREFUSED, "the NBD server exited with status %d "
                  "(its own messages, if any, are above)",
                  WEXITSTATUS (status));
  else
    sc_set_error (ECONNREFUSED, "the NBD server was killed by signal %d "
                  "(%s)", WTERMSIG (status), strsignal (WTERMSIG (status)));
}

/* ---- errors ------------------------------------------------------------ */

/* libnbd's message for the last failed call in this thread. */
static void
nbd_error (const char *what)
{
  int err = nbd_get_errno ();
  const char *msg = nbd_get_error ();

  sc_set_error (err ? err : EIO, "%s: %s", what,
                msg && msg[0] ? msg : strerror (err ? err : EIO));
}

/* ---- the dispatcher ---------------------------------------------------- */

/* With n->lock held: wake every caller that waits for a command on c,
 * which has just died.
 */
static void
wake_waiters (struct nbd_ep *n, struct nbd_conn *c)
{
  for (struct nbd_cmd *w = n->waiting; w; w = w->next_waiting)
    if (w->conn == c)
      pthread_cond_signal (&w->cond);
}

static void
conn_kill (struct nbd_conn *c, int err, const char *msg)
{
  struct nbd_ep *n = c->owner;

  pthread_mutex_lock (&n->lock);
  if (c->dead == 0) {
    c->dead = err;
    snprintf (c->dead_msg, sizeof c->dead_msg, "%s", msg);
  }
  wake_waiters (n, c);
  pthread_mutex_unlock (&n->lock);
}

static bool
conn_is_dead (struct nbd_conn *c)
{
  return __atomic_load_n (&c->dead, __ATOMIC_SEQ_CST) != 0;
}

/* Run the connection's state machine until it dies or is told to stop
 * (dead set by close or by a timeout).
 */
static void *
dispatch (void *opaque)
{
  struct nbd_conn *c = opaque;

  while (!conn_is_dead (c)) {
    unsigned dir = nbd_aio_get_direction (c->h);
    struct pollfd fds[2] = {
      { .fd = c->wake_fd, .events = POLLIN },
      { .fd = nbd_aio_get_fd (c->h), .events = 0 },
    };
    int r;

    if (fds[1].fd == -1) {
      conn_kill (c, ENOTCONN, "the connection is closed");
      break;
    }
    if (dir & LIBNBD_AIO_DIRECTION_READ)
      fds[1].events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
      fds[1].events |= POLLOUT;
    r = poll (fds, 2, -1);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      conn_kill (c, errno, strerror (errno));
      break;
    }
    if (fds[0].revents & POLLIN) {
      uint64_t v;
      if (read (c->wake_fd, &v, sizeof v) == -1 && errno != EAGAIN) {
        conn_kill (c, errno, strerror (errno));
        break;
      }
    }
    if (conn_is_dead (c))
      break;
    r = 0;
    if ((dir & LIBNBD_AIO_DIRECTION_READ)
        && (fds[1].revents & (POLLIN | POLLHUP | POLLERR)))
      r = nbd_aio_notify_read (c->h);
    else if ((dir & LIBNBD_AIO_DIRECTION_WRITE)
             && (fds[1].revents & (POLLOUT | POLLHUP | POLLERR)))
      r = nbd_aio_notify_write (c->h);
    if (r == -1 || nbd_aio_is_dead (c->h) || nbd_aio_is_closed (c->h)) {
      const char *msg = nbd_get_error ();
      conn_kill (c, nbd_get_errno () ? nbd_get_errno () : ENOTCONN,
                 msg && msg[0] ? msg : "the server closed the connection");
      break;
    }
  }
  return NULL;
}

static void
conn_wake (struct nbd_conn *c)
{
  uint64_t one = 1;

  if (write (c->wake_fd, &one, sizeof one) == -1) {
    /* The counter is full: the dispatcher is awake anyway. */
  }
}

/* ---- commands ---------------------------------------------------------- */

static struct nbd_cmd *
cmd_new (struct nbd_ep *n)
{
  struct nbd_cmd *cmd = calloc (1, sizeof *cmd);

  if (cmd == NULL) {
    sc_set_error (errno, "out of memory");
    return NULL;
  }
  cmd->owner = n;
  cmd->refs = 2;
  pthread_cond_init (&cmd->cond, &n->condattr);
  sc_extent_list_init (&cmd->alloc);
  sc_extent_list_init (&cmd->depth);
  return cmd;
}

static void
cmd_unref (struct nbd_cmd *cmd)
{
  struct nbd_ep *n = cmd->owner;
  bool last;

  pthread_mutex_lock (&n->lock);
  last = --cmd->refs == 0;
  pthread_mutex_unlock (&n->lock);
  if (last) {
    pthread_cond_destroy (&cmd->cond);
    sc_extent_list_free (&cmd->alloc);
    sc_extent_list_free (&cmd->depth);
    free (cmd);
  }
}

/* libnbd's free callback: its reference is gone. */
static void
cmd_free (void *opaque)
{
  cmd_unref (opaque);
}

/* The completion callback, in the dispatcher thread. */
static int
cmd_complete (void *opaque, int *error)
{
  struct nbd_cmd *cmd = opaque;
  struct nbd_ep *n = cmd->owner;
  struct nbd_conn *c = cmd->conn;

  pthread_mutex_lock (&n->lock);
  /* A played server's commands have no connection. */
  if (c) {
    if (c->inflight > 0)
      c->inflight--;
    clock_gettime (CLOCK_MONOTONIC, &c->quiet_since);
  }
  cmd->done = true;
  cmd->err = *error;
  /* A command retired because the connection died (ENOTCONN) says why
   * only in this thread's libnbd error: a reply that breaks the
   * protocol sets one with no errno, a failed recv or send one with.
   * (libnbd may not be called on the handle from here.)
   */
  if (*error == ENOTCONN) {
    const char *msg = nbd_get_error ();
    const char *colon = msg ? strstr (msg, ": ") : NULL;

    if (msg && colon && strncmp (msg, "nbd_", 4) == 0)
      msg = colon + 2;          /* drop the name of libnbd's call */
    if (msg && msg[0] && nbd_get_errno () == 0) {
      cmd->err = EPROTO;
      snprintf (cmd->err_msg, sizeof cmd->err_msg, "the server broke the "
                "NBD protocol (%s)", msg);
    }
    else if (msg && msg[0])
      snprintf (cmd->err_msg, sizeof cmd->err_msg, "the connection was "
                "lost (%s)", msg);
  }
  pthread_cond_signal (&cmd->cond);
  pthread_mutex_unlock (&n->lock);
  return 1;                     /* retire the command */
}

/* The next connection that is still alive, or NULL (error set). */
static struct nbd_conn *
pick_conn (struct nbd_ep *n)
{
  unsigned start = __atomic_fetch_add (&n->next_conn, 1, __ATOMIC_RELAXED);

  for (unsigned i = 0; i < n->nconns; i++) {
    struct nbd_conn *c = &n->conns[(start + i) % n->nconns];
    if (!conn_is_dead (c))
      return c;
  }
  pthread_mutex_lock (&n->lock);
  sc_set_error (n->conns[0].dead, "%s", n->conns[0].dead_msg);
  pthread_mutex_unlock (&n->lock);
  return NULL;
}

/* Sleep until cmd completes, its connection dies or the timeout runs
 * out.  Returns 0 when the command succeeded; otherwise -1 with the
 * error set to "WHAT at offset O, length L: reason".  Drops the
 * caller's reference.
 */
static int
cmd_wait (struct nbd_cmd *cmd, const char *what, uint64_t offset,
          uint64_t count)
{
  struct nbd_ep *n = cmd->owner;
  struct nbd_conn *c = cmd->conn;
  struct timespec deadline, now;
  int err = 0;
  char reason[256] = "";

  pthread_mutex_lock (&n->lock);
  cmd->prev_waiting = NULL;
  cmd->next_waiting = n->waiting;
  if (n->waiting)
    n->waiting->prev_waiting = cmd;
  n->waiting = cmd;
  while (!cmd->done && c->dead == 0) {
    if (n->timeout == 0) {
      pthread_cond_wait (&cmd->cond, &n->lock);
      continue;
    }
    /* The connection's silence, not this command's age, is what is
     * bounded: the deadline moves with every reply on c.
     */
    deadline = c->quiet_since;
    deadline.tv_sec += n->timeout;
    if (pthread_cond_timedwait (&cmd->cond, &n->lock, &deadline)
        != ETIMEDOUT || cmd->done)
      continue;
    clock_gettime (CLOCK_MONOTONIC, &now);
    if (now.tv_sec < c->quiet_since.tv_sec + (time_t) n->timeout
        || (now.tv_sec == c->quiet_since.tv_sec + (time_t) n->timeout
            && now.tv_nsec < c->quiet_since.tv_nsec))
      continue;
    {
      /* A server that does not answer is given up on: the connection
       * stops, so nothing is written into the caller's buffer later.
       */
      if (c->dead == 0) {
        c->dead = ETIMEDOUT;
        snprintf (c->dead_msg, sizeof c->dead_msg,
                  "no reply from the server within %u s", n->timeout);
      }
      wake_waiters (n, c);
      break;
    }
  }
  if (cmd->prev_waiting)
    cmd->prev_waiting->next_waiting = cmd->next_waiting;
  else
    n->waiting = cmd->next_waiting;
  if (cmd->next_waiting)
    cmd->next_waiting->prev_waiting = cmd->prev_waiting;
  if (cmd->done) {
    err = cmd->err;
    if (err == 0 && cmd->bad) {
      err = cmd->bad;
      snprintf (reason, sizeof reason, "%s", cmd->bad_msg);
    }
    else if (err && cmd->err_msg[0])
      snprintf (reason, sizeof reason, "%s", cmd->err_msg);
    else if (err)
      snprintf (reason, sizeof reason, "%s", strerror (err));
  }
  else {
    err = c->dead;
    snprintf (reason, sizeof reason, "%s", c->dead_msg);
  }
  pthread_mutex_unlock (&n->lock);
  if (!cmd->done)
    conn_wake (c);
  cmd_unref (cmd);
  if (err) {
    sc_set_error (err, "NBD %s at offset %" PRIu64 ", length %" PRIu64
                  ": %s", what, offset, count, reason);
    return -1;
  }
  return 0;
}

/* After an aio call that failed to issue: the caller's error, and both
 * references dropped (libnbd calls the free callback even then).
 */
static int
cmd_issue_failed (struct nbd_cmd *cmd, const char *what, uint64_t offset,
                  uint64_t count)
{
  int err = nbd_get_errno () ? nbd_get_errno () : EIO;
  const char *msg = nbd_get_error ();

  sc_set_error (err, "NBD %s at offset %" PRIu64 ", length %" PRIu64
                ": %s", what, offset, count,
                msg && msg[0] ? msg : strerror (err));
  cmd_unref (cmd);
  return -1;
}

/* ---- the slots --------------------------------------------------------- */

enum nbd_op { OP_READ, OP_WRITE, OP_ZERO, OP_FLUSH, OP_BLOCK_STATUS };
static const char *const op_names[] = {
  [OP_READ] = "read", [OP_WRITE] = "write", [OP_ZERO] = "write zeroes",
  [OP_FLUSH] = "flush", [OP_BLOCK_STATUS] = "block status",
};

static int cmd_extent (void *opaque, const char *context, uint64_t offset,
                       uint32_t *entries, size_t nr_entries, int *error);

/* run_cmd for a played server: the command goes to the player's
 * function instead of libnbd, and its answer comes back through the
 * same callbacks, references and error messages as a reply would.
 */
static int
play_cmd (struct nbd_ep *n, enum nbd_op op, void *buf, uint64_t count,
          uint64_t offset, struct nbd_cmd *cmd)
{
  const struct sc_nbd_player *p = &n->player;
  int err = ENOTSUP;

  if (cmd == NULL && (cmd = cmd_new (n)) == NULL)
    return -1;
  if (op == OP_READ && p->pread)
    err = p->pread (p->opaque, buf, count, offset);
  else if (op == OP_BLOCK_STATUS && p->block_status)
    err = p->block_status (p->opaque, count, offset, cmd_extent, cmd);
  /* As libnbd: completed, then its own reference dropped.  The command
   * is done, so waiting for it never looks at its (absent) connection.
   */
  cmd_complete (cmd, &err);
  cmd_free (cmd);
  return cmd_wait (cmd, op_names[op], offset, count);
}

/* Issue one command on connection c (NULL: the next live one) and wait
 * for its reply.  A flush is reported as covering [offset,
 * offset+count).  Block status needs cmd, made by the caller with a
 * reference of its own to read the reply by; every other op passes
 * NULL.
 */
static int
run_cmd (struct nbd_ep *n, struct nbd_conn *c, enum nbd_op op, void *buf,
         uint64_t count, uint64_t offset, uint32_t nbd_flags,
         struct nbd_cmd *cmd)
{
  nbd_completion_callback done;
  int64_t r = -1;

  if (n->played)
    return play_cmd (n, op, buf, count, offset, cmd);
  if (c == NULL && (c = pick_conn (n)) == NULL)
    goto refused;
  if (conn_is_dead (c)) {
    pthread_mutex_lock (&n->lock);
    sc_set_error (c->dead, "NBD %s at offset %" PRIu64 ", length %" PRIu64
                  ": %s", op_names[op], offset, count, c->dead_msg);
    pthread_mutex_unlock (&n->lock);
    goto refused;
  }
  if (cmd == NULL && (cmd = cmd_new (n)) == NULL)
    return -1;
  cmd->conn = c;
  pthread_mutex_lock (&n->lock);
  if (c->inflight++ == 0)
    clock_gettime (CLOCK_MONOTONIC, &c->quiet_since);
  pthread_mutex_unlock (&n->lock);
  done = (nbd_completion_callback) { .callback = cmd_complete,
                                     .user_data = cmd, .free = cmd_free };
  switch (op) {
  case OP_READ:
    r = nbd_aio_pread (c->h, buf, count, offset, done, 0);
    break;
  case OP_WRITE:
    r = nbd_aio_pwrite (c->h, buf, count, offset, done, 0);
    break;
  case OP_ZERO:
    r = nbd_aio_zero (c->h, count, offset, done, nbd_flags);
    break;
  case OP_FLUSH:
    r = nbd_aio_flush (c->h, done, 0);
    break;
  case OP_BLOCK_STATUS:
    r = nbd_aio_block_status (c->h, count, offset,
                              (nbd_extent_callback) { .callback = cmd_extent,
                                                      .user_data = cmd },
                              done, 0);
    break;
  }
  if (r == -1) {
    pthread_mutex_lock (&n->lock);
    c->inflight--;
    pthread_mutex_unlock (&n->lock);
    return cmd_issue_failed (cmd, op_names[op], offset, count);
  }
  conn_wake (c);
  return cmd_wait (cmd, op_names[op], offset, count);

 refused:
  /* A caller's command gives up the two references that waiting and
   * libnbd would have dropped.
   */
  if (cmd) {
    cmd_unref (cmd);
    cmd_unref (cmd);
  }
  return -1;
}

/* A read or write as the server takes it: requests no longer than
 * max_request and aligned to the minimum block size, with the partial
 * blocks at either end read whole (and for a write, changed and written
 * back whole, one at a time).
 */
static int
transfer (struct nbd_ep *n, enum nbd_op op, unsigned char *buf,
          uint64_t count, uint64_t offset)
{
  uint64_t mb = n->min_block, end;

  if (SC_ADD_OVERFLOW (offset, count, &end) || end > n->ep.size) {
    sc_set_error (EIO, "NBD %s at offset %" PRIu64 ", length %" PRIu64
                  ": past the end of the export (%" PRIu64 " bytes)",
                  op_names[op], offset, count, n->ep.size);
    return -1;
  }
  while (count > 0) {
    uint64_t len;

    if (SC_IS_ALIGNED (offset, mb) && count >= mb) {
      len = SC_MIN (SC_ROUND_DOWN (count, mb), n->ep.max_request);
      if (run_cmd (n, NULL, op, buf, len, offset, 0, NULL) == -1)
        return -1;
    }
    else {
      uint64_t start = SC_ROUND_DOWN (offset, mb);
      uint64_t whole = SC_MIN (mb, n->ep.size - start);
      CLEANUP_FREE unsigned char *block = malloc (mb);
      int r;

      len = SC_MIN (count, start + mb - offset);
      if (block == NULL) {
        sc_set_error (errno, "out of memory");
        return -1;
      }
      if (op == OP_WRITE)
        pthread_mutex_lock (&n->rmw_lock);
      r = run_cmd (n, NULL, OP_READ, block, whole, start, 0, NULL);
      if (r == 0 && op == OP_READ)
        memcpy (buf, block + (offset - start), len);
      else if (r == 0) {
        memcpy (block + (offset - start), buf, len);
        r = run_cmd (n, NULL, OP_WRITE, block, whole, start, 0, NULL);
      }
      if (op == OP_WRITE)
        pthread_mutex_unlock (&n->rmw_lock);
      if (r == -1)
        return -1;
    }
    buf += len;
    offset += len;
    count -= len;
  }
  return 0;
}

static int
nbd_ep_pread (struct sc_endpoint *ep, void *buf, size_t count,
              uint64_t offset)
{
  return transfer ((struct nbd_ep *) ep, OP_READ, buf, count, offset);
}

static int
nbd_ep_pwrite (struct sc_endpoint *ep, const void *buf, size_t count,
               uint64_t offset)
{
  struct nbd_ep *n = (struct nbd_ep *) ep;

  __atomic_store_n (&n->dirty, true, __ATOMIC_SEQ_CST);
  /* libnbd only reads from buf when writing. */
  return transfer (n, OP_WRITE, (unsigned char *) buf, count, offset);
}

/* WRITE_ZEROES as qemu-img and nbdcopy send it: NO_HOLE unless the
 * range may be deallocated, FAST_ZERO when the caller would rather
 * write zeros itself than have the server do it slowly.
 */
static int
nbd_ep_zero (struct sc_endpoint *ep, uint64_t count, uint64_t offset,
             unsigned flags)
{
  struct nbd_ep *n = (struct nbd_ep *) ep;
  uint32_t nbd_flags = 0;

  if (!n->can_zero || ((flags & SC_ZERO_FAST) && !n->can_fast_zero)) {
    if (flags & SC_ZERO_FAST)
      return sc_ep_unsupported (ep, "fast zeroing");
    return sc_ep_write_zeros (ep, count, offset);
  }
  if (!(flags & SC_ZERO_MAY_UNMAP))
    nbd_flags |= LIBNBD_CMD_FLAG_NO_HOLE;
  if (flags & SC_ZERO_FAST)
    nbd_flags |= LIBNBD_CMD_FLAG_FAST_ZERO;
  __atomic_store_n (&n->dirty, true, __ATOMIC_SEQ_CST);
  /* Partial blocks at the ends are written as zeros. */
  if (!SC_IS_ALIGNED (offset, n->min_block)
      || !SC_IS_ALIGNED (count, n->min_block)) {
    uint64_t end = offset + count;
    uint64_t a0 = SC_MIN (SC_ROUND_UP (offset, n->min_block), end);
    uint64_t a1 = SC_MAX (SC_ROUND_DOWN (end, n->min_block), a0);

    if (flags & SC_ZERO_FAST)
      return sc_ep_unsupported (ep, "fast zeroing of partial blocks");
    if (sc_ep_write_zeros (ep, a0 - offset, offset) == -1
        || sc_ep_write_zeros (ep, end - a1, a1) == -1)
      return -1;
    offset = a0;
    count = a1 - a0;
  }
  while (count > 0) {
    uint64_t len = SC_MIN (count, SC_ROUND_DOWN (NBD_MAX_RANGE,
                                                  n->min_block));

    if (run_cmd (n, NULL, OP_ZERO, NULL, len, offset, nbd_flags, NULL) == -1)
      return -1;
    offset += len;
    count -= len;
  }
  return 0;
}

/* Block status replies, in the dispatcher thread.  Each context's
 * extents are kept as the server sent them, checked: each goes on
 * where the last ended, none is empty; what runs past the range asked
 * for is cut.  At most SC_NBD_MAX_REPLY_EXTENTS are kept, whatever the
 * size of the reply: the rest is asked again.
 */
static int
cmd_extent (void *opaque, const char *context, uint64_t offset,
            uint32_t *entries, size_t nr_entries, int *error)
{
  struct nbd_cmd *cmd = opaque;
  bool depth = strcmp (context, CONTEXT_DEPTH) == 0;
  struct sc_extent_list *list = depth ? &cmd->depth : &cmd->alloc;
  uint64_t end = cmd->offset + cmd->count, pos = offset;

  if (*error || cmd->bad)
    return 0;
  if (!depth && strcmp (context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  if (offset != cmd->offset) {
    cmd->bad = EIO;
    snprintf (cmd->bad_msg, sizeof cmd->bad_msg, "the server answered "
              "block status of %s for offset %" PRIu64 " (asked: %" PRIu64
              ")", context, offset, cmd->offset);
    return 0;
  }
  if (list->len > 0) {
    cmd->bad = EIO;
    snprintf (cmd->bad_msg, sizeof cmd->bad_msg, "the server answered "
              "block status of %s twice", context);
    return 0;
  }
  for (size_t i = 0; i + 1 < nr_entries && pos < end
                     && list->len < SC_NBD_MAX_REPLY_EXTENTS; i += 2) {
    uint64_t len = entries[i];
    uint32_t flags;

    if (len == 0) {
      cmd->bad = EIO;
      snprintf (cmd->bad_msg, sizeof cmd->bad_msg, "the server answered "
                "block status with an empty extent at offset %" PRIu64,
                pos);
      return 0;
    }
    len = SC_MIN (len, end - pos);
    if (depth)
      flags = entries[i + 1] == 0 ? SC_EXTENT_HOLE | SC_EXTENT_ZERO : 0;
    else if ((entries[i + 1] & LIBNBD_STATE_ZERO)
             && (entries[i + 1] & LIBNBD_STATE_HOLE))
      flags = SC_EXTENT_HOLE | SC_EXTENT_ZERO;
    else if (entries[i + 1] & LIBNBD_STATE_ZERO)
      flags = SC_EXTENT_ZERO;
    else
      flags = 0;        /* data, or a hole that may not read as zero */
    if (sc_extent_list_append (list, pos, len, flags) == -1) {
      cmd->bad = ENOMEM;
      snprintf (cmd->bad_msg, sizeof cmd->bad_msg, "out of memory");
      return 0;
    }
    pos += len;
  }
  return 0;
}

/* Append to out the extents of alloc, with every range that depth says
 * is unallocated in the whole chain marked as reading zero, over the
 * prefix both describe.
 */
static int
merge_depth (const struct sc_extent_list *alloc,
             const struct sc_extent_list *depth, struct sc_extent_list *out)
{
  size_t i = 0, j = 0;
  uint64_t pos = alloc->ext[0].offset;

  while (i < alloc->len && j < depth->len) {
    const struct sc_extent *a = &alloc->ext[i], *d = &depth->ext[j];
    uint64_t a_end = a->offset + a->length, d_end = d->offset + d->length;
    uint64_t end = SC_MIN (a_end, d_end);
    if (sc_extent_list_append (out, pos, end - pos, a->flags | d->flags)
        == -1)
      return -1;
    pos = end;
    if (a_end == end)
      i++;
    if (d_end == end)
      j++;
  }
  return 0;
}

static int
nbd_ep_extents (struct sc_endpoint *ep, uint64_t offset, uint64_t count,
                struct sc_extent_list *list)
{
  struct nbd_ep *n = (struct nbd_ep *) ep;
  struct nbd_cmd *cmd;
  uint64_t len;
  int r;

  if (count == 0)
    return 0;
  /* Past the end of the export, or no block status: all data. */
  if (offset >= ep->size || !n->base_allocation)
    return sc_extent_list_append (list, offset, count, 0);
  len = SC_MIN (SC_MIN (count, ep->size - offset), NBD_MAX_RANGE);
  if ((cmd = cmd_new (n)) == NULL)
    return -1;
  cmd->offset = offset;
  cmd->count = len;
  /* The reply is read after run_cmd drops the caller's reference: keep
   * a third one until then.
   */
  cmd->refs++;
  if (run_cmd (n, NULL, OP_BLOCK_STATUS, NULL, len, offset, 0, cmd) == -1) {
    cmd_unref (cmd);
    return -1;
  }
  if (cmd->alloc.len == 0) {
    sc_set_error (EIO, "NBD block status at offset %" PRIu64 ", length %"
                  PRIu64 ": the server described nothing", offset, len);
    r = -1;
  }
  else if (n->allocation_depth && cmd->depth.len > 0)
    r = merge_depth (&cmd->alloc, &cmd->depth, list);
  else {
    r = 0;
    for (size_t i = 0; i < cmd->alloc.len && r == 0; i++)
      r = sc_extent_list_append (list, cmd->alloc.ext[i].offset,
                                 cmd->alloc.ext[i].length,
                                 cmd->alloc.ext[i].flags);
  }
  cmd_unref (cmd);
  return r;
}

static int
nbd_ep_flush (struct sc_endpoint *ep)
{
  struct nbd_ep *n = (struct nbd_ep *) ep;

  /* Nothing written since the last flush: nothing to flush. */
  if (!n->can_flush || !__atomic_exchange_n (&n->dirty, false,
                                             __ATOMIC_SEQ_CST))
    return 0;
  /* One flush: there are several connections only when the server
   * advertises multi-conn, which promises that a flush on one covers
   * the writes completed on all of them (and every write has completed
   * when the engine flushes).
   */
  if (run_cmd (n, &n->conns[0], OP_FLUSH, NULL, ep->size, 0, 0, NULL) == -1) {
    __atomic_store_n (&n->dirty, true, __ATOMIC_SEQ_CST);
    sc_error_prefix ("%s", ep->name);
    return -1;
  }
  return 0;
}

static int
nbd_ep_set_size (struct sc_endpoint *ep, uint64_t size)
{
  if (size > ep->size) {
    sc_set_error (ENOSPC, "the export is smaller than what is to be "
                  "written (%" PRIu64 " < %" PRIu64 " bytes)", ep->size,
                  size);
    return -1;
  }
  return 0;
}

/* Stop the dispatcher, then say goodbye (NBD_CMD_DISC) to a server
 * that is still there, so that it does not see a connection reset.
 * Returns whether the connection ended so (or was never made).
 */
static bool
conn_stop (struct nbd_conn *c)
{
  bool alive = !conn_is_dead (c);

  if (c->thread_started) {
    conn_kill (c, ENOTCONN, "the connection was closed");
    conn_wake (c);
    pthread_join (c->thread, NULL);
    c->thread_started = false;
  }
  if (alive && c->h && nbd_aio_is_ready (c->h) == 1) {
    nbd_shutdown (c->h, 0);
    return true;
  }
  return c->h == NULL;
}

static int
nbd_ep_close (struct sc_endpoint *ep)
{
  struct nbd_ep *n = (struct nbd_ep *) ep;
  bool clean = true;

  for (unsigned i = 0; i < n->nconns; i++)
    clean &= conn_stop (&n->conns[i]);
  /* The first handle started the server, if one was started here:
   * closing it waits for the server to exit, which a server told
   * goodbye on every connection does by itself.  One that timed out,
   * broke a connection or never became ready may be stuck, and is
   * stopped first, so that closing (and --timeout) stays bounded.
   */
  if (!clean && n->conns && n->conns[0].h
      && n->started)
    server_stop (n->server_pid, n->conns[0].h);
  for (unsigned i = n->nconns; i-- > 0; ) {
    struct nbd_conn *c = &n->conns[i];
    if (c->h)
      nbd_close (c->h);
    if (c->wake_fd >= 0)
      close (c->wake_fd);
  }
  server_unregister (n->server_pid);
  pthread_condattr_destroy (&n->condattr);
  pthread_mutex_destroy (&n->lock);
  pthread_mutex_destroy (&n->rmw_lock);
  free (n->conns);
  sc_ep_free (ep);
  return 0;
}

static const struct sc_endpoint_ops nbd_source_ops = {
  .kind = "nbd",
  .pread = nbd_ep_pread,
  .extents = nbd_ep_extents,
  .close = nbd_ep_close,
};

static const struct sc_endpoint_ops nbd_target_ops = {
  .kind = "nbd",
  .pread = nbd_ep_pread,
  .extents = nbd_ep_extents,
  .pwrite = nbd_ep_pwrite,
  .zero = nbd_ep_zero,
  .set_size = nbd_ep_set_size,
  .flush = nbd_ep_flush,
  .close = nbd_ep_close,
};

/* ---- which local processes serve an export ------------------------------
 *
 * A server on this host may have open the very file a command is about
 * to write (nbdkit file, qemu-nbd, or the backing file of the image it
 * serves).  Its process is found from the connection: the pid of a
 * server started here; the peer of a Unix socket (SO_PEERCRED, and the
 * holders of the listening socket, which outlive a parent that forked
 * into the background after listen); for TCP, the holders of the other
 * end of the connection, found in /proc/net/tcp{,6}, or, for a server
 * in another network namespace (a container, "ip netns exec" behind a
 * veth pair), in the tables of that namespace.
 */

/* How long each walk through /proc may take (the search makes at most
 * two: the network namespaces, then the holders of a socket).  A walk
 * reads a directory per process, which on a host with tens of
 * thousands of processes takes seconds; past this it ends with what it
 * found, and the command goes on as for a server it cannot see.  Here
 * the holders' walk takes 2 to 4 ms for 100 processes with 450
 * descriptors: a second is some 30,000 processes.
 */
#define SERVER_SEARCH_NS 1000000000LL
/* Network namespaces remembered (so that each one's tables are read
 * once); past this many, further ones are read through every process.
 */
#define MAX_NETNS 256

static int64_t
search_now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (int64_t) ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static size_t
add_pid (pid_t *pids, size_t n, size_t max, pid_t pid)
{
  if (pid <= 0 || pid == getpid () || n >= max)
    return n;
  for (size_t i = 0; i < n; i++)
    if (pids[i] == pid)
      return n;
  pids[n] = pid;
  return n + 1;
}

/* Add the processes that hold socket inode ino open (socket inodes
 * are unique across network namespaces), for at most SERVER_SEARCH_NS.
 */
static size_t
add_socket_holders (unsigned long ino, pid_t *pids, size_t n, size_t max)
{
  int64_t deadline = search_now () + SERVER_SEARCH_NS;
  char want[64];
  DIR *proc;
  struct dirent *e;

  snprintf (want, sizeof want, "socket:[%lu]", ino);
  proc = opendir ("/proc");
  if (proc == NULL)
    return n;
  while (n < max && search_now () < deadline
         && (e = readdir (proc)) != NULL) {
    char path[300], link[64];
    char *end;
    long pid = strtol (e->d_name, &end, 10);
    DIR *fds;
    struct dirent *f;
    bool found = false;

    if (*end != '\0' || pid <= 0)
      continue;
    snprintf (path, sizeof path, "/proc/%ld/fd", pid);
    fds = opendir (path);
    if (fds == NULL)
      continue;                 /* gone, or not ours to see */
    while (!found && (f = readdir (fds)) != NULL) {
      ssize_t len;

      if (f->d_name[0] == '.')
        continue;
      snprintf (path, sizeof path, "/proc/%ld/fd/%s", pid, f->d_name);
      len = readlink (path, link, sizeof link - 1);
      if (len <= 0)
        continue;
      link[len] = '\0';
      found = strcmp (link, want) == 0;
    }
    closedir (fds);
    if (found)
      n = add_pid (pids, n, max, (pid_t) pid);
  }
  closedir (proc);
  return n;
}

/* The inode of the listening Unix socket bound to path, or 0. */
static unsigned long
unix_listener (const char *path)
{
  FILE *fp = fopen ("/proc/net/unix", "re");
  char line[4096];
  unsigned long r = 0;

  if (fp == NULL)
    return 0;
  /* "Num RefCount Protocol Flags Type St Inode Path" (proc(5)); the
   * flag __SO_ACCEPTCON (0x10000) marks a listening socket.
   */
  while (r == 0 && fgets (line, sizeof line, fp)) {
    unsigned long flags, ino;
    char name[4096];

    if (sscanf (line, "%*s %*x %*x %lx %*x %*x %lu %4095s", &flags, &ino,
                name) == 3
        && (flags & 0x10000) && strcmp (name, path) == 0)
      r = ino;
  }
  fclose (fp);
  return r;
}

/* An address as /proc/net/tcp{,6} prints it: the address in 32-bit
 * words of host byte order, then the port, in hexadecimal.
 */
static void
proc_net_address (const struct sockaddr_storage *ss, char *buf, size_t len)
{
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *) ss;
    snprintf (buf, len, "%08X:%04X", (unsigned) in->sin_addr.s_addr,
              (unsigned) ntohs (in->sin_port));
  }
  else {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) ss;
    uint32_t w[4];

    memcpy (w, &in6->sin6_addr, sizeof w);
    snprintf (buf, len, "%08X%08X%08X%08X:%04X", (unsigned) w[0],
              (unsigned) w[1], (unsigned) w[2], (unsigned) w[3],
              (unsigned) ntohs (in6->sin6_port));
  }
}

/* The inode of the socket whose local end is local and remote end is
 * remote, in the table tcp (IPv4) or tcp6 of directory net (/proc/net
 * for this process's network namespace, /proc/PID/net for PID's), or
 * 0.
 */
static unsigned long
tcp_socket (const char *net, const struct sockaddr_storage *local,
            const struct sockaddr_storage *remote, int64_t deadline)
{
  char l[64], r[64], line[512], path[64];
  unsigned long ino = 0;
  FILE *fp;

  proc_net_address (local, l, sizeof l);
  proc_net_address (remote, r, sizeof r);
  snprintf (path, sizeof path, "%s/%s", net,
            local->ss_family == AF_INET ? "tcp" : "tcp6");
  fp = fopen (path, "re");
  if (fp == NULL)
    return 0;
  /* "sl local_address rem_address st tx:rx tr:when retrnsmt uid
   * timeout inode" (proc(5)).  A namespace may hold a large table.
   */
  while (ino == 0 && search_now () < deadline
         && fgets (line, sizeof line, fp)) {
    char la[64], ra[64];
    unsigned long i;

    if (sscanf (line, "%*s %63s %63s %*x %*s %*s %*s %*u %*u %lu", la, ra,
                &i) == 3
        && strcmp (la, l) == 0 && strcmp (ra, r) == 0)
      ino = i;
  }
  fclose (fp);
  return ino;
}

/* The network namespace of process pid ("self" for this one) as the
 * number of its link "net:[N]", or 0 where it cannot be seen (gone, or
 * another user's).
 */
static unsigned long
net_namespace (const char *pid)
{
  char path[64], link[64];
  unsigned long ns;
  ssize_t len;

  snprintf (path, sizeof path, "/proc/%s/ns/net", pid);
  len = readlink (path, link, sizeof link - 1);
  if (len <= 0)
    return 0;
  link[len] = '\0';
  if (sscanf (link, "net:[%lu]", &ns) != 1)
    return 0;
  return ns;
}

/* The server's end of a TCP connection that is not in this namespace's
 * tables: the tables of every other network namespace that a process
 * of ours to see is in, each read once, through /proc/PID/net of the
 * first such process, for at most SERVER_SEARCH_NS.  Returns the
 * socket's inode, or 0.
 */
static unsigned long
tcp_socket_elsewhere (const struct sockaddr_storage *local,
                      const struct sockaddr_storage *remote)
{
  int64_t deadline = search_now () + SERVER_SEARCH_NS;
  unsigned long self = net_namespace ("self"), seen[MAX_NETNS], ino = 0;
  size_t nseen = 0;
  DIR *proc;
  struct dirent *e;

  if (self == 0)
    return 0;
  proc = opendir ("/proc");
  if (proc == NULL)
    return 0;
  while (ino == 0 && search_now () < deadline
         && (e = readdir (proc)) != NULL) {
    char *end, net[300];
    long pid = strtol (e->d_name, &end, 10);
    unsigned long ns;
    bool known = false;

    if (*end != '\0' || pid <= 0)
      continue;
    ns = net_namespace (e->d_name);
    if (ns == 0 || ns == self)
      continue;
    for (size_t i = 0; i < nseen && !known; i++)
      known = seen[i] == ns;
    if (known)
      continue;
    if (nseen < MAX_NETNS)
      seen[nseen++] = ns;
    snprintf (net, sizeof net, "/proc/%ld/net", pid);
    ino = tcp_socket (net, local, remote, deadline);
  }
  closedir (proc);
  return ino;
}

size_t
sc_nbd_server_pids (struct sc_endpoint *ep, pid_t *pids, size_t max)
{
  struct nbd_ep *n = (struct nbd_ep *) ep;
  struct sockaddr_storage local, remote;
  socklen_t llen = sizeof local, rlen = sizeof remote;
  size_t count = 0;
  int fd;

  if (ep == NULL || (ep->ops != &nbd_source_ops && ep->ops != &nbd_target_ops)
      || n->played || n->nconns == 0 || n->conns[0].h == NULL)
    return 0;
  if (n->started)
    count = add_pid (pids, count, max, n->server_pid);
  fd = nbd_aio_get_fd (n->conns[0].h);
  if (fd == -1)
    return count;
  memset (&local, 0, sizeof local);
  memset (&remote, 0, sizeof remote);
  if (getsockname (fd, (struct sockaddr *) &local, &llen) == -1
      || getpeername (fd, (struct sockaddr *) &remote, &rlen) == -1)
    return count;
  if (remote.ss_family == AF_UNIX) {
    const struct sockaddr_un *un = (const struct sockaddr_un *) &remote;
    struct ucred cred;
    socklen_t clen = sizeof cred;
    char path[sizeof un->sun_path + 1];
    size_t plen;
    unsigned long ino;

    if (getsockopt (fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0)
      count = add_pid (pids, count, max, cred.pid);
    /* A named socket (an abstract one starts with a NUL byte). */
    if (rlen > offsetof (struct sockaddr_un, sun_path)
        && un->sun_path[0] != '\0') {
      plen = rlen - offsetof (struct sockaddr_un, sun_path);
      if (plen > sizeof un->sun_path)
        plen = sizeof un->sun_path;
      memcpy (path, un->sun_path, plen);
      path[plen] = '\0';
      ino = unix_listener (path);
      if (ino)
        count = add_socket_holders (ino, pids, count, max);
    }
  }
  else if (remote.ss_family == AF_INET || remote.ss_family == AF_INET6) {
    /* The server's end: local and remote swapped.  A server on
     * another host has no such entry in any namespace here.
     */
    unsigned long ino = tcp_socket ("/proc/net", &remote, &local,
                                    search_now () + SERVER_SEARCH_NS);
    if (ino == 0)
      ino = tcp_socket_elsewhere (&remote, &local);
    if (ino)
      count = add_socket_holders (ino, pids, count, max);
  }
  return count;
}

/* ---- opening ------------------------------------------------------------ */

/* The server's block size constraints (0: not advertised), as far as
 * they make sense: the minimum and the preferred size are powers of
 * two (the minimum up to 64 KiB), requests stay within the maximum and
 * 32 MiB, and are whole minimum blocks.
 */
static void
take_block_sizes (struct nbd_ep *n, int64_t min_b, int64_t pref_b,
                  int64_t max_b)
{
  n->min_block = min_b > 0 && min_b <= 65536 && (min_b & (min_b - 1)) == 0
                 ? (uint32_t) min_b : 1;
  n->ep.max_request = max_b > 0 && max_b < NBD_DEFAULT_MAX_REQUEST
                      ? (uint32_t) max_b : NBD_DEFAULT_MAX_REQUEST;
  n->ep.max_request = SC_MAX (SC_ROUND_DOWN (n->ep.max_request,
                                             n->min_block), n->min_block);
  if (pref_b > 0 && pref_b <= (int64_t) n->ep.max_request
      && (pref_b & (pref_b - 1)) == 0)
    n->ep.block_size = (uint32_t) SC_MAX (pref_b, 4096);
}

/* The locks of a new endpoint and the attribute of its commands'
 * conditions, before anything can fail.
 */
static void
init_sync (struct nbd_ep *n)
{
  pthread_mutex_init (&n->lock, NULL);
  pthread_mutex_init (&n->rmw_lock, NULL);
  pthread_condattr_init (&n->condattr);
  pthread_condattr_setclock (&n->condattr, CLOCK_MONOTONIC);
}

struct sc_endpoint *
sc_nbd_played_source_new (const struct sc_nbd_player *player)
{
  struct nbd_ep *n;

  if (player->size < 0) {
    sc_set_error (EINVAL, "NBD: the export's size is unknown");
    return NULL;
  }
  n = sc_ep_new (sizeof *n, &nbd_source_ops, "nbd-played");
  if (n == NULL)
    return NULL;
  init_sync (n);
  n->played = true;
  n->player = *player;
  n->ep.size = (uint64_t) player->size;
  n->base_allocation = player->base_allocation;
  n->allocation_depth = player->allocation_depth;
  take_block_sizes (n, player->min_block, player->pref_block,
                    player->max_block);
  n->ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE | SC_EP_REMOTE;
  return &n->ep;
}

bool
sc_is_nbd_uri (const char *name)
{
  static const char *const schemes[] = {
    "nbd://", "nbds://", "nbd+unix://", "nbds+unix://", "nbd+vsock://",
    "nbds+vsock://",
  };

  for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
    if (strncmp (name, schemes[i], strlen (schemes[i])) == 0)
      return true;
  return false;
}

static struct nbd_handle *
new_handle (bool want_depth)
{
  struct nbd_handle *h = nbd_create ();

  if (h == NULL) {
    nbd_error ("NBD");
    return NULL;
  }
  if (nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1
      || (want_depth && nbd_add_meta_context (h, CONTEXT_DEPTH) == -1)
      || nbd_set_uri_allow_local_file (h, true) == -1) {
    nbd_error ("NBD");
    nbd_close (h);
    return NULL;
  }
  return h;
}

static int
conn_start (struct nbd_conn *c)
{
  int err;

  c->wake_fd = eventfd (0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (c->wake_fd == -1) {
    sc_set_error (errno, "eventfd: %s", strerror (errno));
    return -1;
  }
  err = pthread_create (&c->thread, NULL, dispatch, c);
  if (err) {
    sc_set_error (err, "cannot start a thread: %s", strerror (err));
    return -1;
  }
  c->thread_started = true;
  return 0;
}

/* Wait until the connection h is ready for commands (negotiated),
 * within timeout seconds (0: no limit).  what says what was being done.
 */
static int
wait_ready (struct nbd_handle *h, unsigned timeout, const char *what)
{
  struct timespec start, now;

  clock_gettime (CLOCK_MONOTONIC, &start);
  while (nbd_aio_is_ready (h) != 1) {
    int ms = -1, r;

    if (nbd_aio_is_dead (h) == 1 || nbd_aio_is_closed (h) == 1) {
      nbd_error (what);
      return -1;
    }
    if (timeout) {
      int64_t left;

      clock_gettime (CLOCK_MONOTONIC, &now);
      left = (int64_t) timeout * 1000
        - ((now.tv_sec - start.tv_sec) * 1000
           + (now.tv_nsec - start.tv_nsec) / 1000000);
      if (left <= 0) {
        sc_set_error (ETIMEDOUT, "%s: no answer from the server within "
                      "%u s", what, timeout);
        return -1;
      }
      ms = (int) SC_MIN (left, 1000);
    }
    r = nbd_poll (h, ms);
    if (r == -1) {
      nbd_error (what);
      return -1;
    }
  }
  return 0;
}

/* Connect the first handle: to uri, or to a server started from argv,
 * whose pid is registered as soon as it exists, so that a signal while
 * it starts stops it too.
 */
static int
connect_first (struct nbd_ep *n, struct nbd_handle *h, const char *uri,
               char *const *argv)
{
  pid_t before[64], after[64];
  size_t nb = 0, na;
  int r = 0;

  if (uri) {
    if (strncmp (uri, "nbds", 4) == 0 && !nbd_supports_tls (h)) {
      sc_set_error (ENOTSUP, "this libnbd was built without TLS");
      return -1;
    }
    if (nbd_aio_connect_uri (h, uri) == -1) {
      nbd_error ("cannot connect");
      return -1;
    }
    return wait_ready (h, n->timeout, "cannot connect");
  }
  /* The server runs with standard input from /dev/null and standard
   * output on standard error: ours may carry data (a pipe in, an image
   * or raw stream out), which it must neither read nor write into.
   * The shell execs it, so its pid (LISTEN_PID) stays the server's.
   */
  {
    size_t argc = 0;
    char **wrapped;

    while (argv[argc])
      argc++;
    wrapped = calloc (argc + 5, sizeof *wrapped);
    if (wrapped == NULL) {
      sc_set_error (errno, "out of memory");
      return -1;
    }
    wrapped[0] = (char *) "/bin/sh";
    wrapped[1] = (char *) "-c";
    wrapped[2] = (char *) "exec \"$@\" </dev/null >&2";
    wrapped[3] = (char *) "sh";
    memcpy (&wrapped[4], argv, argc * sizeof *argv);
    nb = thread_children (before, 64);
    r = nbd_aio_connect_systemd_socket_activation (h, wrapped);
    free (wrapped);
    n->started = true;
    /* The child that was not there before is the server (one that has
     * already exited is still listed until it is reaped).
     */
    na = thread_children (after, 64);
    for (size_t i = 0; i < na && n->server_pid == 0; i++) {
      bool old = false;
      for (size_t j = 0; j < nb; j++)
        old |= after[i] == before[j];
      if (!old)
        n->server_pid = after[i];
    }
    if (n->server_pid > 0)
      server_register (n->server_pid);
    if (r == -1)
      nbd_error ("cannot start the NBD server");
  }
  if (r == -1 || wait_ready (h, n->timeout, "the NBD server did not start "
                             "serving (its own messages, if any, are "
                             "above)") == -1) {
    server_exit_error (n->server_pid);
    return -1;
  }
  return 0;
}

/* The name of a server started here, for messages: "[ nbdkit memory ]". */
static char *
command_name (char *const *argv)
{
  size_t len = 3;
  char *s, *p;

  for (size_t i = 0; argv[i]; i++)
    len += strlen (argv[i]) + 1;
  s = p = malloc (len + 2);
  if (s == NULL)
    return NULL;
  p = stpcpy (p, "[ ");
  for (size_t i = 0; argv[i]; i++) {
    p = stpcpy (p, argv[i]);
    *p++ = ' ';
  }
  strcpy (p, "]");
  return s;
}

struct sc_endpoint *
sc_endpoint_open_nbd (const char *uri, char *const *argv, unsigned flags,
                      const struct sc_nbd_opts *opts)
{
  struct sc_nbd_opts defaults = { 0 };
  bool writable = (flags & SC_NBD_WRITE) != 0;
  CLEANUP_FREE char *cmd_name = NULL;
  CLEANUP_FREE char *first_uri = NULL;
  struct nbd_ep *n;
  struct nbd_handle *h;
  unsigned want;
  int64_t size, min_b, pref_b, max_b;

  if (opts == NULL)
    opts = &defaults;
  if ((uri == NULL) == (argv == NULL || argv[0] == NULL)) {
    sc_set_error (EINVAL, "NBD: give either a URI or a server command");
    return NULL;
  }
  if (opts->connections > NBD_MAX_CONNECTIONS) {
    sc_set_error (EINVAL, "NBD: at most %d connections",
                  NBD_MAX_CONNECTIONS);
    return NULL;
  }
  if (argv && (cmd_name = command_name (argv)) == NULL) {
    sc_set_error (errno, "out of memory");
    return NULL;
  }
  n = sc_ep_new (sizeof *n, writable ? &nbd_target_ops : &nbd_source_ops,
                 uri ? uri : cmd_name);
  if (n == NULL)
    return NULL;
  init_sync (n);
  n->timeout = opts->timeout;
  n->conns = calloc (NBD_MAX_CONNECTIONS, sizeof *n->conns);
  if (n->conns == NULL) {
    sc_set_error (errno, "out of memory");
    goto fail;
  }
  for (unsigned i = 0; i < NBD_MAX_CONNECTIONS; i++) {
    n->conns[i].owner = n;
    n->conns[i].wake_fd = -1;
  }

  h = new_handle (!writable);
  if (h == NULL)
    goto fail;
  n->conns[0].h = h;
  n->nconns = 1;
  if (connect_first (n, h, uri, argv) == -1)
    goto fail;
  size = nbd_get_size (h);
  if (size < 0) {
    nbd_error ("NBD");
    goto fail;
  }
  n->ep.size = (uint64_t) size;
  if (writable && nbd_is_read_only (h) == 1) {
    sc_set_error (EROFS, "the export is read-only");
    goto fail;
  }
  n->can_zero = nbd_can_zero (h) == 1;
  n->can_fast_zero = nbd_can_fast_zero (h) == 1;
  n->can_flush = nbd_can_flush (h) == 1;
  n->base_allocation =
    nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  n->allocation_depth = !writable
    && nbd_can_meta_context (h, CONTEXT_DEPTH) == 1;
  min_b = nbd_get_block_size (h, LIBNBD_SIZE_MINIMUM);
  pref_b = nbd_get_block_size (h, LIBNBD_SIZE_PREFERRED);
  max_b = nbd_get_block_size (h, LIBNBD_SIZE_MAXIMUM);
  take_block_sizes (n, min_b, pref_b, max_b);
  n->ep.flags = SC_EP_SEEKABLE | SC_EP_THREAD_SAFE | SC_EP_REMOTE;
  if (writable) {
    n->ep.piece_size = NBD_TARGET_PIECE_SIZE;
    n->ep.flags |= SC_EP_IN_PLACE;
  }
  if (writable && (flags & SC_TARGET_ZEROED))
    n->ep.flags |= SC_EP_FRESH_ZEROS;

  /* More connections only where the server says they see one disk. */
  want = opts->connections;
  if (want == 0)
    want = nbd_can_multi_conn (h) == 1
           ? SC_MAX (SC_MIN (sc_online_cpus (), NBD_MULTI_CONN_CONNECTIONS), 1)
           : 1;
  else if (want > 1 && nbd_can_multi_conn (h) != 1)
    want = 1;
  if (want > 1) {
    first_uri = nbd_get_uri (h);
    if (first_uri == NULL)
      want = 1;
  }
  /* The extra connections are a bonus: a server that advertises
   * multi-conn may still take fewer clients at once (qemu-nbd -e 2
   * leaves the rest waiting unanswered).  All are started together and
   * given EXTRA_CONNECT_SECONDS; those not ready by then are dropped.
   */
  for (unsigned i = 1; i < want; i++) {
    struct nbd_handle *hi = new_handle (!writable);
    if (hi == NULL)
      goto fail;
    if (nbd_aio_connect_uri (hi, first_uri) == -1) {
      nbd_close (hi);
      break;
    }
    n->conns[i].h = hi;
    n->nconns = i + 1;
  }
  {
    unsigned ready = 1;
    unsigned limit = n->timeout && n->timeout < EXTRA_CONNECT_SECONDS
                     ? n->timeout : EXTRA_CONNECT_SECONDS;
    struct timespec start, now;

    clock_gettime (CLOCK_MONOTONIC, &start);
    for (unsigned i = 1; i < n->nconns; i++) {
      unsigned left;

      clock_gettime (CLOCK_MONOTONIC, &now);
      left = now.tv_sec - start.tv_sec >= limit
             ? 0 : limit - (unsigned) (now.tv_sec - start.tv_sec);
      if (left > 0 && wait_ready (n->conns[i].h, left, "") == 0)
        n->conns[ready++].h = n->conns[i].h;
      else
        nbd_close (n->conns[i].h);
      if (ready - 1 < i)
        n->conns[i].h = NULL;
    }
    n->nconns = ready;
  }
  n->ep.queue_depth = n->nconns * (opts->requests ? opts->requests
                                                  : NBD_DEFAULT_REQUESTS);
  for (unsigned i = 0; i < n->nconns; i++)
    if (conn_start (&n->conns[i]) == -1)
      goto fail;
  return &n->ep;

 fail:
  nbd_ep_close (&n->ep);
  return NULL;
}
