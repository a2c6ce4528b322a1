/*
 * The SDK's merge of SandboxDefaults and per-sandbox arguments (cwsandbox 1.6
 * Sandbox.__init__ and _build_create_request), for the sessions the daemon
 * holds on behalf of its clients.
 *
 * A client attaches a session with defaults and creates sandboxes with
 * arguments; the backend must see exactly the CreateSandboxRequest the Python
 * SDK would have sent for the same Session(defaults).sandbox(**args). The rules
 * are uneven on purpose (some fields append, some merge per key, some replace
 * wholesale, one inherits even an unrelated default) and each is named where
 * it is applied below.
 *
 * Validation happens up front, before anything is allocated, so a bad input
 * gives MERGE_E_INVALID with a message and nothing to undo. The request is then
 * built with every string, array and sub-message on the heap, attached to its
 * parent as soon as it exists, so protobuf_c_message_free_unpacked() frees a
 * complete or a half-built request alike.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "merge.h"

const char *const merge_default_args[2] = {
        "-c",
        "trap \"exit 0\" TERM INT; sleep infinity & wait",
};

/* A map entry of either protocol, viewed as two strings. */
typedef struct KV {
        const char *key;
        const char *value;
} KV;

#define KV_FILL(kv, entries, n) do {                                            \
                for (size_t _i = 0; _i < (n); _i++)                             \
                        (kv)[_i] = (KV){ (entries)[_i]->key, (entries)[_i]->value }; \
        } while (0)

static bool empty(const char *s) {
        return !s || !s[0];
}

static const char *str_or(const char *s, const char *fallback) {
        return empty(s) ? fallback : s;
}

static bool str_eq(const char *a, const char *b) {
        return streq(a ? a : "", b ? b : "");
}

static int invalid(char **ret_error, const char *fmt, ...) _printf_(2, 3);

static int invalid(char **ret_error, const char *fmt, ...) {
        va_list ap;
        char *msg;
        int r;

        if (!ret_error)
                return MERGE_E_INVALID;

        va_start(ap, fmt);
        r = vasprintf(&msg, fmt, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;

        *ret_error = msg;
        return MERGE_E_INVALID;
}

/* ---- checks ------------------------------------------------------------- */

/*
 * protobuf-c does not check that strings are UTF-8, but the backend's decoder
 * does and would fail the whole create with an opaque parse error.
 */
static bool utf8_valid(const char *s) {
        const unsigned char *p = (const unsigned char *)(s ? s : "");

        while (*p) {
                uint32_t cp;
                unsigned n;

                if (*p < 0x80) {
                        p++;
                        continue;
                }
                if (*p >= 0xc2 && *p <= 0xdf) {
                        n = 1;
                        cp = *p & 0x1f;
                } else if (*p >= 0xe0 && *p <= 0xef) {
                        n = 2;
                        cp = *p & 0x0f;
                } else if (*p >= 0xf0 && *p <= 0xf4) {
                        n = 3;
                        cp = *p & 0x07;
                } else
                        return false;

                /* Stops at the terminating NUL, which is no continuation byte. */
                for (unsigned i = 1; i <= n; i++) {
                        if ((p[i] & 0xc0) != 0x80)
                                return false;
                        cp = (cp << 6) | (p[i] & 0x3f);
                }
                if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
                        return false;   /* overlong or out of range */
                if (cp >= 0xd800 && cp <= 0xdfff)
                        return false;   /* surrogate */
                p += n + 1;
        }
        return true;
}

static bool is_digit(char c) {
        return c >= '0' && c <= '9';
}

/*
 * A Kubernetes resource quantity, as the SDK's _quantity.py accepts: an
 * unsigned decimal number, then a binary suffix (Ki..Ei), a decimal suffix
 * (n, u, m, k, M..E) or a decimal exponent (e3, E-2). Negative quantities are
 * refused: no resource can be below zero.
 */
static bool quantity_valid(const char *s) {
        static const char *const suffixes[] = {
                "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
                "n", "u", "m", "k", "M", "G", "T", "P", "E",
        };
        const char *p = s;
        bool digits = false;

        if (*p == '+')
                p++;
        for (; is_digit(*p); p++)
                digits = true;
        if (*p == '.')
                for (p++; is_digit(*p); p++)
                        digits = true;
        if (!digits)
                return false;
        if (!*p)
                return true;

        for (size_t i = 0; i < ELEMENTSOF(suffixes); i++)
                if (streq(p, suffixes[i]))
                        return true;

        if (*p != 'e' && *p != 'E')
                return false;
        p++;
        if (*p == '+' || *p == '-')
                p++;
        if (!is_digit(*p))
                return false;
        while (is_digit(*p))
                p++;
        return !*p;
}

static int check_count(const char *what, size_t n, char **ret_error) {
        if (n > MERGE_LIST_MAX)
                return invalid(ret_error, "%s has %zu entries, more than %u", what, n, MERGE_LIST_MAX);
        return 0;
}

static int check_string(const char *what, const char *s, char **ret_error) {
        if (!utf8_valid(s))
                return invalid(ret_error, "%s is not valid UTF-8", what);
        return 0;
}

static int check_strv(const char *what, char *const *v, size_t n, bool allow_empty,
                      char **ret_error) {
        int r;

        r = check_count(what, n, ret_error);
        if (r != 0)
                return r;

        for (size_t i = 0; i < n; i++) {
                if (!allow_empty && empty(v[i]))
                        return invalid(ret_error, "%s[%zu] is empty", what, i);
                if (!utf8_valid(v[i]))
                        return invalid(ret_error, "%s[%zu] is not valid UTF-8", what, i);
        }
        return 0;
}

static int check_map(const char *what, const KV *kv, size_t n, bool is_env, char **ret_error) {
        for (size_t i = 0; i < n; i++) {
                if (empty(kv[i].key))
                        return invalid(ret_error, "%s has an empty key", what);
                if (!utf8_valid(kv[i].key) || !utf8_valid(kv[i].value))
                        return invalid(ret_error, "%s[%.64s] is not valid UTF-8", what, kv[i].key);
                if (is_env && strchr(kv[i].key, '='))
                        return invalid(ret_error, "%s key '%.64s' contains '='", what, kv[i].key);
        }
        return 0;
}

/* Map fields of either message type: count, view, check. */
#define CHECK_MAP(what, entries, n, is_env, ret_error) ({                       \
                int _r = check_count((what), (n), (ret_error));                 \
                if (_r == 0 && (n) > 0) {                                       \
                        KV *_kv = calloc((n), sizeof(KV));                      \
                        if (!_kv)                                               \
                                _r = -ENOMEM;                                   \
                        else {                                                  \
                                KV_FILL(_kv, (entries), (n));                   \
                                _r = check_map((what), _kv, (n), (is_env), (ret_error)); \
                                free(_kv);                                      \
                        }                                                       \
                }                                                               \
                _r;                                                             \
        })

