/*
 * Fake cwsandboxd: a small in-process stand-in for the daemon, so
 * libcwsandbox can be tested without one. A thread listens on a Unix socket
 * in a fresh temporary directory, speaks the local frame protocol (Hello
 * first, then calls by id, streams with credit and cancel) and answers every
 * request with canned data. It checks nothing about sessions or sandboxes:
 * ids, names and commands pick the canned behaviour.
 *
 * Canned behaviour (see fake-daemon.c for the exact replies):
 *  - attach "refuse": PERMISSION_DENIED; any other name is a session
 *    "ses-<name>", created by the first attach; after a restart that lost
 *    the state (fake_daemon_up() with lose_state, the n-th such) sessions
 *    are created again and called "ses-<n>-<name>", and requests naming a
 *    session id of an earlier epoch get NOT_FOUND;
 *  - sandbox id "missing": NOT_FOUND with reason CWSANDBOX_SANDBOX_NOT_FOUND
 *    (stop with missing_ok: a reply without sandbox); wait on "never": no
 *    answer until cancelled or the connection ends;
 *  - exec by argv[0]: "echo" (args on stdout, "warn" on stderr, exit 0),
 *    "exit N", "cut" (output, then the end without an exit status),
 *    "fail" (an error frame), "drop" (output, then the connection is closed),
 *    "cat" (stdin back on stdout, resizes reported on stderr, exit 0 at the
 *    end of stdin), "flood N" (N bytes on stdout, sent only within credit),
 *    "hang" (nothing until cancelled);
 *  - files: an in-memory store shared by every connection, "/etc/hostname"
 *    preloaded; a write larger than FAKE_FILE_MAX is refused before any
 *    chunk is taken;
 *  - logs: five lines "line 1".."line 5" (time_ms = 1000 * n), tail_lines
 *    honoured; with follow the call then stays open until cancelled.
 *
 * Streams spend credit as the real daemon does: exec output starts with the
 * request's initial_credit, file reads with FAKE_READ_CREDIT, logs with
 * FAKE_LOGS_CREDIT, and Credit frames add to it.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cwsandboxd/v1/cwsandboxd.pb-c.h"

#define FAKE_READ_CREDIT        (4u * 1024 * 1024)      /* as the daemon's initial read credit */
#define FAKE_LOGS_CREDIT        (256u * 1024)
#define FAKE_EXEC_CREDIT        (256u * 1024)           /* when the request gives none */
#define FAKE_FILE_MAX           (32u * 1024 * 1024)
#define FAKE_MAX_FRAME          (16u * 1024 * 1024)

typedef struct FakeDaemon FakeDaemon;

typedef struct FakeDaemonOpts {
        uint32_t protocol_version;      /* in HelloReply; 0 = 1 */
        bool refuse_hello;              /* answer Hello with a connection error and hang up */
        uint32_t max_frame_bytes;       /* announced and enforced; 0 = FAKE_MAX_FRAME */
} FakeDaemonOpts;

/*
 * What the fake counts; fake_daemon_count() and fake_daemon_wait() read them.
 * Every counter only grows, so "wait until it reaches base + n" cannot miss.
 * The effects of a frame are counted before its reply is sent.
 */
typedef enum FakeCounter {
        FAKE_CONNECTIONS,               /* connections accepted */
        FAKE_HANGING,                   /* calls that began to wait for a cancel (never, hang, follow), ever */
        FAKE_CANCELS,                   /* Cancel frames received */
        FAKE_CREDIT_BYTES,              /* bytes granted by Credit frames */
        FAKE_STRAY,                     /* stream frames for calls not in flight */
        FAKE_PROTOCOL_ERRORS,           /* frames the fake could not accept (too large, bad) */
        _FAKE_COUNTER_MAX,
} FakeCounter;

/**
 * fake_daemon_start() - start the fake on a new socket.
 * @o: options; NULL for the defaults.
 * @ret: the fake, for fake_daemon_free().
 *
 * Returns 0 or a negative errno.
 */
int fake_daemon_start(const FakeDaemonOpts *o, FakeDaemon **ret);

/**
 * fake_daemon_free() - close every connection, stop the thread, remove the
 * socket and its directory. Accepts NULL; returns NULL.
 */
FakeDaemon *fake_daemon_free(FakeDaemon *d);

/**
 * fake_daemon_socket() - the socket path, for cws_connect().
 */
const char *fake_daemon_socket(const FakeDaemon *d);

/**
 * fake_daemon_drop() - close every client connection now (the listener
 * stays). Returns once they are closed.
 */
void fake_daemon_drop(FakeDaemon *d);

/**
 * fake_daemon_down() - as a daemon that exits: close every client
 * connection and stop listening (the socket file is removed), so
 * connects fail until fake_daemon_up(). Returns once done.
 */
void fake_daemon_down(FakeDaemon *d);

/**
 * fake_daemon_up() - listen on the same path again after fake_daemon_down()
 * (with the listener still there, it only applies @lose_state).
 * @lose_state: as a daemon that restarts without its state: every session
 *              is forgotten and comes back with a new id when attached.
 *
 * Returns 0 or a negative errno.
 */
int fake_daemon_up(FakeDaemon *d, bool lose_state);

/**
 * fake_daemon_refuse_hello() - answer every later Hello as refuse_hello does
 * (a connection-level FAILED_PRECONDITION, then hang up), or stop doing so.
 */
void fake_daemon_refuse_hello(FakeDaemon *d, bool refuse);

/**
 * fake_daemon_shut_read() - stop reading every client connection
 * (shutdown(SHUT_RD)): the clients' next writes fail with EPIPE while their
 * reads still work. Returns once done.
 */
void fake_daemon_shut_read(FakeDaemon *d);

/**
 * fake_daemon_count() - the current value of @what.
 */
uint64_t fake_daemon_count(FakeDaemon *d, FakeCounter what);

/**
 * fake_daemon_wait() - wait until @what reaches at least @n.
 * @timeout_ms: a limit for a stuck test, not a measurement.
 *
 * Returns true when it did.
 */
bool fake_daemon_wait(FakeDaemon *d, FakeCounter what, uint64_t n, int timeout_ms);

/**
 * fake_daemon_requests() - how many requests with @body_case (a
 * CWSANDBOXD__V1__CLIENT_FRAME__BODY_* value) the fake has received.
 */
unsigned fake_daemon_requests(FakeDaemon *d, int body_case);

/**
 * fake_daemon_last() - a copy of the last request with @body_case, or NULL
 * if none came. Free it with cwsandboxd__v1__client_frame__free_unpacked().
 */
Cwsandboxd__V1__ClientFrame *fake_daemon_last(FakeDaemon *d, int body_case);

/**
 * fake_daemon_nth() - a copy of the @n-th request (from 0, in the order
 * received) with @body_case, or NULL. Kept for Hello, AttachSession,
 * DetachSession and CloseSession only; fake_daemon_requests() counts them.
 * Free it with cwsandboxd__v1__client_frame__free_unpacked().
 */
Cwsandboxd__V1__ClientFrame *fake_daemon_nth(FakeDaemon *d, int body_case, unsigned n);
