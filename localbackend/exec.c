/*
 * Exec and StreamExec: run a command inside a running sandbox.
 *
 * Every exec is one runner process, "cwsandbox-local-run enter --pid PID1
 * ...", which joins the namespaces and the root of the sandbox, runs the
 * command with exactly the environment we give it (the container's env with
 * the request's env on top), and exits with the command's exit code (128+N
 * after signal N). SIGTERM to the runner kills the command's process group;
 * that is how a cancelled call stops its process.
 *
 * The command's stdio are real pipes (pipe2), not the socketpairs libuv
 * would create, so that "echo x >/dev/stderr" works inside the sandbox as it
 * does under any container runtime. With a tty, fds 0, 1 and 2 are the slave
 * of a fresh pty and we read and write the master.
 *
 * End of an exec: the runner has exited and its output has been read to the
 * end. Background grandchildren may keep the pipes open forever, so after
 * the exit the output gets a short drain time (DRAIN_MS of reading, not
 * counting time paused for a slow client, and at most DRAIN_MAX_MS in all);
 * then whatever is still readable is read at once and the pipes are closed.
 *
 * Exec (unary) collects each stream up to max_output_bytes, counts what went
 * beyond, and answers once the end is reached. A client that leaves gets its
 * runner a SIGTERM; the answer still goes out (and is dropped).
 *
 * StreamExec sends ready, then output frames as they are read, then exit and
 * status OK. Output reading pauses while the stream's queue is above the
 * high-water mark; stdin is read from the client one message at a time, the
 * next only once the previous one is written to the process, so neither
 * direction buffers more than one message. "close" (or the client's
 * half-close) closes the process's stdin; with a tty it only stops stdin, as
 * a terminal has no end of input apart from the ^D a user would type, and
 * the client may send that itself. Messages are still read after "close" so
 * that resize keeps working; stdin after close is dropped.
 *
 * Lifetime of an ExecStream: it is freed once on_done() has come, the
 * runner has exited, and every handle it opened has been closed, whichever
 * comes last, and never from a callback that still uses it afterwards.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "sandbox.h"
#include "server.h"

/* What a client may ask for. Each runner argument fits the kernel's
 * MAX_ARG_STRLEN, and everything together (with the container env, which
 * sandbox.c bounds at 256 KiB) stays far below ARG_MAX. */
#define EXEC_ARGS_MAX 4096
#define EXEC_ARGV_BYTES_MAX (256 * 1024)
#define EXEC_ENV_MAX 256
#define EXEC_ENV_KEY_MAX 256
#define EXEC_ENV_BYTES_MAX (256 * 1024)
#define EXEC_STRING_MAX (128 * 1024 - 1)

/* Process trees at once, sandboxes included: each exec holds a few fds. */
#define EXEC_PROCESSES_MAX 4096

/* Exec: output kept per stream. */
#define EXEC_OUTPUT_DEFAULT (1024 * 1024)
#define EXEC_OUTPUT_MAX (64 * 1024 * 1024)

#define READ_CHUNK (64 * 1024)

/* After the runner has exited: reading time left for the pipes, at least
 * DRAIN_MIN_MS after each pause (one loop turn must see the fds), at most
 * DRAIN_MAX_MS since the exit; then a final read of at most DRAIN_BYTES_MAX
 * per pipe. */
#define DRAIN_MS 50
#define DRAIN_MIN_MS 10
#define DRAIN_MAX_MS (10 * 1000)
#define DRAIN_BYTES_MAX (1024 * 1024)

#define TTY_WIDTH_DEFAULT 80
#define TTY_HEIGHT_DEFAULT 24

/* argv[0] as logged: cut and made printable. */
#define ARGV0_LOG_MAX 64

#define SANDBOX_ID_SIZE sizeof(((Sandbox *)0)->id)

#define RUNNER_PATH_ENV "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#define OUT(x) COREWEAVE__SANDBOX__V1__EXEC_STREAM_OUTPUT__STREAM__STREAM_##x
#define REQ(x) COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__MESSAGE_##x
#define RESP(x) COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__MESSAGE_##x

typedef struct ExecEnv {
        const char *key;
        const char *value;
} ExecEnv;

typedef struct ExecError {
        grpc_status_code code;
        char message[256];
} ExecError;

/* A checked request, ready to spawn. The runner argv borrows the command
 * from the request and the env from the sandbox; what it had to build is in
 * owned. Valid while the request and the sandbox are (the handler's turn). */
typedef struct ExecPlan {
        char sandbox_id[SANDBOX_ID_SIZE];
        pid_t init_pid;
        char argv0[ARGV0_LOG_MAX + 1];
        char **argv;
        char **owned;
        size_t n_owned;
} ExecPlan;

static int exec_error(ExecError *e, int r, grpc_status_code code, const char *fmt, ...) _printf_(4, 5);
static int exec_error(ExecError *e, int r, grpc_status_code code, const char *fmt, ...) {
        va_list ap;

        e->code = code;
        va_start(ap, fmt);
        (void)vsnprintf(e->message, sizeof(e->message), fmt, ap);
        va_end(ap);
        return r;
}

static void exec_plan_done(ExecPlan *p) {
        for (size_t i = 0; i < p->n_owned; i++)
                free(p->owned[i]);
        free(p->owned);
        free(p->argv);
        *p = (ExecPlan){};
}

static const char *state_name(SandboxState state) {
        const ProtobufCEnumValue *v;

        v = protobuf_c_enum_descriptor_get_value(&coreweave__sandbox__v1__state__descriptor, (int)state);
        if (!v)
                return "UNSPECIFIED";
        return strncmp(v->name, "STATE_", 6) == 0 ? v->name + 6 : v->name;
}

static grpc_status_code status_of_errno(int r) {
        switch (r) {
        case -ENOMEM:
        case -EAGAIN:
        case -EMFILE:
        case -ENFILE:
                return GRPC_STATUS_RESOURCE_EXHAUSTED;
        default:
                return GRPC_STATUS_INTERNAL;
        }
}

static int64_t now_realtime_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void timestamp_set(Google__Protobuf__Timestamp *ts, int64_t ns) {
        ts->seconds = ns / 1000000000;
        ts->nanos = (int32_t)(ns % 1000000000);
}

static int exit_code_of(int64_t exit_status, int term_signal) {
        return term_signal > 0 ? 128 + term_signal : (int)exit_status;
}

/* --- checking a request --------------------------------------------------- */

