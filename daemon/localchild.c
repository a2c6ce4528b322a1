/*
 * LocalChild: cwsandbox-local run and supervised by the daemon. See
 * localchild.h.
 *
 * One run of the child is a uv_process_t plus the pipe its stdout is on.
 * With --print-address it prints its address once it listens; that first
 * line is how we know it is ready. A run is over when the process has exited
 * and both handles are closed; then, unless we are stopping, the next run is
 * started after a backoff delay (reset once a run has lasted a while, so a
 * crash after hours of service restarts at once while a crash loop slows
 * down).
 *
 * The child must not outlive the daemon even when the daemon is killed
 * outright. uv_spawn() has no hook between fork and exec, so the child asks
 * for it itself: it reads our pid from CWSANDBOX_LOCAL_PARENT_PID, sets
 * PR_SET_PDEATHSIG and checks that its parent is still that pid. The signal
 * follows the thread that spawned it, which is the loop thread: it must live
 * as long as the daemon does.
 *
 * The child's work directories go under our private directory (its
 * RUNTIME_DIRECTORY), so what a killed child leaves behind stays in one place.
 * Terminal signals are not shared with it (a new session): the daemon decides
 * when and how it stops.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* macro.h before uv.h (through localchild.h): both define MIN and MAX. */
#include "macro.h"
#include "localchild.h"
#include "log.h"
#include "retry.h"

#define SOCKET_NAME             "backend.sock"
#define TOKEN_NAME              "token"
#define TOKEN_BYTES             32
#define PARENT_ENV              "CWSANDBOX_LOCAL_PARENT_PID"
#define RUNTIME_DIR_ENV         "RUNTIME_DIRECTORY"

/* Restart delay: RESTART_MIN_MS plus a backoff of RESTART_BASE_MS doubling
 * up to RESTART_CAP_MS; a run of RESTART_RESET_MS or more starts it over. */
#define RESTART_MIN_MS          100
#define RESTART_BASE_MS         200
#define RESTART_CAP_MS          10000
#define RESTART_RESET_MS        30000
/* SIGTERM gives the child time to stop its sandboxes (10 s grace) and its
 * server (2 s); SIGKILL after that. */
#define STOP_KILL_MS            15000

struct LocalChild {
        uv_loop_t *loop;
        char *program;
        char *dir;
        char *log_level;
        char *socket_path;
        char *target;
        char *token_path;
        char **env;
        char token[TOKEN_BYTES * 2 + 1];

        uv_process_t process;
        uv_pipe_t out;
        uv_timer_t timer;               /* restart backoff, then the SIGKILL deadline */
        bool process_open, out_open;    /* initialized and not yet closed */
        bool timer_closing;
        char read_buf[256];
        bool listening;                 /* this run printed its address */
        int pid;
        uint64_t started_ms;
        unsigned restarts;
        unsigned attempt;               /* failed runs in a row, for the backoff */

        void (*ready)(void *userdata);
        void *ready_userdata;
        bool ready_reported;
        bool stopping;
        bool abandoned;                 /* local_child_new() failed: free when closed */
        void (*done)(void *userdata);
        void *done_userdata;
};

static int child_spawn(LocalChild *lc);
static void child_gone(LocalChild *lc);

/* ---- files ------------------------------------------------------------------------ */

/* @dir exists, is ours, and only we may enter it. */
static int private_dir(const char *dir) {
        struct stat st;

        if (mkdir(dir, 0700) == 0)
                return 0;
        if (errno != EEXIST)
                return -errno;
        if (lstat(dir, &st) < 0)
                return -errno;
        if (!S_ISDIR(st.st_mode))
                return -ENOTDIR;
        if (st.st_uid != geteuid())
                return -EPERM;
        if ((st.st_mode & 07777) != 0700 && chmod(dir, 0700) < 0)
                return -errno;
        return 0;
}

static int token_generate(char *hex, size_t hex_size) {
        static const char digits[] = "0123456789abcdef";
        uint8_t raw[TOKEN_BYTES];
        size_t got = 0;

        if (hex_size < 2 * sizeof(raw) + 1)
                return -EINVAL;
        while (got < sizeof(raw)) {
                ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                got += (size_t)n;
        }
        for (size_t i = 0; i < sizeof(raw); i++) {
                hex[2 * i] = digits[raw[i] >> 4];
                hex[2 * i + 1] = digits[raw[i] & 15];
        }
        hex[2 * sizeof(raw)] = 0;
        explicit_bzero(raw, sizeof(raw));
        return 0;
}

