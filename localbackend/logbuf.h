/*
 * LogBuf: a bounded buffer of one sandbox's main-process output, kept as
 * lines with their arrival time, for StreamLogs (tail, since, follow,
 * timestamps). When full, the oldest lines are dropped.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct LogBuf LogBuf;

/* Default bound on the bytes kept per sandbox. */
#define LOGBUF_DEFAULT_MAX_BYTES (4 * 1024 * 1024)

/**
 * logbuf_new() - an empty buffer keeping at most @max_bytes of line data.
 * Returns 0 or -ENOMEM.
 */
int logbuf_new(LogBuf **ret, size_t max_bytes);

/**
 * logbuf_free() - free @lb (NULL is fine); followers still attached are
 * told the log ended first. Returns NULL.
 */
LogBuf *logbuf_free(LogBuf *lb);

/**
 * logbuf_append() - add raw output read at @time_ns (realtime). Complete
 * lines become entries at once; a trailing partial line waits for its newline
 * or logbuf_close(). Lines longer than 64 KiB are split.
 */
void logbuf_append(LogBuf *lb, const uint8_t *data, size_t n, int64_t time_ns);

/**
 * logbuf_close() - the main process has gone: flush the partial line and end
 * every follower.
 */
void logbuf_close(LogBuf *lb);

/*
 * Reading. Every line gets a sequence number when it is stored: 0 for the
 * first, then one more per line, never reused. A reader keeps its position
 * as the seq of the next line it wants; lines older than
 * logbuf_first_seq() have been dropped.
 */
typedef struct LogLine {
        uint64_t seq;
        int64_t time_ns;        /* realtime arrival of the line's first byte */
        size_t len;             /* bytes in data, including a final '\n' if any */
        uint8_t data[];
} LogLine;

/* Longest stored line; longer output is split into lines of this size. */
#define LOGBUF_LINE_MAX (64 * 1024)

/**
 * logbuf_first_seq() - seq of the oldest line still kept (== end when empty).
 */
uint64_t logbuf_first_seq(const LogBuf *lb);

/**
 * logbuf_end_seq() - seq the next stored line will get.
 */
uint64_t logbuf_end_seq(const LogBuf *lb);

/**
 * logbuf_get() - the line with @seq, or NULL if it was dropped or has not
 * arrived. Valid until the next logbuf_append(), logbuf_close() or
 * logbuf_free().
 */
const LogLine *logbuf_get(const LogBuf *lb, uint64_t seq);

/**
 * logbuf_seq_tail() - seq of the first of the last @n lines kept.
 */
uint64_t logbuf_seq_tail(const LogBuf *lb, uint64_t n);

/**
 * logbuf_seq_since() - seq of the first kept line that arrived at or after
 * @time_ns (end seq if none). Arrival times never go backwards in a buffer.
 */
uint64_t logbuf_seq_since(const LogBuf *lb, int64_t time_ns);

/**
 * logbuf_is_closed() - logbuf_close() was called: no more lines will come.
 */
bool logbuf_is_closed(const LogBuf *lb);

/**
 * logbuf_bytes() - bytes currently accounted against max_bytes (line data
 * plus a fixed overhead per line).
 */
size_t logbuf_bytes(const LogBuf *lb);

/*
 * Following. A LogFollower is embedded in the reader's object and attached
 * with logbuf_follow(); its callback runs on the thread that appends:
 *
 *   LOGBUF_EVENT_LINES  - one or more lines were stored (read them with
 *                         logbuf_get() from your own position);
 *   LOGBUF_EVENT_CLOSED - logbuf_close(): nothing more will come. The buffer
 *                         stays readable and the follower stays attached, so
 *                         that it is still told if the buffer is freed;
 *   LOGBUF_EVENT_FREED  - logbuf_free(): the follower has been detached and
 *                         the buffer must not be touched after the callback
 *                         returns (read what you still need inside it).
 *
 * A callback may detach itself or any other follower, and may free the
 * object the follower is embedded in after detaching it. It must not
 * append to, close or free the buffer.
 */
typedef enum LogBufEvent {
        LOGBUF_EVENT_LINES,
        LOGBUF_EVENT_CLOSED,
        LOGBUF_EVENT_FREED,
} LogBufEvent;

typedef struct LogFollower LogFollower;
typedef void (*LogFollowerFn)(LogFollower *f, LogBufEvent event);

struct LogFollower {
        LogFollowerFn fn;
        LogBuf *lb;                     /* NULL while detached */
        LogFollower *prev, *next;
};

/**
 * logbuf_follow() - attach @f (zero-initialised or detached) with @fn. A
 * follower attached to a closed buffer gets no CLOSED event; check
 * logbuf_is_closed().
 */
void logbuf_follow(LogBuf *lb, LogFollower *f, LogFollowerFn fn);

/**
 * logbuf_unfollow() - detach @f; a detached follower is fine.
 */
void logbuf_unfollow(LogFollower *f);
