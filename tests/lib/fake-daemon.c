/*
 * Fake cwsandboxd: one thread, one poll loop over a wake pipe, the listening
 * socket and up to FAKE_CONNS_MAX client connections (non-blocking, so a
 * stale poll result never blocks the thread in read()).
 *
 * Every ClientFrame is handled where it is read. Unary requests are answered
 * at once with one final frame. Streaming requests that cannot finish at
 * once (exec "cat", "flood", "hang", file reads and writes, logs, waits that
 * never end) become a FakeCall on their connection; after each frame the
 * connection's calls are pumped: output is sent while the call has credit,
 * exactly as much as the credit allows, so a client that never grants
 * credit never gets more than its initial window.
 *
 * State the test thread reads (counters, request copies) lives under
 * @lock; everything else belongs to the fake's thread. The test thread asks
 * for a drop, a restart (down, then up on the same path) or a shutdown
 * through the wake pipe and waits on @cond until the fake's thread has done
 * it, so the effect is complete when the call returns. Writes to clients wait until they fit; a client's reader thread
 * always reads, so that cannot deadlock. A write that fails closes the connection.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "fake-daemon.h"
#include "frame.h"
#include "macro.h"

typedef Cwsandboxd__V1__ClientFrame ClientFrame;
typedef Cwsandboxd__V1__DaemonFrame DaemonFrame;
typedef Cwsandboxd__V1__SandboxInfo SandboxInfo;

#define BODY(x) CWSANDBOXD__V1__CLIENT_FRAME__BODY_##x
#define REPLY(x) CWSANDBOXD__V1__DAEMON_FRAME__BODY_##x
#define STATE(x) CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_##x

#define FAKE_CONNS_MAX          16
#define FAKE_BODY_MAX           64
#define FAKE_CHUNK              (16u * 1024)    /* exec output per frame */
#define FAKE_FILE_CHUNK         (256u * 1024)   /* file data per frame */
#define FAKE_READ_SIZE          (64u * 1024)
#define FAKE_LOG_LINES          5u

typedef enum CallKind {
        CALL_WAIT,
        CALL_EXEC,
        CALL_READ,
        CALL_WRITE,
        CALL_LOGS,
} CallKind;

typedef struct FakeCall {
        struct FakeCall *next;
        uint64_t id;
        CallKind kind;
        int64_t credit;
        bool hanging;                   /* counted in FAKE_HANGING */
        bool cat;                       /* exec: echo stdin */
        uint64_t flood_left, flood_sent;
        uint8_t *data;                  /* read: the content; write: what came */
        size_t len, off;
        char *path;                     /* write: where to store it */
        unsigned next_line;             /* logs: 1-based */
        bool follow;
} FakeCall;

typedef struct FakeConn {
        int fd;                         /* -1: a free slot */
        FrameDecoder decoder;
        bool greeted;
        bool broken;                    /* close after this round */
        bool shut;                      /* no longer read (fake_daemon_shut_read()) */
        FakeCall *calls;
} FakeConn;

typedef struct FakeFile {
        char *path;
        uint8_t *data;
        size_t len;
} FakeFile;

typedef enum Command {
        CMD_NONE,
        CMD_DROP,
        CMD_SHUT_READ,
        CMD_DOWN,
        CMD_UP,
        CMD_UP_FRESH,
        CMD_STOP,
} Command;

/* A request kept whole by fake_daemon_nth(). */
typedef struct Kept {
        uint8_t *data;
        size_t len;
} Kept;

struct FakeDaemon {
        FakeDaemonOpts opts;
        char dir[64];
        char path[128];
        int listen_fd;
        int wake[2];
        pthread_t thread;
        bool thread_started;
        FakeConn conns[FAKE_CONNS_MAX];
        FakeFile *files;
        size_t n_files;
        char **sessions;
        size_t n_sessions;
        unsigned epoch;                 /* +1 per restart that loses state; part of new session ids */
        unsigned n_handles;

        pthread_mutex_t lock;
        pthread_cond_t cond;
        uint64_t counters[_FAKE_COUNTER_MAX];
        unsigned requests[FAKE_BODY_MAX];
        uint8_t *last[FAKE_BODY_MAX];
        size_t last_len[FAKE_BODY_MAX];
        Kept *kept[FAKE_BODY_MAX];      /* every request, for the bodies fake_daemon_nth() keeps */
        size_t n_kept[FAKE_BODY_MAX];
        bool refuse_hello;
        Command command;
        int command_result;
        unsigned command_seq, done_seq;
};

/* ---- shared state -------------------------------------------------------------------------- */

static void count_add(FakeDaemon *d, FakeCounter what, int64_t delta) {
        pthread_mutex_lock(&d->lock);
        d->counters[what] += (uint64_t)delta;
        pthread_cond_broadcast(&d->cond);
        pthread_mutex_unlock(&d->lock);
}

/* Hello and the session requests: few and small, so every one is kept. */
static bool body_kept(int body) {
        return body == BODY(HELLO) || body == BODY(ATTACH_SESSION) || body == BODY(DETACH_SESSION) ||
               body == BODY(CLOSE_SESSION);
}

static void keep_request(FakeDaemon *d, int body, const uint8_t *p, size_t n) {
        uint8_t *copy = malloc(n ? n : 1);
        Kept *v;

        if (!copy)
                return;
        if (n)
                memcpy(copy, p, n);
        v = reallocarray(d->kept[body], d->n_kept[body] + 1, sizeof(*v));
        if (!v) {
                free(copy);
                return;
        }
        d->kept[body] = v;
        v[d->n_kept[body]++] = (Kept) { .data = copy, .len = n };
}

static void record_request(FakeDaemon *d, int body, const uint8_t *p, size_t n) {
        uint8_t *copy;

        if (body < 0 || body >= FAKE_BODY_MAX)
                return;
        copy = malloc(n ? n : 1);
        if (copy && n)
                memcpy(copy, p, n);
        pthread_mutex_lock(&d->lock);
        d->requests[body]++;
        if (copy) {
                free(d->last[body]);
                d->last[body] = copy;
                d->last_len[body] = n;
        }
        if (body_kept(body))
                keep_request(d, body, p, n);
        pthread_mutex_unlock(&d->lock);
}

uint64_t fake_daemon_count(FakeDaemon *d, FakeCounter what) {
        uint64_t v;

        pthread_mutex_lock(&d->lock);
        v = d->counters[what];
        pthread_mutex_unlock(&d->lock);
        return v;
}

bool fake_daemon_wait(FakeDaemon *d, FakeCounter what, uint64_t n, int timeout_ms) {
        struct timespec deadline;
        bool reached;
        int r = 0;

        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
                deadline.tv_sec++;
                deadline.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&d->lock);
        while (d->counters[what] < n && r == 0)
                r = pthread_cond_timedwait(&d->cond, &d->lock, &deadline);
        reached = d->counters[what] >= n;
        pthread_mutex_unlock(&d->lock);
        return reached;
}

