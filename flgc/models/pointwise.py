"""The one place where the kind of a 1x1 convolution is chosen: dense, standard group, or FLGC."""
import torch.nn as nn

from ..method.layer import FLGConv2d

KINDS = ("dense", "group", "flgc")


def pointwise_conv(in_channels, out_channels, kind="dense", groups=8, **flgc_options):
    """A bias-free 1x1 convolution of the given kind; flgc_options go to FLGConv2d."""
    if kind == "dense":
        return nn.Conv2d(in_channels, out_channels, 1, bias=False)
    if kind == "group":
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"standard group conv needs G to divide the channels: "
                             f"G={groups}, in={in_channels}, out={out_channels}")
        return nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=False)
    if kind == "flgc":
        return FLGConv2d(in_channels, out_channels, 1, groups=groups, **flgc_options)
    raise ValueError(f"unknown pointwise kind {kind!r}; allowed: {', '.join(KINDS)}")
