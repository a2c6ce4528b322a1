/*
 * Daemon calls: small synchronous helpers over a FrameClient for tests of
 * cwsandboxd: one call at a time, the final frame returned, every error
 * copied into a DcError for diagnostics.
 *
 * Each returns 0 on success, the Error code the daemon sent (a gRPC code),
 * or -EIO when the connection failed (then err->message says how).
 */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "cwsandboxd/v1/cwsandboxd.pb-c.h"
#include "frame-client.h"

#define DC_TIMEOUT_MS 60000
#define DC_LINGER_UNSET INT_MIN

typedef struct DcError {
        int code;
        bool retryable;
        char reason[96];
        char message[512];
} DcError;

typedef struct DcInfo {
        char sandbox_id[96];
        char handle_id[96];
        char session_id[96];
        int state;                      /* Cwsandboxd__V1__SandboxState */
        bool has_exit_code;
        int exit_code;
} DcInfo;

/* Connect to @path and say Hello. Returns 0 or a negative errno / the Error code. */
int dc_connect(const char *path, FrameClient **ret);

/*
 * Say Hello (protocol version 1) on a connected client. *@ret (may be NULL)
 * gets the reply frame with its HelloReply.
 */
int dc_hello(FrameClient *c, Cwsandboxd__V1__DaemonFrame **ret, DcError *err);

/*
 * Send @f (its call id is set here) and wait for its final frame; data frames
 * of the call are dropped. *@ret (may be NULL) gets the final frame (free
 * with frame_client_frame_free()).
 */
int dc_call(FrameClient *c, Cwsandboxd__V1__ClientFrame *f, Cwsandboxd__V1__DaemonFrame **ret, DcError *err);

/* A fresh call id, unique in this process. */
uint64_t dc_next_id(void);

/*
 * Many calls in flight: dc_send() gives @f a fresh call id and sends it
 * without waiting; dc_recv_final() returns the next final frame of any call
 * (or an error frame with call id 0), skipping data frames, and the Error
 * code it carries. *@ret gets the frame whenever one arrived.
 */
int dc_send(FrameClient *c, Cwsandboxd__V1__ClientFrame *f, DcError *err);
int dc_recv_final(FrameClient *c, int timeout_ms, Cwsandboxd__V1__DaemonFrame **ret, DcError *err);

int dc_attach(FrameClient *c, const char *name, Cwsandboxd__V1__SandboxDefaults *defaults, int linger_s,
              char **ret_session_id, bool *ret_created, DcError *err);
int dc_detach(FrameClient *c, const char *session_id, DcError *err);
int dc_close_session(FrameClient *c, const char *session_id, unsigned *ret_stopped, unsigned *ret_failed,
                     DcError *err);
/* Sessions the caller sees whose name is @name: 0 or 1. */
int dc_session_visible(FrameClient *c, const char *name, bool *ret, DcError *err);

/* Every session the caller sees: *@ret gets the frame (its .sessions). */
int dc_list_sessions(FrameClient *c, Cwsandboxd__V1__DaemonFrame **ret, DcError *err);

int dc_create(FrameClient *c, const char *session_id, Cwsandboxd__V1__SandboxArgs *args,
              Cwsandboxd__V1__Scope scope, bool start, DcInfo *ret, DcError *err);
int dc_start(FrameClient *c, const char *id, DcInfo *ret, DcError *err);
int dc_wait(FrameClient *c, const char *id, bool until_complete, uint32_t timeout_ms, DcInfo *ret, DcError *err);
int dc_get(FrameClient *c, const char *id, bool refresh, DcInfo *ret, DcError *err);
int dc_stop(FrameClient *c, const char *id, double grace_s, bool missing_ok, DcInfo *ret, DcError *err);
int dc_delete(FrameClient *c, const char *id, bool missing_ok, DcError *err);
/* How many sandboxes a list of @session_id ("" = backend-wide) with @tag (may be NULL) returns. */
int dc_list_count(FrameClient *c, const char *session_id, const char *tag, bool include_stopped, bool adopt,
                  unsigned *ret, DcError *err);
/* The same listing, whole: *@ret gets the frame (its .sandboxes). */
int dc_list(FrameClient *c, const char *session_id, const char *tag, bool include_stopped, bool adopt,
            Cwsandboxd__V1__DaemonFrame **ret, DcError *err);
/* Whether a listing frame from dc_list() shows the sandbox @id (backend or handle id). */
bool dc_list_has(const Cwsandboxd__V1__DaemonFrame *list, const char *id);
int dc_adopt(FrameClient *c, const char *session_id, const char *id, bool adopt, DcInfo *ret, DcError *err);

/* Buffered exec of @argv (NULL-terminated). Outputs (heap, NUL-terminated) may be NULL. */
int dc_exec(FrameClient *c, const char *id, const char *const *argv, char **ret_stdout, char **ret_stderr,
            int *ret_exit, DcError *err);

/* One value of the metrics map (host-wide when @session_id is NULL). */
int dc_metric(FrameClient *c, const char *session_id, const char *name, double *ret, DcError *err);

/* The daemon's status: *@ret gets the frame (its .status). */
int dc_status(FrameClient *c, Cwsandboxd__V1__DaemonFrame **ret, DcError *err);

/*
 * SandboxArgs for "/bin/sh -c @script" (NULL: the session's command). The
 * strings are borrowed; the struct lives in @storage.
 */
typedef struct DcShellArgs {
        Cwsandboxd__V1__SandboxArgs args;
        char *argv[2];
} DcShellArgs;
Cwsandboxd__V1__SandboxArgs *dc_shell_args(DcShellArgs *storage, const char *script);

const char *dc_state_name(int state);
