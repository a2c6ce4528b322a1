/*
 * Sandbox: the life of one local sandbox, and the registry of them.
 *
 * A sandbox is a record (struct Sandbox, embedded in a SandboxRecord that
 * holds what only this file sees) and, while it runs, one runner process
 * (cwsandbox-local-run init) with three pipes: stdout and stderr of the main
 * process, and the runner's status fd. Its course:
 *
 *   create   the spec is checked and turned into a Plan; the record is
 *            PENDING while the thread pool writes its scratch dir (the files
 *            to mount); then the runner is spawned: CREATING.
 *   status   "pid N" then EOF: RUNNING. "error ...": FAILED once it exits.
 *   exit     COMPLETED (0) or FAILED (anything else); TERMINATED after a
 *            stop (DeleteSandbox, max lifetime, shutdown).
 *   cleanup  when the runner has exited and every pipe has ended, the
 *            handles are closed; then the scratch dir is removed.
 *
 * The exit callback, the status EOF and the two output EOFs arrive in any
 * order. The state is settled once the exit and the status result are both
 * in. A short drain time after the exit closes whatever pipe has not ended,
 * so a pipe leaked to some other process cannot pin a record.
 *
 * A record is busy while a work request or any of its handles is open. Only
 * an idle record is freed, and never from one of its own callbacks: by
 * pruning (terminal for an hour, or beyond the cap on remembered records,
 * oldest first) or by sandboxes_free().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "pbgrpc.h"
#include "sandbox.h"

#define STATE(x) COREWEAVE__SANDBOX__V1__STATE__STATE_##x

/* Terminal records stay visible this long, and at most this many of them. */
#define RETENTION_MS (3600ULL * 1000)
#define TERMINAL_MAX 10000
#define PRUNE_INTERVAL_MS 1000

/* Grace before SIGKILL when max_lifetime_seconds expires. */
#define LIFETIME_GRACE_MS (10 * 1000)

/* How long pipes may stay open after the runner has exited. */
#define DRAIN_MS 1000

/* The one status line of the runner: "pid N" or "error REASON". */
#define STATUS_LINE_MAX 1024

/* Limits on what a client puts in a spec. */
#define CONTAINERS_MAX 16
#define IMAGE_NAME_MAX 512
#define COMMAND_MAX 4096
#define ARGS_MAX 1024
#define ARGV_BYTES_MAX (256 * 1024)
#define ENV_MAX 256
#define ENV_KEY_MAX 256
#define ENV_BYTES_MAX (256 * 1024)
#define PATH_LEN_MAX 4096
#define FILES_MAX 64
#define FILES_BYTES_MAX (1024 * 1024)
#define TAGS_MAX 64
#define TAG_MAX 256
#define MEMORY_MIN (1024 * 1024)

#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* The SDK's keep-alive: PID 1 that exits 0 on SIGTERM. */
static const char *const keep_alive_argv[] = {
        "/bin/sh", "-c", "trap \"exit 0\" TERM INT; sleep infinity & wait", NULL,
};

/* What the checked spec asks for, in the form the runner takes. */
typedef struct Plan {
        char **argv;                    /* main process */
        char **env;                     /* "K=V" */
        char *working_dir;
        char **file_dests;              /* absolute paths in the sandbox */
        size_t n_files;
        uint64_t memory_bytes;          /* 0 = no limit */
        bool no_network;
        int32_t max_lifetime_s;         /* 0 = none */
        char *base;                     /* "host" or "image:<name>" */
        char *base_dir;                 /* rootfs for --base, or NULL */
} Plan;

typedef struct SandboxRecord {
        Sandbox pub;
        uint64_t seq;
        uint64_t create_mono_ms;        /* loop time of creation */
        uint64_t end_mono_ms;           /* loop time of the terminal transition */

        char **argv;
        char **file_dests;
        size_t n_files;
        char *scratch;                  /* work_dir/<id> */
        char *base_dir;
        uint64_t memory_bytes;
        bool no_network;
        int32_t max_lifetime_s;

        /* scratch preparation, then removal, in the thread pool */
        uv_work_t work;
        bool work_pending;
        int prepare_error;              /* negative errno */
        char prepare_what[64];

        /* the runner and its pipes */
        uv_process_t process;
        uv_pipe_t out, err, status;
        uv_timer_t kill_timer;          /* SIGKILL after the grace; drain after exit */
        uv_timer_t lifetime_timer;
        unsigned n_open;                /* handles initialised and not yet closed */
        bool busy_counted;
        bool spawned, exited;
        bool status_done, out_done, err_done;
        bool closing;                   /* the remaining handles are being closed */
        bool term_sent, kill_sent;
        uint64_t kill_at_ms;            /* loop time of the planned SIGKILL, 0 = none */
        int64_t exit_status;
        int term_signal;

        char status_line[STATUS_LINE_MAX + 1];
        size_t status_len;
        pid_t status_pid;               /* from "pid N" */
        char *runner_error;             /* from "error ..." */
        bool started;                   /* "pid N" then EOF, no error */
} SandboxRecord;

/* Registry state Backend has no room for; there is one Backend per process. */
static struct {
        unsigned n_busy;
        bool shutting_down;
        void (*shutdown_done)(Backend *b);
        uint64_t last_prune_ms;
} registry;

/* Output is consumed inside the read callback, so one buffer serves all pipes. */
static char read_buffer[64 * 1024];

static const char *state_name(SandboxState state) {
        switch (state) {
        case STATE(PENDING):     return "PENDING";
        case STATE(CREATING):    return "CREATING";
        case STATE(RUNNING):     return "RUNNING";
        case STATE(COMPLETED):   return "COMPLETED";
        case STATE(FAILED):      return "FAILED";
        case STATE(TERMINATING): return "TERMINATING";
        case STATE(TERMINATED):  return "TERMINATED";
        case STATE(PAUSED):      return "PAUSED";
        default:                 return "UNSPECIFIED";
        }
}

static int64_t now_realtime_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static SandboxRecord *record_of(const Sandbox *s) {
        return container_of(s, SandboxRecord, pub);
}

static void strv_free(char **v) {
        if (!v)
                return;
        for (char **p = v; *p; p++)
                free(*p);
        free(v);
}

bool sandbox_state_is_terminal(SandboxState state) {
        return state == STATE(COMPLETED) || state == STATE(FAILED) || state == STATE(TERMINATED);
}

bool sandbox_is_running(const Sandbox *s) {
        return s && s->state == STATE(RUNNING) && s->init_pid > 0;
}

uint64_t sandbox_seq(const Sandbox *s) {
        return record_of(s)->seq;
}

/*
 * Busy accounting and shutdown completion.
 */

