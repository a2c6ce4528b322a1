/*
 * The state ledger when things go wrong: cwsandboxd on a cwsandbox-local it
 * does not own (sandboxes outlive the daemon, as on a remote backend), with
 * its ledger damaged between runs, its backend refusing to stop sandboxes,
 * sessions with a maximum lifetime, and a state directory that is full or
 * read-only. What runs is always checked against the backend's own listing.
 *
 * - A ledger torn in its last record, with a byte flipped in its last
 *   record, empty, or not a ledger at all: the daemon starts, says what it
 *   found, keeps the damaged file as ledger.bad, keeps the sandboxes the
 *   readable records still own and reaps the ones whose records were lost.
 * - DeleteSandbox failing for a while (at a session close, and for an
 *   orphan): the stop is retried until the sandbox is TERMINATED.
 * - A session with a maximum lifetime loses its sandbox once it is older;
 *   a session without one keeps its own.
 * - As root, in a mount namespace of its own: the state directory on a
 *   small tmpfs, filled up and then made read-only. Work goes on, status
 *   says why the ledger cannot be written, the write is retried every few
 *   seconds (not back to back), and once it can be again the state written
 *   by the recovery survives a kill -9.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <grpc/status.h>

#include "backend-client.h"
#include "cwsandboxd/v1/ledger.pb-c.h"
#include "daemon-calls.h"
#include "restart-env.h"

#define WAIT_MS                 60000   /* a guard against hanging, not an expectation */
#define REAP_S                  1
#define LIFETIME_S              2
#define LEDGER_HEADER_BYTES     8       /* the magic (see ledger.proto) */
#define RECORD_FRAME_BYTES      8       /* length and CRC-32C before each record */
#define MAX_RECORDS             16
#define TMPFS_OPTIONS           "size=256k,mode=0700"
#define PAD_BYTES               8192    /* records larger than the slack a full tmpfs leaves in a page */

#define SCOPE(x) CWSANDBOXD__V1__SCOPE__SCOPE_##x
#define ROP(x) CWSANDBOXD__V1__LEDGER_RECORD__OP_##x

typedef Cwsandboxd__V1__DaemonFrame DaemonFrame;

static RestartEnv env;
static char no_mounts_reason[128];

/* ---- small helpers ---------------------------------------------------------------------------- */

