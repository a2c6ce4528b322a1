/*
 * DaemonProc: cwsandboxd as a child process of a test, in a fresh temporary
 * directory: its socket, its state directory, and the embedded backend it
 * starts there.
 *
 * The binaries come from $CWSANDBOXD and $CWSANDBOX_LOCAL (passed as
 * --local-backend-path). $CWSANDBOXD_LOG_LEVEL, when set, is passed as
 * --log-level (default debug); "config" passes none, so the configuration
 * file sets it. The daemon dies with the test
 * (PR_SET_PDEATHSIG) and its output goes to stderr, never into TAP.
 */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

#include "backend-client.h"

typedef struct DaemonProc {
        pid_t pid;                      /* 0 once reaped */
        int wait_status;
        char *dir;                      /* the temporary directory */
        char *socket_path;
        char *state_dir;
        char **extra_args;              /* kept for restarts */
} DaemonProc;

/**
 * daemon_proc_start() - start cwsandboxd with @extra_args (NULL-terminated,
 * may be NULL) and wait up to 30 s until its socket accepts connections.
 * Returns 0, -ENOENT when $CWSANDBOXD is unset, -ECHILD when it exited early,
 * -ETIMEDOUT.
 */
int daemon_proc_start(const char *const *extra_args, DaemonProc **ret);

/**
 * daemon_proc_restart() - start it again in the same directory (after a stop
 * or a kill). Returns as daemon_proc_start().
 */
int daemon_proc_restart(DaemonProc *p);

/**
 * daemon_proc_signal() - send @sig to the daemon.
 */
int daemon_proc_signal(DaemonProc *p, int sig);

/**
 * daemon_proc_stop() - SIGTERM, wait up to @timeout_ms (then SIGKILL).
 * Returns 0 with the waitpid() status in *@ret_status (may be NULL), or
 * -ETIMEDOUT when it had to be killed.
 */
int daemon_proc_stop(DaemonProc *p, int timeout_ms, int *ret_status);

/**
 * daemon_proc_backend() - a client of the embedded backend the daemon runs,
 * with its token: for the Control service's counters and fault injection,
 * and to check what really exists on the backend. Returns 0 or a negative errno.
 */
int daemon_proc_backend(DaemonProc *p, BcClient **ret);

/**
 * daemon_proc_free() - stop (if running), remove the directory, free.
 * Accepts NULL; returns NULL.
 */
DaemonProc *daemon_proc_free(DaemonProc *p);
