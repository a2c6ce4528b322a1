/*
 * The daemon's gRPC client of SandboxService: a pool of channels, unary calls
 * and streams on the shared CqLoop. See backend.h.
 *
 * Every call and stream is a BackendOp on the backend's live list from the
 * moment it is started until its callback has returned; backend_shutdown()
 * cancels what is on the list and finishes once the list is empty. An op
 * gives gRPC a tag per batch and is freed only when every tag has come back.
 *
 * Unary: one batch of six ops; its completion carries the status, so it is
 * the op's only tag. Streams: a send lane (initial metadata with the first
 * message, then one message at a time from a write queue, then the
 * half-close), a receive lane (one RECV_MESSAGE at a time, armed by the
 * caller), and a status batch started at once that completes last. A stream
 * is done when its status has arrived and neither lane has a batch out.
 *
 * Nothing the caller does ever runs a callback from inside the caller's own
 * function: outcomes come from the CQ, and the rare outcome without a batch
 * (a refused start_batch, a call after shutdown began) is queued and
 * delivered from a zero timer.
 *
 * The authorization value lives in a gRPC slice whose destructor wipes it, so
 * the key is cleared when the last call using it is gone, not only when the
 * backend drops it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>

/* macro.h before uv.h (through backend.h): both define MIN and MAX. */
#include "macro.h"
#include "backend.h"
#include "coreweave/sandbox/v1/sandbox.pb-c.h"
#include "google/rpc/error_details.pb-c.h"
#include "google/rpc/status.pb-c.h"
#include "log.h"
#include "pbgrpc.h"

#define SERVICE_PATH "/coreweave.sandbox.v1.SandboxService/"
#define STATUS_DETAILS_KEY "grpc-status-details-bin"
#define TRUSTED_DOMAIN "cwsandbox.com"

/* Keepalive: a ping after a minute of silence finds a dead connection (a
 * proxy that dropped it, a peer that vanished) within TIMEOUT more. Pings
 * without data are not limited in number, so a quiet log-follow stream keeps
 * its connection; but they are never sent more often than gRPC servers accept
 * by default (one per 5 minutes without data), or a server would answer
 * GOAWAY "too_many_pings". No pings without calls. */
#define KEEPALIVE_TIME_MS               60000
#define KEEPALIVE_TIMEOUT_MS            20000
#define PING_INTERVAL_WITHOUT_DATA_MS   300000
/* A restarted backend is found again within seconds, not the default two
 * minutes of reconnect backoff. */
#define MAX_RECONNECT_BACKOFF_MS        10000
/* A channel argument only we read: it gives every channel of the pool
 * distinct arguments, so gRPC never lets two share a subchannel. */
#define ARG_CHANNEL_INDEX               "cwsandboxd.channel_index"

typedef struct MethodInfo {
        const char *name;
        bool streaming;
        bool client_streaming;
        const ProtobufCMessageDescriptor *request;
        const ProtobufCMessageDescriptor *response;
} MethodInfo;

static const MethodInfo methods[_BACKEND_METHOD_MAX] = {
        [BACKEND_CREATE_SANDBOX] = { "CreateSandbox", false, false,
                                     &coreweave__sandbox__v1__create_sandbox_request__descriptor,
                                     &coreweave__sandbox__v1__sandbox__descriptor },
        [BACKEND_GET_SANDBOX] = { "GetSandbox", false, false,
                                  &coreweave__sandbox__v1__get_sandbox_request__descriptor,
                                  &coreweave__sandbox__v1__sandbox__descriptor },
        [BACKEND_LIST_SANDBOXES] = { "ListSandboxes", false, false,
                                     &coreweave__sandbox__v1__list_sandboxes_request__descriptor,
                                     &coreweave__sandbox__v1__list_sandboxes_response__descriptor },
        [BACKEND_DELETE_SANDBOX] = { "DeleteSandbox", false, false,
                                     &coreweave__sandbox__v1__delete_sandbox_request__descriptor,
                                     &coreweave__sandbox__v1__delete_sandbox_response__descriptor },
        [BACKEND_EXEC] = { "Exec", false, false,
                           &coreweave__sandbox__v1__exec_request__descriptor,
                           &coreweave__sandbox__v1__exec_response__descriptor },
        [BACKEND_STREAM_EXEC] = { "StreamExec", true, true,
                                  &coreweave__sandbox__v1__exec_stream_request__descriptor,
                                  &coreweave__sandbox__v1__exec_stream_response__descriptor },
        [BACKEND_STREAM_LOGS] = { "StreamLogs", true, false,
                                  &coreweave__sandbox__v1__stream_logs_request__descriptor,
                                  &coreweave__sandbox__v1__log_entry__descriptor },
        [BACKEND_WRITE_FILE] = { "WriteFile", false, false,
                                 &coreweave__sandbox__v1__write_file_request__descriptor,
                                 &coreweave__sandbox__v1__write_file_response__descriptor },
        [BACKEND_READ_FILE] = { "ReadFile", false, false,
                                &coreweave__sandbox__v1__read_file_request__descriptor,
                                &coreweave__sandbox__v1__read_file_response__descriptor },
};

