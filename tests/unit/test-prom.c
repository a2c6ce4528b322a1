/*
 * Unit test of prom.c and of the strict parser the integration tests use
 * (tests/lib/promparse.c): the writer's output, escapes and histograms parse
 * back with exact values; histogram buckets at their bounds; value
 * formatting; and each rule of the text format the parser enforces, with an
 * input that breaks it. Prints TAP.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "prom.h"
#include "promparse.h"
#include "tap.h"

static const double bounds[] = { 0.1, 1, 10 };

static char *write_sample_text(void) {
        PromLabel l[] = { { "method", "Create\"Sandbox\\\n" }, { "code", "OK" } };
        PromLabel m = { "method", "Get" };
        char *text = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&text, &size);
        PromWriter w;
        Histogram h;

        histogram_init(&h, bounds, ELEMENTSOF(bounds));
        histogram_observe(&h, 0.1);     /* on the bound: le="0.1" */
        histogram_observe(&h, 0.5);
        histogram_observe(&h, 10);
        histogram_observe(&h, 11);      /* above every bound: only +Inf */
        prom_init(&w, f);
        prom_family(&w, "cwsandboxd_calls_total", PROM_COUNTER, "Calls \\ by method\nand code");
        prom_sample(&w, l, ELEMENTSOF(l), 42);
        prom_sample(&w, &m, 1, 7);
        prom_family(&w, "cwsandboxd_ratio", PROM_GAUGE, "A ratio");
        prom_sample(&w, NULL, 0, 0.1);
        prom_family(&w, "cwsandboxd_seconds", PROM_HISTOGRAM, "A histogram");
        prom_histogram(&w, &m, 1, &h);
        if (prom_end(&w) < 0 || fclose(f) != 0)
                bail_out("writer");
        return text;
}

static void test_writer(void) {
        _cleanup_free_ char *text = write_sample_text();
        PromDoc d = { 0 };
        char err[256] = "";
        double v = -1;

        is_int(prom_parse(text, &d, err, sizeof(err)), 0, "the writer's text parses (%s)", err);
        is_int(prom_doc_check_daemon(&d, "cwsandboxd_", err, sizeof(err)), 0, "with HELP, TYPE and _total (%s)", err);
        ok(prom_doc_get(&d, "cwsandboxd_calls_total", "code=\"OK\",method=\"Create\\\"Sandbox\\\\\\n\"", &v) && v == 42,
           "a label value with a quote, a backslash and a newline round-trips (%g)", v);
        ok(prom_doc_get(&d, "cwsandboxd_ratio", NULL, &v) && v == 0.1, "0.1 round-trips");
        ok(strstr(text, "cwsandboxd_ratio 0.1\n") != NULL, "and is written as 0.1");
        ok(strstr(text, "# HELP cwsandboxd_calls_total Calls \\\\ by method\\nand code\n") != NULL,
           "HELP escapes the backslash and the newline");
        ok(prom_doc_get(&d, "cwsandboxd_seconds_bucket", "le=\"0.1\",method=\"Get\"", &v) && v == 1,
           "a value on a bound counts in that bucket (le)");
        ok(prom_doc_get(&d, "cwsandboxd_seconds_bucket", "le=\"1\",method=\"Get\"", &v) && v == 2,
           "buckets are cumulative");
        ok(prom_doc_get(&d, "cwsandboxd_seconds_bucket", "le=\"10\",method=\"Get\"", &v) && v == 3, "le=10: 3");
        ok(prom_doc_get(&d, "cwsandboxd_seconds_bucket", "le=\"+Inf\",method=\"Get\"", &v) && v == 4, "+Inf: all 4");
        ok(prom_doc_get(&d, "cwsandboxd_seconds_count", "method=\"Get\"", &v) && v == 4, "_count 4");
        ok(prom_doc_get(&d, "cwsandboxd_seconds_sum", "method=\"Get\"", &v) && fabs(v - 21.6) < 1e-9, "_sum 21.6");
        prom_doc_free(&d);
}

