/*
 * The daemon's backend client and its supervised local backend, on a real
 * loop: LocalChild starts cwsandbox-local ($CWSANDBOX_LOCAL) with a token,
 * and Backend talks to it through a channel pool.
 *
 * Covered: sandbox create, get until RUNNING, list by tag; unary Exec; a
 * StreamExec stdin round trip; 400 StreamExec streams that all run at once
 * although the server takes at most 100 streams per connection (each stream
 * reports ready before any is released, so streams queued behind the cap
 * would never get there); a wrong API key; NOT_FOUND with its ErrorInfo
 * reason, on a unary call and a stream; kill -9 of the child (calls in
 * flight fail UNAVAILABLE, the child comes back, calls work again); backends
 * with nothing listening (plain and TLS) failing UNAVAILABLE at once; a child
 * program that does not exist; shutdown with calls in flight, and a loop left
 * with no handle.
 *
 * The test drives the loop itself: run_until() runs it until a condition
 * holds or a limit passes, so each step reads in order.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macro.h"
#include "backend.h"
#include "cqloop.h"
#include "localchild.h"
#include "pbgrpc.h"
#include "coreweave/sandbox/v1/sandbox.pb-c.h"
#include "test-util.h"

#define N_STREAMS       400
#define POOL_SIZE       5       /* 5 x BACKEND_STREAMS_PER_CHANNEL >= N_STREAMS */
#define CALL_MS         20000
#define READY_MS        60000
#define RESTART_MS      30000

typedef Coreweave__Sandbox__V1__ExecStreamRequest ExecReq;
typedef Coreweave__Sandbox__V1__ExecStreamResponse ExecResp;
#define RESP(x) COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__MESSAGE_##x
#define REQ(x) COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__MESSAGE_##x

static uv_loop_t loop;
static CqLoop cq;
static uv_timer_t wait_timer;
static uint64_t wait_deadline;
static bool wait_expired;
static Backend *backend;
static LocalChild *child;
static unsigned child_ready;
static bool in_api;             /* inside backend_call() or backend_stream_open() */
static bool reentered;          /* a callback ran from inside one of them */

/* ---- running the loop -------------------------------------------------------------- */

typedef bool (*Cond)(const void *arg);

/* Ticks, so that conditions on things outside the loop (the backend's
 * counters, /proc) are looked at again even when nothing happens. */
static void on_wait_timer(uv_timer_t *t) {
        if (uv_now(&loop) >= wait_deadline)
                wait_expired = true;
}

/* Run the loop until @cond holds or @timeout_ms has passed; returns @cond. */
static bool run_until(Cond cond, const void *arg, int timeout_ms) {
        uv_update_time(&loop);
        wait_deadline = uv_now(&loop) + (uint64_t)timeout_ms;
        wait_expired = false;
        (void)uv_timer_start(&wait_timer, on_wait_timer, 20, 20);
        while (!(cond && cond(arg)) && !wait_expired)
                (void)uv_run(&loop, UV_RUN_ONCE);
        (void)uv_timer_stop(&wait_timer);
        return cond && cond(arg);
}

static void run_for(int ms) {
        (void)run_until(NULL, NULL, ms);
}

static bool flag_set(const void *arg) {
        return *(const bool *)arg;
}

typedef struct Count {
        const unsigned *n;
        unsigned want;
} Count;

static bool count_reached(const void *arg) {
        const Count *c = arg;

        return *c->n >= c->want;
}

static bool child_ready_cond(const void *arg) {
        return child_ready > 0;
}

/* ---- unary calls ------------------------------------------------------------------ */

typedef struct Reply {
        bool done;
        Status st;
        ProtobufCMessage *msg;
} Reply;

static void on_reply(void *userdata, const Status *st, ProtobufCMessage *msg) {
        Reply *r = userdata;

        if (in_api)
                reentered = true;
        r->done = true;
        r->st = *st;
        r->msg = msg;
}

static BackendCall *call_start(BackendMethod m, const ProtobufCMessage *req, int64_t timeout_ms, Reply *r) {
        BackendCall *c;

        *r = (Reply) {};
        in_api = true;
        c = backend_call(backend, m, req, timeout_ms, on_reply, r);
        in_api = false;
        return c;
}

