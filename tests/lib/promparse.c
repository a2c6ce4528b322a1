/*
 * PromParse: a strict Prometheus text format parser (see promparse.h).
 *
 * One pass over the lines builds the families and samples and checks every
 * rule a single line can break; histograms are checked at the end, per
 * label set, since their parts may come in any order. Allocation failures
 * abort: this is test code.
 */
#define _GNU_SOURCE
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
        PromFamily *current;            /* the family whose samples may follow; NULL before the first */
} Parser;

typedef struct Label {
        char *name;
        char *value;                    /* unescaped */
} Label;

typedef struct LabelSet {
        Label *v;
        size_t n;
} LabelSet;

static void *must(void *p) {
        if (!p)
                abort();
        return p;
}

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

static void label_set_done(LabelSet *ls) {
        for (size_t i = 0; i < ls->n; i++) {
                free(ls->v[i].name);
                free(ls->v[i].value);
        }
        free(ls->v);
}

/* ---- tokens ------------------------------------------------------------------------------ */

static bool is_blank(char c) {
        return c == ' ' || c == '\t';
}

static void skip_blanks(const char **s) {
        while (is_blank(**s))
                (*s)++;
}

static bool name_start(char c, bool colon) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
}

static bool name_char(char c, bool colon) {
        return name_start(c, colon) || (c >= '0' && c <= '9');
}

/* The metric (@colon) or label name at *@s, advancing past it; NULL when there is none. */
static char *take_name(const char **s, bool colon) {
        const char *start = *s;

        if (!name_start(**s, colon))
                return NULL;
        while (name_char(**s, colon))
                (*s)++;
        return must(strndup(start, (size_t)(*s - start)));
}

/* Everything up to the next blank or the end of the line. */
static char *take_token(const char **s) {
        const char *start = *s;

        while (**s && !is_blank(**s))
                (*s)++;
        return must(strndup(start, (size_t)(*s - start)));
}

static bool valid_metric_name(const char *s) {
        _cleanup_free_ char *name = take_name(&s, true);

        return name && !*s;
}

static size_t count_digits(const char **s, bool hex) {
        const char *start = *s;

        while ((**s >= '0' && **s <= '9') ||
               (hex && ((**s >= 'a' && **s <= 'f') || (**s >= 'A' && **s <= 'F'))))
                (*s)++;
        return (size_t)(*s - start);
}

/* Go's float literal syntax, less digit separators: 1, -1.5, .5, 5., 1e-3, 0x1.8p3. */
static bool go_float_syntax(const char *s) {
        bool hex = false;
        size_t digits;

        if (*s == '+' || *s == '-')
                s++;
        if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
                hex = true;
                s += 2;
        }
        digits = count_digits(&s, hex);
        if (*s == '.') {
                s++;
                digits += count_digits(&s, hex);
        }
        if (digits == 0)
                return false;
        if (hex ? (*s == 'p' || *s == 'P') : (*s == 'e' || *s == 'E')) {
                s++;
                if (*s == '+' || *s == '-')
                        s++;
                if (count_digits(&s, false) == 0)
                        return false;
        } else if (hex)
                return false;           /* Go needs the exponent of a hexadecimal float */
        return *s == 0;
}

static int parse_value(const char *s, double *ret) {
        double v;

        if (streq(s, "+Inf"))
                v = INFINITY;
        else if (streq(s, "-Inf"))
                v = -INFINITY;
        else if (streq(s, "NaN"))
                v = NAN;
        else {
                if (!go_float_syntax(s))
                        return -EINVAL;
                /* Go refuses what overflows; what underflows reads as the nearest value. */
                v = strtod(s, NULL);
                if (isinf(v))
                        return -EINVAL;
        }
        *ret = v;
        return 0;
}

/* A Go int64 in base 10. */
static bool valid_timestamp(const char *s) {
        const char *digits = s + (*s == '+' || *s == '-');
        char *end;

        if (count_digits(&digits, false) == 0 || *digits)
                return false;
        errno = 0;
        (void)strtoll(s, &end, 10);
        return errno == 0 && *end == 0;
}

/* ---- families ---------------------------------------------------------------------------- */

static bool type_is(const PromFamily *f, const char *type) {
        return f->type && streq(f->type, type);
}

/* The family a sample named @name belongs to: histogram and summary parts belong to theirs. */
static const char *sample_family(const Parser *p, const char *name) {
        const PromDoc *d = p->doc;

        /* The current family first, then any earlier one (which then fails as one that came back). */
        for (size_t k = 0; k <= d->n_families; k++) {
                const PromFamily *f = k == 0 ? p->current : &d->families[k - 1];
                size_t n;

                if (!f || !(type_is(f, "histogram") || type_is(f, "summary")))
                        continue;
                n = strlen(f->name);
                if (strncmp(name, f->name, n) == 0 &&
                    (streq(name + n, "_sum") || streq(name + n, "_count") ||
                     (type_is(f, "histogram") && streq(name + n, "_bucket"))))
                        return f->name;
        }
        return name;
}

