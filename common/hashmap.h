/*
 * Hashmap: string keys to pointers, separate chaining, grows by doubling.
 *
 * Keys are not copied: the caller keeps each key alive while it is in the
 * map (usually the key is a field of the value). Iteration order is
 * unspecified; removing the current entry during hashmap_next() is allowed.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

typedef struct HashmapEntry HashmapEntry;

typedef struct Hashmap {
        HashmapEntry **buckets;
        size_t n_buckets;
        size_t size;
} Hashmap;

#define HASHMAP_NULL(_x) { .buckets = NULL }

typedef struct HashmapIter {
        size_t bucket;
        HashmapEntry *next;
} HashmapIter;

#define HASHMAP_ITER_INIT { 0, NULL }

/* Free the table (not the values). The map is empty and usable afterwards. */
void hashmap_deinit(Hashmap *h);

/**
 * hashmap_put() - map @key to @value.
 * Returns 0; -EEXIST if @key is present (nothing changed); or -ENOMEM.
 */
int hashmap_put(Hashmap *h, const char *key, void *value);

/* The value of @key, or NULL. */
void *hashmap_get(const Hashmap *h, const char *key);

/* Remove @key; returns its value, or NULL if it was absent. */
void *hashmap_remove(Hashmap *h, const char *key);

static inline size_t hashmap_size(const Hashmap *h) {
        return h->size;
}

/**
 * hashmap_next() - the next value in @it, or NULL at the end.
 */
void *hashmap_next(const Hashmap *h, HashmapIter *it);