unsigned fake_daemon_requests(FakeDaemon *d, int body_case) {
        unsigned n;

        if (body_case < 0 || body_case >= FAKE_BODY_MAX)
                return 0;
        pthread_mutex_lock(&d->lock);
        n = d->requests[body_case];
        pthread_mutex_unlock(&d->lock);
        return n;
}

ClientFrame *fake_daemon_last(FakeDaemon *d, int body_case) {
        ClientFrame *f = NULL;

        if (body_case < 0 || body_case >= FAKE_BODY_MAX)
                return NULL;
        pthread_mutex_lock(&d->lock);
        if (d->last[body_case])
                f = cwsandboxd__v1__client_frame__unpack(NULL, d->last_len[body_case], d->last[body_case]);
        pthread_mutex_unlock(&d->lock);
        return f;
}

ClientFrame *fake_daemon_nth(FakeDaemon *d, int body_case, unsigned n) {
        ClientFrame *f = NULL;

        if (!body_kept(body_case))
                return NULL;
        pthread_mutex_lock(&d->lock);
        if (n < d->n_kept[body_case])
                f = cwsandboxd__v1__client_frame__unpack(NULL, d->kept[body_case][n].len, d->kept[body_case][n].data);
        pthread_mutex_unlock(&d->lock);
        return f;
}

const char *fake_daemon_socket(const FakeDaemon *d) {
        return d->path;
}

/* ---- sending ------------------------------------------------------------------------------ */

static void conn_send(FakeConn *c, DaemonFrame *f) {
        size_t len = cwsandboxd__v1__daemon_frame__get_packed_size(f), off = 0;
        _cleanup_free_ uint8_t *buf = NULL;
        ssize_t n;

        if (c->broken)
                return;
        buf = malloc(FRAME_HEADER_SIZE + len);
        if (!buf || frame_encode_header(buf, len) < 0) {
                c->broken = true;
                return;
        }
        (void)cwsandboxd__v1__daemon_frame__pack(f, buf + FRAME_HEADER_SIZE);
        len += FRAME_HEADER_SIZE;
        while (off < len) {
                n = send(c->fd, buf + off, len - off, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN) {
                        /* The client's reader always drains: wait for it. */
                        struct pollfd p = { .fd = c->fd, .events = POLLOUT };

                        (void)poll(&p, 1, -1);
                        continue;
                }
                if (n < 0) {
                        c->broken = true;
                        return;
                }
                off += (size_t)n;
        }
}

static void send_data(FakeConn *c, uint64_t id, DaemonFrame *f) {
        f->call_id = id;
        f->final = false;
        conn_send(c, f);
}

static void send_final(FakeConn *c, uint64_t id, DaemonFrame *f) {
        f->call_id = id;
        f->final = true;
        conn_send(c, f);
}

static void send_empty_final(FakeConn *c, uint64_t id) {
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

        send_final(c, id, &f);
}

_printf_(5, 6)
static void send_error(FakeConn *c, uint64_t id, int code, const char *reason, const char *fmt, ...) {
        Cwsandboxd__V1__Error e = CWSANDBOXD__V1__ERROR__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        char msg[256];
        va_list ap;

        va_start(ap, fmt);
        (void)vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        e.code = code;
        e.message = msg;
        e.reason = (char *)(reason ? reason : "");
        f.error = &e;
        send_final(c, id, &f);
}

static void send_not_found(FakeConn *c, uint64_t id, const char *sandbox_id) {
        Cwsandboxd__V1__Error e = CWSANDBOXD__V1__ERROR__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

        e.code = 5;
        e.message = (char *)"sandbox not found";
        e.reason = (char *)"CWSANDBOX_SANDBOX_NOT_FOUND";
        e.sandbox_id = (char *)sandbox_id;
        f.error = &e;
        send_final(c, id, &f);
}

static void send_output(FakeConn *c, uint64_t id, bool is_stderr, const void *data, size_t n) {
        Cwsandboxd__V1__ExecOutput out = CWSANDBOXD__V1__EXEC_OUTPUT__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

        out.stream = is_stderr ? CWSANDBOXD__V1__EXEC_OUTPUT__STREAM__STDERR
                               : CWSANDBOXD__V1__EXEC_OUTPUT__STREAM__STDOUT;
        out.data = (ProtobufCBinaryData) { .len = n, .data = (uint8_t *)data };
        f.body_case = REPLY(EXEC_OUTPUT);
        f.exec_output = &out;
        send_data(c, id, &f);
}

/* As the daemon ends a streamed exec: ExecExit, then an empty final frame. */
static void send_exit(FakeConn *c, uint64_t id, int code) {
        Cwsandboxd__V1__ExecExit ex = CWSANDBOXD__V1__EXEC_EXIT__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

        ex.exit_code = code;
        f.body_case = REPLY(EXEC_EXIT);
        f.exec_exit = &ex;
        send_data(c, id, &f);
        send_empty_final(c, id);
}

/* ---- calls -------------------------------------------------------------------------------- */

static FakeCall *call_find(FakeConn *c, uint64_t id) {
        for (FakeCall *call = c->calls; call; call = call->next)
                if (call->id == id)
                        return call;
        return NULL;
}

static FakeCall *call_add(FakeConn *c, uint64_t id, CallKind kind) {
        FakeCall *call = calloc(1, sizeof(*call));

        if (!call) {
                c->broken = true;
                return NULL;
        }
        call->id = id;
        call->kind = kind;
        call->next = c->calls;
        c->calls = call;
        return call;
}

static void call_hang(FakeDaemon *d, FakeCall *call) {
        if (call->hanging)
                return;
        call->hanging = true;
        count_add(d, FAKE_HANGING, 1);
}

/* Unlink and free; its final frame has been sent (or the connection is gone). */
static void call_end(FakeDaemon *d, FakeConn *c, FakeCall *call) {
        for (FakeCall **p = &c->calls; *p; p = &(*p)->next)
                if (*p == call) {
                        *p = call->next;
                        break;
                }
        free(call->data);
        free(call->path);
        free(call);
}

/* ---- canned data -------------------------------------------------------------------------- */

static FakeFile *file_find(FakeDaemon *d, const char *path) {
        for (size_t i = 0; i < d->n_files; i++)
                if (streq(d->files[i].path, path))
                        return &d->files[i];
        return NULL;
}

/* Store @data (taken) as @path. */
static int file_store(FakeDaemon *d, const char *path, uint8_t *data, size_t len) {
        FakeFile *f = file_find(d, path), *v;

        if (f) {
                free(f->data);
                f->data = data;
                f->len = len;
                return 0;
        }
        v = reallocarray(d->files, d->n_files + 1, sizeof(*v));
        if (!v)
                return -ENOMEM;
        d->files = v;
        f = &d->files[d->n_files];
        f->path = strdup(path);
        if (!f->path)
                return -ENOMEM;
        f->data = data;
        f->len = len;
        d->n_files++;
        return 0;
}

