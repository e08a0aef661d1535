"""The paper's own experiments on real haze: Table 2's ablations and Fig. 8's T sweep.

    python -m minet_jax.tools.ablation --preset cpu --output runs/ablation
    python -m minet_jax.tools.ablation --preset cpu --output runs/ablation --columns im,resblockT --sweep 4,12

Every run is the paper variant (`model_config("paper")`: T = 12, dilations 1/2/5, group-conv MLF,
RCA on the fused features; RGB [0, 1], output path started near the identity) trained from
scratch with the solver study's budget (`solver_study.PRESETS`: steps, crops, batch, seed, lr
schedule, the same data: ../shared/data/sots-indoor-train, validated on sots-indoor-val).

Table 2's columns (`COLUMNS`): `resblock1` (one residual block x + eta f(x) per IM-block position),
`resblockT` (T residual blocks, unshared weights), `no_mlf` (x3 goes on alone), `no_attention`
(neither RCA nor OA), `oa` (CBAM's channel attention in RCA's place) and `im` (the full MI-Net).
Fig. 8's sweep: the IM-block network at each T of `--sweep`, with validation PSNR and the
inference time of one whole validation image per T. A sweep run whose config equals a column's
(T = 12 and `im`) is that column's run, trained once.

Each run is `python train.py` in OUTPUT/runs/<name> (resumable: rerun the same command), then
analysed once (analysis.json): PSNR / SSIM on every validation image and the parameter count.
Inference is timed at the end, for every finished run in one process, repetitions alternated
between the runs (OUTPUT/inference.json): one whole validation image, median of `infer_repeats`,
so that the times compare with each other whatever else the machine did while the runs trained
and were validated; a new or further-trained run has them all timed again. Writes
OUTPUT/ablation.json, .md (beside the paper's SOTS numbers, and which of the paper's orderings
hold here) and .png (Fig. 8: PSNR and inference time against T; Table 2's columns).

These models have seen SOTS scenes (../shared/data/README.md): their numbers compare the variants
with each other and are never SOTS benchmark results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from minet_jax.tools import solver_study

# The paper variant, as training-config overrides on top of configs/default.py (which trains the
# released architecture from scratch on RGB [0, 1]); mirrors config.model_config("paper").
PAPER_VARIANT: dict[str, Any] = {
    "model.variant": "paper", "model.T": 12, "model.dilations": [1, 2, 5], "model.smooth_dilated": False, "model.mlf_groups": 3,
    "model.rca": "features", "model.rca_reduction": 16, "model.input_format": "rgb01", "model.init": "identity",
}  # fmt: skip

# Table 2, left to right: each column's overrides on the paper variant, and its SOTS PSNR there.
COLUMNS: dict[str, tuple[dict[str, Any], float]] = {
    "resblock1": ({"model.block": "resblock1"}, 32.61),
    "resblockT": ({"model.block": "resblockT"}, 34.79),
    "no_mlf": ({"model.mlf": False}, 34.63),
    "no_attention": ({"model.attention": "none"}, 34.92),
    "oa": ({"model.attention": "oa"}, 35.31),
    "im": ({}, 35.51),
}
# The paper's claims that Table 2 and Fig. 8 rest on: (better, worse, what it says).
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("im", "resblockT", "the IM-block beats T unshared residual blocks (implicit vs explicit Euler, same compute)"),
    ("resblockT", "resblock1", "T residual blocks beat one"),
    ("im", "resblock1", "the IM-block beats one residual block"),
    ("im", "oa", "RCA beats an ordinary (CBAM channel) attention block (+0.20 dB in the paper)"),
    ("oa", "no_attention", "an ordinary attention block beats none"),
    ("im", "no_mlf", "MLF helps (+0.88 dB in the paper)"),
)
SWEEP = (1, 2, 4, 8, 12, 16)  # Fig. 8's T axis
# The tiny preset (tests) overrides T: its sweep stays at T it can afford.
PRESET_SWEEP = {"cpu": SWEEP, "gpu": SWEEP, "tiny": (1, 2)}
PRESETS = {**solver_study.PRESETS, "cpu": {**solver_study.PRESETS["cpu"], "infer_repeats": 3},
           "gpu": {**solver_study.PRESETS["gpu"], "infer_repeats": 10},
           "tiny": {**solver_study.PRESETS["tiny"], "infer_repeats": 1}}  # fmt: skip


# --- configs ---


def run_overrides(extra: dict[str, Any], preset: dict, train_data: Path, val_data: Path) -> dict[str, Any]:
    """Every training-config override of one run: the solver study's scratch budget and data with
    the unrolled solver, the paper variant, the preset's own overrides (the tiny network), then
    the run's (`extra`)."""
    o = solver_study.run_overrides("scratch", "unrolled", preset, train_data, val_data, Path("unused"))
    o.update(PAPER_VARIANT)
    o.update(preset.get("overrides", {}))
    o.update(extra)
    return o


