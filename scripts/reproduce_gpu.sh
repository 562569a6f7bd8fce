#!/usr/bin/env bash
# Train the four fast configs (configs/fast/mbv2_{baseline,sgc8,flgc8,flgc8both}.yaml) on one GPU,
# one after the other, then slim each checkpoint to model + config + metrics and write
# OUT/results.json (accuracy, MMac, params, minutes per row).
#
#   bash scripts/reproduce_gpu.sh [--rehearse] [--out DIR]
#
# --rehearse: the same steps on the CPU with tiny subsets and 2 epochs, in a few minutes, so that a
# GPU's time is not spent on this script's bugs. Its data: FLGC_CIFAR10_ROOT (a directory holding
# cifar-10-batches-py/, checksums not verified) when set, else random images written to OUT/data.
# On a GPU the data come from data.root of the configs (./data, downloaded when missing); pass
# another with DATA_ROOT=DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

rehearse=0
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rehearse) rehearse=1 ;;
        --out) out="${2:?--out needs a directory}"; shift ;;
        *) echo "reproduce_gpu.sh: unknown argument '$1'; allowed: --rehearse, --out DIR" >&2; exit 2 ;;
    esac
    shift
done

rows=(mbv2_baseline mbv2_sgc8 mbv2_flgc8 mbv2_flgc8both)
if [ "$rehearse" = 1 ]; then
    out="${out:-runs/reproduce_rehearsal}"
    if [ -n "${FLGC_CIFAR10_ROOT:-}" ]; then
        data="$FLGC_CIFAR10_ROOT"
    else
        data="$out/data"
        python scripts/reproduce_results.py --random-data "$data"
    fi
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
    if [ -n "${DATA_ROOT:-}" ]; then extra+=("data.root=$DATA_ROOT"); fi
fi
if [ -e "$out/results.json" ]; then
    echo "reproduce_gpu.sh: $out already holds results; pick another --out DIR" >&2
    exit 2
fi
mkdir -p "$out"

timed=()
for name in "${rows[@]}"; do
    start=$(date +%s.%N)
    python train.py --config "configs/fast/$name.yaml" "out_dir=$out/$name" "${extra[@]}"
    end=$(date +%s.%N)
    timed+=("$name:$(python -c "print($end - $start)")")
done
python scripts/reproduce_results.py "$out" "${timed[@]}"
