"""The results of scripts/reproduce_gpu.sh: slim each run's checkpoint and write one results JSON.

python scripts/reproduce_results.py OUT NAME:SECONDS [NAME:SECONDS ...]
For every NAME, OUT/NAME/last.pt becomes OUT/NAME.pt holding only model + config + metrics (under
16 MiB); OUT/results.json gets one row per NAME: top-1 accuracy of the final model (%, the last
epoch's evaluation), the best evaluated accuracy, MMac and parameters of its learned structure, and
the minutes its train.py call took.
python scripts/reproduce_results.py --random-data DIR   writes random images in the CIFAR-10 layout
"""
import json
import os

from flgc.engine import checkpoint
from flgc.engine.cli import ArgumentParser, run
from flgc.engine.data import write_random_cifar
from flgc.errors import UsageError
from flgc.method import flops

LIMIT_BYTES = 16 * 2**20


def slim(run_dir, target):
    """Write run_dir/last.pt as model + config + metrics to target; returns (payload, bytes)."""
    payload = checkpoint.load(os.path.join(run_dir, "last.pt"))
    slimmed = {key: payload[key] for key in ("config", "model", "metrics")}
    checkpoint.save(target, slimmed)
    size = os.path.getsize(target)
    if size >= LIMIT_BYTES:
        raise UsageError(f"{target} is {size / 2**20:.1f} MiB, over the 16 MiB limit")
    return slimmed, size


def row(out, name, seconds):
    slimmed, size = slim(os.path.join(out, name), os.path.join(out, f"{name}.pt"))
    model = checkpoint.model_from(slimmed, name)
    mflops, params = flops.count(model)
    metrics = slimmed["metrics"]
    return {"name": name, "accuracy": metrics["test_accuracy"], "best_accuracy": metrics["best_accuracy"],
            "mflops": round(mflops, 2), "params": params, "epochs": metrics["epoch"],
            "minutes": round(seconds / 60, 2), "checkpoint": f"{name}.pt", "checkpoint_mib": round(size / 2**20, 2)}


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("out", help="the directory holding one run directory per NAME (or, with --random-data, the data root)")
    parser.add_argument("rows", nargs="*", metavar="NAME:SECONDS")
    parser.add_argument("--random-data", action="store_true", help="write random CIFAR-10-layout data to OUT")
    args = parser.parse_args()
    if args.random_data:
        write_random_cifar(args.out, per_batch=256, test=256)
        return
    rows = []
    for item in args.rows:
        name, _, seconds = item.partition(":")
        try:
            rows.append(row(args.out, name, float(seconds)))
        except ValueError:
            raise UsageError(f"bad row {item!r}; expected NAME:SECONDS, e.g. mbv2_flgc8:95.2") from None
    results = {"rows": rows, "total_minutes": round(sum(r["minutes"] for r in rows), 2)}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    for r in rows:
        print(f"{r['name']:<16} {r['accuracy']:6.2f}%  {r['mflops']:6.2f} MMac  {r['params']:>9,} params  "
              f"{r['minutes']:5.2f} min  {r['checkpoint_mib']:.1f} MiB")
    print(f"total {results['total_minutes']:.2f} min; {os.path.join(args.out, 'results.json')}")


if __name__ == "__main__":
    run(main)
