/*
 * Exec and StreamExec: a process inside a running sandbox.
 *
 * Each exec is one cwsandbox-local-run "enter" process (see runner.c), spawned
 * with libuv: pipes for stdin, stdout and stderr, or one pty whose slave
 * becomes the command's terminal. Both rpcs share the process half (Exec
 * below); the unary one buffers output up to max_output_bytes, the streaming
 * one forwards every read as an output frame.
 *
 * Completion: the exit callback, then a short drain of what the pipes still
 * hold. Background children may keep a pipe open forever, so the drain is
 * bounded by a timer rather than by EOF.
 *
 * Lifetime: an Exec is freed when its process has exited (or never started),
 * every libuv handle it opened is closed, and its call has ended (the unary
 * answer sent, or on_done() of the stream seen). A cancelled call SIGTERMs the
 * runner, which kills the command's whole process group.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "sandbox.h"
#include "server.h"

#define EXEC_ARGV_MAX 1024
#define EXEC_ARGV_BYTES_MAX (256 * 1024)
#define EXEC_ENV_MAX 256
#define EXEC_OUTPUT_DEFAULT (1024 * 1024)
#define EXEC_OUTPUT_MAX (64 * 1024 * 1024)
#define EXEC_DRAIN_MS 50
#define EXEC_READ_CHUNK (64 * 1024)

typedef Coreweave__Sandbox__V1__ExecStreamResponse ExecStreamResponse;

typedef struct OutBuf {
        uint8_t *data;
        size_t len, cap;
        int64_t produced;
} OutBuf;

typedef struct Exec {
        Backend *backend;
        char sandbox_id[40];
        char *argv0;

        UnaryCall *call;                /* unary Exec, until answered */
        size_t max_output;
        OutBuf out[2];

        ServerStream *stream;           /* StreamExec, until on_done */
        bool stream_done;
        bool got_init;
        bool tty;
        bool stdin_open;
        bool read_armed;
        bool writes_pending;
        bool paused;

        uv_process_t proc;
        bool spawned, exited;
        int exit_code;
        uv_pipe_t in, pipes[2];         /* pipes[1] is the pty master with a tty */
        bool in_open, pipe_open[2];
        bool pipe_eof[2];
        uv_timer_t drain;
        bool drain_open, drain_started;
        bool completed;
        unsigned n_handles;             /* open handles, closes pending included */
} Exec;

static void exec_maybe_free(Exec *e) {
        if (e->n_handles > 0 || (e->spawned && !e->exited))
                return;
        if (e->call || (e->stream && !e->stream_done))
                return;
        free(e->out[0].data);
        free(e->out[1].data);
        free(e->argv0);
        free(e);
}

static void exec_handle_closed(uv_handle_t *h) {
        Exec *e = h->data;

        e->n_handles--;
        exec_maybe_free(e);
}

static void exec_close(Exec *e, uv_handle_t *h, bool *open) {
        if (!*open)
                return;
        *open = false;
        uv_close(h, exec_handle_closed);
}

static void exec_close_all(Exec *e) {
        exec_close(e, (uv_handle_t *)&e->in, &e->in_open);
        exec_close(e, (uv_handle_t *)&e->pipes[0], &e->pipe_open[0]);
        exec_close(e, (uv_handle_t *)&e->pipes[1], &e->pipe_open[1]);
        exec_close(e, (uv_handle_t *)&e->drain, &e->drain_open);
}

static int64_t now_realtime_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static Google__Protobuf__Timestamp timestamp_now(void) {
        Google__Protobuf__Timestamp t = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
        int64_t ns = now_realtime_ns();

        t.seconds = ns / 1000000000;
        t.nanos = (int32_t)(ns % 1000000000);
        return t;
}

/* ---- answering ------------------------------------------------------------ */

