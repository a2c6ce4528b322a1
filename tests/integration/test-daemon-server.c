/*
 * Integration test of the daemon's local socket server (daemon/server.c).
 *
 * The server runs on its own loop in the main thread with a dispatch that
 * answers a few bodies: status (with the peer's credentials), wait_sandbox
 * (held until a get_sandbox "release"), get_sandbox (errors), exec (a stream
 * of N output frames that honours credit and conn_writable()) and
 * list_sandboxes (a reply above the frame limit); exec ["sticky"] is a call
 * with a cancel hook that does not end it. A second thread plays the
 * clients with raw frames and blocking sockets, and runs code on the loop
 * thread through loop_call() whenever it needs to look at or change server
 * state, so every check is race-free without timing assumptions. The last
 * scenarios shut a server down: server_drain() with calls that end in time
 * and calls that do not, and server_close() with output still queued.
 * Prints TAP.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "frame-client.h"
#include "log.h"
#include "macro.h"
#include "server.h"
#include "tap.h"

#define MAX_FRAME       (1024u * 1024)
#define WAIT_MS         30000           /* a guard against hanging, not an expectation */
#define NOBODY          65534
#define MAX_CALL_ID     4096
#define MAX_CONN_ID     4096
#define HELD_MAX        2048

typedef Cwsandboxd__V1__ClientFrame CFrame;
typedef Cwsandboxd__V1__DaemonFrame DFrame;

#define CBODY(x) CWSANDBOXD__V1__CLIENT_FRAME__BODY_##x
#define DBODY(x) CWSANDBOXD__V1__DAEMON_FRAME__BODY_##x

/* ---- the loop thread's side -------------------------------------------------------- */

typedef struct TestServer {
        const char *name;
        Server *server;
        bool open;              /* created and not yet closed down */
        bool closed;            /* server_close() finished */
        unsigned closed_seq;
        unsigned drained;       /* times server_drain()'s done ran */
        unsigned drained_seq;
} TestServer;

/* What happened to a call, by call id (ids are unique across this test). */
typedef struct CallRecord {
        bool started, finished, cancelled, cancel_conn_gone;
        unsigned cancel_seq;
        unsigned stalls, drains;
        uint64_t sent_bytes, sent_at_stall;
        int big_send_r;
} CallRecord;

typedef struct Stream {
        Call *call;
        uint32_t left, size, index;
        uint64_t credit;
        bool stalled;
} Stream;

static struct {
        uv_loop_t loop;
        uv_async_t async;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        void (*fn)(void *arg);
        void *arg;
        bool fn_done;
        bool client_done;

        char dir[64];
        TestServer main, limits, other;
        unsigned seq;
        unsigned dispatched;                    /* requests that reached dispatch */
        Call *held[HELD_MAX];
        unsigned n_held;
        CallRecord rec[MAX_CALL_ID];
        unsigned gone_seq[MAX_CONN_ID];         /* by conn id: when conn_gone ran, 0 = not yet */
} T;

static CallRecord *rec_of(uint64_t id) {
        static CallRecord spare;

        return id < MAX_CALL_ID ? &T.rec[id] : &spare;
}

static void fail_call(Call *call, grpc_status_code code, const char *reason, uint32_t delay,
                      const char *sandbox_id, const char *msg) {
        Status st;

        status_set(&st, code, "%s", msg);
        if (reason)
                snprintf(st.reason, sizeof(st.reason), "%s", reason);
        st.retry_delay_ms = delay;
        call_fail(call, &st, sandbox_id);
}

static void reply_status(TestServer *ts, Call *call) {
        Cwsandboxd__V1__StatusReply sr = CWSANDBOXD__V1__STATUS_REPLY__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        const Peer *p = conn_peer(call->conn);
        char who[256];

        snprintf(who, sizeof(who), "uid=%u gid=%u pid=%d name=%s", (unsigned)p->uid, (unsigned)p->gid,
                 (int)p->pid, conn_client_name(call->conn));
        sr.daemon_version = (char *)ts->name;
        sr.connections = server_connections(ts->server);
        sr.uptime_ms = (int64_t)conn_id(call->conn);    /* for the test to name its connection */
        sr.state_file_status = who;
        f.body_case = DBODY(STATUS);
        f.status = &sr;
        call_finish(call, &f);
}

static void finish_sandbox(Call *call, const char *fmt, uint64_t n) {
        Cwsandboxd__V1__SandboxInfo si = CWSANDBOXD__V1__SANDBOX_INFO__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        char id[64];

        snprintf(id, sizeof(id), fmt, n);
        si.sandbox_id = id;
        f.body_case = DBODY(SANDBOX);
        f.sandbox = &si;
        call_finish(call, &f);
}

static void hold(Call *call) {
        if (T.n_held == HELD_MAX) {
                fail_call(call, GRPC_STATUS_INTERNAL, NULL, 0, NULL, "test: too many held calls");
                return;
        }
        T.held[T.n_held++] = call;
}

static Call *held_take(uint64_t id) {
        for (unsigned i = 0; i < T.n_held; i++)
                if (T.held[i]->id == id) {
                        Call *call = T.held[i];
                        T.held[i] = T.held[--T.n_held];
                        return call;
                }
        return NULL;
}

/* Finish the calls held on @call's connection, newest first, then @call. */
static void release(Call *call) {
        unsigned n = 0;

        for (unsigned i = T.n_held; i-- > 0;) {
                Call *h = T.held[i];
                if (h->conn != call->conn)
                        continue;
                memmove(&T.held[i], &T.held[i + 1], (T.n_held - i - 1) * sizeof(Call *));
                T.n_held--;
                finish_sandbox(h, "held-%" PRIu64, h->id);
                n++;
        }
        finish_sandbox(call, "released-%" PRIu64, n);
}

static void stream_pump(Stream *st);

static void stream_end(Stream *st) {
        rec_of(st->call->id)->finished = true;
        free(st);
}

static void stream_input(Call *call, const ClientFrame *frame) {
        Cwsandboxd__V1__ExecOutput out = CWSANDBOXD__V1__EXEC_OUTPUT__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        const Cwsandboxd__V1__ExecInput *in = frame->exec_input;

        if (frame->body_case != CBODY(EXEC_INPUT) || in->input_case != CWSANDBOXD__V1__EXEC_INPUT__INPUT_STDIN)
                return;
        out.stream = CWSANDBOXD__V1__EXEC_OUTPUT__STREAM__STDERR;
        out.data = in->stdin;
        f.body_case = DBODY(EXEC_OUTPUT);
        f.exec_output = &out;
        (void)call_send(call, &f);
}

static void stream_credit(Call *call, uint32_t bytes) {
        Stream *st = call->userdata;

        st->credit += bytes;
        stream_pump(st);
}

static void stream_cancel(Call *call) {
        CallRecord *r = rec_of(call->id);

        r->cancelled = true;
        r->cancel_conn_gone = call->conn_gone;
        r->cancel_seq = ++T.seq;
        stream_end(call->userdata);
        fail_call(call, GRPC_STATUS_CANCELLED, NULL, 0, NULL, "cancelled");
}

static void stream_drain(Call *call) {
        Stream *st = call->userdata;

        rec_of(call->id)->drains++;
        st->stalled = false;
        stream_pump(st);
}

static const CallOps stream_ops = {
        .input = stream_input,
        .credit = stream_credit,
        .cancel = stream_cancel,
        .drain = stream_drain,
};

static void stream_pump(Stream *st) {
        CallRecord *r = rec_of(st->call->id);
        _cleanup_free_ uint8_t *buf = NULL;

        while (st->left > 0) {
                Cwsandboxd__V1__ExecOutput out = CWSANDBOXD__V1__EXEC_OUTPUT__INIT;
                DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

                if (!conn_writable(st->call->conn)) {
                        if (!st->stalled) {
                                st->stalled = true;
                                r->stalls++;
                                r->sent_at_stall = r->sent_bytes;
                        }
                        return;
                }
                if (st->credit < st->size)
                        return;
                if (!buf && !(buf = malloc(st->size)))
                        return;
                memset(buf, (int)(st->index & 0xff), st->size);
                out.data.data = buf;
                out.data.len = st->size;
                f.body_case = DBODY(EXEC_OUTPUT);
                f.exec_output = &out;
                if (call_send(st->call, &f) < 0)
                        return;
                st->credit -= st->size;
                st->left--;
                st->index++;
                r->sent_bytes += st->size;
        }

        {
                Cwsandboxd__V1__ExecExit ex = CWSANDBOXD__V1__EXEC_EXIT__INIT;
                DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
                Call *call = st->call;

                f.body_case = DBODY(EXEC_EXIT);
                f.exec_exit = &ex;
                stream_end(st);
                call_finish(call, &f);
        }
}

