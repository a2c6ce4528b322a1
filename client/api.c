/*
 * The calls of libcwsandbox: each public function turns its plain C
 * arguments into one ClientFrame, runs it as a Call on the connection (see
 * conn.c) and turns the reply into the library's own result structs, so no
 * protobuf-c type crosses the public interface.
 *
 * Request building borrows the caller's strings (protobuf-c only reads
 * them while packing); what has to be allocated for a request (map entries,
 * sub-messages) goes into a Scratch freed when the call returns.
 *
 * Streams (exec output, file reads, logs) give the daemon credit back as the
 * application consumes data, never when it merely arrives: a slow reader
 * pauses the daemon, which pauses the backend.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "macro.h"

#define PROTOCOL_VERSION        1u
#define DEFAULT_SOCKET          "/run/cwsandboxd/cwsandboxd.sock"
#define EXEC_WINDOW_DEFAULT     (1024u * 1024)
#define READ_FILE_WINDOW        (4u * 1024 * 1024)      /* the daemon's initial credit for a read */
#define LOGS_WINDOW             (256u * 1024)           /* and for logs */
#define FRAME_MARGIN            256u                    /* frame fields around a chunk */
#define CHUNK_MAX               (1024u * 1024)

#define BODY(x) CWSANDBOXD__V1__CLIENT_FRAME__BODY_##x
#define REPLY(x) CWSANDBOXD__V1__DAEMON_FRAME__BODY_##x

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

/* ---- small helpers ----------------------------------------------------------------------- */

/* A borrowed string for a request: protobuf-c wants "" rather than NULL. */
static char *S(const char *s) {
        return (char *)(s ? s : "");
}

static char *dup_or_empty(const char *s, bool *oom) {
        char *d = strdup(s ? s : "");

        if (!d)
                *oom = true;
        return d;
}

/* A copy of @n bytes with a NUL behind them. */
static char *dup_bytes(const void *data, size_t n) {
        char *d = malloc(n + 1);

        if (!d)
                return NULL;
        if (n)
                memcpy(d, data, n);
        d[n] = 0;
        return d;
}

static int oom(cws_error *err) {
        return cws_fail(err, CWS_RESOURCE_EXHAUSTED, "out of memory");
}

static int unexpected(DaemonFrame *f, cws_error *err) {
        int body = f->body_case;

        daemon_frame_free(f);
        return cws_fail(err, CWS_INTERNAL, "unexpected reply from the daemon (body %d)", body);
}

static bool arg_missing(const char *s) {
        return !s || !*s;
}

/* Allocations that live as long as one request. */
typedef struct Scratch {
        void **ptrs;
        size_t n;
        bool oom;
} Scratch;

static void *scratch_alloc(Scratch *s, size_t n, size_t size) {
        void **v;
        void *p;

        if (s->oom)
                return NULL;
        p = calloc(n ? n : 1, size);
        v = p ? reallocarray(s->ptrs, s->n + 1, sizeof(void *)) : NULL;
        if (!v) {
                free(p);
                s->oom = true;
                return NULL;
        }
        s->ptrs = v;
        s->ptrs[s->n++] = p;
        return p;
}

static void scratch_free(Scratch *s) {
        for (size_t i = 0; i < s->n; i++)
                free(s->ptrs[i]);
        free(s->ptrs);
}

/* Every protoc-c map<string, string> entry has this layout. */
typedef struct KvEntry {
        ProtobufCMessage base;
        char *key;
        char *value;
} KvEntry;

static void *kv_entries(Scratch *s, const ProtobufCMessageDescriptor *desc, const cws_kv *kv, size_t n) {
        KvEntry *e, **ptrs;

        if (n == 0 || desc->sizeof_message != sizeof(KvEntry))
                return NULL;
        e = scratch_alloc(s, n, sizeof(*e));
        ptrs = scratch_alloc(s, n, sizeof(*ptrs));
        if (!e || !ptrs)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                protobuf_c_message_init(desc, &e[i]);
                e[i].key = S(kv[i].key);
                e[i].value = S(kv[i].value);
                ptrs[i] = &e[i];
        }
        return ptrs;
}

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

