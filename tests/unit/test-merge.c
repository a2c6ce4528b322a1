/*
 * Unit test of merge.c: the SDK's rules for SandboxDefaults vs per-sandbox
 * arguments, table-driven (defaults + args -> the CreateSandboxRequest
 * fields), plus validation, the filled defaults copy, a wire round trip and
 * out-of-memory at every allocation. Prints TAP.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "tap.h"
#include "merge.h"


#define check_eq_u(got, want, what) do {                                        \
                unsigned long long _g = (got), _w = (want);                     \
                ok(_g == _w, "%s: got %llu, want %llu", (what), _g, _w);        \
        } while (0)

#define check_eq_s(got, want, what) do {                                        \
                const char *_g = (got), *_w = (want);                           \
                ok(streq(_g ? _g : "(null)", _w ? _w : "(null)"),               \
                   "%s: got \"%s\", want \"%s\"", (what), _g ? _g : "(null)",   \
                   _w ? _w : "(null)");                                         \
        } while (0)

/* ---- out-of-memory injection ---------------------------------------------- */

/*
 * Replace the allocator (glibc allows it) so a test can make the n-th
 * allocation fail and count what is still live afterwards. Not under a
 * sanitizer, which brings its own allocator.
 */
#if defined(__SANITIZE_ADDRESS__)
#  define HAVE_OOM_INJECTION 0
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define HAVE_OOM_INJECTION 0
#  endif
#endif
#ifndef HAVE_OOM_INJECTION
#  define HAVE_OOM_INJECTION 1
#endif

#if HAVE_OOM_INJECTION
extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void __libc_free(void *p);

static long oom_countdown = -1;         /* allocations left before failing; -1 = never */
static bool oom_hit;
static long live_allocations;

static bool oom_fail(void) {
        if (oom_countdown < 0)
                return false;
        if (oom_countdown == 0) {
                oom_hit = true;
                return true;
        }
        oom_countdown--;
        return false;
}

void *malloc(size_t size) {
        void *p = oom_fail() ? NULL : __libc_malloc(size);

        if (p)
                live_allocations++;
        return p;
}

void *calloc(size_t n, size_t size) {
        void *p = oom_fail() ? NULL : __libc_calloc(n, size);

        if (p)
                live_allocations++;
        return p;
}

void *realloc(void *old, size_t size) {
        void *p;

        if (oom_fail())
                return NULL;
        p = __libc_realloc(old, size);
        if (p && !old)
                live_allocations++;
        return p;
}

void free(void *p) {
        if (p)
                live_allocations--;
        __libc_free(p);
}
#endif

/* ---- building inputs ------------------------------------------------------- */

typedef struct SecretSpec {
        const char *store, *name, *field, *env_var;
} SecretSpec;

/* One side of a case: the session's defaults or the call's arguments. */
typedef struct Input {
        const char *image, *command;
        bool has_args;
        const char *args[4];
        const char *tags[5];
        const char *env[9];             /* key, value, ..., NULL */
        const char *annotations[9];
        bool has_runner_ids;
        const char *runner_ids[4];
        bool resources;                 /* a Resources message is present */
        bool has_resources;             /* args only */
        const char *cpu, *memory;
        int64_t gpu_count;
        const char *gpu_type;
        SecretSpec secrets[4];          /* until store and name are both NULL */
        int32_t max_lifetime;           /* defaults only */
        bool deny_egress;               /* defaults only */
        double request_timeout, budget, rpc_timeout;    /* defaults only */
        const char *files[5];           /* args only: path, content, ..., NULL */
        const char *working_dir;        /* args only */
} Input;

static void *xmalloc(size_t size) {
        void *p = malloc(size ? size : 1);

        if (!p)
                abort();
        return p;
}

static char *xstrdup(const char *s) {
        char *p = strdup(s);

        if (!p)
                abort();
        return p;
}

static void *xmsg(const ProtobufCMessageDescriptor *desc) {
        void *m = xmalloc(desc->sizeof_message);

        protobuf_c_message_init(desc, m);
        return m;
}

static size_t count(const char *const *v) {
        size_t n = 0;

        while (v[n])
                n++;
        return n;
}

static char **xstrv(const char *const *v, size_t *ret_n) {
        size_t n = count(v);
        char **out = n ? xmalloc(n * sizeof(char *)) : NULL;

        for (size_t i = 0; i < n; i++)
                out[i] = xstrdup(v[i]);
        *ret_n = n;
        return out;
}

static Cwsandboxd__V1__Resources *xresources(const Input *in) {
        Cwsandboxd__V1__Resources *r;

        if (!in->resources)
                return NULL;
        r = xmsg(&cwsandboxd__v1__resources__descriptor);
        if (in->cpu)
                r->cpu = xstrdup(in->cpu);
        if (in->memory)
                r->memory = xstrdup(in->memory);
        if (in->gpu_type)
                r->gpu_type = xstrdup(in->gpu_type);
        r->gpu_count = in->gpu_count;
        return r;
}

static Cwsandboxd__V1__Secret **xsecrets(const Input *in, size_t *ret_n) {
        Cwsandboxd__V1__Secret **v;
        size_t n = 0;

        while (in->secrets[n].store || in->secrets[n].name)
                n++;
        v = n ? xmalloc(n * sizeof(*v)) : NULL;
        for (size_t i = 0; i < n; i++) {
                const SecretSpec *s = &in->secrets[i];

                v[i] = xmsg(&cwsandboxd__v1__secret__descriptor);
                if (s->store)
                        v[i]->store = xstrdup(s->store);
                if (s->name)
                        v[i]->name = xstrdup(s->name);
                if (s->field)
                        v[i]->field = xstrdup(s->field);
                if (s->env_var)
                        v[i]->env_var = xstrdup(s->env_var);
        }
        *ret_n = n;
        return v;
}

