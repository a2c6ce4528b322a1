/*
 * The sandbox rpcs: CreateSandbox, GetSandbox, ListSandboxes, DeleteSandbox.
 *
 * Each answers at once from the registry (sandbox.c does the slow work in
 * the background). Every field a client sends is checked here or in
 * sandbox_create(); a bad one gets INVALID_ARGUMENT naming the field.
 *
 * CreateSandbox also enforces the account's quota set through Control
 * SetQuota: sandboxes alive at once (the registry's exact count) and a token
 * bucket of creates per second, refilled lazily when a create looks at it.
 *
 * List pages are ordered by creation; a page token is "p<seq>" with the
 * creation sequence number of the last sandbox returned, so pages stay
 * stable while sandboxes are created or forgotten between calls.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "macro.h"
#include "sandbox.h"
#include "server.h"

#define STATE(x) COREWEAVE__SANDBOX__V1__STATE__STATE_##x
#define REASON_QUOTA_EXCEEDED "CWSANDBOX_QUOTA_EXCEEDED"

#define ID_MAX 128
#define REQUEST_ID_MAX 256
#define LIST_PAGE_DEFAULT 100
#define LIST_PAGE_MAX 1000
#define LIST_TAGS_MAX 64
#define GRACE_MAX_S 86400

static void reply_sandbox(UnaryCall *c, const Sandbox *s) {
        Coreweave__Sandbox__V1__Sandbox msg;
        SandboxProtoStorage *st = NULL;

        sandbox_to_proto(s, &msg, &st);
        unary_call_reply(c, &msg.base);
        sandbox_proto_done(st);
}

static bool check_id(UnaryCall *c, const char *id) {
        if (!id || !*id) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "sandbox_id is required");
                return false;
        }
        if (strlen(id) > ID_MAX) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "sandbox_id: longer than %d bytes", ID_MAX);
                return false;
        }
        return true;
}

static bool check_request_id(UnaryCall *c, const char *request_id) {
        if (request_id && strlen(request_id) > REQUEST_ID_MAX) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "request_id: longer than %d bytes", REQUEST_ID_MAX);
                return false;
        }
        return true;
}

/* Refill the create bucket for the time since the last look. */
static void quota_refill(Backend *b) {
        uint64_t now = uv_now(b->loop);
        double burst = fmax(1.0, ceil(b->quota.rate));

        b->quota.tokens = fmin(burst, b->quota.tokens + b->quota.rate * (double)(now - b->quota.last_ms) / 1000.0);
        b->quota.last_ms = now;
}

/*
 * The account's quota (Control SetQuota): refuse a create over a limit as
 * the service does, with a reason and, when set, a retry hint. It only
 * looks: an accepted create takes its token (quota_take()), so a create the
 * spec check refuses costs nothing.
 */
static bool quota_allows(Backend *b, UnaryCall *c) {
        if (b->quota.max_alive > 0 && b->n_alive >= b->quota.max_alive) {
                b->quota.rejections++;
                unary_call_set_details(c, REASON_QUOTA_EXCEEDED, b->quota.retry_delay_ms);
                unary_call_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "quota: %u sandboxes alive, the limit is %u",
                                b->n_alive, b->quota.max_alive);
                return false;
        }
        if (b->quota.rate > 0) {
                quota_refill(b);
                if (b->quota.tokens < 1.0) {
                        b->quota.rejections++;
                        unary_call_set_details(c, REASON_QUOTA_EXCEEDED, b->quota.retry_delay_ms);
                        unary_call_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED,
                                        "quota: more than %g creates per second", b->quota.rate);
                        return false;
                }
        }
        return true;
}

static void quota_take(Backend *b) {
        if (b->quota.rate > 0)
                b->quota.tokens -= 1.0;
}

void rpc_create_sandbox(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__CreateSandboxRequest *req) {
        Sandbox *s;
        char err[512] = "";
        int k;

        if (!req->sandbox || !req->sandbox->spec) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "sandbox.spec is required");
                return;
        }
        if (!check_request_id(c, req->request_id))
                return;

        sandboxes_prune(b);

        /* A retried create gets the sandbox the first one made, even over
         * the quota: it makes nothing new, so it is not counted either. */
        s = sandbox_find_by_request_id(b, req->request_id);
        if (s) {
                log_full(LOG_LEVEL_DEBUG, NULL, s->id, "CreateSandbox repeated with request_id %s", req->request_id);
                reply_sandbox(c, s);
                return;
        }

        if (!quota_allows(b, c))
                return;
        k = sandbox_create(b, req->sandbox->spec, req->request_id, err, sizeof(err), &s);
        switch (k) {
        case 0:
                quota_take(b);
                reply_sandbox(c, s);
                return;
        case -EINVAL:
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "%s", err);
                return;
        case -EUSERS:
                unary_call_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s", err);
                return;
        case -ESHUTDOWN:
                unary_call_fail(c, GRPC_STATUS_UNAVAILABLE, "server is shutting down");
                return;
        case -ENOMEM:
                unary_call_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
        default:
                log_error("CreateSandbox failed: %s", strerror(-k));
                unary_call_fail(c, GRPC_STATUS_INTERNAL, "cannot create sandbox: %s", strerror(-k));
                return;
        }
}

void rpc_get_sandbox(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__GetSandboxRequest *req) {
        Sandbox *s;

        if (!check_id(c, req->sandbox_id))
                return;
        sandboxes_prune(b);
        s = sandbox_find(b, req->sandbox_id);
        if (!s) {
                unary_call_fail(c, GRPC_STATUS_NOT_FOUND, "sandbox %s not found", req->sandbox_id);
                return;
        }
        reply_sandbox(c, s);
}

