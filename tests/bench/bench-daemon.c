/*
 * bench-daemon: figures for cwsandboxd on its embedded backend, no assertions.
 *
 *   status round trip       one unary call over the local socket, sequential
 *   exec `true`             buffered exec through the daemon, and the same
 *                           StreamExec sent straight to the backend it runs:
 *                           the difference is what the daemon adds
 *   throughput              64 client threads, one connection each, for status
 *                           calls and for exec `true`
 *   RSS                     the daemon's resident memory for 10,000 idle
 *                           handles and for 1,000 idle connections
 *   create                  create-and-start until the backend has answered:
 *                           the handle's ledger record is made durable first
 *   restart                 with those 10,000 handles in the ledger: SIGTERM
 *                           until exit, start until status answers, and the
 *                           same start after kill -9
 *
 * It starts its own daemon from $CWSANDBOXD (as `meson test --benchmark`
 * does) and needs root, like every test that makes real sandboxes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "daemon-proc.h"
#include "frame-client.h"
#include "test-util.h"

#define N_STATUS        2000
#define N_EXEC          200
#define N_CREATE        50
#define N_METRICS       200
#define N_THREADS       64
#define RUN_SECONDS     5
#define N_HANDLES       10000
#define N_CONNECTIONS   1000
#define CALL_TIMEOUT_MS 30000

static DaemonProc *daemon_proc;

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *)a, y = *(const double *)b;

        return x < y ? -1 : x > y;
}

static double percentile(const double *v, int n, int p) {
        int rank = (p * n + 99) / 100;

        return n ? v[MAX(rank, 1) - 1] : 0;
}

static double now_us(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void latency(const char *what, double *us, int n, double *ret_p50) {
        qsort(us, n, sizeof(double), cmp_double);
        printf("%-44s n=%-5d p50 %9.1f us   p99 %9.1f us\n", what, n, percentile(us, n, 50), percentile(us, n, 99));
        if (ret_p50)
                *ret_p50 = percentile(us, n, 50);
}

static void die(const char *what, int r) {
        fprintf(stderr, "bench-daemon: %s: %s\n", what, r < 0 ? strerror(-r) : "failed");
        daemon_proc_free(daemon_proc);
        exit(1);
}

/* ---- a minimal synchronous client ----------------------------------------------------- */

typedef Cwsandboxd__V1__ClientFrame ClientFrame;
typedef Cwsandboxd__V1__DaemonFrame DaemonFrame;

static FrameClient *connect_daemon(void) {
        DaemonFrame *reply = NULL;
        FrameClient *c;
        int r;

        r = frame_client_connect(daemon_proc->socket_path, &c);
        if (r < 0)
                die("connect", r);
        r = frame_client_hello(c, 1, "bench-daemon", CALL_TIMEOUT_MS, &reply);
        if (r != 0 || reply->error)
                die("hello", r ? r : -EPROTO);
        frame_client_frame_free(reply);
        return c;
}

/* Send @f and return the final frame of its call (data frames are dropped). */
static DaemonFrame *call(FrameClient *c, ClientFrame *f) {
        static _Atomic uint64_t next_id = 1;
        DaemonFrame *reply = NULL;
        int r;

        f->call_id = atomic_fetch_add(&next_id, 1);
        r = frame_client_send(c, f);
        if (r != 0)
                die("send", r);
        for (;;) {
                r = frame_client_recv(c, CALL_TIMEOUT_MS, &reply);
                if (r != 0)
                        die("receive", r);
                if (reply->call_id == f->call_id && reply->final)
                        return reply;
                frame_client_frame_free(reply);
        }
}

static void status_call(FrameClient *c) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__StatusRequest req = CWSANDBOXD__V1__STATUS_REQUEST__INIT;
        DaemonFrame *r;

        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_STATUS;
        f.status = &req;
        r = call(c, &f);
        if (r->error)
                die(r->error->message, -EIO);
        frame_client_frame_free(r);
}

static char *attach(FrameClient *c, const char *name) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__AttachSessionRequest req = CWSANDBOXD__V1__ATTACH_SESSION_REQUEST__INIT;
        DaemonFrame *r;
        char *id;

        req.name = (char *)name;
        req.has_linger = true;
        req.linger_seconds = 0;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_ATTACH_SESSION;
        f.attach_session = &req;
        r = call(c, &f);
        if (r->error || !r->session)
                die("attach", -EIO);
        id = strdup(r->session->session_id);
        frame_client_frame_free(r);
        return id;
}

static char *create(FrameClient *c, const char *session, bool start) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__CreateSandboxRequest req = CWSANDBOXD__V1__CREATE_SANDBOX_REQUEST__INIT;
        DaemonFrame *r;
        char *id;

        req.session_id = (char *)session;
        req.start = start;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_CREATE_SANDBOX;
        f.create_sandbox = &req;
        r = call(c, &f);
        if (r->error || !r->sandbox)
                die(r->error ? r->error->message : "create", -EIO);
        id = strdup(r->sandbox->handle_id);
        frame_client_frame_free(r);
        return id;
}

