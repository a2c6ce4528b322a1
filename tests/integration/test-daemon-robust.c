/*
 * What the daemon withstands, end to end: a real cwsandboxd with its
 * embedded backend, driven by real client processes speaking raw frames.
 *
 * - Another uid: an unprivileged process is refused everything of root's
 *   (its session by name and by id, its sandbox by handle id and by backend
 *   id, a sandbox with no owner tag, listings, adoption, status counts),
 *   while its own session works; root sees and acts on the other user's
 *   session.
 * - Bad peers: a frame that does not decode, a header announcing more than
 *   --max-frame-bytes, and a request before Hello each cost only that
 *   connection (an error frame, then the close); a client connected before,
 *   with a call in flight, and one connected after carry on. A frame of
 *   exactly the limit, and one sent a byte at a time, are served.
 * - The backend down: injected UNAVAILABLE faults come back as UNAVAILABLE,
 *   retryable, and calls work again once the faults are gone; the embedded
 *   backend killed with SIGKILL gives UNAVAILABLE at once and is restarted.
 * - A client killed while it holds a scope=connection sandbox: the sandbox is
 *   stopped on the backend while the session (linger -1) stays.
 * - SIGTERM with clients connected: the daemon exits 0.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <grpc/status.h>

#include "daemon-calls.h"
#include "daemon-proc.h"
#include "frame.h"
#include "test-util.h"

#define NOBODY          65534
#define MAX_FRAME       (64 * 1024)
#define RECV_MS         30000           /* a guard against hanging, not an expectation */
#define RECOVER_MS      30000
#define KILL_ROUNDS     3

#define STATE(x) CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_##x
#define SCOPE(x) CWSANDBOXD__V1__SCOPE__SCOPE_##x

typedef Cwsandboxd__V1__ClientFrame ClientFrame;
typedef Cwsandboxd__V1__DaemonFrame DaemonFrame;

static DaemonProc *daemon_proc;

/* A connected, greeted client, or the end of the test. */
static FrameClient *connect_or_bail(void) {
        FrameClient *c = NULL;
        int r = dc_connect(daemon_proc->socket_path, &c);

        if (r != 0)
                bail_out("cannot connect to the daemon: %d", r);
        return c;
}

static bool is_terminal(int state) {
        return state == STATE(COMPLETED) || state == STATE(FAILED) || state == STATE(TERMINATED);
}

/* A running sandbox of the default command in @session, or the end of the test. */
static void start_running(FrameClient *c, const char *session, Cwsandboxd__V1__Scope scope, DcInfo *ret) {
        DcError err = { 0 };
        DcInfo info = { 0 };

        if (dc_create(c, session, NULL, scope, true, &info, &err) != 0 ||
            dc_wait(c, info.handle_id, false, TEST_START_MS, ret, &err) != 0 || ret->state != STATE(RUNNING))
                bail_out("cannot start a sandbox: %s", err.message);
}

/* `echo @word` in @id gives "@word\n" and exit code 0. */
static bool echo_works(FrameClient *c, const char *id, const char *word, DcError *err) {
        _cleanup_free_ char *out = NULL;
        int code = -1;

        if (dc_exec(c, id, (const char *const[]) { "echo", word, NULL }, &out, NULL, &code, err) != 0)
                return false;
        return code == 0 && out && strncmp(out, word, strlen(word)) == 0 && out[strlen(word)] == '\n';
}

/* The session called @name in a ListSessions frame, or NULL. */
static const Cwsandboxd__V1__Session *find_session(const DaemonFrame *list, const char *name) {
        for (size_t i = 0; list && list->sessions && i < list->sessions->n_sessions; i++)
                if (streq(list->sessions->sessions[i]->name, name))
                        return list->sessions->sessions[i];
        return NULL;
}

/* A test point that passes when @cond holds; on failure, what the daemon said. */
static bool says_ok(bool cond, const DcError *err, const char *name) {
        if (!ok(cond, "%s", name)) {
                diag("  error %d: %s", err->code, err->message);
                return false;
        }
        return true;
}

/* ---- another uid -------------------------------------------------------------------------- */

enum {
        CHECK_CONNECT,
        CHECK_ATTACH,
        CHECK_CREATE_IN,
        CHECK_LIST_IN,
        CHECK_GET_HANDLE,
        CHECK_GET_SANDBOX,
        CHECK_WAIT,
        CHECK_STOP_HANDLE,
        CHECK_STOP_SANDBOX,
        CHECK_EXEC_HANDLE,
        CHECK_EXEC_SANDBOX,
        CHECK_DELETE,
        CHECK_CLOSE,
        CHECK_DETACH,
        CHECK_METRICS,
        CHECK_FOREIGN_GET,
        CHECK_FOREIGN_EXEC,
        CHECK_FOREIGN_STOP,
        CHECK_OWN_SESSION,
        CHECK_OWN_UNSTARTED,
        CHECK_OWN_SANDBOX,
        CHECK_OWN_EXEC,
        CHECK_SESSIONS_MINE,
        CHECK_SESSIONS_ROOT,
        CHECK_LIST_MINE,
        CHECK_LIST_ROOT,
        CHECK_ADOPT_ROOT,
        CHECK_ADOPT_FOREIGN,
        CHECK_LIST_ADOPT,
        CHECK_STATUS,
        _CHECK_MAX,
};

