/*
 * Sandbox life cycle against a real cwsandbox-local: every state transition
 * (RUNNING, COMPLETED, FAILED by exit code and by a missing command,
 * TERMINATING -> TERMINATED on delete, grace then SIGKILL, lifetime expiry),
 * timestamps and exit codes, idempotent create and delete, allow_missing, and
 * the errors of malformed requests.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-util.h"

static BcState state_of(const BcSandbox *sb) {
        return sb && sb->status ? sb->status->state : BC_STATE(UNSPECIFIED);
}

static bool has_exit_code(const BcSandbox *sb) {
        return sb && sb->status &&
               sb->status->_exit_code_case == COREWEAVE__SANDBOX__V1__SANDBOX_STATUS___EXIT_CODE_EXIT_CODE;
}

/* Wait for @want and record one test point; returns the sandbox or NULL. */
static BcSandbox *expect_state(BcClient *c, const char *id, BcState want, int timeout_ms, const char *what) {
        BcSandbox *sb = NULL;
        BcStatus st = {};
        int r;

        r = bc_wait_state(c, id, want, timeout_ms, &sb, &st);
        if (!ok(r == 0, "%s: reaches %s", what, bc_state_name(want))) {
                test_diag_status("wait", r, &st);
                if (sb)
                        diag("  last state %s, reason \"%s\"", bc_state_name(state_of(sb)),
                             sb->status ? sb->status->state_reason : "");
        }
        return sb;
}

static void test_running_and_delete(BcClient *c) {
        BcSandboxOpts o = test_keepalive_opts();
        _cleanup_bc_ BcSandbox *created = NULL, *sb = NULL, *got = NULL, *end = NULL;
        _cleanup_bc_ Coreweave__Sandbox__V1__DeleteSandboxResponse *del = NULL;
        BcDeleteOpts d = { .grace_period_seconds = 60 };
        BcStatus st = {};
        int64_t t0;
        int r;

        r = bc_create_sandbox(c, &o, &created, &st);
        if (!ok(r == 0, "CreateSandbox answers OK")) {
                test_diag_status("CreateSandbox", r, &st);
                return;
        }
        ok(created->sandbox_id && strlen(created->sandbox_id) > 0, "the new sandbox has an id");
        ok(state_of(created) == BC_STATE(PENDING) || state_of(created) == BC_STATE(CREATING) ||
           state_of(created) == BC_STATE(RUNNING),
           "CreateSandbox reports PENDING, CREATING or RUNNING (got %s)", bc_state_name(state_of(created)));
        ok(created->status && created->status->create_time, "create_time is set");
        ok(created->spec && created->spec->n_containers == 1 &&
           strcmp(created->spec->containers[0]->command, BC_KEEPALIVE_COMMAND) == 0,
           "the reply carries the spec as given");

        sb = expect_state(c, created->sandbox_id, BC_STATE(RUNNING), TEST_START_MS, "keep-alive sandbox");
        if (!sb || state_of(sb) != BC_STATE(RUNNING))
                return;
        ok(sb->status->start_time && bc_ts_ns(sb->status->start_time) >= bc_ts_ns(sb->status->create_time),
           "start_time is set and not before create_time");
        ok(!sb->status->end_time, "a running sandbox has no end_time");
        ok(!has_exit_code(sb), "a running sandbox has no exit_code");
        is_str(sb->status->effective_runtime_class, "cwsandbox-local/host",
               "effective_runtime_class names the host base");

        r = bc_get_sandbox(c, created->sandbox_id, &got, &st);
        ok(r == 0 && got && strcmp(got->sandbox_id, created->sandbox_id) == 0, "GetSandbox finds it by id");

        t0 = test_mono_ms();
        r = bc_delete_sandbox(c, created->sandbox_id, &d, &del, &st);
        if (!ok(r == 0, "DeleteSandbox answers OK"))
                test_diag_status("DeleteSandbox", r, &st);
        if (del)
                ok(del->sandbox && strcmp(del->sandbox->sandbox_id, created->sandbox_id) == 0 &&
                   (state_of(del->sandbox) == BC_STATE(TERMINATING) ||
                    state_of(del->sandbox) == BC_STATE(TERMINATED)),
                   "DeleteSandbox returns the sandbox TERMINATING or TERMINATED (got %s)",
                   bc_state_name(state_of(del ? del->sandbox : NULL)));

        /* The keep-alive exits 0 on SIGTERM, so the 60 s grace is never
         * used up: reaching TERMINATED well before it shows SIGTERM arrived. */
        end = expect_state(c, created->sandbox_id, BC_STATE(TERMINATED), 20000, "deleted keep-alive");
        if (state_of(end) != BC_STATE(TERMINATED))
                return;
        diag("TERMINATED %lld ms after DeleteSandbox", (long long)(test_mono_ms() - t0));
        ok(end->status->end_time && bc_ts_ns(end->status->end_time) >= bc_ts_ns(end->status->start_time),
           "end_time is set and not before start_time");
}

