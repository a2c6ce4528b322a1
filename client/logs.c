/*
 * Logs in libcwsandbox: one Call per cws_logs, each LogLine frame handed out
 * as a cws_log_line, and its bytes granted back to the daemon as credit when
 * the application takes the line. Closing a follow cancels it.
 */
#define _GNU_SOURCE
#include <stdlib.h>

#include "macro.h"
#include "util.h"

#define LOGS_WINDOW             (256u * 1024)           /* the daemon's initial credit for logs */

struct cws_logs {
        Call *call;
        bool ended;
        int end_code;
        cws_error end_err;
};

CWS_EXPORT int cws_logs_open(cws_conn *c, const char *id, const cws_logs_options *opts, cws_logs **ret_logs,
                             cws_error *err) {
        Cwsandboxd__V1__LogsRequest req = CWSANDBOXD__V1__LOGS_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        cws_logs *l;
        int r;

        if (arg_missing(id) || !ret_logs)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "logs: sandbox id and ret_logs are required");
        req.sandbox_id = (char *)id;
        if (opts) {
                req.follow = opts->follow;
                req.tail_lines = opts->tail_lines;
                req.since_time_ms = opts->since_time_ms;
                req.timestamps = opts->timestamps;
        }
        l = calloc(1, sizeof(*l));
        if (!l)
                return oom(err);
        r = call_new(c, LOGS_WINDOW, &l->call, err);
        if (r != 0) {
                free(l);
                return r;
        }
        f.body_case = BODY(LOGS);
        f.logs = &req;
        r = call_send(l->call, &f, err);
        if (r != 0) {
                cws_logs_close(l);
                return r;
        }
        *ret_logs = l;
        return 0;
}

CWS_EXPORT int cws_logs_next(cws_logs *l, int timeout_ms, cws_log_line **ret_line, cws_error *err) {
        int64_t end = timeout_ms >= 0 ? mono_ms() + timeout_ms : 0;
        cws_log_line *line = NULL;
        DaemonFrame *f = NULL;
        cws_error e = {};
        int r;

        if (!l || !ret_line)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "logs next: logs and ret_line are required");
        while (!line && !l->ended) {
                r = call_recv(l->call, timeout_ms < 0 ? -1 : (int)MAX(end - mono_ms(), (int64_t)0), &f, &e);
                if (r == CWS_DEADLINE_EXCEEDED) {
                        if (err)
                                *err = e;
                        return r;
                }
                if (r != 0) {
                        l->ended = true;
                        l->end_code = r;
                        l->end_err = e;
                        break;
                }
                if (f->body_case == REPLY(LOG_LINE)) {
                        line = calloc(1, sizeof(*line));
                        if (!line || !(line->data = dup_bytes(f->log_line->data.data, f->log_line->data.len))) {
                                free(line);
                                daemon_frame_free(f);
                                return oom(err);
                        }
                        line->len = f->log_line->data.len;
                        line->time_ms = f->log_line->time_ms;
                        call_consumed(l->call, line->len);
                }
                if (f->final) {
                        l->ended = true;
                        l->end_code = f->error ? call_frame_error(f, &l->end_err) : 0;
                }
                daemon_frame_free(f);
        }
        if (!line && l->end_code) {
                if (err)
                        *err = l->end_err;
                return l->end_code;
        }
        cws_ok(err);
        *ret_line = line;
        return 0;
}

CWS_EXPORT void cws_log_line_free(cws_log_line *line) {
        if (!line)
                return;
        free(line->data);
        free(line);
}

CWS_EXPORT void cws_logs_close(cws_logs *l) {
        if (!l)
                return;
        call_free(l->call);
        free(l);
}
