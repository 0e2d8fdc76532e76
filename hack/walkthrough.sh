#!/usr/bin/env bash
# Runs the README's walkthrough, line by line, against a running system (hack/up.sh), and
# checks what the README says each line prints.
#
#   hack/walkthrough.sh            follow README.md's walkthrough blocks
#   hack/walkthrough.sh --cluster  follow its cluster-mode blocks (hack/cluster-up.sh)
#   hack/walkthrough.sh --print    print the script it would run (--cluster --print: that one)
#
# The walkthrough is every ```sh block between `<!-- walkthrough -->` and
# `<!-- /walkthrough -->` in README.md (cluster mode: `<!-- walkthrough cluster -->`). A
# line ending in `# → REGEX` must succeed and print something matching REGEX (grep -E); a
# line ending in `# ✗ REGEX` must fail and print it. Other lines must succeed.
# `.substrate/` in the lines means the state directory of the system under test
# ($SUBSTRATE_HOME, default .substrate; cluster mode: `.substrate/cluster/` means
# $SUBSTRATE_CLUSTER_HOME, default .substrate/cluster).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
CLUSTER=""
[[ " $* " != *" --cluster "* ]] || CLUSTER=1
if [[ -n "$CLUSTER" ]]; then
  # shellcheck source=hack/cluster-lib.sh
  source "$ROOT/hack/cluster-lib.sh"
  MARKER='<!-- walkthrough cluster -->' STATE_PREFIX=.substrate/cluster/
else
  # shellcheck source=hack/lib.sh
  source "$ROOT/hack/lib.sh"
  MARKER='<!-- walkthrough -->' STATE_PREFIX=.substrate/
fi

usage() {
  sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

# generate: the walkthrough as a bash script (stdout).
generate() {
  local in_walk="" in_code="" heredoc="" post="" line cmd want
  cat <<'PRELUDE'
set -eo pipefail
_tmp="$(mktemp)"; trap 'rm -f "$_tmp"' EXIT
_expect() { # REGEX: stdin must match
  local out; out="$(cat)"; printf '%s\n' "$out"
  grep -Eq -- "$1" <<<"$out" || { printf 'walkthrough: expected /%s/ in the output above\n' "$1" >&2; exit 1; }
}
_expect_fail() { # STATUS REGEX: the command failed and printed REGEX
  printf '%s\n' "$_out"
  (($1 != 0)) || { printf 'walkthrough: the line above should have failed\n' >&2; exit 1; }
  grep -Eq -- "$2" <<<"$_out" || { printf 'walkthrough: expected /%s/ in the output above\n' "$2" >&2; exit 1; }
}
PRELUDE
  while IFS= read -r line || [[ -n "$line" ]]; do
    case "$line" in
      "$MARKER") in_walk=1; continue ;;
      '<!-- /walkthrough -->') in_walk=""; continue ;;
    esac
    [[ -n "$in_walk" ]] || continue
    if [[ -z "$in_code" ]]; then
      [[ "$line" == '```sh' ]] && in_code=1
      continue
    fi
    if [[ "$line" == '```' && -z "$heredoc" ]]; then
      in_code=""
      continue
    fi
    line="${line//"$STATE_PREFIX"/$SUBSTRATE_DIR/}"
    if [[ -n "$heredoc" ]]; then
      printf '%s\n' "$line"
      if [[ "$line" == "$heredoc" ]]; then
        heredoc=""
        printf '%s' "$post"
        post=""
      fi
      continue
    fi
    [[ "$line" =~ ^[[:space:]]*(#.*)?$ ]] || printf 'printf "%%s\\n" %q >&2\n' "\$ $line"
    if [[ "$line" =~ ^(.*[^[:space:]])[[:space:]]+#\ →\ (.*)$ ]]; then
      cmd="${BASH_REMATCH[1]}" want="${BASH_REMATCH[2]}"
      printf '%s 2>&1 | _expect %q\n' "$cmd" "$want"
    elif [[ "$line" =~ ^(.*[^[:space:]])[[:space:]]+#\ ✗\ (.*)$ ]]; then
      # Run it with errexit off, output to a file; check once the command (and its
      # here-document, if any) is complete.
      cmd="${BASH_REMATCH[1]}" want="${BASH_REMATCH[2]}"
      # shellcheck disable=SC2016 # the generated script expands these
      printf 'set +e; %s >"$_tmp" 2>&1\n' "$cmd"
      # shellcheck disable=SC2016
      post="$(printf '_rc=$?; set -e; _out="$(cat "$_tmp")"; _expect_fail "$_rc" %q' "$want")"$'\n'
    else
      printf '%s\n' "$line"
    fi
    if [[ "$line" =~ \<\<-?\'?([A-Za-z_]+)\'? ]]; then
      heredoc="${BASH_REMATCH[1]}"
    elif [[ -n "$post" ]]; then
      printf '%s' "$post"
      post=""
    fi
  done <"$ROOT/README.md"
}

main() {
  local print=""
  while (($#)); do
    case "$1" in
      --cluster) ;;
      --print) print=1 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
  done
  if [[ -n "$print" ]]; then
    generate
    exit 0
  fi
  [[ -r "$ENDPOINTS_FILE" ]] ||
    die "no $ENDPOINTS_FILE: start the system first (hack/${CLUSTER:+cluster-}up.sh)"
  local script
  script="$(generate)"
  grep -q '^printf' <<<"$script" || die "README.md has no $MARKER block"
  cd "$ROOT"
  bash -c "$script" walkthrough || die "the README ${CLUSTER:+cluster-mode }walkthrough failed (output above)"
  log "the README ${CLUSTER:+cluster-mode }walkthrough passed"
}

main "$@"