/* A fresh 0600 file: never one that was there before, nor a link. */
static int token_write(const char *path, const char *token) {
        _cleanup_close_ int fd = -1;
        size_t len = strlen(token), done = 0;
        char nl = '\n';

        if (unlink(path) < 0 && errno != ENOENT)
                return -errno;
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;
        while (done < len) {
                ssize_t n = write(fd, token + done, len - done);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                done += (size_t)n;
        }
        if (write(fd, &nl, 1) != 1)
                return errno ? -errno : -EIO;
        return 0;
}

/* Our environment with the child's two variables set. */
static char **child_env(const char *dir) {
        extern char **environ;
        size_t n = 0, k = 0;
        char **env;

        for (char **e = environ; e && *e; e++)
                n++;
        env = calloc(n + 3, sizeof(char *));
        if (!env)
                return NULL;
        for (char **e = environ; e && *e; e++)
                if (strncmp(*e, PARENT_ENV "=", strlen(PARENT_ENV) + 1) != 0 &&
                    strncmp(*e, RUNTIME_DIR_ENV "=", strlen(RUNTIME_DIR_ENV) + 1) != 0)
                        env[k++] = *e;
        /* Only the two strings we add are ours to free: they come last. */
        if (asprintf(&env[k], PARENT_ENV "=%d", (int)getpid()) < 0) {
                free(env);
                return NULL;
        }
        if (asprintf(&env[k + 1], RUNTIME_DIR_ENV "=%s", dir) < 0) {
                free(env[k]);
                free(env);
                return NULL;
        }
        env[k + 2] = NULL;
        return env;
}

static void child_env_free(char **env) {
        size_t n = 0;

        if (!env)
                return;
        while (env[n])
                n++;
        if (n >= 2) {
                free(env[n - 2]);
                free(env[n - 1]);
        }
        free(env);
}

/* ---- one run ---------------------------------------------------------------------- */

static void timer_closed(uv_handle_t *h) {
        LocalChild *lc = container_of((uv_timer_t *)h, LocalChild, timer);

        if (lc->abandoned) {
                local_child_free(lc);
                return;
        }
        if (lc->done)
                lc->done(lc->done_userdata);
}

static void restart_on_timer(uv_timer_t *t) {
        LocalChild *lc = container_of(t, LocalChild, timer);
        int r;

        lc->restarts++;
        r = child_spawn(lc);
        if (r < 0) {
                log_error("cannot restart %s: %s", lc->program, strerror(-r));
                /* Try again later, once whatever the attempt opened is closed. */
                child_gone(lc);
        }
}

/* Both handles of the run are closed: stop for good, or start the next run. */
static void child_gone(LocalChild *lc) {
        uint64_t delay;

        if (lc->process_open || lc->out_open)
                return;
        if (lc->stopping || lc->abandoned) {
                if (!lc->timer_closing) {
                        lc->timer_closing = true;
                        uv_close((uv_handle_t *)&lc->timer, timer_closed);
                }
                return;
        }
        delay = RESTART_MIN_MS + backoff_next(lc->attempt++, RESTART_BASE_MS, RESTART_CAP_MS, NULL, NULL);
        log_notice("restarting %s in %llu ms", lc->program, (unsigned long long)delay);
        (void)uv_timer_start(&lc->timer, restart_on_timer, delay, 0);
}

static void process_closed(uv_handle_t *h) {
        LocalChild *lc = container_of((uv_process_t *)h, LocalChild, process);

        lc->process_open = false;
        child_gone(lc);
}

static void out_closed(uv_handle_t *h) {
        LocalChild *lc = container_of((uv_pipe_t *)h, LocalChild, out);

        lc->out_open = false;
        child_gone(lc);
}

static void out_close(LocalChild *lc) {
        if (lc->out_open && !uv_is_closing((uv_handle_t *)&lc->out))
                uv_close((uv_handle_t *)&lc->out, out_closed);
}

