/*
 * Chaos: randomized client work, daemon kills and backend faults, then the
 * no-leak invariant. One cwsandboxd (reap interval 1 s) runs on a
 * cwsandbox-local the test starts itself, so sandboxes outlive the daemon
 * as on a remote backend. Client processes come and go on a few sessions
 * (linger 1-3 s, and one session with linger -1 that must keep its
 * sandboxes through everything), doing random creates, execs, stops,
 * closes and detaches; meanwhile clients and the daemon are killed, the
 * daemon is stopped and restarted, and the backend fails, stalls and holds
 * back its replies.
 *
 * Every decision (events, their timing, each client's work) comes from one
 * seed: $CWSANDBOXD_CHAOS_SEED, else the clock. It is printed first and in
 * every failure, so a failing run can be replayed (process timing differs
 * between runs; the decisions do not). $CWSANDBOXD_CHAOS_SECONDS sets how
 * long the chaos lasts.
 *
 * After the chaos (faults cleared, every client killed, the lingers and two
 * reap intervals passed):
 *  1. every live sandbox with the daemon's tag belongs to the linger -1
 *     session, and the daemon lists exactly those for it;
 *  2. the daemon is alive and answers status;
 *  3. closing that session leaves nothing live on the backend;
 *  4. SIGTERM ends the daemon with exit status 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <grpc/status.h>

#include "backend-client.h"
#include "daemon-calls.h"
#include "restart-env.h"

#define REAP_S                  1
#define DRAIN_S                 "2"
#define DEFAULT_SECONDS         45
#define WAIT_MS                 60000   /* a guard against hanging, not an expectation */
#define TICK_MS                 20
#define MIN_CLIENTS             3
#define MAX_CLIENTS             5
#define CLIENT_MAX_OWN          4       /* sandboxes one client holds at a time */
#define KEEP_FIRST              2       /* sandboxes the test makes in the linger -1 session */
#define MAX_LINGER_S            3

#define STATE(x) CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_##x
#define SCOPE(x) CWSANDBOXD__V1__SCOPE__SCOPE_##x

/* How a client process ends: its exit status. */
enum {
        CLIENT_DONE = 0,
        CLIENT_E_CONNECT = 10,
        CLIENT_E_ATTACH,
        CLIENT_E_CREATE = 20,
        CLIENT_E_EXEC,
        CLIENT_E_WRONG,         /* an exec that succeeded with the wrong output */
        CLIENT_E_STOP,
        CLIENT_E_CLOSE,
        CLIENT_E_DETACH,
};

/* ---- the seeded generator ------------------------------------------------------------------- */

/* splitmix64: small, fast, and the same sequence on every machine. */
typedef struct Rng {
        uint64_t state;
} Rng;