/* A call that records cancel and stays held: it ends only when the test says. */
static void sticky_cancel(Call *call) {
        CallRecord *r = rec_of(call->id);

        r->cancelled = true;
        r->cancel_conn_gone = call->conn_gone;
        r->cancel_seq = ++T.seq;
}

static const CallOps sticky_ops = {
        .cancel = sticky_cancel,
};

/* exec ["stream", frames, size]: output frames of @size bytes, byte value = index. */
static void stream_start(Call *call, const Cwsandboxd__V1__ExecRequest *req) {
        Stream *st;

        if (req->n_command == 1 && streq(req->command[0], "sticky")) {
                rec_of(call->id)->started = true;
                call_set_ops(call, &sticky_ops, NULL);
                hold(call);
                return;
        }
        if (req->n_command != 3 || strcmp(req->command[0], "stream") != 0) {
                fail_call(call, GRPC_STATUS_INVALID_ARGUMENT, NULL, 0, NULL, "test: bad exec");
                return;
        }
        st = calloc(1, sizeof(*st));
        if (!st) {
                fail_call(call, GRPC_STATUS_RESOURCE_EXHAUSTED, NULL, 0, NULL, "out of memory");
                return;
        }
        st->call = call;
        st->left = (uint32_t)atoi(req->command[1]);
        st->size = (uint32_t)atoi(req->command[2]);
        st->credit = req->initial_credit;
        rec_of(call->id)->started = true;
        call_set_ops(call, &stream_ops, st);
        stream_pump(st);
}

/* A reply above the frame limit, both as a stream frame and as the final one. */
static void reply_too_big(Call *call) {
        Cwsandboxd__V1__SandboxInfo si = CWSANDBOXD__V1__SANDBOX_INFO__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        char *big = malloc(MAX_FRAME + 16);

        if (!big) {
                fail_call(call, GRPC_STATUS_RESOURCE_EXHAUSTED, NULL, 0, NULL, "out of memory");
                return;
        }
        memset(big, 'x', MAX_FRAME + 15);
        big[MAX_FRAME + 15] = 0;
        si.state_reason = big;
        f.body_case = DBODY(SANDBOX);
        f.sandbox = &si;
        rec_of(call->id)->big_send_r = call_send(call, &f);
        call_finish(call, &f);
        free(big);
}

static void test_dispatch(void *userdata, Call *call, const ClientFrame *f) {
        TestServer *ts = userdata;

        T.dispatched++;
        switch (f->body_case) {
        case CBODY(STATUS):
                reply_status(ts, call);
                break;
        case CBODY(WAIT_SANDBOX):
                hold(call);
                break;
        case CBODY(GET_SANDBOX):
                if (streq(f->get_sandbox->sandbox_id, "release"))
                        release(call);
                else if (streq(f->get_sandbox->sandbox_id, "transient"))
                        fail_call(call, GRPC_STATUS_NOT_FOUND, "CWSANDBOX_RUNNER_UNAVAILABLE", 1500,
                                  "sb-transient", "runner away");
                else
                        fail_call(call, GRPC_STATUS_NOT_FOUND, NULL, 0, f->get_sandbox->sandbox_id, "no such sandbox");
                break;
        case CBODY(EXEC):
                stream_start(call, f->exec);
                break;
        case CBODY(LIST_SANDBOXES):
                reply_too_big(call);
                break;
        default:
                fail_call(call, GRPC_STATUS_UNIMPLEMENTED, NULL, 0, NULL, "not in this test");
                break;
        }
}

static void test_conn_gone(void *userdata, Conn *conn) {
        if (conn_id(conn) < MAX_CONN_ID)
                T.gone_seq[conn_id(conn)] = ++T.seq;
}

/* ---- running code on the loop thread ------------------------------------------------------ */

static void do_server_close(void *arg);

static void on_async(uv_async_t *h) {
        void (*fn)(void *arg);
        void *arg;
        bool finished;

        pthread_mutex_lock(&T.lock);
        fn = T.fn;
        arg = T.arg;
        T.fn = NULL;
        finished = T.client_done;
        pthread_mutex_unlock(&T.lock);

        if (fn) {
                fn(arg);
                pthread_mutex_lock(&T.lock);
                T.fn_done = true;
                pthread_cond_broadcast(&T.cond);
                pthread_mutex_unlock(&T.lock);
        }
        if (finished && !uv_is_closing((uv_handle_t *)h)) {
                /* After a failure a server may still be open. */
                do_server_close(&T.main);
                do_server_close(&T.limits);
                do_server_close(&T.other);
                uv_close((uv_handle_t *)h, NULL);
        }
}

/* Run @fn(@arg) on the loop thread and wait for it. */
static void loop_call(void (*fn)(void *arg), void *arg) {
        pthread_mutex_lock(&T.lock);
        T.fn = fn;
        T.arg = arg;
        T.fn_done = false;
        pthread_mutex_unlock(&T.lock);
        (void)uv_async_send(&T.async);
        pthread_mutex_lock(&T.lock);
        while (!T.fn_done)
                pthread_cond_wait(&T.cond, &T.lock);
        pthread_mutex_unlock(&T.lock);
}

static int64_t mono_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct Pred {
        bool (*fn)(const void *arg);
        const void *arg;
        bool result;
} Pred;

static void pred_eval(void *arg) {
        Pred *p = arg;

        p->result = p->fn(p->arg);
}

/* Poll @fn on the loop thread until it holds (or the guard runs out). */
static bool wait_until(bool (*fn)(const void *arg), const void *arg) {
        Pred p = { .fn = fn, .arg = arg };
        int64_t end = mono_ms() + WAIT_MS;

        for (;;) {
                loop_call(pred_eval, &p);
                if (p.result)
                        return true;
                if (mono_ms() > end)
                        return false;
                usleep(5000);
        }
}

/* ---- server management (on the loop thread) --------------------------------------------------- */

typedef struct NewServer {
        TestServer *ts;
        const char *path;
        int listen_fd;
        unsigned max_conn, max_per_uid;
        int r;
} NewServer;

static void do_server_new(void *arg) {
        NewServer *n = arg;
        ServerOptions o = {
                .socket_path = n->path,
                .listen_fd = n->listen_fd,
                .max_frame_bytes = MAX_FRAME,
                .max_connections = n->max_conn ? n->max_conn : 64,
                .max_connections_per_uid = n->max_per_uid ? n->max_per_uid : 64,
                .daemon_version = "9.9.9-test",
                .backend_kind = "local",
                .backend_url = "unix:/nonexistent",
                .dispatch = test_dispatch,
                .conn_gone = test_conn_gone,
                .userdata = n->ts,
        };
        Server *s;

        n->r = server_new(&T.loop, &o, &s);
        if (n->r == 0) {
                server_free(n->ts->server);     /* a previous, closed instance */
                n->ts->server = s;
                n->ts->open = true;
                n->ts->closed = false;
                n->ts->closed_seq = 0;
                n->ts->drained = 0;
                n->ts->drained_seq = 0;
        }
}

static int server_start(TestServer *ts, const char *path, int listen_fd, unsigned max_conn, unsigned max_per_uid) {
        NewServer n = { ts, path, listen_fd, max_conn, max_per_uid, 0 };

        loop_call(do_server_new, &n);
        return n.r;
}

static void on_server_closed(void *userdata) {
        TestServer *ts = userdata;

        ts->closed = true;
        ts->closed_seq = ++T.seq;
}

static void do_server_close(void *arg) {
        TestServer *ts = arg;

        if (!ts->open)
                return;
        ts->open = false;
        server_close(ts->server, on_server_closed, ts);
}

static bool is_closed(const void *arg) {
        return ((const TestServer *)arg)->closed;
}

static bool server_stop(TestServer *ts) {
        loop_call(do_server_close, ts);
        return wait_until(is_closed, ts);
}

static void do_stop_accepting(void *arg) {
        server_stop_accepting(((TestServer *)arg)->server);
}

static void on_drained(void *userdata) {
        TestServer *ts = userdata;

        ts->drained++;
        ts->drained_seq = ++T.seq;
}

typedef struct DrainRun {
        TestServer *ts;
        uint64_t timeout_ms;
        unsigned drained_at_return;     /* done runs so far, as server_drain() returns */
        unsigned in_flight;
} DrainRun;

static void do_drain(void *arg) {
        DrainRun *d = arg;

        server_drain(d->ts->server, d->timeout_ms, on_drained, d->ts);
        d->drained_at_return = d->ts->drained;
        d->in_flight = server_calls_in_flight(d->ts->server);
}

