#!/usr/bin/env bash
# Interim main job (until the multi-node lab exists): start a private etcd on loopback, apply the
# example manifests with tabbyctl, list them back, and stop etcd again (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
state="$(mktemp -d /tmp/tabby-demo.XXXXXX)"
port=$(.venv/bin/python -c 'from lab.etcd import free_port; print(free_port())')
peer=$(.venv/bin/python -c 'from lab.etcd import free_port; print(free_port())')
etcd --name demo --data-dir "$state/data" \
     --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
     --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
     --initial-cluster "demo=http://127.0.0.1:$peer" --log-level warn >"$state/etcd.log" 2>&1 &
etcd_pid=$!
trap 'kill "$etcd_pid" 2>/dev/null; wait "$etcd_pid" 2>/dev/null; rm -rf "$state"' EXIT
export ETCD_ENDPOINTS="http://127.0.0.1:$port"
for _ in $(seq 100); do
    curl -fs "$ETCD_ENDPOINTS/health" >/dev/null 2>&1 && break
    .venv/bin/python -c 'import time; time.sleep(0.1)'
done
ctl=.venv/bin/tabbyctl
echo "== tabbyctl validate -f examples/"
$ctl validate -f examples/
echo "== tabbyctl apply -f examples/"
$ctl apply -f examples/
for kind in tiers ippools globalnetworkpolicies globalnetworksets networkpolicies networksets \
            profiles hostendpoints bgpconfigurations bgppeers felixconfigurations; do
    echo "== tabbyctl get $kind -A -o wide"
    $ctl get "$kind" -A -o wide
done
echo "== tabbyctl get gnp platform.allow-dns -o yaml"
$ctl get gnp platform.allow-dns -o yaml
echo "== raw etcd key"
ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" get \
    /calico/resources/v3/projectcalico.org/globalnetworkpolicies/platform.allow-dns --print-value-only
