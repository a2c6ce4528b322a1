/*
 * Sessions through the real daemon, its embedded backend and real client
 * processes: two processes sharing one session, the SDK's merge rules as the
 * backend receives them, linger (n seconds, 0, -1), scope=connection, and
 * list/from_id adoption. What exists on the backend is checked with the
 * backend's own API, not the daemon's word.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon-calls.h"
#include "daemon-proc.h"
#include "test-util.h"

#define STATE(x) CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_##x
#define SETTLE_MS 30000

static DaemonProc *daemon_proc;
static BcClient *backend;

static FrameClient *connect_or_bail(void) {
        FrameClient *c = NULL;
        int r = dc_connect(daemon_proc->socket_path, &c);

        if (r != 0) {
                diag("connect: %d", r);
                daemon_proc_free(daemon_proc);
                exit(1);
        }
        return c;
}

/* The backend's own view: wait until @id is in @want. */
static bool backend_reaches(const char *id, BcState want) {
        return bc_wait_state(backend, id, want, SETTLE_MS, NULL, NULL) == 0;
}

static bool backend_has_tag(const char *id, const char *tag) {
        _cleanup_bc_ BcSandbox *sb = NULL;

        if (bc_get_sandbox(backend, id, &sb, NULL) != 0 || !sb->spec)
                return false;
        for (size_t i = 0; i < sb->spec->n_tags; i++)
                if (streq(sb->spec->tags[i], tag))
                        return true;
        return false;
}

/* ---- two processes, one session ---------------------------------------------------------- */

/* Process A: create a sandbox in "shared", pass its ids on, wait to be told to exit. */
static void process_a(int to_parent, int from_parent) {
        FrameClient *c = connect_or_bail();
        _cleanup_free_ char *session = NULL;
        DcInfo info;
        char go;

        if (dc_attach(c, "shared", NULL, DC_LINGER_UNSET, &session, NULL, NULL) != 0 ||
            dc_create(c, session, NULL, CWSANDBOXD__V1__SCOPE__SCOPE_SESSION, true, &info, NULL) != 0)
                _exit(1);
        if (write(to_parent, &info, sizeof(info)) != sizeof(info))
                _exit(1);
        (void)read(from_parent, &go, 1);
        frame_client_free(c);
        _exit(0);
}

static void test_shared_session(void) {
        int up[2], down[2], status;
        _cleanup_free_ char *session = NULL, *out = NULL;
        FrameClient *b;
        DcInfo info, got;
        DcError err;
        bool created = true;
        unsigned stopped = 0, failed = 1;
        int code = -1;
        pid_t a;

        if (pipe(up) < 0 || pipe(down) < 0)
                bail_out("pipe: %m");
        a = fork();
        if (a == 0) {
                close(up[0]);
                close(down[1]);
                process_a(up[1], down[0]);
        }
        close(up[1]);
        close(down[0]);
        ok(read(up[0], &info, sizeof(info)) == sizeof(info), "process A created a sandbox in session 'shared'");
        ok(info.sandbox_id[0] != 0, "A's create returned a backend id (%s)", info.sandbox_id);

        b = connect_or_bail();
        is_int(dc_attach(b, "shared", NULL, DC_LINGER_UNSET, &session, &created, &err), 0, "process B attaches");
        ok(!created, "B joined A's session instead of making one");
        is_int(dc_exec(b, info.handle_id, (const char *const[]) { "echo", "from-b", NULL }, &out, NULL, &code, &err),
               0, "B execs in A's sandbox by handle id");
        is_str(out ? test_chomp(out) : "", "from-b", "B sees the output");

        (void)write(down[1], "x", 1);
        ok(waitpid(a, &status, 0) == a && WIFEXITED(status) && WEXITSTATUS(status) == 0, "A exited");
        free(out);
        out = NULL;
        is_int(dc_exec(b, info.sandbox_id, (const char *const[]) { "echo", "still", NULL }, &out, NULL, &code, &err),
               0, "after A is gone B still execs (by backend id)");
        is_str(out ? test_chomp(out) : "", "still", "with output");
        is_int(dc_get(b, info.handle_id, true, &got, &err), 0, "get with refresh");
        is_int(got.state, STATE(RUNNING), "the sandbox is RUNNING");

        is_int(dc_close_session(b, session, &stopped, &failed, &err), 0, "B closes the session");
        is_int(stopped, 1, "close reports one sandbox stopped");
        is_int(failed, 0, "and no failure");
        ok(backend_reaches(info.sandbox_id, BC_STATE(TERMINATED)), "the backend has it TERMINATED");
        frame_client_free(b);
        close(up[0]);
        close(down[1]);
}

