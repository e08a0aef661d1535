"""minet_jax.input_pipeline: the grain training pipeline and the validation images."""

from pathlib import Path

import numpy as np
import pytest

from minet_jax import input_pipeline, synthetic
from minet_jax.config import data_config
from minet_jax.image_io import read_rgb

SMALL = {"hazy_per_clear": 2, "val_hazy_per_clear": 2, "size": 48, "val_size": (24, 32)}


pytestmark = pytest.mark.usefixtures("no_tensorflow_no_home_cache")


# ----------------------------------------------------------------------------- grain pipeline


@pytest.fixture(scope="module")
def syn_cfg(tmp_path_factory):
    """Data config over a small synthetic set (12 training pairs of 48x48, 4 validation pairs)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    cfg = data_config()
    cfg.manual_dir = str(synthetic.make_synthetic_haze(tmp / "syn", seed=0, **SMALL))
    cfg.data_dir = str(tmp / "tfds")
    cfg.crop_size = 16
    return cfg


def _take(it, n: int) -> list[dict]:
    out = [next(it) for _ in range(n)]
    if hasattr(it, "close"):
        it.close()
    return out


def test_train_batches_shapes_and_resume(syn_cfg):
    batches = _take(input_pipeline.train_iterator(syn_cfg, batch_size=3, seed=0), 9)  # 12 pairs: 4 per epoch
    for b in batches:
        assert set(b) == {"hazy", "clear"}
        for x in b.values():
            assert x.shape == (3, 16, 16, 3) and x.dtype == np.float32
            assert 0.0 <= x.min() and x.max() <= 1.0
        assert not np.array_equal(b["hazy"], b["clear"])
    resumed = _take(input_pipeline.train_iterator(syn_cfg, batch_size=3, seed=0, start_step=6), 3)
    for k, b in enumerate(resumed, start=6):
        assert all(np.array_equal(b[key], batches[k][key]) for key in b)
    other = _take(input_pipeline.train_iterator(syn_cfg, batch_size=3, seed=1), 2)
    assert not np.array_equal(other[0]["hazy"], batches[0]["hazy"])


def test_each_epoch_is_a_fresh_permutation(syn_cfg):
    cfg = syn_cfg.copy_and_resolve_references()
    cfg.crop_size, cfg.flip = 0, False
    ds = input_pipeline.train_dataset(cfg, batch_size=12, seed=0)  # one batch = one epoch
    epochs = [ds[e]["hazy"] for e in range(3)]
    assert epochs[0].shape == (12, 48, 48, 3)  # the small set, used as it is
    key = lambda x: sorted(img.tobytes() for img in x)
    assert key(epochs[0]) == key(epochs[1]) == key(epochs[2])  # every pair once per epoch
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_fresh_haze_is_new_for_every_example_and_still_a_function_of_the_step(syn_cfg):
    cfg = syn_cfg.copy_and_resolve_references()
    cfg.crop_size, cfg.flip, cfg.fresh_haze = 0, False, True
    ds = input_pipeline.train_dataset(cfg, batch_size=12, seed=0)
    fixed = input_pipeline.train_dataset(syn_cfg.copy_and_resolve_references(), batch_size=12, seed=0)
    a, b = ds[0], ds[1]
    # Same clear photos as without it; each of the 2 hazy copies per photo now gets its own new haze.
    assert sorted(x.tobytes() for x in a["clear"]) == sorted(x.tobytes() for x in b["clear"])
    stored = {x.tobytes() for x in fixed[0]["hazy"]} | {x.tobytes() for x in fixed[1]["hazy"]}
    hazy = [x.tobytes() for x in (*a["hazy"], *b["hazy"])]
    assert len(set(hazy)) == 24 and not set(hazy) & stored
    # Haze brightens toward the airlight (A >= 0.7) and is a pure function of seed and step.
    assert (a["hazy"].mean(axis=(1, 2, 3)) > a["clear"].mean(axis=(1, 2, 3)) - 0.02).all()
    again = input_pipeline.train_dataset(cfg, batch_size=12, seed=0)[1]
    assert all(np.array_equal(again[k], b[k]) for k in b)


def test_crop_and_flip(tmp_path, write_image):
    yy, xx = np.mgrid[0:10, 0:12]
    hazy = np.stack([xx * 20, yy * 20, np.full_like(xx, 7)], axis=-1).astype(np.uint8)  # encodes position
    write_image(tmp_path / "pos" / "hazy" / "p.png", hazy)
    write_image(tmp_path / "pos" / "clear" / "p.png", 255 - hazy)
    cfg = data_config()
    cfg.name, cfg.manual_dir, cfg.data_dir = "paired", str(tmp_path / "pos"), str(tmp_path / "tfds")
    cfg.crop_size = 4
    batches = _take(input_pipeline.train_iterator(cfg, batch_size=1, seed=0), 40)
    corners, flips = set(), set()
    for b in batches:
        h = np.round(b["hazy"][0] * 255).astype(int)
        c = np.round(b["clear"][0] * 255).astype(int)
        assert h.shape == (4, 4, 3) and np.array_equal(c, 255 - h)  # same window and flip for both
        dx = np.diff(h[:, :, 0], axis=1)
        assert np.all(dx == 20) or np.all(dx == -20)
        assert np.all(np.diff(h[:, :, 1], axis=0) == 20)  # never flipped vertically
        flips.add(int(dx[0, 0]))
        corners.add((int(h[0, 0, 1]) // 20, int(h[:, :, 0].min()) // 20))
    assert flips == {20, -20}
    assert len(corners) > 10  # many of the 7 x 9 windows

    cfg.crop_size, cfg.flip = 0, False
    b = _take(input_pipeline.train_iterator(cfg, batch_size=2, seed=0), 1)[0]
    assert np.array_equal(np.round(b["hazy"] * 255).astype(np.uint8), np.stack([hazy, hazy]))


def test_whole_images_of_different_sizes_cannot_share_a_batch(tmp_path, smooth_rgb, write_image):
    write_image(tmp_path / "d" / "hazy" / "a.png", smooth_rgb(1, 8, 8))
    write_image(tmp_path / "d" / "clear" / "a.png", smooth_rgb(2, 8, 8))
    write_image(tmp_path / "d" / "hazy" / "b.png", smooth_rgb(3, 8, 10))
    write_image(tmp_path / "d" / "clear" / "b.png", smooth_rgb(4, 8, 10))
    cfg = data_config()
    cfg.name, cfg.manual_dir, cfg.data_dir, cfg.crop_size = "paired", str(tmp_path / "d"), str(tmp_path / "tfds"), 0
    with pytest.raises(ValueError, match="share a size"):
        input_pipeline.train_dataset(cfg, batch_size=2, seed=0)[0]


def test_val_images(syn_cfg, tmp_path):
    val = input_pipeline.val_images(syn_cfg)
    assert [v["name"] for v in val] == ["chelsea_1", "chelsea_2", "motorcycle_1", "motorcycle_2"]
    for v in val:
        assert v["hazy"].shape == v["clear"].shape == (24, 32, 3) and v["hazy"].dtype == np.float32
        assert 0.0 <= v["hazy"].min() and v["hazy"].max() <= 1.0
    root = Path(syn_cfg.manual_dir)
    assert np.array_equal(np.round(val[2]["clear"] * 255), read_rgb(root / "val" / "clear" / "motorcycle.png"))

    cfg = syn_cfg.copy_and_resolve_references()
    cfg.val_limit = 2  # evenly spread
    assert [v["name"] for v in input_pipeline.val_images(cfg)] == ["chelsea_1", "motorcycle_2"]

    # a folder given for validation only: its single split serves
    cfg.val_name, cfg.val_manual_dir, cfg.val_limit = "paired", str(root / "train"), 0
    assert len(input_pipeline.val_images(cfg)) == 2 * len(synthetic.TRAIN_PHOTOS)
    # the training folder itself without a validation split: none, with a warning
    cfg.name, cfg.manual_dir, cfg.val_name, cfg.val_manual_dir = "paired", str(root / "train"), "", ""
    with pytest.warns(UserWarning, match="no validation"):
        assert input_pipeline.val_images(cfg) == []


def test_default_synthetic_set_goes_to_the_cache(monkeypatch, tmp_path):
    """name="synthetic" with empty manual_dir and data_dir: both under $XDG_CACHE_HOME/minet_jax."""
    calls = []
    real = synthetic.make_synthetic_haze
    monkeypatch.setattr(synthetic, "make_synthetic_haze", lambda root, seed: calls.append(root) or real(root, **SMALL))
    cfg = data_config()
    cfg.val_limit = 1
    val = input_pipeline.val_images(cfg)
    cache = tmp_path / "xdg-cache" / "minet_jax"
    assert calls == [cache / "synthetic"] and len(val) == 1
    assert any((cache / "tfds").glob("synthetic-*/paired/1.0.0/dataset_info.json"))


@pytest.mark.slow  # ~10 s: each spawned worker imports minet_jax, whose __init__ imports jax and flax
def test_worker_processes_give_the_same_batches(syn_cfg):
    ref = _take(input_pipeline.train_iterator(syn_cfg, batch_size=2, seed=3, start_step=5), 6)
    cfg = syn_cfg.copy_and_resolve_references()
    cfg.workers = 2
    got = _take(input_pipeline.train_iterator(cfg, batch_size=2, seed=3, start_step=5), 6)
    for a, b in zip(ref, got):
        assert all(np.array_equal(a[k], b[k]) for k in a)
