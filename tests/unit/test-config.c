/*
 * Unit test of config.c: defaults, every key with good and bad values (from a
 * file and as a flag), file syntax (sections, quotes, comments), flags over
 * the file, --help/--version, error messages, sizes and backend URL rules.
 * Prints TAP.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "macro.h"
#include "tap.h"

static char tmpdir[] = "/tmp/test-config-XXXXXX";

#define check_eq(got, want, what) do {                                          \
                long long _g = (long long)(got), _w = (long long)(want);        \
                ok(_g == _w, "%s: got %lld, want %lld", (what), _g, _w);        \
        } while (0)

static void check_str(const char *got, const char *want, const char *what) {
        ok(got && want ? streq(got, want) : got == want, "%s: got '%s', want '%s'", what,
           got ? got : "(null)", want ? want : "(null)");
}

static char *strf(const char *fmt, ...) _printf_(1, 2);

static char *strf(const char *fmt, ...) {
        va_list ap;
        char *s;

        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                abort();
        va_end(ap);
        return s;
}

/* Write @text to a file in the test directory; returns its path (free it). */
static char *write_file(const char *name, const char *text) {
        char *path = strf("%s/%s", tmpdir, name);
        FILE *f = fopen(path, "we");

        if (!f || fputs(text, f) < 0 || fclose(f) != 0)
                abort();
        return path;
}

/* The value of @key in @c as text, for comparisons. Caller frees. */
static char *config_get(const Config *c, const char *key) {
        if (streq(key, "socket"))
                return strdup(c->socket_path);
        if (streq(key, "state_dir"))
                return strdup(c->state_dir);
        if (streq(key, "backend_url"))
                return strf("%s|%s|%s", c->backend_url, c->backend_target ? c->backend_target : "(null)",
                            c->backend_tls ? "tls" : "plain");
        if (streq(key, "api_key_file"))
                return strdup(c->api_key_file);
        if (streq(key, "log_level"))
                return strdup(log_level_to_string(c->log_level));
        if (streq(key, "max_frame_bytes"))
                return strf("%" PRIu64, c->max_frame_bytes);
        if (streq(key, "max_connections"))
                return strf("%" PRIu64, c->max_connections);
        if (streq(key, "max_connections_per_uid"))
                return strf("%" PRIu64, c->max_connections_per_uid);
        if (streq(key, "default_linger_seconds"))
                return strf("%" PRId64, c->default_linger_seconds);
        if (streq(key, "reap_interval_seconds"))
                return strf("%" PRIu64, c->reap_interval_seconds);
        if (streq(key, "drain_timeout_seconds"))
                return strf("%" PRIu64, c->drain_timeout_seconds);
        if (streq(key, "stop_on_shutdown"))
                return strdup(c->stop_on_shutdown ? "true" : "false");
        if (streq(key, "local_backend_path"))
                return strdup(c->local_backend_path);
        if (streq(key, "max_file_bytes"))
                return strf("%" PRIu64, c->max_file_bytes);
        if (streq(key, "channel_pool_size"))
                return strf("%" PRIu64, c->channel_pool_size);
        if (streq(key, "max_sandboxes"))
                return strf("%" PRIu64, c->max_sandboxes);
        if (streq(key, "max_creates_per_second"))
                return strf("%g", c->max_creates_per_second);
        if (streq(key, "session_max_sandboxes"))
                return strf("%" PRIu64, c->session_max_sandboxes);
        if (streq(key, "session_max_creates_per_second"))
                return strf("%g", c->session_max_creates_per_second);
        if (streq(key, "admission_policy"))
                return strdup(c->admission_policy == ADMISSION_WAIT ? "wait" : "reject");
        if (streq(key, "metrics_textfile"))
                return strdup(c->metrics_textfile);
        if (streq(key, "metrics_textfile_interval_seconds"))
                return strf("%" PRIu64, c->metrics_textfile_interval_seconds);
        return strdup("(unknown key)");
}

static const char *const all_keys[] = {
        "socket", "state_dir", "backend_url", "api_key_file", "log_level", "max_frame_bytes", "max_connections",
        "max_connections_per_uid", "default_linger_seconds", "reap_interval_seconds", "drain_timeout_seconds",
        "stop_on_shutdown", "local_backend_path", "max_file_bytes", "channel_pool_size", "max_sandboxes",
        "max_creates_per_second", "session_max_sandboxes", "session_max_creates_per_second", "admission_policy",
        "metrics_textfile", "metrics_textfile_interval_seconds",
};

static char *key_to_flag(const char *key) {
        char *s = strdup(key);

        for (char *p = s; *p; p++)
                if (*p == '_')
                        *p = '-';
        return s;
}

