/*
 * Admission control against real daemons on their embedded backends, the
 * backend's own counters as the truth:
 * - max_sandboxes 5, max_creates_per_second 10, policy wait: 20 clients
 *   create, exec and stop at once; the backend never has more than 5 alive
 *   (its exact high-water mark), every create succeeds, and the creates are
 *   never faster than the bucket allows (the measured rate is printed);
 * - a caller's timeout ends its wait, and its create leaves the queue;
 * - a session's own limit holds up only that session;
 * - the backend's quota (RESOURCE_EXHAUSTED with RetryInfo) pauses the
 *   daemon's creates and they go through once the backend has room;
 * - policy reject: RESOURCE_EXHAUSTED at once, retryable, with the reason.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "client-util.h"
#include "cwsandbox.h"
#include "daemon-proc.h"
#include "test-util.h"

#define WAIT_MS         120000
#define N_CLIENTS       20
#define MAX_ALIVE       5
#define RATE            10

typedef struct Client {
        DaemonProc *daemon;
        const char *session_id;
        int64_t created_ms;             /* when the backend accepted its create */
        int result;                     /* 0 or the first failing cws code */
        char message[256];
} Client;

static cws_conn *connect_to(DaemonProc *d) {
        return cu_connect(d->socket_path, "test-daemon-admission");
}

static char *attach(cws_conn *c, const char *name, uint32_t max_sandboxes) {
        return cu_attach(c, name, 0, max_sandboxes);
}

/* One client's life: create (started), wait running, exec, stop. */
static void *client_run(void *arg) {
        Client *cl = arg;
        const char *argv[] = { "true", NULL };
        cws_create_options o = { .start = true };
        cws_conn *c = connect_to(cl->daemon);
        cws_exec_result *res = NULL;
        cws_sandbox *sb = NULL;
        cws_error err = { 0 };
        int r;

        r = cws_sandbox_create(c, cl->session_id, &o, &sb, &err);
        cl->created_ms = test_mono_ms();
        if (r == 0)
                r = cws_sandbox_wait(c, sb->handle_id, false, WAIT_MS, NULL, &err);
        if (r == 0)
                r = cws_exec_run(c, sb->handle_id, argv, NULL, &res, &err);
        if (r == 0)
                r = cws_sandbox_stop(c, sb->handle_id, NULL, NULL, &err);
        cl->result = r;
        snprintf(cl->message, sizeof(cl->message), "%.200s", err.message);
        cws_exec_result_free(res);
        cws_sandbox_free(sb);
        cws_conn_close(c);
        return NULL;
}

static void run_clients(Client *cl, int n) {
        pthread_t t[N_CLIENTS];

        for (int i = 0; i < n; i++)
                pthread_create(&t[i], NULL, client_run, &cl[i]);
        for (int i = 0; i < n; i++)
                pthread_join(t[i], NULL);
}

static double metric(cws_conn *c, const char *series) {
        cws_metrics *m = NULL;
        cws_error err;
        double v = NAN;

        if (cws_get_metrics(c, NULL, false, false, &m, &err) == 0)
                (void)cws_metrics_find(m, series, &v);
        cws_metrics_free(m);
        return v;
}

static Cwsandboxlocal__V1__GetCountersResponse *counters(BcClient *b, bool reset) {
        Cwsandboxlocal__V1__GetCountersResponse *g = NULL;

        if (bc_get_counters(b, reset, &g, NULL) != 0)
                bail_out("backend counters");
        return g;
}

static int cmp_ms(const void *a, const void *b) {
        int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

        return x < y ? -1 : x > y;
}

/* ---- cap and rate, policy wait -------------------------------------------------------------- */

