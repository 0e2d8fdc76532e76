#!/usr/bin/env bash
# Makes the cluster's CoreDNS forward the actors' zone to Substrate's DNS: writes (or
# rewrites) one server block in the Corefile of ConfigMap kube-system/coredns,
#
#   actors.resources.substrate.ate.dev:53 {
#       errors
#       cache 5
#       forward . <ClusterIP of Service substrate-system/substrate-dns>
#   }
#
# between `# BEGIN substrate` and `# END substrate` marker lines, leaving the rest of the
# Corefile as it is. CoreDNS's `forward` takes addresses, not names: run this after
# `kubectl apply -k config/default`, and again if Service substrate-dns is ever re-created.
# Running it again changes nothing. CoreDNS picks the change up through its `reload` plugin
# (kubeadm's Corefile has it; the ConfigMap reaches the pods within about a minute), or at
# once with --restart.
#
#   hack/coredns-stub.sh             write the block (KUBECONFIG / kubectl's context)
#   hack/coredns-stub.sh --remove    remove it (uninstall)
#   hack/coredns-stub.sh --restart   also `kubectl rollout restart` CoreDNS's Deployment
#
# Environment: KUBECTL (default kubectl), SUBSTRATE_NAMESPACE (substrate-system),
# SUBSTRATE_DNS_SERVICE (substrate-dns), SUBSTRATE_DNS_ZONE
# (actors.resources.substrate.ate.dev), COREDNS_NAMESPACE (kube-system), COREDNS_CONFIGMAP
# and COREDNS_DEPLOYMENT (coredns). Needs kubectl and awk only.
set -euo pipefail

KUBECTL="${KUBECTL:-kubectl}"
NAMESPACE="${SUBSTRATE_NAMESPACE:-substrate-system}"
SERVICE="${SUBSTRATE_DNS_SERVICE:-substrate-dns}"
ZONE="${SUBSTRATE_DNS_ZONE:-actors.resources.substrate.ate.dev}"
COREDNS_NS="${COREDNS_NAMESPACE:-kube-system}"
COREDNS_CM="${COREDNS_CONFIGMAP:-coredns}"
COREDNS_DEPLOY="${COREDNS_DEPLOYMENT:-coredns}"
BEGIN="# BEGIN substrate"
tmp=""
END="# END substrate"

usage() {
  sed -n '2,26s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

die() {
  printf 'coredns-stub: %s\n' "$*" >&2
  exit 1
}

main() {
  local remove="" restart=""
  while (($#)); do
    case "$1" in
      --remove) remove=1 ;;
      --restart) restart=1 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
  done

  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT

  # The ConfigMap's Corefile and resourceVersion (the patch below is conditional on it).
  "$KUBECTL" -n "$COREDNS_NS" get configmap "$COREDNS_CM" \
    -o jsonpath='{.metadata.resourceVersion}{"\n"}{.data.Corefile}' >"$tmp/current" 2>"$tmp/err" ||
    die "cannot read ConfigMap $COREDNS_NS/$COREDNS_CM ($(tr '\n' ' ' <"$tmp/err")); is the cluster's DNS CoreDNS? (kube-dns: docs/install.md)"
  local rv
  rv="$(head -n 1 "$tmp/current")"
  tail -n +2 "$tmp/current" >"$tmp/Corefile.old"
  [[ -s "$tmp/Corefile.old" ]] || die "ConfigMap $COREDNS_NS/$COREDNS_CM has no Corefile"

  # The Corefile without our block (and without the blank line we put before it).
  awk -v begin="$BEGIN" -v end="$END" '
    index($0, begin) == 1 { skip = 1; if (blank) blank = 0; next }
    skip && index($0, end) == 1 { skip = 0; next }
    skip { next }
    { if (blank) print ""; blank = ($0 == ""); if (!blank) print }
    END { if (blank) print "" }
  ' "$tmp/Corefile.old" >"$tmp/Corefile"

  if [[ -z "$remove" ]]; then
    local ip
    ip="$("$KUBECTL" -n "$NAMESPACE" get service "$SERVICE" -o jsonpath='{.spec.clusterIP}' 2>"$tmp/err")" ||
      die "cannot read Service $NAMESPACE/$SERVICE ($(tr '\n' ' ' <"$tmp/err")); apply config/default first"
    [[ -n "$ip" && "$ip" != None ]] || die "Service $NAMESPACE/$SERVICE has no ClusterIP"
    # Ends with exactly one newline, then a blank line and the block.
    printf '%s\n' "$(cat "$tmp/Corefile")" >"$tmp/Corefile.new"
    cat >>"$tmp/Corefile.new" <<EOF

$BEGIN: $ZONE -> Service $NAMESPACE/$SERVICE (written by hack/coredns-stub.sh)
$ZONE:53 {
    errors
    cache 5
    forward . $ip
}
$END
EOF
    mv "$tmp/Corefile.new" "$tmp/Corefile"
  fi

  if cmp -s "$tmp/Corefile" "$tmp/Corefile.old"; then
    echo "coredns-stub: $COREDNS_NS/$COREDNS_CM unchanged"
  else
    # The new Corefile as JSON (kubectl does the escaping), patched only if nobody changed
    # the ConfigMap since we read it (409 Conflict otherwise: run again).
    local data
    data="$("$KUBECTL" create configmap "$COREDNS_CM" --from-file=Corefile="$tmp/Corefile" \
      --dry-run=client -o jsonpath='{.data}')"
    "$KUBECTL" -n "$COREDNS_NS" patch configmap "$COREDNS_CM" --type merge \
      -p "{\"metadata\":{\"resourceVersion\":\"$rv\"},\"data\":$data}" >/dev/null
    if [[ -n "$remove" ]]; then
      echo "coredns-stub: removed the $ZONE block from $COREDNS_NS/$COREDNS_CM"
    else
      echo "coredns-stub: $COREDNS_NS/$COREDNS_CM forwards $ZONE to $ip ($NAMESPACE/$SERVICE)"
    fi
  fi

  if [[ -n "$restart" ]]; then
    "$KUBECTL" -n "$COREDNS_NS" rollout restart deployment "$COREDNS_DEPLOY"
  elif ! grep -qE '^[[:space:]]*reload([[:space:]]|$)' "$tmp/Corefile"; then
    echo "coredns-stub: the Corefile has no 'reload' plugin: restart CoreDNS (--restart) to apply it" >&2
  fi
}

main "$@"