static uint64_t rng_next(Rng *r) {
        uint64_t z = (r->state += 0x9e3779b97f4a7c15ULL);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

/* An independent stream per purpose, so how many clients timing lets us
 * spawn never shifts the events. */
static Rng rng_stream(uint64_t seed, uint64_t stream) {
        Rng r = { seed ^ (stream * 0xd1b54a32d192ed03ULL) };

        (void)rng_next(&r);
        return r;
}

/* Uniform in [lo, hi]. */
static unsigned rng_range(Rng *r, unsigned lo, unsigned hi) {
        return lo + (unsigned)(rng_next(r) % (uint64_t)(hi - lo + 1));
}

static bool rng_percent(Rng *r, unsigned p) {
        return rng_range(r, 0, 99) < p;
}

/* ---- the run ------------------------------------------------------------------------------- */

typedef struct SessionSpec {
        const char *name;
        int linger;
} SessionSpec;

/* The lingers of the first three come from the seed (lingers_draw()); the
 * last lingers forever and no client closes it. */
static SessionSpec sessions[] = {
        { "chaos-a", 0 },
        { "chaos-b", 0 },
        { "chaos-c", 0 },
        { "chaos-keep", -1 },
};
#define N_SESSIONS ELEMENTSOF(sessions)
#define KEEP (N_SESSIONS - 1)

typedef struct Client {
        pid_t pid;              /* 0: a free slot */
        unsigned serial;
        unsigned session;
} Client;

typedef struct Chaos {
        uint64_t seed;
        int64_t t0_ms;
        Rng events, spawns;
        DaemonProc *daemon;
        Client clients[MAX_CLIENTS];
        unsigned target_clients;
        unsigned serial;
        int64_t faults_until_ms;        /* 0: no faults set */
        int64_t kill_at_ms;             /* 0: no kill -9 planned */
        unsigned exits[256];
        unsigned client_signals;        /* clients killed by a signal we did not send */
        unsigned daemon_deaths;         /* the daemon ended without being told to */
        unsigned sigterm_bad;           /* SIGTERM restarts that did not exit 0 */
        unsigned sigterms;
        unsigned kills;
} Chaos;

static RestartEnv env;
static Chaos chaos;

static double t_s(void) {
        return (test_mono_ms() - chaos.t0_ms) / 1000.0;
}

/* A diagnostic line with the time offset into the run. */
#define event(fmt, ...) diag("t=%7.2f " fmt, t_s(), ##__VA_ARGS__)

/* ---- a client process ---------------------------------------------------------------------- */

typedef struct Work {
        unsigned serial;
        FrameClient *conn;
        char *session_id;
        bool keep;
        char own[CLIENT_MAX_OWN][96];
        Cwsandboxd__V1__Scope scope[CLIENT_MAX_OWN];
        unsigned n_own;
        Rng rng;
} Work;

/* End the client after a failed call, with a line in the test's log (not in TAP). */
static _noreturn_ void work_fail(const Work *w, int status, const char *what, const DcError *err) {
        fprintf(stderr, "chaos client %u: %s failed: code %d: %s\n", w->serial, what, err->code, err->message);
        _exit(status);
}

static void work_create(Work *w) {
        Cwsandboxd__V1__Scope scope = rng_percent(&w->rng, 25) ? SCOPE(CONNECTION) : SCOPE(SESSION);
        DcError err = { 0 };
        DcInfo info;

        if (w->n_own == CLIENT_MAX_OWN)
                return;
        if (dc_create(w->conn, w->session_id, NULL, scope, true, &info, &err) != 0)
                work_fail(w, CLIENT_E_CREATE, "create", &err);
        snprintf(w->own[w->n_own], sizeof(w->own[0]), "%s", info.handle_id);
        w->scope[w->n_own++] = scope;
}

static void work_exec(Work *w) {
        const char *id = w->own[rng_range(&w->rng, 0, w->n_own - 1)];
        unsigned n = rng_range(&w->rng, 0, 999999);
        _cleanup_free_ char *out = NULL;
        char word[32], want[34];
        DcError err = { 0 };
        int code = -1;

        snprintf(word, sizeof(word), "chaos-%u", n);
        snprintf(want, sizeof(want), "%s\n", word);
        if (rng_percent(&w->rng, 50)) {
                if (dc_exec(w->conn, id, (const char *const[]) { "true", NULL }, NULL, NULL, &code, &err) != 0)
                        work_fail(w, CLIENT_E_EXEC, "exec true", &err);
                if (code != 0)
                        work_fail(w, CLIENT_E_EXEC, "exec true", &(DcError) { .message = "non-zero exit" });
                return;
        }
        if (dc_exec(w->conn, id, (const char *const[]) { "echo", word, NULL }, &out, NULL, &code, &err) != 0)
                work_fail(w, CLIENT_E_EXEC, "exec echo", &err);
        if (code != 0)
                work_fail(w, CLIENT_E_EXEC, "exec echo", &(DcError) { .message = "non-zero exit" });
        /* A stream cut short must be an error, never a success with less output. */
        if (!out || strcmp(out, want) != 0) {
                fprintf(stderr, "chaos client %u: exec echo %s in %s: exit 0 with output '%s'\n", w->serial, word,
                        id, out ? out : "(none)");
                _exit(CLIENT_E_WRONG);
        }
}

static void work_forget(Work *w, unsigned i) {
        w->n_own--;
        memmove(w->own[i], w->own[w->n_own], sizeof(w->own[0]));
        w->scope[i] = w->scope[w->n_own];
}

static void work_stop(Work *w) {
        unsigned i = rng_range(&w->rng, 0, w->n_own - 1);
        double grace = rng_range(&w->rng, 0, 1);
        DcError err = { 0 };
        DcInfo info;

        if (dc_stop(w->conn, w->own[i], grace, true, &info, &err) != 0)
                work_fail(w, CLIENT_E_STOP, "stop", &err);
        work_forget(w, i);
}

/* A client of the linger -1 session leaving on its own stops what it made,
 * so that session does not grow without end; a killed one cannot. */
static _noreturn_ void work_leave(Work *w) {
        DcError err = { 0 };
        DcInfo info;

        for (unsigned i = 0; w->keep && i < w->n_own; i++)
                if (w->scope[i] == SCOPE(SESSION))
                        (void)dc_stop(w->conn, w->own[i], 0, true, &info, &err);
        _exit(CLIENT_DONE);
}

static void work_step(Work *w) {
        unsigned roll = rng_range(&w->rng, 0, 99);
        DcError err = { 0 };

        if (roll < 30 || (roll < 80 && w->n_own == 0))
                work_create(w);
        else if (roll < 65)
                work_exec(w);
        else if (roll < 80)
                work_stop(w);
        else if (roll < 85) {
                /* Nobody closes the session that must keep its sandboxes. */
                if (w->keep)
                        return;
                if (dc_close_session(w->conn, w->session_id, NULL, NULL, &err) != 0)
                        work_fail(w, CLIENT_E_CLOSE, "close session", &err);
                _exit(CLIENT_DONE);
        } else if (roll < 90) {
                if (dc_detach(w->conn, w->session_id, &err) != 0)
                        work_fail(w, CLIENT_E_DETACH, "detach", &err);
                work_leave(w);
        }
        test_sleep_ms((int)rng_range(&w->rng, 0, 150));
}

/* The body of a forked client: it exits on the first error and never returns. */
static _noreturn_ void client_main(const char *socket_path, unsigned serial, unsigned session, uint64_t seed) {
        Cwsandboxd__V1__SandboxDefaults defaults = CWSANDBOXD__V1__SANDBOX_DEFAULTS__INIT;
        char *tags[] = { (char *)sessions[session].name };
        Work w = { .serial = serial, .keep = session == KEEP, .rng = { seed } };
        DcError err = { 0 };
        unsigned steps;

        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        defaults.tags = tags;
        defaults.n_tags = 1;
        if (dc_connect(socket_path, &w.conn) != 0)
                work_fail(&w, CLIENT_E_CONNECT, "connect", &(DcError) { .message = "no daemon" });
        if (dc_attach(w.conn, sessions[session].name, &defaults, sessions[session].linger, &w.session_id, NULL,
                      &err) != 0)
                work_fail(&w, CLIENT_E_ATTACH, "attach", &err);
        steps = rng_range(&w.rng, 5, 45);
        for (unsigned i = 0; i < steps; i++)
                work_step(&w);
        work_leave(&w);
}

/* ---- clients, seen from the test ------------------------------------------------------------ */

static unsigned clients_alive(void) {
        unsigned n = 0;

        for (size_t i = 0; i < MAX_CLIENTS; i++)
                n += chaos.clients[i].pid > 0;
        return n;
}

static void client_spawn(void) {
        unsigned session = rng_percent(&chaos.spawns, 20) ? KEEP : rng_range(&chaos.spawns, 0, KEEP - 1);
        uint64_t seed = rng_next(&chaos.spawns);
        Client *slot = NULL;
        pid_t pid;

        for (size_t i = 0; i < MAX_CLIENTS && !slot; i++)
                if (chaos.clients[i].pid == 0)
                        slot = &chaos.clients[i];
        if (!slot)
                return;
        fflush(stdout);
        pid = fork();
        if (pid < 0)
                bail_out("fork: %m (seed %" PRIu64 ")", chaos.seed);
        if (pid == 0)
                client_main(chaos.daemon->socket_path, chaos.serial + 1, session, seed);
        *slot = (Client) { .pid = pid, .serial = ++chaos.serial, .session = session };
        event("client %u (pid %d) on %s", slot->serial, (int)pid, sessions[session].name);
}

static void client_ended(Client *cl, int status) {
        if (WIFEXITED(status)) {
                chaos.exits[WEXITSTATUS(status)]++;
                event("client %u exited %d", cl->serial, WEXITSTATUS(status));
        } else if (WIFSIGNALED(status)) {
                if (WTERMSIG(status) != SIGKILL)
                        chaos.client_signals++;
                event("client %u killed by signal %d", cl->serial, WTERMSIG(status));
        }
        cl->pid = 0;
}

static void clients_reap(void) {
        for (size_t i = 0; i < MAX_CLIENTS; i++) {
                Client *cl = &chaos.clients[i];
                int status;

                if (cl->pid > 0 && waitpid(cl->pid, &status, WNOHANG) == cl->pid)
                        client_ended(cl, status);
        }
}

static void client_kill(Client *cl) {
        int status;

        (void)kill(cl->pid, SIGKILL);
        if (waitpid(cl->pid, &status, 0) == cl->pid)
                client_ended(cl, status);
        else
                cl->pid = 0;
}

/* ---- the daemon ---------------------------------------------------------------------------- */

static void daemon_restart(const char *why) {
        int r = daemon_proc_restart(chaos.daemon);

        if (r < 0)
                bail_out("%s: cannot restart cwsandboxd: %s (seed %" PRIu64 ")", why, strerror(-r), chaos.seed);
        event("daemon restarted (pid %d)", (int)chaos.daemon->pid);
}

/* A daemon that ended without being told to is a finding: note it and go on. */
static void daemon_check(void) {
        DaemonProc *d = chaos.daemon;

        if (test_child_alive(&d->pid, &d->wait_status))
                return;
        chaos.daemon_deaths++;
        if (WIFSIGNALED(d->wait_status))
                event("THE DAEMON DIED: signal %d", WTERMSIG(d->wait_status));
        else
                event("THE DAEMON DIED: exit status %d", WEXITSTATUS(d->wait_status));
        daemon_restart("after its death");
}

static void daemon_kill9(void) {
        DaemonProc *d = chaos.daemon;
        int status;

        event("kill -9 the daemon (pid %d)", (int)d->pid);
        (void)daemon_proc_signal(d, SIGKILL);
        (void)waitpid(d->pid, &status, 0);
        d->pid = 0;
        chaos.kills++;
        daemon_restart("kill -9");
}

static void daemon_term(void) {
        DaemonProc *d = chaos.daemon;
        int status = -1, r;

        event("SIGTERM the daemon (pid %d)", (int)d->pid);
        r = daemon_proc_stop(d, WAIT_MS, &status);
        chaos.sigterms++;
        if (r < 0) {
                chaos.sigterm_bad++;
                event("SIGTERM DID NOT END IT within %d ms: killed", WAIT_MS);
        } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                chaos.sigterm_bad++;
                event("SIGTERM DID NOT END IN EXIT 0: %s %d", WIFEXITED(status) ? "exit status" : "signal",
                      WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        } else
                event("the daemon exited 0");
        daemon_restart("SIGTERM");
}

/* ---- backend faults ------------------------------------------------------------------------ */

typedef Cwsandboxlocal__V1__Fault Fault;

static void faults_set(const Fault *f, size_t n, unsigned duration_ms) {
        BcStatus st;

        if (bc_set_faults(env.backend.client, f, n, &st) != 0)
                bail_out("cannot set backend faults: %s (seed %" PRIu64 ")", st.details, chaos.seed);
        chaos.faults_until_ms = n ? test_mono_ms() + duration_ms : 0;
}

static void faults_clear(void) {
        faults_set(NULL, 0, 0);
        event("faults cleared");
}

static const char *const fault_methods[] = { "CreateSandbox", "DeleteSandbox", "ListSandboxes", "GetSandbox" };

static void fault_errors(void) {
        Fault f[ELEMENTSOF(fault_methods)];
        unsigned duration = rng_range(&chaos.events, 2000, 6000);
        char names[128] = "";
        size_t n = 0;

        for (size_t i = 0; i < ELEMENTSOF(fault_methods); i++) {
                if (!rng_percent(&chaos.events, 50) && !(i == ELEMENTSOF(fault_methods) - 1 && n == 0))
                        continue;
                f[n] = (Fault) CWSANDBOXLOCAL__V1__FAULT__INIT;
                f[n].method = (char *)fault_methods[i];
                f[n].error_rate = 0.3;
                f[n].error_code = GRPC_STATUS_UNAVAILABLE;
                n++;
                strncat(names, " ", sizeof(names) - strlen(names) - 1);
                strncat(names, fault_methods[i], sizeof(names) - strlen(names) - 1);
        }
        faults_set(f, n, duration);
        event("faults for %.1f s: UNAVAILABLE at rate 0.3 on%s", duration / 1000.0, names);
}

static void fault_latency(void) {
        Fault f = CWSANDBOXLOCAL__V1__FAULT__INIT;
        unsigned duration = rng_range(&chaos.events, 2000, 6000);
        unsigned which = rng_range(&chaos.events, 0, ELEMENTSOF(fault_methods));

        f.method = (char *)(which == ELEMENTSOF(fault_methods) ? "*" : fault_methods[which]);
        f.latency_ms = rng_range(&chaos.events, 50, 400);
        faults_set(&f, 1, duration);
        event("faults for %.1f s: latency %u ms on %s", duration / 1000.0, f.latency_ms, f.method);
}

/* Creates take effect but their replies wait, and usually the daemon is
 * killed while they wait: the next daemon must find what they made. */
static void fault_held_creates(void) {
        Fault f = CWSANDBOXLOCAL__V1__FAULT__INIT;
        unsigned delay = rng_range(&chaos.events, 1000, 4000);
        bool kill_it = rng_percent(&chaos.events, 70);
        unsigned kill_after = rng_range(&chaos.events, 300, delay);

        f.method = (char *)"CreateSandbox";
        f.reply_delay_ms = delay;
        faults_set(&f, 1, delay + 500);
        if (kill_it) {
                chaos.kill_at_ms = test_mono_ms() + kill_after;
                event("faults for %.1f s: CreateSandbox replies held %u ms; kill -9 in %u ms",
                      (delay + 500) / 1000.0, delay, kill_after);
        } else
                event("faults for %.1f s: CreateSandbox replies held %u ms", (delay + 500) / 1000.0, delay);
}

/* ---- events -------------------------------------------------------------------------------- */

static void kill_some_client(void) {
        unsigned pick = rng_range(&chaos.events, 0, 999), alive = clients_alive();

        if (alive == 0) {
                event("kill a client: none alive");
                return;
        }
        pick %= alive;
        for (size_t i = 0; i < MAX_CLIENTS; i++) {
                Client *cl = &chaos.clients[i];

                if (cl->pid > 0 && pick-- == 0) {
                        event("kill -9 client %u", cl->serial);
                        client_kill(cl);
                        return;
                }
        }
}

static void event_run(void) {
        unsigned roll = rng_range(&chaos.events, 0, 99);

        chaos.target_clients = rng_range(&chaos.events, MIN_CLIENTS, MAX_CLIENTS);
        if (roll < 25)
                kill_some_client();
        else if (roll < 40)
                daemon_kill9();
        else if (roll < 50)
                daemon_term();
        else if (roll < 67)
                fault_errors();
        else if (roll < 80)
                fault_held_creates();
        else if (roll < 92)
                fault_latency();
        else
                event("a quiet spell; %u clients from now on", chaos.target_clients);
}

static void chaos_run(unsigned seconds) {
        int64_t end = test_mono_ms() + seconds * 1000LL;
        int64_t next = test_mono_ms() + rng_range(&chaos.events, 500, 3000);

        chaos.target_clients = MIN_CLIENTS;
        while (test_mono_ms() < end) {
                int64_t now = test_mono_ms();

                clients_reap();
                daemon_check();
                if (chaos.faults_until_ms && now >= chaos.faults_until_ms)
                        faults_clear();
                if (chaos.kill_at_ms && now >= chaos.kill_at_ms) {
                        chaos.kill_at_ms = 0;
                        daemon_kill9();
                }
                if (now >= next) {
                        event_run();
                        next = test_mono_ms() + rng_range(&chaos.events, 500, 3000);
                }
                if (clients_alive() < chaos.target_clients)
                        client_spawn();
                test_sleep_ms(TICK_MS);
        }
}

/* ---- the checks ---------------------------------------------------------------------------- */

static FrameClient *client(void) {
        FrameClient *c = NULL;
        int r = dc_connect(chaos.daemon->socket_path, &c);

        if (r != 0)
                bail_out("cannot connect to cwsandboxd: %d (seed %" PRIu64 ")", r, chaos.seed);
        return c;
}

static bool info_live(const Cwsandboxd__V1__SandboxInfo *sb) {
        return *sb->sandbox_id && sb->state != STATE(COMPLETED) && sb->state != STATE(FAILED) &&
               sb->state != STATE(TERMINATED);
}

static bool strv_has(char **v, const char *s) {
        for (size_t i = 0; v && v[i]; i++)
                if (streq(v[i], s))
                        return true;
        return false;
}

/* What the backend says about @id, on one line. */
static void diag_backend_sandbox(const char *what, const char *id) {
        _cleanup_bc_ BcSandbox *sb = NULL;
        char tags[512] = "";
        BcStatus st;

        if (bc_get_sandbox(env.backend.client, id, &sb, &st) != 0) {
                diag("%s %s: the backend does not answer for it: %s", what, id, st.details);
                return;
        }
        for (size_t i = 0; sb->spec && i < sb->spec->n_tags; i++) {
                strncat(tags, " ", sizeof(tags) - strlen(tags) - 1);
                strncat(tags, sb->spec->tags[i], sizeof(tags) - strlen(tags) - 1);
        }
        diag("%s %s: %s, tags%s", what, id, bc_state_name(sb->status ? sb->status->state : 0), tags);
}

static void diag_sessions(FrameClient *c) {
        Cwsandboxd__V1__DaemonFrame *f = NULL;
        DcError err = { 0 };

        if (dc_list_sessions(c, &f, &err) != 0) {
                diag("sessions: cannot list them: %s", err.message);
                return;
        }
        for (size_t i = 0; i < f->sessions->n_sessions; i++) {
                const Cwsandboxd__V1__Session *s = f->sessions->sessions[i];

                diag("session %s (%s): %u sandboxes, %u connections, linger %d", s->name, s->session_id,
                     s->sandbox_count, s->connections, s->linger_seconds);
        }
        frame_client_frame_free(f);
}

/*
 * Compare what runs on the backend with the daemon's tag against what the
 * daemon lists for the linger -1 session. Returns the number of
 * differences, or -1 when one of them did not answer; *@ret_live gets how
 * many are live on the backend. With @report, each difference becomes a
 * diagnostic.
 */
static int keep_diff(const char *keep_sid, bool report, int *ret_live) {
        Cwsandboxd__V1__DaemonFrame *list = NULL;
        DcError err = { .message = "cannot connect" };
        FrameClient *c = NULL;
        char **live = NULL;
        int n_live, diff = 0;
        size_t n_listed = 0;

        n_live = restart_env_live(&env, "cwsandboxd", &live);
        if (n_live < 0 || dc_connect(chaos.daemon->socket_path, &c) != 0 ||
            dc_list(c, keep_sid, NULL, false, false, &list, &err) != 0) {
                if (report)
                        diag("the %s did not answer: %s", n_live < 0 ? "backend" : "daemon", err.message);
                diff = -1;
                goto out;
        }
        for (size_t i = 0; i < list->sandboxes->n_sandboxes; i++) {
                const Cwsandboxd__V1__SandboxInfo *sb = list->sandboxes->sandboxes[i];

                if (!info_live(sb))
                        continue;
                n_listed++;
                if (!streq(sb->session_id, keep_sid) || !*sb->handle_id) {
                        diff++;
                        if (report)
                                diag("listed for the session but not tracked by it: %s (session '%s', handle '%s')",
                                     sb->sandbox_id, sb->session_id, sb->handle_id);
                }
                if (!strv_has(live, sb->sandbox_id)) {
                        diff++;
                        if (report)
                                diag("listed by the daemon, not live on the backend: %s (%s)", sb->sandbox_id,
                                     dc_state_name(sb->state));
                }
        }
        for (size_t i = 0; live && live[i]; i++)
                if (!dc_list_has(list, live[i])) {
                        diff++;
                        if (report)
                                diag_backend_sandbox("live on the backend, not the session's:", live[i]);
                }
        if (report) {
                diag("%d live on the backend, %zu listed by the daemon for the session", n_live, n_listed);
                diag_sessions(c);
        }
out:
        *ret_live = n_live;
        frame_client_frame_free(list);
        test_strv_free(live);
        frame_client_free(c);
        return diff;
}

/*
 * Wait for the lingers and two reap intervals, then until the backend and
 * the session agree on two polls a reap interval apart (a create still in
 * flight can make them agree for a moment). Returns the differences left.
 */
static int wait_settled(const char *keep_sid) {
        int64_t start = test_mono_ms(), end = start + WAIT_MS;
        int64_t earliest = start + (MAX_LINGER_S + 2 * REAP_S) * 1000LL;
        int agreed = 0, diff = -1, live = -1;

        while (test_mono_ms() < end) {
                daemon_check();
                diff = keep_diff(keep_sid, false, &live);
                agreed = diff == 0 ? agreed + 1 : 0;
                if (agreed >= 2 && test_mono_ms() >= earliest) {
                        event("settled after %.1f s: %d live, all the linger -1 session's",
                              (test_mono_ms() - start) / 1000.0, live);
                        return 0;
                }
                test_sleep_ms(REAP_S * 1000);
        }
        event("not settled after %.1f s", (test_mono_ms() - start) / 1000.0);
        return keep_diff(keep_sid, true, &live);
}

static void diag_metrics(FrameClient *c) {
        static const char *const names[] = {
                "cwsandboxd_orphans_reaped_total", "cwsandboxd_creates_resolved_total", "cwsandboxd_stop_failures_total",
                "cwsandboxd_stops_pending", "cwsandboxd_reconcile_failures_total", "cwsandboxd_sandboxes{state=\"RUNNING\"}",
        };

        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                double v = -1;
                DcError err = { 0 };

                (void)dc_metric(c, NULL, names[i], &v, &err);
                diag("%s = %.0f (this daemon's life only)", names[i], v);
        }
}

