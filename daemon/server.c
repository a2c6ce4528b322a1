/*
 * Server: the listening socket of cwsandboxd. See server.h.
 *
 * Binds the socket file (replacing a stale one, never a live one) or adopts
 * an inherited listener, accepts connections, reads each peer's credentials
 * and applies the connection limits before a connection may send anything.
 * What a connection does afterwards is conn.c's business.
 *
 * Shutdown has two steps. A drain stops accepting and new requests, and
 * reports once the calls in flight have ended, or ends them itself when its
 * time is up; its reports come from its timer, so the layer above never
 * sees one inside its own call. Closing then lets every connection write
 * out what it holds, for at most SERVER_CLOSE_FLUSH_MS, closes them and
 * reports when the last handle is closed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "server-internal.h"

#define SERVER_BACKLOG          128

static void server_free_fields(Server *s) {
        free(s->path);
        free(s->daemon_version);
        free(s->backend_kind);
        free(s->backend_url);
        free(s);
}

static char *strdup_or_empty(const char *s) {
        return strdup(s ? s : "");
}

void server_maybe_done(Server *s) {
        void (*done)(void *userdata);

        if (!s->closing || s->n_handles > 0 || !s->done)
                return;
        done = s->done;
        s->done = NULL;
        done(s->done_userdata);
}

/* ---- draining -------------------------------------------------------------------------- */

static void server_on_drain_timer_close(uv_handle_t *h) {
        Server *s = container_of((uv_timer_t *)h, Server, drain_timer);
        void (*done)(void *userdata) = s->drain_done;

        /* Still set only when server_close() cut the drain short. */
        s->drain_done = NULL;
        s->n_handles--;
        if (done)
                done(s->drain_userdata);
        server_maybe_done(s);
}

static void server_drain_close_timer(Server *s) {
        s->drain_timer_open = false;
        uv_close((uv_handle_t *)&s->drain_timer, server_on_drain_timer_close);
}

/* Every call in flight has ended, or the time is up. */
static void server_on_drain_timer(uv_timer_t *t) {
        Server *s = container_of(t, Server, drain_timer);
        void (*done)(void *userdata);

        if (s->n_calls > 0) {
                log_warning("%u calls still in flight at the end of the drain; ending them", s->n_calls);
                /* Cancel hooks may end calls anywhere, but connections leave
                 * the list only in close callbacks, never during this walk. */
                for (Conn *c = s->conns; c; c = c->next)
                        conn_expire_calls(c, SERVER_DRAIN_EXPIRED_MESSAGE);
                /* A cancel hook may have closed the server. */
                if (!s->drain_timer_open)
                        return;
        } else
                log_info("drained: no call in flight");

        done = s->drain_done;
        s->drain_done = NULL;
        server_drain_close_timer(s);
        if (done)
                done(s->drain_userdata);
}

void server_calls_ended(Server *s) {
        if (s->n_calls == 0 && s->drain_timer_open && !s->closing)
                (void)uv_timer_start(&s->drain_timer, server_on_drain_timer, 0, 0);
}

void server_drain(Server *s, uint64_t timeout_ms, void (*done)(void *userdata), void *userdata) {
        if (s->draining || s->closing)
                return;
        s->draining = true;
        server_stop_accepting(s);

        (void)uv_timer_init(s->loop, &s->drain_timer);
        s->drain_timer_open = true;
        s->n_handles++;
        s->drain_done = done;
        s->drain_userdata = userdata;
        log_info("draining: %u calls in flight on %u connections, waiting up to %" PRIu64 " ms",
                 s->n_calls, s->n_conns, timeout_ms);
        (void)uv_timer_start(&s->drain_timer, server_on_drain_timer, s->n_calls > 0 ? timeout_ms : 0, 0);
}

unsigned server_calls_in_flight(const Server *s) {
        return s->n_calls;
}

/* ---- closing ---------------------------------------------------------------------------- */

static void server_on_flush_timer_close(uv_handle_t *h) {
        Server *s = container_of((uv_timer_t *)h, Server, flush_timer);

        s->n_handles--;
        server_maybe_done(s);
}

static void server_flush_close_timer(Server *s) {
        if (!s->flush_timer_open)
                return;
        s->flush_timer_open = false;
        uv_close((uv_handle_t *)&s->flush_timer, server_on_flush_timer_close);
}

