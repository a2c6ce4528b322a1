/*
 * Tables and JSON for cwsandboxctl.
 *
 * The JSON output (-o json) is a stable interface: fields are only ever
 * added, never renamed or removed. Every command prints one compact JSON
 * value followed by a newline, except `logs`, which prints one object per
 * line, and `exec` and `cp`, which move raw bytes whatever the format.
 *
 *   sandbox object:
 *     {"sandbox_id": str,        backend id ("" while unstarted)
 *      "handle_id": str,         daemon handle id ("" if the daemon has none)
 *      "session_id": str,        "" when in no session
 *      "state": str,             "RUNNING", "TERMINATED", ... (cws_state_name)
 *      "state_reason": str,
 *      "exit_code": int|null,
 *      "tags": [str...],
 *      "create_time_ms": int, "start_time_ms": int, "end_time_ms": int,
 *                                Unix ms, 0 = unknown
 *      "scope": "session"|"connection",
 *      "container_image": str}
 *
 *   session object:
 *     {"session_id": str, "name": str, "owner_uid": int,
 *      "linger_seconds": int (-1 = never), "sandbox_count": int,
 *      "connections": int, "created": bool (this command created it),
 *      "max_sandboxes": int, "max_creates_per_second": number (0 = no limit)}
 *
 *   status          {"socket": str, "daemon_version": str, "backend_kind": str,
 *                    "backend_url": str, "uptime_ms": int, "sessions": int,
 *                    "connections": int, "sandboxes": {STATE: int...},
 *                    "state_file_status": str}
 *   session create  session object
 *   session ls      [session object...]
 *   session close   {"session_id": str, "name": str, "stopped": int,
 *                    "failures": [{"sandbox_id": str, "code": str,
 *                                  "message": str, "reason": str}...],
 *                    "metrics": {NAME: number...}}
 *   session adopt   [sandbox object...]
 *   run             sandbox object
 *   ls              [sandbox object...]
 *   get             sandbox object
 *   stop            [{"id": str (as given), "missing": bool,
 *                     "state": str|null, "exit_code": int|null}...]
 *   delete          [{"id": str}...]
 *   metrics         {"metrics": {NAME: number...}, "prometheus_text": str}
 *                    (prometheus_text is "" without --prometheus)
 *   logs            one {"time_ms": int (0 = unknown), "line": str} per line
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "macro.h"
#include "output.h"

/* ---- JSON ------------------------------------------------------------------------------- */

void json_init(Json *j, FILE *f) {
        *j = (Json) { .f = f };
        j->first[0] = true;
}

static void json_value_begin(Json *j) {
        if (j->after_key) {
                j->after_key = false;
                return;
        }
        if (!j->first[j->depth])
                fputc(',', j->f);
        j->first[j->depth] = false;
}

static void json_open(Json *j, char c) {
        json_value_begin(j);
        fputc(c, j->f);
        if (j->depth + 1 < JSON_DEPTH_MAX)
                j->depth++;
        j->first[j->depth] = true;
}

static void json_close(Json *j, char c) {
        fputc(c, j->f);
        if (j->depth > 0)
                j->depth--;
}

void json_object_begin(Json *j) {
        json_open(j, '{');
}

void json_object_end(Json *j) {
        json_close(j, '}');
}

void json_array_begin(Json *j) {
        json_open(j, '[');
}

void json_array_end(Json *j) {
        json_close(j, ']');
}

static void json_quote(FILE *f, const char *s, size_t len) {
        fputc('"', f);
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)s[i];

                switch (c) {
                case '"':
                        fputs("\\\"", f);
                        break;
                case '\\':
                        fputs("\\\\", f);
                        break;
                case '\n':
                        fputs("\\n", f);
                        break;
                case '\r':
                        fputs("\\r", f);
                        break;
                case '\t':
                        fputs("\\t", f);
                        break;
                default:
                        /* Bytes >= 0x80 pass as they are: the text is expected to be UTF-8. */
                        if (c < 0x20 || c == 0x7f)
                                fprintf(f, "\\u%04x", c);
                        else
                                fputc(c, f);
                }
        }
        fputc('"', f);
}

void json_key(Json *j, const char *key) {
        json_value_begin(j);
        json_quote(j->f, key, strlen(key));
        fputc(':', j->f);
        j->after_key = true;
}

void json_string_len(Json *j, const char *s, size_t len) {
        json_value_begin(j);
        json_quote(j->f, s, len);
}

void json_string(Json *j, const char *s) {
        if (!s)
                json_null(j);
        else
                json_string_len(j, s, strlen(s));
}

void json_int(Json *j, int64_t v) {
        json_value_begin(j);
        fprintf(j->f, "%" PRId64, v);
}

void json_double(Json *j, double v) {
        /* JSON has no NaN or infinity. */
        if (!isfinite(v)) {
                json_null(j);
                return;
        }
        json_value_begin(j);
        fprintf(j->f, "%.17g", v);
}

