/*
 * Output of cwsandboxctl: aligned tables for people, compact JSON for
 * programs. The JSON shapes are documented in output.c.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "cwsandbox.h"

#define JSON_DEPTH_MAX 16

/* Writes JSON to a stream, placing the commas. */
typedef struct Json {
        FILE *f;
        unsigned depth;
        bool first[JSON_DEPTH_MAX];
        bool after_key;
} Json;

void json_init(Json *j, FILE *f);
void json_object_begin(Json *j);
void json_object_end(Json *j);
void json_array_begin(Json *j);
void json_array_end(Json *j);
void json_key(Json *j, const char *key);
void json_string(Json *j, const char *s);       /* NULL writes null */
void json_string_len(Json *j, const char *s, size_t len);
void json_int(Json *j, int64_t v);
void json_double(Json *j, double v);
void json_bool(Json *j, bool v);
void json_null(Json *j);
/* Ends a top-level value with a newline. */
void json_end(Json *j);

/**
 * json_sandbox() - the sandbox object (see output.c).
 */
void json_sandbox(Json *j, const cws_sandbox *sb);

/**
 * json_session() - the session object (see output.c).
 */
void json_session(Json *j, const cws_session *s);

/* Rows of text printed in aligned columns; the last column is not padded. */
typedef struct Table {
        size_t n_cols;
        size_t n_cells;
        char **cells;
} Table;

Table *table_new(size_t n_cols, ...);
/* Adds one row of n_cols strings (copied; NULL prints "-"). */
void table_add(Table *t, ...);
void table_print(const Table *t, FILE *f);
Table *table_free(Table *t);

/**
 * format_time_ms() - "2024-05-01T12:00:00Z" (UTC), or "-" for 0.
 */
const char *format_time_ms(int64_t ms, char buf[static 32]);

/**
 * sandbox_display_id() - the backend id, or the handle id while there is none.
 */
const char *sandbox_display_id(const cws_sandbox *sb);