/* Map entries of either message: key and value at the same place in both. */
#define XMAP(entries, n_entries, descriptor, kv) do {                           \
                size_t _n = count(kv) / 2;                                      \
                (n_entries) = _n;                                               \
                (entries) = _n ? xmalloc(_n * sizeof(*(entries))) : NULL;       \
                for (size_t _i = 0; _i < _n; _i++) {                            \
                        (entries)[_i] = xmsg(&(descriptor));                    \
                        (entries)[_i]->key = xstrdup((kv)[2 * _i]);             \
                        (entries)[_i]->value = xstrdup((kv)[2 * _i + 1]);       \
                }                                                               \
        } while (0)

static Cwsandboxd__V1__SandboxDefaults *make_defaults(const Input *in) {
        Cwsandboxd__V1__SandboxDefaults *d = xmsg(&cwsandboxd__v1__sandbox_defaults__descriptor);

        if (in->image)
                d->container_image = xstrdup(in->image);
        if (in->command)
                d->command = xstrdup(in->command);
        d->has_args = in->has_args;
        d->args = xstrv(in->args, &d->n_args);
        d->tags = xstrv(in->tags, &d->n_tags);
        XMAP(d->environment_variables, d->n_environment_variables,
             cwsandboxd__v1__sandbox_defaults__environment_variables_entry__descriptor, in->env);
        XMAP(d->annotations, d->n_annotations,
             cwsandboxd__v1__sandbox_defaults__annotations_entry__descriptor, in->annotations);
        d->has_runner_ids = in->has_runner_ids;
        d->runner_ids = xstrv(in->runner_ids, &d->n_runner_ids);
        d->resources = xresources(in);
        d->secrets = xsecrets(in, &d->n_secrets);
        d->max_lifetime_seconds = in->max_lifetime;
        d->deny_egress = in->deny_egress;
        d->request_timeout_seconds = in->request_timeout;
        d->poll_retry_budget_seconds = in->budget;
        d->poll_rpc_timeout_seconds = in->rpc_timeout;
        return d;
}

static Cwsandboxd__V1__SandboxArgs *make_args(const Input *in) {
        Cwsandboxd__V1__SandboxArgs *a = xmsg(&cwsandboxd__v1__sandbox_args__descriptor);
        size_t n_files = count(in->files) / 2;

        if (in->image)
                a->container_image = xstrdup(in->image);
        if (in->command)
                a->command = xstrdup(in->command);
        a->has_args = in->has_args;
        a->args = xstrv(in->args, &a->n_args);
        a->tags = xstrv(in->tags, &a->n_tags);
        XMAP(a->environment_variables, a->n_environment_variables,
             cwsandboxd__v1__sandbox_args__environment_variables_entry__descriptor, in->env);
        XMAP(a->annotations, a->n_annotations,
             cwsandboxd__v1__sandbox_args__annotations_entry__descriptor, in->annotations);
        a->has_runner_ids = in->has_runner_ids;
        a->runner_ids = xstrv(in->runner_ids, &a->n_runner_ids);
        a->resources = xresources(in);
        a->has_resources = in->has_resources;
        a->secrets = xsecrets(in, &a->n_secrets);

        a->n_mounted_files = n_files;
        a->mounted_files = n_files ? xmalloc(n_files * sizeof(*a->mounted_files)) : NULL;
        for (size_t i = 0; i < n_files; i++) {
                Cwsandboxd__V1__MountedFile *f = xmsg(&cwsandboxd__v1__mounted_file__descriptor);

                f->path = xstrdup(in->files[2 * i]);
                f->content.len = strlen(in->files[2 * i + 1]);
                f->content.data = f->content.len ? (uint8_t *)xstrdup(in->files[2 * i + 1]) : NULL;
                a->mounted_files[i] = f;
        }
        if (in->working_dir)
                a->working_dir = xstrdup(in->working_dir);
        return a;
}

static void free_msg(void *m) {
        if (m)
                protobuf_c_message_free_unpacked(m, NULL);
}

/* ---- the table -------------------------------------------------------------- */

typedef struct Want {
        int rc;
        const char *error;              /* expected message, when rc != 0 */
        const char *image, *command;
        const char *args[4];
        const char *tags[8];
        const char *env[11];            /* key, value, ... in request order */
        const char *annotations[11];
        const char *runner_ids[4];
        bool cks;
        bool resources;
        const char *cpu, *memory;
        int64_t gpu_count;
        const char *gpu_type;
        const char *secrets[6];         /* "store/path/field/env_var" in request order */
        int32_t max_lifetime;
        bool deny_egress;
        const char *files[5];           /* path, content, ... */
        const char *working_dir;
} Want;

typedef struct Case {
        const char *name;
        Input d, a;
        const char *daemon_tags[5];
        Want w;
} Case;

#define KEEPALIVE "-c", "trap \"exit 0\" TERM INT; sleep infinity & wait"
#define SDK_DEFAULTS .image = "python:3.11", .command = "/bin/sh", .args = { KEEPALIVE }