static void test_cap_and_rate(DaemonProc *d, BcClient *backend, cws_conn *c) {
        Cwsandboxlocal__V1__GetCountersResponse *g;
        char *sid = attach(c, "cap", 0);
        Client cl[N_CLIENTS];
        int64_t times[N_CLIENTS], start;
        bool paced = true;
        int failed = 0;

        cwsandboxlocal__v1__get_counters_response__free_unpacked(counters(backend, true), NULL);
        for (int i = 0; i < N_CLIENTS; i++)
                cl[i] = (Client) { .daemon = d, .session_id = sid };
        start = test_mono_ms();
        run_clients(cl, N_CLIENTS);
        for (int i = 0; i < N_CLIENTS; i++) {
                if (cl[i].result != 0) {
                        diag("client %d: %s: %s", i, cws_strerror(cl[i].result), cl[i].message);
                        failed++;
                }
                times[i] = cl[i].created_ms - start;
        }
        is_int(failed, 0, "cap %d: all %d clients created, ran and stopped a sandbox", MAX_ALIVE, N_CLIENTS);
        g = counters(backend, false);
        ok(g->sandboxes_alive_peak <= MAX_ALIVE && g->sandboxes_alive_peak > 0,
           "cap %d: the backend never had more than %d alive at once (peak %u)", MAX_ALIVE, MAX_ALIVE,
           g->sandboxes_alive_peak);
        is_int(bc_counter(g, "CreateSandbox")->calls, N_CLIENTS, "one CreateSandbox per client, no more");
        cwsandboxlocal__v1__get_counters_response__free_unpacked(g, NULL);
        ok(metric(c, "cwsandboxd_admission_waits_total") >= N_CLIENTS - MAX_ALIVE,
           "at least %d creates waited their turn (%g)", N_CLIENTS - MAX_ALIVE,
           metric(c, "cwsandboxd_admission_waits_total"));
        is_int((int)metric(c, "cwsandboxd_admission_sandboxes_alive"), 0, "every slot given back");

        /* The k-th create (0-based) cannot come before (k - burst + 1) / rate seconds. */
        qsort(times, N_CLIENTS, sizeof(times[0]), cmp_ms);
        for (int k = RATE; k < N_CLIENTS; k++)
                if (times[k] < (int64_t)((k - RATE + 1) * 1000 / RATE) - 20) {
                        diag("create %d came %" PRId64 " ms after the start", k, times[k]);
                        paced = false;
                }
        ok(paced, "rate %d/s: no create ahead of the token bucket", RATE);
        diag("measured: %d creates in %" PRId64 " ms, %.1f/s overall (the bucket allows %d at once, then %d/s; "
             "the cap of %d alive holds them back too)", N_CLIENTS, times[N_CLIENTS - 1],
             N_CLIENTS * 1000.0 / (double)MAX(times[N_CLIENTS - 1], 1), RATE, RATE, MAX_ALIVE);
        (void)cws_close_session(c, sid, NULL, NULL);
        free(sid);
}

/* ---- a caller's timeout, a session's own limit ------------------------------------------- */

static void test_timeout_and_session_limit(cws_conn *c) {
        cws_create_options started = { .start = true }, unstarted = { .start = false };
        char *full = attach(c, "full", 0), *own = attach(c, "own-limit", 1);
        cws_sandbox *held[MAX_ALIVE] = { 0 }, *late = NULL, *a = NULL, *b = NULL;
        int64_t t0;
        cws_error err;
        int r;

        for (int i = 0; i < MAX_ALIVE; i++)
                if (cws_sandbox_create(c, full, &started, &held[i], &err) != 0)
                        cu_diag_err("hold", -1, &err);
        ok(cws_sandbox_create(c, full, &unstarted, &late, &err) == 0, "a sixth handle (not started)");
        t0 = test_mono_ms();
        r = cws_sandbox_wait(c, late->handle_id, false, 1000, NULL, &err);
        is_int(r, CWS_DEADLINE_EXCEEDED, "the host is full: a wait of 1 s ends with its timeout");
        ok(test_mono_ms() - t0 < 30000, "after about its timeout (%" PRId64 " ms)", test_mono_ms() - t0);
        test_sleep_ms(100);
        is_int((int)metric(c, "cwsandboxd_admission_queued"), 0, "its create left the queue");
        ok(metric(c, "cwsandboxd_admission_cancelled_total") >= 1, "counted as given up");

        /* Free two slots: the session with its own limit of 1 gets one, not two. */
        for (int i = 0; i < 2; i++)
                (void)cws_sandbox_stop(c, held[i]->handle_id, NULL, NULL, &err);
        ok(cws_sandbox_create(c, own, &started, &a, &err) == 0, "session limit 1: the first create goes");
        ok(cws_sandbox_create(c, own, &unstarted, &b, &err) == 0, "a second handle");
        r = cws_sandbox_wait(c, b->handle_id, false, 1000, NULL, &err);
        is_int(r, CWS_DEADLINE_EXCEEDED, "session limit 1: its second waits though the host has room");
        r = cws_sandbox_wait(c, late->handle_id, false, WAIT_MS, NULL, &err);
        is_int(r, 0, "another session's create takes the host's free slot");
        (void)cws_sandbox_stop(c, a->handle_id, NULL, NULL, &err);
        r = cws_sandbox_wait(c, b->handle_id, false, WAIT_MS, NULL, &err);
        is_int(r, 0, "session limit 1: its second goes once its first has stopped");
        for (int i = 0; i < MAX_ALIVE; i++)
                cws_sandbox_free(held[i]);
        cws_sandbox_free(late);
        cws_sandbox_free(a);
        cws_sandbox_free(b);
        (void)cws_close_session(c, full, NULL, NULL);
        (void)cws_close_session(c, own, NULL, NULL);
        free(full);
        free(own);
}

