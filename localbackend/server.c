/*
 * The gRPC server of cwsandbox-local: request pools, call contexts, auth,
 * fault injection, unary answers and the Control service.
 *
 * Every rpc is a registered method with a pool of armed requests; the first
 * request message comes with the call (except StreamExec, whose handler reads
 * its own). A small generic pool answers UNIMPLEMENTED for any other method.
 *
 * A Call is allocated when its request is armed and lives until every tag it
 * gave to gRPC has come back (the pending counter), RECV_CLOSE_ON_SERVER has
 * reported the end of the call, its timer is closed and its handler is done
 * with it (a unary answer, or on_done() of a stream). Only tag and timer
 * callbacks free calls or run on_done(); the functions handlers call never do,
 * so a handler may keep using its call until it returns.
 *
 * Order per call: RECV_CLOSE armed first (to learn of cancellation), then
 * auth (unauthenticated calls are not counted), counting and the fault
 * decision, the injected latency, an injected error, decoding, the handler.
 *
 * Shutdown: grpc_server_shutdown_and_notify(), a grace timer that cancels
 * what still runs, and when the notify tag, every armed request and every call
 * are back, grpc_server_destroy() and the caller's done().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grpc/grpc_security.h>

#include "cwsandboxlocal/v1/control.pb-c.h"
#include "google/rpc/error_details.pb-c.h"
#include "google/rpc/status.pb-c.h"
#include "log.h"
#include "pbgrpc.h"
#include "sandbox.h"
#include "server-call.h"

/* Armed requests per method; a burst beyond that waits in gRPC for a re-arm. */
#define REQUESTS_PER_METHOD 16
#define GENERIC_REQUESTS 4
/* The SDK's limit both ways (grpc.max_receive_message_length). */
#define MAX_RECEIVE_MESSAGE_BYTES (100 * 1024 * 1024)
/* Clients keep quiet streams (log follow) alive with pings. */
#define MIN_PING_INTERVAL_MS 1000
/* Longer authorization values are refused without being compared. */
#define AUTHORIZATION_MAX 4096
/* Streams per HTTP/2 connection, as real servers commonly cap them: a client
 * that wants more at once must spread them over several connections. */
#define MAX_CONCURRENT_STREAMS 100
/* The AIP-193 ErrorInfo of an unknown sandbox, as the SDK recognises it. */
#define ERROR_DOMAIN "cwsandbox.com"
#define REASON_SANDBOX_NOT_FOUND "CWSANDBOX_SANDBOX_NOT_FOUND"

typedef struct MethodDef {
        const char *path;
        CallShape shape;
        const ProtobufCMessageDescriptor *request;
} MethodDef;

#define SANDBOX_SERVICE "/coreweave.sandbox.v1.SandboxService/"
#define CONTROL_SERVICE "/cwsandboxlocal.v1.Control/"

static const MethodDef method_defs[_RPC_MAX] = {
        [RPC_CREATE_SANDBOX] = { SANDBOX_SERVICE "CreateSandbox", CALL_UNARY,
                                 &coreweave__sandbox__v1__create_sandbox_request__descriptor },
        [RPC_GET_SANDBOX] = { SANDBOX_SERVICE "GetSandbox", CALL_UNARY,
                              &coreweave__sandbox__v1__get_sandbox_request__descriptor },
        [RPC_LIST_SANDBOXES] = { SANDBOX_SERVICE "ListSandboxes", CALL_UNARY,
                                 &coreweave__sandbox__v1__list_sandboxes_request__descriptor },
        [RPC_DELETE_SANDBOX] = { SANDBOX_SERVICE "DeleteSandbox", CALL_UNARY,
                                 &coreweave__sandbox__v1__delete_sandbox_request__descriptor },
        [RPC_EXEC] = { SANDBOX_SERVICE "Exec", CALL_UNARY,
                       &coreweave__sandbox__v1__exec_request__descriptor },
        [RPC_STREAM_EXEC] = { SANDBOX_SERVICE "StreamExec", CALL_BIDI,
                              &coreweave__sandbox__v1__exec_stream_request__descriptor },
        [RPC_STREAM_LOGS] = { SANDBOX_SERVICE "StreamLogs", CALL_SERVER_STREAM,
                              &coreweave__sandbox__v1__stream_logs_request__descriptor },
        [RPC_WRITE_FILE] = { SANDBOX_SERVICE "WriteFile", CALL_UNARY,
                             &coreweave__sandbox__v1__write_file_request__descriptor },
        [RPC_READ_FILE] = { SANDBOX_SERVICE "ReadFile", CALL_UNARY,
                            &coreweave__sandbox__v1__read_file_request__descriptor },
        [RPC_CONTROL_GET_COUNTERS] = { CONTROL_SERVICE "GetCounters", CALL_UNARY,
                                       &cwsandboxlocal__v1__get_counters_request__descriptor },
        [RPC_CONTROL_SET_FAULTS] = { CONTROL_SERVICE "SetFaults", CALL_UNARY,
                                     &cwsandboxlocal__v1__set_faults_request__descriptor },
        [RPC_CONTROL_SET_QUOTA] = { CONTROL_SERVICE "SetQuota", CALL_UNARY,
                                    &cwsandboxlocal__v1__set_quota_request__descriptor },
};

