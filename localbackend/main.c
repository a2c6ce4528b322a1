/*
 * cwsandbox-local: the embedded backend, a SandboxService gRPC server that
 * runs each sandbox as an isolated local process tree.
 *
 * main() parses options, sets up the work directory, starts the server on one
 * libuv loop (plus the completion-queue thread) and runs it. SIGTERM/SIGINT
 * stop in order: sandboxes (SIGTERM, then SIGKILL after a grace period; a
 * second signal kills at once), then the server (calls still running after a
 * grace period are cancelled), then the completion queue; the loop then runs
 * out of handles and main returns.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>

/* macro.h before uv.h (through backend.h): both define MIN and MAX. */
#include "macro.h"
#include "backend.h"
#include "log.h"
#include "pbgrpc.h"
#include "sandbox.h"
#include "server.h"

#ifndef LIBEXECDIR
#define LIBEXECDIR "/usr/libexec"
#endif
#ifndef PROJECT_VERSION
#define PROJECT_VERSION "0.1.0"
#endif

#define RUNNER_NAME "cwsandbox-local-run"
#define SANDBOX_STOP_GRACE_MS 10000
#define SERVER_STOP_GRACE_MS 2000
#define TOKEN_MAX 1024

static char **arg_listen;
static size_t arg_n_listen;
static char *arg_token;
static char *arg_image_dir;
static char *arg_work_dir;
static char *arg_runner;
static bool arg_print_address;

typedef struct Main {
        Backend backend;
        uv_loop_t loop;
        uv_signal_t sigterm, sigint;
        bool signals_started;
        bool stopping;
        bool sandboxes_down;
        bool remove_work_dir;
        int exit_code;
} Main;

static void help(void) {
        printf("Usage: %s --listen ADDRESS [OPTIONS]\n"
               "\n"
               "Serve coreweave.sandbox.v1.SandboxService locally; each sandbox is an\n"
               "isolated process tree on this machine.\n"
               "\n"
               "  --listen ADDRESS        unix:/PATH or 127.0.0.1:PORT (PORT 0 picks one);\n"
               "                          repeatable, at least one required\n"
               "  --token TOKEN           require \"authorization: Bearer TOKEN\" on every call\n"
               "  --token-file PATH       read the token from PATH (must not be readable by\n"
               "                          group or others)\n"
               "  --image-dir DIR         unpacked root filesystems, one directory per image\n"
               "  --work-dir DIR          per-sandbox scratch space (default: a fresh directory\n"
               "                          under $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR or /tmp,\n"
               "                          removed at exit)\n"
               "  --runner PATH           the " RUNNER_NAME " helper (default:\n"
               "                          $CWSANDBOX_LOCAL_RUN, next to this program, or\n"
               "                          " LIBEXECDIR "/cwsandbox/" RUNNER_NAME ")\n"
               "  --fault METHOD:KEY=VALUE[,KEY=VALUE...]\n"
               "                          inject faults into METHOD (an rpc name or *); keys:\n"
               "                          latency_ms, error_rate, error_code (name or number),\n"
               "                          drop_rate, reply_delay_ms, remaining,\n"
               "                          retry_delay_ms; repeatable\n"
               "  --log-level LEVEL       error, warning, notice, info (default) or debug\n"
               "  --print-address         print each bound address on stdout once listening\n"
               "  --version               print the version and exit\n"
               "  --help                  print this help and exit\n",
               program_invocation_short_name);
}

/* --- option values -------------------------------------------------------- */

static int parse_u32(const char *s, uint32_t *ret) {
        unsigned long long v;
        char *end;

        if (!*s || *s == '-' || *s == '+')
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno != 0 || *end || v > UINT32_MAX)
                return -EINVAL;
        *ret = (uint32_t)v;
        return 0;
}

static int parse_rate(const char *s, double *ret) {
        double v;
        char *end;

        errno = 0;
        v = strtod(s, &end);
        if (errno != 0 || end == s || *end || !(v >= 0.0 && v <= 1.0))
                return -EINVAL;
        *ret = v;
        return 0;
}

static int parse_status_code(const char *s, grpc_status_code *ret) {
        uint32_t v;
        int code;

        if (parse_u32(s, &v) == 0) {
                if (v > GRPC_STATUS_UNAUTHENTICATED)
                        return -EINVAL;
                *ret = (grpc_status_code)v;
                return 0;
        }
        code = grpc_status_from_name(s);
        if (code < 0)
                return -EINVAL;
        *ret = (grpc_status_code)code;
        return 0;
}

