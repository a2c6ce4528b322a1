/*
 * Frame codec for the local socket protocol.
 *
 * On the stream socket between cwsandboxd and its clients every message is a
 * frame: a 4-byte big-endian payload length followed by that many payload
 * bytes (one serialized protobuf message; an empty message is a valid
 * zero-length frame). This module knows nothing about sockets, the loop or
 * protobuf: the encoder writes a header, the decoder takes bytes in whatever
 * pieces the socket delivers them and hands back whole payloads.
 *
 * The decoder enforces the frame size limit from the header alone, before it
 * reserves any memory for the payload, so a peer cannot make it allocate
 * more than the limit plus what the caller feeds in one piece.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes of the length prefix. */
#define FRAME_HEADER_SIZE 4

/* The largest payload the 32-bit length prefix can announce. */
#define FRAME_LENGTH_MAX UINT32_MAX

/*
 * Module errors. frame_decoder_next() returns 1 for a frame, so the first
 * error code starts above it.
 */
enum {
        _FRAME_E_SUCCESS,
        FRAME_E_TOO_LARGE = 2,  /* a header announced more than max_frame */
};

/*
 * Incremental decoder state. Bytes in [start, end) of @buffer are buffered
 * and not yet handed out; bytes before @start belong to frames already
 * returned (the last of which the caller may still be reading).
 */
typedef struct FrameDecoder {
        size_t max_frame;
        uint8_t *buffer;
        size_t capacity;
        size_t start;
        size_t end;
        bool failed;            /* sticky: a too-large header was seen */
} FrameDecoder;

#define FRAME_DECODER_NULL(_x) { .max_frame = 0 }

/**
 * frame_encode_header() - write the length prefix for a payload.
 * @out: the 4 header bytes to fill.
 * @len: payload length in bytes.
 *
 * Returns 0, or -EMSGSIZE if @len does not fit in 32 bits (@out is then left
 * untouched).
 */
int frame_encode_header(uint8_t out[static FRAME_HEADER_SIZE], size_t len);

/**
 * frame_decode_header() - read the payload length from a length prefix.
 * @in: 4 header bytes.
 *
 * Returns the announced payload length.
 */
uint32_t frame_decode_header(const uint8_t in[static FRAME_HEADER_SIZE]);

/**
 * frame_decoder_init() - set up an empty decoder.
 * @d: the decoder.
 * @max_frame: the largest payload accepted, in bytes. Values above
 *             FRAME_LENGTH_MAX are clamped to it.
 *
 * Allocates nothing; memory is taken when bytes arrive.
 */
void frame_decoder_init(FrameDecoder *d, size_t max_frame);

/**
 * frame_decoder_deinit() - free the buffer. The decoder is left as after
 * FRAME_DECODER_NULL() and may be deinitialized again.
 * @d: the decoder.
 */
void frame_decoder_deinit(FrameDecoder *d);

/**
 * frame_decoder_feed() - append bytes received from the peer.
 * @d: the decoder.
 * @data: the bytes (copied; the caller keeps ownership).
 * @n: number of bytes; 0 is allowed.
 *
 * Call frame_decoder_next() until it returns 0 after each feed, so the
 * buffer never holds more than one partial frame plus one fed piece.
 * Invalidates the payload last returned by frame_decoder_next().
 *
 * Returns 0; FRAME_E_TOO_LARGE once the decoder has failed (the bytes are
 * dropped); or -ENOMEM.
 */
int frame_decoder_feed(FrameDecoder *d, const void *data, size_t n);

/**
 * frame_decoder_next() - take the next complete frame.
 * @d: the decoder.
 * @ret_payload: set to the payload. It stays valid until the next call of
 *               frame_decoder_feed(), frame_decoder_next() or
 *               frame_decoder_deinit().
 * @ret_len: set to the payload length (may be 0).
 *
 * Returns 1 and a frame; 0 if more bytes are needed (outputs untouched); or
 * FRAME_E_TOO_LARGE if the next header announces more than max_frame. The
 * failure is sticky: the stream cannot be resynchronized, so every later
 * call returns FRAME_E_TOO_LARGE and the connection should be closed.
 */
int frame_decoder_next(FrameDecoder *d, const uint8_t **ret_payload, size_t *ret_len);

/**
 * frame_decoder_buffered() - bytes received but not yet returned as frames.
 * @d: the decoder.
 *
 * For per-connection limits and for noticing a peer that hung up in the
 * middle of a frame.
 */
size_t frame_decoder_buffered(const FrameDecoder *d);

/**
 * frame_decoder_allocated() - bytes of buffer memory the decoder holds.
 * @d: the decoder.
 */
size_t frame_decoder_allocated(const FrameDecoder *d);
