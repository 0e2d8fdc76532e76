#!/usr/bin/env bash
# Fuzzes the apiserver from its own OpenAPI document with Schemathesis (PyPI schemathesis,
# installed into .substrate/tools/schemathesis-venv): a throw-away Valkey and
# substrate-apiserver on random loopback ports, an atespace `fuzz` that every namespaced
# operation is pointed at, then `st run` on /openapi/v2 with the checks:
#
#   not_a_server_error       no 5xx
#   status_code_conformance  every answer's code is one the document lists for the operation
#   unsupported_method       a method the document does not list is a 405 (with Allow)
#   (and any dropped connection or stream, which Schemathesis reports as an error)
#
# Bounded: SUBSTRATE_FUZZ_EXAMPLES examples per operation and phase (default 20) and
# SUBSTRATE_FUZZ_SECONDS for the whole run (default 120). Exits non-zero on any finding and
# prints what it ran and where the report is (SUBSTRATE_FUZZ_REPORT_DIR, default a
# temporary directory that is kept when something was found).
#
# Seeded: SUBSTRATE_FUZZ_SEED replays a run. Without it a run explores with a random seed
# (printed at the end), except under CI=true, where the seed is fixed
# (SUBSTRATE_FUZZ_CI_SEED) so that the gate does not fail on whatever a new random seed
# happens to find: explore locally, turn each finding into a regression test.
#
#   hack/fuzz-api.sh                  build the apiserver (debug) if needed, fuzz
#   SUBSTRATE_APISERVER_BIN=... hack/fuzz-api.sh   fuzz that binary
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"

EXAMPLES="${SUBSTRATE_FUZZ_EXAMPLES:-20}"
MAX_SECONDS="${SUBSTRATE_FUZZ_SECONDS:-120}"
SEED="${SUBSTRATE_FUZZ_SEED:-}"
CI_SEED="${SUBSTRATE_FUZZ_CI_SEED:-187215371166358734067933869996222559090}"
if [[ -z "$SEED" && "${CI:-}" == true ]]; then
  SEED="$CI_SEED"
fi

usage() {
  sed -n '2,25s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

WORK=""
VALKEY_PID=""
APISERVER_PID=""
KEEP_WORK=""

cleanup() {
  local pid
  for pid in "$APISERVER_PID" "$VALKEY_PID"; do
    [[ -n "$pid" ]] || continue
    kill -TERM "$pid" 2>/dev/null || true
    wait_for -t 10 -i 0.1 _pid_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ -n "$WORK" && -z "$KEEP_WORK" ]]; then
    rm -rf "$WORK"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# api METHOD PATH [CURL ARGS...]: a request as the admin; prints the body.
