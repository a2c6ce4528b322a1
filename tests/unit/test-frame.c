/*
 * Unit test of frame.c: header encoding, and the decoder fed byte by byte,
 * many frames per piece, at random split points, at and just over the limit,
 * with empty frames, a 4 GiB - 1 header and garbage. Prints TAP.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "macro.h"
#include "tap.h"


#define check_eq(got, want, what) do {                                          \
                long long _g = (long long)(got), _w = (long long)(want);        \
                ok(_g == _w, "%s: got %lld, want %lld", (what), _g, _w);        \
        } while (0)

/* A small deterministic generator, so failures reproduce. */
static uint64_t rng_state;

static void rng_seed(uint64_t seed) {
        rng_state = seed ? seed : 1;
}

static uint32_t rng_next(void) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return (uint32_t)(rng_state >> 16);
}

/* A growing byte string of encoded frames. */
typedef struct Stream {
        uint8_t *data;
        size_t len, cap;
} Stream;

static void stream_append(Stream *s, const void *p, size_t n) {
        if (s->len + n > s->cap) {
                s->cap = MAX(s->cap * 2, s->len + n);
                s->data = realloc(s->data, s->cap);
                if (!s->data)
                        abort();
        }
        if (n > 0)
                memcpy(s->data + s->len, p, n);
        s->len += n;
}

/* Payload of frame @i with @len bytes: a pattern that tells frames apart. */
static void fill_payload(uint8_t *p, size_t len, unsigned i) {
        for (size_t k = 0; k < len; k++)
                p[k] = (uint8_t)(i * 31 + k * 7);
}

static bool payload_matches(const uint8_t *p, size_t len, unsigned i) {
        for (size_t k = 0; k < len; k++)
                if (p[k] != (uint8_t)(i * 31 + k * 7))
                        return false;
        return true;
}

static void stream_add_frame(Stream *s, size_t len, unsigned i) {
        uint8_t hdr[FRAME_HEADER_SIZE];
        uint8_t *p = malloc(len ? len : 1);

        if (!p || frame_encode_header(hdr, len) != 0)
                abort();
        fill_payload(p, len, i);
        stream_append(s, hdr, sizeof(hdr));
        stream_append(s, p, len);
        free(p);
}

/*
 * Feed @s in pieces chosen by @split (returns the next piece size), draining
 * after each feed. Returns the number of frames decoded correctly, or -1 on
 * a wrong frame or an unexpected error.
 */
typedef size_t (*SplitFn)(size_t remaining);

static int run_stream(const Stream *s, const size_t *lens, unsigned n_frames,
                      size_t max_frame, SplitFn split, size_t *ret_peak) {
        FrameDecoder d;
        size_t off = 0, peak = 0;
        unsigned got = 0;
        int r;

        frame_decoder_init(&d, max_frame);
        while (off < s->len) {
                size_t n = split(s->len - off);

                n = MIN(n, s->len - off);

                r = frame_decoder_feed(&d, s->data + off, n);
                if (r != 0) {
                        printf("# feed returned %d at offset %zu\n", r, off);
                        frame_decoder_deinit(&d);
                        return -1;
                }
                off += n;
                peak = MAX(peak, frame_decoder_allocated(&d));

                for (;;) {
                        const uint8_t *p;
                        size_t len;

                        r = frame_decoder_next(&d, &p, &len);
                        if (r == 0)
                                break;
                        if (r != 1 || got >= n_frames || len != lens[got] ||
                            !payload_matches(p, len, got)) {
                                printf("# frame %u: r=%d len=%zu want %zu\n", got, r,
                                       r == 1 ? len : 0, got < n_frames ? lens[got] : 0);
                                frame_decoder_deinit(&d);
                                return -1;
                        }
                        got++;
                }
        }
        if (frame_decoder_buffered(&d) != 0) {
                printf("# %zu bytes left over\n", frame_decoder_buffered(&d));
                got = 0;
        }
        frame_decoder_deinit(&d);
        if (ret_peak)
                *ret_peak = peak;
        return (int)got;
}

static size_t split_one(size_t remaining) {
        return 1;
}

static size_t split_all(size_t remaining) {
        return remaining;
}

