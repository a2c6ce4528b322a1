/*
 * cwsandbox-local: shared state of the embedded backend.
 *
 * One Backend per process, owned by main(). Everything in it is touched only
 * on the loop thread (the CQ thread only hands events over, see cqloop.h).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <grpc/grpc.h>
#include <uv.h>

#include "cqloop.h"
#include "faults.h"

typedef struct Sandbox Sandbox;
typedef struct Server Server;

typedef struct Backend {
        uv_loop_t *loop;
        CqLoop cq;
        grpc_server *server;
        Server *srv;            /* server.c: pools, listen addresses, shutdown */

        char *token;            /* required bearer token, or NULL */
        char *image_dir;        /* unpacked rootfs per image, or NULL */
        char *work_dir;         /* per-sandbox scratch (mount points, files) */
        char *runner_path;      /* cwsandbox-local-run */

        Faults faults;          /* fault injection and per-method counters */

        /* sandbox.c: every sandbox the server remembers, oldest first */
        Sandbox *sandboxes_head, *sandboxes_tail;
        unsigned n_sandboxes;
        uint64_t next_sandbox_seq;

        /* sandbox.c: sandboxes not yet terminal, exactly, and the most at once */
        unsigned n_alive, alive_peak;

        /* rpc_sandbox.c: the account's limits on creates (Control SetQuota) */
        struct {
                unsigned max_alive;             /* 0 = no limit */
                double rate;                    /* creates per second; 0 = no limit */
                double tokens;                  /* the bucket, as of last_ms (loop time) */
                uint64_t last_ms;
                uint32_t retry_delay_ms;        /* the RetryInfo of a refusal; 0 = none */
                uint64_t rejections;            /* since start or the last counter reset */
        } quota;

        unsigned n_processes;   /* sandbox and exec process trees running */
        unsigned n_calls;       /* live server call contexts */
        bool shutting_down;
} Backend;
