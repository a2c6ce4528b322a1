/*
 * libcwsandbox: the C client of cwsandboxd, the per-host sandbox daemon.
 *
 * A cws_conn is one connection to the daemon's Unix socket. It may be shared
 * by any number of threads: each call gets its own call id, replies are
 * routed to it by a reader thread the connection owns, and writes are
 * serialized. Streaming calls (cws_exec, cws_logs) are objects of their own;
 * one such object is read by one thread at a time, and for a cws_exec one
 * other thread may write stdin, resize, close stdin or cancel meanwhile.
 *
 * Errors. Every function that can fail returns 0 on success or a positive
 * cws_code: the daemon's gRPC status code (1..16) for a failure it reports;
 * CWS_UNAVAILABLE when the daemon cannot be reached or the connection was
 * lost (every call waiting on the connection then returns it); and
 * CWS_INVALID_ARGUMENT for arguments refused before anything is sent. When
 * @err is not NULL it is filled on failure (and cleared on success) with the
 * code, a message, the backend's reason and retry hints.
 *
 * Reconnecting. When the daemon goes away under a connection (restarted,
 * killed) without cws_conn_close(), every call waiting on it returns
 * CWS_UNAVAILABLE (none is sent again: creates and execs are not
 * idempotent), and the connection then comes back by itself: a thread of the
 * library reconnects in the background, with backoff (50 ms doubling to 1 s),
 * until it succeeds or the connection is closed, says Hello, and attaches
 * again, by name and with the same options, every session attached on this
 * connection and not detached or closed. A call started meanwhile waits for
 * that (10 s by default, see cws_conn_set_reconnect()). If the daemon hands
 * a session a new id (it lost its state), the library sends the new id
 * wherever the application passes the old one; replies carry the new one.
 * Streams (cws_exec, cws_logs) open at the loss end with CWS_UNAVAILABLE;
 * cws_conn_reconnects() tells when work like that should be started again.
 * A daemon that refuses the Hello of a reconnect (a protocol version it
 * does not speak) ends the connection for good.
 *
 * Options structs: NULL means "all defaults"; a zero or NULL member means
 * "unset", except where a has_* flag says whether a member was given.
 * Result structs are allocated by the library and freed with the matching
 * cws_*_free(), which accept NULL. Byte buffers the library returns are
 * followed by a NUL byte (not counted in their length) so text output can be
 * used as a C string.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(CWS_BUILDING_LIBRARY)
#define CWS_EXPORT __attribute__((visibility("default")))
#else
#define CWS_EXPORT
#endif

/* ---- errors ---------------------------------------------------------------------------- */

/* gRPC status codes, as the daemon reports them. */
typedef enum cws_code {
        CWS_OK = 0,
        CWS_CANCELLED = 1,
        CWS_UNKNOWN = 2,
        CWS_INVALID_ARGUMENT = 3,
        CWS_DEADLINE_EXCEEDED = 4,
        CWS_NOT_FOUND = 5,
        CWS_ALREADY_EXISTS = 6,
        CWS_PERMISSION_DENIED = 7,
        CWS_RESOURCE_EXHAUSTED = 8,
        CWS_FAILED_PRECONDITION = 9,
        CWS_ABORTED = 10,
        CWS_OUT_OF_RANGE = 11,
        CWS_UNIMPLEMENTED = 12,
        CWS_INTERNAL = 13,
        CWS_UNAVAILABLE = 14,
        CWS_DATA_LOSS = 15,
        CWS_UNAUTHENTICATED = 16,
} cws_code;

typedef struct cws_error {
        int code;                       /* a cws_code; 0 after success */
        char message[1024];
        char reason[128];               /* backend reason (e.g. CWSANDBOX_SANDBOX_NOT_FOUND), "" = none */
        bool retryable;
        uint32_t retry_delay_ms;        /* backend hint, 0 = none */
        char sandbox_id[128];           /* the sandbox the error is about, "" = none */
} cws_error;

