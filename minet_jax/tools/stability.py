"""Theorem 1 on a checkpoint and an image: spectral radius of eta J_f per IM-block, with plots.

    python -m minet_jax.tools.stability --checkpoint CKPT --image IMG [--crop S] --output OUT
        [--method auto|exact|arnoldi] [--fixed-point]

writes OUT/stability.json, OUT/eigenvalues.png and OUT/residuals.png (minet_jax.jacobian does the
analysis).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from minet_jax.jacobian import analyze_model


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def plot_eigenvalues(report: dict, path: str | Path) -> None:
    """One panel per block: eigenvalues (or Ritz values) of J_f and the circle |z| = 1/eta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = report["blocks"]
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.2 * len(blocks), 4.2), squeeze=False)
    for ax, b in zip(axes[0], blocks, strict=True):
        what = "eigenvalues" if b["method"] == "exact" else "Ritz values"
        ev = b["_eigenvalues"]
        ax.scatter(ev.real, ev.imag, s=6, alpha=0.6, label=f"{what} at g_T")
        fp = b.get("fixed_point", {})
        if "_eigenvalues" in fp:
            ax.scatter(fp["_eigenvalues"].real, fp["_eigenvalues"].imag, s=14, marker="x", alpha=0.6,
                       label=f"{what} at g*")  # fmt: skip
        r = 1.0 / b["eta"]
        t = np.linspace(0, 2 * np.pi, 400)
        ax.plot(r * np.cos(t), r * np.sin(t), "k--", lw=1, label="|z| = 1/eta")
        lim = 1.1 * max(r, float(np.max(np.abs(ev), initial=0.0)))
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.axhline(0, color="0.8", lw=0.5)
        ax.axvline(0, color="0.8", lw=0.5)
        ax.set_title(f"{b['name']}: rho(eta J) = {b['spectral_radius']:.3f}")
        ax.set_xlabel("Re")
        ax.set_ylabel("Im")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_residuals(report: dict, path: str | Path) -> None:
    """Forward relative residual per iteration, per block (network's T steps; fixed point dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, b in enumerate(report["blocks"]):
        c = f"C{i}"
        r = b["forward_residuals"]
        ax.semilogy(range(1, len(r) + 1), r, "o-", color=c, ms=3, label=f"{b['name']} (network, T={len(r)})")
        fp = b.get("fixed_point")
        if fp and fp["residuals"]:
            ax.semilogy(range(1, len(fp["residuals"]) + 1), fp["residuals"], "--", color=c,
                        label=f"{b['name']} fixed point")  # fmt: skip
    ax.set_xlabel("iteration")
    ax.set_ylabel("||g_next - g|| / ||g||")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the JSON-able report it wrote."""
    ap = argparse.ArgumentParser(prog="python -m minet_jax.tools.stability", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="authors' .pth or a minet-jax checkpoint dir")
    ap.add_argument("--image", required=True)
    ap.add_argument("--crop", type=int, default=None, help="central S x S crop (features are S/2 x S/2)")
    ap.add_argument("--output", required=True)
    ap.add_argument("--method", choices=("auto", "exact", "arnoldi"), default="auto")
    ap.add_argument("--fixed-point", action="store_true", help="also solve to the fixed point and analyse it")
    ap.add_argument("--fp-tol", type=float, default=1e-3)
    ap.add_argument("--fp-max-iter", type=int, default=100)
    ap.add_argument("--krylov", type=int, default=30)
    ap.add_argument("--max-restarts", type=int, default=10)
    ap.add_argument("--tol", type=float, default=1e-4, help="Arnoldi / power-iteration residual tolerance")
    ap.add_argument("--power-iters", type=int, default=50, help="J^T J products for sigma_max (at most)")
    ap.add_argument("--sigma-method", choices=("power", "lanczos"), default="power")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from minet_jax.checkpoint import load_pretrained
    from minet_jax.image_io import center_crop, read_rgb
    from minet_jax.inference import as_rgb01, to_network

    model = load_pretrained(args.checkpoint)
    rgb = read_rgb(args.image)
    if args.crop:
        try:
            rgb = center_crop(rgb, args.crop)
        except ValueError as e:
            raise SystemExit(f"--crop {args.crop}: {args.image}: {e}") from None
    x = to_network(jnp.asarray(as_rgb01(rgb))[None], model.config.input_format)
    t0 = time.perf_counter()
    report = analyze_model(
        model, x, method=args.method, fixed_point=args.fixed_point, fp_tol=args.fp_tol,
        fp_max_iter=args.fp_max_iter, seed=args.seed, log=lambda s: print(s, flush=True), top=args.top,
        krylov=args.krylov, max_restarts=args.max_restarts, tol=args.tol, power_iters=args.power_iters,
        sigma_method=args.sigma_method,
    )  # fmt: skip
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    plot_eigenvalues(report, out / "eigenvalues.png")
    plot_residuals(report, out / "residuals.png")
    report = {
        "checkpoint": str(args.checkpoint), "image": str(args.image), "crop": args.crop,
        "input_shape": list(x.shape), "method": args.method, "seconds": round(time.perf_counter() - t0, 1),
        **_strip(report),
    }  # fmt: skip
    (out / "stability.json").write_text(json.dumps(report, indent=2))
    for b in report["blocks"]:
        fp = b.get("fixed_point")
        fps = "" if fp is None else (
            f", fixed point: {fp['iterations']} it, rho {fp['spectral_radius']:.4f}" if fp["converged"]
            else ", fixed point: did not converge")  # fmt: skip
        print(f"{b['name']}: rho(eta J) {b['spectral_radius']:.4f} ({b['method']}), sigma_max {b['sigma_max']:.4f}, "
              f"theorem 1 {'holds' if b['theorem1_holds'] else 'fails'}{fps}")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
