/*
 * Connection and demultiplexer of libcwsandbox.
 *
 * One socket per cws_conn. A reader thread owned by the connection reads
 * frames, decodes each DaemonFrame and appends it to the queue of the Call
 * with its call id, then signals that call's condition variable. A final
 * frame unregisters the call, so later frames with its id (there should be
 * none) are dropped, as are frames for calls the application has freed.
 * Writers take write_lock for a whole frame; call ids come from an atomic
 * counter, so any number of threads may use one connection.
 *
 * Loss: when the socket ends (EOF, error, a connection-level error frame, or
 * cws_conn_close()), the reader marks the connection dead and ends every
 * registered call as lost, waking its waiter; new calls fail at once. Every
 * such failure is UNAVAILABLE.
 *
 * Lifetime: the connection is reference-counted: one reference for the
 * application and one per Call, so a streaming object or a call in another
 * thread may outlive cws_conn_close(). The close stops the reader (shutdown
 * of the socket, then join) and closes the fd under write_lock; the memory
 * goes with the last reference.
 *
 * Locks: conn->lock guards the call list, each call's queue and flags, dead
 * and refs. write_lock guards fd and is never taken with lock held.
 */
#define _GNU_SOURCE
#include <errno.h>
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

#define READ_BUFFER_SIZE        (64u * 1024)
#define FRAME_MAX_IN            (1024u * 1024 * 1024)   /* what we accept from the daemon */

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

static void copy_str(char *dst, size_t size, const char *src) {
        (void)snprintf(dst, size, "%s", src ? src : "");
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

/* ---- references -------------------------------------------------------------------------- */

static void conn_free(cws_conn *c) {
        daemon_frame_free(c->hello_frame);
        pthread_mutex_destroy(&c->lock);
        pthread_mutex_destroy(&c->write_lock);
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
                if (f->error) {
                        (void)snprintf(c->dead_msg, sizeof(c->dead_msg), "the daemon ended the connection: %s",
                                       f->error->message);
                        c->refused_code = f->error->code > 0 && f->error->code <= CWS_UNAUTHENTICATED ?
                                          f->error->code : CWS_UNKNOWN;
                }
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
        }
        pthread_cond_signal(&call->cond);
        return 0;
}

/* Under lock: the connection is gone; wake every call. */
static void conn_mark_dead(cws_conn *c, const char *why) {
        Call *call;

        if (!c->dead_msg[0] || c->closing)
                copy_str(c->dead_msg, sizeof(c->dead_msg), why);
        c->dead = true;
        while ((call = c->calls)) {
                conn_unlink_call(c, call);
                call->ended = true;
                call->lost = true;
                pthread_cond_signal(&call->cond);
        }
}

static int conn_read_frames(cws_conn *c, FrameDecoder *d, const char **ret_why) {
        const uint8_t *payload;
        DaemonFrame *f;
        size_t len;
        int r;

        while ((r = frame_decoder_next(d, &payload, &len)) == 1) {
                f = cwsandboxd__v1__daemon_frame__unpack(NULL, len, payload);
                if (!f) {
                        *ret_why = "the daemon sent a frame that does not decode";
                        return -EBADMSG;
                }
                pthread_mutex_lock(&c->lock);
                r = conn_route(c, f);
                pthread_mutex_unlock(&c->lock);
                if (r < 0)
                        return r;       /* the reader reports it as out of memory */
        }
        if (r != 0) {
                *ret_why = "the daemon sent a frame larger than the client accepts";
                return -EMSGSIZE;
        }
        return 0;
}

static void *conn_reader(void *userdata) {
        cws_conn *c = userdata;
        FrameDecoder d = FRAME_DECODER_NULL(d);
        const char *why = "connection to cwsandboxd lost: the daemon closed the connection";
        char msg[256];
        _cleanup_free_ uint8_t *buf = malloc(READ_BUFFER_SIZE);
        ssize_t n;

        frame_decoder_init(&d, FRAME_MAX_IN);
        while (buf) {
                n = read(c->fd, buf, READ_BUFFER_SIZE);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        (void)snprintf(msg, sizeof(msg), "connection to cwsandboxd lost: %s", strerror(errno));
                        why = msg;
                        break;
                }
                if (n == 0)
                        break;
                if (frame_decoder_feed(&d, buf, (size_t)n) != 0 || conn_read_frames(c, &d, &why) < 0) {
                        if (!strstr(why, "frame"))
                                why = "connection to cwsandboxd lost: out of memory";
                        break;
                }
        }
        if (!buf)
                why = "connection to cwsandboxd lost: out of memory";
        frame_decoder_deinit(&d);
        pthread_mutex_lock(&c->lock);
        conn_mark_dead(c, c->closing ? "the connection to cwsandboxd was closed" : why);
        pthread_mutex_unlock(&c->lock);
        /* Unblock writers stuck on a full socket the daemon no longer reads. */
        (void)shutdown(c->fd, SHUT_RDWR);
        return NULL;
}

/* ---- open and close ---------------------------------------------------------------------- */

