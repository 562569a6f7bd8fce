"""The batched pipeline against the reference recipe applied image by image with torchvision."""
import pytest
import torch
import torchvision.transforms.functional as TF

from flgc import config
from flgc.data import Batches, augment_params


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
    flips = 0
    for step, (x, y) in enumerate(batches):
        index = order[step * 16:(step + 1) * 16]
        top, left, flipped = augment_params(len(index), generator, cfg.crop_padding, cfg.flip)
        assert torch.equal(y, labels[index])
        assert x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for i, k in enumerate(index):
            want = per_image_reference(images[k], int(top[i]), int(left[i]), bool(flipped[i]), cfg)
            torch.testing.assert_close(x[i], want, rtol=0, atol=1e-5)
        flips += int(flipped.sum())
    assert 0 < flips < 50  # both branches were exercised


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