static void registry_check_done(Backend *b) {
        void (*done)(Backend *b) = registry.shutdown_done;

        if (!done || registry.n_busy > 0)
                return;
        registry.shutdown_done = NULL;
        done(b);
}

static void record_update_busy(SandboxRecord *r) {
        bool busy = r->work_pending || r->n_open > 0;

        if (busy == r->busy_counted)
                return;
        r->busy_counted = busy;
        if (busy)
                registry.n_busy++;
        else {
                registry.n_busy--;
                registry_check_done(r->pub.backend);
        }
}

static bool record_is_busy(const SandboxRecord *r) {
        return r->work_pending || r->n_open > 0;
}

/*
 * State transitions.
 */

static void record_set_state(SandboxRecord *r, SandboxState state, const char *fmt, ...) _printf_(3, 4);
static void record_set_state(SandboxRecord *r, SandboxState state, const char *fmt, ...) {
        Sandbox *s = &r->pub;
        SandboxState old = s->state;
        char *reason = NULL;
        va_list ap;

        /* Terminal states never change. */
        if (sandbox_state_is_terminal(old))
                return;

        va_start(ap, fmt);
        if (vasprintf(&reason, fmt, ap) < 0)
                reason = NULL;
        va_end(ap);
        if (reason) {
                free(s->state_reason);
                s->state_reason = reason;
        }

        s->state = state;
        if (sandbox_state_is_terminal(state))
                s->backend->n_alive--;
        if (state == STATE(RUNNING) && s->start_time_ns == 0)
                s->start_time_ns = now_realtime_ns();
        if (sandbox_state_is_terminal(state)) {
                s->end_time_ns = now_realtime_ns();
                r->end_mono_ms = uv_now(s->backend->loop);
                s->init_pid = 0;
        }

        log_full(LOG_LEVEL_INFO, NULL, s->id, "%s -> %s%s%s", state_name(old), state_name(state),
                 s->state_reason && *s->state_reason ? ": " : "", s->state_reason ? s->state_reason : "");
}

/*
 * Scratch dir: prepared before the spawn, removed after the runner is gone.
 */

static int write_all(int fd, const uint8_t *p, size_t n) {
        while (n > 0) {
                ssize_t k = write(fd, p, n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += k;
                n -= (size_t)k;
        }
        return 0;
}

static void work_prepare(uv_work_t *w) {
        SandboxRecord *r = container_of(w, SandboxRecord, work);
        const Coreweave__Sandbox__V1__Container *c = r->pub.spec->containers[0];
        _cleanup_free_ char *files_dir = NULL;

        if (mkdir(r->scratch, 0700) < 0) {
                r->prepare_error = -errno;
                snprintf(r->prepare_what, sizeof(r->prepare_what), "scratch directory");
                return;
        }
        if (r->n_files == 0)
                return;
        if (asprintf(&files_dir, "%s/files", r->scratch) < 0) {
                r->prepare_error = -ENOMEM;
                return;
        }
        if (mkdir(files_dir, 0700) < 0) {
                r->prepare_error = -errno;
                snprintf(r->prepare_what, sizeof(r->prepare_what), "scratch directory");
                return;
        }
        for (size_t i = 0; i < r->n_files; i++) {
                const ProtobufCBinaryData *content = &c->files[i]->content;
                _cleanup_close_ int fd = -1;
                char path[PATH_MAX];
                int k;

                snprintf(path, sizeof(path), "%s/%zu", files_dir, i);
                fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
                if (fd < 0) {
                        r->prepare_error = -errno;
                        snprintf(r->prepare_what, sizeof(r->prepare_what), "file %zu", i);
                        return;
                }
                k = write_all(fd, content->data, content->len);
                if (k == 0 && close(TAKE_FD(fd)) < 0)
                        k = -errno;
                if (k < 0) {
                        r->prepare_error = k;
                        snprintf(r->prepare_what, sizeof(r->prepare_what), "file %zu", i);
                        return;
                }
        }
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void)remove(path);
        return 0;
}