static int conn_hello(cws_conn *c, const char *client_name, cws_error *err) {
        Cwsandboxd__V1__Hello hello = CWSANDBOXD__V1__HELLO__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__HelloReply *hr;
        DaemonFrame *reply = NULL;
        int r;

        hello.protocol_version = PROTOCOL_VERSION;
        hello.client_name = S(client_name ? client_name : "libcwsandbox");
        hello.pid = (int32_t)getpid();
        f.body_case = BODY(HELLO);
        f.hello = &hello;
        r = call_unary(c, &f, &reply, err);
        if (r == CWS_UNAVAILABLE) {
                /* The daemon may have said why before it hung up (e.g. a protocol version). */
                pthread_mutex_lock(&c->lock);
                if (c->refused_code)
                        r = cws_fail(err, c->refused_code, "%s", c->dead_msg);
                pthread_mutex_unlock(&c->lock);
        }
        if (r != 0)
                return r;
        if (reply->body_case != REPLY(HELLO))
                return unexpected(reply, err);
        hr = reply->hello;
        if (hr->protocol_version != PROTOCOL_VERSION) {
                daemon_frame_free(reply);
                return cws_fail(err, CWS_FAILED_PRECONDITION, "the daemon speaks protocol version %u, not %u",
                                hr->protocol_version, PROTOCOL_VERSION);
        }
        c->hello_frame = reply;
        c->hello = (cws_hello) {
                .protocol_version = hr->protocol_version,
                .daemon_version = hr->daemon_version,
                .backend_kind = hr->backend_kind,
                .backend_url = hr->backend_url,
                .features = (const char *const *)hr->features,
                .n_features = hr->n_features,
                .max_frame_bytes = hr->max_frame_bytes,
        };
        if (hr->max_frame_bytes > FRAME_MARGIN)
                c->chunk_max = MIN((size_t)CHUNK_MAX, (size_t)hr->max_frame_bytes - FRAME_MARGIN);
        return 0;
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
        r = conn_open(socket_path ? socket_path : path, &c, err);
        if (r != 0)
                return r;
        r = conn_hello(c, client_name, err);
        if (r != 0) {
                conn_shutdown(c);
                return r;
        }
        cws_ok(err);
        *ret_conn = c;
        return 0;
}

CWS_EXPORT void cws_conn_close(cws_conn *c) {
        if (c)
                conn_shutdown(c);
}

CWS_EXPORT const cws_hello *cws_conn_hello(const cws_conn *c) {
        return &c->hello;
}

