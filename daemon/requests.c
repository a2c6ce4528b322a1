/*
 * Requests: what each client request means. manager_dispatch() is the one
 * entry point the Server calls; each handler checks the caller's rights,
 * acts on sessions and handles, and ends the Call exactly once, now or from
 * a completion.
 *
 * Asynchronous handlers keep ids, never Session pointers, across a wait: a
 * session may close in between, and is looked up again afterwards.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handle.h"
#include "log.h"
#include "manager.h"
#include "merge.h"
#include "ops.h"
#include "persist.h"
#include "session.h"

#define STOP_GRACE_DEFAULT_S    10.0
#define LIST_MAX_PAGES          100
#define LIST_TIMEOUT_MS         (300 * 1000)

typedef struct Pending {
        Manager *manager;
        Call *call;
        uid_t uid;
        char *session_id;
        char *error_id;                 /* the sandbox a failure names, if any */
        HandleWaitFor what;
        int64_t timeout_ms;
        double grace_s;
        bool missing_ok;
        bool adopt;
        bool refresh;
} Pending;

static Pending *pending_new(Manager *m, Call *call) {
        Pending *p = calloc(1, sizeof(*p));

        if (!p)
                abort();
        p->manager = m;
        p->call = call;
        p->uid = conn_peer(call->conn)->uid;
        return p;
}

static void pending_free(Pending *p) {
        free(p->error_id);
        free(p->session_id);
        free(p);
}

static uid_t call_uid(const Call *call) {
        return conn_peer(call->conn)->uid;
}

/* ---- replies ----------------------------------------------------------------------------- */

static void reply_session(Call *call, const Session *s, bool created) {
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        Cwsandboxd__V1__Session pb;

        session_to_pb(s, &pb);
        pb.created = created;
        f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_SESSION;
        f.session = &pb;
        call_finish(call, &f);
}

static void reply_handle(Call *call, const Handle *h) {
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        Cwsandboxd__V1__SandboxInfo info;

        handle_to_pb(h, &info);
        f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_SANDBOX;
        f.sandbox = &info;
        call_finish(call, &f);
}

static void fail(Call *call, grpc_status_code code, const char *fmt, ...) _printf_(3, 4);
static void fail(Call *call, grpc_status_code code, const char *fmt, ...) {
        Status st = { .code = code };
        va_list ap;

        va_start(ap, fmt);
        (void)vsnprintf(st.message, sizeof(st.message), fmt, ap);
        va_end(ap);
        call_fail(call, &st, NULL);
}

/* The session @id for the caller, or NULL after the call has been failed. */
static Session *session_or_fail(Manager *m, Call *call, const char *id) {
        Status st;
        Session *s = session_lookup(m, call->conn, id, &st);

        if (!s)
                call_fail(call, &st, NULL);
        return s;
}

/* ---- sessions ---------------------------------------------------------------------------- */

static void req_attach(Manager *m, Call *call, const Cwsandboxd__V1__AttachSessionRequest *req) {
        Session *s;
        bool created;
        Status st;

        if (session_attach(m, call->conn, req, &st, &s, &created) != GRPC_STATUS_OK) {
                call_fail(call, &st, NULL);
                return;
        }
        reply_session(call, s, created);
}

static void req_detach(Manager *m, Call *call, const Cwsandboxd__V1__DetachSessionRequest *req) {
        Session *s;

        s = session_or_fail(m, call, req->session_id);
        if (!s)
                return;
        session_detach(s, call->conn);
        call_finish(call, NULL);
}