/* Whether the session called @name existed; adds it if not. */
static bool session_seen(FakeDaemon *d, const char *name) {
        char **v;

        for (size_t i = 0; i < d->n_sessions; i++)
                if (streq(d->sessions[i], name))
                        return true;
        v = reallocarray(d->sessions, d->n_sessions + 1, sizeof(*v));
        if (v) {
                d->sessions = v;
                d->sessions[d->n_sessions] = strdup(name);
                if (d->sessions[d->n_sessions])
                        d->n_sessions++;
        }
        return false;
}

static void sandbox_info(SandboxInfo *s, const char *id, Cwsandboxd__V1__SandboxState state) {
        cwsandboxd__v1__sandbox_info__init(s);
        s->sandbox_id = (char *)id;
        s->handle_id = (char *)id;
        s->session_id = (char *)"ses-fake";
        s->state = state;
        s->container_image = (char *)"python:3.11";
        s->create_time_ms = 1000;
}

static void send_sandbox(FakeConn *c, uint64_t id, SandboxInfo *s) {
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

        f.body_case = REPLY(SANDBOX);
        f.sandbox = s;
        send_final(c, id, &f);
}

/* ---- requests: handshake and sessions ----------------------------------------------------- */

static void on_hello(FakeDaemon *d, FakeConn *c, const ClientFrame *f) {
        static const char *const features[] = { "exec-stream", "fake" };
        Cwsandboxd__V1__HelloReply hr = CWSANDBOXD__V1__HELLO_REPLY__INIT;
        DaemonFrame r = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

        bool refuse;

        pthread_mutex_lock(&d->lock);
        refuse = d->opts.refuse_hello || d->refuse_hello;
        pthread_mutex_unlock(&d->lock);
        if (refuse) {
                send_error(c, 0, 9, NULL, "protocol version %u is not supported", f->hello->protocol_version);
                c->broken = true;
                return;
        }
        c->greeted = true;
        hr.protocol_version = d->opts.protocol_version;
        hr.daemon_version = (char *)"fake-1";
        hr.backend_kind = (char *)"local";
        hr.backend_url = (char *)"";
        hr.features = (char **)features;
        hr.n_features = ELEMENTSOF(features);
        hr.max_frame_bytes = d->opts.max_frame_bytes;
        r.body_case = REPLY(HELLO);
        r.hello = &hr;
        send_final(c, f->call_id, &r);
}

static void session_pb(Cwsandboxd__V1__Session *s, char *id, const char *name, bool created) {
        cwsandboxd__v1__session__init(s);
        s->session_id = id;
        s->name = (char *)name;
        s->owner_uid = (uint32_t)getuid();
        s->linger_seconds = 30;
        s->connections = 1;
        s->created = created;
}

/* The id of session @name: "ses-<name>", and "ses-<epoch>-<name>" after a restart that lost state. */
static void session_id(const FakeDaemon *d, const char *name, char *buf, size_t size) {
        if (d->epoch == 0)
                (void)snprintf(buf, size, "ses-%s", name);
        else
                (void)snprintf(buf, size, "ses-%u-%s", d->epoch, name);
}

static void on_attach(FakeDaemon *d, FakeConn *c, const ClientFrame *f) {
        const Cwsandboxd__V1__AttachSessionRequest *req = f->attach_session;
        Cwsandboxd__V1__Session s;
        DaemonFrame r = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        char id[160];

        if (streq(req->name, "refuse")) {
                send_error(c, f->call_id, 7, "SESSION_OWNED", "session \"%s\" belongs to another user", req->name);
                return;
        }
        session_id(d, req->name, id, sizeof(id));
        session_pb(&s, id, req->name, !session_seen(d, req->name));
        if (req->has_linger)
                s.linger_seconds = req->linger_seconds;
        s.defaults = req->defaults;
        r.body_case = REPLY(SESSION);
        r.session = &s;
        send_final(c, f->call_id, &r);
}

/* Before any restart that lost state every "ses-" id is taken; after one, only ids of its epoch. */
static bool session_known(const FakeDaemon *d, const char *id) {
        char prefix[32];

        if (d->epoch == 0)
                return strncmp(id, "ses-", 4) == 0;
        (void)snprintf(prefix, sizeof(prefix), "ses-%u-", d->epoch);
        return strncmp(id, prefix, strlen(prefix)) == 0;
}

static void on_detach(FakeDaemon *d, FakeConn *c, const ClientFrame *f) {
        if (!session_known(d, f->detach_session->session_id))
                send_error(c, f->call_id, 5, NULL, "no session %s", f->detach_session->session_id);
        else
                send_empty_final(c, f->call_id);
}

static void on_close_session(FakeDaemon *d, FakeConn *c, const ClientFrame *f) {
        Cwsandboxd__V1__CloseSessionReply cr = CWSANDBOXD__V1__CLOSE_SESSION_REPLY__INIT;
        Cwsandboxd__V1__Error e = CWSANDBOXD__V1__ERROR__INIT, *failures[] = { &e };
        DaemonFrame r = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

        if (!session_known(d, f->close_session->session_id)) {
                send_error(c, f->call_id, 5, NULL, "no session %s", f->close_session->session_id);
                return;
        }
        e.code = 14;
        e.message = (char *)"backend unavailable while stopping";
        e.sandbox_id = (char *)"sb-stuck";
        e.retryable = true;
        e.retry_delay_ms = 500;
        cr.stopped = 2;
        cr.failures = failures;
        cr.n_failures = ELEMENTSOF(failures);
        r.body_case = REPLY(CLOSE_SESSION);
        r.close_session = &cr;
        send_final(c, f->call_id, &r);
}

static void on_list_sessions(FakeDaemon *d, FakeConn *c, const ClientFrame *f) {
        Cwsandboxd__V1__ListSessionsReply lr = CWSANDBOXD__V1__LIST_SESSIONS_REPLY__INIT;
        DaemonFrame r = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        Cwsandboxd__V1__Session *v = calloc(d->n_sessions + 1, sizeof(*v));
        Cwsandboxd__V1__Session **ptrs = calloc(d->n_sessions + 1, sizeof(*ptrs));
        char (*ids)[160] = calloc(d->n_sessions + 1, sizeof(*ids));

        if (!v || !ptrs || !ids) {
                c->broken = true;
                goto out;
        }
        for (size_t i = 0; i < d->n_sessions; i++) {
                session_id(d, d->sessions[i], ids[i], sizeof(ids[i]));
                session_pb(&v[i], ids[i], d->sessions[i], false);
                ptrs[i] = &v[i];
        }
        lr.sessions = ptrs;
        lr.n_sessions = d->n_sessions;
        r.body_case = REPLY(SESSIONS);
        r.sessions = &lr;
        send_final(c, f->call_id, &r);
out:
        free(v);
        free(ptrs);
        free(ids);
}

