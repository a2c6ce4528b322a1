/*
 * API key loading. A key is one line of printable ASCII (it goes into an
 * HTTP/2 header as "Bearer <key>"); a trailing newline is allowed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "apikey.h"
#include "log.h"
#include "macro.h"

void apikey_free(char *key) {
        if (key) {
                explicit_bzero(key, strlen(key));
                free(key);
        }
}

static int check_key(char *key, const char *origin) {
        size_t n = strlen(key);

        while (n > 0 && (key[n - 1] == '\n' || key[n - 1] == '\r'))
                key[--n] = 0;
        if (n == 0) {
                log_error("%s: the API key is empty", origin);
                return -EINVAL;
        }
        for (size_t i = 0; i < n; i++)
                if (key[i] < 0x21 || key[i] > 0x7e) {
                        log_error("%s: the API key must be one line of printable characters", origin);
                        return -EINVAL;
                }
        return 0;
}

static int read_key_file(const char *path, bool check_mode, char **ret) {
        _cleanup_close_ int fd = -1;
        struct stat st;
        char *buf;
        ssize_t n;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return r = -errno, log_error("API key file %s: %s", path, strerror(errno)), r;
        if (fstat(fd, &st) < 0)
                return r = -errno, log_error("API key file %s: %s", path, strerror(errno)), r;
        if (!S_ISREG(st.st_mode)) {
                log_error("API key file %s: not a regular file", path);
                return -EINVAL;
        }
        if (check_mode && (st.st_mode & 0077)) {
                log_error("API key file %s: readable by group or others (mode %04o); chmod 600 it",
                          path, (unsigned)(st.st_mode & 07777));
                return -EPERM;
        }
        buf = calloc(1, APIKEY_MAX + 1);
        if (!buf)
                return -ENOMEM;
        n = read(fd, buf, APIKEY_MAX + 1);
        if (n < 0 || n > APIKEY_MAX) {
                r = n < 0 ? -errno : -EFBIG;
                log_error("API key file %s: %s", path, n < 0 ? strerror(errno) : "too large");
                apikey_free(buf);
                return r;
        }
        r = check_key(buf, path);
        if (r < 0) {
                apikey_free(buf);
                return r;
        }
        *ret = buf;
        return 0;
}

int apikey_load(const char *file, char **ret) {
        const char *creds = getenv("CREDENTIALS_DIRECTORY"), *env = getenv("CWSANDBOX_API_KEY");
        _cleanup_free_ char *path = NULL;
        char *key;
        int r;

        if (creds && *creds) {
                if (asprintf(&path, "%s/api-key", creds) < 0)
                        return -ENOMEM;
                if (access(path, F_OK) == 0)
                        /* systemd made it private to the service; its mode is not ours to judge. */
                        return read_key_file(path, false, ret);
        }
        if (file && *file)
                return read_key_file(file, true, ret);
        if (env && *env) {
                key = strdup(env);
                if (!key)
                        return -ENOMEM;
                r = check_key(key, "CWSANDBOX_API_KEY");
                if (r < 0) {
                        apikey_free(key);
                        return r;
                }
                *ret = key;
                return 0;
        }
        *ret = NULL;
        return 0;
}