static void exec_reply_unary(Exec *e) {
        Coreweave__Sandbox__V1__ExecResponse r = COREWEAVE__SANDBOX__V1__EXEC_RESPONSE__INIT;

        r.stdout = (ProtobufCBinaryData){ e->out[0].len, e->out[0].data };
        r.stderr = (ProtobufCBinaryData){ e->out[1].len, e->out[1].data };
        r.exit_code = e->exit_code;
        r.stdout_truncated = e->out[0].produced > (int64_t)e->out[0].len;
        r.stderr_truncated = e->out[1].produced > (int64_t)e->out[1].len;
        r.stdout_bytes_produced = e->out[0].produced;
        r.stderr_bytes_produced = e->out[1].produced;
        unary_call_reply(e->call, &r.base);
        e->call = NULL;
}

static void exec_send_exit(Exec *e) {
        Coreweave__Sandbox__V1__ExecStreamExit x = COREWEAVE__SANDBOX__V1__EXEC_STREAM_EXIT__INIT;
        ExecStreamResponse r = COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__INIT;
        Google__Protobuf__Timestamp t = timestamp_now();

        x.exit_code = e->exit_code;
        x.completed_time = &t;
        r.message_case = COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__MESSAGE_EXIT;
        r.exit = &x;
        (void)server_stream_send(e->stream, &r.base);
        server_stream_finish(e->stream, GRPC_STATUS_OK, NULL);
}

static void exec_fail_stream(Exec *e, grpc_status_code code, const char *what, const char *msg) {
        Coreweave__Sandbox__V1__ExecStreamError x = COREWEAVE__SANDBOX__V1__EXEC_STREAM_ERROR__INIT;
        ExecStreamResponse r = COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__INIT;

        x.message = (char *)msg;
        x.code = (char *)what;
        r.message_case = COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__MESSAGE_ERROR;
        r.error = &x;
        (void)server_stream_send(e->stream, &r.base);
        server_stream_finish(e->stream, code, "%s", msg);
}

/* The process has exited and its output is drained (or given up on). */
static void exec_complete(Exec *e) {
        if (e->completed)
                return;
        e->completed = true;
        exec_close_all(e);
        log_full(LOG_LEVEL_DEBUG, NULL, e->sandbox_id, "exec %s exited with code %d", e->argv0, e->exit_code);
        if (e->call)
                exec_reply_unary(e);
        else if (e->stream && !e->stream_done && !server_stream_is_done(e->stream))
                exec_send_exit(e);
        exec_maybe_free(e);
}

static void exec_check_drained(Exec *e) {
        bool open = (e->pipe_open[0] && !e->pipe_eof[0]) || (e->pipe_open[1] && !e->pipe_eof[1]);

        if (e->exited && !open)
                exec_complete(e);
}

static void exec_drain_timeout(uv_timer_t *t) {
        exec_complete(t->data);
}

/* ---- output ----------------------------------------------------------------- */

static void outbuf_add(OutBuf *b, const uint8_t *data, size_t n, size_t cap) {
        size_t room = b->len < cap ? cap - b->len : 0;
        size_t take = MIN(n, room);

        b->produced += (int64_t)n;
        if (take == 0)
                return;
        if (b->len + take > b->cap) {
                size_t ncap = MAX(b->cap * 2, b->len + take);
                uint8_t *p = realloc(b->data, MIN(ncap, cap));

                if (!p)
                        return;
                b->data = p;
                b->cap = MIN(ncap, cap);
        }
        memcpy(b->data + b->len, data, take);
        b->len += take;
}

static void exec_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void exec_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void exec_pause(Exec *e, bool pause) {
        if (e->paused == pause)
                return;
        e->paused = pause;
        for (int i = 0; i < 2; i++) {
                if (!e->pipe_open[i] || e->pipe_eof[i])
                        continue;
                if (pause)
                        (void)uv_read_stop((uv_stream_t *)&e->pipes[i]);
                else
                        (void)uv_read_start((uv_stream_t *)&e->pipes[i], exec_alloc, exec_read);
        }
}

