"""Data: the synthetic haze set, the TFDS folder builders and the grain training pipeline."""

import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minet_jax import datasets, input_pipeline, synthetic
from minet_jax.datasets import OverlapWarning, PairError, build_dataset
from minet_jax.imageio import ImageReadError, read_rgb, write_png
from minet_jax.layouts import LayoutError, find_pairs

from .conftest import SOTS_MINI, require

SMALL = {"hazy_per_clear": 2, "val_hazy_per_clear": 2, "size": 48, "val_size": (24, 32)}


@pytest.fixture(autouse=True)
def _no_tensorflow_no_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # never write to ~/.cache
    yield
    assert "tensorflow" not in sys.modules, "building or reading data imported TensorFlow"


def _rgb(seed: int, h: int = 12, w: int = 16) -> np.ndarray:
    """Smooth random colour image (blurry blobs), distinct per seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(rgb).save(path, quality=90)
    else:
        write_png(path, rgb)
    return path


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def _examples(builder, split: str) -> list[dict]:
    return list(builder.as_data_source(split))


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


# ----------------------------------------------------------------------------- synthetic haze


def test_synthetic_is_deterministic_and_reused(tmp_path):
    a = synthetic.make_synthetic_haze(tmp_path / "a", seed=0, **SMALL)
    b = synthetic.make_synthetic_haze(tmp_path / "b", seed=0, **SMALL)
    c = synthetic.make_synthetic_haze(tmp_path / "c", seed=1, **SMALL)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == len(synthetic.TRAIN_PHOTOS) * 3 + len(synthetic.VAL_PHOTOS) * 3
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert all((a / f).read_bytes() == (c / f).read_bytes() for f in files if f.parent.name == "clear")
    assert all((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.parent.name == "hazy")

    # reused as it is, untouched
    stamps = {f: (a / f).stat().st_mtime_ns for f in files}
    assert synthetic.make_synthetic_haze(tmp_path / "a", seed=0, **SMALL) == a
    assert stamps == {f: (a / f).stat().st_mtime_ns for f in files}
    # other settings: rewritten, with nothing stale left
    synthetic.make_synthetic_haze(tmp_path / "a", seed=0, **{**SMALL, "hazy_per_clear": 1})
    assert len(list((a / "train" / "hazy").iterdir())) == len(synthetic.TRAIN_PHOTOS)
    # an incomplete set is rewritten too
    (a / "train" / "hazy" / "coffee_1.png").unlink()
    synthetic.make_synthetic_haze(tmp_path / "a", seed=0, **{**SMALL, "hazy_per_clear": 1})
    assert (a / "train" / "hazy" / "coffee_1.png").is_file()
    # a folder of someone else's is left alone
    _write(tmp_path / "mine" / "photo.png", _rgb(0))
    with pytest.raises(FileExistsError, match="mine"):
        synthetic.make_synthetic_haze(tmp_path / "mine")


def test_synthetic_haze_is_plausible_and_val_photos_are_unseen(tmp_path):
    root = synthetic.make_synthetic_haze(tmp_path / "syn", seed=0, **SMALL)
    psnrs = []
    for split, shape in (("train", (48, 48, 3)), ("val", (24, 32, 3))):
        pairs = find_pairs(root / split)
        assert len(pairs) == 2 * len(synthetic.TRAIN_PHOTOS if split == "train" else synthetic.VAL_PHOTOS)
        for p in pairs:
            hazy, clear = read_rgb(p.hazy), read_rgb(p.clear)
            assert hazy.shape == clear.shape == shape
            psnrs.append(_psnr(hazy, clear))
            assert hazy.mean() > clear.mean()  # airlight >= 0.7 brightens every photo here
    assert 9.0 < np.mean(psnrs) < 20.0 and 5.0 < min(psnrs) and max(psnrs) < 30.0
    train = {p.name for p in (root / "train" / "clear").iterdir()}
    val = {p.name for p in (root / "val" / "clear").iterdir()}
    assert train.isdisjoint(val)
    assert set(synthetic.TRAIN_PHOTOS.values()).isdisjoint(synthetic.VAL_PHOTOS.values())


# ----------------------------------------------------------------------------- builders


def test_its_builder_reads_pairs_in_natural_order(tmp_path):
    src = tmp_path / "ITS"
    clear = {i: _write(src / "clear" / f"{i}.png", _rgb(i)) for i in (2, 10)}
    hazy = {
        "10_1_0.74": _write(src / "hazy" / "10_1_0.74.png", _rgb(100)),
        "2_10_0.9": _write(src / "hazy" / "2_10_0.9.png", _rgb(101)),
        "2_2_0.8": _write(src / "hazy" / "2_2_0.8.png", _rgb(102)),
    }
    with pytest.warns(OverlapWarning, match="sots_dir"):
        builder = build_dataset("reside_its", src, tmp_path / "tfds")
    assert list(builder.info.splits) == ["train"]
    ex = _examples(builder, "train")
    assert [_text(e["name"]) for e in ex] == ["2_2_0.8", "2_10_0.9", "10_1_0.74"]
    assert [_text(e["scene"]) for e in ex] == ["2", "2", "10"]
    for e in ex:
        name = _text(e["name"])
        assert np.array_equal(input_pipeline.decode_rgb(e["hazy"]), read_rgb(hazy[name]))
        assert np.array_equal(input_pipeline.decode_rgb(e["clear"]), read_rgb(clear[int(_text(e["scene"]))]))
        assert (e["height"], e["width"]) == (12, 16)
    assert ex[0]["hazy"] == hazy["2_2_0.8"].read_bytes()  # stored as the file's bytes


def test_ots_builder_keeps_jpeg_bytes(tmp_path):
    src = tmp_path / "OTS"
    _write(src / "clear" / "0001.jpg", _rgb(1))
    h1 = _write(src / "hazy" / "0001_0.8_0.2.jpg", _rgb(2))
    _write(src / "hazy" / "0001_1_0.04.jpg", _rgb(3))
    ex = _examples(build_dataset("reside_ots", src, tmp_path / "tfds"), "train")
    assert [_text(e["name"]) for e in ex] == ["0001_0.8_0.2", "0001_1_0.04"]
    assert ex[0]["hazy"] == h1.read_bytes()
    assert np.array_equal(input_pipeline.decode_rgb(ex[0]["hazy"]), read_rgb(h1))


def test_sots_builder_finds_indoor_and_crops_larger_ground_truth(tmp_path):
    src = tmp_path / "SOTS" / "indoor"  # the builder is given the SOTS folder, holding indoor/
    gt_big = _rgb(7, 32, 36)  # 20 + 12 rows, 20 + 16 columns: 10 px borders like 640x480 vs 620x460
    _write(src / "GT" / "1400.png", gt_big)
    _write(src / "GT" / "1401.png", _rgb(8))
    _write(src / "hazy" / "1400_1.png", _rgb(9))
    _write(src / "hazy" / "1401_1.png", _rgb(10))
    builder = build_dataset("sots_indoor", tmp_path / "SOTS", tmp_path / "tfds")
    assert list(builder.info.splits) == ["test"]
    ex = _examples(builder, "test")
    assert [_text(e["name"]) for e in ex] == ["1400_1", "1401_1"]
    assert np.array_equal(input_pipeline.decode_rgb(ex[0]["clear"]), gt_big[10:22, 10:26])
    assert np.array_equal(input_pipeline.decode_rgb(ex[1]["clear"]), _rgb(8))

    # beyond the tolerated border: an error naming the file
    _write(tmp_path / "S2" / "gt" / "1.png", _rgb(1, 40, 16))
    _write(tmp_path / "S2" / "hazy" / "1_1.png", _rgb(2))
    with pytest.raises(PairError, match=r"1_1\.png.*12x16.*40x16"):
        build_dataset("sots_indoor", tmp_path / "S2", tmp_path / "tfds")


def test_paired_builder_same_names_with_train_and_val_folders(tmp_path):
    src = tmp_path / "mine"
    for split, names in (("train", ["a", "b", "c"]), ("val", ["d"])):
        for k, n in enumerate(names):
            _write(src / split / "clear" / f"{n}.png", _rgb(k))
            _write(src / split / "hazy" / f"{n}.png", _rgb(k + 50))
    builder = build_dataset("paired", src, tmp_path / "tfds")
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["validation"].num_examples == 1
    assert [_text(e["name"]) for e in _examples(builder, "validation")] == ["d"]
    # built once: the same folder is reused, a changed folder is rebuilt
    assert build_dataset("paired", src, tmp_path / "tfds").data_dir == builder.data_dir
    _write(src / "train" / "clear" / "e.png", _rgb(5))
    _write(src / "train" / "hazy" / "e.png", _rgb(6))
    rebuilt = build_dataset("paired", src, tmp_path / "tfds")
    assert rebuilt.data_dir != builder.data_dir and rebuilt.info.splits["train"].num_examples == 4


@pytest.mark.parametrize("problem", ["missing partner", "unreadable", "size mismatch", "no clear folder"])
def test_builder_errors_name_the_file(tmp_path, problem):
    src = tmp_path / "bad"
    _write(src / "clear" / "1.png", _rgb(1))
    _write(src / "hazy" / "1_1.png", _rgb(2))
    if problem == "missing partner":
        _write(src / "hazy" / "2_1.png", _rgb(3))
        expected, match = LayoutError, r"2_1\.png"
    elif problem == "unreadable":
        (src / "hazy" / "1_2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        expected, match = ImageReadError, r"1_2\.png"
    elif problem == "size mismatch":
        _write(src / "hazy" / "1_3.png", _rgb(4, 12, 18))
        expected, match = PairError, r"1_3\.png.*12x18.*1\.png.*12x16"
    else:
        (src / "clear" / "1.png").unlink()
        (src / "clear").rmdir()
        expected, match = PairError, r"1_1\.png.*no clear"
    with pytest.raises(expected, match=match) as info:
        build_dataset("paired", src, tmp_path / "tfds")
    assert isinstance(info.value, ValueError)


def test_its_scenes_shared_with_sots_are_left_out(tmp_path):
    its, sots = tmp_path / "ITS", tmp_path / "SOTS"
    for i in (1, 2, 3):
        _write(its / "clear" / f"{i}.png", _rgb(i, 40, 60))
        for k in (1, 2):
            _write(its / "hazy" / f"{i}_{k}_0.8.png", _rgb(10 * i + k, 40, 60))
    _write(sots / "gt" / "7.png", _rgb(2, 40, 60))  # an exact copy of ITS scene 2
    big = np.zeros((48, 68, 3), np.uint8)
    big[4:44, 4:64] = _rgb(3, 40, 60)  # ITS scene 3 with a 4 px border, as SOTS GT is larger than ITS
    _write(sots / "gt" / "8.png", big)
    _write(sots / "gt" / "9.png", _rgb(99, 40, 60))
    for i in (7, 8, 9):
        _write(sots / "hazy" / f"{i}_1.png", _rgb(200 + i, 40, 60))

    with pytest.warns(OverlapWarning, match=r"leaving out 2 ITS scene\(s\).*2\.png \(~ 7\.png\).*3\.png \(~ 8\.png\)"):
        builder = build_dataset("reside_its", its, tmp_path / "tfds", sots_dir=sots)
    assert [_text(e["name"]) for e in _examples(builder, "train")] == ["1_1_0.8", "1_2_0.8"]

    with warnings.catch_warnings():  # with SOTS holding none of the ITS scenes: no warning at all
        warnings.simplefilter("error", OverlapWarning)
        (sots / "gt" / "7.png").unlink()
        (sots / "gt" / "8.png").unlink()
        (sots / "hazy" / "7_1.png").unlink()
        (sots / "hazy" / "8_1.png").unlink()
        builder = build_dataset("reside_its", its, tmp_path / "tfds", sots_dir=sots)
    assert builder.info.splits["train"].num_examples == 6


def test_perceptual_hash_separates_scenes_and_tolerates_recompression():
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    hashes = [datasets.perceptual_hash(p) for p in photos]
    assert min(datasets.hash_distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]) > 60
    buf = io.BytesIO()
    Image.fromarray(photos[0]).resize((256, 256)).save(buf, format="JPEG", quality=70)
    again = datasets.perceptual_hash(np.asarray(Image.open(buf)))
    assert datasets.hash_distance(hashes[0], again) <= datasets.DEFAULT_MAX_HASH_DISTANCE // 2


def test_sots_mini_builds():
    root = require(SOTS_MINI)
    # a separate data_dir under the test's XDG cache: build_dataset's default
    builder = build_dataset("sots_indoor", root, None)
    hazy = sorted((root / "hazy").iterdir())
    assert builder.info.splits["test"].num_examples == len(hazy)
    first = _examples(builder, "test")[0]
    assert _text(first["name"]) == "1400_1" and (first["height"], first["width"]) == (460, 620)
    assert np.array_equal(input_pipeline.decode_rgb(first["hazy"]), read_rgb(root / "hazy" / "1400_1.png"))


def test_decode_rgb_matches_read_rgb(tmp_path):
    from .test_evaluate import write_png16

    a16 = np.random.default_rng(0).integers(0, 65536, (5, 7, 3)).astype(np.uint16)
    write_png16(tmp_path / "x16.png", a16)
    for p in (tmp_path / "x16.png", _write(tmp_path / "x.jpg", _rgb(3))):
        assert np.array_equal(input_pipeline.decode_rgb(p.read_bytes()), read_rgb(p))
    with pytest.raises(ImageReadError, match="thing"):
        input_pipeline.decode_rgb(b"not an image", "thing")


# ----------------------------------------------------------------------------- grain pipeline


@pytest.fixture(scope="module")
def syn_cfg(tmp_path_factory):
    """Data config over a small synthetic set (12 training pairs of 48x48, 4 validation pairs)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    cfg = input_pipeline.data_config()
    cfg.manual_dir = str(synthetic.make_synthetic_haze(tmp / "syn", seed=0, **SMALL))
    cfg.data_dir = str(tmp / "tfds")
    cfg.crop_size = 16
    return cfg


