/*
 * Unit test of ledger.c: records round trip and replay (put replaces, del
 * removes, handles of a closed session are dropped); every truncation of a
 * good file and every flipped byte of a record is detected and the records
 * before it kept; missing, empty and foreign files; the writer on a real
 * loop: compaction, group-committed appends whose waiters run only once the
 * record is on disk, the state taken at close, a failing directory reported
 * and retried until it works. Prints TAP.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "ledger.h"
#include "macro.h"
#include "tap.h"

static char dir[] = "/tmp/cwsandboxd-ledger-XXXXXX";

/* ---- building records --------------------------------------------------------------------- */

static void add_session(uint8_t **buf, size_t *len, size_t *cap, const char *id, const char *name) {
        LedgerRecord rec = CWSANDBOXD__V1__LEDGER_RECORD__INIT;
        LedgerSession s = CWSANDBOXD__V1__LEDGER_SESSION__INIT;

        s.id = (char *)id;
        s.name = (char *)name;
        s.owner_uid = 1000;
        s.linger_seconds = 30;
        rec.op_case = CWSANDBOXD__V1__LEDGER_RECORD__OP_SESSION_PUT;
        rec.session_put = &s;
        if (ledger_encode(&rec, buf, len, cap) < 0)
                bail_out("encode");
}

static void add_handle(uint8_t **buf, size_t *len, size_t *cap, const char *id, const char *session,
                       const char *sandbox) {
        LedgerRecord rec = CWSANDBOXD__V1__LEDGER_RECORD__INIT;
        LedgerHandle h = CWSANDBOXD__V1__LEDGER_HANDLE__INIT;
        char *tags[] = { (char *)"cwsandboxd", (char *)"team-a" };
        uint8_t request[] = { 0x0a, 0x00, 0x12, 0x03, 'a', 'b', 'c' };

        h.id = (char *)id;
        h.session_id = (char *)session;
        h.sandbox_id = (char *)sandbox;
        h.image = (char *)"python:3.11";
        h.tags = tags;
        h.n_tags = 2;
        h.request_id = (char *)"req-1";
        h.create_request.data = request;
        h.create_request.len = sizeof(request);
        rec.op_case = CWSANDBOXD__V1__LEDGER_RECORD__OP_HANDLE_PUT;
        rec.handle_put = &h;
        if (ledger_encode(&rec, buf, len, cap) < 0)
                bail_out("encode");
}

static void add_del(uint8_t **buf, size_t *len, size_t *cap, bool session, const char *id) {
        LedgerRecord rec = CWSANDBOXD__V1__LEDGER_RECORD__INIT;

        rec.op_case = session ? CWSANDBOXD__V1__LEDGER_RECORD__OP_SESSION_DEL :
                                CWSANDBOXD__V1__LEDGER_RECORD__OP_HANDLE_DEL;
        if (session)
                rec.session_del = (char *)id;
        else
                rec.handle_del = (char *)id;
        if (ledger_encode(&rec, buf, len, cap) < 0)
                bail_out("encode");
}

static char *path_of(const char *name) {
        char *p;

        if (asprintf(&p, "%s/%s", dir, name) < 0)
                bail_out("out of memory");
        return p;
}

static void write_file(const char *path, const void *data, size_t n) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        if (fd < 0 || (n && write(fd, data, n) != (ssize_t)n))
                bail_out("write %s: %m", path);
        close(fd);
}

/* A good file: magic, then records; *@ends gets the end offset of each record. */
static uint8_t *good_file(size_t *ret_len, size_t *ends, size_t *ret_n) {
        uint8_t *buf = NULL;
        size_t len = 0, cap = 0, n = 0;

        if (!(buf = malloc(8)))
                bail_out("out of memory");
        memcpy(buf, LEDGER_MAGIC, 8);
        len = cap = 8;
#define REC(x) do { x; ends[n++] = len; } while (0)
        REC(add_session(&buf, &len, &cap, "s-1", "run-one"));
        REC(add_handle(&buf, &len, &cap, "h-1", "s-1", ""));
        REC(add_handle(&buf, &len, &cap, "h-1", "s-1", "sb-1"));
        REC(add_session(&buf, &len, &cap, "s-2", "run-two"));
        REC(add_handle(&buf, &len, &cap, "h-2", "s-2", "sb-2"));
        REC(add_handle(&buf, &len, &cap, "h-3", "s-1", "sb-3"));
        REC(add_del(&buf, &len, &cap, false, "h-3"));
        REC(add_del(&buf, &len, &cap, true, "s-2"));
#undef REC
        *ret_len = len;
        *ret_n = n;
        return buf;
}