/* ---- sandboxes that end unseen ----------------------------------------------------------- */

/*
 * Five sandboxes whose command exits at once hold the five slots, and
 * nobody waits on them. A sixth create waiting for a slot makes the
 * reaper look (an early pass), find them done, and let it in.
 */
static void test_ended_unseen(cws_conn *c) {
        const char *const script[] = { "-c", "exit 0" };
        cws_sandbox_args quick = { .command = "/bin/sh", .args = script, .n_args = 2, .has_args = true };
        cws_create_options started = { .args = &quick, .start = true }, plain = { .start = true };
        char *sid = attach(c, "unseen", 0);
        cws_sandbox *sb[MAX_ALIVE] = { 0 }, *late = NULL;
        cws_error err;
        int made = 0, r;

        for (int i = 0; i < MAX_ALIVE; i++)
                made += cws_sandbox_create(c, sid, &started, &sb[i], &err) == 0;
        is_int(made, MAX_ALIVE, "five sandboxes that exit at once, nobody waiting on them");
        r = cws_sandbox_create(c, sid, &plain, &late, &err);
        if (r == 0)
                r = cws_sandbox_wait(c, late->handle_id, false, 60000, NULL, &err);
        if (r != 0)
                cu_diag_err("sixth", r, &err);
        is_int(r, 0, "a sixth create gets in: the slots of the ended ones came back without a stop");
        for (int i = 0; i < MAX_ALIVE; i++)
                cws_sandbox_free(sb[i]);
        cws_sandbox_free(late);
        (void)cws_close_session(c, sid, NULL, NULL);
        free(sid);
}

/* ---- the backend's quota ----------------------------------------------------------------------- */

static void test_backend_quota(DaemonProc *d, BcClient *backend, cws_conn *c) {
        Cwsandboxlocal__V1__GetCountersResponse *g;
        char *sid = attach(c, "quota", 0);
        Client cl[MAX_ALIVE];
        double throttles0 = metric(c, "cwsandboxd_backend_throttles_total");
        int failed = 0;

        if (bc_set_quota(backend, 3, 0, 200, NULL) != 0)
                bail_out("set the backend's quota");
        cwsandboxlocal__v1__get_counters_response__free_unpacked(counters(backend, true), NULL);
        for (int i = 0; i < MAX_ALIVE; i++)
                cl[i] = (Client) { .daemon = d, .session_id = sid };
        run_clients(cl, MAX_ALIVE);
        for (int i = 0; i < MAX_ALIVE; i++)
                if (cl[i].result != 0) {
                        diag("client %d: %s: %s", i, cws_strerror(cl[i].result), cl[i].message);
                        failed++;
                }
        g = counters(backend, false);
        is_int(failed, 0, "backend quota 3, daemon cap 5: all 5 clients got their sandbox in the end");
        ok(g->quota_rejections >= 1, "the backend refused some creates (%" PRIu64 ")", g->quota_rejections);
        ok(g->sandboxes_alive_peak <= 3, "the backend never went over its quota (peak %u)", g->sandboxes_alive_peak);
        ok(metric(c, "cwsandboxd_backend_throttles_total") > throttles0,
           "the daemon counted the throttles and paused (%g)", metric(c, "cwsandboxd_backend_throttles_total"));
        cwsandboxlocal__v1__get_counters_response__free_unpacked(g, NULL);
        (void)bc_set_quota(backend, 0, 0, 0, NULL);
        (void)cws_close_session(c, sid, NULL, NULL);
        free(sid);
}

