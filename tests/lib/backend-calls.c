/*
 * Typed SandboxService and Control calls on top of bc_unary(), the
 * StreamExec and StreamLogs helpers on top of the generic streams, and the
 * decoding of a status's google.rpc details.
 *
 * Requests are built on the stack and in short-lived arrays: protobuf-c only
 * reads them while packing, so nothing here outlives the call. Strings are
 * cast to char * because protobuf-c's request structs are not const.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend-client.h"
#include "google/rpc/error_details.pb-c.h"
#include "google/rpc/status.pb-c.h"
#include "macro.h"

#define CALL(c, method, req, resp_desc, ret, st)                                        \
        bc_unary((c), BC_SANDBOX_SERVICE method, &(req).base, (resp_desc), 0,             \
                 (ProtobufCMessage **)(ret), (st))

static size_t strv_len(const char *const *v) {
        size_t n = 0;

        while (v && v[n])
                n++;
        return n;
}

static void sleep_ms(int ms) {
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static int64_t mono_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "K=V" strings split into keys and values (a missing "=" means ""). */
typedef struct KeyValues {
        char **keys;            /* each strdup'ed, cut at the "=" */
        const char **values;    /* point into keys[i], or "" */
        size_t n;
} KeyValues;

static int key_values_parse(const char *const *env, KeyValues *ret) {
        size_t n = strv_len(env);

        ret->n = 0;
        ret->keys = calloc(n + 1, sizeof(char *));
        ret->values = calloc(n + 1, sizeof(char *));
        if (!ret->keys || !ret->values)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                char *kv = strdup(env[i]), *eq;

                if (!kv)
                        return -ENOMEM;
                eq = strchr(kv, '=');
                if (eq)
                        *eq = 0;
                ret->keys[ret->n] = kv;
                ret->values[ret->n++] = eq ? eq + 1 : "";
        }
        return 0;
}

static const char *key_values_value(const KeyValues *kv, size_t i) {
        return kv->values[i];
}

static void key_values_done(KeyValues *kv) {
        for (size_t i = 0; kv->keys && i < kv->n; i++)
                free(kv->keys[i]);
        free(kv->keys);
        free(kv->values);
        *kv = (KeyValues) {};
}

/* ---- status details ---- */

#define STATUS_DETAILS_KEY "grpc-status-details-bin"

static bool any_is(const Google__Protobuf__Any *any, const ProtobufCMessageDescriptor *desc) {
        const char *slash = strrchr(any->type_url, '/');

        return streq(slash ? slash + 1 : any->type_url, desc->name);
}

static void status_details_take(BcStatus *st, const Google__Rpc__Status *rs) {
        bool have_info = false, have_retry = false;

        for (size_t i = 0; i < rs->n_details; i++) {
                const Google__Protobuf__Any *any = rs->details[i];

                if (!have_info && any_is(any, &google__rpc__error_info__descriptor)) {
                        Google__Rpc__ErrorInfo *info =
                                google__rpc__error_info__unpack(NULL, any->value.len, any->value.data);

                        if (info && *info->reason) {
                                have_info = true;
                                snprintf(st->reason, sizeof(st->reason), "%s", info->reason);
                                snprintf(st->domain, sizeof(st->domain), "%s", info->domain);
                        }
                        bc_free(info);
                } else if (!have_retry && any_is(any, &google__rpc__retry_info__descriptor)) {
                        Google__Rpc__RetryInfo *retry =
                                google__rpc__retry_info__unpack(NULL, any->value.len, any->value.data);

                        if (retry && retry->retry_delay) {
                                have_retry = true;
                                st->retry_delay_ms = (uint32_t)(retry->retry_delay->seconds * 1000 +
                                                                retry->retry_delay->nanos / 1000000);
                        }
                        bc_free(retry);
                }
        }
}

