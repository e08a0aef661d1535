"""minet-jax against the authors' network in PyTorch (`torch_minet.py`), timed side by side.

    pip install "torch==2.13.0+cpu"      # or into its own venv, then add --torch-python VENV/bin/python
    python benchmarks/torch_vs_jax.py --output benchmarks/results/torch_vs_jax_cpu
    python benchmarks/torch_vs_jax.py --workloads train --dtypes float32 --reps 3 --output /tmp/tvj

Each side runs in its own long-lived process (started once, compiled and warmed up, then asked
for one repetition at a time), pinned to the same `--threads` cores. Repetitions alternate
A, B, A, B, so both sides see the same machine state; the table gives medians, their ratio
(jax / torch: below 1 means minet-jax is faster) and each process's peak resident memory.

Workloads: `train`: one training step (forward, loss, backward, Adam) at `--crop`, `--batch`,
T=8, float32 or bfloat16 (torch: autocast on the CPU; jax: `model.dtype`); `forward`: the
forward alone on that batch, no gradient; `infer`: one whole 620x460 image. The JAX training
step is configs/default.py's (`--pair` picks its solvers), the torch one the same arithmetic
with MSE and Adam. Weights are random (timing does not depend on them). Writes OUTPUT/
torch_vs_jax.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
SHAPES = {"infer": (1, 460, 620)}


def _pin(threads: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)


def _rss_peak() -> int:
    # not minet_jax.tools.measure.peak_rss_bytes: it imports JAX, which the torch side may lack
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _shape(args) -> tuple[int, int, int]:
    return SHAPES.get(args.workload, (args.batch, args.crop, args.crop))


def _torch_runner(args):
    import numpy as np
    import torch
    from torch_minet import MINet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MINet(T=args.T)
    b, h, w = _shape(args)
    rng = np.random.default_rng(0)
    clear = torch.from_numpy(rng.uniform(0.1, 0.9, (b, 3, h, w)).astype(np.float32))
    hazy = 0.6 * clear + 0.35
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    if args.workload == "train":
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        model.train()

        def run():
            opt.zero_grad(set_to_none=True)
            with autocast:
                out = model(hazy)
            loss = torch.mean(torch.square(out.float() - clear))
            loss.backward()
            opt.step()

        return run
    model.eval()

    def run():
        with torch.inference_mode(), autocast:
            model(hazy * 255.0)

    return run


def _jax_runner(args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from minet_jax.config import model_config
    from minet_jax.model import MINet
    from minet_jax.tools.bench import bench_config, random_model
    from minet_jax.tools.measure import compile_train_step, synthetic_batch

    b, h, w = _shape(args)
    if args.workload == "train":
        forward, backward = args.pair.split("/")
        cfg = bench_config([("model.solver.forward", forward), ("model.solver.backward", backward),
                            ("model.T", args.T), ("model.dtype", args.dtype)])  # fmt: skip
        assert h == w
        data = synthetic_batch(b, h)
        params = nnx.state(MINet(cfg.model, rngs=nnx.Rngs(cfg.seed)), nnx.Param)
        step = compile_train_step(cfg, params, data)
        state = step.state

        def run():
            jax.block_until_ready(step.compiled(state, data))

        return run
    cfg = model_config("official")
    cfg.T, cfg.dtype = args.T, args.dtype
    graphdef, st = random_model(cfg)
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (b, h, w, 3)).astype(np.float32))
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(st, x).compile()

    def run():
        jax.block_until_ready(fwd(st, x))

    return run


def worker(args) -> int:
    """Set up, warm up, then time one repetition per 'run' line on stdin; 'quit' reports memory."""
    _pin(args.threads)
    run = (_torch_runner if args.worker == "torch" else _jax_runner)(args)
    for _ in range(args.warmup):
        run()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "run":
            t0 = time.perf_counter()
            run()
            print(json.dumps({"s": time.perf_counter() - t0}), flush=True)
        else:
            break
    print(json.dumps({"rss_peak_bytes": _rss_peak()}), flush=True)
    return 0


class Side:
    def __init__(self, name: str, argv: list[str], python: str, env: dict):
        self.name = name
        self.proc = subprocess.Popen(
            [python, __file__, "--worker", name, *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        self.times: list[float] = []

    def ask(self, line: str | None) -> dict:
        if line is not None:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError(f"the {self.name} worker died (exit {self.proc.wait()})")
        return json.loads(out)

    def close(self) -> int:
        rss = self.ask("quit")["rss_peak_bytes"]
        self.proc.wait()
        return rss


def _env(args) -> dict:
    """Both sides' environment: with malloc's huge pages, as train.py runs (minet_jax/host.py),
    unless --no-huge-pages."""
    from minet_jax.host import huge_pages_env

    env = None if args.no_huge_pages else huge_pages_env(dict(os.environ))
    return env or dict(os.environ)


def compare(workload: str, dtype: str, args) -> dict:
    argv = ["--workload", workload, "--dtype", dtype, "--threads", str(args.threads), "--T", str(args.T),
            "--crop", str(args.crop), "--batch", str(args.batch), "--pair", args.pair, "--warmup", str(args.warmup)]  # fmt: skip
    sides = {}
    for name in ("torch", "jax"):  # set up one at a time: compiling would disturb the other's warm-up
        sides[name] = Side(name, argv, args.torch_python if name == "torch" else sys.executable, _env(args))
        sides[name].ask(None)
    for _ in range(args.reps):
        for side in sides.values():
            side.times.append(side.ask("run")["s"])
    rss = {name: side.close() for name, side in sides.items()}
    med = {name: statistics.median(side.times) for name, side in sides.items()}
    return {
        "workload": workload, "dtype": dtype, "shape": list(_shape(argparse.Namespace(workload=workload, batch=args.batch, crop=args.crop))),
        "T": args.T, "jax_pair": args.pair if workload == "train" else None,
        "torch_median_s": med["torch"], "jax_median_s": med["jax"], "ratio_jax_over_torch": med["jax"] / med["torch"],
        "torch_times_s": sides["torch"].times, "jax_times_s": sides["jax"].times,
        "torch_rss_peak_bytes": rss["torch"], "jax_rss_peak_bytes": rss["jax"],
    }  # fmt: skip


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# minet-jax against PyTorch ({m['cpu']}, {m['threads']} threads each, {m['date']})",
        "",
        f"jax {m['jax']}, torch {m['torch']}; medians of {report['reps']} alternated repetitions, each side in its own "
        f"process; GLIBC_TUNABLES={m['glibc_tunables'] or '(unset)'} for both.",
        "",
        "| workload | dtype | shape (N, H, W) | PyTorch | minet-jax | ratio | resident peak torch / jax |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['workload']}{' ' + r['jax_pair'] if r['jax_pair'] else ''} | {r['dtype']} | {tuple(r['shape'])} | "
            f"{r['torch_median_s']:.3g} s | {r['jax_median_s']:.3g} s | {r['ratio_jax_over_torch']:.2f} | "
            f"{r['torch_rss_peak_bytes'] / 2**20:.0f} / {r['jax_rss_peak_bytes'] / 2**20:.0f} MiB |"
        )
    return "\n".join(lines) + "\n"


def _versions(torch_python: str) -> dict:
    def version(python: str, module: str) -> str:
        code = f"import {module}; print({module}.__version__)"
        return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()

    return {"jax": version(sys.executable, "jax"), "torch": version(torch_python, "torch")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="train,forward,infer", help="comma-separated: train, forward, infer")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions per side (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions after compilation")
    p.add_argument("--threads", type=int, default=2, help="cores each side is pinned to")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--T", type=int, default=8)
    p.add_argument("--pair", default="unrolled/unrolled", help="minet-jax's solver pair forward/backward (train)")
    p.add_argument("--output", default="", help="folder for torch_vs_jax.json and .md")
    p.add_argument(
        "--torch-python",
        default=sys.executable,
        help="the Python that has torch (default: this one), e.g. a venv kept apart from the project's",
    )
    p.add_argument("--no-huge-pages", action="store_true", help="run both sides without glibc.malloc.hugetlb=1")
    p.add_argument("--worker", choices=["torch", "jax"], help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    bad = set(args.workloads.split(",")) - {"train", "forward", "infer"}
    if bad:
        p.error(f"--workloads: unknown {sorted(bad)}; allowed: train, forward, infer")
    rows = []
    for workload in args.workloads.split(","):
        for dtype in args.dtypes.split(","):
            rows.append(compare(workload, dtype, args))
            r = rows[-1]
            print(f"{workload} {dtype}: torch {r['torch_median_s']:.3f} s, jax {r['jax_median_s']:.3f} s, "
                  f"ratio {r['ratio_jax_over_torch']:.2f}", flush=True)  # fmt: skip
    from minet_jax.tools.measure import cpu_name  # the driver runs in the project's environment

    machine = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": args.threads,
               "platform": platform.platform(), "date": time.strftime("%Y-%m-%d"), **_versions(args.torch_python)}  # fmt: skip
    machine["glibc_tunables"] = _env(args).get("GLIBC_TUNABLES", "")
    report = {"machine": machine, "reps": args.reps, "rows": rows}
    md = markdown(report)
    print(md)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "torch_vs_jax.json").write_text(json.dumps(report, indent=1))
        (out / "torch_vs_jax.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