static void close_done(void *userdata, const SessionCloseResult *r) {
        Call *call = userdata;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        Cwsandboxd__V1__CloseSessionReply reply = CWSANDBOXD__V1__CLOSE_SESSION_REPLY__INIT;
        Cwsandboxd__V1__CloseSessionReply__MetricsEntry me[SDK_METRICS_MAX], *mptrs[SDK_METRICS_MAX];
        Cwsandboxd__V1__Error *errs = calloc(r->n_failures + 1, sizeof(*errs));
        Cwsandboxd__V1__Error **ptrs = calloc(r->n_failures + 1, sizeof(*ptrs));

        if (!errs || !ptrs)
                abort();
        for (unsigned i = 0; i < r->n_failures; i++) {
                cwsandboxd__v1__error__init(&errs[i]);
                errs[i].code = r->failures[i].code;
                errs[i].message = (char *)r->failures[i].message;
                errs[i].reason = (char *)r->failures[i].reason;
                errs[i].retry_delay_ms = r->failures[i].retry_delay_ms;
                errs[i].sandbox_id = (char *)r->failed_ids[i];
                ptrs[i] = &errs[i];
        }
        for (size_t i = 0; i < r->n_metrics; i++) {
                cwsandboxd__v1__close_session_reply__metrics_entry__init(&me[i]);
                me[i].key = (char *)r->metrics[i].name;
                me[i].value = r->metrics[i].value;
                mptrs[i] = &me[i];
        }
        reply.stopped = r->stopped;
        reply.failures = ptrs;
        reply.n_failures = r->n_failures;
        reply.metrics = mptrs;
        reply.n_metrics = r->n_metrics;
        f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_CLOSE_SESSION;
        f.close_session = &reply;
        call_finish(call, &f);
        free(ptrs);
        free(errs);
}

static void req_close(Manager *m, Call *call, const Cwsandboxd__V1__CloseSessionRequest *req) {
        Session *s;

        s = session_or_fail(m, call, req->session_id);
        if (!s)
                return;
        log_full(LOG_LEVEL_INFO, s->id, NULL, "close requested by pid %d", (int)conn_peer(call->conn)->pid);
        session_close(s, close_done, call);
}

static void req_list_sessions(Manager *m, Call *call) {
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        Cwsandboxd__V1__ListSessionsReply reply = CWSANDBOXD__V1__LIST_SESSIONS_REPLY__INIT;
        size_t n = hashmap_size(&m->sessions_by_name);
        Cwsandboxd__V1__Session *pbs = calloc(n + 1, sizeof(*pbs));
        Cwsandboxd__V1__Session **ptrs = calloc(n + 1, sizeof(*ptrs));
        HashmapIter it = HASHMAP_ITER_INIT;
        Session *s;

        if (!pbs || !ptrs)
                abort();
        while ((s = hashmap_next(&m->sessions_by_name, &it)))
                if (manager_may_access(call_uid(call), s->owner)) {
                        session_to_pb(s, &pbs[reply.n_sessions]);
                        ptrs[reply.n_sessions] = &pbs[reply.n_sessions];
                        reply.n_sessions++;
                }
        reply.sessions = ptrs;
        f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_SESSIONS;
        f.sessions = &reply;
        call_finish(call, &f);
        free(ptrs);
        free(pbs);
}

/* ---- create, start, wait, get ------------------------------------------------------------ */

static void reply_when_done(void *userdata, Handle *h, const Status *st) {
        Pending *p = userdata;

        if (!h)
                call_fail(p->call, st, p->error_id);
        else {
                reply_handle(p->call, h);
                handle_unref(h);
        }
        pending_free(p);
}

static void req_create(Manager *m, Call *call, const Cwsandboxd__V1__CreateSandboxRequest *req) {
        Pending *p;
        Session *s;
        Handle *h;
        Status st;

        s = session_or_fail(m, call, req->session_id);
        if (!s)
                return;
        if (s->closing) {
                fail(call, GRPC_STATUS_FAILED_PRECONDITION, "session %s is closing", s->id);
                return;
        }
        if (handle_new_unstarted(s, call->conn, req->args, req->scope, &st, &h) != GRPC_STATUS_OK) {
                call_fail(call, &st, NULL);
                return;
        }
        log_full(LOG_LEVEL_DEBUG, s->id, NULL, "new sandbox handle %s", h->id);
        if (!req->start) {
                reply_handle(call, h);
                return;
        }
        /*
         * As the SDK's run(): answer once the create call has returned, not at
         * RUNNING. A failure names the handle, which stays in the session and
         * can be started again with the same request_id.
         */
        p = pending_new(m, call);
        p->error_id = strdup(h->id);
        if (!p->error_id)
                abort();
        (void)handle_wait(h, HANDLE_WAIT_CREATED, handle_request_timeout_ms(h), reply_when_done, p);
}

