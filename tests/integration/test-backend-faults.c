/*
 * Fault injection and counters through the Control service: an injected
 * error with remaining=1 (and an explicit code with remaining=2), added
 * latency, "*" for every SandboxService rpc but not Control, clearing, a
 * dropped stream, a delayed reply whose call still takes effect, invalid
 * rules, the call/error/injected counters, reset, sandbox and process
 * gauges, and a fault given on the command line. RetryInfo on injected
 * errors; the account quota of SetQuota (alive and creates per second,
 * dedup before the quota, its reason and retry hint, how it is counted);
 * the exact peak of sandboxes alive.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-util.h"

typedef Cwsandboxlocal__V1__Fault Fault;
typedef Cwsandboxlocal__V1__GetCountersResponse Counters;

#define QUOTA_REASON "CWSANDBOX_QUOTA_EXCEEDED"
#define ERROR_DOMAIN "cwsandbox.com"

static Fault fault(const char *method) {
        Fault f = CWSANDBOXLOCAL__V1__FAULT__INIT;

        f.method = (char *)method;
        return f;
}

static uint64_t counter(BcClient *c, const char *method, char what) {
        _cleanup_bc_ Counters *r = NULL;
        const Cwsandboxlocal__V1__MethodCounter *m;

        if (bc_get_counters(c, false, &r, NULL) != 0)
                return UINT64_MAX;
        m = bc_counter(r, method);
        if (!m)
                return 0;
        return what == 'c' ? m->calls : what == 'e' ? m->errors : m->injected;
}

/* The counters now (reset after reading them with @reset), or bail out. */
static Counters *counters_now(BcClient *c, bool reset) {
        Counters *r = NULL;

        if (bc_get_counters(c, reset, &r, NULL) != 0)
                bail_out("GetCounters failed");
        return r;
}

/* Stop *@sb (if any) and wait until it is over, then free it. */
static void stop_free(BcClient *c, BcSandbox **sb) {
        if (!*sb)
                return;
        (void)bc_stop_sandbox(c, (*sb)->sandbox_id, 20000);
        bc_free(*sb);
        *sb = NULL;
}

static void test_error_remaining(BcClient *c, const char *id) {
        Fault f = fault("GetSandbox");
        BcStatus st = {};
        uint64_t calls0 = counter(c, "GetSandbox", 'c'), inj0 = counter(c, "GetSandbox", 'i');
        uint64_t err0 = counter(c, "GetSandbox", 'e');
        int r;

        f.error_rate = 1;
        f.remaining = 1;
        r = bc_set_faults(c, &f, 1, &st);
        if (!ok(r == 0, "SetFaults: GetSandbox fails once")) {
                test_diag_status("SetFaults", r, &st);
                return;
        }
        r = bc_get_sandbox(c, id, NULL, &st);
        is_int(r, GRPC_STATUS_UNAVAILABLE, "the next GetSandbox fails with the default code UNAVAILABLE");
        r = bc_get_sandbox(c, id, NULL, &st);
        is_int(r, GRPC_STATUS_OK, "the one after it works again (remaining=1 used up)");
        is_int(counter(c, "GetSandbox", 'c') - calls0, 2, "GetSandbox calls counted: 2");
        is_int(counter(c, "GetSandbox", 'e') - err0, 1, "GetSandbox errors counted: 1");
        is_int(counter(c, "GetSandbox", 'i') - inj0, 1, "GetSandbox injected counted: 1");

        f.error_code = GRPC_STATUS_ABORTED;
        f.remaining = 2;
        ok(bc_set_faults(c, &f, 1, &st) == 0, "SetFaults: GetSandbox fails twice with ABORTED");
        is_int(bc_get_sandbox(c, id, NULL, &st), GRPC_STATUS_ABORTED, "first call: ABORTED");
        is_int(bc_get_sandbox(c, id, NULL, &st), GRPC_STATUS_ABORTED, "second call: ABORTED");
        is_int(bc_get_sandbox(c, id, NULL, &st), GRPC_STATUS_OK, "third call: OK");
}

static void test_latency(BcClient *c) {
        Fault f = fault("ListSandboxes");
        int64_t t0, dt;
        int r;

        f.latency_ms = 400;
        f.remaining = 1;
        ok(bc_set_faults(c, &f, 1, NULL) == 0, "SetFaults: 400 ms latency on ListSandboxes");
        t0 = test_mono_ms();
        r = bc_list_sandboxes(c, NULL, NULL, NULL);
        dt = test_mono_ms() - t0;
        ok(r == 0 && dt >= 400, "the call succeeds after at least 400 ms (%lld ms)", (long long)dt);
}

