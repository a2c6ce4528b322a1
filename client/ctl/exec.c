/*
 * cwsandboxctl exec: run a command in a sandbox as if it were local. The
 * main thread copies the command's output to stdout and stderr; a second
 * thread forwards stdin (-i) and terminal size changes (-t), so neither
 * waits for the other. With -i -t on a terminal, the local terminal is in
 * raw mode for the length of the command: keys, ^C included, go to the
 * remote side, and the terminal is put back however the command ends.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "ctl.h"

#define IO_CHUNK (64u * 1024)

static const char exec_help[] =
        "Usage: cwsandboxctl exec [-i] [-t] [--timeout S] [--cwd DIR] [--env K=V]... ID -- CMD ARGS...\n"
        "\n"
        "Run CMD in sandbox ID (started first if it is not yet), stream its stdout and\n"
        "stderr, and exit with its exit status. Output is raw bytes whatever -o says.\n"
        "\n"
        "  -i, --stdin        forward stdin to the command (its end closes the command's stdin)\n"
        "  -t, --tty          give the command a terminal the size of the local one; with -i\n"
        "                     on a terminal, the local one is in raw mode until the end and\n"
        "                     follows window size changes\n"
        "      --timeout S    kill the command after S seconds (default: the session's)\n"
        "      --cwd DIR      absolute working directory\n"
        "      --env K=V      an environment variable (repeatable)\n"
        "\n"
        "Exit status: the command's; 1-5 as for every command when it could not run.\n";

/* The terminal as it was, put back at every way out. */
static struct termios saved_termios;
static volatile sig_atomic_t termios_saved;
static int winch_pipe[2] = { -1, -1 };

static void terminal_restore(void) {
        if (termios_saved) {
                (void)tcsetattr(STDIN_FILENO, TCSADRAIN, &saved_termios);
                termios_saved = 0;
        }
}

static void on_fatal_signal(int sig) {
        terminal_restore();
        signal(sig, SIG_DFL);
        raise(sig);
}

static void on_winch(int sig) {
        int saved = errno;

        (void)!write(winch_pipe[1], "w", 1);
        errno = saved;
}

static int terminal_raw(void) {
        struct termios raw;

        if (tcgetattr(STDIN_FILENO, &saved_termios) < 0)
                return -errno;
        termios_saved = 1;
        atexit(terminal_restore);
        signal(SIGTERM, on_fatal_signal);
        signal(SIGHUP, on_fatal_signal);
        signal(SIGQUIT, on_fatal_signal);
        raw = saved_termios;
        cfmakeraw(&raw);
        if (tcsetattr(STDIN_FILENO, TCSADRAIN, &raw) < 0)
                return -errno;
        return 0;
}

static void terminal_size(uint32_t *ret_width, uint32_t *ret_height) {
        struct winsize ws = {};

        if ((ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) < 0 || ws.ws_col == 0) &&
            (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) < 0 || ws.ws_col == 0))
                ws = (struct winsize) { .ws_col = 80, .ws_row = 24 };
        *ret_width = ws.ws_col;
        *ret_height = ws.ws_row ? ws.ws_row : 24;
}

static int write_all(int fd, const char *buf, size_t len) {
        while (len > 0) {
                ssize_t n = write(fd, buf, len);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                buf += n;
                len -= (size_t)n;
        }
        return 0;
}

/* ---- the input thread --------------------------------------------------------------------- */

typedef struct ExecInput {
        cws_exec *x;
        bool forward_stdin;
        bool tty;
        int stop_pipe[2];               /* the main thread writes here when the output ends */
} ExecInput;

static void input_resize(ExecInput *in) {
        uint32_t w, h;
        char drain[64];

        while (read(winch_pipe[0], drain, sizeof(drain)) > 0)
                ;
        terminal_size(&w, &h);
        (void)cws_exec_resize(in->x, w, h, NULL);
}

/* Returns false when stdin is done with (its end, or an exec that no longer takes input). */
static bool input_stdin(ExecInput *in, char *buf) {
        ssize_t n = read(STDIN_FILENO, buf, IO_CHUNK);

        if (n < 0 && (errno == EINTR || errno == EAGAIN))
                return true;
        if (n <= 0) {
                (void)cws_exec_close_stdin(in->x, NULL);
                return false;
        }
        /* A failure ends the exec; the output side reports it. */
        return cws_exec_write(in->x, buf, (size_t)n, NULL) == 0;
}