static void test_defaults(void) {
        static const struct {
                const char *key, *want;
        } table[] = {
                { "socket", "/run/cwsandboxd/cwsandboxd.sock" },
                { "state_dir", "/var/lib/cwsandboxd" },
                { "backend_url", "|(null)|plain" },
                { "api_key_file", "" },
                { "log_level", "info" },
                { "max_frame_bytes", "16777216" },
                { "max_connections", "1024" },
                { "max_connections_per_uid", "128" },
                { "default_linger_seconds", "30" },
                { "reap_interval_seconds", "60" },
                { "drain_timeout_seconds", "10" },
                { "stop_on_shutdown", "false" },
                { "local_backend_path", "" },
                { "max_file_bytes", "268435456" },
                { "channel_pool_size", "8" },
                { "max_sandboxes", "0" },
                { "max_creates_per_second", "0" },
                { "session_max_sandboxes", "0" },
                { "session_max_creates_per_second", "0" },
                { "admission_policy", "wait" },
                { "metrics_textfile", "" },
                { "metrics_textfile_interval_seconds", "15" },
        };
        Config c;

        check_eq(config_init_defaults(&c), 0, "config_init_defaults");
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                _cleanup_free_ char *got = config_get(&c, table[i].key);
                _cleanup_free_ char *what = strf("default %s", table[i].key);

                check_str(got, table[i].want, what);
        }
        config_free(&c);
        config_free(&c);
        config_free(NULL);
        ok(true, "config_free twice and on NULL");
}

/* Each key with good and bad values. @want is the stored value, NULL = refused. */
static const struct {
        const char *key, *value, *want;
} key_table[] = {
        { "socket", "/run/x.sock", "/run/x.sock" },
        { "socket", "relative.sock", NULL },
        { "socket", "", NULL },
        { "socket", "/tmp/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", NULL },
        { "state_dir", "/srv/state", "/srv/state" },
        { "state_dir", "state", NULL },
        { "state_dir", "", NULL },
        { "backend_url", "https://api.example.com", "https://api.example.com|api.example.com:443|tls" },
        { "backend_url", "http://127.0.0.1:8080/", "http://127.0.0.1:8080/|127.0.0.1:8080|plain" },
        { "backend_url", "", "|(null)|plain" },
        { "backend_url", "ftp://x", NULL },
        { "backend_url", "https://x/v1", NULL },
        { "api_key_file", "/etc/cwsandboxd/key", "/etc/cwsandboxd/key" },
        { "api_key_file", "", "" },
        { "api_key_file", "key", NULL },
        { "log_level", "debug", "debug" },
        { "log_level", "error", "error" },
        { "log_level", "warning", "warning" },
        { "log_level", "notice", "notice" },
        { "log_level", "loud", NULL },
        { "log_level", "", NULL },
        { "max_frame_bytes", "1024", "1024" },
        { "max_frame_bytes", "1K", "1024" },
        { "max_frame_bytes", "32MiB", "33554432" },
        { "max_frame_bytes", "32 M", "33554432" },
        { "max_frame_bytes", "256MiB", "268435456" },
        { "max_frame_bytes", "1023", NULL },
        { "max_frame_bytes", "257M", NULL },
        { "max_frame_bytes", "1G", NULL },
        { "max_frame_bytes", "abc", NULL },
        { "max_frame_bytes", "-1", NULL },
        { "max_frame_bytes", "1.5M", NULL },
        { "max_frame_bytes", "10MB", NULL },
        { "max_connections", "1", "1" },
        { "max_connections", "5000", "5000" },
        { "max_connections", "0", NULL },
        { "max_connections", "-3", NULL },
        { "max_connections", "12x", NULL },
        { "max_connections", "+5", NULL },
        { "max_connections", "5 5", NULL },
        { "max_connections", "99999999999999999999999", NULL },
        { "max_connections_per_uid", "16", "16" },
        { "max_connections_per_uid", "0", NULL },
        { "default_linger_seconds", "-1", "-1" },
        { "default_linger_seconds", "0", "0" },
        { "default_linger_seconds", "3600", "3600" },
        { "default_linger_seconds", "-2", NULL },
        { "default_linger_seconds", "soon", NULL },
        { "reap_interval_seconds", "1", "1" },
        { "reap_interval_seconds", "0", NULL },
        { "reap_interval_seconds", "-1", NULL },
        { "drain_timeout_seconds", "0", "0" },
        { "drain_timeout_seconds", "3601", NULL },
        { "stop_on_shutdown", "true", "true" },
        { "stop_on_shutdown", "yes", "true" },
        { "stop_on_shutdown", "1", "true" },
        { "stop_on_shutdown", "YES", "true" },
        { "stop_on_shutdown", "no", "false" },
        { "stop_on_shutdown", "0", "false" },
        { "stop_on_shutdown", "false", "false" },
        { "stop_on_shutdown", "maybe", NULL },
        { "stop_on_shutdown", "", NULL },
        { "local_backend_path", "/usr/libexec/cwsandbox-local", "/usr/libexec/cwsandbox-local" },
        { "local_backend_path", "", "" },
        { "local_backend_path", "cwsandbox-local", NULL },
        { "max_file_bytes", "1GiB", "1073741824" },
        { "max_file_bytes", "1", "1" },
        { "max_file_bytes", "0", NULL },
        { "max_file_bytes", "100G", NULL },
        { "max_file_bytes", "99999999999999999999G", NULL },
        { "channel_pool_size", "1", "1" },
        { "channel_pool_size", "64", "64" },
        { "channel_pool_size", "65", NULL },
        { "channel_pool_size", "0", NULL },
};

