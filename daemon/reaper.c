/*
 * Reaper: reconciliation passes and stop retries (see reaper.h).
 *
 * Every backend call carries a small context that names the Reaper; after
 * reaper_close() the replies still arrive (the backend cancels them at
 * shutdown) and only free their context.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "handle.h"
#include "log.h"
#include "reaper.h"
#include "session.h"

#define REAPER_PAGE_SIZE        200
#define REAPER_MAX_PAGES        1000
#define REAPER_CALL_TIMEOUT_MS  30000
#define REAPER_STOP_GRACE_S     10
#define RETRY_FIRST_MS          1000
#define RETRY_MAX_MS            60000
#define PASS_SOON_MIN_MS        5000    /* passes asked for early come at most this often */

#define BSTATE(x) COREWEAVE__SANDBOX__V1__STATE__STATE_##x

typedef Coreweave__Sandbox__V1__Sandbox Sandbox;

typedef struct StopRetry {
        Reaper *reaper;
        char *sandbox_id;
        char *session_id;
        unsigned attempts;
        uint64_t due_ms;
        bool in_flight;
        bool abandoned;                 /* the reaper closed while a call was out */
} StopRetry;

static void pass_start(Reaper *r);

void reaper_init(Reaper *r, Manager *m) {
        *r = (Reaper) { .manager = m, .retries = HASHMAP_NULL(r->retries) };
        uv_timer_init(m->loop, &r->pass_timer);
        uv_timer_init(m->loop, &r->retry_timer);
}

unsigned reaper_pending_stops(const Reaper *r) {
        return (unsigned)hashmap_size(&r->retries);
}

/* ---- stops with retries ------------------------------------------------------------------ */

static void retry_free(StopRetry *e) {
        free(e->sandbox_id);
        free(e->session_id);
        free(e);
}

static uint64_t retry_delay_ms(unsigned attempts) {
        uint64_t d = RETRY_FIRST_MS;

        for (unsigned i = 1; i < attempts && d < RETRY_MAX_MS; i++)
                d *= 2;
        d = d > RETRY_MAX_MS ? RETRY_MAX_MS : d;
        /* +-20 %, so a host's worth of retries does not arrive in step */
        return d * 4 / 5 + (uint64_t)random() % (d * 2 / 5 + 1);
}

static void retry_due(uv_timer_t *t);

/* The retry timer fires for the earliest retry due. */
static void retry_arm(Reaper *r) {
        HashmapIter it = HASHMAP_ITER_INIT;
        uint64_t now = manager_now_ms(r->manager), next = UINT64_MAX;
        StopRetry *e;

        if (r->closed)
                return;
        while ((e = hashmap_next(&r->retries, &it)))
                if (!e->in_flight && e->due_ms < next)
                        next = e->due_ms;
        if (next == UINT64_MAX)
                uv_timer_stop(&r->retry_timer);
        else
                uv_timer_start(&r->retry_timer, retry_due, next > now ? next - now : 0, 0);
}

/* Attempt @e->attempts + 1 failed with @st: count it, log the first, try again later. */
static void retry_later(StopRetry *e, const Status *st) {
        Reaper *r = e->reaper;

        e->attempts++;
        r->stats.stop_failures++;
        if (e->attempts == 1)
                log_full(LOG_LEVEL_WARNING, e->session_id, e->sandbox_id,
                         "stop failed: %s; retrying until it is gone", st->message);
        else
                log_full(LOG_LEVEL_DEBUG, e->session_id, e->sandbox_id, "stop attempt %u failed: %s",
                         e->attempts, st->message);
        e->due_ms = manager_now_ms(r->manager) + retry_delay_ms(e->attempts);
        retry_arm(r);
}

static void delete_done(void *userdata, const Status *st, ProtobufCMessage *reply) {
        StopRetry *e = userdata;
        Reaper *r = e->reaper;

        if (reply)
                protobuf_c_message_free_unpacked(reply, NULL);
        e->in_flight = false;
        if (e->abandoned) {
                retry_free(e);
                return;
        }
        if (status_ok(st) || st->code == GRPC_STATUS_NOT_FOUND) {
                if (e->attempts > 0)
                        log_full(LOG_LEVEL_INFO, e->session_id, e->sandbox_id, "stopped after %u failed attempt(s)",
                                 e->attempts);
                (void)hashmap_remove(&r->retries, e->sandbox_id);
                retry_free(e);
                retry_arm(r);
                admission_set_stopping(&r->manager->admission, reaper_pending_stops(r));
                return;
        }
        retry_later(e, st);
}

