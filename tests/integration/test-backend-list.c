/*
 * ListSandboxes: every given tag must match, the state filter,
 * show_terminated, pagination (page_size 2 over 5 sandboxes) and a bad page
 * token. Each run uses its own unique tags, so sandboxes of other tests
 * cannot leak into the counts.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-util.h"

#define N 5

typedef Coreweave__Sandbox__V1__ListSandboxesResponse ListResponse;

static char *ids[N];

/* Count the sandboxes of a listing, or -1 (with a diagnostic) on error. */
static int list_count(BcClient *c, const BcListOpts *o) {
        _cleanup_bc_ ListResponse *resp = NULL;
        BcStatus st = {};
        int r;

        r = bc_list_sandboxes(c, o, &resp, &st);
        if (r != 0) {
                test_diag_status("ListSandboxes", r, &st);
                return -1;
        }
        return (int)resp->n_sandboxes;
}

static bool all_have_state(BcClient *c, const BcListOpts *o, BcState s) {
        _cleanup_bc_ ListResponse *resp = NULL;

        if (bc_list_sandboxes(c, o, &resp, NULL) != 0)
                return false;
        for (size_t i = 0; i < resp->n_sandboxes; i++)
                if (!resp->sandboxes[i]->status || resp->sandboxes[i]->status->state != s)
                        return false;
        return true;
}

static void test_pagination(BcClient *c, const char *tag) {
        const char *tags[] = { tag, NULL };
        char *seen[N + 4] = {};
        size_t n_seen = 0;
        _cleanup_free_ char *token = NULL;
        unsigned pages = 0;
        bool sizes_ok = true, distinct = true;

        for (;;) {
                BcListOpts o = { .tags = tags, .page_size = 2, .page_token = token, .show_terminated = true };
                _cleanup_bc_ ListResponse *resp = NULL;
                BcStatus st = {};
                int r;

                r = bc_list_sandboxes(c, &o, &resp, &st);
                if (!ok(r == 0, "ListSandboxes page %u with page_size 2", pages + 1)) {
                        test_diag_status("ListSandboxes", r, &st);
                        break;
                }
                pages++;
                if (resp->n_sandboxes > 2 || (resp->next_page_token[0] && resp->n_sandboxes != 2))
                        sizes_ok = false;
                for (size_t i = 0; i < resp->n_sandboxes; i++) {
                        for (size_t j = 0; j < n_seen; j++)
                                if (streq(seen[j], resp->sandboxes[i]->sandbox_id))
                                        distinct = false;
                        if (n_seen < ELEMENTSOF(seen))
                                seen[n_seen++] = strdup(resp->sandboxes[i]->sandbox_id);
                }
                free(token);
                token = NULL;
                if (!resp->next_page_token[0] || pages > N)
                        break;
                token = strdup(resp->next_page_token);
        }
        is_int(pages, 3, "5 sandboxes in pages of 2 take 3 pages");
        ok(sizes_ok, "every page but the last is full, none is larger than page_size");
        is_int(n_seen, N, "the pages hold all 5 sandboxes");
        ok(distinct, "no sandbox appears twice");
        for (size_t i = 0; i < n_seen; i++)
                free(seen[i]);
}

static void test_bad_page_token(BcClient *c, const char *tag) {
        const char *tags[] = { tag, NULL };
        BcListOpts o = { .tags = tags, .page_token = "not-a-page-token" };
        _cleanup_bc_ ListResponse *resp = NULL;
        BcStatus st = {};
        int r;

        r = bc_list_sandboxes(c, &o, &resp, &st);
        is_int(r, GRPC_STATUS_INVALID_ARGUMENT, "a bad page_token: INVALID_ARGUMENT");
        o = (BcListOpts) { .tags = tags, .page_size = -1 };
        r = bc_list_sandboxes(c, &o, NULL, &st);
        is_int(r, GRPC_STATUS_INVALID_ARGUMENT, "a negative page_size: INVALID_ARGUMENT");
        bc_free(resp);
        resp = NULL;
        o = (BcListOpts) { .tags = tags, .page_size = 5000, .show_terminated = true };
        r = bc_list_sandboxes(c, &o, &resp, &st);
        ok(r == 0 && resp->n_sandboxes == 5, "a page_size above the maximum is capped, not refused (%s)",
           bc_code_name(r));
}

