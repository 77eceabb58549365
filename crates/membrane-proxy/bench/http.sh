#!/usr/bin/env bash
# Requests per second and p99 latency of small GETs, three ways, all on 127.0.0.1:
#   direct    wrk → nginx (the upstream, `return 200`)
#   membrane  wrk → membrane's HTTP proxy (every request decided by the engine) → nginx
#   nginx     wrk → nginx as a reverse proxy (keep-alive upstream) → nginx
# Configurations are interleaved over ROUNDS rounds (this host is noisy); the medians and
# the median of the per-round ratios to `direct` are printed.
#
# Needs: wrk, nginx (apt-get install wrk nginx). Usage: bench/http.sh
#   env: DURATION (10s) CONNECTIONS (32) THREADS (2) ROUNDS (3) PORT_BASE (18080)
set -euo pipefail
cd "$(dirname "$0")/../../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
BASE=${PORT_BASE:-18080}
UPSTREAM=$BASE MEMBRANE=$((BASE + 1)) NGINX_PROXY=$((BASE + 2))
HOST=127.0.0.1
PATH_=/public/index.html

for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk nginx" >&2; exit 2; }
done

cargo build --release -q -p membrane-proxy --features cluster --example bench_proxy
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_proxy

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
worker_processes 2;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp;
  uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
  keepalive_requests 1000000;
  upstream backend { server $HOST:$UPSTREAM; keepalive 64; }
  server { listen $HOST:$UPSTREAM; location / { return 200 "ok\n"; } }
  server {
    listen $HOST:$NGINX_PROXY;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
nginx -c "$work/nginx.conf" -p "$work" -e "$work/error.log"
"$BIN" http "$HOST:$MEMBRANE" "$HOST:$UPSTREAM" 2>"$work/proxy.log" &
proxy_pid=$!

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }
wait_port "$UPSTREAM"; wait_port "$MEMBRANE"; wait_port "$NGINX_PROXY"

# Sanity: the proxy forwards allowed requests and answers 403 to others.
code=$(exec 3<>"/dev/tcp/$HOST/$MEMBRANE"; printf 'GET /private HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3; head -c 12 <&3 | tail -c 3)
[ "$code" = 403 ] || { echo "expected 403 through the proxy, got '$code'" >&2; exit 1; }

# wrk --latency: requests/s and p99 in ms.
run() {
  local out rps p99
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://$HOST:$1$PATH_")
  if echo "$out" | grep -q 'Non-2xx'; then echo "non-2xx responses on port $1" >&2; echo "$out" >&2; exit 1; fi
  rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}')
  echo "$rps $p99"
}

declare -A RPS P99
for r in $(seq "$ROUNDS"); do
  for cfg in direct membrane nginx; do
    case $cfg in direct) port=$UPSTREAM ;; membrane) port=$MEMBRANE ;; nginx) port=$NGINX_PROXY ;; esac
    read -r rps p99 < <(run "$port")
    RPS[$cfg,$r]=$rps; P99[$cfg,$r]=$p99
    printf 'round %d %-9s %10.0f req/s  p99 %7.2f ms\n' "$r" "$cfg" "$rps" "$p99"
  done
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "HTTP, $THREADS threads x $CONNECTIONS connections, $DURATION x $ROUNDS rounds (medians)"
printf '%-9s %12s %10s %16s %14s\n' config 'req/s' 'p99 ms' 'rps / direct' 'p99 / direct'
for cfg in direct membrane nginx; do
  rps=$(for r in $(seq "$ROUNDS"); do echo "${RPS[$cfg,$r]}"; done | median)
  p99=$(for r in $(seq "$ROUNDS"); do echo "${P99[$cfg,$r]}"; done | median)
  rr=$(for r in $(seq "$ROUNDS"); do awk -v a="${RPS[$cfg,$r]}" -v b="${RPS[direct,$r]}" 'BEGIN {print a/b}'; done | median)
  pr=$(for r in $(seq "$ROUNDS"); do awk -v a="${P99[$cfg,$r]}" -v b="${P99[direct,$r]}" 'BEGIN {print a/b}'; done | median)
  printf '%-9s %12.0f %10.2f %16.2f %14.2f\n' "$cfg" "$rps" "$p99" "$rr" "$pr"
done
mr=$(for r in $(seq "$ROUNDS"); do awk -v a="${RPS[membrane,$r]}" -v b="${RPS[nginx,$r]}" 'BEGIN {print a/b}'; done | median)
echo "membrane / nginx reverse proxy (req/s): $mr"
