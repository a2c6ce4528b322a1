/*
 * Ops util: the life of one client operation on a sandbox (see
 * ops-internal.h), shared by exec, files and logs: ending its call once,
 * stopping what runs for it, credit, chunked output, and the one backend
 * stream it reads a message at a time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops-internal.h"
#include "session.h"

#define OPS_CREDIT_MAX          (INT64_C(1) << 40)
#define OPS_CHUNK_MAX           (1024u * 1024)

/* ---- lifetime ---------------------------------------------------------------------- */

Op *op_new(size_t size, const OpKind *kind, Manager *m, Call *call, const char *sandbox_id) {
        Op *op = calloc(1, size);
        Status st;

        if (!op || !(op->sandbox_arg = strdup(sandbox_id))) {
                free(op);
                status_set(&st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                call_fail(call, &st, sandbox_id);
                return NULL;
        }
        op->kind = kind;
        op->manager = m;
        op->call = call;
        return op;
}

void op_maybe_free(Op *op) {
        if (op->call || op->waiting || op->backend || op->stream)
                return;
        if (op->kind->release)
                op->kind->release(op);
        if (op->handle)
                handle_unref(op->handle);
        free(op->session_id);
        free(op->sandbox_arg);
        free(op);
}

const char *op_sandbox_id(const Op *op) {
        return op->handle && op->handle->sandbox_id ? op->handle->sandbox_id : op->sandbox_arg;
}

void op_wait_running(Op *op, const CallOps *call_ops, HandleFn fn) {
        call_set_ops(op->call, call_ops, op);
        op->waiting = true;
        handle_wait_running_by_id(op->manager, conn_peer(op->call->conn)->uid, op->sandbox_arg, -1, fn, op);
}

bool op_running(Op *op, Handle *h, const Status *st) {
        op->waiting = false;
        op->waiter = NULL;
        op->handle = h;
        if (op->call && !h)
                op_fail(op, st);
        else if (op->call && h->session && !(op->session_id = strdup(h->session->id)))
                op_oom(op);
        if (op->call)
                return true;
        op_maybe_free(op);
        return false;
}

/* ---- ending the call --------------------------------------------------------------- */

void op_finish(Op *op, DaemonFrame *frame) {
        Call *call = TAKE_PTR(op->call);

        if (!call)
                return;
        op->kind->log_end(op, &STATUS_OK);
        call_finish(call, frame);
}

/* Cancel the backend side (once) and the wait. */
static void op_stop(Op *op) {
        if (!op->cancelled && (op->stream || op->backend)) {
                op->cancelled = true;
                if (op->stream)
                        backend_stream_cancel(op->stream);
                if (op->backend)
                        backend_call_cancel(op->backend);
        }
        if (op->waiter)
                handle_waiter_cancel(op->waiter);
}

void op_fail(Op *op, const Status *st) {
        Call *call = TAKE_PTR(op->call);

        op_stop(op);
        if (!call)
                return;
        op->kind->log_end(op, st);
        call_fail(call, st, op_sandbox_id(op));
}

void op_failf(Op *op, grpc_status_code code, const char *fmt, ...) {
        Status st = { .code = code };
        va_list ap;

        va_start(ap, fmt);
        (void)vsnprintf(st.message, sizeof(st.message), fmt, ap);
        va_end(ap);
        op_fail(op, &st);
}

void op_oom(Op *op) {
        op_failf(op, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
}

void op_fail_stream_error(Op *op, const char *what, const char *code, const char *message,
                          const OpErrorCode *map, size_t n_map) {
        grpc_status_code status = GRPC_STATUS_INTERNAL;
        Status st;

        for (size_t i = 0; i < n_map; i++)
                if (streq(code, map[i].code))
                        status = map[i].status;
        status_set(&st, status, "%s stream error: %s", what, message[0] ? message : code);
        (void)snprintf(st.reason, sizeof(st.reason), "%s", code);
        op_fail(op, &st);
}

/* ---- data to the client ------------------------------------------------------------ */

size_t op_chunk_max(const Op *op) {
        return MIN((size_t)OPS_CHUNK_MAX, (size_t)op->manager->config->max_frame_bytes - OPS_FRAME_MARGIN);
}

int op_send(Op *op, DaemonFrame *f) {
        int r = call_send(op->call, f);

        if (r < 0 && r != -EPIPE)
                op_failf(op, GRPC_STATUS_RESOURCE_EXHAUSTED, "output cannot be sent: %s", strerror(-r));
        return r;
}

int op_send_data(Op *op, DaemonFrame *f, ProtobufCBinaryData *slot, const ProtobufCBinaryData *data) {
        size_t max = op_chunk_max(op), n;
        int r;

        for (size_t off = 0; off < data->len; off += n) {
                n = MIN(max, data->len - off);
                *slot = (ProtobufCBinaryData) { .len = n, .data = data->data + off };
                r = op_send(op, f);
                if (r < 0)
                        return r;
        }
        op->credit -= (int64_t)data->len;
        return 0;
}

void op_on_credit(Call *call, uint32_t bytes) {
        Op *op = call->userdata;

        op->credit = MIN(op->credit + (int64_t)bytes, OPS_CREDIT_MAX);
        if (op->kind->pump)
                op->kind->pump(op);
        op_maybe_free(op);
}

void op_on_drain(Call *call) {
        Op *op = call->userdata;

        if (op->kind->pump)
                op->kind->pump(op);
        op_maybe_free(op);
}

void op_on_cancel(Call *call) {
        Op *op = call->userdata;

        op_failf(op, GRPC_STATUS_CANCELLED, "%s",
                 call->conn_gone ? "the client's connection closed" : "cancelled by the client");
        op_maybe_free(op);
}

const CallOps op_output_call_ops = {
        .credit = op_on_credit,
        .cancel = op_on_cancel,
        .drain = op_on_drain,
};

/* ---- the backend stream ------------------------------------------------------------ */

static void op_on_stream_message(void *userdata, ProtobufCMessage *msg) {
        Op *op = userdata;

        op->reading = false;
        if (op->call)
                op->kind->message(op, msg);
        protobuf_c_message_free_unpacked(msg, NULL);
        op->kind->pump(op);
}

static void op_on_stream_end(void *userdata) {
        Op *op = userdata;

        op->reading = false;
}

static void op_on_stream_done(void *userdata, const Status *st) {
        Op *op = userdata;

        op->stream = NULL;
        if (op->call)
                op->kind->done(op, st);
        op_maybe_free(op);
}

static const BackendStreamOps op_stream_ops = {
        .message = op_on_stream_message,
        .end = op_on_stream_end,
        .done = op_on_stream_done,
};

void op_stream_open(Op *op, BackendMethod method, const ProtobufCMessage *first, int64_t timeout_ms) {
        op->stream = backend_stream_open(op->manager->backend, method, first, timeout_ms, &op_stream_ops, op);
}

void op_stream_read(Op *op, bool flow_control) {
        if (!op->stream || op->reading || op->cancelled)
                return;
        if (op->call && flow_control && (op->credit <= 0 || !conn_writable(op->call->conn)))
                return;
        op->reading = true;
        backend_stream_read(op->stream);
}

/* ---- buffers ----------------------------------------------------------------------- */

int op_buf_append(OpBuf *b, const void *data, size_t n, size_t min_cap, size_t max_cap) {
        size_t cap;
        uint8_t *p;

        if (n == 0)
                return 0;
        if (n > b->cap - b->len) {
                cap = MIN(max_cap, MAX(MAX(b->cap * 2, b->len + n), min_cap));
                p = realloc(b->data, cap);
                if (!p)
                        return -ENOMEM;
                b->data = p;
                b->cap = cap;
        }
        memcpy(b->data + b->len, data, n);
        b->len += n;
        return 0;
}
