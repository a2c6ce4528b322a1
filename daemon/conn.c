/*
 * Conn: one client connection of the local socket server, and its calls.
 * See server.h for the contract and server-internal.h for ownership.
 *
 * Disconnect happens in two steps. conn_disconnect() only sets flags (the
 * connection is no longer counted, every call is conn_gone, sends fail) and
 * starts uv_close(); it calls nothing of the layer above, so it is safe from
 * anywhere, including from inside a handler. The close callback, which runs
 * from the loop and never inside another callback of ours, then delivers
 * cancel to every call not cancelled yet and, after the cancels, the
 * conn_gone callback (so handlers may still use conn_get_data() in cancel).
 * conn_gone runs only for connections that completed Hello: no other can
 * have made a call. server_close() uses a slower first step: the flags, then
 * uv_shutdown(), so that what is queued is written before uv_close() (the
 * flush timer in server.c bounds the wait for a peer that does not read).
 *
 * A call is detached by setting conn_gone: from then on it is not found by
 * id, gets no drain, and call_send()/call_finish() send nothing. That
 * happens to every call when its connection goes, and to the calls still in
 * flight when a drain runs out of time, on a connection that stays open:
 * those get their final error frame first. While the server drains, a new
 * request is answered with UNAVAILABLE instead of being dispatched.
 *
 * Walks over a connection's calls that call into the layer above (cancel,
 * drain) keep a cursor on the connection; unlinking a call advances every
 * cursor that points at it, so a handler may finish any call meanwhile.
 *
 * Output: each frame is one buffer (header and payload) and one uv_write().
 * Above SERVER_WRITE_HIGH_WATER queued bytes the connection is full: it stops
 * reading requests (so even calls answered at once cannot queue replies
 * without bound) and streaming calls wait; below half of it, reading resumes
 * and the calls with a drain hook are told, until one fills it again (the
 * next round starts with the call that was not reached).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "macro.h"
#include "retry.h"
#include "server-internal.h"

typedef Cwsandboxd__V1__Error ErrorPb;
typedef Cwsandboxd__V1__HelloReply HelloReply;

typedef struct WriteReq {
        uv_write_t req;
        Conn *conn;
        size_t len;
        uint8_t data[];
} WriteReq;

static const char *const server_features[] = {
        "sessions", "exec-stream", "files", "logs", "credit",
};

/* Keep a client-chosen name printable and short: it goes into log lines. */
static void client_name_copy(char *dst, size_t size, const char *src) {
        size_t i;

        for (i = 0; src && src[i] && i + 1 < size; i++)
                dst[i] = src[i] >= 0x20 && src[i] < 0x7f ? src[i] : '?';
        dst[i] = 0;
}

/* ---- calls of a connection ------------------------------------------------------- */

/* Open, and not yet told to go: requests and replies still flow. */
static bool conn_alive(const Conn *c) {
        return c->phase == CONN_PHASE_HELLO || c->phase == CONN_PHASE_READY;
}

/* The call in flight with @id; detached calls keep their id but are not in flight. */
static Call *conn_find_call(const Conn *c, uint64_t id) {
        for (Call *call = c->calls; call; call = call->next_in_conn)
                if (call->id == id && !call->conn_gone)
                        return call;
        return NULL;
}

static void conn_link_call(Conn *c, Call *call) {
        call->prev_in_conn = NULL;
        call->next_in_conn = c->calls;
        if (c->calls)
                c->calls->prev_in_conn = call;
        c->calls = call;
        c->n_calls++;
        c->refs++;
        c->server->n_calls++;
}

/* No longer in flight: nothing more reaches the client. Idempotent. */
static void call_detach(Call *call) {
        Server *s;

        if (call->conn_gone)
                return;
        s = call->conn->server;
        call->conn_gone = true;
        s->n_calls--;
        server_calls_ended(s);
}

static void conn_unlink_call(Conn *c, Call *call) {
        for (CallCursor *cur = c->cursors; cur; cur = cur->up)
                if (cur->next == call)
                        cur->next = call->next_in_conn;
        if (call->prev_in_conn)
                call->prev_in_conn->next_in_conn = call->next_in_conn;
        else
                c->calls = call->next_in_conn;
        if (call->next_in_conn)
                call->next_in_conn->prev_in_conn = call->prev_in_conn;
        call->next_in_conn = call->prev_in_conn = NULL;
        c->n_calls--;
}

