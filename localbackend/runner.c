/*
 * cwsandbox-local-run: builds a sandbox or enters one.
 *
 * cwsandbox-local is a multithreaded gRPC server, and between fork and exec
 * a multithreaded process may only make async-signal-safe calls. So the
 * server uv_spawn()s this small single-threaded helper, which is free to
 * unshare, mount and fork before it execs the user's command.
 *
 *   cwsandbox-local-run init [OPTIONS] --status-fd N -- COMMAND [ARG...]
 *     New PID, mount, UTS and IPC namespaces (and network with --no-network).
 *     The outer process stays in the host namespaces; its child is PID 1 of
 *     the sandbox. The child builds the root (a tmpfs writable layer over a
 *     read-only base, joined by overlayfs), fresh /proc, /tmp and /dev,
 *     pivots into it and execs COMMAND.
 *
 *   cwsandbox-local-run enter --pid HOSTPID [OPTIONS] -- COMMAND [ARG...]
 *     Joins every namespace and the root of the sandbox whose PID 1 has host
 *     pid HOSTPID and runs COMMAND there.
 *
 * Status protocol of init: exactly one line on --status-fd, "pid N\n" (N is
 * PID 1 as the host sees it) once COMMAND has been exec'd, or
 * "error REASON\n"; then the fd is closed. The child reports to the outer
 * process through a close-on-exec pipe: "R" when the root is ready, then
 * either EOF (the exec succeeded) or an error text. Only the outer process
 * writes the status line, so there is always exactly one.
 *
 * Lifetime: both processes set PR_SET_PDEATHSIG(SIGKILL), so if the server
 * dies the outer process dies, and with it PID 1, and with PID 1 the whole
 * PID namespace. SIGTERM, SIGINT and SIGHUP to the outer process of init go to
 * PID 1; for enter they kill the command's whole process group. The outer
 * process exits with the command's code, or 128+N when signal N killed it;
 * 125 when setup failed, 126 not executable, 127 not found.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define EXIT_SETUP 125
#define EXIT_NOEXEC 126
#define EXIT_NOTFOUND 127
#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define MAX_LIST 1024

extern char **environ;

typedef struct Options {
        const char *id;
        const char *hostname;
        const char *base;
        const char *scratch;
        unsigned long long layer_size;
        const char *env[MAX_LIST + 2];
        size_t n_env;
        const char *cwd;
        const char *files[MAX_LIST];
        size_t n_files;
        bool no_network;
        unsigned long long memory;
        unsigned long long pids;
        long long nofile;
        int status_fd;
        pid_t pid;
        bool tty;
        char **argv;
} Options;

static volatile sig_atomic_t child_pid;
static volatile sig_atomic_t kill_group;
static volatile sig_atomic_t got_signal;

static void usage(FILE *f) {
        fputs("Usage: cwsandbox-local-run init [--id ID] [--hostname NAME] [--base DIR] --scratch DIR\n"
              "           [--layer-size BYTES] [--env K=V]... [--cwd DIR] [--file DEST=SRC]...\n"
              "           [--no-network] [--memory BYTES] [--pids N] [--nofile N]\n"
              "           --status-fd N -- COMMAND [ARG...]\n"
              "       cwsandbox-local-run enter --pid HOSTPID [--env K=V]... [--cwd DIR] [--tty]\n"
              "           -- COMMAND [ARG...]\n"
              "Builds an isolated sandbox and runs COMMAND as its PID 1 (init), or runs\n"
              "COMMAND inside a running sandbox (enter). Used by cwsandbox-local.\n", f);
}

static int fail(const Options *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(const Options *o, const char *fmt, ...) {
        va_list ap;

        fprintf(stderr, "cwsandbox-local-run: %s%s", o->id ? o->id : "", o->id ? ": " : "");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        return -1;
}

static int parse_ull(const char *s, unsigned long long *ret) {
        char *end;

        errno = 0;
        *ret = strtoull(s, &end, 10);
        if (errno || end == s || *end || *s == '-')
                return -1;
        return 0;
}

static int parse_options(int argc, char **argv, Options *o) {
        enum { O_ID = 256, O_HOSTNAME, O_BASE, O_SCRATCH, O_LAYER, O_ENV, O_CWD, O_FILE,
               O_NONET, O_MEMORY, O_PIDS, O_NOFILE, O_STATUS, O_PID, O_TTY };
        static const struct option longopts[] = {
                { "id", required_argument, NULL, O_ID },
                { "hostname", required_argument, NULL, O_HOSTNAME },
                { "base", required_argument, NULL, O_BASE },
                { "scratch", required_argument, NULL, O_SCRATCH },
                { "layer-size", required_argument, NULL, O_LAYER },
                { "env", required_argument, NULL, O_ENV },
                { "cwd", required_argument, NULL, O_CWD },
                { "file", required_argument, NULL, O_FILE },
                { "no-network", no_argument, NULL, O_NONET },
                { "memory", required_argument, NULL, O_MEMORY },
                { "pids", required_argument, NULL, O_PIDS },
                { "nofile", required_argument, NULL, O_NOFILE },
                { "status-fd", required_argument, NULL, O_STATUS },
                { "pid", required_argument, NULL, O_PID },
                { "tty", no_argument, NULL, O_TTY },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        unsigned long long v;
        int c;

        *o = (Options){ .base = "/", .layer_size = 1ULL << 30, .nofile = -1, .status_fd = -1 };
        while ((c = getopt_long(argc, argv, "+h", longopts, NULL)) >= 0) {
                switch (c) {
                case O_ID: o->id = optarg; break;
                case O_HOSTNAME: o->hostname = optarg; break;
                case O_BASE: o->base = optarg; break;
                case O_SCRATCH: o->scratch = optarg; break;
                case O_CWD: o->cwd = optarg; break;
                case O_NONET: o->no_network = true; break;
                case O_TTY: o->tty = true; break;
                case O_ENV:
                        if (!strchr(optarg, '=') || o->n_env >= MAX_LIST)
                                return fail(o, "bad or too many --env '%s'", optarg);
                        o->env[o->n_env++] = optarg;
                        break;
                case O_FILE:
                        if (!strchr(optarg, '=') || optarg[0] != '/' || o->n_files >= MAX_LIST)
                                return fail(o, "bad or too many --file '%s'", optarg);
                        o->files[o->n_files++] = optarg;
                        break;
                case O_LAYER: case O_MEMORY: case O_PIDS: case O_NOFILE: case O_STATUS: case O_PID:
                        if (parse_ull(optarg, &v) < 0)
                                return fail(o, "invalid number '%s'", optarg);
                        if (c == O_LAYER) o->layer_size = v;
                        else if (c == O_MEMORY) o->memory = v;
                        else if (c == O_PIDS) o->pids = v;
                        else if (c == O_NOFILE) o->nofile = (long long)v;
                        else if (c == O_STATUS) o->status_fd = (int)v;
                        else o->pid = (pid_t)v;
                        break;
                case 'h':
                        usage(stdout);
                        exit(0);
                default:
                        return -1;
                }
        }
        if (optind >= argc)
                return fail(o, "no COMMAND given");
        o->argv = argv + optind;
        return 0;
}

/* The command's environment: exactly --env, plus a default PATH. */
static void build_env(Options *o) {
        bool has_path = false;

        for (size_t i = 0; i < o->n_env; i++)
                if (strncmp(o->env[i], "PATH=", 5) == 0)
                        has_path = true;
        if (!has_path)
                o->env[o->n_env++] = DEFAULT_PATH;
        o->env[o->n_env] = NULL;
}

