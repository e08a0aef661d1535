"""Benchmarks of MI-Net: inference latency, training step time and memory, FLOPs and the roofline.

    python -m minet_jax.tools.bench --output out/bench                    # every section, GPU-sized
    python -m minet_jax.tools.bench --preset cpu --output out/bench_cpu   # what a 2-core CPU finishes in ~30 min
    python -m minet_jax.tools.bench --sections inference --sizes 460x620 --batches 1 --dtypes float32
    python -m minet_jax.tools.bench --sections training --set stability.weight=1 --set model.share_sep_impl=xla

Sections:
- `peak`: the device's attainable FLOP/s, measured as the median of large jitted matmuls per
  dtype, beside the vendor's dense peak for GPUs this script knows (None elsewhere);
- `inference`: the jitted forward at each size x batch x dtype: median latency after compilation,
  images/s, XLA's memory analysis, FLOPs per image, achieved FLOP/s and its fraction of the
  measured (and the nominal) peak;
- `training`: one training step (loss, gradient, Adam update, and the stability regulariser when
  `stability.weight` > 0) of configs/default.py's config per solver pair and dtype at
  `--train-crop`, `--train-batch`, T = `--T`: median step time, XLA memory (and the device's peak
  bytes on GPU/TPU), FLOPs and FLOP/s.

`--set KEY=VALUE` overrides the training config (`model.dtype` aside, which `--dtypes` sets);
inference rows take its `model.*` settings.

FLOPs: XLA's cost analysis, and 2 x the convolutions' multiply-adds counted from the jaxpr
(skipping padding and dilation zeros). The two agree to ~3% on the forward; on a training step
XLA counts the depthwise convolutions' weight gradients 64x over (see `cost`), so the FLOP rate
uses the jaxpr count. A program with a data-dependent loop (implicit adjoint, fixed-point
forward) has its loop body counted once: its FLOPs are a lower bound and no rate is derived.

Memory: XLA's memory analysis is an estimate, and on CPU a low one (a 1080p forward: 1062 MiB
estimated, 3617 MiB resident). `--isolate` runs every row in its own process and records its
peak resident memory (`peak_rss_bytes`) beside the peak before the row's work began; training rows
also record the peak of their timed steps alone (`rss_steps_peak_bytes`: the peak is restarted
after compilation, with the heap's free memory handed back first), which is what training holds.

Prints Markdown tables and writes OUTPUT/bench.json (with the machine named) and bench.md.
Inference weights are random at the released network's scale (a fixed-step forward's time does not
depend on them). Training rows start from the config's initialisation (`--set init_from=PATH`: a
checkpoint's weights) on a synthetic batch (`--train-data DIR`: central crops of a paired folder);
a solve to a tolerance takes as many iterations as weights and batch need, recorded per row.
"""

from __future__ import annotations

if __name__ == "__main__":  # time steps as train.py runs them (minet_jax/host.py), before JAX starts
    from minet_jax.host import with_huge_pages

    with_huge_pages()

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from minet_jax.checkpoint import initial_params
from minet_jax.config import ConfigError, apply_overrides, load_config, parse_overrides
from minet_jax.model import MINet
from minet_jax.tools.measure import (
    compile_train_step,
    conv_flops,
    cost,
    machine,
    memory,
    nominal_peak,
    paired_batch,
    peak_rss_bytes,
    reset_peak_rss,
    synthetic_batch,
    timed,
)

TRAIN_PAIRS = ("unrolled/unrolled", "unrolled/implicit", "fixed_point/implicit", "anderson/implicit", "unrolled/phantom")


def bench_config(overrides: list | None = None) -> ml_collections.ConfigDict:
    """configs/default.py's training config with `overrides` ((key, value) pairs or KEY=VALUE)."""
    return apply_overrides(load_config("default"), overrides or [])


