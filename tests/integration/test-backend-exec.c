/*
 * Exec and StreamExec: output and truncation flags of the unary rpc; frame
 * order, exit codes (0, 7, killed), stdout/stderr separation, stdin round
 * trip with binary data, stdin EOF on half-close, a large output, a tty with
 * its size and a resize, concurrent streams, and a cancelled call killing
 * its process tree; the errors of a missing or stopped sandbox.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-util.h"

typedef Coreweave__Sandbox__V1__ExecResponse ExecResponse;

static void test_unary(BcClient *c, const char *id) {
        static const char *const echo[] = { "/bin/sh", "-c", "echo hi; echo oops >&2", NULL };
        static const char *const big[] = {
                "/bin/sh", "-c", "head -c 10000 /dev/zero; head -c 3000 /dev/zero >&2; exit 5", NULL };
        _cleanup_bc_ ExecResponse *r1 = NULL, *r2 = NULL, *r3 = NULL;
        BcStatus st = {};
        int r;

        r = bc_exec_unary(c, id, echo, 0, &r1, &st);
        if (ok(r == 0, "Exec answers OK")) {
                ok(r1->stdout.len == 3 && memcmp(r1->stdout.data, "hi\n", 3) == 0, "Exec collects stdout");
                ok(r1->stderr.len == 5 && memcmp(r1->stderr.data, "oops\n", 5) == 0, "Exec collects stderr");
                is_int(r1->exit_code, 0, "Exec exit_code 0");
                ok(!r1->stdout_truncated && !r1->stderr_truncated, "small output is not truncated");
                is_int(r1->stdout_bytes_produced, 3, "stdout_bytes_produced counts stdout");
                is_int(r1->stderr_bytes_produced, 5, "stderr_bytes_produced counts stderr");
        } else
                test_diag_status("Exec", r, &st);

        r = bc_exec_unary(c, id, big, 1000, &r2, &st);
        if (ok(r == 0, "Exec with max_output_bytes=1000 answers OK")) {
                is_int(r2->exit_code, 5, "Exec reports exit code 5");
                is_int(r2->stdout.len, 1000, "stdout is cut at max_output_bytes");
                ok(r2->stdout_truncated, "stdout_truncated is set");
                is_int(r2->stdout_bytes_produced, 10000, "stdout_bytes_produced is the full size");
                is_int(r2->stderr.len, 1000, "stderr is cut at max_output_bytes");
                ok(r2->stderr_truncated, "stderr_truncated is set");
                is_int(r2->stderr_bytes_produced, 3000, "stderr_bytes_produced is the full size");
        } else
                test_diag_status("Exec", r, &st);

        r = bc_exec_unary(c, id, (const char *const[]) { NULL }, 0, &r3, &st);
        is_int(r, GRPC_STATUS_INVALID_ARGUMENT, "Exec without a command: INVALID_ARGUMENT");
        r = bc_exec_unary(c, "no-such-sandbox", echo, 0, NULL, &st);
        is_int(r, GRPC_STATUS_NOT_FOUND, "Exec in an unknown sandbox: NOT_FOUND");
}

/* Run @script over StreamExec (no stdin) and check how it ends. */
static void check_exit(BcClient *c, const char *id, const char *script, int want, const char *what) {
        BcExec *e = test_sh(c, id, script);

        if (!ok(e && e->status.code == GRPC_STATUS_OK, "%s: the stream ends with status OK", what)) {
                if (e)
                        test_diag_status("StreamExec", e->status.code, &e->status);
                bc_exec_free(e);
                return;
        }
        ok(e->ready && !e->out_of_order, "%s: ready comes first, nothing follows exit", what);
        if (ok(e->exited, "%s: an exit frame arrives", what))
                is_int(e->exit_code, want, "%s: exit code", what);
        bc_exec_free(e);
}

