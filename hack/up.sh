#!/usr/bin/env bash
# Starts the whole of Substrate on this machine, with a demo: Valkey, the apiserver, a local
# OCI registry with the counter image, the node agent with two gVisor workers, the
# operator, the router and its DNS; then the demo atespace, template and actor, and two
# demo tenants (alice: atespace team-a, bob: team-b) with kubeconfigs in tenants/.
#
#   hack/up.sh          install what is missing, build, start (or restart) everything,
#                       print what to type next
#   hack/down.sh        stop it again (running actors are suspended first)
#
# Needs root (gVisor sandboxes, network namespaces). State lives in .substrate/ (or
# $SUBSTRATE_HOME): kubeconfig, tenants/, endpoints.env, pki/, valkey/ (data, and the Valkey
# password generated at the first start, valkey/password, mode 0600), registry/, node/,
# snapshots/, logs/, run/. Ports (all on 127.0.0.1): SUBSTRATE_{VALKEY,APISERVER,REGISTRY,ROUTER,
# ROUTER_ADMIN,DNS}_PORT (6390, 6443, 5000, 8080, 9091, 1053). Workers: SUBSTRATE_ADDR_RANGE
# (10.203.0.0/16), SUBSTRATE_WORKER_INDEX_BASE (1), SUBSTRATE_NODE_NAME (local).
# SUBSTRATE_PROFILE=debug uses debug builds. Running it again is safe: running actors are
# suspended first, data is kept, components are rebuilt and restarted. Every component runs
# under substrate-supervise, which restarts it when it dies (logs/<name>.log says so).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"

NODE_NAME="${SUBSTRATE_NODE_NAME:-local}"
# Worker addresses: one /30 per worker index in this range (an unreachable route for all of
# it is added to the host before any is used). Index base 1 → 10.203.0.4/30 and up.
ADDR_RANGE="${SUBSTRATE_ADDR_RANGE:-10.203.0.0/16}"
WORKER_INDEX_BASE="${SUBSTRATE_WORKER_INDEX_BASE:-1}"
# One machine: every component talks to this apiserver alone, even inside a pod (where
# `--mode auto` would pick cluster mode; see the clients crate).
export SUBSTRATE_MODE=standalone

