#!/usr/bin/env bash
# Vendors Swagger UI (npm package swagger-ui-dist) into hub/api/static/swagger-ui/ for the hub's offline /docs.
# Rerun after changing VERSION and INTEGRITY (from `npm view swagger-ui-dist@VERSION dist.integrity`); commit
# the result. Only the files /docs loads are kept, with the package's licence and notice.
set -euo pipefail
cd "$(dirname "$0")"

VERSION=5.35.0
INTEGRITY=sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ==
FILES=(swagger-ui-bundle.js swagger-ui.css favicon-32x32.png LICENSE NOTICE swagger-ui-bundle.js.LICENSE.txt)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tarball="$(cd "$work" && npm pack --silent "swagger-ui-dist@$VERSION")"
actual="sha512-$(openssl dgst -sha512 -binary "$work/$tarball" | base64 -w0)"
if [ "$actual" != "$INTEGRITY" ]; then
  echo "swagger-ui-dist@$VERSION: integrity $actual, expected $INTEGRITY" >&2
  exit 1
fi
tar -xzf "$work/$tarball" -C "$work"
rm -rf swagger-ui
mkdir swagger-ui
for f in "${FILES[@]}"; do cp "$work/package/$f" swagger-ui/; done
echo "$VERSION" > swagger-ui/VERSION
echo "swagger-ui-dist $VERSION vendored in $(pwd)/swagger-ui"
