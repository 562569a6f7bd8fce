"""Training step speed under each process runtime setting (allocator, OpenMP runtime, affinity) and
batch size, side by side: every setting runs benchmarks/bench_train.py --only VARIANT in its own
process (LD_PRELOAD cannot change inside one), and the settings take turns in rounds.

python benchmarks/bench_runtime.py [--variant flgc8] [--amp bf16] [--batches 128,256] [--rounds 3]
                                [--repeats 6] [--settings default,tcmalloc,...] [--json]

Reports per setting and batch the median over rounds of each process's median step time, its time
per image and the ratio to the first row (per image). Settings whose library is not installed are
skipped with a note. The settings are scripts/runtime_env.py's (what scripts/train_rows.sh runs with).
"""
import json
import os
import statistics
import subprocess
import sys

from flgc.engine.cli import ArgumentParser, run
from flgc.errors import UsageError

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIME_ENV = os.path.join(os.path.dirname(HERE), "scripts", "runtime_env.py")


def runtime_env(*args):
    """stdout of scripts/runtime_env.py with `args` (the settings live there, beside the row driver)."""
    return subprocess.run([sys.executable, RUNTIME_ENV, *args], capture_output=True, text=True, check=True).stdout


def environment(setting):
    """(extra environment of `setting`, the libraries it lacks here)."""
    found = json.loads(runtime_env("--json", setting))
    return found["environment"], found["missing"]


def time_once(setting_env, args, batch):
    """Median ms per step of one bench_train.py process under setting_env."""
    command = [sys.executable, os.path.join(HERE, "bench_train.py"), "--only", args.variant, "--amp", args.amp,
               "--batch", str(batch), "--repeats", str(args.repeats), "--threads", str(args.threads), "--json"]
    env = {**os.environ, **setting_env}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench_train.py failed under {setting_env}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["results"][0]["ms_per_step"]


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="flgc8")
    parser.add_argument("--amp", default="bf16", choices=["auto", "none", "bf16"])
    parser.add_argument("--batches", default="128")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    settings = runtime_env("--list").split()
    parser.add_argument("--settings", default=",".join(settings))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = args.settings.split(",")
    unknown = [name for name in names if name not in settings]
    if unknown:
        raise UsageError(f"--settings: unknown {', '.join(unknown)}; allowed: {', '.join(settings)}")
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        raise UsageError(f"--batches {args.batches!r}: a comma list of positive integers") from None
    if min(batches) < 1 or args.rounds < 1 or args.repeats < 1:
        raise UsageError("--batches, --rounds and --repeats must be >= 1")
    rows = {}
    for name in names:
        env, missing = environment(name)
        if missing:
            print(f"skipped {name}: {', '.join(missing)} not installed", file=sys.stderr)
            continue
        rows.update({(name, batch): env for batch in batches})
    samples = {key: [] for key in rows}
    for _ in range(args.rounds):
        for key, env in rows.items():
            samples[key].append(time_once(env, args, key[1]))
    report(samples, args)


def report(samples, args):
    first = None
    print(f"{'setting':<24} {'batch':>5} {'ms/step':>9} {'ms/image':>9} {'ratio':>6}   "
          f"({args.variant}, amp {args.amp}, {args.threads} threads; median of {args.rounds} processes, "
          f"each the median of {args.repeats} steps; ratio per image to the first row)")
    results = []
    for (name, batch), values in samples.items():
        step = statistics.median(values)
        per_image = step / batch
        first = first or per_image
        print(f"{name:<24} {batch:>5} {step:>9.1f} {per_image:>9.3f} {per_image / first:>6.3f}   "
              f"[{', '.join(f'{v:.0f}' for v in values)}]")
        results.append({"setting": name, "batch": batch, "ms_per_step": step, "ms_per_image": per_image,
                        "ratio": per_image / first, "samples": values})
    if args.json:
        print(json.dumps({"results": results}))


if __name__ == "__main__":
    run(main)