static int check_resources(const char *what, const Cwsandboxd__V1__Resources *res,
                           char **ret_error) {
        if (!res)
                return 0;
        if (!empty(res->cpu) && !quantity_valid(res->cpu))
                return invalid(ret_error, "%s.cpu '%.64s' is not a quantity", what, res->cpu);
        if (!empty(res->memory) && !quantity_valid(res->memory))
                return invalid(ret_error, "%s.memory '%.64s' is not a quantity", what, res->memory);
        if (res->gpu_count < 0)
                return invalid(ret_error, "%s.gpu_count %lld is negative", what,
                               (long long)res->gpu_count);
        return check_string(what, res->gpu_type, ret_error);
}

static const char *secret_env_var(const Cwsandboxd__V1__Secret *s) {
        /* The SDK's Secret.env_var defaults to the secret's name. */
        return str_or(s->env_var, s->name);
}

static bool secret_same(const Cwsandboxd__V1__Secret *a, const Cwsandboxd__V1__Secret *b) {
        return str_eq(a->store, b->store) && str_eq(a->name, b->name) && str_eq(a->field, b->field);
}

static int check_secrets(const char *what, Cwsandboxd__V1__Secret *const *v, size_t n,
                         char **ret_error) {
        int r;

        r = check_count(what, n, ret_error);
        if (r != 0)
                return r;

        for (size_t i = 0; i < n; i++) {
                const Cwsandboxd__V1__Secret *s = v[i];

                if (!s || empty(s->store) || empty(s->name))
                        return invalid(ret_error, "%s[%zu] needs a store and a name", what, i);
                if (!utf8_valid(s->store) || !utf8_valid(s->name) ||
                    !utf8_valid(s->field) || !utf8_valid(s->env_var))
                        return invalid(ret_error, "%s[%zu] is not valid UTF-8", what, i);
        }
        return 0;
}

/*
 * Defaults first, then the call's, de-duplicated by env_var: an identical
 * duplicate collapses, two different secrets for one env_var are the SDK's
 * ValueError. *ret holds borrowed pointers.
 */
static int secrets_merge(Cwsandboxd__V1__Secret *const *a, size_t na,
                         Cwsandboxd__V1__Secret *const *b, size_t nb,
                         const Cwsandboxd__V1__Secret ***ret, size_t *ret_n, char **ret_error) {
        _cleanup_free_ const Cwsandboxd__V1__Secret **out = NULL;
        size_t n = 0;

        if (na + nb > 0) {
                out = calloc(na + nb, sizeof(*out));
                if (!out)
                        return -ENOMEM;
        }

        for (size_t i = 0; i < na + nb; i++) {
                const Cwsandboxd__V1__Secret *s = i < na ? a[i] : b[i - na];
                bool dup = false;

                for (size_t j = 0; j < n && !dup; j++) {
                        if (!streq(secret_env_var(out[j]), secret_env_var(s)))
                                continue;
                        if (!secret_same(out[j], s))
                                return invalid(ret_error, "Conflicting secrets for env_var %.128s",
                                               secret_env_var(s));
                        dup = true;
                }
                if (!dup)
                        out[n++] = s;
        }

        *ret = TAKE_PTR(out);
        *ret_n = n;
        return 0;
}