static void test_star_and_clear(BcClient *c, const char *id) {
        Fault f = fault("*");
        BcSandboxOpts o = test_keepalive_opts();
        _cleanup_bc_ Counters *counters = NULL;
        BcExec *e = NULL;
        int r;

        f.error_rate = 1;
        f.error_code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        ok(bc_set_faults(c, &f, 1, NULL) == 0, "SetFaults: every rpc fails");
        is_int(bc_create_sandbox(c, &o, NULL, NULL), GRPC_STATUS_RESOURCE_EXHAUSTED, "\"*\" fails CreateSandbox");
        is_int(bc_read_file(c, id, "/etc/hostname", NULL, NULL), GRPC_STATUS_RESOURCE_EXHAUSTED,
               "\"*\" fails ReadFile");
        r = bc_exec_run(c, id, (const char *const[]) { "true", NULL }, TEST_CMD_MS, &e);
        ok(r == 0 && e->status.code == GRPC_STATUS_RESOURCE_EXHAUSTED, "\"*\" fails StreamExec (got %s)",
           e ? bc_code_name(e->status.code) : "?");
        bc_exec_free(e);
        is_int(bc_get_counters(c, false, &counters, NULL), GRPC_STATUS_OK, "Control is never faulted");

        ok(bc_set_faults(c, NULL, 0, NULL) == 0, "SetFaults with no faults clears them");
        is_int(bc_get_sandbox(c, id, NULL, NULL), GRPC_STATUS_OK, "calls work again");
}

static void test_drop(BcClient *c, const char *id) {
        Fault f = fault("StreamExec");
        BcExec *e = NULL;
        int r;

        f.drop_rate = 1;
        f.remaining = 1;
        ok(bc_set_faults(c, &f, 1, NULL) == 0, "SetFaults: drop the next StreamExec");
        r = bc_exec_run(c, id, (const char *const[]) { "/bin/sh", "-c", "echo hi; sleep 0.5", NULL }, TEST_CMD_MS, &e);
        ok(r == 0 && e->ended && !e->exited, "the dropped stream ends without an exit frame");
        ok(e && e->status.code != GRPC_STATUS_OK, "and without an OK status (got %s \"%s\")",
           e ? bc_code_name(e->status.code) : "?", e ? e->status.details : "");
        bc_exec_free(e);
        e = test_sh(c, id, "echo again");
        ok(e && e->exited && e->exit_code == 0, "the next StreamExec runs normally");
        bc_exec_free(e);
}

static void test_reply_delay(BcClient *c) {
        _cleanup_free_ char *tag = test_marker("delayed");
        const char *tags[] = { tag, NULL };
        Fault f = fault("CreateSandbox");
        BcSandboxOpts o = test_keepalive_opts();
        _cleanup_bc_ Coreweave__Sandbox__V1__ListSandboxesResponse *list = NULL;
        BcStatus st = {};
        int64_t end;
        int r;

        f.reply_delay_ms = 3000;
        f.remaining = 1;
        ok(bc_set_faults(c, &f, 1, NULL) == 0, "SetFaults: CreateSandbox replies 3 s late");
        o.tags = tags;
        bc_set_timeout(c, 500);
        r = bc_create_sandbox(c, &o, NULL, &st);
        bc_set_timeout(c, 0);
        is_int(r, GRPC_STATUS_DEADLINE_EXCEEDED, "a client with a 500 ms deadline gives up");

        /* The call took effect before the reply was held back. */
        end = test_mono_ms() + 10000;
        do {
                bc_free(list);
                list = NULL;
                r = bc_list_sandboxes(c, &(BcListOpts) { .tags = tags }, &list, &st);
                if (r == 0 && list->n_sandboxes == 1)
                        break;
                test_sleep_ms(100);
        } while (test_mono_ms() < end);
        ok(r == 0 && list->n_sandboxes == 1, "the sandbox was created anyway");
        if (r == 0 && list->n_sandboxes == 1)
                (void)bc_stop_sandbox(c, list->sandboxes[0]->sandbox_id, 20000);
}

