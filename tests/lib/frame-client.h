/*
 * Frame client: a small blocking client of the daemon's local socket for
 * tests. It speaks raw frames (4-byte big-endian length, then one protobuf
 * message) and nothing more: no handshake logic beyond a helper, no call
 * bookkeeping, so a test can send anything, well-formed or not, and see
 * exactly what comes back.
 *
 * Return values: 0 on success, FRAME_CLIENT_E_EOF (positive) when the daemon
 * closed the connection, or a negative errno (-ETIMEDOUT when nothing
 * complete arrived in time, -EBADMSG for a frame that does not decode).
 * One client is used by one thread at a time.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cwsandboxd/v1/cwsandboxd.pb-c.h"

enum {
        _FRAME_CLIENT_E_SUCCESS,
        FRAME_CLIENT_E_EOF,     /* the peer closed (or reset) the connection */
};

/* The largest frame the client accepts from the daemon. */
#define FRAME_CLIENT_MAX_FRAME (64u * 1024 * 1024)

typedef struct FrameClient FrameClient;

/**
 * frame_client_connect() - connect to the Unix socket at @path.
 */
int frame_client_connect(const char *path, FrameClient **ret);

/**
 * frame_client_free() - close the connection. Accepts NULL; returns NULL.
 */
FrameClient *frame_client_free(FrameClient *c);

/**
 * frame_client_fd() - the socket, for shutdown() or socket options.
 */
int frame_client_fd(const FrameClient *c);

/**
 * frame_client_send() - pack @frame and send it with its header.
 */
int frame_client_send(FrameClient *c, const Cwsandboxd__V1__ClientFrame *frame);

/**
 * frame_client_send_raw() - send @n bytes as they are (headers included, if
 * any). Sending to a closed peer gives -EPIPE, never SIGPIPE.
 */
int frame_client_send_raw(FrameClient *c, const void *data, size_t n);

/**
 * frame_client_recv() - the next frame from the daemon.
 * @timeout_ms: how long to wait for the whole frame; < 0 waits forever.
 * @ret: the frame; free it with frame_client_frame_free().
 *
 * Returns 0, FRAME_CLIENT_E_EOF (also after a partial frame), -ETIMEDOUT
 * (bytes already received are kept for the next call), -EBADMSG, -EMSGSIZE
 * or another negative errno.
 */
int frame_client_recv(FrameClient *c, int timeout_ms, Cwsandboxd__V1__DaemonFrame **ret);

/**
 * frame_client_hello() - send Hello with @version, @name and our pid, and
 * receive the answer (a HelloReply, or an error frame).
 */
int frame_client_hello(FrameClient *c, uint32_t version, const char *name, int timeout_ms,
                       Cwsandboxd__V1__DaemonFrame **ret);

/**
 * frame_client_frame_free() - free a received frame. Accepts NULL.
 */
void frame_client_frame_free(Cwsandboxd__V1__DaemonFrame *f);
