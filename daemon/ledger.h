/*
 * Ledger: the daemon's ownership record on disk, so that a restart (clean
 * or after a crash) knows which sessions exist and which sandboxes they own.
 *
 * Format (proto/cwsandboxd/v1/ledger.proto): a magic, then checksummed
 * records; replaying them gives the state. Appends are group-committed: the
 * records of one loop turn are written and fdatasync()ed together on the
 * thread pool, and whoever must know a record is durable (a create about to
 * be sent) waits for its sequence number. A compaction rewrites the whole
 * state from the Manager (temp file, fsync, rename, fsync of the directory)
 * when the log has grown, after a write failure, and at shutdown.
 *
 * A file that is torn (a crash mid-append), corrupt or empty is loaded up to
 * its last good record and the rest reported; the daemon starts anyway and
 * reconciles with the backend. A write that fails (full disk, read-only
 * directory) is logged loudly and shown in status; the daemon carries on and
 * retries with a compaction every few seconds until it can write again.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cwsandboxd/v1/ledger.pb-c.h"

typedef Cwsandboxd__V1__LedgerRecord LedgerRecord;
typedef Cwsandboxd__V1__LedgerSession LedgerSession;
typedef Cwsandboxd__V1__LedgerHandle LedgerHandle;

#define LEDGER_FILE             "ledger"
#define LEDGER_MAGIC            "CWSDLDG1"
#define LEDGER_RECORD_MAX       (16u * 1024 * 1024)

typedef enum LedgerLoadResult {
        LEDGER_LOAD_NONE,               /* no file: a first start */
        LEDGER_LOAD_OK,
        LEDGER_LOAD_EMPTY,              /* a file with nothing in it, not even the magic */
        LEDGER_LOAD_TORN,               /* a record cut short at the end */
        LEDGER_LOAD_CORRUPT,            /* bad magic, checksum or record */
        LEDGER_LOAD_UNREADABLE,         /* open or read failed */
        _LEDGER_LOAD_MAX,
} LedgerLoadResult;

/* What a load found: the live sessions and their handles, and a report. */
typedef struct LedgerContents {
        LedgerSession **sessions;
        size_t n_sessions;
        LedgerHandle **handles;         /* only those whose session is live */
        size_t n_handles;
        LedgerLoadResult result;
        size_t records;                 /* good records replayed */
        uint64_t bytes_dropped;         /* after the last good record */
        char report[256];               /* one line for the log and status */
} LedgerContents;

/**
 * ledger_load() - read and replay @path. Never fails on what the file
 * holds: anything after the last good record is dropped and described in
 * @ret->report. Returns 0, or -ENOMEM.
 */
int ledger_load(const char *path, LedgerContents *ret);
void ledger_contents_free(LedgerContents *c);

/**
 * ledger_encode() - append @rec, framed and checksummed, to the buffer
 * *@buf of *@len bytes (capacity *@cap). Returns 0 or -ENOMEM/-E2BIG.
 */
int ledger_encode(const LedgerRecord *rec, uint8_t **buf, size_t *len, size_t *cap);

/* ---- the writer ------------------------------------------------------------------------ */

typedef struct Ledger Ledger;

/* Called when a compaction starts: add every live record with ledger_snapshot_add(). */
typedef void (*LedgerSnapshotFn)(void *userdata, Ledger *l);

/* A record is durable (@error 0) or could not be written (negative errno). */
typedef void (*LedgerSyncedFn)(void *userdata, int error);

typedef struct LedgerStats {
        uint64_t records;               /* appended */
        uint64_t syncs;                 /* fdatasync()s of appends */
        uint64_t compactions;
        uint64_t write_errors;
        uint64_t file_bytes;
} LedgerStats;

/**
 * ledger_new() - a writer for the ledger in @dir. Nothing is written until
 * the first append or compaction. Returns 0 or -ENOMEM.
 */
int ledger_new(uv_loop_t *loop, const char *dir, LedgerSnapshotFn snapshot, void *userdata, Ledger **ret);

/**
 * ledger_append() - queue @rec for the next group commit. Returns its
 * sequence number (0 once the ledger is closing: nothing more is written).
 */
uint64_t ledger_append(Ledger *l, const LedgerRecord *rec);

/**
 * ledger_sync() - @fn runs once record @seq is durable, or with the error
 * when it could not be written. Runs before this returns when that is
 * already known.
 */
void ledger_sync(Ledger *l, uint64_t seq, LedgerSyncedFn fn, void *userdata);

/* ledger_snapshot_add() - from inside the snapshot callback only. */
void ledger_snapshot_add(Ledger *l, const LedgerRecord *rec);

/* ledger_compact() - rewrite the file from the snapshot, soon. */
void ledger_compact(Ledger *l);

/**
 * ledger_close() - a last compaction (the state at shutdown), then no more
 * writes; @done runs when the writer is idle and its handles are closed.
 * Then ledger_free().
 */
void ledger_close(Ledger *l, void (*done)(void *userdata), void *userdata);
Ledger *ledger_free(Ledger *l);

/* "ok", or why the last write failed. */
const char *ledger_health(const Ledger *l);
const LedgerStats *ledger_stats(const Ledger *l);
