"""TFDS builders for paired (hazy, clear) dehazing folders, built from a manual folder, offline.

Each builder reads a folder laid out as ``hazy/`` beside ``clear/`` (or ``gt/``, ``GT/``); pairs
are found by `layouts.find_pairs` (same stem, or the clear image named by the hazy stem's part
before the first underscore). A folder with ``train/`` and ``val/`` (``valid/``,
``validation/``) or ``test/`` subfolders, each in that layout, gives those splits; otherwise the
whole folder is one split (``train``, or ``test`` for SOTS).

==================  =========================================================================
``reside_its``      RESIDE ITS: ``hazy/1400_3_0.74.png`` with ``clear/1400.png``. Scenes that
                    SOTS shares with ITS are left out when ``sots_dir`` is given (see below).
``reside_ots``      RESIDE OTS: ``hazy/0001_0.8_0.2.jpg`` with ``clear/0001.jpg`` (flat; move the
                    release's ``part1``..``part4`` subfolders' files into ``hazy/``).
``sots_indoor``     SOTS: ``hazy/1400_3.png`` with ``gt/1400.png`` (the folder, or its parent
``sots_outdoor``    holding ``indoor/`` / ``outdoor/``). Split ``test``.
``paired``          any folder in the layout above, e.g. same names in ``hazy/`` and ``clear/``;
                    the embedded synthetic set (`minet_jax.synthetic`) goes through this one.
==================  =========================================================================

Examples hold the files' bytes as they are (PNG, JPEG, ...): ``hazy``, ``clear`` (bytes),
``name`` (hazy stem), ``scene`` (clear stem), ``height``, ``width``. Records are written in the
natural order of the hazy names.

Every pair is checked when a data set is built: a hazy image without a clear partner, a file that
does not decode, or a size mismatch raises a `ValueError` subclass naming the file. Exception:
some SOTS releases ship 640x480 ground truth for 620x460 hazy images (the hazy images were cropped
after synthesis); for the SOTS builders a clear image at most `SOTS_MAX_BORDER` pixels larger in
each direction is centre-cropped to the hazy size (and stored re-encoded as PNG).

ITS / SOTS overlap: SOTS indoor was synthesised from NYU Depth v2 scenes, some of which are also
in ITS. Given ``sots_dir``, the ITS builder compares a 255-bit DCT perceptual hash of every ITS
clear image with those of the SOTS clear images and leaves out the ITS scenes within
``max_hash_distance`` bits, with an `OverlapWarning` listing them. Without ``sots_dir``,
`build_dataset` warns that the overlap was not checked.

No TensorFlow is needed: the features are numpy-only and the files are ``array_record``.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from minet_jax.image_io import read_rgb
from minet_jax.layouts import IMAGE_EXTENSIONS, LayoutError, Pair, find_pairs, listing, subfolder

__all__ = [
    "BUILDERS",
    "OverlapWarning",
    "PairError",
    "build_dataset",
    "default_cache_dir",
    "hash_distance",
    "perceptual_hash",
]

SPLIT_DIRS = {"train": ("train",), "validation": ("val", "valid", "validation"), "test": ("test",)}
SOTS_MAX_BORDER = 20  # pixels: 640x480 ground truth for 620x460 hazy
DEFAULT_MAX_HASH_DISTANCE = 24  # of 255 bits; unrelated photos differ in ~100+
_LISTED = 10  # names listed in a warning before "(and N more)"


class PairError(ValueError):
    """A hazy image cannot be used with its clear partner (names the file)."""


class OverlapWarning(UserWarning):
    """Training scenes that also occur in the evaluation set (or that this was not checked)."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/minet_jax`` (``~/.cache/minet_jax``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "minet_jax"


# ---------------------------------------------------------------------------------------------
# Perceptual hash


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT64 = _dct_matrix(64)


def perceptual_hash(rgb: np.ndarray) -> np.ndarray:
    """255-bit DCT hash of an RGB image: the 16x16 lowest frequencies (less DC) of its 64x64
    grey version, each above or below their median. Robust to resizing, mild crops and
    re-compression."""
    grey = Image.fromarray(np.asarray(rgb, dtype=np.uint8)).convert("L")
    x = np.asarray(grey.resize((64, 64), Image.Resampling.BOX), dtype=np.float64)
    coeffs = (_DCT64 @ x @ _DCT64.T)[:16, :16].ravel()[1:]
    return coeffs > np.median(coeffs)


