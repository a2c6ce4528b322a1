/*
 * Configuration of cwsandboxd: one table of keys drives the file parser, the
 * flag parser, the defaults and the usage text.
 *
 * Each key has a type, a place in Config, a default written as text and, for
 * numbers, a range. Defaults go through the same parser as file and flag
 * values, so a default can never be a value the parser would refuse. A value
 * is fully checked before it replaces the old one; a failing key leaves its
 * previous value in place.
 *
 * The backend URL is stored as given and also as the gRPC target and TLS flag
 * derived from it, so the two can never disagree.
 *
 * Errors are one line: "FILE:LINE: KEY: PROBLEM" or "--FLAG: PROBLEM". None
 * of the keys holds a secret (the API key is only ever named by path), but a
 * URL is not echoed when it carries user info.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <arpa/inet.h>

#include "config.h"
#include "macro.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

/* Room for a socket path, terminating NUL included. */
#define SUN_PATH_SIZE sizeof(((struct sockaddr_un){}).sun_path)

typedef enum ConfigType {
        CONFIG_TYPE_PATH,               /* char *, absolute, required */
        CONFIG_TYPE_OPTIONAL_PATH,      /* char *, absolute or "" */
        CONFIG_TYPE_SOCKET_PATH,        /* char *, absolute, fits in sun_path */
        CONFIG_TYPE_URL,                /* the backend URL and what it yields */
        CONFIG_TYPE_LOG_LEVEL,          /* LogLevel */
        CONFIG_TYPE_SIZE,               /* uint64_t, bytes with suffixes */
        CONFIG_TYPE_UINT,               /* uint64_t */
        CONFIG_TYPE_INT,                /* int64_t */
        CONFIG_TYPE_BOOL,               /* bool */
        CONFIG_TYPE_RATE,               /* double, 0..CONFIG_RATE_MAX */
        CONFIG_TYPE_POLICY,             /* AdmissionPolicy */
} ConfigType;

typedef struct ConfigKey {
        const char *name;
        ConfigType type;
        size_t offset;
        int64_t min, max;               /* numbers only */
        const char *default_value;
        const char *help;
        bool reloadable;                /* SIGHUP applies it; the others need a restart */
} ConfigKey;

