"""Compare the IM-block solvers in training: memory, speed, gradient accuracy, quality.

    python -m minet_jax.tools.compare_solvers --quick --output /tmp/cs_quick    # CPU-friendly
    python -m minet_jax.tools.compare_solvers --ratio                           # implicit / unrolled at T=8
    python -m minet_jax.tools.compare_solvers --pairs unrolled/unrolled,unrolled/implicit --Ts 4,8,16

For each forward/backward pair (`config.model.solver.forward` / `.backward`) and each T (the
unrolled forward's step count; the fixed_point / anderson forwards use tol / max_iter instead and
are run once, with T null) it measures, on MI-Net (configs/default.py's model) with the same
initial parameters and the same synthetic batches:

- the compiled training step's memory from XLA's memory analysis (and the device's peak where the
  backend reports one);
- the median step time after compilation;
- the parameter gradient at the initial parameters against a high-T unrolled reference (and
  against the exact gradient of the T-step network, unrolled/unrolled at the same T);
- forward iterations / residuals per block and the backward (adjoint) iterations / residuals;
- validation PSNR / SSIM after `--train-steps` steps (train.py's metrics: uint8-rounded outputs).

Writes OUTPUT/compare_solvers.json, .md and .png and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from minet_jax import training
from minet_jax.config import ConfigError, apply_overrides, load_config, model_config
from minet_jax.model import MINet
from minet_jax.solvers import BACKWARDS, FORWARDS
from minet_jax.tools.measure import compile_train_step, device_peak, machine, memory_fields, xla_peak

DEFAULT_PAIRS = (
    "unrolled/unrolled",
    "unrolled/implicit",
    "fixed_point/implicit",
    "anderson/implicit",
    "fixed_point/unrolled",
    "unrolled/phantom",
    "fixed_point/phantom",
)
DEFAULT_TS = (4, 8, 12, 16, 32)
EXACT = "unrolled/unrolled"
BLOCKS = 3

# Every record has these keys (null where not applicable or not measured); also in the JSON as "fields".
RECORD_FIELDS = {
    "pair": "forward/backward, i.e. config.model.solver.forward / .backward",
    "forward": "config.model.solver.forward",
    "backward": "config.model.solver.backward",
    "T": "config.model.T for the unrolled forward; null for fixed_point / anderson (tol / max_iter instead)",
    "crop": "square training crop side (pixels)",
    "batch": "batch size",
    "channels": "model width",
    "eta": "config.model.eta",
    "tol": "forward tolerance (fixed_point / anderson forwards)",
    "max_iter": "forward iteration cap (fixed_point / anderson forwards)",
    "phantom_steps": "k of the phantom backward",
    "backward_solver": "adjoint solver of the implicit backward",
    "backward_tol": "adjoint tolerance of the implicit backward",
    "backward_max_iter": "adjoint iteration cap of the implicit backward",
    "compile_s": "lowering + XLA compilation of the training step (s)",
    "xla_memory": "XLA memory analysis of the compiled step: {field: bytes} (argument_size, output_size, "
    "alias_size, temp_size, generated_code_size, peak_memory, host_*)",
    "xla_peak_bytes": "argument + output - alias + temp bytes of the compiled step",
    "device_peak_bytes": "device's peak_bytes_in_use after the timed steps (GPU/TPU; process-wide, never reset, "
    "so a running maximum over the records so far); null on CPU",
    "step_time_median_s": "median wall time of a training step after compilation and one warm-up step",
    "step_time_min_s": "fastest timed step",
    "timing_steps": "number of timed steps",
    "grad_norm": "norm of the parameter gradient at the initial parameters (first batch)",
    "grad_cosine_ref": "cosine similarity of the gradient (all parameters) with unrolled/unrolled at T = ref_T",
    "grad_rel_error_ref": "||g - g_ref|| / ||g_ref||, all parameters",
    "grad_cosine_exact": "cosine with the exact gradient of the T-step network (unrolled/unrolled, same T)",
    "grad_rel_error_exact": "relative error against that exact gradient",
    "grad_cosine_ref_blocks": "as grad_cosine_ref over the IM-blocks' parameters only",
    "grad_rel_error_ref_blocks": "as grad_rel_error_ref over the IM-blocks' parameters only",
    "grad_cosine_exact_blocks": "as grad_cosine_exact over the IM-blocks' parameters only",
    "grad_rel_error_exact_blocks": "as grad_rel_error_exact over the IM-blocks' parameters only",
    "forward_iterations": "per block: forward iterations at the initial parameters",
    "forward_residual": "per block: final forward relative residual",
    "backward_iterations": "per block: adjoint iterations (implicit; gmres: an upper bound) or steps "
    "backpropagated (unrolled, phantom)",
    "backward_residual": "per block: final adjoint relative residual (implicit), else 0",
    "train_steps": "training steps before validation (same init and batches for every record)",
    "train_time_s": "wall time of those steps",
    "final_loss": "loss of the last training step",
    "final_forward_iterations": "per block: forward iterations at the last training step",
    "final_backward_iterations": "per block: backward iterations at the last training step",
    "val_psnr": "mean validation PSNR (dB) of uint8-rounded outputs after training (train.py's metric)",
    "val_ssim": "mean validation SSIM, likewise",
    "val_nonfinite": "validation outputs holding non-finite values",
    "error": "why the record is incomplete (exception, non-finite step), else null",
}
RECORD_KEYS = tuple(RECORD_FIELDS)


# ---------------------------------------------------------------------------------------------
# Configuration


def parse_pair(pair: str) -> tuple[str, str]:
    """'forward/backward' -> (forward, backward), checked against the solvers' choices."""
    parts = pair.strip().split("/")
    if len(parts) != 2 or parts[0] not in FORWARDS or parts[1] not in BACKWARDS:
        raise ValueError(f"pair must be forward/backward with forward in {FORWARDS}, backward in {BACKWARDS}: {pair!r}")
    return parts[0], parts[1]


