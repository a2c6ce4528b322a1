/*
 * LogBuf: a bounded buffer of one sandbox's main-process output, kept as
 * lines with their arrival time, for StreamLogs (tail, since, follow,
 * timestamps). When full, the oldest lines are dropped.
 */
#pragma once

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