static void test_exit_codes(BcClient *c, const char *id) {
        BcExec *e;

        check_exit(c, id, "true", 0, "true");
        check_exit(c, id, "exit 7", 7, "exit 7");
        /* A process killed by signal N exits 128+N, as in a shell. */
        check_exit(c, id, "kill -9 $$", 137, "killed by SIGKILL");

        e = test_sh(c, id, "echo out; echo err >&2; printf 'no newline'");
        if (ok(e && e->exited, "stdout and stderr: the command ran")) {
                is_str(e->out.data, "out\nno newline", "stdout frames carry stdout");
                is_str(e->err.data, "err\n", "stderr frames carry stderr");
        }
        bc_exec_free(e);

        e = NULL;
        {
                int r = bc_exec_run(c, id, (const char *const[]) { "/nonexistent/cwsl-cmd", NULL }, TEST_CMD_MS, &e);

                ok(r == 0 && e && ((e->exited && e->exit_code != 0) || e->errored ||
                                   e->status.code != GRPC_STATUS_OK),
                   "a missing command fails (exit %d, error frame \"%s\", status %s)",
                   e ? e->exit_code : -1, e ? e->error_code : "", e ? bc_code_name(e->status.code) : "?");
        }
        bc_exec_free(e);
}

static void test_stdin(BcClient *c, const char *id) {
        BcExecOpts o = { .argv = (const char *const[]) { "cat", NULL } };
        size_t n = 200 * 1024;
        uint8_t *data = malloc(n);
        BcExec *e = NULL;
        bool sent = true;
        int r;

        if (!data)
                bail_out("out of memory");
        for (size_t i = 0; i < n; i++)
                data[i] = (uint8_t)((i * 31) ^ (i >> 8));
        r = bc_exec_start(c, id, &o, TEST_CMD_MS, &e);
        if (!ok(r == 0 && bc_exec_wait_ready(e, TEST_CMD_MS) == 0, "cat with stdin: ready arrives")) {
                bc_exec_free(e);
                free(data);
                return;
        }
        /* 64 KiB frames, as the SDK sends them. */
        for (size_t off = 0; off < n && sent; off += 65536)
                sent = bc_exec_stdin(e, data + off, MIN((size_t)65536, n - off)) == 0;
        ok(sent, "200 KiB of stdin sent in 64 KiB frames");
        ok(bc_exec_close_stdin(e) == 0, "close frame and half-close sent");
        r = bc_exec_wait(e, TEST_CMD_MS);
        ok(r == 0 && e->exited && e->exit_code == 0, "cat exits 0 after the close frame");
        ok(e->out.len == n && memcmp(e->out.data, data, n) == 0,
           "stdout echoes stdin byte for byte (%zu of %zu bytes)", e->out.len, n);
        bc_exec_free(e);
        free(data);

        /* Without a close frame, the half-close alone is the end of stdin. */
        e = NULL;
        r = bc_exec_start(c, id, &o, TEST_CMD_MS, &e);
        if (r == 0) {
                (void)bc_exec_stdin(e, "abc", 3);
                (void)bc_exec_half_close(e);
                r = bc_exec_wait(e, TEST_CMD_MS);
        }
        ok(r == 0 && e->exited && e->exit_code == 0 && streq(e->out.data ? e->out.data : "", "abc"),
           "a half-close alone ends stdin (cat printed \"%s\")", e && e->out.data ? e->out.data : "");
        bc_exec_free(e);
}

static void test_large_output(BcClient *c, const char *id) {
        BcExec *e = test_sh(c, id, "head -c 4194304 /dev/urandom");

        ok(e && e->exited && e->exit_code == 0 && e->out.len == 4194304,
           "4 MiB of output arrive whole (%zu bytes)", e ? e->out.len : 0);
        bc_exec_free(e);
        /* A producer much faster than the stream: the server must pause
         * reading at its high-water mark and resume, never stall. */
        e = test_sh(c, id, "head -c 8388608 /dev/zero");
        ok(e && e->exited && e->exit_code == 0 && e->out.len == 8388608,
           "8 MiB from a fast producer arrive whole (%zu bytes)", e ? e->out.len : 0);
        bc_exec_free(e);
}