typedef struct BackendChannel {
        grpc_channel *channel;
        void *registered[_BACKEND_METHOD_MAX];
        unsigned n_streams;
} BackendChannel;

typedef struct BackendOp BackendOp;

struct Backend {
        uv_loop_t *loop;
        CqLoop *cq;
        BackendChannel *channels;
        unsigned n_channels;
        grpc_slice auth;                /* "Bearer <key>", wiped when freed; empty = none */
        bool have_auth;
        BackendMethodStats stats[_BACKEND_METHOD_MAX];
        unsigned n_streams;
        bool warned_full;

        BackendOp *live;                /* every call and stream not yet finished */
        BackendOp *deferred;            /* finished without a batch: reported from the timer, */
        BackendOp *deferred_tail;       /* in the order they were started */
        uv_timer_t timer;
        bool shutting_down;
        bool closing;
        void (*shutdown_done)(void *userdata);
        void *shutdown_userdata;
};

struct BackendOp {
        Backend *backend;
        BackendMethod method;
        bool valid;                     /* method is one of ours, of the right shape */
        bool is_stream;
        BackendOp *prev, *next;         /* Backend.live */
        BackendOp *deferred_next;
        grpc_call *call;
        grpc_metadata auth_md;          /* kept until the call is freed */
        grpc_slice auth;                /* our reference to the value */
        bool have_auth;
        grpc_metadata_array initial_md, trailing_md;
        grpc_status_code code;
        grpc_slice details;
        const char *error_string;
        uint64_t start_us;
        bool failed_locally;            /* the outcome is in local, not from gRPC */
        Status local;
};

struct BackendCall {
        BackendOp op;
        CqTag tag;
        grpc_byte_buffer *recv;
        BackendReplyFn fn;
        void *userdata;
};

typedef struct WriteItem {
        struct WriteItem *next;
        grpc_byte_buffer *buffer;
        size_t size;
} WriteItem;

struct BackendStream {
        BackendOp op;
        BackendChannel *channel;
        const BackendStreamOps *ops;
        void *userdata;
        CqTag send_tag, recv_tag, status_tag;
        unsigned pending;               /* batches given to gRPC, not yet back */

        WriteItem *queue_head, *queue_tail;
        size_t queued_bytes;            /* queued plus the one in flight */
        size_t in_flight_bytes;
        bool send_busy;
        bool send_dead;                 /* a send failed: the call is over */
        bool close_wanted, close_started;

        grpc_byte_buffer *recv_buffer;
        bool recv_busy;
        bool asked_initial_md;
        bool ended;                     /* end reported */
        bool cancelled;                 /* by the caller */
        bool status_armed;
        bool status_received;           /* or will never come: no status batch */
        bool done;                      /* done reported */
};

const char *backend_method_name(BackendMethod m) {
        if ((unsigned)m >= _BACKEND_METHOD_MAX)
                return "?";
        return methods[m].name;
}

/* ---- auth ------------------------------------------------------------------------- */

static void auth_wipe_free(void *p, size_t n) {
        explicit_bzero(p, n);
        free(p);
}

/* A slice of "Bearer <key>" that is wiped when its last reference goes. */
static int auth_slice_new(const char *api_key, grpc_slice *ret) {
        size_t klen = strlen(api_key), n = strlen("Bearer ") + klen;
        char *p = malloc(n);

        if (!p)
                return -ENOMEM;
        memcpy(p, "Bearer ", strlen("Bearer "));
        memcpy(p + strlen("Bearer "), api_key, klen);
        *ret = grpc_slice_new_with_len(p, n, auth_wipe_free);
        return 0;
}

/* It travels as a metadata value, which gRPC refuses unless printable. */
static bool api_key_valid(const char *k) {
        for (; *k; k++)
                if (*k < 0x20 || *k > 0x7e)
                        return false;
        return true;
}

int backend_set_api_key(Backend *b, const char *api_key) {
        grpc_slice s = grpc_empty_slice();
        bool have = api_key && *api_key;
        int r;

        if (have && !api_key_valid(api_key))
                return -EINVAL;
        if (have) {
                r = auth_slice_new(api_key, &s);
                if (r < 0)
                        return r;
        }
        if (b->have_auth)
                grpc_slice_unref(b->auth);
        b->auth = s;
        b->have_auth = have;
        return 0;
}