static const ConfigKey config_keys[] = {
        {
                "socket", CONFIG_TYPE_SOCKET_PATH, offsetof(Config, socket_path), 0, 0,
                "/run/cwsandboxd/cwsandboxd.sock",
                "Local socket clients connect to",
        }, {
                "state_dir", CONFIG_TYPE_PATH, offsetof(Config, state_dir), 0, 0,
                "/var/lib/cwsandboxd",
                "Directory for persistent state",
        }, {
                "backend_url", CONFIG_TYPE_URL, offsetof(Config, backend_url), 0, 0,
                "",
                "Backend URL (http/https); empty = local",
        }, {
                "api_key_file", CONFIG_TYPE_OPTIONAL_PATH, offsetof(Config, api_key_file), 0, 0,
                "",
                "File with the backend API key",
                true,
        }, {
                "log_level", CONFIG_TYPE_LOG_LEVEL, offsetof(Config, log_level), 0, 0,
                "info",
                "error, warning, notice, info or debug",
                true,
        }, {
                "max_frame_bytes", CONFIG_TYPE_SIZE, offsetof(Config, max_frame_bytes),
                (int64_t)KiB, (int64_t)(256 * MiB),
                "16MiB",
                "Largest frame accepted on the local socket",
        }, {
                "max_connections", CONFIG_TYPE_UINT, offsetof(Config, max_connections), 1, 1048576,
                "1024",
                "Most client connections at once",
        }, {
                "max_connections_per_uid", CONFIG_TYPE_UINT, offsetof(Config, max_connections_per_uid),
                1, 1048576,
                "128",
                "Most client connections at once per user",
        }, {
                "default_linger_seconds", CONFIG_TYPE_INT, offsetof(Config, default_linger_seconds),
                -1, 366 * 24 * 3600,
                "30",
                "Idle session lifetime; -1 = forever",
        }, {
                "reap_interval_seconds", CONFIG_TYPE_UINT, offsetof(Config, reap_interval_seconds),
                1, 24 * 3600,
                "60",
                "How often the backend is reconciled with the ledger: orphans stopped, lifetimes enforced",
        }, {
                "drain_timeout_seconds", CONFIG_TYPE_UINT, offsetof(Config, drain_timeout_seconds),
                0, 3600,
                "10",
                "On SIGTERM, how long calls in flight may finish before they are ended",
        }, {
                "stop_on_shutdown", CONFIG_TYPE_BOOL, offsetof(Config, stop_on_shutdown), 0, 0,
                "false",
                "Stop every sandbox when the daemon exits (default: they keep running for the next start)",
        }, {
                "local_backend_path", CONFIG_TYPE_OPTIONAL_PATH, offsetof(Config, local_backend_path), 0, 0,
                "",
                "Local backend program; empty = built-in",
        }, {
                "max_file_bytes", CONFIG_TYPE_SIZE, offsetof(Config, max_file_bytes),
                1, (int64_t)(64 * GiB),
                "256MiB",
                "Largest file read or written",
        }, {
                "channel_pool_size", CONFIG_TYPE_UINT, offsetof(Config, channel_pool_size), 1, 64,
                "8",
                "gRPC channels to the backend (90 streams each)",
        }, {
                "max_sandboxes", CONFIG_TYPE_UINT, offsetof(Config, max_sandboxes), 0, 1000000,
                "0",
                "Most sandboxes alive at once on this host; 0 = no limit",
                true,
        }, {
                "max_creates_per_second", CONFIG_TYPE_RATE, offsetof(Config, max_creates_per_second), 0, 0,
                "0",
                "Most creates per second on this host (bursts of up to one second's worth); 0 = no limit",
                true,
        }, {
                "session_max_sandboxes", CONFIG_TYPE_UINT, offsetof(Config, session_max_sandboxes), 0, 1000000,
                "0",
                "Most sandboxes alive at once per session; 0 = no limit",
                true,
        }, {
                "session_max_creates_per_second", CONFIG_TYPE_RATE,
                offsetof(Config, session_max_creates_per_second), 0, 0,
                "0",
                "Most creates per second per session; 0 = no limit",
                true,
        }, {
                "admission_policy", CONFIG_TYPE_POLICY, offsetof(Config, admission_policy), 0, 0,
                "wait",
                "A create over a limit: wait (in turn, up to the caller's timeout) or reject",
                true,
        }, {
                "metrics_textfile", CONFIG_TYPE_OPTIONAL_PATH, offsetof(Config, metrics_textfile), 0, 0,
                "",
                "Prometheus text file to write (node_exporter textfile collector); empty = none",
        }, {
                "metrics_textfile_interval_seconds", CONFIG_TYPE_UINT,
                offsetof(Config, metrics_textfile_interval_seconds), 1, 3600,
                "15",
                "How often the metrics text file is written",
        },
};

/* Output of asprintf, or NULL when memory ran out. */
static char *strf(const char *fmt, ...) _printf_(1, 2);

static char *strf(const char *fmt, ...) {
        va_list ap;
        char *s;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&s, fmt, ap);
        va_end(ap);
        return r < 0 ? NULL : s;
}

/* Set *@ret_msg to a new message; CONFIG_E_INVALID, or -ENOMEM. */
static int invalid(char **ret_msg, const char *fmt, ...) _printf_(2, 3);

static int invalid(char **ret_msg, const char *fmt, ...) {
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(ret_msg, fmt, ap);
        va_end(ap);
        if (r < 0) {
                *ret_msg = NULL;
                return -ENOMEM;
        }
        return CONFIG_E_INVALID;
}

static void *field(Config *c, const ConfigKey *k) {
        return (uint8_t *)c + k->offset;
}

/* Flag spelling of a key: "max_frame_bytes" -> "max-frame-bytes". */
static void key_to_flag(const char *key, char *buf, size_t size) {
        size_t i;

        for (i = 0; key[i] && i + 1 < size; i++)
                buf[i] = key[i] == '_' ? '-' : key[i];
        buf[i] = 0;
}

static const ConfigKey *key_find(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(config_keys); i++)
                if (streq(config_keys[i].name, name))
                        return &config_keys[i];
        return NULL;
}

