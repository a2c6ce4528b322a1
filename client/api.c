/*
 * The unary calls of libcwsandbox: connect, sessions, sandboxes,
 * status and metrics. Each public function turns its plain C arguments into
 * one ClientFrame, runs it as a Call on the connection (see conn.c) and
 * turns the reply into the library's own result structs, so no protobuf-c
 * type crosses the public interface. Streaming calls live in exec.c,
 * files.c and logs.c.
 *
 * Request building borrows the caller's strings; what has to be allocated
 * for a request (map entries, sub-messages) goes into a Scratch freed when
 * the call returns (see util.h). Which sessions a connection re-attaches
 * after a reconnect follows from its attach, detach and close requests;
 * call_unary() keeps that list (see conn.c), so nothing here does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "macro.h"
#include "util.h"

#define DEFAULT_SOCKET          "/run/cwsandboxd/cwsandboxd.sock"

/* ---- names ------------------------------------------------------------------------------- */

CWS_EXPORT const char *cws_strerror(int code) {
        static const char *const names[] = {
                "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                "UNAUTHENTICATED",
        };

        return code >= 0 && (size_t)code < ELEMENTSOF(names) ? names[code] : "UNKNOWN_CODE";
}

CWS_EXPORT const char *cws_state_name(cws_sandbox_state state) {
        switch (state) {
        case CWS_STATE_UNSPECIFIED: return "UNSPECIFIED";
        case CWS_STATE_CREATING: return "CREATING";
        case CWS_STATE_RUNNING: return "RUNNING";
        case CWS_STATE_COMPLETED: return "COMPLETED";
        case CWS_STATE_FAILED: return "FAILED";
        case CWS_STATE_TERMINATING: return "TERMINATING";
        case CWS_STATE_TERMINATED: return "TERMINATED";
        case CWS_STATE_PENDING: return "PENDING";
        case CWS_STATE_PAUSED: return "PAUSED";
        case CWS_STATE_UNSTARTED: return "UNSTARTED";
        }
        return "UNKNOWN";
}

/* ---- request parts ----------------------------------------------------------------------- */

static Cwsandboxd__V1__Resources *resources_pb(Scratch *s, const cws_resources *r) {
        Cwsandboxd__V1__Resources *pb;

        if (!r || !(pb = scratch_alloc(s, 1, sizeof(*pb))))
                return NULL;
        cwsandboxd__v1__resources__init(pb);
        pb->cpu = S(r->cpu);
        pb->memory = S(r->memory);
        pb->gpu_count = r->gpu_count;
        pb->gpu_type = S(r->gpu_type);
        return pb;
}

static Cwsandboxd__V1__Secret **secrets_pb(Scratch *s, const cws_secret *v, size_t n) {
        Cwsandboxd__V1__Secret *e, **ptrs;

        if (n == 0)
                return NULL;
        e = scratch_alloc(s, n, sizeof(*e));
        ptrs = scratch_alloc(s, n, sizeof(*ptrs));
        if (!e || !ptrs)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                cwsandboxd__v1__secret__init(&e[i]);
                e[i].store = S(v[i].store);
                e[i].name = S(v[i].name);
                e[i].field = S(v[i].field);
                e[i].env_var = S(v[i].env_var);
                ptrs[i] = &e[i];
        }
        return ptrs;
}

static Cwsandboxd__V1__MountedFile **mounted_pb(Scratch *s, const cws_mounted_file *v, size_t n) {
        Cwsandboxd__V1__MountedFile *e, **ptrs;

        if (n == 0)
                return NULL;
        e = scratch_alloc(s, n, sizeof(*e));
        ptrs = scratch_alloc(s, n, sizeof(*ptrs));
        if (!e || !ptrs)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                cwsandboxd__v1__mounted_file__init(&e[i]);
                e[i].path = S(v[i].path);
                e[i].content = (ProtobufCBinaryData) { .len = v[i].size, .data = (uint8_t *)v[i].content };
                ptrs[i] = &e[i];
        }
        return ptrs;
}