/* The first sandboxes of the linger -1 session: still there, still working. */
static void check_first(const DcInfo *first) {
        FrameClient *c = client();
        char **live = NULL;
        unsigned good = 0;

        (void)restart_env_live(&env, "cwsandboxd", &live);
        for (size_t i = 0; i < KEEP_FIRST; i++) {
                _cleanup_free_ char *out = NULL;
                DcError err = { 0 };
                int code = -1;

                if (!strv_has(live, first[i].sandbox_id)) {
                        diag("the linger -1 session's sandbox %s is gone", first[i].sandbox_id);
                        continue;
                }
                if (dc_exec(c, first[i].handle_id, (const char *const[]) { "echo", "kept", NULL }, &out, NULL,
                            &code, &err) != 0 || code != 0 || !out || !streq(out, "kept\n")) {
                        diag("exec in %s: %s (exit %d)", first[i].sandbox_id, err.message, code);
                        continue;
                }
                good++;
        }
        is_int(good, KEEP_FIRST, "the linger -1 session's first sandboxes survived and still run commands "
               "(seed %" PRIu64 ")", chaos.seed);
        test_strv_free(live);
        frame_client_free(c);
}

static void check_status(void) {
        Cwsandboxd__V1__DaemonFrame *f = NULL;
        FrameClient *c = client();
        DcError err = { 0 };
        int r;

        r = dc_status(c, &f, &err);
        if (!is_int(r, 0, "the daemon is alive and answers status (seed %" PRIu64 ")", chaos.seed))
                diag("status: %s", err.message);
        else
                diag("status: %u sessions, %u connections, state file: %s", f->status->sessions,
                     f->status->connections, f->status->state_file_status);
        diag_metrics(c);
        frame_client_frame_free(f);
        frame_client_free(c);
}

