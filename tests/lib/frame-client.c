/*
 * Frame client: blocking socket I/O with poll() for timeouts. Received bytes
 * collect in a buffer until a whole frame is there, so a timeout in the
 * middle of a frame loses nothing and the next call goes on from there.
 * ECONNRESET counts as the peer closing: a Unix socket reports it instead of
 * EOF when the daemon closed with our bytes unread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "frame-client.h"
#include "frame.h"
#include "macro.h"

struct FrameClient {
        int fd;
        uint8_t *buf;
        size_t len, cap;
};

int frame_client_connect(const char *path, FrameClient **ret) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -1;
        FrameClient *c;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, strlen(path));

        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
                return -errno;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->fd = TAKE_FD(fd);
        *ret = c;
        return 0;
}

FrameClient *frame_client_free(FrameClient *c) {
        if (!c)
                return NULL;
        if (c->fd >= 0)
                (void)close(c->fd);
        free(c->buf);
        free(c);
        return NULL;
}

int frame_client_fd(const FrameClient *c) {
        return c->fd;
}

int frame_client_send_raw(FrameClient *c, const void *data, size_t n) {
        const uint8_t *p = data;

        while (n > 0) {
                ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += k;
                n -= (size_t)k;
        }
        return 0;
}

int frame_client_send(FrameClient *c, const Cwsandboxd__V1__ClientFrame *frame) {
        size_t len = cwsandboxd__v1__client_frame__get_packed_size(frame);
        _cleanup_free_ uint8_t *buf = malloc(FRAME_HEADER_SIZE + len);
        int r;

        if (!buf)
                return -ENOMEM;
        r = frame_encode_header(buf, len);
        if (r < 0)
                return r;
        (void)cwsandboxd__v1__client_frame__pack(frame, buf + FRAME_HEADER_SIZE);
        return frame_client_send_raw(c, buf, FRAME_HEADER_SIZE + len);
}

static int64_t mono_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Read whatever is there into the buffer, waiting until @deadline (-1: forever). */
static int frame_client_fill(FrameClient *c, size_t want, int64_t deadline) {
        while (c->len < want) {
                struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
                int timeout = -1;
                ssize_t k;

                if (c->cap < want) {
                        uint8_t *p = realloc(c->buf, want);
                        if (!p)
                                return -ENOMEM;
                        c->buf = p;
                        c->cap = want;
                }
                if (deadline >= 0) {
                        int64_t left = deadline - mono_ms();
                        timeout = left > 0 ? (int)left : 0;
                }
                k = poll(&pfd, 1, timeout);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        return -ETIMEDOUT;

                k = recv(c->fd, c->buf + c->len, want - c->len, 0);
                if (k < 0) {
                        if (errno == EINTR || errno == EAGAIN)
                                continue;
                        if (errno == ECONNRESET)
                                return FRAME_CLIENT_E_EOF;
                        return -errno;
                }
                if (k == 0)
                        return FRAME_CLIENT_E_EOF;
                c->len += (size_t)k;
        }
        return 0;
}

int frame_client_recv(FrameClient *c, int timeout_ms, Cwsandboxd__V1__DaemonFrame **ret) {
        int64_t deadline = timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
        Cwsandboxd__V1__DaemonFrame *f;
        uint32_t len;
        int r;

        r = frame_client_fill(c, FRAME_HEADER_SIZE, deadline);
        if (r != 0)
                return r;
        len = frame_decode_header(c->buf);
        if (len > FRAME_CLIENT_MAX_FRAME)
                return -EMSGSIZE;
        r = frame_client_fill(c, FRAME_HEADER_SIZE + (size_t)len, deadline);
        if (r != 0)
                return r;

        f = cwsandboxd__v1__daemon_frame__unpack(NULL, len, c->buf + FRAME_HEADER_SIZE);
        c->len = 0;
        if (!f)
                return -EBADMSG;
        *ret = f;
        return 0;
}

int frame_client_hello(FrameClient *c, uint32_t version, const char *name, int timeout_ms,
                       Cwsandboxd__V1__DaemonFrame **ret) {
        Cwsandboxd__V1__ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__Hello hello = CWSANDBOXD__V1__HELLO__INIT;
        int r;

        hello.protocol_version = version;
        hello.client_name = (char *)name;
        hello.pid = (int32_t)getpid();
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_HELLO;
        f.hello = &hello;
        r = frame_client_send(c, &f);
        if (r < 0)
                return r;
        return frame_client_recv(c, timeout_ms, ret);
}

void frame_client_frame_free(Cwsandboxd__V1__DaemonFrame *f) {
        if (f)
                cwsandboxd__v1__daemon_frame__free_unpacked(f, NULL);
}
