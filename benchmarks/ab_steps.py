"""Training steps of several config variants, compiled in one process and timed alternately.

    python benchmarks/ab_steps.py --variant model.dtype=float32 --variant model.dtype=bfloat16 \
        --set model.solver.backward=implicit --set model.solver.backward_tol=0.1 --T 8,16 \
        --output benchmarks/results/ab_steps_cpu/implicit_bf16

`bench --isolate` runs each row in a process of its own, which is right for memory but leaves
time comparisons exposed to whatever the machine does between processes (this 2-core machine's
step times moved by 10-15% from one process to the next). Here every variant is compiled up front
(configs/default.py's training step, synthetic batch, the config's initialisation), warmed up,
then timed in turn, A, B, A, B, ..., so that all see the same machine; medians, their spread,
and the ratio to the first variant's median. A variant is a comma-separated list of KEY=VALUE
overrides (README's syntax); `--set` applies to all. Writes OUTPUT/ab_steps.json and .md with
the machine named.
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

from minet_jax.config import ConfigError, parse_overrides  # noqa: E402



def parse_variant(text: str) -> list[tuple[str, object]]:
    """'model.dtype=bfloat16,model.remat=true' -> [(key, value), ...]; ConfigError if malformed."""
    return parse_overrides([item for item in text.split(",") if item.strip()])



def time_variants(variants: list[str], common: list[str], T: int, batch: int, crop: int, reps: int,
                  warmup: int) -> list[dict]:  # fmt: skip
    from flax import nnx

    from minet_jax.model import MINet
    from minet_jax.tools.bench import bench_config
    from minet_jax.tools.measure import alternated_summary, compile_train_step, synthetic_batch, time_alternately

    data = synthetic_batch(batch, crop)
    steps = []
    for v in variants:
        cfg = bench_config([*parse_overrides(common), ("model.T", T), *parse_variant(v)])
        params = nnx.state(MINet(cfg.model, rngs=nnx.Rngs(cfg.seed)), nnx.Param)
        steps.append(compile_train_step(cfg, params, data))
    rows = alternated_summary(variants, time_alternately(steps, data, reps=reps, warmup=warmup))
    for r in rows:
        r.update(T=T, batch=batch, crop=crop)
    return rows


def markdown(report: dict) -> str:
    m = report["machine"]
    out = [
        f"# Training steps, variants alternated ({m['cpu']}, {m['cores']} cores, {report['date']})",
        "",
        f"jax {m['jax']}; every variant with `{' '.join(report['common']) or '(defaults)'}`; medians of "
        f"{report['reps']} alternated repetitions in one process, {report['warmup']} untimed after compiling; "
        "ratio = median / the first variant's.",
        "",
        "| variant | batch x crop | T | median | min - max | ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        out.append(
            f"| {r['variant']} | {r['batch']} x {r['crop']} | {r['T']} | {r['median_s']:.3f} s | "
            f"{r['min_s']:.2f} - {r['max_s']:.2f} | {r['ratio']:.2f} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="one variant (repeat; the first is the baseline)")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    p.add_argument("--T", default="8", help="comma-separated IM-block step counts")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--output", default="", help="folder for ab_steps.json and .md")
    args = p.parse_args(argv)
    if len(args.variant) < 2:
        p.error("give at least two --variant (the first is the baseline)")
    try:
        for v in [*args.variant, *args.set]:
            parse_variant(v)
        Ts = [int(t) for t in args.T.split(",")]
    except ConfigError as e:
        p.error(str(e))
    except ValueError:
        p.error(f"--T {args.T!r}: expected comma-separated integers, e.g. 8,16")

    from minet_jax.tools.measure import machine, save_report

    rows = []
    for T in Ts:
        for r in time_variants(args.variant, args.set, T, args.batch, args.crop, args.reps, args.warmup):
            print(f"T={T} {r['variant']}: {r['median_s']:.3f} s ({r['ratio']:.2f}x)", flush=True)
            rows.append(r)
    report = {
        "machine": {**machine(), "cores": len(os.sched_getaffinity(0))},
        "date": time.strftime("%Y-%m-%d"), "common": args.set, "reps": args.reps, "warmup": args.warmup,
        "rows": rows,
    }  # fmt: skip
    md = markdown(report)
    print(md)
    if args.output:
        save_report(args.output, "ab_steps", report, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