static void child_on_exit(uv_process_t *p, int64_t exit_status, int term_signal) {
        LocalChild *lc = container_of(p, LocalChild, process);
        uint64_t ran = uv_now(lc->loop) - lc->started_ms;
        LogLevel level = lc->stopping ? LOG_LEVEL_INFO : LOG_LEVEL_WARNING;

        if (term_signal)
                log_full(level, NULL, NULL, "%s (pid %d) killed by signal %d (%s) after %llu ms",
                         lc->program, lc->pid, term_signal, strsignal(term_signal), (unsigned long long)ran);
        else
                log_full(level, NULL, NULL, "%s (pid %d) exited with status %lld after %llu ms",
                         lc->program, lc->pid, (long long)exit_status, (unsigned long long)ran);
        lc->pid = 0;
        if (ran >= RESTART_RESET_MS)
                lc->attempt = 0;
        if (lc->stopping)
                (void)uv_timer_stop(&lc->timer);

        /* Grandchildren may hold the pipe open; the run ends with the process. */
        out_close(lc);
        uv_close((uv_handle_t *)&lc->process, process_closed);
}

static void out_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        LocalChild *lc = container_of((uv_pipe_t *)h, LocalChild, out);

        *buf = uv_buf_init(lc->read_buf, sizeof(lc->read_buf));
}

static void child_listening(LocalChild *lc) {
        lc->listening = true;
        if (lc->ready_reported) {
                log_notice("%s (pid %d) is listening again", lc->program, lc->pid);
                return;
        }
        lc->ready_reported = true;
        log_info("%s (pid %d) listening on %s", lc->program, lc->pid, lc->target);
        if (lc->ready)
                lc->ready(lc->ready_userdata);
}

static void out_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
        LocalChild *lc = container_of((uv_pipe_t *)s, LocalChild, out);

        if (n < 0) {
                out_close(lc);
                return;
        }
        /* The address is printed once it listens; nothing else is expected. */
        if (!lc->listening && n > 0 && memchr(buf->base, '\n', (size_t)n))
                child_listening(lc);
}

static int child_spawn(LocalChild *lc) {
        const char *args[10];
        _cleanup_free_ char *listen = NULL;
        uv_stdio_container_t stdio[3] = {
                { .flags = UV_IGNORE },
                { .flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&lc->out },
                { .flags = UV_INHERIT_FD, .data.fd = STDERR_FILENO },
        };
        uv_process_options_t options = {
                .exit_cb = child_on_exit,
                .file = lc->program,
                .env = lc->env,
                .flags = UV_PROCESS_DETACHED,
                .stdio_count = ELEMENTSOF(stdio),
                .stdio = stdio,
        };
        size_t n = 0;
        int r;

        if (asprintf(&listen, "unix:%s", lc->socket_path) < 0) {
                listen = NULL;
                return -ENOMEM;
        }
        args[n++] = lc->program;
        args[n++] = "--listen";
        args[n++] = listen;
        args[n++] = "--token-file";
        args[n++] = lc->token_path;
        args[n++] = "--print-address";
        if (lc->log_level) {
                args[n++] = "--log-level";
                args[n++] = lc->log_level;
        }
        args[n] = NULL;
        options.args = (char **)args;

        r = uv_pipe_init(lc->loop, &lc->out, 0);
        if (r < 0)
                return r;
        lc->out_open = true;
        lc->listening = false;

        r = uv_spawn(lc->loop, &lc->process, &options);
        /* uv_spawn() initialises the handle even when it fails. */
        lc->process_open = true;
        if (r < 0) {
                out_close(lc);
                uv_close((uv_handle_t *)&lc->process, process_closed);
                return r;
        }
        lc->pid = lc->process.pid;
        lc->started_ms = uv_now(lc->loop);
        log_debug("started %s (pid %d)", lc->program, lc->pid);
        r = uv_read_start((uv_stream_t *)&lc->out, out_alloc, out_read);
        if (r < 0) {
                /* Without its address we cannot know it is ready: start over. */
                log_error("cannot read from %s: %s", lc->program, uv_strerror(r));
                (void)uv_process_kill(&lc->process, SIGKILL);
        }
        return 0;
}

/* ---- the supervisor --------------------------------------------------------------- */

