"""Networks by name: each model module registers its builder, `create_model(name, **kwargs)` builds it."""
from .mobilenetv2 import MobileNetV2  # noqa: E402  (registers mobilenetv2_cifar)
from .pointwise import pointwise_conv
from .registry import build_model, create_model, model_names, register_model

__all__ = ["MobileNetV2", "build_model", "create_model", "model_names", "pointwise_conv", "register_model"]
