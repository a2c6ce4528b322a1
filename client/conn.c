/*
 * Connection, demultiplexer and reconnect of libcwsandbox.
 *
 * One socket at a time per cws_conn. A reader thread owned by the
 * connection reads frames, decodes each DaemonFrame and appends it to the
 * queue of the Call with its call id, then signals that call's condition
 * variable. A final frame unregisters the call, so later frames with its id
 * (there should be none) are dropped, as are frames for calls the
 * application has freed. Writers take write_lock for a whole frame; call ids
 * come from an atomic counter, so any number of threads may use one
 * connection.
 *
 * Loss: when the socket ends (EOF, error, a connection-level error frame),
 * the reader ends every registered call as lost, waking its waiter with
 * UNAVAILABLE; nothing is replayed, since creates and execs are not
 * idempotent. Then, unless reconnecting is off or the application is
 * closing, the connection is CONN_DOWN and the reader itself reconnects
 * with backoff: a new socket, Hello, and AttachSession again for every
 * session this connection attached and did not detach or close, with the
 * application's own request. Only then is it CONN_UP again. Calls that
 * start while it is down wait for that, up to wait_ms. A refused Hello (a
 * protocol version, a connection-level error other than "busy") ends it for
 * good (CONN_DEAD), as does cws_conn_close().
 *
 * Sessions: an attach, detach or close carries its effect on the Call; the
 * reader applies it when it routes the final reply, so the list it re-attaches
 * is always the one of the socket that just ended. When a re-attach gets a
 * new session id (the daemon lost its state), the old id is mapped to it, and
 * every later request's session_id is rewritten on the way out.
 *
 * While the connection is being set up (the first Hello in cws_connect(),
 * or a reconnect) no call is registered, so the thread doing it reads the
 * socket itself, one request and reply at a time.
 *
 * Lifetime: the connection is reference-counted: one reference for the
 * application and one per Call (taken while a call waits for a reconnect
 * too), so a streaming object or a call in another thread may outlive
 * cws_conn_close(). The close wakes the reader wherever it is (shutdown of
 * the socket, the condition variable during a backoff), joins it, and drops
 * the application's reference; the memory goes with the last one.
 *
 * Locks: write_lock is taken before lock when both are held. lock guards
 * the call list, each call's queue and flags, state, closing, the session
 * list and id map, refs, and the messages. fd and gen are written only by
 * the reader thread (or by cws_connect() before it starts), under both
 * locks, so a writer (write_lock) or cws_conn_close() (lock) always sees a
 * socket that is still open; a writer sends only on the socket its call was
 * registered on (gen), never on a later one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "frame.h"
#include "macro.h"
#include "util.h"

#define READ_BUFFER_SIZE        (64u * 1024)
#define FRAME_MAX_IN            (1024u * 1024 * 1024)   /* what we accept from the daemon */
#define CHUNK_MAX               (1024u * 1024)
#define FRAME_MARGIN            256u                    /* frame fields around a chunk */
#define WAIT_DEFAULT_MS         10000                   /* a call waiting for a reconnect */
#define BACKOFF_FIRST_MS        50
#define BACKOFF_MAX_MS          1000
#define REPLY_TIMEOUT_MS        30000                   /* a reconnect's Hello or attach; then it starts over */

#define CLOSED_MSG              "the connection to cwsandboxd was closed"

/* ---- errors ------------------------------------------------------------------------------ */

int cws_fail(cws_error *err, int code, const char *fmt, ...) {
        va_list ap;

        if (err) {
                memset(err, 0, sizeof(*err));
                err->code = code;
                va_start(ap, fmt);
                (void)vsnprintf(err->message, sizeof(err->message), fmt, ap);
                va_end(ap);
        }
        return code;
}

void cws_ok(cws_error *err) {
        if (err)
                memset(err, 0, sizeof(*err));
}

/* @src cut to fit @size; NULL is "". */
static void copy_str(char *dst, size_t size, const char *src) {
        size_t n = src ? MIN(strlen(src), size - 1) : 0;

        if (n)
                memmove(dst, src, n);
        dst[n] = 0;
}

int call_frame_error(const DaemonFrame *f, cws_error *err) {
        const Cwsandboxd__V1__Error *e = f->error;
        int code = e->code > 0 && e->code <= CWS_UNAUTHENTICATED ? e->code : CWS_UNKNOWN;

        if (err) {
                memset(err, 0, sizeof(*err));
                err->code = code;
                copy_str(err->message, sizeof(err->message), e->message);
                copy_str(err->reason, sizeof(err->reason), e->reason);
                copy_str(err->sandbox_id, sizeof(err->sandbox_id), e->sandbox_id);
                err->retryable = e->retryable;
                err->retry_delay_ms = e->retry_delay_ms;
        }
        return code;
}

void daemon_frame_free(DaemonFrame *f) {
        if (f)
                cwsandboxd__v1__daemon_frame__free_unpacked(f, NULL);
}

static void deadline_after(struct timespec *ts, int timeout_ms) {
        clock_gettime(CLOCK_MONOTONIC, ts);
        ts->tv_sec += timeout_ms / 1000;
        ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (ts->tv_nsec >= 1000000000L) {
                ts->tv_sec++;
                ts->tv_nsec -= 1000000000L;
        }
}

/* Codes a daemon gives when it is busy or stopping: worth another try. */
static bool code_transient(int code) {
        return code == CWS_UNAVAILABLE || code == CWS_RESOURCE_EXHAUSTED;
}

/* ---- references -------------------------------------------------------------------------- */

