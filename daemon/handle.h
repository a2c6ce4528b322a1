/*
 * Handle: the daemon's view of one sandbox: the SDK's Sandbox object, shared
 * by every client of its session.
 *
 * A handle is created unstarted, with its CreateSandboxRequest already built
 * (defaults merged, daemon tags added, request_id frozen), so a start after a
 * failed create re-sends the same request and the backend deduplicates it.
 * The first operation starts it. Its state follows the backend's with the
 * SDK's guards: a terminal state never changes, TERMINATING only moves to a
 * terminal state, and an exit code is taken only from a polled COMPLETED.
 *
 * Lifetime: reference counted. The session holds one reference while the
 * handle is tracked; each operation in progress holds one. A handle that is
 * in no session (a sandbox looked up by backend id, or one already stopped)
 * is "transient": it is freed when its last operation ends.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "coreweave/sandbox/v1/sandbox.pb-c.h"
#include "cwsandboxd/v1/cwsandboxd.pb-c.h"
#include "cwsandboxd/v1/ledger.pb-c.h"
#include "admission.h"
#include "manager.h"
#include "retry.h"

typedef Cwsandboxd__V1__SandboxState SandboxState;
typedef struct HandleWaiter HandleWaiter;
typedef struct HandleStop HandleStop;

struct Handle {
        Manager *manager;
        unsigned refs;
        char *id;                       /* daemon handle id */
        char *sandbox_id;               /* backend id; NULL until created */
        Session *session;               /* NULL when transient */
        Handle *session_next, *session_prev;
        Conn *conn;                     /* scope=connection: the creating connection */
        Handle *conn_next, *conn_prev;
        Cwsandboxd__V1__Scope scope;
        uid_t owner;

        Coreweave__Sandbox__V1__CreateSandboxRequest *create_request;   /* until created */
        BackendCall *create_call;
        uint64_t create_sent_ms;        /* loop clock; startup time = first RUNNING - this */
        bool startup_recorded;

        SandboxState state;
        char *state_reason;
        bool has_exit_code;
        int32_t exit_code;
        char **tags;
        size_t n_tags;
        char *image;
        int64_t create_time_ms, start_time_ms, end_time_ms;

        HandleWaiter *waiters;          /* list */
        HandleStop *stop;               /* the stop in progress, shared by joiners */
        bool stop_owned;                /* this daemon asked the backend to stop it */
        bool cancelled;                 /* stopped before it was ever created */

        /* status tracker */
        bool tracked;
        Handle *track_next, *track_prev;
        RetryBudget budget;
        bool polling;                   /* a GetSandbox for it is in flight */
        bool seen_in_tick;

        /* ledger */
        uint64_t ledger_seq;            /* its latest record */
        bool start_pending;             /* the create waits for that record to be durable */
        AdmissionTicket admission;      /* its create's turn, then its slot while alive */
        bool unverified;                /* its sandbox is to be looked up (restored, or missing from a listing) */
        uint64_t seen_pass;             /* the last reconciliation pass whose listing showed it */
        int64_t created_ms;             /* wall clock, when the handle was made */
};

/* ---- lifetime -------------------------------------------------------------------- */

/**
 * handle_new_unstarted() - a new handle in @session for @args (merged with
 * the session's defaults). Returns 0, or a Status error (INVALID_ARGUMENT
 * naming the field).
 */
grpc_status_code handle_new_unstarted(Session *session, Conn *conn, const Cwsandboxd__V1__SandboxArgs *args,
                                      Cwsandboxd__V1__Scope scope, Status *st, Handle **ret);

/**
 * handle_new_from_backend() - a handle for a sandbox that exists on the
 * backend, in @session (adopt) or transient (@session NULL).
 */
Handle *handle_new_from_backend(Manager *m, Session *session, const Coreweave__Sandbox__V1__Sandbox *sb);

/**
 * handle_restore() - a handle of @session from its ledger record, after a
 * restart: with a sandbox id it is PENDING and unverified until the backend
 * shows it; without, it is unstarted with its frozen create request (a start
 * re-sends the same request_id). Returns it (the session holds it) or NULL
 * when the record is unusable (logged).
 */
Handle *handle_restore(Session *session, const Cwsandboxd__V1__LedgerHandle *rec);

/**
 * handle_take_sandbox() - @sb is the sandbox @h's create made (found by its
 * handle tag after an interrupted create): take its id and state.
 */
void handle_take_sandbox(Handle *h, const Coreweave__Sandbox__V1__Sandbox *sb);

/**
 * handle_record() - @h as a ledger record; @out's strings point into @h,
 * and @out->create_request.data is malloc'd (free it). Returns 0 or -ENOMEM.
 */
int handle_record(const Handle *h, Cwsandboxd__V1__LedgerHandle *out);

Handle *handle_ref(Handle *h);
Handle *handle_unref(Handle *h);

/* The owner uid a sandbox's tags name, or (uid_t)-1 when it has no such tag. */
uid_t handle_owner_from_tags(char *const *tags, size_t n_tags);

