/*
 * Exec through the daemon, from libcwsandbox clients: a terminal of the
 * asked size that follows a resize; a client killed with SIGKILL in the
 * middle of an exec takes its remote process with it; a cancel does the
 * same; a backend stream lost before its exit status is an error, never exit
 * 0; and the embedded backend killed under the daemon is restarted, with
 * calls recovering.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cwsandbox.h"
#include "daemon-proc.h"
#include "test-util.h"

static DaemonProc *daemon_proc;
static BcClient *backend;
static char *session_id;
static char *sandbox_id;

static cws_conn *conn_or_bail(void) {
        cws_conn *c = NULL;
        cws_error err;

        if (cws_connect(daemon_proc->socket_path, "test-daemon-exec", &c, &err) != 0)
                bail_out("connect: %s", err.message);
        return c;
}

/* Read output until @needle appears (or the stream ends); the text seen so far in @buf. */
static bool read_until(cws_exec *x, const char *needle, char *buf, size_t size) {
        size_t have = 0;

        buf[0] = 0;
        while (have < size - 1 && !strstr(buf, needle)) {
                size_t n = 0;

                if (cws_exec_read(x, buf + have, size - 1 - have, 20000, NULL, &n, NULL) != 0 || n == 0)
                        return false;
                have += n;
                buf[have] = 0;
        }
        return strstr(buf, needle) != NULL;
}

static bool processes_gone(const char *marker) {
        pid_t pids[8];

        for (int i = 0; i < 100; i++, test_sleep_ms(100))
                if (test_find_processes(marker, pids, ELEMENTSOF(pids)) == 0)
                        return true;
        return false;
}

static void test_tty(cws_conn *c) {
        static const char *const argv[] = {
                "/bin/sh", "-c", "stty size; read line; stty size; echo done", NULL,
        };
        cws_exec_options o = { .tty = true, .tty_width = 100, .tty_height = 40, .with_stdin = true };
        cws_exec *x = NULL;
        char buf[4096];
        int code = -1;

        is_int(cws_exec_start(c, sandbox_id, argv, &o, &x, NULL), 0, "tty: exec with a 100x40 terminal");
        if (!x)
                return;
        ok(read_until(x, "40 100", buf, sizeof(buf)), "tty: stty sees 40 rows, 100 columns");
        is_int(cws_exec_resize(x, 132, 50, NULL), 0, "tty: resize to 132x50");
        is_int(cws_exec_write(x, "go\r", 3, NULL), 0, "tty: type a line");
        ok(read_until(x, "50 132", buf, sizeof(buf)), "tty: stty sees the new size");
        is_int(cws_exec_wait(x, &code, NULL), 0, "tty: the exec ends");
        is_int(code, 0, "tty: exit 0");
        cws_exec_free(x);
}

static void test_cancel(cws_conn *c) {
        _cleanup_free_ char *marker = test_marker("cancel"), *script = NULL;
        cws_exec *x = NULL;
        cws_error err = { 0 };
        char buf[256];
        int code = -1;

        if (asprintf(&script, "echo started; sleep 300; : %s", marker) < 0)
                bail_out("oom");
        is_int(cws_exec_start(c, sandbox_id, (const char *const[]) { "/bin/sh", "-c", script, NULL }, NULL, &x, NULL),
               0, "cancel: start a long command");
        ok(read_until(x, "started", buf, sizeof(buf)), "cancel: it runs");
        is_int(cws_exec_cancel(x, NULL), 0, "cancel: cancel it");
        is_int(cws_exec_wait(x, &code, &err), CWS_CANCELLED, "cancel: the exec ends CANCELLED, not with an exit code");
        ok(processes_gone(marker), "cancel: the remote process is gone");
        cws_exec_free(x);
}

/* A client process starts a long exec, says so, and is killed with SIGKILL. */
static void test_client_killed(void) {
        _cleanup_free_ char *marker = test_marker("killed"), *script = NULL;
        pid_t pids[8], child;
        int fds[2], status;
        char ready = 0;

        if (asprintf(&script, "echo started; sleep 300; : %s", marker) < 0 || pipe(fds) < 0)
                bail_out("setup");
        child = fork();
        if (child == 0) {
                cws_conn *c = conn_or_bail();
                cws_exec *x = NULL;
                char buf[256];

                close(fds[0]);
                if (cws_exec_start(c, sandbox_id, (const char *const[]) { "/bin/sh", "-c", script, NULL }, NULL, &x,
                                   NULL) != 0 ||
                    !read_until(x, "started", buf, sizeof(buf)))
                        _exit(1);
                (void)write(fds[1], "r", 1);
                pause();
                _exit(0);
        }
        close(fds[1]);
        ok(read(fds[0], &ready, 1) == 1 && ready == 'r', "killed client: its exec is running");
        ok(test_find_processes(marker, pids, ELEMENTSOF(pids)) > 0, "killed client: the remote process exists");
        kill(child, SIGKILL);
        (void)waitpid(child, &status, 0);
        close(fds[0]);
        ok(processes_gone(marker), "killed client: after SIGKILL of the client the remote process is gone");
}

