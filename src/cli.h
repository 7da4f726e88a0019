/* The program's shared helpers and the command entry points. */
#ifndef SPARSECOW_CLI_H
#define SPARSECOW_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <getopt.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "sparsecow.h"

/* Exit codes. */
#define EXIT_OK 0
#define EXIT_ERROR 1
#define EXIT_USAGE 1
/* check: as qemu-img check. */
#define EXIT_CHECK_CORRUPT 2
#define EXIT_CHECK_LEAKS 3
/* qemu-img check's status for a format without checks. */
#define EXIT_CHECK_UNSUPPORTED 63
/* verify: 1 means "different", so errors and usage errors are 2, and
 * a digest that another program made stale is 3.
 */
#define EXIT_VERIFY_DIFFERENT 1
#define EXIT_VERIFY_ERROR 2
#define EXIT_VERIFY_STALE 3

/* Options every command accepts, filled by cli_common_option(). */
struct cli_common {
  bool quiet;
  bool progress;                /* -p */
  bool progress_json;           /* --progress=json[:fd:N] or fd:N */
  bool progress_nbdcopy;        /* --progress=N: "P/100" lines, as nbdcopy */
  int progress_fd;              /* where JSON progress goes; 0 = stderr */
  const char *progress_arg;     /* the value of --progress= as typed */
  unsigned threads;             /* -j N, 0 = default */
  bool force_share;             /* -U: read an image another process holds */
  struct sc_nbd_opts nbd;       /* -C N, --requests N, --timeout S */
  /* Set by a command that prints text (a verdict) on standard output:
   * the checks of cli_check_progress* then keep it off the files the
   * command reads, as they do standard error and progress.
   */
  bool text_on_stdout;
};

/* Long option ids shared by the commands (above any short option). */
enum {
  OPT_PROGRESS = 0x100,
  OPT_JSON,
  OPT_MAP,
  OPT_COMPAT,
  OPT_CLUSTER_SIZE,
  OPT_REFCOUNT_BITS,
  OPT_LEVEL,
  OPT_SNAPSHOT,
  OPT_COMPRESS,
  OPT_HELP,
  OPT_VERSION,
  OPT_REQUESTS,
  OPT_TIMEOUT,
  OPT_TARGET_IS_ZERO,
  OPT_TARGET_IS_DEVICE,
};

/* The help lines of the NBD options, which every command takes. */
#define CLI_NBD_HELP \
"  -C, --connections N    NBD connections, 1 to 16 (default: one per\n" \
"                         CPU up to 4 if the server allows multi-conn,\n" \
"                         else 1)\n" \
"      --requests N       NBD requests in flight per connection (16)\n" \
"      --timeout S        give up on an NBD server silent for S seconds\n" \
"                         (default 0: wait)\n" \
"Files may be NBD URIs (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?\n" \
"socket=PATH) or, after --, a server to start: [ qemu-nbd -r -f raw d.raw ].\n"

/* The help lines of the options every command takes. */
#define CLI_COMMON_HELP \
"  -p, --progress[=bar|json|fd:N|json:fd:N|N]\n" \
"                         show progress (see sparsecow(1))\n" \
"  -j, -m, --threads N    worker threads (default: online CPUs)\n" \
"  -U, --force-share      read an image another process is writing\n" \
"  -q, --quiet            print nothing but errors\n" \
"  -h, --help             show this help\n" \
"  -V, --version          show the version\n"

/* Common option table entries for getopt_long (see cli.c). */
#define CLI_COMMON_LONG_OPTIONS \
  { "progress", optional_argument, NULL, OPT_PROGRESS }, \
  { "threads", required_argument, NULL, 'j' }, \
  { "force-share", no_argument, NULL, 'U' }, \
  { "quiet", no_argument, NULL, 'q' }, \
  { "help", no_argument, NULL, 'h' }, \
  { "version", no_argument, NULL, 'V' }, \
  { "connections", required_argument, NULL, 'C' }, \
  { "requests", required_argument, NULL, OPT_REQUESTS }, \
  { "timeout", required_argument, NULL, OPT_TIMEOUT }
#define CLI_COMMON_SHORT_OPTIONS "pj:m:qhVUC:"

