/*
 * cwsandboxctl status and metrics: what the daemon says about itself.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "output.h"

static const char status_help[] =
        "Usage: cwsandboxctl status [-o table|json]\n"
        "\n"
        "The daemon's version, backend, uptime, number of sessions and connections,\n"
        "and the caller's sandboxes by state (root sees every user's).\n"
        "\n"
        "JSON: {\"socket\": str, \"daemon_version\": str, \"backend_kind\": \"local\"|\"remote\",\n"
        "       \"backend_url\": str, \"uptime_ms\": int, \"sessions\": int, \"connections\": int,\n"
        "       \"sandboxes\": {STATE: int...}, \"state_file_status\": str}\n";

static const char metrics_help[] =
        "Usage: cwsandboxctl metrics [--session NAME] [--reset] [--prometheus] [-o table|json]\n"
        "\n"
        "The daemon's metrics: host-wide (cwsandboxd_* series), or one session's\n"
        "(the SDK's cwsandbox/... set).\n"
        "\n"
        "  --session NAME   the metrics of session NAME\n"
        "  --reset          with --session: zero them in the same step as the read\n"
        "  --prometheus     print the Prometheus text format instead of a table\n"
        "\n"
        "JSON: {\"metrics\": {NAME: number...}, \"prometheus_text\": str}\n"
        "      (prometheus_text is \"\" without --prometheus)\n";

static void format_duration(int64_t ms, char *buf, size_t size) {
        int64_t s = ms / 1000;

        if (s >= 86400)
                snprintf(buf, size, "%" PRId64 "d %" PRId64 "h %" PRId64 "m", s / 86400, s / 3600 % 24, s / 60 % 60);
        else if (s >= 3600)
                snprintf(buf, size, "%" PRId64 "h %" PRId64 "m %" PRId64 "s", s / 3600, s / 60 % 60, s % 60);
        else if (s >= 60)
                snprintf(buf, size, "%" PRId64 "m %" PRId64 "s", s / 60, s % 60);
        else
                snprintf(buf, size, "%" PRId64 ".%03" PRId64 "s", s, ms % 1000);
}

static void status_print_json(const char *socket_path, const cws_status *st) {
        Json j;

        json_init(&j, stdout);
        json_object_begin(&j);
        json_key(&j, "socket");
        json_string(&j, socket_path);
        json_key(&j, "daemon_version");
        json_string(&j, st->daemon_version ? st->daemon_version : "");
        json_key(&j, "backend_kind");
        json_string(&j, st->backend_kind ? st->backend_kind : "");
        json_key(&j, "backend_url");
        json_string(&j, st->backend_url ? st->backend_url : "");
        json_key(&j, "uptime_ms");
        json_int(&j, st->uptime_ms);
        json_key(&j, "sessions");
        json_int(&j, st->sessions);
        json_key(&j, "connections");
        json_int(&j, st->connections);
        json_key(&j, "sandboxes");
        json_object_begin(&j);
        for (size_t i = 0; i < st->n_states; i++) {
                json_key(&j, st->states[i].state ? st->states[i].state : "");
                json_int(&j, st->states[i].count);
        }
        json_object_end(&j);
        json_key(&j, "state_file_status");
        json_string(&j, st->state_file_status ? st->state_file_status : "");
        json_object_end(&j);
        json_end(&j);
}

static void status_print_table(const char *socket_path, const cws_status *st) {
        char uptime[64];
        uint32_t total = 0;

        format_duration(st->uptime_ms, uptime, sizeof(uptime));
        printf("Socket:       %s\n", socket_path);
        printf("Daemon:       cwsandboxd %s\n", st->daemon_version ? st->daemon_version : "?");
        printf("Backend:      %s%s%s\n", st->backend_kind ? st->backend_kind : "?",
               st->backend_url && *st->backend_url ? " " : "", st->backend_url ? st->backend_url : "");
        printf("Uptime:       %s\n", uptime);
        printf("Sessions:     %" PRIu32 "\n", st->sessions);
        printf("Connections:  %" PRIu32 "\n", st->connections);
        for (size_t i = 0; i < st->n_states; i++)
                total += st->states[i].count;
        printf("Sandboxes:    %" PRIu32, total);
        for (size_t i = 0; i < st->n_states; i++)
                printf("%s%s %" PRIu32, i == 0 ? " (" : ", ", st->states[i].state, st->states[i].count);
        printf("%s\n", st->n_states ? ")" : "");
        printf("State file:   %s\n", st->state_file_status ? st->state_file_status : "?");
}

int cmd_status(Ctl *ctl, int argc, char **argv) {
        static const struct option options[] = { CTL_COMMON_LONG_OPTIONS, {} };
        _cleanup_free_ char *default_path = NULL;
        cws_status *st = NULL;
        cws_error err;
        int c, r;

        while ((c = getopt_long(argc, argv, CTL_COMMON_SHORT_OPTIONS, options, NULL)) != -1) {
                r = ctl_common_option(ctl, c, status_help);
                if (r < 0)
                        return ctl_unknown_option(ctl, argv);
                if (r != CTL_GO_ON)
                        return r;
        }
        if (optind < argc)
                return ctl_usage(ctl, "unexpected argument '%s'", argv[optind]);
        r = ctl_connect(ctl);
        if (r != 0)
                return r;
        r = cws_get_status(ctl->conn, &st, &err);
        if (r != 0)
                return ctl_fail(ctl, NULL, r, &err);
        if (!ctl->socket_path)
                default_path = cws_default_socket_path();
        if (ctl->output == CTL_OUTPUT_JSON)
                status_print_json(ctl->socket_path ? ctl->socket_path : default_path, st);
        else
                status_print_table(ctl->socket_path ? ctl->socket_path : default_path, st);
        cws_status_free(st);
        return 0;
}

/* ---- metrics -------------------------------------------------------------------------------- */

