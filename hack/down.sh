#!/usr/bin/env bash
# Stops what hack/up.sh started: the apiserver (SIGTERM, SIGKILL after
# SUBSTRATE_STOP_TIMEOUT seconds, default 15) and Valkey (SHUTDOWN, which flushes the AOF).
#
#   hack/down.sh           stop; keep data, certificates and kubeconfig in .substrate/
#   hack/down.sh --purge   stop and delete .substrate/ (except tools/)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"

usage() {
  sed -n '2,7s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
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

  apiserver_stop
  valkey_stop

  if [[ -n "$purge" && -d "$SUBSTRATE_DIR" ]]; then
    log "deleting $SUBSTRATE_DIR (except tools/)"
    find "$SUBSTRATE_DIR" -mindepth 1 -maxdepth 1 ! -name tools -exec rm -rf {} +
  fi
  log "stopped"
}

main "$@"