static void sigterm(DaemonProc *d, const char *what) {
        int status = -1;

        if (daemon_proc_stop(d, WAIT_MS, &status) != 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                bail_out("%s: cwsandboxd did not stop cleanly on SIGTERM (status 0x%x)", what, status);
}

/* A started sandbox in @session, RUNNING. */
static bool make_running(FrameClient *c, const char *session, Cwsandboxd__V1__Scope scope, DcInfo *info) {
        DcError err = { 0 };

        if (dc_create(c, session, NULL, scope, true, info, &err) != 0 ||
            dc_wait(c, info->handle_id, false, WAIT_MS, info, &err) != 0) {
                diag("cannot make a running sandbox: %s", err.message);
                return false;
        }
        return true;
}

static void must_run(FrameClient *c, const char *session, Cwsandboxd__V1__Scope scope, DcInfo *info) {
        if (!make_running(c, session, scope, info))
                bail_out("cannot make a running sandbox");
}

static char *attach(FrameClient *c, const char *name) {
        char *sid = NULL;
        DcError err = { 0 };

        if (dc_attach(c, name, NULL, -1, &sid, NULL, &err) != 0)
                bail_out("attach %s: %s", name, err.message);
        return sid;
}

/* AttachSession with a max lifetime, which dc_attach() cannot ask for; linger -1. */
static int attach_lifetime(FrameClient *c, const char *name, int max_lifetime_s, char **ret_sid, DcError *err) {
        Cwsandboxd__V1__ClientFrame f = CWSANDBOXD__V1__CLIENT_FRAME__INIT;
        Cwsandboxd__V1__AttachSessionRequest req = CWSANDBOXD__V1__ATTACH_SESSION_REQUEST__INIT;
        DaemonFrame *reply = NULL;
        int r;

        req.name = (char *)name;
        req.has_linger = true;
        req.linger_seconds = -1;
        req.max_lifetime_seconds = max_lifetime_s;
        f.body_case = CWSANDBOXD__V1__CLIENT_FRAME__BODY_ATTACH_SESSION;
        f.attach_session = &req;
        r = dc_call(c, &f, &reply, err);
        if (r == 0 && reply->session)
                *ret_sid = strdup(reply->session->session_id);
        frame_client_frame_free(reply);
        return r;
}

static double metric(FrameClient *c, const char *name) {
        double v = -1;
        DcError err = { 0 };

        (void)dc_metric(c, NULL, name, &v, &err);
        return v;
}

/* Wait until @name is at least @min (@above) or at most @max (!@above). Returns the last value. */
static double wait_metric(FrameClient *c, const char *name, bool above, double bound) {
        int64_t end = test_mono_ms() + WAIT_MS;
        double v;

        for (;;) {
                v = metric(c, name);
                if ((above ? v >= bound : v >= 0 && v <= bound) || test_mono_ms() >= end)
                        return v;
                test_sleep_ms(100);
        }
}

static char *session_tag(const char *session_id) {
        char *t;

        if (asprintf(&t, "cwsandboxd-session-%s", session_id) < 0)
                bail_out("out of memory");
        return t;
}

/* The daemon's state_file_status, or NULL. */
static char *state_status(FrameClient *c) {
        DaemonFrame *reply = NULL;
        DcError err = { 0 };
        char *s = NULL;

        if (dc_status(c, &reply, &err) == 0)
                s = strdup(reply->status->state_file_status ? reply->status->state_file_status : "");
        frame_client_frame_free(reply);
        return s;
}

/* Wait until state_file_status contains @needle (is exactly it when @exact). Returns the last one seen. */
static char *wait_state_status(FrameClient *c, const char *needle, bool exact) {
        int64_t end = test_mono_ms() + WAIT_MS;

        for (;;) {
                char *s = state_status(c);

                if ((s && (exact ? streq(s, needle) : strstr(s, needle) != NULL)) || test_mono_ms() >= end)
                        return s;
                free(s);
                test_sleep_ms(100);
        }
}

/* The backend's state of @id, or minus the gRPC code of the failed GetSandbox. */
static int backend_state(const char *id) {
        BcSandbox *sb = NULL;
        BcStatus st;
        int r = bc_get_sandbox(env.backend.client, id, &sb, &st), state;

        state = r != 0 ? -r : sb->status ? (int)sb->status->state : 0;
        bc_free(sb);
        return state;
}

/* Wait until @id is terminal on the backend; returns the last state seen. */
static int wait_backend_terminal(const char *id) {
        int64_t end = test_mono_ms() + WAIT_MS;

        for (;;) {
                int state = backend_state(id);

                if (state == BC_STATE(COMPLETED) || state == BC_STATE(FAILED) || state == BC_STATE(TERMINATED) ||
                    test_mono_ms() >= end)
                        return state;
                test_sleep_ms(100);
        }
}

static bool strv_contains(char **v, const char *s) {
        for (size_t i = 0; v && v[i]; i++)
                if (streq(v[i], s))
                        return true;
        return false;
}

static size_t strv_length(char **v) {
        size_t n = 0;

        while (v && v[n])
                n++;
        return n;
}

/* The daemon's sessions: how many, and their sandboxes in all (sandbox_count: handles tracked). */
static int list_sessions(FrameClient *c, DaemonFrame **ret, unsigned *ret_sandboxes) {
        DaemonFrame *reply = NULL;
        DcError err = { 0 };
        unsigned n = 0;

        if (dc_list_sessions(c, &reply, &err) != 0) {
                diag("list sessions: %s", err.message);
                return -1;
        }
        for (size_t i = 0; i < reply->sessions->n_sessions; i++)
                n += reply->sessions->sessions[i]->sandbox_count;
        *ret = reply;
        *ret_sandboxes = n;
        return (int)reply->sessions->n_sessions;
}

static const Cwsandboxd__V1__Session *find_session(const DaemonFrame *list, const char *name) {
        for (size_t i = 0; list && i < list->sessions->n_sessions; i++)
                if (streq(list->sessions->sessions[i]->name, name))
                        return list->sessions->sessions[i];
        return NULL;
}

/* Close every session the daemon has; then nothing of ours may run. */
static void close_all(FrameClient *c, const char *what) {
        DaemonFrame *list = NULL;
        unsigned n = 0;
        bool closed = true;

        if (list_sessions(c, &list, &n) >= 0)
                for (size_t i = 0; i < list->sessions->n_sessions; i++) {
                        DcError err = { 0 };

                        if (dc_close_session(c, list->sessions->sessions[i]->session_id, NULL, NULL, &err) != 0) {
                                diag("%s: close %s: %s", what, list->sessions->sessions[i]->name, err.message);
                                closed = false;
                        }
                }
        frame_client_frame_free(list);
        ok(closed, "%s: every surviving session closes", what);
        is_int(restart_env_wait_live(&env, "cwsandboxd", 0, WAIT_MS), 0,
               "%s: nothing with the cwsandboxd tag runs on the backend afterwards", what);
}

/* ---- files ------------------------------------------------------------------------------------ */

static char *path_in(const char *dir, const char *name) {
        char *p;

        if (asprintf(&p, "%s/%s", dir, name) < 0)
                bail_out("out of memory");
        return p;
}

/* Read all of @path; NULL (errno set) when it cannot be read. */
static uint8_t *read_all(const char *path, size_t *ret_size) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        uint8_t *buf;
        size_t got = 0;

        if (fd < 0 || fstat(fd, &st) < 0)
                return NULL;
        buf = malloc((size_t)st.st_size + 1);
        if (!buf)
                bail_out("out of memory");
        while (got < (size_t)st.st_size) {
                ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                got += (size_t)n;
        }
        *ret_size = got;
        return buf;
}

