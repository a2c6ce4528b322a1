/*
 * PromParse: a strict parser of the Prometheus text format (version 0.0.4)
 * for tests: it refuses what a Prometheus server would refuse, and more
 * (the daemon's families must all have HELP and TYPE, counters end in
 * _total), and gives the samples back so a test can read values.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

typedef struct PromSample {
        char *name;
        char *labels;           /* canonical: a="x",b="y" sorted by name, values escaped; "" for none */
        double value;
        char *group;            /* the labels without le (a histogram bucket's label set) */
        bool has_le;
        double le;
} PromSample;

typedef struct PromFamily {
        char *name;
        char *type;             /* counter, gauge, histogram, summary, untyped; NULL when no TYPE line */
        bool has_help;
} PromFamily;

typedef struct PromDoc {
        PromSample *samples;
        size_t n_samples;
        PromFamily *families;
        size_t n_families;
} PromDoc;

/* Parse @text into @ret; 0, or -EINVAL with the line number and the rule broken in @err. */
int prom_parse(const char *text, PromDoc *ret, char *err, size_t err_size);
void prom_doc_free(PromDoc *d);

/* The value of sample @name with canonical @labels (NULL or "" = none); false when absent. */
bool prom_doc_get(const PromDoc *d, const char *name, const char *labels, double *ret);

/* Every family named @prefix..., with HELP and TYPE, counters named ..._total. 0 or -EINVAL with @err. */
int prom_doc_check_daemon(const PromDoc *d, const char *prefix, char *err, size_t err_size);
