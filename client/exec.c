/*
 * Exec in libcwsandbox: buffered (one ExecResult) and streamed. A streamed
 * exec is a cws_exec around one Call: the reading thread takes ExecOutput
 * frames and grants the daemon credit as the application consumes them
 * (never when they merely arrive, so a slow reader pauses the command's
 * output at the backend); one other thread may send stdin, resizes, the end
 * of stdin or a cancel meanwhile. An exec whose stream ends without
 * ExecExit is an error, never exit code 0.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "util.h"

#define EXEC_WINDOW_DEFAULT     (1024u * 1024)

struct cws_exec {
        Call *call;
        DaemonFrame *cur;               /* an ExecOutput being read */
        size_t off;
        /*
         * The reading thread sets the end; one other thread may write stdin
         * meanwhile and needs to see it, so the end is set and read elsewhere
         * under this lock.
         */
        pthread_mutex_t lock;
        bool ended;                     /* the final frame has come, or the call failed */
        bool has_exit;
        int exit_code;
        int end_code;                   /* 0, or the error that ended the exec */
        cws_error end_err;
};

static int exec_request(Scratch *s, const char *id, const char *const *argv, const cws_exec_options *opts,
                        Cwsandboxd__V1__ExecRequest *req, cws_error *err) {
        size_t n = 0;

        if (arg_missing(id) || !argv || arg_missing(argv[0]))
                return cws_fail(err, CWS_INVALID_ARGUMENT, "exec: sandbox id and a command are required");
        while (argv[n])
                n++;
        cwsandboxd__v1__exec_request__init(req);
        req->sandbox_id = (char *)id;
        req->command = (char **)argv;
        req->n_command = n;
        if (opts) {
                req->cwd = S(opts->cwd);
                req->env = kv_entries(s, &cwsandboxd__v1__exec_request__env_entry__descriptor, opts->env, opts->n_env);
                req->n_env = opts->n_env;
                req->timeout_seconds = opts->timeout_seconds;
                req->tty = opts->tty;
                req->tty_width = opts->tty_width;
                req->tty_height = opts->tty_height;
        }
        return s->oom ? oom(err) : 0;
}

CWS_EXPORT void cws_exec_result_free(cws_exec_result *r) {
        if (!r)
                return;
        free(r->stdout_data);
        free(r->stderr_data);
        free(r);
}

CWS_EXPORT int cws_exec_run(cws_conn *c, const char *id, const char *const *argv, const cws_exec_options *opts,
                            cws_exec_result **ret_result, cws_error *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__ExecRequest req;
        _cleanup_(scratch_free) Scratch s = {};
        Cwsandboxd__V1__ExecResult *er;
        DaemonFrame *reply = NULL;
        cws_exec_result *res;
        int r;

        if (!ret_result)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "ret_result: required");
        r = exec_request(&s, id, argv, opts, &req, err);
        if (r != 0)
                return r;
        req.buffered = true;
        f.body_case = BODY(EXEC);
        f.exec = &req;
        r = call_unary(c, &f, &reply, err);
        if (r != 0)
                return r;
        if (reply->body_case != REPLY(EXEC_RESULT))
                return unexpected(reply, err);
        er = reply->exec_result;
        res = calloc(1, sizeof(*res));
        if (res) {
                res->stdout_data = dup_bytes(er->stdout.data, er->stdout.len);
                res->stdout_len = er->stdout.len;
                res->stderr_data = dup_bytes(er->stderr.data, er->stderr.len);
                res->stderr_len = er->stderr.len;
                res->exit_code = er->exit_code;
        }
        daemon_frame_free(reply);
        if (!res || !res->stdout_data || !res->stderr_data) {
                cws_exec_result_free(res);
                return oom(err);
        }
        *ret_result = res;
        return 0;
}