/* ---- merge rules as the backend receives them -------------------------------------------- */

typedef struct MergeCase {
        const char *what;
        const char *call_env;           /* "K=V" or NULL */
        const char *expect;             /* echo $A-$B-$C */
} MergeCase;

static void test_merge(void) {
        static const MergeCase cases[] = {
                { "defaults only", NULL, "a0-b0-" },
                { "the call adds a key", "C=c1", "a0-b0-c1" },
                { "the call wins per key", "B=b1", "a0-b1-" },
        };
        Cwsandboxd__V1__SandboxDefaults d = CWSANDBOXD__V1__SANDBOX_DEFAULTS__INIT;
        Cwsandboxd__V1__SandboxDefaults__EnvironmentVariablesEntry ea = CWSANDBOXD__V1__SANDBOX_DEFAULTS__ENVIRONMENT_VARIABLES_ENTRY__INIT,
                                                                   eb = ea;
        Cwsandboxd__V1__SandboxDefaults__EnvironmentVariablesEntry *envs[] = { &ea, &eb };
        char *dtags[] = { (char *)"t-default" };
        _cleanup_free_ char *session = NULL;
        FrameClient *c = connect_or_bail();
        DcError err;

        ea.key = (char *)"A";
        ea.value = (char *)"a0";
        eb.key = (char *)"B";
        eb.value = (char *)"b0";
        d.environment_variables = envs;
        d.n_environment_variables = 2;
        d.tags = dtags;
        d.n_tags = 1;
        is_int(dc_attach(c, "merge", &d, 0, &session, NULL, &err), 0, "attach with defaults (tags, env)");

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                Cwsandboxd__V1__SandboxArgs a = CWSANDBOXD__V1__SANDBOX_ARGS__INIT;
                Cwsandboxd__V1__SandboxArgs__EnvironmentVariablesEntry e =
                        CWSANDBOXD__V1__SANDBOX_ARGS__ENVIRONMENT_VARIABLES_ENTRY__INIT, *ep = &e;
                char *ctags[] = { (char *)"t-call" }, key[2] = "";
                _cleanup_free_ char *out = NULL, *tag = NULL;
                DcInfo info;
                int code = -1;

                if (cases[i].call_env) {
                        key[0] = cases[i].call_env[0];
                        e.key = key;
                        e.value = (char *)cases[i].call_env + 2;
                        a.environment_variables = &ep;
                        a.n_environment_variables = 1;
                }
                a.tags = ctags;
                a.n_tags = 1;
                if (dc_create(c, session, &a, CWSANDBOXD__V1__SCOPE__SCOPE_SESSION, true, &info, &err) != 0) {
                        ok(false, "%s: create (%s)", cases[i].what, err.message);
                        continue;
                }
                (void)dc_exec(c, info.handle_id, (const char *const[]) { "/bin/sh", "-c", "echo $A-$B-$C", NULL },
                              &out, NULL, &code, &err);
                is_str(out ? test_chomp(out) : "(none)", cases[i].expect, "%s: the sandbox's environment", cases[i].what);
                ok(backend_has_tag(info.sandbox_id, "t-default") && backend_has_tag(info.sandbox_id, "t-call"),
                   "%s: default and call tags both on the backend", cases[i].what);
                ok(backend_has_tag(info.sandbox_id, "cwsandboxd"), "%s: the cwsandboxd tag", cases[i].what);
                if (asprintf(&tag, "cwsandboxd-session-%s", session) < 0)
                        bail_out("oom");
                ok(backend_has_tag(info.sandbox_id, tag), "%s: the session tag", cases[i].what);
                ok(backend_has_tag(info.sandbox_id, "cwsandboxd-uid-0"), "%s: the owner tag", cases[i].what);
        }
        /* linger 0: the session closes when this connection goes. */
        frame_client_free(c);
}