/* Make @first the head, moving the calls before it to the tail. */
static void conn_rotate_calls(Conn *c, Call *first) {
        Call *tail;

        if (c->cursors || !first->prev_in_conn)
                return;
        for (tail = first; tail->next_in_conn; tail = tail->next_in_conn)
                ;
        first->prev_in_conn->next_in_conn = NULL;
        tail->next_in_conn = c->calls;
        c->calls->prev_in_conn = tail;
        first->prev_in_conn = NULL;
        c->calls = first;
}

static void conn_unref(Conn *c) {
        if (--c->refs > 0)
                return;
        frame_decoder_deinit(&c->decoder);
        free(c);
}

static void call_free(Call *call) {
        Conn *c = call->conn;

        call_detach(call);
        conn_unlink_call(c, call);
        free(call);
        conn_unref(c);
}

/* ---- writing ---------------------------------------------------------------------- */

static void conn_read_resume(Conn *c);

static void conn_drain_calls(Conn *c) {
        CallCursor cur = { .next = c->calls, .up = c->cursors };
        Call *call;

        c->cursors = &cur;
        while (!c->full && conn_alive(c) && (call = cur.next)) {
                cur.next = call->next_in_conn;
                if (!call->conn_gone && call->ops && call->ops->drain)
                        call->ops->drain(call);
        }
        c->cursors = cur.up;
        if (cur.next)
                conn_rotate_calls(c, cur.next);
}

static void conn_on_write(uv_write_t *req, int status) {
        WriteReq *w = container_of(req, WriteReq, req);
        Conn *c = w->conn;

        c->queued -= w->len;
        free(w);

        if (status < 0) {
                /* ECANCELED: the socket is being closed, nothing to add. */
                if (status != UV_ECANCELED) {
                        log_debug(CONN_FMT ": write failed: %s", CONN_ARGS(c), uv_strerror(status));
                        conn_disconnect(c);
                }
                return;
        }

        if (c->full && c->queued < SERVER_WRITE_HIGH_WATER / 2 && conn_alive(c)) {
                c->full = false;
                conn_drain_calls(c);
                if (!c->full)
                        conn_read_resume(c);
        }
}

/*
 * Pack @f behind its header into one buffer and queue it.
 * Returns 0, -EPIPE (connection gone), -EMSGSIZE (above the frame limit) or
 * -ENOMEM.
 */
static int conn_queue(Conn *c, const DaemonFrame *f) {
        WriteReq *w;
        uv_buf_t buf;
        size_t len;
        int r;

        if (!conn_alive(c))
                return -EPIPE;

        len = cwsandboxd__v1__daemon_frame__get_packed_size(f);
        if (len > c->server->max_frame)
                return -EMSGSIZE;

        w = malloc(sizeof(*w) + FRAME_HEADER_SIZE + len);
        if (!w)
                return -ENOMEM;
        (void)frame_encode_header(w->data, len);
        (void)cwsandboxd__v1__daemon_frame__pack(f, w->data + FRAME_HEADER_SIZE);
        w->conn = c;
        w->len = FRAME_HEADER_SIZE + len;

        buf = uv_buf_init((char *)w->data, (unsigned)w->len);
        r = uv_write(&w->req, (uv_stream_t *)&c->pipe, &buf, 1, conn_on_write);
        if (r < 0) {
                log_debug(CONN_FMT ": write failed: %s", CONN_ARGS(c), uv_strerror(r));
                free(w);
                conn_disconnect(c);
                return -EPIPE;
        }

        c->queued += w->len;
        if (!c->full && c->queued > SERVER_WRITE_HIGH_WATER) {
                c->full = true;
                if (c->reading) {
                        (void)uv_read_stop((uv_stream_t *)&c->pipe);
                        c->reading = false;
                }
        }
        return 0;
}

/* An error frame for @call_id (0: the connection), final. */
static void conn_send_error(Conn *c, uint64_t call_id, grpc_status_code code, const char *message) {
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        ErrorPb e = CWSANDBOXD__V1__ERROR__INIT;
        int r;

        e.code = code;
        e.message = (char *)message;
        e.retryable = retry_classify(code, NULL) == RETRY_TRANSIENT;
        f.call_id = call_id;
        f.final = true;
        f.error = &e;
        r = conn_queue(c, &f);
        if (r < 0 && r != -EPIPE)
                log_warning(CONN_FMT ": cannot send an error frame: %s", CONN_ARGS(c), strerror(-r));
}

