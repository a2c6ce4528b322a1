/*
 * Exec, files and logs end to end: a real cwsandboxd on its embedded backend,
 * driven by raw frames from this process and from a child process, against
 * real sandboxes. What the command saw (its terminal size, its stdin), what
 * the client received (every byte, in order, only as credit allows), and
 * whether a remote process is really gone after a cancel or a killed client
 * are checked on the sandbox and in /proc, not on the daemon's word.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon-calls.h"
#include "daemon-proc.h"
#include "test-util.h"

#define RECV_MS         30000           /* a limit for one frame, not an expectation */
#define QUIET_MS        1000            /* no frame for this long: the stream has paused */
#define GONE_MS         10000           /* a killed command must be gone within this */
#define MAX_FILE        (4u * 1024 * 1024)
#define CODE(x)         GRPC_STATUS_##x

typedef Cwsandboxd__V1__ClientFrame ClientFrame;
typedef Cwsandboxd__V1__DaemonFrame DaemonFrame;
typedef Cwsandboxd__V1__ExecRequest ExecRequest;

static DaemonProc *daemon_proc;
static BcClient *backend;
static char *session_id;
static char sandbox[96];                /* the keep-alive sandbox's handle id */

/* What one call sent back, data frames and the final frame together. */
typedef struct Reply {
        char *out, *err;                /* stdout (or file, log) and stderr bytes, NUL-terminated */
        size_t out_len, err_len;
        bool has_exit;
        int exit_code;
        bool last_chunk;
        uint64_t bytes_written;
        bool ended;
        int code;                       /* of the final frame; -1 before it */
        char reason[96];
        char message[512];
} Reply;

static void reply_init(Reply *r) {
        *r = (Reply) { .code = -1 };
}

static void reply_clear(Reply *r) {
        free(r->out);
        free(r->err);
        reply_init(r);
}

static void append(char **buf, size_t *len, const ProtobufCBinaryData *d) {
        char *p = realloc(*buf, *len + d->len + 1);

        if (!p)
                bail_out("out of memory");
        if (d->len)
                memcpy(p + *len, d->data, d->len);
        *len += d->len;
        p[*len] = 0;
        *buf = p;
}

static FrameClient *connect_or_bail(void) {
        FrameClient *c = NULL;
        int r = dc_connect(daemon_proc->socket_path, &c);

        if (r != 0)
                bail_out("connect: %d", r);
        return c;
}

/* ---- sending ------------------------------------------------------------------------------- */

static bool send_frame(FrameClient *c, ClientFrame *f) {
        int r = frame_client_send(c, f);

        if (r != 0)
                diag("send: %s", strerror(-r));
        return r == 0;
}

/* Start a call with a fresh id; the id, or 0 when it could not be sent. */
static uint64_t start_call(FrameClient *c, ClientFrame *f) {
        f->call_id = dc_next_id();
        return send_frame(c, f) ? f->call_id : 0;
}

static uint64_t start_exec(FrameClient *c, ExecRequest *req) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        req->sandbox_id = sandbox;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_EXEC;
        f.exec = req;
        return start_call(c, &f);
}

static void send_input(FrameClient *c, uint64_t id, Cwsandboxd__V1__ExecInput *in) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        f.call_id = id;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_EXEC_INPUT;
        f.exec_input = in;
        (void)send_frame(c, &f);
}

static void send_stdin(FrameClient *c, uint64_t id, const void *data, size_t n) {
        Cwsandboxd__V1__ExecInput in = CWSANDBOXD__V1__EXEC_INPUT__INIT;

        in.input_case = CWSANDBOXD__V1__EXEC_INPUT__INPUT_STDIN;
        in.stdin = (ProtobufCBinaryData) { .len = n, .data = (uint8_t *)data };
        send_input(c, id, &in);
}

static void send_close(FrameClient *c, uint64_t id) {
        Cwsandboxd__V1__ExecInput in = CWSANDBOXD__V1__EXEC_INPUT__INIT;

        in.input_case = CWSANDBOXD__V1__EXEC_INPUT__INPUT_CLOSE;
        in.close = true;
        send_input(c, id, &in);
}

static void send_resize(FrameClient *c, uint64_t id, uint32_t width, uint32_t height) {
        Cwsandboxd__V1__ExecInput in = CWSANDBOXD__V1__EXEC_INPUT__INIT;
        Cwsandboxd__V1__TtySize size = CWSANDBOXD__V1__TTY_SIZE__INIT;

        size.width = width;
        size.height = height;
        in.input_case = CWSANDBOXD__V1__EXEC_INPUT__INPUT_RESIZE;
        in.resize = &size;
        send_input(c, id, &in);
}