/* ---- lookup ---------------------------------------------------------------------- */

/*
 * @h has a reference the callee must drop with handle_unref(), or is NULL
 * with the error in @st.
 */
typedef void (*HandleFn)(void *userdata, Handle *h, const Status *st);

/* The tracked handle @id names (a handle id or a backend sandbox id), or NULL; no access check. */
Handle *handle_find(Manager *m, const char *id);

/**
 * handle_resolve() - the handle @id (a handle id or a backend sandbox id)
 * that @uid may act on. Known handles are checked at once; an unknown id is
 * looked up with GetSandbox (no retry, as the SDK's from_id) and given a
 * transient handle. A sandbox whose owner tag names another uid, or that has
 * no owner tag, is PERMISSION_DENIED for anyone but root.
 * @fn may run before this returns.
 */
void handle_resolve(Manager *m, uid_t uid, const char *id, HandleFn fn, void *userdata);

/* ---- waiting --------------------------------------------------------------------- */

typedef enum HandleWaitFor {
        HANDLE_WAIT_CREATED,            /* the create call has succeeded */
        HANDLE_WAIT_RUNNING,            /* RUNNING, PAUSED, TERMINATING or COMPLETED */
        HANDLE_WAIT_TERMINAL,           /* COMPLETED, FAILED or TERMINATED */
} HandleWaitFor;

/**
 * handle_wait() - start @h if needed and call @fn when it reaches @what, or
 * with an error: DEADLINE_EXCEEDED after @timeout_ms (< 0 = none),
 * FAILED_PRECONDITION if it can no longer get there (failed or terminated
 * before RUNNING, stopped before created), or the backend's error when the
 * create or the polls fail for good. @fn gets its own reference to @h and
 * never runs before this returns.
 * Returns the waiter, valid until @fn runs.
 */
HandleWaiter *handle_wait(Handle *h, HandleWaitFor what, int64_t timeout_ms, HandleFn fn, void *userdata);

/* End a waiter early: @fn runs soon with CANCELLED. */
void handle_waiter_cancel(HandleWaiter *w);

/**
 * handle_wait_running_by_id() - resolve @id for @uid, then wait for
 * RUNNING with the session's request timeout (@timeout_ms < 0) or
 * @timeout_ms; the preamble of exec, files and logs. A sandbox that is
 * stopping or done is FAILED_PRECONDITION at once. @fn never runs before this
 * returns.
 */
void handle_wait_running_by_id(Manager *m, uid_t uid, const char *id, int64_t timeout_ms,
                               HandleFn fn, void *userdata);

/* ---- state ----------------------------------------------------------------------- */

/**
 * handle_apply() - take a backend observation of the sandbox.
 * @poll: from the tracker's polls (may set the exit code; UNSPECIFIED counts
 *        as COMPLETED), else a query (get, list, from_id).
 */
void handle_apply(Handle *h, const Coreweave__Sandbox__V1__Sandbox *sb, bool poll);

/* The sandbox is gone from the backend (NOT_FOUND after we stopped it, ...). */
void handle_apply_gone(Handle *h, const char *why);

/* A poll failed for good: fail the waiters that need the backend. */
void handle_fail_waiters(Handle *h, const Status *st);

bool handle_is_terminal(const Handle *h);
/*
 * Counting handles by state: slot i holds state i for the wire's states
 * (UNSPECIFIED to PAUSED), the last slot UNSTARTED.
 */
#define HANDLE_STATE_SLOTS 10
unsigned handle_state_slot(SandboxState s);
SandboxState handle_slot_state(unsigned slot);

/* "RUNNING" and so on, for logs and status. */
const char *handle_state_name(SandboxState s);
/* Has waiters whose condition needs a backend poll. */
bool handle_needs_poll(const Handle *h);
/* Waiters need a terminal state (so listing must include terminated sandboxes). */
bool handle_needs_terminal(const Handle *h);

/* The session's request timeout in ms (300 s by default). */
int64_t handle_request_timeout_ms(const Handle *h);
double handle_poll_retry_budget_s(const Handle *h);
double handle_poll_rpc_timeout_s(const Handle *h);

/**
 * handle_to_pb() - fill @out; strings point into @h (valid while it lives and
 * does not change).
 */
void handle_to_pb(const Handle *h, Cwsandboxd__V1__SandboxInfo *out);

/* ---- stop and delete ------------------------------------------------------------- */

/**
 * handle_stop() - the SDK's stop(): DeleteSandbox with the grace period and
 * allow_missing, then wait until terminal. Concurrent stops share the first
 * one. Never-created handles are marked cancelled with no call. On success
 * the handle leaves its session. @fn runs with the outcome, possibly before
 * this returns (nothing to wait for).
 */
void handle_stop(Handle *h, double grace_s, bool missing_ok, HandleFn fn, void *userdata);

/* Leave the session (and the connection) and the maps; drops the session's ref. */
void handle_untrack(Handle *h);
