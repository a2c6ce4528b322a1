/*
 * Tracker: one status poller for every handle that has someone waiting on it.
 *
 * Each tick asks the backend about all of them at once: with few handles to
 * watch, one GetSandbox each; with more than TRACKER_LIST_THRESHOLD, one
 * ListSandboxes by the daemon's host tag (all pages), and GetSandbox only
 * for watched handles the list did not show. So any number of waiters costs
 * O(1) backend calls per tick. Ticks follow the SDK's poll interval (200 ms,
 * x1.5, up to 2 s; back to 200 ms when a new handle is watched) and its
 * retry policy per handle (budget from the first transient failure, jitter,
 * RetryInfo hints).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#define TRACKER_LIST_THRESHOLD  4
#define TRACKER_PAGE_SIZE       500
#define TRACKER_MAX_PAGES       100

typedef struct Manager Manager;
typedef struct Handle Handle;

typedef struct Tracker {
        Manager *manager;
        uv_timer_t timer;
        Handle *watched;                /* list through track_next/track_prev */
        unsigned n_watched;
        uint64_t interval_ms;
        unsigned calls_in_flight;       /* this tick's calls */
        uint64_t failure_delay_ms;      /* shortest retry delay asked for in this tick; 0 = none */
        bool tick_running;
        bool closed;
        uint64_t ticks, list_calls, get_calls;
        /* a tick's listing in progress */
        char *page_token;
        unsigned pages;
        bool list_terminated;
} Tracker;

void tracker_init(Tracker *t, Manager *m);

/* Close the timer; @done (may be NULL) runs from its close callback. */
void tracker_close(Tracker *t, void (*done)(uv_handle_t *));

/* Start watching @h (it has a waiter that needs the backend); polls soon. */
void tracker_watch(Tracker *t, Handle *h);

/* Stop watching @h. */
void tracker_unwatch(Tracker *t, Handle *h);