/* ---- connection -------------------------------------------------------------------------- */

CWS_EXPORT char *cws_default_socket_path(void) {
        const char *env = getenv("CWSANDBOXD_SOCKET"), *xdg = getenv("XDG_RUNTIME_DIR");
        char *path = NULL;

        if (env && *env)
                return strdup(env);
        if (access(DEFAULT_SOCKET, F_OK) == 0 || !xdg || !*xdg)
                return strdup(DEFAULT_SOCKET);
        if (asprintf(&path, "%s/cwsandboxd/cwsandboxd.sock", xdg) < 0)
                return NULL;
        return path;
}

CWS_EXPORT int cws_connect(const char *socket_path, const char *client_name, cws_conn **ret_conn, cws_error *err) {
        _cleanup_free_ char *path = NULL;
        cws_conn *c = NULL;
        int r;

        if (!ret_conn)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "ret_conn: required");
        if (!socket_path) {
                path = cws_default_socket_path();
                if (!path)
                        return oom(err);
        }
        r = conn_open(socket_path ? socket_path : path, client_name, &c, err);
        if (r != 0)
                return r;
        cws_ok(err);
        *ret_conn = c;
        return 0;
}

CWS_EXPORT void cws_conn_close(cws_conn *c) {
        if (c)
                conn_shutdown(c);
}

CWS_EXPORT const cws_hello *cws_conn_hello(const cws_conn *c) {
        return conn_hello(c);
}

CWS_EXPORT bool cws_conn_has_feature(const cws_conn *c, const char *name) {
        const cws_hello *h = conn_hello(c);

        for (size_t i = 0; name && i < h->n_features; i++)
                if (streq(h->features[i], name))
                        return true;
        return false;
}

CWS_EXPORT void cws_conn_set_reconnect(cws_conn *c, bool on, int wait_ms) {
        conn_set_reconnect(c, on, wait_ms);
}

CWS_EXPORT uint64_t cws_conn_reconnects(const cws_conn *c) {
        return atomic_load(&c->reconnects);
}

/* ---- sessions ---------------------------------------------------------------------------- */

static Cwsandboxd__V1__SandboxDefaults *defaults_pb(Scratch *s, const cws_sandbox_defaults *d) {
        Cwsandboxd__V1__SandboxDefaults *pb;

        if (!d || !(pb = scratch_alloc(s, 1, sizeof(*pb))))
                return NULL;
        cwsandboxd__v1__sandbox_defaults__init(pb);
        pb->container_image = S(d->container_image);
        pb->command = S(d->command);
        pb->args = (char **)d->args;
        pb->n_args = d->n_args;
        pb->has_args = d->has_args;
        pb->tags = (char **)d->tags;
        pb->n_tags = d->n_tags;
        pb->environment_variables = kv_entries(s, &cwsandboxd__v1__sandbox_defaults__environment_variables_entry__descriptor,
                                               d->env, d->n_env);
        pb->n_environment_variables = d->n_env;
        pb->annotations = kv_entries(s, &cwsandboxd__v1__sandbox_defaults__annotations_entry__descriptor,
                                     d->annotations, d->n_annotations);
        pb->n_annotations = d->n_annotations;
        pb->max_lifetime_seconds = d->max_lifetime_seconds;
        pb->request_timeout_seconds = d->request_timeout_seconds;
        pb->poll_retry_budget_seconds = d->poll_retry_budget_seconds;
        pb->poll_rpc_timeout_seconds = d->poll_rpc_timeout_seconds;
        pb->runner_ids = (char **)d->runner_ids;
        pb->n_runner_ids = d->n_runner_ids;
        pb->has_runner_ids = d->has_runner_ids;
        pb->resources = resources_pb(s, d->resources);
        pb->deny_egress = d->deny_egress;
        pb->secrets = secrets_pb(s, d->secrets, d->n_secrets);
        pb->n_secrets = d->n_secrets;
        return pb;
}