static void resolved_then_wait(void *userdata, Handle *h, const Status *st) {
        Pending *p = userdata;

        if (!h) {
                call_fail(p->call, st, NULL);
                pending_free(p);
                return;
        }
        (void)handle_wait(h, p->what, p->timeout_ms >= 0 ? p->timeout_ms : handle_request_timeout_ms(h),
                          reply_when_done, p);
        handle_unref(h);
}

static void req_start(Manager *m, Call *call, const Cwsandboxd__V1__StartSandboxRequest *req) {
        Pending *p = pending_new(m, call);

        p->what = HANDLE_WAIT_CREATED;
        p->timeout_ms = -1;
        handle_resolve(m, p->uid, req->sandbox_id, resolved_then_wait, p);
}

static void req_wait(Manager *m, Call *call, const Cwsandboxd__V1__WaitSandboxRequest *req) {
        Pending *p = pending_new(m, call);

        p->what = req->until_complete ? HANDLE_WAIT_TERMINAL : HANDLE_WAIT_RUNNING;
        p->timeout_ms = req->timeout_ms > 0 ? (int64_t)req->timeout_ms : -1;
        handle_resolve(m, p->uid, req->sandbox_id, resolved_then_wait, p);
}

typedef struct GetCtx {
        Call *call;
        Handle *handle;
} GetCtx;

static void got_sandbox(void *userdata, const Status *st, ProtobufCMessage *reply) {
        GetCtx *g = userdata;

        if (!status_ok(st))
                call_fail(g->call, st, g->handle->sandbox_id);
        else {
                handle_apply(g->handle, (Coreweave__Sandbox__V1__Sandbox *)reply, false);
                reply_handle(g->call, g->handle);
        }
        if (reply)
                protobuf_c_message_free_unpacked(reply, NULL);
        handle_unref(g->handle);
        free(g);
}

static void resolved_get(void *userdata, Handle *h, const Status *st) {
        Pending *p = userdata;
        Coreweave__Sandbox__V1__GetSandboxRequest req = COREWEAVE__SANDBOX__V1__GET_SANDBOX_REQUEST__INIT;
        GetCtx *g;

        if (!h)
                call_fail(p->call, st, NULL);
        else if (!p->refresh || !h->sandbox_id || handle_is_terminal(h)) {
                /* As the SDK's get_status(): a terminal state is final, no call. */
                reply_handle(p->call, h);
                handle_unref(h);
        } else {
                g = malloc(sizeof(*g));
                if (!g)
                        abort();
                *g = (GetCtx) { .call = p->call, .handle = h };
                req.sandbox_id = h->sandbox_id;
                (void)backend_call(p->manager->backend, BACKEND_GET_SANDBOX, &req.base,
                                   (int64_t)(handle_poll_rpc_timeout_s(h) * 1000), got_sandbox, g);
        }
        pending_free(p);
}

static void req_get(Manager *m, Call *call, const Cwsandboxd__V1__GetSandboxRequest *req) {
        Pending *p = pending_new(m, call);

        p->refresh = req->refresh;
        handle_resolve(m, p->uid, req->sandbox_id, resolved_get, p);
}

/* ---- adopt / from_id --------------------------------------------------------------------- */