static void exec_forward(Exec *e, int which, const uint8_t *data, size_t n) {
        Coreweave__Sandbox__V1__ExecStreamOutput o = COREWEAVE__SANDBOX__V1__EXEC_STREAM_OUTPUT__INIT;
        ExecStreamResponse r = COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__INIT;

        if (e->stream_done || server_stream_is_done(e->stream))
                return;
        o.stream = which == 0 || e->tty ? COREWEAVE__SANDBOX__V1__EXEC_STREAM_OUTPUT__STREAM__STREAM_STDOUT
                                        : COREWEAVE__SANDBOX__V1__EXEC_STREAM_OUTPUT__STREAM__STREAM_STDERR;
        o.data = (ProtobufCBinaryData){ n, (uint8_t *)data };
        r.message_case = COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__MESSAGE_OUTPUT;
        r.output = &o;
        if (server_stream_send(e->stream, &r.base) >= SERVER_STREAM_HIGH_WATER)
                exec_pause(e, true);
}

static void exec_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
        buf->base = malloc(EXEC_READ_CHUNK);
        buf->len = buf->base ? EXEC_READ_CHUNK : 0;
}

static void exec_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
        Exec *e = s->data;
        int which = (uv_pipe_t *)s == &e->pipes[0] ? 0 : 1;

        if (n > 0) {
                if (e->call)
                        outbuf_add(&e->out[which], (const uint8_t *)buf->base, (size_t)n, e->max_output);
                else if (e->stream)
                        exec_forward(e, which, (const uint8_t *)buf->base, (size_t)n);
        } else if (n < 0) {
                /* EOF, or EIO from a pty master whose slave side is gone. */
                e->pipe_eof[which] = true;
                (void)uv_read_stop(s);
        }
        free(buf->base);
        if (n < 0)
                exec_check_drained(e);
}

static void exec_start_reading(Exec *e) {
        for (int i = 0; i < 2; i++)
                if (e->pipe_open[i])
                        (void)uv_read_start((uv_stream_t *)&e->pipes[i], exec_alloc, exec_read);
}

static void exec_exited(uv_process_t *p, int64_t status, int term_signal) {
        Exec *e = p->data;

        e->exited = true;
        e->exit_code = term_signal ? 128 + term_signal : (int)status;
        e->backend->n_processes--;
        e->n_handles++;         /* the process handle, closed here */
        uv_close((uv_handle_t *)p, exec_handle_closed);
        if (e->stdin_open)
                exec_close(e, (uv_handle_t *)&e->in, &e->in_open);
        e->stdin_open = false;
        exec_pause(e, false);
        if (uv_timer_init(e->backend->loop, &e->drain) == 0) {
                e->drain.data = e;
                e->drain_open = true;
                e->n_handles++;
                (void)uv_timer_start(&e->drain, exec_drain_timeout, EXEC_DRAIN_MS, 0);
        }
        exec_check_drained(e);
        if (!e->drain_open)
                exec_complete(e);
}

/* ---- spawning ---------------------------------------------------------------- */

typedef struct Argv {
        char **v;
        size_t n, cap;
} Argv;

static int argv_add(Argv *a, const char *s) {
        if (a->n + 2 > a->cap) {
                size_t ncap = a->cap ? a->cap * 2 : 32;
                char **p = realloc(a->v, ncap * sizeof(*p));
                if (!p)
                        return -ENOMEM;
                a->v = p;
                a->cap = ncap;
        }
        a->v[a->n] = strdup(s);
        if (!a->v[a->n])
                return -ENOMEM;
        a->v[++a->n] = NULL;
        return 0;
}

static void argv_free(Argv *a) {
        for (size_t i = 0; i < a->n; i++)
                free(a->v[i]);
        free(a->v);
}

static bool env_key_overridden(const char *kv, Coreweave__Sandbox__V1__ExecStreamInit__EnvEntry *const *env, size_t n) {
        size_t klen = strcspn(kv, "=");

        for (size_t i = 0; i < n; i++)
                if (strlen(env[i]->key) == klen && strncmp(env[i]->key, kv, klen) == 0)
                        return true;
        return false;
}

/* The runner's command line. Env entries of the request win over the
 * container's. The two EnvEntry types have one layout. */