struct Server {
        Backend *backend;
        void *handles[_RPC_MAX];
        char **addresses;
        size_t n_addresses;
        unsigned n_armed;               /* requests given to gRPC, not yet back */
        bool shutting_down;
        bool notified;                  /* the shutdown tag came back */
        bool destroying;
        CqTag shutdown_tag;
        uv_timer_t grace_timer;
        void (*done)(Backend *b);
};

/* An unknown method: answered UNIMPLEMENTED in one batch. */
typedef struct GenericCall {
        Server *server;
        grpc_call *call;
        grpc_call_details details;
        grpc_metadata_array md;
        grpc_slice status_details;
        int cancelled;
        CqTag request_tag, done_tag;
} GenericCall;

struct UnaryCall {
        Call base;
        grpc_byte_buffer *reply;        /* held while the answer is delayed */
        grpc_status_code reply_code;
        char *reply_details;
        bool answered;
        void (*on_cancel)(UnaryCall *c, void *userdata);
        void *on_cancel_userdata;
        bool on_cancel_fired;
};

static void server_maybe_destroy(Server *srv);
static int call_arm(Server *srv, RpcMethod m);
static void call_check(Call *c);

static UnaryCall *call_unary(Call *c) {
        return container_of(c, UnaryCall, base);
}

static void unary_call_closed(UnaryCall *u);
static bool unary_call_finished(const UnaryCall *u);
static void unary_call_release(UnaryCall *u);

/* --- batches ------------------------------------------------------------ */

int call_start_batch(Call *c, const grpc_op *ops, size_t n, CqTag *tag) {
        grpc_call_error e;

        e = grpc_call_start_batch(c->call, ops, n, tag, NULL);
        if (e != GRPC_CALL_OK) {
                /* A bug of ours, not of the client: end the call so that
                 * RECV_CLOSE comes back and the context is released. */
                log_error("%s: grpc_call_start_batch(op %d) failed: %d",
                          rpc_method_name(c->method), ops[0].op, e);
                grpc_call_cancel(c->call, NULL);
                return -EIO;
        }
        c->pending++;
        return 0;
}

/* Every handler words an unknown sandbox as "sandbox ID not found". */
static bool details_sandbox_not_found(const char *details) {
        static const char prefix[] = "sandbox ", suffix[] = " not found";
        size_t n = strlen(details);

        return n > strlen(prefix) + strlen(suffix) && strncmp(details, prefix, strlen(prefix)) == 0 &&
               streq(details + n - strlen(suffix), suffix);
}

/* @msg packed into @any as type @type_url; false when memory ran out. */
static bool any_pack(Google__Protobuf__Any *any, const char *type_url, const ProtobufCMessage *msg) {
        any->type_url = (char *)type_url;
        any->value.len = protobuf_c_message_get_packed_size(msg);
        any->value.data = malloc(any->value.len ? any->value.len : 1);
        if (!any->value.data)
                return false;
        protobuf_c_message_pack(msg, any->value.data);
        return true;
}

/*
 * A google.rpc.Status, packed, for the grpc-status-details-bin trailer: an
 * ErrorInfo (our domain) when there is a @reason, then a RetryInfo when
 * there is a delay; the order clients scan them in does not matter, as each
 * takes the first of its kind. An empty slice when memory ran out.
 */
static grpc_slice status_details_bin(grpc_status_code code, const char *message, const char *reason,
                                     uint32_t retry_delay_ms) {
        Google__Rpc__ErrorInfo info = GOOGLE__RPC__ERROR_INFO__INIT;
        Google__Rpc__RetryInfo retry = GOOGLE__RPC__RETRY_INFO__INIT;
        Google__Protobuf__Duration delay = GOOGLE__PROTOBUF__DURATION__INIT;
        Google__Protobuf__Any any[2] = { GOOGLE__PROTOBUF__ANY__INIT, GOOGLE__PROTOBUF__ANY__INIT };
        Google__Protobuf__Any *details[2];
        Google__Rpc__Status st = GOOGLE__RPC__STATUS__INIT;
        grpc_slice s = grpc_empty_slice();
        size_t n = 0;
        bool good = true;

        info.reason = (char *)reason;
        info.domain = (char *)ERROR_DOMAIN;
        delay.seconds = retry_delay_ms / 1000;
        delay.nanos = (int32_t)(retry_delay_ms % 1000) * 1000000;
        retry.retry_delay = &delay;
        if (reason)
                good = any_pack(&any[n], "type.googleapis.com/google.rpc.ErrorInfo", &info.base) && ++n;
        if (good && retry_delay_ms)
                good = any_pack(&any[n], "type.googleapis.com/google.rpc.RetryInfo", &retry.base) && ++n;
        for (size_t i = 0; i < n; i++)
                details[i] = &any[i];
        st.code = (int32_t)code;
        st.message = (char *)message;
        st.n_details = n;
        st.details = details;
        if (good) {
                s = grpc_slice_malloc(google__rpc__status__get_packed_size(&st));
                google__rpc__status__pack(&st, GRPC_SLICE_START_PTR(s));
        }
        for (size_t i = 0; i < ELEMENTSOF(any); i++)
                free(any[i].value.data);
        return s;
}

