/*
 * Unit test of LogBuf: line assembly, splitting, the byte bound, reading by
 * seq / tail / since, and followers. Prints TAP.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "logbuf.h"

static bool test_failed;

#define CHECK(cond)                                                             \
        do {                                                                    \
                if (!(cond)) {                                                  \
                        printf("# %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
                        test_failed = true;                                     \
                        return;                                                 \
                }                                                               \
        } while (0)

#define CHECK_EQ_U(a, b)                                                        \
        do {                                                                    \
                uint64_t _a = (a), _b = (b);                                    \
                if (_a != _b) {                                                 \
                        printf("# %s:%d: %s == %" PRIu64 ", expected %s == %" PRIu64 "\n", \
                               __FILE__, __LINE__, #a, _a, #b, _b);             \
                        test_failed = true;                                     \
                        return;                                                 \
                }                                                               \
        } while (0)

#define MIN_LEN(n) ((n) < 60 ? (n) : 60)

static void append_str(LogBuf *lb, const char *s, int64_t t) {
        logbuf_append(lb, (const uint8_t *)s, strlen(s), t);
}

static bool line_is(const LogBuf *lb, uint64_t seq, const char *s, int64_t t) {
        const LogLine *l = logbuf_get(lb, seq);

        if (!l) {
                printf("# line %" PRIu64 " missing\n", seq);
                return false;
        }
        if (l->seq != seq || l->len != strlen(s) || memcmp(l->data, s, l->len) != 0 || l->time_ns != t) {
                printf("# line %" PRIu64 ": seq %" PRIu64 " len %zu time %" PRId64 " \"%.*s\"\n",
                       seq, l->seq, l->len, l->time_ns, (int)MIN_LEN(l->len), (const char *)l->data);
                return false;
        }
        return true;
}

static LogBuf *new_buf(size_t max) {
        LogBuf *lb = NULL;

        if (logbuf_new(&lb, max) < 0) {
                printf("Bail out! out of memory\n");
                exit(1);
        }
        return lb;
}

static void test_complete_lines(void) {
        LogBuf *lb = new_buf(LOGBUF_DEFAULT_MAX_BYTES);

        append_str(lb, "one\ntwo\n\nfour\n", 100);
        CHECK_EQ_U(logbuf_first_seq(lb), 0);
        CHECK_EQ_U(logbuf_end_seq(lb), 4);
        CHECK(line_is(lb, 0, "one\n", 100));
        CHECK(line_is(lb, 1, "two\n", 100));
        CHECK(line_is(lb, 2, "\n", 100));
        CHECK(line_is(lb, 3, "four\n", 100));
        CHECK(logbuf_get(lb, 4) == NULL);
        logbuf_free(lb);
}

static void test_partial_lines(void) {
        LogBuf *lb = new_buf(LOGBUF_DEFAULT_MAX_BYTES);

        append_str(lb, "hel", 1);
        CHECK_EQ_U(logbuf_end_seq(lb), 0);
        append_str(lb, "lo\nwor", 2);
        CHECK_EQ_U(logbuf_end_seq(lb), 1);
        append_str(lb, "l", 3);
        append_str(lb, "d\n", 4);
        CHECK_EQ_U(logbuf_end_seq(lb), 2);
        /* A line carries the arrival time of its first byte. */
        CHECK(line_is(lb, 0, "hello\n", 1));
        CHECK(line_is(lb, 1, "world\n", 2));
        logbuf_free(lb);
}

static void test_close_flushes_partial(void) {
        LogBuf *lb = new_buf(LOGBUF_DEFAULT_MAX_BYTES);

        append_str(lb, "done\nno newline", 7);
        CHECK_EQ_U(logbuf_end_seq(lb), 1);
        CHECK(!logbuf_is_closed(lb));
        logbuf_close(lb);
        CHECK(logbuf_is_closed(lb));
        CHECK_EQ_U(logbuf_end_seq(lb), 2);
        CHECK(line_is(lb, 1, "no newline", 7));
        /* Output after close is ignored; a second close is harmless. */
        append_str(lb, "late\n", 8);
        logbuf_close(lb);
        CHECK_EQ_U(logbuf_end_seq(lb), 2);
        logbuf_free(lb);
}