static DrainRun drain(TestServer *ts, uint64_t timeout_ms) {
        DrainRun d = { .ts = ts, .timeout_ms = timeout_ms };

        loop_call(do_drain, &d);
        return d;
}

static bool is_drained(const void *arg) {
        return ((const TestServer *)arg)->drained > 0;
}

typedef struct ServerState {
        const TestServer *ts;
        unsigned in_flight, drained, dispatched;
        unsigned drained_seq, closed_seq;
} ServerState;

static void do_server_state(void *arg) {
        ServerState *st = arg;

        st->in_flight = server_calls_in_flight(st->ts->server);
        st->drained = st->ts->drained;
        st->dispatched = T.dispatched;
        st->drained_seq = st->ts->drained_seq;
        st->closed_seq = st->ts->closed_seq;
}

static ServerState server_state(const TestServer *ts) {
        ServerState st = { .ts = ts };

        loop_call(do_server_state, &st);
        return st;
}

static bool in_flight_is(const void *arg) {
        const ServerState *want = arg;

        return server_calls_in_flight(want->ts->server) == want->in_flight;
}

static bool conn_is_gone(const void *arg) {
        uint64_t id = *(const uint64_t *)arg;

        return id < MAX_CONN_ID && T.gone_seq[id] > 0;
}

static void do_gone_seq(void *arg) {
        uint64_t *v = arg;

        *v = *v < MAX_CONN_ID ? T.gone_seq[*v] : 0;
}

static unsigned gone_seq(uint64_t conn) {
        loop_call(do_gone_seq, &conn);
        return (unsigned)conn;
}

typedef struct ConnsAre {
        const TestServer *ts;
        unsigned n;
} ConnsAre;

static bool conns_are(const void *arg) {
        const ConnsAre *c = arg;

        return server_connections(c->ts->server) == c->n;
}

typedef struct ConnCount {
        const TestServer *ts;
        unsigned n;
} ConnCount;

static void do_count(void *arg) {
        ConnCount *c = arg;

        c->n = server_connections(c->ts->server);
}

static unsigned connections(const TestServer *ts) {
        ConnCount c = { ts, 0 };

        loop_call(do_count, &c);
        return c.n;
}

typedef struct RecCopy {
        uint64_t id;
        CallRecord rec;
} RecCopy;

static void do_rec_copy(void *arg) {
        RecCopy *c = arg;

        c->rec = *rec_of(c->id);
}

static CallRecord record(uint64_t id) {
        RecCopy c = { .id = id };

        loop_call(do_rec_copy, &c);
        return c.rec;
}

static bool rec_stalled(const void *arg) {
        return rec_of(*(const uint64_t *)arg)->stalls > 0;
}

static bool rec_started(const void *arg) {
        return rec_of(*(const uint64_t *)arg)->started;
}

static bool rec_finished(const void *arg) {
        return rec_of(*(const uint64_t *)arg)->finished;
}

/* ---- the client side --------------------------------------------------------------------- */

static void path_in_dir(char *buf, size_t size, const char *name) {
        snprintf(buf, size, "%s/%s", T.dir, name);
}

static FrameClient *client_connect(const char *path) {
        FrameClient *c = NULL;
        int r;

        r = frame_client_connect(path, &c);
        if (r < 0) {
                diag("connect %s: %s", path, strerror(-r));
                return NULL;
        }
        return c;
}

/* Connect and say Hello; NULL (with a diagnostic) unless a HelloReply came. */
static FrameClient *client_open(const char *path, const char *name) {
        FrameClient *c = client_connect(path);
        DFrame *f = NULL;
        int r;

        if (!c)
                return NULL;
        r = frame_client_hello(c, 1, name, WAIT_MS, &f);
        if (r != 0 || f->body_case != DBODY(HELLO)) {
                diag("hello as %s: r=%d %s", name, r, f && f->error ? f->error->message : "");
                frame_client_frame_free(f);
                return frame_client_free(c);
        }
        frame_client_frame_free(f);
        return c;
}

static int send_frame(FrameClient *c, CFrame *f) {
        int r = frame_client_send(c, f);

        if (r < 0)
                diag("send: %s", strerror(-r));
        return r;
}

static int send_status(FrameClient *c, uint64_t id) {
        Cwsandboxd__V1__StatusRequest req = CWSANDBOXD__V1__STATUS_REQUEST__INIT;
        CFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        f.call_id = id;
        f.body_case = CBODY(STATUS);
        f.status = &req;
        return send_frame(c, &f);
}

static int send_wait(FrameClient *c, uint64_t id) {
        Cwsandboxd__V1__WaitSandboxRequest req = CWSANDBOXD__V1__WAIT_SANDBOX_REQUEST__INIT;
        CFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        f.call_id = id;
        f.body_case = CBODY(WAIT_SANDBOX);
        f.wait_sandbox = &req;
        return send_frame(c, &f);
}

static int send_get(FrameClient *c, uint64_t id, const char *sandbox_id) {
        Cwsandboxd__V1__GetSandboxRequest req = CWSANDBOXD__V1__GET_SANDBOX_REQUEST__INIT;
        CFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        req.sandbox_id = (char *)sandbox_id;
        f.call_id = id;
        f.body_case = CBODY(GET_SANDBOX);
        f.get_sandbox = &req;
        return send_frame(c, &f);
}

static int send_exec(FrameClient *c, uint64_t id, unsigned frames, unsigned size, uint32_t credit) {
        Cwsandboxd__V1__ExecRequest req = CWSANDBOXD__V1__EXEC_REQUEST__INIT;
        CFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        char n[16], s[16];
        char *argv[] = { (char *)"stream", n, s };

        snprintf(n, sizeof(n), "%u", frames);
        snprintf(s, sizeof(s), "%u", size);
        req.command = argv;
        req.n_command = 3;
        req.initial_credit = credit;
        f.call_id = id;
        f.body_case = CBODY(EXEC);
        f.exec = &req;
        return send_frame(c, &f);
}

/* exec ["sticky"]: a call that ignores cancel and ends only when the test finishes it. */
static int send_sticky(FrameClient *c, uint64_t id) {
        Cwsandboxd__V1__ExecRequest req = CWSANDBOXD__V1__EXEC_REQUEST__INIT;
        CFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        char *argv[] = { (char *)"sticky" };

        req.command = argv;
        req.n_command = 1;
        f.call_id = id;
        f.body_case = CBODY(EXEC);
        f.exec = &req;
        return send_frame(c, &f);
}

static int send_credit(FrameClient *c, uint64_t id, uint32_t bytes) {
        Cwsandboxd__V1__Credit cr = CWSANDBOXD__V1__CREDIT__INIT;
        CFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        cr.bytes = bytes;
        f.call_id = id;
        f.body_case = CBODY(CREDIT);
        f.credit = &cr;
        return send_frame(c, &f);
}

static int send_cancel(FrameClient *c, uint64_t id) {
        Cwsandboxd__V1__Cancel cn = CWSANDBOXD__V1__CANCEL__INIT;
        CFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        f.call_id = id;
        f.body_case = CBODY(CANCEL);
        f.cancel = &cn;
        return send_frame(c, &f);
}

static int send_stdin(FrameClient *c, uint64_t id, const char *data) {
        Cwsandboxd__V1__ExecInput in = CWSANDBOXD__V1__EXEC_INPUT__INIT;
        CFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        in.input_case = CWSANDBOXD__V1__EXEC_INPUT__INPUT_STDIN;
        in.stdin.data = (uint8_t *)data;
        in.stdin.len = strlen(data);
        f.call_id = id;
        f.body_case = CBODY(EXEC_INPUT);
        f.exec_input = &in;
        return send_frame(c, &f);
}

static DFrame *recv_frame(FrameClient *c) {
        DFrame *f = NULL;
        int r;

        if (!c)
                return NULL;
        r = frame_client_recv(c, WAIT_MS, &f);
        if (r != 0) {
                diag("recv: %s", r == FRAME_CLIENT_E_EOF ? "end of stream" : strerror(-r));
                return NULL;
        }
        return f;
}

static bool got_eof(FrameClient *c) {
        DFrame *f = NULL;
        int r;

        if (!c)
                return false;
        r = frame_client_recv(c, WAIT_MS, &f);
        if (r == 0) {
                diag("a frame (call %" PRIu64 ") instead of the end", f->call_id);
                frame_client_frame_free(f);
        }
        return r == FRAME_CLIENT_E_EOF;
}

