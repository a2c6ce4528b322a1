/*
 * libcwsandbox against a real cwsandboxd and its embedded backend: the
 * handshake, sessions, the sandbox life cycle, buffered and streaming exec,
 * one connection shared by many threads, files, logs, list and adopt, stop,
 * delete, session close, a daemon restarted under an idle connection (it
 * comes back by itself with its session attached), and a daemon that dies
 * under a waiting call.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client-util.h"
#include "cwsandbox.h"
#include "daemon-proc.h"
#include "test-util.h"

#define WAIT_MS         60000
#define N_THREADS       8
#define N_PER_THREAD    4
#define BLOB_SIZE       (3u * 1024 * 1024)

static DaemonProc *daemon_proc;
static cws_conn *conn;
static char *session_id;
static char *sandbox_id;

static cws_sandbox *start_sandbox(const cws_sandbox_args *args, const char *what) {
        cws_create_options o = { .args = args, .start = true };
        cws_sandbox *sb = NULL, *w = NULL;
        cws_error err;
        int r;

        r = cws_sandbox_create(conn, session_id, &o, &sb, &err);
        if (r == 0)
                r = cws_sandbox_wait(conn, sb->handle_id, false, WAIT_MS, &w, &err);
        if (r != 0)
                cu_diag_err(what, r, &err);
        ok(r == 0 && w->state == CWS_STATE_RUNNING, "%s: running", what);
        cws_sandbox_free(w);
        return sb;
}

/* ---- connect and sessions ---------------------------------------------------------------- */

static void test_connect(void) {
        const cws_hello *h;
        cws_conn *bad = NULL;
        cws_error err;
        int r;

        r = cws_connect(daemon_proc->socket_path, "test-client-lib", &conn, &err);
        if (r != 0) {
                cu_diag_err("connect", r, &err);
                bail_out("cannot connect to the daemon");
        }
        h = cws_conn_hello(conn);
        is_int(h->protocol_version, 1, "hello: protocol version 1");
        ok(h->daemon_version && *h->daemon_version, "hello: daemon version %s", h->daemon_version);
        ok(cws_conn_has_feature(conn, "exec-stream"), "hello: features include exec-stream");
        ok(!cws_conn_has_feature(conn, "no-such-feature"), "hello: an unknown feature is absent");

        r = cws_connect("/nonexistent/cwsandboxd.sock", NULL, &bad, &err);
        is_int(r, CWS_UNAVAILABLE, "connect to a missing socket: UNAVAILABLE");
        ok(strstr(err.message, "unreachable") != NULL, "connect error says unreachable: %s", err.message);
}

static void test_attach(void) {
        cws_session *a = NULL, *b = NULL;
        cws_conn *second = NULL;
        cws_error err;
        int r;

        r = cws_attach(conn, "client-lib", NULL, &a, &err);
        if (r != 0) {
                cu_diag_err("attach", r, &err);
                bail_out("attach failed");
        }
        ok(a->created, "attach: created the session");
        session_id = strdup(a->session_id);

        r = cws_connect(daemon_proc->socket_path, "test-client-lib-2", &second, &err);
        if (r == 0)
                r = cws_attach(second, "client-lib", NULL, &b, &err);
        if (r != 0)
                cu_diag_err("second attach", r, &err);
        ok(r == 0 && !b->created, "second attach: joined, not created");
        ok(r == 0 && streq(a->session_id, b->session_id), "second attach: same session id");
        if (r == 0)
                is_int(cws_detach(second, b->session_id, &err), 0, "detach");
        cws_session_free(b);
        cws_session_free(a);
        cws_conn_close(second);

        r = cws_attach(conn, "", NULL, &a, &err);
        is_int(r, CWS_INVALID_ARGUMENT, "attach without a name: INVALID_ARGUMENT");
}

/* ---- sandbox life cycle ------------------------------------------------------------------ */