/* Make @name the current family; a family may not come back once another began. */
static int family_enter(Parser *p, const char *name) {
        PromDoc *d = p->doc;

        if (p->current && streq(p->current->name, name))
                return 0;
        for (size_t i = 0; i < d->n_families; i++)
                if (streq(d->families[i].name, name))
                        return fail(p, "family %s comes back after family %s began", name, p->current->name);
        d->families = must(reallocarray(d->families, d->n_families + 1, sizeof(PromFamily)));
        p->current = &d->families[d->n_families++];
        *p->current = (PromFamily) { .name = must(strdup(name)), .first_sample = d->n_samples };
        return 0;
}

static int parse_help(Parser *p, const char *name, const char *text) {
        for (const char *c = text; *c; c++)
                if (*c == '\\') {
                        if (c[1] != '\\' && c[1] != 'n')
                                return fail(p, "HELP of %s: \\%c is not an escape (only \\\\ and \\n)", name,
                                            c[1] ? c[1] : '0');
                        c++;
                }
        if (p->current->has_help)
                return fail(p, "a second HELP for %s", name);
        p->current->has_help = true;
        return 0;
}

static int parse_type(Parser *p, const char *name, const char *s) {
        static const char *const types[] = { "counter", "gauge", "histogram", "summary", "untyped" };
        _cleanup_free_ char *type = take_token(&s);
        bool known = false;

        skip_blanks(&s);
        for (size_t i = 0; i < ELEMENTSOF(types); i++)
                known = known || streq(type, types[i]);
        if (!known || *s)
                return fail(p, "TYPE of %s: not counter, gauge, histogram, summary or untyped", name);
        if (p->current->type)
                return fail(p, "a second TYPE for %s", name);
        if (p->current->n_samples > 0)
                return fail(p, "TYPE of %s after its first sample", name);
        p->current->type = TAKE_PTR(type);
        return 0;
}

/* "# HELP name text", "# TYPE name type", or any other comment. @s is past the '#'. */
static int parse_comment(Parser *p, const char *s) {
        _cleanup_free_ char *keyword = NULL, *name = NULL;
        int r;

        skip_blanks(&s);
        keyword = take_token(&s);
        if (!streq(keyword, "HELP") && !streq(keyword, "TYPE"))
                return 0;
        skip_blanks(&s);
        name = take_token(&s);
        if (!valid_metric_name(name))
                return fail(p, "%s: '%s' is not a metric name [a-zA-Z_:][a-zA-Z0-9_:]*", keyword, name);
        skip_blanks(&s);
        r = family_enter(p, name);
        if (r < 0)
                return r;
        return streq(keyword, "HELP") ? parse_help(p, name, s) : parse_type(p, name, s);
}

/* ---- samples ----------------------------------------------------------------------------- */

/* A label value from *@s, which is past the opening quote, to past the closing one. */
static int parse_label_value(Parser *p, const char **s, const char *label, char **ret) {
        _cleanup_free_ char *value = must(malloc(strlen(*s) + 1));
        const char *c = *s;
        char *v = value;

        for (; *c != '"'; c++) {
                if (!*c)
                        return fail(p, "label %s: the value has no closing quote", label);
                if (*c != '\\') {
                        *v++ = *c;
                        continue;
                }
                c++;
                if (*c == 'n')
                        *v++ = '\n';
                else if (*c == '\\' || *c == '"')
                        *v++ = *c;
                else
                        return fail(p, "label %s: \\%c is not an escape (only \\\\ \\\" \\n)", label, *c ? *c : '0');
        }
        *v = 0;
        *s = c + 1;
        *ret = TAKE_PTR(value);
        return 0;
}

/* {a="x",...} at *@s (a trailing comma allowed), to past the '}'. */
static int parse_labels(Parser *p, const char **s, LabelSet *ls) {
        const char *c = *s + 1;

        for (;;) {
                char *name;
                int r;

                skip_blanks(&c);
                if (*c == '}')
                        break;
                name = take_name(&c, false);
                if (!name)
                        return fail(p, "'%.12s' does not start a label name [a-zA-Z_][a-zA-Z0-9_]*", c);
                ls->v = must(reallocarray(ls->v, ls->n + 1, sizeof(Label)));
                ls->v[ls->n++] = (Label) { .name = name };
                if (strncmp(name, "__", 2) == 0)
                        return fail(p, "label name %s is reserved (starts with __)", name);
                for (size_t i = 0; i + 1 < ls->n; i++)
                        if (streq(ls->v[i].name, name))
                                return fail(p, "label %s given twice", name);
                skip_blanks(&c);
                if (*c != '=')
                        return fail(p, "label %s: expected =", name);
                c++;
                skip_blanks(&c);
                if (*c != '"')
                        return fail(p, "label %s: expected a quoted value", name);
                c++;
                r = parse_label_value(p, &c, name, &ls->v[ls->n - 1].value);
                if (r < 0)
                        return r;
                skip_blanks(&c);
                if (*c == ',')
                        c++;
                else if (*c != '}')
                        return fail(p, "after label %s: expected , or }", name);
        }
        *s = c + 1;
        return 0;
}