CWS_EXPORT int cws_exec_start(cws_conn *c, const char *id, const char *const *argv, const cws_exec_options *opts,
                              cws_exec **ret_exec, cws_error *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__ExecRequest req;
        _cleanup_(scratch_free) Scratch s = {};
        uint32_t window = opts && opts->window_bytes ? opts->window_bytes : EXEC_WINDOW_DEFAULT;
        cws_exec *x;
        int r;

        if (!ret_exec)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "ret_exec: required");
        r = exec_request(&s, id, argv, opts, &req, err);
        if (r != 0)
                return r;
        req.stdin = opts && opts->with_stdin;
        req.initial_credit = window;
        x = calloc(1, sizeof(*x));
        if (!x)
                return oom(err);
        r = call_new(c, window, &x->call, err);
        if (r != 0) {
                free(x);
                return r;
        }
        pthread_mutex_init(&x->lock, NULL);
        f.body_case = BODY(EXEC);
        f.exec = &req;
        r = call_send(x->call, &f, err);
        if (r != 0) {
                cws_exec_free(x);
                return r;
        }
        cws_ok(err);
        *ret_exec = x;
        return 0;
}

/* The exec has ended with @code (0 = its final frame came without error). */
static void exec_end(cws_exec *x, int code, const cws_error *e) {
        pthread_mutex_lock(&x->lock);
        x->ended = true;
        x->end_code = code;
        if (code != 0 && e)
                x->end_err = *e;
        if (code == 0 && !x->has_exit) {
                x->end_code = CWS_UNAVAILABLE;
                cws_fail(&x->end_err, CWS_UNAVAILABLE, "the exec ended without an exit status");
        }
        pthread_mutex_unlock(&x->lock);
}

/* Take the next frame: output into x->cur, or the exit, or the end. */
static int exec_next(cws_exec *x, int timeout_ms, cws_error *err) {
        cws_error e = {};
        DaemonFrame *f = NULL;
        int r;

        r = call_recv(x->call, timeout_ms, &f, &e);
        if (r == CWS_DEADLINE_EXCEEDED) {
                if (err)
                        *err = e;
                return r;
        }
        if (r != 0) {
                exec_end(x, r, &e);
                return 0;
        }
        if (f->body_case == REPLY(EXEC_OUTPUT) && f->exec_output->data.len > 0) {
                x->cur = f;
                x->off = 0;
        } else if (f->body_case == REPLY(EXEC_EXIT)) {
                x->has_exit = true;
                x->exit_code = f->exec_exit->exit_code;
        }
        if (f->final) {
                r = f->error ? call_frame_error(f, &e) : 0;
                exec_end(x, r, &e);
        }
        if (x->cur != f)
                daemon_frame_free(f);
        return 0;
}

static int exec_ended(cws_exec *x, cws_error *err) {
        if (x->end_code == 0) {
                cws_ok(err);
                return 0;
        }
        if (err)
                *err = x->end_err;
        return x->end_code;
}

CWS_EXPORT int cws_exec_read(cws_exec *x, void *buf, size_t size, int timeout_ms, cws_stream *ret_stream,
                             size_t *ret_len, cws_error *err) {
        int64_t end = timeout_ms >= 0 ? mono_ms() + timeout_ms : 0;
        const ProtobufCBinaryData *data;
        size_t n;
        int r;

        if (!x || !buf || size == 0 || !ret_len)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "exec read: exec, buffer and ret_len are required");
        while (!x->cur && !x->ended) {
                r = exec_next(x, timeout_ms < 0 ? -1 : (int)MAX(end - mono_ms(), (int64_t)0), err);
                if (r != 0)
                        return r;
        }
        if (!x->cur) {
                r = exec_ended(x, err);
                if (r == 0)
                        *ret_len = 0;
                return r;
        }
        data = &x->cur->exec_output->data;
        n = MIN(size, data->len - x->off);
        memcpy(buf, data->data + x->off, n);
        if (ret_stream)
                *ret_stream = x->cur->exec_output->stream == CWSANDBOXD__V1__EXEC_OUTPUT__STREAM__STDERR ?
                              CWS_STREAM_STDERR : CWS_STREAM_STDOUT;
        x->off += n;
        if (x->off == data->len) {
                daemon_frame_free(TAKE_PTR(x->cur));
                call_consumed(x->call, x->off);
        }
        *ret_len = n;
        cws_ok(err);
        return 0;
}

