"""Large images: dehaze a 4K image whole and in overlapping tiles; time, peak memory, difference.

    python benchmarks/large_image.py --weights ../shared/weights/minet_its_official.pth \
        --image ../shared/data/sots-indoor-mini/hazy/1400_1.png --size 2160x3840 \
        --tiles 512:64:tile,512:64:image,512:64:1024 --output out/large_image

The image is resized (bicubic) to `--size`. Each mode runs in its own process so that its peak
resident memory (`bench.peak_rss_bytes`) is its own: `whole` (one forward over the whole image, what the
network was trained for: instance norm and the attention see whole-image statistics) and
`tiled` per `--tiles S:P:STATS` (S x S tiles, P pixels of overlap, blended; see minet_jax/tiling.py;
STATS `tile`: each tile's own instance-norm and attention statistics, `image`: the whole image's,
recorded at full size (exact, but that pass needs whole-image memory), or a number N: recorded on
a copy downscaled to a long side of N).
Reports seconds, peak RSS and the PSNR of each tiled output against the whole-image output.
Writes OUTPUT/large_image.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_mode(args: argparse.Namespace) -> None:
    """Child process: dehaze once, save the output as .npy, print a JSON line."""
    import jax
    from PIL import Image

    from minet_jax import dehaze, load_pretrained
    from minet_jax.tools.measure import peak_rss_bytes
    from minet_jax.image_io import read_rgb

    h, w = (int(v) for v in args.size.lower().split("x"))
    rgb = np.asarray(Image.fromarray(read_rgb(args.image)).resize((w, h), Image.Resampling.BICUBIC))
    model = load_pretrained(args.weights)
    t0 = time.perf_counter()
    if args.stats in ("tile", "image"):
        stats, size = args.stats, 0
    else:  # a number: whole-image statistics recorded on a copy of that long side
        stats, size = "image", int(args.stats)
    out = dehaze(model, rgb, clip=True, tile=args.tile, overlap=args.overlap, tile_stats=stats, stats_size=size)
    seconds = time.perf_counter() - t0
    np.save(args.save, out.astype(np.float32))
    print(json.dumps({
        "mode": "tiled" if args.tile else "whole", "tile": args.tile, "overlap": args.overlap if args.tile else None,
        "stats": args.stats if args.tile else None,
        "seconds_with_compile": seconds, "peak_rss_bytes": peak_rss_bytes(),
        "backend": jax.default_backend(), "height": h, "width": w,
    }))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--size", default="2160x3840", help="HxW the image is resized to")
    ap.add_argument("--tiles", default="512:64:tile,512:64:image", help="comma-separated S:P:STATS (see above)")
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-image run")
    ap.add_argument("--output", required=True)
    # child-process options
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tile", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--overlap", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--save", default="", help=argparse.SUPPRESS)
    ap.add_argument("--stats", default="tile", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run_mode(args)
        return 0
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    modes = [] if args.no_whole else [(0, 0, "tile")]
    for t in (t for t in args.tiles.split(",") if t):
        parts = t.split(":")
        if len(parts) == 2:
            parts.append("tile")
        if len(parts) != 3 or not (parts[2] in ("tile", "image") or parts[2].isdigit()):
            ap.error(f"--tiles entries are S:P:STATS with STATS tile, image or a number, got {t!r}")
        modes.append((int(parts[0]), int(parts[1]), parts[2]))
    rows = []
    for tile, overlap, stats in modes:
        save = out / (f"tile{tile}_{overlap}_{stats}.npy" if tile else "whole.npy")
        cmd = [sys.executable, __file__, "--child", "--weights", args.weights, "--image", args.image, "--size",
               args.size, "--tile", str(tile), "--overlap", str(overlap), "--stats", stats, "--save", str(save),
               "--output", str(out)]  # fmt: skip
        print(" ".join(cmd), flush=True)
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            rows.append({"tile": tile, "overlap": overlap, "stats": stats, "error": res.stderr[-2000:],
                         "returncode": res.returncode})  # fmt: skip
            print(res.stderr[-2000:], flush=True)
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    from minet_jax.metrics import psnr

    whole = out / "whole.npy"
    if whole.is_file():
        ref = np.load(whole)
        for r in rows:
            if r.get("mode") == "tiled":
                tiled = np.load(out / f"tile{r['tile']}_{r['overlap']}_{r['stats']}.npy")
                r["psnr_vs_whole_db"] = psnr(tiled, ref, data_range=1.0)
    report = {"image": args.image, "size": args.size, "weights": args.weights, "runs": rows}
    (out / "large_image.json").write_text(json.dumps(report, indent=2))
    print("| mode | tile:overlap:stats | seconds (incl. compile) | peak RSS GiB | PSNR vs whole dB |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| failed | {r['tile']}:{r['overlap']}:{r['stats']} | - | - | - |")
            continue
        tl = f"{r['tile']}:{r['overlap']}:{r['stats']}" if r["tile"] else "-"
        print(f"| {r['mode']} | {tl} | {r['seconds_with_compile']:.1f} | {r['peak_rss_bytes'] / 2**30:.2f} | "
              f"{r.get('psnr_vs_whole_db', float('nan')):.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