def config_for(base: ml_collections.ConfigDict, pair: str, T: int | None) -> ml_collections.ConfigDict:
    """`base` with `config.model.solver.forward/backward` set from `pair` and `config.model.T = T`."""
    forward, backward = parse_pair(pair)
    cfg = copy.deepcopy(base)
    cfg.model.solver.forward = forward
    cfg.model.solver.backward = backward
    if T is not None:
        cfg.model.T = int(T)
    return cfg


def plan(pairs: Sequence[str], Ts: Sequence[int]) -> list[tuple[str, int | None]]:
    """(pair, T) to run: T-dependent pairs (unrolled forward) per T, the others once with T None.
    unrolled/unrolled comes first at each T so that its gradient serves as the exact one."""
    runs: list[tuple[str, int | None]] = []
    ordered = sorted(pairs, key=lambda p: p != EXACT)
    for pair in ordered:
        forward, _ = parse_pair(pair)
        runs += [(pair, int(T)) for T in Ts] if forward == "unrolled" else [(pair, None)]
    return runs


# ---------------------------------------------------------------------------------------------
# Measurements


def first_step_gradient(opt_state: Any, b1: float) -> Any:
    """The gradient of the first training step, read back from Adam's first moment mu = (1 - b1) g.

    Valid after exactly one step from a fresh optimiser state; it is the gradient the step used
    (clipped if config.grad_clip > 0), with no second program to compile.
    """
    return jax.tree.map(lambda m: np.asarray(m, np.float64) / (1.0 - b1), optax.tree.get(opt_state, "mu"))


