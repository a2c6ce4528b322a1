/*
 * What tests of libcwsandbox share (see client-util.h).
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "client-util.h"
#include "tap.h"

void cu_diag_err(const char *what, int r, const cws_error *err) {
        diag("%s: %d %s: %s%s%s", what, r, cws_strerror(r), err->message, err->reason[0] ? " reason " : "",
             err->reason);
}

cws_conn *cu_connect(const char *socket_path, const char *name) {
        cws_conn *c = NULL;
        cws_error err;

        if (cws_connect(socket_path, name, &c, &err) != 0)
                bail_out("connect to %s: %s", socket_path, err.message);
        return c;
}

char *cu_attach(cws_conn *c, const char *name, int32_t linger_s, uint32_t max_sandboxes) {
        cws_attach_options o = { .has_linger = true, .linger_seconds = linger_s, .max_sandboxes = max_sandboxes };
        cws_session *s = NULL;
        cws_error err;
        char *id;

        if (cws_attach(c, name, &o, &s, &err) != 0)
                bail_out("attach %s: %s", name, err.message);
        id = strdup(s->session_id);
        cws_session_free(s);
        if (!id)
                bail_out("out of memory");
        return id;
}