static size_t split_random(size_t remaining) {
        /* Mostly small pieces, now and then a large one. */
        if (rng_next() % 8 == 0)
                return 1 + rng_next() % 70000;
        return 1 + rng_next() % 13;
}

_Static_assert(FRAME_E_TOO_LARGE != 1, "a frame and an error must differ");

static void test_header(void) {
        static const struct {
                size_t len;
                uint8_t bytes[4];
        } table[] = {
                { 0, { 0, 0, 0, 0 } },
                { 1, { 0, 0, 0, 1 } },
                { 0x0102, { 0, 0, 1, 2 } },
                { 0x01020304, { 1, 2, 3, 4 } },
                { 16u << 20, { 0x01, 0, 0, 0 } },
                { 0xffffffffu, { 0xff, 0xff, 0xff, 0xff } },
        };
        uint8_t out[FRAME_HEADER_SIZE] = { 0xaa, 0xaa, 0xaa, 0xaa };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                uint8_t hdr[FRAME_HEADER_SIZE];
                int r = frame_encode_header(hdr, table[i].len);

                ok(r == 0 && memcmp(hdr, table[i].bytes, 4) == 0,
                   "encode %zu: r=%d bytes %02x %02x %02x %02x", table[i].len, r,
                   hdr[0], hdr[1], hdr[2], hdr[3]);
                check_eq(frame_decode_header(table[i].bytes), table[i].len, "decode header");
        }

#if SIZE_MAX > UINT32_MAX
        check_eq(frame_encode_header(out, (size_t)UINT32_MAX + 1), -EMSGSIZE, "encode 4 GiB refused");
        ok(out[0] == 0xaa && out[3] == 0xaa, "refused encode leaves output untouched");
#endif
}

static void test_byte_at_a_time(void) {
        static const size_t lens[] = { 5, 0, 1, 300, 0, 4, 1000, 2 };
        Stream s = {};
        int n;

        for (unsigned i = 0; i < ELEMENTSOF(lens); i++)
                stream_add_frame(&s, lens[i], i);

        n = run_stream(&s, lens, ELEMENTSOF(lens), 4096, split_one, NULL);
        check_eq(n, ELEMENTSOF(lens), "byte at a time: frames decoded");
        free(s.data);
}

static void test_many_per_chunk(void) {
        size_t lens[500];
        size_t peak = 0;
        Stream s = {};
        int n;

        for (unsigned i = 0; i < ELEMENTSOF(lens); i++) {
                lens[i] = i % 7 == 0 ? 0 : i % 50;
                stream_add_frame(&s, lens[i], i);
        }

        n = run_stream(&s, lens, ELEMENTSOF(lens), 1024, split_all, &peak);
        check_eq(n, ELEMENTSOF(lens), "one piece: frames decoded");
        ok(peak <= s.len + 1024 + FRAME_HEADER_SIZE, "one piece: allocated %zu for a %zu byte piece",
           peak, s.len);
        free(s.data);
}

static void test_random_splits(void) {
        enum { N_FRAMES = 300, N_ROUNDS = 40 };
        const size_t max_frame = 100000;

        for (unsigned round = 0; round < N_ROUNDS; round++) {
                size_t lens[N_FRAMES];
                size_t peak = 0;
                Stream s = {};
                int n;

                rng_seed(0x5eed0000u + round);
                for (unsigned i = 0; i < N_FRAMES; i++) {
                        switch (rng_next() % 4) {
                        case 0:
                                lens[i] = 0;
                                break;
                        case 1:
                                lens[i] = rng_next() % 16;
                                break;
                        case 2:
                                lens[i] = rng_next() % 2000;
                                break;
                        default:
                                lens[i] = rng_next() % (max_frame + 1);
                                break;
                        }
                        stream_add_frame(&s, lens[i], i);
                }

                n = run_stream(&s, lens, N_FRAMES, max_frame, split_random, &peak);
                ok(n == N_FRAMES, "random splits, seed %u: got %d frames, want %d", round, n, N_FRAMES);
                /* Bounded by one frame at the limit plus one piece (at most 70000). */
                ok(peak <= max_frame + FRAME_HEADER_SIZE + 70000,
                   "random splits, seed %u: peak allocation %zu", round, peak);
                free(s.data);
        }
}