static void session_rec_free(SessionRec *s) {
        if (!s)
                return;
        if (s->req)
                cwsandboxd__v1__attach_session_request__free_unpacked(s->req, NULL);
        free(s->id);
        free(s);
}

static void conn_free(cws_conn *c) {
        while (c->hellos) {
                HelloRec *h = c->hellos;

                c->hellos = h->next;
                daemon_frame_free(h->frame);
                free(h);
        }
        while (c->sessions) {
                SessionRec *s = c->sessions;

                c->sessions = s->next;
                session_rec_free(s);
        }
        while (c->ids) {
                IdMap *m = c->ids;

                c->ids = m->next;
                free(m->from);
                free(m->to);
                free(m);
        }
        frame_decoder_deinit(&c->decoder);
        free(c->path);
        free(c->client_name);
        pthread_mutex_destroy(&c->lock);
        pthread_mutex_destroy(&c->write_lock);
        pthread_cond_destroy(&c->state_cond);
        free(c);
}

static void conn_unref(cws_conn *c) {
        bool last;

        pthread_mutex_lock(&c->lock);
        last = --c->refs == 0;
        pthread_mutex_unlock(&c->lock);
        if (last)
                conn_free(c);
}

/* ---- sessions to re-attach --------------------------------------------------------------- */

/* A deep copy of @req, to send again after a reconnect; NULL without memory. */
static SessionRec *session_rec_new(const AttachRequest *req) {
        size_t len = cwsandboxd__v1__attach_session_request__get_packed_size(req);
        _cleanup_free_ uint8_t *buf = malloc(len ? len : 1);
        SessionRec *s;

        if (!buf)
                return NULL;
        (void)cwsandboxd__v1__attach_session_request__pack(req, buf);
        s = calloc(1, sizeof(*s));
        if (!s)
                return NULL;
        s->req = cwsandboxd__v1__attach_session_request__unpack(NULL, len, buf);
        if (!s->req) {
                free(s);
                return NULL;
        }
        return s;
}

/* Under lock: what the daemon calls the session the application knows as @id. */
static const char *ids_lookup(const cws_conn *c, const char *id) {
        for (const IdMap *m = c->ids; m; m = m->next)
                if (streq(m->from, id))
                        return m->to;
        return id;
}

/* Under lock, in the reader: an attach's reply names session @id; remember @s for it. */
static void session_remember(cws_conn *c, SessionRec *s, const char *id) {
        for (SessionRec *i = c->sessions; i; i = i->next)
                if (streq(i->id, id)) {
                        /* A second attach joined the same session: the first request stays. */
                        session_rec_free(s);
                        return;
                }
        s->id = strdup(id);
        if (!s->id) {
                /* Without memory this session is not re-attached after a reconnect. */
                session_rec_free(s);
                return;
        }
        s->next = c->sessions;
        c->sessions = s;
}

/* Under lock, in the reader: the session the application knows as @id was detached or closed. */
static void session_forget(cws_conn *c, const char *id) {
        const char *cur = ids_lookup(c, id);

        for (SessionRec **p = &c->sessions; *p; p = &(*p)->next)
                if (streq((*p)->id, cur)) {
                        SessionRec *s = *p;

                        *p = s->next;
                        session_rec_free(s);
                        return;
                }
}

/*
 * Under lock, in the reader: a re-attach gave @s the new id @id (the daemon
 * lost its state). Every id that meant the old one now means @id. Without
 * memory the old id stays, and requests naming it fail at the daemon.
 */
static void session_rename(cws_conn *c, SessionRec *s, const char *id) {
        _cleanup_free_ char *new_id = strdup(id), *to = strdup(id);
        _cleanup_free_ IdMap *m = calloc(1, sizeof(*m));
        bool known = false;

        if (!new_id || !to || !m)
                return;
        for (IdMap *i = c->ids; i; i = i->next) {
                char *t;

                if (streq(i->from, s->id))
                        known = true;
                if (streq(i->to, s->id) && (t = strdup(id))) {
                        free(i->to);
                        i->to = t;
                }
        }
        if (known)
                free(s->id);
        else {
                m->from = s->id;
                m->to = TAKE_PTR(to);
                m->next = c->ids;
                c->ids = TAKE_PTR(m);
        }
        s->id = TAKE_PTR(new_id);
}

/* Under lock, in the reader: what the final reply of @call means for the sessions to re-attach. */
static void call_settle(cws_conn *c, Call *call, const DaemonFrame *f) {
        int code = f->error ? f->error->code : 0;

        if (call->attach && code == 0 && f->body_case == REPLY(SESSION) && f->session->session_id[0])
                session_remember(c, TAKE_PTR(call->attach), f->session->session_id);
        if (call->forget && (code == 0 || code == CWS_NOT_FOUND))
                session_forget(c, call->forget);
}

/* ---- the reader -------------------------------------------------------------------------- */

static Call *conn_find_call(cws_conn *c, uint64_t id) {
        for (Call *call = c->calls; call; call = call->next)
                if (call->id == id)
                        return call;
        return NULL;
}

static void conn_unlink_call(cws_conn *c, Call *call) {
        if (call->prev)
                call->prev->next = call->next;
        else
                c->calls = call->next;
        if (call->next)
                call->next->prev = call->prev;
        call->prev = call->next = NULL;
        call->registered = false;
}

/*
 * Under lock: hand @f to its call, or drop it. Returns -ENOMEM when a frame
 * for a live call cannot be queued: losing it (perhaps a final frame) would
 * leave its caller waiting forever, so the connection ends instead.
 */
