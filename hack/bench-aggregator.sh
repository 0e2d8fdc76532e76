#!/usr/bin/env bash
# What kube-apiserver's aggregator costs Substrate's API (issue 14), in one run: GET of one
# actor and POST of new actors through kube-apiserver (the APIService) and directly to
# Substrate's apiserver, same identity, throughput and p50/p99, alternating over rounds.
# Prints the figures; docs/benchmarks.md records them.
#
#   hack/bench-aggregator.sh [substrate-bench-aggregator flags]   (--help lists them)
#
# Needs valkey-server, kubectl, curl, and etcd + kube-apiserver (located by hack/lib.sh's
# ensure_envtest: Debian's etcd-server and ../shared/envtest/bin as KUBEBUILDER_ASSETS).
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
  log "cargo build --release -p e2e --bin substrate-bench-aggregator"
  (cd "$ROOT" && cargo build --release -p e2e --bin substrate-bench-aggregator) ||
    die "building substrate-bench-aggregator failed (compiler output above)"
  # The harness runs valkey-server and kubectl from PATH.
  PATH="$(dirname "$KUBECTL"):$PATH"
  RUST_LOG="${RUST_LOG:-warn}" "${CARGO_TARGET_DIR:-$ROOT/target}/release/substrate-bench-aggregator" "$@"
}

main "$@"
