/*
 * Reaper: keeps what runs on the backend in line with what the daemon's
 * sessions own, so nothing the daemon created outlives its owner.
 *
 * A pass (at start-up, then every reap interval) lists the backend by the
 * daemon's host tag, all pages, live sandboxes only:
 *  - a sandbox a tracked handle owns is re-attached: its state is applied,
 *    and it is stopped if it is older than its session's max lifetime;
 *  - a sandbox whose handle tag names a tracked handle with no sandbox yet
 *    is that handle's interrupted create: the handle takes it;
 *  - a sandbox whose create is still in flight is left to its reply;
 *  - anything else (its session is closed or was never recorded, its
 *    connection is gone, it was stopped before its create answered) is an
 *    orphan: it is stopped and counted as reaped.
 * After a pass, live handles the listing did not show (restored from the
 * ledger, or ended with nobody waiting on them) are looked up one by one.
 *
 * Stops the daemon starts on its own (orphans, session close, connection
 * scope, lifetimes) that fail are retried here with backoff (1 s doubling to
 * 60 s, with jitter) until they succeed or the sandbox is gone; the first
 * failure of each is logged with its reason, the rest at debug level.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "hashmap.h"
#include "status.h"

typedef struct Manager Manager;

typedef struct ReaperStats {
        uint64_t passes;
        uint64_t pass_failures;
        uint64_t reaped;                /* orphans found and stopped */
        uint64_t resolved;              /* interrupted creates matched to their handle */
        uint64_t lifetime_stops;
        uint64_t stop_failures;         /* failed stops the daemon started itself, retries included */
        uint64_t stop_retries;
} ReaperStats;

typedef struct Reaper {
        Manager *manager;
        uv_timer_t pass_timer;
        uv_timer_t retry_timer;
        bool closed;
        bool passing;
        char *page_token;
        unsigned pages;
        uint64_t pass_no;                       /* the pass in progress, or the last */
        uint64_t last_pass_ms;                  /* when the last pass ended */
        bool first_done;
        void (*reconciled)(void *userdata);     /* after the first pass */
        void *reconciled_userdata;
        Hashmap retries;                        /* sandbox id -> StopRetry */
        ReaperStats stats;
} Reaper;

void reaper_init(Reaper *r, Manager *m);

/**
 * reaper_start() - run a pass now and then every reap interval.
 * @reconciled runs once, when the first pass has ended (well or not).
 */
void reaper_start(Reaper *r, void (*reconciled)(void *userdata), void *userdata);

/**
 * reaper_stop_sandbox() - stop @sandbox_id (DeleteSandbox, missing is fine),
 * retrying with backoff until it is gone. A sandbox already queued is not
 * queued twice. @session_id (may be NULL) is for the logs. @failed: the
 * error of a stop that already failed (counted and logged here; the first
 * retry then waits its backoff), or NULL to send at once.
 */
void reaper_stop_sandbox(Reaper *r, const char *sandbox_id, const char *session_id, const Status *failed);

/*
 * reaper_pass_soon() - a pass now rather than at the next interval (at most
 * one every 5 s): admission waits on slots that may belong to sandboxes that
 * have ended unseen.
 */
void reaper_pass_soon(Reaper *r);

/* Sandboxes waiting for a stop to succeed. */
unsigned reaper_pending_stops(const Reaper *r);

/**
 * reaper_close() - no more passes or retries; @done runs when both timers
 * are closed. Calls still in flight end quietly.
 */
void reaper_close(Reaper *r, void (*done)(void *userdata), void *userdata);