def flat(tree: Any) -> np.ndarray:
    """All leaves of a pytree as one float64 vector."""
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def block_mask(params: Any) -> np.ndarray:
    """Boolean mask over `flat(params)`: True for the IM-blocks' field parameters (`blocks.*`)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return np.concatenate([np.full(np.size(v), jax.tree_util.keystr(p).startswith("['blocks']")) for p, v in leaves])


def agreement(g: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(cosine similarity, relative error ||g - ref|| / ||ref||)."""
    nr, ng = np.linalg.norm(ref), np.linalg.norm(g)
    cos = float(g @ ref / (ng * nr)) if ng > 0 and nr > 0 else float("nan")
    rel = float(np.linalg.norm(g - ref) / nr) if nr > 0 else float("nan")
    return cos, rel


def _block_stats(metrics: dict, name: str, cast=float) -> list:
    return [cast(metrics[f"solver/block{i + 1}_{name}"]) for i in range(BLOCKS)]


def run_config(
    cfg: ml_collections.ConfigDict,
    params: Any,
    batches: list[dict],
    val: list[dict],
    *,
    timing_steps: int,
    train_steps: int,
    compiler_options: dict | None = None,
) -> tuple[dict, np.ndarray]:
    """Measure one configuration; returns (partial record, flat gradient at `params` on batches[0])."""
    compiled = compile_train_step(cfg, params, batches[0], compiler_options)
    graphdef, state, step = compiled.graphdef, compiled.state, compiled.compiled
    batch0 = batches[0]
    rec: dict[str, Any] = {"compile_s": compiled.compile_s}
    mem = memory_fields(step)
    rec["xla_memory"] = mem
    rec["xla_peak_bytes"] = xla_peak(mem)

    # The first step (at the initial parameters) gives the solver statistics and the gradient and
    # warms the step up.
    s, metrics = jax.block_until_ready(step(state, batch0))
    if not bool(s.last_good):
        rec["error"] = "non-finite loss or gradient at the initial parameters"
    grad = flat(first_step_gradient(s.opt_state, cfg.adam_b1))
    rec["grad_norm"] = float(np.linalg.norm(grad))
    rec["forward_iterations"] = _block_stats(metrics, "iterations", int)
    rec["forward_residual"] = _block_stats(metrics, "residual")
    rec["backward_iterations"] = _block_stats(metrics, "backward_iterations")
    rec["backward_residual"] = _block_stats(metrics, "backward_residual")
    times = []
    for _ in range(timing_steps):
        t0 = time.perf_counter()
        s, _ = jax.block_until_ready(step(s, batch0))
        times.append(time.perf_counter() - t0)
    rec["timing_steps"] = timing_steps
    rec["step_time_median_s"] = statistics.median(times) if times else None
    rec["step_time_min_s"] = min(times) if times else None
    rec["device_peak_bytes"] = device_peak()
    del s

    rec["train_steps"] = train_steps
    keys = ("train_time_s", "final_loss", "final_forward_iterations", "final_backward_iterations")
    rec.update(dict.fromkeys(keys + ("val_psnr", "val_ssim", "val_nonfinite")))
    if train_steps > 0:
        t0 = time.perf_counter()
        s = state
        for k in range(train_steps):
            s, metrics = step(s, batches[k % len(batches)])
        jax.block_until_ready(s)
        rec["train_time_s"] = time.perf_counter() - t0
        rec["final_loss"] = float(metrics["loss"])
        rec["final_forward_iterations"] = _block_stats(metrics, "iterations", int)
        rec["final_backward_iterations"] = _block_stats(metrics, "backward_iterations")
        if not bool(s.last_good):
            rec["error"] = "non-finite loss or gradient during training (updates skipped)"
        if val:
            rec.update(training.validate(training.make_predict(graphdef), s.params, val)[0])
    return rec, grad