static void exec_true(FrameClient *c, const char *id) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__ExecRequest req = CWSANDBOXD__V1__EXEC_REQUEST__INIT;
        char *argv[] = { (char *)"true" };
        DaemonFrame *r;

        req.sandbox_id = (char *)id;
        req.command = argv;
        req.n_command = 1;
        req.buffered = true;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_EXEC;
        f.exec = &req;
        r = call(c, &f);
        if (r->error || !r->exec_result || r->exec_result->exit_code != 0)
                die(r->error ? r->error->message : "exec", -EIO);
        frame_client_frame_free(r);
}

static long rss_kib(pid_t pid) {
        char path[64], line[256];
        long kib = -1;
        FILE *f;

        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
        f = fopen(path, "re");
        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
                        break;
        fclose(f);
        return kib;
}

/* ---- figures ------------------------------------------------------------------------------ */

static void bench_status(FrameClient *c) {
        static double us[N_STATUS];

        for (int i = 0; i < 100; i++)
                status_call(c);
        for (int i = 0; i < N_STATUS; i++) {
                double t = now_us();

                status_call(c);
                us[i] = now_us() - t;
        }
        latency("status round trip", us, N_STATUS, NULL);
}

static void bench_exec(FrameClient *c, const char *handle) {
        static double via[N_EXEC], direct[N_EXEC];
        static const char *const argv[] = { "true", NULL };
        _cleanup_free_ char *sandbox_id = NULL;
        BcClient *bc = NULL;
        double p50_via, p50_direct;
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__GetSandboxRequest get = CWSANDBOXD__V1__GET_SANDBOX_REQUEST__INIT;
        DaemonFrame *r;
        int e;

        get.sandbox_id = (char *)handle;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_GET_SANDBOX;
        f.get_sandbox = &get;
        r = call(c, &f);
        if (r->error || !r->sandbox)
                die("get", -EIO);
        sandbox_id = strdup(r->sandbox->sandbox_id);
        frame_client_frame_free(r);
        e = daemon_proc_backend(daemon_proc, &bc);
        if (e < 0)
                die("backend client", e);

        /* Interleaved, so both see the same machine load. */
        for (int i = 0; i < 20; i++)
                exec_true(c, handle);
        for (int i = 0; i < N_EXEC; i++) {
                BcExec *x = NULL;
                double t = now_us();

                exec_true(c, handle);
                via[i] = now_us() - t;
                t = now_us();
                if (bc_exec_run(bc, sandbox_id, argv, CALL_TIMEOUT_MS, &x) != 0 || x->exit_code != 0)
                        die("direct exec", -EIO);
                direct[i] = now_us() - t;
                bc_exec_free(x);
        }
        latency("exec `true` through cwsandboxd", via, N_EXEC, &p50_via);
        latency("exec `true` straight to the backend", direct, N_EXEC, &p50_direct);
        printf("%-44s p50 %9.1f us\n", "added by the daemon", p50_via - p50_direct);
        bc_close(bc);
}

typedef struct Worker {
        pthread_t thread;
        const char *handle;     /* NULL: status calls */
        double end_us;
        long calls;
} Worker;

static void *worker_run(void *userdata) {
        Worker *w = userdata;
        FrameClient *c = connect_daemon();

        while (now_us() < w->end_us) {
                if (w->handle)
                        exec_true(c, w->handle);
                else
                        status_call(c);
                w->calls++;
        }
        frame_client_free(c);
        return NULL;
}

static void bench_threads(const char *what, const char *handle, int seconds) {
        static Worker w[N_THREADS];
        double start = now_us();
        long total = 0;

        for (int i = 0; i < N_THREADS; i++) {
                w[i] = (Worker) { .handle = handle, .end_us = start + seconds * 1e6 };
                pthread_create(&w[i].thread, NULL, worker_run, &w[i]);
        }
        for (int i = 0; i < N_THREADS; i++) {
                pthread_join(w[i].thread, NULL);
                total += w[i].calls;
        }
        printf("%-44s %9.0f calls/s (%ld in %.1f s)\n", what, total / ((now_us() - start) / 1e6), total,
               (now_us() - start) / 1e6);
}