static int fault_set_key(FaultRule *rule, const char *key, const char *value) {
        if (streq(key, "latency_ms"))
                return parse_u32(value, &rule->latency_ms);
        if (streq(key, "error_rate"))
                return parse_rate(value, &rule->error_rate);
        if (streq(key, "error_code"))
                return parse_status_code(value, &rule->error_code);
        if (streq(key, "drop_rate"))
                return parse_rate(value, &rule->drop_rate);
        if (streq(key, "reply_delay_ms"))
                return parse_u32(value, &rule->reply_delay_ms);
        if (streq(key, "remaining"))
                return parse_u32(value, &rule->remaining);
        if (streq(key, "retry_delay_ms"))
                return parse_u32(value, &rule->retry_delay_ms);
        return -ENOENT;
}

/* METHOD:key=value[,key=value...] */
static int parse_fault(const char *spec, Faults *faults) {
        _cleanup_free_ char *copy = strdup(spec);
        char *colon, *item, *save = NULL;
        FaultRule rule = {};

        if (!copy)
                return -ENOMEM;
        colon = strchr(copy, ':');
        if (!colon || colon == copy) {
                log_error("--fault %s: expected METHOD:KEY=VALUE[,KEY=VALUE...]", spec);
                return -EINVAL;
        }
        *colon = 0;
        for (item = strtok_r(colon + 1, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
                char *eq = strchr(item, '=');
                int r;

                if (!eq) {
                        log_error("--fault %s: \"%s\" is not KEY=VALUE", spec, item);
                        return -EINVAL;
                }
                *eq = 0;
                r = fault_set_key(&rule, item, eq + 1);
                if (r == -ENOENT) {
                        log_error("--fault %s: unknown key \"%s\"", spec, item);
                        return -EINVAL;
                }
                if (r < 0) {
                        log_error("--fault %s: bad value for %s: \"%s\"", spec, item, eq + 1);
                        return -EINVAL;
                }
        }
        if (faults_set(faults, copy, &rule) < 0) {
                log_error("--fault %s: unknown method \"%s\" (SandboxService rpc name or *)", spec, copy);
                return -EINVAL;
        }
        return 0;
}

static bool token_valid(const char *t) {
        if (!*t || strlen(t) > TOKEN_MAX)
                return false;
        /* It travels as a metadata value, which must be printable ASCII. */
        for (; *t; t++)
                if (*t < 0x21 || *t > 0x7e)
                        return false;
        return true;
}

static int read_token_file(const char *path, char **ret) {
        _cleanup_close_ int fd = -1;
        char buf[TOKEN_MAX + 2];
        struct stat st;
        ssize_t n;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0 || fstat(fd, &st) < 0) {
                r = -errno;
                log_error("--token-file %s: %s", path, strerror(-r));
                return r;
        }
        if (st.st_mode & (S_IRGRP | S_IROTH)) {
                log_error("--token-file %s: readable by group or others; chmod 600 it", path);
                return -EPERM;
        }
        n = read(fd, buf, sizeof(buf) - 1);
        if (n < 0) {
                r = -errno;
                log_error("--token-file %s: %s", path, strerror(-r));
                return r;
        }
        buf[n] = 0;
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
                buf[--n] = 0;
        if (!token_valid(buf)) {
                log_error("--token-file %s: the token must be 1-%d printable characters without spaces",
                          path, TOKEN_MAX);
                return -EINVAL;
        }
        *ret = strdup(buf);
        return *ret ? 0 : -ENOMEM;
}

static bool listen_address_valid(const char *a) {
        const char *colon;
        size_t digits;

        if (strncmp(a, "unix:", 5) == 0)
                return a[5] != 0;
        if (strncmp(a, "unix-abstract:", 14) == 0)
                return a[14] != 0;
        colon = strrchr(a, ':');
        if (!colon || colon == a)
                return false;
        digits = strspn(colon + 1, "0123456789");
        return digits > 0 && digits <= 5 && colon[1 + digits] == 0 && atoi(colon + 1) <= 65535;
}

