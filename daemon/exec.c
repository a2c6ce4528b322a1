/*
 * Exec: a command in a running sandbox, over one backend StreamExec, for a
 * client's exec request (streaming or buffered).
 *
 * The sandbox is resolved for the caller's uid, started if needed and waited
 * for (the session's request timeout, not counted against the command's).
 * Then the stream opens with ExecStreamInit: a cwd is applied as the SDK
 * does, by running ["/bin/sh", "-c", "cd <cwd> && exec <args>"]. The
 * deadline is the command's timeout (or the session's request timeout) plus
 * the SDK's 5 s slack; a tty has none.
 *
 * Input: without stdin the request side is closed right after the init.
 * With stdin, ExecInput frames are forwarded in order (stdin in messages of
 * at most 64 KiB, resize, close = ExecStreamClose and half-close); frames
 * that come while the sandbox is still starting are kept until the stream
 * opens. The client gets no credit for input, so the daemon cannot slow it
 * down: more than EXEC_STDIN_QUEUE_MAX bytes waiting for the backend fails
 * the call with RESOURCE_EXHAUSTED. A client must not write far ahead of
 * what the command consumes.
 *
 * Output, streaming: ExecOutput frames (stream UNSPECIFIED counts as
 * stdout), then ExecExit, then an empty final frame. Each byte of output
 * uses a byte of credit (initial_credit, or EXEC_CREDIT_DEFAULT when 0;
 * Credit frames add to it). The next backend message is read only while
 * credit is left and the connection takes output, so a slow client pauses
 * the command's output at the backend instead of growing a buffer here.
 * Output, buffered: stdout and stderr are collected up to what fits in one
 * frame and sent as one ExecResult in the final frame; more output fails the
 * call with RESOURCE_EXHAUSTED (never a partial result) and kills the
 * command. Credit plays no part.
 *
 * Ends: a backend error frame, a stream that ends without an exit status
 * (never reported as exit 0), a deadline (DEADLINE_EXCEEDED, "command timed
 * out"), a client Cancel or a closed connection (the backend stream is
 * cancelled, which kills the process; the call ends CANCELLED).
 *
 * Lifetime: an Exec lives until its call has ended, its handle wait has
 * returned and its backend stream has reported done, whichever is last. The
 * call may end first (cancel, exit): the rest is then only drained.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handle.h"
#include "log.h"
#include "ops-internal.h"
#include "pbgrpc.h"
#include "retry.h"

#define EXEC_ARGS_MAX           1024
#define EXEC_TTY_MAX            65535u                  /* a pty's size is an unsigned short */
#define EXEC_CREDIT_DEFAULT     (256 * 1024)
#define EXEC_STDIN_CHUNK        (64u * 1024)            /* the SDK's stdin message size */
#define EXEC_STDIN_QUEUE_MAX    (8u * 1024 * 1024)
#define EXEC_BUF_MIN            4096u
#define EXEC_DEADLINE_SLACK_MS  5000                    /* the SDK's client timeout buffer */
#define EXEC_TIMEOUT_MAX_MS     (INT64_C(366) * 24 * 3600 * 1000)

typedef Cwsandboxd__V1__ExecRequest ExecRequest;
typedef Cwsandboxd__V1__ExecInput ExecInput;
typedef Coreweave__Sandbox__V1__ExecStreamRequest StreamRequest;
typedef Coreweave__Sandbox__V1__ExecStreamResponse StreamResponse;
typedef Coreweave__Sandbox__V1__ExecStreamInit StreamInit;
typedef Coreweave__Sandbox__V1__ExecStreamInit__EnvEntry StreamEnv;

#define REQ(x) COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__MESSAGE_##x
#define RESP(x) COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__MESSAGE_##x
#define INPUT(x) CWSANDBOXD__V1__EXEC_INPUT__INPUT_##x

/* Client input that came before the stream was open. */
typedef struct PendingInput {
        struct PendingInput *next;
        ExecInput *input;
} PendingInput;

typedef struct Exec {
        Op op;
        ExecRequest *req;               /* our copy */
        bool opened;
        bool stdin_closed;
        int32_t exit_code;              /* for the log, once it has exited */
        int64_t timeout_ms;             /* the command's */
        uint64_t start_ms;
        PendingInput *pending, **pending_tail;
        size_t pending_bytes;
        OpBuf out, err;                 /* buffered */
} Exec;

/* ---- helpers -------------------------------------------------------------------------- */