CWS_EXPORT bool cws_conn_has_feature(const cws_conn *c, const char *name) {
        for (size_t i = 0; name && i < c->hello.n_features; i++)
                if (streq(c->hello.features[i], name))
                        return true;
        return false;
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

/* ---- exec -------------------------------------------------------------------------------- */

struct cws_exec {
        Call *call;
        DaemonFrame *cur;               /* an ExecOutput being read */
        size_t off;
        /*
         * The reading thread sets the end; one other thread may write stdin
         * meanwhile and needs to see it, so the end is set and read elsewhere
         * under this lock.
         */
        pthread_mutex_t lock;
        bool ended;                     /* the final frame has come, or the call failed */
        bool has_exit;
        int exit_code;
        int end_code;                   /* 0, or the error that ended the exec */
        cws_error end_err;
};

static int exec_request(Scratch *s, const char *id, const char *const *argv, const cws_exec_options *opts,
                        Cwsandboxd__V1__ExecRequest *req, cws_error *err) {
        size_t n = 0;

        if (arg_missing(id) || !argv || arg_missing(argv[0]))
                return cws_fail(err, CWS_INVALID_ARGUMENT, "exec: sandbox id and a command are required");
        while (argv[n])
                n++;
        cwsandboxd__v1__exec_request__init(req);
        req->sandbox_id = (char *)id;
        req->command = (char **)argv;
        req->n_command = n;
        if (opts) {
                req->cwd = S(opts->cwd);
                req->env = kv_entries(s, &cwsandboxd__v1__exec_request__env_entry__descriptor, opts->env, opts->n_env);
                req->n_env = opts->n_env;
                req->timeout_seconds = opts->timeout_seconds;
                req->tty = opts->tty;
                req->tty_width = opts->tty_width;
                req->tty_height = opts->tty_height;
        }
        return s->oom ? oom(err) : 0;
}

CWS_EXPORT void cws_exec_result_free(cws_exec_result *r) {
        if (!r)
                return;
        free(r->stdout_data);
        free(r->stderr_data);
        free(r);
}

CWS_EXPORT int cws_exec_run(cws_conn *c, const char *id, const char *const *argv, const cws_exec_options *opts,
                            cws_exec_result **ret_result, cws_error *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__ExecRequest req;
        _cleanup_(scratch_free) Scratch s = {};
        Cwsandboxd__V1__ExecResult *er;
        DaemonFrame *reply = NULL;
        cws_exec_result *res;
        int r;

        if (!ret_result)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "ret_result: required");
        r = exec_request(&s, id, argv, opts, &req, err);
        if (r != 0)
                return r;
        req.buffered = true;
        f.body_case = BODY(EXEC);
        f.exec = &req;
        r = call_unary(c, &f, &reply, err);
        if (r != 0)
                return r;
        if (reply->body_case != REPLY(EXEC_RESULT))
                return unexpected(reply, err);
        er = reply->exec_result;
        res = calloc(1, sizeof(*res));
        if (res) {
                res->stdout_data = dup_bytes(er->stdout.data, er->stdout.len);
                res->stdout_len = er->stdout.len;
                res->stderr_data = dup_bytes(er->stderr.data, er->stderr.len);
                res->stderr_len = er->stderr.len;
                res->exit_code = er->exit_code;
        }
        daemon_frame_free(reply);
        if (!res || !res->stdout_data || !res->stderr_data) {
                cws_exec_result_free(res);
                return oom(err);
        }
        *ret_result = res;
        return 0;
}

CWS_EXPORT int cws_exec_start(cws_conn *c, const char *id, const char *const *argv, const cws_exec_options *opts,
                              cws_exec **ret_exec, cws_error *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__ExecRequest req;
        _cleanup_(scratch_free) Scratch s = {};
        uint32_t window = opts && opts->window_bytes ? opts->window_bytes : EXEC_WINDOW_DEFAULT;
        cws_exec *x;
        int r;

        if (!ret_exec)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "ret_exec: required");
        r = exec_request(&s, id, argv, opts, &req, err);
        if (r != 0)
                return r;
        req.stdin = opts && opts->with_stdin;
        req.initial_credit = window;
        x = calloc(1, sizeof(*x));
        if (!x)
                return oom(err);
        r = call_new(c, window, &x->call, err);
        if (r != 0) {
                free(x);
                return r;
        }
        pthread_mutex_init(&x->lock, NULL);
        f.body_case = BODY(EXEC);
        f.exec = &req;
        r = call_send(x->call, &f, err);
        if (r != 0) {
                cws_exec_free(x);
                return r;
        }
        cws_ok(err);
        *ret_exec = x;
        return 0;
}

/* The exec has ended with @code (0 = its final frame came without error). */
static void exec_end(cws_exec *x, int code, const cws_error *e) {
        pthread_mutex_lock(&x->lock);
        x->ended = true;
        x->end_code = code;
        if (code != 0 && e)
                x->end_err = *e;
        if (code == 0 && !x->has_exit) {
                x->end_code = CWS_UNAVAILABLE;
                cws_fail(&x->end_err, CWS_UNAVAILABLE, "the exec ended without an exit status");
        }
        pthread_mutex_unlock(&x->lock);
}

/* Take the next frame: output into x->cur, or the exit, or the end. */
static int exec_next(cws_exec *x, int timeout_ms, cws_error *err) {
        cws_error e = {};
        DaemonFrame *f = NULL;
        int r;

        r = call_recv(x->call, timeout_ms, &f, &e);
        if (r == CWS_DEADLINE_EXCEEDED) {
                if (err)
                        *err = e;
                return r;
        }
        if (r != 0) {
                exec_end(x, r, &e);
                return 0;
        }
        if (f->body_case == REPLY(EXEC_OUTPUT) && f->exec_output->data.len > 0) {
                x->cur = f;
                x->off = 0;
        } else if (f->body_case == REPLY(EXEC_EXIT)) {
                x->has_exit = true;
                x->exit_code = f->exec_exit->exit_code;
        }
        if (f->final) {
                r = f->error ? call_frame_error(f, &e) : 0;
                exec_end(x, r, &e);
        }
        if (x->cur != f)
                daemon_frame_free(f);
        return 0;
}

