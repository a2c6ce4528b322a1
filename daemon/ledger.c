/*
 * Ledger: loading, encoding and the group-committing writer (see ledger.h).
 *
 * The writer has at most one job on the thread pool: an append (the records
 * queued since the last job, then fdatasync) or a compaction (the whole
 * state into a temp file, fsync, rename, fsync of the directory). While a
 * job runs only it touches the file descriptor; the loop thread queues the
 * next records and waiters. A compaction subsumes every record queued before
 * it starts, so those are dropped from the queue and their waiters are
 * answered by it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hashmap.h"
#include "ledger.h"
#include "log.h"
#include "macro.h"

#define LEDGER_HEADER_BYTES             8
#define LEDGER_FRAME_BYTES              8
#define LEDGER_COMPACT_MIN_BYTES        (256u * 1024)
#define LEDGER_COMPACT_GROWTH           4
#define LEDGER_RETRY_MS                 2000

#define OP(x) CWSANDBOXD__V1__LEDGER_RECORD__OP_##x

/* ---- CRC-32C (Castagnoli) ---------------------------------------------------------------- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
        for (uint32_t i = 0; i < 256; i++) {
                uint32_t c = i;

                for (int k = 0; k < 8; k++)
                        c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
                crc_table[i] = c;
        }
}

static uint32_t crc32c(const uint8_t *p, size_t n) {
        uint32_t c = ~0u;

        (void)pthread_once(&crc_once, crc_init);
        while (n--)
                c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
        return ~c;
}

static void put_le32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t)v;
        p[1] = (uint8_t)(v >> 8);
        p[2] = (uint8_t)(v >> 16);
        p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p) {
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- encoding ------------------------------------------------------------------------------ */

static int buf_reserve(uint8_t **buf, size_t len, size_t *cap, size_t more) {
        size_t want = len + more, c = *cap ? *cap : 4096;
        uint8_t *p;

        if (want <= *cap)
                return 0;
        while (c < want)
                c *= 2;
        p = realloc(*buf, c);
        if (!p)
                return -ENOMEM;
        *buf = p;
        *cap = c;
        return 0;
}

int ledger_encode(const LedgerRecord *rec, uint8_t **buf, size_t *len, size_t *cap) {
        size_t n = protobuf_c_message_get_packed_size(&rec->base);
        uint8_t *p;

        if (n > LEDGER_RECORD_MAX)
                return -E2BIG;
        if (buf_reserve(buf, *len, cap, LEDGER_FRAME_BYTES + n) < 0)
                return -ENOMEM;
        p = *buf + *len;
        (void)protobuf_c_message_pack(&rec->base, p + LEDGER_FRAME_BYTES);
        put_le32(p, (uint32_t)n);
        put_le32(p + 4, crc32c(p + LEDGER_FRAME_BYTES, n));
        *len += LEDGER_FRAME_BYTES + n;
        return 0;
}

/* ---- loading ------------------------------------------------------------------------------- */

typedef struct Fold {
        Hashmap sessions;       /* id -> LedgerSession */
        Hashmap handles;        /* id -> LedgerHandle */
} Fold;

static void msg_free(void *m) {
        if (m)
                protobuf_c_message_free_unpacked(m, NULL);
}

/* Replay one record; takes what it keeps out of @rec. */
static int fold_apply(Fold *f, LedgerRecord *rec) {
        switch (rec->op_case) {
        case OP(SESSION_PUT):
                msg_free(hashmap_remove(&f->sessions, rec->session_put->id));
                if (hashmap_put(&f->sessions, rec->session_put->id, rec->session_put) < 0)
                        return -ENOMEM;
                rec->session_put = NULL;
                break;
        case OP(SESSION_DEL):
                msg_free(hashmap_remove(&f->sessions, rec->session_del));
                break;
        case OP(HANDLE_PUT):
                msg_free(hashmap_remove(&f->handles, rec->handle_put->id));
                if (hashmap_put(&f->handles, rec->handle_put->id, rec->handle_put) < 0)
                        return -ENOMEM;
                rec->handle_put = NULL;
                break;
        case OP(HANDLE_DEL):
                msg_free(hashmap_remove(&f->handles, rec->handle_del));
                break;
        default:
                break;
        }
        /* A taken submessage leaves a NULL, which the caller's free skips. */
        return 0;
}

