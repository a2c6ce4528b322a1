/*
 * cwsandboxctl run, ls, get, stop and delete: the life of sandboxes.
 *
 * run puts every sandbox in a session. Without --session it is the caller's
 * own "cwsandboxctl-<uid>", created on first use with linger -1, so that
 * sandboxes started from a shell outlive the command that started them.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "output.h"

#define SANDBOX_JSON_HELP                                                                       \
        "Sandbox object: {\"sandbox_id\": str, \"handle_id\": str, \"session_id\": str,\n"      \
        "  \"state\": str, \"state_reason\": str, \"exit_code\": int|null, \"tags\": [str...],\n" \
        "  \"create_time_ms\": int, \"start_time_ms\": int, \"end_time_ms\": int (Unix ms, 0 =\n" \
        "  unknown), \"scope\": \"session\"|\"connection\", \"container_image\": str}\n"

static const char run_help[] =
        "Usage: cwsandboxctl run [--session NAME] [--image I] [--tag T]... [--env K=V]...\n"
        "                        [--wait] [-- CMD ARGS...]\n"
        "\n"
        "Start a new sandbox and print its id. CMD ARGS... is its main process (default:\n"
        "the session's, else one that sleeps until stopped).\n"
        "\n"
        "  --session NAME  the session to put it in, joined or created (with linger -1);\n"
        "                  default: the caller's own session \"cwsandboxctl-<uid>\"\n"
        "  --image I       the container image\n"
        "  --tag T         a tag (repeatable)\n"
        "  --env K=V       an environment variable (repeatable)\n"
        "  --wait          wait until it is running (or has ended) before printing\n"
        "\n"
        "JSON: the sandbox object.\n"
        SANDBOX_JSON_HELP;

static const char ls_help[] =
        "Usage: cwsandboxctl ls [--session NAME] [--tag T]... [--status S] [--all]\n"
        "\n"
        "List the caller's sandboxes (root: everyone's).\n"
        "\n"
        "  --session NAME  only those of session NAME (and its default tags)\n"
        "  --tag T         only those with tag T (repeatable: every one must match)\n"
        "  --status S      only those in state S: pending, creating, running, paused,\n"
        "                  terminating, completed, failed, terminated\n"
        "  --all           also sandboxes that have stopped\n"
        "\n"
        "JSON: [sandbox object...]\n"
        SANDBOX_JSON_HELP;

static const char get_help[] =
        "Usage: cwsandboxctl get ID\n"
        "\n"
        "Show one sandbox, as the backend reports it now. ID is a backend sandbox id or\n"
        "a daemon handle id.\n"
        "\n"
        "JSON: the sandbox object.\n"
        SANDBOX_JSON_HELP;

static const char stop_help[] =
        "Usage: cwsandboxctl stop [--grace S] [--missing-ok] ID...\n"
        "\n"
        "Stop sandboxes and wait until they have stopped. The exit status is that of the\n"
        "first failure; the others are still tried.\n"
        "\n"
        "  --grace S       seconds between SIGTERM and SIGKILL (default 10)\n"
        "  --missing-ok    a sandbox that does not exist is not an error\n"
        "\n"
        "JSON: [{\"id\": str (as given), \"missing\": bool, \"state\": str|null,\n"
        "        \"exit_code\": int|null}...]\n";

static const char delete_help[] =
        "Usage: cwsandboxctl delete [--missing-ok] ID...\n"
        "\n"
        "Delete sandboxes at once: no grace period, no wait.\n"
        "\n"
        "  --missing-ok    a sandbox that does not exist is not an error\n"
        "\n"
        "JSON: [{\"id\": str}...]\n";

static void print_sandbox_json(const cws_sandbox *sb) {
        Json j;

        json_init(&j, stdout);
        json_sandbox(&j, sb);
        json_end(&j);
}

/* ---- run -------------------------------------------------------------------------------------- */

static int run_attach(Ctl *ctl, const char *name, cws_session **ret) {
        _cleanup_free_ char *default_name = NULL;
        cws_attach_options opts = { .has_linger = true, .linger_seconds = -1 };
        cws_error err;
        int r;

        if (!name)
                name = default_name = ctl_default_session_name();
        r = cws_attach(ctl->conn, name, &opts, ret, &err);
        if (r != 0)
                return ctl_fail(ctl, name, r, &err);
        return 0;
}