static const Case cases[] = {
        {
                .name = "all SDK defaults",
                .w = { SDK_DEFAULTS },
        },
        {
                .name = "defaults' image, command and args",
                .d = { .image = "ubuntu:22.04", .command = "/usr/bin/env", .has_args = true,
                       .args = { "bash", "-l" } },
                .w = { .image = "ubuntu:22.04", .command = "/usr/bin/env", .args = { "bash", "-l" } },
        },
        {
                .name = "call's image, command and args win",
                .d = { .image = "ubuntu:22.04", .command = "/usr/bin/env", .has_args = true,
                       .args = { "bash", "-l" } },
                .a = { .image = "alpine:3", .command = "python", .has_args = true,
                       .args = { "app.py" } },
                .w = { .image = "alpine:3", .command = "python", .args = { "app.py" } },
        },
        {
                .name = "empty call strings fall back to the defaults",
                .d = { .image = "ubuntu:22.04", .command = "/usr/bin/env" },
                .a = { .image = "", .command = "" },
                .w = { .image = "ubuntu:22.04", .command = "/usr/bin/env", .args = { KEEPALIVE } },
        },
        {
                .name = "quirk: a command without args gets the keep-alive args",
                .a = { .command = "python" },
                .w = { .image = "python:3.11", .command = "python", .args = { KEEPALIVE } },
        },
        {
                .name = "quirk: a command without args gets the defaults' args",
                .d = { .has_args = true, .args = { "-x" } },
                .a = { .command = "python" },
                .w = { .image = "python:3.11", .command = "python", .args = { "-x" } },
        },
        {
                .name = "explicit empty args",
                .a = { .command = "sleep-forever", .has_args = true },
                .w = { .image = "python:3.11", .command = "sleep-forever" },
        },
        {
                .name = "defaults' explicit empty args",
                .d = { .has_args = true },
                .w = { .image = "python:3.11", .command = "/bin/sh" },
        },
        {
                .name = "tags: defaults first, then the call's, no dedup",
                .d = { .tags = { "team:a", "shared" } },
                .a = { .tags = { "shared", "job:1" } },
                .w = { SDK_DEFAULTS, .tags = { "team:a", "shared", "shared", "job:1" } },
        },
        {
                .name = "daemon tags appended once each",
                .d = { .tags = { "team:a" } },
                .a = { .tags = { "cwsandboxd", "team:a" } },
                .daemon_tags = { "cwsandboxd", "host:h1", "session:s1", "host:h1" },
                .w = { SDK_DEFAULTS,
                       .tags = { "team:a", "cwsandboxd", "team:a", "host:h1", "session:s1" } },
        },
        {
                .name = "daemon tags without other tags",
                .daemon_tags = { "cwsandboxd", "", "session:s1" },
                .w = { SDK_DEFAULTS, .tags = { "cwsandboxd", "session:s1" } },
        },
        {
                .name = "environment variables: per key, the call wins",
                .d = { .env = { "A", "1", "B", "2" } },
                .a = { .env = { "B", "3", "C", "4" } },
                .w = { SDK_DEFAULTS, .env = { "A", "1", "B", "3", "C", "4" } },
        },
        {
                .name = "environment variables: empty value kept",
                .d = { .env = { "A", "1" } },
                .a = { .env = { "A", "" } },
                .w = { SDK_DEFAULTS, .env = { "A", "" } },
        },
        {
                .name = "annotations: per key, the call wins",
                .d = { .annotations = { "owner", "alice", "tier", "gold" } },
                .a = { .annotations = { "owner", "bob" } },
                .w = { SDK_DEFAULTS, .annotations = { "owner", "bob", "tier", "gold" } },
        },
        {
                .name = "secrets: defaults first, identical duplicates collapse",
                .d = { .secrets = { { "vault", "DB_PASS", "v1", NULL } } },
                .a = { .secrets = { { "vault", "DB_PASS", "v1", NULL },
                                    { "aws", "key", NULL, "AWS_KEY" } } },
                .w = { SDK_DEFAULTS, .secrets = { "vault/DB_PASS/v1/DB_PASS", "aws/key//AWS_KEY" } },
        },
        {
                .name = "secrets: explicit env_var equal to the name is a duplicate",
                .d = { .secrets = { { "vault", "TOKEN", NULL, NULL } } },
                .a = { .secrets = { { "vault", "TOKEN", NULL, "TOKEN" } } },
                .w = { SDK_DEFAULTS, .secrets = { "vault/TOKEN//TOKEN" } },
        },
        {
                .name = "secrets: grouped by store in order of first use",
                .d = { .secrets = { { "vault", "a", NULL, NULL }, { "aws", "b", NULL, NULL } } },
                .a = { .secrets = { { "vault", "c", "f", "C" } } },
                .w = { SDK_DEFAULTS, .secrets = { "vault/a//a", "vault/c/f/C", "aws/b//b" } },
        },
        {
                .name = "secrets: different secrets for one env_var conflict",
                .d = { .secrets = { { "vault", "db", "v1", "DB" } } },
                .a = { .secrets = { { "vault", "db", "v2", "DB" } } },
                .w = { .rc = MERGE_E_INVALID, .error = "Conflicting secrets for env_var DB" },
        },
        {
                .name = "secrets: env_var defaults to the name when conflicting",
                .d = { .secrets = { { "vault", "TOKEN", NULL, NULL } } },
                .a = { .secrets = { { "aws", "other", NULL, "TOKEN" } } },
                .w = { .rc = MERGE_E_INVALID, .error = "Conflicting secrets for env_var TOKEN" },
        },
        {
                .name = "secrets: conflict inside the defaults",
                .d = { .secrets = { { "vault", "x", NULL, "X" }, { "aws", "x", NULL, "X" } } },
                .w = { .rc = MERGE_E_INVALID, .error = "Conflicting secrets for env_var X" },
        },
        {
                .name = "runner_ids: the call's win",
                .d = { .has_runner_ids = true, .runner_ids = { "r1", "r2" } },
                .a = { .has_runner_ids = true, .runner_ids = { "r3" } },
                .w = { SDK_DEFAULTS, .runner_ids = { "r3" }, .cks = true },
        },
        {
                .name = "runner_ids: an explicit empty list clears the default",
                .d = { .has_runner_ids = true, .runner_ids = { "r1" } },
                .a = { .has_runner_ids = true },
                .w = { SDK_DEFAULTS },
        },
        {
                .name = "runner_ids: unset inherits a non-empty default",
                .d = { .has_runner_ids = true, .runner_ids = { "r1" } },
                .w = { SDK_DEFAULTS, .runner_ids = { "r1" }, .cks = true },
        },
        {
                .name = "runner_ids: unset with an empty default gives none",
                .d = { .has_runner_ids = true },
                .w = { SDK_DEFAULTS },
        },
        {
                .name = "resources: the defaults', requests == limits, gpu in both",
                .d = { .resources = true, .cpu = "2", .memory = "4Gi", .gpu_count = 1,
                       .gpu_type = "A100" },
                .w = { SDK_DEFAULTS, .resources = true, .cpu = "2", .memory = "4Gi",
                       .gpu_count = 1, .gpu_type = "A100" },
        },
        {
                .name = "resources: the call's replace the defaults' whole",
                .d = { .resources = true, .cpu = "2", .memory = "4Gi", .gpu_count = 1 },
                .a = { .resources = true, .has_resources = true, .cpu = "500m" },
                .w = { SDK_DEFAULTS, .resources = true, .cpu = "500m" },
        },
        {
                .name = "resources: an explicit empty value clears the default",
                .d = { .resources = true, .cpu = "2" },
                .a = { .has_resources = true },
                .w = { SDK_DEFAULTS },
        },
        {
                .name = "resources: gpu count alone",
                .a = { .resources = true, .has_resources = true, .gpu_count = 2 },
                .w = { SDK_DEFAULTS, .resources = true, .gpu_count = 2 },
        },
        {
                .name = "max lifetime and deny egress from the defaults",
                .d = { .max_lifetime = 3600, .deny_egress = true },
                .w = { SDK_DEFAULTS, .max_lifetime = 3600, .deny_egress = true },
        },
        {
                .name = "mounted files and working directory",
                .a = { .files = { "/etc/app.conf", "x=1;y=2", "/app/empty", "" },
                       .working_dir = "/app" },
                .w = { SDK_DEFAULTS, .files = { "/etc/app.conf", "x=1;y=2", "/app/empty", "" },
                       .working_dir = "/app" },
        },
        {
                .name = "everything at once",
                .d = { .image = "img:d", .tags = { "d" }, .env = { "E", "d" },
                       .annotations = { "k", "d" }, .has_runner_ids = true,
                       .runner_ids = { "rd" }, .resources = true, .memory = "1Gi",
                       .secrets = { { "s", "n" } }, .max_lifetime = 60 },
                .a = { .command = "run", .tags = { "a" }, .env = { "F", "a" },
                       .annotations = { "k", "a" }, .secrets = { { "s", "m" } },
                       .working_dir = "/w" },
                .daemon_tags = { "cwsandboxd" },
                .w = { .image = "img:d", .command = "run", .args = { KEEPALIVE },
                       .tags = { "d", "a", "cwsandboxd" }, .env = { "E", "d", "F", "a" },
                       .annotations = { "k", "a" }, .runner_ids = { "rd" }, .cks = true,
                       .resources = true, .memory = "1Gi", .secrets = { "s/n//n", "s/m//m" },
                       .max_lifetime = 60, .working_dir = "/w" },
        },

        /* Validation. */
        {
                .name = "empty default tag",
                .d = { .tags = { "" } },
                .w = { .rc = MERGE_E_INVALID, .error = "defaults.tags[0] is empty" },
        },
        {
                .name = "empty call tag",
                .a = { .tags = { "ok", "" } },
                .w = { .rc = MERGE_E_INVALID, .error = "args.tags[1] is empty" },
        },
        {
                .name = "empty environment key",
                .a = { .env = { "", "v" } },
                .w = { .rc = MERGE_E_INVALID, .error = "args.environment_variables has an empty key" },
        },
        {
                .name = "environment key with '='",
                .d = { .env = { "A=B", "v" } },
                .w = { .rc = MERGE_E_INVALID,
                       .error = "defaults.environment_variables key 'A=B' contains '='" },
        },
        {
                .name = "empty annotation key",
                .d = { .annotations = { "", "v" } },
                .w = { .rc = MERGE_E_INVALID, .error = "defaults.annotations has an empty key" },
        },
        {
                .name = "args without has_args",
                .a = { .args = { "x" } },
                .w = { .rc = MERGE_E_INVALID, .error = "args.args given without has_args" },
        },
        {
                .name = "default args without has_args",
                .d = { .args = { "x" } },
                .w = { .rc = MERGE_E_INVALID, .error = "defaults.args given without has_args" },
        },
        {
                .name = "runner_ids without has_runner_ids",
                .a = { .runner_ids = { "r" } },
                .w = { .rc = MERGE_E_INVALID,
                       .error = "args.runner_ids given without has_runner_ids" },
        },
        {
                .name = "empty runner id",
                .d = { .has_runner_ids = true, .runner_ids = { "" } },
                .w = { .rc = MERGE_E_INVALID, .error = "defaults.runner_ids[0] is empty" },
        },
        {
                .name = "resources without has_resources",
                .a = { .resources = true, .cpu = "1" },
                .w = { .rc = MERGE_E_INVALID,
                       .error = "args.resources given without has_resources" },
        },
        {
                .name = "bad cpu quantity",
                .a = { .resources = true, .has_resources = true, .cpu = "lots" },
                .w = { .rc = MERGE_E_INVALID, .error = "args.resources.cpu 'lots' is not a quantity" },
        },
        {
                .name = "negative gpu count",
                .d = { .resources = true, .gpu_count = -1 },
                .w = { .rc = MERGE_E_INVALID, .error = "defaults.resources.gpu_count -1 is negative" },
        },
        {
                .name = "secret without a name",
                .a = { .secrets = { { "vault", "" } } },
                .w = { .rc = MERGE_E_INVALID, .error = "args.secrets[0] needs a store and a name" },
        },
        {
                .name = "secret without a store",
                .d = { .secrets = { { "", "n" } } },
                .w = { .rc = MERGE_E_INVALID, .error = "defaults.secrets[0] needs a store and a name" },
        },
        {
                .name = "relative working directory",
                .a = { .working_dir = "app" },
                .w = { .rc = MERGE_E_INVALID,
                       .error = "args.working_dir 'app' is not an absolute path" },
        },
        {
                .name = "relative mounted file",
                .a = { .files = { "etc/x", "" } },
                .w = { .rc = MERGE_E_INVALID,
                       .error = "args.mounted_files[0] needs an absolute path" },
        },
        {
                .name = "image that is not UTF-8",
                .a = { .image = "img\xff" },
                .w = { .rc = MERGE_E_INVALID, .error = "args.container_image is not valid UTF-8" },
        },
        {
                .name = "negative max lifetime",
                .d = { .max_lifetime = -5 },
                .w = { .rc = MERGE_E_INVALID,
                       .error = "defaults.max_lifetime_seconds -5 is negative" },
        },
        {
                .name = "NaN poll retry budget",
                .d = { .budget = NAN },
                .w = { .rc = MERGE_E_INVALID,
                       .error = "defaults.poll_retry_budget_seconds nan must be finite, >= 0 and <= 604800" },
        },
        {
                .name = "negative poll rpc timeout",
                .d = { .rpc_timeout = -1 },
                .w = { .rc = MERGE_E_INVALID,
                       .error = "defaults.poll_rpc_timeout_seconds -1 must be finite, >= 0 and <= 604800" },
        },
        {
                .name = "infinite request timeout",
                .d = { .request_timeout = INFINITY },
                .w = { .rc = MERGE_E_INVALID,
                       .error = "defaults.request_timeout_seconds inf must be finite, >= 0 and <= 604800" },
        },
        {
                .name = "request timeout above the limit",
                .d = { .request_timeout = 1e9 },
                .w = { .rc = MERGE_E_INVALID,
                       .error = "defaults.request_timeout_seconds 1e+09 must be finite, >= 0 and <= 604800" },
        },
};

