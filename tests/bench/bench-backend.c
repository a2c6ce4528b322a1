/*
 * bench-backend: figures for cwsandbox-local, no assertions.
 *
 *   create -> RUNNING   latency of CreateSandbox until GetSandbox says RUNNING
 *   exec round trip     StreamExec of `true` (init, half-close, frames,
 *                       status), sequential
 *   execs/s             the same with concurrent streams, one thread and one
 *                       client (connection) per stream
 *
 * With --target it measures a running backend; otherwise it starts one from
 * $CWSANDBOX_LOCAL (as `meson test --benchmark` does), or from the build tree
 * next to this binary.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "test-util.h"

static const char *arg_target;
static const char *arg_token;
static int arg_creates = 20;
static int arg_execs = 300;
static int arg_streams = 32;
static int arg_seconds = 5;

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *)a, y = *(const double *)b;

        return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of @n sorted values. */
static double percentile(const double *v, int n, int p) {
        int rank = (p * n + 99) / 100;

        return n ? v[MAX(rank, 1) - 1] : 0;
}

static void print_latency(const char *what, double *ms, int n) {
        qsort(ms, n, sizeof(double), cmp_double);
        printf("%-38s n=%-4d p50 %8.2f ms   p99 %8.2f ms   min %8.2f ms   max %8.2f ms\n", what, n,
               percentile(ms, n, 50), percentile(ms, n, 99), n ? ms[0] : 0, n ? ms[n - 1] : 0);
}

static double now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static BcSandboxOpts keepalive(void) {
        static const char *const args[] = { "-c", BC_KEEPALIVE_SCRIPT, NULL };
        static const char *const tags[] = { "bench", NULL };

        return (BcSandboxOpts) { .command = BC_KEEPALIVE_COMMAND, .args = args, .tags = tags };
}

/* Poll GetSandbox tightly: the 50 ms step of bc_wait_state() would
 * dominate the figure. */
static int wait_running(BcClient *c, const char *id, double timeout_ms) {
        double end = now_ms() + timeout_ms;

        while (now_ms() < end) {
                _cleanup_bc_ BcSandbox *sb = NULL;

                if (bc_get_sandbox(c, id, &sb, NULL) != 0)
                        return -EIO;
                if (sb->status && sb->status->state == BC_STATE(RUNNING))
                        return 0;
                if (sb->status && sb->status->state != BC_STATE(PENDING) && sb->status->state != BC_STATE(CREATING))
                        return -ECANCELED;
                test_sleep_ms(1);
        }
        return -ETIMEDOUT;
}

static void bench_create(BcClient *c) {
        double *ms = calloc(arg_creates, sizeof(double));
        BcSandboxOpts o = keepalive();
        int n = 0;

        for (int i = 0; i < arg_creates && ms; i++) {
                _cleanup_bc_ BcSandbox *sb = NULL;
                BcStatus st = {};
                double t0 = now_ms();
                int r;

                r = bc_create_sandbox(c, &o, &sb, &st);
                if (r != 0) {
                        fprintf(stderr, "CreateSandbox: %s %s\n", bc_code_name(r), st.details);
                        break;
                }
                r = wait_running(c, sb->sandbox_id, 30000);
                if (r == 0)
                        ms[n++] = now_ms() - t0;
                else
                        fprintf(stderr, "sandbox %s did not reach RUNNING: %s\n", sb->sandbox_id, strerror(-r));
                (void)bc_stop_sandbox(c, sb->sandbox_id, 30000);
        }
        print_latency("create -> RUNNING", ms, n);
        free(ms);
}

static int exec_true(BcClient *c, const char *id) {
        BcExec *e = NULL;
        int r;

        r = bc_exec_run(c, id, (const char *const[]) { "true", NULL }, 30000, &e);
        if (r == 0 && (!e->exited || e->exit_code != 0 || e->status.code != GRPC_STATUS_OK))
                r = -EIO;
        bc_exec_free(e);
        return r;
}

static void bench_exec_sequential(BcClient *c, const char *id) {
        double *ms = calloc(arg_execs, sizeof(double));
        int n = 0, errors = 0;

        for (int i = 0; i < 5; i++)
                (void)exec_true(c, id);
        for (int i = 0; i < arg_execs && ms; i++) {
                double t0 = now_ms();

                if (exec_true(c, id) == 0)
                        ms[n++] = now_ms() - t0;
                else
                        errors++;
        }
        print_latency("exec `true` round trip (StreamExec)", ms, n);
        if (errors)
                printf("%-38s %d failed\n", "", errors);
        free(ms);
}

typedef struct Worker {
        pthread_t thread;
        const char *target, *id;
        unsigned done, errors;
} Worker;

/* Workers connect first, then wait for the start signal, so connection
 * setup stays out of the measured window. */
static atomic_int workers_ready;
static atomic_bool workers_go;
static double workers_end;

static void *worker_run(void *userdata) {
        Worker *w = userdata;
        BcClient *c = NULL;

        if (bc_connect(w->target, arg_token, &c) < 0) {
                w->errors++;
                atomic_fetch_add(&workers_ready, 1);
                return NULL;
        }
        (void)bc_get_sandbox(c, w->id, NULL, NULL);
        atomic_fetch_add(&workers_ready, 1);
        while (!atomic_load(&workers_go))
                test_sleep_ms(1);
        while (now_ms() < workers_end) {
                if (exec_true(c, w->id) == 0)
                        w->done++;
                else
                        w->errors++;
        }
        bc_close(c);
        return NULL;
}

