"""Training-step time against `model.batch_split`, every variant in one process, alternated.

    python benchmarks/batch_split.py --output benchmarks/results/batch_split_cpu
    python benchmarks/batch_split.py --shapes 4x128 --pairs unrolled/implicit --variants 1,2 --reps 5

On XLA's CPU backend each YNNPACK convolution of a 64x64 feature map runs on one core, and the
runtime runs ops that do not depend on each other at once: a batch run as independent groups
of images (model.batch_split) gives it two chains of work to keep two cores busy. This script
compiles configs/default.py's training step once per variant and shape (synthetic batch, random
weights), then times them in turn, A, B, C, A, B, C, ..., so that every variant sees the same
machine state, and reports medians and their ratio to the first variant's.

A variant is `N` (batch_split = N) or `N:fused`: the same, with ShareSepConv's input gradient
left to XLA's fusion (conv._unfused bypassed), the ablation of that fix. Shapes are BATCHxCROP.
Writes OUTPUT/batch_split.json and .md with the machine named.
"""

from __future__ import annotations

if __name__ == "__main__":  # time steps as train.py runs them (minet_jax/host.py), before JAX starts
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from minet_jax.host import with_huge_pages

    with_huge_pages()

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_variant(text: str) -> tuple[int, bool]:
    """'2' -> (2, False); '2:fused' -> (2, True)."""
    n, _, flag = text.partition(":")
    if not n.isdigit() or flag not in ("", "fused"):
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected N or N:fused, N >= 0 (0 = auto)")
    return int(n), flag == "fused"


def parse_shape(text: str) -> tuple[int, int]:
    b, sep, c = text.partition("x")
    if not sep or not b.isdigit() or not c.isdigit() or int(b) < 1 or int(c) < 2:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected BATCHxCROP, e.g. 4x128")
    return int(b), int(c)




def time_shape(pair: str, batch: int, crop: int, T: int, variants: list[str], reps: int, warmup: int) -> list[dict]:
    from flax import nnx

    from minet_jax import conv
    from minet_jax.model import MINet, batch_split
    from minet_jax.tools.bench import bench_config
    from minet_jax.tools.measure import alternated_summary, compile_train_step, synthetic_batch, time_alternately

    data = synthetic_batch(batch, crop)
    forward, backward = pair.split("/")
    unfused, steps, groups = conv._unfused, [], []
    try:
        for v in variants:
            n, fused = parse_variant(v)
            conv._unfused = (lambda fn, x, key: fn(x)) if fused else unfused  # read while tracing
            cfg = bench_config([("model.solver.forward", forward), ("model.solver.backward", backward),
                                ("model.T", T), ("model.batch_split", n)])  # fmt: skip
            params = nnx.state(MINet(cfg.model, rngs=nnx.Rngs(cfg.seed)), nnx.Param)
            steps.append(compile_train_step(cfg, params, data))
            groups.append(batch_split(cfg.model, batch))
    finally:
        conv._unfused = unfused
    rows = alternated_summary(variants, time_alternately(steps, data, reps=reps, warmup=warmup))
    for row, g in zip(rows, groups, strict=True):
        row.update(pair=pair, batch=batch, crop=crop, T=T, groups=g)
    return rows


def markdown(report: dict) -> str:
    m = report["machine"]
    out = [
        f"# Training step against model.batch_split ({m['cpu']}, {m['cores']} cores, {report['date']})",
        "",
        f"jax {m['jax']}; medians of {report['reps']} alternated repetitions in one process, "
        f"{report['warmup']} untimed after compiling; ratio = median / the first variant's.",
        "",
        "| pair | batch x crop | T | variant | groups | median | min - max | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        out.append(
            f"| {r['pair']} | {r['batch']} x {r['crop']} | {r['T']} | {r['variant']} | {r['groups']} | "
            f"{r['median_s']:.3f} s | {r['min_s']:.2f} - {r['max_s']:.2f} | {r['ratio']:.2f} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="4x128,16x32", help="comma-separated BATCHxCROP")
    p.add_argument("--pairs", default="unrolled/unrolled,unrolled/implicit,unrolled/phantom")
    p.add_argument("--variants", default="1,2,4,2:fused", help="comma-separated N or N:fused (first = baseline)")
    p.add_argument("--T", type=int, default=8)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--output", default="", help="folder for batch_split.json and .md")
    args = p.parse_args(argv)
    try:
        shapes = [parse_shape(s) for s in args.shapes.split(",")]
        variants = args.variants.split(",")
        for v in variants:
            parse_variant(v)
    except argparse.ArgumentTypeError as e:
        p.error(str(e))

    from minet_jax.tools.measure import machine, save_report

    rows = []
    for pair in args.pairs.split(","):
        for batch, crop in shapes:
            shape_rows = time_shape(pair, batch, crop, args.T, variants, args.reps, args.warmup)
            for r in shape_rows:
                print(f"{pair} {batch}x{crop} {r['variant']:>8}: {r['median_s']:.3f} s ({r['ratio']:.2f}x)", flush=True)
            rows += shape_rows
    report = {
        "machine": {**machine(), "cores": len(os.sched_getaffinity(0))},
        "date": time.strftime("%Y-%m-%d"), "reps": args.reps, "warmup": args.warmup, "rows": rows,
    }  # fmt: skip
    md = markdown(report)
    print(md)
    if args.output:
        save_report(args.output, "batch_split", report, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