/* A frame we answer with an error for its call id; the connection goes on. */
_printf_(4, 5)
static void conn_reject(Conn *c, uint64_t call_id, grpc_status_code code, const char *fmt, ...) {
        char msg[256];
        va_list ap;

        va_start(ap, fmt);
        (void)vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        log_warning(CONN_FMT ": call %" PRIu64 ": %s", CONN_ARGS(c), call_id, msg);
        conn_send_error(c, call_id, code, msg);
}

/* A protocol violation: an error frame with call id 0, then the connection ends. */
_printf_(3, 4)
static void conn_violation(Conn *c, grpc_status_code code, const char *fmt, ...) {
        char msg[256];
        va_list ap;

        va_start(ap, fmt);
        (void)vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        log_warning(CONN_FMT ": %s; closing the connection", CONN_ARGS(c), msg);
        conn_send_error(c, 0, code, msg);
        conn_disconnect(c);
}

/* ---- closing ------------------------------------------------------------------------ */

/* Every live call not cancelled yet gets cancel (the connection is gone). */
static void conn_cancel_calls(Conn *c) {
        CallCursor cur = { .next = c->calls, .up = c->cursors };
        Call *call;

        c->cursors = &cur;
        while ((call = cur.next)) {
                cur.next = call->next_in_conn;
                if (call->cancelled)
                        continue;
                call->cancelled = true;
                if (call->ops && call->ops->cancel)
                        call->ops->cancel(call);
        }
        c->cursors = cur.up;
}

static void conn_on_close(uv_handle_t *h) {
        Conn *c = container_of((uv_pipe_t *)h, Conn, pipe);
        Server *s = c->server;

        conn_cancel_calls(c);
        if (c->greeted && s->conn_gone)
                s->conn_gone(s->userdata, c);

        if (c->prev)
                c->prev->next = c->next;
        else
                s->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        c->next = c->prev = NULL;
        c->server = NULL;
        /* The calls may live on; the decoder's memory need not. */
        frame_decoder_deinit(&c->decoder);

        s->n_handles--;
        conn_unref(c);
        server_maybe_done(s);
}

/* The flags of a connection that goes: not counted, calls detached, no reading. */
static void conn_retire(Conn *c) {
        if (!conn_alive(c))
                return;
        c->phase = CONN_PHASE_FLUSHING;
        if (c->counted) {
                c->counted = false;
                c->server->n_conns--;
        }
        for (Call *call = c->calls; call; call = call->next_in_conn)
                call_detach(call);
        if (c->reading) {
                (void)uv_read_stop((uv_stream_t *)&c->pipe);
                c->reading = false;
        }
}

/*
 * End the connection: flags now, callbacks of the layer above from the
 * close callback. Frames queued so far have been offered to the kernel by
 * uv_write() (which writes at once when it can); whatever it did not take
 * is dropped, since the peer is not reading.
 */
void conn_disconnect(Conn *c) {
        if (c->phase == CONN_PHASE_CLOSING)
                return;
        conn_retire(c);
        c->phase = CONN_PHASE_CLOSING;
        log_debug(CONN_FMT ": disconnected", CONN_ARGS(c));
        uv_close((uv_handle_t *)&c->pipe, conn_on_close);
}

/* Everything queued is written (or the socket is being closed: ECANCELED). */
static void conn_on_shutdown(uv_shutdown_t *req, int status) {
        Conn *c = container_of(req, Conn, shutdown);
        Server *s = c->server;

        if (status < 0 && status != UV_ECANCELED)
                log_debug(CONN_FMT ": flushing failed: %s", CONN_ARGS(c), uv_strerror(status));
        conn_disconnect(c);
        server_flush_ended(s);
}

void conn_close_flushed(Conn *c) {
        int r;

        if (!conn_alive(c))
                return;
        conn_retire(c);
        if (c->queued == 0) {
                conn_disconnect(c);
                return;
        }
        /* uv_shutdown() reports after every write queued before it. */
        r = uv_shutdown(&c->shutdown, (uv_stream_t *)&c->pipe, conn_on_shutdown);
        if (r < 0) {
                log_debug(CONN_FMT ": cannot flush: %s", CONN_ARGS(c), uv_strerror(r));
                conn_disconnect(c);
                return;
        }
        c->server->n_flushing++;
        log_debug(CONN_FMT ": writing out %zu bytes before closing", CONN_ARGS(c), c->queued);
}