static bool is_error(const DFrame *f, uint64_t id, int code) {
        if (!f)
                return false;
        if (!f->error || f->call_id != id || !f->final) {
                diag("want error %d for call %" PRIu64 ", got call %" PRIu64 " final=%d error=%d", code, id,
                     f->call_id, f->final, f->error ? f->error->code : -1);
                return false;
        }
        if (f->error->code != code)
                diag("error %d (%s), want %d", f->error->code, f->error->message, code);
        return f->error->code == code;
}

/* A final UNAVAILABLE for @id, retryable, its message containing @words. */
static bool is_unavailable(const DFrame *f, uint64_t id, const char *words) {
        if (!is_error(f, id, GRPC_STATUS_UNAVAILABLE))
                return false;
        if (!f->error->retryable || !strstr(f->error->message, words)) {
                diag("call %" PRIu64 ": retryable=%d message \"%s\"", id, f->error->retryable, f->error->message);
                return false;
        }
        return true;
}

/* A status round trip: proves the connection works and that earlier frames were handled. */
static bool status_ok_on(FrameClient *c, uint64_t id) {
        DFrame *f;
        bool good;

        if (!c || send_status(c, id) < 0)
                return false;
        f = recv_frame(c);
        good = f && f->call_id == id && f->final && !f->error && f->body_case == DBODY(STATUS);
        frame_client_frame_free(f);
        return good;
}

/* The server's id of @c's connection (a status round trip), or 0. */
static uint64_t conn_id_of(FrameClient *c, uint64_t call_id) {
        uint64_t id = 0;
        DFrame *f;

        if (!c || send_status(c, call_id) < 0)
                return 0;
        f = recv_frame(c);
        if (f && f->call_id == call_id && f->body_case == DBODY(STATUS))
                id = (uint64_t)f->status->uptime_ms;
        frame_client_frame_free(f);
        return id;
}

/* ---- scenarios ------------------------------------------------------------------------------ */

static FrameClient *test_handshake(const char *path) {
        FrameClient *c = client_connect(path);
        DFrame *f = NULL;
        char want[128];
        bool credit = false;
        int r;

        r = c ? frame_client_hello(c, 1, "test-main", WAIT_MS, &f) : -1;
        if (!ok(r == 0 && f->body_case == DBODY(HELLO), "Hello is answered with a HelloReply")) {
                frame_client_frame_free(f);
                return frame_client_free(c);
        }
        ok(f->final && f->call_id == 0 && !f->error, "the HelloReply is final, call 0, no error");
        is_int(f->hello->protocol_version, 1, "HelloReply protocol_version");
        is_str(f->hello->daemon_version, "9.9.9-test", "HelloReply daemon_version");
        is_str(f->hello->backend_kind, "local", "HelloReply backend_kind");
        is_str(f->hello->backend_url, "unix:/nonexistent", "HelloReply backend_url");
        is_int(f->hello->max_frame_bytes, MAX_FRAME, "HelloReply max_frame_bytes");
        for (size_t i = 0; i < f->hello->n_features; i++)
                credit |= streq(f->hello->features[i], "credit");
        ok(f->hello->n_features >= 5 && credit, "HelloReply lists features, credit among them");
        frame_client_frame_free(f);

        /* The peer as the server sees it. */
        send_status(c, 1);
        f = recv_frame(c);
        snprintf(want, sizeof(want), "uid=%u gid=%u pid=%d name=test-main", (unsigned)geteuid(),
                 (unsigned)getegid(), (int)getpid());
        ok(f && f->body_case == DBODY(STATUS) && f->final && f->call_id == 1, "status call answered");
        is_str(f ? f->status->state_file_status : NULL, want, "peer uid, gid, pid and client name reported");
        is_int(f ? f->status->connections : 0, 1, "server_connections() counts the connection");
        frame_client_frame_free(f);
        return c;
}

static void test_bad_handshakes(const char *path, FrameClient *a) {
        FrameClient *c;
        CFrame empty = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        DFrame *f = NULL;
        int r;

        c = client_connect(path);
        r = c ? frame_client_hello(c, 2, "test-v2", WAIT_MS, &f) : -1;
        ok(r == 0 && is_error(f, 0, GRPC_STATUS_FAILED_PRECONDITION), "protocol version 2: FAILED_PRECONDITION");
        ok(r == 0 && f->error && strstr(f->error->message, "version 2") && strstr(f->error->message, "version 1"),
           "the error names both versions: %s", r == 0 && f->error ? f->error->message : "");
        ok(r == 0 && f->error && !f->error->retryable, "a version mismatch is not retryable");
        frame_client_frame_free(f);
        ok(got_eof(c), "the connection is closed after a version mismatch");
        frame_client_free(c);

        c = client_connect(path);
        if (c)
                send_status(c, 1);
        f = recv_frame(c);
        ok(is_error(f, 0, GRPC_STATUS_FAILED_PRECONDITION), "a request before Hello: FAILED_PRECONDITION");
        frame_client_frame_free(f);
        ok(got_eof(c), "the connection is closed when Hello does not come first");
        frame_client_free(c);

        /* Rejections that leave the connection open. */
        r = a ? frame_client_hello(a, 1, "again", WAIT_MS, &f) : -1;
        ok(r == 0 && is_error(f, 0, GRPC_STATUS_INVALID_ARGUMENT), "a second Hello: INVALID_ARGUMENT");
        if (r == 0)
                frame_client_frame_free(f);

        empty.call_id = 5;
        if (a)
                send_frame(a, &empty);
        f = recv_frame(a);
        ok(is_error(f, 5, GRPC_STATUS_INVALID_ARGUMENT), "a frame without a body: INVALID_ARGUMENT for its call");
        frame_client_frame_free(f);

        if (a)
                send_status(a, 0);
        f = recv_frame(a);
        ok(is_error(f, 0, GRPC_STATUS_INVALID_ARGUMENT), "a request with call id 0: INVALID_ARGUMENT");
        frame_client_frame_free(f);

        ok(status_ok_on(a, 2), "the connection carries on after the rejections");
}

static void test_out_of_order(FrameClient *a) {
        static const uint64_t want[] = { 14, 13, 12, 11, 15 };
        bool order = true;
        DFrame *f;

        send_wait(a, 11);
        send_wait(a, 12);
        send_wait(a, 13);
        send_status(a, 14);
        send_get(a, 15, "release");
        for (size_t i = 0; i < ELEMENTSOF(want); i++) {
                char id[32];

                f = recv_frame(a);
                if (!f || f->call_id != want[i] || !f->final || f->error) {
                        diag("reply %zu: call %" PRIu64 ", want %" PRIu64, i, f ? f->call_id : 0, want[i]);
                        order = false;
                } else if (want[i] >= 11 && want[i] <= 13) {
                        snprintf(id, sizeof(id), "held-%" PRIu64, want[i]);
                        if (f->body_case != DBODY(SANDBOX) || !streq(f->sandbox->sandbox_id, id))
                                order = false;
                }
                frame_client_frame_free(f);
        }
        ok(order, "interleaved calls: replies come as the calls finish (14, 13, 12, 11, 15)");
}

static void test_duplicate_id(FrameClient *a) {
        DFrame *f;

        send_wait(a, 21);
        send_status(a, 21);
        f = recv_frame(a);
        ok(is_error(f, 21, GRPC_STATUS_INVALID_ARGUMENT), "a call id already in flight: INVALID_ARGUMENT");
        ok(f && f->error && strstr(f->error->message, "21"), "the error names the id: %s",
           f && f->error ? f->error->message : "");
        frame_client_frame_free(f);

        send_get(a, 22, "release");
        f = recv_frame(a);
        ok(f && f->call_id == 21 && f->final && !f->error && f->body_case == DBODY(SANDBOX) &&
           streq(f->sandbox->sandbox_id, "held-21"), "the call already in flight is unaffected");
        frame_client_frame_free(f);
        f = recv_frame(a);
        ok(f && f->call_id == 22 && f->final, "the release call ends");
        frame_client_frame_free(f);
}

