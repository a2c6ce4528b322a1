/*
 * libcwsandbox against the fake daemon (tests/lib/fake-daemon.c): every
 * call's request as it goes over the wire and its reply as the application
 * sees it, streams with credit, errors with their details, one connection
 * shared by four threads, and connection loss: a dropped daemon, a close
 * while calls wait, a stream cut before its exit status, a peer that stops
 * reading; then reconnecting: sessions attached again as they were, ids
 * mapped after a daemon lost its state, calls waiting for the daemon to come
 * back (or giving up), a close during a reconnect, a refused Hello, and
 * reconnecting turned off. Needs no daemon and no root.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client-util.h"
#include "cwsandbox.h"
#include "fake-daemon.h"
#include "tap.h"

#define BODY(x) CWSANDBOXD__V1__CLIENT_FRAME__BODY_##x
#define LIMIT_MS        30000           /* a limit for a stuck test, not a measurement */
#define N_THREADS       4
#define N_ROUNDS        40

typedef Cwsandboxd__V1__ClientFrame ClientFrame;

static FakeDaemon *fake;
static cws_conn *conn;

static cws_conn *connect_or_bail(const char *name) {
        cws_conn *c = NULL;
        cws_error err;
        int r;

        r = cws_connect(fake_daemon_socket(fake), name, &c, &err);
        if (r != 0) {
                cu_diag_err("connect", r, &err);
                bail_out("cannot connect to the fake daemon");
        }
        return c;
}

static void free_frame(ClientFrame *f) {
        if (f)
                cwsandboxd__v1__client_frame__free_unpacked(f, NULL);
}

/* The value of map entry @key in a protoc-c map of @n entries, or NULL. */
#define MAP_GET(entries, n, k) ({                                               \
        const char *_v = NULL;                                                  \
        for (size_t _i = 0; _i < (n); _i++)                                     \
                if (strcmp((entries)[_i]->key, (k)) == 0)                       \
                        _v = (entries)[_i]->value;                              \
        _v;                                                                     \
})

/* ---- connect ------------------------------------------------------------------------------ */

static void test_connect(void) {
        const cws_hello *h;
        ClientFrame *f;
        cws_conn *c = NULL;
        cws_error err;
        int r;

        conn = connect_or_bail("test-client-fake");
        h = cws_conn_hello(conn);
        is_int(h->protocol_version, 1, "hello: protocol version");
        is_str(h->daemon_version, "fake-1", "hello: daemon version");
        is_str(h->backend_kind, "local", "hello: backend kind");
        ok(cws_conn_has_feature(conn, "exec-stream") && !cws_conn_has_feature(conn, "nope"),
           "hello: features");
        f = fake_daemon_last(fake, BODY(HELLO));
        ok(f && f->hello->protocol_version == 1 && f->hello->pid == getpid() &&
           strcmp(f->hello->client_name, "test-client-fake") == 0,
           "hello request: version 1, our pid and client name");
        free_frame(f);

        r = cws_connect("/nonexistent/cwsandboxd.sock", NULL, &c, &err);
        is_int(r, CWS_UNAVAILABLE, "connect to a missing socket: UNAVAILABLE");
        ok(strstr(err.message, "unreachable") != NULL, "its message says unreachable: %s", err.message);
        ok(c == NULL, "no connection handed out on failure");

        setenv("CWSANDBOXD_SOCKET", fake_daemon_socket(fake), 1);
        r = cws_connect(NULL, NULL, &c, &err);
        is_int(r, 0, "connect without a path: $CWSANDBOXD_SOCKET is used");
        cws_conn_close(c);
        unsetenv("CWSANDBOXD_SOCKET");
}

static void test_hello_refused(void) {
        FakeDaemonOpts o2 = { .protocol_version = 2 }, refuse = { .refuse_hello = true };
        FakeDaemon *d = NULL;
        cws_conn *c = NULL;
        cws_error err;
        int r;

        if (fake_daemon_start(&o2, &d) < 0)
                bail_out("cannot start a second fake");
        r = cws_connect(fake_daemon_socket(d), NULL, &c, &err);
        is_int(r, CWS_FAILED_PRECONDITION, "a daemon speaking version 2: FAILED_PRECONDITION");
        ok(strstr(err.message, "version 2") != NULL, "its message names the version: %s", err.message);
        d = fake_daemon_free(d);

        if (fake_daemon_start(&refuse, &d) < 0)
                bail_out("cannot start a third fake");
        r = cws_connect(fake_daemon_socket(d), NULL, &c, &err);
        is_int(r, CWS_FAILED_PRECONDITION, "a refused Hello: the daemon's code");
        ok(strstr(err.message, "not supported") != NULL, "and its message: %s", err.message);
        fake_daemon_free(d);
}

/* ---- sessions ----------------------------------------------------------------------------- */

static void test_sessions(void) {
        static const cws_kv env[] = { { "A", "1" }, { "B", "two" } };
        static const char *const tags[] = { "team-x", "run-7" };
        const cws_resources res = { .cpu = "500m", .memory = "1Gi", .gpu_count = 1 };
        const cws_secret secret = { .store = "vault", .name = "db", .field = "pw", .env_var = "DB_PW" };
        const cws_sandbox_defaults defs = {
                .container_image = "python:3.12", .has_args = true,
                .tags = tags, .n_tags = 2, .env = env, .n_env = 2,
                .request_timeout_seconds = 45, .resources = &res, .deny_egress = true,
                .secrets = &secret, .n_secrets = 1,
        };
        const cws_attach_options o = { .defaults = &defs, .has_linger = true, .linger_seconds = 0 };
        cws_session *a = NULL, *b = NULL;
        cws_session_list *l = NULL;
        cws_close_result *cr = NULL;
        const Cwsandboxd__V1__SandboxDefaults *pd;
        ClientFrame *f;
        cws_error err;
        int r;

        r = cws_attach(conn, "train", &o, &a, &err);
        if (r != 0) {
                cu_diag_err("attach", r, &err);
                bail_out("attach failed");
        }
        ok(a->created && strcmp(a->session_id, "ses-train") == 0, "attach: created ses-train");
        is_int(a->linger_seconds, 0, "attach: linger 0 was sent as given");
        is_int(a->owner_uid, getuid(), "attach: owner uid");
        f = fake_daemon_last(fake, BODY(ATTACH_SESSION));
        pd = f ? f->attach_session->defaults : NULL;
        ok(f && f->attach_session->has_linger && f->attach_session->linger_seconds == 0,
           "attach request: has_linger with 0");
        ok(pd && strcmp(pd->container_image, "python:3.12") == 0 && pd->has_args && pd->n_args == 0,
           "attach request: image, and args given as empty");
        ok(pd && pd->n_tags == 2 && strcmp(pd->tags[1], "run-7") == 0, "attach request: tags");
        ok(pd && pd->n_environment_variables == 2 &&
           strcmp(MAP_GET(pd->environment_variables, pd->n_environment_variables, "B") ?: "", "two") == 0,
           "attach request: environment map");
        ok(pd && pd->resources && strcmp(pd->resources->memory, "1Gi") == 0 && pd->resources->gpu_count == 1,
           "attach request: resources");
        ok(pd && pd->n_secrets == 1 && strcmp(pd->secrets[0]->env_var, "DB_PW") == 0, "attach request: secrets");
        ok(pd && pd->deny_egress && pd->request_timeout_seconds == 45 && !pd->has_runner_ids,
           "attach request: deny_egress, request timeout, runner ids unset");
        free_frame(f);

        r = cws_attach(conn, "train", NULL, &b, &err);
        ok(r == 0 && !b->created, "second attach: joined");
        f = fake_daemon_last(fake, BODY(ATTACH_SESSION));
        ok(f && !f->attach_session->defaults && !f->attach_session->has_linger,
           "attach without options: no defaults, linger unset");
        free_frame(f);
        cws_session_free(b);

        r = cws_attach(conn, "refuse", NULL, &b, &err);
        is_int(r, CWS_PERMISSION_DENIED, "attach refused: PERMISSION_DENIED");
        is_str(err.reason, "SESSION_OWNED", "refusal: reason");
        is_int(err.code, CWS_PERMISSION_DENIED, "refusal: err.code");

        is_int(cws_detach(conn, a->session_id, &err), 0, "detach");
        is_int(err.code, 0, "err cleared after a success");
        is_int(cws_detach(conn, "nope", &err), CWS_NOT_FOUND, "detach of an unknown session: NOT_FOUND");

        r = cws_list_sessions(conn, &l, &err);
        ok(r == 0 && l->n_sessions == 1 && strcmp(l->sessions[0].name, "train") == 0, "list sessions");
        cws_session_list_free(l);

        r = cws_close_session(conn, a->session_id, &cr, &err);
        ok(r == 0 && cr->stopped == 2 && cr->n_failures == 1, "close session: 2 stopped, 1 failure");
        if (r == 0 && cr->n_failures == 1) {
                ok(cr->failures[0].code == CWS_UNAVAILABLE && cr->failures[0].retryable &&
                   cr->failures[0].retry_delay_ms == 500 && strcmp(cr->failures[0].sandbox_id, "sb-stuck") == 0,
                   "close session: the failure's code, retry hints and sandbox");
        }
        cws_close_result_free(cr);
        is_int(cws_close_session(conn, a->session_id, NULL, &err), 0, "close session without a result");

        is_int(cws_attach(conn, "", NULL, &b, &err), CWS_INVALID_ARGUMENT, "attach without a name: INVALID_ARGUMENT");
        cws_session_free(a);
}

