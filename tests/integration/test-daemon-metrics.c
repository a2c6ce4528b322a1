/*
 * Metrics against a real cwsandboxd and its embedded backend, through
 * libcwsandbox:
 * - the SDK's cwsandbox/... set after a scripted workload from two processes
 *   in one session, number by number against what the SDK would report;
 * - a read with reset, and the close's final flush of what was not read;
 * - reads with reset while four threads exec: the totals equal the execs;
 * - the host-wide Prometheus text and a session's, through a strict parser,
 *   and the same values in the map;
 * - the node_exporter text file: written, replaced atomically, a write that
 *   fails (its directory gone) counted and retried.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client-util.h"
#include "cwsandbox.h"
#include "daemon-proc.h"
#include "promparse.h"
#include "test-util.h"

#define WAIT_MS         60000
#define N_THREADS       4
#define N_PER_THREAD    25

static DaemonProc *daemon_proc;
static char textfile_dir[] = "/tmp/cwsandboxd-metrics-XXXXXX";
static char textfile[128];

static cws_conn *connect_or_die(const char *name) {
        return cu_connect(daemon_proc->socket_path, name);
}

static char *attach_or_die(cws_conn *c, const char *name) {
        return cu_attach(c, name, 60, 0);
}

/* Create and start a sandbox; its handle id, and the seconds the call and the wait for RUNNING took. */
static char *start_sandbox(cws_conn *c, const char *session_id, double *ret_seconds) {
        cws_create_options o = { .start = true };
        cws_sandbox *sb = NULL;
        int64_t t0 = test_mono_ms();
        cws_error err;
        char *id;
        int r;

        r = cws_sandbox_create(c, session_id, &o, &sb, &err);
        if (r == 0)
                r = cws_sandbox_wait(c, sb->handle_id, false, WAIT_MS, NULL, &err);
        if (r != 0) {
                cu_diag_err("start sandbox", r, &err);
                cws_sandbox_free(sb);
                return NULL;
        }
        *ret_seconds = (double)(test_mono_ms() - t0) / 1000.0;
        id = strdup(sb->handle_id);
        cws_sandbox_free(sb);
        return id;
}

/* A buffered exec: its exit code, or -1 with the error code in *@ret_code. */
static int run(cws_conn *c, const char *id, const char *script, double timeout_s, int *ret_code) {
        const char *argv[] = { "/bin/sh", "-c", script, NULL };
        cws_exec_options o = { .timeout_seconds = timeout_s };
        cws_exec_result *res = NULL;
        cws_error err;
        int r, code;

        r = cws_exec_run(c, id, argv, &o, &res, &err);
        if (ret_code)
                *ret_code = r;
        if (r != 0)
                return -1;
        code = res->exit_code;
        cws_exec_result_free(res);
        return code;
}

static cws_metrics *get_metrics(cws_conn *c, const char *session_id, bool reset, bool prometheus) {
        cws_metrics *m = NULL;
        cws_error err;
        int r;

        r = cws_get_metrics(c, session_id, reset, prometheus, &m, &err);
        if (r != 0)
                cu_diag_err("metrics", r, &err);
        return m;
}

static double value(const cws_metrics *m, const char *name) {
        double v = NAN;

        (void)cws_metrics_find(m, name, &v);
        return v;
}

static void is_metric(const cws_metrics *m, const char *name, double want, const char *what) {
        double got = value(m, name);

        ok(fabs(got - want) < 1e-9, "%s: %s = %g (got %g)", what, name, want, got);
}

/* ---- the SDK's set from two processes ----------------------------------------------------- */

/*
 * Process A: sb1 started; exec ok, exit 3, and one that times out. It
 * writes sb1's handle id and its start time to @fd.
 */
