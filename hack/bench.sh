#!/usr/bin/env bash
# Benchmarks a RUNNING apiserver: create, get, list, update, watch fan-out and Valkey memory
# per actor (substrate-bench, apiserver/src/bin/substrate-bench.rs). Figures and what limits
# them: docs/benchmarks.md. It builds the release substrate-bench, prints the machine facts,
# then runs it with the arguments given.
#
#   hack/bench.sh                              every phase (100k actors for memory; ~6 min on 2 cores)
#   hack/bench.sh --phases create,get,watch    some phases only
#   hack/bench.sh --memory-actors 10000 --json a smaller memory phase, one JSON document
#   hack/bench.sh --help                       every flag of substrate-bench
#   hack/bench.sh --compare-kube [flags]       the same phases on kube-apiserver + etcd too
#
# --compare-kube also starts etcd + kube-apiserver (KUBEBUILDER_ASSETS, Debian's etcd) on
# loopback ports the kernel picks (substrate-envtest, the test harness's control plane; no
# fixed port, so nothing clashes with hack/up.sh or hack/cluster-up.sh), and runs every
# phase on Substrate then on kube-apiserver with the CRD actors.benchmark.ate.dev
# (substrate-bench --target both): a table with the ratio per operation, the CPU of each
# server and of the benchmark. Default phases create,get,list,update,patch,watch, lists in
# pages of 500; the control plane is stopped on exit, Ctrl-C or failure.
#
# By default it loads the system of hack/up.sh (.substrate/kubeconfig, Valkey on
# SUBSTRATE_VALKEY_PORT) and checks that it is up. Another apiserver: pass --kubeconfig or
# --pki-dir (or set SUBSTRATE_BENCH_KUBECONFIG), plus SUBSTRATE_BENCH_VALKEY_URL (and
# SUBSTRATE_BENCH_VALKEY_PASSWORD_FILE; default: hack/up.sh's valkey/password) and, for its
# CPU share, SUBSTRATE_BENCH_APISERVER_PID. The run creates atespaces bench-<id>[-list|-watch|
# -mem] and deletes them at the end (asynchronously; --wait-cleanup waits).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=hack/lib.sh disable=SC1091 # plain `shellcheck` does not follow it; `-x` does
source "$ROOT/hack/lib.sh"

usage() {
  sed -n '2,27s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

# check_system_up: the apiserver and Valkey of hack/up.sh answer; exports what
# substrate-bench needs to find them (unless already set).
check_system_up() {
  local hint="start it with hack/up.sh (or point the benchmark elsewhere, see hack/bench.sh --help)"
  [[ -r "$SUBSTRATE_KUBECONFIG" ]] || die "no $SUBSTRATE_KUBECONFIG: Substrate is not up; $hint"
  local pid
  pid="$(main_pid "$APISERVER_PIDFILE")"
  if [[ -z "$pid" ]] || ! pid_matches "$pid" "$APISERVER_REGEX"; then
    die "the apiserver of hack/up.sh is not running (no live pid in $APISERVER_PIDFILE); $hint"
  fi
  if command -v curl >/dev/null 2>&1 &&
    ! curl -fsS --max-time 5 --cacert "$SUBSTRATE_PKI_DIR/ca.crt" \
      "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null; then
    die "the apiserver (pid $pid) is not ready at https://127.0.0.1:$APISERVER_PORT/readyz; see $APISERVER_LOG, or $hint"
  fi
  if command -v valkey-cli >/dev/null 2>&1 || command -v redis-cli >/dev/null 2>&1; then
    valkey_ping "$VALKEY_PORT" || die "Valkey does not answer on 127.0.0.1:$VALKEY_PORT; $hint"
  fi
  export SUBSTRATE_BENCH_KUBECONFIG="$SUBSTRATE_KUBECONFIG"
  export SUBSTRATE_BENCH_VALKEY_URL="${SUBSTRATE_BENCH_VALKEY_URL:-redis://127.0.0.1:$VALKEY_PORT}"
  if [[ -z "${SUBSTRATE_BENCH_VALKEY_PASSWORD_FILE:-}" && -r "$VALKEY_PASSWORD_FILE" ]]; then
    export SUBSTRATE_BENCH_VALKEY_PASSWORD_FILE="$VALKEY_PASSWORD_FILE"
  fi
  export SUBSTRATE_BENCH_APISERVER_PID="${SUBSTRATE_BENCH_APISERVER_PID:-$pid}"
  log "target: the apiserver of hack/up.sh (pid $pid, https://127.0.0.1:$APISERVER_PORT), Valkey $SUBSTRATE_BENCH_VALKEY_URL"
}

print_machine() {
  local cpu mem valkey
  cpu="$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo 2>/dev/null | head -n 1)"
  mem="$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null)"
  valkey="$({ command -v valkey-server >/dev/null 2>&1 && valkey-server --version; } ||
    { command -v redis-server >/dev/null 2>&1 && redis-server --version; } || echo "not on PATH")"
  section "machine"
  printf '  cpus:    %s (nproc)\n' "$(nproc)" >&2
  printf '  cpu:     %s\n' "${cpu:-unknown}" >&2
  printf '  memory:  %s\n' "${mem:-unknown}" >&2
  printf '  kernel:  %s\n' "$(uname -sr)" >&2
  printf '  valkey:  %s\n' "$valkey" >&2
  printf '  load:    %s\n' "$(cut -d ' ' -f 1-3 /proc/loadavg 2>/dev/null || echo unknown)" >&2
}

