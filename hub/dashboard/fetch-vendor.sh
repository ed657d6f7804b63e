#!/usr/bin/env bash
# Vendors the dashboard's front-end libraries from the npm registry into hub/dashboard/static/vendor/: Leaflet,
# leaflet.markercluster, protomaps-leaflet (vector basemaps from a .pmtiles file), uPlot and the Noto Sans Thai
# font (OFL). Each package is fetched with `npm pack` at a
# pinned version and checked against its registry integrity (`npm view NAME@VERSION dist.integrity`); only the
# files the pages load are kept, with the package's licence. Rerun after changing a version and its integrity,
# then commit the result. Nothing is loaded from the internet at run time.
set -euo pipefail
cd "$(dirname "$0")"

# name version integrity
PACKAGES=(
  "leaflet 1.9.4 sha512-nxS1ynzJOmOlHp+iL3FyWqK89GtNL8U8rvlMOsQdTTssxZwCXh8N2NB3GDQOL+YR3XnWyZAxwQixURb+FA74PA=="
  "leaflet.markercluster 1.5.3 sha512-vPTw/Bndq7eQHjLBVlWpnGeLa3t+3zGiuM7fJwCkiMFq+nmRuG3RI3f7f4N4TDX7T4NpbAXpR2+NTRSEGfCSeA=="
  "protomaps-leaflet 5.1.0 sha512-N0YY1Gbw5nZ9n8VUOvwHKm/w3zhTTuaZEeMZl8doHemeM4ujGPp2otI6t4Sgqrz8iM4svx2rpG1Q17rHkOWSaA=="
  "uplot 1.6.32 sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
  "@fontsource/noto-sans-thai 5.3.0 sha512-ngqUyvDukkZUHypQbUJvUdAeYa2aYZsyeDTsdqMudf7GK2F2TK19OZ5kbo+37qsBtkNpmAMhEObQnWnzPqzKUw=="
)
# package -> files kept (paths inside the package; a directory is copied whole)
declare -A KEEP=(
  [leaflet]="dist/leaflet.js dist/leaflet.css dist/images LICENSE"
  [leaflet.markercluster]="dist/leaflet.markercluster.js dist/MarkerCluster.css dist/MarkerCluster.Default.css MIT-LICENCE.txt"
  [protomaps-leaflet]="dist/protomaps-leaflet.js LICENSE"
  [uplot]="dist/uPlot.iife.min.js dist/uPlot.min.css LICENSE"
  [@fontsource/noto-sans-thai]="400.css 700.css LICENSE"
)
FONT_FILES='noto-sans-thai-(thai|latin|latin-ext)-(400|700)-normal\.woff2$'

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rm -rf static/vendor
mkdir -p static/vendor
for entry in "${PACKAGES[@]}"; do
  read -r name version integrity <<<"$entry"
  tarball="$(cd "$work" && npm pack --silent "$name@$version")"
  actual="sha512-$(openssl dgst -sha512 -binary "$work/$tarball" | base64 -w0)"
  if [ "$actual" != "$integrity" ]; then
    echo "$name@$version: integrity $actual, expected $integrity" >&2
    exit 1
  fi
  unpacked="$work/${tarball%.tgz}"
  mkdir -p "$unpacked"
  tar -xzf "$work/$tarball" -C "$unpacked"
  target="static/vendor/${name#@fontsource/}"
  mkdir -p "$target"
  for f in ${KEEP[$name]}; do cp -r "$unpacked/package/$f" "$target/"; done
  echo "$name $version" > "$target/VERSION"
  if [ "$name" = "@fontsource/noto-sans-thai" ]; then
    mkdir -p "$target/files"
    for f in "$unpacked"/package/files/*; do
      if [[ "$(basename "$f")" =~ $FONT_FILES ]]; then cp "$f" "$target/files/"; fi
    done
    # woff2 only (every browser the dashboard supports reads it): drop the .woff fallbacks from the CSS
    sed -i -E "s/, url\([^)]*\.woff\) format\('woff'\)//" "$target/400.css" "$target/700.css"
  fi
done
echo "dashboard libraries vendored in $(pwd)/static/vendor"