static const ConfigKey *key_find_flag(const char *name, size_t len) {
        char flag[64];

        for (size_t i = 0; i < ELEMENTSOF(config_keys); i++) {
                key_to_flag(config_keys[i].name, flag, sizeof(flag));
                if (strlen(flag) == len && strncmp(flag, name, len) == 0)
                        return &config_keys[i];
        }
        return NULL;
}

int config_parse_size(const char *s, uint64_t *ret) {
        static const struct {
                const char *suffix;
                uint64_t factor;
        } suffixes[] = {
                { "", 1 },
                { "k", KiB }, { "kib", KiB },
                { "m", MiB }, { "mib", MiB },
                { "g", GiB }, { "gib", GiB },
        };
        uint64_t v = 0;
        const char *p = s;

        if (!isdigit((unsigned char)*p))
                return -EINVAL;

        for (; isdigit((unsigned char)*p); p++) {
                unsigned d = (unsigned)(*p - '0');

                if (v > (UINT64_MAX - d) / 10)
                        return -EINVAL;
                v = v * 10 + d;
        }
        /* Blanks may separate a suffix, but not trail a bare number. */
        while (*p == ' ' || *p == '\t')
                p++;
        if (*p == 0 && (p[-1] == ' ' || p[-1] == '\t'))
                return -EINVAL;

        for (size_t i = 0; i < ELEMENTSOF(suffixes); i++) {
                if (strcasecmp(p, suffixes[i].suffix) != 0)
                        continue;
                if (v > UINT64_MAX / suffixes[i].factor)
                        return -EINVAL;
                *ret = v * suffixes[i].factor;
                return 0;
        }
        return -EINVAL;
}

/* Sizes in messages: the largest binary unit that divides them exactly. */
static void format_size(uint64_t v, char *buf, size_t size) {
        if (v >= GiB && v % GiB == 0)
                snprintf(buf, size, "%" PRIu64 "GiB", v / GiB);
        else if (v >= MiB && v % MiB == 0)
                snprintf(buf, size, "%" PRIu64 "MiB", v / MiB);
        else if (v >= KiB && v % KiB == 0)
                snprintf(buf, size, "%" PRIu64 "KiB", v / KiB);
        else
                snprintf(buf, size, "%" PRIu64, v);
}

static int parse_int(const char *s, int64_t *ret) {
        char *end;
        long long v;

        /* strtoll skips leading spaces and takes "+"; a config value should not. */
        if (!(isdigit((unsigned char)s[0]) || (s[0] == '-' && isdigit((unsigned char)s[1]))))
                return -EINVAL;

        errno = 0;
        v = strtoll(s, &end, 10);
        if (errno != 0 || *end != 0)
                return -EINVAL;

        *ret = v;
        return 0;
}

static int set_rate(Config *c, const ConfigKey *k, const char *value, char **ret_msg) {
        char *end;
        double v;

        errno = 0;
        v = strtod(value, &end);
        if (errno != 0 || end == value || *end != 0 || !(v >= 0 && v <= CONFIG_RATE_MAX))
                return invalid(ret_msg, "invalid rate '%s' (expected 0..%d per second)", value, CONFIG_RATE_MAX);
        *(double *)field(c, k) = v;
        return 0;
}

static int parse_bool(const char *s, bool *ret) {
        if (strcasecmp(s, "true") == 0 || strcasecmp(s, "yes") == 0 || streq(s, "1"))
                *ret = true;
        else if (strcasecmp(s, "false") == 0 || strcasecmp(s, "no") == 0 || streq(s, "0"))
                *ret = false;
        else
                return -EINVAL;
        return 0;
}

static int check_path(const ConfigKey *k, const char *value, char **ret_msg) {
        if (value[0] == 0) {
                if (k->type == CONFIG_TYPE_OPTIONAL_PATH)
                        return 0;
                return invalid(ret_msg, "a path is required");
        }
        if (value[0] != '/')
                return invalid(ret_msg, "'%s' is not an absolute path", value);
        if (k->type == CONFIG_TYPE_SOCKET_PATH && strlen(value) >= SUN_PATH_SIZE)
                return invalid(ret_msg, "socket path is too long (%zu bytes, at most %zu)",
                               strlen(value), SUN_PATH_SIZE - 1);
        return 0;
}

