#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (as root) and run one of the project's jobs.
#   scripts/bootstrap.sh lab    the main job: a cluster on one machine
#   scripts/bootstrap.sh test   the full test suite (lint, types, tests)
# Idempotent: apt packages and the virtualenv are only installed when missing or stale.
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-test}"
shift || true

APT_PACKAGES=(make iproute2 iptables ipset conntrack etcd-server etcd-client
              iputils-ping netcat-openbsd tcpdump procps curl python3-venv
              bird2 frr containernetworking-plugins)
if [ "$job" = test ]; then
    # tests/vm boots a stock Debian kernel (which has ipip) in a software-emulated VM.
    APT_PACKAGES+=(qemu-system-x86 linux-image-amd64 busybox-static)
fi

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: missing packages ${need_apt[*]}; run as root" >&2
        exit 1
    fi
    echo "bootstrap: installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Daemons from these packages (etcd, bird, frr) must not start on the host: tabby's tests
    # and lab start their own, inside network namespaces. policy-rc.d forbids the starts.
    own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT  # removed even if the install fails
    fi
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" </dev/null >/dev/null
    if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi

PY="${PYTHON:-python3}"
stamp=".venv/.tabby-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: creating virtualenv .venv"
    "$PY" -m venv .venv
    .venv/bin/pip install -q --upgrade pip </dev/null
    .venv/bin/pip install -q -e '.[dev]' </dev/null
    echo "$want" > "$stamp"
fi

exec make "$job" "$@"