static int conn_route(cws_conn *c, DaemonFrame *f) {
        CallFrame *cf;
        Call *call;

        if (f->call_id == 0) {
                /* A connection-level error: the daemon hangs up next. */
                if (f->error)
                        (void)snprintf(c->ended_msg, sizeof(c->ended_msg), "the daemon ended the connection: %s",
                                       f->error->message);
                daemon_frame_free(f);
                return 0;
        }
        call = conn_find_call(c, f->call_id);
        if (!call) {
                daemon_frame_free(f);
                return 0;
        }
        cf = malloc(sizeof(*cf));
        if (!cf) {
                daemon_frame_free(f);
                return -ENOMEM;
        }
        cf->next = NULL;
        cf->frame = f;
        *call->tail = cf;
        call->tail = &cf->next;
        if (f->final) {
                call->ended = true;
                conn_unlink_call(c, call);
                call_settle(c, call, f);
        }
        pthread_cond_signal(&call->cond);
        return 0;
}

/* Under lock: the socket is gone; every call on it ends as lost. */
static void conn_fail_calls(cws_conn *c) {
        Call *call;

        while ((call = c->calls)) {
                conn_unlink_call(c, call);
                call->ended = true;
                call->lost = true;
                pthread_cond_signal(&call->cond);
        }
}

/* Under lock: why a call cannot go out now. */
static const char *conn_down_msg(const cws_conn *c) {
        if (c->state == CONN_DEAD)
                return c->dead_msg;
        return c->lost_msg[0] ? c->lost_msg : "connection to cwsandboxd lost";
}

/* Under lock: the connection is over for good; wake whoever waits for it. */
static void conn_set_dead(cws_conn *c, const char *why) {
        if (why != c->dead_msg)
                copy_str(c->dead_msg, sizeof(c->dead_msg), why);
        c->state = CONN_DEAD;
        pthread_cond_broadcast(&c->state_cond);
}

static int conn_read_frames(cws_conn *c, const char **ret_why) {
        const uint8_t *payload;
        DaemonFrame *f;
        size_t len;
        int r;

        while ((r = frame_decoder_next(&c->decoder, &payload, &len)) == 1) {
                f = cwsandboxd__v1__daemon_frame__unpack(NULL, len, payload);
                if (!f) {
                        *ret_why = "the daemon sent a frame that does not decode";
                        return -EBADMSG;
                }
                pthread_mutex_lock(&c->lock);
                r = conn_route(c, f);
                pthread_mutex_unlock(&c->lock);
                if (r < 0)
                        return r;       /* reported as out of memory */
        }
        if (r != 0) {
                *ret_why = "the daemon sent a frame larger than the client accepts";
                return -EMSGSIZE;
        }
        return 0;
}

/* Read and route frames until the socket ends; @why says how. */
static void conn_read_loop(cws_conn *c, uint8_t *buf, char *why, size_t size) {
        const char *what = NULL;
        ssize_t n;
        int r;

        /* Frames that came in with the HelloReply or the last re-attach. */
        r = buf ? conn_read_frames(c, &what) : -ENOMEM;
        while (r == 0) {
                n = read(c->fd, buf, READ_BUFFER_SIZE);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        (void)snprintf(why, size, "connection to cwsandboxd lost: %s", strerror(errno));
                        return;
                }
                if (n == 0) {
                        copy_str(why, size, "connection to cwsandboxd lost: the daemon closed the connection");
                        return;
                }
                r = frame_decoder_feed(&c->decoder, buf, (size_t)n);
                if (r == 0)
                        r = conn_read_frames(c, &what);
        }
        (void)snprintf(why, size, "connection to cwsandboxd lost: %s", what ? what : "out of memory");
}

/* ---- sockets ----------------------------------------------------------------------------- */

/*
 * A socket connected to @path. A reconnect connects without blocking: a
 * daemon whose backlog is full is a failed attempt, not a wait that
 * cws_conn_close() could not end.
 */
static int conn_connect_socket(const char *path, bool nonblock, int *ret_fd, cws_error *err) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -1;
        int flags;

        if (strlen(path) >= sizeof(sa.sun_path))
                return cws_fail(err, CWS_INVALID_ARGUMENT, "socket path too long: %s", path);
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
        if (fd < 0)
                return cws_fail(err, CWS_UNAVAILABLE, "cwsandboxd unreachable: socket: %s", strerror(errno));
        while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
                if (errno != EINTR)
                        return cws_fail(err, CWS_UNAVAILABLE, "cwsandboxd unreachable at %s: %s", path,
                                        strerror(errno));
        if (nonblock && ((flags = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0))
                return cws_fail(err, CWS_UNAVAILABLE, "cwsandboxd unreachable: fcntl: %s", strerror(errno));
        *ret_fd = TAKE_FD(fd);
        return 0;
}

/* In the reader: make @fd the connection's socket, unless the close has begun. */
static bool conn_publish(cws_conn *c, int fd) {
        bool ok;

        pthread_mutex_lock(&c->write_lock);
        pthread_mutex_lock(&c->lock);
        ok = !c->closing;
        if (ok) {
                c->fd = fd;
                c->gen++;
                c->ended_msg[0] = 0;
        }
        pthread_mutex_unlock(&c->lock);
        pthread_mutex_unlock(&c->write_lock);
        if (ok) {
                frame_decoder_deinit(&c->decoder);
                frame_decoder_init(&c->decoder, FRAME_MAX_IN);
        }
        return ok;
}

