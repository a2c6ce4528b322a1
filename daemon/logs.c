/*
 * Logs: a sandbox's main-process output, over the backend's server-streaming
 * StreamLogs, for a client's logs request.
 *
 * Preamble, as the SDK's stream_logs(): the sandbox is resolved for the
 * caller's uid and started if needed. Following logs needs a sandbox that
 * runs: one that is stopping or done is FAILED_PRECONDITION. Without follow,
 * a stopping or finished sandbox is read at once (its logs are what tells
 * why it ended); otherwise the call waits until it runs, with the session's
 * request timeout, and a Cancel ends that wait.
 *
 * The stream has no deadline when following, else the session's request
 * timeout. Each LogEntry becomes LogLine frames (data cut to at most 1 MiB
 * per frame, time_ms from its timestamp, 0 when it has none). Flow control
 * as exec's: every data byte uses credit, LOGS_CREDIT_INITIAL to start with
 * (the request carries none) plus what Credit frames grant; the next entry
 * is read from the backend only while credit is left and the connection
 * takes output. An in-band LogEntry.error ends the call with that error
 * (its code as the reason); the end of the stream ends it OK. The SDK's
 * reconnect-and-resume of a broken follow is left to the client.
 *
 * Lifetime: a Logs lives until its call has ended, its resolve or wait has
 * returned, and its stream has reported done, whichever is last.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handle.h"
#include "log.h"
#include "ops.h"
#include "session.h"

#define LOGS_CREDIT_INITIAL     (256 * 1024)
#define LOGS_CREDIT_MAX         (INT64_C(1) << 40)
#define LOGS_CHUNK_MAX          (1024u * 1024)
#define LOGS_FRAME_MARGIN       256u            /* frame fields around the data */

#define STATE(x) CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_##x

typedef Coreweave__Sandbox__V1__LogEntry LogEntry;

typedef struct Logs {
        Manager *manager;
        Call *call;                     /* NULL once the client's call has ended */
        char *sandbox_arg;              /* the id the client gave */
        bool follow, timestamps;
        int32_t tail_lines;
        int64_t since_time_ms;
        Handle *handle;                 /* the operation's reference, once streaming */
        char *session_id;               /* for logs; NULL for a sandbox in no session */
        bool resolving;                 /* handle_resolve() has not called back */
        HandleWaiter *waiter;           /* the wait for RUNNING, until it calls back */
        BackendStream *stream;          /* from open until done */
        bool reading, cancelled;
        int64_t credit;
} Logs;

static void logs_pump(Logs *l);

/* ---- lifetime -------------------------------------------------------------------------- */

static void logs_free(Logs *l) {
        if (l->handle)
                handle_unref(l->handle);
        free(l->session_id);
        free(l->sandbox_arg);
        free(l);
}

static void logs_maybe_free(Logs *l) {
        if (!l->call && !l->resolving && !l->waiter && !l->stream)
                logs_free(l);
}

static const char *logs_sandbox_id(const Logs *l) {
        return l->handle && l->handle->sandbox_id ? l->handle->sandbox_id : l->sandbox_arg;
}

static void logs_finish(Logs *l) {
        Call *call = TAKE_PTR(l->call);

        if (!call)
                return;
        log_full(LOG_LEVEL_DEBUG, l->session_id, logs_sandbox_id(l), "logs: stream ended");
        call_finish(call, NULL);
}

/* End the call with @st; stop whatever is still under way for it. */
static void logs_fail(Logs *l, const Status *st) {
        Call *call = TAKE_PTR(l->call);

        if (l->stream && !l->cancelled) {
                l->cancelled = true;
                backend_stream_cancel(l->stream);
        }
        if (l->waiter)
                handle_waiter_cancel(l->waiter);
        if (!call)
                return;
        log_full(st->code == GRPC_STATUS_CANCELLED ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO, l->session_id,
                 logs_sandbox_id(l), "logs: %s", st->message);
        call_fail(call, st, logs_sandbox_id(l));
}

