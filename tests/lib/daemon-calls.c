/*
 * Synchronous test helpers over the raw frame client (see daemon-calls.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon-calls.h"
#include "macro.h"

typedef Cwsandboxd__V1__ClientFrame ClientFrame;
typedef Cwsandboxd__V1__DaemonFrame DaemonFrame;

uint64_t dc_next_id(void) {
        static _Atomic uint64_t next = 1;

        return atomic_fetch_add(&next, 1);
}

static int set_error(DcError *err, int code, const char *message) {
        if (err) {
                *err = (DcError) { .code = code };
                snprintf(err->message, sizeof(err->message), "%s", message);
        }
        return code;
}

static int take_error(const DaemonFrame *r, DcError *err) {
        if (!r->error || r->error->code == 0)
                return 0;
        if (err) {
                *err = (DcError) { .code = r->error->code, .retryable = r->error->retryable };
                snprintf(err->message, sizeof(err->message), "%s", r->error->message);
                snprintf(err->reason, sizeof(err->reason), "%s", r->error->reason);
        }
        return r->error->code;
}

int dc_hello(FrameClient *c, DaemonFrame **ret, DcError *err) {
        DaemonFrame *reply = NULL;
        int r;

        r = frame_client_hello(c, 1, "test", DC_TIMEOUT_MS, &reply);
        if (r != 0)
                return set_error(err, -EIO, r == FRAME_CLIENT_E_EOF ? "connection closed" : "no hello reply");
        r = take_error(reply, err);
        if (r == 0 && !reply->hello)
                r = set_error(err, -EIO, "no HelloReply in the answer");
        if (ret)
                *ret = reply;
        else
                frame_client_frame_free(reply);
        return r;
}

int dc_connect(const char *path, FrameClient **ret) {
        FrameClient *c;
        int r;

        r = frame_client_connect(path, &c);
        if (r < 0)
                return r;
        r = dc_hello(c, NULL, NULL);
        if (r != 0) {
                frame_client_free(c);
                return r;
        }
        *ret = c;
        return 0;
}

int dc_send(FrameClient *c, ClientFrame *f, DcError *err) {
        f->call_id = dc_next_id();
        if (frame_client_send(c, f) != 0)
                return set_error(err, -EIO, "send failed");
        return 0;
}

int dc_recv_final(FrameClient *c, int timeout_ms, DaemonFrame **ret, DcError *err) {
        DaemonFrame *reply = NULL;
        int r;

        for (;;) {
                r = frame_client_recv(c, timeout_ms, &reply);
                if (r != 0)
                        return set_error(err, -EIO, r == FRAME_CLIENT_E_EOF ? "connection closed" :
                                                    r == -ETIMEDOUT ? "no reply in time" : "receive failed");
                if (reply->final || (reply->call_id == 0 && reply->error))
                        break;
                frame_client_frame_free(reply);
        }
        *ret = reply;
        return take_error(reply, err);
}

int dc_call(FrameClient *c, ClientFrame *f, DaemonFrame **ret, DcError *err) {
        DaemonFrame *reply = NULL;
        int r;

        f->call_id = dc_next_id();
        r = frame_client_send(c, f);
        if (r != 0)
                return set_error(err, -EIO, "send failed");
        for (;;) {
                r = frame_client_recv(c, DC_TIMEOUT_MS, &reply);
                if (r != 0)
                        return set_error(err, -EIO, r == FRAME_CLIENT_E_EOF ? "connection closed" : "receive failed");
                if (reply->call_id == f->call_id && reply->final)
                        break;
                if (reply->call_id == 0 && reply->error) {
                        r = take_error(reply, err);
                        frame_client_frame_free(reply);
                        return r;
                }
                frame_client_frame_free(reply);
        }
        r = take_error(reply, err);
        if (ret)
                *ret = reply;
        else
                frame_client_frame_free(reply);
        return r;
}

static void copy_info(const Cwsandboxd__V1__SandboxInfo *in, DcInfo *out) {
        if (!in || !out)
                return;
        *out = (DcInfo) { .state = in->state, .has_exit_code = in->has_exit_code, .exit_code = in->exit_code };
        snprintf(out->sandbox_id, sizeof(out->sandbox_id), "%s", in->sandbox_id);
        snprintf(out->handle_id, sizeof(out->handle_id), "%s", in->handle_id);
        snprintf(out->session_id, sizeof(out->session_id), "%s", in->session_id);
}

/* Run @f and copy the SandboxInfo of the reply (in .sandbox or .stop_sandbox). */
static int info_call(FrameClient *c, ClientFrame *f, DcInfo *ret, DcError *err) {
        DaemonFrame *reply = NULL;
        int r = dc_call(c, f, &reply, err);

        if (r == 0) {
                if (reply->body_case == CWSANDBOXD__V1__DAEMON_FRAME__BODY_SANDBOX)
                        copy_info(reply->sandbox, ret);
                else if (reply->body_case == CWSANDBOXD__V1__DAEMON_FRAME__BODY_STOP_SANDBOX)
                        copy_info(reply->stop_sandbox->sandbox, ret);
                else if (ret)
                        *ret = (DcInfo) { 0 };
        }
        frame_client_frame_free(reply);
        return r;
}