/* ---- policy reject ----------------------------------------------------------------------------- */

static void test_reject(void) {
        const char *args[] = { "--max-sandboxes", "2", "--admission-policy", "reject", NULL };
        cws_create_options started = { .start = true };
        cws_sandbox *sb[3] = { 0 };
        DaemonProc *d = NULL;
        cws_conn *c;
        cws_error err;
        char *sid;
        int r;

        if (daemon_proc_start(args, &d) < 0)
                bail_out("cannot start the reject daemon");
        c = connect_to(d);
        sid = attach(c, "reject", 0);
        for (int i = 0; i < 2; i++)
                ok(cws_sandbox_create(c, sid, &started, &sb[i], &err) == 0, "reject, cap 2: create %d goes", i + 1);
        r = cws_sandbox_create(c, sid, &started, &sb[2], &err);
        is_int(r, CWS_RESOURCE_EXHAUSTED, "reject: the third is RESOURCE_EXHAUSTED at once");
        ok(err.retryable, "reject: retryable");
        is_str(err.reason, "CWSANDBOXD_ADMISSION", "reject: the reason names admission");
        ok(strstr(err.message, "2 of 2 sandboxes alive") != NULL, "reject: the message says why: %s", err.message);
        is_int((int)metric(c, "cwsandboxd_admission_rejections_total{limit=\"sandboxes\"}"), 1, "reject: counted");
        (void)cws_sandbox_stop(c, sb[0]->handle_id, NULL, NULL, &err);
        cws_sandbox_free(sb[2]);
        sb[2] = NULL;
        ok(cws_sandbox_create(c, sid, &started, &sb[2], &err) == 0, "reject: after a stop, a create goes again");
        for (int i = 0; i < 3; i++)
                cws_sandbox_free(sb[i]);
        (void)cws_close_session(c, sid, NULL, NULL);
        free(sid);
        cws_conn_close(c);
        ok(daemon_proc_stop(d, 30000, &r) == 0 && WIFEXITED(r) && WEXITSTATUS(r) == 0, "reject daemon exits 0");
        daemon_proc_free(d);
}

int main(void) {
        char cap[16], rate[16];
        const char *args[] = { "--max-sandboxes", cap, "--max-creates-per-second", rate, NULL };
        BcClient *backend = NULL;
        DaemonProc *d = NULL;
        cws_conn *c;
        int r;

        snprintf(cap, sizeof(cap), "%d", MAX_ALIVE);
        snprintf(rate, sizeof(rate), "%d", RATE);
        r = daemon_proc_start(args, &d);
        if (r == -ENOENT) {
                tap_skip_all("CWSANDBOXD is not set");
                return 0;
        }
        if (r < 0 || daemon_proc_backend(d, &backend) < 0)
                bail_out("cannot start the daemon");
        c = connect_to(d);
        test_cap_and_rate(d, backend, c);
        test_timeout_and_session_limit(c);
        test_ended_unseen(c);
        test_backend_quota(d, backend, c);
        cws_conn_close(c);
        bc_close(backend);
        ok(daemon_proc_stop(d, 30000, &r) == 0 && WIFEXITED(r) && WEXITSTATUS(r) == 0, "the daemon exits 0");
        daemon_proc_free(d);
        test_reject();
        return done();
}