static const char *const check_names[_CHECK_MAX] = {
        [CHECK_CONNECT] = "connects to the 0666 socket and says Hello",
        [CHECK_ATTACH] = "attaching root's session by name is PERMISSION_DENIED",
        [CHECK_CREATE_IN] = "creating a sandbox in root's session is PERMISSION_DENIED",
        [CHECK_LIST_IN] = "listing root's session by id is PERMISSION_DENIED",
        [CHECK_GET_HANDLE] = "get of root's sandbox by handle id is PERMISSION_DENIED",
        [CHECK_GET_SANDBOX] = "get (refresh) of root's sandbox by backend id is PERMISSION_DENIED",
        [CHECK_WAIT] = "wait on root's sandbox is PERMISSION_DENIED",
        [CHECK_STOP_HANDLE] = "stop of root's sandbox by handle id is PERMISSION_DENIED",
        [CHECK_STOP_SANDBOX] = "stop of root's sandbox by backend id is PERMISSION_DENIED",
        [CHECK_EXEC_HANDLE] = "exec in root's sandbox by handle id is PERMISSION_DENIED",
        [CHECK_EXEC_SANDBOX] = "exec in root's sandbox by backend id is PERMISSION_DENIED",
        [CHECK_DELETE] = "delete of root's sandbox is PERMISSION_DENIED",
        [CHECK_CLOSE] = "closing root's session is PERMISSION_DENIED",
        [CHECK_DETACH] = "detaching root's session is PERMISSION_DENIED",
        [CHECK_METRICS] = "metrics of root's session are PERMISSION_DENIED",
        [CHECK_FOREIGN_GET] = "get of a sandbox unknown to the daemon, without owner tag, is PERMISSION_DENIED",
        [CHECK_FOREIGN_EXEC] = "exec in it is PERMISSION_DENIED",
        [CHECK_FOREIGN_STOP] = "stop of it is PERMISSION_DENIED",
        [CHECK_OWN_SESSION] = "attaching a session of its own creates it",
        [CHECK_OWN_UNSTARTED] = "an unstarted handle in it is created and found (UNSTARTED)",
        [CHECK_OWN_SANDBOX] = "a sandbox in its own session starts and runs",
        [CHECK_OWN_EXEC] = "exec in its own sandbox works",
        [CHECK_SESSIONS_MINE] = "the session list shows its own session",
        [CHECK_SESSIONS_ROOT] = "the session list shows none of root's",
        [CHECK_LIST_MINE] = "a backend-wide list shows its own sandbox",
        [CHECK_LIST_ROOT] = "a backend-wide list shows none of root's sandboxes, nor the untagged one",
        [CHECK_ADOPT_ROOT] = "adopting root's sandbox into its own session is PERMISSION_DENIED",
        [CHECK_ADOPT_FOREIGN] = "adopting the untagged sandbox is PERMISSION_DENIED",
        [CHECK_LIST_ADOPT] = "a list with adopt in its own session takes in nothing of root's",
        [CHECK_STATUS] = "status counts only its own sandboxes",
};

/* What root has that the other user must not reach. */
typedef struct RootOwned {
        const char *session_name;
        const char *session_id;
        DcInfo sandbox;
        char foreign_id[96];            /* created on the backend directly: no owner tag */
} RootOwned;

/* What the unprivileged child reports through a pipe. */
typedef struct ChildReport {
        bool passed[_CHECK_MAX];
        int codes[_CHECK_MAX];          /* the Error code each call saw */
        char session_id[96];
        DcInfo sandbox;
} ChildReport;

static void expect_denied(ChildReport *rep, int check, int code) {
        rep->codes[check] = code;
        rep->passed[check] = code == GRPC_STATUS_PERMISSION_DENIED;
}

