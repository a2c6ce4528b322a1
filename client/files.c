/*
 * Files in libcwsandbox: a read arrives as FileChunk frames and goes to
 * memory, a file descriptor or the application's callback, with credit
 * granted as each chunk is taken; a write announces its size and sends
 * FileChunk frames no larger than the daemon's frame limit allows, stopping
 * early when the daemon has already refused.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macro.h"
#include "util.h"

#define READ_FILE_WINDOW        (4u * 1024 * 1024)      /* the daemon's initial credit for a read */

/* Where read chunks go: the application's callback, memory or a file descriptor. */
typedef struct ReadSink {
        cws_read_cb cb;                 /* NULL: fd or memory */
        void *userdata;
        int fd;                         /* -1: memory */
        uint8_t *data;
        size_t len, cap;
} ReadSink;

static int sink_put(ReadSink *k, const ProtobufCBinaryData *d, cws_error *err) {
        const uint8_t *p = d->data;
        size_t left = d->len;
        ssize_t n;
        int r;

        if (k->cb) {
                r = left > 0 ? k->cb(p, left, k->userdata) : 0;
                if (r != 0)
                        return cws_fail(err, CWS_CANCELLED, "the read was stopped by its callback (%d)", r);
                k->len += left;
                return 0;
        }

        if (k->fd < 0) {
                if (left + 1 > k->cap - k->len) {
                        size_t cap = MAX(k->cap * 2, k->len + left + 1);
                        uint8_t *q = realloc(k->data, cap);

                        if (!q)
                                return oom(err);
                        k->data = q;
                        k->cap = cap;
                }
                if (left)
                        memcpy(k->data + k->len, p, left);
                k->len += left;
                return 0;
        }
        while (left > 0) {
                n = write(k->fd, p, left);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return cws_fail(err, CWS_INTERNAL, "write to the output: %s", strerror(errno));
                p += n;
                left -= (size_t)n;
        }
        k->len += d->len;
        return 0;
}

static int read_file(cws_conn *c, const char *id, const char *path, ReadSink *sink, cws_error *err) {
        Cwsandboxd__V1__ReadFileRequest req = CWSANDBOXD__V1__READ_FILE_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        DaemonFrame *frame = NULL;
        Call *call = NULL;
        int r;

        if (arg_missing(id) || arg_missing(path))
                return cws_fail(err, CWS_INVALID_ARGUMENT, "read file: sandbox id and path are required");
        req.sandbox_id = (char *)id;
        req.path = (char *)path;
        f.body_case = BODY(READ_FILE);
        f.read_file = &req;
        r = call_new(c, READ_FILE_WINDOW, &call, err);
        if (r != 0)
                return r;
        r = call_send(call, &f, err);
        while (r == 0) {
                r = call_recv(call, -1, &frame, err);
                if (r != 0)
                        break;
                if (frame->error)
                        r = call_frame_error(frame, err);
                else if (frame->body_case == REPLY(FILE_CHUNK)) {
                        r = sink_put(sink, &frame->file_chunk->data, err);
                        call_consumed(call, frame->file_chunk->data.len);
                }
                if (frame->final) {
                        daemon_frame_free(frame);
                        break;
                }
                daemon_frame_free(frame);
        }
        call_free(call);
        if (r == 0)
                cws_ok(err);
        return r;
}

CWS_EXPORT int cws_read_file(cws_conn *c, const char *id, const char *path, void **ret_data, size_t *ret_len,
                             cws_error *err) {
        ReadSink sink = { .fd = -1 };
        int r;

        if (!ret_data)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "ret_data: required");
        r = read_file(c, id, path, &sink, err);
        if (r == 0 && !sink.data && !(sink.data = malloc(1)))
                r = oom(err);
        if (r != 0) {
                free(sink.data);
                return r;
        }
        sink.data[sink.len] = 0;
        *ret_data = sink.data;
        if (ret_len)
                *ret_len = sink.len;
        return 0;
}