void bc_status_read_details(BcStatus *st, const grpc_metadata_array *trailing_md) {
        if (!st)
                return;
        st->reason[0] = 0;
        st->domain[0] = 0;
        st->retry_delay_ms = 0;
        for (size_t i = 0; trailing_md && i < trailing_md->count; i++) {
                const grpc_metadata *e = &trailing_md->metadata[i];
                Google__Rpc__Status *rs;

                if (GRPC_SLICE_LENGTH(e->key) != strlen(STATUS_DETAILS_KEY) ||
                    memcmp(GRPC_SLICE_START_PTR(e->key), STATUS_DETAILS_KEY, strlen(STATUS_DETAILS_KEY)) != 0)
                        continue;
                rs = google__rpc__status__unpack(NULL, GRPC_SLICE_LENGTH(e->value), GRPC_SLICE_START_PTR(e->value));
                if (rs)
                        status_details_take(st, rs);
                bc_free(rs);
                return;
        }
}

/* ---- SandboxService ---- */

int bc_create_sandbox(BcClient *c, const BcSandboxOpts *o, BcSandbox **ret, BcStatus *st) {
        Coreweave__Sandbox__V1__CreateSandboxRequest req = COREWEAVE__SANDBOX__V1__CREATE_SANDBOX_REQUEST__INIT;
        Coreweave__Sandbox__V1__Sandbox sb = COREWEAVE__SANDBOX__V1__SANDBOX__INIT;
        Coreweave__Sandbox__V1__SandboxSpec spec = COREWEAVE__SANDBOX__V1__SANDBOX_SPEC__INIT;
        Coreweave__Sandbox__V1__Container ct = COREWEAVE__SANDBOX__V1__CONTAINER__INIT;
        Coreweave__Sandbox__V1__Container *cts[1] = { &ct };
        Coreweave__Sandbox__V1__Container__EnvironmentVariablesEntry *env_entries = NULL, **env_ptrs = NULL;
        Coreweave__Sandbox__V1__FileMount *files = NULL, **file_ptrs = NULL;
        KeyValues kv = {};
        int r;

        r = key_values_parse(o->env, &kv);
        if (r < 0)
                goto finish;
        env_entries = calloc(kv.n + 1, sizeof(*env_entries));
        env_ptrs = calloc(kv.n + 1, sizeof(*env_ptrs));
        files = calloc(o->n_files + 1, sizeof(*files));
        file_ptrs = calloc(o->n_files + 1, sizeof(*file_ptrs));
        if (!env_entries || !env_ptrs || !files || !file_ptrs) {
                r = -ENOMEM;
                goto finish;
        }
        for (size_t i = 0; i < kv.n; i++) {
                coreweave__sandbox__v1__container__environment_variables_entry__init(&env_entries[i]);
                env_entries[i].key = kv.keys[i];
                env_entries[i].value = (char *)key_values_value(&kv, i);
                env_ptrs[i] = &env_entries[i];
        }
        for (size_t i = 0; i < o->n_files; i++) {
                coreweave__sandbox__v1__file_mount__init(&files[i]);
                files[i].path = (char *)o->files[i].path;
                files[i].content.data = (uint8_t *)o->files[i].data;
                files[i].content.len = o->files[i].size;
                file_ptrs[i] = &files[i];
        }

        ct.name = (char *)"main";
        ct.image = (char *)(o->image ? o->image : "python:3.11");
        ct.command = (char *)(o->command ? o->command : "");
        ct.n_args = strv_len(o->args);
        ct.args = (char **)o->args;
        ct.n_environment_variables = kv.n;
        ct.environment_variables = env_ptrs;
        ct.n_files = o->n_files;
        ct.files = file_ptrs;
        ct.working_dir = (char *)(o->working_dir ? o->working_dir : "");

        spec.n_containers = 1;
        spec.containers = cts;
        spec.max_lifetime_seconds = o->max_lifetime_seconds;
        spec.n_tags = strv_len(o->tags);
        spec.tags = (char **)o->tags;
        sb.spec = &spec;
        req.sandbox = &sb;
        req.request_id = (char *)(o->request_id ? o->request_id : "");

        r = CALL(c, "CreateSandbox", req, &coreweave__sandbox__v1__sandbox__descriptor, ret, st);
finish:
        key_values_done(&kv);
        free(env_entries);
        free(env_ptrs);
        free(files);
        free(file_ptrs);
        return r;
}

