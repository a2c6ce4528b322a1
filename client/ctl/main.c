/*
 * cwsandboxctl: the command-line client of cwsandboxd. This file holds the
 * global options and the table of commands; each command lives in the file
 * of its group.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

#ifndef CTL_VERSION
#define CTL_VERSION "unknown"
#endif

typedef struct Command {
        const char *name;
        CtlCommandFn fn;
        const char *summary;
} Command;

static const Command commands[] = {
        { "status",  cmd_status,  "the daemon's version, backend, uptime, sessions, sandboxes by state" },
        { "session", cmd_session, "create, ls, close, adopt: named sessions of sandboxes" },
        { "run",     cmd_run,     "start a new sandbox and print its id" },
        { "exec",    cmd_exec,    "run a command in a sandbox, with its output, stdin and terminal" },
        { "ls",      cmd_ls,      "list sandboxes" },
        { "get",     cmd_get,     "show one sandbox" },
        { "cp",      cmd_cp,      "copy a file into or out of a sandbox" },
        { "logs",    cmd_logs,    "the output of a sandbox's main process" },
        { "stop",    cmd_stop,    "stop sandboxes and wait until they have stopped" },
        { "delete",  cmd_delete,  "delete sandboxes at once" },
        { "metrics", cmd_metrics, "the daemon's counters" },
};

static void help(FILE *f) {
        fputs("Usage: cwsandboxctl [--socket PATH] [-o table|json] COMMAND [ARGS...]\n"
              "       cwsandboxctl COMMAND --help\n"
              "       cwsandboxctl --version\n"
              "\n"
              "The command-line client of cwsandboxd, the per-host sandbox daemon.\n"
              "\n"
              "Commands:\n", f);
        for (size_t i = 0; i < ELEMENTSOF(commands); i++)
                fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].summary);
        fputs("\n"
              "Options (also accepted after the command):\n"
              "  --socket PATH   the daemon's socket; default $CWSANDBOXD_SOCKET, else\n"
              "                  /run/cwsandboxd/cwsandboxd.sock if it exists, else\n"
              "                  $XDG_RUNTIME_DIR/cwsandboxd/cwsandboxd.sock\n"
              "  -o, --output F  'table' (default) or 'json': one JSON value per command,\n"
              "                  a stable format described in each command's --help\n"
              "  -h, --help      this text\n"
              "  -V, --version   the version\n"
              "\n"
              "Exit status:\n"
              "  0  success (exec: the remote command's exit status instead)\n"
              "  1  any other error\n"
              "  2  bad command line\n"
              "  3  not found: no such sandbox, session or file\n"
              "  4  permission denied: it belongs to another user\n"
              "  5  the daemon cannot be reached\n"
              "Errors are one line on stderr, starting with 'cwsandboxctl: '.\n", f);
}

static const Command *command_find(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(commands); i++)
                if (streq(commands[i].name, name))
                        return &commands[i];
        return NULL;
}

static int command_help(Ctl *ctl, const Command *cmd, char *name) {
        char help_arg[] = "--help";
        char *hargv[] = { name, help_arg, NULL };

        optind = 0;
        return cmd->fn(ctl, 2, hargv);
}

int main(int argc, char **argv) {
        static const struct option options[] = {
                CTL_COMMON_LONG_OPTIONS,
                { "version", no_argument, NULL, 'V' },
                {}
        };
        Ctl ctl = {};
        const Command *cmd;
        int c, r;

        /* Errors are ours to print, in our format. */
        opterr = 0;
        /* A reader that goes away (| head) ends us quietly, as it does other tools. */
        signal(SIGPIPE, SIG_DFL);

        /* '+': stop at the command name; its options are its own. */
        while ((c = getopt_long(argc, argv, "+" CTL_COMMON_SHORT_OPTIONS "V", options, NULL)) != -1) {
                switch (c) {
                case 'h':
                        help(stdout);
                        return CTL_EXIT_OK;
                case 'V':
                        printf("cwsandboxctl %s\n", CTL_VERSION);
                        return CTL_EXIT_OK;
                case 'o':
                        if (ctl_set_output(&ctl, optarg) != 0)
                                return CTL_EXIT_USAGE;
                        break;
                case CTL_OPT_SOCKET:
                        ctl.socket_path = optarg;
                        break;
                default:
                        return ctl_unknown_option(&ctl, argv);
                }
        }
        if (optind >= argc) {
                help(stderr);
                return CTL_EXIT_USAGE;
        }
        if (streq(argv[optind], "help")) {
                if (optind + 1 >= argc) {
                        help(stdout);
                        return CTL_EXIT_OK;
                }
                optind++;
                cmd = command_find(argv[optind]);
                if (!cmd)
                        return ctl_usage(&ctl, "unknown command '%s'", argv[optind]);
                ctl.command = cmd->name;
                return command_help(&ctl, cmd, argv[optind]);
        }
        cmd = command_find(argv[optind]);
        if (!cmd)
                return ctl_usage(&ctl, "unknown command '%s'", argv[optind]);
        ctl.command = cmd->name;
        argc -= optind;
        argv += optind;
        /* Each command parses its own argv from the start. */
        optind = 0;
        r = cmd->fn(&ctl, argc, argv);
        cws_conn_close(ctl.conn);
        if (fflush(stdout) != 0 && r == 0)
                r = ctl_error(&ctl, CTL_EXIT_FAILURE, "write error on stdout");
        return r;
}
