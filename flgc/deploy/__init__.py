"""Deployment: a trained network -> an inference network that computes only in-group connections.

An optional layer on top of the training core (pip install -e ".[deploy]" adds ninja for the compiled
kernels, onnx and onnxruntime for export): the core imports it only by name, when it loads a
deployed checkpoint. Importing it registers with the core what the core needs to know of deployed
networks: their MAC counts (flgc.method.flops.register_flop_hook) and the rebuilding of deployed
checkpoints (flgc.engine.checkpoint.register_rebuilder, which flgc.engine.checkpoint triggers by
importing flgc.deploy).

deploy_model(model) folds every BatchNorm into the convolution before it and rewrites the grouped convs
(FLGC's learned groups, standard group conv) so that each group's input channels and filters are
contiguous, with the per-layer kernel chosen by timing on the target device:
- MobileNetV2's inverted residual blocks: see flgc.deploy.mobilenet;
- any other network that torch.fx traces: see flgc.deploy.graph;
- anything else: every FLGConv2d becomes a padded grouped conv between channel gathers.

The result has the model's own forward, except where FLGC channel orders were carried across
residual sums (flgc.deploy.orders): then it is an fx.GraphModule of the edited dataflow. deploy_model
records the replaced modules and any dataflow edits as a plain-data spec (model.deploy_spec) so a
checkpoint can rebuild it: rebuild(model, spec). flgc.deploy.native holds the compiled CPU kernels,
flgc.deploy.export the ONNX and TorchScript export.
"""
from ..engine.checkpoint import register_rebuilder
from ..method.flops import register_flop_hook
from .counting import block_pointwise_hook, grouped_conv_hook
from .modules import BlockPointwise, ChannelGather, GroupedConv, PermutedAdd, PermutedSum
from .network import STRATEGIES, deploy_model, fold_batchnorm, rebuild

register_flop_hook(BlockPointwise, block_pointwise_hook)
register_flop_hook(GroupedConv, grouped_conv_hook)
register_rebuilder("deploy_spec", rebuild)

__all__ = ["BlockPointwise", "ChannelGather", "GroupedConv", "PermutedAdd", "PermutedSum", "STRATEGIES", "deploy_model",
           "fold_batchnorm", "rebuild"]