static int session_from_pb(const Cwsandboxd__V1__Session *pb, cws_session *s) {
        bool no_mem = false;

        *s = (cws_session) {
                .session_id = dup_or_empty(pb->session_id, &no_mem),
                .name = dup_or_empty(pb->name, &no_mem),
                .owner_uid = pb->owner_uid,
                .linger_seconds = pb->linger_seconds,
                .sandbox_count = pb->sandbox_count,
                .connections = pb->connections,
                .created = pb->created,
                .max_sandboxes = pb->max_sandboxes,
                .max_creates_per_second = pb->max_creates_per_second,
        };
        return no_mem ? -ENOMEM : 0;
}

static void session_clear(cws_session *s) {
        free(s->session_id);
        free(s->name);
}

CWS_EXPORT void cws_session_free(cws_session *s) {
        if (!s)
                return;
        session_clear(s);
        free(s);
}

CWS_EXPORT void cws_session_list_free(cws_session_list *l) {
        if (!l)
                return;
        for (size_t i = 0; i < l->n_sessions; i++)
                session_clear(&l->sessions[i]);
        free(l->sessions);
        free(l);
}

CWS_EXPORT void cws_close_result_free(cws_close_result *r) {
        if (!r)
                return;
        free(r->failures);
        cws_metrics_free(r->metrics);
        free(r);
}

CWS_EXPORT int cws_attach(cws_conn *c, const char *name, const cws_attach_options *opts,
                          cws_session **ret_session, cws_error *err) {
        Cwsandboxd__V1__AttachSessionRequest req = CWSANDBOXD__V1__ATTACH_SESSION_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        _cleanup_(scratch_free) Scratch s = {};
        _cleanup_free_ cws_session *session = NULL;
        DaemonFrame *reply = NULL;
        int r;

        if (arg_missing(name) || !ret_session)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "attach: name and ret_session are required");
        req.name = (char *)name;
        if (opts) {
                req.defaults = defaults_pb(&s, opts->defaults);
                req.has_linger = opts->has_linger;
                req.linger_seconds = opts->linger_seconds;
                req.max_lifetime_seconds = opts->max_lifetime_seconds;
                req.max_sandboxes = opts->max_sandboxes;
                req.max_creates_per_second = opts->max_creates_per_second;
        }
        if (s.oom)
                return oom(err);
        f.body_case = BODY(ATTACH_SESSION);
        f.attach_session = &req;
        r = call_unary(c, &f, &reply, err);
        if (r != 0)
                return r;
        if (reply->body_case != REPLY(SESSION))
                return unexpected(reply, err);
        session = malloc(sizeof(*session));
        if (!session || session_from_pb(reply->session, session) < 0) {
                if (session)
                        session_clear(session);
                daemon_frame_free(reply);
                return oom(err);
        }
        daemon_frame_free(reply);
        *ret_session = TAKE_PTR(session);
        return 0;
}

static int session_id_call(cws_conn *c, int body, const char *session_id, DaemonFrame **ret, cws_error *err) {
        Cwsandboxd__V1__DetachSessionRequest detach = CWSANDBOXD__V1__DETACH_SESSION_REQUEST__INIT;
        Cwsandboxd__V1__CloseSessionRequest close_req = CWSANDBOXD__V1__CLOSE_SESSION_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        if (arg_missing(session_id))
                return cws_fail(err, CWS_INVALID_ARGUMENT, "session_id: required");
        f.body_case = body;
        if (body == BODY(DETACH_SESSION)) {
                detach.session_id = (char *)session_id;
                f.detach_session = &detach;
        } else {
                close_req.session_id = (char *)session_id;
                f.close_session = &close_req;
        }
        return call_unary(c, &f, ret, err);
}

CWS_EXPORT int cws_detach(cws_conn *c, const char *session_id, cws_error *err) {
        DaemonFrame *reply = NULL;
        int r = session_id_call(c, BODY(DETACH_SESSION), session_id, &reply, err);

        daemon_frame_free(reply);
        return r;
}

/* ---- metrics ------------------------------------------------------------------------------ */