static void write_all_or_bail(const char *path, const uint8_t *data, size_t size) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        if (fd < 0)
                bail_out("open %s: %m", path);
        while (size > 0) {
                ssize_t n = write(fd, data, size);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        bail_out("write %s: %m", path);
                data += n;
                size -= (size_t)n;
        }
}

/* ---- the ledger as it is on disk (see ledger.proto) ------------------------------------------- */

typedef struct LedgerImage {
        uint8_t *data;
        size_t size;
        size_t n;
        size_t offset[MAX_RECORDS];             /* of each record's frame */
        uint32_t length[MAX_RECORDS];           /* of its payload */
        Cwsandboxd__V1__LedgerRecord *rec[MAX_RECORDS];
} LedgerImage;

static uint32_t le32(const uint8_t *p) {
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Read and split the ledger a clean shutdown wrote; false if it is not one. */
static bool ledger_image_read(const char *path, LedgerImage *img) {
        size_t off = LEDGER_HEADER_BYTES;

        *img = (LedgerImage) { 0 };
        img->data = read_all(path, &img->size);
        if (!img->data || img->size < LEDGER_HEADER_BYTES || memcmp(img->data, "CWSDLDG1", LEDGER_HEADER_BYTES) != 0)
                return false;
        while (off + RECORD_FRAME_BYTES <= img->size && img->n < MAX_RECORDS) {
                uint32_t len = le32(img->data + off);

                if (len > img->size - off - RECORD_FRAME_BYTES)
                        return false;
                img->offset[img->n] = off;
                img->length[img->n] = len;
                img->rec[img->n] = cwsandboxd__v1__ledger_record__unpack(NULL, len,
                                                                          img->data + off + RECORD_FRAME_BYTES);
                if (!img->rec[img->n])
                        return false;
                img->n++;
                off += RECORD_FRAME_BYTES + len;
        }
        return off == img->size;
}

static void ledger_image_free(LedgerImage *img) {
        for (size_t i = 0; i < img->n; i++)
                cwsandboxd__v1__ledger_record__free_unpacked(img->rec[i], NULL);
        free(img->data);
        *img = (LedgerImage) { 0 };
}

/* ---- damaged ledgers -------------------------------------------------------------------------- */

typedef enum Damage {
        DAMAGE_TORN,            /* cut in the middle of the last record */
        DAMAGE_FLIPPED,         /* one byte of the last record's payload flipped */
        DAMAGE_EMPTY,           /* 0 bytes */
        DAMAGE_GARBAGE,         /* not a ledger: wrong magic */
} Damage;

static const struct {
        const char *name;
        const char *word;       /* what state_file_status must say */
        bool keeps_last_but_one;
} damages[] = {
        [DAMAGE_TORN] = { "torn", "torn", true },
        [DAMAGE_FLIPPED] = { "flipped", "corrupt", true },
        [DAMAGE_EMPTY] = { "empty", "empty", false },
        [DAMAGE_GARBAGE] = { "garbage", "corrupt", false },
};

/* The damaged file's bytes; for torn and flipped every record but the last survives. */
static uint8_t *damage_bytes(const LedgerImage *img, Damage kind, size_t *ret_size) {
        static const char garbage[] = "this is not a ledger, only some text where one should be\n";
        size_t last = img->n - 1, mid = img->offset[last] + RECORD_FRAME_BYTES + img->length[last] / 2;
        uint8_t *out = malloc(img->size + sizeof(garbage));

        if (!out)
                bail_out("out of memory");
        memcpy(out, img->data, img->size);
        switch (kind) {
        case DAMAGE_TORN:
                *ret_size = mid;
                break;
        case DAMAGE_FLIPPED:
                out[mid] ^= 0x5a;
                *ret_size = img->size;
                break;
        case DAMAGE_EMPTY:
                *ret_size = 0;
                break;
        case DAMAGE_GARBAGE:
                memcpy(out, garbage, sizeof(garbage) - 1);
                *ret_size = sizeof(garbage) - 1;
                break;
        }
        return out;
}

static void test_damaged(Damage kind) {
        const char *name = damages[kind].name;
        DaemonProc *d = restart_env_daemon(&env, REAP_S, NULL);
        FrameClient *c = restart_env_client(d);
        _cleanup_free_ char *sid = attach(c, name), *ledger = path_in(d->state_dir, "ledger");
        _cleanup_free_ char *bad_path = path_in(d->state_dir, "ledger.bad"), *status = NULL;
        _cleanup_free_ uint8_t *damaged = NULL, *bad = NULL;
        const Cwsandboxd__V1__LedgerHandle *kept = NULL, *lost = NULL;
        const Cwsandboxd__V1__Session *s;
        DaemonFrame *list = NULL;
        LedgerImage img;
        DcInfo a, b, got;
        DcError err = { 0 };
        size_t damaged_size = 0, bad_size = 0;
        unsigned tracked = 0;
        char **live = NULL;
        int n_live;

        must_run(c, sid, SCOPE(SESSION), &a);
        must_run(c, sid, SCOPE(SESSION), &b);
        frame_client_free(c);
        sigterm(d, name);

        /* A clean stop writes one session record, then one per handle. */
        if (!ok(ledger_image_read(ledger, &img) && img.n == 3 && img.rec[0]->op_case == ROP(SESSION_PUT) &&
                img.rec[1]->op_case == ROP(HANDLE_PUT) && img.rec[2]->op_case == ROP(HANDLE_PUT),
                "%s: the ledger written at SIGTERM holds the session and its two handles", name))
                bail_out("%s: unexpected ledger (%zu bytes, %zu records)", name, img.size, img.n);
        kept = img.rec[1]->handle_put;
        lost = img.rec[2]->handle_put;
        damaged = damage_bytes(&img, kind, &damaged_size);
        write_all_or_bail(ledger, damaged, damaged_size);

        restart_env_restart(d, name);
        c = restart_env_client(d);
        status = state_status(c);
        diag("%s: state_file_status: %s", name, status ? status : "(none)");
        ok(status && strstr(status, damages[kind].word), "%s: status says the ledger was %s", name,
           damages[kind].word);
        bad = read_all(bad_path, &bad_size);
        ok(bad && bad_size == damaged_size && memcmp(bad, damaged, damaged_size) == 0,
           "%s: the damaged file is kept as ledger.bad", name);

        /* What the readable records own stays; what only lost records named is reaped. */
        n_live = restart_env_wait_live(&env, "cwsandboxd", damages[kind].keeps_last_but_one ? 1 : 0, WAIT_MS);
        ok(wait_metric(c, "cwsandboxd_orphans_reaped_total", true, damages[kind].keeps_last_but_one ? 1 : 2) >=
           (damages[kind].keeps_last_but_one ? 1 : 2), "%s: the sandboxes of lost records are reaped", name);
        is_int(list_sessions(c, &list, &tracked), damages[kind].keeps_last_but_one ? 1 : 0,
               "%s: sessions the daemon restored", name);
        is_int(n_live, (int)tracked, "%s: the backend runs exactly the sandboxes the restored sessions track", name);
        (void)restart_env_live(&env, "cwsandboxd", &live);
        if (damages[kind].keeps_last_but_one) {
                s = find_session(list, name);
                ok(s && streq(s->session_id, sid) && s->sandbox_count == 1,
                   "%s: the session is back with the one handle its readable records name", name);
                ok(strv_length(live) == 1 && strv_contains(live, kept->sandbox_id),
                   "%s: the sandbox still running is that handle's", name);
                ok(!strv_contains(live, lost->sandbox_id), "%s: the lost handle's sandbox is gone", name);
                is_int(dc_get(c, kept->id, false, &got, &err), 0, "%s: the kept handle answers", name);
                is_str(got.sandbox_id, kept->sandbox_id, "%s: with its sandbox", name);
        } else {
                ok(!find_session(list, name), "%s: the session is gone with its records", name);
                ok(strv_length(live) == 0, "%s: both of its sandboxes were reaped", name);
        }
        test_strv_free(live);
        frame_client_frame_free(list);
        close_all(c, name);
        frame_client_free(c);

        /* The daemon rewrote the ledger when it started: the next start finds it sound. */
        sigterm(d, name);
        restart_env_restart(d, name);
        c = restart_env_client(d);
        free(status);
        status = state_status(c);
        is_str(status, "ok", "%s: a later restart finds a sound ledger", name);
        frame_client_free(c);
        ledger_image_free(&img);
        daemon_proc_free(d);
}

/* ---- DeleteSandbox failing for a while -------------------------------------------------------- */

static void fail_deletes(unsigned times) {
        Cwsandboxlocal__V1__Fault fault = CWSANDBOXLOCAL__V1__FAULT__INIT;
        BcStatus st;

        fault.method = (char *)"DeleteSandbox";
        fault.error_rate = 1;
        fault.error_code = GRPC_STATUS_UNAVAILABLE;
        fault.remaining = times;
        if (bc_set_faults(env.backend.client, times ? &fault : NULL, times ? 1 : 0, &st) != 0)
                bail_out("set faults: %s", st.details);
}

static void test_close_while_deletes_fail(void) {
        DaemonProc *d = restart_env_daemon(&env, REAP_S, NULL);
        FrameClient *c = restart_env_client(d);
        _cleanup_free_ char *sid = attach(c, "delete-faults");
        unsigned stopped = 0, failed = 0;
        DcError err = { 0 };
        DcInfo a;
        int r;

        must_run(c, sid, SCOPE(SESSION), &a);
        fail_deletes(3);
        r = dc_close_session(c, sid, &stopped, &failed, &err);
        diag("close while DeleteSandbox fails: code %d, stopped %u, failures %u%s%s", r, stopped, failed,
             r != 0 ? ": " : "", r != 0 ? err.message : "");
        ok(r == 0 && stopped + failed == 1, "delete faults: the close answers for its one sandbox");
        is_int(wait_backend_terminal(a.sandbox_id), BC_STATE(TERMINATED),
               "delete faults: the sandbox ends TERMINATED on the backend anyway");
        ok(metric(c, "cwsandboxd_stop_failures_total") >= 1, "delete faults: stop_failures counts the failures (%g)",
           metric(c, "cwsandboxd_stop_failures_total"));
        ok(metric(c, "cwsandboxd_stop_retries_total") >= 1, "delete faults: the stop was retried (%g)",
           metric(c, "cwsandboxd_stop_retries_total"));
        is_int((int)wait_metric(c, "cwsandboxd_stops_pending", false, 0), 0, "delete faults: no stop left pending");
        is_int(restart_env_live(&env, "cwsandboxd", NULL), 0, "delete faults: nothing left on the backend");
        fail_deletes(0);
        frame_client_free(c);
        daemon_proc_free(d);
}

static void test_orphan_while_deletes_fail(void) {
        DaemonProc *d = restart_env_daemon(&env, REAP_S, NULL);
        FrameClient *c = restart_env_client(d);
        _cleanup_free_ char *sid = attach(c, "orphan-faults");
        DcInfo orphan;

        /* Its connection dies with the daemon: after the restart it is an orphan. */
        must_run(c, sid, SCOPE(CONNECTION), &orphan);
        restart_env_kill9(d);
        frame_client_free(c);
        fail_deletes(3);
        restart_env_restart(d, "orphan-faults");
        c = restart_env_client(d);
        is_int(wait_backend_terminal(orphan.sandbox_id), BC_STATE(TERMINATED),
               "orphan faults: the orphan ends TERMINATED though DeleteSandbox failed");
        ok(metric(c, "cwsandboxd_orphans_reaped_total") >= 1, "orphan faults: counted as reaped");
        ok(metric(c, "cwsandboxd_stop_failures_total") >= 1, "orphan faults: stop_failures counts the failures (%g)",
           metric(c, "cwsandboxd_stop_failures_total"));
        is_int((int)wait_metric(c, "cwsandboxd_stops_pending", false, 0), 0, "orphan faults: no stop left pending");
        fail_deletes(0);
        close_all(c, "orphan faults");
        frame_client_free(c);
        daemon_proc_free(d);
}

/* ---- max lifetime ----------------------------------------------------------------------------- */

static void test_max_lifetime(void) {
        DaemonProc *d = restart_env_daemon(&env, REAP_S, NULL);
        FrameClient *c = restart_env_client(d);
        _cleanup_free_ char *keep_sid = attach(c, "no-lifetime"), *life_sid = NULL, *life_tag = NULL;
        _cleanup_free_ char *keep_tag = NULL;
        DaemonFrame *list = NULL;
        const Cwsandboxd__V1__Session *s;
        DcError err = { 0 };
        DcInfo keep, life;
        unsigned tracked = 0;
        int64_t t0, t_end = 0;
        bool early = false;
        double passes;
        int n = 1;

        must_run(c, keep_sid, SCOPE(SESSION), &keep);
        if (attach_lifetime(c, "lifetime", LIFETIME_S, &life_sid, &err) != 0)
                bail_out("attach with a max lifetime: %s", err.message);
        life_tag = session_tag(life_sid);
        keep_tag = session_tag(keep_sid);
        t0 = test_mono_ms();
        /* It may be stopped before a wait for RUNNING returns: that is not an error here. */
        if (!make_running(c, life_sid, SCOPE(SESSION), &life))
                diag("lifetime: the wait for RUNNING did not succeed");
        for (int64_t end = t0 + WAIT_MS; n != 0 && test_mono_ms() < end;) {
                n = restart_env_live(&env, life_tag, NULL);
                t_end = test_mono_ms();
                /* Gone by a moment when it cannot yet have been that old: stopped too early. */
                if (n == 0 && t_end - t0 < LIFETIME_S * 1000)
                        early = true;
                if (n != 0)
                        test_sleep_ms(100);
        }
        is_int(n, 0, "lifetime: the sandbox of the session with a %d s max lifetime is stopped", LIFETIME_S);
        diag("lifetime: gone from the backend %lld ms after its create was sent", (long long)(t_end - t0));
        ok(!early, "lifetime: not before it was %d s old", LIFETIME_S);
        ok(metric(c, "cwsandboxd_lifetime_stops_total") >= 1, "lifetime: lifetime_stops counts it");

        /* Two more passes: the older sandbox of the session without a max lifetime stays. */
        passes = metric(c, "cwsandboxd_reconcile_passes_total");
        ok(wait_metric(c, "cwsandboxd_reconcile_passes_total", true, passes + 2) >= passes + 2,
           "lifetime: two more reconcile passes ran");
        is_int(restart_env_live(&env, keep_tag, NULL), 1,
               "lifetime: the session without a max lifetime keeps its sandbox");
        is_int(backend_state(keep.sandbox_id), BC_STATE(RUNNING), "lifetime: which is RUNNING");
        (void)list_sessions(c, &list, &tracked);
        s = find_session(list, "no-lifetime");
        ok(s && s->sandbox_count == 1, "lifetime: and still tracks it");
        s = find_session(list, "lifetime");
        ok(s && s->sandbox_count == 0, "lifetime: the stopped one left its session");
        frame_client_frame_free(list);
        close_all(c, "lifetime");
        frame_client_free(c);
        daemon_proc_free(d);
}

/* ---- a full or read-only state directory ------------------------------------------------------ */

/* Before any thread: mounts made from here on stay in this process and its children. */
static bool private_mounts(void) {
        if (geteuid() != 0) {
                snprintf(no_mounts_reason, sizeof(no_mounts_reason), "needs root");
                return false;
        }
        if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
                snprintf(no_mounts_reason, sizeof(no_mounts_reason), "no private mount namespace: %m");
                return false;
        }
        return true;
}

