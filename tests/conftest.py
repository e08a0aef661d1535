"""Shared fixtures: the files in ../shared (skipping cleanly, with the reason, where absent), a
tiny synthetic data set and its training config, and a 16-bit PNG writer."""

from __future__ import annotations

import os
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# One persistent compilation cache per test session, set before JAX is imported and inherited by
# the train.py and tool processes the tests start: the suite compiles the same small networks over
# and over (tests/test_train.py: 476 s without it, 217 s with it, 2-core CPU, 2026-12-07). A cache
# the user set is left alone.
_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="minet-jax-test-compile-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def pytest_sessionfinish(session, exitstatus):
    if _CACHE is not None:
        shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_file():
    """`shared_file("weights/minet_its_official.pth")`: that path under ../shared, or the calling
    test skipped with the reason where it is absent."""

    def get(relative: str) -> Path:
        path = SHARED / relative
        if not path.exists():
            pytest.skip(f"{path} not found (the authors' files live in ../shared beside the checkout)")
        return path

    return get


@pytest.fixture(scope="session")
def official_weights(shared_file) -> Path:
    return shared_file("weights/minet_its_official.pth")


@pytest.fixture(scope="session")
def sots_mini(shared_file) -> Path:
    """The 30-image SOTS-indoor parity set (hazy/, clear/)."""
    return shared_file("data/sots-indoor-mini")


@pytest.fixture(scope="session")
def official_model(official_weights):
    """The official network with the authors' weights."""
    from minet_jax import load_pretrained

    return load_pretrained(official_weights)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    """(synthetic data folder, TFDS folder): 2 hazy per clear photo at 64x64, validation 48x64."""
    from minet_jax.synthetic import make_synthetic_haze

    root = tmp_path_factory.mktemp("tiny_data")
    synth = make_synthetic_haze(root / "synthetic", hazy_per_clear=2, val_hazy_per_clear=1, size=64, val_size=(48, 64))
    return synth, root / "tfds"


@pytest.fixture(scope="session")
def tiny_config(tiny_data):
    """`tiny_config(*overrides)`: configs/test.py on `tiny_data`, with KEY=VALUE overrides."""
    from minet_jax.config import apply_overrides, load_config

    def make(*overrides: str):
        data = [f"data.manual_dir={tiny_data[0]}", f"data.data_dir={tiny_data[1]}"]
        return apply_overrides(load_config("test"), [*data, *overrides])

    return make


@pytest.fixture(scope="session")
def write_png16():
    """A minimal 16-bit PNG writer, `write_png16(path, array)` (Pillow cannot write 16-bit colour)."""
    return _write_png16


def _write_png16(path: Path, arr: np.ndarray) -> None:
    """Minimal 16-bit PNG writer (Pillow cannot write 16-bit colour PNGs).

    Rows cycle through the PNG filters None, Sub, Up, Average and Paeth so that reading exercises
    un-filtering with the right bytes per pixel.
    """
    arr = np.ascontiguousarray(arr, dtype=">u2")
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = arr.reshape(h, -1).view(np.uint8).reshape(h, -1).astype(np.int16)
    bpp = 2 * channels
    rows = []
    for y in range(h):
        cur = raw[y]
        left = np.concatenate([np.zeros(bpp, np.int16), cur[:-bpp]])
        up = raw[y - 1] if y else np.zeros_like(cur)
        upleft = np.concatenate([np.zeros(bpp, np.int16), up[:-bpp]])
        ftype = y % 5
        if ftype == 0:
            pred = np.zeros_like(cur)
        elif ftype == 1:
            pred = left
        elif ftype == 2:
            pred = up
        elif ftype == 3:
            pred = (left + up) // 2
        else:
            p = left + up - upleft
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        rows.append(bytes([ftype]) + ((cur - pred) % 256).astype(np.uint8).tobytes())

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def no_tensorflow_no_home_cache(monkeypatch, tmp_path):
    """Data code under test writes its caches under tmp_path, never ~/.cache, and never imports
    TensorFlow (use with `pytestmark = pytest.mark.usefixtures("no_tensorflow_no_home_cache")`)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    yield
    assert "tensorflow" not in sys.modules, "building or reading data imported TensorFlow"


@pytest.fixture(scope="session")
def smooth_rgb():
    """`smooth_rgb(seed, h=12, w=16)`: a smooth random uint8 colour image (blurry blobs), distinct per seed."""
    from PIL import Image

    def make(seed: int, h: int = 12, w: int = 16) -> np.ndarray:
        rng = np.random.default_rng(seed)
        coarse = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))

    return make


@pytest.fixture(scope="session")
def write_image():
    """`write_image(path, rgb)`: a JPEG (quality 90) or PNG by suffix, parent folders made; returns path."""
    from PIL import Image

    from minet_jax.image_io import write_png

    def write(path: Path, rgb: np.ndarray) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jpg":
            Image.fromarray(rgb).save(path, quality=90)
        else:
            write_png(path, rgb)
        return path

    return write


@pytest.fixture(scope="session")
def complex_pair_matrix():
    """`complex_pair_matrix(n=200, seed=0, nonnormal=0.0)` -> (float32 matrix, its exact eigenvalues),
    dominant eigenvalue the pair exp(+-1.1 i), the others of modulus <= 0.8."""
    return _complex_pair_matrix


def rotation_scaling(r: float, theta: float) -> np.ndarray:
    return r * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def _complex_pair_matrix(n: int = 200, seed: int = 0, nonnormal: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Q (B + N) Q^T with B block diagonal (2x2 rotation-scalings, then reals), dominant eigenvalue
    the pair exp(+-1.1 i), all others of modulus <= 0.8; N strictly above the 2x2 blocks (so the
    eigenvalues stay those of B). Returns the float32 matrix and its exact eigenvalues."""
    rng = np.random.default_rng(seed)
    b = np.zeros((n, n))
    b[:2, :2] = rotation_scaling(1.0, 1.1)
    ev = [np.exp(1.1j), np.exp(-1.1j)]
    i = 2
    while i + 2 <= n - 20:
        r, t = rng.uniform(0.0, 0.8), rng.uniform(0.1, 3.0)
        b[i : i + 2, i : i + 2] = rotation_scaling(r, t)
        ev += [r * np.exp(1j * t), r * np.exp(-1j * t)]
        i += 2
    for j in range(i, n):
        b[j, j] = rng.uniform(-0.8, 0.8)
        ev.append(b[j, j])
    mask = np.ones((n, n), bool)
    for k in range(0, i, 2):
        mask[k : k + 2, k : k + 2] = False
    b += nonnormal * np.triu(rng.normal(size=(n, n)), 1) * mask
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return (q @ b @ q.T).astype(np.float32), np.asarray(ev)


@pytest.fixture(scope="session")
def natural_rgb():
    """`natural_rgb(name="astronaut", shape=(64, 80), offset=0)`: a crop of a scikit-image sample
    photo at quarter size, uint8 RGB."""
    import functools

    from skimage import data, transform

    @functools.cache
    def quarter(name: str) -> np.ndarray:
        img = getattr(data, name)()
        small = transform.resize(img, (img.shape[0] // 4, img.shape[1] // 4), anti_aliasing=True, preserve_range=True)
        return np.round(small).astype(np.uint8)

    def crop(name: str = "astronaut", shape=(64, 80), offset=0) -> np.ndarray:
        return quarter(name)[offset : offset + shape[0], offset : offset + shape[1]].copy()

    return crop