/* ---- sandboxes ---------------------------------------------------------------------------- */

static void test_create(void) {
        static const char *const tags[] = { "t1" };
        static const cws_kv ann[] = { { "owner", "me" } };
        const cws_mounted_file mf = { .path = "/data/x.bin", .content = "\0\1\2", .size = 3 };
        const cws_resources res = { .cpu = "2" };
        const cws_sandbox_args args = {
                .container_image = "alpine", .command = "sleep", .has_args = true,
                .tags = tags, .n_tags = 1, .annotations = ann, .n_annotations = 1,
                .resources = &res, .mounted_files = &mf, .n_mounted_files = 1, .working_dir = "/work",
        };
        const cws_create_options o = { .args = &args, .scope = CWS_SCOPE_CONNECTION, .start = true };
        const Cwsandboxd__V1__SandboxArgs *pa;
        unsigned before;
        cws_sandbox *sb = NULL;
        ClientFrame *f;
        cws_error err;
        int r;

        r = cws_sandbox_create(conn, "ses-train", &o, &sb, &err);
        if (r != 0)
                cu_diag_err("create", r, &err);
        ok(r == 0 && strcmp(sb->handle_id, "h-1") == 0 && sb->state == CWS_STATE_CREATING,
           "create with start: a handle, CREATING");
        ok(r == 0 && sb->scope == CWS_SCOPE_CONNECTION && sb->n_tags == 1 && strcmp(sb->tags[0], "t1") == 0 &&
           strcmp(sb->container_image, "alpine") == 0, "create: scope, tags and image in the reply");
        cws_sandbox_free(sb);
        f = fake_daemon_last(fake, BODY(CREATE_SANDBOX));
        pa = f ? f->create_sandbox->args : NULL;
        ok(f && f->create_sandbox->start && f->create_sandbox->scope == CWSANDBOXD__V1__SCOPE__SCOPE_CONNECTION,
           "create request: start and scope");
        ok(pa && strcmp(pa->command, "sleep") == 0 && pa->has_args && pa->n_args == 0 &&
           strcmp(pa->working_dir, "/work") == 0, "create request: command, empty args, working dir");
        ok(pa && pa->has_resources && strcmp(pa->resources->cpu, "2") == 0, "create request: resources given");
        ok(pa && pa->n_mounted_files == 1 && pa->mounted_files[0]->content.len == 3 &&
           memcmp(pa->mounted_files[0]->content.data, "\0\1\2", 3) == 0, "create request: mounted file bytes");
        ok(pa && strcmp(MAP_GET(pa->annotations, pa->n_annotations, "owner") ?: "", "me") == 0,
           "create request: annotations");
        free_frame(f);

        r = cws_sandbox_create(conn, "ses-train", NULL, &sb, &err);
        ok(r == 0 && sb->state == CWS_STATE_UNSTARTED && sb->sandbox_id[0] == 0,
           "create without options: UNSTARTED, no backend id yet");
        f = fake_daemon_last(fake, BODY(CREATE_SANDBOX));
        ok(f && !f->create_sandbox->args && !f->create_sandbox->start, "create request without args or start");
        free_frame(f);
        cws_sandbox_free(sb);

        before = fake_daemon_requests(fake, BODY(CREATE_SANDBOX));
        is_int(cws_sandbox_create(conn, NULL, NULL, &sb, &err), CWS_INVALID_ARGUMENT,
               "create without a session: INVALID_ARGUMENT");
        is_int(fake_daemon_requests(fake, BODY(CREATE_SANDBOX)), before, "and nothing was sent");
}

static void test_sandbox_calls(void) {
        static const char *const tags[] = { "a", "b" };
        const cws_list_options lo = { .session_id = "ses-train", .tags = tags, .n_tags = 2,
                                      .status = CWS_STATE_RUNNING, .include_stopped = true, .adopt = true };
        const cws_stop_options so = { .has_grace = true, .grace_seconds = 2.5 };
        const cws_stop_options missing_ok = { .missing_ok = true };
        cws_sandbox *sb = NULL;
        cws_sandbox_list *l = NULL;
        ClientFrame *f;
        cws_error err;
        int r;

        r = cws_sandbox_start(conn, "h-1", &sb, &err);
        ok(r == 0 && sb->state == CWS_STATE_RUNNING, "start: RUNNING");
        cws_sandbox_free(sb);
        is_int(cws_sandbox_start(conn, "h-1", NULL, &err), 0, "start without a result");

        r = cws_sandbox_wait(conn, "h-1", true, 1500, &sb, &err);
        ok(r == 0 && sb->state == CWS_STATE_COMPLETED && sb->has_exit_code && sb->exit_code == 0,
           "wait until complete: COMPLETED with exit code 0");
        cws_sandbox_free(sb);
        f = fake_daemon_last(fake, BODY(WAIT_SANDBOX));
        ok(f && f->wait_sandbox->until_complete && f->wait_sandbox->timeout_ms == 1500,
           "wait request: until_complete and timeout");
        free_frame(f);

        r = cws_sandbox_get(conn, "h-1", true, &sb, &err);
        ok(r == 0 && strcmp(sb->state_reason, "refreshed") == 0, "get with refresh");
        cws_sandbox_free(sb);
        r = cws_sandbox_get(conn, "missing", false, &sb, &err);
        is_int(r, CWS_NOT_FOUND, "get of a missing sandbox: NOT_FOUND");
        is_str(err.reason, "CWSANDBOX_SANDBOX_NOT_FOUND", "not found: reason");
        is_str(err.sandbox_id, "missing", "not found: sandbox id");

        r = cws_list_sandboxes(conn, &lo, &l, &err);
        ok(r == 0 && l->n_sandboxes == 3 && l->sandboxes[2].n_tags == 2 &&
           strcmp(l->sandboxes[0].session_id, "ses-train") == 0, "list: three sandboxes");
        cws_sandbox_list_free(l);
        f = fake_daemon_last(fake, BODY(LIST_SANDBOXES));
        ok(f && f->list_sandboxes->n_tags == 2 && f->list_sandboxes->include_stopped && f->list_sandboxes->adopt &&
           f->list_sandboxes->status == CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_RUNNING,
           "list request: tags, status, include_stopped, adopt");
        free_frame(f);
        r = cws_list_sandboxes(conn, NULL, &l, &err);
        ok(r == 0 && l->n_sandboxes == 3, "list without options");
        cws_sandbox_list_free(l);

        r = cws_sandbox_from_id(conn, "ses-train", "sb-9", true, &sb, &err);
        ok(r == 0 && strcmp(sb->handle_id, "h-adopted") == 0, "from_id with adopt");
        cws_sandbox_free(sb);
        r = cws_sandbox_from_id(conn, "ses-train", "sb-9", false, &sb, &err);
        ok(r == 0 && sb->handle_id[0] == 0, "from_id without adopt: no handle");
        cws_sandbox_free(sb);

        r = cws_sandbox_stop(conn, "h-1", &so, &sb, &err);
        ok(r == 0 && sb && sb->state == CWS_STATE_TERMINATED, "stop: TERMINATED");
        cws_sandbox_free(sb);
        f = fake_daemon_last(fake, BODY(STOP_SANDBOX));
        ok(f && f->stop_sandbox->has_grace && f->stop_sandbox->grace_seconds == 2.5 && !f->stop_sandbox->missing_ok,
           "stop request: grace");
        free_frame(f);
        sb = (cws_sandbox *)&err;       /* must be overwritten */
        r = cws_sandbox_stop(conn, "missing", &missing_ok, &sb, &err);
        ok(r == 0 && sb == NULL, "stop of a missing sandbox with missing_ok: success, no sandbox");
        is_int(cws_sandbox_stop(conn, "missing", NULL, NULL, &err), CWS_NOT_FOUND, "stop of a missing sandbox: NOT_FOUND");
        is_int(cws_sandbox_delete(conn, "missing", true, &err), 0, "delete with missing_ok");
        is_int(cws_sandbox_delete(conn, "missing", false, &err), CWS_NOT_FOUND, "delete without missing_ok");
        is_int(cws_sandbox_delete(conn, "", false, &err), CWS_INVALID_ARGUMENT, "delete without an id");
}