void conn_end_calls(Conn *c, const char *message) {
        if (!conn_alive(c))
                return;
        /* A failed write may close the connection meanwhile: the walk then
         * only detaches (conn_send_error() is a no-op once it is closing). */
        for (Call *call = c->calls; call; call = call->next_in_conn) {
                if (call->conn_gone)
                        continue;
                log_debug(CONN_FMT ": call %" PRIu64 ": %s", CONN_ARGS(c), call->id, message);
                conn_send_error(c, call->id, GRPC_STATUS_UNAVAILABLE, message);
                call_detach(call);
        }
}

void conn_expire_calls(Conn *c, const char *message) {
        if (!conn_alive(c))
                return;
        conn_end_calls(c, message);
        /* A connection that closed meanwhile cancels from its close callback. */
        if (conn_alive(c))
                conn_cancel_calls(c);
}

/* ---- frames from the client ----------------------------------------------------------- */

static void conn_hello(Conn *c, const ClientFrame *f) {
        const Cwsandboxd__V1__Hello *hello = f->hello;
        DaemonFrame reply = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        HelloReply hr = CWSANDBOXD__V1__HELLO_REPLY__INIT;
        Server *s = c->server;

        if (hello->protocol_version != SERVER_PROTOCOL_VERSION) {
                conn_violation(c, GRPC_STATUS_FAILED_PRECONDITION,
                               "protocol version %u is not supported: this daemon speaks version %u",
                               hello->protocol_version, SERVER_PROTOCOL_VERSION);
                return;
        }

        client_name_copy(c->client_name, sizeof(c->client_name), hello->client_name);
        c->hello_pid = hello->pid;
        c->phase = CONN_PHASE_READY;
        c->greeted = true;
        log_debug(CONN_FMT ": hello from \"%s\" (pid %d by its own account)",
                  CONN_ARGS(c), c->client_name, (int)c->hello_pid);

        hr.protocol_version = SERVER_PROTOCOL_VERSION;
        hr.daemon_version = s->daemon_version;
        hr.backend_kind = s->backend_kind;
        hr.backend_url = s->backend_url;
        hr.features = (char **)server_features;
        hr.n_features = ELEMENTSOF(server_features);
        hr.max_frame_bytes = (uint32_t)MIN(s->max_frame, (size_t)UINT32_MAX);
        reply.call_id = f->call_id;
        reply.final = true;
        reply.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_HELLO;
        reply.hello = &hr;
        (void)conn_queue(c, &reply);
}

