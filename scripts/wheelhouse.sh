#!/usr/bin/env bash
# Wheels of dialsum and of every dependency a target node lacks, built where there is a package index, for an
# air-gapped node that then runs `pip install --no-index --find-links OUT dialsum`.
#
#   bash scripts/wheelhouse.sh OUT [--python X.Y] [--platform TAG] [--exclude A,B,...] [--installed FREEZE.txt]
#
# --python      the target's Python (default: this interpreter's)
# --platform    the target's platform tag, e.g. manylinux_2_28_x86_64 (older manylinux tags are accepted too);
#               default: this machine's
# --exclude     packages the target has: neither they nor their own dependencies go into OUT
# --installed   `pip freeze` of the target: every package in it is excluded, and its versions are the constraints
#               the rest is resolved against (so what OUT holds agrees with what the node has)
# Source-only dependencies (DeepSpeed, rouge-score) are built here as pure-Python wheels (DS_BUILD_OPS=0).
# PYTHON: the interpreter whose pip builds and downloads (default python3; pip >= 22.2).
set -euo pipefail
usage="usage: scripts/wheelhouse.sh OUT [--python X.Y] [--platform TAG] [--exclude A,B] [--installed FILE]"
die() { echo "wheelhouse: $*" >&2; exit 2; }

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT="" TARGET_PY="" PLATFORM="" EXCLUDE="" INSTALLED=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python|--platform|--exclude|--installed)
      [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value; $usage"
      case "$1" in
        --python) TARGET_PY="$2" ;; --platform) PLATFORM="$2" ;; --exclude) EXCLUDE="$2" ;; --installed) INSTALLED="$2" ;;
      esac
      shift 2 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) die "unknown option $1; $usage" ;;
    *) [ -z "$OUT" ] || die "one OUT directory, got '$OUT' and '$1'; $usage"; OUT="$1"; shift ;;
  esac
done
[ -n "$OUT" ] || die "OUT directory missing; $usage"
[[ -z "$TARGET_PY" || "$TARGET_PY" =~ ^3\.[0-9]+$ ]] || die "--python: X.Y expected, got '$TARGET_PY'"
[ -z "$INSTALLED" ] || [ -f "$INSTALLED" ] || die "--installed: no such file: $INSTALLED"
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then die "OUT is not empty: $OUT"; fi
"$PY" -m pip --version >/dev/null 2>&1 || die "no pip in $PY (set PYTHON to an interpreter that has one)"
TARGET_PY="${TARGET_PY:-$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 DS_BUILD_OPS=0
pip_() {  # pip's notes about unreadable local index folders are noise; its errors still fail the script
  "$PY" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
  return "${PIPESTATUS[0]}"
}

# What the target has: the excluded names, the freeze's names; the freeze's versions (local labels such as +cu124
# dropped: the index's release of that version has the same metadata) constrain the resolution.
tr ',' '\n' <<<"$EXCLUDE" | sed '/^ *$/d' > "$WORK/have.txt"
: > "$WORK/constraints.txt"
if [ -n "$INSTALLED" ]; then
  cat "$INSTALLED" >> "$WORK/have.txt"
  sed -nE 's/^([A-Za-z0-9._-]+)==([^+ ;]+).*/\1==\2/p' "$INSTALLED" > "$WORK/constraints.txt"
fi

# Target flags: the Python, and the platform with the older manylinux tags wheels are often published under.
target=(--python-version "$TARGET_PY" --only-binary=:all:)
closure_flags=(--python "$TARGET_PY")
if [ -n "$PLATFORM" ]; then
  closure_flags+=(--platform "$PLATFORM")
  target+=(--platform "$PLATFORM")
  if [[ "$PLATFORM" =~ ^manylinux_2_([0-9]+)_(.+)$ ]]; then
    glibc="${BASH_REMATCH[1]}" arch="${BASH_REMATCH[2]}"
    for ((m = glibc - 1; m >= 5; m--)); do target+=(--platform "manylinux_2_${m}_${arch}"); done
    target+=(--platform "manylinux2014_$arch" --platform "manylinux2010_$arch" --platform "manylinux1_$arch")
  fi
fi

echo "wheelhouse: dialsum for Python $TARGET_PY${PLATFORM:+ on $PLATFORM} -> $OUT"
pip_ wheel -q --no-deps -w "$OUT" "$REPO"
DIALSUM_WHEEL="$(ls "$OUT"/dialsum-*.whl)"

resolve() {  # resolve dialsum's closure with pip's resolver without installing: a JSON installation report
  local report="$1"; shift
  pip_ install -q --dry-run --ignore-installed --target "$WORK/none" --report "$report" \
    -c "$WORK/constraints.txt" --find-links "$OUT" "$@" "$DIALSUM_WHEEL"
}

# 1. Dependencies published as source only: build them here as wheels (at the versions this Python resolves).
resolve "$WORK/local.json"
"$PY" "$REPO/scripts/wheelhouse_closure.py" "$WORK/local.json" "$WORK/have.txt" "${closure_flags[@]}" \
  | awk -F'\t' '$2 !~ /\.whl$/ {print $1}' > "$WORK/sdists.txt"
if [ -s "$WORK/sdists.txt" ]; then
  echo "wheelhouse: building wheels of $(paste -sd' ' "$WORK/sdists.txt")"
  pip_ wheel -q --no-deps -w "$OUT" -c "$WORK/constraints.txt" -r "$WORK/sdists.txt"
fi

# 2. Resolve for the target (binary wheels, the ones built above among them) and download what it lacks.
resolve "$WORK/target.json" "${target[@]}"
"$PY" "$REPO/scripts/wheelhouse_closure.py" "$WORK/target.json" "$WORK/have.txt" "${closure_flags[@]}" \
  > "$WORK/closure.txt"
awk -F'\t' -v out="file://$OUT/" 'index($2, out) != 1 {print $1}' "$WORK/closure.txt" > "$WORK/download.txt"
if [ -s "$WORK/download.txt" ]; then
  pip_ download -q --no-deps "${target[@]}" -d "$OUT" -r "$WORK/download.txt"
fi

count="$(ls "$OUT"/*.whl | wc -l)"
bytes="$(cat "$OUT"/*.whl | wc -c)"
awk -v b="$bytes" -v n="$count" -v out="$OUT" \
  'BEGIN {printf "wheelhouse: %d wheels, %.1f MiB in %s\n", n, b / 1048576, out}'
echo "wheelhouse: on the node: pip install --no-index --find-links $OUT dialsum"
echo "wheelhouse:   or, the node's packages untouched: pip install --no-index --no-deps --target DIR $OUT/*.whl" \
     "and PYTHONPATH=DIR"
