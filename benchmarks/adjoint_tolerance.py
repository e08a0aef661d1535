"""How loose may the implicit backward's adjoint solve be? Gradient cosine against the converged one.

    python benchmarks/adjoint_tolerance.py --output benchmarks/results/adjoint_tolerance_cpu

On a fixed batch of real hazy crops (../shared/data/sots-indoor-train, 4 crops of 128 px by
default), for two models, configs/default.py's (rgb01, identity init, random weights: the
from-scratch track) and the authors' weights (../shared/weights, bgr255: the fine-tuning track),
the parameter gradient of the MSE loss with the unrolled T=8 forward and the implicit backward at
each adjoint solver and tolerance, against the same backward solved to `--ref-tol` (the converged
reference); the exact gradient of the T-step network (unrolled backward) beside it. Reports the
cosine, the relative error and the adjoint iterations per block (summed over the batch, which
the solve treats as one system). Writes OUTPUT/adjoint_tolerance.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


def crops(folder: Path, n: int, size: int) -> dict[str, np.ndarray]:
    """`n` central hazy/clear crops of side `size`, one per pair spread evenly over the folder."""
    from minet_jax.tools.measure import paired_batch

    return {k: np.asarray(v, np.float32) for k, v in paired_batch(folder, n, size).items()}


def gradient(model_cfg, params, batch, solver: dict):
    """(flat parameter gradient, adjoint iterations per block) for solver overrides `solver`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from minet_jax import training
    from minet_jax.model import MINet

    cfg = model_cfg.copy_and_resolve_references()
    cfg.solver.update(solver)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: MINet(cfg, rngs=nnx.Rngs(0))))

    @jax.jit
    def grad(params, hazy, clear):
        def loss(p, slots):
            out, _ = training._forward(graphdef, p, hazy, slots)
            return training.loss_value("mse", out, clear)

        return jax.grad(loss, argnums=(0, 1))(params, jnp.zeros((3, 2), jnp.float32))

    g, slots = grad(params, jnp.asarray(batch["hazy"]), jnp.asarray(batch["clear"]))
    leaves = jax.tree_util.tree_leaves_with_path(g)
    flat = np.concatenate([np.asarray(x, np.float64).ravel() for _, x in leaves])
    in_block = np.concatenate([np.full(x.size, "blocks" in jax.tree_util.keystr(k)) for k, x in leaves])
    return (flat, in_block), np.asarray(slots)


def compare(got: tuple, ref: tuple) -> dict:
    """Cosine and relative error over all parameters, and over the IM-blocks' alone (whose
    gradient is eta (df/dparams)^T u, where the adjoint's error enters first)."""
    out = {}
    for key, mask in (("", slice(None)), ("blocks_", ref[1])):
        a, b = got[0][mask], ref[0][mask]
        out[key + "cosine"] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        out[key + "relative_error"] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    return out


def run_track(name: str, model_cfg, params, batch, args) -> list[dict]:
    implicit = {"forward": "unrolled", "backward": "implicit"}
    ref, ref_slots = gradient(
        model_cfg, params, batch,
        {**implicit, "backward_solver": "fixed_point", "backward_tol": args.ref_tol, "backward_max_iter": args.ref_max_iter},
    )  # fmt: skip
    exact, _ = gradient(model_cfg, params, batch, {"forward": "unrolled", "backward": "unrolled"})

    def row(backward, solver, tol, flat, slots):
        r = {"track": name, "backward": backward, "backward_solver": solver, "backward_tol": tol,
             "iterations": None if slots is None else slots[:, 0].tolist(),
             "residual": None if slots is None else slots[:, 1].tolist(), **compare(flat, ref)}  # fmt: skip
        r.update({f"vs_exact_{k}": v for k, v in compare(flat, exact).items()})
        return r

    rows = [row("implicit (reference)", "fixed_point", args.ref_tol, ref, ref_slots),
            row("unrolled (exact T-step)", None, None, exact, None)]  # fmt: skip
    for solver in args.solvers.split(","):
        for tol in [float(t) for t in args.tols.split(",")]:
            flat, slots = gradient(
                model_cfg,
                params,
                batch,
                {**implicit, "backward_solver": solver, "backward_tol": tol, "backward_max_iter": 50},
            )
            rows.append(row("implicit", solver, tol, flat, slots))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(report: dict) -> str:
    lines = [
        "# Implicit backward: adjoint tolerance against gradient accuracy",
        "",
        f"{report['machine']['cpu']} ({report['machine']['cpu_count']} cores, {report['machine']['backend']}), "
        f"JAX {report['machine']['jax']}. {report['batch']} crops of {report['crop']} px from sots-indoor-train, T = 8, MSE loss. "
        f"Reference: the implicit gradient with the adjoint solved by fixed-point iteration to {report['ref_tol']:g}.",
        "",
        "Cosines and relative errors against the reference over all parameters and over the IM-blocks' "
        "alone; the last column against the exact gradient of the T-step network (all parameters). "
        "nan: the reference adjoint diverged (the iteration u = v + eta J^T u does not converge where "
        "rho(eta J_f) > 1).",
        "",
        "| track | backward | adjoint solver | tol | cosine | rel. error | cosine, IM-block params "
        "| rel. error, IM-block params | adjoint iterations per block (final residual) | cosine with the exact T-step gradient |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        its = (
            "-"
            if r["iterations"] is None
            else ", ".join(f"{v:.0f} ({res:.1e})" for v, res in zip(r["iterations"], r["residual"], strict=True))
        )
        tol = "-" if r["backward_tol"] is None else f"{r['backward_tol']:g}"
        lines.append(
            f"| {r['track']} | {r['backward']} | {r['backward_solver'] or '-'} | {tol} | {r['cosine']:.5f} | "
            f"{r['relative_error']:.2e} | {r['blocks_cosine']:.5f} | {r['blocks_relative_error']:.2e} | {its} | "
            f"{r['vs_exact_cosine']:.5f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output", required=True, help="folder for adjoint_tolerance.json and .md")
    p.add_argument("--data", default=str(SHARED / "data" / "sots-indoor-train"), help="folder of hazy/ and clear/")
    p.add_argument(
        "--weights", default=str(SHARED / "weights" / "minet_its_official.pth"), help="authors' .pth ('' = skip)"
    )
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--solvers", default="fixed_point,anderson")
    p.add_argument("--tols", default="1e-1,3e-2,1e-2,1e-3,1e-5")
    p.add_argument("--ref-tol", type=float, default=1e-7)
    p.add_argument("--ref-max-iter", type=int, default=400)
    args = p.parse_args(argv)
    if not Path(args.data).is_dir():
        p.error(f"--data {args.data}: no such folder (see ../shared/data/README.md)")

    from flax import nnx

    from minet_jax.checkpoint import load_pretrained
    from minet_jax.config import load_config
    from minet_jax.model import MINet
    from minet_jax.tools.measure import machine

    batch = crops(Path(args.data), args.batch, args.crop)
    cfg = load_config("default").model
    rows = run_track("scratch", cfg, nnx.state(MINet(cfg, rngs=nnx.Rngs(0)), nnx.Param), batch, args)
    if args.weights:
        model = load_pretrained(args.weights)
        rows += run_track("authors", model.config.as_configdict(), nnx.state(model, nnx.Param), batch, args)
    report = {"machine": machine(), "crop": args.crop, "batch": args.batch, "ref_tol": args.ref_tol, "rows": rows}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adjoint_tolerance.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "adjoint_tolerance.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
