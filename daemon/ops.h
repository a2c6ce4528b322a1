/*
 * Ops: the client requests that work inside a running sandbox: exec
 * (streaming and buffered), read_file, write_file and logs. Each resolves the
 * sandbox for the caller's uid, starts it if needed and waits until it runs
 * (handle_wait_running_by_id()), then bridges the client's call to one
 * backend call, with credit-based flow control in between.
 */
#pragma once

#include "manager.h"

void ops_exec(Manager *m, Call *call, const Cwsandboxd__V1__ExecRequest *req);
void ops_read_file(Manager *m, Call *call, const Cwsandboxd__V1__ReadFileRequest *req);
void ops_write_file(Manager *m, Call *call, const Cwsandboxd__V1__WriteFileRequest *req);
void ops_logs(Manager *m, Call *call, const Cwsandboxd__V1__LogsRequest *req);
