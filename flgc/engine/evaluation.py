"""Top-1 accuracy and mean cross-entropy of a model on a test split: what train.py logs every
evaluated epoch and what eval.py, the results table and releases report."""
import math

import torch

from ..errors import UsageError
from . import config as config_lib
from .data import make_batches
from .step import prepare_model, select_device

TTA = ("none", "flip")  # test-time augmentation: the plain image, or the mean of its and its mirror's softmax


@torch.no_grad()
def evaluate(model, batches, tta="none"):
    """{"accuracy": top-1 %, "loss": mean cross-entropy, "images": count} over `batches`. With
    tta="flip" each image's prediction is the mean of the softmax of the image and of its horizontal
    mirror (a different protocol from the plain single-crop figure: report it apart)."""
    model.eval()
    sums, seen = None, 0
    for images, labels in batches:
        scores = model(images).float()  # logits; with flip, log of the mean softmax (same argmax rule)
        if tta == "flip":
            pair = torch.stack([scores, model(images.flip(3)).float()])
            scores = torch.logsumexp(torch.log_softmax(pair, 2), 0) - math.log(2)
        batch = torch.stack([torch.nn.functional.cross_entropy(scores, labels, reduction="sum").double(),
                             (scores.argmax(1) == labels).sum().double()])
        sums = batch if sums is None else sums + batch
        seen += labels.numel()
    loss_sum, correct = sums.tolist() if sums is not None else (0.0, 0.0)
    return {"accuracy": 100.0 * correct / max(seen, 1), "loss": loss_sum / max(seen, 1), "images": seen}


def parse_evaluation_overrides(pairs, program):
    """[(key, value)] of KEY=VALUE `pairs` for evaluating a checkpoint; UsageError (naming `program`)
    for a key that would change what was trained (see flgc.engine.config.EVALUATION_MAY_CHANGE)."""
    overrides = config_lib.parse_overrides(pairs)
    allowed = config_lib.EVALUATION_MAY_CHANGE
    for key, _ in overrides:
        if key not in allowed:
            raise UsageError(f"{program} cannot override {key!r}; allowed: {', '.join(allowed)}")
    return overrides


def test_metrics(model, cfg, tta="none"):
    """evaluate() of `model` on the test split `cfg` describes, on cfg's device (the model moves there)."""
    if tta not in TTA:
        raise UsageError(f"test-time augmentation {tta!r} is not known; allowed: {', '.join(TTA)}")
    device = select_device(cfg)
    return evaluate(prepare_model(model, cfg, device), make_batches(cfg, device, train=False), tta)
