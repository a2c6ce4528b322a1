/*
 * Bearer token: with --token, unary and streaming calls without it, with a
 * wrong one or a wrong scheme answer UNAUTHENTICATED (Control too), refused
 * calls are not counted, and the right token works. Without --token any or
 * no authorization is accepted. The token backend listens on 127.0.0.1:0,
 * which also covers --print-address.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-util.h"

#define TOKEN "s3cret-token"

static void check_refused(BcClient *c, const char *how) {
        _cleanup_bc_ Cwsandboxlocal__V1__GetCountersResponse *counters = NULL;
        BcSandboxOpts o = test_keepalive_opts();
        BcExec *e = NULL;
        BcLogs *l = NULL;
        BcStatus st = {};
        int r;

        r = bc_get_sandbox(c, "x", NULL, &st);
        is_int(r, GRPC_STATUS_UNAUTHENTICATED, "%s: GetSandbox is UNAUTHENTICATED", how);
        r = bc_list_sandboxes(c, NULL, NULL, &st);
        is_int(r, GRPC_STATUS_UNAUTHENTICATED, "%s: ListSandboxes is UNAUTHENTICATED", how);
        r = bc_create_sandbox(c, &o, NULL, &st);
        is_int(r, GRPC_STATUS_UNAUTHENTICATED, "%s: CreateSandbox is UNAUTHENTICATED", how);
        r = bc_get_counters(c, false, &counters, &st);
        is_int(r, GRPC_STATUS_UNAUTHENTICATED, "%s: Control.GetCounters is UNAUTHENTICATED", how);
        r = bc_set_faults(c, NULL, 0, &st);
        is_int(r, GRPC_STATUS_UNAUTHENTICATED, "%s: Control.SetFaults is UNAUTHENTICATED", how);

        r = bc_exec_run(c, "x", (const char *const[]) { "true", NULL }, TEST_CMD_MS, &e);
        ok(r == 0 && e->status.code == GRPC_STATUS_UNAUTHENTICATED && !e->ready,
           "%s: StreamExec is UNAUTHENTICATED (got %s)", how, e ? bc_code_name(e->status.code) : "?");
        bc_exec_free(e);
        r = bc_logs_read(c, "x", &(BcLogsOpts) {}, TEST_CMD_MS, &l);
        ok(r == 0 && l->status.code == GRPC_STATUS_UNAUTHENTICATED,
           "%s: StreamLogs is UNAUTHENTICATED (got %s)", how, l ? bc_code_name(l->status.code) : "?");
        bc_logs_free(l);
}

static void test_token_backend(void) {
        _cleanup_bc_ Cwsandboxlocal__V1__GetCountersResponse *before = NULL, *after = NULL;
        const Cwsandboxlocal__V1__MethodCounter *get;
        BcSandboxOpts o = test_keepalive_opts();
        BcClient *bad = NULL;
        BcSandbox *sb;
        TestBackend t;

        test_backend_start(&t, &(BackendProcOpts) { .token = TOKEN, .tcp = true });
        ok(strncmp(t.proc->target, "127.0.0.1:", 10) == 0 && atoi(t.proc->target + 10) > 0,
           "--print-address printed the bound TCP address (\"%s\")", t.proc->target);

        ok(bc_get_counters(t.client, true, &before, NULL) == 0, "the right token works for Control");

        if (bc_connect(t.proc->target, NULL, &bad) < 0)
                bail_out("cannot create a client");
        check_refused(bad, "no token");
        (void)bc_set_authorization(bad, "Bearer wrong-token");
        check_refused(bad, "wrong token");
        (void)bc_set_authorization(bad, "Basic " TOKEN);
        check_refused(bad, "right token, wrong scheme");
        (void)bc_set_authorization(bad, "Bearer " TOKEN "x");
        check_refused(bad, "token with an extra character");
        bc_close(bad);

        ok(bc_get_counters(t.client, false, &after, NULL) == 0, "GetCounters after the refused calls");
        get = bc_counter(after, "GetSandbox");
        ok(!get || get->calls == 0, "refused calls are not counted as calls (GetSandbox calls: %llu)",
           (unsigned long long)(get ? get->calls : 0));

        sb = test_start_sandbox(t.client, &o, "with the right token");
        if (sb) {
                _cleanup_free_ char *out = test_sh_out(t.client, sb->sandbox_id, "echo authorized");

                is_str(out, "authorized\n", "StreamExec with the right token works");
                ok(bc_stop_sandbox(t.client, sb->sandbox_id, 20000) == 0, "DeleteSandbox with the right token works");
                bc_free(sb);
        }
        test_backend_stop(&t);
}

static void test_open_backend(void) {
        BcStatus st = {};
        TestBackend t;
        int r;

        test_backend_start(&t, NULL);
        r = bc_list_sandboxes(t.client, NULL, NULL, &st);
        is_int(r, GRPC_STATUS_OK, "without --token, a call without authorization works");
        (void)bc_set_authorization(t.client, "Bearer any-api-key");
        r = bc_list_sandboxes(t.client, NULL, NULL, &st);
        is_int(r, GRPC_STATUS_OK, "without --token, any bearer token is accepted");
        test_backend_stop(&t);
}

int main(void) {
        if (test_needs_root())
                return 0;
        test_token_backend();
        test_open_backend();
        return done();
}
