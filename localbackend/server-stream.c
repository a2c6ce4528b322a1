/*
 * Server streams (StreamLogs, StreamExec): a write queue with one
 * SEND_MESSAGE in flight, at most one RECV_MESSAGE armed, and the final
 * status once the queue has drained.
 *
 * Flow control: server_stream_send() returns the bytes queued or in flight.
 * A producer that sees SERVER_STREAM_HIGH_WATER or more pauses; on_writable()
 * runs when a completed send brings the queue below half of the mark. The
 * gap keeps a producer from waking for every single message.
 *
 * The stream is "done" for the handler once it has finished, once the client
 * has gone, or once the server has ended it (an undecodable client message, a
 * failed batch, an injected drop); sends and reads after that are ignored.
 * on_done() runs exactly once, from a tag callback, after RECV_CLOSE and every
 * batch are back; server.c frees the stream right after it returns.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pbgrpc.h"
#include "server-call.h"

typedef struct SendItem {
        struct SendItem *next;
        grpc_byte_buffer *msg;
        size_t size;
} SendItem;

struct ServerStream {
        Call base;
        const ServerStreamOps *ops;
        void *userdata;

        SendItem *head, *tail;          /* waiting for the send slot */
        size_t queued;                  /* bytes waiting or in flight */
        size_t in_flight;               /* bytes of the SEND_MESSAGE in flight */
        bool sending;
        bool blocked;                   /* the producer was told to pause */
        unsigned n_sent;
        CqTag send_tag;

        CqTag recv_tag;
        grpc_byte_buffer *recv_msg;
        bool reading;
        bool half_closed;

        bool finishing;                 /* status chosen, sent after the queue */
        bool ended;                     /* ended by the server, not the handler */
        bool drop;                      /* injected: cut after the first message */
        grpc_status_code finish_code;
        char *finish_details;
        bool done_called;
};

#define DROP_MESSAGE "stream dropped (fault injection)"

ServerStream *call_stream(Call *c) {
        return container_of(c, ServerStream, base);
}

static void stream_drop_queue(ServerStream *s) {
        while (s->head) {
                SendItem *i = s->head;

                s->head = i->next;
                s->queued -= i->size;
                grpc_byte_buffer_destroy(i->msg);
                free(i);
        }
        s->tail = NULL;
}

bool server_stream_is_done(const ServerStream *s) {
        return s->finishing || s->base.closed;
}

/* Start the next send, or the status once nothing is left to send. */
static void stream_pump(ServerStream *s) {
        Call *c = &s->base;
        grpc_op ops[2] = {};
        SendItem *i;
        size_t n = 0;

        if (s->sending || c->status_started || c->closed)
                return;
        if (!s->head) {
                if (s->finishing)
                        (void)call_send_status(c, NULL, s->finish_code, s->finish_details);
                return;
        }

        i = s->head;
        s->head = i->next;
        if (!s->head)
                s->tail = NULL;
        if (!c->md_sent) {
                ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
                c->md_sent = true;
        }
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = i->msg;
        n++;
        if (call_start_batch(c, ops, n, &s->send_tag) < 0) {
                /* The call is cancelled; RECV_CLOSE ends it. */
                s->queued -= i->size;
                stream_drop_queue(s);
                s->finishing = s->ended = true;
        } else {
                s->sending = true;
                s->in_flight = i->size;
        }
        grpc_byte_buffer_destroy(i->msg);
        free(i);
}

/* The server ends the stream in place of the handler. */
static void stream_end(ServerStream *s, grpc_status_code code, const char *details, bool injected) {
        if (s->base.status_started || s->base.closed || s->ended)
                return;
        log_debug("%s: ending the stream: %s", rpc_method_name(s->base.method), details);
        stream_drop_queue(s);
        s->finishing = s->ended = true;
        s->base.injected = injected;
        s->finish_code = code;
        free(s->finish_details);
        s->finish_details = strdup(details);
        stream_pump(s);
}

static void stream_on_send(CqTag *tag, bool ok) {
        ServerStream *s = container_of(tag, ServerStream, send_tag);

        s->sending = false;
        s->queued -= s->in_flight;
        s->in_flight = 0;
        s->n_sent++;
        if (!ok) {
                /* The call is dead; RECV_CLOSE tells us how. */
                stream_drop_queue(s);
                s->finishing = s->ended = true;
        } else if (s->drop && s->n_sent == 1)
                stream_end(s, GRPC_STATUS_UNAVAILABLE, DROP_MESSAGE, true);

        stream_pump(s);
        if (s->blocked && s->queued < SERVER_STREAM_HIGH_WATER / 2 && !server_stream_is_done(s)) {
                s->blocked = false;
                if (s->ops && s->ops->on_writable)
                        s->ops->on_writable(s, s->userdata);
        }
        call_tag_done(&s->base);
}

