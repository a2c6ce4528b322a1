/*
 * Server call contexts, shared by server.c (pools, unary answers) and
 * server-stream.c (streams). Private to those two files; handlers use
 * server.h.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>
#include <uv.h>

#include "server.h"

typedef enum CallShape {
        CALL_UNARY,
        CALL_SERVER_STREAM,
        CALL_BIDI,
} CallShape;

/* The part of every call context that server.c manages. UnaryCall and
 * ServerStream start with it. */
typedef struct Call {
        Server *server;
        RpcMethod method;
        CallShape shape;
        grpc_call *call;
        gpr_timespec deadline;
        grpc_metadata_array md;
        grpc_byte_buffer *payload;      /* first request as received */
        ProtobufCMessage *request;      /* ... decoded; freed with the call */
        uint64_t start_ms;

        CqTag request_tag, close_tag, status_tag;
        unsigned pending;               /* tags given to gRPC, not yet back */
        int cancelled;                  /* set by RECV_CLOSE_ON_SERVER */
        bool live;                      /* a real call, counted in n_calls */
        bool closed;                    /* RECV_CLOSE_ON_SERVER came back */
        bool counted;                   /* authenticated, counted by faults_decide() */
        bool handled;                   /* given to the rpc's handler */
        bool md_sent;                   /* initial metadata is on its way */
        bool status_started;
        bool status_ok;
        bool client_left;               /* the client was gone before our status */
        bool injected;
        bool freeing;
        grpc_status_code result;        /* the status sent */
        const char *error_reason;       /* an ErrorInfo reason for the failure (static), or NULL */
        uint32_t retry_delay_ms;        /* a RetryInfo for the failure; 0 = none */
        grpc_slice status_details;
        FaultDecision fault;

        uv_timer_t timer;               /* latency, reply delay, deferred callbacks */
        bool timer_inited, timer_active;
        void (*timer_fn)(struct Call *c);
} Call;

/* server.c */

/**
 * call_start_batch() - start @ops with @tag and count it as pending. On a
 * failure (a bug of ours) the call is cancelled and -EIO returned.
 */
int call_start_batch(Call *c, const grpc_op *ops, size_t n, CqTag *tag);

/**
 * call_send_status() - send the status (with initial metadata if not sent
 * yet, and @msg if not NULL; @msg is consumed) under status_tag.
 */
int call_send_status(Call *c, grpc_byte_buffer *msg, grpc_status_code code, const char *details);

/**
 * call_timer_start() - run @fn from the call's timer after @ms; the call is
 * not freed while the timer is armed.
 */
void call_timer_start(Call *c, uint64_t ms, void (*fn)(Call *c));

/**
 * call_tag_done() - one pending tag came back; free the call if that was
 * the last thing it waited for. Tag callbacks only, as their last step.
 */
void call_tag_done(Call *c);

/* server-stream.c */

/**
 * server_stream_alloc() - a zeroed ServerStream, returned as its Call.
 * call_stream() - the ServerStream a stream Call belongs to.
 */
Call *server_stream_alloc(void);
ServerStream *call_stream(Call *c);

/**
 * server_stream_set_drop() - injected drop: end the stream with UNAVAILABLE
 * after the handler's first message went out, or when it finishes.
 */
void server_stream_set_drop(ServerStream *s);

/**
 * server_stream_mark_ended() - the server answered before the handler ran.
 */
void server_stream_mark_ended(ServerStream *s);

/**
 * server_stream_closed() - RECV_CLOSE reported a cancelled call.
 */
void server_stream_closed(ServerStream *s);

/**
 * server_stream_finished() - the call is over and every tag is back: run
 * on_done() once. Returns true when the stream may be freed.
 */
bool server_stream_finished(ServerStream *s);

/**
 * server_stream_release() - free the stream (and with it the Call).
 */
void server_stream_release(ServerStream *s);