def plan(columns: list[str], sweep: list[int], preset: dict, train_data: Path, val_data: Path) -> dict[str, Any]:
    """{"runs": name -> overrides, "columns": column -> run, "sweep": T -> run}: the runs to train,
    one per distinct config (a sweep T equal to a column's config is that column's run)."""
    runs: dict[str, dict[str, Any]] = {}
    by_config: dict[str, str] = {}

    def add(name: str, extra: dict[str, Any]) -> str:
        o = run_overrides(extra, preset, train_data, val_data)
        key = json.dumps(o, sort_keys=True)
        if key not in by_config:
            by_config[key] = name
            runs[name] = o
        return by_config[key]

    cols = {c: add(c, COLUMNS[c][0]) for c in columns}
    ts = {t: add(f"T{t}", {"model.T": t}) for t in sweep}
    return {"runs": runs, "columns": cols, "sweep": ts}


# --- analysis ---


def analyze(workdir: Path, overrides: dict, preset: dict, log) -> dict:
    """Validation on every image and the parameter count, for the run's last checkpoint; cached
    in analysis.json."""
    summary = json.loads((workdir / "summary.json").read_text())
    cached = workdir / "analysis.json"
    if cached.is_file() and (old := json.loads(cached.read_text())).get("step") == summary["steps"]:
        return old
    import jax  # noqa: PLC0415 (the driver needs no JAX until it analyses)
    from flax import nnx  # noqa: PLC0415

    from minet_jax import input_pipeline, training  # noqa: PLC0415
    from minet_jax.checkpoint import load_checkpoint_model  # noqa: PLC0415
    from minet_jax.config import apply_overrides, load_config  # noqa: PLC0415
    from minet_jax.model import count_params  # noqa: PLC0415

    model = load_checkpoint_model(summary["last_checkpoint"])
    cfg = apply_overrides(load_config("default"), list(overrides.items()))
    cfg.data.val_limit = preset["val_limit"]
    images = input_pipeline.val_images(cfg.data)
    log(f"{workdir}: validating on {len(images)} images")
    graphdef, state = nnx.split(model, nnx.Param)
    val, _ = training.validate(training.make_predict(graphdef), state, images)
    result = {
        "step": summary["steps"], "val_psnr": val["val_psnr"], "val_ssim": val["val_ssim"],
        "val_images": len(images), "input": training.input_quality(images), "params": count_params(model),
    }  # fmt: skip
    cached.write_text(json.dumps(result, indent=1))
    return result