static int conn_connect_socket(const char *path, int *ret_fd, cws_error *err) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -1;

        if (strlen(path) >= sizeof(sa.sun_path))
                return cws_fail(err, CWS_INVALID_ARGUMENT, "socket path too long: %s", path);
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return cws_fail(err, CWS_UNAVAILABLE, "cwsandboxd unreachable: socket: %s", strerror(errno));
        while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
                if (errno != EINTR)
                        return cws_fail(err, CWS_UNAVAILABLE, "cwsandboxd unreachable at %s: %s", path,
                                        strerror(errno));
        *ret_fd = TAKE_FD(fd);
        return 0;
}

int conn_open(const char *path, cws_conn **ret, cws_error *err) {
        sigset_t all, saved;
        cws_conn *c;
        int fd = -1, r;

        r = conn_connect_socket(path, &fd, err);
        if (r != 0)
                return r;
        c = calloc(1, sizeof(*c));
        if (!c) {
                close(fd);
                return cws_fail(err, CWS_RESOURCE_EXHAUSTED, "out of memory");
        }
        c->fd = fd;
        c->refs = 1;
        c->chunk_max = 1024 * 1024;
        atomic_init(&c->next_id, 1);
        pthread_mutex_init(&c->lock, NULL);
        pthread_mutex_init(&c->write_lock, NULL);
        /* The reader takes no signals: they belong to the application's threads. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &saved);
        r = pthread_create(&c->reader, NULL, conn_reader, c);
        pthread_sigmask(SIG_SETMASK, &saved, NULL);
        if (r != 0) {
                close(fd);
                conn_free(c);
                return cws_fail(err, CWS_RESOURCE_EXHAUSTED, "cannot start the reader thread: %s", strerror(r));
        }
        *ret = c;
        return 0;
}

void conn_shutdown(cws_conn *c) {
        pthread_mutex_lock(&c->lock);
        c->closing = true;
        pthread_mutex_unlock(&c->lock);
        (void)shutdown(c->fd, SHUT_RDWR);
        pthread_join(c->reader, NULL);
        pthread_mutex_lock(&c->write_lock);
        close(c->fd);
        c->fd = -1;
        pthread_mutex_unlock(&c->write_lock);
        conn_unref(c);
}

/* ---- writing ----------------------------------------------------------------------------- */

static int conn_write(cws_conn *c, const uint8_t *data, size_t len, cws_error *err) {
        ssize_t n;
        int r = 0;

        pthread_mutex_lock(&c->write_lock);
        while (len > 0 && c->fd >= 0) {
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
        if (c->dead)
                cws_fail(err, CWS_UNAVAILABLE, "%s", c->dead_msg);
        else
                cws_fail(err, CWS_UNAVAILABLE, "connection to cwsandboxd lost: %s", strerror(r));
        pthread_mutex_unlock(&c->lock);
        return CWS_UNAVAILABLE;
}

static int conn_send(cws_conn *c, ClientFrame *f, cws_error *err) {
        size_t len = cwsandboxd__v1__client_frame__get_packed_size(f);
        _cleanup_free_ uint8_t *buf = NULL;

        if (len > c->hello.max_frame_bytes && c->hello.max_frame_bytes > 0)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "request of %zu bytes exceeds the daemon's frame limit of %u",
                                len, c->hello.max_frame_bytes);
        buf = malloc(FRAME_HEADER_SIZE + len);
        if (!buf)
                return cws_fail(err, CWS_RESOURCE_EXHAUSTED, "out of memory");
        if (frame_encode_header(buf, len) < 0)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "request too large");
        (void)cwsandboxd__v1__client_frame__pack(f, buf + FRAME_HEADER_SIZE);
        return conn_write(c, buf, FRAME_HEADER_SIZE + len, err);
}

/* ---- calls ------------------------------------------------------------------------------- */

int call_new(cws_conn *c, uint32_t window, Call **ret, cws_error *err) {
        pthread_condattr_t attr;
        Call *call = calloc(1, sizeof(*call));

        if (!call)
                return cws_fail(err, CWS_RESOURCE_EXHAUSTED, "out of memory");
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&call->cond, &attr);
        pthread_condattr_destroy(&attr);
        call->conn = c;
        call->id = atomic_fetch_add(&c->next_id, 1);
        call->tail = &call->head;
        call->window = window;

        pthread_mutex_lock(&c->lock);
        if (c->dead) {
                cws_fail(err, CWS_UNAVAILABLE, "%s", c->dead_msg);
                pthread_mutex_unlock(&c->lock);
                pthread_cond_destroy(&call->cond);
                free(call);
                return CWS_UNAVAILABLE;
        }
        c->refs++;
        call->registered = true;
        call->next = c->calls;
        if (c->calls)
                c->calls->prev = call;
        c->calls = call;
        pthread_mutex_unlock(&c->lock);
        *ret = call;
        return 0;
}

int call_send(Call *call, ClientFrame *f, cws_error *err) {
        f->call_id = call->id;
        return conn_send(call->conn, f, err);
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
                cws_fail(err, CWS_UNAVAILABLE, "%s", c->dead_msg);
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
        pthread_cond_destroy(&call->cond);
        free(call);
        conn_unref(c);
}

int call_unary(cws_conn *c, ClientFrame *f, DaemonFrame **ret, cws_error *err) {
        DaemonFrame *reply = NULL;
        Call *call = NULL;
        int r;

        r = call_new(c, 0, &call, err);
        if (r != 0)
                return r;
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