static void other_uid_checks(ChildReport *rep, FrameClient *c, const RootOwned *root) {
        const char *const echo[] = { "echo", "no", NULL };
        const DcInfo *root_sb = &root->sandbox;
        _cleanup_free_ char *mine = NULL;
        DaemonFrame *list = NULL;
        DcError err = { 0 };
        bool created = false;
        DcInfo info = { 0 };

        expect_denied(rep, CHECK_ATTACH, dc_attach(c, root->session_name, NULL, DC_LINGER_UNSET, NULL, NULL, &err));
        expect_denied(rep, CHECK_CREATE_IN, dc_create(c, root->session_id, NULL, SCOPE(SESSION), false, &info, &err));
        expect_denied(rep, CHECK_LIST_IN, dc_list(c, root->session_id, NULL, true, false, &list, &err));
        list = (frame_client_frame_free(list), NULL);
        expect_denied(rep, CHECK_GET_HANDLE, dc_get(c, root_sb->handle_id, false, &info, &err));
        expect_denied(rep, CHECK_GET_SANDBOX, dc_get(c, root_sb->sandbox_id, true, &info, &err));
        expect_denied(rep, CHECK_WAIT, dc_wait(c, root_sb->handle_id, true, 5000, &info, &err));
        expect_denied(rep, CHECK_STOP_HANDLE, dc_stop(c, root_sb->handle_id, 0, false, &info, &err));
        expect_denied(rep, CHECK_STOP_SANDBOX, dc_stop(c, root_sb->sandbox_id, 0, true, &info, &err));
        expect_denied(rep, CHECK_EXEC_HANDLE, dc_exec(c, root_sb->handle_id, echo, NULL, NULL, NULL, &err));
        expect_denied(rep, CHECK_EXEC_SANDBOX, dc_exec(c, root_sb->sandbox_id, echo, NULL, NULL, NULL, &err));
        expect_denied(rep, CHECK_DELETE, dc_delete(c, root_sb->sandbox_id, true, &err));
        expect_denied(rep, CHECK_CLOSE, dc_close_session(c, root->session_id, NULL, NULL, &err));
        expect_denied(rep, CHECK_DETACH, dc_detach(c, root->session_id, &err));
        {
                double v;

                expect_denied(rep, CHECK_METRICS, dc_metric(c, root->session_id, "cwsandbox/sandboxes_created", &v,
                                                            &err));
        }
        expect_denied(rep, CHECK_FOREIGN_GET, dc_get(c, root->foreign_id, true, &info, &err));
        expect_denied(rep, CHECK_FOREIGN_EXEC, dc_exec(c, root->foreign_id, echo, NULL, NULL, NULL, &err));
        expect_denied(rep, CHECK_FOREIGN_STOP, dc_stop(c, root->foreign_id, 0, true, &info, &err));

        rep->codes[CHECK_OWN_SESSION] = dc_attach(c, "nobody-session", NULL, -1, &mine, &created, &err);
        rep->passed[CHECK_OWN_SESSION] = rep->codes[CHECK_OWN_SESSION] == 0 && created;
        if (!rep->passed[CHECK_OWN_SESSION])
                return;
        snprintf(rep->session_id, sizeof(rep->session_id), "%s", mine);
        rep->codes[CHECK_OWN_UNSTARTED] = dc_create(c, mine, NULL, SCOPE(SESSION), false, &info, &err);
        if (rep->codes[CHECK_OWN_UNSTARTED] == 0) {
                DcInfo got;

                rep->codes[CHECK_OWN_UNSTARTED] = dc_get(c, info.handle_id, false, &got, &err);
                rep->passed[CHECK_OWN_UNSTARTED] = rep->codes[CHECK_OWN_UNSTARTED] == 0 &&
                                                   streq(got.handle_id, info.handle_id) &&
                                                   got.state == STATE(UNSTARTED);
        }
        rep->codes[CHECK_OWN_SANDBOX] = dc_create(c, mine, NULL, SCOPE(SESSION), true, &info, &err);
        if (rep->codes[CHECK_OWN_SANDBOX] == 0)
                rep->codes[CHECK_OWN_SANDBOX] = dc_wait(c, info.handle_id, false, TEST_START_MS, &rep->sandbox,
                                                        &err);
        rep->passed[CHECK_OWN_SANDBOX] = rep->codes[CHECK_OWN_SANDBOX] == 0 &&
                                         rep->sandbox.state == STATE(RUNNING);
        if (!rep->passed[CHECK_OWN_SANDBOX])
                return;
        err = (DcError) { 0 };
        rep->passed[CHECK_OWN_EXEC] = echo_works(c, rep->sandbox.handle_id, "mine", &err);
        rep->codes[CHECK_OWN_EXEC] = err.code;

        rep->codes[CHECK_SESSIONS_MINE] = dc_list_sessions(c, &list, &err);
        if (rep->codes[CHECK_SESSIONS_MINE] == 0) {
                rep->passed[CHECK_SESSIONS_MINE] = find_session(list, "nobody-session") != NULL;
                rep->passed[CHECK_SESSIONS_ROOT] = !find_session(list, root->session_name) &&
                                                   list->sessions->n_sessions == 1;
        }
        list = (frame_client_frame_free(list), NULL);

        rep->codes[CHECK_LIST_MINE] = dc_list(c, "", NULL, true, false, &list, &err);
        if (rep->codes[CHECK_LIST_MINE] == 0) {
                rep->passed[CHECK_LIST_MINE] = dc_list_has(list, rep->sandbox.sandbox_id);
                rep->passed[CHECK_LIST_ROOT] = !dc_list_has(list, root_sb->sandbox_id) &&
                                               !dc_list_has(list, root->foreign_id) &&
                                               list->sandboxes->n_sandboxes == 1;
        }
        list = (frame_client_frame_free(list), NULL);

        expect_denied(rep, CHECK_ADOPT_ROOT, dc_adopt(c, mine, root_sb->sandbox_id, true, &info, &err));
        expect_denied(rep, CHECK_ADOPT_FOREIGN, dc_adopt(c, mine, root->foreign_id, true, &info, &err));
        /* Its session then still holds its own two: the unstarted one and the running one. */
        rep->codes[CHECK_LIST_ADOPT] = dc_list(c, mine, NULL, true, true, &list, &err);
        if (rep->codes[CHECK_LIST_ADOPT] == 0) {
                const Cwsandboxd__V1__Session *s;

                list = (frame_client_frame_free(list), NULL);
                rep->codes[CHECK_LIST_ADOPT] = dc_list_sessions(c, &list, &err);
                s = find_session(list, "nobody-session");
                rep->passed[CHECK_LIST_ADOPT] = s && s->sandbox_count == 2;
        }
        list = (frame_client_frame_free(list), NULL);

        rep->codes[CHECK_STATUS] = dc_status(c, &list, &err);
        if (rep->codes[CHECK_STATUS] == 0) {
                unsigned n = 0;

                for (size_t i = 0; i < list->status->n_sandboxes_by_state; i++)
                        n += list->status->sandboxes_by_state[i]->value;
                rep->passed[CHECK_STATUS] = n == 2;
                rep->codes[CHECK_STATUS] = (int)n;
        }
        frame_client_frame_free(list);
}

_noreturn_ static void other_uid_child(int out, const RootOwned *root) {
        ChildReport rep = { 0 };
        FrameClient *c = NULL;

        if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0 || getuid() != NOBODY)
                _exit(2);
        rep.codes[CHECK_CONNECT] = dc_connect(daemon_proc->socket_path, &c);
        rep.passed[CHECK_CONNECT] = rep.codes[CHECK_CONNECT] == 0;
        if (c)
                other_uid_checks(&rep, c, root);
        frame_client_free(c);
        _exit(write(out, &rep, sizeof(rep)) == sizeof(rep) ? 0 : 3);
}

/* Root sees the other user's session and may act on all of it. */
static void root_acts_on_theirs(FrameClient *c, const ChildReport *rep) {
        const Cwsandboxd__V1__Session *s;
        _cleanup_free_ char *joined = NULL;
        DaemonFrame *list = NULL;
        DcError err = { 0 };
        bool created = true;
        unsigned stopped = 0, failed = 99;
        DcInfo info = { 0 };

        is_int(dc_list_sessions(c, &list, &err), 0, "root: lists sessions");
        s = find_session(list, "nobody-session");
        ok(s && s->owner_uid == NOBODY && streq(s->session_id, rep->session_id),
           "root: sees the session of uid %d, owned by it", NOBODY);
        list = (frame_client_frame_free(list), NULL);

        is_int(dc_list(c, "", NULL, true, false, &list, &err), 0, "root: lists every sandbox");
        ok(dc_list_has(list, rep->sandbox.sandbox_id), "root: the backend-wide list shows the other user's sandbox");
        list = (frame_client_frame_free(list), NULL);

        is_int(dc_attach(c, "nobody-session", NULL, DC_LINGER_UNSET, &joined, &created, &err), 0,
               "root: attaches the other user's session by name");
        ok(!created && joined && streq(joined, rep->session_id), "root: joins it rather than making a new one");
        is_int(dc_get(c, rep->sandbox.handle_id, true, &info, &err), 0, "root: get of its sandbox by handle id");
        is_int(info.state, STATE(RUNNING), "root: it is RUNNING");
        says_ok(echo_works(c, rep->sandbox.sandbox_id, "root", &err), &err, "root: exec in it by backend id works");
        if (says_ok(dc_stop(c, rep->sandbox.handle_id, 1, false, &info, &err) == 0, &err, "root: stops it"))
                ok(is_terminal(info.state), "root: it ended (%s)", dc_state_name(info.state));
        is_int(dc_close_session(c, rep->session_id, &stopped, &failed, &err), 0, "root: closes that session");
        is_int(failed, 0, "root: closing it reports no failure");
}

