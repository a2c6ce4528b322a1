/*
 * Connection internals of libcwsandbox: the socket, the reader thread that
 * routes DaemonFrames to calls by call id and brings the connection back
 * after a loss, the sessions it re-attaches then, and Call, one request in
 * flight with its own queue of frames. Nothing here is exported; cwsandbox.h
 * is the public surface.
 */
#pragma once

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cwsandbox.h"
#include "cwsandboxd/v1/cwsandboxd.pb-c.h"
#include "frame.h"

typedef Cwsandboxd__V1__ClientFrame ClientFrame;
typedef Cwsandboxd__V1__DaemonFrame DaemonFrame;
typedef Cwsandboxd__V1__AttachSessionRequest AttachRequest;

/* One received frame waiting for its call. */
typedef struct CallFrame {
        struct CallFrame *next;
        DaemonFrame *frame;
} CallFrame;

/* A session this connection has attached, as it re-attaches it after a reconnect. */
typedef struct SessionRec {
        struct SessionRec *next;
        AttachRequest *req;             /* a deep copy of the application's request */
        char *id;                       /* what the daemon called it at the last attach */
} SessionRec;

/* A session id the application may hold, and what the daemon calls that session now. */
typedef struct IdMap {
        struct IdMap *next;
        char *from;
        char *to;
} IdMap;

/* One HelloReply; kept until the connection is freed, so pointers into it stay valid. */
typedef struct HelloRec {
        struct HelloRec *next;
        DaemonFrame *frame;
        cws_hello hello;
} HelloRec;

typedef enum ConnState {
        CONN_UP,                        /* calls go out */
        CONN_DOWN,                      /* lost; the reader is reconnecting and new calls wait */
        CONN_DEAD,                      /* closed, refused, or lost with reconnecting off */
} ConnState;

typedef struct Call {
        cws_conn *conn;
        uint64_t id;
        uint64_t gen;                   /* the socket it was sent on (conn->gen then) */
        struct Call *prev, *next;       /* in conn->calls while registered */
        bool registered;                /* routed to: no final frame yet, connection alive */
        bool ended;                     /* the final frame is queued, or the connection was lost */
        bool lost;                      /* ended by the connection's loss */
        pthread_cond_t cond;            /* frames arrived or the call ended; under conn->lock */
        CallFrame *head, **tail;
        uint32_t window;                /* the daemon's credit for this call, 0 = no credit */
        uint64_t unacked;               /* bytes consumed but not granted back yet */
        SessionRec *attach;             /* an AttachSession: remembered when its reply is routed */
        char *forget;                   /* a detach or close: this session is forgotten with its reply */
} Call;

struct cws_conn {
        int fd;                         /* -1 between sockets */
        uint64_t gen;                   /* which socket fd is: +1 per socket */
        FrameDecoder decoder;           /* the reading thread's */
        pthread_t reader;
        pthread_mutex_t lock;           /* see conn.c: calls, state, sessions, ids, refs */
        pthread_mutex_t write_lock;     /* one frame at a time on the socket; taken before lock */
        pthread_cond_t state_cond;      /* state or closing changed; under lock */
        atomic_uint_fast64_t next_id;
        Call *calls;
        unsigned refs;                  /* the application's, plus one per Call (or caller waiting) */
        ConnState state;
        bool closing;                   /* cws_conn_close() has begun */
        bool reconnect;
        int wait_ms;                    /* how long a call waits for a reconnect */
        atomic_uint_fast64_t reconnects;
        char lost_msg[768];             /* why the last socket ended: for the calls it took along */
        char dead_msg[768];             /* why the connection is CONN_DEAD */
        char retry_msg[512];            /* why the last reconnect attempt failed */
        char ended_msg[512];            /* a connection-level error frame on this socket, "" = none */
        char *path;
        char *client_name;
        SessionRec *sessions;           /* changed by the reader thread only, under lock */
        IdMap *ids;                     /* changed by the reader thread only, under lock */
        HelloRec *hellos;
        _Atomic(HelloRec *) hello;      /* the current one */
        atomic_size_t chunk_max;        /* the largest payload to put in one frame */
        unsigned seed;                  /* backoff jitter; the reader's */
};

/* Error helpers: every public function fills @err through these. */
int cws_fail(cws_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void cws_ok(cws_error *err);

/* A daemon error (a final frame with error) into @err; returns its code (never 0). */
int call_frame_error(const DaemonFrame *f, cws_error *err);

/*
 * The connection: connect, say Hello (as @client_name), start the reader
 * thread. Returns 0, UNAVAILABLE, or the daemon's code for a refused Hello.
 */
int conn_open(const char *path, const char *client_name, cws_conn **ret, cws_error *err);

/* Stop the reader (ending a reconnect), wake every caller, drop the application's reference. */
void conn_shutdown(cws_conn *c);

/* The current HelloReply. */
const cws_hello *conn_hello(const cws_conn *c);

/* Reconnecting on or off, and how long a call waits for it (< 0 = the default). */
void conn_set_reconnect(cws_conn *c, bool on, int wait_ms);

/* A new call with a fresh id, registered for its replies; waits while the connection is down. */
int call_new(cws_conn *c, uint32_t window, Call **ret, cws_error *err);

/* Send @f for @call (its call id is set here, a session id mapped after a reconnect). */
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
 * dropped). On success *@ret is the final frame (error-free). Attach, detach
 * and close requests also update the sessions re-attached after a reconnect.
 */
int call_unary(cws_conn *c, ClientFrame *f, DaemonFrame **ret, cws_error *err);

void daemon_frame_free(DaemonFrame *f);