static int process_a(int fd) {
        cws_conn *c = connect_or_die("metrics-a");
        char *sid = attach_or_die(c, "parity");
        double secs = 0;
        char *sb1 = start_sandbox(c, sid, &secs);
        int code, bad = 0;

        if (!sb1)
                return 1;
        bad += run(c, sb1, "true", 0, NULL) != 0;
        bad += run(c, sb1, "exit 3", 0, NULL) != 3;
        bad += run(c, sb1, "sleep 30", 1, &code) != -1 || code != CWS_DEADLINE_EXCEEDED;
        dprintf(fd, "%s %.6f\n", sb1, secs);
        cws_conn_close(c);
        return bad;
}

/* Process B: sb2 started with two ok execs, sb3 never started, and sb1 exits 1. */
static int process_b(int fd, const char *sb1) {
        cws_conn *c = connect_or_die("metrics-b");
        char *sid = attach_or_die(c, "parity");
        cws_create_options unstarted = { .start = false };
        cws_sandbox *sb3 = NULL;
        double secs = 0;
        char *sb2 = start_sandbox(c, sid, &secs);
        cws_error err;
        int bad = 0;

        if (!sb2)
                return 1;
        bad += run(c, sb2, "true", 0, NULL) != 0;
        bad += run(c, sb2, "echo hi", 0, NULL) != 0;
        bad += cws_sandbox_create(c, sid, &unstarted, &sb3, &err) != 0;
        bad += run(c, sb1, "false", 0, NULL) != 1;
        dprintf(fd, "%s %.6f\n", sb2, secs);
        cws_sandbox_free(sb3);
        cws_conn_close(c);
        return bad;
}