/* In the reader: done with the socket. The shutdown first releases a writer blocked on it. */
static void conn_drop_socket(cws_conn *c) {
        int fd = c->fd;

        if (fd < 0)
                return;
        (void)shutdown(fd, SHUT_RDWR);
        pthread_mutex_lock(&c->write_lock);
        pthread_mutex_lock(&c->lock);
        c->fd = -1;
        pthread_mutex_unlock(&c->lock);
        pthread_mutex_unlock(&c->write_lock);
        close(fd);
}

/* ---- writing ----------------------------------------------------------------------------- */

/* Write a whole frame on socket @gen; a later socket never gets it. */
static int conn_write(cws_conn *c, uint64_t gen, const uint8_t *data, size_t len, cws_error *err) {
        bool current;
        ssize_t n;
        int r = 0;

        pthread_mutex_lock(&c->write_lock);
        current = c->fd >= 0 && c->gen == gen;
        while (current && len > 0) {
                n = send(c->fd, data, len, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = errno;
                        break;
                }
                data += n;
                len -= (size_t)n;
        }
        if (len > 0 && r == 0)
                r = EPIPE;
        pthread_mutex_unlock(&c->write_lock);
        if (r == 0)
                return 0;
        /* The reader sees the end too and fails every other call. */
        pthread_mutex_lock(&c->lock);
        if (!current)
                cws_fail(err, CWS_UNAVAILABLE, "%s", conn_down_msg(c));
        else
                cws_fail(err, CWS_UNAVAILABLE, "connection to cwsandboxd lost: %s", strerror(r));
        pthread_mutex_unlock(&c->lock);
        return CWS_UNAVAILABLE;
}

/*
 * The session_id field of @f's request, if it has one. Found through the
 * descriptors, so every request that names a session is covered, also
 * ones the protocol gains later.
 */
static char **frame_session_id(ClientFrame *f) {
        const ProtobufCFieldDescriptor *body, *field;
        ProtobufCMessage *msg;

        body = protobuf_c_message_descriptor_get_field(&cwsandboxd__v1__client_frame__descriptor,
                                                       (unsigned)f->body_case);
        if (!body || body->type != PROTOBUF_C_TYPE_MESSAGE)
                return NULL;
        msg = *(ProtobufCMessage **)((uint8_t *)f + body->offset);
        if (!msg)
                return NULL;
        field = protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, "session_id");
        if (!field || field->type != PROTOBUF_C_TYPE_STRING || field->label == PROTOBUF_C_LABEL_REPEATED)
                return NULL;
        return (char **)((uint8_t *)msg + field->offset);
}

/* @f with its length prefix, in a buffer to free(). */
static int frame_pack(const cws_conn *c, const ClientFrame *f, uint8_t **ret, size_t *ret_len, cws_error *err) {
        size_t len = cwsandboxd__v1__client_frame__get_packed_size(f);
        HelloRec *h = atomic_load(&c->hello);
        uint32_t max = h ? h->hello.max_frame_bytes : 0;
        uint8_t *buf;

        if (len > max && max > 0)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "request of %zu bytes exceeds the daemon's frame limit of %u",
                                len, max);
        buf = malloc(FRAME_HEADER_SIZE + len);
        if (!buf)
                return oom(err);
        if (frame_encode_header(buf, len) < 0) {
                free(buf);
                return cws_fail(err, CWS_INVALID_ARGUMENT, "request too large");
        }
        (void)cwsandboxd__v1__client_frame__pack(f, buf + FRAME_HEADER_SIZE);
        *ret = buf;
        *ret_len = FRAME_HEADER_SIZE + len;
        return 0;
}

static int conn_send(cws_conn *c, uint64_t gen, ClientFrame *f, cws_error *err) {
        _cleanup_free_ char *mapped = NULL;
        _cleanup_free_ uint8_t *buf = NULL;
        char **slot = frame_session_id(f), *given = NULL;
        const char *to;
        size_t len = 0;
        int r;

        if (slot && *slot && **slot) {
                pthread_mutex_lock(&c->lock);
                to = ids_lookup(c, *slot);
                if (to != *slot)
                        mapped = strdup(to);
                pthread_mutex_unlock(&c->lock);
                if (to != *slot && !mapped)
                        return oom(err);
        }
        /* The request is the caller's: the mapped id is lent to it while it is packed. */
        if (mapped) {
                given = *slot;
                *slot = mapped;
        }
        r = frame_pack(c, f, &buf, &len, err);
        if (mapped)
                *slot = given;
        if (r != 0)
                return r;
        return conn_write(c, gen, buf, len, err);
}

/* ---- setting a socket up ----------------------------------------------------------------- */

/* Wait for bytes and feed them to the decoder. @end: a mono_ms() deadline, < 0 = none. */
static int conn_fill(cws_conn *c, int64_t end, cws_error *err) {
        struct pollfd p = { .fd = c->fd, .events = POLLIN };
        uint8_t buf[16 * 1024];
        ssize_t n;
        int r;

        for (;;) {
                r = poll(&p, 1, end < 0 ? -1 : (int)MAX(end - mono_ms(), (int64_t)0));
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        return cws_fail(err, CWS_UNAVAILABLE, "connection to cwsandboxd lost: poll: %s",
                                        strerror(errno));
                if (r == 0)
                        return cws_fail(err, CWS_UNAVAILABLE, "cwsandboxd accepted the connection but did not answer");
                n = read(c->fd, buf, sizeof(buf));
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (n < 0)
                        return cws_fail(err, CWS_UNAVAILABLE, "connection to cwsandboxd lost: %s", strerror(errno));
                if (n == 0)
                        return cws_fail(err, CWS_UNAVAILABLE,
                                        "connection to cwsandboxd lost: the daemon closed the connection");
                if (frame_decoder_feed(&c->decoder, buf, (size_t)n) != 0)
                        return oom(err);
                return 0;
        }
}