/* ---- exec --------------------------------------------------------------------------------- */

static void test_exec_buffered(void) {
        const char *const echo[] = { "echo", "hello", "world", NULL };
        const char *const exit3[] = { "exit", "3", NULL };
        const char *const fail[] = { "fail", NULL };
        static const cws_kv env[] = { { "K", "V" } };
        const cws_exec_options o = { .cwd = "/tmp", .env = env, .n_env = 1, .timeout_seconds = 9 };
        cws_exec_result *res = NULL;
        ClientFrame *f;
        cws_error err;
        int r;

        r = cws_exec_run(conn, "h-1", echo, &o, &res, &err);
        ok(r == 0, "buffered exec: success");
        if (r == 0) {
                is_str(res->stdout_data, "hello world\n", "buffered exec: stdout");
                is_str(res->stderr_data, "warn\n", "buffered exec: stderr");
                is_int(res->stdout_len, 12, "buffered exec: stdout length");
                is_int(res->exit_code, 0, "buffered exec: exit code");
        }
        cws_exec_result_free(res);
        f = fake_daemon_last(fake, BODY(EXEC));
        ok(f && f->exec->buffered && f->exec->n_command == 3 && strcmp(f->exec->cwd, "/tmp") == 0 &&
           f->exec->timeout_seconds == 9 && strcmp(MAP_GET(f->exec->env, f->exec->n_env, "K") ?: "", "V") == 0,
           "buffered exec request: buffered, argv, cwd, timeout, env");
        free_frame(f);

        r = cws_exec_run(conn, "h-1", exit3, NULL, &res, &err);
        ok(r == 0 && res->exit_code == 3, "a non-zero exit is a success with its code");
        cws_exec_result_free(res);

        r = cws_exec_run(conn, "h-1", fail, NULL, &res, &err);
        is_int(r, CWS_UNAVAILABLE, "buffered exec error: the daemon's code");
        ok(err.retryable && err.retry_delay_ms == 250, "error: retryable with a delay");
        is_str(err.reason, "CWSANDBOX_BACKEND_UNAVAILABLE", "error: reason");
        is_str(err.sandbox_id, "h-1", "error: sandbox id");
        is_str(cws_strerror(r), "UNAVAILABLE", "cws_strerror names the code");
}

/* Read the exec's output to its end into two strings. */
static int read_all(cws_exec *x, char *out, size_t out_size, char *errbuf, size_t err_size, cws_error *err) {
        size_t n_out = 0, n_err = 0, n;
        cws_stream stream;
        char buf[5];
        int r;

        /* A small buffer: frames are read in pieces. */
        while ((r = cws_exec_read(x, buf, sizeof(buf), LIMIT_MS, &stream, &n, err)) == 0 && n > 0) {
                if (stream == CWS_STREAM_STDOUT && n_out + n < out_size) {
                        memcpy(out + n_out, buf, n);
                        n_out += n;
                } else if (stream == CWS_STREAM_STDERR && n_err + n < err_size) {
                        memcpy(errbuf + n_err, buf, n);
                        n_err += n;
                }
        }
        out[n_out] = 0;
        errbuf[n_err] = 0;
        return r;
}

static void test_exec_stream(void) {
        const char *const echo[] = { "echo", "streamed", NULL };
        const char *const exit42[] = { "exit", "42", NULL };
        const cws_exec_options o = { .window_bytes = 12345, .tty = true, .tty_width = 100, .tty_height = 30 };
        char out[64], errbuf[64];
        cws_exec *x = NULL;
        ClientFrame *f;
        cws_error err;
        int r, code = -1;

        r = cws_exec_start(conn, "h-1", echo, &o, &x, &err);
        ok(r == 0, "streaming exec: started");
        if (r != 0)
                return;
        r = read_all(x, out, sizeof(out), errbuf, sizeof(errbuf), &err);
        is_int(r, 0, "streaming exec: read to the end");
        is_str(out, "streamed\n", "streaming exec: stdout");
        is_str(errbuf, "warn\n", "streaming exec: stderr tagged as stderr");
        r = cws_exec_wait(x, &code, &err);
        ok(r == 0 && code == 0, "streaming exec: exit code 0");
        cws_exec_free(x);
        f = fake_daemon_last(fake, BODY(EXEC));
        ok(f && !f->exec->buffered && f->exec->initial_credit == 12345 && !f->exec->stdin && f->exec->tty &&
           f->exec->tty_width == 100 && f->exec->tty_height == 30,
           "streaming exec request: initial credit, tty and size, no stdin");
        free_frame(f);

        r = cws_exec_start(conn, "h-1", exit42, NULL, &x, &err);
        if (r == 0)
                r = cws_exec_wait(x, &code, &err);
        ok(r == 0 && code == 42, "wait without reading: exit code 42");
        cws_exec_free(x);
}

static void test_exec_cut(void) {
        const char *const cut[] = { "cut", NULL };
        const char *const fail[] = { "fail", NULL };
        const char *const drop[] = { "drop", NULL };
        char out[64], errbuf[64];
        cws_conn *c = connect_or_bail("cut");
        cws_exec *x = NULL;
        cws_error err;
        int r, code = -7;

        r = cws_exec_start(conn, "h-1", cut, NULL, &x, &err);
        if (r == 0)
                r = read_all(x, out, sizeof(out), errbuf, sizeof(errbuf), &err);
        ok(r != 0, "a stream that ends without an exit status: read fails (%s)", cws_strerror(r));
        is_str(out, "partial\n", "the output before the cut was delivered");
        r = cws_exec_wait(x, &code, &err);
        ok(r != 0 && code == -7, "and wait fails, never exit 0: %s", err.message);
        cws_exec_free(x);

        r = cws_exec_start(conn, "h-1", fail, NULL, &x, &err);
        if (r == 0)
                r = cws_exec_wait(x, &code, &err);
        is_int(r, CWS_DATA_LOSS, "a stream ended by an error: its code");
        is_str(err.reason, "STREAM_TRUNCATED", "and its reason");
        cws_exec_free(x);

        /* A connection of its own: the fake closes it. */
        r = cws_exec_start(c, "h-1", drop, NULL, &x, &err);
        if (r == 0)
                r = read_all(x, out, sizeof(out), errbuf, sizeof(errbuf), &err);
        is_int(r, CWS_UNAVAILABLE, "the connection lost mid-stream: UNAVAILABLE");
        is_str(out, "partial\n", "the output before the loss was delivered");
        code = -7;
        r = cws_exec_wait(x, &code, &err);
        ok(r == CWS_UNAVAILABLE && code == -7, "wait after the loss: UNAVAILABLE, no exit code");
        cws_exec_free(x);
        cws_conn_close(c);
}

typedef struct StdinWriter {
        cws_exec *x;
        const uint8_t *data;
        size_t len;
        int r;
} StdinWriter;

/* Writes stdin in pieces from a second thread while the first reads. */
static void *stdin_writer(void *userdata) {
        StdinWriter *w = userdata;
        cws_error err;
        size_t off = 0, n;

        while (off < w->len && w->r == 0) {
                n = w->len - off < 100000 ? w->len - off : 100000;
                w->r = cws_exec_write(w->x, w->data + off, n, &err);
                off += n;
        }
        if (w->r == 0)
                w->r = cws_exec_resize(w->x, 80, 24, &err);
        if (w->r == 0)
                w->r = cws_exec_close_stdin(w->x, &err);
        return NULL;
}