static int set_string(char **dst, const char *value) {
        char *s = strdup(value);

        if (!s)
                return -ENOMEM;
        free(*dst);
        *dst = s;
        return 0;
}

static int set_backend_url(Config *c, const char *value, char **ret_msg) {
        _cleanup_free_ char *url = NULL, *target = NULL;
        bool tls = false;
        int r;

        if (value[0] != 0) {
                r = config_parse_backend_url(value, &target, &tls, ret_msg);
                if (r != 0)
                        return r;
        }

        url = strdup(value);
        if (!url)
                return -ENOMEM;

        free(c->backend_url);
        c->backend_url = TAKE_PTR(url);
        free(c->backend_target);
        c->backend_target = TAKE_PTR(target);
        c->backend_tls = tls;
        return 0;
}

static int set_number(Config *c, const ConfigKey *k, const char *value, char **ret_msg) {
        char lo[32], hi[32];
        uint64_t u;
        int64_t v;

        if (k->type == CONFIG_TYPE_SIZE) {
                if (config_parse_size(value, &u) < 0)
                        return invalid(ret_msg, "invalid size '%s'", value);
                if (u < (uint64_t)k->min || u > (uint64_t)k->max) {
                        format_size((uint64_t)k->min, lo, sizeof(lo));
                        format_size((uint64_t)k->max, hi, sizeof(hi));
                        return invalid(ret_msg, "size '%s' is out of range %s..%s", value, lo, hi);
                }
                *(uint64_t *)field(c, k) = u;
                return 0;
        }

        if (parse_int(value, &v) < 0)
                return invalid(ret_msg, "invalid integer '%s'", value);
        if (v < k->min || v > k->max)
                return invalid(ret_msg, "'%s' is out of range %" PRId64 "..%" PRId64, value, k->min, k->max);

        if (k->type == CONFIG_TYPE_UINT)
                *(uint64_t *)field(c, k) = (uint64_t)v;
        else
                *(int64_t *)field(c, k) = v;
        return 0;
}

/*
 * Check @value for key @k and store it. Returns 0, CONFIG_E_INVALID with
 * *@ret_msg set (the problem, without the key), or -ENOMEM.
 */
static int config_set(Config *c, const ConfigKey *k, const char *value, char **ret_msg) {
        LogLevel level;
        bool b;
        int r;

        switch (k->type) {
        case CONFIG_TYPE_PATH:
        case CONFIG_TYPE_OPTIONAL_PATH:
        case CONFIG_TYPE_SOCKET_PATH:
                r = check_path(k, value, ret_msg);
                if (r != 0)
                        return r;
                return set_string(field(c, k), value);

        case CONFIG_TYPE_URL:
                return set_backend_url(c, value, ret_msg);

        case CONFIG_TYPE_LOG_LEVEL:
                level = log_level_from_string(value);
                if (level == _LOG_LEVEL_INVALID)
                        return invalid(ret_msg, "invalid log level '%s' "
                                       "(expected error, warning, notice, info or debug)", value);
                *(LogLevel *)field(c, k) = level;
                return 0;

        case CONFIG_TYPE_SIZE:
        case CONFIG_TYPE_UINT:
        case CONFIG_TYPE_INT:
                return set_number(c, k, value, ret_msg);

        case CONFIG_TYPE_BOOL:
                if (parse_bool(value, &b) < 0)
                        return invalid(ret_msg, "invalid boolean '%s' "
                                       "(expected true, false, yes, no, 1 or 0)", value);
                *(bool *)field(c, k) = b;
                return 0;

        case CONFIG_TYPE_RATE:
                return set_rate(c, k, value, ret_msg);

        case CONFIG_TYPE_POLICY:
                if (streq(value, "wait"))
                        *(AdmissionPolicy *)field(c, k) = ADMISSION_WAIT;
                else if (streq(value, "reject"))
                        *(AdmissionPolicy *)field(c, k) = ADMISSION_REJECT;
                else
                        return invalid(ret_msg, "invalid policy '%s' (expected wait or reject)", value);
                return 0;
        }

        return -EINVAL;
}

