"""Checkpoints of the public FLGC reference implementation, imported into ours.

The reference saves torch.save({state_dict, optimizer_state_dict, lr_scheduler_state_dict,
best_accuracy, last_epoch}) of a torchvision-style MobileNetV2 (the architecture of
flgc/models/mobilenetv2.py, whose block_roles names our layers). Its inverted residuals name their
layers conv.<i>: for t=1 blocks conv.0 = depthwise conv/BN (.0/.1), conv.1 = projection, conv.2 = BN;
for t=6 blocks conv.0 = expand conv/BN, conv.1 = depthwise conv/BN, conv.2 = projection, conv.3 = BN.
An FLGC projection holds in_channels_in_group_assignment_map (in x G),
out_channels_in_group_assignment_map (out x G) and conv.weight; its forward is the one-hot of the
row-wise argmax of softmax(map), mask = filters_onehot x inputs_onehot^T, weight * mask, which is ours.
"""
import re

from ..errors import UsageError
from ..models.mobilenetv2 import block_roles

REFERENCE_KEYS = ("state_dict", "optimizer_state_dict", "lr_scheduler_state_dict", "best_accuracy", "last_epoch")
# the reference's sub-layer -> the role of our InvertedResidual layer, for blocks with (True) and without an expand conv
REFERENCE_ROLES = {True: {"conv.0.0": "expand", "conv.0.1": "expand_bn", "conv.1.0": "depthwise",
                          "conv.1.1": "depthwise_bn", "conv.2": "project", "conv.3": "project_bn"},
                   False: {"conv.0.0": "depthwise", "conv.0.1": "depthwise_bn", "conv.1": "project", "conv.2": "project_bn"}}
PROJECTION = {expands: next(k for k, role in roles.items() if role == "project") for expands, roles in REFERENCE_ROLES.items()}
FLGC_PARTS = {"in_channels_in_group_assignment_map": "input_group_logits",
              "out_channels_in_group_assignment_map": "output_group_logits", "conv.weight": "weight"}


def our_layer(expands, reference_layer):
    """Our name (conv.<position>) of the reference's sub-layer of a block, or None for an unknown one."""
    role = REFERENCE_ROLES[expands].get(reference_layer)
    return None if role is None else f"conv.{block_roles(expands).index(role)}"


def is_reference(payload):
    return isinstance(payload, dict) and "state_dict" in payload and "format_version" not in payload


def _expands(state_dict, block):
    return f"features.{block}.conv.3.weight" in state_dict


def detect_variant(state_dict):
    """('dense' | 'group' | 'flgc', G) from the projection of the first inverted residual."""
    prefix = f"features.1.{PROJECTION[_expands(state_dict, 1)]}"
    if f"{prefix}.in_channels_in_group_assignment_map" in state_dict:
        return "flgc", int(state_dict[f"{prefix}.in_channels_in_group_assignment_map"].shape[1])
    weight = state_dict.get(f"{prefix}.weight")
    if weight is None:
        raise UsageError("not a reference MobileNetV2 state_dict: no projection weight in features.1")
    in_channels = 32  # the stem's width feeds the first block
    groups = in_channels // weight.shape[1]
    return ("group", groups) if groups > 1 else ("dense", 1)


def rename_state_dict(state_dict):
    """The reference's MobileNetV2 state_dict renamed to our module names."""
    renamed = {}
    pattern = re.compile(r"features\.(\d+)\.(conv\.\d+(?:\.\d+)?)\.(.+)$")
    for key, value in state_dict.items():
        match = pattern.match(key)
        if not match or not 1 <= int(match.group(1)) <= 17:
            renamed[key] = value  # stem, head, shortcuts, classifier: same names
            continue
        block, layer, rest = match.groups()
        expands = _expands(state_dict, int(block))
        projection = PROJECTION[expands]
        if layer == projection or layer.startswith(projection + "."):
            part = key[len(f"features.{block}.{projection}."):]
            renamed[f"features.{block}.{our_layer(expands, projection)}.{FLGC_PARTS.get(part, part)}"] = value
            continue
        # "conv.0.0.weight" may match as layer "conv.0.0"; "conv.3.weight" as layer "conv.3"
        if our_layer(expands, layer) is None:
            raise UsageError(f"unexpected reference key {key!r}")
        renamed[f"features.{block}.{our_layer(expands, layer)}.{rest}"] = value
    return renamed


def import_reference_checkpoint(payload):
    """(our config overrides, state_dict, epoch, best_accuracy) from a reference checkpoint dict."""
    state_dict = payload["state_dict"]
    kind, groups = detect_variant(state_dict)
    overrides = {"flgc": {"pointwise": kind, "groups": max(groups, 1), "where": "project"}}
    return overrides, rename_state_dict(state_dict), payload.get("last_epoch"), payload.get("best_accuracy")
