/*
 * Nothing leaks across a daemon restart: cwsandboxd on a cwsandbox-local it
 * does not own (so sandboxes outlive the daemon, as on a remote backend),
 * killed with SIGKILL or stopped with SIGTERM, then started again on the
 * same state directory. Every check of what runs is made against the
 * backend's own listing.
 *
 * - kill -9 and restart: a session comes back with the same id, its handles
 *   and their sandboxes; work goes on in them.
 * - An interrupted create (the backend made the sandbox, the daemon died
 *   before the reply): after the restart the handle finds its sandbox (one
 *   sandbox, not two); and when nobody comes back, the session's linger
 *   ends and the sandbox is stopped.
 * - A scope=connection sandbox whose connection died with the daemon is
 *   reaped after the restart.
 * - kill -9 in the middle of creates and execs from several clients, the
 *   clients killed too: every sandbox is stopped once the sessions' linger
 *   has passed; a session with linger -1 keeps exactly its own.
 * - Clients killed with SIGKILL while the daemon lives: after the linger,
 *   nothing is left.
 * - SIGTERM leaves sandboxes and sessions running, exits 0, and a client of
 *   the next daemon goes on where it was; with stop_on_shutdown every
 *   sandbox is stopped and no session comes back.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <grpc/status.h>

#include "backend-client.h"
#include "daemon-calls.h"
#include "restart-env.h"

#define WAIT_MS         60000           /* a guard against hanging, not an expectation */
#define REAP_S          1
#define N_WORKERS       4

#define STATE(x) CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_##x
#define SCOPE(x) CWSANDBOXD__V1__SCOPE__SCOPE_##x

static RestartEnv env;

/* A started sandbox in @session, RUNNING; bails out when it cannot be made. */
static void make_running(FrameClient *c, const char *session, Cwsandboxd__V1__Scope scope, DcInfo *info) {
        DcError err = { 0 };

        if (dc_create(c, session, NULL, scope, true, info, &err) != 0 ||
            dc_wait(c, info->handle_id, false, WAIT_MS, info, &err) != 0)
                bail_out("cannot make a running sandbox: %s", err.message);
}

static double metric(FrameClient *c, const char *name) {
        double v = -1;
        DcError err = { 0 };

        (void)dc_metric(c, NULL, name, &v, &err);
        return v;
}

static char *session_tag(const char *session_id) {
        char *t;

        if (asprintf(&t, "cwsandboxd-session-%s", session_id) < 0)
                bail_out("out of memory");
        return t;
}

/* ---- kill -9, restart, carry on --------------------------------------------------------------- */

static void test_kill_restart(void) {
        DaemonProc *d = restart_env_daemon(&env, REAP_S, NULL);
        FrameClient *c = restart_env_client(d);
        _cleanup_free_ char *sid = NULL, *sid2 = NULL, *out = NULL;
        DcInfo a, b, got;
        DcError err = { 0 };
        bool created = true;
        unsigned n = 0;
        int code = -1;

        if (dc_attach(c, "kill-restart", NULL, 30, &sid, NULL, &err) != 0)
                bail_out("attach: %s", err.message);
        make_running(c, sid, SCOPE(SESSION), &a);
        make_running(c, sid, SCOPE(SESSION), &b);
        frame_client_free(c);

        restart_env_kill9(d);
        restart_env_restart(d, "kill-restart");
        c = restart_env_client(d);
        is_int(dc_attach(c, "kill-restart", NULL, 30, &sid2, &created, &err), 0, "kill -9: attach after the restart");
        is_str(sid2, sid, "kill -9: the session comes back with its id");
        ok(!created, "kill -9: the attach joined it, did not create it");
        is_int(dc_list_count(c, sid, NULL, false, false, &n, &err), 0, "kill -9: list the session");
        is_int((int)n, 2, "kill -9: both sandboxes are still the session's");
        is_int(dc_wait(c, a.handle_id, false, WAIT_MS, &got, &err), 0, "kill -9: the old handle id still works");
        is_str(got.sandbox_id, a.sandbox_id, "kill -9: and names the same sandbox");
        is_int(got.state, STATE(RUNNING), "kill -9: which is RUNNING");
        is_int(dc_exec(c, b.handle_id, (const char *const[]) { "echo", "still-here", NULL }, &out, NULL, &code, &err),
               0, "kill -9: exec in the other one");
        ok(out && strstr(out, "still-here") && code == 0, "kill -9: its output");
        is_int(restart_env_live(&env, "cwsandboxd", NULL), 2, "kill -9: the backend runs exactly the two");
        is_int(dc_close_session(c, sid, NULL, NULL, &err), 0, "kill -9: close the session");
        is_int(restart_env_wait_live(&env, "cwsandboxd", 0, WAIT_MS), 0, "kill -9: nothing left on the backend");
        frame_client_free(c);
        daemon_proc_free(d);
}

