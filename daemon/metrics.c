/*
 * Metrics: the host-wide families, their two outputs and the text file (see
 * metrics.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "handle.h"
#include "log.h"
#include "metrics.h"
#include "pbgrpc.h"
#include "session.h"

static const double startup_bounds[] = { 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600 };

void host_metrics_init(HostMetrics *hm) {
        *hm = (HostMetrics) { 0 };
        histogram_init(&hm->startup, startup_bounds, ELEMENTSOF(startup_bounds));
}

void metrics_exec_done(Manager *m, Handle *h, ExecOutcome outcome) {
        m->metrics.execs[outcome]++;
        if (!h->session)
                return;
        /* A sandbox that never got an id is still one sandbox: its handle names it. */
        if (sdk_metrics_exec(&h->session->metrics, h->sandbox_id ? h->sandbox_id : h->id, outcome) < 0)
                log_full(LOG_LEVEL_WARNING, h->session->id, h->sandbox_id, "out of memory counting an exec");
}

/* ---- sinks: where a collection goes ------------------------------------------------------- */

typedef struct Sink Sink;
struct Sink {
        void (*family)(Sink *s, const char *name, PromType type, const char *help);
        void (*sample)(Sink *s, const PromLabel *labels, size_t n_labels, double value);
        void (*histogram)(Sink *s, const PromLabel *labels, size_t n_labels, const Histogram *h);
};

typedef struct PromSink {
        Sink sink;
        PromWriter w;
} PromSink;

static void prom_sink_family(Sink *s, const char *name, PromType type, const char *help) {
        prom_family(&container_of(s, PromSink, sink)->w, name, type, help);
}

static void prom_sink_sample(Sink *s, const PromLabel *labels, size_t n, double value) {
        prom_sample(&container_of(s, PromSink, sink)->w, labels, n, value);
}

static void prom_sink_histogram(Sink *s, const PromLabel *labels, size_t n, const Histogram *h) {
        prom_histogram(&container_of(s, PromSink, sink)->w, labels, n, h);
}

/* The map: series named as Prometheus would name them. */
typedef struct MapSink {
        Sink sink;
        const char *family;
        MetricsValue *values;
        size_t n, cap;
        bool oom;
} MapSink;

static void map_sink_family(Sink *s, const char *name, PromType type, const char *help) {
        (void)type, (void)help;
        container_of(s, MapSink, sink)->family = name;
}

static void map_add(MapSink *ms, const char *suffix, const PromLabel *labels, size_t n, double value) {
        char *text = NULL;
        size_t size = 0;
        FILE *f;

        if (ms->oom)
                return;
        if (ms->n == ms->cap) {
                size_t cap = ms->cap ? ms->cap * 2 : 64;
                MetricsValue *v = reallocarray(ms->values, cap, sizeof(*v));

                if (!v) {
                        ms->oom = true;
                        return;
                }
                ms->values = v;
                ms->cap = cap;
        }
        f = open_memstream(&text, &size);
        if (!f) {
                ms->oom = true;
                return;
        }
        fprintf(f, "%s%s", ms->family, suffix);
        for (size_t i = 0; i < n; i++)
                fprintf(f, "%s%s=\"%s\"", i ? "," : "{", labels[i].name, labels[i].value);
        if (n)
                fputc('}', f);
        if (fclose(f) != 0) {
                free(text);
                ms->oom = true;
                return;
        }
        ms->values[ms->n++] = (MetricsValue) { .series = text, .value = value };
}

static void map_sink_sample(Sink *s, const PromLabel *labels, size_t n, double value) {
        map_add(container_of(s, MapSink, sink), "", labels, n, value);
}

static void map_sink_histogram(Sink *s, const PromLabel *labels, size_t n, const Histogram *h) {
        map_add(container_of(s, MapSink, sink), "_count", labels, n, (double)h->count);
        map_add(container_of(s, MapSink, sink), "_sum", labels, n, h->sum);
}

/* ---- the families ---------------------------------------------------------------------- */

static void one(Sink *s, const char *name, PromType type, const char *help, double value) {
        s->family(s, name, type, help);
        s->sample(s, NULL, 0, value);
}