static void bench_rss(FrameClient *c) {
        static FrameClient *conns[N_CONNECTIONS];
        _cleanup_free_ char *session = attach(c, "bench-rss");
        long before, after;

        before = rss_kib(daemon_proc->pid);
        for (int i = 0; i < N_HANDLES; i++)
                free(create(c, session, false));
        status_call(c);
        after = rss_kib(daemon_proc->pid);
        printf("%-44s %9.2f MiB (%.0f bytes each)\n", "RSS for 10,000 idle handles", (after - before) / 1024.0,
               (after - before) * 1024.0 / N_HANDLES);

        before = after;
        for (int i = 0; i < N_CONNECTIONS; i++)
                conns[i] = connect_daemon();
        status_call(c);
        after = rss_kib(daemon_proc->pid);
        printf("%-44s %9.2f MiB (%.0f bytes each)\n", "RSS for 1,000 idle connections", (after - before) / 1024.0,
               (after - before) * 1024.0 / N_CONNECTIONS);
        for (int i = 0; i < N_CONNECTIONS; i++)
                frame_client_free(conns[i]);
        printf("%-44s %9.2f MiB\n", "daemon RSS at the end", after / 1024.0);
}

/* One metrics call: host-wide (@session NULL) or a session's, with the text format or a reset. */
static size_t metrics_call(FrameClient *c, const char *session, bool prometheus, bool reset) {
        ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__MetricsRequest req = CWSANDBOXD__V1__METRICS_REQUEST__INIT;
        DaemonFrame *reply;
        size_t bytes;

        req.session_id = (char *)(session ? session : "");
        req.prometheus = prometheus;
        req.reset = reset;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_METRICS;
        f.metrics = &req;
        reply = call(c, &f);
        bytes = strlen(reply->metrics->prometheus_text);
        frame_client_frame_free(reply);
        return bytes;
}

/* With the 10,000 handles of bench_rss(): what a scrape costs. */
static void bench_metrics(FrameClient *c, const char *session) {
        static double us[N_METRICS];
        size_t bytes = 0;

        for (int i = 0; i < N_METRICS; i++) {
                double t = now_us();

                bytes = metrics_call(c, NULL, true, false);
                us[i] = now_us() - t;
        }
        latency("metrics --prometheus, 10,000 handles", us, N_METRICS, NULL);
        printf("%-44s %9zu bytes\n", "  its text", bytes);
        for (int i = 0; i < N_METRICS; i++) {
                double t = now_us();

                (void)metrics_call(c, session, false, true);
                us[i] = now_us() - t;
        }
        latency("session metrics with reset", us, N_METRICS, NULL);
}

static void bench_create(FrameClient *c, const char *session) {
        static double us[N_CREATE];

        for (int i = 0; i < N_CREATE; i++) {
                double t0 = now_us();

                free(create(c, session, true));
                us[i] = now_us() - t0;
        }
        latency("create and start (until created)", us, N_CREATE, NULL);
}

/* From (re)start until a status call is answered. */
static double restart_us(void) {
        double t0 = now_us();
        FrameClient *c;
        int r;

        r = daemon_proc_restart(daemon_proc);
        if (r < 0)
                die("restart cwsandboxd", r);
        c = connect_daemon();
        status_call(c);
        frame_client_free(c);
        return now_us() - t0;
}

static void bench_restart(void) {
        double t0 = now_us();
        int status;

        if (daemon_proc_stop(daemon_proc, CALL_TIMEOUT_MS, &status) < 0)
                die("stop cwsandboxd", -ETIMEDOUT);
        printf("%-44s %9.1f ms\n", "SIGTERM to exit, 10,000 handles", (now_us() - t0) / 1000);
        printf("%-44s %9.1f ms\n", "start to serving, 10,000 handles restored", restart_us() / 1000);
        daemon_proc_signal(daemon_proc, SIGKILL);
        (void)daemon_proc_stop(daemon_proc, CALL_TIMEOUT_MS, NULL);
        printf("%-44s %9.1f ms\n", "start to serving after kill -9", restart_us() / 1000);
}

int main(void) {
        static const char *const args[] = {
                "--log-level", "warning", "--max-connections", "4096", "--max-connections-per-uid", "4096", NULL,
        };
        struct rlimit rl;
        FrameClient *c;
        _cleanup_free_ char *session = NULL, *handle = NULL;
        int r;

        if (geteuid() != 0) {
                printf("bench-daemon: needs root (real sandboxes); nothing measured\n");
                return 0;
        }
        /* 1,000 connections need as many descriptors here and in the daemon. */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 8192) {
                rl.rlim_cur = MIN(rl.rlim_max, (rlim_t)8192);
                (void)setrlimit(RLIMIT_NOFILE, &rl);
        }
        setenv("CWSANDBOXD_LOG_LEVEL", "warning", 0);
        r = daemon_proc_start(args, &daemon_proc);
        if (r < 0)
                die("start cwsandboxd", r);
        c = connect_daemon();
        session = attach(c, "bench");
        handle = create(c, session, true);

        bench_status(c);
        bench_exec(c, handle);
        bench_threads("status, 64 client threads", NULL, RUN_SECONDS);
        bench_threads("exec `true`, 64 client threads", handle, RUN_SECONDS);
        bench_create(c, session);
        bench_rss(c);
        bench_metrics(c, session);
        frame_client_free(c);
        c = NULL;
        bench_restart();

        daemon_proc_free(daemon_proc);
        return 0;
}