static int check_command(char *const *command, size_t n, ExecError *e) {
        size_t bytes = 0;

        if (n == 0)
                return exec_error(e, -EINVAL, GRPC_STATUS_INVALID_ARGUMENT, "command is required");
        if (n > EXEC_ARGS_MAX)
                return exec_error(e, -EINVAL, GRPC_STATUS_INVALID_ARGUMENT,
                                  "command: more than %d arguments", EXEC_ARGS_MAX);
        if (!command[0] || !*command[0])
                return exec_error(e, -EINVAL, GRPC_STATUS_INVALID_ARGUMENT, "command[0] must not be empty");
        for (size_t i = 0; i < n; i++) {
                size_t len = command[i] ? strlen(command[i]) : 0;

                if (len > EXEC_STRING_MAX)
                        return exec_error(e, -EINVAL, GRPC_STATUS_INVALID_ARGUMENT,
                                          "command[%zu]: longer than %d bytes", i, EXEC_STRING_MAX);
                bytes += len + 1;
                if (bytes > EXEC_ARGV_BYTES_MAX)
                        return exec_error(e, -EINVAL, GRPC_STATUS_INVALID_ARGUMENT,
                                          "command: more than %d bytes in all", EXEC_ARGV_BYTES_MAX);
        }
        return 0;
}

static int check_env_count(size_t n, ExecError *e) {
        if (n > EXEC_ENV_MAX)
                return exec_error(e, -EINVAL, GRPC_STATUS_INVALID_ARGUMENT,
                                  "env: more than %d variables", EXEC_ENV_MAX);
        return 0;
}

static int check_env(const ExecEnv *env, size_t n, ExecError *e) {
        size_t bytes = 0;
        int r;

        r = check_env_count(n, e);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                size_t klen = strlen(env[i].key), vlen = strlen(env[i].value);

                if (klen == 0)
                        return exec_error(e, -EINVAL, GRPC_STATUS_INVALID_ARGUMENT, "env: empty name");
                if (klen > EXEC_ENV_KEY_MAX)
                        return exec_error(e, -EINVAL, GRPC_STATUS_INVALID_ARGUMENT,
                                          "env: name longer than %d bytes", EXEC_ENV_KEY_MAX);
                if (strchr(env[i].key, '='))
                        return exec_error(e, -EINVAL, GRPC_STATUS_INVALID_ARGUMENT,
                                          "env: name \"%.64s\" contains '='", env[i].key);
                if (klen + 1 + vlen > EXEC_STRING_MAX)
                        return exec_error(e, -EINVAL, GRPC_STATUS_INVALID_ARGUMENT,
                                          "env %.64s: longer than %d bytes", env[i].key, EXEC_STRING_MAX);
                bytes += klen + vlen + 2;
                if (bytes > EXEC_ENV_BYTES_MAX)
                        return exec_error(e, -EINVAL, GRPC_STATUS_INVALID_ARGUMENT,
                                          "env: more than %d bytes in all", EXEC_ENV_BYTES_MAX);
        }
        return 0;
}

static int check_container(const Sandbox *s, const char *container, ExecError *e) {
        const Coreweave__Sandbox__V1__Container *c;

        if (!container || !*container)
                return 0;
        /* A local sandbox runs its first container only. */
        c = s->spec && s->spec->n_containers > 0 ? s->spec->containers[0] : NULL;
        if (c && c->name && streq(c->name, container))
                return 0;
        return exec_error(e, -ENOENT, GRPC_STATUS_NOT_FOUND, "container %.128s not found in sandbox %s",
                          container, s->id);
}

/* "K=V" in the container env that the request sets again. */
static bool env_overridden(const char *kv, const ExecEnv *env, size_t n) {
        for (size_t i = 0; i < n; i++) {
                size_t klen = strlen(env[i].key);

                if (strncmp(kv, env[i].key, klen) == 0 && kv[klen] == '=')
                        return true;
        }
        return false;
}

/* A repeated map key: the later value wins, as in protobuf. */
static bool env_set_later(const ExecEnv *env, size_t n, size_t i) {
        for (size_t j = i + 1; j < n; j++)
                if (streq(env[j].key, env[i].key))
                        return true;
        return false;
}