/* ---- comparing -------------------------------------------------------------- */

static void join(char *buf, size_t size, char *const *v, size_t n) {
        size_t used = 0;

        buf[0] = 0;
        for (size_t i = 0; i < n && used < size; i++)
                used += snprintf(buf + used, size - used, "%s%s", i ? "," : "", v[i]);
}

static void check_strv(const char *name, const char *what, char *const *got, size_t n_got,
                       const char *const *want) {
        char g[512], w[512];

        join(g, sizeof(g), got, n_got);
        join(w, sizeof(w), (char *const *)want, count(want));
        ok(streq(g, w), "%s: %s: got [%s], want [%s]", name, what, g, w);
}

/* Map entries of either backend message, flattened to key, value, ... */
#define FLATTEN(entries, n, out) do {                                           \
                for (size_t _i = 0; _i < (n) && 2 * _i + 1 < ELEMENTSOF(out); _i++) { \
                        (out)[2 * _i] = (entries)[_i]->key;                     \
                        (out)[2 * _i + 1] = (entries)[_i]->value;               \
                }                                                               \
        } while (0)

static const char *str_or_empty(const char *s) {
        return s ? s : "";
}

static void check_field_s(const char *name, const char *field, const char *got, const char *want) {
        ok(streq(str_or_empty(got), str_or_empty(want)), "%s: %s: got \"%s\", want \"%s\"",
           name, field, str_or_empty(got), str_or_empty(want));
}

