/*
 * TAP output for tests: "ok N - name" lines, diagnostics as "# ..." and the
 * plan at the end (or up front with tap_plan()). Safe to call from several
 * threads; numbering stays consecutive.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "macro.h"

/**
 * tap_plan() - print "1..@n" now; done() then checks the count.
 */
void tap_plan(unsigned n);

/**
 * tap_skip_all() - print "1..0 # SKIP @reason"; the caller then exits 0.
 */
void tap_skip_all(const char *reason);

/**
 * tap_skip() - one test point that passes as "ok N - @name # SKIP @reason":
 * a check that cannot run here (no root, no namespaces).
 */
void tap_skip(const char *reason, const char *name);

/**
 * ok() - one test point. Returns @cond so callers can skip dependent checks.
 */
bool ok(bool cond, const char *fmt, ...) _printf_(2, 3);

/**
 * is_int() / is_str() - compare and print both values on failure.
 * is_str() treats NULL as distinct from every string.
 */
#define is_int(a, b, ...) tap_is_int((int64_t)(a), (int64_t)(b), #a, __VA_ARGS__)
bool tap_is_int(int64_t got, int64_t want, const char *expr, const char *fmt, ...) _printf_(4, 5);
bool is_str(const char *got, const char *want, const char *fmt, ...) _printf_(3, 4);

/**
 * diag() - a "# " comment line (stdout, so it stays in order with results).
 */
void diag(const char *fmt, ...) _printf_(1, 2);

/**
 * bail_out() - "Bail out! ..." and exit(1): for setup failures after which
 * nothing meaningful can be tested.
 */
_noreturn_ void bail_out(const char *fmt, ...) _printf_(1, 2);

/**
 * done() - print the plan if none was given, and return the process exit
 * code: 0 when every test passed and the plan matched, else 1.
 */
int done(void);
