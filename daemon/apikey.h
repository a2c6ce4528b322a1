/*
 * API key: where the daemon finds the backend's API key, in order:
 *  1. $CREDENTIALS_DIRECTORY/api-key (systemd LoadCredential=),
 *  2. the file named by api_key_file (refused if group or others may read it),
 *  3. $CWSANDBOX_API_KEY (as the SDK).
 * The key lives only in memory that is wiped when freed, and is never logged.
 */
#pragma once

#define APIKEY_MAX 4096

/**
 * apikey_load() - find the key. @file may be NULL or "".
 * @ret: the key (free with apikey_free()), or NULL when none is configured.
 * Returns 0, or a negative errno after logging what is wrong (a key file
 * that cannot be read or is readable by others, a key that is not one line
 * of printable characters).
 */
int apikey_load(const char *file, char **ret);

/* Wipe and free; NULL is fine. */
void apikey_free(char *key);
