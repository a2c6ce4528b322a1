/*
 * Start and stop cwsandbox-local for a test.
 *
 * Readiness is checked the way a client would see it: for a unix socket,
 * connect() until it succeeds; for TCP, the backend prints the bound address
 * once it listens. Either way a child that exits early is noticed at once
 * rather than after the timeout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend-proc.h"
#include "macro.h"
#include "test-util.h"

#define START_TIMEOUT_MS 10000

static int64_t now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void pause_ms(int ms) {
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

bool backend_proc_alive(BackendProc *p) {
        return test_child_alive(&p->pid, &p->wait_status);
}

/* Read one line of the child's stdout (the bound address) into p->target. */
static int read_address(BackendProc *p, int64_t end) {
        char buf[256];
        size_t len = 0;

        while (len < sizeof(buf) - 1) {
                struct pollfd pfd = { .fd = p->stdout_fd, .events = POLLIN };
                int left = (int)(end - now_ms());
                ssize_t n;

                if (left <= 0)
                        return -ETIMEDOUT;
                if (poll(&pfd, 1, MIN(left, 100)) == 0) {
                        if (!backend_proc_alive(p))
                                return -ECHILD;
                        continue;
                }
                n = read(p->stdout_fd, buf + len, 1);
                if (n <= 0)
                        return -ECHILD;
                if (buf[len] == '\n')
                        break;
                len++;
        }
        buf[len] = 0;
        free(p->target);
        p->target = strdup(buf);
        return p->target ? 0 : -ENOMEM;
}

static void child_exec(const char *bin, char **argv, int out_fd, pid_t parent) {
        (void)prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
                _exit(1);
        /* TAP owns our stdout: the backend's stdout goes to stderr, or to
         * the pipe the address is read from. */
        if (dup2(out_fd >= 0 ? out_fd : STDERR_FILENO, STDOUT_FILENO) < 0)
                _exit(1);
        execv(bin, argv);
        fprintf(stderr, "exec %s: %m\n", bin);
        _exit(127);
}

static int spawn(BackendProc *p, const BackendProcOpts *o) {
        const char *bin = getenv("CWSANDBOX_LOCAL"), *runner = getenv("CWSANDBOX_LOCAL_RUN");
        const char *level = getenv("CWSANDBOX_LOCAL_LOG_LEVEL");
        _cleanup_free_ char *listen = NULL;
        const char *argv[64];
        size_t n = 0;
        int pipefd[2] = { -1, -1 };
        pid_t parent = getpid(), pid;

        if (!bin || !*bin)
                return -ENOENT;
        if (o->tcp)
                listen = strdup("127.0.0.1:0");
        else if (asprintf(&listen, "unix:%s/backend.sock", p->dir) < 0)
                listen = NULL;
        if (!listen)
                return -ENOMEM;

        argv[n++] = bin;
        argv[n++] = "--listen";
        argv[n++] = listen;
        if (o->tcp)
                argv[n++] = "--print-address";
        argv[n++] = "--work-dir";
        argv[n++] = p->work_dir;
        if (runner && *runner) {
                argv[n++] = "--runner";
                argv[n++] = runner;
        }
        if (level && *level) {
                argv[n++] = "--log-level";
                argv[n++] = level;
        }
        if (o->token) {
                argv[n++] = "--token";
                argv[n++] = o->token;
        }
        if (o->image_dir) {
                argv[n++] = "--image-dir";
                argv[n++] = o->image_dir;
        }
        for (size_t i = 0; o->extra_args && o->extra_args[i] && n < ELEMENTSOF(argv) - 1; i++)
                argv[n++] = o->extra_args[i];
        argv[n] = NULL;

        if (o->tcp && pipe2(pipefd, O_CLOEXEC) < 0)
                return -errno;
        fflush(NULL);
        pid = fork();
        if (pid < 0) {
                int r = -errno;

                if (pipefd[0] >= 0) {
                        close(pipefd[0]);
                        close(pipefd[1]);
                }
                return r;
        }
        if (pid == 0)
                child_exec(bin, (char **)argv, pipefd[1], parent);
        p->pid = pid;
        if (pipefd[0] >= 0) {
                close(pipefd[1]);
                p->stdout_fd = pipefd[0];
        } else if (asprintf(&p->target, "%s", listen) < 0)
                return -ENOMEM;
        return 0;
}

static int wait_ready(BackendProc *p, bool tcp) {
        int64_t end = now_ms() + START_TIMEOUT_MS;
        const char *path;

        if (tcp)
                return read_address(p, end);
        path = p->target + strlen("unix:");
        for (;;) {
                if (test_unix_accepts(path))
                        return 0;
                if (!backend_proc_alive(p))
                        return -ECHILD;
                if (now_ms() >= end)
                        return -ETIMEDOUT;
                pause_ms(20);
        }
}

int backend_proc_start(const BackendProcOpts *o, BackendProc **ret) {
        static const BackendProcOpts none = {};
        const char *tmp = getenv("TMPDIR");
        BackendProc *p;
        int r;

        if (!o)
                o = &none;
        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->stdout_fd = -1;
        if (asprintf(&p->dir, "%s/cwsl-test-XXXXXX", tmp && *tmp ? tmp : "/tmp") < 0) {
                p->dir = NULL;
                backend_proc_free(p);
                return -ENOMEM;
        }
        if (!mkdtemp(p->dir)) {
                r = -errno;
                free(p->dir);
                p->dir = NULL;
                backend_proc_free(p);
                return r;
        }
        if (asprintf(&p->work_dir, "%s/work", p->dir) < 0) {
                p->work_dir = NULL;
                backend_proc_free(p);
                return -ENOMEM;
        }
        if (mkdir(p->work_dir, 0700) < 0) {
                r = -errno;
                backend_proc_free(p);
                return r;
        }
        r = spawn(p, o);
        if (r >= 0)
                r = wait_ready(p, o->tcp);
        if (r < 0) {
                backend_proc_free(p);
                return r;
        }
        *ret = p;
        return 0;
}

int backend_proc_stop(BackendProc *p, int timeout_ms, int *ret_status) {
        int64_t end = now_ms() + timeout_ms;
        int r = 0;

        if (p->pid > 0) {
                (void)kill(p->pid, SIGTERM);
                while (backend_proc_alive(p)) {
                        if (now_ms() >= end) {
                                (void)kill(p->pid, SIGKILL);
                                if (waitpid(p->pid, &p->wait_status, 0) == p->pid)
                                        p->pid = 0;
                                r = -ETIMEDOUT;
                                break;
                        }
                        pause_ms(20);
                }
        }
        if (ret_status)
                *ret_status = p->wait_status;
        return r;
}

BackendProc *backend_proc_free(BackendProc *p) {
        if (!p)
                return NULL;
        if (p->pid > 0)
                (void)backend_proc_stop(p, 15000, NULL);
        if (p->stdout_fd >= 0)
                close(p->stdout_fd);
        if (p->dir)
                test_rm_rf(p->dir);
        free(p->dir);
        free(p->work_dir);
        free(p->target);
        free(p);
        return NULL;
}
