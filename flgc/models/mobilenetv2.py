"""MobileNetV2 for CIFAR-10, as used by the FLGC reference results table.

torchvision-style, with a stride-1 stem and 1x1 conv shortcuts where a stride-1 block changes width.
The 1x1 convs named by `where` (project | expand | both) come from flgc.models.pointwise.
"""
from functools import partial

import torch.nn as nn

from ..method.layer import FLGConv2d
from .pointwise import pointwise_conv
from .registry import register_model

# (expansion t, output channels c, repeats n, first stride s)
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn(in_channels, out_channels, kernel_size=1, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                        groups=groups, bias=False), nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


def block_roles(expands):
    """The roles of InvertedResidual.conv's layers in order (None: a ReLU6): the one statement of the block's
    layout. Its state_dict names each layer conv.<position>; expands: the block has an expand conv (t > 1)."""
    return (("expand", "expand_bn", None) if expands else ()) + (
        "depthwise", "depthwise_bn", None, "project", "project_bn")


class InvertedResidual(nn.Module):
    def __init__(self, in_channels, out_channels, stride, expansion, expand_conv, project_conv):
        super().__init__()
        hidden = in_channels * expansion
        make = {"expand": lambda: expand_conv(in_channels, hidden), "expand_bn": lambda: nn.BatchNorm2d(hidden),
                "depthwise": lambda: nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                "depthwise_bn": lambda: nn.BatchNorm2d(hidden), "project": lambda: project_conv(hidden, out_channels),
                "project_bn": lambda: nn.BatchNorm2d(out_channels), None: lambda: nn.ReLU6(inplace=True)}
        self.expands = expansion != 1
        roles = block_roles(self.expands)
        self.conv = nn.Sequential(*(make[role]() for role in roles))  # built in this order: the same random init
        self._part_index = {name: index for index, name in enumerate(roles) if name}
        self.residual = stride == 1
        self.shortcut = (conv_bn(in_channels, out_channels, act=False)
                         if self.residual and in_channels != out_channels else nn.Identity())

    def parts(self):
        """The block's layers by role: expand, expand_bn (None when expansion is 1), depthwise,
        depthwise_bn, project, project_bn (the state_dict keeps its positional conv.N names)."""
        parts = {"expand": None, "expand_bn": None}
        parts.update({name: self.conv[index] for name, index in self._part_index.items()})
        return parts

    def forward(self, x):
        out = self.conv(x)
        return out + self.shortcut(x) if self.residual else out


@register_model("mobilenetv2_cifar")
class MobileNetV2(nn.Module):
    def __init__(self, num_classes=10, pointwise="dense", groups=8, where="project", **flgc_options):
        super().__init__()
        if where not in ("project", "expand", "both"):
            raise ValueError(f"unknown where {where!r}; allowed: project, expand, both")
        special = partial(pointwise_conv, kind=pointwise, groups=groups, **flgc_options)
        dense = partial(pointwise_conv, kind="dense")
        expand_conv = special if where in ("expand", "both") else dense
        project_conv = special if where in ("project", "both") else dense
        layers = [conv_bn(3, 32, 3)]
        in_channels = 32
        for expansion, out_channels, repeats, stride in SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(in_channels, out_channels, stride if i == 0 else 1,
                                               expansion, expand_conv, project_conv))
                in_channels = out_channels
        layers.append(conv_bn(in_channels, 1280))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, num_classes)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, FLGConv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        # global mean pool as a tensor op: the reference table's MMac do not count it
        return self.classifier(self.features(x).mean((2, 3)))
