/*
 * LogBuf: the main-process output of one sandbox as a bounded sequence of
 * lines.
 *
 * Lines live in a ring of pointers indexed by sequence number: the line with
 * seq S sits at ring[(head + S - first_seq) % ring_alloc], so a reader that
 * keeps only its next seq finds its place in O(1) and learns at once when that
 * place has been dropped. Sequence numbers are dense and never reused, which
 * is what makes them usable as resume offsets.
 *
 * The bound counts line bytes plus a fixed overhead per line, so a flood of
 * empty lines is bounded as well as a few long ones. The newest line is always
 * kept, even when it alone exceeds the bound.
 *
 * Output arrives in arbitrary chunks. Bytes after the last newline wait in
 * the partial buffer until their newline, until they reach LOGBUF_LINE_MAX
 * (then they are stored as a line of their own, without a newline), or until
 * logbuf_close().
 *
 * Pure data structure, no I/O: followers are plain callbacks.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "logbuf.h"
#include "macro.h"

/* Accounted per line on top of its bytes: the LogLine header, its ring slot
 * and the allocator's own header. */
#define LINE_OVERHEAD (sizeof(LogLine) + 2 * sizeof(void *))

#define RING_MIN 64

struct LogBuf {
        size_t max_bytes;
        size_t bytes;

        LogLine **ring;
        size_t ring_alloc;              /* a power of two, or 0 */
        size_t head;                    /* ring index of first_seq */
        size_t n_lines;
        uint64_t first_seq;

        uint8_t *partial;
        size_t n_partial, partial_alloc;
        int64_t partial_time_ns;

        int64_t last_time_ns;
        bool closed;

        LogFollower *followers_head, *followers_tail;
        LogFollower *notify_next;       /* next follower of a notification under way */
};

int logbuf_new(LogBuf **ret, size_t max_bytes) {
        LogBuf *lb;

        lb = calloc(1, sizeof(*lb));
        if (!lb)
                return -ENOMEM;
        lb->max_bytes = max_bytes;
        *ret = lb;
        return 0;
}

static LogLine *ring_at(const LogBuf *lb, size_t i) {
        return lb->ring[(lb->head + i) & (lb->ring_alloc - 1)];
}

static void drop_oldest(LogBuf *lb) {
        LogLine *l = lb->ring[lb->head];

        lb->ring[lb->head] = NULL;
        lb->head = (lb->head + 1) & (lb->ring_alloc - 1);
        lb->n_lines--;
        lb->first_seq++;
        lb->bytes -= l->len + LINE_OVERHEAD;
        free(l);
}

static int ring_grow(LogBuf *lb) {
        size_t n = lb->ring_alloc ? lb->ring_alloc * 2 : RING_MIN;
        LogLine **ring;

        ring = calloc(n, sizeof(*ring));
        if (!ring)
                return -ENOMEM;
        for (size_t i = 0; i < lb->n_lines; i++)
                ring[i] = ring_at(lb, i);
        free(lb->ring);
        lb->ring = ring;
        lb->ring_alloc = n;
        lb->head = 0;
        return 0;
}

static int store_line(LogBuf *lb, const uint8_t *data, size_t len, int64_t time_ns) {
        LogLine *l;

        if (lb->n_lines == lb->ring_alloc && ring_grow(lb) < 0)
                return -ENOMEM;

        l = malloc(sizeof(*l) + len);
        if (!l)
                return -ENOMEM;
        l->seq = lb->first_seq + lb->n_lines;
        l->time_ns = time_ns;
        l->len = len;
        memcpy(l->data, data, len);

        lb->ring[(lb->head + lb->n_lines) & (lb->ring_alloc - 1)] = l;
        lb->n_lines++;
        lb->bytes += len + LINE_OVERHEAD;

        while (lb->bytes > lb->max_bytes && lb->n_lines > 1)
                drop_oldest(lb);
        return 0;
}

static void notify(LogBuf *lb, LogBufEvent event) {
        /* notify_next lets a callback detach any follower, itself included,
         * without breaking the walk. */
        for (LogFollower *f = lb->followers_head; f; f = lb->notify_next) {
                lb->notify_next = f->next;
                f->fn(f, event);
        }
        lb->notify_next = NULL;
}

static int partial_add(LogBuf *lb, const uint8_t *data, size_t n, int64_t time_ns) {
        if (lb->n_partial + n > lb->partial_alloc) {
                size_t a = MAX(lb->partial_alloc * 2, (size_t)256);
                uint8_t *p;

                while (a < lb->n_partial + n)
                        a *= 2;
                a = MIN(a, (size_t)LOGBUF_LINE_MAX);
                p = realloc(lb->partial, a);
                if (!p)
                        return -ENOMEM;
                lb->partial = p;
                lb->partial_alloc = a;
        }
        if (lb->n_partial == 0)
                lb->partial_time_ns = time_ns;
        memcpy(lb->partial + lb->n_partial, data, n);
        lb->n_partial += n;
        return 0;
}