static void resolved_adopt(void *userdata, Handle *h, const Status *st) {
        Pending *p = userdata;
        Status err;
        Session *s;

        if (!h) {
                call_fail(p->call, st, NULL);
                pending_free(p);
                return;
        }
        if (p->adopt && !h->session) {
                s = hashmap_get(&p->manager->sessions_by_id, p->session_id);
                if (!s || s->closing) {
                        status_set(&err, GRPC_STATUS_FAILED_PRECONDITION, "session %s is %s", p->session_id,
                                   s ? "closing" : "gone");
                        call_fail(p->call, &err, h->sandbox_id);
                        handle_unref(h);
                        pending_free(p);
                        return;
                }
                session_add_handle(s, h);
                log_full(LOG_LEVEL_INFO, s->id, h->sandbox_id, "adopted as handle %s", h->id);
        } else if (p->adopt && !streq(h->session->id, p->session_id)) {
                /* One session stops a sandbox; two would race over it. */
                status_set(&err, GRPC_STATUS_FAILED_PRECONDITION, "sandbox %s already belongs to session %s",
                           h->sandbox_id ? h->sandbox_id : h->id, h->session->id);
                call_fail(p->call, &err, h->sandbox_id);
                handle_unref(h);
                pending_free(p);
                return;
        }
        reply_handle(p->call, h);
        handle_unref(h);
        pending_free(p);
}

static void req_adopt(Manager *m, Call *call, const Cwsandboxd__V1__AdoptSandboxRequest *req) {
        Pending *p;
        Session *s;

        s = session_or_fail(m, call, req->session_id);
        if (!s)
                return;
        p = pending_new(m, call);
        p->adopt = req->adopt;
        p->session_id = strdup(s->id);
        if (!p->session_id)
                abort();
        handle_resolve(m, p->uid, req->sandbox_id, resolved_adopt, p);
}

/* ---- list ---------------------------------------------------------------------------------- */

typedef struct ListCtx {
        Pending *pending;
        Coreweave__Sandbox__V1__ListSandboxesRequest req;
        char **tags;
        char *page_token;
        unsigned pages;
        uint64_t deadline_ms;
        Handle **found;
        size_t n_found;
} ListCtx;

static void list_ctx_free(ListCtx *l) {
        for (size_t i = 0; i < l->n_found; i++)
                handle_unref(l->found[i]);
        free(l->found);
        for (size_t i = 0; i < l->req.n_tags; i++)
                free(l->tags[i]);
        free(l->tags);
        free(l->page_token);
        pending_free(l->pending);
        free(l);
}

static void list_reply(ListCtx *l) {
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        Cwsandboxd__V1__ListSandboxesReply reply = CWSANDBOXD__V1__LIST_SANDBOXES_REPLY__INIT;
        Cwsandboxd__V1__SandboxInfo *infos = calloc(l->n_found + 1, sizeof(*infos));
        Cwsandboxd__V1__SandboxInfo **ptrs = calloc(l->n_found + 1, sizeof(*ptrs));

        if (!infos || !ptrs)
                abort();
        for (size_t i = 0; i < l->n_found; i++) {
                handle_to_pb(l->found[i], &infos[i]);
                ptrs[i] = &infos[i];
        }
        reply.sandboxes = ptrs;
        reply.n_sandboxes = l->n_found;
        f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_SANDBOXES;
        f.sandboxes = &reply;
        call_finish(l->pending->call, &f);
        free(ptrs);
        free(infos);
}

/* One backend sandbox: visible to the caller? then a handle for it (adopted if asked). */
static void list_take(ListCtx *l, const Coreweave__Sandbox__V1__Sandbox *sb) {
        Pending *p = l->pending;
        Manager *m = p->manager;
        Handle *h = hashmap_get(&m->handles_by_sandbox, sb->sandbox_id);
        Session *s = p->session_id ? hashmap_get(&m->sessions_by_id, p->session_id) : NULL;

        if (h)
                h = handle_ref(h);
        else {
                if (p->uid != 0 && sb->spec &&
                    handle_owner_from_tags(sb->spec->tags, sb->spec->n_tags) != p->uid)
                        return;
                if (p->uid != 0 && !sb->spec)
                        return;
                h = handle_new_from_backend(m, NULL, sb);
                if (!h)
                        abort();
        }
        if (!manager_may_access(p->uid, h->owner)) {
                handle_unref(h);
                return;
        }
        handle_apply(h, sb, false);
        if (p->adopt && s && !s->closing && !h->session)
                session_add_handle(s, h);
        l->found = reallocarray(l->found, l->n_found + 1, sizeof(Handle *));
        if (!l->found)
                abort();
        l->found[l->n_found++] = h;
}