static int check_timeout(const char *what, double v, char **ret_error) {
        if (!isfinite(v) || v < 0 || v > MERGE_TIMEOUT_MAX_S)
                return invalid(ret_error, "%s %g must be finite, >= 0 and <= %g", what, v,
                               MERGE_TIMEOUT_MAX_S);
        return 0;
}

int merge_defaults_validate(const Cwsandboxd__V1__SandboxDefaults *d, char **ret_error) {
        _cleanup_free_ const Cwsandboxd__V1__Secret **secrets = NULL;
        size_t n_secrets;
        int r;

        if (!d)
                return 0;

        if ((r = check_string("defaults.container_image", d->container_image, ret_error)) != 0 ||
            (r = check_string("defaults.command", d->command, ret_error)) != 0 ||
            (r = check_strv("defaults.args", d->args, d->n_args, true, ret_error)) != 0 ||
            (r = check_strv("defaults.tags", d->tags, d->n_tags, false, ret_error)) != 0 ||
            (r = CHECK_MAP("defaults.environment_variables", d->environment_variables,
                           d->n_environment_variables, true, ret_error)) != 0 ||
            (r = CHECK_MAP("defaults.annotations", d->annotations, d->n_annotations, false,
                           ret_error)) != 0 ||
            (r = check_strv("defaults.runner_ids", d->runner_ids, d->n_runner_ids, false,
                            ret_error)) != 0 ||
            (r = check_resources("defaults.resources", d->resources, ret_error)) != 0 ||
            (r = check_secrets("defaults.secrets", d->secrets, d->n_secrets, ret_error)) != 0)
                return r;

        if (!d->has_args && d->n_args > 0)
                return invalid(ret_error, "defaults.args given without has_args");
        if (!d->has_runner_ids && d->n_runner_ids > 0)
                return invalid(ret_error, "defaults.runner_ids given without has_runner_ids");
        if (d->max_lifetime_seconds < 0)
                return invalid(ret_error, "defaults.max_lifetime_seconds %d is negative",
                               d->max_lifetime_seconds);

        /* 0 means unset for each (see merge_defaults_new()), so >= 0 here. */
        if ((r = check_timeout("defaults.request_timeout_seconds",
                               d->request_timeout_seconds, ret_error)) != 0 ||
            (r = check_timeout("defaults.poll_retry_budget_seconds",
                               d->poll_retry_budget_seconds, ret_error)) != 0 ||
            (r = check_timeout("defaults.poll_rpc_timeout_seconds",
                               d->poll_rpc_timeout_seconds, ret_error)) != 0)
                return r;

        /* A conflict inside the defaults would fail every create: refuse it now. */
        return secrets_merge(d->secrets, d->n_secrets, NULL, 0, &secrets, &n_secrets, ret_error);
}

int merge_args_validate(const Cwsandboxd__V1__SandboxArgs *a, char **ret_error) {
        int r;

        if (!a)
                return 0;

        if ((r = check_string("args.container_image", a->container_image, ret_error)) != 0 ||
            (r = check_string("args.command", a->command, ret_error)) != 0 ||
            (r = check_strv("args.args", a->args, a->n_args, true, ret_error)) != 0 ||
            (r = check_strv("args.tags", a->tags, a->n_tags, false, ret_error)) != 0 ||
            (r = CHECK_MAP("args.environment_variables", a->environment_variables,
                           a->n_environment_variables, true, ret_error)) != 0 ||
            (r = CHECK_MAP("args.annotations", a->annotations, a->n_annotations, false,
                           ret_error)) != 0 ||
            (r = check_strv("args.runner_ids", a->runner_ids, a->n_runner_ids, false,
                            ret_error)) != 0 ||
            (r = check_resources("args.resources", a->resources, ret_error)) != 0 ||
            (r = check_secrets("args.secrets", a->secrets, a->n_secrets, ret_error)) != 0 ||
            (r = check_count("args.mounted_files", a->n_mounted_files, ret_error)) != 0 ||
            (r = check_string("args.working_dir", a->working_dir, ret_error)) != 0)
                return r;

        if (!a->has_args && a->n_args > 0)
                return invalid(ret_error, "args.args given without has_args");
        if (!a->has_runner_ids && a->n_runner_ids > 0)
                return invalid(ret_error, "args.runner_ids given without has_runner_ids");
        if (!a->has_resources && a->resources)
                return invalid(ret_error, "args.resources given without has_resources");
        if (!empty(a->working_dir) && a->working_dir[0] != '/')
                return invalid(ret_error, "args.working_dir '%.128s' is not an absolute path",
                               a->working_dir);

        for (size_t i = 0; i < a->n_mounted_files; i++) {
                const Cwsandboxd__V1__MountedFile *f = a->mounted_files[i];

                if (!f || empty(f->path) || f->path[0] != '/')
                        return invalid(ret_error, "args.mounted_files[%zu] needs an absolute path", i);
                if (!utf8_valid(f->path))
                        return invalid(ret_error, "args.mounted_files[%zu].path is not valid UTF-8", i);
        }
        return 0;
}

