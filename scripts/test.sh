#!/usr/bin/env bash
# The whole test suite, on a fresh Debian/Ubuntu machine or here:
# installs the Debian services and the Python dependencies when missing, then
# runs ruff, mypy --strict and pytest (unit + integration against real servers).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v victoria-metrics >/dev/null 2>&1 || need_apt+=(victoria-metrics)
command -v influxd >/dev/null 2>&1 || need_apt+=(influxdb)
command -v prometheus-alertmanager >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The packages start their own services on the default ports; the tests start
  # private instances on free ports and do not need them.
  for svc in mosquitto influxdb victoria-metrics prometheus-alertmanager; do
    $SUDO systemctl stop "$svc" >/dev/null 2>&1 || true
  done
fi

PY="${PYTHON:-python3}"
echo "== Python dependencies (pip install -e '.[dev]')"
"$PY" -m pip install -q --root-user-action=ignore -e '.[dev]'

echo "== ruff"
"$PY" -m ruff check .
"$PY" -m ruff format --check .
echo "== mypy --strict"
"$PY" -m mypy
echo "== pytest"
"$PY" -m pytest "$@"