static void test_keys_in_file(void) {
        for (size_t i = 0; i < ELEMENTSOF(key_table); i++) {
                _cleanup_free_ char *text = NULL, *path = NULL, *err = NULL, *got = NULL;
                _cleanup_free_ char *prefix = NULL;
                Config c;
                int r;

                text = strf("# test\n%s = %s\n", key_table[i].key, key_table[i].value);
                path = write_file("keys.conf", text);
                if (config_init_defaults(&c) < 0)
                        abort();

                r = config_load_file(&c, path, false, &err);
                got = config_get(&c, key_table[i].key);
                if (key_table[i].want) {
                        ok(r == 0 && streq(got, key_table[i].want), "file %s = '%s': r=%d got '%s' want '%s' (%s)",
                           key_table[i].key, key_table[i].value, r, got, key_table[i].want, err ? err : "");
                } else {
                        prefix = strf("%s:2: %s: ", path, key_table[i].key);
                        ok(r == CONFIG_E_INVALID && err && strncmp(err, prefix, strlen(prefix)) == 0,
                           "file %s = '%s' refused: r=%d, error '%s'", key_table[i].key,
                           key_table[i].value, r, err ? err : "(null)");
                }
                config_free(&c);
        }
}

static void test_keys_as_flags(void) {
        for (size_t i = 0; i < ELEMENTSOF(key_table); i++) {
                _cleanup_free_ char *flag = key_to_flag(key_table[i].key);
                _cleanup_free_ char *arg = strf("--%s=%s", flag, key_table[i].value);
                _cleanup_free_ char *err = NULL, *got = NULL, *prefix = NULL;
                char *argv[] = { (char *)"cwsandboxd", arg, NULL };
                Config c;
                int r;

                if (config_init_defaults(&c) < 0)
                        abort();
                r = config_parse_args(&c, 2, argv, &err);
                got = config_get(&c, key_table[i].key);
                if (key_table[i].want) {
                        ok(r == 0 && streq(got, key_table[i].want), "%s: r=%d got '%s' want '%s' (%s)",
                           arg, r, got, key_table[i].want, err ? err : "");
                } else {
                        prefix = strf("--%s: ", flag);
                        ok(r == CONFIG_E_INVALID && err && strncmp(err, prefix, strlen(prefix)) == 0,
                           "%s refused: r=%d, error '%s'", arg, r, err ? err : "(null)");
                }
                config_free(&c);
        }
}