/* Move the fold's live entries into @c; handles of closed sessions are dropped. */
static int fold_finish(Fold *f, LedgerContents *c) {
        HashmapIter it = HASHMAP_ITER_INIT;
        void *v;

        c->sessions = calloc(hashmap_size(&f->sessions) + 1, sizeof(*c->sessions));
        c->handles = calloc(hashmap_size(&f->handles) + 1, sizeof(*c->handles));
        if (!c->sessions || !c->handles)
                return -ENOMEM;
        while ((v = hashmap_next(&f->sessions, &it)))
                c->sessions[c->n_sessions++] = v;
        it = (HashmapIter) HASHMAP_ITER_INIT;
        while ((v = hashmap_next(&f->handles, &it))) {
                LedgerHandle *h = v;

                if (hashmap_get(&f->sessions, h->session_id))
                        c->handles[c->n_handles++] = h;
                else
                        msg_free(h);
        }
        hashmap_deinit(&f->sessions);
        hashmap_deinit(&f->handles);
        return 0;
}

static void fold_free(Fold *f) {
        HashmapIter it = HASHMAP_ITER_INIT;
        void *v;

        while ((v = hashmap_next(&f->sessions, &it)))
                msg_free(v);
        it = (HashmapIter) HASHMAP_ITER_INIT;
        while ((v = hashmap_next(&f->handles, &it)))
                msg_free(v);
        hashmap_deinit(&f->sessions);
        hashmap_deinit(&f->handles);
}

static int read_file(const char *path, uint8_t **ret, size_t *ret_size) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        _cleanup_free_ uint8_t *buf = NULL;
        struct stat st;
        size_t got = 0;

        if (fd < 0 || fstat(fd, &st) < 0)
                return -errno;
        buf = malloc((size_t)st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        while (got < (size_t)st.st_size) {
                ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        break;
                got += (size_t)n;
        }
        *ret = TAKE_PTR(buf);
        *ret_size = got;
        return 0;
}

/* Walk the records after the magic; returns the offset of the first byte not used. */
static size_t replay(Fold *f, const uint8_t *buf, size_t size, LedgerContents *c, char *why, size_t why_size,
                     int *ret_error) {
        size_t off = LEDGER_HEADER_BYTES;

        *ret_error = 0;
        while (off < size) {
                uint32_t len, crc;
                LedgerRecord *rec;

                if (size - off < LEDGER_FRAME_BYTES) {
                        c->result = LEDGER_LOAD_TORN;
                        snprintf(why, why_size, "record header cut short at byte %zu", off);
                        break;
                }
                len = get_le32(buf + off);
                crc = get_le32(buf + off + 4);
                if (len > LEDGER_RECORD_MAX) {
                        c->result = LEDGER_LOAD_CORRUPT;
                        snprintf(why, why_size, "impossible record length %" PRIu32 " at byte %zu",
                                 len, off);
                        break;
                }
                if (len > size - off - LEDGER_FRAME_BYTES) {
                        c->result = LEDGER_LOAD_TORN;
                        snprintf(why, why_size, "record at byte %zu cut short", off);
                        break;
                }
                if (crc32c(buf + off + LEDGER_FRAME_BYTES, len) != crc) {
                        c->result = LEDGER_LOAD_CORRUPT;
                        snprintf(why, why_size, "checksum mismatch at byte %zu", off);
                        break;
                }
                rec = cwsandboxd__v1__ledger_record__unpack(NULL, len, buf + off + LEDGER_FRAME_BYTES);
                if (!rec || rec->op_case == OP(_NOT_SET)) {
                        msg_free(rec);
                        c->result = LEDGER_LOAD_CORRUPT;
                        snprintf(why, why_size, "undecodable record at byte %zu", off);
                        break;
                }
                *ret_error = fold_apply(f, rec);
                msg_free(rec);
                if (*ret_error < 0)
                        break;
                c->records++;
                off += LEDGER_FRAME_BYTES + len;
        }
        return off;
}

static void load_report(LedgerContents *c, const char *why) {

        if (c->result == LEDGER_LOAD_OK) {
                snprintf(c->report, sizeof(c->report), "loaded %zu record(s): %zu session(s), %zu sandbox handle(s)",
                         c->records, c->n_sessions, c->n_handles);
                return;
        }
        if (c->result != LEDGER_LOAD_TORN && c->result != LEDGER_LOAD_CORRUPT)
                return;
        snprintf(c->report, sizeof(c->report), "%s: %s; kept %zu record(s) before it, dropped %" PRIu64 " byte(s)",
                 c->result == LEDGER_LOAD_TORN ? "torn" : "corrupt", why, c->records, c->bytes_dropped);
}

