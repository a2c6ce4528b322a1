/*
 * What a sandbox looks like from inside: its own PID namespace (a short
 * /proc, a different PID 1), its own hostname, a writable root whose writes
 * never reach the host, an empty /tmp, a minimal /dev; the spec's env vars,
 * working dir and mounted files, for the main process and for execs; and an
 * image rootfs from --image-dir instead of the host root.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test-util.h"

#define IMAGE "cwsl-test:1"
#define IMAGE_DIRNAME "cwsl-test_1"

static char *read_host_file(const char *path) {
        char buf[4096];
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n;

        if (fd < 0)
                return NULL;
        n = read(fd, buf, sizeof(buf) - 1);
        if (n < 0)
                return NULL;
        for (ssize_t i = 0; i < n; i++)
                if (!buf[i])
                        buf[i] = ' ';
        buf[n] = 0;
        return strdup(buf);
}

static void test_namespaces(BcClient *c, const char *id) {
        _cleanup_free_ char *n_procs = NULL, *pid1 = NULL, *host_pid1 = NULL;
        _cleanup_free_ char *name = NULL, *mypid = NULL;
        char hn[256] = "";

        n_procs = test_sh_out(c, id, "ls /proc | grep -c '^[0-9][0-9]*$'");
        ok(n_procs && atoi(n_procs) > 0 && atoi(n_procs) <= 10,
           "/proc inside shows only the sandbox's few processes (%s)", n_procs ? test_chomp(n_procs) : "?");

        pid1 = test_sh_out(c, id, "tr '\\0' ' ' < /proc/1/cmdline");
        host_pid1 = read_host_file("/proc/1/cmdline");
        ok(pid1 && host_pid1 && strcmp(test_chomp(pid1), test_chomp(host_pid1)) != 0,
           "PID 1 inside is not the host's PID 1 (inside: \"%s\")", pid1 ? pid1 : "?");

        mypid = test_sh_out(c, id, "echo $$");
        ok(mypid && atoi(mypid) > 1 && atoi(mypid) < 100,
           "an exec gets a small pid of the sandbox's namespace (%s)", mypid ? test_chomp(mypid) : "?");

        (void)gethostname(hn, sizeof(hn) - 1);
        name = test_sh_out(c, id, "cat /proc/sys/kernel/hostname");
        ok(name && *test_chomp(name) && strcmp(name, hn) != 0,
           "the hostname inside (\"%s\") differs from the host's (\"%s\")", name ? name : "?", hn);
}

static void test_root(BcClient *c, const char *id) {
        _cleanup_free_ char *marker = test_marker("etc"), *script = NULL, *path = NULL, *out = NULL;
        _cleanup_free_ char *tmp = NULL, *blk = NULL, *dev = NULL;
        _cleanup_bc_ Coreweave__Sandbox__V1__ReadFileResponse *rf = NULL;
        BcStatus st = {};
        int r;

        if (asprintf(&path, "/etc/%s", marker) < 0 || asprintf(&script, "echo inside > %s && cat %s", path, path) < 0)
                bail_out("out of memory");
        out = test_sh_out(c, id, script);
        is_str(out ? test_chomp(out) : NULL, "inside", "a file can be written in /etc inside");
        ok(access(path, F_OK) < 0 && errno == ENOENT, "the file does not appear in the host's /etc");
        r = bc_read_file(c, id, path, &rf, &st);
        ok(r == 0 && rf->content.len == 7 && memcmp(rf->content.data, "inside\n", 7) == 0,
           "ReadFile sees the file written inside");

        tmp = test_sh_out(c, id, "ls -A /tmp | wc -l");
        is_str(tmp ? test_chomp(tmp) : NULL, "0", "/tmp is empty");
        dev = test_sh_out(c, id, "test -c /dev/null && test -c /dev/zero && test -c /dev/urandom && "
                                 "echo x > /dev/null && head -c 4 /dev/zero | wc -c");
        is_str(dev ? test_chomp(dev) : NULL, "4", "/dev has null, zero and urandom, and they work");
        blk = test_sh_out(c, id, "for f in /dev/* /dev/*/*; do [ -b \"$f\" ] && echo \"$f\"; done; true");
        is_str(blk ? test_chomp(blk) : NULL, "", "/dev holds no block devices of the host");
}