static void argv0_for_log(const char *argv0, char ret[static ARGV0_LOG_MAX + 1]) {
        size_t i;

        for (i = 0; i < ARGV0_LOG_MAX && argv0[i]; i++) {
                unsigned char ch = (unsigned char)argv0[i];

                ret[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
        }
        ret[i] = '\0';
}

/*
 * The runner's command line:
 *   RUNNER enter --pid PID [--env K=V]... --cwd DIR [--tty] -- COMMAND...
 */
static int plan_argv(const Backend *b, const Sandbox *s, char *const *command, size_t n_command,
                     const ExecEnv *env, size_t n_env, bool tty, ExecPlan *p) {
        size_t n_sandbox_env = 0, n = 0;

        for (char **e = s->env; e && *e; e++)
                n_sandbox_env++;

        p->argv = calloc(4 + 2 * (n_sandbox_env + n_env) + 2 + 1 + 1 + n_command + 1, sizeof(char *));
        p->owned = calloc(n_env + 1, sizeof(char *));
        if (!p->argv || !p->owned)
                return -ENOMEM;

        p->argv[n++] = b->runner_path;
        p->argv[n++] = (char *)"enter";
        p->argv[n++] = (char *)"--pid";
        if (asprintf(&p->owned[p->n_owned], "%d", (int)s->init_pid) < 0)
                return -ENOMEM;
        p->argv[n++] = p->owned[p->n_owned++];

        for (size_t i = 0; i < n_sandbox_env; i++) {
                if (env_overridden(s->env[i], env, n_env))
                        continue;
                p->argv[n++] = (char *)"--env";
                p->argv[n++] = s->env[i];
        }
        for (size_t i = 0; i < n_env; i++) {
                if (env_set_later(env, n_env, i))
                        continue;
                if (asprintf(&p->owned[p->n_owned], "%s=%s", env[i].key, env[i].value) < 0)
                        return -ENOMEM;
                p->argv[n++] = (char *)"--env";
                p->argv[n++] = p->owned[p->n_owned++];
        }
        p->argv[n++] = (char *)"--cwd";
        p->argv[n++] = s->working_dir && *s->working_dir ? s->working_dir : (char *)"/";
        if (tty)
                p->argv[n++] = (char *)"--tty";
        p->argv[n++] = (char *)"--";
        for (size_t i = 0; i < n_command; i++)
                p->argv[n++] = command[i];
        p->argv[n] = NULL;
        return 0;
}

/**
 * exec_prepare() - check an Exec or StreamExec request against the limits and
 * the sandbox, and build the runner's command line. On failure @e says what
 * to answer; @ret is written only on success.
 */
static int exec_prepare(Backend *b, const char *sandbox_id, char *const *command, size_t n_command,
                        const ExecEnv *env, size_t n_env, const char *container, bool tty,
                        ExecError *e, ExecPlan *ret) {
        ExecPlan p = {};
        const Sandbox *s;
        int r;

        if (b->shutting_down)
                return exec_error(e, -ESHUTDOWN, GRPC_STATUS_UNAVAILABLE, "the server is shutting down");
        if (!sandbox_id || !*sandbox_id)
                return exec_error(e, -EINVAL, GRPC_STATUS_INVALID_ARGUMENT, "sandbox_id is required");
        r = check_command(command, n_command, e);
        if (r < 0)
                return r;
        r = check_env(env, n_env, e);
        if (r < 0)
                return r;

        s = sandbox_find(b, sandbox_id);
        if (!s)
                return exec_error(e, -ENOENT, GRPC_STATUS_NOT_FOUND, "sandbox %.128s not found", sandbox_id);
        if (!sandbox_is_running(s))
                return exec_error(e, -EBUSY, GRPC_STATUS_FAILED_PRECONDITION, "sandbox %s is not running (state %s)",
                                  s->id, state_name(s->state));
        r = check_container(s, container, e);
        if (r < 0)
                return r;
        if (!b->runner_path)
                return exec_error(e, -ENOENT, GRPC_STATUS_INTERNAL, "no sandbox runner is configured");
        if (b->n_processes >= EXEC_PROCESSES_MAX)
                return exec_error(e, -EUSERS, GRPC_STATUS_RESOURCE_EXHAUSTED,
                                  "too many processes running (%u)", b->n_processes);

        r = plan_argv(b, s, command, n_command, env, n_env, tty, &p);
        if (r < 0) {
                exec_plan_done(&p);
                return exec_error(e, r, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        }
        (void)snprintf(p.sandbox_id, sizeof(p.sandbox_id), "%s", s->id);
        p.init_pid = s->init_pid;
        argv0_for_log(command[0], p.argv0);
        *ret = p;
        return 0;
}

/* --- spawning ------------------------------------------------------------- */

/* A pipe for one of the command's stdio: our end goes to @h, the other
 * end is returned for the child. */
static int child_pipe(uv_pipe_t *h, bool child_reads, int *ret_child_fd) {
        int fds[2], ours, theirs, r;

        if (pipe2(fds, O_CLOEXEC) < 0)
                return -errno;
        ours = child_reads ? fds[1] : fds[0];
        theirs = child_reads ? fds[0] : fds[1];
        r = uv_pipe_open(h, ours);
        if (r < 0) {
                (void)close(ours);
                (void)close(theirs);
                return r;
        }
        *ret_child_fd = theirs;
        return 0;
}

/* openat2 says EAGAIN when a rename raced with RESOLVE_IN_ROOT's ".." checks. */
#define RESOLVE_TRIES 16

/*
 * A pty of the sandbox's own devpts, so that the terminal has a name inside
 * it (tty, ttyname(), ssh-style tools need one). The sandbox controls its
 * tree, so the path is resolved as inside its root, the result must be a
 * devpts ptmx, and the slave is opened through the master, never by name.
 */
static int open_sandbox_pty(pid_t init_pid, int *ret_master, int *ret_slave) {
        struct open_how how = {
                .flags = O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC,
                .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        };
        char root[64];
        struct statfs sfs;
        struct stat st;
        int root_fd, master = -1, slave, unlock = 0, r;
        long fd = -1;

        (void)snprintf(root, sizeof(root), "/proc/%d/root", (int)init_pid);
        root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (root_fd < 0)
                return -errno;
        for (int i = 0; i < RESOLVE_TRIES; i++) {
                fd = syscall(SYS_openat2, root_fd, "dev/pts/ptmx", &how, sizeof(how));
                if (fd >= 0 || errno != EAGAIN)
                        break;
        }
        r = fd < 0 ? -errno : 0;
        (void)close(root_fd);
        if (r < 0)
                return r;
        master = (int)fd;

        if (fstatfs(master, &sfs) < 0 || fstat(master, &st) < 0) {
                r = -errno;
                goto fail;
        }
        if (sfs.f_type != DEVPTS_SUPER_MAGIC || !S_ISCHR(st.st_mode)) {
                r = -ENOTTY;
                goto fail;
        }
        if (ioctl(master, TIOCSPTLCK, &unlock) < 0) {
                r = -errno;
                goto fail;
        }
        slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (slave < 0) {
                r = -errno;
                goto fail;
        }
        *ret_master = master;
        *ret_slave = slave;
        return 0;
fail:
        (void)close(master);
        return r;
}

/* A pty of the host's devpts: works as a terminal, but has no name inside. */
static int open_host_pty(int *ret_master, int *ret_slave) {
        int master, slave, r;

        if (openpty(&master, &slave, NULL, NULL, NULL) < 0)
                return -errno;
        /* Other children must not inherit either end. */
        if (fcntl(master, F_SETFD, FD_CLOEXEC) < 0 || fcntl(slave, F_SETFD, FD_CLOEXEC) < 0) {
                r = -errno;
                (void)close(master);
                (void)close(slave);
                return r;
        }
        *ret_master = master;
        *ret_slave = slave;
        return 0;
}

static int open_pty(const char *sandbox_id, pid_t init_pid, unsigned width, unsigned height,
                    int *ret_master, int *ret_slave) {
        struct winsize ws = {
                .ws_col = width > 0 ? MIN(width, (unsigned)USHRT_MAX) : TTY_WIDTH_DEFAULT,
                .ws_row = height > 0 ? MIN(height, (unsigned)USHRT_MAX) : TTY_HEIGHT_DEFAULT,
        };
        int master = -1, slave = -1, r;

        r = open_sandbox_pty(init_pid, &master, &slave);
        if (r < 0) {
                log_full(LOG_LEVEL_DEBUG, NULL, sandbox_id, "no pty from the sandbox's /dev/pts (%s), using the host's",
                         strerror(-r));
                r = open_host_pty(&master, &slave);
                if (r < 0)
                        return r;
        }
        if (ioctl(master, TIOCSWINSZ, &ws) < 0) {
                r = -errno;
                (void)close(master);
                (void)close(slave);
                return r;
        }
        *ret_master = master;
        *ret_slave = slave;
        return 0;
}

/* uv_spawn initialises @p even when it fails: close it either way. */
static int runner_spawn(Backend *b, uv_process_t *p, char **argv, const int child_fds[3], uv_exit_cb exit_cb) {
        char *runner_env[] = { (char *)RUNNER_PATH_ENV, NULL };
        uv_process_options_t opts = {};
        uv_stdio_container_t stdio[3];

        for (int i = 0; i < 3; i++) {
                if (child_fds[i] >= 0) {
                        stdio[i].flags = UV_INHERIT_FD;
                        stdio[i].data.fd = child_fds[i];
                } else
                        stdio[i].flags = UV_IGNORE;     /* /dev/null */
        }
        opts.exit_cb = exit_cb;
        opts.file = b->runner_path;
        opts.args = argv;
        opts.env = runner_env;
        opts.stdio_count = ELEMENTSOF(stdio);
        opts.stdio = stdio;
        /* Its own session: terminal signals reach the command only through us. */
        opts.flags = UV_PROCESS_DETACHED;
        return uv_spawn(b->loop, p, &opts);
}

static void close_fds(int fds[3]) {
        for (int i = 0; i < 3; i++)
                if (fds[i] >= 0) {
                        /* fds 0-2 may share one pty slave. */
                        for (int j = i + 1; j < 3; j++)
                                if (fds[j] == fds[i])
                                        fds[j] = -1;
                        (void)close(fds[i]);
                        fds[i] = -1;
                }
}

/* Handles live zeroed inside calloc'ed objects until initialised. */
static bool handle_open(const uv_handle_t *h) {
        return h->type != UV_UNKNOWN_HANDLE && !uv_is_closing(h);
}

/* Read what @h has buffered right now, without waiting, at most
 * DRAIN_BYTES_MAX. */
static void read_now(uv_stream_t *h, uint8_t *buf, void (*fn)(uv_stream_t *h, const uint8_t *p, size_t n)) {
        uv_os_fd_t fd;
        size_t total = 0;

        if (!handle_open((uv_handle_t *)h) || uv_fileno((uv_handle_t *)h, &fd) < 0)
                return;
        while (total < DRAIN_BYTES_MAX) {
                ssize_t n = read(fd, buf, READ_CHUNK);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                fn(h, buf, (size_t)n);
                total += (size_t)n;
        }
}

/* --- Exec ----------------------------------------------------------------- */

typedef struct ExecJob ExecJob;

typedef struct ExecCapture {
        uv_pipe_t pipe;
        uint8_t *data;
        size_t len, alloc;
        size_t cap;                     /* bytes kept at most */
        uint64_t produced;              /* everything read, kept or not */
        bool ended;
} ExecCapture;

struct ExecJob {
        Backend *backend;
        UnaryCall *call;                /* NULL once answered */
        char sandbox_id[SANDBOX_ID_SIZE];
        char argv0[ARGV0_LOG_MAX + 1];

        uv_process_t process;
        ExecCapture out, err;
        uv_timer_t drain_timer;
        unsigned n_open;

        bool spawned, exited, kill_sent, closing, cancelled;
        int exit_code;
        uint64_t start_ms;
        uint8_t scratch[READ_CHUNK];
};

static void job_free(ExecJob *j) {
        if (!j)
                return;
        free(j->out.data);
        free(j->err.data);
        free(j);
}

static void job_on_close(uv_handle_t *h) {
        ExecJob *j = h->data;

        if (--j->n_open == 0)
                job_free(j);
}

static void job_close(ExecJob *j) {
        uv_handle_t *handles[] = {
                (uv_handle_t *)&j->out.pipe, (uv_handle_t *)&j->err.pipe,
                (uv_handle_t *)&j->drain_timer, (uv_handle_t *)&j->process,
        };

        j->closing = true;
        for (size_t i = 0; i < ELEMENTSOF(handles); i++)
                if (handle_open(handles[i]))
                        uv_close(handles[i], job_on_close);
}

static void capture_add(ExecJob *j, ExecCapture *c, const uint8_t *p, size_t n) {
        size_t take = MIN(n, c->cap - c->len);

        c->produced += n;
        if (take > 0 && c->len + take > c->alloc) {
                size_t a = MAX(c->alloc * 2, (size_t)READ_CHUNK);
                uint8_t *d;

                a = MIN(MAX(a, c->len + take), c->cap);
                d = realloc(c->data, a);
                if (!d) {
                        /* Keep what we have: the answer says truncated. */
                        log_full(LOG_LEVEL_WARNING, NULL, j->sandbox_id, "exec %s: out of memory for its output",
                                 j->argv0);
                        c->cap = c->len;
                        return;
                }
                c->data = d;
                c->alloc = a;
        }
        if (take > 0) {
                memcpy(c->data + c->len, p, take);
                c->len += take;
        }
}

static void job_reply(ExecJob *j) {
        Coreweave__Sandbox__V1__ExecResponse resp = COREWEAVE__SANDBOX__V1__EXEC_RESPONSE__INIT;

        resp.stdout.data = j->out.data;
        resp.stdout.len = j->out.len;
        resp.stderr.data = j->err.data;
        resp.stderr.len = j->err.len;
        resp.exit_code = j->exit_code;
        resp.stdout_truncated = j->out.produced > j->out.len;
        resp.stderr_truncated = j->err.produced > j->err.len;
        resp.stdout_bytes_produced = (int64_t)MIN(j->out.produced, (uint64_t)INT64_MAX);
        resp.stderr_bytes_produced = (int64_t)MIN(j->err.produced, (uint64_t)INT64_MAX);
        unary_call_reply(TAKE_PTR(j->call), &resp.base);
}

static void job_finish(ExecJob *j) {
        log_full(LOG_LEVEL_INFO, NULL, j->sandbox_id,
                 "exec %s: exit code %d, %" PRIu64 "+%" PRIu64 " bytes of output, %" PRIu64 " ms%s",
                 j->argv0, j->exit_code, j->out.produced, j->err.produced,
                 uv_now(j->backend->loop) - j->start_ms, j->cancelled ? " (client gone)" : "");
        job_reply(j);
        job_close(j);
}

static void job_on_drain(uv_timer_t *t);

/* Finish once the runner has exited and the output has ended. */
static void job_update(ExecJob *j) {
        if (j->closing || !j->exited)
                return;
        if (!j->out.ended || !j->err.ended) {
                if (!uv_is_active((uv_handle_t *)&j->drain_timer))
                        uv_timer_start(&j->drain_timer, job_on_drain, DRAIN_MS, 0);
                return;
        }
        job_finish(j);
}

static void job_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        ExecJob *j = h->data;

        *buf = uv_buf_init((char *)j->scratch, sizeof(j->scratch));
}

static ExecCapture *capture_of(ExecJob *j, uv_stream_t *h) {
        return h == (uv_stream_t *)&j->out.pipe ? &j->out : &j->err;
}

static void job_on_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf) {
        ExecJob *j = h->data;
        ExecCapture *c = capture_of(j, h);

        if (nread > 0)
                capture_add(j, c, (const uint8_t *)buf->base, (size_t)nread);
        else if (nread < 0) {
                if (nread != UV_EOF)
                        log_full(LOG_LEVEL_DEBUG, NULL, j->sandbox_id, "exec %s: reading output: %s",
                                 j->argv0, uv_strerror((int)nread));
                uv_read_stop(h);
                c->ended = true;
                job_update(j);
        }
}

