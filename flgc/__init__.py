"""Fully Learnable Group Convolution (Wang et al., CVPR 2019) for PyTorch.

The public API (shapes are those of torch.nn.Conv2d: input N x C_in x H x W, output N x C_out x H' x W'):

- ``FLGConv2d(in_channels, out_channels, kernel_size, groups=8, ...)``: a convolution whose input
  channels and filters are each assigned to one of ``groups`` groups by learnable logits
  (``input_group_logits``: C_in x G, ``output_group_logits``: C_out x G); a filter sees only the input
  channels of its group. ``layer.macs(H', W')`` is the multiply-accumulate count of one image under the
  learned hard structure; ``layer.freeze()`` fixes the assignment.
- ``hard_assignment(logits, temperature, gradient)``: the one-hot (rows x G) assignment with its gradient.
- ``group_regularizer(model, kind, target_fraction=None)``: a scalar tensor to add
  to the loss (kind "balance", "budget" or "none"), computed on the hard group sizes with a
  straight-through gradient: ``hard_group_sizes(layer)`` gives the channel and filter counts per group
  (two float tensors of length G); ``balance_penalty`` / ``budget_penalty`` are the per-layer terms;
  ``structure_stats(model)`` counts empty groups and dead filters. The whole-model MMac target lives in
  ``flgc.method.budget``: ``regularizer_penalty(model, kind, target_mflops)`` and
  ``project_to_budget(model, target_mflops)``, which moves channels and filters until the learned
  structure costs at most ``target_mflops`` MMac.
- ``convert_model(model, groups=8, select=None)``: turns the chosen nn.Conv2d layers of any network
  (default: every 1x1 conv whose channels G divides) into FLGConv2d in place, keeping weights and geometry.
- ``create_model(name, pretrained=False, **kwargs)``: a registered architecture (``model_names()``;
  ``mobilenetv2_cifar``: input N x 3 x 32 x 32, output N x num_classes logits) or a released checkpoint
  (``released_names()``, e.g. ``mbv2_flgc8_cpu_long``; ``pretrained=True`` loads its sha256-checked weights);
  ``build_model(cfg)``: the network a flgc.engine.config.Config describes.
- ``load_model(path, overrides=())``: a checkpoint written by train.py (or scripts/deploy.py) as
  ``Loaded(model, config, payload)``, the model on CPU.
- ``flgc.deploy.deploy_model(model, batch_size=1, input_size=(3, 32, 32))``: the inference form of a trained
  network, computing only in-group connections (BatchNorm folded; a copy in eval mode); each layer's kernel
  is chosen by timing at that batch size and input shape, so pass the shape the model will serve.

``import flgc`` loads only the method's layer, regularizer and conversion and the model registry; the run
engine (flgc.engine: config, data, training, evaluation, checkpoints), the MMac counting (flgc.method.flops),
the records (flgc.records) and flgc.deploy load when first used.
"""
import importlib

from .method.convert import convert_model
from .method.layer import FLGConv2d, hard_assignment
from .method.regularizer import balance_penalty, budget_penalty, group_regularizer, hard_group_sizes, structure_stats
from .models import build_model, model_names, register_model
from .models import create_model as create_architecture

__version__ = "0.2.0"

# name -> module that defines it, imported on first access (these pull in yaml, or the deploy package)
_LAZY = {"load_model": "flgc.engine.checkpoint", "Loaded": "flgc.engine.checkpoint",
         "released_names": "flgc.records.pretrained",
         "project_to_budget": "flgc.method.budget",
         "deploy": None}

__all__ = ["FLGConv2d", "Loaded", "__version__", "balance_penalty", "budget_penalty", "build_model", "convert_model",
           "create_model", "deploy", "group_regularizer", "hard_assignment", "hard_group_sizes", "load_model",
           "model_names", "project_to_budget", "register_model", "released_names", "structure_stats"]


def create_model(name, pretrained=False, **kwargs):
    """A network by name: a registered architecture (model_names(), e.g. "mobilenetv2_cifar", built
    with kwargs, fresh weights) or a released checkpoint (released_names(), e.g. "mbv2_flgc8_cpu_long":
    with pretrained=True its released weights after a sha256 check, else its architecture with fresh
    weights). The model is on the CPU in training mode; call .eval() before inference."""
    if name in model_names():
        if pretrained:
            raise ValueError(f"{name!r} is an architecture without weights of its own; pretrained weights "
                             f"are released by name: {', '.join(__getattr__('released_names')())}")
        return create_architecture(name, **kwargs)
    from .records.pretrained import released_model, released_names
    if name not in released_names():
        raise KeyError(f"unknown model {name!r}; architectures: {', '.join(model_names())}; "
                       f"released checkpoints: {', '.join(released_names()) or 'none'}")
    return released_model(name, pretrained, **kwargs)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'flgc' has no attribute {name!r}")
    if _LAZY[name] is None:
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(_LAZY[name]), name)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
