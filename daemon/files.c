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
#include "ops-internal.h"

#define READ_CREDIT_INITIAL     (INT64_C(4) * 1024 * 1024)
#define WRITE_BUF_MIN           (64u * 1024)

typedef Coreweave__Sandbox__V1__ReadFileResponse ReadFileResponse;

/* What reads and writes share: the operation and the path. */
typedef struct FileOp {
        Op op;
        char *path;
} FileOp;

typedef struct ReadOp {
        FileOp file;
        ReadFileResponse *reply;
        size_t offset;
        bool sent_last;
} ReadOp;

typedef struct WriteOp {
        FileOp file;
        uint64_t size;
        OpBuf buf;
        bool complete;                  /* the chunk with last has come */
} WriteOp;

/* ---- shared ---------------------------------------------------------------------------- */

/* A FileOp of @size bytes for @path; NULL after failing the call. */
static FileOp *file_op_new(size_t size, const OpKind *kind, Manager *m, Call *call, const char *sandbox_id,
                           const char *path) {
        FileOp *f;
        Op *op;
        Status st;

        if (!path[0]) {
                status_set(&st, GRPC_STATUS_INVALID_ARGUMENT, "path: required");
                call_fail(call, &st, sandbox_id);
                return NULL;
        }
        op = op_new(size, kind, m, call, sandbox_id);
        if (!op)
                return NULL;
        f = container_of(op, FileOp, op);
        if (!(f->path = strdup(path))) {
                op_oom(op);
                op_maybe_free(op);
                return NULL;
        }
        return f;
}

/* A finished call is not logged; a cancel is the client's own doing. */
static void file_log_end(const Op *op, const Status *st) {
        if (!status_ok(st) && st->code != GRPC_STATUS_CANCELLED)
                log_full(LOG_LEVEL_INFO, op->session_id, op_sandbox_id(op), "%s", st->message);
}

static void file_too_large(FileOp *f, const char *what, uint64_t size) {
        Status st;

        status_set(&st, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s %s: %" PRIu64 " bytes is more than the limit of %" PRIu64,
                   what, f->path, size, f->op.manager->config->max_file_bytes);
        strcpy(st.reason, "CWSANDBOX_FILE_TOO_LARGE");
        op_fail(&f->op, &st);
}

/* ---- read ------------------------------------------------------------------------------ */

static void read_release(Op *op) {
        ReadOp *r = container_of(op, ReadOp, file.op);

        if (r->reply)
                protobuf_c_message_free_unpacked(&r->reply->base, NULL);
        free(r->file.path);
}

/* Send chunks while credit lasts and the connection takes them. */
static void read_pump(Op *op) {
        Cwsandboxd__V1__FileChunk chunk = CWSANDBOXD__V1__FILE_CHUNK__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        ReadOp *r = container_of(op, ReadOp, file.op);
        size_t max = op_chunk_max(op);
        const ProtobufCBinaryData *content;
        size_t n;

        if (!r->reply)
                return;
        content = &r->reply->content;
        f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_FILE_CHUNK;
        f.file_chunk = &chunk;
        while (op->call && !r->sent_last && op->credit > 0 && conn_writable(op->call->conn)) {
                n = MIN(max, content->len - r->offset);
                chunk.data = (ProtobufCBinaryData) { .len = n, .data = n ? content->data + r->offset : NULL };
                chunk.last = r->offset + n == content->len;
                if (op_send(op, &f) < 0)
                        return;
                r->offset += n;
                op->credit -= (int64_t)n;
                r->sent_last = chunk.last;
        }
        if (r->sent_last)
                op_finish(op, NULL);
}

static const OpKind read_kind = {
        .log_end = file_log_end,
        .pump = read_pump,
        .release = read_release,
};

static void read_on_reply(void *userdata, const Status *st, ProtobufCMessage *reply) {
        ReadOp *r = container_of(userdata, ReadOp, file.op);
        Status err = *st;

        r->file.op.backend = NULL;
        if (!r->file.op.call) {
                if (reply)
                        protobuf_c_message_free_unpacked(reply, NULL);
        } else if (!status_ok(st)) {
                status_prefix(&err, "read file %s", r->file.path);
                op_fail(&r->file.op, &err);
        } else {
                r->reply = (ReadFileResponse *)reply;
                if (r->reply->content.len > r->file.op.manager->config->max_file_bytes)
                        file_too_large(&r->file, "read file", r->reply->content.len);
                else {
                        r->file.op.manager->metrics.file_bytes_read += r->reply->content.len;
                        read_pump(&r->file.op);
                }
        }
        op_maybe_free(&r->file.op);
}

static void read_on_running(void *userdata, Handle *h, const Status *st) {
        Coreweave__Sandbox__V1__ReadFileRequest req = COREWEAVE__SANDBOX__V1__READ_FILE_REQUEST__INIT;
        FileOp *f = container_of(userdata, FileOp, op);

        if (!op_running(&f->op, h, st))
                return;
        req.sandbox_id = h->sandbox_id;
        req.path = f->path;
        log_full(LOG_LEVEL_DEBUG, NULL, h->sandbox_id, "read file %s", f->path);
        f->op.backend = backend_call(f->op.manager->backend, BACKEND_READ_FILE, &req.base,
                                     handle_request_timeout_ms(h), read_on_reply, &f->op);
}

