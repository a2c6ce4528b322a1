/*
 * cwsandboxd: configuration, signals and the service manager; the rest is
 * the Manager's.
 *
 * With the service manager (sd_notify): READY=1 once the socket listens and
 * the first reconciliation has ended; STATUS= with live counts, when they
 * change (looked at every few seconds); WATCHDOG=1 from a timer on the loop
 * itself at half of WatchdogSec=, so a loop that is stuck stops the pings
 * and systemd restarts the daemon; RELOADING=1 ... READY=1 around a SIGHUP
 * reload; STOPPING=1 on SIGTERM.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <grpc/grpc.h>
#include <systemd/sd-daemon.h>

#include "config.h"
#include "log.h"
#include "manager.h"

typedef struct Main {
        uv_loop_t loop;
        Config config;
        Manager *manager;
        uv_signal_t sigterm, sigint, sighup;
        uv_timer_t watchdog, status;
        char status_line[256];
        int argc;
        char **argv;
        bool stopped;
} Main;

#define STATUS_EVERY_MS 2000

static void on_watchdog(uv_timer_t *t) {
        (void)sd_notify(0, "WATCHDOG=1");
}

/* @prefix (READY=1) and STATUS= with the live counts; without @prefix only when they have changed. */
static void notify_status(Main *mn, const char *prefix) {
        char line[sizeof(mn->status_line)];

        manager_status_line(mn->manager, line, sizeof(line));
        if (!*prefix && streq(line, mn->status_line))
                return;
        snprintf(mn->status_line, sizeof(mn->status_line), "%s", line);
        (void)sd_notifyf(0, "%sSTATUS=Serving: %s", prefix, line);
}

static void on_status(uv_timer_t *t) {
        notify_status(t->data, "");
}

static void on_ready(void *userdata) {
        Main *mn = userdata;
        uint64_t usec = 0;

        log_notice("ready: %s backend, socket %s", mn->manager->local ? "embedded" : mn->config.backend_url,
                   mn->config.socket_path);
        notify_status(mn, "READY=1\n");
        uv_timer_start(&mn->status, on_status, STATUS_EVERY_MS, STATUS_EVERY_MS);
        if (sd_watchdog_enabled(0, &usec) > 0 && usec >= 2000) {
                log_info("watchdog: a ping every %" PRIu64 " ms", usec / 2000);
                uv_timer_start(&mn->watchdog, on_watchdog, 0, usec / 2000);
        }
}

static void on_stopped(void *userdata) {
        Main *mn = userdata;

        mn->stopped = true;
        uv_close((uv_handle_t *)&mn->watchdog, NULL);
        uv_close((uv_handle_t *)&mn->status, NULL);
        uv_close((uv_handle_t *)&mn->sigterm, NULL);
        uv_close((uv_handle_t *)&mn->sigint, NULL);
        uv_close((uv_handle_t *)&mn->sighup, NULL);
}

static void on_stop_signal(uv_signal_t *s, int signum) {
        Main *mn = s->data;

        log_info("%s received", strsignal(signum));
        (void)sd_notify(0, "STOPPING=1\nSTATUS=Stopping: letting calls in flight finish");
        uv_timer_stop(&mn->status);
        manager_stop(mn->manager, on_stopped, mn);
}

static uint64_t monotonic_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/*
 * SIGHUP: read the configuration again and apply what can change while
 * running (log level, admission limits, the API key). Connections, sessions
 * and calls in flight are untouched. A bad file changes nothing.
 */
static void on_reload(uv_signal_t *s, int signum) {
        Main *mn = s->data;
        Config c = CONFIG_NULL(c);
        _cleanup_free_ char *error = NULL;
        char restart_keys[512];
        int r;

        (void)sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%" PRIu64 "\nSTATUS=Reloading the configuration",
                         monotonic_usec());
        r = config_init_defaults(&c);
        if (r >= 0)
                r = config_load(&c, mn->argc, mn->argv, &error);
        if (r != 0)
                log_error("reload: %s; keeping the running configuration", error ? error : strerror(-r));
        else {
                if (config_reload(&mn->config, &c, restart_keys, sizeof(restart_keys)) > 0)
                        log_warning("reload: %s changed; that takes a restart", restart_keys);
                log_set_max_level(mn->config.log_level);
                log_notice("reload: log level %s", log_level_to_string(mn->config.log_level));
                if (mn->manager && !mn->manager->stopping)
                        (void)manager_reload(mn->manager);
        }
        config_free(&c);
        if (mn->manager)
                notify_status(mn, "READY=1\n");
        else
                (void)sd_notify(0, "READY=1");
}

