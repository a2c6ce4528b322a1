/*
 * Config: the settings of cwsandboxd, from its configuration file and its
 * command line.
 *
 * The file is INI-style: "key = value" lines, optionally under a single
 * "[cwsandboxd]" section, with "#" and ";" comment lines. Every key is also a
 * flag: "--" + key with "_" replaced by "-", as "--key VALUE" or
 * "--key=VALUE". Flags override the file. Unknown keys and bad values are
 * errors that name the key (or flag) and, for the file, the line.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "log.h"

#define CONFIG_DEFAULT_PATH "/etc/cwsandboxd/cwsandboxd.conf"
#define CONFIG_RATE_MAX 10000           /* creates per second */

/* What a create that does not fit the admission limits gets. */
typedef enum AdmissionPolicy {
        ADMISSION_WAIT,                 /* queued until it fits or its caller gives up */
        ADMISSION_REJECT,               /* RESOURCE_EXHAUSTED at once */
} AdmissionPolicy;

enum {
        _CONFIG_E_SUCCESS,
        CONFIG_E_INVALID,       /* bad file, key, flag or value; see the message */
        CONFIG_E_HELP,          /* --help given: print config_usage() and exit 0 */
        CONFIG_E_VERSION,       /* --version given: print the version and exit 0 */
};

typedef struct Config {
        char *socket_path;              /* "socket": the local listening socket */
        char *state_dir;
        char *backend_url;              /* "" = start the embedded local backend */
        char *backend_target;           /* "host:port" from backend_url, NULL if embedded */
        bool backend_tls;               /* https:// */
        char *api_key_file;             /* "" = none */
        LogLevel log_level;
        uint64_t max_frame_bytes;
        uint64_t max_connections;
        uint64_t max_connections_per_uid;
        int64_t default_linger_seconds; /* -1 = never */
        uint64_t reap_interval_seconds;
        uint64_t drain_timeout_seconds;
        bool stop_on_shutdown;
        char *local_backend_path;       /* "" = the built-in default */
        uint64_t max_file_bytes;
        uint64_t channel_pool_size;
        uint64_t max_sandboxes;                 /* alive at once on this host; 0 = no limit */
        double max_creates_per_second;          /* 0 = no limit */
        uint64_t session_max_sandboxes;         /* per session; 0 = no limit */
        double session_max_creates_per_second;
        AdmissionPolicy admission_policy;
        char *metrics_textfile;                 /* "" = none */
        uint64_t metrics_textfile_interval_seconds;
} Config;

#define CONFIG_NULL(_x) { .log_level = LOG_LEVEL_INFO }

/**
 * config_init_defaults() - fill @c with the default of every key.
 * @c: the configuration; its previous contents are not freed.
 *
 * Returns 0 or -ENOMEM (then @c holds nothing that needs freeing).
 */
int config_init_defaults(Config *c);

/**
 * config_free() - free the strings held by @c and reset it to CONFIG_NULL.
 * @c: the configuration, or NULL.
 */
void config_free(Config *c);

/**
 * config_load_file() - apply the keys of a configuration file.
 * @c: the configuration to update (usually fresh defaults).
 * @path: the file.
 * @missing_ok: a file that does not exist is not an error.
 * @ret_error: on failure, set to a one-line message (caller frees), e.g.
 *             "/etc/cwsandboxd/cwsandboxd.conf:7: unknown key 'sokcet'".
 *
 * Keys are applied in file order; a key given twice keeps its last value.
 * On failure @c may hold the keys applied before the failing line.
 *
 * Returns 0; CONFIG_E_INVALID for a syntax error, unknown section or key, or
 * bad value; or a negative errno if the file cannot be read. *@ret_error is
 * set on every failure except -ENOMEM.
 */
int config_load_file(Config *c, const char *path, bool missing_ok, char **ret_error);

/**
 * config_parse_args() - apply command-line flags.
 * @c: the configuration to update (after the file has been loaded).
 * @argc: argument count, argv[0] included.
 * @argv: arguments; argv[0] is skipped.
 * @ret_error: on CONFIG_E_INVALID, set to a one-line message naming the flag,
 *             e.g. "--max-frame-bytes: invalid size 'abc'" (caller frees).
 *
 * "--config PATH" is accepted and skipped (see config_find_path()). Boolean
 * flags given without "=VALUE" mean true and do not take the next argument.
 * Positional arguments are errors.
 *
 * Returns 0; CONFIG_E_HELP or CONFIG_E_VERSION when --help/-h or --version is
 * given (@c may be partly updated; nothing is set in *@ret_error);
 * CONFIG_E_INVALID; or -ENOMEM.
 */
int config_parse_args(Config *c, int argc, char **argv, char **ret_error);

/**
 * config_find_path() - the file named by --config on the command line.
 * @argc: argument count, argv[0] included.
 * @argv: arguments.
 *
 * Only looks for --config; everything else is checked by
 * config_parse_args(). The last --config wins.
 *
 * Returns the path (pointing into @argv), or NULL if --config is absent.
 */
const char *config_find_path(int argc, char **argv);

/**
 * config_load() - the whole startup sequence on fresh defaults: find
 * --config, load that file (or CONFIG_DEFAULT_PATH if absent, which may then
 * be missing), then apply the flags. --help and --version are recognised
 * before the file is read, so they work with a broken file.
 * @c: the configuration, as filled by config_init_defaults().
 * @argc: argument count, argv[0] included.
 * @argv: arguments.
 * @ret_error: as for config_load_file() and config_parse_args().
 *
 * Returns as config_load_file() and config_parse_args().
 */
int config_load(Config *c, int argc, char **argv, char **ret_error);

/**
 * config_parse_backend_url() - check a backend URL and derive the gRPC target.
 * @url: "http://host[:port][/]" or "https://host[:port][/]"; the host may be a
 *       bracketed IPv6 literal.
 * @ret_target: set to "host:port" (IPv6 as "[addr]:port"); caller frees.
 * @ret_tls: set to true for https.
 * @ret_error: on CONFIG_E_INVALID, set to a message (caller frees).
 *
 * The rules of the SDK: scheme http or https (any case), a host is required,
 * no path other than "/" (trailing slashes are stripped first), the port
 * defaults to 443 for https and 80 for http. Stricter than the SDK, which
 * would silently drop them: user info, query strings and fragments are
 * refused, and the port must be 1..65535. The host is lowercased.
 *
 * Returns 0, CONFIG_E_INVALID or -ENOMEM. Outputs are set only on success.
 */
int config_parse_backend_url(const char *url, char **ret_target, bool *ret_tls, char **ret_error);

/**
 * config_parse_size() - parse a byte count: digits, optionally followed by
 * K, M, G, KiB, MiB or GiB (all powers of 1024, any case, spaces allowed
 * before the suffix).
 * @s: the text.
 * @ret: set to the byte count on success.
 *
 * Returns 0, or -EINVAL (also on overflow).
 */
int config_parse_size(const char *s, uint64_t *ret);

/**
 * config_reload() - a SIGHUP: take from @fresh (a whole new load) the keys a
 * reload applies (log_level, api_key_file, the admission limits and policy)
 * into @running; strings are swapped, so both stay freeable.
 * @restart_keys: gets the other keys whose values differ ("socket, state_dir"),
 *                which take effect at the next start only.
 *
 * Returns how many such keys there are.
 */
int config_reload(Config *running, Config *fresh, char *restart_keys, size_t size);

/**
 * config_usage() - print the usage text: every flag with its default.
 * @f: where to print.
 */
void config_usage(FILE *f);