static void test_create_start_wait(void) {
        cws_sandbox *sb = NULL, *started = NULL, *w = NULL, *g = NULL;
        cws_error err;
        int r;

        r = cws_sandbox_create(conn, session_id, NULL, &sb, &err);
        if (r != 0) {
                cu_diag_err("create", r, &err);
                bail_out("create failed");
        }
        is_int(sb->state, CWS_STATE_UNSTARTED, "create without start: UNSTARTED");
        ok(sb->handle_id[0] != 0, "create: a handle id");
        r = cws_sandbox_start(conn, sb->handle_id, &started, &err);
        if (r != 0)
                cu_diag_err("start", r, &err);
        ok(r == 0 && started->sandbox_id[0], "start: a backend id");
        r = cws_sandbox_wait(conn, sb->handle_id, false, WAIT_MS, &w, &err);
        if (r != 0)
                cu_diag_err("wait", r, &err);
        ok(r == 0 && w->state == CWS_STATE_RUNNING, "wait: RUNNING");
        r = cws_sandbox_get(conn, sb->handle_id, true, &g, &err);
        ok(r == 0 && g->state == CWS_STATE_RUNNING, "get with refresh: RUNNING");
        if (r == 0)
                sandbox_id = strdup(g->sandbox_id);
        else
                bail_out("no running sandbox");
        cws_sandbox_free(g);
        cws_sandbox_free(w);
        cws_sandbox_free(started);
        cws_sandbox_free(sb);
}

/* ---- exec -------------------------------------------------------------------------------- */

static void test_exec_buffered(void) {
        const char *const argv[] = { "/bin/sh", "-c", "echo out; echo err >&2; exit 3", NULL };
        const char *const empty[] = { NULL };
        cws_exec_result *res = NULL;
        cws_error err;
        int r;

        r = cws_exec_run(conn, sandbox_id, argv, NULL, &res, &err);
        if (r != 0)
                cu_diag_err("exec", r, &err);
        ok(r == 0, "buffered exec: success");
        if (r != 0)
                return;
        is_int(res->exit_code, 3, "buffered exec: exit code 3");
        is_str(res->stdout_data, "out\n", "buffered exec: stdout");
        is_str(res->stderr_data, "err\n", "buffered exec: stderr");
        cws_exec_result_free(res);

        r = cws_exec_run(conn, sandbox_id, empty, NULL, &res, &err);
        is_int(r, CWS_INVALID_ARGUMENT, "exec without a command: INVALID_ARGUMENT");
}

static void test_exec_stream(void) {
        const char *const argv[] = { "/bin/sh", "-c", "cat; echo done >&2; exit 7", NULL };
        const char *input = "hello over stdin\nsecond line\n";
        cws_exec_options o = { .with_stdin = true, .window_bytes = 64 * 1024 };
        char out[256] = "", errbuf[256] = "", buf[7];
        size_t n_out = 0, n_err = 0, n;
        cws_exec *x = NULL;
        cws_stream stream;
        cws_error err;
        int r, code = -1;

        r = cws_exec_start(conn, sandbox_id, argv, &o, &x, &err);
        if (r != 0) {
                cu_diag_err("exec start", r, &err);
                ok(false, "streaming exec: started");
                return;
        }
        r = cws_exec_write(x, input, strlen(input), &err);
        if (r == 0)
                r = cws_exec_close_stdin(x, &err);
        ok(r == 0, "streaming exec: stdin written and closed");
        /* A small buffer: chunks are read in pieces. */
        while ((r = cws_exec_read(x, buf, sizeof(buf), WAIT_MS, &stream, &n, &err)) == 0 && n > 0) {
                if (stream == CWS_STREAM_STDOUT && n_out + n < sizeof(out)) {
                        memcpy(out + n_out, buf, n);
                        n_out += n;
                } else if (stream == CWS_STREAM_STDERR && n_err + n < sizeof(errbuf)) {
                        memcpy(errbuf + n_err, buf, n);
                        n_err += n;
                }
        }
        if (r != 0)
                cu_diag_err("exec read", r, &err);
        ok(r == 0, "streaming exec: output read to its end");
        is_str(out, input, "streaming exec: stdin came back on stdout");
        is_str(errbuf, "done\n", "streaming exec: stderr tagged as stderr");
        r = cws_exec_wait(x, &code, &err);
        ok(r == 0 && code == 7, "streaming exec: exit code 7 (got %d, r %d)", code, r);
        cws_exec_free(x);
}

