#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: create .venv (once) and install dialsum with its pinned ranges.
# torch is installed first at an exact version so pip takes the local CPU build where one is provided
# (on a CUDA machine with torch already present, set DIALSUM_SKIP_TORCH=1 to keep yours).
set -euo pipefail
VENV="${DIALSUM_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "${DIALSUM_PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
quiet_pip() {  # pip's notes about unreadable local index folders are noise; real errors still fail the script
  python -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
  return "${PIPESTATUS[0]}"
}
# pip runs only when the venv was not yet installed from this pyproject.toml: a second `scripts/test.sh` or
# `scripts/demo.sh` starts at once, and two started together never run pip on the same venv.
installed="$VENV/.dialsum-installed"
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$installed" 2>/dev/null)" != "$wanted" ]; then
  # wheel first: pip then builds the sdists among the dependencies (DeepSpeed, rouge-score) as wheels, without the
  # "legacy 'setup.py install' method" deprecation notice pip prints when a new venv has no wheel package
  quiet_pip wheel
  if [ -z "${DIALSUM_SKIP_TORCH:-}" ] && ! python -c "import torch" 2>/dev/null; then
    quiet_pip "torch==2.13.0"
  fi
  quiet_pip -e ".[dev]"
  echo "$wanted" > "$installed"
fi
python -c "import engine, launcher, deepspeed, transformers" >/dev/null
