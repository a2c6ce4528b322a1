/*
 * Manager: the daemon's state and policy. It owns the backend client, the
 * local socket server, the sessions and the sandbox handles, and decides
 * what each client request means.
 *
 * Everything runs on the loop thread. main.c creates one Manager, runs the
 * loop, and frees it; tests link the same code.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "admission.h"
#include "backend.h"
#include "config.h"
#include "cqloop.h"
#include "hashmap.h"
#include "ledger.h"
#include "localchild.h"
#include "metrics.h"
#include "reaper.h"
#include "server.h"
#include "tracker.h"

/* Tags the daemon puts on every sandbox it creates. */
#define MANAGER_TAG                     "cwsandboxd"
#define MANAGER_HOST_TAG_PREFIX         "cwsandboxd-host-"
#define MANAGER_SESSION_TAG_PREFIX      "cwsandboxd-session-"
#define MANAGER_UID_TAG_PREFIX          "cwsandboxd-uid-"
#define MANAGER_HANDLE_TAG_PREFIX       "cwsandboxd-handle-"

typedef struct Session Session;
typedef struct Handle Handle;

typedef struct Manager {
        uv_loop_t *loop;
        const Config *config;
        CqLoop cq;
        Backend *backend;
        LocalChild *local;
        Server *server;
        Tracker tracker;
        Reaper reaper;
        Admission admission;
        HostMetrics metrics;
        MetricsTextfile textfile;
        Ledger *ledger;
        LedgerLoadResult ledger_load_result;
        char ledger_report[256];        /* what the load at start found */

        Hashmap sessions_by_id;         /* every session, closing ones too */
        Hashmap sessions_by_name;       /* open sessions only */
        Hashmap handles_by_id;          /* handle id -> Handle, while in a session */
        Hashmap handles_by_sandbox;     /* backend id -> Handle, while in a session */

        char host_tag[128];
        char *api_key;                  /* in memory only; wiped on free */
        uint64_t start_ms;
        int64_t start_wall_ms;
        uint64_t next_serial;

        /* start-up */
        void (*ready)(void *userdata);
        void *ready_userdata;
        int listen_fd;
        int start_failed;               /* negative errno when start-up failed after manager_new() */

        /* shut-down */
        bool stopping;
        unsigned stop_stage, stop_pending;
        void (*stopped)(void *userdata);
        void *stopped_userdata;
} Manager;

/**
 * manager_new() - create the Manager: the completion queue, the state ledger
 * (sessions and handles restored from it), the backend (and the embedded
 * backend child when no URL is configured), then the socket, then the first
 * reconciliation with the backend. @ready runs when that has ended.
 * Returns 0 or a negative errno (logged).
 */
int manager_new(uv_loop_t *loop, const Config *config, int listen_fd,
                void (*ready)(void *userdata), void *userdata, Manager **ret);

/**
 * manager_stop() - stop accepting, let calls in flight finish (bounded by
 * drain_timeout_seconds), close connections, stop every sandbox if
 * stop_on_shutdown (else leave them running), write the ledger, stop the
 * embedded backend and the completion queue; @done runs when the loop has
 * nothing of ours left. Then manager_free().
 */
void manager_stop(Manager *m, void (*done)(void *userdata), void *userdata);
Manager *manager_free(Manager *m);

/**
 * manager_reload() - apply what a reload may change: the admission limits
 * and policy from m->config (already updated by the caller), and the API
 * key, read again from its sources. Returns 0, or a negative errno when the
 * key cannot be read (the old one stays; logged).
 */
int manager_reload(Manager *m);

/*
 * manager_count_states() - the handles of open sessions that @uid may see
 * (root: all), counted by handle_state_slot().
 */
void manager_count_states(const Manager *m, uid_t uid, unsigned counts[]);

/*
 * manager_status_line() - "3 sessions, 12 sandboxes (5 running), 4 clients"
 * for the service manager's STATUS=.
 */
void manager_status_line(const Manager *m, char *buf, size_t size);

/*
 * manager_state_status() - the ledger's health for status: "ok", or why it
 * cannot write, and what the load at start found when it was not clean.
 */
void manager_state_status(const Manager *m, char *buf, size_t size);

/* Milliseconds of the loop's monotonic clock. */
uint64_t manager_now_ms(const Manager *m);

/* Wall-clock milliseconds since the epoch. */
int64_t manager_wall_ms(void);

/**
 * manager_new_id() - a fresh id "@prefix" + 16 hex digits, unique and hard to
 * guess. Returns a malloc'd string or NULL.
 */
char *manager_new_id(Manager *m, const char *prefix);

/**
 * manager_may_access() - may the peer @uid act on what @owner owns? The
 * owner itself and root may.
 */
static inline bool manager_may_access(uid_t uid, uid_t owner) {
        return uid == 0 || uid == owner;
}

/* The dispatch function the Server calls for every request. */
void manager_dispatch(void *userdata, Call *call, const ClientFrame *frame);
