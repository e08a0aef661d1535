"""Dehaze photos and write each result beside its input.

    python -m minet_jax.tools.dehaze --checkpoint minet_its_official.pth photo.jpg [more.png ...]
    python -m minet_jax.tools.dehaze --checkpoint runs/default/checkpoints/150 photo.jpg --suffix _clear

Any size and any common format (JPEG, PNG, WebP, TIFF, BMP; 16-bit and greyscale too) go in; out
comes `photo_dehazed.png` in the input's folder (or in `--output-dir`). An existing output is
not replaced without `--overwrite`. `--checkpoint` takes the authors' `.pth` or a minet-jax
checkpoint (a training step folder, or a workdir's `checkpoints/`, then its newest step).
"""

from __future__ import annotations

if __name__ == "__main__":  # before JAX is imported: see minet_jax/host.py
    from minet_jax.host import with_huge_pages

    with_huge_pages()

import argparse
import sys
import time
from pathlib import Path

from minet_jax.checkpoint import CheckpointError
from minet_jax.config import ConfigError
from minet_jax.image_io import ImageReadError, read_rgb, to_uint8, write_png


def output_path(image: Path, suffix: str, output_dir: Path | None) -> Path:
    """Where the dehazed `image` goes: `<dir>/<stem><suffix>.png`."""
    return (output_dir or image.parent) / f"{image.stem}{suffix}.png"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path, help="photos to dehaze")
    p.add_argument("--checkpoint", required=True, help="the authors' .pth or a minet-jax checkpoint folder")
    p.add_argument("--suffix", default="_dehazed", help="added to each output's name (default: _dehazed)")
    p.add_argument("--output-dir", type=Path, default=None, help="write the results here instead of beside the inputs")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    p.add_argument(
        "--tile", type=int, default=0, metavar="S",
        help="run the network over S x S tiles (exact: the whole-image result, memory bounded by the tile)",
    )  # fmt: skip
    p.add_argument("--spill", default=None, metavar="DIR", help="with --tile: keep feature maps in files in DIR")
    return p


def main(argv: list[str] | None = None) -> int:
    """0: every image written; 1: some could not be read (the others are written); 2: bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tile and (args.tile < 8 or args.tile % 2) or args.tile < 0:
        parser.error(f"--tile must be 0 (whole images) or an even number >= 8, got {args.tile}")
    if args.spill is not None and not args.tile:
        parser.error("--spill needs --tile S")
    from minet_jax import dehaze, load_pretrained  # noqa: PLC0415 (JAX is a heavy import; --help stays quick)

    outputs = {image: output_path(image, args.suffix, args.output_dir) for image in args.images}
    if not args.overwrite:
        taken = [str(o) for o in outputs.values() if o.exists()]
        if taken:
            print(f"error: {taken[0]} exists (pass --overwrite to replace it, or choose --suffix)", file=sys.stderr)
            return 2
    try:
        model = load_pretrained(args.checkpoint)
        if args.tile:
            from minet_jax.streaming import check_streamable  # noqa: PLC0415

            check_streamable(model)
    except (FileNotFoundError, CheckpointError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for image, out in outputs.items():
        try:
            rgb = read_rgb(image)
        except ImageReadError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        t = time.perf_counter()
        result = to_uint8(dehaze(model, rgb, tile=args.tile, spill=args.spill))
        out.parent.mkdir(parents=True, exist_ok=True)
        write_png(out, result)
        print(f"{image} -> {out} ({rgb.shape[1]}x{rgb.shape[0]}, {time.perf_counter() - t:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
