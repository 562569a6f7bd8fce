"""Fully Learnable Group Convolution for PyTorch.

`flgc.convert_model(model, groups=8)` turns the 1x1 convs of any network into FLGC layers;
`flgc.deploy.convert(model)` gives its inference form.
`from flgc import FLGConv2d` needs nothing else of this repository; the run machinery
(flgc.config, flgc.data, flgc.engine, flgc.checkpoint, flgc.flops) is imported on demand.
"""
from .convert import convert_model
from .layer import FLGConv2d, hard_assignment
from .regularizer import group_regularizer

__version__ = "0.2.0"

__all__ = ["FLGConv2d", "__version__", "convert_model", "group_regularizer", "hard_assignment"]