void json_bool(Json *j, bool v) {
        json_value_begin(j);
        fputs(v ? "true" : "false", j->f);
}

void json_null(Json *j) {
        json_value_begin(j);
        fputs("null", j->f);
}

void json_end(Json *j) {
        fputc('\n', j->f);
}

void json_sandbox(Json *j, const cws_sandbox *sb) {
        json_object_begin(j);
        json_key(j, "sandbox_id");
        json_string(j, sb->sandbox_id ? sb->sandbox_id : "");
        json_key(j, "handle_id");
        json_string(j, sb->handle_id ? sb->handle_id : "");
        json_key(j, "session_id");
        json_string(j, sb->session_id ? sb->session_id : "");
        json_key(j, "state");
        json_string(j, cws_state_name(sb->state));
        json_key(j, "state_reason");
        json_string(j, sb->state_reason ? sb->state_reason : "");
        json_key(j, "exit_code");
        if (sb->has_exit_code)
                json_int(j, sb->exit_code);
        else
                json_null(j);
        json_key(j, "tags");
        json_array_begin(j);
        for (size_t i = 0; i < sb->n_tags; i++)
                json_string(j, sb->tags[i]);
        json_array_end(j);
        json_key(j, "create_time_ms");
        json_int(j, sb->create_time_ms);
        json_key(j, "start_time_ms");
        json_int(j, sb->start_time_ms);
        json_key(j, "end_time_ms");
        json_int(j, sb->end_time_ms);
        json_key(j, "scope");
        json_string(j, sb->scope == CWS_SCOPE_CONNECTION ? "connection" : "session");
        json_key(j, "container_image");
        json_string(j, sb->container_image ? sb->container_image : "");
        json_object_end(j);
}

void json_session(Json *j, const cws_session *s) {
        json_object_begin(j);
        json_key(j, "session_id");
        json_string(j, s->session_id ? s->session_id : "");
        json_key(j, "name");
        json_string(j, s->name ? s->name : "");
        json_key(j, "owner_uid");
        json_int(j, s->owner_uid);
        json_key(j, "linger_seconds");
        json_int(j, s->linger_seconds);
        json_key(j, "sandbox_count");
        json_int(j, s->sandbox_count);
        json_key(j, "connections");
        json_int(j, s->connections);
        json_key(j, "created");
        json_bool(j, s->created);
        json_key(j, "max_sandboxes");
        json_int(j, s->max_sandboxes);
        json_key(j, "max_creates_per_second");
        json_double(j, s->max_creates_per_second);
        json_object_end(j);
}

/* ---- tables ------------------------------------------------------------------------------ */

static char *xstrdup(const char *s) {
        char *d = strdup(s ? s : "-");

        if (!d)
                abort();
        return d;
}

static void table_push(Table *t, const char *s) {
        if (t->n_cells % 64 == 0) {
                t->cells = reallocarray(t->cells, t->n_cells + 64, sizeof(*t->cells));
                if (!t->cells)
                        abort();
        }
        t->cells[t->n_cells++] = xstrdup(s);
}

Table *table_new(size_t n_cols, ...) {
        Table *t = calloc(1, sizeof(*t));
        va_list ap;

        if (!t)
                abort();
        t->n_cols = n_cols;
        va_start(ap, n_cols);
        for (size_t i = 0; i < n_cols; i++)
                table_push(t, va_arg(ap, const char *));
        va_end(ap);
        return t;
}

void table_add(Table *t, ...) {
        va_list ap;

        va_start(ap, t);
        for (size_t i = 0; i < t->n_cols; i++)
                table_push(t, va_arg(ap, const char *));
        va_end(ap);
}

void table_print(const Table *t, FILE *f) {
        _cleanup_free_ size_t *width = calloc(t->n_cols, sizeof(*width));

        if (!width)
                abort();
        for (size_t i = 0; i < t->n_cells; i++)
                width[i % t->n_cols] = MAX(width[i % t->n_cols], strlen(t->cells[i]));
        for (size_t i = 0; i < t->n_cells; i++) {
                size_t col = i % t->n_cols;

                if (col + 1 == t->n_cols)
                        fprintf(f, "%s\n", t->cells[i]);
                else
                        fprintf(f, "%-*s   ", (int)width[col], t->cells[i]);
        }
}

Table *table_free(Table *t) {
        if (!t)
                return NULL;
        for (size_t i = 0; i < t->n_cells; i++)
                free(t->cells[i]);
        free(t->cells);
        free(t);
        return NULL;
}

/* ---- values -------------------------------------------------------------------------------- */

const char *format_time_ms(int64_t ms, char buf[static 32]) {
        time_t secs = (time_t)(ms / 1000);
        struct tm tm;

        if (ms <= 0 || !gmtime_r(&secs, &tm))
                return "-";
        strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
        return buf;
}

const char *sandbox_display_id(const cws_sandbox *sb) {
        if (sb->sandbox_id && *sb->sandbox_id)
                return sb->sandbox_id;
        return sb->handle_id ? sb->handle_id : "";
}
