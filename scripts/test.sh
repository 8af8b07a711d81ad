#!/usr/bin/env bash
# Run the whole test suite (needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/venv.sh test
# Headless Chromium (Debian's) for the console's browser tests; without it they are skipped (failed under CI).
scripts/browser.sh || echo "warning: could not install Chromium; the browser tests will be skipped" >&2
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
# gpu tests run where CUDA is present and are skipped elsewhere (tests/conftest.py)
exec .venv/bin/python -m pytest --durations=30 "$@"
