#!/usr/bin/env bash
# Benchmarks the router of a RUNNING system (hack/up.sh) against the demo actor `hello`:
#
# 1. proxy overhead on a warm actor: substrate-loadgen (loadgen/src/main.rs)
#    runs the same closed loop against the actor's worker directly and through the router,
#    at 1, 16 and 256 connections, in one run: each target's time is cut into rounds run in
#    rotating order, so the machine's drift hits every target alike; it prints requests/s,
#    latency p50/p99 and the router's added latency and throughput ratio (median of the
#    rounds, with their range); then the router's and HAProxy's CPU per proxied request,
#    user and system (/proc ticks over each one's request counter);
# 2. cold wake: ROUNDS times, the actor is suspended, then one request goes through the
#    router; curl's time to first byte is printed beside the executor's restore time
#    (runsc restore + network, from its log) and the router's wake time (from its log).
#
#   hack/bench-router.sh                                 everything (~1 min)
#   SUBSTRATE_BENCH_DURATION=10s hack/bench-router.sh    longer load phases (per target and level)
#   SUBSTRATE_BENCH_LOAD_ROUNDS=10 hack/bench-router.sh  more, shorter slices (default 5)
#   SUBSTRATE_BENCH_CONNECTIONS=1,16 ROUNDS=3 hack/bench-router.sh
#   SUBSTRATE_BENCH_PIN=1 hack/bench-router.sh        sandboxes on CPU 1, router + load on CPU 0
#   SUBSTRATE_BENCH_HAPROXY=0 hack/bench-router.sh     without the HAProxy reference
#
# A reference proxy runs in the same load phases: HAProxy (Debian package, installed when
# missing; HTTP mode, keep-alive both sides, X-Forwarded-For, 127.0.0.1 only), to tell what
# any second hop costs on this machine from what our router costs. During the load phases
# the actor's idleTimeout is raised (direct traffic is not seen by the router, so the
# operator would suspend it) and restored afterwards.
#
# Figures and how to read them: docs/benchmarks.md ("Router").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=hack/lib.sh disable=SC1091
source "$ROOT/hack/lib.sh"

ROUNDS="${ROUNDS:-5}"
ACTOR=hello
ATESPACE=demo
HOST="$ACTOR.$ATESPACE.actors.resources.substrate.ate.dev"