static const LedgerHandle *find_handle(const LedgerContents *c, const char *id) {
        for (size_t i = 0; i < c->n_handles; i++)
                if (strcmp(c->handles[i]->id, id) == 0)
                        return c->handles[i];
        return NULL;
}

/* ---- loading ------------------------------------------------------------------------------ */

static void test_round_trip(void) {
        _cleanup_free_ char *path = path_of("ledger");
        size_t len, ends[16], n;
        _cleanup_free_ uint8_t *buf = good_file(&len, ends, &n);
        const LedgerHandle *h;
        LedgerContents c;

        write_file(path, buf, len);
        is_int(ledger_load(path, &c), 0, "round trip: load");
        is_int(c.result, LEDGER_LOAD_OK, "round trip: OK");
        is_int(c.records, n, "round trip: every record replayed");
        is_int(c.n_sessions, 1, "round trip: s-2 was deleted, s-1 is left");
        ok(c.n_sessions == 1 && strcmp(c.sessions[0]->name, "run-one") == 0 && c.sessions[0]->owner_uid == 1000 &&
           c.sessions[0]->linger_seconds == 30, "round trip: the session's fields");
        is_int(c.n_handles, 1, "round trip: h-3 deleted, h-2 dropped with its session");
        h = find_handle(&c, "h-1");
        ok(h && strcmp(h->sandbox_id, "sb-1") == 0, "round trip: the second put of h-1 replaced the first");
        ok(h && h->n_tags == 2 && strcmp(h->tags[1], "team-a") == 0 && strcmp(h->image, "python:3.11") == 0 &&
           h->create_request.len == 7 && memcmp(h->create_request.data + 4, "abc", 3) == 0,
           "round trip: tags, image and request bytes");
        ok(strstr(c.report, "1 session") && strstr(c.report, "1 sandbox handle"), "round trip: report: %s", c.report);
        ledger_contents_free(&c);
}

static void test_odd_files(void) {
        _cleanup_free_ char *missing = path_of("nothing-here"), *empty = path_of("empty"), *foreign = path_of("foreign"),
                            *prefix = path_of("prefix");
        LedgerContents c;

        is_int(ledger_load(missing, &c), 0, "missing: load");
        is_int(c.result, LEDGER_LOAD_NONE, "missing: NONE");
        ledger_contents_free(&c);
        write_file(empty, "", 0);
        is_int(ledger_load(empty, &c), 0, "empty: load");
        is_int(c.result, LEDGER_LOAD_EMPTY, "empty: EMPTY");
        ledger_contents_free(&c);
        write_file(foreign, "#!/bin/sh\necho hello\n", 21);
        is_int(ledger_load(foreign, &c), 0, "foreign: load");
        is_int(c.result, LEDGER_LOAD_CORRUPT, "foreign: CORRUPT (bad magic)");
        ok(strstr(c.report, "magic") != NULL, "foreign: report: %s", c.report);
        ledger_contents_free(&c);
        write_file(prefix, LEDGER_MAGIC, 5);
        is_int(ledger_load(prefix, &c), 0, "prefix of the magic: load");
        is_int(c.result, LEDGER_LOAD_TORN, "prefix of the magic: TORN");
        ledger_contents_free(&c);
        is_int(ledger_load(dir, &c), 0, "a directory: load");
        is_int(c.result, LEDGER_LOAD_UNREADABLE, "a directory: UNREADABLE");
        ledger_contents_free(&c);
}

/* Records whole in the first @cut bytes. */
static size_t whole_records(const size_t *ends, size_t n, size_t cut) {
        size_t k = 0;

        while (k < n && ends[k] <= cut)
                k++;
        return k;
}

static void test_every_truncation(void) {
        _cleanup_free_ char *path = path_of("torn");
        size_t len, ends[16], n, wrong = 0;
        _cleanup_free_ uint8_t *buf = good_file(&len, ends, &n);

        for (size_t cut = 8; cut < len; cut++) {
                size_t want = whole_records(ends, n, cut);
                bool boundary = cut == 8 || (want > 0 && ends[want - 1] == cut);
                LedgerContents c;

                write_file(path, buf, cut);
                if (ledger_load(path, &c) < 0 || c.records != want ||
                    c.result != (boundary ? LEDGER_LOAD_OK : LEDGER_LOAD_TORN) ||
                    c.bytes_dropped != cut - (want ? ends[want - 1] : 8)) {
                        if (wrong++ < 3)
                                diag("cut at %zu: %zu records, result %d, dropped %llu", cut, c.records, c.result,
                                     (unsigned long long)c.bytes_dropped);
                }
                ledger_contents_free(&c);
        }
        is_int(wrong, 0, "every truncation of a %zu-byte ledger keeps the whole records before it", len);
}