/* ---- channels --------------------------------------------------------------------- */

#define INT_ARG(key, value) { GRPC_ARG_INTEGER, (char *)(key), { .integer = (value) } }

static int channel_open(BackendChannel *ch, const BackendOptions *opts, unsigned index) {
        grpc_arg args[] = {
                INT_ARG(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, BACKEND_MAX_MESSAGE_BYTES),
                INT_ARG(GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, BACKEND_MAX_MESSAGE_BYTES),
                INT_ARG(GRPC_ARG_KEEPALIVE_TIME_MS, KEEPALIVE_TIME_MS),
                INT_ARG(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, KEEPALIVE_TIMEOUT_MS),
                INT_ARG(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0),
                INT_ARG(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0),
                INT_ARG(GRPC_ARG_HTTP2_MIN_SENT_PING_INTERVAL_WITHOUT_DATA_MS, PING_INTERVAL_WITHOUT_DATA_MS),
                INT_ARG(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, MAX_RECONNECT_BACKOFF_MS),
                INT_ARG(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1),
                INT_ARG(ARG_CHANNEL_INDEX, (int)index),
        };
        grpc_channel_args channel_args = { ELEMENTSOF(args), args };
        grpc_channel_credentials *creds;

        if (opts->tls)
                creds = grpc_ssl_credentials_create(/* pem_root_certs= */ NULL, NULL, NULL, NULL);
        else
                creds = grpc_insecure_credentials_create();
        if (!creds)
                return -EINVAL;
        ch->channel = grpc_channel_create(opts->target, creds, &channel_args);
        grpc_channel_credentials_release(creds);
        if (!ch->channel)
                return -EINVAL;

        for (int m = 0; m < _BACKEND_METHOD_MAX; m++) {
                char path[128];

                (void)snprintf(path, sizeof(path), SERVICE_PATH "%s", methods[m].name);
                ch->registered[m] = grpc_channel_register_call(ch->channel, path, /* host= */ NULL, NULL);
                if (!ch->registered[m])
                        return -EINVAL;
        }
        return 0;
}

static void channels_close(Backend *b) {
        for (unsigned i = 0; i < b->n_channels; i++)
                if (b->channels[i].channel) {
                        grpc_channel_destroy(b->channels[i].channel);
                        b->channels[i].channel = NULL;
                }
}

/* The channel with the fewest streams. Ties go to the later channel: unary
 * calls all use the first, so streams fill the others first. */
static BackendChannel *channel_for_stream(Backend *b) {
        BackendChannel *best = &b->channels[b->n_channels - 1];

        for (unsigned i = b->n_channels - 1; i-- > 0;)
                if (b->channels[i].n_streams < best->n_streams)
                        best = &b->channels[i];

        if (best->n_streams >= BACKEND_STREAMS_PER_CHANNEL) {
                if (!b->warned_full)
                        log_warning("backend: every channel carries %u streams or more; "
                                    "new streams may wait for the server (raise the channel pool size)",
                                    (unsigned)BACKEND_STREAMS_PER_CHANNEL);
                b->warned_full = true;
        } else
                b->warned_full = false;
        return best;
}

/* From a local call (1 ms) to a long stream (5 min). */
static const double latency_bounds[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                         10, 30, 60, 300 };

int backend_new(uv_loop_t *loop, CqLoop *cq, const BackendOptions *opts, Backend **ret) {
        Backend *b;
        int r;

        if (!opts->target || !*opts->target || opts->pool_size < 1)
                return -EINVAL;
        b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->loop = loop;
        b->cq = cq;
        b->auth = grpc_empty_slice();
        b->channels = calloc(opts->pool_size, sizeof(BackendChannel));
        if (!b->channels) {
                free(b);
                return -ENOMEM;
        }
        b->n_channels = opts->pool_size;
        for (int m = 0; m < _BACKEND_METHOD_MAX; m++)
                histogram_init(&b->stats[m].latency, latency_bounds, ELEMENTSOF(latency_bounds));

        r = backend_set_api_key(b, opts->api_key);
        for (unsigned i = 0; r >= 0 && i < b->n_channels; i++)
                r = channel_open(&b->channels[i], opts, i);
        if (r >= 0)
                r = uv_timer_init(loop, &b->timer);
        if (r < 0) {
                channels_close(b);
                if (b->have_auth)
                        grpc_slice_unref(b->auth);
                free(b->channels);
                free(b);
                return r;
        }
        *ret = b;
        return 0;
}

