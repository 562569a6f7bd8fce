"""Released checkpoints by name: flgc.create_model(NAME, pretrained=True), the torch.hub entry points
of hubconf.py and `eval.py --checkpoint NAME`.

The names are those of checkpoints/manifest.json in the repository that holds this package (a clone,
or an editable install of one). A file is used only after its size and sha256 match the manifest; a
missing file is downloaded first when its entry gives a url.
"""
import os

from ..engine import checkpoint
from ..engine import config as config_lib
from ..errors import UsageError
from ..models import build_model
from .downloads import download
from .manifest import load_manifest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKPOINTS = os.path.join(REPOSITORY, "checkpoints")
MANIFEST = os.path.join(CHECKPOINTS, "manifest.json")


def released_names(manifest=MANIFEST):
    """The names of the released checkpoints, in manifest order ([] without a manifest)."""
    if not os.path.isfile(manifest):
        return []
    return [entry["name"] for entry in load_manifest(manifest)]


def released_entry(name, manifest=MANIFEST):
    """The manifest entry of `name`; UsageError naming the released ones otherwise."""
    if not os.path.isfile(manifest):
        raise UsageError(f"no released checkpoints here: {manifest} is missing (released checkpoints come with "
                         f"a clone of the repository)")
    entries = {entry["name"]: entry for entry in load_manifest(manifest)}
    if name not in entries:
        raise UsageError(f"{name!r} is not a released checkpoint; released: {', '.join(entries) or 'none'}")
    return entries[name]


def released_path(name, manifest=MANIFEST, show_progress=False):
    """Path of the verified file of release `name` (downloaded first when missing and the entry has a url)."""
    entry = released_entry(name, manifest)
    return download(entry, os.path.dirname(manifest), show_progress=show_progress)[0]


def file_or_release(given, manifest=MANIFEST):
    """What a script's checkpoint (or config) argument names: `given` itself when it is a file or reads as a
    path (a separator, or a .pt / .pth / .yaml / .yml name), else the verified file of the released
    checkpoint of that name; UsageError when it is neither."""
    if os.path.exists(given) or os.sep in given or given.endswith((".pt", ".pth", ".yaml", ".yml")):
        return given
    names = released_names(manifest)
    if given not in names:
        raise UsageError(f"{given}: no such file, and no released checkpoint of that name; "
                         f"released: {', '.join(names) or 'none'}")
    return released_path(given, manifest)


def released_model(name, pretrained=True, manifest=MANIFEST, **kwargs):
    """The network of release `name` on the CPU, in training mode: its released weights (verified) with
    `pretrained`, else the same architecture freshly initialised from the config it was trained with."""
    if kwargs:
        raise UsageError(f"release {name!r} fixes its architecture; it takes no options ({', '.join(kwargs)})")
    if pretrained:
        return checkpoint.load_model(released_path(name, manifest)).model
    entry = released_entry(name, manifest)
    return build_model(config_lib.load(os.path.join(os.path.dirname(os.path.dirname(manifest)), entry["config"])))
