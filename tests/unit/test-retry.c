/*
 * Unit test of retry.c: the SDK's poll retry classification, the budget that
 * starts at the first failure, RetryInfo hints, jitter bounds, exhaustion,
 * per-call timeouts, the poll interval and the daemon's backoff. Time and
 * randomness are fed in. Prints TAP.
 */
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "macro.h"
#include "tap.h"
#include "retry.h"


#define check_eq_u(got, want, what) do {                                        \
                unsigned long long _g = (got), _w = (want);                     \
                ok(_g == _w, "%s: got %llu, want %llu", (what), _g, _w);        \
        } while (0)

#define check_range_u(got, lo, hi, what) do {                                   \
                unsigned long long _g = (got), _l = (lo), _h = (hi);            \
                ok(_g >= _l && _g <= _h, "%s: got %llu, want %llu..%llu",       \
                   (what), _g, _l, _h);                                         \
        } while (0)

/* A random source that always answers the same value. */
static double fixed_rand(void *userdata) {
        return *(const double *)userdata;
}

static const char *class_name(RetryClass c) {
        return c == RETRY_TRANSIENT ? "transient" : "fatal";
}

static void test_classify(void) {
        static const struct {
                grpc_status_code code;
                const char *reason;
                RetryClass want;
        } table[] = {
                { GRPC_STATUS_UNAVAILABLE, NULL, RETRY_TRANSIENT },
                { GRPC_STATUS_DEADLINE_EXCEEDED, NULL, RETRY_TRANSIENT },
                { GRPC_STATUS_RESOURCE_EXHAUSTED, NULL, RETRY_TRANSIENT },
                { GRPC_STATUS_UNAVAILABLE, "", RETRY_TRANSIENT },
                { GRPC_STATUS_NOT_FOUND, NULL, RETRY_FATAL },
                { GRPC_STATUS_CANCELLED, NULL, RETRY_FATAL },
                { GRPC_STATUS_INTERNAL, NULL, RETRY_FATAL },
                { GRPC_STATUS_PERMISSION_DENIED, NULL, RETRY_FATAL },
                { GRPC_STATUS_UNAUTHENTICATED, NULL, RETRY_FATAL },
                { GRPC_STATUS_INVALID_ARGUMENT, NULL, RETRY_FATAL },
                { GRPC_STATUS_FAILED_PRECONDITION, NULL, RETRY_FATAL },
                { GRPC_STATUS_UNKNOWN, NULL, RETRY_FATAL },
                { GRPC_STATUS_ABORTED, NULL, RETRY_FATAL },
                { GRPC_STATUS_UNIMPLEMENTED, NULL, RETRY_FATAL },
                { GRPC_STATUS_OK, NULL, RETRY_FATAL },
                /* Trusted reasons decide before the code. */
                { GRPC_STATUS_FAILED_PRECONDITION, "CWSANDBOX_RUNNER_UNAVAILABLE", RETRY_TRANSIENT },
                { GRPC_STATUS_INTERNAL, "CWSANDBOX_BACKEND_UNAVAILABLE", RETRY_TRANSIENT },
                { GRPC_STATUS_UNKNOWN, "CWSANDBOX_FSS_BACKEND_THROTTLED", RETRY_TRANSIENT },
                { GRPC_STATUS_UNKNOWN, "CWSANDBOX_FSS_INFLIGHT_LIMIT", RETRY_TRANSIENT },
                { GRPC_STATUS_DEADLINE_EXCEEDED, "CWSANDBOX_COMMAND_TIMEOUT", RETRY_FATAL },
                { GRPC_STATUS_UNAVAILABLE, "CWSANDBOX_SANDBOX_NOT_FOUND", RETRY_FATAL },
                { GRPC_STATUS_UNAVAILABLE, "CWSANDBOX_FILE_IO_FAILED", RETRY_FATAL },
                { GRPC_STATUS_UNAVAILABLE, "CWSANDBOX_FSS_NOT_READY", RETRY_FATAL },
                /* As the SDK: the trusted reason wins even over NOT_FOUND. */
                { GRPC_STATUS_NOT_FOUND, "CWSANDBOX_RUNNER_UNAVAILABLE", RETRY_TRANSIENT },
                /* Unknown reasons fall through to the code. */
                { GRPC_STATUS_UNAVAILABLE, "SOMETHING_ELSE", RETRY_TRANSIENT },
                { GRPC_STATUS_NOT_FOUND, "SOMETHING_ELSE", RETRY_FATAL },
                { GRPC_STATUS_INTERNAL, "CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED", RETRY_FATAL },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                RetryClass got = retry_classify(table[i].code, table[i].reason);

                ok(got == table[i].want, "classify(code %d, reason %s): got %s, want %s",
                   table[i].code, table[i].reason ? table[i].reason : "(none)",
                   class_name(got), class_name(table[i].want));
        }
}