def compare(
    base: ml_collections.ConfigDict,
    *,
    pairs: Sequence[str] = DEFAULT_PAIRS,
    Ts: Sequence[int] = DEFAULT_TS,
    crops: Sequence[int] = (64,),
    batch_size: int = 4,
    ref_T: int = 64,
    timing_steps: int = 5,
    train_steps: int = 50,
    val_limit: int = 0,
    output: str | Path | None = None,
    verbose: bool = True,
    compiler_options: dict | None = None,
) -> dict:
    """Run every (pair, T) on every crop size; write JSON / Markdown / PNG under `output`.

    `base` is the training config: its model (channels, eta, solver tol / max_iter / backward
    settings, ...), data, loss, optimiser and seed apply to all runs; the pair and T are set per
    run. `ref_T` 0 skips the comparison with a high-T reference gradient. `compiler_options` go to
    XLA for the training steps (tests pass {"xla_backend_optimization_level": 0} to compile
    faster; timings then are not representative). Returns the report dict.
    """
    from minet_jax import input_pipeline  # grain / tfds are heavy imports

    for p in pairs:
        parse_pair(p)
    base = copy.deepcopy(base)
    base.data.val_limit = int(val_limit)
    val = input_pipeline.val_images(base.data) if train_steps > 0 else []
    params = nnx.split(MINet(base.model, rngs=nnx.Rngs(base.seed)), nnx.Param)[1]
    blocks = block_mask(params)
    sv = base.model.solver
    settings = {
        "pairs": list(pairs), "Ts": [int(t) for t in Ts], "crops": [int(c) for c in crops],
        "batch": int(batch_size), "ref_T": int(ref_T), "timing_steps": int(timing_steps),
        "train_steps": int(train_steps), "val_images": len(val), "val_limit": int(val_limit),
        "variant": base.model.variant, "channels": int(base.model.channels), "eta": float(base.model.eta),
        "tol": float(sv.tol), "max_iter": int(sv.max_iter), "anderson_m": int(sv.anderson_m),
        "backward_solver": sv.backward_solver, "backward_tol": float(sv.backward_tol),
        "backward_max_iter": int(sv.backward_max_iter), "phantom_steps": int(sv.phantom_steps),
        "unroll": sv.unroll, "loss": base.loss, "lr": float(base.lr), "grad_clip": float(base.grad_clip),
        "seed": int(base.seed),
        "data": base.data.name, "data_manual_dir": base.data.manual_dir, "data_dir": base.data.data_dir,
        "model": json.loads(base.model.to_json()),
    }  # fmt: skip
    if val:
        quality = training.input_quality(val)
        settings["val_input_psnr"], settings["val_input_ssim"] = quality["input_psnr"], quality["input_ssim"]

    records = []
    for crop in crops:
        data = copy.deepcopy(base.data)
        data.crop_size = int(crop)
        it = input_pipeline.train_iterator(data, batch_size=batch_size, seed=base.seed)
        batches = [next(it) for _ in range(max(1, train_steps))]
        exact: dict[int, np.ndarray | None] = {}  # T -> gradient of the T-step network (unrolled/unrolled)
        grads: list[tuple[dict, np.ndarray]] = []
        for pair, T in plan(pairs, Ts):
            cfg = config_for(base, pair, T)
            rec = _new_record(cfg, pair, T, crop, batch_size)
            label = f"{pair} T={T}" if T is not None else pair
            if verbose:
                print(f"[{crop}x{crop} b{batch_size}] {label} ...", flush=True)
            try:
                measured, grad = run_config(
                    cfg, params, batches, val, timing_steps=timing_steps, train_steps=train_steps,
                    compiler_options=compiler_options,
                )  # fmt: skip
                rec.update(measured)
                grads.append((rec, grad))
                if pair == EXACT:
                    exact[T] = grad
            except Exception as e:  # noqa: BLE001 (an out-of-memory configuration must not stop the rest)
                rec["error"] = f"{type(e).__name__}: {e}"
                if verbose:
                    traceback.print_exc()
            records.append(rec)
            if verbose:
                print("  " + _summary_line(rec), flush=True)
        # Gradient agreement, once every exact gradient this crop ran is known (others computed now).
        for rec, grad in grads:
            for T, name in [(ref_T, "ref"), (rec["T"], "exact")]:
                if not T:
                    continue
                if T not in exact:
                    if verbose:
                        print(f"[{crop}x{crop} b{batch_size}] reference gradient: {EXACT} T={T} ...", flush=True)
                    try:
                        exact[T] = _exact_grad(base, T, params, batches[0], compiler_options)
                    except Exception:  # noqa: BLE001 (e.g. out of memory: leave the agreement null)
                        exact[T] = None
                        traceback.print_exc()
                if exact[T] is None:
                    continue
                rec[f"grad_cosine_{name}"], rec[f"grad_rel_error_{name}"] = agreement(grad, exact[T])
                cos, rel = agreement(grad[blocks], exact[T][blocks])
                rec[f"grad_cosine_{name}_blocks"], rec[f"grad_rel_error_{name}_blocks"] = cos, rel

    report = {
        "machine": machine(),
        "settings": settings,
        "fields": RECORD_FIELDS,
        "records": records,
        # T -> crop -> implicit / unrolled step-time and memory ratios (unrolled forward)
        "implicit_vs_unrolled": {str(T): ratios(records, T) for T in Ts},
    }
    if output:
        write_outputs(report, output)
    return report


