#!/usr/bin/env bash
# Benchmarks the actor runtime of a RUNNING system (hack/up.sh):
#
# 1. resume and suspend latency, broken down: ROUNDS times the demo actor `hello` is
#    suspended and resumed through the API; the node agent's "resume timing" log line gives
#    prepare (template + image/rootfs, cached), fetch (snapshot; node-local cache hit after
#    the first round), executor (the restore call), runsc (the bare `runsc restore` inside
#    it), ready (the readiness probe) and its total; the scheduling share is the time from
#    the resume POST to Running minus the agent's total. Suspends likewise (checkpoint,
#    upload). The target compares a resume with a cached image and a node-local snapshot
#    against the bare `runsc restore` of the same checkpoint: at most 1.1x + 20 ms.
# 2. multiplexing: the demo pool is scaled to WORKERS (8) workers, ACTORS (100) counter
#    actors are created and each is requested through the router, then suspended to make
#    room (twice: the second round checks every actor's memory survived: its count is 2).
#
#   hack/bench-runtime.sh                  both (~5 min)
#   ROUNDS=10 hack/bench-runtime.sh latency
#   ACTORS=100 WORKERS=8 hack/bench-runtime.sh multiplex
#
# Figures: docs/benchmarks.md ("Actor runtime").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=hack/lib.sh disable=SC1091
source "$ROOT/hack/lib.sh"

ROUNDS="${ROUNDS:-5}"
ACTORS="${ACTORS:-100}"
WORKERS="${WORKERS:-8}"
ZONE=actors.resources.substrate.ate.dev

usage() {
  sed -n '2,21s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

k() { "$KUBECTL" --kubeconfig "$SUBSTRATE_KUBECONFIG" --request-timeout=20s "$@"; }
api() { printf '/apis/substrate.ate.dev/v1alpha1/namespaces/%s/actors/%s/%s' "$1" "$2" "$3"; }
post() { k create --raw "$(api "$1" "$2" "$3")" -f - <<<'{}' >/dev/null; }
phase_is() { [[ "$(k get actor "$2" -n "$1" -o jsonpath='{.status.phase}')" == "$3" ]]; }
now_ms() { date +%s%3N; }
plain_log() { sed 's/\x1b\[[0-9;]*m//g' "$1"; }
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }

latency() {
  section "resume and suspend of demo/hello, $ROUNDS rounds (ms)"
  local agent_log
  agent_log="$(component_log nodeagent)"
  post demo hello resume || true
  wait_for -t 60 phase_is demo hello Running || die "demo/hello did not start"
  printf '  %-5s %8s %8s %8s %8s %8s %8s %8s %8s | %8s %8s %8s %8s\n' round api→run agent prepare fetch executor runsc ready sched \
    suspend ckpt runsc upload >&2
  local i t0 t1 line sline total suspend_ms
  for ((i = 1; i <= ROUNDS; i++)); do
    t0="$(now_ms)"
    post demo hello suspend
    wait_for -t 60 -i 0.02 phase_is demo hello Suspended || die "no suspend"
    suspend_ms=$(($(now_ms) - t0))
    t0="$(now_ms)"
    post demo hello resume
    wait_for -t 60 -i 0.02 phase_is demo hello Running || die "no resume"
    t1="$(now_ms)"
    line="$(plain_log "$agent_log" | grep 'resume timing' | grep 'actor=demo/hello' | tail -n 1)"
    sline="$(plain_log "$agent_log" | grep 'suspend timing' | grep 'actor=demo/hello' | tail -n 1)"
    total="$(field total_ms <<<"$line")"
    printf '  %-5s %8d %8.0f %8.1f %8.1f %8.1f %8.1f %8.1f %8.0f | %8d %8.0f %8.0f %8.0f\n' "$i" $((t1 - t0)) "$total" \
      "$(field prepare_ms <<<"$line")" "$(field fetch_ms <<<"$line")" "$(field executor_ms <<<"$line")" \
      "$(field runsc_ms <<<"$line")" "$(field ready_ms <<<"$line")" \
      "$(awk -v a=$((t1 - t0)) -v b="$total" 'BEGIN {print a - b}')" "$suspend_ms" \
      "$(field checkpoint_ms <<<"$sline")" "$(field runsc_ms <<<"$sline")" "$(field upload_ms <<<"$sline")" >&2
  done
  log "api→run / suspend: POST to the phase seen by kubectl polling (each poll runs kubectl: ~100 ms granularity); agent: the node agent's resume; sched = api→run − agent (scheduling, watch delivery, status writes, polling); ckpt: the agent's checkpoint step (executor call), runsc: the bare runsc checkpoint in it, upload: zstd + object store + manifest"
}

