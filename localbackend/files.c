/*
 * ReadFile and WriteFile: whole-file I/O inside a running sandbox.
 *
 * Confinement: every path is resolved with openat2(RESOLVE_IN_ROOT |
 * RESOLVE_NO_MAGICLINKS) relative to the sandbox's root directory, opened
 * through /proc/<init pid>/root. The kernel then treats that directory as "/"
 * for absolute paths, absolute symlinks and "..", exactly as a chroot would,
 * and refuses /proc magic links (which could point anywhere, including our
 * own root). Any other *at() call only ever gets a single name below a
 * directory resolved that way, and never follows a symlink in that name, so
 * a sandbox that swaps a directory for a symlink mid-way cannot steer us out.
 *
 * The sandbox root is opened on the loop thread (a cheap proc lookup); all
 * file I/O runs on the libuv thread pool. A FileJob owns everything the pool
 * touches; it is freed only in the after-work callback, which answers the
 * call (the answer is dropped if the client has gone). WriteFile's content
 * stays in the request, which the call keeps until the answer.
 *
 * Files and directories we create get the owner of the sandbox's PID 1, so
 * the sandbox can use them as if it had written them itself.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "pbgrpc.h"
#include "sandbox.h"
#include "server.h"

/* Largest file ReadFile returns and WriteFile accepts in one message. */
#define FILE_SIZE_MAX (32 * 1024 * 1024)

/* openat2 says EAGAIN when a rename raced with RESOLVE_IN_ROOT's ".."
 * checks; trying again is the documented answer. */
#define RESOLVE_TRIES 16

#define TEMP_TRIES 16

typedef enum FileOp {
        FILE_OP_READ,
        FILE_OP_WRITE,
} FileOp;

typedef struct FileJob {
        uv_work_t work;
        UnaryCall *call;
        FileOp op;
        char sandbox_id[sizeof(((Sandbox *)0)->id)];
        int root_fd;                    /* the sandbox's "/", open for the job */
        uid_t uid;                      /* owner for what we create */
        gid_t gid;
        char *path;                     /* as the client gave it, for messages */
        char *abs_path;                 /* absolute inside the sandbox */

        const uint8_t *content;         /* WriteFile: in the request */
        size_t n_content;

        /* Results, written on the pool. */
        grpc_status_code code;
        char *message;                  /* when code != OK */
        uint8_t *data;                  /* ReadFile */
        size_t n_data;
} FileJob;

static FileJob *file_job_free(FileJob *j) {
        if (!j)
                return NULL;
        if (j->root_fd >= 0)
                (void)close(j->root_fd);
        free(j->path);
        free(j->abs_path);
        free(j->message);
        free(j->data);
        free(j);
        return NULL;
}

static void job_fail(FileJob *j, grpc_status_code code, const char *fmt, ...) _printf_(3, 4);
static void job_fail(FileJob *j, grpc_status_code code, const char *fmt, ...) {
        va_list ap;

        j->code = code;
        free(j->message);
        va_start(ap, fmt);
        if (vasprintf(&j->message, fmt, ap) < 0)
                j->message = NULL;
        va_end(ap);
}

/* Map a failed file operation to a status the client can act on. */
static void job_fail_errno(FileJob *j, int err, const char *what) {
        char buf[128];
        const char *p = j->path;

        switch (err) {
        case -ENOENT:
                job_fail(j, GRPC_STATUS_NOT_FOUND, "no such file %s", p);
                break;
        case -EACCES:
        case -EPERM:
                job_fail(j, GRPC_STATUS_PERMISSION_DENIED, "permission denied: %s", p);
                break;
        case -EISDIR:
                job_fail(j, GRPC_STATUS_FAILED_PRECONDITION, "%s is a directory", p);
                break;
        case -ENOTDIR:
                job_fail(j, GRPC_STATUS_FAILED_PRECONDITION, "a parent of %s is not a directory", p);
                break;
        case -ELOOP:
                job_fail(j, GRPC_STATUS_FAILED_PRECONDITION,
                         "too many symbolic links, or a /proc magic link, in %s", p);
                break;
        case -ENAMETOOLONG:
                job_fail(j, GRPC_STATUS_INVALID_ARGUMENT, "file name too long: %s", p);
                break;
        case -EROFS:
                job_fail(j, GRPC_STATUS_FAILED_PRECONDITION, "%s is on a read-only file system", p);
                break;
        case -ETXTBSY:
                job_fail(j, GRPC_STATUS_FAILED_PRECONDITION, "%s is busy", p);
                break;
        case -ENOSPC:
        case -EDQUOT:
        case -EFBIG:
        case -ENOMEM:
                job_fail(j, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s %s: %s", what, p,
                         strerror_r(-err, buf, sizeof(buf)));
                break;
        default:
                job_fail(j, GRPC_STATUS_INTERNAL, "%s %s: %s", what, p,
                         strerror_r(-err, buf, sizeof(buf)));
                break;
        }
}

