/*
 * Admission: host-wide limits on sandboxes alive and creates per second
 * (see admission.h).
 *
 * The queue is pumped when something may have changed: a slot given back, a
 * token due (the timer), a pause over. A pump grants in queue order; the
 * callbacks run after the walk, so they may request, cancel or release
 * freely.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "admission.h"
#include "macro.h"

static const double wait_bounds[] = { 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300 };

#define BACKOFF_FIRST_MS        1000
#define BACKOFF_MAX_MS          30000

/* ---- token bucket ------------------------------------------------------------------ */

void token_bucket_init(TokenBucket *b, double rate, uint64_t now_ms) {
        double burst = rate > 0 ? MAX(1.0, ceil(rate)) : 0;

        *b = (TokenBucket) { .rate = rate, .burst = burst, .tokens = burst, .last_ms = now_ms };
}

static void bucket_refill(TokenBucket *b, uint64_t now_ms) {
        if (now_ms > b->last_ms) {
                b->tokens = MIN(b->burst, b->tokens + b->rate * (double)(now_ms - b->last_ms) / 1000.0);
                b->last_ms = now_ms;
        }
}

bool token_bucket_take(TokenBucket *b, uint64_t now_ms) {
        if (b->rate <= 0)
                return true;
        bucket_refill(b, now_ms);
        if (b->tokens < 1.0)
                return false;
        b->tokens -= 1.0;
        return true;
}

uint64_t token_bucket_wait_ms(TokenBucket *b, uint64_t now_ms) {
        if (b->rate <= 0)
                return 0;
        bucket_refill(b, now_ms);
        if (b->tokens >= 1.0)
                return 0;
        return (uint64_t)ceil((1.0 - b->tokens) * 1000.0 / b->rate);
}

/* ---- scopes ------------------------------------------------------------------------ */

static void arm(Admission *a, uint64_t delay_ms);

void admission_init(Admission *a, uv_loop_t *loop, AdmissionPolicy policy, unsigned max_alive, double rate) {
        *a = (Admission) { .loop = loop, .policy = policy, .backoff_ms = BACKOFF_FIRST_MS };
        admission_scope_init(a, &a->host, max_alive, rate);
        histogram_init(&a->stats.wait, wait_bounds, ELEMENTSOF(wait_bounds));
        uv_timer_init(loop, &a->timer);
}

void admission_set_limits(Admission *a, AdmissionPolicy policy, unsigned max_alive, double rate) {
        a->policy = policy;
        a->host.max_alive = max_alive;
        if (rate != a->host.bucket.rate)
                token_bucket_init(&a->host.bucket, rate, uv_now(a->loop));
        /* Creates that wait under the old policy keep waiting under reject; they are not refused late. */
        if (a->head && !a->closed)
                arm(a, 0);
}

void admission_scope_init(Admission *a, AdmissionScope *scope, unsigned max_alive, double rate) {
        *scope = (AdmissionScope) { .max_alive = max_alive };
        token_bucket_init(&scope->bucket, rate, uv_now(a->loop));
}

static bool scope_full(const AdmissionScope *s) {
        return s->max_alive > 0 && s->alive >= s->max_alive;
}

static bool host_full(const Admission *a) {
        return a->host.max_alive > 0 && a->host.alive + a->stopping >= a->host.max_alive;
}

static void hold(Admission *a, AdmissionTicket *t, AdmissionScope *scope) {
        t->holding = true;
        t->scope = scope;
        a->host.alive++;
        if (scope)
                scope->alive++;
}

/* ---- the queue ----------------------------------------------------------------------- */

static void unlink_ticket(Admission *a, AdmissionTicket *t) {
        if (t->prev)
                t->prev->next = t->next;
        else
                a->head = t->next;
        if (t->next)
                t->next->prev = t->prev;
        else
                a->tail = t->prev;
        t->next = t->prev = NULL;
        t->queued = false;
        a->queued--;
}

static void append_ticket(Admission *a, AdmissionTicket *t) {
        t->prev = a->tail;
        t->next = NULL;
        if (a->tail)
                a->tail->next = t;
        else
                a->head = t;
        a->tail = t;
        t->queued = true;
        a->queued++;
}

static void pump(Admission *a);

