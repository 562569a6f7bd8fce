"""Count MMac (ptflops convention) and parameters of a config or a checkpoint.

python count_flops.py (--config FILE | --checkpoint PATH) [--per-layer] [--json]
"""
import dataclasses
import json

import torch

from flgc import checkpoint, config, flops
from flgc.builders import build_model
from flgc.cli import ArgumentParser, run


def main():
    parser = ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML config; FLGC structures are the seeded initial ones")
    source.add_argument("--checkpoint", help="a checkpoint: FLGC layers count their learned structure")
    parser.add_argument("--per-layer", action="store_true", help="one line per counted layer")
    parser.add_argument("--json", action="store_true", help="last line of stdout is one JSON object")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (with --config)")
    args = parser.parse_args()
    overrides = config.parse_overrides(args.overrides)
    if args.config:
        cfg = config.load(args.config, overrides)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg)
    else:
        payload = checkpoint.load(args.checkpoint)
        cfg = checkpoint.config_of(payload, overrides)
        model = checkpoint.model_from(payload, args.checkpoint, cfg)
    if args.per_layer:
        print(f"{'layer':<28} {'kind':<10} {'in':>5} {'out':>5} {'G':>4} {'MMac':>8}  group sizes")
        for name, module, macs in flops.module_macs(model):
            kind, cin, cout, groups, sizes = flops.describe(module)
            print(f"{name:<28} {kind:<10} {cin!s:>5} {cout!s:>5} {groups!s:>4} {macs / 1e6:>8.3f}  {sizes}")
    mflops, params = flops.count(model)
    dense = dataclasses.replace(cfg, flgc=dataclasses.replace(cfg.flgc, pointwise="dense"))
    baseline_mflops, _ = flops.count(build_model(dense))
    print(f"{mflops:.2f} MMac, {params:,} parameters; dense baseline {baseline_mflops:.2f} MMac "
          f"(x{baseline_mflops / mflops:.2f})")
    if args.json:
        print(json.dumps({"mflops": mflops, "params": params, "baseline_mflops": baseline_mflops,
                          "ratio": baseline_mflops / mflops}))


if __name__ == "__main__":
    run(main)