void backend_free(Backend *b) {
        if (!b)
                return;
        channels_close(b);
        if (b->have_auth)
                grpc_slice_unref(b->auth);
        free(b->channels);
        free(b);
}

const BackendMethodStats *backend_stats(const Backend *b, BackendMethod m) {
        return &b->stats[m];
}

unsigned backend_streams_open(const Backend *b) {
        return b->n_streams;
}

/* ---- status ----------------------------------------------------------------------- */

static bool any_is(const Google__Protobuf__Any *any, const ProtobufCMessageDescriptor *desc) {
        const char *slash = strrchr(any->type_url, '/');

        return streq(slash ? slash + 1 : any->type_url, desc->name);
}

static uint32_t duration_ms(const Google__Protobuf__Duration *d) {
        double ms = (double)d->seconds * 1000.0 + (double)d->nanos / 1e6;

        if (!(ms > 0))
                return 0;
        if (ms >= (double)UINT32_MAX)
                return UINT32_MAX;
        return (uint32_t)(ms + 0.5);
}

/* The reason and retry hint of one google.rpc.Status, as the SDK reads
 * them: the first ErrorInfo with a reason, the first RetryInfo with a delay.
 * Returns false if @data is not a Status. */
static bool status_details_parse(const uint8_t *data, size_t n, char *reason, size_t reason_size,
                                 uint32_t *retry_delay_ms) {
        Google__Rpc__Status *rs;
        bool have_info = false, have_retry = false;

        rs = (Google__Rpc__Status *)protobuf_c_message_unpack(&google__rpc__status__descriptor, NULL, n, data);
        if (!rs)
                return false;
        reason[0] = 0;
        *retry_delay_ms = 0;
        for (size_t i = 0; i < rs->n_details; i++) {
                const Google__Protobuf__Any *any = rs->details[i];

                if (!have_info && any_is(any, &google__rpc__error_info__descriptor)) {
                        Google__Rpc__ErrorInfo *info = google__rpc__error_info__unpack(NULL, any->value.len,
                                                                                    any->value.data);

                        if (info && *info->reason) {
                                have_info = true;
                                /* Any other domain's reason means nothing to us. */
                                if (streq(info->domain, TRUSTED_DOMAIN))
                                        (void)snprintf(reason, reason_size, "%s", info->reason);
                        }
                        if (info)
                                google__rpc__error_info__free_unpacked(info, NULL);
                } else if (!have_retry && any_is(any, &google__rpc__retry_info__descriptor)) {
                        Google__Rpc__RetryInfo *retry = google__rpc__retry_info__unpack(NULL, any->value.len,
                                                                                     any->value.data);

                        if (retry && retry->retry_delay) {
                                have_retry = true;
                                *retry_delay_ms = duration_ms(retry->retry_delay);
                        }
                        if (retry)
                                google__rpc__retry_info__free_unpacked(retry, NULL);
                }
        }
        google__rpc__status__free_unpacked(rs, NULL);
        return true;
}

static void status_from_op(const BackendOp *op, Status *st) {
        const grpc_metadata_array *md = &op->trailing_md;
        size_t n = GRPC_SLICE_LENGTH(op->details);

        if (op->failed_locally) {
                *st = op->local;
                return;
        }
        *st = (Status) { .code = op->code };
        n = MIN(n, sizeof(st->message) - 1);
        memcpy(st->message, GRPC_SLICE_START_PTR(op->details), n);
        st->message[n] = 0;
        if (n == 0 && op->code != GRPC_STATUS_OK)
                (void)snprintf(st->message, sizeof(st->message), "%s", grpc_status_name(op->code));

        /* A later valid entry wins over an earlier one. */
        for (size_t i = 0; i < md->count; i++) {
                const grpc_metadata *e = &md->metadata[i];
                char reason[sizeof(st->reason)];
                uint32_t delay;

                if (GRPC_SLICE_LENGTH(e->key) != strlen(STATUS_DETAILS_KEY) ||
                    strncasecmp((const char *)GRPC_SLICE_START_PTR(e->key), STATUS_DETAILS_KEY,
                                strlen(STATUS_DETAILS_KEY)) != 0)
                        continue;
                if (!status_details_parse(GRPC_SLICE_START_PTR(e->value), GRPC_SLICE_LENGTH(e->value),
                                          reason, sizeof(reason), &delay))
                        continue;
                memcpy(st->reason, reason, sizeof(st->reason));
                st->retry_delay_ms = delay;
        }
}

static void op_fail_locally(BackendOp *op, grpc_status_code code, const char *message) {
        if (op->failed_locally)
                return;
        op->failed_locally = true;
        (void)status_set(&op->local, code, "%s", message);
}

/* ---- ops: what calls and streams share ------------------------------------------ */

