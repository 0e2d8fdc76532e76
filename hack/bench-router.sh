#!/usr/bin/env bash
# Benchmarks the router of a RUNNING system (hack/up.sh) against the demo actor `hello`:
#
# 1. proxy overhead on a warm actor: substrate-loadgen (tests/src/bin/substrate-loadgen.rs)
#    runs the same closed loop against the actor's worker directly and through the router,
#    at 1, 16 and 256 connections, one after the other in one run; it prints requests/s,
#    latency p50/p99 and the router's added latency and throughput ratio;
# 2. cold wake: ROUNDS times, the actor is suspended, then one request goes through the
#    router; curl's time to first byte is printed beside the executor's restore time
#    (runsc restore + network, from its log) and the router's wake time (from its log).
#
#   hack/bench-router.sh                                 everything (~1 min)
#   SUBSTRATE_BENCH_DURATION=10s hack/bench-router.sh    longer load phases
#   SUBSTRATE_BENCH_CONNECTIONS=1,16 ROUNDS=3 hack/bench-router.sh
#   SUBSTRATE_BENCH_PIN=1 hack/bench-router.sh        sandboxes on CPU 1, router + load on CPU 0
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
  sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

k() { "$KUBECTL" --kubeconfig "$SUBSTRATE_KUBECONFIG" --request-timeout=20s "$@"; }

phase() { k get actor "$ACTOR" -n "$ATESPACE" -o jsonpath='{.status.phase}'; }
is_phase() { [[ "$(phase)" == "$1" ]]; }

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
  log "cargo build --release -p e2e --bin substrate-loadgen"
  (cd "$ROOT" && cargo build --release -p e2e --bin substrate-loadgen) || die "building substrate-loadgen failed"
  local loadgen="${CARGO_TARGET_DIR:-$ROOT/target}/release/substrate-loadgen"

  section "machine"
  printf '  cpus: %s, load: %s, router pid %s\n' "$(nproc)" "$(cut -d ' ' -f 1-3 /proc/loadavg)" \
    "$(read_pidfile "$(component_pidfile router)")" >&2

  # Warm: wake the actor through the router, then read its worker address.
  curl -fsS -o /dev/null -x "http://$ROUTER" "http://$HOST/healthz" || die "the router could not reach $HOST"
  wait_for -t 30 is_phase Running || die "actor $ATESPACE/$ACTOR is not Running"
  local addr
  addr="$(k get actor "$ACTOR" -n "$ATESPACE" -o jsonpath='{.status.worker.address}')"
  [[ -n "$addr" ]] || die "actor $ATESPACE/$ACTOR has no worker address"

  section "proxy overhead (warm actor, GET /healthz, keep-alive)"
  local pin=() router_pid p
  if [[ -n "${SUBSTRATE_BENCH_PIN:-}" ]]; then
    # The sandboxes (runsc) on CPU 1, the router and the load generator on CPU 0: the
    # sandbox's systrap threads no longer compete with the router.
    router_pid="$(read_pidfile "$(component_pidfile router)")"
    for p in $(pgrep -f runsc); do taskset -a -p -c 1 "$p" >/dev/null; done
    taskset -a -p -c 0 "$router_pid" >/dev/null
    pin=(taskset -c 0)
    log "pinned: sandboxes on CPU 1, router and load generator on CPU 0"
  fi
  "${pin[@]}" "$loadgen" --target "direct=$addr:8080" --target "router=$ROUTER@$HOST" \
    --connections "${SUBSTRATE_BENCH_CONNECTIONS:-1,16,256}" \
    --duration "${SUBSTRATE_BENCH_DURATION:-5s}" --warmup 1s --path /healthz
  if [[ -n "${SUBSTRATE_BENCH_PIN:-}" ]]; then
    for p in $(pgrep -f runsc) "$router_pid"; do taskset -a -p -c "0-$(($(nproc) - 1))" "$p" >/dev/null; done
  fi

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