/* snprintf for paths: -1 instead of a silently truncated path. */
static int pathf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int pathf(char *buf, size_t n, const char *fmt, ...) {
        va_list ap;
        int k;

        va_start(ap, fmt);
        k = vsnprintf(buf, n, fmt, ap);
        va_end(ap);
        if (k < 0 || (size_t)k >= n) {
                errno = ENAMETOOLONG;
                return -1;
        }
        return 0;
}

static int write_all(int fd, const char *s, size_t n) {
        while (n > 0) {
                ssize_t k = write(fd, s, n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return -1;
                s += k;
                n -= (size_t)k;
        }
        return 0;
}

static int write_file(const char *path, const char *text) {
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        int r;

        if (fd < 0)
                return -1;
        r = write_all(fd, text, strlen(text));
        close(fd);
        return r;
}

static int mkdir_p(const char *path, mode_t mode) {
        char buf[4096];
        size_t n = strlen(path);

        if (n == 0 || n >= sizeof(buf))
                return -1;
        memcpy(buf, path, n + 1);
        for (char *p = buf + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = 0;
                if (mkdir(buf, mode) < 0 && errno != EEXIST)
                        return -1;
                *p = '/';
        }
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
                return -1;
        return 0;
}

static void forward_signal(int sig) {
        got_signal = sig;
        if (child_pid <= 0)
                return;
        if (kill_group)
                (void)kill(-child_pid, SIGKILL);
        else
                (void)kill(child_pid, sig);
}

static void install_forwarding(void) {
        struct sigaction sa = { .sa_handler = forward_signal };

        sigemptyset(&sa.sa_mask);
        (void)sigaction(SIGTERM, &sa, NULL);
        (void)sigaction(SIGINT, &sa, NULL);
        (void)sigaction(SIGHUP, &sa, NULL);
}

static int wait_exit_code(pid_t pid) {
        int status;

        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return EXIT_SETUP;
        if (WIFSIGNALED(status))
                return 128 + WTERMSIG(status);
        return WEXITSTATUS(status);
}

/* ---- cgroups: memory and task limits, where the kernel lets us ---------- */

static void cgroup_path(char *buf, size_t n, const char *root, const Options *o) {
        snprintf(buf, n, "%s/cwsandbox-local-%s-%d", root, o->id ? o->id : "sandbox", (int)getpid());
}

/* Returns true when the limit was applied. */
static bool cgroup_limit(const char *root, const char *file, unsigned long long value,
                         const Options *o, pid_t pid, char *ret_dir, size_t n) {
        char path[512], num[32];

        cgroup_path(ret_dir, n, root, o);
        if (mkdir(ret_dir, 0755) < 0 && errno != EEXIST)
                return false;
        snprintf(path, sizeof(path), "%s/%s", ret_dir, file);
        snprintf(num, sizeof(num), "%llu", value);
        if (write_file(path, num) < 0)
                goto undo;
        snprintf(path, sizeof(path), "%s/cgroup.procs", ret_dir);
        snprintf(num, sizeof(num), "%d", (int)pid);
        if (write_file(path, num) < 0)
                goto undo;
        return true;
undo:
        (void)rmdir(ret_dir);
        ret_dir[0] = 0;
        return false;
}

typedef struct Cgroups {
        char memory[512], pids[512];
} Cgroups;

static void cgroups_apply(const Options *o, pid_t pid, Cgroups *cg) {
        bool v2 = access("/sys/fs/cgroup/cgroup.subtree_control", F_OK) == 0;

        *cg = (Cgroups){};
        if (o->memory > 0 &&
            !cgroup_limit(v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory",
                          v2 ? "memory.max" : "memory.limit_in_bytes", o->memory, o, pid,
                          cg->memory, sizeof(cg->memory)))
                fail(o, "memory limit not applied: no writable memory cgroup");
        if (o->pids > 0 &&
            !cgroup_limit(v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/pids", "pids.max", o->pids, o,
                          pid, cg->pids, sizeof(cg->pids)))
                fail(o, "task limit not applied: no writable pids cgroup");
}

static void cgroups_remove(Cgroups *cg) {
        if (cg->memory[0])
                (void)rmdir(cg->memory);
        if (cg->pids[0] && strcmp(cg->pids, cg->memory) != 0)
                (void)rmdir(cg->pids);
}

/* ---- init: the child side, which becomes PID 1 ------------------------- */

static int mount_dev(const char *root) {
        static const char *const nodes[] = { "null", "zero", "full", "random", "urandom", "tty" };
        static const char *const links[][2] = {
                { "/proc/self/fd", "fd" }, { "/proc/self/fd/0", "stdin" },
                { "/proc/self/fd/1", "stdout" }, { "/proc/self/fd/2", "stderr" },
                { "pts/ptmx", "ptmx" },
        };
        char dev[4096], p[4200];
        int fd;

        if (pathf(dev, sizeof(dev), "%s/dev", root) < 0 || mkdir_p(dev, 0755) < 0 ||
            mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k") < 0)
                return -1;
        for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++) {
                char host[64];

                snprintf(p, sizeof(p), "%s/%s", dev, nodes[i]);
                snprintf(host, sizeof(host), "/dev/%s", nodes[i]);
                fd = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0666);
                if (fd < 0)
                        return -1;
                close(fd);
                if (mount(host, p, NULL, MS_BIND, NULL) < 0)
                        return -1;
        }
        for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
                snprintf(p, sizeof(p), "%s/%s", dev, links[i][1]);
                if (symlink(links[i][0], p) < 0)
                        return -1;
        }
        snprintf(p, sizeof(p), "%s/pts", dev);
        if (mkdir(p, 0755) < 0 ||
            mount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") < 0)
                return -1;
        snprintf(p, sizeof(p), "%s/shm", dev);
        if (mkdir(p, 01777) < 0 || mount("shm", p, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0)
                return -1;
        return 0;
}

static int mount_root(const Options *o, char *root, size_t n) {
        char layer[4096], opts[8192 + 64], p[4200];

        snprintf(layer, sizeof(layer), "%s/layer", o->scratch);
        snprintf(root, n, "%s/root", o->scratch);
        snprintf(opts, sizeof(opts), "size=%llu,mode=755", o->layer_size);
        if (mkdir_p(layer, 0700) < 0 || mkdir_p(root, 0755) < 0 ||
            mount("cwsandbox-layer", layer, "tmpfs", 0, opts) < 0)
                return -1;
        snprintf(p, sizeof(p), "%s/upper", layer);
        if (mkdir(p, 0755) < 0)
                return -1;
        snprintf(p, sizeof(p), "%s/work", layer);
        if (mkdir(p, 0755) < 0)
                return -1;
        snprintf(opts, sizeof(opts), "lowerdir=%s,upperdir=%s/upper,workdir=%s/work", o->base, layer, layer);
        if (mount("cwsandbox-root", root, "overlay", 0, opts) < 0)
                return -1;

        snprintf(p, sizeof(p), "%s/proc", root);
        if (mkdir_p(p, 0555) < 0 || mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
                return -1;
        snprintf(p, sizeof(p), "%s/tmp", root);
        if (mkdir_p(p, 01777) < 0 || mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0)
                return -1;
        /* sysfs is optional: read-only where the kernel allows it. */
        snprintf(p, sizeof(p), "%s/sys", root);
        if (mkdir_p(p, 0555) == 0)
                (void)mount("sysfs", p, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
        return mount_dev(root);
}

static int copy_file(const char *src, const char *dst) {
        char buf[65536];
        int in, out, r = 0;
        ssize_t k;

        in = open(src, O_RDONLY | O_CLOEXEC);
        if (in < 0)
                return -1;
        out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (out < 0) {
                close(in);
                return -1;
        }
        while ((k = read(in, buf, sizeof(buf))) != 0) {
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0 || write_all(out, buf, (size_t)k) < 0) {
                        r = -1;
                        break;
                }
        }
        close(in);
        if (close(out) < 0)
                r = -1;
        return r;
}

/* Mounted files land in the writable layer before the pivot. */
static int place_files(const Options *o, const char *root) {
        for (size_t i = 0; i < o->n_files; i++) {
                const char *eq = strchr(o->files[i], '=');
                char dst[4096], dir[4096];
                char *slash;

                if (pathf(dst, sizeof(dst), "%s%.*s", root, (int)(eq - o->files[i]), o->files[i]) < 0)
                        return -1;
                if (strstr(dst, "/../") || strstr(dst, "/..")) {
                        errno = EINVAL;
                        return -1;
                }
                memcpy(dir, dst, sizeof(dir));
                slash = strrchr(dir, '/');
                *slash = 0;
                if (mkdir_p(dir, 0755) < 0 || copy_file(eq + 1, dst) < 0)
                        return -1;
        }
        return 0;
}

static int pivot_into(const char *root) {
        if (chdir(root) < 0)
                return -1;
        if (syscall(SYS_pivot_root, ".", ".") < 0)
                return -1;
        /* The old root is stacked under the new one: detach it. */
        if (umount2(".", MNT_DETACH) < 0)
                return -1;
        return chdir("/");
}

static void report(int fd, const char *what) {
        int e = errno;
        char msg[512];

        snprintf(msg, sizeof(msg), "%s: %s", what, strerror(e));
        (void)write_all(fd, msg, strlen(msg));
}

static int exec_code(int e) {
        return e == ENOENT || e == ENOTDIR ? EXIT_NOTFOUND : EXIT_NOEXEC;
}

_Noreturn static void init_child(Options *o, int sync_fd) {
        char root[4096];
        const char *hostname = o->hostname;
        char short_id[13];

        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
                report(sync_fd, "make mounts private");
                _exit(EXIT_SETUP);
        }
        if (mount_root(o, root, sizeof(root)) < 0) {
                report(sync_fd, "build root");
                _exit(EXIT_SETUP);
        }
        if (place_files(o, root) < 0) {
                report(sync_fd, "place mounted files");
                _exit(EXIT_SETUP);
        }
        if (!hostname) {
                snprintf(short_id, sizeof(short_id), "%s", o->id ? o->id : "sandbox");
                hostname = short_id;
        }
        if (sethostname(hostname, strlen(hostname)) < 0) {
                report(sync_fd, "set hostname");
                _exit(EXIT_SETUP);
        }
        if (pivot_into(root) < 0) {
                report(sync_fd, "pivot into root");
                _exit(EXIT_SETUP);
        }
        if (o->cwd && (mkdir_p(o->cwd, 0755) < 0 || chdir(o->cwd) < 0)) {
                report(sync_fd, "enter working directory");
                _exit(EXIT_SETUP);
        }
        if (o->nofile >= 0) {
                struct rlimit rl = { (rlim_t)o->nofile, (rlim_t)o->nofile };
                if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
                        report(sync_fd, "set open-file limit");
                        _exit(EXIT_SETUP);
                }
        }
        if (write_all(sync_fd, "R", 1) < 0)
                _exit(EXIT_SETUP);

        (void)syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */);
        environ = (char **)o->env;
        execvp(o->argv[0], o->argv);
        {
                int e = errno;
                char msg[512];

                snprintf(msg, sizeof(msg), "exec %s: %s", o->argv[0], strerror(e));
                (void)write_all(sync_fd, msg, strlen(msg));
                _exit(exec_code(e));
        }
}

