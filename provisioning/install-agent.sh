#!/usr/bin/env bash
# Installs Nakhon on a fresh Raspberry Pi OS (bookworm) device, or with --hub on the hub machine.
#
#   sudo provisioning/install-agent.sh --config kk-aq-0001.toml      an edge device (its config from the hub)
#   sudo provisioning/install-agent.sh --node service-kiosk          an edge device from a firmware-configs/ template
#   sudo provisioning/install-agent.sh --hub                         the hub machine
#   options: --wheels DIR (install from local wheels, no network), --root DIR (install into a scratch tree:
#            apt-get, useradd, chown and pip only print what they would do; used by the tests)
#
# It installs the Debian packages the device's drivers need (pcscd for a card reader, Thai fonts for a printer),
# creates the system user `nakhon` in the groups its drivers need (dialout, gpio), installs Nakhon into
# /opt/nakhon (source in src/, a venv in venv/), the config in /etc/nakhon, the outbox folder /var/lib/nakhon, and
# enables nakhon-agent.service (or nakhon-hub.service). Run it again at any time: every step is idempotent.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
root=""
config=""
node=""
wheels=""
role="agent"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="$(realpath -m "$2")"; shift 2 ;;
    --config) config="$(realpath "$2")"; shift 2 ;;
    --node) node="$2"; shift 2 ;;
    --wheels) wheels="$(realpath "$2")"; shift 2 ;;
    --hub) role="hub"; shift ;;
    -h|--help) usage ;;
    *) echo "install-agent.sh: unknown option $1" >&2; usage ;;
  esac
done

say() { echo "==> $*"; }
# a step that changes the machine itself: under --root it is only printed
system() {
  if [ -n "$root" ]; then echo "    [--root] would run: $*"; else "$@"; fi
}

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install-agent.sh: run it as root (sudo), or with --root DIR to try it in a scratch tree" >&2
  exit 1
fi

# -- what the device needs, from its config ------------------------------------------------------------------
if [ "$role" = agent ]; then
  if [ -z "$config" ]; then
    [ -n "$node" ] || { echo "install-agent.sh: give --config FILE or --node NODE (see firmware-configs/)" >&2; exit 2; }
    config="$here/firmware-configs/$node.toml"
    [ -f "$config" ] || { echo "install-agent.sh: no template $config" >&2; exit 2; }
  fi
  kinds="$(python3 -c 'import sys, tomllib
print(" ".join(sorted({d.get("kind", "") for d in tomllib.load(open(sys.argv[1], "rb")).get("drivers", [])})))' \
    "$config")"
else
  kinds=""
fi

# Debian packages and groups by driver kind (drivers not listed need neither)
declare -A kind_packages=([thai_id_card]="pcscd libccid" [escpos_printer]="fonts-thai-tlwg")
declare -A kind_groups=([pms5003]=dialout [nmea_gps]=dialout [modbus_meter]=dialout [serial_scanner]=dialout
                        [escpos_printer]=dialout [gpio]=gpio [hcsr04]=gpio)
# pyscard (a Nakhon dependency) builds against libpcsclite with swig where no wheel exists
packages=(python3 python3-venv python3-dev build-essential libpcsclite-dev swig ca-certificates)
if [ "$role" = hub ]; then packages+=(mosquitto mosquitto-clients sqlite3); fi
groups=()
for kind in $kinds; do
  # shellcheck disable=SC2206  # the table's values are space-separated package names
  packages+=(${kind_packages[$kind]:-})
  if [ -n "${kind_groups[$kind]:-}" ] && [[ " ${groups[*]} " != *" ${kind_groups[$kind]} "* ]]; then
    groups+=("${kind_groups[$kind]}")
  fi
done
say "role $role; drivers: ${kinds:-none}"

# -- 1. packages ----------------------------------------------------------------------------------------------
say "Debian packages: ${packages[*]}"
system apt-get update -qq
system env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"

# -- 2. the service user ---------------------------------------------------------------------------------------
say "system user nakhon${groups[*]:+ in groups ${groups[*]}}"
if [ -n "$root" ] || ! id nakhon >/dev/null 2>&1; then
  system useradd --system --user-group --home-dir /var/lib/nakhon --no-create-home --shell /usr/sbin/nologin nakhon
fi
for group in "${groups[@]}"; do
  if [ -n "$root" ] || getent group "$group" >/dev/null; then
    system usermod -aG "$group" nakhon
  else
    echo "    no group $group on this machine (not a Raspberry Pi OS image?): skipped" >&2
  fi
done

# -- 3. Nakhon into /opt/nakhon --------------------------------------------------------------------------------
say "Nakhon into $root/opt/nakhon"
install -d -m 755 "$root/opt/nakhon/src"
for part in edge hub nakhon provisioning firmware-configs docs pyproject.toml README.md; do
  rm -rf "$root/opt/nakhon/src/$part"
  cp -a "$here/$part" "$root/opt/nakhon/src/$part"
done
find "$root/opt/nakhon/src" -name __pycache__ -prune -exec rm -rf {} +
if [ ! -x "$root/opt/nakhon/venv/bin/python" ]; then
  if [ -n "$root" ]; then python3 -m venv --copies --without-pip "$root/opt/nakhon/venv"
  else python3 -m venv /opt/nakhon/venv; fi
