/*
 * cwsandboxctl logs: the output of a sandbox's main process, all of it or
 * the end, once or followed.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "output.h"

static const char logs_help[] =
        "Usage: cwsandboxctl logs [-f] [--tail N] [--since TIME] [--timestamps] ID\n"
        "\n"
        "Print the output of sandbox ID's main process.\n"
        "\n"
        "  -f, --follow      keep printing as it comes, until the sandbox ends or ^C\n"
        "      --tail N      only the last N lines\n"
        "      --since TIME  only lines from TIME on: 2024-05-01T12:00:00Z, \"2024-05-01 12:00:00\"\n"
        "                    or 2024-05-01 (UTC unless a Z or +HH:MM says so), @UNIX-SECONDS, or a\n"
        "                    time ago: 30s, 15m, 2h, 1d\n"
        "  -t, --timestamps  start each line with its time (RFC 3339, UTC)\n"
        "\n"
        "JSON: one object per line: {\"time_ms\": int (Unix ms, 0 = unknown), \"line\": str}\n";

static int parse_ago(const char *s, int64_t now_ms, int64_t *ret) {
        char *end;
        double v;
        int64_t unit;

        errno = 0;
        v = strtod(s, &end);
        if (errno || end == s || v < 0 || end[0] == 0 || end[1] != 0)
                return -EINVAL;
        switch (*end) {
        case 's':
                unit = 1000;
                break;
        case 'm':
                unit = 60 * 1000;
                break;
        case 'h':
                unit = 3600 * 1000;
                break;
        case 'd':
                unit = 86400 * 1000;
                break;
        default:
                return -EINVAL;
        }
        *ret = now_ms - (int64_t)(v * (double)unit);
        return 0;
}

/* An optional "Z" or "+HH:MM"/"-HH:MM" after a time; the offset in seconds east of UTC. */
static int parse_zone(const char *s, long *ret) {
        int h, m;
        char sign;

        if (*s == 0 || streq(s, "Z") || streq(s, "z")) {
                *ret = 0;
                return 0;
        }
        if (sscanf(s, "%c%2d:%2d", &sign, &h, &m) != 3 || (sign != '+' && sign != '-') || strlen(s) != 6)
                return -EINVAL;
        *ret = (sign == '-' ? -1 : 1) * (h * 3600L + m * 60L);
        return 0;
}

static int parse_time(const char *s, int64_t *ret_ms) {
        static const char *const formats[] = { "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d" };
        struct timespec now;
        long long secs;
        long zone;

        clock_gettime(CLOCK_REALTIME, &now);
        if (s[0] == '@')
                return ctl_parse_int(s + 1, 0, INT64_MAX / 1000, &secs) < 0 ? -EINVAL :
                       (*ret_ms = secs * 1000, 0);
        if (parse_ago(s, (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000, ret_ms) == 0)
                return 0;
        for (size_t i = 0; i < ELEMENTSOF(formats); i++) {
                struct tm tm = {};
                const char *end = strptime(s, formats[i], &tm);
                int64_t frac_ms = 0;

                if (!end)
                        continue;
                if (*end == '.') {
                        /* Fractions of a second: milliseconds are kept. */
                        int digits = 0;

                        for (end++; isdigit((unsigned char)*end); end++, digits++)
                                if (digits < 3)
                                        frac_ms = frac_ms * 10 + (*end - '0');
                        for (; digits < 3; digits++)
                                frac_ms *= 10;
                }
                if (parse_zone(end, &zone) < 0)
                        continue;
                *ret_ms = ((int64_t)timegm(&tm) - zone) * 1000 + frac_ms;
                return 0;
        }
        return -EINVAL;
}

static void print_line(const Ctl *ctl, const cws_log_line *line) {
        size_t len = line->len;

        if (ctl->output == CTL_OUTPUT_JSON) {
                Json j;

                /* The line's own newline is not part of it. */
                if (len > 0 && line->data[len - 1] == '\n')
                        len--;
                json_init(&j, stdout);
                json_object_begin(&j);
                json_key(&j, "time_ms");
                json_int(&j, line->time_ms);
                json_key(&j, "line");
                json_string_len(&j, line->data, len);
                json_object_end(&j);
                json_end(&j);
                return;
        }
        fwrite(line->data, 1, len, stdout);
        if (len == 0 || line->data[len - 1] != '\n')
                fputc('\n', stdout);
}

int cmd_logs(Ctl *ctl, int argc, char **argv) {
        enum { OPT_TAIL = 0x200, OPT_SINCE };
        static const struct option options[] = {
                CTL_COMMON_LONG_OPTIONS,
                { "follow", no_argument, NULL, 'f' },
                { "tail", required_argument, NULL, OPT_TAIL },
                { "since", required_argument, NULL, OPT_SINCE },
                { "timestamps", no_argument, NULL, 't' },
                {}
        };
        cws_logs_options opts = {};
        cws_logs *logs = NULL;
        cws_error err;
        long long v;
        int c, r;

        while ((c = getopt_long(argc, argv, CTL_COMMON_SHORT_OPTIONS "ft", options, NULL)) != -1) {
                switch (c) {
                case 'f':
                        opts.follow = true;
                        break;
                case OPT_TAIL:
                        if (ctl_parse_int(optarg, 0, INT32_MAX, &v) < 0)
                                return ctl_usage(ctl, "--tail: expected a number of lines, not '%s'", optarg);
                        opts.tail_lines = (int32_t)v;
                        break;
                case OPT_SINCE:
                        if (parse_time(optarg, &opts.since_time_ms) < 0)
                                return ctl_usage(ctl, "--since: not a time: '%s'", optarg);
                        break;
                case 't':
                        opts.timestamps = true;
                        break;
                default:
                        r = ctl_common_option(ctl, c, logs_help);
                        if (r < 0)
                                return ctl_unknown_option(ctl, argv);
                        if (r != CTL_GO_ON)
                                return r;
                }
        }
        if (argc - optind != 1)
                return ctl_usage(ctl, "expected one sandbox ID");
        r = ctl_connect(ctl);
        if (r != 0)
                return r;
        r = cws_logs_open(ctl->conn, argv[optind], &opts, &logs, &err);
        if (r != 0)
                return ctl_fail(ctl, argv[optind], r, &err);
        for (;;) {
                cws_log_line *line = NULL;

                r = cws_logs_next(logs, -1, &line, &err);
                if (r != 0) {
                        r = ctl_fail(ctl, argv[optind], r, &err);
                        break;
                }
                if (!line)
                        break;
                print_line(ctl, line);
                cws_log_line_free(line);
                /* Followed lines should show up as they come, even through a pipe. */
                if (opts.follow)
                        fflush(stdout);
        }
        cws_logs_close(logs);
        return r;
}