/* ---- init: the outer side ------------------------------------------------ */

static int setup_userns(const Options *o) {
        char map[64];
        uid_t uid = geteuid();
        gid_t gid = getegid();

        if (unshare(CLONE_NEWUSER) < 0)
                return fail(o, "new user namespace: %m");
        (void)write_file("/proc/self/setgroups", "deny");
        snprintf(map, sizeof(map), "0 %u 1", (unsigned)uid);
        if (write_file("/proc/self/uid_map", map) < 0)
                return fail(o, "uid map: %m");
        snprintf(map, sizeof(map), "0 %u 1", (unsigned)gid);
        if (write_file("/proc/self/gid_map", map) < 0)
                return fail(o, "gid map: %m");
        return 0;
}

static void status_line(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void status_line(int fd, const char *fmt, ...) {
        char line[1024];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
        va_end(ap);
        if (n < 0)
                return;
        if ((size_t)n > sizeof(line) - 2)
                n = sizeof(line) - 2;
        for (int i = 0; i < n; i++)
                if (line[i] == '\n')
                        line[i] = ' ';
        line[n++] = '\n';
        (void)write_all(fd, line, (size_t)n);
}

/* Everything the child wrote before its exec (or exit). */
static size_t read_sync(int fd, char *buf, size_t n) {
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

static int run_init(Options *o) {
        int flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID;
        int sync[2], code;
        char msg[1024];
        Cgroups cg;
        pid_t pid;

        if (!o->scratch || o->status_fd < 0 || fcntl(o->status_fd, F_GETFD) < 0) {
                fail(o, "init needs --scratch and a valid --status-fd");
                return 2;
        }
        (void)fcntl(o->status_fd, F_SETFD, FD_CLOEXEC);
        if (o->no_network)
                flags |= CLONE_NEWNET;
        build_env(o);

        if ((geteuid() != 0 && setup_userns(o) < 0) || unshare(flags) < 0) {
                status_line(o->status_fd, "error new namespaces: %s", strerror(errno));
                fail(o, "new namespaces: %m");
                return EXIT_SETUP;
        }
        if (pipe2(sync, O_CLOEXEC) < 0) {
                status_line(o->status_fd, "error pipe: %s", strerror(errno));
                return EXIT_SETUP;
        }
        install_forwarding();
        pid = fork();
        if (pid < 0) {
                status_line(o->status_fd, "error fork: %s", strerror(errno));
                return EXIT_SETUP;
        }
        if (pid == 0) {
                close(sync[0]);
                close(o->status_fd);
                init_child(o, sync[1]);
        }
        child_pid = pid;
        close(sync[1]);
        cgroups_apply(o, pid, &cg);

        read_sync(sync[0], msg, sizeof(msg));
        close(sync[0]);
        if (msg[0] == 'R' && msg[1] == 0) {
                status_line(o->status_fd, "pid %d", (int)pid);
        } else {
                const char *why = msg[0] == 'R' ? msg + 1 : (msg[0] ? msg : "setup failed");

                status_line(o->status_fd, "error %s", why);
                fail(o, "%s", why);
        }
        close(o->status_fd);

        code = wait_exit_code(pid);
        cgroups_remove(&cg);
        return code;
}

/* ---- enter ----------------------------------------------------------------- */

static const char *const ns_names[] = { "user", "ipc", "uts", "net", "pid", "mnt" };
#define N_NS (sizeof(ns_names) / sizeof(ns_names[0]))

static bool same_ns(const char *name, pid_t pid) {
        char path[64];
        struct stat a, b;

        snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)pid, name);
        if (stat(path, &a) < 0)
                return false;
        snprintf(path, sizeof(path), "/proc/self/ns/%s", name);
        return stat(path, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

/* Open every namespace and the root first: after the first setns, /proc/PID
 * may no longer be reachable the same way. */
static int join_sandbox(const Options *o) {
        int fds[N_NS], root;
        char path[64];

        snprintf(path, sizeof(path), "/proc/%d/root", (int)o->pid);
        root = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (root < 0)
                return fail(o, "sandbox pid %d: %m", (int)o->pid);
        for (size_t i = 0; i < N_NS; i++) {
                fds[i] = -1;
                if (same_ns(ns_names[i], o->pid))
                        continue;
                snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)o->pid, ns_names[i]);
                fds[i] = open(path, O_RDONLY | O_CLOEXEC);
                if (fds[i] < 0)
                        return fail(o, "open %s: %m", path);
        }
        for (size_t i = 0; i < N_NS; i++) {
                if (fds[i] < 0)
                        continue;
                if (setns(fds[i], 0) < 0)
                        return fail(o, "join %s namespace of pid %d: %m", ns_names[i], (int)o->pid);
                close(fds[i]);
        }
        if (fchdir(root) < 0 || chroot(".") < 0)
                return fail(o, "enter root of pid %d: %m", (int)o->pid);
        close(root);
        return 0;
}

