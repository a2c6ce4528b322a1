/*
 * Merge: a session's SandboxDefaults and one sandbox's SandboxArgs, combined
 * into the backend's CreateSandboxRequest with the SDK's rules.
 *
 * Pure logic on protobuf-c messages: no loop, no I/O, no clock.
 */
#pragma once

#include <stddef.h>

#include "coreweave/sandbox/v1/sandbox.pb-c.h"
#include "cwsandboxd/v1/cwsandboxd.pb-c.h"

/* The SDK's SandboxDefaults values (sdk-semantics section 2). */
#define MERGE_DEFAULT_IMAGE                     "python:3.11"
#define MERGE_DEFAULT_COMMAND                   "/bin/sh"
#define MERGE_DEFAULT_REQUEST_TIMEOUT_S         300.0
#define MERGE_DEFAULT_POLL_RETRY_BUDGET_S       30.0
#define MERGE_DEFAULT_POLL_RPC_TIMEOUT_S        15.0

/* The one container every SDK-built sandbox has. */
#define MERGE_CONTAINER_NAME                    "main"

/* Limits on client input; the SDK has none, the daemon must. */
#define MERGE_TIMEOUT_MAX_S                     (7.0 * 24 * 3600)
#define MERGE_LIST_MAX                          1024U   /* entries in any one list or map */

enum {
        _MERGE_E_SUCCESS,
        MERGE_E_INVALID,        /* bad input; *ret_error says why */
};

/* The SDK's keep-alive args: PID 1 exits cleanly on SIGTERM. */
extern const char *const merge_default_args[2];

/**
 * merge_defaults_validate() - check a session's defaults as the client sent them.
 * @d:          the defaults; NULL means "all SDK defaults" and is valid.
 * @ret_error:  on MERGE_E_INVALID, a malloc'd message naming the field; may be NULL.
 *
 * Accepts the "unset" values merge_defaults_new() fills in (empty strings,
 * has_args false, 0 timeouts). Rejects: a timeout that is negative, NaN,
 * infinite or above MERGE_TIMEOUT_MAX_S; a negative max_lifetime_seconds; an
 * empty tag or runner id; an empty environment or annotation key, or an
 * environment key containing '='; args or runner_ids without their has_ flag;
 * a secret without store or name; two different secrets for one env_var;
 * malformed resource quantities or a negative GPU count; strings that are not
 * UTF-8; lists longer than MERGE_LIST_MAX.
 *
 * Return: 0, MERGE_E_INVALID, or -ENOMEM.
 */
int merge_defaults_validate(const Cwsandboxd__V1__SandboxDefaults *d, char **ret_error);

/**
 * merge_defaults_new() - a session's own, validated copy of its defaults, with
 * the SDK's values filled in where the client left a field unset.
 * @in:         the client's defaults, or NULL for all SDK defaults.
 * @ret:        the copy, owned by the caller (merge_defaults_free()); written
 *              only on success.
 * @ret_error:  as for merge_defaults_validate().
 *
 * "Unset" is what proto3 cannot tell from a zero value:
 *   container_image ""          -> "python:3.11"
 *   command ""                  -> "/bin/sh"
 *   has_args false              -> ["-c", "trap \"exit 0\" TERM INT; sleep infinity & wait"]
 *   request_timeout_seconds 0   -> 300
 *   poll_retry_budget_seconds 0 -> 30
 *   poll_rpc_timeout_seconds 0  -> 15
 * The SDK allows a poll retry budget of 0 (no retry); the local protocol
 * cannot ask for it, since 0 means unset there.
 * Everything else (tags, env, annotations, runner_ids, resources, secrets,
 * max_lifetime_seconds, deny_egress) stays as given: "none" is its default.
 *
 * Return: 0, MERGE_E_INVALID, or -ENOMEM.
 */
int merge_defaults_new(const Cwsandboxd__V1__SandboxDefaults *in,
                       Cwsandboxd__V1__SandboxDefaults **ret, char **ret_error);

/**
 * merge_defaults_free() - free a copy from merge_defaults_new(); NULL is fine.
 *
 * Return: NULL.
 */
Cwsandboxd__V1__SandboxDefaults *merge_defaults_free(Cwsandboxd__V1__SandboxDefaults *d);

/**
 * merge_args_validate() - check one sandbox's arguments as the client sent them.
 * @a:          the arguments; NULL means none and is valid.
 * @ret_error:  as for merge_defaults_validate().
 *
 * The same checks as for defaults where the fields overlap, plus: resources
 * without has_resources, a mounted file or working_dir that is not an absolute
 * path.
 *
 * Return: 0, MERGE_E_INVALID, or -ENOMEM.
 */
int merge_args_validate(const Cwsandboxd__V1__SandboxArgs *a, char **ret_error);

/**
 * merge_build_create_request() - the CreateSandboxRequest the SDK would send.
 * @defaults:   the session's defaults (filled or not); NULL = SDK defaults.
 * @args:       this sandbox's arguments; NULL = none.
 * @daemon_tags: tags the daemon adds to every sandbox (cwsandboxd, host,
 *              session); NULL or empty entries are skipped.
 * @n_daemon_tags: entries in @daemon_tags.
 * @request_id: the create's idempotency key; must be non-empty.
 * @ret:        the request, owned by the caller (merge_create_request_free());
 *              written only on success.
 * @ret_error:  on MERGE_E_INVALID, a malloc'd message; may be NULL.
 *
 * The SDK's rules (Sandbox.__init__ and _build_create_request):
 *  - image, command: the call's if non-empty, else the defaults', else the
 *    SDK's;
 *  - args: the call's if has_args (even empty), else the defaults'; a command
 *    given without args therefore runs with the keep-alive args;
 *  - tags: defaults, then the call's, no de-duplication; then each daemon tag
 *    not already present;
 *  - environment variables, annotations: per key, the call wins;
 *  - secrets: defaults first, then the call's, de-duplicated by env_var (the
 *    name when env_var is empty); identical duplicates collapse, different
 *    secrets for one env_var are an error;
 *  - runner_ids: the call's if has_runner_ids (an empty list clears), else
 *    the defaults' if non-empty, else none; when set, mode is CKS;
 *  - resources: the call's replace the defaults' whole (has_resources);
 *    requests == limits, the GPU in both;
 *  - max_lifetime_seconds when the defaults' is > 0; deny_egress as
 *    spec.network.deny_egress; mounted files and working_dir on the container.
 * One container named "main", primary_container "main".
 *
 * Return: 0, MERGE_E_INVALID, -EINVAL for a missing @request_id or NULL
 * @daemon_tags with a count, or -ENOMEM.
 */
int merge_build_create_request(const Cwsandboxd__V1__SandboxDefaults *defaults,
                               const Cwsandboxd__V1__SandboxArgs *args,
                               const char *const *daemon_tags, size_t n_daemon_tags,
                               const char *request_id,
                               Coreweave__Sandbox__V1__CreateSandboxRequest **ret,
                               char **ret_error);

/**
 * merge_create_request_free() - free a request from
 * merge_build_create_request(); NULL is fine.
 *
 * Return: NULL.
 */
Coreweave__Sandbox__V1__CreateSandboxRequest *
merge_create_request_free(Coreweave__Sandbox__V1__CreateSandboxRequest *req);