/* An exec whose output is not read: wait drops it and still gets the code. */
static void test_exec_wait_drops(void) {
        const char *const argv[] = { "/bin/sh", "-c", "head -c 3000000 /dev/zero; exit 4", NULL };
        cws_exec_options o = { .window_bytes = 128 * 1024 };
        cws_exec *x = NULL;
        cws_error err;
        int r, code = -1;

        r = cws_exec_start(conn, sandbox_id, argv, &o, &x, &err);
        if (r == 0)
                r = cws_exec_wait(x, &code, &err);
        if (r != 0)
                cu_diag_err("exec wait", r, &err);
        ok(r == 0 && code == 4, "exec wait past 3 MB of unread output: exit code 4");
        cws_exec_free(x);
}

static void test_exec_cancel(void) {
        const char *const argv[] = { "sleep", "1000", NULL };
        cws_exec *x = NULL;
        cws_error err;
        int r, code = -1;

        r = cws_exec_start(conn, sandbox_id, argv, NULL, &x, &err);
        if (r == 0)
                r = cws_exec_cancel(x, &err);
        if (r == 0)
                r = cws_exec_wait(x, &code, &err);
        is_int(r, CWS_CANCELLED, "cancelled exec: CANCELLED, not an exit code");
        cws_exec_free(x);
}

static atomic_int thread_failures;

static void *exec_thread(void *userdata) {
        int id = (int)(intptr_t)userdata;

        for (int i = 0; i < N_PER_THREAD; i++) {
                char script[128], want[64];
                const char *const argv[] = { "/bin/sh", "-c", script, NULL };
                cws_exec_result *res = NULL;
                cws_error err;
                int r;

                snprintf(script, sizeof(script), "echo thread-%d-%d; echo e%d >&2; exit %d", id, i, id, i + id);
                snprintf(want, sizeof(want), "thread-%d-%d\n", id, i);
                r = cws_exec_run(conn, sandbox_id, argv, NULL, &res, &err);
                if (r != 0 || !streq(res->stdout_data, want) || res->exit_code != i + id) {
                        diag("thread %d exec %d: r %d %s, stdout '%s', exit %d", id, i, r, err.message,
                             r == 0 ? res->stdout_data : "", r == 0 ? res->exit_code : -1);
                        atomic_fetch_add(&thread_failures, 1);
                }
                cws_exec_result_free(res);
        }
        return NULL;
}

static void test_threads(void) {
        pthread_t t[N_THREADS];

        for (int i = 0; i < N_THREADS; i++)
                if (pthread_create(&t[i], NULL, exec_thread, (void *)(intptr_t)i) != 0)
                        bail_out("pthread_create");
        for (int i = 0; i < N_THREADS; i++)
                pthread_join(t[i], NULL);
        is_int(atomic_load(&thread_failures), 0, "%d threads on one connection: every exec right",
               N_THREADS);
}

/* ---- files ------------------------------------------------------------------------------- */

static void test_files(void) {
        _cleanup_free_ uint8_t *blob = malloc(BLOB_SIZE);
        void *back = NULL;
        size_t len = 0;
        uint64_t fd_len = 0;
        uint32_t x = 2463534242u;
        cws_error err;
        FILE *f;
        int r;

        if (!blob)
                bail_out("out of memory");
        for (size_t i = 0; i < BLOB_SIZE; i++) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                blob[i] = (uint8_t)x;
        }
        r = cws_write_file(conn, sandbox_id, "/tmp/blob", blob, BLOB_SIZE, &err);
        if (r != 0)
                cu_diag_err("write file", r, &err);
        ok(r == 0, "write_file: 3 MiB");
        r = cws_read_file(conn, sandbox_id, "/tmp/blob", &back, &len, &err);
        if (r != 0)
                cu_diag_err("read file", r, &err);
        ok(r == 0 && len == BLOB_SIZE && memcmp(back, blob, BLOB_SIZE) == 0,
           "read_file: the same 3 MiB, byte for byte (%zu bytes)", len);
        free(back);

        f = tmpfile();
        r = f ? cws_read_file_to_fd(conn, sandbox_id, "/tmp/blob", fileno(f), &fd_len, &err) : -1;
        is_int(fd_len, BLOB_SIZE, "read_file_to_fd: every byte written to the fd");
        if (f) {
                rewind(f);
                r = cws_write_file_from_fd(conn, sandbox_id, "/tmp/blob2", fileno(f), &err);
                fclose(f);
        }
        ok(r == 0, "write_file_from_fd");
        r = cws_read_file(conn, sandbox_id, "/tmp/blob2", &back, &len, &err);
        ok(r == 0 && len == BLOB_SIZE && memcmp(back, blob, BLOB_SIZE) == 0, "write_file_from_fd: same content");
        free(back);

        r = cws_read_file(conn, sandbox_id, "/tmp/no-such-file", &back, &len, &err);
        ok(r != 0, "read_file of a missing file fails (%s: %s)", cws_strerror(r), err.message);
}