/* ---- requests: sandboxes ------------------------------------------------------------------ */

static void on_create(FakeDaemon *d, FakeConn *c, const ClientFrame *f) {
        const Cwsandboxd__V1__CreateSandboxRequest *req = f->create_sandbox;
        SandboxInfo s;
        char handle[32], sandbox_id[32];

        if (!session_known(d, req->session_id)) {
                send_error(c, f->call_id, 5, NULL, "no session %s", req->session_id);
                return;
        }
        d->n_handles++;
        (void)snprintf(handle, sizeof(handle), "h-%u", d->n_handles);
        (void)snprintf(sandbox_id, sizeof(sandbox_id), "sb-%u", d->n_handles);
        sandbox_info(&s, req->start ? sandbox_id : "", req->start ? STATE(CREATING) : STATE(UNSTARTED));
        s.handle_id = handle;
        s.session_id = req->session_id;
        s.scope = req->scope;
        if (req->args) {
                s.tags = req->args->tags;
                s.n_tags = req->args->n_tags;
                if (*req->args->container_image)
                        s.container_image = req->args->container_image;
        }
        send_sandbox(c, f->call_id, &s);
}

static void on_start(FakeConn *c, const ClientFrame *f) {
        const char *id = f->start_sandbox->sandbox_id;
        SandboxInfo s;

        if (streq(id, "missing")) {
                send_not_found(c, f->call_id, id);
                return;
        }
        sandbox_info(&s, id, STATE(RUNNING));
        s.start_time_ms = 2000;
        send_sandbox(c, f->call_id, &s);
}

static void on_wait(FakeDaemon *d, FakeConn *c, const ClientFrame *f) {
        const Cwsandboxd__V1__WaitSandboxRequest *req = f->wait_sandbox;
        FakeCall *call;
        SandboxInfo s;

        if (streq(req->sandbox_id, "missing")) {
                send_not_found(c, f->call_id, req->sandbox_id);
                return;
        }
        if (streq(req->sandbox_id, "never")) {
                call = call_add(c, f->call_id, CALL_WAIT);
                if (call)
                        call_hang(d, call);
                return;
        }
        sandbox_info(&s, req->sandbox_id, req->until_complete ? STATE(COMPLETED) : STATE(RUNNING));
        if (req->until_complete) {
                s.has_exit_code = true;
                s.exit_code = 0;
                s.end_time_ms = 3000;
        }
        send_sandbox(c, f->call_id, &s);
}

static void on_get(FakeConn *c, const ClientFrame *f) {
        const Cwsandboxd__V1__GetSandboxRequest *req = f->get_sandbox;
        SandboxInfo s;

        if (streq(req->sandbox_id, "missing")) {
                send_not_found(c, f->call_id, req->sandbox_id);
                return;
        }
        sandbox_info(&s, req->sandbox_id, STATE(RUNNING));
        s.state_reason = (char *)(req->refresh ? "refreshed" : "cached");
        send_sandbox(c, f->call_id, &s);
}

static void on_list(FakeConn *c, const ClientFrame *f) {
        const Cwsandboxd__V1__ListSandboxesRequest *req = f->list_sandboxes;
        Cwsandboxd__V1__ListSandboxesReply lr = CWSANDBOXD__V1__LIST_SANDBOXES_REPLY__INIT;
        DaemonFrame r = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        SandboxInfo v[3], *ptrs[3];
        static const char *const ids[] = { "sb-a", "sb-b", "sb-c" };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                sandbox_info(&v[i], ids[i], req->status ? req->status : STATE(RUNNING));
                v[i].tags = req->tags;
                v[i].n_tags = req->n_tags;
                if (*req->session_id)
                        v[i].session_id = req->session_id;
                ptrs[i] = &v[i];
        }
        lr.sandboxes = ptrs;
        lr.n_sandboxes = ELEMENTSOF(v);
        r.body_case = REPLY(SANDBOXES);
        r.sandboxes = &lr;
        send_final(c, f->call_id, &r);
}

static void on_adopt(FakeConn *c, const ClientFrame *f) {
        const Cwsandboxd__V1__AdoptSandboxRequest *req = f->adopt_sandbox;
        SandboxInfo s;

        if (streq(req->sandbox_id, "missing")) {
                send_not_found(c, f->call_id, req->sandbox_id);
                return;
        }
        sandbox_info(&s, req->sandbox_id, STATE(RUNNING));
        s.handle_id = (char *)(req->adopt ? "h-adopted" : "");
        s.session_id = (char *)(req->adopt ? req->session_id : "");
        send_sandbox(c, f->call_id, &s);
}

static void on_stop(FakeConn *c, const ClientFrame *f) {
        const Cwsandboxd__V1__StopSandboxRequest *req = f->stop_sandbox;
        Cwsandboxd__V1__StopSandboxReply sr = CWSANDBOXD__V1__STOP_SANDBOX_REPLY__INIT;
        DaemonFrame r = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        SandboxInfo s;

        if (streq(req->sandbox_id, "missing") && !req->missing_ok) {
                send_not_found(c, f->call_id, req->sandbox_id);
                return;
        }
        if (!streq(req->sandbox_id, "missing")) {
                sandbox_info(&s, req->sandbox_id, STATE(TERMINATED));
                s.end_time_ms = 4000;
                sr.sandbox = &s;
        }
        r.body_case = REPLY(STOP_SANDBOX);
        r.stop_sandbox = &sr;
        send_final(c, f->call_id, &r);
}

static void on_delete(FakeConn *c, const ClientFrame *f) {
        const Cwsandboxd__V1__DeleteSandboxRequest *req = f->delete_sandbox;

        if (streq(req->sandbox_id, "missing") && !req->missing_ok)
                send_not_found(c, f->call_id, req->sandbox_id);
        else
                send_empty_final(c, f->call_id);
}

/* ---- requests: exec ----------------------------------------------------------------------- */

/* argv[1..] joined by spaces, with a newline: what "echo" prints. */
static char *echo_line(const Cwsandboxd__V1__ExecRequest *req) {
        size_t len = 2;
        char *s;

        for (size_t i = 1; i < req->n_command; i++)
                len += strlen(req->command[i]) + 1;
        s = calloc(1, len);
        if (!s)
                return NULL;
        for (size_t i = 1; i < req->n_command; i++) {
                if (i > 1)
                        strcat(s, " ");
                strcat(s, req->command[i]);
        }
        strcat(s, "\n");
        return s;
}

static int exec_arg_int(const Cwsandboxd__V1__ExecRequest *req) {
        return req->n_command > 1 ? atoi(req->command[1]) : 0;
}