/* A connection-level error frame: the daemon hangs up next. Busy and stopping are worth another try. */
static int conn_refusal(const DaemonFrame *d, bool *refused, cws_error *err) {
        int code = call_frame_error(d, NULL);

        *refused = !code_transient(code);
        return cws_fail(err, code, "the daemon ended the connection: %s", d->error->message);
}

/*
 * One request and its final reply while the socket is being set up: no
 * reader runs and no call is registered, so this thread reads the socket
 * itself. Returns 0 with the reply; the daemon's code when it refused the
 * connection (*@refused then says whether trying again is pointless);
 * UNAVAILABLE when the socket ended or nothing came within @timeout_ms
 * (< 0 = no limit).
 */
static int conn_sync_call(cws_conn *c, ClientFrame *f, int timeout_ms, DaemonFrame **ret, bool *refused,
                          cws_error *err) {
        int64_t end = timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
        const uint8_t *payload;
        DaemonFrame *d;
        size_t len;
        int send_r, r;

        *refused = false;
        f->call_id = atomic_fetch_add(&c->next_id, 1);
        send_r = conn_send(c, c->gen, f, err);
        if (send_r != 0)
                end = mono_ms();        /* only a refusal that is already here is worth reading */
        for (;;) {
                r = frame_decoder_next(&c->decoder, &payload, &len);
                if (r == 0) {
                        r = conn_fill(c, end, send_r != 0 ? NULL : err);
                        if (r != 0)
                                return send_r != 0 ? send_r : r;
                        continue;
                }
                if (r != 1)
                        return cws_fail(err, CWS_UNAVAILABLE, "connection to cwsandboxd lost: the daemon sent a frame "
                                        "larger than the client accepts");
                d = cwsandboxd__v1__daemon_frame__unpack(NULL, len, payload);
                if (!d)
                        return cws_fail(err, CWS_UNAVAILABLE, "connection to cwsandboxd lost: the daemon sent a frame "
                                        "that does not decode");
                if (d->call_id == 0 && d->error) {
                        r = conn_refusal(d, refused, err);
                        daemon_frame_free(d);
                        return r;
                }
                if (send_r == 0 && d->call_id == f->call_id && d->final) {
                        *ret = d;
                        return 0;
                }
                daemon_frame_free(d);
        }
}

/* Keep the HelloReply @reply (taken) as the connection's current one. */
static int conn_take_hello(cws_conn *c, DaemonFrame *reply, bool *refused, cws_error *err) {
        const Cwsandboxd__V1__HelloReply *hr;
        HelloRec *h;
        int r;

        if (reply->error) {
                r = call_frame_error(reply, err);
                *refused = !code_transient(r);
                daemon_frame_free(reply);
                return r;
        }
        *refused = true;    /* a daemon that answers Hello wrongly will not change its mind */
        if (reply->body_case != REPLY(HELLO))
                return unexpected(reply, err);
        hr = reply->hello;
        if (hr->protocol_version != PROTOCOL_VERSION) {
                r = cws_fail(err, CWS_FAILED_PRECONDITION, "the daemon speaks protocol version %u, not %u",
                             hr->protocol_version, PROTOCOL_VERSION);
                daemon_frame_free(reply);
                return r;
        }
        *refused = false;
        h = calloc(1, sizeof(*h));
        if (!h) {
                daemon_frame_free(reply);
                return oom(err);
        }
        h->frame = reply;
        h->hello = (cws_hello) {
                .protocol_version = hr->protocol_version,
                .daemon_version = hr->daemon_version,
                .backend_kind = hr->backend_kind,
                .backend_url = hr->backend_url,
                .features = (const char *const *)hr->features,
                .n_features = hr->n_features,
                .max_frame_bytes = hr->max_frame_bytes,
        };
        /* Only the thread setting a socket up touches the list; conn_free() reads it last. */
        h->next = c->hellos;
        c->hellos = h;
        atomic_store(&c->hello, h);
        atomic_store(&c->chunk_max, hr->max_frame_bytes > FRAME_MARGIN ?
                                    MIN((size_t)CHUNK_MAX, (size_t)hr->max_frame_bytes - FRAME_MARGIN) : CHUNK_MAX);
        return 0;
}

static int conn_handshake(cws_conn *c, int timeout_ms, bool *refused, cws_error *err) {
        Cwsandboxd__V1__Hello hello = CWSANDBOXD__V1__HELLO__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        DaemonFrame *reply = NULL;
        int r;

        hello.protocol_version = PROTOCOL_VERSION;
        hello.client_name = c->client_name;
        hello.pid = (int32_t)getpid();
        f.body_case = BODY(HELLO);
        f.hello = &hello;
        r = conn_sync_call(c, &f, timeout_ms, &reply, refused, err);
        if (r != 0)
                return r;
        return conn_take_hello(c, reply, refused, err);
}

/*
 * Attach every remembered session again with the application's request. A
 * session the daemon refuses now is tried again at the next reconnect;
 * UNAVAILABLE (a daemon still shutting down) fails the whole attempt.
 */