static void send_credit(FrameClient *c, uint64_t id, uint32_t bytes) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__Credit credit = CWSANDBOXD__V1__CREDIT__INIT;

        credit.bytes = bytes;
        f.call_id = id;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_CREDIT;
        f.credit = &credit;
        (void)send_frame(c, &f);
}

static void send_cancel(FrameClient *c, uint64_t id) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__Cancel cancel = CWSANDBOXD__V1__CANCEL__INIT;

        f.call_id = id;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_CANCEL;
        f.cancel = &cancel;
        (void)send_frame(c, &f);
}

/* ---- receiving ----------------------------------------------------------------------------- */

/* Take what frame @f carries into @r; returns its data bytes (stdout or stderr). */
static size_t take_frame(const DaemonFrame *f, Reply *r) {
        const ProtobufCBinaryData *data = NULL;

        switch (f->body_case) {
        case CWSANDBOXD__V1__DAEMON_FRAME__BODY_EXEC_OUTPUT:
                data = &f->exec_output->data;
                if (f->exec_output->stream == CWSANDBOXD__V1__EXEC_OUTPUT__STREAM__STDERR) {
                        append(&r->err, &r->err_len, data);
                        return data->len;
                }
                break;
        case CWSANDBOXD__V1__DAEMON_FRAME__BODY_EXEC_EXIT:
                r->has_exit = true;
                r->exit_code = f->exec_exit->exit_code;
                break;
        case CWSANDBOXD__V1__DAEMON_FRAME__BODY_FILE_CHUNK:
                data = &f->file_chunk->data;
                r->last_chunk = f->file_chunk->last;
                break;
        case CWSANDBOXD__V1__DAEMON_FRAME__BODY_LOG_LINE:
                data = &f->log_line->data;
                break;
        case CWSANDBOXD__V1__DAEMON_FRAME__BODY_WRITE_FILE:
                r->bytes_written = f->write_file->bytes_written;
                break;
        default:
                break;
        }
        if (data)
                append(&r->out, &r->out_len, data);
        return data ? data->len : 0;
}

/*
 * Receive the next frame of call @id into @r, waiting up to @timeout_ms.
 * With @grant, the data it carried is granted back as credit. Returns 0, or
 * a negative errno (-ETIMEDOUT) or FRAME_CLIENT_E_EOF; frames of other calls
 * are reported and dropped.
 */
static int recv_one(FrameClient *c, uint64_t id, Reply *r, bool grant, int timeout_ms) {
        DaemonFrame *f = NULL;
        size_t n;
        int k;

        for (;;) {
                k = frame_client_recv(c, timeout_ms, &f);
                if (k != 0)
                        return k;
                if (f->call_id == id)
                        break;
                diag("a frame for call %llu, not %llu", (unsigned long long)f->call_id, (unsigned long long)id);
                frame_client_frame_free(f);
        }
        n = take_frame(f, r);
        if (f->final) {
                r->ended = true;
                r->code = f->error ? f->error->code : 0;
                if (f->error) {
                        snprintf(r->reason, sizeof(r->reason), "%s", f->error->reason);
                        snprintf(r->message, sizeof(r->message), "%s", f->error->message);
                }
        } else if (grant && n > 0)
                send_credit(c, id, (uint32_t)n);
        frame_client_frame_free(f);
        return 0;
}

/* Receive until @needle is in the output; false when the call ended (or stalled) first. */
static bool recv_until(FrameClient *c, uint64_t id, Reply *r, const char *needle) {
        while (!(r->out && strstr(r->out, needle)))
                if (r->ended || recv_one(c, id, r, true, RECV_MS) != 0)
                        return false;
        return true;
}

/* Receive until the final frame; its code, or -1 when it did not come. */
static int recv_end(FrameClient *c, uint64_t id, Reply *r) {
        while (!r->ended)
                if (recv_one(c, id, r, true, RECV_MS) != 0) {
                        diag("call %llu: no final frame", (unsigned long long)id);
                        return -1;
                }
        if (r->code != 0)
                diag("call %llu: code %d: %s [%s]", (unsigned long long)id, r->code, r->message, r->reason);
        return r->code;
}

