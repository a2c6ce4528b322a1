/*
 * Frame codec: 4-byte big-endian length prefix, then the payload.
 *
 * The decoder keeps one contiguous buffer. Bytes in [start, end) are
 * buffered and not yet returned; frame_decoder_next() hands out a pointer
 * into the buffer and only advances @start, so the payload stays in place
 * until the caller feeds again or asks for the next frame. Space in front of
 * @start is reclaimed lazily, by moving the unread tail down when a feed
 * would not fit behind it.
 *
 * Invariants:
 *  - a header whose length exceeds max_frame is rejected before the buffer is
 *    grown for its payload, and the decoder stays failed afterwards (the
 *    stream has no way to resynchronize);
 *  - the buffer never grows beyond the larger of (header + max_frame) and
 *    (buffered bytes + the piece being fed), so memory is bounded by the
 *    limit plus one read when the caller drains frames after each feed;
 *  - an emptied buffer larger than FRAME_DECODER_KEEP is released, so idle
 *    connections do not pin the memory of their largest frame.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "macro.h"

/* The smallest allocation, so small frames do not realloc byte by byte. */
#define FRAME_DECODER_MIN_ALLOC 256

/* An empty buffer up to this size is kept for the next frame. */
#define FRAME_DECODER_KEEP 4096

int frame_encode_header(uint8_t out[static FRAME_HEADER_SIZE], size_t len) {
        if (len > FRAME_LENGTH_MAX)
                return -EMSGSIZE;

        out[0] = (uint8_t)(len >> 24);
        out[1] = (uint8_t)(len >> 16);
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 0;
}

uint32_t frame_decode_header(const uint8_t in[static FRAME_HEADER_SIZE]) {
        return ((uint32_t)in[0] << 24) |
               ((uint32_t)in[1] << 16) |
               ((uint32_t)in[2] << 8) |
               (uint32_t)in[3];
}

void frame_decoder_init(FrameDecoder *d, size_t max_frame) {
        *d = (FrameDecoder){
                .max_frame = MIN(max_frame, (size_t)FRAME_LENGTH_MAX),
        };
}

void frame_decoder_deinit(FrameDecoder *d) {
        free(d->buffer);
        *d = (FrameDecoder)FRAME_DECODER_NULL(*d);
}

size_t frame_decoder_buffered(const FrameDecoder *d) {
        return d->end - d->start;
}

size_t frame_decoder_allocated(const FrameDecoder *d) {
        return d->capacity;
}

static void frame_decoder_release(FrameDecoder *d) {
        free(d->buffer);
        d->buffer = NULL;
        d->capacity = 0;
        d->start = 0;
        d->end = 0;
}

/*
 * Check the header at @start, if it is complete. Returns 0 or
 * FRAME_E_TOO_LARGE; on failure the buffer is dropped at once since nothing
 * in it can ever be returned.
 */
static int frame_decoder_check(FrameDecoder *d, size_t *ret_frame_size) {
        uint32_t len;

        if (d->failed)
                return FRAME_E_TOO_LARGE;

        if (d->end - d->start < FRAME_HEADER_SIZE) {
                *ret_frame_size = 0;
                return 0;
        }

        len = frame_decode_header(d->buffer + d->start);
        if (len > d->max_frame) {
                d->failed = true;
                frame_decoder_release(d);
                return FRAME_E_TOO_LARGE;
        }

        *ret_frame_size = FRAME_HEADER_SIZE + (size_t)len;
        return 0;
}

/*
 * Make room for @n more bytes behind @end. Moves the unread bytes to the
 * front first; grows only if that is not enough. Growth doubles up to one
 * full frame at the limit, and reserves the whole current frame at once when
 * its header is already known, so a large frame arriving in small reads costs
 * one allocation rather than a chain of copies.
 */
static int frame_decoder_reserve(FrameDecoder *d, size_t n) {
        size_t frame_size, need, want, cap_limit;
        uint8_t *p;
        int r;

        if (d->capacity - d->end >= n)
                return 0;

        if (d->start > 0) {
                memmove(d->buffer, d->buffer + d->start, d->end - d->start);
                d->end -= d->start;
                d->start = 0;
                if (d->capacity - d->end >= n)
                        return 0;
        }

        r = frame_decoder_check(d, &frame_size);
        if (r != 0)
                return r;

        if (n > SIZE_MAX - d->end)
                return -ENOMEM;
        need = d->end + n;

        cap_limit = d->max_frame + FRAME_HEADER_SIZE;
        want = d->capacity <= SIZE_MAX / 2 ? d->capacity * 2 : SIZE_MAX;
        want = MIN(want, cap_limit);
        want = MAX(want, (size_t)FRAME_DECODER_MIN_ALLOC);
        want = MAX(want, frame_size);
        want = MAX(want, need);

        p = realloc(d->buffer, want);
        if (!p)
                return -ENOMEM;

        d->buffer = p;
        d->capacity = want;
        return 0;
}

int frame_decoder_feed(FrameDecoder *d, const void *data, size_t n) {
        size_t frame_size;
        int r;

        if (d->failed)
                return FRAME_E_TOO_LARGE;
        if (n == 0)
                return 0;

        /* Everything handed out so far is forgotten now. */
        if (d->start == d->end)
                d->start = d->end = 0;

        r = frame_decoder_reserve(d, n);
        if (r != 0)
                return r;

        memcpy(d->buffer + d->end, data, n);
        d->end += n;

        /* Fail early on a bad header, so its payload is never buffered. */
        return frame_decoder_check(d, &frame_size);
}

int frame_decoder_next(FrameDecoder *d, const uint8_t **ret_payload, size_t *ret_len) {
        size_t frame_size;
        int r;

        if (d->failed)
                return FRAME_E_TOO_LARGE;

        if (d->start == d->end) {
                if (d->capacity > FRAME_DECODER_KEEP)
                        frame_decoder_release(d);
                d->start = d->end = 0;
                return 0;
        }

        r = frame_decoder_check(d, &frame_size);
        if (r != 0)
                return r;
        if (frame_size == 0 || d->end - d->start < frame_size)
                return 0;

        *ret_payload = d->buffer + d->start + FRAME_HEADER_SIZE;
        *ret_len = frame_size - FRAME_HEADER_SIZE;
        d->start += frame_size;
        return 1;
}