static void delete_send(StopRetry *e) {
        Coreweave__Sandbox__V1__DeleteSandboxRequest req = COREWEAVE__SANDBOX__V1__DELETE_SANDBOX_REQUEST__INIT;

        req.sandbox_id = e->sandbox_id;
        req.grace_period_seconds = REAPER_STOP_GRACE_S;
        req.allow_missing = true;
        e->in_flight = true;
        (void)backend_call(e->reaper->manager->backend, BACKEND_DELETE_SANDBOX, &req.base,
                           (REAPER_STOP_GRACE_S + 30) * 1000, delete_done, e);
}

static void retry_due(uv_timer_t *t) {
        Reaper *r = container_of(t, Reaper, retry_timer);
        HashmapIter it = HASHMAP_ITER_INIT;
        uint64_t now = manager_now_ms(r->manager);
        StopRetry *e;

        while ((e = hashmap_next(&r->retries, &it)))
                if (!e->in_flight && e->due_ms <= now) {
                        r->stats.stop_retries++;
                        delete_send(e);
                }
        retry_arm(r);
}

void reaper_stop_sandbox(Reaper *r, const char *sandbox_id, const char *session_id, const Status *failed) {
        StopRetry *e;

        if (r->closed || hashmap_get(&r->retries, sandbox_id))
                return;
        e = calloc(1, sizeof(*e));
        if (!e)
                abort();
        e->reaper = r;
        e->sandbox_id = strdup(sandbox_id);
        e->session_id = session_id ? strdup(session_id) : NULL;
        if (!e->sandbox_id || (session_id && !e->session_id) ||
            hashmap_put(&r->retries, e->sandbox_id, e) < 0)
                abort();
        admission_set_stopping(&r->manager->admission, reaper_pending_stops(r));
        if (failed)
                retry_later(e, failed);
        else
                delete_send(e);
}

/* ---- passes ------------------------------------------------------------------------------- */

static bool backend_terminal(int state) {
        return state == BSTATE(COMPLETED) || state == BSTATE(FAILED) || state == BSTATE(TERMINATED);
}

/* The value of the first tag of @sb starting with @prefix, or NULL. */
static const char *tag_value(const Sandbox *sb, const char *prefix) {
        size_t n = strlen(prefix);

        if (!sb->spec)
                return NULL;
        for (size_t i = 0; i < sb->spec->n_tags; i++)
                if (strncmp(sb->spec->tags[i], prefix, n) == 0)
                        return sb->spec->tags[i] + n;
        return NULL;
}

static void lifetime_stopped(void *userdata, Handle *h, const Status *st) {
        Handle *self = userdata;

        if (!status_ok(st) && self->sandbox_id)
                reaper_stop_sandbox(&self->manager->reaper, self->sandbox_id,
                                    self->session ? self->session->id : NULL, st);
        handle_unref(h);
        handle_unref(self);
}

/* Stop @h if it has lived longer than its session allows. */
static void check_lifetime(Reaper *r, Handle *h) {
        Session *s = h->session;
        int64_t age_ms;

        if (!s || s->max_lifetime_s <= 0 || h->stop || h->create_time_ms <= 0 || handle_is_terminal(h))
                return;
        age_ms = manager_wall_ms() - h->create_time_ms;
        if (age_ms <= (int64_t)s->max_lifetime_s * 1000)
                return;
        r->stats.lifetime_stops++;
        log_full(LOG_LEVEL_INFO, s->id, h->sandbox_id, "older than the session's max lifetime (%.1f s > %d s): "
                 "stopping", age_ms / 1000.0, (int)s->max_lifetime_s);
        handle_stop(h, REAPER_STOP_GRACE_S, true, lifetime_stopped, handle_ref(h));
}

