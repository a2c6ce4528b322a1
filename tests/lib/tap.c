/*
 * TAP producer. Every line is written with one locked printf and flushed, so
 * output from helper threads and from child processes that inherit stdout
 * never interleaves inside a line.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"

static pthread_mutex_t tap_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned n_run, n_failed, n_planned;
static bool planned;

void tap_plan(unsigned n) {
        pthread_mutex_lock(&tap_lock);
        printf("1..%u\n", n);
        fflush(stdout);
        n_planned = n;
        planned = true;
        pthread_mutex_unlock(&tap_lock);
}

void tap_skip_all(const char *reason) {
        printf("1..0 # SKIP %s\n", reason);
        fflush(stdout);
}

void tap_skip(const char *reason, const char *name) {
        pthread_mutex_lock(&tap_lock);
        n_run++;
        printf("ok %u - %s # SKIP %s\n", n_run, name, reason);
        fflush(stdout);
        pthread_mutex_unlock(&tap_lock);
}

static bool vok(bool cond, const char *fmt, va_list ap) {
        char name[512];

        vsnprintf(name, sizeof(name), fmt, ap);
        /* '#' starts a directive in TAP; keep names plain. */
        for (char *p = name; *p; p++)
                if (*p == '#' || *p == '\n')
                        *p = ' ';
        pthread_mutex_lock(&tap_lock);
        n_run++;
        if (!cond)
                n_failed++;
        printf("%s %u - %s\n", cond ? "ok" : "not ok", n_run, name);
        fflush(stdout);
        pthread_mutex_unlock(&tap_lock);
        return cond;
}

bool ok(bool cond, const char *fmt, ...) {
        va_list ap;
        bool r;

        va_start(ap, fmt);
        r = vok(cond, fmt, ap);
        va_end(ap);
        return r;
}

bool tap_is_int(int64_t got, int64_t want, const char *expr, const char *fmt, ...) {
        va_list ap;
        bool r;

        va_start(ap, fmt);
        r = vok(got == want, fmt, ap);
        va_end(ap);
        if (!r)
                diag("  %s: got %" PRId64 ", want %" PRId64, expr, got, want);
        return r;
}

bool is_str(const char *got, const char *want, const char *fmt, ...) {
        va_list ap;
        bool same = got && want ? strcmp(got, want) == 0 : got == want;
        bool r;

        va_start(ap, fmt);
        r = vok(same, fmt, ap);
        va_end(ap);
        if (!r)
                diag("  got \"%s\", want \"%s\"", got ? got : "(null)", want ? want : "(null)");
        return r;
}

void diag(const char *fmt, ...) {
        char line[2048];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        pthread_mutex_lock(&tap_lock);
        /* Multi-line messages stay comments on every line. */
        for (char *s = line, *nl; s; s = nl) {
                nl = strchr(s, '\n');
                if (nl)
                        *nl++ = 0;
                printf("# %s\n", s);
        }
        fflush(stdout);
        pthread_mutex_unlock(&tap_lock);
}

void bail_out(const char *fmt, ...) {
        va_list ap;

        pthread_mutex_lock(&tap_lock);
        printf("Bail out! ");
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
        fflush(stdout);
        pthread_mutex_unlock(&tap_lock);
        exit(1);
}

int done(void) {
        bool plan_ok = true;

        pthread_mutex_lock(&tap_lock);
        if (!planned)
                printf("1..%u\n", n_run);
        else if (n_planned != n_run) {
                printf("# planned %u tests, ran %u\n", n_planned, n_run);
                plan_ok = false;
        }
        if (n_failed)
                printf("# failed %u of %u\n", n_failed, n_run);
        fflush(stdout);
        pthread_mutex_unlock(&tap_lock);
        return n_failed == 0 && plan_ok ? 0 : 1;
}
