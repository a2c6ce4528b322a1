/*
 * The pure helpers of libcwsandbox: names of status codes and sandbox
 * states, and where the daemon's socket is looked for when no path is given.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cwsandbox.h"
#include "tap.h"

#define RUN_SOCKET "/run/cwsandboxd/cwsandboxd.sock"

static void test_strerror(void) {
        static const char *const names[] = {
                "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                "UNAUTHENTICATED",
        };
        bool all = true;

        for (int i = 0; i < (int)ELEMENTSOF(names); i++)
                if (strcmp(cws_strerror(i), names[i]) != 0) {
                        diag("code %d: %s", i, cws_strerror(i));
                        all = false;
                }
        ok(all, "cws_strerror: the gRPC names of codes 0..16");
        is_int(CWS_UNAVAILABLE, 14, "CWS_UNAVAILABLE is gRPC's 14");
        is_int(CWS_UNAUTHENTICATED, 16, "CWS_UNAUTHENTICATED is gRPC's 16");
        is_str(cws_strerror(17), "UNKNOWN_CODE", "cws_strerror: a code past the table");
        is_str(cws_strerror(-1), "UNKNOWN_CODE", "cws_strerror: a negative code");
}

static void test_state_names(void) {
        is_str(cws_state_name(CWS_STATE_RUNNING), "RUNNING", "state name: RUNNING");
        is_str(cws_state_name(CWS_STATE_TERMINATED), "TERMINATED", "state name: TERMINATED");
        is_str(cws_state_name(CWS_STATE_UNSTARTED), "UNSTARTED", "state name: UNSTARTED");
        is_str(cws_state_name((cws_sandbox_state)42), "UNKNOWN", "state name: an unknown value");
}

static void check_path(const char *want, const char *what) {
        char *got = cws_default_socket_path();

        is_str(got, want, "socket path: %s", what);
        free(got);
}

static void test_socket_path(void) {
        bool run_exists = access(RUN_SOCKET, F_OK) == 0;

        setenv("CWSANDBOXD_SOCKET", "/x/explicit.sock", 1);
        setenv("XDG_RUNTIME_DIR", "/x/xdg", 1);
        check_path("/x/explicit.sock", "$CWSANDBOXD_SOCKET first");

        setenv("CWSANDBOXD_SOCKET", "", 1);
        check_path(run_exists ? RUN_SOCKET : "/x/xdg/cwsandboxd/cwsandboxd.sock",
                   "an empty $CWSANDBOXD_SOCKET counts as unset");

        unsetenv("CWSANDBOXD_SOCKET");
        if (run_exists)
                check_path(RUN_SOCKET, "the system socket, since it exists");
        else
                check_path("/x/xdg/cwsandboxd/cwsandboxd.sock", "$XDG_RUNTIME_DIR when the system socket is absent");

        unsetenv("XDG_RUNTIME_DIR");
        check_path(RUN_SOCKET, "the system path when nothing else is set");
}

static void test_bad_arguments(void) {
        cws_error err = { .code = 99 };
        cws_conn *c = NULL;

        is_int(cws_connect("/x/y.sock", NULL, NULL, &err), CWS_INVALID_ARGUMENT,
               "connect without ret_conn: INVALID_ARGUMENT");
        is_int(err.code, CWS_INVALID_ARGUMENT, "err.code is filled");
        ok(err.message[0] != 0, "with a message: %s", err.message);
        is_int(cws_connect("/nonexistent/dir/cwsandboxd.sock", NULL, &c, NULL), CWS_UNAVAILABLE,
               "connect to nothing with err NULL: UNAVAILABLE");
        ok(c == NULL, "no connection on failure");
}

int main(void) {
        test_strerror();
        test_state_names();
        test_socket_path();
        test_bad_arguments();
        return done();
}
