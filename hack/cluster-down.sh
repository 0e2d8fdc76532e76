#!/usr/bin/env bash
# Stops what hack/cluster-up.sh started, in order: the router and the operator, then the
# running actors are suspended (their memory goes to snapshots), then the node agent (its
# executors kill their sandboxes and remove the worker networks), Substrate's apiserver, the
# registry, Valkey, kube-controller-manager, kube-apiserver and etcd. Each runs under
# substrate-supervise: the SIGTERM goes to the supervisor, which forwards it and does not
# restart the component; SIGKILL (of both) after SUBSTRATE_STOP_TIMEOUT seconds. Then it
# checks that no process naming the state directory is left, and fails if one is.
#
#   hack/cluster-down.sh           stop; keep the cluster's data (etcd, Valkey, snapshots, PKI)
#   hack/cluster-down.sh --purge   stop and delete the state directory (.substrate/cluster)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=hack/cluster-lib.sh
source "$ROOT/hack/cluster-lib.sh"

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
  component_stop kube-controller-manager
  component_stop kube-apiserver
  component_stop etcd
  rm -f "$ENDPOINTS_FILE"

  # Executors and sandboxes exit on their own once the node agent has stopped them.
  if ! wait_for -t 20 -i 0.5 _none_left; then
    warn "processes of $SUBSTRATE_DIR are still running:"
    cluster_leftovers >&2
    die "not everything stopped (above); stop those processes by their pid"
  fi

  if [[ -n "$purge" && -d "$SUBSTRATE_DIR" ]]; then
    [[ "$SUBSTRATE_DIR" != "$ROOT/.substrate" && "$SUBSTRATE_DIR" != "$SUBSTRATE_TOOLS_DIR"* ]] ||
      die "refusing to delete $SUBSTRATE_DIR (it holds hack/up.sh's state or tools); point SUBSTRATE_CLUSTER_HOME elsewhere"
    log "deleting $SUBSTRATE_DIR"
    rm -rf "$SUBSTRATE_DIR"
  fi
  log "stopped"
}

_none_left() { [[ -z "$(cluster_leftovers)" ]]; }

main "$@"