static void check_field_u(const char *name, const char *field, unsigned long long got,
                          unsigned long long want) {
        ok(got == want, "%s: %s: got %llu, want %llu", name, field, got, want);
}

static void check_resources(const char *name, const char *side,
                            const Coreweave__Sandbox__V1__Resources *r, const Want *w) {
        char got[256], want[256];

        if (!r) {
                ok(false, "%s: %s missing", name, side);
                return;
        }
        snprintf(got, sizeof(got), "cpu=%s memory=%s gpu=%s%lld/%s", r->cpu, r->memory,
                 r->gpu ? "" : "none:", r->gpu ? (long long)r->gpu->count : 0LL,
                 r->gpu && r->gpu->selector_case == COREWEAVE__SANDBOX__V1__GPU__SELECTOR_TYPE ?
                 r->gpu->type : "");
        snprintf(want, sizeof(want), "cpu=%s memory=%s gpu=%s%lld/%s", str_or_empty(w->cpu),
                 str_or_empty(w->memory), w->gpu_count || w->gpu_type ? "" : "none:",
                 (long long)w->gpu_count, str_or_empty(w->gpu_type));
        ok(streq(got, want), "%s: %s: got %s, want %s", name, side, got, want);
}

static void check_request(const Case *c, const Coreweave__Sandbox__V1__CreateSandboxRequest *req) {
        const Want *w = &c->w;
        const Coreweave__Sandbox__V1__SandboxSpec *spec;
        const Coreweave__Sandbox__V1__Container *ct;
        const char *flat[12] = {};
        char *secrets[8] = {};
        size_t n_secrets = 0;

        check_field_s(c->name, "request_id", req->request_id, "req-1");
        spec = req->sandbox ? req->sandbox->spec : NULL;
        if (!spec || spec->n_containers != 1) {
                ok(false, "%s: one container (got %zu)", c->name, spec ? spec->n_containers : 0);
                return;
        }
        ct = spec->containers[0];

        ok(streq(ct->name, "main") && streq(spec->primary_container, "main"),
           "%s: container \"%s\", primary \"%s\", want main", c->name, ct->name,
           spec->primary_container);
        check_field_s(c->name, "image", ct->image, w->image);
        check_field_s(c->name, "command", ct->command, w->command);
        check_strv(c->name, "args", ct->args, ct->n_args, w->args);
        check_strv(c->name, "tags", spec->tags, spec->n_tags, w->tags);

        FLATTEN(ct->environment_variables, ct->n_environment_variables, flat);
        check_strv(c->name, "env", (char *const *)flat, 2 * ct->n_environment_variables, w->env);
        memset(flat, 0, sizeof(flat));
        FLATTEN(spec->annotations, spec->n_annotations, flat);
        check_strv(c->name, "annotations", (char *const *)flat, 2 * spec->n_annotations,
                   w->annotations);

        check_strv(c->name, "runner_ids", spec->runner_ids, spec->n_runner_ids, w->runner_ids);
        check_field_u(c->name, "mode", spec->mode,
                      w->cks ? COREWEAVE__SANDBOX__V1__SANDBOX_MODE__SANDBOX_MODE_CKS :
                      COREWEAVE__SANDBOX__V1__SANDBOX_MODE__SANDBOX_MODE_UNSPECIFIED);

        ok(!ct->resources, "%s: legacy Container.resources never set", c->name);
        if (w->resources) {
                const Coreweave__Sandbox__V1__ResourceRequirements *rr = ct->resource_requirements;

                check_resources(c->name, "requests", rr ? rr->requests : NULL, w);
                check_resources(c->name, "limits", rr ? rr->limits : NULL, w);
        } else
                ok(!ct->resource_requirements, "%s: no resource_requirements (got %s)", c->name,
                   ct->resource_requirements ? "some" : "none");

        for (size_t i = 0; i < ct->n_secret_stores; i++)
                for (size_t j = 0; j < ct->secret_stores[i]->n_secrets; j++) {
                        const Coreweave__Sandbox__V1__SecretMapping *m = ct->secret_stores[i]->secrets[j];

                        if (n_secrets < ELEMENTSOF(secrets) - 1 &&
                            asprintf(&secrets[n_secrets], "%s/%s/%s/%s",
                                     ct->secret_stores[i]->store_name, m->path, m->field,
                                     m->env_var) >= 0)
                                n_secrets++;
                }
        check_strv(c->name, "secrets", secrets, n_secrets, w->secrets);
        for (size_t i = 0; i < n_secrets; i++)
                free(secrets[i]);

        check_field_u(c->name, "max_lifetime_seconds", spec->max_lifetime_seconds, w->max_lifetime);
        ok(w->deny_egress ?
           (spec->network && spec->network->_deny_egress_case ==
            COREWEAVE__SANDBOX__V1__NETWORK_OPTIONS___DENY_EGRESS_DENY_EGRESS &&
            spec->network->deny_egress) : !spec->network,
           "%s: network deny_egress: got %s, want %s", c->name,
           spec->network ? "set" : "unset", w->deny_egress ? "set" : "unset");

        memset(flat, 0, sizeof(flat));
        for (size_t i = 0; i < ct->n_files && 2 * i + 1 < ELEMENTSOF(flat); i++) {
                static char content[4][64];

                snprintf(content[i % 4], sizeof(content[0]), "%.*s",
                         (int)ct->files[i]->content.len,
                         ct->files[i]->content.data ? (const char *)ct->files[i]->content.data : "");
                flat[2 * i] = ct->files[i]->path;
                flat[2 * i + 1] = content[i % 4];
        }
        check_strv(c->name, "files", (char *const *)flat, 2 * ct->n_files, w->files);
        check_field_s(c->name, "working_dir", ct->working_dir, w->working_dir);
}

