"""The solver study: MI-Net trained on real haze with each IM-block solver, and a DEQ-MI-Net.

    python -m minet_jax.tools.solver_study --preset cpu --output runs/solver_study
    python -m minet_jax.tools.solver_study --preset gpu --output runs/solver_study_gpu
    python -m minet_jax.tools.solver_study --preset cpu --output runs/solver_study --tracks scratch --runs unrolled,deq

Two tracks, the same budget (steps, crop, batch, seed) for every run of a track (a preset's
`track_budget` may give a track its own crop and batch):

- `scratch`: configs/default.py's network (RGB [0, 1], output path started near the identity)
  trained from a random init;
- `finetune`: the authors' released network (BGR 0..255) started from their weights
  (`config.init_from`, ../shared/weights/minet_its_official.pth by default).

Runs (`RUNS`): `unrolled` (T = 8, backprop through the steps: the paper's network), `phantom`
(T = 8 forward, k = 1 phantom gradient), `implicit` (T = 8 forward, implicit backward), `deq`
(configs/deq.py's solver: Anderson forward to a tolerance, implicit backward, the stability term)
and `deq_no_stability` (the same without the term). Training data: `--train-data` (default
../shared/data/sots-indoor-train, real SOTS-indoor haze), validated along the way on
`val_subset` images of `--val-data` (sots-indoor-val: scenes training never sees).

Every run is `python train.py` in OUTPUT/<track>/<run> (its own process, so its peak resident
memory is the run's own), so an interrupted study resumes where it stopped: rerun the same
command. Its training step is also timed alone, in a process of its own, by
`minet_jax.tools.bench` (OUTPUT/<track>/<run>/step_bench/): step time and resident memory
without data loading and whole-image validation. A finished run is then analysed once (OUTPUT/<track>/<run>/analysis.json): PSNR / SSIM on
every validation image; forward iterations and final residual of each block on every whole
validation image; the spectral radius of eta J_f of each block (restarted Arnoldi) on
`probe_images` whole validation images and on as many training-size crops, and whether Theorem 1
holds. A run that fails (a diverging loss, say) is reported as failed with train.py's message.
Writes OUTPUT/solver_study.json, .md and .png (validation PSNR against step and training time).

These models have seen SOTS scenes (../shared/data/README.md): their numbers compare methods with
each other and are never SOTS benchmark results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
TRAIN_PY = ROOT / "train.py"

# Solver settings of each run (training-config overrides on top of the track's); the DEQ runs
# take theirs from configs/deq.py (`deq_overrides`).
RUNS: dict[str, dict[str, Any]] = {
    "unrolled": {"model.solver.forward": "unrolled", "model.solver.backward": "unrolled"},
    "phantom": {
        "model.solver.forward": "unrolled",
        "model.solver.backward": "phantom",
        "model.solver.phantom_steps": 1,
    },
    # The adjoint as configs/deq.py solves it (tolerance 1e-2: gradient cosine >= 0.99999 with the
    # converged adjoint's at init, benchmarks/results/adjoint_tolerance_cpu).
    "implicit": {"model.solver.forward": "unrolled", "model.solver.backward": "implicit", "deq_backward": True},
    "deq": {"deq": True, "stability": True},
    "deq_no_stability": {"deq": True, "stability": False},
}
TRACKS = ("scratch", "finetune")

# Budgets. `overrides` apply to every run (the tiny preset shrinks the network for tests).
_BUDGET = dict(val_limit=0, probe_images=2, overrides={})  # val_limit 0: the final validation sees every image
PRESETS: dict[str, dict[str, Any]] = {
    # ~25 min a run on a 2-core CPU (the unrolled run: 24.5 min), so ~4 h for both tracks' 10 runs.
    # Fine-tuning takes 128 px crops at batch 2 (the same pixels a step): on 64 px crops even lr 1e-5
    # took the authors' network from 37.35 to 34.81 dB on the validation subset over steps 100-400,
    # while 128 px crops held 37.65 / 37.54 at steps 50 / 150 (they trained on whole images).
    "cpu": {**_BUDGET, "steps": 400, "crop": 64, "batch": 8, "eval_every": 100, "val_subset": 8,
            "probe_krylov": 20, "probe_restarts": 2, "bench_repeats": 5,
            "track_budget": {"finetune": {"crop": 128, "batch": 2}}},
    "gpu": {**_BUDGET, "steps": 5000, "crop": 128, "batch": 16, "eval_every": 500, "val_subset": 16,
            "probe_krylov": 30, "probe_restarts": 5, "bench_repeats": 10},
    # Seconds, for the test suite.
    "tiny": {**_BUDGET, "steps": 2, "crop": 16, "batch": 2, "eval_every": 1, "val_subset": 1, "val_limit": 2,
             "probe_images": 1, "probe_krylov": 4, "probe_restarts": 0, "bench_repeats": 1,
             "overrides": {"model.channels": 4, "model.T": 2}},
}  # fmt: skip
TRACK_SETTINGS = {
    "scratch": {"lr": 2e-3, "lr_decay_every_fraction": 0.25},
    # 1e-4 wrecked the authors' converged weights on 64 px crops (they trained on whole images): validation
    # PSNR 37.9 -> 29.7 dB after 100 steps, 23.7 after 400; 1e-5 keeps 37.6 / 37.4 at 50 / 100.
    "finetune": {"lr": 1e-5, "lr_decay_every_fraction": 0.0},
}


# --- configs ---


def track_preset(preset: dict, track: str) -> dict:
    """`preset` with `track`'s own budget (its `track_budget` entry) applied."""
    return {**preset, **preset.get("track_budget", {}).get(track, {})}


