/*
 * Session: attach, detach, linger and close (see session.h).
 *
 * A session and a connection know each other both ways: the session lists
 * the connections attached to it, and each connection's ConnState lists its
 * sessions, so whichever goes first can unlink itself from the other.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "handle.h"
#include "log.h"
#include "merge.h"
#include "persist.h"
#include "session.h"

#define SESSION_NAME_MAX        128
#define STOP_GRACE_DEFAULT_S    10.0

typedef struct CloseWaiter {
        struct CloseWaiter *next;
        SessionClosedFn fn;
        void *userdata;
} CloseWaiter;

struct SessionCloser {
        CloseWaiter *waiters;
        unsigned pending;
        unsigned stopped;
        Status *failures;
        char **failed_ids;
        unsigned n_failures;
};

/* ---- connections ------------------------------------------------------------------- */

ConnState *conn_state(Conn *conn) {
        ConnState *cs = conn_get_data(conn);

        if (!cs) {
                cs = calloc(1, sizeof(*cs));
                if (!cs)
                        abort();
                conn_set_data(conn, cs);
        }
        return cs;
}

static bool ptr_remove(void **array, unsigned *n, const void *p) {
        for (unsigned i = 0; i < *n; i++)
                if (array[i] == p) {
                        array[i] = array[--*n];
                        return true;
                }
        return false;
}

static bool ptr_add(void ***array, unsigned *n, void *p) {
        void **a;

        for (unsigned i = 0; i < *n; i++)
                if ((*array)[i] == p)
                        return false;
        a = reallocarray(*array, *n + 1, sizeof(void *));
        if (!a)
                abort();
        a[(*n)++] = p;
        *array = a;
        return true;
}

static void session_linger(Session *s);

static void link_conn(Session *s, Conn *conn) {
        ConnState *cs = conn_state(conn);

        if (ptr_add((void ***)&s->conns, &s->connections, conn))
                (void)ptr_add((void ***)&cs->sessions, &cs->n_sessions, s);
        if (s->linger_armed) {
                uv_timer_stop(&s->linger_timer);
                s->linger_armed = false;
        }
}

static void unlink_conn(Session *s, Conn *conn) {
        ConnState *cs = conn_get_data(conn);

        if (!ptr_remove((void **)s->conns, &s->connections, conn))
                return;
        if (cs)
                (void)ptr_remove((void **)cs->sessions, &cs->n_sessions, s);
}

/* ---- lifetime ---------------------------------------------------------------------- */

static void session_freed(uv_handle_t *t) {
        Session *s = container_of((uv_timer_t *)t, Session, linger_timer);

        merge_defaults_free(s->defaults);
        sdk_metrics_reset(&s->metrics);
        free(s->conns);
        free(s->tag);
        free(s->name);
        free(s->id);
        free(s);
}

/* Unlink from everything and free once the timer has closed. Handles left are untracked. */
static void session_free(Session *s) {
        Manager *m = s->manager;

        while (s->connections > 0)
                unlink_conn(s, s->conns[0]);
        while (s->handles)
                handle_untrack(s->handles);
        if (hashmap_get(&m->sessions_by_name, s->name) == s)
                (void)hashmap_remove(&m->sessions_by_name, s->name);
        (void)hashmap_remove(&m->sessions_by_id, s->id);
        uv_close((uv_handle_t *)&s->linger_timer, session_freed);
}

static grpc_status_code check_name(const char *name, Status *st) {
        size_t n = strlen(name);

        if (n == 0 || n > SESSION_NAME_MAX)
                return status_set(st, GRPC_STATUS_INVALID_ARGUMENT, "name: must be 1-%d characters", SESSION_NAME_MAX);
        for (size_t i = 0; i < n; i++)
                if (!isgraph((unsigned char)name[i]) && name[i] != ' ')
                        return status_set(st, GRPC_STATUS_INVALID_ARGUMENT, "name: only printable characters");
        return GRPC_STATUS_OK;
}

/* Allocate @s's fields from what is known; the caller has validated them. */
static Session *session_alloc(Manager *m, const char *id, const char *name, uid_t owner, int32_t linger_s,
                              int32_t max_lifetime_s, Cwsandboxd__V1__SandboxDefaults *defaults,
                              const SessionLimits *limits) {
        Session *s = calloc(1, sizeof(*s));

        if (!s)
                abort();
        s->manager = m;
        s->owner = owner;
        s->id = id ? strdup(id) : manager_new_id(m, "s-");
        s->name = strdup(name);
        s->linger_s = linger_s;
        s->max_lifetime_s = max_lifetime_s;
        s->defaults = defaults;
        s->created_ms = manager_wall_ms();
        admission_scope_init(&m->admission, &s->admission, limits->max_sandboxes, limits->max_creates_per_second);
        sdk_metrics_init(&s->metrics);
        if (!s->id || !s->name || asprintf(&s->tag, MANAGER_SESSION_TAG_PREFIX "%s", s->id) < 0)
                abort();
        uv_timer_init(m->loop, &s->linger_timer);
        if (hashmap_put(&m->sessions_by_id, s->id, s) < 0 || hashmap_put(&m->sessions_by_name, s->name, s) < 0)
                abort();
        return s;
}

