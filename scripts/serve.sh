#!/usr/bin/env bash
# Start ChatForge on the embedded default: SQLite, no broker server, the bundled SmolLM2 model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/venv.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec .venv/bin/chatforge serve "$@"
