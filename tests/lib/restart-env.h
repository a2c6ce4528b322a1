/*
 * RestartEnv: a cwsandbox-local started by the test (on 127.0.0.1, with a
 * token) and cwsandboxd daemons pointed at it with --backend-url, so the
 * backend and its sandboxes outlive a daemon that is killed or restarted,
 * as a real remote backend does. Also the no-leak check: what runs on the
 * backend with the daemon's tag, counted by the backend itself.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "daemon-calls.h"
#include "daemon-proc.h"
#include "test-util.h"

#define RESTART_TOKEN "restart-test-token-0123456789"

typedef struct RestartEnv {
        TestBackend backend;
        char url[128];
} RestartEnv;

/* Start the backend and set CWSANDBOX_API_KEY for the daemons. Bails out on failure. */
void restart_env_start(RestartEnv *e);
void restart_env_stop(RestartEnv *e);

/**
 * restart_env_daemon() - a daemon on @e's backend with --reap-interval-seconds
 * @reap_s and @extra (NULL-terminated, may be NULL). Bails out on failure.
 */
DaemonProc *restart_env_daemon(RestartEnv *e, int reap_s, const char *const *extra);

/**
 * restart_env_live() - the backend's live (not terminal) sandboxes carrying
 * @tag, all pages: their ids in *@ret_ids (may be NULL; free with
 * test_strv_free()). Returns the count, or -1 when the backend did not answer.
 */
int restart_env_live(RestartEnv *e, const char *tag, char ***ret_ids);

/**
 * restart_env_wait_live() - wait up to @timeout_ms until exactly @want live
 * sandboxes carry @tag. Returns the last count seen.
 */
int restart_env_wait_live(RestartEnv *e, const char *tag, int want, int timeout_ms);

/* A connected, greeted client of @d; bails out when it cannot connect. */
FrameClient *restart_env_client(DaemonProc *d);

/* SIGKILL the daemon and reap it. */
void restart_env_kill9(DaemonProc *d);

/* Start it again on the same state; bails out (naming @what) when it cannot. */
void restart_env_restart(DaemonProc *d, const char *what);

void test_strv_free(char **v);
