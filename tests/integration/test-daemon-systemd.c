/*
 * cwsandboxd under a service manager's protocol, with no systemd running:
 * - a NOTIFY_SOCKET of the test's own (messages taken only from the daemon's
 *   pid, as NotifyAccess=main does): READY=1 with STATUS=, WATCHDOG=1 at half
 *   of WATCHDOG_USEC, a STATUS= with live counts once a session exists,
 *   RELOADING=1 and READY=1 around a SIGHUP, STOPPING=1 on SIGTERM, in that
 *   order;
 * - a loop that is stuck stops the watchdog pings: the configuration is a
 *   FIFO, so the SIGHUP reload blocks the loop until the test writes to it;
 * - the reload raises the log level to debug and keeps the client's
 *   connection and session (no reconnect);
 * - socket activation with systemd-socket-activate: a client is served
 *   through the passed socket.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cwsandbox.h"
#include "daemon-proc.h"
#include "test-util.h"

#define WATCHDOG_USEC   600000          /* pings every 300 ms */
#define MAX_MESSAGES    4096

typedef struct Message {
        int64_t at_ms;
        pid_t from;
        char text[512];
} Message;

static char dir[] = "/tmp/cwsandboxd-systemd-XXXXXX";
static char notify_path[96], fifo_path[96], log_path[96];
static int notify_fd = -1;
static atomic_int daemon_pid;
static atomic_bool reader_stop;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static Message messages[MAX_MESSAGES];
static size_t n_messages;

/* ---- the notify socket ------------------------------------------------------------------- */

static void notify_open(void) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int one = 1;

        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", notify_path);
        notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (notify_fd < 0 || bind(notify_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
            setsockopt(notify_fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0)
                bail_out("notify socket: %m");
}

/*
 * Every datagram, with its sender's pid and arrival time. Only the daemon's
 * count (as NotifyAccess=main): its embedded backend notifies too. The pid
 * is known only once the daemon has started, so the filter is applied when
 * reading.
 */
static void *reader(void *arg) {
        (void)arg;
        while (!atomic_load(&reader_stop)) {
                struct pollfd p = { .fd = notify_fd, .events = POLLIN };
                char buf[512], control[CMSG_SPACE(sizeof(struct ucred))];
                struct iovec iov = { buf, sizeof(buf) - 1 };
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                                     .msg_controllen = sizeof(control) };
                struct cmsghdr *c;
                pid_t from = 0;
                ssize_t n;

                if (poll(&p, 1, 50) <= 0)
                        continue;
                n = recvmsg(notify_fd, &mh, MSG_DONTWAIT);
                if (n < 0)
                        continue;
                buf[n] = 0;
                for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS)
                                from = ((struct ucred *)(void *)CMSG_DATA(c))->pid;
                pthread_mutex_lock(&lock);
                if (n_messages < MAX_MESSAGES) {
                        messages[n_messages].at_ms = test_mono_ms();
                        messages[n_messages].from = from;
                        snprintf(messages[n_messages].text, sizeof(messages[0].text), "%s", buf);
                        n_messages++;
                }
                pthread_mutex_unlock(&lock);
        }
        return NULL;
}

