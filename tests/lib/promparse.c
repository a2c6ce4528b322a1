/*
 * PromParse: a strict Prometheus text format parser (see promparse.h).
 *
 * One pass over the lines builds the families and samples and checks the
 * per-line rules; histograms are checked at the end, per label set.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "promparse.h"

typedef struct Parser {
        PromDoc *doc;
        char *err;
        size_t err_size;
        unsigned line;
        PromFamily *current;
        size_t current_first;           /* its first sample */
        size_t current_samples;
} Parser;

typedef struct Label {
        char name[128];
        char *value;                    /* unescaped */
} Label;

static int fail(Parser *p, const char *fmt, ...) _printf_(2, 3);
static int fail(Parser *p, const char *fmt, ...) {
        va_list ap;
        int n = snprintf(p->err, p->err_size, "line %u: ", p->line);

        va_start(ap, fmt);
        if (n >= 0 && (size_t)n < p->err_size)
                vsnprintf(p->err + n, p->err_size - (size_t)n, fmt, ap);
        va_end(ap);
        return -EINVAL;
}

static bool name_start(char c, bool colon) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
}

static bool name_char(char c, bool colon) {
        return name_start(c, colon) || (c >= '0' && c <= '9');
}

/* Length of the metric (colon) or label name at @s; 0 when there is none. */
static size_t name_len(const char *s, bool colon) {
        size_t n = 0;

        if (!name_start(s[0], colon))
                return 0;
        while (name_char(s[n], colon))
                n++;
        return n;
}

static bool valid_metric_name(const char *s) {
        size_t n = name_len(s, true);

        return n > 0 && s[n] == 0;
}

static int parse_value(const char *s, double *ret) {
        char *end;

        if (streq(s, "+Inf"))
                *ret = INFINITY;
        else if (streq(s, "-Inf"))
                *ret = -INFINITY;
        else if (streq(s, "NaN"))
                *ret = NAN;
        else {
                if (!*s || isspace((unsigned char)*s))
                        return -EINVAL;
                errno = 0;
                *ret = strtod(s, &end);
                if (*end || errno == ERANGE || strcasestr(s, "inf") || strcasestr(s, "nan"))
                        return -EINVAL;
        }
        return 0;
}

static PromFamily *family_find(PromDoc *d, const char *name) {
        for (size_t i = 0; i < d->n_families; i++)
                if (streq(d->families[i].name, name))
                        return &d->families[i];
        return NULL;
}

/* Make @name the current family; a family may not come back once another began. */
static int family_enter(Parser *p, const char *name, PromFamily **ret) {
        PromDoc *d = p->doc;
        PromFamily *f;

        if (p->current && streq(p->current->name, name)) {
                *ret = p->current;
                return 0;
        }
        if (family_find(d, name))
                return fail(p, "family %s appears again after another family", name);
        d->families = reallocarray(d->families, d->n_families + 1, sizeof(PromFamily));
        if (!d->families)
                abort();
        f = &d->families[d->n_families++];
        *f = (PromFamily) { .name = strdup(name) };
        p->current = f;
        p->current_first = d->n_samples;
        p->current_samples = 0;
        *ret = f;
        return 0;
}

static int parse_comment(Parser *p, char *s) {
        char *kw, *name, *rest, *save = NULL;
        PromFamily *f;
        int r;

        kw = strtok_r(s + 1, " \t", &save);
        if (!kw || (!streq(kw, "HELP") && !streq(kw, "TYPE")))
                return 0;               /* an ordinary comment */
        name = strtok_r(NULL, " \t", &save);
        if (!name || !valid_metric_name(name))
                return fail(p, "%s without a valid metric name", kw);
        rest = save ? save + strspn(save, " \t") : (char *)"";
        r = family_enter(p, name, &f);
        if (r < 0)
                return r;
        if (streq(kw, "HELP")) {
                for (char *c = rest; *c; c++)
                        if (*c == '\\' && c[1] != '\\' && c[1] != 'n')
                                return fail(p, "HELP of %s: bad escape \\%c", name, c[1]);
                        else if (*c == '\\')
                                c++;
                if (f->has_help)
                        return fail(p, "a second HELP for %s", name);
                f->has_help = true;
                return 0;
        }
        if (f->type)
                return fail(p, "a second TYPE for %s", name);
        if (p->current_samples > 0)
                return fail(p, "TYPE of %s after its samples", name);
        if (!streq(rest, "counter") && !streq(rest, "gauge") && !streq(rest, "histogram") &&
            !streq(rest, "summary") && !streq(rest, "untyped"))
                return fail(p, "TYPE of %s: unknown type '%s'", name, rest);
        f->type = strdup(rest);
        return 0;
}