static void job_read_now(uv_stream_t *h, const uint8_t *p, size_t n) {
        ExecJob *j = h->data;

        capture_add(j, capture_of(j, h), p, n);
}

static void job_on_drain(uv_timer_t *t) {
        ExecJob *j = t->data;

        for (ExecCapture *c = &j->out; c; c = c == &j->out ? &j->err : NULL)
                if (!c->ended) {
                        read_now((uv_stream_t *)&c->pipe, j->scratch, job_read_now);
                        uv_read_stop((uv_stream_t *)&c->pipe);
                        c->ended = true;
                }
        job_update(j);
}

static void job_on_exit(uv_process_t *p, int64_t exit_status, int term_signal) {
        ExecJob *j = p->data;
        Backend *b = j->backend;

        j->exited = true;
        j->exit_code = exit_code_of(exit_status, term_signal);
        if (b->n_processes > 0)
                b->n_processes--;
        job_update(j);
}

static void job_on_cancel(UnaryCall *c, void *userdata) {
        ExecJob *j = userdata;

        j->cancelled = true;
        if (j->spawned && !j->exited && !j->kill_sent) {
                log_full(LOG_LEVEL_DEBUG, NULL, j->sandbox_id, "exec %s: client gone, stopping it", j->argv0);
                (void)uv_process_kill(&j->process, SIGTERM);
                j->kill_sent = true;
        }
}