static void test_env_and_cwd(BcClient *c, const char *id, const char *foo) {
        BcExecOpts eo = { .argv = (const char *const[]) { "/bin/sh", "-c", "echo \"$FOO|$BAR|$(pwd)\"", NULL },
                          .env = (const char *const[]) { "BAR=from-exec", NULL } };
        _cleanup_free_ char *out = NULL, *want = NULL;
        BcLogs *l = NULL;
        BcExec *e = NULL;
        char needle[256];
        int r;

        /* The main process printed its environment at start. */
        snprintf(needle, sizeof(needle), "foo=%s", foo);
        r = bc_logs_start(c, id, &(BcLogsOpts) { .follow = true }, 20000, &l);
        ok(r == 0 && bc_logs_wait_data(l, "pwd=", 10000) == 0, "the main process logged its start");
        ok(l && l->data.data && strstr(l->data.data, needle), "the main process sees the spec's env var");
        ok(l && l->data.data && strstr(l->data.data, "spaced=a b=c\n"),
           "an env value with spaces and '=' arrives intact");
        ok(l && l->data.data && strstr(l->data.data, "pwd=/usr/share\n"), "the main process runs in working_dir");
        ok(l && l->data.data && strstr(l->data.data, "mainpid=1\n"), "the main process is PID 1 of its namespace");
        if (l && l->data.data)
                diag("main process log: %s", test_chomp(l->data.data));
        bc_logs_free(l);

        out = test_sh_out(c, id, "echo \"$FOO\"");
        is_str(out ? test_chomp(out) : NULL, foo, "an exec inherits the spec's env vars");
        free(out);
        out = test_sh_out(c, id, "pwd");
        is_str(out ? test_chomp(out) : NULL, "/usr/share", "an exec starts in working_dir");

        r = bc_exec_start(c, id, &eo, TEST_CMD_MS, &e);
        if (r == 0) {
                (void)bc_exec_half_close(e);
                r = bc_exec_wait(e, TEST_CMD_MS);
        }
        if (asprintf(&want, "%s|from-exec|/usr/share\n", foo) < 0)
                bail_out("out of memory");
        ok(r == 0 && e && e->out.data && streq(e->out.data, want),
           "ExecStreamInit.env adds to the sandbox env (got \"%s\")", e && e->out.data ? e->out.data : "");
        bc_exec_free(e);
}

static void test_files(BcClient *c, const char *id, const uint8_t *bin, size_t n) {
        _cleanup_free_ char *cfg = NULL;
        _cleanup_bc_ Coreweave__Sandbox__V1__ReadFileResponse *rf = NULL;
        BcStatus st = {};
        int r;

        cfg = test_sh_out(c, id, "cat /etc/cwsl-config.txt");
        is_str(cfg, "hello config\n", "a mounted file has its content");
        r = bc_read_file(c, id, "/opt/cwsl/nested/data.bin", &rf, &st);
        if (ok(r == 0, "a mounted file in a new nested directory exists"))
                ok(rf->content.len == n && memcmp(rf->content.data, bin, n) == 0,
                   "its binary content is exact (%zu bytes)", rf->content.len);
        else
                test_diag_status("ReadFile", r, &st);
}