static int conn_reattach(cws_conn *c, bool *refused, cws_error *err) {
        for (SessionRec *s = c->sessions; s; s = s->next) {
                ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
                const char *id;
                DaemonFrame *reply = NULL;
                int r;

                f.body_case = BODY(ATTACH_SESSION);
                f.attach_session = s->req;
                r = conn_sync_call(c, &f, REPLY_TIMEOUT_MS, &reply, refused, err);
                if (r != 0)
                        return r;
                if (reply->error) {
                        r = call_frame_error(reply, err);
                        daemon_frame_free(reply);
                        if (r == CWS_UNAVAILABLE)
                                return r;
                        continue;
                }
                id = reply->body_case == REPLY(SESSION) ? reply->session->session_id : "";
                if (*id && !streq(id, s->id)) {
                        pthread_mutex_lock(&c->lock);
                        session_rename(c, s, id);
                        pthread_mutex_unlock(&c->lock);
                }
                daemon_frame_free(reply);
        }
        return 0;
}

/* ---- reconnecting ------------------------------------------------------------------------ */

/* Wait @ms before the next attempt. False when the connection is to end instead. */
static bool conn_backoff(cws_conn *c, int ms) {
        struct timespec deadline;
        bool go;
        int r = 0;

        deadline_after(&deadline, ms);
        pthread_mutex_lock(&c->lock);
        while (!c->closing && c->reconnect && r == 0)
                r = pthread_cond_timedwait(&c->state_cond, &c->lock, &deadline);
        go = !c->closing && c->reconnect;
        pthread_mutex_unlock(&c->lock);
        return go;
}

/* One attempt: a socket, Hello, the sessions. Returns 0 once the connection is up again. */
static int conn_attempt(cws_conn *c, bool *refused, cws_error *err) {
        int fd = -1, r;

        *refused = false;
        r = conn_connect_socket(c->path, true, &fd, err);
        if (r != 0)
                return r;
        if (!conn_publish(c, fd)) {
                close(fd);
                return cws_fail(err, CWS_UNAVAILABLE, CLOSED_MSG);
        }
        r = conn_handshake(c, REPLY_TIMEOUT_MS, refused, err);
        if (r == 0)
                r = conn_reattach(c, refused, err);
        if (r != 0) {
                conn_drop_socket(c);
                return r;
        }
        pthread_mutex_lock(&c->lock);
        c->state = CONN_UP;
        c->retry_msg[0] = 0;
        atomic_fetch_add(&c->reconnects, 1);
        pthread_cond_broadcast(&c->state_cond);
        pthread_mutex_unlock(&c->lock);
        return 0;
}

/*
 * After a loss: attempt with backoff (@backoff, the last delay, carries over
 * a connection that ended soon after it came back) until the connection is
 * up again (0) or is to end (-ECANCELED: closed, reconnecting turned off, or
 * refused).
 */
static int conn_reconnect(cws_conn *c, int *backoff) {
        cws_error e;
        char why[sizeof(e.message) + 64];
        bool refused;
        int wait;

        for (;;) {
                *backoff = *backoff == 0 ? BACKOFF_FIRST_MS : MIN(*backoff * 2, BACKOFF_MAX_MS);
                /* Up to a quarter less: clients that lost the same daemon do not all come back at once. */
                wait = *backoff - (int)((unsigned)rand_r(&c->seed) % (unsigned)(*backoff / 4 + 1));
                if (!conn_backoff(c, wait)) {
                        pthread_mutex_lock(&c->lock);
                        conn_set_dead(c, c->closing ? CLOSED_MSG : c->lost_msg);
                        pthread_mutex_unlock(&c->lock);
                        return -ECANCELED;
                }
                if (conn_attempt(c, &refused, &e) == 0)
                        return 0;
                pthread_mutex_lock(&c->lock);
                if (refused) {
                        (void)snprintf(why, sizeof(why), "cwsandboxd refused the connection when reconnecting: %s",
                                       e.message);
                        conn_set_dead(c, why);
                } else
                        copy_str(c->retry_msg, sizeof(c->retry_msg), e.message);
                pthread_mutex_unlock(&c->lock);
                if (refused)
                        return -ECANCELED;
        }
}

/*
 * The socket ended (@why): fail the calls on it and close it. Returns true
 * when the reader is to reconnect (@may_retry, unless closing or off).
 */
static bool conn_lose(cws_conn *c, const char *why, bool may_retry) {
        bool again;

        pthread_mutex_lock(&c->lock);
        copy_str(c->lost_msg, sizeof(c->lost_msg), c->closing ? CLOSED_MSG : c->ended_msg[0] ? c->ended_msg : why);
        conn_fail_calls(c);
        again = may_retry && !c->closing && c->reconnect;
        if (again) {
                c->state = CONN_DOWN;
                c->retry_msg[0] = 0;
                pthread_cond_broadcast(&c->state_cond);
        } else
                conn_set_dead(c, c->lost_msg);
        pthread_mutex_unlock(&c->lock);
        conn_drop_socket(c);
        return again;
}

static void *conn_reader(void *userdata) {
        cws_conn *c = userdata;
        _cleanup_free_ uint8_t *buf = malloc(READ_BUFFER_SIZE);
        int64_t up_since;
        int backoff = 0;
        char why[256];

        for (;;) {
                up_since = mono_ms();
                conn_read_loop(c, buf, why, sizeof(why));
                if (!conn_lose(c, why, buf != NULL))
                        break;
                if (mono_ms() - up_since >= BACKOFF_MAX_MS)
                        backoff = 0;
                if (conn_reconnect(c, &backoff) < 0)
                        break;
        }
        return NULL;
}