/* The SDK's shlex.quote(): safe words as they are, the rest in single quotes. */
static void shell_quote(FILE *f, const char *s) {
        bool safe = *s;

        for (const char *p = s; *p && safe; p++)
                safe = isalnum((unsigned char)*p) || strchr("@%+=:,./-_", *p);
        if (safe) {
                fputs(s, f);
                return;
        }
        fputc('\'', f);
        for (; *s; s++)
                if (*s == '\'')
                        fputs("'\"'\"'", f);
                else
                        fputc(*s, f);
        fputc('\'', f);
}

/* "cd <cwd> && exec <args>" for /bin/sh -c. NULL on OOM. */
static char *exec_cwd_script(const ExecRequest *req) {
        char *script = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&script, &size);

        if (!f)
                return NULL;
        fputs("cd ", f);
        shell_quote(f, req->cwd);
        fputs(" && exec", f);
        for (size_t i = 0; i < req->n_command; i++) {
                fputc(' ', f);
                shell_quote(f, req->command[i]);
        }
        if (fclose(f) != 0) {
                free(script);
                return NULL;
        }
        return script;
}

static grpc_status_code exec_validate(const ExecRequest *req, Status *st) {
        if (req->n_command == 0 || !req->command[0][0])
                return status_set(st, GRPC_STATUS_INVALID_ARGUMENT, "command: required");
        if (req->n_command > EXEC_ARGS_MAX)
                return status_set(st, GRPC_STATUS_INVALID_ARGUMENT, "command: more than %d arguments",
                                  EXEC_ARGS_MAX);
        if (req->cwd[0] && req->cwd[0] != '/')
                return status_set(st, GRPC_STATUS_INVALID_ARGUMENT, "cwd: '%s' is not an absolute path",
                                  req->cwd);
        if (req->tty_width > EXEC_TTY_MAX || req->tty_height > EXEC_TTY_MAX)
                return status_set(st, GRPC_STATUS_INVALID_ARGUMENT, "tty size %" PRIu32 "x%" PRIu32 ": at most %u",
                                  req->tty_width, req->tty_height, EXEC_TTY_MAX);
        if (!isfinite(req->timeout_seconds) || req->timeout_seconds < 0)
                return status_set(st, GRPC_STATUS_INVALID_ARGUMENT, "timeout_seconds: must be >= 0");
        for (size_t i = 0; i < req->n_env; i++)
                if (!req->env[i]->key[0] || strchr(req->env[i]->key, '='))
                        return status_set(st, GRPC_STATUS_INVALID_ARGUMENT, "env: invalid name '%s'",
                                          req->env[i]->key);
        return GRPC_STATUS_OK;
}

/* ---- lifetime ------------------------------------------------------------------------- */

static void exec_release(Op *op) {
        Exec *e = container_of(op, Exec, op);

        while (e->pending) {
                PendingInput *p = e->pending;

                e->pending = p->next;
                protobuf_c_message_free_unpacked(&p->input->base, NULL);
                free(p);
        }
        free(e->out.data);
        free(e->err.data);
        if (e->req)
                protobuf_c_message_free_unpacked(&e->req->base, NULL);
}

/* The SDK's outcome of an exec: an exit code (0 or not), or an error. */
static void exec_count(const Op *op, const Status *st) {
        const Exec *e = container_of(op, Exec, op);
        Manager *m = op->manager;
        Handle *h = op->handle;

        /* A sandbox that never ran still names a handle the exec counts against. */
        if (!h)
                h = handle_find(m, op->sandbox_arg);
        if (h)
                metrics_exec_done(m, h, !status_ok(st) ? EXEC_OUTCOME_FAILURE :
                                        e->exit_code == 0 ? EXEC_OUTCOME_OK : EXEC_OUTCOME_NONZERO);
}

static void exec_log_end(const Op *op, const Status *st) {
        const Exec *e = container_of(op, Exec, op);
        uint64_t ms = manager_now_ms(op->manager) - e->start_ms;
        const char *sid = op->handle ? op->handle->sandbox_id : NULL;

        if (!e->req)
                return;         /* out of memory before the request was copied */
        exec_count(op, st);
        if (status_ok(st))
                log_full(LOG_LEVEL_DEBUG, op->session_id, sid, "exec %s: exit code %" PRId32 " (%" PRIu64 " ms)",
                         e->req->command[0], e->exit_code, ms);
        else
                log_full(st->code == GRPC_STATUS_CANCELLED ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO, op->session_id, sid,
                         "exec %s: %s (%" PRIu64 " ms)", e->req->command[0], st->message, ms);
}