/* Room for @n values; NULL when memory ran out. */
static cws_metrics *metrics_new(size_t n) {
        cws_metrics *m = calloc(1, sizeof(*m));

        if (!m)
                return NULL;
        m->metrics = calloc(n + 1, sizeof(cws_metric));
        if (!m->metrics) {
                free(m);
                return NULL;
        }
        return m;
}

/* Add one value; a name that cannot be copied is left out (metrics_incomplete() tells). */
static void metrics_add(cws_metrics *m, const char *name, double value) {
        char *copy = strdup(name ? name : "");

        if (!copy)
                return;
        m->metrics[m->n_metrics++] = (cws_metric) { .name = copy, .value = value };
}

static bool metrics_incomplete(const cws_metrics *m, size_t want) {
        return m->n_metrics != want;
}

CWS_EXPORT bool cws_metrics_find(const cws_metrics *m, const char *name, double *ret_value) {
        if (!m || !name)
                return false;
        for (size_t i = 0; i < m->n_metrics; i++)
                if (streq(m->metrics[i].name, name)) {
                        if (ret_value)
                                *ret_value = m->metrics[i].value;
                        return true;
                }
        return false;
}

static void error_from_pb(const Cwsandboxd__V1__Error *e, cws_error *out) {
        DaemonFrame f = CWSANDBOXD__V1__DAEMON_FRAME__INIT;

        f.error = (Cwsandboxd__V1__Error *)e;
        (void)call_frame_error(&f, out);
}

CWS_EXPORT int cws_close_session(cws_conn *c, const char *session_id, cws_close_result **ret_result,
                                 cws_error *err) {
        Cwsandboxd__V1__CloseSessionReply *cr;
        DaemonFrame *reply = NULL;
        cws_close_result *res;
        int r;

        r = session_id_call(c, BODY(CLOSE_SESSION), session_id, &reply, err);
        if (r != 0)
                return r;
        if (reply->body_case != REPLY(CLOSE_SESSION))
                return unexpected(reply, err);
        cr = reply->close_session;
        if (ret_result) {
                res = calloc(1, sizeof(*res));
                if (res)
                        res->failures = calloc(cr->n_failures + 1, sizeof(cws_error));
                if (!res || !res->failures) {
                        free(res);
                        daemon_frame_free(reply);
                        return oom(err);
                }
                res->stopped = cr->stopped;
                res->n_failures = cr->n_failures;
                for (size_t i = 0; i < cr->n_failures; i++)
                        error_from_pb(cr->failures[i], &res->failures[i]);
                res->metrics = metrics_new(cr->n_metrics);
                for (size_t i = 0; res->metrics && i < cr->n_metrics; i++)
                        metrics_add(res->metrics, cr->metrics[i]->key, cr->metrics[i]->value);
                if (!res->metrics || metrics_incomplete(res->metrics, cr->n_metrics)) {
                        cws_close_result_free(res);
                        daemon_frame_free(reply);
                        return oom(err);
                }
                *ret_result = res;
        }
        daemon_frame_free(reply);
        return 0;
}

CWS_EXPORT int cws_list_sessions(cws_conn *c, cws_session_list **ret_list, cws_error *err) {
        Cwsandboxd__V1__ListSessionsRequest req = CWSANDBOXD__V1__LIST_SESSIONS_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__ListSessionsReply *lr;
        DaemonFrame *reply = NULL;
        cws_session_list *l;
        bool no_mem = false;
        int r;

        if (!ret_list)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "ret_list: required");
        f.body_case = BODY(LIST_SESSIONS);
        f.list_sessions = &req;
        r = call_unary(c, &f, &reply, err);
        if (r != 0)
                return r;
        if (reply->body_case != REPLY(SESSIONS))
                return unexpected(reply, err);
        lr = reply->sessions;
        l = calloc(1, sizeof(*l));
        if (l)
                l->sessions = calloc(lr->n_sessions + 1, sizeof(cws_session));
        for (size_t i = 0; l && l->sessions && i < lr->n_sessions; i++, l->n_sessions++)
                if (session_from_pb(lr->sessions[i], &l->sessions[i]) < 0)
                        no_mem = true;
        daemon_frame_free(reply);
        if (!l || !l->sessions || no_mem) {
                cws_session_list_free(l);
                return oom(err);
        }
        *ret_list = l;
        return 0;
}

