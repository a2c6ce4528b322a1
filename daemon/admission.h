/*
 * Admission: keeps the host inside the account's limits on sandboxes alive
 * and creates per second, across every session and client.
 *
 * Every CreateSandbox the daemon sends needs a ticket granted first. A grant
 * takes a token from the create rate's bucket and a slot from the count of
 * sandboxes alive; the slot is held until the sandbox is known to be done
 * (or its create failed). A session (a scope) may have limits of its own on
 * top of the host's.
 *
 * When a limit is reached the policy decides: WAIT queues the ticket (FIFO;
 * a ticket only passes another when its own session is at its limit, so one
 * full session does not hold up the others) until it fits or its caller
 * gives up (admission_cancel()); REJECT refuses it at once with
 * RESOURCE_EXHAUSTED, retryable, with the time to the next token as a hint.
 *
 * The backend has the last word: a RESOURCE_EXHAUSTED from CreateSandbox
 * pauses every grant for its RetryInfo delay (or a backoff of 1 s doubling
 * to 30 s when there is none), and the next successful create ends the
 * backoff.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "prom.h"
#include "status.h"

/* A create rate: refills at @rate per second, holds at most @burst tokens. */
typedef struct TokenBucket {
        double rate;                    /* 0 = no limit */
        double burst;
        double tokens;
        uint64_t last_ms;
} TokenBucket;

/* The limits and counts of one scope: the host, or a session. */
typedef struct AdmissionScope {
        unsigned max_alive;             /* 0 = no limit */
        unsigned alive;                 /* slots held */
        TokenBucket bucket;
} AdmissionScope;

typedef struct AdmissionTicket AdmissionTicket;

/* @st is OK when granted, else why not (RESOURCE_EXHAUSTED, UNAVAILABLE at close). */
typedef void (*AdmissionFn)(AdmissionTicket *t, const Status *st);

struct AdmissionTicket {
        AdmissionScope *scope;          /* the session's, or NULL */
        AdmissionTicket *next, *prev;   /* in the queue */
        AdmissionFn fn;
        uint64_t queued_ms;
        bool queued;
        bool holding;                   /* a slot is held */
        bool counted_wait;              /* counted in stats.waits */
};

typedef struct AdmissionStats {
        uint64_t granted;
        uint64_t waits;                 /* grants that had to queue */
        uint64_t rejected_alive;        /* REJECT: no slot */
        uint64_t rejected_rate;         /* REJECT: no token, or paused */
        uint64_t cancelled;             /* callers that gave up while queued */
        uint64_t throttles;             /* RESOURCE_EXHAUSTED from the backend */
        Histogram wait;                 /* seconds admitted creates waited */
} AdmissionStats;

typedef struct Admission {
        uv_loop_t *loop;
        uv_timer_t timer;               /* the next token, or the end of a pause */
        AdmissionPolicy policy;
        AdmissionScope host;
        unsigned stopping;              /* alive without a slot: stops the reaper is still retrying */
        AdmissionTicket *head, *tail;
        unsigned queued;
        uint64_t paused_until_ms;
        uint64_t backoff_ms;            /* the next pause without a hint */
        bool pumping, repump;
        bool closed;
        AdmissionStats stats;
        /* A create queued for a slot: someone may look for slots of sandboxes that ended unseen. */
        void (*full)(void *userdata);
        void *full_userdata;
} Admission;

/* ---- token bucket (pure) ---------------------------------------------------------- */

/* @rate per second (0 = unlimited), full, with a burst of max(1, ceil(rate)). */
void token_bucket_init(TokenBucket *b, double rate, uint64_t now_ms);
/* Take one token if there is one. */
bool token_bucket_take(TokenBucket *b, uint64_t now_ms);
/* Milliseconds until a token is there (0: now). */
uint64_t token_bucket_wait_ms(TokenBucket *b, uint64_t now_ms);

/* ---- admission --------------------------------------------------------------------- */

/* @max_alive 0 and @rate 0: no host limits (the backend's pauses still apply). */
void admission_init(Admission *a, uv_loop_t *loop, AdmissionPolicy policy, unsigned max_alive, double rate);

/* New host limits and policy (a reload): waiting creates are looked at again. */
void admission_set_limits(Admission *a, AdmissionPolicy policy, unsigned max_alive, double rate);

/* A session's own limits (0 = none). */
void admission_scope_init(Admission *a, AdmissionScope *scope, unsigned max_alive, double rate);

/**
 * admission_request() - ask for a create of @t in @scope (NULL = host only).
 * @fn runs once with the outcome; a grant may run it before this returns,
 * a refusal or a queued grant never does.
 */
void admission_request(Admission *a, AdmissionTicket *t, AdmissionScope *scope, AdmissionFn fn);

/* The caller gave up: leave the queue without a callback. No-op if not queued. */
void admission_cancel(Admission *a, AdmissionTicket *t);

/* Count a sandbox that is alive without a grant (adopted, restored, found); a queued ticket leaves the queue. */
void admission_hold(Admission *a, AdmissionTicket *t, AdmissionScope *scope);

/* The sandbox is done or its create failed: give its slot back. No-op without one. */
void admission_release(Admission *a, AdmissionTicket *t);

/* Its session is going: keep the host slot, forget the scope. */
void admission_leave_scope(Admission *a, AdmissionTicket *t);

/*
 * @n sandboxes are alive though no handle holds them (stops being retried):
 * they count against the host's max_sandboxes.
 */
void admission_set_stopping(Admission *a, unsigned n);

/* The backend refused a create with RESOURCE_EXHAUSTED; @retry_delay_ms is its hint (0: none). */
void admission_throttled(Admission *a, uint32_t retry_delay_ms);

/* A create succeeded: the backend's backoff starts over. */
void admission_create_ok(Admission *a);

/**
 * admission_describe() - why @t (or a new ticket in @scope) cannot go now,
 * for errors and logs: "5 of 5 sandboxes alive on this host". "" when it can.
 */
void admission_describe(const Admission *a, const AdmissionScope *scope, char *buf, size_t size);

/*
 * Every queued ticket gets UNAVAILABLE and requests after this are refused;
 * @closed runs when the timer has closed (its handle is &a->timer).
 */
void admission_close(Admission *a, uv_close_cb closed);