static void work_remove(uv_work_t *w) {
        SandboxRecord *r = container_of(w, SandboxRecord, work);
        struct stat st;

        /* Depth first, never following links or crossing into mounts. */
        (void)nftw(r->scratch, remove_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
        r->prepare_error = lstat(r->scratch, &st) == 0 ? -ENOTEMPTY : 0;
}

static void after_remove(uv_work_t *w, int status) {
        SandboxRecord *r = container_of(w, SandboxRecord, work);

        if (r->prepare_error < 0)
                log_full(LOG_LEVEL_WARNING, NULL, r->pub.id, "cannot remove all of %s", r->scratch);
        r->work_pending = false;
        record_update_busy(r);
}

static void record_remove_scratch(SandboxRecord *r) {
        int k;

        r->work_pending = true;
        r->prepare_error = 0;
        k = uv_queue_work(r->pub.backend->loop, &r->work, work_remove, after_remove);
        if (k < 0) {
                log_full(LOG_LEVEL_WARNING, NULL, r->pub.id, "cannot remove scratch directory: %s", uv_strerror(k));
                r->work_pending = false;
        }
        record_update_busy(r);
}

/*
 * The runner's handles.
 */

static void on_handle_closed(uv_handle_t *h) {
        SandboxRecord *r = h->data;

        r->n_open--;
        if (r->n_open == 0 && r->closing)
                record_remove_scratch(r);
        record_update_busy(r);
}

static void record_close_handle(SandboxRecord *r, uv_handle_t *h) {
        if (!uv_is_closing(h))
                uv_close(h, on_handle_closed);
}

/* Everything has ended: close what is left, then remove the scratch dir. */
static void record_maybe_release(SandboxRecord *r) {
        if (r->closing || !r->exited || !r->status_done || !r->out_done || !r->err_done)
                return;
        r->closing = true;
        uv_timer_stop(&r->kill_timer);
        uv_timer_stop(&r->lifetime_timer);
        record_close_handle(r, (uv_handle_t *)&r->kill_timer);
        record_close_handle(r, (uv_handle_t *)&r->lifetime_timer);
        record_close_handle(r, (uv_handle_t *)&r->process);
}

static int exit_code_of(const SandboxRecord *r, bool *ret_known) {
        /* The runner exits with the main process's code (128+N for signal
         * N). If the runner itself was killed, PID 1 went down with it by
         * SIGKILL (pdeathsig). */
        if (r->term_signal == 0) {
                *ret_known = r->started;
                return (int)r->exit_status;
        }
        *ret_known = r->started && r->term_signal == SIGKILL;
        return 128 + r->term_signal;
}

/* The exit and the status result are both in: decide the terminal state. */
static void record_maybe_settle(SandboxRecord *r) {
        Sandbox *s = &r->pub;
        bool known;
        int code;

        if (!r->exited || !r->status_done || sandbox_state_is_terminal(s->state))
                return;

        code = exit_code_of(r, &known);
        if (known) {
                s->has_exit_code = true;
                s->exit_code = code;
        }

        if (s->state == STATE(TERMINATING)) {
                _cleanup_free_ char *reason = strdup(s->state_reason ? s->state_reason : "stopped");

                if (r->kill_sent)
                        record_set_state(r, STATE(TERMINATED), "%s; killed%s", reason ? reason : "stopped",
                                         r->term_sent ? " after the grace period" : "");
                else
                        record_set_state(r, STATE(TERMINATED), "%s", reason ? reason : "stopped");
        } else if (r->runner_error)
                record_set_state(r, STATE(FAILED), "%s", r->runner_error);
        else if (!r->started) {
                if (r->term_signal)
                        record_set_state(r, STATE(FAILED),
                                         "sandbox runner killed by signal %d before the sandbox started",
                                         r->term_signal);
                else
                        record_set_state(r, STATE(FAILED),
                                         "sandbox runner exited with code %" PRIi64 " before the sandbox started",
                                         r->exit_status);
        } else if (r->term_signal)
                record_set_state(r, STATE(FAILED), "sandbox runner killed by signal %d", r->term_signal);
        else if (code == 0)
                record_set_state(r, STATE(COMPLETED), "main process exited with code 0");
        else
                record_set_state(r, STATE(FAILED), "main process exited with code %d", code);
}

static void parse_status_line(SandboxRecord *r, char *line) {
        char *end = NULL;
        long pid;

        if (strncmp(line, "pid ", 4) == 0) {
                errno = 0;
                pid = strtol(line + 4, &end, 10);
                if (errno == 0 && end != line + 4 && *end == '\0' && pid > 0 && pid <= INT_MAX) {
                        r->status_pid = (pid_t)pid;
                        return;
                }
        } else if (strncmp(line, "error ", 6) == 0 && line[6]) {
                free(r->runner_error);
                r->runner_error = strdup(line + 6);
                if (r->runner_error)
                        return;
        }
        free(r->runner_error);
        if (asprintf(&r->runner_error, "sandbox runner sent a bad status line: %.200s", line) < 0)
                r->runner_error = NULL;
}

/* The status fd reached EOF (or was given up on): take its result. */
static void record_status_done(SandboxRecord *r) {
        Sandbox *s = &r->pub;
        char *nl;

        if (r->status_done)
                return;
        r->status_done = true;
        record_close_handle(r, (uv_handle_t *)&r->status);

        r->status_line[r->status_len] = '\0';
        nl = strchr(r->status_line, '\n');
        if (nl)
                *nl = '\0';
        if (r->status_len > 0)
                parse_status_line(r, r->status_line);

        r->started = r->status_pid > 0 && !r->runner_error;
        if (r->started && !sandbox_state_is_terminal(s->state)) {
                if (s->start_time_ns == 0)
                        s->start_time_ns = now_realtime_ns();
                if (!r->exited)
                        s->init_pid = r->status_pid;
                if (s->state == STATE(CREATING))
                        record_set_state(r, STATE(RUNNING), "main process started");
        }

        record_maybe_settle(r);
        record_maybe_release(r);
}

static void record_output_done(SandboxRecord *r, uv_pipe_t *p) {
        bool *done = p == &r->out ? &r->out_done : &r->err_done;

        if (*done)
                return;
        *done = true;
        record_close_handle(r, (uv_handle_t *)p);
        if (r->out_done && r->err_done)
                logbuf_close(r->pub.logs);
        record_maybe_release(r);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        *buf = uv_buf_init(read_buffer, sizeof(read_buffer));
}

static void on_output(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf) {
        SandboxRecord *r = stream->data;

        if (n > 0)
                logbuf_append(r->pub.logs, (const uint8_t *)buf->base, (size_t)n, now_realtime_ns());
        else if (n < 0)
                record_output_done(r, (uv_pipe_t *)stream);
}

static void on_status(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf) {
        SandboxRecord *r = stream->data;
        size_t room = STATUS_LINE_MAX - r->status_len;

        if (n > 0) {
                /* Only the first line counts; the rest is dropped. */
                size_t k = MIN((size_t)n, room);

                memcpy(r->status_line + r->status_len, buf->base, k);
                r->status_len += k;
        } else if (n < 0)
                record_status_done(r);
}

static void on_drain(uv_timer_t *t) {
        SandboxRecord *r = t->data;

        if (!r->status_done)
                log_full(LOG_LEVEL_WARNING, NULL, r->pub.id, "status fd still open %d ms after the runner exited",
                         DRAIN_MS);
        record_status_done(r);
        record_output_done(r, &r->out);
        record_output_done(r, &r->err);
}

static void on_runner_exit(uv_process_t *p, int64_t exit_status, int term_signal) {
        SandboxRecord *r = p->data;
        Backend *b = r->pub.backend;

        r->exited = true;
        r->exit_status = exit_status;
        r->term_signal = term_signal;
        r->pub.init_pid = 0;
        if (b->n_processes > 0)
                b->n_processes--;
        log_full(LOG_LEVEL_DEBUG, NULL, r->pub.id, "runner exited (status %" PRIi64 ", signal %d)",
                 exit_status, term_signal);

        uv_timer_stop(&r->lifetime_timer);
        uv_timer_stop(&r->kill_timer);
        r->kill_at_ms = 0;
        if (!r->status_done || !r->out_done || !r->err_done)
                uv_timer_start(&r->kill_timer, on_drain, DRAIN_MS, 0);

        record_maybe_settle(r);
        record_maybe_release(r);
}

static void record_kill(SandboxRecord *r) {
        int k;

        if (!r->spawned || r->exited || r->kill_sent)
                return;
        r->kill_sent = true;
        r->kill_at_ms = 0;
        uv_timer_stop(&r->kill_timer);
        /* The runner's death takes the whole sandbox with it (pdeathsig). */
        k = uv_process_kill(&r->process, SIGKILL);
        if (k < 0)
                log_full(LOG_LEVEL_WARNING, NULL, r->pub.id, "cannot kill sandbox runner: %s", uv_strerror(k));
        else
                log_full(LOG_LEVEL_INFO, NULL, r->pub.id, "grace period over, sandbox killed");
}

static void on_kill_timer(uv_timer_t *t) {
        record_kill(t->data);
}

/* Stop: SIGTERM now (forwarded to PID 1), SIGKILL after @grace_ms. */
static void record_stop(SandboxRecord *r, uint64_t grace_ms, const char *reason) {
        Sandbox *s = &r->pub;
        uint64_t kill_at;
        int k;

        if (sandbox_state_is_terminal(s->state))
                return;
        if (!r->spawned) {
                /* Nothing runs yet; the scratch work sees this and stops. */
                record_set_state(r, STATE(TERMINATED), "%s", reason);
                return;
        }
        if (s->state != STATE(TERMINATING))
                record_set_state(r, STATE(TERMINATING), "%s", reason);
        if (r->exited || r->kill_sent)
                return;
        if (grace_ms == 0) {
                record_kill(r);
                return;
        }
        kill_at = uv_now(s->backend->loop) + grace_ms;
        if (r->kill_at_ms != 0 && r->kill_at_ms <= kill_at)
                return;
        if (!r->term_sent) {
                r->term_sent = true;
                k = uv_process_kill(&r->process, SIGTERM);
                if (k < 0)
                        log_full(LOG_LEVEL_WARNING, NULL, s->id, "cannot signal sandbox runner: %s", uv_strerror(k));
        }
        r->kill_at_ms = kill_at;
        uv_timer_start(&r->kill_timer, on_kill_timer, grace_ms, 0);
}

void sandbox_stop(Sandbox *s, unsigned grace_seconds, const char *reason) {
        record_stop(record_of(s), (uint64_t)grace_seconds * 1000, reason ? reason : "deleted by request");
}

static void on_lifetime(uv_timer_t *t) {
        SandboxRecord *r = t->data;
        char reason[64];

        snprintf(reason, sizeof(reason), "max lifetime of %" PRIi32 " s reached", r->max_lifetime_s);
        record_stop(r, LIFETIME_GRACE_MS, reason);
}

/*
 * Spawning the runner.
 */

typedef struct Strv {
        char **v;
        size_t n, alloc;
        bool oom;
} Strv;

static void strv_add(Strv *a, const char *fmt, ...) _printf_(2, 3);
static void strv_add(Strv *a, const char *fmt, ...) {
        va_list ap;
        char *s;

        if (a->oom)
                return;
        if (a->n + 2 > a->alloc) {
                size_t alloc = MAX(a->alloc * 2, (size_t)32);
                char **v = realloc(a->v, alloc * sizeof(char *));

                if (!v) {
                        a->oom = true;
                        return;
                }
                a->v = v;
                a->alloc = alloc;
        }
        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0) {
                a->oom = true;
                s = NULL;
        }
        va_end(ap);
        if (!s)
                return;
        a->v[a->n++] = s;
        a->v[a->n] = NULL;
}