static void test_every_flip(void) {
        _cleanup_free_ char *path = path_of("flipped");
        size_t len, ends[16], n, wrong = 0, middle_wrong = 0;
        _cleanup_free_ uint8_t *buf = good_file(&len, ends, &n);

        /* Every byte of the last record, header included. */
        for (size_t i = ends[n - 2]; i < len; i++) {
                LedgerContents c;

                buf[i] ^= 0x40;
                write_file(path, buf, len);
                buf[i] ^= 0x40;
                if (ledger_load(path, &c) < 0 || c.records != n - 1 ||
                    (c.result != LEDGER_LOAD_CORRUPT && c.result != LEDGER_LOAD_TORN)) {
                        if (wrong++ < 3)
                                diag("flip at %zu: %zu records, result %d", i, c.records, c.result);
                }
                ledger_contents_free(&c);
        }
        is_int(wrong, 0, "every flipped byte of the last record is detected; the others are kept");

        /* A byte inside the payload of the third record: it and all after it go. */
        for (size_t i = ends[1] + 8; i < ends[2]; i++) {
                LedgerContents c;

                buf[i] ^= 0x01;
                write_file(path, buf, len);
                buf[i] ^= 0x01;
                if (ledger_load(path, &c) < 0 || c.records != 2 || c.result != LEDGER_LOAD_CORRUPT ||
                    !strstr(c.report, "checksum"))
                        middle_wrong++;
                ledger_contents_free(&c);
        }
        is_int(middle_wrong, 0, "a flipped payload byte in a middle record: checksum mismatch, two records kept");
}

static void test_bad_records(void) {
        _cleanup_free_ char *path = path_of("bad");
        uint8_t buf[32];
        LedgerContents c;

        memcpy(buf, LEDGER_MAGIC, 8);
        memset(buf + 8, 0xff, 8);
        write_file(path, buf, 16);
        is_int(ledger_load(path, &c), 0, "length 0xffffffff: load");
        is_int(c.result, LEDGER_LOAD_CORRUPT, "length 0xffffffff: CORRUPT");
        ledger_contents_free(&c);

        /* An empty payload is valid protobuf but names no operation. */
        memset(buf + 8, 0, 4);
        buf[12] = 0x00, buf[13] = 0x00, buf[14] = 0x00, buf[15] = 0x00;
        /* CRC-32C of nothing is 0. */
        write_file(path, buf, 16);
        is_int(ledger_load(path, &c), 0, "no operation: load");
        is_int(c.result, LEDGER_LOAD_CORRUPT, "no operation: CORRUPT");
        ok(strstr(c.report, "undecodable") != NULL, "no operation: report: %s", c.report);
        ledger_contents_free(&c);
}

/* ---- the writer --------------------------------------------------------------------------- */

typedef struct World {
        int sessions;                   /* the snapshot writes s-0 .. s-(n-1) */
        int synced;
        int sync_error;
        int records_seen_at_sync;       /* what a load found inside the sync callback */
        char *path;
} World;

static void snapshot(void *userdata, Ledger *l) {
        World *w = userdata;

        for (int i = 0; i < w->sessions; i++) {
                LedgerRecord rec = CWSANDBOXD__V1__LEDGER_RECORD__INIT;
                LedgerSession s = CWSANDBOXD__V1__LEDGER_SESSION__INIT;
                char id[16];

                snprintf(id, sizeof(id), "s-%d", i);
                s.id = id;
                s.name = id;
                rec.op_case = CWSANDBOXD__V1__LEDGER_RECORD__OP_SESSION_PUT;
                rec.session_put = &s;
                ledger_snapshot_add(l, &rec);
        }
}

static uint64_t append_session(Ledger *l, const char *id) {
        LedgerRecord rec = CWSANDBOXD__V1__LEDGER_RECORD__INIT;
        LedgerSession s = CWSANDBOXD__V1__LEDGER_SESSION__INIT;

        s.id = (char *)id;
        s.name = (char *)id;
        rec.op_case = CWSANDBOXD__V1__LEDGER_RECORD__OP_SESSION_PUT;
        rec.session_put = &s;
        return ledger_append(l, &rec);
}

static void synced(void *userdata, int error) {
        World *w = userdata;
        LedgerContents c;

        w->synced++;
        w->sync_error = error;
        if (error == 0 && ledger_load(w->path, &c) == 0) {
                w->records_seen_at_sync = (int)c.n_sessions;
                ledger_contents_free(&c);
        }
}

static void closed(void *userdata) {
        *(bool *)userdata = true;
}

static size_t sessions_on_disk(const char *path) {
        LedgerContents c;
        size_t n = 0;

        if (ledger_load(path, &c) == 0)
                n = c.n_sessions;
        ledger_contents_free(&c);
        return n;
}