/* ---- interrupted create ------------------------------------------------------------------------ */

static void send_create(FrameClient *c, const char *session) {
        Cwsandboxd__V1__ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__CreateSandboxRequest req = CWSANDBOXD__V1__CREATE_SANDBOX_REQUEST__INIT;
        DcError err = { 0 };

        req.session_id = (char *)session;
        req.start = true;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_CREATE_SANDBOX;
        f.create_sandbox = &req;
        if (dc_send(c, &f, &err) != 0)
                bail_out("send create: %s", err.message);
}

/* Create with the backend's reply held back, and kill -9 the daemon once the sandbox exists. */
static void interrupted_create(DaemonProc *d, const char *name, int linger, char **ret_sid, char ***ret_ids) {
        Cwsandboxlocal__V1__Fault fault = CWSANDBOXLOCAL__V1__FAULT__INIT;
        _cleanup_free_ char *tag = NULL;
        FrameClient *c = restart_env_client(d);
        DcError err = { 0 };
        BcStatus st;
        int n = 0;

        fault.method = (char *)"CreateSandbox";
        fault.reply_delay_ms = 20000;
        fault.remaining = 1;
        if (bc_set_faults(env.backend.client, &fault, 1, &st) != 0)
                bail_out("set faults: %s", st.details);
        if (dc_attach(c, name, NULL, linger, ret_sid, NULL, &err) != 0)
                bail_out("attach: %s", err.message);
        tag = session_tag(*ret_sid);
        send_create(c, *ret_sid);
        for (int64_t end = test_mono_ms() + WAIT_MS; n < 1 && test_mono_ms() < end; test_sleep_ms(20))
                n = restart_env_live(&env, tag, NULL);
        is_int(n, 1, "%s: the backend made the sandbox while its reply is held back", name);
        restart_env_kill9(d);
        frame_client_free(c);
        (void)bc_set_faults(env.backend.client, NULL, 0, &st);
        (void)restart_env_live(&env, tag, ret_ids);
}