static void exec_buffered(FakeConn *c, const ClientFrame *f) {
        const Cwsandboxd__V1__ExecRequest *req = f->exec;
        Cwsandboxd__V1__ExecResult res = CWSANDBOXD__V1__EXEC_RESULT__INIT;
        DaemonFrame r = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        const char *cmd = req->command[0];
        _cleanup_free_ char *line = NULL;

        if (streq(cmd, "fail")) {
                Cwsandboxd__V1__Error e = CWSANDBOXD__V1__ERROR__INIT;

                e.code = 14;
                e.message = (char *)"backend unavailable";
                e.reason = (char *)"CWSANDBOX_BACKEND_UNAVAILABLE";
                e.retryable = true;
                e.retry_delay_ms = 250;
                e.sandbox_id = req->sandbox_id;
                r.error = &e;
                send_final(c, f->call_id, &r);
                return;
        }
        if (streq(cmd, "echo")) {
                line = echo_line(req);
                if (!line) {
                        c->broken = true;
                        return;
                }
                res.stdout = (ProtobufCBinaryData) { .len = strlen(line), .data = (uint8_t *)line };
                res.stderr = (ProtobufCBinaryData) { .len = 5, .data = (uint8_t *)"warn\n" };
        } else if (streq(cmd, "exit"))
                res.exit_code = exec_arg_int(req);
        else {
                send_error(c, f->call_id, 3, NULL, "the fake does not know \"%s\"", cmd);
                return;
        }
        r.body_case = REPLY(EXEC_RESULT);
        r.exec_result = &res;
        send_final(c, f->call_id, &r);
}

static void exec_stream(FakeDaemon *d, FakeConn *c, const ClientFrame *f) {
        const Cwsandboxd__V1__ExecRequest *req = f->exec;
        const char *cmd = req->command[0];
        _cleanup_free_ char *line = NULL;
        FakeCall *call;

        if (streq(cmd, "echo")) {
                line = echo_line(req);
                if (!line) {
                        c->broken = true;
                        return;
                }
                send_output(c, f->call_id, false, line, strlen(line));
                send_output(c, f->call_id, true, "warn\n", 5);
                send_exit(c, f->call_id, 0);
        } else if (streq(cmd, "exit"))
                send_exit(c, f->call_id, exec_arg_int(req));
        else if (streq(cmd, "cut")) {
                send_output(c, f->call_id, false, "partial\n", 8);
                send_empty_final(c, f->call_id);
        } else if (streq(cmd, "fail")) {
                send_output(c, f->call_id, false, "partial\n", 8);
                send_error(c, f->call_id, 15, "STREAM_TRUNCATED", "the backend stream was lost");
        } else if (streq(cmd, "drop")) {
                send_output(c, f->call_id, false, "partial\n", 8);
                c->broken = true;
        } else if (streq(cmd, "cat") || streq(cmd, "flood") || streq(cmd, "hang")) {
                call = call_add(c, f->call_id, CALL_EXEC);
                if (!call)
                        return;
                call->credit = req->initial_credit ? req->initial_credit : FAKE_EXEC_CREDIT;
                call->cat = streq(cmd, "cat");
                if (streq(cmd, "flood"))
                        call->flood_left = (uint64_t)MAX(exec_arg_int(req), 0);
                if (streq(cmd, "hang"))
                        call_hang(d, call);
        } else
                send_error(c, f->call_id, 3, NULL, "the fake does not know \"%s\"", cmd);
}

static void on_exec(FakeDaemon *d, FakeConn *c, const ClientFrame *f) {
        if (f->exec->n_command == 0) {
                send_error(c, f->call_id, 3, NULL, "exec: no command");
                return;
        }
        if (f->exec->buffered)
                exec_buffered(c, f);
        else
                exec_stream(d, c, f);
}

static void exec_input(FakeDaemon *d, FakeConn *c, FakeCall *call, const Cwsandboxd__V1__ExecInput *in) {
        char msg[64];

        if (!call->cat)
                return;
        switch (in->input_case) {
        case CWSANDBOXD__V1__EXEC_INPUT__INPUT_STDIN:
                send_output(c, call->id, false, in->stdin.data, in->stdin.len);
                break;
        case CWSANDBOXD__V1__EXEC_INPUT__INPUT_RESIZE:
                (void)snprintf(msg, sizeof(msg), "resize %ux%u\n", in->resize->width, in->resize->height);
                send_output(c, call->id, true, msg, strlen(msg));
                break;
        case CWSANDBOXD__V1__EXEC_INPUT__INPUT_CLOSE:
                send_exit(c, call->id, 0);
                call_end(d, c, call);
                break;
        default:
                break;
        }
}

/* ---- requests: files and logs -------------------------------------------------------------- */

static void on_read_file(FakeDaemon *d, FakeConn *c, const ClientFrame *f) {
        FakeFile *file = file_find(d, f->read_file->path);
        FakeCall *call;

        if (!file) {
                send_error(c, f->call_id, 5, "CWSANDBOX_FILE_NOT_FOUND", "%s: no such file", f->read_file->path);
                return;
        }
        call = call_add(c, f->call_id, CALL_READ);
        if (!call)
                return;
        call->credit = FAKE_READ_CREDIT;
        call->len = file->len;
        call->data = malloc(file->len ? file->len : 1);
        if (!call->data) {
                c->broken = true;
                return;
        }
        if (file->len)
                memcpy(call->data, file->data, file->len);
}

static void on_write_file(FakeConn *c, const ClientFrame *f) {
        const Cwsandboxd__V1__WriteFileRequest *req = f->write_file;
        FakeCall *call;

        if (req->size > FAKE_FILE_MAX) {
                send_error(c, f->call_id, 8, "CWSANDBOX_FILE_TOO_LARGE",
                           "%" PRIu64 " bytes is more than the limit of %u", req->size, FAKE_FILE_MAX);
                return;
        }
        call = call_add(c, f->call_id, CALL_WRITE);
        if (!call)
                return;
        call->len = req->size;
        call->data = malloc(req->size ? req->size : 1);
        call->path = strdup(req->path);
        if (!call->data || !call->path)
                c->broken = true;
}

static void write_chunk(FakeDaemon *d, FakeConn *c, FakeCall *call, const Cwsandboxd__V1__FileChunk *chunk) {
        Cwsandboxd__V1__WriteFileReply wr = CWSANDBOXD__V1__WRITE_FILE_REPLY__INIT;
        DaemonFrame r = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

        if (chunk->data.len > call->len - call->off) {
                send_error(c, call->id, 3, NULL, "more data than announced");
                call_end(d, c, call);
                return;
        }
        if (chunk->data.len)
                memcpy(call->data + call->off, chunk->data.data, chunk->data.len);
        call->off += chunk->data.len;
        if (!chunk->last)
                return;
        if (call->off != call->len) {
                send_error(c, call->id, 3, NULL, "%zu bytes came, %zu were announced", call->off, call->len);
        } else if (file_store(d, call->path, call->data, call->len) < 0) {
                send_error(c, call->id, 8, NULL, "out of memory");
        } else {
                call->data = NULL;
                wr.bytes_written = call->len;
                r.body_case = REPLY(WRITE_FILE);
                r.write_file = &wr;
                send_final(c, call->id, &r);
        }
        call_end(d, c, call);
}