static int cmp_label(const void *a, const void *b) {
        return strcmp(((const Label *)a)->name, ((const Label *)b)->name);
}

/* a="x",b="y": sorted by name, escaped as the format does; the label @skip (may be NULL) left out. */
static char *canonical(LabelSet *ls, const char *skip) {
        char *text = NULL;
        size_t size = 0;
        FILE *f = must(open_memstream(&text, &size));
        bool first = true;

        if (ls->n > 0)
                qsort(ls->v, ls->n, sizeof(Label), cmp_label);
        for (size_t i = 0; i < ls->n; i++) {
                if (skip && streq(ls->v[i].name, skip))
                        continue;
                fprintf(f, "%s%s=\"", first ? "" : ",", ls->v[i].name);
                for (const char *v = ls->v[i].value; *v; v++)
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

/* "name" or "name{labels}", for messages. */
static const char *series(char *buf, size_t size, const char *name, const char *labels) {
        snprintf(buf, size, *labels ? "%s{%s}" : "%s", name, labels);
        return buf;
}

static const char *label_get(const LabelSet *ls, const char *name) {
        for (size_t i = 0; i < ls->n; i++)
                if (streq(ls->v[i].name, name))
                        return ls->v[i].value;
        return NULL;
}

/* The per-sample rules of the current family's type; @le is set for a histogram bucket. */
static int check_type_rules(Parser *p, const char *name, const LabelSet *ls, double v, bool *ret_has_le,
                            double *ret_le) {
        const PromFamily *f = p->current;
        const char *suffix = name + strlen(f->name), *le = label_get(ls, "le");

        *ret_has_le = false;
        if (type_is(f, "counter") && v < 0)
                return fail(p, "counter %s is negative", name);
        if (!type_is(f, "histogram"))
                return 0;
        if (!*suffix)
                return fail(p, "histogram %s: a sample not named _bucket, _sum or _count", name);
        if (!streq(suffix, "_bucket"))
                return le ? fail(p, "histogram %s: le on a sample other than _bucket", name) : 0;
        if (!le)
                return fail(p, "histogram %s: a bucket without le", name);
        if (parse_value(le, ret_le) < 0)
                return fail(p, "histogram %s: le=\"%s\" is not a number", name, le);
        *ret_has_le = true;
        return 0;
}

static int parse_sample(Parser *p, const char *s) {
        _cleanup_(label_set_done) LabelSet ls = { 0 };
        _cleanup_free_ char *name = NULL, *value = NULL, *labels = NULL;
        PromDoc *d = p->doc;
        bool has_le;
        double v, le = 0;
        int r;

        name = take_name(&s, true);
        if (!name)
                return fail(p, "'%.12s' does not start a metric name [a-zA-Z_:][a-zA-Z0-9_:]*", s);
        if (*s != '{' && !is_blank(*s))
                return fail(p, "%s: expected a blank or { after the name", name);
        skip_blanks(&s);
        if (*s == '{') {
                r = parse_labels(p, &s, &ls);
                if (r < 0)
                        return r;
                skip_blanks(&s);
        }
        value = take_token(&s);
        if (parse_value(value, &v) < 0)
                return fail(p, "%s: '%s' is not a float, +Inf, -Inf or NaN", name, value);
        skip_blanks(&s);
        if (*s) {
                _cleanup_free_ char *timestamp = take_token(&s);

                skip_blanks(&s);
                if (!valid_timestamp(timestamp) || *s)
                        return fail(p, "%s: after the value only an integer timestamp may follow", name);
        }

        r = family_enter(p, sample_family(p, name));
        if (r < 0)
                return r;
        r = check_type_rules(p, name, &ls, v, &has_le, &le);
        if (r < 0)
                return r;
        labels = canonical(&ls, NULL);
        for (size_t i = p->current->first_sample; i < d->n_samples; i++)
                if (streq(d->samples[i].name, name) && streq(d->samples[i].labels, labels)) {
                        char what[512];

                        return fail(p, "%s given twice (line %u)", series(what, sizeof(what), name, labels),
                                    d->samples[i].line);
                }

        d->samples = must(reallocarray(d->samples, d->n_samples + 1, sizeof(PromSample)));
        d->samples[d->n_samples++] = (PromSample) {
                .name = TAKE_PTR(name),
                .labels = TAKE_PTR(labels),
                .value = v,
                .line = p->line,
                .group = canonical(&ls, "le"),
                .has_le = has_le,
                .le = le,
        };
        p->current->n_samples++;
        return 0;
}

/* ---- histograms ---------------------------------------------------------------------------- */

/* The sample of @f named @f->name + @suffix whose (le-less) labels are @group, or NULL. */
static const PromSample *family_find(const PromDoc *d, const PromFamily *f, const char *suffix, const char *group) {
        size_t n = strlen(f->name);

        for (size_t i = f->first_sample; i < f->first_sample + f->n_samples; i++) {
                const PromSample *s = &d->samples[i];

                if (strncmp(s->name, f->name, n) == 0 && streq(s->name + n, suffix) && streq(s->group, group))
                        return s;
        }
        return NULL;
}

/* The buckets of one label set, in the order written, against its _count. */
static int check_buckets(Parser *p, const PromFamily *f, const PromSample *count) {
        const PromDoc *d = p->doc;
        size_t n = strlen(f->name);
        const PromSample *last = NULL;
        char what[512];

        series(what, sizeof(what), f->name, count->group);
        for (size_t i = f->first_sample; i < f->first_sample + f->n_samples; i++) {
                const PromSample *b = &d->samples[i];

                if (!streq(b->name + n, "_bucket") || !streq(b->group, count->group))
                        continue;
                p->line = b->line;
                if (last && !(b->le > last->le))
                        return fail(p, "histogram %s: le %g after le %g, not increasing", what, b->le, last->le);
                if (!(b->value >= (last ? last->value : 0)))
                        return fail(p, "histogram %s: bucket le=%g holds %g, below the one before", what, b->le,
                                    b->value);
                last = b;
        }
        p->line = count->line;
        if (!last || !(isinf(last->le) && last->le > 0))
                return fail(p, "histogram %s: no le=\"+Inf\" bucket last", what);
        if (last->value != count->value)
                return fail(p, "histogram %s: le=\"+Inf\" holds %g, _count %g", what, last->value, count->value);
        return 0;
}

static int check_histogram(Parser *p, const PromFamily *f) {
        const PromDoc *d = p->doc;
        size_t n = strlen(f->name);
        char what[512];

        for (size_t i = f->first_sample; i < f->first_sample + f->n_samples; i++) {
                const PromSample *s = &d->samples[i];
                int r;

                p->line = s->line;
                series(what, sizeof(what), f->name, s->group);
                if (!family_find(d, f, "_count", s->group))
                        return fail(p, "histogram %s: no _count", what);
                if (!family_find(d, f, "_sum", s->group))
                        return fail(p, "histogram %s: no _sum", what);
                if (streq(s->name + n, "_count")) {
                        r = check_buckets(p, f, s);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

/* ---- the document ------------------------------------------------------------------------ */

int prom_parse(const char *text, PromDoc *ret, char *err, size_t err_size) {
        PromDoc doc = { 0 };
        Parser p = { .doc = &doc, .err = err, .err_size = err_size };
        _cleanup_free_ char *copy = must(strdup(text));
        char *line, *next;
        int r = 0;

        if (*text && text[strlen(text) - 1] != '\n') {
                p.line = 1;
                for (const char *c = text; *c; c++)
                        p.line += *c == '\n';
                return fail(&p, "the text does not end with a newline");
        }
        for (line = copy; r == 0 && *line; line = next) {
                const char *s = line;

                next = strchr(line, '\n');
                *next++ = 0;
                p.line++;
                skip_blanks(&s);
                if (*s == '#')
                        r = parse_comment(&p, s + 1);
                else if (*s)
                        r = parse_sample(&p, s);
        }
        for (size_t i = 0; r == 0 && i < doc.n_families; i++)
                if (type_is(&doc.families[i], "histogram"))
                        r = check_histogram(&p, &doc.families[i]);
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

                if (strncmp(f->name, prefix, strlen(prefix)) != 0) {
                        snprintf(err, err_size, "family %s: not named %s...", f->name, prefix);
                        return -EINVAL;
                }
                if (!f->has_help || !f->type) {
                        snprintf(err, err_size, "family %s: no %s line", f->name, f->has_help ? "TYPE" : "HELP");
                        return -EINVAL;
                }
                if (type_is(f, "counter") && (n < 6 || !streq(f->name + n - 6, "_total"))) {
                        snprintf(err, err_size, "counter %s: its name does not end in _total", f->name);
                        return -EINVAL;
                }
        }
        return 0;
}