/* A small tmpfs over the (stopped) daemon's state directory, holding the ledger it had. */
static void mount_state_tmpfs(DaemonProc *d) {
        _cleanup_free_ char *ledger = path_in(d->state_dir, "ledger");
        _cleanup_free_ uint8_t *data = NULL;
        size_t size = 0;

        data = read_all(ledger, &size);
        if (mount("tmpfs", d->state_dir, "tmpfs", MS_NOSUID | MS_NODEV, TMPFS_OPTIONS) < 0)
                bail_out("mount tmpfs on %s: %m", d->state_dir);
        if (data)
                write_all_or_bail(ledger, data, size);
}

/* Fill the state directory's file system; returns 0 once a write got ENOSPC. */
static int fill(const char *path) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        char chunk[16384];

        if (fd < 0)
                return -errno;
        memset(chunk, 'f', sizeof(chunk));
        for (;;) {
                ssize_t n = write(fd, chunk, sizeof(chunk));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return errno == ENOSPC ? 0 : -errno;
        }
}

/* Session defaults with a big environment variable, so its records need fresh pages on disk. */
typedef struct PadDefaults {
        Cwsandboxd__V1__SandboxDefaults defaults;
        Cwsandboxd__V1__SandboxDefaults__EnvironmentVariablesEntry entry, *entries[1];
        char value[PAD_BYTES + 1];
} PadDefaults;