def run_overrides(track: str, run: str, preset: dict, train_data: Path, val_data: Path, weights: Path) -> dict:
    """Every training-config override of one run: track, budget, data, then the run's solver."""
    t = TRACK_SETTINGS[track]
    steps = int(preset["steps"])
    decay = int(steps * t["lr_decay_every_fraction"])
    o: dict[str, Any] = {
        "num_steps": steps, "batch_size": preset["batch"], "seed": 0, "lr": t["lr"],
        "lr_decay_every": decay, "lr_decay_factor": 0.5,
        "eval_every": preset["eval_every"], "checkpoint_every": preset["eval_every"], "log_every": 1,
        "image_every": steps, "progress": False,
        "data.name": "paired", "data.manual_dir": str(train_data), "data.crop_size": preset["crop"],
        "data.fresh_haze": False, "data.val_name": "paired", "data.val_manual_dir": str(val_data),
        "data.val_split": "train", "data.val_limit": preset["val_subset"],
        "stability.every": 0,
    }  # fmt: skip
    if track == "finetune":
        o.update({"model.input_format": "bgr255", "model.init": "pytorch", "init_from": str(weights)})
    o.update(preset.get("overrides", {}))
    o.update(solver_overrides(run))
    return o


def solver_overrides(run: str) -> dict[str, Any]:
    """The training-config overrides of `run`'s solver (RUNS, with configs/deq.py's settings)."""
    from minet_jax.config import load_config  # noqa: PLC0415

    spec = RUNS[run]
    out = {k: v for k, v in spec.items() if "." in k}
    if spec.get("deq") or spec.get("deq_backward"):
        deq = load_config("deq")
        solver = deq.model.solver
        keys = list(solver) if spec.get("deq") else [k for k in solver if k.startswith("backward_")]
        out = {**{f"model.solver.{k}": solver[k] for k in keys}, **out}
        if spec.get("deq"):
            out["stability.weight"] = 0.0
            if spec["stability"]:
                # Every regulariser setting; the Arnoldi monitor (every, iters) is the study's own.
                out.update({f"stability.{k}": deq.stability[k] for k in deq.stability if k not in ("every", "iters")})
    return out


def _value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


# --- running ---


