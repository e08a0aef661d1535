"""Per-op profile of one jitted training step (or forward): where the time goes, by XLA instruction.

    python benchmarks/profile_step.py --output benchmarks/results/profile_step_cpu
    python benchmarks/profile_step.py --pair unrolled/phantom --crop 128 --batch 4 --T 8
    python benchmarks/profile_step.py --pair unrolled/implicit --set model.dtype=bfloat16 --output out/prof_bf16
    python benchmarks/profile_step.py --infer 460x620 --output benchmarks/results/profile_infer_cpu

Traces one step (after two warm-up steps) with `jax.profiler`, matches every executed thunk to its
instruction in the optimised HLO, and sums the durations by kind: YNNPACK fusions (XLA's CPU
convolution path) split by role (forward, input gradient, weight gradient: read off the output
shape and the `transpose(jvp())` in the op name), XLA's own convolutions (the generic, slow path),
and loop fusions by name. Also reports the process's CPU time over wall time during three
untimed-by-the-trace steps (2.0 = both cores busy on a 2-core machine) and minor page faults.
Writes OUTPUT/profile.json and profile.md; the trace stays in OUTPUT/trace for TensorBoard or
Perfetto.
"""

from __future__ import annotations

if __name__ == "__main__":  # as train.py runs (minet_jax/host.py)
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from minet_jax.host import with_huge_pages

    with_huge_pages()

import argparse
import collections
import glob
import gzip
import json
import os
import re
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_SKIP = {"ThunkExecutor::Execute", "ThunkExecutor::Execute (wait for completion)"}


def _instructions(hlo: str) -> dict[str, str]:
    lines = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
        if m:
            lines.setdefault(m.group(1), line.strip())
    return lines


def _kind(name: str, line: str, batch: int) -> str:
    shape = re.search(r"= (\(?[a-z0-9]+\[[^\]]*\])", line)
    shape = shape.group(1) if shape else "?"
    backward = "transpose(" in line
    if name.startswith("ynn_fusion"):
        dims = [int(d) for d in re.findall(r"\d+", shape.split("[", 1)[-1])]
        if len(dims) != 4:  # YNNPACK also takes reductions (the norms' statistics)
            return f"YNNPACK fusion, {'backward' if backward else 'forward'} {shape}"
        # a kernel-shaped result (k x k window, leading dim not the batch) is a weight gradient
        weight = dims[1] == dims[2] and dims[1] in (1, 3, 4, 7) and dims[0] != batch
        role = "weight gradient" if weight else ("input gradient" if backward else "forward")
        return f"YNNPACK convolution, {role} {shape}"
    if re.search(r"= \S+ convolution\(", line):
        window = re.search(r"window=\{([^}]*)\}", line)
        return f"XLA convolution (generic) {shape} {window.group(1) if window else ''}"
    if " fusion(" in line:
        return f"loop fusion {name.rsplit('.', 1)[0]}"
    op = re.search(r"= \S+ ([\w\-]+)\(", line)
    return op.group(1) if op else "other (runtime)"


def train_program(pair: str, crop: int, batch: int, T: int, overrides: list | None = None):
    """(run, optimised HLO text) of configs/default.py's training step on a synthetic batch;
    `overrides` ((key, value) pairs) apply to the training config first."""
    import jax
    from flax import nnx

    from minet_jax.model import MINet
    from minet_jax.tools.bench import bench_config
    from minet_jax.tools.measure import compile_train_step, synthetic_batch

    forward, backward = pair.split("/")
    cfg = bench_config([*(overrides or []), ("model.solver.forward", forward), ("model.solver.backward", backward),
                        ("model.T", T)])  # fmt: skip
    data = synthetic_batch(batch, crop)
    params = nnx.state(MINet(cfg.model, rngs=nnx.Rngs(cfg.seed)), nnx.Param)
    step = compile_train_step(cfg, params, data)
    return (lambda: jax.block_until_ready(step.compiled(step.state, data))), step.compiled.as_text()


