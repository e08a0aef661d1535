"""Measuring pieces shared by the benchmark and the solver comparison: the machine, timing, peak
resident memory, XLA's memory and cost analyses, a FLOP count of the convolutions, and the
compiled training step that both time."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from minet_jax import training
from minet_jax.model import MINet

# Vendor dense peaks (FLOP/s, no sparsity) for the accelerators this project is run on; the measured
# matmul peak is the one the roofline fraction uses first, these are context.
NOMINAL_PEAK = {
    "H100": {"float32": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12},  # SXM5
    "H200": {"float32": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12},
    "A100": {"float32": 19.5e12, "tf32": 156e12, "bfloat16": 312e12},
}


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What ran the measurement."""
    dev = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def nominal_peak(dtype: str) -> float | None:
    """The vendor's dense FLOP/s of this accelerator in `dtype`, where this module knows it."""
    kind = str(getattr(jax.devices()[0], "device_kind", ""))
    for name, peaks in NOMINAL_PEAK.items():
        if name in kind:
            return peaks.get(dtype)
    return None


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


def reset_peak_rss() -> bool:
    """Start a new peak of resident memory now (Linux: /proc/self/clear_refs), after handing the
    heap's free memory back (glibc's malloc_trim), so that the next `peak_rss_bytes` measures what
    came after (e.g. training steps without their compilation). False where it cannot."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def time_alternately(steps: list[CompiledStep], batch: dict, *, reps: int, warmup: int) -> list[list[float]]:
    """Wall times of `reps` calls of each compiled training step on `batch`, in turn (A, B, A, B,
    ...) so that every step sees the same machine state, after `warmup` untimed calls of each."""
    for step in steps:
        for _ in range(warmup):
            jax.block_until_ready(step.compiled(step.state, batch))
    times = [[] for _ in steps]
    for _ in range(reps):
        for i, step in enumerate(steps):
            t0 = time.perf_counter()
            jax.block_until_ready(step.compiled(step.state, batch))
            times[i].append(time.perf_counter() - t0)
    return times


def alternated_summary(names: list[str], times: list[list[float]]) -> list[dict]:
    """For variants timed in turn (A, B, A, B, ...): per variant its median, spread (min, max)
    and median over the first variant's median."""
    medians = [statistics.median(t) for t in times]
    return [
        {"variant": v, "median_s": m, "min_s": min(t), "max_s": max(t), "ratio": m / medians[0], "times_s": t}
        for v, t, m in zip(names, times, medians, strict=True)
    ]


def save_report(output: str | Path, stem: str, report: dict, md: str) -> None:
    """OUTPUT/STEM.json (the report) and OUTPUT/STEM.md, making OUTPUT where it is missing."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(md)


def timed(fn, *args, repeats: int) -> tuple[float, list[float]]:
    """(first call s, wall times of `repeats` further calls), each waited for with block_until_ready."""
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


def memory_fields(compiled: Any) -> dict[str, int]:
    """The integer fields of XLA's memory analysis of a compiled executable ({} if none)."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 (some backends do not implement it)
        return {}
    if stats is None:
        return {}
    names = [n for n in dir(stats) if n.endswith("_in_bytes")]
    return {n.removesuffix("_in_bytes"): int(getattr(stats, n)) for n in names}


def xla_peak(mem: dict[str, int]) -> int | None:
    """Arguments + outputs (less what aliases the arguments) + temporaries: the step's footprint."""
    if not mem:
        return None
    return mem.get("argument_size", 0) + mem.get("output_size", 0) - mem.get("alias_size", 0) + mem.get("temp_size", 0)


def device_peak() -> int | None:
    """The device's peak bytes in use so far in this process (GPU / TPU), else None."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def memory(compiled: Any) -> dict:
    """XLA's memory estimate of a compiled program and the device's peak bytes so far, in bytes."""
    return {"xla_peak_bytes": xla_peak(memory_fields(compiled)), "device_peak_bytes": device_peak()}


class CompiledStep(NamedTuple):
    """A training step compiled ahead of time, and what it was built from."""

    graphdef: nnx.GraphDef
    state: training.TrainState  # step 0 at the given parameters
    step_fn: Any  # the jitted `(state, batch) -> (state, metrics)` (for make_jaxpr)
    compiled: Any  # its compiled executable for `state` and the batch
    compile_s: float


def compile_train_step(
    cfg: ml_collections.ConfigDict, params: Any, batch: dict, compiler_options: dict | None = None
) -> CompiledStep:
    """`training.make_train_step` for the training config `cfg` (its loss, optimiser and
    `cfg.stability` regulariser), compiled for a fresh state at `params` and `batch`'s shapes."""
    tx = training.make_optimizer(cfg)
    graphdef = nnx.split(nnx.eval_shape(lambda: MINet(cfg.model, rngs=nnx.Rngs(cfg.seed))), nnx.Param)[0]
    state = training.new_state(params, tx)
    step_fn = training.make_train_step(graphdef, tx, cfg.loss, cfg.stability)
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile(compiler_options=compiler_options)
    return CompiledStep(graphdef, state, step_fn, compiled, time.perf_counter() - t0)


def synthetic_batch(batch: int, crop: int, seed: int = 0) -> dict[str, jax.Array]:
    """A fixed hazy/clear batch of the right value range. A fixed-step solver's time does not depend
    on the content; a solve to a tolerance's does (use `paired_batch` to time one on real haze)."""
    clear = np.random.default_rng(seed).uniform(0.1, 0.9, (batch, crop, crop, 3)).astype(np.float32)
    return {"hazy": jnp.asarray(0.6 * clear + 0.35), "clear": jnp.asarray(clear)}


def paired_batch(folder: str | Path, batch: int, crop: int) -> dict[str, jax.Array]:
    """`batch` central hazy/clear crops of side `crop` (RGB in [0, 1]) from a paired folder
    (hazy/, clear/), one per pair spread evenly over it: a fixed batch of real haze."""
    from minet_jax.datasets import folder_pairs  # noqa: PLC0415
    from minet_jax.image_io import center_crop, read_rgb  # noqa: PLC0415

    pairs = folder_pairs(Path(folder))
    picks = [pairs[i] for i in np.linspace(0, len(pairs) - 1, batch).astype(int)]
    return {
        key: jnp.asarray(np.stack([center_crop(read_rgb(getattr(p, key)), crop) for p in picks]) / np.float32(255))
        for key in ("hazy", "clear")
    }