def _take(it, n: int) -> list[dict]:
    out = [next(it) for _ in range(n)]
    if hasattr(it, "close"):
        it.close()
    return out


def test_data_config_defaults():
    c = input_pipeline.data_config()
    assert (c.name, c.manual_dir, c.data_dir, c.crop_size, c.flip, c.workers) == ("synthetic", "", "", 64, True, 0)
    assert (c.val_name, c.val_manual_dir, c.val_split, c.val_limit, c.sots_dir) == ("", "", "", 0, "")


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


def test_crop_and_flip(tmp_path):
    yy, xx = np.mgrid[0:10, 0:12]
    hazy = np.stack([xx * 20, yy * 20, np.full_like(xx, 7)], axis=-1).astype(np.uint8)  # encodes position
    _write(tmp_path / "pos" / "hazy" / "p.png", hazy)
    _write(tmp_path / "pos" / "clear" / "p.png", 255 - hazy)
    cfg = input_pipeline.data_config()
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


def test_whole_images_of_different_sizes_cannot_share_a_batch(tmp_path):
    _write(tmp_path / "d" / "hazy" / "a.png", _rgb(1, 8, 8))
    _write(tmp_path / "d" / "clear" / "a.png", _rgb(2, 8, 8))
    _write(tmp_path / "d" / "hazy" / "b.png", _rgb(3, 8, 10))
    _write(tmp_path / "d" / "clear" / "b.png", _rgb(4, 8, 10))
    cfg = input_pipeline.data_config()
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
    cfg = input_pipeline.data_config()
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