static void list_send(ListCtx *l);

static void list_got(void *userdata, const Status *st, ProtobufCMessage *reply) {
        ListCtx *l = userdata;
        Coreweave__Sandbox__V1__ListSandboxesResponse *resp = (Coreweave__Sandbox__V1__ListSandboxesResponse *)reply;
        Status err;

        if (!status_ok(st)) {
                err = *st;
                status_prefix(&err, "list sandboxes");
                call_fail(l->pending->call, &err, NULL);
                list_ctx_free(l);
                return;
        }
        for (size_t i = 0; i < resp->n_sandboxes; i++)
                list_take(l, resp->sandboxes[i]);
        if (resp->next_page_token && *resp->next_page_token) {
                /* As the SDK's paginate: a repeated token is a backend bug, not a loop. */
                if ((l->page_token && streq(l->page_token, resp->next_page_token)) || ++l->pages >= LIST_MAX_PAGES) {
                        status_set(&err, GRPC_STATUS_INTERNAL, "list sandboxes: the backend repeated a page token");
                        call_fail(l->pending->call, &err, NULL);
                        protobuf_c_message_free_unpacked(reply, NULL);
                        list_ctx_free(l);
                        return;
                }
                free(l->page_token);
                l->page_token = strdup(resp->next_page_token);
                if (!l->page_token)
                        abort();
                protobuf_c_message_free_unpacked(reply, NULL);
                list_send(l);
                return;
        }
        protobuf_c_message_free_unpacked(reply, NULL);
        list_reply(l);
        list_ctx_free(l);
}

static void list_send(ListCtx *l) {
        Manager *m = l->pending->manager;
        uint64_t now = manager_now_ms(m);

        l->req.page_token = l->page_token ? l->page_token : (char *)"";
        (void)backend_call(m->backend, BACKEND_LIST_SANDBOXES, &l->req.base,
                           l->deadline_ms > now ? (int64_t)(l->deadline_ms - now) : 1, list_got, l);
}

static void list_add_tag(ListCtx *l, const char *tag) {
        for (size_t i = 0; i < l->req.n_tags; i++)
                if (streq(l->tags[i], tag))
                        return;
        l->tags = reallocarray(l->tags, l->req.n_tags + 1, sizeof(char *));
        if (!l->tags || !(l->tags[l->req.n_tags] = strdup(tag)))
                abort();
        l->req.tags = l->tags;
        l->req.n_tags++;
}

static void req_list(Manager *m, Call *call, const Cwsandboxd__V1__ListSandboxesRequest *req) {
        ListCtx *l;
        Session *s = NULL;

        if (req->session_id && *req->session_id) {
                s = session_or_fail(m, call, req->session_id);
                if (!s)
                        return;
        } else if (req->adopt) {
                fail(call, GRPC_STATUS_INVALID_ARGUMENT, "adopt: needs a session_id");
                return;
        }
        if (req->status == CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_UNSTARTED) {
                fail(call, GRPC_STATUS_INVALID_ARGUMENT, "status: UNSTARTED is not a backend state");
                return;
        }
        if (req->n_tags > MERGE_LIST_MAX) {
                fail(call, GRPC_STATUS_INVALID_ARGUMENT, "tags: too many");
                return;
        }
        l = calloc(1, sizeof(*l));
        if (!l)
                abort();
        coreweave__sandbox__v1__list_sandboxes_request__init(&l->req);
        l->pending = pending_new(m, call);
        l->pending->adopt = req->adopt;
        if (s && !(l->pending->session_id = strdup(s->id)))
                abort();
        /* As the SDK's Session.list(): the session's default tags always apply. */
        if (s)
                for (size_t i = 0; i < s->defaults->n_tags; i++)
                        list_add_tag(l, s->defaults->tags[i]);
        for (size_t i = 0; i < req->n_tags; i++)
                list_add_tag(l, req->tags[i]);
        l->req.state = (Coreweave__Sandbox__V1__State)req->status;
        l->req.show_terminated = req->include_stopped;
        l->deadline_ms = manager_now_ms(m) + LIST_TIMEOUT_MS;
        list_send(l);
}