static void test_tty(BcClient *c, const char *id) {
        BcExecOpts o = { .argv = (const char *const[]) { "tty", NULL }, .tty = true, .tty_width = 100, .tty_height = 40 };
        BcExecOpts o2 = { .argv = (const char *const[]) { "stty", "size", NULL }, .tty = true,
                          .tty_width = 100, .tty_height = 40 };
        BcExecOpts o3 = { .argv = (const char *const[]) { "/bin/sh", "-c", "stty size; read x; stty size", NULL },
                          .tty = true, .tty_width = 80, .tty_height = 24 };
        BcExec *e = NULL;
        size_t mark;
        int r;

        r = bc_exec_start(c, id, &o, TEST_CMD_MS, &e);
        if (r == 0) {
                (void)bc_exec_half_close(e);
                r = bc_exec_wait(e, TEST_CMD_MS);
        }
        ok(r == 0 && e->exited && e->exit_code == 0 && e->out.data && strncmp(e->out.data, "/dev/pts/", 9) == 0,
           "tty prints a /dev/pts device (\"%s\")", e && e->out.data ? test_chomp(e->out.data) : "");
        bc_exec_free(e);

        e = NULL;
        r = bc_exec_start(c, id, &o2, TEST_CMD_MS, &e);
        if (r == 0) {
                (void)bc_exec_half_close(e);
                r = bc_exec_wait(e, TEST_CMD_MS);
        }
        ok(r == 0 && e->out.data && strstr(e->out.data, "40 100"),
           "stty size reflects tty_height and tty_width (\"%s\")", e && e->out.data ? test_chomp(e->out.data) : "");
        bc_exec_free(e);

        e = NULL;
        r = bc_exec_start(c, id, &o3, TEST_CMD_MS, &e);
        if (!ok(r == 0 && bc_exec_wait_output(e, "24 80", 0, TEST_CMD_MS) == 0, "a tty starts at 80x24")) {
                bc_exec_free(e);
                return;
        }
        mark = e->out.len;
        ok(bc_exec_resize(e, 120, 50) == 0, "resize frame sent");
        ok(bc_exec_stdin(e, "go\r", 3) == 0, "a line typed on the terminal");
        ok(bc_exec_wait_output(e, "50 120", mark, TEST_CMD_MS) == 0,
           "after the resize stty size says 50 120 (output \"%s\")", e->out.data ? e->out.data : "");
        (void)bc_exec_close_stdin(e);
        r = bc_exec_wait(e, TEST_CMD_MS);
        ok(r == 0 && e->exited && e->exit_code == 0, "the tty session exits 0");
        bc_exec_free(e);
}

static void test_concurrent(BcClient *c, const char *id) {
        BcExec *e[4] = {};
        char script[64], want[16];
        bool all = true;

        for (int i = 0; i < 4; i++) {
                BcExecOpts o = { .argv = (const char *const[]) { "/bin/sh", "-c", script, NULL } };

                snprintf(script, sizeof(script), "sleep 0.3; echo stream-%d", i);
                if (bc_exec_start(c, id, &o, TEST_CMD_MS, &e[i]) == 0)
                        (void)bc_exec_half_close(e[i]);
        }
        for (int i = 0; i < 4; i++) {
                snprintf(want, sizeof(want), "stream-%d\n", i);
                if (!e[i] || bc_exec_wait(e[i], TEST_CMD_MS) != 0 || !e[i]->exited || !e[i]->out.data ||
                    !streq(e[i]->out.data, want))
                        all = false;
                bc_exec_free(e[i]);
        }
        ok(all, "4 concurrent streams each get their own output and exit");
}