int call_send_status(Call *c, grpc_byte_buffer *msg, grpc_status_code code, const char *details) {
        grpc_op ops[3] = {};
        grpc_metadata trailer = {};
        size_t n = 0;
        int r;

        if (!c->md_sent) {
                ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
                n++;
                c->md_sent = true;
        }
        if (msg) {
                ops[n].op = GRPC_OP_SEND_MESSAGE;
                ops[n].data.send_message.send_message = msg;
                n++;
        }
        grpc_slice_unref(c->status_details);
        c->status_details = grpc_slice_from_copied_string(details ? details : "");
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = code;
        ops[n].data.send_status_from_server.status_details = code == GRPC_STATUS_OK ? NULL : &c->status_details;
        if (code == GRPC_STATUS_NOT_FOUND && details && details_sandbox_not_found(details))
                c->error_reason = REASON_SANDBOX_NOT_FOUND;
        if (code != GRPC_STATUS_OK && (c->error_reason || c->retry_delay_ms)) {
                trailer.key = grpc_slice_from_static_string("grpc-status-details-bin");
                trailer.value = status_details_bin(code, details ? details : "", c->error_reason, c->retry_delay_ms);
                /* Out of memory: the status goes without its details. */
                if (!GRPC_SLICE_IS_EMPTY(trailer.value)) {
                        ops[n].data.send_status_from_server.trailing_metadata_count = 1;
                        ops[n].data.send_status_from_server.trailing_metadata = &trailer;
                }
        }
        n++;

        c->status_started = true;
        c->result = code;
        r = call_start_batch(c, ops, n, &c->status_tag);
        /* start_batch took its own reference to the trailer's value. */
        grpc_slice_unref(trailer.value);
        if (msg)
                grpc_byte_buffer_destroy(msg);
        return r;
}

/* Answer without the handler: auth, injected errors, undecodable requests. */
static void call_refuse(Call *c, grpc_status_code code, const char *details, bool injected) {
        c->injected = injected;
        (void)call_send_status(c, NULL, code, details);
        if (c->shape != CALL_UNARY)
                server_stream_mark_ended(call_stream(c));
}

/* --- timer ---------------------------------------------------------------- */

static void call_on_timer(uv_timer_t *t) {
        Call *c = container_of(t, Call, timer);
        void (*fn)(Call *c) = c->timer_fn;

        c->timer_active = false;
        c->timer_fn = NULL;
        fn(c);
        call_check(c);
}

void call_timer_start(Call *c, uint64_t ms, void (*fn)(Call *c)) {
        if (!c->timer_inited) {
                (void)uv_timer_init(c->server->backend->loop, &c->timer);
                c->timer_inited = true;
        }
        c->timer_fn = fn;
        c->timer_active = true;
        (void)uv_timer_start(&c->timer, call_on_timer, ms, 0);
}

/* --- life cycle ----------------------------------------------------------- */

static Call *call_new(Server *srv, RpcMethod m) {
        CallShape shape = method_defs[m].shape;
        Call *c;

        if (shape == CALL_UNARY) {
                UnaryCall *u = calloc(1, sizeof(UnaryCall));

                c = u ? &u->base : NULL;
        } else
                c = server_stream_alloc();
        if (!c)
                return NULL;
        c->server = srv;
        c->method = m;
        c->shape = shape;
        c->status_details = grpc_empty_slice();
        grpc_metadata_array_init(&c->md);
        return c;
}

static void call_release(Call *c) {
        Server *srv = c->server;
        bool live = c->live;

        if (c->request)
                protobuf_c_message_free_unpacked(c->request, NULL);
        if (c->payload)
                grpc_byte_buffer_destroy(c->payload);
        grpc_metadata_array_destroy(&c->md);
        grpc_slice_unref(c->status_details);
        if (c->call)
                grpc_call_unref(c->call);
        /* Frees the memory c points into. */
        if (c->shape != CALL_UNARY)
                server_stream_release(call_stream(c));
        else
                unary_call_release(call_unary(c));

        if (live) {
                srv->backend->n_calls--;
                server_maybe_destroy(srv);
        }
}

static void call_on_timer_closed(uv_handle_t *h) {
        call_release(container_of((uv_timer_t *)h, Call, timer));
}

