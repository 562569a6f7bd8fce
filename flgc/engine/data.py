"""CIFAR-10 held in memory as one uint8 tensor, augmented with batched tensor ops.

torchvision downloads, verifies (official md5 sums) and parses the files; augmentation is the
reference recipe (random 32x32 crop of the zero-padded image, horizontal flip), done for a whole
batch with a few tensor ops instead of per-image PIL transforms.
"""
import os
import pickle
import sys

import torch
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity

from ..errors import UsageError

FOLDER = "cifar-10-batches-py"
CLASSES = 10
RANDOM_MARK = "RANDOM_IMAGES"  # in FOLDER: written by write_random_cifar, safe to write over
SOURCE = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


class UncheckedCIFAR10(CIFAR10):
    """torchvision's parser, accepting files whose md5 differs from the official archive's."""

    def _check_integrity(self):
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, name))
                   for name, _ in self.train_list + self.test_list)

    def _load_meta(self):
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def write_random_cifar(root, per_batch=16, test=40, seed=0):
    """Random images with random labels in the CIFAR-10 python layout (5 training batches of
    `per_batch` images, a test batch of `test`, meta) under root/cifar-10-batches-py/: data for
    rehearsing and testing the pipeline, nothing to learn from. Returns root."""
    import numpy as np
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, FOLDER)
    if os.path.isdir(folder) and os.listdir(folder) and not os.path.isfile(os.path.join(folder, RANDOM_MARK)):
        raise UsageError(f"{folder} already holds files that are not random data written here (CIFAR-10?); "
                         f"give another directory")
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, RANDOM_MARK), "w").close()

    def write(name, entry):
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f)

    for name, count in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        write(name, {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                     "labels": rng.integers(0, 10, count).tolist()})
    labels = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write(CIFAR10.meta["filename"], {"label_names": labels, "num_cases_per_batch": per_batch, "num_vis": 3072})
    return root