int main(void) {
        _cleanup_free_ char *all = NULL, *a = NULL, *b = NULL;
        TestBackend t;
        int n_started = 0;

        if (test_needs_root())
                return 0;
        test_backend_start(&t, NULL);
        all = test_marker("all");
        a = test_marker("a");
        b = test_marker("b");

        /* Sandboxes 0, 1: {all, a}; 2: {all, b}; 3, 4: {all}. */
        for (int i = 0; i < N; i++) {
                const char *tags[3] = { all, i < 2 ? a : i == 2 ? b : NULL, NULL };
                BcSandboxOpts o = test_keepalive_opts();
                BcSandbox *sb;
                char what[64];

                o.tags = tags;
                snprintf(what, sizeof(what), "tagged sandbox %d", i);
                sb = test_start_sandbox(t.client, &o, what);
                if (!sb)
                        continue;
                ids[i] = strdup(sb->sandbox_id);
                n_started++;
                bc_free(sb);
        }
        if (n_started != N)
                bail_out("could not start the sandboxes to list");

        {
                const char *t_all[] = { all, NULL }, *t_all_a[] = { all, a, NULL };
                const char *t_a_b[] = { a, b, NULL }, *t_all_b[] = { all, b, NULL };
                const char *t_none[] = { "cwsl-no-such-tag", NULL };

                is_int(list_count(t.client, &(BcListOpts) { .tags = t_all }), 5, "tag {all}: 5 sandboxes");
                is_int(list_count(t.client, &(BcListOpts) { .tags = t_all_a }), 2, "tags {all, a}: 2 sandboxes");
                is_int(list_count(t.client, &(BcListOpts) { .tags = t_all_b }), 1, "tags {all, b}: 1 sandbox");
                is_int(list_count(t.client, &(BcListOpts) { .tags = t_a_b }), 0,
                       "tags {a, b}: none (every tag must match)");
                is_int(list_count(t.client, &(BcListOpts) { .tags = t_none }), 0, "an unknown tag: none");
                ok(list_count(t.client, &(BcListOpts) {}) >= 5, "no tags: at least our 5 sandboxes");

                /* Stop sandbox 4: TERMINATED, hidden unless show_terminated. */
                ok(bc_stop_sandbox(t.client, ids[4], 20000) == 0, "sandbox 4 stopped");
                is_int(list_count(t.client, &(BcListOpts) { .tags = t_all }), 4,
                       "a TERMINATED sandbox is hidden by default");
                is_int(list_count(t.client, &(BcListOpts) { .tags = t_all, .show_terminated = true }), 5,
                       "show_terminated lists it again");
                is_int(list_count(t.client, &(BcListOpts) { .tags = t_all, .state = BC_STATE(RUNNING) }), 4,
                       "state RUNNING: the 4 running ones");
                ok(all_have_state(t.client, &(BcListOpts) { .tags = t_all, .state = BC_STATE(RUNNING) },
                                  BC_STATE(RUNNING)),
                   "state RUNNING lists only RUNNING sandboxes");
                is_int(list_count(t.client, &(BcListOpts) { .tags = t_all, .state = BC_STATE(TERMINATED),
                                                            .show_terminated = true }),
                       1, "state TERMINATED with show_terminated: the stopped one");
                is_int(list_count(t.client, &(BcListOpts) { .tags = t_all, .state = BC_STATE(COMPLETED),
                                                            .show_terminated = true }),
                       0, "state COMPLETED: none");
        }

        test_pagination(t.client, all);
        test_bad_page_token(t.client, all);

        for (int i = 0; i < N; i++) {
                if (i != 4 && ids[i])
                        (void)bc_stop_sandbox(t.client, ids[i], 20000);
                free(ids[i]);
        }
        test_backend_stop(&t);
        return done();
}
