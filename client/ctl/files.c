/*
 * cwsandboxctl cp: one file into or out of a sandbox. Data goes through file
 * descriptors, so a file of any size streams without being held twice; "-"
 * is stdin or stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl.h"

static const char cp_help[] =
        "Usage: cwsandboxctl cp SRC DST\n"
        "\n"
        "Copy one file between this machine and a sandbox. Exactly one of SRC and DST is\n"
        "ID:PATH, a sandbox and an absolute path in it; the other is a local path, or \"-\"\n"
        "for stdin (SRC) or stdout (DST). A local DST that is a directory gets the file's\n"
        "name; a remote PATH ending in '/' gets the local file's name. A local path with a\n"
        "':' before any '/' can be written ./NAME.\n"
        "\n"
        "Prints nothing on success, whatever -o says.\n";

/* "ID:PATH" -> id, path; a local path is anything else (a '/' before the ':' included). */
static bool remote_split(const char *arg, char **ret_id, const char **ret_path) {
        const char *colon = strchr(arg, ':');
        const char *slash = strchr(arg, '/');

        if (!colon || colon == arg || (slash && slash < colon))
                return false;
        *ret_id = strndup(arg, (size_t)(colon - arg));
        if (!*ret_id)
                abort();
        *ret_path = colon + 1;
        return true;
}

static char *path_join(const char *dir, const char *file_path) {
        _cleanup_free_ char *copy = strdup(file_path);
        char *out;

        if (!copy)
                abort();
        if (asprintf(&out, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", basename(copy)) < 0)
                abort();
        return out;
}

static int cp_out(Ctl *ctl, const char *id, const char *remote, const char *local) {
        _cleanup_free_ char *target = NULL;
        _cleanup_close_ int fd = -1;
        struct stat st;
        cws_error err;
        int r;

        if (streq(local, "-")) {
                r = cws_read_file_to_fd(ctl->conn, id, remote, STDOUT_FILENO, NULL, &err);
                return r == 0 ? 0 : ctl_fail(ctl, NULL, r, &err);
        }
        target = strdup(local);
        if (!target)
                abort();
        if (stat(local, &st) == 0 && S_ISDIR(st.st_mode)) {
                free(target);
                target = path_join(local, remote);
        }
        fd = open(target, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (fd < 0)
                return ctl_error(ctl, errno == ENOENT ? CTL_EXIT_NOT_FOUND :
                                      errno == EACCES ? CTL_EXIT_PERMISSION : CTL_EXIT_FAILURE,
                                 "%s: %m", target);
        r = cws_read_file_to_fd(ctl->conn, id, remote, fd, NULL, &err);
        if (r != 0) {
                /* Leave no half-written file behind. */
                (void)unlink(target);
                return ctl_fail(ctl, NULL, r, &err);
        }
        if (close(TAKE_FD(fd)) < 0)
                return ctl_error(ctl, CTL_EXIT_FAILURE, "%s: %m", target);
        return 0;
}

static int cp_in(Ctl *ctl, const char *local, const char *id, const char *remote) {
        _cleanup_free_ char *target = NULL;
        _cleanup_close_ int fd = -1;
        cws_error err;
        int r;

        if (streq(local, "-"))
                fd = dup(STDIN_FILENO);
        else
                fd = open(local, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return ctl_error(ctl, errno == ENOENT ? CTL_EXIT_NOT_FOUND :
                                      errno == EACCES ? CTL_EXIT_PERMISSION : CTL_EXIT_FAILURE,
                                 "%s: %m", local);
        if (remote[0] && remote[strlen(remote) - 1] == '/') {
                if (streq(local, "-"))
                        return ctl_usage(ctl, "%s: a file name is needed for stdin", remote);
                target = path_join(remote, local);
        }
        r = cws_write_file_from_fd(ctl->conn, id, target ? target : remote, fd, &err);
        if (r != 0)
                return ctl_fail(ctl, NULL, r, &err);
        return 0;
}

int cmd_cp(Ctl *ctl, int argc, char **argv) {
        static const struct option options[] = { CTL_COMMON_LONG_OPTIONS, {} };
        _cleanup_free_ char *src_id = NULL, *dst_id = NULL;
        const char *src_path, *dst_path;
        bool src_remote, dst_remote;
        int c, r;

        while ((c = getopt_long(argc, argv, CTL_COMMON_SHORT_OPTIONS, options, NULL)) != -1) {
                r = ctl_common_option(ctl, c, cp_help);
                if (r < 0)
                        return ctl_unknown_option(ctl, argv);
                if (r != CTL_GO_ON)
                        return r;
        }
        if (argc - optind != 2)
                return ctl_usage(ctl, "expected SRC and DST");
        src_remote = remote_split(argv[optind], &src_id, &src_path);
        dst_remote = remote_split(argv[optind + 1], &dst_id, &dst_path);
        if (src_remote == dst_remote)
                return ctl_usage(ctl, "exactly one of SRC and DST must be ID:PATH");
        if ((src_remote ? src_path : dst_path)[0] != '/')
                return ctl_usage(ctl, "the path in the sandbox must be absolute");
        r = ctl_connect(ctl);
        if (r != 0)
                return r;
        if (src_remote)
                return cp_out(ctl, src_id, src_path, argv[optind + 1]);
        return cp_in(ctl, argv[optind], dst_id, dst_path);
}