static void one_label(Sink *s, const char *label, const char *value_name, double value) {
        PromLabel l = { label, value_name };

        s->sample(s, &l, 1, value);
}

static void collect_sandboxes(Manager *m, Sink *s) {
        unsigned counts[HANDLE_STATE_SLOTS];

        manager_count_states(m, 0, counts);
        s->family(s, "cwsandboxd_sandboxes", PROM_GAUGE, "Sandbox handles of open sessions, by state");
        /* Every state but UNSPECIFIED, which a handle never has: the series exist from the start. */
        for (unsigned i = 0; i < HANDLE_STATE_SLOTS; i++)
                if (handle_slot_state(i) != CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_UNSPECIFIED)
                        one_label(s, "state", handle_state_name(handle_slot_state(i)), counts[i]);

        one(s, "cwsandboxd_sandboxes_requested_total", PROM_COUNTER,
            "Sandboxes requested in sessions, started or not (the SDK's sandboxes_created, summed)",
            (double)m->metrics.sandboxes_requested);
        one(s, "cwsandboxd_sandboxes_created_total", PROM_COUNTER, "Creates the backend accepted",
            (double)m->metrics.sandboxes_created);
        s->family(s, "cwsandboxd_sandbox_startup_seconds", PROM_HISTOGRAM,
                  "Time from a create sent to the sandbox first seen running");
        s->histogram(s, NULL, 0, &m->metrics.startup);
}

static void collect_io(Manager *m, Sink *s) {
        static const char *const outcomes[] = { "ok", "nonzero", "failure" };
        static const char *const streams[] = { "stdin", "stdout", "stderr" };

        s->family(s, "cwsandboxd_execs_total", PROM_COUNTER,
                  "Execs ended: exit code 0 (ok), another exit code (nonzero), no exit code (failure)");
        for (int i = 0; i < _EXEC_OUTCOME_MAX; i++)
                one_label(s, "outcome", outcomes[i], (double)m->metrics.execs[i]);
        s->family(s, "cwsandboxd_exec_bytes_total", PROM_COUNTER, "Bytes through execs, by stream");
        for (int i = 0; i < _EXEC_STREAM_MAX; i++)
                one_label(s, "stream", streams[i], (double)m->metrics.exec_bytes[i]);
        s->family(s, "cwsandboxd_file_bytes_total", PROM_COUNTER, "Bytes of files read from and written to sandboxes");
        one_label(s, "direction", "read", (double)m->metrics.file_bytes_read);
        one_label(s, "direction", "write", (double)m->metrics.file_bytes_written);
}

static void collect_backend(Manager *m, Sink *s) {
        if (!m->backend)
                return;
        s->family(s, "cwsandboxd_backend_calls_total", PROM_COUNTER,
                  "Calls to the backend, by method and final gRPC status code");
        for (int i = 0; i < _BACKEND_METHOD_MAX; i++) {
                const BackendMethodStats *bs = backend_stats(m->backend, (BackendMethod)i);

                for (int code = 0; code < (int)ELEMENTSOF(bs->by_code); code++) {
                        PromLabel l[] = { { "method", backend_method_name((BackendMethod)i) },
                                          { "code", grpc_status_name((grpc_status_code)code) } };

                        /* OK always, so the series exist from the start; the others once they happen. */
                        if (code == 0 || bs->by_code[code] > 0)
                                s->sample(s, l, ELEMENTSOF(l), (double)bs->by_code[code]);
                }
        }
        s->family(s, "cwsandboxd_backend_call_duration_seconds", PROM_HISTOGRAM,
                  "Backend call time, start to final status (for a stream, its whole life)");
        for (int i = 0; i < _BACKEND_METHOD_MAX; i++) {
                PromLabel l = { "method", backend_method_name((BackendMethod)i) };

                s->histogram(s, &l, 1, &backend_stats(m->backend, (BackendMethod)i)->latency);
        }
        one(s, "cwsandboxd_backend_streams_open", PROM_GAUGE, "Backend streams in flight",
            backend_streams_open(m->backend));
}

