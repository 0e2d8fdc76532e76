#!/usr/bin/env bash
# What authorization costs (issue 13), in one run: a local RBAC decision, a warm decision-cache
# hit, a SubjectAccessReview round trip to a real kube-apiserver (envtest), and gets/s of a
# standalone apiserver as an admin and as a tenant. Prints the figures; docs/benchmarks.md
# records them.
#
#   hack/bench-authz.sh [substrate-bench-authz flags]   (--help lists them)
#
# Needs valkey-server, kubectl, curl, and etcd + kube-apiserver for the SubjectAccessReview
# part (installed/located by hack/lib.sh's ensure_envtest: Debian's etcd-server and
# ../shared/envtest/bin as KUBEBUILDER_ASSETS).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"

main() {
  ensure_build_deps
  ensure_valkey
  ensure_kubectl
  ensure_rust
  ensure_envtest
  log "cargo build --release -p e2e --bin substrate-bench-authz"
  (cd "$ROOT" && cargo build --release -p e2e --bin substrate-bench-authz) ||
    die "building substrate-bench-authz failed (compiler output above)"
  # The harness runs valkey-server and kubectl from PATH.
  PATH="$(dirname "$KUBECTL"):$PATH"
  RUST_LOG="${RUST_LOG:-warn}" "${CARGO_TARGET_DIR:-$ROOT/target}/release/substrate-bench-authz" "$@"
}

main "$@"