static void test_exec_stdin(void) {
        const char *const cat[] = { "cat", NULL };
        const cws_exec_options o = { .with_stdin = true, .window_bytes = 64 * 1024 };
        const size_t len = 3 * 1024 * 1024 + 17;
        _cleanup_free_ uint8_t *input = malloc(len), *got = malloc(len + 1);
        StdinWriter w = { .len = len };
        char errbuf[64] = "";
        size_t n_got = 0, n_err = 0, n;
        cws_stream stream;
        pthread_t thread;
        cws_exec *x = NULL;
        ClientFrame *f;
        uint8_t buf[7000];
        cws_error err;
        int r, code = -1;

        if (!input || !got)
                bail_out("out of memory");
        for (size_t i = 0; i < len; i++)
                input[i] = (uint8_t)(i * 7 + i / 4096);
        r = cws_exec_start(conn, "h-1", cat, &o, &x, &err);
        if (r != 0) {
                cu_diag_err("exec cat", r, &err);
                ok(false, "stdin exec: started");
                return;
        }
        w.x = x;
        w.data = input;
        if (pthread_create(&thread, NULL, stdin_writer, &w) != 0)
                bail_out("pthread_create");
        while ((r = cws_exec_read(x, buf, sizeof(buf), LIMIT_MS, &stream, &n, &err)) == 0 && n > 0) {
                if (stream == CWS_STREAM_STDOUT && n_got + n <= len) {
                        memcpy(got + n_got, buf, n);
                        n_got += n;
                } else if (stream == CWS_STREAM_STDERR && n_err + n < sizeof(errbuf)) {
                        memcpy(errbuf + n_err, buf, n);
                        n_err += n;
                }
        }
        pthread_join(thread, NULL);
        is_int(w.r, 0, "stdin exec: the writer thread wrote, resized and closed stdin");
        is_int(r, 0, "stdin exec: output read to its end while another thread wrote");
        ok(n_got == len && memcmp(got, input, len) == 0, "stdin exec: 3 MiB came back byte for byte (%zu bytes)",
           n_got);
        is_str(errbuf, "resize 80x24\n", "stdin exec: the resize arrived after the data");
        r = cws_exec_wait(x, &code, &err);
        ok(r == 0 && code == 0, "stdin exec: exit 0 after the end of stdin");
        r = cws_exec_write(x, "late", 4, &err);
        ok(r != 0, "stdin exec: a write after the end fails (%s)", cws_strerror(r));
        cws_exec_free(x);
        f = fake_daemon_last(fake, BODY(EXEC));
        ok(f && f->exec->stdin, "stdin exec request: stdin announced");
        free_frame(f);
}

static void test_exec_cancel(void) {
        const char *const hang[] = { "hang", NULL };
        uint64_t hanging = fake_daemon_count(fake, FAKE_HANGING);
        uint64_t cancels = fake_daemon_count(fake, FAKE_CANCELS);
        cws_exec *x = NULL;
        cws_stream stream;
        size_t n = 99;
        char buf[8];
        cws_error err;
        int r, code = -7;

        r = cws_exec_start(conn, "h-1", hang, NULL, &x, &err);
        ok(r == 0 && fake_daemon_wait(fake, FAKE_HANGING, hanging + 1, LIMIT_MS), "hanging exec: running");
        r = cws_exec_read(x, buf, sizeof(buf), 0, &stream, &n, &err);
        ok(r == CWS_DEADLINE_EXCEEDED && n == 99, "read with timeout 0 and no output: DEADLINE_EXCEEDED");
        is_int(cws_exec_cancel(x, &err), 0, "cancel");
        r = cws_exec_wait(x, &code, &err);
        ok(r == CWS_CANCELLED && code == -7, "a cancelled exec ends CANCELLED");
        ok(fake_daemon_count(fake, FAKE_CANCELS) == cancels + 1, "the daemon got one Cancel");
        is_int(cws_exec_cancel(x, &err), 0, "cancel after the end: nothing to do");
        cws_exec_free(x);

        /* Freeing a running exec cancels it. */
        r = cws_exec_start(conn, "h-1", hang, NULL, &x, &err);
        ok(r == 0 && fake_daemon_wait(fake, FAKE_HANGING, hanging + 2, LIMIT_MS), "second hanging exec: running");
        cws_exec_free(x);
        ok(fake_daemon_wait(fake, FAKE_CANCELS, cancels + 2, LIMIT_MS), "freeing a running exec cancels it");
}

static void test_flow_control(void) {
        const char *const flood[] = { "flood", "4194304", NULL };
        const char *const flood1[] = { "flood", "1048576", NULL };
        const uint32_t window = 64 * 1024;
        const cws_exec_options o = { .window_bytes = window };
        uint64_t base = fake_daemon_count(fake, FAKE_CREDIT_BYTES), granted;
        uint64_t total = 0;
        bool pattern_ok = true;
        cws_exec *x = NULL;
        uint8_t buf[10000];
        size_t n;
        cws_error err;
        int r, code = -1;

        r = cws_exec_start(conn, "h-1", flood, &o, &x, &err);
        if (r != 0) {
                ok(false, "flood: started");
                return;
        }
        while (total < 100 * 1024 && (r = cws_exec_read(x, buf, MIN(sizeof(buf), 100 * 1024 - total), LIMIT_MS,
                                                          NULL, &n, &err)) == 0 && n > 0)
                total += n;
        granted = fake_daemon_count(fake, FAKE_CREDIT_BYTES) - base;
        ok(r == 0 && total == 100 * 1024, "flood: 100 KiB read");
        ok(granted <= total, "credit granted (%" PRIu64 ") never exceeds what was consumed", granted);
        ok(granted > 0, "credit was granted as data was consumed");
        while ((r = cws_exec_read(x, buf, sizeof(buf), LIMIT_MS, NULL, &n, &err)) == 0 && n > 0) {
                for (size_t i = 0; i < n && pattern_ok; i++)
                        pattern_ok = buf[i] == (uint8_t)((total + i) % 251);
                total += n;
        }
        is_int(total, 4194304, "flood: all 4 MiB through a 64 KiB window");
        ok(pattern_ok, "flood: the bytes came in order");
        r = cws_exec_wait(x, &code, &err);
        ok(r == 0 && code == 0, "flood: exit 0");
        granted = fake_daemon_count(fake, FAKE_CREDIT_BYTES) - base;
        ok(granted >= total - window && granted <= total, "credit granted covers the stream (%" PRIu64 ")", granted);
        cws_exec_free(x);

        /* Output nobody reads is dropped and credited, so the command can finish. */
        r = cws_exec_start(conn, "h-1", flood1, &o, &x, &err);
        if (r == 0)
                r = cws_exec_wait(x, &code, &err);
        ok(r == 0 && code == 0, "flood not read: wait still gets the exit code");
        cws_exec_free(x);
}

/* ---- files -------------------------------------------------------------------------------- */

typedef struct Collect {
        const uint8_t *want;
        size_t off;
        bool same;
        unsigned calls, stop_after;     /* 0 = never stop */
} Collect;

static int collect(const void *data, size_t len, void *userdata) {
        Collect *k = userdata;

        k->same = k->same && memcmp(data, k->want + k->off, len) == 0;
        k->off += len;
        k->calls++;
        return k->stop_after && k->calls >= k->stop_after ? 7 : 0;
}