fi
pip_source=(/opt/nakhon/src)
if [ -n "$wheels" ]; then pip_source=(--no-index --find-links "$wheels" /opt/nakhon/src); fi
system /opt/nakhon/venv/bin/python -m pip install -q --no-cache-dir "${pip_source[@]}"
system ln -sfn /opt/nakhon/venv/bin/nakhon /usr/local/bin/nakhon
if [ "$role" = agent ]; then
  # the agent's unit runs python -OO from this bytecode (docstrings and asserts left out: 1.6 MB less memory); made
  # afresh at every install, for the standard library too, since /opt is read-only to the service
  stdlib="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
  say "bytecode at -OO into $root/opt/nakhon/pycache"
  rm -rf "$root/opt/nakhon/pycache"
  system env PYTHONPYCACHEPREFIX=/opt/nakhon/pycache /opt/nakhon/venv/bin/python -m compileall -q -j 0 -o 2 \
    -x '/(test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip)/' "$stdlib" /opt/nakhon/venv/lib \
    || echo "    some files did not compile (listed above); the agent compiles them from source if it imports them" >&2
fi

# -- 4. config, secrets and state ------------------------------------------------------------------------------
say "config in $root/etc/nakhon, state in $root/var/lib/nakhon"
install -d -m 750 "$root/etc/nakhon" "$root/etc/nakhon/secrets"
system chown root:nakhon /etc/nakhon /etc/nakhon/secrets
if [ "$role" = agent ]; then
  if [ -f "$root/etc/nakhon/device.toml" ] && ! cmp -s "$config" "$root/etc/nakhon/device.toml"; then
    cp -a "$root/etc/nakhon/device.toml" "$root/etc/nakhon/device.toml.previous"
    echo "    the previous config is kept as /etc/nakhon/device.toml.previous"
  fi
  install -m 640 "$config" "$root/etc/nakhon/device.toml"
  system chown root:nakhon /etc/nakhon/device.toml
  install -d -m 700 "$root/var/lib/nakhon"
  system chown nakhon:nakhon /var/lib/nakhon
else
  if [ ! -f "$root/etc/nakhon/hub.env" ]; then
    printf '%s\n' "# NAKHON_HUB_* settings of \`nakhon hub serve\` (see its --help), one per line" \
      "NAKHON_HUB_BROKER_HOST=127.0.0.1" "NAKHON_HUB_BROKER_PORT=1883" "NAKHON_HUB_HTTP_HOST=0.0.0.0" \
      "# the hub's own broker account (its password file mode 600, owner nakhon):" \
      "#NAKHON_HUB_USERNAME=nakhon-hub" "#NAKHON_HUB_PASSWORD_FILE=/etc/nakhon/secrets/hub.password" \
      "# or a provisioned deployment (sudo nakhon provision init /etc/nakhon/deployment; docs/provisioning.md):" \
      "#NAKHON_HUB_DEPLOYMENT=/etc/nakhon/deployment" \
      > "$root/etc/nakhon/hub.env"
    chmod 640 "$root/etc/nakhon/hub.env"
  fi
  system chown root:nakhon /etc/nakhon/hub.env
  install -d -m 700 "$root/var/lib/nakhon-hub"
  system chown nakhon:nakhon /var/lib/nakhon-hub
fi

# -- 5. the systemd unit ---------------------------------------------------------------------------------------
unit="nakhon-$role.service"
say "systemd unit $unit"
install -d -m 755 "$root/etc/systemd/system"
install -m 644 "$here/provisioning/systemd/$unit" "$root/etc/systemd/system/$unit"
if [ -n "$root" ]; then
  systemctl --root="$root" enable "$unit" >/dev/null 2>&1 \
    || { mkdir -p "$root/etc/systemd/system/multi-user.target.wants"; ln -sfn "/etc/systemd/system/$unit" "$root/etc/systemd/system/multi-user.target.wants/$unit"; }
else
  systemctl daemon-reload
  systemctl enable "$unit"
fi

if [ "$role" = hub ]; then
  # the hub (user nakhon) may not signal the broker: this path unit reloads it when the hub re-signs the CRL
  for extra in nakhon-broker-reload.path nakhon-broker-reload.service; do
    install -m 644 "$here/provisioning/systemd/$extra" "$root/etc/systemd/system/$extra"
  done
  if [ -n "$root" ]; then
    mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
    ln -sfn /etc/systemd/system/nakhon-broker-reload.path \
      "$root/etc/systemd/system/multi-user.target.wants/nakhon-broker-reload.path"
  else
    systemctl daemon-reload
    systemctl enable nakhon-broker-reload.path
  fi
fi

if [ "$role" = agent ]; then
  say "done. Next: put the device's certificate, key and CA (or its broker password) in /etc/nakhon/secrets/,"
  echo "    then check everything before it goes live:"
  echo "    sudo nakhon agent check --connect /etc/nakhon/device.toml"
  echo "    and start it:  sudo systemctl start $unit   (its log: journalctl -u $unit -f)"
else
  say "done. Next: edit /etc/nakhon/hub.env, then: sudo systemctl start $unit   (journalctl -u $unit -f)"
fi