static void test_errors(FrameClient *a) {
        DFrame *f;

        send_get(a, 25, "transient");
        f = recv_frame(a);
        ok(is_error(f, 25, GRPC_STATUS_NOT_FOUND), "call_fail() sends its code");
        if (f && f->error) {
                is_str(f->error->message, "runner away", "call_fail() message");
                is_str(f->error->reason, "CWSANDBOX_RUNNER_UNAVAILABLE", "call_fail() reason");
                ok(f->error->retryable, "NOT_FOUND with CWSANDBOX_RUNNER_UNAVAILABLE is retryable");
                is_int(f->error->retry_delay_ms, 1500, "call_fail() retry delay");
                is_str(f->error->sandbox_id, "sb-transient", "call_fail() sandbox id");
        }
        frame_client_frame_free(f);

        send_get(a, 26, "sb-gone");
        f = recv_frame(a);
        ok(is_error(f, 26, GRPC_STATUS_NOT_FOUND) && !f->error->retryable && streq(f->error->sandbox_id, "sb-gone"),
           "a plain NOT_FOUND is not retryable");
        frame_client_frame_free(f);

        /* A reply above the frame limit. */
        {
                Cwsandboxd__V1__ListSandboxesRequest req = CWSANDBOXD__V1__LIST_SANDBOXES_REQUEST__INIT;
                CFrame cf = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

                cf.call_id = 27;
                cf.body_case = CBODY(LIST_SANDBOXES);
                cf.list_sandboxes = &req;
                send_frame(a, &cf);
        }
        f = recv_frame(a);
        ok(is_error(f, 27, GRPC_STATUS_INTERNAL), "a final reply above the frame limit becomes an error");
        frame_client_frame_free(f);
        is_int(record(27).big_send_r, -EMSGSIZE, "call_send() of a frame above the limit");
}

static bool is_output(const DFrame *f, uint64_t id, int stream, size_t len, int byte) {
        const Cwsandboxd__V1__ExecOutput *o;

        if (!f || f->call_id != id || f->final || f->body_case != DBODY(EXEC_OUTPUT))
                return false;
        o = f->exec_output;
        if ((int)o->stream != stream || o->data.len != len)
                return false;
        for (size_t i = 0; i < len && byte >= 0; i++)
                if (o->data.data[i] != (uint8_t)byte)
                        return false;
        return true;
}

static void test_stream_credit(FrameClient *a) {
        DFrame *f = NULL;
        bool good = true;
        int r;

        send_exec(a, 31, 8, 1000, 2000);
        for (int i = 0; i < 2; i++) {
                f = recv_frame(a);
                good &= is_output(f, 31, 0, 1000, i);
                frame_client_frame_free(f);
        }
        ok(good, "a stream sends what the initial credit allows");

        send_stdin(a, 31, "ping");
        f = recv_frame(a);
        ok(f && f->exec_output && f->exec_output->data.len == 4 && memcmp(f->exec_output->data.data, "ping", 4) == 0 &&
           f->exec_output->stream == CWSANDBOXD__V1__EXEC_OUTPUT__STREAM__STDERR,
           "exec_input reaches the call's input hook");
        frame_client_frame_free(f);

        /* Nothing more may come without credit; waiting can only miss a wrong frame, never invent one. */
        f = NULL;
        r = frame_client_recv(a, 300, &f);
        ok(r == -ETIMEDOUT, "no output beyond the credit");
        frame_client_frame_free(f);

        send_credit(a, 31, 6000);
        good = true;
        for (int i = 2; i < 8; i++) {
                f = recv_frame(a);
                good &= is_output(f, 31, 0, 1000, i);
                frame_client_frame_free(f);
        }
        ok(good, "credit releases the rest of the stream");
        f = recv_frame(a);
        ok(f && f->call_id == 31 && f->final && !f->error && f->body_case == DBODY(EXEC_EXIT),
           "the stream ends with a final frame");
        frame_client_frame_free(f);

        /* Data for a call that has ended is ignored. */
        send_stdin(a, 31, "late");
        send_credit(a, 31, 100);
        send_cancel(a, 31);
        send_stdin(a, 999, "nobody");
        ok(status_ok_on(a, 32), "frames for calls not in flight are ignored");
}

static void test_cancel(FrameClient *a) {
        CallRecord r;
        DFrame *f;

        send_exec(a, 41, 100, 10, 0);
        send_cancel(a, 41);
        f = recv_frame(a);
        ok(is_error(f, 41, GRPC_STATUS_CANCELLED), "Cancel reaches the call, which ends CANCELLED");
        frame_client_frame_free(f);
        r = record(41);
        ok(r.cancelled && !r.cancel_conn_gone, "the cancel hook ran, with the connection still there");
}

typedef struct HeldCheck {
        uint64_t id;
        bool found, cancelled, conn_gone, writable;
        int send_r;
        uint64_t conn;
        bool finish;
} HeldCheck;

static void do_held_check(void *arg) {
        HeldCheck *h = arg;
        Call *call = NULL;

        for (unsigned i = 0; i < T.n_held; i++)
                if (T.held[i]->id == h->id)
                        call = T.held[i];
        h->found = call;
        if (!call)
                return;
        h->cancelled = call->cancelled;
        h->conn_gone = call->conn_gone;
        h->writable = conn_writable(call->conn);
        h->conn = conn_id(call->conn);
        if (h->finish) {
                DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

                h->send_r = call_send(call, &f);
                call = held_take(h->id);
                call_finish(call, NULL);
        }
}

static void test_cancel_unary(FrameClient *a) {
        HeldCheck h = { .id = 81 };
        DFrame *f;

        send_wait(a, 81);
        send_cancel(a, 81);
        ok(status_ok_on(a, 82), "Cancel of a call without hooks sends nothing");
        loop_call(do_held_check, &h);
        ok(h.found && h.cancelled && !h.conn_gone, "Cancel marks a call without hooks as cancelled");
        send_get(a, 83, "release");
        f = recv_frame(a);
        ok(f && f->call_id == 81 && f->final && !f->error, "the cancelled call still ends with its reply");
        frame_client_frame_free(f);
        f = recv_frame(a);
        frame_client_frame_free(f);
}

/* Finish every held call of one connection (by its id), from the loop thread. */
static void do_release_conn(void *arg) {
        uint64_t *id = arg;
        unsigned n = 0;

        for (unsigned i = T.n_held; i-- > 0;) {
                Call *h = T.held[i];
                if (conn_id(h->conn) != *id)
                        continue;
                memmove(&T.held[i], &T.held[i + 1], (T.n_held - i - 1) * sizeof(Call *));
                T.n_held--;
                finish_sandbox(h, "held-%" PRIu64, h->id);
                n++;
        }
        *id = n;
}

static void test_calls_limit(const char *path) {
        FrameClient *c = client_open(path, "many");
        uint64_t id = conn_id_of(c, 1);
        unsigned got = 0;
        DFrame *f;

        for (uint64_t i = 1000; i < 1000 + 1024; i++)
                send_wait(c, i);
        send_wait(c, 3000);
        f = recv_frame(c);
        ok(is_error(f, 3000, GRPC_STATUS_RESOURCE_EXHAUSTED), "call 1025 in flight: RESOURCE_EXHAUSTED");
        frame_client_frame_free(f);

        /* The calls above were all dispatched before the rejection was sent. */
        loop_call(do_release_conn, &id);
        is_int(id, 1024, "1024 calls were in flight");
        while (got < 1024 && (f = recv_frame(c))) {
                if (f->call_id >= 1000 && f->call_id < 2024 && f->final && !f->error)
                        got++;
                frame_client_frame_free(f);
        }
        is_int(got, 1024, "the calls in flight end normally");
        ok(status_ok_on(c, 3001), "new calls are taken again");
        frame_client_free(c);
}

static void test_malformed(const char *path, FrameClient *a) {
        static const uint8_t junk[] = { 0, 0, 0, 3, 0xff, 0xff, 0xff };
        FrameClient *c = client_open(path, "junk");
        DFrame *f;

        if (c)
                frame_client_send_raw(c, junk, sizeof(junk));
        f = recv_frame(c);
        ok(is_error(f, 0, GRPC_STATUS_INVALID_ARGUMENT),
           "a payload that is not a ClientFrame: INVALID_ARGUMENT, call 0");
        frame_client_frame_free(f);
        ok(got_eof(c), "then the connection is closed");
        frame_client_free(c);
        ok(status_ok_on(a, 91), "another connection carries on");
}

static void test_oversized(const char *path, FrameClient *a) {
        uint8_t hdr[4 + 16] = { 0 };
        FrameClient *c = client_open(path, "big");
        uint32_t len = MAX_FRAME + 1;
        char s_len[32], s_max[32];
        DFrame *f;

        hdr[0] = (uint8_t)(len >> 24);
        hdr[1] = (uint8_t)(len >> 16);
        hdr[2] = (uint8_t)(len >> 8);
        hdr[3] = (uint8_t)len;
        if (c)
                frame_client_send_raw(c, hdr, sizeof(hdr));
        f = recv_frame(c);
        ok(is_error(f, 0, GRPC_STATUS_RESOURCE_EXHAUSTED), "a header above the limit: RESOURCE_EXHAUSTED, call 0");
        snprintf(s_len, sizeof(s_len), "%u", len);
        snprintf(s_max, sizeof(s_max), "%u", MAX_FRAME);
        ok(f && f->error && strstr(f->error->message, s_len) && strstr(f->error->message, s_max),
           "the error names the size and the limit: %s", f && f->error ? f->error->message : "");
        frame_client_frame_free(f);
        ok(got_eof(c), "then the connection is closed");
        frame_client_free(c);
        ok(status_ok_on(a, 92), "another connection carries on");
}