/* One call, waited for; the reply (if any) is the caller's. */
static Reply call(BackendMethod m, const ProtobufCMessage *req) {
        Reply r;

        (void)call_start(m, req, CALL_MS, &r);
        if (!run_until(flag_set, &r.done, CALL_MS + 10000))
                bail_out("%s: no callback within %d s", backend_method_name(m), CALL_MS / 1000 + 10);
        return r;
}

static void reply_free(Reply *r) {
        if (r->msg)
                protobuf_c_message_free_unpacked(r->msg, NULL);
        r->msg = NULL;
}

static void diag_status(const char *what, const Status *st) {
        diag("  %s: %s \"%s\"%s%s", what, grpc_status_name(st->code), st->message,
             st->reason[0] ? " reason " : "", st->reason);
}

static Reply get_sandbox(const char *id) {
        Coreweave__Sandbox__V1__GetSandboxRequest req = COREWEAVE__SANDBOX__V1__GET_SANDBOX_REQUEST__INIT;

        req.sandbox_id = (char *)id;
        return call(BACKEND_GET_SANDBOX, &req.base);
}

static Reply list_sandboxes(const char *tag) {
        Coreweave__Sandbox__V1__ListSandboxesRequest req = COREWEAVE__SANDBOX__V1__LIST_SANDBOXES_REQUEST__INIT;
        char *tags[] = { (char *)tag };

        req.n_tags = tag ? 1 : 0;
        req.tags = tag ? tags : NULL;
        return call(BACKEND_LIST_SANDBOXES, &req.base);
}

/* Create the SDK's keep-alive sandbox tagged (and marked in its environment)
 * with @marker, and wait for RUNNING. Returns its id (heap) or NULL. */
static char *start_sandbox(const char *marker, const char *what) {
        Coreweave__Sandbox__V1__CreateSandboxRequest req = COREWEAVE__SANDBOX__V1__CREATE_SANDBOX_REQUEST__INIT;
        Coreweave__Sandbox__V1__Sandbox sb = COREWEAVE__SANDBOX__V1__SANDBOX__INIT;
        Coreweave__Sandbox__V1__SandboxSpec spec = COREWEAVE__SANDBOX__V1__SANDBOX_SPEC__INIT;
        Coreweave__Sandbox__V1__Container ct = COREWEAVE__SANDBOX__V1__CONTAINER__INIT;
        Coreweave__Sandbox__V1__Container__EnvironmentVariablesEntry env =
                COREWEAVE__SANDBOX__V1__CONTAINER__ENVIRONMENT_VARIABLES_ENTRY__INIT;
        Coreweave__Sandbox__V1__Container__EnvironmentVariablesEntry *envs[] = { &env };
        Coreweave__Sandbox__V1__Container *cts[] = { &ct };
        char *args[] = { (char *)"-c", (char *)BC_KEEPALIVE_SCRIPT };
        char *tags[] = { (char *)marker };
        int64_t end = test_mono_ms() + TEST_START_MS;
        char *id = NULL;
        Reply r;

        ct.name = (char *)"main";
        ct.image = (char *)"python:3.11";
        ct.command = (char *)BC_KEEPALIVE_COMMAND;
        ct.n_args = ELEMENTSOF(args);
        ct.args = args;
        env.key = (char *)"TEST_MARKER";
        env.value = (char *)marker;
        ct.n_environment_variables = 1;
        ct.environment_variables = envs;
        spec.n_containers = 1;
        spec.containers = cts;
        spec.n_tags = 1;
        spec.tags = tags;
        sb.spec = &spec;
        req.sandbox = &sb;

        r = call(BACKEND_CREATE_SANDBOX, &req.base);
        if (!ok(status_ok(&r.st), "%s: CreateSandbox", what)) {
                diag_status("CreateSandbox", &r.st);
                return NULL;
        }
        id = strdup(((Coreweave__Sandbox__V1__Sandbox *)r.msg)->sandbox_id);
        reply_free(&r);
        if (!id)
                bail_out("out of memory");

        for (;;) {
                const Coreweave__Sandbox__V1__Sandbox *got;
                int state;

                r = get_sandbox(id);
                got = (const Coreweave__Sandbox__V1__Sandbox *)r.msg;
                state = got && got->status ? (int)got->status->state : -1;
                reply_free(&r);
                if (state == COREWEAVE__SANDBOX__V1__STATE__STATE_RUNNING)
                        break;
                if (!status_ok(&r.st) || test_mono_ms() > end ||
                    state == COREWEAVE__SANDBOX__V1__STATE__STATE_FAILED ||
                    state == COREWEAVE__SANDBOX__V1__STATE__STATE_COMPLETED) {
                        ok(false, "%s: GetSandbox until RUNNING", what);
                        diag_status("GetSandbox", &r.st);
                        diag("  last state %d", state);
                        free(id);
                        return NULL;
                }
                run_for(50);
        }
        ok(true, "%s: GetSandbox until RUNNING", what);
        return id;
}

