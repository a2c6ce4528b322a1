/*
 * Prom: the Prometheus text format writer and histograms (see prom.h).
 *
 * Numbers go through printf, so they are spelt the format's way only in the
 * C numeric locale; the daemon never changes it.
 */
#include <assert.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "prom.h"

void histogram_init(Histogram *h, const double *bounds, unsigned n_bounds) {
        assert(n_bounds <= HISTOGRAM_MAX_BOUNDS);
        for (unsigned i = 0; i < n_bounds; i++)
                assert(isfinite(bounds[i]) && (i == 0 || bounds[i - 1] < bounds[i]));
        *h = (Histogram) { .bounds = bounds, .n_bounds = n_bounds };
}

void histogram_observe(Histogram *h, double v) {
        unsigned i = 0;

        /* Written as "not <=" so that NaN, below no bound, lands in the last bucket. */
        while (i < h->n_bounds && !(v <= h->bounds[i]))
                i++;
        h->counts[i]++;
        h->count++;
        h->sum += v;
}

void histogram_reset(Histogram *h) {
        histogram_init(h, h->bounds, h->n_bounds);
}

void prom_format_value(double v, char *buf, size_t size) {
        assert(size >= PROM_VALUE_MAX);
        if (isnan(v))
                snprintf(buf, size, "NaN");
        else if (isinf(v))
                snprintf(buf, size, v > 0 ? "+Inf" : "-Inf");
        else if (v == 0)
                snprintf(buf, size, "0");       /* -0 too */
        else if (v == floor(v) && fabs(v) <= 0x1p53)
                snprintf(buf, size, "%.0f", v);
        else
                /*
                 * A normal double that reads back from fewer than 15 digits
                 * also does from %.15g, which drops the trailing zeros; a
                 * subnormal one has fewer digits of precision, so it starts
                 * from one.
                 */
                for (int digits = fabs(v) >= DBL_MIN ? 15 : 1; digits <= 17; digits++) {
                        snprintf(buf, size, "%.*g", digits, v);
                        if (strtod(buf, NULL) == v)
                                break;
                }
}

void prom_init(PromWriter *w, FILE *f) {
        *w = (PromWriter) { .f = f };
}

static bool name_valid(const char *s, bool colon) {
        if (!s || !((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_' || (colon && *s == ':')))
                return false;
        for (s++; *s; s++)
                if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
                      *s == '_' || (colon && *s == ':')))
                        return false;
        return true;
}

/* The caller's label names: valid, not reserved, not le (a histogram adds it), each once. */
static bool labels_valid(const PromLabel *labels, size_t n) {
        for (size_t i = 0; i < n; i++) {
                if (!name_valid(labels[i].name, false) || strncmp(labels[i].name, "__", 2) == 0 ||
                    streq(labels[i].name, "le"))
                        return false;
                for (size_t j = 0; j < i; j++)
                        if (streq(labels[i].name, labels[j].name))
                                return false;
        }
        return true;
}

/* Label values escape all three; HELP text leaves the quote alone, as the format says. */
static void put_escaped(FILE *f, const char *s, bool quotes) {
        for (; *s; s++)
                if (*s == '\\')
                        fputs("\\\\", f);
                else if (*s == '\n')
                        fputs("\\n", f);
                else if (*s == '"' && quotes)
                        fputs("\\\"", f);
                else
                        fputc(*s, f);
}

void prom_family(PromWriter *w, const char *name, PromType type, const char *help) {
        static const char *const types[] = { "counter", "gauge", "histogram" };

        assert(name_valid(name, true) && strlen(name) <= PROM_NAME_MAX);
        assert((unsigned)type < ELEMENTSOF(types));
        snprintf(w->family, sizeof(w->family), "%s", name);
        w->type = type;
        fprintf(w->f, "# HELP %s ", name);
        put_escaped(w->f, help ? help : "", false);
        fprintf(w->f, "\n# TYPE %s %s\n", name, types[type]);
}

/* name+suffix{l1="v1",...,extra="x"} value */
static void put_line(PromWriter *w, const char *suffix, const PromLabel *labels, size_t n, const PromLabel *extra,
                     double value) {
        char buf[PROM_VALUE_MAX];

        fprintf(w->f, "%s%s", w->family, suffix);
        for (size_t i = 0; i < n + (extra != NULL); i++) {
                const PromLabel *l = i < n ? &labels[i] : extra;

                fprintf(w->f, "%s%s=\"", i ? "," : "{", l->name);
                put_escaped(w->f, l->value ? l->value : "", true);
                fputc('"', w->f);
        }
        if (n || extra)
                fputc('}', w->f);
        prom_format_value(value, buf, sizeof(buf));
        fprintf(w->f, " %s\n", buf);
}

void prom_sample(PromWriter *w, const PromLabel *labels, size_t n_labels, double value) {
        assert(w->family[0] && w->type != PROM_HISTOGRAM);
        assert(labels_valid(labels, n_labels));
        assert(w->type != PROM_COUNTER || !(value < 0));
        put_line(w, "", labels, n_labels, NULL, value);
}

void prom_histogram(PromWriter *w, const PromLabel *labels, size_t n_labels, const Histogram *h) {
        uint64_t cumulative = 0;
        char le[PROM_VALUE_MAX];

        assert(w->family[0] && w->type == PROM_HISTOGRAM);
        assert(labels_valid(labels, n_labels));
        assert(h->n_bounds <= HISTOGRAM_MAX_BOUNDS);
        for (unsigned i = 0; i <= h->n_bounds; i++) {
                PromLabel l = { "le", le };

                cumulative += h->counts[i];
                if (i < h->n_bounds)
                        prom_format_value(h->bounds[i], le, sizeof(le));
                else
                        snprintf(le, sizeof(le), "+Inf");
                put_line(w, "_bucket", labels, n_labels, &l, (double)cumulative);
        }
        put_line(w, "_sum", labels, n_labels, NULL, h->sum);
        put_line(w, "_count", labels, n_labels, NULL, (double)h->count);
}

int prom_end(PromWriter *w) {
        return fflush(w->f) != 0 || ferror(w->f) ? -EIO : 0;
}
