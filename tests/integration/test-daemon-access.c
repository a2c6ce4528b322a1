/*
 * Who may do what, and what bad input costs: another uid is refused
 * everything of root's (sessions, sandboxes by handle id and backend id,
 * backend-wide listing) while its own session works; malformed frames, an
 * oversized frame and a request before Hello close only that connection,
 * after an error frame, while other clients carry on.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <grpc/status.h>

#include "daemon-calls.h"
#include "daemon-proc.h"
#include "test-util.h"

#define OTHER_UID 65534

static DaemonProc *daemon_proc;

/* ---- another uid -------------------------------------------------------------------------- */

/* Each check of the unprivileged child: one byte per result, 1 = as expected. */
enum {
        CHECK_ATTACH,
        CHECK_GET_HANDLE,
        CHECK_GET_SANDBOX,
        CHECK_STOP,
        CHECK_EXEC,
        CHECK_CLOSE,
        CHECK_LIST,
        CHECK_SESSIONS,
        CHECK_OWN,
        _CHECK_MAX,
};

static const char *const check_names[] = {
        [CHECK_ATTACH] = "attaching root's session is PERMISSION_DENIED",
        [CHECK_GET_HANDLE] = "get of root's sandbox by handle id is PERMISSION_DENIED",
        [CHECK_GET_SANDBOX] = "get of root's sandbox by backend id is PERMISSION_DENIED",
        [CHECK_STOP] = "stop of root's sandbox is PERMISSION_DENIED",
        [CHECK_EXEC] = "exec in root's sandbox is PERMISSION_DENIED",
        [CHECK_CLOSE] = "closing root's session is PERMISSION_DENIED",
        [CHECK_LIST] = "a backend-wide list shows none of root's sandboxes",
        [CHECK_SESSIONS] = "the session list does not show root's session",
        [CHECK_OWN] = "its own session and an unstarted handle in it work",
};

static void other_uid_child(int out, const DcInfo *root_sb, const char *root_session) {
        uint8_t res[_CHECK_MAX] = { 0 };
        _cleanup_free_ char *mine = NULL;
        FrameClient *c = NULL;
        DcInfo info;
        DcError err;
        unsigned n = 99;
        bool seen = true;

        if (setgid(OTHER_UID) < 0 || setuid(OTHER_UID) < 0 || dc_connect(daemon_proc->socket_path, &c) != 0)
                _exit(2);
        res[CHECK_ATTACH] = dc_attach(c, "root-only", NULL, DC_LINGER_UNSET, NULL, NULL, &err) ==
                            GRPC_STATUS_PERMISSION_DENIED;
        res[CHECK_GET_HANDLE] = dc_get(c, root_sb->handle_id, false, &info, &err) == GRPC_STATUS_PERMISSION_DENIED;
        res[CHECK_GET_SANDBOX] = dc_get(c, root_sb->sandbox_id, true, &info, &err) == GRPC_STATUS_PERMISSION_DENIED;
        res[CHECK_STOP] = dc_stop(c, root_sb->sandbox_id, 0, false, &info, &err) == GRPC_STATUS_PERMISSION_DENIED;
        res[CHECK_EXEC] = dc_exec(c, root_sb->handle_id, (const char *const[]) { "true", NULL }, NULL, NULL, NULL,
                                  &err) == GRPC_STATUS_PERMISSION_DENIED;
        res[CHECK_CLOSE] = dc_close_session(c, root_session, NULL, NULL, &err) == GRPC_STATUS_PERMISSION_DENIED;
        res[CHECK_LIST] = dc_list_count(c, "", NULL, true, false, &n, &err) == 0 && n == 0;
        res[CHECK_SESSIONS] = dc_session_visible(c, "root-only", &seen, &err) == 0 && !seen;
        res[CHECK_OWN] = dc_attach(c, "nobody's", NULL, -1, &mine, NULL, &err) == 0 &&
                         dc_create(c, mine, NULL, CWSANDBOXD__V1__SCOPE__SCOPE_SESSION, false, &info, &err) == 0 &&
                         info.state == CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_UNSTARTED;
        (void)write(out, res, sizeof(res));
        frame_client_free(c);
        _exit(0);
}