int cmd_run(Ctl *ctl, int argc, char **argv) {
        enum { OPT_SESSION = 0x200, OPT_IMAGE, OPT_TAG, OPT_ENV, OPT_WAIT };
        static const struct option options[] = {
                CTL_COMMON_LONG_OPTIONS,
                { "session", required_argument, NULL, OPT_SESSION },
                { "image", required_argument, NULL, OPT_IMAGE },
                { "tag", required_argument, NULL, OPT_TAG },
                { "env", required_argument, NULL, OPT_ENV },
                { "wait", no_argument, NULL, OPT_WAIT },
                {}
        };
        cws_sandbox_args args = {};
        cws_create_options opts = { .args = &args, .start = true };
        const char *session_name = NULL;
        cws_session *s = NULL;
        cws_sandbox *sb = NULL, *w = NULL;
        StrList tags = {};
        KvList env = {};
        bool wait = false;
        cws_error err;
        int c, r;

        /* '+': what follows the options is the command, whatever it looks like. */
        while ((c = getopt_long(argc, argv, "+" CTL_COMMON_SHORT_OPTIONS, options, NULL)) != -1) {
                switch (c) {
                case OPT_SESSION:
                        session_name = optarg;
                        break;
                case OPT_IMAGE:
                        args.container_image = optarg;
                        break;
                case OPT_TAG:
                        strlist_add(&tags, optarg);
                        break;
                case OPT_ENV:
                        if (kvlist_add(&env, optarg) < 0) {
                                r = ctl_usage(ctl, "--env: expected K=V, not '%s'", optarg);
                                goto out;
                        }
                        break;
                case OPT_WAIT:
                        wait = true;
                        break;
                default:
                        r = ctl_common_option(ctl, c, run_help);
                        if (r < 0)
                                r = ctl_unknown_option(ctl, argv);
                        if (r != CTL_GO_ON)
                                goto out;
                }
        }
        if (optind < argc) {
                args.command = argv[optind];
                args.args = (const char *const *)argv + optind + 1;
                args.n_args = (size_t)(argc - optind - 1);
                args.has_args = true;
        }
        args.tags = tags.items;
        args.n_tags = tags.n;
        args.env = env.items;
        args.n_env = env.n;
        r = ctl_connect(ctl);
        if (r != 0)
                goto out;
        r = run_attach(ctl, session_name, &s);
        if (r != 0)
                goto out;
        r = cws_sandbox_create(ctl->conn, s->session_id, &opts, &sb, &err);
        if (r != 0) {
                r = ctl_fail(ctl, NULL, r, &err);
                goto out;
        }
        if (wait) {
                r = cws_sandbox_wait(ctl->conn, sb->handle_id, false, 0, &w, &err);
                if (r != 0) {
                        ctl_error(ctl, ctl_exit_code(r), "sandbox %s: wait: %s", sandbox_display_id(sb),
                                  err.message);
                        r = ctl_exit_code(r);
                        goto out;
                }
        }
        if (ctl->output == CTL_OUTPUT_JSON)
                print_sandbox_json(w ? w : sb);
        else
                printf("%s\n", sandbox_display_id(w ? w : sb));
        r = 0;
out:
        cws_sandbox_free(w);
        cws_sandbox_free(sb);
        cws_session_free(s);
        strlist_done(&tags);
        kvlist_done(&env);
        return r;
}

/* ---- ls and get --------------------------------------------------------------------------- */

static void print_sandbox_table(const cws_sandbox_list *list) {
        Table *t = table_new(6, "SANDBOX ID", "STATE", "IMAGE", "SESSION", "CREATED", "STARTED");

        for (size_t i = 0; i < list->n_sandboxes; i++) {
                const cws_sandbox *sb = &list->sandboxes[i];
                char created[32], started[32];

                table_add(t, sandbox_display_id(sb), cws_state_name(sb->state),
                          sb->container_image && *sb->container_image ? sb->container_image : "-",
                          sb->session_id && *sb->session_id ? sb->session_id : "-",
                          format_time_ms(sb->create_time_ms, created), format_time_ms(sb->start_time_ms, started));
        }
        table_print(t, stdout);
        table_free(t);
}