/**
 * cws_strerror() - the name of a cws_code ("NOT_FOUND"), or "UNKNOWN_CODE".
 */
CWS_EXPORT const char *cws_strerror(int code);

/* ---- connection ------------------------------------------------------------------------ */

typedef struct cws_conn cws_conn;

/* What the daemon said in its HelloReply; owned by the connection. */
typedef struct cws_hello {
        uint32_t protocol_version;
        const char *daemon_version;
        const char *backend_kind;       /* "local" or "remote" */
        const char *backend_url;
        const char *const *features;
        size_t n_features;
        uint32_t max_frame_bytes;
} cws_hello;

/**
 * cws_default_socket_path() - where the daemon listens when no path is given:
 * $CWSANDBOXD_SOCKET, else /run/cwsandboxd/cwsandboxd.sock if it exists,
 * else $XDG_RUNTIME_DIR/cwsandboxd/cwsandboxd.sock (the /run path when
 * XDG_RUNTIME_DIR is unset). Returns a string to free(), or NULL without
 * memory.
 */
CWS_EXPORT char *cws_default_socket_path(void);

/**
 * cws_connect() - connect to the daemon and say Hello.
 * @socket_path: the socket; NULL = cws_default_socket_path().
 * @client_name: shown in the daemon's logs; NULL = "libcwsandbox".
 * @ret_conn: the connection, for cws_conn_close().
 * @err: filled on failure; may be NULL.
 *
 * Returns 0; CWS_UNAVAILABLE when nothing listens or the daemon hung up;
 * the daemon's code when it refused the Hello (e.g. FAILED_PRECONDITION for
 * a protocol version it does not speak).
 */
CWS_EXPORT int cws_connect(const char *socket_path, const char *client_name, cws_conn **ret_conn, cws_error *err);

/**
 * cws_conn_close() - close the connection and free it. Calls already
 * running on it in other threads (also those waiting for a reconnect)
 * return CWS_UNAVAILABLE, a reconnect under way ends, and streaming
 * objects stay valid until freed (their calls then fail the same way); no
 * new call may start on @c once the close has begun. Accepts NULL.
 */
CWS_EXPORT void cws_conn_close(cws_conn *c);

/**
 * cws_conn_hello() - the HelloReply of the daemon the connection speaks to
 * now (after a reconnect, the new one's). Every one returned stays valid
 * until cws_conn_close().
 */
CWS_EXPORT const cws_hello *cws_conn_hello(const cws_conn *c);

/**
 * cws_conn_set_reconnect() - whether @c reconnects by itself after losing
 * the daemon (on from cws_connect()), and how long calls wait for it.
 * @on: false: a lost connection stays lost, every later call fails
 *      CWS_UNAVAILABLE at once (a reconnect under way stops).
 * @wait_ms: how long a call started while the connection is down waits for
 *           the reconnect before it fails CWS_UNAVAILABLE; 0 = not at all;
 *           < 0 = the default, 10000.
 *
 * A connection that has ended for good (closed, refused, lost while this
 * was off) does not come back when it is turned on again.
 */
CWS_EXPORT void cws_conn_set_reconnect(cws_conn *c, bool on, int wait_ms);

/**
 * cws_conn_reconnects() - how many times @c has come back after a loss,
 * each counted once its Hello and the re-attaches of its sessions are done.
 * A caller that sees it change knows its streams were cut and may start
 * them again.
 */
CWS_EXPORT uint64_t cws_conn_reconnects(const cws_conn *c);

/**
 * cws_conn_has_feature() - whether the daemon announced feature @name.
 */
CWS_EXPORT bool cws_conn_has_feature(const cws_conn *c, const char *name);

/* ---- shared option types ----------------------------------------------------------------- */

typedef struct cws_kv {
        const char *key;
        const char *value;
} cws_kv;

