"""How many cores each of MI-Net's 3x3 convolutions keeps busy on XLA's CPU backend.

    python benchmarks/conv_threads.py --output benchmarks/results/conv_threads_cpu

Times each convolution role (forward, input gradient as conv.py computes it, weight gradient by
JAX's rule) alone, jitted, at the feature-map shapes the network runs (64 channels): its median
wall time, GFLOP/s and the process's CPU time over wall time while it ran (1.0 = one core, 2.0 =
two). On JAX 0.10.2, 2-core EPYC, YNNPACK splits a convolution over cores only along the output
width, and only from ~112 columns: the training step's 64x64 maps (128-pixel crops) run on one core
each, which is why `model.batch_split` runs a batch as independent groups. Writes OUTPUT/
conv_threads.json and .md.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (label, N, H, W): training at 128-px crops (64x64 after the stride-2 conv3), the same split in
# two groups, the full-resolution 128x128 layers, and one 620x460 image's 230x310 maps.
SHAPES = [
    ("train 128-px crops, batch 4", 4, 64, 64),
    ("one group of 2 (batch_split=2)", 2, 64, 64),
    ("train, full-resolution layers", 4, 128, 128),
    ("620x460 inference", 1, 230, 310),
]


def cpu_ratio(fn, reps: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds / wall seconds) of `fn()` over `reps` calls."""
    fn()
    walls, ratios = [], []
    for _ in range(reps):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        walls.append(wall)
        ratios.append((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / wall)
    return statistics.median(walls), statistics.median(ratios)


def measure(reps: int, dilation: int) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from minet_jax import conv

    rows = []
    for label, n, h, w in SHAPES:
        kx, kw, kg = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (n, h, w, 64))
        k = 0.05 * jax.random.normal(kw, (3, 3, 64, 64))
        g = jax.random.normal(kg, (n, h, w, 64))
        flipped = jnp.swapaxes(jnp.flip(k, (0, 1)), 2, 3)
        d = (dilation, dilation)
        fns = {
            "forward": (jax.jit(lambda x, k: conv._correlate(x, k, d, None)), (x, k)),
            "input gradient": (jax.jit(lambda g, k: conv._correlate(g, k, d, None)), (g, flipped)),
            "weight gradient": (
                jax.jit(lambda x, k, g: jax.vjp(lambda k: conv._correlate(x, k, d, None), k)[1](g)[0]),
                (x, k, g),
            ),
        }
        flop = 2 * n * h * w * 64 * 64 * 9
        for role, (f, args) in fns.items():
            wall, ratio = cpu_ratio(lambda f=f, args=args: jax.block_until_ready(f(*args)), reps)
            rows.append({"shape": label, "nhw": [n, h, w], "role": role, "dilation": dilation, "median_s": wall,
                         "gflops": flop / wall / 1e9, "cpu_over_wall": ratio})  # fmt: skip
            print(f"{label:32s} {role:16s} {wall * 1e3:7.1f} ms {flop / wall / 1e9:5.0f} GFLOP/s cores {ratio:.2f}")
    return rows


def markdown(report: dict) -> str:
    m = report["machine"]
    out = [
        f"# 3x3 convolutions, 64 -> 64 channels, dilation {report['dilation']}: cores busy ({m['cores']}-core "
        f"{m['cpu']}, jax {m['jax']}, {report['date']})",
        "",
        f"Each alone, jitted, median of {report['reps']}; cores = process CPU time / wall time while it ran.",
        "",
        "| feature map (N x H x W) | role | median | GFLOP/s | cores |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        n, h, w = r["nhw"]
        out.append(f"| {r['shape']} ({n} x {h} x {w}) | {r['role']} | {r['median_s'] * 1e3:.1f} ms | "
                   f"{r['gflops']:.0f} | {r['cpu_over_wall']:.2f} |")  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--dilation", type=int, default=1, choices=[1, 2, 4])
    p.add_argument("--output", default="", help="folder for conv_threads.json and .md")
    args = p.parse_args(argv)
    from minet_jax.tools.measure import machine, save_report

    rows = measure(args.reps, args.dilation)
    report = {"machine": {**machine(), "cores": len(os.sched_getaffinity(0))},
              "date": time.strftime("%Y-%m-%d"), "reps": args.reps, "dilation": args.dilation, "rows": rows}  # fmt: skip
    md = markdown(report)
    print(md)
    if args.output:
        save_report(args.output, "conv_threads", report, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
