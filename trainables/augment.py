"""The paper's augmentation, made reproducible: every sample's randomness is a function of
(seed, epoch, index) and of nothing else.

The pipeline (albumentations 2.0.8, exactly as docs/study.md "Data"):

    train: Resize(size) -> HorizontalFlip(0.5) -> VerticalFlip(0.5)
           -> RandomBrightnessContrast(+-0.2, +-0.2, p=0.3)
           -> Affine(translate +-10%, scale 0.9-1.1, rotate +-15 deg, constant-0 border for the
              image and the mask, mask nearest-neighbour, p=0.3)
           -> Normalize(ImageNet mean/std)
    eval:  Resize(size) -> Normalize(ImageNet mean/std)

`Affine` replaces the deprecated `ShiftScaleRotate` with the same ranges; a constant border of 0
is black in pixel space (normalization comes after), and 0 ("no tumour") in the mask. The scale is
isotropic (`keep_ratio=True`): ShiftScaleRotate drew one scale factor, but its albumentations-2
shim forwards `keep_ratio=False`, which draws x and y factors independently (checked: 0.99/1.05).

Seeding. The paper's code did not seed augmentation, and every DataLoader worker replayed the
same stream. Seeding per worker would fix the replay but not resumption: which worker draws which
sample depends on `num_workers` and on where in the epoch a run stopped. So each sample draws from
its own stream, `SeedSequence([seed, epoch, index])`: the augmented sample at (epoch, index) is
the same with 0, 2 or 16 workers, in any order, and a run resumed at epoch e sees exactly what an
uninterrupted run saw at epoch e. Different samples, epochs and seeds get independent streams.

One trap, found while writing this: `Compose.set_random_seed(s)` (and `Compose(seed=s)`) gives
*every* child transform its own generator seeded with the same `s`. HorizontalFlip and
VerticalFlip then draw the same first number, so the two flips always happen together (200 of
200 samples in a check). We hand one shared pair of generators to all transforms with
`Compose.set_random_state` instead, so the transforms consume one stream in turn.
"""

from __future__ import annotations

import os
import random

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _resize(size: int) -> A.Resize:
    return A.Resize(
        size, size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST
    )


def train_pipeline(size: int) -> A.Compose:
    """The training augmentation of docs/study.md, ending in ImageNet normalization."""
    return A.Compose(
        [
            _resize(size),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.3),
            A.Affine(
                translate_percent=(-0.1, 0.1),
                scale=(0.9, 1.1),
                keep_ratio=True,  # one isotropic factor, as ShiftScaleRotate's scale_limit
                rotate=(-15, 15),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.3,
            ),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0),
        ]
    )


def eval_pipeline(size: int) -> A.Compose:
    """Validation/test: resize and normalize only."""
    return A.Compose(
        [_resize(size), A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0)]
    )


def sample_rngs(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, random.Random]:
    """The (NumPy, Python) generators of one sample: independent across (seed, epoch, index)."""
    if min(seed, epoch, index) < 0:
        raise ValueError(
            f"seed, epoch and index must be non-negative, got seed={seed} epoch={epoch} "
            f"index={index}"
        )
    sequence = np.random.SeedSequence([seed, epoch, index])
    numpy_seed, python_seed = sequence.spawn(2)
    return (
        np.random.default_rng(numpy_seed),
        random.Random(int(python_seed.generate_state(2, np.uint64)[0])),
    )


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(H x W x 3 float32, H x W {0,1}) -> (3 x H x W float32, 1 x H x W float32)."""
    image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
    mask_t = torch.from_numpy(np.ascontiguousarray(mask[None], dtype=np.float32))
    return image_t, mask_t


class SeededAugment:
    """Applies the training pipeline with randomness drawn from (seed, epoch, index) only."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.pipeline = train_pipeline(size)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, *, epoch: int, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.pipeline.set_random_state(*sample_rngs(self.seed, epoch, index))
        out = self.pipeline(image=image, mask=mask)
        return to_tensors(out["image"], out["mask"])


class EvalTransform:
    """Resize + normalize; takes (and ignores) the same keywords as SeededAugment."""

    def __init__(self, size: int):
        self.size = size
        self.pipeline = eval_pipeline(size)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, *, epoch: int = 0, index: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pipeline(image=image, mask=mask)
        return to_tensors(out["image"], out["mask"])