static int add_listen(const char *a) {
        char **l;

        if (!listen_address_valid(a)) {
                log_error("--listen %s: expected unix:/PATH or HOST:PORT", a);
                return -EINVAL;
        }
        l = reallocarray(arg_listen, arg_n_listen + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        arg_listen = l;
        arg_listen[arg_n_listen] = strdup(a);
        if (!arg_listen[arg_n_listen])
                return -ENOMEM;
        arg_n_listen++;
        return 0;
}

static int set_string(char **dst, const char *value) {
        char *s = strdup(value);

        if (!s)
                return -ENOMEM;
        free(*dst);
        *dst = s;
        return 0;
}

/* Returns 1 to run, 0 to exit successfully (--help, --version), <0 on a bad option. */
static int parse_argv(int argc, char *argv[], Faults *faults) {
        enum {
                ARG_LISTEN = 0x100,
                ARG_TOKEN,
                ARG_TOKEN_FILE,
                ARG_IMAGE_DIR,
                ARG_WORK_DIR,
                ARG_RUNNER,
                ARG_FAULT,
                ARG_LOG_LEVEL,
                ARG_PRINT_ADDRESS,
                ARG_VERSION,
        };
        static const struct option options[] = {
                { "listen", required_argument, NULL, ARG_LISTEN },
                { "token", required_argument, NULL, ARG_TOKEN },
                { "token-file", required_argument, NULL, ARG_TOKEN_FILE },
                { "image-dir", required_argument, NULL, ARG_IMAGE_DIR },
                { "work-dir", required_argument, NULL, ARG_WORK_DIR },
                { "runner", required_argument, NULL, ARG_RUNNER },
                { "fault", required_argument, NULL, ARG_FAULT },
                { "log-level", required_argument, NULL, ARG_LOG_LEVEL },
                { "print-address", no_argument, NULL, ARG_PRINT_ADDRESS },
                { "version", no_argument, NULL, ARG_VERSION },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        bool have_token = false;
        LogLevel level;
        int c, r = 0;

        /* getopt prints its own line for unknown options and missing values. */
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("cwsandbox-local " PROJECT_VERSION "\n");
                        return 0;
                case ARG_LISTEN:
                        r = add_listen(optarg);
                        break;
                case ARG_TOKEN:
                case ARG_TOKEN_FILE:
                        if (have_token) {
                                log_error("--token and --token-file: give one token, once");
                                return -EINVAL;
                        }
                        have_token = true;
                        if (c == ARG_TOKEN_FILE)
                                r = read_token_file(optarg, &arg_token);
                        else if (!token_valid(optarg)) {
                                log_error("--token: the token must be 1-%d printable characters without spaces",
                                          TOKEN_MAX);
                                r = -EINVAL;
                        } else
                                r = set_string(&arg_token, optarg);
                        break;
                case ARG_IMAGE_DIR:
                        free(arg_image_dir);
                        arg_image_dir = realpath(optarg, NULL);
                        if (!arg_image_dir) {
                                log_error("--image-dir %s: %m", optarg);
                                return -EINVAL;
                        }
                        break;
                case ARG_WORK_DIR:
                        r = set_string(&arg_work_dir, optarg);
                        break;
                case ARG_RUNNER:
                        r = set_string(&arg_runner, optarg);
                        break;
                case ARG_FAULT:
                        r = parse_fault(optarg, faults);
                        break;
                case ARG_LOG_LEVEL:
                        level = log_level_from_string(optarg);
                        if (level == _LOG_LEVEL_INVALID) {
                                log_error("--log-level %s: expected error, warning, notice, info or debug", optarg);
                                return -EINVAL;
                        }
                        log_set_max_level(level);
                        break;
                case ARG_PRINT_ADDRESS:
                        arg_print_address = true;
                        break;
                default:
                        return -EINVAL;
                }
                if (r == -ENOMEM)
                        log_error("out of memory");
                if (r < 0)
                        return r;
        }
        if (optind < argc) {
                log_error("unexpected argument \"%s\" (see --help)", argv[optind]);
                return -EINVAL;
        }
        if (arg_n_listen == 0) {
                log_error("--listen ADDRESS is required (see --help)");
                return -EINVAL;
        }
        return 1;
}

static void free_args(void) {
        for (size_t i = 0; i < arg_n_listen; i++)
                free(arg_listen[i]);
        free(arg_listen);
        free(arg_token);
        free(arg_image_dir);
        free(arg_work_dir);
        free(arg_runner);
}

/* --- directories and the runner ------------------------------------------- */