/* The index of the first message at or after @from with a line starting with @line, or -1. */
static long find(size_t from, const char *line) {
        long found = -1;

        pthread_mutex_lock(&lock);
        for (size_t i = from; i < n_messages && found < 0; i++) {
                const char *t = messages[i].text;

                if (messages[i].from != atomic_load(&daemon_pid))
                        continue;
                for (const char *l = t; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
                        if (strncmp(l, line, strlen(line)) == 0) {
                                found = (long)i;
                                break;
                        }
        }
        pthread_mutex_unlock(&lock);
        return found;
}

static long wait_for(size_t from, const char *line, int timeout_ms) {
        long i;

        for (int64_t end = test_mono_ms() + timeout_ms; (i = find(from, line)) < 0 && test_mono_ms() < end;)
                test_sleep_ms(20);
        return i;
}

/* WATCHDOG=1 messages that arrived in [@from_ms, @to_ms). */
static int pings_between(int64_t from_ms, int64_t to_ms) {
        int n = 0;

        pthread_mutex_lock(&lock);
        for (size_t i = 0; i < n_messages; i++)
                n += messages[i].from == atomic_load(&daemon_pid) && messages[i].at_ms >= from_ms &&
                     messages[i].at_ms < to_ms && strstr(messages[i].text, "WATCHDOG=1") != NULL;
        pthread_mutex_unlock(&lock);
        return n;
}

static const char *text_of(long i) {
        return i >= 0 ? messages[i].text : "";
}

/* ---- the configuration FIFO ----------------------------------------------------------------- */

typedef struct FifoWrite {
        pthread_t thread;
        const char *content;
} FifoWrite;

static void *fifo_writer(void *arg) {
        FifoWrite *w = arg;
        int fd = open(fifo_path, O_WRONLY | O_CLOEXEC);    /* blocks until the daemon opens it */

        if (fd >= 0) {
                (void)!write(fd, w->content, strlen(w->content));
                close(fd);
        }
        return NULL;
}

static void fifo_feed(FifoWrite *w, const char *content) {
        w->content = content;
        pthread_create(&w->thread, NULL, fifo_writer, w);
}

static bool log_has(const char *needle) {
        _cleanup_free_ char *text = NULL;
        size_t cap = 0;
        FILE *f = fopen(log_path, "r");
        bool found;

        if (!f)
                return false;
        found = getdelim(&text, &cap, 0, f) > 0 && strstr(text, needle);
        fclose(f);
        return found;
}

/* ---- the test -------------------------------------------------------------------------------- */

static DaemonProc *start_with_notify(void) {
        const char *args[] = { "--config", fifo_path, NULL };
        DaemonProc *d = NULL;
        FifoWrite first;
        int saved = dup(STDERR_FILENO), logfd;
        char usec[32];
        int r;

        /* The daemon's log goes to a file the test reads (the child inherits fd 2). */
        logfd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (logfd < 0 || saved < 0 || dup2(logfd, STDERR_FILENO) < 0)
                bail_out("log file: %m");
        snprintf(usec, sizeof(usec), "%d", WATCHDOG_USEC);
        setenv("NOTIFY_SOCKET", notify_path, 1);
        setenv("WATCHDOG_USEC", usec, 1);
        setenv("CWSANDBOXD_LOG_LEVEL", "config", 1);
        fifo_feed(&first, "[cwsandboxd]\nlog_level = info\n");
        r = daemon_proc_start(args, &d);
        unsetenv("NOTIFY_SOCKET");
        unsetenv("WATCHDOG_USEC");
        unsetenv("CWSANDBOXD_LOG_LEVEL");
        dup2(saved, STDERR_FILENO);
        close(saved);
        close(logfd);
        pthread_join(first.thread, NULL);
        if (r == -ENOENT) {
                tap_skip_all("CWSANDBOXD is not set");
                exit(0);
        }
        if (r < 0)
                bail_out("cannot start the daemon: %s", strerror(-r));
        atomic_store(&daemon_pid, d->pid);
        return d;
}

static void test_notify(void) {
        cws_create_options started = { .start = true };
        cws_attach_options ao = { .has_linger = true, .linger_seconds = 0 };
        DaemonProc *d = start_with_notify();
        long ready, status, reloading, ready2, stopping, first_ping;
        cws_session *session = NULL;
        cws_sandbox *sb = NULL;
        cws_conn *c = NULL;
        cws_error err;
        int64_t blocked_at, unblocked_at;
        FifoWrite second;
        int r, st;

        ready = wait_for(0, "READY=1", 30000);
        ok(ready >= 0, "READY=1");
        ok(ready >= 0 && find(0, "") == ready, "READY=1 is the daemon's first message");
        ok(strstr(text_of(ready), "STATUS=Serving: 0 sessions") != NULL, "with STATUS= and its counts: %s",
           text_of(ready));
        first_ping = wait_for(0, "WATCHDOG=1", 5000);
        ok(first_ping > ready, "WATCHDOG=1 pings after READY=1");
        test_sleep_ms(1500);
        ok(pings_between(test_mono_ms() - 1500, test_mono_ms()) >= 3,
           "about every 300 ms with WATCHDOG_USEC=600000 (%d in 1.5 s)", pings_between(test_mono_ms() - 1500,
                                                                                      test_mono_ms()));

        r = cws_connect(d->socket_path, "test-daemon-systemd", &c, &err);
        if (r == 0)
                r = cws_attach(c, "notify", &ao, &session, &err);
        if (r == 0)
                r = cws_sandbox_create(c, session->session_id, &started, &sb, &err);
        ok(r == 0, "a client, a session, a sandbox");
        status = wait_for((size_t)ready + 1, "STATUS=Serving: 1 sessions, 1 sandboxes", 10000);
        ok(status > 0, "STATUS= follows the live counts: %s", text_of(status));

        /* The reload reads a FIFO nobody writes yet: the loop is stuck in it. */
        kill(d->pid, SIGHUP);
        reloading = wait_for((size_t)status + 1, "RELOADING=1", 5000);
        ok(reloading > 0, "SIGHUP: RELOADING=1");
        ok(strstr(text_of(reloading), "MONOTONIC_USEC=") != NULL, "with MONOTONIC_USEC=");
        blocked_at = test_mono_ms();
        test_sleep_ms(1500);
        is_int(pings_between(blocked_at + 100, test_mono_ms()), 0, "a stuck loop sends no WATCHDOG=1 (1.5 s)");
        fifo_feed(&second, "[cwsandboxd]\nlog_level = debug\nmax_sandboxes = 1\nadmission_policy = reject\n");
        pthread_join(second.thread, NULL);
        unblocked_at = test_mono_ms();
        ready2 = wait_for((size_t)reloading + 1, "READY=1", 5000);
        ok(ready2 > reloading, "READY=1 after the reload");
        test_sleep_ms(1000);
        ok(pings_between(unblocked_at, test_mono_ms()) >= 2, "the pings come back with the loop");

        ok(log_has("reload: log level debug"), "the reload applied log_level = debug");
        {
                cws_status *s = NULL;

                r = cws_get_status(c, &s, &err);
                ok(r == 0 && s->sessions == 1, "the connection made before the reload still works");
                cws_status_free(s);
        }
        is_int(cws_conn_reconnects(c), 0, "and was never dropped (no reconnect)");
        {
                cws_sandbox *second_sb = NULL;

                /* The reload also took max_sandboxes = 1 and the reject policy: the session's sandbox fills it. */
                r = cws_sandbox_create(c, session->session_id, &started, &second_sb, &err);
                is_int(r, CWS_RESOURCE_EXHAUSTED, "the reload applied max_sandboxes = 1, policy reject");
                ok(strstr(err.message, "1 of 1 sandboxes alive") != NULL, "refused for the new limit: %s",
                   err.message);
                cws_sandbox_free(second_sb);
        }
        {
                cws_session *again = NULL;
                cws_conn *c2 = NULL;

                /* An attach is logged at debug level. */
                r = cws_connect(d->socket_path, "test-daemon-systemd", &c2, &err);
                if (r == 0)
                        r = cws_attach(c2, "notify", &ao, &again, &err);
                ok(r == 0 && !again->created, "a second client joins the session after the reload");
                for (int64_t end = test_mono_ms() + 5000; !log_has(": debug:") && test_mono_ms() < end;)
                        test_sleep_ms(50);
                ok(log_has(": debug:"), "debug records appear after the reload");
                cws_session_free(again);
                cws_conn_close(c2);
        }

        daemon_proc_signal(d, SIGTERM);
        stopping = wait_for((size_t)ready2 + 1, "STOPPING=1", 10000);
        ok(stopping > ready2, "SIGTERM: STOPPING=1, last of all");
        ok(daemon_proc_stop(d, 30000, &st) == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit 0");
        cws_sandbox_free(sb);
        cws_session_free(session);
        cws_conn_close(c);
        daemon_proc_free(d);
}

/* systemd-socket-activate listens, then runs the daemon with the socket as fd 3. */
static void test_socket_activation(void) {
        const char *bin = getenv("CWSANDBOXD"), *local = getenv("CWSANDBOX_LOCAL");
        char sock[160], state[160];
        cws_status *s = NULL;
        cws_conn *c = NULL;
        cws_error err;
        pid_t pid;
        int r, st;

        snprintf(sock, sizeof(sock), "%s/activated.sock", dir);
        snprintf(state, sizeof(state), "%s/activated-state", dir);
        pid = fork();
        if (pid == 0) {
                execlp("systemd-socket-activate", "systemd-socket-activate", "-l", sock, bin, "--config=/dev/null",
                       "--socket", "/nonexistent/unused.sock", "--state-dir", state, "--local-backend-path", local,
                       "--log-level", "info", (char *)NULL);
                _exit(127);
        }
        for (int64_t end = test_mono_ms() + 10000; access(sock, F_OK) != 0 && test_mono_ms() < end;)
                test_sleep_ms(20);
        r = cws_connect(sock, "test-daemon-systemd", &c, &err);
        if (r == 0)
                r = cws_get_status(c, &s, &err);
        ok(r == 0 && s && streq(s->backend_kind, "local"),
           "socket activation: a client is served through the passed socket (%s)", r ? err.message : "status");
        ok(access("/nonexistent/unused.sock", F_OK) != 0, "and the configured socket path is not used");
        cws_status_free(s);
        cws_conn_close(c);
        kill(pid, SIGTERM);
        r = waitpid(pid, &st, 0);
        ok(r == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "socket-activated daemon exits 0 on SIGTERM");
        test_rm_rf(state);
}

int main(void) {
        pthread_t t;

        if (!getenv("CWSANDBOXD")) {
                tap_skip_all("CWSANDBOXD is not set");
                return 0;
        }
        if (!mkdtemp(dir))
                bail_out("mkdtemp: %m");
        snprintf(notify_path, sizeof(notify_path), "%s/notify", dir);
        snprintf(fifo_path, sizeof(fifo_path), "%s/config.fifo", dir);
        snprintf(log_path, sizeof(log_path), "%s/daemon.log", dir);
        if (mkfifo(fifo_path, 0600) < 0)
                bail_out("mkfifo: %m");
        notify_open();
        pthread_create(&t, NULL, reader, NULL);
        test_notify();
        atomic_store(&reader_stop, true);
        pthread_join(t, NULL);
        close(notify_fd);
        if (access("/usr/bin/systemd-socket-activate", X_OK) == 0 || access("/bin/systemd-socket-activate", X_OK) == 0)
                test_socket_activation();
        else
                tap_skip("systemd-socket-activate is not installed", "socket activation");
        test_rm_rf(dir);
        return done();
}
