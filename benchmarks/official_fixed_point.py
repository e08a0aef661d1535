"""Does each IM-block of the authors' released network converge when iterated to a fixed point?

    python benchmarks/official_fixed_point.py --weights ../shared/weights/minet_its_official.pth \
        --data ../shared/data/sots-indoor-mini --output out/official_fixed_point [--limit N] [--every K]

For every image: the exact network (T = 8 unrolled steps, eta = 1) and the same weights with the
`fixed_point` forward (iterate until the relative residual < tol, at most max_iter); per block
the iterations used, the final residual and whether it converged; PSNR / SSIM against the clear
image (uint8-rounded outputs) for both. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minet_jax import load_pretrained  # noqa: E402
from minet_jax.image_io import read_rgb, to_uint8  # noqa: E402
from minet_jax.inference import as_rgb01, from_network, to_network  # noqa: E402
from minet_jax.layouts import find_pairs  # noqa: E402
from minet_jax.metrics import psnr, ssim  # noqa: E402


def run(model, rgb: np.ndarray):
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, x):
        m = nnx.merge(graphdef, state)
        y, aux = m(to_network(x, m.config.input_format), with_aux=True)
        return from_network(y, m.config.input_format), aux["solver_stats"]

    y, stats = fwd(state, as_rgb01(rgb)[None])
    return np.asarray(y[0]), [(int(s.iterations), float(s.residual)) for s in stats]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--every", type=int, default=1, help="take every K-th image (natural order)")
    args = p.parse_args()
    exact = load_pretrained(args.weights)
    fixed = load_pretrained(
        args.weights, solver={"forward": "fixed_point", "tol": args.tol, "max_iter": args.max_iter}
    )
    pairs = find_pairs(args.data)[:: args.every]
    pairs = pairs[: args.limit] if args.limit else pairs
    records = []
    for pair in pairs:
        hazy, clear = read_rgb(pair.hazy), read_rgb(pair.clear)
        y8, s8 = run(exact, hazy)
        yf, sf = run(fixed, hazy)
        rec = {
            "name": pair.name,
            "exact_psnr": psnr(to_uint8(y8), clear), "exact_ssim": ssim(to_uint8(y8), clear),
            "fixed_psnr": psnr(to_uint8(yf), clear), "fixed_ssim": ssim(to_uint8(yf), clear),
            "exact_vs_fixed_psnr": psnr(to_uint8(y8), to_uint8(yf)),
            "exact_T8_residual": [r for _, r in s8],
            "fixed_iterations": [i for i, _ in sf], "fixed_residual": [r for _, r in sf],
            "fixed_converged": [r < args.tol for _, r in sf],
        }  # fmt: skip
        records.append(rec)
        print(json.dumps(rec), flush=True)
    summary = {
        "images": len(records), "tol": args.tol, "max_iter": args.max_iter,
        "exact_psnr": statistics.mean(r["exact_psnr"] for r in records),
        "fixed_psnr": statistics.mean(r["fixed_psnr"] for r in records),
        "exact_ssim": statistics.mean(r["exact_ssim"] for r in records),
        "fixed_ssim": statistics.mean(r["fixed_ssim"] for r in records),
        "blocks": [
            {
                "block": b + 1,
                "converged_fraction": statistics.mean(float(r["fixed_converged"][b]) for r in records),
                "median_iterations": statistics.median(r["fixed_iterations"][b] for r in records),
                "max_iterations": max(r["fixed_iterations"][b] for r in records),
                "median_final_residual": statistics.median(r["fixed_residual"][b] for r in records),
                "median_residual_at_T8": statistics.median(r["exact_T8_residual"][b] for r in records),
            }
            for b in range(3)
        ],
    }  # fmt: skip
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "official_fixed_point.json").write_text(json.dumps({"summary": summary, "images": records}, indent=2))
    print(f"\n{summary['images']} images, tol {args.tol}, max_iter {args.max_iter}")
    print(f"PSNR exact T=8 {summary['exact_psnr']:.3f} dB | fixed point {summary['fixed_psnr']:.3f} dB")
    print("| block | converged | median iterations | max iterations | median final residual | median residual at T=8 |")
    print("|---|---|---|---|---|---|")
    for b in summary["blocks"]:
        print(
            f"| {b['block']} | {b['converged_fraction']:.0%} | {b['median_iterations']} | {b['max_iterations']} | "
            f"{b['median_final_residual']:.2e} | {b['median_residual_at_T8']:.2e} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