static int job_spawn(ExecJob *j, ExecPlan *plan) {
        Backend *b = j->backend;
        int fds[3] = { -1, -1, -1 };
        int r;

        uv_pipe_init(b->loop, &j->out.pipe, 0);
        uv_pipe_init(b->loop, &j->err.pipe, 0);
        uv_timer_init(b->loop, &j->drain_timer);
        j->out.pipe.data = j->err.pipe.data = j->drain_timer.data = j;
        j->n_open = 3;

        r = child_pipe(&j->out.pipe, false, &fds[1]);
        if (r >= 0)
                r = child_pipe(&j->err.pipe, false, &fds[2]);
        if (r >= 0) {
                j->n_open++;
                r = runner_spawn(b, &j->process, plan->argv, fds, job_on_exit);
                j->process.data = j;
        }
        close_fds(fds);
        return r;
}

void rpc_exec(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__ExecRequest *req) {
        ExecEnv env[EXEC_ENV_MAX];
        ExecPlan plan = {};
        ExecError e;
        ExecJob *j;
        int r;

        if (check_env_count(req->n_env, &e) < 0) {
                unary_call_fail(c, e.code, "%s", e.message);
                return;
        }
        for (size_t i = 0; i < req->n_env; i++)
                env[i] = (ExecEnv){ req->env[i]->key, req->env[i]->value };
        if (req->max_output_bytes < 0) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "max_output_bytes must not be negative");
                return;
        }
        r = exec_prepare(b, req->sandbox_id, req->command, req->n_command, env, req->n_env, req->container,
                         /* tty= */ false, &e, &plan);
        if (r < 0) {
                unary_call_fail(c, e.code, "%s", e.message);
                return;
        }

        j = calloc(1, sizeof(*j));
        if (!j) {
                exec_plan_done(&plan);
                unary_call_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
        }
        j->backend = b;
        j->call = c;
        memcpy(j->sandbox_id, plan.sandbox_id, sizeof(j->sandbox_id));
        memcpy(j->argv0, plan.argv0, sizeof(j->argv0));
        j->out.cap = req->max_output_bytes == 0 ? EXEC_OUTPUT_DEFAULT
                                                : MIN((size_t)req->max_output_bytes, (size_t)EXEC_OUTPUT_MAX);
        j->err.cap = j->out.cap;
        j->start_ms = uv_now(b->loop);

        r = job_spawn(j, &plan);
        exec_plan_done(&plan);
        if (r < 0) {
                log_full(LOG_LEVEL_WARNING, NULL, j->sandbox_id, "exec %s: cannot start the runner %s: %s",
                         j->argv0, b->runner_path, uv_strerror(r));
                unary_call_fail(TAKE_PTR(j->call), status_of_errno(r), "cannot start the exec runner: %s",
                                uv_strerror(r));
                job_close(j);
                return;
        }

        j->spawned = true;
        b->n_processes++;
        log_full(LOG_LEVEL_DEBUG, NULL, j->sandbox_id, "exec %s: started (runner pid %d)", j->argv0, j->process.pid);
        uv_read_start((uv_stream_t *)&j->out.pipe, job_alloc, job_on_read);
        uv_read_start((uv_stream_t *)&j->err.pipe, job_alloc, job_on_read);
        unary_call_on_cancel(c, job_on_cancel, j);
}

/* --- StreamExec ----------------------------------------------------------- */

typedef struct ExecStream {
        Backend *backend;
        ServerStream *stream;           /* NULL after on_done() */
        char sandbox_id[SANDBOX_ID_SIZE];
        char argv0[ARGV0_LOG_MAX + 1];
        bool tty;

        uv_process_t process;
        uv_pipe_t in;                   /* the command's stdin; unused with a tty */
        uv_pipe_t out, err;             /* with a tty, out is the pty master and err is unused */
        uv_timer_t drain_timer;
        uv_write_t write_req;
        uint8_t *write_data;            /* stdin being written */
        int master_fd;                  /* pty master (owned by out), or -1 */
        unsigned n_open;                /* handles initialised and not yet closed */

        bool started;                   /* the init message came */
        bool spawned, exited, kill_sent;
        bool finished;                  /* status given to the stream */
        bool closing;                   /* handles closed or closing */
        bool done;                      /* on_done() came */
        bool in_open;                   /* stdin takes data */
        bool writing;
        bool paused;                    /* output waits for on_writable() */
        bool out_ended, err_ended;
        int exit_code;
        int64_t exit_realtime_ns;
        uint64_t start_ms, exit_ms;
        uint64_t drain_left_ms, drain_armed_ms;
        uint8_t scratch[READ_CHUNK];
} ExecStream;