/* Whole files: syntax, and the exact message for a few errors. */
static void test_file_syntax(void) {
        static const struct {
                const char *text;
                int r;
                const char *error;      /* after "PATH:" */
                const char *key, *want;
        } table[] = {
                { "", 0, NULL, "socket", "/run/cwsandboxd/cwsandboxd.sock" },
                { "# only comments\n; and these\n\n   \n", 0, NULL, "log_level", "info" },
                { "[cwsandboxd]\nlog_level = debug\n", 0, NULL, "log_level", "debug" },
                { "  [ cwsandboxd ]  \nlog_level=debug", 0, NULL, "log_level", "debug" },
                { "log_level = debug\n[cwsandboxd]\nlog_level = error\n", 0, NULL, "log_level", "error" },
                { "socket = \"/run/a b.sock\"\n", 0, NULL, "socket", "/run/a b.sock" },
                { "  socket   =   /run/c.sock   \n", 0, NULL, "socket", "/run/c.sock" },
                { "socket=/run/d.sock\r\n", 0, NULL, "socket", "/run/d.sock" },
                { "\xef\xbb\xbfsocket = /run/bom.sock\n", 0, NULL, "socket", "/run/bom.sock" },
                { "api_key_file = \"\"\n", 0, NULL, "api_key_file", "" },
                { "log_level = debug\nlog_level = notice\n", 0, NULL, "log_level", "notice" },
                { "\t# indented comment\nlog_level = warning", 0, NULL, "log_level", "warning" },
                { "backend_url = \"https://h.example:8443/\"\n", 0, NULL, "backend_url",
                  "https://h.example:8443/|h.example:8443|tls" },
                { "\n\n\n\n\n\nsokcet = /run/x.sock\n", CONFIG_E_INVALID, "7: unknown key 'sokcet'", NULL, NULL },
                { "[other]\nsocket = /x\n", CONFIG_E_INVALID,
                  "1: unknown section '[other]' (only [cwsandboxd] is allowed)", NULL, NULL },
                { "[cwsandboxd\n", CONFIG_E_INVALID, "1: malformed section header '[cwsandboxd'", NULL, NULL },
                { "socket /run/x\n", CONFIG_E_INVALID, "1: expected 'key = value', got 'socket /run/x'",
                  NULL, NULL },
                { "= x\n", CONFIG_E_INVALID, "1: missing key before '='", NULL, NULL },
                { "socket = \"/run/x\n", CONFIG_E_INVALID, "1: socket: unterminated quote", NULL, NULL },
                { "socket = \"\n", CONFIG_E_INVALID, "1: socket: unterminated quote", NULL, NULL },
                { "max_frame_bytes = abc\n", CONFIG_E_INVALID, "1: max_frame_bytes: invalid size 'abc'",
                  NULL, NULL },
                { "max_frame_bytes = 512\n", CONFIG_E_INVALID,
                  "1: max_frame_bytes: size '512' is out of range 1KiB..256MiB", NULL, NULL },
                { "channel_pool_size = 99\n", CONFIG_E_INVALID,
                  "1: channel_pool_size: '99' is out of range 1..64", NULL, NULL },
                { "max-frame-bytes = 1M\n", CONFIG_E_INVALID, "1: unknown key 'max-frame-bytes'", NULL, NULL },
                { "log_level = debug # trailing comment\n", CONFIG_E_INVALID,
                  "1: log_level: invalid log level 'debug # trailing comment' "
                  "(expected error, warning, notice, info or debug)", NULL, NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                _cleanup_free_ char *path = write_file("syntax.conf", table[i].text);
                _cleanup_free_ char *err = NULL, *want = NULL, *got = NULL;
                Config c;
                int r;

                if (config_init_defaults(&c) < 0)
                        abort();
                r = config_load_file(&c, path, false, &err);
                if (table[i].error) {
                        want = strf("%s:%s", path, table[i].error);
                        ok(r == table[i].r && err && streq(err, want), "syntax case %zu: r=%d error '%s', want '%s'",
                           i, r, err ? err : "(null)", want);
                } else {
                        got = config_get(&c, table[i].key);
                        ok(r == 0 && streq(got, table[i].want), "syntax case %zu: r=%d %s = '%s', want '%s' (%s)",
                           i, r, table[i].key, got, table[i].want, err ? err : "");
                }
                config_free(&c);
        }

        /* A NUL byte in the middle of a line. */
        {
                _cleanup_free_ char *path = strf("%s/nul.conf", tmpdir), *err = NULL;
                FILE *f = fopen(path, "we");
                Config c;
                int r;

                if (!f)
                        abort();
                fwrite("socket = /a\0b\n", 1, 14, f);
                fclose(f);
                if (config_init_defaults(&c) < 0)
                        abort();
                r = config_load_file(&c, path, false, &err);
                ok(r == CONFIG_E_INVALID && err && strstr(err, ":1: line contains a NUL byte"),
                   "NUL byte refused: r=%d error '%s'", r, err ? err : "(null)");
                config_free(&c);
        }
}

static void test_missing_file(void) {
        _cleanup_free_ char *path = strf("%s/does-not-exist.conf", tmpdir), *err = NULL, *want = NULL;
        Config c;
        int r;

        if (config_init_defaults(&c) < 0)
                abort();
        r = config_load_file(&c, path, true, &err);
        ok(r == 0 && !err, "missing file with missing_ok: r=%d", r);
        r = config_load_file(&c, path, false, &err);
        want = strf("%s: cannot open: %s", path, strerror(ENOENT));
        ok(r == -ENOENT && err && streq(err, want), "missing file without missing_ok: r=%d error '%s'",
           r, err ? err : "(null)");
        config_free(&c);
}

static void test_flags(void) {
        static const struct {
                const char *args[6];
                int r;
                const char *error;
                const char *key, *want;
        } table[] = {
                { { "--socket", "/run/f.sock" }, 0, NULL, "socket", "/run/f.sock" },
                { { "--socket=/run/g.sock" }, 0, NULL, "socket", "/run/g.sock" },
                { { "--log-level", "debug", "--log-level", "error" }, 0, NULL, "log_level", "error" },
                { { "--stop-on-shutdown" }, 0, NULL, "stop_on_shutdown", "true" },
                { { "--stop-on-shutdown", "--log-level=debug" }, 0, NULL, "stop_on_shutdown", "true" },
                { { "--stop-on-shutdown=no" }, 0, NULL, "stop_on_shutdown", "false" },
                { { "--default-linger-seconds", "-1" }, 0, NULL, "default_linger_seconds", "-1" },
                { { "--config", "/nonexistent", "--socket=/run/h.sock" }, 0, NULL, "socket", "/run/h.sock" },
                { { "--backend-url", "http://[::1]:8080" }, 0, NULL, "backend_url",
                  "http://[::1]:8080|[::1]:8080|plain" },
                { { "--" }, 0, NULL, "socket", "/run/cwsandboxd/cwsandboxd.sock" },
                { { "--max-frame-bytes", "abc" }, CONFIG_E_INVALID, "--max-frame-bytes: invalid size 'abc'",
                  NULL, NULL },
                { { "--sokcet", "/x" }, CONFIG_E_INVALID, "unknown option '--sokcet'", NULL, NULL },
                { { "--max_frame_bytes=1M" }, CONFIG_E_INVALID, "unknown option '--max_frame_bytes'",
                  NULL, NULL },
                { { "-s" }, CONFIG_E_INVALID, "unknown option '-s'", NULL, NULL },
                { { "extra" }, CONFIG_E_INVALID, "unexpected argument 'extra'", NULL, NULL },
                { { "--", "extra" }, CONFIG_E_INVALID, "unexpected argument 'extra'", NULL, NULL },
                { { "--socket" }, CONFIG_E_INVALID, "--socket: missing value", NULL, NULL },
                { { "--socket", "--log-level=debug" }, CONFIG_E_INVALID, "--socket: missing value", NULL, NULL },
                { { "--config" }, CONFIG_E_INVALID, "--config: missing value", NULL, NULL },
                { { "--config=" }, CONFIG_E_INVALID, "--config: a path is required", NULL, NULL },
                { { "--stop-on-shutdown=maybe" }, CONFIG_E_INVALID,
                  "--stop-on-shutdown: invalid boolean 'maybe' (expected true, false, yes, no, 1 or 0)",
                  NULL, NULL },
                { { "--backend-url", "ftp://x" }, CONFIG_E_INVALID,
                  "--backend-url: unsupported scheme 'ftp' (expected http or https)", NULL, NULL },
                { { "--help" }, CONFIG_E_HELP, NULL, NULL, NULL },
                { { "-h" }, CONFIG_E_HELP, NULL, NULL, NULL },
                { { "--log-level=debug", "--version" }, CONFIG_E_VERSION, NULL, NULL, NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                _cleanup_free_ char *err = NULL, *got = NULL;
                char *argv[8] = { (char *)"cwsandboxd" };
                int argc = 1, r;
                Config c;

                for (size_t k = 0; k < ELEMENTSOF(table[i].args) && table[i].args[k]; k++)
                        argv[argc++] = (char *)table[i].args[k];

                if (config_init_defaults(&c) < 0)
                        abort();
                r = config_parse_args(&c, argc, argv, &err);
                if (table[i].key) {
                        got = config_get(&c, table[i].key);
                        ok(r == 0 && streq(got, table[i].want), "flags case %zu (%s): r=%d %s = '%s', want '%s' (%s)",
                           i, argv[1] ? argv[1] : "", r, table[i].key, got, table[i].want, err ? err : "");
                } else if (table[i].error) {
                        ok(r == table[i].r && err && streq(err, table[i].error),
                           "flags case %zu: r=%d error '%s', want '%s'", i, r, err ? err : "(null)",
                           table[i].error);
                } else {
                        ok(r == table[i].r && !err, "flags case %zu (%s): r=%d, want %d", i, argv[1], r, table[i].r);
                }
                config_free(&c);
        }
}

static void test_find_path(void) {
        static const struct {
                const char *args[6];
                const char *want;
        } table[] = {
                { { NULL }, NULL },
                { { "--config", "/a.conf" }, "/a.conf" },
                { { "--config=/b.conf" }, "/b.conf" },
                { { "--config=/b.conf", "--config", "/c.conf" }, "/c.conf" },
                { { "--socket", "--config" }, NULL },
                { { "--stop-on-shutdown", "--config", "/d.conf" }, "/d.conf" },
                { { "--", "--config", "/e.conf" }, NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                char *argv[8] = { (char *)"cwsandboxd" };
                int argc = 1;

                for (size_t k = 0; k < ELEMENTSOF(table[i].args) && table[i].args[k]; k++)
                        argv[argc++] = (char *)table[i].args[k];
                check_str(config_find_path(argc, argv), table[i].want, "config_find_path");
        }
}

/* The whole sequence: defaults, file named by --config, flags on top. */
static void test_load(void) {
        _cleanup_free_ char *path = NULL, *arg = NULL, *err = NULL, *bad = NULL, *badarg = NULL;
        Config c;
        int r;

        path = write_file("full.conf",
                          "# cwsandboxd test configuration\n"
                          "[cwsandboxd]\n"
                          "socket = /run/file.sock\n"
                          "log_level = debug\n"
                          "max_frame_bytes = 1MiB\n"
                          "backend_url = https://file.example\n");
        arg = strf("--config=%s", path);

        {
                char *argv[] = { (char *)"cwsandboxd", arg, (char *)"--log-level", (char *)"error",
                                 (char *)"--backend-url=", NULL };

                if (config_init_defaults(&c) < 0)
                        abort();
                r = config_load(&c, 5, argv, &err);
                check_eq(r, 0, "config_load with file and flags");
                check_str(c.socket_path, "/run/file.sock", "file value kept");
                check_str(log_level_to_string(c.log_level), "error", "flag overrides file");
                check_eq(c.max_frame_bytes, 1 << 20, "file size applied");
                check_str(c.backend_url, "", "flag empties backend_url");
                ok(c.backend_target == NULL && !c.backend_tls, "no target once backend_url is empty");
                config_free(&c);
        }

        /* --help works even when the file is broken. */
        bad = write_file("bad.conf", "bogus = 1\n");
        badarg = strf("--config=%s", bad);
        {
                char *argv[] = { (char *)"cwsandboxd", badarg, (char *)"--help", NULL };

                if (config_init_defaults(&c) < 0)
                        abort();
                r = config_load(&c, 3, argv, &err);
                check_eq(r, CONFIG_E_HELP, "--help before a broken file is read");
                config_free(&c);
        }
        {
                char *argv[] = { (char *)"cwsandboxd", badarg, NULL };
                _cleanup_free_ char *want = strf("%s:1: unknown key 'bogus'", bad);

                if (config_init_defaults(&c) < 0)
                        abort();
                r = config_load(&c, 2, argv, &err);
                ok(r == CONFIG_E_INVALID && err && streq(err, want), "broken file: r=%d error '%s'",
                   r, err ? err : "(null)");
                config_free(&c);
        }
        {
                _cleanup_free_ char *missing = strf("--config=%s/missing.conf", tmpdir);
                char *argv[] = { (char *)"cwsandboxd", missing, NULL };

                free(err);
                err = NULL;
                if (config_init_defaults(&c) < 0)
                        abort();
                r = config_load(&c, 2, argv, &err);
                ok(r == -ENOENT && err, "an explicit --config must exist: r=%d error '%s'", r, err ? err : "(null)");
                config_free(&c);
        }
}

static void test_sizes(void) {
        static const struct {
                const char *s;
                int r;
                uint64_t v;
        } table[] = {
                { "0", 0, 0 },
                { "1", 0, 1 },
                { "1k", 0, 1024 },
                { "1K", 0, 1024 },
                { "1KiB", 0, 1024 },
                { "2 kib", 0, 2048 },
                { "3M", 0, 3 << 20 },
                { "3MiB", 0, 3 << 20 },
                { "1G", 0, 1 << 30 },
                { "4GiB", 0, UINT64_C(4) << 30 },
                { "18446744073709551615", 0, UINT64_MAX },
                { "18446744073709551616", -EINVAL, 0 },
                { "17179869184G", -EINVAL, 0 },
                { "", -EINVAL, 0 },
                { "K", -EINVAL, 0 },
                { " 1", -EINVAL, 0 },
                { "1 ", -EINVAL, 0 },
                { "1T", -EINVAL, 0 },
                { "1KB", -EINVAL, 0 },
                { "-1", -EINVAL, 0 },
                { "0x10", -EINVAL, 0 },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                uint64_t v = 12345;
                int r = config_parse_size(table[i].s, &v);

                ok(r == table[i].r && (r != 0 || v == table[i].v),
                   "size '%s': r=%d v=%" PRIu64 ", want r=%d v=%" PRIu64, table[i].s, r, v,
                   table[i].r, table[i].v);
        }
}

static void test_backend_url(void) {
        static const struct {
                const char *url;
                const char *target;     /* NULL = refused */
                bool tls;
                const char *error;      /* substring of the message */
        } table[] = {
                { "https://api.example.com", "api.example.com:443", true, NULL },
                { "https://api.example.com/", "api.example.com:443", true, NULL },
                { "https://api.example.com//", "api.example.com:443", true, NULL },
                { "http://api.example.com", "api.example.com:80", false, NULL },
                { "http://localhost:50051", "localhost:50051", false, NULL },
                { "https://h:8443/", "h:8443", true, NULL },
                { "HTTPS://API.Example.COM", "api.example.com:443", true, NULL },
                { "http://127.0.0.1:8080", "127.0.0.1:8080", false, NULL },
                { "http://[::1]:8080", "[::1]:8080", false, NULL },
                { "https://[2001:db8::1]", "[2001:db8::1]:443", true, NULL },
                { "https://[::1]/", "[::1]:443", true, NULL },
                { "http://h:", "h:80", false, NULL },
                { "https://h/v1", NULL, false, "URL paths are not supported, got '/v1'" },
                { "https://h/v1/", NULL, false, "URL paths are not supported, got '/v1'" },
                { "ftp://h", NULL, false, "unsupported scheme 'ftp'" },
                { "grpc://h:1", NULL, false, "unsupported scheme 'grpc'" },
                { "h:443", NULL, false, "missing scheme" },
                { "", NULL, false, "missing scheme" },
                { "https://", NULL, false, "missing host" },
                { "https:///", NULL, false, "missing host" },
                { "http://:8080", NULL, false, "missing host" },
                { "https://h:0", NULL, false, "invalid port '0'" },
                { "https://h:65536", NULL, false, "invalid port '65536'" },
                { "https://h:http", NULL, false, "invalid port 'http'" },
                { "https://h:-1", NULL, false, "invalid port '-1'" },
                { "https://h?x=1", NULL, false, "query strings" },
                { "https://h/#frag", NULL, false, "fragments" },
                { "https://user:secret@h", NULL, false, "user information" },
                { "http://::1:8080", NULL, false, "must be in brackets" },
                { "http://[::1", NULL, false, "unterminated IPv6" },
                { "http://[nope]:80", NULL, false, "invalid IPv6 address 'nope'" },
                { "http://[::1]x", NULL, false, "unexpected 'x'" },
                { "http://bad host", NULL, false, "invalid host name" },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                _cleanup_free_ char *target = NULL, *err = NULL;
                bool tls = !table[i].tls;
                int r;

                r = config_parse_backend_url(table[i].url, &target, &tls, &err);
                if (table[i].target)
                        ok(r == 0 && target && streq(target, table[i].target) && tls == table[i].tls,
                           "url '%s': r=%d target '%s' tls=%d, want '%s' tls=%d (%s)", table[i].url, r,
                           target ? target : "(null)", tls, table[i].target, table[i].tls, err ? err : "");
                else
                        ok(r == CONFIG_E_INVALID && !target && err && strstr(err, table[i].error),
                           "url '%s' refused: r=%d error '%s', want '...%s...'", table[i].url, r,
                           err ? err : "(null)", table[i].error);
        }

        /* The user info must not leak into the message. */
        {
                _cleanup_free_ char *target = NULL, *err = NULL;
                bool tls;

                (void)config_parse_backend_url("https://user:secret@h", &target, &tls, &err);
                ok(err && !strstr(err, "secret"), "user info not echoed: '%s'", err ? err : "(null)");
        }
}

static void test_usage(void) {
        static const char *const flags[] = {
                "--help", "--version", "--config PATH", "--socket PATH", "--state-dir PATH",
                "--backend-url URL", "--api-key-file PATH", "--log-level LEVEL", "--max-frame-bytes SIZE",
                "--max-connections N", "--max-connections-per-uid N", "--default-linger-seconds N",
                "--reap-interval-seconds N", "--stop-on-shutdown[=BOOL]", "--local-backend-path PATH",
                "--max-file-bytes SIZE", "--channel-pool-size N",
                "(default: /etc/cwsandboxd/cwsandboxd.conf)", "(default: 16MiB)", "(default: 30)",
        };
        char *text = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&text, &size);

        if (!f)
                abort();
        config_usage(f);
        fclose(f);

        for (size_t i = 0; i < ELEMENTSOF(flags); i++)
                ok(strstr(text, flags[i]) != NULL, "usage mentions '%s'", flags[i]);
        free(text);
}

static void remove_tmpdir(void) {
        static const char *const names[] = { "keys.conf", "syntax.conf", "nul.conf", "full.conf", "bad.conf" };

        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                _cleanup_free_ char *path = strf("%s/%s", tmpdir, names[i]);

                (void)unlink(path);
        }
        (void)rmdir(tmpdir);
}

/* The shipped example loads as it is and says what the defaults say. */
static void test_example(void) {
        const char *path = getenv("CWSANDBOXD_EXAMPLE_CONF");
        _cleanup_free_ char *error = NULL;
        Config c, d;

        if (!path) {
                tap_skip("CWSANDBOXD_EXAMPLE_CONF is not set", "the example configuration");
                return;
        }
        check_eq(config_init_defaults(&c), 0, "defaults for the example");
        check_eq(config_load_file(&c, path, false, &error), 0, "the example configuration loads");
        if (error)
                diag("%s", error);
        check_eq(config_init_defaults(&d), 0, "defaults to compare");
        for (size_t i = 0; i < ELEMENTSOF(all_keys); i++) {
                _cleanup_free_ char *got = config_get(&c, all_keys[i]), *want = config_get(&d, all_keys[i]);
                _cleanup_free_ char *what = strf("the example's %s is the default", all_keys[i]);

                check_str(got, want, what);
        }
        config_free(&c);
        config_free(&d);
}

static void test_admission_keys(void) {
        static const struct { const char *arg; bool good; const char *key, *want; } cases[] = {
                { "--max-creates-per-second=2.5", true, "max_creates_per_second", "2.5" },
                { "--max-creates-per-second=0", true, "max_creates_per_second", "0" },
                { "--max-creates-per-second=-1", false, NULL, NULL },
                { "--max-creates-per-second=fast", false, NULL, NULL },
                { "--max-creates-per-second=1e9", false, NULL, NULL },
                { "--max-creates-per-second=nan", false, NULL, NULL },
                { "--admission-policy=reject", true, "admission_policy", "reject" },
                { "--admission-policy=maybe", false, NULL, NULL },
                { "--max-sandboxes=5", true, "max_sandboxes", "5" },
                { "--metrics-textfile-interval-seconds=0", false, NULL, NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *argv[] = { (char *)"cwsandboxd", (char *)cases[i].arg, NULL };
                _cleanup_free_ char *error = NULL, *got = NULL;
                Config c;
                int r;

                check_eq(config_init_defaults(&c), 0, "defaults");
                r = config_parse_args(&c, 2, argv, &error);
                check_eq(r, cases[i].good ? 0 : CONFIG_E_INVALID, cases[i].arg);
                if (cases[i].good) {
                        got = config_get(&c, cases[i].key);
                        check_str(got, cases[i].want, cases[i].arg);
                }
                config_free(&c);
        }
}

/* SIGHUP: the reloadable keys are taken, the others are named. */
static void test_reload(void) {
        Config running, fresh;
        char keys[256];
        int n;

        check_eq(config_init_defaults(&running), 0, "reload: running defaults");
        check_eq(config_init_defaults(&fresh), 0, "reload: fresh defaults");
        fresh.log_level = LOG_LEVEL_DEBUG;
        fresh.max_sandboxes = 7;
        fresh.max_creates_per_second = 2.5;
        fresh.admission_policy = ADMISSION_REJECT;
        free(fresh.api_key_file);
        fresh.api_key_file = strdup("/etc/cwsandboxd/key");
        free(fresh.socket_path);
        fresh.socket_path = strdup("/run/other.sock");
        fresh.channel_pool_size = 3;
        n = config_reload(&running, &fresh, keys, sizeof(keys));
        check_eq(n, 2, "reload: two keys need a restart");
        check_str(keys, "socket, channel_pool_size", "reload: named in table order");
        check_eq(running.log_level == LOG_LEVEL_DEBUG && running.max_sandboxes == 7 &&
                 running.max_creates_per_second == 2.5 && running.admission_policy == ADMISSION_REJECT, 1,
                 "reload: log level, limits and policy taken");
        check_str(running.api_key_file, "/etc/cwsandboxd/key", "reload: api_key_file taken");
        check_str(running.socket_path, "/run/cwsandboxd/cwsandboxd.sock", "reload: socket kept");
        check_eq((int)running.channel_pool_size, 8, "reload: channel_pool_size kept");
        config_free(&running);
        config_free(&fresh);
}

int main(void) {
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return 1;
        }

        test_defaults();
        test_keys_in_file();
        test_keys_as_flags();
        test_file_syntax();
        test_missing_file();
        test_flags();
        test_find_path();
        test_load();
        test_sizes();
        test_backend_url();
        test_usage();
        test_example();
        test_admission_keys();
        test_reload();

        remove_tmpdir();

        return done();
}