void ops_read_file(Manager *m, Call *call, const Cwsandboxd__V1__ReadFileRequest *req) {
        FileOp *f = file_op_new(sizeof(ReadOp), &read_kind, m, call, req->sandbox_id, req->path);

        if (!f)
                return;
        f->op.credit = READ_CREDIT_INITIAL;
        op_wait_running(&f->op, &op_output_call_ops, read_on_running);
}

/* ---- write ----------------------------------------------------------------------------- */

static void write_release(Op *op) {
        WriteOp *w = container_of(op, WriteOp, file.op);

        free(w->buf.data);
        free(w->file.path);
}

static void write_on_reply(void *userdata, const Status *st, ProtobufCMessage *reply) {
        Cwsandboxd__V1__WriteFileReply out = CWSANDBOXD__V1__WRITE_FILE_REPLY__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        WriteOp *w = container_of(userdata, WriteOp, file.op);
        Status err = *st;

        w->file.op.backend = NULL;
        if (reply)
                protobuf_c_message_free_unpacked(reply, NULL);
        if (!status_ok(st)) {
                status_prefix(&err, "write file %s", w->file.path);
                op_fail(&w->file.op, &err);
        } else {
                out.bytes_written = w->size;
                w->file.op.manager->metrics.file_bytes_written += w->size;
                f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_WRITE_FILE;
                f.write_file = &out;
                op_finish(&w->file.op, &f);
        }
        op_maybe_free(&w->file.op);
}

/* Both the content and the sandbox are ready: write. */
static void write_send(WriteOp *w) {
        Coreweave__Sandbox__V1__WriteFileRequest req = COREWEAVE__SANDBOX__V1__WRITE_FILE_REQUEST__INIT;
        Handle *h = w->file.op.handle;

        req.sandbox_id = h->sandbox_id;
        req.path = w->file.path;
        req.content = (ProtobufCBinaryData) { .len = w->buf.len, .data = w->buf.data };
        log_full(LOG_LEVEL_DEBUG, NULL, h->sandbox_id, "write file %s: %zu bytes", w->file.path, w->buf.len);
        w->file.op.backend = backend_call(w->file.op.manager->backend, BACKEND_WRITE_FILE, &req.base,
                                          handle_request_timeout_ms(h), write_on_reply, &w->file.op);
        /* Packed at once: the copy here is no longer needed. */
        free(TAKE_PTR(w->buf.data));
        w->buf.cap = 0;
}

static void write_on_input(Call *call, const ClientFrame *f) {
        WriteOp *w = container_of(call->userdata, WriteOp, file.op);
        const Cwsandboxd__V1__FileChunk *chunk = f->file_chunk;
        Op *op = &w->file.op;

        /* The buffer grows as data comes, not by the announced size: a
         * client that announces much and sends little holds little. */
        if (f->body_case != CWSANDBOXD__V1__CLIENT_FRAME__BODY_FILE_CHUNK || w->complete)
                op_failf(op, GRPC_STATUS_INVALID_ARGUMENT, "write file %s: %s", w->file.path,
                         w->complete ? "a chunk after the last one" : "exec input is not a file chunk");
        else if (chunk->data.len > w->size - w->buf.len)
                op_failf(op, GRPC_STATUS_INVALID_ARGUMENT, "write file %s: more than the announced %" PRIu64 " bytes",
                         w->file.path, w->size);
        else if (chunk->last && w->buf.len + chunk->data.len != w->size)
                op_failf(op, GRPC_STATUS_INVALID_ARGUMENT, "write file %s: %zu bytes, %" PRIu64 " announced",
                         w->file.path, w->buf.len + chunk->data.len, w->size);
        else if (op_buf_append(&w->buf, chunk->data.data, chunk->data.len, WRITE_BUF_MIN, w->size) < 0)
                op_oom(op);
        else if (chunk->last) {
                w->complete = true;
                if (op->handle)
                        write_send(w);
        }
        op_maybe_free(op);
}

static const OpKind write_kind = {
        .log_end = file_log_end,
        .release = write_release,
};

static const CallOps write_call_ops = {
        .input = write_on_input,
        .cancel = op_on_cancel,
};

static void write_on_running(void *userdata, Handle *h, const Status *st) {
        WriteOp *w = container_of(userdata, WriteOp, file.op);

        if (!op_running(&w->file.op, h, st))
                return;
        if (w->complete)
                write_send(w);
}

void ops_write_file(Manager *m, Call *call, const Cwsandboxd__V1__WriteFileRequest *req) {
        FileOp *f = file_op_new(sizeof(WriteOp), &write_kind, m, call, req->sandbox_id, req->path);
        WriteOp *w;

        if (!f)
                return;
        w = container_of(f, WriteOp, file);
        w->size = req->size;
        if (req->size > m->config->max_file_bytes) {
                file_too_large(f, "write file", req->size);
                op_maybe_free(&f->op);
                return;
        }
        op_wait_running(&f->op, &write_call_ops, write_on_running);
}
