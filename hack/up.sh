#!/usr/bin/env bash
# Starts Substrate on this machine: Valkey and the apiserver (more components to come).
#
#   hack/up.sh          build, start (or reuse/restart) everything, print what to type next
#   hack/down.sh        stop it again
#
# State lives in .substrate/: valkey/ (data), pki/, kubeconfig, logs/, run/ (pids).
# Ports: SUBSTRATE_VALKEY_PORT (default 6390), SUBSTRATE_APISERVER_PORT (default 6443).
# SUBSTRATE_APISERVER_BIN=<path> runs that binary instead of building the release one.
# Running it again is safe: Valkey is reused, the apiserver is rebuilt and restarted.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"

usage() {
  sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

apiserver_ready() {
  local auth=()
  [[ -r "$SUBSTRATE_PKI_DIR/ca.crt" ]] || return 1
  if [[ -r "$SUBSTRATE_PKI_DIR/admin.crt" && -r "$SUBSTRATE_PKI_DIR/admin.key" ]]; then
    auth=(--cert "$SUBSTRATE_PKI_DIR/admin.crt" --key "$SUBSTRATE_PKI_DIR/admin.key")
  fi
  curl -fsS --max-time 3 --cacert "$SUBSTRATE_PKI_DIR/ca.crt" "${auth[@]}" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null
}

build_apiserver() {
  if [[ -n "${SUBSTRATE_APISERVER_BIN:-}" ]]; then
    APISERVER_BIN="$SUBSTRATE_APISERVER_BIN"
    [[ -x "$APISERVER_BIN" ]] || die "SUBSTRATE_APISERVER_BIN=$APISERVER_BIN is not an executable"
    log "using SUBSTRATE_APISERVER_BIN=$APISERVER_BIN (not building)"
    return 0
  fi
  log "cargo build --release -p apiserver"
  (cd "$ROOT" && cargo build --release -p apiserver) ||
    die "building the apiserver failed (compiler output above); fix it, then rerun $0"
  APISERVER_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/substrate-apiserver"
  [[ -x "$APISERVER_BIN" ]] ||
    die "the build succeeded but produced no $APISERVER_BIN: apiserver/Cargo.toml must declare [[bin]] name = \"substrate-apiserver\""
}

start_apiserver() {
  mkdir -p "$SUBSTRATE_RUN_DIR" "$SUBSTRATE_LOG_DIR" "$SUBSTRATE_PKI_DIR"
  # Restart, so that a rebuilt binary is what runs.
  apiserver_stop
  if port_in_use "$APISERVER_PORT"; then
    die "port $APISERVER_PORT (apiserver) is already in use by $(port_owner "$APISERVER_PORT"); stop that process or pick another port: SUBSTRATE_APISERVER_PORT=<port> $0"
  fi

  log "starting the apiserver on https://127.0.0.1:$APISERVER_PORT"
  _rotate_log "$APISERVER_LOG"
  spawn_daemon "$APISERVER_PIDFILE" "$APISERVER_LOG" \
    "$APISERVER_BIN" \
    --bind "127.0.0.1:$APISERVER_PORT" \
    --valkey-url "redis://127.0.0.1:$VALKEY_PORT" \
    --pki-dir "$SUBSTRATE_PKI_DIR" \
    --kubeconfig-out "$SUBSTRATE_KUBECONFIG" \
    --log-format plain

  local pid rc=0
  pid="$(read_pidfile "$APISERVER_PIDFILE")"
  wait_for -t 60 -p "$pid" apiserver_ready || rc=$?
  if ((rc != 0)); then
    printf -- '--- last 50 lines of %s ---\n' "$APISERVER_LOG" >&2
    tail -n 50 "$APISERVER_LOG" >&2 || true
    printf -- '---\n' >&2
    if ((rc == 2)); then
      rm -f "$APISERVER_PIDFILE"
      die "the apiserver exited during start-up (log above)"
    fi
    apiserver_stop
    die "the apiserver was not ready at https://127.0.0.1:$APISERVER_PORT/readyz within 60s (log above); stopped it"
  fi
  [[ -r "$SUBSTRATE_KUBECONFIG" ]] ||
    die "the apiserver is ready but did not write $SUBSTRATE_KUBECONFIG (--kubeconfig-out)"
  log "apiserver is ready (pid $pid)"
}

print_next_steps() {
  local path_line=""
  if [[ "$KUBECTL" == "$SUBSTRATE_TOOLS_DIR/"* ]]; then
    path_line="export PATH=\"$SUBSTRATE_TOOLS_DIR/bin:\$PATH\"   # kubectl $("$KUBECTL" version --client -o json 2>/dev/null | sed -n 's/.*"gitVersion": *"\(.*\)".*/\1/p')
  "
  fi
  cat <<EOF

Substrate is up.
  apiserver  https://127.0.0.1:$APISERVER_PORT   log: $APISERVER_LOG
  valkey     127.0.0.1:$VALKEY_PORT           log: $VALKEY_LOG   data: $SUBSTRATE_VALKEY_DIR

Next, in your shell:

  ${path_line}export KUBECONFIG="$SUBSTRATE_KUBECONFIG"
  kubectl api-resources --api-group=substrate.ate.dev
  kubectl create -f - <<'YAML'
  apiVersion: substrate.ate.dev/v1alpha1
  kind: Atespace
  metadata:
    name: team-a
  spec:
    displayName: Team A
  YAML
  kubectl get atespaces

Stop with hack/down.sh (data is kept; hack/down.sh --purge deletes it).
EOF
}

main() {
  case "${1:-}" in
    "") ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  ensure_build_deps
  ensure_valkey
  ensure_kubectl
  ensure_rust
  build_apiserver
  valkey_start
  start_apiserver
  print_next_steps
}

main "$@"