request() { # ACTOR → body (fails on non-2xx)
  curl -fsS --max-time 60 -x "http://$ROUTER" "http://$1.bench-mux.$ZONE/"
}

multiplex() {
  section "multiplexing: $ACTORS actors on $WORKERS workers"
  k patch workerpool demo -n default --type=merge -p "{\"spec\":{\"replicas\":$WORKERS}}" >/dev/null
  wait_for -t 120 _workers_ready || die "the node agent did not bring up $WORKERS workers"
  k get atespace bench-mux >/dev/null 2>&1 || k create -f - >/dev/null <<EOF
apiVersion: substrate.ate.dev/v1alpha1
kind: Atespace
metadata: {name: bench-mux}
EOF
  local i manifest=""
  for ((i = 0; i < ACTORS; i++)); do
    manifest+="---
apiVersion: substrate.ate.dev/v1alpha1
kind: Actor
metadata: {name: a$i, namespace: bench-mux}
spec: {template: {name: counter, namespace: demo}, idleTimeout: 10m}
"
  done
  k apply -f - >/dev/null <<<"$manifest"
  sleep 2 # the router's table follows the watch
  local round start body n bad=0 retries=0
  for round in 1 2; do
    start="$(now_ms)"
    for ((i = 0; i < ACTORS; i++)); do
      while ! body="$(request "a$i" 2>/dev/null)"; do
        retries=$((retries + 1)) # 503: no free worker yet
        sleep 0.2
      done
      n="${body%% *}"
      [[ "$n" == "$round" ]] || { bad=$((bad + 1)); warn "a$i answered '$body' in round $round"; }
      post bench-mux "a$i" suspend &
      # At most WORKERS suspends in flight.
      while (($(jobs -rp | wc -l) >= WORKERS)); do wait -n || true; done
    done
    wait
    log "round $round: $ACTORS actors served and suspended in $(($(now_ms) - start)) ms ($retries retries on 503 so far, $bad wrong counts)"
  done
  local max_bound
  max_bound="$(k get workers -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c Bound || true)"
  log "workers now: $WORKERS, bound: $max_bound; actors: $(k get actors -n bench-mux --no-headers | wc -l)"
  ((bad == 0)) || die "$bad answers did not continue the actor's count: memory was lost"
  log "every actor kept its memory across its suspend (count 2 in round 2)"
  k delete atespace bench-mux --wait=false >/dev/null
  k patch workerpool demo -n default --type=merge -p '{"spec":{"replicas":2}}' >/dev/null
}

_workers_ready() {
  local n
  n="$(k get workers -o jsonpath='{range .items[*]}{.spec.pool} {.status.phase}{"\n"}{end}' | awk '$1 == "demo" && ($2 == "Free" || $2 == "Bound")' | grep -c .)" || return 1
  ((n >= WORKERS))
}

main() {
  local what="${1:-all}"
  case "$what" in
    all | latency | multiplex) ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $what" ;;
  esac
  [[ -r "$ENDPOINTS_FILE" ]] || die "no $ENDPOINTS_FILE: start the system first (hack/up.sh)"
  # shellcheck disable=SC1090
  source "$ENDPOINTS_FILE"
  ensure_kubectl
  printf '  cpus: %s, load: %s\n' "$(nproc)" "$(cut -d ' ' -f 1-3 /proc/loadavg)" >&2
  [[ "$what" == multiplex ]] || latency
  [[ "$what" == latency ]] || multiplex
}

main "$@"
