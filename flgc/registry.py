"""Models by name, so the run machinery can rebuild a network without importing models/."""
from .errors import UsageError

_MODELS = {}


def register(name, builder):
    _MODELS[name] = builder


def build_model(cfg):
    """The network described by a Config; bad structure settings raise UsageError."""
    if not _MODELS:
        import models  # noqa: F401  registers the repository's networks
    builder = _MODELS.get(cfg.model.name)
    if builder is None:
        raise UsageError(f"unknown model {cfg.model.name!r}; allowed: {', '.join(sorted(_MODELS))}")
    f = cfg.flgc
    try:
        return builder(num_classes=cfg.model.num_classes, pointwise=f.pointwise, groups=f.groups,
                       where=f.where, logit_init_std=f.logit_init_std, gradient=f.gradient)
    except ValueError as err:
        raise UsageError(f"bad model configuration: {err}") from None