static int exec_input(cws_exec *x, Cwsandboxd__V1__ExecInput *in, cws_error *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        int r = 0;

        if (!x)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "exec: required");
        pthread_mutex_lock(&x->lock);
        if (x->ended)
                r = x->end_code ? exec_ended(x, err)
                                : cws_fail(err, CWS_FAILED_PRECONDITION, "the exec has ended");
        pthread_mutex_unlock(&x->lock);
        if (r != 0)
                return r;
        f.body_case = BODY(EXEC_INPUT);
        f.exec_input = in;
        return call_send(x->call, &f, err);
}

CWS_EXPORT int cws_exec_write(cws_exec *x, const void *data, size_t len, cws_error *err) {
        Cwsandboxd__V1__ExecInput in = CWSANDBOXD__V1__EXEC_INPUT__INIT;
        size_t chunk = x ? x->call->conn->chunk_max : 0, n;
        int r = 0;

        if (!data && len > 0)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "exec write: data is required");
        in.input_case = CWSANDBOXD__V1__EXEC_INPUT__INPUT_STDIN;
        for (size_t off = 0; off < len && r == 0; off += n) {
                n = MIN(chunk, len - off);
                in.stdin = (ProtobufCBinaryData) { .len = n, .data = (uint8_t *)data + off };
                r = exec_input(x, &in, err);
        }
        return r;
}

CWS_EXPORT int cws_exec_close_stdin(cws_exec *x, cws_error *err) {
        Cwsandboxd__V1__ExecInput in = CWSANDBOXD__V1__EXEC_INPUT__INIT;

        in.input_case = CWSANDBOXD__V1__EXEC_INPUT__INPUT_CLOSE;
        in.close = true;
        return exec_input(x, &in, err);
}

CWS_EXPORT int cws_exec_resize(cws_exec *x, uint32_t width, uint32_t height, cws_error *err) {
        Cwsandboxd__V1__ExecInput in = CWSANDBOXD__V1__EXEC_INPUT__INIT;
        Cwsandboxd__V1__TtySize size = CWSANDBOXD__V1__TTY_SIZE__INIT;

        if (width == 0 || height == 0)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "resize: width and height must be at least 1");
        size.width = width;
        size.height = height;
        in.input_case = CWSANDBOXD__V1__EXEC_INPUT__INPUT_RESIZE;
        in.resize = &size;
        return exec_input(x, &in, err);
}

CWS_EXPORT int cws_exec_cancel(cws_exec *x, cws_error *err) {
        bool ended;

        if (!x)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "exec: required");
        /* May come from the writing thread while the reading one ends the exec. */
        pthread_mutex_lock(&x->lock);
        ended = x->ended;
        pthread_mutex_unlock(&x->lock);
        if (ended) {
                cws_ok(err);
                return 0;
        }
        return call_cancel(x->call, err);
}

CWS_EXPORT int cws_exec_wait(cws_exec *x, int *ret_exit_code, cws_error *err) {
        int r;

        if (!x)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "exec: required");
        while (!x->ended) {
                if (x->cur) {
                        call_consumed(x->call, x->cur->exec_output->data.len - x->off);
                        daemon_frame_free(TAKE_PTR(x->cur));
                }
                r = exec_next(x, -1, err);
                if (r != 0)
                        return r;
        }
        if (x->cur) {
                daemon_frame_free(TAKE_PTR(x->cur));
        }
        r = exec_ended(x, err);
        if (r == 0 && ret_exit_code)
                *ret_exit_code = x->exit_code;
        return r;
}

CWS_EXPORT void cws_exec_free(cws_exec *x) {
        if (!x)
                return;
        daemon_frame_free(x->cur);
        call_free(x->call);
        pthread_mutex_destroy(&x->lock);
        free(x);
}