static void call_free(Call *c) {
        Backend *b = c->server->backend;

        if (c->counted) {
                /* A client that left before our status got no answer: that is
                 * not an error of ours, so it is not counted as one. */
                bool answered = c->status_started && !c->client_left;
                grpc_status_code code = answered ? c->result : GRPC_STATUS_CANCELLED;

                if (answered)
                        faults_count_result(&b->faults, c->method, code, c->injected);
                log_debug("%s: %s after %llu ms%s", rpc_method_name(c->method), grpc_status_name(code),
                          (unsigned long long)(uv_now(b->loop) - c->start_ms),
                          c->injected ? " (injected)" : "");
        }
        if (c->timer_inited)
                uv_close((uv_handle_t *)&c->timer, call_on_timer_closed);
        else
                call_release(c);
}

/* Free the call once nothing refers to it any more. Tag and timer callbacks only. */
static void call_check(Call *c) {
        if (c->pending > 0 || !c->closed || c->timer_active || c->freeing)
                return;
        if (c->shape == CALL_UNARY) {
                if (!unary_call_finished(call_unary(c)))
                        return;
        } else if (!server_stream_finished(call_stream(c)))
                return;
        c->freeing = true;
        call_free(c);
}

void call_tag_done(Call *c) {
        c->pending--;
        call_check(c);
}

static void call_on_close(CqTag *tag, bool ok) {
        Call *c = container_of(tag, Call, close_tag);

        c->pending--;
        c->closed = true;
        if (!ok)
                c->cancelled = 1;
        if (c->cancelled) {
                if (c->shape == CALL_UNARY)
                        unary_call_closed(call_unary(c));
                else
                        server_stream_closed(call_stream(c));
        }
        call_check(c);
}

static void call_on_status(CqTag *tag, bool ok) {
        Call *c = container_of(tag, Call, status_tag);

        c->status_ok = ok;
        call_tag_done(c);
}

/* --- running a call ------------------------------------------------------- */

static bool bearer_matches(const char *value, const char *token) {
        size_t n = strlen(token);
        unsigned char diff = 0;

        if (strncmp(value, "Bearer ", 7) != 0)
                return false;
        value += 7;
        if (strlen(value) != n)
                return false;
        /* Compare every byte, so the time taken tells nothing about the token. */
        for (size_t i = 0; i < n; i++)
                diff |= (unsigned char)value[i] ^ (unsigned char)token[i];
        return diff == 0;
}

static bool call_authorized(const Call *c) {
        const char *token = c->server->backend->token;
        char value[AUTHORIZATION_MAX];

        if (!token)
                return true;
        if (!grpc_metadata_get(&c->md, "authorization", value, sizeof(value)))
                return false;
        return bearer_matches(value, token);
}

static void rpc_get_counters(Backend *b, UnaryCall *c, const Cwsandboxlocal__V1__GetCountersRequest *req);
static void rpc_set_faults(Backend *b, UnaryCall *c, const Cwsandboxlocal__V1__SetFaultsRequest *req);
static void rpc_set_quota(Backend *b, UnaryCall *c, const Cwsandboxlocal__V1__SetQuotaRequest *req);

static void call_dispatch(Call *c) {
        Backend *b = c->server->backend;
        UnaryCall *u = c->shape == CALL_UNARY ? call_unary(c) : NULL;
        const void *req = c->request;

        switch (c->method) {
        case RPC_CREATE_SANDBOX:
                rpc_create_sandbox(b, u, req);
                break;
        case RPC_GET_SANDBOX:
                rpc_get_sandbox(b, u, req);
                break;
        case RPC_LIST_SANDBOXES:
                rpc_list_sandboxes(b, u, req);
                break;
        case RPC_DELETE_SANDBOX:
                rpc_delete_sandbox(b, u, req);
                break;
        case RPC_EXEC:
                rpc_exec(b, u, req);
                break;
        case RPC_STREAM_EXEC:
                rpc_stream_exec(b, call_stream(c));
                break;
        case RPC_STREAM_LOGS:
                rpc_stream_logs(b, call_stream(c), req);
                break;
        case RPC_WRITE_FILE:
                rpc_write_file(b, u, req);
                break;
        case RPC_READ_FILE:
                rpc_read_file(b, u, req);
                break;
        case RPC_CONTROL_GET_COUNTERS:
                rpc_get_counters(b, u, req);
                break;
        case RPC_CONTROL_SET_FAULTS:
                rpc_set_faults(b, u, req);
                break;
        case RPC_CONTROL_SET_QUOTA:
                rpc_set_quota(b, u, req);
                break;
        default:
                call_refuse(c, GRPC_STATUS_UNIMPLEMENTED, "method not implemented", false);
        }
}

