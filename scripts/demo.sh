#!/usr/bin/env bash
# Command 1: set up the environment and run the demo (the shipped mini BART fine-tuned on DialogSum mini, as planned),
# ending with three dialogue / reference / prediction examples from the dev subset.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_SILENT=true TOKENIZERS_PARALLELISM=false
NPROC=()
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" = "0" ]; then
  NPROC=(--nproc 2)   # no GPU: two CPU ranks (gloo)
fi
dialsum launch configs/demo.yaml "${NPROC[@]}" "$@"
dialsum runs list --output-root outputs/demo
dialsum models list --output-root outputs/demo
python scripts/demo_examples.py outputs/demo data/dialogsum-mini/dev.csv
