/*
 * The completion-queue thread and its hand-off to the loop. See cqloop.h.
 *
 * Invariant: events are delivered in the order the CQ produced them, and every
 * tag's callback runs exactly once, on the loop thread. uv_async_send()
 * coalesces, so the async callback always drains the whole vector.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cqloop.h"
#include "macro.h"

static void cq_push(CqLoop *c, CqTag *tag, bool ok) {
        uv_mutex_lock(&c->lock);
        if (c->n_queue == c->n_alloc) {
                size_t n = c->n_alloc ? c->n_alloc * 2 : 64;
                CqEvent *q = realloc(c->queue, n * sizeof(*q));
                /* The CQ thread may not block or drop an event; without memory
                 * there is no correct way on. */
                if (!q)
                        abort();
                c->queue = q;
                c->n_alloc = n;
        }
        c->queue[c->n_queue++] = (CqEvent){ tag, ok };
        uv_mutex_unlock(&c->lock);
}

static void cq_thread(void *arg) {
        CqLoop *c = arg;

        for (;;) {
                grpc_event ev = grpc_completion_queue_next(c->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
                if (ev.type == GRPC_QUEUE_SHUTDOWN)
                        break;
                if (ev.type != GRPC_OP_COMPLETE)
                        continue;
                cq_push(c, ev.tag, ev.success != 0);
                (void)uv_async_send(&c->async);
        }

        uv_mutex_lock(&c->lock);
        c->thread_done = true;
        uv_mutex_unlock(&c->lock);
        (void)uv_async_send(&c->async);
}

static void cq_async_closed(uv_handle_t *h) {
        CqLoop *c = container_of((uv_async_t *)h, CqLoop, async);

        uv_mutex_destroy(&c->lock);
        free(c->queue);
        c->queue = NULL;
        if (c->on_closed)
                c->on_closed(c);
}

static void cq_async(uv_async_t *h) {
        CqLoop *c = container_of(h, CqLoop, async);
        CqEvent *batch;
        size_t n;
        bool done;

        c->wakeups++;
        for (;;) {
                uv_mutex_lock(&c->lock);
                batch = c->queue;
                n = c->n_queue;
                done = c->thread_done;
                c->queue = NULL;
                c->n_queue = c->n_alloc = 0;
                uv_mutex_unlock(&c->lock);
                if (n == 0)
                        break;
                for (size_t i = 0; i < n; i++) {
                        c->events++;
                        batch[i].tag->fn(batch[i].tag, batch[i].ok);
                }
                free(batch);
        }

        if (done && !uv_is_closing((uv_handle_t *)h)) {
                uv_thread_join(&c->thread);
                grpc_completion_queue_destroy(c->cq);
                c->cq = NULL;
                uv_close((uv_handle_t *)h, cq_async_closed);
        }
}

int cq_loop_init(CqLoop *c, uv_loop_t *loop) {
        int r;

        *c = (CqLoop){ .loop = loop };
        r = uv_mutex_init(&c->lock);
        if (r < 0)
                return r;
        r = uv_async_init(loop, &c->async, cq_async);
        if (r < 0) {
                uv_mutex_destroy(&c->lock);
                return r;
        }
        c->cq = grpc_completion_queue_create_for_next(NULL);
        r = uv_thread_create(&c->thread, cq_thread, c);
        if (r < 0) {
                grpc_completion_queue_shutdown(c->cq);
                grpc_completion_queue_destroy(c->cq);
                c->cq = NULL;
                uv_close((uv_handle_t *)&c->async, NULL);
                uv_mutex_destroy(&c->lock);
                return r;
        }
        return 0;
}

void cq_loop_shutdown(CqLoop *c, CqLoopClosedFn on_closed) {
        if (c->shutting_down)
                return;
        c->shutting_down = true;
        c->on_closed = on_closed;
        grpc_completion_queue_shutdown(c->cq);
}