/* Parse {a="x",...} at *@s; on return *@s is after the '}'. *@ret_n counts the labels taken so far. */
static int parse_labels(Parser *p, const char **s, Label *labels, size_t max, size_t *ret_n) {
        const char *c = *s + 1;
        size_t n = 0;

        while (*c != '}') {
                size_t len = name_len(c, false);
                Label *l;
                char *v;

                if (n == max)
                        return fail(p, "too many labels");
                if (len == 0 || len >= sizeof(labels[0].name))
                        return fail(p, "a bad label name at '%.10s'", c);
                l = &labels[n];
                memcpy(l->name, c, len);
                l->name[len] = 0;
                if (strncmp(l->name, "__", 2) == 0)
                        return fail(p, "label name %s is reserved (starts with __)", l->name);
                for (size_t i = 0; i < n; i++)
                        if (streq(labels[i].name, l->name))
                                return fail(p, "label %s given twice", l->name);
                c += len;
                if (c[0] != '=' || c[1] != '"')
                        return fail(p, "label %s: expected =\"", l->name);
                c += 2;
                v = l->value = malloc(strlen(c) + 1);
                if (!v)
                        abort();
                *ret_n = ++n;   /* the caller frees what was taken, also on failure */
                for (; *c != '"'; c++) {
                        if (!*c)
                                return fail(p, "label %s: unterminated value", l->name);
                        if (*c == '\\') {
                                c++;
                                if (*c == 'n')
                                        *v++ = '\n';
                                else if (*c == '\\' || *c == '"')
                                        *v++ = *c;
                                else
                                        return fail(p, "label %s: bad escape \\%c", l->name, *c);
                        } else if (*c == '\n')
                                return fail(p, "label %s: a raw newline", l->name);
                        else
                                *v++ = *c;
                }
                *v = 0;
                c++;
                if (*c == ',' && c[1] != '}')
                        c++;
                else if (*c != '}')
                        return fail(p, "after label %s: expected , or }", l->name);
        }
        *s = c + 1;
        *ret_n = n;
        return 0;
}

static int cmp_label(const void *a, const void *b) {
        return strcmp(((const Label *)a)->name, ((const Label *)b)->name);
}

/* a="x",b="y": sorted, escaped as the format does; @skip (may be NULL) left out. */
static char *canonical(Label *labels, size_t n, const char *skip) {
        char *text = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&text, &size);
        bool first = true;

        if (!f)
                abort();
        qsort(labels, n, sizeof(Label), cmp_label);
        for (size_t i = 0; i < n; i++) {
                if (skip && streq(labels[i].name, skip))
                        continue;
                fprintf(f, "%s%s=\"", first ? "" : ",", labels[i].name);
                for (const char *v = labels[i].value; *v; v++)
                        if (*v == '\\' || *v == '"')
                                fprintf(f, "\\%c", *v);
                        else if (*v == '\n')
                                fputs("\\n", f);
                        else
                                fputc(*v, f);
                fputc('"', f);
                first = false;
        }
        if (fclose(f) != 0)
                abort();
        return text;
}

/* The family a sample named @name belongs to: a histogram's or summary's parts belong to it. */
static const char *sample_family(Parser *p, const char *name, char *buf, size_t size) {
        static const char *const suffixes[] = { "_bucket", "_sum", "_count" };
        PromFamily *cur = p->current;

        if (cur && cur->type && (streq(cur->type, "histogram") || streq(cur->type, "summary")))
                for (size_t i = 0; i < ELEMENTSOF(suffixes); i++) {
                        size_t n = strlen(cur->name);

                        if (strncmp(name, cur->name, n) == 0 && streq(name + n, suffixes[i]) &&
                            (i > 0 || streq(cur->type, "histogram")))
                                return cur->name;
                }
        snprintf(buf, size, "%s", name);
        return buf;
}