static void test_interrupted_create_resolved(void) {
        DaemonProc *d = restart_env_daemon(&env, REAP_S, NULL);
        _cleanup_free_ char *sid = NULL, *sid2 = NULL, *tag = NULL;
        Cwsandboxd__V1__DaemonFrame *list = NULL;
        char **ids = NULL;
        FrameClient *c;
        DcError err = { 0 };
        DcInfo got;

        interrupted_create(d, "interrupted", 30, &sid, &ids);
        restart_env_restart(d, "interrupted");
        c = restart_env_client(d);
        is_int(dc_attach(c, "interrupted", NULL, 30, &sid2, NULL, &err), 0, "interrupted: attach after the restart");
        is_str(sid2, sid, "interrupted: same session");
        for (int64_t end = test_mono_ms() + WAIT_MS; metric(c, "cwsandboxd_creates_resolved_total") < 1 &&
             test_mono_ms() < end;)
                test_sleep_ms(50);
        ok(metric(c, "cwsandboxd_creates_resolved_total") == 1, "interrupted: the restarted daemon resolved one create");
        is_int(dc_list(c, sid, NULL, false, false, &list, &err), 0, "interrupted: list the session");
        ok(list && list->sandboxes && list->sandboxes->n_sandboxes == 1,
           "interrupted: the session has one sandbox");
        if (list && list->sandboxes && list->sandboxes->n_sandboxes == 1 && ids && ids[0]) {
                is_str(list->sandboxes->sandboxes[0]->sandbox_id, ids[0],
                       "interrupted: its handle took the sandbox the backend made");
                is_int(dc_wait(c, list->sandboxes->sandboxes[0]->handle_id, false, WAIT_MS, &got, &err), 0,
                       "interrupted: it can be waited on");
        } else
                ok(false, "interrupted: no sandbox to compare");
        tag = session_tag(sid);
        is_int(restart_env_live(&env, tag, NULL), 1, "interrupted: still one sandbox on the backend, not two");
        is_int(dc_close_session(c, sid, NULL, NULL, &err), 0, "interrupted: close");
        is_int(restart_env_wait_live(&env, "cwsandboxd", 0, WAIT_MS), 0, "interrupted: nothing left");
        cwsandboxd__v1__daemon_frame__free_unpacked(list, NULL);
        test_strv_free(ids);
        frame_client_free(c);
        daemon_proc_free(d);
}

static void test_interrupted_create_abandoned(void) {
        DaemonProc *d = restart_env_daemon(&env, REAP_S, NULL);
        _cleanup_free_ char *sid = NULL;
        char **ids = NULL;
        FrameClient *c;

        interrupted_create(d, "abandoned", 1, &sid, &ids);
        restart_env_restart(d, "abandoned");
        /* Nobody comes back: the session's linger (1 s) ends and its sandbox goes. */
        is_int(restart_env_wait_live(&env, "cwsandboxd", 0, WAIT_MS), 0,
               "abandoned: the interrupted create's sandbox is stopped after the restart");
        c = restart_env_client(d);
        ok(metric(c, "cwsandboxd_creates_resolved_total") + metric(c, "cwsandboxd_orphans_reaped_total") >= 1,
           "abandoned: counted as resolved or reaped");
        test_strv_free(ids);
        frame_client_free(c);
        daemon_proc_free(d);
}

/* ---- connection scope ------------------------------------------------------------------------- */

static void test_connection_scope(void) {
        DaemonProc *d = restart_env_daemon(&env, REAP_S, NULL);
        FrameClient *c = restart_env_client(d);
        _cleanup_free_ char *sid = NULL;
        DcInfo conn_scoped, kept;
        DcError err = { 0 };
        unsigned n = 0;

        if (dc_attach(c, "conn-scope", NULL, -1, &sid, NULL, &err) != 0)
                bail_out("attach: %s", err.message);
        make_running(c, sid, SCOPE(CONNECTION), &conn_scoped);
        make_running(c, sid, SCOPE(SESSION), &kept);
        /* The daemon dies with the connection open: nobody stopped the connection's sandbox. */
        restart_env_kill9(d);
        frame_client_free(c);
        is_int(restart_env_live(&env, "cwsandboxd", NULL), 2, "conn-scope: both run while the daemon is down");
        restart_env_restart(d, "conn-scope");
        is_int(restart_env_wait_live(&env, "cwsandboxd", 1, WAIT_MS), 1,
               "conn-scope: after the restart only the session-scoped sandbox runs");
        c = restart_env_client(d);
        ok(metric(c, "cwsandboxd_orphans_reaped_total") >= 1, "conn-scope: the other was reaped");
        is_int(dc_list_count(c, sid, NULL, false, false, &n, &err), 0, "conn-scope: list");
        is_int((int)n, 1, "conn-scope: the session tracks one sandbox");
        is_int(dc_close_session(c, sid, NULL, NULL, &err), 0, "conn-scope: close");
        is_int(restart_env_wait_live(&env, "cwsandboxd", 0, WAIT_MS), 0, "conn-scope: nothing left");
        frame_client_free(c);
        daemon_proc_free(d);
}