static void test_invalid(BcClient *c) {
        Fault f = fault("GetSandbox");

        f.error_rate = 2;
        is_int(bc_set_faults(c, &f, 1, NULL), GRPC_STATUS_INVALID_ARGUMENT, "error_rate 2: INVALID_ARGUMENT");
        f = fault("NoSuchRpc");
        f.error_rate = 1;
        is_int(bc_set_faults(c, &f, 1, NULL), GRPC_STATUS_INVALID_ARGUMENT, "an unknown method: INVALID_ARGUMENT");
        is_int(bc_get_sandbox(c, "x", NULL, NULL), GRPC_STATUS_NOT_FOUND, "a refused rule installs nothing");
}

static void test_counters(BcClient *c) {
        _cleanup_bc_ Counters *a = NULL, *b = NULL, *d = NULL;
        BcSandboxOpts o = test_keepalive_opts();
        BcSandbox *sb;
        int64_t end;

        ok(bc_get_counters(c, true, &a, NULL) == 0, "GetCounters with reset");
        ok(bc_get_counters(c, false, &b, NULL) == 0, "GetCounters again");
        ok(b && (!bc_counter(b, "GetSandbox") || bc_counter(b, "GetSandbox")->calls == 0),
           "reset zeroed the counters");
        ok(b && bc_counter(b, "CreateSandbox") != NULL && bc_counter(b, "StreamExec") != NULL,
           "counters are listed per rpc name");

        sb = test_start_sandbox(c, &o, "sandbox for the gauges");
        if (!sb)
                return;
        {
                _cleanup_bc_ Counters *g = counters_now(c, false);

                ok(g->sandboxes_alive >= 1 && g->sandboxes_total >= g->sandboxes_alive && g->processes >= 1,
                   "a running sandbox shows in sandboxes_alive and processes (%u alive, %u total, %u processes)",
                   g->sandboxes_alive, g->sandboxes_total, g->processes);
        }
        (void)bc_stop_sandbox(c, sb->sandbox_id, 20000);
        bc_free(sb);

        end = test_mono_ms() + 10000;
        do {
                bc_free(d);
                d = NULL;
                if (bc_get_counters(c, false, &d, NULL) == 0 && d->sandboxes_alive == 0 && d->processes == 0)
                        break;
                test_sleep_ms(100);
        } while (test_mono_ms() < end);
        ok(d && d->sandboxes_alive == 0 && d->processes == 0,
           "after every sandbox stopped: 0 alive, 0 processes (%u, %u)", d ? d->sandboxes_alive : 0,
           d ? d->processes : 0);
}