/*
 * A sandbox made on the backend directly, so the daemon knows nothing of it
 * and it carries no owner tag. A child process makes it: this process stays
 * free of gRPC until its forks are done.
 */
static void create_foreign(char *ret_id, size_t size) {
        int fds[2], status = -1;
        char id[96] = "";
        pid_t pid;

        if (pipe2(fds, O_CLOEXEC) < 0)
                bail_out("pipe: %m");
        fflush(stdout);
        pid = fork();
        if (pid < 0)
                bail_out("fork: %m");
        if (pid == 0) {
                BcSandboxOpts o = test_keepalive_opts();
                BcClient *b = NULL;
                BcSandbox *sb = NULL;

                close(fds[0]);
                if (daemon_proc_backend(daemon_proc, &b) < 0 || bc_create_running(b, &o, TEST_START_MS, &sb, NULL) != 0)
                        _exit(1);
                snprintf(id, sizeof(id), "%s", sb->sandbox_id);
                _exit(write(fds[1], id, sizeof(id)) == sizeof(id) ? 0 : 1);
        }
        close(fds[1]);
        if (read(fds[0], id, sizeof(id)) != sizeof(id) || !*id)
                bail_out("cannot create a sandbox on the backend directly");
        close(fds[0]);
        (void)waitpid(pid, &status, 0);
        snprintf(ret_id, size, "%s", id);
}

static void test_other_uid(FrameClient *c, const char *root_session, const DcInfo *root_sb) {
        RootOwned root = { .session_name = "root-session", .session_id = root_session, .sandbox = *root_sb };
        ChildReport rep = { 0 };
        int fds[2], status = -1;
        DcError err = { 0 };
        DcInfo info = { 0 };
        pid_t pid;

        create_foreign(root.foreign_id, sizeof(root.foreign_id));
        if (pipe2(fds, O_CLOEXEC) < 0)
                bail_out("pipe: %m");
        fflush(stdout);
        pid = fork();
        if (pid < 0)
                bail_out("fork: %m");
        if (pid == 0) {
                close(fds[0]);
                other_uid_child(fds[1], &root);
        }
        close(fds[1]);
        ok(read(fds[0], &rep, sizeof(rep)) == sizeof(rep), "uid %d: the child ran its checks", NOBODY);
        close(fds[0]);
        (void)waitpid(pid, &status, 0);
        ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "uid %d: the child exited 0", NOBODY);
        for (int i = 0; i < _CHECK_MAX; i++)
                if (!ok(rep.passed[i], "uid %d: %s", NOBODY, check_names[i]))
                        diag("  it saw code %d", rep.codes[i]);

        /* Root's own sandboxes came through every refused stop and delete. */
        if (says_ok(dc_get(c, root_sb->handle_id, true, &info, &err) == 0, &err, "root: its sandbox is still there"))
                is_int(info.state, STATE(RUNNING), "root: and still RUNNING");
        if (says_ok(dc_get(c, root.foreign_id, true, &info, &err) == 0, &err,
                    "root: get of the untagged sandbox by backend id works"))
                is_int(info.state, STATE(RUNNING), "root: and it is still RUNNING");
        if (says_ok(dc_stop(c, root.foreign_id, 1, false, &info, &err) == 0, &err, "root: stops the untagged sandbox"))
                ok(is_terminal(info.state), "root: it ended (%s)", dc_state_name(info.state));
        if (rep.passed[CHECK_OWN_SANDBOX])
                root_acts_on_theirs(c, &rep);
}

/* ---- bad peers ------------------------------------------------------------------------------ */

/* The daemon sends an error frame (call id 0, @code) and closes the connection. */
static void expect_violation(FrameClient *bad, int code, const char *what) {
        DaemonFrame *f = NULL;
        int r = frame_client_recv(bad, RECV_MS, &f);

        if (ok(r == 0 && f->final && f->call_id == 0 && f->error, "%s: an error frame with call id 0", what)) {
                is_int(f->error->code, code, "%s: with the expected code", what);
                diag("  %s", f->error->message);
                ok(*f->error->message, "%s: and a message", what);
        }
        frame_client_frame_free(f);
        f = NULL;
        r = frame_client_recv(bad, RECV_MS, &f);
        is_int(r, FRAME_CLIENT_E_EOF, "%s: then the connection is closed", what);
        frame_client_frame_free(f);
}

static bool client_works(FrameClient *c, const DcInfo *sb) {
        DaemonFrame *status = NULL;
        DcError err = { 0 };
        DcInfo info = { 0 };
        bool good;

        good = dc_status(c, &status, &err) == 0 && status->status->connections >= 1 &&
               dc_get(c, sb->handle_id, false, &info, &err) == 0 && info.state == STATE(RUNNING) &&
               echo_works(c, sb->handle_id, "alive", &err);
        if (!good)
                diag("  call failed: %d %s", err.code, err.message);
        frame_client_frame_free(status);
        return good;
}

static void send_raw_or_bail(FrameClient *c, const void *data, size_t n) {
        if (frame_client_send_raw(c, data, n) != 0)
                bail_out("cannot send raw bytes");
}

