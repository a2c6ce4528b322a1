/*
 * Server internals shared by server.c (the listener, accepting, limits,
 * shutdown) and conn.c (one connection: frames, calls, output). Nothing
 * outside those two files includes this.
 *
 * Ownership and lifetime:
 *  - The Server owns the listener and every Conn whose socket is open (the
 *    list @conns). Each handle counts in @n_handles until its close callback
 *    has run; server_close()'s done runs when that count reaches zero.
 *  - A Conn is reference counted: one reference for its socket handle, one
 *    per live Call. Closing the socket drops the first in the close
 *    callback, so a Conn outlives its socket while the layer above still
 *    holds calls of it, and is never freed inside its own read callback.
 *  - A Call belongs to the layer above from dispatch until call_finish() or
 *    call_fail(); those free it. A call is in flight (counted in
 *    @n_calls) until it ends or is detached: conn_gone set, when its
 *    connection goes or a drain runs out of time. A detached call stays in
 *    its connection's list, holding its reference, but is invisible to
 *    routing and sends nothing.
 *
 * Shutdown: server_drain() refuses new requests and reports, from its timer,
 * when @n_calls reaches zero or the time is up. server_close() closes a
 * connection with output queued only after uv_shutdown() reports it written
 * (CONN_PHASE_FLUSHING), or when @flush_timer gives up on the peer.
 */
#pragma once

#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "frame.h"
#include "server.h"

#define SERVER_CALLS_MAX        1024u           /* calls in flight per connection */
#define SERVER_READ_SIZE        (64u * 1024)    /* one read from a socket */
#define SERVER_CLIENT_NAME_MAX  64              /* of Hello.client_name, as kept for logs */

#define SERVER_DRAINING_MESSAGE "cwsandboxd is shutting down"
#define SERVER_DRAIN_EXPIRED_MESSAGE "cwsandboxd shut down before the call ended"

typedef enum ConnPhase {
        CONN_PHASE_HELLO,       /* waiting for Hello */
        CONN_PHASE_READY,       /* handshake done: requests accepted */
        CONN_PHASE_FLUSHING,    /* the calls are gone; writing out what is queued */
        CONN_PHASE_CLOSING,     /* uv_close() issued: the calls are gone */
        _CONN_PHASE_MAX,
        _CONN_PHASE_INVALID = -1,
} ConnPhase;

/* A walk over a connection's calls in progress (see conn.c). */
typedef struct CallCursor {
        Call *next;
        struct CallCursor *up;
} CallCursor;

struct Conn {
        Server *server;         /* NULL once the socket is closed */
        Conn *next, *prev;      /* in server->conns while the socket is open */
        uv_pipe_t pipe;
        uv_shutdown_t shutdown; /* in use in CONN_PHASE_FLUSHING */
        uint64_t id;
        Peer peer;
        ConnPhase phase;
        bool counted;           /* within the connection limits */
        bool greeted;           /* Hello accepted: the layer above may know it */
        bool reading;
        bool full;              /* above the high-water mark, until below half */
        unsigned refs;          /* the socket handle, plus one per live call */
        FrameDecoder decoder;
        char client_name[SERVER_CLIENT_NAME_MAX + 1];
        int32_t hello_pid;
        Call *calls;
        unsigned n_calls;
        CallCursor *cursors;
        size_t queued;          /* bytes given to uv_write() and not completed */
        void *data;
};

struct Server {
        uv_loop_t *loop;
        uv_pipe_t listener;
        bool listening;         /* the listener handle is open */
        char *path;             /* the socket file we bound, to unlink; NULL when adopted */
        dev_t path_dev;
        ino_t path_ino;

        size_t max_frame;
        unsigned max_connections;
        unsigned max_per_uid;
        char *daemon_version;
        char *backend_kind;
        char *backend_url;
        ServerDispatchFn dispatch;
        ServerConnGoneFn conn_gone;
        void *userdata;

        Conn *conns;
        unsigned n_conns;       /* counted connections */
        unsigned n_handles;     /* handles whose close callback has not run */
        uint64_t last_conn_id;
        unsigned n_calls;       /* calls in flight on open connections */
        bool closing;
        void (*done)(void *userdata);
        void *done_userdata;

        /* server_drain(): the timer is open (and counted in @n_handles)
         * from its start until it reports. */
        bool draining;          /* new requests are refused */
        bool drain_timer_open;
        uv_timer_t drain_timer;
        void (*drain_done)(void *userdata);
        void *drain_userdata;

        /* server_close(): connections writing out their output. */
        unsigned n_flushing;    /* uv_shutdown() requests not yet reported */
        bool flush_timer_open;
        uv_timer_t flush_timer;

        /* Reads are handed to the decoder (which copies) at once, so one
         * buffer serves every connection. */
        uint8_t read_buf[SERVER_READ_SIZE];
};

#define CONN_FMT "connection %" PRIu64 " (uid %u pid %d)"
#define CONN_ARGS(c) (c)->id, (unsigned)(c)->peer.uid, (int)(c)->peer.pid

/* ---- conn.c ---- */

/*
 * conn_new() - a Conn for the next connection on @s: its pipe handle
 * initialized (and counted in @s->n_handles), in @s->conns, not yet
 * accepted, counted against the limits or read.
 */
int conn_new(Server *s, Conn **ret);

/* conn_start() - count the accepted connection and start reading. */
void conn_start(Conn *c);

/* conn_refuse() - send @message as a RESOURCE_EXHAUSTED error frame, then close. */
void conn_refuse(Conn *c, const char *message);

/*
 * conn_disconnect() - end the connection: flags at once, the layer above's
 * callbacks later, from the close callback. Safe from anywhere; idempotent.
 */
void conn_disconnect(Conn *c);

/*
 * conn_close_flushed() - as conn_disconnect(), but the socket is closed only
 * once the output queued so far is written (or the server's flush timer
 * runs out). For server_close().
 */
void conn_close_flushed(Conn *c);

/*
 * conn_end_calls() - give every call in flight a final UNAVAILABLE error
 * with @message and detach it. Calls nothing of the layer above.
 */
void conn_end_calls(Conn *c, const char *message);

/*
 * conn_expire_calls() - conn_end_calls(), then cancel to every call not
 * cancelled yet. For a drain that ran out of time.
 */
void conn_expire_calls(Conn *c, const char *message);

/* ---- server.c ---- */

/* server_maybe_done() - run server_close()'s done once every handle is closed. */
void server_maybe_done(Server *s);

/* server_calls_ended() - @n_calls went down: a drain may be over. */
void server_calls_ended(Server *s);

/* server_flush_ended() - a uv_shutdown() of server_close() has reported. */
void server_flush_ended(Server *s);
