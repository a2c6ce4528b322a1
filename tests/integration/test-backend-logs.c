/*
 * StreamLogs: a full read, tail_lines, since_time, the timestamps prefix,
 * follow (a line printed later arrives; the stream ends when the sandbox
 * stops), logs of a finished sandbox, and the errors.
 *
 * The main process prints its later lines only when the test creates a file
 * in the sandbox, so since_time is checked against moments the test itself
 * separates, not against sleeps.
 */
#define _GNU_SOURCE
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-util.h"

/* The main process; $1 and $2 are the files that release its later lines. */
static const char main_script[] =
        "echo line-1; echo line-2; echo err-line >&2; echo line-3; echo line-4; echo line-5; "
        "while [ ! -e \"$1\" ]; do sleep 0.05; done; echo late-line; "
        "while [ ! -e \"$2\" ]; do sleep 0.05; done; echo followed-line; "
        BC_KEEPALIVE_SCRIPT;

static char *go1, *go2;

/* Read the logs once with @o; returns the data (heap) or NULL. */
static char *read_logs(BcClient *c, const char *id, const BcLogsOpts *o, BcLogs **ret) {
        BcLogs *l = NULL;
        char *data = NULL;
        int r;

        r = bc_logs_read(c, id, o, TEST_CMD_MS, &l);
        if (r == 0 && l->status.code == GRPC_STATUS_OK)
                data = strdup(l->data.data ? l->data.data : "");
        else if (l)
                test_diag_status("StreamLogs", l->status.code, &l->status);
        if (ret)
                *ret = l;
        else
                bc_logs_free(l);
        return data;
}

static bool wait_logs(BcClient *c, const char *id, const char *needle) {
        int64_t end = test_mono_ms() + TEST_CMD_MS;
        BcLogsOpts o = {};

        while (test_mono_ms() < end) {
                _cleanup_free_ char *d = read_logs(c, id, &o, NULL);

                if (d && strstr(d, needle))
                        return true;
                test_sleep_ms(50);
        }
        return false;
}

static bool touch(BcClient *c, const char *id, const char *path) {
        BcStatus st = {};
        int r = bc_write_file(c, id, path, "", 0, &st);

        if (r != 0)
                test_diag_status("WriteFile", r, &st);
        return r == 0;
}

static unsigned count_lines(const char *s) {
        unsigned n = 0;

        for (; *s; s++)
                n += *s == '\n';
        return n;
}

/* Every line is "<RFC 3339 time with a Z> <text>". */
static bool all_lines_stamped(const char *data, unsigned *ret_lines) {
        regex_t re;
        bool good = true;
        unsigned n = 0;

        if (regcomp(&re, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?Z [^ ]",
                    REG_EXTENDED | REG_NOSUB) != 0)
                return false;
        for (const char *p = data; *p;) {
                const char *nl = strchr(p, '\n');
                size_t len = nl ? (size_t)(nl - p) : strlen(p);
                char *line = strndup(p, len);

                if (!line || regexec(&re, line, 0, NULL, 0) != 0) {
                        diag("  not stamped: \"%s\"", line ? line : "");
                        good = false;
                }
                free(line);
                n++;
                p += len + (nl ? 1 : 0);
        }
        regfree(&re);
        *ret_lines = n;
        return good && n > 0;
}

static void test_reads(BcClient *c, const char *id) {
        _cleanup_free_ char *all = NULL, *tail = NULL, *since = NULL, *stamped = NULL;
        BcLogs *l = NULL;
        int64_t t_mid;
        unsigned n_lines = 0;

        ok(wait_logs(c, id, "line-5"), "the first lines show up in the logs");
        all = read_logs(c, id, &(BcLogsOpts) {}, &l);
        ok(all && strstr(all, "line-1\nline-2\n") && strstr(all, "line-3\nline-4\nline-5\n"),
           "a full read returns stdout lines in order");
        ok(all && strstr(all, "err-line\n"), "stderr of the main process is in the logs too");
        ok(all && !strstr(all, "late-line"), "nothing printed later is there yet");
        ok(l && l->session_id[0] && l->next_offset > 0,
           "entries carry log_session_id and next_log_offset (\"%s\", %llu)", l ? l->session_id : "",
           (unsigned long long)(l ? l->next_offset : 0));
        ok(l && l->first_ts_ns > 0, "entries carry a timestamp");
        l = bc_logs_free(l);

        /* Everything so far is older than t_mid; late-line is newer. */
        t_mid = test_now_ns();
        test_sleep_ms(100);
        ok(touch(c, id, go1) && wait_logs(c, id, "late-line"), "late-line printed on request");

        since = read_logs(c, id, &(BcLogsOpts) { .since_ns = t_mid }, NULL);
        is_str(since, "late-line\n", "since_time returns only the newer line");

        /* stdout and stderr are separate pipes, so only lines of one
         * stream have a fixed order; late-line is last in any case. */
        tail = read_logs(c, id, &(BcLogsOpts) { .tail_lines = 1 }, NULL);
        is_str(tail, "late-line\n", "tail_lines=1 returns the last line");
        free(tail);
        tail = read_logs(c, id, &(BcLogsOpts) { .tail_lines = 2 }, NULL);
        ok(tail && count_lines(tail) == 2 && strlen(tail) >= 10 && streq(tail + strlen(tail) - 10, "late-line\n"),
           "tail_lines=2 returns two lines ending with the last (\"%s\")", tail ? tail : "");

        stamped = read_logs(c, id, &(BcLogsOpts) { .timestamps = true }, NULL);
        ok(stamped && all_lines_stamped(stamped, &n_lines) && n_lines == 7,
           "timestamps=true prefixes each of the 7 lines with an RFC 3339 time");
        ok(stamped && strstr(stamped, "Z line-1\n"), "the text follows the time after one space");
        if (stamped)
                diag("stamped logs:\n%s", test_chomp(stamped));
}