int config_init_defaults(Config *c) {
        _cleanup_free_ char *msg = NULL;
        int r;

        *c = (Config)CONFIG_NULL(*c);
        for (size_t i = 0; i < ELEMENTSOF(config_keys); i++) {
                r = config_set(c, &config_keys[i], config_keys[i].default_value, &msg);
                if (r != 0) {
                        config_free(c);
                        /* A default the parser refuses is a bug in the table. */
                        return r < 0 ? r : -EINVAL;
                }
        }
        return 0;
}

void config_free(Config *c) {
        if (!c)
                return;

        free(c->socket_path);
        free(c->state_dir);
        free(c->backend_url);
        free(c->backend_target);
        free(c->api_key_file);
        free(c->local_backend_path);
        free(c->metrics_textfile);
        *c = (Config)CONFIG_NULL(*c);
}

/* ---- file ------------------------------------------------------------- */

static char *strip(char *s) {
        char *e;

        while (*s == ' ' || *s == '\t')
                s++;
        e = s + strlen(s);
        while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
                e--;
        *e = 0;
        return s;
}

/*
 * One line of the file, already stripped and not blank or a comment.
 * Returns 0, CONFIG_E_INVALID with *@ret_msg set (the whole message after
 * "FILE:LINE: "), or -ENOMEM.
 */
static int config_apply_line(Config *c, char *line, char **ret_msg) {
        _cleanup_free_ char *msg = NULL;
        const ConfigKey *k;
        char *eq, *key, *value;
        size_t len;
        int r;

        if (line[0] == '[') {
                len = strlen(line);
                if (line[len - 1] != ']')
                        return invalid(ret_msg, "malformed section header '%s'", line);
                line[len - 1] = 0;
                if (!streq(strip(line + 1), "cwsandboxd"))
                        return invalid(ret_msg, "unknown section '[%s]' (only [cwsandboxd] is allowed)",
                                       strip(line + 1));
                return 0;
        }

        eq = strchr(line, '=');
        if (!eq)
                return invalid(ret_msg, "expected 'key = value', got '%s'", line);
        *eq = 0;
        key = strip(line);
        value = strip(eq + 1);

        if (key[0] == 0)
                return invalid(ret_msg, "missing key before '='");

        k = key_find(key);
        if (!k)
                return invalid(ret_msg, "unknown key '%s'", key);

        len = strlen(value);
        if (value[0] == '"') {
                if (len < 2 || value[len - 1] != '"')
                        return invalid(ret_msg, "%s: unterminated quote", key);
                value[len - 1] = 0;
                value++;
        }

        r = config_set(c, k, value, &msg);
        if (r == CONFIG_E_INVALID)
                return invalid(ret_msg, "%s: %s", key, msg);
        return r;
}

int config_load_file(Config *c, const char *path, bool missing_ok, char **ret_error) {
        _cleanup_free_ char *line = NULL, *msg = NULL;
        size_t size = 0;
        unsigned lineno = 0;
        ssize_t n;
        FILE *f;
        int r = 0;

        f = fopen(path, "re");
        if (!f) {
                r = -errno;
                if (r == -ENOENT && missing_ok)
                        return 0;
                *ret_error = strf("%s: cannot open: %s", path, strerror(-r));
                return r;
        }

        while ((n = getline(&line, &size, f)) >= 0) {
                char *s = line;

                lineno++;
                if ((size_t)n != strlen(line)) {
                        r = invalid(&msg, "line contains a NUL byte");
                        break;
                }
                /* An editor may have put a UTF-8 byte order mark in front. */
                if (lineno == 1 && strncmp(s, "\xef\xbb\xbf", 3) == 0)
                        s += 3;

                s = strip(s);
                if (s[0] == 0 || s[0] == '#' || s[0] == ';')
                        continue;

                r = config_apply_line(c, s, &msg);
                if (r != 0)
                        break;
        }

        if (r == 0 && ferror(f)) {
                r = -EIO;
                *ret_error = strf("%s: read error", path);
                fclose(f);
                return r;
        }
        fclose(f);

        if (r == CONFIG_E_INVALID) {
                *ret_error = strf("%s:%u: %s", path, lineno, msg);
                if (!*ret_error)
                        return -ENOMEM;
        }
        return r;
}