static void test_table(void) {
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                const Case *c = &cases[i];
                Cwsandboxd__V1__SandboxDefaults *d = make_defaults(&c->d);
                Cwsandboxd__V1__SandboxArgs *a = make_args(&c->a);
                Coreweave__Sandbox__V1__CreateSandboxRequest *req = NULL;
                char *error = NULL;
                int r;

                r = merge_build_create_request(d, a, c->daemon_tags, count(c->daemon_tags),
                                               "req-1", &req, &error);
                ok(r == c->w.rc, "%s: rc %d, want %d%s%s", c->name, r, c->w.rc,
                   error ? ": " : "", error ? error : "");
                if (r == 0 && req)
                        check_request(c, req);
                else if (r == MERGE_E_INVALID) {
                        check_field_s(c->name, "error", error, c->w.error);
                        ok(!req, "%s: no request on error", c->name);
                }

                free(error);
                merge_create_request_free(req);
                free_msg(d);
                free_msg(a);
        }
}

/* ---- other checks ------------------------------------------------------------ */

static int build(const Cwsandboxd__V1__SandboxDefaults *d, const Cwsandboxd__V1__SandboxArgs *a,
                 Coreweave__Sandbox__V1__CreateSandboxRequest **ret, char **ret_error) {
        static const char *const tags[] = { "cwsandboxd", "session:s1" };

        return merge_build_create_request(d, a, tags, ELEMENTSOF(tags), "req-1", ret, ret_error);
}

static uint8_t *pack(const ProtobufCMessage *m, size_t *ret_size) {
        size_t size = protobuf_c_message_get_packed_size(m);
        uint8_t *buf = xmalloc(size);

        protobuf_c_message_pack(m, buf);
        *ret_size = size;
        return buf;
}

static bool same_wire(const ProtobufCMessage *x, const ProtobufCMessage *y) {
        size_t nx, ny;
        uint8_t *bx = pack(x, &nx), *by = pack(y, &ny);
        bool same = nx == ny && memcmp(bx, by, nx) == 0;

        free(bx);
        free(by);
        return same;
}

static void test_null_inputs(void) {
        Coreweave__Sandbox__V1__CreateSandboxRequest *x = NULL, *y = NULL;
        Cwsandboxd__V1__SandboxDefaults *d = make_defaults(&(Input){});
        Cwsandboxd__V1__SandboxArgs *a = make_args(&(Input){});
        int r;

        r = build(NULL, NULL, &x, NULL);
        check_eq_u(r, 0, "NULL defaults and args build");
        r = build(d, a, &y, NULL);
        check_eq_u(r, 0, "empty defaults and args build");
        ok(x && y && same_wire(&x->base, &y->base), "NULL inputs mean empty inputs");

        merge_create_request_free(x);
        merge_create_request_free(y);
        free_msg(d);
        free_msg(a);
}

static void test_request_id(void) {
        Coreweave__Sandbox__V1__CreateSandboxRequest *req = NULL;
        int r;

        r = merge_build_create_request(NULL, NULL, NULL, 0, "5f0c-uuid", &req, NULL);
        ok(r == 0 && req && streq(req->request_id, "5f0c-uuid"), "request_id carried: rc %d, got %s",
           r, req ? req->request_id : "(none)");
        ok(req && req->sandbox && req->sandbox->spec && req->sandbox->spec->n_tags == 0,
           "no daemon tags given, none added");
        req = merge_create_request_free(req);

        r = merge_build_create_request(NULL, NULL, NULL, 0, NULL, &req, NULL);
        ok(r == -EINVAL && !req, "NULL request_id: got %d, want %d", r, -EINVAL);
        r = merge_build_create_request(NULL, NULL, NULL, 0, "", &req, NULL);
        ok(r == -EINVAL && !req, "empty request_id: got %d, want %d", r, -EINVAL);
        r = merge_build_create_request(NULL, NULL, NULL, 2, "x", &req, NULL);
        ok(r == -EINVAL && !req, "daemon tag count without tags: got %d, want %d", r, -EINVAL);
}