typedef struct cws_resources {
        const char *cpu;                /* e.g. "500m" */
        const char *memory;             /* e.g. "1Gi" */
        int64_t gpu_count;
        const char *gpu_type;
} cws_resources;

typedef struct cws_secret {
        const char *store;
        const char *name;
        const char *field;
        const char *env_var;
} cws_secret;

/* ---- sessions ---------------------------------------------------------------------------- */

/* The SDK's SandboxDefaults, used when an attach creates the session. */
typedef struct cws_sandbox_defaults {
        const char *container_image;
        const char *command;
        const char *const *args;
        size_t n_args;
        bool has_args;                  /* args given (possibly none) */
        const char *const *tags;
        size_t n_tags;
        const cws_kv *env;
        size_t n_env;
        const cws_kv *annotations;
        size_t n_annotations;
        int32_t max_lifetime_seconds;   /* 0 = backend default */
        double request_timeout_seconds;
        double poll_retry_budget_seconds;
        double poll_rpc_timeout_seconds;
        const char *const *runner_ids;
        size_t n_runner_ids;
        bool has_runner_ids;
        const cws_resources *resources; /* NULL = none */
        bool deny_egress;
        const cws_secret *secrets;
        size_t n_secrets;
} cws_sandbox_defaults;

typedef struct cws_attach_options {
        const cws_sandbox_defaults *defaults;   /* NULL = the SDK's defaults */
        bool has_linger;                        /* unset = 30 s */
        int32_t linger_seconds;                 /* 0 = close at once, -1 = never */
        int32_t max_lifetime_seconds;           /* per-session cap on sandbox age, 0 = none */
        /* Admission limits of this session on top of the host's; 0 = the daemon's session_max_*. */
        uint32_t max_sandboxes;                 /* alive at once */
        double max_creates_per_second;
} cws_attach_options;

typedef struct cws_session {
        char *session_id;
        char *name;
        uint32_t owner_uid;
        int32_t linger_seconds;
        uint32_t sandbox_count;
        uint32_t connections;
        bool created;                   /* this attach created the session */
        uint32_t max_sandboxes;         /* its admission limits; 0 = none */
        double max_creates_per_second;
} cws_session;

typedef struct cws_session_list {
        size_t n_sessions;
        cws_session *sessions;
} cws_session_list;

typedef struct cws_metrics cws_metrics;

typedef struct cws_close_result {
        uint32_t stopped;
        size_t n_failures;
        cws_error *failures;            /* one per sandbox that did not stop */
        cws_metrics *metrics;           /* its session metrics (cwsandbox/...) not read before: the final flush */
} cws_close_result;

/**
 * cws_attach() - join the session called @name, or create it with
 * @opts->defaults. @opts may be NULL. *@ret_session says whether this call
 * created it.
 */
CWS_EXPORT int cws_attach(cws_conn *c, const char *name, const cws_attach_options *opts,
                          cws_session **ret_session, cws_error *err);

/**
 * cws_detach() - leave a session; it lingers if no connection is left.
 */
CWS_EXPORT int cws_detach(cws_conn *c, const char *session_id, cws_error *err);

/**
 * cws_close_session() - close a session now: every sandbox in it is stopped.
 * @ret_result: how many stopped and each failure; may be NULL.
 */
CWS_EXPORT int cws_close_session(cws_conn *c, const char *session_id, cws_close_result **ret_result,
                                 cws_error *err);

/**
 * cws_list_sessions() - the sessions the caller may see.
 */
CWS_EXPORT int cws_list_sessions(cws_conn *c, cws_session_list **ret_list, cws_error *err);

CWS_EXPORT void cws_session_free(cws_session *s);
CWS_EXPORT void cws_session_list_free(cws_session_list *l);
CWS_EXPORT void cws_close_result_free(cws_close_result *r);

/* ---- sandboxes --------------------------------------------------------------------------- */