/* ---- command line ----------------------------------------------------- */

/*
 * Walk the arguments. With @c NULL, only the shape is checked (known flags,
 * values present); with @c set, the values are applied too.
 */
static int config_walk_args(Config *c, int argc, char **argv, char **ret_error) {
        _cleanup_free_ char *msg = NULL;
        int r;

        for (int i = 1; i < argc; i++) {
                const char *arg = argv[i], *name, *eq, *value;
                const ConfigKey *k = NULL;
                size_t name_len;

                if (streq(arg, "--")) {
                        if (i + 1 < argc) {
                                *ret_error = strf("unexpected argument '%s'", argv[i + 1]);
                                return *ret_error ? CONFIG_E_INVALID : -ENOMEM;
                        }
                        return 0;
                }
                if (streq(arg, "-h") || streq(arg, "--help"))
                        return CONFIG_E_HELP;
                if (streq(arg, "--version"))
                        return CONFIG_E_VERSION;
                if (strncmp(arg, "--", 2) != 0) {
                        *ret_error = arg[0] == '-' ? strf("unknown option '%s'", arg) :
                                                     strf("unexpected argument '%s'", arg);
                        return *ret_error ? CONFIG_E_INVALID : -ENOMEM;
                }

                name = arg + 2;
                eq = strchr(name, '=');
                name_len = eq ? (size_t)(eq - name) : strlen(name);

                if (!(name_len == 6 && strncmp(name, "config", 6) == 0)) {
                        k = key_find_flag(name, name_len);
                        if (!k) {
                                *ret_error = strf("unknown option '--%.*s'", (int)name_len, name);
                                return *ret_error ? CONFIG_E_INVALID : -ENOMEM;
                        }
                }

                if (eq)
                        value = eq + 1;
                else if (k && k->type == CONFIG_TYPE_BOOL)
                        value = "true";
                else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0)
                        value = argv[++i];
                else {
                        *ret_error = strf("--%.*s: missing value", (int)name_len, name);
                        return *ret_error ? CONFIG_E_INVALID : -ENOMEM;
                }

                if (!k) {
                        if (value[0] == 0) {
                                *ret_error = strf("--config: a path is required");
                                return *ret_error ? CONFIG_E_INVALID : -ENOMEM;
                        }
                        continue;
                }
                if (!c)
                        continue;

                r = config_set(c, k, value, &msg);
                if (r == CONFIG_E_INVALID) {
                        *ret_error = strf("--%.*s: %s", (int)name_len, name, msg);
                        return *ret_error ? CONFIG_E_INVALID : -ENOMEM;
                }
                if (r != 0)
                        return r;
        }
        return 0;
}

int config_parse_args(Config *c, int argc, char **argv, char **ret_error) {
        return config_walk_args(c, argc, argv, ret_error);
}

const char *config_find_path(int argc, char **argv) {
        const char *path = NULL;

        for (int i = 1; i < argc; i++) {
                const char *arg = argv[i];

                if (streq(arg, "--"))
                        break;
                if (strncmp(arg, "--config=", 9) == 0)
                        path = arg + 9;
                else if (streq(arg, "--config") && i + 1 < argc)
                        path = argv[++i];
                else if (strncmp(arg, "--", 2) == 0 && !strchr(arg, '=') && i + 1 < argc &&
                         strncmp(argv[i + 1], "--", 2) != 0) {
                        /* Skip a flag's separate value, unless it is a bool flag. */
                        const ConfigKey *k = key_find_flag(arg + 2, strlen(arg + 2));

                        if (k && k->type != CONFIG_TYPE_BOOL)
                                i++;
                }
        }
        return path;
}

int config_load(Config *c, int argc, char **argv, char **ret_error) {
        const char *path;
        int r;

        r = config_walk_args(NULL, argc, argv, ret_error);
        if (r != 0)
                return r;

        path = config_find_path(argc, argv);
        r = config_load_file(c, path ? path : CONFIG_DEFAULT_PATH, !path, ret_error);
        if (r != 0)
                return r;

        return config_parse_args(c, argc, argv, ret_error);
}