static void es_drain_schedule(ExecStream *es);

static void es_maybe_free(ExecStream *es) {
        if (!es->done || es->n_open > 0)
                return;
        free(es->write_data);
        free(es);
}

static void es_on_close(uv_handle_t *h) {
        ExecStream *es = h->data;

        es->n_open--;
        es_maybe_free(es);
}

static void es_close_handle(ExecStream *es, uv_handle_t *h) {
        if (handle_open(h))
                uv_close(h, es_on_close);
}

static void es_close_all(ExecStream *es) {
        es->closing = true;
        es->in_open = false;
        es_close_handle(es, (uv_handle_t *)&es->in);
        es_close_handle(es, (uv_handle_t *)&es->out);
        es_close_handle(es, (uv_handle_t *)&es->err);
        es_close_handle(es, (uv_handle_t *)&es->drain_timer);
        /* Only after the exit: a closed process handle is never reaped. */
        if (!es->spawned || es->exited)
                es_close_handle(es, (uv_handle_t *)&es->process);
}

static void es_kill(ExecStream *es) {
        if (!es->spawned || es->exited || es->kill_sent)
                return;
        (void)uv_process_kill(&es->process, SIGTERM);
        es->kill_sent = true;
}

static void es_finish(ExecStream *es, grpc_status_code code, const char *message) {
        if (es->finished || !es->stream)
                return;
        es->finished = true;
        server_stream_finish(es->stream, code, "%s", message);
}

/* End the call with an error; the command is stopped. */
static void es_fail(ExecStream *es, grpc_status_code code, const char *fmt, ...) _printf_(3, 4);
static void es_fail(ExecStream *es, grpc_status_code code, const char *fmt, ...) {
        char message[256];
        va_list ap;

        va_start(ap, fmt);
        (void)vsnprintf(message, sizeof(message), fmt, ap);
        va_end(ap);
        if (es->spawned && !es->exited)
                log_full(LOG_LEVEL_DEBUG, NULL, es->sandbox_id, "exec %s: %s; stopping it", es->argv0, message);
        es_finish(es, code, message);
        es_kill(es);
}

static void es_send(ExecStream *es, Coreweave__Sandbox__V1__ExecStreamResponse *resp) {
        size_t queued;

        if (!es->stream || es->finished)
                return;
        queued = server_stream_send(es->stream, &resp->base);
        if (queued >= SERVER_STREAM_HIGH_WATER && !es->paused) {
                uint64_t now = uv_now(es->backend->loop);

                es->paused = true;
                if (handle_open((uv_handle_t *)&es->out))
                        uv_read_stop((uv_stream_t *)&es->out);
                if (handle_open((uv_handle_t *)&es->err))
                        uv_read_stop((uv_stream_t *)&es->err);
                /* Draining after the exit: time paused does not count. */
                if (uv_is_active((uv_handle_t *)&es->drain_timer)) {
                        es->drain_left_ms -= MIN(now - es->drain_armed_ms, es->drain_left_ms);
                        es_drain_schedule(es);
                }
        }
}

static void es_send_output(ExecStream *es, uv_stream_t *h, const uint8_t *p, size_t n) {
        Coreweave__Sandbox__V1__ExecStreamResponse resp = COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__INIT;
        Coreweave__Sandbox__V1__ExecStreamOutput out = COREWEAVE__SANDBOX__V1__EXEC_STREAM_OUTPUT__INIT;

        out.stream = h == (uv_stream_t *)&es->err ? OUT(STDERR) : OUT(STDOUT);
        out.data.data = (uint8_t *)p;
        out.data.len = n;
        resp.message_case = RESP(OUTPUT);
        resp.output = &out;
        es_send(es, &resp);
}

static void es_send_ready(ExecStream *es) {
        Coreweave__Sandbox__V1__ExecStreamResponse resp = COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__INIT;
        Coreweave__Sandbox__V1__ExecStreamReady ready = COREWEAVE__SANDBOX__V1__EXEC_STREAM_READY__INIT;
        Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;

        timestamp_set(&ts, now_realtime_ns());
        ready.ready_time = &ts;
        resp.message_case = RESP(READY);
        resp.ready = &ready;
        es_send(es, &resp);
}

static void es_send_exit(ExecStream *es) {
        Coreweave__Sandbox__V1__ExecStreamResponse resp = COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__INIT;
        Coreweave__Sandbox__V1__ExecStreamExit ex = COREWEAVE__SANDBOX__V1__EXEC_STREAM_EXIT__INIT;
        Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;

        timestamp_set(&ts, es->exit_realtime_ns);
        ex.exit_code = es->exit_code;
        ex.completed_time = &ts;
        resp.message_case = RESP(EXIT);
        resp.exit = &ex;
        es_send(es, &resp);
}

static void es_send_error(ExecStream *es, const char *code, const char *message) {
        Coreweave__Sandbox__V1__ExecStreamResponse resp = COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__INIT;
        Coreweave__Sandbox__V1__ExecStreamError err = COREWEAVE__SANDBOX__V1__EXEC_STREAM_ERROR__INIT;

        err.message = (char *)message;
        err.code = (char *)code;
        resp.message_case = RESP(ERROR);
        resp.error = &err;
        es_send(es, &resp);
}

static void es_on_drain(uv_timer_t *t);

/* After the exit: (re)arm the drain timer for the reading time left. */
static void es_drain_schedule(ExecStream *es) {
        uint64_t now = uv_now(es->backend->loop), wall_left, ms;

        wall_left = es->exit_ms + DRAIN_MAX_MS > now ? es->exit_ms + DRAIN_MAX_MS - now : 0;
        ms = es->paused ? wall_left : MIN(wall_left, MAX(es->drain_left_ms, (uint64_t)DRAIN_MIN_MS));
        es->drain_armed_ms = now;
        uv_timer_start(&es->drain_timer, es_on_drain, ms, 0);
}

/*
 * Move on once the runner has exited: drain the output, send exit and
 * status, close everything. Without a client left, close at once.
 */
