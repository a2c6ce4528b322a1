/*
 * What tests of libcwsandbox share: printing a cws_error, and connecting and
 * attaching where a failure leaves nothing to test.
 */
#pragma once

#include <stdint.h>

#include "cwsandbox.h"

/* A "# what: code NAME: message reason R" line. */
void cu_diag_err(const char *what, int r, const cws_error *err);

/* Connect to @socket_path as @name, or bail out. */
cws_conn *cu_connect(const char *socket_path, const char *name);

/*
 * Attach to session @name (created with linger @linger_s and its own
 * @max_sandboxes, 0 = none), or bail out. Returns its id (free it).
 */
char *cu_attach(cws_conn *c, const char *name, int32_t linger_s, uint32_t max_sandboxes);