/* A refusal by the quota, as a client of the real service sees it. */
static void check_quota_refusal(int r, const BcStatus *st, const char *message, uint32_t retry_delay_ms,
                                const char *what) {
        is_int(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s: RESOURCE_EXHAUSTED", what);
        ok(strstr(st->details, message) != NULL, "%s: the message says \"%s\" (\"%s\")", what, message, st->details);
        is_str(st->reason, QUOTA_REASON, "%s: ErrorInfo reason", what);
        is_str(st->domain, ERROR_DOMAIN, "%s: ErrorInfo domain", what);
        is_int(st->retry_delay_ms, retry_delay_ms, "%s: RetryInfo delay", what);
}

/* At most 2 alive: the third create is refused, a repeated request_id is not. */
static void test_quota_alive(BcClient *c) {
        _cleanup_free_ char *rid = test_marker("quota-rid");
        _cleanup_bc_ Counters *before = NULL, *after = NULL;
        BcSandboxOpts o = test_keepalive_opts();
        BcSandbox *a = NULL, *b = NULL, *d = NULL, *again = NULL;
        BcStatus st = {};
        const Cwsandboxlocal__V1__MethodCounter *m0, *m1;
        int r;

        ok(bc_set_quota(c, 2, 0, 250, &st) == 0, "SetQuota: 2 alive, retry hint 250 ms");
        before = counters_now(c, false);
        if (before->sandboxes_alive != 0)
                bail_out("quota: %u sandboxes still alive from earlier tests", before->sandboxes_alive);

        o.request_id = rid;
        r = bc_create_sandbox(c, &o, &a, &st);
        ok(r == 0, "quota 2: the first create (%s %s)", bc_code_name(r), st.details);
        o.request_id = NULL;
        r = bc_create_sandbox(c, &o, &b, &st);
        ok(r == 0, "quota 2: the second create (%s %s)", bc_code_name(r), st.details);
        if (!a || !b)
                bail_out("quota: the first two creates failed");

        r = bc_create_sandbox(c, &o, &d, &st);
        check_quota_refusal(r, &st, "quota: 2 sandboxes alive, the limit is 2", 250, "the third create");

        o.request_id = rid;
        r = bc_create_sandbox(c, &o, &again, &st);
        ok(r == 0 && streq(again->sandbox_id, a->sandbox_id),
           "a repeated request_id gets its sandbox under a full quota (%s)", bc_code_name(r));
        bc_free(again);
        again = NULL;

        after = counters_now(c, false);
        m0 = bc_counter(before, "CreateSandbox");
        m1 = bc_counter(after, "CreateSandbox");
        is_int(after->quota_rejections - before->quota_rejections, 1, "quota_rejections counts the refusal only");
        ok(m0 && m1 && m1->errors - m0->errors == 1 && m1->injected == m0->injected,
           "the refusal is a CreateSandbox error, not an injected one");

        stop_free(c, &b);
        o.request_id = NULL;
        r = bc_create_sandbox(c, &o, &d, &st);
        ok(r == 0, "after one stopped, a create fits again (%s %s)", bc_code_name(r), st.details);

        ok(bc_set_quota(c, 2, 0, 0, NULL) == 0, "SetQuota: 2 alive, no retry hint");
        r = bc_create_sandbox(c, &o, &again, &st);
        check_quota_refusal(r, &st, "the limit is 2", 0, "without a hint");

        ok(bc_set_quota(c, 0, 0, 0, NULL) == 0, "SetQuota: no limits");
        stop_free(c, &a);
        stop_free(c, &d);
        bc_free(again);
}

/* A bucket of creates per second: burst max(1, ceil(rate)); only accepted creates pay. */
static void test_quota_rate(BcClient *c) {
        BcSandboxOpts o = test_keepalive_opts(), bad = test_keepalive_opts();
        BcSandbox *sb[3] = {}, *x = NULL;
        BcStatus st = {};
        int r;

        is_int(bc_set_quota(c, 0, -1, 0, NULL), GRPC_STATUS_INVALID_ARGUMENT, "SetQuota: a negative rate is refused");

        /* So slow that the bucket never refills within the test. */
        ok(bc_set_quota(c, 0, 0.01, 100, NULL) == 0, "SetQuota: 0.01 creates per second");
        bad.max_lifetime_seconds = -1;
        is_int(bc_create_sandbox(c, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT,
               "a create with a bad spec fails as always");
        r = bc_create_sandbox(c, &o, &sb[0], &st);
        ok(r == 0, "the refused create took no token: the next one is accepted (%s %s)", bc_code_name(r), st.details);
        for (int i = 1; i <= 2; i++) {
                r = bc_create_sandbox(c, &o, &x, &st);
                check_quota_refusal(r, &st, "quota: more than 0.01 creates per second", 100,
                                    i == 1 ? "the second create of the burst" : "the third create of the burst");
                stop_free(c, &x);
        }
        stop_free(c, &sb[0]);

        /* A new quota starts with a full bucket: two at once fit a rate of 2. */
        ok(bc_set_quota(c, 0, 2, 0, NULL) == 0, "SetQuota: 2 creates per second");
        r = bc_create_sandbox(c, &o, &sb[1], &st);
        ok(r == 0, "rate 2: the first create (%s %s)", bc_code_name(r), st.details);
        r = bc_create_sandbox(c, &o, &sb[2], &st);
        ok(r == 0, "rate 2: the second create right after it (%s %s)", bc_code_name(r), st.details);

        ok(bc_set_quota(c, 0, 0, 0, NULL) == 0, "SetQuota: no limits");
        for (size_t i = 0; i < ELEMENTSOF(sb); i++)
                stop_free(c, &sb[i]);
}

/* The peak is kept at every change, so a sequence shows its true maximum. */
static void test_alive_peak(BcClient *c) {
        BcSandboxOpts o = test_keepalive_opts();
        BcSandbox *sb[4] = {};
        Counters *g;
        unsigned base, peak, alive;

        bc_free(counters_now(c, true));
        g = counters_now(c, false);
        base = g->sandboxes_alive;
        peak = g->sandboxes_alive_peak;
        bc_free(g);
        is_int(peak, base, "after a reset the peak is what is alive (%u)", base);

        for (int i = 0; i < 3; i++)
                if (bc_create_sandbox(c, &o, &sb[i], NULL) != 0)
                        bail_out("peak: create %d failed", i);
        stop_free(c, &sb[0]);
        stop_free(c, &sb[1]);
        if (bc_create_sandbox(c, &o, &sb[3], NULL) != 0)
                bail_out("peak: the last create failed");

        g = counters_now(c, false);
        alive = g->sandboxes_alive;
        peak = g->sandboxes_alive_peak;
        bc_free(g);
        is_int(alive, base + 2, "3 created, 2 stopped, 1 created: 2 alive");
        is_int(peak, base + 3, "the peak is the true maximum, 3");

        bc_free(counters_now(c, true));
        stop_free(c, &sb[2]);
        g = counters_now(c, false);
        alive = g->sandboxes_alive;
        peak = g->sandboxes_alive_peak;
        bc_free(g);
        is_int(alive, base + 1, "a reset, then a stop: 1 alive");
        is_int(peak, base + 2, "the peak restarted at what was alive at the reset, 2, and a stop does not lower it");
        stop_free(c, &sb[3]);
}

/* Injected errors with a retry hint carry a RetryInfo, unary and streaming. */
static void test_retry_info(BcClient *c, const char *id) {
        Fault f = fault("GetSandbox");
        BcStatus st = {};
        BcExec *e = NULL;
        int r;

        f.error_rate = 1;
        f.error_code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        f.retry_delay_ms = 1500;
        f.remaining = 1;
        ok(bc_set_faults(c, &f, 1, NULL) == 0, "SetFaults: GetSandbox fails once with a 1500 ms retry hint");
        r = bc_get_sandbox(c, id, NULL, &st);
        is_int(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "the injected error has its code");
        is_int(st.retry_delay_ms, 1500, "and a RetryInfo of 1500 ms");
        is_str(st.reason, "", "and no ErrorInfo");
        is_str(st.details, "injected fault", "and its message");

        f = fault("StreamExec");
        f.error_rate = 1;
        f.retry_delay_ms = 40;
        f.remaining = 1;
        ok(bc_set_faults(c, &f, 1, NULL) == 0, "SetFaults: StreamExec fails once with a 40 ms retry hint");
        r = bc_exec_run(c, id, (const char *const[]) { "true", NULL }, TEST_CMD_MS, &e);
        ok(r == 0 && e->status.code == GRPC_STATUS_UNAVAILABLE && e->status.retry_delay_ms == 40,
           "a failed stream carries it too (%s, %u ms)", e ? bc_code_name(e->status.code) : "?",
           e ? e->status.retry_delay_ms : 0);
        bc_exec_free(e);

        r = bc_get_sandbox(c, "sb-no-such-sandbox", NULL, &st);
        ok(r == GRPC_STATUS_NOT_FOUND && streq(st.reason, "CWSANDBOX_SANDBOX_NOT_FOUND") &&
           streq(st.domain, ERROR_DOMAIN) && st.retry_delay_ms == 0,
           "an unknown sandbox still has its ErrorInfo and no RetryInfo (%s %s/%s %u)", bc_code_name(r),
           st.domain, st.reason, st.retry_delay_ms);
}

static void test_command_line_fault(void) {
        static const char *const args[] = {
                "--fault", "GetSandbox:error_rate=1,error_code=14,remaining=1,retry_delay_ms=700", NULL
        };
        BcStatus st = {};
        TestBackend t;

        test_backend_start(&t, &(BackendProcOpts) { .extra_args = args });
        is_int(bc_get_sandbox(t.client, "x", NULL, &st), GRPC_STATUS_UNAVAILABLE,
               "--fault GetSandbox:error_rate=1,remaining=1 fails the first call");
        is_int(st.retry_delay_ms, 700, "with its retry_delay_ms");
        is_int(bc_get_sandbox(t.client, "x", NULL, &st), GRPC_STATUS_NOT_FOUND, "and only the first");
        test_backend_stop(&t);
}

int main(void) {
        BcSandboxOpts o = test_keepalive_opts();
        TestBackend t;
        BcSandbox *sb;

        if (test_needs_root())
                return 0;
        test_backend_start(&t, NULL);

        test_counters(t.client);
        test_quota_alive(t.client);
        test_quota_rate(t.client);
        test_alive_peak(t.client);
        sb = test_start_sandbox(t.client, &o, "sandbox for faults");
        if (sb) {
                test_error_remaining(t.client, sb->sandbox_id);
                test_retry_info(t.client, sb->sandbox_id);
                test_latency(t.client);
                test_star_and_clear(t.client, sb->sandbox_id);
                test_drop(t.client, sb->sandbox_id);
                test_reply_delay(t.client);
                test_invalid(t.client);
                (void)bc_stop_sandbox(t.client, sb->sandbox_id, 20000);
                bc_free(sb);
        }
        test_backend_stop(&t);

        test_command_line_fault();
        return done();
}