_Noreturn static void enter_child(Options *o) {
        int e;

        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        (void)setsid();
        if (o->tty && ioctl(0, TIOCSCTTY, 0) < 0) {
                fprintf(stderr, "cwsandbox-local-run: controlling terminal: %m\n");
                _exit(EXIT_SETUP);
        }
        if (chdir(o->cwd ? o->cwd : "/") < 0) {
                fprintf(stderr, "cwsandbox-local-run: %s: %m\n", o->cwd);
                _exit(EXIT_SETUP);
        }
        (void)syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */);
        environ = (char **)o->env;
        execvp(o->argv[0], o->argv);
        e = errno;
        if (e == ENOENT)
                fprintf(stderr, "cwsandbox-local-run: %s: command not found\n", o->argv[0]);
        else
                fprintf(stderr, "cwsandbox-local-run: %s: %s\n", o->argv[0], strerror(e));
        _exit(exec_code(e));
}

static int run_enter(Options *o) {
        pid_t pid;
        int code;

        if (o->pid <= 0) {
                fail(o, "enter needs --pid");
                return 2;
        }
        build_env(o);
        if (join_sandbox(o) < 0)
                return EXIT_SETUP;
        kill_group = 1;
        install_forwarding();
        pid = fork();
        if (pid < 0) {
                fail(o, "fork: %m");
                return EXIT_SETUP;
        }
        if (pid == 0)
                enter_child(o);
        child_pid = pid;
        /* A signal that came before child_pid was set has no one to kill yet. */
        if (got_signal)
                (void)kill(-pid, SIGKILL);
        code = wait_exit_code(pid);
        return got_signal ? 128 + got_signal : code;
}

int main(int argc, char **argv) {
        Options o;

        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (argc < 2) {
                usage(stderr);
                return 2;
        }
        if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
                usage(stdout);
                return 0;
        }
        if (strcmp(argv[1], "init") != 0 && strcmp(argv[1], "enter") != 0) {
                fprintf(stderr, "cwsandbox-local-run: unknown mode '%s' (init or enter)\n", argv[1]);
                return 2;
        }
        if (parse_options(argc - 1, argv + 1, &o) < 0) {
                usage(stderr);
                return 2;
        }
        return strcmp(argv[1], "init") == 0 ? run_init(&o) : run_enter(&o);
}
