#!/usr/bin/env bash
# Build the real observability components the tests run outside containers:
#   - Jaeger v2, from the official Go module (github.com/jaegertracing/jaeger/cmd/jaeger);
#   - an OpenTelemetry Collector, from the official collector modules with the
#     OpenTelemetry Collector Builder and the manifest ops/otelcol-builder.yaml.
#
# Binaries go to a cache directory outside the repository:
#   ${STAGEFLOW_OTEL_CACHE:-$HOME/.cache/stageflow-otel}/bin/{jaeger,otelcol,builder}
# A stamp file next to each binary records what it was built from; a binary whose
# stamp matches is not rebuilt, so a warm cache costs well under a second.
#
# Usage: scripts/build-components.sh [all|jaeger|otelcol]...   (default: all)
# Needs Go >= 1.26 (GO=/path/to/go, else `go` on PATH, else /usr/local/go/bin/go)
# and access to the Go module proxy.
set -euo pipefail

# Jaeger v2 is released from the v1 Go module path: v1.76.0 is Jaeger v2.13.0
# (the jaegertracing/jaeger:2.13.0 image of docker-compose.yml).
JAEGER_MODULE_VERSION=v1.76.0
JAEGER_VERSION=v2.13.0
# Collector Builder release; the manifest pins the collector modules (v0.165.0 / v1.71.0).
OCB_VERSION=v0.165.0

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${STAGEFLOW_OTEL_CACHE:-$HOME/.cache/stageflow-otel}
BIN=$CACHE/bin
MANIFEST=$ROOT/ops/otelcol-builder.yaml

log() { printf '[build-components] %s\n' "$*" >&2; }

find_go() {
  if [[ -n ${GO:-} ]]; then
    printf '%s\n' "$GO"
  elif command -v go >/dev/null 2>&1; then
    command -v go
  elif [[ -x /usr/local/go/bin/go ]]; then
    printf '%s\n' /usr/local/go/bin/go
  else
    log "Go toolchain not found: install Go >= 1.26 or set GO=/path/to/go"
    exit 1
  fi
}

# stamp_ok NAME CONTENT: the binary exists and was built from CONTENT.
stamp_ok() {
  [[ -x $BIN/$1 && -f $BIN/.$1.stamp && "$(cat "$BIN/.$1.stamp")" == "$2" ]]
}

elapsed_since() {
  local start=$1 end
  end=$(date +%s.%N)
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }'
}

build_jaeger() {
  local stamp="jaeger $JAEGER_MODULE_VERSION ($JAEGER_VERSION)"
  if stamp_ok jaeger "$stamp"; then
    log "jaeger $JAEGER_MODULE_VERSION: up to date ($BIN/jaeger)"
    return
  fi
  local start
  start=$(date +%s.%N)
  log "jaeger $JAEGER_MODULE_VERSION: go build github.com/jaegertracing/jaeger/cmd/jaeger"
  # `go install pkg@version` refuses modules with replace directives, and Jaeger's go.mod
  # has some: build it from a scratch module that requires Jaeger and repeats them.
  local work=$CACHE/jaeger-build gomod
  rm -rf "$work"
  mkdir -p "$work"
  (
    cd "$work"
    "$GO_BIN" mod init stageflow-otel-components/jaeger >/dev/null 2>&1
    gomod=$("$GO_BIN" mod download -json "github.com/jaegertracing/jaeger@$JAEGER_MODULE_VERSION" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')
    "$GO_BIN" mod edit -json "$gomod" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    old, new = r["Old"], r["New"]
    lhs = old["Path"] + ("@" + old["Version"] if old.get("Version") else "")
    rhs = new["Path"] + ("@" + new["Version"] if new.get("Version") else "")
    print(f"-replace={lhs}={rhs}")
' | xargs -r "$GO_BIN" mod edit
    "$GO_BIN" get "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_MODULE_VERSION"
    "$GO_BIN" build -trimpath -o "$BIN/jaeger" \
      -ldflags "-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=$JAEGER_VERSION" \
      github.com/jaegertracing/jaeger/cmd/jaeger
  )
  printf '%s' "$stamp" >"$BIN/.jaeger.stamp"
  log "jaeger $JAEGER_MODULE_VERSION: built in $(elapsed_since "$start") s"
}

build_otelcol() {
  local manifest_sum stamp work
  manifest_sum=$(sha256sum "$MANIFEST" | cut -d' ' -f1)
  stamp="otelcol builder $OCB_VERSION manifest $manifest_sum"
  if stamp_ok otelcol "$stamp"; then
    log "otelcol ($OCB_VERSION): up to date ($BIN/otelcol)"
    return
  fi
  local start
  start=$(date +%s.%N)
  if ! stamp_ok builder "builder $OCB_VERSION"; then
    log "builder $OCB_VERSION: go install go.opentelemetry.io/collector/cmd/builder"
    (cd "$CACHE" && GOBIN="$BIN" "$GO_BIN" install \
      "go.opentelemetry.io/collector/cmd/builder@$OCB_VERSION")
    printf '%s' "builder $OCB_VERSION" >"$BIN/.builder.stamp"
  fi
  work=$CACHE/otelcol-build
  rm -rf "$work"
  mkdir -p "$work"
  # The builder takes the output directory only from the manifest.
  sed "s|^\(  output_path:\).*|\1 $work/dist|" "$MANIFEST" >"$work/manifest.yaml"
  log "otelcol: ocb --config ops/otelcol-builder.yaml (output $work/dist)"
  (cd "$work" && PATH="$(dirname "$GO_BIN"):$PATH" "$BIN/builder" --config "$work/manifest.yaml")
  install -m 0755 "$work/dist/otelcol" "$BIN/otelcol"
  printf '%s' "$stamp" >"$BIN/.otelcol.stamp"
  log "otelcol ($OCB_VERSION): built in $(elapsed_since "$start") s"
}

main() {
  local targets=("$@")
  [[ ${#targets[@]} -gt 0 ]] || targets=(all)
  GO_BIN=$(find_go)
  mkdir -p "$BIN"
  # One build at a time per cache directory.
  exec 9>"$CACHE/.build.lock"
  flock 9
  local target
  for target in "${targets[@]}"; do
    case $target in
      all) build_jaeger; build_otelcol ;;
      jaeger) build_jaeger ;;
      otelcol) build_otelcol ;;
      *) log "unknown target '$target' (expected all, jaeger or otelcol)"; exit 2 ;;
    esac
  done
}

main "$@"
