/*
 * Persist: what the Manager writes to its ledger, and how it comes back
 * after a restart. Sessions and session handles are recorded when they
 * appear or change and deleted when they go (a closing session at once, so a
 * crash during its close still counts its sandboxes as orphans). Nothing is
 * deleted at shutdown: the state at that moment is what the next start
 * restores.
 */
#pragma once

#include <stdint.h>

#include "ledger.h"

typedef struct Manager Manager;
typedef struct Session Session;
typedef struct Handle Handle;

/* Record @s (its metrics too); returns the record's sequence for persist_sync() (0: no ledger). */
uint64_t persist_session(Session *s);
void persist_session_gone(Session *s);

/* Record @h (in a session; others are not recorded) and remember the record's sequence. */
void persist_handle(Handle *h);
void persist_handle_gone(Handle *h);

/* @fn once record @seq is durable (or cannot be); see ledger_sync(). */
void persist_sync(Manager *m, uint64_t seq, LedgerSyncedFn fn, void *userdata);

/* The ledger's snapshot callback: every open session and its handles. */
void persist_snapshot(void *userdata, Ledger *l);

/**
 * persist_load() - open the ledger in the state directory, restore its
 * sessions (lingering: no connection is back yet) and their handles, and
 * rewrite it from what was restored. A damaged ledger is kept beside as
 * "ledger.bad" and reported. Returns 0 or a negative errno (out of memory).
 */
int persist_load(Manager *m);
