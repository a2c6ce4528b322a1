/*
 * cwsandbox-local-run: builds a sandbox, or runs a command inside one.
 *
 * cwsandbox-local is a multithreaded gRPC server, and between fork() and
 * exec() a multithreaded process may only make async-signal-safe calls:
 * no mounting a root, no writing cgroup files. So the server uv_spawn()s
 * this small single-threaded helper, which may fork, unshare and mount at
 * will before it execs the user's command. It links nothing but libc.
 *
 * init runs as two processes:
 *
 *   outer  stays in the host namespaces. It unshares the PID namespace,
 *          which applies to children only, and forks; its child is PID 1
 *          of the new PID namespace. The outer puts the child in a cgroup
 *          for the limits, lets it go on, writes the status line, forwards
 *          SIGTERM, SIGINT and SIGHUP to it, removes the cgroup when it is
 *          gone and exits with its exit code. Signals before COMMAND runs
 *          SIGKILL the child instead.
 *   child  unshares the mount, UTS and IPC namespaces (and the network one
 *          with --no-network, then brings loopback up), makes every mount
 *          private, then builds the root under SCRATCH:
 *            SCRATCH/layer  tmpfs (size=--layer-size) with upper/ and work/
 *            SCRATCH/root   overlay: BASE read-only below, layer/upper above
 *          with a fresh /proc of the new PID namespace, a tmpfs /tmp (1777),
 *          a minimal /dev (tmpfs with host device nodes bind-mounted, a new
 *          devpts instance, /dev/shm) and a read-only sysfs on /sys where
 *          the kernel allows it (otherwise /sys is left as the base has it,
 *          normally empty). With the host's root as the base, the directory
 *          holding SCRATCH gets an empty tmpfs over it, so no sandbox sees
 *          the scratch files of another. The child opens the --file
 *          sources, pivots into the root and detaches the old one, then
 *          copies the files (so that symlinks in the destination resolve
 *          inside the sandbox), sets the hostname, working directory and
 *          RLIMIT_NOFILE, marks every fd above 2 close-on-exec and execs
 *          COMMAND.
 *
 * The two talk over close-on-exec pipes. "go", outer to child: one byte
 * once the cgroups are set, so COMMAND never runs outside its limits; EOF
 * instead means the outer died, and the child gives up. "setup", child to
 * outer: "R" once the sandbox is ready, then either EOF from the successful
 * exec, or the text of the exec error; a setup error comes without "R".
 *
 * Status protocol (--status-fd N, N >= 3): the outer writes exactly one
 * line and closes the fd, which no other process holds, so the reader sees
 * EOF right after it:
 *   "pid N\n"         COMMAND has been exec'd as PID 1; N is its host pid.
 *   "error REASON\n"  setup failed, or COMMAND could not be exec'd.
 *
 * enter opens /proc/PID/root and /proc/PID/ns/{user,ipc,uts,net,pid,mnt}
 * first, then joins them (the user namespace only when it is not ours),
 * chroots into the sandbox root and forks, because a PID namespace applies
 * to children only. The child starts a new session (with --tty, fd 0
 * becomes its controlling terminal), changes to --cwd and execs COMMAND.
 * Before joining, the outer moves itself into the sandbox's cgroups when
 * the sandbox has any, so what runs there counts against its limits.
 *
 * Lifetime: every process sets PR_SET_PDEATHSIG(SIGKILL). The server's
 * death kills the outer process, that kills PID 1 (or the entered command),
 * and the death of PID 1 makes the kernel kill the whole PID namespace.
 * PR_SET_PDEATHSIG fires when the *thread* that spawned us exits, so the
 * server must spawn from a thread that lives as long as its sandboxes.
 * The kernel delivers to a namespace's PID 1 only the signals it has a
 * handler for (and SIGKILL): a forwarded SIGTERM does nothing to a PID 1
 * that does not trap it, so callers escalate to SIGKILL of the outer.
 *
 * Exit codes: COMMAND's own, 128+N when signal N killed it, 125 when the
 * sandbox could not be set up or entered, 126 COMMAND not executable,
 * 127 not found, 2 bad usage.
 *
 * Limits: --memory and --pids use a new cgroup "cwsandbox-ID-PID" below
 * the runner's own one: on the unified hierarchy (cgroup v2) below its own
 * cgroup or, when that cannot enable the controllers (a non-root cgroup
 * with processes in it), its parent; otherwise in the v1 memory and pids
 * hierarchies. Where none is writable the limit is skipped with one line
 * on stderr. The cgroup is removed once PID 1 has exited. When the outer
 * process is SIGKILLed it stays behind, empty, until the next init there
 * sweeps it (its PID suffix names a process that is gone). So to stop a
 * sandbox hard, SIGKILL PID 1 rather than the outer process.
 *
 * Not root: the outer first unshares a user namespace mapping uid and gid
 * 0 to the caller's ids (nothing else is mapped, setgroups is denied), so
 * the sandbox runs as "root" holding only the caller's rights. Then:
 *   - the base cannot be the host's root ("/" has locked submounts that an
 *     overlay in a user namespace refuses): use an unpacked image, owned by
 *     the caller, or writes to its directories are refused;
 *   - the overlay uses user.* xattrs (userxattr);
 *   - limits need a cgroup delegated to the caller;
 *   - /sys stays empty unless --no-network (sysfs needs an own network
 *     namespace there); /proc mounts only where no part of the host's
 *     /proc is over-mounted.
 *
 * Isolation here is of namespaces, not privileges: as root, COMMAND keeps
 * every capability, and no seccomp filter is set.
 *
 * A terminal for enter --tty should come from the sandbox's own devpts
 * (/proc/PID/root/dev/pts/ptmx on the host): a host pty works as the
 * controlling terminal, but has no name inside the sandbox.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EXIT_USAGE 2
#define EXIT_SETUP 125
#define EXIT_NOEXEC 126
#define EXIT_NOTFOUND 127

#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define DEFAULT_LAYER_SIZE (1ULL << 30)
#define HOSTNAME_MAX 64
#define CGROUP_PREFIX "cwsandbox-"
#define CGROUP_ROOT "/sys/fs/cgroup"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

extern char **environ;

typedef enum Mode {
        MODE_INIT = 1 << 0,
        MODE_ENTER = 1 << 1,
} Mode;

typedef struct Options {
        Mode mode;
        const char *id;
        const char *hostname;
        const char *base;
        const char *scratch;
        const char *cwd;
        unsigned long long layer_size;
        unsigned long long memory;      /* 0: no limit */
        unsigned long long pids;        /* 0: no limit */
        long long nofile;               /* -1: leave as inherited */
        int status_fd;                  /* -1: none */
        pid_t pid;
        bool no_network;
        bool tty;
        bool own_userns;                /* init made a user namespace (not root) */
        const char **env;               /* NULL-terminated after build_env() */
        size_t n_env;
        const char **files;             /* "DEST=SRC" */
        size_t n_files;
        char **argv;
} Options;

/* A message for the status line and stderr, built where the error happens. */
typedef struct Error {
        char text[1024];
} Error;

/* What the signal handler does with SIGTERM, SIGINT and SIGHUP. */
typedef enum SignalMode {
        SIGNALS_KILL,                   /* init before COMMAND runs: SIGKILL the child */
        SIGNALS_FORWARD,                /* init: pass the signal on to PID 1 */
        SIGNALS_KILL_GROUP,             /* enter: SIGKILL the command's process group */
} SignalMode;

static const int forwarded_signals[] = { SIGTERM, SIGINT, SIGHUP };

static pid_t arg_parent;

static volatile sig_atomic_t signal_child;      /* 0 until forked */
static volatile sig_atomic_t signal_mode;
static volatile sig_atomic_t signal_got;

