/*
 * Unit test of admission.c on a real loop: the token bucket's arithmetic;
 * the alive limit under WAIT (FIFO, a full session passed by another) and
 * REJECT (RESOURCE_EXHAUSTED with a clear message and a hint); cancel;
 * creates per second never faster than the rate; a backend throttle that
 * pauses every grant for its hint; close. Prints TAP.
 */
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "admission.h"
#include "macro.h"
#include "tap.h"

#define MAX_TICKETS 64

typedef struct Probe {
        AdmissionTicket ticket;
        int index;
        bool called;
        Status st;
        uint64_t at_ms;
} Probe;

static uv_loop_t loop;
static int grant_order[MAX_TICKETS];
static int n_granted;

static void on_admission(AdmissionTicket *t, const Status *st) {
        Probe *p = container_of(t, Probe, ticket);

        p->called = true;
        p->st = *st;
        p->at_ms = uv_now(&loop);
        if (status_ok(st))
                grant_order[n_granted++] = p->index;
}

static void reset_probes(Probe *p, int n) {
        memset(p, 0, sizeof(*p) * (size_t)n);
        for (int i = 0; i < n; i++)
                p[i].index = i;
        n_granted = 0;
}

static void timer_done(uv_timer_t *t) {
        (void)t;
}

/* Run the loop for @ms of loop time. */
static void run_for(uint64_t ms) {
        uv_timer_t t;

        uv_timer_init(&loop, &t);
        uv_timer_start(&t, timer_done, ms, 0);
        while (uv_is_active((uv_handle_t *)&t))
                uv_run(&loop, UV_RUN_ONCE);
        uv_close((uv_handle_t *)&t, NULL);
        uv_run(&loop, UV_RUN_NOWAIT);
}

static void close_admission(Admission *a) {
        admission_close(a, NULL);
        uv_run(&loop, UV_RUN_NOWAIT);
}

static void test_bucket(void) {
        TokenBucket b;

        token_bucket_init(&b, 2, 1000);
        ok(b.burst == 2, "rate 2: a burst of 2");
        ok(token_bucket_take(&b, 1000) && token_bucket_take(&b, 1000), "two tokens at once");
        ok(!token_bucket_take(&b, 1000), "not a third");
        is_int(token_bucket_wait_ms(&b, 1000), 500, "the next one in 500 ms");
        is_int(token_bucket_wait_ms(&b, 1200), 300, "300 ms later: 300 ms to go");
        ok(token_bucket_take(&b, 1500), "after 500 ms: a token");
        ok(!token_bucket_take(&b, 1500), "and only one");
        ok(token_bucket_take(&b, 100000) && token_bucket_take(&b, 100000) && !token_bucket_take(&b, 100000),
           "a long pause refills only up to the burst");
        token_bucket_init(&b, 0.5, 0);
        ok(b.burst == 1 && token_bucket_take(&b, 0), "rate 0.5: a burst of 1");
        is_int(token_bucket_wait_ms(&b, 0), 2000, "the next one in 2 s");
        token_bucket_init(&b, 0, 0);
        ok(token_bucket_take(&b, 0) && token_bucket_take(&b, 0) && token_bucket_wait_ms(&b, 0) == 0,
           "rate 0: no limit");
}

static void test_wait_fifo(void) {
        Admission a;
        Probe p[5];

        reset_probes(p, 5);
        admission_init(&a, &loop, ADMISSION_WAIT, 2, 0);
        for (int i = 0; i < 5; i++)
                admission_request(&a, &p[i].ticket, NULL, on_admission);
        ok(p[0].called && p[1].called && !p[2].called, "wait: two granted at once, the third waits");
        is_int(a.queued, 3, "wait: three queued");
        is_int(a.host.alive, 2, "wait: two alive");
        admission_release(&a, &p[1].ticket);
        admission_release(&a, &p[1].ticket);
        is_int(a.host.alive, 1, "a release counts once");
        run_for(10);
        ok(p[2].called && !p[3].called, "a release lets the next one in");
        admission_release(&a, &p[0].ticket);
        admission_release(&a, &p[2].ticket);
        run_for(10);
        ok(p[3].called && p[4].called, "two releases, two more");
        ok(grant_order[2] == 2 && grant_order[3] == 3 && grant_order[4] == 4, "in the order they asked");
        is_int(a.stats.waits, 3, "three waited");
        is_int(a.stats.wait.count, 3, "three waits in the histogram");
        for (int i = 0; i < 5; i++)
                admission_release(&a, &p[i].ticket);
        is_int(a.host.alive, 0, "all released");
        close_admission(&a);
}