def _new_record(cfg: ml_collections.ConfigDict, pair: str, T: int | None, crop: int, batch: int) -> dict:
    """A record with every key, the configuration filled in."""
    forward, backward = parse_pair(pair)
    sv = cfg.model.solver
    rec: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
    rec.update(
        pair=pair, forward=forward, backward=backward, T=T, crop=int(crop), batch=int(batch),
        channels=int(cfg.model.channels), eta=float(cfg.model.eta),
        tol=None if forward == "unrolled" else float(sv.tol),
        max_iter=None if forward == "unrolled" else int(sv.max_iter),
        phantom_steps=int(sv.phantom_steps) if backward == "phantom" else None,
        backward_solver=sv.backward_solver if backward == "implicit" else None,
        backward_tol=float(sv.backward_tol) if backward == "implicit" else None,
        backward_max_iter=int(sv.backward_max_iter) if backward == "implicit" else None,
    )  # fmt: skip
    return rec


def _exact_grad(
    base: ml_collections.ConfigDict, T: int, params: Any, batch: dict, compiler_options: dict | None
) -> np.ndarray:
    cfg = config_for(base, EXACT, T)
    compiled = compile_train_step(cfg, params, batch, compiler_options)
    s, _ = compiled.compiled(compiled.state, batch)
    return flat(first_step_gradient(s.opt_state, cfg.adam_b1))


def ratios(records: list[dict], T: int = 8) -> dict:
    """Step-time and XLA-memory ratios implicit / unrolled (unrolled forward, at T) per crop."""
    out = {}
    for crop in sorted({r["crop"] for r in records}):
        by = {r["pair"]: r for r in records if r["crop"] == crop and r["T"] == T}
        u, i = by.get("unrolled/unrolled"), by.get("unrolled/implicit")
        if not u or not i or u["error"] or i["error"]:
            continue
        out[str(crop)] = {
            "time_ratio": _div(i["step_time_median_s"], u["step_time_median_s"]),
            "memory_ratio": _div(i["xla_peak_bytes"], u["xla_peak_bytes"]),
            "device_memory_ratio": _div(i["device_peak_bytes"], u["device_peak_bytes"]),
        }
    return out


def _div(a, b):
    return a / b if a is not None and b else None


# ---------------------------------------------------------------------------------------------
# Outputs


def _f(v, fmt: str = "{:.3g}") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return fmt.format(v)


def _mib(v) -> str:
    return "-" if v is None else f"{v / 2**20:.1f}"


def _triple(v, fmt: str = "{:g}") -> str:
    return "-" if v is None else "/".join(fmt.format(x) for x in v)


def _summary_line(r: dict) -> str:
    if r["error"] and r["xla_peak_bytes"] is None:
        return f"error: {r['error']}"
    return (
        f"XLA {_mib(r['xla_peak_bytes'])} MiB, step {_f(r['step_time_median_s'])} s, "
        f"|grad| {_f(r['grad_norm'])}, fwd iters {_triple(r['forward_iterations'])}, "
        f"val PSNR {_f(r['val_psnr'], '{:.2f}')}" + (f" ({r['error']})" if r["error"] else "")
    )