static void reap(Reaper *r, const Sandbox *sb) {
        const char *sid = tag_value(sb, MANAGER_SESSION_TAG_PREFIX);
        Session *s = sid ? hashmap_get(&r->manager->sessions_by_id, sid) : NULL;

        if (hashmap_get(&r->retries, sb->sandbox_id))
                return;
        r->stats.reaped++;
        log_full(LOG_LEVEL_INFO, sid, sb->sandbox_id, "orphan: %s; stopping it",
                 !sid ? "created by this host's daemon without a session tag" :
                 s && !s->closing ? "its session does not track it" : "its session is closed");
        reaper_stop_sandbox(r, sb->sandbox_id, sid, NULL);
}

static void reconcile_one(Reaper *r, const Sandbox *sb) {
        Manager *m = r->manager;
        const char *hid;
        Handle *h;

        if (!sb->sandbox_id || !*sb->sandbox_id || !sb->status || backend_terminal(sb->status->state))
                return;
        h = hashmap_get(&m->handles_by_sandbox, sb->sandbox_id);
        if (h) {
                h->seen_pass = r->pass_no;
                h->unverified = false;
                handle_apply(h, sb, false);
                check_lifetime(r, h);
                return;
        }
        hid = tag_value(sb, MANAGER_HANDLE_TAG_PREFIX);
        h = hid ? hashmap_get(&m->handles_by_id, hid) : NULL;
        if (h && h->create_call)
                return;         /* its create has not answered yet */
        if (h && !h->sandbox_id && !h->cancelled) {
                h->seen_pass = r->pass_no;
                r->stats.resolved++;
                handle_take_sandbox(h, sb);
                check_lifetime(r, h);
                return;
        }
        /* A sandbox stopping already is on its way out. */
        if (sb->status->state == BSTATE(TERMINATING))
                return;
        reap(r, sb);
}

typedef struct Verify {
        Reaper *reaper;
        Handle *handle;
} Verify;

static void verify_done(void *userdata, const Status *st, ProtobufCMessage *reply) {
        Verify *v = userdata;
        Handle *h = v->handle;

        if (!v->reaper->closed && h->unverified) {
                if (status_ok(st)) {
                        h->unverified = false;
                        handle_apply(h, (Sandbox *)reply, false);
                } else if (st->code == GRPC_STATUS_NOT_FOUND) {
                        h->unverified = false;
                        handle_apply_gone(h, "not found on the backend after the daemon restarted");
                }
        }
        if (reply)
                protobuf_c_message_free_unpacked(reply, NULL);
        handle_unref(h);
        free(v);
}

/*
 * Live handles the listing did not show (restored ones, and sandboxes that
 * ended with nobody waiting on them) are asked for one by one, so a slot
 * admission counts is not held by a sandbox that is gone.
 */
static void verify_unseen(Reaper *r) {
        HashmapIter it = HASHMAP_ITER_INIT;
        Handle *h;

        while ((h = hashmap_next(&r->manager->handles_by_id, &it))) {
                Coreweave__Sandbox__V1__GetSandboxRequest req = COREWEAVE__SANDBOX__V1__GET_SANDBOX_REQUEST__INIT;
                Verify *v;

                if (h->sandbox_id && !handle_is_terminal(h) && h->seen_pass != r->pass_no)
                        h->unverified = true;
                if (!h->unverified || !h->sandbox_id || h->polling)
                        continue;
                v = malloc(sizeof(*v));
                if (!v)
                        abort();
                *v = (Verify) { .reaper = r, .handle = handle_ref(h) };
                req.sandbox_id = h->sandbox_id;
                (void)backend_call(r->manager->backend, BACKEND_GET_SANDBOX, &req.base, REAPER_CALL_TIMEOUT_MS,
                                   verify_done, v);
        }
}

static void pass_due(uv_timer_t *t) {
        pass_start(container_of(t, Reaper, pass_timer));
}

static void pass_end(Reaper *r, bool ok) {
        r->passing = false;
        free(r->page_token);
        r->page_token = NULL;
        r->last_pass_ms = manager_now_ms(r->manager);
        if (ok) {
                r->stats.passes++;
                verify_unseen(r);
        } else
                r->stats.pass_failures++;
        if (!r->first_done) {
                r->first_done = true;
                if (r->reconciled)
                        r->reconciled(r->reconciled_userdata);
        }
        if (!r->closed)
                uv_timer_start(&r->pass_timer, pass_due, r->manager->config->reap_interval_seconds * 1000, 0);
}