def hash_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Hamming distance between two `perceptual_hash` results."""
    return int(np.count_nonzero(a != b))


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:  # reads the header only
            return im.height, im.width
    except Exception:  # read_rgb names the file when it decodes the image
        return -1, -1


def _hash_variants(path: Path, other_sizes: set[tuple[int, int]]) -> np.ndarray:
    """Hashes of the image at `path`, as it is and centre-cropped to each of `other_sizes` it
    exceeds by at most SOTS_MAX_BORDER pixels (a plain hash is not robust to such crops)."""
    rgb = read_rgb(path)
    h, w = rgb.shape[:2]
    out = [perceptual_hash(rgb)]
    for th, tw in sorted(other_sizes):
        dh, dw = h - th, w - tw
        if (dh, dw) != (0, 0) and 0 <= dh <= SOTS_MAX_BORDER and 0 <= dw <= SOTS_MAX_BORDER:
            out.append(perceptual_hash(rgb[dh // 2 : dh // 2 + th, dw // 2 : dw // 2 + tw]))
    return np.stack(out)


def _shared_scenes(images: Sequence[Path], others: Sequence[Path], max_distance: int) -> dict[Path, Path]:
    """``{image: other}`` for the `images` whose hash is within `max_distance` bits of an `others` one."""
    if not images or not others:
        return {}
    with _pool() as pool:
        sizes = list(pool.map(_image_size, images))
        other_sizes = list(pool.map(_image_size, others))
        hashes = list(pool.map(lambda p: _hash_variants(p, set(other_sizes)), images))
        other_hashes = list(pool.map(lambda p: _hash_variants(p, set(sizes)), others))
    owner = np.concatenate([np.full(len(h), i) for i, h in enumerate(other_hashes)])
    other_bits = np.concatenate(other_hashes)
    shared = {}
    for path, bits in zip(images, hashes):
        dist = np.count_nonzero(other_bits[None, :, :] != bits[:, None, :], axis=2)  # variants x others
        if dist.min() <= max_distance:
            shared[path] = others[int(owner[np.unravel_index(dist.argmin(), dist.shape)[1]])]
    return shared


# ---------------------------------------------------------------------------------------------
# Folders and pair checks


def split_folders(root: Path, default_split: str) -> dict[str, Path]:
    """``{split: folder}``: the train/val/test subfolders of `root`, or ``{default_split: root}``."""
    found = {split: d for split, names in SPLIT_DIRS.items() if (d := subfolder(root, names)) is not None}
    return found or {default_split: root}


def folder_pairs(folder: Path) -> list[Pair]:
    """`find_pairs`, requiring a clear partner for every hazy image."""
    pairs = find_pairs(folder)
    if pairs and pairs[0].clear is None:
        raise PairError(f"{pairs[0].hazy}: no clear partner, {folder} has no clear/ or gt/ folder")
    return pairs


@dataclass(frozen=True)
class _Checked:
    pair: Pair
    height: int
    width: int
    crop: tuple[int, int] | None  # (top, left) of the hazy-sized window in the clear image


def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))


def check_pairs(pairs: Sequence[Pair], *, max_border: int = 0) -> list[_Checked]:
    """Decode every image (errors name the file) and compare sizes; a clear image larger than
    its hazy partner by at most `max_border` pixels each way is to be centre-cropped."""
    clears = list(dict.fromkeys(p.clear for p in pairs))
    with _pool() as pool:  # Pillow decodes with the GIL released
        clear_shapes = dict(zip(clears, pool.map(lambda p: read_rgb(p).shape[:2], clears)))
        hazy_shapes = list(pool.map(lambda p: read_rgb(p.hazy).shape[:2], pairs))
    out = []
    for pair, (h, w) in zip(pairs, hazy_shapes):
        ch, cw = clear_shapes[pair.clear]
        crop = None
        if (ch, cw) != (h, w):
            dh, dw = ch - h, cw - w
            if not (0 <= dh <= max_border and 0 <= dw <= max_border):
                raise PairError(
                    f"{pair.hazy}: hazy image is {h}x{w} (HxW) but its clear partner {pair.clear} is {ch}x{cw}"
                )
            crop = (dh // 2, dw // 2)
        out.append(_Checked(pair, h, w, crop))
    return out


def _png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _fingerprint(folders: Sequence[Path], extra: str = "") -> str:
    """Hash of `extra` and the image files' paths, sizes and modification times under `folders`."""
    h = hashlib.sha256(extra.encode())
    for folder in folders:
        h.update(f"{folder}\0".encode())
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for f in sorted(filenames):
                if Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                    st = os.stat(os.path.join(dirpath, f))
                    h.update(
                        f"{os.path.relpath(os.path.join(dirpath, f), folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
                    )
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Builders


