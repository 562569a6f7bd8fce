"""torch.hub entry points: every released checkpoint of checkpoints/manifest.json, by its name, and
every architecture of the model registry.

    import torch
    model = torch.hub.load("PATH/TO/flgc", "mbv2_flgc8_cpu_long", source="local", pretrained=True)

A released name with pretrained=True loads its file from checkpoints/ after checking its sha256 (and
downloads it first when the manifest gives a url); pretrained=False builds the same network with
fresh weights. The model comes on the CPU in training mode, as torch.hub models do: call .eval()
before inference.
"""
from flgc import create_model, model_names, released_names

dependencies = ["torch", "torchvision", "yaml", "ptflops"]


def _entry_point(name):
    def entry_point(pretrained=False, **kwargs):
        return create_model(name, pretrained=pretrained, **kwargs)
    entry_point.__name__ = entry_point.__qualname__ = name
    entry_point.__doc__ = f"flgc.create_model({name!r}, pretrained=pretrained, **kwargs)"
    return entry_point


for _name in [*model_names(), *released_names()]:
    globals()[_name] = _entry_point(_name)
