"""Model builders by name (as timm's registry): a model module registers itself on import."""
_MODELS = {}


def register_model(name):
    """Decorator: make `builder` available as create_model(name, ...)."""
    def decorate(builder):
        _MODELS[name] = builder
        return builder
    return decorate


def model_names():
    return sorted(_MODELS)


def create_model(name, **kwargs):
    """The network registered as `name`, built with kwargs; KeyError names the allowed ones."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; allowed: {', '.join(model_names())}")
    return _MODELS[name](**kwargs)
