#!/usr/bin/env bash
# Set everything up, then run the main job: the demo shortcut study (offline, embedded synthetic data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/resnetlab demo "$@"
