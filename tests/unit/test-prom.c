/*
 * Unit test of prom.c and of the strict parser the integration tests use
 * (tests/lib/promparse.c): the writer's output, escapes and histograms parse
 * back with exact values; histogram buckets at their bounds; value
 * formatting; misuse of the writer stops it; and each rule of the text
 * format the parser enforces, with an input that breaks it. Prints TAP.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "macro.h"
#include "prom.h"
#include "promparse.h"
#include "tap.h"

static const double bounds[] = { 0.1, 1, 10 };

typedef struct Output {
        FILE *f;
        char *text;
        size_t size;
        PromWriter w;
} Output;

static void output_open(Output *o) {
        *o = (Output) { 0 };
        o->f = open_memstream(&o->text, &o->size);
        if (!o->f)
                bail_out("open_memstream");
        prom_init(&o->w, o->f);
}

/* The text written, which the caller frees. */
static char *output_close(Output *o) {
        if (prom_end(&o->w) < 0 || fclose(o->f) != 0)
                bail_out("writing to memory failed");
        return o->text;
}

/* Parse @text, which must be valid; a failed test point (and an empty doc) when it is not. */
static void parse_ok(const char *text, PromDoc *d, const char *what) {
        char err[256] = "";

        *d = (PromDoc) { 0 };
        if (!ok(prom_parse(text, d, err, sizeof(err)) == 0, "%s parses", what))
                diag("%s\n%s", err, text);
}

static bool get_is(const PromDoc *d, const char *name, const char *labels, double want) {
        double v;

        return prom_doc_get(d, name, labels, &v) && (v == want || (isnan(v) && isnan(want)));
}

static void test_writer(void) {
        PromLabel l[] = { { "method", "Create\"Sandbox\\\n" }, { "code", "OK" } };
        PromLabel m = { "method", "Get" }, empty = { "id", NULL };
        _cleanup_free_ char *text = NULL;
        char err[256] = "";
        Output o;
        PromDoc d;
        Histogram h;

        histogram_init(&h, bounds, ELEMENTSOF(bounds));
        histogram_observe(&h, 0.1);
        histogram_observe(&h, 0.5);
        histogram_observe(&h, 10);
        histogram_observe(&h, 11);
        output_open(&o);
        prom_family(&o.w, "cwsandboxd_calls_total", PROM_COUNTER, "Calls \\ by \"method\"\nand code");
        prom_sample(&o.w, l, ELEMENTSOF(l), 42);
        prom_sample(&o.w, &m, 1, 7);
        prom_sample(&o.w, &empty, 1, 0);
        prom_family(&o.w, "cwsandboxd_ratio", PROM_GAUGE, "A ratio");
        prom_sample(&o.w, NULL, 0, 0.1);
        prom_family(&o.w, "cwsandboxd_empty", PROM_GAUGE, "");
        prom_family(&o.w, "cwsandboxd_seconds", PROM_HISTOGRAM, "A histogram");
        prom_histogram(&o.w, &m, 1, &h);
        prom_histogram(&o.w, l, ELEMENTSOF(l), &h);
        text = output_close(&o);

        parse_ok(text, &d, "the writer's text");
        is_int(prom_doc_check_daemon(&d, "cwsandboxd_", err, sizeof(err)), 0, "it has HELP, TYPE and _total (%s)",
               err);
        ok(get_is(&d, "cwsandboxd_calls_total", "code=\"OK\",method=\"Create\\\"Sandbox\\\\\\n\"", 42),
           "a label value with a quote, a backslash and a newline comes back");
        ok(get_is(&d, "cwsandboxd_calls_total", "method=\"Get\"", 7), "a one-label sample comes back");
        ok(get_is(&d, "cwsandboxd_calls_total", "id=\"\"", 0), "a NULL label value is written as \"\"");
        ok(get_is(&d, "cwsandboxd_ratio", NULL, 0.1), "a sample without labels comes back");
        ok(strstr(text, "cwsandboxd_ratio 0.1\n") != NULL, "0.1 is written as 0.1");
        ok(strstr(text, "# HELP cwsandboxd_calls_total Calls \\\\ by \"method\"\\nand code\n") != NULL,
           "HELP escapes the backslash and the newline, not the quote");
        ok(strstr(text, "# HELP cwsandboxd_empty \n# TYPE cwsandboxd_empty gauge\n") != NULL,
           "a family without samples or help text is just its HELP and TYPE");
        ok(strstr(text, "cwsandboxd_seconds_bucket{method=\"Get\",le=\"0.1\"} 1\n"
                        "cwsandboxd_seconds_bucket{method=\"Get\",le=\"1\"} 2\n"
                        "cwsandboxd_seconds_bucket{method=\"Get\",le=\"10\"} 3\n"
                        "cwsandboxd_seconds_bucket{method=\"Get\",le=\"+Inf\"} 4\n"
                        "cwsandboxd_seconds_sum{method=\"Get\"} 21.6\n"
                        "cwsandboxd_seconds_count{method=\"Get\"} 4\n") != NULL,
           "a histogram is its cumulative buckets with le last, then _sum and _count");
        ok(get_is(&d, "cwsandboxd_seconds_bucket", "le=\"0.1\",method=\"Get\"", 1),
           "a value on a bound counts in that bucket (le)");
        ok(get_is(&d, "cwsandboxd_seconds_bucket", "le=\"1\",method=\"Get\"", 2), "buckets are cumulative");
        ok(get_is(&d, "cwsandboxd_seconds_bucket", "le=\"10\",method=\"Get\"", 3), "le=10 holds 3");
        ok(get_is(&d, "cwsandboxd_seconds_bucket", "le=\"+Inf\",method=\"Get\"", 4), "+Inf holds all 4");
        ok(get_is(&d, "cwsandboxd_seconds_count", "method=\"Get\"", 4), "_count is 4");
        ok(get_is(&d, "cwsandboxd_seconds_sum", "method=\"Get\"", 21.6), "_sum is 21.6");
        ok(get_is(&d, "cwsandboxd_seconds_count", "code=\"OK\",method=\"Create\\\"Sandbox\\\\\\n\"", 4),
           "a second label set of the same histogram");
        prom_doc_free(&d);
}