/* ---- StreamExec ------------------------------------------------------------------- */

typedef struct Exec {
        BackendStream *stream;
        bool ready, exited, ended, done;
        int32_t exit_code;
        char error[128];
        char out[256];
        size_t out_len;
        Status st;
        unsigned *n_ready, *n_done;     /* shared counters, may be NULL */
} Exec;

static void exec_on_message(void *userdata, ProtobufCMessage *msg) {
        Exec *e = userdata;
        ExecResp *m = (ExecResp *)msg;

        switch (m->message_case) {
        case RESP(READY):
                e->ready = true;
                if (e->n_ready)
                        (*e->n_ready)++;
                break;
        case RESP(OUTPUT):
                if (m->output && m->output->data.len < sizeof(e->out) - e->out_len) {
                        memcpy(e->out + e->out_len, m->output->data.data, m->output->data.len);
                        e->out_len += m->output->data.len;
                        e->out[e->out_len] = 0;
                }
                break;
        case RESP(EXIT):
                e->exited = true;
                e->exit_code = m->exit ? m->exit->exit_code : -1;
                break;
        case RESP(ERROR):
                (void)snprintf(e->error, sizeof(e->error), "%s: %s", m->error ? m->error->code : "?",
                               m->error ? m->error->message : "?");
                break;
        default:
                break;
        }
        protobuf_c_message_free_unpacked(msg, NULL);
        backend_stream_read(e->stream);
}

static void exec_on_end(void *userdata) {
        Exec *e = userdata;

        e->ended = true;
}

static void exec_on_done(void *userdata, const Status *st) {
        Exec *e = userdata;

        if (in_api)
                reentered = true;
        e->done = true;
        e->st = *st;
        e->stream = NULL;
        if (e->n_done)
                (*e->n_done)++;
}

static const BackendStreamOps exec_ops = {
        .message = exec_on_message,
        .end = exec_on_end,
        .done = exec_on_done,
};

static void exec_start(Exec *e, const char *id, const char *const *argv) {
        Coreweave__Sandbox__V1__ExecStreamInit init = COREWEAVE__SANDBOX__V1__EXEC_STREAM_INIT__INIT;
        ExecReq req = COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__INIT;
        size_t n = 0;

        while (argv[n])
                n++;
        init.sandbox_id = (char *)id;
        init.n_command = n;
        init.command = (char **)argv;
        req.message_case = REQ(INIT);
        req.init = &init;
        in_api = true;
        e->stream = backend_stream_open(backend, BACKEND_STREAM_EXEC, &req.base, -1, &exec_ops, e);
        in_api = false;
        backend_stream_read(e->stream);
}

static void exec_stdin(Exec *e, const char *data) {
        ExecReq req = COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__INIT;

        req.message_case = REQ(STDIN);
        req.stdin.data = (uint8_t *)data;
        req.stdin.len = strlen(data);
        (void)backend_stream_write(e->stream, &req.base);
}

/* A close frame, then the half-close, as the SDK ends stdin. */
static void exec_close_stdin(Exec *e) {
        Coreweave__Sandbox__V1__ExecStreamClose close = COREWEAVE__SANDBOX__V1__EXEC_STREAM_CLOSE__INIT;
        ExecReq req = COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__INIT;

        if (!e->stream)
                return;
        req.message_case = REQ(CLOSE);
        req.close = &close;
        (void)backend_stream_write(e->stream, &req.base);
        backend_stream_close_send(e->stream);
}

/* ---- the steps -------------------------------------------------------------------- */