static void test_writer(void) {
        _cleanup_free_ char *path = path_of("ledger-w");
        char sub[256];
        World w = { .sessions = 3 };
        uv_loop_t loop;
        Ledger *l = NULL;
        bool done_closing = false;
        uint64_t seq = 0;

        snprintf(sub, sizeof(sub), "%s/w", dir);
        if (mkdir(sub, 0700) < 0)
                bail_out("mkdir: %m");
        free(path);
        path = NULL;
        if (asprintf(&path, "%s/" LEDGER_FILE, sub) < 0)
                bail_out("out of memory");
        w.path = path;
        uv_loop_init(&loop);
        is_int(ledger_new(&loop, sub, snapshot, &w, &l), 0, "writer: new");
        ledger_compact(l);
        uv_run(&loop, UV_RUN_DEFAULT);
        is_int(sessions_on_disk(path), 3, "writer: the compaction wrote the snapshot");

        for (int i = 0; i < 500; i++) {
                char id[16];

                snprintf(id, sizeof(id), "a-%d", i);
                seq = append_session(l, id);
        }
        ledger_sync(l, seq, synced, &w);
        is_int(w.synced, 0, "writer: the last append's waiter does not run before it is written");
        uv_run(&loop, UV_RUN_DEFAULT);
        is_int(w.synced, 1, "writer: the waiter ran");
        is_int(w.sync_error, 0, "writer: with no error");
        is_int(w.records_seen_at_sync, 503, "writer: and the record was on disk when it ran");
        ok(ledger_stats(l)->syncs < 50, "writer: 500 appends in one turn took %llu group commits",
           (unsigned long long)ledger_stats(l)->syncs);
        is_str(ledger_health(l), "ok", "writer: healthy");

        /* The state at close is the one when close was called. */
        w.sessions = 7;
        ledger_close(l, closed, &done_closing);
        w.sessions = 1;
        is_int(append_session(l, "late"), 0, "writer: an append after close is refused");
        uv_run(&loop, UV_RUN_DEFAULT);
        ok(done_closing, "writer: close finished");
        is_int(sessions_on_disk(path), 7, "writer: the file holds the state as of the close");
        l = ledger_free(l);
        is_int(uv_loop_close(&loop), 0, "writer: no handle left open");
}

/* A directory that goes away: errors reported at once, then the retry timer recovers. */
static void test_writer_failure(void) {
        char sub[256];
        _cleanup_free_ char *path = NULL;
        World w = { .sessions = 2 };
        uv_loop_t loop;
        Ledger *l = NULL;
        bool done_closing = false;
        uint64_t seq;

        snprintf(sub, sizeof(sub), "%s/gone", dir);
        if (asprintf(&path, "%s/" LEDGER_FILE, sub) < 0)
                bail_out("out of memory");
        w.path = path;
        uv_loop_init(&loop);
        is_int(ledger_new(&loop, sub, snapshot, &w, &l), 0, "failure: new");
        ledger_compact(l);
        /* One turn at a time until the compaction has failed. */
        for (int i = 0; i < 1000 && ledger_stats(l)->write_errors == 0; i++)
                uv_run(&loop, UV_RUN_ONCE);
        ok(ledger_stats(l)->write_errors >= 1, "failure: the compaction failed");
        ok(strstr(ledger_health(l), "No such file") != NULL, "failure: health names it: %s", ledger_health(l));
        seq = append_session(l, "during");
        ledger_sync(l, seq, synced, &w);
        is_int(w.synced, 1, "failure: a waiter is answered at once while writes fail");
        ok(w.sync_error < 0, "failure: with the error");

        if (mkdir(sub, 0700) < 0)
                bail_out("mkdir: %m");
        w.sessions = 4;
        for (uint64_t end = uv_hrtime() + 10000000000ull; strcmp(ledger_health(l), "ok") != 0 && uv_hrtime() < end;)
                uv_run(&loop, UV_RUN_ONCE);
        is_str(ledger_health(l), "ok", "failure: the retry wrote once the directory was back");
        ok(ledger_stats(l)->write_errors <= 6, "failure: retried on a timer, not back to back (%llu errors)",
           (unsigned long long)ledger_stats(l)->write_errors);
        is_int(sessions_on_disk(path), 4, "failure: the file holds the current state");
        ledger_close(l, closed, &done_closing);
        uv_run(&loop, UV_RUN_DEFAULT);
        l = ledger_free(l);
        is_int(uv_loop_close(&loop), 0, "failure: no handle left open");
}

static int remove_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        return remove(path);
}

int main(void) {
        if (!mkdtemp(dir))
                bail_out("mkdtemp: %m");
        test_round_trip();
        test_odd_files();
        test_every_truncation();
        test_every_flip();
        test_bad_records();
        test_writer();
        test_writer_failure();
        (void)nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
        return done();
}