static void test_bad_peers(const DcInfo *sb) {
        /* Field 1 with wire type 7, which does not exist. */
        static const uint8_t bad_wire_type[] = { 0, 0, 0, 3, 0x0f, 0x01, 0x02 };
        /* Field 10 (hello), length 100, then only two bytes. */
        static const uint8_t truncated[] = { 0, 0, 0, 4, 0x52, 100, 0x08, 0x01 };
        /* One byte over the limit, announced; no body follows. */
        static const uint8_t oversized[] = { 0, (MAX_FRAME + 1) >> 16, ((MAX_FRAME + 1) >> 8) & 0xff,
                                             (MAX_FRAME + 1) & 0xff };
        /* 1 MiB announced, with the start of a body. */
        static const uint8_t huge[] = { 0, 0x10, 0, 0, 0x52, 0x02, 0x08, 0x01 };
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__StatusRequest status = CWSANDBOXD__V1__STATUS_REQUEST__INIT;
        Cwsandboxd__V1__WaitSandboxRequest wait = CWSANDBOXD__V1__WAIT_SANDBOX_REQUEST__INIT;
        FrameClient *before = connect_or_bail(), *bad, *after;
        DaemonFrame *reply = NULL;
        DcError err = { 0 };
        uint64_t wait_id, stop_id;
        DcInfo info = { 0 };
        int finals = 0;

        /* The well-behaved client has a call in flight throughout. */
        wait.sandbox_id = (char *)sb->handle_id;
        wait.until_complete = true;
        wait.timeout_ms = 600000;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_WAIT_SANDBOX;
        f.wait_sandbox = &wait;
        is_int(dc_send(before, &f, &err), 0, "bad peers: a client connected before has a wait in flight");
        wait_id = f.call_id;

        bad = connect_or_bail();
        send_raw_or_bail(bad, bad_wire_type, sizeof(bad_wire_type));
        expect_violation(bad, GRPC_STATUS_INVALID_ARGUMENT, "malformed frame after Hello");
        bad = frame_client_free(bad);
        ok(client_works(before, sb), "bad peers: the earlier client's calls work");

        if (frame_client_connect(daemon_proc->socket_path, &bad) != 0)
                bail_out("connect");
        send_raw_or_bail(bad, truncated, sizeof(truncated));
        expect_violation(bad, GRPC_STATUS_INVALID_ARGUMENT, "malformed frame instead of Hello");
        bad = frame_client_free(bad);

        bad = connect_or_bail();
        send_raw_or_bail(bad, oversized, sizeof(oversized));
        expect_violation(bad, GRPC_STATUS_RESOURCE_EXHAUSTED, "frame header over --max-frame-bytes");
        bad = frame_client_free(bad);
        bad = connect_or_bail();
        send_raw_or_bail(bad, huge, sizeof(huge));
        expect_violation(bad, GRPC_STATUS_RESOURCE_EXHAUSTED, "frame header announcing 1 MiB");
        bad = frame_client_free(bad);
        ok(client_works(before, sb), "bad peers: the earlier client's calls still work");

        if (frame_client_connect(daemon_proc->socket_path, &bad) != 0)
                bail_out("connect");
        f = (ClientFrame) CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        f.call_id = 7;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_STATUS;
        f.status = &status;
        if (frame_client_send(bad, &f) != 0)
                bail_out("send");
        expect_violation(bad, GRPC_STATUS_FAILED_PRECONDITION, "request before Hello");
        bad = frame_client_free(bad);

        after = connect_or_bail();
        ok(client_works(after, sb), "bad peers: a client connected after works");
        ok(client_works(before, sb), "bad peers: the earlier client still works");
        frame_client_free(after);

        /* The wait in flight all along ends with the sandbox. */
        {
                Cwsandboxd__V1__StopSandboxRequest stop = CWSANDBOXD__V1__STOP_SANDBOX_REQUEST__INIT;

                stop.sandbox_id = (char *)sb->handle_id;
                stop.has_grace = true;
                stop.grace_seconds = 1;
                f = (ClientFrame) CWSANDBOXD__V1__CLIENT_FRAME__INIT;
                f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_STOP_SANDBOX;
                f.stop_sandbox = &stop;
                is_int(dc_send(before, &f, &err), 0, "bad peers: the earlier client stops the sandbox");
                stop_id = f.call_id;
        }
        for (int i = 0; i < 2; i++) {
                int r = dc_recv_final(before, RECV_MS * 2, &reply, &err);

                if (r == 0 && reply->call_id == wait_id && reply->sandbox) {
                        info.state = reply->sandbox->state;
                        ok(is_terminal(info.state), "bad peers: the wait in flight ends (%s)",
                           dc_state_name(info.state));
                        finals++;
                } else if (r == 0 && reply->call_id == stop_id)
                        finals++;
                else
                        diag("unexpected reply %d: %s", r, err.message);
                frame_client_frame_free(reply);
                reply = NULL;
        }
        is_int(finals, 2, "bad peers: both calls of the earlier client ended");
        frame_client_free(before);
}

/* The next final frame on @c is an answer to call @id without an error. */
static bool answered(FrameClient *c, uint64_t id) {
        DaemonFrame *f = NULL;
        DcError err = { 0 };
        bool good;

        good = dc_recv_final(c, RECV_MS, &f, &err) == 0 && f->call_id == id && f->status;
        if (!good)
                diag("  error %d: %s", err.code, err.message);
        frame_client_frame_free(f);
        return good;
}

/*
 * Frames that are unusual but valid: one of exactly --max-frame-bytes (a
 * status request padded with an unknown field, which protobuf skips), and
 * one that arrives a byte at a time.
 */