/* ---- linger ------------------------------------------------------------------------------ */

static bool session_visible(FrameClient *c, const char *name) {
        bool seen = false;

        (void)dc_session_visible(c, name, &seen, NULL);
        return seen;
}

/* A client attaches @name with @linger, creates a sandbox, and disconnects. */
static void linger_case(FrameClient *observer, const char *name, int linger, DcInfo *ret) {
        FrameClient *c = connect_or_bail();
        _cleanup_free_ char *session = NULL;

        if (dc_attach(c, name, NULL, linger, &session, NULL, NULL) != 0 ||
            dc_create(c, session, NULL, CWSANDBOXD__V1__SCOPE__SCOPE_SESSION, true, ret, NULL) != 0)
                bail_out("linger %d: setup failed", linger);
        ok(session_visible(observer, name), "linger %d: session '%s' exists", linger, name);
        frame_client_free(c);
}

static void test_linger(void) {
        FrameClient *obs = connect_or_bail();
        DcInfo zero, two, never;
        int64_t t0;
        bool gone = false;

        linger_case(obs, "linger-0", 0, &zero);
        ok(backend_reaches(zero.sandbox_id, BC_STATE(TERMINATED)), "linger 0: the sandbox is stopped at once");
        ok(!session_visible(obs, "linger-0"), "linger 0: the session is gone");

        linger_case(obs, "linger-2", 2, &two);
        test_sleep_ms(500);
        ok(session_visible(obs, "linger-2"), "linger 2: the session is still there right after the disconnect");
        t0 = test_mono_ms();
        ok(backend_reaches(two.sandbox_id, BC_STATE(TERMINATED)), "linger 2: the sandbox is stopped later");
        diag("linger 2: stopped %lld ms after the check", (long long)(test_mono_ms() - t0));
        for (int i = 0; i < 100 && !gone; i++, test_sleep_ms(100))
                gone = !session_visible(obs, "linger-2");
        ok(gone, "linger 2: the session is gone");

        linger_case(obs, "linger-never", -1, &never);
        test_sleep_ms(2500);
        ok(session_visible(obs, "linger-never"), "linger -1: the session stays with no connection");
        ok(backend_reaches(never.sandbox_id, BC_STATE(RUNNING)), "linger -1: its sandbox keeps running");
        {
                _cleanup_free_ char *session = NULL;
                unsigned stopped = 0;

                (void)dc_attach(obs, "linger-never", NULL, DC_LINGER_UNSET, &session, NULL, NULL);
                is_int(dc_close_session(obs, session, &stopped, NULL, NULL), 0, "linger -1: an explicit close");
                is_int(stopped, 1, "linger -1: close stops its sandbox");
                ok(backend_reaches(never.sandbox_id, BC_STATE(TERMINATED)), "linger -1: TERMINATED on the backend");
        }
        frame_client_free(obs);
}

/* ---- scope=connection --------------------------------------------------------------------- */

