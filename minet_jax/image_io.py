"""Reading and writing 8-bit RGB images with Pillow.

`read_rgb` turns every common still-image flavour into an ``HxWx3`` uint8 RGB
array. Alpha is dropped, not composited: the stored colour values are kept, as
``PIL.Image.convert("RGB")`` (and hence the PyTorch reference loaders) do.
Only the first frame of multi-frame files is read and EXIF orientation is not
applied: pixels are returned as stored. 16-bit samples are mapped to 8 bits as
``round(v / 257)``, so 65535 -> 255 and 257 * k -> k.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

__all__ = ["ImageReadError", "decode_rgb", "read_rgb", "to_uint8", "write_png"]

PathLike = str | os.PathLike[str]

# Modes holding one integer sample per pixel, read as 16-bit values.
_INT_GRAY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}

# Pillow decodes 16-bit colour PNGs to 8 bits by keeping the high byte of each
# sample. To get the full 16-bit value we decode the same compressed stream a
# second time with a raw mode of equal bits per pixel (so PNG un-filtering is
# identical) that keeps the other bytes: "RGB;16L" applied to big-endian data
# yields the low bytes; plain "RGBA" applied to 16-bit grey+alpha yields
# (grey hi, grey lo, alpha hi, alpha lo).
_PNG16_RAWMODES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L", "LA;16B": "RGBA"}


class ImageReadError(ValueError):
    """A file could not be read as an image (missing, empty, truncated, not an image...)."""

    def __init__(self, path: PathLike, reason: str, expected: str = "a readable image file") -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: expected {expected}, but {reason}")


def _rawmode(im: Image.Image) -> str | None:
    tile = getattr(im, "tile", None)
    if not tile or len(tile) != 1:
        return None
    args = tile[0].args
    return args if isinstance(args, str) else (args[0] if args else None)


def _decode_as(path: Path | BinaryIO, rawmode: str) -> np.ndarray:
    """Decode ``path`` (a single-tile PNG, or a file object holding one) with its tile's raw mode replaced."""
    with Image.open(path) as im:
        im.tile = [im.tile[0]._replace(args=rawmode)]
        im.load()
        return np.array(im)


def _scale16(v: np.ndarray) -> np.ndarray:
    v = np.clip(v.astype(np.float64), 0, 65535)
    return np.round(v / 257.0).astype(np.uint8)


def _gray_to_rgb(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[:, :, None], 3, axis=2)


def _read(path: Path | BinaryIO) -> np.ndarray:
    # Pillow re-seeks a file object on open, so the two-pass 16-bit decoding works on bytes too.
    with Image.open(path) as im:
        rawmode = _rawmode(im) if im.format == "PNG" else None
        im.load()  # force the lazy decode here so truncation surfaces now
        mode = im.mode
        if rawmode in _PNG16_RAWMODES:
            other = _decode_as(path, _PNG16_RAWMODES[rawmode])
            if rawmode == "LA;16B":
                gray16 = other[:, :, 0].astype(np.uint32) * 256 + other[:, :, 1]
                return _gray_to_rgb(_scale16(gray16))
            hi = np.asarray(im)[:, :, :3].astype(np.uint32)
            return _scale16(hi * 256 + other[:, :, :3])
        if mode in _INT_GRAY_MODES:
            return _gray_to_rgb(_scale16(np.asarray(im)))
        if mode == "F":
            raise ValueError("floating-point images (mode F) have no defined 0..255 range")
        if mode in ("P", "PA"):
            # via RGBA: Pillow warns when converting palette transparency straight to RGB
            return np.array(im.convert("RGBA"), dtype=np.uint8)[:, :, :3]
        if mode != "RGB":
            im = im.convert("RGB")
        return np.array(im, dtype=np.uint8)


def read_rgb(path: PathLike) -> np.ndarray:
    """Read an image file as a ``HxWx3`` uint8 RGB array.

    Raises `ImageReadError` (naming the path) for missing, empty, truncated,
    corrupt or non-image files.
    """
    path = Path(path)
    try:
        rgb = _read(path)
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, zlib/struct errors...
        raise ImageReadError(path, f"reading it failed ({type(e).__name__}: {e})") from e
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageReadError(path, f"decoding gave an array of shape {rgb.shape}, dtype {rgb.dtype}")
    return rgb


def decode_rgb(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to a ``HxWx3`` uint8 RGB array, exactly as `read_rgb` reads files.

    Raises `ImageReadError` naming ``name``."""
    try:
        return _read(io.BytesIO(data))
    except MemoryError:
        raise
    except Exception as e:
        raise ImageReadError(name, f"decoding it failed ({type(e).__name__}: {e})") from e


def write_png(path: PathLike, rgb_uint8: np.ndarray) -> None:
    """Write a ``HxWx3`` uint8 RGB array as an 8-bit PNG (parent folder must exist)."""
    rgb = np.asarray(rgb_uint8)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_png expects a HxWx3 uint8 array, got shape {rgb.shape}, dtype {rgb.dtype}")
    Image.fromarray(rgb).save(Path(path), format="PNG")


def to_uint8(x01: np.ndarray) -> np.ndarray:
    """Map values on the [0, 1] scale to uint8: clip, times 255, round half to even.

    NaN maps to 0.
    """
    x = np.nan_to_num(np.asarray(x01, dtype=np.float64), nan=0.0)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central size x size crop of an HxWxC image."""
    h, w = img.shape[:2]
    if size > min(h, w):
        raise ValueError(f"crop {size} is larger than the image ({h}x{w})")
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]