static int exec_ended(cws_exec *x, cws_error *err) {
        if (x->end_code == 0) {
                cws_ok(err);
                return 0;
        }
        if (err)
                *err = x->end_err;
        return x->end_code;
}

static int64_t mono_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

CWS_EXPORT int cws_exec_read(cws_exec *x, void *buf, size_t size, int timeout_ms, cws_stream *ret_stream,
                             size_t *ret_len, cws_error *err) {
        int64_t end = timeout_ms >= 0 ? mono_ms() + timeout_ms : 0;
        const ProtobufCBinaryData *data;
        size_t n;
        int r;

        if (!x || !buf || size == 0 || !ret_len)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "exec read: exec, buffer and ret_len are required");
        while (!x->cur && !x->ended) {
                r = exec_next(x, timeout_ms < 0 ? -1 : (int)MAX(end - mono_ms(), (int64_t)0), err);
                if (r != 0)
                        return r;
        }
        if (!x->cur) {
                r = exec_ended(x, err);
                if (r == 0)
                        *ret_len = 0;
                return r;
        }
        data = &x->cur->exec_output->data;
        n = MIN(size, data->len - x->off);
        memcpy(buf, data->data + x->off, n);
        if (ret_stream)
                *ret_stream = x->cur->exec_output->stream == CWSANDBOXD__V1__EXEC_OUTPUT__STREAM__STDERR ?
                              CWS_STREAM_STDERR : CWS_STREAM_STDOUT;
        x->off += n;
        if (x->off == data->len) {
                daemon_frame_free(TAKE_PTR(x->cur));
                call_consumed(x->call, x->off);
        }
        *ret_len = n;
        cws_ok(err);
        return 0;
}

static int exec_input(cws_exec *x, Cwsandboxd__V1__ExecInput *in, cws_error *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        int r = 0;

        if (!x)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "exec: required");
        pthread_mutex_lock(&x->lock);
        if (x->ended)
                r = x->end_code ? exec_ended(x, err)
                                : cws_fail(err, CWS_FAILED_PRECONDITION, "the exec has ended");
        pthread_mutex_unlock(&x->lock);
        if (r != 0)
                return r;
        f.body_case = BODY(EXEC_INPUT);
        f.exec_input = in;
        return call_send(x->call, &f, err);
}

CWS_EXPORT int cws_exec_write(cws_exec *x, const void *data, size_t len, cws_error *err) {
        Cwsandboxd__V1__ExecInput in = CWSANDBOXD__V1__EXEC_INPUT__INIT;
        size_t chunk = x ? x->call->conn->chunk_max : 0, n;
        int r = 0;

        if (!data && len > 0)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "exec write: data is required");
        in.input_case = CWSANDBOXD__V1__EXEC_INPUT__INPUT_STDIN;
        for (size_t off = 0; off < len && r == 0; off += n) {
                n = MIN(chunk, len - off);
                in.stdin = (ProtobufCBinaryData) { .len = n, .data = (uint8_t *)data + off };
                r = exec_input(x, &in, err);
        }
        return r;
}

CWS_EXPORT int cws_exec_close_stdin(cws_exec *x, cws_error *err) {
        Cwsandboxd__V1__ExecInput in = CWSANDBOXD__V1__EXEC_INPUT__INIT;

        in.input_case = CWSANDBOXD__V1__EXEC_INPUT__INPUT_CLOSE;
        in.close = true;
        return exec_input(x, &in, err);
}

