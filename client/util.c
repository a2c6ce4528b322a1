/*
 * Request and reply helpers of libcwsandbox. Requests borrow the caller's
 * strings (protobuf-c only reads them while packing); what has to be
 * allocated for a request goes into a Scratch that the call frees when it
 * returns. Replies are copied out of their DaemonFrame, which is then freed.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

char *dup_or_empty(const char *s, bool *oom) {
        char *d = strdup(s ? s : "");

        if (!d)
                *oom = true;
        return d;
}

char *dup_bytes(const void *data, size_t n) {
        char *d = malloc(n + 1);

        if (!d)
                return NULL;
        if (n)
                memcpy(d, data, n);
        d[n] = 0;
        return d;
}

int unexpected(DaemonFrame *f, cws_error *err) {
        int body = f->body_case;

        daemon_frame_free(f);
        return cws_fail(err, CWS_INTERNAL, "unexpected reply from the daemon (body %d)", body);
}

int64_t mono_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void *scratch_alloc(Scratch *s, size_t n, size_t size) {
        void **v;
        void *p;

        if (s->oom)
                return NULL;
        p = calloc(n ? n : 1, size);
        v = p ? reallocarray(s->ptrs, s->n + 1, sizeof(void *)) : NULL;
        if (!v) {
                free(p);
                s->oom = true;
                return NULL;
        }
        s->ptrs = v;
        s->ptrs[s->n++] = p;
        return p;
}

void scratch_free(Scratch *s) {
        for (size_t i = 0; i < s->n; i++)
                free(s->ptrs[i]);
        free(s->ptrs);
        s->ptrs = NULL;
        s->n = 0;
}

/* The layout protoc-c gives every map<string, string> entry. */
typedef struct KvEntry {
        ProtobufCMessage base;
        char *key;
        char *value;
} KvEntry;

void *kv_entries(Scratch *s, const ProtobufCMessageDescriptor *desc, const cws_kv *kv, size_t n) {
        KvEntry *e, **ptrs;

        if (n == 0 || desc->sizeof_message != sizeof(KvEntry))
                return NULL;
        e = scratch_alloc(s, n, sizeof(*e));
        ptrs = scratch_alloc(s, n, sizeof(*ptrs));
        if (!e || !ptrs)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                protobuf_c_message_init(desc, &e[i]);
                e[i].key = S(kv[i].key);
                e[i].value = S(kv[i].value);
                ptrs[i] = &e[i];
        }
        return ptrs;
}