static int child_setup(LocalChild *lc, const LocalChildOptions *opts) {
        int r;

        lc->program = strdup(opts->program);
        lc->dir = strdup(opts->dir);
        if (!lc->program || !lc->dir)
                return -ENOMEM;
        if (opts->log_level) {
                lc->log_level = strdup(opts->log_level);
                if (!lc->log_level)
                        return -ENOMEM;
        }
        if (asprintf(&lc->socket_path, "%s/" SOCKET_NAME, opts->dir) < 0) {
                lc->socket_path = NULL;
                return -ENOMEM;
        }
        if (strlen(lc->socket_path) >= sizeof(((struct sockaddr_un *)NULL)->sun_path))
                return -ENAMETOOLONG;
        if (asprintf(&lc->target, "unix:%s", lc->socket_path) < 0) {
                lc->target = NULL;
                return -ENOMEM;
        }
        if (asprintf(&lc->token_path, "%s/" TOKEN_NAME, opts->dir) < 0) {
                lc->token_path = NULL;
                return -ENOMEM;
        }
        lc->env = child_env(opts->dir);
        if (!lc->env)
                return -ENOMEM;

        r = private_dir(opts->dir);
        if (r < 0) {
                log_error("local backend directory %s: %s", opts->dir, strerror(-r));
                return r;
        }
        r = token_generate(lc->token, sizeof(lc->token));
        if (r < 0) {
                log_error("cannot make a token for the local backend: %s", strerror(-r));
                return r;
        }
        r = token_write(lc->token_path, lc->token);
        if (r < 0) {
                log_error("cannot write %s: %s", lc->token_path, strerror(-r));
                return r;
        }
        return 0;
}

int local_child_new(uv_loop_t *loop, const LocalChildOptions *opts,
                    void (*ready)(void *userdata), void *userdata, LocalChild **ret) {
        LocalChild *lc;
        int r;

        if (!opts->program || !*opts->program || !opts->dir || !*opts->dir)
                return -EINVAL;
        lc = calloc(1, sizeof(*lc));
        if (!lc)
                return -ENOMEM;
        lc->loop = loop;
        lc->ready = ready;
        lc->ready_userdata = userdata;

        r = child_setup(lc, opts);
        if (r >= 0)
                r = uv_timer_init(loop, &lc->timer);
        if (r < 0) {
                local_child_free(lc);
                return r;
        }
        r = child_spawn(lc);
        if (r < 0) {
                log_error("cannot start %s: %s", lc->program, uv_strerror(r));
                /* Handles are closing; the last close frees it. */
                lc->abandoned = true;
                child_gone(lc);
                return r;
        }
        *ret = lc;
        return 0;
}

const char *local_child_target(const LocalChild *lc) {
        return lc->target;
}

const char *local_child_token(const LocalChild *lc) {
        return lc->token;
}

int local_child_pid(const LocalChild *lc) {
        return lc->pid;
}

unsigned local_child_restarts(const LocalChild *lc) {
        return lc->restarts;
}

static void kill_on_timer(uv_timer_t *t) {
        LocalChild *lc = container_of(t, LocalChild, timer);

        if (lc->pid <= 0)
                return;
        log_warning("%s (pid %d) did not stop within %d s; killing it", lc->program, lc->pid, STOP_KILL_MS / 1000);
        (void)uv_process_kill(&lc->process, SIGKILL);
}

void local_child_stop(LocalChild *lc, void (*done)(void *userdata), void *userdata) {
        if (lc->stopping)
                return;
        lc->stopping = true;
        lc->done = done;
        lc->done_userdata = userdata;
        (void)uv_timer_stop(&lc->timer);
        if (lc->pid > 0) {
                log_debug("stopping %s (pid %d)", lc->program, lc->pid);
                (void)uv_process_kill(&lc->process, SIGTERM);
                (void)uv_timer_start(&lc->timer, kill_on_timer, STOP_KILL_MS, 0);
                return;
        }
        /* Between runs, or a run still closing its handles. */
        child_gone(lc);
}

void local_child_free(LocalChild *lc) {
        if (!lc)
                return;
        explicit_bzero(lc->token, sizeof(lc->token));
        if (lc->token_path)
                (void)unlink(lc->token_path);
        free(lc->program);
        free(lc->dir);
        free(lc->log_level);
        free(lc->socket_path);
        free(lc->target);
        free(lc->token_path);
        child_env_free(lc->env);
        free(lc);
}