static void test_child_files(const char *dir) {
        _cleanup_free_ char *token_path = NULL;
        char buf[256] = "";
        struct stat st = {};
        bool got;
        FILE *f;

        got = stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0700;
        ok(got, "the child's directory is private (mode %o)", st.st_mode & 07777);
        if (asprintf(&token_path, "%s/token", dir) < 0)
                bail_out("out of memory");
        got = stat(token_path, &st) == 0 && (st.st_mode & 07777) == 0600;
        ok(got, "the token file is 0600 (mode %o)", st.st_mode & 07777);
        f = fopen(token_path, "re");
        if (f) {
                if (!fgets(buf, sizeof(buf), f))
                        buf[0] = 0;
                fclose(f);
        }
        ok(strlen(local_child_token(child)) == 64 && strncmp(buf, local_child_token(child), 64) == 0,
           "the token file holds the 64 hex digit token");
}

static void test_sandbox_calls(const char *id, const char *marker) {
        Coreweave__Sandbox__V1__ExecRequest req = COREWEAVE__SANDBOX__V1__EXEC_REQUEST__INIT;
        const char *argv[] = { "/bin/sh", "-c", "echo hello; echo oops >&2; exit 3", NULL };
        const Coreweave__Sandbox__V1__ListSandboxesResponse *list;
        const Coreweave__Sandbox__V1__ExecResponse *resp;
        Reply r;

        r = list_sandboxes(marker);
        list = (const Coreweave__Sandbox__V1__ListSandboxesResponse *)r.msg;
        ok(status_ok(&r.st) && list && list->n_sandboxes == 1 && streq(list->sandboxes[0]->sandbox_id, id),
           "ListSandboxes by tag finds exactly the sandbox");
        reply_free(&r);

        req.sandbox_id = (char *)id;
        req.n_command = 3;
        req.command = (char **)argv;
        r = call(BACKEND_EXEC, &req.base);
        resp = (const Coreweave__Sandbox__V1__ExecResponse *)r.msg;
        if (!ok(status_ok(&r.st) && resp, "unary Exec"))
                diag_status("Exec", &r.st);
        else {
                is_int(resp->exit_code, 3, "unary Exec: the exit code");
                ok(resp->stdout.len == 6 && memcmp(resp->stdout.data, "hello\n", 6) == 0, "unary Exec: stdout");
                ok(resp->stderr.len == 5 && memcmp(resp->stderr.data, "oops\n", 5) == 0, "unary Exec: stderr");
        }
        reply_free(&r);
}

static bool exec_has_ping(const void *arg) {
        const Exec *e = arg;

        return strstr(e->out, "ping\n") || e->done;
}

static void test_stream_stdin(const char *id) {
        const char *argv[] = { "cat", NULL };
        Exec e = {};

        exec_start(&e, id, argv);
        exec_stdin(&e, "ping\n");
        ok(run_until(exec_has_ping, &e, CALL_MS) && strstr(e.out, "ping\n"), "StreamExec: stdin comes back from cat");
        exec_close_stdin(&e);
        ok(run_until(flag_set, &e.done, CALL_MS), "StreamExec: done after the stdin is closed");
        if (!ok(status_ok(&e.st) && e.ready && e.exited && e.exit_code == 0 && e.ended,
                "StreamExec: ready, exit 0, end, status OK"))
                diag_status("StreamExec", &e.st);
        is_str(e.out, "ping\n", "StreamExec: exactly the input came back");
}

/* Streams that each wait for stdin: every one must be running on the server
 * at once. One connection would take 100; the rest would queue and never
 * report ready until others ended. */
