/*
 * cwsandboxctl session: create, list, close named sessions, and adopt
 * sandboxes into one.
 *
 * A session made here outlives the command that made it: the command's
 * connection ends at once, so by default the session is created with linger
 * -1 (never closes on its own) and lasts until `session close`.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "output.h"

static const char session_help[] =
        "Usage: cwsandboxctl session create NAME [--tag T]... [--image I] [--env K=V]... [--linger S]\n"
        "                                   [--max-sandboxes N] [--max-creates-per-second R]\n"
        "       cwsandboxctl session ls\n"
        "       cwsandboxctl session close NAME\n"
        "       cwsandboxctl session adopt NAME ID...\n"
        "\n"
        "Sessions are named groups of sandboxes with shared defaults; closing one stops\n"
        "every sandbox in it. Only the owner and root may use a session.\n"
        "\n"
        "create  Create session NAME (an error if it exists). --tag, --image and --env\n"
        "        are the defaults of its sandboxes. --linger S: close it S seconds after\n"
        "        its last client leaves (0 = at once, -1 = never; default -1, since\n"
        "        this command leaves at once). --max-sandboxes N and\n"
        "        --max-creates-per-second R: admission limits of this session on top of\n"
        "        the host's (at most the daemon's session_max_* when those are set).\n"
        "ls      The sessions the caller may see.\n"
        "close   Stop every sandbox of NAME and end it. Exits 1 if any did not stop.\n"
        "adopt   Make sandboxes that are in no session part of NAME: they stop when it\n"
        "        closes. One in another session already is an error (exit 1).\n"
        "\n"
        "JSON: create  a session object: {\"session_id\": str, \"name\": str, \"owner_uid\": int,\n"
        "                \"linger_seconds\": int, \"sandbox_count\": int, \"connections\": int,\n"
        "                \"created\": bool}\n"
        "      ls      [session object...]\n"
        "      close   {\"session_id\": str, \"name\": str, \"stopped\": int, \"failures\":\n"
        "                [{\"sandbox_id\": str, \"code\": str, \"message\": str, \"reason\": str}...],\n"
        "                \"metrics\": {NAME: number...}} (its final cwsandbox/... metrics)\n"
        "      adopt   [sandbox object...] (see 'cwsandboxctl get --help')\n";

/* Parses the options of a subcommand; returns CTL_GO_ON to go on or an exit code. */
static int parse_common_only(Ctl *ctl, int argc, char **argv) {
        static const struct option options[] = { CTL_COMMON_LONG_OPTIONS, {} };
        int c, r;

        while ((c = getopt_long(argc, argv, CTL_COMMON_SHORT_OPTIONS, options, NULL)) != -1) {
                r = ctl_common_option(ctl, c, session_help);
                if (r < 0)
                        return ctl_unknown_option(ctl, argv);
                if (r != CTL_GO_ON)
                        return r;
        }
        return CTL_GO_ON;
}