/* ---- sandboxes --------------------------------------------------------------------------- */

static void sandbox_clear(cws_sandbox *s) {
        free(s->sandbox_id);
        free(s->handle_id);
        free(s->session_id);
        free(s->state_reason);
        for (size_t i = 0; i < s->n_tags; i++)
                free(s->tags[i]);
        free(s->tags);
        free(s->container_image);
}

static int sandbox_from_pb(const Cwsandboxd__V1__SandboxInfo *pb, cws_sandbox *s) {
        bool no_mem = false;

        *s = (cws_sandbox) {
                .sandbox_id = dup_or_empty(pb->sandbox_id, &no_mem),
                .handle_id = dup_or_empty(pb->handle_id, &no_mem),
                .session_id = dup_or_empty(pb->session_id, &no_mem),
                .state = (cws_sandbox_state)pb->state,
                .state_reason = dup_or_empty(pb->state_reason, &no_mem),
                .has_exit_code = pb->has_exit_code,
                .exit_code = pb->exit_code,
                .create_time_ms = pb->create_time_ms,
                .start_time_ms = pb->start_time_ms,
                .end_time_ms = pb->end_time_ms,
                .scope = (cws_scope)pb->scope,
                .container_image = dup_or_empty(pb->container_image, &no_mem),
                .tags = calloc(pb->n_tags + 1, sizeof(char *)),
        };
        if (!s->tags)
                no_mem = true;
        for (size_t i = 0; s->tags && i < pb->n_tags; i++, s->n_tags++)
                s->tags[i] = dup_or_empty(pb->tags[i], &no_mem);
        if (no_mem) {
                sandbox_clear(s);
                return -ENOMEM;
        }
        return 0;
}

CWS_EXPORT void cws_sandbox_free(cws_sandbox *s) {
        if (!s)
                return;
        sandbox_clear(s);
        free(s);
}

CWS_EXPORT void cws_sandbox_list_free(cws_sandbox_list *l) {
        if (!l)
                return;
        for (size_t i = 0; i < l->n_sandboxes; i++)
                sandbox_clear(&l->sandboxes[i]);
        free(l->sandboxes);
        free(l);
}

/*
 * Run @f and hand out the SandboxInfo of its reply (the body named
 * @body_case, or inside a StopSandboxReply). A reply without one, as a stop
 * with missing_ok of a missing sandbox gives, stores NULL.
 */
static int sandbox_call(cws_conn *c, ClientFrame *f, cws_sandbox **ret_sandbox, cws_error *err) {
        const Cwsandboxd__V1__SandboxInfo *info = NULL;
        cws_sandbox *s = NULL;
        DaemonFrame *reply = NULL;
        int r;

        r = call_unary(c, f, &reply, err);
        if (r != 0)
                return r;
        if (reply->body_case == REPLY(SANDBOX))
                info = reply->sandbox;
        else if (reply->body_case == REPLY(STOP_SANDBOX))
                info = reply->stop_sandbox->sandbox;
        else if (reply->body_case != CWSANDBOXD__V1__DAEMON_FRAME__BODY__NOT_SET)
                return unexpected(reply, err);
        if (info && ret_sandbox) {
                s = malloc(sizeof(*s));
                if (!s || sandbox_from_pb(info, s) < 0) {
                        free(s);
                        daemon_frame_free(reply);
                        return oom(err);
                }
        }
        daemon_frame_free(reply);
        if (ret_sandbox)
                *ret_sandbox = s;
        return 0;
}