static void test_scope(void) {
        FrameClient *holder = connect_or_bail(), *c = connect_or_bail();
        _cleanup_free_ char *session = NULL;
        DcInfo conn_sb, sess_sb, got;
        unsigned stopped = 0;

        is_int(dc_attach(holder, "scope", NULL, -1, &session, NULL, NULL), 0, "scope: a session held open");
        is_int(dc_create(c, session, NULL, CWSANDBOXD__V1__SCOPE__SCOPE_CONNECTION, true, &conn_sb, NULL), 0,
               "scope: a connection-scoped sandbox from a second connection");
        is_int(dc_create(c, session, NULL, CWSANDBOXD__V1__SCOPE__SCOPE_SESSION, true, &sess_sb, NULL), 0,
               "scope: and a session-scoped one");
        frame_client_free(c);
        ok(backend_reaches(conn_sb.sandbox_id, BC_STATE(TERMINATED)),
           "scope: the connection-scoped sandbox stops when its connection closes");
        is_int(dc_get(holder, sess_sb.handle_id, true, &got, NULL), 0, "scope: the session-scoped one is still tracked");
        is_int(got.state, STATE(RUNNING), "scope: and RUNNING");
        ok(session_visible(holder, "scope"), "scope: the session lives on");
        is_int(dc_close_session(holder, session, &stopped, NULL, NULL), 0, "scope: close");
        is_int(stopped, 1, "scope: close stops the one left");
        frame_client_free(holder);
}

/* ---- list / from_id / adopt --------------------------------------------------------------- */

static void test_adopt(void) {
        _cleanup_free_ char *tag = test_marker("adopt"), *session = NULL;
        const char *const tags[] = { tag, "cwsandboxd-uid-0", NULL };
        BcSandboxOpts o = test_keepalive_opts();
        _cleanup_bc_ BcSandbox *x = NULL, *y = NULL;
        FrameClient *c = connect_or_bail();
        unsigned n = 0, stopped = 0;
        DcInfo info;

        o.tags = tags;
        if (bc_create_running(backend, &o, TEST_START_MS, &x, NULL) != 0 ||
            bc_create_running(backend, &o, TEST_START_MS, &y, NULL) != 0)
                bail_out("adopt: cannot create on the backend");
        is_int(dc_attach(c, "adopter", NULL, -1, &session, NULL, NULL), 0, "adopt: a session");
        is_int(dc_list_count(c, "", tag, false, false, &n, NULL), 0, "adopt: a backend-wide list by tag");
        is_int(n, 2, "adopt: finds both sandboxes made outside the daemon");
        is_int(dc_adopt(c, session, x->sandbox_id, false, &info, NULL), 0, "adopt: from_id without adopting");
        is_int(info.state, STATE(RUNNING), "adopt: from_id reports RUNNING");
        ok(info.session_id[0] == 0, "adopt: from_id(adopt=false) leaves it outside the session");
        is_int(dc_adopt(c, session, x->sandbox_id, true, &info, NULL), 0, "adopt: adopt(id)");
        ok(streq(info.session_id, session), "adopt: now in the session");
        is_int(dc_list_count(c, session, tag, false, true, &n, NULL), 0, "adopt: session list with adopt=true");
        is_int(n, 2, "adopt: lists both");
        is_int(dc_close_session(c, session, &stopped, NULL, NULL), 0, "adopt: close the session");
        is_int(stopped, 2, "adopt: both adopted sandboxes were stopped with it");
        ok(backend_reaches(x->sandbox_id, BC_STATE(TERMINATED)) && backend_reaches(y->sandbox_id, BC_STATE(TERMINATED)),
           "adopt: both TERMINATED on the backend");
        frame_client_free(c);
}

int main(void) {
        int r, status = -1;

        if (test_needs_root())
                return 0;
        r = daemon_proc_start(NULL, &daemon_proc);
        if (r < 0)
                bail_out("cannot start cwsandboxd: %s", strerror(-r));
        r = daemon_proc_backend(daemon_proc, &backend);
        if (r < 0)
                bail_out("cannot reach the embedded backend: %s", strerror(-r));

        test_shared_session();
        test_merge();
        test_linger();
        test_scope();
        test_adopt();

        backend = bc_close(backend);
        is_int(daemon_proc_stop(daemon_proc, 30000, &status), 0, "the daemon stops on SIGTERM");
        ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "and exits 0");
        daemon_proc_free(daemon_proc);
        return done();
}
