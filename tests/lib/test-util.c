/*
 * Helpers every integration test shares. Failures in setup bail out of the
 * test (nothing after them would mean anything); failures of the backend's
 * behaviour are test points, so a run shows every broken promise at once.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "macro.h"
#include "test-util.h"

bool test_needs_root(void) {
        if (geteuid() == 0)
                return false;
        tap_skip_all("needs root");
        return true;
}

void test_backend_start(TestBackend *t, const BackendProcOpts *o) {
        int r;

        *t = (TestBackend) {};
        r = backend_proc_start(o, &t->proc);
        if (r == -ENOENT)
                bail_out("CWSANDBOX_LOCAL is not set (path of cwsandbox-local)");
        if (r < 0)
                bail_out("cannot start cwsandbox-local: %s", strerror(-r));
        r = bc_connect(t->proc->target, o ? o->token : NULL, &t->client);
        if (r < 0)
                bail_out("cannot create a client: %s", strerror(-r));
        diag("cwsandbox-local pid %d on %s", (int)t->proc->pid, t->proc->target);
}

void test_backend_stop(TestBackend *t) {
        int status = 0, r;

        t->client = bc_close(t->client);
        if (!t->proc)
                return;
        r = backend_proc_stop(t->proc, 30000, &status);
        ok(r == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "cwsandbox-local exits 0 on SIGTERM");
        if (r < 0)
                diag("  it did not exit within 30 s and was killed");
        else if (WIFSIGNALED(status))
                diag("  killed by signal %d", WTERMSIG(status));
        else if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
                diag("  exit status %d", WEXITSTATUS(status));
        t->proc = backend_proc_free(t->proc);
}

char *test_marker(const char *what) {
        static unsigned counter;
        struct timespec ts;
        char *s;

        clock_gettime(CLOCK_REALTIME, &ts);
        if (asprintf(&s, "cwsl-%s-%d-%u-%lx", what, (int)getpid(), ++counter,
                     (unsigned long)(ts.tv_nsec ^ (ts.tv_sec << 20))) < 0)
                bail_out("out of memory");
        return s;
}

int64_t test_now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t test_mono_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void test_sleep_ms(int ms) {
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

void test_diag_status(const char *what, int r, const BcStatus *st) {
        diag("  %s: %s%s%s", what, bc_code_name(r), st && st->details[0] ? ": " : "",
             st ? st->details : "");
}

BcSandboxOpts test_keepalive_opts(void) {
        static const char *const args[] = { "-c", BC_KEEPALIVE_SCRIPT, NULL };

        return (BcSandboxOpts) {
                .command = BC_KEEPALIVE_COMMAND,
                .args = args,
        };
}

BcSandbox *test_start_sandbox(BcClient *c, const BcSandboxOpts *o, const char *what) {
        BcSandbox *sb = NULL;
        BcStatus st = {};
        int r;

        r = bc_create_running(c, o, TEST_START_MS, &sb, &st);
        if (!ok(r == 0, "%s: created and RUNNING", what)) {
                test_diag_status("create/wait", r, &st);
                if (sb && sb->status)
                        diag("  state %s, reason \"%s\"", bc_state_name(sb->status->state),
                             sb->status->state_reason);
                bc_free(sb);
                return NULL;
        }
        return sb;
}

BcExec *test_sh(BcClient *c, const char *id, const char *script) {
        const char *argv[] = { "/bin/sh", "-c", script, NULL };
        BcExec *e = NULL;
        int r;

        r = bc_exec_run(c, id, argv, TEST_CMD_MS, &e);
        if (r < 0) {
                diag("  exec \"%s\": %s", script, bc_code_name(r));
                return bc_exec_free(e);
        }
        return e;
}

char *test_sh_out(BcClient *c, const char *id, const char *script) {
        BcExec *e = test_sh(c, id, script);
        char *out;

        if (!e)
                return NULL;
        if (e->status.code != GRPC_STATUS_OK || !e->exited || e->exit_code != 0) {
                diag("  exec \"%s\": status %s \"%s\", exit %s %d, error frame \"%s\" \"%s\"", script,
                     bc_code_name(e->status.code), e->status.details, e->exited ? "frame" : "none",
                     e->exit_code, e->error_code, e->error_message);
                if (e->err.len)
                        diag("  stderr: %s", e->err.data);
                bc_exec_free(e);
                return NULL;
        }
        out = strdup(e->out.data ? e->out.data : "");
        bc_exec_free(e);
        return out;
}

/* Whether the NUL-separated contents of /proc/@pid/@file contain @marker. */
static bool proc_file_contains(const char *pid, const char *file, const char *marker) {
        char path[64], buf[65536];
        _cleanup_close_ int fd = -1;
        size_t len = 0, mlen = strlen(marker);
        ssize_t n;

        snprintf(path, sizeof(path), "/proc/%s/%s", pid, file);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return false;
        while (len < sizeof(buf) && (n = read(fd, buf + len, sizeof(buf) - len)) > 0)
                len += (size_t)n;
        return len >= mlen && memmem(buf, len, marker, mlen);
}

size_t test_find_processes(const char *marker, pid_t *pids, size_t max) {
        DIR *d = opendir("/proc");
        struct dirent *de;
        size_t n = 0;
        pid_t self = getpid();

        if (!d)
                return 0;
        while ((de = readdir(d))) {
                char *end;
                long pid = strtol(de->d_name, &end, 10);

                if (*end || pid <= 0 || pid == self)
                        continue;
                if (!proc_file_contains(de->d_name, "cmdline", marker) &&
                    !proc_file_contains(de->d_name, "environ", marker))
                        continue;
                if (n < max)
                        pids[n] = (pid_t)pid;
                n++;
        }
        closedir(d);
        return n;
}

char *test_chomp(char *s) {
        size_t n = s ? strlen(s) : 0;

        while (n && (s[n - 1] == '\n' || s[n - 1] == '\r'))
                s[--n] = 0;
        return s;
}

bool test_unix_accepts(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -1;

        if (strlen(path) >= sizeof(sa.sun_path))
                return false;
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        return fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
}

bool test_child_alive(pid_t *pid, int *status) {
        int st;

        if (*pid <= 0)
                return false;
        if (waitpid(*pid, &st, WNOHANG) == *pid) {
                *status = st;
                *pid = 0;
                return false;
        }
        return true;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void)(flag == FTW_DP ? rmdir(path) : unlink(path));
        return 0;
}

void test_rm_rf(const char *dir) {
        (void)nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}
