/*
 * Persist: ledger records of sessions and handles (see persist.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "handle.h"
#include "log.h"
#include "persist.h"
#include "session.h"

static bool ledger_open(const Manager *m) {
        return m->ledger != NULL;
}

uint64_t persist_session(Session *s) {
        LedgerRecord rec = CWSANDBOXD__V1__LEDGER_RECORD__INIT;
        Cwsandboxd__V1__LedgerSdkMetrics metrics;
        LedgerSession ls;
        uint64_t seq;

        if (!ledger_open(s->manager))
                return 0;
        if (session_record(s, &ls, &metrics) < 0)
                abort();
        rec.op_case = CWSANDBOXD__V1__LEDGER_RECORD__OP_SESSION_PUT;
        rec.session_put = &ls;
        seq = ledger_append(s->manager->ledger, &rec);
        sdk_metrics_record_free(&metrics);
        return seq;
}

void persist_session_gone(Session *s) {
        LedgerRecord rec = CWSANDBOXD__V1__LEDGER_RECORD__INIT;

        if (!ledger_open(s->manager))
                return;
        rec.op_case = CWSANDBOXD__V1__LEDGER_RECORD__OP_SESSION_DEL;
        rec.session_del = s->id;
        (void)ledger_append(s->manager->ledger, &rec);
}

void persist_handle(Handle *h) {
        LedgerRecord rec = CWSANDBOXD__V1__LEDGER_RECORD__INIT;
        LedgerHandle lh;

        if (!ledger_open(h->manager) || !h->session)
                return;
        if (handle_record(h, &lh) < 0)
                abort();
        rec.op_case = CWSANDBOXD__V1__LEDGER_RECORD__OP_HANDLE_PUT;
        rec.handle_put = &lh;
        h->ledger_seq = ledger_append(h->manager->ledger, &rec);
        free(lh.create_request.data);
}

void persist_handle_gone(Handle *h) {
        LedgerRecord rec = CWSANDBOXD__V1__LEDGER_RECORD__INIT;

        if (!ledger_open(h->manager) || !h->session)
                return;
        rec.op_case = CWSANDBOXD__V1__LEDGER_RECORD__OP_HANDLE_DEL;
        rec.handle_del = h->id;
        (void)ledger_append(h->manager->ledger, &rec);
}

void persist_sync(Manager *m, uint64_t seq, LedgerSyncedFn fn, void *userdata) {
        if (!ledger_open(m)) {
                fn(userdata, 0);
                return;
        }
        ledger_sync(m->ledger, seq, fn, userdata);
}

void persist_snapshot(void *userdata, Ledger *l) {
        Manager *m = userdata;
        HashmapIter it = HASHMAP_ITER_INIT;
        Session *s;

        while ((s = hashmap_next(&m->sessions_by_id, &it))) {
                LedgerRecord rec = CWSANDBOXD__V1__LEDGER_RECORD__INIT;
                Cwsandboxd__V1__LedgerSdkMetrics metrics;
                LedgerSession ls;

                if (s->closing)
                        continue;
                if (session_record(s, &ls, &metrics) < 0)
                        abort();
                rec.op_case = CWSANDBOXD__V1__LEDGER_RECORD__OP_SESSION_PUT;
                rec.session_put = &ls;
                ledger_snapshot_add(l, &rec);
                sdk_metrics_record_free(&metrics);
                for (Handle *h = s->handles; h; h = h->session_next) {
                        LedgerHandle lh;

                        if (handle_record(h, &lh) < 0)
                                abort();
                        rec.op_case = CWSANDBOXD__V1__LEDGER_RECORD__OP_HANDLE_PUT;
                        rec.handle_put = &lh;
                        ledger_snapshot_add(l, &rec);
                        free(lh.create_request.data);
                }
        }
}

/* ---- restore ------------------------------------------------------------------------------ */

static void keep_bad_copy(const Manager *m, const char *path, const LedgerContents *c) {
        _cleanup_free_ char *bad = NULL;

        if (c->result != LEDGER_LOAD_TORN && c->result != LEDGER_LOAD_CORRUPT && c->result != LEDGER_LOAD_EMPTY)
                return;
        if (asprintf(&bad, "%s/" LEDGER_FILE ".bad", m->config->state_dir) < 0)
                return;
        /*
         * For whoever investigates. A link, not a rename: the original stays
         * until a compaction has written its replacement, so a disk too full
         * for that does not leave no ledger at all.
         */
        if ((unlink(bad) < 0 && errno != ENOENT) || link(path, bad) < 0)
                log_warning("state ledger: cannot keep a copy of the damaged file as %s: %m", bad);
}

static void restore(Manager *m, const LedgerContents *c, unsigned *ret_sessions, unsigned *ret_handles) {
        unsigned ns = 0, nh = 0;

        for (size_t i = 0; i < c->n_sessions; i++)
                if (session_restore(m, c->sessions[i]))
                        ns++;
        for (size_t i = 0; i < c->n_handles; i++) {
                const LedgerHandle *lh = c->handles[i];
                Session *s = hashmap_get(&m->sessions_by_id, lh->session_id);

                /* A connection-scoped sandbox lost its connection with the old daemon: the reaper stops it. */
                if (!s || lh->scope == CWSANDBOXD__V1__SCOPE__SCOPE_CONNECTION)
                        continue;
                if (handle_restore(s, lh))
                        nh++;
        }
        *ret_sessions = ns;
        *ret_handles = nh;
}

int persist_load(Manager *m) {
        _cleanup_free_ char *path = NULL;
        LedgerContents c;
        unsigned ns, nh;
        int r;

        if (asprintf(&path, "%s/" LEDGER_FILE, m->config->state_dir) < 0)
                return -ENOMEM;
        r = ledger_load(path, &c);
        if (r < 0)
                return r;
        snprintf(m->ledger_report, sizeof(m->ledger_report), "%s", c.report);
        m->ledger_load_result = c.result;
        if (c.result == LEDGER_LOAD_OK || c.result == LEDGER_LOAD_NONE)
                log_info("state ledger %s: %s", path, c.report);
        else
                log_error("state ledger %s: %s; starting with what was readable, reconciling with the backend",
                          path, c.report);
        keep_bad_copy(m, path, &c);
        restore(m, &c, &ns, &nh);
        ledger_contents_free(&c);
        if (ns > 0)
                log_notice("restored %u session(s) and %u sandbox handle(s)", ns, nh);
        r = ledger_new(m->loop, m->config->state_dir, persist_snapshot, m, &m->ledger);
        if (r < 0)
                return r;
        ledger_compact(m->ledger);
        return 0;
}