/* ---- helpers ------------------------------------------------------------------------------- */

/* "sh -c @script" in the keep-alive sandbox; its stdout (heap) when it exited 0, else NULL. */
static char *sh(FrameClient *c, const char *script) {
        const char *const argv[] = { "/bin/sh", "-c", script, NULL };
        char *out = NULL;
        int code = -1, r;
        DcError err;

        r = dc_exec(c, sandbox, argv, &out, NULL, &code, &err);
        if (r != 0 || code != 0) {
                diag("sh %s: %d %s, exit %d", script, r, r ? err.message : "", code);
                free(out);
                return NULL;
        }
        return out;
}

static bool processes_gone(const char *marker) {
        pid_t pids[4];
        int64_t end = test_mono_ms() + GONE_MS;

        while (test_find_processes(marker, pids, ELEMENTSOF(pids)) > 0) {
                if (test_mono_ms() > end)
                        return false;
                test_sleep_ms(50);
        }
        return true;
}

/* A long command that prints "ready" first and carries @marker in its argv and environment. */
static void long_command(ExecRequest *req, const char *marker, char *script, size_t size,
                         Cwsandboxd__V1__ExecRequest__EnvEntry *env, Cwsandboxd__V1__ExecRequest__EnvEntry **envp,
                         char **argv) {
        snprintf(script, size, "echo ready; sleep 300; echo %s", marker);
        argv[0] = (char *)"/bin/sh";
        argv[1] = (char *)"-c";
        argv[2] = script;
        env->key = (char *)"CWS_OPS_MARKER";
        env->value = (char *)marker;
        *envp = env;
        req->command = argv;
        req->n_command = 3;
        req->env = envp;
        req->n_env = 1;
}

/* ---- exec ---------------------------------------------------------------------------------- */

static void test_buffered(FrameClient *c) {
        const char *const argv[] = { "/bin/sh", "-c", "echo out; echo err >&2; exit 3", NULL };
        _cleanup_free_ char *out = NULL, *err = NULL;
        int code = -1;

        is_int(dc_exec(c, sandbox, argv, &out, &err, &code, NULL), 0, "buffered exec: the call succeeds");
        is_str(out, "out\n", "buffered exec: stdout");
        is_str(err, "err\n", "buffered exec: stderr");
        is_int(code, 3, "buffered exec: exit code 3 is reported as 3");
}

static void test_streamed(FrameClient *c) {
        char *argv[] = {
                (char *)"/bin/sh", (char *)"-c",
                (char *)"i=0; while [ $i -lt 400 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done; exit 5",
        };
        ExecRequest req = CWSANDBOXD__V1__EXEC_REQUEST__INIT;
        char *want_out = NULL, *want_err = NULL;
        size_t out_size = 0, err_size = 0;
        FILE *fo = open_memstream(&want_out, &out_size), *fe = open_memstream(&want_err, &err_size);
        uint64_t id;
        Reply r;

        for (int i = 0; i < 400; i++) {
                fprintf(fo, "out%d\n", i);
                fprintf(fe, "err%d\n", i);
        }
        fclose(fo);
        fclose(fe);
        reply_init(&r);
        req.command = argv;
        req.n_command = ELEMENTSOF(argv);
        id = start_exec(c, &req);
        is_int(recv_end(c, id, &r), 0, "streamed exec: ends OK");
        ok(r.has_exit && r.exit_code == 5, "streamed exec: ExecExit 5 (%d, %d)", r.has_exit, r.exit_code);
        is_str(r.out, want_out, "streamed exec: stdout complete and in order");
        is_str(r.err, want_err, "streamed exec: stderr complete and in order");
        reply_clear(&r);
        free(want_out);
        free(want_err);
}