/* ---- logs -------------------------------------------------------------------------------- */

static int read_logs(const char *id, cws_logs_options *o, char lines[][32], int max) {
        cws_log_line *line = NULL;
        cws_logs *l = NULL;
        cws_error err;
        int n = 0, r;

        r = cws_logs_open(conn, id, o, &l, &err);
        while (r == 0 && (r = cws_logs_next(l, WAIT_MS, &line, &err)) == 0 && line) {
                if (n < max)
                        snprintf(lines[n], 32, "%s", test_chomp(line->data));
                n++;
                cws_log_line_free(line);
        }
        if (r != 0)
                cu_diag_err("logs", r, &err);
        cws_logs_close(l);
        return r == 0 ? n : -1;
}

static void test_logs(void) {
        const char *const args[] = { "-c", "echo one; echo two; echo three; trap 'exit 0' TERM; sleep infinity & wait",
                                     NULL };
        cws_sandbox_args a = { .command = "/bin/sh", .args = args, .n_args = 2, .has_args = true };
        cws_logs_options o = { .tail_lines = 2 };
        cws_sandbox *sb = start_sandbox(&a, "logs sandbox");
        char lines[8][32] = {};
        int n = -1;

        if (!sb)
                return;
        /* The sandbox runs before its first lines are written: look again for a while. */
        for (int i = 0; i < 100; i++) {
                memset(lines, 0, sizeof(lines));
                n = read_logs(sb->handle_id, &o, lines, 8);
                if (n < 0 || streq(lines[n > 0 ? n - 1 : 0], "three"))
                        break;
                test_sleep_ms(200);
        }
        is_int(n, 2, "logs tail 2: two lines");
        is_str(lines[0], "two", "logs tail: the second last line");
        is_str(lines[1], "three", "logs tail: the last line");
        cws_sandbox_free(sb);
}

/* ---- list, adopt, stop, delete ----------------------------------------------------------- */