static void collect_reaper(Manager *m, Sink *s) {
        const ReaperStats *r = &m->reaper.stats;

        one(s, "cwsandboxd_reconcile_passes_total", PROM_COUNTER, "Reconciliation passes completed", r->passes);
        one(s, "cwsandboxd_reconcile_failures_total", PROM_COUNTER, "Reconciliation passes that failed",
            r->pass_failures);
        one(s, "cwsandboxd_orphans_reaped_total", PROM_COUNTER,
            "Sandboxes of this host that no session owned, stopped", r->reaped);
        one(s, "cwsandboxd_creates_resolved_total", PROM_COUNTER,
            "Interrupted creates whose sandbox was found after a restart", r->resolved);
        one(s, "cwsandboxd_lifetime_stops_total", PROM_COUNTER,
            "Sandboxes stopped for outliving their session's max_lifetime_seconds", r->lifetime_stops);
        one(s, "cwsandboxd_stop_failures_total", PROM_COUNTER, "Stops the daemon started that failed",
            r->stop_failures);
        one(s, "cwsandboxd_stop_retries_total", PROM_COUNTER, "Failed stops tried again", r->stop_retries);
        one(s, "cwsandboxd_stops_pending", PROM_GAUGE, "Failed stops waiting for their next try",
            reaper_pending_stops(&m->reaper));
        one(s, "cwsandboxd_tracker_ticks_total", PROM_COUNTER, "Status tracker polls of the backend",
            m->tracker.ticks);
        one(s, "cwsandboxd_tracker_watched", PROM_GAUGE, "Handles the status tracker watches",
            m->tracker.n_watched);
}

static void collect_ledger(Manager *m, Sink *s) {
        const LedgerStats *ls;

        if (!m->ledger)
                return;
        ls = ledger_stats(m->ledger);
        one(s, "cwsandboxd_ledger_records_total", PROM_COUNTER, "State ledger records appended", ls->records);
        one(s, "cwsandboxd_ledger_syncs_total", PROM_COUNTER, "State ledger fdatasync calls", ls->syncs);
        one(s, "cwsandboxd_ledger_compactions_total", PROM_COUNTER, "State ledger rewrites", ls->compactions);
        one(s, "cwsandboxd_ledger_write_errors_total", PROM_COUNTER, "State ledger writes that failed",
            ls->write_errors);
        one(s, "cwsandboxd_ledger_bytes", PROM_GAUGE, "Size of the state ledger file", ls->file_bytes);
}

static void collect_admission(Manager *m, Sink *s) {
        const Admission *a = &m->admission;

        one(s, "cwsandboxd_admission_sandboxes_alive", PROM_GAUGE,
            "Sandboxes counted against max_sandboxes: created or being created, not yet known to be done",
            a->host.alive);
        one(s, "cwsandboxd_admission_max_sandboxes", PROM_GAUGE, "The host's max_sandboxes (0 = no limit)",
            a->host.max_alive);
        one(s, "cwsandboxd_admission_queued", PROM_GAUGE, "Creates waiting for admission", a->queued);
        one(s, "cwsandboxd_admission_granted_total", PROM_COUNTER, "Creates admitted", a->stats.granted);
        one(s, "cwsandboxd_admission_waits_total", PROM_COUNTER, "Creates that had to wait for admission",
            a->stats.waits);
        s->family(s, "cwsandboxd_admission_rejections_total", PROM_COUNTER,
                  "Creates refused by the reject policy, by the limit they hit");
        one_label(s, "limit", "sandboxes", a->stats.rejected_alive);
        one_label(s, "limit", "rate", a->stats.rejected_rate);
        one(s, "cwsandboxd_admission_cancelled_total", PROM_COUNTER,
            "Creates whose callers gave up while waiting for admission", a->stats.cancelled);
        s->family(s, "cwsandboxd_admission_wait_seconds", PROM_HISTOGRAM, "Time admitted creates waited");
        s->histogram(s, NULL, 0, &a->stats.wait);
        one(s, "cwsandboxd_backend_throttles_total", PROM_COUNTER,
            "Creates the backend refused with RESOURCE_EXHAUSTED (each pauses admission)", a->stats.throttles);
}