typedef enum cws_sandbox_state {
        CWS_STATE_UNSPECIFIED = 0,
        CWS_STATE_CREATING = 1,
        CWS_STATE_RUNNING = 2,
        CWS_STATE_COMPLETED = 3,
        CWS_STATE_FAILED = 4,
        CWS_STATE_TERMINATING = 5,
        CWS_STATE_TERMINATED = 6,
        CWS_STATE_PENDING = 7,
        CWS_STATE_PAUSED = 8,
        CWS_STATE_UNSTARTED = 100,      /* created as a handle, not yet sent to the backend */
} cws_sandbox_state;

typedef enum cws_scope {
        CWS_SCOPE_SESSION = 0,          /* stopped with the session */
        CWS_SCOPE_CONNECTION = 1,       /* stopped when the creating connection closes */
} cws_scope;

typedef struct cws_mounted_file {
        const char *path;
        const void *content;
        size_t size;
} cws_mounted_file;

/* Per-sandbox arguments, merged over the session's defaults by the SDK's rules. */
typedef struct cws_sandbox_args {
        const char *container_image;
        const char *command;
        const char *const *args;
        size_t n_args;
        bool has_args;
        const char *const *tags;
        size_t n_tags;
        const cws_kv *env;
        size_t n_env;
        const cws_kv *annotations;
        size_t n_annotations;
        const char *const *runner_ids;
        size_t n_runner_ids;
        bool has_runner_ids;
        const cws_resources *resources; /* NULL = the session's */
        const cws_secret *secrets;
        size_t n_secrets;
        const cws_mounted_file *mounted_files;
        size_t n_mounted_files;
        const char *working_dir;
} cws_sandbox_args;

typedef struct cws_create_options {
        const cws_sandbox_args *args;   /* NULL = the session's defaults only */
        cws_scope scope;
        bool start;                     /* start now instead of on first use */
} cws_create_options;

typedef struct cws_sandbox {
        char *sandbox_id;               /* backend id; "" while UNSTARTED */
        char *handle_id;                /* daemon handle id, stable from creation */
        char *session_id;
        cws_sandbox_state state;
        char *state_reason;
        bool has_exit_code;
        int32_t exit_code;
        char **tags;
        size_t n_tags;
        int64_t create_time_ms;
        int64_t start_time_ms;
        int64_t end_time_ms;
        cws_scope scope;
        char *container_image;
} cws_sandbox;

typedef struct cws_sandbox_list {
        size_t n_sandboxes;
        cws_sandbox *sandboxes;
} cws_sandbox_list;

typedef struct cws_list_options {
        const char *session_id;         /* NULL = backend-wide (the caller's own unless root) */
        const char *const *tags;        /* every one must match */
        size_t n_tags;
        cws_sandbox_state status;       /* 0 = any */
        bool include_stopped;
        bool adopt;                     /* adopt what is found into session_id */
} cws_list_options;

typedef struct cws_stop_options {
        bool has_grace;                 /* unset = 10 s */
        double grace_seconds;
        bool missing_ok;                /* a sandbox that is gone is not an error */
} cws_stop_options;

/**
 * cws_sandbox_create() - a sandbox in session @session_id. Unless
 * @opts->start, it is only a handle until its first use. @opts may be NULL.
 */
CWS_EXPORT int cws_sandbox_create(cws_conn *c, const char *session_id, const cws_create_options *opts,
                                  cws_sandbox **ret_sandbox, cws_error *err);

/**
 * cws_sandbox_start() - start it (returns once the backend has accepted it).
 * @id: handle id or backend id. @ret_sandbox may be NULL.
 */
CWS_EXPORT int cws_sandbox_start(cws_conn *c, const char *id, cws_sandbox **ret_sandbox, cws_error *err);