static void test_budget_starts_at_first_failure(void) {
        RetryBudget b;
        double r = 0.0;
        uint64_t d = 0;
        int r_;

        retry_budget_init(&b, 30.0);
        check_eq_u(retry_budget_remaining_ms(&b, 1000000), 30000, "unstarted budget is whole");

        /* Polls succeeded for 100 s before the first failure: not charged. */
        r_ = retry_budget_next_delay(&b, 100000, 0, fixed_rand, &r, &d);
        check_eq_u(r_, 0, "first failure retries");
        check_eq_u(b.started_ms, 100000, "budget starts at the first failure");
        check_eq_u(retry_budget_remaining_ms(&b, 100000), 30000, "remaining at the start");
        check_eq_u(retry_budget_remaining_ms(&b, 110000), 20000, "remaining 10 s later");

        /* A later failure does not restart it. */
        r_ = retry_budget_next_delay(&b, 125000, 0, fixed_rand, &r, &d);
        check_eq_u(r_, 0, "second failure within the budget retries");
        check_eq_u(b.started_ms, 100000, "budget start unchanged by later failures");

        r_ = retry_budget_next_delay(&b, 130000, 0, fixed_rand, &r, &d);
        check_eq_u(r_, RETRY_E_EXHAUSTED, "failure at the end of the budget is exhausted");
        r_ = retry_budget_next_delay(&b, 200000, 0, fixed_rand, &r, &d);
        check_eq_u(r_, RETRY_E_EXHAUSTED, "failure after the budget is exhausted");

        /* A fresh init gives a fresh budget, as each SDK poll loop invocation. */
        retry_budget_init(&b, 30.0);
        r_ = retry_budget_next_delay(&b, 200000, 0, fixed_rand, &r, &d);
        check_eq_u(r_, 0, "re-init gives a fresh budget");
}

static void test_hints(void) {
        static const struct {
                uint64_t elapsed_ms;    /* since the first failure */
                uint64_t hint_ms;
                uint64_t want_ms;
                const char *what;
        } table[] = {
                { 0, 1500, 1500, "hint honoured" },
                { 0, 25000, 10000, "hint capped at 10 s" },
                { 27000, 5000, 3000, "hint capped at remaining" },
                { 29990, 10000, 10, "hint capped at a tiny remaining" },
                { 0, 1, 1, "1 ms hint honoured" },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                RetryBudget b;
                double r = 0.99;
                uint64_t d = 0;
                int r_;

                retry_budget_init(&b, 30.0);
                r_ = retry_budget_next_delay(&b, 5000, 0, fixed_rand, &r, &d);  /* start */
                r_ = retry_budget_next_delay(&b, 5000 + table[i].elapsed_ms, table[i].hint_ms,
                                             fixed_rand, &r, &d);
                ok(r_ == 0 && d == table[i].want_ms, "%s: rc %d, got %llu ms, want %llu ms",
                   table[i].what, r_, (unsigned long long)d,
                   (unsigned long long)table[i].want_ms);
        }
}

static void test_jitter(void) {
        static const struct {
                double rand;
                uint64_t prev_ms;       /* previous sleep; 0 = first retry */
                uint64_t elapsed_ms;
                uint64_t want_ms;
                const char *what;
        } table[] = {
                /* First retry: prev 0.2 s, upper = min(2, 0.3, rem) = 0.3 s. */
                { 0.0, 0, 0, 200, "first jitter, low end" },
                { 0.5, 0, 0, 250, "first jitter, middle" },
                { 1.0, 0, 0, 300, "first jitter, high end" },
                /* prev 1 s: upper 1.5 s. */
                { 1.0, 1000, 0, 1500, "jitter upper is 1.5 x prev" },
                /* prev 1.8 s: 2.7 s capped at 2 s. */
                { 1.0, 1800, 0, 2000, "jitter upper capped at 2 s" },
                { 0.0, 1800, 0, 200, "jitter lower is 0.2 s" },
                /* 1 s left: upper = min(2, 3, 1) = 1 s. */
                { 1.0, 2000, 29000, 1000, "jitter upper capped at remaining" },
                /* 0.1 s left: upper max(0.2, 0.1) = 0.2 s, then capped at 0.1 s. */
                { 0.5, 2000, 29900, 100, "jitter capped at a remaining below 0.2 s" },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                RetryBudget b;
                double r = table[i].rand;
                uint64_t d = 0;
                int r_;

                retry_budget_init(&b, 30.0);
                b.started = true;
                b.started_ms = 1000;
                if (table[i].prev_ms)
                        b.prev_sleep_ms = table[i].prev_ms;
                r_ = retry_budget_next_delay(&b, 1000 + table[i].elapsed_ms, 0, fixed_rand, &r, &d);
                ok(r_ == 0 && d == table[i].want_ms, "%s: rc %d, got %llu ms, want %llu ms",
                   table[i].what, r_, (unsigned long long)d,
                   (unsigned long long)table[i].want_ms);
        }
}