static void test_reject(void) {
        Admission a;
        Probe p[3];

        reset_probes(p, 3);
        admission_init(&a, &loop, ADMISSION_REJECT, 2, 0);
        for (int i = 0; i < 3; i++)
                admission_request(&a, &p[i].ticket, NULL, on_admission);
        ok(status_ok(&p[0].st) && status_ok(&p[1].st), "reject: the first two go");
        is_int(p[2].st.code, GRPC_STATUS_RESOURCE_EXHAUSTED, "reject: the third is RESOURCE_EXHAUSTED");
        ok(strstr(p[2].st.message, "2 of 2 sandboxes alive") != NULL, "reject: the message says why (%s)",
           p[2].st.message);
        is_str(p[2].st.reason, "CWSANDBOXD_ADMISSION", "reject: a reason a client can match");
        is_int(a.queued, 0, "reject: nothing queued");
        is_int(a.stats.rejected_alive, 1, "reject: counted");
        admission_release(&a, &p[0].ticket);
        admission_release(&a, &p[1].ticket);
        close_admission(&a);

        reset_probes(p, 3);
        admission_init(&a, &loop, ADMISSION_REJECT, 0, 1);
        admission_request(&a, &p[0].ticket, NULL, on_admission);
        admission_request(&a, &p[1].ticket, NULL, on_admission);
        is_int(p[1].st.code, GRPC_STATUS_RESOURCE_EXHAUSTED, "reject, rate 1/s: the second at once is refused");
        ok(p[1].st.retry_delay_ms > 0 && p[1].st.retry_delay_ms <= 1000, "with the wait as a hint (%u ms)",
           p[1].st.retry_delay_ms);
        is_int(a.stats.rejected_rate, 1, "counted as a rate rejection");
        admission_release(&a, &p[0].ticket);
        close_admission(&a);
}

static void test_scopes(void) {
        AdmissionScope sa, sb;
        Admission a;
        Probe p[4];

        reset_probes(p, 4);
        admission_init(&a, &loop, ADMISSION_WAIT, 3, 0);
        admission_scope_init(&a, &sa, 1, 0);
        admission_scope_init(&a, &sb, 0, 0);
        admission_request(&a, &p[0].ticket, &sa, on_admission);
        admission_request(&a, &p[1].ticket, &sa, on_admission);
        admission_request(&a, &p[2].ticket, &sb, on_admission);
        ok(p[0].called && !p[1].called, "session limit 1: the second of the session waits");
        ok(p[2].called, "another session passes it: the host has room");
        is_int(sa.alive, 1, "the session counts its own");
        is_int(a.host.alive, 2, "the host counts both");
        admission_request(&a, &p[3].ticket, &sb, on_admission);
        ok(p[3].called && !p[1].called, "the host's last slot goes to who may take it");
        admission_release(&a, &p[0].ticket);
        run_for(10);
        ok(p[1].called, "its session's first is done: the second goes into the freed slot");
        admission_leave_scope(&a, &p[1].ticket);
        is_int(sa.alive, 0, "leaving the session keeps only the host slot");
        is_int(a.host.alive, 3, "the host still counts it");
        for (int i = 0; i < 4; i++)
                admission_release(&a, &p[i].ticket);
        is_int(a.host.alive, 0, "all released");
        close_admission(&a);
}