def random_model(model_cfg: ml_collections.ConfigDict):
    """(graphdef, state) with random weights of the right scale (weights do not change the timing)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: MINet(model_cfg)))
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(state))))
    state = jax.tree.map(lambda s: 0.05 * jax.random.normal(next(keys), s.shape, s.dtype), state)
    return graphdef, state


def measure_peak(dtypes: list[str], n: int | None = None, repeats: int = 5) -> list[dict]:
    """Attainable FLOP/s: median time of an n x n x n matmul chain per dtype (2 n^3 FLOPs each)."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    rows = []
    for dtype in dtypes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
        # f32 matmuls at the default precision run as tf32 on recent NVIDIA GPUs; HIGHEST is true f32.
        prec = jax.lax.Precision.HIGHEST if dtype == "float32" else None
        f = jax.jit(lambda a, b, prec=prec: jnp.matmul(a, b, precision=prec, preferred_element_type=jnp.float32))
        _, times = timed(f, a, b, repeats=repeats)
        med = statistics.median(times)
        rows.append({
            "dtype": dtype, "n": n, "median_s": med, "flops_per_s": 2 * n**3 / med, "nominal_flops_per_s": nominal_peak(dtype),
        })  # fmt: skip
    return rows


def _peak_for(peaks: list[dict], dtype: str) -> float | None:
    return next((p["flops_per_s"] for p in peaks if p["dtype"] == dtype), None)


def _roofline(row: dict, flops: float | None, seconds: float | None, peaks: list[dict]) -> None:
    row["achieved_flops_per_s"] = flops / seconds if flops and seconds else None
    peak, nominal = _peak_for(peaks, row["dtype"]), nominal_peak(row["dtype"])
    row["fraction_of_measured_peak"] = row["achieved_flops_per_s"] / peak if row["achieved_flops_per_s"] and peak else None
    row["fraction_of_nominal_peak"] = (
        row["achieved_flops_per_s"] / nominal if row["achieved_flops_per_s"] and nominal else None
    )


def bench_inference(variant: str, dtype: str, shape: tuple[int, int, int, int], repeats: int, peaks: list[dict],
                    overrides: list | None = None, microbatch: int = 0) -> dict:  # fmt: skip
    """One inference configuration: latency, throughput, memory, FLOPs, roofline. `overrides`:
    training-config (key, value) pairs, of which the `model.*` ones apply.

    `microbatch` m (0 < m < batch): one program runs the batch m images at a time (`lax.map`),
    so memory is that of m images; for batches that do not fit whole."""
    from minet_jax.config import model_config

    model_overrides = [(k.removeprefix("model."), v) for k, v in overrides or [] if k.startswith("model.")]
    cfg = apply_overrides(model_config(variant), [*model_overrides, ("dtype", dtype)])
    graphdef, state = random_model(cfg)
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32))
    micro = microbatch if 0 < microbatch < shape[0] else 0

    def forward(st, x):
        model = nnx.merge(graphdef, st)
        if not micro:
            return model(x)
        return jax.lax.map(lambda xi: model(xi[None])[0], x, batch_size=micro)

    fwd = jax.jit(forward)
    t0 = time.perf_counter()
    compiled = fwd.lower(state, x).compile()
    compile_s = time.perf_counter() - t0
    c = cost(compiled)
    flops, loop = conv_flops(jax.make_jaxpr(fwd)(state, x).jaxpr)
    first, times = timed(compiled, state, x, repeats=repeats)
    med = statistics.median(times)
    b = shape[0]
    row = {
        "section": "inference", "variant": variant, "dtype": dtype, "batch": b, "microbatch": micro or b,
        "height": shape[1], "width": shape[2],
        "repeats": repeats, "compile_s": compile_s, "first_run_s": first, "median_s": med, "min_s": min(times),
        "max_s": max(times), "images_per_s": b / med, "conv_flops_per_image": flops / b, "flops_exact": not loop,
        "xla_flops_per_image": c["flops"] / b if c["flops"] else None, **memory(compiled),
    }  # fmt: skip
    _roofline(row, flops if not loop else None, med, peaks)
    return row