/* ---- open and close ---------------------------------------------------------------------- */

static cws_conn *conn_new(const char *path, const char *client_name) {
        pthread_condattr_t attr;
        cws_conn *c = calloc(1, sizeof(*c));

        if (!c)
                return NULL;
        pthread_mutex_init(&c->lock, NULL);
        pthread_mutex_init(&c->write_lock, NULL);
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&c->state_cond, &attr);
        pthread_condattr_destroy(&attr);
        frame_decoder_init(&c->decoder, FRAME_MAX_IN);
        c->fd = -1;
        c->refs = 1;
        c->state = CONN_UP;
        c->reconnect = true;
        c->wait_ms = WAIT_DEFAULT_MS;
        c->seed = (unsigned)getpid() ^ (unsigned)mono_ms() ^ (unsigned)(uintptr_t)c;
        atomic_init(&c->next_id, 1);
        atomic_init(&c->reconnects, 0);
        atomic_init(&c->hello, NULL);
        atomic_init(&c->chunk_max, CHUNK_MAX);
        c->path = strdup(path);
        c->client_name = strdup(client_name ? client_name : "libcwsandbox");
        if (!c->path || !c->client_name) {
                conn_free(c);
                return NULL;
        }
        return c;
}

int conn_open(const char *path, const char *client_name, cws_conn **ret, cws_error *err) {
        sigset_t all, saved;
        bool refused;
        cws_conn *c;
        int fd = -1, r;

        r = conn_connect_socket(path, false, &fd, err);
        if (r != 0)
                return r;
        c = conn_new(path, client_name);
        if (!c) {
                close(fd);
                return oom(err);
        }
        c->fd = fd;
        c->gen = 1;
        r = conn_handshake(c, -1, &refused, err);
        if (r == 0) {
                /* The reader takes no signals: they belong to the application's threads. */
                sigfillset(&all);
                pthread_sigmask(SIG_SETMASK, &all, &saved);
                r = pthread_create(&c->reader, NULL, conn_reader, c);
                pthread_sigmask(SIG_SETMASK, &saved, NULL);
                if (r != 0)
                        r = cws_fail(err, CWS_RESOURCE_EXHAUSTED, "cannot start the reader thread: %s", strerror(r));
        }
        if (r != 0) {
                close(c->fd);
                conn_free(c);
                return r;
        }
        *ret = c;
        return 0;
}

void conn_shutdown(cws_conn *c) {
        pthread_mutex_lock(&c->lock);
        c->closing = true;
        /* Ends the reader's read or handshake; a backoff ends on the broadcast. */
        if (c->fd >= 0)
                (void)shutdown(c->fd, SHUT_RDWR);
        pthread_cond_broadcast(&c->state_cond);
        pthread_mutex_unlock(&c->lock);
        pthread_join(c->reader, NULL);
        /* The reader closed its socket on the way out. */
        conn_unref(c);
}

const cws_hello *conn_hello(const cws_conn *c) {
        return &atomic_load(&c->hello)->hello;
}

void conn_set_reconnect(cws_conn *c, bool on, int wait_ms) {
        pthread_mutex_lock(&c->lock);
        c->reconnect = on;
        c->wait_ms = wait_ms < 0 ? WAIT_DEFAULT_MS : wait_ms;
        /* A reconnect under way that is no longer wanted ends now. */
        pthread_cond_broadcast(&c->state_cond);
        pthread_mutex_unlock(&c->lock);
}

/* ---- calls ------------------------------------------------------------------------------- */

/* Under lock: wait while a reconnect is under way, up to the bound. 0 when a call may go out. */
static int conn_wait_up(cws_conn *c, cws_error *err) {
        struct timespec deadline;
        int wait_ms = c->wait_ms, r = 0;

        if (c->state == CONN_DOWN && !c->closing && wait_ms > 0) {
                deadline_after(&deadline, wait_ms);
                while (c->state == CONN_DOWN && !c->closing && r == 0)
                        r = pthread_cond_timedwait(&c->state_cond, &c->lock, &deadline);
        }
        if (c->closing)
                return cws_fail(err, CWS_UNAVAILABLE, CLOSED_MSG);
        if (c->state == CONN_DEAD)
                return cws_fail(err, CWS_UNAVAILABLE, "%s", c->dead_msg);
        if (c->state == CONN_DOWN)
                return cws_fail(err, CWS_UNAVAILABLE, "cwsandboxd unreachable: not reconnected within %d ms (%s%s%s)",
                                wait_ms, c->lost_msg, c->retry_msg[0] ? "; last attempt: " : "", c->retry_msg);
        return 0;
}

int call_new(cws_conn *c, uint32_t window, Call **ret, cws_error *err) {
        pthread_condattr_t attr;
        Call *call = calloc(1, sizeof(*call));
        int r;

        if (!call)
                return oom(err);
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&call->cond, &attr);
        pthread_condattr_destroy(&attr);
        call->conn = c;
        call->id = atomic_fetch_add(&c->next_id, 1);
        call->tail = &call->head;
        call->window = window;

        pthread_mutex_lock(&c->lock);
        c->refs++;              /* the call's; it also keeps @c while this waits for a reconnect */
        r = conn_wait_up(c, err);
        if (r == 0) {
                call->gen = c->gen;
                call->registered = true;
                call->next = c->calls;
                if (c->calls)
                        c->calls->prev = call;
                c->calls = call;
        }
        pthread_mutex_unlock(&c->lock);
        if (r != 0) {
                pthread_cond_destroy(&call->cond);
                free(call);
                conn_unref(c);
                return r;
        }
        *ret = call;
        return 0;
}

