/*
 * Logging. Lines go to stderr as "ident: level: [session=.. sandbox=..] text",
 * or to the journal with PRIORITY=, SESSION= and SANDBOX_ID= fields. The level
 * check comes first so a disabled debug line costs one comparison.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>
#include <syslog.h>
#include <systemd/sd-journal.h>

#include "log.h"

static LogLevel max_level = LOG_LEVEL_INFO;
static const char *log_ident = "cwsandbox";
static bool use_journal;

static const char *const level_names[_LOG_LEVEL_MAX] = {
        [LOG_LEVEL_ERROR] = "error",
        [LOG_LEVEL_WARNING] = "warning",
        [LOG_LEVEL_NOTICE] = "notice",
        [LOG_LEVEL_INFO] = "info",
        [LOG_LEVEL_DEBUG] = "debug",
};

static const int level_priority[_LOG_LEVEL_MAX] = {
        [LOG_LEVEL_ERROR] = LOG_ERR,
        [LOG_LEVEL_WARNING] = LOG_WARNING,
        [LOG_LEVEL_NOTICE] = LOG_NOTICE,
        [LOG_LEVEL_INFO] = LOG_INFO,
        [LOG_LEVEL_DEBUG] = LOG_DEBUG,
};

void log_set_max_level(LogLevel level) {
        max_level = level;
}

LogLevel log_get_max_level(void) {
        return max_level;
}

LogLevel log_level_from_string(const char *s) {
        for (int i = 0; i < _LOG_LEVEL_MAX; i++)
                if (streq(s, level_names[i]))
                        return (LogLevel)i;
        return _LOG_LEVEL_INVALID;
}

const char *log_level_to_string(LogLevel level) {
        if (level < 0 || level >= _LOG_LEVEL_MAX)
                return "invalid";
        return level_names[level];
}

void log_set_ident(const char *ident) {
        log_ident = ident;
}

void log_set_journal(bool on) {
        use_journal = on;
}

/* The client whose request is being handled: records made meanwhile name it. */
static int client_pid;

void log_set_client_pid(int pid) {
        client_pid = pid;
}

/* Only the fields that are set, so journal queries on SESSION= stay exact. */
static void log_to_journal(LogLevel level, const char *session, const char *sandbox, const char *text) {
        char msg[2100], prio[16], ident[64], sess[160], sbx[160], pid[32];
        struct iovec iov[6];
        int n = 0;

        snprintf(msg, sizeof(msg), "MESSAGE=%s", text);
        snprintf(prio, sizeof(prio), "PRIORITY=%d", level_priority[level]);
        snprintf(ident, sizeof(ident), "SYSLOG_IDENTIFIER=%s", log_ident);
        iov[n++] = (struct iovec){ msg, strlen(msg) };
        iov[n++] = (struct iovec){ prio, strlen(prio) };
        iov[n++] = (struct iovec){ ident, strlen(ident) };
        if (session) {
                snprintf(sess, sizeof(sess), "SESSION=%s", session);
                iov[n++] = (struct iovec){ sess, strlen(sess) };
        }
        if (sandbox) {
                snprintf(sbx, sizeof(sbx), "SANDBOX_ID=%s", sandbox);
                iov[n++] = (struct iovec){ sbx, strlen(sbx) };
        }
        if (client_pid > 0) {
                snprintf(pid, sizeof(pid), "CLIENT_PID=%d", client_pid);
                iov[n++] = (struct iovec){ pid, strlen(pid) };
        }
        (void)sd_journal_sendv(iov, n);
}

void log_full(LogLevel level, const char *session, const char *sandbox, const char *fmt, ...) {
        char text[2048];
        va_list ap;

        if (level > max_level)
                return;

        va_start(ap, fmt);
        (void)vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);

        if (use_journal) {
                log_to_journal(level, session, sandbox, text);
                return;
        }

        /*
         * One write per line: a daemon and the child it runs share stderr, and
         * separate writes would interleave their lines.
         */
        char line[2400], pid[32] = "";

        if (client_pid > 0)
                snprintf(pid, sizeof(pid), " client_pid=%d", client_pid);
        int n = snprintf(line, sizeof(line), "%s: %s:%s%s%s%s%s %s\n", log_ident, level_names[level],
                         session ? " session=" : "", session ? session : "",
                         sandbox ? " sandbox=" : "", sandbox ? sandbox : "", pid, text);

        if (n < 0)
                return;
        if ((size_t)n >= sizeof(line)) {
                n = sizeof(line) - 1;
                line[n - 1] = '\n';
        }
        (void)!write(STDERR_FILENO, line, (size_t)n);
}