static void labels_free(Label *labels, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(labels[i].value);
}

static int parse_sample(Parser *p, const char *s) {
        char name[256], fam_buf[256], *labels_text = NULL, *group = NULL;
        bool has_le = false;
        double le = 0;
        Label labels[32];
        size_t n_labels = 0, len = name_len(s, true);
        const char *value_start, *fam;
        char value_text[64];
        PromFamily *f;
        PromSample *sample;
        double v;
        int r;

        if (len == 0 || len >= sizeof(name))
                return fail(p, "a sample without a valid metric name");
        memcpy(name, s, len);
        name[len] = 0;
        s += len;
        if (*s == '{') {
                r = parse_labels(p, &s, labels, ELEMENTSOF(labels), &n_labels);
                if (r < 0) {
                        labels_free(labels, n_labels);
                        return r;
                }
        }
        if (*s != ' ' && *s != '\t') {
                labels_free(labels, n_labels);
                return fail(p, "%s: expected a space before the value", name);
        }
        s += strspn(s, " \t");
        value_start = s;
        s += strcspn(s, " \t");
        snprintf(value_text, sizeof(value_text), "%.*s", (int)(s - value_start), value_start);
        if (parse_value(value_text, &v) < 0) {
                labels_free(labels, n_labels);
                return fail(p, "%s: bad value '%s'", name, value_text);
        }
        s += strspn(s, " \t");
        if (*s) {
                char *end;

                (void)strtoll(s, &end, 10);
                if (*end || end == s) {
                        labels_free(labels, n_labels);
                        return fail(p, "%s: bad timestamp '%s'", name, s);
                }
        }
        fam = sample_family(p, name, fam_buf, sizeof(fam_buf));
        r = family_enter(p, fam, &f);
        if (r == 0 && f->type && streq(f->type, "histogram") && streq(fam, name))
                r = fail(p, "histogram %s: a sample without _bucket, _sum or _count", name);
        if (r == 0 && f->type && streq(f->type, "counter") && !(v >= 0))
                r = fail(p, "counter %s: value %s is not >= 0", name, value_text);
        for (size_t i = 0; r == 0 && i < n_labels; i++)
                if (streq(labels[i].name, "le")) {
                        has_le = true;
                        if (parse_value(labels[i].value, &le) < 0)
                                r = fail(p, "%s: bad le '%s'", name, labels[i].value);
                }
        if (r == 0 && fam != fam_buf && strstr(name, "_bucket") && !has_le)
                r = fail(p, "%s: a bucket without le", name);
        if (r == 0) {
                labels_text = canonical(labels, n_labels, NULL);
                group = canonical(labels, n_labels, "le");
        }
        labels_free(labels, n_labels);
        if (r < 0)
                return r;
        for (size_t i = p->current_first; i < p->doc->n_samples; i++)
                if (streq(p->doc->samples[i].name, name) && streq(p->doc->samples[i].labels, labels_text)) {
                        r = fail(p, "%s{%s} given twice", name, labels_text);
                        free(labels_text);
                        free(group);
                        return r;
                }
        p->doc->samples = reallocarray(p->doc->samples, p->doc->n_samples + 1, sizeof(PromSample));
        if (!p->doc->samples)
                abort();
        sample = &p->doc->samples[p->doc->n_samples++];
        *sample = (PromSample) { .name = strdup(name), .labels = labels_text, .value = v, .group = group,
                                 .has_le = has_le, .le = le };
        p->current_samples++;
        return 0;
}

/* ---- histograms ---------------------------------------------------------------------------- */