/* Peers that still have not taken their output lose it. */
static void server_on_flush_timer(uv_timer_t *t) {
        Server *s = container_of(t, Server, flush_timer);

        log_warning("%u connections did not take their output within %u ms; closing them",
                    s->n_flushing, SERVER_CLOSE_FLUSH_MS);
        for (Conn *c = s->conns; c; c = c->next)
                conn_disconnect(c);
        server_flush_close_timer(s);
}

void server_flush_ended(Server *s) {
        s->n_flushing--;
        if (s->n_flushing == 0)
                server_flush_close_timer(s);
}

static void server_flush_start_timer(Server *s) {
        (void)uv_timer_init(s->loop, &s->flush_timer);
        s->flush_timer_open = true;
        s->n_handles++;
        (void)uv_timer_start(&s->flush_timer, server_on_flush_timer, SERVER_CLOSE_FLUSH_MS, 0);
}

/* ---- accepting -------------------------------------------------------------------------- */

static unsigned server_count_uid(const Server *s, uid_t uid) {
        unsigned n = 0;

        for (const Conn *c = s->conns; c; c = c->next)
                if (c->counted && c->peer.uid == uid)
                        n++;
        return n;
}

static int conn_read_peer(Conn *c) {
        struct ucred cred;
        socklen_t len = sizeof(cred);
        uv_os_fd_t fd;
        int r;

        r = uv_fileno((uv_handle_t *)&c->pipe, &fd);
        if (r < 0)
                return r;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return -errno;
        c->peer = (Peer) { .uid = cred.uid, .gid = cred.gid, .pid = cred.pid };
        return 0;
}

/* Refuse a connection above a limit: one error frame, then close. */
static bool server_over_limit(Server *s, Conn *c) {
        char msg[256];

        if (s->max_connections > 0 && s->n_conns >= s->max_connections)
                (void)snprintf(msg, sizeof(msg), "too many connections to the daemon (limit %u)",
                               s->max_connections);
        else if (c->peer.uid != 0 && s->max_per_uid > 0 &&
                 server_count_uid(s, c->peer.uid) >= s->max_per_uid)
                (void)snprintf(msg, sizeof(msg), "too many connections for uid %u (limit %u)",
                               (unsigned)c->peer.uid, s->max_per_uid);
        else
                return false;

        conn_refuse(c, msg);
        return true;
}

static void server_on_connection(uv_stream_t *listener, int status) {
        Server *s = container_of((uv_pipe_t *)listener, Server, listener);
        Conn *c;
        int r;

        if (status < 0) {
                log_warning("accepting a connection failed: %s", uv_strerror(status));
                return;
        }

        r = conn_new(s, &c);
        if (r < 0) {
                log_error("cannot accept a connection: %s", strerror(-r));
                return;
        }

        r = uv_accept(listener, (uv_stream_t *)&c->pipe);
        if (r >= 0)
                r = conn_read_peer(c);
        if (r < 0) {
                log_warning("connection %" PRIu64 ": cannot accept: %s", c->id, uv_strerror(r));
                conn_disconnect(c);
                return;
        }

        if (server_over_limit(s, c))
                return;

        conn_start(c);
}

/* ---- the listener ------------------------------------------------------------------------- */

/*
 * Make way for binding @path: nothing there, or a socket nobody answers on
 * (left by a daemon that died), which is removed. A live socket is
 * -EADDRINUSE; anything that is not a socket is left alone (-EEXIST).
 */
static int socket_path_prepare(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -1;
        struct stat st;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        if (lstat(path, &st) < 0)
                return errno == ENOENT ? 0 : -errno;
        if (!S_ISSOCK(st.st_mode)) {
                log_error("%s exists and is not a socket; not replacing it", path);
                return -EEXIST;
        }

        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        memcpy(sa.sun_path, path, strlen(path));
        /* Non-blocking: a full backlog (EAGAIN) means alive too. */
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 || errno == EAGAIN || errno == EINPROGRESS) {
                log_error("%s: another server is listening there", path);
                return -EADDRINUSE;
        }
        if (errno != ECONNREFUSED)
                return -errno;

        log_info("%s: removing a stale socket", path);
        if (unlink(path) < 0 && errno != ENOENT)
                return -errno;
        return 0;
}

/* Remove the socket file, if we bound it and it is still ours. */
static void server_unlink_path(Server *s) {
        struct stat st;

        if (!s->path)
                return;
        if (stat(s->path, &st) == 0 && st.st_dev == s->path_dev && st.st_ino == s->path_ino)
                (void)unlink(s->path);
        free(s->path);
        s->path = NULL;
}

