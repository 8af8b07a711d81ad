#!/usr/bin/env bash
# The GPU checks in one short run (a few minutes on one GPU): the CUDA-only tests, then the serving and
# training benchmarks on the GPU. Prints what to copy into docs/benchmarks.md, with the date and the GPU.
#
#   scripts/venv.sh test && bench/gpu.sh            # on a machine with CUDA
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
status=0

echo "## $(date -u +%F) on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__, "CUDA", torch.version.cuda)' || exit 1

echo; echo "### GPU tests (pytest -m gpu)"
"$PY" -m pytest -q -m gpu -p no:cacheprovider tests/gpu || status=1

echo; echo "### Serving: engine vs sequential HF generate, both on the GPU"
"$PY" bench/serve_bench.py --device cuda --repeat 2 --tokens 128 || status=1

echo; echo "### RL rollouts: PPO's policy sampled by the engine decoder vs generate, on the GPU"
"$PY" bench/rollout_bench.py --repeat 2 || status=1

echo; echo "### Training: run_supervised vs Trainer + peft (bf16), on the GPU"
"$PY" bench/train_bench.py --examples 64 --threads 4 --skip-unpacked || status=1

exit $status
