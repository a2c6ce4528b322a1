/*
 * Prom: the Prometheus text exposition format (version 0.0.4), written, and
 * the fixed-bucket histograms the daemon keeps for it.
 *
 * A writer emits families in order: prom_family() (HELP and TYPE lines),
 * then that family's samples. Names are the caller's constants and must be
 * valid metric and label names; label values may hold any bytes (\, " and
 * newline are escaped), so the text is valid whatever they hold.
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

/* @bounds must outlive @h; at most HISTOGRAM_MAX_BOUNDS. */
void histogram_init(Histogram *h, const double *bounds, unsigned n_bounds);
/* @v goes in the first bucket whose bound is >= @v (Prometheus' "le"). */
void histogram_observe(Histogram *h, double v);
void histogram_reset(Histogram *h);

typedef struct PromLabel {
        const char *name, *value;
} PromLabel;

typedef enum PromType {
        PROM_COUNTER,
        PROM_GAUGE,
        PROM_HISTOGRAM,
} PromType;

typedef struct PromWriter {
        FILE *f;
        const char *family;             /* the current family's name */
        PromType type;
} PromWriter;

void prom_init(PromWriter *w, FILE *f);

/* Start a family: "# HELP name help" and "# TYPE name type". */
void prom_family(PromWriter *w, const char *name, PromType type, const char *help);

/* One sample of the current counter or gauge family. */
void prom_sample(PromWriter *w, const PromLabel *labels, size_t n_labels, double value);

/* One histogram of the current histogram family: cumulative _bucket lines (le last), _sum, _count. */
void prom_histogram(PromWriter *w, const PromLabel *labels, size_t n_labels, const Histogram *h);

/* 0, or -EIO when a write failed. */
int prom_end(PromWriter *w);

/* @v as the format spells it: "42", "0.25", "+Inf", "NaN". @buf of at least 32 bytes. */
void prom_format_value(double v, char *buf, size_t size);