CWS_EXPORT int cws_exec_resize(cws_exec *x, uint32_t width, uint32_t height, cws_error *err) {
        Cwsandboxd__V1__ExecInput in = CWSANDBOXD__V1__EXEC_INPUT__INIT;
        Cwsandboxd__V1__TtySize size = CWSANDBOXD__V1__TTY_SIZE__INIT;

        if (width == 0 || height == 0)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "resize: width and height must be at least 1");
        size.width = width;
        size.height = height;
        in.input_case = CWSANDBOXD__V1__EXEC_INPUT__INPUT_RESIZE;
        in.resize = &size;
        return exec_input(x, &in, err);
}

CWS_EXPORT int cws_exec_cancel(cws_exec *x, cws_error *err) {
        if (!x)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "exec: required");
        if (x->ended) {
                cws_ok(err);
                return 0;
        }
        return call_cancel(x->call, err);
}

CWS_EXPORT int cws_exec_wait(cws_exec *x, int *ret_exit_code, cws_error *err) {
        int r;

        if (!x)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "exec: required");
        while (!x->ended) {
                if (x->cur) {
                        call_consumed(x->call, x->cur->exec_output->data.len - x->off);
                        daemon_frame_free(TAKE_PTR(x->cur));
                }
                r = exec_next(x, -1, err);
                if (r != 0)
                        return r;
        }
        if (x->cur) {
                daemon_frame_free(TAKE_PTR(x->cur));
        }
        r = exec_ended(x, err);
        if (r == 0 && ret_exit_code)
                *ret_exit_code = x->exit_code;
        return r;
}

CWS_EXPORT void cws_exec_free(cws_exec *x) {
        if (!x)
                return;
        daemon_frame_free(x->cur);
        call_free(x->call);
        pthread_mutex_destroy(&x->lock);
        free(x);
}

/* ---- files ------------------------------------------------------------------------------- */

/* Where read chunks go: memory or a file descriptor. */
typedef struct ReadSink {
        int fd;                         /* -1: memory */
        uint8_t *data;
        size_t len, cap;
} ReadSink;

static int sink_put(ReadSink *k, const ProtobufCBinaryData *d, cws_error *err) {
        const uint8_t *p = d->data;
        size_t left = d->len;
        ssize_t n;

        if (k->fd < 0) {
                if (left + 1 > k->cap - k->len) {
                        size_t cap = MAX(k->cap * 2, k->len + left + 1);
                        uint8_t *q = realloc(k->data, cap);

                        if (!q)
                                return oom(err);
                        k->data = q;
                        k->cap = cap;
                }
                if (left)
                        memcpy(k->data + k->len, p, left);
                k->len += left;
                return 0;
        }
        while (left > 0) {
                n = write(k->fd, p, left);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return cws_fail(err, CWS_INTERNAL, "write to the output: %s", strerror(errno));
                p += n;
                left -= (size_t)n;
        }
        k->len += d->len;
        return 0;
}

static int read_file(cws_conn *c, const char *id, const char *path, ReadSink *sink, cws_error *err) {
        Cwsandboxd__V1__ReadFileRequest req = CWSANDBOXD__V1__READ_FILE_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        DaemonFrame *frame = NULL;
        Call *call = NULL;
        int r;

        if (arg_missing(id) || arg_missing(path))
                return cws_fail(err, CWS_INVALID_ARGUMENT, "read file: sandbox id and path are required");
        req.sandbox_id = (char *)id;
        req.path = (char *)path;
        f.body_case = BODY(READ_FILE);
        f.read_file = &req;
        r = call_new(c, READ_FILE_WINDOW, &call, err);
        if (r != 0)
                return r;
        r = call_send(call, &f, err);
        while (r == 0) {
                r = call_recv(call, -1, &frame, err);
                if (r != 0)
                        break;
                if (frame->error)
                        r = call_frame_error(frame, err);
                else if (frame->body_case == REPLY(FILE_CHUNK)) {
                        r = sink_put(sink, &frame->file_chunk->data, err);
                        call_consumed(call, frame->file_chunk->data.len);
                }
                if (frame->final) {
                        daemon_frame_free(frame);
                        break;
                }
                daemon_frame_free(frame);
        }
        call_free(call);
        if (r == 0)
                cws_ok(err);
        return r;
}

