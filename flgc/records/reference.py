"""Checkpoints of the public FLGC reference implementation, converted to ours.

The reference saves torch.save({state_dict, optimizer_state_dict, lr_scheduler_state_dict,
best_accuracy, last_epoch}) of a torchvision-style MobileNetV2 (the architecture of models/). Its
inverted residuals name their layers conv.<i>: for t=1 blocks conv.0 = depthwise conv/BN (.0/.1),
conv.1 = projection, conv.2 = BN; for t=6 blocks conv.0 = expand conv/BN, conv.1 = depthwise conv/BN,
conv.2 = projection, conv.3 = BN. An FLGC projection holds in_channels_in_group_assignment_map (in x G),
out_channels_in_group_assignment_map (out x G) and conv.weight; its forward is the one-hot of the
row-wise argmax of softmax(map), mask = filters_onehot x inputs_onehot^T, weight * mask, which is ours.
"""
import re

from ..errors import UsageError

REFERENCE_KEYS = ("state_dict", "optimizer_state_dict", "lr_scheduler_state_dict", "best_accuracy", "last_epoch")
# reference sub-layer -> our index in InvertedResidual.conv, by block type
EXPAND_BLOCK = {"conv.0.0": "conv.0", "conv.0.1": "conv.1", "conv.1.0": "conv.3", "conv.1.1": "conv.4",
                "conv.2": "conv.6", "conv.3": "conv.7"}
PLAIN_BLOCK = {"conv.0.0": "conv.0", "conv.0.1": "conv.1", "conv.1": "conv.3", "conv.2": "conv.4"}
PROJECTION = {"expand": "conv.2", "plain": "conv.1"}
FLGC_PARTS = {"in_channels_in_group_assignment_map": "input_group_logits",
              "out_channels_in_group_assignment_map": "output_group_logits", "conv.weight": "weight"}


def is_reference(payload):
    return isinstance(payload, dict) and "state_dict" in payload and "format_version" not in payload


def _block_kind(state_dict, block):
    return "expand" if f"features.{block}.conv.3.weight" in state_dict else "plain"


def detect_variant(state_dict):
    """('dense' | 'group' | 'flgc', G) from the projection of the first inverted residual."""
    prefix = f"features.1.conv.{PROJECTION[_block_kind(state_dict, 1)][-1]}"
    if f"{prefix}.in_channels_in_group_assignment_map" in state_dict:
        return "flgc", int(state_dict[f"{prefix}.in_channels_in_group_assignment_map"].shape[1])
    weight = state_dict.get(f"{prefix}.weight")
    if weight is None:
        raise UsageError("not a reference MobileNetV2 state_dict: no projection weight in features.1")
    in_channels = 32  # the stem's width feeds the first block
    groups = in_channels // weight.shape[1]
    return ("group", groups) if groups > 1 else ("dense", 1)


def convert_state_dict(state_dict):
    """The reference's MobileNetV2 state_dict renamed to our module names."""
    converted = {}
    pattern = re.compile(r"features\.(\d+)\.(conv\.\d+(?:\.\d+)?)\.(.+)$")
    for key, value in state_dict.items():
        match = pattern.match(key)
        if not match or not 1 <= int(match.group(1)) <= 17:
            converted[key] = value  # stem, head, shortcuts, classifier: same names
            continue
        block, layer, rest = match.groups()
        kind = _block_kind(state_dict, int(block))
        names = EXPAND_BLOCK if kind == "expand" else PLAIN_BLOCK
        if layer == PROJECTION[kind] or layer.startswith(PROJECTION[kind] + "."):
            ours = names[PROJECTION[kind]]
            part = key[len(f"features.{block}.{PROJECTION[kind]}."):]
            converted[f"features.{block}.{ours}.{FLGC_PARTS.get(part, part)}"] = value
            continue
        # "conv.0.0.weight" may match as layer "conv.0.0"; "conv.3.weight" as layer "conv.3"
        if layer not in names:
            raise UsageError(f"unexpected reference key {key!r}")
        converted[f"features.{block}.{names[layer]}.{rest}"] = value
    return converted


def convert(payload):
    """(our config overrides, state_dict, epoch, best_accuracy) from a reference checkpoint dict."""
    state_dict = payload["state_dict"]
    kind, groups = detect_variant(state_dict)
    overrides = {"flgc": {"pointwise": kind, "groups": max(groups, 1), "where": "project"}}
    return overrides, convert_state_dict(state_dict), payload.get("last_epoch"), payload.get("best_accuracy")
