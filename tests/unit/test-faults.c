/*
 * Unit test of faults.c: names, rule validation, decisions driven by a fixed
 * random sequence, remaining counts, "*" and the counters. Prints TAP.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "faults.h"
#include "macro.h"
#include "tap.h"


#define check_eq_u(got, want, what) do {                                        \
                unsigned long long _g = (got), _w = (want);                     \
                ok(_g == _w, "%s: got %llu, want %llu", (what), _g, _w);        \
        } while (0)

/* A random source that replays a fixed sequence, then repeats its last value. */
typedef struct Sequence {
        const double *values;
        size_t n, next;
} Sequence;

static double sequence_next(void *userdata) {
        Sequence *s = userdata;
        double v = s->values[s->next < s->n ? s->next : s->n - 1];

        s->next++;
        return v;
}

static void use_sequence(Faults *f, Sequence *s) {
        f->random = sequence_next;
        f->random_userdata = s;
}

static void test_names(void) {
        static const struct {
                RpcMethod m;
                const char *name;
        } table[] = {
                { RPC_CREATE_SANDBOX, "CreateSandbox" },
                { RPC_GET_SANDBOX, "GetSandbox" },
                { RPC_LIST_SANDBOXES, "ListSandboxes" },
                { RPC_DELETE_SANDBOX, "DeleteSandbox" },
                { RPC_EXEC, "Exec" },
                { RPC_STREAM_EXEC, "StreamExec" },
                { RPC_STREAM_LOGS, "StreamLogs" },
                { RPC_WRITE_FILE, "WriteFile" },
                { RPC_READ_FILE, "ReadFile" },
                { RPC_CONTROL_GET_COUNTERS, "GetCounters" },
                { RPC_CONTROL_SET_FAULTS, "SetFaults" },
                { RPC_CONTROL_SET_QUOTA, "SetQuota" },
        };

        check_eq_u(ELEMENTSOF(table), _RPC_MAX, "name table covers every rpc");
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                const char *got = rpc_method_name(table[i].m);

                ok(got && streq(got, table[i].name), "rpc_method_name(%d) = %s, want %s",
                   table[i].m, got ? got : "(null)", table[i].name);
                ok(rpc_method_from_name(table[i].name) == table[i].m, "rpc_method_from_name(%s)",
                   table[i].name);
        }
        ok(rpc_method_name(_RPC_MAX) == NULL, "rpc_method_name(_RPC_MAX) is NULL");
        ok(rpc_method_name(_RPC_INVALID) == NULL, "rpc_method_name(_RPC_INVALID) is NULL");
        ok(rpc_method_from_name("createsandbox") == _RPC_INVALID, "names are case-sensitive");
        ok(rpc_method_from_name("") == _RPC_INVALID, "empty name is invalid");
        ok(rpc_method_from_name("*") == _RPC_INVALID, "\"*\" is not a method name");
        ok(rpc_method_from_name(NULL) == _RPC_INVALID, "NULL name is invalid");
}

static void test_invalid_rules(void) {
        static const struct {
                const char *what;
                const char *method;
                FaultRule rule;
        } table[] = {
                { "unknown method", "Frobnicate", {} },
                { "NULL method", NULL, {} },
                { "Control GetCounters not faultable", "GetCounters", {} },
                { "Control SetFaults not faultable", "SetFaults", {} },
                { "error_rate below 0", "Exec", { .error_rate = -0.1 } },
                { "error_rate above 1", "Exec", { .error_rate = 1.5 } },
                { "error_rate NaN", "Exec", { .error_rate = NAN } },
                { "drop_rate above 1", "StreamExec", { .drop_rate = 2 } },
                { "drop_rate NaN", "StreamExec", { .drop_rate = NAN } },
                { "error_code out of range", "Exec", { .error_code = 17 } },
                { "error_code negative", "Exec", { .error_code = -1 } },
                { "\"*\" with a bad rate", "*", { .error_rate = 7 } },
        };
        Faults f;

        faults_init(&f);
        for (size_t i = 0; i < ELEMENTSOF(table); i++)
                ok(faults_set(&f, table[i].method, &table[i].rule) == -EINVAL,
                   "faults_set refuses: %s", table[i].what);

        for (int m = 0; m < RPC_FAULTABLE_MAX; m++)
                ok(!f.rules[m].set, "refused rules leave %s untouched", rpc_method_name(m));

        ok(faults_set(&f, "Exec", &(FaultRule){ .error_rate = 1.0, .drop_rate = 0.0 }) == 0,
           "rates 0 and 1 are accepted");
}