/* ---- client side ---------------------------------------------------------------------- */

static void exec_close_stdin(Exec *e) {
        Coreweave__Sandbox__V1__ExecStreamClose close = COREWEAVE__SANDBOX__V1__EXEC_STREAM_CLOSE__INIT;
        StreamRequest r = COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__INIT;

        e->stdin_closed = true;
        r.message_case = REQ(CLOSE);
        r.close = &close;
        (void)backend_stream_write(e->op.stream, &r.base);
        backend_stream_close_send(e->op.stream);
}

/* Forward one ExecInput to the open stream. */
static void exec_forward(Exec *e, const ExecInput *in) {
        Coreweave__Sandbox__V1__ExecStreamResize resize = COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESIZE__INIT;
        StreamRequest r = COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__INIT;
        size_t queued = 0, n;

        switch (in->input_case) {
        case INPUT(STDIN):
                r.message_case = REQ(STDIN);
                for (size_t off = 0; off < in->stdin.len; off += n) {
                        n = MIN((size_t)EXEC_STDIN_CHUNK, in->stdin.len - off);
                        r.stdin = (ProtobufCBinaryData) { .len = n, .data = in->stdin.data + off };
                        queued = backend_stream_write(e->op.stream, &r.base);
                }
                e->op.manager->metrics.exec_bytes[EXEC_STREAM_STDIN] += in->stdin.len;
                break;
        case INPUT(RESIZE):
                resize.width = in->resize->width;
                resize.height = in->resize->height;
                r.message_case = REQ(RESIZE);
                r.resize = &resize;
                queued = backend_stream_write(e->op.stream, &r.base);
                break;
        case INPUT(CLOSE):
                exec_close_stdin(e);
                return;
        default:
                return;
        }
        if (queued > EXEC_STDIN_QUEUE_MAX)
                op_failf(&e->op, GRPC_STATUS_RESOURCE_EXHAUSTED,
                         "stdin: more than %u bytes wait for the command; write less ahead of it",
                         EXEC_STDIN_QUEUE_MAX);
}

/* Keep input that comes before the stream is open. */
static void exec_keep(Exec *e, const ExecInput *in) {
        PendingInput *p;

        if (in->input_case == INPUT(STDIN))
                e->pending_bytes += in->stdin.len;
        if (e->pending_bytes > EXEC_STDIN_QUEUE_MAX) {
                op_failf(&e->op, GRPC_STATUS_RESOURCE_EXHAUSTED,
                         "stdin: more than %u bytes sent before the sandbox was ready", EXEC_STDIN_QUEUE_MAX);
                return;
        }
        p = calloc(1, sizeof(*p));
        if (!p || !(p->input = (ExecInput *)pb_message_dup(&in->base))) {
                free(p);
                op_oom(&e->op);
                return;
        }
        *e->pending_tail = p;
        e->pending_tail = &p->next;
}

static void exec_on_input(Call *call, const ClientFrame *f) {
        Exec *e = container_of(call->userdata, Exec, op);
        const ExecInput *in = f->exec_input;

        if (f->body_case != CWSANDBOXD__V1__CLIENT_FRAME__BODY_EXEC_INPUT || !e->req->stdin) {
                op_failf(&e->op, GRPC_STATUS_INVALID_ARGUMENT, "%s", !e->req->stdin ?
                         "exec input for an exec without stdin" : "a file chunk is not exec input");
                return;
        }
        if (in->input_case == INPUT(RESIZE) &&
            (!in->resize->width || !in->resize->height ||
             in->resize->width > EXEC_TTY_MAX || in->resize->height > EXEC_TTY_MAX)) {
                op_failf(&e->op, GRPC_STATUS_INVALID_ARGUMENT, "resize: width and height must be 1..%u",
                         EXEC_TTY_MAX);
                return;
        }
        if (e->stdin_closed) {
                /* Resize or stdin racing the client's own close: too late. */
                log_debug("exec %s: input after close; ignored", e->req->command[0]);
                return;
        }
        if (in->input_case == INPUT(CLOSE) && !e->opened)
                e->stdin_closed = true;         /* sent once the stream opens */
        if (e->opened)
                exec_forward(e, in);
        else
                exec_keep(e, in);
}

static const CallOps exec_call_ops = {
        .input = exec_on_input,
        .credit = op_on_credit,
        .cancel = op_on_cancel,
        .drain = op_on_drain,
};

/* ---- backend side --------------------------------------------------------------------- */

