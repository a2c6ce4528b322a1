/*
 * Manager: start-up and shut-down of the daemon's parts, and ids.
 *
 * Start: completion queue, then the backend (for the embedded backend: the
 * child first, then the channel pool once it listens), then the socket.
 * Stop: the reverse; every part reports when it has nothing left on the
 * loop, and only then is the next one torn down, so the loop ends with no
 * handle open.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "apikey.h"
#include "handle.h"
#include "log.h"
#include "manager.h"
#include "persist.h"
#include "session.h"

#ifndef BINDIR
#define BINDIR "/usr/bin"
#endif

uint64_t manager_now_ms(const Manager *m) {
        return uv_now(m->loop);
}

int64_t manager_wall_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *manager_new_id(Manager *m, const char *prefix) {
        uint8_t rnd[8];
        char *id;

        /* Random, not a counter: ids are handed to clients and must not be guessable. */
        if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd)) {
                uint64_t x = ++m->next_serial ^ (uint64_t)manager_wall_ms() << 20;

                memcpy(rnd, &x, sizeof(rnd));
        }
        if (asprintf(&id, "%s%02x%02x%02x%02x%02x%02x%02x%02x", prefix, rnd[0], rnd[1], rnd[2], rnd[3],
                     rnd[4], rnd[5], rnd[6], rnd[7]) < 0)
                return NULL;
        return id;
}

void manager_state_status(const Manager *m, char *buf, size_t size) {
        const char *health = m->ledger ? ledger_health(m->ledger) : "not open";

        if (m->ledger_load_result == LEDGER_LOAD_OK || m->ledger_load_result == LEDGER_LOAD_NONE)
                snprintf(buf, size, "%s", health);
        else
                snprintf(buf, size, "%s; at start: %s", health, m->ledger_report);
}

/* "cwsandboxd-host-" + the host name, lowercased, with anything odd as '-'. */
static void make_host_tag(Manager *m) {
        char host[64] = "localhost";
        size_t plen = strlen(MANAGER_HOST_TAG_PREFIX);

        (void)gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = 0;
        for (char *p = host; *p; p++)
                *p = isalnum((unsigned char)*p) || *p == '.' || *p == '-' ? (char)tolower((unsigned char)*p) : '-';
        memcpy(m->host_tag, MANAGER_HOST_TAG_PREFIX, plen);
        snprintf(m->host_tag + plen, sizeof(m->host_tag) - plen, "%s", host[0] ? host : "localhost");
}

/* ---- start ----------------------------------------------------------------------------- */

static void conn_gone(void *userdata, Conn *conn) {
        session_conn_gone(userdata, conn);
}

static int start_server(Manager *m, int listen_fd) {
        const Config *c = m->config;
        ServerOptions o = {
                .socket_path = c->socket_path,
                .listen_fd = listen_fd,
                .max_frame_bytes = c->max_frame_bytes,
                .max_connections = (unsigned)c->max_connections,
                .max_connections_per_uid = (unsigned)c->max_connections_per_uid,
                .daemon_version = PROJECT_VERSION,
                .backend_kind = m->local ? "local" : "remote",
                .backend_url = m->local ? "" : c->backend_url,
                .dispatch = manager_dispatch,
                .conn_gone = conn_gone,
                .userdata = m,
        };
        int r;

        r = server_new(m->loop, &o, &m->server);
        /* server_new() has logged why. */
        return r;
}

static int start_backend(Manager *m, const char *target, bool tls, const char *key) {
        BackendOptions o = {
                .target = target,
                .tls = tls,
                .api_key = key,
                .pool_size = (unsigned)m->config->channel_pool_size,
        };
        int r;

        r = backend_new(m->loop, &m->cq, &o, &m->backend);
        if (r < 0)
                log_error("cannot set up the backend client for %s: %s", target, strerror(-r));
        return r;
}

static void reconciled(void *userdata) {
        Manager *m = userdata;

        if (!m->stopping)
                m->ready(m->ready_userdata);
}

/* Serving: restored sessions start lingering, the first pass runs, then we are ready. */
static void start_serving(Manager *m) {
        session_linger_idle(m);
        reaper_start(&m->reaper, reconciled, m);
        metrics_textfile_start(m);
}