static int exec_build_argv(const Sandbox *s, char *const *command, size_t n_command,
                           Coreweave__Sandbox__V1__ExecStreamInit__EnvEntry *const *env, size_t n_env,
                           bool tty, Argv *ret) {
        char pid[32];
        int r = 0;

        snprintf(pid, sizeof(pid), "%d", (int)s->init_pid);
        r |= argv_add(ret, s->backend->runner_path);
        r |= argv_add(ret, "enter");
        r |= argv_add(ret, "--pid");
        r |= argv_add(ret, pid);
        for (char **kv = s->env; kv && *kv; kv++)
                if (!env_key_overridden(*kv, env, n_env)) {
                        r |= argv_add(ret, "--env");
                        r |= argv_add(ret, *kv);
                }
        for (size_t i = 0; i < n_env; i++) {
                char *kv;

                if (asprintf(&kv, "%s=%s", env[i]->key, env[i]->value) < 0)
                        return -ENOMEM;
                r |= argv_add(ret, "--env");
                r |= argv_add(ret, kv);
                free(kv);
        }
        if (s->working_dir && s->working_dir[0]) {
                r |= argv_add(ret, "--cwd");
                r |= argv_add(ret, s->working_dir);
        }
        if (tty)
                r |= argv_add(ret, "--tty");
        r |= argv_add(ret, "--");
        for (size_t i = 0; i < n_command; i++)
                r |= argv_add(ret, command[i]);
        return r < 0 ? -ENOMEM : 0;
}

/* Checks shared by both rpcs; a message for the client in @err. */
static grpc_status_code exec_check(Backend *b, const char *id, char *const *command, size_t n_command,
                                   size_t n_env, Sandbox **ret, char *err, size_t n) {
        size_t bytes = 0;
        Sandbox *s;

        if (!id || !id[0]) {
                snprintf(err, n, "sandbox_id is required");
                return GRPC_STATUS_INVALID_ARGUMENT;
        }
        if (n_command == 0 || !command[0][0]) {
                snprintf(err, n, "command is required");
                return GRPC_STATUS_INVALID_ARGUMENT;
        }
        for (size_t i = 0; i < n_command; i++)
                bytes += strlen(command[i]) + 1;
        if (n_command > EXEC_ARGV_MAX || bytes > EXEC_ARGV_BYTES_MAX) {
                snprintf(err, n, "command has more than %d arguments or %d bytes", EXEC_ARGV_MAX, EXEC_ARGV_BYTES_MAX);
                return GRPC_STATUS_INVALID_ARGUMENT;
        }
        if (n_env > EXEC_ENV_MAX) {
                snprintf(err, n, "env has more than %d entries", EXEC_ENV_MAX);
                return GRPC_STATUS_INVALID_ARGUMENT;
        }
        s = sandbox_find(b, id);
        if (!s) {
                snprintf(err, n, "sandbox %s not found", id);
                return GRPC_STATUS_NOT_FOUND;
        }
        if (!sandbox_is_running(s)) {
                snprintf(err, n, "sandbox %s is not running (state %s)", id,
                         protobuf_c_enum_descriptor_get_value(&coreweave__sandbox__v1__state__descriptor,
                                                              s->state)->name);
                return GRPC_STATUS_FAILED_PRECONDITION;
        }
        *ret = s;
        return GRPC_STATUS_OK;
}

static int exec_open_pipe(Exec *e, uv_pipe_t *p, bool *open) {
        int r = uv_pipe_init(e->backend->loop, p, 0);

        if (r < 0)
                return r;
        p->data = e;
        *open = true;
        e->n_handles++;
        return 0;
}

/* The pty comes from the sandbox's own devpts instance, so its slave is a
 * /dev/pts/N inside the sandbox (tty(1) and ttyname work there). */
static int exec_open_pty(Exec *e, unsigned width, unsigned height, int *ret_master, int *ret_slave) {
        struct winsize ws = { .ws_row = height ? height : 24, .ws_col = width ? width : 80 };
        Sandbox *s = sandbox_find(e->backend, e->sandbox_id);
        char path[64];
        int master, slave, unlock = 0;

        if (!s || s->init_pid <= 0)
                return -ESRCH;
        snprintf(path, sizeof(path), "/proc/%d/root/dev/pts/ptmx", (int)s->init_pid);
        master = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0)
                return -errno;
        if (ioctl(master, TIOCSPTLCK, &unlock) < 0 || ioctl(master, TIOCSWINSZ, &ws) < 0 ||
            (slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY)) < 0) {
                int r = -errno;
                close(master);
                return r;
        }
        *ret_master = master;
        *ret_slave = slave;
        return 0;
}