static void backend_maybe_finish_shutdown(Backend *b);

static uint64_t now_us(void) {
        return uv_hrtime() / 1000;
}

static void op_init(BackendOp *op, Backend *b, BackendMethod m, bool is_stream) {
        op->backend = b;
        op->method = m;
        op->valid = (unsigned)m < _BACKEND_METHOD_MAX && methods[m].streaming == is_stream;
        op->is_stream = is_stream;
        op->details = grpc_empty_slice();
        op->code = GRPC_STATUS_UNKNOWN;
        op->auth = grpc_empty_slice();
        op->start_us = now_us();
        grpc_metadata_array_init(&op->initial_md);
        grpc_metadata_array_init(&op->trailing_md);

        op->next = b->live;
        if (b->live)
                b->live->prev = op;
        b->live = op;
        if (op->valid)
                b->stats[m].calls++;
}

/* Create the gRPC call; NULL when it cannot be (a bad method or deadline). */
static grpc_call *op_create_call(BackendOp *op, BackendChannel *ch, int64_t timeout_ms) {
        Backend *b = op->backend;

        op->call = grpc_channel_create_registered_call(ch->channel, /* parent_call= */ NULL, GRPC_PROPAGATE_DEFAULTS,
                                                       b->cq->cq, ch->registered[op->method],
                                                       deadline_after_ms(timeout_ms), NULL);
        if (op->call && b->have_auth) {
                op->auth = grpc_slice_ref(b->auth);
                op->have_auth = true;
                op->auth_md = (grpc_metadata) {
                        .key = grpc_slice_from_static_string("authorization"),
                        .value = op->auth,
                };
        }
        return op->call;
}

static void op_set_send_initial_md(BackendOp *op, grpc_op *o) {
        o->op = GRPC_OP_SEND_INITIAL_METADATA;
        o->data.send_initial_metadata.count = op->have_auth ? 1 : 0;
        o->data.send_initial_metadata.metadata = op->have_auth ? &op->auth_md : NULL;
}

static void op_set_recv_status(BackendOp *op, grpc_op *o) {
        o->op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        o->data.recv_status_on_client.trailing_metadata = &op->trailing_md;
        o->data.recv_status_on_client.status = &op->code;
        o->data.recv_status_on_client.status_details = &op->details;
        o->data.recv_status_on_client.error_string = &op->error_string;
}

static void op_count(BackendOp *op, const Status *st) {
        BackendMethodStats *s;

        if (!op->valid)
                return;
        s = &op->backend->stats[op->method];
        if (st->code != GRPC_STATUS_OK)
                s->errors++;
        if ((unsigned)st->code < ELEMENTSOF(s->by_code))
                s->by_code[st->code]++;
        histogram_observe(&s->latency, (double)(now_us() - op->start_us) / 1e6);
}

static void timer_on_fire(uv_timer_t *t);

/* Report @op's local failure from the timer, never from the caller's stack. */
static void op_defer(BackendOp *op) {
        Backend *b = op->backend;

        if (b->closing) {
                /* Started after backend_shutdown() finished: a bug of the
                 * caller, and there is no loop handle left to report it. */
                log_error("backend: %s started after shutdown; it never completes",
                          backend_method_name(op->method));
                return;
        }
        if (b->deferred_tail)
                b->deferred_tail->deferred_next = op;
        else
                b->deferred = op;
        b->deferred_tail = op;
        (void)uv_timer_start(&b->timer, timer_on_fire, 0, 0);
}

/* Unlink and free the parts every op has; the caller frees the op's memory. */
static void op_release(BackendOp *op) {
        Backend *b = op->backend;

        if (op->prev)
                op->prev->next = op->next;
        else
                b->live = op->next;
        if (op->next)
                op->next->prev = op->prev;

        if (op->call)
                grpc_call_unref(op->call);
        if (op->have_auth)
                grpc_slice_unref(op->auth);
        grpc_slice_unref(op->details);
        if (op->error_string)
                gpr_free((void *)op->error_string);
        grpc_metadata_array_destroy(&op->initial_md);
        grpc_metadata_array_destroy(&op->trailing_md);
}

/* ---- unary ------------------------------------------------------------------------ */

static void call_finish(BackendCall *c) {
        BackendOp *op = &c->op;
        Backend *b = op->backend;
        ProtobufCMessage *reply = NULL;
        Status st;

        status_from_op(op, &st);
        if (status_ok(&st)) {
                reply = pb_from_byte_buffer(methods[op->method].response, c->recv);
                if (!reply)
                        (void)status_set(&st, GRPC_STATUS_INTERNAL, "%s: the backend's response does not decode",
                                         backend_method_name(op->method));
        }
        op_count(op, &st);
        c->fn(c->userdata, &st, reply);

        if (c->recv)
                grpc_byte_buffer_destroy(c->recv);
        op_release(op);
        free(c);
        backend_maybe_finish_shutdown(b);
}