static void test_empty_command(BcClient *c) {
        BcSandboxOpts o = { .command = "" };
        _cleanup_bc_ BcSandbox *sb = NULL;
        _cleanup_free_ char *out = NULL;

        sb = test_start_sandbox(c, &o, "empty command (backend keep-alive)");
        if (!sb)
                return;
        /* The keep-alive must keep running: still RUNNING a moment later. */
        test_sleep_ms(300);
        out = test_sh_out(c, sb->sandbox_id, "echo alive");
        is_str(test_chomp(out), "alive", "exec works in the keep-alive sandbox");
        ok(bc_stop_sandbox(c, sb->sandbox_id, 20000) == 0, "the keep-alive stops on delete");
}

static void test_completed(BcClient *c) {
        static const char *const args[] = { "-c", "echo done", NULL };
        BcSandboxOpts o = { .command = "/bin/sh", .args = args };
        _cleanup_bc_ BcSandbox *created = NULL, *sb = NULL;
        BcStatus st = {};
        int r;

        r = bc_create_sandbox(c, &o, &created, &st);
        if (!ok(r == 0, "create a sandbox whose main process exits 0")) {
                test_diag_status("CreateSandbox", r, &st);
                return;
        }
        sb = expect_state(c, created->sandbox_id, BC_STATE(COMPLETED), TEST_START_MS, "exit 0");
        if (state_of(sb) != BC_STATE(COMPLETED))
                return;
        ok(has_exit_code(sb) && sb->status->exit_code == 0, "COMPLETED carries exit_code 0");
        ok(sb->status->end_time != NULL, "COMPLETED has end_time");
}

static void test_failed_exit(BcClient *c) {
        static const char *const args[] = { "-c", "echo failing >&2; exit 3", NULL };
        BcSandboxOpts o = { .command = "/bin/sh", .args = args };
        _cleanup_bc_ BcSandbox *created = NULL, *sb = NULL;
        BcStatus st = {};
        int r;

        r = bc_create_sandbox(c, &o, &created, &st);
        if (!ok(r == 0, "create a sandbox whose main process exits 3")) {
                test_diag_status("CreateSandbox", r, &st);
                return;
        }
        sb = expect_state(c, created->sandbox_id, BC_STATE(FAILED), TEST_START_MS, "exit 3");
        if (state_of(sb) != BC_STATE(FAILED))
                return;
        ok(has_exit_code(sb), "FAILED carries an exit_code");
        is_int(sb->status->exit_code, 3, "exit_code is 3");
        ok(sb->status->state_reason && *sb->status->state_reason, "FAILED has a state_reason (\"%s\")",
           sb->status->state_reason);
        ok(sb->status->end_time != NULL, "FAILED has end_time");
}