static void test_stdin(FrameClient *c) {
        static const size_t sizes[] = { 1, 1000, 70000, 200000, 7 };    /* 70000 and up: split at 64 KiB */
        char *argv[] = { (char *)"cat" };
        ExecRequest req = CWSANDBOXD__V1__EXEC_REQUEST__INIT;
        size_t total = 0, off = 0;
        uint8_t *data;
        uint64_t id;
        Reply r;

        for (size_t i = 0; i < ELEMENTSOF(sizes); i++)
                total += sizes[i];
        data = malloc(total);
        if (!data)
                bail_out("out of memory");
        for (size_t i = 0; i < total; i++)
                data[i] = (uint8_t)(i * 131 + (i >> 9));        /* every byte value, NULs too */
        reply_init(&r);
        req.command = argv;
        req.n_command = 1;
        req.stdin = true;
        req.initial_credit = 1024 * 1024;
        id = start_exec(c, &req);
        for (size_t i = 0; i < ELEMENTSOF(sizes); off += sizes[i], i++)
                send_stdin(c, id, data + off, sizes[i]);
        send_close(c, id);
        is_int(recv_end(c, id, &r), 0, "stdin: cat ends OK after close");
        ok(r.has_exit && r.exit_code == 0, "stdin: cat exits 0");
        is_int(r.out_len, total, "stdin: as many bytes back as sent");
        ok(r.out_len == total && memcmp(r.out, data, total) == 0, "stdin: the same bytes back");
        reply_clear(&r);
        free(data);
}

static void test_tty(FrameClient *c) {
        char *argv[] = { (char *)"/bin/sh", (char *)"-c", (char *)"while :; do stty size; sleep 0.2; done" };
        ExecRequest req = CWSANDBOXD__V1__EXEC_REQUEST__INIT;
        uint64_t id;
        Reply r;

        reply_init(&r);
        req.command = argv;
        req.n_command = ELEMENTSOF(argv);
        req.stdin = true;
        req.tty = true;
        req.tty_width = 100;
        req.tty_height = 40;
        id = start_exec(c, &req);
        ok(recv_until(c, id, &r, "40 100"), "tty: stty sees 40 rows, 100 columns");
        ok(!strstr(r.out ? r.out : "", "50 132"), "tty: not the later size yet");
        send_resize(c, id, 132, 50);
        ok(recv_until(c, id, &r, "50 132"), "tty: after a resize stty sees 50 rows, 132 columns");
        send_cancel(c, id);
        is_int(recv_end(c, id, &r), CODE(CANCELLED), "tty: the loop ends CANCELLED");
        reply_clear(&r);
}

static void test_cancel(FrameClient *c) {
        _cleanup_free_ char *marker = test_marker("ops-cancel");
        Cwsandboxd__V1__ExecRequest__EnvEntry env = CWSANDBOXD__V1__EXEC_REQUEST__ENV_ENTRY__INIT, *envp;
        ExecRequest req = CWSANDBOXD__V1__EXEC_REQUEST__INIT;
        char script[256], *argv[3];
        pid_t pids[4];
        uint64_t id;
        Reply r;

        reply_init(&r);
        long_command(&req, marker, script, sizeof(script), &env, &envp, argv);
        id = start_exec(c, &req);
        ok(recv_until(c, id, &r, "ready"), "cancel: output streams while the command runs");
        ok(test_find_processes(marker, pids, ELEMENTSOF(pids)) > 0, "cancel: the command runs in the sandbox");
        send_cancel(c, id);
        is_int(recv_end(c, id, &r), CODE(CANCELLED), "cancel: the call ends CANCELLED");
        ok(!r.has_exit, "cancel: no exit status is made up");
        ok(processes_gone(marker), "cancel: the remote process is gone");
        reply_clear(&r);
}

/* The child: start the long command, say "ready" on @fd after its first output, wait to be killed. */
static _noreturn_ void killed_client(const char *marker, int fd) {
        Cwsandboxd__V1__ExecRequest__EnvEntry env = CWSANDBOXD__V1__EXEC_REQUEST__ENV_ENTRY__INIT, *envp;
        ExecRequest req = CWSANDBOXD__V1__EXEC_REQUEST__INIT;
        char script[256], *argv[3];
        FrameClient *c = NULL;
        uint64_t id;
        Reply r;

        reply_init(&r);
        if (dc_connect(daemon_proc->socket_path, &c) != 0)
                _exit(1);
        long_command(&req, marker, script, sizeof(script), &env, &envp, argv);
        id = start_exec(c, &req);
        if (!id || !recv_until(c, id, &r, "ready"))
                _exit(1);
        if (write(fd, "r", 1) != 1)
                _exit(1);
        for (;;)
                pause();
}

