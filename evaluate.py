"""Dehaze a folder of images with MI-Net and score the results against ground truth.

    python evaluate.py --checkpoint CKPT --data DIR --output OUT [--border-crop N] [--limit K] [--no-images]
                       [--set model.dtype=bfloat16] [--tile 512 [--spill DIR]]

Writes ``OUT/metrics.json`` (means of per-image PSNR / SSIM on the uint8 outputs, the
authors' PSNR of the mean unclamped squared error, and the same metrics for the hazy input),
``OUT/per_image.csv`` and ``OUT/images/<name>.png``. Unreadable images are reported, skipped
and listed under ``failed``; the exit status is then 1. A non-empty OUT is refused, so that two
runs never mix; ``--overwrite`` first removes an earlier evaluation's files there (and refuses a
folder holding anything else). One photo, dehazed beside itself: ``python -m minet_jax.tools.dehaze``.
"""

from __future__ import annotations

if __name__ == "__main__":  # before JAX is imported: see minet_jax/host.py
    from minet_jax.host import with_huge_pages

    with_huge_pages()

import argparse
import csv
import json
import math
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from minet_jax.checkpoint import CheckpointError
from minet_jax.config import ConfigError, apply_overrides, nest, parse_overrides, train_config
from minet_jax.image_io import ImageReadError, read_rgb, to_uint8, write_png
from minet_jax.layouts import LayoutError, Pair, find_pairs
from minet_jax.metrics import SSIM_WINDOW, psnr, psnr_of_mean_mse, ssim

Predict = Callable[[np.ndarray], np.ndarray]
"""uint8 HxWx3 RGB -> float32 HxWx3, the unclamped network output on the [0, 1] scale."""

CSV_COLUMNS = ("name", "hazy", "clear", "psnr", "ssim", "mse_unclamped", "input_psnr", "input_ssim", "seconds")


class _ImageError(Exception):
    """A problem with one image's data (not with the model): it is skipped and reported."""