static void test_error_optional(void) {
        Cwsandboxd__V1__SandboxArgs *a = make_args(&(Input){ .tags = { "" } });
        Coreweave__Sandbox__V1__CreateSandboxRequest *req = NULL;
        int r;

        r = build(NULL, a, &req, NULL);
        check_eq_u(r, MERGE_E_INVALID, "invalid input without ret_error");
        free_msg(a);
}

static void test_quantities(void) {
        static const struct {
                const char *q;
                bool valid;
        } table[] = {
                { "1", true }, { "0", true }, { "0.5", true }, { ".5", true }, { "2.", true },
                { "500m", true }, { "2Gi", true }, { "512Mi", true }, { "1k", true },
                { "1e3", true }, { "1.5E-2", true }, { "+1", true }, { "1E", true },
                { "100n", true }, { "3u", true }, { "2Ei", true },
                { "-1", false }, { "1.2.3", false }, { "Gi", false }, { "1Gb", false },
                { "1e", false }, { "abc", false }, { "1 ", false }, { ".", false },
                { "1KiB", false }, { "1e+", false }, { "1mi", false },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                Cwsandboxd__V1__SandboxArgs *a = make_args(&(Input){
                        .resources = true, .has_resources = true, .memory = table[i].q });
                int r = merge_args_validate(a, NULL);

                ok((r == 0) == table[i].valid, "quantity \"%s\": got %s, want %s", table[i].q,
                   r == 0 ? "valid" : "invalid", table[i].valid ? "valid" : "invalid");
                free_msg(a);
        }
}

static void test_utf8(void) {
        static const struct {
                const char *s;
                bool valid;
        } table[] = {
                { "plain", true }, { "h\xc3\xa9llo", true }, { "\xe6\x97\xa5\xe6\x9c\xac", true },
                { "\xf0\x9f\x98\x80", true }, { "\xef\xbf\xbf", true },
                { "\xff", false }, { "\xc0\x80", false }, { "\xc3", false },
                { "\xe2\x82", false }, { "\xed\xa0\x80", false }, { "\xf4\x90\x80\x80", false },
                { "\xe0\x80\xaf", false }, { "\xf0\x80\x80\xaf", false }, { "\x80", false },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                Cwsandboxd__V1__SandboxArgs *a = make_args(&(Input){ .tags = { table[i].s } });
                int r = merge_args_validate(a, NULL);

                ok((r == 0) == table[i].valid, "utf-8 case %zu: got %s, want %s", i,
                   r == 0 ? "valid" : "invalid", table[i].valid ? "valid" : "invalid");
                free_msg(a);
        }
}

static void test_list_limit(void) {
        Cwsandboxd__V1__SandboxArgs *a = make_args(&(Input){});
        char *error = NULL;
        int r;

        a->n_tags = MERGE_LIST_MAX + 1;
        a->tags = xmalloc(a->n_tags * sizeof(char *));
        for (size_t i = 0; i < a->n_tags; i++)
                a->tags[i] = xstrdup("t");

        r = merge_args_validate(a, &error);
        check_eq_u(r, MERGE_E_INVALID, "too many tags refused");
        check_eq_s(error, "args.tags has 1025 entries, more than 1024", "too many tags message");
        free(error);

        a->n_tags--;
        r = merge_args_validate(a, NULL);
        check_eq_u(r, 0, "MERGE_LIST_MAX tags accepted");
        a->n_tags++;
        free_msg(a);
}

static void test_defaults_new(void) {
        Cwsandboxd__V1__SandboxDefaults *in, *d = NULL;
        char *error = NULL;
        int r;

        r = merge_defaults_new(NULL, &d, &error);
        check_eq_u(r, 0, "defaults_new(NULL)");
        if (d) {
                check_eq_s(d->container_image, "python:3.11", "filled image");
                check_eq_s(d->command, "/bin/sh", "filled command");
                ok(d->has_args && d->n_args == 2 && streq(d->args[0], "-c") &&
                   streq(d->args[1], merge_default_args[1]), "filled keep-alive args");
                ok(d->request_timeout_seconds == 300 && d->poll_retry_budget_seconds == 30 &&
                   d->poll_rpc_timeout_seconds == 15, "filled timeouts: %g %g %g",
                   d->request_timeout_seconds, d->poll_retry_budget_seconds,
                   d->poll_rpc_timeout_seconds);
                check_eq_u(d->max_lifetime_seconds, 0, "max lifetime stays unset");
                check_eq_u(merge_defaults_validate(d, NULL), 0, "filled defaults validate");
        }
        d = merge_defaults_free(d);

        /* Given values are kept, unset ones filled, and the copy is independent. */
        in = make_defaults(&(Input){ .image = "img", .has_args = true, .tags = { "t" },
                                     .budget = 5, .env = { "A", "1" },
                                     .resources = true, .cpu = "1" });
        r = merge_defaults_new(in, &d, NULL);
        check_eq_u(r, 0, "defaults_new(partial)");
        if (d) {
                check_eq_s(d->container_image, "img", "given image kept");
                check_eq_s(d->command, "/bin/sh", "unset command filled");
                check_eq_u(d->n_args, 0, "explicit empty args kept");
                ok(d->poll_retry_budget_seconds == 5 && d->poll_rpc_timeout_seconds == 15,
                   "given budget kept, rpc timeout filled: %g %g", d->poll_retry_budget_seconds,
                   d->poll_rpc_timeout_seconds);
                ok(d->n_tags == 1 && d->tags[0] != in->tags[0] && streq(d->tags[0], "t"),
                   "tags copied");
                ok(d->n_environment_variables == 1 && d->resources && streq(d->resources->cpu, "1"),
                   "env and resources copied");
        }
        free_msg(in);

        /* Building from the filled copy gives the same request as from the raw input. */
        if (d) {
                Cwsandboxd__V1__SandboxDefaults *raw = make_defaults(&(Input){
                        .image = "img", .has_args = true, .tags = { "t" }, .budget = 5,
                        .env = { "A", "1" }, .resources = true, .cpu = "1" });
                Coreweave__Sandbox__V1__CreateSandboxRequest *x = NULL, *y = NULL;

                ok(build(raw, NULL, &x, NULL) == 0 && build(d, NULL, &y, NULL) == 0 &&
                   same_wire(&x->base, &y->base), "filled and raw defaults build the same request");
                merge_create_request_free(x);
                merge_create_request_free(y);
                free_msg(raw);
        }
        d = merge_defaults_free(d);

        in = make_defaults(&(Input){ .tags = { "" } });
        d = (void *)in;         /* must stay untouched */
        r = merge_defaults_new(in, &d, &error);
        ok(r == MERGE_E_INVALID && d == (void *)in, "defaults_new refuses invalid input, ret untouched");
        check_eq_s(error, "defaults.tags[0] is empty", "defaults_new error");
        free(error);
        free_msg(in);

        check_eq_u(merge_defaults_validate(NULL, NULL), 0, "NULL defaults are valid");
        check_eq_u(merge_args_validate(NULL, NULL), 0, "NULL args are valid");
        ok(merge_defaults_free(NULL) == NULL && merge_create_request_free(NULL) == NULL,
           "free functions accept NULL");
}

