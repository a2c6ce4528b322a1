/*
 * cwsandboxctl against a real cwsandboxd and its embedded backend: every
 * command, its table and JSON output, its exit codes (the remote code of
 * exec, usage errors, not found, permission denied, an unreachable daemon),
 * stdin forwarding, a terminal under a pseudo-terminal, and a cp round trip
 * of a binary file.
 *
 * Each command runs through /bin/sh with its stdout and stderr in files, so
 * pipes into python3 (to check JSON) and cmp (to check bytes) are plain
 * shell. The daemon's socket is given through $CWSANDBOXD_SOCKET, which also
 * checks that the default socket logic honours it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon-proc.h"
#include "test-util.h"

#define WAIT_MS 60000

static DaemonProc *daemon_proc;
static char *tmp_dir;
static char *id_a;              /* a keep-alive sandbox in session ctl-test */
static char *id_b;              /* one that printed "started" in ctl-test */

/* ---- running commands ---------------------------------------------------------------------- */

static char *read_all(const char *path) {
        FILE *f = fopen(path, "re");
        char *buf = NULL;
        size_t size = 0;
        FILE *m = open_memstream(&buf, &size);
        char chunk[4096];
        size_t n;

        if (!m)
                abort();
        while (f && (n = fread(chunk, 1, sizeof(chunk), f)) > 0)
                fwrite(chunk, 1, n, m);
        if (f)
                fclose(f);
        fclose(m);
        return buf;
}

/*
 * Runs the shell command @fmt; $C is cwsandboxctl. Returns its exit status
 * (128 + signal when killed); *@ret_out and *@ret_err (may be NULL) get
 * what it printed.
 */