int ledger_load(const char *path, LedgerContents *ret) {
        _cleanup_free_ uint8_t *buf = NULL;
        Fold f = { HASHMAP_NULL(f.sessions), HASHMAP_NULL(f.handles) };
        size_t size = 0, end;
        char why[128] = "";
        int r, error;

        *ret = (LedgerContents) { .result = LEDGER_LOAD_OK };
        r = read_file(path, &buf, &size);
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                ret->result = r == -ENOENT ? LEDGER_LOAD_NONE : LEDGER_LOAD_UNREADABLE;
                snprintf(ret->report, sizeof(ret->report), r == -ENOENT ? "no ledger yet" : "cannot read: %s",
                         strerror(-r));
                return fold_finish(&f, ret);
        }
        if (size == 0) {
                ret->result = LEDGER_LOAD_EMPTY;
                snprintf(ret->report, sizeof(ret->report), "empty file");
                return fold_finish(&f, ret);
        }
        if (size < LEDGER_HEADER_BYTES || memcmp(buf, LEDGER_MAGIC, LEDGER_HEADER_BYTES) != 0) {
                bool prefix = size < LEDGER_HEADER_BYTES && memcmp(buf, LEDGER_MAGIC, size) == 0;

                ret->result = prefix ? LEDGER_LOAD_TORN : LEDGER_LOAD_CORRUPT;
                ret->bytes_dropped = size;
                snprintf(ret->report, sizeof(ret->report), "%s: not a ledger (bad magic); dropped %zu byte(s)",
                         prefix ? "torn" : "corrupt", size);
                return fold_finish(&f, ret);
        }
        end = replay(&f, buf, size, ret, why, sizeof(why), &error);
        if (error < 0) {
                fold_free(&f);
                return error;
        }
        ret->bytes_dropped = size - end;
        r = fold_finish(&f, ret);
        if (r < 0)
                return r;
        load_report(ret, why);
        return 0;
}

void ledger_contents_free(LedgerContents *c) {
        for (size_t i = 0; i < c->n_sessions; i++)
                msg_free(c->sessions[i]);
        for (size_t i = 0; i < c->n_handles; i++)
                msg_free(c->handles[i]);
        free(c->sessions);
        free(c->handles);
        c->sessions = NULL;
        c->handles = NULL;
        c->n_sessions = c->n_handles = 0;
}

/* ---- the writer ---------------------------------------------------------------------------- */

typedef struct LedgerWaiter {
        struct LedgerWaiter *next;
        uint64_t seq;
        LedgerSyncedFn fn;
        void *userdata;
} LedgerWaiter;

typedef enum JobKind {
        JOB_APPEND,
        JOB_COMPACT,
} JobKind;

typedef struct Buf {
        uint8_t *data;
        size_t len, cap;
} Buf;

struct Ledger {
        uv_loop_t *loop;
        char *dir, *path, *tmp_path;
        LedgerSnapshotFn snapshot;
        void *snapshot_userdata;

        /* touched by the job only while one runs */
        int fd;
        uint64_t file_bytes, compacted_bytes;

        /* loop thread */
        Buf pending;                    /* records since the last job */
        Buf *snap;                      /* being filled by the snapshot callback */
        Buf close_snap;                 /* the state at close, taken at once */
        bool close_snap_taken;
        uint64_t next_seq, durable_seq;
        LedgerWaiter *waiters;
        bool want_compact;
        int error;                      /* of the last job, 0 = fine */
        char health[256];
        uv_timer_t retry_timer;
        bool retry_armed;               /* after a failure, the next compaction waits for the timer */
        bool closing;
        void (*done)(void *userdata);
        void *done_userdata;
        LedgerStats stats;

        /* the job in flight */
        bool busy;
        uv_work_t work;
        JobKind kind;
        Buf job;
        uint64_t job_seq;
        int job_error;
};

static void buf_free(Buf *b) {
        free(b->data);
        *b = (Buf) { 0 };
}

int ledger_new(uv_loop_t *loop, const char *dir, LedgerSnapshotFn snapshot, void *userdata, Ledger **ret) {
        Ledger *l = calloc(1, sizeof(*l));

        if (!l)
                return -ENOMEM;
        l->loop = loop;
        l->fd = -1;
        l->snapshot = snapshot;
        l->snapshot_userdata = userdata;
        l->dir = strdup(dir);
        if (!l->dir || asprintf(&l->path, "%s/" LEDGER_FILE, dir) < 0 ||
            asprintf(&l->tmp_path, "%s/" LEDGER_FILE ".tmp", dir) < 0) {
                free(l->path);
                free(l->dir);
                free(l);
                return -ENOMEM;
        }
        snprintf(l->health, sizeof(l->health), "ok");
        uv_timer_init(loop, &l->retry_timer);
        *ret = l;
        return 0;
}