CWS_EXPORT int cws_read_file(cws_conn *c, const char *id, const char *path, void **ret_data, size_t *ret_len,
                             cws_error *err) {
        ReadSink sink = { .fd = -1 };
        int r;

        if (!ret_data)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "ret_data: required");
        r = read_file(c, id, path, &sink, err);
        if (r == 0 && !sink.data && !(sink.data = malloc(1)))
                r = oom(err);
        if (r != 0) {
                free(sink.data);
                return r;
        }
        sink.data[sink.len] = 0;
        *ret_data = sink.data;
        if (ret_len)
                *ret_len = sink.len;
        return 0;
}

CWS_EXPORT int cws_read_file_to_fd(cws_conn *c, const char *id, const char *path, int fd, uint64_t *ret_len,
                                   cws_error *err) {
        ReadSink sink = { .fd = fd };
        int r;

        if (fd < 0)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "fd: invalid");
        r = read_file(c, id, path, &sink, err);
        if (r == 0 && ret_len)
                *ret_len = sink.len;
        return r;
}

/* Send @len bytes as FileChunk frames; stops early when the call has ended. */
static int write_chunks(Call *call, const uint8_t *data, size_t len, cws_error *err) {
        Cwsandboxd__V1__FileChunk chunk = CWSANDBOXD__V1__FILE_CHUNK__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        size_t max = call->conn->chunk_max, off = 0, n;
        int r;

        f.body_case = BODY(FILE_CHUNK);
        f.file_chunk = &chunk;
        do {
                if (call_ready(call))
                        return 0;       /* a refusal came: it is read next */
                n = MIN(max, len - off);
                chunk.data = (ProtobufCBinaryData) { .len = n, .data = (uint8_t *)data + off };
                chunk.last = off + n == len;
                r = call_send(call, &f, err);
                if (r != 0)
                        return r;
                off += n;
        } while (off < len);
        return 0;
}

CWS_EXPORT int cws_write_file(cws_conn *c, const char *id, const char *path, const void *data, size_t len,
                              cws_error *err) {
        Cwsandboxd__V1__WriteFileRequest req = CWSANDBOXD__V1__WRITE_FILE_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        DaemonFrame *frame = NULL;
        Call *call = NULL;
        int r;

        if (arg_missing(id) || arg_missing(path) || (!data && len > 0))
                return cws_fail(err, CWS_INVALID_ARGUMENT, "write file: sandbox id, path and data are required");
        req.sandbox_id = (char *)id;
        req.path = (char *)path;
        req.size = len;
        f.body_case = BODY(WRITE_FILE);
        f.write_file = &req;
        r = call_new(c, 0, &call, err);
        if (r != 0)
                return r;
        r = call_send(call, &f, err);
        if (r == 0)
                r = write_chunks(call, data, len, err);
        while (r == 0) {
                r = call_recv(call, -1, &frame, err);
                if (r != 0)
                        break;
                if (frame->error)
                        r = call_frame_error(frame, err);
                else if (frame->final && frame->body_case != REPLY(WRITE_FILE))
                        r = cws_fail(err, CWS_INTERNAL, "unexpected reply from the daemon to a file write");
                if (frame->final) {
                        daemon_frame_free(frame);
                        break;
                }
                daemon_frame_free(frame);
        }
        call_free(call);
        if (r == 0)
                cws_ok(err);
        return r;
}