static char **runner_argv(const SandboxRecord *r) {
        const Sandbox *s = &r->pub;
        Strv a = {};

        strv_add(&a, "%s", s->backend->runner_path);
        strv_add(&a, "init");
        strv_add(&a, "--id");
        strv_add(&a, "%s", s->id);
        strv_add(&a, "--hostname");
        strv_add(&a, "%s", s->id);
        if (r->base_dir) {
                strv_add(&a, "--base");
                strv_add(&a, "%s", r->base_dir);
        }
        strv_add(&a, "--scratch");
        strv_add(&a, "%s", r->scratch);
        for (char **e = s->env; e && *e; e++) {
                strv_add(&a, "--env");
                strv_add(&a, "%s", *e);
        }
        if (s->working_dir) {
                strv_add(&a, "--cwd");
                strv_add(&a, "%s", s->working_dir);
        }
        for (size_t i = 0; i < r->n_files; i++) {
                strv_add(&a, "--file");
                strv_add(&a, "%s=%s/files/%zu", r->file_dests[i], r->scratch, i);
        }
        if (r->no_network)
                strv_add(&a, "--no-network");
        if (r->memory_bytes > 0) {
                strv_add(&a, "--memory");
                strv_add(&a, "%" PRIu64, r->memory_bytes);
        }
        strv_add(&a, "--status-fd");
        strv_add(&a, "3");
        strv_add(&a, "--");
        for (char **p = r->argv; *p; p++)
                strv_add(&a, "%s", *p);

        if (a.oom) {
                strv_free(a.v);
                return NULL;
        }
        return a.v;
}

static void record_fail_spawn(SandboxRecord *r, const char *what) {
        /* Nothing runs: settle now, close what was opened. */
        r->exited = r->status_done = r->out_done = r->err_done = true;
        logbuf_close(r->pub.logs);
        record_set_state(r, STATE(FAILED), "%s", what);
        r->closing = true;
        record_close_handle(r, (uv_handle_t *)&r->out);
        record_close_handle(r, (uv_handle_t *)&r->err);
        record_close_handle(r, (uv_handle_t *)&r->status);
        record_close_handle(r, (uv_handle_t *)&r->kill_timer);
        record_close_handle(r, (uv_handle_t *)&r->lifetime_timer);
        record_close_handle(r, (uv_handle_t *)&r->process);
}

static void record_spawn(SandboxRecord *r) {
        Sandbox *s = &r->pub;
        Backend *b = s->backend;
        char *runner_env[] = { (char *)DEFAULT_PATH, NULL };
        uv_process_options_t opts = {};
        uv_stdio_container_t stdio[4];
        char **argv;
        uv_handle_t *handles[] = {
                (uv_handle_t *)&r->out, (uv_handle_t *)&r->err, (uv_handle_t *)&r->status,
                (uv_handle_t *)&r->kill_timer, (uv_handle_t *)&r->lifetime_timer, (uv_handle_t *)&r->process,
        };
        char what[PATH_MAX + 64];
        uint64_t elapsed, lifetime_ms;
        int k;

        argv = b->runner_path ? runner_argv(r) : NULL;
        if (!argv) {
                logbuf_close(s->logs);
                record_set_state(r, STATE(FAILED), "cannot start the sandbox runner: %s",
                                 b->runner_path ? "out of memory" : "none configured");
                record_remove_scratch(r);
                return;
        }

        uv_pipe_init(b->loop, &r->out, 0);
        uv_pipe_init(b->loop, &r->err, 0);
        uv_pipe_init(b->loop, &r->status, 0);
        uv_timer_init(b->loop, &r->kill_timer);
        uv_timer_init(b->loop, &r->lifetime_timer);
        for (size_t i = 0; i < ELEMENTSOF(handles); i++)
                handles[i]->data = r;
        /* uv_spawn initialises the process handle even when it fails. */
        r->n_open = ELEMENTSOF(handles);
        record_update_busy(r);

        stdio[0].flags = UV_IGNORE;
        stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
        stdio[1].data.stream = (uv_stream_t *)&r->out;
        stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
        stdio[2].data.stream = (uv_stream_t *)&r->err;
        stdio[3].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
        stdio[3].data.stream = (uv_stream_t *)&r->status;
        opts.exit_cb = on_runner_exit;
        opts.file = b->runner_path;
        opts.args = argv;
        opts.env = runner_env;
        opts.stdio_count = ELEMENTSOF(stdio);
        opts.stdio = stdio;
        /* Its own session: terminal signals reach sandboxes only through us. */
        opts.flags = UV_PROCESS_DETACHED;

        k = uv_spawn(b->loop, &r->process, &opts);
        strv_free(argv);
        r->process.data = r;
        if (k < 0) {
                snprintf(what, sizeof(what), "cannot start sandbox runner %s: %s", b->runner_path, uv_strerror(k));
                record_fail_spawn(r, what);
                return;
        }

        r->spawned = true;
        b->n_processes++;
        record_set_state(r, STATE(CREATING), "sandbox runner started");
        uv_read_start((uv_stream_t *)&r->out, on_alloc, on_output);
        uv_read_start((uv_stream_t *)&r->err, on_alloc, on_output);
        uv_read_start((uv_stream_t *)&r->status, on_alloc, on_status);

        if (r->max_lifetime_s > 0) {
                /* Counted from creation, not from the spawn. */
                lifetime_ms = (uint64_t)r->max_lifetime_s * 1000;
                elapsed = uv_now(b->loop) - r->create_mono_ms;
                uv_timer_start(&r->lifetime_timer, on_lifetime, lifetime_ms - MIN(elapsed, lifetime_ms), 0);
        }
}

