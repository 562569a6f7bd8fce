"""Training step speed (forward + backward + SGD step) of MobileNetV2 variants, side by side.

python scripts/bench_train.py [--threads 2] [--batch 128] [--repeats 10] [--amp none|bf16] [--json]
Random inputs at batch 128, channels_last, CPU; the variants are timed in interleaved rounds and the
medians reported. flgc8-frozen is FLGC8 after flgc.freeze_epoch (assignments fixed, no straight-through
path, masked dense conv); flgc8-frozen-grouped computes each frozen FLGC layer as a grouped conv on
gathered channels instead (flgc.frozen_compute=grouped).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from flgc import bench, config  # noqa: E402
from flgc.cli import ArgumentParser, run  # noqa: E402
from flgc.engine import _autocast, build_optimizer, flgc_layers  # noqa: E402
from flgc.errors import UsageError  # noqa: E402
from flgc.regularizer import group_regularizer  # noqa: E402
from flgc.registry import build_model  # noqa: E402

VARIANTS = {"dense": ["flgc.pointwise=dense"], "sgc8": ["flgc.pointwise=group"], "flgc8": ["flgc.pointwise=flgc"],
            "flgc8-frozen": ["flgc.pointwise=flgc", "flgc.logit_init_std=1"],
            "flgc8-frozen-grouped": ["flgc.pointwise=flgc", "flgc.logit_init_std=1", "flgc.frozen_compute=grouped"]}


def stepper(name, overrides, batch, amp):
    cfg = config.from_dict({}, config.parse_overrides(overrides + [f"train.amp={amp}"]))
    torch.manual_seed(0)
    model = build_model(cfg).to(memory_format=torch.channels_last).train()
    if "frozen" in name:
        for _, layer in flgc_layers(model):
            layer.freeze(grouped=cfg.flgc.frozen_compute == "grouped")
    optimizer = build_optimizer(model, cfg)
    images = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    autocast = _autocast(cfg, images.device)

    def step():
        with autocast:
            loss = F.cross_entropy(model(images), labels)
        loss = loss.float() + cfg.flgc.regularizer.weight * group_regularizer(model, cfg.flgc.regularizer.kind)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--amp", default="none", choices=["none", "bf16"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads < 1 or args.batch < 1 or args.repeats < 1:
        raise UsageError("--threads, --batch and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    steps = {name: stepper(name, overrides, args.batch, args.amp) for name, overrides in VARIANTS.items()}
    medians = bench.interleaved_medians(steps, args.repeats, warmup=2)
    results = [{"variant": name, "ms_per_step": seconds * 1e3} for name, seconds in medians.items()]
    dense = medians["dense"]
    print(f"{'variant':<14} {'ms/step':>9} {'x dense':>8}   (batch {args.batch}, {args.threads} threads, "
          f"channels_last, amp {args.amp}, median of {args.repeats})")
    for name, seconds in medians.items():
        print(f"{name:<14} {seconds * 1e3:>9.1f} {seconds / dense:>8.3f}")
    if args.json:
        print(json.dumps({"results": results}))


if __name__ == "__main__":
    run(main)
