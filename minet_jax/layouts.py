"""Finding (hazy, clear) image pairs in the common dehazing data-set layouts.

Supported, detected automatically (``root`` may also be a single image file):

* ``root/hazy/`` beside ``root/clear/`` (or ``gt/``, ``GT/``, any case): a hazy image is
  paired with the clear image of the same stem if there is one, otherwise with the clear
  image named by the part of its stem before the first underscore (SOTS ``1400_3.png``,
  ITS ``1400_3_0.74.png``, OTS ``0001_0.8_0.2.jpg`` -> ``1400`` / ``0001``).
* ``root/hazy/`` alone, or images directly in ``root``: pairs with ``clear=None``.
  Images directly in ``root`` are paired with a ``clear/`` folder too when one exists.

Files are matched on extension (case-insensitive); hidden files are ignored. The order is
a natural sort on the file name, so ``1400_2`` comes before ``1400_10``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "LayoutError", "Pair", "find_pairs", "listing", "natural_key", "subfolder"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
HAZY_DIR_NAMES = ("hazy",)
CLEAR_DIR_NAMES = ("clear", "gt")
_MAX_LISTED = 5


class LayoutError(ValueError):
    """The data folder does not hold a recognised, complete layout."""


@dataclass(frozen=True)
class Pair:
    """A hazy image, its clear ground truth (None when there is none) and a name for outputs."""

    hazy: Path
    clear: Path | None
    name: str


def natural_key(name: str) -> tuple:
    """Sort key treating digit runs as numbers (``a2`` < ``a10``); ties broken by the raw name."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), name


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: natural_key(p.name))


def subfolder(root: Path, names: Sequence[str]) -> Path | None:
    """The one folder of `root` whose lower-cased name is in `names` (None if none; LayoutError
    naming them if several, e.g. both `gt/` and `GT/`)."""
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in names)
    if len(found) > 1:
        raise LayoutError(f"{root}: several candidate folders, cannot choose: {', '.join(p.name for p in found)}")
    return found[0] if found else None


def _by_stem(paths: list[Path], folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in paths:
        if p.stem in out:
            raise LayoutError(f"{folder}: two images share the name {p.stem!r}: {out[p.stem].name}, {p.name}")
        out[p.stem] = p
    return out


def listing(names: Sequence[str], limit: int = _MAX_LISTED) -> str:
    """The first `limit` names, comma-separated, and how many more there are."""
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def find_pairs(root: str | os.PathLike[str]) -> list[Pair]:
    """List the (hazy, clear) pairs under ``root``, in natural order of the hazy file names.

    Raises `LayoutError` when ``root`` holds no images, when names are ambiguous, or when a
    clear folder exists but some hazy images have no partner in it.
    """
    root = Path(root)
    if root.is_file():
        return [Pair(root, None, root.stem)]
    if not root.is_dir():
        raise LayoutError(f"{root}: no such file or folder")

    hazy_dir = subfolder(root, HAZY_DIR_NAMES) or root
    clear_dir = subfolder(root, CLEAR_DIR_NAMES)
    hazy = _images(hazy_dir)
    if not hazy:
        raise LayoutError(
            f"{root}: no hazy images found (expected {root / 'hazy'}/ or images directly in {root}, "
            f"extensions {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    _by_stem(hazy, hazy_dir)  # output names must be unique
    if clear_dir is None:
        return [Pair(p, None, p.stem) for p in hazy]

    clear = _by_stem(_images(clear_dir), clear_dir)
    pairs, missing = [], []
    for p in hazy:
        partner = clear.get(p.stem) or clear.get(p.stem.split("_", 1)[0])
        if partner is None:
            missing.append(p.name)
        else:
            pairs.append(Pair(p, partner, p.stem))
    if missing:
        raise LayoutError(
            f"{root}: {len(missing)} hazy image(s) in {hazy_dir} have no clear partner in {clear_dir} "
            f"(same name, or the part before the first underscore): {listing(missing)}"
        )
    return pairs
