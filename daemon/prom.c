/*
 * Prom: the Prometheus text format writer and histograms (see prom.h).
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prom.h"

void histogram_init(Histogram *h, const double *bounds, unsigned n_bounds) {
        assert(n_bounds <= HISTOGRAM_MAX_BOUNDS);
        *h = (Histogram) { .bounds = bounds, .n_bounds = n_bounds };
}

void histogram_observe(Histogram *h, double v) {
        unsigned i = 0;

        while (i < h->n_bounds && v > h->bounds[i])
                i++;
        h->counts[i]++;
        h->count++;
        h->sum += v;
}

void histogram_reset(Histogram *h) {
        histogram_init(h, h->bounds, h->n_bounds);
}

void prom_format_value(double v, char *buf, size_t size) {
        if (isnan(v))
                snprintf(buf, size, "NaN");
        else if (isinf(v))
                snprintf(buf, size, v > 0 ? "+Inf" : "-Inf");
        else if (v == floor(v) && fabs(v) < 1e15)
                snprintf(buf, size, "%.0f", v);
        else {
                /* The shortest that reads back the same. */
                snprintf(buf, size, "%.15g", v);
                if (strtod(buf, NULL) != v)
                        snprintf(buf, size, "%.17g", v);
        }
}

void prom_init(PromWriter *w, FILE *f) {
        *w = (PromWriter) { .f = f };
}

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

        w->family = name;
        w->type = type;
        fprintf(w->f, "# HELP %s ", name);
        put_escaped(w->f, help, false);
        fprintf(w->f, "\n# TYPE %s %s\n", name, types[type]);
}

/* name{l1="v1",...,extra="x"} value */
static void line(PromWriter *w, const char *suffix, const PromLabel *labels, size_t n, const PromLabel *extra,
                 double value) {
        char buf[64];

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
        line(w, "", labels, n_labels, NULL, value);
}

void prom_histogram(PromWriter *w, const PromLabel *labels, size_t n_labels, const Histogram *h) {
        uint64_t cumulative = 0;
        char le[64];

        for (unsigned i = 0; i <= h->n_bounds; i++) {
                PromLabel l = { "le", le };

                cumulative += h->counts[i];
                if (i < h->n_bounds)
                        prom_format_value(h->bounds[i], le, sizeof(le));
                else
                        snprintf(le, sizeof(le), "+Inf");
                line(w, "_bucket", labels, n_labels, &l, (double)cumulative);
        }
        line(w, "_sum", labels, n_labels, NULL, h->sum);
        line(w, "_count", labels, n_labels, NULL, (double)h->count);
}

int prom_end(PromWriter *w) {
        return fflush(w->f) != 0 || ferror(w->f) ? -EIO : 0;
}
