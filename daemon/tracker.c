/*
 * Tracker: the shared status poller (see tracker.h).
 *
 * A tick is one round of calls: a paginated listing or a few GetSandbox
 * calls, all in flight together. The next tick is scheduled when the last
 * call of this one has answered, so ticks never overlap. Handles may stop
 * being watched at any time (their waiters finish or time out); every reply
 * checks that its handle is still watched before applying anything.
 */
#include <stdlib.h>
#include <string.h>

#include "handle.h"
#include "log.h"
#include "session.h"
#include "tracker.h"

typedef struct TrackerCall {
        Tracker *tracker;
        Handle *handle;         /* GetSandbox: the handle; NULL for a listing */
} TrackerCall;

static void tracker_tick(uv_timer_t *timer);

void tracker_init(Tracker *t, Manager *m) {
        *t = (Tracker) { .manager = m };
        uv_timer_init(m->loop, &t->timer);
}

static void tracker_schedule(Tracker *t, uint64_t delay_ms) {
        if (t->closed || t->tick_running)
                return;
        uv_timer_start(&t->timer, tracker_tick, delay_ms, 0);
}

void tracker_watch(Tracker *t, Handle *h) {
        if (t->closed) {
                Status st;

                status_set(&st, GRPC_STATUS_UNAVAILABLE, "the daemon is shutting down");
                handle_fail_waiters(h, &st);
                return;
        }
        if (h->tracked)
                return;
        h->tracked = true;
        h->track_prev = NULL;
        h->track_next = t->watched;
        if (t->watched)
                t->watched->track_prev = h;
        t->watched = h;
        t->n_watched++;
        handle_ref(h);
        retry_budget_init(&h->budget, handle_poll_retry_budget_s(h));
        /* Something new to wait for: poll now, then from the shortest interval. */
        t->interval_ms = 0;
        tracker_schedule(t, 0);
}

void tracker_unwatch(Tracker *t, Handle *h) {
        if (!h->tracked)
                return;
        if (h->track_prev)
                h->track_prev->track_next = h->track_next;
        else
                t->watched = h->track_next;
        if (h->track_next)
                h->track_next->track_prev = h->track_prev;
        h->track_next = h->track_prev = NULL;
        h->tracked = false;
        t->n_watched--;
        handle_unref(h);
}

/* The watched handles, each with a reference: replies may unwatch any of them. */
static Handle **watched_snapshot(Tracker *t, unsigned *ret_n) {
        Handle **v = calloc(t->n_watched + 1, sizeof(Handle *));
        unsigned n = 0;

        if (!v)
                abort();
        for (Handle *h = t->watched; h; h = h->track_next)
                v[n++] = handle_ref(h);
        *ret_n = n;
        return v;
}

static void snapshot_free(Handle **v, unsigned n) {
        for (unsigned i = 0; i < n; i++)
                handle_unref(v[i]);
        free(v);
}

/* ---- outcome of a poll -------------------------------------------------------------- */

static void poll_failed(Tracker *t, Handle *h, const Status *st) {
        uint64_t delay;

        if (retry_classify(st->code, st->reason) == RETRY_FATAL ||
            retry_budget_next_delay(&h->budget, manager_now_ms(t->manager), st->retry_delay_ms, NULL, NULL,
                                    &delay) != 0) {
                Status err = *st;

                status_prefix(&err, "poll sandbox %s", h->sandbox_id);
                log_full(LOG_LEVEL_WARNING, h->session ? h->session->id : NULL, h->sandbox_id, "%s", err.message);
                handle_fail_waiters(h, &err);
                return;
        }
        log_full(LOG_LEVEL_DEBUG, h->session ? h->session->id : NULL, h->sandbox_id,
                 "poll failed (%s), retrying in %llu ms", st->message, (unsigned long long)delay);
        if (t->failure_delay_ms == 0 || delay < t->failure_delay_ms)
                t->failure_delay_ms = delay;
}

static void poll_succeeded(Handle *h, const Coreweave__Sandbox__V1__Sandbox *sb) {
        retry_budget_init(&h->budget, handle_poll_retry_budget_s(h));
        handle_apply(h, sb, true);
}

static void tick_call_done(Tracker *t) {
        uint64_t delay;

        if (--t->calls_in_flight > 0)
                return;
        t->tick_running = false;
        if (t->n_watched == 0 || t->closed)
                return;
        if (t->failure_delay_ms > 0)
                delay = t->failure_delay_ms;
        else
                delay = t->interval_ms = poll_interval_next(t->interval_ms);
        t->failure_delay_ms = 0;
        tracker_schedule(t, delay);
}

/* ---- GetSandbox ---------------------------------------------------------------------- */

static void get_done(void *userdata, const Status *st, ProtobufCMessage *reply) {
        TrackerCall *c = userdata;
        Tracker *t = c->tracker;
        Handle *h = c->handle;

        h->polling = false;
        if (h->tracked && !t->closed) {
                if (status_ok(st))
                        poll_succeeded(h, (Coreweave__Sandbox__V1__Sandbox *)reply);
                else if (st->code == GRPC_STATUS_NOT_FOUND && h->stop_owned)
                        handle_apply_gone(h, "deleted");
                else
                        poll_failed(t, h, st);
        }
        if (reply)
                protobuf_c_message_free_unpacked(reply, NULL);
        handle_unref(h);
        free(c);
        tick_call_done(t);
}