/* ---- backend URL ------------------------------------------------------ */

static bool host_char_ok(char ch) {
        return isalnum((unsigned char)ch) || ch == '-' || ch == '.' || ch == '_';
}

static int parse_port(const char *s, size_t len, unsigned *ret) {
        unsigned v = 0;

        if (len == 0 || len > 5)
                return -EINVAL;
        for (size_t i = 0; i < len; i++) {
                if (!isdigit((unsigned char)s[i]))
                        return -EINVAL;
                v = v * 10 + (unsigned)(s[i] - '0');
        }
        if (v < 1 || v > 65535)
                return -EINVAL;
        *ret = v;
        return 0;
}

int config_parse_backend_url(const char *url, char **ret_target, bool *ret_tls, char **ret_error) {
        _cleanup_free_ char *copy = NULL, *host = NULL;
        char *p, *sep, *authority, *rest, *port_str = NULL, *target;
        unsigned port;
        bool tls, ipv6 = false;
        size_t len;

        copy = strdup(url);
        if (!copy)
                return -ENOMEM;

        sep = strstr(copy, "://");
        if (!sep)
                return invalid(ret_error, "missing scheme (expected http:// or https://)");
        *sep = 0;

        /* As the SDK, trailing slashes go before the rest is parsed. */
        len = strlen(sep + 3);
        while (len > 0 && sep[3 + len - 1] == '/')
                sep[3 + --len] = 0;
        if (strcasecmp(copy, "https") == 0)
                tls = true;
        else if (strcasecmp(copy, "http") == 0)
                tls = false;
        else
                return invalid(ret_error, "unsupported scheme '%s' (expected http or https)", copy);

        authority = sep + 3;
        rest = authority + strcspn(authority, "/?#");
        if (strpbrk(rest, "?#"))
                return invalid(ret_error, "query strings and fragments are not supported in the backend URL");
        if (*rest == '/' && !streq(rest, "/"))
                return invalid(ret_error, "URL paths are not supported, got '%s'", rest);
        *rest = 0;

        if (strchr(authority, '@'))
                return invalid(ret_error, "user information in the backend URL is not supported");

        if (authority[0] == '[') {
                char buf[sizeof(struct in6_addr)];

                p = strchr(authority, ']');
                if (!p)
                        return invalid(ret_error, "unterminated IPv6 address (missing ']')");
                *p = 0;
                if (inet_pton(AF_INET6, authority + 1, buf) != 1)
                        return invalid(ret_error, "invalid IPv6 address '%s'", authority + 1);
                if (p[1] == ':')
                        port_str = p + 2;
                else if (p[1] != 0)
                        return invalid(ret_error, "unexpected '%s' after the IPv6 address", p + 1);
                host = strdup(authority + 1);
                ipv6 = true;
        } else {
                p = strchr(authority, ':');
                if (p) {
                        *p = 0;
                        port_str = p + 1;
                        if (strchr(port_str, ':'))
                                return invalid(ret_error, "IPv6 addresses must be in brackets, as in "
                                               "'https://[::1]:8443'");
                }
                for (p = authority; *p; p++)
                        if (!host_char_ok(*p))
                                return invalid(ret_error, "invalid host name '%s'", authority);
                host = strdup(authority);
        }
        if (!host)
                return -ENOMEM;
        if (host[0] == 0)
                return invalid(ret_error, "missing host");
        for (p = host; *p; p++)
                *p = (char)tolower((unsigned char)*p);

        /* "host:" with nothing after it means the default port, as in the SDK. */
        if (!port_str || port_str[0] == 0)
                port = tls ? 443 : 80;
        else if (parse_port(port_str, strlen(port_str), &port) < 0)
                return invalid(ret_error, "invalid port '%s' (expected 1..65535)", port_str);

        target = ipv6 ? strf("[%s]:%u", host, port) : strf("%s:%u", host, port);
        if (!target)
                return -ENOMEM;

        *ret_target = target;
        *ret_tls = tls;
        return 0;
}

/* ---- reload ----------------------------------------------------------- */

