/*
 * Files: read_file and write_file in a running sandbox, over the backend's
 * unary ReadFile and WriteFile, which carry a file's whole content in one
 * message. Both resolve the sandbox for the caller's uid and wait until it
 * runs, then make one backend call with the session's request timeout.
 *
 * read_file: a file above max_file_bytes is RESOURCE_EXHAUSTED
 * (CWSANDBOX_FILE_TOO_LARGE). The content goes to the client as FileChunk
 * frames of at most 1 MiB, the last one with last = true (an empty file is
 * one empty chunk), then an empty final frame. The chunks use credit: a read
 * starts with READ_CREDIT_INITIAL bytes, and the client must send Credit to
 * get more; chunks also wait while the connection is full.
 *
 * write_file: the request names the size up front; above max_file_bytes it
 * is refused before any data is taken. The client then sends FileChunk
 * frames carrying exactly that many bytes, the last with last = true (an
 * empty file is one empty chunk with last). The sandbox wait runs while the
 * chunks arrive; WriteFile goes out once both are done. The final frame is a
 * WriteFileReply.
 *
 * A Cancel or a closed connection ends the call at once with CANCELLED and
 * cancels the backend call in flight; the operation's memory goes when its
 * handle wait and backend call have both returned.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handle.h"
#include "log.h"
#include "ops.h"

#define FILE_CHUNK_MAX          (1024u * 1024)
#define FILE_FRAME_MARGIN       256u            /* frame fields around a chunk */
#define READ_CREDIT_INITIAL     (INT64_C(4) * 1024 * 1024)
#define READ_CREDIT_MAX         (INT64_C(1) << 40)

typedef Coreweave__Sandbox__V1__ReadFileResponse ReadFileResponse;

/* What reads and writes share: the call, the wait, the backend call. */
typedef struct FileOp {
        Manager *manager;
        Call *call;                     /* NULL once the client's call has ended */
        char *sandbox_arg;              /* the id the client gave */
        char *path;
        Handle *handle;                 /* the operation's reference, once running */
        BackendCall *backend;           /* in flight */
        bool waiting;                   /* the handle wait has not returned */
        void (*free)(struct FileOp *op);
} FileOp;

typedef struct ReadOp {
        FileOp op;
        ReadFileResponse *reply;
        size_t offset;
        bool sent_last;
        int64_t credit;
} ReadOp;

typedef struct WriteOp {
        FileOp op;
        uint64_t size;
        uint8_t *data;
        size_t len, cap;
        bool complete;                  /* the chunk with last has come */
} WriteOp;

/* ---- shared ---------------------------------------------------------------------------- */

static int file_op_init(FileOp *op, Manager *m, Call *call, const char *sandbox_id, const char *path,
                        void (*free_fn)(FileOp *op)) {
        op->manager = m;
        op->call = call;
        op->free = free_fn;
        op->sandbox_arg = strdup(sandbox_id);
        op->path = strdup(path);
        return op->sandbox_arg && op->path ? 0 : -ENOMEM;
}

static void file_op_deinit(FileOp *op) {
        if (op->handle)
                handle_unref(op->handle);
        free(op->sandbox_arg);
        free(op->path);
}

static void file_op_maybe_free(FileOp *op) {
        if (!op->call && !op->waiting && !op->backend)
                op->free(op);
}

static const char *file_op_sandbox_id(const FileOp *op) {
        return op->handle && op->handle->sandbox_id ? op->handle->sandbox_id : op->sandbox_arg;
}

static void file_op_finish(FileOp *op, DaemonFrame *frame) {
        Call *call = TAKE_PTR(op->call);

        if (call)
                call_finish(call, frame);
}

static void file_op_fail(FileOp *op, const Status *st) {
        Call *call = TAKE_PTR(op->call);

        if (!call)
                return;
        if (st->code != GRPC_STATUS_CANCELLED)
                log_full(LOG_LEVEL_INFO, NULL, file_op_sandbox_id(op), "%s", st->message);
        if (op->backend)
                backend_call_cancel(op->backend);
        call_fail(call, st, file_op_sandbox_id(op));
}