static int session_create(Ctl *ctl, int argc, char **argv) {
        enum { OPT_TAG = 0x200, OPT_IMAGE, OPT_ENV, OPT_LINGER, OPT_MAX_SANDBOXES, OPT_MAX_RATE };
        static const struct option options[] = {
                CTL_COMMON_LONG_OPTIONS,
                { "tag", required_argument, NULL, OPT_TAG },
                { "image", required_argument, NULL, OPT_IMAGE },
                { "env", required_argument, NULL, OPT_ENV },
                { "linger", required_argument, NULL, OPT_LINGER },
                { "max-sandboxes", required_argument, NULL, OPT_MAX_SANDBOXES },
                { "max-creates-per-second", required_argument, NULL, OPT_MAX_RATE },
                {}
        };
        cws_sandbox_defaults defaults = {};
        cws_attach_options opts = { .defaults = &defaults, .has_linger = true, .linger_seconds = -1 };
        StrList tags = {};
        KvList env = {};
        cws_session *s = NULL;
        cws_error err;
        long long v;
        int c, r;

        while ((c = getopt_long(argc, argv, CTL_COMMON_SHORT_OPTIONS, options, NULL)) != -1) {
                switch (c) {
                case OPT_TAG:
                        strlist_add(&tags, optarg);
                        break;
                case OPT_IMAGE:
                        defaults.container_image = optarg;
                        break;
                case OPT_ENV:
                        if (kvlist_add(&env, optarg) < 0) {
                                r = ctl_usage(ctl, "--env: expected K=V, not '%s'", optarg);
                                goto out;
                        }
                        break;
                case OPT_LINGER:
                        if (ctl_parse_int(optarg, -1, INT32_MAX, &v) < 0) {
                                r = ctl_usage(ctl, "--linger: expected seconds (-1 = never), not '%s'", optarg);
                                goto out;
                        }
                        opts.linger_seconds = (int32_t)v;
                        break;
                case OPT_MAX_SANDBOXES:
                        if (ctl_parse_int(optarg, 0, UINT32_MAX, &v) < 0) {
                                r = ctl_usage(ctl, "--max-sandboxes: expected a count (0 = none), not '%s'", optarg);
                                goto out;
                        }
                        opts.max_sandboxes = (uint32_t)v;
                        break;
                case OPT_MAX_RATE:
                        if (ctl_parse_seconds(optarg, &opts.max_creates_per_second) < 0) {
                                r = ctl_usage(ctl, "--max-creates-per-second: expected a rate (0 = none), not '%s'",
                                              optarg);
                                goto out;
                        }
                        break;
                default:
                        r = ctl_common_option(ctl, c, session_help);
                        if (r < 0)
                                r = ctl_unknown_option(ctl, argv);
                        if (r != CTL_GO_ON)
                                goto out;
                }
        }
        if (argc - optind != 1) {
                r = ctl_usage(ctl, "expected one NAME");
                goto out;
        }
        defaults.tags = tags.items;
        defaults.n_tags = tags.n;
        defaults.env = env.items;
        defaults.n_env = env.n;
        r = ctl_connect(ctl);
        if (r != 0)
                goto out;
        r = cws_attach(ctl->conn, argv[optind], &opts, &s, &err);
        if (r != 0) {
                r = ctl_fail(ctl, NULL, r, &err);
                goto out;
        }
        if (!s->created) {
                /* Joined one that exists: leave it as it was. */
                (void)cws_detach(ctl->conn, s->session_id, NULL);
                r = ctl_error(ctl, CTL_EXIT_FAILURE, "session '%s' already exists", argv[optind]);
                goto out;
        }
        if (ctl->output == CTL_OUTPUT_JSON) {
                Json j;

                json_init(&j, stdout);
                json_session(&j, s);
                json_end(&j);
        } else
                printf("Created session %s (%s).\n", s->name, s->session_id);
        r = 0;
out:
        cws_session_free(s);
        strlist_done(&tags);
        kvlist_done(&env);
        return r;
}

static int session_ls(Ctl *ctl, int argc, char **argv) {
        cws_session_list *list = NULL;
        cws_error err;
        int r;

        r = parse_common_only(ctl, argc, argv);
        if (r != CTL_GO_ON)
                return r;
        if (optind < argc)
                return ctl_usage(ctl, "unexpected argument '%s'", argv[optind]);
        r = ctl_connect(ctl);
        if (r != 0)
                return r;
        r = cws_list_sessions(ctl->conn, &list, &err);
        if (r != 0)
                return ctl_fail(ctl, NULL, r, &err);
        if (ctl->output == CTL_OUTPUT_JSON) {
                Json j;

                json_init(&j, stdout);
                json_array_begin(&j);
                for (size_t i = 0; i < list->n_sessions; i++)
                        json_session(&j, &list->sessions[i]);
                json_array_end(&j);
                json_end(&j);
        } else {
                Table *t = table_new(6, "NAME", "SESSION ID", "OWNER", "SANDBOXES", "CONNECTIONS", "LINGER");

                for (size_t i = 0; i < list->n_sessions; i++) {
                        const cws_session *s = &list->sessions[i];
                        char owner[16], count[16], conns[16], linger[16];

                        snprintf(owner, sizeof(owner), "%" PRIu32, s->owner_uid);
                        snprintf(count, sizeof(count), "%" PRIu32, s->sandbox_count);
                        snprintf(conns, sizeof(conns), "%" PRIu32, s->connections);
                        if (s->linger_seconds < 0)
                                snprintf(linger, sizeof(linger), "never");
                        else
                                snprintf(linger, sizeof(linger), "%" PRId32 "s", s->linger_seconds);
                        table_add(t, s->name, s->session_id, owner, count, conns, linger);
                }
                if (list->n_sessions == 0)
                        printf("No sessions.\n");
                else
                        table_print(t, stdout);
                table_free(t);
        }
        cws_session_list_free(list);
        return 0;
}

static void close_print_json(const cws_session *s, const cws_close_result *res) {
        Json j;

        json_init(&j, stdout);
        json_object_begin(&j);
        json_key(&j, "session_id");
        json_string(&j, s->session_id);
        json_key(&j, "name");
        json_string(&j, s->name);
        json_key(&j, "stopped");
        json_int(&j, res->stopped);
        json_key(&j, "failures");
        json_array_begin(&j);
        for (size_t i = 0; i < res->n_failures; i++) {
                const cws_error *e = &res->failures[i];

                json_object_begin(&j);
                json_key(&j, "sandbox_id");
                json_string(&j, e->sandbox_id);
                json_key(&j, "code");
                json_string(&j, cws_strerror(e->code));
                json_key(&j, "message");
                json_string(&j, e->message);
                json_key(&j, "reason");
                json_string(&j, e->reason);
                json_object_end(&j);
        }
        json_array_end(&j);
        json_key(&j, "metrics");
        json_object_begin(&j);
        for (size_t i = 0; res->metrics && i < res->metrics->n_metrics; i++) {
                json_key(&j, res->metrics->metrics[i].name);
                json_double(&j, res->metrics->metrics[i].value);
        }
        json_object_end(&j);
        json_object_end(&j);
        json_end(&j);
}

