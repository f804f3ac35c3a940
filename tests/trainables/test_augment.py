"""Augmentation: the paper's pipeline, a pure function of (seed, epoch, index), at every level
(transform, dataset, DataLoader with and without workers, a resumed run)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from trainables import augment
from trainables.augment import IMAGENET_MEAN, IMAGENET_STD, SeededAugment
from trainables.datasets import build_datasets
from trainables.synth import write_synthetic

SIZE = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aug") / "kaggle_3m"
    write_synthetic(root, patients=6, size=SIZE, seed=0, slices_per_patient=6)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("aug-cache")


def datasets(root, cache_dir, seed=0, **kwargs):
    return build_datasets(root, image_size=SIZE, seed=seed, cache_dir=cache_dir, **kwargs)


def sample_image(seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[4:12, 6:20] = 1
    return image, mask


def applied(pipeline: A.Compose, seed: int, epoch: int, index: int) -> set[str]:
    """Names of the transforms that fired for one sample."""
    pipeline.save_applied_params = True
    pipeline.set_random_state(*augment.sample_rngs(seed, epoch, index))
    image, mask = sample_image()
    return {name for name, _ in pipeline(image=image, mask=mask)["applied_transforms"]}


# --------------------------------------------------------------------------- the pipeline


def test_pipeline_is_the_papers():
    resize, hflip, vflip, rbc, affine, normalize = augment.train_pipeline(256).transforms
    assert isinstance(resize, A.Resize) and (resize.height, resize.width) == (256, 256)
    assert resize.mask_interpolation == cv2.INTER_NEAREST
    assert isinstance(hflip, A.HorizontalFlip) and hflip.p == 0.5
    assert isinstance(vflip, A.VerticalFlip) and vflip.p == 0.5
    assert isinstance(rbc, A.RandomBrightnessContrast) and rbc.p == 0.3
    assert rbc.brightness_limit == (-0.2, 0.2) and rbc.contrast_limit == (-0.2, 0.2)
    assert isinstance(affine, A.Affine) and affine.p == 0.3
    assert affine.translate_percent == {"x": (-0.1, 0.1), "y": (-0.1, 0.1)}
    assert affine.scale == {"x": (0.9, 1.1), "y": (0.9, 1.1)} and affine.keep_ratio
    assert affine.rotate == (-15.0, 15.0)
    assert affine.border_mode == cv2.BORDER_CONSTANT and affine.fill == 0 and affine.fill_mask == 0
    assert affine.mask_interpolation == cv2.INTER_NEAREST
    assert isinstance(normalize, A.Normalize)
    assert normalize.mean == IMAGENET_MEAN and normalize.std == IMAGENET_STD
    assert [type(t) for t in augment.eval_pipeline(256).transforms] == [A.Resize, A.Normalize]


def test_each_transform_fires_at_its_rate_and_the_flips_are_independent():
    pipeline = augment.train_pipeline(SIZE)
    fired = [applied(pipeline, 0, 0, i) for i in range(400)]
    rate = Counter(name for names in fired for name in names)
    for name, p in [("HorizontalFlip", 0.5), ("VerticalFlip", 0.5), ("Affine", 0.3)]:
        assert abs(rate[name] / 400 - p) < 0.08, (name, rate[name])
    assert abs(rate["RandomBrightnessContrast"] / 400 - 0.3) < 0.08
    # Compose.set_random_seed would seed both flips alike: they would fire together every time.
    both = sum({"HorizontalFlip", "VerticalFlip"} <= names for names in fired)
    assert abs(both / 400 - 0.25) < 0.07, both


def test_same_seed_epoch_index_gives_the_same_sample_and_anything_else_another():
    image, mask = sample_image()
    aug = SeededAugment(SIZE, seed=3)

    def draw(seed=3, epoch=1, index=5):
        return SeededAugment(SIZE, seed)(image, mask, epoch=epoch, index=index)[0]

    assert torch.equal(aug(image, mask, epoch=1, index=5)[0], draw())
    others = [draw(epoch=e) for e in range(2, 6)] + [draw(index=i) for i in range(6, 10)]
    others += [draw(seed=s) for s in range(4, 8)]
    # Outputs are discrete in part (12% of samples get no transform at all, and look alike),
    # so compare the streams exactly and the outputs in bulk.
    assert sum(not torch.equal(draw(), other) for other in others) >= len(others) - 2
    reference = augment.sample_rngs(3, 1, 5)[0].random(4)
    for key in [(3, 2, 5), (3, 1, 6), (4, 1, 5), (5, 3, 1), (1, 5, 3)]:
        assert not np.array_equal(augment.sample_rngs(*key)[0].random(4), reference)


def test_streams_of_different_samples_are_independent():
    first = [augment.sample_rngs(0, 0, i)[0].random() for i in range(1000)]
    second = [augment.sample_rngs(0, 1, i)[0].random() for i in range(1000)]
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.1
    assert abs(np.mean(first) - 0.5) < 0.04


def test_masks_stay_binary_and_the_border_is_constant_zero():
    image = np.full((SIZE, SIZE, 3), 255, np.uint8)
    mask = np.ones((SIZE, SIZE), np.uint8)
    black = (0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    aug, bordered = SeededAugment(SIZE, seed=0), 0
    for i in range(60):
        x, y = aug(image, mask, epoch=0, index=i)
        assert set(torch.unique(y).tolist()) <= {0.0, 1.0} and y.shape == (1, SIZE, SIZE)
        outside = y[0] == 0  # filled by the border: black image, "no tumour" mask
        if outside.any():
            bordered += 1
            pixels = x[:, outside].T.numpy()
            assert np.isclose(pixels, black, atol=0.02).all(axis=1).mean() > 0.5
    assert bordered > 5


def test_eval_transform_is_resize_and_normalize_only():
    image, mask = sample_image()
    x, y = augment.EvalTransform(SIZE)(image, mask, epoch=7, index=3)
    expected = (image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert np.allclose(x.numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    assert torch.equal(y[0], torch.from_numpy(mask).float())


def test_negative_seed_is_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        augment.sample_rngs(-1, 0, 0)


# --------------------------------------------------------------------------- datasets and loaders


def epoch_batches(dataset, epoch, **loader_kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dataset.set_epoch(epoch)
    order = torch.Generator().manual_seed(epoch)
    loader = DataLoader(dataset, batch_size=8, shuffle=True, generator=order, **loader_kwargs)
    return list(loader)


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True)
    )


def test_items_are_normalized_images_and_binary_masks(root, cache_dir):
    data = datasets(root, cache_dir)
    for part in data:
        x, y = part[0]
        assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
        assert y.shape == (1, SIZE, SIZE) and set(torch.unique(y).tolist()) <= {0.0, 1.0}
    assert sum(len(part) for part in data) == 36
    assert sorted(p for part in data for p in part.patients) == sorted(
        {p for part in data for p in part.patients}
    )


def test_a_resumed_run_sees_the_same_epoch(root, cache_dir):
    uninterrupted = datasets(root, cache_dir, seed=5).train
    seen = [epoch_batches(uninterrupted, e) for e in range(4)]
    resumed = datasets(root, cache_dir, seed=5).train  # a new process, restarting at epoch 3
    assert same(epoch_batches(resumed, 3), seen[3])
    assert not same(seen[2], seen[3])


def test_augmentation_does_not_depend_on_num_workers(root, cache_dir):
    dataset = datasets(root, cache_dir, seed=2).train
    single = [epoch_batches(dataset, e) for e in (0, 1)]
    assert same(epoch_batches(dataset, 0, num_workers=2), single[0])
    # Persistent workers keep their copy of the dataset: set_epoch must still reach them.
    dataset.set_epoch(0)
    loader = DataLoader(dataset, batch_size=8, num_workers=2, persistent_workers=True)
    plain = DataLoader(dataset, batch_size=8)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        assert same(list(loader), list(plain))
    assert not same(single[0], single[1])


def test_training_seed_changes_augmentation_not_split(root, cache_dir):
    a, b = datasets(root, cache_dir, seed=0), datasets(root, cache_dir, seed=1)
    assert [part.patients for part in a] == [part.patients for part in b]
    assert not torch.equal(a.train[0][0], b.train[0][0]) or not torch.equal(
        a.train[1][0], b.train[1][0]
    )


def test_validation_test_and_unaugmented_train_ignore_the_epoch(root, cache_dir):
    data = datasets(root, cache_dir, augment=False)
    for part in data:
        part.set_epoch(0)
        first = part[0][0]
        part.set_epoch(9)
        assert torch.equal(part[0][0], first)


def test_set_epoch_rejects_nonsense(root, cache_dir):
    with pytest.raises(ValueError, match="epoch"):
        datasets(root, cache_dir).train.set_epoch(-1)