/* A buffered exec reads regardless of credit. */
static void exec_pump(Op *op) {
        op_stream_read(op, !container_of(op, Exec, op)->req->buffered);
}

static void exec_collect(Exec *e, bool is_stderr, const ProtobufCBinaryData *data) {
        size_t cap = (size_t)e->op.manager->config->max_frame_bytes - OPS_FRAME_MARGIN;
        Status st;

        if (data->len > cap - e->out.len - e->err.len) {
                status_set(&st, GRPC_STATUS_RESOURCE_EXHAUSTED,
                           "the output exceeds %zu bytes, the most a buffered exec returns; use a streaming exec",
                           cap);
                strcpy(st.reason, "CWSANDBOXD_OUTPUT_TOO_LARGE");
                op_fail(&e->op, &st);
                return;
        }
        if (op_buf_append(is_stderr ? &e->err : &e->out, data->data, data->len, EXEC_BUF_MIN, SIZE_MAX) < 0)
                op_oom(&e->op);
}

static void exec_send_output(Exec *e, bool is_stderr, const ProtobufCBinaryData *data) {
        Cwsandboxd__V1__ExecOutput out = CWSANDBOXD__V1__EXEC_OUTPUT__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

        out.stream = is_stderr ? CWSANDBOXD__V1__EXEC_OUTPUT__STREAM__STDERR
                               : CWSANDBOXD__V1__EXEC_OUTPUT__STREAM__STDOUT;
        f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_EXEC_OUTPUT;
        f.exec_output = &out;
        (void)op_send_data(&e->op, &f, &out.data, data);
}

static void exec_on_exit(Exec *e, int32_t code) {
        Cwsandboxd__V1__ExecResult result = CWSANDBOXD__V1__EXEC_RESULT__INIT;
        Cwsandboxd__V1__ExecExit ex = CWSANDBOXD__V1__EXEC_EXIT__INIT;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

        e->exit_code = code;
        if (e->req->buffered) {
                result.stdout = (ProtobufCBinaryData) { .len = e->out.len, .data = e->out.data };
                result.stderr = (ProtobufCBinaryData) { .len = e->err.len, .data = e->err.data };
                result.exit_code = code;
                f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_EXEC_RESULT;
                f.exec_result = &result;
                op_finish(&e->op, &f);
                return;
        }
        ex.exit_code = code;
        f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_EXEC_EXIT;
        f.exec_exit = &ex;
        (void)call_send(e->op.call, &f);
        op_finish(&e->op, NULL);
}

/* An in-band error frame: the SDK's stream codes, kept as the reason. */
static void exec_on_stream_error(Exec *e, const Coreweave__Sandbox__V1__ExecStreamError *err) {
        static const OpErrorCode map[] = {
                { "STREAM_BACKPRESSURE", GRPC_STATUS_RESOURCE_EXHAUSTED },
                { "STREAM_TRUNCATED",    GRPC_STATUS_DATA_LOSS },
        };

        op_fail_stream_error(&e->op, "exec", err->code, err->message, map, ELEMENTSOF(map));
}

static void exec_on_message(Op *op, ProtobufCMessage *msg) {
        StreamResponse *r = (StreamResponse *)msg;
        Exec *e = container_of(op, Exec, op);
        bool is_stderr;

        switch (r->message_case) {
        case RESP(OUTPUT):
                is_stderr = r->output->stream == COREWEAVE__SANDBOX__V1__EXEC_STREAM_OUTPUT__STREAM__STREAM_STDERR;
                op->manager->metrics.exec_bytes[is_stderr ? EXEC_STREAM_STDERR : EXEC_STREAM_STDOUT] +=
                        r->output->data.len;
                if (e->req->buffered)
                        exec_collect(e, is_stderr, &r->output->data);
                else if (r->output->data.len > 0)
                        exec_send_output(e, is_stderr, &r->output->data);
                break;
        case RESP(EXIT):
                exec_on_exit(e, r->exit->exit_code);
                break;
        case RESP(ERROR):
                exec_on_stream_error(e, r->error);
                break;
        default:
                break;          /* ready, or a message we do not know */
        }
}

static void exec_on_done(Op *op, const Status *st) {
        Exec *e = container_of(op, Exec, op);
        Status err = *st;

        if (st->code == GRPC_STATUS_DEADLINE_EXCEEDED && !e->req->tty) {
                status_set(&err, GRPC_STATUS_DEADLINE_EXCEEDED, "command timed out after %gs",
                           (double)e->timeout_ms / 1000.0);
                strcpy(err.reason, "CWSANDBOX_COMMAND_TIMEOUT");
        } else if (status_ok(st))
                status_set(&err, GRPC_STATUS_UNAVAILABLE, "exec stream ended before the exit status");
        else
                status_prefix(&err, "exec");
        op_fail(op, &err);
}