static void test_decide(void) {
        static const double seq[] = { 0.2, 0.7, 0.49, 0.51 };
        static const struct {
                const char *what;
                bool no_rule;
                FaultRule rule;
                Sequence seq;
                FaultDecision want;
        } table[] = {
                { "no rule", true, {}, { seq, 4, 0 }, {} },
                { "latency only", false, { .latency_ms = 250 }, { seq, 4, 0 }, { .latency_ms = 250, .code = GRPC_STATUS_UNAVAILABLE } },
                { "error below rate fails", false, { .error_rate = 0.5 }, { seq, 4, 0 }, { .fail = true, .code = GRPC_STATUS_UNAVAILABLE } },
                { "error above rate passes", false, { .error_rate = 0.5 }, { seq, 4, 1 }, { .code = GRPC_STATUS_UNAVAILABLE } },
                { "error rate 1 always fails", false, { .error_rate = 1.0 }, { seq + 3, 1, 0 }, { .fail = true, .code = GRPC_STATUS_UNAVAILABLE } },
                { "error code kept", false, { .error_rate = 1.0, .error_code = GRPC_STATUS_RESOURCE_EXHAUSTED }, { seq, 4, 0 }, { .fail = true, .code = GRPC_STATUS_RESOURCE_EXHAUSTED } },
                { "drop below rate", false, { .drop_rate = 0.5 }, { seq, 4, 2 }, { .drop = true, .code = GRPC_STATUS_UNAVAILABLE } },
                { "drop above rate", false, { .drop_rate = 0.5 }, { seq, 4, 3 }, { .code = GRPC_STATUS_UNAVAILABLE } },
                { "failed call is not dropped", false, { .error_rate = 1.0, .drop_rate = 1.0 }, { seq, 4, 0 }, { .fail = true, .code = GRPC_STATUS_UNAVAILABLE } },
                { "reply delay", false, { .reply_delay_ms = 300 }, { seq, 4, 0 }, { .reply_delay_ms = 300, .code = GRPC_STATUS_UNAVAILABLE } },
                { "retry delay kept", false, { .error_rate = 1.0, .retry_delay_ms = 250 }, { seq, 4, 0 }, { .fail = true, .code = GRPC_STATUS_UNAVAILABLE, .retry_delay_ms = 250 } },
                { "rate 0 never draws", false, { .error_rate = 0.0, .drop_rate = 0.0 }, { seq, 4, 0 }, { .code = GRPC_STATUS_UNAVAILABLE } },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                Sequence s = table[i].seq;
                FaultDecision d;
                Faults f;

                faults_init(&f);
                use_sequence(&f, &s);
                if (!table[i].no_rule)
                        ok(faults_set(&f, "Exec", &table[i].rule) == 0, "%s: rule accepted", table[i].what);
                d = faults_decide(&f, RPC_EXEC);
                ok(d.latency_ms == table[i].want.latency_ms &&
                   d.fail == table[i].want.fail &&
                   (!d.fail || d.code == table[i].want.code) &&
                   d.drop == table[i].want.drop &&
                   d.reply_delay_ms == table[i].want.reply_delay_ms &&
                   d.retry_delay_ms == table[i].want.retry_delay_ms,
                   "%s: latency=%u fail=%d code=%d drop=%d reply_delay=%u retry_delay=%u",
                   table[i].what, d.latency_ms, d.fail, d.code, d.drop, d.reply_delay_ms, d.retry_delay_ms);
                if (table[i].want.code != 0 && !table[i].want.fail)
                        ok(d.code == table[i].want.code, "%s: code %d", table[i].what, d.code);
                d = faults_decide(&f, RPC_GET_SANDBOX);
                ok(!d.fail && !d.drop && d.latency_ms == 0 && d.reply_delay_ms == 0,
                   "%s: other methods unaffected", table[i].what);
        }
}

