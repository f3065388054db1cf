#!/usr/bin/env bash
# Install system packages (broker, audio) and the project into ./.venv. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    need=""
    # python3-venv: tools/runtime_install_check.py builds a venv with the system Python.
    # chromium + chromium-driver: the web view's browser tests (tests/edge_monitor/test_web.py).
    for pkg in libportaudio2 libsndfile1 mosquitto mosquitto-clients pulseaudio pulseaudio-utils \
               python3-venv chromium chromium-driver; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
    done
    if [ -n "$need" ]; then
        echo "[setup] apt-get install$need"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
    fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch first and pinned: the CPU build lies on local disk; an open range could pull a CUDA build.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e '.[train,tflite,dev]'
echo "[setup] ready: .venv"
