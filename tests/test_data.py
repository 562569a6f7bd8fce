"""The batched pipeline against the reference recipe applied image by image with torchvision."""
import pytest
import torch
import torchvision.transforms.functional as TF

from flgc.engine import config
from flgc.engine.data import Batches, augment_params
from flgc.errors import UsageError


def per_image_reference(image, top, left, flipped, cfg):
    """torchvision's RandomCrop(padding) + RandomHorizontalFlip + ToTensor + Normalize, decided."""
    chw = image.permute(2, 0, 1)
    out = TF.crop(TF.pad(chw, cfg.crop_padding), top, left, chw.shape[1], chw.shape[2])
    if flipped:
        out = TF.hflip(out)
    return TF.normalize(out.float() / 255, cfg.mean, cfg.std)


@pytest.mark.parametrize("size", [(32, 32), (5, 7)])  # 5 x 7 x 3 bytes: rows not a multiple of 8
@pytest.mark.parametrize("channels_last", [True, False])
def test_training_batches_equal_the_reference_transforms_per_image(size, channels_last):
    cfg = config.from_dict({}).data
    images = torch.randint(0, 256, (50, *size, 3), dtype=torch.uint8)
    labels = torch.arange(50)
    batches = Batches(images, labels, cfg, 16, train=True, seed=5, channels_last=channels_last)
    batches.set_epoch(2)
    generator = torch.Generator().manual_seed(5 * 100_003 + 2)  # the draws Batches documents
    order = torch.randperm(50, generator=generator)
    draws = augment_params(50, generator, cfg.crop_padding, cfg.flip)
    flips, steps = 0, 0
    for step, (x, y) in enumerate(batches):
        index = order[step * 16:(step + 1) * 16]
        top, left, flipped = (d[step * 16:(step + 1) * 16] for d in draws)
        assert torch.equal(y, labels[index])
        assert x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for i, k in enumerate(index):
            want = per_image_reference(images[k], int(top[i]), int(left[i]), bool(flipped[i]), cfg)
            torch.testing.assert_close(x[i], want, rtol=0, atol=1e-5)
        flips += int(flipped.sum())
        steps += 1
    assert steps == 3 and 0 < flips < 48  # the partial 4th batch is dropped; both branches exercised


def test_training_batches_have_one_shape_and_shards_split_the_global_batch():
    cfg = config.from_dict({}).data
    images = torch.randint(0, 256, (70, 32, 32, 3), dtype=torch.uint8)
    whole = Batches(images, torch.arange(70), cfg, 16, train=True, seed=1)
    shapes = {tuple(x.shape) for x, _ in whole}
    assert len(whole) == 4 and shapes == {(16, 3, 32, 32)}
    halves = [Batches(images, torch.arange(70), cfg, 16, train=True, seed=1, shard=(r, 2)) for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *halves):
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
    with pytest.raises(UsageError, match="exceeds the 70 training images"):
        Batches(images, torch.arange(70), cfg, 128, train=True)


def test_an_epoch_is_drawn_once_and_a_later_start_step_skips_exactly():
    cfg = config.from_dict({}).data
    images = torch.randint(0, 256, (64, 8, 8, 3), dtype=torch.uint8)
    batches = Batches(images, torch.arange(64), cfg, 8, train=True, seed=3)
    batches.set_epoch(4)
    full = list(batches)
    batches.set_epoch(4, start_step=5)
    assert batches.draws() is batches.draws()
    rest = list(batches)
    assert len(rest) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(full[5:], rest))
    batches.set_epoch(5)
    assert not torch.equal(next(iter(batches))[1], full[0][1])


def test_evaluation_keeps_every_image():
    cfg = config.from_dict({}).data
    images = torch.randint(0, 256, (70, 8, 8, 3), dtype=torch.uint8)
    assert [len(y) for _, y in Batches(images, torch.arange(70), cfg, 32, train=False)] == [32, 32, 6]


def test_evaluation_batches_are_the_images_in_order_normalised():
    cfg = config.from_dict({}).data
    images = torch.randint(0, 256, (20, 32, 32, 3), dtype=torch.uint8)
    batches = Batches(images, torch.arange(20), cfg, 8, train=False)
    x = torch.cat([b for b, _ in batches])
    want = TF.normalize(images.permute(0, 3, 1, 2).float() / 255, cfg.mean, cfg.std)
    torch.testing.assert_close(x, want, rtol=0, atol=1e-5)


