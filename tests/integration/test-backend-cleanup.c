/*
 * No process outlives cwsandbox-local: with three sandboxes (one whose main
 * process ignores SIGTERM) and a running exec, SIGTERM the backend; it must
 * exit 0 and leave no process, no mount and no scratch file behind.
 *
 * There is no API for host pids, so every process involved carries a marker
 * unique to this run in its command line or environment, and the host's
 * /proc is scanned for it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "test-util.h"

static size_t mounts_under(const char *dir) {
        FILE *f = fopen("/proc/self/mountinfo", "re");
        char line[4096];
        size_t n = 0, len = strlen(dir);

        if (!f)
                return 0;
        while (fgets(line, sizeof(line), f)) {
                char *p = strstr(line, dir);

                if (p && (p[len] == '/' || p[len] == ' ')) {
                        diag("  left mounted: %s", test_chomp(line));
                        n++;
                }
        }
        fclose(f);
        return n;
}

static size_t dir_entries(const char *dir) {
        DIR *d = opendir(dir);
        struct dirent *de;
        size_t n = 0;

        if (!d)
                return 0;
        while ((de = readdir(d)))
                if (!streq(de->d_name, ".") && !streq(de->d_name, "..")) {
                        diag("  left in the work dir: %s", de->d_name);
                        n++;
                }
        closedir(d);
        return n;
}

int main(void) {
        _cleanup_free_ char *marker = NULL, *env = NULL;
        pid_t pids[64];
        BcExec *e = NULL;
        TestBackend t;
        size_t found;
        int status = 0, r;

        if (test_needs_root())
                return 0;
        test_backend_start(&t, NULL);
        marker = test_marker("leak");
        if (asprintf(&env, "CWSL_MARK=%s", marker) < 0)
                bail_out("out of memory");

        for (int i = 0; i < 3; i++) {
                /* $0 of the shell is the marker, so it is in the command line too. */
                const char *script = i == 2 ? "trap '' TERM; while :; do sleep 1; done" : BC_KEEPALIVE_SCRIPT;
                const char *args[] = { "-c", script, marker, NULL };
                const char *envv[] = { env, NULL };
                BcSandboxOpts o = { .command = "/bin/sh", .args = args, .env = envv };
                BcSandbox *sb = test_start_sandbox(t.client, &o, i == 2 ? "sandbox ignoring SIGTERM" : "marked sandbox");

                if (i == 0 && sb) {
                        BcExecOpts eo = { .argv = (const char *const[]) { "/bin/sh", "-c", "echo started; sleep 1000", NULL },
                                          .env = envv };

                        r = bc_exec_start(t.client, sb->sandbox_id, &eo, 120000, &e);
                        ok(r == 0 && bc_exec_wait_output(e, "started", 0, TEST_CMD_MS) == 0, "a long exec is running");
                }
                bc_free(sb);
        }

        found = test_find_processes(marker, pids, ELEMENTSOF(pids));
        ok(found >= 5, "the marked processes are visible on the host (%zu)", found);

        r = backend_proc_stop(t.proc, 60000, &status);
        ok(r == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "cwsandbox-local exits 0 on SIGTERM with sandboxes and an exec running");
        if (r == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
                diag("  wait status 0x%x", (unsigned)status);

        found = test_find_processes(marker, pids, ELEMENTSOF(pids));
        if (!ok(found == 0, "no marked process outlives it (%zu left)", found)) {
                for (size_t i = 0; i < found && i < ELEMENTSOF(pids); i++)
                        diag("  left: pid %d", (int)pids[i]);
                test_sleep_ms(2000);
                diag("  2 s later: %zu left", test_find_processes(marker, pids, ELEMENTSOF(pids)));
        }
        ok(mounts_under(t.proc->dir) == 0, "no mount is left under its work dir");
        ok(dir_entries(t.proc->work_dir) == 0, "its work dir is empty again");

        if (e) {
                r = bc_exec_wait(e, TEST_CMD_MS);
                ok(r == 0 && e->ended, "the running exec stream has ended (%s, exit frame: %s %d)",
                   bc_code_name(e->status.code), e->exited ? "yes" : "no", e->exit_code);
                bc_exec_free(e);
        }

        t.client = bc_close(t.client);
        t.proc = backend_proc_free(t.proc);
        return done();
}
