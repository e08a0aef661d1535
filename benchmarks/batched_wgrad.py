"""Is one kernel gradient over an IM-block's T steps faster than T of them? (#13's lever)

    python benchmarks/batched_wgrad.py --output benchmarks/results/batched_wgrad_cpu

With weights shared over the T steps, an IM-block convolution's kernel gradient is a sum over
steps, sum_t wgrad(x_t, g_t) (x_t the step's input, g_t its output cotangent), which is one
kernel gradient over the T steps' maps stacked along the batch. Backprop through the unrolled
steps computes the T terms apart; a custom VJP could compute the stacked one instead. Before
building that, this times the two forms alone for a 3x3 64->64 convolution at each dilation
of the released network, over `--batch` images per chain (2 = what model.batch_split gives a
batch of 4 on the CPU), alternated in one process, and checks that they agree.

Forms: `apart` (T kernel gradients, summed), `stacked` (one over T x batch images); `apart x2` /
`stacked x2`: the same for two independent chains of `--batch` / 2 images (as the training step
runs them). Writes OUTPUT/batched_wgrad.json and .md with the machine named.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORMS = ("apart", "stacked", "apart x2", "stacked x2")



def forms(dilation: int):
    """{form: fn(xs, gs) -> kernel gradient} for (T, N, H, W, C) stacks of inputs and cotangents."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    def wgrad(x, g):
        c_in, c_out = x.shape[-1], g.shape[-1]

        def conv(k):
            return lax.conv_general_dilated(
                x, k, (1, 1), ((dilation, dilation),) * 2, rhs_dilation=(dilation, dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )  # fmt: skip

        return jax.vjp(conv, jnp.zeros((3, 3, c_in, c_out), x.dtype))[1](g)[0]

    def stack(a):
        return a.reshape(-1, *a.shape[2:])

    def apart(xs, gs):
        return sum(wgrad(xs[t], gs[t]) for t in range(xs.shape[0]))

    def stacked(xs, gs):
        return wgrad(stack(xs), stack(gs))

    def chains(fn):
        def run(xs, gs):
            h = xs.shape[1] // 2
            return fn(xs[:, :h], gs[:, :h]) + fn(xs[:, h:], gs[:, h:])

        return run

    return {"apart": jax.jit(apart), "stacked": jax.jit(stacked),
            "apart x2": jax.jit(chains(apart)), "stacked x2": jax.jit(chains(stacked))}  # fmt: skip


def time_forms(T: int, batch: int, size: int, channels: int, dilation: int, reps: int) -> list[dict]:
    import jax
    import numpy as np

    k1, k2 = jax.random.split(jax.random.key(dilation))
    xs = jax.random.normal(k1, (T, batch, size, size, channels))
    gs = jax.random.normal(k2, (T, batch, size, size, channels))
    fns = forms(dilation)
    ref = np.asarray(fns["apart"](xs, gs), np.float64)
    errors = {}
    for name, fn in fns.items():
        errors[name] = float(np.abs(np.asarray(fn(xs, gs), np.float64) - ref).max() / np.abs(ref).max())
        jax.block_until_ready(fn(xs, gs))
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(xs, gs))
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["apart"])
    return [
        {"T": T, "batch": batch, "size": size, "channels": channels, "dilation": dilation, "form": name,
         "median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
         "ratio": statistics.median(t) / base, "max_rel_diff": errors[name], "times_s": t}
        for name, t in times.items()
    ]  # fmt: skip


def markdown(report: dict) -> str:
    m = report["machine"]
    out = [
        f"# One kernel gradient over T steps against T of them ({m['cpu']}, {m['cores']} cores, {report['date']})",
        "",
        f"jax {m['jax']}; 3x3 convolution, medians of {report['reps']} alternated repetitions in one process; "
        "ratio = median / `apart`'s; max rel diff = largest difference from `apart` over its largest value.",
        "",
        "| T x batch x size x channels | dilation | form | median | min - max | ratio | max rel diff |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        out.append(
            f"| {r['T']} x {r['batch']} x {r['size']} x {r['channels']} | {r['dilation']} | {r['form']} | "
            f"{1e3 * r['median_s']:.1f} ms | {1e3 * r['min_s']:.1f} - {1e3 * r['max_s']:.1f} | {r['ratio']:.2f} | "
            f"{r['max_rel_diff']:.1e} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=8)
    p.add_argument("--batch", type=int, default=4, help="images in all (two chains of half in the x2 forms)")
    p.add_argument("--size", type=int, default=64, help="feature-map side (a 128-px crop's IM-blocks: 64)")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--dilations", default="1,2,4")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--output", default="", help="folder for batched_wgrad.json and .md")
    args = p.parse_args(argv)
    if args.batch < 2 or args.batch % 2:
        p.error(f"--batch {args.batch}: expected an even number >= 2 (two chains of half)")
    try:
        dilations = [int(d) for d in args.dilations.split(",")]
    except ValueError:
        p.error(f"--dilations {args.dilations!r}: expected comma-separated integers, e.g. 1,2,4")

    from minet_jax.tools.measure import machine, save_report

    rows = []
    for d in dilations:
        for r in time_forms(args.T, args.batch, args.size, args.channels, d, args.reps):
            print(f"dilation {d} {r['form']:>10}: {1e3 * r['median_s']:.1f} ms ({r['ratio']:.2f}x)", flush=True)
            rows.append(r)
    report = {
        "machine": {**machine(), "cores": len(os.sched_getaffinity(0))},
        "date": time.strftime("%Y-%m-%d"), "reps": args.reps, "rows": rows,
    }  # fmt: skip
    md = markdown(report)
    print(md)
    if args.output:
        save_report(args.output, "batched_wgrad", report, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