static void test_killed_client(void) {
        _cleanup_free_ char *marker = test_marker("ops-killed");
        struct pollfd p = { .events = POLLIN };
        int pipefd[2], status;
        pid_t pid, pids[4];
        char c = 0;

        if (pipe(pipefd) < 0)
                bail_out("pipe: %m");
        fflush(stdout);
        pid = fork();
        if (pid < 0)
                bail_out("fork: %m");
        if (pid == 0) {
                close(pipefd[0]);
                killed_client(marker, pipefd[1]);
        }
        close(pipefd[1]);
        p.fd = pipefd[0];
        ok(poll(&p, 1, RECV_MS) == 1 && read(pipefd[0], &c, 1) == 1 && c == 'r',
           "killed client: its exec has started");
        ok(test_find_processes(marker, pids, ELEMENTSOF(pids)) > 0, "killed client: its command runs");
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        close(pipefd[0]);
        ok(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "killed client: killed with SIGKILL");
        ok(processes_gone(marker), "killed client: the remote process is gone");
}

static void set_exec_drop(bool on) {
        Cwsandboxlocal__V1__Fault fault = CWSANDBOXLOCAL__V1__FAULT__INIT;
        BcStatus st;

        fault.method = (char *)"StreamExec";
        fault.drop_rate = 1.0;
        if (bc_set_faults(backend, &fault, on ? 1 : 0, &st) != 0)
                bail_out("set faults: %s", st.details);
}

static void test_lost_stream(FrameClient *c) {
        const char *const argv[] = { "true", NULL };
        char *cmd[] = { (char *)"true" };
        ExecRequest req = CWSANDBOXD__V1__EXEC_REQUEST__INIT;
        _cleanup_free_ char *out = NULL;
        int code = -1;
        uint64_t id;
        Reply r;

        reply_init(&r);
        set_exec_drop(true);
        req.command = cmd;
        req.n_command = 1;
        id = start_exec(c, &req);
        ok(recv_end(c, id, &r) > 0, "lost stream: a streamed exec ends with an error");
        ok(!r.has_exit, "lost stream: no ExecExit (%d)", r.exit_code);
        ok(dc_exec(c, sandbox, argv, NULL, NULL, &code, NULL) > 0, "lost stream: a buffered exec ends with an error");
        set_exec_drop(false);
        out = sh(c, "echo back");
        is_str(out, "back\n", "lost stream: exec works again once the streams are whole");
        reply_clear(&r);
}

/* Output of several times the initial credit pauses until credit comes, then arrives whole. */
static void test_credit(FrameClient *c) {
        char *argv[] = { (char *)"seq", (char *)"1", (char *)"300000" };
        ExecRequest req = CWSANDBOXD__V1__EXEC_REQUEST__INIT;
        char *want = NULL;
        size_t want_len = 0, got;
        FILE *f = open_memstream(&want, &want_len);
        uint64_t id;
        Reply r;
        int k = 0;

        for (int i = 1; i <= 300000; i++)
                fprintf(f, "%d\n", i);
        fclose(f);
        reply_init(&r);
        req.command = argv;
        req.n_command = ELEMENTSOF(argv);
        req.initial_credit = 16 * 1024;
        id = start_exec(c, &req);
        while (r.out_len == 0 && !r.ended && k == 0)
                k = recv_one(c, id, &r, false, RECV_MS);
        while (k == 0 && !r.ended)
                k = recv_one(c, id, &r, false, QUIET_MS);
        got = r.out_len;
        diag("credit: %zu bytes before any credit was granted", got);
        ok(k == -ETIMEDOUT && got > 0 && got < want_len / 4, "credit: output pauses once the credit is used up");
        send_credit(c, id, (uint32_t)got);
        is_int(recv_end(c, id, &r), 0, "credit: ends OK as credit is granted");
        ok(r.has_exit && r.exit_code == 0, "credit: exit 0");
        is_int(r.out_len, want_len, "credit: every byte arrives");
        ok(r.out_len == want_len && memcmp(r.out, want, want_len) == 0, "credit: in order");
        reply_clear(&r);
        free(want);
}

/* ---- files --------------------------------------------------------------------------------- */

static uint64_t start_write(FrameClient *c, const char *path, uint64_t size) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__WriteFileRequest req = CWSANDBOXD__V1__WRITE_FILE_REQUEST__INIT;

        req.sandbox_id = sandbox;
        req.path = (char *)path;
        req.size = size;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_WRITE_FILE;
        f.write_file = &req;
        return start_call(c, &f);
}

static uint64_t start_read(FrameClient *c, const char *path) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__ReadFileRequest req = CWSANDBOXD__V1__READ_FILE_REQUEST__INIT;

        req.sandbox_id = sandbox;
        req.path = (char *)path;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_READ_FILE;
        f.read_file = &req;
        return start_call(c, &f);
}

