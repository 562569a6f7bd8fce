#!/usr/bin/env bash
# Train the four fast configs (configs/fast/mbv2_{baseline,sgc8,flgc8,flgc8both}.yaml) on one GPU, one
# after the other, with scripts/train_rows.sh (resumable: run the same command again after an
# interruption and each row continues where it stopped), then slim each checkpoint to weights + config
# and write OUT/results.json (accuracy, MMac, params, minutes per row) with scripts/reproduce_gpu_results.py.
#
#   bash scripts/reproduce_gpu.sh [--rehearse] [--out DIR]
#
# Runs go to OUT/fast/mbv2_NAME, each with its console log beside it (OUT/fast/mbv2_NAME.log); the
# slim checkpoints and results.json to OUT (default runs/reproduce_gpu, or runs/reproduce_rehearsal).
# --rehearse: the same steps on the CPU with tiny subsets and 2 epochs, in a few minutes, so that a
# GPU's time is not spent on this script's bugs. Its data: FLGC_CIFAR10_ROOT (a directory holding
# cifar-10-batches-py/, checksums not verified) when set, else random images written to OUT/data.
# On a GPU the data come from data.root of the configs (./data, downloaded when missing); pass
# another with DATA_ROOT=DIR. Relative paths (--out, DATA_ROOT, FLGC_CIFAR10_ROOT) are read from the
# directory the script is started in.
set -euo pipefail
caller="$PWD"
from_caller() { case "$1" in /*) echo "$1" ;; *) echo "$caller/$1" ;; esac; }
cd "$(dirname "$0")/.."

rehearse=0
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        --rehearse) rehearse=1 ;;
        --out)
            if [ -z "${2:-}" ]; then echo "reproduce_gpu.sh: --out needs a directory" >&2; exit 2; fi
            out="$2"; shift ;;
        *) echo "reproduce_gpu.sh: unknown argument '$1'; allowed: --rehearse, --out DIR" >&2; exit 2 ;;
    esac
    shift
done

if [ -n "$out" ]; then out="$(from_caller "$out")"; fi
if [ -n "${DATA_ROOT:-}" ]; then export DATA_ROOT="$(from_caller "$DATA_ROOT")"; fi
if [ -n "${FLGC_CIFAR10_ROOT:-}" ]; then FLGC_CIFAR10_ROOT="$(from_caller "$FLGC_CIFAR10_ROOT")"; fi
rows=(baseline sgc8 flgc8 flgc8both)
if [ "$rehearse" = 1 ]; then
    out="${out:-runs/reproduce_rehearsal}"
    data="${FLGC_CIFAR10_ROOT:-$out/data}"
    if [ -z "${FLGC_CIFAR10_ROOT:-}" ]; then python scripts/reproduce_gpu_results.py --random-data "$data"; fi
    extra=(device=cpu threads=2 train.compile=none "data.root=$data" data.verify_checksums=false data.train_subset=256
           data.test_subset=128 train.epochs=2 train.warmup_epochs=1 train.batch_size=64
           train.eval_batch_size=128 train.eval_interval=1 train.progress=false)
else
    out="${out:-runs/reproduce_gpu}"
    if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "reproduce_gpu.sh: no CUDA device; run it on a GPU, or rehearse it with --rehearse" >&2
        exit 2
    fi
    extra=(device=cuda train.progress=false)
fi
mkdir -p "$out"
# the CPU runtime settings (preloaded allocator and OpenMP runtime) are not for GPU rows: RUNTIME=default
RUNS="$out" RUNTIME=default bash scripts/train_rows.sh fast "${rows[@]}" -- "${extra[@]}"
python scripts/reproduce_gpu_results.py "$out" "${rows[@]/#/$out/fast/mbv2_}"
