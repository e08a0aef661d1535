"""Benchmarks of MI-Net: inference latency, training step time and memory, FLOPs and the roofline.

    python -m minet_jax.bench --output out/bench                    # every section, GPU-sized
    python -m minet_jax.bench --preset cpu --output out/bench_cpu   # what a 2-core CPU finishes in ~30 min
    python -m minet_jax.bench --sections inference --sizes 460x620 --batches 1 --dtypes float32

Sections:
- `peak`: the device's attainable FLOP/s, measured as the median of large jitted matmuls per
  dtype, beside the vendor's dense peak for GPUs this script knows (None elsewhere);
- `inference`: the jitted forward at each size x batch x dtype: median latency after compilation,
  images/s, XLA's memory analysis, FLOPs per image, achieved FLOP/s and its fraction of the
  measured (and the nominal) peak;
- `training`: one training step (loss, gradient, Adam update) of configs/default.py's model per
  solver pair and dtype at `--train-crop`, `--train-batch`, T = `--T`: median step time, XLA memory
  (and the device's peak bytes on GPU/TPU), FLOPs and FLOP/s.

FLOPs: XLA's cost analysis, and 2 x the convolutions' multiply-adds counted from the jaxpr
(skipping padding and dilation zeros). The two agree to ~3% on the forward; on a training step
XLA counts the depthwise convolutions' weight gradients 64x over (see `cost`), so the FLOP rate
uses the jaxpr count. A program with a data-dependent loop (implicit adjoint, fixed-point
forward) has its loop body counted once: its FLOPs are a lower bound and no rate is derived.

Memory: XLA's memory analysis is an estimate, and on CPU a low one (a 1080p forward: 1062 MiB
estimated, 3617 MiB resident). `--isolate` runs every row in its own process and records its
peak resident memory (`peak_rss_bytes`) beside the peak before the row's work began.

Prints Markdown tables and writes OUTPUT/bench.json (with the machine named) and bench.md.
Weights are random at the released network's scale: timings do not depend on them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minet_jax.checkpoint import abstract_model, parse_overrides, with_overrides
from minet_jax.model_config import model_config

# Vendor dense peaks (FLOP/s, no sparsity) for the accelerators this project is run on; the measured
# matmul peak is the one the roofline fraction uses first, these are context.
NOMINAL_PEAK = {
    "H100": {"float32": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12},  # SXM5
    "H200": {"float32": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12},
    "A100": {"float32": 19.5e12, "tf32": 156e12, "bfloat16": 312e12},
}
TRAIN_PAIRS = ("unrolled/unrolled", "unrolled/implicit", "fixed_point/implicit", "anderson/implicit", "unrolled/phantom")


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
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def nominal_peak(dtype: str) -> float | None:
    kind = str(getattr(jax.devices()[0], "device_kind", ""))
    for name, peaks in NOMINAL_PEAK.items():
        if name in kind:
            return peaks.get(dtype)
    return None


def random_model(variant: str = "official", dtype: str = "float32", overrides: dict | None = None):
    """(graphdef, state) with random weights of the right scale (weights do not change the timing)."""
    cfg = with_overrides(model_config(variant), {"dtype": dtype, **(overrides or {})})
    graphdef, state = nnx.split(abstract_model(cfg))
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(state))))
    state = jax.tree.map(lambda s: 0.05 * jax.random.normal(next(keys), s.shape, s.dtype), state)
    return graphdef, state


def _timed(fn, *args, repeats: int) -> tuple[float, list[float]]:
    """(first call s, wall times of `repeats` further calls)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, times


