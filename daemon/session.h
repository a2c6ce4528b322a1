/*
 * Session: the SDK's Session, held by the daemon for every process that
 * attaches to it by name.
 *
 * A session has a name (the caller's, e.g. a training run id), an id (the
 * daemon's), an owner uid, the SDK defaults its sandboxes are created with,
 * and the handles it tracks. Connections attach and detach; when the last
 * one leaves, the session lingers (30 s by default, 0 = closes at once,
 * -1 = never) and then closes. Closing stops every sandbox concurrently and
 * reports each failure. A closing session is out of the by-name map, so a new
 * attach with the same name makes a new session.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "cwsandboxd/v1/cwsandboxd.pb-c.h"
#include "cwsandboxd/v1/ledger.pb-c.h"
#include "admission.h"
#include "manager.h"
#include "sdkmetrics.h"

typedef struct SessionCloser SessionCloser;

typedef struct SessionLimits {
        uint32_t max_sandboxes;         /* 0 = none */
        double max_creates_per_second;  /* 0 = none */
} SessionLimits;

struct Session {
        Manager *manager;
        char *id;
        char *name;
        char *tag;                      /* MANAGER_SESSION_TAG_PREFIX + id */
        uid_t owner;
        Cwsandboxd__V1__SandboxDefaults *defaults;      /* filled: merge_defaults_new() */
        int32_t linger_s;
        int32_t max_lifetime_s;
        int64_t created_ms;             /* wall clock */

        Conn **conns;                   /* connections attached */
        unsigned connections;
        uv_timer_t linger_timer;
        bool linger_armed;

        Handle *handles;                /* list of tracked handles */
        unsigned n_handles;

        bool closing;
        SessionCloser *closer;
        AdmissionScope admission;       /* its own limits (on top of the host's) and counts */
        SdkMetrics metrics;             /* the SDK's cwsandbox/... set */
};

/* What a connection holds: its attached sessions and its connection-scoped handles. */
typedef struct ConnState {
        Session **sessions;
        unsigned n_sessions;
        Handle *handles;                /* scope=connection handles it created */
} ConnState;

/**
 * session_attach() - join the open session called @name or create it.
 * Returns 0 (and sets *@ret_created), or a Status error (PERMISSION_DENIED
 * for another uid's session, INVALID_ARGUMENT for bad defaults).
 */
grpc_status_code session_attach(Manager *m, Conn *conn, const Cwsandboxd__V1__AttachSessionRequest *req,
                                Status *st, Session **ret, bool *ret_created);

/**
 * session_detach() - @conn leaves @s; may start the linger timer.
 */
void session_detach(Session *s, Conn *conn);

/* How a close ended: the stops, and the session's metrics not read before (the SDK's final flush). */
typedef struct SessionCloseResult {
        unsigned stopped;
        const Status *failures;
        const char *const *failed_ids;
        unsigned n_failures;
        const SdkMetricValue *metrics;
        size_t n_metrics;
} SessionCloseResult;

/**
 * session_close() - close @s: stop every handle concurrently, flush its
 * metrics into the close's result and the log, then free it. @done (may be
 * NULL) runs with the result.
 */
typedef void (*SessionClosedFn)(void *userdata, const SessionCloseResult *result);
void session_close(Session *s, SessionClosedFn done, void *userdata);

/**
 * session_lookup() - the session with @id that @conn's peer may act on.
 * Returns it, or NULL with NOT_FOUND or PERMISSION_DENIED in @st.
 */
Session *session_lookup(Manager *m, const Conn *conn, const char *id, Status *st);

/**
 * session_restore() - a session from its ledger record after a restart,
 * with no connection: its linger starts now. Returns it, or NULL when the
 * record is unusable (logged).
 */
Session *session_restore(Manager *m, const Cwsandboxd__V1__LedgerSession *rec);

/*
 * @s as a ledger record (strings point into @s); with @metrics (free it with
 * sdk_metrics_record_free()) its metrics too. Returns 0 or -ENOMEM.
 */
int session_record(const Session *s, Cwsandboxd__V1__LedgerSession *out, Cwsandboxd__V1__LedgerSdkMetrics *metrics);

/* Fill a Session message (strings point into @s; valid while @s lives). */
void session_to_pb(const Session *s, Cwsandboxd__V1__Session *out);

/* Add/remove a handle to/from the session's list (the session holds a ref). */
void session_add_handle(Session *s, Handle *h);
void session_remove_handle(Session *s, Handle *h);

/* A connection is gone: detach everywhere and stop its scope=connection handles. */
void session_conn_gone(Manager *m, Conn *conn);

ConnState *conn_state(Conn *conn);

/* Start the linger of every session with no connection (restored ones, at start-up). */
void session_linger_idle(Manager *m);

/* Close every open session (stop_on_shutdown); @done runs when all are closed. */
void session_close_all(Manager *m, void (*done)(void *userdata), void *userdata);

void session_free_all(Manager *m);
