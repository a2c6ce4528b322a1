/*
 * Handle: one sandbox as the daemon tracks it (see handle.h).
 *
 * Waiting: every wait is a HandleWaiter on the handle's list, with a timer
 * that is both its timeout and the way its callback is deferred, so a
 * callback never runs inside the call that caused it. After every change of
 * state the waiters are checked; those still waiting for something only the
 * backend can tell make the handle "watched" by the Tracker.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handle.h"
#include "log.h"
#include "merge.h"
#include "persist.h"
#include "session.h"

#define STATE(x) CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_##x
#define BSTATE(x) COREWEAVE__SANDBOX__V1__STATE__STATE_##x

#define STOP_DEADLINE_EXTRA_S   10      /* the SDK's ceil(grace) + 5 + 5 */

struct HandleWaiter {
        Handle *handle;
        HandleWaiter *next, *prev;
        HandleWaitFor what;
        HandleFn fn;
        void *userdata;
        uv_timer_t timer;
        Status result;
        bool finished;
};

/* A stop in progress; joiners share it. */
typedef struct StopJoiner {
        struct StopJoiner *next;
        HandleFn fn;
        void *userdata;
        bool missing_ok;
} StopJoiner;

struct HandleStop {
        Handle *handle;
        double grace_s;
        bool missing_ok;
        StopJoiner *joiners;
};

static void handle_check_waiters(Handle *h);
static void handle_start(Handle *h);

/* ---- lifetime ------------------------------------------------------------------------ */

static Handle *handle_alloc(Manager *m, Session *session) {
        Handle *h = calloc(1, sizeof(*h));

        if (!h)
                return NULL;
        h->manager = m;
        h->refs = 1;
        h->id = manager_new_id(m, "h-");
        h->state = STATE(UNSTARTED);
        h->owner = session ? session->owner : (uid_t)-1;
        h->created_ms = manager_wall_ms();
        if (!h->id) {
                free(h);
                return NULL;
        }
        return h;
}

static int copy_tags(Handle *h, char *const *tags, size_t n) {
        h->tags = calloc(n ? n : 1, sizeof(char *));
        if (!h->tags)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                h->tags[i] = strdup(tags[i]);
                if (!h->tags[i])
                        return -ENOMEM;
                h->n_tags++;
        }
        return 0;
}

static void handle_free(Handle *h) {
        admission_cancel(&h->manager->admission, &h->admission);
        admission_release(&h->manager->admission, &h->admission);
        merge_create_request_free(h->create_request);
        for (size_t i = 0; i < h->n_tags; i++)
                free(h->tags[i]);
        free(h->tags);
        free(h->state_reason);
        free(h->image);
        free(h->sandbox_id);
        free(h->id);
        free(h);
}

Handle *handle_ref(Handle *h) {
        h->refs++;
        return h;
}

Handle *handle_unref(Handle *h) {
        if (h && --h->refs == 0)
                handle_free(h);
        return NULL;
}

uid_t handle_owner_from_tags(char *const *tags, size_t n_tags) {
        size_t plen = strlen(MANAGER_UID_TAG_PREFIX);

        for (size_t i = 0; i < n_tags; i++) {
                char *end;
                unsigned long v;

                if (strncmp(tags[i], MANAGER_UID_TAG_PREFIX, plen) != 0)
                        continue;
                errno = 0;
                v = strtoul(tags[i] + plen, &end, 10);
                if (errno == 0 && *end == 0 && end != tags[i] + plen && v < (uid_t)-1)
                        return (uid_t)v;
        }
        return (uid_t)-1;
}

