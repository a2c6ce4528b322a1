/*
 * StreamLogs: a sandbox's main-process output as a server stream of
 * LogEntry messages, read from its LogBuf.
 *
 * A LogStream keeps only its position, the seq of the next line to send; the
 * lines stay in the LogBuf. It sends until the stream's queue reaches the
 * high-water mark, then waits for on_writable(), so a slow client costs no
 * memory beyond the server's queue. A follower brings new lines; when the
 * position has fallen out of the buffer (the client read too slowly or asked
 * to resume from an old offset) the stream says REPLAY_GAP and ends rather
 * than skip lines silently.
 *
 * The log session id is the sandbox id and the offsets are line seqs, so a
 * client can resume any stream of the same sandbox from next_log_offset.
 *
 * Lifetime: the LogStream is freed in on_done(), or, if on_done() comes
 * while this file is still on the stack (inside a send), when that code
 * unwinds. The LogBuf may go away first (its sandbox record is freed); the
 * follower hears of it and the stream drains what is left and finishes.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include "log.h"
#include "logbuf.h"
#include "macro.h"
#include "sandbox.h"
#include "server.h"

/* "2026-11-22T22:31:08.123456789Z " */
#define TIMESTAMP_PREFIX_MAX 64

typedef struct LogStream {
        ServerStream *stream;
        LogBuf *lb;                     /* NULL when the sandbox had none or it was freed */
        LogFollower follower;
        char sandbox_id[sizeof(((Sandbox *)0)->id)];

        uint64_t next_seq;              /* next line to send */
        bool follow;                    /* wait for lines until the log closes */
        bool timestamps;

        bool paused;                    /* queue at the high-water mark */
        bool lb_freeing;                /* inside the LogBuf's FREED event */
        bool finished;                  /* status queued */
        bool in_pump;
        bool done;                      /* on_done() seen: free once unwound */

        uint8_t *scratch;               /* line with its timestamp prefix */
        size_t scratch_alloc;
} LogStream;

static LogStream *log_stream_free(LogStream *ls) {
        if (!ls)
                return NULL;
        logbuf_unfollow(&ls->follower);
        free(ls->scratch);
        free(ls);
        return NULL;
}

static void log_stream_finish(LogStream *ls) {
        ls->finished = true;
        logbuf_unfollow(&ls->follower);
        server_stream_finish(ls->stream, GRPC_STATUS_OK, "%s", "");
}

static void send_error(LogStream *ls, const char *code, const char *fmt, ...) _printf_(3, 4);
static void send_error(LogStream *ls, const char *code, const char *fmt, ...) {
        Coreweave__Sandbox__V1__LogStreamError err = COREWEAVE__SANDBOX__V1__LOG_STREAM_ERROR__INIT;
        Coreweave__Sandbox__V1__LogEntry e = COREWEAVE__SANDBOX__V1__LOG_ENTRY__INIT;
        char msg[256];
        va_list ap;

        va_start(ap, fmt);
        (void)vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);

        err.code = (char *)code;
        err.message = msg;
        e.error = &err;
        e.log_session_id = ls->sandbox_id;
        e.next_log_offset = ls->next_seq;
        (void)server_stream_send(ls->stream, &e.base);
}

/**
 * format_timestamp() - @time_ns as RFC 3339 UTC with nanoseconds and a
 * trailing space, as `kubectl logs --timestamps` prints it. Returns the length.
 */
