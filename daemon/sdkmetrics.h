/*
 * SdkMetrics: the Python SDK's per-session `cwsandbox/...` metrics, with its
 * names, meanings and present/absent rules (sdk-semantics section 9), held
 * by the daemon for every process attached to the session.
 *
 * Where the SDK keeps per-sandbox exec counts only while a wandb run is
 * attached, the daemon always keeps them: its metrics are always read by
 * someone, as the SDK's are once a run exists. Pure logic; the loop thread
 * is the only user, so a read with reset is atomic by construction.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cwsandboxd/v1/ledger.pb-c.h"
#include "hashmap.h"

#define SDK_METRICS_PREFIX      "cwsandbox/"
#define SDK_METRICS_MAX         16      /* the most values one read yields */

typedef enum ExecOutcome {
        EXEC_OUTCOME_OK,                /* exit code 0 */
        EXEC_OUTCOME_NONZERO,           /* an exit code other than 0 */
        EXEC_OUTCOME_FAILURE,           /* no exit code: an error, a timeout, a cancel */
        _EXEC_OUTCOME_MAX,
} ExecOutcome;

typedef struct SdkMetrics {
        uint64_t sandboxes_created;
        uint64_t executions;
        uint64_t by_outcome[_EXEC_OUTCOME_MAX];
        uint64_t startup_count;
        double startup_sum_s, startup_min_s, startup_max_s;
        Hashmap execs_by_sandbox;       /* sandbox id -> SandboxExecs */
} SdkMetrics;

typedef struct SdkMetricValue {
        const char *name;               /* "cwsandbox/executions" and so on */
        double value;
} SdkMetricValue;

void sdk_metrics_init(SdkMetrics *m);

/* The SDK's reset(): zero everything, the per-sandbox map included. */
void sdk_metrics_reset(SdkMetrics *m);

/* session.sandbox(): a handle was requested (started or not). */
void sdk_metrics_created(SdkMetrics *m);

/**
 * sdk_metrics_exec() - an exec in @sandbox_id completed with @outcome.
 * Returns 0, or -ENOMEM when its per-sandbox entry could not be made (the
 * session counters are updated anyway).
 */
int sdk_metrics_exec(SdkMetrics *m, const char *sandbox_id, ExecOutcome outcome);

/* A sandbox this session created was first seen RUNNING @seconds after its create was sent. */
void sdk_metrics_startup(SdkMetrics *m, double seconds);

/**
 * sdk_metrics_values() - the SDK's get_metrics(): always the five counters,
 * the rates when there were executions, the startup figures when there was a
 * startup, the per-sandbox figures when the map is not empty.
 * Returns the number of values written to @out.
 */
size_t sdk_metrics_values(const SdkMetrics *m, SdkMetricValue out[SDK_METRICS_MAX]);

/* "executions=3 exec_completed_ok=2 ..." (prefix dropped) for a log line. */
void sdk_metrics_summary(const SdkMetricValue *values, size_t n, char *buf, size_t size);

/* The SDK's has_metrics. */
bool sdk_metrics_any(const SdkMetrics *m);

/**
 * sdk_metrics_to_record() - @m for the ledger. @out's strings point into @m,
 * and its arrays are malloc'd: free them with sdk_metrics_record_free().
 * Returns 0 or -ENOMEM.
 */
int sdk_metrics_to_record(const SdkMetrics *m, Cwsandboxd__V1__LedgerSdkMetrics *out);
void sdk_metrics_record_free(Cwsandboxd__V1__LedgerSdkMetrics *out);

/* Set @m (fresh from sdk_metrics_init()) from a ledger record. Returns 0 or -ENOMEM. */
int sdk_metrics_from_record(SdkMetrics *m, const Cwsandboxd__V1__LedgerSdkMetrics *rec);