static void test_failed_missing_command(BcClient *c) {
        BcSandboxOpts o = { .command = "/nonexistent/cwsl-no-such-command" };
        _cleanup_bc_ BcSandbox *created = NULL, *sb = NULL;
        BcStatus st = {};
        int r;

        r = bc_create_sandbox(c, &o, &created, &st);
        if (r == GRPC_STATUS_INVALID_ARGUMENT) {
                /* Refusing up front would also be honest; record it. */
                ok(false, "a missing command is accepted and ends FAILED (got INVALID_ARGUMENT: %s)", st.details);
                return;
        }
        if (!ok(r == 0, "create a sandbox with a missing command")) {
                test_diag_status("CreateSandbox", r, &st);
                return;
        }
        sb = expect_state(c, created->sandbox_id, BC_STATE(FAILED), TEST_START_MS, "missing command");
        if (state_of(sb) != BC_STATE(FAILED))
                return;
        ok(sb->status->state_reason && *sb->status->state_reason,
           "a missing command gives a state_reason (\"%s\")", sb->status->state_reason);
}

/* Poll the (non-follow) logs until they contain @needle. */
static bool logs_contain(BcClient *c, const char *id, const char *needle, int timeout_ms) {
        int64_t end = test_mono_ms() + timeout_ms;
        BcLogsOpts o = {};

        for (;;) {
                BcLogs *l = NULL;
                bool found;

                (void)bc_logs_read(c, id, &o, 10000, &l);
                found = l && l->data.len && strstr(l->data.data, needle);
                bc_logs_free(l);
                if (found)
                        return true;
                if (test_mono_ms() >= end)
                        return false;
                test_sleep_ms(100);
        }
}

static void test_grace_then_kill(BcClient *c) {
        static const char *const args[] = {
                "-c", "trap 'echo got-term' TERM; echo started; while :; do sleep 0.1; done", NULL };
        BcSandboxOpts o = { .command = "/bin/sh", .args = args };
        BcDeleteOpts d = { .grace_period_seconds = 3 };
        _cleanup_bc_ BcSandbox *sb = NULL, *first = NULL, *end = NULL;
        BcStatus st = {};
        int64_t t0, t_first, t_end;
        int r;

        sb = test_start_sandbox(c, &o, "main process that ignores SIGTERM");
        if (!sb)
                return;
        ok(logs_contain(c, sb->sandbox_id, "started", 10000), "its trap is installed (log says started)");

        t0 = test_mono_ms();
        r = bc_delete_sandbox(c, sb->sandbox_id, &d, NULL, &st);
        if (!ok(r == 0, "DeleteSandbox with grace_period_seconds=3")) {
                test_diag_status("DeleteSandbox", r, &st);
                return;
        }
        r = bc_get_sandbox(c, sb->sandbox_id, &first, &st);
        t_first = test_mono_ms() - t0;
        if (r == 0 && t_first < 2500)
                ok(state_of(first) == BC_STATE(TERMINATING),
                   "within the grace period it is still TERMINATING (got %s after %lld ms)",
                   bc_state_name(state_of(first)), (long long)t_first);
        else
                diag("skipped the TERMINATING check: the first GetSandbox came %lld ms late", (long long)t_first);

        end = expect_state(c, sb->sandbox_id, BC_STATE(TERMINATED), 30000, "SIGTERM-ignoring sandbox");
        t_end = test_mono_ms() - t0;
        if (state_of(end) != BC_STATE(TERMINATED))
                return;
        ok(t_end >= 3000, "it was killed no earlier than the grace period (TERMINATED seen after %lld ms)",
           (long long)t_end);
        ok(logs_contain(c, sb->sandbox_id, "got-term", 5000), "SIGTERM reached the main process before the kill");
}