/**
 * cws_sandbox_wait() - wait until it runs, or with @until_complete until it
 * has ended. @timeout_ms: 0 = the session's request timeout. A timeout is
 * CWS_DEADLINE_EXCEEDED. @ret_sandbox may be NULL.
 */
CWS_EXPORT int cws_sandbox_wait(cws_conn *c, const char *id, bool until_complete, uint32_t timeout_ms,
                                cws_sandbox **ret_sandbox, cws_error *err);

/**
 * cws_sandbox_get() - its state: cached, or with @refresh asked of the backend.
 */
CWS_EXPORT int cws_sandbox_get(cws_conn *c, const char *id, bool refresh, cws_sandbox **ret_sandbox,
                               cws_error *err);

/**
 * cws_list_sandboxes() - sandboxes matching @opts (may be NULL: every running
 * sandbox the caller may see).
 */
CWS_EXPORT int cws_list_sandboxes(cws_conn *c, const cws_list_options *opts, cws_sandbox_list **ret_list,
                                cws_error *err);

/**
 * cws_sandbox_from_id() - look up a sandbox by id; with @adopt, make it part
 * of session @session_id (stopped when the session closes).
 */
CWS_EXPORT int cws_sandbox_from_id(cws_conn *c, const char *session_id, const char *id, bool adopt,
                                   cws_sandbox **ret_sandbox, cws_error *err);

/**
 * cws_sandbox_stop() - stop it and wait until it has stopped. @opts may be
 * NULL. *@ret_sandbox (may be NULL) is the final state, or NULL when
 * @opts->missing_ok and the sandbox did not exist.
 */
CWS_EXPORT int cws_sandbox_stop(cws_conn *c, const char *id, const cws_stop_options *opts,
                                cws_sandbox **ret_sandbox, cws_error *err);

/**
 * cws_sandbox_delete() - delete it at once (no grace, no wait).
 */
CWS_EXPORT int cws_sandbox_delete(cws_conn *c, const char *id, bool missing_ok, cws_error *err);

CWS_EXPORT void cws_sandbox_free(cws_sandbox *s);
CWS_EXPORT void cws_sandbox_list_free(cws_sandbox_list *l);

/**
 * cws_state_name() - "RUNNING", "TERMINATED", ...; "UNKNOWN" for others.
 */
CWS_EXPORT const char *cws_state_name(cws_sandbox_state state);

/* ---- exec -------------------------------------------------------------------------------- */

typedef struct cws_exec_options {
        const char *cwd;                /* absolute; NULL = the image's */
        const cws_kv *env;
        size_t n_env;
        double timeout_seconds;         /* 0 = the session's request timeout */
        bool with_stdin;                /* streaming only: the caller writes stdin */
        bool tty;
        uint32_t tty_width;
        uint32_t tty_height;
        uint32_t window_bytes;          /* streaming only: output buffered ahead, 0 = 1 MiB */
} cws_exec_options;

typedef struct cws_exec_result {
        char *stdout_data;              /* NUL-terminated; may hold NUL bytes */
        size_t stdout_len;
        char *stderr_data;
        size_t stderr_len;
        int exit_code;
} cws_exec_result;

typedef enum cws_stream {
        CWS_STREAM_STDOUT = 0,
        CWS_STREAM_STDERR = 1,
} cws_stream;

typedef struct cws_exec cws_exec;

/**
 * cws_exec_run() - run @argv (NULL-terminated) in sandbox @id and collect
 * its output (up to about one frame, 16 MiB by default; more is
 * RESOURCE_EXHAUSTED). A command that exits with any code is success: the
 * code is in *@ret_result.
 */
CWS_EXPORT int cws_exec_run(cws_conn *c, const char *id, const char *const *argv, const cws_exec_options *opts,
                            cws_exec_result **ret_result, cws_error *err);

CWS_EXPORT void cws_exec_result_free(cws_exec_result *r);