static void on_logs(FakeConn *c, const ClientFrame *f) {
        const Cwsandboxd__V1__LogsRequest *req = f->logs;
        FakeCall *call;

        if (streq(req->sandbox_id, "missing")) {
                send_not_found(c, f->call_id, req->sandbox_id);
                return;
        }
        call = call_add(c, f->call_id, CALL_LOGS);
        if (!call)
                return;
        call->credit = FAKE_LOGS_CREDIT;
        call->follow = req->follow;
        call->next_line = 1;
        if (req->tail_lines > 0 && (unsigned)req->tail_lines < FAKE_LOG_LINES)
                call->next_line = FAKE_LOG_LINES - (unsigned)req->tail_lines + 1;
}

/* ---- requests: daemon --------------------------------------------------------------------- */

static void on_status(FakeDaemon *d, FakeConn *c, const ClientFrame *f) {
        Cwsandboxd__V1__StatusReply sr = CWSANDBOXD__V1__STATUS_REPLY__INIT;
        Cwsandboxd__V1__StatusReply__SandboxesByStateEntry e[2], *ptrs[2];
        DaemonFrame r = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

        /* A frame for a call the client never made: it must drop it. */
        r.body_case = REPLY(STATUS);
        r.status = &sr;
        send_data(c, f->call_id + 1000000, &r);

        for (size_t i = 0; i < ELEMENTSOF(e); i++) {
                cwsandboxd__v1__status_reply__sandboxes_by_state_entry__init(&e[i]);
                ptrs[i] = &e[i];
        }
        e[0].key = (char *)"RUNNING";
        e[0].value = 2;
        e[1].key = (char *)"UNSTARTED";
        e[1].value = 1;
        sr.daemon_version = (char *)"fake-1";
        sr.backend_kind = (char *)"local";
        sr.backend_url = (char *)"";
        sr.uptime_ms = 1234;
        sr.sessions = (uint32_t)d->n_sessions;
        sr.connections = (uint32_t)fake_daemon_count(d, FAKE_CONNECTIONS);
        sr.sandboxes_by_state = ptrs;
        sr.n_sandboxes_by_state = ELEMENTSOF(ptrs);
        sr.state_file_status = (char *)"none";
        send_final(c, f->call_id, &r);
}

static void on_metrics(FakeConn *c, const ClientFrame *f) {
        const Cwsandboxd__V1__MetricsRequest *req = f->metrics;
        Cwsandboxd__V1__MetricsReply mr = CWSANDBOXD__V1__METRICS_REPLY__INIT;
        Cwsandboxd__V1__MetricsReply__ValuesEntry e[2], *ptrs[2];
        DaemonFrame r = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

        for (size_t i = 0; i < ELEMENTSOF(e); i++) {
                cwsandboxd__v1__metrics_reply__values_entry__init(&e[i]);
                ptrs[i] = &e[i];
        }
        e[0].key = (char *)"sandboxes_created_total";
        e[0].value = 3;
        e[1].key = (char *)"exec_seconds_sum";
        e[1].value = 0.5;
        mr.values = ptrs;
        mr.n_values = ELEMENTSOF(ptrs);
        mr.prometheus_text = (char *)(req->prometheus ? "sandboxes_created_total 3\n" : "");
        r.body_case = REPLY(METRICS);
        r.metrics = &mr;
        send_final(c, f->call_id, &r);
}

/* ---- stream data, credit and cancel -------------------------------------------------------- */

static void on_cancel(FakeDaemon *d, FakeConn *c, FakeCall *call) {
        uint64_t id = call->id;

        call_end(d, c, call);
        count_add(d, FAKE_CANCELS, 1);
        send_error(c, id, 1, NULL, "cancelled by the client");
}

static void on_stream_frame(FakeDaemon *d, FakeConn *c, const ClientFrame *f) {
        FakeCall *call = call_find(c, f->call_id);

        if (!call) {
                count_add(d, FAKE_STRAY, 1);
                return;
        }
        switch (f->body_case) {
        case BODY(EXEC_INPUT):
                if (call->kind == CALL_EXEC)
                        exec_input(d, c, call, f->exec_input);
                break;
        case BODY(FILE_CHUNK):
                if (call->kind == CALL_WRITE)
                        write_chunk(d, c, call, f->file_chunk);
                break;
        case BODY(CREDIT):
                call->credit += f->credit->bytes;
                count_add(d, FAKE_CREDIT_BYTES, f->credit->bytes);
                break;
        case BODY(CANCEL):
                on_cancel(d, c, call);
                break;
        default:
                break;
        }
}

/* Send what the call's credit allows. */
static void pump_call(FakeDaemon *d, FakeConn *c, FakeCall *call) {
        Cwsandboxd__V1__FileChunk chunk = CWSANDBOXD__V1__FILE_CHUNK__INIT;
        Cwsandboxd__V1__LogLine line = CWSANDBOXD__V1__LOG_LINE__INIT;
        DaemonFrame r = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        uint8_t buf[FAKE_CHUNK];
        char text[32];
        size_t n;

        switch (call->kind) {
        case CALL_EXEC:
                if (call->cat || call->hanging)
                        return;
                while (call->flood_left > 0 && call->credit > 0 && !c->broken) {
                        n = (size_t)MIN((uint64_t)MIN((int64_t)FAKE_CHUNK, call->credit), call->flood_left);
                        for (size_t i = 0; i < n; i++)
                                buf[i] = (uint8_t)((call->flood_sent + i) % 251);
                        send_output(c, call->id, false, buf, n);
                        call->flood_sent += n;
                        call->flood_left -= n;
                        call->credit -= (int64_t)n;
                }
                if (call->flood_left == 0) {
                        send_exit(c, call->id, 0);
                        call_end(d, c, call);
                }
                break;
        case CALL_READ:
                /* An empty file is one empty chunk with last. */
                while ((call->credit > 0 || call->len == 0) && call->off <= call->len && !c->broken) {
                        n = MIN(call->len - call->off, (size_t)MIN((int64_t)FAKE_FILE_CHUNK, call->credit));
                        chunk.data = (ProtobufCBinaryData) { .len = n, .data = call->data + call->off };
                        chunk.last = call->off + n == call->len;
                        r.body_case = REPLY(FILE_CHUNK);
                        r.file_chunk = &chunk;
                        send_data(c, call->id, &r);
                        call->off += n;
                        call->credit -= (int64_t)n;
                        if (chunk.last) {
                                send_empty_final(c, call->id);
                                call_end(d, c, call);
                                return;
                        }
                }
                break;
        case CALL_LOGS:
                while (call->next_line <= FAKE_LOG_LINES && call->credit > 0 && !c->broken) {
                        (void)snprintf(text, sizeof(text), "line %u", call->next_line);
                        line.data = (ProtobufCBinaryData) { .len = strlen(text), .data = (uint8_t *)text };
                        line.time_ms = 1000 * (int64_t)call->next_line;
                        r.body_case = REPLY(LOG_LINE);
                        r.log_line = &line;
                        send_data(c, call->id, &r);
                        call->credit -= (int64_t)line.data.len;
                        call->next_line++;
                }
                if (call->next_line <= FAKE_LOG_LINES)
                        break;
                if (call->follow)
                        call_hang(d, call);
                else {
                        send_empty_final(c, call->id);
                        call_end(d, c, call);
                }
                break;
        default:
                break;
        }
}