static void get_start(Tracker *t, Handle *h) {
        Coreweave__Sandbox__V1__GetSandboxRequest req = COREWEAVE__SANDBOX__V1__GET_SANDBOX_REQUEST__INIT;
        TrackerCall *c;

        if (h->polling || !h->sandbox_id)
                return;
        c = malloc(sizeof(*c));
        if (!c)
                abort();
        *c = (TrackerCall) { .tracker = t, .handle = handle_ref(h) };
        h->polling = true;
        req.sandbox_id = h->sandbox_id;
        t->calls_in_flight++;
        t->get_calls++;
        (void)backend_call(t->manager->backend, BACKEND_GET_SANDBOX, &req.base,
                           (int64_t)retry_rpc_timeout_ms(&h->budget, manager_now_ms(t->manager),
                                                         handle_poll_rpc_timeout_s(h)),
                           get_done, c);
}

/* ---- ListSandboxes ------------------------------------------------------------------- */

static void list_page(Tracker *t);

static void list_missing(Tracker *t) {
        unsigned n;
        Handle **v = watched_snapshot(t, &n);

        /* Watched handles the listing did not show: ask for each. */
        for (unsigned i = 0; i < n; i++)
                if (v[i]->tracked && !v[i]->seen_in_tick)
                        get_start(t, v[i]);
        snapshot_free(v, n);
}

static void list_done(void *userdata, const Status *st, ProtobufCMessage *reply) {
        TrackerCall *c = userdata;
        Tracker *t = c->tracker;
        Coreweave__Sandbox__V1__ListSandboxesResponse *resp = (Coreweave__Sandbox__V1__ListSandboxesResponse *)reply;

        free(c);
        if (t->closed) {
                /* nothing to apply */
        } else if (!status_ok(st)) {
                unsigned n;
                Handle **v = watched_snapshot(t, &n);

                for (unsigned i = 0; i < n; i++)
                        if (v[i]->tracked && !v[i]->seen_in_tick)
                                poll_failed(t, v[i], st);
                snapshot_free(v, n);
        } else {
                for (size_t i = 0; i < resp->n_sandboxes; i++) {
                        Handle *h = hashmap_get(&t->manager->handles_by_sandbox, resp->sandboxes[i]->sandbox_id);

                        if (!h || !h->tracked)
                                continue;
                        h->seen_in_tick = true;
                        handle_ref(h);
                        poll_succeeded(h, resp->sandboxes[i]);
                        handle_unref(h);
                }
                free(t->page_token);
                t->page_token = NULL;
                /* The pages so far may have settled every watched handle: then stop listing. */
                if (resp->next_page_token && *resp->next_page_token && ++t->pages < TRACKER_MAX_PAGES &&
                    t->watched) {
                        t->page_token = strdup(resp->next_page_token);
                        if (!t->page_token)
                                abort();
                        list_page(t);
                } else
                        list_missing(t);
        }
        if (reply)
                protobuf_c_message_free_unpacked(reply, NULL);
        tick_call_done(t);
}

static void list_page(Tracker *t) {
        Coreweave__Sandbox__V1__ListSandboxesRequest req = COREWEAVE__SANDBOX__V1__LIST_SANDBOXES_REQUEST__INIT;
        char *tags[] = { t->manager->host_tag };
        TrackerCall *c = malloc(sizeof(*c));
        Handle *first = t->watched;

        if (!c)
                abort();
        *c = (TrackerCall) { .tracker = t };
        req.tags = tags;
        req.n_tags = 1;
        req.page_size = TRACKER_PAGE_SIZE;
        req.page_token = t->page_token ? t->page_token : (char *)"";
        req.show_terminated = t->list_terminated;
        t->calls_in_flight++;
        t->list_calls++;
        (void)backend_call(t->manager->backend, BACKEND_LIST_SANDBOXES, &req.base,
                           (int64_t)retry_rpc_timeout_ms(&first->budget, manager_now_ms(t->manager),
                                                         handle_poll_rpc_timeout_s(first)),
                           list_done, c);
}

/* ---- ticks ----------------------------------------------------------------------------- */

static void tracker_tick(uv_timer_t *timer) {
        Tracker *t = container_of(timer, Tracker, timer);
        unsigned n;
        Handle **v;

        if (t->n_watched == 0 || t->closed)
                return;
        t->ticks++;
        t->tick_running = true;
        t->calls_in_flight = 1;         /* held until every call of the tick is started */
        t->list_terminated = false;
        v = watched_snapshot(t, &n);
        for (unsigned i = 0; i < n; i++) {
                v[i]->seen_in_tick = false;
                if (handle_needs_terminal(v[i]))
                        t->list_terminated = true;
        }
        if (n > TRACKER_LIST_THRESHOLD) {
                t->pages = 0;
                free(t->page_token);
                t->page_token = NULL;
                list_page(t);
        } else
                for (unsigned i = 0; i < n; i++)
                        get_start(t, v[i]);
        snapshot_free(v, n);
        tick_call_done(t);
}

void tracker_close(Tracker *t, void (*done)(uv_handle_t *)) {
        unsigned n;
        Handle **v;
        Status st;

        status_set(&st, GRPC_STATUS_UNAVAILABLE, "the daemon is shutting down");
        v = watched_snapshot(t, &n);
        t->closed = true;
        for (unsigned i = 0; i < n; i++)
                handle_fail_waiters(v[i], &st);
        for (unsigned i = 0; i < n; i++)
                tracker_unwatch(t, v[i]);
        snapshot_free(v, n);
        free(t->page_token);
        t->page_token = NULL;
        uv_close((uv_handle_t *)&t->timer, done);
}
