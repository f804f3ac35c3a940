"""The kaggle_3m loader and its validation: every problem is found, and names its file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.support.datasets import fresh_copy, written
from trainables import lgg


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return written(
        tmp_path_factory.mktemp("lgg"), patients=3, size=16, seed=0, slices_per_patient=3
    )


@pytest.fixture
def dataset(clean, tmp_path) -> Path:
    """A fresh copy of the clean dataset, to damage."""
    return fresh_copy(clean, tmp_path)


def first_patient(root: Path) -> Path:
    return sorted(p for p in root.iterdir() if p.is_dir())[0]


def slice_path(root: Path, n: int, mask: bool = False) -> Path:
    folder = first_patient(root)
    return folder / f"{folder.name}_{n}{'_mask' if mask else ''}.tif"


# --------------------------------------------------------------------------- the clean layout


def test_clean_dataset_has_no_problems(clean):
    report = lgg.check_dataset(clean)
    assert report.ok, report.problems
    assert (report.patients, report.slices, report.image_size) == (3, 9, (16, 16))
    assert 0 < report.positive_slices < report.slices
    assert report.positive_fraction == report.positive_slices / report.slices


def test_slices_pair_and_sort_numerically_not_lexicographically(tmp_path):
    folder = tmp_path / "TCGA_AA_0001_20000101"
    folder.mkdir()
    image, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    for n in (1, 2, 9, 10, 11):
        tifffile.imwrite(folder / f"{folder.name}_{n}.tif", image + n, photometric="rgb")
        tifffile.imwrite(folder / f"{folder.name}_{n}_mask.tif", mask)
    pairs = lgg.scan(tmp_path).pairs
    assert [p.number for p in pairs] == [1, 2, 9, 10, 11]
    for pair in pairs:  # each image with the mask of its own number
        assert pair.mask.name == f"{folder.name}_{pair.number}_mask.tif"
        assert lgg.read_image(pair.image)[0, 0, 0] == pair.number


def test_root_files_and_hidden_files_are_ignored(dataset):
    (dataset / "README.md").write_text("LGG segmentation dataset")
    tifffile.imwrite(dataset / "stray.tif", np.zeros((4, 4), np.uint8))
    (first_patient(dataset) / f"._{slice_path(dataset, 1).name}").write_bytes(b"AppleDouble")
    assert (dataset / "data.csv").exists()
    assert lgg.check_dataset(dataset).ok


def test_channels_are_kept_in_stored_order(tmp_path):
    path = tmp_path / "x.tif"
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30
    tifffile.imwrite(path, image, photometric="rgb")
    assert lgg.read_image(path)[0, 0].tolist() == [10, 20, 30]  # no BGR swap


@pytest.mark.parametrize("high", [255, 1])
def test_masks_0_255_and_0_1_both_map_to_0_1(tmp_path, high):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, np.array([[0, high], [high, 0]], np.uint8))
    assert lgg.read_mask(path).tolist() == [[0, 1], [1, 0]]


# --------------------------------------------------------------------------- each problem


def _remove_mask(root):
    path = slice_path(root, 2, mask=True)
    path.unlink()
    return slice_path(root, 2), "has no mask"


def _remove_image(root):
    slice_path(root, 3).unlink()
    return slice_path(root, 3, mask=True), "has no image"


def _truncate(root):
    path = slice_path(root, 1)
    path.write_bytes(path.read_bytes()[:-200])
    return path, "unreadable TIFF"


def _garbage(root):
    path = slice_path(root, 1, mask=True)
    path.write_bytes(b"this is not a tiff")
    return path, "unreadable TIFF"


def _size_mismatch(root):
    path = slice_path(root, 2, mask=True)
    tifffile.imwrite(path, np.zeros((12, 16), np.uint8))
    return path, "mask is 12x16 but its image"


def _grayscale_image(root):
    path = slice_path(root, 1)
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8))
    return path, "3 channels"


def _four_channel_image(root):
    path = slice_path(root, 1)
    tifffile.imwrite(path, np.zeros((16, 16, 4), np.uint8), photometric="rgb", extrasamples=[0])
    return path, "3 channels"


def _rgb_mask(root):
    path = slice_path(root, 3, mask=True)
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    return path, "1 channel"


def _bad_mask_values(root):
    path = slice_path(root, 1, mask=True)
    tifffile.imwrite(path, np.array([[0, 128], [255, 0]], np.uint8).repeat(8, 0).repeat(8, 1))
    return path, "{0, 128, 255}"


def _float_image(root):
    path = slice_path(root, 2)
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.float32), photometric="rgb")
    return path, "uint8"


def _non_numeric_name(root):
    folder = first_patient(root)
    path = folder / f"{folder.name}_extra.tif"
    shutil.copy(slice_path(root, 1), path)
    return path, "not numeric"


def _foreign_name(root):
    folder = first_patient(root)
    path = folder / "TCGA_ZZ_9999_19990101_1.tif"
    shutil.copy(slice_path(root, 1), path)
    return path, "does not belong to patient folder"


def _duplicate_number(root):
    folder = first_patient(root)
    path = folder / f"{folder.name}_01.tif"
    shutil.copy(slice_path(root, 1), path)
    # "_01" sorts first and is kept; the clash is reported on the other file, naming both.
    return slice_path(root, 1), f"duplicate slice number 1 (also {path.name})"


CORRUPTIONS = [
    _remove_mask,
    _remove_image,
    _truncate,
    _garbage,
    _size_mismatch,
    _grayscale_image,
    _four_channel_image,
    _rgb_mask,
    _bad_mask_values,
    _float_image,
    _non_numeric_name,
    _foreign_name,
    _duplicate_number,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_each_problem_is_reported_naming_its_file(dataset, corrupt):
    bad_file, fragment = corrupt(dataset)
    problems = lgg.check_dataset(dataset).problems
    assert [p.file for p in problems] == [str(bad_file)], problems
    assert fragment in problems[0].message
    assert str(bad_file) in str(problems[0])


def test_no_patients_found(tmp_path):
    (tmp_path / "data.csv").write_text("Patient\n")
    (tmp_path / "empty_folder").mkdir()
    problems = lgg.check_dataset(tmp_path).problems
    assert len(problems) == 1 and "no patients found" in problems[0].message
    assert problems[0].file == str(tmp_path)


def test_missing_root_is_a_problem_not_a_crash(tmp_path):
    problems = lgg.check_dataset(tmp_path / "nope").problems
    assert problems[0].file == str(tmp_path / "nope")


def test_no_patients_hints_at_the_kaggle_3m_subfolder(tmp_path, clean):
    fresh_copy(clean, tmp_path)
    assert "kaggle_3m" in lgg.check_dataset(tmp_path).problems[0].message


def test_every_problem_is_listed_not_just_the_first(dataset):
    expected = {str(corrupt(dataset)[0]) for corrupt in (_remove_mask, _truncate, _bad_mask_values)}
    report = lgg.check_dataset(dataset)
    assert {p.file for p in report.problems} == expected
    assert report.slices == 9 - 2  # slices 1 and 2 are bad; the good ones are still counted


def test_image_and_mask_of_one_slice_are_both_reported(dataset):
    image, _ = _grayscale_image(dataset)
    mask, _ = _bad_mask_values(dataset)
    assert {p.file for p in lgg.check_dataset(dataset).problems} == {str(image), str(mask)}


def test_dataset_error_lists_the_problems(dataset):
    bad_file, _ = _truncate(dataset)
    error = lgg.DatasetError(dataset, lgg.check_dataset(dataset).problems)
    assert str(bad_file) in str(error) and "sweep data check" in str(error)