static int sh(char **ret_out, char **ret_err, const char *fmt, ...) _printf_(3, 4);
static int sh(char **ret_out, char **ret_err, const char *fmt, ...) {
        _cleanup_free_ char *cmd = NULL, *out_path = NULL, *err_path = NULL;
        va_list ap;
        int status;
        pid_t pid;

        va_start(ap, fmt);
        if (vasprintf(&cmd, fmt, ap) < 0)
                abort();
        va_end(ap);
        if (asprintf(&out_path, "%s/out", tmp_dir) < 0 || asprintf(&err_path, "%s/err", tmp_dir) < 0)
                abort();
        pid = fork();
        if (pid < 0)
                abort();
        if (pid == 0) {
                int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
                int err = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
                int in = open("/dev/null", O_RDONLY);

                if (out < 0 || err < 0 || in < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0 || dup2(in, 0) < 0)
                        _exit(127);
                execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
                _exit(127);
        }
        if (waitpid(pid, &status, 0) < 0)
                abort();
        if (ret_out)
                *ret_out = read_all(out_path);
        if (ret_err)
                *ret_err = read_all(err_path);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Runs @fmt and checks only its exit status. */
static bool sh_is(int want, const char *what, const char *fmt, ...) _printf_(3, 4);
static bool sh_is(int want, const char *what, const char *fmt, ...) {
        _cleanup_free_ char *cmd = NULL, *err = NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        if (vasprintf(&cmd, fmt, ap) < 0)
                abort();
        va_end(ap);
        r = sh(NULL, &err, "%s", cmd);
        if (r != want)
                diag("%s: stderr: %s", cmd, err);
        return is_int(r, want, "%s", what);
}

/* Checks one error line on stderr that starts with "cwsandboxctl: ". */
static void check_error_line(const char *err, const char *what) {
        const char *nl = strchr(err, '\n');

        ok(strncmp(err, "cwsandboxctl: ", 14) == 0 && nl && nl[1] == 0, "%s: one error line: %s", what, err);
}

/* Runs @fmt in a new pseudo-terminal of @rows x @cols, feeding it @input. */
static int pty_run(int rows, int cols, const char *input, char **ret_out, const char *cmd) {
        struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
        char *buf = NULL;
        size_t size = 0;
        FILE *m = open_memstream(&buf, &size);
        char chunk[4096];
        int master, status;
        pid_t pid;
        ssize_t n;

        pid = forkpty(&master, NULL, NULL, &ws);
        if (pid < 0)
                abort();
        if (pid == 0) {
                execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
                _exit(127);
        }
        if (input)
                (void)!write(master, input, strlen(input));
        /* Until the last process on the terminal has gone (EIO). */
        while ((n = read(master, chunk, sizeof(chunk))) > 0 || (n < 0 && errno == EINTR))
                if (n > 0)
                        fwrite(chunk, 1, (size_t)n, m);
        close(master);
        fclose(m);
        waitpid(pid, &status, 0);
        *ret_out = buf;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- global options and usage ------------------------------------------------------------ */

static void test_usage(void) {
        static const char *const cmds[] = {
                "status", "session", "run", "exec", "ls", "get", "cp", "logs", "stop", "delete", "metrics",
        };
        _cleanup_free_ char *out = NULL, *err = NULL;
        int r;

        r = sh(&out, NULL, "$C --version");
        is_int(r, 0, "--version: exit 0");
        ok(strncmp(out, "cwsandboxctl ", 13) == 0, "--version: %s", out);
        free(out);
        r = sh(&out, NULL, "$C --help");
        ok(r == 0 && strstr(out, "Exit status:"), "--help: exit 0, lists the exit codes");
        for (size_t i = 0; i < ELEMENTSOF(cmds); i++) {
                free(out);
                r = sh(&out, NULL, "$C %s --help", cmds[i]);
                ok(r == 0 && strncmp(out, "Usage: cwsandboxctl ", 20) == 0, "%s --help: exit 0, usage", cmds[i]);
        }
        free(out);
        r = sh(&out, NULL, "$C help logs");
        ok(r == 0 && strstr(out, "--timestamps"), "help logs: the logs help");

        free(err);
        r = sh(NULL, &err, "$C no-such-command");
        is_int(r, 2, "unknown command: exit 2");
        check_error_line(err, "unknown command");
        free(err);
        r = sh(NULL, &err, "$C ls --no-such-option");
        is_int(r, 2, "unknown option: exit 2");
        check_error_line(err, "unknown option");
        sh_is(2, "-o yaml: exit 2", "$C -o yaml status");
        sh_is(2, "get without an id: exit 2", "$C get");
        sh_is(2, "exec without a command: exit 2", "$C exec some-id");
        sh_is(2, "session without a subcommand: exit 2", "$C session");
        sh_is(2, "run --env without '=': exit 2", "$C run --env NOVALUE");
        sh_is(2, "cp between two local files: exit 2", "$C cp /etc/hostname /tmp/x");
        sh_is(2, "logs --since nonsense: exit 2", "$C logs --since yesterdayish x");

        free(err);
        r = sh(NULL, &err, "$C --socket %s/nothing-here.sock status", tmp_dir);
        is_int(r, 5, "unreachable daemon (bad --socket): exit 5");
        check_error_line(err, "unreachable daemon");
        sh_is(5, "unreachable daemon, socket after the command: exit 5",
              "$C status --socket %s/nothing-here.sock", tmp_dir);
}

/* ---- status and sessions ------------------------------------------------------------------- */

static void test_status(void) {
        _cleanup_free_ char *out = NULL;
        int r;

        r = sh(&out, NULL, "$C status");
        ok(r == 0 && strstr(out, "Backend:      local") && strstr(out, "Daemon:       cwsandboxd "),
           "status: table with daemon and backend");
        sh_is(0, "status -o json: the documented keys",
              "$C -o json status | python3 -c 'import json,sys; d=json.load(sys.stdin); "
              "assert set(d) == {\"socket\",\"daemon_version\",\"backend_kind\",\"backend_url\",\"uptime_ms\","
              "\"sessions\",\"connections\",\"sandboxes\",\"state_file_status\"}, d; "
              "assert d[\"backend_kind\"] == \"local\" and isinstance(d[\"sandboxes\"], dict) "
              "and d[\"uptime_ms\"] >= 0'");
}

#define SESSION_KEYS "{\"session_id\",\"name\",\"owner_uid\",\"linger_seconds\",\"sandbox_count\"," \
                     "\"connections\",\"created\",\"max_sandboxes\",\"max_creates_per_second\"}"
#define SANDBOX_KEYS "{\"sandbox_id\",\"handle_id\",\"session_id\",\"state\",\"state_reason\",\"exit_code\"," \
                     "\"tags\",\"create_time_ms\",\"start_time_ms\",\"end_time_ms\",\"scope\",\"container_image\"}"

static void test_sessions(void) {
        _cleanup_free_ char *out = NULL, *err = NULL;
        int r;

        r = sh(&out, NULL, "$C session create ctl-test --tag ctltag --env CTLENV=hello");
        ok(r == 0 && strstr(out, "Created session ctl-test"), "session create: exit 0: %s", out);
        sh_is(0, "session create -o json: a session object, created, linger -1",
              "$C -o json session create ctl-json --linger 5 | python3 -c 'import json,sys; "
              "d=json.load(sys.stdin); assert set(d) == " SESSION_KEYS ", d; "
              "assert d[\"name\"] == \"ctl-json\" and d[\"created\"] and d[\"linger_seconds\"] == 5'");
        r = sh(NULL, &err, "$C session create ctl-test");
        is_int(r, 1, "session create of an existing name: exit 1");
        check_error_line(err, "session create of an existing name");
        sh_is(2, "session create --linger -2: exit 2", "$C session create bad --linger -2");
        sh_is(0, "session create --max-sandboxes 3 --max-creates-per-second 1.5: the session's own limits",
              "$C -o json session create ctl-limits --linger 0 --max-sandboxes 3 --max-creates-per-second 1.5 | "
              "python3 -c 'import json,sys; d=json.load(sys.stdin); "
              "assert d[\"max_sandboxes\"] == 3 and d[\"max_creates_per_second\"] == 1.5, d'");
        sh_is(2, "session create --max-sandboxes -1: exit 2", "$C session create bad --max-sandboxes -1");

        free(out);
        r = sh(&out, NULL, "$C session ls");
        ok(r == 0 && strstr(out, "NAME") && strstr(out, "ctl-test") && strstr(out, "never"),
           "session ls: a table with ctl-test, linger never");
        sh_is(0, "session ls -o json: session objects",
              "$C session ls -o json | python3 -c 'import json,sys; l=json.load(sys.stdin); "
              "s=[x for x in l if x[\"name\"] == \"ctl-test\"]; assert len(s) == 1 and set(s[0]) == "
              SESSION_KEYS " and s[0][\"linger_seconds\"] == -1, l'");
        sh_is(0, "session close of a lingering session: exit 0", "$C session close ctl-json");
        sh_is(3, "session close of an unknown name: exit 3", "$C session close no-such-session");
        sh_is(3, "ls --session of an unknown name: exit 3", "$C ls --session no-such-session");
}

/* ---- run, ls, get ------------------------------------------------------------------------ */

static void test_run_ls_get(void) {
        _cleanup_free_ char *out = NULL, *json = NULL;
        int r;

        r = sh(&out, NULL, "$C run --session ctl-test --wait");
        ok(r == 0 && out[0] && !strchr(test_chomp(out), '\n') && !strchr(out, ' '), "run: prints one id: %s", out);
        id_a = TAKE_PTR(out);

        r = sh(&json, NULL, "$C -o json run --session ctl-test --image python:3.11 --tag extra --wait -- "
                            "sh -c 'echo started; exec sleep 1000'");
        is_int(r, 0, "run -o json -- CMD: exit 0");
        r = sh(&out, NULL, "printf '%%s' '%s' | python3 -c 'import json,sys; d=json.load(sys.stdin); "
                           "assert set(d) == " SANDBOX_KEYS ", d; assert d[\"state\"] == \"RUNNING\", d; "
                           "assert \"extra\" in d[\"tags\"] and \"ctltag\" in d[\"tags\"], d; "
                           "assert d[\"scope\"] == \"session\" and d[\"exit_code\"] is None, d; "
                           "print(d[\"sandbox_id\"])'", test_chomp(json));
        is_int(r, 0, "run -o json: a sandbox object, RUNNING, with its and the session's tags");
        id_b = strdup(test_chomp(out));

        free(out);
        r = sh(&out, NULL, "$C ls --session ctl-test");
        ok(r == 0 && strstr(out, "SANDBOX ID") && strstr(out, id_a) && strstr(out, id_b), "ls --session: a table of both");
        sh_is(0, "ls --session -o json: two sandbox objects",
              "$C ls -o json --session ctl-test | python3 -c 'import json,sys; l=json.load(sys.stdin); "
              "assert len(l) == 2 and all(set(x) == " SANDBOX_KEYS " for x in l), l'");
        sh_is(0, "ls --tag --status: only the tagged one",
              "$C ls -o json --tag extra --status running | python3 -c 'import json,sys; l=json.load(sys.stdin); "
              "assert [x[\"sandbox_id\"] for x in l] == [\"%s\"], l'", id_b);
        sh_is(2, "ls --status of an unknown state: exit 2", "$C ls --status sleepy");

        free(out);
        r = sh(&out, NULL, "$C get %s", id_a);
        ok(r == 0 && strstr(out, "State:        RUNNING") && strstr(out, id_a), "get: RUNNING");
        sh_is(0, "get -o json: a sandbox object",
              "$C get -o json %s | python3 -c 'import json,sys; d=json.load(sys.stdin); "
              "assert set(d) == " SANDBOX_KEYS " and d[\"sandbox_id\"] == \"%s\", d'", id_a, id_a);
        _cleanup_free_ char *err = NULL;
        r = sh(NULL, &err, "$C get no-such-sandbox");
        is_int(r, 3, "get of an unknown id: exit 3");
        check_error_line(err, "get of an unknown id");
}

/* ---- exec -------------------------------------------------------------------------------- */

static void test_exec(void) {
        _cleanup_free_ char *out = NULL, *err = NULL;
        int r;

        r = sh(&out, &err, "$C exec %s -- sh -c 'echo out; echo err >&2; exit 7'", id_a);
        is_int(r, 7, "exec: the remote exit code 7 passes through");
        is_str(out, "out\n", "exec: stdout");
        is_str(err, "err\n", "exec: stderr, apart");
        free(out);
        r = sh(&out, NULL, "$C exec --cwd /tmp --env X=1 %s -- sh -c 'pwd; echo $X $CTLENV'", id_a);
        ok(r == 0 && streq(out, "/tmp\n1 hello\n"), "exec --cwd --env, and the session's env: %s", out);
        free(out);
        r = sh(&out, NULL, "$C exec %s -- sh -c 'for i in 1 2 3; do echo $i; sleep 0.1; done'", id_a);
        ok(r == 0 && streq(out, "1\n2\n3\n"), "exec: streamed output");
        free(out);
        r = sh(&out, NULL, "$C exec %s -- cat", id_a);
        ok(r == 0 && streq(out, ""), "exec without -i: the command's stdin is empty");

        free(out);
        r = sh(&out, NULL, "printf 'a\\nb\\n' | $C exec -i %s -- cat", id_a);
        ok(r == 0 && streq(out, "a\nb\n"), "exec -i: stdin forwarded");
        sh_is(0, "exec -i: 3 MiB through cat, byte for byte",
              "head -c 3145728 /dev/urandom > %s/in && $C exec -i %s -- cat < %s/in | cmp - %s/in",
              tmp_dir, id_a, tmp_dir, tmp_dir);
        free(out);
        r = sh(&out, NULL, "printf 'abc' | $C exec -i %s -- wc -c", id_a);
        ok(r == 0 && atoi(out) == 3, "exec -i: the end of stdin reaches the command: %s", out);

        sh_is(3, "exec in an unknown sandbox: exit 3", "$C exec no-such-sandbox -- true");
        sh_is(124, "exec --timeout: the command is stopped",
              "$C exec --timeout 1 %s -- sleep 30; r=$?; [ $r -ne 0 ] && exit 124; exit 0", id_a);
}

static void test_tty(void) {
        _cleanup_free_ char *out = NULL, *cmd = NULL;
        int r;

        if (asprintf(&cmd, "\"$C\" exec -t %s -- sh -c 'stty size; test -t 0 && echo IS-A-TTY'", id_a) < 0)
                abort();
        r = pty_run(33, 101, NULL, &out, cmd);
        is_int(r, 0, "exec -t under a pty: exit 0");
        ok(strstr(out, "33 101") != NULL, "exec -t: the remote terminal has the local size: %s", out);
        ok(strstr(out, "IS-A-TTY") != NULL, "exec -t: the remote stdin is a terminal");
        free(out);
        r = sh(&out, NULL, "$C exec %s -- sh -c 'test -t 1 || echo NO-TTY'", id_a);
        ok(r == 0 && streq(out, "NO-TTY\n"), "exec without -t: no terminal");

        free(out);
        free(cmd);
        if (asprintf(&cmd, "a=$(stty -g); \"$C\" exec -it %s -- sh; r=$?; b=$(stty -g); "
                           "[ \"$a\" = \"$b\" ] && echo TERMINAL-RESTORED; exit $r", id_a) < 0)
                abort();
        r = pty_run(24, 80, "echo hi-$((6*7)); exit 5\r", &out, cmd);
        is_int(r, 5, "exec -it: the remote shell's exit code");
        ok(strstr(out, "hi-42") != NULL, "exec -it: keys reach the remote shell");
        ok(strstr(out, "TERMINAL-RESTORED") != NULL, "exec -it: the local terminal is restored");
}

/* ---- cp and logs ----------------------------------------------------------------------------- */

static void test_cp(void) {
        _cleanup_free_ char *err = NULL;
        int r;

        sh_is(0, "cp: a 6 MiB binary file in and out, identical",
              "head -c 6291456 /dev/urandom > %s/blob && $C cp %s/blob %s:/tmp/blob && "
              "$C cp %s:/tmp/blob %s/blob.back && cmp %s/blob %s/blob.back",
              tmp_dir, tmp_dir, id_a, id_a, tmp_dir, tmp_dir, tmp_dir);
        sh_is(0, "cp - and -: through stdin and stdout, identical",
              "$C cp - %s:/tmp/blob2 < %s/blob && $C cp %s:/tmp/blob2 - | cmp - %s/blob",
              id_a, tmp_dir, id_a, tmp_dir);
        sh_is(0, "cp into a local directory keeps the name",
              "mkdir -p %s/dir && $C cp %s:/tmp/blob %s/dir && cmp %s/dir/blob %s/blob",
              tmp_dir, id_a, tmp_dir, tmp_dir, tmp_dir);
        sh_is(0, "cp to a remote directory (trailing /) keeps the name",
              "$C exec %s -- rm /tmp/blob && $C cp %s/blob %s:/tmp/ && $C cp %s:/tmp/blob - | cmp - %s/blob",
              id_a, tmp_dir, id_a, id_a, tmp_dir);
        r = sh(NULL, &err, "$C cp %s:/no/such/file %s/x", id_a, tmp_dir);
        is_int(r, 3, "cp of a missing remote file: exit 3");
        check_error_line(err, "cp of a missing remote file");
        ok(access(tmp_dir, F_OK) == 0 && sh(NULL, NULL, "test ! -e %s/x", tmp_dir) == 0,
           "cp: no partial local file is left");
        sh_is(3, "cp of a missing local file: exit 3", "$C cp %s/no-such %s:/tmp/x", tmp_dir, id_a);
        sh_is(2, "cp to a relative remote path: exit 2", "$C cp %s/blob %s:relative", tmp_dir, id_a);
}

static void test_logs(void) {
        _cleanup_free_ char *out = NULL, *id = NULL;
        int r;

        r = sh(&out, NULL, "$C logs %s", id_b);
        ok(r == 0 && streq(out, "started\n"), "logs: the main process's output: %s", out);
        sh_is(0, "logs -o json: one object per line",
              "$C -o json logs %s | python3 -c 'import sys,json; l=[json.loads(x) for x in sys.stdin]; "
              "assert len(l) == 1 and set(l[0]) == {\"time_ms\",\"line\"} and l[0][\"line\"] == \"started\", l'",
              id_b);
        free(out);
        r = sh(&out, NULL, "$C logs --timestamps --since 1h %s", id_b);
        ok(r == 0 && strstr(out, " started\n") && out[0] >= '1' && out[0] <= '2', "logs --timestamps --since: %s", out);

        r = sh(&id, NULL, "$C run --session ctl-test -- sh -c 'echo one; echo two; echo three'");
        is_int(r, 0, "run of a short main process");
        free(out);
        r = sh(&out, NULL, "$C logs -f %s", test_chomp(id));
        ok(r == 0 && streq(out, "one\ntwo\nthree\n"), "logs -f: follows until the sandbox ends: %s", out);
        free(out);
        r = sh(&out, NULL, "$C logs --tail 1 %s", id);
        ok(r == 0 && streq(out, "three\n"), "logs --tail 1: the last line: %s", out);
        sh_is(3, "logs of an unknown sandbox: exit 3", "$C logs no-such-sandbox");
}

/* ---- metrics, adopt, permissions, stop, delete, close --------------------------------------------- */

static void test_metrics(void) {
        _cleanup_free_ char *out = NULL;
        int r;

        r = sh(&out, NULL, "$C metrics");
        ok(r == 0 && strstr(out, "NAME") && strstr(out, "cwsandboxd_sessions"), "metrics: a table");
        sh_is(0, "metrics -o json: numbers by name",
              "$C -o json metrics | python3 -c 'import json,sys; d=json.load(sys.stdin); "
              "assert set(d) == {\"metrics\",\"prometheus_text\"} and d[\"prometheus_text\"] == \"\", d; "
              "assert all(isinstance(v, (int, float)) for v in d[\"metrics\"].values()), d; "
              "assert d[\"metrics\"][\"cwsandboxd_sessions\"] >= 1, d'");
        free(out);
        r = sh(&out, NULL, "$C metrics --prometheus");
        ok(r == 0 && strstr(out, "# TYPE cwsandboxd_sessions gauge"), "metrics --prometheus: the text format");
        sh_is(2, "metrics --reset without --session: refused (host-wide counters only grow)", "$C metrics --reset");
        sh_is(0, "metrics --session: the session's",
              "$C -o json metrics --session ctl-test | python3 -c 'import json,sys; d=json.load(sys.stdin); "
              "assert d[\"metrics\"][\"cwsandbox/sandboxes_created\"] >= 2, d'");
        sh_is(3, "metrics --session of an unknown name: exit 3", "$C metrics --session no-such-session");
}

static void test_adopt(void) {
        static const char *const tags[] = { "cwsandboxd-uid-0", "ctl-adopt", NULL };
        BcSandboxOpts o = { .tags = tags };
        BcClient *backend = NULL;
        BcSandbox *sb = NULL;
        _cleanup_free_ char *err = NULL;
        int r;

        if (daemon_proc_backend(daemon_proc, &backend) < 0 || bc_create_running(backend, &o, WAIT_MS, &sb, NULL) != 0)
                bail_out("adopt: cannot create a sandbox on the backend");
        sh_is(0, "session adopt -o json: the sandbox, now in the session",
              "$C -o json session adopt ctl-test %s | python3 -c 'import json,sys; l=json.load(sys.stdin); "
              "assert len(l) == 1 and set(l[0]) == " SANDBOX_KEYS " and l[0][\"session_id\"], l'", sb->sandbox_id);
        sh_is(0, "get: the adopted one is in the session",
              "s=$($C -o json session ls | python3 -c 'import json,sys; "
              "print([x[\"session_id\"] for x in json.load(sys.stdin) if x[\"name\"] == \"ctl-test\"][0])') && "
              "$C -o json get %s | python3 -c 'import json,sys; d=json.load(sys.stdin); "
              "assert d[\"session_id\"] == sys.argv[1], d' \"$s\"", sb->sandbox_id);
        sh_is(0, "a second session", "$C session create ctl-other");
        r = sh(NULL, &err, "$C session adopt ctl-other %s", sb->sandbox_id);
        is_int(r, 1, "adopt of a sandbox in another session: exit 1");
        check_error_line(err, "adopt of a sandbox in another session");
        sh_is(3, "adopt of an unknown sandbox: exit 3", "$C session adopt ctl-test no-such-sandbox");
        sh_is(0, "session close of the second session", "$C session close ctl-other");
        bc_free(sb);
        bc_close(backend);
}

/* Another uid gets a permission error on root's sandboxes and sessions. */
static void test_permission(void) {
        if (sh(NULL, NULL, "command -v setpriv") != 0) {
                ok(true, "# SKIP permission: no setpriv");
                return;
        }
        /* The socket is 0666; the test directory must let others reach it. */
        chmod(daemon_proc->dir, 0755);
        sh_is(4, "get of another user's sandbox: exit 4",
              "setpriv --reuid=65534 --regid=65534 --clear-groups $C get %s", id_a);
        sh_is(4, "exec in another user's sandbox: exit 4",
              "setpriv --reuid=65534 --regid=65534 --clear-groups $C exec %s -- true", id_a);
}

static void test_stop_delete_close(void) {
        _cleanup_free_ char *out = NULL, *id = NULL, *id2 = NULL;
        int r;

        r = sh(&id, NULL, "$C run --session ctl-test");
        is_int(r, 0, "run of one to stop");
        r = sh(&out, NULL, "$C stop --grace 1 %s", test_chomp(id));
        ok(r == 0 && strstr(out, "Stopped sandbox"), "stop: exit 0: %s", out);
        sh_is(3, "stop of an unknown sandbox: exit 3", "$C stop no-such-sandbox");
        sh_is(0, "stop --missing-ok -o json: missing",
              "$C -o json stop --missing-ok no-such-sandbox | python3 -c 'import json,sys; l=json.load(sys.stdin); "
              "assert l == [{\"id\": \"no-such-sandbox\", \"missing\": True, \"state\": None, \"exit_code\": None}], l'");

        r = sh(&id2, NULL, "$C run --session ctl-test");
        is_int(r, 0, "run of one to delete");
        sh_is(0, "delete -o json: the id",
              "$C -o json delete %s | python3 -c 'import json,sys; l=json.load(sys.stdin); "
              "assert l == [{\"id\": \"%s\"}], l'", test_chomp(id2), id2);
        sh_is(3, "delete of an unknown sandbox: exit 3", "$C delete no-such-sandbox");
        sh_is(0, "delete --missing-ok of an unknown sandbox: exit 0", "$C delete --missing-ok no-such-sandbox");

        free(out);
        r = sh(&out, NULL, "$C run");
        is_int(r, 0, "run without --session");
        sh_is(0, "run without --session: the per-user session, linger never",
              "$C -o json session ls | python3 -c 'import json,sys,os; l=json.load(sys.stdin); "
              "s=[x for x in l if x[\"name\"] == \"cwsandboxctl-%%d\" %% os.getuid()]; "
              "assert len(s) == 1 and s[0][\"linger_seconds\"] == -1 and s[0][\"sandbox_count\"] == 1, l'");

        sh_is(0, "session close -o json: its sandboxes stopped, no failures",
              "$C -o json session close ctl-test | python3 -c 'import json,sys; d=json.load(sys.stdin); "
              "assert set(d) == {\"session_id\",\"name\",\"stopped\",\"failures\",\"metrics\"} and d[\"name\"] == \"ctl-test\", d; assert d[\"metrics\"][\"cwsandbox/executions\"] >= 1, d; "
              "assert d[\"stopped\"] >= 3 and d[\"failures\"] == [], d'");
        free(out);
        r = sh(&out, NULL, "$C get %s", id_a);
        ok(r == 0 && strstr(out, "State:        TERMINATED"), "get after session close: TERMINATED");
        sh_is(0, "ls --all -o json shows it TERMINATED",
              "$C ls --all -o json | python3 -c 'import json,sys; l=json.load(sys.stdin); "
              "assert [x[\"state\"] for x in l if x[\"sandbox_id\"] == \"%s\"] == [\"TERMINATED\"], l'", id_b);
        sh_is(0, "session close of the per-user session", "$C session close cwsandboxctl-$(id -u)");
}

int main(void) {
        const char *ctl = getenv("CWSANDBOXCTL");
        const char *tmp = getenv("TMPDIR");
        _cleanup_free_ char *tmpl = NULL;
        int r;

        if (test_needs_root())
                return 0;
        if (!ctl)
                bail_out("$CWSANDBOXCTL is not set");
        if (asprintf(&tmpl, "%s/test-ctl-XXXXXX", tmp && *tmp ? tmp : "/tmp") < 0)
                abort();
        tmp_dir = mkdtemp(tmpl);
        if (!tmp_dir)
                bail_out("mkdtemp: %m");
        r = daemon_proc_start(NULL, &daemon_proc);
        if (r < 0)
                bail_out("cannot start cwsandboxd: %s", strerror(-r));
        setenv("C", ctl, 1);
        setenv("CWSANDBOXD_SOCKET", daemon_proc->socket_path, 1);

        test_usage();
        test_status();
        test_sessions();
        test_run_ls_get();
        test_exec();
        test_tty();
        test_cp();
        test_logs();
        test_metrics();
        test_adopt();
        test_permission();
        test_stop_delete_close();

        daemon_proc = daemon_proc_free(daemon_proc);
        sh(NULL, NULL, "rm -rf %s", tmp_dir);
        free(id_a);
        free(id_b);
        return done();
}
