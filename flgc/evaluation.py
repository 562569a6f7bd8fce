"""Top-1 accuracy and mean cross-entropy of a model on a test split: what train.py logs every
evaluated epoch and what eval.py, the results table and releases report."""
import torch

from .data import make_batches
from .step import prepare_model, select_device


@torch.no_grad()
def evaluate(model, batches):
    """{"accuracy": top-1 %, "loss": mean cross-entropy, "images": count} over `batches`."""
    model.eval()
    sums, seen = None, 0
    for images, labels in batches:
        logits = model(images).float()
        batch = torch.stack([torch.nn.functional.cross_entropy(logits, labels, reduction="sum").double(),
                             (logits.argmax(1) == labels).sum().double()])
        sums = batch if sums is None else sums + batch
        seen += labels.numel()
    loss_sum, correct = sums.tolist() if sums is not None else (0.0, 0.0)
    return {"accuracy": 100.0 * correct / max(seen, 1), "loss": loss_sum / max(seen, 1), "images": seen}


def test_metrics(model, cfg):
    """evaluate() of `model` on the test split `cfg` describes, on cfg's device (the model moves there)."""
    device = select_device(cfg)
    return evaluate(prepare_model(model, cfg, device), make_batches(cfg, device, train=False))