/* The frozen create request of @h: the session's defaults, @args, the daemon's tags. */
static grpc_status_code build_request(Handle *h, Session *s, const Cwsandboxd__V1__SandboxArgs *args, Status *st) {
        _cleanup_free_ char *request_id = NULL, *uid_tag = NULL, *handle_tag = NULL, *error = NULL;
        Manager *m = s->manager;
        int r;

        r = merge_args_validate(args, &error);
        if (r == 0) {
                request_id = manager_new_id(m, "");
                if (asprintf(&uid_tag, MANAGER_UID_TAG_PREFIX "%u", (unsigned)s->owner) < 0)
                        uid_tag = NULL;
                if (asprintf(&handle_tag, MANAGER_HANDLE_TAG_PREFIX "%s", h->id) < 0)
                        handle_tag = NULL;
                if (!request_id || !uid_tag || !handle_tag)
                        return status_set(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");

                const char *daemon_tags[] = { MANAGER_TAG, m->host_tag, s->tag, uid_tag, handle_tag };

                r = merge_build_create_request(s->defaults, args, daemon_tags, ELEMENTSOF(daemon_tags),
                                               request_id, &h->create_request, &error);
        }
        if (r == MERGE_E_INVALID)
                return status_set(st, GRPC_STATUS_INVALID_ARGUMENT, "%s", error ? error : "invalid sandbox arguments");
        if (r != 0)
                return status_set(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return GRPC_STATUS_OK;
}

static void link_conn(Handle *h, Conn *conn) {
        ConnState *cs = conn_state(conn);

        h->conn = conn;
        h->conn_next = cs->handles;
        if (cs->handles)
                cs->handles->conn_prev = h;
        cs->handles = h;
}

grpc_status_code handle_new_unstarted(Session *s, Conn *conn, const Cwsandboxd__V1__SandboxArgs *args,
                                      Cwsandboxd__V1__Scope scope, Status *st, Handle **ret) {
        Coreweave__Sandbox__V1__SandboxSpec *spec;
        Handle *h;

        h = handle_alloc(s->manager, s);
        if (!h)
                return status_set(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        if (build_request(h, s, args, st) != GRPC_STATUS_OK) {
                handle_free(h);
                return st->code;
        }
        spec = h->create_request->sandbox->spec;
        h->scope = scope;
        h->image = strdup(spec->containers[0]->image);
        if (!h->image || copy_tags(h, spec->tags, spec->n_tags) < 0) {
                handle_free(h);
                return status_set(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        }
        session_add_handle(s, h);
        if (scope == CWSANDBOXD__V1__SCOPE__SCOPE_CONNECTION && conn)
                link_conn(h, conn);
        h->refs--;      /* the session's reference is the only one */
        persist_handle(h);
        /* The SDK counts a requested sandbox, started or not. */
        sdk_metrics_created(&s->metrics);
        s->manager->metrics.sandboxes_requested++;
        *ret = h;
        return GRPC_STATUS_OK;
}

Handle *handle_new_from_backend(Manager *m, Session *session, const Coreweave__Sandbox__V1__Sandbox *sb) {
        Handle *h = handle_alloc(m, session);

        if (!h)
                return NULL;
        h->sandbox_id = strdup(sb->sandbox_id);
        if (!h->sandbox_id) {
                handle_free(h);
                return NULL;
        }
        if (sb->spec) {
                if (copy_tags(h, sb->spec->tags, sb->spec->n_tags) < 0) {
                        handle_free(h);
                        return NULL;
                }
                if (sb->spec->n_containers > 0 && sb->spec->containers[0]->image)
                        h->image = strdup(sb->spec->containers[0]->image);
        }
        h->owner = handle_owner_from_tags(h->tags, h->n_tags);
        if (session)
                h->owner = session->owner;
        /* As the SDK's from_id: no startup metric for a sandbox we did not start. */
        h->startup_recorded = true;
        handle_apply(h, sb, false);
        if (session) {
                session_add_handle(session, h);
                h->refs--;
                persist_handle(h);
        }
        return h;
}

Handle *handle_restore(Session *session, const Cwsandboxd__V1__LedgerHandle *rec) {
        Handle *h = handle_alloc(session->manager, session);

        if (!h)
                return NULL;
        free(h->id);
        h->id = strdup(rec->id);
        h->scope = rec->scope;
        h->created_ms = rec->created_ms;
        h->image = strdup(rec->image);
        if (!h->id || !h->image || copy_tags(h, rec->tags, rec->n_tags) < 0)
                goto fail;
        if (*rec->sandbox_id) {
                h->sandbox_id = strdup(rec->sandbox_id);
                if (!h->sandbox_id)
                        goto fail;
                /* As after a create: PENDING until the backend says more. */
                h->state = STATE(PENDING);
                h->unverified = true;
                h->startup_recorded = true;
        } else {
                h->create_request = coreweave__sandbox__v1__create_sandbox_request__unpack(
                        NULL, rec->create_request.len, rec->create_request.data);
                if (!h->create_request || !h->create_request->sandbox || !h->create_request->sandbox->spec) {
                        log_full(LOG_LEVEL_WARNING, session->id, NULL,
                                 "ledger: handle %s has no usable create request; dropped", rec->id);
                        goto fail;
                }
        }
        session_add_handle(session, h);
        h->refs--;
        return h;
fail:
        handle_free(h);
        return NULL;
}

void handle_take_sandbox(Handle *h, const Coreweave__Sandbox__V1__Sandbox *sb) {
        Manager *m = h->manager;
        const char *sid = h->session ? h->session->id : NULL;

        h->sandbox_id = strdup(sb->sandbox_id);
        if (!h->sandbox_id)
                abort();
        if (h->session && hashmap_put(&m->handles_by_sandbox, h->sandbox_id, h) < 0)
                log_full(LOG_LEVEL_WARNING, sid, h->sandbox_id, "sandbox id already tracked");
        h->create_request = merge_create_request_free(h->create_request);
        h->state = STATE(PENDING);
        h->startup_recorded = true;     /* its create time is not ours to measure */
        log_full(LOG_LEVEL_INFO, sid, h->sandbox_id, "found the sandbox of handle %s's interrupted create", h->id);
        if (h->session)
                admission_hold(&m->admission, &h->admission, &h->session->admission);
        persist_handle(h);
        handle_apply(h, sb, false);
}

int handle_record(const Handle *h, Cwsandboxd__V1__LedgerHandle *out) {
        cwsandboxd__v1__ledger_handle__init(out);
        out->id = h->id;
        out->session_id = h->session ? h->session->id : (char *)"";
        out->scope = h->scope;
        out->sandbox_id = h->sandbox_id ? h->sandbox_id : (char *)"";
        out->image = h->image ? h->image : (char *)"";
        out->tags = h->tags;
        out->n_tags = h->n_tags;
        out->created_ms = h->created_ms;
        if (h->create_request) {
                size_t n = protobuf_c_message_get_packed_size(&h->create_request->base);

                out->request_id = h->create_request->request_id;
                out->create_request.data = malloc(n ? n : 1);
                if (!out->create_request.data)
                        return -ENOMEM;
                out->create_request.len = protobuf_c_message_pack(&h->create_request->base,
                                                                  out->create_request.data);
        }
        return 0;
}

void handle_untrack(Handle *h) {
        Manager *m = h->manager;

        if (h->conn) {
                ConnState *cs = conn_state(h->conn);

                if (h->conn_prev)
                        h->conn_prev->conn_next = h->conn_next;
                else
                        cs->handles = h->conn_next;
                if (h->conn_next)
                        h->conn_next->conn_prev = h->conn_prev;
                h->conn = NULL;
                h->conn_next = h->conn_prev = NULL;
        }
        if (!h->session)
                return;
        persist_handle_gone(h);
        if (hashmap_get(&m->handles_by_id, h->id) == h)
                (void)hashmap_remove(&m->handles_by_id, h->id);
        if (h->sandbox_id && hashmap_get(&m->handles_by_sandbox, h->sandbox_id) == h)
                (void)hashmap_remove(&m->handles_by_sandbox, h->sandbox_id);
        session_remove_handle(h->session, h);   /* drops the session's reference */
}

/* ---- state --------------------------------------------------------------------------- */

const char *handle_state_name(SandboxState s) {
        const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&cwsandboxd__v1__sandbox_state__descriptor, s);

        return v ? v->name + strlen("SANDBOX_STATE_") : "UNKNOWN";
}

unsigned handle_state_slot(SandboxState s) {
        return s == STATE(UNSTARTED) || (unsigned)s >= HANDLE_STATE_SLOTS ? HANDLE_STATE_SLOTS - 1 : (unsigned)s;
}

SandboxState handle_slot_state(unsigned slot) {
        return slot == HANDLE_STATE_SLOTS - 1 ? STATE(UNSTARTED) : (SandboxState)slot;
}

bool handle_is_terminal(const Handle *h) {
        return h->state == STATE(COMPLETED) || h->state == STATE(FAILED) || h->state == STATE(TERMINATED);
}

static int64_t timestamp_ms(const Google__Protobuf__Timestamp *t) {
        return t ? t->seconds * 1000 + t->nanos / 1000000 : 0;
}

static void set_reason(Handle *h, const char *reason) {
        if (!reason || !*reason || (h->state_reason && streq(h->state_reason, reason)))
                return;
        free(h->state_reason);
        h->state_reason = strdup(reason);
}

/* The SDK's startup time: create sent to first RUNNING or PAUSED, for sandboxes a session created. */
static void record_startup(Handle *h) {
        uint64_t ms;

        if (h->startup_recorded || h->create_sent_ms == 0)
                return;
        h->startup_recorded = true;
        ms = manager_now_ms(h->manager) - h->create_sent_ms;
        log_full(LOG_LEVEL_DEBUG, h->session ? h->session->id : NULL, h->sandbox_id, "running after %" PRIu64 " ms", ms);
        histogram_observe(&h->manager->metrics.startup, (double)ms / 1000.0);
        if (h->session)
                sdk_metrics_startup(&h->session->metrics, (double)ms / 1000.0);
}

/* The SDK's guards on a state change (_apply_sandbox_info). */
static bool state_change_allowed(const Handle *h, SandboxState to) {
        if (handle_is_terminal(h) || h->cancelled)
                return false;
        if (h->state == STATE(TERMINATING) || h->stop_owned)
                return to == STATE(COMPLETED) || to == STATE(FAILED) || to == STATE(TERMINATED) ||
                       to == STATE(TERMINATING);
        return true;
}

void handle_apply(Handle *h, const Coreweave__Sandbox__V1__Sandbox *sb, bool poll) {
        const Coreweave__Sandbox__V1__SandboxStatus *s = sb->status;
        SandboxState to;

        if (!s)
                return;
        to = (SandboxState)s->state;
        if (s->state == BSTATE(UNSPECIFIED))
                to = poll ? STATE(COMPLETED) : h->state;
        if (to != h->state && state_change_allowed(h, to)) {
                log_full(LOG_LEVEL_DEBUG, h->session ? h->session->id : NULL, h->sandbox_id, "%s -> %s",
                         handle_state_name(h->state), handle_state_name(to));
                h->state = to;
                if (poll && to == STATE(COMPLETED) &&
                    s->_exit_code_case == COREWEAVE__SANDBOX__V1__SANDBOX_STATUS___EXIT_CODE_EXIT_CODE) {
                        h->has_exit_code = true;
                        h->exit_code = s->exit_code;
                }
        }
        if (to == h->state)
                set_reason(h, s->state_reason);
        if (s->create_time)
                h->create_time_ms = timestamp_ms(s->create_time);
        if (s->start_time)
                h->start_time_ms = timestamp_ms(s->start_time);
        if (s->end_time)
                h->end_time_ms = timestamp_ms(s->end_time);
        if (h->state == STATE(RUNNING) || h->state == STATE(PAUSED))
                record_startup(h);
        handle_check_waiters(h);
}

void handle_apply_gone(Handle *h, const char *why) {
        if (!handle_is_terminal(h)) {
                h->state = STATE(TERMINATED);
                set_reason(h, why);
        }
        handle_check_waiters(h);
}

void handle_to_pb(const Handle *h, Cwsandboxd__V1__SandboxInfo *out) {
        cwsandboxd__v1__sandbox_info__init(out);
        out->sandbox_id = h->sandbox_id ? h->sandbox_id : (char *)"";
        /* Only a tracked handle can be found again by its handle id. */
        out->handle_id = h->session ? h->id : (char *)"";
        out->session_id = h->session ? h->session->id : (char *)"";
        out->state = h->state;
        out->state_reason = h->state_reason ? h->state_reason : (char *)"";
        out->has_exit_code = h->has_exit_code;
        out->exit_code = h->exit_code;
        out->tags = h->tags;
        out->n_tags = h->n_tags;
        out->create_time_ms = h->create_time_ms;
        out->start_time_ms = h->start_time_ms;
        out->end_time_ms = h->end_time_ms;
        out->scope = h->scope;
        out->container_image = h->image ? h->image : (char *)"";
}

static const Cwsandboxd__V1__SandboxDefaults *handle_defaults(const Handle *h) {
        return h->session ? h->session->defaults : NULL;
}

int64_t handle_request_timeout_ms(const Handle *h) {
        const Cwsandboxd__V1__SandboxDefaults *d = handle_defaults(h);

        return (int64_t)retry_seconds_to_ms(d && d->request_timeout_seconds > 0 ? d->request_timeout_seconds
                                                                              : MERGE_DEFAULT_REQUEST_TIMEOUT_S);
}

double handle_poll_retry_budget_s(const Handle *h) {
        const Cwsandboxd__V1__SandboxDefaults *d = handle_defaults(h);

        return d && d->poll_retry_budget_seconds > 0 ? d->poll_retry_budget_seconds : MERGE_DEFAULT_POLL_RETRY_BUDGET_S;
}

double handle_poll_rpc_timeout_s(const Handle *h) {
        const Cwsandboxd__V1__SandboxDefaults *d = handle_defaults(h);

        return d && d->poll_rpc_timeout_seconds > 0 ? d->poll_rpc_timeout_seconds : MERGE_DEFAULT_POLL_RPC_TIMEOUT_S;
}

/* ---- waiters ------------------------------------------------------------------------- */

static void waiter_closed(uv_handle_t *t) {
        free(container_of((uv_timer_t *)t, HandleWaiter, timer));
}

static void waiter_unlink(HandleWaiter *w) {
        Handle *h = w->handle;

        if (w->prev)
                w->prev->next = w->next;
        else
                h->waiters = w->next;
        if (w->next)
                w->next->prev = w->prev;
        w->next = w->prev = NULL;
}

static void waiter_deliver(uv_timer_t *t) {
        HandleWaiter *w = container_of(t, HandleWaiter, timer);
        Handle *h = w->handle;

        if (!w->finished) {
                /* The timeout fired. */
                waiter_unlink(w);
                w->finished = true;
                status_set(&w->result, GRPC_STATUS_DEADLINE_EXCEEDED, "sandbox %s did not %s in time",
                           h->sandbox_id ? h->sandbox_id : h->id,
                           w->what == HANDLE_WAIT_RUNNING ? "become ready" :
                           w->what == HANDLE_WAIT_TERMINAL ? "finish" : "get created");
                handle_check_waiters(h);        /* maybe nobody needs polls now */
        }
        uv_close((uv_handle_t *)&w->timer, waiter_closed);
        if (status_ok(&w->result))
                w->fn(w->userdata, h, &w->result);     /* hands our reference over */
        else {
                w->fn(w->userdata, NULL, &w->result);
                handle_unref(h);
        }
}

static void waiter_finish(HandleWaiter *w, const Status *st) {
        if (w->finished)
                return;
        waiter_unlink(w);
        w->finished = true;
        w->result = *st;
        uv_timer_start(&w->timer, waiter_deliver, 0, 0);
}

HandleWaiter *handle_wait(Handle *h, HandleWaitFor what, int64_t timeout_ms, HandleFn fn, void *userdata) {
        HandleWaiter *w = calloc(1, sizeof(*w));

        if (!w)
                abort();        /* as gRPC does on OOM; a waiter is tiny */
        *w = (HandleWaiter) {
                .handle = handle_ref(h),
                .what = what,
                .fn = fn,
                .userdata = userdata,
                .next = h->waiters,
        };
        uv_timer_init(h->manager->loop, &w->timer);
        if (h->waiters)
                h->waiters->prev = w;
        h->waiters = w;
        if (timeout_ms >= 0)
                uv_timer_start(&w->timer, waiter_deliver, (uint64_t)timeout_ms, 0);
        handle_start(h);
        handle_check_waiters(h);
        return w;
}

void handle_waiter_cancel(HandleWaiter *w) {
        Status st;

        status_set(&st, GRPC_STATUS_CANCELLED, "cancelled");
        waiter_finish(w, &st);
}

/* The outcome for @w in the handle's current state; false while it must wait. */
static bool waiter_outcome(const HandleWaiter *w, Status *st) {
        const Handle *h = w->handle;
        const char *id = h->sandbox_id ? h->sandbox_id : h->id;

        if (h->cancelled) {
                if (w->what == HANDLE_WAIT_TERMINAL)
                        *st = STATUS_OK;
                else
                        status_set(st, GRPC_STATUS_FAILED_PRECONDITION, "sandbox %s was stopped before it started", id);
                return true;
        }
        switch (w->what) {
        case HANDLE_WAIT_CREATED:
                if (!h->sandbox_id)
                        return false;
                *st = STATUS_OK;
                return true;
        case HANDLE_WAIT_RUNNING:
                if (h->state == STATE(FAILED)) {
                        status_set(st, GRPC_STATUS_FAILED_PRECONDITION, "sandbox %s failed to start%s%s", id,
                                   h->state_reason ? ": " : "", h->state_reason ? h->state_reason : "");
                        strcpy(st->reason, "CWSANDBOXD_SANDBOX_FAILED");
                        return true;
                }
                if (h->state == STATE(TERMINATED)) {
                        status_set(st, GRPC_STATUS_FAILED_PRECONDITION, "sandbox %s was terminated%s%s", id,
                                   h->state_reason ? ": " : "", h->state_reason ? h->state_reason : "");
                        strcpy(st->reason, "CWSANDBOXD_SANDBOX_TERMINATED");
                        return true;
                }
                if (h->state == STATE(RUNNING) || h->state == STATE(PAUSED) ||
                    h->state == STATE(TERMINATING) || h->state == STATE(COMPLETED)) {
                        *st = STATUS_OK;
                        return true;
                }
                return false;
        case HANDLE_WAIT_TERMINAL:
                if (!handle_is_terminal(h))
                        return false;
                *st = STATUS_OK;
                return true;
        }
        return false;
}

static bool waiter_needs_poll(const HandleWaiter *w) {
        return w->what != HANDLE_WAIT_CREATED && w->handle->sandbox_id;
}

bool handle_needs_poll(const Handle *h) {
        for (HandleWaiter *w = h->waiters; w; w = w->next)
                if (waiter_needs_poll(w))
                        return true;
        return false;
}

bool handle_needs_terminal(const Handle *h) {
        for (HandleWaiter *w = h->waiters; w; w = w->next)
                if (w->what == HANDLE_WAIT_TERMINAL || h->state == STATE(TERMINATING))
                        return true;
        return false;
}

/*
 * A queued create stays queued only while someone waits for it (the
 * caller's timeout is the wait's); a slot is held while the sandbox may be
 * alive.
 */
static void admission_check(Handle *h) {
        Admission *a = &h->manager->admission;

        if (h->admission.queued && (!h->waiters || h->cancelled))
                admission_cancel(a, &h->admission);
        if (h->admission.holding && (h->cancelled || handle_is_terminal(h)))
                admission_release(a, &h->admission);
}

static void handle_check_waiters(Handle *h) {
        HandleWaiter *w = h->waiters, *next;
        Status st;

        for (; w; w = next) {
                next = w->next;
                if (waiter_outcome(w, &st))
                        waiter_finish(w, &st);
        }
        if (handle_needs_poll(h))
                tracker_watch(&h->manager->tracker, h);
        else if (h->tracked)
                tracker_unwatch(&h->manager->tracker, h);
        admission_check(h);
}

void handle_fail_waiters(Handle *h, const Status *st) {
        HandleWaiter *w = h->waiters, *next;

        for (; w; w = next) {
                next = w->next;
                if (waiter_needs_poll(w))
                        waiter_finish(w, st);
        }
        handle_check_waiters(h);
}

/* ---- start --------------------------------------------------------------------------- */

static void fail_waiters(Handle *h, const Status *st) {
        HandleWaiter *w, *next;

        for (w = h->waiters; w; w = next) {
                next = w->next;
                waiter_finish(w, st);
        }
        handle_check_waiters(h);
}

static void handle_start(Handle *h);

/*
 * The backend is out of quota: admission pauses every create. With the WAIT
 * policy and a RetryInfo hint, this one queues again for after the pause
 * (same request_id, so a create that did happen is not made twice).
 * Returns true when it did.
 */
static bool create_throttled(Handle *h, const Status *st) {
        Manager *m = h->manager;

        if (st->code != GRPC_STATUS_RESOURCE_EXHAUSTED)
                return false;
        admission_throttled(&m->admission, st->retry_delay_ms);
        if (m->admission.policy != ADMISSION_WAIT || st->retry_delay_ms == 0 || !h->waiters || m->stop_stage > 1)
                return false;
        log_full(LOG_LEVEL_INFO, h->session ? h->session->id : NULL, NULL,
                 "create of %s refused by the backend (%s); trying again in %" PRIu32 " ms",
                 h->id, st->message, st->retry_delay_ms);
        handle_start(h);
        return true;
}

static void create_failed(Handle *h, const Status *st) {
        const char *sid = h->session ? h->session->id : NULL;
        Status err = *st;

        admission_release(&h->manager->admission, &h->admission);
        if (create_throttled(h, st))
                return;
        if (status_ok(st))
                status_set(&err, GRPC_STATUS_INTERNAL, "the backend returned no sandbox id");
        status_prefix(&err, "create sandbox");
        log_full(LOG_LEVEL_WARNING, sid, NULL, "create of %s failed: %s", h->id, err.message);
        fail_waiters(h, &err);
}

static void handle_created(void *userdata, const Status *st, ProtobufCMessage *reply) {
        Handle *h = userdata;
        Manager *m = h->manager;
        Coreweave__Sandbox__V1__Sandbox *sb = (Coreweave__Sandbox__V1__Sandbox *)reply;
        const char *sid = h->session ? h->session->id : NULL;

        h->create_call = NULL;
        if (!status_ok(st) || !sb->sandbox_id || !*sb->sandbox_id)
                create_failed(h, st);
        else {
                h->sandbox_id = strdup(sb->sandbox_id);
                if (!h->sandbox_id)
                        abort();
                if (h->session && hashmap_put(&m->handles_by_sandbox, h->sandbox_id, h) < 0)
                        log_full(LOG_LEVEL_WARNING, sid, h->sandbox_id, "sandbox id already tracked");
                /* As the SDK: PENDING after a create, whatever the reply echoed. */
                h->state = STATE(PENDING);
                if (sb->status && sb->status->create_time)
                        h->create_time_ms = timestamp_ms(sb->status->create_time);
                h->create_request = merge_create_request_free(h->create_request);
                log_full(LOG_LEVEL_INFO, sid, h->sandbox_id, "created sandbox (handle %s)", h->id);
                admission_create_ok(&m->admission);
                m->metrics.sandboxes_created++;
                persist_handle(h);
                handle_check_waiters(h);
        }
        if (reply)
                protobuf_c_message_free_unpacked(reply, NULL);
        handle_unref(h);
}

static void send_create(Handle *h) {
        Status st;

        /* Found by reconciliation meanwhile: it keeps its slot. */
        if (h->sandbox_id || h->create_call)
                return;
        if (h->cancelled || !h->create_request) {
                admission_release(&h->manager->admission, &h->admission);
                return;
        }
        /* Calls in flight may still create while the daemon drains (stage 1), not after. */
        if (h->manager->stop_stage > 1) {
                admission_release(&h->manager->admission, &h->admission);
                status_set(&st, GRPC_STATUS_UNAVAILABLE, "the daemon is shutting down");
                fail_waiters(h, &st);
                return;
        }
        h->create_sent_ms = manager_now_ms(h->manager);
        h->create_call = backend_call(h->manager->backend, BACKEND_CREATE_SANDBOX,
                                      &h->create_request->base, handle_request_timeout_ms(h),
                                      handle_created, handle_ref(h));
}

static void start_durable(void *userdata, int error) {
        Handle *h = userdata;

        /* A ledger that cannot write is reported by the ledger; the create goes on. */
        if (error < 0)
                log_full(LOG_LEVEL_DEBUG, h->session ? h->session->id : NULL, NULL,
                         "creating %s without a durable record: %s", h->id, strerror(-error));
        h->start_pending = false;
        send_create(h);
        handle_unref(h);
}

/* Admitted: the create goes out once the handle's record is on disk, so a crash cannot leave an unknown sandbox. */
static void start_admitted(AdmissionTicket *t, const Status *st) {
        Handle *h = container_of(t, Handle, admission);

        if (!status_ok(st)) {
                log_full(LOG_LEVEL_INFO, h->session ? h->session->id : NULL, NULL, "create of %s refused: %s",
                         h->id, st->message);
                fail_waiters(h, st);
                return;
        }
        h->start_pending = true;
        persist_sync(h->manager, h->ledger_seq, start_durable, handle_ref(h));
}

static void handle_start(Handle *h) {
        if (h->sandbox_id || h->create_call || h->start_pending || h->admission.queued || h->cancelled ||
            !h->create_request)
                return;
        admission_request(&h->manager->admission, &h->admission, h->session ? &h->session->admission : NULL,
                          start_admitted);
}

/* ---- resolve ------------------------------------------------------------------------- */

typedef struct Resolve {
        Manager *manager;
        uid_t uid;
        HandleFn fn;
        void *userdata;
        char *id;
        /* for handle_wait_running_by_id */
        int64_t timeout_ms;
        bool then_wait;
} Resolve;

static grpc_status_code check_access(const Handle *h, uid_t uid, Status *st) {
        if (manager_may_access(uid, h->owner))
                return GRPC_STATUS_OK;
        return status_set(st, GRPC_STATUS_PERMISSION_DENIED, "sandbox %s belongs to another user",
                          h->sandbox_id ? h->sandbox_id : h->id);
}

static void resolve_done(Resolve *r, Handle *h, const Status *st);

static void resolve_got(void *userdata, const Status *st, ProtobufCMessage *reply) {
        Resolve *r = userdata;
        Coreweave__Sandbox__V1__Sandbox *sb = (Coreweave__Sandbox__V1__Sandbox *)reply;
        Handle *h;
        Status err = *st;

        if (!status_ok(st)) {
                if (err.code == GRPC_STATUS_NOT_FOUND)
                        status_set(&err, GRPC_STATUS_NOT_FOUND, "sandbox %s not found", r->id);
                resolve_done(r, NULL, &err);
                return;
        }
        /* A create may have tracked it meanwhile. */
        h = hashmap_get(&r->manager->handles_by_sandbox, sb->sandbox_id);
        if (h) {
                h = handle_ref(h);
                handle_apply(h, sb, false);
        } else
                h = handle_new_from_backend(r->manager, NULL, sb);
        protobuf_c_message_free_unpacked(reply, NULL);
        if (!h) {
                status_set(&err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                resolve_done(r, NULL, &err);
                return;
        }
        if (check_access(h, r->uid, &err) != GRPC_STATUS_OK) {
                h = handle_unref(h);
                resolve_done(r, NULL, &err);
                return;
        }
        resolve_done(r, h, &err);
}

static void resolve_waited(void *userdata, Handle *h, const Status *st) {
        Resolve *r = userdata;

        r->fn(r->userdata, h, st);
        free(r->id);
        free(r);
}

static void resolve_done(Resolve *r, Handle *h, const Status *st) {
        Status err;

        if (h && r->then_wait) {
                if (h->state == STATE(TERMINATING) || handle_is_terminal(h) || h->stop || h->cancelled) {
                        status_set(&err, GRPC_STATUS_FAILED_PRECONDITION, "sandbox %s is not running (%s)",
                                   h->sandbox_id ? h->sandbox_id : h->id,
                                   h->stop || h->state == STATE(TERMINATING) ? "stopping" : "finished");
                        strcpy(err.reason, "CWSANDBOXD_SANDBOX_NOT_RUNNING");
                        handle_unref(h);
                        h = NULL;
                        st = &err;
                } else {
                        int64_t t = r->timeout_ms >= 0 ? r->timeout_ms : handle_request_timeout_ms(h);

                        (void)handle_wait(h, HANDLE_WAIT_RUNNING, t, resolve_waited, r);
                        handle_unref(h);
                        return;
                }
        }
        r->fn(r->userdata, h, st);
        free(r->id);
        free(r);
}

static Resolve *resolve_new(Manager *m, uid_t uid, const char *id, HandleFn fn, void *userdata) {
        Resolve *r = calloc(1, sizeof(*r));

        if (!r || !(r->id = strdup(id)))
                abort();
        r->manager = m;
        r->uid = uid;
        r->fn = fn;
        r->userdata = userdata;
        r->timeout_ms = -1;
        return r;
}

static void resolve_start(Resolve *r) {
        Manager *m = r->manager;
        Handle *h;
        Status st;

        if (!r->id[0]) {
                status_set(&st, GRPC_STATUS_INVALID_ARGUMENT, "sandbox_id: required");
                resolve_done(r, NULL, &st);
                return;
        }
        h = handle_find(m, r->id);
        if (h) {
                if (check_access(h, r->uid, &st) != GRPC_STATUS_OK)
                        resolve_done(r, NULL, &st);
                else
                        resolve_done(r, handle_ref(h), &STATUS_OK);
                return;
        }
        if (strncmp(r->id, "h-", 2) == 0) {
                status_set(&st, GRPC_STATUS_NOT_FOUND, "sandbox handle %s not found", r->id);
                resolve_done(r, NULL, &st);
                return;
        }

        Coreweave__Sandbox__V1__GetSandboxRequest req = COREWEAVE__SANDBOX__V1__GET_SANDBOX_REQUEST__INIT;

        req.sandbox_id = r->id;
        (void)backend_call(m->backend, BACKEND_GET_SANDBOX, &req.base,
                           (int64_t)retry_seconds_to_ms(MERGE_DEFAULT_REQUEST_TIMEOUT_S), resolve_got, r);
}

Handle *handle_find(Manager *m, const char *id) {
        Handle *h = hashmap_get(&m->handles_by_id, id);

        return h ? h : hashmap_get(&m->handles_by_sandbox, id);
}

void handle_resolve(Manager *m, uid_t uid, const char *id, HandleFn fn, void *userdata) {
        resolve_start(resolve_new(m, uid, id, fn, userdata));
}

/* Deferred so @fn never runs before handle_wait_running_by_id() returns. */
static void resolve_deferred(uv_timer_t *t) {
        Resolve *r = t->data;

        uv_close((uv_handle_t *)t, (uv_close_cb)free);
        resolve_start(r);
}

void handle_wait_running_by_id(Manager *m, uid_t uid, const char *id, int64_t timeout_ms,
                               HandleFn fn, void *userdata) {
        Resolve *r = resolve_new(m, uid, id, fn, userdata);
        uv_timer_t *t = malloc(sizeof(*t));

        if (!t)
                abort();
        r->then_wait = true;
        r->timeout_ms = timeout_ms;
        uv_timer_init(m->loop, t);
        t->data = r;
        uv_timer_start(t, resolve_deferred, 0, 0);
}

/* ---- stop ---------------------------------------------------------------------------- */

static void stop_finish(Handle *h, const Status *st) {
        HandleStop *s = h->stop;
        StopJoiner *j, *next;

        h->stop = NULL;
        if (status_ok(st) && h->stop_owned)
                handle_untrack(h);      /* as the SDK: a sandbox we stopped leaves its session */
        for (j = s->joiners; j; j = next) {
                next = j->next;
                if (status_ok(st) || (j->missing_ok && st->code == GRPC_STATUS_NOT_FOUND))
                        j->fn(j->userdata, handle_ref(h), &STATUS_OK);
                else
                        j->fn(j->userdata, NULL, st);
                free(j);
        }
        free(s);
        handle_unref(h);        /* the stop's reference */
}

static void stop_terminal(void *userdata, Handle *h, const Status *st) {
        Handle *self = userdata;

        stop_finish(self, st);
        handle_unref(h);
}

static void stop_wait_terminal(Handle *h) {
        (void)handle_wait(h, HANDLE_WAIT_TERMINAL, -1, stop_terminal, h);
}

static void stop_deleted(void *userdata, const Status *st, ProtobufCMessage *reply) {
        Handle *h = userdata;
        HandleStop *s = h->stop;
        Status err = *st;

        if (reply)
                protobuf_c_message_free_unpacked(reply, NULL);
        if (!status_ok(st)) {
                if (st->code == GRPC_STATUS_NOT_FOUND && s->missing_ok) {
                        h->stop_owned = true;
                        handle_apply_gone(h, "not found when stopped");
                        stop_finish(h, &STATUS_OK);
                        return;
                }
                status_prefix(&err, "stop sandbox");
                /* The caller reports it (to its client, or through the reaper's retries). */
                log_full(LOG_LEVEL_DEBUG, h->session ? h->session->id : NULL, h->sandbox_id, "%s", err.message);
                stop_finish(h, &err);
                return;
        }
        log_full(LOG_LEVEL_INFO, h->session ? h->session->id : NULL, h->sandbox_id, "stopping sandbox");
        h->stop_owned = true;
        if (!handle_is_terminal(h))
                h->state = STATE(TERMINATING);
        stop_wait_terminal(h);
}

static void stop_send(Handle *h) {
        HandleStop *s = h->stop;
        Coreweave__Sandbox__V1__DeleteSandboxRequest req = COREWEAVE__SANDBOX__V1__DELETE_SANDBOX_REQUEST__INIT;
        double g = s->grace_s;

        req.sandbox_id = h->sandbox_id;
        req.grace_period_seconds = g > 0 ? (int32_t)ceil(g) : 0;
        req.allow_missing = s->missing_ok;
        (void)backend_call(h->manager->backend, BACKEND_DELETE_SANDBOX, &req.base,
                           ((int64_t)req.grace_period_seconds + STOP_DEADLINE_EXTRA_S) * 1000, stop_deleted, h);
}

static void stop_proceed(Handle *h) {
        if (h->cancelled || handle_is_terminal(h)) {
                stop_finish(h, &STATUS_OK);
                return;
        }
        if (!h->sandbox_id) {
                /* Never created: no call, as the SDK. */
                h->cancelled = true;
                h->stop_owned = true;
                h->state = STATE(TERMINATED);
                set_reason(h, "stopped before it was started");
                handle_check_waiters(h);
                stop_finish(h, &STATUS_OK);
                return;
        }
        if (h->state == STATE(TERMINATING)) {
                h->stop_owned = true;
                stop_wait_terminal(h);
                return;
        }
        stop_send(h);
}

static void stop_after_create(void *userdata, Handle *h, const Status *st) {
        Handle *self = userdata;

        /* A failed create leaves nothing to stop on the backend. */
        stop_proceed(self);
        handle_unref(h);
}

void handle_stop(Handle *h, double grace_s, bool missing_ok, HandleFn fn, void *userdata) {
        StopJoiner *j = calloc(1, sizeof(*j));

        if (!j)
                abort();
        *j = (StopJoiner) { .fn = fn, .userdata = userdata, .missing_ok = missing_ok };
        if (h->stop) {
                j->next = h->stop->joiners;
                h->stop->joiners = j;
                return;
        }
        h->stop = calloc(1, sizeof(*h->stop));
        if (!h->stop)
                abort();
        *h->stop = (HandleStop) { .handle = h, .grace_s = grace_s, .missing_ok = missing_ok, .joiners = j };
        handle_ref(h);
        if (h->create_call)
                (void)handle_wait(h, HANDLE_WAIT_CREATED, -1, stop_after_create, h);
        else
                stop_proceed(h);
}