static void collect(Manager *m, Sink *s) {
        one(s, "cwsandboxd_start_time_seconds", PROM_GAUGE, "When the daemon started, in seconds since the epoch",
            (double)m->start_wall_ms / 1000.0);
        one(s, "cwsandboxd_clients_connected", PROM_GAUGE, "Client connections open on the local socket",
            m->server ? server_connections(m->server) : 0);
        one(s, "cwsandboxd_sessions", PROM_GAUGE, "Open sessions", hashmap_size(&m->sessions_by_name));
        collect_sandboxes(m, s);
        collect_io(m, s);
        collect_admission(m, s);
        collect_backend(m, s);
        collect_reaper(m, s);
        collect_ledger(m, s);
        one(s, "cwsandboxd_textfile_write_errors_total", PROM_COUNTER, "Metrics text file writes that failed",
            m->textfile.write_errors);
}

/* ---- outputs --------------------------------------------------------------------------- */

/* Run @fn with a Prometheus sink on a memory stream; the text, or NULL. */
static char *prometheus_text(void (*fn)(void *userdata, Sink *s), void *userdata) {
        PromSink ps = { .sink = { prom_sink_family, prom_sink_sample, prom_sink_histogram } };
        char *text = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&text, &size);
        int r;

        if (!f)
                return NULL;
        prom_init(&ps.w, f);
        fn(userdata, &ps.sink);
        r = prom_end(&ps.w);
        if (fclose(f) != 0 || r < 0) {
                free(text);
                return NULL;
        }
        return text;
}

static void collect_fn(void *userdata, Sink *s) {
        collect(userdata, s);
}

char *metrics_prometheus(Manager *m) {
        return prometheus_text(collect_fn, m);
}

typedef struct SessionValues {
        const Session *session;
        const SdkMetricValue *values;
        size_t n;
} SessionValues;

static const char *sdk_help(const char *name) {
        static const struct { const char *name, *help; } helps[] = {
                { "sandboxes_created", "Sandboxes requested in the session, started or not" },
                { "executions", "Execs completed" },
                { "exec_completed_ok", "Execs that exited 0" },
                { "exec_completed_nonzero", "Execs that exited with another code" },
                { "exec_failures", "Execs that ended without an exit code" },
                { "exec_completion_rate", "exec_completed_ok / executions" },
                { "exec_failure_rate", "exec_failures / executions" },
                { "startup_count", "Sandboxes seen running, of those the session created" },
                { "avg_startup_seconds", "Mean time from create to running" },
                { "min_startup_seconds", "Shortest time from create to running" },
                { "max_startup_seconds", "Longest time from create to running" },
                { "avg_execs_per_sandbox", "Mean execs per sandbox that had one" },
                { "min_execs_per_sandbox", "Fewest execs of a sandbox that had one" },
                { "max_execs_per_sandbox", "Most execs of a sandbox" },
        };

        for (size_t i = 0; i < ELEMENTSOF(helps); i++)
                if (streq(helps[i].name, name))
                        return helps[i].help;
        return "";
}

/* "cwsandbox/executions" -> "cwsandbox_executions", a gauge: a reset sets it back. */
static void collect_session(void *userdata, Sink *s) {
        const SessionValues *sv = userdata;
        PromLabel l[] = { { "session_id", sv->session->id }, { "session_name", sv->session->name } };

        for (size_t i = 0; i < sv->n; i++) {
                const char *short_name = sv->values[i].name + strlen(SDK_METRICS_PREFIX);
                char name[96];

                snprintf(name, sizeof(name), "cwsandbox_%s", short_name);
                s->family(s, name, PROM_GAUGE, sdk_help(short_name));
                s->sample(s, l, ELEMENTSOF(l), sv->values[i].value);
        }
}

char *metrics_session_prometheus(const Session *s, const SdkMetricValue *values, size_t n) {
        SessionValues sv = { .session = s, .values = values, .n = n };

        return prometheus_text(collect_session, &sv);
}

void metrics_values_free(MetricsValue *v, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(v[i].series);
        free(v);
}