static void test_remaining(void) {
        static const double always[] = { 0.0 };
        static const double miss[] = { 0.9 };
        Sequence s = { always, 1, 0 }, m = { miss, 1, 0 };
        unsigned failed = 0;
        Faults f;

        faults_init(&f);
        use_sequence(&f, &s);
        ok(faults_set(&f, "CreateSandbox", &(FaultRule){ .error_rate = 1.0, .remaining = 3 }) == 0,
           "remaining=3 accepted");
        for (int i = 0; i < 5; i++)
                if (faults_decide(&f, RPC_CREATE_SANDBOX).fail)
                        failed++;
        check_eq_u(failed, 3, "remaining=3 fails exactly 3 of 5 calls");
        ok(!f.rules[RPC_CREATE_SANDBOX].set, "rule cleared after its last use");

        /* remaining counts calls, not faults: a call that draws no failure still uses one */
        use_sequence(&f, &m);
        ok(faults_set(&f, "Exec", &(FaultRule){ .error_rate = 0.5, .latency_ms = 10, .remaining = 2 }) == 0,
           "remaining=2 accepted");
        check_eq_u(faults_decide(&f, RPC_EXEC).latency_ms, 10, "first call delayed");
        check_eq_u(faults_decide(&f, RPC_EXEC).latency_ms, 10, "second call delayed");
        check_eq_u(faults_decide(&f, RPC_EXEC).latency_ms, 0, "third call not delayed");

        use_sequence(&f, &s);
        ok(faults_set(&f, "Exec", &(FaultRule){ .error_rate = 1.0 }) == 0, "remaining=0 accepted");
        failed = 0;
        for (int i = 0; i < 50; i++)
                if (faults_decide(&f, RPC_EXEC).fail)
                        failed++;
        check_eq_u(failed, 50, "remaining=0 applies until replaced");
        ok(faults_set(&f, "Exec", &(FaultRule){ .latency_ms = 5 }) == 0, "replacement accepted");
        ok(!faults_decide(&f, RPC_EXEC).fail, "replaced rule no longer fails");

        faults_clear(&f);
        for (int i = 0; i < RPC_FAULTABLE_MAX; i++)
                if (f.rules[i].set)
                        failed = 1000;
        ok(failed != 1000, "faults_clear removes every rule");
}

static void test_star(void) {
        static const double always[] = { 0.0 };
        Sequence s = { always, 1, 0 };
        bool all = true;
        Faults f;

        faults_init(&f);
        use_sequence(&f, &s);
        ok(faults_set(&f, "*", &(FaultRule){ .error_rate = 1.0, .error_code = GRPC_STATUS_INTERNAL, .remaining = 1 }) == 0,
           "\"*\" accepted");
        for (int m = 0; m < RPC_FAULTABLE_MAX; m++) {
                FaultDecision d = faults_decide(&f, m);

                if (!d.fail || d.code != GRPC_STATUS_INTERNAL)
                        all = false;
        }
        ok(all, "\"*\" applies to every SandboxService rpc");
        ok(!faults_decide(&f, RPC_CONTROL_GET_COUNTERS).fail, "\"*\" spares GetCounters");
        ok(!faults_decide(&f, RPC_CONTROL_SET_FAULTS).fail, "\"*\" spares SetFaults");
        ok(!faults_decide(&f, RPC_CONTROL_SET_QUOTA).fail, "\"*\" spares SetQuota");
        /* remaining is per method: each rpc had its own single use */
        all = true;
        for (int m = 0; m < RPC_FAULTABLE_MAX; m++)
                if (faults_decide(&f, m).fail)
                        all = false;
        ok(all, "\"*\" with remaining=1 gives each rpc one use");
}

static void test_counters(void) {
        Faults f;

        faults_init(&f);
        for (int i = 0; i < 4; i++)
                (void)faults_decide(&f, RPC_GET_SANDBOX);
        (void)faults_decide(&f, RPC_CONTROL_SET_FAULTS);
        (void)faults_decide(&f, _RPC_INVALID);
        (void)faults_decide(&f, _RPC_MAX);
        faults_count_result(&f, RPC_GET_SANDBOX, GRPC_STATUS_OK, false);
        faults_count_result(&f, RPC_GET_SANDBOX, GRPC_STATUS_NOT_FOUND, false);
        faults_count_result(&f, RPC_GET_SANDBOX, GRPC_STATUS_UNAVAILABLE, true);
        faults_count_result(&f, RPC_GET_SANDBOX, GRPC_STATUS_OK, true);
        faults_count_result(&f, _RPC_MAX, GRPC_STATUS_INTERNAL, true);
        faults_count_result(&f, _RPC_INVALID, GRPC_STATUS_INTERNAL, true);

        check_eq_u(f.counters[RPC_GET_SANDBOX].calls, 4, "GetSandbox calls");
        check_eq_u(f.counters[RPC_GET_SANDBOX].errors, 2, "GetSandbox errors (OK is not an error)");
        check_eq_u(f.counters[RPC_GET_SANDBOX].injected, 1, "GetSandbox injected (only with an error)");
        check_eq_u(f.counters[RPC_CONTROL_SET_FAULTS].calls, 1, "Control rpcs are counted");
        check_eq_u(f.counters[RPC_CREATE_SANDBOX].calls, 0, "other rpcs untouched");

        faults_clear(&f);
        check_eq_u(f.counters[RPC_GET_SANDBOX].calls, 4, "faults_clear keeps counters");
}

int main(void) {
        test_names();
        test_invalid_rules();
        test_decide();
        test_remaining();
        test_star();
        test_counters();

        return done();
}
