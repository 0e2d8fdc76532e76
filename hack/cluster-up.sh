#!/usr/bin/env bash
# Starts Substrate in cluster mode on this machine: a real Kubernetes control plane (etcd,
# kube-apiserver and kube-controller-manager from KUBEBUILDER_ASSETS) with config/ applied
# to it as an install does, and what would run in pods (there is no kubelet) started as host
# processes with the ServiceAccount identities and the flags config/'s workloads give them:
# Valkey (its ACL rendered from the apiserver's Secret), Substrate's apiserver (the
# aggregated API), the node agent with two gVisor workers, the operator, the router and its
# DNS; a local OCI registry with the counter image; then the demo (config/demo/demo.yaml:
# the pool and template as CRD objects of kube-apiserver, the atespace and actor through the
# aggregator).
#
#   hack/cluster-up.sh      install what is missing, build, start (or restart) everything,
#                           print what to type next
#   hack/cluster-down.sh    stop it again (running actors are suspended first)
#
# Needs root (gVisor sandboxes, network namespaces). State lives in .substrate/cluster/ (or
# $SUBSTRATE_CLUSTER_HOME): kubeconfig (the cluster's admin: what a cluster user has),
# endpoints.env, pki/ (the cluster's CA and certificates), serviceaccounts/ (each
# component's kubeconfig: a TokenRequest token of its ServiceAccount, valid a year, renewed
# at every start), etcd/, valkey/, node/, snapshots/, logs/, run/. Ports and ranges are
# hack/cluster-lib.sh's SUBSTRATE_CLUSTER_* knobs (kube-apiserver 7443, Substrate's
# apiserver 7444, router 7080, DNS 7053; workers in 10.228.0.0/16), disjoint from
# hack/up.sh's so that both systems run side by side. SUBSTRATE_PROFILE=debug uses debug
# builds. Running it again is safe: running actors are suspended first, the control plane,
# Valkey and the registry are kept when healthy, Substrate's components are rebuilt and
# restarted. Every process runs under substrate-supervise, as with hack/up.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=hack/cluster-lib.sh
source "$ROOT/hack/cluster-lib.sh"

INSTALL_DIR="$SUBSTRATE_DIR/install"
SNAPSHOT_URL="file://$SUBSTRATE_DIR/snapshots"
# The Valkey password as the Valkey pod mounts it (Secret substrate-valkey-auth).
VALKEY_AUTH_DIR="$SUBSTRATE_DIR/valkey-auth"
VALKEY_ACL_FILE="$SUBSTRATE_VALKEY_DIR/users.acl"
VALKEY_USER=substrate-apiserver

usage() {
  sed -n '2,26s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  echo
  sed -n '/^# Environment knobs/,/^$/s/^# \{0,1\}//p' "$ROOT/hack/cluster-lib.sh"
}

# --- The cluster's PKI ------------------------------------------------------------------

_pki_key() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
  chmod 600 "$1"
}

# _pki_ca DIR NAME CN: a self-signed CA, DIR/NAME.{crt,key}.
_pki_ca() {
  _pki_key "$1/$2.key"
  openssl req -x509 -new -key "$1/$2.key" -subj "/CN=$3" -days 3650 -out "$1/$2.crt" \
    -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature 2>/dev/null
}

# _pki_cert DIR NAME CA SUBJECT EXTENSION...: DIR/NAME.{crt,key} signed by DIR/CA.
_pki_cert() {
  local dir="$1" name="$2" ca="$3" subject="$4"
  shift 4
  _pki_key "$dir/$name.key"
  openssl req -new -key "$dir/$name.key" -subj "$subject" 2>/dev/null |
    openssl x509 -req -CA "$dir/$ca.crt" -CAkey "$dir/$ca.key" -days 3650 \
      -set_serial "0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" \
      -extfile <(printf '%s\n' basicConstraints=critical,CA:FALSE "$@") -out "$dir/$name.crt" 2>/dev/null
}