/* ---- defaults copy ------------------------------------------------------ */

static int fill_string(char **field, const char *value) {
        char *s;

        if (!empty(*field))
                return 0;

        s = strdup(value);
        if (!s)
                return -ENOMEM;
        /* An explicit "" on the wire was allocated; the default pointer was not. */
        if (*field && *field != protobuf_c_empty_string)
                free(*field);
        *field = s;
        return 0;
}

static int fill_defaults(Cwsandboxd__V1__SandboxDefaults *d) {
        int r;

        r = fill_string(&d->container_image, MERGE_DEFAULT_IMAGE);
        if (r < 0)
                return r;
        r = fill_string(&d->command, MERGE_DEFAULT_COMMAND);
        if (r < 0)
                return r;

        if (!d->has_args) {
                /* Validated: no args without has_args, so nothing to free. */
                d->args = calloc(ELEMENTSOF(merge_default_args), sizeof(char *));
                if (!d->args)
                        return -ENOMEM;
                for (size_t i = 0; i < ELEMENTSOF(merge_default_args); i++) {
                        d->args[i] = strdup(merge_default_args[i]);
                        if (!d->args[i])
                                return -ENOMEM;
                        d->n_args++;
                }
                d->has_args = true;
        }

        if (d->request_timeout_seconds == 0)
                d->request_timeout_seconds = MERGE_DEFAULT_REQUEST_TIMEOUT_S;
        if (d->poll_retry_budget_seconds == 0)
                d->poll_retry_budget_seconds = MERGE_DEFAULT_POLL_RETRY_BUDGET_S;
        if (d->poll_rpc_timeout_seconds == 0)
                d->poll_rpc_timeout_seconds = MERGE_DEFAULT_POLL_RPC_TIMEOUT_S;
        return 0;
}

static void *msg_new(const ProtobufCMessageDescriptor *desc) {
        void *m = malloc(desc->sizeof_message);

        if (m)
                protobuf_c_message_init(desc, m);
        return m;
}

/* A deep copy that protobuf_c_message_free_unpacked() can free. */
static int defaults_copy(const Cwsandboxd__V1__SandboxDefaults *in,
                         Cwsandboxd__V1__SandboxDefaults **ret) {
        _cleanup_free_ uint8_t *buf = NULL;
        size_t size;

        if (!in) {
                *ret = msg_new(&cwsandboxd__v1__sandbox_defaults__descriptor);
                return *ret ? 0 : -ENOMEM;
        }

        size = protobuf_c_message_get_packed_size(&in->base);
        buf = malloc(size ? size : 1);
        if (!buf)
                return -ENOMEM;
        protobuf_c_message_pack(&in->base, buf);

        /* What we just packed always parses; NULL can only be out of memory. */
        *ret = cwsandboxd__v1__sandbox_defaults__unpack(/* allocator= */ NULL, size, buf);
        return *ret ? 0 : -ENOMEM;
}

Cwsandboxd__V1__SandboxDefaults *merge_defaults_free(Cwsandboxd__V1__SandboxDefaults *d) {
        if (d)
                protobuf_c_message_free_unpacked(&d->base, /* allocator= */ NULL);
        return NULL;
}

static void merge_defaults_freep(Cwsandboxd__V1__SandboxDefaults **d) {
        merge_defaults_free(*d);
}

int merge_defaults_new(const Cwsandboxd__V1__SandboxDefaults *in,
                       Cwsandboxd__V1__SandboxDefaults **ret, char **ret_error) {
        _cleanup_(merge_defaults_freep) Cwsandboxd__V1__SandboxDefaults *d = NULL;
        int r;

        r = merge_defaults_validate(in, ret_error);
        if (r != 0)
                return r;

        r = defaults_copy(in, &d);
        if (r < 0)
                return r;

        r = fill_defaults(d);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(d);
        return 0;
}

/* ---- request building ---------------------------------------------------- */

/*
 * Every helper below attaches what it allocates to the message before filling
 * it, so a failure part-way leaves a tree protobuf_c_message_free_unpacked()
 * frees completely.
 */

static int strv_new(char ***field, size_t *n_field, size_t capacity) {
        *n_field = 0;
        *field = NULL;
        if (capacity == 0)
                return 0;
        *field = calloc(capacity, sizeof(char *));
        return *field ? 0 : -ENOMEM;
}

static int strv_push(char **v, size_t *n, const char *s) {
        v[*n] = strdup(s ? s : "");
        if (!v[*n])
                return -ENOMEM;
        (*n)++;
        return 0;
}