/* After the injected latency, if any. */
static void call_run(Call *c) {
        if (c->closed)
                return;         /* the client left while we waited */
        if (c->fault.fail) {
                c->retry_delay_ms = c->fault.retry_delay_ms;
                call_refuse(c, c->fault.code, "injected fault", true);
                return;
        }
        if (c->shape != CALL_BIDI) {
                c->request = pb_from_byte_buffer(method_defs[c->method].request, c->payload);
                grpc_byte_buffer_destroy(c->payload);
                c->payload = NULL;
                if (!c->request) {
                        call_refuse(c, GRPC_STATUS_INVALID_ARGUMENT, "malformed request", false);
                        return;
                }
        }
        if (c->shape != CALL_UNARY && c->fault.drop)
                server_stream_set_drop(call_stream(c));
        c->handled = true;
        call_dispatch(c);
}

static void call_begin(Call *c) {
        Backend *b = c->server->backend;
        grpc_op op = {
                .op = GRPC_OP_RECV_CLOSE_ON_SERVER,
                .data.recv_close_on_server.cancelled = &c->cancelled,
        };

        c->start_ms = uv_now(b->loop);
        c->close_tag.fn = call_on_close;
        c->status_tag.fn = call_on_status;
        if (call_start_batch(c, &op, 1, &c->close_tag) < 0) {
                c->closed = true;
                c->cancelled = 1;
                return;
        }

        if (!call_authorized(c)) {
                call_refuse(c, GRPC_STATUS_UNAUTHENTICATED, "missing or invalid bearer token", false);
                return;
        }
        c->counted = true;
        c->fault = faults_decide(&b->faults, c->method);
        if (c->fault.latency_ms > 0) {
                call_timer_start(c, c->fault.latency_ms, call_run);
                return;
        }
        call_run(c);
}

static void call_on_request(CqTag *tag, bool ok) {
        Call *c = container_of(tag, Call, request_tag);
        Server *srv = c->server;

        c->pending--;
        srv->n_armed--;
        if (!ok) {
                /* Shutdown: the request ends without a call. */
                call_release(c);
                server_maybe_destroy(srv);
                return;
        }
        c->live = true;
        srv->backend->n_calls++;
        if (!srv->shutting_down)
                (void)call_arm(srv, c->method);
        call_begin(c);
        call_check(c);
}

static int call_arm(Server *srv, RpcMethod m) {
        grpc_completion_queue *cq = srv->backend->cq.cq;
        grpc_call_error e;
        Call *c;

        c = call_new(srv, m);
        if (!c) {
                log_error("out of memory arming %s", rpc_method_name(m));
                return -ENOMEM;
        }
        c->request_tag.fn = call_on_request;
        e = grpc_server_request_registered_call(srv->backend->server, srv->handles[m], &c->call,
                                                &c->deadline, &c->md,
                                                c->shape == CALL_BIDI ? NULL : &c->payload,
                                                cq, cq, &c->request_tag);
        if (e != GRPC_CALL_OK) {
                log_error("cannot arm a request for %s: %d", rpc_method_name(m), e);
                call_release(c);
                return -EIO;
        }
        c->pending++;
        srv->n_armed++;
        return 0;
}

/* --- unknown methods ------------------------------------------------------ */

static int generic_arm(Server *srv);

static void generic_free(GenericCall *g) {
        grpc_call_details_destroy(&g->details);
        grpc_metadata_array_destroy(&g->md);
        grpc_slice_unref(g->status_details);
        if (g->call)
                grpc_call_unref(g->call);
        free(g);
}

static void generic_on_done(CqTag *tag, bool ok) {
        GenericCall *g = container_of(tag, GenericCall, done_tag);
        Server *srv = g->server;

        generic_free(g);
        srv->backend->n_calls--;
        server_maybe_destroy(srv);
}

static void generic_on_request(CqTag *tag, bool ok) {
        GenericCall *g = container_of(tag, GenericCall, request_tag);
        Server *srv = g->server;
        char text[300];
        grpc_op ops[3] = {};
        grpc_call_error e;
        int len;

        srv->n_armed--;
        if (!ok) {
                generic_free(g);
                server_maybe_destroy(srv);
                return;
        }
        srv->backend->n_calls++;
        if (!srv->shutting_down)
                (void)generic_arm(srv);

        len = (int)MIN(GRPC_SLICE_LENGTH(g->details.method), 200u);
        snprintf(text, sizeof(text), "unknown method %.*s", len,
                 (const char *)GRPC_SLICE_START_PTR(g->details.method));
        log_debug("%s", text);
        g->status_details = grpc_slice_from_copied_string(text);
        ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[1].data.send_status_from_server.status = GRPC_STATUS_UNIMPLEMENTED;
        ops[1].data.send_status_from_server.status_details = &g->status_details;
        ops[2].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        ops[2].data.recv_close_on_server.cancelled = &g->cancelled;
        e = grpc_call_start_batch(g->call, ops, ELEMENTSOF(ops), &g->done_tag, NULL);
        if (e != GRPC_CALL_OK) {
                log_error("cannot answer an unknown method: %d", e);
                generic_on_done(&g->done_tag, false);
        }
}