def time_inference(out: Path, checkpoints: dict[str, str], overrides: dict, preset: dict, log) -> dict:
    """{run: seconds}: one forward of the first validation image by each run's checkpoint, all in
    this process, `infer_repeats` rounds with the runs alternated, medians. Cached in
    OUTPUT/inference.json for exactly these checkpoints. `overrides`: any run's (for its data)."""
    cached = out / "inference.json"
    if cached.is_file() and (old := json.loads(cached.read_text())).get("checkpoints") == checkpoints:
        return old
    import jax  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    from minet_jax import input_pipeline, training  # noqa: PLC0415
    from minet_jax.checkpoint import load_checkpoint_model  # noqa: PLC0415
    from minet_jax.config import apply_overrides, load_config  # noqa: PLC0415

    data = apply_overrides(load_config("default"), list(overrides.items())).data
    data.val_limit = 1
    x = jax.numpy.asarray(input_pipeline.val_images(data)[0]["hazy"][None])
    log(f"timing inference of {len(checkpoints)} runs on one {x.shape[1]}x{x.shape[2]} image, alternated")
    fns = {}
    for name, ckpt in checkpoints.items():
        graphdef, state = nnx.split(load_checkpoint_model(ckpt), nnx.Param)
        predict = training.make_predict(graphdef)
        jax.block_until_ready(predict(state, x))  # compiled
        fns[name] = (predict, state)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(int(preset["infer_repeats"])):
        for name, (predict, state) in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(predict(state, x))
            times[name].append(time.perf_counter() - t0)
    result = {"checkpoints": checkpoints, "shape": list(x.shape[1:3]), "repeats": int(preset["infer_repeats"]),
              "seconds": {name: statistics.median(t) for name, t in times.items()}}  # fmt: skip
    cached.write_text(json.dumps(result, indent=1))
    return result


def _column_psnr(report: dict) -> dict[str, float | None]:
    return {c: (report["runs"].get(r, {}).get("analysis") or {}).get("val_psnr") for c, r in report["columns"].items()}


def orderings(report: dict) -> list[dict[str, Any]]:
    """Each of the paper's claims (CLAIMS, and Fig. 8's "PSNR rises with T") with what this run
    shows: the PSNR difference and whether the paper's order holds."""
    psnr = _column_psnr(report)
    out = []
    for better, worse, says in CLAIMS:
        if psnr.get(better) is None or psnr.get(worse) is None:
            continue
        paper = COLUMNS[better][1] - COLUMNS[worse][1]
        here = psnr[better] - psnr[worse]
        out.append({"claim": says, "better": better, "worse": worse, "paper_db": paper, "here_db": here,
                    "holds": bool(here > 0)})  # fmt: skip
    curve = sweep_curve(report)
    if len(curve["T"]) >= 2:
        rises = all(b > a for a, b in zip(curve["val_psnr"], curve["val_psnr"][1:], strict=False))
        out.append({"claim": "PSNR rises with T (Fig. 8)", "better": f"T{curve['T'][-1]}", "worse": f"T{curve['T'][0]}",
                    "paper_db": None, "here_db": curve["val_psnr"][-1] - curve["val_psnr"][0], "holds": rises})  # fmt: skip
    return out


def _infer_s(report: dict, run: str) -> float | None:
    return (report.get("inference") or {}).get("seconds", {}).get(run)


def sweep_curve(report: dict) -> dict[str, list]:
    curve: dict[str, list] = {"T": [], "val_psnr": [], "infer_s": []}
    for t, r in sorted((int(t), r) for t, r in report["sweep"].items()):
        a = report["runs"].get(r, {}).get("analysis") or {}
        if a.get("val_psnr") is not None:
            curve["T"].append(t)
            curve["val_psnr"].append(a["val_psnr"])
            curve["infer_s"].append(_infer_s(report, r))
    return curve


# --- report ---