/* "p<seq>": the creation sequence number of the last sandbox of a page. */
static int parse_page_token(const char *token, uint64_t *ret) {
        uint64_t v = 0;
        const char *p;

        if (!token || !*token) {
                *ret = 0;
                return 0;
        }
        if (token[0] != 'p' || !token[1] || strlen(token) > 21)
                return -EINVAL;
        for (p = token + 1; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
                        return -EINVAL;
                v = v * 10 + (uint64_t)(*p - '0');
        }
        if (v == 0)
                return -EINVAL;
        *ret = v;
        return 0;
}

static bool has_tag(const Sandbox *s, const char *tag) {
        for (size_t i = 0; i < s->spec->n_tags; i++)
                if (streq(s->spec->tags[i], tag))
                        return true;
        return false;
}

static bool list_match(const Sandbox *s, const Coreweave__Sandbox__V1__ListSandboxesRequest *req) {
        if (req->state != STATE(UNSPECIFIED)) {
                if (s->state != req->state)
                        return false;
        } else if (sandbox_state_is_terminal(s->state) && !req->show_terminated)
                return false;
        for (size_t i = 0; i < req->n_tags; i++)
                if (!has_tag(s, req->tags[i]))
                        return false;
        return true;
}

static bool check_list_request(UnaryCall *c, const Coreweave__Sandbox__V1__ListSandboxesRequest *req) {
        if (req->page_size < 0) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "page_size: must not be negative");
                return false;
        }
        if ((int)req->state < STATE(UNSPECIFIED) || (int)req->state > STATE(PAUSED)) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "state: unknown value %d", (int)req->state);
                return false;
        }
        if (req->n_tags > LIST_TAGS_MAX) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "tags: more than %d tags", LIST_TAGS_MAX);
                return false;
        }
        return true;
}

void rpc_list_sandboxes(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__ListSandboxesRequest *req) {
        Coreweave__Sandbox__V1__ListSandboxesResponse resp = COREWEAVE__SANDBOX__V1__LIST_SANDBOXES_RESPONSE__INIT;
        _cleanup_free_ Coreweave__Sandbox__V1__Sandbox *msgs = NULL;
        _cleanup_free_ Coreweave__Sandbox__V1__Sandbox **ptrs = NULL;
        _cleanup_free_ SandboxProtoStorage **storage = NULL;
        char next_token[32] = "";
        size_t page, n = 0;
        uint64_t after;
        const Sandbox *s, *last = NULL;

        if (!check_list_request(c, req))
                return;
        if (parse_page_token(req->page_token, &after) < 0) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "page_token: not a token from this server");
                return;
        }
        page = req->page_size == 0 ? LIST_PAGE_DEFAULT : MIN((size_t)req->page_size, (size_t)LIST_PAGE_MAX);

        sandboxes_prune(b);

        msgs = calloc(page, sizeof(*msgs));
        ptrs = calloc(page, sizeof(*ptrs));
        storage = calloc(page, sizeof(*storage));
        if (!msgs || !ptrs || !storage) {
                unary_call_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                return;
        }

        /* The list is in creation order, so seq only grows along it. */
        for (s = b->sandboxes_head; s; s = s->next) {
                if (sandbox_seq(s) <= after || !list_match(s, req))
                        continue;
                if (n == page) {
                        /* One more matches: this page is not the last. */
                        snprintf(next_token, sizeof(next_token), "p%" PRIu64, sandbox_seq(last));
                        break;
                }
                sandbox_to_proto(s, &msgs[n], &storage[n]);
                ptrs[n] = &msgs[n];
                n++;
                last = s;
        }

        resp.n_sandboxes = n;
        resp.sandboxes = ptrs;
        resp.next_page_token = next_token;
        unary_call_reply(c, &resp.base);
        for (size_t i = 0; i < n; i++)
                sandbox_proto_done(storage[i]);
}

void rpc_delete_sandbox(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__DeleteSandboxRequest *req) {
        Coreweave__Sandbox__V1__DeleteSandboxResponse resp = COREWEAVE__SANDBOX__V1__DELETE_SANDBOX_RESPONSE__INIT;
        Coreweave__Sandbox__V1__Sandbox msg;
        SandboxProtoStorage *st = NULL;
        Sandbox *s;

        if (!check_id(c, req->sandbox_id) || !check_request_id(c, req->request_id))
                return;
        if (req->grace_period_seconds < 0) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "grace_period_seconds: must not be negative");
                return;
        }
        if (req->grace_period_seconds > GRACE_MAX_S) {
                unary_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "grace_period_seconds: at most %d", GRACE_MAX_S);
                return;
        }

        sandboxes_prune(b);
        s = sandbox_find(b, req->sandbox_id);
        if (!s) {
                if (req->allow_missing) {
                        unary_call_reply(c, &resp.base);
                        return;
                }
                unary_call_fail(c, GRPC_STATUS_NOT_FOUND, "sandbox %s not found", req->sandbox_id);
                return;
        }

        /* A repeated delete (same request_id) changes nothing; a terminal
         * sandbox is simply returned. */
        if (!sandbox_state_is_terminal(s->state) &&
            !(*req->request_id && s->delete_request_id && streq(s->delete_request_id, req->request_id))) {
                if (*req->request_id) {
                        char *id = strdup(req->request_id);

                        if (id) {
                                free(s->delete_request_id);
                                s->delete_request_id = id;
                        }
                }
                log_full(LOG_LEVEL_INFO, NULL, s->id, "delete requested, grace %" PRIi32 " s",
                         req->grace_period_seconds);
                sandbox_stop(s, (unsigned)req->grace_period_seconds, "deleted by request");
        }

        sandbox_to_proto(s, &msg, &st);
        resp.sandbox = &msg;
        unary_call_reply(c, &resp.base);
        sandbox_proto_done(st);
}