/* ---- a workload killed ------------------------------------------------------------------------ */

/* A client process: creates and execs in its own session until killed. */
static _noreturn_ void worker(const char *socket_path, int i) {
        char name[32];
        char *sid = NULL;
        FrameClient *c = NULL;
        DcError err = { 0 };

        snprintf(name, sizeof(name), "worker-%d", i);
        if (dc_connect(socket_path, &c) != 0 || dc_attach(c, name, NULL, 2, &sid, NULL, &err) != 0)
                _exit(1);
        for (;;) {
                DcInfo info;

                if (dc_create(c, sid, NULL, SCOPE(SESSION), true, &info, &err) != 0)
                        _exit(2);
                (void)dc_exec(c, info.handle_id, (const char *const[]) { "true", NULL }, NULL, NULL, NULL, &err);
        }
}

static void test_workload_killed(void) {
        DaemonProc *d = restart_env_daemon(&env, REAP_S, NULL);
        FrameClient *c = restart_env_client(d);
        _cleanup_free_ char *keep_sid = NULL;
        pid_t pids[N_WORKERS];
        DcInfo kept;
        DcError err = { 0 };
        char **live = NULL;
        int n = 0;

        if (dc_attach(c, "keeper", NULL, -1, &keep_sid, NULL, &err) != 0)
                bail_out("attach: %s", err.message);
        make_running(c, keep_sid, SCOPE(SESSION), &kept);
        frame_client_free(c);
        for (int i = 0; i < N_WORKERS; i++) {
                pids[i] = fork();
                if (pids[i] < 0)
                        bail_out("fork: %m");
                if (pids[i] == 0)
                        worker(d->socket_path, i);
        }
        /* In the thick of it: a dozen sandboxes made, creates and execs in flight. */
        for (int64_t end = test_mono_ms() + WAIT_MS; n < 13 && test_mono_ms() < end; test_sleep_ms(20))
                n = restart_env_live(&env, "cwsandboxd", NULL);
        ok(n >= 13, "workload: %d sandboxes running when the daemon is killed", n);
        restart_env_kill9(d);
        for (int i = 0; i < N_WORKERS; i++) {
                kill(pids[i], SIGKILL);
                (void)waitpid(pids[i], NULL, 0);
        }
        restart_env_restart(d, "workload");
        /* The workers' sessions linger 2 s with nobody back, then close; the reaper gets the rest. */
        is_int(restart_env_wait_live(&env, "cwsandboxd", 1, WAIT_MS), 1,
               "workload: after linger and one reap interval only the keeper's sandbox runs");
        (void)restart_env_live(&env, "cwsandboxd", &live);
        ok(live && live[0] && strcmp(live[0], kept.sandbox_id) == 0, "workload: and it is the keeper's");
        test_strv_free(live);
        c = restart_env_client(d);
        is_int(dc_close_session(c, keep_sid, NULL, NULL, &err), 0, "workload: close the keeper");
        is_int(restart_env_wait_live(&env, "cwsandboxd", 0, WAIT_MS), 0, "workload: nothing left");
        frame_client_free(c);
        daemon_proc_free(d);
}

static void test_clients_killed(void) {
        DaemonProc *d = restart_env_daemon(&env, REAP_S, NULL);
        pid_t pids[N_WORKERS];
        int n = 0;

        for (int i = 0; i < N_WORKERS; i++) {
                pids[i] = fork();
                if (pids[i] < 0)
                        bail_out("fork: %m");
                if (pids[i] == 0)
                        worker(d->socket_path, i);
        }
        for (int64_t end = test_mono_ms() + WAIT_MS; n < 8 && test_mono_ms() < end; test_sleep_ms(20))
                n = restart_env_live(&env, "cwsandboxd", NULL);
        ok(n >= 8, "clients killed: %d sandboxes running", n);
        for (int i = 0; i < N_WORKERS; i++) {
                kill(pids[i], SIGKILL);
                (void)waitpid(pids[i], NULL, 0);
        }
        is_int(restart_env_wait_live(&env, "cwsandboxd", 0, WAIT_MS), 0,
               "clients killed: after their sessions' linger nothing is left");
        daemon_proc_free(d);
}