int cmd_ls(Ctl *ctl, int argc, char **argv) {
        enum { OPT_SESSION = 0x200, OPT_TAG, OPT_STATUS, OPT_ALL };
        static const struct option options[] = {
                CTL_COMMON_LONG_OPTIONS,
                { "session", required_argument, NULL, OPT_SESSION },
                { "tag", required_argument, NULL, OPT_TAG },
                { "status", required_argument, NULL, OPT_STATUS },
                { "all", no_argument, NULL, OPT_ALL },
                {}
        };
        cws_list_options opts = {};
        const char *session_name = NULL;
        cws_session *s = NULL;
        cws_sandbox_list *list = NULL;
        StrList tags = {};
        cws_error err;
        int c, r;

        while ((c = getopt_long(argc, argv, CTL_COMMON_SHORT_OPTIONS "a", options, NULL)) != -1) {
                switch (c) {
                case OPT_SESSION:
                        session_name = optarg;
                        break;
                case OPT_TAG:
                        strlist_add(&tags, optarg);
                        break;
                case OPT_STATUS:
                        if (ctl_parse_state(optarg, &opts.status) < 0) {
                                r = ctl_usage(ctl, "--status: unknown state '%s'", optarg);
                                goto out;
                        }
                        break;
                case 'a':
                case OPT_ALL:
                        opts.include_stopped = true;
                        break;
                default:
                        r = ctl_common_option(ctl, c, ls_help);
                        if (r < 0)
                                r = ctl_unknown_option(ctl, argv);
                        if (r != CTL_GO_ON)
                                goto out;
                }
        }
        if (optind < argc) {
                r = ctl_usage(ctl, "unexpected argument '%s'", argv[optind]);
                goto out;
        }
        r = ctl_connect(ctl);
        if (r != 0)
                goto out;
        if (session_name) {
                r = ctl_session_find(ctl, session_name, &s);
                if (r != 0)
                        goto out;
                opts.session_id = s->session_id;
        }
        opts.tags = tags.items;
        opts.n_tags = tags.n;
        r = cws_list_sandboxes(ctl->conn, &opts, &list, &err);
        if (r != 0) {
                r = ctl_fail(ctl, NULL, r, &err);
                goto out;
        }
        if (ctl->output == CTL_OUTPUT_JSON) {
                Json j;

                json_init(&j, stdout);
                json_array_begin(&j);
                for (size_t i = 0; i < list->n_sandboxes; i++)
                        json_sandbox(&j, &list->sandboxes[i]);
                json_array_end(&j);
                json_end(&j);
        } else if (list->n_sandboxes == 0)
                printf("No sandboxes found.\n");
        else
                print_sandbox_table(list);
        r = 0;
out:
        cws_sandbox_list_free(list);
        cws_session_free(s);
        strlist_done(&tags);
        return r;
}

static void print_sandbox_fields(const cws_sandbox *sb) {
        char t[32];

        printf("Sandbox ID:   %s\n", sb->sandbox_id && *sb->sandbox_id ? sb->sandbox_id : "-");
        printf("Handle ID:    %s\n", sb->handle_id && *sb->handle_id ? sb->handle_id : "-");
        printf("Session ID:   %s\n", sb->session_id && *sb->session_id ? sb->session_id : "-");
        printf("State:        %s%s%s%s\n", cws_state_name(sb->state), sb->state_reason && *sb->state_reason ? " (" : "",
               sb->state_reason ? sb->state_reason : "", sb->state_reason && *sb->state_reason ? ")" : "");
        if (sb->has_exit_code)
                printf("Exit code:    %" PRId32 "\n", sb->exit_code);
        else
                printf("Exit code:    -\n");
        printf("Image:        %s\n", sb->container_image && *sb->container_image ? sb->container_image : "-");
        printf("Scope:        %s\n", sb->scope == CWS_SCOPE_CONNECTION ? "connection" : "session");
        printf("Created:      %s\n", format_time_ms(sb->create_time_ms, t));
        printf("Started:      %s\n", format_time_ms(sb->start_time_ms, t));
        printf("Ended:        %s\n", format_time_ms(sb->end_time_ms, t));
        printf("Tags:        ");
        for (size_t i = 0; i < sb->n_tags; i++)
                printf(" %s", sb->tags[i]);
        printf("%s\n", sb->n_tags ? "" : " -");
}

int cmd_get(Ctl *ctl, int argc, char **argv) {
        static const struct option options[] = { CTL_COMMON_LONG_OPTIONS, {} };
        cws_sandbox *sb = NULL;
        cws_error err;
        int c, r;

        while ((c = getopt_long(argc, argv, CTL_COMMON_SHORT_OPTIONS, options, NULL)) != -1) {
                r = ctl_common_option(ctl, c, get_help);
                if (r < 0)
                        return ctl_unknown_option(ctl, argv);
                if (r != CTL_GO_ON)
                        return r;
        }
        if (argc - optind != 1)
                return ctl_usage(ctl, "expected one sandbox ID");
        r = ctl_connect(ctl);
        if (r != 0)
                return r;
        r = cws_sandbox_get(ctl->conn, argv[optind], true, &sb, &err);
        if (r != 0)
                return ctl_fail(ctl, argv[optind], r, &err);
        if (ctl->output == CTL_OUTPUT_JSON)
                print_sandbox_json(sb);
        else
                print_sandbox_fields(sb);
        cws_sandbox_free(sb);
        return 0;
}

/* ---- stop and delete ------------------------------------------------------------------------ */

