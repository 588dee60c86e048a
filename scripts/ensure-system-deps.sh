#!/usr/bin/env bash
# Install the Debian packages the integration tests use, only when missing:
#   prometheus (prometheus + promtool), redis-server, chromium, graphviz (dot),
#   postgresql (initdb + postgres under /usr/lib/postgresql/<version>/bin, off PATH).
# Idempotent: when every command is present it returns at once without apt.
# Needs root (or sudo) on Debian 12; the packaged services are not used (tests
# start their own instances on 127.0.0.1 with their own configuration).
set -euo pipefail

log() { printf '[ensure-system-deps] %s\n' "$*" >&2; }

# command that must exist -> Debian package that provides it
declare -A PACKAGE_FOR=(
  [prometheus]=prometheus
  [promtool]=prometheus
  [redis-server]=redis-server
  [chromium]=chromium
  [dot]=graphviz
)

missing=()
for cmd in prometheus promtool redis-server chromium dot; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    pkg=${PACKAGE_FOR[$cmd]}
    [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
  fi
done

# Debian keeps the PostgreSQL server binaries off PATH, one directory per major version.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ||
  ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
  missing+=(postgresql)
fi

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  log "missing ${missing[*]} and apt-get is not available; install them by hand"
  exit 1
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    log "missing ${missing[*]}: run as root or install sudo"
    exit 1
  fi
fi

log "installing ${missing[*]}"
apt_log=$(mktemp)
trap 'rm -f "$apt_log"' EXIT
# Quiet on success; the full apt output is shown when something fails.
if ! { "${SUDO[@]}" apt-get update -qq &&
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
  cat "$apt_log" >&2
  log "apt-get failed to install ${missing[*]}"
  exit 1
fi
log "installed ${missing[*]}"
