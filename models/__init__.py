"""Networks, registered by name for flgc.registry."""
from flgc.registry import register

from .mobilenetv2 import MobileNetV2
from .pointwise import pointwise_conv

register("mobilenetv2_cifar", MobileNetV2)

__all__ = ["MobileNetV2", "pointwise_conv"]