int metrics_values(Manager *m, MetricsValue **ret, size_t *ret_n) {
        MapSink ms = { .sink = { map_sink_family, map_sink_sample, map_sink_histogram } };

        collect(m, &ms.sink);
        if (ms.oom) {
                metrics_values_free(ms.values, ms.n);
                return -ENOMEM;
        }
        *ret = ms.values;
        *ret_n = ms.n;
        return 0;
}

/* ---- the text file --------------------------------------------------------------------- */

/* On the thread pool: the whole text to a temporary file, then renamed over the target. */
static void textfile_write(uv_work_t *work) {
        MetricsTextfile *t = container_of(work, MetricsTextfile, work);
        const char *path = t->path;
        _cleanup_free_ char *tmp = NULL;
        size_t len = strlen(t->text), off = 0;
        _cleanup_close_ int fd = -1;

        t->error = 0;
        if (asprintf(&tmp, "%s.tmp", path) < 0) {
                t->error = -ENOMEM;
                return;
        }
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
                t->error = -errno;
                return;
        }
        while (off < len) {
                ssize_t n = write(fd, t->text + off, len - off);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        t->error = -errno;
                        break;
                }
                off += (size_t)n;
        }
        if (t->error == 0 && close(TAKE_FD(fd)) < 0)
                t->error = -errno;
        if (t->error == 0 && rename(tmp, path) < 0)
                t->error = -errno;
        if (t->error < 0)
                (void)unlink(tmp);
}

static void textfile_timer_closed(uv_handle_t *h) {
        MetricsTextfile *t = container_of((uv_timer_t *)h, MetricsTextfile, timer);

        free(t->path);
        t->path = NULL;
        if (t->closed)
                t->closed(t->closed_userdata);
}

static void textfile_written(uv_work_t *work, int status) {
        MetricsTextfile *t = container_of(work, MetricsTextfile, work);
        const char *path = t->path;

        (void)status;
        free(t->text);
        t->text = NULL;
        t->busy = false;
        if (t->error < 0) {
                t->write_errors++;
                if (!t->failing)
                        log_warning("metrics text file %s: cannot write: %s (trying again every %" PRIu64 " s)",
                                    path, strerror(-t->error), t->manager->config->metrics_textfile_interval_seconds);
                t->failing = true;
        } else {
                t->writes++;
                if (t->failing)
                        log_info("metrics text file %s: writing again", path);
                t->failing = false;
        }
        if (t->closing)
                uv_close((uv_handle_t *)&t->timer, textfile_timer_closed);
}

static void textfile_tick(uv_timer_t *timer) {
        MetricsTextfile *t = container_of(timer, MetricsTextfile, timer);

        if (t->busy)
                return;         /* a slow disk: skip a turn rather than queue writes */
        t->text = metrics_prometheus(t->manager);
        if (!t->text)
                return;
        t->busy = true;
        if (uv_queue_work(t->manager->loop, &t->work, textfile_write, textfile_written) < 0) {
                free(t->text);
                t->text = NULL;
                t->busy = false;
        }
}

void metrics_textfile_start(Manager *m) {
        MetricsTextfile *t = &m->textfile;
        uint64_t every_ms = m->config->metrics_textfile_interval_seconds * 1000;

        t->manager = m;
        if (!m->config->metrics_textfile || !*m->config->metrics_textfile)
                return;
        /* The worker thread reads its own copy: a reload may replace the config's. */
        t->path = strdup(m->config->metrics_textfile);
        if (!t->path)
                abort();
        uv_timer_init(m->loop, &t->timer);
        t->timer.data = t;      /* started */
        (void)uv_timer_start(&t->timer, textfile_tick, 0, every_ms);
        log_info("writing metrics to %s every %" PRIu64 " s", m->config->metrics_textfile,
                 m->config->metrics_textfile_interval_seconds);
}

void metrics_textfile_close(MetricsTextfile *t, void (*closed)(void *userdata), void *userdata) {
        t->closed = closed;
        t->closed_userdata = userdata;
        if (!t->timer.data) {
                closed(userdata);
                return;
        }
        t->closing = true;
        uv_timer_stop(&t->timer);
        if (!t->busy)
                uv_close((uv_handle_t *)&t->timer, textfile_timer_closed);
}
