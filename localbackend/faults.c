/*
 * Fault injection rules and per-method counters.
 *
 * A rule belongs to one SandboxService rpc. faults_decide() draws the random
 * numbers for one call and consumes one use of a rule that has a remaining
 * count, so "fail the next 3 calls" is exact. Control rpcs are counted but
 * never faulted: a test must always be able to read counters and clear faults.
 *
 * Nothing here knows the server or the loop; the random source is a function
 * pointer so tests replace it with a fixed sequence.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "faults.h"
#include "macro.h"

static const char *const method_names[_RPC_MAX] = {
        [RPC_CREATE_SANDBOX] = "CreateSandbox",
        [RPC_GET_SANDBOX] = "GetSandbox",
        [RPC_LIST_SANDBOXES] = "ListSandboxes",
        [RPC_DELETE_SANDBOX] = "DeleteSandbox",
        [RPC_EXEC] = "Exec",
        [RPC_STREAM_EXEC] = "StreamExec",
        [RPC_STREAM_LOGS] = "StreamLogs",
        [RPC_WRITE_FILE] = "WriteFile",
        [RPC_READ_FILE] = "ReadFile",
        [RPC_CONTROL_GET_COUNTERS] = "GetCounters",
        [RPC_CONTROL_SET_FAULTS] = "SetFaults",
        [RPC_CONTROL_SET_QUOTA] = "SetQuota",
};

static double random_drand48(void *userdata) {
        return drand48();
}

void faults_init(Faults *f) {
        *f = (Faults){
                .random = random_drand48,
        };
}

const char *rpc_method_name(RpcMethod m) {
        if (m < 0 || m >= _RPC_MAX)
                return NULL;
        return method_names[m];
}

RpcMethod rpc_method_from_name(const char *name) {
        if (!name)
                return _RPC_INVALID;
        for (int i = 0; i < _RPC_MAX; i++)
                if (streq(name, method_names[i]))
                        return (RpcMethod)i;
        return _RPC_INVALID;
}

static bool rate_valid(double rate) {
        /* Written so that NaN fails too. */
        return rate >= 0.0 && rate <= 1.0;
}

int faults_set(Faults *f, const char *method, const FaultRule *rule) {
        FaultRule r = *rule;
        RpcMethod m;

        if (!method || !rate_valid(r.error_rate) || !rate_valid(r.drop_rate))
                return -EINVAL;
        if (r.error_code == GRPC_STATUS_OK)
                r.error_code = GRPC_STATUS_UNAVAILABLE;
        if (r.error_code < 0 || r.error_code > GRPC_STATUS_UNAUTHENTICATED)
                return -EINVAL;
        r.set = true;

        if (streq(method, "*")) {
                for (int i = 0; i < RPC_FAULTABLE_MAX; i++)
                        f->rules[i] = r;
                return 0;
        }

        m = rpc_method_from_name(method);
        if (m < 0 || m >= RPC_FAULTABLE_MAX)
                return -EINVAL;
        f->rules[m] = r;
        return 0;
}

void faults_clear(Faults *f) {
        memset(f->rules, 0, sizeof(f->rules));
}

static bool draw(Faults *f, double rate) {
        if (rate <= 0.0)
                return false;
        return f->random(f->random_userdata) < rate;
}

FaultDecision faults_decide(Faults *f, RpcMethod m) {
        FaultDecision d = {};
        FaultRule *r;

        if (m < 0 || m >= _RPC_MAX)
                return d;
        f->counters[m].calls++;
        if (m >= RPC_FAULTABLE_MAX)
                return d;

        r = &f->rules[m];
        if (!r->set)
                return d;

        d.latency_ms = r->latency_ms;
        d.fail = draw(f, r->error_rate);
        d.code = r->error_code;
        /* A failed call never reaches the handler, so there is nothing to drop. */
        d.drop = !d.fail && draw(f, r->drop_rate);
        d.reply_delay_ms = r->reply_delay_ms;
        d.retry_delay_ms = r->retry_delay_ms;

        if (r->remaining > 0 && --r->remaining == 0)
                *r = (FaultRule){};
        return d;
}

void faults_count_result(Faults *f, RpcMethod m, grpc_status_code code, bool injected) {
        if (m < 0 || m >= _RPC_MAX || code == GRPC_STATUS_OK)
                return;
        /* "injected" counts the errors we caused on purpose, so it is a subset of "errors". */
        f->counters[m].errors++;
        if (injected)
                f->counters[m].injected++;
}
