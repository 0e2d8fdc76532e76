#!/usr/bin/env bash
# Benchmarks the operator (substrate-bench-operator, operator/src/bin/substrate-bench-operator.rs):
# its CPU and memory with many idle actors and under a rate of changes, the time from a spec
# change to its action, and how long after a cascade delete its caches (and the router's
# table) equal the apiserver's objects. Figures and how to read them: docs/benchmarks.md
# ("Operator").
#
#   hack/bench-operator.sh                                  every phase, 100k actors (~20 min)
#   hack/bench-operator.sh --actors 10000 --idle-seconds 60 --cascade-actors 5000
#   hack/bench-operator.sh --phases idle,latency            some phases only
#   hack/bench-operator.sh --help                           every flag of the benchmark
#
# It builds the release binaries (the same build as hack/up.sh), then starts a throwaway
# system of its own in .substrate/bench-operator (fresh Valkey, apiserver, operator with
# --metrics-addr, router; no node agent: idle actors need no worker), runs the benchmark
# against it and stops it again; the logs stay in .substrate/bench-operator/logs. Ports
# (all on 127.0.0.1): SUBSTRATE_BENCH_OP_PORT_BASE (default 16400) + 0 Valkey, + 1 apiserver,
# + 2 operator metrics, + 3 router, + 4 router admin, + 5 router DNS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
BASE="${SUBSTRATE_BENCH_OP_PORT_BASE:-16400}"
export SUBSTRATE_HOME="${SUBSTRATE_BENCH_OP_HOME:-$ROOT/.substrate/bench-operator}"
export SUBSTRATE_VALKEY_PORT="$BASE" SUBSTRATE_APISERVER_PORT="$((BASE + 1))"
export SUBSTRATE_ROUTER_PORT="$((BASE + 3))" SUBSTRATE_ROUTER_ADMIN_PORT="$((BASE + 4))"
export SUBSTRATE_DNS_PORT="$((BASE + 5))"
export SUBSTRATE_OPERATOR_ADMIN_PORT="$((BASE + 2))"
OPERATOR_METRICS="127.0.0.1:$SUBSTRATE_OPERATOR_ADMIN_PORT"
# shellcheck source=hack/lib.sh disable=SC1091 # plain `shellcheck` does not follow it; `-x` does
source "$ROOT/hack/lib.sh"

usage() {
  sed -n '2,19s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

print_machine() {
  local cpu mem
  cpu="$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo 2>/dev/null | head -n 1)"
  mem="$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null)"
  section "machine"
  printf '  date:    %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >&2
  printf '  cpus:    %s (nproc)\n' "$(nproc)" >&2
  printf '  cpu:     %s\n' "${cpu:-unknown}" >&2
  printf '  memory:  %s\n' "${mem:-unknown}" >&2
  printf '  kernel:  %s\n' "$(uname -sr)" >&2
  printf '  valkey:  %s\n' "$("$VALKEY_SERVER" --version 2>/dev/null)" >&2
  printf '  commit:  %s%s\n' "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)" \
    "$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (plus uncommitted changes)')" >&2
  printf '  load:    %s\n' "$(cut -d ' ' -f 1-3 /proc/loadavg 2>/dev/null || echo unknown)" >&2
}

apiserver_ready() {
  curl -fsS --max-time 2 --cacert "$SUBSTRATE_PKI_DIR/ca.crt" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null
}
operator_leading() {
  curl -fsS --max-time 2 "http://$OPERATOR_METRICS/metrics" | grep -q '^ate_operator_controllers_running 1'
}
router_ready() { curl -fsS --max-time 2 "http://127.0.0.1:$ROUTER_ADMIN_PORT/readyz" >/dev/null; }

stop_all() {
  component_stop router || true
  component_stop operator || true
  apiserver_stop || true
  valkey_stop || true
}

start_all() {
  local port
  for port in "$VALKEY_PORT" "$APISERVER_PORT" "$((BASE + 2))" "$ROUTER_PORT" "$ROUTER_ADMIN_PORT" "$DNS_PORT"; do
    if port_in_use "$port"; then
      die "port $port is in use by $(port_owner "$port"); pick other ports: SUBSTRATE_BENCH_OP_PORT_BASE=<port> $0"
    fi
  done
  rm -rf "$SUBSTRATE_VALKEY_DIR" "$SUBSTRATE_PKI_DIR"
  valkey_start
  mkdir -p "$SUBSTRATE_PKI_DIR"
  log "starting the apiserver on https://127.0.0.1:$APISERVER_PORT"
  spawn_daemon "$APISERVER_PIDFILE" "$APISERVER_LOG" \
    "$BIN_DIR/substrate-apiserver" --bind "127.0.0.1:$APISERVER_PORT" \
    --valkey-url "redis://127.0.0.1:$VALKEY_PORT" --valkey-password-file "$VALKEY_PASSWORD_FILE" \
    --pki-dir "$SUBSTRATE_PKI_DIR" \
    --kubeconfig-out "$SUBSTRATE_KUBECONFIG" --log-format plain
  wait_for -t 60 -p "$(read_pidfile "$APISERVER_PIDFILE")" apiserver_ready ||
    die "the apiserver did not become ready (see $APISERVER_LOG)"
  log "starting the operator (metrics on $OPERATOR_METRICS)"
  component_start operator "$BIN_DIR/substrate-operator" --kubeconfig "$SUBSTRATE_KUBECONFIG" \
    --metrics-addr "$OPERATOR_METRICS"
  component_wait operator 60 operator_leading
  log "starting the router (admin on 127.0.0.1:$ROUTER_ADMIN_PORT)"
  component_start router "$BIN_DIR/substrate-router" --kubeconfig "$SUBSTRATE_KUBECONFIG" \
    --listen "127.0.0.1:$ROUTER_PORT" --admin-listen "127.0.0.1:$ROUTER_ADMIN_PORT" \
    --dns-listen "127.0.0.1:$DNS_PORT"
  component_wait router 60 router_ready
}

main() {
  local arg
  for arg in "$@"; do
    case "$arg" in
      -h | --help)
        usage
        printf '\n'
        ;;
    esac
  done
  ensure_rust
  ensure_valkey
  log "cargo build --release -p apiserver -p executor -p nodeagent -p operator -p router --bins"
  (cd "$ROOT" && cargo build --release -p apiserver -p executor -p nodeagent -p operator -p router --bins) ||
    die "the build failed (compiler output above)"
  BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
  for arg in "$@"; do
    if [[ "$arg" == -h || "$arg" == --help ]]; then
      exec "$BIN_DIR/substrate-bench-operator" --help
    fi
  done
  stop_all
  trap stop_all EXIT
  start_all
  print_machine
  section "substrate-bench-operator $*"
  "$BIN_DIR/substrate-bench-operator" \
    --kubeconfig "$SUBSTRATE_KUBECONFIG" \
    --operator-metrics "$OPERATOR_METRICS" \
    --operator-pid "$(main_pid "$(component_pidfile operator)")" \
    --operator-log "$(component_log operator)" \
    --router-metrics "127.0.0.1:$ROUTER_ADMIN_PORT" \
    --router-pid "$(main_pid "$(component_pidfile router)")" \
    --apiserver-pid "$(main_pid "$APISERVER_PIDFILE")" \
    "$@"
  printf '  load at the end: %s\n' "$(cut -d ' ' -f 1-3 /proc/loadavg)" >&2
}

main "$@"