static size_t field_size(ConfigType type) {
        switch (type) {
        case CONFIG_TYPE_LOG_LEVEL:
                return sizeof(LogLevel);
        case CONFIG_TYPE_SIZE:
        case CONFIG_TYPE_UINT:
                return sizeof(uint64_t);
        case CONFIG_TYPE_INT:
                return sizeof(int64_t);
        case CONFIG_TYPE_BOOL:
                return sizeof(bool);
        case CONFIG_TYPE_RATE:
                return sizeof(double);
        case CONFIG_TYPE_POLICY:
                return sizeof(AdmissionPolicy);
        default:
                return 0;       /* strings */
        }
}

static bool key_differs(const Config *a, const Config *b, const ConfigKey *k) {
        const void *x = (const uint8_t *)a + k->offset, *y = (const uint8_t *)b + k->offset;
        size_t n = field_size(k->type);

        if (n)
                return memcmp(x, y, n) != 0;
        return !streq(*(char *const *)x ? *(char *const *)x : "", *(char *const *)y ? *(char *const *)y : "");
}

int config_reload(Config *running, Config *fresh, char *restart_keys, size_t size) {
        size_t off = 0;
        int n = 0;

        if (size > 0)
                restart_keys[0] = 0;
        for (size_t i = 0; i < ELEMENTSOF(config_keys); i++) {
                const ConfigKey *k = &config_keys[i];
                uint8_t *x = (uint8_t *)running + k->offset, *y = (uint8_t *)fresh + k->offset;
                size_t bytes = field_size(k->type);

                if (!key_differs(running, fresh, k))
                        continue;
                if (!k->reloadable) {
                        int r = snprintf(restart_keys + off, size > off ? size - off : 0, "%s%s", n ? ", " : "",
                                         k->name);

                        off += r > 0 ? (size_t)r : 0;
                        n++;
                        continue;
                }
                if (bytes)
                        memcpy(x, y, bytes);
                else {
                        /* Swap the strings: each Config still frees its own. */
                        char *t = *(char **)x;

                        *(char **)x = *(char **)y;
                        *(char **)y = t;
                }
        }
        return n;
}

/* ---- usage ------------------------------------------------------------ */

static const char *metavar(ConfigType type) {
        switch (type) {
        case CONFIG_TYPE_PATH:
        case CONFIG_TYPE_OPTIONAL_PATH:
        case CONFIG_TYPE_SOCKET_PATH:
                return "PATH";
        case CONFIG_TYPE_URL:
                return "URL";
        case CONFIG_TYPE_LOG_LEVEL:
                return "LEVEL";
        case CONFIG_TYPE_SIZE:
                return "SIZE";
        case CONFIG_TYPE_UINT:
        case CONFIG_TYPE_INT:
                return "N";
        case CONFIG_TYPE_BOOL:
                return "[=BOOL]";
        case CONFIG_TYPE_RATE:
                return "RATE";
        case CONFIG_TYPE_POLICY:
                return "POLICY";
        }
        return "VALUE";
}

void config_usage(FILE *f) {
        char flag[64], left[96];

        fprintf(f,
                "Usage: cwsandboxd [OPTIONS]\n"
                "\n"
                "Holds sandbox sessions for the processes of this host and serves them\n"
                "on a local socket.\n"
                "\n"
                "  -h --help                        Show this help and exit\n"
                "     --version                     Show the version and exit\n"
                "     --config PATH                 Configuration file\n"
                "                                   (default: %s)\n",
                CONFIG_DEFAULT_PATH);

        for (size_t i = 0; i < ELEMENTSOF(config_keys); i++) {
                const ConfigKey *k = &config_keys[i];
                const char *mv = metavar(k->type);

                key_to_flag(k->name, flag, sizeof(flag));
                snprintf(left, sizeof(left), "--%s%s%s", flag, mv[0] == '[' ? "" : " ", mv);
                fprintf(f, "     %-29s %s\n", left, k->help);
                fprintf(f, "%35s(default: %s)\n", "",
                        k->default_value[0] ? k->default_value : "none");
        }

        fprintf(f,
                "\n"
                "Every option is also a key of the configuration file, spelled with\n"
                "'_' for '-' (e.g. max_frame_bytes = 32MiB); options override the file.\n"
                "Sizes take K, M, G, KiB, MiB or GiB (powers of 1024).\n");
}
