"""Input pipeline speed: our in-memory batched augmentation vs torchvision transforms + DataLoader.

python benchmarks/bench_data.py [KEY=VALUE ...] [--batches 40] [--workers 2] [--json]
KEY=VALUE are data keys (data.root=DIR, data.verify_checksums=false). Both pipelines produce the same
augmentation distribution (random crop 32 with zero padding 4, horizontal flip, normalisation) at
batch 128 from the training split; they are timed in alternating rounds, the medians reported.
Start-up (worker processes, the first batch) is not counted, and the reference's workers are shut
down after each of its rounds so they do not share the cores while ours is timed.
"""
import json
import os
import statistics
import time

import torch

from flgc.engine import config
from flgc.engine.cli import ArgumentParser, run
from flgc.engine.data import Batches, UncheckedCIFAR10, load_split
from flgc.errors import UsageError


def reference_loader(cfg, workers):
    import torchvision.transforms as T
    from torchvision.datasets import CIFAR10
    transform = T.Compose([T.RandomCrop(32, padding=cfg.data.crop_padding), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize(cfg.data.mean, cfg.data.std)])
    dataset_class = CIFAR10 if cfg.data.verify_checksums else UncheckedCIFAR10
    dataset = dataset_class(os.path.expanduser(cfg.data.root), train=True, transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True,
                                       num_workers=workers)


def images_per_second(iterable, batches):
    iterator = iter(iterable)
    next(iterator)  # start-up (workers, first shuffle) is not throughput
    seen, start = 0, time.perf_counter()
    for _ in range(batches):
        images, _ = next(iterator)
        seen += images.shape[0]
    rate = seen / (time.perf_counter() - start)
    del iterator  # DataLoader workers stop here instead of prefetching while the other pipeline runs
    return rate


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference pipeline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.rounds < 1 or args.workers < 0:
        raise UsageError("--rounds must be >= 1 and --workers >= 0")
    overrides = config.parse_overrides(args.overrides)
    if any(not key.startswith("data.") for key, _ in overrides):
        raise UsageError("bench_data.py takes data.* overrides only")
    cfg = config.from_dict({}, overrides)
    torch.set_num_threads(2)
    images, labels = load_split(cfg.data, train=True)
    ours = Batches(images, labels, cfg.data, cfg.train.batch_size, train=True)
    reference = reference_loader(cfg, args.workers)
    if args.batches < 1 or args.batches >= len(ours):
        raise UsageError(f"--batches must be between 1 and {len(ours) - 1}")
    results = {"ours": [], "reference": []}
    for round_ in range(args.rounds):
        ours.set_epoch(round_)
        results["ours"].append(images_per_second(ours, args.batches))
        results["reference"].append(images_per_second(reference, args.batches))
    ours_rate, reference_rate = statistics.median(results["ours"]), statistics.median(results["reference"])
    print(f"ours (in-memory uint8, batched crop):         {ours_rate:10.0f} images/s")
    print(f"reference (torchvision transforms, {args.workers} workers): {reference_rate:10.0f} images/s")
    print(f"ratio: {ours_rate / reference_rate:.1f}x  (batch {cfg.train.batch_size}, {args.batches} batches, "
          f"median of {args.rounds} rounds)")
    if args.json:
        print(json.dumps({"ours_images_per_s": ours_rate, "reference_images_per_s": reference_rate}))


if __name__ == "__main__":
    run(main)
