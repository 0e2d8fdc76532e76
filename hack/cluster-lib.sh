#!/usr/bin/env bash
# shellcheck disable=SC2034 # the variables below are used by the scripts that source this
#
# Settings of the cluster-mode system on this machine (hack/cluster-up.sh,
# hack/cluster-down.sh, hack/walkthrough.sh --cluster). Source it instead of hack/lib.sh: it
# points hack/lib.sh's state directory and ports at the cluster's own, so that the
# standalone system of hack/up.sh and this one run side by side.
#
# Environment knobs (all on 127.0.0.1):
#   SUBSTRATE_CLUSTER_HOME                  state directory (default .substrate/cluster)
#   SUBSTRATE_CLUSTER_ETCD_PORT             etcd clients (7379; peers on the next port)
#   SUBSTRATE_CLUSTER_KUBE_APISERVER_PORT   kube-apiserver (7443)
#   SUBSTRATE_CLUSTER_APISERVER_PORT        Substrate's apiserver (7444)
#   SUBSTRATE_CLUSTER_VALKEY_PORT           Valkey (7390)
#   SUBSTRATE_CLUSTER_REGISTRY_PORT         the OCI registry (7500)
#   SUBSTRATE_CLUSTER_ROUTER_PORT           the router (7080)
#   SUBSTRATE_CLUSTER_ROUTER_ADMIN_PORT     the router's /metrics and probes (7091)
#   SUBSTRATE_CLUSTER_DNS_PORT              the router's DNS, UDP and TCP (7053)
#   SUBSTRATE_CLUSTER_OPERATOR_ADMIN_PORT   the operator's /metrics and probes (7092)
#   SUBSTRATE_CLUSTER_GATEWAY_PORT          the node agent's worker gateway (7090)
#   SUBSTRATE_CLUSTER_SERVICE_CIDR          Kubernetes' service range, loopback (127.78.0.0/24)
#   SUBSTRATE_CLUSTER_ADDR_RANGE            the workers' addresses (10.228.0.0/16)
#   SUBSTRATE_CLUSTER_WORKER_INDEX_BASE     the workers' first index (2300)
#   SUBSTRATE_CLUSTER_NODE_NAME             the node agent's node (cluster)

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  echo "hack/cluster-lib.sh is a library: source it from a script, do not run it" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# hack/lib.sh's knobs, set from the cluster's (a SUBSTRATE_HOME or SUBSTRATE_*_PORT exported
# for hack/up.sh does not apply here).
SUBSTRATE_HOME="${SUBSTRATE_CLUSTER_HOME:-$ROOT/.substrate/cluster}"
SUBSTRATE_VALKEY_PORT="${SUBSTRATE_CLUSTER_VALKEY_PORT:-7390}"
SUBSTRATE_APISERVER_PORT="${SUBSTRATE_CLUSTER_APISERVER_PORT:-7444}"
SUBSTRATE_REGISTRY_PORT="${SUBSTRATE_CLUSTER_REGISTRY_PORT:-7500}"
SUBSTRATE_ROUTER_PORT="${SUBSTRATE_CLUSTER_ROUTER_PORT:-7080}"
SUBSTRATE_ROUTER_ADMIN_PORT="${SUBSTRATE_CLUSTER_ROUTER_ADMIN_PORT:-7091}"
SUBSTRATE_DNS_PORT="${SUBSTRATE_CLUSTER_DNS_PORT:-7053}"
SUBSTRATE_OPERATOR_ADMIN_PORT="${SUBSTRATE_CLUSTER_OPERATOR_ADMIN_PORT:-7092}"
SUBSTRATE_KNOB_PREFIX=SUBSTRATE_CLUSTER_
# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"

ETCD_PORT="${SUBSTRATE_CLUSTER_ETCD_PORT:-7379}"
KUBE_APISERVER_PORT="${SUBSTRATE_CLUSTER_KUBE_APISERVER_PORT:-7443}"
GATEWAY_PORT="${SUBSTRATE_CLUSTER_GATEWAY_PORT:-7090}"
for _var in ETCD_PORT KUBE_APISERVER_PORT GATEWAY_PORT; do
  _port="${!_var}"
  if ! [[ "$_port" =~ ^[0-9]+$ ]] || ((_port < 1 || _port > 65534)); then
    die "invalid port '$_port' in SUBSTRATE_CLUSTER_$_var"
  fi
done
unset _port _var
ETCD_PEER_PORT=$((ETCD_PORT + 1))
SERVICE_CIDR="${SUBSTRATE_CLUSTER_SERVICE_CIDR:-127.78.0.0/24}"
ADDR_RANGE="${SUBSTRATE_CLUSTER_ADDR_RANGE:-10.228.0.0/16}"
WORKER_INDEX_BASE="${SUBSTRATE_CLUSTER_WORKER_INDEX_BASE:-2300}"
NODE_NAME="${SUBSTRATE_CLUSTER_NODE_NAME:-cluster}"

# Where Substrate is installed in the cluster (config/), and the name its serving
# certificate carries (what the aggregator and the components verify).
SUBSTRATE_NAMESPACE=substrate-system
SUBSTRATE_TLS_NAME="substrate-apiserver.$SUBSTRATE_NAMESPACE.svc"

# The cluster's PKI (made by hack/cluster-up.sh): CA, admin and controller-manager client
# certificates, front-proxy CA and client, kube-apiserver's serving certificate, the
# ServiceAccount token key pair.
CLUSTER_PKI_DIR="$SUBSTRATE_DIR/pki"
# Each component's kubeconfig of kube-apiserver as its ServiceAccount (a TokenRequest
# token), and the apiserver's CA from ConfigMap substrate-apiserver-ca (what the pods mount).
IDENTITY_DIR="$SUBSTRATE_DIR/serviceaccounts"
SUBSTRATE_CA_FILE="$SUBSTRATE_DIR/apiserver-ca/ca.crt"

COMPONENT_REGEX[etcd]='etcd .*--data-dir'
COMPONENT_REGEX[kube-apiserver]='kube-apiserver'
COMPONENT_REGEX[kube-controller-manager]='kube-controller-manager'

# cluster_leftovers: the processes with an argument naming a path in the state directory,
# and Valkey (it rewrites its command line) working in its data directory: every process
# cluster-up.sh starts, down to the sandboxes (`--data-dir=<dir>/etcd`,
# `--root=<dir>/node/...`). One "pid command" a line. A shell whose script merely mentions
# the directory (an argument with a newline) does not count.
cluster_leftovers() {
  local proc pid a cwd argv=()
  for proc in /proc/[0-9]*; do
    pid="${proc#/proc/}"
    [[ "$pid" != "$$" && "$pid" != "$BASHPID" ]] || continue
    mapfile -d '' -t argv 2>/dev/null <"$proc/cmdline" || continue
    # Valkey rewrites its command line, but works in its data directory.
    cwd="$(readlink "$proc/cwd" 2>/dev/null)" || cwd=""
    [[ "$cwd" == "$SUBSTRATE_VALKEY_DIR/data" ]] || cwd=""
    for a in "${argv[@]}" "--cwd=$cwd/"; do
      if [[ "$a" != *$'\n'* && ("$a" == "$SUBSTRATE_DIR/"* || "$a" == *"=$SUBSTRATE_DIR/"*) ]]; then
        printf '%s %s\n' "$pid" "$(printf '%s ' "${argv[@]}" | cut -c1-200)"
        break
      fi
    done
  done
}