static void test_files(void) {
        const size_t big = 12 * 1024 * 1024 + 3;
        _cleanup_free_ uint8_t *data = malloc(big);
        _cleanup_free_ uint8_t *huge = calloc(1, FAKE_FILE_MAX + 1);
        uint64_t base = fake_daemon_count(fake, FAKE_CREDIT_BYTES), fd_len = 0;
        char tmpl[] = "/tmp/cws-fake-file-XXXXXX";
        void *got = NULL;
        size_t len = 0;
        cws_error err;
        ssize_t n;
        int r, fd;

        if (!data || !huge)
                bail_out("out of memory");
        r = cws_read_file(conn, "h-1", "/etc/hostname", &got, &len, &err);
        ok(r == 0 && len == 5 && strcmp(got, "fake\n") == 0, "read a small file, NUL-terminated");
        free(got);
        got = NULL;

        for (size_t i = 0; i < big; i++)
                data[i] = (uint8_t)(i ^ (i >> 9));
        r = cws_write_file(conn, "h-1", "/big", data, big, &err);
        if (r != 0)
                cu_diag_err("write", r, &err);
        is_int(r, 0, "write 12 MiB in chunks");
        r = cws_read_file(conn, "h-1", "/big", &got, &len, &err);
        if (r != 0)
                cu_diag_err("read", r, &err);
        ok(r == 0 && len == big && memcmp(got, data, big) == 0, "read it back byte for byte");
        ok(fake_daemon_count(fake, FAKE_CREDIT_BYTES) - base >= big - FAKE_READ_CREDIT,
           "the read granted credit beyond the initial 4 MiB");
        free(got);
        got = NULL;

        fd = mkstemp(tmpl);
        if (fd < 0)
                bail_out("mkstemp: %s", strerror(errno));
        (void)unlink(tmpl);
        r = cws_read_file_to_fd(conn, "h-1", "/big", fd, &fd_len, &err);
        ok(r == 0 && fd_len == big, "read to a file descriptor: %" PRIu64 " bytes", fd_len);
        n = pread(fd, huge, big, 0);
        ok(n == (ssize_t)big && memcmp(huge, data, big) == 0, "the descriptor got the same bytes");
        (void)lseek(fd, 0, SEEK_SET);
        r = cws_write_file_from_fd(conn, "h-1", "/copy", fd, &err);
        is_int(r, 0, "write from a file descriptor");
        r = cws_read_file(conn, "h-1", "/copy", &got, &len, &err);
        ok(r == 0 && len == big && memcmp(got, data, big) == 0, "the copy is identical");
        free(got);
        got = NULL;
        close(fd);

        {
                Collect k = { .want = data, .same = true };
                uint64_t cancels = fake_daemon_count(fake, FAKE_CANCELS), cb_len = 0;

                r = cws_read_file_cb(conn, "h-1", "/big", collect, &k, &cb_len, &err);
                ok(r == 0 && cb_len == big && k.off == big && k.same && k.calls > 1,
                   "read through a callback: %u pieces, in order", k.calls);
                k = (Collect) { .want = data, .same = true, .stop_after = 1 };
                r = cws_read_file_cb(conn, "h-1", "/big", collect, &k, NULL, &err);
                ok(r == CWS_CANCELLED && k.calls == 1, "a callback that returns non-zero stops the read: CANCELLED");
                ok(fake_daemon_wait(fake, FAKE_CANCELS, cancels + 1, LIMIT_MS), "and the daemon is told to stop");
        }

        r = cws_write_file(conn, "h-1", "/empty", NULL, 0, &err);
        is_int(r, 0, "write an empty file");
        r = cws_read_file(conn, "h-1", "/empty", &got, &len, &err);
        ok(r == 0 && len == 0 && got && ((char *)got)[0] == 0, "read an empty file: an empty string");
        free(got);
        got = NULL;

        r = cws_read_file(conn, "h-1", "/nope", &got, &len, &err);
        ok(r == CWS_NOT_FOUND && got == NULL, "read a missing file: NOT_FOUND, nothing handed out");
        r = cws_write_file(conn, "h-1", "/huge", huge, FAKE_FILE_MAX + 1, &err);
        is_int(r, CWS_RESOURCE_EXHAUSTED, "write above the daemon's limit: its refusal");
        is_str(err.reason, "CWSANDBOX_FILE_TOO_LARGE", "refusal: reason");
        r = cws_read_file(conn, "h-1", "/etc/hostname", &got, &len, &err);
        ok(r == 0 && len == 5, "the connection still works after the refusal");
        free(got);
}

static void test_frame_limit(void) {
        const FakeDaemonOpts small = { .max_frame_bytes = 64 * 1024 };
        const size_t len = 1024 * 1024;
        _cleanup_free_ uint8_t *data = malloc(len), *blob = calloc(1, 100 * 1024);
        const cws_mounted_file mf = { .path = "/blob", .content = blob, .size = 100 * 1024 };
        const cws_sandbox_args args = { .mounted_files = &mf, .n_mounted_files = 1 };
        const cws_create_options o = { .args = &args };
        FakeDaemon *d = NULL;
        cws_sandbox *sb = NULL;
        cws_conn *c = NULL;
        void *got = NULL;
        size_t got_len = 0;
        cws_error err;
        int r;

        if (!data || !blob || fake_daemon_start(&small, &d) < 0)
                bail_out("cannot start a fake with a small frame limit");
        for (size_t i = 0; i < len; i++)
                data[i] = (uint8_t)(i % 13);
        r = cws_connect(fake_daemon_socket(d), NULL, &c, &err);
        if (r != 0)
                bail_out("connect: %s", err.message);
        is_int(cws_conn_hello(c)->max_frame_bytes, 64 * 1024, "hello: the daemon's frame limit");
        r = cws_write_file(c, "h-1", "/f", data, len, &err);
        is_int(r, 0, "a 1 MiB write under a 64 KiB frame limit");
        r = cws_read_file(c, "h-1", "/f", &got, &got_len, &err);
        ok(r == 0 && got_len == len && memcmp(got, data, len) == 0, "and it reads back");
        free(got);
        is_int(fake_daemon_count(d, FAKE_PROTOCOL_ERRORS), 0, "no frame exceeded the limit");
        r = cws_sandbox_create(c, "ses-x", &o, &sb, &err);
        is_int(r, CWS_INVALID_ARGUMENT, "a request larger than the frame limit: refused locally");
        ok(strstr(err.message, "limit") != NULL, "its message names the limit: %s", err.message);
        is_int(fake_daemon_count(d, FAKE_PROTOCOL_ERRORS), 0, "and never sent");
        r = cws_sandbox_create(c, "ses-x", NULL, &sb, &err);
        is_int(r, 0, "the connection still works");
        cws_sandbox_free(sb);
        cws_conn_close(c);
        fake_daemon_free(d);
}

/* ---- logs, status, metrics ---------------------------------------------------------------- */

static void test_logs(void) {
        const cws_logs_options tail = { .tail_lines = 2, .timestamps = true };
        const cws_logs_options follow = { .follow = true };
        uint64_t hanging = fake_daemon_count(fake, FAKE_HANGING);
        uint64_t cancels = fake_daemon_count(fake, FAKE_CANCELS);
        cws_log_line *line = NULL;
        cws_logs *l = NULL;
        char joined[128] = "";
        unsigned n = 0;
        ClientFrame *f;
        cws_error err;
        int r;

        r = cws_logs_open(conn, "h-1", NULL, &l, &err);
        while (r == 0 && (r = cws_logs_next(l, LIMIT_MS, &line, &err)) == 0 && line) {
                if (++n == 3)
                        ok(strcmp(line->data, "line 3") == 0 && line->len == 6 && line->time_ms == 3000,
                           "logs: the third line with its time");
                cws_log_line_free(line);
        }
        ok(r == 0 && n == 5, "logs: five lines, then the end");
        cws_logs_close(l);

        r = cws_logs_open(conn, "h-1", &tail, &l, &err);
        while (r == 0 && (r = cws_logs_next(l, LIMIT_MS, &line, &err)) == 0 && line) {
                strcat(joined, line->data);
                strcat(joined, "|");
                cws_log_line_free(line);
        }
        is_str(joined, "line 4|line 5|", "logs with tail 2");
        cws_logs_close(l);
        f = fake_daemon_last(fake, BODY(LOGS));
        ok(f && f->logs->tail_lines == 2 && f->logs->timestamps && !f->logs->follow, "logs request: tail, timestamps");
        free_frame(f);

        n = 0;
        r = cws_logs_open(conn, "h-1", &follow, &l, &err);
        while (r == 0 && n < 5 && (r = cws_logs_next(l, LIMIT_MS, &line, &err)) == 0 && line) {
                n++;
                cws_log_line_free(line);
        }
        ok(r == 0 && n == 5 && fake_daemon_wait(fake, FAKE_HANGING, hanging + 1, LIMIT_MS),
           "follow: five lines, then the call stays open");
        r = cws_logs_next(l, 0, &line, &err);
        is_int(r, CWS_DEADLINE_EXCEEDED, "follow: nothing more within the timeout");
        cws_logs_close(l);
        ok(fake_daemon_wait(fake, FAKE_CANCELS, cancels + 1, LIMIT_MS), "closing a follow cancels it");

        r = cws_logs_open(conn, "missing", NULL, &l, &err);
        if (r == 0)
                r = cws_logs_next(l, LIMIT_MS, &line, &err);
        is_int(r, CWS_NOT_FOUND, "logs of a missing sandbox: NOT_FOUND");
        cws_logs_close(l);
}