/**
 * resolve() - open @path inside the sandbox root @root_fd with @flags (no
 * O_CREAT). Returns the fd or a negative errno.
 */
static int resolve(int root_fd, const char *path, int flags) {
        struct open_how how = {
                .flags = (uint64_t)(flags | O_CLOEXEC),
                .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        };

        for (int i = 0; i < RESOLVE_TRIES; i++) {
                long fd = syscall(SYS_openat2, root_fd, path, &how, sizeof(how));

                if (fd >= 0)
                        return (int)fd;
                if (errno != EAGAIN && errno != EINTR)
                        return -errno;
        }
        return -EAGAIN;
}

/* Reopen an O_PATH fd for reading. The kernel checks permissions now, on the
 * inode itself, so nothing is resolved by name a second time. */
static int reopen_read(int path_fd) {
        char p[64];
        int fd;

        (void)snprintf(p, sizeof(p), "/proc/self/fd/%d", path_fd);
        fd = open(p, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        return fd < 0 ? -errno : fd;
}

static int read_all(int fd, size_t size_hint, uint8_t **ret, size_t *ret_n) {
        _cleanup_free_ uint8_t *buf = NULL;
        size_t n = 0, alloc = 0;

        /* Read one byte past the limit to notice a file larger than it said
         * (procfs files say 0) or one that grew. */
        for (;;) {
                ssize_t r;

                if (n == alloc) {
                        size_t a = alloc ? alloc * 2 : MAX(size_hint + 1, (size_t)4096);
                        uint8_t *p;

                        if (alloc >= (size_t)FILE_SIZE_MAX + 1)
                                break;
                        a = MIN(a, (size_t)FILE_SIZE_MAX + 1);
                        p = realloc(buf, a);
                        if (!p)
                                return -ENOMEM;
                        buf = p;
                        alloc = a;
                }
                r = read(fd, buf + n, alloc - n);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (r == 0)
                        break;
                n += (size_t)r;
        }
        *ret = TAKE_PTR(buf);
        *ret_n = n;
        return 0;
}

static void read_work(FileJob *j) {
        _cleanup_close_ int fd = -1, rfd = -1;
        struct stat st;
        int r;

        fd = resolve(j->root_fd, j->abs_path, O_PATH);
        if (fd < 0) {
                job_fail_errno(j, fd, "cannot open");
                return;
        }
        if (fstat(fd, &st) < 0) {
                job_fail_errno(j, -errno, "cannot stat");
                return;
        }
        if (S_ISDIR(st.st_mode)) {
                job_fail(j, GRPC_STATUS_FAILED_PRECONDITION, "%s is a directory", j->path);
                return;
        }
        /* Opening a fifo or a device could block or have side effects. */
        if (!S_ISREG(st.st_mode)) {
                job_fail(j, GRPC_STATUS_FAILED_PRECONDITION, "%s is not a regular file", j->path);
                return;
        }
        if (st.st_size > FILE_SIZE_MAX) {
                job_fail(j, GRPC_STATUS_RESOURCE_EXHAUSTED,
                         "file %s is %" PRIi64 " bytes, larger than max %d bytes",
                         j->path, (int64_t)st.st_size, FILE_SIZE_MAX);
                return;
        }

        rfd = reopen_read(fd);
        if (rfd < 0) {
                job_fail_errno(j, rfd, "cannot open");
                return;
        }
        r = read_all(rfd, (size_t)st.st_size, &j->data, &j->n_data);
        if (r < 0) {
                job_fail_errno(j, r, "cannot read");
                return;
        }
        if (j->n_data > FILE_SIZE_MAX) {
                job_fail(j, GRPC_STATUS_RESOURCE_EXHAUSTED,
                         "file %s is more than %d bytes, larger than max %d bytes",
                         j->path, FILE_SIZE_MAX, FILE_SIZE_MAX);
                return;
        }
}

/* chown a file we just made, through its fd (no name lookup). */
static int chown_fd(const FileJob *j, int fd) {
        if (j->uid == geteuid() && j->gid == getegid())
                return 0;
        if (fchownat(fd, "", j->uid, j->gid, AT_EMPTY_PATH) < 0)
                return -errno;
        return 0;
}

/* chmod through an O_PATH fd: fchmod() refuses those, the proc path does not. */
static int chmod_path_fd(int fd, mode_t mode) {
        char p[64];

        (void)snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
        return chmod(p, mode) < 0 ? -errno : 0;
}

/**
 * open_dir_p() - the directory @dir (absolute, inside the sandbox) as an
 * O_PATH fd, creating what is missing. Each component is created with
 * mkdirat() on the fd of its parent, which was itself resolved from the
 * sandbox root, so symlinks and ".." along the way stay confined.
 */
static int open_dir_p(FileJob *j, char *dir) {
        _cleanup_close_ int cur = -1;
        char *p = dir;
        int fd, r;

        fd = resolve(j->root_fd, dir, O_PATH | O_DIRECTORY);
        if (fd != -ENOENT)
                return fd;

        cur = resolve(j->root_fd, "/", O_PATH | O_DIRECTORY);
        if (cur < 0)
                return cur;

        while (*p) {
                char *name, saved;

                while (*p == '/')
                        p++;
                if (!*p)
                        break;
                name = p;
                while (*p && *p != '/')
                        p++;
                saved = *p;
                *p = '\0';

                fd = resolve(j->root_fd, dir, O_PATH | O_DIRECTORY);
                if (fd == -ENOENT) {
                        bool made = mkdirat(cur, name, 0755) >= 0;

                        if (!made && errno != EEXIST) {
                                r = -errno;
                                *p = saved;
                                return r;
                        }
                        fd = resolve(j->root_fd, dir, O_PATH | O_DIRECTORY);
                        if (fd >= 0 && made) {
                                /* Exact mode whatever our umask; the owner of
                                 * the sandbox. Failures here leave a usable
                                 * directory, so they are not fatal. */
                                (void)chmod_path_fd(fd, 0755);
                                (void)chown_fd(j, fd);
                        }
                }
                *p = saved;
                if (fd < 0)
                        return fd;
                (void)close(cur);
                cur = fd;
        }
        return TAKE_FD(cur);
}

static int open_temp(int dir_fd, char name[static 64]) {
        static unsigned long counter;

        for (int i = 0; i < TEMP_TRIES; i++) {
                uint64_t rnd;
                int fd;

                if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != sizeof(rnd))
                        rnd = ((uint64_t)getpid() << 32) ^ __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
                (void)snprintf(name, 64, ".cwsandbox-write-%016" PRIx64, rnd);
                fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0644);
                if (fd >= 0)
                        return fd;
                if (errno != EEXIST)
                        return -errno;
        }
        return -EEXIST;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
        while (n > 0) {
                ssize_t r = write(fd, p, n);

                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += r;
                n -= (size_t)r;
        }
        return 0;
}

