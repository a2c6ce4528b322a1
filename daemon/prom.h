/*
 * Prom: the Prometheus text exposition format (version 0.0.4), written, and
 * the fixed-bucket histograms the daemon keeps for it.
 *
 * A writer emits families in order: prom_family() (HELP and TYPE lines),
 * then that family's samples. Metric and label names are the caller's
 * constants: a bad name, a sample with no family, a counter below zero or a
 * histogram call on a gauge is a bug, caught by assert(). Label values and
 * help text are data and may hold any bytes; the writer escapes what the
 * format needs (\, newline, and " in label values), so the text stays valid
 * whatever they hold.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define HISTOGRAM_MAX_BOUNDS 24

typedef struct Histogram {
        const double *bounds;           /* upper bounds, ascending and finite; +Inf is implicit */
        unsigned n_bounds;
        uint64_t counts[HISTOGRAM_MAX_BOUNDS + 1];      /* per bucket, not cumulative; the last is above every bound */
        uint64_t count;
        double sum;
} Histogram;

/**
 * histogram_init() - an empty histogram over @bounds.
 * @bounds: at most HISTOGRAM_MAX_BOUNDS finite bounds, strictly ascending; they must outlive @h.
 */
void histogram_init(Histogram *h, const double *bounds, unsigned n_bounds);

/**
 * histogram_observe() - count @v in the first bucket whose bound is >= @v
 * (Prometheus' "le"), or in the last when it is above every bound. NaN is
 * above every bound and makes the sum NaN, as Prometheus clients do.
 */
void histogram_observe(Histogram *h, double v);

/**
 * histogram_reset() - back to empty, over the same bounds.
 */
void histogram_reset(Histogram *h);

typedef struct PromLabel {
        const char *name, *value;       /* a NULL value is written as "" */
} PromLabel;

typedef enum PromType {
        PROM_COUNTER,
        PROM_GAUGE,
        PROM_HISTOGRAM,
} PromType;

/* Longest metric name a writer takes, the histogram suffixes left out. */
#define PROM_NAME_MAX 127

typedef struct PromWriter {
        FILE *f;
        char family[PROM_NAME_MAX + 1]; /* the current family, "" before the first */
        PromType type;
} PromWriter;

/**
 * prom_init() - a writer on @f (a memory stream or a file the caller owns and closes).
 */
void prom_init(PromWriter *w, FILE *f);

/**
 * prom_family() - start a family: "# HELP @name @help" and "# TYPE @name @type".
 * @name: a valid metric name, [a-zA-Z_:][a-zA-Z0-9_:]*, copied.
 * @help: any text; backslash and newline are escaped.
 */
void prom_family(PromWriter *w, const char *name, PromType type, const char *help);

/**
 * prom_sample() - one sample of the current counter or gauge family:
 * name{l1="v1",...} value. Label names must be valid ([a-zA-Z_][a-zA-Z0-9_]*,
 * not "__..."), distinct, and never "le"; a counter's value must not be
 * negative.
 */
void prom_sample(PromWriter *w, const PromLabel *labels, size_t n_labels, double value);

/**
 * prom_histogram() - one histogram of the current histogram family with
 * @labels (the rules of prom_sample()): a cumulative name_bucket line per
 * bound and le="+Inf", then name_sum and name_count.
 */
void prom_histogram(PromWriter *w, const PromLabel *labels, size_t n_labels, const Histogram *h);

/**
 * prom_end() - flush. Returns 0, or -EIO when a write failed.
 */
int prom_end(PromWriter *w);

/**
 * prom_format_value() - @v as the writer spells values and le bounds: an
 * integer that a double holds exactly (|v| <= 2^53) without exponent or
 * point ("42"), other finite values in the fewest digits that read back the
 * same ("0.1", "1e+300"), and "+Inf", "-Inf", "NaN".
 * @size: at least PROM_VALUE_MAX bytes.
 */
#define PROM_VALUE_MAX 32
void prom_format_value(double v, char *buf, size_t size);