/* Every byte but NUL in a label value and in help text: escaped as needed, read back the same. */
static void test_writer_odd_bytes(void) {
        char value[256], want[1024], *w = want;
        _cleanup_free_ char *text = NULL;
        PromLabel l = { "v", value };
        Output o;
        PromDoc d;

        for (int i = 1; i < 256; i++)
                value[i - 1] = (char)i;
        value[255] = 0;
        for (const char *c = value; *c; c++)
                if (*c == '\\' || *c == '"')
                        w += sprintf(w, "\\%c", *c);
                else if (*c == '\n')
                        w += sprintf(w, "\\n");
                else
                        *w++ = *c;
        *w++ = '"';
        *w = 0;
        output_open(&o);
        prom_family(&o.w, "odd", PROM_GAUGE, value);
        prom_sample(&o.w, &l, 1, 1);
        text = output_close(&o);
        parse_ok(text, &d, "a label value and help text with every byte");
        ok(d.n_samples == 1 && streq(d.samples[0].labels + strlen("v=\""), want), "and the value comes back");
        prom_doc_free(&d);
}

/* Doubles from their bits: written, parsed, and equal to what went in. */
static void test_round_trip(void) {
        uint64_t x = 0x9e3779b97f4a7c15ULL;
        unsigned bad = 0, n = 0;

        for (int i = 0; i < 2000; i++) {
                _cleanup_free_ char *text = NULL;
                char err[256] = "";
                double v, got;
                Output o;
                PromDoc d;

                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                memcpy(&v, &x, sizeof(v));
                if (i % 4 == 0)
                        v = (double)(x >> (11 + i % 50));       /* integers of every size */
                if (isnan(v))
                        continue;
                output_open(&o);
                prom_family(&o.w, "g", PROM_GAUGE, "");
                prom_sample(&o.w, NULL, 0, v);
                text = output_close(&o);
                n++;
                if (prom_parse(text, &d, err, sizeof(err)) < 0)
                        d = (PromDoc) { 0 };
                if (!prom_doc_get(&d, "g", NULL, &got) || got != v)
                        if (bad++ < 5)
                                diag("%a written as %s", v, text);
                prom_doc_free(&d);
        }
        ok(bad == 0, "%u random doubles are written so that they read back exactly (%u did not)", n, bad);
}

