/*
 * Backend: the daemon's gRPC client of coreweave.sandbox.v1.SandboxService.
 *
 * Every function here runs on the loop thread; completions come back through
 * the CqLoop and every callback runs on the loop thread too, exactly once.
 *
 * Channels: a pool. Unary calls share the first channel. Each stream goes to
 * the channel with the fewest open streams, and a channel never carries more
 * than BACKEND_STREAMS_PER_CHANNEL of them, because servers commonly cap
 * concurrent streams per HTTP/2 connection at 100 and a stream over the cap
 * would queue instead of run. Each channel has its own connection (gRPC would
 * otherwise share one subchannel between channels of equal arguments).
 * Keepalive pings keep long quiet streams (log follow, idle shells) alive
 * through proxies. gRPC reconnects a channel on its own; calls made while the
 * backend is down fail at once with UNAVAILABLE instead of waiting.
 *
 * Errors: a failed call yields a Status with the gRPC code, the backend's
 * message, and, when the trailers carry a google.rpc.Status, the ErrorInfo
 * reason (domain cwsandbox.com only, as the SDK) and the RetryInfo delay. The
 * API key is never part of a Status or a log line.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>
#include <uv.h>

#include "cqloop.h"
#include "prom.h"
#include "status.h"

#define BACKEND_STREAMS_PER_CHANNEL     90
#define BACKEND_MAX_MESSAGE_BYTES       (100 * 1024 * 1024)     /* the SDK's limit */

typedef enum BackendMethod {
        BACKEND_CREATE_SANDBOX,
        BACKEND_GET_SANDBOX,
        BACKEND_LIST_SANDBOXES,
        BACKEND_DELETE_SANDBOX,
        BACKEND_EXEC,
        BACKEND_STREAM_EXEC,
        BACKEND_STREAM_LOGS,
        BACKEND_WRITE_FILE,
        BACKEND_READ_FILE,
        _BACKEND_METHOD_MAX,
} BackendMethod;

typedef struct BackendOptions {
        const char *target;             /* gRPC target: "host:port" or "unix:/path" */
        bool tls;                       /* TLS with the system roots */
        const char *api_key;            /* NULL or "" = no authorization header */
        unsigned pool_size;             /* channels, >= 1 */
} BackendOptions;

/* Per-method counters, for status and metrics. */
typedef struct BackendMethodStats {
        uint64_t calls;
        uint64_t errors;                /* calls that ended with a code other than OK */
        uint64_t by_code[17];           /* calls per final gRPC code */
        Histogram latency;              /* seconds, start to final status */
} BackendMethodStats;

typedef struct Backend Backend;
typedef struct BackendCall BackendCall;
typedef struct BackendStream BackendStream;

/**
 * backend_method_name() - "CreateSandbox" and so on, for logs.
 */
const char *backend_method_name(BackendMethod m);

/**
 * backend_new() - create the channel pool. Channels connect lazily.
 * The options are copied (the key into memory that is wiped on free).
 * Returns 0 or a negative errno.
 */
int backend_new(uv_loop_t *loop, CqLoop *cq, const BackendOptions *opts, Backend **ret);

/**
 * backend_set_api_key() - use @api_key (NULL or "" = none) for calls started
 * from now on. For a credentials reload. Returns 0, -EINVAL (not printable
 * ASCII, which gRPC would refuse on every call) or -ENOMEM.
 */
int backend_set_api_key(Backend *b, const char *api_key);

/**
 * backend_shutdown() - cancel every call and stream in flight. Their
 * callbacks run (with CANCELLED) before @done, which runs once nothing of the
 * backend is left on the completion queue; then backend_free() may be called
 * and the CqLoop shut down. No call may be started after this.
 */
void backend_shutdown(Backend *b, void (*done)(void *userdata), void *userdata);

/**
 * backend_free() - free the pool after backend_shutdown()'s @done. NULL is fine.
 */
void backend_free(Backend *b);

/**
 * backend_stats() - counters of method @m since start.
 */
const BackendMethodStats *backend_stats(const Backend *b, BackendMethod m);

/**
 * backend_streams_open() - streams in flight, across the pool.
 */
unsigned backend_streams_open(const Backend *b);

/* ---- unary ---------------------------------------------------------------------- */

/*
 * @st is the outcome. @reply is the decoded response on success (the callee
 * owns it: free with protobuf_c_message_free_unpacked) and NULL on failure. A
 * response that does not decode is a failure with INTERNAL.
 */
typedef void (*BackendReplyFn)(void *userdata, const Status *st, ProtobufCMessage *reply);

/**
 * backend_call() - start a unary call of @m with @request (packed at once;
 * the caller keeps @request). @timeout_ms is the deadline from now; < 0 for
 * none. @fn runs exactly once, never from inside backend_call().
 *
 * Returns the call, valid until @fn has run; to be used only with
 * backend_call_cancel(). Never NULL (gRPC aborts on OOM).
 */
BackendCall *backend_call(Backend *b, BackendMethod m, const ProtobufCMessage *request,
                          int64_t timeout_ms, BackendReplyFn fn, void *userdata);

/**
 * backend_call_cancel() - cancel a call whose callback has not run; the
 * callback still runs, with CANCELLED (or the outcome if it raced).
 */
void backend_call_cancel(BackendCall *c);

/* ---- streams -------------------------------------------------------------------- */

typedef struct BackendStreamOps {
        /* One response, after a backend_stream_read(); the callee owns @msg. */
        void (*message)(void *userdata, ProtobufCMessage *msg);
        /* The peer ended its side (no more messages will come); the status follows in done. */
        void (*end)(void *userdata);
        /* Once, last: the stream's final status. The stream is freed after it returns. */
        void (*done)(void *userdata, const Status *st);
} BackendStreamOps;

/**
 * backend_stream_open() - start a streaming call of @m (STREAM_EXEC or
 * STREAM_LOGS) on the least-loaded channel and send @first. For a
 * server-streaming method the send side is closed after @first.
 * @timeout_ms: deadline from now; < 0 for none.
 *
 * Nothing is read until backend_stream_read() is called: the caller pulls
 * one message at a time, which is how a slow client pauses the backend.
 * Returns the stream; never NULL.
 */
BackendStream *backend_stream_open(Backend *b, BackendMethod m, const ProtobufCMessage *first,
                                   int64_t timeout_ms, const BackendStreamOps *ops, void *userdata);

/**
 * backend_stream_read() - ask for the next response: ops->message or
 * ops->end follows. At most one read may be outstanding; a read after end or
 * after done was reported is ignored.
 */
void backend_stream_read(BackendStream *s);

/**
 * backend_stream_write() - queue @msg (packed at once) for sending. Writes
 * go out in order, one in flight at a time. Ignored after close_send, cancel
 * or done. Returns the bytes queued and not yet sent, so the caller can stop
 * taking input from its client above a limit.
 */
size_t backend_stream_write(BackendStream *s, const ProtobufCMessage *msg);

/**
 * backend_stream_close_send() - half-close after the queued writes.
 */
void backend_stream_close_send(BackendStream *s);

/**
 * backend_stream_cancel() - end the stream now (the server sees CANCELLED);
 * ops->done follows with CANCELLED unless the status had already arrived.
 */
void backend_stream_cancel(BackendStream *s);
