"""Training and validation data: grain pipelines over the TFDS builders of `minet_jax.datasets`.

Training batch ``k`` (0-based) is a pure function of the data, ``seed`` and ``k``. The pipeline is
a random-access grain `MapDataset`::

    source -> shuffle (a fresh permutation each epoch) -> repeat forever -> decode
           -> random crop / flip (per-element generator from (seed, element index)) -> batch

so batch ``k`` holds elements ``k*B .. k*B+B-1`` of that infinite sequence, and resuming at
``start_step`` just starts reading at batch ``start_step``: the batches are those an
uninterrupted run would have seen, with or without worker processes (grain hands batch ``k`` to
worker ``k mod workers`` and returns them in order).

grain and TFDS are imported lazily, so this module stays cheap to import. The fields of
`config.data` are in `minet_jax.config.data_config`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from minet_jax.image_io import decode_rgb

__all__ = ["train_dataset", "train_iterator", "val_images"]


def _builder(name: str, manual_dir: str, cfg: ml_collections.ConfigDict):
    from minet_jax.datasets import build_dataset

    return build_dataset(name, manual_dir or None, cfg.data_dir or None, sots_dir=cfg.sots_dir or None)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# Element transforms: module-level callables, picklable for grain's worker processes.


def _decode(example: dict) -> dict:
    name = _text(example["name"])
    return {
        "hazy": decode_rgb(example["hazy"], f"{name} (hazy)"),
        "clear": decode_rgb(example["clear"], f"{name} (clear)"),
        "name": name,
    }


class _FreshHaze:
    """Replace the hazy image by new synthetic haze over the clear one (`synthetic.add_haze`)."""

    def __call__(self, ex: dict, rng: np.random.Generator) -> dict:
        from minet_jax.synthetic import add_haze

        return {**ex, "hazy": add_haze(ex["clear"], rng)}


class _Augment:
    """Random square crop (crop_size > 0) and horizontal flip, the same for hazy and clear."""

    def __init__(self, crop_size: int, flip: bool, permute_channels: bool = False) -> None:
        self.crop_size = crop_size
        self.flip = flip
        self.permute_channels = permute_channels

    def __call__(self, ex: dict, rng: np.random.Generator) -> dict:
        hazy, clear = ex["hazy"], ex["clear"]
        if self.crop_size:
            s = self.crop_size
            h, w = hazy.shape[:2]
            if h < s or w < s:
                raise ValueError(f"{ex['name']}: image is {h}x{w}, smaller than crop_size {s}")
            top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            hazy, clear = hazy[top : top + s, left : left + s], clear[top : top + s, left : left + s]
        if self.flip and rng.random() < 0.5:
            hazy, clear = hazy[:, ::-1], clear[:, ::-1]
        if self.permute_channels:  # haze with a grey airlight commutes with permuting R, G, B
            order = rng.permutation(3)
            hazy, clear = hazy[..., order], clear[..., order]
        return {"hazy": hazy, "clear": clear, "name": ex["name"]}


def _stack(elements: Sequence[dict]) -> dict[str, np.ndarray]:
    shapes = [e["hazy"].shape for e in elements]
    if len(set(shapes)) > 1:
        sizes = ", ".join(f"{e['name']} {s[0]}x{s[1]}" for e, s in zip(elements, shapes))
        raise ValueError(f"a batch's images must share a size (set data.crop_size, or batch_size 1): {sizes}")
    return {k: np.stack([e[k] for e in elements]).astype(np.float32) / np.float32(255) for k in ("hazy", "clear")}


def train_dataset(
    cfg: ml_collections.ConfigDict, *, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1
):
    """The infinite training `grain.MapDataset` of batches: ``ds[k]`` is batch ``k``.

    With several processes, `batch_size` is the global batch: process p gets the elements
    p, p + P, p + 2P, ... of the global stream, so the processes' batch k together hold exactly
    the elements of the single-process batch k."""
    import grain

    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f"batch_size must be a positive multiple of the process count {process_count}, got {batch_size}"
        )
    builder = _builder(cfg.name, cfg.manual_dir, cfg)
    if "train" not in builder.info.splits:
        raise ValueError(f"data set {cfg.name!r} has no train split (it has: {', '.join(builder.info.splits)})")
    source = builder.as_data_source("train")
    if len(source) == 0:
        raise ValueError(f"data set {cfg.name!r} has no training examples")
    shuffle_seed, augment_seed, haze_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(3))
    ds = grain.MapDataset.source(source).shuffle(seed=shuffle_seed).repeat().map(_decode)  # epoch e: seed + e
    if cfg.fresh_haze:
        ds = ds.random_map(_FreshHaze(), seed=haze_seed)
    augment = _Augment(int(cfg.crop_size), bool(cfg.flip), bool(cfg.permute_channels))
    return ds.random_map(augment, seed=augment_seed)[process_index::process_count].batch(
        batch_size // process_count, drop_remainder=True, batch_fn=_stack
    )


def train_iterator(
    cfg: ml_collections.ConfigDict,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches ``{"hazy", "clear"}`` of float32 ``[B, H, W, 3]`` RGB on [0, 1], from batch
    `start_step` on (this process's share of the global batch `batch_size`). Call ``close()`` on
    it when done if ``cfg.workers > 0``."""
    import grain

    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    ds = train_dataset(cfg, batch_size=batch_size, seed=seed, process_index=process_index, process_count=process_count)[
        start_step:
    ]
    if cfg.workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain reads its absl flags; outside an absl app take the defaults
            flags.FLAGS.mark_as_parsed()
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(cfg.workers), per_worker_buffer_size=2))
    else:
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    return iter(it)


