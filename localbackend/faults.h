/*
 * Faults: fault injection and per-method call counters. Pure logic with an
 * injectable random source, so the rules are unit-tested without a server.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <grpc/grpc.h>

typedef enum RpcMethod {
        RPC_CREATE_SANDBOX,
        RPC_GET_SANDBOX,
        RPC_LIST_SANDBOXES,
        RPC_DELETE_SANDBOX,
        RPC_EXEC,
        RPC_STREAM_EXEC,
        RPC_STREAM_LOGS,
        RPC_WRITE_FILE,
        RPC_READ_FILE,
        RPC_CONTROL_GET_COUNTERS,
        RPC_CONTROL_SET_FAULTS,
        RPC_CONTROL_SET_QUOTA,
        _RPC_MAX,
        _RPC_INVALID = -1,
} RpcMethod;

/* The rpcs fault injection applies to: SandboxService, not Control. */
#define RPC_FAULTABLE_MAX RPC_CONTROL_GET_COUNTERS

typedef struct FaultRule {
        bool set;
        uint32_t latency_ms;
        double error_rate;
        grpc_status_code error_code;
        double drop_rate;
        uint32_t reply_delay_ms;
        uint32_t remaining;     /* 0 = until replaced */
        uint32_t retry_delay_ms;        /* a RetryInfo on injected errors; 0 = none */
} FaultRule;

typedef struct MethodCounters {
        uint64_t calls, errors, injected;
} MethodCounters;

typedef struct Faults {
        FaultRule rules[RPC_FAULTABLE_MAX];
        MethodCounters counters[_RPC_MAX];
        double (*random)(void *userdata);       /* uniform in [0, 1) */
        void *random_userdata;
} Faults;

/* What to do with one incoming call. */
typedef struct FaultDecision {
        uint32_t latency_ms;
        bool fail;
        grpc_status_code code;
        bool drop;
        uint32_t reply_delay_ms;
        uint32_t retry_delay_ms;
} FaultDecision;

/**
 * faults_init() - no faults, zero counters, drand48-based randomness.
 */
void faults_init(Faults *f);

/**
 * rpc_method_name() - "CreateSandbox" and so on.
 * rpc_method_from_name() - inverse; _RPC_INVALID if unknown.
 */
const char *rpc_method_name(RpcMethod m);
RpcMethod rpc_method_from_name(const char *name);

/**
 * faults_set() - install a rule for @method, or for every faultable rpc when
 * @method is "*". Returns 0, or -EINVAL for an unknown method or a rate
 * outside [0, 1].
 */
int faults_set(Faults *f, const char *method, const FaultRule *rule);

/**
 * faults_clear() - remove every rule.
 */
void faults_clear(Faults *f);

/**
 * faults_decide() - count one call of @m and decide its faults, consuming
 * one use of a rule with a remaining count.
 */
FaultDecision faults_decide(Faults *f, RpcMethod m);

/**
 * faults_count_result() - count how a call of @m ended.
 */
void faults_count_result(Faults *f, RpcMethod m, grpc_status_code code, bool injected);