def bench_training(pair: str, dtype: str, crop: int, batch: int, T: int, repeats: int, peaks: list[dict],
                   overrides: list | None = None, data_dir: str = "") -> dict:  # fmt: skip
    """One training step of configs/default.py's config for a solver pair: time, memory, FLOPs.
    `overrides` ((key, value) pairs) apply to the training config, e.g. ("stability.weight", 1.0);
    the step timed is the one whose FLOPs are counted, regulariser included. The weights are the
    config's initialisation, or its `init_from`; the batch is synthetic, or central crops of the
    paired folder `data_dir`. A solve to a tolerance (anderson / fixed_point forward, implicit
    backward) takes as many iterations as those weights and that batch need: the row records them."""
    forward, backward = pair.split("/")
    cfg = bench_config([*(overrides or []), ("model.solver.forward", forward), ("model.solver.backward", backward),
                        ("model.T", T), ("model.dtype", dtype)])  # fmt: skip
    data = paired_batch(data_dir, batch, crop) if data_dir else synthetic_batch(batch, crop)
    params = nnx.state(MINet(cfg.model, rngs=nnx.Rngs(cfg.seed)), nnx.Param)
    if cfg.init_from:
        nnx.replace_by_pure_dict(params, initial_params(cfg.model, cfg.init_from))
    step = compile_train_step(cfg, params, data)
    c = cost(step.compiled)
    flops, loop = conv_flops(jax.make_jaxpr(step.step_fn)(step.state, data).jaxpr)
    # Every timed call runs from the same state on the same batch: the same iterations each time.
    metrics = jax.device_get(step.compiled(step.state, data)[1])
    solver = {k: float(v) for k, v in sorted(metrics.items()) if k.startswith("solver/") and "iterations" in k}
    reset = reset_peak_rss()
    first, times = timed(lambda s: step.compiled(s, data), step.state, repeats=repeats)
    steps_peak = peak_rss_bytes() if reset else None
    med = statistics.median(times)
    row = {
        "section": "training", "name": _name(pair, overrides), "pair": pair, "dtype": dtype, "crop": crop,
        "batch": batch, "T": T, "repeats": repeats, "compile_s": step.compile_s, "first_run_s": first,
        "median_s": med, "min_s": min(times), "max_s": max(times), "images_per_s": batch / med,
        "conv_flops_per_step": flops, "flops_exact": not loop, "xla_flops_per_step": c["flops"],
        "rss_steps_peak_bytes": steps_peak, **memory(step.compiled), "solver_iterations": solver,
        "init_from": cfg.init_from, "data": data_dir or "synthetic",
    }  # fmt: skip
    _roofline(row, flops if not loop else None, med, peaks)
    return row


def _name(pair: str, overrides: list | None) -> str:
    """'pair key=value ...'."""
    return " ".join([pair, *(f"{k}={v}" for k, v in overrides or [])])


# --- report ---


def _g(v, scale=1.0, fmt="{:.3g}") -> str:
    return "-" if v is None else fmt.format(v / scale)


def _rss(r: dict) -> str:
    if r.get("rss_peak_bytes") is None:
        return "-"
    return f"{r['rss_peak_bytes'] / 2**20:.0f} ({r['rss_before_bytes'] / 2**20:.0f})"


def _iterations(it: dict | None) -> str:
    """'a/b/c; d/e/f': forward and backward iterations of each block ('-' for older rows)."""
    if not it:
        return "-"
    fwd = "/".join(f"{v:.0f}" for k, v in it.items() if not k.endswith("backward_iterations"))
    bwd = "/".join(f"{v:.0f}" for k, v in it.items() if k.endswith("backward_iterations"))
    return f"{fwd or '-'}; {bwd or '-'}"