static void after_prepare(uv_work_t *w, int status) {
        SandboxRecord *r = container_of(w, SandboxRecord, work);
        Sandbox *s = &r->pub;

        r->work_pending = false;
        if (sandbox_state_is_terminal(s->state)) {
                /* Stopped while the scratch dir was being written. */
                logbuf_close(s->logs);
                record_remove_scratch(r);
                return;
        }
        if (status < 0 || r->prepare_error < 0) {
                int e = status < 0 ? status : r->prepare_error;

                log_full(LOG_LEVEL_ERROR, NULL, s->id, "cannot prepare %s in %s: %s",
                         r->prepare_what[0] ? r->prepare_what : "scratch directory", r->scratch, strerror(-e));
                logbuf_close(s->logs);
                record_set_state(r, STATE(FAILED), "cannot prepare the sandbox: %s: %s",
                                 r->prepare_what[0] ? r->prepare_what : "scratch directory", strerror(-e));
                record_remove_scratch(r);
                return;
        }
        record_spawn(r);
        record_update_busy(r);
}

/*
 * Checking the spec.
 */

static void plan_done(Plan *p) {
        strv_free(p->argv);
        strv_free(p->env);
        free(p->working_dir);
        for (size_t i = 0; i < p->n_files; i++)
                free(p->file_dests[i]);
        free(p->file_dests);
        free(p->base);
        free(p->base_dir);
        *p = (Plan) {};
}

static int fail(char *errbuf, size_t n, const char *fmt, ...) _printf_(3, 4);
static int fail(char *errbuf, size_t n, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(errbuf, n, fmt, ap);
        va_end(ap);
        return -EINVAL;
}

/*
 * parse_quantity() - a Kubernetes quantity ("512Mi", "1Gi", "1G", "100M",
 * "1.5Gi", "1e9", "1024") in bytes, rounded up. Exact integer arithmetic:
 * at most 18 digits, so digits times any factor fits in 128 bits.
 */
static int parse_quantity(const char *s, uint64_t *ret) {
        static const struct { const char *suffix; unsigned shift; unsigned e10; bool milli; } suffixes[] = {
                { "Ki", 10 }, { "Mi", 20 }, { "Gi", 30 }, { "Ti", 40 }, { "Pi", 50 }, { "Ei", 60 },
                { "k", 0, 3 }, { "K", 0, 3 }, { "M", 0, 6 }, { "G", 0, 9 }, { "T", 0, 12 },
                { "P", 0, 15 }, { "E", 0, 18 }, { "m", 0, 0, true }, { "", 0, 0 },
        };
        unsigned __int128 num = 0, den = 1, value;
        unsigned digits = 0, shift = 0, e10 = 0;
        bool milli = false, found = false;
        const char *p = s;

        for (; *p >= '0' && *p <= '9'; p++, digits++)
                num = num * 10 + (unsigned)(*p - '0');
        if (*p == '.') {
                if (p[1] < '0' || p[1] > '9')
                        return -EINVAL;
                for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
                        num = num * 10 + (unsigned)(*p - '0');
                        den *= 10;
                }
        }
        if (digits == 0 || digits > 18)
                return -EINVAL;

        if ((*p == 'e' || *p == 'E') && p[1] >= '0' && p[1] <= '9') {
                /* Decimal exponent: "1e9", "5E6". */
                for (p++; *p >= '0' && *p <= '9'; p++) {
                        e10 = e10 * 10 + (unsigned)(*p - '0');
                        if (e10 > 18)
                                return -ERANGE;
                }
                if (*p)
                        return -EINVAL;
                found = true;
        } else
                for (size_t i = 0; i < ELEMENTSOF(suffixes); i++)
                        if (streq(p, suffixes[i].suffix)) {
                                shift = suffixes[i].shift;
                                e10 = suffixes[i].e10;
                                milli = suffixes[i].milli;
                                found = true;
                                break;
                        }
        if (!found)
                return -EINVAL;

        /* num < 10^18 < 2^60, times 2^60 or 10^18: below 2^128. */
        num <<= shift;
        while (e10-- > 0)
                num *= 10;
        if (milli)
                den *= 1000;
        value = (num + den - 1) / den;
        if (value > (unsigned __int128)INT64_MAX)
                return -ERANGE;
        *ret = (uint64_t)value;
        return 0;
}

static int check_memory(const char *field, const char *q, uint64_t *ret, char *errbuf, size_t n) {
        uint64_t bytes;

        if (!q || !*q)
                return 0;
        if (parse_quantity(q, &bytes) < 0)
                return fail(errbuf, n, "%s: invalid quantity \"%.64s\" (use e.g. 512Mi, 1Gi, 1G)", field, q);
        if (bytes < MEMORY_MIN)
                return fail(errbuf, n, "%s: \"%.64s\" is below the minimum of 1Mi", field, q);
        if (ret)
                *ret = bytes;
        return 0;
}

static int check_resources(const Coreweave__Sandbox__V1__Container *c, Plan *p, char *errbuf, size_t n) {
        const Coreweave__Sandbox__V1__ResourceRequirements *rr = c->resource_requirements;
        uint64_t limit = 0, legacy = 0;
        int k;

        if (c->resources) {
                k = check_memory("spec.containers[0].resources.memory", c->resources->memory, &legacy, errbuf, n);
                if (k < 0)
                        return k;
        }
        if (rr && rr->requests) {
                k = check_memory("spec.containers[0].resource_requirements.requests.memory",
                                 rr->requests->memory, NULL, errbuf, n);
                if (k < 0)
                        return k;
        }
        if (rr && rr->limits) {
                k = check_memory("spec.containers[0].resource_requirements.limits.memory",
                                 rr->limits->memory, &limit, errbuf, n);
                if (k < 0)
                        return k;
        }
        p->memory_bytes = limit ? limit : legacy;
        return 0;
}