/* A tiny image rootfs: sh, sleep, cat and ls with their libraries. */
static char *make_image_dir(void) {
        char tmpl[] = "/tmp/cwsl-images-XXXXXX";
        _cleanup_free_ char *script = NULL;
        char *dir;

        if (!mkdtemp(tmpl))
                return NULL;
        dir = strdup(tmpl);
        if (!dir || asprintf(&script,
                             "set -e; root='%s/" IMAGE_DIRNAME "'; "
                             "mkdir -p \"$root/bin\" \"$root/proc\" \"$root/dev\" \"$root/tmp\" \"$root/etc\"; "
                             "for b in sh sleep cat ls; do cp -L \"$(command -v $b)\" \"$root/bin/\"; done; "
                             "for lib in $(ldd \"$root\"/bin/* | awk '$2 == \"=>\" && $3 ~ /^\\// {print $3} $1 ~ /^\\// && $1 !~ /:$/ {print $1}' | sort -u); do "
                             "  mkdir -p \"$root$(dirname $lib)\"; cp -L \"$lib\" \"$root$lib\"; done; "
                             "echo image-ok > \"$root/image-marker\"",
                             dir) < 0)
                return NULL;
        if (system(script) != 0) {
                diag("could not build the test image in %s", dir);
                return dir;
        }
        return dir;
}

static void test_image(BcClient *c) {
        static const char *const args[] = { "-c", BC_KEEPALIVE_SCRIPT, NULL };
        BcSandboxOpts o = { .image = IMAGE, .command = "/bin/sh", .args = args };
        _cleanup_bc_ BcSandbox *sb = NULL;
        _cleanup_free_ char *marker = NULL, *osr = NULL;

        sb = test_start_sandbox(c, &o, "sandbox on an image from --image-dir");
        if (!sb)
                return;
        is_str(sb->status->effective_runtime_class, "cwsandbox-local/image:" IMAGE,
               "effective_runtime_class names the image");
        marker = test_sh_out(c, sb->sandbox_id, "cat /image-marker");
        is_str(marker, "image-ok\n", "the image's files are the root");
        osr = test_sh_out(c, sb->sandbox_id, "if [ -e /etc/os-release ]; then echo host; else echo absent; fi");
        is_str(osr, "absent\n", "the host's files are not visible");
        (void)bc_stop_sandbox(c, sb->sandbox_id, 20000);
}

int main(void) {
        _cleanup_free_ char *foo = NULL, *image_dir = NULL, *env_foo = NULL;
        uint8_t bin[300];
        BcFile files[2];
        TestBackend t;
        BcSandbox *sb;

        if (test_needs_root())
                return 0;
        image_dir = make_image_dir();
        test_backend_start(&t, &(BackendProcOpts) { .image_dir = image_dir });

        foo = test_marker("foo");
        if (asprintf(&env_foo, "FOO=%s", foo) < 0)
                bail_out("out of memory");
        for (size_t i = 0; i < sizeof(bin); i++)
                bin[i] = (uint8_t)(i * 7);
        files[0] = (BcFile) { "/etc/cwsl-config.txt", "hello config\n", 13 };
        files[1] = (BcFile) { "/opt/cwsl/nested/data.bin", bin, sizeof(bin) };

        {
                const char *env[] = { env_foo, "SPACED=a b=c", NULL };
                const char *args[] = {
                        "-c",
                        "echo \"foo=$FOO\"; echo \"spaced=$SPACED\"; echo \"mainpid=$$\"; echo \"pwd=$(pwd)\"; "
                        BC_KEEPALIVE_SCRIPT,
                        NULL };
                BcSandboxOpts o = {
                        .command = "/bin/sh", .args = args, .env = env, .working_dir = "/usr/share",
                        .files = files, .n_files = 2,
                };

                sb = test_start_sandbox(t.client, &o, "sandbox with env, working_dir and files");
        }
        if (sb) {
                is_str(sb->status->effective_runtime_class, "cwsandbox-local/host",
                       "an image missing from --image-dir runs on the host base");
                test_namespaces(t.client, sb->sandbox_id);
                test_root(t.client, sb->sandbox_id);
                test_env_and_cwd(t.client, sb->sandbox_id, foo);
                test_files(t.client, sb->sandbox_id, bin, sizeof(bin));
                (void)bc_stop_sandbox(t.client, sb->sandbox_id, 20000);
                bc_free(sb);
        }
        test_image(t.client);

        test_backend_stop(&t);
        if (image_dir) {
                _cleanup_free_ char *rm = NULL;

                if (asprintf(&rm, "rm -rf '%s'", image_dir) >= 0)
                        (void)system(rm);
        }
        return done();
}
