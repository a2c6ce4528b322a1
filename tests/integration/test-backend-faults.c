/*
 * Fault injection and counters through the Control service: an injected
 * error with remaining=1 (and an explicit code with remaining=2), added
 * latency, "*" for every SandboxService rpc but not Control, clearing, a
 * dropped stream, a delayed reply whose call still takes effect, invalid
 * rules, the call/error/injected counters, reset, sandbox and process
 * gauges, and a fault given on the command line.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-util.h"

typedef Cwsandboxlocal__V1__Fault Fault;
typedef Cwsandboxlocal__V1__GetCountersResponse Counters;

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
                _cleanup_bc_ Counters *g = NULL;

                ok(bc_get_counters(c, false, &g, NULL) == 0 && g->sandboxes_alive >= 1 &&
                   g->sandboxes_total >= g->sandboxes_alive && g->processes >= 1,
                   "a running sandbox shows in sandboxes_alive and processes (%u alive, %u total, %u processes)",
                   g ? g->sandboxes_alive : 0, g ? g->sandboxes_total : 0, g ? g->processes : 0);
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

/* An account's quota: alive and rate limits, dedup first, the exact peak. */
static void test_quota(BcClient *c) {
        BcSandboxOpts o = test_keepalive_opts();
        BcSandbox *sb[3] = { 0 }, *again = NULL;
        _cleanup_bc_ Counters *g = NULL, *h = NULL;
        BcStatus st = {};
        int r;

        (void)bc_get_counters(c, true, &g, NULL);
        bc_free(g);
        g = NULL;
        ok(bc_set_quota(c, 2, 0, 250, NULL) == 0, "SetQuota: 2 alive");
        o.request_id = "quota-first";
        ok(bc_create_sandbox(c, &o, &sb[0], NULL) == 0, "quota 2: the first create");
        o.request_id = NULL;
        r = bc_create_sandbox(c, &o, &sb[1], &st);
        ok(r == 0, "quota 2: the second (%d %s)", r, st.details);
        r = bc_create_sandbox(c, &o, &sb[2], &st);
        is_int(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "quota 2: the third is RESOURCE_EXHAUSTED");
        ok(strstr(st.details, "2 sandboxes alive, the limit is 2") != NULL, "with a clear message: %s", st.details);
        o.request_id = "quota-first";
        ok(bc_create_sandbox(c, &o, &again, NULL) == 0 && sb[0] && streq(again->sandbox_id, sb[0]->sandbox_id),
           "a repeated request_id still gets its sandbox under a full quota");
        bc_free(again);
        if (!sb[0] || !sb[1])
                bail_out("quota: the first two creates failed");
        (void)bc_stop_sandbox(c, sb[1]->sandbox_id, 20000);
        o.request_id = NULL;
        ok(bc_create_sandbox(c, &o, &sb[2], NULL) == 0, "after a stop: room for one more");
        /* The values are read before ok(): its arguments may be evaluated in any order. */
        r = bc_get_counters(c, false, &g, NULL);
        ok(r == 0 && g->sandboxes_alive_peak == 2 && g->quota_rejections == 1, "peak 2, one rejection (%u, %" PRIu64 ")",
           r == 0 ? g->sandboxes_alive_peak : 0, r == 0 ? g->quota_rejections : 0);
        (void)bc_stop_sandbox(c, sb[0]->sandbox_id, 20000);
        if (sb[2])
                (void)bc_stop_sandbox(c, sb[2]->sandbox_id, 20000);
        (void)bc_get_counters(c, true, &h, NULL);
        bc_free(h);
        h = NULL;
        r = bc_get_counters(c, false, &h, NULL);
        ok(r == 0 && h->sandboxes_alive_peak == h->sandboxes_alive, "a reset sets the peak to what is alive (%u)",
           r == 0 ? h->sandboxes_alive_peak : 0);

        ok(bc_set_quota(c, 0, 1, 0, NULL) == 0, "SetQuota: 1 create per second");
        ok(bc_create_sandbox(c, &o, &again, NULL) == 0, "rate 1/s: the first create");
        (void)bc_stop_sandbox(c, again->sandbox_id, 20000);
        bc_free(again);
        again = NULL;
        r = bc_create_sandbox(c, &o, &again, &st);
        ok(r == GRPC_STATUS_RESOURCE_EXHAUSTED || r == 0, "rate 1/s: a second right after (%d)", r);
        if (r == GRPC_STATUS_RESOURCE_EXHAUSTED)
                ok(strstr(st.details, "creates per second") != NULL, "names the rate: %s", st.details);
        else
                ok(true, "the stop took over a second: the bucket had refilled");
        if (again)
                (void)bc_stop_sandbox(c, again->sandbox_id, 20000);
        ok(bc_set_quota(c, 0, 0, 0, NULL) == 0, "SetQuota: no limits");
        for (int i = 0; i < 3; i++)
                bc_free(sb[i]);
        bc_free(again);
}

static void test_command_line_fault(void) {
        static const char *const args[] = { "--fault", "GetSandbox:error_rate=1,error_code=14,remaining=1", NULL };
        BcStatus st = {};
        TestBackend t;

        test_backend_start(&t, &(BackendProcOpts) { .extra_args = args });
        is_int(bc_get_sandbox(t.client, "x", NULL, &st), GRPC_STATUS_UNAVAILABLE,
               "--fault GetSandbox:error_rate=1,remaining=1 fails the first call");
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
        test_quota(t.client);
        sb = test_start_sandbox(t.client, &o, "sandbox for faults");
        if (sb) {
                test_error_remaining(t.client, sb->sandbox_id);
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
