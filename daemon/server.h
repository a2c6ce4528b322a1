/*
 * Server: the local socket. Accepts connections, reads each peer's
 * credentials (SO_PEERCRED), decodes frames, enforces the Hello handshake,
 * keeps each connection's calls in flight by call id, routes stream data,
 * credit and cancel to the call they name, and writes replies.
 *
 * What a request means is not decided here: every request frame goes to the
 * dispatch function given at creation, which answers through the Call.
 *
 * Limits: frames above max_frame_bytes and frames that do not decode end the
 * connection after an error frame (call id 0); a second call with an id in
 * use gets INVALID_ARGUMENT; connections above max_connections (or
 * max_connections_per_uid for one uid, root exempt) are refused with
 * RESOURCE_EXHAUSTED. Output to a client that does not read is bounded: a
 * connection holding more than SERVER_WRITE_HIGH_WATER bytes unsent reports
 * itself full (conn_writable()) and streaming calls wait for conn_on_drain().
 *
 * Shutdown: server_drain() lets the calls in flight end while new requests
 * are refused with a retryable UNAVAILABLE, and ends the calls that outlast
 * its timeout with one; server_close() then writes out what each connection
 * holds (for at most SERVER_CLOSE_FLUSH_MS) before closing it.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "cwsandboxd/v1/cwsandboxd.pb-c.h"
#include "status.h"

#define SERVER_PROTOCOL_VERSION         1
#define SERVER_WRITE_HIGH_WATER         (4u * 1024 * 1024)
/* How long server_close() waits for a peer to take the output queued for it. */
#define SERVER_CLOSE_FLUSH_MS           2000u

typedef struct Server Server;
typedef struct Conn Conn;
typedef struct Call Call;

typedef Cwsandboxd__V1__ClientFrame ClientFrame;
typedef Cwsandboxd__V1__DaemonFrame DaemonFrame;

/* Hooks of a call that takes stream data from its client; all optional. */
typedef struct CallOps {
        /* An exec_input or file_chunk frame with this call's id. */
        void (*input)(Call *call, const ClientFrame *frame);
        /* A Credit frame: @bytes more of stream data may be sent. */
        void (*credit)(Call *call, uint32_t bytes);
        /*
         * The client sent Cancel, or the call was detached (call->conn_gone):
         * its connection is gone, or a drain ran out of time and the client
         * already has the call's final frame. The call must still end with
         * call_finish()/call_fail(), now or later; once detached those only
         * free it.
         */
        void (*cancel)(Call *call);
        /* The connection has room for output again (see conn_writable()). */
        void (*drain)(Call *call);
} CallOps;

struct Call {
        Conn *conn;
        uint64_t id;
        const CallOps *ops;     /* NULL = a call that takes no stream data */
        void *userdata;
        bool cancelled;         /* cancel was delivered */
        bool conn_gone;         /* detached: nothing more reaches the client */
        /* private */
        Call *next_in_conn, *prev_in_conn;
};

/* Who is on the other end of a connection. */
typedef struct Peer {
        uid_t uid;
        gid_t gid;
        pid_t pid;
} Peer;

/*
 * dispatch: one request (any body other than hello, exec_input, file_chunk,
 * credit, cancel). @frame is only valid during the call: copy what is needed.
 * The handler answers with call_finish()/call_fail(), now or later.
 */
typedef void (*ServerDispatchFn)(void *userdata, Call *call, const ClientFrame *frame);

/* A connection closed: for scope=connection sandboxes and session attachments. */
typedef void (*ServerConnGoneFn)(void *userdata, Conn *conn);

typedef struct ServerOptions {
        const char *socket_path;        /* bind here ... */
        int listen_fd;                  /* ... unless this is >= 0 (socket activation) */
        size_t max_frame_bytes;
        unsigned max_connections;
        unsigned max_connections_per_uid;
        const char *daemon_version;
        const char *backend_kind;       /* "local" or "remote" */
        const char *backend_url;
        ServerDispatchFn dispatch;
        ServerConnGoneFn conn_gone;
        void *userdata;
} ServerOptions;