/*
 * A session's admission limits: its own when given, else the daemon's
 * session_max_*; its own may be lower than those, not higher.
 */
static grpc_status_code session_limits(Manager *m, const Cwsandboxd__V1__AttachSessionRequest *req, Status *st,
                                       SessionLimits *ret) {
        uint64_t cap_alive = m->config->session_max_sandboxes;
        double cap_rate = m->config->session_max_creates_per_second;
        double rate = req->max_creates_per_second;

        if (!(rate >= 0) || rate > CONFIG_RATE_MAX)
                return status_set(st, GRPC_STATUS_INVALID_ARGUMENT,
                                  "max_creates_per_second: must be 0 (the daemon's) to %d", CONFIG_RATE_MAX);
        if (cap_alive > 0 && req->max_sandboxes > cap_alive)
                return status_set(st, GRPC_STATUS_INVALID_ARGUMENT,
                                  "max_sandboxes: %u is above the daemon's limit per session (%" PRIu64 ")",
                                  req->max_sandboxes, cap_alive);
        if (cap_rate > 0 && rate > cap_rate)
                return status_set(st, GRPC_STATUS_INVALID_ARGUMENT,
                                  "max_creates_per_second: %g is above the daemon's limit per session (%g)",
                                  rate, cap_rate);
        ret->max_sandboxes = req->max_sandboxes ? req->max_sandboxes : (uint32_t)cap_alive;
        ret->max_creates_per_second = rate > 0 ? rate : cap_rate;
        return GRPC_STATUS_OK;
}