static void test_values(void) {
        static const struct { double v; const char *want; } cases[] = {
                { 0, "0" }, { 42, "42" }, { -3, "-3" }, { 1e15, "1e+15" }, { 0.25, "0.25" },
                { 1.0 / 3.0, "0.33333333333333331" }, { INFINITY, "+Inf" }, { -INFINITY, "-Inf" }, { NAN, "NaN" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char buf[64];

                prom_format_value(cases[i].v, buf, sizeof(buf));
                is_str(buf, cases[i].want, "value %s", cases[i].want);
        }
}

static void test_rules(void) {
        static const struct { const char *text, *rule; } bad[] = {
                { "x 1", "no final newline" },
                { "9x 1\n", "a metric name starting with a digit" },
                { "x-y 1\n", "a metric name with a dash" },
                { "x{9a=\"1\"} 1\n", "a label name starting with a digit" },
                { "x{__a=\"1\"} 1\n", "a reserved label name" },
                { "x{a=\"1\",a=\"2\"} 1\n", "a label given twice" },
                { "x{a=\"\\t\"} 1\n", "an escape other than \\\\ \\\" \\n" },
                { "x{a=\"1} 1\n", "an unterminated label value" },
                { "x{a=\"1\"b=\"2\"} 1\n", "labels without a comma" },
                { "x 1x\n", "a bad value" },
                { "x\n", "no value" },
                { "x 1 now\n", "a bad timestamp" },
                { "# TYPE x counter\n# TYPE x counter\nx 1\n", "two TYPE lines" },
                { "# HELP x a\n# HELP x b\nx 1\n", "two HELP lines" },
                { "x 1\n# TYPE x gauge\n", "TYPE after the samples" },
                { "# TYPE x widget\nx 1\n", "an unknown type" },
                { "x 1\ny 1\nx{a=\"1\"} 2\n", "a family that comes back" },
                { "x 1\nx 2\n", "the same sample twice" },
                { "# TYPE x counter\nx -1\n", "a negative counter" },
                { "# TYPE h histogram\nh 1\n", "a histogram sample without a suffix" },
                { "# TYPE h histogram\nh_bucket 1\nh_sum 1\nh_count 1\n", "a bucket without le" },
                { "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", "no +Inf bucket" },
                { "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
                  "buckets not cumulative" },
                { "# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\n"
                  "h_sum 1\nh_count 1\n", "buckets out of order" },
                { "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n", "+Inf differs from _count" },
                { "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", "no _sum" },
                { "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\n", "no _count" },
        };
        static const char *const good[] = {
                "",
                "# a comment\n\nx 1\n",
                "x{a=\"1\"} 1 1700000000000\n",
                "x +Inf\ny -Inf\nz NaN\n",
                "# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 1\nh_sum 3\nh_count 1\n",
                "x{a=\"\\\\\\\"\\n\"} 1\n",
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                PromDoc d = { 0 };
                char err[256] = "";
                int r = prom_parse(bad[i].text, &d, err, sizeof(err));

                ok(r < 0 && err[0], "refused: %s (%s)", bad[i].rule, err);
                if (r == 0)
                        prom_doc_free(&d);
        }
        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                PromDoc d = { 0 };
                char err[256] = "";

                is_int(prom_parse(good[i], &d, err, sizeof(err)), 0, "accepted: case %zu (%s)", i, err);
                prom_doc_free(&d);
        }
        {
                PromDoc d = { 0 };
                char err[256] = "";

                (void)prom_parse("# TYPE x_calls counter\nx_calls 1\n", &d, err, sizeof(err));
                ok(prom_doc_check_daemon(&d, "x_", err, sizeof(err)) < 0, "daemon check: a counter without _total");
                prom_doc_free(&d);
                (void)prom_parse("x_up 1\n", &d, err, sizeof(err));
                ok(prom_doc_check_daemon(&d, "x_", err, sizeof(err)) < 0, "daemon check: no HELP or TYPE");
                prom_doc_free(&d);
                (void)prom_parse("# HELP y_up up\n# TYPE y_up gauge\ny_up 1\n", &d, err, sizeof(err));
                ok(prom_doc_check_daemon(&d, "x_", err, sizeof(err)) < 0, "daemon check: another prefix");
                prom_doc_free(&d);
        }
}

int main(void) {
        test_writer();
        test_values();
        test_rules();
        return done();
}