extern const char *cli_program;         /* "sparsecow" */
/* The exit status of a usage error (EXIT_USAGE unless a command whose
 * status 1 means something else sets another).
 */
extern int cli_usage_status;
/* The command being run ("pack"), set by main: usage errors of the
 * common options name it.
 */
extern const char *cli_command;
/* Which of the standard descriptors 0, 1, 2 were closed when the
 * program started (main opened /dev/null on them).
 */
extern bool cli_std_closed[3];
/* The option cli_getopt returned last, as typed ("--thr", "-j"), for
 * messages about its value.
 */
extern char cli_option_typed[64];

/* Handle a common option c (with optarg).  Returns 1 if handled, 0 if
 * not a common option; exits for -h (calling usage) and -V, and on a
 * bad value.
 */
extern int cli_common_option (int c, const char *optarg,
                              struct cli_common *common,
                              void (*usage) (FILE *));

/* getopt_long over the command's own options (shortopts, longopts)
 * and the common ones, which are handled here.  Returns the next option
 * of the command's own, or -1 at the end of the options.  A missing
 * argument or an unknown option is a usage error naming the command:
 * getopt's own messages are turned off.
 */
extern int cli_getopt (int argc, char **argv, const char *shortopts,
                       const struct option *longopts,
                       struct cli_common *common, void (*usage) (FILE *));

/* getopt has read "-X=VALUE" as -X, then an unknown option '=': say
 * that -X takes no value (a usage error).
 */
extern void cli_refuse_short_value (int argc, char **argv);

/* An operand: a path, "-", an NBD URI, or the command line of an NBD
 * server to start, written "[ CMD ARGS ]" (after "--", so that the
 * command's options are not taken for ours).
 */
struct cli_operand {
  const char *name;             /* for messages: the word, or "[ CMD ]" */
  char **argv;                  /* the server command, or NULL */
  bool nbd;                     /* a URI or a server command */
  char label[256];
};

/* Exit with a usage error if a "[" comes before "--": getopt would take
 * the server command's options for ours.  Called before getopt.
 */
/* Whether an opened source (an export, a file read as an endpoint)
 * starts with the qcow2 magic: 1 yes, 0 no, -1 read error (the
 * library's error is set).
 */
extern int cli_endpoint_is_qcow2 (struct sc_endpoint *ep);

/* qemu-img's -f FMT for commands that read one image: "qcow2" (or
 * "raw" where raw_ok), anything else is a usage error.
 */
enum { CLI_FORMAT_AUTO, CLI_FORMAT_QCOW2, CLI_FORMAT_RAW };
extern int cli_parse_image_format (const char *command, const char *arg,
                                   bool raw_ok);
extern void cli_check_brackets (const char *command, int argc, char **argv);
/* Called when getopt has just returned -f of a command where it means
 * --force: "-f raw", "-f qcow2" (qemu-img convert's -f FMT, the source
 * format) followed by a format name that is no file here is a usage
 * error saying what -f is, and what to do instead (instead).
 */
extern void cli_refuse_format_as_force (const char *command, int argc,
                                        char **argv, const char *instead);

/* Split argv[first..argc-1] into operands, each "[ ... ]" group being
 * one (the "]" is replaced by NULL to end its argv).  Exits with a
 * usage error ("expected EXPECTED") unless there are exactly want.
 */
extern void cli_operands (const char *command, int argc, char **argv,
                          int first, struct cli_operand *ops, int want,
                          const char *expected);

/* How many operands argv[first..argc-1] holds, each "[ ... ]" group
 * being one (as cli_operands splits them), for commands that take a
 * variable number.
 */
extern int cli_count_operands (int argc, char **argv, int first);

/* Open an operand as a data source, or as a target (sized later by the
 * library; flags as sc_endpoint_open_target).  Print the error and
 * return NULL on failure.
 */
extern struct sc_endpoint *cli_open_source (const struct cli_operand *op,
                                            const struct cli_common *common,
                                            enum sc_map_method map);
extern struct sc_endpoint *cli_open_target (const struct cli_operand *op,
                                            const struct cli_common *common,
                                            unsigned flags);

/* The IMAGE "-" of a command that reads it at random offsets (info,
 * map, check): standard input, when it is redirected from a file or a
 * block device, as a source endpoint named "stdin".  A pipe or a
 * terminal there is a usage error naming command.  Prints the error
 * and returns NULL when it cannot be opened.
 */
