/*
 * PromParse: a strict parser of the Prometheus text format (version 0.0.4)
 * for tests. It refuses what a Prometheus server would refuse, and some
 * spellings it would take: values must be decimal or hexadecimal Go floats
 * without digit separators, or exactly +Inf, -Inf or NaN. It gives the
 * samples back so a test can read values, and prom_doc_check_daemon() adds
 * the daemon's own rules (a prefix, HELP and TYPE everywhere, counters
 * named *_total).
 *
 * Rules enforced, each reported with its line number:
 *   - every line ends with \n; blank lines and other # comments are skipped;
 *   - metric names [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]*
 *     not starting with "__", no label twice in a sample;
 *   - label values and HELP text use only the escapes \\ \" \n (HELP: \\ \n);
 *   - a value, then at most an integer timestamp;
 *   - at most one HELP and one TYPE per family, TYPE before its first sample,
 *     TYPE counter, gauge, histogram, summary or untyped;
 *   - a family's samples together (one never comes back after another began),
 *     no sample twice (same name and label set), counters not negative;
 *   - histograms: only name_bucket (with le), name_sum and name_count; per
 *     label set, buckets in increasing le with cumulative counts, the last
 *     le="+Inf" and equal to name_count, and both _sum and _count present.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

typedef struct PromSample {
        char *name;
        char *labels;           /* canonical: a="x",b="y" sorted by name, values escaped; "" for none */
        double value;
        unsigned line;          /* where it was read, from 1 */
        /* For histograms: */
        char *group;            /* the canonical labels without le */
        bool has_le;
        double le;
} PromSample;

typedef struct PromFamily {
        char *name;
        char *type;             /* counter, gauge, histogram, summary, untyped; NULL when no TYPE line */
        bool has_help;
        size_t first_sample;    /* its samples: doc->samples[first_sample ..] */
        size_t n_samples;
} PromFamily;

typedef struct PromDoc {
        PromSample *samples;
        size_t n_samples;
        PromFamily *families;   /* in the order they began */
        size_t n_families;
} PromDoc;

/**
 * prom_parse() - parse @text into @ret (freed with prom_doc_free()).
 * Returns 0, or -EINVAL with "line N: " and the rule broken in @err; @ret is
 * written only on success.
 */
int prom_parse(const char *text, PromDoc *ret, char *err, size_t err_size);

void prom_doc_free(PromDoc *d);

/**
 * prom_doc_get() - the value of sample @name with the canonical @labels
 * (NULL or "" = none) in @ret. Returns false when there is no such sample.
 */
bool prom_doc_get(const PromDoc *d, const char *name, const char *labels, double *ret);

/**
 * prom_doc_check_daemon() - the daemon's rules on a parsed document: every
 * family named @prefix..., with HELP and TYPE, and every counter's name ends
 * in _total. Returns 0, or -EINVAL with the family and rule in @err.
 */
int prom_doc_check_daemon(const PromDoc *d, const char *prefix, char *err, size_t err_size);