static void test_split_long_lines(void) {
        LogBuf *lb = new_buf(LOGBUF_DEFAULT_MAX_BYTES);
        size_t n = 2 * LOGBUF_LINE_MAX + 10;
        uint8_t *big = malloc(n + 1);
        const LogLine *l;

        CHECK(big);
        memset(big, 'x', n);
        big[n] = '\n';

        /* In one chunk: two full pieces, then the rest with its newline. */
        logbuf_append(lb, big, n + 1, 5);
        CHECK_EQ_U(logbuf_end_seq(lb), 3);
        l = logbuf_get(lb, 0);
        CHECK(l && l->len == LOGBUF_LINE_MAX && l->data[l->len - 1] == 'x');
        l = logbuf_get(lb, 1);
        CHECK(l && l->len == LOGBUF_LINE_MAX && l->data[l->len - 1] == 'x');
        l = logbuf_get(lb, 2);
        CHECK(l && l->len == 11 && l->data[10] == '\n');

        /* Byte by byte through the partial buffer: the same split. */
        for (size_t i = 0; i <= n; i++)
                logbuf_append(lb, big + i, 1, 6);
        CHECK_EQ_U(logbuf_end_seq(lb), 6);
        CHECK_EQ_U(logbuf_get(lb, 3)->len, LOGBUF_LINE_MAX);
        CHECK_EQ_U(logbuf_get(lb, 4)->len, LOGBUF_LINE_MAX);
        CHECK_EQ_U(logbuf_get(lb, 5)->len, 11);

        /* Exactly the limit including its newline is one line. */
        big[LOGBUF_LINE_MAX - 1] = '\n';
        logbuf_append(lb, big, LOGBUF_LINE_MAX, 7);
        CHECK_EQ_U(logbuf_end_seq(lb), 7);
        CHECK_EQ_U(logbuf_get(lb, 6)->len, LOGBUF_LINE_MAX);

        /* A partial line that reaches the limit across chunks. */
        logbuf_append(lb, big, 100, 8);
        memset(big, 'y', LOGBUF_LINE_MAX);
        logbuf_append(lb, big, LOGBUF_LINE_MAX, 9);
        CHECK_EQ_U(logbuf_end_seq(lb), 8);
        l = logbuf_get(lb, 7);
        CHECK(l && l->len == LOGBUF_LINE_MAX && l->data[0] == 'x' && l->data[100] == 'y' && l->time_ns == 8);
        logbuf_close(lb);
        CHECK_EQ_U(logbuf_end_seq(lb), 9);
        CHECK_EQ_U(logbuf_get(lb, 8)->len, 100);
        free(big);
        logbuf_free(lb);
}

static void test_bound_drops_oldest(void) {
        LogBuf *lb = new_buf(4096);
        char line[64];
        uint64_t first;

        for (int i = 0; i < 1000; i++) {
                snprintf(line, sizeof(line), "line %04d\n", i);
                append_str(lb, line, i);
                CHECK(logbuf_bytes(lb) <= 4096);
        }
        CHECK_EQ_U(logbuf_end_seq(lb), 1000);
        first = logbuf_first_seq(lb);
        CHECK(first > 0 && first < 1000);
        CHECK(logbuf_get(lb, first - 1) == NULL);
        CHECK(logbuf_get(lb, 0) == NULL);
        /* What is kept is the newest, contiguous, with its own seq. */
        for (uint64_t s = first; s < 1000; s++) {
                snprintf(line, sizeof(line), "line %04d\n", (int)s);
                CHECK(line_is(lb, s, line, (int64_t)s));
        }
        /* A flood of empty lines is bounded too. */
        for (int i = 0; i < 100000; i++)
                append_str(lb, "\n", 2000);
        CHECK(logbuf_bytes(lb) <= 4096);
        CHECK_EQ_U(logbuf_end_seq(lb), 101000);
        logbuf_free(lb);
}