static void check_close(const char *keep_sid) {
        FrameClient *c = client();
        DcError err = { 0 };
        char **live = NULL;
        int n;

        if (!is_int(dc_close_session(c, keep_sid, NULL, NULL, &err), 0,
                    "close the linger -1 session (seed %" PRIu64 ")", chaos.seed))
                diag("close: %s", err.message);
        n = restart_env_wait_live(&env, "cwsandboxd", 0, WAIT_MS);
        if (!is_int(n, 0, "after closing it nothing with the daemon's tag is live on the backend "
                    "(seed %" PRIu64 ")", chaos.seed)) {
                (void)restart_env_live(&env, "cwsandboxd", &live);
                for (size_t i = 0; live && live[i]; i++)
                        diag_backend_sandbox("still live:", live[i]);
                diag_sessions(c);
        }
        test_strv_free(live);
        frame_client_free(c);
}

static void check_sigterm(void) {
        int status = -1, r;

        r = daemon_proc_stop(chaos.daemon, WAIT_MS, &status);
        ok(r == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "SIGTERM: the daemon exits with status 0 (seed %" PRIu64 ")", chaos.seed);
        if (r < 0)
                diag("it did not end within %d ms and was killed", WAIT_MS);
        else if (WIFSIGNALED(status))
                diag("it ended by signal %d", WTERMSIG(status));
        else if (WEXITSTATUS(status) != 0)
                diag("it exited %d", WEXITSTATUS(status));
}

