/*
 * Status: the outcome of an operation, as the daemon passes it around and as
 * it finally reaches a client's Error frame.
 *
 * Fixed-size buffers, so a Status is a plain value: copied, embedded and
 * thrown away with no owner to track. Text longer than a buffer is cut.
 * Nothing secret may be put in one: a Status may be sent to any client.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <grpc/status.h>

#include "macro.h"

typedef struct Status {
        grpc_status_code code;          /* GRPC_STATUS_OK on success */
        uint32_t retry_delay_ms;        /* RetryInfo hint from the backend, 0 = none */
        char reason[96];                /* ErrorInfo reason (domain cwsandbox.com), "" = none */
        char message[512];
} Status;

#define STATUS_OK ((Status) { .code = GRPC_STATUS_OK })

/**
 * status_set() - fill @st with @code and a formatted message; the reason and
 * retry hint are cleared. Returns @st->code, so a handler can
 * "return status_set(...)".
 */
grpc_status_code status_set(Status *st, grpc_status_code code, const char *fmt, ...) _printf_(3, 4);

/**
 * status_prefix() - put "@prefix: " in front of @st's message, keeping
 * everything else. For adding the operation ("create sandbox: ...").
 */
void status_prefix(Status *st, const char *fmt, ...) _printf_(2, 3);

static inline bool status_ok(const Status *st) {
        return st->code == GRPC_STATUS_OK;
}