static void test_many_streams(const char *id, const char *target) {
        _cleanup_bc_ Cwsandboxlocal__V1__GetCountersResponse *counters = NULL;
        const char *argv[] = { "cat", NULL };
        unsigned n_ready = 0, n_done = 0, n_fine = 0;
        BcClient *control = NULL;
        bool got;
        Exec *e;

        e = calloc(N_STREAMS, sizeof(Exec));
        if (!e)
                bail_out("out of memory");
        for (unsigned i = 0; i < N_STREAMS; i++) {
                e[i].n_ready = &n_ready;
                e[i].n_done = &n_done;
                exec_start(&e[i], id, argv);
        }
        is_int(backend_streams_open(backend), N_STREAMS, "%d streams are open", N_STREAMS);
        if (!ok(run_until(count_reached, &(Count) { &n_ready, N_STREAMS }, READY_MS),
                "all %d streams are running at once (ready before any is released)", N_STREAMS))
                diag("  %u of %d ready, %u already done", n_ready, N_STREAMS, n_done);

        if (bc_connect(target, local_child_token(child), &control) < 0)
                bail_out("cannot create a control client");
        got = bc_get_counters(control, false, &counters, NULL) == 0;
        ok(got && counters->processes >= N_STREAMS, "the backend counts at least %d processes running (%u)",
           N_STREAMS, got ? counters->processes : 0);
        control = bc_close(control);

        for (unsigned i = 0; i < N_STREAMS; i++)
                exec_close_stdin(&e[i]);
        ok(run_until(count_reached, &(Count) { &n_done, N_STREAMS }, READY_MS), "all %d streams end", N_STREAMS);
        for (unsigned i = 0, shown = 0; i < N_STREAMS; i++)
                if (e[i].done && status_ok(&e[i].st) && e[i].exited && e[i].exit_code == 0)
                        n_fine++;
                else if (shown++ < 5)
                        diag_status(e[i].done ? "a stream" : "a stream not done", &e[i].st);
        is_int(n_fine, N_STREAMS, "every stream ended with exit 0 and status OK");
        is_int(backend_streams_open(backend), 0, "no stream is left open");
        ok(backend_stats(backend, BACKEND_STREAM_EXEC)->calls >= N_STREAMS, "the StreamExec calls are counted");
        free(e);
}

static void test_wrong_key(const char *id) {
        const char *argv[] = { "true", NULL };
        Exec e = {};
        Reply r;

        is_int(backend_set_api_key(backend, "two\nlines"), -EINVAL, "an API key gRPC would refuse is refused");
        ok(backend_set_api_key(backend, "not-the-token") == 0, "the API key is replaced");
        r = get_sandbox(id);
        is_int(r.st.code, GRPC_STATUS_UNAUTHENTICATED, "a wrong API key: GetSandbox is UNAUTHENTICATED");
        reply_free(&r);
        exec_start(&e, id, argv);
        (void)run_until(flag_set, &e.done, CALL_MS);
        ok(e.done && e.st.code == GRPC_STATUS_UNAUTHENTICATED && !e.ready,
           "a wrong API key: StreamExec is UNAUTHENTICATED (%s)", grpc_status_name(e.st.code));

        ok(backend_set_api_key(backend, local_child_token(child)) == 0, "the right API key is set again");
        r = get_sandbox(id);
        ok(status_ok(&r.st), "with the right key again, GetSandbox works");
        reply_free(&r);
}

static void test_not_found(void) {
        const BackendMethodStats *stats;
        uint64_t answered = 0;
        Reply r;

        r = get_sandbox("no-such-sandbox");
        is_int(r.st.code, GRPC_STATUS_NOT_FOUND, "an unknown sandbox: NOT_FOUND");
        is_str(r.st.reason, "CWSANDBOX_SANDBOX_NOT_FOUND", "NOT_FOUND carries the ErrorInfo reason");
        ok(strstr(r.st.message, "not found") != NULL, "the message is the backend's (\"%s\")", r.st.message);
        ok(r.msg == NULL, "a failed call has no reply");
        reply_free(&r);

        stats = backend_stats(backend, BACKEND_GET_SANDBOX);
        for (size_t i = 0; i < ELEMENTSOF(stats->by_code); i++)
                answered += stats->by_code[i];
        ok(stats->by_code[GRPC_STATUS_NOT_FOUND] >= 1 && stats->errors >= 1 && stats->by_code[GRPC_STATUS_OK] >= 1,
           "GetSandbox stats count OK and NOT_FOUND calls");
        ok(stats->calls == answered && stats->latency.count == answered && stats->latency.sum > 0, "every GetSandbox call ended and has a latency");
}

static bool exec_ready_or_done(const void *arg) {
        const Exec *e = arg;

        return e->ready || e->done;
}

typedef struct ProcCount {
        BcClient *control;
        unsigned want;
} ProcCount;