static void test_status_metrics(void) {
        cws_status *s = NULL;
        cws_metrics *m = NULL;
        cws_error err;
        int r;

        r = cws_get_status(conn, &s, &err);
        ok(r == 0, "status (after a stray frame for an unknown call)");
        if (r == 0) {
                is_str(s->daemon_version, "fake-1", "status: daemon version");
                is_int(s->uptime_ms, 1234, "status: uptime");
                ok(s->n_states == 2 && strcmp(s->states[0].state, "RUNNING") == 0 && s->states[0].count == 2,
                   "status: sandboxes by state");
                is_str(s->state_file_status, "none", "status: state file");
        }
        cws_status_free(s);

        r = cws_get_metrics(conn, NULL, false, true, &m, &err);
        ok(r == 0 && m->n_metrics == 2 && strcmp(m->metrics[1].name, "exec_seconds_sum") == 0 &&
           m->metrics[1].value == 0.5, "metrics: values");
        ok(r == 0 && strstr(m->prometheus_text, "sandboxes_created_total 3"), "metrics: prometheus text");
        cws_metrics_free(m);
}

/* ---- many threads on one connection ------------------------------------------------------- */

static void *worker(void *userdata) {
        long t = (long)userdata, bad = 0;
        cws_error err;

        for (int i = 0; i < N_ROUNDS; i++) {
                char word[32], want[40], out[64], errbuf[64];
                const char *const argv[] = { "echo", word, NULL };
                cws_exec_result *res = NULL;
                cws_sandbox *sb = NULL;
                cws_exec *x = NULL;
                int code = -1;

                (void)snprintf(word, sizeof(word), "t%ld-%d", t, i);
                (void)snprintf(want, sizeof(want), "%s\n", word);
                if (cws_exec_run(conn, "h-1", argv, NULL, &res, &err) != 0 || strcmp(res->stdout_data, want) != 0)
                        bad++;
                cws_exec_result_free(res);
                if (cws_exec_start(conn, "h-1", argv, NULL, &x, &err) != 0 ||
                    read_all(x, out, sizeof(out), errbuf, sizeof(errbuf), &err) != 0 ||
                    cws_exec_wait(x, &code, &err) != 0 || code != 0 || strcmp(out, want) != 0)
                        bad++;
                cws_exec_free(x);
                if (cws_sandbox_get(conn, word, false, &sb, &err) != 0 || strcmp(sb->sandbox_id, word) != 0)
                        bad++;
                cws_sandbox_free(sb);
        }
        return (void *)bad;
}

static void test_threads(void) {
        pthread_t threads[N_THREADS];
        void *bad;

        for (long t = 0; t < N_THREADS; t++)
                if (pthread_create(&threads[t], NULL, worker, (void *)t) != 0)
                        bail_out("pthread_create");
        for (long t = 0; t < N_THREADS; t++) {
                pthread_join(threads[t], &bad);
                is_int((long)bad, 0, "thread %ld: %d buffered, streamed and unary calls each got their own reply",
                       t, N_ROUNDS);
        }
}

/* ---- connection loss ---------------------------------------------------------------------- */

typedef struct Waiter {
        cws_conn *c;
        int r;
        cws_error err;
} Waiter;

static void *wait_forever(void *userdata) {
        Waiter *w = userdata;
        cws_sandbox *sb = NULL;

        w->r = cws_sandbox_wait(w->c, "never", false, 0, &sb, &w->err);
        cws_sandbox_free(sb);
        return NULL;
}

static void *read_forever(void *userdata) {
        const char *const hang[] = { "hang", NULL };
        Waiter *w = userdata;
        cws_exec *x = NULL;
        size_t n;
        char buf[8];

        w->r = cws_exec_start(w->c, "h-1", hang, NULL, &x, &w->err);
        if (w->r == 0)
                w->r = cws_exec_read(x, buf, sizeof(buf), -1, NULL, &n, &w->err);
        cws_exec_free(x);
        return NULL;
}

/* Start @n waiters on @c (the last one a streaming exec) and wait until the fake holds them all. */
static void start_waiters(cws_conn *c, Waiter *w, pthread_t *threads, size_t n) {
        uint64_t hanging = fake_daemon_count(fake, FAKE_HANGING);

        for (size_t i = 0; i < n; i++) {
                w[i] = (Waiter) { .c = c, .r = -1 };
                if (pthread_create(&threads[i], NULL, i + 1 == n ? read_forever : wait_forever, &w[i]) != 0)
                        bail_out("pthread_create");
        }
        if (!fake_daemon_wait(fake, FAKE_HANGING, hanging + n, LIMIT_MS))
                bail_out("the waiters never reached the fake");
}

static void test_drop_wakes_waiters(void) {
        cws_conn *c = connect_or_bail("drop");
        uint64_t base = cws_conn_reconnects(c), shared = cws_conn_reconnects(conn);
        Waiter w[N_THREADS + 1];
        pthread_t threads[N_THREADS + 1];
        cws_status *s = NULL;
        unsigned waits, execs;
        cws_error err;
        bool all = true;
        int r;

        is_int(base, 0, "a new connection has not reconnected yet");
        start_waiters(c, w, threads, ELEMENTSOF(w));
        waits = fake_daemon_requests(fake, BODY(WAIT_SANDBOX));
        execs = fake_daemon_requests(fake, BODY(EXEC));
        fake_daemon_drop(fake);
        for (size_t i = 0; i < ELEMENTSOF(w); i++) {
                pthread_join(threads[i], NULL);
                all = all && w[i].r == CWS_UNAVAILABLE && w[i].err.code == CWS_UNAVAILABLE;
        }
        ok(all, "daemon gone: %zu blocked calls (one a stream) woke with UNAVAILABLE", ELEMENTSOF(w));
        ok(strstr(w[0].err.message, "lost") != NULL, "the message says the connection was lost: %s",
           w[0].err.message);
        r = cws_get_status(c, &s, &err);
        if (r != 0)
                cu_diag_err("status after the drop", r, &err);
        is_int(r, 0, "a new call after the drop waits for the reconnect and succeeds");
        cws_status_free(s);
        ok(cws_conn_reconnects(c) > base, "the connection reconnected (%" PRIu64 " times)", cws_conn_reconnects(c));
        ok(fake_daemon_requests(fake, BODY(WAIT_SANDBOX)) == waits && fake_daemon_requests(fake, BODY(EXEC)) == execs,
           "the lost calls were not sent again");

        /* The shared connection was dropped too, and came back by itself. */
        s = NULL;
        r = cws_get_status(conn, &s, &err);
        ok(r == 0 && cws_conn_reconnects(conn) > shared, "the shared connection works again without a new connect");
        cws_status_free(s);
        cws_conn_close(c);
}

static void test_close_while_running(void) {
        const char *const hang[] = { "hang", NULL };
        uint64_t hanging = fake_daemon_count(fake, FAKE_HANGING);
        cws_conn *c = connect_or_bail("close");
        Waiter w[N_THREADS + 1];
        pthread_t threads[N_THREADS + 1];
        cws_exec *x = NULL;
        cws_error err;
        bool all = true;
        size_t n;
        char buf[8];
        int r;

        r = cws_exec_start(c, "h-1", hang, NULL, &x, &err);
        ok(r == 0 && fake_daemon_wait(fake, FAKE_HANGING, hanging + 1, LIMIT_MS), "an exec held across the close");
        start_waiters(c, w, threads, ELEMENTSOF(w));
        cws_conn_close(c);
        for (size_t i = 0; i < ELEMENTSOF(w); i++) {
                pthread_join(threads[i], NULL);
                all = all && w[i].r == CWS_UNAVAILABLE;
        }
        ok(all, "cws_conn_close() woke %zu blocked calls with UNAVAILABLE", ELEMENTSOF(w));
        r = cws_exec_read(x, buf, sizeof(buf), -1, NULL, &n, &err);
        is_int(r, CWS_UNAVAILABLE, "an exec outliving its connection: UNAVAILABLE");
        is_int(cws_exec_write(x, "x", 1, &err), CWS_UNAVAILABLE, "and its writes too");
        cws_exec_free(x);
}