static void test_newest_line_kept(void) {
        LogBuf *lb = new_buf(100);
        uint8_t big[1000];

        memset(big, 'z', sizeof(big));
        big[sizeof(big) - 1] = '\n';
        append_str(lb, "small\n", 1);
        logbuf_append(lb, big, sizeof(big), 2);
        CHECK_EQ_U(logbuf_first_seq(lb), 1);
        CHECK_EQ_U(logbuf_end_seq(lb), 2);
        CHECK_EQ_U(logbuf_get(lb, 1)->len, sizeof(big));
        logbuf_free(lb);
}

static void test_tail(void) {
        LogBuf *lb = new_buf(LOGBUF_DEFAULT_MAX_BYTES);

        CHECK_EQ_U(logbuf_seq_tail(lb, 3), 0);
        append_str(lb, "a\nb\nc\nd\ne\n", 1);
        CHECK_EQ_U(logbuf_seq_tail(lb, 0), 5);
        CHECK_EQ_U(logbuf_seq_tail(lb, 2), 3);
        CHECK(line_is(lb, logbuf_seq_tail(lb, 2), "d\n", 1));
        CHECK_EQ_U(logbuf_seq_tail(lb, 5), 0);
        CHECK_EQ_U(logbuf_seq_tail(lb, 50), 0);
        /* A partial line is not a line yet. */
        append_str(lb, "f", 2);
        CHECK_EQ_U(logbuf_seq_tail(lb, 1), 4);
        logbuf_free(lb);
}

static void test_tail_after_drop(void) {
        LogBuf *lb = new_buf(1024);
        uint64_t first;

        for (int i = 0; i < 200; i++)
                append_str(lb, "0123456789\n", i);
        first = logbuf_first_seq(lb);
        CHECK(first > 0);
        CHECK_EQ_U(logbuf_seq_tail(lb, 10), 190);
        CHECK_EQ_U(logbuf_seq_tail(lb, 1000), first);
        logbuf_free(lb);
}

static void test_since(void) {
        LogBuf *lb = new_buf(LOGBUF_DEFAULT_MAX_BYTES);

        CHECK_EQ_U(logbuf_seq_since(lb, 0), 0);
        append_str(lb, "a\n", 10);
        append_str(lb, "b\n", 20);
        append_str(lb, "c\nd\n", 30);
        append_str(lb, "e\n", 40);
        CHECK_EQ_U(logbuf_seq_since(lb, 0), 0);
        CHECK_EQ_U(logbuf_seq_since(lb, 10), 0);
        CHECK_EQ_U(logbuf_seq_since(lb, 11), 1);
        CHECK_EQ_U(logbuf_seq_since(lb, 20), 1);
        CHECK_EQ_U(logbuf_seq_since(lb, 30), 2);
        CHECK_EQ_U(logbuf_seq_since(lb, 31), 4);
        CHECK_EQ_U(logbuf_seq_since(lb, 41), 5);
        /* The clock stepping back does not reorder arrival times. */
        append_str(lb, "f\n", 15);
        CHECK(line_is(lb, 5, "f\n", 40));
        CHECK_EQ_U(logbuf_seq_since(lb, 40), 4);
        logbuf_free(lb);
}