def train(workdir: Path, overrides: dict, log) -> dict:
    """`python train.py` in `workdir` (resuming there). Returns {"returncode", "peak_rss_bytes",
    "message"}; the peak is the largest over the parts of the run so far that trained (run.json;
    None if none did, or if they were measured before `wait_with_peak`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    record_path = workdir / "run.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"parts": []}
    cmd = [sys.executable, str(TRAIN_PY), "--workdir", str(workdir)]
    for k, v in overrides.items():
        cmd += ["--set", f"{k}={_value(v)}"]
    log(f"{workdir}: python train.py ... ({len(overrides)} overrides)")
    t0 = time.time()
    metrics = workdir / "metrics.jsonl"
    logged = metrics.stat().st_size if metrics.is_file() else 0
    with open(workdir / "train.log", "a", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        status, peak = wait_with_peak(proc.pid)
    code = os.waitstatus_to_exitcode(status)
    tail = (workdir / "train.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
    trained = (metrics.stat().st_size if metrics.is_file() else 0) != logged  # a finished run only exits
    record["parts"].append({"returncode": code, "seconds": round(time.time() - t0, 1),
                            "peak_rss_bytes": peak if trained else None})  # fmt: skip
    record["command"] = cmd
    record_path.write_text(json.dumps(record, indent=1))
    peaks = [p["peak_rss_bytes"] for p in record["parts"] if p.get("peak_rss_bytes")]
    return {"returncode": code, "peak_rss_bytes": max(peaks, default=None), "message": tail[0] if code else ""}


def wait_with_peak(pid: int, poll_s: float = 0.5) -> tuple[int, int]:
    """Wait for the child `pid`: its wait status and the peak resident bytes of the program it
    runs. Linux: its VmHWM, polled (growth in its last `poll_s` is missed). wait4's ru_maxrss
    is only the fallback: it survives fork and exec, so a child of this driver after an analysis
    reported the driver's 4.7 GiB for a train.py that held 1.5."""
    # measure.peak_rss_bytes reads this process's own VmHWM, and importing it would load JAX into
    # the driver, which needs none until it analyses: hence these few lines for another pid.
    peak = 0
    status_file = Path(f"/proc/{pid}/status")
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, peak or usage.ru_maxrss * 1024
        try:
            for line in status_file.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(poll_s)


def train_entry(workdir: Path, overrides: dict, batch: int, log) -> dict[str, Any]:
    """Train one run (`train`, resuming) and start its report entry: overrides, peak RSS, the
    validation curves, median step, and status ("done", or "failed (code): train.py's message")."""
    res = train(workdir, overrides, log)
    entry: dict[str, Any] = {"overrides": overrides, "peak_rss_bytes": res["peak_rss_bytes"]}
    entry["curves"] = curves(workdir, batch)
    entry["median_step_s"] = entry["curves"].pop("median_step_s")
    entry["status"] = "done" if res["returncode"] == 0 else f"failed ({res['returncode']}): {res['message']}"
    if res["returncode"]:
        log(f"{workdir}: {entry['status']}")
    return entry