static void test_no_sigpipe(void) {
        const size_t len = 4 * 1024 * 1024;
        _cleanup_free_ uint8_t *data = calloc(1, len);
        cws_conn *c = connect_or_bail("sigpipe");
        cws_error err;
        int r;

        if (!data)
                bail_out("out of memory");
        /* SIGPIPE at its default action: a write without MSG_NOSIGNAL would end the test here. */
        signal(SIGPIPE, SIG_DFL);
        fake_daemon_shut_read(fake);
        r = cws_write_file(c, "h-1", "/x", data, len, &err);
        is_int(r, CWS_UNAVAILABLE, "writing to a daemon that stopped reading: UNAVAILABLE, no SIGPIPE");
        fake_daemon_drop(fake);
        cws_conn_close(c);
        cws_conn_close(conn);
        conn = connect_or_bail("test-client-fake-3");
        r = cws_detach(conn, "ses-train", &err);
        is_int(r, 0, "a new connection works afterwards");
}

/* ---- reconnect ---------------------------------------------------------------------------- */

/* Wait until @c has reconnected @n times in all. */
static bool wait_reconnects(cws_conn *c, uint64_t n) {
        for (int i = 0; i < LIMIT_MS / 10 && cws_conn_reconnects(c) < n; i++)
                usleep(10 * 1000);
        return cws_conn_reconnects(c) >= n;
}

/*
 * Wait until @c knows its daemon is gone: a call that may not wait fails
 * as "not reconnected" rather than as lost on the old socket. Leaves the
 * wait bound at @wait_ms.
 */
static bool wait_down(cws_conn *c, int wait_ms) {
        cws_status *s = NULL;
        cws_error err = {};
        bool down = false;

        cws_conn_set_reconnect(c, true, 0);
        for (int i = 0; i < LIMIT_MS / 10 && !down; i++) {
                if (cws_get_status(c, &s, &err) == CWS_UNAVAILABLE && strstr(err.message, "not reconnected"))
                        down = true;
                else
                        usleep(10 * 1000);
                cws_status_free(TAKE_PTR(s));
        }
        cws_conn_set_reconnect(c, true, wait_ms);
        return down;
}

/* The AttachSession requests the fake received from number @from on, counted by session name. */
static unsigned attaches_named(unsigned from, const char *name, ClientFrame **ret_last) {
        unsigned n = 0, total = fake_daemon_requests(fake, BODY(ATTACH_SESSION));
        ClientFrame *f;

        for (unsigned i = from; i < total; i++) {
                f = fake_daemon_nth(fake, BODY(ATTACH_SESSION), i);
                if (f && strcmp(f->attach_session->name, name) == 0) {
                        n++;
                        if (ret_last) {
                                free_frame(*ret_last);
                                *ret_last = TAKE_PTR(f);
                        }
                }
                free_frame(f);
        }
        return n;
}

static void test_reattach(void) {
        static const char *const tags[] = { "keep" };
        static const cws_kv env[] = { { "E", "1" } };
        const cws_sandbox_defaults defs = { .container_image = "img:1", .tags = tags, .n_tags = 1,
                                            .env = env, .n_env = 1 };
        const cws_attach_options o = { .defaults = &defs, .has_linger = true, .linger_seconds = 77,
                                       .max_lifetime_seconds = 600 };
        const char *const names[] = { "ra-keep", "ra-plain", "ra-gone", "ra-closed" };
        cws_conn *c = connect_or_bail("reattach");
        cws_session *s[ELEMENTSOF(names)] = {};
        const Cwsandboxd__V1__SandboxDefaults *pd;
        ClientFrame *keep = NULL, *plain = NULL, *f;
        unsigned from, hellos;
        bool said_hello = false;
        uint64_t base;
        cws_error err;
        int r = 0;

        for (size_t i = 0; i < ELEMENTSOF(names) && r == 0; i++)
                r = cws_attach(c, names[i], i == 0 ? &o : NULL, &s[i], &err);
        if (r == 0)
                r = cws_detach(c, s[2]->session_id, &err);
        if (r == 0)
                r = cws_close_session(c, s[3]->session_id, NULL, &err);
        if (r != 0) {
                cu_diag_err("attach, detach, close", r, &err);
                bail_out("cannot set the sessions up");
        }
        from = fake_daemon_requests(fake, BODY(ATTACH_SESSION));
        hellos = fake_daemon_requests(fake, BODY(HELLO));
        base = cws_conn_reconnects(c);

        fake_daemon_drop(fake);
        ok(wait_reconnects(c, base + 1), "dropped: the connection came back by itself");
        for (unsigned i = hellos; i < fake_daemon_requests(fake, BODY(HELLO)) && !said_hello; i++) {
                f = fake_daemon_nth(fake, BODY(HELLO), i);
                said_hello = f && strcmp(f->hello->client_name, "reattach") == 0 && f->hello->pid == getpid();
                free_frame(f);
        }
        ok(said_hello, "it said Hello again, with its client name");
        is_int(attaches_named(from, "ra-keep", &keep), 1, "the session attached with options was attached again");
        is_int(attaches_named(from, "ra-plain", &plain), 1, "the session attached without options too");
        is_int(attaches_named(from, "ra-gone", NULL) + attaches_named(from, "ra-closed", NULL), 0,
               "the detached and the closed session were not");
        pd = keep ? keep->attach_session->defaults : NULL;
        ok(keep && keep->attach_session->has_linger && keep->attach_session->linger_seconds == 77 &&
           keep->attach_session->max_lifetime_seconds == 600, "the re-attach has the same linger and lifetime cap");
        ok(pd && strcmp(pd->container_image, "img:1") == 0 && pd->n_tags == 1 && strcmp(pd->tags[0], "keep") == 0 &&
           pd->n_environment_variables == 1 && strcmp(pd->environment_variables[0]->value, "1") == 0,
           "and the same defaults");
        ok(plain && !plain->attach_session->defaults && !plain->attach_session->has_linger,
           "the plain one is plain again");
        free_frame(keep);
        free_frame(plain);

        /* Detached after the reconnect: not attached at the next one. */
        is_int(cws_detach(c, s[1]->session_id, &err), 0, "detach after the reconnect");
        from = fake_daemon_requests(fake, BODY(ATTACH_SESSION));
        base = cws_conn_reconnects(c);
        fake_daemon_drop(fake);
        ok(wait_reconnects(c, base + 1), "dropped again: back again");
        ok(attaches_named(from, "ra-keep", NULL) == 1 && attaches_named(from, "ra-plain", NULL) == 0,
           "only the session still attached was attached again");

        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                cws_session_free(s[i]);
        cws_conn_close(c);
}

