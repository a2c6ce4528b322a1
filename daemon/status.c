#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "status.h"

grpc_status_code status_set(Status *st, grpc_status_code code, const char *fmt, ...) {
        va_list ap;

        *st = (Status) { .code = code };
        va_start(ap, fmt);
        (void)vsnprintf(st->message, sizeof(st->message), fmt, ap);
        va_end(ap);
        return code;
}

void status_prefix(Status *st, const char *fmt, ...) {
        char old[sizeof(st->message)];
        size_t n, room = sizeof(st->message);
        va_list ap;
        int k;

        memcpy(old, st->message, sizeof(old));
        va_start(ap, fmt);
        k = vsnprintf(st->message, room, fmt, ap);
        va_end(ap);
        n = k < 0 ? 0 : MIN((size_t)k, room - 1);
        /* ": " and as much of the old message as fits; the rest is cut. */
        for (const char *p = ": "; *p && n < room - 1; p++)
                st->message[n++] = *p;
        for (const char *p = old; *p && n < room - 1; p++)
                st->message[n++] = *p;
        st->message[n] = 0;
}