static bool processes_reached(const void *arg) {
        const ProcCount *p = arg;
        Cwsandboxlocal__V1__GetCountersResponse *c = NULL;
        bool reached;

        if (bc_get_counters(p->control, false, &c, NULL) != 0)
                return false;
        reached = c->processes >= p->want;
        bc_free(c);
        return reached;
}

static bool restarted(const void *arg) {
        const int *old_pid = arg;

        return local_child_restarts(child) >= 1 && local_child_pid(child) > 0 && local_child_pid(child) != *old_pid &&
               child_ready == 1;
}

static bool no_marked_processes(const void *arg) {
        pid_t pids[4];

        return test_find_processes(arg, pids, ELEMENTSOF(pids)) == 0;
}

/* kill -9 the child: calls in flight and new calls fail UNAVAILABLE, the
 * child is started again, and calls work again. */
static void test_kill(const char *id, const char *marker) {
        Coreweave__Sandbox__V1__ExecRequest req = COREWEAVE__SANDBOX__V1__EXEC_REQUEST__INIT;
        const char *sleep_argv[] = { "sleep", "30", NULL }, *cat_argv[] = { "cat", NULL };
        Coreweave__Sandbox__V1__ListSandboxesRequest list = COREWEAVE__SANDBOX__V1__LIST_SANDBOXES_REQUEST__INIT;
        Cwsandboxlocal__V1__GetCountersResponse *before = NULL;
        BcClient *control = NULL;
        Exec e = {}, after = {};
        Reply in_flight, fresh, r;
        int old_pid = local_child_pid(child);
        unsigned base = 0;
        int64_t end;

        exec_start(&e, id, cat_argv);
        ok(run_until(exec_ready_or_done, &e, CALL_MS) && e.ready, "a stream is running before the kill");
        if (bc_connect(local_child_target(child), local_child_token(child), &control) < 0)
                bail_out("cannot create a control client");
        if (bc_get_counters(control, false, &before, NULL) == 0)
                base = before->processes;
        bc_free(before);
        req.sandbox_id = (char *)id;
        req.n_command = 2;
        req.command = (char **)sleep_argv;
        (void)call_start(BACKEND_EXEC, &req.base, CALL_MS, &in_flight);
        ok(run_until(processes_reached, &(ProcCount) { control, base + 1 }, CALL_MS),
           "a unary Exec is running before the kill");
        control = bc_close(control);

        if (kill(old_pid, SIGKILL) < 0)
                bail_out("kill: %m");
        /* Before the loop even sees the exit; the restart waits for the loop. */
        (void)call_start(BACKEND_LIST_SANDBOXES, &list.base, CALL_MS, &fresh);

        (void)run_until(flag_set, &e.done, CALL_MS);
        ok(e.done && e.st.code == GRPC_STATUS_UNAVAILABLE,
           "the stream in flight fails UNAVAILABLE (%s)", grpc_status_name(e.st.code));
        (void)run_until(flag_set, &in_flight.done, CALL_MS);
        ok(in_flight.done && in_flight.st.code == GRPC_STATUS_UNAVAILABLE,
           "the unary call in flight fails UNAVAILABLE (%s)", grpc_status_name(in_flight.st.code));
        (void)run_until(flag_set, &fresh.done, CALL_MS);
        ok(fresh.done && fresh.st.code == GRPC_STATUS_UNAVAILABLE,
           "a call made right after the kill fails UNAVAILABLE (%s)", grpc_status_name(fresh.st.code));
        reply_free(&in_flight);
        reply_free(&fresh);

        (void)run_until(restarted, &old_pid, RESTART_MS);
        ok(restarted(&old_pid), "the child is restarted (pid %d, was %d; ready reported once)",
           local_child_pid(child), old_pid);
        ok(run_until(no_marked_processes, marker, RESTART_MS), "the killed child's sandbox processes are gone");

        end = test_mono_ms() + RESTART_MS;
        for (;;) {
                r = list_sandboxes(NULL);
                if (status_ok(&r.st) || test_mono_ms() > end)
                        break;
                reply_free(&r);
                run_for(200);
        }
        if (!ok(status_ok(&r.st), "calls succeed again after the restart"))
                diag_status("ListSandboxes", &r.st);
        reply_free(&r);

        /* The new child has never heard of the old sandbox. */
        exec_start(&after, id, cat_argv);
        (void)run_until(flag_set, &after.done, CALL_MS);
        ok(after.done && after.st.code == GRPC_STATUS_NOT_FOUND && !after.ready,
           "a stream to the old sandbox: NOT_FOUND (%s)", grpc_status_name(after.st.code));
        is_str(after.st.reason, "CWSANDBOX_SANDBOX_NOT_FOUND", "the stream's NOT_FOUND carries the reason");
}

