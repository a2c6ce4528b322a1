/*
 * Blocking gRPC core client: channels, unary calls and generic streams.
 *
 * Every batch has a tag that is the address of a field of its owner, and the
 * caller waits for exactly that tag with grpc_completion_queue_pluck(). A
 * pluck queue may only be destroyed once every event on it has been plucked,
 * so a stream remembers which of its batches are still outstanding
 * (recv_pending, status_pending) and bc_stream_free() cancels the call and
 * collects them before the call is released. Sends are waited for at once,
 * which keeps at most one SEND_MESSAGE in flight per call as gRPC requires.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "backend-client.h"
#include "macro.h"
#include "pbgrpc.h"

struct BcClient {
        grpc_channel *channel;
        grpc_completion_queue *cq;
        char *auth;                     /* "authorization" value, or NULL */
        int timeout_ms;                 /* of unary calls without their own */
};

struct BcStream {
        BcClient *client;
        grpc_call *call;
        grpc_metadata_array initial_md, trailing_md;
        grpc_status_code code;
        grpc_slice details;
        grpc_byte_buffer *recv_buf;
        bool asked_initial_md;
        bool recv_pending, status_pending;
        bool send_closed, ended;
        BcStatus status;
        /* batch tags: only their addresses matter */
        char tag_send, tag_recv, tag_status;
};

static gpr_timespec deadline_ms(int timeout_ms) {
        return timeout_ms < 0 ? gpr_inf_future(GPR_CLOCK_MONOTONIC) : deadline_after_ms(timeout_ms);
}

/* Wait for @tag: 1 = succeeded, 0 = failed, -ETIMEDOUT. */
static int cq_wait(BcClient *c, void *tag, gpr_timespec deadline) {
        grpc_event ev = grpc_completion_queue_pluck(c->cq, tag, deadline, NULL);

        switch (ev.type) {
        case GRPC_OP_COMPLETE:
                return ev.success ? 1 : 0;
        case GRPC_QUEUE_TIMEOUT:
                return -ETIMEDOUT;
        default:
                return -ESHUTDOWN;
        }
}

static void status_set(BcStatus *st, grpc_status_code code, const char *details) {
        if (!st)
                return;
        st->code = code;
        snprintf(st->details, sizeof(st->details), "%s", details ? details : "");
        bc_status_read_details(st, /* trailing_md= */ NULL);
}

static void status_set_slice(BcStatus *st, grpc_status_code code, grpc_slice details) {
        size_t n = GRPC_SLICE_LENGTH(details);

        if (!st)
                return;
        st->code = code;
        n = MIN(n, sizeof(st->details) - 1);
        memcpy(st->details, GRPC_SLICE_START_PTR(details), n);
        st->details[n] = 0;
}

/* The authorization metadata of one batch; *@n = 0 when none is sent. */
static void auth_md(const BcClient *c, grpc_metadata *md, size_t *n) {
        *n = 0;
        if (!c->auth)
                return;
        memset(md, 0, sizeof(*md));
        md->key = grpc_slice_from_static_string("authorization");
        md->value = grpc_slice_from_copied_string(c->auth);
        *n = 1;
}

static void auth_md_done(grpc_metadata *md, size_t n) {
        if (n)
                grpc_slice_unref(md->value);
}

static grpc_call *call_new(BcClient *c, const char *method, int timeout_ms) {
        grpc_slice m = grpc_slice_from_copied_string(method);
        grpc_call *call;

        /* The call keeps its own reference to the method slice. */
        call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, m,
                                        /* host= */ NULL, deadline_ms(timeout_ms), NULL);
        grpc_slice_unref(m);
        return call;
}