usage() {
  sed -n '2,/^# Figures/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

k() { "$KUBECTL" --kubeconfig "$SUBSTRATE_KUBECONFIG" --request-timeout=20s "$@"; }

phase() { k get actor "$ACTOR" -n "$ATESPACE" -o jsonpath='{.status.phase}'; }
is_phase() { [[ "$(phase)" == "$1" ]]; }

HAPROXY_PORT="${SUBSTRATE_BENCH_HAPROXY_PORT:-18181}"
HAPROXY_DIR="$SUBSTRATE_DIR/bench-haproxy"

# start_haproxy UPSTREAM: HAProxy on 127.0.0.1:$HAPROXY_PORT in front of UPSTREAM, set up as
# the router is (keep-alive both sides, connection reuse, X-Forwarded-For), one thread per CPU.
start_haproxy() {
  mkdir -p "$HAPROXY_DIR"
  cat >"$HAPROXY_DIR/haproxy.cfg" <<CFG
global
    nbthread $(nproc)
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    option forwardfor
    http-reuse always
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend actor
backend actor
    server worker $1
frontend stats
    bind 127.0.0.1:$((HAPROXY_PORT + 1))
    stats enable
    stats uri /stats
CFG
  stop_haproxy
  haproxy -D -f "$HAPROXY_DIR/haproxy.cfg" -p "$HAPROXY_DIR/haproxy.pid" || die "haproxy did not start"
  wait_for -t 10 curl -fsS -o /dev/null -H "Host: $HOST" "http://127.0.0.1:$HAPROXY_PORT/healthz" ||
    die "haproxy does not answer on 127.0.0.1:$HAPROXY_PORT"
  log "reference: haproxy $(haproxy -v | sed -n 's/^HAProxy version \([^ ]*\).*/\1/p') on 127.0.0.1:$HAPROXY_PORT"
}

stop_haproxy() {
  local pid
  pid="$(cat "$HAPROXY_DIR/haproxy.pid" 2>/dev/null || true)"
  [[ -z "$pid" ]] || kill "$pid" 2>/dev/null || true
  rm -f "$HAPROXY_DIR/haproxy.pid"
}

# restore_idle IDLE: puts the actor's idleTimeout back (unset when IDLE is empty).
restore_idle() {
  local patch='{"spec":{"idleTimeout":null}}'
  [[ -z "$1" ]] || patch="{\"spec\":{\"idleTimeout\":\"$1\"}}"
  k patch actor "$ACTOR" -n "$ATESPACE" --type=merge -p "$patch" >/dev/null || true
  stop_haproxy
}

# cpu_ticks PID: its user and system CPU time so far (clock ticks, all threads, from /proc).
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
router_requests() {
  curl -fsS "http://127.0.0.1:$ROUTER_ADMIN_PORT/metrics" | awk '/^substrate_router_requests_total/ {s += $2} END {printf "%d\n", s}'
}
# HAProxy's request count on the proxied frontend (its stats page, CSV `req_tot`).
haproxy_requests() {
  curl -fsS "http://127.0.0.1:$((HAPROXY_PORT + 1))/stats;csv" |
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "req_tot") c = i }
             $1 == "fe" && $2 == "FRONTEND" { print $c }'
}
# cpu_per_request NAME "USER0 SYS0" "USER1 SYS1" REQUESTS: CPU per proxied request, split.
cpu_per_request() {
  awk -v name="$1" -v a="$2" -v b="$3" -v r="$4" -v hz="$(getconf CLK_TCK)" 'BEGIN {
    split(a, x, " "); split(b, y, " "); u = (y[1] - x[1]) / hz * 1e6; s = (y[2] - x[2]) / hz * 1e6
    if (r > 0) printf "  %s CPU per proxied request: %.1f µs (user %.1f + system %.1f; %d requests)\n", name, (u + s) / r, u / r, s / r, r
  }'
}

