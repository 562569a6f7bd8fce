#!/usr/bin/env bash
# Train the rows of one recipe (configs/RECIPE/mbv2_NAME.yaml) one after the other, each in
# RUNS/RECIPE/mbv2_NAME (default RUNS: ~/flgc-runs, outside the work tree) with --resume auto: run the
# same command again after an interruption and each row continues where it stopped; finished rows are
# left as they are.
#
#   [RUNS=DIR] [DATA_ROOT=DIR] [VERIFY_CHECKSUMS=false] [RUNTIME=SETTING] \
#       bash scripts/train_rows.sh RECIPE [NAME ...] [-- KEY=VALUE ...]
#
# RECIPE is a folder of configs/ (cpu, cpu-long, fast); NAME one of its rows (baseline, flgc8, sgc8, ...;
# default: every config in the folder). KEY=VALUE pairs after -- go to every row (e.g. device=cuda).
# RUNTIME picks the process settings of scripts/runtime_env.py (allocator, OpenMP runtime), made for
# CPU rows: default `recommended` (Intel OpenMP + tcmalloc), the fastest measured
# (docs/training-speed.md), used only where its libraries are installed; `default` runs without any
# (pass it for GPU rows, as scripts/reproduce_gpu.sh does). Relative RUNS and DATA_ROOT are read from
# the directory the script is started in. Each row's console output is appended to
# RUNS/RECIPE/mbv2_NAME.log. Release a finished row with scripts/release_checkpoint.py.
set -euo pipefail
caller="$PWD"
from_caller() { case "$1" in /*) echo "$1" ;; *) echo "$caller/$1" ;; esac; }
cd "$(dirname "$0")/.."

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
recipe="${1:-}"
if [ -z "$recipe" ] || [ ! -d "configs/$recipe" ] || [ "$recipe" != "$(basename "$recipe")" ]; then
    echo "train_rows.sh: unknown recipe '$recipe'; allowed: $(cd configs && ls -d */ | tr -d / | tr '\n' ' ')" >&2
    exit 2
fi
shift
rows=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do rows+=("$1"); shift; done
[ $# -gt 0 ] && shift
overrides=("$@")
if [ ${#rows[@]} -eq 0 ]; then
    for file in "configs/$recipe"/mbv2_*.yaml; do rows+=("$(basename "$file" .yaml | sed 's/^mbv2_//')"); done
fi
for name in "${rows[@]}"; do
    if [ ! -f "configs/$recipe/mbv2_$name.yaml" ]; then
        allowed=$(cd "configs/$recipe" && ls mbv2_*.yaml | sed 's/^mbv2_//; s/\.yaml$//' | tr '\n' ' ')
        echo "train_rows.sh: recipe $recipe has no row '$name'; allowed: $allowed" >&2
        exit 2
    fi
done
extra=()
if [ -n "${DATA_ROOT:-}" ]; then extra+=("data.root=$(from_caller "$DATA_ROOT")"); fi
if [ -n "${VERIFY_CHECKSUMS:-}" ]; then extra+=("data.verify_checksums=$VERIFY_CHECKSUMS"); fi
runtime_env=()
if [ "${RUNTIME:-recommended}" != "default" ]; then
    setting=()
    if [ "${RUNTIME:-recommended}" != "recommended" ]; then setting=("$RUNTIME"); fi
    settings=$(python scripts/runtime_env.py "${setting[@]}")  # an unknown setting stops here (exit 2)
    while IFS= read -r line; do if [ -n "$line" ]; then runtime_env+=("$line"); fi; done <<< "$settings"
fi
runs="$(from_caller "${RUNS:-$HOME/flgc-runs}")/$recipe"
mkdir -p "$runs"
for name in "${rows[@]}"; do
    echo "== $recipe/mbv2_$name: $runs/mbv2_$name (log: $runs/mbv2_$name.log) ${runtime_env[*]}"
    env "${runtime_env[@]}" python train.py --config "configs/$recipe/mbv2_$name.yaml" "out_dir=$runs/mbv2_$name" \
        "${extra[@]}" "${overrides[@]}" --resume auto >> "$runs/mbv2_$name.log" 2>&1
done
