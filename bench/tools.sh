#!/usr/bin/env bash
# Installs what `make bench` needs beyond the Python packages, into the services cache, once:
#   toxiproxy v2.12.0 (Go module proxy), oha (crates.io), Debian's wrk (for the comparison note).
# Prints nothing when all are there. Usage: bench/tools.sh  (then: bench/tools.sh path NAME)
set -euo pipefail
CACHE="${WIDELOG_SERVICES_CACHE:-$HOME/.cache/widelog-services}"
TOXI_VERSION=v2.12.0
OHA_VERSION=1.16.0
TOXI_DIR="$CACHE/toxiproxy-$TOXI_VERSION"
OHA_DIR="$CACHE/oha-$OHA_VERSION"

if [[ "${1:-}" == path ]]; then
  case "$2" in
    toxiproxy) echo "$TOXI_DIR/server" ;;
    oha) echo "$OHA_DIR/bin/oha" ;;
    *) exit 2 ;;
  esac
  exit 0
fi

if [[ ! -x "$TOXI_DIR/server" ]]; then
  mkdir -p "$TOXI_DIR"
  echo "bench: building toxiproxy $TOXI_VERSION into $TOXI_DIR" >&2
  GOBIN="$TOXI_DIR" GOFLAGS=-trimpath go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXI_VERSION"
fi
if [[ ! -x "$OHA_DIR/bin/oha" ]]; then
  echo "bench: building oha $OHA_VERSION from crates.io into $OHA_DIR (a few minutes)" >&2
  cargo install --quiet --locked --root "$OHA_DIR" oha --version "$OHA_VERSION"
fi