def markdown(report: dict) -> str:
    f = solver_study._f
    m, p = report["machine"], report["preset"]
    lines = [
        "# Table 2 and Fig. 8 on real haze",
        "",
        f"{m.get('cpu') or m['device']} ({m['backend']}, {m['cpu_count']} CPU cores), JAX {m['jax']}. Preset "
        f"`{report['preset_name']}`: the paper variant from scratch, {p['steps']} steps, batch {p['batch']} of "
        f"{p['crop']} px crops from {report['train_data']}, validated on every image of {report['val_data']}. "
        "Trained on SOTS scenes: compares the variants with each other, never a SOTS result; the paper's "
        "column is its SOTS-indoor PSNR after full training on ITS.",
        "",
        "| column | run | status | params | val PSNR dB | val SSIM | vs im dB | paper dB | paper vs im dB "
        "| median step s | inference s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    im = (report["runs"].get(report["columns"].get("im"), {}).get("analysis") or {}).get("val_psnr")
    for col, name in report["columns"].items():
        r = report["runs"].get(name, {})
        a = r.get("analysis") or {}
        d = None if im is None or a.get("val_psnr") is None else a["val_psnr"] - im
        paper = COLUMNS[col][1]
        lines.append(
            f"| {col} | {name} | {r.get('status', '-')} | {a.get('params', '-')} | {f(a.get('val_psnr'))} | "
            f"{f(a.get('val_ssim'), '{:.4f}')} | {f(d, '{:+.2f}')} | {paper:.2f} | {paper - COLUMNS['im'][1]:+.2f} | "
            f"{f(r.get('median_step_s'), '{:.3f}')} | {f(_infer_s(report, name), '{:.3f}')} |"
        )
    lines += ["", "Fig. 8, the IM-block network against T (inference: one whole validation image, median of "
              "repetitions alternated between the runs in one process):", "",
              "| T | run | status | val PSNR dB | val SSIM | median step s | inference s |", "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for t, name in sorted((int(t), n) for t, n in report["sweep"].items()):
        r = report["runs"].get(name, {})
        a = r.get("analysis") or {}
        lines.append(
            f"| {t} | {name} | {r.get('status', '-')} | {f(a.get('val_psnr'))} | {f(a.get('val_ssim'), '{:.4f}')} | "
            f"{f(r.get('median_step_s'), '{:.3f}')} | {f(_infer_s(report, name), '{:.3f}')} |"
        )
    claims = orderings(report)
    if claims:
        lines += ["", "The paper's orderings at this scale:", ""]
        for c in claims:
            paper = "" if c["paper_db"] is None else f"paper {c['paper_db']:+.2f} dB, "
            verdict = "holds" if c["holds"] else "does not hold"
            lines.append(f"- {c['claim']}: {verdict} ({paper}here {c['here_db']:+.2f} dB)")
    return "\n".join(lines) + "\n"


def table2_bars(report: dict) -> tuple[list[str], list[float], list[float]]:
    """(columns in Table 2's order, PSNR here less im's, the paper's less its im): the columns
    done, when im is one of them (the full network every column ablates)."""
    psnr = _column_psnr(report)
    if psnr.get("im") is None:
        return [], [], []
    names = [c for c in COLUMNS if psnr.get(c) is not None]
    return names, [psnr[c] - psnr["im"] for c in names], [COLUMNS[c][1] - COLUMNS["im"][1] for c in names]


def plot(report: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax_t, ax_c) = plt.subplots(1, 2, figsize=(11, 3.8))
    curve = sweep_curve(report)
    if curve["T"]:
        ax_t.plot(curve["T"], curve["val_psnr"], marker="o", color="C0")
    if curve["T"] and None not in curve["infer_s"]:
        twin = ax_t.twinx()
        twin.plot(curve["T"], curve["infer_s"], marker="s", color="C1")
        twin.set_ylabel("inference s (one val image)", color="C1")
    ax_t.set(title="Fig. 8: IM-block network against T", xlabel="T", ylabel="val PSNR dB")
    names, here, paper = table2_bars(report)
    if names:
        x = np.arange(len(names))
        ax_c.bar(x - 0.2, here, 0.4, label="here")
        ax_c.bar(x + 0.2, paper, 0.4, label="paper (SOTS)")
        ax_c.set_xticks(x, names, rotation=20, fontsize=8)
        ax_c.axhline(0, color="k", lw=0.5)
        ax_c.legend(fontsize=8)
    ax_c.set(title="Table 2's columns", ylabel="dB against im (the full network)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- command line ---


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minet_jax.tools.ablation", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--output", required=True, help="study folder: one workdir per run under runs/, and the tables")
    p.add_argument("--columns", default=",".join(COLUMNS), help=f"comma-separated, of {', '.join(COLUMNS)}")
    p.add_argument("--sweep", default=None, help="comma-separated T values (default: the preset's, 1,2,4,8,12,16)")
    p.add_argument("--train-data", default=str(solver_study.SHARED / "data" / "sots-indoor-train"))
    p.add_argument("--val-data", default=str(solver_study.SHARED / "data" / "sots-indoor-val"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="training-config override for every run (after the preset's), e.g. --set data.workers=2")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    columns = [c for c in args.columns.split(",") if c]
    if unknown := [c for c in columns if c not in COLUMNS]:
        parser.error(f"--columns: unknown {', '.join(unknown)}; expected some of {', '.join(COLUMNS)}")
    raw = PRESET_SWEEP[args.preset] if args.sweep is None else [t for t in args.sweep.split(",") if t]
    try:
        sweep = [int(t) for t in raw]
    except ValueError:
        parser.error(f"--sweep {args.sweep!r}: expected comma-separated positive integers, e.g. 1,2,4,8")
    if any(t < 1 for t in sweep):
        parser.error(f"--sweep {args.sweep!r}: T must be >= 1")
    train_data, val_data = Path(args.train_data), Path(args.val_data)
    for opt, path in (("--train-data", train_data), ("--val-data", val_data)):
        if not path.is_dir():
            parser.error(f"{opt} {path}: no such folder (see ../shared/data/README.md)")
    from minet_jax.config import ConfigError, apply_overrides, load_config, parse_overrides  # noqa: PLC0415

    preset = dict(PRESETS[args.preset])
    try:
        extra = dict(parse_overrides(args.set))
        p = plan(columns, sweep, preset, train_data, val_data)
        for o in p["runs"].values():  # every run's config checked before any run starts
            apply_overrides(load_config("default"), list({**o, **extra}.items()))
    except ConfigError as e:
        parser.error(str(e))

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[ablation {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    from minet_jax.tools.measure import machine  # noqa: PLC0415

    report: dict[str, Any] = {
        "machine": machine(), "preset_name": args.preset, "preset": preset, "train_data": str(train_data),
        "val_data": str(val_data), "columns": p["columns"], "sweep": {str(t): r for t, r in p["sweep"].items()},
        "paper": {c: v[1] for c, v in COLUMNS.items()}, "runs": {},
    }  # fmt: skip
    failures = 0
    for name, overrides in p["runs"].items():
        overrides = {**overrides, **extra}
        workdir = out / "runs" / name
        entry = solver_study.train_entry(workdir, overrides, int(preset["batch"]), log)
        if entry["status"] == "done":
            entry["analysis"] = analyze(workdir, overrides, preset, log)
        else:
            failures += 1
        report["runs"][name] = entry
        report["orderings"] = orderings(report)
        (out / "ablation.json").write_text(json.dumps(report, indent=1))
        (out / "ablation.md").write_text(markdown(report))
    done = {n: json.loads((out / "runs" / n / "summary.json").read_text())["last_checkpoint"]
            for n, e in report["runs"].items() if e["status"] == "done"}  # fmt: skip
    if done:
        report["inference"] = time_inference(out, done, {**next(iter(p["runs"].values())), **extra}, preset, log)
        (out / "ablation.json").write_text(json.dumps(report, indent=1))
        (out / "ablation.md").write_text(markdown(report))
    plot(report, out / "ablation.png")
    print(markdown(report))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