def _centre_crop_to(clear: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    dh, dw = clear.shape[0] - shape[0], clear.shape[1] - shape[1]
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        return None
    return clear[dh // 2 : clear.shape[0] - dh // 2, dw // 2 : clear.shape[1] - dw // 2]


def _crop(x: np.ndarray, n: int) -> np.ndarray:
    return x[n : x.shape[0] - n, n : x.shape[1] - n] if n else x


def _json_safe(x: Any) -> Any:
    """Replace non-finite floats (e.g. an infinite PSNR) by None: JSON has no Infinity."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def evaluate(
    predict: Predict,
    pairs: Sequence[Pair],
    out_dir: str | Path,
    border_crop: int = 0,
    save_images: bool = True,
    *,
    extra: Mapping[str, Any] | None = None,
    progress: bool = True,
    log: TextIO | None = None,
) -> dict[str, Any]:
    """Dehaze every pair's hazy image with ``predict``, score it and write the reports.

    Per image, PSNR / SSIM are computed on ``to_uint8(output)`` and on the hazy input
    against the clear image, after cropping ``border_crop`` pixels from every side;
    ``mse_unclamped`` (for `psnr_of_mean_mse`) uses the unclamped output times 255.
    A clear image larger than the hazy one by an even margin is centre-cropped to it.
    Unreadable files and other size mismatches are reported on ``log`` (stderr), skipped
    and listed in ``failed``. Exceptions raised by ``predict`` propagate.

    Writes ``metrics.json`` (the returned dict, ``extra`` merged in, non-finite values as
    null), ``per_image.csv`` and, if ``save_images``, ``images/<name>.png``.
    ``seconds_per_image`` is the median time of the ``predict`` call.
    """
    if border_crop < 0:
        raise ValueError(f"border_crop must be >= 0, got {border_crop}")
    log = sys.stderr if log is None else log
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    (image_dir if save_images else out_dir).mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    cropped_clear = 0

    def report(msg: str) -> None:
        tqdm.write(msg, file=log)

    for pair in tqdm(pairs, desc="evaluate", unit="img", disable=not progress, file=log):
        current = pair.hazy
        try:
            hazy = read_rgb(pair.hazy)
            clear = None
            if pair.clear is not None:
                current = pair.clear
                clear = read_rgb(pair.clear)
                if clear.shape != hazy.shape:
                    fitted = _centre_crop_to(clear, hazy.shape)
                    if fitted is None:
                        raise _ImageError(
                            f"size mismatch: hazy {pair.hazy.name} is {hazy.shape[1]}x{hazy.shape[0]}, "
                            f"clear is {clear.shape[1]}x{clear.shape[0]}"
                        )
                    if cropped_clear == 0:
                        report(
                            f"note: clear images larger than the hazy ones by an even margin are centre-cropped "
                            f"to the hazy size (first: {pair.clear.name} {clear.shape[1]}x{clear.shape[0]} -> "
                            f"{hazy.shape[1]}x{hazy.shape[0]})"
                        )
                    cropped_clear += 1
                    clear = fitted
                h, w = hazy.shape[0] - 2 * border_crop, hazy.shape[1] - 2 * border_crop
                if min(h, w) < SSIM_WINDOW:
                    raise _ImageError(
                        f"image {hazy.shape[1]}x{hazy.shape[0]} is too small for SSIM "
                        f"(window {SSIM_WINDOW}) after a border crop of {border_crop}"
                    )
        except (ImageReadError, _ImageError) as e:
            failed.append({"file": str(current), "error": str(e)})
            report(f"error: skipping {current}: {e}")
            continue

        t0 = time.perf_counter()
        out = np.asarray(predict(hazy), dtype=np.float32)
        seconds = time.perf_counter() - t0
        if out.shape != hazy.shape:
            raise ValueError(f"predict returned shape {out.shape} for input {hazy.shape} ({pair.hazy})")
        out_u8 = to_uint8(out)
        if save_images:
            write_png(image_dir / f"{pair.name}.png", out_u8)

        row: dict[str, Any] = {"name": pair.name, "hazy": str(pair.hazy), "seconds": seconds}
        if clear is not None:
            c_out, c_u8, c_hazy, c_clear = (_crop(x, border_crop) for x in (out, out_u8, hazy, clear))
            row.update(
                clear=str(pair.clear),
                psnr=psnr(c_u8, c_clear),
                ssim=ssim(c_u8, c_clear),
                mse_unclamped=float(np.mean((c_out.astype(np.float64) * 255.0 - c_clear) ** 2)),
                input_psnr=psnr(c_hazy, c_clear),
                input_ssim=ssim(c_hazy, c_clear),
            )
        rows.append(row)

    scored = [r for r in rows if "psnr" in r]
    metrics: dict[str, Any] = {"images": len(scored) if scored else len(rows)}
    if scored:
        if len(scored) != len(rows):
            metrics["dehazed"] = len(rows)
        metrics.update(
            psnr=_mean([r["psnr"] for r in scored]),
            ssim=_mean([r["ssim"] for r in scored]),
            psnr_of_mean_mse=psnr_of_mean_mse([r["mse_unclamped"] for r in scored]),
            input_psnr=_mean([r["input_psnr"] for r in scored]),
            input_ssim=_mean([r["input_ssim"] for r in scored]),
            border_crop=border_crop,
            clear_centre_cropped=cropped_clear,
        )
    metrics["seconds_per_image"] = statistics.median(r["seconds"] for r in rows) if rows else None
    metrics["failed"] = failed
    metrics.update(extra or {})

    with open(out_dir / "metrics.json", "w") as f:
        json.dump(_json_safe(metrics), f, indent=2)
        f.write("\n")
    with open(out_dir / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return metrics


def default_predict_factory(
    checkpoint: str,
    overrides: dict[str, Any] | None = None,
    tile: int = 0,
    tiling: str = "exact",
    spill: str | None = None,
    overlap: int = 64,
    stats_size: int = 0,
) -> Predict:
    """Load MI-Net from a ``.pth`` file or an orbax checkpoint folder; return its unclamped predictor
    (whole images, or ``tile`` x ``tile`` pieces when ``tile > 0``; see ``dehaze``)."""
    from minet_jax import dehaze, load_pretrained

    model = load_pretrained(checkpoint, **(overrides or {}))
    if tile and tiling == "exact":
        from minet_jax.streaming import check_streamable

        check_streamable(model)  # a forward that stops on a whole-image residual: refused before any image

    def predict(rgb: np.ndarray) -> np.ndarray:
        out = dehaze(
            model, rgb, clip=False, tile=tile, tiling=tiling, spill=spill, overlap=overlap, stats_size=stats_size
        )
        return np.asarray(out, dtype=np.float32)

    return predict


def model_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`--set model.KEY=VALUE` items (rooted at the training config, as everywhere) as the nested
    keyword overrides `load_pretrained` takes; anything but `model.*` is refused."""
    pairs = parse_overrides(items)
    for key, _ in pairs:
        if not key.startswith("model."):
            raise ConfigError(
                f"--set {key}: evaluate.py takes model settings only (model.KEY=VALUE, e.g. model.dtype=bfloat16)"
            )
    apply_overrides(train_config(), pairs)  # unknown keys and wrong types, before anything loads
    return nest((key.removeprefix("model."), value) for key, value in pairs)


OUTPUTS = ("metrics.json", "per_image.csv", "images")


def prepare_output(out_dir: Path, overwrite: bool) -> str | None:
    """Make `out_dir` ready for a new evaluation; the reason it cannot be, or None. A non-empty
    folder is refused unless `overwrite`, which removes only an earlier evaluation's outputs."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        return f"--output {out_dir} is a file, expected a folder"
    present = sorted(p.name for p in out_dir.iterdir())
    if not present:
        return None
    if not overwrite:
        held = ", ".join(present[:3]) + (" ..." if len(present) > 3 else "")
        return (
            f"--output {out_dir} is not empty (holds {held}): choose another folder, or pass --overwrite "
            "to replace an earlier evaluation there"
        )
    others = [n for n in present if n not in OUTPUTS]
    if others:
        return f"--output {out_dir} holds files evaluate.py did not write ({', '.join(others[:3])}); not clearing it"
    for name in present:
        path = out_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint", required=True, help="MI-Net weights: a PyTorch .pth file or an orbax checkpoint folder"
    )
    p.add_argument(
        "--data", required=True, help="data folder (hazy/ + clear/|gt/|GT/, hazy/ alone, or images) or one image"
    )
    p.add_argument("--output", required=True, help="output folder for metrics.json, per_image.csv and images/")
    p.add_argument("--border-crop", type=int, default=0, metavar="N", help="ignore N pixels on every side when scoring")
    p.add_argument("--limit", type=int, default=None, metavar="K", help="only the first K images (natural order)")
    p.add_argument("--no-images", action="store_true", help="do not save the dehazed images")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier evaluation's outputs in --output (else refused)"
    )
    p.add_argument(
        "--tile", type=int, default=0, metavar="S",
        help="run the network over S x S tiles, memory bounded by the tile (0 = whole images); exact by default",
    )  # fmt: skip
    p.add_argument(
        "--tiling", choices=["exact", "approx-tile-stats", "approx-image-stats"], default="exact",
        help="with --tile: exact (layer by layer with whole-image statistics: the whole-image output), or "
        "approximate, blending overlapping tiles: approx-tile-stats (each tile's own statistics; SOTS-mini, "
        "256-pixel tiles: 27.44 against 36.38 dB) or approx-image-stats (statistics recorded on a copy of "
        "long side --stats-size: 0 = full size, 35.71 dB; 256: 28.31 dB)",
    )  # fmt: skip
    p.add_argument(
        "--spill", default=None, metavar="DIR", help="with --tile (exact): keep feature maps in files in DIR"
    )
    p.add_argument("--overlap", type=int, default=64, metavar="P", help="tile overlap of the approx- tilings")
    p.add_argument(
        "--stats-size", type=int, default=0, metavar="N",
        help="long side of the copy approx-image-stats records statistics on (0 = full size)",
    )  # fmt: skip
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a model setting that holds no weights, e.g. --set model.dtype=bfloat16, --set model.T=16, "
        "--set model.solver.forward=fixed_point --set model.solver.tol=1e-3 (repeatable)",
    )  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None, predict_factory: Callable[[str], Predict] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 some images failed, 2 bad arguments or data).

    ``predict_factory(checkpoint_path) -> predict`` defaults to loading MI-Net; tests inject their own.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.border_crop < 0:
        parser.error(f"--border-crop must be >= 0, got {args.border_crop}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    if args.tile < 0 or (args.tile and args.tiling == "exact" and (args.tile < 8 or args.tile % 2)):
        parser.error(f"--tile must be 0 (whole images) or an even number >= 8, got {args.tile}")
    if args.tile and args.tiling != "exact" and not 0 <= args.overlap < args.tile:
        parser.error(f"need 0 <= --overlap < --tile, got --tile {args.tile} --overlap {args.overlap}")
    if args.spill is not None and not (args.tile and args.tiling == "exact"):
        parser.error("--spill needs --tile S (exact tiling)")
    if args.stats_size < 0:
        parser.error(f"--stats-size must be >= 0 (0 = full size), got {args.stats_size}")
    if not Path(args.checkpoint).exists():
        print(f"error: checkpoint not found: {args.checkpoint}", file=sys.stderr)
        return 2
    try:
        pairs = find_pairs(args.data)
    except LayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.limit is not None:
        pairs = pairs[: args.limit]

    try:
        overrides = model_overrides(args.set)
    except ConfigError as e:
        parser.error(str(e))
    problem = prepare_output(Path(args.output), args.overwrite)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if predict_factory is None:
        try:
            predict = default_predict_factory(
                args.checkpoint, overrides, args.tile, args.tiling, args.spill, args.overlap, args.stats_size
            )
        except (CheckpointError, ConfigError, ValueError) as e:  # damaged, unknown or mismatched weights
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        predict = predict_factory(args.checkpoint)
    metrics = evaluate(
        predict,
        pairs,
        args.output,
        border_crop=args.border_crop,
        save_images=not args.no_images,
        extra={
            "checkpoint": str(args.checkpoint),
            "data": str(args.data),
            "model_overrides": overrides,
            "tile": args.tile,
            "tiling": args.tiling if args.tile else None,
            "spill": bool(args.spill) if args.tile else None,
            "overlap": args.overlap if args.tile and args.tiling != "exact" else None,
            "stats_size": args.stats_size if args.tile and args.tiling == "approx-image-stats" else None,
        },  # fmt: skip
    )

    if "psnr" in metrics:
        print(
            f"{metrics['images']} images: PSNR {metrics['psnr']:.4f} dB, SSIM {metrics['ssim']:.4f}, "
            f"PSNR of mean MSE {metrics['psnr_of_mean_mse']:.4f} dB "
            f"(hazy input: PSNR {metrics['input_psnr']:.4f} dB, SSIM {metrics['input_ssim']:.4f})"
        )
    else:
        print(f"{metrics['images']} images dehazed (no ground truth found)")
    print(f"wrote {Path(args.output) / 'metrics.json'}")
    if metrics["failed"]:
        print(f"{len(metrics['failed'])} file(s) failed, see 'failed' in metrics.json", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