static void logs_oom(Logs *l) {
        Status st;

        status_set(&st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        logs_fail(l, &st);
}

/* ---- client side ----------------------------------------------------------------------- */

static void logs_on_credit(Call *call, uint32_t bytes) {
        Logs *l = call->userdata;

        l->credit = MIN(l->credit + (int64_t)bytes, LOGS_CREDIT_MAX);
        logs_pump(l);
}

static void logs_on_cancel(Call *call) {
        Logs *l = call->userdata;
        Status st;

        status_set(&st, GRPC_STATUS_CANCELLED, "%s",
                   call->conn_gone ? "the client's connection closed" : "cancelled by the client");
        logs_fail(l, &st);
        logs_maybe_free(l);
}

static void logs_on_drain(Call *call) {
        logs_pump(call->userdata);
}

static const CallOps logs_call_ops = {
        .credit = logs_on_credit,
        .cancel = logs_on_cancel,
        .drain = logs_on_drain,
};

/* ---- backend side ---------------------------------------------------------------------- */

static void logs_pump(Logs *l) {
        if (!l->stream || l->reading || l->cancelled || !l->call)
                return;
        if (l->credit <= 0 || !conn_writable(l->call->conn))
                return;
        l->reading = true;
        backend_stream_read(l->stream);
}

static void logs_send(Logs *l, const LogEntry *e) {
        Cwsandboxd__V1__LogLine line = CWSANDBOXD__V1__LOG_LINE__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        size_t max = MIN((size_t)LOGS_CHUNK_MAX, (size_t)l->manager->config->max_frame_bytes - LOGS_FRAME_MARGIN);
        size_t n;
        int r;

        if (e->timestamp)
                line.time_ms = e->timestamp->seconds * 1000 + e->timestamp->nanos / 1000000;
        f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_LOG_LINE;
        f.log_line = &line;
        for (size_t off = 0; off < e->data.len; off += n) {
                n = MIN(max, e->data.len - off);
                line.data = (ProtobufCBinaryData) { .len = n, .data = e->data.data + off };
                r = call_send(l->call, &f);
                if (r == -EPIPE)
                        return;         /* the connection is gone; cancel follows */
                if (r < 0) {
                        logs_oom(l);
                        return;
                }
        }
        l->credit -= (int64_t)e->data.len;
}

/* The backend's in-band error codes, as a status; the code is kept as the reason. */
static void logs_on_stream_error(Logs *l, const Coreweave__Sandbox__V1__LogStreamError *err) {
        static const struct {
                const char *code;
                grpc_status_code status;
        } map[] = {
                { "SANDBOX_NOT_FOUND",    GRPC_STATUS_NOT_FOUND },
                { "PERMISSION_DENIED",    GRPC_STATUS_PERMISSION_DENIED },
                { "STREAM_TRUNCATED",     GRPC_STATUS_DATA_LOSS },
                { "STREAM_INTERRUPTED",   GRPC_STATUS_UNAVAILABLE },
                { "RUNNER_UNAVAILABLE",   GRPC_STATUS_UNAVAILABLE },
                { "RUNNER_DRAINING",      GRPC_STATUS_UNAVAILABLE },
                { "SESSION_NOT_FOUND",    GRPC_STATUS_UNAVAILABLE },
                { "REPLAY_GAP",           GRPC_STATUS_UNAVAILABLE },
        };
        grpc_status_code code = GRPC_STATUS_INTERNAL;
        Status st;

        for (size_t i = 0; i < ELEMENTSOF(map); i++)
                if (streq(err->code, map[i].code))
                        code = map[i].status;
        status_set(&st, code, "log stream error: %s", err->message[0] ? err->message : err->code);
        (void)snprintf(st.reason, sizeof(st.reason), "%s", err->code);
        logs_fail(l, &st);
}

static void logs_on_message(void *userdata, ProtobufCMessage *msg) {
        LogEntry *e = (LogEntry *)msg;
        Logs *l = userdata;

        l->reading = false;
        if (l->call && e->data.len > 0)
                logs_send(l, e);
        if (l->call && e->error)
                logs_on_stream_error(l, e->error);
        protobuf_c_message_free_unpacked(msg, NULL);
        logs_pump(l);
}

static void logs_on_end(void *userdata) {
        Logs *l = userdata;

        l->reading = false;
}

static void logs_on_done(void *userdata, const Status *st) {
        Logs *l = userdata;
        Status err = *st;

        l->stream = NULL;
        if (status_ok(st))
                logs_finish(l);
        else if (l->call) {
                status_prefix(&err, "logs");
                logs_fail(l, &err);
        }
        logs_maybe_free(l);
}

static const BackendStreamOps logs_stream_ops = {
        .message = logs_on_message,
        .end = logs_on_end,
        .done = logs_on_done,
};

/* ---- start ----------------------------------------------------------------------------- */

static void logs_open(Logs *l) {
        Coreweave__Sandbox__V1__StreamLogsRequest req = COREWEAVE__SANDBOX__V1__STREAM_LOGS_REQUEST__INIT;
        Google__Protobuf__Timestamp since = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
        Handle *h = l->handle;

        if (h->session && !(l->session_id = strdup(h->session->id))) {
                logs_oom(l);
                return;
        }
        req.sandbox_id = h->sandbox_id;
        req.follow = l->follow;
        req.tail_lines = l->tail_lines;
        req.timestamps = l->timestamps;
        if (l->since_time_ms > 0) {
                since.seconds = l->since_time_ms / 1000;
                since.nanos = (int32_t)(l->since_time_ms % 1000) * 1000000;
                req.since_time = &since;
        }
        log_full(LOG_LEVEL_DEBUG, l->session_id, h->sandbox_id, "logs: follow=%d tail=%" PRId32 " since=%" PRId64,
                 l->follow, l->tail_lines, l->since_time_ms);
        l->stream = backend_stream_open(l->manager->backend, BACKEND_STREAM_LOGS, &req.base,
                                        l->follow ? -1 : handle_request_timeout_ms(h), &logs_stream_ops, l);
        logs_pump(l);
}

static void logs_on_running(void *userdata, Handle *h, const Status *st) {
        Logs *l = userdata;

        l->waiter = NULL;
        l->handle = h;
        if (l->call && !h)
                logs_fail(l, st);
        else if (l->call)
                logs_open(l);
        logs_maybe_free(l);
}

static bool logs_not_running(const Handle *h) {
        return h->stop || h->cancelled || h->state == STATE(TERMINATING) || handle_is_terminal(h);
}

static void logs_on_resolved(void *userdata, Handle *h, const Status *st) {
        Logs *l = userdata;
        Status err;

        l->resolving = false;
        if (l->call && !h)
                logs_fail(l, st);
        else if (l->call && logs_not_running(h) && (l->follow || !h->sandbox_id)) {
                status_set(&err, GRPC_STATUS_FAILED_PRECONDITION, "sandbox %s is not running (%s)",
                           h->sandbox_id ? h->sandbox_id : h->id,
                           h->stop || h->state == STATE(TERMINATING) ? "stopping" : "finished");
                strcpy(err.reason, "CWSANDBOXD_SANDBOX_NOT_RUNNING");
                l->handle = h;
                logs_fail(l, &err);
        } else if (l->call && logs_not_running(h)) {
                l->handle = h;
                logs_open(l);
        } else if (l->call) {
                l->waiter = handle_wait(h, HANDLE_WAIT_RUNNING, handle_request_timeout_ms(h), logs_on_running, l);
                handle_unref(h);
        } else
                l->handle = h;
        logs_maybe_free(l);
}

void ops_logs(Manager *m, Call *call, const Cwsandboxd__V1__LogsRequest *req) {
        Logs *l;
        Status st;

        if (req->tail_lines < 0 || req->since_time_ms < 0) {
                status_set(&st, GRPC_STATUS_INVALID_ARGUMENT, "%s: must be >= 0",
                           req->tail_lines < 0 ? "tail_lines" : "since_time_ms");
                call_fail(call, &st, req->sandbox_id);
                return;
        }
        l = calloc(1, sizeof(*l));
        if (!l || !(l->sandbox_arg = strdup(req->sandbox_id))) {
                free(l);
                status_set(&st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                call_fail(call, &st, req->sandbox_id);
                return;
        }
        l->manager = m;
        l->call = call;
        l->follow = req->follow;
        l->timestamps = req->timestamps;
        l->tail_lines = req->tail_lines;
        l->since_time_ms = req->since_time_ms;
        l->credit = LOGS_CREDIT_INITIAL;
        l->resolving = true;
        call_set_ops(call, &logs_call_ops, l);
        /* May call back at once: nothing of @l is touched after this. */
        handle_resolve(m, conn_peer(call->conn)->uid, req->sandbox_id, logs_on_resolved, l);
}