static uint64_t kernel_buffer_bound(void) {
        unsigned long v = 0;
        FILE *fp = fopen("/proc/sys/net/core/wmem_default", "re");

        if (fp) {
                if (fscanf(fp, "%lu", &v) != 1)
                        v = 0;
                fclose(fp);
        }
        return v ? 2 * (uint64_t)v : 8u * 1024 * 1024;
}

static void test_slow_reader(const char *path) {
        const unsigned frames = 384, size = 32768;
        FrameClient *c = client_open(path, "slow");
        uint64_t id = 51, bound;
        unsigned outputs = 0;
        bool data_ok = true, exit_ok = false, status_seen = false;
        CallRecord r;
        DFrame *f;

        send_exec(c, id, frames, size, UINT32_MAX);
        ok(wait_until(rec_stalled, &id), "a client that does not read makes the connection unwritable");
        r = record(id);
        bound = SERVER_WRITE_HIGH_WATER + size + 64 + kernel_buffer_bound();
        diag("sent %" PRIu64 " bytes before the stall; high water %u, bound %" PRIu64,
             r.sent_at_stall, SERVER_WRITE_HIGH_WATER, bound);
        ok(r.sent_at_stall > (uint64_t)SERVER_WRITE_HIGH_WATER / 128 * 127, "not before the high-water mark");
        ok(r.sent_at_stall <= bound,
           "output held for the client stays within the high-water mark, one frame and the kernel buffer");
        ok(r.sent_at_stall < (uint64_t)frames * size, "the stream waits instead of sending everything");

        /* A unary call meanwhile: its reply is queued, not refused. */
        send_status(c, 52);

        while ((f = recv_frame(c))) {
                bool last = f->call_id == id && f->final;

                if (f->call_id == 52)
                        status_seen = f->final && !f->error;
                else if (!last)
                        data_ok &= is_output(f, id, 0, size, (int)(outputs++ & 0xff));
                else
                        exit_ok = !f->error && f->body_case == DBODY(EXEC_EXIT);
                frame_client_frame_free(f);
                if (last)
                        break;
        }
        ok(data_ok && outputs == frames, "every output frame arrives, in order (%u of %u)", outputs, frames);
        ok(exit_ok, "the stream ends normally once the client reads");
        if (!status_seen) {
                f = recv_frame(c);
                status_seen = f && f->call_id == 52 && f->final && !f->error;
                frame_client_frame_free(f);
        }
        ok(status_seen, "the unary reply queued during the stall arrives");
        r = record(id);
        ok(r.drains > 0 && r.finished, "the drain hook resumed the stream (%u drains, %u stalls)", r.drains, r.stalls);
        frame_client_free(c);
}

static void test_disconnect(const char *path, TestServer *ts) {
        FrameClient *c = client_open(path, "leaver");
        HeldCheck h = { .id = 62, .finish = true };
        ConnsAre one = { ts, 1 };
        uint64_t id;
        CallRecord r;

        send_exec(c, 61, 10, 100, 0);
        send_wait(c, 62);
        id = conn_id_of(c, 63);
        ok(id > 0, "a stream and a unary call are in flight on connection %" PRIu64, id);
        frame_client_free(c);

        ok(wait_until(conn_is_gone, &id), "the conn_gone callback runs when the client goes");
        r = record(61);
        ok(r.cancelled && r.cancel_conn_gone, "the streaming call got cancel with conn_gone set");
        ok(r.cancel_seq > 0 && r.cancel_seq < gone_seq(id), "cancels come before the conn_gone callback");
        loop_call(do_held_check, &h);
        ok(h.found && h.conn_gone && h.cancelled, "a call without hooks is marked conn_gone and cancelled");
        is_int(h.send_r, -EPIPE, "call_send() after the disconnect");
        ok(!h.writable, "the connection of a gone call is not writable");
        is_int(h.conn, id, "the Conn stays readable while a call holds it");
        ok(wait_until(conns_are, &one), "server_connections() drops back to the first client alone");
}

typedef struct NobodyRun {
        const char *path;
} NobodyRun;

/* As uid nobody (this thread only: raw syscalls change one thread's credentials). */
static void *nobody_thread(void *arg) {
        NobodyRun *n = arg;
        FrameClient *x, *y, *z;
        DFrame *f;
        char want[64];

        if (syscall(SYS_setgroups, 0, NULL) < 0 || syscall(SYS_setresgid, NOBODY, NOBODY, NOBODY) < 0 ||
            syscall(SYS_setresuid, NOBODY, NOBODY, NOBODY) < 0) {
                ok(false, "drop to uid %d: %s", NOBODY, strerror(errno));
                return NULL;
        }
        x = client_open(n->path, "nobody-1");
        y = client_open(n->path, "nobody-2");
        ok(x && y, "another uid gets its own %d connections (socket mode 0666)", 2);

        if (y)
                send_status(y, 1);
        f = recv_frame(y);
        snprintf(want, sizeof(want), "uid=%d gid=%d pid=%d name=nobody-2", NOBODY, NOBODY, (int)getpid());
        is_str(f ? f->status->state_file_status : NULL, want, "the peer uid of another user is reported");
        frame_client_frame_free(f);

        z = client_connect(n->path);
        f = recv_frame(z);
        ok(is_error(f, 0, GRPC_STATUS_RESOURCE_EXHAUSTED), "over the per-uid limit: RESOURCE_EXHAUSTED");
        ok(f && f->error && strstr(f->error->message, "uid 65534"), "the error names the uid: %s",
           f && f->error ? f->error->message : "");
        frame_client_frame_free(f);
        ok(got_eof(z), "the refused connection is closed");
        frame_client_free(x);
        frame_client_free(y);
        frame_client_free(z);
        return NULL;
}

static void test_limits(void) {
        FrameClient *a, *b, *c, *d;
        char path[128];
        uint64_t a_id;
        DFrame *f;
        int r;

        /* Total. */
        path_in_dir(path, sizeof(path), "limits.sock");
        r = server_start(&T.limits, path, -1, 2, 100);
        is_int(r, 0, "a server with max_connections 2");
        a = client_open(path, "l-a");
        b = client_open(path, "l-b");
        ok(a && b, "two connections are accepted");
        c = client_connect(path);
        f = recv_frame(c);
        ok(is_error(f, 0, GRPC_STATUS_RESOURCE_EXHAUSTED), "the third: RESOURCE_EXHAUSTED");
        ok(f && f->error && strstr(f->error->message, "limit 2"), "the error names the limit: %s",
           f && f->error ? f->error->message : "");
        frame_client_frame_free(f);
        ok(got_eof(c), "the refused connection is closed");
        c = frame_client_free(c);
        is_int(connections(&T.limits), 2, "a refused connection is not counted");
        a_id = conn_id_of(a, 1);
        a = frame_client_free(a);
        ok(a_id > 0 && wait_until(conn_is_gone, &a_id), "a connection leaves");
        d = client_open(path, "l-d");
        ok(d != NULL, "its place can be taken");
        frame_client_free(b);
        frame_client_free(d);
        ok(server_stop(&T.limits), "the limits server closes");

        /* Per uid; root is exempt. */
        path_in_dir(path, sizeof(path), "peruid.sock");
        r = server_start(&T.limits, path, -1, 100, 2);
        is_int(r, 0, "a server with max_connections_per_uid 2");
        a = client_open(path, "u-a");
        b = client_open(path, "u-b");
        if (geteuid() == 0) {
                pthread_t th;
                NobodyRun n = { path };

                c = client_open(path, "u-c");
                ok(a && b && c, "root is exempt from the per-uid limit");
                if (pthread_create(&th, NULL, nobody_thread, &n) == 0)
                        pthread_join(th, NULL);
                else
                        ok(false, "start a thread");
        } else {
                c = client_connect(path);
                f = recv_frame(c);
                ok(is_error(f, 0, GRPC_STATUS_RESOURCE_EXHAUSTED), "a third connection of one uid: RESOURCE_EXHAUSTED");
                frame_client_frame_free(f);
                ok(got_eof(c), "the refused connection is closed");
                diag("not root: the exemption of root and a second uid are not tested");
        }
        frame_client_free(a);
        frame_client_free(b);
        frame_client_free(c);
        ok(server_stop(&T.limits), "the per-uid server closes");
}