static void test_awkward_frames(void) {
        /* Call id 5, status {}, then the key of field 1000 (bytes), whose value fills the rest. */
        static const uint8_t start[] = { 0x08, 5, 0x92, 0x03, 0x00, 0xc2, 0x3e };
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__StatusRequest status = CWSANDBOXD__V1__STATUS_REQUEST__INIT;
        FrameClient *c = connect_or_bail();
        _cleanup_free_ uint8_t *buf = malloc(FRAME_HEADER_SIZE + MAX_FRAME);
        size_t n, pad;

        if (!buf || frame_encode_header(buf, MAX_FRAME) < 0)
                bail_out("frame header");
        n = FRAME_HEADER_SIZE;
        memcpy(buf + n, start, sizeof(start));
        n += sizeof(start);
        /* Its length takes three bytes of varint. */
        pad = FRAME_HEADER_SIZE + MAX_FRAME - n - 3;
        buf[n++] = 0x80 | (pad & 0x7f);
        buf[n++] = 0x80 | ((pad >> 7) & 0x7f);
        buf[n++] = (pad >> 14) & 0x7f;
        memset(buf + n, 'x', pad);
        n += pad;
        send_raw_or_bail(c, buf, n);
        ok(answered(c, 5), "a frame of exactly --max-frame-bytes is accepted and answered");

        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_STATUS;
        f.status = &status;
        f.call_id = 6;
        n = cwsandboxd__v1__client_frame__get_packed_size(&f);
        if (frame_encode_header(buf, n) < 0)
                bail_out("header");
        (void)cwsandboxd__v1__client_frame__pack(&f, buf + FRAME_HEADER_SIZE);
        /* The pauses let the daemon see the pieces in separate reads; a limit of nothing. */
        for (size_t i = 0; i < FRAME_HEADER_SIZE + n; i++) {
                send_raw_or_bail(c, buf + i, 1);
                test_sleep_ms(2);
        }
        ok(answered(c, 6), "a frame sent a byte at a time is understood");
        frame_client_free(c);
}

/* ---- the backend down ---------------------------------------------------------------------- */

static uint64_t injected(BcClient *b, const char *method) {
        Cwsandboxlocal__V1__GetCountersResponse *r = NULL;
        const Cwsandboxlocal__V1__MethodCounter *m;
        uint64_t n = 0;

        if (bc_get_counters(b, false, &r, NULL) == 0 && (m = bc_counter(r, method)))
                n = m->injected;
        bc_free(r);
        return n;
}

static void expect_unavailable(int r, const DcError *err, const char *what) {
        if (is_int(r, GRPC_STATUS_UNAVAILABLE, "%s: UNAVAILABLE", what)) {
                ok(err->retryable, "%s: marked retryable", what);
                ok(*err->message, "%s: with a message", what);
                diag("  %s", err->message);
        } else
                diag("  %s", err->message);
}

static void test_faults(BcClient *b, FrameClient *c, const char *session, const DcInfo *sb) {
        Cwsandboxlocal__V1__Fault faults[2] = { CWSANDBOXLOCAL__V1__FAULT__INIT, CWSANDBOXLOCAL__V1__FAULT__INIT };
        DcError err = { 0 };
        DcInfo info = { 0 }, unstarted;
        int r;

        faults[0].method = (char *)"GetSandbox";
        faults[1].method = (char *)"CreateSandbox";
        for (int i = 0; i < 2; i++) {
                faults[i].error_rate = 1.0;
                faults[i].error_code = GRPC_STATUS_UNAVAILABLE;
        }
        if (bc_set_faults(b, faults, ELEMENTSOF(faults), NULL) != 0)
                bail_out("cannot set faults");

        r = dc_get(c, sb->handle_id, true, &info, &err);
        expect_unavailable(r, &err, "faults: get (refresh)");
        r = dc_create(c, session, NULL, SCOPE(SESSION), true, &info, &err);
        expect_unavailable(r, &err, "faults: create (start)");
        if (dc_create(c, session, NULL, SCOPE(SESSION), false, &unstarted, &err) != 0)
                bail_out("create (no start): %s", err.message);
        r = dc_start(c, unstarted.handle_id, &info, &err);
        expect_unavailable(r, &err, "faults: start of an unstarted handle");
        ok(injected(b, "GetSandbox") >= 1 && injected(b, "CreateSandbox") >= 1,
           "faults: the backend injected them (the errors are the backend's)");

        if (bc_set_faults(b, NULL, 0, NULL) != 0)
                bail_out("cannot clear faults");
        if (says_ok(dc_get(c, sb->handle_id, true, &info, &err) == 0, &err, "faults cleared: get (refresh) works"))
                is_int(info.state, STATE(RUNNING), "faults cleared: the sandbox is RUNNING");
        if (says_ok(dc_create(c, session, NULL, SCOPE(SESSION), true, &info, &err) == 0, &err,
                    "faults cleared: create (start) works"))
                says_ok(dc_wait(c, info.handle_id, false, TEST_START_MS, &info, &err) == 0 &&
                        info.state == STATE(RUNNING), &err, "faults cleared: and the sandbox runs");
        /* The handle whose start failed starts now, with its frozen request. */
        if (says_ok(dc_start(c, unstarted.handle_id, &info, &err) == 0 && *info.sandbox_id, &err,
                    "faults cleared: the handle whose start failed starts"))
                says_ok(dc_wait(c, unstarted.handle_id, false, TEST_START_MS, &info, &err) == 0 &&
                        info.state == STATE(RUNNING), &err, "faults cleared: and it runs");
}

/* The embedded backend: the daemon's child whose command line names our state directory. */
static pid_t find_backend(void) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        pid_t found = 0;

        if (!d)
                return 0;
        while (!found && (e = readdir(d))) {
                char path[64], buf[4096], *p, *base, *args;
                pid_t pid = (pid_t)strtol(e->d_name, &p, 10), ppid = 0;
                size_t n;
                FILE *f;

                if (*p || pid <= 0)
                        continue;
                snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
                f = fopen(path, "re");
                if (!f)
                        continue;
                n = fread(buf, 1, sizeof(buf) - 1, f);
                fclose(f);
                buf[n] = 0;
                p = strrchr(buf, ')');
                if (!p || sscanf(p + 1, " %*c %d", &ppid) != 1 || ppid != daemon_proc->pid)
                        continue;
                snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
                f = fopen(path, "re");
                if (!f)
                        continue;
                n = fread(buf, 1, sizeof(buf) - 1, f);
                fclose(f);
                buf[n] = 0;
                /* argv[0] ends the first string; the rest, joined, names the state directory. */
                base = strrchr(buf, '/') ? strrchr(buf, '/') + 1 : buf;
                args = buf + strlen(buf) + 1;
                for (char *q = args; q + 1 < buf + n; q++)
                        if (!*q)
                                *q = ' ';
                if (streq(base, "cwsandbox-local") && args <= buf + n && strstr(args, daemon_proc->state_dir))
                        found = pid;
        }
        closedir(d);
        return found;
}

