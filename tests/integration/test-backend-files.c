/*
 * ReadFile and WriteFile: binary round trips (small, 16 MiB), overwrite
 * truncates, paths that try to leave the sandbox ("../..", symlinks to "/"
 * and to host paths) resolve inside it, the 32 MiB limit both ways, and the
 * errors: missing file, directory, unknown or stopped sandbox, empty path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test-util.h"

typedef Coreweave__Sandbox__V1__ReadFileResponse ReadResponse;

#define LIMIT (32 * 1024 * 1024)

static uint8_t *pattern(size_t n, unsigned seed) {
        uint8_t *p = malloc(n ? n : 1);
        uint32_t x = seed * 2654435761u + 1;

        if (!p)
                bail_out("out of memory");
        for (size_t i = 0; i < n; i++) {
                x = x * 1103515245u + 12345u;
                p[i] = (uint8_t)(x >> 16);
        }
        return p;
}

static bool read_equals(BcClient *c, const char *id, const char *path, const void *want, size_t n) {
        _cleanup_bc_ ReadResponse *rf = NULL;
        BcStatus st = {};
        int r = bc_read_file(c, id, path, &rf, &st);

        if (r != 0) {
                test_diag_status("ReadFile", r, &st);
                return false;
        }
        if (rf->content.len != n || (n > 0 && memcmp(rf->content.data, want, n) != 0)) {
                diag("  ReadFile %s: %zu bytes, want %zu", path, rf->content.len, n);
                return false;
        }
        return true;
}

static void test_round_trip(BcClient *c, const char *id) {
        _cleanup_free_ uint8_t *small = pattern(4096, 1), *big = pattern(16 << 20, 2);
        _cleanup_free_ char *wc = NULL;
        BcStatus st = {};
        int r;

        small[0] = 0;   /* NULs and every byte value survive */
        r = bc_write_file(c, id, "/tmp/small.bin", small, 4096, &st);
        if (!ok(r == 0, "WriteFile of 4 KiB of binary"))
                test_diag_status("WriteFile", r, &st);
        ok(read_equals(c, id, "/tmp/small.bin", small, 4096), "ReadFile returns the same bytes");
        wc = test_sh_out(c, id, "wc -c < /tmp/small.bin");
        is_str(wc ? test_chomp(wc) : NULL, "4096", "the file is in the sandbox with its size");

        r = bc_write_file(c, id, "/tmp/big.bin", big, 16 << 20, &st);
        if (!ok(r == 0, "WriteFile of 16 MiB"))
                test_diag_status("WriteFile", r, &st);
        ok(read_equals(c, id, "/tmp/big.bin", big, 16 << 20), "ReadFile of 16 MiB returns the same bytes");

        ok(bc_write_file(c, id, "/tmp/small.bin", "x", 1, &st) == 0 && read_equals(c, id, "/tmp/small.bin", "x", 1),
           "WriteFile over an existing file replaces its content");
        ok(bc_write_file(c, id, "/tmp/empty", "", 0, &st) == 0 && read_equals(c, id, "/tmp/empty", "", 0),
           "an empty file round-trips");
}

static void test_escapes(BcClient *c, const char *id, const char *host_dir) {
        _cleanup_free_ char *marker = test_marker("esc"), *escape_path = NULL, *host_path = NULL;
        _cleanup_free_ char *in = NULL, *script = NULL, *host_secret = NULL, *host_target = NULL;
        _cleanup_bc_ ReadResponse *rf = NULL;
        BcStatus st = {};
        FILE *f;
        int r;

        /* The sandbox's /etc/hostname differs from the host's from now on. */
        in = test_sh_out(c, id, "echo sandbox-hostname-file > /etc/hostname && "
                                "ln -s / /tmp/rootlink && ln -s ../../../../../../.. /tmp/uplink && echo ok");
        if (!ok(in != NULL, "prepared /etc/hostname and symlinks inside"))
                return;

        ok(read_equals(c, id, "../../../etc/hostname", "sandbox-hostname-file\n", 22),
           "ReadFile \"../../../etc/hostname\" reads the sandbox's file");
        ok(read_equals(c, id, "/../../../../etc/hostname", "sandbox-hostname-file\n", 22),
           "ReadFile \"/../../../../etc/hostname\" reads the sandbox's file");
        ok(read_equals(c, id, "/tmp/rootlink/etc/hostname", "sandbox-hostname-file\n", 22),
           "ReadFile through a symlink to \"/\" stays in the sandbox");
        ok(read_equals(c, id, "/tmp/uplink/etc/hostname", "sandbox-hostname-file\n", 22),
           "ReadFile through a symlink of many \"..\" stays in the sandbox");

        if (asprintf(&escape_path, "../../../../tmp/../etc/%s", marker) < 0 ||
            asprintf(&host_path, "/etc/%s", marker) < 0)
                bail_out("out of memory");
        r = bc_write_file(c, id, escape_path, "in", 2, &st);
        ok(r == 0, "WriteFile to \"%s\" is accepted", escape_path);
        ok(access(host_path, F_OK) < 0 && errno == ENOENT, "but nothing appears on the host");
        ok(read_equals(c, id, host_path, "in", 2), "the file is in the sandbox's /etc");

        /* Symlinks to absolute host paths point into the sandbox's own tree. */
        if (asprintf(&host_secret, "%s/secret", host_dir) < 0 || asprintf(&host_target, "%s/written", host_dir) < 0)
                bail_out("out of memory");
        f = fopen(host_secret, "we");
        if (f) {
                fputs("host secret\n", f);
                fclose(f);
        }
        if (asprintf(&script, "ln -s '%s' /tmp/secretlink && ln -s '%s' /tmp/writelink && echo ok",
                     host_secret, host_target) < 0)
                bail_out("out of memory");
        free(in);
        in = test_sh_out(c, id, script);
        ok(in != NULL, "symlinks to host paths made inside");
        r = bc_read_file(c, id, "/tmp/secretlink", &rf, &st);
        ok(r == GRPC_STATUS_NOT_FOUND, "ReadFile through a symlink to a host file does not reach it (got %s)",
           bc_code_name(r));
        r = bc_write_file(c, id, "/tmp/writelink", "x", 1, &st);
        ok(access(host_target, F_OK) < 0, "WriteFile through a symlink to a host path does not write on the host (%s)",
           bc_code_name(r));
}