static int check_command(const Coreweave__Sandbox__V1__Container *c, Plan *p, char *errbuf, size_t n) {
        size_t bytes = 0;

        if (strlen(c->command) > COMMAND_MAX)
                return fail(errbuf, n, "spec.containers[0].command: longer than %d bytes", COMMAND_MAX);
        if (c->n_args > ARGS_MAX)
                return fail(errbuf, n, "spec.containers[0].args: more than %d arguments", ARGS_MAX);
        for (size_t i = 0; i < c->n_args; i++)
                bytes += strlen(c->args[i]) + 1;
        if (bytes > ARGV_BYTES_MAX)
                return fail(errbuf, n, "spec.containers[0].args: more than %d bytes in all", ARGV_BYTES_MAX);

        if (!*c->command) {
                if (c->n_args > 0)
                        return fail(errbuf, n, "spec.containers[0].command: required when args are given");
                p->argv = calloc(ELEMENTSOF(keep_alive_argv), sizeof(char *));
                if (!p->argv)
                        return -ENOMEM;
                for (size_t i = 0; keep_alive_argv[i]; i++)
                        if (!(p->argv[i] = strdup(keep_alive_argv[i])))
                                return -ENOMEM;
                return 0;
        }

        p->argv = calloc(c->n_args + 2, sizeof(char *));
        if (!p->argv)
                return -ENOMEM;
        if (!(p->argv[0] = strdup(c->command)))
                return -ENOMEM;
        for (size_t i = 0; i < c->n_args; i++)
                if (!(p->argv[i + 1] = strdup(c->args[i])))
                        return -ENOMEM;
        return 0;
}

static int check_env(const Coreweave__Sandbox__V1__Container *c, Plan *p, char *errbuf, size_t n) {
        size_t bytes = 0, k = 0;
        bool have_path = false;

        if (c->n_environment_variables > ENV_MAX)
                return fail(errbuf, n, "spec.containers[0].environment_variables: more than %d variables", ENV_MAX);

        p->env = calloc(c->n_environment_variables + 2, sizeof(char *));
        if (!p->env)
                return -ENOMEM;
        for (size_t i = 0; i < c->n_environment_variables; i++) {
                const char *key = c->environment_variables[i]->key;
                const char *value = c->environment_variables[i]->value;
                size_t klen = strlen(key);
                bool dup = false;

                if (klen == 0)
                        return fail(errbuf, n, "spec.containers[0].environment_variables: empty name");
                if (klen > ENV_KEY_MAX)
                        return fail(errbuf, n, "spec.containers[0].environment_variables: name longer than %d bytes",
                                    ENV_KEY_MAX);
                if (strchr(key, '='))
                        return fail(errbuf, n, "spec.containers[0].environment_variables: name \"%.64s\" contains '='",
                                    key);
                bytes += klen + strlen(value) + 2;
                if (bytes > ENV_BYTES_MAX)
                        return fail(errbuf, n, "spec.containers[0].environment_variables: more than %d bytes in all",
                                    ENV_BYTES_MAX);

                /* A repeated map key: the later value wins, as in protobuf. */
                for (size_t j = i + 1; j < c->n_environment_variables; j++)
                        if (streq(c->environment_variables[j]->key, key))
                                dup = true;
                if (dup)
                        continue;
                if (streq(key, "PATH"))
                        have_path = true;
                if (asprintf(&p->env[k], "%s=%s", key, value) < 0) {
                        p->env[k] = NULL;
                        return -ENOMEM;
                }
                k++;
        }
        /* Images carry a PATH; a host-root sandbox gets the usual one. */
        if (!have_path && !(p->env[k] = strdup(DEFAULT_PATH)))
                return -ENOMEM;
        return 0;
}

static bool path_has_dotdot(const char *path) {
        for (const char *q = path; (q = strstr(q, "..")); q += 2)
                if ((q == path || q[-1] == '/') && (q[2] == '/' || q[2] == '\0'))
                        return true;
        return false;
}

static int check_files(const Coreweave__Sandbox__V1__Container *c, Plan *p, char *errbuf, size_t n) {
        size_t bytes = 0;

        if (c->n_files > FILES_MAX)
                return fail(errbuf, n, "spec.containers[0].files: more than %d files", FILES_MAX);
        p->file_dests = calloc(c->n_files ? c->n_files : 1, sizeof(char *));
        if (!p->file_dests)
                return -ENOMEM;
        for (size_t i = 0; i < c->n_files; i++) {
                const Coreweave__Sandbox__V1__FileMount *f = c->files[i];
                size_t len = strlen(f->path);

                if (f->path[0] != '/' || len < 2)
                        return fail(errbuf, n, "spec.containers[0].files[%zu].path: must be an absolute file path", i);
                if (len > PATH_LEN_MAX)
                        return fail(errbuf, n, "spec.containers[0].files[%zu].path: longer than %d bytes",
                                    i, PATH_LEN_MAX);
                if (f->path[len - 1] == '/')
                        return fail(errbuf, n, "spec.containers[0].files[%zu].path: must name a file, not a directory",
                                    i);
                if (path_has_dotdot(f->path))
                        return fail(errbuf, n, "spec.containers[0].files[%zu].path: must not contain \"..\"", i);
                if (strchr(f->path, '='))
                        return fail(errbuf, n, "spec.containers[0].files[%zu].path: must not contain '='", i);
                bytes += f->content.len;
                if (bytes > FILES_BYTES_MAX)
                        return fail(errbuf, n, "spec.containers[0].files: more than %d bytes of content in all",
                                    FILES_BYTES_MAX);
                if (!(p->file_dests[i] = strdup(f->path)))
                        return -ENOMEM;
                p->n_files = i + 1;
        }
        return 0;
}

/* The rootfs for @image under image_dir, if there is one. */
static int choose_base(const Backend *b, const char *image, Plan *p) {
        _cleanup_free_ char *name = NULL, *dir = NULL;
        struct stat st;

        if (b->image_dir && *image) {
                name = strdup(image);
                if (!name)
                        return -ENOMEM;
                for (char *q = name; *q; q++)
                        if (*q == '/' || *q == ':')
                                *q = '_';
                if (!streq(name, ".") && !streq(name, "..")) {
                        if (asprintf(&dir, "%s/%s", b->image_dir, name) < 0)
                                return -ENOMEM;
                        if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) {
                                if (asprintf(&p->base, "image:%s", image) < 0)
                                        return -ENOMEM;
                                p->base_dir = TAKE_PTR(dir);
                                return 0;
                        }
                }
        }
        p->base = strdup("host");
        return p->base ? 0 : -ENOMEM;
}