/* ---- SIGTERM ---------------------------------------------------------------------------------- */

static void test_sigterm_keeps(void) {
        DaemonProc *d = restart_env_daemon(&env, REAP_S, NULL);
        FrameClient *c = restart_env_client(d);
        _cleanup_free_ char *sid = NULL, *sid2 = NULL, *out = NULL;
        DcError err = { 0 };
        DcInfo info;
        int status = -1, code = -1;

        if (dc_attach(c, "sigterm", NULL, 30, &sid, NULL, &err) != 0)
                bail_out("attach: %s", err.message);
        make_running(c, sid, SCOPE(SESSION), &info);
        frame_client_free(c);
        is_int(daemon_proc_stop(d, WAIT_MS, &status), 0, "sigterm: the daemon stops");
        ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "sigterm: exit status 0");
        is_int(restart_env_live(&env, "cwsandboxd", NULL), 1, "sigterm: the sandbox keeps running");
        restart_env_restart(d, "sigterm");
        c = restart_env_client(d);
        is_int(dc_attach(c, "sigterm", NULL, 30, &sid2, NULL, &err), 0, "sigterm: a client attaches again");
        is_str(sid2, sid, "sigterm: to the same session");
        is_int(dc_exec(c, info.handle_id, (const char *const[]) { "echo", "carry-on", NULL }, &out, NULL, &code, &err),
               0, "sigterm: and goes on in the same sandbox");
        ok(out && strstr(out, "carry-on"), "sigterm: its output");
        is_int(dc_close_session(c, sid, NULL, NULL, &err), 0, "sigterm: close");
        is_int(restart_env_wait_live(&env, "cwsandboxd", 0, WAIT_MS), 0, "sigterm: nothing left");
        frame_client_free(c);
        daemon_proc_free(d);
}

static void test_stop_on_shutdown(void) {
        DaemonProc *d = restart_env_daemon(&env, REAP_S, (const char *const[]) { "--stop-on-shutdown", NULL });
        FrameClient *c = restart_env_client(d);
        _cleanup_free_ char *sid = NULL, *sid2 = NULL;
        DcError err = { 0 };
        DcInfo info;
        bool created = false;
        int status = -1;

        if (dc_attach(c, "stop-all", NULL, -1, &sid, NULL, &err) != 0)
                bail_out("attach: %s", err.message);
        make_running(c, sid, SCOPE(SESSION), &info);
        make_running(c, sid, SCOPE(SESSION), &info);
        frame_client_free(c);
        is_int(daemon_proc_stop(d, WAIT_MS, &status), 0, "stop_on_shutdown: the daemon stops");
        ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "stop_on_shutdown: exit status 0");
        is_int(restart_env_live(&env, "cwsandboxd", NULL), 0, "stop_on_shutdown: every sandbox was stopped");
        restart_env_restart(d, "stop-all");
        c = restart_env_client(d);
        is_int(dc_attach(c, "stop-all", NULL, 0, &sid2, &created, &err), 0, "stop_on_shutdown: attach again");
        ok(created && strcmp(sid, sid2) != 0, "stop_on_shutdown: the old session did not come back");
        frame_client_free(c);
        daemon_proc_free(d);
}

/* A buffered exec of `sh -c @script` sent without waiting for its reply. */
static void send_exec(FrameClient *c, const char *id, const char *script) {
        Cwsandboxd__V1__ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__ExecRequest req = CWSANDBOXD__V1__EXEC_REQUEST__INIT;
        char *argv[] = { (char *)"sh", (char *)"-c", (char *)script };
        DcError err = { 0 };

        req.sandbox_id = (char *)id;
        req.command = argv;
        req.n_command = 3;
        req.buffered = true;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_EXEC;
        f.exec = &req;
        if (dc_send(c, &f, &err) != 0)
                bail_out("send exec: %s", err.message);
}

