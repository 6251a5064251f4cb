#!/usr/bin/env bash
# Command 2: set up the environment and run the whole test suite (unit tests + a few real end-to-end launches).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
export WANDB_MODE=offline WANDB_SILENT=true TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cpu
python -m pytest -q -ra "$@"