static void es_update(ExecStream *es) {
        if (es->closing || !es->exited)
                return;
        if (!es->done && !es->finished && (!es->out_ended || !es->err_ended)) {
                /* Pauses and resumes move a running timer themselves. */
                if (!uv_is_active((uv_handle_t *)&es->drain_timer))
                        es_drain_schedule(es);
                return;
        }
        if (!es->finished && es->stream) {
                es_send_exit(es);
                es_finish(es, GRPC_STATUS_OK, "");
        }
        es_close_all(es);
}

static void es_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        ExecStream *es = h->data;

        *buf = uv_buf_init((char *)es->scratch, sizeof(es->scratch));
}

static void es_output_ended(ExecStream *es, uv_stream_t *h) {
        uv_read_stop(h);
        if (h == (uv_stream_t *)&es->err)
                es->err_ended = true;
        else
                es->out_ended = true;
}

static void es_on_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf) {
        ExecStream *es = h->data;

        if (nread > 0)
                es_send_output(es, h, (const uint8_t *)buf->base, (size_t)nread);
        else if (nread < 0) {
                /* A pty master says EIO once the slave's last holder is gone. */
                if (nread != UV_EOF && !(es->tty && nread == UV_EIO))
                        log_full(LOG_LEVEL_DEBUG, NULL, es->sandbox_id, "exec %s: reading output: %s",
                                 es->argv0, uv_strerror((int)nread));
                es_output_ended(es, h);
                es_update(es);
        }
}

static void es_read_now(uv_stream_t *h, const uint8_t *p, size_t n) {
        ExecStream *es = h->data;

        es_send_output(es, h, p, n);
}

static void es_on_drain(uv_timer_t *t) {
        ExecStream *es = t->data;

        if (!es->out_ended) {
                read_now((uv_stream_t *)&es->out, es->scratch, es_read_now);
                es_output_ended(es, (uv_stream_t *)&es->out);
        }
        if (!es->err_ended) {
                read_now((uv_stream_t *)&es->err, es->scratch, es_read_now);
                es_output_ended(es, (uv_stream_t *)&es->err);
        }
        es_update(es);
}

static void es_read_output(ExecStream *es) {
        if (es->closing)
                return;
        if (!es->out_ended)
                uv_read_start((uv_stream_t *)&es->out, es_alloc, es_on_read);
        if (!es->err_ended)
                uv_read_start((uv_stream_t *)&es->err, es_alloc, es_on_read);
}

static void es_on_exit(uv_process_t *p, int64_t exit_status, int term_signal) {
        ExecStream *es = p->data;
        Backend *b = es->backend;

        es->exited = true;
        es->exit_code = exit_code_of(exit_status, term_signal);
        es->exit_realtime_ns = now_realtime_ns();
        es->exit_ms = uv_now(b->loop);
        if (b->n_processes > 0)
                b->n_processes--;
        log_full(LOG_LEVEL_INFO, NULL, es->sandbox_id, "exec %s%s: exit code %d, %" PRIu64 " ms%s",
                 es->argv0, es->tty ? " (tty)" : "", es->exit_code, es->exit_ms - es->start_ms,
                 es->done || es->kill_sent ? " (stopped: client gone or protocol error)" : "");
        es_update(es);
}

/* --- StreamExec: client messages ------------------------------------------ */

static void es_read_next(ExecStream *es) {
        if (es->stream && !es->finished && !es->closing && !es->writing)
                server_stream_read(es->stream);
}

static void es_stdin_close(ExecStream *es) {
        es->in_open = false;
        /* A write in flight finishes first; its callback comes back here. */
        if (!es->tty && !es->writing)
                es_close_handle(es, (uv_handle_t *)&es->in);
}

static void es_on_written(uv_write_t *req, int status) {
        ExecStream *es = req->data;

        es->writing = false;
        free(TAKE_PTR(es->write_data));
        if (status < 0) {
                /* EPIPE: the command closed its stdin or is gone. */
                if (status != UV_ECANCELED)
                        log_full(LOG_LEVEL_DEBUG, NULL, es->sandbox_id, "exec %s: writing stdin: %s",
                                 es->argv0, uv_strerror(status));
                es->in_open = false;
        }
        if (!es->in_open)
                es_stdin_close(es);
        es_read_next(es);
}