static int check_histogram(const PromDoc *d, const PromFamily *f, char *err, size_t err_size) {
        char bucket[300], sum[300], count[300];
        double v;

        snprintf(bucket, sizeof(bucket), "%s_bucket", f->name);
        snprintf(sum, sizeof(sum), "%s_sum", f->name);
        snprintf(count, sizeof(count), "%s_count", f->name);
        for (size_t i = 0; i < d->n_samples; i++) {
                const PromSample *s = &d->samples[i];
                double last_le = -INFINITY, last_count = -1;
                bool inf = false;

                if (streq(s->name, bucket) || streq(s->name, sum)) {
                        if (!prom_doc_get(d, count, s->group, &v)) {
                                snprintf(err, err_size, "%s{%s}: no _count", f->name, s->group);
                                return -EINVAL;
                        }
                        continue;
                }
                if (!streq(s->name, count))
                        continue;
                /* This label set's buckets, in the order written. */
                for (size_t j = 0; j < d->n_samples; j++) {
                        const PromSample *b = &d->samples[j];

                        if (!streq(b->name, bucket) || !streq(b->group, s->labels))
                                continue;
                        if (!(b->le > last_le) || b->value < last_count) {
                                snprintf(err, err_size, "%s{%s}: buckets out of order or not cumulative", f->name,
                                         s->labels);
                                return -EINVAL;
                        }
                        last_le = b->le;
                        last_count = b->value;
                        inf = isinf(b->le) && b->le > 0;
                }
                if (!inf || last_count != s->value) {
                        snprintf(err, err_size, "%s{%s}: no le=\"+Inf\" bucket equal to _count", f->name, s->labels);
                        return -EINVAL;
                }
                if (!prom_doc_get(d, sum, s->labels, &v)) {
                        snprintf(err, err_size, "%s{%s}: no _sum", f->name, s->labels);
                        return -EINVAL;
                }
        }
        return 0;
}

/* ---- the document ------------------------------------------------------------------------ */

int prom_parse(const char *text, PromDoc *ret, char *err, size_t err_size) {
        PromDoc doc = { 0 };
        Parser p = { .doc = &doc, .err = err, .err_size = err_size };
        _cleanup_free_ char *copy = strdup(text);
        char *line, *next;
        int r = 0;

        if (!copy)
                abort();
        if (*text && text[strlen(text) - 1] != '\n') {
                snprintf(err, err_size, "the text does not end with a newline");
                return -EINVAL;
        }
        for (line = copy; r == 0 && *line; line = next) {
                next = strchr(line, '\n');
                *next++ = 0;
                p.line++;
                if (!*line)
                        continue;
                r = line[0] == '#' ? parse_comment(&p, line) : parse_sample(&p, line);
        }
        for (size_t i = 0; r == 0 && i < doc.n_families; i++)
                if (doc.families[i].type && streq(doc.families[i].type, "histogram"))
                        r = check_histogram(&doc, &doc.families[i], err, err_size);
        if (r < 0) {
                prom_doc_free(&doc);
                return r;
        }
        *ret = doc;
        return 0;
}

void prom_doc_free(PromDoc *d) {
        for (size_t i = 0; i < d->n_samples; i++) {
                free(d->samples[i].name);
                free(d->samples[i].labels);
                free(d->samples[i].group);
        }
        for (size_t i = 0; i < d->n_families; i++) {
                free(d->families[i].name);
                free(d->families[i].type);
        }
        free(d->samples);
        free(d->families);
        *d = (PromDoc) { 0 };
}

bool prom_doc_get(const PromDoc *d, const char *name, const char *labels, double *ret) {
        for (size_t i = 0; i < d->n_samples; i++)
                if (streq(d->samples[i].name, name) && streq(d->samples[i].labels, labels ? labels : "")) {
                        *ret = d->samples[i].value;
                        return true;
                }
        return false;
}

int prom_doc_check_daemon(const PromDoc *d, const char *prefix, char *err, size_t err_size) {
        for (size_t i = 0; i < d->n_families; i++) {
                const PromFamily *f = &d->families[i];
                size_t n = strlen(f->name);

                if (strncmp(f->name, prefix, strlen(prefix)) != 0 || !f->has_help || !f->type) {
                        snprintf(err, err_size, "family %s: needs the prefix %s, HELP and TYPE", f->name, prefix);
                        return -EINVAL;
                }
                if (streq(f->type, "counter") && (n < 6 || !streq(f->name + n - 6, "_total"))) {
                        snprintf(err, err_size, "counter %s: its name must end in _total", f->name);
                        return -EINVAL;
                }
        }
        return 0;
}
