/*
 * The SDK's poll retry policy (cwsandbox 1.6 _poll_with_retry), reproduced for
 * the daemon's shared status trackers.
 *
 * The SDK has no generic RPC retry. Only status polls retry, and only on
 * transient errors, inside a time budget (30 s by default) that starts at the
 * first retryable failure, so a sandbox that takes minutes to schedule is not
 * charged for polls that succeeded. Each sleep honours the server's RetryInfo
 * hint (capped at 10 s and at what is left) or else uses decorrelated jitter
 * between 0.2 s and 2 s. Once the budget is spent the last error is reported
 * unchanged; this module only says "exhausted".
 *
 * Everything works on caller-supplied millisecond timestamps and an injectable
 * random source. Nothing here keeps a clock or a timer.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "retry.h"

/* Trusted AIP-193 reasons the SDK turns into a retryable exception. */
static const char *const transient_reasons[] = {
        "CWSANDBOX_RUNNER_UNAVAILABLE",
        "CWSANDBOX_BACKEND_UNAVAILABLE",
        "CWSANDBOX_FSS_BACKEND_THROTTLED",
        "CWSANDBOX_FSS_INFLIGHT_LIMIT",
};

/*
 * Trusted reasons the SDK turns into a non-retryable exception whatever the
 * code: a DEADLINE_EXCEEDED that carries CWSANDBOX_COMMAND_TIMEOUT is a
 * command timeout, not a slow backend.
 */
static const char *const fatal_reasons[] = {
        "CWSANDBOX_SANDBOX_NOT_FOUND",
        "CWSANDBOX_COMMAND_TIMEOUT",
};

static const char *const fatal_reason_prefixes[] = {
        "CWSANDBOX_FILE_",
        "CWSANDBOX_FSS_",       /* after the throttle reasons above */
};

static bool reason_in(const char *reason, const char *const *list, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (streq(reason, list[i]))
                        return true;
        return false;
}

RetryClass retry_classify(grpc_status_code code, const char *reason) {
        if (reason && reason[0]) {
                if (reason_in(reason, transient_reasons, ELEMENTSOF(transient_reasons)))
                        return RETRY_TRANSIENT;
                if (reason_in(reason, fatal_reasons, ELEMENTSOF(fatal_reasons)))
                        return RETRY_FATAL;
                for (size_t i = 0; i < ELEMENTSOF(fatal_reason_prefixes); i++)
                        if (strncmp(reason, fatal_reason_prefixes[i],
                                    strlen(fatal_reason_prefixes[i])) == 0)
                                return RETRY_FATAL;
                /* Any other reason: the SDK falls through to the code. */
        }

        switch (code) {
        case GRPC_STATUS_UNAVAILABLE:
        case GRPC_STATUS_DEADLINE_EXCEEDED:
        case GRPC_STATUS_RESOURCE_EXHAUSTED:
                return RETRY_TRANSIENT;
        default:
                /* NOT_FOUND, CANCELLED, INTERNAL, PERMISSION_DENIED, ... */
                return RETRY_FATAL;
        }
}

uint64_t retry_seconds_to_ms(double s) {
        double ms;

        if (!isfinite(s) || s <= 0)
                return 0;
        ms = round(s * 1000.0);
        if (ms >= 18446744073709551616.0)
                return UINT64_MAX;
        return (uint64_t)ms;
}

static double rand_default(void *userdata) {
        /* Only the loop thread draws, so drand48's shared state is fine. */
        return drand48();
}

static double draw(RetryRandFn rand01, void *userdata) {
        double r = rand01 ? rand01(userdata) : rand_default(NULL);

        /* A bad source must not produce a sleep outside the documented bounds. */
        if (!(r >= 0.0))
                return 0.0;
        if (r > 1.0)
                return 1.0;
        return r;
}

/* r * n for r in [0, 1], never above n (a double cannot hold every uint64). */
static uint64_t scale(double r, uint64_t n) {
        double v = r * (double)n;

        if (v >= (double)n)
                return n;
        return (uint64_t)v;
}

void retry_budget_init(RetryBudget *b, double budget_s) {
        *b = (RetryBudget){
                .budget_ms = retry_seconds_to_ms(budget_s),
                .prev_sleep_ms = RETRY_JITTER_BASE_MS,
        };
}

uint64_t retry_budget_remaining_ms(const RetryBudget *b, uint64_t now_ms) {
        uint64_t elapsed;

        if (!b->started)
                return b->budget_ms;
        /* A clock that went backwards charges nothing. */
        elapsed = now_ms > b->started_ms ? now_ms - b->started_ms : 0;
        return elapsed < b->budget_ms ? b->budget_ms - elapsed : 0;
}

static uint64_t jitter_delay(const RetryBudget *b, uint64_t remaining,
                             RetryRandFn rand01, void *userdata) {
        uint64_t upper, delay;

        upper = MIN(RETRY_JITTER_CAP_MS, b->prev_sleep_ms * 3 / 2);
        upper = MIN(upper, remaining);
        upper = MAX(upper, RETRY_JITTER_BASE_MS);

        delay = RETRY_JITTER_BASE_MS + scale(draw(rand01, userdata), upper - RETRY_JITTER_BASE_MS);
        return MIN(delay, remaining);
}

int retry_budget_next_delay(RetryBudget *b, uint64_t now_ms, uint64_t hint_ms,
                            RetryRandFn rand01, void *userdata, uint64_t *ret_delay_ms) {
        uint64_t remaining, delay;

        if (b->budget_ms == 0)
                return RETRY_E_EXHAUSTED;

        if (!b->started) {
                b->started = true;
                b->started_ms = now_ms;
        }

        remaining = retry_budget_remaining_ms(b, now_ms);
        if (remaining == 0)
                return RETRY_E_EXHAUSTED;

        if (hint_ms > 0)
                delay = MIN(MIN(hint_ms, remaining), RETRY_HINT_CAP_MS);
        else
                delay = jitter_delay(b, remaining, rand01, userdata);

        b->prev_sleep_ms = delay;
        *ret_delay_ms = delay;
        return 0;
}

uint64_t retry_rpc_timeout_ms(const RetryBudget *b, uint64_t now_ms, double poll_rpc_timeout_s) {
        uint64_t rpc_ms = retry_seconds_to_ms(poll_rpc_timeout_s);

        if (!b->started) {
                if (b->budget_ms == 0)
                        return rpc_ms;
                return MIN(rpc_ms, b->budget_ms);
        }

        return MIN(rpc_ms, MAX(RETRY_RPC_TIMEOUT_FLOOR_MS, retry_budget_remaining_ms(b, now_ms)));
}

uint64_t poll_interval_next(uint64_t prev_ms) {
        if (prev_ms == 0)
                return POLL_INTERVAL_INITIAL_MS;
        if (prev_ms >= POLL_INTERVAL_MAX_MS)
                return POLL_INTERVAL_MAX_MS;
        return MIN(prev_ms * 3 / 2, POLL_INTERVAL_MAX_MS);
}

uint64_t backoff_next(unsigned attempt, uint64_t base_ms, uint64_t cap_ms,
                      RetryRandFn rand01, void *userdata) {
        uint64_t ceiling;

        /* base * 2^attempt without overflowing: stop doubling at the cap. */
        ceiling = MIN(base_ms, cap_ms);
        for (unsigned i = 0; i < attempt && ceiling > 0 && ceiling < cap_ms; i++)
                ceiling = ceiling > cap_ms / 2 ? cap_ms : ceiling * 2;

        return scale(draw(rand01, userdata), ceiling);
}
