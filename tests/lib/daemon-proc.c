/*
 * Start and stop cwsandboxd for a test. Readiness is what a client sees: the
 * socket accepts a connection. A daemon that exits early is noticed at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon-proc.h"
#include "macro.h"
#include "test-util.h"

#define START_TIMEOUT_MS 30000

static bool daemon_alive(DaemonProc *p) {
        return test_child_alive(&p->pid, &p->wait_status);
}

static void child_exec(const char *bin, char **argv, pid_t parent) {
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
                _exit(1);
        if (dup2(STDERR_FILENO, STDOUT_FILENO) < 0)
                _exit(1);
        execv(bin, argv);
        fprintf(stderr, "exec %s: %m\n", bin);
        _exit(127);
}

static int spawn(DaemonProc *p) {
        const char *bin = getenv("CWSANDBOXD"), *local = getenv("CWSANDBOX_LOCAL");
        const char *level = getenv("CWSANDBOXD_LOG_LEVEL");
        char *argv[64];
        size_t n = 0;
        pid_t parent = getpid(), pid;
        int64_t end;

        if (!bin || !*bin || !local || !*local)
                return -ENOENT;
        argv[n++] = (char *)bin;
        argv[n++] = (char *)"--config=/dev/null";
        argv[n++] = (char *)"--socket";
        argv[n++] = p->socket_path;
        argv[n++] = (char *)"--state-dir";
        argv[n++] = p->state_dir;
        argv[n++] = (char *)"--local-backend-path";
        argv[n++] = (char *)local;
        /* "config": the level comes from the configuration file (a reload may change it). */
        if (!level || !streq(level, "config")) {
                argv[n++] = (char *)"--log-level";
                argv[n++] = (char *)(level && *level ? level : "debug");
        }
        for (char **a = p->extra_args; a && *a && n < ELEMENTSOF(argv) - 1; a++)
                argv[n++] = *a;
        argv[n] = NULL;

        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0)
                child_exec(bin, argv, parent);
        p->pid = pid;
        for (end = test_mono_ms() + START_TIMEOUT_MS; test_mono_ms() < end; test_sleep_ms(20)) {
                if (!daemon_alive(p))
                        return -ECHILD;
                if (test_unix_accepts(p->socket_path))
                        return 0;
        }
        return -ETIMEDOUT;
}

int daemon_proc_start(const char *const *extra_args, DaemonProc **ret) {
        const char *tmp = getenv("TMPDIR");
        DaemonProc *p = calloc(1, sizeof(*p));
        size_t n = 0;
        int r;

        if (!p)
                return -ENOMEM;
        if (asprintf(&p->dir, "%s/cwsandboxd-test-XXXXXX", tmp && *tmp ? tmp : "/tmp") < 0 || !mkdtemp(p->dir) ||
            asprintf(&p->socket_path, "%s/sock", p->dir) < 0 || asprintf(&p->state_dir, "%s/state", p->dir) < 0) {
                daemon_proc_free(p);
                return -ENOMEM;
        }
        while (extra_args && extra_args[n])
                n++;
        p->extra_args = calloc(n + 1, sizeof(char *));
        for (size_t i = 0; p->extra_args && i < n; i++)
                p->extra_args[i] = strdup(extra_args[i]);
        r = spawn(p);
        if (r < 0) {
                daemon_proc_free(p);
                return r;
        }
        *ret = p;
        return 0;
}

int daemon_proc_restart(DaemonProc *p) {
        if (daemon_alive(p))
                return -EBUSY;
        return spawn(p);
}

int daemon_proc_signal(DaemonProc *p, int sig) {
        if (!daemon_alive(p))
                return -ESRCH;
        return kill(p->pid, sig) < 0 ? -errno : 0;
}

int daemon_proc_stop(DaemonProc *p, int timeout_ms, int *ret_status) {
        int64_t end = test_mono_ms() + timeout_ms;

        if (p->pid > 0)
                (void)kill(p->pid, SIGTERM);
        while (daemon_alive(p)) {
                if (test_mono_ms() >= end) {
                        (void)kill(p->pid, SIGKILL);
                        (void)waitpid(p->pid, &p->wait_status, 0);
                        p->pid = 0;
                        return -ETIMEDOUT;
                }
                test_sleep_ms(10);
        }
        if (ret_status)
                *ret_status = p->wait_status;
        return 0;
}

int daemon_proc_backend(DaemonProc *p, BcClient **ret) {
        _cleanup_free_ char *target = NULL, *token_path = NULL;
        char token[256] = "";
        FILE *f;

        if (asprintf(&target, "unix:%s/local/backend.sock", p->state_dir) < 0 ||
            asprintf(&token_path, "%s/local/token", p->state_dir) < 0)
                return -ENOMEM;
        f = fopen(token_path, "re");
        if (!f)
                return -errno;
        if (!fgets(token, sizeof(token), f)) {
                fclose(f);
                return -EIO;
        }
        fclose(f);
        token[strcspn(token, "\r\n")] = 0;
        return bc_connect(target, token, ret);
}

DaemonProc *daemon_proc_free(DaemonProc *p) {
        if (!p)
                return NULL;
        if (p->pid > 0)
                (void)daemon_proc_stop(p, 20000, NULL);
        if (p->dir)
                test_rm_rf(p->dir);
        for (char **a = p->extra_args; a && *a; a++)
                free(*a);
        free(p->extra_args);
        free(p->state_dir);
        free(p->socket_path);
        free(p->dir);
        free(p);
        return NULL;
}