/* Write the content to a new temp file in @dir_fd and rename it to @name. */
static int replace_file(FileJob *j, int dir_fd, const char *name) {
        _cleanup_close_ int fd = -1;
        char temp[64];
        int r;

        fd = open_temp(dir_fd, temp);
        if (fd < 0)
                return fd;

        r = write_all(fd, j->content, j->n_content);
        if (r >= 0 && fchmod(fd, 0644) < 0)
                r = -errno;
        if (r >= 0)
                r = chown_fd(j, fd);
        if (r >= 0 && close(TAKE_FD(fd)) < 0)
                r = -errno;
        if (r >= 0 && renameat(dir_fd, temp, dir_fd, name) < 0)
                r = -errno;
        if (r < 0)
                (void)unlinkat(dir_fd, temp, 0);
        return r;
}

static void write_work(FileJob *j) {
        _cleanup_close_ int dir_fd = -1, fd = -1;
        _cleanup_free_ char *dir = NULL;
        const char *name;
        char *slash;
        struct stat st;
        int r;

        dir = strdup(j->abs_path);
        if (!dir) {
                job_fail_errno(j, -ENOMEM, "cannot write");
                return;
        }
        slash = strrchr(dir, '/');      /* abs_path starts with '/' */
        name = slash + 1;
        /* "dir/", "." and ".." name a directory, never a file to replace. */
        if (!*name || streq(name, ".") || streq(name, "..")) {
                job_fail(j, GRPC_STATUS_FAILED_PRECONDITION, "%s is a directory", j->path);
                return;
        }
        *slash = '\0';

        /* What the path resolves to now, symlinks followed (confined): a
         * directory there is an error; anything else is replaced. */
        fd = resolve(j->root_fd, j->abs_path, O_PATH);
        if (fd >= 0 && fstat(fd, &st) >= 0 && S_ISDIR(st.st_mode)) {
                job_fail(j, GRPC_STATUS_FAILED_PRECONDITION, "%s is a directory", j->path);
                return;
        }

        dir_fd = open_dir_p(j, *dir ? dir : (char *)"/");
        if (dir_fd < 0) {
                job_fail_errno(j, dir_fd, "cannot create the directory of");
                return;
        }

        r = replace_file(j, dir_fd, name);
        if (r < 0) {
                job_fail_errno(j, r, "cannot write");
                return;
        }
}