static void test_other_uid(void) {
        _cleanup_free_ char *session = NULL;
        uint8_t res[_CHECK_MAX] = { 0 };
        FrameClient *c = NULL;
        DcInfo sb, info;
        int fds[2], status;
        pid_t pid;

        if (dc_connect(daemon_proc->socket_path, &c) != 0 || dc_attach(c, "root-only", NULL, -1, &session, NULL, NULL) != 0 ||
            dc_create(c, session, NULL, CWSANDBOXD__V1__SCOPE__SCOPE_SESSION, true, &sb, NULL) != 0)
                bail_out("root's session and sandbox");
        if (pipe(fds) < 0)
                bail_out("pipe: %m");
        pid = fork();
        if (pid == 0) {
                close(fds[0]);
                other_uid_child(fds[1], &sb, session);
        }
        close(fds[1]);
        ok(read(fds[0], res, sizeof(res)) == sizeof(res), "uid %d: the child connected and ran its checks", OTHER_UID);
        close(fds[0]);
        (void)waitpid(pid, &status, 0);
        for (int i = 0; i < _CHECK_MAX; i++)
                ok(res[i] == 1, "uid %d: %s", OTHER_UID, check_names[i]);

        is_int(dc_wait(c, sb.handle_id, false, 30000, &info, NULL), 0, "root: its sandbox is untouched");
        is_int(info.state, CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_RUNNING, "root: still RUNNING");
        {
                bool seen = false;

                _cleanup_free_ char *theirs = NULL;
                bool created = true;

                is_int(dc_session_visible(c, "nobody's", &seen, NULL), 0, "root: lists sessions");
                ok(seen, "root sees the other user's session");
                is_int(dc_attach(c, "nobody's", NULL, DC_LINGER_UNSET, &theirs, &created, NULL), 0,
                       "root may attach to it");
                ok(!created, "and joins it");
                is_int(dc_close_session(c, theirs, NULL, NULL, NULL), 0, "root may close it");
        }
        is_int(dc_close_session(c, session, NULL, NULL, NULL), 0, "root: closes its session");
        frame_client_free(c);
}

/* ---- bad frames --------------------------------------------------------------------------- */

/* After something bad, the daemon sends an error frame (call id 0) and closes. */
static void expect_error_then_eof(FrameClient *c, const char *what) {
        Cwsandboxd__V1__DaemonFrame *f = NULL;
        int r = frame_client_recv(c, 10000, &f);

        ok(r == 0 && f->final && f->error && f->error->code != 0, "%s: an error frame", what);
        if (r == 0 && f->error)
                diag("  %s (code %d)", f->error->message, f->error->code);
        frame_client_frame_free(f);
        f = NULL;
        r = frame_client_recv(c, 10000, &f);
        is_int(r, FRAME_CLIENT_E_EOF, "%s: then the connection is closed", what);
        frame_client_frame_free(f);
}

static bool status_works(FrameClient *c) {
        Cwsandboxd__V1__ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__StatusRequest req = CWSANDBOXD__V1__STATUS_REQUEST__INIT;

        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_STATUS;
        f.status = &req;
        return dc_call(c, &f, NULL, NULL) == 0;
}

static void test_bad_frames(void) {
        static const uint8_t garbage[] = { 0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f };
        static const uint8_t huge[] = { 0, 0x10, 0, 0 };        /* 1 MiB announced, 64 KiB allowed */
        FrameClient *before = NULL, *bad = NULL, *after = NULL;
        Cwsandboxd__V1__DaemonFrame *reply = NULL;
        Cwsandboxd__V1__ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__StatusRequest req = CWSANDBOXD__V1__STATUS_REQUEST__INIT;

        is_int(dc_connect(daemon_proc->socket_path, &before), 0, "a well-behaved client connects first");

        is_int(dc_connect(daemon_proc->socket_path, &bad), 0, "malformed: connect");
        is_int(frame_client_send_raw(bad, garbage, sizeof(garbage)), 0, "malformed: send a frame that is not protobuf");
        expect_error_then_eof(bad, "malformed");
        bad = frame_client_free(bad);

        is_int(dc_connect(daemon_proc->socket_path, &bad), 0, "oversized: connect");
        is_int(frame_client_send_raw(bad, huge, sizeof(huge)), 0, "oversized: announce 1 MiB over a 64 KiB limit");
        expect_error_then_eof(bad, "oversized");
        bad = frame_client_free(bad);

        is_int(frame_client_connect(daemon_proc->socket_path, &bad), 0, "no hello: connect");
        f.call_id = 1;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_STATUS;
        f.status = &req;
        is_int(frame_client_send(bad, &f), 0, "no hello: send a request first");
        expect_error_then_eof(bad, "no hello");
        bad = frame_client_free(bad);

        is_int(frame_client_connect(daemon_proc->socket_path, &bad), 0, "wrong version: connect");
        is_int(frame_client_hello(bad, 99, "test", 10000, &reply), 0, "wrong version: hello 99 answered");
        ok(reply && reply->error && reply->error->code == GRPC_STATUS_FAILED_PRECONDITION,
           "wrong version: FAILED_PRECONDITION");
        frame_client_frame_free(reply);
        bad = frame_client_free(bad);

        ok(status_works(before), "the client connected before still works");
        is_int(dc_connect(daemon_proc->socket_path, &after), 0, "a new client connects after");
        ok(status_works(after), "and works");
        frame_client_free(before);
        frame_client_free(after);
}

int main(void) {
        int status = -1, r;

        if (test_needs_root())
                return 0;
        r = daemon_proc_start((const char *const[]) { "--max-frame-bytes", "64KiB", NULL }, &daemon_proc);
        if (r < 0)
                bail_out("cannot start cwsandboxd: %s", strerror(-r));
        /* The socket's directory, like /run/cwsandboxd, must let every user in. */
        if (chmod(daemon_proc->dir, 0755) < 0)
                bail_out("chmod: %m");

        test_other_uid();
        test_bad_frames();

        is_int(daemon_proc_stop(daemon_proc, 30000, &status), 0, "the daemon stops");
        ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "and exits 0: bad input crashed nothing");
        daemon_proc_free(daemon_proc);
        return done();
}