static void test_wire_round_trip(void) {
        const Case *c = NULL;
        Cwsandboxd__V1__SandboxDefaults *d;
        Cwsandboxd__V1__SandboxArgs *a;
        Coreweave__Sandbox__V1__CreateSandboxRequest *req = NULL, *back;
        uint8_t *buf;
        size_t size;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                if (streq(cases[i].name, "everything at once"))
                        c = &cases[i];
        if (!c) {
                ok(false, "round trip case present");
                return;
        }

        d = make_defaults(&c->d);
        a = make_args(&c->a);
        if (merge_build_create_request(d, a, c->daemon_tags, count(c->daemon_tags), "req-1",
                                       &req, NULL) != 0) {
                ok(false, "round trip build");
                goto out;
        }

        buf = pack(&req->base, &size);
        back = coreweave__sandbox__v1__create_sandbox_request__unpack(NULL, size, buf);
        ok(back != NULL, "the request decodes as CreateSandboxRequest");
        if (back) {
                check_request(c, back);
                coreweave__sandbox__v1__create_sandbox_request__free_unpacked(back, NULL);
        }
        free(buf);
out:
        merge_create_request_free(req);
        free_msg(d);
        free_msg(a);
}

#if HAVE_OOM_INJECTION
/* Fail the 1st, 2nd, ... allocation in turn: never a crash, never a leak. */
static void test_oom(void) {
        const Case *c = NULL;
        Cwsandboxd__V1__SandboxDefaults *d;
        Cwsandboxd__V1__SandboxArgs *a;
        unsigned failures = 0, leaks = 0, bad_rc = 0;
        long k;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                if (streq(cases[i].name, "everything at once"))
                        c = &cases[i];
        if (!c) {
                ok(false, "oom case present");
                return;
        }
        d = make_defaults(&c->d);
        a = make_args(&c->a);

        for (k = 0; k < 10000; k++) {
                Coreweave__Sandbox__V1__CreateSandboxRequest *req = NULL;
                Cwsandboxd__V1__SandboxDefaults *copy = NULL;
                long before = live_allocations;
                int r, r2;

                oom_hit = false;
                oom_countdown = k;
                r = merge_build_create_request(d, a, c->daemon_tags, count(c->daemon_tags),
                                               "req-1", &req, NULL);
                oom_countdown = -1;
                if (oom_hit && (r != -ENOMEM || req))
                        bad_rc++;
                merge_create_request_free(req);

                oom_countdown = k;
                r2 = merge_defaults_new(d, &copy, NULL);
                oom_countdown = -1;
                if (oom_hit && r2 != -ENOMEM && r2 != 0)
                        bad_rc++;
                merge_defaults_free(copy);

                if (live_allocations != before)
                        leaks++;
                if (!oom_hit)
                        break;
                failures++;
        }

        ok(failures > 50, "oom: %u allocation points exercised", failures);
        check_eq_u(bad_rc, 0, "oom: every failure reported as -ENOMEM without a request");
        check_eq_u(leaks, 0, "oom: nothing leaked after any failure");

        /* An error message that cannot be allocated is -ENOMEM, not a crash. */
        {
                Cwsandboxd__V1__SandboxArgs *bad = make_args(&(Input){ .tags = { "" } });
                Coreweave__Sandbox__V1__CreateSandboxRequest *req = NULL;
                char *error = NULL;
                unsigned wrong = 0;

                for (k = 0; k < 100; k++) {
                        int r;

                        oom_hit = false;
                        oom_countdown = k;
                        r = merge_build_create_request(NULL, bad, NULL, 0, "req-1", &req, &error);
                        oom_countdown = -1;
                        /* vasprintf() may survive a failed allocation (a shrinking realloc). */
                        if (r == -ENOMEM ? (!oom_hit || error) : (r != MERGE_E_INVALID || !error))
                                wrong++;
                        free(error);
                        error = NULL;
                        if (!oom_hit)
                                break;
                }
                check_eq_u(wrong, 0, "oom: while formatting the error message");
                free_msg(bad);
        }

        free_msg(d);
        free_msg(a);
}
#else
static void test_oom(void) {
        ok(true, "# SKIP allocator replacement is not possible under a sanitizer");
}
#endif

int main(void) {
        test_table();
        test_null_inputs();
        test_request_id();
        test_error_optional();
        test_quantities();
        test_utf8();
        test_list_limit();
        test_defaults_new();
        test_wire_round_trip();
        test_oom();

        return done();
}
