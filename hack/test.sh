#!/usr/bin/env bash
# Runs every check and test: cargo fmt --check, clippy -D warnings, cargo test, the API
# fuzz (hack/fuzz-api.sh), and (as root) the README walkthroughs against whole systems
# started by hack/up.sh and hack/cluster-up.sh.
#
#   hack/test.sh                      everything (what CI runs)
#   hack/test.sh FILTER               cargo test --workspace FILTER (no walkthrough)
#   hack/test.sh -- ARGS...           cargo test ARGS... (e.g. -- -p apiserver -- --nocapture)
#   hack/test.sh --no-lint [...]      skip fmt and clippy
#   hack/test.sh --walkthrough        only the README walkthroughs (hack/up.sh, hack/cluster-up.sh)
#
# Tests start their own Valkey and apiserver on random ports; this script only provides
# the binaries: SUBSTRATE_VALKEY_SERVER, SUBSTRATE_VALKEY_CLI, kubectl on PATH
# (SUBSTRATE_KUBECTL), etcd and KUBEBUILDER_ASSETS (kube-apiserver, kube-controller-manager:
# ../shared/envtest/bin when it exists; required in CI). Benchmarks are not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"

usage() {
  sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

FAILED=()

# walkthrough: hack/up.sh (debug build) in a state directory and on ports of its own, the
# README walkthrough (hack/walkthrough.sh) against it, then hack/down.sh --purge.
walkthrough() {
  (
    # shellcheck disable=SC2030 # each walkthrough's settings stay in its subshell
    export SUBSTRATE_HOME="$ROOT/.substrate/walkthrough-test" SUBSTRATE_PROFILE=debug
    export SUBSTRATE_NODE_NAME=walkthrough SUBSTRATE_ADDR_RANGE=10.211.0.0/16 SUBSTRATE_WORKER_INDEX_BASE=1
    export SUBSTRATE_VALKEY_PORT=16390 SUBSTRATE_APISERVER_PORT=16443 SUBSTRATE_REGISTRY_PORT=15000
    export SUBSTRATE_ROUTER_PORT=18080 SUBSTRATE_ROUTER_ADMIN_PORT=19091 SUBSTRATE_DNS_PORT=11053
    export SUBSTRATE_OPERATOR_ADMIN_PORT=19092
    "$ROOT/hack/down.sh" --purge >/dev/null 2>&1 || true
    local rc=0
    "$ROOT/hack/up.sh" && "$ROOT/hack/walkthrough.sh" || rc=$?
    if ((rc != 0)); then
      local f
      for f in "$SUBSTRATE_HOME"/logs/*.log; do
        [[ -s "$f" ]] || continue
        printf -- '--- last 30 lines of %s ---\n' "$f" >&2
        tail -n 30 "$f" >&2
      done
    fi
    "$ROOT/hack/down.sh" --purge || rc=$?
    return "$rc"
  )
}

# cluster_walkthrough: hack/cluster-up.sh (debug build) in a state directory and on ports of
# its own, the README's cluster-mode walkthrough against it (which ends with
# hack/cluster-down.sh), then hack/cluster-down.sh --purge, which fails if any process of the
# state directory is left.
cluster_walkthrough() {
  (
    # shellcheck disable=SC2031
    export SUBSTRATE_CLUSTER_HOME="$ROOT/.substrate/cluster-walkthrough-test" SUBSTRATE_PROFILE=debug
    export SUBSTRATE_CLUSTER_NODE_NAME=cluster-walkthrough SUBSTRATE_CLUSTER_WORKER_INDEX_BASE=2310
    export SUBSTRATE_CLUSTER_ETCD_PORT=17379 SUBSTRATE_CLUSTER_KUBE_APISERVER_PORT=17443
    export SUBSTRATE_CLUSTER_APISERVER_PORT=17444 SUBSTRATE_CLUSTER_VALKEY_PORT=17390
    export SUBSTRATE_CLUSTER_REGISTRY_PORT=17500 SUBSTRATE_CLUSTER_ROUTER_PORT=17080
    export SUBSTRATE_CLUSTER_ROUTER_ADMIN_PORT=17091 SUBSTRATE_CLUSTER_DNS_PORT=17053
    export SUBSTRATE_CLUSTER_OPERATOR_ADMIN_PORT=17092 SUBSTRATE_CLUSTER_GATEWAY_PORT=17090
    "$ROOT/hack/cluster-down.sh" --purge >/dev/null 2>&1 || true
    local rc=0
    "$ROOT/hack/cluster-up.sh" && "$ROOT/hack/walkthrough.sh" --cluster || rc=$?
    if ((rc != 0)); then
      local f
      for f in "$SUBSTRATE_CLUSTER_HOME"/logs/*.log; do
        [[ -s "$f" ]] || continue
        printf -- '--- last 30 lines of %s ---\n' "$f" >&2
        tail -n 30 "$f" >&2
      done
    fi
    "$ROOT/hack/cluster-down.sh" --purge || rc=$?
    return "$rc"
  )
}

# step NAME CMD...: runs CMD under a section header, records a failure, carries on.
step() {
  local name="$1" start=$SECONDS rc=0
  shift
  section "$name"
  printf '+ %s\n' "$*" >&2
  "$@" || rc=$?
  if ((rc == 0)); then
    log "$name: ok ($((SECONDS - start))s)"
  else
    log "$name: FAILED with exit code $rc ($((SECONDS - start))s)"
    FAILED+=("$name")
  fi
}

main() {
  local lint=1 filters=() cargo_args=() walk_only=""
  while (($#)); do
    case "$1" in
      --no-lint) lint="" ;;
      --walkthrough) walk_only=1 ;;
      -h | --help) usage; exit 0 ;;
      --) shift; cargo_args=("$@"); break ;;
      -*) usage >&2; die "unknown option $1 (cargo test options go after --)" ;;
      *) filters+=("$1") ;;
    esac
    shift
  done

  # All of the workspace unless the caller picked packages.
  local scope=(--workspace) a
  for a in "${cargo_args[@]}"; do
    case "$a" in
      --) break ;;
      -p | --package | --package=* | -p?* | --workspace | --all | --manifest-path | --manifest-path=*) scope=() ;;
    esac
  done

  local locked=() fmt_color=()
  if [[ "${CI:-}" == true ]]; then
    locked=(--locked)          # CI checks that Cargo.lock is committed up to date
    export CARGO_INCREMENTAL=0 # clean builds: incremental data only costs time and disk
  fi
  if [[ ! -t 2 ]]; then
    fmt_color=(--color never) # no escape codes in CI logs
  fi
  export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

  section "tools"
  ensure_build_deps
  ensure_valkey
  ensure_kubectl
  ensure_rust
  ((!lint)) || ensure_rust_components
  ensure_runsc
  ensure_runtime_deps
  ensure_moto
  ensure_lua
  ensure_schemathesis
  ensure_envtest
  export SUBSTRATE_VALKEY_SERVER="$VALKEY_SERVER" SUBSTRATE_VALKEY_CLI="$VALKEY_CLI"
  export SUBSTRATE_KUBECTL="$KUBECTL"
  # The runtime and S3 tests skip without their prerequisites when run by hand; here the
  # prerequisites are installed, so a skip would hide a failure.
  if [[ "$(id -u)" == 0 ]]; then
    export SUBSTRATE_REQUIRE_RUNSC=1
  else
    warn "not root: the runsc tests (executor, end-to-end) will be skipped"
  fi
  export SUBSTRATE_REQUIRE_MOTO=1

  # A clean run fills ~2.6 GiB of target/ (debug binaries and tests, clippy's data, the
  # static demo); say so now rather than fail at a link step twenty minutes in.
  check_disk "${CARGO_TARGET_DIR:-$ROOT/target}" 4 "a clean build of the workspace and its tests" || true

  cd "$ROOT"
  if [[ -n "$walk_only" ]]; then
    step "README walkthrough" walkthrough
    step "README walkthrough, cluster mode" cluster_walkthrough
    ((${#FAILED[@]} == 0)) || die "failed: ${FAILED[*]}"
    log "all passed"
    return 0
  fi
  if ((lint)); then
    step "cargo fmt" cargo fmt --all -- --check "${fmt_color[@]}"
    step "cargo clippy" cargo clippy "${locked[@]}" --workspace --all-targets -- -D warnings
  fi
  # The end-to-end tests run the workspace's binaries (node agent, executor).
  step "cargo build (binaries)" cargo build "${locked[@]}" --workspace --bins
  step "cargo test" cargo test --no-fail-fast "${locked[@]}" "${scope[@]}" "${filters[@]}" "${cargo_args[@]}"
  if [[ ${#filters[@]} -eq 0 && ${#cargo_args[@]} -eq 0 ]]; then
    # The apiserver from its own OpenAPI: no 5xx, no dropped connection, documented codes.
    step "api fuzz (schemathesis)" "$ROOT/hack/fuzz-api.sh"
  fi
  if [[ "$(id -u)" == 0 && ${#filters[@]} -eq 0 && ${#cargo_args[@]} -eq 0 ]]; then
    step "README walkthrough" walkthrough
    step "README walkthrough, cluster mode" cluster_walkthrough
  fi

  section "summary"
  if ((${#FAILED[@]})); then
    die "failed: ${FAILED[*]}"
  fi
  log "all passed"
}

main "$@"
