"""Benchmarks: inference latency of MI-Net (median over repeats after compilation).

    python -m minet_jax.bench --sizes 460x620 --batches 1 --repeats 5 --output bench.json

Prints a Markdown table and writes JSON with the machine named.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minet_jax.checkpoint import abstract_model
from minet_jax.model_config import model_config


def machine() -> dict:
    """What ran the benchmark."""
    dev = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
    }


def random_model(variant: str = "official", dtype: str = "float32"):
    """A model with random weights of the right scale (weights do not change the timing)."""
    cfg = model_config(variant)
    cfg.dtype = dtype
    graphdef, state = nnx.split(abstract_model(cfg))
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(state))))
    state = jax.tree.map(lambda s: 0.05 * jax.random.normal(next(keys), s.shape, s.dtype), state)
    return graphdef, state


def time_forward(graphdef, state, shape: tuple[int, int, int, int], repeats: int) -> dict:
    """Median wall time of the jitted forward pass over `repeats` runs after one compile run."""
    fwd = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32))
    t0 = time.perf_counter()
    fwd(state, x).block_until_ready()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fwd(state, x).block_until_ready()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "batch": shape[0], "height": shape[1], "width": shape[2], "repeats": repeats,
        "first_call_s": compile_s, "median_s": med, "min_s": min(times), "max_s": max(times),
        "images_per_s": shape[0] / med,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="official", choices=["official", "paper"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--sizes", default="460x620", help="comma-separated HxW")
    parser.add_argument("--batches", default="1", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="", help="JSON file to write")
    args = parser.parse_args(argv)
    graphdef, state = random_model(args.variant, args.dtype)
    rows = []
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        for b in (int(v) for v in args.batches.split(",")):
            rows.append({"variant": args.variant, "dtype": args.dtype, **time_forward(graphdef, state, (b, h, w, 3), args.repeats)})
    info = machine()
    print(f"machine: {info}")
    print("| variant | dtype | batch | HxW | median s | min s | images/s | first call s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['dtype']} | {r['batch']} | {r['height']}x{r['width']} | {r['median_s']:.3f} | "
            f"{r['min_s']:.3f} | {r['images_per_s']:.3f} | {r['first_call_s']:.1f} |"
        )
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"machine": info, "inference": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