static void pump(FakeDaemon *d, FakeConn *c) {
        FakeCall *call = c->calls, *next;

        for (; call; call = next) {
                next = call->next;
                pump_call(d, c, call);
        }
}

/* ---- connections -------------------------------------------------------------------------- */

static void conn_close(FakeDaemon *d, FakeConn *c) {
        while (c->calls)
                call_end(d, c, c->calls);
        frame_decoder_deinit(&c->decoder);
        close(c->fd);
        c->fd = -1;
        c->greeted = false;
        c->broken = false;
        c->shut = false;
}

static void on_request(FakeDaemon *d, FakeConn *c, const ClientFrame *f) {
        switch (f->body_case) {
        case BODY(HELLO):               send_error(c, f->call_id, 3, NULL, "Hello was already received"); break;
        case BODY(ATTACH_SESSION):      on_attach(d, c, f); break;
        case BODY(DETACH_SESSION):      on_detach(d, c, f); break;
        case BODY(CLOSE_SESSION):       on_close_session(d, c, f); break;
        case BODY(LIST_SESSIONS):       on_list_sessions(d, c, f); break;
        case BODY(CREATE_SANDBOX):      on_create(d, c, f); break;
        case BODY(START_SANDBOX):       on_start(c, f); break;
        case BODY(WAIT_SANDBOX):        on_wait(d, c, f); break;
        case BODY(GET_SANDBOX):         on_get(c, f); break;
        case BODY(LIST_SANDBOXES):      on_list(c, f); break;
        case BODY(ADOPT_SANDBOX):       on_adopt(c, f); break;
        case BODY(STOP_SANDBOX):        on_stop(c, f); break;
        case BODY(DELETE_SANDBOX):      on_delete(c, f); break;
        case BODY(EXEC):                on_exec(d, c, f); break;
        case BODY(READ_FILE):           on_read_file(d, c, f); break;
        case BODY(WRITE_FILE):          on_write_file(c, f); break;
        case BODY(LOGS):                on_logs(c, f); break;
        case BODY(STATUS):              on_status(d, c, f); break;
        case BODY(METRICS):             on_metrics(c, f); break;
        default:
                send_error(c, f->call_id, 12, NULL, "the fake does not take body %d", f->body_case);
                break;
        }
}

static void conn_frame(FakeDaemon *d, FakeConn *c, const uint8_t *p, size_t n) {
        ClientFrame *f = cwsandboxd__v1__client_frame__unpack(NULL, n, p);

        if (!f) {
                count_add(d, FAKE_PROTOCOL_ERRORS, 1);
                send_error(c, 0, 3, NULL, "a frame that does not decode");
                c->broken = true;
                return;
        }
        record_request(d, f->body_case, p, n);
        if (!c->greeted) {
                if (f->body_case == BODY(HELLO))
                        on_hello(d, c, f);
                else {
                        count_add(d, FAKE_PROTOCOL_ERRORS, 1);
                        send_error(c, 0, 9, NULL, "the first frame must be Hello");
                        c->broken = true;
                }
        } else if (f->body_case == BODY(EXEC_INPUT) || f->body_case == BODY(FILE_CHUNK) ||
                   f->body_case == BODY(CREDIT) || f->body_case == BODY(CANCEL))
                on_stream_frame(d, c, f);
        else if (call_find(c, f->call_id) || f->call_id == 0)
                send_error(c, f->call_id, 3, NULL, "call id %" PRIu64 " is already in flight", f->call_id);
        else
                on_request(d, c, f);
        cwsandboxd__v1__client_frame__free_unpacked(f, NULL);
}

static void conn_readable(FakeDaemon *d, FakeConn *c) {
        uint8_t buf[FAKE_READ_SIZE];
        const uint8_t *payload;
        size_t len;
        ssize_t n;
        int r;

        n = read(c->fd, buf, sizeof(buf));
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
                return;
        if (n <= 0) {
                c->broken = true;
                return;
        }
        r = frame_decoder_feed(&c->decoder, buf, (size_t)n);
        while (r == 0 && !c->broken && (r = frame_decoder_next(&c->decoder, &payload, &len)) == 1) {
                conn_frame(d, c, payload, len);
                r = 0;
        }
        if (r == FRAME_E_TOO_LARGE) {
                count_add(d, FAKE_PROTOCOL_ERRORS, 1);
                send_error(c, 0, 8, NULL, "frame larger than %u bytes", d->opts.max_frame_bytes);
                c->broken = true;
        } else if (r < 0)
                c->broken = true;
        pump(d, c);
}