/* ---- stop and delete --------------------------------------------------------------------- */

static void stopped(void *userdata, Handle *h, const Status *st) {
        Pending *p = userdata;
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        Cwsandboxd__V1__StopSandboxReply reply = CWSANDBOXD__V1__STOP_SANDBOX_REPLY__INIT;
        Cwsandboxd__V1__SandboxInfo info;

        if (!h) {
                call_fail(p->call, st, NULL);
        } else {
                handle_to_pb(h, &info);
                reply.sandbox = &info;
                f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_STOP_SANDBOX;
                f.stop_sandbox = &reply;
                call_finish(p->call, &f);
                handle_unref(h);
        }
        pending_free(p);
}

static void resolved_stop(void *userdata, Handle *h, const Status *st) {
        Pending *p = userdata;

        if (!h) {
                if (st->code == GRPC_STATUS_NOT_FOUND && p->missing_ok)
                        call_finish(p->call, NULL);
                else
                        call_fail(p->call, st, NULL);
                pending_free(p);
                return;
        }
        handle_stop(h, p->grace_s, p->missing_ok, stopped, p);
        handle_unref(h);
}

static void req_stop(Manager *m, Call *call, const Cwsandboxd__V1__StopSandboxRequest *req) {
        Pending *p;

        if (req->has_grace && (!isfinite(req->grace_seconds) || req->grace_seconds < 0 ||
                               req->grace_seconds > 24 * 3600)) {
                fail(call, GRPC_STATUS_INVALID_ARGUMENT, "grace_seconds: must be 0 to 86400");
                return;
        }
        p = pending_new(m, call);
        p->grace_s = req->has_grace ? req->grace_seconds : STOP_GRACE_DEFAULT_S;
        p->missing_ok = req->missing_ok;
        handle_resolve(m, p->uid, req->sandbox_id, resolved_stop, p);
}

typedef struct DeleteCtx {
        Pending *pending;
        Handle *handle;
} DeleteCtx;

static void deleted(void *userdata, const Status *st, ProtobufCMessage *reply) {
        DeleteCtx *d = userdata;
        Handle *h = d->handle;

        if (reply)
                protobuf_c_message_free_unpacked(reply, NULL);
        if (status_ok(st) || (st->code == GRPC_STATUS_NOT_FOUND && d->pending->missing_ok)) {
                /* Deleted from outside its stop(): it is no longer the session's to stop. */
                h->stop_owned = true;
                if (!handle_is_terminal(h))
                        h->state = CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_TERMINATING;
                log_full(LOG_LEVEL_INFO, h->session ? h->session->id : NULL, h->sandbox_id, "deleted");
                handle_untrack(h);
                call_finish(d->pending->call, NULL);
        } else {
                Status err = *st;

                status_prefix(&err, "delete sandbox");
                call_fail(d->pending->call, &err, h->sandbox_id);
        }
        handle_unref(h);
        pending_free(d->pending);
        free(d);
}

static void resolved_delete(void *userdata, Handle *h, const Status *st) {
        Pending *p = userdata;
        Coreweave__Sandbox__V1__DeleteSandboxRequest req = COREWEAVE__SANDBOX__V1__DELETE_SANDBOX_REQUEST__INIT;
        DeleteCtx *d;

        if (!h || !h->sandbox_id) {
                if (h) {
                        /* Never created: nothing on the backend. */
                        handle_untrack(h);
                        handle_unref(h);
                        call_finish(p->call, NULL);
                } else if (st->code == GRPC_STATUS_NOT_FOUND && p->missing_ok)
                        call_finish(p->call, NULL);
                else
                        call_fail(p->call, st, NULL);
                pending_free(p);
                return;
        }
        d = malloc(sizeof(*d));
        if (!d)
                abort();
        *d = (DeleteCtx) { .pending = p, .handle = h };
        /* As the SDK's Sandbox.delete(): grace 0, missing_ok applied here, no wait. */
        req.sandbox_id = h->sandbox_id;
        (void)backend_call(p->manager->backend, BACKEND_DELETE_SANDBOX, &req.base, LIST_TIMEOUT_MS, deleted, d);
}