def analyze(workdir: Path, overrides: dict, preset: dict, log) -> dict:
    """Validation on every image, forward statistics per block on whole images and Theorem 1
    probes of the run's last checkpoint; cached in analysis.json."""
    summary = json.loads((workdir / "summary.json").read_text())
    cached = workdir / "analysis.json"
    if cached.is_file() and (old := json.loads(cached.read_text())).get("step") == summary["steps"]:
        return old  # else the run has trained on since: analyse its new last checkpoint
    import jax  # noqa: PLC0415 (the study's driver needs no JAX until it analyses)
    from flax import nnx  # noqa: PLC0415

    from minet_jax import input_pipeline, jacobian, training  # noqa: PLC0415
    from minet_jax.checkpoint import load_checkpoint_model  # noqa: PLC0415
    from minet_jax.config import apply_overrides, load_config  # noqa: PLC0415
    from minet_jax.image_io import center_crop, to_uint8  # noqa: PLC0415
    from minet_jax.inference import from_network, to_network  # noqa: PLC0415
    from minet_jax.metrics import psnr, ssim  # noqa: PLC0415

    model = load_checkpoint_model(summary["last_checkpoint"])
    cfg = apply_overrides(load_config("default"), list(overrides.items()))
    cfg.data.val_limit = preset["val_limit"]
    log(f"{workdir}: validating on {'all' if not cfg.data.val_limit else cfg.data.val_limit} images")
    images = input_pipeline.val_images(cfg.data)
    graphdef, state = nnx.split(model)
    fmt = model.config.input_format

    @jax.jit
    def forward(state, hazy):
        y, aux = nnx.merge(graphdef, state)(to_network(hazy, fmt), with_aux=True)
        stats = aux["solver_stats"]
        return from_network(y, fmt), [s.iterations for s in stats], [s.residual for s in stats]

    # train.py's validation metrics (outputs rounded to uint8), with the solver statistics.
    ps, ss, iters, residuals = [], [], [], []
    for ex in images:
        y, it, res = forward(state, ex["hazy"][None])
        out_u8, clear_u8 = to_uint8(np.asarray(y)[0]), to_uint8(ex["clear"])
        ps.append(psnr(out_u8, clear_u8))
        ss.append(ssim(out_u8, clear_u8))
        iters.append([int(v) for v in it])
        residuals.append([float(v) for v in res])
    val = {"val_psnr": float(np.mean(ps)), "val_ssim": float(np.mean(ss))}
    iters, residuals = np.asarray(iters), np.asarray(residuals)
    solver = model.config.solver
    tol = float(solver.tol) if solver.forward != "unrolled" else None
    forward_stats = {
        "iterations_mean": iters.mean(0).tolist(), "iterations_max": iters.max(0).tolist(),
        "residual_max": residuals.max(0).tolist(), "tol": tol,
        "converged_all": None if tol is None else bool((residuals < tol).all()),
    }  # fmt: skip

    def probe(x01: np.ndarray) -> list[float]:
        r = jacobian.analyze_model(
            model, to_network(jax.numpy.asarray(x01[None]), fmt), method="arnoldi",
            krylov=preset["probe_krylov"], max_restarts=preset["probe_restarts"], tol=1e-3, power_iters=1,
        )  # fmt: skip
        return [b["spectral_radius"] for b in r["blocks"]]

    picks = [images[i] for i in np.linspace(0, len(images) - 1, preset["probe_images"]).astype(int)]
    log(f"{workdir}: spectral radii on {len(picks)} whole images and crops")
    rho_whole = [probe(ex["hazy"]) for ex in picks]
    rho_crop = [probe(center_crop(ex["hazy"], preset["crop"])) for ex in picks]
    rho_whole_max = np.max(rho_whole, 0).tolist()
    result = {
        "step": summary["steps"], "val_psnr": val["val_psnr"], "val_ssim": val["val_ssim"], "val_images": len(images),
        "input": training.input_quality(images), "forward": forward_stats,
        "rho_whole": rho_whole, "rho_crop": rho_crop, "rho_whole_max": rho_whole_max,
        "rho_crop_max": np.max(rho_crop, 0).tolist(), "theorem1_holds_whole": bool(max(rho_whole_max) < 1.0),
    }  # fmt: skip
    cached.write_text(json.dumps(result, indent=1))
    return result