CWS_EXPORT int cws_write_file_from_fd(cws_conn *c, const char *id, const char *path, int fd, cws_error *err) {
        _cleanup_free_ uint8_t *buf = NULL;
        size_t len = 0, cap = 0;
        struct stat st;
        ssize_t n;

        if (fd < 0)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "fd: invalid");
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0)
                cap = (size_t)st.st_size + 1;
        for (;;) {
                if (len == cap) {
                        size_t ncap = MAX(cap * 2, (size_t)64 * 1024);
                        uint8_t *p = realloc(buf, ncap);

                        if (!p)
                                return oom(err);
                        buf = p;
                        cap = ncap;
                } else if (!buf && !(buf = malloc(cap)))
                        return oom(err);
                n = read(fd, buf + len, cap - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return cws_fail(err, CWS_INTERNAL, "read the input: %s", strerror(errno));
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        return cws_write_file(c, id, path, buf, len, err);
}

/* ---- logs -------------------------------------------------------------------------------- */

struct cws_logs {
        Call *call;
        bool ended;
        int end_code;
        cws_error end_err;
};

CWS_EXPORT int cws_logs_open(cws_conn *c, const char *id, const cws_logs_options *opts, cws_logs **ret_logs,
                             cws_error *err) {
        Cwsandboxd__V1__LogsRequest req = CWSANDBOXD__V1__LOGS_REQUEST__INIT;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        cws_logs *l;
        int r;

        if (arg_missing(id) || !ret_logs)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "logs: sandbox id and ret_logs are required");
        req.sandbox_id = (char *)id;
        if (opts) {
                req.follow = opts->follow;
                req.tail_lines = opts->tail_lines;
                req.since_time_ms = opts->since_time_ms;
                req.timestamps = opts->timestamps;
        }
        l = calloc(1, sizeof(*l));
        if (!l)
                return oom(err);
        r = call_new(c, LOGS_WINDOW, &l->call, err);
        if (r != 0) {
                free(l);
                return r;
        }
        f.body_case = BODY(LOGS);
        f.logs = &req;
        r = call_send(l->call, &f, err);
        if (r != 0) {
                cws_logs_close(l);
                return r;
        }
        *ret_logs = l;
        return 0;
}

CWS_EXPORT int cws_logs_next(cws_logs *l, int timeout_ms, cws_log_line **ret_line, cws_error *err) {
        int64_t end = timeout_ms >= 0 ? mono_ms() + timeout_ms : 0;
        cws_log_line *line = NULL;
        DaemonFrame *f = NULL;
        cws_error e = {};
        int r;

        if (!l || !ret_line)
                return cws_fail(err, CWS_INVALID_ARGUMENT, "logs next: logs and ret_line are required");
        while (!line && !l->ended) {
                r = call_recv(l->call, timeout_ms < 0 ? -1 : (int)MAX(end - mono_ms(), (int64_t)0), &f, &e);
                if (r == CWS_DEADLINE_EXCEEDED) {
                        if (err)
                                *err = e;
                        return r;
                }
                if (r != 0) {
                        l->ended = true;
                        l->end_code = r;
                        l->end_err = e;
                        break;
                }
                if (f->body_case == REPLY(LOG_LINE)) {
                        line = calloc(1, sizeof(*line));
                        if (!line || !(line->data = dup_bytes(f->log_line->data.data, f->log_line->data.len))) {
                                free(line);
                                daemon_frame_free(f);
                                return oom(err);
                        }
                        line->len = f->log_line->data.len;
                        line->time_ms = f->log_line->time_ms;
                        call_consumed(l->call, line->len);
                }
                if (f->final) {
                        l->ended = true;
                        l->end_code = f->error ? call_frame_error(f, &l->end_err) : 0;
                }
                daemon_frame_free(f);
        }
        if (!line && l->end_code) {
                if (err)
                        *err = l->end_err;
                return l->end_code;
        }
        cws_ok(err);
        *ret_line = line;
        return 0;
}

CWS_EXPORT void cws_log_line_free(cws_log_line *line) {
        if (!line)
                return;
        free(line->data);
        free(line);
}

CWS_EXPORT void cws_logs_close(cws_logs *l) {
        if (!l)
                return;
        call_free(l->call);
        free(l);
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
        m = calloc(1, sizeof(*m));
        if (m) {
                m->prometheus_text = dup_or_empty(mr->prometheus_text, &no_mem);
                m->metrics = calloc(mr->n_values + 1, sizeof(cws_metric));
                for (size_t i = 0; m->metrics && i < mr->n_values; i++, m->n_metrics++) {
                        m->metrics[i].name = dup_or_empty(mr->values[i]->key, &no_mem);
                        m->metrics[i].value = mr->values[i]->value;
                }
        }
        daemon_frame_free(reply);
        if (!m || !m->metrics || no_mem) {
                cws_metrics_free(m);
                return oom(err);
        }
        *ret_metrics = m;
        return 0;
}
