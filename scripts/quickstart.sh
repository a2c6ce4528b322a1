#!/usr/bin/env bash
# From a fresh clone to real sandboxes: install what is missing, build, start
# cwsandboxd on its embedded backend with a private socket, and walk through
# a session with cwsandboxctl: two sandboxes, commands (one streaming), a
# file copied in and out, listings, logs, metrics, and closing the session,
# which stops both sandboxes. Then the daemon is shut down.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
[[ -d build ]] || meson setup build >/dev/null
ninja -C build >/dev/null

if [[ $(id -u) -ne 0 ]]; then
        echo "quickstart: the embedded backend builds sandboxes with namespaces and mounts; run as root." >&2
        exit 1
fi

dir=$(mktemp -d)
sock="$dir/cwsandboxd.sock"
ctl() {
        ./build/client/ctl/cwsandboxctl --socket "$sock" "$@"
}
step() {
        printf '\n== %s\n' "$*"
}
# Prints a cwsandboxctl command line as one would type it.
show_line() {
        local line="$ cwsandboxctl" a
        for a in "$@"; do
                if [[ $a =~ ^[A-Za-z0-9_./:=@%+-]+$ ]]; then
                        line+=" $a"
                else
                        line+=" '${a//\'/\'\\\'\'}'"
                fi
        done
        printf '%s\n' "$line"
}
show() {
        show_line "$@"
        ctl "$@"
}
cleanup() {
        if [[ -n "${daemon:-}" ]]; then
                kill -TERM "$daemon" 2>/dev/null || true
                wait "$daemon" 2>/dev/null || true
        fi
        rm -rf "$dir"
}
trap cleanup EXIT

step "starting cwsandboxd on $sock (embedded backend)"
./build/daemon/cwsandboxd --config=/dev/null --socket "$sock" --state-dir "$dir/state" \
        --local-backend-path "$PWD/build/localbackend/cwsandbox-local" --log-level warning &
daemon=$!
for _ in $(seq 100); do
        ctl status >/dev/null 2>&1 && break
        kill -0 "$daemon" 2>/dev/null || { echo "quickstart: cwsandboxd exited" >&2; exit 1; }
        sleep 0.1
done
show status

step "creating session 'quickstart' (its sandboxes get a tag and an environment variable)"
show session create quickstart --tag quickstart --env GREETING=hello

step "starting two sandboxes"
show_line run --session quickstart --wait
a=$(ctl run --session quickstart --wait)
echo "$a"
worker=(sh -c 'trap "exit 0" TERM; echo worker ready; sleep infinity & wait')
show_line run --session quickstart --wait -- "${worker[@]}"
b=$(ctl run --session quickstart --wait -- "${worker[@]}")
echo "$b"

step "running commands"
show exec "$a" -- sh -c 'echo "$GREETING from sandbox $(hostname)"; id -u'
show exec "$b" -- uname -sr
echo "(streaming: each line shows up as it is printed)"
show exec "$a" -- sh -c 'for i in 1 2 3 4 5; do echo "step $i of 5"; sleep 0.5; done'
set +e
show exec "$b" -- sh -c 'echo "exiting with 3" >&2; exit 3'
code=$?
set -e
echo "(exec exited with the remote code: $code)"
echo "(stdin, with -i)"
printf 'one\ntwo\nthree\n' | show exec -i "$b" -- sort -r

step "copying a file in and out"
head -c 1048576 /dev/urandom > "$dir/data.bin"
show cp "$dir/data.bin" "$a:/tmp/data.bin"
show exec "$a" -- sh -c 'wc -c < /tmp/data.bin; cp /tmp/data.bin /tmp/data.copy'
show cp "$a:/tmp/data.copy" "$dir/data.back"
cmp "$dir/data.bin" "$dir/data.back"
echo "(1 MiB in and out again, byte for byte identical)"

step "listing"
show session ls
show ls --session quickstart
show logs "$b"

step "metrics"
show metrics

step "closing the session: every sandbox in it stops"
show session close quickstart
show get "$a"
show get "$b"
for id in "$a" "$b"; do
        state=$(ctl -o json get "$id" | sed -n 's/.*"state":"\([A-Z_]*\)".*/\1/p')
        [[ $state == TERMINATED ]] || { echo "quickstart: $id is $state, not TERMINATED" >&2; exit 1; }
done
echo "(both TERMINATED)"

step "stopping cwsandboxd"
kill -TERM "$daemon"
wait "$daemon"
daemon=
echo "== done"