static void file_op_oom(FileOp *op) {
        Status st;

        status_set(&st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        file_op_fail(op, &st);
}

static void file_op_on_cancel(Call *call) {
        FileOp *op = call->userdata;
        Status st;

        status_set(&st, GRPC_STATUS_CANCELLED, "%s",
                   call->conn_gone ? "the client's connection closed" : "cancelled by the client");
        file_op_fail(op, &st);
        file_op_maybe_free(op);
}

static void file_too_large(FileOp *op, const char *what, uint64_t size) {
        Status st;

        status_set(&st, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s %s: %" PRIu64 " bytes is more than the limit of %" PRIu64,
                   what, op->path, size, op->manager->config->max_file_bytes);
        strcpy(st.reason, "CWSANDBOX_FILE_TOO_LARGE");
        file_op_fail(op, &st);
}

/* The handle wait has returned: true if the operation goes on with @h. */
static bool file_op_running(FileOp *op, Handle *h, const Status *st) {
        op->waiting = false;
        op->handle = h;
        if (op->call && !h)
                file_op_fail(op, st);
        if (!op->call) {
                file_op_maybe_free(op);
                return false;
        }
        return true;
}

/* ---- read ------------------------------------------------------------------------------ */

static void read_op_free(FileOp *op) {
        ReadOp *r = container_of(op, ReadOp, op);

        if (r->reply)
                protobuf_c_message_free_unpacked(&r->reply->base, NULL);
        file_op_deinit(op);
        free(r);
}

/* Send chunks while credit lasts and the connection takes them. */
static void read_pump(ReadOp *r) {
        Cwsandboxd__V1__FileChunk chunk = CWSANDBOXD__V1__FILE_CHUNK__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        size_t max = MIN((size_t)FILE_CHUNK_MAX, (size_t)r->op.manager->config->max_frame_bytes - FILE_FRAME_MARGIN);
        const ProtobufCBinaryData *content;
        size_t n;
        int k;

        if (!r->reply)
                return;
        content = &r->reply->content;
        f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_FILE_CHUNK;
        f.file_chunk = &chunk;
        while (r->op.call && !r->sent_last && r->credit > 0 && conn_writable(r->op.call->conn)) {
                n = MIN(max, content->len - r->offset);
                chunk.data = (ProtobufCBinaryData) { .len = n, .data = n ? content->data + r->offset : NULL };
                chunk.last = r->offset + n == content->len;
                k = call_send(r->op.call, &f);
                if (k == -EPIPE)
                        return;         /* the connection is gone; cancel follows */
                if (k < 0) {
                        file_op_oom(&r->op);
                        return;
                }
                r->offset += n;
                r->credit -= (int64_t)n;
                r->sent_last = chunk.last;
        }
        if (r->sent_last)
                file_op_finish(&r->op, NULL);
}

static void read_on_credit(Call *call, uint32_t bytes) {
        ReadOp *r = call->userdata;

        r->credit = MIN(r->credit + (int64_t)bytes, READ_CREDIT_MAX);
        read_pump(r);
        file_op_maybe_free(&r->op);
}

static void read_on_drain(Call *call) {
        ReadOp *r = call->userdata;

        read_pump(r);
        file_op_maybe_free(&r->op);
}

static const CallOps read_call_ops = {
        .credit = read_on_credit,
        .cancel = file_op_on_cancel,
        .drain = read_on_drain,
};

static void read_on_reply(void *userdata, const Status *st, ProtobufCMessage *reply) {
        ReadOp *r = userdata;
        Status err = *st;

        r->op.backend = NULL;
        if (!r->op.call) {
                if (reply)
                        protobuf_c_message_free_unpacked(reply, NULL);
        } else if (!status_ok(st)) {
                status_prefix(&err, "read file %s", r->op.path);
                file_op_fail(&r->op, &err);
        } else {
                r->reply = (ReadFileResponse *)reply;
                if (r->reply->content.len > r->op.manager->config->max_file_bytes)
                        file_too_large(&r->op, "read file", r->reply->content.len);
                else
                        read_pump(r);
        }
        file_op_maybe_free(&r->op);
}

static void read_on_running(void *userdata, Handle *h, const Status *st) {
        Coreweave__Sandbox__V1__ReadFileRequest req = COREWEAVE__SANDBOX__V1__READ_FILE_REQUEST__INIT;
        ReadOp *r = userdata;

        if (!file_op_running(&r->op, h, st))
                return;
        req.sandbox_id = h->sandbox_id;
        req.path = r->op.path;
        log_full(LOG_LEVEL_DEBUG, NULL, h->sandbox_id, "read file %s", r->op.path);
        r->op.backend = backend_call(r->op.manager->backend, BACKEND_READ_FILE, &req.base,
                                     handle_request_timeout_ms(h), read_on_reply, r);
}

void ops_read_file(Manager *m, Call *call, const Cwsandboxd__V1__ReadFileRequest *req) {
        ReadOp *r;
        Status st;

        if (!req->path[0]) {
                status_set(&st, GRPC_STATUS_INVALID_ARGUMENT, "path: required");
                call_fail(call, &st, req->sandbox_id);
                return;
        }
        r = calloc(1, sizeof(*r));
        if (!r || file_op_init(&r->op, m, call, req->sandbox_id, req->path, read_op_free) < 0) {
                if (r)
                        read_op_free(&r->op);
                status_set(&st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                call_fail(call, &st, req->sandbox_id);
                return;
        }
        r->credit = READ_CREDIT_INITIAL;
        r->op.waiting = true;
        call_set_ops(call, &read_call_ops, r);
        handle_wait_running_by_id(m, conn_peer(call->conn)->uid, req->sandbox_id, -1, read_on_running, r);
}

/* ---- write ----------------------------------------------------------------------------- */

static void write_op_free(FileOp *op) {
        WriteOp *w = container_of(op, WriteOp, op);

        free(w->data);
        file_op_deinit(op);
        free(w);
}

static void write_on_reply(void *userdata, const Status *st, ProtobufCMessage *reply) {
        Cwsandboxd__V1__WriteFileReply out = CWSANDBOXD__V1__WRITE_FILE_REPLY__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        WriteOp *w = userdata;
        Status err = *st;

        w->op.backend = NULL;
        if (reply)
                protobuf_c_message_free_unpacked(reply, NULL);
        if (!status_ok(st)) {
                status_prefix(&err, "write file %s", w->op.path);
                file_op_fail(&w->op, &err);
        } else {
                out.bytes_written = w->size;
                f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_WRITE_FILE;
                f.write_file = &out;
                file_op_finish(&w->op, &f);
        }
        file_op_maybe_free(&w->op);
}

/* Both the content and the sandbox are ready: write. */
static void write_send(WriteOp *w) {
        Coreweave__Sandbox__V1__WriteFileRequest req = COREWEAVE__SANDBOX__V1__WRITE_FILE_REQUEST__INIT;
        Handle *h = w->op.handle;

        req.sandbox_id = h->sandbox_id;
        req.path = w->op.path;
        req.content = (ProtobufCBinaryData) { .len = w->len, .data = w->data };
        log_full(LOG_LEVEL_DEBUG, NULL, h->sandbox_id, "write file %s: %zu bytes", w->op.path, w->len);
        w->op.backend = backend_call(w->op.manager->backend, BACKEND_WRITE_FILE, &req.base,
                                     handle_request_timeout_ms(h), write_on_reply, w);
        /* Packed at once: the copy here is no longer needed. */
        free(TAKE_PTR(w->data));
        w->cap = 0;
}

static int write_append(WriteOp *w, const ProtobufCBinaryData *data) {
        size_t cap;
        uint8_t *p;

        if (data->len == 0)
                return 0;
        if (data->len <= w->cap - w->len) {
                memcpy(w->data + w->len, data->data, data->len);
                w->len += data->len;
                return 0;
        }
        /* Grow as data comes, not by the announced size: a client that
         * announces much and sends little holds little. */
        cap = MIN((size_t)w->size, MAX(w->cap * 2, MAX(w->len + data->len, (size_t)64 * 1024)));
        p = realloc(w->data, cap);
        if (!p)
                return -ENOMEM;
        w->data = p;
        w->cap = cap;
        memcpy(w->data + w->len, data->data, data->len);
        w->len += data->len;
        return 0;
}

static void write_on_input(Call *call, const ClientFrame *f) {
        WriteOp *w = call->userdata;
        const Cwsandboxd__V1__FileChunk *chunk = f->file_chunk;
        Status st;

        if (f->body_case != CWSANDBOXD__V1__CLIENT_FRAME__BODY_FILE_CHUNK || w->complete) {
                status_set(&st, GRPC_STATUS_INVALID_ARGUMENT, "write file %s: %s", w->op.path,
                           w->complete ? "a chunk after the last one" : "exec input is not a file chunk");
                file_op_fail(&w->op, &st);
        } else if (chunk->data.len > w->size - w->len) {
                status_set(&st, GRPC_STATUS_INVALID_ARGUMENT,
                           "write file %s: more than the announced %" PRIu64 " bytes", w->op.path, w->size);
                file_op_fail(&w->op, &st);
        } else if (chunk->last && w->len + chunk->data.len != w->size) {
                status_set(&st, GRPC_STATUS_INVALID_ARGUMENT, "write file %s: %zu bytes, %" PRIu64 " announced",
                           w->op.path, w->len + chunk->data.len, w->size);
                file_op_fail(&w->op, &st);
        } else if (write_append(w, &chunk->data) < 0)
                file_op_oom(&w->op);
        else if (chunk->last) {
                w->complete = true;
                if (w->op.handle)
                        write_send(w);
        }
        file_op_maybe_free(&w->op);
}

static const CallOps write_call_ops = {
        .input = write_on_input,
        .cancel = file_op_on_cancel,
};

static void write_on_running(void *userdata, Handle *h, const Status *st) {
        WriteOp *w = userdata;

        if (!file_op_running(&w->op, h, st))
                return;
        if (w->complete)
                write_send(w);
}

void ops_write_file(Manager *m, Call *call, const Cwsandboxd__V1__WriteFileRequest *req) {
        WriteOp *w;
        Status st;

        if (!req->path[0]) {
                status_set(&st, GRPC_STATUS_INVALID_ARGUMENT, "path: required");
                call_fail(call, &st, req->sandbox_id);
                return;
        }
        w = calloc(1, sizeof(*w));
        if (!w || file_op_init(&w->op, m, call, req->sandbox_id, req->path, write_op_free) < 0) {
                if (w)
                        write_op_free(&w->op);
                status_set(&st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                call_fail(call, &st, req->sandbox_id);
                return;
        }
        w->size = req->size;
        if (req->size > m->config->max_file_bytes) {
                file_too_large(&w->op, "write file", req->size);
                write_op_free(&w->op);
                return;
        }
        w->op.waiting = true;
        call_set_ops(call, &write_call_ops, w);
        handle_wait_running_by_id(m, conn_peer(call->conn)->uid, req->sandbox_id, -1, write_on_running, w);
}
