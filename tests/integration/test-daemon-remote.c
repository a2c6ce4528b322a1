/*
 * cwsandboxd against a backend it does not start: cwsandbox-local on
 * 127.0.0.1 with a token, reached through --backend-url http://... as a
 * remote backend would be. Checks where the API key comes from
 * (CWSANDBOX_API_KEY, a key file, $CREDENTIALS_DIRECTORY/api-key), that a
 * key file others can read is refused at start, that a wrong key gives
 * UNAUTHENTICATED without the key in the message, and that the daemon
 * answers UNAVAILABLE (retryable) while the backend is down.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <grpc/status.h>

#include "daemon-calls.h"
#include "daemon-proc.h"
#include "test-util.h"

#define TOKEN "remote-test-token-0123456789"

static TestBackend backend;
static char url[128];
static char key_dir[256];

static void write_key(const char *path, const char *key, mode_t mode) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

        if (fd < 0 || write(fd, key, strlen(key)) != (ssize_t)strlen(key) || fchmod(fd, mode) < 0)
                bail_out("cannot write %s: %m", path);
        close(fd);
}

/* Start a daemon on the remote backend with @args; -ECHILD when it refused to start. */
static int start(const char *const *args, DaemonProc **ret) {
        const char *all[16] = { "--backend-url", url };
        size_t n = 2;

        for (; args && *args && n < ELEMENTSOF(all) - 1; args++)
                all[n++] = *args;
        all[n] = NULL;
        return daemon_proc_start(all, ret);
}

/* Attach and create a started sandbox; returns the code, with its message in @err. */
static int try_create(DaemonProc *d, DcInfo *info, DcError *err) {
        _cleanup_free_ char *session = NULL;
        FrameClient *c = NULL;
        int r;

        r = dc_connect(d->socket_path, &c);
        if (r != 0)
                return r;
        r = dc_attach(c, "remote", NULL, 0, &session, NULL, err);
        if (r == 0)
                r = dc_create(c, session, NULL, CWSANDBOXD__V1__SCOPE__SCOPE_SESSION, true, info, err);
        frame_client_free(c);
        return r;
}

static void check_key_source(const char *what, const char *const *args) {
        DaemonProc *d = NULL;
        DcInfo info;
        DcError err = { 0 };
        int r;

        r = start(args, &d);
        is_int(r, 0, "%s: the daemon starts", what);
        if (r < 0)
                return;
        r = try_create(d, &info, &err);
        is_int(r, 0, "%s: a sandbox is created with the key", what);
        if (r != 0)
                diag("  %s", err.message);
        daemon_proc_free(d);
}

static void test_key_sources(void) {
        _cleanup_free_ char *file = NULL, *creds = NULL;

        if (asprintf(&file, "%s/key", key_dir) < 0 || asprintf(&creds, "%s/api-key", key_dir) < 0)
                bail_out("oom");

        setenv("CWSANDBOX_API_KEY", TOKEN, 1);
        check_key_source("CWSANDBOX_API_KEY", NULL);
        unsetenv("CWSANDBOX_API_KEY");

        write_key(file, TOKEN "\n", 0600);
        check_key_source("a 0600 key file", (const char *const[]) { "--api-key-file", file, NULL });

        write_key(file, TOKEN, 0644);
        {
                DaemonProc *d = NULL;

                is_int(start((const char *const[]) { "--api-key-file", file, NULL }, &d), -ECHILD,
                       "a key file readable by others is refused at start");
                daemon_proc_free(d);
        }

        write_key(creds, TOKEN, 0644);
        setenv("CREDENTIALS_DIRECTORY", key_dir, 1);
        setenv("CWSANDBOX_API_KEY", "not-the-key", 1);
        check_key_source("$CREDENTIALS_DIRECTORY/api-key, before the environment", NULL);
        unsetenv("CREDENTIALS_DIRECTORY");
        unsetenv("CWSANDBOX_API_KEY");
}

static void test_wrong_key(void) {
        DaemonProc *d = NULL;
        DcInfo info;
        DcError err = { 0 };
        int r;

        setenv("CWSANDBOX_API_KEY", "wrong-secret-value", 1);
        r = start(NULL, &d);
        unsetenv("CWSANDBOX_API_KEY");
        is_int(r, 0, "wrong key: the daemon starts (the key is checked by the backend)");
        if (r < 0)
                return;
        is_int(try_create(d, &info, &err), GRPC_STATUS_UNAUTHENTICATED, "wrong key: UNAUTHENTICATED");
        diag("  message: %s", err.message);
        ok(!strstr(err.message, "wrong-secret-value") && !strstr(err.message, TOKEN),
           "wrong key: the message does not contain a key");
        daemon_proc_free(d);
}

static void test_backend_down(void) {
        DaemonProc *d = NULL;
        DcInfo info;
        DcError err = { 0 };
        int r = -1;

        setenv("CWSANDBOX_API_KEY", TOKEN, 1);
        is_int(start(NULL, &d), 0, "backend down: the daemon starts");
        unsetenv("CWSANDBOX_API_KEY");
        if (!d)
                return;
        is_int(try_create(d, &info, &err), 0, "backend down: works while the backend is up");

        /* Same port, so the daemon's URL stays right: stop, then start anew on it. */
        test_backend_stop(&backend);
        r = try_create(d, &info, &err);
        is_int(r, GRPC_STATUS_UNAVAILABLE, "backend down: UNAVAILABLE while it is gone");
        diag("  message: %s", err.message);
        ok(err.retryable, "backend down: marked retryable");
        daemon_proc_free(d);
}

int main(void) {
        const char *tmp = getenv("TMPDIR");

        if (test_needs_root())
                return 0;
        test_backend_start(&backend, &(BackendProcOpts) { .token = TOKEN, .tcp = true });
        snprintf(url, sizeof(url), "http://%s", backend.proc->target);
        snprintf(key_dir, sizeof(key_dir), "%s/cwsandboxd-keys-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(key_dir))
                bail_out("mkdtemp: %m");

        test_key_sources();
        test_wrong_key();
        test_backend_down();

        if (backend.proc)
                test_backend_stop(&backend);
        {
                char path[300];

                snprintf(path, sizeof(path), "%s/key", key_dir);
                (void)unlink(path);
                snprintf(path, sizeof(path), "%s/api-key", key_dir);
                (void)unlink(path);
                (void)rmdir(key_dir);
        }
        return done();
}