static void timer_fired(uv_timer_t *timer) {
        pump(container_of(timer, Admission, timer));
}

static void arm(Admission *a, uint64_t delay_ms) {
        (void)uv_timer_start(&a->timer, timer_fired, delay_ms, 0);
}

/*
 * Take what @t needs if it may go now: 0. Else the ms until a token may let
 * it (0 when only a slot would), and whether the host (not its scope) stops it.
 */
static bool try_take(Admission *a, AdmissionScope *scope, uint64_t now, uint64_t *ret_wait_ms, bool *ret_host) {
        uint64_t w;

        *ret_wait_ms = 0;
        *ret_host = true;
        if (a->paused_until_ms > now) {
                *ret_wait_ms = a->paused_until_ms - now;
                return false;
        }
        if (host_full(a))
                return false;
        if ((w = token_bucket_wait_ms(&a->host.bucket, now)) > 0) {
                *ret_wait_ms = w;
                return false;
        }
        *ret_host = false;
        if (scope && scope_full(scope))
                return false;
        if (scope && (w = token_bucket_wait_ms(&scope->bucket, now)) > 0) {
                *ret_wait_ms = w;
                return false;
        }
        (void)token_bucket_take(&a->host.bucket, now);
        if (scope)
                (void)token_bucket_take(&scope->bucket, now);
        return true;
}

static void grant(Admission *a, AdmissionTicket *t, uint64_t now) {
        hold(a, t, t->scope);
        a->stats.granted++;
        if (t->counted_wait)
                histogram_observe(&a->stats.wait, (double)(now - t->queued_ms) / 1000.0);
}

static void pump(Admission *a) {
        AdmissionTicket *granted = NULL, **granted_tail = &granted, *t, *next;
        uint64_t now, next_ms;

        if (a->pumping) {
                a->repump = true;
                return;
        }
        a->pumping = true;
        do {
                a->repump = false;
                now = uv_now(a->loop);
                next_ms = UINT64_MAX;
                for (t = a->head; t; t = next) {
                        uint64_t wait_ms;
                        bool host;

                        next = t->next;
                        if (!try_take(a, t->scope, now, &wait_ms, &host)) {
                                if (wait_ms > 0)
                                        next_ms = MIN(next_ms, wait_ms);
                                if (host)
                                        break;          /* FIFO: nobody passes a ticket the host stops */
                                continue;               /* its session is full; others may go */
                        }
                        unlink_ticket(a, t);
                        grant(a, t, now);
                        *granted_tail = t;
                        granted_tail = &t->next;
                }
                if (a->head && next_ms != UINT64_MAX)
                        arm(a, next_ms);
                while ((t = granted)) {
                        granted = t->next;
                        t->next = NULL;
                        t->fn(t, &STATUS_OK);
                }
                granted_tail = &granted;
        } while (a->repump);
        a->pumping = false;
}

/* ---- requests ------------------------------------------------------------------------ */

void admission_describe(const Admission *a, const AdmissionScope *scope, char *buf, size_t size) {
        uint64_t now = uv_now(a->loop);

        if (a->paused_until_ms > now)
                snprintf(buf, size, "the backend refused a create for lack of quota; creates resume in %" PRIu64 " ms",
                         a->paused_until_ms - now);
        else if (host_full(a))
                snprintf(buf, size, "%u of %u sandboxes alive on this host (max_sandboxes)%s",
                         a->host.alive + a->stopping, a->host.max_alive,
                         a->stopping ? ", counting stops still being retried" : "");
        else if (a->host.bucket.rate > 0 && a->host.bucket.tokens < 1.0)
                snprintf(buf, size, "more than %g creates per second on this host (max_creates_per_second)",
                         a->host.bucket.rate);
        else if (scope && scope_full(scope))
                snprintf(buf, size, "%u of %u sandboxes alive in this session (its max_sandboxes)",
                         scope->alive, scope->max_alive);
        else if (scope && scope->bucket.rate > 0 && scope->bucket.tokens < 1.0)
                snprintf(buf, size, "more than %g creates per second in this session (its max_creates_per_second)",
                         scope->bucket.rate);
        else if (size > 0)
                buf[0] = 0;
}