static int check_spec(const Backend *b, const Coreweave__Sandbox__V1__SandboxSpec *spec, Plan *p,
                      char *errbuf, size_t n) {
        const Coreweave__Sandbox__V1__Container *c;
        int k;

        if (spec->n_containers == 0 || !spec->containers[0])
                return fail(errbuf, n, "spec.containers: at least one container is required");
        if (spec->n_containers > CONTAINERS_MAX)
                return fail(errbuf, n, "spec.containers: more than %d containers", CONTAINERS_MAX);
        if (spec->max_lifetime_seconds < 0)
                return fail(errbuf, n, "spec.max_lifetime_seconds: must not be negative");
        if (spec->n_tags > TAGS_MAX)
                return fail(errbuf, n, "spec.tags: more than %d tags", TAGS_MAX);
        for (size_t i = 0; i < spec->n_tags; i++)
                if (strlen(spec->tags[i]) > TAG_MAX)
                        return fail(errbuf, n, "spec.tags[%zu]: longer than %d bytes", i, TAG_MAX);

        c = spec->containers[0];
        if (strlen(c->image) > IMAGE_NAME_MAX)
                return fail(errbuf, n, "spec.containers[0].image: longer than %d bytes", IMAGE_NAME_MAX);
        if (strlen(c->working_dir) > PATH_LEN_MAX)
                return fail(errbuf, n, "spec.containers[0].working_dir: longer than %d bytes", PATH_LEN_MAX);
        if (*c->working_dir && c->working_dir[0] != '/')
                return fail(errbuf, n, "spec.containers[0].working_dir: must be an absolute path");

        k = check_command(c, p, errbuf, n);
        if (k < 0)
                return k;
        k = check_env(c, p, errbuf, n);
        if (k < 0)
                return k;
        k = check_files(c, p, errbuf, n);
        if (k < 0)
                return k;
        k = check_resources(c, p, errbuf, n);
        if (k < 0)
                return k;

        if (*c->working_dir && !(p->working_dir = strdup(c->working_dir)))
                return -ENOMEM;
        p->no_network = spec->network &&
                spec->network->_deny_egress_case == COREWEAVE__SANDBOX__V1__NETWORK_OPTIONS___DENY_EGRESS_DENY_EGRESS &&
                spec->network->deny_egress;
        p->max_lifetime_s = spec->max_lifetime_seconds;
        return choose_base(b, c->image, p);
}

/*
 * The registry.
 */

Sandbox *sandbox_find(Backend *b, const char *id) {
        if (!id)
                return NULL;
        /* Recent sandboxes are the ones asked about most. */
        for (Sandbox *s = b->sandboxes_tail; s; s = s->prev)
                if (streq(s->id, id))
                        return s;
        return NULL;
}

Sandbox *sandbox_find_by_request_id(Backend *b, const char *request_id) {
        if (!request_id || !*request_id)
                return NULL;
        for (Sandbox *s = b->sandboxes_tail; s; s = s->prev)
                if (s->request_id && streq(s->request_id, request_id))
                        return s;
        return NULL;
}

static int new_id(Backend *b, char *id, size_t n) {
        uint8_t bytes[8];

        for (int tries = 0; tries < 16; tries++) {
                ssize_t k = getrandom(bytes, sizeof(bytes), 0);

                if (k != (ssize_t)sizeof(bytes))
                        return k < 0 ? -errno : -EIO;
                snprintf(id, n, "sb-%02x%02x%02x%02x%02x%02x%02x%02x", bytes[0], bytes[1], bytes[2],
                         bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]);
                if (!sandbox_find(b, id))
                        return 0;
        }
        return -EEXIST;
}

static SandboxRecord *record_free(SandboxRecord *r) {
        Sandbox *s;
        Backend *b;

        if (!r)
                return NULL;
        s = &r->pub;
        b = s->backend;
        if (b) {
                if (s->prev)
                        s->prev->next = s->next;
                else if (b->sandboxes_head == s)
                        b->sandboxes_head = s->next;
                if (s->next)
                        s->next->prev = s->prev;
                else if (b->sandboxes_tail == s)
                        b->sandboxes_tail = s->prev;
                b->n_sandboxes--;
                /* Only at exit is a sandbox forgotten before it ended. */
                if (!sandbox_state_is_terminal(s->state))
                        b->n_alive--;
        }
        free(s->request_id);
        free(s->delete_request_id);
        if (s->spec)
                protobuf_c_message_free_unpacked(&s->spec->base, NULL);
        free(s->state_reason);
        free(s->base);
        strv_free(s->env);
        free(s->working_dir);
        logbuf_free(s->logs);
        strv_free(r->argv);
        for (size_t i = 0; i < r->n_files; i++)
                free(r->file_dests[i]);
        free(r->file_dests);
        free(r->scratch);
        free(r->base_dir);
        free(r->runner_error);
        free(r);
        return NULL;
}

static void registry_link(Backend *b, SandboxRecord *r) {
        Sandbox *s = &r->pub;

        s->prev = b->sandboxes_tail;
        s->next = NULL;
        if (b->sandboxes_tail)
                b->sandboxes_tail->next = s;
        else
                b->sandboxes_head = s;
        b->sandboxes_tail = s;
        b->n_sandboxes++;
}

static unsigned count_alive(const Backend *b) {
        unsigned n = 0;

        for (const Sandbox *s = b->sandboxes_head; s; s = s->next)
                if (!sandbox_state_is_terminal(s->state))
                        n++;
        return n;
}