static void waiters_settle(Ledger *l, uint64_t upto, int error) {
        LedgerWaiter **p = &l->waiters;

        while (*p) {
                LedgerWaiter *w = *p;

                if (w->seq > upto) {
                        p = &w->next;
                        continue;
                }
                *p = w->next;
                w->fn(w->userdata, error);
                free(w);
        }
}

void ledger_sync(Ledger *l, uint64_t seq, LedgerSyncedFn fn, void *userdata) {
        LedgerWaiter *w;

        if (seq <= l->durable_seq) {
                fn(userdata, 0);
                return;
        }
        /* While the disk refuses, nobody waits for it: operations go on. */
        if (l->error < 0 && !l->closing) {
                fn(userdata, l->error);
                return;
        }
        w = malloc(sizeof(*w));
        if (!w)
                abort();
        *w = (LedgerWaiter) { .next = l->waiters, .seq = seq, .fn = fn, .userdata = userdata };
        l->waiters = w;
}

/* ---- jobs ---- */

static int write_all(int fd, const uint8_t *p, size_t n) {
        while (n > 0) {
                ssize_t k = write(fd, p, n);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                p += k;
                n -= (size_t)k;
        }
        return 0;
}

static int job_append(Ledger *l) {
        int r;

        if (l->fd < 0)
                return -EBADF;
        r = write_all(l->fd, l->job.data, l->job.len);
        if (r == 0 && fdatasync(l->fd) < 0)
                r = -errno;
        if (r < 0) {
                /* Leave no half record behind: the next load would stop there. */
                (void)ftruncate(l->fd, (off_t)l->file_bytes);
                return r;
        }
        l->file_bytes += l->job.len;
        return 0;
}

static int fsync_dir(const char *dir) {
        _cleanup_close_ int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        if (fd < 0 || fsync(fd) < 0)
                return -errno;
        return 0;
}