extern struct sc_endpoint *cli_open_stdin_image (const char *command,
                                                 const struct cli_common *common);

/* "sparsecow: OBJECT: message" from the library's last error. */
extern void cli_lib_error (const char *object);
/* The name of an IMAGE operand in messages: "stdin" for "-" (standard
 * input redirected from the image), as unpack and pack name it;
 * otherwise the operand itself.
 */
extern const char *cli_image_name (const char *operand);
/* The name of an IMAGE operand in output that holds a file name for
 * programs to use (check's JSON filename, map's File column): for "-",
 * "/dev/stdin", the name qemu-img prints there when given that file,
 * and one that opens the same file again; otherwise the operand.
 */
extern const char *cli_image_path (const char *operand);
/* "sparsecow: printf-message". */
extern void cli_error (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));
/* Print "sparsecow: message", a hint to --help, exit cli_usage_status. */
extern void cli_usage_error (const char *command, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3), noreturn));

/* --output=json|human: true for json; exits with a usage error on
 * anything else.
 */
extern bool cli_parse_output (const char *command, const char *arg);

/* Parse a size with optional suffix (k, K, M, G, T; powers of 1024). */
extern int cli_parse_size (const char *s, uint64_t *out);
/* -S SIZE, as qemu-img convert takes it: a multiple of 512 up to
 * 16 MiB, with a suffix.  0 means allocate everything.  Exits with a
 * usage error naming command otherwise.
 */
extern uint64_t cli_parse_min_sparse (const char *command, const char *arg);
/* Parse an unsigned integer in [min, max]. */
extern int cli_parse_uint (const char *s, unsigned min, unsigned max,
                           unsigned *out);

/* Write a JSON string literal (with quotes) to fp. */
extern void cli_json_string (FILE *fp, const char *s);

/* Refuse, as a usage error, text that would go where it cannot: JSON
 * progress, the messages on standard error, and text on standard output
 * (common->text_on_stdout).  Any of them on standard output's file when
 * that carries data (data_on_stdout: "2>&1", fd:1), on the file on
 * standard input when that is the data read (data_on_stdin); progress
 * also to a descriptor that is not open for writing.  Called before
 * anything is opened.
 */
extern void cli_check_progress (const char *command,
                                const struct cli_common *common,
                                bool data_on_stdout, bool data_on_stdin);
/* The same for a file the command reads or writes (a source, an image,
 * a target, a bmap read or written): any of those text streams open on
 * what NAME is, by identity (a file, a block device, or a pipe or a
 * socket by its inode, as /dev/stdout and /dev/stderr name them),
 * would change it or mix into it.  A usage error then.
 */
extern void cli_check_progress_not (const char *command,
                                    const struct cli_common *common,
                                    const char *name);
/* The same for an image or another file the command reads (a bmap),
 * and for every other file it reads through an image: its backing chain
 * and external data files.  When standard error is that file, the
 * refusal says nothing (a message would change the file as much): the
 * exit status alone tells it.
 */
extern void cli_check_progress_image (const char *command,
                                      const struct cli_common *common,
                                      const char *name);

/* For a command that prints a report about IMAGE (info, map, check):
 * the report goes to standard output and errors to standard error,
 * neither into the image or a file of its chain ("1<>IMAGE"); no
 * progress is shown, whatever --progress says.  A usage error if one
 * would.  nbd: IMAGE is an export.
 */
extern void cli_check_report_streams (const char *command,
                                      const struct cli_common *common,
                                      const char *image, bool nbd);

/* A progress callback for the library, set up from common options:
 * a bar on stderr when it is a terminal (-p), or JSON lines on stderr
 * or on the descriptor of --progress=fd:N.  Returns NULL when no
 * progress is wanted.
 */
extern sc_progress_fn cli_progress_fn (const struct cli_common *common,
                                       void **opaque);
/* Finish the progress display (newline after a bar). */
extern void cli_progress_done (const struct cli_common *common);

/* Is the block device dev a partition?  Then set *disk to the device
 * of the whole disk it is part of (from /sys/dev/block/MAJ:MIN) and
 * return true.
 */
