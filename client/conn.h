/*
 * Connection internals of libcwsandbox: the socket, the reader thread that
 * routes DaemonFrames to calls by call id, and Call, one request in flight
 * with its own queue of frames. Nothing here is exported; cwsandbox.h is the
 * public surface.
 */
#pragma once

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cwsandbox.h"
#include "cwsandboxd/v1/cwsandboxd.pb-c.h"

typedef Cwsandboxd__V1__ClientFrame ClientFrame;
typedef Cwsandboxd__V1__DaemonFrame DaemonFrame;

/* One received frame waiting for its call. */
typedef struct CallFrame {
        struct CallFrame *next;
        DaemonFrame *frame;
} CallFrame;

typedef struct Call {
        cws_conn *conn;
        uint64_t id;
        struct Call *prev, *next;       /* in conn->calls while registered */
        bool registered;                /* routed to: no final frame yet, connection alive */
        bool ended;                     /* the final frame is queued, or the connection was lost */
        bool lost;                      /* ended by the connection's loss */
        pthread_cond_t cond;            /* frames arrived or the call ended; under conn->lock */
        CallFrame *head, **tail;
        uint32_t window;                /* the daemon's credit for this call, 0 = no credit */
        uint64_t unacked;               /* bytes consumed but not granted back yet */
} Call;

struct cws_conn {
        int fd;
        pthread_t reader;
        pthread_mutex_t lock;           /* calls, their queues, dead, refs */
        pthread_mutex_t write_lock;     /* one frame at a time on the socket; guards fd */
        atomic_uint_fast64_t next_id;
        Call *calls;
        unsigned refs;                  /* the application's, plus one per Call */
        bool dead;
        bool closing;                   /* cws_conn_close() shut the socket down */
        char dead_msg[768];
        int refused_code;               /* a connection-level error frame's code, 0 = none */
        DaemonFrame *hello_frame;
        cws_hello hello;
        size_t chunk_max;               /* the largest payload to put in one frame */
};

/* Error helpers: every public function fills @err through these. */
int cws_fail(cws_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void cws_ok(cws_error *err);

/* A daemon error (a final frame with error) into @err; returns its code (never 0). */
int call_frame_error(const DaemonFrame *f, cws_error *err);

/* The connection: open (socket and reader thread) and drop the application's reference. */
int conn_open(const char *path, cws_conn **ret, cws_error *err);
void conn_shutdown(cws_conn *c);

/* A new call with a fresh id, registered for its replies. */
int call_new(cws_conn *c, uint32_t window, Call **ret, cws_error *err);

/* Send @f for @call (its call id is set here). */
int call_send(Call *call, ClientFrame *f, cws_error *err);

/*
 * The next frame of @call. @timeout_ms < 0 waits forever. Returns 0 with a
 * frame to free with daemon_frame_free(); DEADLINE_EXCEEDED on a timeout;
 * UNAVAILABLE when the connection was lost; INTERNAL when the call has
 * ended and nothing is left.
 */
int call_recv(Call *call, int timeout_ms, DaemonFrame **ret, cws_error *err);

/* True when a frame is queued or the call has ended (nothing blocks). */
bool call_ready(Call *call);

/* Stream data of @n bytes has been consumed: give the daemon credit back. */
void call_consumed(Call *call, size_t n);

/* Tell the daemon to end the call (if it still runs). */
int call_cancel(Call *call, cws_error *err);

/* Unregister and free; a call that has not ended is cancelled first. Accepts NULL. */
void call_free(Call *call);

/*
 * One unary request: send @f, wait for the final frame (data frames are
 * dropped). On success *@ret is the final frame (error-free).
 */
int call_unary(cws_conn *c, ClientFrame *f, DaemonFrame **ret, cws_error *err);

void daemon_frame_free(DaemonFrame *f);
