/* protobuf-c messages <-> gRPC byte buffers, metadata and status helpers. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>

/**
 * pb_to_byte_buffer() - pack @m into a new byte buffer (one copy).
 * Returns the buffer; the caller owns it. Never NULL (gRPC aborts on OOM).
 */
grpc_byte_buffer *pb_to_byte_buffer(const ProtobufCMessage *m);

/**
 * pb_from_byte_buffer() - decode @bb as a @desc message.
 * Returns the message (free with protobuf_c_message_free_unpacked) or NULL
 * when @bb is NULL or not a valid @desc.
 */
ProtobufCMessage *pb_from_byte_buffer(const ProtobufCMessageDescriptor *desc, grpc_byte_buffer *bb);

/**
 * pb_message_dup() - deep copy of @m through pack/unpack. NULL on failure.
 */
ProtobufCMessage *pb_message_dup(const ProtobufCMessage *m);

/**
 * grpc_metadata_get() - the value of @key in @md (keys compare
 * case-insensitively), copied into @buf as a NUL-terminated string.
 * Returns false if absent or longer than @n - 1.
 */
bool grpc_metadata_get(const grpc_metadata_array *md, const char *key, char *buf, size_t n);

/**
 * grpc_status_name() - "NOT_FOUND" and so on, for logs and error messages.
 */
const char *grpc_status_name(grpc_status_code code);

/**
 * grpc_status_from_name() - inverse of grpc_status_name(); -1 if unknown.
 */
int grpc_status_from_name(const char *name);

/**
 * grpc_slice_to_cstr() - NUL-terminated heap copy of @s. NULL on OOM.
 */
char *grpc_slice_to_cstr(grpc_slice s);

/**
 * deadline_after_ms() - monotonic deadline @ms from now; negative = none.
 */
gpr_timespec deadline_after_ms(long long ms);