static void local_ready(void *userdata) {
        Manager *m = userdata;
        int r;

        log_info("embedded backend listening on %s", local_child_target(m->local));
        r = start_backend(m, local_child_target(m->local), false, local_child_token(m->local));
        if (r >= 0)
                r = start_server(m, m->listen_fd);
        if (r < 0) {
                /* Nothing to serve with: stop as if asked to, and let main report it. */
                m->start_failed = r;
                manager_stop(m, NULL, NULL);
                return;
        }
        start_serving(m);
}

static int start_local(Manager *m) {
        const Config *c = m->config;
        _cleanup_free_ char *dir = NULL, *program = NULL;
        LocalChildOptions o = { 0 };

        if (asprintf(&dir, "%s/local", c->state_dir) < 0)
                return -ENOMEM;
        if (c->local_backend_path && *c->local_backend_path)
                program = strdup(c->local_backend_path);
        else
                program = strdup(BINDIR "/cwsandbox-local");
        if (!program)
                return -ENOMEM;
        o.program = program;
        o.dir = dir;
        o.log_level = log_level_to_string(c->log_level);
        return local_child_new(m->loop, &o, local_ready, m, &m->local);
}

static void admission_full(void *userdata) {
        Manager *m = userdata;

        reaper_pass_soon(&m->reaper);
}

int manager_new(uv_loop_t *loop, const Config *config, int listen_fd,
                void (*ready)(void *userdata), void *userdata, Manager **ret) {
        Manager *m;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->loop = loop;
        m->config = config;
        m->start_ms = uv_now(loop);
        m->start_wall_ms = manager_wall_ms();
        make_host_tag(m);
        r = cq_loop_init(&m->cq, loop);
        if (r < 0) {
                free(m);
                return log_error("cannot start the completion queue: %s", strerror(-r)), r;
        }
        tracker_init(&m->tracker, m);
        reaper_init(&m->reaper, m);
        host_metrics_init(&m->metrics);
        admission_init(&m->admission, loop, config->admission_policy, (unsigned)config->max_sandboxes,
                       config->max_creates_per_second);
        m->admission.full = admission_full;
        m->admission.full_userdata = m;
        *ret = m;       /* from here on, manager_stop() cleans up */
        r = persist_load(m);
        if (r < 0)
                return log_error("cannot load the state ledger: %s", strerror(-r)), r;

        m->ready = ready;
        m->ready_userdata = userdata;
        m->listen_fd = listen_fd;
        if (!config->backend_url || !*config->backend_url) {
                r = start_local(m);
                if (r < 0)
                        log_error("cannot start the embedded backend: %s", strerror(-r));
                return r;
        }

        r = apikey_load(config->api_key_file, &m->api_key);
        if (r < 0)
                return r;
        if (!m->api_key)
                log_warning("no API key configured: calls to %s go without authorization", config->backend_url);
        r = start_backend(m, config->backend_target, config->backend_tls, m->api_key);
        if (r < 0)
                return r;
        r = start_server(m, listen_fd);
        if (r < 0)
                return r;
        start_serving(m);
        return 0;
}

/* ---- reload ---------------------------------------------------------------------------- */

int manager_reload(Manager *m) {
        const Config *c = m->config;
        char *key = NULL;
        int r;

        admission_set_limits(&m->admission, c->admission_policy, (unsigned)c->max_sandboxes,
                             c->max_creates_per_second);
        log_notice("reload: max_sandboxes %" PRIu64 ", max_creates_per_second %g, policy %s", c->max_sandboxes,
                   c->max_creates_per_second, c->admission_policy == ADMISSION_WAIT ? "wait" : "reject");
        if (m->local || !m->backend)
                return 0;       /* the embedded backend's token is its own */
        r = apikey_load(c->api_key_file, &key);
        if (r < 0)
                return log_error("reload: keeping the API key in use"), r;
        r = backend_set_api_key(m->backend, key);
        if (r < 0) {
                apikey_free(key);
                return log_error("reload: the new API key cannot be used: %s", strerror(-r)), r;
        }
        apikey_free(m->api_key);
        m->api_key = key;
        log_notice("reload: API key %s", key ? "read again" : "none configured");
        return 0;
}