static Cwsandboxd__V1__SandboxArgs *args_pb(Scratch *s, const cws_sandbox_args *a) {
        Cwsandboxd__V1__SandboxArgs *pb;

        if (!a || !(pb = scratch_alloc(s, 1, sizeof(*pb))))
                return NULL;
        cwsandboxd__v1__sandbox_args__init(pb);
        pb->container_image = S(a->container_image);
        pb->command = S(a->command);
        pb->args = (char **)a->args;
        pb->n_args = a->n_args;
        pb->has_args = a->has_args;
        pb->tags = (char **)a->tags;
        pb->n_tags = a->n_tags;
        pb->environment_variables = kv_entries(s, &cwsandboxd__v1__sandbox_args__environment_variables_entry__descriptor,
                                               a->env, a->n_env);
        pb->n_environment_variables = a->n_env;
        pb->annotations = kv_entries(s, &cwsandboxd__v1__sandbox_args__annotations_entry__descriptor,
                                     a->annotations, a->n_annotations);
        pb->n_annotations = a->n_annotations;
        pb->runner_ids = (char **)a->runner_ids;
        pb->n_runner_ids = a->n_runner_ids;
        pb->has_runner_ids = a->has_runner_ids;
        pb->resources = resources_pb(s, a->resources);
        pb->has_resources = a->resources != NULL;
        pb->secrets = secrets_pb(s, a->secrets, a->n_secrets);
        pb->n_secrets = a->n_secrets;
        pb->mounted_files = mounted_pb(s, a->mounted_files, a->n_mounted_files);
        pb->n_mounted_files = a->n_mounted_files;
        pb->working_dir = S(a->working_dir);
        return pb;
}

CWS_EXPORT int cws_sandbox_create(cws_conn *c, const char *session_id, const cws_create_options *opts,
                                  cws_sandbox **ret_sandbox, cws_error *err) {
        Cwsandboxd__V1__CreateSandboxRequest req = CWSANDBOXD__V1__CREATE_SANDBOX_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        _cleanup_(scratch_free) Scratch s = {};

        if (arg_missing(session_id) || !ret_sandbox)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "create: session_id and ret_sandbox are required");
        req.session_id = (char *)session_id;
        if (opts) {
                req.args = args_pb(&s, opts->args);
                req.scope = (Cwsandboxd__V1__Scope)opts->scope;
                req.start = opts->start;
        }
        if (s.oom)
                return oom(err);
        f.body_case = BODY(CREATE_SANDBOX);
        f.create_sandbox = &req;
        return sandbox_call(c, &f, ret_sandbox, err);
}

CWS_EXPORT int cws_sandbox_start(cws_conn *c, const char *id, cws_sandbox **ret_sandbox, cws_error *err) {
        Cwsandboxd__V1__StartSandboxRequest req = CWSANDBOXD__V1__START_SANDBOX_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        if (arg_missing(id))
                return cws_fail(err, CWS_INVALID_ARGUMENT, "sandbox id: required");
        req.sandbox_id = (char *)id;
        f.body_case = BODY(START_SANDBOX);
        f.start_sandbox = &req;
        return sandbox_call(c, &f, ret_sandbox, err);
}

CWS_EXPORT int cws_sandbox_wait(cws_conn *c, const char *id, bool until_complete, uint32_t timeout_ms,
                                cws_sandbox **ret_sandbox, cws_error *err) {
        Cwsandboxd__V1__WaitSandboxRequest req = CWSANDBOXD__V1__WAIT_SANDBOX_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        if (arg_missing(id))
                return cws_fail(err, CWS_INVALID_ARGUMENT, "sandbox id: required");
        req.sandbox_id = (char *)id;
        req.until_complete = until_complete;
        req.timeout_ms = timeout_ms;
        f.body_case = BODY(WAIT_SANDBOX);
        f.wait_sandbox = &req;
        return sandbox_call(c, &f, ret_sandbox, err);
}

CWS_EXPORT int cws_sandbox_get(cws_conn *c, const char *id, bool refresh, cws_sandbox **ret_sandbox,
                               cws_error *err) {
        Cwsandboxd__V1__GetSandboxRequest req = CWSANDBOXD__V1__GET_SANDBOX_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        if (arg_missing(id) || !ret_sandbox)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "get: sandbox id and ret_sandbox are required");
        req.sandbox_id = (char *)id;
        req.refresh = refresh;
        f.body_case = BODY(GET_SANDBOX);
        f.get_sandbox = &req;
        return sandbox_call(c, &f, ret_sandbox, err);
}