/* The daemon comes back without its state: the session gets a new id, the old one keeps working. */
static void test_remap(void) {
        const cws_list_options lo = { .session_id = "ses-rm" };
        cws_conn *c = connect_or_bail("remap");
        cws_session *s = NULL;
        cws_session_list *sl = NULL;
        cws_sandbox_list *l = NULL;
        cws_metrics *m = NULL;
        cws_sandbox *sb = NULL;
        ClientFrame *f = NULL;
        unsigned from;
        uint64_t base;
        cws_error err;
        int r;

        r = cws_attach(c, "rm", NULL, &s, &err);
        if (r != 0 || strcmp(s->session_id, "ses-rm") != 0)
                bail_out("attach rm: %d", r);
        from = fake_daemon_requests(fake, BODY(ATTACH_SESSION));
        base = cws_conn_reconnects(c);
        fake_daemon_down(fake);
        ok(fake_daemon_up(fake, true) == 0, "the fake restarted without its state");
        ok(wait_reconnects(c, base + 1), "the connection came back");
        ok(attaches_named(from, "rm", &f) == 1 && f, "the session was attached again by name");
        free_frame(TAKE_PTR(f));

        r = cws_sandbox_create(c, s->session_id, NULL, &sb, &err);
        if (r != 0)
                cu_diag_err("create with the old id", r, &err);
        ok(r == 0 && strcmp(sb->session_id, "ses-1-rm") == 0,
           "a create with the old session id reaches the session under its new id");
        cws_sandbox_free(sb);
        f = fake_daemon_last(fake, BODY(CREATE_SANDBOX));
        ok(f && strcmp(f->create_sandbox->session_id, "ses-1-rm") == 0, "on the wire it carries the new id");
        free_frame(f);

        r = cws_list_sandboxes(c, &lo, &l, &err);
        cws_sandbox_list_free(l);
        f = fake_daemon_last(fake, BODY(LIST_SANDBOXES));
        ok(r == 0 && f && strcmp(f->list_sandboxes->session_id, "ses-1-rm") == 0, "list: the new id");
        free_frame(f);
        r = cws_get_metrics(c, s->session_id, false, false, &m, &err);
        cws_metrics_free(m);
        f = fake_daemon_last(fake, BODY(METRICS));
        ok(r == 0 && f && strcmp(f->metrics->session_id, "ses-1-rm") == 0, "metrics: the new id");
        free_frame(f);
        r = cws_sandbox_from_id(c, s->session_id, "sb-9", true, &sb, &err);
        cws_sandbox_free(sb);
        f = fake_daemon_last(fake, BODY(ADOPT_SANDBOX));
        ok(r == 0 && f && strcmp(f->adopt_sandbox->session_id, "ses-1-rm") == 0, "adopt: the new id");
        free_frame(f);
        is_int(cws_detach(c, "ses-other", &err), CWS_NOT_FOUND, "an id never mapped goes out as given");
        f = fake_daemon_last(fake, BODY(DETACH_SESSION));
        ok(f && strcmp(f->detach_session->session_id, "ses-other") == 0, "(on the wire too)");
        free_frame(f);
        r = cws_close_session(c, s->session_id, NULL, &err);
        f = fake_daemon_last(fake, BODY(CLOSE_SESSION));
        ok(r == 0 && f && strcmp(f->close_session->session_id, "ses-1-rm") == 0, "close: the new id");
        free_frame(f);
        r = cws_list_sessions(c, &sl, &err);
        ok(r == 0 && sl->n_sessions >= 1, "list sessions after the remap");
        cws_session_list_free(sl);

        /* Closed: not attached again at the next reconnect. */
        from = fake_daemon_requests(fake, BODY(ATTACH_SESSION));
        base = cws_conn_reconnects(c);
        fake_daemon_drop(fake);
        ok(wait_reconnects(c, base + 1) && attaches_named(from, "rm", NULL) == 0,
           "the closed session is not attached at the next reconnect");
        cws_session_free(s);
        cws_conn_close(c);
}

static void *status_call(void *userdata) {
        Waiter *w = userdata;
        cws_status *s = NULL;

        w->r = cws_get_status(w->c, &s, &w->err);
        cws_status_free(s);
        return NULL;
}

static void test_wait_while_down(void) {
        cws_conn *c = connect_or_bail("wait-down");
        Waiter w = { .c = c, .r = -1 };
        cws_status *s = NULL;
        uint64_t base = cws_conn_reconnects(c);
        pthread_t t;
        cws_error err;
        int r;

        fake_daemon_down(fake);
        ok(wait_down(c, LIMIT_MS), "the daemon is down and the connection knows it");
        if (pthread_create(&t, NULL, status_call, &w) != 0)
                bail_out("pthread_create");
        /* Let the call begin to wait first; the result does not depend on it. */
        usleep(200 * 1000);
        ok(fake_daemon_up(fake, false) == 0, "the daemon is back");
        pthread_join(t, NULL);
        if (w.r != 0)
                cu_diag_err("the waiting call", w.r, &w.err);
        is_int(w.r, 0, "a call started while the daemon was down waited and succeeded");
        ok(cws_conn_reconnects(c) > base, "through the reconnected connection");

        /* Kept down: a call gives up after the bound. */
        fake_daemon_down(fake);
        ok(wait_down(c, 100), "down again, with a wait bound of 100 ms");
        r = cws_get_status(c, &s, &err);
        is_int(r, CWS_UNAVAILABLE, "a call fails UNAVAILABLE after the bound");
        ok(strstr(err.message, "not reconnected within 100 ms") != NULL, "and says why: %s", err.message);
        ok(fake_daemon_up(fake, false) == 0, "the daemon is back");
        cws_conn_set_reconnect(c, true, -1);
        r = cws_get_status(c, &s, &err);
        is_int(r, 0, "the same connection works again");
        cws_status_free(s);
        cws_conn_close(c);
}

static void test_close_while_reconnecting(void) {
        const char *const hang[] = { "hang", NULL };
        cws_conn *c = connect_or_bail("close-down");
        Waiter w = { .c = c, .r = -1 };
        cws_exec *x = NULL;
        pthread_t t;
        cws_error err;

        /* The exec keeps the connection's memory until it is freed, whatever the order below. */
        if (cws_exec_start(c, "h-1", hang, NULL, &x, &err) != 0)
                bail_out("exec: %s", err.message);
        fake_daemon_down(fake);
        ok(wait_down(c, LIMIT_MS), "the daemon is down; calls wait up to %d ms", LIMIT_MS);
        if (pthread_create(&t, NULL, status_call, &w) != 0)
                bail_out("pthread_create");
        usleep(200 * 1000);
        cws_conn_close(c);
        ok(true, "cws_conn_close() during the reconnect returned");
        pthread_join(t, NULL);
        is_int(w.r, CWS_UNAVAILABLE, "the waiting call woke with UNAVAILABLE");
        ok(strstr(w.err.message, "closed") != NULL, "because of the close: %s", w.err.message);
        cws_exec_free(x);
        ok(fake_daemon_up(fake, false) == 0, "the daemon is back");
}

static void test_reconnect_off(void) {
        cws_conn *c = connect_or_bail("off");
        cws_status *s = NULL;
        cws_error err;
        int r;

        cws_conn_set_reconnect(c, false, 0);
        fake_daemon_drop(fake);
        r = cws_get_status(c, &s, &err);
        is_int(r, CWS_UNAVAILABLE, "reconnect off: a call after the drop fails UNAVAILABLE");
        usleep(200 * 1000);
        r = cws_get_status(c, &s, &err);
        is_int(r, CWS_UNAVAILABLE, "and so does a later one");
        ok(strstr(err.message, "lost") != NULL, "the connection was lost: %s", err.message);
        is_int(cws_conn_reconnects(c), 0, "it never reconnected");
        cws_conn_close(c);
}

static void test_refused_reconnect(void) {
        FakeDaemon *d = NULL;
        cws_conn *c = NULL;
        cws_status *s = NULL;
        uint64_t conns;
        cws_error err = {};
        int r = CWS_OK;

        if (fake_daemon_start(NULL, &d) < 0 || cws_connect(fake_daemon_socket(d), NULL, &c, &err) != 0)
                bail_out("cannot start a fake for a refused reconnect");
        /* Short waits: a library that kept trying would make each call wait this long. */
        cws_conn_set_reconnect(c, true, 500);
        fake_daemon_refuse_hello(d, true);
        fake_daemon_drop(d);
        /* A call may still go out on the old socket and be lost; the refusal is what comes after. */
        for (int i = 0; i < 20; i++) {
                r = cws_get_status(c, &s, &err);
                cws_status_free(TAKE_PTR(s));
                if (r != CWS_UNAVAILABLE || strstr(err.message, "refused"))
                        break;
                usleep(10 * 1000);
        }
        is_int(r, CWS_UNAVAILABLE, "a Hello refused at a reconnect: calls fail UNAVAILABLE");
        ok(strstr(err.message, "refused") && strstr(err.message, "not supported"),
           "with the daemon's reason: %s", err.message);
        conns = fake_daemon_count(d, FAKE_CONNECTIONS);
        usleep(300 * 1000);
        is_int(fake_daemon_count(d, FAKE_CONNECTIONS), conns, "and it does not try again");
        is_int(cws_conn_reconnects(c), 0, "(no reconnect counted)");
        cws_conn_close(c);
        fake_daemon_free(d);
}

int main(void) {
        int r = fake_daemon_start(NULL, &fake);

        if (r < 0)
                bail_out("cannot start the fake daemon: %s", strerror(-r));
        test_connect();
        test_hello_refused();
        test_sessions();
        test_create();
        test_sandbox_calls();
        test_exec_buffered();
        test_exec_stream();
        test_exec_cut();
        test_exec_stdin();
        test_exec_cancel();
        test_flow_control();
        test_files();
        test_frame_limit();
        test_logs();
        test_status_metrics();
        test_threads();
        test_drop_wakes_waiters();
        test_close_while_running();
        test_no_sigpipe();
        test_reattach();
        test_remap();
        test_wait_while_down();
        test_close_while_reconnecting();
        test_reconnect_off();
        test_refused_reconnect();
        cws_conn_close(conn);
        fake_daemon_free(fake);
        return done();
}