/**
 * cws_exec_start() - start @argv with streamed output (and stdin when
 * @opts->with_stdin). Returns at once; the sandbox is started and waited for by
 * the daemon, and errors of the command come from the calls below.
 */
CWS_EXPORT int cws_exec_start(cws_conn *c, const char *id, const char *const *argv, const cws_exec_options *opts,
                              cws_exec **ret_exec, cws_error *err);

/**
 * cws_exec_read() - up to @size bytes of output, from one stream.
 * @timeout_ms: < 0 waits as long as it takes; a timeout is CWS_DEADLINE_EXCEEDED
 *              and the exec goes on.
 * @ret_stream: which stream the bytes came from; may be NULL.
 * @ret_len: bytes stored; 0 when the output has ended (then cws_exec_wait()
 *           gives the exit code at once).
 *
 * Returns 0, or the error that ended the exec.
 */
CWS_EXPORT int cws_exec_read(cws_exec *x, void *buf, size_t size, int timeout_ms, cws_stream *ret_stream,
                             size_t *ret_len, cws_error *err);

/**
 * cws_exec_write() - send @len bytes to the command's stdin. Write no
 * further ahead of what the command reads than a few MiB: the daemon fails
 * an exec whose stdin backlog exceeds 8 MiB.
 */
CWS_EXPORT int cws_exec_write(cws_exec *x, const void *data, size_t len, cws_error *err);

/**
 * cws_exec_close_stdin() - end of stdin.
 */
CWS_EXPORT int cws_exec_close_stdin(cws_exec *x, cws_error *err);

/**
 * cws_exec_resize() - a tty's new size.
 */
CWS_EXPORT int cws_exec_resize(cws_exec *x, uint32_t width, uint32_t height, cws_error *err);

/**
 * cws_exec_cancel() - kill the command; the exec then ends with CWS_CANCELLED.
 */
CWS_EXPORT int cws_exec_cancel(cws_exec *x, cws_error *err);

/**
 * cws_exec_wait() - wait for the end, dropping output not read yet.
 * Returns 0 with the exit code, or the error that ended the exec. An exec
 * that ends without an exit status is an error, never exit code 0.
 */
CWS_EXPORT int cws_exec_wait(cws_exec *x, int *ret_exit_code, cws_error *err);

/**
 * cws_exec_free() - free; a command still running is cancelled. Accepts NULL.
 */
CWS_EXPORT void cws_exec_free(cws_exec *x);

/* ---- files ------------------------------------------------------------------------------- */

/**
 * cws_read_file() - the content of @path in sandbox @id, in memory
 * (*@ret_data is NUL-terminated, free() it).
 */
CWS_EXPORT int cws_read_file(cws_conn *c, const char *id, const char *path, void **ret_data, size_t *ret_len,
                             cws_error *err);

/**
 * cws_write_file() - create or replace @path in sandbox @id with @len bytes.
 */
CWS_EXPORT int cws_write_file(cws_conn *c, const char *id, const char *path, const void *data, size_t len,
                              cws_error *err);

/**
 * cws_read_file_to_fd() - write the content of @path to @fd as it arrives.
 * A failed write(2) is CWS_INTERNAL with its message. @ret_len may be NULL.
 */
CWS_EXPORT int cws_read_file_to_fd(cws_conn *c, const char *id, const char *path, int fd, uint64_t *ret_len,
                                   cws_error *err);

/*
 * cws_read_cb - takes a read's content piece by piece, in order (@len > 0).
 * Returns 0 to go on; any other value stops the read.
 */
typedef int (*cws_read_cb)(const void *data, size_t len, void *userdata);

/**
 * cws_read_file_cb() - hand the content of @path to @cb as it arrives, never
 * holding the whole file. The daemon is granted more data only as @cb
 * returns, so a slow callback slows the transfer rather than filling memory.
 * A callback that returns non-zero ends the read with CWS_CANCELLED.
 * @ret_len: the bytes handed to @cb; may be NULL.
 */