CWS_EXPORT int cws_sandbox_from_id(cws_conn *c, const char *session_id, const char *id, bool adopt,
                                   cws_sandbox **ret_sandbox, cws_error *err) {
        Cwsandboxd__V1__AdoptSandboxRequest req = CWSANDBOXD__V1__ADOPT_SANDBOX_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        if (arg_missing(session_id) || arg_missing(id) || !ret_sandbox)
                return cws_fail(err, CWS_INVALID_ARGUMENT,
                                "from_id: session_id, sandbox id and ret_sandbox are required");
        req.session_id = (char *)session_id;
        req.sandbox_id = (char *)id;
        req.adopt = adopt;
        f.body_case = BODY(ADOPT_SANDBOX);
        f.adopt_sandbox = &req;
        return sandbox_call(c, &f, ret_sandbox, err);
}

CWS_EXPORT int cws_sandbox_stop(cws_conn *c, const char *id, const cws_stop_options *opts,
                                cws_sandbox **ret_sandbox, cws_error *err) {
        Cwsandboxd__V1__StopSandboxRequest req = CWSANDBOXD__V1__STOP_SANDBOX_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        if (arg_missing(id))
                return cws_fail(err, CWS_INVALID_ARGUMENT, "sandbox id: required");
        req.sandbox_id = (char *)id;
        if (opts) {
                req.has_grace = opts->has_grace;
                req.grace_seconds = opts->grace_seconds;
                req.missing_ok = opts->missing_ok;
        }
        f.body_case = BODY(STOP_SANDBOX);
        f.stop_sandbox = &req;
        return sandbox_call(c, &f, ret_sandbox, err);
}

CWS_EXPORT int cws_sandbox_delete(cws_conn *c, const char *id, bool missing_ok, cws_error *err) {
        Cwsandboxd__V1__DeleteSandboxRequest req = CWSANDBOXD__V1__DELETE_SANDBOX_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

        if (arg_missing(id))
                return cws_fail(err, CWS_INVALID_ARGUMENT, "sandbox id: required");
        req.sandbox_id = (char *)id;
        req.missing_ok = missing_ok;
        f.body_case = BODY(DELETE_SANDBOX);
        f.delete_sandbox = &req;
        return sandbox_call(c, &f, NULL, err);
}

CWS_EXPORT int cws_list_sandboxes(cws_conn *c, const cws_list_options *opts, cws_sandbox_list **ret_list,
                                cws_error *err) {
        Cwsandboxd__V1__ListSandboxesRequest req = CWSANDBOXD__V1__LIST_SANDBOXES_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__ListSandboxesReply *lr;
        DaemonFrame *reply = NULL;
        cws_sandbox_list *l;
        bool no_mem = false;
        int r;

        if (!ret_list)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "ret_list: required");
        if (opts) {
                req.session_id = S(opts->session_id);
                req.tags = (char **)opts->tags;
                req.n_tags = opts->n_tags;
                req.status = (Cwsandboxd__V1__SandboxState)opts->status;
                req.include_stopped = opts->include_stopped;
                req.adopt = opts->adopt;
        }
        f.body_case = BODY(LIST_SANDBOXES);
        f.list_sandboxes = &req;
        r = call_unary(c, &f, &reply, err);
        if (r != 0)
                return r;
        if (reply->body_case != REPLY(SANDBOXES))
                return unexpected(reply, err);
        lr = reply->sandboxes;
        l = calloc(1, sizeof(*l));
        if (l)
                l->sandboxes = calloc(lr->n_sandboxes + 1, sizeof(cws_sandbox));
        for (size_t i = 0; l && l->sandboxes && i < lr->n_sandboxes && !no_mem; i++) {
                if (sandbox_from_pb(lr->sandboxes[i], &l->sandboxes[i]) < 0)
                        no_mem = true;
                else
                        l->n_sandboxes++;
        }
        daemon_frame_free(reply);
        if (!l || !l->sandboxes || no_mem) {
                cws_sandbox_list_free(l);
                return oom(err);
        }
        *ret_list = l;
        return 0;
}