#if defined(__SANITIZE_ADDRESS__)
/* LeakSanitizer checks at exit from a clone()d tracer. After unshare of the
 * PID namespace that clone lands in the sandbox's namespace, where it fails
 * once PID 1 is gone, and the exit code would be lost. The server starts us
 * with a clean environment, so this default is what applies; and main()
 * leaves through _exit(), which skips the check whatever ASAN_OPTIONS say. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
        return "detect_leaks=0";
}
#endif

/* ---- small helpers -------------------------------------------------------- */

static int errorf(Error *e, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int errorf(Error *e, int r, const char *fmt, ...) {
        va_list ap;
        size_t n;

        va_start(ap, fmt);
        (void)vsnprintf(e->text, sizeof(e->text), fmt, ap);
        va_end(ap);
        n = strlen(e->text);
        if (r < 0)
                (void)snprintf(e->text + n, sizeof(e->text) - n, ": %s", strerror(-r));
        return r < 0 ? r : -EINVAL;
}

/* One line on stderr, naming the sandbox. */
static void log_line(const Options *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_line(const Options *o, const char *fmt, ...) {
        va_list ap;

        if (o && o->id)
                fprintf(stderr, "cwsandbox-local-run: sandbox %s: ", o->id);
        else if (o && o->mode == MODE_ENTER && o->pid > 0)
                fprintf(stderr, "cwsandbox-local-run: sandbox of pid %d: ", (int)o->pid);
        else
                fputs("cwsandbox-local-run: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}

/* snprintf for paths: ENAMETOOLONG rather than a silently cut path. */
static int pathf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int pathf(char *buf, size_t n, const char *fmt, ...) {
        va_list ap;
        int k;

        va_start(ap, fmt);
        k = vsnprintf(buf, n, fmt, ap);
        va_end(ap);
        if (k < 0 || (size_t)k >= n)
                return -ENAMETOOLONG;
        return 0;
}

static int write_all(int fd, const char *p, size_t n) {
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

/* Reads until EOF or a full buffer; always NUL-terminates. */
static size_t read_all(int fd, char *buf, size_t n) {
        size_t len = 0;

        while (len < n - 1) {
                ssize_t k = read(fd, buf + len, n - 1 - len);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        break;
                len += (size_t)k;
        }
        buf[len] = 0;
        return len;
}

static int write_file(const char *path, const char *text) {
        int fd, r;

        fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        r = write_all(fd, text, strlen(text));
        if (close(fd) < 0 && r == 0)
                r = -errno;
        return r;
}

static int mkdir_p(const char *path, mode_t mode) {
        char buf[PATH_MAX];
        size_t n = strlen(path);

        if (n == 0)
                return -EINVAL;
        if (n >= sizeof(buf))
                return -ENAMETOOLONG;
        memcpy(buf, path, n + 1);
        for (char *p = buf + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = 0;
                if (mkdir(buf, mode) < 0 && errno != EEXIST)
                        return -errno;
                *p = '/';
        }
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

/* Closes the fds that are open (>= 0) in a list. */
static void close_all(const int *fds, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (fds[i] >= 0)
                        close(fds[i]);
}

static void sleep_ms(long ms) {
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* Closes every fd above 2 except keep (-1: none). */
static void close_stray_fds(int keep) {
        unsigned int lo = keep > 3 ? (unsigned int)keep - 1 : 0;

        if (keep < 0) {
                if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0)
                        return;
        } else if ((keep == 3 || syscall(SYS_close_range, 3U, lo, 0U) == 0) &&
                   syscall(SYS_close_range, (unsigned int)keep + 1, ~0U, 0U) == 0) {
                return;
        }
        /* No close_range (before Linux 5.9): close by number. */
        for (int fd = 3; fd < 65536; fd++)
                if (fd != keep)
                        (void)close(fd);
}

/* Marks every fd above 2 close-on-exec, so none leaks into COMMAND. */
static void cloexec_stray_fds(void) {
        if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
                return;
        for (int fd = 3; fd < 65536; fd++)
                (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/* PR_SET_PDEATHSIG, and a check that the parent did not die before it. */
static int tie_to_parent(void) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
                return -errno;
        if (getppid() != arg_parent)
                return -ESRCH;
        return 0;
}

/* ---- signals -------------------------------------------------------------- */

static void on_signal(int sig) {
        int saved = errno;
        pid_t pid = signal_child;

        signal_got = sig;
        if (pid > 0) {
                if (signal_mode == SIGNALS_FORWARD) {
                        (void)kill(pid, sig);
                } else {
                        /* The group may not exist yet if the child has not
                         * called setsid(): kill the child itself too. */
                        if (signal_mode == SIGNALS_KILL_GROUP)
                                (void)kill(-pid, SIGKILL);
                        (void)kill(pid, SIGKILL);
                }
        }
        errno = saved;
}

static void signals_block(bool block) {
        sigset_t set;

        sigemptyset(&set);
        for (size_t i = 0; i < ELEMENTSOF(forwarded_signals); i++)
                sigaddset(&set, forwarded_signals[i]);
        (void)sigprocmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}

/* Call with the signals blocked; unblock once signal_child is set. */
static void signals_install(SignalMode mode) {
        struct sigaction sa = { .sa_handler = on_signal };

        signal_mode = mode;
        sigemptyset(&sa.sa_mask);
        for (size_t i = 0; i < ELEMENTSOF(forwarded_signals); i++)
                (void)sigaction(forwarded_signals[i], &sa, NULL);
        /* The status fd's reader may be gone: that must not kill us. */
        (void)signal(SIGPIPE, SIG_IGN);
}

/* In a child before exec: ignored signals and the mask survive exec. */
static void signals_reset(void) {
        struct sigaction sa = { .sa_handler = SIG_DFL };
        sigset_t none;

        sigemptyset(&sa.sa_mask);
        for (int sig = 1; sig < NSIG; sig++)
                if (sig != SIGKILL && sig != SIGSTOP)
                        (void)sigaction(sig, &sa, NULL);
        sigemptyset(&none);
        (void)sigprocmask(SIG_SETMASK, &none, NULL);
}

/*
 * Waits for our child and returns its exit code, or 128+N. The child is
 * reaped only after the signal handler has forgotten it, so the handler
 * never signals a recycled pid (or process group).
 */
static int wait_exit_code(pid_t pid) {
        siginfo_t si;
        int status;

        while (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) < 0)
                if (errno != EINTR)
                        return EXIT_SETUP;
        signals_block(true);
        signal_child = 0;
        signals_block(false);
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return EXIT_SETUP;
        if (WIFSIGNALED(status))
                return 128 + WTERMSIG(status);
        return WEXITSTATUS(status);
}

/* ---- command line ---------------------------------------------------------- */

enum {
        OPT_ID = 256, OPT_HOSTNAME, OPT_BASE, OPT_SCRATCH, OPT_LAYER_SIZE, OPT_ENV, OPT_CWD,
        OPT_FILE, OPT_NO_NETWORK, OPT_MEMORY, OPT_PIDS, OPT_NOFILE, OPT_STATUS_FD, OPT_PID,
        OPT_TTY, OPT_HELP,
};

static const struct option long_options[] = {
        { "id",         required_argument, NULL, OPT_ID },
        { "hostname",   required_argument, NULL, OPT_HOSTNAME },
        { "base",       required_argument, NULL, OPT_BASE },
        { "scratch",    required_argument, NULL, OPT_SCRATCH },
        { "layer-size", required_argument, NULL, OPT_LAYER_SIZE },
        { "env",        required_argument, NULL, OPT_ENV },
        { "cwd",        required_argument, NULL, OPT_CWD },
        { "file",       required_argument, NULL, OPT_FILE },
        { "no-network", no_argument,       NULL, OPT_NO_NETWORK },
        { "memory",     required_argument, NULL, OPT_MEMORY },
        { "pids",       required_argument, NULL, OPT_PIDS },
        { "nofile",     required_argument, NULL, OPT_NOFILE },
        { "status-fd",  required_argument, NULL, OPT_STATUS_FD },
        { "pid",        required_argument, NULL, OPT_PID },
        { "tty",        no_argument,       NULL, OPT_TTY },
        { "help",       no_argument,       NULL, OPT_HELP },
        {}
};

static void usage(FILE *f) {
        fputs("Usage: cwsandbox-local-run init --scratch DIR [OPTIONS] -- COMMAND [ARG...]\n"
              "       cwsandbox-local-run enter --pid HOSTPID [OPTIONS] -- COMMAND [ARG...]\n"
              "\n"
              "init runs COMMAND as PID 1 of a new sandbox: new PID, mount, UTS and IPC\n"
              "namespaces, and a root made of a tmpfs layer over a read-only base.\n"
              "  --id ID             sandbox id, for messages and the default hostname\n"
              "  --hostname NAME     hostname inside (default: ID's first 12 characters)\n"
              "  --base DIR          read-only base of the root (default /)\n"
              "  --scratch DIR       existing directory for the mount points (required)\n"
              "  --layer-size BYTES  size of the writable layer (default 1073741824)\n"
              "  --env K=V           the command's environment, repeatable (nothing else\n"
              "                      is passed on; PATH gets a default)\n"
              "  --cwd DIR           working directory inside, created if missing (default /)\n"
              "  --file DEST=SRC     copy host file SRC to DEST inside, repeatable\n"
              "                      (split at the last '=': SRC must not contain one)\n"
              "  --no-network        a new network namespace with only loopback\n"
              "  --memory BYTES      memory limit, where the kernel allows it\n"
              "  --pids N            task limit, where the kernel allows it\n"
              "  --nofile N          RLIMIT_NOFILE of the command\n"
              "  --status-fd N       where to report \"pid HOSTPID\" or \"error REASON\"\n"
              "\n"
              "enter runs COMMAND inside the sandbox whose PID 1 has host pid HOSTPID.\n"
              "  --pid HOSTPID       the sandbox's PID 1 as the host sees it (required)\n"
              "  --env K=V, --cwd DIR, --id ID   as above (cwd must exist)\n"
              "  --tty               make fd 0, a terminal, the controlling terminal\n"
              "\n"
              "Exit status: the command's, 128+N if signal N killed it, 125 setup failed,\n"
              "126 command not executable, 127 command not found, 2 bad usage.\n", f);
}

static bool option_allowed(int opt, Mode mode) {
        switch (opt) {
        case OPT_ID: case OPT_ENV: case OPT_CWD: case OPT_HELP:
                return true;
        case OPT_PID: case OPT_TTY:
                return mode == MODE_ENTER;
        default:
                return mode == MODE_INIT;
        }
}

static int parse_number(const char *s, unsigned long long min, unsigned long long max,
                        unsigned long long *ret) {
        unsigned long long v;
        char *end;

        if (*s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno || *end)
                return -EINVAL;
        if (v < min || v > max)
                return -ERANGE;
        *ret = v;
        return 0;
}

static int parse_value(Options *o, int opt, const char *arg) {
        unsigned long long v;
        int r;

        switch (opt) {
        case OPT_LAYER_SIZE:
                return parse_number(arg, 1, ULLONG_MAX, &o->layer_size);
        case OPT_MEMORY:
                return parse_number(arg, 0, ULLONG_MAX, &o->memory);
        case OPT_PIDS:
                return parse_number(arg, 0, INT_MAX, &o->pids);
        case OPT_NOFILE:
                r = parse_number(arg, 0, LLONG_MAX, &v);
                o->nofile = (long long)v;
                return r;
        case OPT_STATUS_FD:
                r = parse_number(arg, 3, INT_MAX, &v);
                o->status_fd = (int)v;
                return r;
        case OPT_PID:
                r = parse_number(arg, 1, INT_MAX, &v);
                o->pid = (pid_t)v;
                return r;
        }
        return -EINVAL;
}

static int parse_option(Options *o, int opt, char *arg) {
        switch (opt) {
        case OPT_ID: o->id = arg; return 0;
        case OPT_HOSTNAME: o->hostname = arg; return 0;
        case OPT_BASE: o->base = arg; return 0;
        case OPT_SCRATCH: o->scratch = arg; return 0;
        case OPT_CWD: o->cwd = arg; return 0;
        case OPT_NO_NETWORK: o->no_network = true; return 0;
        case OPT_TTY: o->tty = true; return 0;
        case OPT_ENV:
                if (!strchr(arg, '=') || arg[0] == '=')
                        return -EINVAL;
                o->env[o->n_env++] = arg;
                return 0;
        case OPT_FILE:
                /* Split at the last '=': DEST comes from users, SRC from the server. */
                if (arg[0] != '/' || !strrchr(arg, '=') || strrchr(arg, '=')[1] == 0)
                        return -EINVAL;
                o->files[o->n_files++] = arg;
                return 0;
        }
        return parse_value(o, opt, arg);
}

static int parse_mode(const char *word, Mode *ret) {
        if (strcmp(word, "init") == 0)
                *ret = MODE_INIT;
        else if (strcmp(word, "enter") == 0)
                *ret = MODE_ENTER;
        else
                return -EINVAL;
        return 0;
}

static int check_options(const Options *o) {
        if (!o->argv[0]) {
                log_line(o, "no COMMAND given (put it after --)");
                return -EINVAL;
        }
        if (o->mode == MODE_INIT && !o->scratch) {
                log_line(o, "init needs --scratch DIR");
                return -EINVAL;
        }
        if (o->mode == MODE_INIT && o->status_fd >= 0 && fcntl(o->status_fd, F_GETFD) < 0) {
                log_line(o, "--status-fd %d: %m", o->status_fd);
                return -EBADF;
        }
        if (o->mode == MODE_ENTER && o->pid <= 0) {
                log_line(o, "enter needs --pid HOSTPID");
                return -EINVAL;
        }
        return 0;
}

/* Returns 1 after --help, 0 to go on, negative on bad usage (reported). */
static int parse_args(int argc, char **argv, Options *o) {
        int opt, index, r;

        *o = (Options){ .base = "/", .layer_size = DEFAULT_LAYER_SIZE, .nofile = -1, .status_fd = -1 };
        if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
                usage(argc < 2 ? stderr : stdout);
                return argc < 2 ? -EINVAL : 1;
        }
        if (parse_mode(argv[1], &o->mode) < 0) {
                log_line(NULL, "unknown mode '%s': use init or enter (see --help)", argv[1]);
                return -EINVAL;
        }
        /* Every value is one argument: argc bounds both lists (+ PATH, NULL). */
        o->env = calloc((size_t)argc + 2, sizeof(char *));
        o->files = calloc((size_t)argc, sizeof(char *));
        if (!o->env || !o->files) {
                log_line(NULL, "out of memory");
                return -ENOMEM;
        }
        optind = 2;
        while ((opt = getopt_long(argc, argv, "+h", long_options, &index)) >= 0) {
                if (opt == 'h' || opt == OPT_HELP) {
                        usage(stdout);
                        return 1;
                }
                if (opt == '?') {
                        log_line(NULL, "see cwsandbox-local-run --help");
                        return -EINVAL;
                }
                if (!option_allowed(opt, o->mode)) {
                        log_line(NULL, "--%s is not an option of %s", long_options[index].name, argv[1]);
                        return -EINVAL;
                }
                r = parse_option(o, opt, optarg);
                if (r < 0) {
                        log_line(NULL, "invalid --%s '%s'%s", long_options[index].name, optarg,
                                 r == -ERANGE ? ": out of range" : "");
                        return r;
                }
        }
        o->argv = argv + optind;
        return check_options(o);
}

static void options_free(Options *o) {
        free(o->env);
        free(o->files);
        o->env = NULL;
        o->files = NULL;
}

/* COMMAND's environment: exactly --env, plus a default PATH. */
static void build_env(Options *o) {
        bool has_path = false;

        for (size_t i = 0; i < o->n_env; i++)
                if (strncmp(o->env[i], "PATH=", 5) == 0)
                        has_path = true;
        if (!has_path)
                o->env[o->n_env++] = DEFAULT_PATH;
        o->env[o->n_env] = NULL;
}

/* ---- cgroups ----------------------------------------------------------------- */

typedef struct Cgroups {
        char dirs[2][PATH_MAX];         /* the ones we made, to remove at the end */
        size_t n;
} Cgroups;

static bool cgroup_unified(void) {
        return access(CGROUP_ROOT "/cgroup.controllers", F_OK) == 0;
}

static bool list_has(const char *list, const char *word) {
        size_t n = strlen(word);

        for (const char *p = list; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
                if (strncmp(p, word, n) == 0 && (p[n] == ',' || p[n] == 0))
                        return true;
        return false;
}

/* From /proc/PID/cgroup: the path of PID's cgroup in the hierarchy with
 * controller ctrl, or in the unified one when ctrl is NULL. */
static int cgroup_of(pid_t pid, const char *ctrl, char *ret, size_t n) {
        char path[64], line[PATH_MAX + 128];
        int r = -ENOENT;
        FILE *f;

        snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
        f = fopen(path, "re");
        if (!f)
                return -errno;
        while (r == -ENOENT && fgets(line, sizeof(line), f)) {
                char *ctrls = strchr(line, ':'), *p;

                if (!ctrls || !(p = strchr(++ctrls, ':')))
                        continue;
                *p++ = 0;
                p[strcspn(p, "\n")] = 0;
                if (ctrl ? list_has(ctrls, ctrl) : (strncmp(line, "0:", 2) == 0 && !*ctrls))
                        r = pathf(ret, n, "%s", strcmp(p, "/") == 0 ? "" : p);
        }
        fclose(f);
        return r;
}

static void cgroup_name(const Options *o, char *ret, size_t n) {
        char id[128] = "";
        size_t k = 0;

        /* The id becomes a directory name: keep it to a safe alphabet. */
        for (const char *p = o->id ? o->id : ""; *p && k < sizeof(id) - 1; p++)
                id[k++] = strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-", *p) ? *p : '_';
        id[k] = 0;
        snprintf(ret, n, CGROUP_PREFIX "%s%s%d", id, k ? "-" : "", (int)getpid());
}

static int cgroup_write(const char *dir, const char *file, unsigned long long value, Error *e) {
        char path[PATH_MAX + 64], num[32];
        int r;

        r = pathf(path, sizeof(path), "%s/%s", dir, file);
        snprintf(num, sizeof(num), "%llu", value);
        if (r == 0)
                r = write_file(path, num);
        return r < 0 ? errorf(e, r, "write %s", path) : 0;
}

/*
 * Removes what runners SIGKILLed before their cleanup left in parent: the
 * cgroups named CGROUP_PREFIX...-PID whose PID is gone. rmdir() takes only
 * empty cgroups, so one that still holds a sandbox stays.
 */
static void cgroup_sweep(const char *parent) {
        char path[PATH_MAX];
        struct dirent *d;
        DIR *dir;

        dir = opendir(parent);
        if (!dir)
                return;
        while ((d = readdir(dir))) {
                const char *dash = strrchr(d->d_name, '-');
                unsigned long long pid;

                if (strncmp(d->d_name, CGROUP_PREFIX, strlen(CGROUP_PREFIX)) != 0 || !dash ||
                    parse_number(dash + 1, 1, INT_MAX, &pid) < 0)
                        continue;
                if (kill((pid_t)pid, 0) < 0 && errno == ESRCH &&
                    pathf(path, sizeof(path), "%s/%s", parent, d->d_name) == 0)
                        (void)rmdir(path);
        }
        closedir(dir);
}

/* Makes parent/name (a new cgroup), writes the limits, moves pid into it. */
static int cgroup_fill(Cgroups *cg, const char *parent, const char *name, const char *const files[],
                       const unsigned long long values[], size_t n, pid_t pid, Error *e) {
        char dir[PATH_MAX];
        int r = 0;

        if ((r = pathf(dir, sizeof(dir), "%s/%s", parent, name)) < 0)
                return errorf(e, r, "cgroup %s/%s", parent, name);
        cgroup_sweep(parent);
        if (mkdir(dir, 0755) < 0)
                return errorf(e, -errno, "create %s", dir);
        for (size_t i = 0; r == 0 && i < n; i++)
                if (values[i] > 0)
                        r = cgroup_write(dir, files[i], values[i], e);
        if (r == 0)
                r = cgroup_write(dir, "cgroup.procs", (unsigned long long)pid, e);
        if (r < 0) {
                (void)rmdir(dir);
                return r;
        }
        snprintf(cg->dirs[cg->n++], sizeof(cg->dirs[0]), "%s", dir);
        return 0;
}

/* Turns on the controllers for children of base unless already on. */
static int cgroup_enable(const char *base, const Options *o, Error *e) {
        char path[PATH_MAX + 64], have[256] = "", want[64] = "";
        int fd, r;

        r = pathf(path, sizeof(path), "%s/cgroup.subtree_control", base);
        if (r < 0)
                return errorf(e, r, "cgroup %s", base);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return errorf(e, -errno, "read %s", path);
        (void)read_all(fd, have, sizeof(have));
        close(fd);
        have[strcspn(have, "\n")] = ' ';
        if (o->memory > 0 && !strstr(have, "memory "))
                strcat(want, "+memory ");
        if (o->pids > 0 && !strstr(have, "pids "))
                strcat(want, "+pids ");
        if (!want[0])
                return 0;
        r = write_file(path, want);
        return r < 0 ? errorf(e, r, "enable %sin %s", want, path) : 0;
}

static int cgroups_apply_unified(const Options *o, pid_t pid, Cgroups *cg, Error *e) {
        static const char *const files[] = { "memory.max", "pids.max" };
        const unsigned long long values[] = { o->memory, o->pids };
        char own[PATH_MAX], base[PATH_MAX], name[160];
        int r;

        r = cgroup_of(getpid(), NULL, own, sizeof(own));
        if (r < 0)
                return errorf(e, r, "find our cgroup");
        cgroup_name(o, name, sizeof(name));
        /* Our own cgroup first; a non-root cgroup with processes in it
         * cannot pass controllers on, so then its parent. */
        for (int up = 0; up < 2; up++) {
                if (pathf(base, sizeof(base), CGROUP_ROOT "%s", own) < 0)
                        return errorf(e, -ENAMETOOLONG, "cgroup path");
                if (up && (!own[0] || !strrchr(base, '/')))
                        break;
                if (up)
                        *strrchr(base, '/') = 0;
                r = cgroup_enable(base, o, e);
                if (r == 0)
                        r = cgroup_fill(cg, base, name, files, values, ELEMENTSOF(files), pid, e);
                if (r == 0)
                        return 0;
        }
        return r;
}

/* One cgroup v1 hierarchy (mounted at CGROUP_ROOT/ctrl): one limit. */
static int cgroup_apply_v1(const Options *o, const char *ctrl, const char *file, unsigned long long value,
                           pid_t pid, Cgroups *cg, Error *e) {
        char own[PATH_MAX], parent[PATH_MAX], name[160];
        int r;

        r = cgroup_of(getpid(), ctrl, own, sizeof(own));
        if (r < 0)
                return errorf(e, r, "find our %s cgroup", ctrl);
        cgroup_name(o, name, sizeof(name));
        r = pathf(parent, sizeof(parent), CGROUP_ROOT "/%s%s", ctrl, own);
        if (r < 0)
                return errorf(e, r, "%s cgroup path", ctrl);
        return cgroup_fill(cg, parent, name, &file, &value, 1, pid, e);
}

/* Best effort: a limit the kernel does not let us set is skipped, said once. */
static void cgroups_apply(const Options *o, pid_t pid, Cgroups *cg) {
        Error e = {};

        *cg = (Cgroups){};
        if (o->memory == 0 && o->pids == 0)
                return;
        if (cgroup_unified()) {
                if (cgroups_apply_unified(o, pid, cg, &e) < 0)
                        log_line(o, "memory and task limits not applied: %s", e.text);
                return;
        }
        if (o->memory > 0 && cgroup_apply_v1(o, "memory", "memory.limit_in_bytes", o->memory, pid, cg, &e) < 0)
                log_line(o, "memory limit not applied: %s", e.text);
        if (o->pids > 0 && cgroup_apply_v1(o, "pids", "pids.max", o->pids, pid, cg, &e) < 0)
                log_line(o, "task limit not applied: %s", e.text);
}

static void cgroups_remove(const Options *o, Cgroups *cg) {
        for (size_t i = 0; i < cg->n; i++) {
                /* Exited tasks can take a moment to leave the cgroup. */
                int tries = 0;

                while (rmdir(cg->dirs[i]) < 0) {
                        if (errno != EBUSY || ++tries > 100) {
                                log_line(o, "remove cgroup %s: %m", cg->dirs[i]);
                                break;
                        }
                        sleep_ms(10);
                }
        }
}

/* enter: move ourselves into the sandbox's cgroups, so what we start there
 * counts against its limits. Best effort, as the limits themselves are. */
static void cgroups_join(const Options *o) {
        static const char *const ctrls[] = { "memory", "pids" };
        char rel[PATH_MAX], path[PATH_MAX + 64];
        const char *name;

        for (size_t i = 0; i < ELEMENTSOF(ctrls); i++) {
                bool unified = cgroup_unified();

                if (cgroup_of(o->pid, unified ? NULL : ctrls[i], rel, sizeof(rel)) < 0)
                        continue;
                name = strrchr(rel, '/');
                if (!name || strncmp(name + 1, CGROUP_PREFIX, strlen(CGROUP_PREFIX)) != 0)
                        continue;
                if (pathf(path, sizeof(path), CGROUP_ROOT "%s%s%s/cgroup.procs", unified ? "" : "/",
                          unified ? "" : ctrls[i], rel) == 0)
                        (void)write_file(path, "0");
                if (unified)
                        break;
        }
}

/* ---- init, the child: builds the root and becomes PID 1 ----------------------- */

static int do_mount(const char *src, const char *dst, const char *type, unsigned long flags, const char *data,
                    Error *e) {
        if (mount(src, dst, type, flags, data) < 0)
                return errorf(e, -errno, "mount %s on %s", type ? type : src, dst);
        return 0;
}

static int make_dir(const char *path, mode_t mode, Error *e) {
        int r = mkdir_p(path, mode);

        return r < 0 ? errorf(e, r, "create directory %s", path) : 0;
}

/* Binds the host's node /dev/NAME onto an empty file in the new /dev. */
static int bind_dev_node(const char *dev, const char *name, Error *e) {
        char host[64], path[PATH_MAX];
        struct stat st;
        int fd, r;

        snprintf(host, sizeof(host), "/dev/%s", name);
        if (stat(host, &st) < 0 && errno == ENOENT)
                return 0;       /* this host has none: nor will the sandbox */
        r = pathf(path, sizeof(path), "%s/%s", dev, name);
        if (r < 0)
                return errorf(e, r, "%s/%s", dev, name);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
        if (fd < 0)
                return errorf(e, -errno, "create %s", path);
        close(fd);
        return do_mount(host, path, NULL, MS_BIND, NULL, e);
}

static int dev_symlinks(const char *dev, Error *e) {
        static const char *const links[][2] = {
                { "/proc/self/fd", "fd" }, { "/proc/self/fd/0", "stdin" },
                { "/proc/self/fd/1", "stdout" }, { "/proc/self/fd/2", "stderr" },
                { "pts/ptmx", "ptmx" },
        };
        char p[PATH_MAX];
        int r;

        for (size_t i = 0; i < ELEMENTSOF(links); i++) {
                r = pathf(p, sizeof(p), "%s/%s", dev, links[i][1]);
                if (r < 0 || symlink(links[i][0], p) < 0)
                        return errorf(e, r < 0 ? r : -errno, "create symlink %s/%s", dev, links[i][1]);
        }
        return 0;
}

/* A new file system of the given type on DEV/NAME, e.g. devpts on /dev/pts. */
static int dev_mount(const char *dev, const char *name, mode_t mode, const char *type, unsigned long flags,
                     const char *data, Error *e) {
        char p[PATH_MAX];
        int r;

        r = pathf(p, sizeof(p), "%s/%s", dev, name);
        if (r < 0)
                return errorf(e, r, "%s/%s", dev, name);
        if ((r = make_dir(p, mode, e)) < 0)
                return r;
        return do_mount(type, p, type, flags, data, e);
}

static int mount_dev(const Options *o, const char *root, Error *e) {
        static const char *const nodes[] = { "null", "zero", "full", "random", "urandom", "tty" };
        char dev[PATH_MAX], shm[64];
        int r;

        r = pathf(dev, sizeof(dev), "%s/dev", root);
        if (r < 0)
                return errorf(e, r, "%s/dev", root);
        if ((r = make_dir(dev, 0755, e)) < 0 ||
            (r = do_mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=1m", e)) < 0)
                return r;
        for (size_t i = 0; i < ELEMENTSOF(nodes); i++)
                if ((r = bind_dev_node(dev, nodes[i], e)) < 0)
                        return r;
        if ((r = dev_symlinks(dev, e)) < 0 ||
            (r = dev_mount(dev, "pts", 0755, "devpts", MS_NOSUID | MS_NOEXEC,
                           "newinstance,ptmxmode=0666,mode=0620", e)) < 0)
                return r;
        snprintf(shm, sizeof(shm), "mode=1777,size=%llu", o->layer_size);
        return dev_mount(dev, "shm", 01777, "tmpfs", MS_NOSUID | MS_NODEV, shm, e);
}

/* Paths go into comma-separated mount options: refuse what would split them. */
static int check_option_path(const char *what, const char *path, Error *e) {
        if (strpbrk(path, ",:\\"))
                return errorf(e, 0, "%s %s: a ',', ':' or '\\' in the path is not supported", what, path);
        return 0;
}

static int mount_layer(const Options *o, const char *layer, Error *e) {
        char opts[64], p[PATH_MAX];
        int r;

        snprintf(opts, sizeof(opts), "size=%llu,mode=755", o->layer_size);
        if ((r = make_dir(layer, 0700, e)) < 0 ||
            (r = do_mount("cwsandbox-layer", layer, "tmpfs", MS_NOSUID | MS_NODEV, opts, e)) < 0)
                return r;
        if ((r = pathf(p, sizeof(p), "%s/upper", layer)) < 0 || mkdir(p, 0755) < 0)
                return errorf(e, r < 0 ? r : -errno, "create %s/upper", layer);
        if ((r = pathf(p, sizeof(p), "%s/work", layer)) < 0 || mkdir(p, 0700) < 0)
                return errorf(e, r < 0 ? r : -errno, "create %s/work", layer);
        return 0;
}

static int mount_overlay(const Options *o, const char *layer, const char *root, Error *e) {
        char opts[3 * PATH_MAX + 128];
        struct stat st;
        int r;

        if (stat(o->base, &st) < 0)
                return errorf(e, -errno, "base %s", o->base);
        if (!S_ISDIR(st.st_mode))
                return errorf(e, -ENOTDIR, "base %s", o->base);
        if ((r = check_option_path("base", o->base, e)) < 0 ||
            (r = check_option_path("scratch", layer, e)) < 0)
                return r;
        /* Without real root, trusted.* xattrs are out of reach: use user.*. */
        r = pathf(opts, sizeof(opts), "lowerdir=%s,upperdir=%s/upper,workdir=%s/work%s", o->base, layer,
                  layer, o->own_userns ? ",userxattr" : "");
        if (r < 0)
                return errorf(e, r, "overlay options");
        if ((r = make_dir(root, 0755, e)) < 0)
                return r;
        return do_mount("cwsandbox-root", root, "overlay", 0, opts, e);
}

/* /proc, /tmp and /sys inside the new root. */
static int mount_api(const Options *o, const char *root, Error *e) {
        char p[PATH_MAX], opts[64];
        int r;

        if ((r = pathf(p, sizeof(p), "%s/proc", root)) < 0 ||
            (r = make_dir(p, 0555, e)) < 0 ||
            (r = do_mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, e)) < 0)
                return r;
        snprintf(opts, sizeof(opts), "mode=1777,size=%llu", o->layer_size);
        if ((r = pathf(p, sizeof(p), "%s/tmp", root)) < 0 ||
            (r = make_dir(p, 01777, e)) < 0 ||
            (r = do_mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, opts, e)) < 0)
                return r;
        /* sysfs only where the kernel lets us (not in a user namespace
         * without its own network namespace); else /sys stays empty. */
        if ((r = pathf(p, sizeof(p), "%s/sys", root)) < 0 || mkdir_p(p, 0555) < 0)
                return 0;
        (void)mount("sysfs", p, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
        return 0;
}

/*
 * With the host's root as the base, the lower layer shows the directory that
 * holds every sandbox's scratch dir, and with it the files other sandboxes
 * were given. Cover it with an empty read-only tmpfs. (Another base is an
 * image: the same path there is the image's own.)
 */
static int hide_scratch(const Options *o, const char *root, Error *e) {
        char parent[PATH_MAX], p[PATH_MAX];
        struct stat base, host_root, st;
        char *slash;

        if (stat(o->base, &base) < 0 || stat("/", &host_root) < 0 ||
            base.st_dev != host_root.st_dev || base.st_ino != host_root.st_ino)
                return 0;
        if (!realpath(o->scratch, parent))
                return errorf(e, -errno, "scratch %s", o->scratch);
        slash = strrchr(parent, '/');
        if (!slash || slash == parent)
                return 0;       /* directly below /: nothing to cover */
        *slash = 0;
        if (pathf(p, sizeof(p), "%s%s", root, parent) < 0 || lstat(p, &st) < 0 || !S_ISDIR(st.st_mode))
                return 0;
        return do_mount("tmpfs", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=4k", e);
}

static int build_root(const Options *o, char *root, size_t n, Error *e) {
        char layer[PATH_MAX];
        int r;

        /* Nothing we mount may show up in the host's namespace. */
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
                return errorf(e, -errno, "make mounts private");
        if ((r = pathf(layer, sizeof(layer), "%s/layer", o->scratch)) < 0 ||
            (r = pathf(root, n, "%s/root", o->scratch)) < 0)
                return errorf(e, r, "scratch %s", o->scratch);
        if ((r = mount_layer(o, layer, e)) < 0 ||
            (r = mount_overlay(o, layer, root, e)) < 0 ||
            (r = mount_api(o, root, e)) < 0 ||
            (r = hide_scratch(o, root, e)) < 0)
                return r;
        return mount_dev(o, root, e);
}

/* Host sources are opened before the pivot, written after it. */
static int open_sources(const Options *o, int *fds, Error *e) {
        for (size_t i = 0; i < o->n_files; i++) {
                const char *src = strrchr(o->files[i], '=') + 1;

                fds[i] = open(src, O_RDONLY | O_CLOEXEC | O_NOCTTY);
                if (fds[i] < 0)
                        return errorf(e, -errno, "open file %s", src);
        }
        return 0;
}

/* --file needs one fd per file for a moment: raise the soft limit if needed. */
static int raise_fd_limit(size_t n_files, struct rlimit *ret_old, Error *e) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, ret_old) < 0)
                return errorf(e, -errno, "get open-file limit");
        rl = *ret_old;
        if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < n_files + 32) {
                rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > n_files + 32 ? n_files + 32 : rl.rlim_max;
                if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                        return errorf(e, -errno, "raise open-file limit for %zu files", n_files);
        }
        return 0;
}

static int pivot_into(const char *root, Error *e) {
        if (chdir(root) < 0)
                return errorf(e, -errno, "enter %s", root);
        if (syscall(SYS_pivot_root, ".", ".") < 0)
                return errorf(e, -errno, "pivot_root into %s", root);
        /* The old root now sits on top of the new one: detach it. */
        if (umount2(".", MNT_DETACH) < 0)
                return errorf(e, -errno, "detach the old root");
        if (chdir("/") < 0)
                return errorf(e, -errno, "chdir /");
        return 0;
}

static int copy_fd(int in, int out) {
        char buf[65536];
        ssize_t k;
        int r;

        while ((k = read(in, buf, sizeof(buf))) != 0) {
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                r = write_all(out, buf, (size_t)k);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Copies source fd to DEST (an absolute path, inside the new root). */
static int place_file(const char *spec, int src, Error *e) {
        const char *eq = strrchr(spec, '=');
        char dest[PATH_MAX], dir[PATH_MAX];
        int fd, r;

        r = pathf(dest, sizeof(dest), "%.*s", (int)(eq - spec), spec);
        if (r < 0)
                return errorf(e, r, "file %s", spec);
        memcpy(dir, dest, sizeof(dir));
        *strrchr(dir, '/') = 0;
        if (dir[0] && (r = make_dir(dir, 0755, e)) < 0)
                return r;
        fd = open(dest, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0644);
        if (fd < 0)
                return errorf(e, -errno, "create file %s", dest);
        r = copy_fd(src, fd);
        if (r == 0 && fchmod(fd, 0644) < 0)
                r = -errno;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        return r < 0 ? errorf(e, r, "write file %s", dest) : 0;
}

static int place_files(const Options *o, const int *fds, Error *e) {
        int r = 0;

        for (size_t i = 0; r == 0 && i < o->n_files; i++)
                r = place_file(o->files[i], fds[i], e);
        return r;
}

static int set_hostname(const Options *o, Error *e) {
        char name[HOSTNAME_MAX + 1];

        /* Default: the id's first 12 characters. The kernel takes 64 at most. */
        if (o->hostname)
                snprintf(name, sizeof(name), "%s", o->hostname);
        else
                snprintf(name, sizeof(name), "%.12s", o->id && o->id[0] ? o->id : "sandbox");
        if (sethostname(name, strlen(name)) < 0)
                return errorf(e, -errno, "set hostname '%s'", name);
        return 0;
}

static int enter_cwd(const Options *o, Error *e) {
        const char *cwd = o->cwd && o->cwd[0] ? o->cwd : "/";
        int r;

        if (chdir(cwd) == 0)
                return 0;
        if (errno != ENOENT)
                return errorf(e, -errno, "working directory %s", cwd);
        if ((r = make_dir(cwd, 0755, e)) < 0)
                return r;
        if (chdir(cwd) < 0)
                return errorf(e, -errno, "working directory %s", cwd);
        return 0;
}

static int set_fd_limit(const Options *o, const struct rlimit *inherited, Error *e) {
        struct rlimit rl = *inherited;

        if (o->nofile >= 0)
                rl.rlim_cur = rl.rlim_max = (rlim_t)o->nofile;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                return errorf(e, -errno, "set open-file limit %lld", o->nofile);
        return 0;
}

/* A new network namespace starts with loopback down. */
static int loopback_up(Error *e) {
        struct ifreq ifr = { .ifr_name = "lo" };
        int fd, r = 0;

        fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return errorf(e, -errno, "socket for loopback");
        if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
                r = errorf(e, -errno, "get loopback flags");
        ifr.ifr_flags |= IFF_UP;
        if (r == 0 && ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
                r = errorf(e, -errno, "bring loopback up");
        close(fd);
        return r;
}

static int child_namespaces(const Options *o, Error *e) {
        int flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC;

        if (o->no_network)
                flags |= CLONE_NEWNET;
        if (unshare(flags) < 0)
                return errorf(e, -errno, "new mount, UTS, IPC%s namespaces", o->no_network ? ", network" : "");
        return o->no_network ? loopback_up(e) : 0;
}

static int init_setup(const Options *o, Error *e) {
        char root[PATH_MAX];
        struct rlimit inherited;
        int *fds, r;

        fds = malloc((o->n_files + 1) * sizeof(int));
        if (!fds)
                return errorf(e, -ENOMEM, "setup");
        for (size_t i = 0; i < o->n_files; i++)
                fds[i] = -1;
        if ((r = child_namespaces(o, e)) < 0 ||
            (r = raise_fd_limit(o->n_files, &inherited, e)) < 0 ||
            (r = build_root(o, root, sizeof(root), e)) < 0 ||
            (r = open_sources(o, fds, e)) < 0 ||
            (r = pivot_into(root, e)) < 0)
                goto out;
        r = place_files(o, fds, e);
        if (r == 0 && (r = set_hostname(o, e)) == 0 && (r = enter_cwd(o, e)) == 0)
                r = set_fd_limit(o, &inherited, e);
out:
        close_all(fds, o->n_files);
        free(fds);
        return r;
}

static int exec_code(int err) {
        return err == ENOENT || err == ENOTDIR ? EXIT_NOTFOUND : EXIT_NOEXEC;
}

/* Waits for the outer's go (its cgroups are set); EOF: the outer died. */
static bool wait_for_go(int fd) {
        char c;
        ssize_t k;

        do
                k = read(fd, &c, 1);
        while (k < 0 && errno == EINTR);
        return k == 1;
}

_Noreturn static void init_child(Options *o, int go_fd, int setup_fd) {
        Error e = {};
        int r;

        signals_reset();
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || !wait_for_go(go_fd))
                _exit(EXIT_SETUP);
        close(go_fd);
        r = init_setup(o, &e);
        if (r < 0) {
                (void)write_all(setup_fd, e.text, strlen(e.text));
                _exit(EXIT_SETUP);
        }
        (void)write_all(setup_fd, "R", 1);
        cloexec_stray_fds();
        environ = (char **)o->env;
        execvp(o->argv[0], o->argv);
        r = errno;
        errorf(&e, -r, "exec %s", o->argv[0]);
        (void)write_all(setup_fd, e.text, strlen(e.text));
        _exit(exec_code(r));
}

/* ---- init, the outer process -------------------------------------------------- */

static void status_line(const Options *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void status_line(const Options *o, const char *fmt, ...) {
        char line[1100];
        va_list ap;
        int n;

        if (o->status_fd < 0)
                return;
        va_start(ap, fmt);
        n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
        va_end(ap);
        if (n < 0)
                return;
        n = n > (int)sizeof(line) - 2 ? (int)sizeof(line) - 2 : n;
        /* Exactly one line, whatever the reason says. */
        for (int i = 0; i < n; i++)
                if (line[i] == '\n' || line[i] == '\r')
                        line[i] = ' ';
        line[n++] = '\n';
        (void)write_all(o->status_fd, line, (size_t)n);
}

static void status_close(Options *o) {
        if (o->status_fd >= 0)
                (void)close(o->status_fd);
        o->status_fd = -1;
}

/* Setup failed before anything was forked. */
static int init_fail(Options *o, const Error *e) {
        status_line(o, "error %s", e->text);
        status_close(o);
        log_line(o, "%s", e->text);
        return EXIT_SETUP;
}

static int map_ids(const char *file, unsigned int id) {
        char map[64];

        snprintf(map, sizeof(map), "0 %u 1\n", id);
        return write_file(file, map);
}

/* Not root: a user namespace of our own, in which we are root. */
static int unshare_user(Error *e) {
        uid_t uid = geteuid();
        gid_t gid = getegid();
        int r;

        if (unshare(CLONE_NEWUSER) < 0)
                return errorf(e, -errno, "new user namespace");
        r = write_file("/proc/self/setgroups", "deny");
        if (r < 0 && r != -ENOENT)
                return errorf(e, r, "deny setgroups");
        if ((r = map_ids("/proc/self/uid_map", uid)) < 0)
                return errorf(e, r, "map uid %u", (unsigned)uid);
        if ((r = map_ids("/proc/self/gid_map", gid)) < 0)
                return errorf(e, r, "map gid %u", (unsigned)gid);
        /* New credentials: make sure the parent-death signal still holds. */
        if ((r = tie_to_parent()) < 0)
                return errorf(e, r, "parent-death signal");
        return 0;
}

/* The outer process only needs a new PID namespace for its child; the
 * other namespaces are the child's (child_namespaces()), so that the
 * outer stays in the host's mount namespace and can clean up there. */
static int init_namespaces(Options *o, Error *e) {
        int r;

        if (geteuid() != 0) {
                r = unshare_user(e);
                if (r < 0)
                        return r;
                o->own_userns = true;
        }
        if (unshare(CLONE_NEWPID) < 0)
                return errorf(e, -errno, "new PID namespace");
        return 0;
}

/* The child's report: 0 when COMMAND was exec'd, else the reason in e. */
static int read_setup(int fd, Error *e) {
        char buf[sizeof(e->text)];
        size_t n;

        n = read_all(fd, buf, sizeof(buf));
        if (n == 1 && buf[0] == 'R')
                return 0;
        if (n == 0)
                return -EIO;    /* died without a word; the caller finds out how */
        snprintf(e->text, sizeof(e->text), "%s", buf[0] == 'R' ? buf + 1 : buf);
        return -EINVAL;
}

/* The child died before COMMAND ran. Report why, once it is reaped. */
static int init_child_failed(Options *o, pid_t pid, int r, Error *e) {
        int code = wait_exit_code(pid);

        if (r == -EIO && code > 128)
                errorf(e, 0, "sandbox setup was killed by signal %d", code - 128);
        else if (r == -EIO)
                errorf(e, 0, "sandbox setup ended with code %d", code);
        status_line(o, "error %s", e->text);
        status_close(o);
        log_line(o, "%s", e->text);
        return code == EXIT_NOEXEC || code == EXIT_NOTFOUND ? code : EXIT_SETUP;
}

static int run_init(Options *o) {
        int go[2], setup[2], code, r;
        Error e = {};
        Cgroups cg;
        pid_t pid;

        build_env(o);
        if (init_namespaces(o, &e) < 0)
                return init_fail(o, &e);
        if (pipe2(go, O_CLOEXEC) < 0 || pipe2(setup, O_CLOEXEC) < 0) {
                errorf(&e, -errno, "pipe");
                return init_fail(o, &e);
        }
        signals_block(true);
        signals_install(SIGNALS_KILL);
        pid = fork();
        if (pid < 0) {
                errorf(&e, -errno, "fork");
                return init_fail(o, &e);
        }
        if (pid == 0) {
                close(go[1]);
                close(setup[0]);
                status_close(o);
                init_child(o, go[0], setup[1]);
        }
        signal_child = pid;
        signals_block(false);
        close(go[0]);
        close(setup[1]);

        cgroups_apply(o, pid, &cg);
        (void)write_all(go[1], "G", 1);
        close(go[1]);
        r = read_setup(setup[0], &e);
        close(setup[0]);
        if (r < 0) {
                code = init_child_failed(o, pid, r, &e);
                cgroups_remove(o, &cg);
                return code;
        }
        signal_mode = SIGNALS_FORWARD;
        status_line(o, "pid %d", (int)pid);
        status_close(o);
        code = wait_exit_code(pid);
        cgroups_remove(o, &cg);
        return code;
}

/* ---- enter ---------------------------------------------------------------------- */

static const struct {
        const char *name;
        int type;
} namespaces[] = {
        /* The user namespace first: it grants the rights for the others. */
        { "user", CLONE_NEWUSER },
        { "ipc", CLONE_NEWIPC },
        { "uts", CLONE_NEWUTS },
        { "net", CLONE_NEWNET },
        { "pid", CLONE_NEWPID },
        { "mnt", CLONE_NEWNS },
};

static bool is_our_ns(int fd, const char *name) {
        char path[64];
        struct stat a, b;

        snprintf(path, sizeof(path), "/proc/self/ns/%s", name);
        return fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

/* All fds first: once we are in its mount namespace, /proc is another one. */
static int open_sandbox(const Options *o, int *ret_root, int *fds, Error *e) {
        char path[64];

        for (size_t i = 0; i < ELEMENTSOF(namespaces); i++) {
                snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)o->pid, namespaces[i].name);
                fds[i] = open(path, O_RDONLY | O_CLOEXEC);
                if (fds[i] < 0 && errno == ENOENT && i == 0)
                        return errorf(e, 0, "pid %d: no such process", (int)o->pid);
                if (fds[i] < 0)
                        return errorf(e, -errno, "open %s", path);
                if (!is_our_ns(fds[i], namespaces[i].name))
                        continue;
                if (namespaces[i].type == CLONE_NEWPID)
                        return errorf(e, 0, "pid %d is not in a sandbox: it shares our PID namespace",
                                      (int)o->pid);
                /* Joining our own user namespace is an error; skip all of ours. */
                close(fds[i]);
                fds[i] = -1;
        }
        snprintf(path, sizeof(path), "/proc/%d/root", (int)o->pid);
        *ret_root = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (*ret_root < 0)
                return errorf(e, -errno, "open %s", path);
        return 0;
}

static int join_sandbox(const Options *o, Error *e) {
        int fds[ELEMENTSOF(namespaces)], root = -1, r;

        for (size_t i = 0; i < ELEMENTSOF(fds); i++)
                fds[i] = -1;
        r = open_sandbox(o, &root, fds, e);
        for (size_t i = 0; r == 0 && i < ELEMENTSOF(namespaces); i++)
                if (fds[i] >= 0 && setns(fds[i], namespaces[i].type) < 0)
                        r = errorf(e, -errno, "join the %s namespace of pid %d", namespaces[i].name,
                                   (int)o->pid);
        if (r == 0 && (fchdir(root) < 0 || chroot(".") < 0))
                r = errorf(e, -errno, "enter the root of pid %d", (int)o->pid);
        close_all(fds, ELEMENTSOF(fds));
        if (root >= 0)
                close(root);
        return r;
}

/* Did the parent die before our PR_SET_PDEATHSIG? Its end of the pipe tells. */
static bool parent_alive(int fd) {
        struct pollfd p = { .fd = fd, .events = POLLIN };

        return poll(&p, 1, 0) == 0;
}

_Noreturn static void enter_child(Options *o, int alive_fd) {
        const char *cwd = o->cwd && o->cwd[0] ? o->cwd : "/";
        int err;

        signals_reset();
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || !parent_alive(alive_fd))
                _exit(EXIT_SETUP);
        close(alive_fd);
        if (setsid() < 0) {
                log_line(o, "new session: %m");
                _exit(EXIT_SETUP);
        }
        if (o->tty && ioctl(0, TIOCSCTTY, 0) < 0) {
                log_line(o, "make fd 0 the controlling terminal: %m");
                _exit(EXIT_SETUP);
        }
        if (chdir(cwd) < 0) {
                log_line(o, "working directory %s: %m", cwd);
                _exit(EXIT_SETUP);
        }
        cloexec_stray_fds();
        environ = (char **)o->env;
        execvp(o->argv[0], o->argv);
        err = errno;
        if (err == ENOENT)
                fprintf(stderr, "cwsandbox-local-run: %s: command not found\n", o->argv[0]);
        else
                fprintf(stderr, "cwsandbox-local-run: %s: %s\n", o->argv[0], strerror(err));
        _exit(exec_code(err));
}

static int run_enter(Options *o) {
        int alive[2], code, r;
        Error e = {};
        pid_t pid;

        build_env(o);
        cgroups_join(o);
        r = join_sandbox(o, &e);
        if (r < 0) {
                log_line(o, "%s", e.text);
                return EXIT_SETUP;
        }
        /* Joining a user namespace changes our credentials: tie again. */
        r = tie_to_parent();
        if (r < 0) {
                log_line(o, "parent-death signal: %s", strerror(-r));
                return EXIT_SETUP;
        }
        if (pipe2(alive, O_CLOEXEC) < 0) {
                log_line(o, "pipe: %m");
                return EXIT_SETUP;
        }
        signals_block(true);
        signals_install(SIGNALS_KILL_GROUP);
        pid = fork();
        if (pid < 0) {
                log_line(o, "fork: %m");
                return EXIT_SETUP;
        }
        if (pid == 0) {
                close(alive[1]);
                enter_child(o, alive[0]);
        }
        signal_child = pid;
        signals_block(false);
        close(alive[0]);
        code = wait_exit_code(pid);
        close(alive[1]);
        return signal_got ? 128 + signal_got : code;
}

int main(int argc, char **argv) {
        Options o;
        int r;

        arg_parent = getppid();
        program_invocation_name = (char *)"cwsandbox-local-run";       /* for getopt's messages */
        r = parse_args(argc, argv, &o);
        if (r != 0) {
                options_free(&o);
                return r > 0 ? 0 : EXIT_USAGE;
        }
        r = tie_to_parent();
        if (r < 0) {
                log_line(&o, "%s", r == -ESRCH ? "our parent is gone" : strerror(-r));
                options_free(&o);
                return EXIT_SETUP;
        }
        /* Nothing the server leaked to us may reach a sandbox. */
        close_stray_fds(o.status_fd);
        r = o.mode == MODE_INIT ? run_init(&o) : run_enter(&o);
        /* By now our new children would land in the sandbox's PID namespace
         * (or in none, once it is gone). So nothing may run at exit: a
         * sanitizer's leak check, for one, clones a tracer that cannot see
         * us from there, and would wait for it forever. */
        (void)fflush(stdout);
        (void)fflush(stderr);
        _exit(r);
}