def step_bench(workdir: Path, overrides: dict, preset: dict, log) -> dict:
    """The run's training step alone, timed and measured in its own process by
    `minet_jax.tools.bench` (same model, solver and regulariser, at the run's last checkpoint, on
    a fixed batch of central crops of its training data at its crop and batch size): median step
    time, the resident peak of the steps, which the run's own peak (whole-image validation
    included) does not isolate, and the solver iterations of that step (a solve to a tolerance
    takes what the trained weights need, not what the initialisation needed). Cached."""
    folder = workdir / "step_bench"
    last = json.loads((workdir / "summary.json").read_text())["last_checkpoint"]
    pair = f"{overrides['model.solver.forward']}/{overrides['model.solver.backward']}"
    sets = [f"{k}={_value(v)}" for k, v in overrides.items()
            if k.startswith(("model.", "stability.")) and k not in ("model.T", "model.dtype")]  # fmt: skip
    sets.append(f"init_from={last}")
    data = str(overrides["data.manual_dir"])
    cached = folder / "bench.json"
    # Cached per command: a bench of an earlier checkpoint (the run has trained on since) or of
    # other settings is done again.
    args = json.loads(cached.read_text())["args"] if cached.is_file() else {}
    if args.get("set") != sets or args.get("train_data") != data or args.get("pairs") != pair:
        log(f"{workdir}: timing the training step alone")
        cmd = [sys.executable, "-m", "minet_jax.tools.bench", "--sections", "training", "--isolate", "--pairs", pair,
               "--dtypes", overrides.get("model.dtype", "float32"), "--T", str(overrides.get("model.T", 8)),
               "--train-crop", str(preset["crop"]), "--train-batch", str(preset["batch"]),
               "--train-repeats", str(preset["bench_repeats"]), "--output", str(folder), "--train-data", data]  # fmt: skip
        for item in sets:
            cmd += ["--set", item]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
        if res.returncode:
            return {"error": (res.stderr.strip().splitlines() or [""])[-1]}
    row = json.loads((folder / "bench.json").read_text())["training"][0]
    return {k: row.get(k) for k in ("median_s", "rss_steps_peak_bytes", "xla_peak_bytes", "solver_iterations")}


def curves(workdir: Path, batch: int) -> dict:
    """Validation PSNR against step and against training time (s: the logged steps' own times,
    summed; compilation and validation fall into the step after them), and the median step time."""
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return {"step": [], "time_s": [], "val_psnr": [], "median_step_s": None}
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    step_s, t, out = [], 0.0, {"step": [], "time_s": [], "val_psnr": []}
    prev = 0
    for r in recs:
        if r.get("images_per_second"):
            dt = (r["step"] - prev) * batch / r["images_per_second"]
            prev = r["step"]
            step_s.append(dt)
            t += dt
        if r.get("val_psnr") is not None:
            out["step"].append(r["step"])
            out["time_s"].append(round(t, 2))
            out["val_psnr"].append(r["val_psnr"])
    out["median_step_s"] = statistics.median(step_s[1:] or step_s) if step_s else None
    return out


# --- report ---