void manager_count_states(const Manager *m, uid_t uid, unsigned counts[]) {
        HashmapIter it = HASHMAP_ITER_INIT;
        Handle *h;

        memset(counts, 0, HANDLE_STATE_SLOTS * sizeof(counts[0]));
        while ((h = hashmap_next(&m->handles_by_id, &it)))
                if (manager_may_access(uid, h->owner))
                        counts[handle_state_slot(h->state)]++;
}

void manager_status_line(const Manager *m, char *buf, size_t size) {
        unsigned counts[HANDLE_STATE_SLOTS];

        manager_count_states(m, 0, counts);
        snprintf(buf, size, "%zu sessions, %zu sandboxes (%u running), %u clients, %u creates waiting",
                 hashmap_size(&m->sessions_by_name), hashmap_size(&m->handles_by_id),
                 counts[handle_state_slot(CWSANDBOXD__V1__SANDBOX_STATE__SANDBOX_STATE_RUNNING)],
                 m->server ? server_connections(m->server) : 0, m->admission.queued);
}

/* ---- stop ------------------------------------------------------------------------------ */

static void stop_step(Manager *m);

static void step_done(void *userdata) {
        Manager *m = userdata;

        m->stop_pending--;
        stop_step(m);
}

static void tracker_closed(uv_handle_t *h) {
        step_done(container_of((uv_timer_t *)h, Tracker, timer)->manager);
}

static void admission_closed(uv_handle_t *h) {
        step_done(container_of(h, Manager, admission.timer));
}

static void cq_closed(CqLoop *cq) {
        step_done(container_of(cq, Manager, cq));
}

/*
 * Each stage starts when the previous has reported: calls in flight drain
 * (bounded by drain_timeout_seconds), then connections close (their queued
 * output flushed); with stop_on_shutdown every session closes; the
 * ledger takes the state and the tracker, reaper and sessions go; then the
 * backend's calls, the child and the completion queue.
 */
static void stop_step(Manager *m) {
        if (m->stop_pending > 0)
                return;
        switch (m->stop_stage++) {
        case 0:
                if (m->server) {
                        m->stop_pending++;
                        server_drain(m->server, m->config->drain_timeout_seconds * 1000, step_done, m);
                }
                break;
        case 1:
                if (m->server) {
                        m->stop_pending++;
                        server_close(m->server, step_done, m);
                }
                break;
        case 2:
                if (m->config->stop_on_shutdown && m->backend) {
                        log_info("stop_on_shutdown: stopping every sandbox");
                        m->stop_pending++;
                        session_close_all(m, step_done, m);
                }
                break;
        case 3:
                m->stop_pending += 4;
                tracker_close(&m->tracker, tracker_closed);
                reaper_close(&m->reaper, step_done, m);
                admission_close(&m->admission, admission_closed);
                metrics_textfile_close(&m->textfile, step_done, m);
                if (m->ledger) {
                        m->stop_pending++;
                        ledger_close(m->ledger, step_done, m);
                }
                session_free_all(m);
                break;
        case 4:
                if (m->backend) {
                        m->stop_pending++;
                        backend_shutdown(m->backend, step_done, m);
                }
                break;
        case 5:
                if (m->local) {
                        m->stop_pending++;
                        local_child_stop(m->local, step_done, m);
                }
                break;
        case 6:
                m->stop_pending++;
                cq_loop_shutdown(&m->cq, cq_closed);
                break;
        default:
                if (m->stopped)
                        m->stopped(m->stopped_userdata);
                return;
        }
        stop_step(m);
}

void manager_stop(Manager *m, void (*done)(void *userdata), void *userdata) {
        if (done) {
                m->stopped = done;
                m->stopped_userdata = userdata;
        }
        if (m->stopping)
                return;
        m->stopping = true;
        log_info("shutting down");
        if (m->server)
                server_stop_accepting(m->server);
        stop_step(m);
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        server_free(m->server);
        backend_free(m->backend);
        local_child_free(m->local);
        ledger_free(m->ledger);
        hashmap_deinit(&m->sessions_by_id);
        hashmap_deinit(&m->sessions_by_name);
        hashmap_deinit(&m->handles_by_id);
        hashmap_deinit(&m->handles_by_sandbox);
        apikey_free(m->api_key);
        free(m);
        return NULL;
}