int sandbox_create(Backend *b, const Coreweave__Sandbox__V1__SandboxSpec *spec, const char *request_id,
                   char *errbuf, size_t errbuf_size, Sandbox **ret) {
        _cleanup_(plan_done) Plan plan = {};
        SandboxRecord *r;
        Sandbox *s;
        int k;

        if (b->shutting_down || registry.shutting_down)
                return -ESHUTDOWN;
        if (count_alive(b) >= SANDBOX_ALIVE_MAX) {
                snprintf(errbuf, errbuf_size, "too many sandboxes running (at most %d)", SANDBOX_ALIVE_MAX);
                return -EUSERS;
        }
        k = check_spec(b, spec, &plan, errbuf, errbuf_size);
        if (k < 0)
                return k;

        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        s = &r->pub;
        s->priv = r;
        k = new_id(b, s->id, sizeof(s->id));
        if (k < 0) {
                free(r);
                return k;
        }
        s->spec = (Coreweave__Sandbox__V1__SandboxSpec *)pb_message_dup(&spec->base);
        if (request_id && *request_id)
                s->request_id = strdup(request_id);
        k = logbuf_new(&s->logs, LOGBUF_DEFAULT_MAX_BYTES);
        if (!s->spec || (request_id && *request_id && !s->request_id) || k < 0 ||
            asprintf(&r->scratch, "%s/%s", b->work_dir, s->id) < 0) {
                r->scratch = NULL;
                record_free(r);
                return -ENOMEM;
        }

        s->backend = b;
        s->state = STATE(PENDING);
        b->n_alive++;
        b->alive_peak = MAX(b->alive_peak, b->n_alive);
        s->state_reason = strdup("preparing the sandbox");
        s->create_time_ns = now_realtime_ns();
        r->create_mono_ms = uv_now(b->loop);
        r->seq = ++b->next_sandbox_seq;
        s->base = TAKE_PTR(plan.base);
        s->env = TAKE_PTR(plan.env);
        s->working_dir = TAKE_PTR(plan.working_dir);
        r->argv = TAKE_PTR(plan.argv);
        r->file_dests = TAKE_PTR(plan.file_dests);
        r->n_files = plan.n_files;
        plan.n_files = 0;
        r->base_dir = TAKE_PTR(plan.base_dir);
        r->memory_bytes = plan.memory_bytes;
        r->no_network = plan.no_network;
        r->max_lifetime_s = plan.max_lifetime_s;
        registry_link(b, r);

        log_full(LOG_LEVEL_INFO, NULL, s->id, "created (PENDING): %s on %s", r->argv[0], s->base);

        r->work_pending = true;
        k = uv_queue_work(b->loop, &r->work, work_prepare, after_prepare);
        if (k < 0) {
                r->work_pending = false;
                record_set_state(r, STATE(FAILED), "cannot prepare the sandbox: %s", uv_strerror(k));
                logbuf_close(s->logs);
        }
        record_update_busy(r);

        *ret = s;
        return 0;
}

void sandboxes_prune(Backend *b) {
        uint64_t now = uv_now(b->loop);
        unsigned n_terminal = 0;
        Sandbox *next;

        if (registry.last_prune_ms != 0 && now - registry.last_prune_ms < PRUNE_INTERVAL_MS)
                return;
        registry.last_prune_ms = now;

        for (Sandbox *s = b->sandboxes_head; s; s = s->next)
                if (sandbox_state_is_terminal(s->state))
                        n_terminal++;

        for (Sandbox *s = b->sandboxes_head; s; s = next) {
                SandboxRecord *r = record_of(s);

                next = s->next;
                if (!sandbox_state_is_terminal(s->state) || record_is_busy(r))
                        continue;
                if (now - r->end_mono_ms < RETENTION_MS && n_terminal <= TERMINAL_MAX)
                        continue;
                log_full(LOG_LEVEL_DEBUG, NULL, s->id, "forgotten");
                record_free(r);
                n_terminal--;
        }
}

/*
 * Wire form.
 */

struct SandboxProtoStorage {
        Coreweave__Sandbox__V1__SandboxStatus status;
        Google__Protobuf__Timestamp times[3];
        char runtime_class[IMAGE_NAME_MAX + 64];
};

static Google__Protobuf__Timestamp *timestamp_of(Google__Protobuf__Timestamp *ts, int64_t ns) {
        if (ns <= 0)
                return NULL;
        *ts = (Google__Protobuf__Timestamp) GOOGLE__PROTOBUF__TIMESTAMP__INIT;
        ts->seconds = ns / 1000000000;
        ts->nanos = (int32_t)(ns % 1000000000);
        return ts;
}

void sandbox_to_proto(const Sandbox *s, Coreweave__Sandbox__V1__Sandbox *ret, SandboxProtoStorage **storage) {
        SandboxProtoStorage *st;
        Coreweave__Sandbox__V1__SandboxStatus *status;

        *ret = (Coreweave__Sandbox__V1__Sandbox) COREWEAVE__SANDBOX__V1__SANDBOX__INIT;
        ret->sandbox_id = (char *)s->id;
        ret->spec = s->spec;

        st = calloc(1, sizeof(*st));
        *storage = st;
        if (!st)
                return;

        status = &st->status;
        *status = (Coreweave__Sandbox__V1__SandboxStatus) COREWEAVE__SANDBOX__V1__SANDBOX_STATUS__INIT;
        status->state = s->state;
        if (s->state_reason)
                status->state_reason = s->state_reason;
        status->create_time = timestamp_of(&st->times[0], s->create_time_ns);
        status->start_time = timestamp_of(&st->times[1], s->start_time_ns);
        status->end_time = timestamp_of(&st->times[2], s->end_time_ns);
        if (s->has_exit_code) {
                status->_exit_code_case = COREWEAVE__SANDBOX__V1__SANDBOX_STATUS___EXIT_CODE_EXIT_CODE;
                status->exit_code = s->exit_code;
        }
        snprintf(st->runtime_class, sizeof(st->runtime_class), "cwsandbox-local/%s", s->base ? s->base : "host");
        status->effective_runtime_class = st->runtime_class;
        status->effective_max_lifetime_seconds = s->spec && s->spec->max_lifetime_seconds > 0 ?
                s->spec->max_lifetime_seconds : 0;
        ret->status = status;
}

void sandbox_proto_done(SandboxProtoStorage *storage) {
        free(storage);
}

/*
 * Whole registry.
 */

void sandboxes_count(const Backend *b, unsigned *ret_alive, unsigned *ret_total) {
        if (ret_alive)
                *ret_alive = count_alive(b);
        if (ret_total)
                *ret_total = b->n_sandboxes;
}

void sandboxes_shutdown(Backend *b, unsigned grace_ms, void (*done)(Backend *b)) {
        Sandbox *next;

        registry.shutting_down = true;
        registry.shutdown_done = done;
        log_info("stopping %u sandbox(es), SIGKILL after %u ms", count_alive(b), grace_ms);
        for (Sandbox *s = b->sandboxes_head; s; s = next) {
                next = s->next;
                record_stop(record_of(s), grace_ms, "server shutting down");
        }
        registry_check_done(b);
}

void sandboxes_free(Backend *b) {
        Sandbox *next;

        for (Sandbox *s = b->sandboxes_head; s; s = next) {
                SandboxRecord *r = record_of(s);

                next = s->next;
                if (record_is_busy(r)) {
                        /* uv still points into it: leak rather than corrupt. */
                        log_full(LOG_LEVEL_WARNING, NULL, s->id, "still has open handles at exit");
                        continue;
                }
                record_free(r);
        }
        registry.n_busy = 0;
        registry.shutting_down = false;
        registry.shutdown_done = NULL;
        registry.last_prune_ms = 0;
}
