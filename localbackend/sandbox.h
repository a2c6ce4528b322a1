/*
 * Sandbox: one local sandbox, a real isolated process tree started through
 * cwsandbox-local-run, and the registry of them in Backend.
 *
 * States follow the wire enum: PENDING -> CREATING -> RUNNING -> COMPLETED
 * (main process exited 0) / FAILED (non-zero exit or failed start, with a
 * reason) / TERMINATING -> TERMINATED after DeleteSandbox (SIGTERM, SIGKILL
 * after the grace period) or max_lifetime_seconds.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "backend.h"
#include "coreweave/sandbox/v1/sandbox.pb-c.h"
#include "logbuf.h"

typedef Coreweave__Sandbox__V1__State SandboxState;

struct Sandbox {
        Backend *backend;
        Sandbox *prev, *next;           /* Backend.sandboxes_* list */
        char id[40];
        char *request_id;               /* CreateSandbox idempotency key, or NULL */
        char *delete_request_id;        /* DeleteSandbox idempotency key, or NULL */

        Coreweave__Sandbox__V1__SandboxSpec *spec;  /* as created (owned) */
        SandboxState state;
        char *state_reason;
        int64_t create_time_ns, start_time_ns, end_time_ns;   /* realtime; 0 = unset */
        bool has_exit_code;
        int32_t exit_code;
        char *base;                     /* "host" or "image:<name>": which rootfs served it */

        pid_t init_pid;                 /* host pid of the sandbox's PID 1 while alive, else 0 */
        char **env;                     /* container env as "K=V", NULL-terminated */
        char *working_dir;              /* container working dir, or NULL */
        LogBuf *logs;                   /* main process output */

        /* private to sandbox.c */
        void *priv;
};

/**
 * sandbox_find() - the sandbox with @id, or NULL.
 */
Sandbox *sandbox_find(Backend *b, const char *id);

/**
 * sandbox_is_running() - RUNNING with a live PID 1 (exec, files and logs
 * need this; everything else answers FAILED_PRECONDITION. StreamLogs with
 * follow on a finished sandbox sends what there is and ends OK).
 */
bool sandbox_is_running(const Sandbox *s);

/**
 * sandbox_to_proto() - fill @ret (a zero-initialised Sandbox message) from @s.
 * Pointers in @ret point into @s or into @storage; free with
 * sandbox_proto_done(). Valid until the next loop iteration.
 */
typedef struct SandboxProtoStorage SandboxProtoStorage;
void sandbox_to_proto(const Sandbox *s, Coreweave__Sandbox__V1__Sandbox *ret, SandboxProtoStorage **storage);
void sandbox_proto_done(SandboxProtoStorage *storage);

/**
 * sandboxes_count() - sandboxes not yet terminal, and all remembered.
 */
void sandboxes_count(const Backend *b, unsigned *ret_alive, unsigned *ret_total);

/**
 * sandboxes_shutdown() - stop every sandbox (SIGTERM, then SIGKILL after
 * @grace_ms) and call @done once no sandbox process is left.
 */
void sandboxes_shutdown(Backend *b, unsigned grace_ms, void (*done)(Backend *b));

/**
 * sandboxes_free() - free every sandbox record (all processes are gone).
 */
void sandboxes_free(Backend *b);

/*
 * Between sandbox.c and rpc_sandbox.c.
 */

/* Sandboxes not yet terminal at once; CreateSandbox beyond it is
 * RESOURCE_EXHAUSTED. */
#define SANDBOX_ALIVE_MAX 1024

/**
 * sandbox_state_is_terminal() - COMPLETED, FAILED or TERMINATED.
 */
bool sandbox_state_is_terminal(SandboxState state);

/**
 * sandbox_create() - check @spec, register a new sandbox (PENDING) and start
 * it in the background. @request_id may be NULL. Returns 0 and the sandbox in
 * @ret; -EINVAL for a bad spec, -EUSERS when SANDBOX_ALIVE_MAX sandboxes are
 * alive, -ESHUTDOWN while shutting down, -ENOMEM. On -EINVAL and -EUSERS a
 * message for the client is written to @errbuf.
 */
int sandbox_create(Backend *b, const Coreweave__Sandbox__V1__SandboxSpec *spec, const char *request_id,
                   char *errbuf, size_t errbuf_size, Sandbox **ret);

/**
 * sandbox_find_by_request_id() - the sandbox a CreateSandbox with
 * @request_id made, or NULL.
 */
Sandbox *sandbox_find_by_request_id(Backend *b, const char *request_id);

/**
 * sandbox_stop() - DeleteSandbox: SIGTERM to the main process, SIGKILL after
 * @grace_seconds (0 = at once), then TERMINATED. An unstarted sandbox is
 * TERMINATED at once; a terminal one is left alone; a stop under way is only
 * ever hurried, never delayed.
 */
void sandbox_stop(Sandbox *s, unsigned grace_seconds, const char *reason);

/**
 * sandbox_seq() - creation order, unique and increasing (list page tokens).
 */
uint64_t sandbox_seq(const Sandbox *s);

/**
 * sandboxes_prune() - forget terminal sandboxes past their retention time or
 * beyond the cap on remembered records (oldest first). Cheap to call often.
 */
void sandboxes_prune(Backend *b);