static int generic_arm(Server *srv) {
        grpc_completion_queue *cq = srv->backend->cq.cq;
        GenericCall *g;
        grpc_call_error e;

        g = calloc(1, sizeof(*g));
        if (!g)
                return -ENOMEM;
        g->server = srv;
        g->request_tag.fn = generic_on_request;
        g->done_tag.fn = generic_on_done;
        g->status_details = grpc_empty_slice();
        grpc_call_details_init(&g->details);
        grpc_metadata_array_init(&g->md);
        e = grpc_server_request_call(srv->backend->server, &g->call, &g->details, &g->md, cq, cq, &g->request_tag);
        if (e != GRPC_CALL_OK) {
                log_error("cannot arm a generic request: %d", e);
                generic_free(g);
                return -EIO;
        }
        srv->n_armed++;
        return 0;
}

/* --- unary answers -------------------------------------------------------- */

static void unary_send(Call *c) {
        UnaryCall *u = call_unary(c);
        grpc_byte_buffer *msg = TAKE_PTR(u->reply);

        c->client_left = c->closed;
        (void)call_send_status(c, msg, u->reply_code, u->reply_details);
}

static void unary_answer(UnaryCall *u, grpc_byte_buffer *msg, grpc_status_code code, char *details) {
        Call *c = &u->base;

        if (u->answered) {
                log_warning("%s: answered twice; the second answer is dropped", rpc_method_name(c->method));
                if (msg)
                        grpc_byte_buffer_destroy(msg);
                free(details);
                return;
        }
        u->answered = true;
        u->reply = msg;
        u->reply_code = code;
        u->reply_details = details;
        if (c->fault.reply_delay_ms > 0 && !c->closed) {
                /* The handler's work is done (a created sandbox exists); only the answer waits. */
                call_timer_start(c, c->fault.reply_delay_ms, unary_send);
                return;
        }
        unary_send(c);
}

void unary_call_reply(UnaryCall *u, const ProtobufCMessage *resp) {
        unary_answer(u, pb_to_byte_buffer(resp), GRPC_STATUS_OK, NULL);
}

void unary_call_set_details(UnaryCall *u, const char *reason, uint32_t retry_delay_ms) {
        u->base.error_reason = reason;
        u->base.retry_delay_ms = retry_delay_ms;
}

void unary_call_fail(UnaryCall *u, grpc_status_code code, const char *fmt, ...) {
        char *details = NULL;
        va_list ap;

        if (code == GRPC_STATUS_OK) {
                log_error("%s: failed with status OK", rpc_method_name(u->base.method));
                code = GRPC_STATUS_INTERNAL;
        }
        if (fmt) {
                va_start(ap, fmt);
                if (vasprintf(&details, fmt, ap) < 0)
                        details = NULL;
                va_end(ap);
        }
        unary_answer(u, NULL, code, details);
}

bool unary_call_cancelled(const UnaryCall *u) {
        return u->base.closed && u->base.cancelled;
}

static void unary_fire_on_cancel(Call *c) {
        UnaryCall *u = call_unary(c);

        if (u->on_cancel_fired || u->answered || !u->on_cancel)
                return;
        u->on_cancel_fired = true;
        u->on_cancel(u, u->on_cancel_userdata);
}

void unary_call_on_cancel(UnaryCall *u, void (*fn)(UnaryCall *c, void *userdata), void *userdata) {
        Call *c = &u->base;

        u->on_cancel = fn;
        u->on_cancel_userdata = userdata;
        /* Registered after the client left: run it from the loop, never from
         * inside the handler that registers it. */
        if (fn && unary_call_cancelled(u) && !u->answered && !u->on_cancel_fired && !c->timer_active)
                call_timer_start(c, 0, unary_fire_on_cancel);
}

static void unary_call_closed(UnaryCall *u) {
        unary_fire_on_cancel(&u->base);
}

static bool unary_call_finished(const UnaryCall *u) {
        return !u->base.handled || u->answered;
}

static void unary_call_release(UnaryCall *u) {
        if (u->reply)
                grpc_byte_buffer_destroy(u->reply);
        free(u->reply_details);
        free(u);
}

/* --- Control -------------------------------------------------------------- */