static int make_parent_dir(const char *path) {
        _cleanup_free_ char *copy = strdup(path);

        if (!copy)
                return -ENOMEM;
        /* Clients of any uid must reach the socket; rights are checked per request. */
        if (mkdir(dirname(copy), 0755) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

/* A socket passed by the service manager, or -1. */
static int listen_fd_from_systemd(void) {
        int n = sd_listen_fds(1);

        if (n <= 0)
                return -1;
        if (n > 1)
                log_warning("%d sockets passed; using the first", n);
        if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, NULL, 0) <= 0) {
                log_error("the passed socket is not a listening Unix stream socket");
                return -2;
        }
        return SD_LISTEN_FDS_START;
}

static int run(Main *mn) {
        Config *c = &mn->config;
        int listen_fd, r;

        listen_fd = listen_fd_from_systemd();
        if (listen_fd == -2)
                return -EINVAL;
        if (listen_fd < 0) {
                r = make_parent_dir(c->socket_path);
                if (r < 0)
                        return log_error("cannot create the directory of %s: %s", c->socket_path, strerror(-r)), r;
        }
        if (mkdir(c->state_dir, 0700) < 0 && errno != EEXIST) {
                r = -errno;
                return log_error("cannot create the state directory %s: %s", c->state_dir, strerror(errno)), r;
        }
        uv_signal_init(&mn->loop, &mn->sigterm);
        uv_signal_init(&mn->loop, &mn->sigint);
        uv_signal_init(&mn->loop, &mn->sighup);
        uv_timer_init(&mn->loop, &mn->watchdog);
        uv_timer_init(&mn->loop, &mn->status);
        mn->sigterm.data = mn->sigint.data = mn->sighup.data = mn->status.data = mn;
        uv_signal_start(&mn->sigterm, on_stop_signal, SIGTERM);
        uv_signal_start(&mn->sigint, on_stop_signal, SIGINT);
        uv_signal_start(&mn->sighup, on_reload, SIGHUP);

        r = manager_new(&mn->loop, c, listen_fd, on_ready, mn, &mn->manager);
        if (r < 0 && mn->manager)
                manager_stop(mn->manager, on_stopped, mn);
        else if (r < 0)
                on_stopped(mn);
        uv_run(&mn->loop, UV_RUN_DEFAULT);
        if (r >= 0 && mn->manager)
                r = mn->manager->start_failed;
        mn->manager = manager_free(mn->manager);
        return r;
}

int main(int argc, char **argv) {
        Main mn = { .config = CONFIG_NULL(mn.config), .argc = argc, .argv = argv };
        _cleanup_free_ char *error = NULL;
        int r;

        log_set_ident("cwsandboxd");
        /* Under systemd stderr goes to the journal: send structured records instead. */
        if (getenv("JOURNAL_STREAM"))
                log_set_journal(true);
        r = config_init_defaults(&mn.config);
        if (r < 0)
                return log_error("out of memory"), EXIT_FAILURE;
        r = config_load(&mn.config, argc, argv, &error);
        if (r == CONFIG_E_HELP) {
                config_usage(stdout);
                config_free(&mn.config);
                return EXIT_SUCCESS;
        }
        if (r == CONFIG_E_VERSION) {
                printf("cwsandboxd %s\n", PROJECT_VERSION);
                config_free(&mn.config);
                return EXIT_SUCCESS;
        }
        if (r != 0) {
                log_error("%s", error ? error : strerror(-r));
                config_free(&mn.config);
                return 2;
        }
        log_set_max_level(mn.config.log_level);
        signal(SIGPIPE, SIG_IGN);

        grpc_init();
        uv_loop_init(&mn.loop);
        r = run(&mn);
        if (uv_loop_close(&mn.loop) != 0)
                log_warning("the loop still had handles open at exit");
        grpc_shutdown();
        config_free(&mn.config);
        if (r < 0) {
                (void)sd_notifyf(0, "STATUS=Failed to start: %s\nERRNO=%d", strerror(-r), -r);
                return EXIT_FAILURE;
        }
        log_info("stopped");
        return EXIT_SUCCESS;
}