static void test_limits(BcClient *c, const char *id) {
        _cleanup_free_ uint8_t *over = calloc(1, LIMIT + 1);
        _cleanup_free_ char *made = NULL;
        _cleanup_bc_ ReadResponse *rf = NULL;
        BcStatus st = {};
        int r;

        if (!over)
                bail_out("out of memory");
        r = bc_write_file(c, id, "/tmp/over.bin", over, LIMIT + 1, &st);
        is_int(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "WriteFile of 32 MiB + 1: RESOURCE_EXHAUSTED");
        ok(strstr(st.details, "larger than max") != NULL, "the message says \"larger than max\" (\"%s\")", st.details);

        made = test_sh_out(c, id, "head -c 33554433 /dev/zero > /tmp/over.bin && echo made");
        ok(made != NULL, "a file of 32 MiB + 1 made inside");
        r = bc_read_file(c, id, "/tmp/over.bin", &rf, &st);
        is_int(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "ReadFile of 32 MiB + 1: RESOURCE_EXHAUSTED");
        ok(strstr(st.details, "larger than max") != NULL, "the message says \"larger than max\" (\"%s\")", st.details);
}

static void test_errors(BcClient *c, const char *id) {
        BcStatus st = {};
        int r;

        r = bc_read_file(c, id, "/tmp/no-such-file", NULL, &st);
        is_int(r, GRPC_STATUS_NOT_FOUND, "ReadFile of a missing file: NOT_FOUND");
        r = bc_read_file(c, id, "/tmp", NULL, &st);
        ok(r != GRPC_STATUS_OK && r != GRPC_STATUS_UNKNOWN && r != GRPC_STATUS_INTERNAL,
           "ReadFile of a directory is refused with a clear code (got %s: %s)", bc_code_name(r), st.details);
        r = bc_read_file(c, id, "", NULL, &st);
        is_int(r, GRPC_STATUS_INVALID_ARGUMENT, "ReadFile with an empty path: INVALID_ARGUMENT");
        r = bc_read_file(c, "no-such-sandbox", "/etc/hostname", NULL, &st);
        is_int(r, GRPC_STATUS_NOT_FOUND, "ReadFile in an unknown sandbox: NOT_FOUND");
        r = bc_write_file(c, "no-such-sandbox", "/tmp/x", "x", 1, &st);
        is_int(r, GRPC_STATUS_NOT_FOUND, "WriteFile in an unknown sandbox: NOT_FOUND");
}

static void test_not_running(BcClient *c) {
        static const char *const args[] = { "-c", "exit 0", NULL };
        BcSandboxOpts o = { .command = "/bin/sh", .args = args };
        _cleanup_bc_ BcSandbox *sb = NULL, *end = NULL;
        BcStatus st = {};
        int r;

        if (bc_create_sandbox(c, &o, &sb, &st) != 0 ||
            bc_wait_state(c, sb->sandbox_id, BC_STATE(COMPLETED), TEST_START_MS, &end, &st) != 0) {
                ok(false, "a COMPLETED sandbox");
                return;
        }
        r = bc_read_file(c, sb->sandbox_id, "/etc/hostname", NULL, &st);
        is_int(r, GRPC_STATUS_FAILED_PRECONDITION, "ReadFile in a COMPLETED sandbox: FAILED_PRECONDITION");
        r = bc_write_file(c, sb->sandbox_id, "/tmp/x", "x", 1, &st);
        is_int(r, GRPC_STATUS_FAILED_PRECONDITION, "WriteFile in a COMPLETED sandbox: FAILED_PRECONDITION");
}

int main(void) {
        BcSandboxOpts o = test_keepalive_opts();
        TestBackend t;
        BcSandbox *sb;

        if (test_needs_root())
                return 0;
        test_backend_start(&t, NULL);

        sb = test_start_sandbox(t.client, &o, "sandbox for files");
        if (sb) {
                test_round_trip(t.client, sb->sandbox_id);
                test_escapes(t.client, sb->sandbox_id, t.proc->dir);
                test_limits(t.client, sb->sandbox_id);
                test_errors(t.client, sb->sandbox_id);
                (void)bc_stop_sandbox(t.client, sb->sandbox_id, 20000);
                bc_free(sb);
        }
        test_not_running(t.client);

        test_backend_stop(&t);
        return done();
}