int dc_attach(FrameClient *c, const char *name, Cwsandboxd__V1__SandboxDefaults *defaults, int linger_s,
              char **ret_session_id, bool *ret_created, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__AttachSessionRequest req = CWSANDBOXD__V1__ATTACH_SESSION_REQUEST__INIT;
        DaemonFrame *reply = NULL;
        int r;

        req.name = (char *)name;
        req.defaults = defaults;
        if (linger_s != DC_LINGER_UNSET) {
                req.has_linger = true;
                req.linger_seconds = linger_s;
        }
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_ATTACH_SESSION;
        f.attach_session = &req;
        r = dc_call(c, &f, &reply, err);
        if (r == 0) {
                if (ret_session_id)
                        *ret_session_id = strdup(reply->session->session_id);
                if (ret_created)
                        *ret_created = reply->session->created;
        }
        frame_client_frame_free(reply);
        return r;
}

int dc_detach(FrameClient *c, const char *session_id, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__DetachSessionRequest req = CWSANDBOXD__V1__DETACH_SESSION_REQUEST__INIT;

        req.session_id = (char *)session_id;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_DETACH_SESSION;
        f.detach_session = &req;
        return dc_call(c, &f, NULL, err);
}

int dc_close_session(FrameClient *c, const char *session_id, unsigned *ret_stopped, unsigned *ret_failed,
                     DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__CloseSessionRequest req = CWSANDBOXD__V1__CLOSE_SESSION_REQUEST__INIT;
        DaemonFrame *reply = NULL;
        int r;

        req.session_id = (char *)session_id;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_CLOSE_SESSION;
        f.close_session = &req;
        r = dc_call(c, &f, &reply, err);
        if (r == 0 && reply->close_session) {
                if (ret_stopped)
                        *ret_stopped = reply->close_session->stopped;
                if (ret_failed)
                        *ret_failed = (unsigned)reply->close_session->n_failures;
        }
        frame_client_frame_free(reply);
        return r;
}

int dc_session_visible(FrameClient *c, const char *name, bool *ret, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__ListSessionsRequest req = CWSANDBOXD__V1__LIST_SESSIONS_REQUEST__INIT;
        DaemonFrame *reply = NULL;
        int r;

        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_LIST_SESSIONS;
        f.list_sessions = &req;
        r = dc_call(c, &f, &reply, err);
        if (r == 0) {
                *ret = false;
                for (size_t i = 0; reply->sessions && i < reply->sessions->n_sessions; i++)
                        if (streq(reply->sessions->sessions[i]->name, name))
                                *ret = true;
        }
        frame_client_frame_free(reply);
        return r;
}

int dc_list_sessions(FrameClient *c, DaemonFrame **ret, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__ListSessionsRequest req = CWSANDBOXD__V1__LIST_SESSIONS_REQUEST__INIT;
        DaemonFrame *reply = NULL;
        int r;

        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_LIST_SESSIONS;
        f.list_sessions = &req;
        r = dc_call(c, &f, &reply, err);
        if (r == 0 && !reply->sessions)
                r = set_error(err, -EIO, "no ListSessionsReply in the answer");
        if (r == 0)
                *ret = reply;
        else
                frame_client_frame_free(reply);
        return r;
}