static const OpKind exec_kind = {
        .log_end = exec_log_end,
        .pump = exec_pump,
        .message = exec_on_message,
        .done = exec_on_done,
        .release = exec_release,
};

/* ---- start ---------------------------------------------------------------------------- */

static int exec_stream_open(Exec *e, char **command, size_t n_command) {
        const ExecRequest *req = e->req;
        StreamRequest r = COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__INIT;
        StreamInit init = COREWEAVE__SANDBOX__V1__EXEC_STREAM_INIT__INIT;
        _cleanup_free_ StreamEnv *env = calloc(req->n_env + 1, sizeof(*env));
        _cleanup_free_ StreamEnv **envp = calloc(req->n_env + 1, sizeof(*envp));

        if (!env || !envp)
                return -ENOMEM;
        for (size_t i = 0; i < req->n_env; i++) {
                env[i] = (StreamEnv) COREWEAVE__SANDBOX__V1__EXEC_STREAM_INIT__ENV_ENTRY__INIT;
                env[i].key = req->env[i]->key;
                env[i].value = req->env[i]->value;
                envp[i] = &env[i];
        }
        init.sandbox_id = e->op.handle->sandbox_id;
        init.command = command;
        init.n_command = n_command;
        init.tty = req->tty;
        init.tty_width = req->tty_width;
        init.tty_height = req->tty_height;
        init.env = envp;
        init.n_env = req->n_env;
        r.message_case = REQ(INIT);
        r.init = &init;
        op_stream_open(&e->op, BACKEND_STREAM_EXEC, &r.base, req->tty ? -1 : e->timeout_ms + EXEC_DEADLINE_SLACK_MS);
        return 0;
}

static void exec_open(Exec *e) {
        _cleanup_free_ char *script = NULL;
        char *wrapped[3] = { (char *)"/bin/sh", (char *)"-c", NULL };
        PendingInput *p;
        int r;

        if (e->req->cwd[0] && !(wrapped[2] = script = exec_cwd_script(e->req))) {
                op_oom(&e->op);
                return;
        }
        r = script ? exec_stream_open(e, wrapped, 3) : exec_stream_open(e, e->req->command, e->req->n_command);
        if (r < 0) {
                op_oom(&e->op);
                return;
        }
        e->opened = true;
        e->stdin_closed = false;        /* a close kept for now is replayed below */
        while (e->op.call && !e->stdin_closed && (p = e->pending)) {
                e->pending = p->next;
                exec_forward(e, p->input);
                protobuf_c_message_free_unpacked(&p->input->base, NULL);
                free(p);
        }
        if (e->op.call && !e->req->stdin)
                exec_close_stdin(e);
        exec_pump(&e->op);
}

static void exec_on_running(void *userdata, Handle *h, const Status *st) {
        Exec *e = container_of(userdata, Exec, op);

        if (!op_running(&e->op, h, st))
                return;
        e->timeout_ms = e->req->timeout_seconds > 0 ?
                (int64_t)MIN(retry_seconds_to_ms(e->req->timeout_seconds), (uint64_t)EXEC_TIMEOUT_MAX_MS) :
                handle_request_timeout_ms(h);
        e->start_ms = manager_now_ms(e->op.manager);
        exec_open(e);
        op_maybe_free(&e->op);
}

void ops_exec(Manager *m, Call *call, const Cwsandboxd__V1__ExecRequest *req) {
        Exec *e;
        Op *op;
        Status st;

        if (exec_validate(req, &st) != GRPC_STATUS_OK) {
                call_fail(call, &st, req->sandbox_id);
                return;
        }
        op = op_new(sizeof(Exec), &exec_kind, m, call, req->sandbox_id);
        if (!op)
                return;
        e = container_of(op, Exec, op);
        e->start_ms = manager_now_ms(m);
        if (!(e->req = (ExecRequest *)pb_message_dup(&req->base))) {
                op_oom(op);
                op_maybe_free(op);
                return;
        }
        op->credit = req->initial_credit ? req->initial_credit : EXEC_CREDIT_DEFAULT;
        e->pending_tail = &e->pending;
        op_wait_running(op, &exec_call_ops, exec_on_running);
}