def markdown(report: dict) -> str:
    """The records as a Markdown table (memory in MiB, times in seconds)."""
    s = report["settings"]
    lines = [
        f"machine: {report['machine']}",
        "",
        f"crops {s['crops']}, batch {s['batch']}, channels {s['channels']}, eta {s['eta']}, "
        f"fixed_point/anderson tol {s['tol']:g} max_iter {s['max_iter']}, implicit backward "
        f"{s['backward_solver']} tol {s['backward_tol']:g} max_iter {s['backward_max_iter']}, phantom k "
        f"{s['phantom_steps']}; gradient reference: unrolled T={s['ref_T']}; {s['timing_steps']} timed steps; "
        f"{s['train_steps']} training steps"
        + (f", validation input PSNR {s['val_input_psnr']:.2f} dB" if "val_input_psnr" in s else ""),
        "",
        (
            "| crop | pair | T | XLA MiB | device peak MiB | step s (median) | compile s | cos ref | rel err ref "
            "| cos ref (blocks) | rel err ref (blocks) | rel err exact T (blocks) | fwd iters | fwd residual "
            "| bwd iters | bwd residual | val PSNR | val SSIM | note |"
        ),
        "|" + "---|" * 19,
    ]
    for r in report["records"]:
        cols = [
            r["crop"], r["pair"] + (f" k={r['phantom_steps']}" if r["phantom_steps"] else ""),
            "-" if r["T"] is None else r["T"], _mib(r["xla_peak_bytes"]), _mib(r["device_peak_bytes"]),
            _f(r["step_time_median_s"]), _f(r["compile_s"], "{:.1f}"), _f(r["grad_cosine_ref"], "{:.6f}"),
            _f(r["grad_rel_error_ref"], "{:.2e}"), _f(r["grad_cosine_ref_blocks"], "{:.6f}"),
            _f(r["grad_rel_error_ref_blocks"], "{:.2e}"), _f(r["grad_rel_error_exact_blocks"], "{:.2e}"),
            _triple(r["forward_iterations"]), _triple(r["forward_residual"], "{:.1e}"),
            _triple(r["backward_iterations"]), _triple(r["backward_residual"], "{:.1e}"),
            _f(r["val_psnr"], "{:.2f}"), _f(r["val_ssim"], "{:.4f}"), r["error"] or "",
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str | Path) -> None:
    """Memory, step time and gradient error vs T per pair (T-free pairs as dashed lines), PSNR bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in report["records"] if not r["error"] or r["xla_peak_bytes"] is not None]
    crops = sorted({r["crop"] for r in recs})
    multi = len(crops) > 1
    ref_T = report["settings"]["ref_T"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    panels = [
        (axes[0, 0], "xla_peak_bytes", 2.0**-20, "XLA step memory (MiB)"),
        (axes[0, 1], "step_time_median_s", 1.0, "median step time (s)"),
        (axes[1, 0], "grad_rel_error_ref_blocks", 1.0, f"IM-block gradient rel. error vs unrolled T={ref_T}"),
    ]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    pairs = list(dict.fromkeys(r["pair"] for r in recs))
    Ts = sorted({r["T"] for r in recs if r["T"] is not None})
    for ax, key, scale, title in panels:
        for j, pair in enumerate(pairs):
            for crop in crops:
                rs = [r for r in recs if r["pair"] == pair and r["crop"] == crop and r[key] is not None]
                label = f"{pair} @{crop}" if multi else pair
                color = colors[j % len(colors)]
                pts = [(r["T"], r[key] * scale) for r in rs if r["T"] is not None]
                if pts:
                    ax.plot(*zip(*pts), "o-", color=color, label=label)
                for r in rs:
                    if r["T"] is None:
                        ax.axhline(r[key] * scale, color=color, ls="--", label=label + " (tol)")
        ax.set_xlabel("T")
        ax.set_title(title)
        if Ts:
            ax.set_xticks(Ts)
        if key == "grad_rel_error_ref_blocks" and any(r[key] for r in recs):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    ax = axes[1, 1]
    bars = [r for r in recs if r["val_psnr"] is not None]
    if bars:
        labels = [
            f"{r['pair']}" + (f" T={r['T']}" if r["T"] is not None else "") + (f" @{r['crop']}" if multi else "")
            for r in bars
        ]
        ax.barh(
            range(len(bars)),
            [r["val_psnr"] for r in bars],
            color=[colors[pairs.index(r["pair"]) % len(colors)] for r in bars],
        )
        ax.set_yticks(range(len(bars)), labels, fontsize=7)
        lo = min(r["val_psnr"] for r in bars)
        inp = report["settings"].get("val_input_psnr")
        if inp is not None:
            ax.axvline(inp, color="k", ls=":", label="hazy input")
            lo = min(lo, inp)
            ax.legend(fontsize=7)
        ax.set_xlim(lo - 1, max(r["val_psnr"] for r in bars) + 0.5)
        ax.invert_yaxis()
    ax.set_title(f"validation PSNR (dB) after {report['settings']['train_steps']} steps")
    fig.suptitle(f"MI-Net solvers: {report['machine']['device']} ({report['machine']['backend']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict, output: str | Path) -> Path:
    """Write compare_solvers.json / .md / .png into the folder `output`."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_solvers.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "compare_solvers.md").write_text(markdown(report))
    plot(report, out / "compare_solvers.png")
    return out


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