static Cwsandboxd__V1__SandboxDefaults *pad_defaults(PadDefaults *p) {
        cwsandboxd__v1__sandbox_defaults__init(&p->defaults);
        cwsandboxd__v1__sandbox_defaults__environment_variables_entry__init(&p->entry);
        memset(p->value, 'p', PAD_BYTES);
        p->value[PAD_BYTES] = 0;
        p->entry.key = (char *)"LEDGER_PAD";
        p->entry.value = p->value;
        p->entries[0] = &p->entry;
        p->defaults.environment_variables = p->entries;
        p->defaults.n_environment_variables = 1;
        return &p->defaults;
}

/* CPU time (user + system, clock ticks) of process @pid so far, or -1. */
static long long cpu_ticks(pid_t pid) {
        _cleanup_free_ char *path = NULL;
        unsigned long utime = 0, stime = 0;
        char buf[1024], *p;
        FILE *f;

        if (asprintf(&path, "/proc/%d/stat", (int)pid) < 0)
                bail_out("out of memory");
        f = fopen(path, "re");
        if (!f)
                return -1;
        p = fgets(buf, sizeof(buf), f);
        fclose(f);
        /* After the command name in parentheses: state, then fields 4..13, then utime and stime. */
        p = p ? strrchr(buf, ')') : NULL;
        if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
                return -1;
        return (long long)(utime + stime);
}

