"""minet_jax.synthetic: the embedded synthetic haze set."""

import numpy as np
import pytest

from minet_jax import synthetic
from minet_jax.image_io import read_rgb
from minet_jax.layouts import find_pairs

SMALL = {"hazy_per_clear": 2, "val_hazy_per_clear": 2, "size": 48, "val_size": (24, 32)}


pytestmark = pytest.mark.usefixtures("no_tensorflow_no_home_cache")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


# ----------------------------------------------------------------------------- synthetic haze


def test_synthetic_is_deterministic_and_reused(tmp_path, smooth_rgb, write_image):
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
    write_image(tmp_path / "mine" / "photo.png", smooth_rgb(0))
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
