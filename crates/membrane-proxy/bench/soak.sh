#!/usr/bin/env bash
# Soak: the HTTP proxy under 10,000 concurrent keep-alive connections for 10 minutes, a mix
# of allowed (`/public/n` → 200 from nginx) and denied (`/private/n` → 403 from the proxy)
# requests, each connection reconnecting after REQUESTS_PER_CONNECTION requests. Prints
# requests/s, p50/p99 latency, wrong answers, errors, and the proxy's open fds and RSS every
# EVERY seconds, then start against end. Exits 1 on any wrong answer.
#
# Everything is on 127.0.0.1. Needs: nginx (apt-get install -y nginx), root or a hard
# open-file limit ≥ 4 × CONNECTIONS. Usage: bench/soak.sh
#   env: CONNECTIONS (10000) DURATION (600) EVERY (30) DENIED_PERCENT (10, of the requests of
#        the connections that send both) DENIED_ONLY_PERCENT (20, connections that only send
#        denied requests, like a scanner; 10,000 connections then fit a 20,000 fd limit)
#        REQUESTS_PER_CONNECTION (500) RATE (10000 requests/s in all; 0 = as fast as answered)
#        PORT_BASE (18180)
set -euo pipefail
cd "$(dirname "$0")/../../.."

CONNECTIONS=${CONNECTIONS:-10000}
DURATION=${DURATION:-600}
EVERY=${EVERY:-30}
DENIED_PERCENT=${DENIED_PERCENT:-10}
DENIED_ONLY_PERCENT=${DENIED_ONLY_PERCENT:-20}
REQUESTS_PER_CONNECTION=${REQUESTS_PER_CONNECTION:-500}
RATE=${RATE:-10000}
BASE=${PORT_BASE:-18180}
UPSTREAM=$BASE PROXY=$((BASE + 1))
HOST=127.0.0.1

command -v nginx >/dev/null || { echo "missing nginx: apt-get install -y nginx" >&2; exit 2; }
# The proxy holds a client socket per connection and an upstream socket per connection that
# sent an allowed request; the other processes hold one per connection.
want_fds=$((CONNECTIONS + CONNECTIONS * (100 - DENIED_ONLY_PERCENT) / 100 + 256))
ulimit -n "$want_fds" 2>/dev/null || ulimit -Hn "$want_fds" 2>/dev/null && ulimit -n "$want_fds" 2>/dev/null || {
  echo "the open-file limit is $(ulimit -Hn), the proxy needs $want_fds: run as root, raise the hard limit, or lower CONNECTIONS or raise DENIED_ONLY_PERCENT" >&2
  exit 2
}

cargo build --release -q -p membrane-proxy --features cluster --example bench_proxy --example http_load
BIN=${CARGO_TARGET_DIR:-target}/release/examples

work=$(mktemp -d)
proxy_pid=""
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  sleep 0.2
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/tmp"
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile $((CONNECTIONS + 1024));
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections $((CONNECTIONS + 512)); }
http {
  access_log off;
  client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp;
  uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
  keepalive_requests 1000000;
  keepalive_timeout 600s;
  server { listen $HOST:$UPSTREAM backlog=16384; location / { return 200 "ok\n"; } }
}
CONF
nginx -c "$work/nginx.conf" -p "$work" -e "$work/error.log"
"$BIN/bench_proxy" http "$HOST:$PROXY" "$HOST:$UPSTREAM" 2>"$work/proxy.log" &
proxy_pid=$!

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }
wait_port "$UPSTREAM"; wait_port "$PROXY"

set +e
"$BIN/http_load" --target "$HOST:$PROXY" --connections "$CONNECTIONS" --duration "$DURATION" \
  --every "$EVERY" --watch-pid "$proxy_pid" --denied-percent "$DENIED_PERCENT" \
  --denied-only-percent "$DENIED_ONLY_PERCENT" \
  --requests-per-connection "$REQUESTS_PER_CONNECTION" $([ "$RATE" != 0 ] && echo --rate "$RATE")
status=$?
# After the load: every client connection closed, so the proxy's fds and memory should be
# back near where they started.
sleep 2
fds=$(ls "/proc/$proxy_pid/fd" | wc -l)
rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$proxy_pid/status")
echo "proxy after the load (2 s later): $fds fds, $rss KiB"
exit $status