/*
 * A failed write is retried every 2 s: over a quiet window a correct daemon
 * fails about once per 2 s, never more than once a second, however slow the
 * machine.
 */
static void check_retry_pace(DaemonProc *d, FrameClient *c, const char *what) {
        int64_t t0 = test_mono_ms(), t1;
        double e0 = metric(c, "cwsandboxd_ledger_write_errors_total"), e1;
        long long cpu0 = cpu_ticks(d->pid), cpu1;

        test_sleep_ms(3000);
        e1 = metric(c, "cwsandboxd_ledger_write_errors_total");
        cpu1 = cpu_ticks(d->pid);
        t1 = test_mono_ms();
        diag("%s: %g failed ledger writes and %lld ticks of daemon CPU time in %lld ms with nothing to do", what,
             e1 - e0, cpu1 - cpu0, (long long)(t1 - t0));
        ok(e1 - e0 <= (double)(t1 - t0) / 1000 + 1, "%s: failed writes are retried every few seconds, not back "
           "to back", what);
}

/*
 * While the ledger cannot be written: a session and two sandboxes are made
 * and work, status names @why, the daemon counts the errors and lives. Then
 * @recover makes the directory writable, the ledger recovers, and a kill -9
 * shows what was made in between was written.
 */
static void work_while_unwritable(DaemonProc *d, const char *what, const char *why,
                                  void (*recover)(DaemonProc *d)) {
        static PadDefaults pad;
        FrameClient *c = restart_env_client(d);
        _cleanup_free_ char *sid = NULL, *sid2 = NULL, *status = NULL, *out = NULL;
        DaemonFrame *list = NULL;
        const Cwsandboxd__V1__Session *s;
        DcError err = { 0 };
        DcInfo a, b, got;
        bool created = true;
        unsigned tracked = 0;
        double e0 = metric(c, "cwsandboxd_ledger_write_errors_total");
        int code = -1;

        is_int(dc_attach(c, what, pad_defaults(&pad), -1, &sid, NULL, &err), 0, "%s: attach a session", what);
        ok(sid && make_running(c, sid, SCOPE(SESSION), &a), "%s: a sandbox is made and runs", what);
        ok(sid && make_running(c, sid, SCOPE(SESSION), &b), "%s: a second one too", what);
        is_int(dc_exec(c, a.handle_id, (const char *const[]) { "echo", "working", NULL }, &out, NULL, &code, &err),
               0, "%s: exec works", what);
        ok(out && strstr(out, "working") && code == 0, "%s: with its output", what);
        status = wait_state_status(c, why, false);
        diag("%s: state_file_status: %s", what, status ? status : "(none)");
        ok(status && strstr(status, "cannot write") && strstr(status, why), "%s: status says the ledger cannot be "
           "written: %s", what, why);
        ok(metric(c, "cwsandboxd_ledger_write_errors_total") >= 1, "%s: ledger_write_errors counts it (%g, %g before)",
           what, metric(c, "cwsandboxd_ledger_write_errors_total"), e0);
        is_int(daemon_proc_signal(d, 0), 0, "%s: the daemon is alive", what);
        check_retry_pace(d, c, what);

        recover(d);
        free(status);
        status = wait_state_status(c, "ok", true);
        is_str(status, "ok", "%s: once it can write again status is ok", what);
        frame_client_free(c);

        /* What was made while it could not write must have been written by the recovery. */
        restart_env_kill9(d);
        restart_env_restart(d, what);
        c = restart_env_client(d);
        is_int(dc_attach(c, what, NULL, -1, &sid2, &created, &err), 0, "%s: attach after kill -9", what);
        ok(sid && sid2 && streq(sid, sid2) && !created, "%s: the session made while the ledger failed is back", what);
        (void)list_sessions(c, &list, &tracked);
        s = find_session(list, what);
        ok(s && s->sandbox_count == 2, "%s: with both of its sandboxes", what);
        frame_client_frame_free(list);
        is_int(dc_get(c, b.handle_id, false, &got, &err), 0, "%s: a handle made then answers", what);
        is_str(got.sandbox_id, b.sandbox_id, "%s: with its sandbox", what);
        is_int(restart_env_live(&env, "cwsandboxd", NULL), 2, "%s: the backend runs exactly the two", what);
        close_all(c, what);
        frame_client_free(c);
}