# ensure_pki: the cluster's CA (signs kube-apiserver's serving certificate and the client
# certificates: the admin in system:masters, kube-controller-manager), the front-proxy CA
# and client (what kube-apiserver shows aggregated servers), the ServiceAccount token key
# pair. Made once; kept across restarts (as etcd's data is).
ensure_pki() {
  [[ -s "$CLUSTER_PKI_DIR/sa.pub" ]] && return 0
  log "making the cluster's PKI in $CLUSTER_PKI_DIR"
  local tmp="$CLUSTER_PKI_DIR.tmp" client=("keyUsage=critical,digitalSignature,keyEncipherment" extendedKeyUsage=clientAuth)
  rm -rf "$tmp"
  mkdir -p "$tmp"
  chmod 700 "$tmp"
  _pki_ca "$tmp" ca substrate-cluster-ca
  _pki_ca "$tmp" front-proxy-ca substrate-cluster-front-proxy-ca
  _pki_cert "$tmp" kube-apiserver ca /CN=kube-apiserver keyUsage=critical,digitalSignature,keyEncipherment \
    extendedKeyUsage=serverAuth \
    "subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:${SERVICE_CIDR%.*/*}.1"
  _pki_cert "$tmp" admin ca /O=system:masters/CN=substrate-cluster-admin "${client[@]}"
  _pki_cert "$tmp" kube-controller-manager ca /CN=system:kube-controller-manager "${client[@]}"
  _pki_cert "$tmp" front-proxy-client front-proxy-ca /CN=front-proxy-client "${client[@]}"
  _pki_key "$tmp/sa.key"
  openssl pkey -in "$tmp/sa.key" -pubout -out "$tmp/sa.pub" 2>/dev/null
  [[ -s "$tmp/sa.pub" && -s "$tmp/front-proxy-client.crt" ]] || die "openssl failed to make the cluster's PKI in $tmp"
  rm -rf "$CLUSTER_PKI_DIR"
  mv "$tmp" "$CLUSTER_PKI_DIR"
}

# write_kubeconfig OUT USER CREDENTIAL-LINES: a kubeconfig of kube-apiserver (mode 0600).
write_kubeconfig() {
  local out="$1" user="$2" cred="$3"
  mkdir -p "$(dirname "$out")"
  (
    umask 077
    cat >"$out.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: substrate-cluster
  cluster:
    server: https://127.0.0.1:$KUBE_APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$CLUSTER_PKI_DIR/ca.crt")
users:
- name: $user
  user:
$cred
contexts:
- name: substrate-cluster
  context:
    cluster: substrate-cluster
    user: $user
current-context: substrate-cluster
EOF
  )
  mv -f "$out.tmp" "$out"
}

# _cert_credential NAME: the kubeconfig lines of client certificate pki/NAME.
_cert_credential() {
  printf '    client-certificate-data: %s\n    client-key-data: %s\n' \
    "$(base64 -w0 <"$CLUSTER_PKI_DIR/$1.crt")" "$(base64 -w0 <"$CLUSTER_PKI_DIR/$1.key")"
}

# --- The control plane: etcd, kube-apiserver, kube-controller-manager -------------------

etcd_ready() {
  curl -fsS --max-time 2 -X POST -d '{}' "http://127.0.0.1:$ETCD_PORT/v3/cluster/member/list" |
    grep -q substrate-cluster
}