static void conn_new_call(Conn *c, const ClientFrame *f) {
        Call *call;

        if (f->call_id == 0) {
                conn_reject(c, 0, GRPC_STATUS_INVALID_ARGUMENT, "a request needs a call id other than 0");
                return;
        }
        if (conn_find_call(c, f->call_id)) {
                conn_reject(c, f->call_id, GRPC_STATUS_INVALID_ARGUMENT,
                            "call id %" PRIu64 " is already in flight", f->call_id);
                return;
        }
        if (c->server->draining) {
                log_debug(CONN_FMT ": call %" PRIu64 ": refused, shutting down", CONN_ARGS(c), f->call_id);
                conn_send_error(c, f->call_id, GRPC_STATUS_UNAVAILABLE, SERVER_DRAINING_MESSAGE);
                return;
        }
        if (c->n_calls >= SERVER_CALLS_MAX) {
                conn_reject(c, f->call_id, GRPC_STATUS_RESOURCE_EXHAUSTED,
                            "too many calls in flight on this connection (limit %u)", SERVER_CALLS_MAX);
                return;
        }
        call = calloc(1, sizeof(*call));
        if (!call) {
                conn_reject(c, f->call_id, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
        }
        call->conn = c;
        call->id = f->call_id;
        conn_link_call(c, call);
        log_set_client_pid((int)c->peer.pid);
        c->server->dispatch(c->server->userdata, call, f);
        log_set_client_pid(0);
}

/* Stream data, credit or cancel for a call in flight. */
static void conn_route(Conn *c, const ClientFrame *f) {
        Call *call = conn_find_call(c, f->call_id);

        /* A call may end while the client still sends for it: not an error. */
        if (!call) {
                log_debug(CONN_FMT ": frame for call %" PRIu64 ", which is not in flight; ignored",
                          CONN_ARGS(c), f->call_id);
                return;
        }

        switch (f->body_case) {
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_EXEC_INPUT:
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_FILE_CHUNK:
                if (call->ops && call->ops->input)
                        call->ops->input(call, f);
                else
                        log_debug(CONN_FMT ": call %" PRIu64 " takes no stream data; ignored",
                                  CONN_ARGS(c), f->call_id);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_CREDIT:
                if (call->ops && call->ops->credit)
                        call->ops->credit(call, f->credit->bytes);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_CANCEL:
                if (call->cancelled)
                        break;
                call->cancelled = true;
                if (call->ops && call->ops->cancel)
                        call->ops->cancel(call);
                break;
        default:
                break;
        }
}

static void conn_handle_frame(Conn *c, const ClientFrame *f) {
        if (c->phase == CONN_PHASE_HELLO) {
                if (f->body_case != CWSANDBOXD__V1__CLIENT_FRAME__BODY_HELLO)
                        conn_violation(c, GRPC_STATUS_FAILED_PRECONDITION, "the first frame must be Hello");
                else
                        conn_hello(c, f);
                return;
        }

        switch (f->body_case) {
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY__NOT_SET:
                conn_reject(c, f->call_id, GRPC_STATUS_INVALID_ARGUMENT, "frame without a body");
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_HELLO:
                conn_reject(c, f->call_id, GRPC_STATUS_INVALID_ARGUMENT, "Hello was already received");
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_EXEC_INPUT:
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_FILE_CHUNK:
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_CREDIT:
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_CANCEL:
                conn_route(c, f);
                break;
        default:
                conn_new_call(c, f);
                break;
        }
}

/*
 * The length announced by the next header: @more (not yet fed) completes
 * what the decoder holds. For naming the size of a rejected frame, since the
 * decoder forgets it. Returns 0 when the header is incomplete.
 */
static uint32_t conn_next_length(const FrameDecoder *d, const uint8_t *more, size_t n_more) {
        uint8_t h[FRAME_HEADER_SIZE];
        size_t have = MIN(d->end - d->start, (size_t)FRAME_HEADER_SIZE);

        if (have > 0)
                memcpy(h, d->buffer + d->start, have);
        if (have + n_more < FRAME_HEADER_SIZE)
                return 0;
        if (have < FRAME_HEADER_SIZE)
                memcpy(h + have, more, FRAME_HEADER_SIZE - have);
        return frame_decode_header(h);
}

static void conn_too_large(Conn *c, uint32_t len) {
        conn_violation(c, GRPC_STATUS_RESOURCE_EXHAUSTED,
                       "frame of %" PRIu32 " bytes exceeds the limit of %zu bytes",
                       len, c->server->max_frame);
}

static void conn_process_frames(Conn *c) {
        while (conn_alive(c)) {
                uint32_t announced = conn_next_length(&c->decoder, NULL, 0);
                const uint8_t *payload;
                ClientFrame *f;
                size_t len;
                int r;

                r = frame_decoder_next(&c->decoder, &payload, &len);
                if (r == 0)
                        break;
                if (r == FRAME_E_TOO_LARGE) {
                        conn_too_large(c, announced);
                        break;
                }

                f = cwsandboxd__v1__client_frame__unpack(NULL, len, payload);
                if (!f) {
                        conn_violation(c, GRPC_STATUS_INVALID_ARGUMENT,
                                       "frame of %zu bytes does not decode as a ClientFrame", len);
                        break;
                }
                conn_handle_frame(c, f);
                cwsandboxd__v1__client_frame__free_unpacked(f, NULL);
        }
}

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        Conn *c = container_of((uv_pipe_t *)h, Conn, pipe);

        *buf = uv_buf_init((char *)c->server->read_buf, sizeof(c->server->read_buf));
}

static void conn_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
        Conn *c = container_of((uv_pipe_t *)stream, Conn, pipe);
        uint32_t announced;
        int r;

        if (nread == 0)
                return;
        if (nread < 0) {
                if (nread != UV_EOF && nread != UV_ECONNRESET)
                        log_debug(CONN_FMT ": read failed: %s", CONN_ARGS(c), uv_strerror((int)nread));
                else if (frame_decoder_buffered(&c->decoder) > 0)
                        log_debug(CONN_FMT ": hung up in the middle of a frame", CONN_ARGS(c));
                conn_disconnect(c);
                return;
        }

        announced = conn_next_length(&c->decoder, (const uint8_t *)buf->base, (size_t)nread);
        r = frame_decoder_feed(&c->decoder, buf->base, (size_t)nread);
        if (r == FRAME_E_TOO_LARGE) {
                conn_too_large(c, announced);
                return;
        }
        if (r < 0) {
                log_error(CONN_FMT ": cannot buffer a frame: %s", CONN_ARGS(c), strerror(-r));
                conn_disconnect(c);
                return;
        }
        conn_process_frames(c);
}

