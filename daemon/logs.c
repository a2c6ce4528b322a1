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
#include "ops-internal.h"

#define LOGS_CREDIT_INITIAL     (256 * 1024)

#define STATE(x) CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_##x

typedef Coreweave__Sandbox__V1__LogEntry LogEntry;

typedef struct Logs {
        Op op;
        bool follow, timestamps;
        int32_t tail_lines;
        int64_t since_time_ms;
} Logs;

static void logs_log_end(const Op *op, const Status *st) {
        if (status_ok(st))
                log_full(LOG_LEVEL_DEBUG, op->session_id, op_sandbox_id(op), "logs: stream ended");
        else
                log_full(st->code == GRPC_STATUS_CANCELLED ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO, op->session_id,
                         op_sandbox_id(op), "logs: %s", st->message);
}

/* ---- backend side ---------------------------------------------------------------------- */

static void logs_pump(Op *op) {
        op_stream_read(op, true);
}

static void logs_send(Logs *l, const LogEntry *e) {
        Cwsandboxd__V1__LogLine line = CWSANDBOXD__V1__LOG_LINE__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

        if (e->timestamp)
                line.time_ms = e->timestamp->seconds * 1000 + e->timestamp->nanos / 1000000;
        f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_LOG_LINE;
        f.log_line = &line;
        (void)op_send_data(&l->op, &f, &line.data, &e->data);
}

static void logs_on_message(Op *op, ProtobufCMessage *msg) {
        /* The backend's in-band error codes; the code is kept as the reason. */
        static const OpErrorCode map[] = {
                { "SANDBOX_NOT_FOUND",    GRPC_STATUS_NOT_FOUND },
                { "PERMISSION_DENIED",    GRPC_STATUS_PERMISSION_DENIED },
                { "STREAM_TRUNCATED",     GRPC_STATUS_DATA_LOSS },
                { "STREAM_INTERRUPTED",   GRPC_STATUS_UNAVAILABLE },
                { "RUNNER_UNAVAILABLE",   GRPC_STATUS_UNAVAILABLE },
                { "RUNNER_DRAINING",      GRPC_STATUS_UNAVAILABLE },
                { "SESSION_NOT_FOUND",    GRPC_STATUS_UNAVAILABLE },
                { "REPLAY_GAP",           GRPC_STATUS_UNAVAILABLE },
        };
        LogEntry *e = (LogEntry *)msg;

        if (e->data.len > 0)
                logs_send(container_of(op, Logs, op), e);
        if (op->call && e->error)
                op_fail_stream_error(op, "log", e->error->code, e->error->message, map, ELEMENTSOF(map));
}

static void logs_on_done(Op *op, const Status *st) {
        Status err = *st;

        if (status_ok(st)) {
                op_finish(op, NULL);
                return;
        }
        status_prefix(&err, "logs");
        op_fail(op, &err);
}

static const OpKind logs_kind = {
        .log_end = logs_log_end,
        .pump = logs_pump,
        .message = logs_on_message,
        .done = logs_on_done,
};

/* ---- start ----------------------------------------------------------------------------- */

static void logs_open(Logs *l) {
        Coreweave__Sandbox__V1__StreamLogsRequest req = COREWEAVE__SANDBOX__V1__STREAM_LOGS_REQUEST__INIT;
        Google__Protobuf__Timestamp since = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
        Handle *h = l->op.handle;

        req.sandbox_id = h->sandbox_id;
        req.follow = l->follow;
        req.tail_lines = l->tail_lines;
        req.timestamps = l->timestamps;
        if (l->since_time_ms > 0) {
                since.seconds = l->since_time_ms / 1000;
                since.nanos = (int32_t)(l->since_time_ms % 1000) * 1000000;
                req.since_time = &since;
        }
        log_full(LOG_LEVEL_DEBUG, l->op.session_id, h->sandbox_id, "logs: follow=%d tail=%" PRId32 " since=%" PRId64,
                 l->follow, l->tail_lines, l->since_time_ms);
        op_stream_open(&l->op, BACKEND_STREAM_LOGS, &req.base, l->follow ? -1 : handle_request_timeout_ms(h));
        logs_pump(&l->op);
}

static void logs_on_running(void *userdata, Handle *h, const Status *st) {
        Logs *l = container_of(userdata, Logs, op);

        if (!op_running(&l->op, h, st))
                return;
        logs_open(l);
        op_maybe_free(&l->op);
}

static bool logs_not_running(const Handle *h) {
        return h->stop || h->cancelled || h->state == STATE(TERMINATING) || handle_is_terminal(h);
}

static void logs_on_resolved(void *userdata, Handle *h, const Status *st) {
        Logs *l = container_of(userdata, Logs, op);
        Status err;

        if (l->op.call && h && !logs_not_running(h)) {
                /* Still waiting, now for RUNNING; a Cancel ends this wait. */
                l->op.waiter = handle_wait(h, HANDLE_WAIT_RUNNING, handle_request_timeout_ms(h), logs_on_running,
                                           &l->op);
                handle_unref(h);
                return;
        }
        if (!op_running(&l->op, h, st))
                return;
        if (l->follow || !h->sandbox_id) {
                status_set(&err, GRPC_STATUS_FAILED_PRECONDITION, "sandbox %s is not running (%s)",
                           h->sandbox_id ? h->sandbox_id : h->id,
                           h->stop || h->state == STATE(TERMINATING) ? "stopping" : "finished");
                strcpy(err.reason, "CWSANDBOXD_SANDBOX_NOT_RUNNING");
                op_fail(&l->op, &err);
        } else
                logs_open(l);
        op_maybe_free(&l->op);
}

void ops_logs(Manager *m, Call *call, const Cwsandboxd__V1__LogsRequest *req) {
        Logs *l;
        Op *op;
        Status st;

        if (req->tail_lines < 0 || req->since_time_ms < 0) {
                status_set(&st, GRPC_STATUS_INVALID_ARGUMENT, "%s: must be >= 0",
                           req->tail_lines < 0 ? "tail_lines" : "since_time_ms");
                call_fail(call, &st, req->sandbox_id);
                return;
        }
        op = op_new(sizeof(Logs), &logs_kind, m, call, req->sandbox_id);
        if (!op)
                return;
        l = container_of(op, Logs, op);
        l->follow = req->follow;
        l->timestamps = req->timestamps;
        l->tail_lines = req->tail_lines;
        l->since_time_ms = req->since_time_ms;
        op->credit = LOGS_CREDIT_INITIAL;
        op->waiting = true;
        call_set_ops(call, &op_output_call_ops, op);
        /* May call back at once: nothing of @l is touched after this. */
        handle_resolve(m, conn_peer(call->conn)->uid, req->sandbox_id, logs_on_resolved, op);
}
