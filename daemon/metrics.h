/*
 * Metrics: what the daemon counts for the whole host, and how it is read.
 *
 * Counters that no other module owns live in HostMetrics; the rest (backend
 * calls, reconciliation, the ledger, admission) are read from their modules
 * when the metrics are collected. One collection walks every metric family
 * once and feeds it either to the Prometheus text writer (names
 * cwsandboxd_*, with HELP and TYPE) or to a list of (series, value) pairs
 * for the MetricsReply map, so the two can never disagree.
 *
 * When metrics_textfile is set, the text is also written every
 * metrics_textfile_interval_seconds for node_exporter's textfile collector:
 * to a temporary file in the same directory, then renamed over the target,
 * on the thread pool so a slow disk never holds the loop.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "prom.h"
#include "sdkmetrics.h"

typedef struct Manager Manager;
typedef struct Handle Handle;
typedef struct Session Session;

typedef enum ExecStream {
        EXEC_STREAM_STDIN,
        EXEC_STREAM_STDOUT,
        EXEC_STREAM_STDERR,
        _EXEC_STREAM_MAX,
} ExecStream;

typedef struct HostMetrics {
        uint64_t sandboxes_requested;   /* handles made: the SDK's sandboxes_created, all sessions */
        uint64_t sandboxes_created;     /* creates the backend accepted */
        uint64_t execs[_EXEC_OUTCOME_MAX];
        uint64_t exec_bytes[_EXEC_STREAM_MAX];
        uint64_t file_bytes_read, file_bytes_written;
        Histogram startup;              /* seconds, create sent to first RUNNING */
} HostMetrics;

/* The daemon's node_exporter text file. */
typedef struct MetricsTextfile {
        Manager *manager;
        char *path;
        uv_timer_t timer;
        uv_work_t work;
        char *text;                     /* what the job in flight writes */
        int error;                      /* its outcome: 0 or a negative errno */
        bool busy;                      /* a job is in flight */
        bool failing;                   /* the last write failed (logged once) */
        bool closing;
        void (*closed)(void *userdata);
        void *closed_userdata;
        uint64_t writes, write_errors;
} MetricsTextfile;

/* One series of the map: "cwsandboxd_execs_total{outcome=\"ok\"}" and its value. */
typedef struct MetricsValue {
        char *series;
        double value;
} MetricsValue;

void host_metrics_init(HostMetrics *hm);

/* An exec against @h ended with @outcome: host-wide, and in @h's session if it has one. */
void metrics_exec_done(Manager *m, Handle *h, ExecOutcome outcome);

/* The host-wide metrics as Prometheus text (malloc'd), or NULL on OOM. */
char *metrics_prometheus(Manager *m);

/* A session's cwsandbox/... values as Prometheus text (malloc'd), or NULL on OOM. */
char *metrics_session_prometheus(const Session *s, const SdkMetricValue *values, size_t n);

/**
 * metrics_values() - the host-wide metrics as series and values (histograms
 * as their _count and _sum). Free with metrics_values_free().
 * Returns 0 or -ENOMEM.
 */
int metrics_values(Manager *m, MetricsValue **ret, size_t *ret_n);
void metrics_values_free(MetricsValue *v, size_t n);

/* Start writing the text file, if one is configured: now, then every interval. */
void metrics_textfile_start(Manager *m);

/* Stop: a write in flight finishes first; then @closed runs. */
void metrics_textfile_close(MetricsTextfile *t, void (*closed)(void *userdata), void *userdata);
