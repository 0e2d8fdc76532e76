#!/usr/bin/env bash
# Runs every check and test: cargo fmt --check, clippy -D warnings, cargo test.
#
#   hack/test.sh                      everything (what CI runs)
#   hack/test.sh FILTER               cargo test --workspace FILTER
#   hack/test.sh -- ARGS...           cargo test ARGS... (e.g. -- -p apiserver -- --nocapture)
#   hack/test.sh --no-lint [...]      skip fmt and clippy
#
# Tests start their own Valkey and apiserver on random ports; this script only provides
# the binaries: SUBSTRATE_VALKEY_SERVER, SUBSTRATE_VALKEY_CLI, kubectl on PATH
# (SUBSTRATE_KUBECTL). Benchmarks are not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"

usage() {
  sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

FAILED=()

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
  local lint=1 filters=() cargo_args=()
  while (($#)); do
    case "$1" in
      --no-lint) lint="" ;;
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

  cd "$ROOT"
  if ((lint)); then
    step "cargo fmt" cargo fmt --all -- --check "${fmt_color[@]}"
    step "cargo clippy" cargo clippy "${locked[@]}" --workspace --all-targets -- -D warnings
  fi
  # The end-to-end tests run the workspace's binaries (node agent, executor).
  step "cargo build (binaries)" cargo build "${locked[@]}" --workspace --bins
  step "cargo test" cargo test "${locked[@]}" "${scope[@]}" "${filters[@]}" "${cargo_args[@]}"

  section "summary"
  if ((${#FAILED[@]})); then
    die "failed: ${FAILED[*]}"
  fi
  log "all passed"
}

main "$@"