# ---------------------------------------------------------------------------------------------
# Command line


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()] if s else []


def parse_crops(s: str) -> list[int]:
    """'32,64' or '64x64' (crops are square) -> [32, 64] / [64]."""
    out = []
    for v in (v.strip().lower() for v in s.split(",") if v.strip()):
        h, _, w = v.partition("x")
        if w and int(w) != int(h):
            raise SystemExit(f"crops are square: got {v}")
        out.append(int(h))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-friendly: crop 32, batch 2, T 4,8, 3 timed steps, "
                   "5 training steps, reference T 32, 2 validation images, max_iter 30")  # fmt: skip
    p.add_argument("--ratio", action="store_true", help="the speed question: unrolled/unrolled vs unrolled/implicit "
                   "at T=8 on 64x64 crops, batch 4; prints the step-time and memory ratios")  # fmt: skip
    p.add_argument("--pairs", default="", help=f"comma-separated forward/backward (default {','.join(DEFAULT_PAIRS)})")
    p.add_argument(
        "--Ts", "--T", dest="Ts", default="", help="comma-separated T of the unrolled forward (default 4,8,12,16,32)"
    )
    p.add_argument("--crop", "--sizes", dest="crop", default="", help="comma-separated square crop sizes (default 64)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 4)")
    p.add_argument(
        "--ref-T", type=int, default=None, help="T of the unrolled reference gradient (default 64; 0 = none)"
    )
    p.add_argument("--timing-steps", type=int, default=None, help="timed steps after compilation (default 5)")
    p.add_argument(
        "--train-steps", type=int, default=None, help="training steps before validation (default 50; 0 = skip)"
    )
    p.add_argument("--val-limit", type=int, default=None, help="validation images (0 = all)")
    p.add_argument("--variant", default="official", choices=["official", "paper"])
    p.add_argument("--channels", type=int, default=None, help="model width (default the variant's)")
    p.add_argument("--eta", type=float, default=None, help="step size eta (default from the config)")
    p.add_argument("--tol", type=float, default=None, help="forward tolerance of fixed_point / anderson")
    p.add_argument("--max-iter", type=int, default=None, help="forward max_iter of fixed_point / anderson")
    p.add_argument("--backward-solver", default=None, choices=["fixed_point", "anderson", "gmres"])
    p.add_argument("--backward-tol", type=float, default=None)
    p.add_argument("--backward-max-iter", type=int, default=None)
    p.add_argument("--phantom-steps", type=int, default=None, help="k of the phantom backward (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training-config field, e.g. --set model.solver.anderson_m=3 (repeatable)")  # fmt: skip
    p.add_argument("--data-dir", default="", help="synthetic data folder (config.data.manual_dir; default the cache)")
    p.add_argument("--tfds-dir", default="", help="TFDS folder (config.data.data_dir; default the cache)")
    p.add_argument("--output", default="runs/compare_solvers", help="folder for compare_solvers.json/.md/.png")
    return p