/* The backend's pid once one is up again (not @old), or 0 after RECOVER_MS. */
static pid_t wait_new_backend(pid_t old) {
        for (int64_t end = test_mono_ms() + RECOVER_MS; test_mono_ms() < end; test_sleep_ms(50)) {
                pid_t pid = find_backend();

                if (pid > 0 && pid != old)
                        return pid;
        }
        return 0;
}

/* Create (start) until it succeeds; every failure on the way must be UNAVAILABLE. */
static bool create_until_up(FrameClient *c, const char *session, DcInfo *ret, bool *ret_only_unavailable) {
        DcError err = { 0 };

        *ret_only_unavailable = true;
        for (int64_t end = test_mono_ms() + RECOVER_MS; test_mono_ms() < end; test_sleep_ms(100)) {
                int r = dc_create(c, session, NULL, SCOPE(SESSION), true, ret, &err);

                if (r == 0)
                        return true;
                if (r != GRPC_STATUS_UNAVAILABLE) {
                        diag("  create during recovery: %d %s", r, err.message);
                        *ret_only_unavailable = false;
                }
        }
        return false;
}

static void test_backend_killed(FrameClient *c, const char *session, DcInfo *sb) {
        bool seen = false, only_unavailable = true, up = false;
        pid_t pid = find_backend(), again = 0;
        DcError err = { 0 };
        DcInfo info = { 0 };

        ok(pid > 0, "backend killed: the embedded backend is a child of the daemon (pid %d)", (int)pid);
        if (pid <= 0)
                return;
        /* The restart is quick; a few rounds make sure one call lands while it is down. */
        for (int round = 0; round < KILL_ROUNDS && !seen; round++) {
                bool only;
                int r;

                if (kill(pid, SIGKILL) < 0)
                        bail_out("kill: %m");
                r = dc_create(c, session, NULL, SCOPE(SESSION), true, &info, &err);
                if (r == GRPC_STATUS_UNAVAILABLE) {
                        seen = true;
                        ok(err.retryable && *err.message, "backend killed: create right away is UNAVAILABLE, "
                           "retryable, with a message");
                        diag("  %s", err.message);
                } else
                        diag("  round %d: create right after the kill gave %d %s", round, r, err.message);
                r = dc_get(c, sb->handle_id, true, &info, &err);
                if (r == GRPC_STATUS_UNAVAILABLE && !seen) {
                        seen = true;
                        ok(err.retryable && *err.message, "backend killed: get (refresh) right away is "
                           "UNAVAILABLE, retryable, with a message");
                        diag("  %s", err.message);
                }
                again = wait_new_backend(pid);
                if (!again)
                        break;
                up = create_until_up(c, session, &info, &only);
                only_unavailable = only_unavailable && only;
                pid = again;
        }
        ok(seen, "backend killed: a call right after the kill saw UNAVAILABLE");
        ok(again > 0, "backend killed: the daemon started a new backend (pid %d)", (int)again);
        ok(up, "backend killed: create (start) succeeds again");
        ok(only_unavailable, "backend killed: every failure on the way was UNAVAILABLE");
        if (!up)
                return;
        says_ok(dc_wait(c, info.handle_id, false, TEST_START_MS, &info, &err) == 0 && info.state == STATE(RUNNING),
                &err, "backend killed: the new sandbox runs");
        says_ok(echo_works(c, info.handle_id, "back", &err), &err, "backend killed: exec in it works");
        *sb = info;
}

/* ---- a killed client's connection-scoped sandbox -------------------------------------------- */

typedef struct KilledReport {
        bool good;
        char session_id[96];
        DcInfo conn_sb, session_sb;
} KilledReport;

_noreturn_ static void holder_child(int out) {
        KilledReport rep = { 0 };
        _cleanup_free_ char *session = NULL;
        FrameClient *c = NULL;
        DcError err = { 0 };

        if (dc_connect(daemon_proc->socket_path, &c) == 0 &&
            dc_attach(c, "kept", NULL, -1, &session, NULL, &err) == 0) {
                snprintf(rep.session_id, sizeof(rep.session_id), "%s", session);
                start_running(c, session, SCOPE(CONNECTION), &rep.conn_sb);
                start_running(c, session, SCOPE(SESSION), &rep.session_sb);
                rep.good = true;
        }
        if (write(out, &rep, sizeof(rep)) != sizeof(rep))
                _exit(3);
        /* Hold the connection until killed. */
        for (;;)
                pause();
}

static void test_killed_client(FrameClient *c, BcClient **backend) {
        BcSandbox *sb = NULL;
        const Cwsandboxd__V1__Session *s;
        DaemonFrame *list = NULL;
        KilledReport rep = { 0 };
        DcError err = { 0 };
        int fds[2], status = -1, r;
        pid_t pid;

        if (pipe2(fds, O_CLOEXEC) < 0)
                bail_out("pipe: %m");
        fflush(stdout);
        pid = fork();
        if (pid < 0)
                bail_out("fork: %m");
        if (pid == 0) {
                close(fds[0]);
                holder_child(fds[1]);
        }
        close(fds[1]);
        if (!ok(read(fds[0], &rep, sizeof(rep)) == sizeof(rep) && rep.good,
                "killed client: it holds a running scope=connection sandbox"))
                bail_out("the holder did not get its sandboxes");
        close(fds[0]);
        if (daemon_proc_backend(daemon_proc, backend) < 0)
                bail_out("cannot reach the backend");
        ok(bc_get_sandbox(*backend, rep.conn_sb.sandbox_id, &sb, NULL) == 0 && sb->status &&
           sb->status->state == BC_STATE(RUNNING), "killed client: its sandbox runs on the backend");
        bc_free(sb);
        sb = NULL;

        kill(pid, SIGKILL);
        (void)waitpid(pid, &status, 0);
        ok(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "killed client: SIGKILL");

        r = bc_wait_state(*backend, rep.conn_sb.sandbox_id, BC_STATE(TERMINATED), RECOVER_MS, &sb, NULL);
        if (!is_int(r, 0, "killed client: its connection-scoped sandbox is TERMINATED on the backend"))
                diag("  last state %s", sb && sb->status ? bc_state_name(sb->status->state) : "?");
        bc_free(sb);
        sb = NULL;
        ok(bc_get_sandbox(*backend, rep.session_sb.sandbox_id, &sb, NULL) == 0 && sb->status &&
           sb->status->state == BC_STATE(RUNNING), "killed client: its session-scoped sandbox still runs");
        bc_free(sb);

        is_int(dc_list_sessions(c, &list, &err), 0, "killed client: sessions listed");
        s = find_session(list, "kept");
        ok(s && streq(s->session_id, rep.session_id), "killed client: the session (linger -1) still exists");
        if (s) {
                is_int(s->connections, 0, "killed client: with no connection left");
                is_int(s->sandbox_count, 1, "killed client: holding only the session-scoped sandbox");
        }
        frame_client_frame_free(list);
        {
                unsigned stopped = 0, failed = 99;

                is_int(dc_close_session(c, rep.session_id, &stopped, &failed, &err), 0,
                       "killed client: root closes the session");
                ok(stopped == 1 && failed == 0, "killed client: one sandbox stopped, no failure (%u, %u)", stopped,
                   failed);
        }
}