static void es_write_stdin(ExecStream *es, const ProtobufCBinaryData *data) {
        uv_stream_t *h = es->tty ? (uv_stream_t *)&es->out : (uv_stream_t *)&es->in;
        uv_buf_t buf;
        int r;

        if (!es->in_open || es->closing || data->len == 0) {
                es_read_next(es);
                return;
        }
        /* The message is freed when we return; libuv needs the bytes until
         * the write is done. */
        es->write_data = malloc(data->len);
        if (!es->write_data) {
                es_fail(es, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
        }
        memcpy(es->write_data, data->data, data->len);
        buf = uv_buf_init((char *)es->write_data, (unsigned)data->len);
        es->write_req.data = es;
        r = uv_write(&es->write_req, h, &buf, 1, es_on_written);
        if (r < 0) {
                free(TAKE_PTR(es->write_data));
                es_stdin_close(es);
                es_read_next(es);
                return;
        }
        es->writing = true;
}

static void es_resize(ExecStream *es, const Coreweave__Sandbox__V1__ExecStreamResize *rs) {
        struct winsize ws = {};

        if (!es->tty || es->closing || !rs)
                return;
        /* A zero keeps that dimension as it is. */
        (void)ioctl(es->master_fd, TIOCGWINSZ, &ws);
        if (rs->width > 0)
                ws.ws_col = (unsigned short)MIN(rs->width, (unsigned)USHRT_MAX);
        if (rs->height > 0)
                ws.ws_row = (unsigned short)MIN(rs->height, (unsigned)USHRT_MAX);
        if (ioctl(es->master_fd, TIOCSWINSZ, &ws) < 0)
                log_full(LOG_LEVEL_DEBUG, NULL, es->sandbox_id, "exec %s: resize: %m", es->argv0);
}

static int es_spawn_pipes(ExecStream *es, char **argv) {
        Backend *b = es->backend;
        int fds[3] = { -1, -1, -1 };
        int r;

        uv_pipe_init(b->loop, &es->in, 0);
        uv_pipe_init(b->loop, &es->out, 0);
        uv_pipe_init(b->loop, &es->err, 0);
        es->in.data = es->out.data = es->err.data = es;
        es->n_open += 3;

        r = child_pipe(&es->in, true, &fds[0]);
        if (r >= 0)
                r = child_pipe(&es->out, false, &fds[1]);
        if (r >= 0)
                r = child_pipe(&es->err, false, &fds[2]);
        if (r >= 0) {
                es->n_open++;
                r = runner_spawn(b, &es->process, argv, fds, es_on_exit);
                es->process.data = es;
        }
        close_fds(fds);
        return r;
}

static int es_spawn_tty(ExecStream *es, const ExecPlan *plan, unsigned width, unsigned height) {
        Backend *b = es->backend;
        int master = -1, slave = -1, fds[3];
        int r;

        uv_pipe_init(b->loop, &es->out, 0);
        es->out.data = es;
        es->n_open++;
        es->err_ended = true;

        r = open_pty(es->sandbox_id, plan->init_pid, width, height, &master, &slave);
        if (r < 0)
                return r;
        r = uv_pipe_open(&es->out, master);
        if (r < 0) {
                (void)close(master);
                (void)close(slave);
                return r;
        }
        es->master_fd = master;

        fds[0] = fds[1] = fds[2] = slave;
        es->n_open++;
        r = runner_spawn(b, &es->process, plan->argv, fds, es_on_exit);
        es->process.data = es;
        /* Ours would keep the master from ever seeing the end. */
        close_fds(fds);
        return r;
}

static void es_start(ExecStream *es, const Coreweave__Sandbox__V1__ExecStreamRequest *m) {
        const Coreweave__Sandbox__V1__ExecStreamInit *init;
        Backend *b = es->backend;
        ExecEnv env[EXEC_ENV_MAX];
        ExecPlan plan = {};
        ExecError e;
        char message[256];
        int r;

        es->started = true;
        if (!m) {
                es_fail(es, GRPC_STATUS_INVALID_ARGUMENT, "the stream ended before the init message");
                return;
        }
        if (m->message_case != REQ(INIT) || !m->init) {
                es_fail(es, GRPC_STATUS_INVALID_ARGUMENT, "the first message must be init");
                return;
        }
        init = m->init;
        if (check_env_count(init->n_env, &e) < 0) {
                es_fail(es, e.code, "%s", e.message);
                return;
        }
        for (size_t i = 0; i < init->n_env; i++)
                env[i] = (ExecEnv){ init->env[i]->key, init->env[i]->value };
        r = exec_prepare(b, init->sandbox_id, init->command, init->n_command, env, init->n_env,
                         init->container, init->tty, &e, &plan);
        if (r < 0) {
                es_fail(es, e.code, "%s", e.message);
                return;
        }
        memcpy(es->sandbox_id, plan.sandbox_id, sizeof(es->sandbox_id));
        memcpy(es->argv0, plan.argv0, sizeof(es->argv0));
        es->tty = init->tty;
        es->start_ms = uv_now(b->loop);

        uv_timer_init(b->loop, &es->drain_timer);
        es->drain_timer.data = es;
        es->n_open++;
        es->drain_left_ms = DRAIN_MS;

        if (es->tty)
                r = es_spawn_tty(es, &plan, init->tty_width, init->tty_height);
        else
                r = es_spawn_pipes(es, plan.argv);
        exec_plan_done(&plan);
        if (r < 0) {
                (void)snprintf(message, sizeof(message), "cannot start the exec runner: %s", uv_strerror(r));
                log_full(LOG_LEVEL_WARNING, NULL, es->sandbox_id, "exec %s: %s", es->argv0, message);
                es_send_error(es, "SPAWN_FAILED", message);
                es_finish(es, status_of_errno(r), message);
                es_close_all(es);
                return;
        }

        es->spawned = true;
        es->in_open = true;
        b->n_processes++;
        log_full(LOG_LEVEL_DEBUG, NULL, es->sandbox_id, "exec %s%s: started (runner pid %d)",
                 es->argv0, es->tty ? " (tty)" : "", es->process.pid);
        es_send_ready(es);
        es_read_output(es);
        es_read_next(es);
}

static void es_on_message(ServerStream *s, void *userdata, const ProtobufCMessage *msg) {
        const Coreweave__Sandbox__V1__ExecStreamRequest *m = (const Coreweave__Sandbox__V1__ExecStreamRequest *)msg;
        ExecStream *es = userdata;

        if (!es->started) {
                es_start(es, m);
                return;
        }
        if (!m) {
                /* Half-close: nothing more will come. */
                if (es->in_open)
                        es_stdin_close(es);
                return;
        }
        switch (m->message_case) {
        case REQ(INIT):
                es_fail(es, GRPC_STATUS_INVALID_ARGUMENT, "init may be sent only once");
                return;
        case REQ(STDIN):
                es_write_stdin(es, &m->stdin);
                return;         /* the next read waits for the write */
        case REQ(RESIZE):
                es_resize(es, m->resize);
                break;
        case REQ(CLOSE):
                if (es->in_open)
                        es_stdin_close(es);
                break;
        default:
                break;          /* an empty message: nothing to do */
        }
        es_read_next(es);
}

static void es_on_writable(ServerStream *s, void *userdata) {
        ExecStream *es = userdata;

        if (!es->paused)
                return;
        es->paused = false;
        es_read_output(es);
        if (es->exited && !es->closing && uv_is_active((uv_handle_t *)&es->drain_timer))
                es_drain_schedule(es);
}

static void es_on_done(ServerStream *s, void *userdata, bool cancelled) {
        ExecStream *es = userdata;

        es->stream = NULL;
        es->done = true;
        if (es->spawned && !es->exited) {
                log_full(LOG_LEVEL_DEBUG, NULL, es->sandbox_id, "exec %s: stream over (%s), stopping it",
                         es->argv0, cancelled ? "cancelled" : "finished");
                es_kill(es);
                /* Keep reading (and dropping) so the command never blocks on a full pipe. */
                es->paused = false;
                es_read_output(es);
        }
        es_update(es);
        es_maybe_free(es);
}

static const ServerStreamOps exec_stream_ops = {
        .on_message = es_on_message,
        .on_writable = es_on_writable,
        .on_done = es_on_done,
};

void rpc_stream_exec(Backend *b, ServerStream *s) {
        ExecStream *es;

        es = calloc(1, sizeof(*es));
        if (!es) {
                server_stream_finish(s, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
        }
        es->backend = b;
        es->stream = s;
        es->master_fd = -1;
        server_stream_set_ops(s, &exec_stream_ops, es);
        server_stream_read(s);
}