typedef struct InFlight {
        const Exec *stream;
        const Reply *call;
} InFlight;

static void on_flag(void *userdata) {
        *(bool *)userdata = true;
}

/* Backends with nothing behind them: calls end UNAVAILABLE, not hang. */
static void test_nothing_listening(const char *dir) {
        _cleanup_free_ char *nowhere = NULL;
        static const struct {
                const char *what;
                bool tls;
        } cases[] = { { "insecure, a unix socket nobody listens on", false }, { "TLS, a closed port", true } };

        if (asprintf(&nowhere, "unix:%s/nobody.sock", dir) < 0)
                bail_out("out of memory");
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                Backend *main_backend = backend, *b = NULL;
                bool down = false;
                Reply r;

                if (backend_new(&loop, &cq, &(BackendOptions) { .target = cases[i].tls ? "127.0.0.1:1" : nowhere,
                                                                 .tls = cases[i].tls, .api_key = "k", .pool_size = 2 },
                                &b) < 0)
                        bail_out("backend_new");
                backend = b;
                r = get_sandbox("x");
                is_int(r.st.code, GRPC_STATUS_UNAVAILABLE, "%s: GetSandbox is UNAVAILABLE", cases[i].what);
                reply_free(&r);
                backend_shutdown(b, on_flag, &down);
                ok(run_until(flag_set, &down, CALL_MS), "%s: shutdown finishes", cases[i].what);
                backend_free(b);
                backend = main_backend;
        }
}

static bool backend_down;
static bool shutdown_stream_first, shutdown_call_first;
static bool child_down;
static bool cq_closed;

static void on_backend_down(void *userdata) {
        const InFlight *f = userdata;

        /* Every callback of the backend ran before this. */
        shutdown_stream_first = f->stream->done && f->stream->st.code == GRPC_STATUS_CANCELLED;
        shutdown_call_first = f->call->done && f->call->st.code == GRPC_STATUS_CANCELLED;
        backend_down = true;
}

static void on_child_down(void *userdata) {
        child_down = true;
}

static void on_cq_closed(CqLoop *c) {
        cq_closed = true;
}

static void walk_count(uv_handle_t *h, void *arg) {
        (*(unsigned *)arg)++;
        diag("  handle still open: %s", uv_handle_type_name(uv_handle_get_type(h)));
}

static void test_shutdown(void) {
        Coreweave__Sandbox__V1__ExecRequest req = COREWEAVE__SANDBOX__V1__EXEC_REQUEST__INIT;
        const char *sleep_argv[] = { "sleep", "30", NULL }, *cat_argv[] = { "cat", NULL };
        _cleanup_free_ char *marker = test_marker("shutdown");
        _cleanup_free_ char *id = start_sandbox(marker, "after the restart");
        Exec e = {};
        Reply in_flight = {};
        unsigned open_handles = 0;

        if (!id)
                bail_out("no sandbox for the shutdown test");
        exec_start(&e, id, cat_argv);
        ok(run_until(exec_ready_or_done, &e, CALL_MS) && e.ready, "a stream is running before shutdown");
        req.sandbox_id = id;
        req.n_command = 2;
        req.command = (char **)sleep_argv;
        (void)call_start(BACKEND_EXEC, &req.base, CALL_MS, &in_flight);

        backend_shutdown(backend, on_backend_down, &(InFlight) { &e, &in_flight });
        ok(run_until(flag_set, &backend_down, CALL_MS), "backend_shutdown() finishes");
        ok(shutdown_stream_first, "shutdown: the open stream ended CANCELLED before done (%s)",
           grpc_status_name(e.st.code));
        ok(shutdown_call_first,
           "shutdown: the unary call in flight ended CANCELLED before done (%s)", grpc_status_name(in_flight.st.code));
        reply_free(&in_flight);
        backend_free(backend);
        backend = NULL;

        local_child_stop(child, on_child_down, NULL);
        ok(run_until(flag_set, &child_down, 30000), "local_child_stop() finishes");
        is_int(local_child_pid(child), 0, "the child is gone");
        ok(no_marked_processes(marker), "no sandbox process outlives the stopped child");
        local_child_free(child);
        child = NULL;

        cq_loop_shutdown(&cq, on_cq_closed);
        ok(run_until(flag_set, &cq_closed, 10000), "the completion queue closes");
        uv_close((uv_handle_t *)&wait_timer, NULL);
        (void)uv_run(&loop, UV_RUN_DEFAULT);
        uv_walk(&loop, walk_count, &open_handles);
        is_int(open_handles, 0, "no handle is left open");
        is_int(uv_loop_close(&loop), 0, "uv_loop_close() succeeds");
}

