#!/usr/bin/env bash
# The GPU check (issues 14, 27) in one command on a bare GPU node (~7.5 minutes on one GPU, no network needed):
#   bash benchmarks/gpu_check.sh OUT_DIR [--dry-run]
# When dialsum's dependencies do not import, they are installed first from the wheelhouse beside the repository
# (./wheelhouse, or $DIALSUM_WHEELHOUSE; built by scripts/wheelhouse.sh) into OUT_DIR/deps, not over the node's own
# packages. Then benchmarks/gpu_check.py runs every part in its own process with its own timeout (a failing part is
# recorded and the others run) and writes OUT_DIR/gpu_check.json; everything printed is in OUT_DIR/gpu_check.log.
# --dry-run: every part on CPU with tiny shapes. PYTHON: the interpreter (default python).
set -euo pipefail
usage="usage: benchmarks/gpu_check.sh OUT_DIR [--dry-run]"
die() { echo "gpu_check: $*" >&2; exit 2; }
OUT="" DRY=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=(--dry-run) ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) die "unknown option $arg; $usage" ;;
    *) [ -z "$OUT" ] || die "one OUT_DIR, got '$OUT' and '$arg'; $usage"; OUT="$arg" ;;
  esac
done
[ -n "$OUT" ] || die "OUT_DIR missing; $usage"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=offline WANDB_SILENT=true TOKENIZERS_PARALLELISM=false \
       HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
exec > >(tee "$OUT/gpu_check.log") 2>&1

imports="import deepspeed, trl, peft, wandb, rouge_score, nltk, sqlalchemy, optuna, engine.trainer, launcher.cli"
if ! DS_ACCELERATOR=cpu "$PY" -c "$imports" 2>/dev/null; then
  WHEELS="${DIALSUM_WHEELHOUSE:-$PWD/wheelhouse}"
  [ -d "$WHEELS" ] || die "dialsum's dependencies do not import and there is no wheelhouse at $WHEELS (build one \
where there is an index: bash scripts/wheelhouse.sh OUT --python X.Y --platform TAG --installed FREEZE.txt)"
  echo "gpu_check: installing the wheelhouse $WHEELS into $OUT/deps"
  # --no-deps: the wheelhouse is exactly what this node lacks (--target would otherwise reinstall torch & co.)
  "$PY" -m pip install -q --no-index --no-deps --target "$OUT/deps" "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:$OUT/deps"
  "$PY" -m pip check || echo "gpu_check: pip check found the conflicts above; running anyway"
  DS_ACCELERATOR=cpu "$PY" -c "$imports"
fi

if [ ${#DRY[@]} -eq 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name())"
fi
"$PY" benchmarks/gpu_check.py "$OUT" "${DRY[@]}"
echo "gpu_check: done; $OUT/gpu_check.json, $OUT/gpu_check.log"