static void accept_one(FakeDaemon *d) {
        int fd = accept4(d->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

        if (fd < 0)
                return;
        for (size_t i = 0; i < FAKE_CONNS_MAX; i++) {
                FakeConn *c = &d->conns[i];

                if (c->fd >= 0)
                        continue;
                c->fd = fd;
                frame_decoder_init(&c->decoder, d->opts.max_frame_bytes);
                count_add(d, FAKE_CONNECTIONS, 1);
                return;
        }
        close(fd);
}

/* ---- the thread --------------------------------------------------------------------------- */

static int bind_listen(FakeDaemon *d);

/* As a daemon that starts again without its state: sessions are new, with new ids. */
static void forget_sessions(FakeDaemon *d) {
        for (size_t i = 0; i < d->n_sessions; i++)
                free(d->sessions[i]);
        free(d->sessions);
        d->sessions = NULL;
        d->n_sessions = 0;
        d->epoch++;
}

/* Returns false when asked to stop. */
static bool run_command(FakeDaemon *d) {
        char drain[16];
        int result = 0;
        Command cmd;

        while (read(d->wake[0], drain, sizeof(drain)) < 0 && errno == EINTR)
                ;
        pthread_mutex_lock(&d->lock);
        cmd = d->command;
        d->command = CMD_NONE;
        pthread_mutex_unlock(&d->lock);
        for (size_t i = 0; i < FAKE_CONNS_MAX; i++) {
                FakeConn *c = &d->conns[i];

                if (c->fd < 0)
                        continue;
                if (cmd == CMD_DROP || cmd == CMD_DOWN || cmd == CMD_STOP)
                        conn_close(d, c);
                else if (cmd == CMD_SHUT_READ) {
                        /* Not polled any more: the EOF this makes must not close it. */
                        (void)shutdown(c->fd, SHUT_RD);
                        c->shut = true;
                }
        }
        if (cmd == CMD_DOWN) {
                closep(&d->listen_fd);
                d->listen_fd = -1;
                (void)unlink(d->path);
        }
        if (cmd == CMD_UP_FRESH)
                forget_sessions(d);
        if ((cmd == CMD_UP || cmd == CMD_UP_FRESH) && d->listen_fd < 0)
                result = bind_listen(d);
        pthread_mutex_lock(&d->lock);
        d->command_result = result;
        d->done_seq = d->command_seq;
        pthread_cond_broadcast(&d->cond);
        pthread_mutex_unlock(&d->lock);
        return cmd != CMD_STOP;
}

static void *fake_thread(void *userdata) {
        FakeDaemon *d = userdata;
        struct pollfd p[2 + FAKE_CONNS_MAX];

        for (;;) {
                p[0] = (struct pollfd) { .fd = d->wake[0], .events = POLLIN };
                p[1] = (struct pollfd) { .fd = d->listen_fd, .events = POLLIN };
                for (size_t i = 0; i < FAKE_CONNS_MAX; i++)
                        p[2 + i] = (struct pollfd) { .fd = d->conns[i].shut ? -1 : d->conns[i].fd,
                                                     .events = POLLIN };
                if (poll(p, ELEMENTSOF(p), -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                if (p[0].revents && !run_command(d))
                        break;
                if (p[1].revents)
                        accept_one(d);
                for (size_t i = 0; i < FAKE_CONNS_MAX; i++) {
                        FakeConn *c = &d->conns[i];

                        if (c->fd < 0 || p[2 + i].fd != c->fd || !p[2 + i].revents)
                                continue;
                        conn_readable(d, c);
                        if (c->broken)
                                conn_close(d, c);
                }
        }
        return NULL;
}

static int command(FakeDaemon *d, Command cmd) {
        unsigned seq;
        int r;

        pthread_mutex_lock(&d->lock);
        d->command = cmd;
        seq = ++d->command_seq;
        pthread_mutex_unlock(&d->lock);
        while (write(d->wake[1], "x", 1) < 0 && errno == EINTR)
                ;
        pthread_mutex_lock(&d->lock);
        while (d->done_seq < seq)
                pthread_cond_wait(&d->cond, &d->lock);
        r = d->command_result;
        pthread_mutex_unlock(&d->lock);
        return r;
}

void fake_daemon_drop(FakeDaemon *d) {
        (void)command(d, CMD_DROP);
}

void fake_daemon_shut_read(FakeDaemon *d) {
        (void)command(d, CMD_SHUT_READ);
}

void fake_daemon_down(FakeDaemon *d) {
        (void)command(d, CMD_DOWN);
}

int fake_daemon_up(FakeDaemon *d, bool lose_state) {
        return command(d, lose_state ? CMD_UP_FRESH : CMD_UP);
}

void fake_daemon_refuse_hello(FakeDaemon *d, bool refuse) {
        pthread_mutex_lock(&d->lock);
        d->refuse_hello = refuse;
        pthread_mutex_unlock(&d->lock);
}

/* ---- start and stop ----------------------------------------------------------------------- */

/* Listen on d->path: at the start, and again after fake_daemon_down(). */
static int bind_listen(FakeDaemon *d) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -1;

        if (strlen(d->path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, d->path, strlen(d->path) + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0)
                return -errno;
        d->listen_fd = TAKE_FD(fd);
        return 0;
}

static int listen_on(FakeDaemon *d) {
        (void)snprintf(d->dir, sizeof(d->dir), "/tmp/cws-fake-XXXXXX");
        if (!mkdtemp(d->dir)) {
                d->dir[0] = 0;
                return -errno;
        }
        (void)snprintf(d->path, sizeof(d->path), "%s/cwsandboxd.sock", d->dir);
        return bind_listen(d);
}

int fake_daemon_start(const FakeDaemonOpts *o, FakeDaemon **ret) {
        static const char hostname[] = "fake\n";
        FakeDaemon *d = calloc(1, sizeof(*d));
        uint8_t *content;
        int r;

        if (!d)
                return -ENOMEM;
        d->opts = o ? *o : (FakeDaemonOpts) {};
        if (d->opts.protocol_version == 0)
                d->opts.protocol_version = 1;
        if (d->opts.max_frame_bytes == 0)
                d->opts.max_frame_bytes = FAKE_MAX_FRAME;
        d->listen_fd = -1;
        d->wake[0] = d->wake[1] = -1;
        for (size_t i = 0; i < FAKE_CONNS_MAX; i++)
                d->conns[i].fd = -1;
        pthread_mutex_init(&d->lock, NULL);
        pthread_cond_init(&d->cond, NULL);

        content = malloc(sizeof(hostname) - 1);
        if (!content) {
                fake_daemon_free(d);
                return -ENOMEM;
        }
        memcpy(content, hostname, sizeof(hostname) - 1);
        r = file_store(d, "/etc/hostname", content, sizeof(hostname) - 1);
        if (r < 0) {
                free(content);
                fake_daemon_free(d);
                return r;
        }
        r = listen_on(d);
        if (r == 0 && pipe2(d->wake, O_CLOEXEC) < 0)
                r = -errno;
        if (r == 0) {
                r = -pthread_create(&d->thread, NULL, fake_thread, d);
                d->thread_started = r == 0;
        }
        if (r < 0) {
                fake_daemon_free(d);
                return r;
        }
        *ret = d;
        return 0;
}

FakeDaemon *fake_daemon_free(FakeDaemon *d) {
        if (!d)
                return NULL;
        if (d->thread_started) {
                command(d, CMD_STOP);
                pthread_join(d->thread, NULL);
        }
        for (size_t i = 0; i < FAKE_CONNS_MAX; i++)
                if (d->conns[i].fd >= 0)
                        conn_close(d, &d->conns[i]);
        closep(&d->listen_fd);
        closep(&d->wake[0]);
        closep(&d->wake[1]);
        if (d->path[0])
                (void)unlink(d->path);
        if (d->dir[0])
                (void)rmdir(d->dir);
        for (size_t i = 0; i < d->n_files; i++) {
                free(d->files[i].path);
                free(d->files[i].data);
        }
        free(d->files);
        for (size_t i = 0; i < d->n_sessions; i++)
                free(d->sessions[i]);
        free(d->sessions);
        for (size_t i = 0; i < FAKE_BODY_MAX; i++) {
                free(d->last[i]);
                for (size_t k = 0; k < d->n_kept[i]; k++)
                        free(d->kept[i][k].data);
                free(d->kept[i]);
        }
        pthread_mutex_destroy(&d->lock);
        pthread_cond_destroy(&d->cond);
        free(d);
        return NULL;
}
