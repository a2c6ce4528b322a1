/*
 * Ops internals: what exec.c, files.c and logs.c share. Every operation
 * embeds an Op as its first member: the client's call, the sandbox it
 * names, the handle lookup or wait, the one backend call or stream it makes,
 * and the credit its client has granted.
 *
 * Ending: the client's call ends once, through op_finish() or op_fail();
 * op_fail() also stops what still runs for it (the wait, the backend call or
 * stream). The Op lives on until the lookup or wait and the backend side have
 * called back too; op_maybe_free() frees it then.
 *
 * Flow control: each byte of stream data sent to the client uses a byte of
 * credit, and Credit frames add to it. An operation sends (or reads the next
 * backend message) only while credit is left and the connection takes
 * output; its OpKind.pump does that and runs again on Credit and drain.
 *
 * A backend stream opened with op_stream_open() reads one message at a time:
 * OpKind.message takes it while the call lives, OpKind.pump asks for the
 * next, and OpKind.done gets the final status while the call lives.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "handle.h"
#include "ops.h"

#define OPS_FRAME_MARGIN        256u            /* frame fields around a payload */

typedef struct Op Op;

/* What differs between kinds of operation. */
typedef struct OpKind {
        /* Log the end of the client's call; @st is OK when it finished. */
        void (*log_end)(const Op *op, const Status *st);
        /* Send, or read from the backend, what the client may take now (NULL: no stream data). */
        void (*pump)(Op *op);
        /* One backend stream message while the call lives; the caller frees @msg. */
        void (*message)(Op *op, ProtobufCMessage *msg);
        /* The backend stream's final status while the call lives. */
        void (*done)(Op *op, const Status *st);
        /* Free what the operation holds besides its Op (NULL: nothing). */
        void (*release)(Op *op);
} OpKind;

struct Op {
        const OpKind *kind;
        Manager *manager;
        Call *call;                     /* NULL once the client's call has ended */
        char *sandbox_arg;              /* the id the client gave */
        Handle *handle;                 /* the operation's reference, once it has one */
        char *session_id;               /* for logs; NULL for a sandbox in no session */
        bool waiting;                   /* a handle lookup or wait has not called back */
        HandleWaiter *waiter;           /* that wait, when it can be ended early */
        BackendCall *backend;           /* a unary backend call in flight */
        BackendStream *stream;          /* from op_stream_open() until done */
        bool reading;                   /* a stream read is outstanding */
        bool cancelled;                 /* we cancelled the backend side */
        int64_t credit;
};

/* A growing byte buffer. */
typedef struct OpBuf {
        uint8_t *data;
        size_t len, cap;
} OpBuf;

/* An in-band error code of a backend stream and the status it stands for. */
typedef struct OpErrorCode {
        const char *code;
        grpc_status_code status;
} OpErrorCode;

/**
 * op_new() - allocate @size zeroed bytes that start with an Op of @kind for
 * @call on @sandbox_id. On OOM the call fails with RESOURCE_EXHAUSTED and
 * NULL is returned.
 */
Op *op_new(size_t size, const OpKind *kind, Manager *m, Call *call, const char *sandbox_id);

/**
 * op_maybe_free() - free @op once its call has ended and nothing it started
 * can call back any more.
 */
void op_maybe_free(Op *op);

/* The backend id once known, else the id the client gave. */
const char *op_sandbox_id(const Op *op);

/**
 * op_wait_running() - take @call_ops for the call, then resolve the sandbox
 * for the caller's uid and wait until it runs (handle_wait_running_by_id());
 * @fn gets @op as its userdata and should begin with op_running().
 */
void op_wait_running(Op *op, const CallOps *call_ops, HandleFn fn);

/**
 * op_running() - a lookup or wait has called back with @h (or @st): keep
 * @h and the id of its session. Returns true when the operation goes on;
 * false when its call has ended (then @op may be gone).
 */
bool op_running(Op *op, Handle *h, const Status *st);

/**
 * op_finish() - end the call with @frame (NULL: an empty one) as its final
 * frame, if it has not ended yet.
 */
void op_finish(Op *op, DaemonFrame *frame);

/**
 * op_fail() - end the call with @st, if it has not ended yet, and stop what
 * still runs for it: the wait, the backend call or stream.
 */
void op_fail(Op *op, const Status *st);
void op_failf(Op *op, grpc_status_code code, const char *fmt, ...) _printf_(3, 4);
void op_oom(Op *op);

/**
 * op_fail_stream_error() - end the call for a backend stream's in-band error:
 * @code as mapped by @map (INTERNAL when it is not there) and kept as the
 * reason; the message reads "@what stream error: @message" (@code when empty).
 */
void op_fail_stream_error(Op *op, const char *what, const char *code, const char *message,
                          const OpErrorCode *map, size_t n_map);

/* ---- data to the client ------------------------------------------------------------ */

/* The most payload one frame carries. */
size_t op_chunk_max(const Op *op);

/**
 * op_send() - send the non-final frame @f. Returns 0; -EPIPE when the
 * connection is gone (its cancel follows); another negative errno after
 * failing the call.
 */
int op_send(Op *op, DaemonFrame *f);

/**
 * op_send_data() - send @data in frames of at most op_chunk_max() bytes:
 * each time @slot (a field of @f) points at the next piece. On success the
 * bytes are taken from the credit. Returns as op_send().
 */
int op_send_data(Op *op, DaemonFrame *f, ProtobufCBinaryData *slot, const ProtobufCBinaryData *data);

/* CallOps hooks for Credit (adds to the credit), drain and Cancel. */
void op_on_credit(Call *call, uint32_t bytes);
void op_on_drain(Call *call);
void op_on_cancel(Call *call);

/* The CallOps of an operation that sends stream data and takes no input. */
extern const CallOps op_output_call_ops;

/* ---- the backend stream ------------------------------------------------------------ */

/* Open the backend stream of @op; nothing is read until op_stream_read(). */
void op_stream_open(Op *op, BackendMethod method, const ProtobufCMessage *first, int64_t timeout_ms);

/**
 * op_stream_read() - ask for the next message unless one is outstanding or
 * the stream was cancelled. With @flow_control, only while credit is left and
 * the connection takes output; once the call has ended the rest is drained.
 */
void op_stream_read(Op *op, bool flow_control);

/* ---- buffers ----------------------------------------------------------------------- */

/**
 * op_buf_append() - append @n bytes, growing the buffer to at least twice
 * its size and at least @min_cap, but never above @max_cap (the caller keeps
 * the total within it). Returns 0 or -ENOMEM.
 */
int op_buf_append(OpBuf *b, const void *data, size_t n, size_t min_cap, size_t max_cap);
