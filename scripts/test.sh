#!/usr/bin/env bash
# Installs what the test suite needs (when missing) and runs all of it:
# vet, unit and end-to-end tests under the race detector, and short fuzz
# runs of the security-relevant parsers. Works on a fresh Debian with Go.
set -euo pipefail
cd "$(dirname "$0")/.."

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
fuzz() { go test -run='^$' -fuzz="^$2\$" -fuzztime="${FUZZTIME:-10s}" "$1"; }
fuzz ./allowlist FuzzNormalizeHost
fuzz ./allowlist FuzzParsePattern
fuzz ./allowlist FuzzAddressCheck
fuzz ./policy FuzzLoad
fuzz ./policy FuzzCheckPath
fuzz ./proxy FuzzParseBasic
fuzz ./proxy FuzzAuditLine
fuzz ./proxy FuzzSameSecret
fuzz ./proxy FuzzTimestamp
fuzz ./internal/jsonstr FuzzAppend
fuzz ./internal/jsonstr FuzzAppendFloat
fuzz ./redaction FuzzRedactJSON
fuzz ./redaction FuzzRedactText
fuzz ./redaction FuzzRedactURLEncoded
fuzz ./redaction FuzzSecretScrubber
fuzz ./hooks FuzzConvertJSON
fuzz ./hooks FuzzDecodeReplyFrame
echo "all tests passed"