static size_t format_timestamp(int64_t time_ns, char buf[static TIMESTAMP_PREFIX_MAX]) {
        int64_t sec = time_ns / 1000000000, nsec = time_ns % 1000000000;
        time_t t;
        struct tm tm;
        int n;

        if (nsec < 0) {
                nsec += 1000000000;
                sec--;
        }
        t = (time_t)sec;
        if (!gmtime_r(&t, &tm))
                memset(&tm, 0, sizeof(tm));
        n = snprintf(buf, TIMESTAMP_PREFIX_MAX, "%04d-%02d-%02dT%02d:%02d:%02d.%09dZ ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec, (int)nsec);
        return n < 0 ? 0 : MIN((size_t)n, (size_t)TIMESTAMP_PREFIX_MAX - 1);
}

static int prefix_timestamp(LogStream *ls, const LogLine *l, ProtobufCBinaryData *ret) {
        char prefix[TIMESTAMP_PREFIX_MAX];
        size_t n = format_timestamp(l->time_ns, prefix);

        if (ls->scratch_alloc < n + l->len) {
                size_t a = MAX(n + l->len, (size_t)4096);
                uint8_t *p = realloc(ls->scratch, a);

                if (!p)
                        return -ENOMEM;
                ls->scratch = p;
                ls->scratch_alloc = a;
        }
        memcpy(ls->scratch, prefix, n);
        memcpy(ls->scratch + n, l->data, l->len);
        ret->data = ls->scratch;
        ret->len = n + l->len;
        return 0;
}

/* Returns the bytes now queued on the stream, or a negative errno. */
static ssize_t send_line(LogStream *ls, const LogLine *l) {
        Coreweave__Sandbox__V1__LogEntry e = COREWEAVE__SANDBOX__V1__LOG_ENTRY__INIT;
        Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
        int64_t sec = l->time_ns / 1000000000, nsec = l->time_ns % 1000000000;

        if (nsec < 0) {
                nsec += 1000000000;
                sec--;
        }
        ts.seconds = sec;
        ts.nanos = (int32_t)nsec;

        if (ls->timestamps) {
                if (prefix_timestamp(ls, l, &e.data) < 0)
                        return -ENOMEM;
        } else {
                e.data.data = (uint8_t *)l->data;
                e.data.len = l->len;
        }
        e.timestamp = &ts;
        e.log_session_id = ls->sandbox_id;
        e.next_log_offset = l->seq + 1;
        return (ssize_t)server_stream_send(ls->stream, &e.base);
}

/* Send from next_seq until paused, caught up or finished. */
static void pump_lines(LogStream *ls) {
        for (;;) {
                const LogLine *l;
                ssize_t queued;

                if (ls->done || ls->finished || server_stream_is_done(ls->stream))
                        return;
                if (ls->paused && !ls->lb_freeing)
                        return;
                if (!ls->lb) {
                        log_stream_finish(ls);
                        return;
                }

                if (ls->next_seq < logbuf_first_seq(ls->lb)) {
                        send_error(ls, "REPLAY_GAP",
                                   "log offset %" PRIu64 " of sandbox %s is no longer buffered (oldest kept: %" PRIu64 ")",
                                   ls->next_seq, ls->sandbox_id, logbuf_first_seq(ls->lb));
                        if (!ls->done)
                                log_stream_finish(ls);
                        return;
                }

                l = logbuf_get(ls->lb, ls->next_seq);
                if (!l) {
                        /* Caught up. */
                        if (!ls->follow || ls->lb_freeing || logbuf_is_closed(ls->lb))
                                log_stream_finish(ls);
                        return;
                }

                queued = send_line(ls, l);
                if (queued < 0) {
                        server_stream_finish(ls->stream, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                        ls->finished = true;
                        return;
                }
                ls->next_seq++;
                /* While the buffer is being freed the rest goes out now: it
                 * is bounded by the buffer's own bound. */
                if ((size_t)queued >= SERVER_STREAM_HIGH_WATER)
                        ls->paused = true;
        }
}

static void log_stream_pump(LogStream *ls) {
        if (ls->in_pump)
                return;
        ls->in_pump = true;
        pump_lines(ls);
        ls->in_pump = false;
        if (ls->lb_freeing)
                ls->lb = NULL;
        if (ls->done)
                log_stream_free(ls);
}

static void on_log_event(LogFollower *f, LogBufEvent event) {
        LogStream *ls = container_of(f, LogStream, follower);

        if (event == LOGBUF_EVENT_FREED)
                ls->lb_freeing = true;
        log_stream_pump(ls);
}

static void on_writable(ServerStream *s, void *userdata) {
        LogStream *ls = userdata;

        ls->paused = false;
        log_stream_pump(ls);
}

static void on_done(ServerStream *s, void *userdata, bool cancelled) {
        LogStream *ls = userdata;

        ls->done = true;
        logbuf_unfollow(&ls->follower);
        if (!ls->in_pump)
                log_stream_free(ls);
}

static const ServerStreamOps log_stream_ops = {
        .on_writable = on_writable,
        .on_done = on_done,
};

static int64_t timestamp_to_ns(const Google__Protobuf__Timestamp *ts) {
        /* Clamp instead of overflowing on absurd client input. */
        if (ts->seconds >= INT64_MAX / 1000000000 - 1)
                return INT64_MAX;
        if (ts->seconds <= INT64_MIN / 1000000000 + 1)
                return INT64_MIN;
        return ts->seconds * 1000000000 + ts->nanos;
}

/* Where a fresh (not resumed) stream starts: tail and since both narrow it. */
static uint64_t start_seq(const LogBuf *lb, const Coreweave__Sandbox__V1__StreamLogsRequest *req) {
        uint64_t seq = logbuf_first_seq(lb);

        if (req->tail_lines > 0)
                seq = MAX(seq, logbuf_seq_tail(lb, (uint64_t)req->tail_lines));
        if (req->since_time)
                seq = MAX(seq, logbuf_seq_since(lb, timestamp_to_ns(req->since_time)));
        return seq;
}

/* Position a resumed stream; false when the stream has been answered. */
static bool resume_position(LogStream *ls, const Coreweave__Sandbox__V1__StreamLogsRequest *req) {
        if (!streq(req->resume_log_session_id, ls->sandbox_id)) {
                send_error(ls, "SESSION_NOT_FOUND", "log session %s not found for sandbox %s",
                           req->resume_log_session_id, ls->sandbox_id);
                return false;
        }
        ls->next_seq = req->resume_log_offset;
        if (ls->lb && ls->next_seq > logbuf_end_seq(ls->lb)) {
                send_error(ls, "INVALID_RESUME_OFFSET",
                           "log offset %" PRIu64 " of sandbox %s is beyond the end (%" PRIu64 ")",
                           ls->next_seq, ls->sandbox_id, logbuf_end_seq(ls->lb));
                return false;
        }
        return true;
}

void rpc_stream_logs(Backend *b, ServerStream *stream, const Coreweave__Sandbox__V1__StreamLogsRequest *req) {
        LogStream *ls;
        bool resume;
        Sandbox *s;

        if (!req->sandbox_id || !*req->sandbox_id) {
                server_stream_finish(stream, GRPC_STATUS_INVALID_ARGUMENT, "sandbox_id is required");
                return;
        }
        s = sandbox_find(b, req->sandbox_id);
        if (!s) {
                server_stream_finish(stream, GRPC_STATUS_NOT_FOUND, "sandbox %s not found", req->sandbox_id);
                return;
        }

        ls = calloc(1, sizeof(*ls));
        if (!ls) {
                server_stream_finish(stream, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
        }
        ls->stream = stream;
        ls->lb = s->logs;
        (void)snprintf(ls->sandbox_id, sizeof(ls->sandbox_id), "%s", s->id);
        ls->timestamps = req->timestamps;
        server_stream_set_ops(stream, &log_stream_ops, ls);

        resume = req->resume_log_session_id && *req->resume_log_session_id;
        log_full(LOG_LEVEL_DEBUG, NULL, s->id,
                 "stream logs: follow=%d tail=%d since=%s timestamps=%d resume=%s@%" PRIu64,
                 req->follow, req->tail_lines, req->since_time ? "set" : "-", req->timestamps,
                 resume ? req->resume_log_session_id : "-", req->resume_log_offset);

        /* Keep on_done() from freeing ls under us until the pump below. */
        ls->in_pump = true;
        if (resume) {
                if (!resume_position(ls, req)) {
                        if (!ls->done)
                                log_stream_finish(ls);
                        ls->in_pump = false;
                        log_stream_pump(ls);
                        return;
                }
        } else if (ls->lb)
                ls->next_seq = start_seq(ls->lb, req);

        /* A terminal sandbox has nothing more to say: send what there is. */
        ls->follow = req->follow && ls->lb && !logbuf_is_closed(ls->lb) && !sandbox_state_is_terminal(s->state);
        if (ls->follow)
                logbuf_follow(ls->lb, &ls->follower, on_log_event);

        ls->in_pump = false;
        log_stream_pump(ls);
}
