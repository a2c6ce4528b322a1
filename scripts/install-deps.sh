#!/usr/bin/env bash
# Install the Debian packages cwsandboxd needs to build and test.
# Idempotent, and silent when everything is already there.
set -euo pipefail

packages=(
        gcc
        meson
        ninja-build
        pkg-config
        libgrpc-dev          # gRPC core C API
        libprotobuf-c-dev    # protobuf-c runtime and protobuf-c.proto
        protobuf-c-compiler  # protoc-c, run by the build
        libprotobuf-dev      # google/protobuf/*.proto well-known types
        libuv1-dev
        libsystemd-dev
        procps               # ps, used by tests
        iproute2             # ip, used by the runner test (network namespace)
        python3              # JSON checks of the cwsandboxctl test
        systemd              # systemd-analyze and systemd-socket-activate, for the unit tests
        util-linux           # unshare, for the journal test
)

missing=()
for p in "${packages[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=()
if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
        sudo=(sudo)
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
