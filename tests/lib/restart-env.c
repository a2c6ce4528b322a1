/*
 * RestartEnv: see restart-env.h.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>

#include "backend-client.h"
#include "restart-env.h"
#include "tap.h"

void restart_env_start(RestartEnv *e) {
        *e = (RestartEnv) { 0 };
        test_backend_start(&e->backend, &(BackendProcOpts) { .token = RESTART_TOKEN, .tcp = true });
        snprintf(e->url, sizeof(e->url), "http://%s", e->backend.proc->target);
        setenv("CWSANDBOX_API_KEY", RESTART_TOKEN, 1);
}

void restart_env_stop(RestartEnv *e) {
        test_backend_stop(&e->backend);
        unsetenv("CWSANDBOX_API_KEY");
}

DaemonProc *restart_env_daemon(RestartEnv *e, int reap_s, const char *const *extra) {
        char reap[16];
        const char *all[32] = { "--backend-url", e->url, "--reap-interval-seconds", reap };
        size_t n = 4;
        DaemonProc *d = NULL;
        int r;

        snprintf(reap, sizeof(reap), "%d", reap_s);
        for (; extra && *extra && n < sizeof(all) / sizeof(all[0]) - 1; extra++)
                all[n++] = *extra;
        all[n] = NULL;
        r = daemon_proc_start(all, &d);
        if (r < 0)
                bail_out("cannot start cwsandboxd: %s", strerror(-r));
        return d;
}

FrameClient *restart_env_client(DaemonProc *d) {
        FrameClient *c = NULL;
        int r = dc_connect(d->socket_path, &c);

        if (r != 0)
                bail_out("cannot connect to cwsandboxd: %d", r);
        return c;
}

void restart_env_kill9(DaemonProc *d) {
        int status;

        daemon_proc_signal(d, SIGKILL);
        (void)waitpid(d->pid, &status, 0);
        d->pid = 0;
}

void restart_env_restart(DaemonProc *d, const char *what) {
        int r = daemon_proc_restart(d);

        if (r < 0)
                bail_out("%s: cannot restart cwsandboxd: %s", what, strerror(-r));
}

void test_strv_free(char **v) {
        for (size_t i = 0; v && v[i]; i++)
                free(v[i]);
        free(v);
}

int restart_env_live(RestartEnv *e, const char *tag, char ***ret_ids) {
        const char *tags[] = { tag, NULL };
        char **ids = NULL, *token = NULL;
        size_t n = 0;

        do {
                Coreweave__Sandbox__V1__ListSandboxesResponse *resp = NULL;
                BcStatus st;

                if (bc_list_sandboxes(e->backend.client, &(BcListOpts) { .tags = tags, .page_size = 100,
                                                                          .page_token = token }, &resp, &st) != 0) {
                        free(token);
                        test_strv_free(ids);
                        return -1;
                }
                free(token);
                token = NULL;
                for (size_t i = 0; i < resp->n_sandboxes; i++) {
                        int s = resp->sandboxes[i]->status ? (int)resp->sandboxes[i]->status->state : 0;

                        if (s == BC_STATE(COMPLETED) || s == BC_STATE(FAILED) || s == BC_STATE(TERMINATED))
                                continue;
                        ids = realloc(ids, (n + 2) * sizeof(char *));
                        if (!ids)
                                bail_out("out of memory");
                        ids[n++] = strdup(resp->sandboxes[i]->sandbox_id);
                        ids[n] = NULL;
                }
                if (resp->next_page_token && *resp->next_page_token)
                        token = strdup(resp->next_page_token);
                bc_free(resp);
        } while (token);
        if (ret_ids)
                *ret_ids = ids;
        else
                test_strv_free(ids);
        return (int)n;
}

int restart_env_wait_live(RestartEnv *e, const char *tag, int want, int timeout_ms) {
        int64_t end = test_mono_ms() + timeout_ms;
        int n;

        for (;;) {
                n = restart_env_live(e, tag, NULL);
                if (n == want || test_mono_ms() >= end)
                        return n;
                test_sleep_ms(100);
        }
}
