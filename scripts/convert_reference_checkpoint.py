"""Import a checkpoint of the public FLGC reference implementation into ours.

python scripts/convert_reference_checkpoint.py SRC DST
The variant (baseline, standard group conv, FLGC) and G are detected from the state_dict; the result
evaluates with `python eval.py --checkpoint DST`.
"""
import os

from flgc.engine import checkpoint, config
from flgc.engine.cli import ArgumentParser, run
from flgc.errors import UsageError
from flgc.fileio import check_output
from flgc.records.reference_checkpoints import REFERENCE_KEYS, import_reference_checkpoint, is_reference


def main(argv=None):
    parser = ArgumentParser(prog="convert_reference_checkpoint.py", description=__doc__)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    args = parser.parse_args(argv)
    check_output(args.dst, args.force, "DST")
    payload = checkpoint.read(args.src)
    if not is_reference(payload):
        raise UsageError(f"{args.src} is not a reference checkpoint (expected keys {', '.join(REFERENCE_KEYS)})")
    overrides, state_dict, epoch, best = import_reference_checkpoint(payload)
    cfg = config.from_dict(overrides)
    model = checkpoint.model_from({"config": config.to_dict(cfg), "model": state_dict}, args.src, cfg)
    best = float(best) if best is not None else None
    checkpoint.save(args.dst, {"config": config.to_dict(cfg), "model": model.state_dict(),
                               "epoch": epoch, "best_accuracy": best, "source": os.path.basename(args.src)})
    f = cfg.flgc
    print(f"converted {args.src} ({f.pointwise}, G={f.groups}, epoch {epoch}, best accuracy {best}) -> {args.dst}")


if __name__ == "__main__":
    run(main)