api() {
  local method="$1" path="$2"
  shift 2
  curl -sS --max-time 10 -X "$method" --cacert "$WORK/pki/ca.crt" \
    --cert "$WORK/pki/admin.crt" --key "$WORK/pki/admin.key" "$@" "$BASE$path"
}

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
    "") ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
  ensure_valkey
  ensure_schemathesis
  command -v curl >/dev/null 2>&1 || ensure_apt curl

  local bin="${SUBSTRATE_APISERVER_BIN:-}"
  if [[ -z "$bin" ]]; then
    bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/substrate-apiserver"
    # The workspace's binaries, as hack/test.sh builds them just before (a no-op then):
    # `-p apiserver` alone would resolve features for that package only and rebuild half of
    # the dependencies (5 minutes here).
    log "cargo build --workspace --bins"
    (cd "$ROOT" && cargo build --quiet --workspace --bins) ||
      die "building the apiserver failed"
  fi
  [[ -x "$bin" ]] || die "no apiserver binary at $bin"

  WORK="$(mktemp -d "${TMPDIR:-/tmp}/substrate-fuzz.XXXXXX")"
  trap cleanup EXIT
  local report="${SUBSTRATE_FUZZ_REPORT_DIR:-$WORK/report}"
  mkdir -p "$WORK/valkey" "$report"

  local vport
  vport="$(free_port)"
  "$VALKEY_SERVER" --port "$vport" --bind 127.0.0.1 --dir "$WORK/valkey" --save '' \
    --appendonly no >"$WORK/valkey.log" 2>&1 &
  VALKEY_PID=$!
  wait_for -t 20 -p "$VALKEY_PID" valkey_ping "$vport" ||
    die "Valkey did not start on port $vport: $(tail -n 5 "$WORK/valkey.log")"

  "$bin" --bind 127.0.0.1:0 --valkey-url "redis://127.0.0.1:$vport/" --key-prefix fuzz \
    --pki-dir "$WORK/pki" --kubeconfig-out "$WORK/kubeconfig" >"$WORK/apiserver.log" 2>&1 &
  APISERVER_PID=$!
  wait_for -t 60 -p "$APISERVER_PID" test -s "$WORK/kubeconfig" ||
    die "the apiserver did not start: $(tail -n 20 "$WORK/apiserver.log")"
  BASE="$(sed -n 's/^ *server: *//p' "$WORK/kubeconfig" | head -n 1)"
  [[ "$BASE" == https://127.0.0.1:* ]] || die "unexpected server in the kubeconfig: $BASE"
  wait_for -t 30 -p "$APISERVER_PID" api GET /readyz -f ||
    die "the apiserver is not ready: $(tail -n 20 "$WORK/apiserver.log")"
  log "apiserver $BASE (Valkey 127.0.0.1:$vport), state in $WORK"

  api POST /apis/substrate.ate.dev/v1alpha1/atespaces -f -o /dev/null \
    -H 'Content-Type: application/json' \
    -d '{"apiVersion":"substrate.ate.dev/v1alpha1","kind":"Atespace","metadata":{"name":"fuzz"}}' ||
    die "creating the atespace fuzz failed"
  api GET /openapi/v2 -f -o "$WORK/openapi.json" || die "fetching /openapi/v2 failed"

  local args=(
    --config-file "$ROOT/hack/fuzz-api/schemathesis.toml"
    run "$WORK/openapi.json"
    --url "$BASE"
    --tls-verify "$WORK/pki/ca.crt"
    --request-cert "$WORK/pki/admin.crt" --request-cert-key "$WORK/pki/admin.key"
    --checks not_a_server_error,status_code_conformance,unsupported_method
    --phases examples,coverage,fuzzing
    --max-examples "$EXAMPLES" --max-time "$MAX_SECONDS"
    --request-timeout 20 --workers 2 --no-color
    --report junit --report-dir "$report"
  )
  [[ -z "$SEED" ]] || args+=(--seed "$SEED")
  printf '+ %s %s\n' "$SCHEMATHESIS" "${args[*]}" >&2
  local rc=0
  (cd "$ROOT/hack/fuzz-api" && PYTHONPATH="$ROOT/hack/fuzz-api" "$SCHEMATHESIS" "${args[@]}") || rc=$?
  if ! kill -0 "$APISERVER_PID" 2>/dev/null; then
    printf -- '--- last 40 lines of the apiserver log ---\n' >&2
    tail -n 40 "$WORK/apiserver.log" >&2 || true
    die "the apiserver died during the fuzz run"
  fi
  # Schemathesis exits 1 for findings and for crashes of its own (a "Runtime Error" in the
  # test generator, which says nothing about the API): only the former fail the run.
  if ((rc == 1)) && ! grep -q '<failure' "$report"/junit*.xml &&
    ! grep -v 'Runtime Error' "$report"/junit*.xml | grep -q '<error'; then
    warn "schemathesis crashed while generating some cases (Runtime Error above); no finding"
    rc=0
  fi
  if ((rc != 0)); then
    KEEP_WORK=1
    printf -- '--- last 40 lines of the apiserver log (%s) ---\n' "$WORK/apiserver.log" >&2
    tail -n 40 "$WORK/apiserver.log" >&2 || true
    die "schemathesis found problems (exit $rc); report in $report"
  fi
  log "no findings (report in $report)"
}

main "$@"
