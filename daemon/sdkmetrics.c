/*
 * SdkMetrics: the SDK's cwsandbox/... set (see sdkmetrics.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "sdkmetrics.h"

/* One sandbox's entry in the per-sandbox exec map; the map's key is its id. */
typedef struct SandboxExecs {
        uint64_t execs;
        char id[];
} SandboxExecs;

void sdk_metrics_init(SdkMetrics *m) {
        *m = (SdkMetrics) { .execs_by_sandbox = HASHMAP_NULL(m->execs_by_sandbox) };
}

void sdk_metrics_reset(SdkMetrics *m) {
        HashmapIter it = HASHMAP_ITER_INIT;
        SandboxExecs *e;

        while ((e = hashmap_next(&m->execs_by_sandbox, &it))) {
                (void)hashmap_remove(&m->execs_by_sandbox, e->id);
                free(e);
        }
        hashmap_deinit(&m->execs_by_sandbox);
        sdk_metrics_init(m);
}

void sdk_metrics_created(SdkMetrics *m) {
        m->sandboxes_created++;
}

static SandboxExecs *execs_entry(SdkMetrics *m, const char *sandbox_id) {
        SandboxExecs *e = hashmap_get(&m->execs_by_sandbox, sandbox_id);
        size_t n = strlen(sandbox_id) + 1;

        if (e)
                return e;
        e = calloc(1, sizeof(*e) + n);
        if (!e)
                return NULL;
        memcpy(e->id, sandbox_id, n);
        if (hashmap_put(&m->execs_by_sandbox, e->id, e) < 0) {
                free(e);
                return NULL;
        }
        return e;
}

int sdk_metrics_exec(SdkMetrics *m, const char *sandbox_id, ExecOutcome outcome) {
        SandboxExecs *e;

        m->executions++;
        m->by_outcome[outcome]++;
        e = execs_entry(m, sandbox_id);
        if (!e)
                return -ENOMEM;
        e->execs++;
        return 0;
}

void sdk_metrics_startup(SdkMetrics *m, double seconds) {
        if (m->startup_count == 0 || seconds < m->startup_min_s)
                m->startup_min_s = seconds;
        if (m->startup_count == 0 || seconds > m->startup_max_s)
                m->startup_max_s = seconds;
        m->startup_count++;
        m->startup_sum_s += seconds;
}

void sdk_metrics_summary(const SdkMetricValue *values, size_t n, char *buf, size_t size) {
        size_t off = 0;

        if (size > 0)
                buf[0] = 0;
        for (size_t i = 0; i < n && off < size; i++) {
                int r = snprintf(buf + off, size - off, "%s%s=%.6g", i ? " " : "",
                                 values[i].name + strlen(SDK_METRICS_PREFIX), values[i].value);

                if (r < 0)
                        break;
                off += (size_t)r;
        }
}

bool sdk_metrics_any(const SdkMetrics *m) {
        return m->sandboxes_created > 0 || m->executions > 0 || m->startup_count > 0;
}

size_t sdk_metrics_values(const SdkMetrics *m, SdkMetricValue out[SDK_METRICS_MAX]) {
        size_t n = 0;

#define PUT(k, v) (out[n++] = (SdkMetricValue) { SDK_METRICS_PREFIX k, (double)(v) })
        PUT("sandboxes_created", m->sandboxes_created);
        PUT("executions", m->executions);
        PUT("exec_completed_ok", m->by_outcome[EXEC_OUTCOME_OK]);
        PUT("exec_completed_nonzero", m->by_outcome[EXEC_OUTCOME_NONZERO]);
        PUT("exec_failures", m->by_outcome[EXEC_OUTCOME_FAILURE]);
        if (m->executions > 0) {
                PUT("exec_completion_rate", (double)m->by_outcome[EXEC_OUTCOME_OK] / (double)m->executions);
                PUT("exec_failure_rate", (double)m->by_outcome[EXEC_OUTCOME_FAILURE] / (double)m->executions);
        }
        if (m->startup_count > 0) {
                PUT("startup_count", m->startup_count);
                PUT("avg_startup_seconds", m->startup_sum_s / (double)m->startup_count);
                PUT("min_startup_seconds", m->startup_min_s);
                PUT("max_startup_seconds", m->startup_max_s);
        }
        if (hashmap_size(&m->execs_by_sandbox) > 0) {
                HashmapIter it = HASHMAP_ITER_INIT;
                uint64_t sum = 0, lo = UINT64_MAX, hi = 0;
                SandboxExecs *e;

                while ((e = hashmap_next(&m->execs_by_sandbox, &it))) {
                        sum += e->execs;
                        lo = MIN(lo, e->execs);
                        hi = MAX(hi, e->execs);
                }
                PUT("avg_execs_per_sandbox", (double)sum / (double)hashmap_size(&m->execs_by_sandbox));
                PUT("min_execs_per_sandbox", lo);
                PUT("max_execs_per_sandbox", hi);
        }
#undef PUT
        return n;
}