static int server_bind(Server *s, const char *path) {
        struct stat st;
        int r;

        r = uv_pipe_bind(&s->listener, path);
        if (r < 0)
                return r;
        s->path = strdup(path);
        if (!s->path)
                return -ENOMEM;
        if (stat(path, &st) < 0)
                return -errno;
        s->path_dev = st.st_dev;
        s->path_ino = st.st_ino;
        /* chmod rather than umask: umask is process-wide and other threads
         * create files too. */
        if (chmod(path, 0666) < 0)
                return -errno;
        return 0;
}

static void server_on_listener_close(uv_handle_t *h) {
        Server *s = container_of((uv_pipe_t *)h, Server, listener);

        s->n_handles--;
        server_maybe_done(s);
}

static void server_on_failed_close(uv_handle_t *h) {
        server_free_fields(container_of((uv_pipe_t *)h, Server, listener));
}

int server_new(uv_loop_t *loop, const ServerOptions *opts, Server **ret) {
        Server *s;
        int r;

        if (!opts->dispatch || opts->max_frame_bytes == 0 ||
            (opts->listen_fd < 0 && (!opts->socket_path || !opts->socket_path[0])))
                return -EINVAL;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        *s = (Server) {
                .loop = loop,
                .max_frame = MIN(opts->max_frame_bytes, (size_t)FRAME_LENGTH_MAX),
                .max_connections = opts->max_connections,
                .max_per_uid = opts->max_connections_per_uid,
                .daemon_version = strdup_or_empty(opts->daemon_version),
                .backend_kind = strdup_or_empty(opts->backend_kind),
                .backend_url = strdup_or_empty(opts->backend_url),
                .dispatch = opts->dispatch,
                .conn_gone = opts->conn_gone,
                .userdata = opts->userdata,
        };
        if (!s->daemon_version || !s->backend_kind || !s->backend_url) {
                server_free_fields(s);
                return -ENOMEM;
        }

        if (opts->listen_fd < 0) {
                r = socket_path_prepare(opts->socket_path);
                if (r < 0) {
                        server_free_fields(s);
                        return r;
                }
        }

        (void)uv_pipe_init(loop, &s->listener, 0);
        s->listening = true;
        s->n_handles = 1;
        if (opts->listen_fd >= 0)
                r = uv_pipe_open(&s->listener, opts->listen_fd);
        else
                r = server_bind(s, opts->socket_path);
        if (r >= 0)
                r = uv_listen((uv_stream_t *)&s->listener, SERVER_BACKLOG, server_on_connection);
        if (r < 0) {
                if (opts->listen_fd >= 0)
                        log_error("cannot listen on the inherited socket: %s", strerror(-r));
                else
                        log_error("cannot listen on %s: %s", opts->socket_path, strerror(-r));
                server_unlink_path(s);
                uv_close((uv_handle_t *)&s->listener, server_on_failed_close);
                return r;
        }

        if (s->path)
                log_info("listening on %s", s->path);
        else
                log_info("listening on the inherited socket");
        *ret = s;
        return 0;
}

void server_stop_accepting(Server *s) {
        if (!s->listening)
                return;
        s->listening = false;
        server_unlink_path(s);
        uv_close((uv_handle_t *)&s->listener, server_on_listener_close);
}

void server_close(Server *s, void (*done)(void *userdata), void *userdata) {
        s->closing = true;
        s->done = done;
        s->done_userdata = userdata;
        server_stop_accepting(s);
        if (s->drain_timer_open) {
                /* A drain cut short: its calls end as at its timeout, their
                 * cancel comes from the close callbacks; the timer's close
                 * callback reports the drain. */
                for (Conn *c = s->conns; c; c = c->next)
                        conn_end_calls(c, SERVER_DRAIN_EXPIRED_MESSAGE);
                server_drain_close_timer(s);
        }
        /* Closing leaves the list alone until the close callbacks. */
        for (Conn *c = s->conns; c; c = c->next)
                conn_close_flushed(c);
        if (s->n_flushing > 0 && !s->flush_timer_open)
                server_flush_start_timer(s);
        /* With nothing open, done runs now. */
        server_maybe_done(s);
}

void server_free(Server *s) {
        if (!s)
                return;
        if (s->n_handles > 0) {
                /* Freeing now would leave the loop with our handles: a bug
                 * in the caller, and leaking is the only safe answer. */
                log_error("server_free() before its handles are closed; leaking it");
                return;
        }
        server_free_fields(s);
}

unsigned server_connections(const Server *s) {
        return s->n_conns;
}