/* Fork @fn, wait for it, and read its one line. */
static bool in_process(int (*fn)(int fd, const char *arg), const char *arg, char *line, size_t size) {
        int fds[2], status;
        pid_t pid;
        FILE *f;
        bool got;

        if (pipe(fds) < 0 || (pid = fork()) < 0)
                bail_out("pipe/fork: %m");
        if (pid == 0) {
                close(fds[0]);
                _exit(fn(fds[1], arg));
        }
        close(fds[1]);
        f = fdopen(fds[0], "r");
        got = f && fgets(line, (int)size, f) != NULL;
        if (f)
                fclose(f);
        waitpid(pid, &status, 0);
        return got && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int run_a(int fd, const char *arg) {
        (void)arg;
        return process_a(fd);
}

static int run_b(int fd, const char *arg) {
        return process_b(fd, arg);
}

static void test_parity(cws_conn *c) {
        char *sid = attach_or_die(c, "parity");
        char line_a[256], line_b[256], sb1[128], sb2[128];
        double secs_a = 0, secs_b = 0, lo, hi;
        cws_close_result *res = NULL;
        cws_metrics *m, *again;
        cws_error err;

        ok(in_process(run_a, NULL, line_a, sizeof(line_a)), "process A: its workload ran as scripted");
        if (sscanf(line_a, "%127s %lf", sb1, &secs_a) != 2)
                bail_out("process A said '%s'", line_a);
        ok(in_process(run_b, sb1, line_b, sizeof(line_b)), "process B: its workload ran as scripted");
        if (sscanf(line_b, "%127s %lf", sb2, &secs_b) != 2)
                bail_out("process B said '%s'", line_b);

        /* The SDK: 3 requested (one never started), 6 execs, 2 startups, sb1 4 execs and sb2 2. */
        m = get_metrics(c, sid, false, false);
        is_int(m ? m->n_metrics : 0, 14, "parity: every value present");
        is_metric(m, "cwsandbox/sandboxes_created", 3, "parity");
        is_metric(m, "cwsandbox/executions", 6, "parity");
        is_metric(m, "cwsandbox/exec_completed_ok", 3, "parity");
        is_metric(m, "cwsandbox/exec_completed_nonzero", 2, "parity");
        is_metric(m, "cwsandbox/exec_failures", 1, "parity");
        is_metric(m, "cwsandbox/exec_completion_rate", 0.5, "parity");
        is_metric(m, "cwsandbox/exec_failure_rate", 1.0 / 6.0, "parity");
        is_metric(m, "cwsandbox/startup_count", 2, "parity");
        is_metric(m, "cwsandbox/avg_execs_per_sandbox", 3, "parity");
        is_metric(m, "cwsandbox/min_execs_per_sandbox", 2, "parity");
        is_metric(m, "cwsandbox/max_execs_per_sandbox", 4, "parity");
        lo = value(m, "cwsandbox/min_startup_seconds");
        hi = value(m, "cwsandbox/max_startup_seconds");
        ok(lo > 0 && lo <= value(m, "cwsandbox/avg_startup_seconds") &&
           value(m, "cwsandbox/avg_startup_seconds") <= hi, "parity: 0 < min <= avg <= max startup (%g, %g)", lo, hi);
        /* Create sent to RUNNING seen lies inside what each client waited. */
        ok(hi <= MAX(secs_a, secs_b) + 0.001, "parity: no startup longer than its client's wait (%g <= %g)", hi,
           MAX(secs_a, secs_b));
        ok(fabs(value(m, "cwsandbox/avg_startup_seconds") * 2 - lo - hi) < 1e-6, "parity: avg of two = (min+max)/2");

        again = get_metrics(c, sid, true, false);
        ok(again && again->n_metrics == m->n_metrics, "reset: the read before the reset returns the same set");
        is_metric(again, "cwsandbox/executions", 6, "reset: read");
        cws_metrics_free(again);
        cws_metrics_free(m);
        m = get_metrics(c, sid, false, false);
        is_int(m ? m->n_metrics : 0, 5, "after the reset: only the five counters");
        is_metric(m, "cwsandbox/executions", 0, "after the reset");
        is_metric(m, "cwsandbox/sandboxes_created", 0, "after the reset");
        ok(!cws_metrics_find(m, "cwsandbox/exec_completion_rate", NULL), "after the reset: no rate (no executions)");
        cws_metrics_free(m);

        /* What was not read goes out with the close. */
        ok(run(c, sb2, "true", 0, NULL) == 0, "one more exec");
        ok(cws_close_session(c, sid, &res, &err) == 0 && res && res->metrics, "close: a result with metrics");
        if (res && res->metrics) {
                is_metric(res->metrics, "cwsandbox/executions", 1, "close flush");
                is_metric(res->metrics, "cwsandbox/exec_completed_ok", 1, "close flush");
                is_metric(res->metrics, "cwsandbox/sandboxes_created", 0, "close flush");
                is_metric(res->metrics, "cwsandbox/max_execs_per_sandbox", 1, "close flush");
        }
        cws_close_result_free(res);
        free(sid);
}

/* ---- reset under concurrent execs --------------------------------------------------------- */

typedef struct Worker {
        cws_conn *conn;
        const char *sandbox;
        int failed;
} Worker;

static atomic_int workers_left, execs_done;

static void *worker(void *arg) {
        Worker *w = arg;

        for (int i = 0; i < N_PER_THREAD; i++) {
                w->failed += run(w->conn, w->sandbox, "true", 0, NULL) != 0;
                atomic_fetch_add(&execs_done, 1);
        }
        atomic_fetch_sub(&workers_left, 1);
        return NULL;
}

static void test_reset_concurrent(cws_conn *c) {
        char *sid = attach_or_die(c, "resets");
        pthread_t threads[N_THREADS];
        Worker w[N_THREADS];
        double secs, executions = 0, ok_count = 0;
        char *sb = start_sandbox(c, sid, &secs);
        int failed = 0, reads = 0, counted_reads = 0;

        if (!sb)
                bail_out("no sandbox for the reset test");
        atomic_store(&workers_left, N_THREADS);
        atomic_store(&execs_done, 0);
        for (int i = 0; i < N_THREADS; i++) {
                w[i] = (Worker) { .conn = connect_or_die("metrics-worker"), .sandbox = sb };
                pthread_create(&threads[i], NULL, worker, &w[i]);
        }
        /*
         * Once a few execs are done (so most are still to come), read with
         * reset as fast as the daemon answers, until every worker is done,
         * then once more.
         */
        while (atomic_load(&execs_done) < 5 && atomic_load(&workers_left) > 0)
                test_sleep_ms(1);
        for (bool last = false; !last;) {
                cws_metrics *m;

                last = atomic_load(&workers_left) == 0;
                m = get_metrics(c, sid, true, false);
                if (!m)
                        bail_out("metrics with reset failed");
                executions += value(m, "cwsandbox/executions");
                ok_count += value(m, "cwsandbox/exec_completed_ok");
                counted_reads += value(m, "cwsandbox/executions") > 0;
                reads++;
                cws_metrics_free(m);
                test_sleep_ms(2);
        }
        for (int i = 0; i < N_THREADS; i++) {
                pthread_join(threads[i], NULL);
                failed += w[i].failed;
                cws_conn_close(w[i].conn);
        }
        is_int(failed, 0, "reset race: every exec exited 0");
        is_int((int)executions, N_THREADS * N_PER_THREAD, "reset race: executions over %d reads add up to the %d execs",
               reads, N_THREADS * N_PER_THREAD);
        is_int((int)ok_count, N_THREADS * N_PER_THREAD, "reset race: so do the ok ones");
        ok(counted_reads >= 2, "reset race: the execs were split over %d of the %d reads", counted_reads, reads);
        (void)cws_close_session(c, sid, NULL, NULL);
        free(sb);
        free(sid);
}

/* ---- Prometheus ----------------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The parser's canonical label order (sorted by name); the daemon's values here hold no commas. */
static char *sorted_labels(const char *labels) {
        _cleanup_free_ char *copy = strdup(labels);
        char *parts[16], *save = NULL, *out = NULL;
        size_t n = 0, size = 0;
        FILE *f;

        for (char *t = strtok_r(copy, ",", &save); t && n < ELEMENTSOF(parts); t = strtok_r(NULL, ",", &save))
                parts[n++] = t;
        qsort(parts, n, sizeof(parts[0]), cmp_str);
        f = open_memstream(&out, &size);
        for (size_t i = 0; f && i < n; i++)
                fprintf(f, "%s%s", i ? "," : "", parts[i]);
        if (f)
                fclose(f);
        return out;
}

/* Series @name{@labels} is in @doc with a value of at least @min. */
static void at_least(const PromDoc *doc, const char *name, const char *labels, double min, const char *what) {
        double v = -1;
        bool found = prom_doc_get(doc, name, labels, &v);

        ok(found && v >= min, "%s: %s{%s} = %g (at least %g)", what, name, labels ? labels : "", found ? v : -1.0,
           min);
}

static bool parse_strict(const char *text, PromDoc *doc, bool daemon, const char *what) {
        char err[256] = "";
        bool good = prom_parse(text, doc, err, sizeof(err)) == 0;

        if (good && daemon)
                good = prom_doc_check_daemon(doc, "cwsandboxd_", err, sizeof(err)) == 0;
        ok(good, "%s: valid text format%s%s", what, err[0] ? ": " : "", err);
        return good;
}

static void test_prometheus(cws_conn *c) {
        cws_metrics *m = get_metrics(c, NULL, false, true);
        PromDoc doc = { 0 };
        double v = -1;
        bool same = true;

        if (!m || !parse_strict(m->prometheus_text, &doc, true, "host-wide")) {
                cws_metrics_free(m);
                return;
        }
        at_least(&doc, "cwsandboxd_execs_total", "outcome=\"ok\"", 4 + N_THREADS * N_PER_THREAD, "every ok exec");
        at_least(&doc, "cwsandboxd_execs_total", "outcome=\"failure\"", 1, "the timed-out exec is a failure");
        at_least(&doc, "cwsandboxd_sandboxes_requested_total", NULL, 4, "sandboxes requested");
        at_least(&doc, "cwsandboxd_backend_calls_total", "code=\"OK\",method=\"CreateSandbox\"", 3,
                 "backend calls by method and code");
        at_least(&doc, "cwsandboxd_backend_call_duration_seconds_count", "method=\"CreateSandbox\"", 3,
                 "a backend latency histogram per method");
        at_least(&doc, "cwsandboxd_sandbox_startup_seconds_bucket", "le=\"+Inf\"", 3, "the startup histogram");
        at_least(&doc, "cwsandboxd_clients_connected", NULL, 1, "clients connected");
        at_least(&doc, "cwsandboxd_exec_bytes_total", "stream=\"stdout\"", 3, "exec bytes by stream");
        /* The map and the text are collected in one turn of the daemon's loop: the same series and values. */
        for (size_t i = 0; i < m->n_metrics; i++) {
                const char *series = m->metrics[i].name, *brace = strchr(series, '{');
                _cleanup_free_ char *name = strndup(series, brace ? (size_t)(brace - series) : strlen(series));
                _cleanup_free_ char *raw = brace ? strndup(brace + 1, strlen(brace) - 2) : NULL;
                _cleanup_free_ char *labels = raw ? sorted_labels(raw) : NULL;
                double t;

                if (!prom_doc_get(&doc, name, labels, &t) || t != m->metrics[i].value) {
                        diag("%s: map %g, text %s", series, m->metrics[i].value,
                             prom_doc_get(&doc, name, labels, &t) ? "differs" : "missing");
                        same = false;
                }
        }
        ok(same, "the map's %zu series are in the text with the same values", m->n_metrics);
        prom_doc_free(&doc);
        cws_metrics_free(m);

        {
                char *sid = attach_or_die(c, "prom-session");
                double secs;
                char *sb = start_sandbox(c, sid, &secs);

                ok(sb && run(c, sb, "true", 0, NULL) == 0, "a session with one exec");
                m = get_metrics(c, sid, false, true);
                if (m && parse_strict(m->prometheus_text, &doc, false, "session")) {
                        char labels[256];

                        snprintf(labels, sizeof(labels), "session_id=\"%s\",session_name=\"prom-session\"", sid);
                        bool found = prom_doc_get(&doc, "cwsandbox_executions", labels, &v);

                        ok(found && v == 1, "session: cwsandbox_executions with its id and name (%g)",
                           found ? v : -1.0);
                        prom_doc_free(&doc);
                }
                cws_metrics_free(m);
                (void)cws_close_session(c, sid, NULL, NULL);
                free(sb);
                free(sid);
        }
}

/* ---- the text file ------------------------------------------------------------------------- */

static char *read_all(const char *path) {
        FILE *f = fopen(path, "r");
        char *text = NULL;
        size_t cap = 0;
        ssize_t n;

        if (!f)
                return NULL;
        n = getdelim(&text, &cap, 0, f);
        fclose(f);
        if (n < 0) {
                free(text);
                return NULL;
        }
        return text;
}

static bool wait_file(const char *path, bool present) {
        for (int64_t end = test_mono_ms() + 10000; test_mono_ms() < end; test_sleep_ms(50))
                if ((access(path, F_OK) == 0) == present)
                        return true;
        return false;
}

static void test_textfile(cws_conn *c) {
        char tmp[160];
        _cleanup_free_ char *text = NULL;
        PromDoc doc = { 0 };
        cws_metrics *m;
        double v;

        ok(wait_file(textfile, true), "text file: written");
        text = read_all(textfile);
        if (text && parse_strict(text, &doc, true, "text file")) {
                bool found = prom_doc_get(&doc, "cwsandboxd_start_time_seconds", NULL, &v);

                ok(found && v > 1.7e9, "text file: start time %g", found ? v : 0.0);
                prom_doc_free(&doc);
        }
        snprintf(tmp, sizeof(tmp), "%s.tmp", textfile);
        ok(access(tmp, F_OK) != 0, "text file: no temporary file left");

        /* Its directory goes: the writes fail, are counted, and resume when it is back. */
        test_rm_rf(textfile_dir);
        for (int64_t end = test_mono_ms() + 10000; test_mono_ms() < end; test_sleep_ms(100)) {
                m = get_metrics(c, NULL, false, false);
                v = value(m, "cwsandboxd_textfile_write_errors_total");
                cws_metrics_free(m);
                if (v >= 1)
                        break;
        }
        ok(v >= 1, "text file: a failed write is counted (%g)", v);
        ok(mkdir(textfile_dir, 0755) == 0, "the directory is back");
        ok(wait_file(textfile, true), "text file: written again");
}

/* ---- across restarts ---------------------------------------------------------------------- */

static cws_conn *restart(cws_conn *c, bool kill9) {
        cws_conn_close(c);
        if (kill9) {
                daemon_proc_signal(daemon_proc, SIGKILL);
                (void)daemon_proc_stop(daemon_proc, 30000, NULL);
        } else if (daemon_proc_stop(daemon_proc, 30000, NULL) < 0)
                bail_out("the daemon did not stop");
        if (daemon_proc_restart(daemon_proc) < 0)
                bail_out("the daemon did not start again");
        return connect_or_die("test-daemon-metrics");
}

/* A session's metrics come back with it; a reset is recorded, so a crash does not bring back what was read. */
static cws_conn *test_restart(cws_conn *c) {
        char *sid = attach_or_die(c, "persist");
        double secs;
        char *sb = start_sandbox(c, sid, &secs);
        cws_metrics *m;

        ok(sb && run(c, sb, "true", 0, NULL) == 0 && run(c, sb, "exit 2", 0, NULL) == 2, "two execs");
        c = restart(c, false);
        m = get_metrics(c, sid, true, false);
        ok(m != NULL, "after SIGTERM and a restart: the session is there");
        is_metric(m, "cwsandbox/executions", 2, "restored");
        is_metric(m, "cwsandbox/exec_completed_nonzero", 1, "restored");
        is_metric(m, "cwsandbox/sandboxes_created", 1, "restored");
        is_metric(m, "cwsandbox/startup_count", 1, "restored");
        is_metric(m, "cwsandbox/max_execs_per_sandbox", 2, "restored");
        cws_metrics_free(m);
        c = restart(c, true);
        m = get_metrics(c, sid, false, false);
        is_metric(m, "cwsandbox/executions", 0, "read with reset, then kill -9: nothing read comes back");
        cws_metrics_free(m);
        (void)cws_close_session(c, sid, NULL, NULL);
        free(sb);
        free(sid);
        return c;
}

int main(void) {
        const char *args[] = { "--metrics-textfile", textfile, "--metrics-textfile-interval-seconds", "1", NULL };
        cws_conn *c;
        int r;

        if (!mkdtemp(textfile_dir))
                bail_out("mkdtemp: %m");
        snprintf(textfile, sizeof(textfile), "%s/cwsandboxd.prom", textfile_dir);
        r = daemon_proc_start(args, &daemon_proc);
        if (r == -ENOENT) {
                tap_skip_all("CWSANDBOXD is not set");
                return 0;
        }
        if (r < 0)
                bail_out("cannot start the daemon: %s", strerror(-r));
        c = connect_or_die("test-daemon-metrics");
        test_parity(c);
        test_reset_concurrent(c);
        test_prometheus(c);
        test_textfile(c);
        c = test_restart(c);
        cws_conn_close(c);
        ok(daemon_proc_stop(daemon_proc, 30000, &r) == 0 && WIFEXITED(r) && WEXITSTATUS(r) == 0,
           "the daemon exits 0 on SIGTERM");
        daemon_proc_free(daemon_proc);
        test_rm_rf(textfile_dir);
        return done();
}
