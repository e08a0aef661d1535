"""How many forward iterations does a warm start save the DEQ recipe? (#14's lever, best case)

    python benchmarks/warm_start.py --data ../shared/data/sots-indoor-train --output out/warm_start

DEQ codebases warm-start a solve from the previous solution for the same example (DEQ-Flow
carries a video's fixed point from frame to frame). This measures what that would buy
configs/deq.py's forward (Anderson to its tolerance) in the best case for it: one fixed batch
(central crops of a paired folder), trained on step after step with the recipe's own compiled
step, so that every example's previous solution is one Adam step old. At each step, every
IM-block is solved from its start g0 (cold, as training does) and from the previous step's
solution (warm), with the same solver settings, and the table gives both iteration counts and
how far the solution moved. The weights are the config's initialisation (or `--init-from`).

In training itself no example recurs so soon, and not as the same crop: the solver study's cpu
preset draws random crops of 350 images, 8 per step, so an image comes back every ~44 steps and
elsewhere in it. Writes OUTPUT/warm_start.json and .md with the machine named.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))



def measure(data_dir: str, steps: int, batch: int, crop: int, init_from: str, overrides: list[str]) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from minet_jax import solvers
    from minet_jax.checkpoint import initial_params
    from minet_jax.config import apply_overrides, load_config
    from minet_jax.inference import to_network
    from minet_jax.jacobian import block_fields
    from minet_jax.model import MINet
    from minet_jax.tools.measure import compile_train_step, paired_batch

    cfg = apply_overrides(load_config("deq"), overrides)
    s = cfg.model.solver
    data = paired_batch(data_dir, batch, crop)
    model = MINet(cfg.model, rngs=nnx.Rngs(cfg.seed))
    params = nnx.state(model, nnx.Param)
    if init_from:
        nnx.replace_by_pure_dict(params, initial_params(cfg.model, init_from))
    step = compile_train_step(cfg, params, data)
    graphdef = nnx.graphdef(model)
    kw = {"tol": s.tol, "max_iter": s.max_iter, "m": s.anderson_m, "beta": s.anderson_beta, "lam": s.anderson_lam}

    @jax.jit
    def block_inputs(params):
        m = nnx.merge(graphdef, params)
        return m(to_network(data["hazy"], cfg.model.input_format), with_aux=True)[1]["block_inputs"]

    solve = jax.jit(partial(solvers.anderson, **kw), static_argnums=0, static_argnames="eta")
    state, previous, rows = step.state, None, []
    for k in range(steps + 1):
        m = nnx.merge(graphdef, state.params)
        fields = block_fields(m)
        inputs = block_inputs(state.params)
        current = []
        for i, ((name, _, f, p, eta), g0) in enumerate(zip(fields, inputs, strict=True)):
            g, cold = solve(f, p, g0, eta=eta)
            row = {"step": k, "block": name, "cold_iterations": int(cold.iterations),
                   "cold_residual": float(cold.residual)}  # fmt: skip
            if previous is not None:
                _, warm = solve(f, p, g0, eta=eta, x0=previous[i])
                moved = float(jnp.linalg.norm(g - previous[i]) / jnp.linalg.norm(g))
                row.update(warm_iterations=int(warm.iterations), warm_residual=float(warm.residual), moved=moved)
            rows.append(row)
            current.append(g)
        previous = current
        if k < steps:
            state, _ = step.compiled(state, data)
    return rows


def markdown(report: dict) -> str:
    m = report["machine"]
    out = [
        f"# Warm starts for the DEQ forward ({m['cpu']}, {m['cores']} cores, {report['date']})",
        "",
        f"jax {m['jax']}; configs/deq.py{''.join(' ' + o for o in report['overrides'])}, one fixed batch of {report['batch']} "
        f"central {report['crop']} px crops of `{report['data']}`, {report['steps']} training steps on it; "
        f"weights: {report['init_from'] or 'the initialisation'}. Iterations of the Anderson forward per block, "
        "from g0 (cold) and from the previous step's solution (warm); moved = ||g* - previous g*|| / ||g*||.",
        "",
        "| step | block | cold iterations | warm iterations | moved |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        warm = "-" if "warm_iterations" not in r else str(r["warm_iterations"])
        moved = "-" if "moved" not in r else f"{r['moved']:.1e}"
        out.append(f"| {r['step']} | {r['block']} | {r['cold_iterations']} | {warm} | {moved} |")
    warm_rows = [r for r in report["rows"] if "warm_iterations" in r]
    if warm_rows:
        cold, warm = sum(r["cold_iterations"] for r in warm_rows), sum(r["warm_iterations"] for r in warm_rows)
        out += ["", f"Over steps 1-{report['steps']}: {warm} warm against {cold} cold iterations ({warm / cold:.2f}x)."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="paired folder (hazy/, clear/) whose central crops make the batch")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--init-from", default="", help="checkpoint or .pth to start from (default: the initialisation)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override of configs/deq.py")
    p.add_argument("--output", default="", help="folder for warm_start.json and .md")
    args = p.parse_args(argv)
    if not (Path(args.data) / "hazy").is_dir():
        p.error(f"--data {args.data}: expected a paired folder with hazy/ and clear/")
    if args.steps < 1:
        p.error(f"--steps {args.steps}: expected >= 1")

    from minet_jax.tools.measure import machine, save_report

    rows = measure(args.data, args.steps, args.batch, args.crop, args.init_from, args.set)
    report = {
        "machine": {**machine(), "cores": len(os.sched_getaffinity(0))},
        "date": time.strftime("%Y-%m-%d"), "data": args.data, "steps": args.steps, "batch": args.batch,
        "crop": args.crop, "init_from": args.init_from, "overrides": args.set, "rows": rows,
    }  # fmt: skip
    md = markdown(report)
    print(md)
    if args.output:
        save_report(args.output, "warm_start", report, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