static void bench_exec_concurrent(const char *target, const char *id) {
        Worker *w = calloc(arg_streams, sizeof(Worker));
        unsigned done = 0, errors = 0;
        int started = 0;
        double t0, elapsed;

        if (!w)
                return;
        atomic_store(&workers_ready, 0);
        atomic_store(&workers_go, false);
        for (int i = 0; i < arg_streams; i++) {
                w[i] = (Worker) { .target = target, .id = id };
                if (pthread_create(&w[i].thread, NULL, worker_run, &w[i]) == 0)
                        started++;
                else
                        w[i].thread = 0;
        }
        while (atomic_load(&workers_ready) < started)
                test_sleep_ms(1);
        t0 = now_ms();
        workers_end = t0 + arg_seconds * 1000.0;
        atomic_store(&workers_go, true);
        for (int i = 0; i < arg_streams; i++) {
                if (w[i].thread)
                        pthread_join(w[i].thread, NULL);
                done += w[i].done;
                errors += w[i].errors;
        }
        elapsed = (now_ms() - t0) / 1000;
        printf("%-38s %d streams, %u execs in %.1f s: %.0f execs/s\n", "exec `true` concurrent", started,
               done, elapsed, done / elapsed);
        if (errors)
                printf("%-38s %u failed\n", "", errors);
        free(w);
}

static void print_machine(void) {
        struct utsname u;
        char line[256], model[256] = "?";
        FILE *f = fopen("/proc/cpuinfo", "re");

        while (f && fgets(line, sizeof(line), f))
                if (strncmp(line, "model name", 10) == 0) {
                        char *colon = strchr(line, ':');

                        snprintf(model, sizeof(model), "%s", colon ? colon + 2 : line);
                        test_chomp(model);
                        break;
                }
        if (f)
                fclose(f);
        uname(&u);
        printf("machine: %ld CPU(s), %s, Linux %s %s\n", sysconf(_SC_NPROCESSORS_ONLN), model, u.release, u.machine);
}

/* Defaults next to this binary in the build tree: tests/bench/../../localbackend/. */
static void default_paths(void) {
        char self[PATH_MAX], *dir, path[PATH_MAX + 64];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

        if (n <= 0)
                return;
        self[n] = 0;
        dir = dirname(dirname(dirname(self)));
        if (!getenv("CWSANDBOX_LOCAL")) {
                snprintf(path, sizeof(path), "%s/localbackend/cwsandbox-local", dir);
                setenv("CWSANDBOX_LOCAL", path, 0);
        }
        if (!getenv("CWSANDBOX_LOCAL_RUN")) {
                snprintf(path, sizeof(path), "%s/localbackend/cwsandbox-local-run", dir);
                setenv("CWSANDBOX_LOCAL_RUN", path, 0);
        }
}

static int parse_argv(int argc, char **argv) {
        static const struct option options[] = {
                { "target", required_argument, NULL, 't' },
                { "token", required_argument, NULL, 'k' },
                { "creates", required_argument, NULL, 'c' },
                { "execs", required_argument, NULL, 'e' },
                { "streams", required_argument, NULL, 's' },
                { "seconds", required_argument, NULL, 'S' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 't': arg_target = optarg; break;
                case 'k': arg_token = optarg; break;
                case 'c': arg_creates = MAX(atoi(optarg), 1); break;
                case 'e': arg_execs = MAX(atoi(optarg), 1); break;
                case 's': arg_streams = MAX(atoi(optarg), 1); break;
                case 'S': arg_seconds = MAX(atoi(optarg), 1); break;
                case 'h':
                        printf("Usage: %s [--target ADDRESS [--token TOKEN]] [--creates N] [--execs N]\n"
                               "       [--streams N] [--seconds N]\n"
                               "Without --target, starts cwsandbox-local ($CWSANDBOX_LOCAL) itself (needs root).\n",
                               argv[0]);
                        return 0;
                default:
                        return -1;
                }
        return 1;
}

int main(int argc, char **argv) {
        BackendProc *proc = NULL;
        BcClient *c = NULL;
        BcSandboxOpts o = keepalive();
        _cleanup_bc_ BcSandbox *sb = NULL;
        const char *target = arg_target;
        BcStatus st = {};
        int r;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? 2 : 0;
        setvbuf(stdout, NULL, _IOLBF, 0);
        target = arg_target;
        if (!target) {
                if (geteuid() != 0) {
                        printf("bench-backend: starting cwsandbox-local needs root (or give --target)\n");
                        return 0;
                }
                default_paths();
                /* Info logs per call would cost time inside the measurement. */
                setenv("CWSANDBOX_LOCAL_LOG_LEVEL", "warning", 0);
                r = backend_proc_start(&(BackendProcOpts) { .token = arg_token }, &proc);
                if (r < 0) {
                        fprintf(stderr, "cannot start cwsandbox-local (%s): %s\n", getenv("CWSANDBOX_LOCAL"),
                                strerror(-r));
                        return 1;
                }
                target = proc->target;
        }
        print_machine();
        printf("backend: %s\n", target);
        if (bc_connect(target, arg_token, &c) < 0)
                return 1;

        bench_create(c);

        r = bc_create_sandbox(c, &o, &sb, &st);
        if (r != 0 || wait_running(c, sb->sandbox_id, 30000) != 0) {
                fprintf(stderr, "cannot start a sandbox to exec in: %s %s\n", bc_code_name(r), st.details);
        } else {
                bench_exec_sequential(c, sb->sandbox_id);
                bench_exec_concurrent(target, sb->sandbox_id);
                (void)bc_stop_sandbox(c, sb->sandbox_id, 30000);
        }

        bc_close(c);
        backend_proc_free(proc);
        return 0;
}