static void send_chunk(FrameClient *c, uint64_t id, const uint8_t *data, size_t n, bool last) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__FileChunk chunk = CWSANDBOXD__V1__FILE_CHUNK__INIT;

        chunk.data = (ProtobufCBinaryData) { .len = n, .data = (uint8_t *)data };
        chunk.last = last;
        f.call_id = id;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_FILE_CHUNK;
        f.file_chunk = &chunk;
        (void)send_frame(c, &f);
}

static void test_file_round_trip(FrameClient *c) {
        const size_t size = 3 * 1024 * 1024 + 4097, chunk = 1024 * 1024;
        _cleanup_free_ char *count = NULL, *want = NULL;
        uint8_t *blob = malloc(size);
        uint32_t x = 2463534242u;
        uint64_t id;
        Reply r;

        if (!blob)
                bail_out("out of memory");
        for (size_t i = 0; i < size; i++) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                blob[i] = (uint8_t)x;
        }
        reply_init(&r);
        id = start_write(c, "/tmp/blob.bin", size);
        for (size_t off = 0; off < size; off += chunk)
                send_chunk(c, id, blob + off, MIN(chunk, size - off), off + chunk >= size);
        is_int(recv_end(c, id, &r), 0, "files: write a %zu-byte binary file", size);
        is_int(r.bytes_written, size, "files: every byte written");
        reply_clear(&r);

        count = sh(c, "wc -c < /tmp/blob.bin");
        if (asprintf(&want, "%zu\n", size) < 0)
                bail_out("out of memory");
        is_str(count, want, "files: the sandbox sees a file of that size");

        id = start_read(c, "/tmp/blob.bin");
        is_int(recv_end(c, id, &r), 0, "files: read it back");
        ok(r.last_chunk, "files: the last chunk says so");
        is_int(r.out_len, size, "files: as many bytes as written");
        ok(r.out_len == size && memcmp(r.out, blob, size) == 0, "files: the same bytes");
        reply_clear(&r);
        free(blob);
}

static void test_file_errors(FrameClient *c) {
        _cleanup_free_ char *made = NULL;
        uint64_t id;
        Reply r;

        reply_init(&r);
        id = start_write(c, "/tmp/too-big", MAX_FILE + 1);
        is_int(recv_end(c, id, &r), CODE(RESOURCE_EXHAUSTED), "files: a write above max_file_bytes is refused");
        is_str(r.reason, "CWSANDBOX_FILE_TOO_LARGE", "files: with the reason");
        reply_clear(&r);

        made = sh(c, "head -c 5242880 /dev/zero > /tmp/big.bin && echo made");
        is_str(made, "made\n", "files: a 5 MiB file made in the sandbox");
        id = start_read(c, "/tmp/big.bin");
        is_int(recv_end(c, id, &r), CODE(RESOURCE_EXHAUSTED), "files: a read above max_file_bytes is refused");
        is_str(r.reason, "CWSANDBOX_FILE_TOO_LARGE", "files: with the reason");
        is_int(r.out_len, 0, "files: and no data");
        reply_clear(&r);

        id = start_read(c, "/tmp/no-such-file");
        is_int(recv_end(c, id, &r), CODE(NOT_FOUND), "files: a missing file is NOT_FOUND");
        reply_clear(&r);
}

/* ---- logs ---------------------------------------------------------------------------------- */

/*
 * The main process prints five lines, then copies whatever is written to
 * the FIFO /tmp/feed to its output, so the test decides when it prints.
 */
static const char *logs_main =
        "mkfifo /tmp/feed; for i in 1 2 3 4 5; do echo log$i; done; while :; do cat /tmp/feed; done";

static uint64_t start_logs(FrameClient *c, const char *id, bool follow, int tail) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__LogsRequest req = CWSANDBOXD__V1__LOGS_REQUEST__INIT;

        req.sandbox_id = (char *)id;
        req.follow = follow;
        req.tail_lines = tail;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_LOGS;
        f.logs = &req;
        return start_call(c, &f);
}

/* Read the logs (no follow) until the main process has printed its five lines. */
static bool logs_ready(FrameClient *c, const char *id) {
        int64_t end = test_mono_ms() + TEST_START_MS;
        bool ready = false;
        Reply r;

        while (!ready && test_mono_ms() < end) {
                reply_init(&r);
                ready = recv_end(c, start_logs(c, id, false, 0), &r) == 0 && r.out && strstr(r.out, "log5\n");
                reply_clear(&r);
                if (!ready)
                        test_sleep_ms(100);
        }
        return ready;
}