static void test_lifetime(BcClient *c) {
        BcSandboxOpts o = test_keepalive_opts();
        _cleanup_bc_ BcSandbox *sb = NULL, *end = NULL;
        int64_t t0 = test_mono_ms(), t_end;

        o.max_lifetime_seconds = 2;
        sb = test_start_sandbox(c, &o, "sandbox with max_lifetime_seconds=2");
        if (!sb)
                return;
        is_int(sb->status->effective_max_lifetime_seconds, 2, "effective_max_lifetime_seconds is 2");
        end = expect_state(c, sb->sandbox_id, BC_STATE(TERMINATED), 30000, "lifetime expiry");
        t_end = test_mono_ms() - t0;
        if (state_of(end) != BC_STATE(TERMINATED))
                return;
        ok(t_end >= 2000, "it ended no earlier than its lifetime (after %lld ms)", (long long)t_end);
        ok(end->status->state_reason && *end->status->state_reason,
           "lifetime expiry gives a state_reason (\"%s\")", end->status->state_reason);
}

static void test_idempotent_create(BcClient *c) {
        _cleanup_free_ char *rid = test_marker("rid"), *tag = test_marker("tag");
        const char *tags[] = { tag, NULL };
        BcSandboxOpts o = test_keepalive_opts();
        _cleanup_bc_ BcSandbox *a = NULL, *b = NULL;
        _cleanup_bc_ Coreweave__Sandbox__V1__ListSandboxesResponse *list = NULL;
        BcListOpts lo = { .tags = tags };
        BcStatus st = {};
        int r;

        o.request_id = rid;
        o.tags = tags;
        r = bc_create_sandbox(c, &o, &a, &st);
        if (!ok(r == 0, "CreateSandbox with a request_id")) {
                test_diag_status("CreateSandbox", r, &st);
                return;
        }
        r = bc_create_sandbox(c, &o, &b, &st);
        if (!ok(r == 0, "the same CreateSandbox again answers OK")) {
                test_diag_status("CreateSandbox (repeat)", r, &st);
        } else
                is_str(b->sandbox_id, a->sandbox_id, "the repeat returns the same sandbox");
        r = bc_list_sandboxes(c, &lo, &list, &st);
        if (ok(r == 0, "ListSandboxes by the request's tag"))
                is_int(list->n_sandboxes, 1, "only one sandbox was created");
        (void)bc_stop_sandbox(c, a->sandbox_id, 20000);
}

static void test_idempotent_delete(BcClient *c) {
        _cleanup_free_ char *rid = test_marker("del");
        BcSandboxOpts o = test_keepalive_opts();
        BcDeleteOpts d = { .grace_period_seconds = 5, .request_id = rid };
        _cleanup_bc_ BcSandbox *sb = NULL, *end = NULL;
        BcStatus st = {};
        int r;

        sb = test_start_sandbox(c, &o, "sandbox for an idempotent delete");
        if (!sb)
                return;
        r = bc_delete_sandbox(c, sb->sandbox_id, &d, NULL, &st);
        if (!ok(r == 0, "DeleteSandbox with a request_id"))
                test_diag_status("DeleteSandbox", r, &st);
        r = bc_delete_sandbox(c, sb->sandbox_id, &d, NULL, &st);
        if (!ok(r == 0, "the same DeleteSandbox again answers OK"))
                test_diag_status("DeleteSandbox (repeat)", r, &st);
        end = expect_state(c, sb->sandbox_id, BC_STATE(TERMINATED), 20000, "idempotently deleted sandbox");
        r = bc_delete_sandbox(c, sb->sandbox_id, &d, NULL, &st);
        if (!ok(r == 0, "the same DeleteSandbox after TERMINATED still answers OK"))
                test_diag_status("DeleteSandbox (after the end)", r, &st);
}

static void test_allow_missing(BcClient *c) {
        _cleanup_bc_ Coreweave__Sandbox__V1__DeleteSandboxResponse *resp = NULL;
        BcDeleteOpts d = { .allow_missing = true };
        BcStatus st = {};
        int r;

        r = bc_delete_sandbox(c, "no-such-sandbox", &d, &resp, &st);
        if (ok(r == 0, "DeleteSandbox allow_missing on an unknown id answers OK"))
                ok(resp && !resp->sandbox, "and the response is empty");
        else
                test_diag_status("DeleteSandbox", r, &st);
        r = bc_delete_sandbox(c, "no-such-sandbox", NULL, NULL, &st);
        is_int(r, GRPC_STATUS_NOT_FOUND, "DeleteSandbox on an unknown id without allow_missing: NOT_FOUND");
}