# The control plane of --compare-kube: substrate-envtest, its env file and state.
ENVTEST_PID=""
ENVTEST_RUN_DIR=""

stop_envtest() {
  if [[ -n "$ENVTEST_PID" ]] && pid_alive "$ENVTEST_PID"; then
    log "stopping kube-apiserver and etcd (substrate-envtest pid $ENVTEST_PID)"
    kill -TERM "$ENVTEST_PID" 2>/dev/null || true
    wait "$ENVTEST_PID" 2>/dev/null || true
  fi
  ENVTEST_PID=""
  if [[ -n "$ENVTEST_RUN_DIR" ]]; then
    rm -rf "$ENVTEST_RUN_DIR"
  fi
}

# start_envtest BIN: etcd + kube-apiserver (BIN is substrate-envtest), stopped on exit;
# exports what substrate-bench --target both needs to load them.
start_envtest() {
  ENVTEST_RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/substrate-bench-kube.XXXXXX")"
  trap stop_envtest EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  log "starting etcd + kube-apiserver (KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS, loopback)"
  "$1" --env-file "$ENVTEST_RUN_DIR/env" 2>"$ENVTEST_RUN_DIR/envtest.log" &
  ENVTEST_PID=$!
  local rc=0
  wait_for -t 120 -p "$ENVTEST_PID" test -s "$ENVTEST_RUN_DIR/env" || rc=$?
  if ((rc != 0)); then
    tail -n 40 "$ENVTEST_RUN_DIR/envtest.log" >&2 || true
    die "etcd + kube-apiserver did not start (log above)"
  fi
  # shellcheck disable=SC1091 # written by substrate-envtest
  source "$ENVTEST_RUN_DIR/env"
  export SUBSTRATE_BENCH_TARGET=both
  export SUBSTRATE_BENCH_KUBE_KUBECONFIG="$ENVTEST_KUBECONFIG"
  export SUBSTRATE_BENCH_KUBE_APISERVER_PID="$ENVTEST_KUBE_APISERVER_PID"
  export SUBSTRATE_BENCH_ETCD_PID="$ENVTEST_ETCD_PID"
  export SUBSTRATE_BENCH_PHASES="${SUBSTRATE_BENCH_PHASES:-create,get,list,update,patch,watch}"
  export SUBSTRATE_BENCH_LIST_PAGE_SIZE="${SUBSTRATE_BENCH_LIST_PAGE_SIZE:-500}"
  log "kube-apiserver $ENVTEST_SERVER (pid $ENVTEST_KUBE_APISERVER_PID), etcd pid $ENVTEST_ETCD_PID ($(etcd --version 2>/dev/null | head -n 1))"
}

main() {
  local arg custom="" help="" compare="" args=()
  for arg in "$@"; do
    case "$arg" in
      -h | --help) help=1 ;;
      --kubeconfig | --kubeconfig=* | --pki-dir | --pki-dir=* | --server | --server=*) custom=1 ;;
    esac
    if [[ "$arg" == --compare-kube ]]; then
      compare=1
    else
      args+=("$arg")
    fi
  done
  set -- "${args[@]}"
  if [[ -n "${SUBSTRATE_BENCH_KUBECONFIG:-}${SUBSTRATE_BENCH_PKI_DIR:-}${SUBSTRATE_BENCH_SERVER:-}" ]]; then
    custom=1
  fi
  if [[ -n "$help" ]]; then
    usage
    printf '\n'
  fi

  ensure_rust
  if [[ -z "$help" && -z "$custom" ]]; then
    check_system_up
  fi
  log "cargo build --release -p apiserver --bin substrate-bench"
  (cd "$ROOT" && cargo build --release -p apiserver --bin substrate-bench) ||
    die "building substrate-bench failed (compiler output above)"
  local target="${CARGO_TARGET_DIR:-$ROOT/target}"
  local bin="$target/release/substrate-bench"
  [[ -x "$bin" ]] || die "the build succeeded but produced no $bin"
  if [[ -n "$help" ]]; then
    exec "$bin" --help
  fi
  if [[ -n "$compare" ]]; then
    ensure_envtest
    [[ -n "${KUBEBUILDER_ASSETS:-}" ]] || die "--compare-kube needs kube-apiserver: set KUBEBUILDER_ASSETS"
    # It only starts processes: the debug build (as the tests build it) does.
    log "cargo build --bin substrate-envtest"
    (cd "$ROOT" && cargo build --bin substrate-envtest) ||
      die "building substrate-envtest failed (compiler output above)"
    start_envtest "$target/debug/substrate-envtest"
  fi
  print_machine
  section "substrate-bench $*"
  cd "$ROOT"
  if [[ -z "$compare" ]]; then
    exec "$bin" "$@"
  fi
  # Not exec: the EXIT trap stops the control plane afterwards.
  "$bin" "$@"
  printf '  load after the run: %s\n' "$(cut -d ' ' -f 1-3 /proc/loadavg)" >&2
}

main "$@"