static void test_hint_zero_falls_back(void) {
        RetryBudget b;
        double r = 1.0;
        uint64_t d = 0, prev = 200;
        int r_;

        /* A hint of 0 means none: jitter, whose upper bound grows x1.5 to 2 s. */
        retry_budget_init(&b, 30.0);
        for (unsigned i = 0; i < 10; i++) {
                uint64_t upper = MAX(200, MIN(2000, prev * 3 / 2));

                r_ = retry_budget_next_delay(&b, 1000 + i, 0, fixed_rand, &r, &d);
                ok(r_ == 0 && d == upper, "hint 0, retry %u: got %llu ms, want %llu ms", i,
                   (unsigned long long)d, (unsigned long long)upper);
                prev = d;
        }

        /* Every draw stays within [0.2 s, 2 s] with the default generator. */
        retry_budget_init(&b, 30.0);
        for (unsigned i = 0; i < 200; i++) {
                r_ = retry_budget_next_delay(&b, 1000, 0, NULL, NULL, &d);
                if (r_ != 0 || d < 200 || d > 2000) {
                        ok(false, "default generator draw %u: rc %d, got %llu ms, want 200..2000",
                           i, r_, (unsigned long long)d);
                        return;
                }
        }
        ok(true, "default generator: 200 draws within 200..2000 ms");

        /* A source answering out of range is clamped. */
        retry_budget_init(&b, 30.0);
        r = NAN;
        r_ = retry_budget_next_delay(&b, 1000, 0, fixed_rand, &r, &d);
        check_eq_u(d, 200, "NaN from the source gives the lower bound");
        r = 7.0;
        r_ = retry_budget_next_delay(&b, 1000, 0, fixed_rand, &r, &d);
        check_range_u(d, 200, 300, "7.0 from the source stays within the bound");
}

static void test_exhaustion_sequence(void) {
        RetryBudget b;
        double r = 1.0;
        uint64_t now = 50000, d = 0, slept = 0;
        unsigned retries = 0;

        /* Sleeping what is asked, and failing at once, ends at the budget. */
        retry_budget_init(&b, 5.0);
        while (retry_budget_next_delay(&b, now, 0, fixed_rand, &r, &d) == 0) {
                now += d;
                slept += d;
                retries++;
                if (retries > 100)
                        break;
        }
        check_eq_u(slept, 5000, "sleeps add up to the budget exactly");
        check_range_u(retries, 3, 10, "a 5 s budget gives a handful of retries");
}

static void test_budget_zero(void) {
        RetryBudget b;
        double r = 0.5;
        uint64_t d = 12345;
        int r_;

        retry_budget_init(&b, 0.0);
        r_ = retry_budget_next_delay(&b, 1000, 0, fixed_rand, &r, &d);
        check_eq_u(r_, RETRY_E_EXHAUSTED, "budget 0: no retry");
        r_ = retry_budget_next_delay(&b, 1000, 500, fixed_rand, &r, &d);
        check_eq_u(r_, RETRY_E_EXHAUSTED, "budget 0: no retry even with a hint");
        check_eq_u(d, 12345, "ret_delay untouched on exhaustion");
        check_eq_u(retry_rpc_timeout_ms(&b, 1000, 15.0), 15000,
                   "budget 0: the poll still gets its rpc timeout");

        retry_budget_init(&b, -3.0);
        check_eq_u(b.budget_ms, 0, "negative budget counts as 0");
        retry_budget_init(&b, NAN);
        check_eq_u(b.budget_ms, 0, "NaN budget counts as 0");
        retry_budget_init(&b, INFINITY);
        check_eq_u(b.budget_ms, 0, "infinite budget counts as 0");
}