static int session_close(Ctl *ctl, int argc, char **argv) {
        cws_close_result *res = NULL;
        cws_session *s = NULL;
        cws_error err;
        int r;

        r = parse_common_only(ctl, argc, argv);
        if (r != CTL_GO_ON)
                return r;
        if (argc - optind != 1)
                return ctl_usage(ctl, "expected one NAME");
        r = ctl_session_find(ctl, argv[optind], &s);
        if (r != 0)
                return r;
        r = cws_close_session(ctl->conn, s->session_id, &res, &err);
        if (r != 0) {
                r = ctl_fail(ctl, NULL, r, &err);
                goto out;
        }
        if (ctl->output == CTL_OUTPUT_JSON)
                close_print_json(s, res);
        else
                printf("Closed session %s: %" PRIu32 " sandbox(es) stopped.\n", s->name, res->stopped);
        for (size_t i = 0; i < res->n_failures; i++)
                ctl_error(ctl, CTL_EXIT_FAILURE, "sandbox %s did not stop: %s", res->failures[i].sandbox_id,
                          res->failures[i].message);
        r = res->n_failures ? CTL_EXIT_FAILURE : 0;
out:
        cws_close_result_free(res);
        cws_session_free(s);
        return r;
}

static int session_adopt(Ctl *ctl, int argc, char **argv) {
        cws_session *s = NULL;
        Json j;
        int r, ret = 0;

        r = parse_common_only(ctl, argc, argv);
        if (r != CTL_GO_ON)
                return r;
        if (argc - optind < 2)
                return ctl_usage(ctl, "expected NAME and at least one sandbox ID");
        r = ctl_session_find(ctl, argv[optind], &s);
        if (r != 0)
                return r;
        json_init(&j, stdout);
        if (ctl->output == CTL_OUTPUT_JSON)
                json_array_begin(&j);
        for (int i = optind + 1; i < argc; i++) {
                cws_sandbox *sb = NULL;
                cws_error err;

                r = cws_sandbox_from_id(ctl->conn, s->session_id, argv[i], true, &sb, &err);
                if (r != 0) {
                        r = ctl_fail(ctl, argv[i], r, &err);
                        if (!ret)
                                ret = r;
                        continue;
                }
                /* The daemon leaves a sandbox that is in a session already where it is. */
                if (!sb->session_id || !streq(sb->session_id, s->session_id)) {
                        r = ctl_error(ctl, CTL_EXIT_FAILURE, "%s: already in session %s", argv[i],
                                      sb->session_id && *sb->session_id ? sb->session_id : "(none)");
                        if (!ret)
                                ret = r;
                } else if (ctl->output == CTL_OUTPUT_JSON)
                        json_sandbox(&j, sb);
                else
                        printf("Adopted sandbox %s into session %s.\n", sandbox_display_id(sb), s->name);
                cws_sandbox_free(sb);
        }
        if (ctl->output == CTL_OUTPUT_JSON) {
                json_array_end(&j);
                json_end(&j);
        }
        cws_session_free(s);
        return ret;
}

int cmd_session(Ctl *ctl, int argc, char **argv) {
        static const struct {
                const char *name;
                const char *full;
                CtlCommandFn fn;
        } subs[] = {
                { "create", "session create", session_create },
                { "ls",     "session ls",     session_ls },
                { "list",   "session ls",     session_ls },
                { "close",  "session close",  session_close },
                { "adopt",  "session adopt",  session_adopt },
        };

        /* "session --help", or "session" alone. */
        if (argc < 2 || argv[1][0] == '-') {
                int r = parse_common_only(ctl, argc, argv);

                if (r != CTL_GO_ON)
                        return r;
                return ctl_usage(ctl, "expected a subcommand: create, ls, close or adopt");
        }
        for (size_t i = 0; i < ELEMENTSOF(subs); i++)
                if (streq(argv[1], subs[i].name)) {
                        ctl->command = subs[i].full;
                        optind = 0;
                        return subs[i].fn(ctl, argc - 1, argv + 1);
                }
        return ctl_usage(ctl, "unknown subcommand '%s'", argv[1]);
}
