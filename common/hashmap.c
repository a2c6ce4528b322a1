/*
 * Hashmap with separate chaining. FNV-1a is enough here: keys are ids the
 * daemon makes itself or names of a few sessions, not attacker-chosen bulk
 * input with a budget for collisions; chains stay short because the table
 * doubles when it holds as many entries as buckets.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hashmap.h"

struct HashmapEntry {
        HashmapEntry *next;
        const char *key;
        void *value;
};

static uint64_t hash_key(const char *key) {
        uint64_t h = UINT64_C(14695981039346656037);

        for (const unsigned char *p = (const unsigned char *)key; *p; p++)
                h = (h ^ *p) * UINT64_C(1099511628211);
        return h;
}

void hashmap_deinit(Hashmap *h) {
        for (size_t i = 0; i < h->n_buckets; i++) {
                HashmapEntry *e = h->buckets[i];

                while (e) {
                        HashmapEntry *next = e->next;

                        free(e);
                        e = next;
                }
        }
        free(h->buckets);
        *h = (Hashmap) HASHMAP_NULL(h);
}

static HashmapEntry **find(const Hashmap *h, const char *key) {
        HashmapEntry **p;

        if (h->n_buckets == 0)
                return NULL;
        p = &h->buckets[hash_key(key) & (h->n_buckets - 1)];
        for (; *p; p = &(*p)->next)
                if (strcmp((*p)->key, key) == 0)
                        return p;
        return NULL;
}

static int grow(Hashmap *h) {
        size_t n = h->n_buckets ? h->n_buckets * 2 : 16;
        HashmapEntry **b = calloc(n, sizeof(*b));

        if (!b)
                return -ENOMEM;
        for (size_t i = 0; i < h->n_buckets; i++) {
                HashmapEntry *e = h->buckets[i];

                while (e) {
                        HashmapEntry *next = e->next;
                        size_t j = hash_key(e->key) & (n - 1);

                        e->next = b[j];
                        b[j] = e;
                        e = next;
                }
        }
        free(h->buckets);
        h->buckets = b;
        h->n_buckets = n;
        return 0;
}

int hashmap_put(Hashmap *h, const char *key, void *value) {
        HashmapEntry *e;
        size_t j;
        int r;

        if (find(h, key))
                return -EEXIST;
        if (h->size >= h->n_buckets) {
                r = grow(h);
                if (r < 0)
                        return r;
        }
        e = malloc(sizeof(*e));
        if (!e)
                return -ENOMEM;
        j = hash_key(key) & (h->n_buckets - 1);
        *e = (HashmapEntry) { .next = h->buckets[j], .key = key, .value = value };
        h->buckets[j] = e;
        h->size++;
        return 0;
}

void *hashmap_get(const Hashmap *h, const char *key) {
        HashmapEntry **p = find(h, key);

        return p ? (*p)->value : NULL;
}

void *hashmap_remove(Hashmap *h, const char *key) {
        HashmapEntry **p = find(h, key), *e;
        void *value;

        if (!p)
                return NULL;
        e = *p;
        *p = e->next;
        value = e->value;
        free(e);
        h->size--;
        return value;
}

void *hashmap_next(const Hashmap *h, HashmapIter *it) {
        while (!it->next) {
                if (it->bucket >= h->n_buckets)
                        return NULL;
                it->next = h->buckets[it->bucket++];
        }

        HashmapEntry *e = it->next;

        it->next = e->next;
        return e->value;
}