int bc_connect(const char *target, const char *token, BcClient **ret) {
        grpc_arg args[] = {
                { .type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, .value.integer = -1 },
                { .type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, .value.integer = -1 },
                /* One connection per client, so clients in several threads
                 * really run in parallel. */
                { .type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, .value.integer = 1 },
        };
        grpc_channel_args ch_args = { .num_args = ELEMENTSOF(args), .args = args };
        grpc_channel_credentials *creds;
        BcClient *c;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        grpc_init();
        creds = grpc_insecure_credentials_create();
        c->channel = grpc_channel_create(target, creds, &ch_args);
        grpc_channel_credentials_release(creds);
        c->cq = grpc_completion_queue_create_for_pluck(NULL);
        c->timeout_ms = BC_TIMEOUT_MS;
        if (token) {
                char *v;

                if (asprintf(&v, "Bearer %s", token) < 0) {
                        bc_close(c);
                        return -ENOMEM;
                }
                r = bc_set_authorization(c, v);
                free(v);
                if (r < 0) {
                        bc_close(c);
                        return r;
                }
        }
        *ret = c;
        return 0;
}

BcClient *bc_close(BcClient *c) {
        if (!c)
                return NULL;
        if (c->channel)
                grpc_channel_destroy(c->channel);
        if (c->cq) {
                grpc_completion_queue_shutdown(c->cq);
                (void)grpc_completion_queue_pluck(c->cq, NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
                grpc_completion_queue_destroy(c->cq);
        }
        free(c->auth);
        free(c);
        grpc_shutdown();
        return NULL;
}

int bc_set_authorization(BcClient *c, const char *value) {
        char *v = NULL;

        if (value) {
                v = strdup(value);
                if (!v)
                        return -ENOMEM;
        }
        free(c->auth);
        c->auth = v;
        return 0;
}

void bc_set_timeout(BcClient *c, int timeout_ms) {
        c->timeout_ms = timeout_ms > 0 ? timeout_ms : BC_TIMEOUT_MS;
}

void bc_free(void *msg) {
        if (msg)
                protobuf_c_message_free_unpacked(msg, NULL);
}

int bc_unary(BcClient *c, const char *method, const ProtobufCMessage *req,
             const ProtobufCMessageDescriptor *resp_desc, int timeout_ms,
             ProtobufCMessage **ret_resp, BcStatus *ret_status) {
        grpc_metadata md;
        size_t n_md;
        grpc_metadata_array initial_md, trailing_md;
        grpc_byte_buffer *send, *recv = NULL;
        grpc_status_code code = GRPC_STATUS_UNKNOWN;
        grpc_slice details = grpc_empty_slice();
        const char *error_string = NULL;
        grpc_op ops[6];
        grpc_call *call;
        char tag;
        int r;

        call = call_new(c, method, timeout_ms > 0 ? timeout_ms : c->timeout_ms);
        if (!call) {
                status_set(ret_status, GRPC_STATUS_INTERNAL, "could not create the call");
                return -ENOMEM;
        }
        grpc_metadata_array_init(&initial_md);
        grpc_metadata_array_init(&trailing_md);
        auth_md(c, &md, &n_md);
        send = pb_to_byte_buffer(req);

        memset(ops, 0, sizeof(ops));
        ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[0].data.send_initial_metadata.count = n_md;
        ops[0].data.send_initial_metadata.metadata = n_md ? &md : NULL;
        ops[1].op = GRPC_OP_SEND_MESSAGE;
        ops[1].data.send_message.send_message = send;
        ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
        ops[4].op = GRPC_OP_RECV_MESSAGE;
        ops[4].data.recv_message.recv_message = &recv;
        ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
        ops[5].data.recv_status_on_client.status = &code;
        ops[5].data.recv_status_on_client.status_details = &details;
        ops[5].data.recv_status_on_client.error_string = &error_string;

        if (grpc_call_start_batch(call, ops, ELEMENTSOF(ops), &tag, NULL) != GRPC_CALL_OK) {
                status_set(ret_status, GRPC_STATUS_INTERNAL, "grpc_call_start_batch failed");
                r = -EIO;
        } else {
                /* With RECV_STATUS in the batch it always ends, at the latest
                 * at the deadline. */
                (void)cq_wait(c, &tag, gpr_inf_future(GPR_CLOCK_MONOTONIC));
                status_set_slice(ret_status, code, details);
                bc_status_read_details(ret_status, &trailing_md);
                r = (int)code;
                if (code == GRPC_STATUS_OK && ret_resp) {
                        ProtobufCMessage *m = pb_from_byte_buffer(resp_desc, recv);

                        if (!m) {
                                status_set(ret_status, GRPC_STATUS_INTERNAL, "undecodable reply");
                                r = -EBADMSG;
                        } else
                                *ret_resp = m;
                }
        }

        grpc_byte_buffer_destroy(send);
        if (recv)
                grpc_byte_buffer_destroy(recv);
        grpc_slice_unref(details);
        if (error_string)
                gpr_free((void *)error_string);
        auth_md_done(&md, n_md);
        grpc_metadata_array_destroy(&initial_md);
        grpc_metadata_array_destroy(&trailing_md);
        grpc_call_unref(call);
        return r;
}

/* ---- streams ---- */

int bc_stream_open(BcClient *c, const char *method, int timeout_ms, BcStream **ret) {
        grpc_metadata md;
        size_t n_md;
        grpc_op op;
        BcStream *s;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->client = c;
        s->details = grpc_empty_slice();
        s->code = GRPC_STATUS_UNKNOWN;
        grpc_metadata_array_init(&s->initial_md);
        grpc_metadata_array_init(&s->trailing_md);
        s->call = call_new(c, method, timeout_ms > 0 ? timeout_ms : -1);
        if (!s->call) {
                bc_stream_free(s);
                return -ENOMEM;
        }

        auth_md(c, &md, &n_md);
        memset(&op, 0, sizeof(op));
        op.op = GRPC_OP_SEND_INITIAL_METADATA;
        op.data.send_initial_metadata.count = n_md;
        op.data.send_initial_metadata.metadata = n_md ? &md : NULL;
        if (grpc_call_start_batch(s->call, &op, 1, &s->tag_send, NULL) != GRPC_CALL_OK)
                r = -EIO;
        else
                r = cq_wait(c, &s->tag_send, gpr_inf_future(GPR_CLOCK_MONOTONIC));
        auth_md_done(&md, n_md);
        /* A failed send of metadata shows up as the call's status later. */
        if (r < 0) {
                bc_stream_free(s);
                return r;
        }
        /* The status batch stays armed until the end. */
        memset(&op, 0, sizeof(op));
        op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        op.data.recv_status_on_client.trailing_metadata = &s->trailing_md;
        op.data.recv_status_on_client.status = &s->code;
        op.data.recv_status_on_client.status_details = &s->details;
        if (grpc_call_start_batch(s->call, &op, 1, &s->tag_status, NULL) != GRPC_CALL_OK) {
                bc_stream_free(s);
                return -EIO;
        }
        s->status_pending = true;

        *ret = s;
        return 0;
}

int bc_stream_send(BcStream *s, const ProtobufCMessage *msg) {
        grpc_byte_buffer *bb;
        grpc_op op;
        int r;

        if (s->send_closed || s->ended)
                return -EPIPE;
        bb = pb_to_byte_buffer(msg);
        memset(&op, 0, sizeof(op));
        op.op = GRPC_OP_SEND_MESSAGE;
        op.data.send_message.send_message = bb;
        if (grpc_call_start_batch(s->call, &op, 1, &s->tag_send, NULL) != GRPC_CALL_OK)
                r = -EIO;
        else
                r = cq_wait(s->client, &s->tag_send, gpr_inf_future(GPR_CLOCK_MONOTONIC));
        grpc_byte_buffer_destroy(bb);
        if (r < 0)
                return r;
        return r == 1 ? 0 : -EPIPE;
}

int bc_stream_close_send(BcStream *s) {
        grpc_op op;
        int r;

        if (s->send_closed)
                return 0;
        s->send_closed = true;
        memset(&op, 0, sizeof(op));
        op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        if (grpc_call_start_batch(s->call, &op, 1, &s->tag_send, NULL) != GRPC_CALL_OK)
                return -EIO;
        r = cq_wait(s->client, &s->tag_send, gpr_inf_future(GPR_CLOCK_MONOTONIC));
        if (r < 0)
                return r;
        return r == 1 ? 0 : -EPIPE;
}

static void stream_collect_status(BcStream *s) {
        if (s->status_pending) {
                (void)cq_wait(s->client, &s->tag_status, gpr_inf_future(GPR_CLOCK_MONOTONIC));
                s->status_pending = false;
        }
        status_set_slice(&s->status, s->code, s->details);
        bc_status_read_details(&s->status, &s->trailing_md);
        s->ended = true;
}

int bc_stream_recv(BcStream *s, const ProtobufCMessageDescriptor *desc, int timeout_ms, ProtobufCMessage **ret) {
        ProtobufCMessage *m;
        int r;

        if (s->ended)
                return 1;
        if (!s->recv_pending) {
                grpc_op ops[2];
                size_t n = 0;

                memset(ops, 0, sizeof(ops));
                if (!s->asked_initial_md) {
                        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
                        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
                        s->asked_initial_md = true;
                }
                ops[n].op = GRPC_OP_RECV_MESSAGE;
                ops[n++].data.recv_message.recv_message = &s->recv_buf;
                if (grpc_call_start_batch(s->call, ops, n, &s->tag_recv, NULL) != GRPC_CALL_OK)
                        return -EIO;
                s->recv_pending = true;
        }
        r = cq_wait(s->client, &s->tag_recv, deadline_ms(timeout_ms));
        if (r == -ETIMEDOUT)
                return r;
        s->recv_pending = false;
        if (r != 1 || !s->recv_buf) {
                /* End of the stream (or the call failed): the status batch
                 * completes right after. */
                stream_collect_status(s);
                return 1;
        }
        m = pb_from_byte_buffer(desc, s->recv_buf);
        grpc_byte_buffer_destroy(s->recv_buf);
        s->recv_buf = NULL;
        if (!m)
                return -EBADMSG;
        *ret = m;
        return 0;
}

const BcStatus *bc_stream_status(const BcStream *s) {
        return &s->status;
}

void bc_stream_cancel(BcStream *s) {
        if (s && s->call)
                grpc_call_cancel(s->call, NULL);
}

BcStream *bc_stream_free(BcStream *s) {
        if (!s)
                return NULL;
        if (s->call) {
                if (!s->ended)
                        grpc_call_cancel(s->call, NULL);
                if (s->recv_pending) {
                        (void)cq_wait(s->client, &s->tag_recv, gpr_inf_future(GPR_CLOCK_MONOTONIC));
                        s->recv_pending = false;
                }
                if (s->status_pending) {
                        (void)cq_wait(s->client, &s->tag_status, gpr_inf_future(GPR_CLOCK_MONOTONIC));
                        s->status_pending = false;
                }
                grpc_call_unref(s->call);
        }
        if (s->recv_buf)
                grpc_byte_buffer_destroy(s->recv_buf);
        grpc_slice_unref(s->details);
        grpc_metadata_array_destroy(&s->initial_md);
        grpc_metadata_array_destroy(&s->trailing_md);
        free(s);
        return NULL;
}

/* ---- small helpers ---- */

void bc_buf_append(BcBuf *b, const void *data, size_t size) {
        if (b->len + size + 1 > b->cap) {
                size_t cap = MAX(b->cap * 2, b->len + size + 1);
                char *p = realloc(b->data, MAX(cap, (size_t)64));

                if (!p)
                        abort();
                b->data = p;
                b->cap = MAX(cap, (size_t)64);
        }
        if (size)
                memcpy(b->data + b->len, data, size);
        b->len += size;
        b->data[b->len] = 0;
}

void bc_buf_reset(BcBuf *b) {
        b->len = 0;
        if (b->data)
                b->data[0] = 0;
}

void bc_buf_done(BcBuf *b) {
        free(b->data);
        *b = (BcBuf) {};
}

const char *bc_state_name(BcState s) {
        const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&coreweave__sandbox__v1__state__descriptor, s);

        return v ? v->name : "?";
}

const char *bc_code_name(int code) {
        static __thread char buf[64];

        if (code >= 0 && code <= GRPC_STATUS_UNAUTHENTICATED)
                return grpc_status_name(code);
        snprintf(buf, sizeof(buf), "local error %d (%s)", code, strerror(-code));
        return buf;
}

int64_t bc_ts_ns(const Google__Protobuf__Timestamp *ts) {
        if (!ts)
                return 0;
        return ts->seconds * 1000000000LL + ts->nanos;
}