static void test_limit(void) {
        const size_t max_frame = 64 * 1024;
        FrameDecoder d;
        Stream s = {};
        size_t lens[] = { max_frame };
        const uint8_t *p;
        size_t len;
        uint8_t hdr[FRAME_HEADER_SIZE];
        int n, r;

        /* Exactly the limit passes, whole and byte by byte. */
        stream_add_frame(&s, max_frame, 0);
        n = run_stream(&s, lens, 1, max_frame, split_all, NULL);
        check_eq(n, 1, "exactly max_frame, one piece");
        n = run_stream(&s, lens, 1, max_frame, split_one, NULL);
        check_eq(n, 1, "exactly max_frame, byte by byte");
        free(s.data);

        /* One more byte is refused from the header alone. */
        frame_decoder_init(&d, max_frame);
        (void)frame_encode_header(hdr, max_frame + 1);
        r = frame_decoder_feed(&d, hdr, 3);
        check_eq(r, 0, "max+1: partial header accepted");
        check_eq(frame_decoder_next(&d, &p, &len), 0, "max+1: partial header needs more");
        r = frame_decoder_feed(&d, hdr + 3, 1);
        check_eq(r, FRAME_E_TOO_LARGE, "max+1: feed completing the header fails");
        check_eq(frame_decoder_next(&d, &p, &len), FRAME_E_TOO_LARGE, "max+1: next fails");
        check_eq(frame_decoder_next(&d, &p, &len), FRAME_E_TOO_LARGE, "max+1: failure is sticky");
        check_eq(frame_decoder_feed(&d, "x", 1), FRAME_E_TOO_LARGE, "max+1: later feeds fail");
        check_eq(frame_decoder_allocated(&d), 0, "max+1: buffer released");
        frame_decoder_deinit(&d);

        /* A good frame before the bad header is still delivered. */
        frame_decoder_init(&d, max_frame);
        s = (Stream){};
        stream_add_frame(&s, 10, 0);
        (void)frame_encode_header(hdr, max_frame + 1);
        stream_append(&s, hdr, sizeof(hdr));
        stream_append(&s, "junk", 4);
        r = frame_decoder_feed(&d, s.data, s.len);
        check_eq(r, 0, "good then bad: feed");
        r = frame_decoder_next(&d, &p, &len);
        ok(r == 1 && len == 10 && payload_matches(p, len, 0), "good then bad: first frame r=%d len=%zu",
           r, r == 1 ? len : 0);
        check_eq(frame_decoder_next(&d, &p, &len), FRAME_E_TOO_LARGE, "good then bad: then too large");
        frame_decoder_deinit(&d);
        free(s.data);
}

static void test_huge_header(void) {
        static const uint8_t hdr[FRAME_HEADER_SIZE] = { 0xff, 0xff, 0xff, 0xff };
        FrameDecoder d;
        const uint8_t *p;
        size_t len;
        int r;

        frame_decoder_init(&d, 16u << 20);
        r = frame_decoder_feed(&d, hdr, 2);
        check_eq(r, 0, "4 GiB-1: half a header");
        check_eq(frame_decoder_next(&d, &p, &len), 0, "4 GiB-1: needs more");
        ok(frame_decoder_allocated(&d) <= 4096, "4 GiB-1: allocated %zu before the header completes",
           frame_decoder_allocated(&d));
        r = frame_decoder_feed(&d, hdr + 2, 2);
        check_eq(r, FRAME_E_TOO_LARGE, "4 GiB-1: rejected on the header");
        check_eq(frame_decoder_allocated(&d), 0, "4 GiB-1: nothing allocated for the payload");
        check_eq(frame_decoder_next(&d, &p, &len), FRAME_E_TOO_LARGE, "4 GiB-1: next reports it");
        frame_decoder_deinit(&d);

        /* The limit can never exceed what the prefix can say. */
        frame_decoder_init(&d, SIZE_MAX);
        check_eq(d.max_frame, UINT32_MAX, "max_frame clamped to 32 bits");
        frame_decoder_deinit(&d);
}