usage() {
  sed -n '2,19s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
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

# --- Components -------------------------------------------------------------------------

start_apiserver() {
  mkdir -p "$SUBSTRATE_RUN_DIR" "$SUBSTRATE_LOG_DIR" "$SUBSTRATE_PKI_DIR"
  # Restart, so that a rebuilt binary is what runs.
  apiserver_stop
  if port_in_use "$APISERVER_PORT"; then
    die "port $APISERVER_PORT (apiserver) is already in use by $(port_owner "$APISERVER_PORT"); stop that process or pick another port: SUBSTRATE_APISERVER_PORT=<port> $0"
  fi
  log "starting the apiserver on https://127.0.0.1:$APISERVER_PORT"
  _rotate_log "$APISERVER_LOG"
  supervised_spawn "$APISERVER_PIDFILE" "$APISERVER_LOG" \
    "$BIN_DIR/substrate-apiserver" \
    --bind "127.0.0.1:$APISERVER_PORT" \
    --valkey-url "redis://127.0.0.1:$VALKEY_PORT" \
    --valkey-password-file "$VALKEY_PASSWORD_FILE" \
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

start_nodeagent() {
  component_stop nodeagent 60
  mkdir -p "$SUBSTRATE_DIR/node" "$SUBSTRATE_DIR/snapshots"
  NODEAGENT_STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  log "starting the node agent ($NODE_NAME: pool demo, workers in $ADDR_RANGE)"
  component_start nodeagent "$BIN_DIR/substrate-nodeagent" \
    --kubeconfig "$SUBSTRATE_KUBECONFIG" \
    --node "$NODE_NAME" \
    --pool-namespace default \
    --pools demo \
    --state-dir "$SUBSTRATE_DIR/node" \
    --snapshot-url "file://$SUBSTRATE_DIR/snapshots" \
    --insecure-registries "127.0.0.1:$REGISTRY_PORT" \
    --executor-bin "$BIN_DIR/substrate-executor" \
    --worker-index-base "$WORKER_INDEX_BASE" \
    --executor-arg="--addr-range=$ADDR_RANGE" \
    --executor-arg=--on-shutdown=kill
  component_wait nodeagent 90 workers_registered
}

start_operator() {
  component_stop operator
  if port_in_use "$OPERATOR_ADMIN_PORT"; then
    die "port $OPERATOR_ADMIN_PORT (operator metrics) is already in use by $(port_owner "$OPERATOR_ADMIN_PORT"); stop it or pick another: SUBSTRATE_OPERATOR_ADMIN_PORT=<port> $0"
  fi
  log "starting the operator"
  component_start operator "$BIN_DIR/substrate-operator" --kubeconfig "$SUBSTRATE_KUBECONFIG" \
    --snapshot-url "file://$SUBSTRATE_DIR/snapshots" \
    --metrics-addr "127.0.0.1:$OPERATOR_ADMIN_PORT"
  component_wait operator 10 operator_ready
}

operator_ready() { curl -fsS --max-time 2 "http://127.0.0.1:$OPERATOR_ADMIN_PORT/readyz" >/dev/null; }

router_ready() { curl -fsS --max-time 2 "http://127.0.0.1:$ROUTER_ADMIN_PORT/readyz" >/dev/null; }

start_router() {
  component_stop router
  local port
  for port in "$ROUTER_PORT" "$ROUTER_ADMIN_PORT"; do
    if port_in_use "$port"; then
      die "port $port (router) is already in use by $(port_owner "$port"); stop it or pick others: SUBSTRATE_ROUTER_PORT=<port> SUBSTRATE_ROUTER_ADMIN_PORT=<port> $0"
    fi
  done
  log "starting the router on 127.0.0.1:$ROUTER_PORT and its DNS on 127.0.0.1:$DNS_PORT"
  component_start router "$BIN_DIR/substrate-router" \
    --kubeconfig "$SUBSTRATE_KUBECONFIG" \
    --listen "127.0.0.1:$ROUTER_PORT" \
    --admin-listen "127.0.0.1:$ROUTER_ADMIN_PORT" \
    --dns-listen "127.0.0.1:$DNS_PORT" \
    --dns-address 127.0.0.1
  component_wait router 30 router_ready
}

# --- The demo ---------------------------------------------------------------------------

apply_demo() {
  log "applying the demo (config/demo/demo.yaml) with image $COUNTER_IMAGE"
  sed "s|__COUNTER_IMAGE__|$COUNTER_IMAGE|" "$ROOT/config/demo/demo.yaml" | kubectl_ apply -f - >&2 ||
    die "kubectl apply of the demo failed (see above)"
}

# The demo tenants (config/demo/tenants.yaml): atespaces team-a and team-b, their
# RoleBindings, and a kubeconfig each for alice and bob in $SUBSTRATE_DIR/tenants/.
TENANTS_DIR="$SUBSTRATE_DIR/tenants"
apply_tenants() {
  log "applying the demo tenants (config/demo/tenants.yaml); kubeconfigs in $TENANTS_DIR/"
  kubectl_ apply -f "$ROOT/config/demo/tenants.yaml" >&2 ||
    die "kubectl apply of the demo tenants failed (see above)"
  local user group
  for user in alice:team-a bob:team-b; do
    group="${user#*:}"
    user="${user%%:*}"
    "$BIN_DIR/substrate-kubeconfig" --pki-dir "$SUBSTRATE_PKI_DIR" \
      --server "https://127.0.0.1:$APISERVER_PORT" --user "$user" --group "$group" \
      --namespace "$group" --out "$TENANTS_DIR/$user.kubeconfig" >/dev/null ||
      die "writing the kubeconfig of $user failed (see above)"
  done
}

write_endpoints() {
  cat >"$ENDPOINTS_FILE" <<EOF
# Written by hack/up.sh: where this machine's Substrate listens (host:port).
APISERVER=127.0.0.1:$APISERVER_PORT
ROUTER=127.0.0.1:$ROUTER_PORT
ROUTER_ADMIN=127.0.0.1:$ROUTER_ADMIN_PORT
DNS=127.0.0.1:$DNS_PORT
REGISTRY=127.0.0.1:$REGISTRY_PORT
VALKEY=127.0.0.1:$VALKEY_PORT
VALKEY_PASSWORD_FILE=$VALKEY_PASSWORD_FILE
KUBECONFIG=$SUBSTRATE_KUBECONFIG
EOF
}

print_next_steps() {
  local path_line="" cd_line=""
  if [[ "$KUBECTL" == "$SUBSTRATE_TOOLS_DIR/"* ]]; then
    path_line="export PATH=\"$SUBSTRATE_TOOLS_DIR/bin:\$PATH\"
  "
  fi
  [[ "$PWD" == "$ROOT" ]] || cd_line="cd $ROOT
  "
  cat <<EOF

Substrate is up.
  apiserver  https://127.0.0.1:$APISERVER_PORT    kubeconfig: $SUBSTRATE_KUBECONFIG
  tenants    alice (admin of atespace team-a), bob (edits team-b): $TENANTS_DIR/{alice,bob}.kubeconfig
  router     http://127.0.0.1:$ROUTER_PORT     metrics: http://127.0.0.1:$ROUTER_ADMIN_PORT/metrics
  operator   metrics: http://127.0.0.1:$OPERATOR_ADMIN_PORT/metrics
  DNS        127.0.0.1:$DNS_PORT (udp+tcp)  zone actors.resources.substrate.ate.dev
  registry   127.0.0.1:$REGISTRY_PORT    valkey: 127.0.0.1:$VALKEY_PORT (password: $VALKEY_PASSWORD_FILE)
  logs       $SUBSTRATE_LOG_DIR/    endpoints: $ENDPOINTS_FILE

Next, in your shell (the README's walkthrough has more):

  ${cd_line}${path_line}source $ENDPOINTS_FILE; export KUBECONFIG
  kubectl get actors -A
  curl -x http://\$ROUTER http://hello.demo.actors.resources.substrate.ate.dev/
  kubectl get workers -o wide

Stop with hack/down.sh (actors are suspended first; hack/down.sh --purge deletes all data).
EOF
}

main() {
  case "${1:-}" in
    "") ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  [[ "$(id -u)" == 0 ]] ||
    die "hack/up.sh runs gVisor sandboxes in network namespaces it creates: run it as root (sudo $0)"
  ensure_build_deps
  ensure_valkey
  ensure_kubectl
  ensure_rust
  ensure_runsc
  ensure_runtime_deps
  build_substrate
  valkey_start
  # A running system: keep its actors' memory across the restart below.
  component_stop router
  component_stop operator
  if apiserver_ready 2>/dev/null; then
    suspend_running_actors
  fi
  if [[ -n "$VALKEY_WITHOUT_PASSWORD" ]]; then
    # Started by an older hack/up.sh: now that nothing uses it, restart it with the password.
    apiserver_stop
    valkey_stop
    valkey_start
  fi
  start_apiserver
  start_registry
  push_counter_image
  apply_demo
  apply_tenants
  start_nodeagent
  start_operator
  start_router
  wait_demo
  write_endpoints
  print_next_steps
}

main "$@"