static void metrics_print_json(const cws_metrics *m, const char *prom) {
        Json j;

        json_init(&j, stdout);
        json_object_begin(&j);
        json_key(&j, "metrics");
        json_object_begin(&j);
        for (size_t i = 0; i < m->n_metrics; i++) {
                json_key(&j, m->metrics[i].name);
                json_double(&j, m->metrics[i].value);
        }
        json_object_end(&j);
        json_key(&j, "prometheus_text");
        json_string(&j, prom ? prom : "");
        json_object_end(&j);
        json_end(&j);
}

static void metrics_print_table(const cws_metrics *m) {
        Table *t = table_new(2, "NAME", "VALUE");

        for (size_t i = 0; i < m->n_metrics; i++) {
                char value[64];

                snprintf(value, sizeof(value), "%.15g", m->metrics[i].value);
                table_add(t, m->metrics[i].name, value);
        }
        table_print(t, stdout);
        table_free(t);
}

int cmd_metrics(Ctl *ctl, int argc, char **argv) {
        enum { OPT_SESSION = 0x200, OPT_RESET, OPT_PROMETHEUS };
        static const struct option options[] = {
                CTL_COMMON_LONG_OPTIONS,
                { "session", required_argument, NULL, OPT_SESSION },
                { "reset", no_argument, NULL, OPT_RESET },
                { "prometheus", no_argument, NULL, OPT_PROMETHEUS },
                {}
        };
        const char *session_name = NULL;
        cws_session *session = NULL;
        bool reset = false, prometheus = false;
        cws_metrics *m = NULL;
        cws_error err;
        int c, r;

        while ((c = getopt_long(argc, argv, CTL_COMMON_SHORT_OPTIONS, options, NULL)) != -1) {
                switch (c) {
                case OPT_SESSION:
                        session_name = optarg;
                        break;
                case OPT_RESET:
                        reset = true;
                        break;
                case OPT_PROMETHEUS:
                        prometheus = true;
                        break;
                default:
                        r = ctl_common_option(ctl, c, metrics_help);
                        if (r < 0)
                                return ctl_unknown_option(ctl, argv);
                        if (r != CTL_GO_ON)
                                return r;
                }
        }
        if (optind < argc)
                return ctl_usage(ctl, "unexpected argument '%s'", argv[optind]);
        if (reset && !session_name)
                return ctl_usage(ctl, "--reset needs --session: the host-wide counters only grow");
        r = ctl_connect(ctl);
        if (r != 0)
                return r;
        if (session_name) {
                r = ctl_session_find(ctl, session_name, &session);
                if (r != 0)
                        return r;
        }
        r = cws_get_metrics(ctl->conn, session ? session->session_id : NULL, reset, prometheus, &m, &err);
        cws_session_free(session);
        if (r != 0)
                return ctl_fail(ctl, NULL, r, &err);
        if (ctl->output == CTL_OUTPUT_JSON)
                metrics_print_json(m, prometheus ? m->prometheus_text : NULL);
        else if (prometheus)
                fputs(m->prometheus_text, stdout);
        else
                metrics_print_table(m);
        cws_metrics_free(m);
        return 0;
}