def markdown(report: dict) -> str:
    m = report["machine"]
    cpu = f"{m['cpu']}, " if m.get("cpu") else ""
    lines = [f"machine: {m['device']} ({m['backend']}, {m['device_count']} device(s), {cpu}{m['cpu_count']} CPU cores), "
             f"JAX {m['jax']}", ""]  # fmt: skip
    if report.get("peak"):
        lines += ["| dtype | matmul n | measured GFLOP/s | nominal GFLOP/s |", "|---|---|---|---|"]
        for p in report["peak"]:
            lines.append(f"| {p['dtype']} | {p['n']} | {_g(p['flops_per_s'], 1e9)} | {_g(p['nominal_flops_per_s'], 1e9)} |")
        lines.append("")
    if report.get("inference"):
        lines += [
            "| dtype | batch (per pass) | HxW | median s | images/s | GFLOP/image (convs; XLA) | GFLOP/s "
            "| of measured peak | of nominal | XLA MiB | RSS MiB: peak (before) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["inference"]:
            mb = r.get("microbatch", r["batch"])
            lines.append(
                f"| {r['dtype']} | {r['batch']}{f' ({mb})' if mb != r['batch'] else ''} | {r['height']}x{r['width']} | "
                f"{r['median_s']:.3f} | "
                f"{r['images_per_s']:.3f} | {_g(r['conv_flops_per_image'], 1e9)}; {_g(r['xla_flops_per_image'], 1e9)} | "
                f"{_g(r['achieved_flops_per_s'], 1e9)} | "
                f"{_g(r['fraction_of_measured_peak'], fmt='{:.1%}')} | {_g(r['fraction_of_nominal_peak'], fmt='{:.1%}')} | "
                f"{_g(r['xla_peak_bytes'], 2**20, '{:.0f}')} | {_rss(r)} |"
            )
        lines.append("")
    if report.get("training"):
        lines += [
            "| training step | dtype | crop x batch | T | median s | images/s | GFLOP/step (convs; XLA) | GFLOP/s "
            "| of measured peak "
            "| XLA MiB | device peak MiB | RSS MiB: peak (before) | RSS MiB: peak of the steps "
            "| iterations per block: forward; backward |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["training"]:
            fl = f"{_g(r['conv_flops_per_step'], 1e9)}; {_g(r['xla_flops_per_step'], 1e9)}" + (
                "" if r["flops_exact"] else " (loops once: lower bound)"
            )
            lines.append(
                f"| {r['name']} | {r['dtype']} | {r['crop']}x{r['batch']} | {r['T']} | {r['median_s']:.3f} | "
                f"{r['images_per_s']:.3f} | {fl} | {_g(r['achieved_flops_per_s'], 1e9)} | "
                f"{_g(r['fraction_of_measured_peak'], fmt='{:.1%}')} | {_g(r['xla_peak_bytes'], 2**20, '{:.0f}')} | "
                f"{_g(r['device_peak_bytes'], 2**20, '{:.0f}')} | {_rss(r)} | "
                f"{_g(r.get('rss_steps_peak_bytes'), 2**20, '{:.0f}')} | {_iterations(r.get('solver_iterations'))} |"
            )
        lines.append("")
    return "\n".join(lines)


PRESETS = {
    # Everything the issue lists, sized for an accelerator.
    "gpu": dict(sizes="460x620,1080x1920", batches="1,8", dtypes="float32,bfloat16", repeats=10,
                train_crop=128, train_batch=4, train_repeats=10),  # fmt: skip
    # What a 2-core CPU finishes in about half an hour (1080p at batch 8 alone would take ~35 min there).
    "cpu": dict(sizes="460x620,1080x1920", batches="1", dtypes="float32,bfloat16", repeats=3,
                train_crop=128, train_batch=4, train_repeats=3),  # fmt: skip
}


_ROWS = {"inference": bench_inference, "training": bench_training}


def run_row(kind: str, kwargs: dict, isolate: bool) -> dict:
    """One benchmark row ("inference" or "training"), in this process or (isolate) in a fresh one
    that also reports its peak resident memory."""
    if not isolate:
        return _ROWS[kind](**kwargs)
    res = subprocess.run(
        [sys.executable, "-m", "minet_jax.tools.bench", "--row", json.dumps({"kind": kind, "kwargs": kwargs})],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"{kind} row {kwargs} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _child_row(spec: str) -> int:
    spec = json.loads(spec)
    kwargs = spec["kwargs"]
    if "shape" in kwargs:
        kwargs["shape"] = tuple(kwargs["shape"])
    if kwargs.get("overrides"):
        kwargs["overrides"] = [tuple(o) for o in kwargs["overrides"]]
    before = peak_rss_bytes()
    row = _ROWS[spec["kind"]](**kwargs)
    row.update(rss_before_bytes=before, rss_peak_bytes=peak_rss_bytes())
    print(json.dumps(row), flush=True)
    return 0


def _csv(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="defaults for the options below")
    parser.add_argument("--sections", default="peak,inference,training")
    parser.add_argument("--variant", default="official", choices=["official", "paper"])
    parser.add_argument("--dtypes", default=None, help="comma-separated: float32,bfloat16")
    parser.add_argument("--sizes", default=None, help="comma-separated HxW")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--microbatch", type=int, default=0,
                        help="run inference batches this many images at a time in one program (lax.map); "
                        "for batches too large for memory (0 = whole batch)")  # fmt: skip
    parser.add_argument("--pairs", default=",".join(TRAIN_PAIRS), help="training solver pairs forward/backward")
    parser.add_argument("--train-crop", type=int, default=None)
    parser.add_argument("--train-batch", type=int, default=None)
    parser.add_argument("--train-repeats", type=int, default=None)
    parser.add_argument("--train-data", default="",
                        help="paired folder (hazy/, clear/) whose central crops make the training batch (default: synthetic)")  # fmt: skip
    parser.add_argument("--T", default="8", help="comma-separated IM-block step counts of the training rows, e.g. 8,16")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="training-config override for every row, e.g. --set model.share_sep_impl=xla, "
                        "--set stability.weight=1.0 (repeatable; inference rows take the model.* ones)")  # fmt: skip
    parser.add_argument("--isolate", action="store_true",
                        help="run each inference / training row in its own process and record its peak resident memory")  # fmt: skip
    parser.add_argument("--output", default="", help="folder for bench.json and bench.md")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # child process of --isolate
    args = parser.parse_args(argv)
    if args.row:
        return _child_row(args.row)
    preset = PRESETS[args.preset or ("cpu" if jax.default_backend() == "cpu" else "gpu")]
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    sections = set(_csv(args.sections))
    unknown = sections - {"peak", "inference", "training"}
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)}; choose from peak, inference, training")
    dtypes = _csv(args.dtypes)
    try:
        Ts = [int(v) for v in _csv(args.T)]
    except ValueError:
        parser.error(f"--T: expected comma-separated integers, got {args.T!r}")
    if not Ts or min(Ts) < 1:
        parser.error(f"--T: expected positive integers, got {args.T!r}")
    try:
        overrides = parse_overrides(args.set)
        bench_config(overrides)  # refuses unknown keys and wrong types before anything runs
    except ConfigError as e:
        parser.error(str(e))
    if args.train_data and not (Path(args.train_data) / "hazy").is_dir():
        parser.error(f"--train-data {args.train_data}: expected a paired folder with hazy/ and clear/")
    init_from = dict(overrides).get("init_from")
    if init_from and not Path(init_from).exists():
        parser.error(f"--set init_from={init_from}: no such file or checkpoint folder")
    report: dict[str, Any] = {"machine": machine(), "args": vars(copy.copy(args))}
    out = Path(args.output) if args.output else None
    if out:
        out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        if out:
            (out / "bench.json").write_text(json.dumps(report, indent=2))
            (out / "bench.md").write_text(markdown(report))

    report["peak"] = measure_peak(dtypes) if "peak" in sections else []
    save()
    if "inference" in sections:
        report["inference"] = []
        for size in _csv(args.sizes):
            h, w = (int(v) for v in size.lower().split("x"))
            for b in (int(v) for v in _csv(args.batches)):
                for dtype in dtypes:
                    row = run_row("inference", dict(variant=args.variant, dtype=dtype, shape=(b, h, w, 3),
                               repeats=args.repeats, peaks=report["peak"], overrides=overrides,
                               microbatch=args.microbatch), args.isolate)  # fmt: skip
                    print(f"inference {dtype} {b}x{h}x{w}: {row['median_s']:.3f} s", flush=True)
                    report["inference"].append(row)
                    save()
    if "training" in sections:
        report["training"] = []
        for T in Ts:
            for pair in _csv(args.pairs):
                for dtype in dtypes:
                    row = run_row("training", dict(pair=pair, dtype=dtype, crop=args.train_crop, batch=args.train_batch,
                                  T=T, repeats=args.train_repeats, peaks=report["peak"], overrides=overrides,
                                  data_dir=args.train_data),
                                  args.isolate)  # fmt: skip
                    print(f"training {row['name']} {dtype} T={T}: {row['median_s']:.3f} s", flush=True)
                    report["training"].append(row)
                    save()
    print(markdown(report))
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