static char *filler_path;

static void remove_filler(DaemonProc *d) {
        ok(unlink(filler_path) == 0, "full disk: the filler is removed");
}

static void remount_rw(DaemonProc *d) {
        ok(mount(NULL, d->state_dir, NULL, MS_REMOUNT | MS_NOSUID | MS_NODEV, TMPFS_OPTIONS) == 0,
           "read-only: the state directory is writable again");
}

static void test_unwritable(void) {
        DaemonProc *d = restart_env_daemon(&env, REAP_S, NULL);
        FrameClient *c;
        _cleanup_free_ char *status = NULL;
        int r;

        sigterm(d, "full disk");
        mount_state_tmpfs(d);
        restart_env_restart(d, "full disk");
        c = restart_env_client(d);
        status = state_status(c);
        is_str(status, "ok", "full disk: on its small tmpfs the daemon starts with a sound ledger");
        frame_client_free(c);
        filler_path = path_in(d->state_dir, "filler");
        r = fill(filler_path);
        if (!is_int(r, 0, "full disk: the state directory is filled up (ENOSPC)"))
                diag("fill: %s", strerror(-r));
        work_while_unwritable(d, "full disk", "No space left on device", remove_filler);

        /*
         * The kernel refuses to make a file system read-only while a file on it
         * is open for writing, and the daemon keeps its ledger open for
         * appends: so it is stopped, and starts on the read-only directory.
         */
        sigterm(d, "read-only");
        if (mount(NULL, d->state_dir, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, TMPFS_OPTIONS) < 0)
                bail_out("remount %s read-only: %m", d->state_dir);
        r = daemon_proc_restart(d);
        if (!is_int(r, 0, "read-only: the daemon starts on a read-only state directory"))
                bail_out("read-only: cannot restart cwsandboxd: %s", strerror(-r));
        work_while_unwritable(d, "read-only", "Read-only file system", remount_rw);

        sigterm(d, "read-only");
        if (umount2(d->state_dir, MNT_DETACH) < 0)
                diag("umount %s: %m", d->state_dir);
        free(filler_path);
        filler_path = NULL;
        daemon_proc_free(d);
}

int main(void) {
        bool mounts = private_mounts();

        signal(SIGPIPE, SIG_IGN);
        restart_env_start(&env);
        test_damaged(DAMAGE_TORN);
        test_damaged(DAMAGE_FLIPPED);
        test_damaged(DAMAGE_EMPTY);
        test_damaged(DAMAGE_GARBAGE);
        test_close_while_deletes_fail();
        test_orphan_while_deletes_fail();
        test_max_lifetime();
        if (mounts)
                test_unwritable();
        else {
                tap_skip(no_mounts_reason, "full disk: reported, work goes on, recovery");
                tap_skip(no_mounts_reason, "read-only state directory: reported, work goes on, recovery");
        }
        restart_env_stop(&env);
        return done();
}