static void *input_thread(void *userdata) {
        ExecInput *in = userdata;
        _cleanup_free_ char *buf = malloc(IO_CHUNK);
        bool stdin_open = in->forward_stdin;

        if (!buf)
                abort();
        for (;;) {
                struct pollfd p[3] = {
                        { .fd = in->stop_pipe[0], .events = POLLIN },
                        { .fd = in->tty ? winch_pipe[0] : -1, .events = POLLIN },
                        { .fd = stdin_open ? STDIN_FILENO : -1, .events = POLLIN },
                };

                if (poll(p, ELEMENTSOF(p), -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                if (p[0].revents)
                        break;
                if (p[1].revents)
                        input_resize(in);
                if (p[2].revents)
                        stdin_open = input_stdin(in, buf);
        }
        return NULL;
}

/* ---- the command -------------------------------------------------------------------------- */

/* Copies the output until its end; returns 0 or the cws_code that ended the exec. */
static int exec_copy_output(cws_exec *x, cws_error *err) {
        _cleanup_free_ char *buf = malloc(IO_CHUNK);

        if (!buf)
                abort();
        for (;;) {
                cws_stream stream;
                size_t len;
                int r;

                r = cws_exec_read(x, buf, IO_CHUNK, -1, &stream, &len, err);
                if (r != 0)
                        return r;
                if (len == 0)
                        return 0;
                /* Nobody reading our output (a closed pipe) ends us with SIGPIPE, as it would a local command. */
                (void)write_all(stream == CWS_STREAM_STDERR ? STDERR_FILENO : STDOUT_FILENO, buf, len);
        }
}

static int exec_stream(Ctl *ctl, const char *id, const char *const *argv, cws_exec_options *opts) {
        ExecInput in = { .forward_stdin = opts->with_stdin, .tty = opts->tty, .stop_pipe = { -1, -1 } };
        bool raw = opts->tty && opts->with_stdin && isatty(STDIN_FILENO);
        bool input = opts->with_stdin || opts->tty;
        pthread_t thread;
        cws_exec *x = NULL;
        cws_error err;
        int r, code = 0;

        if (opts->tty) {
                terminal_size(&opts->tty_width, &opts->tty_height);
                if (pipe2(winch_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
                        return ctl_error(ctl, CTL_EXIT_FAILURE, "pipe: %m");
                signal(SIGWINCH, on_winch);
        }
        if (input && pipe2(in.stop_pipe, O_CLOEXEC) < 0)
                return ctl_error(ctl, CTL_EXIT_FAILURE, "pipe: %m");
        r = cws_exec_start(ctl->conn, id, argv, opts, &x, &err);
        if (r != 0) {
                r = ctl_fail(ctl, id, r, &err);
                goto out;
        }
        in.x = x;
        if (raw && terminal_raw() < 0) {
                r = ctl_error(ctl, CTL_EXIT_FAILURE, "cannot put the terminal in raw mode: %m");
                goto out;
        }
        if (input && (errno = pthread_create(&thread, NULL, input_thread, &in)) != 0) {
                r = ctl_error(ctl, CTL_EXIT_FAILURE, "pthread_create: %m");
                goto out;
        }
        r = exec_copy_output(x, &err);
        if (r == 0)
                r = cws_exec_wait(x, &code, &err);
        if (input) {
                (void)!write(in.stop_pipe[1], "s", 1);
                pthread_join(thread, NULL);
        }
        terminal_restore();
        if (r != 0)
                r = ctl_fail(ctl, id, r, &err);
        else
                r = code >= 0 && code <= 255 ? code : 255;
out:
        terminal_restore();
        cws_exec_free(x);
        closep(&in.stop_pipe[0]);
        closep(&in.stop_pipe[1]);
        if (opts->tty) {
                signal(SIGWINCH, SIG_DFL);
                closep(&winch_pipe[0]);
                closep(&winch_pipe[1]);
        }
        return r;
}

int cmd_exec(Ctl *ctl, int argc, char **argv) {
        enum { OPT_TIMEOUT = 0x200, OPT_CWD, OPT_ENV };
        static const struct option options[] = {
                CTL_COMMON_LONG_OPTIONS,
                { "stdin", no_argument, NULL, 'i' },
                { "tty", no_argument, NULL, 't' },
                { "timeout", required_argument, NULL, OPT_TIMEOUT },
                { "cwd", required_argument, NULL, OPT_CWD },
                { "env", required_argument, NULL, OPT_ENV },
                {}
        };
        cws_exec_options opts = {};
        KvList env = {};
        int c, r;

        /*
         * Options may come before or after ID; "--" ends them, and what
         * follows ID is the command.
         */
        while ((c = getopt_long(argc, argv, CTL_COMMON_SHORT_OPTIONS "it", options, NULL)) != -1) {
                switch (c) {
                case 'i':
                        opts.with_stdin = true;
                        break;
                case 't':
                        opts.tty = true;
                        break;
                case OPT_TIMEOUT:
                        if (ctl_parse_seconds(optarg, &opts.timeout_seconds) < 0 || opts.timeout_seconds == 0) {
                                r = ctl_usage(ctl, "--timeout: expected seconds > 0, not '%s'", optarg);
                                goto out;
                        }
                        break;
                case OPT_CWD:
                        if (optarg[0] != '/') {
                                r = ctl_usage(ctl, "--cwd: must be an absolute path");
                                goto out;
                        }
                        opts.cwd = optarg;
                        break;
                case OPT_ENV:
                        if (kvlist_add(&env, optarg) < 0) {
                                r = ctl_usage(ctl, "--env: expected K=V, not '%s'", optarg);
                                goto out;
                        }
                        break;
                default:
                        r = ctl_common_option(ctl, c, exec_help);
                        if (r < 0)
                                r = ctl_unknown_option(ctl, argv);
                        if (r != CTL_GO_ON)
                                goto out;
                }
        }
        if (argc - optind < 2) {
                r = ctl_usage(ctl, argc - optind < 1 ? "expected a sandbox ID and a command" : "expected a command");
                goto out;
        }
        opts.env = env.items;
        opts.n_env = env.n;
        r = ctl_connect(ctl);
        if (r != 0)
                goto out;
        r = exec_stream(ctl, argv[optind], (const char *const *)argv + optind + 1, &opts);
out:
        kvlist_done(&env);
        return r;
}
