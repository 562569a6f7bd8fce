#!/usr/bin/env bash
# Train the CPU recipe's rows (configs/cpu/mbv2_{flgc8,sgc8,baseline}.yaml) one after the other, each in
# RUNS/NAME (default ~/flgc-runs, outside the work tree) with --resume auto: run the same command again
# after an interruption and each row continues where it stopped; finished rows are left as they are.
#
#   [RUNS=DIR] [DATA_ROOT=DIR] [VERIFY_CHECKSUMS=false] bash scripts/train_cpu_rows.sh [NAME ...]
#
# NAME is flgc8, sgc8 or baseline (default: all three). Each row's console output is appended to
# RUNS/NAME.log. Release a finished row with scripts/release_checkpoint.py (see README, Checkpoints).
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${RUNS:-$HOME/flgc-runs}"
rows=("$@")
if [ ${#rows[@]} -eq 0 ]; then rows=(flgc8 sgc8 baseline); fi
for name in "${rows[@]}"; do
    case "$name" in
        flgc8|sgc8|baseline) ;;
        *) echo "train_cpu_rows.sh: unknown row '$name'; allowed: flgc8, sgc8, baseline" >&2; exit 2 ;;
    esac
done
extra=()
if [ -n "${DATA_ROOT:-}" ]; then extra+=("data.root=$DATA_ROOT"); fi
if [ -n "${VERIFY_CHECKSUMS:-}" ]; then extra+=("data.verify_checksums=$VERIFY_CHECKSUMS"); fi
mkdir -p "$runs"
for name in "${rows[@]}"; do
    echo "== mbv2_$name: $runs/mbv2_$name (log: $runs/mbv2_$name.log)"
    python train.py --config "configs/cpu/mbv2_$name.yaml" "out_dir=$runs/mbv2_$name" "${extra[@]}" \
        --resume auto >> "$runs/mbv2_$name.log" 2>&1
done