static void test_seq_resume(void) {
        LogBuf *lb = new_buf(2048);
        uint64_t pos = 0, got = 0;
        char line[32];

        /* A reader that keeps only its next seq sees every line once, in
         * order, across many appends and ring growth. */
        for (int i = 0; i < 100; i++) {
                snprintf(line, sizeof(line), "%d\n", i);
                append_str(lb, line, i);
                for (const LogLine *l; (l = logbuf_get(lb, pos)); pos++) {
                        CHECK_EQ_U(l->seq, pos);
                        CHECK_EQ_U((uint64_t)atoi((const char *)l->data), got);
                        got++;
                }
        }
        CHECK_EQ_U(got, 100);
        /* A reader that stopped at seq 3 finds its place dropped. */
        for (int i = 0; i < 1000; i++)
                append_str(lb, "filler line\n", 200);
        CHECK(logbuf_get(lb, 3) == NULL);
        CHECK(logbuf_first_seq(lb) > 3);
        CHECK(logbuf_get(lb, logbuf_first_seq(lb)) != NULL);
        CHECK(logbuf_get(lb, logbuf_end_seq(lb)) == NULL);
        logbuf_free(lb);
}

typedef struct Reader {
        LogFollower follower;
        unsigned lines, closed, freed;
        LogFollower *unfollow_other;    /* detach this one on the next event */
        bool unfollow_self;
        bool free_self;                 /* detach and free on any event */
        bool free_on_freed;             /* free on FREED (already detached) */
        unsigned *freed_count;
} Reader;

static void reader_event(LogFollower *f, LogBufEvent ev) {
        Reader *r = (Reader *)((char *)f - offsetof(Reader, follower));

        switch (ev) {
        case LOGBUF_EVENT_LINES:
                r->lines++;
                break;
        case LOGBUF_EVENT_CLOSED:
                r->closed++;
                break;
        case LOGBUF_EVENT_FREED:
                r->freed++;
                if (r->freed_count)
                        (*r->freed_count)++;
                if (r->free_on_freed) {
                        free(r);
                        return;
                }
                break;
        }
        if (r->unfollow_other) {
                logbuf_unfollow(r->unfollow_other);
                r->unfollow_other = NULL;
        }
        if (r->unfollow_self)
                logbuf_unfollow(f);
        if (r->free_self) {
                logbuf_unfollow(f);
                free(r);
        }
}

static void test_followers_notified(void) {
        LogBuf *lb = new_buf(LOGBUF_DEFAULT_MAX_BYTES);
        Reader a = {}, b = {};

        logbuf_follow(lb, &a.follower, reader_event);
        logbuf_follow(lb, &b.follower, reader_event);
        append_str(lb, "x", 1);                 /* no line yet */
        CHECK_EQ_U(a.lines, 0);
        append_str(lb, "y\nz\n", 2);            /* one event per append */
        CHECK_EQ_U(a.lines, 1);
        CHECK_EQ_U(b.lines, 1);
        logbuf_unfollow(&b.follower);
        CHECK(b.follower.lb == NULL);
        logbuf_unfollow(&b.follower);           /* twice is fine */
        append_str(lb, "w\npartial", 3);
        CHECK_EQ_U(a.lines, 2);
        CHECK_EQ_U(b.lines, 1);
        logbuf_close(lb);
        CHECK_EQ_U(a.closed, 1);
        CHECK_EQ_U(b.closed, 0);
        /* The flushed partial line is readable at CLOSED, and the follower
         * stays attached so it also learns about the free. */
        CHECK(line_is(lb, 3, "partial", 3));
        CHECK(a.follower.lb == lb);
        logbuf_free(lb);
        CHECK_EQ_U(a.freed, 1);
        CHECK(a.follower.lb == NULL);
        CHECK_EQ_U(b.freed, 0);
}

static void test_followers_detach_in_callback(void) {
        LogBuf *lb = new_buf(LOGBUF_DEFAULT_MAX_BYTES);
        Reader a = {}, b = {}, c = {};

        logbuf_follow(lb, &a.follower, reader_event);
        logbuf_follow(lb, &b.follower, reader_event);
        logbuf_follow(lb, &c.follower, reader_event);
        /* a detaches b (the next one in the walk), b must not be called. */
        a.unfollow_other = &b.follower;
        append_str(lb, "1\n", 1);
        CHECK_EQ_U(a.lines, 1);
        CHECK_EQ_U(b.lines, 0);
        CHECK_EQ_U(c.lines, 1);
        /* c detaches itself; a still gets the next event. */
        c.unfollow_self = true;
        append_str(lb, "2\n", 2);
        append_str(lb, "3\n", 3);
        CHECK_EQ_U(a.lines, 3);
        CHECK_EQ_U(c.lines, 2);
        logbuf_free(lb);
        CHECK_EQ_U(a.freed, 1);
        CHECK_EQ_U(b.freed, 0);
        CHECK_EQ_U(c.freed, 0);
}