static void req_delete(Manager *m, Call *call, const Cwsandboxd__V1__DeleteSandboxRequest *req) {
        Pending *p = pending_new(m, call);

        p->missing_ok = req->missing_ok;
        handle_resolve(m, p->uid, req->sandbox_id, resolved_delete, p);
}

/* ---- daemon -------------------------------------------------------------------------------- */

static void req_status(Manager *m, Call *call) {
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        Cwsandboxd__V1__StatusReply reply = CWSANDBOXD__V1__STATUS_REPLY__INIT;
        char state_status[600];
        Cwsandboxd__V1__StatusReply__SandboxesByStateEntry entries[HANDLE_STATE_SLOTS], *ptrs[HANDLE_STATE_SLOTS];
        unsigned counts[HANDLE_STATE_SLOTS];

        manager_count_states(m, call_uid(call), counts);
        for (unsigned i = 0; i < HANDLE_STATE_SLOTS; i++) {
                if (!counts[i])
                        continue;
                cwsandboxd__v1__status_reply__sandboxes_by_state_entry__init(&entries[reply.n_sandboxes_by_state]);
                entries[reply.n_sandboxes_by_state].key = (char *)handle_state_name(handle_slot_state(i));
                entries[reply.n_sandboxes_by_state].value = counts[i];
                ptrs[reply.n_sandboxes_by_state] = &entries[reply.n_sandboxes_by_state];
                reply.n_sandboxes_by_state++;
        }
        reply.sandboxes_by_state = ptrs;
        reply.daemon_version = (char *)PROJECT_VERSION;
        reply.backend_kind = (char *)(m->local ? "local" : "remote");
        reply.backend_url = m->local ? (char *)"" : m->config->backend_url;
        reply.uptime_ms = (int64_t)(manager_now_ms(m) - m->start_ms);
        manager_state_status(m, state_status, sizeof(state_status));
        reply.sessions = (uint32_t)hashmap_size(&m->sessions_by_name);
        reply.connections = server_connections(m->server);
        reply.state_file_status = state_status;
        f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_STATUS;
        f.status = &reply;
        call_finish(call, &f);
}

typedef Cwsandboxd__V1__MetricsReply__ValuesEntry ValuesEntry;

static void metrics_reply(Call *call, ValuesEntry *entries, size_t n, char *prometheus) {
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;
        Cwsandboxd__V1__MetricsReply reply = CWSANDBOXD__V1__METRICS_REPLY__INIT;
        _cleanup_free_ ValuesEntry **ptrs = calloc(n + 1, sizeof(*ptrs));

        if (!ptrs)
                abort();
        for (size_t i = 0; i < n; i++)
                ptrs[i] = &entries[i];
        reply.values = ptrs;
        reply.n_values = n;
        reply.prometheus_text = prometheus ? prometheus : (char *)"";
        f.body_case = CWSANDBOXD__V1__DAEMON_FRAME__BODY_METRICS;
        f.metrics = &reply;
        call_finish(call, &f);
}

/* A session's values as read, until the reply goes. */
typedef struct SessionRead {
        Call *call;
        SdkMetricValue v[SDK_METRICS_MAX];
        size_t n;
        char *text;
} SessionRead;

static void session_read_reply(void *userdata, int error) {
        SessionRead *r = userdata;
        ValuesEntry e[SDK_METRICS_MAX];

        /* A ledger that cannot write says so itself; the read stands. */
        (void)error;
        for (size_t i = 0; i < r->n; i++) {
                cwsandboxd__v1__metrics_reply__values_entry__init(&e[i]);
                e[i].key = (char *)r->v[i].name;
                e[i].value = r->v[i].value;
        }
        metrics_reply(r->call, e, r->n, r->text);
        free(r->text);
        free(r);
}

/*
 * A session's cwsandbox/... set. Read and reset happen in one turn of the
 * loop, so no exec is lost or counted twice between them. The reply to a
 * reset waits until the reset is on disk: once a client has the values, a
 * crash cannot bring them back to be counted again.
 */