/* ---- SIGTERM ----------------------------------------------------------------------------- */

/* Read until the daemon closes; true when it did within RECV_MS per frame. */
static bool drains_to_eof(FrameClient *c, unsigned *ret_finals) {
        unsigned finals = 0;

        for (;;) {
                DaemonFrame *f = NULL;
                int r = frame_client_recv(c, RECV_MS, &f);

                if (r == FRAME_CLIENT_E_EOF) {
                        *ret_finals = finals;
                        return true;
                }
                if (r != 0)
                        return false;
                if (f->final)
                        finals++;
                frame_client_frame_free(f);
        }
}

static bool process_gone(pid_t pid) {
        char path[64], buf[512], *p;
        size_t n;
        FILE *f;

        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        f = fopen(path, "re");
        if (!f)
                return true;
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        p = strrchr(buf, ')');
        /* A zombie waiting for a reaper has exited too. */
        return p && (p[2] == 'Z' || p[2] == 'X');
}

static void test_sigterm(FrameClient *c, const DcInfo *sb) {
        Cwsandboxd__V1__WaitSandboxRequest wait = CWSANDBOXD__V1__WAIT_SANDBOX_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        FrameClient *idle = connect_or_bail();
        pid_t backend = find_backend();
        unsigned finals = 0, ignored;
        int status = -1;
        bool gone = false;

        wait.sandbox_id = (char *)sb->handle_id;
        wait.until_complete = true;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_WAIT_SANDBOX;
        f.wait_sandbox = &wait;
        is_int(dc_send(c, &f, NULL), 0, "SIGTERM: one client has a wait in flight, another is idle");
        /* The wait is in the daemon's hands once a later call on the connection has been answered. */
        ok(client_works(c, sb), "SIGTERM: the busy client's calls work");

        is_int(daemon_proc_stop(daemon_proc, 60000, &status), 0, "SIGTERM: the daemon exits");
        ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "SIGTERM: with status 0 (%d)", status);
        ok(drains_to_eof(c, &finals), "SIGTERM: the busy client's connection is closed");
        diag("  the wait in flight got %u final frame(s) before the close", finals);
        ok(finals <= 1, "SIGTERM: at most one final frame for the wait");
        ok(drains_to_eof(idle, &ignored), "SIGTERM: the idle client's connection is closed");
        for (int64_t end = test_mono_ms() + RECOVER_MS; backend > 0 && !gone && test_mono_ms() < end;
             test_sleep_ms(50))
                gone = process_gone(backend);
        ok(backend > 0 && gone, "SIGTERM: the embedded backend (pid %d) is gone too", (int)backend);
        frame_client_free(idle);
}

int main(void) {
        char max_frame[32];
        _cleanup_free_ char *session = NULL, *down = NULL;
        BcClient *backend = NULL;
        FrameClient *c;
        DcInfo root_sb, sb;
        int r;

        if (test_needs_root())
                return 0;
        snprintf(max_frame, sizeof(max_frame), "%dKiB", MAX_FRAME / 1024);
        r = daemon_proc_start((const char *const[]) { "--max-frame-bytes", max_frame, NULL }, &daemon_proc);
        if (r < 0)
                bail_out("cannot start cwsandboxd: %s", strerror(-r));
        /* The socket is 0666; its directory must let another user reach it, as /run/cwsandboxd does. */
        if (chmod(daemon_proc->dir, 0755) < 0)
                bail_out("chmod: %m");

        /* No gRPC in this process before the forks: the children need nothing of it. */
        c = connect_or_bail();
        if (dc_attach(c, "root-session", NULL, -1, &session, NULL, NULL) != 0)
                bail_out("cannot attach");
        start_running(c, session, SCOPE(SESSION), &root_sb);

        test_other_uid(c, session, &root_sb);
        test_bad_peers(&root_sb);
        test_awkward_frames();
        test_killed_client(c, &backend);

        if (dc_attach(c, "down", NULL, -1, &down, NULL, NULL) != 0)
                bail_out("cannot attach");
        start_running(c, down, SCOPE(SESSION), &sb);
        test_faults(backend, c, down, &sb);
        backend = bc_close(backend);
        test_backend_killed(c, down, &sb);
        if (daemon_proc_backend(daemon_proc, &backend) == 0) {
                Cwsandboxlocal__V1__GetCountersResponse *counters = NULL;

                is_int(bc_get_counters(backend, false, &counters, NULL), 0,
                       "backend killed: the new backend answers with the daemon's token");
                bc_free(counters);
                backend = bc_close(backend);
        } else
                ok(false, "backend killed: the new backend's token file is readable");

        test_sigterm(c, &sb);
        frame_client_free(c);
        daemon_proc_free(daemon_proc);
        return done();
}