def _val_source(cfg: ml_collections.ConfigDict) -> tuple[str, str]:
    """(data set name, folder) of the validation data."""
    name = cfg.val_name or cfg.name
    if cfg.val_manual_dir:
        return name, cfg.val_manual_dir
    if name == cfg.name:
        return name, cfg.manual_dir
    if name.startswith("sots") and cfg.sots_dir:
        return name, cfg.sots_dir
    if name == "synthetic":
        return name, ""
    raise ValueError(f"data.val_name is {name!r}: set data.val_manual_dir to its folder")


def val_images(cfg: ml_collections.ConfigDict) -> list[dict]:
    """Whole validation pairs ``{"hazy", "clear"}`` (float32 ``[H, W, 3]`` RGB on [0, 1]) with
    ``"name"``, in natural name order, at most ``cfg.val_limit`` (evenly spread; 0 = all)."""
    from concurrent.futures import ThreadPoolExecutor

    name, folder = _val_source(cfg)
    builder = _builder(name, folder, cfg)
    splits = builder.info.splits
    split = cfg.val_split
    if not split:
        split = next((s for s in ("validation", "test") if s in splits), None)
        separate = (name, folder) != (cfg.name, cfg.manual_dir)
        if split is None and separate:
            split = "train"  # a folder given for validation only
        if split is None:
            warnings.warn(
                f"data set {name!r} ({folder or 'embedded'}) has no validation or test split and no separate "
                "validation data was given (data.val_name / data.val_manual_dir): no validation",
                stacklevel=2,
            )
            return []
    if split not in splits:
        raise ValueError(f"data set {name!r} has no split {split!r} (it has: {', '.join(splits)})")
    source = builder.as_data_source(split)
    indices = range(len(source))
    if cfg.val_limit and cfg.val_limit < len(source):
        indices = sorted({round(i) for i in np.linspace(0, len(source) - 1, cfg.val_limit)})

    def load(i: int) -> dict:
        ex = _decode(source[i])
        return {
            "hazy": ex["hazy"].astype(np.float32) / np.float32(255),
            "clear": ex["clear"].astype(np.float32) / np.float32(255),
            "name": ex["name"],
        }

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(load, indices))