int bc_get_sandbox(BcClient *c, const char *id, BcSandbox **ret, BcStatus *st) {
        Coreweave__Sandbox__V1__GetSandboxRequest req = COREWEAVE__SANDBOX__V1__GET_SANDBOX_REQUEST__INIT;

        req.sandbox_id = (char *)id;
        return CALL(c, "GetSandbox", req, &coreweave__sandbox__v1__sandbox__descriptor, ret, st);
}

static bool state_is_final(BcState s) {
        return s == BC_STATE(COMPLETED) || s == BC_STATE(FAILED) || s == BC_STATE(TERMINATED);
}

int bc_wait_state(BcClient *c, const char *id, BcState want, int timeout_ms, BcSandbox **ret, BcStatus *st) {
        int64_t end = mono_ms() + timeout_ms;
        BcSandbox *last = NULL;
        int r;

        for (;;) {
                BcSandbox *sb = NULL;
                BcState s;

                r = bc_get_sandbox(c, id, &sb, st);
                if (r != 0)
                        break;
                bc_free(last);
                last = sb;
                s = sb->status ? sb->status->state : BC_STATE(UNSPECIFIED);
                if (s == want) {
                        r = 0;
                        break;
                }
                if (state_is_final(s)) {
                        r = -ECANCELED;
                        break;
                }
                if (mono_ms() >= end) {
                        r = -ETIMEDOUT;
                        break;
                }
                sleep_ms(50);
        }
        if (ret)
                *ret = last;
        else
                bc_free(last);
        return r;
}

int bc_create_running(BcClient *c, const BcSandboxOpts *o, int timeout_ms, BcSandbox **ret, BcStatus *st) {
        BcSandbox *sb = NULL;
        int r;

        r = bc_create_sandbox(c, o, &sb, st);
        if (r != 0)
                return r;
        if (sb->status && sb->status->state == BC_STATE(RUNNING)) {
                *ret = sb;
                return 0;
        }
        r = bc_wait_state(c, sb->sandbox_id, BC_STATE(RUNNING), timeout_ms, ret, st);
        bc_free(sb);
        return r;
}

int bc_delete_sandbox(BcClient *c, const char *id, const BcDeleteOpts *o,
                      Coreweave__Sandbox__V1__DeleteSandboxResponse **ret, BcStatus *st) {
        Coreweave__Sandbox__V1__DeleteSandboxRequest req = COREWEAVE__SANDBOX__V1__DELETE_SANDBOX_REQUEST__INIT;
        Coreweave__Sandbox__V1__DeleteSandboxResponse *resp = NULL;
        int r;

        req.sandbox_id = (char *)id;
        if (o) {
                req.grace_period_seconds = o->grace_period_seconds;
                req.request_id = (char *)(o->request_id ? o->request_id : "");
                req.allow_missing = o->allow_missing;
        }
        r = CALL(c, "DeleteSandbox", req, &coreweave__sandbox__v1__delete_sandbox_response__descriptor, &resp, st);
        if (ret)
                *ret = resp;
        else
                bc_free(resp);
        return r;
}

int bc_stop_sandbox(BcClient *c, const char *id, int timeout_ms) {
        BcDeleteOpts o = { .grace_period_seconds = 1 };
        int r;

        r = bc_delete_sandbox(c, id, &o, NULL, NULL);
        if (r != 0)
                return r;
        return bc_wait_state(c, id, BC_STATE(TERMINATED), timeout_ms, NULL, NULL);
}

int bc_list_sandboxes(BcClient *c, const BcListOpts *o,
                      Coreweave__Sandbox__V1__ListSandboxesResponse **ret, BcStatus *st) {
        Coreweave__Sandbox__V1__ListSandboxesRequest req = COREWEAVE__SANDBOX__V1__LIST_SANDBOXES_REQUEST__INIT;

        if (o) {
                req.n_tags = strv_len(o->tags);
                req.tags = (char **)o->tags;
                req.state = o->state;
                req.show_terminated = o->show_terminated;
                req.page_size = o->page_size;
                req.page_token = (char *)(o->page_token ? o->page_token : "");
        }
        return CALL(c, "ListSandboxes", req, &coreweave__sandbox__v1__list_sandboxes_response__descriptor, ret, st);
}