static void check_during(void) {
        ok(chaos.daemon_deaths == 0, "the daemon never ended on its own during the chaos or the wait after it "
           "(seed %" PRIu64 ")", chaos.seed);
        is_int(chaos.sigterm_bad, 0, "each of the %u SIGTERMs during the chaos ended in exit status 0 "
               "(seed %" PRIu64 ")", chaos.sigterms, chaos.seed);
        is_int(chaos.exits[CLIENT_E_WRONG], 0, "no exec through the daemon succeeded with the wrong output "
               "(seed %" PRIu64 ")", chaos.seed);
        ok(chaos.client_signals == 0, "no client died of a signal the test did not send (seed %" PRIu64 ")",
           chaos.seed);
        diag("%u clients, %u daemon kills, %u SIGTERMs; client exits: done %u, connect %u, attach %u, "
             "create %u, exec %u, stop %u, close %u, detach %u", chaos.serial, chaos.kills, chaos.sigterms,
             chaos.exits[CLIENT_DONE], chaos.exits[CLIENT_E_CONNECT], chaos.exits[CLIENT_E_ATTACH],
             chaos.exits[CLIENT_E_CREATE], chaos.exits[CLIENT_E_EXEC], chaos.exits[CLIENT_E_STOP],
             chaos.exits[CLIENT_E_CLOSE], chaos.exits[CLIENT_E_DETACH]);
}