static void conn_read_resume(Conn *c) {
        int r;

        if (c->reading || !conn_alive(c))
                return;
        r = uv_read_start((uv_stream_t *)&c->pipe, conn_on_alloc, conn_on_read);
        if (r < 0) {
                log_warning(CONN_FMT ": cannot read: %s", CONN_ARGS(c), uv_strerror(r));
                conn_disconnect(c);
                return;
        }
        c->reading = true;
}

/* ---- accepting ------------------------------------------------------------------------ */

int conn_new(Server *s, Conn **ret) {
        Conn *c;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        (void)uv_pipe_init(s->loop, &c->pipe, 0);
        c->server = s;
        c->refs = 1;
        c->id = ++s->last_conn_id;
        c->phase = CONN_PHASE_HELLO;
        frame_decoder_init(&c->decoder, s->max_frame);
        c->next = s->conns;
        if (s->conns)
                s->conns->prev = c;
        s->conns = c;
        s->n_handles++;
        *ret = c;
        return 0;
}

void conn_start(Conn *c) {
        c->counted = true;
        c->server->n_conns++;
        log_debug(CONN_FMT ": connected (gid %u)", CONN_ARGS(c), (unsigned)c->peer.gid);
        conn_read_resume(c);
}

void conn_refuse(Conn *c, const char *message) {
        log_warning(CONN_FMT ": refused: %s", CONN_ARGS(c), message);
        conn_send_error(c, 0, GRPC_STATUS_RESOURCE_EXHAUSTED, message);
        conn_disconnect(c);
}

/* ---- connections ----------------------------------------------------------------------- */

const Peer *conn_peer(const Conn *c) {
        return &c->peer;
}

uint64_t conn_id(const Conn *c) {
        return c->id;
}

const char *conn_client_name(const Conn *c) {
        return c->client_name;
}

void *conn_get_data(const Conn *c) {
        return c->data;
}

void conn_set_data(Conn *c, void *data) {
        c->data = data;
}

bool conn_writable(const Conn *c) {
        return conn_alive(c) && !c->full;
}

/* ---- calls ------------------------------------------------------------------------------ */

void call_set_ops(Call *call, const CallOps *ops, void *userdata) {
        call->ops = ops;
        call->userdata = userdata;
}

int call_send(Call *call, DaemonFrame *frame) {
        int r;

        if (call->conn_gone)
                return -EPIPE;
        frame->call_id = call->id;
        frame->final = false;
        r = conn_queue(call->conn, frame);
        if (r == -EMSGSIZE)
                log_error(CONN_FMT ": call %" PRIu64 ": a frame of %zu bytes exceeds the limit",
                          CONN_ARGS(call->conn), call->id, cwsandboxd__v1__daemon_frame__get_packed_size(frame));
        return r;
}

void call_finish(Call *call, DaemonFrame *frame) {
        DaemonFrame empty = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        Conn *c = call->conn;
        char msg[256];
        int r;

        if (!call->conn_gone) {
                if (!frame)
                        frame = &empty;
                frame->call_id = call->id;
                frame->final = true;
                r = conn_queue(c, frame);
                if (r == -EMSGSIZE || r == -ENOMEM) {
                        /* The client must still see the call end. */
                        (void)snprintf(msg, sizeof(msg), "the reply (%zu bytes) cannot be sent: %s",
                                       cwsandboxd__v1__daemon_frame__get_packed_size(frame), strerror(-r));
                        log_error(CONN_FMT ": call %" PRIu64 ": %s", CONN_ARGS(c), call->id, msg);
                        conn_send_error(c, call->id, GRPC_STATUS_INTERNAL, msg);
                }
        }
        call_free(call);
}

void call_fail(Call *call, const Status *st, const char *sandbox_id) {
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        ErrorPb e = CWSANDBOXD__V1__ERROR__INIT;

        /* An OK status carries no error: the call simply ends. */
        if (status_ok(st)) {
                call_finish(call, NULL);
                return;
        }
        e.code = st->code;
        e.message = (char *)st->message;
        e.reason = (char *)st->reason;
        e.retryable = retry_classify(st->code, st->reason[0] ? st->reason : NULL) == RETRY_TRANSIENT;
        e.retry_delay_ms = st->retry_delay_ms;
        e.sandbox_id = (char *)(sandbox_id ? sandbox_id : "");
        f.error = &e;
        call_finish(call, &f);
}
