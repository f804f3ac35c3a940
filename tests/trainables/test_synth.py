"""The synthetic LGG stand-in: exact layout, deterministic, LGG-like statistics, all-or-nothing."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from trainables import lgg, synth
from trainables.synth import write_synthetic

FOLDER = re.compile(r"^TCGA_[A-Z]{2}_\d{4}_\d{8}$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "kaggle_3m"
    write_synthetic(root, patients=12, size=64, seed=0, slices_per_patient=20)
    return root


def load_all(root: Path):
    """{patient: (images S x H x W x 3, masks S x H x W)} in slice order, through the loader."""
    by_patient: dict[str, list] = {}
    for pair in lgg.scan(root).pairs:
        by_patient.setdefault(pair.patient, []).append(lgg.read_pair(pair))
    return {p: tuple(np.stack(a) for a in zip(*v, strict=True)) for p, v in by_patient.items()}


def test_exact_kaggle_3m_layout(dataset):
    folders = sorted(p for p in dataset.iterdir() if p.is_dir())
    assert len(folders) == 12 and all(FOLDER.match(f.name) for f in folders)
    assert sorted(p.name for p in dataset.iterdir() if p.is_file()) == ["data.csv"]
    for folder in folders:
        names = {p.name for p in folder.iterdir()}
        expected = {f"{folder.name}_{n}{s}.tif" for n in range(1, 21) for s in ("", "_mask")}
        assert names == expected
    image = tifffile.imread(folders[0] / f"{folders[0].name}_1.tif")
    mask = tifffile.imread(folders[0] / f"{folders[0].name}_1_mask.tif")
    assert (image.shape, image.dtype, mask.shape, mask.dtype) == (
        (64, 64, 3),
        "uint8",
        (64, 64),
        "uint8",
    )
    with open(dataset / "data.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["Patient"] for r in rows) == sorted(f.name.rsplit("_", 1)[0] for f in folders)


def test_masks_are_0_255_and_the_dataset_passes_check(dataset):
    masks = [tifffile.imread(p.mask) for p in lgg.scan(dataset).pairs]
    assert set(np.unique(np.stack(masks)).tolist()) == {0, 255}
    report = lgg.check_dataset(dataset)
    assert report.ok, report.problems
    assert report.positive_fraction == pytest.approx(0.35, abs=0.05)


def test_deterministic_from_the_seed(dataset, tmp_path):
    again = write_synthetic(tmp_path / "a", patients=12, size=64, seed=0, slices_per_patient=20)
    other = write_synthetic(tmp_path / "b", patients=12, size=64, seed=1, slices_per_patient=20)
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    assert all((dataset / f).read_bytes() == (again.root / f).read_bytes() for f in files)
    assert not (set(files) & {p.relative_to(other.root) for p in other.root.rglob("*.tif")})


def test_tumours_are_brightest_in_flair_and_vary(dataset):
    contrasts, areas = [], []
    for images, masks in load_all(dataset).values():
        positive = masks.any(axis=(1, 2))
        assert 0 < positive.sum() < len(masks)  # every patient has tumour and tumour-free slices
        brain = (images[..., 1] > 0) & (masks == 0)
        tumour = masks.astype(bool)
        # Per channel: tumour mean over brain mean. FLAIR (1) is raised, the T1s are not.
        ratio = [images[..., c][tumour].mean() / images[..., c][brain].mean() for c in range(3)]
        assert ratio[1] > max(ratio[0], ratio[2]) and ratio[1] > 1.05, ratio
        contrasts.append(ratio[1])
        areas.append(tumour.sum(axis=(1, 2))[positive].mean())
    assert max(contrasts) - min(contrasts) > 0.3  # some bright, some faint
    assert min(contrasts) < 1.3
    assert max(areas) > 3 * min(areas)  # sizes vary across patients


def test_anatomy_varies_across_slices_and_patients(dataset):
    volumes = load_all(dataset)
    heads = [(images.sum(axis=-1) > 0).sum(axis=(1, 2)) for images, _ in volumes.values()]
    for area in heads:  # the head cross-section grows then shrinks through the volume
        assert area[len(area) // 2] > 1.5 * area[0] and area[len(area) // 2] > 1.5 * area[-1]
    middles = [images[10].astype(int) for images, _ in volumes.values()]
    assert all(np.abs(middles[0] - m).mean() > 5 for m in middles[1:])


def test_tumour_fraction_per_patient_is_spread_for_stratification(dataset):
    fractions = [m.any(axis=(1, 2)).mean() for _, m in load_all(dataset).values()]
    assert min(fractions) <= 0.15 and max(fractions) >= 0.55


def test_slice_counts_vary_like_lgg_by_default(tmp_path):
    summary = write_synthetic(tmp_path / "d", patients=6, size=16, seed=3)
    counts = {len(list(p.glob("*_mask.tif"))) for p in summary.root.iterdir() if p.is_dir()}
    assert len(counts) > 1 and min(counts) >= 24 and max(counts) <= 48


def test_refuses_a_non_empty_folder_unless_forced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic(out, patients=3, size=16, slices_per_patient=2)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    write_synthetic(out, patients=3, size=16, slices_per_patient=2, force=True)
    assert not (out / "keep.txt").exists() and lgg.check_dataset(out).ok


def test_an_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "out").mkdir()
    assert write_synthetic(tmp_path / "out", patients=3, size=16, slices_per_patient=2).slices == 6


def test_a_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    real, calls = synth._render_patient, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(*args)

    monkeypatch.setattr(synth, "_render_patient", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic(tmp_path / "out", patients=5, size=16, slices_per_patient=2)
    assert list(tmp_path.iterdir()) == []  # no OUT, no temporary folder


def test_tiff_template_writes_what_tifffile_writes(tmp_path):
    rng = np.random.default_rng(0)
    for shape, photometric in (((32, 32, 3), "rgb"), ((32, 32), "minisblack")):
        array = rng.integers(0, 256, size=shape, dtype=np.uint8)
        expected = io.BytesIO()
        tifffile.imwrite(expected, array, photometric=photometric)
        synth._TiffTemplate(shape, photometric).write(tmp_path / "t.tif", array)
        assert (tmp_path / "t.tif").read_bytes() == expected.getvalue()


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"patients": 0}, "patients"),
        ({"size": 8}, "size"),
        ({"seed": -1}, "seed"),
        ({"slices_per_patient": 0}, "slices_per_patient"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        write_synthetic(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