static int job_compact(Ledger *l) {
        _cleanup_close_ int tmp = open(l->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        int fd, r;

        if (tmp < 0)
                return -errno;
        r = write_all(tmp, l->job.data, l->job.len);
        if (r == 0 && fdatasync(tmp) < 0)
                r = -errno;
        if (r == 0 && rename(l->tmp_path, l->path) < 0)
                r = -errno;
        if (r < 0) {
                (void)unlink(l->tmp_path);
                return r;
        }
        r = fsync_dir(l->dir);
        if (r < 0)
                return r;
        fd = open(l->path, O_WRONLY | O_APPEND | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (l->fd >= 0)
                (void)close(l->fd);
        l->fd = fd;
        l->file_bytes = l->compacted_bytes = l->job.len;
        return 0;
}

static void job_run(uv_work_t *work) {
        Ledger *l = container_of(work, Ledger, work);

        l->job_error = l->kind == JOB_APPEND ? job_append(l) : job_compact(l);
}

static void ledger_kick(Ledger *l);

static void retry_due(uv_timer_t *t) {
        Ledger *l = container_of(t, Ledger, retry_timer);

        l->retry_armed = false;
        l->want_compact = true;
        ledger_kick(l);
}

static void job_failed(Ledger *l, int error) {
        l->stats.write_errors++;
        if (l->error == 0)
                log_error("state ledger %s: cannot write: %s; sessions and sandboxes go on, but a crash now could "
                          "lose track of them; retrying every %d s", l->path, strerror(-error), LEDGER_RETRY_MS / 1000);
        snprintf(l->health, sizeof(l->health), "cannot write %s: %s", l->path, strerror(-error));
        l->error = error;
        l->want_compact = true;         /* what was not written is only in the state now */
        buf_free(&l->pending);
        /* Every waiter, not only this job's: none of them may wait for a disk that refuses. */
        waiters_settle(l, UINT64_MAX, error);
        if (!l->closing) {
                l->retry_armed = true;
                uv_timer_start(&l->retry_timer, retry_due, LEDGER_RETRY_MS, 0);
        }
}

static void job_succeeded(Ledger *l) {
        if (l->error < 0)
                log_notice("state ledger %s: writing again", l->path);
        l->error = 0;
        snprintf(l->health, sizeof(l->health), "ok");
        l->durable_seq = l->job_seq;
        if (l->kind == JOB_COMPACT)
                l->stats.compactions++;
        else
                l->stats.syncs++;
        l->stats.file_bytes = l->file_bytes;
        waiters_settle(l, l->job_seq, 0);
        if (l->file_bytes > LEDGER_COMPACT_MIN_BYTES && l->file_bytes > LEDGER_COMPACT_GROWTH * l->compacted_bytes)
                l->want_compact = true;
}

static void ledger_closed(uv_handle_t *h) {
        Ledger *l = container_of((uv_timer_t *)h, Ledger, retry_timer);

        if (l->done)
                l->done(l->done_userdata);
}

static void job_done(uv_work_t *work, int status) {
        Ledger *l = container_of(work, Ledger, work);

        (void)status;
        l->busy = false;
        buf_free(&l->job);
        if (l->job_error < 0)
                job_failed(l, l->job_error);
        else
                job_succeeded(l);
        if (l->closing && l->close_snap_taken && !l->close_snap.data) {
                /* The last compaction has run: no waiter is left to answer. */
                waiters_settle(l, UINT64_MAX, l->error);
                uv_close((uv_handle_t *)&l->retry_timer, ledger_closed);
                return;
        }
        ledger_kick(l);
}

static int take_snapshot(Ledger *l, Buf *out) {
        *out = (Buf) { 0 };
        if (buf_reserve(&out->data, 0, &out->cap, LEDGER_HEADER_BYTES) < 0)
                return -ENOMEM;
        memcpy(out->data, LEDGER_MAGIC, LEDGER_HEADER_BYTES);
        out->len = LEDGER_HEADER_BYTES;
        l->snap = out;
        l->snapshot(l->snapshot_userdata, l);
        l->snap = NULL;
        return 0;
}

void ledger_snapshot_add(Ledger *l, const LedgerRecord *rec) {
        Buf *b = l->snap;

        if (b && ledger_encode(rec, &b->data, &b->len, &b->cap) < 0)
                abort();
}

/* Start the next job if one is due and none runs. */
static void ledger_kick(Ledger *l) {
        if (l->busy)
                return;
        if (l->closing && l->close_snap_taken) {
                if (!l->close_snap.data)
                        return;
                l->kind = JOB_COMPACT;
                l->job = l->close_snap;
                l->close_snap = (Buf) { 0 };
        } else if (l->want_compact && !l->retry_armed) {
                if (take_snapshot(l, &l->job) < 0)
                        abort();
                l->kind = JOB_COMPACT;
                l->want_compact = false;
                buf_free(&l->pending);  /* the snapshot has it all */
        } else if (l->pending.len > 0 && l->error == 0) {
                l->kind = JOB_APPEND;
                l->job = l->pending;
                l->pending = (Buf) { 0 };
        } else
                return;
        l->job_seq = l->next_seq;
        l->busy = true;
        if (uv_queue_work(l->loop, &l->work, job_run, job_done) < 0)
                abort();
}

uint64_t ledger_append(Ledger *l, const LedgerRecord *rec) {
        if (l->closing)
                return 0;
        l->next_seq++;
        l->stats.records++;
        /* While failing, the next compaction writes the state: no need to queue. */
        if (l->error == 0 && ledger_encode(rec, &l->pending.data, &l->pending.len, &l->pending.cap) < 0) {
                log_warning("state ledger: a record could not be encoded; it will be in the next compaction");
                l->want_compact = true;
        }
        ledger_kick(l);
        return l->next_seq;
}

void ledger_compact(Ledger *l) {
        if (l->closing)
                return;
        l->want_compact = true;
        ledger_kick(l);
}

void ledger_close(Ledger *l, void (*done)(void *userdata), void *userdata) {
        if (l->closing)
                return;
        l->done = done;
        l->done_userdata = userdata;
        /* The state must be taken now: the Manager frees it right after. */
        if (take_snapshot(l, &l->close_snap) < 0)
                abort();
        l->closing = true;
        l->close_snap_taken = true;
        l->next_seq++;
        buf_free(&l->pending);
        uv_timer_stop(&l->retry_timer);
        ledger_kick(l);
}

Ledger *ledger_free(Ledger *l) {
        LedgerWaiter *w, *next;

        if (!l)
                return NULL;
        for (w = l->waiters; w; w = next) {
                next = w->next;
                free(w);
        }
        if (l->fd >= 0)
                (void)close(l->fd);
        buf_free(&l->pending);
        buf_free(&l->close_snap);
        buf_free(&l->job);
        free(l->tmp_path);
        free(l->path);
        free(l->dir);
        free(l);
        return NULL;
}

const char *ledger_health(const Ledger *l) {
        return l->health;
}

const LedgerStats *ledger_stats(const Ledger *l) {
        return &l->stats;
}