/* ---- set-up -------------------------------------------------------------------------------- */

static uint64_t seed_from_env(void) {
        const char *s = getenv("CWSANDBOXD_CHAOS_SEED");
        char *end = NULL;
        uint64_t v;

        if (!s || !*s)
                return (uint64_t)(test_now_ns() / 1000) % 1000000000ULL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno || !end || *end)
                bail_out("CWSANDBOXD_CHAOS_SEED: not a number: '%s'", s);
        return v;
}

static unsigned seconds_from_env(void) {
        const char *s = getenv("CWSANDBOXD_CHAOS_SECONDS");
        char *end = NULL;
        long v;

        if (!s || !*s)
                return DEFAULT_SECONDS;
        v = strtol(s, &end, 10);
        if (!end || *end || v < 1 || v > 3600)
                bail_out("CWSANDBOXD_CHAOS_SECONDS: not a number of seconds in 1..3600: '%s'", s);
        return (unsigned)v;
}

/* The linger -1 session and its first sandboxes, RUNNING. */
static char *keep_start(DcInfo *first) {
        Cwsandboxd__V1__SandboxDefaults defaults = CWSANDBOXD__V1__SANDBOX_DEFAULTS__INIT;
        char *tags[] = { (char *)sessions[KEEP].name };
        FrameClient *c = client();
        DcError err = { 0 };
        char *sid = NULL;

        defaults.tags = tags;
        defaults.n_tags = 1;
        if (dc_attach(c, sessions[KEEP].name, &defaults, sessions[KEEP].linger, &sid, NULL, &err) != 0)
                bail_out("attach: %s (seed %" PRIu64 ")", err.message, chaos.seed);
        for (size_t i = 0; i < KEEP_FIRST; i++)
                if (dc_create(c, sid, NULL, SCOPE(SESSION), true, &first[i], &err) != 0 ||
                    dc_wait(c, first[i].handle_id, false, WAIT_MS, &first[i], &err) != 0)
                        bail_out("cannot make a running sandbox: %s (seed %" PRIu64 ")", err.message, chaos.seed);
        frame_client_free(c);
        return sid;
}