int bc_exec_unary(BcClient *c, const char *id, const char *const *argv, int32_t max_output_bytes,
                  Coreweave__Sandbox__V1__ExecResponse **ret, BcStatus *st) {
        Coreweave__Sandbox__V1__ExecRequest req = COREWEAVE__SANDBOX__V1__EXEC_REQUEST__INIT;

        req.sandbox_id = (char *)id;
        req.n_command = strv_len(argv);
        req.command = (char **)argv;
        req.max_output_bytes = max_output_bytes;
        return CALL(c, "Exec", req, &coreweave__sandbox__v1__exec_response__descriptor, ret, st);
}

int bc_write_file(BcClient *c, const char *id, const char *path, const void *data, size_t size, BcStatus *st) {
        Coreweave__Sandbox__V1__WriteFileRequest req = COREWEAVE__SANDBOX__V1__WRITE_FILE_REQUEST__INIT;
        Coreweave__Sandbox__V1__WriteFileResponse *resp = NULL;
        int r;

        req.sandbox_id = (char *)id;
        req.path = (char *)path;
        req.content.data = (uint8_t *)data;
        req.content.len = size;
        r = CALL(c, "WriteFile", req, &coreweave__sandbox__v1__write_file_response__descriptor, &resp, st);
        bc_free(resp);
        return r;
}

int bc_read_file(BcClient *c, const char *id, const char *path,
                 Coreweave__Sandbox__V1__ReadFileResponse **ret, BcStatus *st) {
        Coreweave__Sandbox__V1__ReadFileRequest req = COREWEAVE__SANDBOX__V1__READ_FILE_REQUEST__INIT;

        req.sandbox_id = (char *)id;
        req.path = (char *)path;
        return CALL(c, "ReadFile", req, &coreweave__sandbox__v1__read_file_response__descriptor, ret, st);
}

/* ---- Control ---- */

int bc_get_counters(BcClient *c, bool reset, Cwsandboxlocal__V1__GetCountersResponse **ret, BcStatus *st) {
        Cwsandboxlocal__V1__GetCountersRequest req = CWSANDBOXLOCAL__V1__GET_COUNTERS_REQUEST__INIT;

        req.reset = reset;
        return bc_unary(c, BC_CONTROL_SERVICE "GetCounters", &req.base,
                        &cwsandboxlocal__v1__get_counters_response__descriptor, 0,
                        (ProtobufCMessage **)ret, st);
}

const Cwsandboxlocal__V1__MethodCounter *bc_counter(const Cwsandboxlocal__V1__GetCountersResponse *r,
                                                    const char *method) {
        for (size_t i = 0; r && i < r->n_methods; i++)
                if (streq(r->methods[i]->method, method))
                        return r->methods[i];
        return NULL;
}

int bc_set_faults(BcClient *c, const Cwsandboxlocal__V1__Fault *faults, size_t n, BcStatus *st) {
        Cwsandboxlocal__V1__SetFaultsRequest req = CWSANDBOXLOCAL__V1__SET_FAULTS_REQUEST__INIT;
        Cwsandboxlocal__V1__SetFaultsResponse *resp = NULL;
        Cwsandboxlocal__V1__Fault **ptrs = calloc(n + 1, sizeof(*ptrs));
        int r;

        if (!ptrs)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                ptrs[i] = (Cwsandboxlocal__V1__Fault *)&faults[i];
        req.n_faults = n;
        req.faults = ptrs;
        r = bc_unary(c, BC_CONTROL_SERVICE "SetFaults", &req.base,
                     &cwsandboxlocal__v1__set_faults_response__descriptor, 0,
                     (ProtobufCMessage **)&resp, st);
        bc_free(resp);
        free(ptrs);
        return r;
}

