"""From a Config to the objects it describes (the network, for now)."""
from .errors import UsageError
from .models import create_model, model_names


def build_model(cfg):
    """The network described by a Config (cfg.model and cfg.flgc; see flgc.config), freshly initialised on
    CPU: create_model with the config's keys. Bad structure settings raise UsageError."""
    if cfg.model.name not in model_names():
        raise UsageError(f"unknown model {cfg.model.name!r}; allowed: {', '.join(model_names())}")
    f = cfg.flgc
    try:
        return create_model(cfg.model.name, num_classes=cfg.model.num_classes, pointwise=f.pointwise,
                            groups=f.groups, where=f.where, logit_init_std=f.logit_init_std, init=f.init,
                            gradient=f.gradient)
    except ValueError as err:
        raise UsageError(f"bad model configuration: {err}") from None