static void stream_deliver(ServerStream *s, grpc_byte_buffer *bb) {
        ProtobufCMessage *msg = NULL;

        if (bb) {
                msg = pb_from_byte_buffer(&coreweave__sandbox__v1__exec_stream_request__descriptor, bb);
                if (!msg) {
                        stream_end(s, GRPC_STATUS_INVALID_ARGUMENT, "malformed request", false);
                        return;
                }
        } else
                s->half_closed = true;

        if (s->ops && s->ops->on_message)
                s->ops->on_message(s, s->userdata, msg);
        if (msg)
                protobuf_c_message_free_unpacked(msg, NULL);
}

static void stream_on_recv(CqTag *tag, bool ok) {
        ServerStream *s = container_of(tag, ServerStream, recv_tag);
        grpc_byte_buffer *bb = TAKE_PTR(s->recv_msg);

        s->reading = false;
        if (ok && !server_stream_is_done(s))
                stream_deliver(s, bb);
        if (bb)
                grpc_byte_buffer_destroy(bb);
        call_tag_done(&s->base);
}

Call *server_stream_alloc(void) {
        ServerStream *s = calloc(1, sizeof(*s));

        if (!s)
                return NULL;
        s->send_tag.fn = stream_on_send;
        s->recv_tag.fn = stream_on_recv;
        return &s->base;
}

void server_stream_set_ops(ServerStream *s, const ServerStreamOps *ops, void *userdata) {
        s->ops = ops;
        s->userdata = userdata;
}

void server_stream_read(ServerStream *s) {
        grpc_op op = {
                .op = GRPC_OP_RECV_MESSAGE,
                .data.recv_message.recv_message = &s->recv_msg,
        };

        if (s->reading || s->half_closed || server_stream_is_done(s))
                return;
        if (call_start_batch(&s->base, &op, 1, &s->recv_tag) == 0)
                s->reading = true;
}

size_t server_stream_send(ServerStream *s, const ProtobufCMessage *msg) {
        SendItem *i;

        if (server_stream_is_done(s))
                return 0;
        i = malloc(sizeof(*i));
        if (!i) {
                stream_end(s, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", false);
                return 0;
        }
        i->next = NULL;
        i->msg = pb_to_byte_buffer(msg);
        i->size = grpc_byte_buffer_length(i->msg);
        if (s->tail)
                s->tail->next = i;
        else
                s->head = i;
        s->tail = i;
        s->queued += i->size;

        stream_pump(s);
        if (s->queued >= SERVER_STREAM_HIGH_WATER)
                s->blocked = true;
        return s->queued;
}

void server_stream_finish(ServerStream *s, grpc_status_code code, const char *fmt, ...) {
        char *details = NULL;
        va_list ap;

        if (server_stream_is_done(s))
                return;
        if (s->drop) {
                /* Finished before the first message went out: cut now. */
                stream_end(s, GRPC_STATUS_UNAVAILABLE, DROP_MESSAGE, true);
                return;
        }
        if (fmt) {
                va_start(ap, fmt);
                if (vasprintf(&details, fmt, ap) < 0)
                        details = NULL;
                va_end(ap);
        }
        s->finishing = true;
        s->finish_code = code;
        s->finish_details = details;
        stream_pump(s);
}

void server_stream_set_drop(ServerStream *s) {
        s->drop = true;
}

void server_stream_mark_ended(ServerStream *s) {
        s->finishing = s->ended = true;
}

void server_stream_closed(ServerStream *s) {
        /* The client is gone: nothing queued will ever be sent. */
        stream_drop_queue(s);
}

bool server_stream_finished(ServerStream *s) {
        Call *c = &s->base;

        if (c->handled && !s->done_called) {
                bool cancelled = s->ended || c->cancelled || !c->status_started || !c->status_ok;

                s->done_called = true;
                if (s->ops && s->ops->on_done)
                        s->ops->on_done(s, s->userdata, cancelled);
        }
        return true;
}

void server_stream_release(ServerStream *s) {
        stream_drop_queue(s);
        if (s->recv_msg)
                grpc_byte_buffer_destroy(s->recv_msg);
        free(s->finish_details);
        free(s);
}