int dc_create(FrameClient *c, const char *session_id, Cwsandboxd__V1__SandboxArgs *args,
              Cwsandboxd__V1__Scope scope, bool start, DcInfo *ret, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__CreateSandboxRequest req = CWSANDBOXD__V1__CREATE_SANDBOX_REQUEST__INIT;

        req.session_id = (char *)session_id;
        req.args = args;
        req.scope = scope;
        req.start = start;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_CREATE_SANDBOX;
        f.create_sandbox = &req;
        return info_call(c, &f, ret, err);
}

int dc_start(FrameClient *c, const char *id, DcInfo *ret, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__StartSandboxRequest req = CWSANDBOXD__V1__START_SANDBOX_REQUEST__INIT;

        req.sandbox_id = (char *)id;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_START_SANDBOX;
        f.start_sandbox = &req;
        return info_call(c, &f, ret, err);
}

int dc_wait(FrameClient *c, const char *id, bool until_complete, uint32_t timeout_ms, DcInfo *ret, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__WaitSandboxRequest req = CWSANDBOXD__V1__WAIT_SANDBOX_REQUEST__INIT;

        req.sandbox_id = (char *)id;
        req.until_complete = until_complete;
        req.timeout_ms = timeout_ms;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_WAIT_SANDBOX;
        f.wait_sandbox = &req;
        return info_call(c, &f, ret, err);
}

int dc_get(FrameClient *c, const char *id, bool refresh, DcInfo *ret, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__GetSandboxRequest req = CWSANDBOXD__V1__GET_SANDBOX_REQUEST__INIT;

        req.sandbox_id = (char *)id;
        req.refresh = refresh;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_GET_SANDBOX;
        f.get_sandbox = &req;
        return info_call(c, &f, ret, err);
}

int dc_stop(FrameClient *c, const char *id, double grace_s, bool missing_ok, DcInfo *ret, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__StopSandboxRequest req = CWSANDBOXD__V1__STOP_SANDBOX_REQUEST__INIT;

        req.sandbox_id = (char *)id;
        req.has_grace = grace_s >= 0;
        req.grace_seconds = grace_s >= 0 ? grace_s : 0;
        req.missing_ok = missing_ok;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_STOP_SANDBOX;
        f.stop_sandbox = &req;
        return info_call(c, &f, ret, err);
}

int dc_delete(FrameClient *c, const char *id, bool missing_ok, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__DeleteSandboxRequest req = CWSANDBOXD__V1__DELETE_SANDBOX_REQUEST__INIT;

        req.sandbox_id = (char *)id;
        req.missing_ok = missing_ok;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_DELETE_SANDBOX;
        f.delete_sandbox = &req;
        return dc_call(c, &f, NULL, err);
}

int dc_list(FrameClient *c, const char *session_id, const char *tag, bool include_stopped, bool adopt,
            DaemonFrame **ret, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__ListSandboxesRequest req = CWSANDBOXD__V1__LIST_SANDBOXES_REQUEST__INIT;
        char *tags[] = { (char *)tag };
        DaemonFrame *reply = NULL;
        int r;

        req.session_id = (char *)(session_id ? session_id : "");
        req.tags = tags;
        req.n_tags = tag ? 1 : 0;
        req.include_stopped = include_stopped;
        req.adopt = adopt;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_LIST_SANDBOXES;
        f.list_sandboxes = &req;
        r = dc_call(c, &f, &reply, err);
        if (r == 0 && !reply->sandboxes)
                r = set_error(err, -EIO, "no ListSandboxesReply in the answer");
        if (r == 0)
                *ret = reply;
        else
                frame_client_frame_free(reply);
        return r;
}

bool dc_list_has(const DaemonFrame *list, const char *id) {
        for (size_t i = 0; list && list->sandboxes && i < list->sandboxes->n_sandboxes; i++) {
                const Cwsandboxd__V1__SandboxInfo *sb = list->sandboxes->sandboxes[i];

                if (streq(sb->sandbox_id, id) || streq(sb->handle_id, id))
                        return true;
        }
        return false;
}