/* ---- daemon ------------------------------------------------------------------------------ */

CWS_EXPORT void cws_status_free(cws_status *s) {
        if (!s)
                return;
        free(s->daemon_version);
        free(s->backend_kind);
        free(s->backend_url);
        for (size_t i = 0; i < s->n_states; i++)
                free(s->states[i].state);
        free(s->states);
        free(s->state_file_status);
        free(s);
}

CWS_EXPORT void cws_metrics_free(cws_metrics *m) {
        if (!m)
                return;
        for (size_t i = 0; i < m->n_metrics; i++)
                free(m->metrics[i].name);
        free(m->metrics);
        free(m->prometheus_text);
        free(m);
}

CWS_EXPORT int cws_get_status(cws_conn *c, cws_status **ret_status, cws_error *err) {
        Cwsandboxd__V1__StatusRequest req = CWSANDBOXD__V1__STATUS_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__StatusReply *sr;
        DaemonFrame *reply = NULL;
        bool no_mem = false;
        cws_status *s;
        int r;

        if (!ret_status)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "ret_status: required");
        f.body_case = BODY(STATUS);
        f.status = &req;
        r = call_unary(c, &f, &reply, err);
        if (r != 0)
                return r;
        if (reply->body_case != REPLY(STATUS))
                return unexpected(reply, err);
        sr = reply->status;
        s = calloc(1, sizeof(*s));
        if (s) {
                s->daemon_version = dup_or_empty(sr->daemon_version, &no_mem);
                s->backend_kind = dup_or_empty(sr->backend_kind, &no_mem);
                s->backend_url = dup_or_empty(sr->backend_url, &no_mem);
                s->state_file_status = dup_or_empty(sr->state_file_status, &no_mem);
                s->uptime_ms = sr->uptime_ms;
                s->sessions = sr->sessions;
                s->connections = sr->connections;
                s->states = calloc(sr->n_sandboxes_by_state + 1, sizeof(cws_state_count));
                for (size_t i = 0; s->states && i < sr->n_sandboxes_by_state; i++, s->n_states++) {
                        s->states[i].state = dup_or_empty(sr->sandboxes_by_state[i]->key, &no_mem);
                        s->states[i].count = sr->sandboxes_by_state[i]->value;
                }
        }
        daemon_frame_free(reply);
        if (!s || !s->states || no_mem) {
                cws_status_free(s);
                return oom(err);
        }
        *ret_status = s;
        return 0;
}

CWS_EXPORT int cws_get_metrics(cws_conn *c, const char *session_id, bool reset, bool prometheus,
                               cws_metrics **ret_metrics, cws_error *err) {
        Cwsandboxd__V1__MetricsRequest req = CWSANDBOXD__V1__METRICS_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__MetricsReply *mr;
        DaemonFrame *reply = NULL;
        bool no_mem = false;
        cws_metrics *m;
        int r;

        if (!ret_metrics)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "ret_metrics: required");
        req.session_id = S(session_id);
        req.reset = reset;
        req.prometheus = prometheus;
        f.body_case = BODY(METRICS);
        f.metrics = &req;
        r = call_unary(c, &f, &reply, err);
        if (r != 0)
                return r;
        if (reply->body_case != REPLY(METRICS))
                return unexpected(reply, err);
        mr = reply->metrics;
        m = metrics_new(mr->n_values);
        if (m) {
                m->prometheus_text = dup_or_empty(mr->prometheus_text, &no_mem);
                for (size_t i = 0; i < mr->n_values; i++)
                        metrics_add(m, mr->values[i]->key, mr->values[i]->value);
                no_mem = no_mem || metrics_incomplete(m, mr->n_values);
        }
        daemon_frame_free(reply);
        if (!m || no_mem) {
                cws_metrics_free(m);
                return oom(err);
        }
        *ret_metrics = m;
        return 0;
}
