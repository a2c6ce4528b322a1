/*
 * Shared pieces of the integration tests: a backend plus a client per test,
 * unique markers, clocks, a shell-in-the-sandbox shortcut, and a scan of
 * /proc for processes that carry a marker.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "backend-client.h"
#include "backend-proc.h"
#include "tap.h"

/* How long a sandbox may take to reach RUNNING, or a short command to end,
 * on a slow machine. Generous on purpose: these are limits, not measurements. */
#define TEST_START_MS 20000
#define TEST_CMD_MS 20000

typedef struct TestBackend {
        BackendProc *proc;
        BcClient *client;
} TestBackend;

/**
 * test_needs_root() - true (after printing the TAP skip line) when the test
 * cannot run because we are not root; main() then returns 0.
 */
bool test_needs_root(void);

/**
 * test_backend_start() - start cwsandbox-local with @o (may be NULL) and a
 * client for it (with @o->token). Bails out of the test on failure.
 */
void test_backend_start(TestBackend *t, const BackendProcOpts *o);

/**
 * test_backend_stop() - SIGTERM the backend, record a test point that it
 * exited 0, and free both.
 */
void test_backend_stop(TestBackend *t);

/**
 * test_marker() - a string unique to this run ("cwsl-@what-<pid>-<n>-<rand>"),
 * heap-allocated.
 */
char *test_marker(const char *what);

int64_t test_now_ns(void);      /* realtime */
int64_t test_mono_ms(void);
void test_sleep_ms(int ms);

/**
 * test_start_sandbox() - create a sandbox with @o and wait for RUNNING.
 * Records one test point named @what; returns the sandbox or NULL.
 */
BcSandbox *test_start_sandbox(BcClient *c, const BcSandboxOpts *o, const char *what);

/**
 * test_keepalive_opts() - options for the SDK's default main process.
 */
BcSandboxOpts test_keepalive_opts(void);

/**
 * test_sh() - run "/bin/sh -c @script" through StreamExec in @id and wait for
 * the end. Returns the finished exec (free with bc_exec_free) or NULL, after
 * a diagnostic, when the stream did not end within TEST_CMD_MS.
 */
BcExec *test_sh(BcClient *c, const char *id, const char *script);

/**
 * test_sh_out() - test_sh() that returns stdout (heap) when the command
 * exited 0, else NULL after a diagnostic.
 */
char *test_sh_out(BcClient *c, const char *id, const char *script);

/**
 * test_find_processes() - host processes whose command line or environment
 * contains @marker (other than ourselves). Stores up to @max pids; returns
 * how many were found.
 */
size_t test_find_processes(const char *marker, pid_t *pids, size_t max);

/**
 * test_diag_status() - a diagnostic line for a failed call.
 */
void test_diag_status(const char *what, int r, const BcStatus *st);

/**
 * test_chomp() - strip trailing newlines (and carriage returns) in place.
 */
char *test_chomp(char *s);

/**
 * test_unix_accepts() - something accepts connections on the Unix socket @path.
 */
bool test_unix_accepts(const char *path);

/**
 * test_child_alive() - the child *@pid has not exited; once it has, it is
 * reaped, its status stored in *@status and *@pid set to 0.
 */
bool test_child_alive(pid_t *pid, int *status);

/**
 * test_rm_rf() - remove @dir and what is in it, staying on one file system:
 * a mount left behind is skipped, never descended into.
 */
void test_rm_rf(const char *dir);
