"""The results of scripts/reproduce_gpu.sh: slim each run's checkpoint and write one results JSON.

python scripts/reproduce_gpu_results.py OUT RUN_DIR [RUN_DIR ...]
For every finished RUN_DIR (a train.py out_dir, e.g. OUT/fast/mbv2_flgc8), OUT/NAME.pt (NAME: the run
directory's name) holds its last.pt slimmed to weights and config (flgc.engine.checkpoint.save_slim);
OUT/results.json gets one row per run: top-1 accuracy of the final model (%, the last epoch's
evaluation), the best evaluated accuracy, MMac and parameters of its learned structure, epochs, and the
minutes and hardware of its epochs (from its metrics.jsonl: a resumed run counts every part).
python scripts/reproduce_gpu_results.py --random-data DIR   writes random images in the CIFAR-10 layout
"""
import json
import os

from flgc.engine import checkpoint
from flgc.engine.cli import ArgumentParser, run
from flgc.engine.data import write_random_cifar
from flgc.errors import UsageError
from flgc.fileio import atomic_path
from flgc.method import flops
from flgc.records.releases import finished_run, provenance_of


def run_name(run_dir):
    return os.path.basename(os.path.normpath(run_dir))


def finished_runs(run_dirs):
    """(name, run_dir, payload, cfg) of every run, all checked before anything is written: each finished,
    no two with one name (their slim files would overwrite each other)."""
    names = [run_name(d) for d in run_dirs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"two run directories named {', '.join(twice)}: OUT/NAME.pt would hold only one; "
                         f"give run directories with different names")
    return [(name, run_dir, *finished_run(run_dir)) for name, run_dir in zip(names, run_dirs)]


def row(out, name, run_dir, payload, cfg):
    size = checkpoint.save_slim(os.path.join(out, f"{name}.pt"), payload)
    mflops, params = flops.count(checkpoint.model_from(payload, run_dir, cfg))
    made = provenance_of(run_dir, cfg.train.epochs)
    last = made.last
    return {"name": name, "accuracy": last["test_accuracy"], "best_accuracy": last["best_accuracy"],
            "mflops": round(mflops, 2), "params": params, "epochs": cfg.train.epochs, "minutes": round(made.minutes, 2),
            "hardware": made.hardware, "checkpoint": f"{name}.pt", "checkpoint_mb": round(size / 1e6, 2)}


def main(argv=None):
    parser = ArgumentParser(prog="reproduce_gpu_results.py", description=__doc__)
    parser.add_argument("out", help="where the slim checkpoints and results.json go (with --random-data: the data root)")
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR")
    parser.add_argument("--random-data", action="store_true", help="write random CIFAR-10-layout data to OUT")
    args = parser.parse_args(argv)
    if args.random_data:
        write_random_cifar(args.out, per_batch=256, test=256)
        return
    if not args.run_dirs:
        raise UsageError("give the run directories to summarise, e.g. OUT/fast/mbv2_flgc8")
    rows = [row(args.out, *run) for run in finished_runs(args.run_dirs)]
    results = {"rows": rows, "total_minutes": round(sum(r["minutes"] for r in rows), 2)}
    with atomic_path(os.path.join(args.out, "results.json")) as temp, open(temp, "w") as f:
        json.dump(results, f, indent=1)
    for r in rows:
        print(f"{r['name']:<16} {r['accuracy']:6.2f}%  {r['mflops']:6.2f} MMac  {r['params']:>9,} params  "
              f"{r['minutes']:5.2f} min  {r['checkpoint_mb']:.1f} MB")
    print(f"total {results['total_minutes']:.2f} min; {os.path.join(args.out, 'results.json')}")


if __name__ == "__main__":
    run(main)