static void test_empty_frames(void) {
        static const uint8_t zeros[12] = {};
        FrameDecoder d;
        const uint8_t *p = NULL;
        size_t len = 99;
        int r;

        frame_decoder_init(&d, 1024);
        check_eq(frame_decoder_next(&d, &p, &len), 0, "empty decoder: no frame");
        check_eq(frame_decoder_feed(&d, zeros, 0), 0, "feed of zero bytes");
        check_eq(frame_decoder_allocated(&d), 0, "feed of zero bytes allocates nothing");
        check_eq(frame_decoder_feed(&d, zeros, sizeof(zeros)), 0, "three empty frames fed");
        for (int i = 0; i < 3; i++) {
                r = frame_decoder_next(&d, &p, &len);
                ok(r == 1 && len == 0 && p != NULL, "empty frame %d: r=%d len=%zu", i, r, len);
        }
        check_eq(frame_decoder_next(&d, &p, &len), 0, "then no more");
        check_eq(frame_decoder_buffered(&d), 0, "nothing buffered");
        frame_decoder_deinit(&d);
        frame_decoder_deinit(&d);
        ok(true, "deinit twice is harmless");
}

static void test_buffered_and_release(void) {
        const size_t big = 200000;
        FrameDecoder d;
        Stream s = {};
        const uint8_t *p;
        size_t len;
        int r;

        stream_add_frame(&s, big, 0);
        frame_decoder_init(&d, 1u << 20);

        r = frame_decoder_feed(&d, s.data, 10);
        check_eq(r, 0, "partial big frame fed");
        check_eq(frame_decoder_buffered(&d), 10, "buffered counts partial bytes");
        r = frame_decoder_feed(&d, s.data + 10, s.len - 10);
        check_eq(r, 0, "rest of big frame fed");
        check_eq(frame_decoder_buffered(&d), s.len, "buffered counts the whole frame");
        r = frame_decoder_next(&d, &p, &len);
        ok(r == 1 && len == big && payload_matches(p, len, 0), "big frame decoded r=%d len=%zu",
           r, r == 1 ? len : 0);
        check_eq(frame_decoder_buffered(&d), 0, "buffered is zero after the frame");
        check_eq(frame_decoder_next(&d, &p, &len), 0, "no second frame");
        check_eq(frame_decoder_allocated(&d), 0, "large emptied buffer released");
        frame_decoder_deinit(&d);
        free(s.data);
}

static void test_garbage(void) {
        enum { N_ROUNDS = 200 };
        unsigned survived = 0;

        for (unsigned round = 0; round < N_ROUNDS; round++) {
                FrameDecoder d;
                uint8_t buf[512];
                bool bad = false;

                rng_seed(0xbadu + round);
                frame_decoder_init(&d, 1 + rng_next() % 300);
                for (int feed = 0; feed < 50 && !bad; feed++) {
                        size_t n = rng_next() % sizeof(buf);
                        int r;

                        for (size_t k = 0; k < n; k++)
                                buf[k] = (uint8_t)rng_next();
                        /* Small lengths now and then, so some frames pass. */
                        if (n >= 4 && rng_next() % 2) {
                                buf[0] = buf[1] = buf[2] = 0;
                        }
                        r = frame_decoder_feed(&d, buf, n);
                        if (r == FRAME_E_TOO_LARGE)
                                break;
                        if (r != 0) {
                                bad = true;
                                break;
                        }
                        for (;;) {
                                const uint8_t *p;
                                size_t len;

                                r = frame_decoder_next(&d, &p, &len);
                                if (r == 1 && len <= d.max_frame)
                                        continue;
                                if (r != 0 && r != FRAME_E_TOO_LARGE)
                                        bad = true;
                                break;
                        }
                        if (frame_decoder_allocated(&d) > d.max_frame + FRAME_HEADER_SIZE + sizeof(buf))
                                bad = true;
                }
                frame_decoder_deinit(&d);
                if (!bad)
                        survived++;
        }
        check_eq(survived, N_ROUNDS, "garbage rounds handled");
}

int main(void) {
        test_header();
        test_byte_at_a_time();
        test_many_per_chunk();
        test_random_splits();
        test_limit();
        test_huge_header();
        test_empty_frames();
        test_buffered_and_release();
        test_garbage();

        return done();
}
