#!/usr/bin/env bash
# Stops what hack/up.sh started, in order: the router and the operator, then the running
# actors are suspended (their memory goes to snapshots), then the node agent (its executors
# kill their sandboxes and remove the worker networks), the apiserver, the registry and
# Valkey (SHUTDOWN, or SIGTERM when supervised; both flush the AOF). Each component runs
# under substrate-supervise: the SIGTERM goes to the supervisor, which forwards it and does
# not restart the component. SIGKILL (of both) after SUBSTRATE_STOP_TIMEOUT seconds.
#
#   hack/down.sh           stop; keep data, snapshots, certificates and kubeconfig
#   hack/down.sh --purge   stop and delete the state directory (except tools/)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"

usage() {
  sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

main() {
  local purge=""
  while (($#)); do
    case "$1" in
      --purge) purge=1 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
  done

  component_stop router
  component_stop operator
  if [[ -z "$purge" ]] && component_running nodeagent; then
    KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"
    [[ -x "$SUBSTRATE_TOOLS_DIR/bin/kubectl" && -z "$KUBECTL" ]] && KUBECTL="$SUBSTRATE_TOOLS_DIR/bin/kubectl"
    suspend_running_actors
  fi
  component_stop nodeagent 60
  apiserver_stop
  component_stop registry
  valkey_stop
  rm -f "$ENDPOINTS_FILE"

  if [[ -n "$purge" && -d "$SUBSTRATE_DIR" ]]; then
    log "deleting $SUBSTRATE_DIR (except tools/)"
    find "$SUBSTRATE_DIR" -mindepth 1 -maxdepth 1 ! -name tools -exec rm -rf {} +
  fi
  log "stopped"
}

main "$@"
