#!/usr/bin/env bash
# From a fresh clone to a real sandbox: install what is missing, build, start
# the embedded backend cwsandbox-local on a private socket, and walk through a
# sample session (create, exec, write and read a file, list, stop).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
[[ -d build ]] || meson setup build >/dev/null
ninja -C build >/dev/null

if [[ $(id -u) -ne 0 ]]; then
        echo "quickstart: cwsandbox-local builds sandboxes with namespaces and mounts; run as root." >&2
        exit 1
fi

dir=$(mktemp -d)
sock="$dir/cwsandbox-local.sock"
cleanup() {
        if [[ -n "${backend:-}" ]]; then
                kill -TERM "$backend" 2>/dev/null || true
                wait "$backend" 2>/dev/null || true
        fi
        rm -rf "$dir"
}
trap cleanup EXIT

echo "== starting cwsandbox-local on unix:$sock"
./build/localbackend/cwsandbox-local --listen "unix:$sock" \
        --runner ./build/localbackend/cwsandbox-local-run --log-level warning &
backend=$!
for _ in $(seq 100); do [[ -S "$sock" ]] && break; sleep 0.1; done

./build/tests/tools/backend-demo --target "unix:$sock"

echo "== stopping cwsandbox-local"
kill -TERM "$backend"
wait "$backend"
backend=
echo "== done"