/* Spawn with pipes, or with a pty of @width x @height when e->tty. */
static int exec_spawn(Exec *e, Argv *argv, bool with_stdin, unsigned width, unsigned height) {
        /* The runner gets no environment of ours; the command's comes from --env. */
        static char *runner_env[] = { (char *)"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL };
        uv_process_options_t opt = { .exit_cb = exec_exited, .file = argv->v[0], .args = argv->v,
                                     .env = runner_env };
        uv_stdio_container_t stdio[3];
        int master = -1, slave = -1, r;

        if (e->tty) {
                r = exec_open_pty(e, width, height, &master, &slave);
                if (r < 0)
                        return r;
                for (int i = 0; i < 3; i++)
                        stdio[i] = (uv_stdio_container_t){ .flags = UV_INHERIT_FD, .data.fd = slave };
        } else {
                r = exec_open_pipe(e, &e->pipes[0], &e->pipe_open[0]);
                if (r == 0)
                        r = exec_open_pipe(e, &e->pipes[1], &e->pipe_open[1]);
                if (r == 0 && with_stdin)
                        r = exec_open_pipe(e, &e->in, &e->in_open);
                if (r < 0)
                        return r;
                stdio[0] = with_stdin ? (uv_stdio_container_t){ .flags = UV_CREATE_PIPE | UV_READABLE_PIPE,
                                                                .data.stream = (uv_stream_t *)&e->in }
                                      : (uv_stdio_container_t){ .flags = UV_IGNORE };
                stdio[1] = (uv_stdio_container_t){ .flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE,
                                                   .data.stream = (uv_stream_t *)&e->pipes[0] };
                stdio[2] = (uv_stdio_container_t){ .flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE,
                                                   .data.stream = (uv_stream_t *)&e->pipes[1] };
        }
        opt.stdio = stdio;
        opt.stdio_count = 3;
        e->proc.data = e;
        r = uv_spawn(e->backend->loop, &e->proc, &opt);
        if (slave >= 0)
                close(slave);
        if (r < 0) {
                if (master >= 0)
                        close(master);
                /* A failed uv_spawn still initialised the handle. */
                e->n_handles++;
                uv_close((uv_handle_t *)&e->proc, exec_handle_closed);
                return r;
        }
        e->spawned = true;
        e->backend->n_processes++;
        if (e->tty) {
                r = exec_open_pipe(e, &e->pipes[1], &e->pipe_open[1]);
                if (r == 0)
                        r = uv_pipe_open(&e->pipes[1], master);
                if (r < 0) {
                        close(master);
                        (void)uv_process_kill(&e->proc, SIGTERM);
                        return 0;   /* the exit callback ends the call */
                }
                e->pipe_eof[0] = true;  /* all tty output comes through the master */
        }
        exec_start_reading(e);
        return 0;
}

static void exec_kill(Exec *e) {
        if (e->spawned && !e->exited)
                (void)uv_process_kill(&e->proc, SIGTERM);
}

/* ---- unary Exec --------------------------------------------------------------- */

static void exec_unary_cancelled(UnaryCall *c, void *userdata) {
        exec_kill(userdata);
}

void rpc_exec(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__ExecRequest *req) {
        Argv argv = {};
        char err[256];
        grpc_status_code code;
        Sandbox *s = NULL;
        Exec *e;
        int r;

        code = exec_check(b, req->sandbox_id, req->command, req->n_command, req->n_env, &s, err, sizeof(err));
        if (code != GRPC_STATUS_OK)
                return unary_call_fail(c, code, "%s", err);
        if (req->max_output_bytes < 0)
                return unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "max_output_bytes must not be negative");

        e = calloc(1, sizeof(*e));
        if (!e || !(e->argv0 = strdup(req->command[0]))) {
                free(e);
                return unary_call_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        }
        e->backend = b;
        e->call = c;
        snprintf(e->sandbox_id, sizeof(e->sandbox_id), "%s", s->id);
        e->max_output = req->max_output_bytes > 0 ? MIN((size_t)req->max_output_bytes, (size_t)EXEC_OUTPUT_MAX)
                                                  : EXEC_OUTPUT_DEFAULT;
        /* ExecRequest.EnvEntry has the layout of ExecStreamInit.EnvEntry. */
        r = exec_build_argv(s, req->command, req->n_command,
                            (Coreweave__Sandbox__V1__ExecStreamInit__EnvEntry *const *)req->env, req->n_env,
                            false, &argv);
        if (r == 0)
                r = exec_spawn(e, &argv, false, 0, 0);
        argv_free(&argv);
        if (r < 0) {
                log_full(LOG_LEVEL_WARNING, NULL, s->id, "exec %s: spawn failed: %s", e->argv0, uv_strerror(r));
                unary_call_fail(c, GRPC_STATUS_INTERNAL, "could not start %s: %s", e->argv0, uv_strerror(r));
                e->call = NULL;
                exec_close_all(e);
                exec_maybe_free(e);
                return;
        }
        log_full(LOG_LEVEL_DEBUG, NULL, s->id, "exec %s started", e->argv0);
        unary_call_on_cancel(c, exec_unary_cancelled, e);
}