kube_apiserver_ready() {
  [[ "$(curl -fsS --max-time 3 --cacert "$CLUSTER_PKI_DIR/ca.crt" --cert "$CLUSTER_PKI_DIR/admin.crt" \
    --key "$CLUSTER_PKI_DIR/admin.key" "https://127.0.0.1:$KUBE_APISERVER_PORT/readyz")" == ok ]]
}

# Ready once its controllers' ServiceAccounts exist (it creates them as it starts them).
kube_controller_manager_ready() { kubectl_ get serviceaccount namespace-controller -n kube-system; }

# keep_or_start NAME READY START...: keeps the running NAME when READY says so, else
# (re)starts it with START and waits (60 s) for READY.
keep_or_start() {
  local name="$1" ready="$2"
  shift 2
  if component_running "$name" && "$ready" >/dev/null 2>&1; then
    log "reusing the running $name"
    return 0
  fi
  component_stop "$name"
  "$@"
  component_wait "$name" 60 "$ready"
}

_ensure_port_free() { # PORT WHAT KNOB
  if port_in_use "$1"; then
    die "port $1 ($2) is already in use by $(port_owner "$1"); stop that process or pick another port: SUBSTRATE_CLUSTER_$3=<port> $0"
  fi
}

start_etcd() {
  _ensure_port_free "$ETCD_PORT" etcd ETCD_PORT
  _ensure_port_free "$ETCD_PEER_PORT" "etcd peers" ETCD_PORT
  mkdir -p "$SUBSTRATE_DIR/etcd"
  chmod 700 "$SUBSTRATE_DIR/etcd"
  log "starting etcd on 127.0.0.1:$ETCD_PORT (data in $SUBSTRATE_DIR/etcd)"
  component_start etcd "$ETCD" --name=substrate-cluster --data-dir="$SUBSTRATE_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="substrate-cluster=http://127.0.0.1:$ETCD_PEER_PORT" --log-level=warn --logger=zap
}

# kube-apiserver as envtest runs it (tests/src/envtest.rs; ../shared/envtest/README.md):
# loopback only, a loopback service range, no endpoint reconciler, aggregator routing off.
start_kube_apiserver() {
  _ensure_port_free "$KUBE_APISERVER_PORT" kube-apiserver KUBE_APISERVER_PORT
  local p="$CLUSTER_PKI_DIR"
  mkdir -p "$SUBSTRATE_DIR/kube-apiserver"
  log "starting kube-apiserver on https://127.0.0.1:$KUBE_APISERVER_PORT"
  component_start kube-apiserver "$KUBEBUILDER_ASSETS/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$KUBE_APISERVER_PORT" \
    --service-cluster-ip-range="$SERVICE_CIDR" --endpoint-reconciler-type=none \
    --cert-dir="$SUBSTRATE_DIR/kube-apiserver" \
    --tls-cert-file="$p/kube-apiserver.crt" --tls-private-key-file="$p/kube-apiserver.key" \
    --client-ca-file="$p/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --authorization-mode=RBAC \
    --requestheader-client-ca-file="$p/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$p/front-proxy-client.crt" --proxy-client-key-file="$p/front-proxy-client.key" \
    --enable-aggregator-routing=false --allow-privileged=true --profiling=false --v=1
}

start_kube_controller_manager() {
  local kc="$CLUSTER_PKI_DIR/kube-controller-manager.kubeconfig"
  write_kubeconfig "$kc" system:kube-controller-manager "$(_cert_credential kube-controller-manager)"
  log "starting kube-controller-manager"
  component_start kube-controller-manager "$KUBEBUILDER_ASSETS/kube-controller-manager" \
    --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --use-service-account-credentials=true --service-cluster-ip-range="$SERVICE_CIDR" \
    --allocate-node-cidrs=false --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 \
    --root-ca-file="$CLUSTER_PKI_DIR/ca.crt" \
    --controllers='*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-ttl,-bootstrapsigner,-tokencleaner' \
    --namespace-sync-period=10s --v=1
}

start_control_plane() {
  ensure_pki
  write_kubeconfig "$SUBSTRATE_KUBECONFIG" substrate-cluster-admin "$(_cert_credential admin)"
  keep_or_start etcd etcd_ready start_etcd
  keep_or_start kube-apiserver kube_apiserver_ready start_kube_apiserver
  keep_or_start kube-controller-manager kube_controller_manager_ready start_kube_controller_manager
}

# --- config/, applied as an install does ------------------------------------------------

# render_config: `kubectl kustomize config/default` as JSON (a List) in INSTALL_DIR.
render_config() {
  mkdir -p "$INSTALL_DIR"
  "$KUBECTL" kustomize "$ROOT/config/default" >"$INSTALL_DIR/config-default.yaml" ||
    die "kubectl kustomize config/default failed (see above)"
  kubectl_ create --dry-run=client -o json -f "$INSTALL_DIR/config-default.yaml" |
    jq -s '{apiVersion: "v1", kind: "List", items: .}' >"$INSTALL_DIR/config-default.json" ||
    die "reading the rendered config/default failed (see above)"
}

# install_config: config/default without what needs a kubelet (the workloads: Deployments,
# the DaemonSet, the StatefulSet) and the APIService (registered once Substrate's apiserver
# runs); Service substrate-apiserver is an ExternalName Service pointing at localhost with
# the apiserver's port (kube-apiserver refuses loopback Endpoints), the snapshot store's
# ConfigMap names this machine's store.
install_config() {
  log "applying config/default to kube-apiserver (without its workloads: they run as host processes)"
  jq --argjson port "$APISERVER_PORT" --arg url "$SNAPSHOT_URL" '
    .items |= (map(select(.kind | IN("Deployment", "DaemonSet", "StatefulSet", "APIService") | not))
      | map(if .kind == "Service" and .metadata.name == "substrate-apiserver" then
              .spec = {type: "ExternalName", externalName: "localhost",
                       ports: [{name: "https", port: $port, protocol: "TCP"}]}
            elif .kind == "ConfigMap" and (.metadata.name | startswith("substrate-snapshots")) then
              .data.url = $url
            else . end))' "$INSTALL_DIR/config-default.json" >"$INSTALL_DIR/installed.json" ||
    die "jq failed on $INSTALL_DIR/config-default.json"
  kubectl_ apply -f "$INSTALL_DIR/installed.json" >"$INSTALL_DIR/apply.log" 2>&1 || {
    cat "$INSTALL_DIR/apply.log" >&2
    die "kubectl apply of config/default failed (output above)"
  }
  kubectl_ wait --for=condition=Established --timeout=60s crd/actortemplates.ate.dev crd/workerpools.ate.dev >/dev/null ||
    die "the ate.dev CRDs did not become Established"
}

# register_apiservice: config/'s APIService, with the port of the ExternalName Service.
register_apiservice() {
  jq --argjson port "$APISERVER_PORT" '.items | map(select(.kind == "APIService"))
    | {apiVersion: "v1", kind: "List", items: map(.spec.service.port = $port)}' \
    "$INSTALL_DIR/config-default.json" >"$INSTALL_DIR/apiservice.json"
  kubectl_ apply -f "$INSTALL_DIR/apiservice.json" >&2 || die "kubectl apply of the APIService failed (see above)"
}

# apiservice_available: Available, and kube-apiserver proxies discovery to it (the condition
# can be True a moment before the proxy trusts the caBundle the apiserver writes).
apiservice_available() {
  [[ "$(kubectl_ get apiservice v1alpha1.substrate.ate.dev \
    -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" == True ]] &&
    kubectl_ get --raw /apis/substrate.ate.dev/v1alpha1 >/dev/null
}

# service_account_kubeconfigs: each component's kubeconfig of kube-apiserver with a token of
# its ServiceAccount (config/rbac/) from the TokenRequest API (what a pod's projected token
# is, with a year's expiry: renewed at every start).
service_account_kubeconfigs() {
  local c token
  for c in apiserver operator nodeagent router; do
    token="$(kubectl_ create token "substrate-$c" -n "$SUBSTRATE_NAMESPACE" --duration=8760h)" ||
      die "TokenRequest for ServiceAccount $SUBSTRATE_NAMESPACE/substrate-$c failed (see above)"
    write_kubeconfig "$IDENTITY_DIR/substrate-$c.kubeconfig" "system:serviceaccount:$SUBSTRATE_NAMESPACE:substrate-$c" \
      "    token: $token"
  done
  # The router's token for the node agents' worker gateway: its pod's projected token of
  # audience substrate-gateway (config/router/deployment.yaml).
  token="$(kubectl_ create token substrate-router -n "$SUBSTRATE_NAMESPACE" --audience=substrate-gateway --duration=8760h)" ||
    die "TokenRequest (audience substrate-gateway) for ServiceAccount $SUBSTRATE_NAMESPACE/substrate-router failed (see above)"
  (umask 077 && printf '%s' "$token" >"$IDENTITY_DIR/substrate-router.gateway-token")
}

# --- The workloads' flags ---------------------------------------------------------------

# manifest_args KIND NAME: the first container's args of workload KIND/NAME in config/default,
# one a line.
manifest_args() {
  jq -r --arg kind "$1" --arg name "$2" \
    '.items[] | select(.kind == $kind and .metadata.name == $name) | .spec.template.spec.containers[0].args[]' \
    "$INSTALL_DIR/config-default.json"
}

# pod_to_host ARG...: the pods' args as host processes' (in POD_ARGS): addresses on loopback
# with this system's ports, what kubelet expands ($(VAR) from the env of the manifests), the
# mounted CA and the node's /var/lib/substrate in the state directory. Dies on anything
# pod-specific left (a manifest gained a flag this table does not know).
pod_to_host() {
  local pairs=(
    "0.0.0.0:8443=127.0.0.1:$APISERVER_PORT"
    "redis://substrate-valkey.$SUBSTRATE_NAMESPACE.svc:6379=redis://127.0.0.1:$VALKEY_PORT"
    "0.0.0.0:9092=127.0.0.1:$OPERATOR_ADMIN_PORT"
    "0.0.0.0:8080=127.0.0.1:$ROUTER_PORT"
    "0.0.0.0:5353=127.0.0.1:$DNS_PORT"
    "0.0.0.0:9091=127.0.0.1:$ROUTER_ADMIN_PORT"
    "\$(SUBSTRATE_ROUTER_SERVICE_HOST)=127.0.0.1"
    "\$(SUBSTRATE_SNAPSHOT_URL)=$SNAPSHOT_URL"
    "\$(NODE_NAME)=$NODE_NAME"
    "\$(HOST_IP):7090=127.0.0.1:$GATEWAY_PORT"
    "/var/run/substrate/gateway-token/token=$IDENTITY_DIR/substrate-router.gateway-token"
    "/var/run/substrate/apiserver-ca/ca.crt=$SUBSTRATE_CA_FILE"
    "/var/lib/substrate/=$SUBSTRATE_DIR/"
  )
  local a p rest
  POD_ARGS=()
  for a in "$@"; do
    rest="$a"
    for p in "${pairs[@]}"; do
      a="${a//"${p%%=*}"/"${p#*=}"}"
      rest="${rest//"${p%%=*}"/}"
    done
    # shellcheck disable=SC2016 # a literal $( left by kubelet's expansion
    [[ "$rest" != *'$('* && "$rest" != *0.0.0.0* && "$rest" != *.svc:* && "$rest" != */var/* && "$rest" != */etc/* ]] ||
      die "config/ gives a workload the flag '$a', which hack/cluster-up.sh does not know how to run on the host"
    POD_ARGS+=("$a")
  done
}

# component_args NAME KIND WORKLOAD: POD_ARGS of the workload, plus what replaces the
# in-cluster configuration of a pod: the ServiceAccount's kubeconfig, and Substrate's
# apiserver at its loopback address under its Service's name.
component_args() {
  local name="$1" args=()
  mapfile -t args < <(manifest_args "$2" "$3")
  ((${#args[@]})) || die "config/default has no args for $2/$3"
  pod_to_host "${args[@]}"
  POD_ARGS+=(
    "--kubeconfig=$IDENTITY_DIR/substrate-$name.kubeconfig"
    "--substrate-server=https://127.0.0.1:$APISERVER_PORT"
    "--substrate-tls-server-name=$SUBSTRATE_TLS_NAME"
  )
}

# --- Valkey and Substrate's apiserver ---------------------------------------------------

apiserver_args() {
  local args=() kc="$IDENTITY_DIR/substrate-apiserver.kubeconfig"
  mapfile -t args < <(manifest_args Deployment substrate-apiserver)
  ((${#args[@]})) || die "config/default has no args for Deployment/substrate-apiserver"
  pod_to_host "${args[@]}"
  POD_ARGS+=(
    "--pki-dir=$SUBSTRATE_DIR/apiserver/pki"
    "--kubeconfig=$kc" "--authentication-kubeconfig=$kc" "--authorization-kubeconfig=$kc"
    "--namespace=$SUBSTRATE_NAMESPACE" --log-format=plain
  )
}

valkey_secret_exists() { kubectl_ get secret substrate-valkey-auth -n "$SUBSTRATE_NAMESPACE" >/dev/null 2>&1; }

# bootstrap_secrets: at the first start, the apiserver creates Valkey's password Secret (and
# before it its PKI Secret and CA ConfigMap), then fails to reach Valkey, whose pod waits for
# that Secret: kubelet would restart the apiserver until Valkey is up. Here it runs until the
# Secret exists, and is stopped then (its retries to reach Valkey would take seconds).
bootstrap_secrets() {
  valkey_secret_exists && return 0
  log "first start: the apiserver creates its Secrets (its PKI, Valkey's password)"
  _rotate_log "$APISERVER_LOG"
  RUST_BACKTRACE=0 "$BIN_DIR/substrate-apiserver" "${POD_ARGS[@]}" >>"$APISERVER_LOG" 2>&1 </dev/null &
  local pid=$! rc=0
  wait_for -t 60 -i 0.2 -p "$pid" valkey_secret_exists || rc=$?
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if ((rc != 0)) && ! valkey_secret_exists; then
    tail -n 30 "$APISERVER_LOG" >&2 || true
    die "the apiserver did not create Secret $SUBSTRATE_NAMESPACE/substrate-valkey-auth (log above)"
  fi
}

cluster_valkey_ping() {
  local pw=""
  read -r pw <"$VALKEY_AUTH_DIR/password" || true # the Secret's value: no newline
  [[ -n "$pw" && "$(REDISCLI_AUTH="$pw" "$VALKEY_CLI" --user "$VALKEY_USER" -h 127.0.0.1 -p "$VALKEY_PORT" PING 2>/dev/null)" == PONG ]]
}

# start_cluster_valkey: as StatefulSet substrate-valkey: the password from the Secret (the
# pod's secret volume), the init container's config/valkey/render-acl.sh, then valkey-server
# with the pod's args on loopback. A running Valkey that accepts the password is kept.
start_cluster_valkey() {
  local pw
  pw="$(kubectl_ get secret substrate-valkey-auth -n "$SUBSTRATE_NAMESPACE" -o jsonpath='{.data.password}' | base64 -d)" ||
    die "cannot read Secret $SUBSTRATE_NAMESPACE/substrate-valkey-auth"
  [[ -n "$pw" ]] || die "Secret $SUBSTRATE_NAMESPACE/substrate-valkey-auth has an empty password"
  (
    umask 077
    mkdir -p "$VALKEY_AUTH_DIR" "$SUBSTRATE_VALKEY_DIR/data"
    printf '%s' "$pw" >"$VALKEY_AUTH_DIR/password"
  )
  chmod 700 "$SUBSTRATE_VALKEY_DIR"
  SUBSTRATE_VALKEY_PASSWORD_FILE="$VALKEY_AUTH_DIR/password" \
    SUBSTRATE_VALKEY_ACL_TEMPLATE="$ROOT/config/valkey/users.acl.tmpl" \
    SUBSTRATE_VALKEY_ACL_FILE="$VALKEY_ACL_FILE" sh "$ROOT/config/valkey/render-acl.sh" >/dev/null ||
    die "config/valkey/render-acl.sh failed (see above)"
  local pid
  pid="$(read_pidfile "$VALKEY_PIDFILE")"
  if [[ -n "$pid" ]] && pid_matches "$pid" "$VALKEY_REGEX" && cluster_valkey_ping; then
    log "reusing running Valkey on 127.0.0.1:$VALKEY_PORT (pid $pid)"
    return 0
  fi
  valkey_stop
  _ensure_port_free "$VALKEY_PORT" Valkey VALKEY_PORT
  local args=() a host=()
  mapfile -t args < <(manifest_args StatefulSet substrate-valkey)
  ((${#args[@]})) || die "config/default has no args for StatefulSet/substrate-valkey"
  for a in "${args[@]}"; do
    case "$a" in
      /etc/valkey/valkey.conf) a="$ROOT/config/valkey/valkey.conf" ;;
      /etc/valkey-acl/users.acl) a="$VALKEY_ACL_FILE" ;;
      /data) a="$SUBSTRATE_VALKEY_DIR/data" ;;
      '*') a=127.0.0.1 ;;
      '-::*') a=-::1 ;;
      6379) a="$VALKEY_PORT" ;;
      /* | *'*'*) die "StatefulSet substrate-valkey has the arg '$a', which hack/cluster-up.sh does not know how to run on the host" ;;
    esac
    host+=("$a")
  done
  log "starting Valkey on 127.0.0.1:$VALKEY_PORT (ACL user $VALKEY_USER; data in $SUBSTRATE_VALKEY_DIR/data)"
  _rotate_log "$VALKEY_LOG"
  supervised_spawn "$VALKEY_PIDFILE" "$VALKEY_LOG" "$VALKEY_SERVER" "${host[@]}"
  printf '%s\n' "$VALKEY_PORT" >"$VALKEY_PORTFILE"
  pid="$(read_pidfile "$VALKEY_PIDFILE")"
  if ! wait_for -t 30 -p "$pid" cluster_valkey_ping; then
    tail -n 30 "$VALKEY_LOG" >&2 || true
    die "Valkey did not answer its ACL user on port $VALKEY_PORT (log above)"
  fi
}

# The CA that the apiserver publishes (ConfigMap substrate-apiserver-ca), as the pods mount it.
fetch_substrate_ca() {
  local ca
  ca="$(kubectl_ get configmap substrate-apiserver-ca -n "$SUBSTRATE_NAMESPACE" -o jsonpath='{.data.ca\.crt}')" || return 1
  [[ "$ca" == *"BEGIN CERTIFICATE"* ]] || return 1
  mkdir -p "$(dirname "$SUBSTRATE_CA_FILE")"
  printf '%s\n' "$ca" >"$SUBSTRATE_CA_FILE"
}

substrate_apiserver_ready() {
  [[ -s "$SUBSTRATE_CA_FILE" ]] &&
    curl -fsS --max-time 3 --cacert "$SUBSTRATE_CA_FILE" --resolve "$SUBSTRATE_TLS_NAME:$APISERVER_PORT:127.0.0.1" \
      "https://$SUBSTRATE_TLS_NAME:$APISERVER_PORT/readyz" >/dev/null
}

start_substrate_apiserver() {
  apiserver_args
  bootstrap_secrets
  start_cluster_valkey
  _ensure_port_free "$APISERVER_PORT" "Substrate's apiserver" APISERVER_PORT
  log "starting Substrate's apiserver on https://127.0.0.1:$APISERVER_PORT (as ServiceAccount substrate-apiserver)"
  _rotate_log "$APISERVER_LOG"
  supervised_spawn "$APISERVER_PIDFILE" "$APISERVER_LOG" "$BIN_DIR/substrate-apiserver" "${POD_ARGS[@]}"
  local pid rc=0
  pid="$(read_pidfile "$APISERVER_PIDFILE")"
  wait_for -t 60 -p "$pid" fetch_substrate_ca || rc=$?
  ((rc != 0)) || wait_for -t 60 -p "$pid" substrate_apiserver_ready || rc=$?
  if ((rc != 0)); then
    tail -n 40 "$APISERVER_LOG" >&2 || true
    apiserver_stop
    die "Substrate's apiserver did not become ready (log above)"
  fi
  register_apiservice
  if ! wait_for -t 60 apiservice_available; then
    kubectl_ get apiservice v1alpha1.substrate.ate.dev -o yaml >&2 || true
    die "APIService v1alpha1.substrate.ate.dev is not Available after 60s (above)"
  fi
  log "Substrate's apiserver is ready and aggregated (pid $pid)"
}

# --- The node agent, the operator, the router -------------------------------------------

start_cluster_nodeagent() {
  component_stop nodeagent 60
  component_args nodeagent DaemonSet substrate-nodeagent
  mkdir -p "$SUBSTRATE_DIR/node" "$SUBSTRATE_DIR/snapshots"
  _ensure_port_free "$GATEWAY_PORT" "worker gateway" GATEWAY_PORT
  NODEAGENT_STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  log "starting the node agent ($NODE_NAME: workers in $ADDR_RANGE from index $WORKER_INDEX_BASE)"
  # What the image and the node give the pod: the executor binary, the local registry, the
  # worker range; --on-shutdown=kill as hack/up.sh (hack/cluster-down.sh leaves no sandbox).
  component_start nodeagent "$BIN_DIR/substrate-nodeagent" "${POD_ARGS[@]}" \
    --insecure-registries "127.0.0.1:$REGISTRY_PORT" \
    --executor-bin "$BIN_DIR/substrate-executor" \
    --worker-index-base "$WORKER_INDEX_BASE" \
    --executor-arg="--addr-range=$ADDR_RANGE" \
    --executor-arg=--on-shutdown=kill
  component_wait nodeagent 90 workers_registered
}

operator_ready() { curl -fsS --max-time 2 "http://127.0.0.1:$OPERATOR_ADMIN_PORT/readyz" >/dev/null; }
router_ready() { curl -fsS --max-time 2 "http://127.0.0.1:$ROUTER_ADMIN_PORT/readyz" >/dev/null; }

start_cluster_operator() {
  component_stop operator
  component_args operator Deployment substrate-operator
  _ensure_port_free "$OPERATOR_ADMIN_PORT" "operator metrics" OPERATOR_ADMIN_PORT
  log "starting the operator (as ServiceAccount substrate-operator)"
  # The lease holder's name is the pod's in a cluster: one that survives restarts here.
  component_start operator env "SUBSTRATE_OPERATOR_IDENTITY=substrate-operator-$NODE_NAME" \
    "$BIN_DIR/substrate-operator" "${POD_ARGS[@]}"
  component_wait operator 30 operator_ready
}

start_cluster_router() {
  component_stop router
  component_args router Deployment substrate-router
  _ensure_port_free "$ROUTER_PORT" router ROUTER_PORT
  _ensure_port_free "$ROUTER_ADMIN_PORT" "router admin" ROUTER_ADMIN_PORT
  log "starting the router on 127.0.0.1:$ROUTER_PORT and its DNS on 127.0.0.1:$DNS_PORT (as ServiceAccount substrate-router)"
  component_start router "$BIN_DIR/substrate-router" "${POD_ARGS[@]}"
  component_wait router 30 router_ready
}

# --- The demo ---------------------------------------------------------------------------

# apply_demo: config/demo/demo.yaml through kube-apiserver: the pool in substrate-system (the
# node agents host the pools there: the DaemonSet's --pool-namespace), the template in
# namespace demo (a CRD object needs its namespace; the operator adopts it for the atespace),
# the atespace and the actor through the aggregator.
apply_demo() {
  log "applying the demo (config/demo/demo.yaml) with image $COUNTER_IMAGE"
  kubectl_ create namespace demo --dry-run=client -o yaml | kubectl_ apply -f - >/dev/null ||
    die "creating namespace demo failed (see above)"
  sed -e "s|__COUNTER_IMAGE__|$COUNTER_IMAGE|" \
    -e "/^kind: WorkerPool/,/^---/s|^  namespace: default$|  namespace: $SUBSTRATE_NAMESPACE|" \
    "$ROOT/config/demo/demo.yaml" | kubectl_ apply -f - >&2 ||
    die "kubectl apply of the demo failed (see above)"
}

write_endpoints() {
  cat >"$ENDPOINTS_FILE" <<EOF
# Written by hack/cluster-up.sh: where this machine's cluster-mode Substrate listens (host:port).
KUBE_APISERVER=127.0.0.1:$KUBE_APISERVER_PORT
KUBECONFIG=$SUBSTRATE_KUBECONFIG
APISERVER=127.0.0.1:$APISERVER_PORT
APISERVER_TLS_NAME=$SUBSTRATE_TLS_NAME
APISERVER_CA=$SUBSTRATE_CA_FILE
ROUTER=127.0.0.1:$ROUTER_PORT
ROUTER_ADMIN=127.0.0.1:$ROUTER_ADMIN_PORT
DNS=127.0.0.1:$DNS_PORT
OPERATOR_ADMIN=127.0.0.1:$OPERATOR_ADMIN_PORT
REGISTRY=127.0.0.1:$REGISTRY_PORT
ETCD=127.0.0.1:$ETCD_PORT
VALKEY=127.0.0.1:$VALKEY_PORT
VALKEY_USER=$VALKEY_USER
VALKEY_PASSWORD_FILE=$VALKEY_AUTH_DIR/password
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

Substrate is up in cluster mode.
  kube-apiserver  https://127.0.0.1:$KUBE_APISERVER_PORT   kubeconfig (admin): $SUBSTRATE_KUBECONFIG
  Substrate       https://127.0.0.1:$APISERVER_PORT (aggregated as v1alpha1.substrate.ate.dev)
  router          http://127.0.0.1:$ROUTER_PORT     DNS 127.0.0.1:$DNS_PORT (udp+tcp)
  logs            $SUBSTRATE_LOG_DIR/    endpoints: $ENDPOINTS_FILE

Next, in your shell (the README's "Cluster mode on this machine" has more):

  ${cd_line}${path_line}source $ENDPOINTS_FILE; export KUBECONFIG
  kubectl get actors -A
  curl -x http://\$ROUTER http://hello.demo.actors.resources.substrate.ate.dev/

Stop with hack/cluster-down.sh (hack/cluster-down.sh --purge also deletes all data).
EOF
}

main() {
  case "${1:-}" in
    "") ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  [[ "$(id -u)" == 0 ]] ||
    die "hack/cluster-up.sh runs gVisor sandboxes in network namespaces it creates: run it as root (sudo $0)"
  local t0=$SECONDS
  ensure_build_deps
  ensure_valkey
  ensure_kubectl
  ensure_rust
  ensure_runsc
  ensure_runtime_deps
  ensure_envtest
  [[ -n "${KUBEBUILDER_ASSETS:-}" ]] ||
    die "no kube-apiserver: set KUBEBUILDER_ASSETS to a folder with kube-apiserver and kube-controller-manager (Kubernetes 1.25 or newer)"
  ETCD="$(command -v etcd)" || die "etcd is not on PATH after installing etcd-server"
  command -v jq >/dev/null 2>&1 || ensure_apt jq
  build_substrate
  mkdir -p "$SUBSTRATE_RUN_DIR" "$SUBSTRATE_LOG_DIR"

  # A running system: keep its actors' memory across the restart below.
  component_stop router
  component_stop operator
  if kube_apiserver_ready 2>/dev/null && apiservice_available 2>/dev/null; then
    suspend_running_actors
  fi
  apiserver_stop

  start_control_plane
  render_config
  install_config
  service_account_kubeconfigs
  start_substrate_apiserver
  start_registry
  push_counter_image
  apply_demo
  start_cluster_nodeagent
  start_cluster_operator
  start_cluster_router
  wait_demo
  write_endpoints
  log "up in $((SECONDS - t0))s"
  print_next_steps
}

main "$@"