static void test_errors(BcClient *c) {
        Coreweave__Sandbox__V1__CreateSandboxRequest req = COREWEAVE__SANDBOX__V1__CREATE_SANDBOX_REQUEST__INIT;
        Coreweave__Sandbox__V1__Sandbox sbm = COREWEAVE__SANDBOX__V1__SANDBOX__INIT;
        Coreweave__Sandbox__V1__SandboxSpec spec = COREWEAVE__SANDBOX__V1__SANDBOX_SPEC__INIT;
        ProtobufCMessage *resp = NULL;
        _cleanup_bc_ BcSandbox *sb = NULL;
        BcStatus st = {};
        int r;

        r = bc_get_sandbox(c, "no-such-sandbox", &sb, &st);
        is_int(r, GRPC_STATUS_NOT_FOUND, "GetSandbox of an unknown id: NOT_FOUND");
        ok(st.details[0] != 0, "with a message (\"%s\")", st.details);

        r = bc_get_sandbox(c, "", &sb, &st);
        ok(r == GRPC_STATUS_INVALID_ARGUMENT || r == GRPC_STATUS_NOT_FOUND,
           "GetSandbox with an empty id: INVALID_ARGUMENT or NOT_FOUND (got %s)", bc_code_name(r));

        r = bc_unary(c, BC_SANDBOX_SERVICE "CreateSandbox", &req.base,
                     &coreweave__sandbox__v1__sandbox__descriptor, 0, &resp, &st);
        is_int(r, GRPC_STATUS_INVALID_ARGUMENT, "CreateSandbox without a sandbox: INVALID_ARGUMENT");
        bc_free(resp);
        resp = NULL;

        req.sandbox = &sbm;
        sbm.spec = &spec;
        r = bc_unary(c, BC_SANDBOX_SERVICE "CreateSandbox", &req.base,
                     &coreweave__sandbox__v1__sandbox__descriptor, 0, &resp, &st);
        is_int(r, GRPC_STATUS_INVALID_ARGUMENT, "CreateSandbox without containers: INVALID_ARGUMENT");
        ok(st.details[0] != 0, "with a message (\"%s\")", st.details);
        bc_free(resp);
        resp = NULL;

        /* rpcs the backend does not serve answer at once, never hang. */
        {
                Coreweave__Sandbox__V1__PurgeSandboxesRequest purge = COREWEAVE__SANDBOX__V1__PURGE_SANDBOXES_REQUEST__INIT;

                r = bc_unary(c, BC_SANDBOX_SERVICE "PurgeSandboxes", &purge.base,
                             &coreweave__sandbox__v1__purge_sandboxes_response__descriptor, 10000, &resp, &st);
                is_int(r, GRPC_STATUS_UNIMPLEMENTED, "PurgeSandboxes: UNIMPLEMENTED");
                bc_free(resp);
                resp = NULL;
                r = bc_unary(c, "/no.such.v1.Service/Method", &purge.base,
                             &coreweave__sandbox__v1__purge_sandboxes_response__descriptor, 10000, &resp, &st);
                is_int(r, GRPC_STATUS_UNIMPLEMENTED, "an unknown service: UNIMPLEMENTED");
                bc_free(resp);
        }
}

int main(void) {
        TestBackend t;

        if (test_needs_root())
                return 0;
        test_backend_start(&t, NULL);

        test_running_and_delete(t.client);
        test_empty_command(t.client);
        test_completed(t.client);
        test_failed_exit(t.client);
        test_failed_missing_command(t.client);
        test_grace_then_kill(t.client);
        test_lifetime(t.client);
        test_idempotent_create(t.client);
        test_idempotent_delete(t.client);
        test_allow_missing(t.client);
        test_errors(t.client);

        test_backend_stop(&t);
        return done();
}
