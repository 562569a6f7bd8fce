"""Model builders by name (as timm's registry): a model module registers itself on import;
build_model(cfg) builds the one a config names."""
from ..errors import UsageError

_MODELS = {}


def register_model(name):
    """Decorator: make `builder` available as create_model(name, ...)."""
    def decorate(builder):
        _MODELS[name] = builder
        return builder
    return decorate


def model_names():
    """The registered model names, sorted (e.g. ["mobilenetv2_cifar"])."""
    return sorted(_MODELS)


def create_model(name, **kwargs):
    """The network registered as `name`, built with kwargs; KeyError names the allowed ones.

    mobilenetv2_cifar(num_classes=10, pointwise="dense" | "group" | "flgc", groups=8,
    where="project" | "expand" | "both", **FLGConv2d options) maps images N x 3 x 32 x 32 (normalised
    floats) to logits N x num_classes; `pointwise` and `groups` set the kind of the chosen 1x1 convs.
    """
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; allowed: {', '.join(model_names())}")
    return _MODELS[name](**kwargs)


def build_model(cfg):
    """The network described by a Config (cfg.model and cfg.flgc; see flgc.engine.config), freshly
    initialised on CPU: create_model with the config's keys. Bad structure settings raise UsageError."""
    if cfg.model.name not in model_names():
        raise UsageError(f"unknown model {cfg.model.name!r}; allowed: {', '.join(model_names())}")
    f = cfg.flgc
    try:
        return create_model(cfg.model.name, num_classes=cfg.model.num_classes, pointwise=f.pointwise,
                            groups=f.groups, where=f.where, logit_init_std=f.logit_init_std, init=f.init,
                            gradient=f.gradient, weight_gradient=f.weight_gradient)
    except ValueError as err:
        raise UsageError(f"bad model configuration: {err}") from None
