/*
 * Blocking test client for SandboxService and the Control service, on gRPC
 * core.
 *
 * Each BcClient owns one channel and one pluck completion queue; every call
 * waits for its own batches with grpc_completion_queue_pluck(). A client is
 * used by one thread at a time; threads that talk concurrently each open
 * their own client.
 *
 * Return values: calls answer the gRPC status code of the rpc (0 = OK,
 * positive = the server's or the transport's status, also copied into the
 * optional BcStatus with its details) or a negative errno when the client
 * itself failed (-ETIMEDOUT from the waiting helpers, -EBADMSG for an
 * undecodable reply). Messages handed out are protobuf-c messages; free them
 * with bc_free().
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>

#include "coreweave/sandbox/v1/sandbox.pb-c.h"
#include "cwsandboxlocal/v1/control.pb-c.h"

typedef Coreweave__Sandbox__V1__Sandbox BcSandbox;
typedef Coreweave__Sandbox__V1__State BcState;
#define BC_STATE(s) COREWEAVE__SANDBOX__V1__STATE__STATE_##s

/* Default deadline of a unary call. */
#define BC_TIMEOUT_MS 30000

#define BC_SANDBOX_SERVICE "/coreweave.sandbox.v1.SandboxService/"
#define BC_CONTROL_SERVICE "/cwsandboxlocal.v1.Control/"

typedef struct BcStatus {
        grpc_status_code code;
        char details[512];
        /* From the grpc-status-details-bin trailer (bc_status_read_details()),
         * as the SDK reads it: the first ErrorInfo with a reason, the first
         * RetryInfo with a delay; empty and 0 when there is none. */
        char reason[128];
        char domain[64];                /* of that ErrorInfo */
        uint32_t retry_delay_ms;
} BcStatus;

typedef struct BcBuf {
        char *data;     /* always NUL-terminated (data may hold NULs too) */
        size_t len, cap;
} BcBuf;

typedef struct BcClient BcClient;

/**
 * bc_connect() - a client for @target ("unix:/path", "127.0.0.1:PORT").
 * With @token set, every call carries "authorization: Bearer @token".
 * The channel connects lazily, on the first call.
 */
int bc_connect(const char *target, const char *token, BcClient **ret);

/**
 * bc_close() - close the channel and the queue. Accepts NULL; returns NULL.
 * Streams of the client must be freed first.
 */
BcClient *bc_close(BcClient *c);

/**
 * bc_set_authorization() - the raw "authorization" value sent from now on
 * (for example "Bearer x" or "Basic x"), or NULL to send none.
 */
int bc_set_authorization(BcClient *c, const char *value);

/**
 * bc_set_timeout() - the deadline of this client's typed unary calls from
 * now on (default BC_TIMEOUT_MS).
 */
void bc_set_timeout(BcClient *c, int timeout_ms);

/**
 * bc_unary() - one unary call of @method (full path, "/pkg.Svc/Method"):
 * send @req, decode the reply as @resp_desc into *@ret_resp (only on OK).
 * @timeout_ms <= 0 means the client's timeout (bc_set_timeout()).
 */
int bc_unary(BcClient *c, const char *method, const ProtobufCMessage *req,
             const ProtobufCMessageDescriptor *resp_desc, int timeout_ms,
             ProtobufCMessage **ret_resp, BcStatus *ret_status);

/**
 * bc_status_read_details() - fill @st's reason, domain and retry delay from
 * the grpc-status-details-bin entry of @trailing_md (cleared when there is
 * none, or when it does not decode). @st may be NULL.
 */
void bc_status_read_details(BcStatus *st, const grpc_metadata_array *trailing_md);

/**
 * bc_free() - free a message from this client. Accepts NULL.
 */
void bc_free(void *msg);
static inline void bc_freep(void *p) {
        bc_free(*(void **)p);
}
#define _cleanup_bc_ __attribute__((cleanup(bc_freep)))

/* ---- SandboxService, typed ---- */

typedef struct BcFile {
        const char *path;
        const void *data;
        size_t size;
} BcFile;

typedef struct BcSandboxOpts {
        const char *image;              /* NULL = "python:3.11" (the SDK default) */
        const char *command;            /* NULL = "" (the backend's keep-alive) */
        const char *const *args;        /* NULL-terminated, or NULL */
        const char *const *env;         /* "KEY=VALUE", NULL-terminated, or NULL */
        const char *working_dir;
        const char *const *tags;        /* NULL-terminated, or NULL */
        const BcFile *files;
        size_t n_files;
        int32_t max_lifetime_seconds;
        const char *request_id;
} BcSandboxOpts;

/* The SDK's default main process: /bin/sh -c with a keep-alive that exits 0 on TERM. */
#define BC_KEEPALIVE_COMMAND "/bin/sh"
#define BC_KEEPALIVE_SCRIPT "trap \"exit 0\" TERM INT; sleep infinity & wait"