/* ---- StreamExec ------------------------------------------------------------------ */

static void stream_read_next(Exec *e) {
        if (e->read_armed || e->stream_done || server_stream_is_done(e->stream))
                return;
        e->read_armed = true;
        server_stream_read(e->stream);
}

static void stream_written(uv_write_t *w, int status) {
        Exec *e = w->data;

        free(w);
        e->writes_pending = false;
        if (e->stdin_open && !e->exited)
                stream_read_next(e);
        exec_maybe_free(e);
}

static void stream_write_stdin(Exec *e, const ProtobufCBinaryData *d) {
        uv_stream_t *target = (uv_stream_t *)(e->tty ? &e->pipes[1] : &e->in);
        uv_write_t *w;
        char *copy;
        uv_buf_t buf;

        if (d->len == 0 || (!e->tty && !e->in_open) || (e->tty && !e->pipe_open[1]))
                return stream_read_next(e);
        w = malloc(sizeof(*w) + d->len);
        if (!w)
                return exec_kill(e);
        copy = (char *)(w + 1);
        memcpy(copy, d->data, d->len);
        buf = uv_buf_init(copy, (unsigned)d->len);
        w->data = e;
        e->writes_pending = true;
        if (uv_write(w, target, &buf, 1, stream_written) < 0) {
                free(w);
                e->writes_pending = false;
                stream_read_next(e);
        }
}

/* End of input. With a tty there is no pipe to close: send the terminal's
 * EOF character, which is what a closed keyboard means to a program there. */
static void stream_close_stdin(Exec *e) {
        static const ProtobufCBinaryData eof = { 1, (uint8_t *)"\x04" };

        if (!e->stdin_open)
                return;
        e->stdin_open = false;
        if (e->tty)
                stream_write_stdin(e, &eof);
        else
                exec_close(e, (uv_handle_t *)&e->in, &e->in_open);
}

