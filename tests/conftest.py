"""Shared fixtures: the files in ../shared (skipping cleanly, with the reason, where absent), a
tiny synthetic data set and its training config, and a 16-bit PNG writer."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


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