static int bind_socket(const char *path, bool do_listen) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || (do_listen && listen(fd, 16) < 0))
                bail_out("bind %s: %s", path, strerror(errno));
        return fd;
}

static void test_socket_files(void) {
        char path[128], plain[128], adopt[128];
        struct stat st = { 0 };
        FrameClient *c;
        int fd, r;

        /* A stale socket file is replaced. */
        path_in_dir(path, sizeof(path), "stale.sock");
        close(bind_socket(path, false));
        r = server_start(&T.other, path, -1, 0, 0);
        is_int(r, 0, "a stale socket file is replaced");
        if (stat(path, &st) < 0)
                st.st_mode = 0;
        ok(S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0666, "the socket is mode 0666 (%o)",
           (unsigned)(st.st_mode & 0777));
        c = client_open(path, "stale");
        ok(c != NULL, "the new server answers");

        /* A live one is not. */
        {
                TestServer second = { .name = "second" };

                r = server_start(&second, path, -1, 0, 0);
                is_int(r, -EADDRINUSE, "a live socket is refused");
        }
        ok(status_ok_on(c, 1), "the live server is undisturbed");

        path_in_dir(plain, sizeof(plain), "plain");
        fd = open(plain, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        if (fd >= 0)
                close(fd);
        {
                TestServer third = { .name = "third" };

                r = server_start(&third, plain, -1, 0, 0);
                is_int(r, -EEXIST, "a file that is not a socket is left alone");
        }
        ok(stat(plain, &st) == 0 && S_ISREG(st.st_mode), "and is still there");
        unlink(plain);

        /* Stop accepting: the file goes, connections stay. */
        loop_call(do_stop_accepting, &T.other);
        ok(stat(path, &st) < 0 && errno == ENOENT, "server_stop_accepting() removes the socket file");
        ok(status_ok_on(c, 2), "existing connections go on");
        frame_client_free(c);
        ok(server_stop(&T.other), "the server closes");

        /* An inherited listening socket. */
        path_in_dir(adopt, sizeof(adopt), "adopted.sock");
        fd = bind_socket(adopt, true);
        r = server_start(&T.other, NULL, fd, 0, 0);
        is_int(r, 0, "an inherited listening socket is adopted");
        c = client_open(adopt, "adopted");
        ok(status_ok_on(c, 1), "and serves");
        frame_client_free(c);
        loop_call(do_stop_accepting, &T.other);
        ok(stat(adopt, &st) == 0, "an adopted socket's file is not ours to remove");
        ok(server_stop(&T.other), "the adopting server closes");
        unlink(adopt);
}

static void test_server_close(const char *path) {
        FrameClient *c = client_open(path, "last");
        uint64_t id = 71;
        CallRecord r;

        send_exec(c, id, 10, 10, 0);
        ok(wait_until(rec_started, &id), "a stream waits for credit");
        ok(server_stop(&T.main), "server_close() completes");
        ok(got_eof(c), "the client sees the connection end");
        r = record(id);
        ok(r.cancelled && r.cancel_conn_gone, "the call in flight got cancel with conn_gone");
        frame_client_free(c);
}

/* ---- shutdown -------------------------------------------------------------------------------- */

/* A drain with nothing in flight: it reports from the loop, and nothing listens any more. */
static void test_drain_idle(void) {
        FrameClient *c, *late = NULL;
        struct stat st;
        char path[128];
        DrainRun d;
        DFrame *f;
        int r;

        path_in_dir(path, sizeof(path), "idle.sock");
        r = server_start(&T.other, path, -1, 0, 0);
        is_int(r, 0, "a server to drain");
        c = client_open(path, "idle");
        ok(status_ok_on(c, 1), "with an idle connection");

        d = drain(&T.other, WAIT_MS);
        is_int(d.drained_at_return, 0, "server_drain() does not report from inside itself");
        is_int(d.in_flight, 0, "server_calls_in_flight() with no call in flight");
        ok(wait_until(is_drained, &T.other), "with no call in flight the drain reports at once");

        r = frame_client_connect(path, &late);
        ok(r < 0, "a connect attempt after the drain started is refused (%s)", r < 0 ? strerror(-r) : "connected");
        frame_client_free(late);
        ok(stat(path, &st) < 0 && errno == ENOENT, "the socket file is gone");

        send_status(c, 2);
        f = recv_frame(c);
        ok(is_unavailable(f, 2, "shutting down"), "a request after the drain: UNAVAILABLE, retryable");
        frame_client_frame_free(f);

        /* With timeout 0 a second drain would report at once: it must not. */
        (void)drain(&T.other, 0);
        ok(server_stop(&T.other), "the drained server closes");
        ok(got_eof(c), "its connection ends");
        is_int(server_state(&T.other).drained, 1, "a second server_drain() does nothing: done ran once");
        frame_client_free(c);
}

typedef struct ReleaseRun {
        const TestServer *ts;
        uint64_t conn;
        unsigned n;
        unsigned drained_after;
} ReleaseRun;

static void do_release_run(void *arg) {
        ReleaseRun *r = arg;
        uint64_t id = r->conn;

        do_release_conn(&id);
        r->n = (unsigned)id;
        r->drained_after = r->ts->drained;
}

/* Calls in flight end normally during a drain; new requests are refused. */
static void test_drain_in_flight(void) {
        ServerState three = { .ts = &T.other, .in_flight = 3 };
        ReleaseRun rel = { .ts = &T.other };
        FrameClient *a, *b;
        ServerState st;
        char path[128];
        bool good = true;
        DrainRun d;
        DFrame *f = NULL;
        int r;

        path_in_dir(path, sizeof(path), "drain.sock");
        r = server_start(&T.other, path, -1, 0, 0);
        is_int(r, 0, "a server to drain with calls in flight");
        a = client_open(path, "drain-a");
        b = client_connect(path);       /* still in the handshake when the drain starts */
        rel.conn = conn_id_of(a, 100);
        send_wait(a, 101);
        send_exec(a, 102, 4, 1000, 0);
        send_exec(a, 103, 100, 10, 0);
        ok(rel.conn > 0 && wait_until(in_flight_is, &three), "three calls in flight");

        d = drain(&T.other, 600 * 1000);
        is_int(d.in_flight, 3, "server_calls_in_flight() counts them");

        st = server_state(&T.other);
        send_status(a, 104);
        f = recv_frame(a);
        ok(is_unavailable(f, 104, "shutting down"), "a new request during the drain: UNAVAILABLE, retryable: %s",
           f && f->error ? f->error->message : "");
        frame_client_frame_free(f);
        send_get(a, 105, "release");
        f = recv_frame(a);
        ok(is_unavailable(f, 105, "shutting down"), "every new request is refused");
        frame_client_frame_free(f);
        is_int(server_state(&T.other).dispatched, st.dispatched, "dispatch never sees them");

        f = NULL;
        r = b ? frame_client_hello(b, 1, "drain-b", WAIT_MS, &f) : -1;
        ok(r == 0 && f->body_case == DBODY(HELLO), "Hello during the drain is answered");
        frame_client_frame_free(f);
        if (b)
                send_status(b, 1);
        f = recv_frame(b);
        ok(is_unavailable(f, 1, "shutting down"), "and the requests after it get UNAVAILABLE");
        frame_client_frame_free(f);

        /* The calls in flight still get their stream data, cancel and credit. */
        send_stdin(a, 102, "ping");
        f = recv_frame(a);
        ok(f && f->call_id == 102 && f->exec_output && f->exec_output->data.len == 4,
           "stream data reaches a call in flight during the drain");
        frame_client_frame_free(f);
        send_cancel(a, 103);
        f = recv_frame(a);
        ok(is_error(f, 103, GRPC_STATUS_CANCELLED), "so does Cancel");
        frame_client_frame_free(f);
        send_credit(a, 102, 4000);
        for (int i = 0; i < 4; i++) {
                f = recv_frame(a);
                good &= is_output(f, 102, 0, 1000, i);
                frame_client_frame_free(f);
        }
        f = recv_frame(a);
        ok(good && f && f->call_id == 102 && f->final && !f->error && f->body_case == DBODY(EXEC_EXIT),
           "and credit: the stream runs to its normal end");
        frame_client_frame_free(f);

        st = server_state(&T.other);
        ok(st.in_flight == 1 && st.drained == 0, "the drain waits for the call still in flight (%u in flight)",
           st.in_flight);

        loop_call(do_release_run, &rel);
        ok(rel.n == 1 && rel.drained_after == 0, "the last call ends; done does not run inside its call_finish()");
        f = recv_frame(a);
        ok(f && f->call_id == 101 && f->final && !f->error && f->body_case == DBODY(SANDBOX) &&
           streq(f->sandbox->sandbox_id, "held-101"), "its client receives the final frame");
        frame_client_frame_free(f);
        ok(wait_until(is_drained, &T.other), "then the drain reports");
        is_int(server_state(&T.other).in_flight, 0, "no call in flight");

        ok(server_stop(&T.other), "the drained server closes");
        ok(got_eof(a) && got_eof(b), "its connections end");
        frame_client_free(a);
        frame_client_free(b);
}

/* Calls that outlast the drain end with UNAVAILABLE, get cancel and are detached. */
static void test_drain_timeout(void) {
        ServerState three = { .ts = &T.other, .in_flight = 3 };
        HeldCheck sticky = { .id = 111, .finish = true }, held = { .id = 112, .finish = true };
        unsigned seen = 0;
        char path[128];
        FrameClient *c;
        CallRecord rec;
        DFrame *f;
        int r;

        path_in_dir(path, sizeof(path), "expire.sock");
        r = server_start(&T.other, path, -1, 0, 0);
        is_int(r, 0, "a server to drain with calls that never end");
        c = client_open(path, "expire");
        send_sticky(c, 111);
        send_wait(c, 112);
        send_exec(c, 113, 10, 10, 0);
        ok(wait_until(in_flight_is, &three), "three calls in flight that do not end by themselves");

        (void)drain(&T.other, 50);
        for (int i = 0; i < 3; i++) {
                f = recv_frame(c);
                if (f && f->call_id >= 111 && f->call_id <= 113 && is_unavailable(f, f->call_id, "shut down before"))
                        seen |= 1u << (f->call_id - 111);
                frame_client_frame_free(f);
        }
        is_int(seen, 7, "after the timeout each gets a final UNAVAILABLE, retryable, while the connection is open");
        ok(wait_until(is_drained, &T.other), "then the drain reports");

        rec = record(111);
        ok(rec.cancelled && rec.cancel_conn_gone, "the cancel hook of a call that does not end ran, the call detached");
        rec = record(113);
        ok(rec.cancelled && rec.cancel_conn_gone && rec.finished, "a stream ended in its cancel hook");
        is_int(server_state(&T.other).in_flight, 0, "server_calls_in_flight() counts no detached call");

        /* The handlers end their calls late: that only frees them. */
        loop_call(do_held_check, &sticky);
        ok(sticky.found && sticky.conn_gone && sticky.cancelled, "the call with hooks is detached and cancelled");
        is_int(sticky.send_r, -EPIPE, "call_send() of a detached call");
        loop_call(do_held_check, &held);
        ok(held.found && held.conn_gone && held.cancelled, "a call without hooks too");

        ok(server_stop(&T.other), "the server closes");
        ok(got_eof(c), "nothing more reached the client: the connection just ends");
        frame_client_free(c);
}

/* server_close() during a drain ends it as the timeout would. */
static void test_drain_cut_short(void) {
        ServerState one = { .ts = &T.other, .in_flight = 1 };
        HeldCheck held = { .id = 121, .finish = true };
        char path[128];
        FrameClient *c;
        ServerState st;
        DFrame *f;
        int r;

        path_in_dir(path, sizeof(path), "cut.sock");
        r = server_start(&T.other, path, -1, 0, 0);
        is_int(r, 0, "a server closed in the middle of its drain");
        c = client_open(path, "cut");
        send_wait(c, 121);
        ok(wait_until(in_flight_is, &one), "a call in flight");
        (void)drain(&T.other, 600 * 1000);
        ok(server_stop(&T.other), "server_close() during the drain completes");
        f = recv_frame(c);
        ok(is_unavailable(f, 121, "shut down before"), "the call in flight gets a final UNAVAILABLE, retryable");
        frame_client_frame_free(f);
        ok(got_eof(c), "then the connection ends");
        st = server_state(&T.other);
        ok(st.drained == 1 && st.drained_seq < st.closed_seq, "the drain reports, before the close");
        loop_call(do_held_check, &held);
        ok(held.found && held.conn_gone && held.cancelled, "the call got cancel from the close");
        frame_client_free(c);
}

/* Output queued before server_close() reaches a client that reads it slowly. */
static void test_close_flush(void) {
        const unsigned frames = 64, size = 32768;
        uint64_t id = 131;
        unsigned outputs = 0;
        bool data_ok = true, exit_ok = false;
        char path[128];
        FrameClient *c;
        DFrame *f;
        int r;

        path_in_dir(path, sizeof(path), "flush.sock");
        r = server_start(&T.other, path, -1, 0, 0);
        is_int(r, 0, "a server closed with output queued");
        c = client_open(path, "flush");
        if (kernel_buffer_bound() >= (uint64_t)frames * size)
                diag("the kernel buffers %" PRIu64 " bytes: the stream may not stay queued", kernel_buffer_bound());
        send_exec(c, id, frames, size, UINT32_MAX);
        ok(wait_until(rec_finished, &id), "a stream of %u bytes and its end are queued, nothing read yet",
           frames * size);
        loop_call(do_server_close, &T.other);

        while ((f = recv_frame(c))) {
                bool last = f->final;

                if (!last)
                        data_ok &= is_output(f, id, 0, size, (int)(outputs++ & 0xff));
                else
                        exit_ok = f->call_id == id && !f->error && f->body_case == DBODY(EXEC_EXIT);
                frame_client_frame_free(f);
                if (last)
                        break;
                if (outputs % 8 == 0)
                        usleep(1000);
        }
        ok(data_ok && outputs == frames, "every frame queued before server_close() arrives, in order (%u of %u)",
           outputs, frames);
        ok(exit_ok, "and the final frame");
        ok(got_eof(c), "then the connection ends");
        ok(wait_until(is_closed, &T.other), "server_close() completes");
        frame_client_free(c);
}

static void *client_thread(void *arg) {
        char path[128];
        FrameClient *a;

        path_in_dir(path, sizeof(path), "main.sock");
        a = test_handshake(path);
        test_bad_handshakes(path, a);
        test_out_of_order(a);
        test_duplicate_id(a);
        test_errors(a);
        test_stream_credit(a);
        test_cancel(a);
        test_cancel_unary(a);
        test_calls_limit(path);
        test_malformed(path, a);
        test_oversized(path, a);
        test_slow_reader(path);
        test_disconnect(path, &T.main);
        test_limits();
        test_socket_files();
        test_drain_idle();
        test_drain_in_flight();
        test_drain_timeout();
        test_drain_cut_short();
        test_close_flush();
        test_server_close(path);
        frame_client_free(a);

        pthread_mutex_lock(&T.lock);
        T.client_done = true;
        pthread_mutex_unlock(&T.lock);
        (void)uv_async_send(&T.async);
        return NULL;
}

int main(void) {
        char path[128];
        pthread_t th;
        int r;

        signal(SIGPIPE, SIG_IGN);
        log_set_ident("test-daemon-server");
        log_set_max_level(getenv("TEST_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR);

        snprintf(T.dir, sizeof(T.dir), "%s/cwsd-server-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        if (!mkdtemp(T.dir) || chmod(T.dir, 0755) < 0)
                bail_out("temporary directory: %s", strerror(errno));
        T.main.name = "main";
        T.limits.name = "limits";
        T.other.name = "other";
        pthread_mutex_init(&T.lock, NULL);
        pthread_cond_init(&T.cond, NULL);
        if (uv_loop_init(&T.loop) < 0 || uv_async_init(&T.loop, &T.async, on_async) < 0)
                bail_out("loop setup");

        path_in_dir(path, sizeof(path), "main.sock");
        {
                NewServer n = { &T.main, path, -1, 64, 64, 0 };

                do_server_new(&n);
                if (n.r < 0)
                        bail_out("server_new: %s", strerror(-n.r));
        }

        if (pthread_create(&th, NULL, client_thread, NULL) != 0)
                bail_out("client thread");
        r = uv_run(&T.loop, UV_RUN_DEFAULT);
        pthread_join(th, NULL);
        is_int(r, 0, "the loop ran until nothing was left");

        is_int(T.n_held, 0, "no call is left held");
        server_free(T.main.server);
        server_free(T.limits.server);
        server_free(T.other.server);
        is_int(uv_loop_close(&T.loop), 0, "uv_loop_close(): every handle was closed");
        pthread_cond_destroy(&T.cond);
        pthread_mutex_destroy(&T.lock);
        rmdir(T.dir);
        return done();
}