/* Have the main process of @id print @line, through another connection. */
static bool logs_feed(FrameClient *other, const char *id, const char *line) {
        const char *const argv[] = { "/bin/sh", "-c", "echo \"$0\" > /tmp/feed", line, NULL };
        int code = -1;

        return dc_exec(other, id, argv, NULL, NULL, &code, NULL) == 0 && code == 0;
}

static void test_logs(FrameClient *c) {
        Cwsandboxd__V1__SandboxArgs args = CWSANDBOXD__V1__SANDBOX_ARGS__INIT;
        char *argv[] = { (char *)"-c", (char *)logs_main };
        FrameClient *other = connect_or_bail();
        DcInfo info;
        DcError err;
        uint64_t id;
        Reply r;

        args.command = (char *)"/bin/sh";
        args.args = argv;
        args.n_args = ELEMENTSOF(argv);
        args.has_args = true;
        if (dc_create(c, session_id, &args, CWSANDBOXD__V1__SCOPE__SCOPE_SESSION, true, &info, &err) != 0)
                bail_out("create the logs sandbox: %s", err.message);
        ok(logs_ready(c, info.handle_id), "logs: the main process's lines are in the logs");

        reply_init(&r);
        id = start_logs(c, info.handle_id, false, 2);
        is_int(recv_end(c, id, &r), 0, "logs: tail 2 ends OK");
        is_str(r.out, "log4\nlog5\n", "logs: tail 2 is the last two lines");
        reply_clear(&r);

        id = start_logs(c, info.handle_id, true, 0);
        ok(recv_until(c, id, &r, "log1\nlog2\nlog3\nlog4\nlog5\n"), "logs: follow starts with what was printed");
        ok(!strstr(r.out ? r.out : "", "fed-1"), "logs: nothing more yet");
        ok(logs_feed(other, info.handle_id, "fed-1"), "logs: the main process prints fed-1");
        ok(recv_until(c, id, &r, "log5\nfed-1\n"), "logs: follow shows it");
        ok(logs_feed(other, info.handle_id, "fed-2"), "logs: the main process prints fed-2");
        ok(recv_until(c, id, &r, "fed-1\nfed-2\n"), "logs: follow shows that too, in order");
        send_cancel(c, id);
        is_int(recv_end(c, id, &r), CODE(CANCELLED), "logs: a cancelled follow ends CANCELLED");
        reply_clear(&r);

        id = start_logs(c, info.handle_id, false, 1);
        is_int(recv_end(c, id, &r), 0, "logs: the connection serves calls after the cancel");
        is_str(r.out, "fed-2\n", "logs: tail 1 is the last line fed");
        reply_clear(&r);
        frame_client_free(other);
}

int main(void) {
        const char *const args[] = { "--max-file-bytes", "4MiB", NULL };
        FrameClient *c;
        DcInfo info;
        DcError err;
        int r, status = -1;

        if (test_needs_root())
                return 0;
        r = daemon_proc_start(args, &daemon_proc);
        if (r < 0)
                bail_out("cannot start cwsandboxd: %s", strerror(-r));
        r = daemon_proc_backend(daemon_proc, &backend);
        if (r < 0)
                bail_out("cannot reach the embedded backend: %s", strerror(-r));
        c = connect_or_bail();
        if (dc_attach(c, "ops", NULL, DC_LINGER_UNSET, &session_id, NULL, &err) != 0)
                bail_out("attach: %s", err.message);
        if (dc_create(c, session_id, NULL, CWSANDBOXD__V1__SCOPE__SCOPE_SESSION, true, &info, &err) != 0)
                bail_out("create: %s", err.message);
        snprintf(sandbox, sizeof(sandbox), "%s", info.handle_id);

        test_buffered(c);
        test_streamed(c);
        test_stdin(c);
        test_tty(c);
        test_cancel(c);
        test_killed_client();
        test_lost_stream(c);
        test_credit(c);
        test_file_round_trip(c);
        test_file_errors(c);
        test_logs(c);

        frame_client_free(c);
        free(session_id);
        backend = bc_close(backend);
        is_int(daemon_proc_stop(daemon_proc, 30000, &status), 0, "the daemon stops on SIGTERM");
        ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "and exits 0");
        daemon_proc_free(daemon_proc);
        return done();
}