def files_present(root):
    """Whether ROOT/cifar-10-batches-py holds every file of the python version of CIFAR-10."""
    names = [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    return all(os.path.isfile(os.path.join(root, FOLDER, n)) for n in names)


def official_files(root):
    """Whether ROOT/cifar-10-batches-py holds the official files (their md5 sums, as torchvision checks them)."""
    folder = os.path.join(os.path.expanduser(root), FOLDER)
    return all(check_integrity(os.path.join(folder, name), md5) for name, md5 in CIFAR10.train_list + CIFAR10.test_list)


def _first_unreadable(where, train):
    """(file name, error) of the first batch file of a split that does not unpickle, or None."""
    names = [n for n, _ in (CIFAR10.train_list if train else CIFAR10.test_list)] + [CIFAR10.meta["filename"]]
    for name in names:
        try:
            with open(os.path.join(where, name), "rb") as f:
                pickle.load(f, encoding="latin1")
        except Exception as err:
            return name, err
    return None


def load_split(data_cfg, train, validation=False):
    """(images uint8 N x 32 x 32 x 3, labels int64 N) of one split, honouring the data.* keys. With
    data.validation_images = V, the training split loses its last V images and `validation` gives them."""
    held = data_cfg.validation_images or 0
    if validation and not held:
        raise UsageError("no validation split: set data.validation_images=N (the last N training images)")
    images, labels = _read_split(data_cfg, train or validation)
    if held and (train or validation):
        if held >= len(labels):
            raise UsageError(f"data.validation_images={held} leaves no training image (the split has {len(labels)}); "
                             f"give fewer than {len(labels)}")
        if validation:
            return images[-held:], labels[-held:]
        if train:
            images, labels = images[:-held], labels[:-held]
    subset = data_cfg.train_subset if train else data_cfg.test_subset
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    if not (train or validation) and data_cfg.test_jpeg_quality is not None:
        images = jpeg_roundtrip(images, data_cfg.test_jpeg_quality)
    return images, labels


def jpeg_roundtrip(images, quality):
    """uint8 N x H x W x 3 images, each JPEG-encoded at `quality` (PIL, 4:2:0 chroma) and decoded again."""
    import io

    import numpy as np
    from PIL import Image
    out = np.empty_like(images.numpy())
    for i, image in enumerate(images.numpy()):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return torch.from_numpy(out)


def _read_split(data_cfg, train):
    """All images and labels of the training or test split, downloaded or checked as data.* asks."""
    root = os.path.expanduser(data_cfg.root)
    where = os.path.join(root, FOLDER)
    if not files_present(root):
        if not data_cfg.download:
            raise UsageError(f"CIFAR-10 not found: expected the python-version files in {where}/ "
                             f"(from {SOURCE}); set data.download=true or data.root=DIR")
        try:
            CIFAR10(root, train=train, download=True)
        except Exception as err:  # no network, disk full, bad archive: all the user's to fix
            raise UsageError(f"CIFAR-10 not found in {where}/ and the download failed "
                             f"({type(err).__name__}: {err}); put the python-version files from "
                             f"{SOURCE} there or set data.root=DIR") from None
    if data_cfg.verify_checksums:
        try:
            dataset = CIFAR10(root, train=train, download=False)
        except RuntimeError:
            raise UsageError(f"the files in {where}/ do not match the official CIFAR-10 md5 sums; "
                             f"for a re-encoded copy set data.verify_checksums=false") from None
    else:
        if not getattr(load_split, "_warned", False):
            print(f"warning: CIFAR-10 checksums not verified ({where}); results are for this copy",
                  file=sys.stderr)
            load_split._warned = True
        try:
            dataset = UncheckedCIFAR10(root, train=train, download=False)
        except Exception as err:
            bad = _first_unreadable(where, train)
            what, err = (f"file {os.path.join(where, bad[0])}", bad[1]) if bad else (f"files in {where}/", err)
            raise UsageError(f"cannot parse CIFAR-10 {what} ({type(err).__name__}: {err}); it may be truncated "
                             f"or damaged: replace it, or delete it and set data.download=true") from None
    return torch.from_numpy(dataset.data), torch.tensor(dataset.targets, dtype=torch.int64)


def augment_params(count, generator, padding=4, flip=True):
    """Random crop offsets (top, left: count x 1) and flip flags (count), drawn on the generator's
    device."""
    device = generator.device
    top = torch.randint(0, 2 * padding + 1, (count, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (count, 1), generator=generator, device=device)
    if not flip:
        return top, left, torch.zeros(count, dtype=torch.bool, device=device)
    return top, left, torch.rand(count, generator=generator, device=device) < 0.5


def crop(images, top, left, padding=4):
    """Crops of a uint8 batch N x C x H x W from its zero-padded copy: image i from row top[i], column
    left[i] (count x 1 offsets into the padded image), one indexed copy of the windows view."""
    n, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    windows = padded.unfold(2, height, 1).unfold(3, width, 1)  # N x C x offsets x offsets x H x W
    return windows[torch.arange(n, device=images.device), :, top[:, 0], left[:, 0]]


def _row_view(images):
    """One row per image: N x (bytes per image) view of a contiguous uint8 tensor, as int64 words
    where the size allows, so indexing whole images copies 8 bytes per element instead of 1."""
    rows = images.reshape(len(images), -1)
    return rows.view(torch.int64) if rows.shape[1] % 8 == 0 else rows


class Batches:
    """Iterable of normalised (images, labels) batches from an in-memory split.

    Images come out N x 3 x 32 x 32 float32 in channels_last memory layout (or contiguous NCHW).
    The order and augmentation of a whole epoch are drawn at once, on the data's device, from a
    generator seeded by (seed, epoch), for the global batch: they depend neither on interruptions
    (set_epoch(e, start_step) starts at that step) nor on how many processes share the batch
    (shard = (rank, world): each takes every world-th image of the global batch). Nothing in an
    epoch waits for the host. Training batches all have one shape: the last partial batch of an
    epoch is dropped (its images are others in the next epoch's order); evaluation keeps every image.

    The split is kept as one uint8 tensor N x V x C x H x W: V = 2 for training with flips (each
    image and its mirror image, so a flip costs nothing: it picks the other copy, and the crop
    offset is mirrored), else 1. A batch is one row gather, one windowed crop and one fused
    normalisation into the output layout.
    """

    def __init__(self, images, labels, data_cfg, batch_size, train, seed=0, device="cpu",
                 channels_last=True, shard=(0, 1)):
        if train and batch_size > len(labels):
            raise UsageError(f"train.batch_size={batch_size} exceeds the {len(labels)} training images; "
                             f"use a smaller batch or more data (data.train_subset)")
        planar = images.permute(0, 3, 1, 2)  # torchvision's N x H x W x C is a view of planar data
        self.copies = 2 if train and data_cfg.flip else 1
        store = torch.stack([planar, planar.flip(-1)], 1) if self.copies == 2 else planar[:, None]
        self.shape = tuple(planar.shape[1:])
        self.rows = _row_view(store.reshape(-1, *self.shape).contiguous().to(device))
        self.labels = labels.to(device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.padding, self.flip = data_cfg.crop_padding, data_cfg.flip
        std = torch.tensor(data_cfg.std, device=device) * 255
        self.scale = (1 / std).view(1, -1, 1, 1)
        self.shift = (-torch.tensor(data_cfg.mean, device=device) * 255 / std).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.rank, self.world = shard
        self.epoch, self.start_step = 0, 0
        self._drawn = (None, None)  # (epoch, its draws): drawn once an epoch, however often iterated

    def set_epoch(self, epoch, start_step=0):
        self.epoch, self.start_step = epoch, start_step

    def __len__(self):
        if self.train:
            return len(self.labels) // self.batch_size
        return -(-len(self.labels) // self.batch_size)

    def draws(self):
        """(order, augmentation params or None) of the current epoch, on the data's device."""
        if self._drawn[0] == self.epoch:
            return self._drawn[1]
        device = self.rows.device
        count = len(self.labels)
        if not self.train:
            return torch.arange(count, device=device), None
        generator = torch.Generator(device=device).manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(count, generator=generator, device=device)
        self._drawn = (self.epoch, (order, augment_params(count, generator, self.padding, self.flip)))
        return self._drawn[1]

    def _images(self, index, params):
        """uint8 N x C x H x W of the images at index, augmented as params say (None: as stored)."""
        if params is None:
            return self.rows[index * self.copies].view(torch.uint8).view(-1, *self.shape)
        top, left, flipped = params
        rows = self.rows[index * self.copies + flipped.long()]  # flipped is all False without copies
        left = torch.where(flipped[:, None], 2 * self.padding - left, left)
        return crop(rows.view(torch.uint8).view(-1, *self.shape), top, left, self.padding)

    def _normalise(self, images):
        out = torch.empty(images.shape, device=images.device, memory_format=self.memory_format)
        return torch.addcmul(self.shift, images, self.scale, out=out)

    def __iter__(self):
        order, params = self.draws()
        for step in range(self.start_step, len(self)):
            mine = slice(step * self.batch_size + self.rank, (step + 1) * self.batch_size, self.world)
            index = order[mine]
            batch_params = tuple(p[mine] for p in params) if params is not None else None
            yield self._normalise(self._images(index, batch_params)), self.labels[index]


def make_batches(cfg, device, train, shard=(0, 1), validation=False):
    """The Batches of the training (train=True, shard = (rank, processes)), test or validation split."""
    if cfg.model.num_classes < CLASSES:
        raise UsageError(f"model.num_classes={cfg.model.num_classes} is below CIFAR-10's {CLASSES} classes; "
                         f"use {CLASSES} (or more)")
    images, labels = load_split(cfg.data, train, validation)
    batch_size = cfg.train.batch_size if train else cfg.train.eval_batch_size
    return Batches(images, labels, cfg.data, batch_size, train, cfg.seed, device, cfg.train.channels_last, shard)