static void session_metrics(Call *call, Session *s, bool reset, bool prometheus) {
        SessionRead *r = calloc(1, sizeof(*r));

        if (!r) {
                fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
        }
        r->call = call;
        r->n = sdk_metrics_values(&s->metrics, r->v);
        if (prometheus && !(r->text = metrics_session_prometheus(s, r->v, r->n))) {
                free(r);
                fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
        }
        if (!reset) {
                session_read_reply(r, 0);
                return;
        }
        sdk_metrics_reset(&s->metrics);
        persist_sync(s->manager, persist_session(s), session_read_reply, r);
}

static void host_metrics(Manager *m, Call *call, bool prometheus) {
        _cleanup_free_ char *text = NULL;
        _cleanup_free_ ValuesEntry *e = NULL;
        MetricsValue *v = NULL;
        size_t n = 0;

        if (metrics_values(m, &v, &n) < 0 || (prometheus && !(text = metrics_prometheus(m))) ||
            !(e = calloc(n + 1, sizeof(*e)))) {
                if (v)
                        metrics_values_free(v, n);
                fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
        }
        for (size_t i = 0; i < n; i++) {
                cwsandboxd__v1__metrics_reply__values_entry__init(&e[i]);
                e[i].key = v[i].series;
                e[i].value = v[i].value;
        }
        metrics_reply(call, e, n, text);
        metrics_values_free(v, n);
}

static void req_metrics(Manager *m, Call *call, const Cwsandboxd__V1__MetricsRequest *req) {
        Session *s;

        if (!req->session_id || !*req->session_id) {
                if (req->reset) {
                        fail(call, GRPC_STATUS_INVALID_ARGUMENT, "reset: only a session's metrics can be reset; "
                             "the host-wide ones are counters that only grow");
                        return;
                }
                host_metrics(m, call, req->prometheus);
                return;
        }
        s = session_or_fail(m, call, req->session_id);
        if (s)
                session_metrics(call, s, req->reset, req->prometheus);
}

/* ---- dispatch ------------------------------------------------------------------------------ */

void manager_dispatch(void *userdata, Call *call, const ClientFrame *frame) {
        Manager *m = userdata;

        if (m->stopping) {
                fail(call, GRPC_STATUS_UNAVAILABLE, "the daemon is shutting down");
                return;
        }
        switch (frame->body_case) {
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_ATTACH_SESSION:
                req_attach(m, call, frame->attach_session);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_DETACH_SESSION:
                req_detach(m, call, frame->detach_session);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_CLOSE_SESSION:
                req_close(m, call, frame->close_session);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_LIST_SESSIONS:
                req_list_sessions(m, call);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_CREATE_SANDBOX:
                req_create(m, call, frame->create_sandbox);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_START_SANDBOX:
                req_start(m, call, frame->start_sandbox);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_WAIT_SANDBOX:
                req_wait(m, call, frame->wait_sandbox);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_GET_SANDBOX:
                req_get(m, call, frame->get_sandbox);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_LIST_SANDBOXES:
                req_list(m, call, frame->list_sandboxes);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_ADOPT_SANDBOX:
                req_adopt(m, call, frame->adopt_sandbox);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_STOP_SANDBOX:
                req_stop(m, call, frame->stop_sandbox);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_DELETE_SANDBOX:
                req_delete(m, call, frame->delete_sandbox);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_EXEC:
                ops_exec(m, call, frame->exec);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_READ_FILE:
                ops_read_file(m, call, frame->read_file);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_WRITE_FILE:
                ops_write_file(m, call, frame->write_file);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_LOGS:
                ops_logs(m, call, frame->logs);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_STATUS:
                req_status(m, call);
                break;
        case CWSANDBOXD__V1__CLIENT_FRAME__BODY_METRICS:
                req_metrics(m, call, frame->metrics);
                break;
        default:
                fail(call, GRPC_STATUS_INVALID_ARGUMENT, "request not understood");
                break;
        }
}
