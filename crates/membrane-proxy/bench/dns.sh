#!/usr/bin/env bash
# DNS queries per second, all on 127.0.0.1 over UDP:
#   direct    dnsperf → dnsmasq (answers *.example.com itself)
#   membrane  dnsperf → membrane's DNS proxy (each name checked by the engine, each answer
#             learned into the FQDN cache) → dnsmasq
#   refused   dnsperf → membrane's DNS proxy, names no rule allows (answered REFUSED by the
#             proxy itself, nothing forwarded)
#   dnsmasq   dnsperf → dnsmasq as a forwarder (no cache) → dnsmasq: the cost of forwarding
#             at all on this machine, with a lean C forwarder
# Interleaved over ROUNDS rounds; medians and the median per-round ratio to `direct`.
#
# Needs: dnsperf, dnsmasq (apt-get install dnsperf dnsmasq-base). Usage: bench/dns.sh
#   env: DURATION (10) CLIENTS (4) THREADS (2) OUTSTANDING (100) ROUNDS (3) PORT_BASE (15353)
set -euo pipefail
cd "$(dirname "$0")/../../.."

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
THREADS=${THREADS:-2}
OUTSTANDING=${OUTSTANDING:-100}
ROUNDS=${ROUNDS:-3}
BASE=${PORT_BASE:-15353}
UPSTREAM=$BASE MEMBRANE=$((BASE + 1)) FORWARDER=$((BASE + 2))
HOST=127.0.0.1

for tool in dnsperf dnsmasq; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y dnsperf dnsmasq-base" >&2; exit 2; }
done

cargo build --release -q -p membrane-proxy --features cluster --example bench_proxy
# Built where cargo puts it: $CARGO_TARGET_DIR if set (relative to the repository root).
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_proxy

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  rm -rf "$work"
}
trap cleanup EXIT

dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --listen-address=$HOST \
  --port="$UPSTREAM" --address=/example.com/203.0.113.20 --local-ttl=300 --cache-size=0 \
  --dns-forward-max=10000 --pid-file="$work/dnsmasq.pid" --log-facility="$work/dnsmasq.log" &
pids+=($!)
# The baseline for a forwarder: dnsmasq itself forwarding every query (no cache) to the
# same server, i.e. what a lean C forwarder costs on this machine.
dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --listen-address=$HOST \
  --port="$FORWARDER" --server="$HOST#$UPSTREAM" --cache-size=0 --dns-forward-max=10000 \
  --pid-file="$work/forwarder.pid" --log-facility="$work/forwarder.log" &
pids+=($!)
"$BIN" dns "$HOST:$MEMBRANE" "$HOST:$UPSTREAM" 2>"$work/proxy.log" &
pids+=($!)
sleep 1

for i in $(seq 50); do echo "host$i.example.com A"; done >"$work/allowed.txt"
for i in $(seq 50); do echo "host$i.evil.test A"; done >"$work/refused.txt"

# Sanity: the proxy answers allowed names and refuses the others.
check() {
  local status
  status=$(dnsperf -s $HOST -p "$1" -d <(echo "$2") -n 1 -v 2>/dev/null | awk '/^> / {print $2; exit}')
  [ "$status" = "$3" ] || { echo "expected $3 for $2 on port $1, got '$status'" >&2; exit 1; }
}
check "$MEMBRANE" "api.example.com A" NOERROR
check "$MEMBRANE" "evil.test A" REFUSED

run() {
  dnsperf -s $HOST -p "$1" -d "$2" -l "$DURATION" -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING" 2>/dev/null |
    awk '/Queries per second:/ {qps=$4} /Average Latency/ {lat=$4} /Queries lost:/ {lost=$3} END {print qps, lat*1000, lost}'
}

declare -A QPS LAT
for r in $(seq "$ROUNDS"); do
  for cfg in direct membrane refused dnsmasq; do
    case $cfg in
      direct) port=$UPSTREAM file=$work/allowed.txt ;;
      dnsmasq) port=$FORWARDER file=$work/allowed.txt ;;
      membrane) port=$MEMBRANE file=$work/allowed.txt ;;
      refused) port=$MEMBRANE file=$work/refused.txt ;;
    esac
    read -r qps lat lost < <(run "$port" "$file")
    QPS[$cfg,$r]=$qps; LAT[$cfg,$r]=$lat
    printf 'round %d %-8s %10.0f qps  avg %6.3f ms  lost %s\n' "$r" "$cfg" "$qps" "$lat" "$lost"
  done
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "DNS over UDP, $CLIENTS clients, $OUTSTANDING outstanding, ${DURATION}s x $ROUNDS rounds (medians)"
printf '%-8s %10s %12s %14s\n' config qps 'avg lat ms' 'qps / direct'
for cfg in direct membrane refused dnsmasq; do
  qps=$(for r in $(seq "$ROUNDS"); do echo "${QPS[$cfg,$r]}"; done | median)
  lat=$(for r in $(seq "$ROUNDS"); do echo "${LAT[$cfg,$r]}"; done | median)
  ratio=$(for r in $(seq "$ROUNDS"); do awk -v a="${QPS[$cfg,$r]}" -v b="${QPS[direct,$r]}" 'BEGIN {print a/b}'; done | median)
  printf '%-8s %10.0f %12.3f %14.2f\n' "$cfg" "$qps" "$lat" "$ratio"
done
fr=$(for r in $(seq "$ROUNDS"); do awk -v a="${QPS[membrane,$r]}" -v b="${QPS[dnsmasq,$r]}" 'BEGIN {print a/b}'; done | median)
echo "membrane / dnsmasq as a forwarder (qps): $fr"
