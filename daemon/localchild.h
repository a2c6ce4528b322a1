/*
 * LocalChild: the embedded backend, cwsandbox-local, run by the daemon as a
 * supervised child when no backend URL is configured.
 *
 * It listens on a private socket in a directory only the daemon's user can
 * enter, with a random token (written to a 0600 file it reads) that the
 * daemon sends as its API key, so the auth path is the same as for a remote
 * backend. If the child dies it is restarted with backoff; when the daemon
 * stops, the child gets SIGTERM (it stops its sandboxes, unless told to keep
 * them: see local_child_stop()), then SIGKILL after a grace period.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct LocalChild LocalChild;

typedef struct LocalChildOptions {
        const char *program;    /* cwsandbox-local */
        const char *dir;        /* private directory for the socket and token (created 0700) */
        const char *log_level;  /* passed on, or NULL */
} LocalChildOptions;

/**
 * local_child_new() - create the token, start the child, and return once
 * (or as soon as) it is listening: @ready runs when it first listens, on the
 * loop thread; later restarts are logged but not reported.
 * Returns 0 or a negative errno (the program cannot be started at all).
 */
int local_child_new(uv_loop_t *loop, const LocalChildOptions *opts,
                    void (*ready)(void *userdata), void *userdata, LocalChild **ret);

/* "unix:/dir/backend.sock": the gRPC target. */
const char *local_child_target(const LocalChild *lc);

/* The token the child expects as "authorization: Bearer". */
const char *local_child_token(const LocalChild *lc);

/* The child's pid, 0 while it is not running. */
int local_child_pid(const LocalChild *lc);

/* Times the child has been restarted. */
unsigned local_child_restarts(const LocalChild *lc);

/**
 * local_child_stop() - stop the child and do not restart it; @done runs on
 * the loop thread once it has exited and every handle is closed.
 */
void local_child_stop(LocalChild *lc, void (*done)(void *userdata), void *userdata);

/* Free after local_child_stop()'s @done; NULL is fine. */
void local_child_free(LocalChild *lc);