static bool partial_flush(LogBuf *lb) {
        bool stored;

        if (lb->n_partial == 0)
                return false;
        /* Out of memory loses this line; there is nobody to report it to
         * and the log goes on. */
        stored = store_line(lb, lb->partial, lb->n_partial, lb->partial_time_ns) >= 0;
        lb->n_partial = 0;
        return stored;
}

void logbuf_append(LogBuf *lb, const uint8_t *data, size_t n, int64_t time_ns) {
        bool stored = false;

        if (!lb || lb->closed || n == 0)
                return;

        /* Keep arrival times ordered so "since" is a binary search, even if
         * the realtime clock steps back. */
        if (time_ns < lb->last_time_ns)
                time_ns = lb->last_time_ns;
        lb->last_time_ns = time_ns;

        while (n > 0) {
                const uint8_t *nl = memchr(data, '\n', n);
                size_t take = nl ? (size_t)(nl - data) + 1 : n;
                size_t room = LOGBUF_LINE_MAX - lb->n_partial;
                bool complete = nl != NULL;

                /* Reaching the line limit ends the line, newline or not. */
                if (take >= room) {
                        take = room;
                        complete = true;
                }

                if (complete && lb->n_partial == 0)
                        /* The common case: a whole line in one chunk, no copy
                         * through the partial buffer. */
                        stored = store_line(lb, data, take, time_ns) >= 0 || stored;
                else if (partial_add(lb, data, take, time_ns) >= 0 && complete)
                        stored = partial_flush(lb) || stored;

                data += take;
                n -= take;
        }

        if (stored)
                notify(lb, LOGBUF_EVENT_LINES);
}

void logbuf_close(LogBuf *lb) {
        if (!lb || lb->closed)
                return;
        lb->closed = true;
        (void)partial_flush(lb);
        notify(lb, LOGBUF_EVENT_CLOSED);
}

static void follower_detach(LogFollower *f) {
        LogBuf *lb = f->lb;

        if (lb->notify_next == f)
                lb->notify_next = f->next;
        if (f->prev)
                f->prev->next = f->next;
        else
                lb->followers_head = f->next;
        if (f->next)
                f->next->prev = f->prev;
        else
                lb->followers_tail = f->prev;
        f->prev = f->next = NULL;
        f->lb = NULL;
}

LogBuf *logbuf_free(LogBuf *lb) {
        if (!lb)
                return NULL;

        /* Detach before the callback so it may free the follower's owner. */
        while (lb->followers_head) {
                LogFollower *f = lb->followers_head;

                follower_detach(f);
                f->fn(f, LOGBUF_EVENT_FREED);
        }

        while (lb->n_lines > 0)
                drop_oldest(lb);
        free(lb->ring);
        free(lb->partial);
        free(lb);
        return NULL;
}

uint64_t logbuf_first_seq(const LogBuf *lb) {
        return lb->first_seq;
}

uint64_t logbuf_end_seq(const LogBuf *lb) {
        return lb->first_seq + lb->n_lines;
}

const LogLine *logbuf_get(const LogBuf *lb, uint64_t seq) {
        if (seq < lb->first_seq || seq - lb->first_seq >= lb->n_lines)
                return NULL;
        return ring_at(lb, seq - lb->first_seq);
}

uint64_t logbuf_seq_tail(const LogBuf *lb, uint64_t n) {
        if (n >= lb->n_lines)
                return lb->first_seq;
        return lb->first_seq + lb->n_lines - n;
}

uint64_t logbuf_seq_since(const LogBuf *lb, int64_t time_ns) {
        size_t lo = 0, hi = lb->n_lines;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (ring_at(lb, mid)->time_ns < time_ns)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lb->first_seq + lo;
}

bool logbuf_is_closed(const LogBuf *lb) {
        return lb->closed;
}

size_t logbuf_bytes(const LogBuf *lb) {
        return lb->bytes;
}

void logbuf_follow(LogBuf *lb, LogFollower *f, LogFollowerFn fn) {
        if (f->lb)
                follower_detach(f);
        f->fn = fn;
        f->lb = lb;
        f->next = NULL;
        f->prev = lb->followers_tail;
        if (lb->followers_tail)
                lb->followers_tail->next = f;
        else
                lb->followers_head = f;
        lb->followers_tail = f;
}

void logbuf_unfollow(LogFollower *f) {
        if (f && f->lb)
                follower_detach(f);
}