static grpc_status_code session_new(Manager *m, const Cwsandboxd__V1__AttachSessionRequest *req, uid_t owner,
                                    Status *st, Session **ret) {
        _cleanup_free_ char *error = NULL;
        Cwsandboxd__V1__SandboxDefaults *defaults;
        SessionLimits limits;
        Session *s;
        int r;

        if (req->has_linger && req->linger_seconds < -1)
                return status_set(st, GRPC_STATUS_INVALID_ARGUMENT, "linger_seconds: must be -1 (never), 0 or more");
        if (req->max_lifetime_seconds < 0)
                return status_set(st, GRPC_STATUS_INVALID_ARGUMENT, "max_lifetime_seconds: must be 0 (none) or more");
        if (session_limits(m, req, st, &limits) != GRPC_STATUS_OK)
                return st->code;
        r = merge_defaults_new(req->defaults, &defaults, &error);
        if (r == MERGE_E_INVALID)
                return status_set(st, GRPC_STATUS_INVALID_ARGUMENT, "defaults: %s", error ? error : "invalid");
        if (r != 0)
                return status_set(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        s = session_alloc(m, NULL, req->name, owner,
                          req->has_linger ? req->linger_seconds : (int32_t)m->config->default_linger_seconds,
                          req->max_lifetime_seconds, defaults, &limits);
        log_full(LOG_LEVEL_INFO, s->id, NULL, "session '%s' created by uid %u (linger %d s)",
                 s->name, (unsigned)owner, (int)s->linger_s);
        persist_session(s);
        *ret = s;
        return GRPC_STATUS_OK;
}

Session *session_restore(Manager *m, const Cwsandboxd__V1__LedgerSession *rec) {
        _cleanup_free_ char *error = NULL;
        Cwsandboxd__V1__SandboxDefaults *defaults;
        SessionLimits limits = {
                .max_sandboxes = rec->max_sandboxes,
                .max_creates_per_second = rec->max_creates_per_second,
        };
        Session *s;

        if (!*rec->id || check_name(rec->name, &(Status) { 0 }) != GRPC_STATUS_OK ||
            hashmap_get(&m->sessions_by_id, rec->id) || hashmap_get(&m->sessions_by_name, rec->name) ||
            merge_defaults_new(rec->defaults, &defaults, &error) != 0) {
                log_full(LOG_LEVEL_WARNING, rec->id, NULL, "ledger: session '%s' cannot be restored; its sandboxes "
                         "will be reaped", rec->name);
                return NULL;
        }
        s = session_alloc(m, rec->id, rec->name, (uid_t)rec->owner_uid, rec->linger_seconds,
                          rec->max_lifetime_seconds, defaults, &limits);
        s->created_ms = rec->created_ms;
        if (rec->metrics && sdk_metrics_from_record(&s->metrics, rec->metrics) < 0)
                log_full(LOG_LEVEL_WARNING, s->id, NULL, "ledger: out of memory restoring the session's metrics");
        log_full(LOG_LEVEL_INFO, s->id, NULL, "session '%s' of uid %u restored", s->name, (unsigned)s->owner);
        return s;
}

int session_record(const Session *s, Cwsandboxd__V1__LedgerSession *out,
                   Cwsandboxd__V1__LedgerSdkMetrics *metrics) {
        cwsandboxd__v1__ledger_session__init(out);
        out->max_sandboxes = s->admission.max_alive;
        out->max_creates_per_second = s->admission.bucket.rate;
        if (metrics) {
                if (sdk_metrics_to_record(&s->metrics, metrics) < 0)
                        return -ENOMEM;
                out->metrics = metrics;
        }
        out->id = s->id;
        out->name = s->name;
        out->owner_uid = (uint32_t)s->owner;
        out->defaults = s->defaults;
        out->linger_seconds = s->linger_s;
        out->max_lifetime_seconds = s->max_lifetime_s;
        out->created_ms = s->created_ms;
        return 0;
}

grpc_status_code session_attach(Manager *m, Conn *conn, const Cwsandboxd__V1__AttachSessionRequest *req,
                                Status *st, Session **ret, bool *ret_created) {
        uid_t uid = conn_peer(conn)->uid;
        Session *s;
        bool created = false;

        if (check_name(req->name, st) != GRPC_STATUS_OK)
                return st->code;
        s = hashmap_get(&m->sessions_by_name, req->name);
        if (s && !manager_may_access(uid, s->owner))
                return status_set(st, GRPC_STATUS_PERMISSION_DENIED,
                                  "session '%s' belongs to another user", req->name);
        if (!s) {
                if (session_new(m, req, uid, st, &s) != GRPC_STATUS_OK)
                        return st->code;
                created = true;
        }
        link_conn(s, conn);
        log_full(LOG_LEVEL_DEBUG, s->id, NULL, "connection %llu (pid %d) attached",
                 (unsigned long long)conn_id(conn), (int)conn_peer(conn)->pid);
        *ret = s;
        *ret_created = created;
        return GRPC_STATUS_OK;
}

static void linger_expired(uv_timer_t *t) {
        Session *s = container_of(t, Session, linger_timer);

        s->linger_armed = false;
        log_full(LOG_LEVEL_INFO, s->id, NULL, "no connection for %d s: closing", (int)s->linger_s);
        session_close(s, NULL, NULL);
}

static void session_linger(Session *s) {
        /* A daemon that is shutting down leaves sessions and sandboxes as they are. */
        if (s->closing || s->connections > 0 || s->linger_s < 0 || s->manager->stopping)
                return;
        if (s->linger_s == 0) {
                log_full(LOG_LEVEL_INFO, s->id, NULL, "last connection left: closing");
                session_close(s, NULL, NULL);
                return;
        }
        s->linger_armed = true;
        uv_timer_start(&s->linger_timer, linger_expired, (uint64_t)s->linger_s * 1000, 0);
}

void session_detach(Session *s, Conn *conn) {
        unlink_conn(s, conn);
        session_linger(s);
}

/* ---- close ------------------------------------------------------------------------- */

static void close_finish(Session *s) {
        SessionCloser *c = s->closer;
        CloseWaiter *w, *next;
        SdkMetricValue metrics[SDK_METRICS_MAX];
        SessionCloseResult result = {
                .stopped = c->stopped,
                .failures = c->failures,
                .failed_ids = (const char *const *)c->failed_ids,
                .n_failures = c->n_failures,
                .metrics = metrics,
                .n_metrics = sdk_metrics_values(&s->metrics, metrics),
        };
        char summary[512];

        log_full(c->n_failures && !s->manager->stopping ? LOG_LEVEL_WARNING : LOG_LEVEL_INFO, s->id, NULL,
                 "session '%s' closed: %u sandbox(es) stopped, %u failed%s", s->name, c->stopped, c->n_failures,
                 c->n_failures ? " (stops are retried until the sandboxes are gone)" : "");
        if (sdk_metrics_any(&s->metrics)) {
                sdk_metrics_summary(metrics, result.n_metrics, summary, sizeof(summary));
                log_full(LOG_LEVEL_INFO, s->id, NULL, "session '%s' final metrics: %s", s->name, summary);
        }
        for (w = c->waiters; w; w = next) {
                next = w->next;
                if (w->fn)
                        w->fn(w->userdata, &result);
                free(w);
        }
        for (unsigned i = 0; i < c->n_failures; i++)
                free(c->failed_ids[i]);
        free(c->failed_ids);
        free(c->failures);
        free(c);
        s->closer = NULL;
        session_free(s);
}

typedef struct CloseStop {
        Session *session;
        Handle *handle;
} CloseStop;

static void close_stopped(void *userdata, Handle *h, const Status *st) {
        CloseStop *cs = userdata;
        Session *s = cs->session;
        SessionCloser *c = s->closer;

        if (status_ok(st))
                c->stopped++;
        else {
                unsigned n = c->n_failures;

                c->failures = reallocarray(c->failures, n + 1, sizeof(Status));
                c->failed_ids = reallocarray(c->failed_ids, n + 1, sizeof(char *));
                if (!c->failures || !c->failed_ids)
                        abort();
                c->failures[n] = *st;
                c->failed_ids[n] = strdup(cs->handle->sandbox_id ? cs->handle->sandbox_id : cs->handle->id);
                c->n_failures++;
                /* The reaper logs it and retries; the close's summary counts it. */
                if (cs->handle->sandbox_id)
                        reaper_stop_sandbox(&s->manager->reaper, cs->handle->sandbox_id, s->id, st);
        }
        handle_unref(h);
        handle_unref(cs->handle);
        free(cs);
        if (--c->pending == 0)
                close_finish(s);
}

void session_close(Session *s, SessionClosedFn done, void *userdata) {
        Manager *m = s->manager;
        CloseWaiter *w = calloc(1, sizeof(*w));
        Handle **snapshot;
        unsigned n = 0;

        if (!w)
                abort();
        *w = (CloseWaiter) { .fn = done, .userdata = userdata };
        if (s->closing) {
                w->next = s->closer->waiters;
                s->closer->waiters = w;
                return;
        }
        s->closing = true;
        persist_session_gone(s);
        s->closer = calloc(1, sizeof(*s->closer));
        if (!s->closer)
                abort();
        s->closer->waiters = w;
        if (hashmap_get(&m->sessions_by_name, s->name) == s)
                (void)hashmap_remove(&m->sessions_by_name, s->name);
        if (s->linger_armed) {
                uv_timer_stop(&s->linger_timer);
                s->linger_armed = false;
        }

        /* Stops may finish at once and untrack their handle: walk a snapshot. */
        snapshot = calloc(s->n_handles + 1, sizeof(Handle *));
        if (!snapshot)
                abort();
        for (Handle *h = s->handles; h; h = h->session_next)
                snapshot[n++] = handle_ref(h);
        s->closer->pending = n + 1;
        for (unsigned i = 0; i < n; i++) {
                CloseStop *cs = malloc(sizeof(*cs));

                if (!cs)
                        abort();
                *cs = (CloseStop) { .session = s, .handle = snapshot[i] };
                handle_stop(snapshot[i], STOP_GRACE_DEFAULT_S, false, close_stopped, cs);
        }
        free(snapshot);
        if (--s->closer->pending == 0)
                close_finish(s);
}

/* ---- lookup and handles ----------------------------------------------------------- */

Session *session_lookup(Manager *m, const Conn *conn, const char *id, Status *st) {
        Session *s = hashmap_get(&m->sessions_by_id, id);

        if (!s) {
                status_set(st, GRPC_STATUS_NOT_FOUND, "session %s not found", id);
                return NULL;
        }
        if (!manager_may_access(conn_peer(conn)->uid, s->owner)) {
                status_set(st, GRPC_STATUS_PERMISSION_DENIED, "session %s belongs to another user", id);
                return NULL;
        }
        return s;
}

void session_to_pb(const Session *s, Cwsandboxd__V1__Session *out) {
        cwsandboxd__v1__session__init(out);
        out->session_id = s->id;
        out->name = s->name;
        out->owner_uid = (uint32_t)s->owner;
        out->defaults = s->defaults;
        out->linger_seconds = s->linger_s;
        out->sandbox_count = s->n_handles;
        out->connections = s->connections;
        out->max_sandboxes = s->admission.max_alive;
        out->max_creates_per_second = s->admission.bucket.rate;
}

void session_add_handle(Session *s, Handle *h) {
        Manager *m = s->manager;

        h->session = s;
        h->session_prev = NULL;
        h->session_next = s->handles;
        if (s->handles)
                s->handles->session_prev = h;
        s->handles = h;
        s->n_handles++;
        handle_ref(h);
        (void)hashmap_put(&m->handles_by_id, h->id, h);
        if (h->sandbox_id)
                (void)hashmap_put(&m->handles_by_sandbox, h->sandbox_id, h);
        /* An adopted or restored sandbox is alive without a grant: it counts all the same. */
        if (h->sandbox_id && !handle_is_terminal(h))
                admission_hold(&m->admission, &h->admission, &s->admission);
}

void session_remove_handle(Session *s, Handle *h) {
        if (h->session_prev)
                h->session_prev->session_next = h->session_next;
        else
                s->handles = h->session_next;
        if (h->session_next)
                h->session_next->session_prev = h->session_prev;
        h->session_next = h->session_prev = NULL;
        h->session = NULL;
        admission_leave_scope(&s->manager->admission, &h->admission);
        s->n_handles--;
        handle_unref(h);
}

/* ---- connection gone --------------------------------------------------------------- */

static void conn_scope_stopped(void *userdata, Handle *h, const Status *st) {
        Handle *self = userdata;

        if (!status_ok(st) && self->sandbox_id)
                reaper_stop_sandbox(&self->manager->reaper, self->sandbox_id, NULL, st);
        handle_unref(h);
        handle_unref(self);
}

void session_conn_gone(Manager *m, Conn *conn) {
        ConnState *cs = conn_get_data(conn);

        if (!cs)
                return;
        while (cs->handles) {
                Handle *h = handle_ref(cs->handles);

                cs->handles = h->conn_next;
                if (cs->handles)
                        cs->handles->conn_prev = NULL;
                h->conn = NULL;
                h->conn_next = h->conn_prev = NULL;
                if (m->stopping) {
                        handle_unref(h);
                        continue;
                }
                log_full(LOG_LEVEL_INFO, h->session ? h->session->id : NULL, h->sandbox_id,
                         "creating connection closed: stopping connection-scoped sandbox %s", h->id);
                /* It belonged to the connection: it leaves the session now, its stop goes on. */
                handle_untrack(h);
                handle_stop(h, STOP_GRACE_DEFAULT_S, true, conn_scope_stopped, h);
        }
        while (cs->n_sessions > 0)
                session_detach(cs->sessions[0], conn);
        free(cs->sessions);
        free(cs);
        conn_set_data(conn, NULL);
}

void session_linger_idle(Manager *m) {
        HashmapIter it = HASHMAP_ITER_INIT;
        Session *s;

        /* Closing one removes it from the map: collect first. */
        _cleanup_free_ Session **v = calloc(hashmap_size(&m->sessions_by_id) + 1, sizeof(Session *));
        size_t n = 0;

        if (!v)
                abort();
        while ((s = hashmap_next(&m->sessions_by_id, &it)))
                if (!s->closing && s->connections == 0 && !s->linger_armed)
                        v[n++] = s;
        for (size_t i = 0; i < n; i++)
                session_linger(v[i]);
}

typedef struct CloseAll {
        unsigned pending;
        void (*done)(void *userdata);
        void *userdata;
} CloseAll;

static void close_all_one(void *userdata, const SessionCloseResult *result) {
        CloseAll *ca = userdata;

        (void)result;
        if (--ca->pending == 0) {
                ca->done(ca->userdata);
                free(ca);
        }
}

void session_close_all(Manager *m, void (*done)(void *userdata), void *userdata) {
        HashmapIter it = HASHMAP_ITER_INIT;
        CloseAll *ca = malloc(sizeof(*ca));
        _cleanup_free_ Session **v = calloc(hashmap_size(&m->sessions_by_id) + 1, sizeof(Session *));
        Session *s;
        size_t n = 0;

        if (!ca || !v)
                abort();
        *ca = (CloseAll) { .pending = 1, .done = done, .userdata = userdata };
        while ((s = hashmap_next(&m->sessions_by_id, &it)))
                v[n++] = s;
        ca->pending += (unsigned)n;
        for (size_t i = 0; i < n; i++)
                session_close(v[i], close_all_one, ca);
        close_all_one(ca, NULL);
}

void session_free_all(Manager *m) {
        HashmapIter it = HASHMAP_ITER_INIT;
        Session *s;

        while ((s = hashmap_next(&m->sessions_by_id, &it))) {
                /*
                 * A closing session's stops end when the backend cancels
                 * them; then it tells its waiters (a client's call is only
                 * freed by then) and frees itself.
                 */
                if (s->closer)
                        continue;
                if (s->linger_armed)
                        uv_timer_stop(&s->linger_timer);
                session_free(s);
        }
}