def test_crop_offsets_and_flips_cover_the_reference_distribution():
    top, left, flipped = augment_params(20_000, torch.Generator().manual_seed(0), padding=4)
    for offsets in (top, left):
        counts = torch.bincount(offsets[:, 0], minlength=9)
        assert len(counts) == 9 and counts.min() > 20_000 / 9 * 0.9  # 0..8, each about 1/9
    assert abs(flipped.float().mean().item() - 0.5) < 0.02


def test_validation_images_are_the_last_training_images_and_leave_the_test_split_alone(tmp_path):
    from flgc.engine.data import load_split, write_random_cifar
    root = write_random_cifar(str(tmp_path), per_batch=10, test=12)
    base = {"root": root, "download": False, "verify_checksums": False}
    every, every_labels = load_split(config.from_dict({"data": base}).data, train=True)
    held = config.from_dict({"data": {**base, "validation_images": 15, "train_subset": 20}}).data
    train_images, _ = load_split(held, train=True)
    val_images, val_labels = load_split(held, train=True, validation=True)
    assert len(every) == 50 and torch.equal(train_images, every[:20])
    assert torch.equal(val_images, every[-15:]) and torch.equal(val_labels, every_labels[-15:])
    test_images, _ = load_split(held, train=False)
    assert len(test_images) == 12  # the test split is untouched: eval.py and releases read it
    with pytest.raises(UsageError, match="leaves no training image"):
        load_split(config.from_dict({"data": {**base, "validation_images": 50}}).data, train=True)
    with pytest.raises(UsageError, match="no validation split"):
        load_split(config.from_dict({"data": base}).data, train=False, validation=True)


def test_test_jpeg_quality_reencodes_the_test_images_only(tmp_path):
    """A lossy copy of the test images, as the re-encoded CIFAR-10 copy holds: the images change by a
    few levels on average, more at a lower quality; the labels and the training split stay as stored."""
    from helpers import write_colour_cifar

    from flgc.engine.data import load_split
    from flgc.records.manifest import data_label
    root = write_colour_cifar(str(tmp_path), per_batch=10, test=12)
    base = {"root": root, "download": False, "verify_checksums": False}
    stored, labels = load_split(config.from_dict({"data": base}).data, train=False)
    errors = {}
    for quality in (95, 30):
        lossy = config.from_dict({"data": {**base, "test_jpeg_quality": quality}}).data
        images, lossy_labels = load_split(lossy, train=False)
        assert images.dtype == torch.uint8 and images.shape == stored.shape and torch.equal(lossy_labels, labels)
        errors[quality] = float((images.float() - stored.float()).abs().mean())
        assert torch.equal(load_split(lossy, train=True)[0], load_split(config.from_dict({"data": base}).data, True)[0])
    assert 0 < errors[95] < errors[30] < 20, errors
    assert data_label(lossy, 12) == "CIFAR-10 copy (re-encoded, md5 not verified), 12 test images, JPEG-encoded at quality 30"


def test_official_files_checks_every_file_against_its_md5(tmp_path, monkeypatch):
    import hashlib
    import os

    from torchvision.datasets import CIFAR10

    from flgc.engine.data import FOLDER, official_files, write_random_cifar
    root = write_random_cifar(str(tmp_path), per_batch=4, test=4)
    assert not official_files(root)  # random images are not the official files
    folder = os.path.join(root, FOLDER)

    def md5s(names):
        return [(name, hashlib.md5(open(os.path.join(folder, name), "rb").read()).hexdigest()) for name, _ in names]
    monkeypatch.setattr(CIFAR10, "train_list", md5s(CIFAR10.train_list))
    monkeypatch.setattr(CIFAR10, "test_list", md5s(CIFAR10.test_list))
    assert official_files(root)  # every file matches the sums it is checked against
    with open(os.path.join(folder, "test_batch"), "ab") as changed:
        changed.write(b"\0")
    assert not official_files(root)
