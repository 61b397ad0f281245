#!/usr/bin/env bash
# Installs what `make bench` needs beyond the Python packages, into the services cache, once:
#   toxiproxy (built by scripts/services.sh, its one recipe), oha (crates.io), Debian's wrk (for
#   the comparison note). Prints nothing when all are there. Usage: bench/tools.sh  (then:
#   bench/tools.sh path NAME)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${WIDELOG_SERVICES_CACHE:-$HOME/.cache/widelog-services}"
OHA_VERSION=1.16.0
OHA_DIR="$CACHE/oha-$OHA_VERSION"

if [[ "${1:-}" == path ]]; then
  case "$2" in
    toxiproxy) "$ROOT/scripts/services.sh" path toxiproxy ;;
    oha) echo "$OHA_DIR/bin/oha" ;;
    *) exit 2 ;;
  esac
  exit 0
fi

"$ROOT/scripts/services.sh" path toxiproxy >/dev/null
if [[ ! -x "$OHA_DIR/bin/oha" ]]; then
  echo "bench: building oha $OHA_VERSION from crates.io into $OHA_DIR (a few minutes)" >&2
  cargo install --quiet --locked --root "$OHA_DIR" oha --version "$OHA_VERSION"
fi
