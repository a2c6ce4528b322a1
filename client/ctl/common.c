/*
 * What the commands of cwsandboxctl share: the common options, the
 * connection, errors and their exit codes, parsing of values, and finding a
 * session by name.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "ctl.h"

int ctl_set_output(Ctl *ctl, const char *value) {
        if (streq(value, "table"))
                ctl->output = CTL_OUTPUT_TABLE;
        else if (streq(value, "json"))
                ctl->output = CTL_OUTPUT_JSON;
        else
                return ctl_usage(ctl, "-o: expected 'table' or 'json', not '%s'", value);
        return 0;
}

int ctl_common_option(Ctl *ctl, int c, const char *help) {
        switch (c) {
        case 'h':
                fputs(help, stdout);
                return CTL_EXIT_OK;
        case 'o':
                return ctl_set_output(ctl, optarg) == 0 ? CTL_GO_ON : CTL_EXIT_USAGE;
        case CTL_OPT_SOCKET:
                ctl->socket_path = optarg;
                return CTL_GO_ON;
        default:
                return -1;
        }
}

int ctl_exit_code(int code) {
        switch (code) {
        case CWS_OK:
                return CTL_EXIT_OK;
        case CWS_NOT_FOUND:
                return CTL_EXIT_NOT_FOUND;
        case CWS_PERMISSION_DENIED:
        case CWS_UNAUTHENTICATED:
                return CTL_EXIT_PERMISSION;
        case CWS_UNAVAILABLE:
                return CTL_EXIT_UNREACHABLE;
        default:
                return CTL_EXIT_FAILURE;
        }
}

static void vprint_error(const Ctl *ctl, const char *fmt, va_list ap) {
        fputs("cwsandboxctl: ", stderr);
        if (ctl && ctl->command)
                fprintf(stderr, "%s: ", ctl->command);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
}

int ctl_error(const Ctl *ctl, int exit_code, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vprint_error(ctl, fmt, ap);
        va_end(ap);
        return exit_code;
}

int ctl_usage(const Ctl *ctl, const char *fmt, ...) {
        va_list ap;

        fputs("cwsandboxctl: ", stderr);
        if (ctl && ctl->command)
                fprintf(stderr, "%s: ", ctl->command);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, " (see 'cwsandboxctl %s%s--help')\n", ctl && ctl->command ? ctl->command : "",
                ctl && ctl->command ? " " : "");
        return CTL_EXIT_USAGE;
}

int ctl_unknown_option(const Ctl *ctl, char **argv) {
        const char *arg = optind > 0 ? argv[optind - 1] : "?";

        if (optopt && optopt < 0x100 && isprint(optopt))
                return ctl_usage(ctl, "invalid option or missing value: -%c", optopt);
        return ctl_usage(ctl, "invalid option or missing value: %s", arg);
}

int ctl_fail(const Ctl *ctl, const char *what, int code, const cws_error *err) {
        const char *msg = err && err->message[0] ? err->message : cws_strerror(code);

        if (what)
                return ctl_error(ctl, ctl_exit_code(code), "%s: %s", what, msg);
        return ctl_error(ctl, ctl_exit_code(code), "%s", msg);
}

int ctl_connect(Ctl *ctl) {
        cws_error err;
        int r;

        if (ctl->conn)
                return 0;
        r = cws_connect(ctl->socket_path, "cwsandboxctl", &ctl->conn, &err);
        if (r != 0) {
                _cleanup_free_ char *path = ctl->socket_path ? NULL : cws_default_socket_path();

                ctl->conn = NULL;
                /* The library's message names the socket already. */
                if (err.message[0])
                        return ctl_error(ctl, ctl_exit_code(r), "%s", err.message);
                return ctl_error(ctl, ctl_exit_code(r), "cannot talk to cwsandboxd at %s: %s",
                                 ctl->socket_path ? ctl->socket_path : path ? path : "(default socket)",
                                 cws_strerror(r));
        }
        return 0;
}