extern bool cli_partition_of (dev_t dev, dev_t *disk);
/* Do the files or block devices a and b end on the same storage: the
 * same regular file, or the same device where one is the whole of it
 * or both the same part?  A loop device is what backs it (the file by
 * the device and inode the loop driver gives, or the device, followed
 * through stacked loop devices), and a partition of a loop device a
 * part of that; one that cannot be asked is taken as itself.  Then set
 * *file to whether that storage is a file.
 */
extern bool cli_same_storage (const struct stat *a, const struct stat *b,
                              bool *file);
/* Is the block device st (named name) a loop device, or a partition of
 * one, over the regular file file_st, or over the block device file_st
 * (or a partition of it)?
 */
extern bool cli_loop_over (const char *name, const struct stat *st,
                           const struct stat *file_st);

/* Is target the very file the source operand is (after symbolic
 * links, and for "-" the file behind the standard stream), the same
 * block device, or a loop device over the source file?  For an NBD
 * server started here, a file that one of its arguments names?  Or,
 * whatever the source (an NBD export too), the file or device that an
 * attached loop device reads?  Then print why and return true: writing
 * it, even with -f, would lose the source, or change what the loop
 * device's user (a mounted file system) holds.
 */
extern bool cli_target_is_source (const struct cli_operand *source,
                                  const char *target);

/* Does name (after symbolic links) lead to a pipe, a socket or a
 * character device: something read once, in order, that opening only
 * to look would disturb?  false where it cannot be told (no such name).
 */
extern bool cli_is_stream_name (const char *name);

/* Are the file input and the target one regular file, or one pipe or
 * socket, by device and inode (after symbolic links and hard links, so
 * /dev/stdout is the pipe on standard output; a target "-" is the file
 * or pipe behind standard output), or, when one of them does not exist
 * yet, the same name in the same directory?  For inputs besides the
 * source, such as a bmap, that a target written with -f would destroy,
 * and for two outputs of one command (pass an output "-" as target).
 */
extern bool cli_same_file (const char *input, const char *target);

/* Is the existing target (a file or a block device; no stream, no URI)
 * open in a process on this host that serves the NBD source src (named
 * source in messages): the file it serves, a backing file of the image
 * it serves, a loop device over one of them or the file behind one?
 * Then print which server and which file, and return true.  A server
 * that cannot be seen from here (another host, another user) is taken
 * to have nothing open.
 */
extern bool cli_target_is_served (struct sc_endpoint *src,
                                  const char *source, const char *target);

/* Install SIGINT/SIGTERM/SIGHUP handlers that remove temporary targets. */
extern void cli_install_signal_handlers (void);
/* From now on (a target is written in place), the first such signal
 * stops the run (the library fails with EINTR) instead of the program:
 * the command then says what it leaves, and cli_exit_if_interrupted
 * ends the program by the signal.
 */
extern void cli_defer_signals (void);
/* The targets are complete (named name, or NULL for several): an
 * image with its magic written and flushed, a file under its name.
 * From now on no signal stops the run.  Call cli_defer_signals first,
 * before the last step that completes them (the commit), so that a
 * signal during that step does not stop the program halfway either.
 */
extern void cli_targets_complete (const char *name);
/* Did a deferred signal arrive? */
extern bool cli_interrupted (void);
/* A bmap output (OPTION NAME) must be a regular file (or a new name), a
 * FIFO or standard output: exits with a usage error on a block device
 * or other special file, whose content it would overwrite.
 */
extern void cli_check_bmap_output (const char *command, const char *option,
                                   const char *name);
/* The deferred signal's name ("SIGINT"), for messages. */
extern const char *cli_signal_name (void);
/* If one did: remove temporaries and end the program by that signal
 * (its usual exit status, 130 for SIGINT).  Else return.  Once the
 * targets are complete, say that the signal came after them, once, and
 * return: the run ends as it would have without it.
 */
extern void cli_exit_if_interrupted (void);

/* The commands: argv[0] is the command name. */
extern int cmd_pack (int argc, char **argv);
extern int cmd_unpack (int argc, char **argv);
extern int cmd_info (int argc, char **argv);
extern int cmd_map (int argc, char **argv);
extern int cmd_check (int argc, char **argv);
extern int cmd_bmap (int argc, char **argv);
extern int cmd_verify (int argc, char **argv);

#endif /* SPARSECOW_CLI_H */