def infer_program(h: int, w: int, T: int):
    """(run, optimised HLO text) of the released network's forward on one h x w image."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from minet_jax.config import model_config
    from minet_jax.tools.bench import random_model

    cfg = model_config("official")
    cfg.T = T
    graphdef, state = random_model(cfg)
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, h, w, 3)).astype(np.float32))
    compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).compile()
    return (lambda: jax.block_until_ready(compiled(state, x))), compiled.as_text()


def profile(run, hlo: str, outdir: Path, **meta) -> dict:
    """Time `run` (three untimed-by-the-trace calls after two warm-ups), then trace one call and
    sum its thunks' durations by kind; `meta` (with the batch size) goes into the report as given."""
    import jax

    from minet_jax.tools.measure import machine

    lines = _instructions(hlo)
    for _ in range(2):
        run()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(3):
        run()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    trace_dir = outdir / "trace"
    with jax.profiler.trace(str(trace_dir)):
        t2 = time.perf_counter()
        run()
        traced_s = time.perf_counter() - t2
    files = sorted(glob.glob(str(trace_dir / "plugins" / "profile" / "*" / "*.trace.json.gz")))
    events = json.load(gzip.open(files[-1]))["traceEvents"]
    per_op, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith("$") and e["name"] not in _SKIP:
            per_op[e["name"]] += e["dur"] / 1e6
            count[e["name"]] += 1
    kinds, kind_count = collections.Counter(), collections.Counter()
    for name, s in per_op.items():
        k = _kind(name, lines.get(name, ""), meta["batch"])
        kinds[k] += s
        kind_count[k] += count[name]
    total = sum(per_op.values())
    return {
        "machine": machine(), **meta,
        "step_s": (t1 - t0) / 3, "cpu_over_wall": cpu / (t1 - t0),
        "system_s_per_step": (r1.ru_stime - r0.ru_stime) / 3,
        "minor_faults_per_step": (r1.ru_minflt - r0.ru_minflt) / 3,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "traced_step_s": traced_s, "op_seconds": total,
        "kinds": [{"kind": k, "seconds": s, "ops": kind_count[k], "share": s / total} for k, s in kinds.most_common()],
        "top_ops": [{"op": n, "seconds": s, "hlo": lines.get(n, "")[:300]} for n, s in per_op.most_common(15)],
    }  # fmt: skip


def markdown(r: dict) -> str:
    m = r["machine"]
    out = [
        (f"# Inference profile: one {r['infer']} image, T={r['T']}" if r.get("infer") else
         f"# Training step profile: {r['pair']}, {r['batch']}x{r['crop']}x{r['crop']}, T={r['T']}"),
        "",
        f"{m['cpu']} ({m['cpu_count']} cores), jax {m['jax']}, GLIBC_TUNABLES={r['glibc_tunables'] or '(unset)'}. "
        f"Step {r['step_s']:.2f} s (mean of 3); CPU time / wall {r['cpu_over_wall']:.2f}; system time "
        f"{r['system_s_per_step']:.2f} s and {r['minor_faults_per_step']:.0f} minor page faults per step. "
        f"The traced step: {r['traced_step_s']:.2f} s, its ops summed {r['op_seconds']:.2f} s "
        "(ops overlap when XLA runs independent ones at once).",
        "",
        "| kind | seconds | share | ops |",
        "| --- | --- | --- | --- |",
    ]
    out += [f"| {k['kind']} | {k['seconds']:.3f} | {100 * k['share']:.1f}% | {k['ops']} |" for k in r["kinds"][:25]]
    out += ["", "Slowest single ops:", "", "| seconds | op | HLO |", "| --- | --- | --- |"]
    out += [f"| {o['seconds']:.3f} | {o['op']} | `{o['hlo'][:160]}` |" for o in r["top_ops"][:10]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="unrolled/unrolled", help="solver pair forward/backward")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--T", type=int, default=8)
    p.add_argument("--infer", default="", metavar="HxW", help="profile the forward of one HxW image instead")
    p.add_argument("--output", required=True, help="folder for profile.json, profile.md and the trace")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="training-config override, e.g. --set model.dtype=bfloat16 --set model.solver.backward_tol=0.1")
    args = p.parse_args(argv)
    from minet_jax.config import ConfigError, parse_overrides

    try:
        overrides = parse_overrides(args.set)
    except ConfigError as e:
        p.error(str(e))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.infer:
        h, _, w = args.infer.partition("x")
        if not (h.isdigit() and w.isdigit()):
            p.error(f"--infer {args.infer!r}: expected HxW, e.g. 460x620")
        run, hlo = infer_program(int(h), int(w), args.T)
        report = profile(run, hlo, out, infer=args.infer, batch=1, T=args.T)
    else:
        try:
            run, hlo = train_program(args.pair, args.crop, args.batch, args.T, overrides)
        except ConfigError as e:
            p.error(str(e))
        report = profile(run, hlo, out, pair=args.pair, crop=args.crop, batch=args.batch, T=args.T,
                         overrides=[f"{k}={v}" for k, v in overrides])  # fmt: skip
    md = markdown(report)
    print(md)
    (out / "profile.json").write_text(json.dumps(report, indent=1))
    (out / "profile.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