/* ---- values -------------------------------------------------------------------------------- */

int ctl_parse_int(const char *s, long long min, long long max, long long *ret) {
        char *end;
        long long v;

        errno = 0;
        v = strtoll(s, &end, 10);
        if (errno || end == s || *end || v < min || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

int ctl_parse_seconds(const char *s, double *ret) {
        char *end;
        double v;

        errno = 0;
        v = strtod(s, &end);
        if (errno || end == s || *end || !isfinite(v) || v < 0)
                return -EINVAL;
        *ret = v;
        return 0;
}

int ctl_parse_state(const char *s, cws_sandbox_state *ret) {
        static const cws_sandbox_state states[] = {
                CWS_STATE_CREATING, CWS_STATE_RUNNING, CWS_STATE_COMPLETED, CWS_STATE_FAILED,
                CWS_STATE_TERMINATING, CWS_STATE_TERMINATED, CWS_STATE_PENDING, CWS_STATE_PAUSED,
        };

        for (size_t i = 0; i < ELEMENTSOF(states); i++)
                if (strcasecmp(s, cws_state_name(states[i])) == 0) {
                        *ret = states[i];
                        return 0;
                }
        return -EINVAL;
}

void strlist_add(StrList *l, const char *s) {
        l->items = reallocarray(l->items, l->n + 2, sizeof(*l->items));
        if (!l->items)
                abort();
        l->items[l->n++] = s;
        l->items[l->n] = NULL;
}

void strlist_done(StrList *l) {
        free(l->items);
        *l = (StrList) {};
}

int kvlist_add(KvList *l, const char *kv) {
        const char *eq = strchr(kv, '=');
        char *key, *value;

        if (!eq || eq == kv)
                return -EINVAL;
        key = strndup(kv, (size_t)(eq - kv));
        value = strdup(eq + 1);
        l->items = reallocarray(l->items, l->n + 1, sizeof(*l->items));
        if (!key || !value || !l->items)
                abort();
        l->items[l->n++] = (cws_kv) { .key = key, .value = value };
        return 0;
}

void kvlist_done(KvList *l) {
        for (size_t i = 0; i < l->n; i++) {
                free((char *)l->items[i].key);
                free((char *)l->items[i].value);
        }
        free(l->items);
        *l = (KvList) {};
}

/* ---- sessions ------------------------------------------------------------------------------- */

static cws_session *session_dup(const cws_session *s) {
        cws_session *d = calloc(1, sizeof(*d));

        if (!d)
                abort();
        *d = *s;
        d->session_id = strdup(s->session_id ? s->session_id : "");
        d->name = strdup(s->name ? s->name : "");
        if (!d->session_id || !d->name)
                abort();
        return d;
}

/*
 * Listing instead of attaching: an attach to a name that does not exist
 * would create the session, and joining one (then leaving) re-arms its
 * linger timer. Names are unique on the daemon, across users.
 */
int ctl_session_find(Ctl *ctl, const char *name, cws_session **ret) {
        cws_session_list *list = NULL;
        cws_session *found = NULL;
        cws_error err;
        int r;

        r = ctl_connect(ctl);
        if (r != 0)
                return r;
        r = cws_list_sessions(ctl->conn, &list, &err);
        if (r != 0)
                return ctl_fail(ctl, "list sessions", r, &err);
        for (size_t i = 0; i < list->n_sessions && !found; i++)
                if (list->sessions[i].name && streq(list->sessions[i].name, name))
                        found = session_dup(&list->sessions[i]);
        cws_session_list_free(list);
        if (!found)
                return ctl_error(ctl, CTL_EXIT_NOT_FOUND, "session '%s' not found", name);
        *ret = found;
        return 0;
}

char *ctl_default_session_name(void) {
        char *name;

        if (asprintf(&name, "cwsandboxctl-%u", (unsigned)getuid()) < 0)
                abort();
        return name;
}