def config_from_args(args: argparse.Namespace) -> ml_collections.ConfigDict:
    """configs/default.py's config (for `--variant paper`, the paper model, rgb01 / identity) with
    the flags and then the `--set` overrides applied."""
    cfg = load_config("default")
    if args.variant != cfg.model.variant:
        cfg.model = model_config(args.variant)
        cfg.model.input_format, cfg.model.init = "rgb01", "identity"
    flags = {
        "channels": "model.channels", "eta": "model.eta", "tol": "model.solver.tol",
        "max_iter": "model.solver.max_iter", "backward_solver": "model.solver.backward_solver",
        "backward_tol": "model.solver.backward_tol", "backward_max_iter": "model.solver.backward_max_iter",
        "phantom_steps": "model.solver.phantom_steps", "data_dir": "data.manual_dir", "tfds_dir": "data.data_dir",
    }  # fmt: skip
    given = [(key, getattr(args, flag)) for flag, key in flags.items() if getattr(args, flag) not in (None, "")]
    try:
        return apply_overrides(cfg, [*given, *args.set])
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick and args.ratio:
        raise SystemExit("--quick and --ratio are separate modes")
    defaults = {
        "crop": [64], "batch": 4, "Ts": list(DEFAULT_TS), "ref_T": 64, "timing_steps": 5, "train_steps": 50,
        "val_limit": 0, "pairs": list(DEFAULT_PAIRS),
    }  # fmt: skip
    if args.quick:
        defaults.update(crop=[32], batch=2, Ts=[4, 8], ref_T=32, timing_steps=3, train_steps=5, val_limit=2)
        if args.max_iter is None:
            args.max_iter = 30
    if args.ratio:
        defaults.update(crop=[64], batch=4, Ts=[8], ref_T=8, timing_steps=5, train_steps=0,
                        pairs=["unrolled/unrolled", "unrolled/implicit"])  # fmt: skip
    pick = lambda given, key: given if given not in (None, "", []) else defaults[key]
    cfg = config_from_args(args)
    report = compare(
        cfg,
        pairs=pick([p.strip() for p in args.pairs.split(",") if p.strip()], "pairs"),
        Ts=pick(_ints(args.Ts), "Ts"),
        crops=pick(parse_crops(args.crop), "crop"),
        batch_size=pick(args.batch, "batch"),
        ref_T=pick(args.ref_T, "ref_T"),
        timing_steps=pick(args.timing_steps, "timing_steps"),
        train_steps=pick(args.train_steps, "train_steps"),
        val_limit=pick(args.val_limit, "val_limit"),
        output=args.output,
    )
    print()
    print(markdown(report))
    for T, by_crop in report["implicit_vs_unrolled"].items():
        for crop, r in by_crop.items():
            print(
                f"T={T}, {crop}x{crop} crops, batch {report['settings']['batch']}: implicit / unrolled step time "
                f"{_f(r['time_ratio'], '{:.3f}')}, XLA memory {_f(r['memory_ratio'], '{:.3f}')}"
                + (f", device peak {r['device_memory_ratio']:.3f}" if r["device_memory_ratio"] else "")
            )
    print(f"wrote {Path(args.output) / 'compare_solvers.json'} (.md, .png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
