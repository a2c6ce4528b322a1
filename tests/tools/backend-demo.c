/*
 * backend-demo: a short guided session against a SandboxService backend.
 *
 * Creates a sandbox, waits for RUNNING, runs two commands over StreamExec,
 * writes a file and reads it back, lists sandboxes, and stops the sandbox,
 * printing each step. The quickstart runs it against cwsandbox-local.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend-client.h"
#include "macro.h"
#include "test-util.h"

#define GREETING "Hello from the quickstart!\n"

static const char *arg_target;
static const char *arg_token;

static void help(const char *prog) {
        printf("Usage: %s --target ADDRESS [--token TOKEN]\n"
               "\n"
               "Walk through one sandbox session on a SandboxService backend:\n"
               "create, exec, write and read a file, list, stop.\n"
               "\n"
               "  --target ADDRESS  unix:/path or HOST:PORT of the backend\n"
               "  --token TOKEN     bearer token, if the backend requires one\n"
               "  --help            show this help\n",
               prog);
}

static int parse_argv(int argc, char **argv) {
        static const struct option options[] = {
                { "target", required_argument, NULL, 't' },
                { "token", required_argument, NULL, 'k' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 't':
                        arg_target = optarg;
                        break;
                case 'k':
                        arg_token = optarg;
                        break;
                case 'h':
                        help(argv[0]);
                        return 0;
                default:
                        return -1;
                }
        if (!arg_target) {
                fprintf(stderr, "%s: --target is required (see --help)\n", argv[0]);
                return -1;
        }
        return 1;
}

/* "RUNNING" rather than the enum's "STATE_RUNNING". */
static const char *state_name(const BcSandbox *sb) {
        const char *n = bc_state_name(sb && sb->status ? sb->status->state : BC_STATE(UNSPECIFIED));

        return strncmp(n, "STATE_", 6) == 0 ? n + 6 : n;
}

static int fail(const char *step, int r, const BcStatus *st) {
        fprintf(stderr, "   failed: %s: %s%s%s\n", step, bc_code_name(r), st && st->details[0] ? ": " : "",
                st ? st->details : "");
        return 1;
}

/* Print @text indented, one line at a time. */
static void print_indented(const char *text) {
        for (const char *p = text; p && *p;) {
                const char *nl = strchr(p, '\n');
                int len = nl ? (int)(nl - p) : (int)strlen(p);

                printf("     | %.*s\n", len, p);
                p += len + (nl ? 1 : 0);
        }
}

static int run_command(BcClient *c, const char *id, const char *const *argv, const char *shown) {
        BcExec *e = NULL;
        int r;

        printf("$ %s\n", shown);
        r = bc_exec_run(c, id, argv, 30000, &e);
        if (r < 0 || !e->exited) {
                BcStatus st = e ? e->status : (BcStatus) {};

                bc_exec_free(e);
                return fail("exec", r < 0 ? r : (int)st.code, &st);
        }
        print_indented(e->out.data);
        if (e->err.len)
                print_indented(e->err.data);
        printf("     (exit code %d)\n", e->exit_code);
        r = e->exit_code == 0 ? 0 : 1;
        bc_exec_free(e);
        return r;
}

static int demo(BcClient *c) {
        static const char *const tags[] = { "quickstart", NULL };
        static const char *const args[] = { "-c", BC_KEEPALIVE_SCRIPT, NULL };
        BcSandboxOpts o = { .command = BC_KEEPALIVE_COMMAND, .args = args, .tags = tags };
        _cleanup_bc_ BcSandbox *created = NULL, *running = NULL;
        _cleanup_bc_ Coreweave__Sandbox__V1__ReadFileResponse *file = NULL;
        _cleanup_bc_ Coreweave__Sandbox__V1__ListSandboxesResponse *list = NULL;
        BcListOpts lo = { .tags = tags };
        _cleanup_free_ char *content = NULL;
        BcStatus st = {};
        int64_t t0;
        const char *id;
        int r;

        printf("== 1. create a sandbox (the SDK's default keep-alive main process)\n");
        t0 = test_mono_ms();
        r = bc_create_sandbox(c, &o, &created, &st);
        if (r != 0)
                return fail("CreateSandbox", r, &st);
        id = created->sandbox_id;
        printf("   sandbox %s is %s\n", id, state_name(created));

        r = bc_wait_state(c, id, BC_STATE(RUNNING), 30000, &running, &st);
        if (r != 0)
                return fail("wait for RUNNING", r, &st);
        printf("   RUNNING after %.2f s, on %s\n", (double)(test_mono_ms() - t0) / 1000,
               running->status->effective_runtime_class);

        printf("== 2. run commands inside (StreamExec)\n");
        if (run_command(c, id, (const char *const[]) { "uname", "-a", NULL }, "uname -a") != 0)
                return 1;
        if (run_command(c, id, (const char *const[]) { "/bin/sh", "-c", "echo hello from $(hostname)", NULL },
                        "echo hello from $(hostname)") != 0)
                return 1;

        printf("== 3. write /tmp/greeting.txt and read it back\n");
        r = bc_write_file(c, id, "/tmp/greeting.txt", GREETING, strlen(GREETING), &st);
        if (r != 0)
                return fail("WriteFile", r, &st);
        r = bc_read_file(c, id, "/tmp/greeting.txt", &file, &st);
        if (r != 0)
                return fail("ReadFile", r, &st);
        printf("   read %zu bytes:\n", file->content.len);
        content = strndup((const char *)file->content.data, file->content.len);
        print_indented(content);
        if (file->content.len != strlen(GREETING) || memcmp(file->content.data, GREETING, file->content.len) != 0) {
                fprintf(stderr, "   failed: the file read back differs from what was written\n");
                return 1;
        }

        printf("== 4. list sandboxes tagged \"quickstart\"\n");
        r = bc_list_sandboxes(c, &lo, &list, &st);
        if (r != 0)
                return fail("ListSandboxes", r, &st);
        for (size_t i = 0; i < list->n_sandboxes; i++)
                printf("   %s  %s\n", list->sandboxes[i]->sandbox_id, state_name(list->sandboxes[i]));

        printf("== 5. stop the sandbox\n");
        t0 = test_mono_ms();
        r = bc_delete_sandbox(c, id, &(BcDeleteOpts) { .grace_period_seconds = 10 }, NULL, &st);
        if (r != 0)
                return fail("DeleteSandbox", r, &st);
        r = bc_wait_state(c, id, BC_STATE(TERMINATED), 30000, NULL, &st);
        if (r != 0)
                return fail("wait for TERMINATED", r, &st);
        printf("   sandbox %s is TERMINATED (%.2f s)\n", id, (double)(test_mono_ms() - t0) / 1000);
        return 0;
}

int main(int argc, char **argv) {
        BcClient *c = NULL;
        int r;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? 2 : 0;
        setvbuf(stdout, NULL, _IOLBF, 0);
        r = bc_connect(arg_target, arg_token, &c);
        if (r < 0) {
                fprintf(stderr, "cannot create a client for %s: %s\n", arg_target, strerror(-r));
                return 1;
        }
        r = demo(c);
        bc_close(c);
        return r;
}