static void test_list_stop_delete(void) {
        _cleanup_free_ char *marker = test_marker("clientlib");
        const char *tags[] = { marker };
        const char *other[] = { "no-such-tag-anywhere" };
        cws_sandbox_args a = { .tags = tags, .n_tags = 1 };
        cws_list_options lo = { .session_id = session_id, .tags = tags, .n_tags = 1, .adopt = true };
        cws_stop_options so = { .has_grace = true, .grace_seconds = 1 };
        cws_sandbox *sb = start_sandbox(&a, "tagged sandbox"), *found = NULL, *stopped = NULL;
        cws_sandbox_list *l = NULL;
        cws_error err;
        int r;

        if (!sb)
                return;
        r = cws_list_sandboxes(conn, &lo, &l, &err);
        if (r != 0)
                cu_diag_err("list", r, &err);
        ok(r == 0 && l->n_sandboxes == 1, "list by tag: one sandbox");
        if (r == 0 && l->n_sandboxes == 1) {
                is_str(l->sandboxes[0].handle_id, sb->handle_id, "list by tag: the tagged sandbox");
                is_str(l->sandboxes[0].session_id, session_id, "list with adopt: in our session");
                ok(l->sandboxes[0].n_tags >= 1, "list: tags reported");
        }
        cws_sandbox_list_free(l);

        lo.tags = other;
        lo.adopt = false;
        r = cws_list_sandboxes(conn, &lo, &l, &err);
        ok(r == 0 && l->n_sandboxes == 0, "list by another tag: none");
        cws_sandbox_list_free(l);

        r = cws_sandbox_from_id(conn, session_id, sb->sandbox_id, false, &found, &err);
        ok(r == 0 && streq(found->handle_id, sb->handle_id), "from_id: the same handle");
        cws_sandbox_free(found);

        r = cws_sandbox_stop(conn, sb->handle_id, &so, &stopped, &err);
        if (r != 0)
                cu_diag_err("stop", r, &err);
        ok(r == 0 && stopped && stopped->state == CWS_STATE_TERMINATED, "stop: TERMINATED (%s)",
           stopped ? cws_state_name(stopped->state) : "-");
        cws_sandbox_free(stopped);

        r = cws_sandbox_delete(conn, sb->sandbox_id, true, &err);
        if (r != 0)
                cu_diag_err("delete", r, &err);
        is_int(r, 0, "delete a stopped sandbox with missing_ok");
        r = cws_sandbox_delete(conn, "sandbox-that-never-was", true, &err);
        is_int(r, 0, "delete missing with missing_ok: success");
        r = cws_sandbox_delete(conn, "sandbox-that-never-was", false, &err);
        ok(r != 0, "delete missing without missing_ok: an error (%s)", cws_strerror(r));
        cws_sandbox_free(sb);
}

/* A sandbox made on the backend behind the daemon's back: list with adopt takes it in. */
static void test_adopt(void) {
        _cleanup_free_ char *marker = test_marker("adopt");
        const char *tags[] = { marker };
        const char *const bc_tags[] = { marker, NULL };
        BcSandboxOpts o = test_keepalive_opts();
        cws_list_options lo = { .session_id = session_id, .tags = tags, .n_tags = 1 };
        _cleanup_bc_ BcSandbox *outside = NULL;
        cws_sandbox_list *l = NULL;
        BcClient *backend = NULL;
        cws_error err;
        int r;

        o.tags = bc_tags;
        r = daemon_proc_backend(daemon_proc, &backend);
        if (r == 0)
                r = bc_create_running(backend, &o, WAIT_MS, &outside, NULL);
        if (!ok(r == 0, "a sandbox created on the backend directly"))
                goto out;
        r = cws_list_sandboxes(conn, &lo, &l, &err);
        ok(r == 0 && l->n_sandboxes == 1 && !l->sandboxes[0].session_id[0],
           "list in the session without adopt: found, not taken in");
        cws_sandbox_list_free(TAKE_PTR(l));
        lo.session_id = NULL;
        r = cws_list_sandboxes(conn, &lo, &l, &err);
        ok(r == 0 && l->n_sandboxes == 1 && !l->sandboxes[0].session_id[0],
           "list backend-wide: found, in no session");
        cws_sandbox_list_free(TAKE_PTR(l));
        lo.session_id = session_id;
        lo.adopt = true;
        r = cws_list_sandboxes(conn, &lo, &l, &err);
        if (r != 0)
                cu_diag_err("list adopt", r, &err);
        ok(r == 0 && l->n_sandboxes == 1 && streq(l->sandboxes[0].sandbox_id, outside->sandbox_id),
           "list with adopt: found");
        ok(r == 0 && l->n_sandboxes == 1 && streq(l->sandboxes[0].session_id, session_id),
           "list with adopt: now in our session");
        cws_sandbox_list_free(l);
out:
        bc_close(backend);
}

/* ---- daemon ------------------------------------------------------------------------------ */

static void test_status_metrics(void) {
        cws_session_list *sl = NULL;
        cws_status *st = NULL;
        cws_metrics *m = NULL;
        cws_error err;
        int r;

        r = cws_get_status(conn, &st, &err);
        ok(r == 0 && st->daemon_version[0] && st->sessions >= 1, "status: version and sessions");
        cws_status_free(st);
        r = cws_get_metrics(conn, NULL, false, false, &m, &err);
        ok(r == 0 && m->n_metrics > 0, "metrics: values");
        cws_metrics_free(m);
        r = cws_list_sessions(conn, &sl, &err);
        ok(r == 0 && sl->n_sessions >= 1, "list sessions");
        cws_session_list_free(sl);
}