/**
 * server_new() - listen (mode 0666 socket, permissions are checked per call by
 * uid) and start accepting. A stale socket file is replaced only if nothing
 * answers on it; a live one is an error (-EADDRINUSE).
 * Returns 0 or a negative errno.
 */
int server_new(uv_loop_t *loop, const ServerOptions *opts, Server **ret);

/**
 * server_stop_accepting() - close the listening socket (and unlink a socket
 * file we bound); existing connections go on.
 */
void server_stop_accepting(Server *s);

/**
 * server_drain() - let the calls in flight end and take no new ones, for
 * SIGTERM.
 * @timeout_ms: how long the calls in flight may take.
 * @done:       runs once, from the loop and never inside this function, when
 *              no call is in flight on any connection; may be NULL.
 *
 * Stops accepting, as server_stop_accepting(). Connections stay open. From
 * now on a request on any connection is answered at once with a final
 * UNAVAILABLE error, retryable ("cwsandboxd is shutting down"), and never
 * reaches dispatch; Hello is still answered, and stream data, credit and
 * cancel still reach the calls in flight, which end as usual.
 *
 * If @timeout_ms passes first, each call still in flight gets a final
 * UNAVAILABLE error, retryable, is detached (conn_gone: its handler's later
 * call_finish()/call_fail() only free it) and gets cancel, unless it had it
 * already; then @done runs. Its connection stays open until server_close(),
 * which writes out those frames.
 *
 * server_close() during a drain ends it as the timeout would, except that
 * cancel comes as server_close() gives it; @done then runs before
 * server_close()'s. A second call, or one after server_close(), does
 * nothing, and its @done never runs.
 */
void server_drain(Server *s, uint64_t timeout_ms, void (*done)(void *userdata), void *userdata);

/**
 * server_close() - stop accepting, close every connection and report.
 * @done: runs once every handle is closed; then server_free().
 *
 * The calls in flight are detached at once and get cancel when their
 * connection's socket closes (a drain in progress first ends them, see
 * server_drain()). Nothing more is read; what is already queued for a
 * connection is written out before its socket closes, for at most
 * SERVER_CLOSE_FLUSH_MS, after which a peer that does not read loses it.
 */
void server_close(Server *s, void (*done)(void *userdata), void *userdata);
void server_free(Server *s);

unsigned server_connections(const Server *s);

/* Calls dispatched and neither ended nor detached: the ones a drain waits for. */
unsigned server_calls_in_flight(const Server *s);

/* ---- connections ----------------------------------------------------------------- */

const Peer *conn_peer(const Conn *c);
/* A small number unique for the daemon's lifetime, for logs and ownership. */
uint64_t conn_id(const Conn *c);
/* The client_name and pid from Hello. */
const char *conn_client_name(const Conn *c);

/* Per-connection slot for the layer above (sessions attached, and so on). */
void *conn_get_data(const Conn *c);
void conn_set_data(Conn *c, void *data);

/* False while more than SERVER_WRITE_HIGH_WATER bytes wait to be written. */
bool conn_writable(const Conn *c);

/* ---- calls ----------------------------------------------------------------------- */

/**
 * call_set_ops() - take stream data, credit and cancel for this call.
 */
void call_set_ops(Call *call, const CallOps *ops, void *userdata);

/**
 * call_send() - send a non-final frame (the call id is filled in; @frame is
 * packed at once and stays the caller's). Dropped if the connection is gone.
 * Returns 0, or -EPIPE when the connection is gone.
 */
int call_send(Call *call, DaemonFrame *frame);

/**
 * call_finish() - send the final frame (@frame may be NULL for an empty one)
 * and free the call.
 */
void call_finish(Call *call, DaemonFrame *frame);

/**
 * call_fail() - send a final frame carrying @st as its error, with
 * retryable derived from the code and reason (the SDK's classification) and
 * @sandbox_id (may be NULL), and free the call.
 */
void call_fail(Call *call, const Status *st, const char *sandbox_id);