static void test_cancel_and_hold(void) {
        Admission a;
        Probe p[3];

        reset_probes(p, 3);
        admission_init(&a, &loop, ADMISSION_WAIT, 1, 0);
        admission_hold(&a, &p[0].ticket, NULL);
        is_int(a.host.alive, 1, "hold: an adopted sandbox counts");
        admission_request(&a, &p[1].ticket, NULL, on_admission);
        admission_request(&a, &p[2].ticket, NULL, on_admission);
        ok(!p[1].called && !p[2].called, "both wait behind it");
        admission_cancel(&a, &p[1].ticket);
        is_int(a.queued, 1, "cancel: out of the queue");
        admission_release(&a, &p[0].ticket);
        run_for(10);
        ok(!p[1].called && p[2].called, "the cancelled one is never called; the next one goes");
        is_int(a.stats.cancelled, 1, "cancel: counted");
        admission_release(&a, &p[2].ticket);
        close_admission(&a);

        reset_probes(p, 3);
        admission_init(&a, &loop, ADMISSION_WAIT, 2, 0);
        admission_set_stopping(&a, 1);
        admission_request(&a, &p[0].ticket, NULL, on_admission);
        admission_request(&a, &p[1].ticket, NULL, on_admission);
        ok(p[0].called && !p[1].called, "a stop being retried counts against the cap");
        admission_set_stopping(&a, 0);
        run_for(10);
        ok(p[1].called, "once it is gone, the next create goes");
        admission_release(&a, &p[0].ticket);
        admission_release(&a, &p[1].ticket);
        close_admission(&a);
}

static void test_rate(void) {
        enum { N = 12 };
        Admission a;
        Probe p[N];
        uint64_t start, last = 0;
        bool all = true;

        reset_probes(p, N);
        admission_init(&a, &loop, ADMISSION_WAIT, 0, 20);
        uv_update_time(&loop);
        start = uv_now(&loop);
        for (int i = 0; i < N; i++)
                admission_request(&a, &p[i].ticket, NULL, on_admission);
        run_for(2000);
        for (int i = 0; i < N; i++) {
                all = all && p[i].called;
                last = MAX(last, p[i].at_ms);
        }
        ok(all, "rate 20/s: all %d granted in the end", N);
        /* A burst of 20 covers them all: nobody waited for a token. */
        ok(last - start < 1000, "rate 20/s, burst 20: 12 go at once");
        close_admission(&a);

        reset_probes(p, N);
        admission_init(&a, &loop, ADMISSION_WAIT, 0, 4);
        uv_update_time(&loop);
        start = uv_now(&loop);
        for (int i = 0; i < N; i++)
                admission_request(&a, &p[i].ticket, NULL, on_admission);
        run_for(2600);
        all = true;
        /* Burst 4, then one per 250 ms: never more than 4 + 4 * t grants by time t. */
        for (int i = 0; i < N; i++) {
                uint64_t t = p[i].at_ms - start;
                int before = 0;

                for (int j = 0; j < N; j++)
                        before += p[j].called && p[j].at_ms <= p[i].at_ms;
                all = all && (!p[i].called || before <= 4 + (int)(t / 250) + 1);
        }
        ok(all, "rate 4/s: never ahead of the bucket");
        ok(p[0].called && p[3].called && p[4].at_ms >= start + 240, "the fifth waits for a token (%llu ms)",
           (unsigned long long)(p[4].at_ms - start));
        is_int(n_granted, N, "and all are granted in 2.6 s (%d)", n_granted);
        ok(grant_order[N - 1] == N - 1, "in order");
        close_admission(&a);
}

static void test_throttle_and_close(void) {
        Admission a;
        Probe p[3];
        uint64_t start;

        reset_probes(p, 3);
        admission_init(&a, &loop, ADMISSION_WAIT, 0, 0);
        uv_update_time(&loop);
        start = uv_now(&loop);
        admission_throttled(&a, 300);
        admission_request(&a, &p[0].ticket, NULL, on_admission);
        ok(!p[0].called, "throttled: a create waits");
        run_for(600);
        ok(p[0].called && p[0].at_ms >= start + 290, "it goes after the hint (%llu ms)",
           (unsigned long long)(p[0].at_ms - start));
        is_int(a.stats.throttles, 1, "the throttle is counted");
        admission_throttled(&a, 0);
        admission_request(&a, &p[1].ticket, NULL, on_admission);
        close_admission(&a);
        is_int(p[1].st.code, GRPC_STATUS_UNAVAILABLE, "close: a waiting create gets UNAVAILABLE");
        admission_request(&a, &p[2].ticket, NULL, on_admission);
        is_int(p[2].st.code, GRPC_STATUS_UNAVAILABLE, "after close: refused");
}

int main(void) {
        uv_loop_init(&loop);
        test_bucket();
        test_wait_fifo();
        test_reject();
        test_scopes();
        test_cancel_and_hold();
        test_rate();
        test_throttle_and_close();
        uv_run(&loop, UV_RUN_DEFAULT);
        ok(uv_loop_close(&loop) == 0, "every handle closed");
        return done();
}