int cmd_stop(Ctl *ctl, int argc, char **argv) {
        enum { OPT_GRACE = 0x200, OPT_MISSING_OK };
        static const struct option options[] = {
                CTL_COMMON_LONG_OPTIONS,
                { "grace", required_argument, NULL, OPT_GRACE },
                { "missing-ok", no_argument, NULL, OPT_MISSING_OK },
                {}
        };
        cws_stop_options opts = {};
        int c, r, ret = 0;
        Json j;

        while ((c = getopt_long(argc, argv, CTL_COMMON_SHORT_OPTIONS, options, NULL)) != -1) {
                switch (c) {
                case OPT_GRACE:
                        if (ctl_parse_seconds(optarg, &opts.grace_seconds) < 0)
                                return ctl_usage(ctl, "--grace: expected seconds, not '%s'", optarg);
                        opts.has_grace = true;
                        break;
                case OPT_MISSING_OK:
                        opts.missing_ok = true;
                        break;
                default:
                        r = ctl_common_option(ctl, c, stop_help);
                        if (r < 0)
                                return ctl_unknown_option(ctl, argv);
                        if (r != CTL_GO_ON)
                                return r;
                }
        }
        if (optind >= argc)
                return ctl_usage(ctl, "expected at least one sandbox ID");
        r = ctl_connect(ctl);
        if (r != 0)
                return r;
        json_init(&j, stdout);
        if (ctl->output == CTL_OUTPUT_JSON)
                json_array_begin(&j);
        for (int i = optind; i < argc; i++) {
                cws_sandbox *sb = NULL;
                cws_error err;

                r = cws_sandbox_stop(ctl->conn, argv[i], &opts, &sb, &err);
                if (r != 0) {
                        r = ctl_fail(ctl, argv[i], r, &err);
                        if (!ret)
                                ret = r;
                        continue;
                }
                if (ctl->output == CTL_OUTPUT_JSON) {
                        json_object_begin(&j);
                        json_key(&j, "id");
                        json_string(&j, argv[i]);
                        json_key(&j, "missing");
                        json_bool(&j, !sb);
                        json_key(&j, "state");
                        json_string(&j, sb ? cws_state_name(sb->state) : NULL);
                        json_key(&j, "exit_code");
                        if (sb && sb->has_exit_code)
                                json_int(&j, sb->exit_code);
                        else
                                json_null(&j);
                        json_object_end(&j);
                } else if (sb)
                        printf("Stopped sandbox %s (%s).\n", argv[i], cws_state_name(sb->state));
                else
                        printf("Sandbox %s is already missing.\n", argv[i]);
                cws_sandbox_free(sb);
        }
        if (ctl->output == CTL_OUTPUT_JSON) {
                json_array_end(&j);
                json_end(&j);
        }
        return ret;
}

int cmd_delete(Ctl *ctl, int argc, char **argv) {
        enum { OPT_MISSING_OK = 0x200 };
        static const struct option options[] = {
                CTL_COMMON_LONG_OPTIONS,
                { "missing-ok", no_argument, NULL, OPT_MISSING_OK },
                {}
        };
        bool missing_ok = false;
        int c, r, ret = 0;
        Json j;

        while ((c = getopt_long(argc, argv, CTL_COMMON_SHORT_OPTIONS, options, NULL)) != -1) {
                if (c == OPT_MISSING_OK) {
                        missing_ok = true;
                        continue;
                }
                r = ctl_common_option(ctl, c, delete_help);
                if (r < 0)
                        return ctl_unknown_option(ctl, argv);
                if (r != CTL_GO_ON)
                        return r;
        }
        if (optind >= argc)
                return ctl_usage(ctl, "expected at least one sandbox ID");
        r = ctl_connect(ctl);
        if (r != 0)
                return r;
        json_init(&j, stdout);
        if (ctl->output == CTL_OUTPUT_JSON)
                json_array_begin(&j);
        for (int i = optind; i < argc; i++) {
                cws_error err;

                r = cws_sandbox_delete(ctl->conn, argv[i], missing_ok, &err);
                if (r != 0) {
                        r = ctl_fail(ctl, argv[i], r, &err);
                        if (!ret)
                                ret = r;
                        continue;
                }
                if (ctl->output == CTL_OUTPUT_JSON) {
                        json_object_begin(&j);
                        json_key(&j, "id");
                        json_string(&j, argv[i]);
                        json_object_end(&j);
                } else
                        printf("Deleted sandbox %s.\n", argv[i]);
        }
        if (ctl->output == CTL_OUTPUT_JSON) {
                json_array_end(&j);
                json_end(&j);
        }
        return ret;
}