CWS_EXPORT int cws_read_file_cb(cws_conn *c, const char *id, const char *path, cws_read_cb cb, void *userdata,
                                uint64_t *ret_len, cws_error *err);

/**
 * cws_write_file_from_fd() - the file's content is what @fd holds from its
 * current offset to its end. It is read into memory first, since the request
 * announces the size before any data; the daemon's max_file_bytes bounds it.
 */
CWS_EXPORT int cws_write_file_from_fd(cws_conn *c, const char *id, const char *path, int fd, cws_error *err);

/* ---- logs -------------------------------------------------------------------------------- */

typedef struct cws_logs_options {
        bool follow;                    /* keep reading until cancelled or the sandbox ends */
        int32_t tail_lines;             /* 0 = all */
        int64_t since_time_ms;          /* 0 = from the start */
        bool timestamps;
} cws_logs_options;

typedef struct cws_log_line {
        char *data;                     /* NUL-terminated */
        size_t len;
        int64_t time_ms;                /* 0 = none */
} cws_log_line;

typedef struct cws_logs cws_logs;

/**
 * cws_logs_open() - start reading the main process's output of sandbox @id.
 * @opts may be NULL.
 */
CWS_EXPORT int cws_logs_open(cws_conn *c, const char *id, const cws_logs_options *opts, cws_logs **ret_logs,
                             cws_error *err);

/**
 * cws_logs_next() - the next log entry, or NULL in *@ret_line at the end.
 * @timeout_ms: < 0 waits as long as it takes; a timeout is CWS_DEADLINE_EXCEEDED.
 */
CWS_EXPORT int cws_logs_next(cws_logs *l, int timeout_ms, cws_log_line **ret_line, cws_error *err);

CWS_EXPORT void cws_log_line_free(cws_log_line *line);

/**
 * cws_logs_close() - stop reading (a follow is cancelled) and free. Accepts NULL.
 */
CWS_EXPORT void cws_logs_close(cws_logs *l);

/* ---- daemon ------------------------------------------------------------------------------ */

typedef struct cws_state_count {
        char *state;                    /* "RUNNING", ... */
        uint32_t count;
} cws_state_count;

typedef struct cws_status {
        char *daemon_version;
        char *backend_kind;
        char *backend_url;
        int64_t uptime_ms;
        uint32_t sessions;
        uint32_t connections;
        size_t n_states;
        cws_state_count *states;        /* the caller's sandboxes by state */
        char *state_file_status;
} cws_status;

typedef struct cws_metric {
        char *name;
        double value;
} cws_metric;

struct cws_metrics {
        size_t n_metrics;
        cws_metric *metrics;
        char *prometheus_text;          /* "" unless asked for */
};

/**
 * cws_get_status() - the daemon's status.
 */
CWS_EXPORT int cws_get_status(cws_conn *c, cws_status **ret_status, cws_error *err);

/**
 * cws_get_metrics() - host-wide (@session_id NULL: cwsandboxd_* series) or
 * a session's (the SDK set cwsandbox/..., with its present/absent rules).
 * @reset clears a session's metrics in the same step as the read, so no
 * exec is lost or counted twice between reads (host-wide ones cannot be
 * reset). @prometheus adds the text format.
 */
CWS_EXPORT int cws_get_metrics(cws_conn *c, const char *session_id, bool reset, bool prometheus,
                           cws_metrics **ret_metrics, cws_error *err);

/**
 * cws_metrics_find() - the value of @name in @m. Returns true and sets
 * *@ret_value when it is there (a value the SDK omits, such as a rate with no
 * executions, is not).
 */
CWS_EXPORT bool cws_metrics_find(const cws_metrics *m, const char *name, double *ret_value);

CWS_EXPORT void cws_status_free(cws_status *s);
CWS_EXPORT void cws_metrics_free(cws_metrics *m);

#ifdef __cplusplus
}
#endif