static void set_stream_drop(bool on) {
        Cwsandboxlocal__V1__Fault f = CWSANDBOXLOCAL__V1__FAULT__INIT;

        f.method = (char *)"StreamExec";
        f.drop_rate = on ? 1.0 : 0.0;
        if (bc_set_faults(backend, on ? &f : NULL, on ? 1 : 0, NULL) != 0)
                bail_out("cannot set faults");
}

static void test_lost_stream(cws_conn *c) {
        cws_exec_result *res = NULL;
        cws_exec *x = NULL;
        cws_error err = { 0 };
        int r, code = -1;

        set_stream_drop(true);
        r = cws_exec_run(c, sandbox_id, (const char *const[]) { "true", NULL }, NULL, &res, &err);
        ok(r != 0, "lost stream: a buffered exec is an error (%s)", r ? err.message : "it succeeded");
        cws_exec_result_free(res);
        r = cws_exec_start(c, sandbox_id, (const char *const[]) { "true", NULL }, NULL, &x, &err);
        if (r == 0)
                r = cws_exec_wait(x, &code, &err);
        ok(r != 0, "lost stream: a streamed exec is an error, never exit 0 (%s)", r ? err.message : "it succeeded");
        cws_exec_free(x);
        set_stream_drop(false);
        res = NULL;
        is_int(cws_exec_run(c, sandbox_id, (const char *const[]) { "true", NULL }, NULL, &res, &err), 0,
               "lost stream: without the fault exec works again");
        cws_exec_result_free(res);
}

/* The embedded backend's pid: the daemon's child running cwsandbox-local. */
static pid_t backend_pid(void) {
        char path[300], buf[512];
        DIR *d = opendir("/proc");
        struct dirent *e;
        pid_t found = 0;

        while (d && (e = readdir(d)) && !found) {
                FILE *f;
                int ppid = 0;
                size_t n;

                snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
                f = fopen(path, "re");
                if (!f)
                        continue;
                if (fscanf(f, "%*d (%*[^)]) %*c %d", &ppid) != 1 || ppid != daemon_proc->pid) {
                        fclose(f);
                        continue;
                }
                fclose(f);
                snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
                f = fopen(path, "re");
                if (!f)
                        continue;
                n = fread(buf, 1, sizeof(buf) - 1, f);
                buf[n] = 0;
                fclose(f);
                if (strstr(buf, "cwsandbox-local"))
                        found = atoi(e->d_name);
        }
        if (d)
                closedir(d);
        return found;
}

static void test_backend_restart(cws_conn *c) {
        _cleanup_free_ char *sid = NULL;
        pid_t pid = backend_pid(), again = 0;
        cws_create_options o = { .start = true };
        cws_sandbox *sb = NULL;
        cws_error err = { 0 };
        bool unavailable = false, recovered = false;

        ok(pid > 0, "backend restart: found the embedded backend (pid %d)", (int)pid);
        if (pid <= 0)
                return;
        backend = bc_close(backend);
        kill(pid, SIGKILL);
        for (int i = 0; i < 300 && !recovered; i++, test_sleep_ms(100)) {
                int r = cws_sandbox_create(c, session_id, &o, &sb, &err);

                if (r == CWS_UNAVAILABLE)
                        unavailable = true;
                recovered = r == 0;
                cws_sandbox_free(sb);
                sb = NULL;
        }
        diag("backend restart: %s UNAVAILABLE on the way", unavailable ? "saw" : "did not see");
        ok(recovered, "backend restart: calls succeed again once the daemon has restarted it");
        again = backend_pid();
        ok(again > 0 && again != pid, "backend restart: a new backend process (pid %d)", (int)again);
        if (daemon_proc_backend(daemon_proc, &backend) < 0)
                bail_out("backend client");
}

int main(void) {
        cws_create_options o = { .start = true };
        cws_session *s = NULL;
        cws_sandbox *sb = NULL;
        cws_conn *c;
        cws_error err;
        int status = -1, r;

        if (test_needs_root())
                return 0;
        r = daemon_proc_start(NULL, &daemon_proc);
        if (r < 0)
                bail_out("cannot start cwsandboxd: %s", strerror(-r));
        if (daemon_proc_backend(daemon_proc, &backend) < 0)
                bail_out("backend client");
        c = conn_or_bail();
        if (cws_attach(c, "exec", NULL, &s, &err) != 0 || cws_sandbox_create(c, s->session_id, &o, &sb, &err) != 0 ||
            cws_sandbox_wait(c, sb->handle_id, false, 30000, NULL, &err) != 0)
                bail_out("session and sandbox: %s", err.message);
        session_id = strdup(s->session_id);
        sandbox_id = strdup(sb->handle_id);
        cws_session_free(s);
        cws_sandbox_free(sb);

        test_tty(c);
        test_cancel(c);
        test_client_killed();
        test_lost_stream(c);
        test_backend_restart(c);

        cws_conn_close(c);
        backend = bc_close(backend);
        is_int(daemon_proc_stop(daemon_proc, 30000, &status), 0, "the daemon stops");
        ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "and exits 0");
        daemon_proc_free(daemon_proc);
        free(session_id);
        free(sandbox_id);
        return done();
}
