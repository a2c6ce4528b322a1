/*
 * What the call modules of libcwsandbox (api.c, exec.c, files.c, logs.c)
 * share: building requests from the caller's plain C arguments without
 * copying them, and copying reply fields into the library's own result
 * structs. Nothing here is exported.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conn.h"

#define PROTOCOL_VERSION        1u

#define BODY(x) CWSANDBOXD__V1__CLIENT_FRAME__BODY_##x
#define REPLY(x) CWSANDBOXD__V1__DAEMON_FRAME__BODY_##x

/* A borrowed string for a request: protobuf-c wants "" rather than NULL. */
static inline char *S(const char *s) {
        return (char *)(s ? s : "");
}

static inline bool arg_missing(const char *s) {
        return !s || !*s;
}

static inline int oom(cws_error *err) {
        return cws_fail(err, CWS_RESOURCE_EXHAUSTED, "out of memory");
}

/**
 * dup_or_empty() - strdup(@s), "" for NULL; sets *@oom when out of memory.
 */
char *dup_or_empty(const char *s, bool *oom);

/**
 * dup_bytes() - a copy of @n bytes with a NUL behind them, or NULL.
 */
char *dup_bytes(const void *data, size_t n);

/**
 * unexpected() - free @f and fail with INTERNAL: the daemon answered with a
 * body this call does not take.
 */
int unexpected(DaemonFrame *f, cws_error *err);

/**
 * mono_ms() - CLOCK_MONOTONIC in milliseconds, for timeouts spread over
 * several waits.
 */
int64_t mono_ms(void);

/*
 * Allocations that live as long as one request: sub-messages and arrays
 * the caller's arguments do not provide. Once one fails, @oom is set and
 * every later one fails too, so a request is built first and checked once.
 */
typedef struct Scratch {
        void **ptrs;
        size_t n;
        bool oom;
} Scratch;

/**
 * scratch_alloc() - @n zeroed elements of @size bytes, freed by
 * scratch_free(); NULL (and @s->oom set) without memory.
 */
void *scratch_alloc(Scratch *s, size_t n, size_t size);

/**
 * scratch_free() - free every allocation of @s. For _cleanup_().
 */
void scratch_free(Scratch *s);

/**
 * kv_entries() - @n entries of the protoc-c map entry message @desc (every
 * map<string, string> entry has the same layout) borrowing @kv's strings.
 * NULL when @n is 0, or without memory (then @s->oom is set).
 */
void *kv_entries(Scratch *s, const ProtobufCMessageDescriptor *desc, const cws_kv *kv, size_t n);