static void call_on_done(CqTag *tag, bool ok) {
        BackendCall *c = container_of(tag, BackendCall, tag);

        /* With RECV_STATUS in the batch, ok is 1 and the outcome is the status. */
        call_finish(c);
}

static int call_start(BackendCall *c, const ProtobufCMessage *request, int64_t timeout_ms) {
        BackendOp *op = &c->op;
        Backend *b = op->backend;
        grpc_byte_buffer *send;
        grpc_op ops[6] = {};
        grpc_call_error e;

        if (!op_create_call(op, &b->channels[0], timeout_ms))
                return -EINVAL;
        send = pb_to_byte_buffer(request);
        op_set_send_initial_md(op, &ops[0]);
        ops[1].op = GRPC_OP_SEND_MESSAGE;
        ops[1].data.send_message.send_message = send;
        ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[3].data.recv_initial_metadata.recv_initial_metadata = &op->initial_md;
        ops[4].op = GRPC_OP_RECV_MESSAGE;
        ops[4].data.recv_message.recv_message = &c->recv;
        op_set_recv_status(op, &ops[5]);

        e = grpc_call_start_batch(op->call, ops, ELEMENTSOF(ops), &c->tag, NULL);
        /* The batch has taken the message's slices. */
        grpc_byte_buffer_destroy(send);
        if (e != GRPC_CALL_OK) {
                log_error("backend: %s: grpc_call_start_batch failed: %d", backend_method_name(op->method), e);
                return -EIO;
        }
        return 0;
}

BackendCall *backend_call(Backend *b, BackendMethod m, const ProtobufCMessage *request,
                          int64_t timeout_ms, BackendReplyFn fn, void *userdata) {
        BackendCall *c;

        c = calloc(1, sizeof(*c));
        if (!c)
                abort();        /* as gRPC itself does on OOM */
        c->fn = fn;
        c->userdata = userdata;
        c->tag.fn = call_on_done;

        op_init(&c->op, b, m, false);
        if (!c->op.valid)
                op_fail_locally(&c->op, GRPC_STATUS_INTERNAL, "not a unary method");
        else if (b->shutting_down)
                op_fail_locally(&c->op, GRPC_STATUS_CANCELLED, "the backend client is shutting down");
        else if (request->descriptor != methods[m].request)
                op_fail_locally(&c->op, GRPC_STATUS_INTERNAL, "wrong request type");
        else if (call_start(c, request, timeout_ms) < 0)
                op_fail_locally(&c->op, GRPC_STATUS_INTERNAL, "the call could not be started");
        if (c->op.failed_locally)
                op_defer(&c->op);
        return c;
}

void backend_call_cancel(BackendCall *c) {
        /* Without a call it has failed already and waits for the timer. */
        if (c->op.call)
                grpc_call_cancel(c->op.call, NULL);
}

/* ---- streams ---------------------------------------------------------------------- */

static void stream_drop_queue(BackendStream *s) {
        while (s->queue_head) {
                WriteItem *w = s->queue_head;

                s->queue_head = w->next;
                grpc_byte_buffer_destroy(w->buffer);
                free(w);
        }
        s->queue_tail = NULL;
        s->queued_bytes = s->in_flight_bytes;
}

static void stream_finish(BackendStream *s) {
        BackendOp *op = &s->op;
        Backend *b = op->backend;
        Status st;

        status_from_op(op, &st);
        op_count(op, &st);
        s->done = true;
        if (s->channel) {
                s->channel->n_streams--;
                b->n_streams--;
        }
        s->ops->done(s->userdata, &st);

        stream_drop_queue(s);
        if (s->recv_buffer)
                grpc_byte_buffer_destroy(s->recv_buffer);
        op_release(op);
        free(s);
        backend_maybe_finish_shutdown(b);
}

/* Tag callbacks end here: the stream is over once its status is in and no
 * batch is out. */
static void stream_check(BackendStream *s) {
        if (s->status_received && s->pending == 0 && !s->done)
                stream_finish(s);
}

static bool stream_start_batch(BackendStream *s, const grpc_op *ops, size_t n, CqTag *tag) {
        grpc_call_error e;

        e = grpc_call_start_batch(s->op.call, ops, n, tag, NULL);
        if (e != GRPC_CALL_OK) {
                /* A bug of ours: end the call, so its status comes back. */
                log_error("backend: %s: grpc_call_start_batch(op %d) failed: %d",
                          backend_method_name(s->op.method), ops[0].op, e);
                op_fail_locally(&s->op, GRPC_STATUS_INTERNAL, "a stream operation could not be started");
                grpc_call_cancel(s->op.call, NULL);
                return false;
        }
        s->pending++;
        return true;
}

