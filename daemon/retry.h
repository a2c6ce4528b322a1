/*
 * Retry: the SDK's status-poll retry policy (error classification, a time
 * budget started at the first retryable failure, RetryInfo hints, decorrelated
 * jitter, clamped per-call timeouts), the poll interval for pending sandboxes,
 * and a plain exponential backoff for the daemon's own retries.
 *
 * Pure logic: time is passed in as milliseconds and randomness through a
 * function pointer, so every rule is unit-tested without a clock or a server.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <grpc/status.h>

/* The SDK's constants (sdk-semantics appendix A). */
#define RETRY_JITTER_BASE_MS            200ULL          /* lower bound of every jittered sleep */
#define RETRY_JITTER_CAP_MS             2000ULL         /* upper bound of every jittered sleep */
#define RETRY_HINT_CAP_MS               10000ULL        /* a RetryInfo hint is capped here */
#define RETRY_RPC_TIMEOUT_FLOOR_MS      100ULL          /* least per-call timeout after a retry */
#define RETRY_POLL_BUDGET_DEFAULT_S     30.0
#define RETRY_POLL_RPC_TIMEOUT_DEFAULT_S 15.0

#define POLL_INTERVAL_INITIAL_MS        200ULL
#define POLL_INTERVAL_MAX_MS            2000ULL

typedef enum RetryClass {
        RETRY_FATAL,
        RETRY_TRANSIENT,
} RetryClass;

enum {
        _RETRY_E_SUCCESS,
        RETRY_E_EXHAUSTED,      /* the budget is spent (or 0): give up, report the last error */
};

/* A source of uniform random numbers in [0, 1). */
typedef double (*RetryRandFn)(void *userdata);

typedef struct RetryBudget {
        uint64_t budget_ms;
        uint64_t started_ms;    /* time of the first retryable failure */
        uint64_t prev_sleep_ms; /* last sleep, for decorrelated jitter */
        bool started;
} RetryBudget;

/**
 * retry_classify() - is a failed poll worth another try?
 * @code:       the gRPC status of the failed call.
 * @reason:     the AIP-193 ErrorInfo reason, or NULL/"" when there is none.
 *              Pass it only when ErrorInfo.domain is "cwsandbox.com"; the SDK
 *              ignores reasons from any other domain.
 *
 * As the SDK's _translate_rpc_error() followed by _RETRYABLE_POLL_EXCEPTIONS:
 * a trusted reason decides first (CWSANDBOX_RUNNER_UNAVAILABLE,
 * CWSANDBOX_BACKEND_UNAVAILABLE and the snapshot throttle reasons are
 * transient; not-found, command-timeout, file and other snapshot reasons are
 * fatal); any other reason falls through to the code. By code, UNAVAILABLE,
 * DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED are transient; NOT_FOUND and every
 * other code are fatal. So a NOT_FOUND carrying CWSANDBOX_RUNNER_UNAVAILABLE
 * is transient, as in the SDK, while a plain NOT_FOUND never is.
 *
 * Return: RETRY_TRANSIENT or RETRY_FATAL.
 */
RetryClass retry_classify(grpc_status_code code, const char *reason);

/**
 * retry_budget_init() - a fresh budget of @budget_s seconds, not yet started.
 *
 * A negative, NaN or infinite @budget_s counts as 0 (no retry); the caller is
 * expected to have validated it. The SDK gives each poll loop invocation a
 * fresh budget; call this again to do the same.
 */
void retry_budget_init(RetryBudget *b, double budget_s);

/**
 * retry_budget_remaining_ms() - budget left at @now_ms; the whole budget
 * before the first failure.
 */
uint64_t retry_budget_remaining_ms(const RetryBudget *b, uint64_t now_ms);

/**
 * retry_budget_next_delay() - how long to sleep after a transient failure.
 * @b:          the budget; started by its first call.
 * @now_ms:     the time of the failure (any monotonic millisecond clock).
 * @hint_ms:    the RetryInfo.retry_delay of the error, or 0 when absent.
 * @rand01:     uniform source in [0, 1); NULL uses an internal generator.
 * @userdata:   passed to @rand01.
 * @ret_delay_ms: the sleep, written only on success.
 *
 * The first call starts the budget at @now_ms: time spent polling before the
 * first failure is not charged. With a hint the sleep is min(hint, remaining,
 * 10 s); without one it is uniform(0.2 s, max(0.2 s, min(2 s, 1.5 * previous
 * sleep, remaining))), capped at remaining. The "previous sleep" starts at
 * 0.2 s and is updated by every sleep, hinted or not.
 *
 * Return: 0 with *@ret_delay_ms set, or RETRY_E_EXHAUSTED when the budget is 0
 * or nothing of it remains.
 */
int retry_budget_next_delay(RetryBudget *b, uint64_t now_ms, uint64_t hint_ms,
                            RetryRandFn rand01, void *userdata, uint64_t *ret_delay_ms);

/**
 * retry_rpc_timeout_ms() - the deadline for the next poll call.
 * @b:          the budget.
 * @now_ms:     the time the call is started.
 * @poll_rpc_timeout_s: the session's poll_rpc_timeout_seconds.
 *
 * Before any failure: min(poll_rpc_timeout, budget), so a call never outlives
 * the whole budget; a budget of 0 disables retry, not the poll, so the call
 * then gets poll_rpc_timeout. After the first failure: min(poll_rpc_timeout,
 * max(0.1 s, remaining)).
 *
 * Return: the timeout in milliseconds.
 */
uint64_t retry_rpc_timeout_ms(const RetryBudget *b, uint64_t now_ms, double poll_rpc_timeout_s);

/**
 * poll_interval_next() - the sleep between status polls of a pending sandbox.
 * @prev_ms:    the previous interval, or 0 before the first.
 *
 * 200 ms, then x1.5 (rounded down) per poll, capped at 2 s:
 * 200, 300, 450, 675, 1012, 1518, 2000, 2000, ...
 */
uint64_t poll_interval_next(uint64_t prev_ms);

/**
 * backoff_next() - "full jitter" exponential backoff for the daemon's own
 * retries (a failed DeleteSandbox during cleanup, for example).
 * @attempt:    0 for the first retry, then 1, 2, ...
 * @base_ms:    the ceiling of the first delay.
 * @cap_ms:     the largest ceiling.
 * @rand01:     uniform source in [0, 1); NULL uses an internal generator.
 * @userdata:   passed to @rand01.
 *
 * The delay is uniform in [0, min(cap, base * 2^attempt)]. Spreading the whole
 * range (rather than adding a little jitter to a fixed step) keeps many
 * handles that failed together from retrying together. The SDK has no such
 * retry; it is used only where the daemon acts on its own.
 *
 * Return: the delay in milliseconds.
 */
uint64_t backoff_next(unsigned attempt, uint64_t base_ms, uint64_t cap_ms,
                      RetryRandFn rand01, void *userdata);

/**
 * retry_seconds_to_ms() - a finite, non-negative number of seconds as
 * milliseconds, rounded to nearest; anything else gives 0, and huge values
 * saturate.
 */
uint64_t retry_seconds_to_ms(double s);
