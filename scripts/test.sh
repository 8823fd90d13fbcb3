#!/usr/bin/env bash
# Installs what the test suite needs (when missing) and runs all of it:
# vet, unit and end-to-end tests under the race detector, and short fuzz
# runs of the security-relevant parsers. Works on a fresh Debian with Go.
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."

# Every fuzz target in the tree is listed at the end of this script: one
# left out would only ever run its seeds.
unlisted=$(grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]+' . | sed -E 's#^(.*)/[^/]+_test\.go:func #\1 #' |
  while read -r pkg name; do grep -qE "^fuzz $pkg $name " "$self" || echo "$pkg $name"; done)
if [ -n "$unlisted" ]; then
  echo "fuzz targets not run by $self:" >&2
  echo "$unlisted" >&2
  exit 1
fi

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages the end-to-end tests drive: real clients and servers.
missing=()
command -v curl    >/dev/null || missing+=(curl)
command -v git     >/dev/null || missing+=(git)
command -v python3 >/dev/null || missing+=(python3)
command -v node    >/dev/null || missing+=(nodejs)
command -v npm     >/dev/null || missing+=(npm)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v ip      >/dev/null || missing+=(iproute2)
command -v jq      >/dev/null || missing+=(jq)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Node's proxy-aware HTTP client, for the Node e2e test.
if [ ! -d e2e/testdata/node/node_modules/undici ]; then
  (cd e2e/testdata/node && npm install --no-audit --no-fund --silent)
fi

go vet ./...
go test -race -count=1 -timeout 20m ./...

# Short fuzz runs; the checked-in seed corpora already ran above as tests.
# Each run is a count of executions, about ten to twenty seconds' worth on
# a 2-core machine whose fuzz cache is empty, as on CI (a cache warmed by
# earlier runs goes faster). A wall-clock -fuzztime can fail with a bare
# "context deadline exceeded" when its deadline races a worker in Go
# 1.26's fuzz coordinator, which a count cannot. FUZZTIME (a count like
# 1000000x, or a duration) overrides every target's budget for longer runs
# by hand. Minimising each new interesting input is bounded by a count too
# (FUZZMINIMIZETIME): CI keeps a failing input whether or not it is
# minimised, and FuzzRawRequest, whose executions wait on sockets, spent
# minutes minimising.
fuzz() { go test -run='^$' -fuzz="^$2\$" -fuzztime="${FUZZTIME:-$3}" -fuzzminimizetime="${FUZZMINIMIZETIME:-50x}" "$1"; }
fuzz ./allowlist FuzzNormalizeHost 300000x
fuzz ./allowlist FuzzParsePattern 100000x
fuzz ./allowlist FuzzAddressCheck 300000x
fuzz ./policy FuzzLoad 50000x
fuzz ./policy FuzzCheckPath 150000x
fuzz ./policy FuzzResolveInFS 20000x
fuzz ./policy FuzzDecodeErrorsQuoteNoValue 30000x
fuzz ./proxy FuzzParseBasic 50000x
fuzz ./proxy FuzzAuditLine 40000x
fuzz ./proxy FuzzSameSecret 100000x
fuzz ./proxy FuzzTimestamp 100000x
fuzz ./proxy FuzzParseServerError 60000x
fuzz ./proxy FuzzRawRequest 1000x
fuzz ./proxy FuzzParseClientHello 60000x
fuzz ./proxy FuzzHeadScan 100000x
fuzz ./proxy FuzzEncodeULID 100000x
fuzz ./proxy FuzzConnectReasonPhrase 50000x
fuzz ./proxy FuzzClassifyRequestLine 80000x
fuzz ./proxy FuzzAdminAuthorization 60000x
fuzz ./proxy FuzzApproveBody 30000x
fuzz ./proxy FuzzGrantBody 15000x
fuzz ./proxy FuzzParseFiling 40000x
fuzz ./policy FuzzCompileGrants 80000x
fuzz ./state FuzzDecodeFile 50000x
fuzz ./policy FuzzPatternCovers 30000x
fuzz ./internal/jsonstr FuzzAppend 500000x
fuzz ./internal/jsonstr FuzzAppendFloat 600000x
fuzz ./redaction FuzzRedactJSON 150000x
fuzz ./redaction FuzzRedactText 120000x
fuzz ./redaction FuzzRedactURLEncoded 100000x
fuzz ./redaction FuzzSecretScrubber 40000x
fuzz ./redaction FuzzDecodeServerSentEvents 100000x
fuzz ./redaction FuzzDecodeJSONLines 100000x
fuzz ./redaction FuzzEventReaderSecret 60000x
fuzz ./hooks FuzzConvertJSON 50000x
fuzz ./hooks FuzzDecodeReplyFrame 400000x
fuzz ./proxy FuzzGRPCScrubber 45000x
fuzz ./proxy FuzzStatementQuery 50000x
echo "all tests passed"