_FEATURES = {
    "hazy": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded file bytes
    "clear": tfds.features.Tensor(shape=(), dtype=np.object_),
    "name": tfds.features.Text(),
    "scene": tfds.features.Text(),
    "height": tfds.features.Scalar(dtype=np.int32),
    "width": tfds.features.Scalar(dtype=np.int32),
}


class _FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Paired (hazy, clear) images from the manual folder; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First version."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Point manual_dir at a folder with hazy/ and clear/ (or gt/) subfolders."
    DEFAULT_SPLIT = "train"
    MAX_BORDER = 0  # tolerated clear-minus-hazy size difference, centre-cropped away
    SUBFOLDER: str | None = None  # descend into this subfolder of manual_dir when present

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS' own lookup needs the importlib_resources package for classes inside a package;
        # this is its fallback. (It only serves to find a download checksums file: none here.)
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, sots_dir: str | os.PathLike[str] | None = None, **kwargs) -> None:
        # Only needed while building; a builder unpickled for reading has none.
        self._sots_dir = Path(sots_dir) if sots_dir else None
        kwargs.setdefault("file_format", "array_record")  # the default, tfrecord, needs TensorFlow
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip(),
            features=tfds.features.FeaturesDict(_FEATURES),
            disable_shuffling=True,  # records in the natural order of the hazy names
        )

    @classmethod
    def data_root(cls, manual_dir: Path) -> Path:
        if cls.SUBFOLDER and (sub := subfolder(manual_dir, (cls.SUBFOLDER,))) is not None:
            return sub
        return manual_dir

    def _filter(self, pairs: dict[str, list[Pair]]) -> dict[str, list[Pair]]:
        return pairs

    def _split_generators(self, dl_manager):
        root = self.data_root(Path(dl_manager.manual_dir))
        pairs = {split: folder_pairs(folder) for split, folder in split_folders(root, self.DEFAULT_SPLIT).items()}
        pairs = self._filter(pairs)
        return {
            split: self._generate_examples(check_pairs(items, max_border=self.MAX_BORDER))
            for split, items in pairs.items()
        }

    def _generate_examples(self, checked: list[_Checked]) -> Iterator[tuple[str, dict]]:
        for c in checked:
            if c.crop is None:
                clear = c.pair.clear.read_bytes()
            else:
                top, left = c.crop
                clear = _png_bytes(read_rgb(c.pair.clear)[top : top + c.height, left : left + c.width])
            yield (
                c.pair.name,
                {
                    "hazy": c.pair.hazy.read_bytes(),
                    "clear": clear,
                    "name": c.pair.name,
                    "scene": c.pair.clear.stem,
                    "height": c.height,
                    "width": c.width,
                },
            )


class ResideIts(_FolderBuilder):
    """RESIDE ITS (indoor training set): hazy/ID_k_A.png with clear/ID.png."""

    name = "reside_its"

    def __init__(self, *, max_hash_distance: int = DEFAULT_MAX_HASH_DISTANCE, **kwargs) -> None:
        self._max_hash_distance = max_hash_distance
        super().__init__(**kwargs)

    def _filter(self, pairs: dict[str, list[Pair]]) -> dict[str, list[Pair]]:
        if self._sots_dir is None:
            logging.warning("reside_its: built without sots_dir, the ITS / SOTS scene overlap was not checked")
            return pairs
        sots_root = SotsIndoor.data_root(self._sots_dir)
        sots_clear = sorted(
            {p.clear for folder in split_folders(sots_root, "test").values() for p in folder_pairs(folder)}
        )
        its_clear = list(dict.fromkeys(p.clear for items in pairs.values() for p in items))
        shared = _shared_scenes(its_clear, sots_clear, self._max_hash_distance)
        if not shared:
            return pairs
        warnings.warn(
            f"reside_its: leaving out {len(shared)} ITS scene(s) that SOTS ({sots_root}) also holds: "
            + listing([f"{p.name} (~ {q.name})" for p, q in shared.items()], _LISTED),
            OverlapWarning,
            stacklevel=2,
        )
        kept = {split: [p for p in items if p.clear not in shared] for split, items in pairs.items()}
        for split, items in kept.items():
            if not items:
                raise PairError(f"reside_its: every {split} scene also occurs in SOTS ({sots_root}); nothing left")
        return kept


