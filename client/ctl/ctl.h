/*
 * cwsandboxctl: what every command shares. A command is a function that gets
 * the global state (socket, output format, the connection once made) and its
 * own arguments, and returns the process exit code.
 *
 * Exit codes are part of the interface, so scripts can tell the classes of
 * failure apart; exec alone returns the remote command's code instead of 0.
 */
#pragma once

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>

#include "cwsandbox.h"
#include "macro.h"

enum {
        CTL_EXIT_OK = 0,
        CTL_EXIT_FAILURE = 1,           /* any error not listed below */
        CTL_EXIT_USAGE = 2,             /* bad command line */
        CTL_EXIT_NOT_FOUND = 3,         /* no such sandbox, session or file */
        CTL_EXIT_PERMISSION = 4,        /* it belongs to another user */
        CTL_EXIT_UNREACHABLE = 5,       /* the daemon cannot be reached, or hung up */
};

typedef enum CtlOutput {
        CTL_OUTPUT_TABLE,
        CTL_OUTPUT_JSON,
} CtlOutput;

typedef struct Ctl {
        const char *socket_path;        /* NULL = the library's default */
        CtlOutput output;
        const char *command;            /* for messages: "session close", "exec", ... */
        cws_conn *conn;                 /* made by ctl_connect() */
} Ctl;

typedef int (*CtlCommandFn)(Ctl *ctl, int argc, char **argv);

/* A growing array of strings that point into argv (not owned). */
typedef struct StrList {
        const char **items;
        size_t n;
} StrList;

/* --env K=V pairs; the keys and values are owned. */
typedef struct KvList {
        cws_kv *items;
        size_t n;
} KvList;

/*
 * Options every command takes besides its own: -o/--output, --socket and
 * --help. Put CTL_COMMON_LONG_OPTIONS in a command's long options and
 * CTL_COMMON_SHORT_OPTIONS in its short ones; hand what getopt returns to
 * ctl_common_option().
 */
#define CTL_OPT_SOCKET 0x1000
#define CTL_COMMON_SHORT_OPTIONS "ho:"
#define CTL_COMMON_LONG_OPTIONS                                         \
        { "help", no_argument, NULL, 'h' },                             \
        { "output", required_argument, NULL, 'o' },                     \
        { "socket", required_argument, NULL, CTL_OPT_SOCKET }

/**
 * ctl_common_option() - handle option @c of getopt if it is a common one.
 * @help: the command's --help text.
 *
 * Returns -1 when @c is not a common option (the command handles it), else
 * an exit code to return at once, or 0x100 ("handled, go on").
 */
int ctl_common_option(Ctl *ctl, int c, const char *help);
#define CTL_GO_ON 0x100

/**
 * ctl_set_output() - parse "table" or "json" for -o. Returns 0 or CTL_EXIT_USAGE.
 */
int ctl_set_output(Ctl *ctl, const char *value);

/**
 * ctl_connect() - connect to the daemon (once). Returns 0 or an exit code,
 * the error printed.
 */
int ctl_connect(Ctl *ctl);

/**
 * ctl_exit_code() - the exit code for a cws_code.
 */
int ctl_exit_code(int code);

/**
 * ctl_fail() - print "cwsandboxctl: COMMAND: WHAT: MESSAGE" for a failed call
 * and return its exit code. @what may be NULL.
 */
int ctl_fail(const Ctl *ctl, const char *what, int code, const cws_error *err);

/**
 * ctl_error() - print one error line and return @exit_code.
 */
int ctl_error(const Ctl *ctl, int exit_code, const char *fmt, ...) _printf_(3, 4);

/**
 * ctl_usage() - print a usage error (with a pointer to --help) and return
 * CTL_EXIT_USAGE.
 */
int ctl_usage(const Ctl *ctl, const char *fmt, ...) _printf_(2, 3);

/**
 * ctl_unknown_option() - the usage error for what getopt refused.
 */
int ctl_unknown_option(const Ctl *ctl, char **argv);

/**
 * ctl_parse_int() - a decimal integer in [@min, @max]. Returns 0 or -EINVAL.
 */
int ctl_parse_int(const char *s, long long min, long long max, long long *ret);

/**
 * ctl_parse_seconds() - a number of seconds >= 0 (fractions allowed).
 */
int ctl_parse_seconds(const char *s, double *ret);

/**
 * ctl_parse_state() - "running", "TERMINATED", ... Returns 0 or -EINVAL.
 */
int ctl_parse_state(const char *s, cws_sandbox_state *ret);

void strlist_add(StrList *l, const char *s);
void strlist_done(StrList *l);

/**
 * kvlist_add() - add "K=V". Returns 0 or -EINVAL when there is no '=' or no key.
 */
int kvlist_add(KvList *l, const char *kv);
void kvlist_done(KvList *l);

/**
 * ctl_session_find() - the session called @name among those the caller may
 * see, without joining or creating it. Returns 0 or an exit code (printed),
 * CTL_EXIT_NOT_FOUND when there is none.
 */
int ctl_session_find(Ctl *ctl, const char *name, cws_session **ret);

/**
 * ctl_default_session_name() - the session run uses without --session:
 * "cwsandboxctl-<uid>", created with linger -1. Free the result.
 */
char *ctl_default_session_name(void);

/* Commands, one function each; session.c, sandbox.c, exec.c, files.c, logs.c, daemon.c. */
int cmd_status(Ctl *ctl, int argc, char **argv);
int cmd_metrics(Ctl *ctl, int argc, char **argv);
int cmd_session(Ctl *ctl, int argc, char **argv);
int cmd_run(Ctl *ctl, int argc, char **argv);
int cmd_ls(Ctl *ctl, int argc, char **argv);
int cmd_get(Ctl *ctl, int argc, char **argv);
int cmd_stop(Ctl *ctl, int argc, char **argv);
int cmd_delete(Ctl *ctl, int argc, char **argv);
int cmd_exec(Ctl *ctl, int argc, char **argv);
int cmd_cp(Ctl *ctl, int argc, char **argv);
int cmd_logs(Ctl *ctl, int argc, char **argv);