int call_send(Call *call, ClientFrame *f, cws_error *err) {
        f->call_id = call->id;
        return conn_send(call->conn, call->gen, f, err);
}

int call_recv(Call *call, int timeout_ms, DaemonFrame **ret, cws_error *err) {
        cws_conn *c = call->conn;
        struct timespec deadline;
        bool lost, ended;
        CallFrame *cf;
        int r = 0;

        if (timeout_ms >= 0)
                deadline_after(&deadline, timeout_ms);
        pthread_mutex_lock(&c->lock);
        while (!call->head && !call->ended && r == 0)
                r = timeout_ms < 0 ? pthread_cond_wait(&call->cond, &c->lock)
                                   : pthread_cond_timedwait(&call->cond, &c->lock, &deadline);
        cf = call->head;
        if (cf) {
                call->head = cf->next;
                if (!call->head)
                        call->tail = &call->head;
        }
        lost = call->lost;
        ended = call->ended;
        if (!cf && lost)
                cws_fail(err, CWS_UNAVAILABLE, "%s", c->lost_msg);
        pthread_mutex_unlock(&c->lock);

        if (cf) {
                *ret = cf->frame;
                free(cf);
                return 0;
        }
        if (lost)
                return CWS_UNAVAILABLE;
        if (ended)
                return cws_fail(err, CWS_INTERNAL, "the call has already ended");
        return cws_fail(err, CWS_DEADLINE_EXCEEDED, "no reply within %d ms", timeout_ms);
}

bool call_ready(Call *call) {
        bool ready;

        pthread_mutex_lock(&call->conn->lock);
        ready = call->head || call->ended;
        pthread_mutex_unlock(&call->conn->lock);
        return ready;
}

void call_consumed(Call *call, size_t n) {
        Cwsandboxd__V1__Credit credit = CWSANDBOXD__V1__CREDIT__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        if (call->window == 0)
                return;
        call->unacked += n;
        /* Half the window at a time: fewer frames, and the daemon never stalls
         * while the application keeps consuming. */
        if (call->unacked < call->window / 2)
                return;
        while (call->unacked > 0) {
                credit.bytes = (uint32_t)MIN(call->unacked, (uint64_t)UINT32_MAX);
                call->unacked -= credit.bytes;
                f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_CREDIT;
                f.credit = &credit;
                if (call_send(call, &f, NULL) != 0)
                        return;
        }
}

static int call_send_cancel(Call *call, cws_error *err) {
        Cwsandboxd__V1__Cancel cancel = CWSANDBOXD__V1__CANCEL__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_CANCEL;
        f.cancel = &cancel;
        return call_send(call, &f, err);
}

int call_cancel(Call *call, cws_error *err) {
        bool live;

        pthread_mutex_lock(&call->conn->lock);
        live = call->registered;
        pthread_mutex_unlock(&call->conn->lock);
        if (!live) {
                cws_ok(err);
                return 0;
        }
        return call_send_cancel(call, err);
}

void call_free(Call *call) {
        cws_conn *c;
        bool live;

        if (!call)
                return;
        c = call->conn;
        pthread_mutex_lock(&c->lock);
        live = call->registered;
        if (live)
                conn_unlink_call(c, call);
        pthread_mutex_unlock(&c->lock);
        if (live)
                (void)call_send_cancel(call, NULL);
        while (call->head) {
                CallFrame *cf = call->head;

                call->head = cf->next;
                daemon_frame_free(cf->frame);
                free(cf);
        }
        /* Unregistered: the reader no longer looks at these. */
        session_rec_free(call->attach);
        free(call->forget);
        pthread_cond_destroy(&call->cond);
        free(call);
        conn_unref(c);
}

/* Attach, detach and close: what their replies mean for the sessions re-attached later. */
static int call_track_sessions(Call *call, const ClientFrame *f, cws_error *err) {
        SessionRec *attach = NULL;
        char *forget = NULL;

        if (f->body_case == BODY(ATTACH_SESSION) && !(attach = session_rec_new(f->attach_session)))
                return oom(err);
        if (f->body_case == BODY(DETACH_SESSION) && !(forget = strdup(f->detach_session->session_id)))
                return oom(err);
        if (f->body_case == BODY(CLOSE_SESSION) && !(forget = strdup(f->close_session->session_id)))
                return oom(err);
        /* Set before the request goes out: the reader reads them when it routes the reply. */
        pthread_mutex_lock(&call->conn->lock);
        call->attach = attach;
        call->forget = forget;
        pthread_mutex_unlock(&call->conn->lock);
        return 0;
}

int call_unary(cws_conn *c, ClientFrame *f, DaemonFrame **ret, cws_error *err) {
        DaemonFrame *reply = NULL;
        Call *call = NULL;
        int r;

        r = call_new(c, 0, &call, err);
        if (r != 0)
                return r;
        r = call_track_sessions(call, f, err);
        if (r == 0)
                r = call_send(call, f, err);
        while (r == 0) {
                r = call_recv(call, -1, &reply, err);
                if (r != 0 || reply->final)
                        break;
                daemon_frame_free(TAKE_PTR(reply));
        }
        call_free(call);
        if (r != 0)
                return r;
        if (reply->error) {
                r = call_frame_error(reply, err);
                daemon_frame_free(reply);
                return r;
        }
        cws_ok(err);
        *ret = reply;
        return 0;
}
