"""The embedded default data set: synthetic haze over scikit-image's sample photos.

`make_synthetic_haze(root)` writes, once, a paired folder tree in the SOTS naming style that
`layouts.find_pairs` (and the ``paired`` TFDS builder) understand::

    root/train/clear/astronaut.png   root/train/hazy/astronaut_1.png ... astronaut_8.png
    root/val/clear/chelsea.png       root/val/hazy/chelsea_1.png ... chelsea_3.png

Training photos: astronaut, coffee, rocket, immunohistochemistry ("ihc"), retina and
hubble_deep_field ("hubble"), centre-cropped to squares of ``size`` pixels. Validation photos,
never used in training: chelsea and the left view of stereo_motorcycle ("motorcycle"),
centre-cropped to ``val_size`` (128 x 160 by default, cheap to validate on a CPU).

Haze follows the atmospheric scattering model used to make RESIDE: ``I = J t + A (1 - t)`` with
transmission ``t = exp(-beta d)``, one airlight ``A ~ U[0.7, 1]`` per image (all channels alike,
as in RESIDE ITS) and ``beta ~ U[0.6, 1.8]``. The depth ``d`` is smooth and synthetic: a random
mix of a planar gradient (farther towards the top, tilted at random) and upsampled low-resolution
noise, normalised to [0.1, 1]. The hazy images come out at roughly 10-16 dB PSNR against clear.

Everything is a pure function of ``seed`` and the size arguments; a marker file records them with
the generator version, and a later call with the same arguments reuses the folder.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from minet_jax.image_io import to_uint8

__all__ = [
    "GENERATOR_VERSION",
    "MARKER",
    "TRAIN_PHOTOS",
    "VAL_PHOTOS",
    "add_haze",
    "is_complete",
    "make_synthetic_haze",
]

# Bump whenever the output for given arguments changes: old folders are then regenerated.
GENERATOR_VERSION = 1
MARKER = "synthetic_haze.json"

# id (no underscores: find_pairs pairs hazy "ID_k" with clear "ID") -> skimage.data function
TRAIN_PHOTOS = {
    "astronaut": "astronaut",
    "coffee": "coffee",
    "rocket": "rocket",
    "ihc": "immunohistochemistry",
    "retina": "retina",
    "hubble": "hubble_deep_field",
}
VAL_PHOTOS = {"chelsea": "chelsea", "motorcycle": "stereo_motorcycle"}

A_RANGE = (0.7, 1.0)
BETA_RANGE = (0.6, 1.8)
DEPTH_RANGE = (0.1, 1.0)


def _photo(func_name: str) -> np.ndarray:
    import skimage.data  # only needed when generating

    img = getattr(skimage.data, func_name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[0]
    return np.asarray(img, dtype=np.uint8)[:, :, :3]


def _fit(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop `img` to the aspect ratio height:width, then resize to exactly that."""
    h, w = img.shape[:2]
    scale = min(h / height, w / width)
    ch, cw = height * scale, width * scale
    top, left = (h - ch) / 2, (w - cw) / 2
    box = (left, top, left + cw, top + ch)
    out = Image.fromarray(img).resize((width, height), Image.Resampling.LANCZOS, box=box)
    return np.asarray(out, dtype=np.uint8)


@functools.lru_cache(maxsize=16)
def _clear(func_name: str, height: int, width: int) -> np.ndarray:
    out = _fit(_photo(func_name), height, width)
    out.flags.writeable = False
    return out


