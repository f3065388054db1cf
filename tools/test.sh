#!/usr/bin/env bash
# The project's test command: every test, on the CPU, against real parts.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q "$@"