static void test_histogram(void) {
        static const double many[HISTOGRAM_MAX_BOUNDS] = {
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
        };
        _cleanup_free_ char *text = NULL;
        Histogram h, none, full;
        Output o;
        PromDoc d;

        histogram_init(&h, bounds, ELEMENTSOF(bounds));
        histogram_observe(&h, -5);                      /* below every bound: the first */
        histogram_observe(&h, 0.1);                     /* on a bound: that bound */
        histogram_observe(&h, nextafter(0.1, 1));       /* just above: the next */
        histogram_observe(&h, 1);
        histogram_observe(&h, nextafter(10, 0));
        histogram_observe(&h, nextafter(10, 11));       /* above the last bound: only +Inf */
        histogram_observe(&h, INFINITY);
        ok(h.counts[0] == 2 && h.counts[1] == 2 && h.counts[2] == 1 && h.counts[3] == 2 && h.count == 7,
           "observations at and around the bounds land in le buckets (%llu %llu %llu %llu, count %llu)",
           (unsigned long long)h.counts[0], (unsigned long long)h.counts[1], (unsigned long long)h.counts[2],
           (unsigned long long)h.counts[3], (unsigned long long)h.count);
        ok(isinf(h.sum) && h.sum > 0, "an observed +Inf makes the sum +Inf");

        histogram_reset(&h);
        ok(h.count == 0 && h.sum == 0 && h.counts[0] == 0 && h.counts[3] == 0 && h.bounds == bounds &&
           h.n_bounds == ELEMENTSOF(bounds), "reset empties it and keeps the bounds");
        histogram_observe(&h, NAN);
        ok(h.counts[3] == 1 && h.count == 1 && isnan(h.sum), "NaN counts above every bound, the sum becomes NaN");

        histogram_init(&none, NULL, 0);
        histogram_observe(&none, 3);
        histogram_observe(&none, 4.5);
        histogram_init(&full, many, ELEMENTSOF(many));
        for (int i = 0; i <= 25; i++)
                histogram_observe(&full, i);

        output_open(&o);
        prom_family(&o.w, "h", PROM_HISTOGRAM, "");
        prom_histogram(&o.w, NULL, 0, &h);
        prom_family(&o.w, "none", PROM_HISTOGRAM, "");
        prom_histogram(&o.w, NULL, 0, &none);
        prom_family(&o.w, "full", PROM_HISTOGRAM, "");
        prom_histogram(&o.w, NULL, 0, &full);
        text = output_close(&o);
        parse_ok(text, &d, "histograms with NaN, with no bounds and with the most bounds");
        ok(get_is(&d, "h_bucket", "le=\"10\"", 0) && get_is(&d, "h_bucket", "le=\"+Inf\"", 1) &&
           get_is(&d, "h_sum", NULL, NAN), "NaN is written in +Inf and as the sum");
        ok(get_is(&d, "none_bucket", "le=\"+Inf\"", 2) && get_is(&d, "none_sum", NULL, 7.5) &&
           get_is(&d, "none_count", NULL, 2), "no bounds: only le=\"+Inf\"");
        ok(get_is(&d, "full_bucket", "le=\"1\"", 2) && get_is(&d, "full_bucket", "le=\"24\"", 25) &&
           get_is(&d, "full_bucket", "le=\"+Inf\"", 26) && get_is(&d, "full_sum", NULL, 325),
           "%d bounds: every bucket cumulative", HISTOGRAM_MAX_BOUNDS);
        prom_doc_free(&d);
}

