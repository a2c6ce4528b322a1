/*
 * Server: the gRPC server of cwsandbox-local and its call contexts.
 *
 * Every SandboxService and Control rpc is a registered method. server.c owns
 * the calls: it authenticates, counts, injects faults, decodes the first
 * request and hands it to the rpc's handler. Handlers answer exactly once,
 * now or later, through the functions below; they never touch grpc_call.
 *
 * Unary rpcs: the handler gets the decoded request (owned by the call, valid
 * until the answer) and ends with unary_call_reply() or unary_call_fail().
 *
 * Streaming rpcs (StreamLogs, StreamExec): the handler installs its
 * ServerStreamOps, sends with server_stream_send() and ends with
 * server_stream_finish(). on_done() is the last callback; after it the stream
 * is gone and the handler frees its own state.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>

/* macro.h before uv.h (through backend.h): both define MIN and MAX, and
 * only the system header's redefinition is silent. */
#include "macro.h"
#include "backend.h"

typedef struct UnaryCall UnaryCall;
typedef struct ServerStream ServerStream;

/**
 * unary_call_reply() - answer with @resp (packed at once; the caller keeps
 * ownership of @resp).
 */
void unary_call_reply(UnaryCall *c, const ProtobufCMessage *resp);

/**
 * unary_call_set_details() - what a later failure's google.rpc.Status
 * carries besides the message: an ErrorInfo @reason (a static string; NULL
 * for none) and a RetryInfo of @retry_delay_ms (0 for none).
 */
void unary_call_set_details(UnaryCall *c, const char *reason, uint32_t retry_delay_ms);

/**
 * unary_call_fail() - answer with a non-OK status and a message for humans.
 */
void unary_call_fail(UnaryCall *c, grpc_status_code code, const char *fmt, ...) _printf_(3, 4);

/**
 * unary_call_cancelled() - the client has gone (cancel or deadline). The
 * handler must still answer; the answer is then dropped.
 */
bool unary_call_cancelled(const UnaryCall *c);

/**
 * unary_call_on_cancel() - run @fn once if the client goes away before the
 * answer (a handler with a process or a job to stop registers this).
 */
void unary_call_on_cancel(UnaryCall *c, void (*fn)(UnaryCall *c, void *userdata), void *userdata);

typedef struct ServerStreamOps {
        /* StreamExec only: each client message after arming a read, decoded
         * as ExecStreamRequest; NULL msg means the client half-closed (at
         * shutdown, when every call is cancelled, a NULL may also come just
         * before on_done()). The stream owns @msg; it is freed after the
         * callback returns. */
        void (*on_message)(ServerStream *s, void *userdata, const ProtobufCMessage *msg);
        /* After server_stream_send() returned SERVER_STREAM_HIGH_WATER or
         * more, the queue has drained below half of it: send more. */
        void (*on_writable)(ServerStream *s, void *userdata);
        /* The call is over (finished, cancelled, dropped or deadline).
         * @cancelled is true unless the status given to
         * server_stream_finish() reached the client. */
        void (*on_done)(ServerStream *s, void *userdata, bool cancelled);
} ServerStreamOps;

/* Bytes queued but not yet sent above which a producer should pause. */
#define SERVER_STREAM_HIGH_WATER (1024 * 1024)

void server_stream_set_ops(ServerStream *s, const ServerStreamOps *ops, void *userdata);

/**
 * server_stream_read() - arm one read; on_message() follows. At most one read
 * is armed at a time.
 */
void server_stream_read(ServerStream *s);

/**
 * server_stream_send() - queue @msg (packed at once). Returns the bytes now
 * queued; at or above SERVER_STREAM_HIGH_WATER the producer pauses until
 * on_writable(). Sends after finish or cancel are dropped.
 */
size_t server_stream_send(ServerStream *s, const ProtobufCMessage *msg);

/**
 * server_stream_finish() - send the final status after every queued message.
 * @fmt may be NULL (no message, the usual case with GRPC_STATUS_OK).
 */
void server_stream_finish(ServerStream *s, grpc_status_code code, const char *fmt, ...) _printf_(3, 4);

/**
 * server_stream_is_done() - finished or cancelled: further sends are dropped.
 */
bool server_stream_is_done(const ServerStream *s);

/**
 * server_start() - create the server, register every method, add each
 * listen address ("unix:/path" or "127.0.0.1:PORT"), start, and arm the
 * request pools. Returns 0 or a negative errno (the address is logged).
 */
int server_start(Backend *b, char *const *listen, size_t n_listen);

/**
 * server_addresses() - the addresses listened on, in the order given, with
 * the chosen port filled in for "HOST:0". Valid until server_shutdown() ends.
 */
char *const *server_addresses(const Backend *b, size_t *ret_n);

/**
 * server_shutdown() - stop accepting; cancel what is still running after
 * @grace_ms; @done runs once the server is destroyed and every call is gone.
 * Also the way to release a server whose server_start() failed.
 */
void server_shutdown(Backend *b, unsigned grace_ms, void (*done)(Backend *b));

/* Handlers, one per rpc (rpc_*.c, exec.c, files.c, logs.c, control in server.c). */
#include "coreweave/sandbox/v1/sandbox.pb-c.h"

void rpc_create_sandbox(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__CreateSandboxRequest *req);
void rpc_get_sandbox(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__GetSandboxRequest *req);
void rpc_list_sandboxes(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__ListSandboxesRequest *req);
void rpc_delete_sandbox(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__DeleteSandboxRequest *req);
void rpc_exec(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__ExecRequest *req);
void rpc_write_file(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__WriteFileRequest *req);
void rpc_read_file(Backend *b, UnaryCall *c, const Coreweave__Sandbox__V1__ReadFileRequest *req);
void rpc_stream_exec(Backend *b, ServerStream *s);
void rpc_stream_logs(Backend *b, ServerStream *s, const Coreweave__Sandbox__V1__StreamLogsRequest *req);