static void test_cancel(BcClient *c, const char *id) {
        _cleanup_free_ char *marker = test_marker("cancel"), *env = NULL, *check = NULL, *out = NULL;
        BcExecOpts o = { .argv = (const char *const[]) { "/bin/sh", "-c", "echo started; sleep 1000; echo never", NULL } };
        size_t len = strlen(marker), found = 0;
        BcExec *e = NULL;
        pid_t pids[8];
        int64_t end;
        int r;

        if (asprintf(&env, "CWSL_MARK=%s", marker) < 0)
                bail_out("out of memory");
        o.env = (const char *const[]) { env, NULL };
        r = bc_exec_start(c, id, &o, 60000, &e);
        if (!ok(r == 0 && bc_exec_wait_output(e, "started", 0, TEST_CMD_MS) == 0, "sleep 1000 started")) {
                bc_exec_free(e);
                return;
        }
        found = test_find_processes(marker, pids, ELEMENTSOF(pids));
        ok(found >= 2, "the host sees its processes (sh and sleep: %zu)", found);

        bc_exec_cancel(e);
        r = bc_exec_wait(e, TEST_CMD_MS);
        ok(r == 0 && e->status.code == GRPC_STATUS_CANCELLED, "the cancelled call ends CANCELLED (got %s)",
           bc_code_name(e->status.code));
        bc_exec_free(e);

        end = test_mono_ms() + 10000;
        while ((found = test_find_processes(marker, pids, ELEMENTSOF(pids))) > 0 && test_mono_ms() < end)
                test_sleep_ms(100);
        ok(found == 0, "cancelling the call killed the remote process tree (%zu left)", found);

        /* And from inside: no process has the marker in its environment.
         * The pattern's last character is in brackets, so this command's
         * own command line does not match it. */
        if (asprintf(&check, "grep -l '%.*s[%c]' /proc/[0-9]*/environ 2>/dev/null | wc -l",
                     (int)len - 1, marker, marker[len - 1]) < 0)
                bail_out("out of memory");
        out = test_sh_out(c, id, check);
        is_str(out ? test_chomp(out) : NULL, "0", "inside the sandbox the process is gone too");
}

static void test_not_running(BcClient *c) {
        static const char *const args[] = { "-c", "exit 0", NULL };
        BcSandboxOpts o = { .command = "/bin/sh", .args = args };
        _cleanup_bc_ BcSandbox *sb = NULL, *done_sb = NULL;
        BcExec *e = NULL;
        BcStatus st = {};
        int r;

        if (bc_create_sandbox(c, &o, &sb, &st) != 0 ||
            bc_wait_state(c, sb->sandbox_id, BC_STATE(COMPLETED), TEST_START_MS, &done_sb, &st) != 0) {
                ok(false, "a COMPLETED sandbox to exec in");
                return;
        }
        r = bc_exec_unary(c, sb->sandbox_id, (const char *const[]) { "true", NULL }, 0, NULL, &st);
        is_int(r, GRPC_STATUS_FAILED_PRECONDITION, "Exec in a COMPLETED sandbox: FAILED_PRECONDITION");
        r = bc_exec_run(c, sb->sandbox_id, (const char *const[]) { "true", NULL }, TEST_CMD_MS, &e);
        ok(r == 0 && e->status.code == GRPC_STATUS_FAILED_PRECONDITION,
           "StreamExec in a COMPLETED sandbox: FAILED_PRECONDITION (got %s)", e ? bc_code_name(e->status.code) : "?");
        bc_exec_free(e);
        e = NULL;
        r = bc_exec_run(c, "no-such-sandbox", (const char *const[]) { "true", NULL }, TEST_CMD_MS, &e);
        ok(r == 0 && e->status.code == GRPC_STATUS_NOT_FOUND,
           "StreamExec in an unknown sandbox: NOT_FOUND (got %s)", e ? bc_code_name(e->status.code) : "?");
        bc_exec_free(e);
}

int main(void) {
        BcSandboxOpts o = test_keepalive_opts();
        TestBackend t;
        BcSandbox *sb;

        if (test_needs_root())
                return 0;
        test_backend_start(&t, NULL);

        sb = test_start_sandbox(t.client, &o, "sandbox for execs");
        if (sb) {
                test_unary(t.client, sb->sandbox_id);
                test_exit_codes(t.client, sb->sandbox_id);
                test_stdin(t.client, sb->sandbox_id);
                test_large_output(t.client, sb->sandbox_id);
                test_tty(t.client, sb->sandbox_id);
                test_concurrent(t.client, sb->sandbox_id);
                test_cancel(t.client, sb->sandbox_id);
                (void)bc_stop_sandbox(t.client, sb->sandbox_id, 20000);
                bc_free(sb);
        }
        test_not_running(t.client);

        test_backend_stop(&t);
        return done();
}
