"""Large images: whole-image inference against the exact tiled executor (and the approximate
tilings), each mode in its own process: seconds, peak resident memory, difference to whole.

    python benchmarks/large_image.py --weights ../shared/weights/minet_its_official.pth \
        --image ../shared/data/sots-indoor-mini/hazy/1400_1.png --sizes 2160x3840 \
        --modes whole,exact:256,exact:512,exact:1024,exact:512:spill --output out/large_image

The image is resized (bicubic) to each of `--sizes` (HxW). Modes: `whole` (one forward over the
whole image), `exact:S` (minet_jax/streaming.py over S x S tiles, feature maps in RAM),
`exact:S:spill` (feature maps in files under OUTPUT/spill),
`approx-tile-stats:S:P` and `approx-image-stats:S:P[:N]` (overlapping tiles blended; see
`dehaze`). `--skip-whole-above MPIX` skips `whole` where it cannot fit (it needs ~1.5 GiB per
megapixel on the CPU). Outputs are compared with `whole` of the same size, or else with the
first exact mode. Writes OUTPUT/large_image.json and .md and prints the table.
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

if __name__ == "__main__":  # before JAX is imported (the children inherit it): see minet_jax/host.py
    from minet_jax.host import with_huge_pages

    with_huge_pages()


def parse_mode(spec: str) -> dict:
    parts = spec.split(":")
    kind = parts[0]
    try:
        if kind == "whole" and len(parts) == 1:
            return {"mode": spec, "tile": 0}
        if kind == "exact" and len(parts) in (2, 3) and (len(parts) == 2 or parts[2] == "spill"):
            return {"mode": spec, "tile": int(parts[1]), "tiling": "exact", "spill": len(parts) == 3}
        if kind == "approx-tile-stats" and len(parts) == 3:
            return {"mode": spec, "tile": int(parts[1]), "tiling": kind, "overlap": int(parts[2])}
        if kind == "approx-image-stats" and len(parts) in (3, 4):
            size = int(parts[3]) if len(parts) == 4 else 0
            return {"mode": spec, "tile": int(parts[1]), "tiling": kind, "overlap": int(parts[2]), "stats_size": size}
    except ValueError:
        pass
    raise ValueError(
        f"--modes: {spec!r} is not whole, exact:S[:spill], approx-tile-stats:S:P or approx-image-stats:S:P[:N]"
    )


def run_mode(args: argparse.Namespace) -> None:
    """Child process: dehaze once, save the output as .npy, print a JSON line."""
    import jax
    from PIL import Image

    from minet_jax import dehaze, load_pretrained
    from minet_jax.image_io import read_rgb
    from minet_jax.tools.measure import peak_rss_bytes

    mode = parse_mode(args.mode)
    h, w = (int(v) for v in args.size.lower().split("x"))
    rgb = np.asarray(Image.fromarray(read_rgb(args.image)).resize((w, h), Image.Resampling.BICUBIC))
    model = load_pretrained(args.weights)
    kw = {}
    if mode["tile"]:
        kw = {"tile": mode["tile"], "tiling": mode["tiling"], "overlap": mode.get("overlap", 64),
              "stats_size": mode.get("stats_size", 0),
              "spill": str(Path(args.output) / "spill") if mode.get("spill") else None}  # fmt: skip
    t0 = time.perf_counter()
    out = dehaze(model, rgb, clip=True, **kw)
    seconds = time.perf_counter() - t0
    warm = []
    for _ in range(args.repeat):  # the same call again, compiled: what each further image of a batch costs
        t0 = time.perf_counter()
        again = dehaze(model, rgb, clip=True, **kw)
        warm.append(time.perf_counter() - t0)
        if not np.array_equal(again, out):
            raise RuntimeError(f"{args.mode}: a repeated call gave another output")
    np.save(args.save, out.astype(np.float32))
    print(json.dumps({**mode, "size": args.size, "seconds_with_compile": seconds, "peak_rss_bytes": peak_rss_bytes(),
                      "seconds_warm": warm, "seconds_warm_median": float(np.median(warm)) if warm else None,
                      "backend": jax.default_backend()}))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--sizes", default="2160x3840", help="comma-separated HxW the image is resized to")
    ap.add_argument("--modes", default="whole,exact:512,exact:512:spill", help="comma-separated modes (see above)")
    ap.add_argument("--skip-whole-above", type=float, default=0.0, metavar="MPIX",
                    help="skip `whole` for sizes above this many megapixels (0: never)")  # fmt: skip
    ap.add_argument("--repeat", type=int, default=0, metavar="N",
                    help="also time N further calls in the same process, compiled (median reported)")  # fmt: skip
    ap.add_argument("--output", required=True)
    # child-process options
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="", help=argparse.SUPPRESS)
    ap.add_argument("--size", default="", help=argparse.SUPPRESS)
    ap.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run_mode(args)
        return 0
    try:
        modes = [parse_mode(m) for m in args.modes.split(",") if m]
    except ValueError as e:
        ap.error(str(e))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    from minet_jax.tools.measure import machine

    rows = []
    for size in (s for s in args.sizes.split(",") if s):
        h, w = (int(v) for v in size.lower().split("x"))
        saved = {}
        for mode in modes:
            row = {**mode, "size": size}
            if mode["mode"] == "whole" and args.skip_whole_above and h * w / 1e6 > args.skip_whole_above:
                rows.append({**row, "skipped": f"whole image above {args.skip_whole_above} MPix (--skip-whole-above)"})
                continue
            save = out / f"{size}_{mode['mode'].replace(':', '_')}.npy"
            cmd = [sys.executable, __file__, "--child", "--weights", args.weights, "--image", args.image,
                   "--size", size, "--mode", mode["mode"], "--save", str(save), "--output", str(out),
                   "--repeat", str(args.repeat)]  # fmt: skip
            print(" ".join(cmd), flush=True)
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                rows.append({**row, "error": res.stderr[-2000:], "returncode": res.returncode})
                print(res.stderr[-2000:], flush=True)
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            saved[mode["mode"]] = save
            print(json.dumps(rows[-1]), flush=True)
        ref_mode = "whole" if "whole" in saved else next((m for m in saved if m.startswith("exact")), None)
        if ref_mode is None:
            continue
        from minet_jax.metrics import psnr

        ref = np.load(saved[ref_mode])
        whole = next((r for r in rows if r["size"] == size and r["mode"] == ref_mode), None)
        for r in rows:
            if r["size"] == size and r["mode"] in saved and r["mode"] != ref_mode:
                y = np.load(saved[r["mode"]])
                r["compared_with"] = ref_mode
                r["max_abs_diff"] = float(np.abs(y - ref).max())
                r["psnr_vs_reference_db"] = float(psnr(y, ref, data_range=1.0))
                if ref_mode == "whole":
                    r["time_ratio"] = r["seconds_with_compile"] / whole["seconds_with_compile"]
                    r["rss_ratio"] = r["peak_rss_bytes"] / whole["peak_rss_bytes"]
                    if r.get("seconds_warm_median") and whole.get("seconds_warm_median"):
                        r["warm_time_ratio"] = r["seconds_warm_median"] / whole["seconds_warm_median"]
        for path in saved.values():
            path.unlink()
    report = {"machine": machine(), "image": args.image, "weights": args.weights, "runs": rows}
    (out / "large_image.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"Large images on {report['machine'].get('cpu', '?')} ({time.strftime('%Y-%m-%d')}); output in [0, 1] RGB, "
        "each mode in its own process; first call: seconds including compilation"
        + (f"; compiled: median of the {args.repeat} further calls in that process (--repeat)." if args.repeat else "."),
        "",
        "| size | mode | first call s | x whole | compiled s | x whole | peak RSS GiB | x whole | max abs diff "
        "| PSNR vs ref dB | ref |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['size']} | {r['mode']} | {r.get('skipped') or 'failed'} | | | | | | | | |")
            continue

        def f(key, fmt):
            return fmt.format(r[key]) if r.get(key) is not None else "-"

        lines.append(
            f"| {r['size']} | {r['mode']} | {r['seconds_with_compile']:.1f} | {f('time_ratio', '{:.2f}')} | "
            f"{f('seconds_warm_median', '{:.1f}')} | {f('warm_time_ratio', '{:.2f}')} | "
            f"{r['peak_rss_bytes'] / 2**30:.2f} | {f('rss_ratio', '{:.2f}')} | {f('max_abs_diff', '{:.1e}')} | "
            f"{f('psnr_vs_reference_db', '{:.2f}')} | {r.get('compared_with', '-')} |"
        )
    (out / "large_image.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