static void stream_start(Exec *e, const Coreweave__Sandbox__V1__ExecStreamInit *init) {
        ExecStreamResponse r = COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__INIT;
        Coreweave__Sandbox__V1__ExecStreamReady ready = COREWEAVE__SANDBOX__V1__EXEC_STREAM_READY__INIT;
        Google__Protobuf__Timestamp t;
        Argv argv = {};
        char err[256];
        grpc_status_code code;
        Sandbox *s = NULL;
        int rc;

        code = exec_check(e->backend, init->sandbox_id, init->command, init->n_command, init->n_env, &s,
                          err, sizeof(err));
        if (code != GRPC_STATUS_OK)
                return server_stream_finish(e->stream, code, "%s", err);
        snprintf(e->sandbox_id, sizeof(e->sandbox_id), "%s", s->id);
        e->argv0 = strdup(init->command[0]);
        e->tty = init->tty;
        rc = e->argv0 ? exec_build_argv(s, init->command, init->n_command, init->env, init->n_env, e->tty, &argv)
                      : -ENOMEM;
        if (rc == 0)
                rc = exec_spawn(e, &argv, true, init->tty_width, init->tty_height);
        argv_free(&argv);
        if (rc < 0) {
                snprintf(err, sizeof(err), "could not start %s: %s", init->command[0], uv_strerror(rc));
                log_full(LOG_LEVEL_WARNING, NULL, s->id, "exec: %s", err);
                exec_close_all(e);
                return exec_fail_stream(e, GRPC_STATUS_INTERNAL, "SPAWN_FAILED", err);
        }
        log_full(LOG_LEVEL_DEBUG, NULL, s->id, "stream exec %s started%s", e->argv0, e->tty ? " (tty)" : "");
        e->stdin_open = true;
        t = timestamp_now();
        ready.ready_time = &t;
        r.message_case = COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__MESSAGE_READY;
        r.ready = &ready;
        (void)server_stream_send(e->stream, &r.base);
        stream_read_next(e);
}

static void stream_resize(Exec *e, const Coreweave__Sandbox__V1__ExecStreamResize *rs) {
        struct winsize ws = { .ws_row = rs->height, .ws_col = rs->width };
        uv_os_fd_t fd;

        if (e->tty && e->pipe_open[1] && uv_fileno((uv_handle_t *)&e->pipes[1], &fd) == 0)
                (void)ioctl(fd, TIOCSWINSZ, &ws);
}

static void stream_on_message(ServerStream *st, void *userdata, const ProtobufCMessage *msg) {
        const Coreweave__Sandbox__V1__ExecStreamRequest *m = (const void *)msg;
        Exec *e = userdata;

        e->read_armed = false;
        if (!m) {
                stream_close_stdin(e);
                return;
        }
        if (!e->got_init) {
                if (m->message_case != COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__MESSAGE_INIT)
                        return server_stream_finish(st, GRPC_STATUS_INVALID_ARGUMENT,
                                                    "the first StreamExec message must be init");
                e->got_init = true;
                return stream_start(e, m->init);
        }
        switch (m->message_case) {
        case COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__MESSAGE_STDIN:
                if (!e->stdin_open)
                        return stream_read_next(e);
                return stream_write_stdin(e, &m->stdin);
        case COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__MESSAGE_RESIZE:
                stream_resize(e, m->resize);
                return stream_read_next(e);
        case COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__MESSAGE_CLOSE:
                stream_close_stdin(e);
                return stream_read_next(e);
        case COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__MESSAGE_INIT:
                exec_kill(e);
                return server_stream_finish(st, GRPC_STATUS_INVALID_ARGUMENT, "init may be sent only once");
        default:
                return stream_read_next(e);
        }
}

static void stream_on_writable(ServerStream *st, void *userdata) {
        Exec *e = userdata;

        exec_pause(e, false);
}

static void stream_on_done(ServerStream *st, void *userdata, bool cancelled) {
        Exec *e = userdata;

        e->stream_done = true;
        if (!e->completed) {
                if (cancelled)
                        log_full(LOG_LEVEL_DEBUG, NULL, e->sandbox_id[0] ? e->sandbox_id : NULL,
                                 "stream exec cancelled; killing it");
                exec_kill(e);
        }
        if (!e->spawned)
                exec_close_all(e);
        exec_maybe_free(e);
}

static const ServerStreamOps stream_ops = {
        .on_message = stream_on_message,
        .on_writable = stream_on_writable,
        .on_done = stream_on_done,
};

void rpc_stream_exec(Backend *b, ServerStream *s) {
        Exec *e = calloc(1, sizeof(*e));

        if (!e)
                return server_stream_finish(s, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        e->backend = b;
        e->stream = s;
        server_stream_set_ops(s, &stream_ops, e);
        stream_read_next(e);
}