int bc_create_sandbox(BcClient *c, const BcSandboxOpts *o, BcSandbox **ret, BcStatus *st);
int bc_get_sandbox(BcClient *c, const char *id, BcSandbox **ret, BcStatus *st);

/**
 * bc_wait_state() - poll GetSandbox until the sandbox is in @want. Returns 0
 * when it is, -ECANCELED when it settled in another final state (COMPLETED,
 * FAILED, TERMINATED), -ETIMEDOUT after @timeout_ms, or the status of a
 * failed GetSandbox. *@ret (optional) gets the last sandbox seen.
 */
int bc_wait_state(BcClient *c, const char *id, BcState want, int timeout_ms, BcSandbox **ret, BcStatus *st);

/**
 * bc_create_running() - create and wait up to @timeout_ms for RUNNING.
 * Returns 0 and the sandbox, or an error as above.
 */
int bc_create_running(BcClient *c, const BcSandboxOpts *o, int timeout_ms, BcSandbox **ret, BcStatus *st);

typedef struct BcDeleteOpts {
        int32_t grace_period_seconds;
        const char *request_id;
        bool allow_missing;
} BcDeleteOpts;

int bc_delete_sandbox(BcClient *c, const char *id, const BcDeleteOpts *o,
                      Coreweave__Sandbox__V1__DeleteSandboxResponse **ret, BcStatus *st);

/**
 * bc_stop_sandbox() - DeleteSandbox (grace 1 s) and wait up to @timeout_ms
 * for TERMINATED. For cleanup at the end of a test; 0 on success.
 */
int bc_stop_sandbox(BcClient *c, const char *id, int timeout_ms);

typedef struct BcListOpts {
        const char *const *tags;        /* NULL-terminated, or NULL */
        BcState state;                  /* 0 = any */
        bool show_terminated;
        int32_t page_size;
        const char *page_token;
} BcListOpts;

int bc_list_sandboxes(BcClient *c, const BcListOpts *o,
                      Coreweave__Sandbox__V1__ListSandboxesResponse **ret, BcStatus *st);

/**
 * bc_exec_unary() - the unary Exec rpc: run @argv, collect output.
 * @max_output_bytes 0 = the server's default.
 */
int bc_exec_unary(BcClient *c, const char *id, const char *const *argv, int32_t max_output_bytes,
                  Coreweave__Sandbox__V1__ExecResponse **ret, BcStatus *st);

int bc_write_file(BcClient *c, const char *id, const char *path, const void *data, size_t size, BcStatus *st);
int bc_read_file(BcClient *c, const char *id, const char *path,
                 Coreweave__Sandbox__V1__ReadFileResponse **ret, BcStatus *st);

/* ---- Control ---- */

int bc_get_counters(BcClient *c, bool reset, Cwsandboxlocal__V1__GetCountersResponse **ret, BcStatus *st);

/**
 * bc_counter() - the counter of @method ("GetSandbox"...) in @r, or NULL.
 */
const Cwsandboxlocal__V1__MethodCounter *bc_counter(const Cwsandboxlocal__V1__GetCountersResponse *r,
                                                    const char *method);

/**
 * bc_set_faults() - replace every fault with @faults (@n may be 0: clear).
 */
int bc_set_faults(BcClient *c, const Cwsandboxlocal__V1__Fault *faults, size_t n, BcStatus *st);

/**
 * bc_set_quota() - the account's limits on creates (0 = none for each); a
 * create over one fails with RESOURCE_EXHAUSTED and a RetryInfo of
 * @retry_delay_ms when that is not 0.
 */
int bc_set_quota(BcClient *c, uint32_t max_alive, double creates_per_second, uint32_t retry_delay_ms,
                 BcStatus *st);

/* ---- Streams (generic) ---- */

typedef struct BcStream BcStream;

/**
 * bc_stream_open() - start a streaming call of @method with a deadline of
 * @timeout_ms (<= 0: none) and send the initial metadata.
 */
int bc_stream_open(BcClient *c, const char *method, int timeout_ms, BcStream **ret);

/**
 * bc_stream_send() - send one message and wait until it is handed to the
 * transport. Returns 0, or -EPIPE when the call is over.
 */
int bc_stream_send(BcStream *s, const ProtobufCMessage *msg);

/**
 * bc_stream_close_send() - half-close: no more messages from the client.
 */
int bc_stream_close_send(BcStream *s);

/**
 * bc_stream_recv() - wait up to @timeout_ms (< 0: forever) for the next
 * message. Returns 0 with *@ret set, 1 at the end of the stream (the status
 * is then known: bc_stream_status()), -ETIMEDOUT, or -EBADMSG.
 */
int bc_stream_recv(BcStream *s, const ProtobufCMessageDescriptor *desc, int timeout_ms, ProtobufCMessage **ret);

/**
 * bc_stream_status() - the final status once bc_stream_recv() returned 1.
 */
const BcStatus *bc_stream_status(const BcStream *s);

/**
 * bc_stream_cancel() - cancel the call now (the server sees it cancelled).
 */