static void list_page(Reaper *r);

static void list_done(void *userdata, const Status *st, ProtobufCMessage *reply) {
        Reaper *r = userdata;
        Coreweave__Sandbox__V1__ListSandboxesResponse *resp = (Coreweave__Sandbox__V1__ListSandboxesResponse *)reply;

        if (r->closed) {
                /* nothing to do */
        } else if (!status_ok(st)) {
                log_warning("reconcile: cannot list this host's sandboxes: %s", st->message);
                pass_end(r, false);
        } else {
                for (size_t i = 0; i < resp->n_sandboxes; i++)
                        reconcile_one(r, resp->sandboxes[i]);
                free(r->page_token);
                r->page_token = NULL;
                if (resp->next_page_token && *resp->next_page_token && ++r->pages < REAPER_MAX_PAGES) {
                        r->page_token = strdup(resp->next_page_token);
                        if (!r->page_token)
                                abort();
                        list_page(r);
                } else
                        pass_end(r, true);
        }
        if (reply)
                protobuf_c_message_free_unpacked(reply, NULL);
}

static void list_page(Reaper *r) {
        Coreweave__Sandbox__V1__ListSandboxesRequest req = COREWEAVE__SANDBOX__V1__LIST_SANDBOXES_REQUEST__INIT;
        char *tags[] = { r->manager->host_tag };

        req.tags = tags;
        req.n_tags = 1;
        req.page_size = REAPER_PAGE_SIZE;
        req.page_token = r->page_token ? r->page_token : (char *)"";
        (void)backend_call(r->manager->backend, BACKEND_LIST_SANDBOXES, &req.base, REAPER_CALL_TIMEOUT_MS,
                           list_done, r);
}

static void pass_start(Reaper *r) {
        if (r->passing || r->closed)
                return;
        r->passing = true;
        r->pages = 0;
        r->pass_no++;
        list_page(r);
}

void reaper_pass_soon(Reaper *r) {
        if (r->passing || r->closed || !r->first_done ||
            manager_now_ms(r->manager) < r->last_pass_ms + PASS_SOON_MIN_MS)
                return;
        uv_timer_start(&r->pass_timer, pass_due, 0, 0);
}

void reaper_start(Reaper *r, void (*reconciled)(void *userdata), void *userdata) {
        r->reconciled = reconciled;
        r->reconciled_userdata = userdata;
        pass_start(r);
}

/* ---- close -------------------------------------------------------------------------------- */

typedef struct CloseWait {
        void (*done)(void *userdata);
        void *userdata;
        unsigned pending;
} CloseWait;

static void timer_closed(uv_handle_t *h) {
        CloseWait *w = h->data;

        if (--w->pending == 0) {
                if (w->done)
                        w->done(w->userdata);
                free(w);
        }
}

void reaper_close(Reaper *r, void (*done)(void *userdata), void *userdata) {
        HashmapIter it = HASHMAP_ITER_INIT;
        CloseWait *w = malloc(sizeof(*w));
        StopRetry *e;

        if (!w)
                abort();
        *w = (CloseWait) { .done = done, .userdata = userdata, .pending = 2 };
        r->closed = true;
        if (hashmap_size(&r->retries) > 0)
                log_notice("%zu sandbox(es) still to stop at shutdown; the next start reaps them",
                           hashmap_size(&r->retries));
        while ((e = hashmap_next(&r->retries, &it))) {
                (void)hashmap_remove(&r->retries, e->sandbox_id);
                if (e->in_flight)
                        e->abandoned = true;
                else
                        retry_free(e);
        }
        hashmap_deinit(&r->retries);
        free(r->page_token);
        r->page_token = NULL;
        r->pass_timer.data = r->retry_timer.data = w;
        uv_close((uv_handle_t *)&r->pass_timer, timer_closed);
        uv_close((uv_handle_t *)&r->retry_timer, timer_closed);
}