int bc_set_quota(BcClient *c, uint32_t max_alive, double creates_per_second, uint32_t retry_delay_ms,
                 BcStatus *st) {
        Cwsandboxlocal__V1__SetQuotaRequest req = CWSANDBOXLOCAL__V1__SET_QUOTA_REQUEST__INIT;
        Cwsandboxlocal__V1__SetQuotaResponse *resp = NULL;
        int r;

        req.max_alive = max_alive;
        req.creates_per_second = creates_per_second;
        req.retry_delay_ms = retry_delay_ms;
        r = bc_unary(c, BC_CONTROL_SERVICE "SetQuota", &req.base,
                     &cwsandboxlocal__v1__set_quota_response__descriptor, 0, (ProtobufCMessage **)&resp, st);
        bc_free(resp);
        return r;
}

/* ---- StreamExec ---- */

int bc_exec_start(BcClient *c, const char *id, const BcExecOpts *o, int timeout_ms, BcExec **ret) {
        Coreweave__Sandbox__V1__ExecStreamRequest req = COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__INIT;
        Coreweave__Sandbox__V1__ExecStreamInit init = COREWEAVE__SANDBOX__V1__EXEC_STREAM_INIT__INIT;
        Coreweave__Sandbox__V1__ExecStreamInit__EnvEntry *entries = NULL, **ptrs = NULL;
        KeyValues kv = {};
        BcExec *e;
        int r;

        e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        r = key_values_parse(o->env, &kv);
        if (r < 0)
                goto fail;
        entries = calloc(kv.n + 1, sizeof(*entries));
        ptrs = calloc(kv.n + 1, sizeof(*ptrs));
        if (!entries || !ptrs) {
                r = -ENOMEM;
                goto fail;
        }
        for (size_t i = 0; i < kv.n; i++) {
                coreweave__sandbox__v1__exec_stream_init__env_entry__init(&entries[i]);
                entries[i].key = kv.keys[i];
                entries[i].value = (char *)key_values_value(&kv, i);
                ptrs[i] = &entries[i];
        }
        init.sandbox_id = (char *)id;
        init.n_command = strv_len(o->argv);
        init.command = (char **)o->argv;
        init.tty = o->tty;
        init.tty_width = o->tty_width;
        init.tty_height = o->tty_height;
        init.n_env = kv.n;
        init.env = ptrs;
        req.message_case = COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__MESSAGE_INIT;
        req.init = &init;

        r = bc_stream_open(c, BC_SANDBOX_SERVICE "StreamExec", timeout_ms, &e->stream);
        if (r < 0)
                goto fail;
        /* A refused call fails the send; the status says why, so carry on. */
        (void)bc_stream_send(e->stream, &req.base);
        key_values_done(&kv);
        free(entries);
        free(ptrs);
        *ret = e;
        return 0;
fail:
        key_values_done(&kv);
        free(entries);
        free(ptrs);
        bc_exec_free(e);
        return r;
}

int bc_exec_stdin(BcExec *e, const void *data, size_t size) {
        Coreweave__Sandbox__V1__ExecStreamRequest req = COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__INIT;

        req.message_case = COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__MESSAGE_STDIN;
        req.stdin.data = (uint8_t *)data;
        req.stdin.len = size;
        return bc_stream_send(e->stream, &req.base);
}

int bc_exec_resize(BcExec *e, uint32_t width, uint32_t height) {
        Coreweave__Sandbox__V1__ExecStreamRequest req = COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__INIT;
        Coreweave__Sandbox__V1__ExecStreamResize rs = COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESIZE__INIT;

        rs.width = width;
        rs.height = height;
        req.message_case = COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__MESSAGE_RESIZE;
        req.resize = &rs;
        return bc_stream_send(e->stream, &req.base);
}

