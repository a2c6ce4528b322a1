/*
 * Many waiters, one tracker: 200 sandboxes waited on at once must cost the
 * backend O(1) status calls per tracker tick, not one per sandbox. The calls
 * are counted by the embedded backend itself (Control.GetCounters), the
 * ticks by the daemon (metric cwsandboxd_tracker_ticks_total).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "daemon-calls.h"
#include "daemon-proc.h"
#include "test-util.h"

#define N 200
#define STATE(x) CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_##x

typedef Cwsandboxd__V1__ClientFrame ClientFrame;
typedef Cwsandboxd__V1__DaemonFrame DaemonFrame;

static DaemonProc *daemon_proc;
static char *handles[N];

/*
 * Send @n frames built by @fill (which may point into its own static storage:
 * each frame is sent before the next is built), then read the @n final
 * replies; @take sees each.
 */
static unsigned pipeline(FrameClient *c, unsigned n, void (*fill)(ClientFrame *f, unsigned i),
                         bool (*take)(const DaemonFrame *r, unsigned i)) {
        uint64_t first = 0;
        unsigned good = 0, got = 0;

        for (unsigned i = 0; i < n; i++) {
                ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;

                fill(&f, i);
                f.call_id = dc_next_id();
                if (i == 0)
                        first = f.call_id;
                if (frame_client_send(c, &f) != 0)
                        bail_out("send failed");
        }
        while (got < n) {
                DaemonFrame *r = NULL;

                if (frame_client_recv(c, 120000, &r) != 0)
                        bail_out("receive failed after %u replies", got);
                if (r->final && r->call_id >= first && r->call_id < first + n) {
                        got++;
                        if (!r->error && take(r, (unsigned)(r->call_id - first)))
                                good++;
                        else if (r->error)
                                diag("call %u: %s", (unsigned)(r->call_id - first), r->error->message);
                }
                frame_client_frame_free(r);
        }
        return good;
}

static char session_id[64];

static void fill_create(ClientFrame *f, unsigned i) {
        static char *args[] = { (char *)"-c", (char *)"sleep 4" };
        static Cwsandboxd__V1__CreateSandboxRequest request;
        static Cwsandboxd__V1__SandboxArgs sandbox_args;
        Cwsandboxd__V1__CreateSandboxRequest *req = &request;
        Cwsandboxd__V1__SandboxArgs *a = &sandbox_args;

        cwsandboxd__v1__create_sandbox_request__init(req);
        cwsandboxd__v1__sandbox_args__init(a);
        a->command = (char *)"/bin/sh";
        a->args = args;
        a->n_args = 2;
        a->has_args = true;
        req->session_id = session_id;
        req->args = a;
        req->start = true;
        f->body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_CREATE_SANDBOX;
        f->create_sandbox = req;
}

static bool take_create(const DaemonFrame *r, unsigned i) {
        if (!r->sandbox || !*r->sandbox->sandbox_id)
                return false;
        handles[i] = strdup(r->sandbox->handle_id);
        return handles[i] != NULL;
}

static void fill_wait(ClientFrame *f, unsigned i) {
        static Cwsandboxd__V1__WaitSandboxRequest request;
        Cwsandboxd__V1__WaitSandboxRequest *req = &request;

        cwsandboxd__v1__wait_sandbox_request__init(req);
        req->sandbox_id = handles[i];
        req->until_complete = true;
        req->timeout_ms = 120000;
        f->body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_WAIT_SANDBOX;
        f->wait_sandbox = req;
}

static bool take_wait(const DaemonFrame *r, unsigned i) {
        return r->sandbox && r->sandbox->state == STATE(COMPLETED) && r->sandbox->has_exit_code &&
               r->sandbox->exit_code == 0;
}

static uint64_t calls_of(const Cwsandboxlocal__V1__GetCountersResponse *r, const char *method) {
        const Cwsandboxlocal__V1__MethodCounter *m = bc_counter(r, method);

        return m ? m->calls : 0;
}

int main(void) {
        _cleanup_free_ char *sid = NULL;
        Cwsandboxlocal__V1__GetCountersResponse *counters = NULL;
        BcClient *backend = NULL;
        FrameClient *c = NULL;
        double ticks0 = 0, ticks1 = 0;
        uint64_t gets, lists;
        unsigned good;
        int r;

        if (test_needs_root())
                return 0;
        r = daemon_proc_start((const char *const[]) { "--log-level", "info", NULL }, &daemon_proc);
        if (r < 0)
                bail_out("cannot start cwsandboxd: %s", strerror(-r));
        if (daemon_proc_backend(daemon_proc, &backend) < 0 || dc_connect(daemon_proc->socket_path, &c) != 0)
                bail_out("cannot connect");
        is_int(dc_attach(c, "waiters", NULL, 0, &sid, NULL, NULL), 0, "attach");
        snprintf(session_id, sizeof(session_id), "%s", sid);

        good = pipeline(c, N, fill_create, take_create);
        is_int((int)good, N, "%d sandboxes created and started at once", N);
        if (good != N)
                bail_out("cannot go on without every sandbox");

        is_int(bc_get_counters(backend, true, &counters, NULL), 0, "backend counters reset");
        bc_free(counters);
        counters = NULL;
        is_int(dc_metric(c, NULL, "cwsandboxd_tracker_ticks_total", &ticks0, NULL), 0, "tracker ticks before");

        good = pipeline(c, N, fill_wait, take_wait);
        is_int((int)good, N, "every one of %d concurrent waits ends COMPLETED with exit code 0", N);

        is_int(dc_metric(c, NULL, "cwsandboxd_tracker_ticks_total", &ticks1, NULL), 0, "tracker ticks after");
        is_int(bc_get_counters(backend, false, &counters, NULL), 0, "backend counters read");
        gets = counters ? calls_of(counters, "GetSandbox") : 0;
        lists = counters ? calls_of(counters, "ListSandboxes") : 0;
        diag("%d waiters: %.0f ticks, %llu ListSandboxes, %llu GetSandbox", N, ticks1 - ticks0,
             (unsigned long long)lists, (unsigned long long)gets);
        ok(ticks1 > ticks0, "the tracker ticked");
        ok(gets + lists <= (uint64_t)(ticks1 - ticks0) * 3 + 10,
           "status calls are O(1) per tick (%llu calls in %.0f ticks)", (unsigned long long)(gets + lists),
           ticks1 - ticks0);
        ok(gets < N, "far fewer GetSandbox calls than sandboxes (%llu)", (unsigned long long)gets);
        bc_free(counters);

        frame_client_free(c);
        bc_close(backend);
        {
                int status = -1;

                is_int(daemon_proc_stop(daemon_proc, 60000, &status), 0, "the daemon stops");
                ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "and exits 0");
        }
        daemon_proc_free(daemon_proc);
        for (int i = 0; i < N; i++)
                free(handles[i]);
        return done();
}