/* ---- main ------------------------------------------------------------------------- */

static void on_child_ready(void *userdata) {
        child_ready++;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void)(flag == FTW_DP ? rmdir(path) : unlink(path));
        return 0;
}

static void raise_nofile(void) {
        struct rlimit rl;

        /* Hundreds of streams, each with a process and pipes in the child. */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void)setrlimit(RLIMIT_NOFILE, &rl);
        }
}

int main(void) {
        const char *program = getenv("CWSANDBOX_LOCAL"), *level = getenv("CWSANDBOX_LOCAL_LOG_LEVEL");
        const char *tmp = getenv("TMPDIR");
        _cleanup_free_ char *base = NULL, *dir = NULL, *bad_dir = NULL, *target = NULL, *marker = NULL, *id = NULL;
        int r;

        if (test_needs_root())
                return 0;
        if (!program || !*program)
                bail_out("CWSANDBOX_LOCAL is not set (path of cwsandbox-local)");
        raise_nofile();
        if (asprintf(&base, "%s/cwsd-test-XXXXXX", tmp && *tmp ? tmp : "/tmp") < 0 || !mkdtemp(base))
                bail_out("cannot make a temporary directory: %m");
        if (asprintf(&dir, "%s/local", base) < 0 || asprintf(&target, "unix:%s/backend.sock", dir) < 0 ||
            asprintf(&bad_dir, "%s/bad", base) < 0)
                bail_out("out of memory");

        grpc_init();
        if (uv_loop_init(&loop) < 0 || uv_timer_init(&loop, &wait_timer) < 0)
                bail_out("cannot make a loop");
        if (cq_loop_init(&cq, &loop) < 0)
                bail_out("cannot start the completion queue thread");

        r = local_child_new(&loop, &(LocalChildOptions) { .program = "/nonexistent/cwsandbox-local", .dir = bad_dir },
                            on_child_ready, NULL, &child);
        is_int(r, -ENOENT, "a program that does not exist: local_child_new() fails");
        run_for(50);    /* what it opened closes on its own */

        r = local_child_new(&loop, &(LocalChildOptions) { .program = program, .dir = dir,
                                                          .log_level = level && *level ? level : "notice" },
                            on_child_ready, NULL, &child);
        if (r < 0)
                bail_out("local_child_new: %s", strerror(-r));
        if (!ok(run_until(child_ready_cond, NULL, 20000), "the child reports ready"))
                bail_out("cwsandbox-local did not start listening");
        ok(local_child_pid(child) > 0, "the child runs (pid %d)", local_child_pid(child));
        is_str(local_child_target(child), target, "the target is the socket in the private directory");
        test_child_files(dir);

        r = backend_new(&loop, &cq, &(BackendOptions) { .target = local_child_target(child),
                                                         .api_key = local_child_token(child),
                                                         .pool_size = POOL_SIZE },
                        &backend);
        if (r < 0)
                bail_out("backend_new: %s", strerror(-r));

        marker = test_marker("backend");
        id = start_sandbox(marker, "first sandbox");
        if (id) {
                test_sandbox_calls(id, marker);
                test_stream_stdin(id);
                test_many_streams(id, local_child_target(child));
                test_wrong_key(id);
        }
        test_not_found();
        test_nothing_listening(base);
        if (id)
                test_kill(id, marker);
        test_shutdown();
        ok(!reentered, "no callback ran from inside backend_call() or backend_stream_open()");

        grpc_shutdown();
        (void)nftw(base, rm_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
        return done();
}