static void test_free_ends_followers(void) {
        LogBuf *lb = new_buf(LOGBUF_DEFAULT_MAX_BYTES);
        unsigned freed = 0;

        /* Owners freed inside their FREED callback, as a stream does when
         * its sandbox record goes away (run under a memory checker to see
         * that nothing touches them afterwards). */
        for (int i = 0; i < 5; i++) {
                Reader *r = calloc(1, sizeof(*r));

                CHECK(r);
                r->freed_count = &freed;
                r->free_on_freed = true;
                logbuf_follow(lb, &r->follower, reader_event);
        }
        append_str(lb, "still open\n", 1);
        logbuf_free(lb);                        /* never closed */
        CHECK_EQ_U(freed, 5);
}

static void test_free_self_on_lines(void) {
        LogBuf *lb = new_buf(LOGBUF_DEFAULT_MAX_BYTES);
        Reader *r = calloc(1, sizeof(*r));
        Reader a = {};

        CHECK(r);
        r->free_self = true;
        logbuf_follow(lb, &r->follower, reader_event);
        logbuf_follow(lb, &a.follower, reader_event);
        append_str(lb, "go\n", 1);              /* r frees itself mid-walk */
        CHECK_EQ_U(a.lines, 1);
        append_str(lb, "again\n", 2);
        CHECK_EQ_U(a.lines, 2);
        logbuf_free(lb);
        CHECK_EQ_U(a.freed, 1);
}

static void test_follow_after_close(void) {
        LogBuf *lb = new_buf(LOGBUF_DEFAULT_MAX_BYTES);
        Reader a = {};

        append_str(lb, "x\n", 1);
        logbuf_close(lb);
        logbuf_follow(lb, &a.follower, reader_event);
        CHECK(logbuf_is_closed(lb));
        CHECK_EQ_U(a.closed, 0);
        logbuf_free(lb);
        CHECK_EQ_U(a.freed, 1);
        CHECK(logbuf_free(NULL) == NULL);
}

static const struct {
        const char *name;
        void (*fn)(void);
} tests[] = {
        { "complete lines get dense seqs and their arrival time", test_complete_lines },
        { "partial lines are joined across chunks", test_partial_lines },
        { "close flushes the partial line and ends input", test_close_flushes_partial },
        { "lines over 64 KiB are split", test_split_long_lines },
        { "the byte bound drops the oldest lines", test_bound_drops_oldest },
        { "the newest line is kept even above the bound", test_newest_line_kept },
        { "tail N", test_tail },
        { "tail N after drops", test_tail_after_drop },
        { "since a time", test_since },
        { "reading and resuming by seq", test_seq_resume },
        { "followers are notified, closed and freed", test_followers_notified },
        { "followers may detach during a notification", test_followers_detach_in_callback },
        { "free ends followers that free their owner", test_free_ends_followers },
        { "a follower may free itself on LINES", test_free_self_on_lines },
        { "following a closed buffer", test_follow_after_close },
};

int main(void) {
        size_t n = sizeof(tests) / sizeof(tests[0]);
        int failed = 0;

        printf("1..%zu\n", n);
        for (size_t i = 0; i < n; i++) {
                test_failed = false;
                tests[i].fn();
                printf("%s %zu - %s\n", test_failed ? "not ok" : "ok", i + 1, tests[i].name);
                failed += test_failed;
        }
        return failed ? 1 : 0;
}