static void test_values(void) {
        static const struct {
                double v;
                const char *want;
        } cases[] = {
                { 0, "0" },
                { -0.0, "0" },
                { 42, "42" },
                { -3, "-3" },
                { 1e15, "1000000000000000" },
                { 0x1p53, "9007199254740992" },
                { 0x1p53 + 2, "9007199254740994" },      /* shortest, and %g keeps it plain */
                { 0x1p60, "1.152921504606847e+18" },
                { 1e21, "1e+21" },
                { 0.25, "0.25" },
                { 0.1, "0.1" },
                { 0.005, "0.005" },
                { -2.5, "-2.5" },
                { 123456789012.5, "123456789012.5" },
                { 1.0 / 3.0, "0.3333333333333333" },
                { 0.1 + 0.2, "0.30000000000000004" },
                { 1e300, "1e+300" },
                { 1.5e-310, "1.5e-310" },
                { 5e-324, "5e-324" },
                { -2.2250738585072014e-308, "-2.2250738585072014e-308" },
                { 1.7976931348623157e308, "1.7976931348623157e+308" },
                { INFINITY, "+Inf" },
                { -INFINITY, "-Inf" },
                { NAN, "NaN" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char buf[PROM_VALUE_MAX];

                prom_format_value(cases[i].v, buf, sizeof(buf));
                is_str(buf, cases[i].want, "value %s", cases[i].want);
        }
}

static void test_end_error(void) {
        FILE *f = fopen("/dev/full", "we");
        PromWriter w;

        if (!f) {
                tap_skip("no /dev/full", "prom_end() reports a failed write");
                return;
        }
        prom_init(&w, f);
        prom_family(&w, "x", PROM_GAUGE, "");
        prom_sample(&w, NULL, 0, 1);
        is_int(prom_end(&w), -EIO, "prom_end() reports a failed write");
        fclose(f);
}

/* ---- misuse: a bug of the caller stops the writer before it writes bad text ---- */

static void misuse_bad_name(PromWriter *w) {
        prom_family(w, "bad-name", PROM_GAUGE, "");
}

static void misuse_bad_label(PromWriter *w) {
        PromLabel l = { "9a", "x" };

        prom_family(w, "x", PROM_GAUGE, "");
        prom_sample(w, &l, 1, 1);
}

static void misuse_reserved_label(PromWriter *w) {
        PromLabel l = { "__name__", "x" };

        prom_family(w, "x", PROM_GAUGE, "");
        prom_sample(w, &l, 1, 1);
}

static void misuse_label_twice(PromWriter *w) {
        PromLabel l[] = { { "a", "1" }, { "a", "2" } };

        prom_family(w, "x", PROM_GAUGE, "");
        prom_sample(w, l, 2, 1);
}

static void misuse_le(PromWriter *w) {
        PromLabel l = { "le", "1" };
        Histogram h;

        histogram_init(&h, bounds, ELEMENTSOF(bounds));
        prom_family(w, "x", PROM_HISTOGRAM, "");
        prom_histogram(w, &l, 1, &h);
}

static void misuse_no_family(PromWriter *w) {
        prom_sample(w, NULL, 0, 1);
}

static void misuse_sample_of_histogram(PromWriter *w) {
        prom_family(w, "x", PROM_HISTOGRAM, "");
        prom_sample(w, NULL, 0, 1);
}

static void misuse_histogram_of_gauge(PromWriter *w) {
        Histogram h;

        histogram_init(&h, bounds, ELEMENTSOF(bounds));
        prom_family(w, "x", PROM_GAUGE, "");
        prom_histogram(w, NULL, 0, &h);
}

static void misuse_negative_counter(PromWriter *w) {
        prom_family(w, "x_total", PROM_COUNTER, "");
        prom_sample(w, NULL, 0, -1);
}

static void misuse_bounds(PromWriter *w) {
        static const double down[] = { 2, 1 };
        Histogram h;

        histogram_init(&h, down, ELEMENTSOF(down));
}

static void test_misuse(void) {
        static const struct {
                void (*fn)(PromWriter *w);
                const char *what;
        } cases[] = {
                { misuse_bad_name, "a bad family name" },
                { misuse_bad_label, "a bad label name" },
                { misuse_reserved_label, "a reserved label name" },
                { misuse_label_twice, "a label twice" },
                { misuse_le, "le among a histogram's labels" },
                { misuse_no_family, "a sample before any family" },
                { misuse_sample_of_histogram, "prom_sample() in a histogram family" },
                { misuse_histogram_of_gauge, "prom_histogram() in a gauge family" },
                { misuse_negative_counter, "a negative counter" },
                { misuse_bounds, "histogram bounds not ascending" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                int status = 0;
                pid_t pid;

                fflush(stdout);
                pid = fork();
                if (pid < 0)
                        bail_out("fork");
                if (pid == 0) {
                        FILE *null = fopen("/dev/null", "we");
                        PromWriter w;

                        /* The failed assertion's message is expected: keep it out of the output. */
                        if (!null || dup2(fileno(null), STDERR_FILENO) < 0)
                                _exit(2);
                        prom_init(&w, null);
                        cases[i].fn(&w);
                        _exit(0);
                }
                if (waitpid(pid, &status, 0) != pid)
                        bail_out("waitpid");
                ok(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "misuse stops the writer: %s", cases[i].what);
        }
}

/* ---- the parser's rules ---- */

static void test_rules_refused(void) {
        static const struct {
                const char *text, *rule, *want;
        } bad[] = {
                /* lines */
                { "x 1", "no final newline", "line 1: the text does not end" },
                { "x 1\ny 2", "no final newline after several lines", "line 2: the text does not end" },
                /* metric names */
                { "9x 1\n", "a metric name starting with a digit", "does not start a metric name" },
                { "x-y 1\n", "a metric name with a dash", "expected a blank or {" },
                { "x.y 1\n", "a metric name with a dot", "expected a blank or {" },
                { "{a=\"1\"} 1\n", "no metric name", "does not start a metric name" },
                { "# HELP 9x help\n", "a HELP with a bad metric name", "is not a metric name" },
                { "# TYPE x-y gauge\n", "a TYPE with a bad metric name", "is not a metric name" },
                { "# HELP\n", "a HELP with no name", "is not a metric name" },
                /* label names */
                { "x{9a=\"1\"} 1\n", "a label name starting with a digit", "does not start a label name" },
                { "x{a:b=\"1\"} 1\n", "a label name with a colon", "expected =" },
                { "x{a-b=\"1\"} 1\n", "a label name with a dash", "expected =" },
                { "x{__a=\"1\"} 1\n", "a label name starting with __", "reserved" },
                { "x{__name__=\"x\"} 1\n", "the label __name__", "reserved" },
                { "x{,} 1\n", "a comma without a label", "does not start a label name" },
                { "x{a=\"1\",,} 1\n", "two commas", "does not start a label name" },
                /* label values */
                { "x{a=\"\\t\"} 1\n", "the escape \\t in a label value", "is not an escape" },
                { "x{a=\"\\x41\"} 1\n", "the escape \\x in a label value", "is not an escape" },
                { "x{a=\"\\\"} 1\n", "a label value ending in a backslash", "no closing quote" },
                { "x{a=\"1} 1\n", "a label value with no closing quote", "no closing quote" },
                { "x{a=1} 1\n", "an unquoted label value", "expected a quoted value" },
                { "x{a=\"1\"b=\"2\"} 1\n", "labels without a comma", "expected , or }" },
                { "x{a=\"1\" 1\n", "labels with no closing brace", "expected , or }" },
                { "# HELP x a\\tb\n", "the escape \\t in HELP", "is not an escape" },
                { "# HELP x a\\\"b\n", "the escape \\\" in HELP", "is not an escape" },
                /* duplicate label */
                { "x{a=\"1\",a=\"2\"} 1\n", "a label given twice", "given twice" },
                { "x{a=\"1\",b=\"2\",a=\"1\"} 1\n", "a label given twice, apart", "given twice" },
                /* values */
                { "x 1x\n", "a value with a trailing letter", "is not a float" },
                { "x\n", "no value", "expected a blank or {" },
                { "x \n", "an empty value after a blank", "is not a float" },
                { "x 1,5\n", "a decimal comma", "is not a float" },
                { "x inf\n", "inf", "is not a float" },
                { "x Inf\n", "Inf without a sign", "is not a float" },
                { "x +inf\n", "+inf in lower case", "is not a float" },
                { "x nan\n", "nan in lower case", "is not a float" },
                { "x 0x10\n", "a hexadecimal float without p", "is not a float" },
                { "x 1e\n", "an exponent without digits", "is not a float" },
                { "x .\n", "a lone point", "is not a float" },
                { "x 1e999\n", "a value that overflows", "is not a float" },
                { "x 1\r\n", "a carriage return", "is not a float" },
                /* timestamps */
                { "x 1 now\n", "a timestamp that is a word", "timestamp" },
                { "x 1 1.5\n", "a timestamp with a fraction", "timestamp" },
                { "x 1 99999999999999999999\n", "a timestamp beyond int64", "timestamp" },
                { "x 1 2 3\n", "text after the timestamp", "timestamp" },
                /* HELP and TYPE */
                { "# TYPE x counter\n# TYPE x counter\nx 1\n", "two TYPE lines", "line 2: a second TYPE" },
                { "# HELP x a\n# HELP x b\nx 1\n", "two HELP lines", "line 2: a second HELP" },
                { "# HELP x a\nx 1\n# HELP x b\n", "a second HELP after the samples", "line 3: a second HELP" },
                { "x 1\n# TYPE x gauge\n", "TYPE after the first sample", "after its first sample" },
                { "# TYPE x widget\nx 1\n", "an unknown type", "not counter, gauge" },
                { "# TYPE x Counter\nx 1\n", "a type in the wrong case", "not counter, gauge" },
                { "# TYPE x\nx 1\n", "TYPE without a type", "not counter, gauge" },
                { "# TYPE x gauge extra\nx 1\n", "TYPE with text after the type", "not counter, gauge" },
                /* families together */
                { "x 1\ny 1\nx{a=\"1\"} 2\n", "a family's sample after another family", "line 3: family x comes back" },
                { "x 1\ny 1\n# HELP x again\n", "a family's HELP after another family", "line 3: family x comes back" },
                { "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\ny 1\nh_count 1\n",
                  "a histogram's part after another family", "line 5: family h comes back" },
                /* duplicate samples */
                { "x 1\nx 2\n", "the same sample twice", "line 2: x given twice (line 1)" },
                { "x{a=\"1\",b=\"2\"} 1\nx{b=\"2\",a=\"1\"} 1\n",
                  "the same label set in another order", "given twice" },
                { "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
                  "the same bucket twice", "given twice" },
                /* counters */
                { "# TYPE x counter\nx -1\n", "a negative counter", "is negative" },
                { "# TYPE x counter\nx -Inf\n", "a counter at -Inf", "is negative" },
                /* histograms */
                { "# TYPE h histogram\nh 1\n",
                  "a histogram sample without a suffix", "not named _bucket, _sum or _count" },
                { "# TYPE h histogram\nh_bucket 1\nh_sum 1\nh_count 1\n",
                  "a bucket without le", "a bucket without le" },
                { "# TYPE h histogram\nh_bucket{le=\"x\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
                  "le that is not a number", "is not a number" },
                { "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum{le=\"1\"} 1\nh_count 1\n",
                  "le on _sum", "le on a sample other than _bucket" },
                { "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
                  "no +Inf bucket", "no le=\"+Inf\" bucket" },
                { "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
                  "+Inf not the last bucket", "not increasing" },
                { "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
                  "buckets not cumulative", "below the one before" },
                { "# TYPE h histogram\nh_bucket{le=\"1\"} -1\nh_bucket{le=\"+Inf\"} 0\nh_sum 1\nh_count 0\n",
                  "a negative bucket", "below the one before" },
                { "# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\n"
                  "h_sum 1\nh_count 1\n", "buckets out of order", "line 3: histogram h: le 1 after le 2" },
                { "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 1\n"
                  "h_sum 1\nh_count 1\n", "the same le twice, spelt differently", "not increasing" },
                { "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
                  "+Inf differs from _count", "_count 1" },
                { "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", "no _sum", "no _sum" },
                { "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\n", "no _count", "no _count" },
                { "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"
                  "h_bucket{a=\"1\",le=\"+Inf\"} 1\nh_sum{a=\"1\"} 1\n",
                    "a second label set without _count", "line 5: histogram h{a=\"1\"}: no _count" },
                { "# TYPE h histogram\nh_sum 1\nh_count 1\n",
                  "_sum and _count without buckets", "no le=\"+Inf\" bucket" },
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                PromDoc d = { 0 };
                char err[256] = "";
                int r = prom_parse(bad[i].text, &d, err, sizeof(err));

                /* Refused for the reason meant, not another one on the way. */
                ok(r == -EINVAL && strncmp(err, "line ", 5) == 0 && strstr(err, bad[i].want),
                   "refused: %s (%s)", bad[i].rule, err);
                if (r == 0)
                        prom_doc_free(&d);
        }
}

static void test_rules_accepted(void) {
        static const char *const good[] = {
                "",
                "\n\n",
                "# a comment\n\nx 1\n#\n",
                "   \n\t\n x 1\n",
                "# HELP x\nx 1\n",
                "# HELPER x is a comment\n# TYPE x gauge\nx 1\n",
                "x 1 1700000000000\ny -1 -5\n",
                "x +Inf\ny -Inf\nz NaN\n",
                "x 1\t \n",
                "x{} 1\n",
                "x{a=\"1\",} 1\n",
                "x { a = \"1\" , b=\"2\" } 1\n",
                "x{a=\"\\\\\\\"\\n\"} 1\n",
                "x{a=\"\",b=\"}{,=\"} 1\n",
                "x:y_z 1\n",
                "# TYPE x untyped\nx 1\n",
                "# TYPE x counter\nx NaN\n",
                "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 3\ns_count 2\n",
                "# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 1\nh_sum 3\nh_count 1\n",
                "# TYPE h histogram\nh_count 0\nh_sum 0\nh_bucket{le=\"+Inf\"} 0\n",
                "# TYPE h histogram\nh_bucket{a=\"1\",le=\"+Inf\"} 1\nh_bucket{a=\"2\",le=\"+Inf\"} 2\n"
                "h_sum{a=\"1\"} 1\nh_sum{a=\"2\"} 1\nh_count{a=\"2\"} 2\nh_count{a=\"1\"} 1\n",
                "x 1\nx_sum 1\n",
                "x 1e-400\n",
        };

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                PromDoc d;
                char what[64];

                snprintf(what, sizeof(what), "valid text %zu", i);
                parse_ok(good[i], &d, what);
                prom_doc_free(&d);
        }
}

/* What a parsed document holds, beyond being valid. */
static void test_parsed_values(void) {
        PromDoc d;

        parse_ok("# comment\nx { b = \"2\" , a=\"1\", } 0x1p-2 -5\ny .5\nz 5.\nw -1.5e3\n"
                 "# HELP h help\n# TYPE h histogram\n"
                 "h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 3\nh_sum 7\nh_count 3\n",
                 &d, "a mixed document");
        ok(get_is(&d, "x", "a=\"1\",b=\"2\"", 0.25), "labels come back sorted, the hexadecimal value read");
        ok(get_is(&d, "y", "", 0.5) && get_is(&d, "z", NULL, 5) && get_is(&d, "w", NULL, -1500),
           ".5, 5. and -1.5e3");
        ok(!prom_doc_get(&d, "x", NULL, &(double) { 0 }), "a sample asked for with other labels is absent");
        ok(!prom_doc_get(&d, "nothing", NULL, &(double) { 0 }), "an unknown sample is absent");
        ok(d.n_families == 5 && streq(d.families[4].name, "h") && d.families[4].has_help &&
           streq(d.families[4].type, "histogram") && d.families[4].n_samples == 4 && !d.families[0].type,
           "families with their HELP, TYPE and samples");
        ok(d.n_samples == 8 && d.samples[4].line == 8, "samples know their line");
        prom_doc_free(&d);
}

static void test_daemon_check(void) {
        static const struct {
                const char *text, *rule;
        } bad[] = {
                { "# HELP x_calls c\n# TYPE x_calls counter\nx_calls 1\n", "a counter not named _total" },
                { "# TYPE x_up gauge\nx_up 1\n", "no HELP" },
                { "# HELP x_up up\nx_up 1\n", "no TYPE" },
                { "# HELP y_up up\n# TYPE y_up gauge\ny_up 1\n", "another prefix" },
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                PromDoc d;
                char err[256] = "";

                parse_ok(bad[i].text, &d, bad[i].rule);
                ok(prom_doc_check_daemon(&d, "x_", err, sizeof(err)) == -EINVAL && err[0],
                   "the daemon's rules refuse %s (%s)", bad[i].rule, err);
                prom_doc_free(&d);
        }
}

int main(void) {
        test_writer();
        test_writer_odd_bytes();
        test_round_trip();
        test_histogram();
        test_values();
        test_end_error();
        test_misuse();
        test_rules_refused();
        test_rules_accepted();
        test_parsed_values();
        test_daemon_check();
        return done();
}