int bc_exec_close_stdin(BcExec *e) {
        Coreweave__Sandbox__V1__ExecStreamRequest req = COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__INIT;
        Coreweave__Sandbox__V1__ExecStreamClose cl = COREWEAVE__SANDBOX__V1__EXEC_STREAM_CLOSE__INIT;
        int r;

        req.message_case = COREWEAVE__SANDBOX__V1__EXEC_STREAM_REQUEST__MESSAGE_CLOSE;
        req.close = &cl;
        r = bc_stream_send(e->stream, &req.base);
        if (r < 0)
                return r;
        return bc_stream_close_send(e->stream);
}

int bc_exec_half_close(BcExec *e) {
        return bc_stream_close_send(e->stream);
}

static void exec_record(BcExec *e, const Coreweave__Sandbox__V1__ExecStreamResponse *m) {
        e->n_frames++;
        switch (m->message_case) {
        case COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__MESSAGE_READY:
                if (e->ready || e->n_frames != 1)
                        e->out_of_order = true;
                e->ready = true;
                break;
        case COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__MESSAGE_OUTPUT:
                if (e->exited)
                        e->out_of_order = true;
                if (m->output->stream == COREWEAVE__SANDBOX__V1__EXEC_STREAM_OUTPUT__STREAM__STREAM_STDERR)
                        bc_buf_append(&e->err, m->output->data.data, m->output->data.len);
                else
                        bc_buf_append(&e->out, m->output->data.data, m->output->data.len);
                break;
        case COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__MESSAGE_EXIT:
                if (e->exited)
                        e->out_of_order = true;
                e->exited = true;
                e->exit_code = m->exit->exit_code;
                break;
        case COREWEAVE__SANDBOX__V1__EXEC_STREAM_RESPONSE__MESSAGE_ERROR:
                e->errored = true;
                snprintf(e->error_code, sizeof(e->error_code), "%s", m->error->code);
                snprintf(e->error_message, sizeof(e->error_message), "%s", m->error->message);
                break;
        default:
                e->out_of_order = true;
                break;
        }
}

int bc_exec_pump(BcExec *e, int timeout_ms) {
        ProtobufCMessage *m = NULL;
        int r;

        if (e->ended)
                return 1;
        r = bc_stream_recv(e->stream, &coreweave__sandbox__v1__exec_stream_response__descriptor, timeout_ms, &m);
        if (r == 1) {
                e->ended = true;
                e->status = *bc_stream_status(e->stream);
                return 1;
        }
        if (r < 0)
                return r;
        exec_record(e, (const Coreweave__Sandbox__V1__ExecStreamResponse *)m);
        bc_free(m);
        return 0;
}

/* Remaining milliseconds until @end (a mono_ms() value), at least 0. */
static int remaining_ms(int64_t end) {
        int64_t left = end - mono_ms();

        return left > 0 ? (int)left : 0;
}

int bc_exec_wait_ready(BcExec *e, int timeout_ms) {
        int64_t end = mono_ms() + timeout_ms;

        while (!e->ready) {
                int r = bc_exec_pump(e, remaining_ms(end));

                if (r != 0)
                        return r;
        }
        return 0;
}

int bc_exec_wait_output(BcExec *e, const char *needle, size_t from, int timeout_ms) {
        int64_t end = mono_ms() + timeout_ms;

        for (;;) {
                int r;

                if (e->out.len > from && strstr(e->out.data + from, needle))
                        return 0;
                r = bc_exec_pump(e, remaining_ms(end));
                if (r != 0)
                        return r;
        }
}

int bc_exec_wait(BcExec *e, int timeout_ms) {
        int64_t end = mono_ms() + timeout_ms;

        for (;;) {
                int r = bc_exec_pump(e, remaining_ms(end));

                if (r == 1)
                        return 0;
                if (r < 0)
                        return r;
        }
}

void bc_exec_cancel(BcExec *e) {
        bc_stream_cancel(e->stream);
}

BcExec *bc_exec_free(BcExec *e) {
        if (!e)
                return NULL;
        bc_stream_free(e->stream);
        bc_buf_done(&e->out);
        bc_buf_done(&e->err);
        free(e);
        return NULL;
}