/* Start the next send: a queued message, else the half-close if wanted. */
static void stream_pump_send(BackendStream *s) {
        grpc_op op = {};

        if (s->send_busy || s->send_dead || s->status_received)
                return;
        if (s->queue_head) {
                WriteItem *w = s->queue_head;

                s->queue_head = w->next;
                if (!s->queue_head)
                        s->queue_tail = NULL;
                op.op = GRPC_OP_SEND_MESSAGE;
                op.data.send_message.send_message = w->buffer;
                s->in_flight_bytes = w->size;
                if (stream_start_batch(s, &op, 1, &s->send_tag))
                        s->send_busy = true;
                else {
                        s->send_dead = true;
                        s->in_flight_bytes = 0;
                        s->queued_bytes -= w->size;
                }
                grpc_byte_buffer_destroy(w->buffer);
                free(w);
                return;
        }
        if (s->close_wanted && !s->close_started) {
                s->close_started = true;
                op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
                if (stream_start_batch(s, &op, 1, &s->send_tag))
                        s->send_busy = true;
        }
}

static void stream_on_send(CqTag *tag, bool ok) {
        BackendStream *s = container_of(tag, BackendStream, send_tag);

        s->pending--;
        s->send_busy = false;
        s->queued_bytes -= s->in_flight_bytes;
        s->in_flight_bytes = 0;
        if (!ok) {
                /* The call is over; its status says why. */
                s->send_dead = true;
                stream_drop_queue(s);
        } else
                stream_pump_send(s);
        stream_check(s);
}

static void stream_on_recv(CqTag *tag, bool ok) {
        BackendStream *s = container_of(tag, BackendStream, recv_tag);
        grpc_byte_buffer *bb = TAKE_PTR(s->recv_buffer);
        ProtobufCMessage *msg;

        s->pending--;
        s->recv_busy = false;
        if (!bb) {
                /* A clean end of the server's side; a failed read is reported
                 * by the status alone. */
                if (ok && !s->cancelled && !s->ended) {
                        s->ended = true;
                        if (s->ops->end)
                                s->ops->end(s->userdata);
                } else
                        s->ended = true;
                stream_check(s);
                return;
        }
        msg = pb_from_byte_buffer(methods[s->op.method].response, bb);
        grpc_byte_buffer_destroy(bb);
        if (!msg) {
                op_fail_locally(&s->op, GRPC_STATUS_INTERNAL, "a message from the backend does not decode");
                grpc_call_cancel(s->op.call, NULL);
        } else if (s->cancelled)
                protobuf_c_message_free_unpacked(msg, NULL);
        else
                s->ops->message(s->userdata, msg);
        stream_check(s);
}

static void stream_on_status(CqTag *tag, bool ok) {
        BackendStream *s = container_of(tag, BackendStream, status_tag);

        s->pending--;
        s->status_received = true;
        stream_drop_queue(s);
        stream_check(s);
}

/* Create the call, send @first (and the half-close of a server-streaming
 * method) and arm the status. Failures are recorded in the op. */
static void stream_start(BackendStream *s, const ProtobufCMessage *first, int64_t timeout_ms) {
        BackendOp *op = &s->op;
        BackendChannel *ch = channel_for_stream(op->backend);
        grpc_byte_buffer *send;
        grpc_op ops[3] = {}, status = {};
        size_t n = 0;
        bool started;

        if (!op_create_call(op, ch, timeout_ms)) {
                op_fail_locally(op, GRPC_STATUS_INTERNAL, "the stream could not be created");
                return;
        }
        s->channel = ch;
        ch->n_streams++;
        op->backend->n_streams++;

        send = pb_to_byte_buffer(first);
        s->in_flight_bytes = s->queued_bytes = grpc_byte_buffer_length(send);
        op_set_send_initial_md(op, &ops[n++]);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = send;
        if (!methods[op->method].client_streaming) {
                ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
                s->close_wanted = s->close_started = true;
        }
        started = stream_start_batch(s, ops, n, &s->send_tag);
        grpc_byte_buffer_destroy(send);
        if (started)
                s->send_busy = true;
        else {
                s->send_dead = true;
                s->in_flight_bytes = s->queued_bytes = 0;
        }

        /* Armed even if the send failed: it is how the call's end comes back. */
        op_set_recv_status(op, &status);
        s->status_armed = stream_start_batch(s, &status, 1, &s->status_tag);
}