void bc_stream_cancel(BcStream *s);

/**
 * bc_stream_free() - cancel if still running, wait for every batch, free.
 */
BcStream *bc_stream_free(BcStream *s);

/* ---- StreamExec ---- */

typedef struct BcExecOpts {
        const char *const *argv;        /* NULL-terminated */
        const char *const *env;         /* "KEY=VALUE", NULL-terminated, or NULL */
        bool tty;
        uint32_t tty_width, tty_height;
} BcExecOpts;

typedef struct BcExec {
        BcStream *stream;
        bool ready;                     /* got the ready frame */
        bool exited;                    /* got the exit frame */
        int32_t exit_code;
        bool errored;                   /* got an error frame */
        char error_code[64], error_message[256];
        bool ended;                     /* the stream is over; status is set */
        BcStatus status;
        BcBuf out, err;                 /* output frames per stream */
        unsigned n_frames;
        bool out_of_order;              /* output/ready after exit, or ready not first */
} BcExec;

/**
 * bc_exec_start() - open StreamExec and send the init frame for @o in @id.
 * @timeout_ms is the deadline of the whole call (<= 0: none).
 */
int bc_exec_start(BcClient *c, const char *id, const BcExecOpts *o, int timeout_ms, BcExec **ret);

int bc_exec_stdin(BcExec *e, const void *data, size_t size);
int bc_exec_resize(BcExec *e, uint32_t width, uint32_t height);

/**
 * bc_exec_close_stdin() - a close frame, then half-close (what the SDK does).
 */
int bc_exec_close_stdin(BcExec *e);

/**
 * bc_exec_half_close() - half-close without a close frame (the SDK's exec
 * without stdin).
 */
int bc_exec_half_close(BcExec *e);

/**
 * bc_exec_pump() - receive one frame and record it. 0 = a frame, 1 = the
 * stream ended, -ETIMEDOUT, -EBADMSG.
 */
int bc_exec_pump(BcExec *e, int timeout_ms);

/**
 * bc_exec_wait_ready() - pump until the ready frame (0), the end (1), or
 * timeout.
 */
int bc_exec_wait_ready(BcExec *e, int timeout_ms);

/**
 * bc_exec_wait_output() - pump until stdout (or, for a tty, the terminal
 * output) contains @needle after byte @from: 0, 1 = ended without it,
 * -ETIMEDOUT.
 */
int bc_exec_wait_output(BcExec *e, const char *needle, size_t from, int timeout_ms);

/**
 * bc_exec_wait() - pump until the stream ends (0) or timeout.
 */
int bc_exec_wait(BcExec *e, int timeout_ms);

void bc_exec_cancel(BcExec *e);
BcExec *bc_exec_free(BcExec *e);

/**
 * bc_exec_run() - start @argv without stdin (half-close at once) and wait
 * for the end. Returns 0 when the stream ended within @timeout_ms (check
 * ->status, ->exited, ->exit_code, ->out), else an error; *@ret is set
 * whenever the call was started.
 */
int bc_exec_run(BcClient *c, const char *id, const char *const *argv, int timeout_ms, BcExec **ret);

/* ---- StreamLogs ---- */

typedef struct BcLogsOpts {
        bool follow;
        int32_t tail_lines;             /* 0 = all */
        int64_t since_ns;               /* realtime; 0 = no since_time */
        bool timestamps;
} BcLogsOpts;

typedef struct BcLogs {
        BcStream *stream;
        BcBuf data;                     /* every entry's data, concatenated */
        unsigned n_entries;
        int64_t first_ts_ns, last_ts_ns;   /* of entries with a timestamp */
        char session_id[128];
        uint64_t next_offset;
        char error_code[64], error_message[256];   /* an in-band error entry */
        bool ended;
        BcStatus status;
} BcLogs;

int bc_logs_start(BcClient *c, const char *id, const BcLogsOpts *o, int timeout_ms, BcLogs **ret);
int bc_logs_pump(BcLogs *l, int timeout_ms);
int bc_logs_wait_data(BcLogs *l, const char *needle, int timeout_ms);
int bc_logs_wait(BcLogs *l, int timeout_ms);
void bc_logs_cancel(BcLogs *l);
BcLogs *bc_logs_free(BcLogs *l);

/**
 * bc_logs_read() - a non-follow StreamLogs read to the end.
 */
int bc_logs_read(BcClient *c, const char *id, const BcLogsOpts *o, int timeout_ms, BcLogs **ret);

/* ---- small helpers ---- */

void bc_buf_append(BcBuf *b, const void *data, size_t size);
void bc_buf_reset(BcBuf *b);
void bc_buf_done(BcBuf *b);

const char *bc_state_name(BcState s);
const char *bc_code_name(int code);

/**
 * bc_ts_ns() - a Timestamp as nanoseconds since the epoch (0 for NULL).
 */
int64_t bc_ts_ns(const Google__Protobuf__Timestamp *ts);