static void test_sigterm_drain(void) {
        DaemonProc *d = restart_env_daemon(&env, REAP_S, (const char *const[]) { "--drain-timeout-seconds", "3", NULL });
        FrameClient *c = restart_env_client(d), *quick = restart_env_client(d), *slow = restart_env_client(d), *late = restart_env_client(d);
        _cleanup_free_ char *sid = NULL;
        Cwsandboxd__V1__DaemonFrame *reply = NULL;
        DcError err = { 0 };
        DcInfo info;
        int status = -1;

        if (dc_attach(c, "drain", NULL, 30, &sid, NULL, &err) != 0)
                bail_out("attach: %s", err.message);
        make_running(c, sid, SCOPE(SESSION), &info);
        send_exec(quick, info.handle_id, "sleep 1; echo done");
        send_exec(slow, info.handle_id, "sleep 60");
        /* A connection's frames are handled in order: a status answered after an exec means the exec is under way. */
        if (dc_status(quick, &reply, &err) != 0 || (frame_client_frame_free(reply), dc_status(slow, &reply, &err)) != 0)
                bail_out("status: %s", err.message);
        frame_client_frame_free(reply);
        reply = NULL;
        daemon_proc_signal(d, SIGTERM);
        /* Until the drain has begun, status still answers. */
        for (int64_t end = test_mono_ms() + WAIT_MS; test_mono_ms() < end; test_sleep_ms(20)) {
                err = (DcError) { 0 };
                if (dc_status(late, &reply, &err) != 0)
                        break;
                frame_client_frame_free(reply);
                reply = NULL;
        }
        frame_client_frame_free(reply);
        reply = NULL;
        is_int(err.code, GRPC_STATUS_UNAVAILABLE, "drain: a request during the drain: UNAVAILABLE");
        ok(err.retryable, "drain: retryable (%s)", err.message);
        err = (DcError) { 0 };
        is_int(dc_recv_final(quick, WAIT_MS, &reply, &err), 0, "drain: an exec that ends within the drain finishes");
        ok(reply && reply->body_case == CWSANDBOXD__V1__DAEMON_FRAME__BODY_EXEC_RESULT &&
           reply->exec_result->exit_code == 0, "drain: with its exit status");
        frame_client_frame_free(reply);
        reply = NULL;
        err = (DcError) { 0 };
        is_int(dc_recv_final(slow, WAIT_MS, &reply, &err), GRPC_STATUS_UNAVAILABLE,
               "drain: an exec still running at the drain timeout gets a final UNAVAILABLE");
        ok(err.retryable, "drain: retryable (%s)", err.message);
        frame_client_frame_free(reply);
        is_int(daemon_proc_stop(d, WAIT_MS, &status), 0, "drain: the daemon exits");
        ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "drain: exit status 0");
        frame_client_free(quick);
        frame_client_free(slow);
        frame_client_free(late);
        frame_client_free(c);
        restart_env_restart(d, "drain");
        c = restart_env_client(d);
        is_int(dc_close_session(c, sid, NULL, NULL, &err), 0, "drain: the session is there after the restart");
        is_int(restart_env_wait_live(&env, "cwsandboxd", 0, WAIT_MS), 0, "drain: nothing left");
        frame_client_free(c);
        daemon_proc_free(d);
}

int main(void) {
        signal(SIGPIPE, SIG_IGN);
        restart_env_start(&env);
        test_kill_restart();
        test_interrupted_create_resolved();
        test_interrupted_create_abandoned();
        test_connection_scope();
        test_workload_killed();
        test_clients_killed();
        test_sigterm_keeps();
        test_stop_on_shutdown();
        test_sigterm_drain();
        restart_env_stop(&env);
        return done();
}