static void refuse(Admission *a, AdmissionTicket *t, AdmissionScope *scope, uint64_t wait_ms) {
        char why[160];
        Status st;

        admission_describe(a, scope, why, sizeof(why));
        status_set(&st, GRPC_STATUS_RESOURCE_EXHAUSTED, "admission: %s; try again later", why);
        strcpy(st.reason, "CWSANDBOXD_ADMISSION");
        st.retry_delay_ms = (uint32_t)MIN(wait_ms, (uint64_t)UINT32_MAX);
        if (wait_ms > 0 || a->paused_until_ms > uv_now(a->loop))
                a->stats.rejected_rate++;
        else
                a->stats.rejected_alive++;
        t->fn(t, &st);
}

void admission_request(Admission *a, AdmissionTicket *t, AdmissionScope *scope, AdmissionFn fn) {
        uint64_t now = uv_now(a->loop), wait_ms = 0;
        bool host;

        t->fn = fn;
        t->scope = scope;
        t->counted_wait = false;
        if (a->closed) {
                Status st;

                status_set(&st, GRPC_STATUS_UNAVAILABLE, "the daemon is shutting down");
                fn(t, &st);
                return;
        }
        /* With a queue only the pump decides, in order: nobody jumps it. */
        if (!a->head && try_take(a, scope, now, &wait_ms, &host)) {
                grant(a, t, now);
                fn(t, &STATUS_OK);
                return;
        }
        if (a->policy == ADMISSION_REJECT) {
                refuse(a, t, scope, wait_ms);
                return;
        }
        t->queued_ms = now;
        t->counted_wait = true;
        a->stats.waits++;
        append_ticket(a, t);
        pump(a);
        if (t->queued && a->full && (host_full(a) || (scope && scope_full(scope))))
                a->full(a->full_userdata);
}

void admission_cancel(Admission *a, AdmissionTicket *t) {
        if (!t->queued)
                return;
        unlink_ticket(a, t);
        a->stats.cancelled++;
        t->scope = NULL;
        /* It may have been the one the host stopped for. */
        if (a->head && !a->closed)
                arm(a, 0);
}

void admission_hold(Admission *a, AdmissionTicket *t, AdmissionScope *scope) {
        /* Its sandbox exists already (an interrupted create found): it no longer waits for a turn. */
        if (t->queued)
                unlink_ticket(a, t);
        if (!t->holding)
                hold(a, t, scope);
}

void admission_release(Admission *a, AdmissionTicket *t) {
        if (!t->holding)
                return;
        t->holding = false;
        a->host.alive--;
        if (t->scope)
                t->scope->alive--;
        t->scope = NULL;
        if (a->head && !a->closed)
                arm(a, 0);
}

void admission_leave_scope(Admission *a, AdmissionTicket *t) {
        admission_cancel(a, t);
        if (t->holding && t->scope) {
                t->scope->alive--;
                t->scope = NULL;
        }
}

void admission_set_stopping(Admission *a, unsigned n) {
        bool fewer = n < a->stopping;

        a->stopping = n;
        if (fewer && a->head && !a->closed)
                arm(a, 0);
}

void admission_throttled(Admission *a, uint32_t retry_delay_ms) {
        uint64_t delay = retry_delay_ms ? retry_delay_ms : a->backoff_ms;

        a->stats.throttles++;
        if (!retry_delay_ms)
                a->backoff_ms = MIN(a->backoff_ms * 2, (uint64_t)BACKOFF_MAX_MS);
        a->paused_until_ms = MAX(a->paused_until_ms, uv_now(a->loop) + delay);
        if (a->head && !a->closed)
                arm(a, a->paused_until_ms - uv_now(a->loop));
}

void admission_create_ok(Admission *a) {
        a->backoff_ms = BACKOFF_FIRST_MS;
}

void admission_close(Admission *a, uv_close_cb closed) {
        AdmissionTicket *t;
        Status st;

        if (a->closed)
                return;
        a->closed = true;
        status_set(&st, GRPC_STATUS_UNAVAILABLE, "the daemon is shutting down");
        while ((t = a->head)) {
                unlink_ticket(a, t);
                t->fn(t, &st);
        }
        uv_close((uv_handle_t *)&a->timer, closed);
}
