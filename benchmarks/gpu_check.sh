#!/usr/bin/env bash
# The GPU check of issue 14, for a session that is lent one GPU (~8 minutes): BART-base- and BART-large-sized random
# models at 512/128 through `dialsum launch` at the planned config vs a plain Seq2SeqTrainer at its defaults
# (tokens/s, MFU, predicted vs torch.cuda.max_memory_allocated, whether the first try fit: bench_gpu.py), then the
# planner's formula vs its fake-tensor trace on CUDA (fused SDPA kernels) for the fixture configs.
# Run from the repository root: bash benchmarks/gpu_check.sh [OUT_DIR]   (writes OUT_DIR/gpu_check.log and .json)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=offline WANDB_SILENT=true TOKENIZERS_PARALLELISM=false \
       HF_HUB_OFFLINE=1
exec > >(tee "$OUT/gpu_check.log") 2>&1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name())"

# 1. launch vs plain Trainer: tokens/s, MFU, predicted vs measured peak, first-try fit (both sizes). ~5 min.
timeout 330 "$PY" benchmarks/bench_gpu.py --steps 30 --warmup 5 --max-source 512 --max-target 128

# 2. formula vs trace on CUDA at the planned setting, per fixture config. ~1-2 min.
for model in bart-base bart-large; do
  cfg="$OUT/plan-$model.yaml"
  printf 'model:\n  name_or_path: tests/fixtures/model_configs/%s\ndata:\n  max_source_length: 512\n  max_target_length: 128\ntraining:\n  global_batch_size: 32\n' "$model" > "$cfg"
  timeout 120 "$PY" -m launcher.cli plan "$cfg" --trace --json > "$OUT/plan-$model.json"
  "$PY" - "$OUT/plan-$model.json" "$model" <<'PYEOF'
import json, sys
plan = json.load(open(sys.argv[1]))
t = plan["memory"]["trace"]
for ckpt, row in t["checkpointing"].items():
    print(f"{sys.argv[2]}: micro-batch {t['micro_batch_size']}, checkpointing {ckpt}: formula "
          f"{row['formula_bytes'] / 2**30:.2f} GiB, trace {row['traced_bytes'] / 2**30:.2f} GiB ({t['seconds']} s)")
PYEOF
done
echo "gpu_check: done"