def _normalise(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _depth(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth synthetic depth on [0.1, 1]: tilted planar gradient + blurry blobs."""
    yy, xx = np.meshgrid(np.linspace(0.0, 1.0, height), np.linspace(0.0, 1.0, width), indexing="ij")
    tilt = rng.uniform(-0.6, 0.6)  # radians from vertical
    plane = _normalise(xx * np.sin(tilt) - yy * np.cos(tilt))  # larger (farther) towards the top
    n = int(rng.integers(3, 7))
    coarse = rng.standard_normal((n, n)).astype(np.float32)
    blobs = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BICUBIC))
    w = rng.uniform(0.3, 0.8)
    d = _normalise(w * plane + (1.0 - w) * _normalise(blobs.astype(np.float64)))
    return DEPTH_RANGE[0] + (DEPTH_RANGE[1] - DEPTH_RANGE[0]) * d


def add_haze(clear: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`clear` (uint8 RGB) under synthetic haze drawn from `rng`: airlight A, scattering beta and a
    smooth depth map, each new per call; uint8 like the files of the embedded set."""
    j = clear.astype(np.float64) / 255.0
    airlight = rng.uniform(*A_RANGE)
    beta = rng.uniform(*BETA_RANGE)
    t = np.exp(-beta * _depth(rng, *clear.shape[:2]))[:, :, None]
    return to_uint8(j * t + airlight * (1.0 - t))


def _plan(hazy_per_clear: int, val_hazy_per_clear: int) -> list[str]:
    files = []
    for split, photos, k in (("train", TRAIN_PHOTOS, hazy_per_clear), ("val", VAL_PHOTOS, val_hazy_per_clear)):
        for pid in photos:
            files.append(f"{split}/clear/{pid}.png")
            files += [f"{split}/hazy/{pid}_{i}.png" for i in range(1, k + 1)]
    return files


def _save_png(path: Path, rgb: np.ndarray) -> None:
    # zlib level 1: about 3x faster than Pillow's default for 10% larger files
    Image.fromarray(rgb).save(path, format="PNG", compress_level=1)


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_complete(root: str | os.PathLike[str]) -> bool:
    """Whether `root` holds a complete synthetic set of the current generator version (any settings)."""
    root = Path(root).expanduser()
    marker = _read_marker(root)
    if not isinstance(marker, dict) or marker.get("version") != GENERATOR_VERSION:
        return False
    files = marker.get("files")
    return isinstance(files, list) and bool(files) and all((root / f).is_file() for f in files)


def _generate(out: Path, settings: dict) -> None:
    seed = settings["seed"]
    jobs = (
        ("train", TRAIN_PHOTOS, settings["hazy_per_clear"], (settings["size"], settings["size"])),
        ("val", VAL_PHOTOS, settings["val_hazy_per_clear"], tuple(settings["val_size"])),
    )
    for split_no, (split, photos, k, (height, width)) in enumerate(jobs):
        (out / split / "clear").mkdir(parents=True)
        (out / split / "hazy").mkdir(parents=True)
        for photo_no, (pid, func) in enumerate(photos.items()):
            clear = _clear(func, height, width)
            _save_png(out / split / "clear" / f"{pid}.png", clear)
            for i in range(1, k + 1):
                rng = np.random.default_rng([seed, split_no, photo_no, i])
                _save_png(out / split / "hazy" / f"{pid}_{i}.png", add_haze(clear, rng))
    (out / MARKER).write_text(json.dumps(settings, indent=1))  # last: marks the set complete


def make_synthetic_haze(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    hazy_per_clear: int = 8,
    val_hazy_per_clear: int = 3,
    size: int = 256,
    val_size: tuple[int, int] = (128, 160),
) -> Path:
    """Write (or reuse) the synthetic paired set under `root`; returns `root` as a Path.

    ``size`` is the side of the square training images, ``val_size`` the (height, width) of the
    validation images. A folder that exists, is not empty and was not written by this function
    is never touched (`FileExistsError`).
    """
    root = Path(root).expanduser().resolve()
    settings = {
        "generator": "minet_jax.synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "hazy_per_clear": int(hazy_per_clear),
        "val_hazy_per_clear": int(val_hazy_per_clear),
        "size": int(size),
        "val_size": [int(v) for v in val_size],
    }
    if hazy_per_clear < 1 or val_hazy_per_clear < 1 or size < 8 or min(val_size) < 8:
        raise ValueError(f"make_synthetic_haze: invalid settings {settings}")
    files = _plan(hazy_per_clear, val_hazy_per_clear)
    settings["files"] = files

    def complete() -> bool:
        return _read_marker(root) == settings and all((root / f).is_file() for f in files)

    if complete():
        return root
    if root.exists() and any(root.iterdir()) and _read_marker(root) is None:
        raise FileExistsError(f"{root}: not empty and not a synthetic haze folder (no {MARKER}); not overwriting it")

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        _generate(tmp, settings)
        if root.exists():  # an outdated or incomplete set of ours, or an empty folder
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:
            if not complete():  # not a concurrent writer finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