CWS_EXPORT int cws_read_file_to_fd(cws_conn *c, const char *id, const char *path, int fd, uint64_t *ret_len,
                                   cws_error *err) {
        ReadSink sink = { .fd = fd };
        int r;

        if (fd < 0)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "fd: invalid");
        r = read_file(c, id, path, &sink, err);
        if (r == 0 && ret_len)
                *ret_len = sink.len;
        return r;
}

CWS_EXPORT int cws_read_file_cb(cws_conn *c, const char *id, const char *path, cws_read_cb cb, void *userdata,
                                uint64_t *ret_len, cws_error *err) {
        ReadSink sink = { .cb = cb, .userdata = userdata, .fd = -1 };
        int r;

        if (!cb)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "read callback: required");
        r = read_file(c, id, path, &sink, err);
        if (r == 0 && ret_len)
                *ret_len = sink.len;
        return r;
}

/* Send @len bytes as FileChunk frames; stops early when the call has ended. */
static int write_chunks(Call *call, const uint8_t *data, size_t len, cws_error *err) {
        Cwsandboxd__V1__FileChunk chunk = CWSANDBOXD__V1__FILE_CHUNK__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        size_t max = call->conn->chunk_max, off = 0, n;
        int r;

        f.body_case = BODY(FILE_CHUNK);
        f.file_chunk = &chunk;
        do {
                if (call_ready(call))
                        return 0;       /* a refusal came: it is read next */
                n = MIN(max, len - off);
                chunk.data = (ProtobufCBinaryData) { .len = n, .data = (uint8_t *)data + off };
                chunk.last = off + n == len;
                r = call_send(call, &f, err);
                if (r != 0)
                        return r;
                off += n;
        } while (off < len);
        return 0;
}

CWS_EXPORT int cws_write_file(cws_conn *c, const char *id, const char *path, const void *data, size_t len,
                              cws_error *err) {
        Cwsandboxd__V1__WriteFileRequest req = CWSANDBOXD__V1__WRITE_FILE_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        DaemonFrame *frame = NULL;
        Call *call = NULL;
        int r;

        if (arg_missing(id) || arg_missing(path) || (!data && len > 0))
                return cws_fail(err, CWS_INVALID_ARGUMENT, "write file: sandbox id, path and data are required");
        req.sandbox_id = (char *)id;
        req.path = (char *)path;
        req.size = len;
        f.body_case = BODY(WRITE_FILE);
        f.write_file = &req;
        r = call_new(c, 0, &call, err);
        if (r != 0)
                return r;
        r = call_send(call, &f, err);
        if (r == 0)
                r = write_chunks(call, data, len, err);
        while (r == 0) {
                r = call_recv(call, -1, &frame, err);
                if (r != 0)
                        break;
                if (frame->error)
                        r = call_frame_error(frame, err);
                else if (frame->final && frame->body_case != REPLY(WRITE_FILE))
                        r = cws_fail(err, CWS_INTERNAL, "unexpected reply from the daemon to a file write");
                if (frame->final) {
                        daemon_frame_free(frame);
                        break;
                }
                daemon_frame_free(frame);
        }
        call_free(call);
        if (r == 0)
                cws_ok(err);
        return r;
}

CWS_EXPORT int cws_write_file_from_fd(cws_conn *c, const char *id, const char *path, int fd, cws_error *err) {
        _cleanup_free_ uint8_t *buf = NULL;
        size_t len = 0, cap = 0;
        struct stat st;
        ssize_t n;

        if (fd < 0)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "fd: invalid");
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0)
                cap = (size_t)st.st_size + 1;
        for (;;) {
                if (len == cap) {
                        size_t ncap = MAX(cap * 2, (size_t)64 * 1024);
                        uint8_t *p = realloc(buf, ncap);

                        if (!p)
                                return oom(err);
                        buf = p;
                        cap = ncap;
                } else if (!buf && !(buf = malloc(cap)))
                        return oom(err);
                n = read(fd, buf + len, cap - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return cws_fail(err, CWS_INTERNAL, "read the input: %s", strerror(errno));
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        return cws_write_file(c, id, path, buf, len, err);
}