int dc_list_count(FrameClient *c, const char *session_id, const char *tag, bool include_stopped, bool adopt,
                  unsigned *ret, DcError *err) {
        DaemonFrame *reply = NULL;
        int r;

        r = dc_list(c, session_id, tag, include_stopped, adopt, &reply, err);
        if (r == 0)
                *ret = (unsigned)reply->sandboxes->n_sandboxes;
        frame_client_frame_free(reply);
        return r;
}

int dc_adopt(FrameClient *c, const char *session_id, const char *id, bool adopt, DcInfo *ret, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__AdoptSandboxRequest req = CWSANDBOXD__V1__ADOPT_SANDBOX_REQUEST__INIT;

        req.session_id = (char *)session_id;
        req.sandbox_id = (char *)id;
        req.adopt = adopt;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_ADOPT_SANDBOX;
        f.adopt_sandbox = &req;
        return info_call(c, &f, ret, err);
}

static char *bytes_dup(ProtobufCBinaryData b) {
        char *s = malloc(b.len + 1);

        if (s) {
                if (b.len)
                        memcpy(s, b.data, b.len);
                s[b.len] = 0;
        }
        return s;
}

int dc_exec(FrameClient *c, const char *id, const char *const *argv, char **ret_stdout, char **ret_stderr,
            int *ret_exit, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__ExecRequest req = CWSANDBOXD__V1__EXEC_REQUEST__INIT;
        DaemonFrame *reply = NULL;
        size_t n = 0;
        int r;

        while (argv[n])
                n++;
        req.sandbox_id = (char *)id;
        req.command = (char **)argv;
        req.n_command = n;
        req.buffered = true;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_EXEC;
        f.exec = &req;
        r = dc_call(c, &f, &reply, err);
        if (r == 0 && !reply->exec_result)
                r = set_error(err, -EIO, "no ExecResult in the final frame");
        if (r == 0) {
                if (ret_stdout)
                        *ret_stdout = bytes_dup(reply->exec_result->stdout);
                if (ret_stderr)
                        *ret_stderr = bytes_dup(reply->exec_result->stderr);
                if (ret_exit)
                        *ret_exit = reply->exec_result->exit_code;
        }
        frame_client_frame_free(reply);
        return r;
}

int dc_metric(FrameClient *c, const char *session_id, const char *name, double *ret, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__MetricsRequest req = CWSANDBOXD__V1__METRICS_REQUEST__INIT;
        DaemonFrame *reply = NULL;
        int r;

        req.session_id = (char *)(session_id ? session_id : "");
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_METRICS;
        f.metrics = &req;
        r = dc_call(c, &f, &reply, err);
        if (r == 0) {
                r = set_error(err, 5, "no such metric");
                for (size_t i = 0; reply->metrics && i < reply->metrics->n_values; i++)
                        if (streq(reply->metrics->values[i]->key, name)) {
                                *ret = reply->metrics->values[i]->value;
                                r = 0;
                        }
        }
        frame_client_frame_free(reply);
        return r;
}

int dc_status(FrameClient *c, DaemonFrame **ret, DcError *err) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__StatusRequest req = CWSANDBOXD__V1__STATUS_REQUEST__INIT;
        DaemonFrame *reply = NULL;
        int r;

        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_STATUS;
        f.status = &req;
        r = dc_call(c, &f, &reply, err);
        if (r == 0 && !reply->status)
                r = set_error(err, -EIO, "no StatusReply in the answer");
        if (r == 0 && ret)
                *ret = reply;
        else
                frame_client_frame_free(reply);
        return r;
}

Cwsandboxd__V1__SandboxArgs *dc_shell_args(DcShellArgs *storage, const char *script) {
        *storage = (DcShellArgs) { .argv = { (char *)"-c", (char *)script } };
        cwsandboxd__v1__sandbox_args__init(&storage->args);
        if (script) {
                storage->args.command = (char *)"/bin/sh";
                storage->args.args = storage->argv;
                storage->args.n_args = 2;
                storage->args.has_args = true;
        }
        return &storage->args;
}

const char *dc_state_name(int state) {
        const ProtobufCEnumValue *v =
                protobuf_c_enum_descriptor_get_value(&cwsandboxd__v1__sandbox_state__descriptor, state);

        return v ? v->name : "?";
}