static bool strv_contains(char *const *v, size_t n, const char *s) {
        for (size_t i = 0; i < n; i++)
                if (streq(v[i], s))
                        return true;
        return false;
}

static int strv_copy(char ***field, size_t *n_field, char *const *src, size_t n) {
        int r;

        r = strv_new(field, n_field, n);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                r = strv_push(*field, n_field, src[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int set_string(char **field, const char *s) {
        /* Empty stays the default pointer: nothing to send, nothing to free. */
        if (empty(s))
                return 0;
        *field = strdup(s);
        return *field ? 0 : -ENOMEM;
}

/*
 * Per key, the later entry wins: the call's over the defaults', and within one
 * list the last (protobuf map semantics). Keys keep their first position.
 */
static int kv_merge(const KV *a, size_t na, const KV *b, size_t nb, KV **ret, size_t *ret_n) {
        _cleanup_free_ KV *out = NULL;
        size_t n = 0;

        if (na + nb > 0) {
                out = calloc(na + nb, sizeof(KV));
                if (!out)
                        return -ENOMEM;
        }

        for (size_t i = 0; i < na + nb; i++) {
                const KV *kv = i < na ? &a[i] : &b[i - na];
                size_t j;

                for (j = 0; j < n; j++)
                        if (streq(out[j].key, kv->key))
                                break;
                if (j < n)
                        out[j].value = kv->value;
                else
                        out[n++] = *kv;
        }

        *ret = TAKE_PTR(out);
        *ret_n = n;
        return 0;
}

/* Merge a map field of the defaults with the same field of the call. */
#define KV_MERGE(d_entries, d_n, a_entries, a_n, ret, ret_n) ({                 \
                _cleanup_free_ KV *_a = calloc((d_n) + 1, sizeof(KV));          \
                _cleanup_free_ KV *_b = calloc((a_n) + 1, sizeof(KV));          \
                int _r = -ENOMEM;                                               \
                if (_a && _b) {                                                 \
                        KV_FILL(_a, (d_entries), (d_n));                        \
                        KV_FILL(_b, (a_entries), (a_n));                        \
                        _r = kv_merge(_a, (d_n), _b, (a_n), (ret), (ret_n));    \
                }                                                               \
                _r;                                                             \
        })

/*
 * Every protobuf-c map entry of string to string has this layout: the
 * generated ...EnvironmentVariablesEntry and ...AnnotationsEntry alike.
 */
typedef struct MapEntry {
        ProtobufCMessage base;
        char *key;
        char *value;
} MapEntry;

/*
 * Fill a map field (@ret_entries, @ret_n) with @n entries of type @desc.
 * Entries made before a failure stay in the field, so the caller's free of
 * the whole request frees them.
 */
static int map_set(const ProtobufCMessageDescriptor *desc, const KV *kv, size_t n,
                   void ***ret_entries, size_t *ret_n) {
        MapEntry **v;

        if (n == 0)
                return 0;
        v = calloc(n, sizeof(*v));
        if (!v)
                return -ENOMEM;
        *ret_entries = (void **)v;
        for (size_t i = 0; i < n; i++) {
                MapEntry *e = msg_new(desc);

                if (!e)
                        return -ENOMEM;
                v[(*ret_n)++] = e;
                e->key = strdup(kv[i].key);
                e->value = strdup(kv[i].value ? kv[i].value : "");
                if (!e->key || !e->value)
                        return -ENOMEM;
        }
        return 0;
}

static int container_set_env(Coreweave__Sandbox__V1__Container *c, const KV *kv, size_t n) {
        return map_set(&coreweave__sandbox__v1__container__environment_variables_entry__descriptor, kv, n,
                       (void ***)&c->environment_variables, &c->n_environment_variables);
}

static int spec_set_annotations(Coreweave__Sandbox__V1__SandboxSpec *spec, const KV *kv, size_t n) {
        /* Empty annotations are not sent (the SDK's test_sandbox.py): map_set() sends nothing for none. */
        return map_set(&coreweave__sandbox__v1__sandbox_spec__annotations_entry__descriptor, kv, n,
                       (void ***)&spec->annotations, &spec->n_annotations);
}

static int container_set_env_merged(Coreweave__Sandbox__V1__Container *c,
                                    const Cwsandboxd__V1__SandboxDefaults *d,
                                    const Cwsandboxd__V1__SandboxArgs *a) {
        _cleanup_free_ KV *kv = NULL;
        size_t n;
        int r;

        r = KV_MERGE(d->environment_variables, d->n_environment_variables,
                     a->environment_variables, a->n_environment_variables, &kv, &n);
        if (r < 0)
                return r;
        return container_set_env(c, kv, n);
}

static int spec_set_annotations_merged(Coreweave__Sandbox__V1__SandboxSpec *spec,
                                       const Cwsandboxd__V1__SandboxDefaults *d,
                                       const Cwsandboxd__V1__SandboxArgs *a) {
        _cleanup_free_ KV *kv = NULL;
        size_t n;
        int r;

        r = KV_MERGE(d->annotations, d->n_annotations, a->annotations, a->n_annotations, &kv, &n);
        if (r < 0)
                return r;
        return spec_set_annotations(spec, kv, n);
}

static int container_set_command(Coreweave__Sandbox__V1__Container *c,
                                 const Cwsandboxd__V1__SandboxDefaults *d,
                                 const Cwsandboxd__V1__SandboxArgs *a) {
        int r;

        /* `image or defaults.container_image`: an empty string falls back. */
        r = set_string(&c->image, str_or(a->container_image,
                                         str_or(d->container_image, MERGE_DEFAULT_IMAGE)));
        if (r < 0)
                return r;

        /* `command or defaults.command`: likewise. */
        r = set_string(&c->command, str_or(a->command, str_or(d->command, MERGE_DEFAULT_COMMAND)));
        if (r < 0)
                return r;

        /*
         * `args if args is not None else list(defaults.args)`. The SDK quirk,
         * kept on purpose: args are chosen independently of the command, so a
         * call that names a command but no args (Sandbox.run("python")) runs
         * that command with the keep-alive ["-c", "trap ..."] args.
         */
        if (a->has_args)
                return strv_copy(&c->args, &c->n_args, a->args, a->n_args);
        if (d->has_args)
                return strv_copy(&c->args, &c->n_args, d->args, d->n_args);
        return strv_copy(&c->args, &c->n_args, (char *const *)merge_default_args,
                         ELEMENTSOF(merge_default_args));
}

static bool resources_effective(const Cwsandboxd__V1__Resources *res) {
        return res && (!empty(res->cpu) || !empty(res->memory) ||
                       res->gpu_count > 0 || !empty(res->gpu_type));
}

static int resources_new(const Cwsandboxd__V1__Resources *src,
                         Coreweave__Sandbox__V1__Resources **field) {
        Coreweave__Sandbox__V1__Resources *res;
        Coreweave__Sandbox__V1__Gpu *gpu;
        int r;

        res = *field = msg_new(&coreweave__sandbox__v1__resources__descriptor);
        if (!res)
                return -ENOMEM;
        r = set_string(&res->cpu, src->cpu);
        if (r < 0)
                return r;
        r = set_string(&res->memory, src->memory);
        if (r < 0)
                return r;

        if (src->gpu_count <= 0 && empty(src->gpu_type))
                return 0;

        gpu = res->gpu = msg_new(&coreweave__sandbox__v1__gpu__descriptor);
        if (!gpu)
                return -ENOMEM;
        gpu->count = src->gpu_count;
        if (!empty(src->gpu_type)) {
                gpu->selector_case = COREWEAVE__SANDBOX__V1__GPU__SELECTOR_TYPE;
                gpu->type = strdup(src->gpu_type);
                if (!gpu->type)
                        return -ENOMEM;
        }
        return 0;
}

static int container_set_resources(Coreweave__Sandbox__V1__Container *c,
                                   const Cwsandboxd__V1__SandboxDefaults *d,
                                   const Cwsandboxd__V1__SandboxArgs *a) {
        const Cwsandboxd__V1__Resources *src;
        Coreweave__Sandbox__V1__ResourceRequirements *rr;
        int r;

        /* An explicit value replaces the default wholesale; no field merge. */
        src = a->has_resources ? a->resources : d->resources;
        if (!resources_effective(src))
                return 0;

        rr = c->resource_requirements =
                msg_new(&coreweave__sandbox__v1__resource_requirements__descriptor);
        if (!rr)
                return -ENOMEM;

        /* A flat cpu/memory/gpu means requests == limits (Guaranteed QoS), GPU in both. */
        r = resources_new(src, &rr->requests);
        if (r < 0)
                return r;
        return resources_new(src, &rr->limits);
}

static Coreweave__Sandbox__V1__SecretStoreReference *
find_store(Coreweave__Sandbox__V1__Container *c, const char *store) {
        for (size_t i = 0; i < c->n_secret_stores; i++)
                if (streq(c->secret_stores[i]->store_name, store))
                        return c->secret_stores[i];
        return NULL;
}

static int store_add(Coreweave__Sandbox__V1__SecretStoreReference *ref,
                     const Cwsandboxd__V1__Secret *s, size_t capacity) {
        Coreweave__Sandbox__V1__SecretMapping *m;

        if (!ref->secrets) {
                ref->secrets = calloc(capacity, sizeof(*ref->secrets));
                if (!ref->secrets)
                        return -ENOMEM;
        }

        m = msg_new(&coreweave__sandbox__v1__secret_mapping__descriptor);
        if (!m)
                return -ENOMEM;
        ref->secrets[ref->n_secrets++] = m;

        m->path = strdup(s->name);
        m->env_var = strdup(secret_env_var(s));
        if (!m->path || !m->env_var)
                return -ENOMEM;
        return set_string(&m->field, s->field);
}

/* One SecretStoreReference per distinct store, in order of first use. */
static int container_set_secrets(Coreweave__Sandbox__V1__Container *c,
                                 const Cwsandboxd__V1__Secret *const *v, size_t n) {
        if (n == 0)
                return 0;
        c->secret_stores = calloc(n, sizeof(*c->secret_stores));
        if (!c->secret_stores)
                return -ENOMEM;

        for (size_t i = 0; i < n; i++) {
                Coreweave__Sandbox__V1__SecretStoreReference *ref = find_store(c, v[i]->store);
                int r;

                if (!ref) {
                        ref = msg_new(&coreweave__sandbox__v1__secret_store_reference__descriptor);
                        if (!ref)
                                return -ENOMEM;
                        c->secret_stores[c->n_secret_stores++] = ref;
                        ref->store_name = strdup(v[i]->store);
                        if (!ref->store_name)
                                return -ENOMEM;
                }

                r = store_add(ref, v[i], n);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int container_set_files(Coreweave__Sandbox__V1__Container *c,
                               const Cwsandboxd__V1__SandboxArgs *a) {
        if (a->n_mounted_files == 0)
                return 0;
        c->files = calloc(a->n_mounted_files, sizeof(*c->files));
        if (!c->files)
                return -ENOMEM;

        for (size_t i = 0; i < a->n_mounted_files; i++) {
                const Cwsandboxd__V1__MountedFile *src = a->mounted_files[i];
                Coreweave__Sandbox__V1__FileMount *f;

                f = msg_new(&coreweave__sandbox__v1__file_mount__descriptor);
                if (!f)
                        return -ENOMEM;
                c->files[c->n_files++] = f;

                f->path = strdup(src->path);
                if (!f->path)
                        return -ENOMEM;
                if (src->content.len > 0) {
                        f->content.data = malloc(src->content.len);
                        if (!f->content.data)
                                return -ENOMEM;
                        memcpy(f->content.data, src->content.data, src->content.len);
                        f->content.len = src->content.len;
                }
        }
        return 0;
}

static int spec_set_tags(Coreweave__Sandbox__V1__SandboxSpec *spec,
                         const Cwsandboxd__V1__SandboxDefaults *d,
                         const Cwsandboxd__V1__SandboxArgs *a,
                         const char *const *daemon_tags, size_t n_daemon_tags) {
        int r;

        r = strv_new(&spec->tags, &spec->n_tags, d->n_tags + a->n_tags + n_daemon_tags);
        if (r < 0)
                return r;

        /* The SDK's merge_tags(): defaults, then the call's, duplicates kept. */
        for (size_t i = 0; i < d->n_tags + a->n_tags; i++) {
                r = strv_push(spec->tags, &spec->n_tags,
                              i < d->n_tags ? d->tags[i] : a->tags[i - d->n_tags]);
                if (r < 0)
                        return r;
        }

        /* The daemon's own tags find the sandbox again; one copy is enough. */
        for (size_t i = 0; i < n_daemon_tags; i++) {
                if (empty(daemon_tags[i]) || strv_contains(spec->tags, spec->n_tags, daemon_tags[i]))
                        continue;
                r = strv_push(spec->tags, &spec->n_tags, daemon_tags[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int spec_set_placement(Coreweave__Sandbox__V1__SandboxSpec *spec,
                              const Cwsandboxd__V1__SandboxDefaults *d,
                              const Cwsandboxd__V1__SandboxArgs *a) {
        char *const *ids = NULL;
        size_t n = 0;
        int r;

        /*
         * _resolve_selector(): an explicit list wins even when empty (it clears
         * the default); otherwise a non-empty default is inherited.
         */
        if (a->has_runner_ids) {
                ids = a->runner_ids;
                n = a->n_runner_ids;
        } else if (d->n_runner_ids > 0) {
                ids = d->runner_ids;
                n = d->n_runner_ids;
        }

        r = strv_copy(&spec->runner_ids, &spec->n_runner_ids, ids, n);
        if (r < 0)
                return r;

        /* runner_ids with an unspecified placement mode force CKS. */
        if (n > 0)
                spec->mode = COREWEAVE__SANDBOX__V1__SANDBOX_MODE__SANDBOX_MODE_CKS;
        return 0;
}

static int spec_set_network(Coreweave__Sandbox__V1__SandboxSpec *spec,
                            const Cwsandboxd__V1__SandboxDefaults *d) {
        if (!d->deny_egress)
                return 0;

        spec->network = msg_new(&coreweave__sandbox__v1__network_options__descriptor);
        if (!spec->network)
                return -ENOMEM;
        spec->network->_deny_egress_case = COREWEAVE__SANDBOX__V1__NETWORK_OPTIONS___DENY_EGRESS_DENY_EGRESS;
        spec->network->deny_egress = true;
        return 0;
}

static int build_container(Coreweave__Sandbox__V1__SandboxSpec *spec,
                           const Cwsandboxd__V1__SandboxDefaults *d,
                           const Cwsandboxd__V1__SandboxArgs *a,
                           const Cwsandboxd__V1__Secret *const *secrets, size_t n_secrets) {
        Coreweave__Sandbox__V1__Container *c;
        int r;

        spec->containers = calloc(1, sizeof(*spec->containers));
        if (!spec->containers)
                return -ENOMEM;
        c = msg_new(&coreweave__sandbox__v1__container__descriptor);
        if (!c)
                return -ENOMEM;
        spec->containers[spec->n_containers++] = c;

        if ((r = set_string(&c->name, MERGE_CONTAINER_NAME)) < 0 ||
            (r = container_set_command(c, d, a)) < 0 ||
            (r = container_set_env_merged(c, d, a)) < 0 ||
            (r = container_set_resources(c, d, a)) < 0 ||
            (r = container_set_secrets(c, secrets, n_secrets)) < 0 ||
            (r = container_set_files(c, a)) < 0 ||
            (r = set_string(&c->working_dir, a->working_dir)) < 0)
                return r;
        return 0;
}

static int build_spec(Coreweave__Sandbox__V1__Sandbox *sandbox,
                      const Cwsandboxd__V1__SandboxDefaults *d,
                      const Cwsandboxd__V1__SandboxArgs *a,
                      const Cwsandboxd__V1__Secret *const *secrets, size_t n_secrets,
                      const char *const *daemon_tags, size_t n_daemon_tags) {
        Coreweave__Sandbox__V1__SandboxSpec *spec;
        int r;

        spec = sandbox->spec = msg_new(&coreweave__sandbox__v1__sandbox_spec__descriptor);
        if (!spec)
                return -ENOMEM;

        if ((r = build_container(spec, d, a, secrets, n_secrets)) < 0 ||
            (r = set_string(&spec->primary_container, MERGE_CONTAINER_NAME)) < 0 ||
            (r = spec_set_tags(spec, d, a, daemon_tags, n_daemon_tags)) < 0 ||
            (r = spec_set_annotations_merged(spec, d, a)) < 0 ||
            (r = spec_set_placement(spec, d, a)) < 0 ||
            (r = spec_set_network(spec, d)) < 0)
                return r;

        /* Sent only when set; otherwise the backend's default lifetime applies. */
        if (d->max_lifetime_seconds > 0)
                spec->max_lifetime_seconds = d->max_lifetime_seconds;
        return 0;
}

Coreweave__Sandbox__V1__CreateSandboxRequest *
merge_create_request_free(Coreweave__Sandbox__V1__CreateSandboxRequest *req) {
        if (req)
                protobuf_c_message_free_unpacked(&req->base, /* allocator= */ NULL);
        return NULL;
}

static void merge_create_request_freep(Coreweave__Sandbox__V1__CreateSandboxRequest **req) {
        merge_create_request_free(*req);
}

int merge_build_create_request(const Cwsandboxd__V1__SandboxDefaults *defaults,
                               const Cwsandboxd__V1__SandboxArgs *args,
                               const char *const *daemon_tags, size_t n_daemon_tags,
                               const char *request_id,
                               Coreweave__Sandbox__V1__CreateSandboxRequest **ret,
                               char **ret_error) {
        static const Cwsandboxd__V1__SandboxDefaults no_defaults = CWSANDBOXD__V1__SANDBOX_DEFAULTS__INIT;
        static const Cwsandboxd__V1__SandboxArgs no_args = CWSANDBOXD__V1__SANDBOX_ARGS__INIT;
        _cleanup_(merge_create_request_freep) Coreweave__Sandbox__V1__CreateSandboxRequest *req = NULL;
        _cleanup_free_ const Cwsandboxd__V1__Secret **secrets = NULL;
        const Cwsandboxd__V1__SandboxDefaults *d = defaults ?: &no_defaults;
        const Cwsandboxd__V1__SandboxArgs *a = args ?: &no_args;
        size_t n_secrets;
        int r;

        if (empty(request_id) || (n_daemon_tags > 0 && !daemon_tags))
                return -EINVAL;

        r = merge_defaults_validate(d, ret_error);
        if (r != 0)
                return r;
        r = merge_args_validate(a, ret_error);
        if (r != 0)
                return r;
        r = secrets_merge(d->secrets, d->n_secrets, a->secrets, a->n_secrets,
                          &secrets, &n_secrets, ret_error);
        if (r != 0)
                return r;

        req = msg_new(&coreweave__sandbox__v1__create_sandbox_request__descriptor);
        if (!req)
                return -ENOMEM;
        r = set_string(&req->request_id, request_id);
        if (r < 0)
                return r;
        req->sandbox = msg_new(&coreweave__sandbox__v1__sandbox__descriptor);
        if (!req->sandbox)
                return -ENOMEM;

        r = build_spec(req->sandbox, d, a, secrets, n_secrets, daemon_tags, n_daemon_tags);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(req);
        return 0;
}