def _f(v, fmt="{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _triple(v, fmt="{:.2f}") -> str:
    return "-" if v is None else " / ".join(fmt.format(x) for x in v)


def markdown(report: dict) -> str:
    m, p = report["machine"], report["preset"]
    lines = [
        "# Solver study",
        "",
        f"{m.get('cpu') or m['device']} ({m['backend']}, {m['cpu_count']} CPU cores), JAX {m['jax']}. Preset "
        f"`{report['preset_name']}`: {p['steps']} steps, "
        + "; ".join(f"{t}: batch {b['batch']} of {b['crop']} px crops"
                    for t in report["tracks"] for b in [track_preset(p, t)])
        + " from "
        f"{report['train_data']}, validated on {report['val_data']}. Trained on SOTS scenes: for comparing "
        "the solvers with each other, never a SOTS result.",
        "",
        "Step time and memory of the training step alone come from `minet_jax.tools.bench` in a "
        "process of their own (`step_bench/`), at the run's last checkpoint on a fixed batch of its training "
        "crops: the resident peak of the steps (what training holds, the process's runtime and compiled code "
        "included) and XLA's own estimate of the step's buffers. The run's median step (from its log, data "
        "loading included) and its process's peak (whole-image validation included) are beside them.",
        "",
        "| track | run | status | val PSNR dB | val SSIM | vs unrolled dB | step s (bench) | vs unrolled "
        "| step memory MiB (bench) | vs unrolled | step XLA MiB (bench) | vs unrolled | median step s (run) "
        "| peak RSS MiB (run) "
        "| forward iterations per block, mean (max) | max residual per block "
        "| rho(eta J) per block, whole images (max) | rho, training crops (max) | Theorem 1 on whole images |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for track, runs in report["tracks"].items():
        ref = runs.get("unrolled", {})
        for name, r in runs.items():
            a = r.get("analysis") or {}
            fw = a.get("forward") or {}

            def ratio(key, sub=None, r=r):
                x = r.get(key) if sub is None else (r.get(sub) or {}).get(key)
                y = ref.get(key) if sub is None else (ref.get(sub) or {}).get(key)
                return None if x is None or not y else x / y

            d = None
            if a.get("val_psnr") is not None and (ref.get("analysis") or {}).get("val_psnr") is not None:
                d = a["val_psnr"] - ref["analysis"]["val_psnr"]
            its = "-"
            if fw:
                its = " / ".join(
                    f"{mn:.1f} ({mx})" for mn, mx in zip(fw["iterations_mean"], fw["iterations_max"], strict=True)
                )
            rss = r.get("peak_rss_bytes")
            sb = r.get("step_bench") or {}
            sb_rss = sb.get("rss_steps_peak_bytes")
            lines.append(
                f"| {track} | {name} | {r['status']} | {_f(a.get('val_psnr'))} | {_f(a.get('val_ssim'), '{:.4f}')} | "
                f"{_f(d, '{:+.2f}')} | {_f(sb.get('median_s'), '{:.3f}')} | {_f(ratio('median_s', 'step_bench'), '{:.2f}x')} | "
                f"{_f(sb_rss and sb_rss / 2**20, '{:.0f}')} | {_f(ratio('rss_steps_peak_bytes', 'step_bench'), '{:.2f}x')} | "
                f"{_f(sb.get('xla_peak_bytes') and sb['xla_peak_bytes'] / 2**20, '{:.0f}')} | "
                f"{_f(ratio('xla_peak_bytes', 'step_bench'), '{:.2f}x')} | "
                f"{_f(r.get('median_step_s'), '{:.3f}')} | {_f(rss and rss / 2**20, '{:.0f}')} | {its} | "
                f"{_triple(fw.get('residual_max'), '{:.1e}')} | {_triple(a.get('rho_whole_max'), '{:.3f}')} | "
                f"{_triple(a.get('rho_crop_max'), '{:.3f}')} | "
                f"{'-' if 'theorem1_holds_whole' not in a else ('holds' if a['theorem1_holds_whole'] else 'fails')} |"
            )
    if report.get("authors_reference"):
        a = report["authors_reference"]
        lines += ["", f"The authors' weights before fine-tuning, on the same validation images: "
                  f"{a['val_psnr']:.2f} dB PSNR, SSIM {a['val_ssim']:.4f} (hazy input: {a['input']['input_psnr']:.2f} dB)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    tracks = list(report["tracks"])
    fig, axes = plt.subplots(len(tracks), 2, figsize=(11, 3.6 * len(tracks)), squeeze=False)
    for row, track in zip(axes, tracks, strict=True):
        for name, r in report["tracks"][track].items():
            c = r.get("curves") or {}
            if c.get("step"):
                row[0].plot(c["step"], c["val_psnr"], marker=".", label=name)
                row[1].plot(c["time_s"], c["val_psnr"], marker=".", label=name)
        row[0].set(title=f"{track}: validation subset PSNR", xlabel="step", ylabel="dB")
        row[1].set(title=f"{track}: against training time", xlabel="s", ylabel="dB")
        if row[0].get_legend_handles_labels()[0]:
            row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def authors_reference(weights: Path, val_data: Path, preset: dict, out: Path, log) -> dict | None:
    """What the authors' weights score on the validation images before any fine-tuning."""
    cached = out / "authors_reference.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    from flax import nnx  # noqa: PLC0415

    from minet_jax import input_pipeline, training  # noqa: PLC0415
    from minet_jax.checkpoint import load_pretrained  # noqa: PLC0415
    from minet_jax.config import data_config  # noqa: PLC0415

    log("the authors' weights on the validation images")
    model = load_pretrained(weights)
    graphdef, state = nnx.split(model, nnx.Param)
    data = data_config()
    data.name, data.manual_dir, data.val_split, data.val_limit = "paired", str(val_data), "train", preset["val_limit"]
    images = input_pipeline.val_images(data)
    val, _ = training.validate(training.make_predict(graphdef), state, images)
    result = {**val, "input": training.input_quality(images)}
    cached.write_text(json.dumps(result, indent=1))
    return result


# --- command line ---


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minet_jax.tools.solver_study", description=__doc__.split("\n\n")[0],
        epilog="Presets: " + "; ".join(f"{k}: {v['steps']} steps, batch {v['batch']} x {v['crop']} px"
                                       for k, v in PRESETS.items()),
    )  # fmt: skip
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--output", required=True, help="study folder: one workdir per run, and the tables")
    p.add_argument("--tracks", default=",".join(TRACKS), help=f"comma-separated, of {', '.join(TRACKS)}")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
    p.add_argument("--train-data", default=str(SHARED / "data" / "sots-indoor-train"))
    p.add_argument("--val-data", default=str(SHARED / "data" / "sots-indoor-val"))
    p.add_argument("--weights", default=str(SHARED / "weights" / "minet_its_official.pth"),
                   help="the authors' .pth, the finetune track's start")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="training-config override for every run (after the preset's), e.g. --set data.workers=2")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tracks = [t for t in args.tracks.split(",") if t]
    runs = [r for r in args.runs.split(",") if r]
    for name, given, known in (("--tracks", tracks, TRACKS), ("--runs", runs, tuple(RUNS))):
        bad = [v for v in given if v not in known]
        if bad or not given:
            parser.error(f"{name}: unknown {bad or 'empty'}; choose from {', '.join(known)}")
    if not TRAIN_PY.is_file():
        parser.error(f"{TRAIN_PY}: not found; the study runs train.py from a checkout of minet-jax")
    train_data, val_data, weights = Path(args.train_data), Path(args.val_data), Path(args.weights)
    for opt, path in (("--train-data", train_data), ("--val-data", val_data)):
        if not path.is_dir():
            parser.error(f"{opt} {path}: no such folder (hazy/ and clear/ expected; see ../shared/data/README.md)")
    if "finetune" in tracks and not weights.is_file():
        parser.error(
            f"--weights {weights}: no such file (the finetune track starts from it; --tracks scratch skips it)"
        )
    from minet_jax.config import ConfigError, apply_overrides, load_config, parse_overrides  # noqa: PLC0415

    preset = dict(PRESETS[args.preset])
    try:
        extra = dict(parse_overrides(args.set))
        for track in tracks:  # every run's config checked before any run starts
            for run in runs:
                apply_overrides(load_config("default"), list(
                    {**run_overrides(track, run, track_preset(preset, track), train_data, val_data, weights),
                     **extra}.items()))  # fmt: skip
    except ConfigError as e:
        parser.error(str(e))

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[solver_study {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    from minet_jax.tools.measure import machine  # noqa: PLC0415

    report: dict[str, Any] = {
        "machine": machine(), "preset_name": args.preset, "preset": preset, "train_data": str(train_data),
        "val_data": str(val_data), "runs": {r: solver_overrides(r) for r in runs}, "tracks": {},
    }  # fmt: skip
    if "finetune" in tracks:
        report["authors_reference"] = authors_reference(weights, val_data, preset, out, log)
    failures = 0
    for track in tracks:
        report["tracks"][track] = {}
        budget = track_preset(preset, track)
        for run in runs:
            overrides = {**run_overrides(track, run, budget, train_data, val_data, weights), **extra}
            workdir = out / track / run
            entry = train_entry(workdir, overrides, int(budget["batch"]), log)
            if entry["status"] == "done":
                entry["analysis"] = analyze(workdir, overrides, budget, log)
                entry["step_bench"] = step_bench(workdir, overrides, budget, log)
            else:
                failures += 1
            report["tracks"][track][run] = entry
            (out / "solver_study.json").write_text(json.dumps(report, indent=1))
            (out / "solver_study.md").write_text(markdown(report))
    plot(report, out / "solver_study.png")
    print(markdown(report))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
