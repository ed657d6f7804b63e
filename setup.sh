#!/usr/bin/env bash
# Sets up a fresh Debian 12 / Raspberry Pi OS (bookworm) machine for Nakhon, then runs the demo or the tests.
#
#   ./setup.sh demo    install everything, then run `nakhon demo` (Ctrl-C stops it)
#   ./setup.sh test    install everything, then run ruff, mypy and the whole test suite (extra args go to pytest)
#
# It installs the Debian packages (Mosquitto, Python's venv, SQLite), creates .venv/ in this folder and
# installs Nakhon into it. Run it again at any time: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")"

mode="${1:-}"
shift || true
case "$mode" in
  demo|test) ;;
  *) echo "usage: ./setup.sh demo|test" >&2; exit 2 ;;
esac

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

# mosquitto: the broker; pcscd, libpcsclite-dev and swig: the ID card reader stack (pyscard builds against it);
# vsmartcard-vpcd: the virtual reader the card tests use (never install it on a kiosk: it listens on the network);
# fonts-thai-tlwg: the Thai fonts receipts are rendered with; gdal-bin: GDAL reads the OGC API in the tests;
# chromium and chromium-driver: the kiosk screen and the API's /docs page are tested in headless Chromium.
# iproute2: the card tests run pcscd in a network namespace of its own (vpcd listens on every interface);
# systemd: systemd-analyze verifies the agent's and the hub's units in the tests; openssl: the SMTP test certificate.
# postgresql-15, postgresql-15-postgis-3: the records store's PostgreSQL backend is tested on a throw-away server;
# victoria-metrics: the production time-series store, which the tests start on a free port.
packages=(python3 python3-venv python3-dev python3-pip build-essential mosquitto mosquitto-clients sqlite3
          ca-certificates pcscd libpcsclite-dev swig fonts-thai-tlwg)
if [ "$mode" = test ]; then packages+=(vsmartcard-vpcd iproute2 gdal-bin chromium chromium-driver systemd openssl
                                      postgresql-15 postgresql-15-postgis-3 victoria-metrics); fi

echo "==> Debian packages: ${packages[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

python=python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Nakhon needs Python 3.11 or newer; $("$python" --version) found" >&2
  exit 1
fi

echo "==> Python environment in .venv/"
if [ ! -x .venv/bin/python ]; then "$python" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"

if [ "$mode" = demo ]; then
  echo "==> nakhon demo (Ctrl-C to stop)"
  exec .venv/bin/nakhon demo "$@"
fi
# every check runs; the first one that failed decides the exit status (pytest's own: 5 when no test ran)
status=0
echo "==> ruff check ."
.venv/bin/ruff check . || status=$?
echo "==> mypy (nakhon, edge, hub, provisioning, tests, benchmarks)"
.venv/bin/mypy || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }
echo "==> tests"
# a worker that crashes fails the run at once: pytest-xdist's loadgroup scheduler, given a replacement worker,
# never hands it the crashed worker's tests and waits forever
.venv/bin/python -m pytest -n "${NAKHON_TEST_WORKERS:-3}" --dist loadgroup --max-worker-restart=0 "$@" \
    || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }
exit "$status"