static void file_work(uv_work_t *w) {
        FileJob *j = container_of(w, FileJob, work);

        if (j->op == FILE_OP_READ)
                read_work(j);
        else
                write_work(j);

        /* The sandbox's root is held only while the job runs. */
        (void)close(j->root_fd);
        j->root_fd = -1;
}

static void file_after_work(uv_work_t *w, int status) {
        FileJob *j = container_of(w, FileJob, work);
        const char *op = j->op == FILE_OP_READ ? "read" : "write";

        if (status == UV_ECANCELED)
                job_fail(j, GRPC_STATUS_CANCELLED, "%s of %s cancelled", op, j->path);

        log_full(LOG_LEVEL_DEBUG, NULL, j->sandbox_id, "%s file %s: %zu bytes, %s%s%s",
                 op, j->path, j->op == FILE_OP_READ ? j->n_data : j->n_content,
                 grpc_status_name(j->code), j->message ? ": " : "", j->message ?: "");

        if (j->code != GRPC_STATUS_OK)
                unary_call_fail(j->call, j->code, "%s", j->message ?: "file operation failed");
        else if (j->op == FILE_OP_READ) {
                Coreweave__Sandbox__V1__ReadFileResponse resp = COREWEAVE__SANDBOX__V1__READ_FILE_RESPONSE__INIT;

                resp.content.data = j->data;
                resp.content.len = j->n_data;
                unary_call_reply(j->call, &resp.base);
        } else {
                Coreweave__Sandbox__V1__WriteFileResponse resp = COREWEAVE__SANDBOX__V1__WRITE_FILE_RESPONSE__INIT;

                unary_call_reply(j->call, &resp.base);
        }
        file_job_free(j);
}

static void file_job_cancel(UnaryCall *c, void *userdata) {
        FileJob *j = userdata;

        /* Only a job still waiting for a thread can be dropped; a running one
         * finishes and its answer goes nowhere. */
        (void)uv_cancel((uv_req_t *)&j->work);
}

