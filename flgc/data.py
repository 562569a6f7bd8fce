"""CIFAR-10 held in memory as one uint8 tensor, augmented with batched tensor ops.

torchvision downloads, verifies (official md5 sums) and parses the files; augmentation is the
reference recipe (random 32x32 crop of the zero-padded image, horizontal flip), done for a whole
batch with one gather instead of per-image PIL transforms.
"""
import os
import pickle
import sys

import torch
from torchvision.datasets import CIFAR10

from .errors import UsageError

FOLDER = "cifar-10-batches-py"
SOURCE = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


class _UncheckedCIFAR10(CIFAR10):
    """torchvision's parser, accepting files whose md5 differs from the official archive's."""

    def _check_integrity(self):
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, name))
                   for name, _ in self.train_list + self.test_list)

    def _load_meta(self):
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def _files_present(root):
    names = [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    return all(os.path.isfile(os.path.join(root, FOLDER, n)) for n in names)


def load_split(data_cfg, train):
    """(images uint8 N x 32 x 32 x 3, labels int64 N) of one split, honouring the data.* keys."""
    root = os.path.expanduser(data_cfg.root)
    where = os.path.join(root, FOLDER)
    if not _files_present(root):
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
            dataset = _UncheckedCIFAR10(root, train=train, download=False)
        except Exception as err:
            raise UsageError(f"cannot parse CIFAR-10 files in {where}/: {type(err).__name__}: {err}") from None
    images = torch.from_numpy(dataset.data)
    labels = torch.tensor(dataset.targets, dtype=torch.int64)
    subset = data_cfg.train_subset if train else data_cfg.test_subset
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    return images, labels


def augment(images, generator, padding=4, flip=True):
    """Random crop (zero padding) and horizontal flip of a uint8 batch N x H x W x C, one gather."""
    n, height, width, _ = images.shape
    padded = torch.nn.functional.pad(images, (0, 0, padding, padding, padding, padding))
    device = images.device
    top = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator).to(device)
    left = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator).to(device)
    rows = top + torch.arange(height, device=device)
    cols = left + torch.arange(width, device=device)
    if flip:
        flipped = (torch.rand(n, generator=generator) < 0.5).to(device)
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=device)
    return padded[batch[:, None, None], rows[:, :, None], cols[:, None, :]]


class Batches:
    """Iterable of normalised (images, labels) batches from an in-memory split.

    Images come out N x 3 x 32 x 32 float32 in channels_last memory layout (or contiguous NCHW).
    Training order and augmentation are drawn from a generator seeded by (seed, epoch), so an
    epoch is the same whether or not the run was interrupted before it.
    """

    def __init__(self, images, labels, data_cfg, batch_size, train, seed=0, device="cpu",
                 channels_last=True, shard=(0, 1)):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.padding, self.flip = data_cfg.crop_padding, data_cfg.flip
        self.mean = torch.tensor(data_cfg.mean, device=device) * 255
        self.std = torch.tensor(data_cfg.std, device=device) * 255
        self.channels_last = channels_last
        self.rank, self.world = shard
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return -(-len(self.labels) // (self.batch_size * self.world))

    def _normalise(self, images):
        batch = ((images.float() - self.mean) / self.std).permute(0, 3, 1, 2)
        return batch if self.channels_last else batch.contiguous()

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        count = len(self.labels)
        order = torch.randperm(count, generator=generator) if self.train else torch.arange(count)
        step = self.batch_size * self.world
        for start in range(0, count, step):
            index = order[start:start + step][self.rank::self.world].to(self.images.device)
            images = self.images[index]
            if self.train:
                images = augment(images, generator, self.padding, self.flip)
            yield self._normalise(images), self.labels[index]