static void test_close_session(void) {
        cws_close_result *cr = NULL;
        cws_error err;
        int r;

        r = cws_close_session(conn, session_id, &cr, &err);
        if (r != 0)
                cu_diag_err("close session", r, &err);
        ok(r == 0, "close session");
        if (r == 0) {
                is_int(cr->stopped, 3, "close session: the three running sandboxes stopped");
                is_int(cr->n_failures, 0, "close session: no failures");
        }
        cws_close_result_free(cr);
}

/* ---- a daemon that restarts -------------------------------------------------------------- */

/* Create a sandbox in session @sid, wait until it runs and run echo @word in it. */
static void sandbox_echo(const char *sid, const char *word, const char *what) {
        const char *const argv[] = { "echo", word, NULL };
        cws_create_options o = { .start = true };
        cws_sandbox *sb = NULL, *w = NULL;
        cws_exec_result *res = NULL;
        char want[64];
        cws_error err;
        int r;

        (void)snprintf(want, sizeof(want), "%s\n", word);
        r = cws_sandbox_create(conn, sid, &o, &sb, &err);
        if (r == 0)
                r = cws_sandbox_wait(conn, sb->handle_id, false, WAIT_MS, &w, &err);
        if (r == 0)
                r = cws_exec_run(conn, sb->handle_id, argv, NULL, &res, &err);
        if (r != 0)
                cu_diag_err(what, r, &err);
        ok(r == 0 && res->exit_code == 0 && streq(res->stdout_data, want), "%s: create, wait, exec echo", what);
        cws_exec_result_free(res);
        cws_sandbox_free(w);
        cws_sandbox_free(sb);
}

/*
 * SIGTERM and a new daemon under an idle connection: the library reconnects
 * without being asked and attaches the session again, so work goes on
 * through the same cws_conn and session id. The daemon may keep the session
 * (same id) or have lost it (a new one the library maps to); both hold.
 */
static void test_daemon_restart(void) {
        const cws_attach_options o = { .has_linger = true, .linger_seconds = 30 };
        cws_session_list *sl = NULL;
        cws_session *s = NULL;
        const char *now_id = NULL;
        bool attached = false;
        uint64_t base;
        int64_t end;
        cws_error err;
        int r;

        r = cws_attach(conn, "client-lib-restart", &o, &s, &err);
        if (r != 0) {
                cu_diag_err("attach", r, &err);
                ok(false, "attach before the restart");
                return;
        }
        sandbox_echo(s->session_id, "before", "before the restart");
        base = cws_conn_reconnects(conn);
        ok(daemon_proc_stop(daemon_proc, WAIT_MS, NULL) == 0, "daemon stopped with SIGTERM");
        ok(daemon_proc_restart(daemon_proc) == 0, "daemon started again");

        end = test_mono_ms() + WAIT_MS;
        while (cws_conn_reconnects(conn) <= base && test_mono_ms() < end)
                test_sleep_ms(50);
        ok(cws_conn_reconnects(conn) > base, "the library reconnected by itself (%" PRIu64 " in all)",
           cws_conn_reconnects(conn));

        r = cws_list_sessions(conn, &sl, &err);
        if (r != 0)
                cu_diag_err("list sessions", r, &err);
        for (size_t i = 0; r == 0 && i < sl->n_sessions; i++)
                if (streq(sl->sessions[i].name, "client-lib-restart") && sl->sessions[i].connections >= 1) {
                        attached = true;
                        now_id = sl->sessions[i].session_id;
                }
        ok(attached, "the session is attached again");
        if (attached)
                diag("session id before %s, now %s", s->session_id, now_id);
        cws_session_list_free(sl);
        sandbox_echo(s->session_id, "after", "after the restart, with the session id from before");
        cws_session_free(s);
}

/* ---- a daemon that dies ------------------------------------------------------------------ */