main() {
  case "${1:-}" in
    "") ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  [[ -r "$ENDPOINTS_FILE" ]] || die "no $ENDPOINTS_FILE: start the system first (hack/up.sh)"
  # shellcheck disable=SC1090
  source "$ENDPOINTS_FILE"
  ensure_kubectl
  ensure_rust
  log "cargo build --release -p loadgen"
  (cd "$ROOT" && cargo build --release -p loadgen) || die "building substrate-loadgen failed"
  local loadgen="${CARGO_TARGET_DIR:-$ROOT/target}/release/substrate-loadgen"

  section "machine"
  printf '  cpus: %s, load: %s, router pid %s\n' "$(nproc)" "$(cut -d ' ' -f 1-3 /proc/loadavg)" \
    "$(main_pid "$(component_pidfile router)")" >&2

  # Warm: wake the actor through the router, then read its worker address.
  curl -fsS -o /dev/null -x "http://$ROUTER" "http://$HOST/healthz" || die "the router could not reach $HOST"
  wait_for -t 30 is_phase Running || die "actor $ATESPACE/$ACTOR is not Running"
  local addr
  addr="$(k get actor "$ACTOR" -n "$ATESPACE" -o jsonpath='{.status.worker.address}')"
  [[ -n "$addr" ]] || die "actor $ATESPACE/$ACTOR has no worker address"

  # Direct requests do not reach the router, so they are no activity: keep the actor awake.
  local idle
  idle="$(k get actor "$ACTOR" -n "$ATESPACE" -o jsonpath='{.spec.idleTimeout}')"
  k patch actor "$ACTOR" -n "$ATESPACE" --type=merge -p '{"spec":{"idleTimeout":"1h"}}' >/dev/null
  # shellcheck disable=SC2064
  trap "restore_idle '$idle'" EXIT

  local targets=(--target "direct=$addr:8080" --target "router=$ROUTER@$HOST")
  if [[ "${SUBSTRATE_BENCH_HAPROXY:-1}" != 0 ]]; then
    ensure_apt haproxy
    _disable_distro_service haproxy
    start_haproxy "$addr:8080"
    targets+=(--target "haproxy=127.0.0.1:$HAPROXY_PORT@$HOST")
  fi

  section "proxy overhead (warm actor, GET /healthz, keep-alive)"
  local pin=() router_pid p
  if [[ -n "${SUBSTRATE_BENCH_PIN:-}" ]]; then
    # The sandboxes (runsc) on CPU 1, the router and the load generator on CPU 0: the
    # sandbox's systrap threads no longer compete with the router.
    router_pid="$(main_pid "$(component_pidfile router)")"
    for p in $(pgrep -f runsc); do taskset -a -p -c 1 "$p" >/dev/null; done
    taskset -a -p -c 0 "$router_pid" >/dev/null
    pin=(taskset -c 0)
    log "pinned: sandboxes on CPU 1, router and load generator on CPU 0"
  fi
  # The router's (and HAProxy's) CPU per request it proxied: its CPU time (user and system,
  # clock ticks from /proc) over its request counter, across the run (each is idle in the
  # other targets' phases).
  local rpid rcpu0 reqs0 hpid="" hcpu0="" hreqs0=""
  rpid="$(main_pid "$(component_pidfile router)")"
  rcpu0="$(cpu_ticks "$rpid")"
  reqs0="$(router_requests)"
  if [[ "${SUBSTRATE_BENCH_HAPROXY:-1}" != 0 ]]; then
    hpid="$(cat "$HAPROXY_DIR/haproxy.pid")"
    hcpu0="$(cpu_ticks "$hpid")"
    hreqs0="$(haproxy_requests)"
  fi
  "${pin[@]}" "$loadgen" "${targets[@]}" \
    --connections "${SUBSTRATE_BENCH_CONNECTIONS:-1,16,256}" \
    --duration "${SUBSTRATE_BENCH_DURATION:-5s}" --rounds "${SUBSTRATE_BENCH_LOAD_ROUNDS:-5}" \
    --warmup 500ms --path /healthz
  cpu_per_request router "$rcpu0" "$(cpu_ticks "$rpid")" "$(($(router_requests) - reqs0))"
  if [[ -n "$hpid" ]]; then
    cpu_per_request haproxy "$hcpu0" "$(cpu_ticks "$hpid")" "$(($(haproxy_requests) - hreqs0))"
  fi
  if [[ -n "${SUBSTRATE_BENCH_PIN:-}" ]]; then
    for p in $(pgrep -f runsc) "$router_pid"; do taskset -a -p -c "0-$(($(nproc) - 1))" "$p" >/dev/null; done
  fi
  restore_idle "$idle"
  trap - EXIT

  section "cold wake: first byte through the router vs the restore alone"
  local i ttfb worker log restore wake
  for ((i = 1; i <= ROUNDS; i++)); do
    k create --raw "/apis/substrate.ate.dev/v1alpha1/namespaces/$ATESPACE/actors/$ACTOR/suspend" -f - <<<'{}' >/dev/null
    wait_for -t 60 is_phase Suspended || die "actor did not suspend"
    sleep 1
    ttfb="$(curl -fsS -o /dev/null -w '%{time_starttransfer}' -x "http://$ROUTER" "http://$HOST/")"
    worker="$(k get actor "$ACTOR" -n "$ATESPACE" -o jsonpath='{.status.worker.name}')"
    log="$SUBSTRATE_DIR/node/logs/$worker.log"
    restore="$(sed 's/\x1b\[[0-9;]*m//g' "$log" 2>/dev/null | grep 'sandbox running' | grep 'kind="restore"' | tail -n 1 |
      sed -n 's/.*total_ms=\([0-9]*\).*/\1/p')"
    wake="$(sed 's/\x1b\[[0-9;]*m//g' "$(component_log router)" | grep 'actor woken' | grep "actor=$ACTOR" | tail -n 1 |
      sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p')"
    printf '  round %d: first byte after %4.0f ms; router wake %s ms; executor restore %s ms (worker %s)\n' \
      "$i" "$(awk -v t="$ttfb" 'BEGIN {print t * 1000}')" "${wake:-?}" "${restore:-?}" "$worker"
  done
}

main "$@"
