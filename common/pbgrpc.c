/*
 * Conversions between protobuf-c messages and gRPC byte buffers. Encoding packs
 * straight into one slice; decoding flattens once (readall also undoes any
 * compression) and lets protobuf-c copy strings out, so the slice is released
 * at once.
 */
#include <string.h>
#include <strings.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "macro.h"
#include "pbgrpc.h"

grpc_byte_buffer *pb_to_byte_buffer(const ProtobufCMessage *m) {
        size_t n = protobuf_c_message_get_packed_size(m);
        grpc_slice s = grpc_slice_malloc(n);
        grpc_byte_buffer *bb;

        protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
        bb = grpc_raw_byte_buffer_create(&s, 1);
        grpc_slice_unref(s);
        return bb;
}

ProtobufCMessage *pb_from_byte_buffer(const ProtobufCMessageDescriptor *desc, grpc_byte_buffer *bb) {
        grpc_byte_buffer_reader reader;
        ProtobufCMessage *m;
        grpc_slice s;

        if (!bb)
                return NULL;
        if (!grpc_byte_buffer_reader_init(&reader, bb))
                return NULL;
        s = grpc_byte_buffer_reader_readall(&reader);
        grpc_byte_buffer_reader_destroy(&reader);
        m = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
        grpc_slice_unref(s);
        return m;
}

ProtobufCMessage *pb_message_dup(const ProtobufCMessage *m) {
        size_t n = protobuf_c_message_get_packed_size(m);
        _cleanup_free_ uint8_t *buf = malloc(n ? n : 1);

        if (!buf)
                return NULL;
        protobuf_c_message_pack(m, buf);
        return protobuf_c_message_unpack(m->descriptor, NULL, n, buf);
}

bool grpc_metadata_get(const grpc_metadata_array *md, const char *key, char *buf, size_t n) {
        size_t klen = strlen(key);

        for (size_t i = 0; i < md->count; i++) {
                const grpc_metadata *e = &md->metadata[i];
                size_t vlen = GRPC_SLICE_LENGTH(e->value);

                if (GRPC_SLICE_LENGTH(e->key) != klen ||
                    strncasecmp((const char *)GRPC_SLICE_START_PTR(e->key), key, klen) != 0)
                        continue;
                if (vlen + 1 > n)
                        return false;
                memcpy(buf, GRPC_SLICE_START_PTR(e->value), vlen);
                buf[vlen] = 0;
                return true;
        }
        return false;
}

static const char *const status_names[] = {
        [GRPC_STATUS_OK] = "OK",
        [GRPC_STATUS_CANCELLED] = "CANCELLED",
        [GRPC_STATUS_UNKNOWN] = "UNKNOWN",
        [GRPC_STATUS_INVALID_ARGUMENT] = "INVALID_ARGUMENT",
        [GRPC_STATUS_DEADLINE_EXCEEDED] = "DEADLINE_EXCEEDED",
        [GRPC_STATUS_NOT_FOUND] = "NOT_FOUND",
        [GRPC_STATUS_ALREADY_EXISTS] = "ALREADY_EXISTS",
        [GRPC_STATUS_PERMISSION_DENIED] = "PERMISSION_DENIED",
        [GRPC_STATUS_RESOURCE_EXHAUSTED] = "RESOURCE_EXHAUSTED",
        [GRPC_STATUS_FAILED_PRECONDITION] = "FAILED_PRECONDITION",
        [GRPC_STATUS_ABORTED] = "ABORTED",
        [GRPC_STATUS_OUT_OF_RANGE] = "OUT_OF_RANGE",
        [GRPC_STATUS_UNIMPLEMENTED] = "UNIMPLEMENTED",
        [GRPC_STATUS_INTERNAL] = "INTERNAL",
        [GRPC_STATUS_UNAVAILABLE] = "UNAVAILABLE",
        [GRPC_STATUS_DATA_LOSS] = "DATA_LOSS",
        [GRPC_STATUS_UNAUTHENTICATED] = "UNAUTHENTICATED",
};

const char *grpc_status_name(grpc_status_code code) {
        if ((unsigned)code >= ELEMENTSOF(status_names) || !status_names[code])
                return "UNKNOWN";
        return status_names[code];
}

int grpc_status_from_name(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(status_names); i++)
                if (status_names[i] && strcasecmp(status_names[i], name) == 0)
                        return (int)i;
        return -1;
}

char *grpc_slice_to_cstr(grpc_slice s) {
        size_t n = GRPC_SLICE_LENGTH(s);
        char *p = malloc(n + 1);

        if (!p)
                return NULL;
        memcpy(p, GRPC_SLICE_START_PTR(s), n);
        p[n] = 0;
        return p;
}

gpr_timespec deadline_after_ms(long long ms) {
        if (ms < 0)
                return gpr_inf_future(GPR_CLOCK_MONOTONIC);
        return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}
