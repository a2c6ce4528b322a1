/*
 * CqLoop: one gRPC completion queue per process, drained by one thread and
 * handed to the libuv loop.
 *
 * The CQ thread blocks in grpc_completion_queue_next() (it is also gRPC's I/O
 * thread, so it never waits on us), appends (tag, ok) to a locked vector and
 * wakes the loop with uv_async_send(). The async callback swaps the vector out
 * and runs each tag's callback on the loop thread. Every other gRPC call is made
 * on the loop thread, so call contexts need no locks.
 */
#pragma once

#include <stdbool.h>
#include <grpc/grpc.h>
#include <uv.h>

typedef struct CqTag CqTag;
typedef void (*CqTagFn)(CqTag *tag, bool ok);

/* Embed in the object that owns the operation; recover it with container_of. */
struct CqTag {
        CqTagFn fn;
};

typedef struct CqEvent {
        CqTag *tag;
        bool ok;
} CqEvent;

typedef struct CqLoop CqLoop;
typedef void (*CqLoopClosedFn)(CqLoop *cq);

struct CqLoop {
        uv_loop_t *loop;
        grpc_completion_queue *cq;
        uv_thread_t thread;
        uv_async_t async;
        uv_mutex_t lock;
        CqEvent *queue;         /* filled by the CQ thread, under lock */
        size_t n_queue, n_alloc;
        bool thread_done;       /* CQ thread saw GRPC_QUEUE_SHUTDOWN */
        bool shutting_down;
        CqLoopClosedFn on_closed;
        unsigned long long wakeups, events;
};

/**
 * cq_loop_init() - create the completion queue and start its thread.
 * Returns 0 or a negative errno.
 */
int cq_loop_init(CqLoop *c, uv_loop_t *loop);

/**
 * cq_loop_shutdown() - shut the queue down once every call, server and
 * watch using it is gone. When the thread has drained the queue, the thread is
 * joined, the queue destroyed, the async handle closed, and then @on_closed
 * (may be NULL) runs on the loop thread.
 */
void cq_loop_shutdown(CqLoop *c, CqLoopClosedFn on_closed);
