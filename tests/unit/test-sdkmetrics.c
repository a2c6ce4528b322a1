/*
 * Unit test of sdkmetrics.c: the SDK's cwsandbox/... values after known
 * events, with its present/absent rules (rates only with executions,
 * startup figures only with a startup, per-sandbox figures only with a
 * non-empty map), has_metrics, reset, the ledger round trip and the log
 * summary. Prints TAP.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "macro.h"
#include "sdkmetrics.h"
#include "tap.h"

typedef struct Values {
        SdkMetricValue v[SDK_METRICS_MAX];
        size_t n;
} Values;

static Values read_values(const SdkMetrics *m) {
        Values r;

        r.n = sdk_metrics_values(m, r.v);
        return r;
}

/* The value of cwsandbox/@name, or NAN when absent. */
static double get(const Values *r, const char *name) {
        char full[64];

        snprintf(full, sizeof(full), SDK_METRICS_PREFIX "%s", name);
        for (size_t i = 0; i < r->n; i++)
                if (streq(r->v[i].name, full))
                        return r->v[i].value;
        return NAN;
}

static void is_value(const Values *r, const char *name, double want) {
        double got = get(r, name);

        ok(fabs(got - want) < 1e-9, "%s = %g (got %g)", name, want, got);
}

static void is_absent(const Values *r, const char *name) {
        ok(isnan(get(r, name)), "%s is absent", name);
}

static void test_empty(void) {
        SdkMetrics m;
        Values r;

        sdk_metrics_init(&m);
        r = read_values(&m);
        is_int(r.n, 5, "empty: only the five counters");
        is_value(&r, "sandboxes_created", 0);
        is_value(&r, "executions", 0);
        is_value(&r, "exec_completed_ok", 0);
        is_value(&r, "exec_completed_nonzero", 0);
        is_value(&r, "exec_failures", 0);
        is_absent(&r, "exec_completion_rate");
        is_absent(&r, "startup_count");
        is_absent(&r, "avg_execs_per_sandbox");
        ok(!sdk_metrics_any(&m), "empty: has_metrics is false");
        sdk_metrics_created(&m);
        ok(sdk_metrics_any(&m), "a requested sandbox: has_metrics is true");
        r = read_values(&m);
        is_value(&r, "sandboxes_created", 1);
        is_absent(&r, "exec_failure_rate");
        sdk_metrics_reset(&m);
}

static void test_workload(SdkMetrics *m) {
        Values r;

        sdk_metrics_init(m);
        for (int i = 0; i < 3; i++)
                sdk_metrics_created(m);
        (void)sdk_metrics_exec(m, "sb-a", EXEC_OUTCOME_OK);
        (void)sdk_metrics_exec(m, "sb-a", EXEC_OUTCOME_NONZERO);
        (void)sdk_metrics_exec(m, "sb-a", EXEC_OUTCOME_FAILURE);
        is_int(sdk_metrics_exec(m, "sb-b", EXEC_OUTCOME_OK), 0, "an exec is counted");
        sdk_metrics_startup(m, 1.5);
        sdk_metrics_startup(m, 0.5);
        sdk_metrics_startup(m, 2.5);
        r = read_values(m);
        is_int(r.n, 14, "workload: every value present");
        is_value(&r, "sandboxes_created", 3);
        is_value(&r, "executions", 4);
        is_value(&r, "exec_completed_ok", 2);
        is_value(&r, "exec_completed_nonzero", 1);
        is_value(&r, "exec_failures", 1);
        is_value(&r, "exec_completion_rate", 0.5);
        is_value(&r, "exec_failure_rate", 0.25);
        is_value(&r, "startup_count", 3);
        is_value(&r, "avg_startup_seconds", 1.5);
        is_value(&r, "min_startup_seconds", 0.5);
        is_value(&r, "max_startup_seconds", 2.5);
        is_value(&r, "avg_execs_per_sandbox", 2);
        is_value(&r, "min_execs_per_sandbox", 1);
        is_value(&r, "max_execs_per_sandbox", 3);
}

static void test_reset(void) {
        SdkMetrics m;
        Values r;

        test_workload(&m);
        sdk_metrics_reset(&m);
        r = read_values(&m);
        is_int(r.n, 5, "reset: back to the five counters");
        is_value(&r, "executions", 0);
        is_absent(&r, "min_execs_per_sandbox");
        ok(!sdk_metrics_any(&m), "reset: has_metrics is false");
        /* The map starts over: a sandbox seen before counts from one again. */
        (void)sdk_metrics_exec(&m, "sb-a", EXEC_OUTCOME_OK);
        r = read_values(&m);
        is_value(&r, "max_execs_per_sandbox", 1);
        is_value(&r, "exec_completion_rate", 1);
        is_value(&r, "exec_failure_rate", 0);
        is_absent(&r, "startup_count");
        sdk_metrics_reset(&m);
}

static void test_record(void) {
        Cwsandboxd__V1__LedgerSdkMetrics rec;
        SdkMetrics a, b;
        Values ra, rb;
        uint8_t buf[1024];
        size_t len;
        Cwsandboxd__V1__LedgerSdkMetrics *back;
        bool same = true;

        test_workload(&a);
        is_int(sdk_metrics_to_record(&a, &rec), 0, "to a record");
        len = cwsandboxd__v1__ledger_sdk_metrics__pack(&rec, buf);
        sdk_metrics_record_free(&rec);
        back = cwsandboxd__v1__ledger_sdk_metrics__unpack(NULL, len, buf);
        ok(back != NULL, "the record packs and unpacks");
        sdk_metrics_init(&b);
        is_int(back ? sdk_metrics_from_record(&b, back) : -1, 0, "from the record");
        ra = read_values(&a);
        rb = read_values(&b);
        same = ra.n == rb.n;
        for (size_t i = 0; same && i < ra.n; i++)
                same = streq(ra.v[i].name, rb.v[i].name) && ra.v[i].value == rb.v[i].value;
        ok(same, "the round trip keeps every value, the per-sandbox map included");
        if (back)
                cwsandboxd__v1__ledger_sdk_metrics__free_unpacked(back, NULL);
        sdk_metrics_reset(&a);
        sdk_metrics_reset(&b);
}

static void test_summary(void) {
        SdkMetrics m;
        Values r;
        char buf[512], tiny[16];

        test_workload(&m);
        r = read_values(&m);
        sdk_metrics_summary(r.v, r.n, buf, sizeof(buf));
        ok(strncmp(buf, "sandboxes_created=3 executions=4 exec_completed_ok=2", 52) == 0,
           "summary: names without the prefix, in order (%s)", buf);
        sdk_metrics_summary(r.v, r.n, tiny, sizeof(tiny));
        ok(strlen(tiny) < sizeof(tiny), "summary: cut to the buffer");
        sdk_metrics_reset(&m);
}

int main(void) {
        test_empty();
        test_reset();
        test_record();
        test_summary();
        return done();
}