static int mkdir_parents(const char *path, mode_t mode) {
        _cleanup_free_ char *p = strdup(path);

        if (!p)
                return -ENOMEM;
        for (char *s = p + 1; *s; s++) {
                if (*s != '/')
                        continue;
                *s = 0;
                if (mkdir(p, mode) < 0 && errno != EEXIST)
                        return -errno;
                *s = '/';
        }
        if (mkdir(p, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

static int setup_work_dir(Main *m) {
        Backend *b = &m->backend;
        _cleanup_free_ char *template = NULL;
        const char *base;
        size_t len;
        int r;

        if (arg_work_dir) {
                r = mkdir_parents(arg_work_dir, 0700);
                if (r < 0) {
                        log_error("--work-dir %s: cannot create: %s", arg_work_dir, strerror(-r));
                        return r;
                }
                b->work_dir = realpath(arg_work_dir, NULL);
                if (!b->work_dir) {
                        r = -errno;
                        log_error("--work-dir %s: %s", arg_work_dir, strerror(-r));
                        return r;
                }
                return 0;
        }

        /* RUNTIME_DIRECTORY may list several directories, separated by ':'. */
        base = getenv("RUNTIME_DIRECTORY");
        if (!base || !*base)
                base = getenv("XDG_RUNTIME_DIR");
        if (!base || !*base)
                base = "/tmp";
        len = strcspn(base, ":");
        if (asprintf(&template, "%.*s/cwsandbox-local.XXXXXX", (int)len, base) < 0)
                return -ENOMEM;
        if (!mkdtemp(template)) {
                r = -errno;
                log_error("cannot create a work directory %s: %s", template, strerror(-r));
                return r;
        }
        b->work_dir = TAKE_PTR(template);
        m->remove_work_dir = true;
        return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        if (remove(path) < 0)
                log_warning("cannot remove %s: %m", path);
        return 0;
}

static void remove_work_dir(const char *path) {
        /* Physical walk that stays on one file system: never follow a link
         * or a mount out of the directory. */
        if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0)
                log_warning("cannot remove %s: %m", path);
}

static char *find_runner(void) {
        _cleanup_free_ char *self = NULL;
        const char *env = getenv("CWSANDBOX_LOCAL_RUN");
        char *candidate, *slash;

        if (arg_runner)
                return strdup(arg_runner);
        if (env && *env)
                return strdup(env);

        self = realpath("/proc/self/exe", NULL);
        if (self && (slash = strrchr(self, '/'))) {
                *slash = 0;
                if (asprintf(&candidate, "%s/" RUNNER_NAME, self) < 0)
                        return NULL;
                if (access(candidate, X_OK) == 0)
                        return candidate;
                free(candidate);
        }
        return strdup(LIBEXECDIR "/cwsandbox/" RUNNER_NAME);
}

static int setup_backend(Main *m) {
        Backend *b = &m->backend;
        int r;

        b->token = TAKE_PTR(arg_token);
        b->image_dir = TAKE_PTR(arg_image_dir);
        b->runner_path = find_runner();
        if (!b->runner_path)
                return -ENOMEM;
        if (access(b->runner_path, X_OK) < 0)
                log_warning("runner %s: %m; sandboxes will fail to start", b->runner_path);
        r = setup_work_dir(m);
        if (r < 0)
                return r;
        log_debug("work dir %s, runner %s", b->work_dir, b->runner_path);
        return 0;
}

static void free_backend(Main *m) {
        Backend *b = &m->backend;

        if (m->remove_work_dir && b->work_dir)
                remove_work_dir(b->work_dir);
        free(b->token);
        free(b->image_dir);
        free(b->work_dir);
        free(b->runner_path);
}

/* --- stopping ------------------------------------------------------------- */

static void on_cq_closed(CqLoop *cq) {
        Backend *b = container_of(cq, Backend, cq);
        Main *m = container_of(b, Main, backend);

        /* Last handles: with them gone, uv_run() returns. */
        if (m->signals_started) {
                uv_close((uv_handle_t *)&m->sigterm, NULL);
                uv_close((uv_handle_t *)&m->sigint, NULL);
        }
}

static void on_server_down(Backend *b) {
        log_debug("server stopped");
        cq_loop_shutdown(&b->cq, on_cq_closed);
}

static void on_sandboxes_down(Backend *b) {
        Main *m = container_of(b, Main, backend);

        if (m->sandboxes_down)
                return;
        m->sandboxes_down = true;
        log_debug("every sandbox stopped");
        server_shutdown(b, SERVER_STOP_GRACE_MS, on_server_down);
}

static void on_signal(uv_signal_t *h, int signum) {
        Main *m = h->data;
        Backend *b = &m->backend;

        if (!m->stopping) {
                m->stopping = true;
                b->shutting_down = true;
                log_notice("%s: stopping every sandbox", strsignal(signum));
                (void)sd_notify(0, "STOPPING=1");
                sandboxes_shutdown(b, SANDBOX_STOP_GRACE_MS, on_sandboxes_down);
        } else if (!m->sandboxes_down) {
                log_notice("%s again: killing every sandbox now", strsignal(signum));
                sandboxes_shutdown(b, 0, on_sandboxes_down);
        } else
                log_notice("%s: already stopping", strsignal(signum));
}

static int start_signals(Main *m) {
        int r;

        m->sigterm.data = m->sigint.data = m;
        r = uv_signal_init(&m->loop, &m->sigterm);
        if (r < 0)
                return r;
        r = uv_signal_init(&m->loop, &m->sigint);
        if (r < 0) {
                uv_close((uv_handle_t *)&m->sigterm, NULL);
                return r;
        }
        m->signals_started = true;
        r = uv_signal_start(&m->sigterm, on_signal, SIGTERM);
        if (r >= 0)
                r = uv_signal_start(&m->sigint, on_signal, SIGINT);
        return r;
}

/* --- running -------------------------------------------------------------- */

static void announce(Main *m) {
        char *const *addresses;
        size_t n;

        addresses = server_addresses(&m->backend, &n);
        for (size_t i = 0; i < n; i++) {
                log_info("listening on %s", addresses[i]);
                if (arg_print_address)
                        printf("%s\n", addresses[i]);
        }
        if (arg_print_address)
                (void)fflush(stdout);
}

static void log_handle(uv_handle_t *h, void *arg) {
        log_error("handle still open at exit: %s", uv_handle_type_name(uv_handle_get_type(h)));
}

static int run(Main *m) {
        Backend *b = &m->backend;
        int r;

        r = setup_backend(m);
        if (r < 0)
                return 1;

        grpc_init();
        r = uv_loop_init(&m->loop);
        if (r < 0) {
                log_error("uv_loop_init: %s", uv_strerror(r));
                grpc_shutdown();
                return 1;
        }
        b->loop = &m->loop;
        r = cq_loop_init(&b->cq, &m->loop);
        if (r < 0) {
                log_error("cannot start the completion queue thread: %s", strerror(-r));
                (void)uv_run(&m->loop, UV_RUN_DEFAULT);     /* let the closed handles go */
                (void)uv_loop_close(&m->loop);
                grpc_shutdown();
                return 1;
        }

        r = server_start(b, arg_listen, arg_n_listen);
        if (r >= 0)
                r = start_signals(m);
        if (r < 0) {
                if (r != -EADDRNOTAVAIL)
                        log_error("cannot start: %s", strerror(-r));
                m->exit_code = 1;
                server_shutdown(b, 0, on_server_down);
        } else {
                announce(m);
                (void)sd_notify(0, "READY=1");
        }

        (void)uv_run(&m->loop, UV_RUN_DEFAULT);

        r = uv_loop_close(&m->loop);
        if (r < 0) {
                uv_walk(&m->loop, log_handle, NULL);
                log_error("event loop not empty at exit: %s", uv_strerror(r));
                m->exit_code = 1;
        }
        sandboxes_free(b);
        grpc_shutdown();
        log_debug("stopped");
        return m->exit_code;
}

/* Supervised by cwsandboxd, which names itself in the environment: die with
 * it even when it is killed outright, and do not start at all if it is gone
 * already (its spawner cannot do this between fork and exec). */
static int die_with_parent(void) {
        const char *s = getenv("CWSANDBOX_LOCAL_PARENT_PID");
        pid_t parent;

        if (!s)
                return 0;
        parent = (pid_t)atoi(s);
        (void)unsetenv("CWSANDBOX_LOCAL_PARENT_PID");
        if (parent <= 0)
                return 0;
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0)
                return -errno;
        if (getppid() != parent)
                return -ESRCH;
        return 0;
}

int main(int argc, char *argv[]) {
        Main m = {};
        int r;

        log_set_ident("cwsandbox-local");
        r = die_with_parent();
        if (r < 0) {
                log_error("cannot follow the parent process: %s", strerror(-r));
                return 1;
        }
        faults_init(&m.backend.faults);
        r = parse_argv(argc, argv, &m.backend.faults);
        if (r <= 0) {
                free_args();
                return r < 0 ? 2 : 0;
        }

        (void)signal(SIGPIPE, SIG_IGN);
        r = run(&m);
        free_backend(&m);
        free_args();
        return r;
}
