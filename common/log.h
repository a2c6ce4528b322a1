/* Logging: one line per event, with a level and optional session/sandbox ids. */
#pragma once

#include <stdarg.h>
#include <stdbool.h>

#include "macro.h"

typedef enum LogLevel {
        LOG_LEVEL_ERROR,
        LOG_LEVEL_WARNING,
        LOG_LEVEL_NOTICE,
        LOG_LEVEL_INFO,
        LOG_LEVEL_DEBUG,
        _LOG_LEVEL_MAX,
        _LOG_LEVEL_INVALID = -1,
} LogLevel;

/**
 * log_set_max_level() - drop messages less important than @level.
 */
void log_set_max_level(LogLevel level);
LogLevel log_get_max_level(void);

/**
 * log_level_from_string() - parse "error", "warning", "notice", "info" or "debug".
 * Returns the level, or _LOG_LEVEL_INVALID.
 */
LogLevel log_level_from_string(const char *s);
const char *log_level_to_string(LogLevel level);

/**
 * log_set_ident() - program name put in front of each stderr line.
 */
void log_set_ident(const char *ident);

/**
 * log_set_journal() - send records to the systemd journal with structured
 * fields instead of plain stderr lines.
 */
void log_set_journal(bool on);

/**
 * log_set_client_pid() - records made from now on name client @pid
 * (CLIENT_PID= in the journal, client_pid= on stderr); 0 ends that. The
 * daemon sets it while it handles a client's request.
 */
void log_set_client_pid(int pid);

/**
 * log_full() - log one event. @session and @sandbox may be NULL; when set they
 * appear as "session=... sandbox=..." on stderr and as SESSION= and SANDBOX_ID=
 * fields in the journal.
 */
void log_full(LogLevel level, const char *session, const char *sandbox,
              const char *fmt, ...) _printf_(4, 5);

#define log_error(...)   log_full(LOG_LEVEL_ERROR, NULL, NULL, __VA_ARGS__)
#define log_warning(...) log_full(LOG_LEVEL_WARNING, NULL, NULL, __VA_ARGS__)
#define log_notice(...)  log_full(LOG_LEVEL_NOTICE, NULL, NULL, __VA_ARGS__)
#define log_info(...)    log_full(LOG_LEVEL_INFO, NULL, NULL, __VA_ARGS__)
#define log_debug(...)   log_full(LOG_LEVEL_DEBUG, NULL, NULL, __VA_ARGS__)
