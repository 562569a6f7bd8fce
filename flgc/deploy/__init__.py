"""Deployment: a trained network -> an inference network that computes only in-group connections.

convert(model) folds every BatchNorm into the convolution before it and rewrites the grouped convs
(FLGC's learned groups, standard group conv) so that each group's input channels and filters are
contiguous, with the per-layer kernel chosen by timing on the target device:
- MobileNetV2's inverted residual blocks: see flgc.deploy.mobilenet;
- any other network that torch.fx traces: see flgc.deploy.graph;
- anything else: every FLGConv2d becomes a padded grouped conv between channel gathers.

The result has the model's own forward, except where FLGC channel orders were carried across
residual sums (flgc.deploy.orders): then it is an fx.GraphModule of the edited dataflow. convert
records the replaced modules and any dataflow edits as a plain-data spec (model.deploy_spec) so a
checkpoint can rebuild it: rebuild(model, spec).
"""
from .modules import BlockPointwise, ChannelGather, GroupedConv, PermutedAdd, PermutedSum
from .network import STRATEGIES, convert, fold_batchnorm, rebuild

__all__ = ["BlockPointwise", "ChannelGather", "GroupedConv", "PermutedAdd", "PermutedSum", "STRATEGIES", "convert",
           "fold_batchnorm", "rebuild"]