typedef struct Waiter {
        cws_exec *exec;
        int r;
        cws_error err;
} Waiter;

static void *wait_thread(void *userdata) {
        Waiter *w = userdata;
        int code;

        w->r = cws_exec_wait(w->exec, &code, &w->err);
        return NULL;
}

/* Closing a connection while another thread waits on it: the waiter gets UNAVAILABLE. */
static void test_close_under_wait(void) {
        const char *const argv[] = { "sleep", "1000", NULL };
        Waiter w = { .r = -1 };
        cws_conn *c = NULL;
        pthread_t t;
        cws_error err;
        int r;

        r = cws_connect(daemon_proc->socket_path, "test-client-lib-close", &c, &err);
        if (r == 0)
                r = cws_exec_start(c, sandbox_id, argv, NULL, &w.exec, &err);
        if (!ok(r == 0, "exec on a second connection")) {
                cws_conn_close(c);
                return;
        }
        pthread_create(&t, NULL, wait_thread, &w);
        test_sleep_ms(200);
        cws_conn_close(c);
        pthread_join(t, NULL);
        is_int(w.r, CWS_UNAVAILABLE, "close under a waiting exec: the waiter gets UNAVAILABLE");
        ok(strstr(w.err.message, "closed") != NULL, "the message says closed: %s", w.err.message);
        cws_exec_free(w.exec);
}

static void test_daemon_killed(void) {
        const char *const argv[] = { "sleep", "1000", NULL };
        cws_session *s = NULL;
        cws_sandbox *sb = NULL;
        cws_status *st = NULL;
        Waiter w = { .r = -1 };
        pthread_t t;
        cws_error err;
        int r;

        r = cws_attach(conn, "client-lib-kill", NULL, &s, &err);
        if (r == 0) {
                free(session_id);
                session_id = strdup(s->session_id);
                sb = start_sandbox(NULL, "sandbox before the kill");
        }
        r = sb ? cws_exec_start(conn, sb->handle_id, argv, NULL, &w.exec, &err) : -1;
        if (r != 0) {
                ok(false, "exec before the kill");
                cws_session_free(s);
                cws_sandbox_free(sb);
                return;
        }
        pthread_create(&t, NULL, wait_thread, &w);
        /* Let the waiter block first; the result does not depend on it. */
        test_sleep_ms(500);
        ok(daemon_proc_signal(daemon_proc, SIGKILL) == 0, "daemon killed");
        pthread_join(t, NULL);
        is_int(w.r, CWS_UNAVAILABLE, "a blocked exec wait: UNAVAILABLE");
        ok(strstr(w.err.message, "lost") != NULL, "the message says the connection was lost: %s", w.err.message);
        /* Nothing restarts it: a new call waits for the reconnect only as long as it is told. */
        cws_conn_set_reconnect(conn, true, 500);
        r = cws_get_status(conn, &st, &err);
        is_int(r, CWS_UNAVAILABLE, "a new call after the loss: UNAVAILABLE once the wait is over");
        /* The exec object outlives its connection. */
        cws_conn_close(TAKE_PTR(conn));
        is_int(cws_exec_cancel(w.exec, &err), 0, "cancel of an ended exec after close: nothing to do");
        cws_exec_free(w.exec);
        cws_sandbox_free(sb);
        cws_session_free(s);
}

int main(void) {
        int r;

        if (test_needs_root())
                return 0;
        r = daemon_proc_start(NULL, &daemon_proc);
        if (r < 0)
                bail_out("cannot start cwsandboxd: %s", strerror(-r));

        test_connect();
        test_attach();
        test_create_start_wait();
        test_exec_buffered();
        test_exec_stream();
        test_exec_wait_drops();
        test_exec_cancel();
        test_threads();
        test_close_under_wait();
        test_files();
        test_logs();
        test_list_stop_delete();
        test_adopt();
        test_status_metrics();
        test_close_session();
        test_daemon_restart();
        test_daemon_killed();

        cws_conn_close(conn);
        free(sandbox_id);
        free(session_id);
        daemon_proc_free(daemon_proc);
        return done();
}