int sdk_metrics_to_record(const SdkMetrics *m, Cwsandboxd__V1__LedgerSdkMetrics *out) {
        size_t n = hashmap_size(&m->execs_by_sandbox), i = 0;
        Cwsandboxd__V1__LedgerSandboxExecs *entries;
        HashmapIter it = HASHMAP_ITER_INIT;
        SandboxExecs *e;

        cwsandboxd__v1__ledger_sdk_metrics__init(out);
        out->sandboxes_created = m->sandboxes_created;
        out->executions = m->executions;
        out->exec_completed_ok = m->by_outcome[EXEC_OUTCOME_OK];
        out->exec_completed_nonzero = m->by_outcome[EXEC_OUTCOME_NONZERO];
        out->exec_failures = m->by_outcome[EXEC_OUTCOME_FAILURE];
        out->startup_count = m->startup_count;
        out->startup_sum_seconds = m->startup_sum_s;
        out->startup_min_seconds = m->startup_min_s;
        out->startup_max_seconds = m->startup_max_s;
        if (n == 0)
                return 0;
        out->execs_by_sandbox = calloc(n, sizeof(*out->execs_by_sandbox) + sizeof(Cwsandboxd__V1__LedgerSandboxExecs));
        if (!out->execs_by_sandbox)
                return -ENOMEM;
        /* One allocation: the pointer array, then the entries it points at. */
        entries = (void *)(out->execs_by_sandbox + n);
        while ((e = hashmap_next(&m->execs_by_sandbox, &it))) {
                cwsandboxd__v1__ledger_sandbox_execs__init(&entries[i]);
                entries[i].sandbox_id = e->id;
                entries[i].execs = e->execs;
                out->execs_by_sandbox[i] = &entries[i];
                i++;
        }
        out->n_execs_by_sandbox = n;
        return 0;
}

void sdk_metrics_record_free(Cwsandboxd__V1__LedgerSdkMetrics *out) {
        free(out->execs_by_sandbox);
        out->execs_by_sandbox = NULL;
        out->n_execs_by_sandbox = 0;
}

int sdk_metrics_from_record(SdkMetrics *m, const Cwsandboxd__V1__LedgerSdkMetrics *rec) {
        m->sandboxes_created = rec->sandboxes_created;
        m->executions = rec->executions;
        m->by_outcome[EXEC_OUTCOME_OK] = rec->exec_completed_ok;
        m->by_outcome[EXEC_OUTCOME_NONZERO] = rec->exec_completed_nonzero;
        m->by_outcome[EXEC_OUTCOME_FAILURE] = rec->exec_failures;
        m->startup_count = rec->startup_count;
        m->startup_sum_s = rec->startup_sum_seconds;
        m->startup_min_s = rec->startup_min_seconds;
        m->startup_max_s = rec->startup_max_seconds;
        for (size_t i = 0; i < rec->n_execs_by_sandbox; i++) {
                const Cwsandboxd__V1__LedgerSandboxExecs *r = rec->execs_by_sandbox[i];
                SandboxExecs *e = execs_entry(m, r->sandbox_id);

                if (!e)
                        return -ENOMEM;
                e->execs = r->execs;
        }
        return 0;
}