static void rpc_get_counters(Backend *b, UnaryCall *c, const Cwsandboxlocal__V1__GetCountersRequest *req) {
        Cwsandboxlocal__V1__GetCountersResponse resp = CWSANDBOXLOCAL__V1__GET_COUNTERS_RESPONSE__INIT;
        Cwsandboxlocal__V1__MethodCounter counters[_RPC_MAX], *ptrs[_RPC_MAX];
        unsigned alive = 0, total = 0;

        for (int m = 0; m < _RPC_MAX; m++) {
                const MethodCounters *mc = &b->faults.counters[m];

                counters[m] = (Cwsandboxlocal__V1__MethodCounter)CWSANDBOXLOCAL__V1__METHOD_COUNTER__INIT;
                counters[m].method = (char *)rpc_method_name(m);
                counters[m].calls = mc->calls;
                counters[m].errors = mc->errors;
                counters[m].injected = mc->injected;
                ptrs[m] = &counters[m];
        }
        sandboxes_count(b, &alive, &total);
        resp.n_methods = _RPC_MAX;
        resp.methods = ptrs;
        resp.sandboxes_alive = alive;
        resp.sandboxes_total = total;
        resp.processes = b->n_processes;
        resp.sandboxes_alive_peak = b->alive_peak;
        resp.quota_rejections = b->quota.rejections;
        unary_call_reply(c, &resp.base);

        if (req->reset) {
                memset(b->faults.counters, 0, sizeof(b->faults.counters));
                b->alive_peak = b->n_alive;
                b->quota.rejections = 0;
        }
}

static int fault_rule_from_proto(const Cwsandboxlocal__V1__Fault *f, FaultRule *ret) {
        if (f->error_code < 0 || f->error_code > GRPC_STATUS_UNAUTHENTICATED)
                return -EINVAL;
        *ret = (FaultRule){
                .latency_ms = f->latency_ms,
                .error_rate = f->error_rate,
                .error_code = (grpc_status_code)f->error_code,
                .drop_rate = f->drop_rate,
                .reply_delay_ms = f->reply_delay_ms,
                .remaining = f->remaining,
                .retry_delay_ms = f->retry_delay_ms,
        };
        return 0;
}

static void rpc_set_faults(Backend *b, UnaryCall *c, const Cwsandboxlocal__V1__SetFaultsRequest *req) {
        Cwsandboxlocal__V1__SetFaultsResponse resp = CWSANDBOXLOCAL__V1__SET_FAULTS_RESPONSE__INIT;
        Faults next = b->faults;

        /* All or nothing: build the new rule set aside, then swap it in. */
        faults_clear(&next);
        for (size_t i = 0; i < req->n_faults; i++) {
                const Cwsandboxlocal__V1__Fault *f = req->faults[i];
                RpcMethod m = rpc_method_from_name(f->method);
                FaultRule rule;

                if (!streq(f->method, "*") && (m < 0 || m >= RPC_FAULTABLE_MAX)) {
                        unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT,
                                        "fault %zu: unknown method \"%.64s\"", i, f->method);
                        return;
                }
                if (fault_rule_from_proto(f, &rule) < 0 || faults_set(&next, f->method, &rule) < 0) {
                        unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT,
                                        "fault %zu (%.64s): rates must be within [0, 1] and error_code a gRPC status",
                                        i, f->method);
                        return;
                }
        }
        memcpy(b->faults.rules, next.rules, sizeof(next.rules));
        log_notice("fault injection: %zu rule(s) set", req->n_faults);
        unary_call_reply(c, &resp.base);
}

static void rpc_set_quota(Backend *b, UnaryCall *c, const Cwsandboxlocal__V1__SetQuotaRequest *req) {
        Cwsandboxlocal__V1__SetQuotaResponse resp = CWSANDBOXLOCAL__V1__SET_QUOTA_RESPONSE__INIT;

        if (!(req->creates_per_second >= 0 && req->creates_per_second <= 1e6)) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "creates_per_second: must be 0..1000000");
                return;
        }
        b->quota.max_alive = req->max_alive;
        b->quota.rate = req->creates_per_second;
        b->quota.tokens = req->creates_per_second > 0 ? fmax(1.0, ceil(req->creates_per_second)) : 0;
        b->quota.last_ms = uv_now(b->loop);
        b->quota.retry_delay_ms = req->retry_delay_ms;
        log_notice("quota: at most %u alive, %g creates/s (0 = no limit), retry hint %u ms", req->max_alive,
                   req->creates_per_second, req->retry_delay_ms);
        unary_call_reply(c, &resp.base);
}

/* --- server --------------------------------------------------------------- */

static int server_remember_address(Server *srv, const char *address, int port) {
        const char *colon = strrchr(address, ':');
        char **a;
        char *s;

        a = reallocarray(srv->addresses, srv->n_addresses + 1, sizeof(char *));
        if (!a)
                return -ENOMEM;
        srv->addresses = a;

        /* "HOST:0" asks for any free port; report the one gRPC chose. */
        if (strncmp(address, "unix:", 5) == 0 || strncmp(address, "unix-abstract:", 14) == 0 || !colon || port <= 0)
                s = strdup(address);
        else if (asprintf(&s, "%.*s:%d", (int)(colon - address), address, port) < 0)
                s = NULL;
        if (!s)
                return -ENOMEM;
        srv->addresses[srv->n_addresses++] = s;
        return 0;
}

static int server_add_ports(Server *srv, char *const *listen, size_t n_listen) {
        grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
        int r = 0;

        for (size_t i = 0; i < n_listen && r == 0; i++) {
                int port = grpc_server_add_http2_port(srv->backend->server, listen[i], creds);

                if (port == 0) {
                        log_error("cannot listen on %s (address in use or not valid)", listen[i]);
                        r = -EADDRNOTAVAIL;
                } else
                        r = server_remember_address(srv, listen[i], port);
        }
        grpc_server_credentials_release(creds);
        return r;
}