static void test_follow(BcClient *c, const char *id) {
        BcLogs *l = NULL;
        int r;

        r = bc_logs_start(c, id, &(BcLogsOpts) { .follow = true, .tail_lines = 1 }, 60000, &l);
        if (!ok(r == 0 && bc_logs_wait_data(l, "late-line", TEST_CMD_MS) == 0, "follow starts with the tail")) {
                bc_logs_free(l);
                return;
        }
        ok(!strstr(l->data.data, "line-5"), "follow with tail_lines=1 skips older lines");
        ok(touch(c, id, go2), "asked the main process for one more line");
        ok(bc_logs_wait_data(l, "followed-line", TEST_CMD_MS) == 0, "follow receives a line printed later");
        ok(!l->ended, "the follow stream is still open while the sandbox runs");

        ok(bc_delete_sandbox(c, id, &(BcDeleteOpts) { .grace_period_seconds = 5 }, NULL, NULL) == 0,
           "sandbox deleted while following");
        r = bc_logs_wait(l, 20000);
        ok(r == 0 && l->ended, "the follow stream ends when the sandbox stops");
        ok(l->ended && l->status.code == GRPC_STATUS_OK, "and ends with status OK (got %s \"%s\")",
           bc_code_name(l->status.code), l->status.details);
        bc_logs_free(l);
}

static void test_finished(BcClient *c) {
        static const char *const args[] = { "-c", "echo bye", NULL };
        BcSandboxOpts o = { .command = "/bin/sh", .args = args };
        _cleanup_bc_ BcSandbox *sb = NULL, *end = NULL;
        _cleanup_free_ char *data = NULL;
        BcLogs *l = NULL;
        BcStatus st = {};
        int r;

        if (bc_create_sandbox(c, &o, &sb, &st) != 0 ||
            bc_wait_state(c, sb->sandbox_id, BC_STATE(COMPLETED), TEST_START_MS, &end, &st) != 0) {
                ok(false, "a COMPLETED sandbox to read logs from");
                return;
        }
        data = read_logs(c, sb->sandbox_id, &(BcLogsOpts) {}, NULL);
        is_str(data, "bye\n", "the logs of a COMPLETED sandbox can still be read");

        r = bc_logs_read(c, sb->sandbox_id, &(BcLogsOpts) { .follow = true }, TEST_CMD_MS, &l);
        /* Like `kubectl logs -f` on a finished pod: what there is, then the end. */
        ok(r == 0 && l->status.code == GRPC_STATUS_OK && l->data.len == 4 && memcmp(l->data.data, "bye\n", 4) == 0,
           "follow on a COMPLETED sandbox returns its logs and ends OK (got %s)",
           l ? bc_code_name(l->status.code) : "?");
        l = bc_logs_free(l);

        r = bc_logs_read(c, "no-such-sandbox", &(BcLogsOpts) {}, TEST_CMD_MS, &l);
        ok(r == 0 && l->status.code == GRPC_STATUS_NOT_FOUND, "StreamLogs of an unknown sandbox: NOT_FOUND (got %s)",
           l ? bc_code_name(l->status.code) : "?");
        bc_logs_free(l);
}

int main(void) {
        _cleanup_free_ char *m1 = test_marker("go"), *m2 = test_marker("go");
        const char *args[6] = { "-c", main_script, "sh", NULL, NULL };
        BcSandboxOpts o = { .command = "/bin/sh", .args = args };
        TestBackend t;
        BcSandbox *sb;

        if (test_needs_root())
                return 0;
        if (asprintf(&go1, "/tmp/%s", m1) < 0 || asprintf(&go2, "/tmp/%s", m2) < 0)
                bail_out("out of memory");
        args[3] = go1;
        args[4] = go2;
        test_backend_start(&t, NULL);

        sb = test_start_sandbox(t.client, &o, "sandbox that prints lines on request");
        if (sb) {
                test_reads(t.client, sb->sandbox_id);
                test_follow(t.client, sb->sandbox_id);
                bc_free(sb);
        }
        test_finished(t.client);

        test_backend_stop(&t);
        free(go1);
        free(go2);
        return done();
}