/* "/proc/<pid>" for the owner, "/proc/<pid>/root" as the job's root. */
static int open_sandbox_root(const Sandbox *s, FileJob *j) {
        char p[64];
        struct stat st;
        int fd;

        (void)snprintf(p, sizeof(p), "/proc/%d", (int)s->init_pid);
        if (stat(p, &st) < 0)
                return -errno;
        (void)snprintf(p, sizeof(p), "/proc/%d/root", (int)s->init_pid);
        fd = open(p, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        j->root_fd = fd;
        j->uid = st.st_uid;
        j->gid = st.st_gid;
        return 0;
}

static char *absolute_path(const Sandbox *s, const char *path) {
        const char *base = s->working_dir && *s->working_dir ? s->working_dir : "/";
        char *r;

        if (path[0] == '/')
                return strdup(path);
        if (asprintf(&r, "%s%s/%s", base[0] == '/' ? "" : "/", base, path) < 0)
                return NULL;
        return r;
}

/**
 * file_job_start() - validate, open the sandbox root and queue @j's work.
 * On failure the call has been answered and @j freed.
 */
static void file_job_start(Backend *b, UnaryCall *c, FileJob *j, const char *sandbox_id, const char *path) {
        const Sandbox *s;
        char *abs;
        int r;

        j->call = c;
        j->root_fd = -1;
        j->code = GRPC_STATUS_OK;

        if (!sandbox_id || !*sandbox_id) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "sandbox_id is required");
                goto fail;
        }
        s = sandbox_find(b, sandbox_id);
        if (!s) {
                unary_call_fail(c, GRPC_STATUS_NOT_FOUND, "sandbox %s not found", sandbox_id);
                goto fail;
        }
        if (!sandbox_is_running(s) || s->init_pid <= 0) {
                unary_call_fail(c, GRPC_STATUS_FAILED_PRECONDITION, "sandbox %s is not running", s->id);
                goto fail;
        }
        if (!path || !*path) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "path is required");
                goto fail;
        }
        if (strlen(path) >= PATH_MAX) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "path is longer than %d bytes", PATH_MAX - 1);
                goto fail;
        }
        (void)snprintf(j->sandbox_id, sizeof(j->sandbox_id), "%s", s->id);

        j->path = strdup(path);
        abs = absolute_path(s, path);
        if (!j->path || !abs) {
                free(abs);
                unary_call_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                goto fail;
        }
        /* "a/" under working dir "/w" is "/w/a/": a trailing slash stays. */
        j->abs_path = abs;

        r = open_sandbox_root(s, j);
        if (r == -ENOENT || r == -ESRCH) {
                unary_call_fail(c, GRPC_STATUS_FAILED_PRECONDITION, "sandbox %s is not running", s->id);
                goto fail;
        }
        if (r < 0) {
                log_full(LOG_LEVEL_WARNING, NULL, s->id, "cannot open the root of pid %d: %s",
                         (int)s->init_pid, strerror(-r));
                unary_call_fail(c, GRPC_STATUS_INTERNAL, "cannot open the root of sandbox %s", s->id);
                goto fail;
        }

        r = uv_queue_work(b->loop, &j->work, file_work, file_after_work);
        if (r < 0) {
                unary_call_fail(c, GRPC_STATUS_INTERNAL, "cannot queue file work: %s", uv_strerror(r));
                goto fail;
        }
        unary_call_on_cancel(c, file_job_cancel, j);
        return;

fail:
        file_job_free(j);
}

static FileJob *file_job_new(FileOp op) {
        FileJob *j = calloc(1, sizeof(*j));

        if (j) {
                j->op = op;
                j->root_fd = -1;
        }
        return j;
}

void rpc_read_file(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__ReadFileRequest *req) {
        FileJob *j = file_job_new(FILE_OP_READ);

        if (!j) {
                unary_call_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
        }
        file_job_start(b, c, j, req->sandbox_id, req->path);
}

void rpc_write_file(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__WriteFileRequest *req) {
        FileJob *j;

        /* The message says "message larger than max" like gRPC's own limit,
         * which is what clients look for before falling back to streaming. */
        if (req->content.len > FILE_SIZE_MAX) {
                unary_call_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED,
                                "content for %s is %zu bytes: message larger than max (%zu vs. %d)",
                                req->path, req->content.len, req->content.len, FILE_SIZE_MAX);
                return;
        }

        j = file_job_new(FILE_OP_WRITE);
        if (!j) {
                unary_call_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
        }
        j->content = req->content.data;
        j->n_content = req->content.len;
        file_job_start(b, c, j, req->sandbox_id, req->path);
}