static int server_arm_pools(Server *srv) {
        int r;

        for (int m = 0; m < _RPC_MAX; m++)
                for (int i = 0; i < REQUESTS_PER_METHOD; i++) {
                        r = call_arm(srv, m);
                        if (r < 0)
                                return r;
                }
        for (int i = 0; i < GENERIC_REQUESTS; i++) {
                r = generic_arm(srv);
                if (r < 0)
                        return r;
        }
        return 0;
}

int server_start(Backend *b, char *const *listen, size_t n_listen) {
        grpc_arg args[] = {
                { GRPC_ARG_INTEGER, (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, { .integer = MAX_RECEIVE_MESSAGE_BYTES } },
                { GRPC_ARG_INTEGER, (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, { .integer = -1 } },
                { GRPC_ARG_INTEGER, (char *)GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, { .integer = 1 } },
                { GRPC_ARG_INTEGER, (char *)GRPC_ARG_MAX_CONCURRENT_STREAMS, { .integer = MAX_CONCURRENT_STREAMS } },
                { GRPC_ARG_INTEGER, (char *)GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                  { .integer = MIN_PING_INTERVAL_MS } },
                /* A port another process holds must fail, not be shared. */
                { GRPC_ARG_INTEGER, (char *)GRPC_ARG_ALLOW_REUSEPORT, { .integer = 0 } },
        };
        grpc_channel_args channel_args = { ELEMENTSOF(args), args };
        Server *srv;
        int r;

        srv = calloc(1, sizeof(*srv));
        if (!srv)
                return -ENOMEM;
        srv->backend = b;
        b->srv = srv;
        b->server = grpc_server_create(&channel_args, NULL);
        grpc_server_register_completion_queue(b->server, b->cq.cq, NULL);

        for (int m = 0; m < _RPC_MAX; m++) {
                grpc_server_register_method_payload_handling payload =
                        method_defs[m].shape == CALL_BIDI ? GRPC_SRM_PAYLOAD_NONE
                                                          : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER;

                srv->handles[m] = grpc_server_register_method(b->server, method_defs[m].path, NULL, payload, 0);
                if (!srv->handles[m]) {
                        log_error("cannot register %s", method_defs[m].path);
                        return -EINVAL;
                }
        }

        r = server_add_ports(srv, listen, n_listen);
        if (r < 0)
                return r;
        grpc_server_start(b->server);
        return server_arm_pools(srv);
}

char *const *server_addresses(const Backend *b, size_t *ret_n) {
        if (!b->srv) {
                *ret_n = 0;
                return NULL;
        }
        *ret_n = b->srv->n_addresses;
        return b->srv->addresses;
}

static void server_on_grace_closed(uv_handle_t *h) {
        Server *srv = container_of((uv_timer_t *)h, Server, grace_timer);
        Backend *b = srv->backend;
        void (*done)(Backend *b) = srv->done;

        grpc_server_destroy(b->server);
        b->server = NULL;
        for (size_t i = 0; i < srv->n_addresses; i++)
                free(srv->addresses[i]);
        free(srv->addresses);
        free(srv);
        b->srv = NULL;
        log_debug("server destroyed");
        if (done)
                done(b);
}

static void server_maybe_destroy(Server *srv) {
        if (!srv->shutting_down || !srv->notified || srv->destroying)
                return;
        if (srv->n_armed > 0 || srv->backend->n_calls > 0)
                return;
        srv->destroying = true;
        uv_close((uv_handle_t *)&srv->grace_timer, server_on_grace_closed);
}

static void server_on_shutdown(CqTag *tag, bool ok) {
        Server *srv = container_of(tag, Server, shutdown_tag);

        srv->notified = true;
        server_maybe_destroy(srv);
}

static void server_on_grace(uv_timer_t *t) {
        Server *srv = container_of(t, Server, grace_timer);

        if (srv->backend->n_calls > 0)
                log_notice("cancelling %u call(s) still running", srv->backend->n_calls);
        grpc_server_cancel_all_calls(srv->backend->server);
}

void server_shutdown(Backend *b, unsigned grace_ms, void (*done)(Backend *b)) {
        Server *srv = b->srv;

        if (!srv) {
                if (done)
                        done(b);
                return;
        }
        if (srv->shutting_down)
                return;
        srv->shutting_down = true;
        srv->done = done;
        srv->shutdown_tag.fn = server_on_shutdown;
        (void)uv_timer_init(b->loop, &srv->grace_timer);
        (void)uv_timer_start(&srv->grace_timer, server_on_grace, grace_ms, 0);
        grpc_server_shutdown_and_notify(b->server, b->cq.cq, &srv->shutdown_tag);
}