BackendStream *backend_stream_open(Backend *b, BackendMethod m, const ProtobufCMessage *first,
                                   int64_t timeout_ms, const BackendStreamOps *ops, void *userdata) {
        BackendStream *s;

        s = calloc(1, sizeof(*s));
        if (!s)
                abort();        /* as gRPC itself does on OOM */
        s->ops = ops;
        s->userdata = userdata;
        s->send_tag.fn = stream_on_send;
        s->recv_tag.fn = stream_on_recv;
        s->status_tag.fn = stream_on_status;
        op_init(&s->op, b, m, true);

        if (!s->op.valid)
                op_fail_locally(&s->op, GRPC_STATUS_INTERNAL, "not a streaming method");
        else if (b->shutting_down)
                op_fail_locally(&s->op, GRPC_STATUS_CANCELLED, "the backend client is shutting down");
        else if (first->descriptor != methods[m].request)
                op_fail_locally(&s->op, GRPC_STATUS_INTERNAL, "wrong request type");
        else
                stream_start(s, first, timeout_ms);

        if (!s->status_armed) {
                /* No status will come back: the stream ends when its last
                 * batch does, or from the timer if none is out. */
                s->status_received = true;
                if (s->pending == 0)
                        op_defer(&s->op);
        }
        return s;
}

void backend_stream_read(BackendStream *s) {
        grpc_op ops[2] = {};
        size_t n = 0;

        if (s->recv_busy || s->ended || s->done || s->status_received || s->cancelled || !s->op.call)
                return;
        if (!s->asked_initial_md) {
                s->asked_initial_md = true;
                ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
                ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->op.initial_md;
        }
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n++].data.recv_message.recv_message = &s->recv_buffer;
        if (stream_start_batch(s, ops, n, &s->recv_tag))
                s->recv_busy = true;
}

size_t backend_stream_write(BackendStream *s, const ProtobufCMessage *msg) {
        WriteItem *w;

        if (s->close_wanted || s->cancelled || s->done || s->send_dead || s->status_received || !s->op.call)
                return s->queued_bytes;
        w = calloc(1, sizeof(*w));
        if (!w)
                abort();        /* as gRPC itself does on OOM */
        w->buffer = pb_to_byte_buffer(msg);
        w->size = grpc_byte_buffer_length(w->buffer);
        if (s->queue_tail)
                s->queue_tail->next = w;
        else
                s->queue_head = w;
        s->queue_tail = w;
        s->queued_bytes += w->size;
        stream_pump_send(s);
        return s->queued_bytes;
}

void backend_stream_close_send(BackendStream *s) {
        if (s->close_wanted || s->done)
                return;
        s->close_wanted = true;
        stream_pump_send(s);
}

void backend_stream_cancel(BackendStream *s) {
        if (s->cancelled || s->done)
                return;
        s->cancelled = true;
        if (s->op.call && !s->status_received)
                grpc_call_cancel(s->op.call, NULL);
}

/* ---- deferred outcomes and shutdown ----------------------------------------------- */

static void timer_on_fire(uv_timer_t *t) {
        Backend *b = container_of(t, Backend, timer);

        /* Each finish may queue more (a callback starting a call during
         * shutdown); take the list whole each round. */
        while (b->deferred) {
                BackendOp *op = TAKE_PTR(b->deferred);

                b->deferred_tail = NULL;
                while (op) {
                        BackendOp *next = op->deferred_next;

                        /* A deferred stream has no batch out (see
                         * backend_stream_open()), so nothing else finishes it. */
                        if (op->is_stream)
                                stream_finish(container_of(op, BackendStream, op));
                        else
                                call_finish(container_of(op, BackendCall, op));
                        op = next;
                }
        }
}

static void backend_on_timer_closed(uv_handle_t *h) {
        Backend *b = container_of((uv_timer_t *)h, Backend, timer);

        channels_close(b);
        if (b->shutdown_done)
                b->shutdown_done(b->shutdown_userdata);
}

static void backend_maybe_finish_shutdown(Backend *b) {
        if (!b->shutting_down || b->closing || b->live || b->deferred)
                return;
        b->closing = true;
        uv_close((uv_handle_t *)&b->timer, backend_on_timer_closed);
}

void backend_shutdown(Backend *b, void (*done)(void *userdata), void *userdata) {
        if (b->shutting_down)
                return;
        b->shutting_down = true;
        b->shutdown_done = done;
        b->shutdown_userdata = userdata;

        for (BackendOp *op = b->live; op; op = op->next) {
                if (op->is_stream)
                        backend_stream_cancel(container_of(op, BackendStream, op));
                else if (op->call)
                        grpc_call_cancel(op->call, NULL);
        }
        backend_maybe_finish_shutdown(b);
}