static void test_rpc_timeout(void) {
        RetryBudget b;
        double r = 0.0;
        uint64_t d;

        retry_budget_init(&b, 30.0);
        check_eq_u(retry_rpc_timeout_ms(&b, 0, 15.0), 15000, "first: min(15 s, 30 s)");
        retry_budget_init(&b, 5.0);
        check_eq_u(retry_rpc_timeout_ms(&b, 0, 15.0), 5000, "first: min(15 s, 5 s)");
        retry_budget_init(&b, 0.05);
        check_eq_u(retry_rpc_timeout_ms(&b, 0, 15.0), 50, "first: min(15 s, 0.05 s), no floor");

        retry_budget_init(&b, 30.0);
        (void)retry_budget_next_delay(&b, 1000, 0, fixed_rand, &r, &d);
        check_eq_u(retry_rpc_timeout_ms(&b, 1000, 15.0), 15000, "later: min(15 s, 30 s left)");
        check_eq_u(retry_rpc_timeout_ms(&b, 21000, 15.0), 10000, "later: min(15 s, 10 s left)");
        check_eq_u(retry_rpc_timeout_ms(&b, 30950, 15.0), 100, "later: 50 ms left floors at 0.1 s");
        check_eq_u(retry_rpc_timeout_ms(&b, 99000, 15.0), 100, "later: nothing left floors at 0.1 s");
        check_eq_u(retry_rpc_timeout_ms(&b, 30950, 0.05), 50,
                   "later: a smaller poll timeout wins over the floor");
}

static void test_poll_interval(void) {
        static const uint64_t want[] = { 200, 300, 450, 675, 1012, 1518, 2000, 2000 };
        uint64_t prev = 0;

        for (size_t i = 0; i < ELEMENTSOF(want); i++) {
                uint64_t got = poll_interval_next(prev);

                ok(got == want[i], "poll interval %zu: got %llu, want %llu", i,
                   (unsigned long long)got, (unsigned long long)want[i]);
                prev = got;
        }
        check_eq_u(poll_interval_next(1000000), 2000, "poll interval never exceeds 2 s");
}

static void test_backoff(void) {
        static const struct {
                unsigned attempt;
                double rand;
                uint64_t want_ms;
        } table[] = {
                { 0, 1.0, 500 },
                { 1, 1.0, 1000 },
                { 2, 1.0, 2000 },
                { 3, 1.0, 4000 },
                { 6, 1.0, 30000 },      /* 32 s capped */
                { 200, 1.0, 30000 },    /* no overflow */
                { 3, 0.5, 2000 },
                { 3, 0.0, 0 },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                double r = table[i].rand;
                uint64_t got = backoff_next(table[i].attempt, 500, 30000, fixed_rand, &r);

                ok(got == table[i].want_ms, "backoff attempt %u rand %.1f: got %llu, want %llu",
                   table[i].attempt, table[i].rand, (unsigned long long)got,
                   (unsigned long long)table[i].want_ms);
        }

        check_eq_u(backoff_next(0, 50000, 30000, NULL, NULL) <= 30000, 1,
                   "base above the cap is capped");
        check_eq_u(backoff_next(5, UINT64_MAX, UINT64_MAX, fixed_rand, &(double){ 0.0 }), 0,
                   "huge base does not overflow");
        check_eq_u(backoff_next(UINT32_MAX, 0, 30000, fixed_rand, &(double){ 1.0 }), 0,
                   "base 0 with a huge attempt ends at once");
        check_eq_u(backoff_next(UINT32_MAX, 1, 30000, fixed_rand, &(double){ 1.0 }), 30000,
                   "base 1 with a huge attempt reaches the cap");
}

static void test_seconds_to_ms(void) {
        check_eq_u(retry_seconds_to_ms(1.5), 1500, "1.5 s");
        check_eq_u(retry_seconds_to_ms(0.0004), 0, "0.4 ms rounds to 0");
        check_eq_u(retry_seconds_to_ms(-1.0), 0, "negative");
        check_eq_u(retry_seconds_to_ms(NAN), 0, "NaN");
        check_eq_u(retry_seconds_to_ms(1e30), UINT64_MAX, "huge saturates");
}

int main(void) {
        test_classify();
        test_budget_starts_at_first_failure();
        test_hints();
        test_jitter();
        test_hint_zero_falls_back();
        test_exhaustion_sequence();
        test_budget_zero();
        test_rpc_timeout();
        test_poll_interval();
        test_backoff();
        test_seconds_to_ms();

        return done();
}