def cost(compiled: Any) -> dict:
    """XLA's cost analysis of a compiled program: flops and bytes accessed (None if unsupported).
    XLA counts a while loop's body once, and counts a batch-grouped convolution (the weight
    gradient of a depthwise convolution) as if it were dense, i.e. times its group count."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 (not every backend implements it)
        ca = None
    if isinstance(ca, list):
        ca = ca[0] if ca else None
    return {"flops": (ca or {}).get("flops"), "bytes_accessed": (ca or {}).get("bytes accessed")}


def _valid_taps(out: int, inp: int, k: int, stride: int, pad_lo: int, lhs_dil: int, rhs_dil: int) -> int:
    """(output position, kernel tap) pairs of one spatial axis that read a real input element
    (not padding, not a zero inserted by input dilation)."""
    o = np.arange(out)[:, None] * stride + np.arange(k)[None, :] * rhs_dil - pad_lo
    return int(np.sum((o >= 0) & (o <= (inp - 1) * lhs_dil) & (o % lhs_dil == 0)))


def conv_flops(jaxpr: Any, mult: int = 1) -> tuple[int, bool]:
    """(2 x the multiply-adds of every convolution in a jaxpr, whether it holds a while loop).

    Written out because XLA's count is off for this network's training step (see `cost`); scan
    bodies count `length` times, a while loop's body once (its trip count is data-dependent)."""
    total, loop = 0, False
    for e in jaxpr.eqns:
        if e.primitive.name == "conv_general_dilated":
            p, dn = e.params, e.params["dimension_numbers"]
            lhs, rhs, out = e.invars[0].aval.shape, e.invars[1].aval.shape, e.outvars[0].aval.shape
            taps = 1
            for i, (li, ri, oi) in enumerate(zip(dn.lhs_spec[2:], dn.rhs_spec[2:], dn.out_spec[2:], strict=True)):
                taps *= _valid_taps(out[oi], lhs[li], rhs[ri], p["window_strides"][i], p["padding"][i][0],
                                    p["lhs_dilation"][i], p["rhs_dilation"][i])  # fmt: skip
            total += mult * 2 * out[dn.out_spec[0]] * out[dn.out_spec[1]] * rhs[dn.rhs_spec[1]] * taps
        loop |= e.primitive.name == "while"
        inner = mult * (int(e.params["length"]) if e.primitive.name == "scan" else 1)
        subs = [v for v in e.params.values() if hasattr(v, "eqns") or hasattr(v, "jaxpr")]
        subs += [b for v in e.params.values() if isinstance(v, tuple) for b in v if hasattr(b, "jaxpr")]
        for sub in subs:
            t, lp = conv_flops(getattr(sub, "jaxpr", sub), inner)
            total, loop = total + t, loop or lp
    return total, loop


def memory(compiled: Any) -> dict:
    """XLA's memory analysis (arguments + outputs - aliased + temporaries) and the device's peak
    bytes so far (GPU / TPU; None on CPU), in bytes."""
    from minet_jax.compare_solvers import device_peak, memory_fields, xla_peak

    return {"xla_peak_bytes": xla_peak(memory_fields(compiled)), "device_peak_bytes": device_peak()}


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
        _, times = _timed(f, a, b, repeats=repeats)
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
                    overrides: dict | None = None, microbatch: int = 0) -> dict:  # fmt: skip
    """One inference configuration: latency, throughput, memory, FLOPs, roofline.

    `microbatch` m (0 < m < batch): one program runs the batch m images at a time (`lax.map`),
    so memory is that of m images; for batches that do not fit whole."""
    graphdef, state = random_model(variant, dtype, overrides)
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
    first, times = _timed(compiled, state, x, repeats=repeats)
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
                   overrides: dict | None = None, train_overrides: dict | None = None) -> dict:  # fmt: skip
    """One training step of configs/default.py's model for a solver pair: time, memory, FLOPs.
    `overrides` apply to config.model, `train_overrides` to the training config (e.g. stability)."""
    from minet_jax import training
    from minet_jax.compare_solvers import _compiled_step, config_for, default_config

    cfg = with_overrides(config_for(default_config(), pair, T), train_overrides or {})
    cfg.model = with_overrides(cfg.model, {"dtype": dtype, **(overrides or {})})
    rng = np.random.default_rng(0)
    clear = rng.uniform(0.1, 0.9, (batch, crop, crop, 3)).astype(np.float32)
    data = {"hazy": jnp.asarray(0.6 * clear + 0.35), "clear": jnp.asarray(clear)}
    from minet_jax.model import MINet

    params = nnx.state(MINet(cfg.model, rngs=nnx.Rngs(cfg.seed)), nnx.Param)
    graphdef, state, step, compile_s = _compiled_step(cfg, params, data)
    c = cost(step)
    jaxpr = jax.make_jaxpr(training.make_train_step(graphdef, training.make_optimizer(cfg), cfg.loss, cfg.stability))(
        state, data
    )
    flops, loop = conv_flops(jaxpr.jaxpr)
    first, times = _timed(lambda s: step(s, data), state, repeats=repeats)
    med = statistics.median(times)
    row = {
        "section": "training", "name": _name(pair, overrides, train_overrides), "pair": pair, "dtype": dtype, "crop": crop, "batch": batch,
        "T": T, "repeats": repeats, "compile_s": compile_s, "first_run_s": first, "median_s": med,
        "min_s": min(times), "max_s": max(times), "images_per_s": batch / med,
        "conv_flops_per_step": flops, "flops_exact": not loop, "xla_flops_per_step": c["flops"], **memory(step),
    }  # fmt: skip
    _roofline(row, flops if not loop else None, med, peaks)
    return row


