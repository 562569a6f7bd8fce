"""Count MMac (ptflops convention) and parameters of a config or a checkpoint, or compare several.

python count_flops.py (--config FILE | --checkpoint PATH|NAME) [--per-layer] [--json] [KEY=VALUE ...]
python count_flops.py --compare [CONFIG, CHECKPOINT or NAME ...] [--json]

--compare with no arguments compares the released checkpoints (by name) and every config with the
dense baseline; NAME is a released checkpoint of checkpoints/manifest.json.
KEY=VALUE overrides apply to --config only: a checkpoint is counted as it was trained.
"""
import glob
import json
import os

import torch

from flgc.engine import checkpoint, config
from flgc.engine.cli import ArgumentParser, human_stream, run
from flgc.errors import UsageError
from flgc.method import flops
from flgc.models import build_model
from flgc.records import pretrained
from flgc.records.results import dense_baseline_mflops

ROOT = os.path.dirname(os.path.abspath(__file__))
CONFIG_SUFFIXES = (".yaml", ".yml")


def default_sources():
    """{shown name: path}: every released checkpoint (checkpoints/manifest.json, by name), then every
    config of configs/ and its recipe folders (cpu, cpu-long, fast, ...)."""
    sources = {name: pretrained.released_path(name) for name in pretrained.released_names()}
    found = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
    found += sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml")))
    return {**sources, **{os.path.relpath(path, ROOT): path for path in found}}


def load_source(path, is_config, overrides=()):
    """(model, config) of a YAML config (FLGC structures: the seeded initial ones) or of a checkpoint."""
    if is_config:
        cfg = config.load(path, overrides)
        torch.manual_seed(cfg.seed)
        return build_model(cfg), cfg
    if overrides:
        raise UsageError(f"KEY=VALUE overrides apply only with --config; a checkpoint is counted as it was "
                         f"trained (got {', '.join(f'{k}={v}' for k, v in overrides)})")
    model, cfg, _ = checkpoint.load_model(path)
    return model, cfg


def measure(model, cfg, baselines=None):
    """MMac, params and the ratio to the dense baseline; `baselines` caches the baseline per network."""
    mflops, params = flops.count(model)
    key = (cfg.model.name, cfg.model.num_classes)
    baselines = {} if baselines is None else baselines
    baseline = baselines[key] = baselines.get(key) or dense_baseline_mflops(cfg)
    return {"mflops": mflops, "params": params, "baseline_mflops": baseline, "ratio": baseline / mflops}


def compare(paths, as_json):
    """One row per config or checkpoint: MMac, params, ratio to the dense baseline."""
    rows, baselines = [], {}
    for shown, path in ({p: pretrained.file_or_release(p) for p in paths} or default_sources()).items():
        is_config = path.endswith(CONFIG_SUFFIXES)
        try:
            rows.append({"config" if is_config else "name": shown, **measure(*load_source(path, is_config), baselines)})
        except UsageError as err:
            raise UsageError(f"{path}: {err}") from None
    out = human_stream(as_json)
    width = max(len(r.get("config", r.get("name"))) for r in rows)
    print(f"{'model':<{width}} {'MMac':>8} {'params':>11} {'x dense':>8}", file=out)
    for r in rows:
        print(f"{r.get('config', r.get('name')):<{width}} {r['mflops']:>8.2f} {r['params']:>11,} {r['ratio']:>8.2f}", file=out)
    if as_json:
        print(json.dumps({"rows": rows}))


def per_layer(model, out):
    print(f"{'layer':<28} {'kind':<10} {'in':>5} {'out':>5} {'G':>4} {'MMac':>8}  group sizes", file=out)
    for name, module, macs in flops.module_macs(model):
        kind, cin, cout, groups, sizes = flops.describe(module)
        print(f"{name:<28} {kind:<10} {cin!s:>5} {cout!s:>5} {groups!s:>4} {macs / 1e6:>8.3f}  {sizes}", file=out)


def parse_args(argv):
    parser = ArgumentParser(prog="count_flops.py", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML config; FLGC structures are the seeded initial ones")
    source.add_argument("--checkpoint", help="a checkpoint file or a released checkpoint's name: FLGC layers "
                        "count their learned structure")
    source.add_argument("--compare", nargs="*", metavar="CONFIG_OR_CHECKPOINT",
                        help="one table of several models (default: the released checkpoints, then every config)")
    parser.add_argument("--per-layer", action="store_true", help="one line per counted layer")
    parser.add_argument("--json", action="store_true", help="stdout is only one JSON object; tables go to stderr")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (with --config)")
    args = parser.parse_args(argv)
    if args.compare is not None and (args.per_layer or args.overrides or any("=" in a for a in args.compare)):
        parser.error("--compare takes neither --per-layer nor KEY=VALUE overrides")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.compare is not None:
        return compare(args.compare, args.json)
    path = args.config or pretrained.file_or_release(args.checkpoint)
    model, cfg = load_source(path, bool(args.config), config.parse_overrides(args.overrides))
    out = human_stream(args.json)
    if args.per_layer:
        per_layer(model, out)
    result = measure(model, cfg)
    print(f"{result['mflops']:.2f} MMac, {result['params']:,} parameters; dense baseline "
          f"{result['baseline_mflops']:.2f} MMac (x{result['ratio']:.2f})", file=out)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    run(main)
