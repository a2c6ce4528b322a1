#!/usr/bin/env bash
# Install what is missing, build, and run every test suite: once in a normal
# build (warnings are errors) and once under AddressSanitizer and
# UndefinedBehaviorSanitizer.
#
#   ./scripts/test.sh                 everything
#   ./scripts/test.sh --no-sanitize   skip the sanitizer pass
#   SUITES="unit integration" ./scripts/test.sh   only these suites
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=1
[[ "${1:-}" == "--no-sanitize" ]] && sanitize=0

./scripts/install-deps.sh

suite_args=()
for s in ${SUITES:-}; do suite_args+=(--suite "$s"); done

run() {
        local dir=$1; shift
        if [[ ! -d "$dir" ]]; then
                meson setup "$dir" "$@" >/dev/null
        else
                meson configure "$dir" "$@" >/dev/null
        fi
        ninja -C "$dir"
        meson test -C "$dir" "${suite_args[@]}" --print-errorlogs --num-processes 2
}

echo "== build and test =="
run build -Dwerror=true

if [[ $sanitize -eq 1 ]]; then
        echo "== build and test under ASan+UBSan =="
        export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1
        export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
        run build-sanitize -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false
fi