def _name(pair: str, overrides: dict | None, train_overrides: dict | None) -> str:
    """'pair key=value ...', nested settings flattened to dotted keys."""

    def flat(d: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            out += flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}={v}"]
        return out

    return " ".join([pair, *flat(overrides or {}), *flat(train_overrides or {})])


# --- report ---


def _g(v, scale=1.0, fmt="{:.3g}") -> str:
    return "-" if v is None else fmt.format(v / scale)


def _rss(r: dict) -> str:
    if r.get("rss_peak_bytes") is None:
        return "-"
    return f"{r['rss_peak_bytes'] / 2**20:.0f} ({r['rss_before_bytes'] / 2**20:.0f})"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"machine: {m['device']} ({m['backend']}, {m['device_count']} device(s), {m['cpu_count']} CPU cores), "
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
            "| XLA MiB | device peak MiB | RSS MiB: peak (before) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["training"]:
            fl = f"{_g(r['conv_flops_per_step'], 1e9)}; {_g(r['xla_flops_per_step'], 1e9)}" + (
                "" if r["flops_exact"] else " (loops once: lower bound)"
            )
            lines.append(
                f"| {r['name']} | {r['dtype']} | {r['crop']}x{r['batch']} | {r['T']} | {r['median_s']:.3f} | "
                f"{r['images_per_s']:.3f} | {fl} | {_g(r['achieved_flops_per_s'], 1e9)} | "
                f"{_g(r['fraction_of_measured_peak'], fmt='{:.1%}')} | {_g(r['xla_peak_bytes'], 2**20, '{:.0f}')} | "
                f"{_g(r['device_peak_bytes'], 2**20, '{:.0f}')} | {_rss(r)} |"
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


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far, in bytes.

    Linux's VmHWM where there is one: `ru_maxrss` survives exec, so a child started by a large
    process would report at least its parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


_ROWS = {"inference": bench_inference, "training": bench_training}


def _row(kind: str, kwargs: dict, isolate: bool) -> dict:
    """One benchmark row, in this process or (isolate) in a fresh one that also reports its peak
    resident memory."""
    if not isolate:
        return _ROWS[kind](**kwargs)
    res = subprocess.run(
        [sys.executable, "-m", "minet_jax.bench", "--row", json.dumps({"kind": kind, "kwargs": kwargs})],
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
    parser.add_argument("--T", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model setting for every row, e.g. --set share_sep_impl=xla (repeatable)")  # fmt: skip
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="training setting, e.g. --train-set stability.weight=1.0 (repeatable)")  # fmt: skip
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
        overrides, train_overrides = parse_overrides(args.set), parse_overrides(args.train_set)
    except ValueError as e:
        parser.error(str(e))
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
                    row = _row("inference", dict(variant=args.variant, dtype=dtype, shape=(b, h, w, 3),
                               repeats=args.repeats, peaks=report["peak"], overrides=overrides,
                               microbatch=args.microbatch), args.isolate)  # fmt: skip
                    print(f"inference {dtype} {b}x{h}x{w}: {row['median_s']:.3f} s", flush=True)
                    report["inference"].append(row)
                    save()
    if "training" in sections:
        report["training"] = []
        for pair in _csv(args.pairs):
            for dtype in dtypes:
                row = _row("training", dict(pair=pair, dtype=dtype, crop=args.train_crop, batch=args.train_batch,
                           T=args.T, repeats=args.train_repeats, peaks=report["peak"], overrides=overrides,
                           train_overrides=train_overrides), args.isolate)  # fmt: skip
                print(f"training {row['name']} {dtype}: {row['median_s']:.3f} s", flush=True)
                report["training"].append(row)
                save()
    print(markdown(report))
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