static void lingers_draw(Rng *setup) {
        for (size_t i = 0; i < KEEP; i++) {
                sessions[i].linger = (int)rng_range(setup, 1, MAX_LINGER_S);
                diag("session %s lingers %d s", sessions[i].name, sessions[i].linger);
        }
}

int main(void) {
        _cleanup_free_ char *keep_sid = NULL;
        DcInfo first[KEEP_FIRST];
        unsigned seconds;
        Rng setup;

        chaos.seed = seed_from_env();
        diag("seed %" PRIu64 " (replay: CWSANDBOXD_CHAOS_SEED=%" PRIu64 ")", chaos.seed, chaos.seed);
        if (test_needs_root())
                return 0;
        signal(SIGPIPE, SIG_IGN);
        seconds = seconds_from_env();
        setup = rng_stream(chaos.seed, 1);
        chaos.events = rng_stream(chaos.seed, 2);
        chaos.spawns = rng_stream(chaos.seed, 3);
        lingers_draw(&setup);

        restart_env_start(&env);
        chaos.daemon = restart_env_daemon(&env, REAP_S, (const char *const[]) {
                "--drain-timeout-seconds", DRAIN_S, NULL });
        keep_sid = keep_start(first);
        chaos.t0_ms = test_mono_ms();
        event("chaos for %u s; the linger -1 session is %s", seconds, keep_sid);
        chaos_run(seconds);

        event("the chaos is over: clear the faults, kill every client");
        faults_clear();
        chaos.kill_at_ms = 0;
        for (size_t i = 0; i < MAX_CLIENTS; i++)
                if (chaos.clients[i].pid > 0)
                        client_kill(&chaos.clients[i]);
        daemon_check();
        is_int(wait_settled(keep_sid), 0, "only the linger -1 session's sandboxes are live on the backend, "
               "exactly those the daemon lists for it (seed %" PRIu64 ")", chaos.seed);
        check_during();
        check_first(first);
        check_status();
        check_close(keep_sid);
        check_sigterm();
        chaos.daemon = daemon_proc_free(chaos.daemon);
        restart_env_stop(&env);
        return done();
}