int bc_exec_run(BcClient *c, const char *id, const char *const *argv, int timeout_ms, BcExec **ret) {
        BcExecOpts o = { .argv = argv };
        BcExec *e = NULL;
        int r;

        r = bc_exec_start(c, id, &o, timeout_ms, &e);
        if (r < 0)
                return r;
        (void)bc_exec_half_close(e);
        r = bc_exec_wait(e, timeout_ms);
        *ret = e;
        return r;
}

/* ---- StreamLogs ---- */

int bc_logs_start(BcClient *c, const char *id, const BcLogsOpts *o, int timeout_ms, BcLogs **ret) {
        Coreweave__Sandbox__V1__StreamLogsRequest req = COREWEAVE__SANDBOX__V1__STREAM_LOGS_REQUEST__INIT;
        Google__Protobuf__Timestamp since = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
        BcLogs *l;
        int r;

        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        req.sandbox_id = (char *)id;
        req.follow = o->follow;
        req.tail_lines = o->tail_lines;
        req.timestamps = o->timestamps;
        if (o->since_ns) {
                since.seconds = o->since_ns / 1000000000LL;
                since.nanos = (int32_t)(o->since_ns % 1000000000LL);
                req.since_time = &since;
        }
        r = bc_stream_open(c, BC_SANDBOX_SERVICE "StreamLogs", timeout_ms, &l->stream);
        if (r < 0) {
                bc_logs_free(l);
                return r;
        }
        (void)bc_stream_send(l->stream, &req.base);
        (void)bc_stream_close_send(l->stream);
        *ret = l;
        return 0;
}

int bc_logs_pump(BcLogs *l, int timeout_ms) {
        Coreweave__Sandbox__V1__LogEntry *m = NULL;
        int r;

        if (l->ended)
                return 1;
        r = bc_stream_recv(l->stream, &coreweave__sandbox__v1__log_entry__descriptor, timeout_ms,
                           (ProtobufCMessage **)&m);
        if (r == 1) {
                l->ended = true;
                l->status = *bc_stream_status(l->stream);
                return 1;
        }
        if (r < 0)
                return r;
        l->n_entries++;
        bc_buf_append(&l->data, m->data.data, m->data.len);
        if (m->timestamp) {
                int64_t ts = bc_ts_ns(m->timestamp);

                if (!l->first_ts_ns)
                        l->first_ts_ns = ts;
                l->last_ts_ns = ts;
        }
        if (m->log_session_id[0])
                snprintf(l->session_id, sizeof(l->session_id), "%s", m->log_session_id);
        l->next_offset = m->next_log_offset;
        if (m->error) {
                snprintf(l->error_code, sizeof(l->error_code), "%s", m->error->code);
                snprintf(l->error_message, sizeof(l->error_message), "%s", m->error->message);
        }
        bc_free(m);
        return 0;
}

int bc_logs_wait_data(BcLogs *l, const char *needle, int timeout_ms) {
        int64_t end = mono_ms() + timeout_ms;

        for (;;) {
                int r;

                if (l->data.len && strstr(l->data.data, needle))
                        return 0;
                r = bc_logs_pump(l, remaining_ms(end));
                if (r != 0)
                        return r;
        }
}

int bc_logs_wait(BcLogs *l, int timeout_ms) {
        int64_t end = mono_ms() + timeout_ms;

        for (;;) {
                int r = bc_logs_pump(l, remaining_ms(end));

                if (r == 1)
                        return 0;
                if (r < 0)
                        return r;
        }
}

void bc_logs_cancel(BcLogs *l) {
        bc_stream_cancel(l->stream);
}

BcLogs *bc_logs_free(BcLogs *l) {
        if (!l)
                return NULL;
        bc_stream_free(l->stream);
        bc_buf_done(&l->data);
        free(l);
        return NULL;
}

int bc_logs_read(BcClient *c, const char *id, const BcLogsOpts *o, int timeout_ms, BcLogs **ret) {
        BcLogs *l = NULL;
        int r;

        r = bc_logs_start(c, id, o, timeout_ms, &l);
        if (r < 0)
                return r;
        r = bc_logs_wait(l, timeout_ms);
        *ret = l;
        return r;
}
