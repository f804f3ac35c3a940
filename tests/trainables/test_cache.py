"""The decode-once cache: reused, safe under concurrent builders, rebuilt when files change."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from tests.support.datasets import fresh_copy, written
from trainables import cache, lgg
from trainables.datasets import build_datasets

SIZE = 32


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cache-data")
    return written(folder, patients=4, size=48, seed=1, slices_per_patient=4)


@pytest.fixture
def root(pristine, tmp_path) -> Path:
    return fresh_copy(pristine, tmp_path)


def entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock"))


def test_first_open_decodes_and_the_second_only_maps(root, tmp_path, monkeypatch):
    first = cache.open_cache(root, SIZE, tmp_path / "c")
    assert first.built and len(first) == 16
    images, masks = first.arrays()
    assert images.shape == (16, SIZE, SIZE, 3) and masks.shape == (16, SIZE, SIZE)
    assert set(np.unique(masks).tolist()) <= {0, 1}

    def no_decoding(pair):
        raise AssertionError(f"decoded {pair.image} again")

    monkeypatch.setattr(lgg, "read_pair_or_problems", no_decoding)
    second = cache.open_cache(root, SIZE, tmp_path / "c")
    assert not second.built and second.path == first.path
    assert np.array_equal(second.arrays()[0], images) and second.slices == first.slices
    assert isinstance(second.arrays()[0], np.memmap)


def test_rows_follow_the_scan_and_keep_the_tumour_flags(root, tmp_path):
    decoded = cache.open_cache(root, SIZE, tmp_path / "c")
    pairs = lgg.scan(root).pairs
    assert [(s.patient, s.number) for s in decoded.slices] == [(p.patient, p.number) for p in pairs]
    for info, pair in zip(decoded.slices, pairs, strict=True):
        assert info.positive == bool(lgg.read_mask(pair.mask).any())


@pytest.mark.parametrize("change", ["rewrite", "touch", "add", "remove"])
def test_changed_files_invalidate_the_entry(root, tmp_path, change):
    before = cache.open_cache(root, SIZE, tmp_path / "c")
    pair = lgg.scan(root).pairs[0]
    if change == "rewrite":  # same size, new content
        tifffile.imwrite(pair.mask, np.full((48, 48), 255, np.uint8))
    elif change == "touch":
        os.utime(pair.image, ns=(time.time_ns(), time.time_ns() + 10**9))
    elif change == "add":
        folder = pair.image.parent
        shutil.copy(pair.image, folder / f"{folder.name}_99.tif")
        shutil.copy(pair.mask, folder / f"{folder.name}_99_mask.tif")
    else:
        pair.image.unlink()
        pair.mask.unlink()
    after = cache.open_cache(root, SIZE, tmp_path / "c")
    assert after.built and after.path != before.path
    if change == "rewrite":
        assert after.arrays()[1][0].all() and after.slices[0].positive
    assert len(after) == {"add": 17, "remove": 15}.get(change, 16)


def test_the_image_size_is_part_of_the_key(root, tmp_path):
    small = cache.open_cache(root, 16, tmp_path / "c")
    large = cache.open_cache(root, SIZE, tmp_path / "c")
    assert small.built and large.built and small.path != large.path
    assert small.arrays()[0].shape[1:3] == (16, 16)


def test_bad_data_raises_and_leaves_no_entry(root, tmp_path):
    pair = lgg.scan(root).pairs[5]
    pair.mask.write_bytes(pair.mask.read_bytes()[:-100])
    with pytest.raises(lgg.DatasetError) as exc:
        cache.open_cache(root, SIZE, tmp_path / "c")
    assert str(pair.mask) in str(exc.value) and exc.value.problems[0].file == str(pair.mask)
    assert entries(tmp_path / "c") == []  # no entry, no temporary folder


def test_structural_problems_raise_before_decoding(root, tmp_path):
    pair = lgg.scan(root).pairs[0]
    pair.mask.unlink()
    with pytest.raises(lgg.DatasetError, match="has no mask"):
        cache.open_cache(root, SIZE, tmp_path / "c")


def test_default_directory_follows_the_environment(root, tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_DATA_CACHE", str(tmp_path / "env-cache"))
    assert cache.cache_root() == tmp_path / "env-cache"
    assert cache.cache_root(tmp_path / "mine") == tmp_path / "mine"  # a trial's cache_dir first
    assert cache.open_cache(root, SIZE).path.parent == tmp_path / "env-cache" / "data"
    monkeypatch.delenv("SWEEP_DATA_CACHE")
    assert cache.cache_root() == Path.home() / ".cache" / "nvfp4-sweep"


def test_pickling_does_not_copy_the_arrays(root, tmp_path):
    decoded = cache.open_cache(root, SIZE, tmp_path / "c")
    decoded.arrays()
    clone = pickle.loads(pickle.dumps(decoded))
    assert len(pickle.dumps(decoded)) < 10_000
    assert np.array_equal(clone.load(3)[0], decoded.load(3)[0])


def test_a_lost_rename_race_keeps_the_winner(root, tmp_path):
    winner = cache.open_cache(root, SIZE, tmp_path / "c")
    loser = tmp_path / "c" / ".loser"
    loser.mkdir()
    (loser / "index.json").write_text("{}")
    cache._publish(loser, winner.path)  # the entry exists: our copy is simply not used
    assert cache.open_cache(root, SIZE, tmp_path / "c").fingerprint == winner.fingerprint


def test_abandoned_temporary_folders_are_removed(root, tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    key = cache.fingerprint(lgg.scan(root), SIZE)
    name = f"{root.resolve().name}-{SIZE}px-{key[:16]}"
    (tmp_path / "c").mkdir()
    abandoned = tmp_path / "c" / f".{name}.tmp-{dead.stdout.strip()}-deadbeef"
    alive = tmp_path / "c" / f".{name}.tmp-{os.getpid()}-cafef00d"
    abandoned.mkdir()
    alive.mkdir()
    cache.open_cache(root, SIZE, tmp_path / "c")
    assert not abandoned.exists() and alive.exists()


BUILDER = textwrap.dedent(
    """
    import hashlib, sys, time
    from pathlib import Path
    from trainables import lgg
    from trainables.cache import open_cache
    root, cache_dir, go = sys.argv[1:4]
    read = lgg.read_pair_or_problems
    def slow_read(pair):                          # make the two builds surely overlap
        time.sleep(0.02)
        return read(pair)
    lgg.read_pair_or_problems = slow_read
    Path(go + "." + sys.argv[4]).touch()          # ready
    while not Path(go).exists():                  # start together
        time.sleep(0.005)
    decoded = open_cache(root, 32, cache_dir)
    images, masks = decoded.arrays()
    digest = hashlib.sha256(images.tobytes() + masks.tobytes()).hexdigest()
    print(int(decoded.built), decoded.path.name, digest)
    """
)


def test_concurrent_builders_decode_once_and_agree(root, tmp_path):
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILDER, str(root), str(tmp_path / "c"), str(go), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(out.split())
    assert sorted(r[0] for r in results) == ["0", "1"]  # exactly one decoded
    assert results[0][1:] == results[1][1:]  # same entry, same bytes
    assert entries(tmp_path / "c") == [results[0][1]]  # and nothing else left behind


def test_cached_and_uncached_datasets_give_identical_samples(root, tmp_path):
    kwargs = {"image_size": SIZE, "seed": 4, "split": "kfold", "fold": 1, "n_folds": 2}
    cached = build_datasets(root, cache_dir=tmp_path / "c", **kwargs)
    direct = build_datasets(root, cache=False, **kwargs)
    for a, b in zip(cached, direct, strict=True):
        assert a.patients == b.patients and len(a) == len(b)
        for epoch in (0, 1):
            a.set_epoch(epoch)
            b.set_epoch(epoch)
            for i in range(len(a)):
                assert all(torch.equal(u, v) for u, v in zip(a[i], b[i], strict=True))


def test_image_size_must_be_a_positive_integer(root, tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        cache.open_cache(root, 0, tmp_path / "c")


def test_a_bad_fold_fails_before_anything_is_decoded(root, tmp_path):
    with pytest.raises(ValueError, match=r"fold, an integer in 0\.\.4"):
        build_datasets(
            root, image_size=SIZE, seed=0, split="kfold", fold=5, cache_dir=tmp_path / "c"
        )
    assert not (tmp_path / "c").exists()