class ResideOts(_FolderBuilder):
    """RESIDE OTS (outdoor training set): hazy/ID_A_beta.jpg with clear/ID.jpg."""

    name = "reside_ots"


class SotsIndoor(_FolderBuilder):
    """RESIDE SOTS indoor: hazy/ID_k.png with gt/ID.png; larger ground truth is centre-cropped."""

    name = "sots_indoor"
    DEFAULT_SPLIT = "test"
    MAX_BORDER = SOTS_MAX_BORDER
    SUBFOLDER = "indoor"


class SotsOutdoor(_FolderBuilder):
    """RESIDE SOTS outdoor: hazy/ID_A_beta.jpg with gt/ID.png; larger ground truth is centre-cropped."""

    name = "sots_outdoor"
    DEFAULT_SPLIT = "test"
    MAX_BORDER = SOTS_MAX_BORDER
    SUBFOLDER = "outdoor"


class PairedFolder(_FolderBuilder):
    """Any paired folder: hazy/ beside clear/ (or gt/), same names or SOTS / ITS-style names."""

    name = "paired"


BUILDERS: dict[str, type[_FolderBuilder]] = {
    cls.name: cls for cls in (ResideIts, ResideOts, SotsIndoor, SotsOutdoor, PairedFolder)
}


def build_dataset(
    name: str,
    manual_dir: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    sots_dir: str | os.PathLike[str] | None = None,
    max_hash_distance: int = DEFAULT_MAX_HASH_DISTANCE,
    synthetic_seed: int = 0,
) -> tfds.core.DatasetBuilder:
    """Build (once) and return the TFDS builder `name` over the folder `manual_dir`.

    `name` is a key of `BUILDERS` or ``"synthetic"``: the embedded set in `manual_dir` (default
    ``<cache>/synthetic``), used as it is when complete, else written there with the default
    settings and `synthetic_seed`, then built as ``paired``. `data_dir` defaults to
    ``<cache>/tfds``. Each folder gets its own subfolder of `data_dir`, keyed by a hash of its
    files' names, sizes and times (and of `sots_dir`'s), so a changed folder is rebuilt.
    Never touches the network.
    """
    if name == "synthetic":
        from minet_jax import synthetic

        manual_dir = Path(manual_dir or default_cache_dir() / "synthetic").expanduser()
        if not synthetic.is_complete(manual_dir):
            synthetic.make_synthetic_haze(manual_dir, seed=synthetic_seed)
        name = "paired"
    if name not in BUILDERS:
        raise ValueError(f"unknown data set {name!r}; expected one of: synthetic, {', '.join(BUILDERS)}")
    if not manual_dir:
        raise ValueError(f"data set {name!r} needs manual_dir, the folder holding its images")
    root = Path(manual_dir).expanduser().resolve()
    if not root.is_dir() or not any(root.iterdir()):
        raise LayoutError(f"{root}: no such folder, or it is empty (manual_dir of data set {name!r})")
    folders = [root]
    if name == "reside_its":
        if sots_dir:
            sots_dir = Path(sots_dir).expanduser().resolve()
            if not sots_dir.is_dir():
                raise LayoutError(f"{sots_dir}: no such folder (sots_dir)")
            folders.append(sots_dir)
        else:
            warnings.warn(
                "reside_its without sots_dir: scenes that SOTS shares with ITS were not looked for, so "
                "SOTS results may be inflated; set sots_dir to leave them out",
                OverlapWarning,
                stacklevel=2,
            )
    kwargs, extra = {}, ""
    if name == "reside_its":
        kwargs = {"sots_dir": sots_dir or None, "max_hash_distance": max_hash_distance}
        extra = f"max_hash_distance={max_hash_distance}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", root.name) or "root"
    data_dir = Path(data_dir).expanduser() if data_dir else default_cache_dir() / "tfds"
    builder = BUILDERS[name](data_dir=os.fspath(data_dir / f"{slug}-{_fingerprint(folders, extra)}"), **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(root)))
    return builder
