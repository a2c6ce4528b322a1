/*
 * BackendProc: cwsandbox-local as a child process of a test, on a private
 * unix socket (or 127.0.0.1:0) in a fresh temporary directory.
 *
 * The binary comes from $CWSANDBOX_LOCAL, the runner (--runner) from
 * $CWSANDBOX_LOCAL_RUN; $CWSANDBOX_LOCAL_LOG_LEVEL, when set, is passed as
 * --log-level. The child dies with its parent (PR_SET_PDEATHSIG), and its
 * stdout goes to stderr so it never mixes into TAP output.
 */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

typedef struct BackendProcOpts {
        const char *token;              /* --token, or NULL */
        const char *image_dir;          /* --image-dir, or NULL */
        const char *const *extra_args;  /* more arguments, NULL-terminated, or NULL */
        bool tcp;                       /* listen on 127.0.0.1:0 (--print-address) */
} BackendProcOpts;

typedef struct BackendProc {
        pid_t pid;                      /* 0 once reaped */
        char *dir;                      /* the private temporary directory */
        char *work_dir;                 /* --work-dir, inside dir */
        char *target;                   /* "unix:/..." or "127.0.0.1:PORT" */
        int wait_status;                /* from waitpid(), once reaped */
        int stdout_fd;                  /* read end of the child's stdout (tcp), else -1 */
} BackendProc;

/**
 * backend_proc_start() - start cwsandbox-local and wait (up to 10 s) until
 * it accepts connections. Returns 0, -ENOENT when $CWSANDBOX_LOCAL is unset,
 * -ECHILD when it exited early, -ETIMEDOUT.
 */
int backend_proc_start(const BackendProcOpts *o, BackendProc **ret);

/**
 * backend_proc_stop() - SIGTERM, then wait up to @timeout_ms for the exit
 * (then SIGKILL). Returns 0 and the waitpid() status in *@ret_status (may be
 * NULL), or -ETIMEDOUT when it had to be killed.
 */
int backend_proc_stop(BackendProc *p, int timeout_ms, int *ret_status);

/**
 * backend_proc_alive() - the child has not exited yet (reaps it if it has).
 */
bool backend_proc_alive(BackendProc *p);

/**
 * backend_proc_free() - stop (if running), remove the directory, free.
 * Accepts NULL; returns NULL.
 */
BackendProc *backend_proc_free(BackendProc *p);
