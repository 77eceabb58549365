#!/usr/bin/env bash
# Datapath cost: TCP throughput, UDP packet rate and new-connection rate between two pods of
# a lab, with membrane's nftables enforcement (10 and 100,000 policy entries) against the
# same run without it, as ratios. Not a test: numbers on a shared 2-vCPU machine are noisy,
# so configurations are interleaved round by round and the median of per-round ratios is
# reported (docs/datapath.md §3: the same config drifts 2x over minutes).
#
# usage (root): crates/membrane-datapath/bench/throughput.sh [ROUNDS] [MEMBRANE_BINARY]
# needs: iperf3, nftables, iproute2, conntrack, python3 (JSON parsing)
set -euo pipefail

ROUNDS=${1:-3}
cd "$(dirname "$0")/../../.."
BIN=${2:-target/release/membrane}
if [ ! -x "$BIN" ]; then
  cargo build -q --release -p membrane
fi
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, nftables)" >&2; exit 2; }

LAB=bench$$
WORK=$(mktemp -d)
cleanup() { "$BIN" lab down --name "$LAB" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

# Two pods on one node: every packet crosses the node namespace's prerouting hook once, with
# the client's egress and the server's ingress enforced. Port 5201 is iperf3's; 5202 is
# served by the lab agent for the connection-rate loop.
cat > "$WORK/bench.yaml" <<'EOF'
name: bench
cluster: {name: default}
namespaces:
  - {name: ns1, labels: {kubernetes.io/metadata.name: ns1}}
nodes:
  - {name: node1, ip: 192.168.1.10, cilium: true, labels: {kubernetes.io/hostname: node1}}
endpoints:
  - {name: client, namespace: ns1, node: node1, ip: 10.0.1.10, labels: {app: client}}
  - {name: server, namespace: ns1, node: node1, ip: 10.0.1.20, labels: {app: server}}
flows:
  - {from: client, to: server, port: 5202, protocol: TCP, expect: allow}
policies: |
  apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: server-in, namespace: ns1}
  spec:
    endpointSelector: {matchLabels: {app: server}}
    ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "5201", protocol: TCP}, {port: "5201", protocol: UDP}, {port: "5202", protocol: TCP}, {port: "8080", protocol: TCP}, {port: "9090", protocol: TCP}]}]
  ---
  apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: client-out, namespace: ns1}
  spec:
    endpointSelector: {matchLabels: {app: client}}
    egress:
    - toEndpoints: [{matchLabels: {app: server}}]
      toPorts: [{ports: [{port: "5201", protocol: TCP}, {port: "5201", protocol: UDP}, {port: "5202", protocol: TCP}, {port: "8080", protocol: TCP}, {port: "9090", protocol: TCP}]}]
EOF

"$BIN" lab up "$WORK/bench.yaml" --name "$LAB" >/dev/null
NODE=mb.$LAB.n0
CLIENT=mb.$LAB.p0
SERVER=mb.$LAB.p1
C_IP=10.0.1.10
S_IP=10.0.1.20
"$BIN" lab compile "$WORK/bench.yaml" > "$WORK/rules.nft"
ENTRIES=$(grep -cE ' : (accept|return|goto [a-z0-9_]+),?$' "$WORK/rules.nft" || true)

# 100,000 filler entries in the server's exact-port ingress map (the hash map real policies
# use): other identities, other ports, never matched by the benchmark's traffic.
python3 - "$WORK/filler.nft" <<'EOF'
import sys
with open(sys.argv[1], "w") as f:
    f.write("add element inet membrane p1_ing_l4 {\n")
    f.write(",\n".join(f"{20000 + i // 50} . tcp . {2000 + i % 50} : accept" for i in range(100000)))
    f.write("\n}\n")
EOF

ip netns exec "$SERVER" iperf3 -s -D -B "$S_IP" -p 5201 >/dev/null

set_config() {
  ip netns exec "$NODE" nft delete table inet membrane 2>/dev/null || true
  case $1 in
    none) ;;
    ct10) ip netns exec "$NODE" nft -f "$WORK/rules.nft" ;;
    ct100k) ip netns exec "$NODE" nft -f "$WORK/rules.nft"; ip netns exec "$NODE" nft -f "$WORK/filler.nft" ;;
  esac
  ip netns exec "$NODE" conntrack -F >/dev/null 2>&1 || true
  sleep 0.5
}

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

measure() {
  local tcp pps conn
  tcp=$(ip netns exec "$CLIENT" iperf3 -c "$S_IP" -B "$C_IP" -p 5201 -t 3 -J | json "d['end']['sum_received']['bits_per_second']/1e9")
  pps=$(ip netns exec "$CLIENT" iperf3 -c "$S_IP" -B "$C_IP" -p 5201 -u -b 0 -l 64 -t 2 -J \
        | json "(d['end']['sum']['packets']-d['end']['sum']['lost_packets'])/d['end']['sum']['seconds']/1e3")
  conn=$(ip netns exec "$CLIENT" "$BIN" lab helper connrate --src "$C_IP" --dst "$S_IP" --port 5202 --secs 3 --threads 2 | awk '{print $1}')
  echo "$tcp $pps $conn"
}

CONFIGS="none ct10 ct100k"
RESULTS=$WORK/results
: > "$RESULTS"
for round in $(seq "$ROUNDS"); do
  for c in $CONFIGS; do
    set_config "$c"
    read -r tcp pps conn < <(measure)
    echo "$round $c $tcp $pps $conn" | tee -a "$RESULTS" >&2
  done
done
set_config ct10

python3 - "$RESULTS" "$ENTRIES" <<'EOF'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for r, c, tcp, pps, conn in rows:
    by.setdefault(c, {})[int(r)] = (float(tcp), float(pps), float(conn))
print(f"policy entries in the compiled ruleset: {sys.argv[2]} (ct10), plus 100,000 filler (ct100k)")
print(f"{'config':8} {'TCP Gbit/s':>11} {'UDP64 kpps':>11} {'conn/s':>9}   ratio to none (tcp / pps / conn), median of {len(by['none'])} rounds")
for c in ["none", "ct10", "ct100k"]:
    vals = by[c]
    med = [st.median(v[i] for v in vals.values()) for i in range(3)]
    ratios = [st.median(vals[r][i] / by["none"][r][i] for r in vals) for i in range(3)]
    print(f"{c:8} {med[0]:11.2f} {med[1]:11.1f} {med[2]:9.0f}   {ratios[0]:.2f} / {ratios[1]:.2f} / {ratios[2]:.2f}")
EOF
